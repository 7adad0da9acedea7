//! Expression rules: an AnomalyAction whose `metric` is a PromQL expression rather than a
//! plain selector. The expression is evaluated at every step boundary of the rule's event
//! clock over the rule's input windows (through [`WindowSource`]), and each series it
//! returns is judged by the rule's condition (threshold and/or anomaly band, with `for`),
//! like a Prometheus alerting rule. A series the expression stops returning clears.
//!
//! Owns the mapping from result label sets to the small ids the condition detector keys
//! its state by, and each result series' history for its band. Pure: time is the step
//! boundary passed in.

use std::collections::HashMap;

use promql_parser::label::Matcher;
use serde::Serialize;

use super::band::{self, Band, BandAlgorithm, BandSpec, RunningBands};
use super::condition::{ConditionDetector, SeriesState, Transition};
use super::forecast;
use super::promql::{self, EvalOptions, SeriesSamples, SeriesSource, Value};
use super::verdict::serialize_value;
use crate::ingest::Sample;
use crate::labels::Labels;
use crate::route::Selector;
use crate::rules::compile::{ConditionSpec, QuerySpec};
use crate::window::{SelectorWindows, SeriesId, SeriesWindow};

/// A rule's input windows, as the PromQL engine reads them. Each selector of the
/// expression is one of the rule's inputs (compile made sure of it), so a selection is a
/// lookup of that input, and its samples are read where the windows hold them.
pub struct WindowSource<'a> {
    inputs: Vec<(&'a Selector, &'a SelectorWindows)>,
}

impl<'a> WindowSource<'a> {
    pub fn new(inputs: Vec<(&'a Selector, &'a SelectorWindows)>) -> Self {
        Self { inputs }
    }
}

impl<'a> WindowSource<'a> {
    /// The windows of the input with these matchers. Compile made every selector of the
    /// expression one of the rule's inputs, with the same matchers, so a selector that is
    /// not one has no series here.
    fn windows(&self, matchers: &[Vec<Matcher>]) -> Option<&'a SelectorWindows> {
        let (_, windows) = self.inputs.iter().find(|(s, _)| s.groups == matchers)?;
        Some(windows)
    }
}

impl SeriesSource for WindowSource<'_> {
    fn select(&self, matchers: &[Vec<Matcher>], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        let mut selected = Vec::new();
        self.visit_range(matchers, start_ms, end_ms, &mut |labels, samples| {
            selected.push(SeriesSamples {
                labels: labels.clone(),
                samples: samples.to_vec(),
            });
        });
        selected
    }

    /// The windows keep their series in label order and lend their samples in place; a
    /// range that wraps around a window's ring buffer is joined in one reused buffer.
    fn visit_range(
        &self,
        matchers: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
        visit: &mut dyn FnMut(&Labels, &[Sample]),
    ) {
        let Some(windows) = self.windows(matchers) else {
            return;
        };
        let mut joined = Vec::new();
        for (_, w) in windows.iter_ordered() {
            match w.slices_between(start_ms, end_ms) {
                ([], _) => {}
                (all, []) => visit(w.labels(), all),
                (older, newer) => {
                    joined.clear();
                    joined.extend_from_slice(older);
                    joined.extend_from_slice(newer);
                    visit(w.labels(), &joined);
                }
            }
        }
    }

    fn select_latest(
        &self,
        matchers: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Labels, Sample)> {
        let Some(windows) = self.windows(matchers) else {
            return Vec::new();
        };
        let mut selected = Vec::with_capacity(windows.len());
        for (_, w) in windows.iter_ordered() {
            if let Some(newest) = w.samples_between(start_ms, end_ms).next_back() {
                selected.push((w.labels().clone(), *newest));
            }
        }
        selected
    }
}

/// How much more than its ranges need the windows of an expression's inputs keep. Steps
/// that have not settled hold their windows back themselves (see
/// `SelectorWindows::hold`); this margin covers a step pending when the state was
/// saved, whose windows come back trimmed to the retention from the newest sample.
pub fn catch_up_ms(step_ms: i64) -> i64 {
    (4 * step_ms).max(60_000)
}

