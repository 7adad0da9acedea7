//! What of the evaluator outlives a restart (`--state-dir`): every rule's windows and its
//! detector's state, keyed by the rule and by series labels (never by the ids, which are
//! per process), so a 30-day SLO budget, a forecast's days of history and a tripped
//! series' verdict survive. The file format is [`crate::state`]'s; this module only says
//! what is in it and how it is put back.
//!
//! A rule's state is put back only if the rule still reads the same series the same way:
//! its kind, inputs and (for expressions) expression must be unchanged, which a
//! fingerprint checks. Thresholds, targets and other settings may have changed; they
//! apply to the restored state. Anything that does not fit is reported and dropped, and
//! the rule starts afresh.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::band::SavedSurprise;
use super::condition::SeriesState;
use super::expr::ExprDetectorState;
use super::predict::ForecastDetectorState;
use super::slo::SloDetectorState;
use super::{Detector, Evaluator, SloDetector};
use crate::ingest::Sample;
use crate::labels::Labels;
use crate::rules::compile::{CompiledRule, DetectorSpec};
use crate::rules::load::RuleKey;
use crate::window::{SeriesExport, SeriesId};

/// Everything saved, for every rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluatorState {
    pub rules: Vec<RuleState>,
}

/// One rule's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleState {
    pub rule: RuleKey,
    /// See [`fingerprint`].
    pub fingerprint: u64,
    /// Per input, in the rule's input order.
    pub inputs: Vec<Vec<SeriesExport>>,
    pub detector: DetectorState,
    /// A `likelihood` rule's learnt state per series (by the id it had when saved):
    /// days of learning a restart must not throw away. Absent from older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surprise: Vec<(u32, SavedSurprise)>,
}

/// A detector's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DetectorState {
    /// Per series of the rule's single input, by the id it had when saved.
    Condition(Vec<(u32, SeriesState)>),
    Slo(Box<SloDetectorState>),
    Expression(ExprDetectorState),
    Forecast(ForecastDetectorState),
}

/// What restoring did, per rule, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Windows and detector state put back: this many series.
    Rule { rule: RuleKey, series: usize },
    /// Saved state not used, and why.
    Dropped { rule: RuleKey, why: String },
}

