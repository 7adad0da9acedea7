//! The per-series condition detector of AnomalyAction rules: each series' current value
//! against the rule's threshold (`<op> <quantity>`) and/or outside its anomaly band, held
//! for the rule's `for` duration (in event time) before it trips, like a Prometheus
//! alert's pending state. A staleness marker, or the series going away, clears it.

use crate::rules::compile::ConditionSpec;
use crate::window::SeriesId;

use super::band::Band;
use super::verdict::Change;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesState {
    /// Event time since which the condition has held, while it holds.
    pub holding_since: Option<i64>,
    pub tripped: bool,
}

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

    /// Feeds a series' new current value (`None` after a staleness marker) at `at_ms`,
    /// with its anomaly band (`None` without detection, or during cold start).
    pub fn observe(
        &mut self,
        id: SeriesId,
        value: Option<f64>,
        band: Option<Band>,
        at_ms: i64,
    ) -> Option<Transition> {
        let for_ms = self.spec.for_ms;
        let holds = value.is_some_and(|v| self.holds(v, band));
        let state = self.state(id);
        let Some(value) = value else {
            state.holding_since = None;
            return std::mem::take(&mut state.tripped).then(|| Transition {
                change: Change::Cleared,
                reason: "the series went stale (staleness marker)".into(),
            });
        };
        if holds {
            let since = *state.holding_since.get_or_insert(at_ms);
            if state.tripped || at_ms.saturating_sub(since) < for_ms {
                return None;
            }
            state.tripped = true;
            let held = if for_ms > 0 {
                format!(" for {}s", at_ms.saturating_sub(since) / 1000)
            } else {
                String::new()
            };
            // Worded only when it trips: whether it holds is checked on every sample.
            let why = self.why(value, band).unwrap_or_default();
            return Some(Transition {
                change: Change::Tripped,
                reason: format!("{why}{held}"),
            });
        }
        state.holding_since = None;
        std::mem::take(&mut state.tripped).then(|| Transition {
            change: Change::Cleared,
            reason: format!("value {value} is back within the rule's condition"),
        })
    }

    /// Whether `value` meets the condition.
    fn holds(&self, value: f64, band: Option<Band>) -> bool {
        self.spec.threshold.as_ref().is_some_and(|t| t.holds(value))
            || band.is_some_and(|b| b.excludes(value))
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
        ConditionDetector::new(ConditionSpec {
            threshold: Some(Threshold::parse(threshold).unwrap()),
            band: None,
            for_ms,
        })
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
