//! The per-series condition detector of AnomalyAction rules: each series' current value
//! against the rule's threshold (`<op> <quantity>`) and/or outside its anomaly band, held
//! for the rule's `for` duration (in event time) before it trips, like a Prometheus
//! alert's pending state, and the band alone for its own `band_for` when that is longer
//! (a rule that acts unattended waits to be sure of its band). A tripped series clears once the condition has not held for
//! the rule's `clear_after` (hysteresis: one incident is one trip, however the band moves
//! as the series' own history takes the anomaly in), or at once on a staleness marker or
//! when the series goes away.

use crate::rules::compile::ConditionSpec;
use crate::window::SeriesId;

use super::band::{Band, BandAlgorithm};
use super::verdict::Change;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesState {
    /// Event time since which the condition has held, while it holds.
    pub holding_since: Option<i64>,
    /// Event time since which the value has been outside the band, while it is (a rule
    /// that acts unattended waits longer on its band than on its threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_since: Option<i64>,
    pub tripped: bool,
    /// While tripped: when the condition began to hold in this incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomalous_since: Option<i64>,
    /// While tripped: the band the series tripped against, its range before the
    /// incident (`None` when a threshold tripped it without a band).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Band>,
    /// While tripped: since when the value has been back in that range (the clear
    /// waits for `clear_after` of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_since: Option<i64>,
    /// While tripped: since when the value has been within the live band (a new level
    /// becomes normal after [`NEW_NORMAL_CLEAR_AFTERS`] `clear_after`s of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_since: Option<i64>,
}

/// How many `clear_after`s a tripped series must stay within the band of a new level
/// before that level counts as normal: long enough that the return from an incident
/// several windows long is still seen as its end (one trip, one clear), short enough that
/// a lasting change (a deploy that raised memory for good) clears within hours.
pub const NEW_NORMAL_CLEAR_AFTERS: i64 = 4;

/// A verdict change, before reconcile's context is added.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub change: Change,
    pub reason: String,
}

/// Per-series threshold state for one rule.
#[derive(Debug)]
pub struct ConditionDetector {
    spec: ConditionSpec,
    states: Vec<SeriesState>,
}

impl ConditionDetector {
    pub fn new(spec: ConditionSpec) -> Self {
        Self {
            spec,
            states: Vec::new(),
        }
    }

    fn state(&mut self, id: SeriesId) -> &mut SeriesState {
        let index = id.0 as usize;
        if index >= self.states.len() {
            self.states.resize(index + 1, SeriesState::default());
        }
        &mut self.states[index]
    }

    pub fn is_tripped(&self, id: SeriesId) -> bool {
        self.states.get(id.0 as usize).is_some_and(|s| s.tripped)
    }

    /// When a tripped series' incident began (the condition first held), in event time.
    pub fn anomalous_since(&self, id: SeriesId) -> Option<i64> {
        self.states
            .get(id.0 as usize)
            .filter(|s| s.tripped)
            .and_then(|s| s.anomalous_since)
    }

