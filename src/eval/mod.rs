//! Eval: runs each rule's detector over its windows as batches arrive, in event time, and
//! emits verdict changes. Rules on a plain selector judge each sample as it arrives;
//! expressions, forecasts and SLOs evaluate at steps, each step once it has settled
//! (every series they read has reached it, or `--settle-delay` ran out on the receiver's
//! clock), in order, however many steps a batch carries. Pure and deterministic: the
//! receiver's clock comes in with each batch and with [`Evaluator::tick`], so the same
//! batches and ticks give the same verdicts and a capture can be replayed to backtest a
//! rule. Owns the windows (one [`SelectorWindows`] per distinct selector, shared by the
//! rule inputs that read it) so that nothing else needs to lock them.

mod band;
mod condition;
mod expr;
pub mod forecast;
mod persist;
mod predict;
pub mod promql;
mod slo;
mod verdict;
mod worker;

use band::RunningBands;
pub use band::{Band, BandAlgorithm, BandSpec, SURPRISE_KEEP_MS};
pub use condition::{ConditionDetector, Transition};
pub use expr::{ExprDetector, ExprState, ResultValue, WindowSource, catch_up_ms};
pub use persist::{DetectorState, EvaluatorState, Restored, RuleState, fingerprint};
pub use predict::{ForecastDetector, ForecastState, ForecastView, SeriesForecast};
pub use slo::{BurnTier, SliCounter, SliShape, SloDetector, SloSpec, SloState, default_tiers};
pub use verdict::{Change, PodRef, Verdict, format_value};
pub use worker::{EvalEvent, EvalHandle, RuleSetChange, SubmitError, spawn};

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::Instant;

use serde::Serialize;

use crate::ingest::Sample;
use crate::labels::Labels;
use crate::route::{Batch, Router, Selector, SelectorId};
use crate::rules::compile::{CompiledRule, DetectorSpec, LOOKBACK_MS, Scope};
use crate::rules::load::RuleKey;
use crate::window::{Insert, SelectorWindows, SeriesId, SeriesWindow, WindowSpec};

enum Detector {
    Condition {
        detector: ConditionDetector,
        band: Option<BandSpec>,
        /// The band's running history per series (see [`Detector::prepare`]).
        running: RunningBands,
    },
    Slo {
        detector: SloDetector,
        /// What each of the rule's inputs counts.
        counters: Vec<SliCounter>,
        /// The state at the last evaluation, for the rules endpoint.
        state: Option<SloState>,
        /// Event-time minute of the last evaluation: the rollups change by the minute, so
        /// an SLO is judged at most once per minute of event time.
        last_minute: i64,
    },
    /// An expression judged at each step boundary (AnomalyAction over an expression).
    Expression(ExprDetector),
    /// A forecast made at each step boundary (PredictiveScale).
    Forecast(ForecastDetector),
}

impl Detector {
    /// Whether [`Self::prepare`] has anything to do for this rule.
    fn keeps_running_band(&self) -> bool {
        matches!(
            self,
            Self::Condition { running, .. } if !matches!(running, RunningBands::None)
        )
    }

    /// Before a sample at `until_ms` is inserted into series `id` (whose window is
    /// `window`, not yet trimmed for it): a band slides its running history to the one
    /// that sample will be judged against, `[from_ms, until_ms)`, while the window still
    /// holds the samples leaving it.
    fn prepare(&mut self, id: SeriesId, window: &SeriesWindow, from_ms: i64, until_ms: i64) {
        if let Self::Condition { running, .. } = self {
            running.advance(id.0 as usize, window, from_ms, until_ms);
        }
    }

    /// A sample was appended to series `id` of the rule's input `input`, whose window is
    /// now `window`.
    ///
    /// `history_from_ms` is where the input's own history starts: the window may reach
    /// further back for another rule that shares it.
    fn observe(
        &mut self,
        input: usize,
        id: SeriesId,
        sample: Sample,
        window: &SeriesWindow,
        history_from_ms: i64,
        scratch: &mut Scratch,
    ) -> Option<Transition> {
        match self {
            Self::Condition {
                detector,
                band,
                running,
            } => {
                let current = window.current().map(|s| s.value);
                let band = band.as_ref().and_then(|spec| {
                    // A likelihood band has state of its own, learnt from each sample.
                    if let Some(band) =
                        running.judge(id.0 as usize, spec, window, history_from_ms, sample)
                    {
                        return band;
                    }
                    if let Some(band) =
                        running.band(id.0 as usize, spec, history_from_ms, sample.timestamp_ms)
                    {
                        return band;
                    }
                    // Rules that share the window and judge the same history the same way
                    // (a warning and a critical rule) need the band computed once.
                    if let Some((memo_spec, memo_from, band)) = scratch.band
                        && memo_spec == *spec
                        && memo_from == history_from_ms
                    {
                        return band;
                    }
                    // The band comes from the history before this sample.
                    let history = window
                        .samples_in(history_from_ms, sample.timestamp_ms)
                        .filter(|s| s.value.is_finite())
                        .map(|s| s.value);
                    let band = band::band_of(history, spec, &mut scratch.sort);
                    scratch.band = Some((*spec, history_from_ms, band));
                    band
                });
                detector.observe(id, current, band, sample.timestamp_ms)
            }
            Self::Slo {
                detector, counters, ..
            } => {
                if let Some(&counter) = counters.get(input) {
                    detector.observe(counter, id.0, sample.timestamp_ms, sample.value);
                }
                None
            }
            // Judged at step boundaries, over all of the rule's windows at once.
            Self::Expression(_) | Self::Forecast(_) => None,
        }
    }