/// The vector an evaluation returned: a scalar is one series without labels.
pub fn as_vector(value: Value) -> Result<Vec<(Labels, f64)>, String> {
    match value {
        Value::Vector(v) => Ok(v),
        Value::Scalar(v) => Ok(vec![(Labels::from_pairs([]), v)]),
        other => Err(format!(
            "the expression returned a {}, not an instant vector",
            other.type_name()
        )),
    }
}

/// Evaluates a rule's query at `at_ms` over `source`.
pub fn run(
    query: &QuerySpec,
    at_ms: i64,
    source: &dyn SeriesSource,
) -> Result<Vec<(Labels, f64)>, String> {
    let opts = EvalOptions {
        semantics: query.semantics,
        ..EvalOptions::default()
    };
    promql::evaluate(&query.expr, at_ms, source, &opts)
        .map_err(|e| e.to_string())
        .and_then(as_vector)
}

/// Small, reused ids for the label sets a query returns.
#[derive(Default)]
struct ResultIds {
    ids: HashMap<Labels, SeriesId>,
    labels: Vec<Option<Labels>>,
    free: Vec<SeriesId>,
}

impl ResultIds {
    fn get_or_insert(&mut self, labels: &Labels) -> SeriesId {
        if let Some(&id) = self.ids.get(labels) {
            return id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.labels.push(None);
            SeriesId((self.labels.len() - 1) as u32)
        });
        self.labels[id.0 as usize] = Some(labels.clone());
        self.ids.insert(labels.clone(), id);
        id
    }

    fn labels_of(&self, id: SeriesId) -> Option<&Labels> {
        self.labels.get(id.0 as usize)?.as_ref()
    }

    fn remove(&mut self, id: SeriesId) -> Option<Labels> {
        let labels = self.labels.get_mut(id.0 as usize)?.take()?;
        self.ids.remove(&labels);
        self.free.push(id);
        Some(labels)
    }

    fn live(&self) -> impl Iterator<Item = (SeriesId, &Labels)> {
        self.labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((SeriesId(i as u32), l.as_ref()?)))
    }
}

/// One series of the latest evaluation, as the rules endpoint shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultValue {
    pub series: Labels,
    /// Written as Prometheus writes values (see [`super::verdict::format_value`]) when
    /// shown: formatting it at every step, for every result, was a measurable share of
    /// evaluation.
    #[serde(serialize_with = "serialize_value")]
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
    pub tripped: bool,
    /// While tripped: when the incident began (the condition first held), event time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomalous_since_ms: Option<i64>,
    /// Why a seasonal rule has no band for this series yet (cold start, no season).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band_missing: Option<String>,
}

/// The latest evaluation of an expression rule.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExprState {
    /// Event time of the evaluation.
    pub at_ms: Option<i64>,
    /// Series the expression returned (the first [`SHOWN_MAX`]).
    pub results: Vec<ResultValue>,
    /// How many series it returned in all.
    pub result_count: usize,
    /// Why the last evaluation failed, if it did (the verdicts then stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub failed_evaluations: u64,
}

/// A seasonal baseline is refitted once per this many steps (an hour at the one-minute
/// step): one fit gives the bands of the following steps, and a fit costs ~16 ms.
const SEASONAL_REFIT_STEPS: usize = 60;

/// The seasonal bands of one result series, from its last fit.
struct SeasonalFit {
    /// The step the first band is for.
    from_ms: i64,
    /// `None` while there is no season to fit (cold start).
    bands: Option<Vec<Band>>,
    /// Why `bands` is `None`, for the rules endpoint.
    missing: Option<String>,
}

/// How many result series the rules endpoint lists per rule.
pub const SHOWN_MAX: usize = 50;

/// A change for one result series: the transition, the series and its value.
pub type SeriesChange = (Transition, Labels, Option<f64>);

/// One result series of an expression rule, as saved across a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedResult {
    pub labels: Labels,
    pub state: SeriesState,
    /// The band's history: `[time, value bits]`, oldest first.
    pub history: Vec<(i64, u64)>,
}

/// What of an [`ExprDetector`] outlives a restart.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExprDetectorState {
    pub last_ms: Option<i64>,
    pub results: Vec<SavedResult>,
}