    /// Feeds a series' new current value (`None` after a staleness marker) at `at_ms`,
    /// with its anomaly band (`None` without detection, or during cold start).
    ///
    /// An untripped series trips once the condition has held for `for`, and, when only
    /// the band (not the threshold) holds, once the value has also been outside the band
    /// for `band_for`.
    ///
    /// A tripped series clears once its value has been normal for `clear_after`: back
    /// within the band it tripped against (its baseline before the incident), and under
    /// the threshold. The live band of a z-score or MAD is no guide while tripped: the
    /// series' own history takes the anomaly in, so the live band follows it there, and
    /// then flags its return to normal as a second anomaly. A likelihood or seasonal
    /// band is: the first judges how surprising the series has lately been, the second
    /// moves through the day (its band at the trip held for that hour only). A level the series stays at is accepted as its new
    /// normal once it has been within the live band for [`NEW_NORMAL_CLEAR_AFTERS`] times
    /// `clear_after`. With `clear_after` 0 a series clears at the first value that does
    /// not meet the condition, as before hysteresis.
    pub fn observe(
        &mut self,
        id: SeriesId,
        value: Option<f64>,
        band: Option<Band>,
        at_ms: i64,
    ) -> Option<Transition> {
        let (for_ms, band_for_ms, clear_after_ms) = (
            self.spec.for_ms,
            self.spec.band_for_ms,
            self.spec.clear_after_ms,
        );
        // A `likelihood` band is already one of how surprising the series has been
        // lately, not of where it was before; a `seasonal` band's range moves through
        // the day (the band at the trip is that hour's), and one fitted over days
        // hardly takes in an incident of hours: for both, the live band is the guide.
        let against_baseline = self.spec.band.is_none_or(|b| {
            !matches!(
                b.algorithm,
                BandAlgorithm::Likelihood | BandAlgorithm::Seasonal
            )
        });
        let over_threshold =
            value.is_some_and(|v| self.spec.threshold.as_ref().is_some_and(|t| t.holds(v)));
        let outside_band = value.is_some_and(|v| band.is_some_and(|b| b.excludes(v)));
        let holds = over_threshold || outside_band;
        let state = self.state(id);
        let Some(value) = value else {
            return std::mem::take(state).tripped.then(|| Transition {
                change: Change::Cleared,
                reason: "the series went stale (staleness marker)".into(),
            });
        };
        if !state.tripped {
            if !outside_band {
                state.band_since = None;
            }
            if !holds {
                state.holding_since = None;
                return None;
            }
            let since = *state.holding_since.get_or_insert(at_ms);
            let band_since = outside_band.then(|| *state.band_since.get_or_insert(at_ms));
            // The band alone trips once it has held for its own, longer, time.
            let band_held = band_for_ms <= for_ms
                || band_since.is_some_and(|b| at_ms.saturating_sub(b) >= band_for_ms);
            if at_ms.saturating_sub(since) < for_ms || !(over_threshold || band_held) {
                return None;
            }
            state.tripped = true;
            state.anomalous_since = Some(since);
            state.baseline = band;
            // The time the hold that tripped it counted: the band's own when that is
            // longer and the threshold does not hold.
            let held_since = if band_for_ms > for_ms && !over_threshold {
                band_since
            } else {
                Some(since).filter(|_| for_ms > 0)
            };
            let held = held_since.map_or(String::new(), |held_since| {
                format!(" for {}s", at_ms.saturating_sub(held_since) / 1000)
            });
            // Worded only when it trips: whether it holds is checked on every sample.
            let why = self.why(value, band).unwrap_or_default();
            return Some(Transition {
                change: Change::Tripped,
                reason: format!("{why}{held}"),
            });
        }
        let since = state.anomalous_since.unwrap_or(at_ms);
        let lasted = |until: i64| format!("anomalous for {}s", until.saturating_sub(since) / 1000);
        if clear_after_ms == 0 {
            if holds {
                return None;
            }
            *state = SeriesState::default();
            return Some(Transition {
                change: Change::Cleared,
                reason: format!(
                    "value {value} is back within the rule's condition ({})",
                    lasted(at_ms)
                ),
            });
        }
        // Back to the baseline, or (without a band then) the condition no longer holds.
        let baseline = state.baseline.filter(|_| against_baseline);
        let normal = !over_threshold
            && match baseline {
                Some(baseline) => !baseline.excludes(value),
                None => !holds,
            };
        if !normal {
            state.quiet_since = None;
        }
        if holds {
            state.settled_since = None;
        }
        let quiet = normal.then(|| *state.quiet_since.get_or_insert(at_ms));
        let settled = (!holds).then(|| *state.settled_since.get_or_insert(at_ms));
        let reason = if let Some(quiet) = quiet
            && at_ms.saturating_sub(quiet) >= clear_after_ms
        {
            format!(
                "value {value} has been back within its usual range for {}s ({})",
                at_ms.saturating_sub(quiet) / 1000,
                lasted(quiet)
            )
        } else if let Some(settled) = settled
            && at_ms.saturating_sub(settled)
                >= clear_after_ms.saturating_mul(NEW_NORMAL_CLEAR_AFTERS)
        {
            format!(
                "value {value} has stayed within the band of its new level for {}s ({})",
                at_ms.saturating_sub(settled) / 1000,
                lasted(settled)
            )
        } else {
            return None;
        };
        *state = SeriesState::default();
        Some(Transition {
            change: Change::Cleared,
            reason,
        })
    }