    /// The series reappeared after more than the lookback without samples.
    fn resumed(&mut self, id: SeriesId) -> Option<Transition> {
        match self {
            Self::Condition {
                detector, running, ..
            } => {
                running.forget(id.0 as usize);
                detector.forget(id)
            }
            // A counter's increase across a gap is real: keep its baseline.
            Self::Slo { .. } => None,
            // The expression's own lookback decides what it returns.
            Self::Expression(_) | Self::Forecast(_) => None,
        }
    }

    /// The series was evicted; its id may be reused by another series.
    fn evicted(&mut self, input: usize, id: SeriesId) -> Option<Transition> {
        match self {
            Self::Condition {
                detector, running, ..
            } => {
                running.forget(id.0 as usize);
                detector.forget(id)
            }
            Self::Slo {
                detector, counters, ..
            } => {
                if let Some(&counter) = counters.get(input) {
                    detector.forget(counter, id.0);
                }
                None
            }
            Self::Expression(_) | Self::Forecast(_) => None,
        }
    }

    /// Event time between the rule's evaluations; `None` for a rule judged sample by
    /// sample (which never waits for anything).
    fn step_ms(&self) -> Option<i64> {
        match self {
            Self::Condition { .. } => None,
            Self::Slo { .. } => Some(SLO_STEP_MS),
            Self::Expression(d) => Some(d.step_ms()),
            Self::Forecast(d) => Some(d.step_ms()),
        }
    }

    /// The last step evaluated.
    fn last_step(&self) -> Option<i64> {
        match self {
            Self::Condition { .. } => None,
            Self::Slo { last_minute, .. } => {
                (*last_minute != i64::MIN).then(|| last_minute.saturating_mul(SLO_STEP_MS))
            }
            Self::Expression(d) => d.last_step(),
            Self::Forecast(d) => d.last_step(),
        }
    }

    /// The newest sample time the evaluation at step `at_ms` reads: an expression reads
    /// samples up to its evaluation time, as Prometheus does; an SLO is judged at a
    /// minute boundary over the whole minutes before it.
    fn reads_through(&self, at_ms: i64) -> i64 {
        match self {
            Self::Slo { .. } => at_ms.saturating_sub(1),
            _ => at_ms,
        }
    }

    /// Evaluates step `at_ms`, whose inputs have settled (see [`Evaluator::settle`]).
    /// Returns the changes with the series they concern (`None`: the rule as a whole),
    /// their value and event time.
    fn evaluate_step(&mut self, at_ms: i64, source: &dyn promql::SeriesSource) -> Vec<Settled> {
        match self {
            Self::Condition { .. } => Vec::new(),
            Self::Slo {
                detector,
                state,
                last_minute,
                ..
            } => {
                *last_minute = at_ms.div_euclid(SLO_STEP_MS);
                // The rollups may hold minutes after the boundary already (samples of
                // series that are further on): the minute before it is the last read.
                let (mut now, transition) = detector.evaluate(at_ms.saturating_sub(1));
                now.at_ms = at_ms;
                let budget = now.budget_remaining;
                *state = Some(now);
                transition
                    .map(|t| Settled {
                        transition: t,
                        series: None,
                        value: Some(budget),
                        at_ms,
                        forecast: None,
                    })
                    .into_iter()
                    .collect()
            }
            Self::Expression(detector) => detector
                .evaluate(at_ms, source)
                .into_iter()
                .map(|(transition, series, value)| Settled {
                    transition,
                    series: Some(series),
                    value,
                    at_ms,
                    forecast: None,
                })
                .collect(),
            Self::Forecast(detector) => {
                let mut settled = Vec::new();
                for (transition, series, value) in detector.evaluate(at_ms, source) {
                    settled.push(Settled {
                        forecast: detector.latest(&series),
                        transition,
                        series: Some(series),
                        value,
                        at_ms,
                    });
                }
                settled
            }
        }
    }
}

/// An SLO is judged once per minute of event time, at each minute boundary.
const SLO_STEP_MS: i64 = 60_000;

/// How far behind its clock a rule's steps are still evaluated one by one. A sender's
/// backlog after an outage of its remote endpoint is what its WAL still holds, rarely more
/// than about three hours for Prometheus (the WAL is truncated at each 2-hour head
/// compaction); older steps, and the steps of a longer silence, are skipped rather than
/// evaluated by the thousand.
pub const CATCH_UP_MAX_MS: i64 = 6 * 60 * 60 * 1000;

/// The default of `--settle-delay`: how long, on the receiver's clock, a step waits for
/// series that have not reached it since the first sample past it arrived. Prometheus
/// sends each remote-write shard's batch at the latest `batch_send_deadline` (5 s by
/// default) after its first sample; twice that leaves room for the request itself and a
/// retry.
pub const DEFAULT_SETTLE_DELAY_MS: i64 = 10_000;

/// When a rule's clock reached a time: the receiver's clock and the request's arrival.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    clock_ms: i64,
    wall_ms: i64,
    at: Instant,
}

/// Where the history a sample is judged against starts for an input: its retention back
/// from the older of the sample's time and the receiver's clock (the window may reach
/// further back for another input that shares it).
fn history_from(sample: Sample, batch: &Batch, slot: &InputSlot) -> i64 {
    sample
        .timestamp_ms
        .min(batch.received_ms)
        .saturating_sub(slot.retention_ms)
}