/// What a rule reads and how: its kind, its inputs' selectors and, for rules over an
/// expression, the expression and its step. State saved under another fingerprint means other series
/// or other derived values, so it is not restored.
pub fn fingerprint(rule: &CompiledRule) -> u64 {
    // The step too: history kept at one step means nothing at another.
    let query = match &rule.detector {
        DetectorSpec::Expression { query, .. } => format!("{}@{}", query.text, query.step_ms),
        DetectorSpec::Forecast(spec) => format!("{}@{}", spec.query.text, spec.query.step_ms),
        DetectorSpec::Condition(_) | DetectorSpec::Slo { .. } => String::new(),
    };
    let text = format!(
        "{}|{:?}|{query}",
        rule.key.kind.as_str(),
        rule.inputs.iter().map(|i| &i.selector).collect::<Vec<_>>()
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Whether a rule saved as `state` reads what `rule`, with `inputs` inputs, reads now.
fn reads_the_same(state: &RuleState, rule: &CompiledRule, inputs: usize) -> bool {
    state.fingerprint == fingerprint(rule) && state.inputs.len() == inputs
}

impl Evaluator {
    /// Everything a restart should keep. Cheap next to writing it (owned copies of the
    /// windows), so the evaluator thread can take it between batches.
    pub fn export(&self) -> EvaluatorState {
        EvaluatorState {
            rules: self
                .rules
                .iter()
                .map(|rule| RuleState {
                    rule: rule.compiled.key.clone(),
                    fingerprint: fingerprint(&rule.compiled),
                    inputs: self.inputs[rule.inputs.clone()]
                        .iter()
                        .map(|slot| self.windows(slot).export())
                        .collect(),
                    detector: match &rule.detector {
                        Detector::Condition { detector, .. } => {
                            DetectorState::Condition(detector.export())
                        }
                        Detector::Slo { detector, .. } => {
                            DetectorState::Slo(Box::new(detector.export()))
                        }
                        Detector::Expression(d) => DetectorState::Expression(d.export()),
                        Detector::Forecast(d) => DetectorState::Forecast(d.export()),
                    },
                    surprise: match &rule.detector {
                        Detector::Condition { running, .. } => running.export_surprise(),
                        _ => Vec::new(),
                    },
                })
                .collect(),
        }
    }

    /// Puts saved state back into the rules it belongs to. `seed` is the router's series
    /// hash seed; `now_ms` the receiver's clock, which restored event clocks never pass.
    pub fn restore(&mut self, state: EvaluatorState, seed: u64, now_ms: i64) -> Vec<Restored> {
        let mut saved: HashMap<RuleKey, RuleState> = state
            .rules
            .into_iter()
            .map(|r| (r.rule.clone(), r))
            .collect();
        // Rules that read one set of windows saved a copy each, and a state file from
        // before windows were shared holds one per rule input, where a threshold rule kept
        // only the newest sample. Every reader's samples of a series are merged first, so
        // the longest history saved survives whatever order the rules come in; the rules'
        // own imports below then only map their saved ids.
        let mut merged: HashMap<usize, HashMap<Labels, Vec<Sample>>> = HashMap::new();
        for rule in &self.rules {
            let slots = &self.inputs[rule.inputs.clone()];
            let Some(state) = saved
                .get(&rule.compiled.key)
                .filter(|state| reads_the_same(state, &rule.compiled, slots.len()))
            else {
                continue;
            };
            for (slot, windows) in slots.iter().zip(&state.inputs) {
                let series = merged.entry(slot.store).or_default();
                for window in windows {
                    series
                        .entry(window.labels.clone())
                        .or_default()
                        .extend_from_slice(&window.samples);
                }
            }
        }
        for (store, series) in merged {
            let windows = series
                .into_iter()
                .map(|(labels, mut samples)| {
                    samples.sort_by_key(|s| s.timestamp_ms);
                    samples.dedup_by_key(|s| s.timestamp_ms);
                    SeriesExport {
                        labels,
                        id: 0,
                        samples,
                    }
                })
                .collect();
            self.stores[store].windows.import(windows, seed, now_ms);
        }
        let mut report = Vec::new();
        for rule in &mut self.rules {
            let key = rule.compiled.key.clone();
            let Some(state) = saved.remove(&key) else {
                continue;
            };
            let drop = |why: &str| Restored::Dropped {
                rule: key.clone(),
                why: why.to_owned(),
            };
            let slots = &self.inputs[rule.inputs.clone()];
            if !reads_the_same(&state, &rule.compiled, slots.len()) {
                report.push(drop(
                    "the rule now reads other series or another expression",
                ));
                continue;
            }
            // Windows first: detectors' per-series state follows the series to their new ids.
            let mut series = 0;
            let remaps: Vec<HashMap<u32, SeriesId>> = slots
                .iter()
                .zip(state.inputs)
                .map(|(slot, saved)| {
                    let map: HashMap<u32, SeriesId> = self.stores[slot.store]
                        .windows
                        .import(saved, seed, now_ms)
                        .into_iter()
                        .collect();
                    series += map.len();
                    map
                })
                .collect();
            let surprise = state.surprise;
            match (&mut rule.detector, state.detector) {
                (
                    Detector::Condition {
                        detector, running, ..
                    },
                    DetectorState::Condition(states),
                ) => {
                    // Rebuilt from the restored windows at the next sample.
                    running.clear();
                    for (old, s) in states {
                        if let Some(&id) = remaps.first().and_then(|m| m.get(&old)) {
                            detector.restore(id, s);
                        }
                    }
                    for (old, saved) in &surprise {
                        if let Some(&id) = remaps.first().and_then(|m| m.get(old)) {
                            running.restore_surprise(id.0 as usize, saved);
                        }
                    }
                }
                (
                    Detector::Slo {
                        detector, counters, ..
                    },
                    DetectorState::Slo(saved),
                ) => {
                    let remap = |counter, old: u32| {
                        let input = counters.iter().position(|c| *c == counter)?;
                        remaps.get(input)?.get(&old).map(|id| id.0)
                    };
                    let DetectorSpec::Slo { spec, .. } = &rule.compiled.detector else {
                        continue;
                    };
                    match SloDetector::import(spec.clone(), *saved, remap) {
                        Ok(restored) => *detector = restored,
                        Err(error) => {
                            report.push(drop(&error.to_string()));
                            continue;
                        }
                    }
                }
                (Detector::Expression(d), DetectorState::Expression(saved)) => d.restore(saved),
                (Detector::Forecast(d), DetectorState::Forecast(saved)) => d.restore(saved),
                _ => {
                    report.push(drop("the rule now runs another detector"));
                    continue;
                }
            }
            report.push(Restored::Rule { rule: key, series });
        }
        for (rule, _) in saved {
            report.push(Restored::Dropped {
                rule,
                why: "the rule is no longer loaded".into(),
            });
        }
        report
    }
}