/// The detector of an expression rule.
pub struct ExprDetector {
    query: QuerySpec,
    condition: ConditionDetector,
    band: Option<BandSpec>,
    band_window_ms: i64,
    ids: ResultIds,
    /// Per result id, its values at the steps it was returned (for the band).
    history: Vec<SeriesWindow>,
    /// Per result id, a z-score or MAD band's history kept running as it slides, as for
    /// a plain series: a step costs O(1) or O(log n), not a pass over the history.
    running: RunningBands,
    /// Per result id, its seasonal bands (seasonal detection only).
    seasonal: Vec<Option<SeasonalFit>>,
    last_ms: i64,
    state: ExprState,
    sort: Vec<f64>,
    values: Vec<f64>,
}

impl ExprDetector {
    pub fn new(query: QuerySpec, condition: ConditionSpec, band_window_ms: i64) -> Self {
        let running = RunningBands::for_spec(condition.band.as_ref());
        Self {
            band: condition.band,
            condition: ConditionDetector::new(condition),
            query,
            band_window_ms,
            ids: ResultIds::default(),
            history: Vec::new(),
            running,
            seasonal: Vec::new(),
            last_ms: i64::MIN,
            state: ExprState::default(),
            sort: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Event time between evaluations.
    pub fn step_ms(&self) -> i64 {
        self.query.step_ms
    }

    /// The last step evaluated, if any.
    pub fn last_step(&self) -> Option<i64> {
        (self.last_ms != i64::MIN).then_some(self.last_ms)
    }

    pub fn state(&self) -> &ExprState {
        &self.state
    }

    /// The result series' condition state and band history, keyed by their labels.
    pub fn export(&self) -> ExprDetectorState {
        let states: std::collections::HashMap<u32, SeriesState> =
            self.condition.export().into_iter().collect();
        ExprDetectorState {
            last_ms: (self.last_ms != i64::MIN).then_some(self.last_ms),
            results: self
                .ids
                .live()
                .map(|(id, labels)| SavedResult {
                    labels: labels.clone(),
                    state: states.get(&id.0).copied().unwrap_or_default(),
                    history: self
                        .history
                        .get(id.0 as usize)
                        .map(|h| {
                            h.samples()
                                .map(|s| (s.timestamp_ms, s.value.to_bits()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Continues from saved state (the rule's expression is the same: the caller checked).
    pub fn restore(&mut self, saved: ExprDetectorState) {
        self.last_ms = saved.last_ms.unwrap_or(i64::MIN);
        for result in saved.results {
            let id = self.ids.get_or_insert(&result.labels);
            self.condition.restore(id, result.state);
            let index = id.0 as usize;
            let history = self.history_of(index);
            *history = SeriesWindow::detached();
            for (t, bits) in result.history {
                let sample = Sample {
                    timestamp_ms: t,
                    value: f64::from_bits(bits),
                };
                history.insert(sample, i64::MAX, t);
            }
            self.running.forget(index);
        }
    }

    /// Evaluates at `at_ms` and judges every returned series; series no longer returned
    /// clear. An evaluation error changes no verdict (as a failing Prometheus rule keeps
    /// its alerts) and is shown on the rule.
    pub fn evaluate(&mut self, at_ms: i64, source: &dyn SeriesSource) -> Vec<SeriesChange> {
        self.last_ms = at_ms;
        self.state.at_ms = Some(at_ms);
        let results = match run(&self.query, at_ms, source) {
            Ok(results) => results,
            Err(error) => {
                self.state.error = Some(error);
                self.state.failed_evaluations += 1;
                return Vec::new();
            }
        };
        self.state.error = None;
        let mut changes = Vec::new();
        let mut seen = vec![false; self.ids.labels.len()];
        self.state.results.clear();
        self.state.result_count = results.len();
        for (labels, value) in results {
            let id = self.ids.get_or_insert(&labels);
            let index = id.0 as usize;
            if index >= seen.len() {
                seen.resize(index + 1, false);
            }
            seen[index] = true;
            let band = self.band_for(id, at_ms, value);
            if let Some(t) = self.condition.observe(id, Some(value), band, at_ms) {
                changes.push((t, labels.clone(), Some(value)));
            }
            if self.band.is_some() {
                self.remember(id, at_ms, value);
            }
            if self.state.results.len() < SHOWN_MAX {
                let band_missing = band
                    .is_none()
                    .then(|| self.seasonal.get(index)?.as_ref()?.missing.clone())
                    .flatten();
                self.state.results.push(ResultValue {
                    tripped: self.condition.is_tripped(id),
                    anomalous_since_ms: self.condition.anomalous_since(id),
                    band_missing,
                    series: labels,
                    value,
                    band,
                });
            }
        }
        let gone: Vec<SeriesId> = self
            .ids
            .live()
            .map(|(id, _)| id)
            .filter(|id| !seen.get(id.0 as usize).copied().unwrap_or(false))
            .collect();
        let seasonal = self
            .band
            .is_some_and(|b| b.algorithm == BandAlgorithm::Seasonal);
        for id in gone {
            let index = id.0 as usize;
            let cleared = self.condition.forget(id);
            // A seasonal baseline's history is days of values. A series that a missed
            // scrape, or a scrape interval longer than the 5m lookback, takes out of the
            // results for a while keeps it (its trip still clears now) until its newest
            // value leaves the band's window; the gap is then carried over like any
            // step it was not returned at.
            let keep = seasonal
                && self
                    .history
                    .get(index)
                    .and_then(SeriesWindow::last)
                    .is_some_and(|s| s.timestamp_ms >= at_ms.saturating_sub(self.band_window_ms));
            let labels = if keep {
                self.ids.labels_of(id).cloned()
            } else {
                if let Some(history) = self.history.get_mut(index) {
                    *history = SeriesWindow::detached();
                }
                self.running.forget(index);
                if let Some(fit) = self.seasonal.get_mut(index) {
                    *fit = None;
                }
                self.ids.remove(id)
            };
            if let Some(labels) = labels
                && let Some(mut t) = cleared
            {
                t.reason = "the expression no longer returns this series".into();
                changes.push((t, labels, None));
            }
        }
        changes
    }

    /// The band for result `id` from its history before `at_ms`, if the rule has one and
    /// the history is long enough.
    fn band_for(&mut self, id: SeriesId, at_ms: i64, value: f64) -> Option<Band> {
        let spec = self.band?;
        let index = id.0 as usize;
        self.carry_over(id, at_ms);
        let history = self.history.get(index)?;
        let from = at_ms.saturating_sub(self.band_window_ms);
        let values = || {
            history
                .samples_in(from, at_ms)
                .map(|s| s.value)
                .filter(|v| v.is_finite())
        };
        match spec.algorithm {
            BandAlgorithm::Zscore | BandAlgorithm::Mad => {
                // Before the value at `at_ms` is appended: the history still holds what
                // leaves the band's span.
                self.running.advance(index, history, from, at_ms);
                match self.running.band(index, &spec, from, at_ms) {
                    Some(band) => band,
                    None => band::band_of(values(), &spec, &mut self.sort),
                }
            }
            BandAlgorithm::Likelihood => {
                self.running.advance(index, history, from, at_ms);
                let sample = Sample {
                    timestamp_ms: at_ms,
                    value,
                };
                self.running
                    .judge(index, &spec, history, from, sample)
                    .flatten()
            }
            BandAlgorithm::Seasonal => {
                self.values.clear();
                self.values.extend(values());
                let step = self.query.step_ms;
                let index = id.0 as usize;
                if index >= self.seasonal.len() {
                    self.seasonal.resize_with(index + 1, || None);
                }
                let cached = self.seasonal[index].as_ref().and_then(|fit| {
                    let k = usize::try_from((at_ms - fit.from_ms) / step).ok()?;
                    (k < SEASONAL_REFIT_STEPS).then(|| fit.bands.as_ref()?.get(k).copied())
                });
                if let Some(band) = cached {
                    return band;
                }
                // The history ends at its newest step before `at_ms`; the bands start at
                // the step after it.
                let newest = history
                    .samples_in(i64::MIN, at_ms)
                    .next_back()
                    .map_or(at_ms - step, |s| s.timestamp_ms);
                let from_ms = newest + step;
                let skip = usize::try_from((at_ms - from_ms) / step).unwrap_or(0);
                let bands = forecast::seasonal_bands(
                    &self.values,
                    step,
                    spec.sensitivity,
                    spec.min_samples,
                    skip + SEASONAL_REFIT_STEPS,
                );
                let band = bands.as_ref().and_then(|b| b.get(skip).copied());
                let missing = bands
                    .is_none()
                    .then(|| seasonal_missing(self.values.len(), spec.min_samples, step));
                self.seasonal[index] = Some(SeasonalFit {
                    from_ms,
                    bands,
                    missing,
                });
                band
            }
        }
    }

    /// Appends a value to a result series' history and trims it to the band's window. For
    /// a seasonal baseline, which needs a fixed step, the previous value is carried over
    /// the steps the series was not returned at.
    fn remember(&mut self, id: SeriesId, at_ms: i64, value: f64) {
        self.carry_over(id, at_ms);
        let window_ms = self.band_window_ms;
        let sample = Sample {
            timestamp_ms: at_ms,
            value,
        };
        self.history_of(id.0 as usize)
            .insert(sample, window_ms, at_ms);
    }

    /// For a seasonal baseline, which needs a value at every step: carries a result
    /// series' newest value over the steps before `at_ms` it was not returned at (or not
    /// evaluated at: steps further back than `CATCH_UP_MAX_MS` are skipped).
    /// Done before a fit too, not only when the next value comes: a fit made at such a
    /// step saw a history a few steps short (2879 one-minute values of a 2-day window on
    /// 5-minute data), too short for two daily seasons, and the band never came.
    fn carry_over(&mut self, id: SeriesId, at_ms: i64) {
        // Only the seasonal baseline needs a fixed step; carrying values over a gap
        // would make a z-score or MAD history look flat.
        if !self
            .band
            .is_some_and(|b| b.algorithm == BandAlgorithm::Seasonal)
        {
            return;
        }
        let step = self.query.step_ms;
        let window_ms = self.band_window_ms;
        let from = at_ms.saturating_sub(window_ms);
        let history = self.history_of(id.0 as usize);
        let Some(last) = history.last() else {
            return;
        };
        let mut t = last
            .timestamp_ms
            .max(from.saturating_sub(step))
            .saturating_add(step);
        while t < at_ms {
            let sample = Sample {
                timestamp_ms: t,
                value: last.value,
            };
            history.insert(sample, window_ms, t);
            t += step;
        }
    }

    /// Result `index`'s history, made when it has none.
    fn history_of(&mut self, index: usize) -> &mut SeriesWindow {
        if index >= self.history.len() {
            self.history.resize_with(index + 1, SeriesWindow::detached);
        }
        &mut self.history[index]
    }
}

/// Why a seasonal fit of `have` values at `step_ms` gave no band.
fn seasonal_missing(have: usize, min_samples: usize, step_ms: i64) -> String {
    let need = min_samples.max(forecast::MIN_POINTS);
    let daily = (86_400_000 / step_ms.max(1)) as usize * 2;
    if have < need {
        format!("cold start: {have} of the {need} values (one per step) a band needs")
    } else if have < daily {
        format!(
            "no season yet: {have} values hold less than the two days ({daily} values) a daily season needs, and the periodogram found no shorter season the decomposition confirms"
        )
    } else {
        "the seasonal fit gave no finite band".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_ids_are_reused_after_removal() {
        let mut ids = ResultIds::default();
        let a = ids.get_or_insert(&Labels::from_pairs([("pod", "a")]));
        let b = ids.get_or_insert(&Labels::from_pairs([("pod", "b")]));
        assert_ne!(a, b);
        assert_eq!(ids.get_or_insert(&Labels::from_pairs([("pod", "a")])), a);
        assert!(ids.remove(a).is_some());
        let c = ids.get_or_insert(&Labels::from_pairs([("pod", "c")]));
        assert_eq!(c, a);
        assert_eq!(ids.live().count(), 2);
    }
}