/// The first multiple of `step` at or after `t` (saturating at the edges of i64).
fn ceil_to(t: i64, step: i64) -> i64 {
    let floor = t.div_euclid(step).saturating_mul(step);
    if floor < t {
        floor.saturating_add(step)
    } else {
        floor
    }
}

/// A change found when a rule settles.
struct Settled {
    transition: Transition,
    series: Option<Labels>,
    value: Option<f64>,
    at_ms: i64,
    forecast: Option<ForecastView>,
}

/// Buffers reused across samples, so that computing bands allocates nothing per sample.
#[derive(Default)]
struct Scratch {
    sort: Vec<f64>,
    /// The band last computed for the sample being judged, by spec and history start;
    /// reset for each sample.
    band: Option<(BandSpec, i64, Option<Band>)>,
}

struct ActiveRule {
    compiled: CompiledRule,
    detector: Detector,
    /// Verdict changes so far; the sample counts are its windows' (see `counters`).
    tripped: u64,
    cleared: u64,
    /// The rule's slots in `Evaluator::inputs`, which hold each rule's inputs together.
    inputs: Range<usize>,
    /// For a rule evaluated at steps: its first step, placed when its first samples
    /// arrive (afterwards the next step follows the last one evaluated).
    first_ms: Option<i64>,
    /// The rule's event clock as of the last batch, and how far its own inputs took it
    /// (a rule whose series all ended or went quiet follows the other rules' clock).
    clock_ms: i64,
    own_clock_ms: i64,
    /// When the rule's clock moved, oldest first, kept from the first time past its next
    /// step on: a step's settle delay runs from the arrival of the first sample past it.
    arrivals: VecDeque<Arrival>,
}

struct InputSlot {
    rule: usize,
    /// Position of this input among its rule's inputs.
    index: usize,
    /// The windows it reads, in `Evaluator::stores`.
    store: usize,
    /// How far back this input itself looks; its store may keep more for another rule.
    retention_ms: i64,
    /// A series silent this long starts afresh for this input's detector.
    idle_ms: i64,
}

/// The windows of one distinct selector, shared by every rule input that reads it with the
/// same idle time (so that a series is forgotten, and a late sample refused, exactly when
/// each reader alone would). Rule sets repeat selectors (a warning and a critical
/// threshold on one metric, a band beside them), and a sample is then looked up and
/// stored once, not once per rule. The windows keep the longest retention any reader
/// needs.
struct Store {
    selector: Selector,
    windows: SelectorWindows,
    /// Indices into `Evaluator::inputs`.
    readers: Vec<usize>,
    /// The readers whose band keeps a running history (see [`Detector::prepare`]); none
    /// for windows only thresholds, SLOs and expressions read.
    band_readers: Vec<usize>,
    /// What became of the samples offered to these windows; every reader's rule shows
    /// them as its own (kept here, not per rule, to stay off the per-reader path).
    counters: StoreCounters,
    /// The newest sample time a settled step of a reader has read: a sample at or before
    /// it arrived too late for that step.
    settled_ms: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct StoreCounters {
    samples: u64,
    out_of_order: u64,
    over_limit: u64,
    late: u64,
    last_sample_ms: Option<i64>,
}

/// Running totals for one rule, shown by `GET /api/v1/rules`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounters {
    /// Samples taken into the rule's windows.
    pub samples: u64,
    /// Samples dropped: older than their series' newest, or than the rule's clock allows.
    pub out_of_order_samples: u64,
    /// Samples of series refused because the rule holds `--series-limit` series.
    pub over_limit_samples: u64,
    /// Samples taken that arrived after a step reading them had settled (its settle
    /// delay ran out without them): used from the next step on.
    pub late_samples: u64,
    pub tripped: u64,
    pub cleared: u64,
    /// Event time of the newest sample the rule has seen.
    pub last_sample_ms: Option<i64>,
}

/// What applying one batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub verdicts: Vec<Verdict>,
    pub appended: usize,
    pub duplicates: usize,
    pub out_of_order: usize,
    /// Samples of series refused because their rule is at its series limit, per rule.
    pub over_limit: Vec<(RuleKey, usize)>,
    /// Samples taken after a step reading them settled (see [`RuleCounters`]).
    pub late: usize,
    /// Steps evaluated because their settle delay ran out rather than because every
    /// series they read had reached them.
    pub settled_by_delay: usize,
}

/// One tripped series, as the rules endpoint lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrippedSeries {
    pub series: Labels,
    pub value: Option<String>,
    pub sample_time_ms: i64,
    /// When the incident began: the event time the condition first held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomalous_since_ms: Option<i64>,
}

/// A live view of one active rule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSnapshot {
    /// Not serialized: the rules endpoint shows the key beside the snapshot.
    #[serde(skip)]
    pub rule: RuleKey,
    pub summary: String,
    pub series: usize,
    pub series_limit: usize,
    pub tripped_series: Vec<TrippedSeries>,
    pub counters: RuleCounters,
    /// For an SLO: burn rates per tier, budget remaining, time to exhaustion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloState>,
    /// For an AnomalyAction: what it judges now, per series (the first 50): the value,
    /// its band if the rule has one, and whether it is tripped. For an expression rule,
    /// its latest evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<ExprState>,
    /// For a PredictiveScale: the latest forecast per series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastState>,
}

