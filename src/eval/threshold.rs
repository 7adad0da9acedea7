//! The threshold detector: each series' current value against `<op> <quantity>`, held for
//! the rule's `for` duration (in event time) before it trips, like a Prometheus alert's
//! pending state. A staleness marker, or the series going away, clears it.

use crate::rules::compile::ThresholdSpec;
use crate::window::SeriesId;

use super::verdict::Change;

#[derive(Debug, Clone, Copy, Default)]
struct SeriesState {
    /// Event time since which the condition has held, while it holds.
    holding_since: Option<i64>,
    tripped: bool,
}

/// A verdict change, before reconcile's context is added.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub change: Change,
    pub reason: String,
}

/// Per-series threshold state for one rule.
#[derive(Debug)]
pub struct ThresholdDetector {
    spec: ThresholdSpec,
    states: Vec<SeriesState>,
}

impl ThresholdDetector {
    pub fn new(spec: ThresholdSpec) -> Self {
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

    /// Feeds a series' new current value (`None` after a staleness marker) at `at_ms`.
    pub fn observe(&mut self, id: SeriesId, value: Option<f64>, at_ms: i64) -> Option<Transition> {
        let ThresholdSpec { threshold, for_ms } = self.spec.clone();
        let state = self.state(id);
        let Some(value) = value else {
            state.holding_since = None;
            return std::mem::take(&mut state.tripped).then(|| Transition {
                change: Change::Cleared,
                reason: "the series went stale (staleness marker)".into(),
            });
        };
        if threshold.holds(value) {
            let since = *state.holding_since.get_or_insert(at_ms);
            if !state.tripped && at_ms.saturating_sub(since) >= for_ms {
                state.tripped = true;
                let held = if for_ms > 0 {
                    format!(" for {}s", at_ms.saturating_sub(since) / 1000)
                } else {
                    String::new()
                };
                return Some(Transition {
                    change: Change::Tripped,
                    reason: format!("value {value} {threshold}{held}"),
                });
            }
            None
        } else {
            state.holding_since = None;
            std::mem::take(&mut state.tripped).then(|| Transition {
                change: Change::Cleared,
                reason: format!("value {value} no longer {threshold}"),
            })
        }
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

    fn detector(threshold: &str, for_ms: i64) -> ThresholdDetector {
        ThresholdDetector::new(ThresholdSpec {
            threshold: Threshold::parse(threshold).unwrap(),
            for_ms,
        })
    }

    #[test]
    fn trips_once_and_clears_once() {
        let mut d = detector("> 1Gi", 0);
        let id = SeriesId(3);
        assert_eq!(d.observe(id, Some(1.0), 0), None);
        let t = d
            .observe(id, Some(2.0 * 1024.0 * 1024.0 * 1024.0), 15_000)
            .unwrap();
        assert_eq!(t.change, Change::Tripped);
        assert_eq!(
            d.observe(id, Some(3e9), 30_000),
            None,
            "no repeat while tripped"
        );
        let t = d.observe(id, Some(10.0), 45_000).unwrap();
        assert_eq!(t.change, Change::Cleared);
        assert_eq!(d.observe(id, Some(10.0), 60_000), None);
    }

    #[test]
    fn waits_for_the_for_duration_in_event_time() {
        let mut d = detector(">= 0.9", 60_000);
        let id = SeriesId(0);
        assert_eq!(d.observe(id, Some(0.95), 0), None);
        assert_eq!(d.observe(id, Some(0.95), 45_000), None);
        // A dip resets the pending state.
        assert_eq!(d.observe(id, Some(0.5), 50_000), None);
        assert_eq!(d.observe(id, Some(0.99), 60_000), None);
        assert_eq!(d.observe(id, Some(0.99), 119_999), None);
        let t = d.observe(id, Some(0.99), 120_000).unwrap();
        assert_eq!(t.change, Change::Tripped);
    }

    #[test]
    fn staleness_and_eviction_clear_a_tripped_series() {
        let mut d = detector("== 0", 0);
        let (a, b) = (SeriesId(0), SeriesId(1));
        assert_eq!(d.observe(a, Some(0.0), 0).unwrap().change, Change::Tripped);
        assert_eq!(d.observe(a, None, 1).unwrap().change, Change::Cleared);
        assert_eq!(d.observe(b, Some(0.0), 0).unwrap().change, Change::Tripped);
        assert_eq!(d.forget(b).unwrap().change, Change::Cleared);
        assert_eq!(d.forget(b), None);
    }
}