    /// Why `value` meets the condition, or `None` if it does not.
    fn why(&self, value: f64, band: Option<Band>) -> Option<String> {
        if let Some(threshold) = &self.spec.threshold
            && threshold.holds(value)
        {
            return Some(format!("value {value} {threshold}"));
        }
        let band = band.filter(|b| b.excludes(value))?;
        Some(format!(
            "value {value} outside the expected band [{:.6}, {:.6}] around {:.6}",
            band.lower, band.upper, band.center
        ))
    }

    /// The state of every series with any, by id, for saving across a restart.
    pub fn export(&self) -> Vec<(u32, SeriesState)> {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != SeriesState::default())
            .map(|(i, s)| (i as u32, *s))
            .collect()
    }

    /// Restores a series' saved state under its id now.
    pub fn restore(&mut self, id: SeriesId, state: SeriesState) {
        *self.state(id) = state;
    }

    /// The series was evicted (no sample within the lookback): forget it, clearing it if
    /// it had tripped.
    pub fn forget(&mut self, id: SeriesId) -> Option<Transition> {
        let state = std::mem::take(self.state(id));
        state.tripped.then(|| Transition {
            change: Change::Cleared,
            reason: "the series stopped reporting (no sample within the 5m lookback)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::quantity::Threshold;

    fn detector(threshold: &str, for_ms: i64) -> ConditionDetector {
        held_detector(threshold, for_ms, for_ms)
    }

    /// A threshold detector whose band (given with each value) holds for `band_for_ms`.
    fn held_detector(threshold: &str, for_ms: i64, band_for_ms: i64) -> ConditionDetector {
        ConditionDetector::new(ConditionSpec {
            threshold: Some(Threshold::parse(threshold).unwrap()),
            band: None,
            for_ms,
            band_for_ms,
            clear_after_ms: 0,
        })
    }

    /// A lasting change of level trips once and becomes the series' new normal after
    /// four `clear_after`s within the band of that level.
    #[test]
    fn a_lasting_new_level_clears_after_four_clear_afters() {
        let mut d = ConditionDetector::new(ConditionSpec {
            threshold: None,
            band: None,
            for_ms: 0,
            band_for_ms: 0,
            clear_after_ms: 600_000,
        });
        let band = |center: f64| Band {
            center,
            lower: center - 1.0,
            upper: center + 1.0,
        };
        let mut changes = Vec::new();
        for minute in 0..60 {
            let (value, center) = match minute {
                0 => (10.0, 10.0),
                1..=4 => (20.0, 10.0),
                _ => (20.0, 20.0),
            };
            if let Some(t) = d.observe(
                SeriesId(0),
                Some(value),
                Some(band(center)),
                minute * 60_000,
            ) {
                changes.push((minute, t.change));
            }
        }
        assert_eq!(changes, [(1, Change::Tripped), (45, Change::Cleared)]);
    }

    /// A rule that acts unattended waits on its band (`band_for_ms`) but not on its
    /// threshold: a band broken for less than that never trips, nor does one broken
    /// twice with a normal value between; one broken for that long trips, with the
    /// time since; a value over the threshold trips at once.
    #[test]
    fn the_band_alone_must_hold_for_its_own_time() {
        let mut d = held_detector("> 100", 0, 15 * 60_000);
        let band = Band {
            center: 10.0,
            lower: 9.0,
            upper: 11.0,
        };
        // (minute, value): outside the band for 14 minutes, in, out again for 15.
        let mut values: Vec<(i64, f64)> = (0..14).map(|m| (m, 20.0)).collect();
        values.push((14, 10.0));
        values.extend((15..=30).map(|m| (m, 20.0)));
        let mut changes = Vec::new();
        for (minute, value) in values {
            if let Some(t) = d.observe(SeriesId(0), Some(value), Some(band), minute * 60_000) {
                changes.push((minute, t.change, t.reason));
            }
        }
        assert_eq!(
            changes,
            [(
                30,
                Change::Tripped,
                "value 20 outside the expected band [9.000000, 11.000000] around 10.000000 for 900s"
                    .to_owned()
            )]
        );
        assert_eq!(d.anomalous_since(SeriesId(0)), Some(15 * 60_000));
        // A value over the threshold trips another series at its first sample.
        let t = d.observe(SeriesId(1), Some(150.0), Some(band), 0).unwrap();
        assert_eq!(t.change, Change::Tripped);
        assert!(t.reason.starts_with("value 150 > 100"), "{}", t.reason);
    }

    /// A series whose band follows it into an anomaly and back: outside, inside once
    /// its history has taken the new level in, outside again when it returns. With
    /// `clear_after` that is one incident, with the time it began; without, two trips.
    #[test]
    fn hysteresis_makes_one_incident_one_trip() {
        let band = |center: f64| Band {
            center,
            lower: center - 1.0,
            upper: center + 1.0,
        };
        // (time in minutes, value, the band's centre then)
        let incident = [
            (0, 10.0, 10.0),
            (1, 20.0, 10.0), // trips
            (2, 20.0, 12.0),
            (5, 20.0, 19.5), // the history has absorbed the new level
            (9, 20.0, 20.0),
            (10, 10.0, 19.0), // back to normal: outside the moved band again
            (11, 10.0, 17.0),
            (20, 10.0, 10.0), // back in its usual range since 10
            (21, 10.0, 10.0),
        ];
        let replay = |clear_after_ms: i64| {
            let mut d = ConditionDetector::new(ConditionSpec {
                threshold: None,
                band: Some(crate::eval::BandSpec {
                    algorithm: crate::eval::BandAlgorithm::Zscore,
                    sensitivity: 3.0,
                    min_samples: 1,
                }),
                for_ms: 0,
                band_for_ms: 0,
                clear_after_ms,
            });
            let mut changes = Vec::new();
            for (minute, value, center) in incident {
                let at = minute * 60_000;
                if let Some(t) = d.observe(SeriesId(0), Some(value), Some(band(center)), at) {
                    changes.push((minute, t.change, d.anomalous_since(SeriesId(0))));
                }
                if minute == 9 && clear_after_ms > 0 {
                    assert_eq!(d.anomalous_since(SeriesId(0)), Some(60_000));
                }
            }
            changes
        };
        assert_eq!(
            replay(600_000),
            [
                (1, Change::Tripped, Some(60_000)),
                (20, Change::Cleared, None)
            ]
        );
        let without: Vec<_> = replay(0).into_iter().map(|(m, c, _)| (m, c)).collect();
        assert_eq!(
            without,
            [
                (1, Change::Tripped),
                (5, Change::Cleared),
                (10, Change::Tripped),
                (20, Change::Cleared)
            ]
        );
    }

    /// Issue 14: a seasonal rule that tripped at night must clear by day. Against the
    /// night's band the day's values never looked normal, so a rule over a daily cycle
    /// stayed tripped for good after its first trip (none after it on NAB's tweets).
    #[test]
    fn a_seasonal_trip_clears_within_the_live_band_of_another_hour() {
        let mut d = ConditionDetector::new(ConditionSpec {
            threshold: None,
            band: Some(crate::eval::BandSpec {
                algorithm: crate::eval::BandAlgorithm::Seasonal,
                sensitivity: 3.0,
                min_samples: 1,
            }),
            for_ms: 0,
            band_for_ms: 0,
            clear_after_ms: 3_600_000,
        });
        let hour = 3_600_000;
        // The night's band is 10 ± 2; a spike to 50 trips; the day's band is 100 ± 20.
        let night = Band {
            center: 10.0,
            lower: 8.0,
            upper: 12.0,
        };
        let day = Band {
            center: 100.0,
            lower: 80.0,
            upper: 120.0,
        };
        let tripped = d.observe(SeriesId(0), Some(50.0), Some(night), 0);
        assert_eq!(tripped.map(|t| t.change), Some(Change::Tripped));
        assert_eq!(d.observe(SeriesId(0), Some(100.0), Some(day), hour), None);
        let cleared = d.observe(SeriesId(0), Some(105.0), Some(day), 2 * hour);
        assert_eq!(cleared.map(|t| t.change), Some(Change::Cleared));
    }

    #[test]
    fn trips_once_and_clears_once() {
        let mut d = detector("> 1Gi", 0);
        let id = SeriesId(3);
        assert_eq!(d.observe(id, Some(1.0), None, 0), None);
        let t = d
            .observe(id, Some(2.0 * 1024.0 * 1024.0 * 1024.0), None, 15_000)
            .unwrap();
        assert_eq!(t.change, Change::Tripped);
        assert_eq!(
            d.observe(id, Some(3e9), None, 30_000),
            None,
            "no repeat while tripped"
        );
        let t = d.observe(id, Some(10.0), None, 45_000).unwrap();
        assert_eq!(t.change, Change::Cleared);
        assert_eq!(d.observe(id, Some(10.0), None, 60_000), None);
    }

    #[test]
    fn waits_for_the_for_duration_in_event_time() {
        let mut d = detector(">= 0.9", 60_000);
        let id = SeriesId(0);
        assert_eq!(d.observe(id, Some(0.95), None, 0), None);
        assert_eq!(d.observe(id, Some(0.95), None, 45_000), None);
        // A dip resets the pending state.
        assert_eq!(d.observe(id, Some(0.5), None, 50_000), None);
        assert_eq!(d.observe(id, Some(0.99), None, 60_000), None);
        assert_eq!(d.observe(id, Some(0.99), None, 119_999), None);
        let t = d.observe(id, Some(0.99), None, 120_000).unwrap();
        assert_eq!(t.change, Change::Tripped);
    }

    /// With one `for` for both, the hold a trip reports counts from when the condition
    /// began, whichever of threshold and band held then.
    #[test]
    fn a_trip_held_by_threshold_then_band_reports_the_whole_hold() {
        let mut d = detector("> 100", 120_000);
        let band = Band {
            center: 100.0,
            lower: 90.0,
            upper: 110.0,
        };
        let id = SeriesId(0);
        assert_eq!(d.observe(id, Some(105.0), Some(band), 0), None);
        assert_eq!(d.observe(id, Some(50.0), Some(band), 60_000), None);
        let t = d.observe(id, Some(50.0), Some(band), 120_000).unwrap();
        assert_eq!(t.change, Change::Tripped);
        assert!(t.reason.ends_with(" for 120s"), "{}", t.reason);
        assert_eq!(d.anomalous_since(id), Some(0));
    }

    #[test]
    fn staleness_and_eviction_clear_a_tripped_series() {
        let mut d = detector("== 0", 0);
        let (a, b) = (SeriesId(0), SeriesId(1));
        assert_eq!(
            d.observe(a, Some(0.0), None, 0).unwrap().change,
            Change::Tripped
        );
        assert_eq!(d.observe(a, None, None, 1).unwrap().change, Change::Cleared);
        assert_eq!(
            d.observe(b, Some(0.0), None, 0).unwrap().change,
            Change::Tripped
        );
        assert_eq!(d.forget(b).unwrap().change, Change::Cleared);
        assert_eq!(d.forget(b), None);
    }
}