/// How many tripped series a snapshot lists per rule.
const SNAPSHOT_TRIPPED_MAX: usize = 50;

/// Every active rule, its windows and its detector state.
pub struct Evaluator {
    rules: Vec<ActiveRule>,
    /// The newest event time any rule's clock has reached.
    clock_ms: i64,
    inputs: Vec<InputSlot>,
    stores: Vec<Store>,
    scratch: Scratch,
    /// How long a step waits for series that have not reached it (receiver's clock, ms).
    settle_ms: i64,
    /// The receiver's clock as last told (by a batch or [`Self::tick`]).
    wall_ms: i64,
}

impl Evaluator {
    /// Sets up windows for every input of every rule, each bounded to `series_limit`.
    pub fn new(rules: Vec<CompiledRule>, series_limit: usize) -> Self {
        let mut inputs: Vec<InputSlot> = Vec::new();
        // Selectors and their readers first; the windows once every reader is known.
        let mut shared: Vec<(Selector, Vec<usize>)> = Vec::new();
        // By the selector's printed form, which names every matcher (a regex by its
        // pattern), so that thousands of rules are grouped without comparing each pair;
        // and by idle time, which decides when a series is forgotten and which late
        // samples are refused: inputs that differ in it must not share.
        let mut by_key: HashMap<(String, i64), usize> = HashMap::new();
        let rules: Vec<ActiveRule> = rules
            .into_iter()
            .enumerate()
            .map(|(index, compiled)| {
                let first = inputs.len();
                for (position, input) in compiled.inputs.iter().enumerate() {
                    let idle_ms = input.retention_ms.max(LOOKBACK_MS).max(input.min_idle_ms);
                    let store = *by_key
                        .entry((format!("{:?}", input.selector), idle_ms))
                        .or_insert_with(|| {
                            shared.push((input.selector.clone(), Vec::new()));
                            shared.len() - 1
                        });
                    shared[store].1.push(inputs.len());
                    inputs.push(InputSlot {
                        rule: index,
                        index: position,
                        store,
                        retention_ms: input.retention_ms,
                        idle_ms,
                    });
                }
                let detector = match &compiled.detector {
                    DetectorSpec::Condition(spec) => Detector::Condition {
                        detector: ConditionDetector::new(spec.clone()),
                        band: spec.band,
                        running: RunningBands::for_spec(spec.band.as_ref()),
                    },
                    DetectorSpec::Slo { spec, counters } => Detector::Slo {
                        detector: SloDetector::new(spec.clone()),
                        counters: counters.clone(),
                        state: None,
                        last_minute: i64::MIN,
                    },
                    DetectorSpec::Expression {
                        query,
                        condition,
                        band_window_ms,
                    } => Detector::Expression(ExprDetector::new(
                        query.clone(),
                        condition.clone(),
                        *band_window_ms,
                    )),
                    DetectorSpec::Forecast(spec) => {
                        Detector::Forecast(ForecastDetector::new(spec.clone()))
                    }
                };
                ActiveRule {
                    compiled,
                    detector,
                    tripped: 0,
                    cleared: 0,
                    inputs: first..inputs.len(),
                    first_ms: None,
                    clock_ms: i64::MIN,
                    own_clock_ms: i64::MIN,
                    arrivals: VecDeque::new(),
                }
            })
            .collect();
        let stores = shared
            .into_iter()
            .map(|(selector, readers)| {
                let most = |f: fn(&InputSlot) -> i64| {
                    readers.iter().map(|&r| f(&inputs[r])).max().unwrap_or(0)
                };
                let band_readers = readers
                    .iter()
                    .copied()
                    .filter(|&r| rules[inputs[r].rule].detector.keeps_running_band())
                    .collect();
                Store {
                    windows: SelectorWindows::new(WindowSpec {
                        retention_ms: most(|i| i.retention_ms),
                        idle_ms: most(|i| i.idle_ms),
                        series_limit,
                        // What no reader needs past its range or the lookback may make
                        // room for a new series at the limit.
                        reclaim_ms: most(|i| i.retention_ms).max(LOOKBACK_MS),
                        label_bytes_limit: crate::window::LABEL_BYTES_LIMIT,
                    }),
                    selector,
                    readers,
                    band_readers,
                    counters: StoreCounters::default(),
                    settled_ms: i64::MIN,
                }
            })
            .collect();
        Self {
            rules,
            clock_ms: i64::MIN,
            inputs,
            stores,
            scratch: Scratch::default(),
            settle_ms: DEFAULT_SETTLE_DELAY_MS,
            wall_ms: i64::MIN,
        }
    }

    /// Sets `--settle-delay` (ms on the receiver's clock).
    pub fn with_settle_delay(mut self, settle_ms: i64) -> Self {
        self.settle_ms = settle_ms.max(0);
        self
    }

    pub fn settle_delay_ms(&self) -> i64 {
        self.settle_ms
    }

    /// The windows an input reads.
    fn windows(&self, slot: &InputSlot) -> &SelectorWindows {
        &self.stores[slot.store].windows
    }

    /// The router for exactly these inputs, with the series hash keyed by `seed`.
    /// Entries name a store (one per distinct selector), not a rule input.
    pub fn router(&self, seed: u64) -> Router {
        let selectors = self
            .stores
            .iter()
            .enumerate()
            .map(|(i, store)| (SelectorId(i as u32), store.selector.clone()));
        Router::new(selectors, seed)
    }

    /// Series tracked across all rules (a series read by several rules counts once per
    /// distinct selector).
    pub fn series_active(&self) -> usize {
        self.stores.iter().map(|s| s.windows.len()).sum()
    }

    /// Inserts a batch's samples into their windows, runs the detectors on every appended
    /// sample in order, then evicts series that fell out of the lookback.
    ///
    /// Rules judged sample by sample are judged here at once. Rules evaluated at steps
    /// (expressions, forecasts, SLOs) evaluate each step once it has settled (see
    /// [`Self::settle`]): a step of a batch carrying minutes of backlog is evaluated in
    /// order like the others, its windows held back for it until then.
    pub fn apply(&mut self, batch: &Batch) -> Outcome {
        let mut outcome = Outcome::default();
        self.wall_ms = self.wall_ms.max(batch.received_ms);
        self.hold_windows();
        for store in &mut self.stores {
            store.windows.begin_batch();
        }
        // Per store, the oldest sample it took in this batch (`i64::MAX`: none).
        let mut oldest_appended = vec![i64::MAX; self.stores.len()];
        // The series of the previous entry, with its labels as a window holds them: the
        // following entries of that series (its other selectors) find it by them,
        // comparing pointers rather than bytes when the windows share one copy.
        let mut shared: Option<(u32, Labels)> = None;
        for entry in &batch.entries {
            let index = entry.input.0 as usize;
            let Some(store) = self.stores.get_mut(index) else {
                continue;
            };
            let samples = batch.samples(entry);
            let found = match &shared {
                Some((series, labels)) if *series == entry.series() => {
                    store.windows.get_or_insert_shared(entry.hash, labels)
                }
                _ => {
                    let found = store
                        .windows
                        .get_or_insert(entry.hash, batch.canonical_labels(entry));
                    if let Ok(id) = found
                        && let Some(window) = store.windows.get(id)
                    {
                        shared = Some((entry.series(), window.labels().clone()));
                    }
                    found
                }
            };
            let Ok(id) = found else {
                if let Some(newest) = samples.iter().map(|s| s.timestamp_ms).max() {
                    store.windows.advance_clock(newest, batch.received_ms);
                }
                store.counters.over_limit += samples.len() as u64;
                for &reader in &store.readers {
                    let rule = &self.rules[self.inputs[reader].rule];
                    outcome
                        .over_limit
                        .push((rule.compiled.key.clone(), samples.len()));
                }
                continue;
            };
            for &sample in samples {
                let before = store.windows.get(id);
                let last = before.map_or(i64::MIN, |w| w.last_timestamp_ms());
                // Only for a sample the window will take: one refused as too old must not
                // move the histories (back and forth, rebuilding them each time).
                if sample.timestamp_ms > last
                    && !store.windows.too_old(sample)
                    && let Some(window) = before
                {
                    for &reader in &store.band_readers {
                        let slot = &self.inputs[reader];
                        let from_ms = history_from(sample, batch, slot);
                        self.rules[slot.rule].detector.prepare(
                            id,
                            window,
                            from_ms,
                            sample.timestamp_ms,
                        );
                    }
                }
                let inserted = store.windows.insert(id, sample, batch.received_ms);
                match inserted {
                    Insert::Appended => {
                        outcome.appended += 1;
                        oldest_appended[index] = oldest_appended[index].min(sample.timestamp_ms);
                        let counters = &mut store.counters;
                        counters.samples += 1;
                        if sample.timestamp_ms <= store.settled_ms {
                            counters.late += 1;
                            outcome.late += 1;
                        }
                        counters.last_sample_ms = Some(
                            counters
                                .last_sample_ms
                                .map_or(sample.timestamp_ms, |t| t.max(sample.timestamp_ms)),
                        );
                    }
                    Insert::Duplicate => outcome.duplicates += 1,
                    Insert::OutOfOrder | Insert::TooOld => {
                        outcome.out_of_order += 1;
                        store.counters.out_of_order += 1;
                    }
                }
                // Only a sample after the series' last can end a silence (below).
                if inserted != Insert::Appended && sample.timestamp_ms <= last {
                    continue;
                }
                let Some(window) = store.windows.get(id) else {
                    continue;
                };
                let current = window.current().map(|s| s.value);
                self.scratch.band = None;
                for &reader in &store.readers {
                    let slot = &self.inputs[reader];
                    let rule = &mut self.rules[slot.rule];
                    // A series silent for longer than the lookback starts afresh, as if it
                    // had been evicted in between (the sweep only runs now and then).
                    if last != i64::MIN
                        && sample.timestamp_ms.saturating_sub(last) > slot.idle_ms
                        && let Some(t) = rule.detector.resumed(id)
                    {
                        let labels = window.labels().clone();
                        outcome
                            .verdicts
                            .push(rule.verdict(t, labels, None, last, batch.arrived));
                    }
                    if inserted != Insert::Appended {
                        continue;
                    }
                    let history_from_ms = history_from(sample, batch, slot);
                    if let Some(t) = rule.detector.observe(
                        slot.index,
                        id,
                        sample,
                        window,
                        history_from_ms,
                        &mut self.scratch,
                    ) {
                        let labels = window.labels().clone();
                        outcome.verdicts.push(rule.verdict(
                            t,
                            labels,
                            current,
                            sample.timestamp_ms,
                            batch.arrived,
                        ));
                    }
                }
            }
        }
        let touched: Vec<bool> = self
            .rules
            .iter()
            .map(|rule| {
                self.inputs[rule.inputs.clone()]
                    .iter()
                    .any(|slot| oldest_appended[slot.store] != i64::MAX)
            })
            .collect();
        // Event time as far as this batch took it: rules whose inputs fell silent still
        // evaluate their expression on it, so that what it no longer returns clears.
        self.clock_ms = self.clock_ms.max(
            self.rules
                .iter()
                .zip(&touched)
                .filter(|(_, touched)| **touched)
                .flat_map(|(rule, _)| &self.inputs[rule.inputs.clone()])
                .map(|s| self.stores[s.store].windows.clock_ms())
                .max()
                .unwrap_or(i64::MIN),
        );
        let arrival = Arrival {
            clock_ms: i64::MIN,
            wall_ms: batch.received_ms,
            at: batch.arrived,
        };
        for index in 0..self.rules.len() {
            let oldest = self.inputs[self.rules[index].inputs.clone()]
                .iter()
                .map(|s| oldest_appended[s.store])
                .min()
                .unwrap_or(i64::MAX);
            self.advance_rule(index, oldest, arrival);
        }
        self.settle(&mut outcome);
        // What the steps still pending need is not evicted.
        self.hold_windows();
        for store in &mut self.stores {
            let evicted = store.windows.evict_idle();
            let at = store.windows.clock_ms();
            for (id, labels) in evicted {
                for &reader in &store.readers {
                    let slot = &self.inputs[reader];
                    let rule = &mut self.rules[slot.rule];
                    if let Some(t) = rule.detector.evicted(slot.index, id) {
                        outcome.verdicts.push(rule.verdict(
                            t,
                            labels.clone(),
                            None,
                            at,
                            batch.arrived,
                        ));
                    }
                }
            }
        }
        outcome
    }

    /// The receiver's clock moved to `wall_ms` without a batch: steps whose settle delay
    /// ran out meanwhile are evaluated. The evaluator's thread calls this at
    /// [`Self::next_deadline`]; tests drive it directly.
    pub fn tick(&mut self, wall_ms: i64) -> Outcome {
        self.wall_ms = self.wall_ms.max(wall_ms);
        let mut outcome = Outcome::default();
        self.settle(&mut outcome);
        outcome
    }

    /// When (receiver's clock, ms) the next pending step's settle delay runs out, if a
    /// step is waiting for series that have not reached it.
    pub fn next_deadline(&self) -> Option<i64> {
        self.rules
            .iter()
            .filter_map(|rule| {
                let t = self.next_step(rule)?;
                let reads_through = rule.detector.reads_through(t);
                (rule.clock_ms >= reads_through).then_some(())?;
                let arrival = rule.arrivals.iter().find(|a| a.clock_ms >= reads_through)?;
                Some(arrival.wall_ms.saturating_add(self.settle_ms))
            })
            .min()
    }

    /// The next step rule `rule` evaluates: the one after its last, or its first; never
    /// further back than [`CATCH_UP_MAX_MS`] behind its clock.
    fn next_step(&self, rule: &ActiveRule) -> Option<i64> {
        let step = rule.detector.step_ms()?.max(1);
        let next = match rule.detector.last_step() {
            Some(last) => last.checked_add(step)?,
            None => rule.first_ms?,
        };
        let floor = ceil_to(rule.clock_ms.saturating_sub(CATCH_UP_MAX_MS), step);
        Some(next.max(floor))
    }

    /// Before a batch: each store keeps what the next step of every rule reading it
    /// needs, however far its series move on (see [`SelectorWindows::hold`]).
    fn hold_windows(&mut self) {
        let mut holds = vec![i64::MAX; self.stores.len()];
        for rule in &self.rules {
            if rule.detector.step_ms().is_none() {
                // Judged as samples arrive: nothing read from the windows later.
                continue;
            }
            // A rule without its first step yet keeps everything of the batch that
            // places it.
            let hold = self.next_step(rule).unwrap_or(i64::MIN);
            for slot in &self.inputs[rule.inputs.clone()] {
                holds[slot.store] = holds[slot.store].min(hold);
            }
        }
        for (store, hold) in self.stores.iter_mut().zip(holds) {
            store.windows.hold(hold);
        }
    }

    /// After a batch: moves rule `index`'s clock, places its first step if it has none,
    /// and notes when its clock moved. `oldest` is the oldest sample its inputs took in
    /// the batch (`i64::MAX`: none).
    fn advance_rule(&mut self, index: usize, oldest: i64, arrival: Arrival) {
        let rule = &self.rules[index];
        let Some(step) = rule.detector.step_ms().map(|s| s.max(1)) else {
            return;
        };
        let slots = &self.inputs[rule.inputs.clone()];
        let own = slots
            .iter()
            .map(|s| self.stores[s.store].windows.clock_ms())
            .max()
            .unwrap_or(i64::MIN);
        // A rule whose series all ended or went quiet is moved on by the other rules'
        // clock, so that what its expression no longer returns clears (and `absent`
        // fires); one with series still reporting follows them, however far behind the
        // others they are (a sender catching up).
        let waits_for_none = slots
            .iter()
            .all(|s| self.stores[s.store].windows.watermark() == i64::MAX);
        let clock = if waits_for_none {
            own.max(self.clock_ms)
        } else {
            own
        };
        let rule = &mut self.rules[index];
        rule.own_clock_ms = own;
        if rule.first_ms.is_none() && rule.detector.last_step().is_none() && clock != i64::MIN {
            rule.first_ms = Some(if oldest != i64::MAX {
                // As if the samples had arrived live: from the first step they reach.
                ceil_to(oldest, step)
            } else {
                clock.div_euclid(step).saturating_mul(step)
            });
        }
        if clock > rule.clock_ms {
            rule.clock_ms = clock;
            rule.arrivals.push_back(Arrival {
                clock_ms: clock,
                ..arrival
            });
        }
    }

    /// Evaluates every step that has settled, rule by rule and in order: step `t` of a
    /// rule once the rule's clock has reached it and either every series its inputs hold
    /// has reached it (see [`SelectorWindows::watermark`]) or the settle delay has run
    /// out since the first sample at or past `t` arrived. Series that held a step until
    /// its delay ran out are marked quiet, so the next steps do not wait for them again
    /// until they send.
    fn settle(&mut self, outcome: &mut Outcome) {
        for index in 0..self.rules.len() {
            let Some(step) = self.rules[index].detector.step_ms().map(|s| s.max(1)) else {
                continue;
            };
            loop {
                let rule = &self.rules[index];
                let Some(t) = self.next_step(rule) else { break };
                // Due once a sample at or past the last time it reads has arrived.
                let reads_through = rule.detector.reads_through(t);
                if rule.clock_ms < reads_through {
                    break;
                }
                let slots = rule.inputs.clone();
                let complete = self.inputs[slots.clone()]
                    .iter()
                    .map(|s| self.stores[s.store].windows.watermark())
                    .min()
                    .unwrap_or(i64::MAX);
                let rule = &self.rules[index];
                // A step only the other rules' clock has reached waits out the delay: a
                // series of this rule may yet come back in time for it.
                let complete = if rule.own_clock_ms < reads_through {
                    i64::MIN
                } else {
                    complete
                };
                let arrival = rule
                    .arrivals
                    .iter()
                    .find(|a| a.clock_ms >= reads_through)
                    .copied()
                    .unwrap_or(Arrival {
                        clock_ms: reads_through,
                        wall_ms: self.wall_ms,
                        at: Instant::now(),
                    });
                if complete < reads_through {
                    if self.wall_ms < arrival.wall_ms.saturating_add(self.settle_ms) {
                        break;
                    }
                    outcome.settled_by_delay += 1;
                    for s in &self.inputs[slots.clone()] {
                        self.stores[s.store]
                            .windows
                            .mark_quiet_behind(reads_through.saturating_add(1));
                    }
                }
                let rule = &mut self.rules[index];
                let reads_windows = matches!(
                    rule.detector,
                    Detector::Expression(_) | Detector::Forecast(_)
                );
                let slots = &self.inputs[slots];
                let source = WindowSource::new(if reads_windows {
                    slots
                        .iter()
                        .map(|s| {
                            (
                                &rule.compiled.inputs[s.index].selector,
                                &self.stores[s.store].windows,
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                });
                for settled in rule.detector.evaluate_step(t, &source) {
                    let labels = settled.series.unwrap_or_else(|| {
                        Labels::from_pairs([
                            ("namespace", rule.compiled.key.namespace.as_str()),
                            ("rule", rule.compiled.key.name.as_str()),
                        ])
                    });
                    let mut verdict = rule.verdict(
                        settled.transition,
                        labels,
                        settled.value,
                        settled.at_ms,
                        arrival.at,
                    );
                    verdict.forecast = settled.forecast;
                    outcome.verdicts.push(verdict);
                }
                for s in slots {
                    let store = &mut self.stores[s.store];
                    store.settled_ms = store.settled_ms.max(reads_through);
                }
                let next = rule.detector.reads_through(t.saturating_add(step));
                while rule.arrivals.front().is_some_and(|a| a.clock_ms < next) {
                    rule.arrivals.pop_front();
                }
            }
        }
    }

    /// A view of every active rule, for the rules endpoint.
    pub fn snapshot(&self) -> Vec<RuleSnapshot> {
        self.rules
            .iter()
            .map(|rule| {
                let slots = &self.inputs[rule.inputs.clone()];
                let mut snapshot = RuleSnapshot {
                    rule: rule.compiled.key.clone(),
                    summary: rule.compiled.summary.clone(),
                    series: 0,
                    series_limit: 0,
                    tripped_series: Vec::new(),
                    counters: rule.counters(&self.stores, slots),
                    slo: match &rule.detector {
                        Detector::Slo { state, .. } => state.clone(),
                        _ => None,
                    },
                    values: match &rule.detector {
                        Detector::Expression(d) => Some(d.state().clone()),
                        Detector::Condition {
                            detector,
                            band,
                            running,
                        } => Some(condition_values(
                            slots.iter().map(|s| (self.windows(s), s.retention_ms)),
                            detector,
                            band.as_ref(),
                            running,
                        )),
                        _ => None,
                    },
                    forecast: match &rule.detector {
                        Detector::Forecast(d) => Some(d.state()),
                        _ => None,
                    },
                };
                if let Detector::Expression(d) = &rule.detector {
                    snapshot.tripped_series.extend(
                        d.state()
                            .results
                            .iter()
                            .filter(|r| r.tripped)
                            .map(|r| TrippedSeries {
                                series: r.series.clone(),
                                value: Some(format_value(r.value)),
                                sample_time_ms: d.state().at_ms.unwrap_or_default(),
                                anomalous_since_ms: r.anomalous_since_ms,
                            }),
                    );
                }
                for slot in slots {
                    let windows = self.windows(slot);
                    snapshot.series += windows.len();
                    snapshot.series_limit += windows.spec().series_limit;
                    let Detector::Condition { detector: d, .. } = &rule.detector else {
                        continue;
                    };
                    snapshot.tripped_series.extend(
                        windows
                            .iter()
                            .filter(|(id, _)| d.is_tripped(*id))
                            .take(SNAPSHOT_TRIPPED_MAX)
                            .map(|(id, w)| TrippedSeries {
                                series: w.labels().clone(),
                                value: w.current().map(|s| format_value(s.value)),
                                sample_time_ms: w.last_timestamp_ms(),
                                anomalous_since_ms: d.anomalous_since(id),
                            }),
                    );
                }
                snapshot
            })
            .collect()
    }
}

/// The live values of a per-series condition rule: each series' current value, and the
/// band its next sample will be judged against.
fn condition_values<'a>(
    inputs: impl Iterator<Item = (&'a SelectorWindows, i64)>,
    detector: &ConditionDetector,
    band: Option<&BandSpec>,
    running: &RunningBands,
) -> ExprState {
    let mut sort = Vec::new();
    let mut state = ExprState::default();
    for (windows, retention_ms) in inputs {
        state.at_ms = Some(windows.clock_ms()).filter(|&t| t != i64::MIN);
        // A series whose last sample was a staleness marker, or is older than the lookback
        // (some inputs keep a silent series for days), has no value now: it is neither
        // listed nor counted, as the selector evaluated now would not return it.
        let since_ms = windows.clock_ms().saturating_sub(LOOKBACK_MS);
        for (id, window, current) in windows.iter().filter_map(|(id, w)| {
            let current = w.current().filter(|s| s.timestamp_ms >= since_ms)?;
            Some((id, w, current))
        }) {
            state.result_count += 1;
            if state.results.len() >= expr::SHOWN_MAX {
                continue;
            }
            // The input's own history (the window may keep more for another rule).
            let from_ms = current.timestamp_ms.saturating_sub(retention_ms);
            let history: Vec<f64> = window
                .samples()
                .filter(|s| s.timestamp_ms >= from_ms)
                .map(|s| s.value)
                .filter(|v| v.is_finite())
                .collect();
            state.results.push(ResultValue {
                series: window.labels().clone(),
                value: current.value,
                // A likelihood band depends on the value judged: the latest one's.
                band: running
                    .last_band(id.0 as usize)
                    .unwrap_or_else(|| band.and_then(|spec| band::band(&history, spec, &mut sort))),
                tripped: detector.is_tripped(id),
                anomalous_since_ms: detector.anomalous_since(id),
                band_missing: None,
            });
        }
    }
    state
}

impl ActiveRule {
    /// The rule's own counts with those of the windows it reads.
    fn counters(&self, stores: &[Store], slots: &[InputSlot]) -> RuleCounters {
        let mut counters = RuleCounters {
            tripped: self.tripped,
            cleared: self.cleared,
            ..RuleCounters::default()
        };
        for slot in slots {
            let taken = &stores[slot.store].counters;
            counters.samples += taken.samples;
            counters.out_of_order_samples += taken.out_of_order;
            counters.over_limit_samples += taken.over_limit;
            counters.late_samples += taken.late;
            counters.last_sample_ms = counters.last_sample_ms.max(taken.last_sample_ms);
        }
        counters
    }

    fn verdict(
        &mut self,
        transition: Transition,
        series: Labels,
        value: Option<f64>,
        sample_time_ms: i64,
        arrived: Instant,
    ) -> Verdict {
        match transition.change {
            Change::Tripped => self.tripped += 1,
            Change::Cleared => self.cleared += 1,
        }
        let (targets, untargeted) = targets(&self.compiled.scope, &series);
        Verdict {
            rule: self.compiled.key.clone(),
            change: transition.change,
            series,
            value,
            sample_time_ms,
            reason: transition.reason,
            targets,
            untargeted,
            forecast: None,
            arrived,
        }
    }
}

/// The pods a series names (its `namespace` and `pod` labels), if inside the rule's scope.
/// A `podSelector` key that the series carries as a label (directly or as
/// kube-state-metrics' `label_<key>`) must match; keys it lacks are checked against the
/// live pod when acting.
fn targets(scope: &Scope, series: &Labels) -> (Vec<PodRef>, Option<String>) {
    let Some(pod) = series.get("pod").filter(|p| !p.is_empty()) else {
        return (Vec::new(), Some("the series has no pod label".into()));
    };
    let namespace = series.get("namespace").unwrap_or_default();
    if namespace != scope.namespace {
        return (
            Vec::new(),
            Some(format!(
                "pod {namespace}/{pod} is outside the rule's scope (namespace {:?})",
                scope.namespace
            )),
        );
    }
    for (key, want) in &scope.pod_selector {
        let have = series
            .get(key)
            .or_else(|| series.get(&format!("label_{}", key.replace(['.', '/', '-'], "_"))));
        if let Some(have) = have
            && have != want
        {
            return (
                Vec::new(),
                Some(format!(
                    "pod {namespace}/{pod} has {key}={have:?}, outside podSelector {key}={want:?}"
                )),
            );
        }
    }
    (
        vec![PodRef {
            namespace: namespace.to_owned(),
            name: pod.to_owned(),
        }],
        None,
    )
}
