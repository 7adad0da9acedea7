//! The PredictiveScale detector: evaluates the rule's query at every step boundary of
//! its event clock into a derived series (one per series the query returns), forecasts
//! each `horizon` ahead with [`forecast::forecast`], and trips when the forecast differs
//! from the current value by more than `thresholdPercent` in the rule's direction.
//!
//! Verdicts change with hysteresis: a tripped forecast clears only once the predicted
//! change falls under half the threshold, so a forecast hovering at the threshold does
//! not flap. Owns the derived series; pure, time is the step boundary passed in.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::condition::Transition;
use super::expr::{self, SeriesChange};
use super::forecast::{self, ForecastModel};
use super::promql::SeriesSource;
use super::verdict::Change;
use crate::labels::Labels;
use crate::rules::compile::{ForecastDirection, ForecastSpec};

/// No forecast before the derived series holds this many steps.
pub const MIN_HISTORY_STEPS: usize = 30;

/// Forecasts are made for at most this many series per rule; a PredictiveScale query
/// normally aggregates to one.
pub const MAX_FORECAST_SERIES: usize = 20;

/// A series the query has not returned for this long is forgotten with its history.
const FORGET_AFTER_MS: i64 = 60 * 60 * 1000;

/// The prediction interval's level.
const LEVEL: f64 = 0.95;

/// A tripped forecast clears when the predicted change falls under this fraction of the
/// threshold.
const CLEAR_FRACTION: f64 = 0.5;

/// Forecasts are refitted this many times per horizon (at least every step): a seasonal
/// fit of three days costs ~20 ms, and a forecast an hour ahead moves little in five
/// minutes, so refitting every minute would buy nothing but CPU.
const REFITS_PER_HORIZON: i64 = 12;

/// One forecast, as verdicts and the rules endpoint carry it (`status.lastForecast`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForecastView {
    /// The query's value at `at_ms`.
    pub current: f64,
    /// The forecast `horizon_ms` after `at_ms`, and its prediction interval.
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    /// `(value - current) / |current|`, in percent.
    pub change_percent: f64,
    pub model: ForecastModel,
    pub at_ms: i64,
    pub horizon_ms: i64,
    /// Points of history the model was fitted on.
    pub history: usize,
}

/// One derived series, as saved across a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedDerived {
    pub labels: Labels,
    /// Value bits at consecutive steps ending at `last_ms`.
    pub values: Vec<u64>,
    pub last_ms: i64,
    /// The direction it tripped in, while tripped.
    pub tripped: Option<ForecastDirection>,
}

/// What of a [`ForecastDetector`] outlives a restart: the derived series (up to three
/// days of history that the stream cannot give back) and which ones had tripped.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForecastDetectorState {
    pub last_ms: Option<i64>,
    pub series: Vec<SavedDerived>,
}

/// One derived series and its forecast state.
#[derive(Debug, Default)]
struct Derived {
    /// Values at consecutive steps, the newest last.
    values: VecDeque<f64>,
    last_ms: i64,
    /// The direction it tripped in, while tripped.
    tripped: Option<ForecastDirection>,
    latest: Option<ForecastView>,
    /// Steps appended since the last forecast.
    since_fit: i64,
}

/// What the rules endpoint shows of a PredictiveScale.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForecastState {
    pub at_ms: Option<i64>,
    pub forecasts: Vec<SeriesForecast>,
    /// Why the last evaluation or forecast failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Series beyond [`MAX_FORECAST_SERIES`] that are not forecast.
    pub series_not_forecast: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesForecast {
    pub series: Labels,
    /// Steps of history held.
    pub history: usize,
    pub tripped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastView>,
}

pub struct ForecastDetector {
    spec: ForecastSpec,
    series: HashMap<Labels, Derived>,
    last_ms: i64,
    error: Option<String>,
    not_forecast: usize,
}

impl ForecastDetector {
    pub fn new(spec: ForecastSpec) -> Self {
        Self {
            spec,
            series: HashMap::new(),
            last_ms: i64::MIN,
            error: None,
            not_forecast: 0,
        }
    }

    /// Event time between forecasts.
    pub fn step_ms(&self) -> i64 {
        self.spec.query.step_ms
    }

    /// The last step forecast at, if any.
    pub fn last_step(&self) -> Option<i64> {
        (self.last_ms != i64::MIN).then_some(self.last_ms)
    }

    /// The latest forecast of `series`, for a verdict.
    pub fn latest(&self, series: &Labels) -> Option<ForecastView> {
        self.series.get(series).and_then(|d| d.latest)
    }

    pub fn state(&self) -> ForecastState {
        let mut forecasts: Vec<SeriesForecast> = self
            .series
            .iter()
            .map(|(labels, d)| SeriesForecast {
                series: labels.clone(),
                history: d.values.len(),
                tripped: d.tripped.is_some(),
                forecast: d.latest,
            })
            .collect();
        forecasts.sort_by(|a, b| a.series.cmp(&b.series));
        ForecastState {
            at_ms: (self.last_ms != i64::MIN).then_some(self.last_ms),
            forecasts,
            error: self.error.clone(),
            series_not_forecast: self.not_forecast,
        }
    }

    pub fn export(&self) -> ForecastDetectorState {
        ForecastDetectorState {
            last_ms: (self.last_ms != i64::MIN).then_some(self.last_ms),
            series: self
                .series
                .iter()
                .map(|(labels, d)| SavedDerived {
                    labels: labels.clone(),
                    values: d.values.iter().map(|v| v.to_bits()).collect(),
                    last_ms: d.last_ms,
                    tripped: d.tripped,
                })
                .collect(),
        }
    }

    /// Continues from saved state (the rule's query is the same: the caller checked). The
    /// next evaluation refits at once.
    pub fn restore(&mut self, saved: ForecastDetectorState) {
        self.last_ms = saved.last_ms.unwrap_or(i64::MIN);
        let capacity = usize::try_from(self.spec.history_ms / self.spec.query.step_ms)
            .unwrap_or(usize::MAX)
            .max(1);
        for s in saved.series.into_iter().take(MAX_FORECAST_SERIES) {
            let skip = s.values.len().saturating_sub(capacity);
            let values = s
                .values
                .into_iter()
                .skip(skip)
                .map(f64::from_bits)
                .filter(|v| v.is_finite())
                .collect();
            // A direction the rule no longer acts on (its action was edited) is dropped.
            let allowed = |d: ForecastDirection| {
                self.spec.direction == ForecastDirection::Either || self.spec.direction == d
            };
            let tripped = s.tripped.filter(|d| allowed(*d));
            self.series.insert(
                s.labels,
                Derived {
                    values,
                    last_ms: s.last_ms,
                    tripped,
                    latest: None,
                    since_fit: 0,
                },
            );
        }
    }

    /// Evaluates the query at `at_ms`, extends the derived series and forecasts each.
    pub fn evaluate(&mut self, at_ms: i64, source: &dyn SeriesSource) -> Vec<SeriesChange> {
        self.last_ms = at_ms;
        let results = match expr::run(&self.spec.query, at_ms, source) {
            Ok(results) => results,
            Err(error) => {
                self.error = Some(error);
                return Vec::new();
            }
        };
        self.error = None;
        let step = self.spec.query.step_ms;
        let capacity = usize::try_from(self.spec.history_ms / step).unwrap_or(usize::MAX);
        let mut changes = Vec::new();
        self.not_forecast = 0;
        for (labels, value) in results {
            if !value.is_finite() {
                continue;
            }
            if !self.series.contains_key(&labels) && self.series.len() >= MAX_FORECAST_SERIES {
                self.not_forecast += 1;
                continue;
            }
            let derived = self.series.entry(labels.clone()).or_default();
            derived.push(at_ms, value, step, capacity);
            let refit_every = (self.spec.horizon_ms / step / REFITS_PER_HORIZON).max(1);
            if derived.values.len() < MIN_HISTORY_STEPS
                || derived.latest.is_some() && derived.since_fit < refit_every
            {
                continue;
            }
            derived.since_fit = 0;
            let history = derived.values.make_contiguous();
            let fit = match forecast::forecast(history, step, self.spec.horizon_ms, LEVEL) {
                Ok(fit) => fit,
                Err(error) => {
                    self.error = Some(format!("forecast of {labels:?}: {error}"));
                    continue;
                }
            };
            let change_percent = if value == 0.0 {
                // No relative change from zero; an absolute rise still shows as +inf.
                if fit.value == 0.0 {
                    0.0
                } else {
                    f64::INFINITY.copysign(fit.value)
                }
            } else {
                (fit.value - value) / value.abs() * 100.0
            };
            let view = ForecastView {
                current: value,
                value: fit.value,
                lower: fit.lower,
                upper: fit.upper,
                change_percent,
                model: fit.model,
                at_ms,
                horizon_ms: self.spec.horizon_ms,
                history: derived.values.len(),
            };
            derived.latest = Some(view);
            for transition in judge(&self.spec, &mut derived.tripped, &view) {
                changes.push((transition, labels.clone(), Some(value)));
            }
        }
        // A series the query stopped returning clears after a lookback; its history is
        // kept for an hour, so that a short scrape outage does not throw days away.
        let clear_before = at_ms.saturating_sub(crate::rules::compile::LOOKBACK_MS);
        let forget_before = at_ms.saturating_sub(FORGET_AFTER_MS);
        self.series.retain(|labels, d| {
            if d.last_ms < clear_before && d.tripped.take().is_some() {
                changes.push((
                    Transition {
                        change: Change::Cleared,
                        reason: "the query no longer returns this series".into(),
                    },
                    labels.clone(),
                    None,
                ));
            }
            d.last_ms >= forget_before
        });
        changes
    }
}

impl Derived {
    /// Appends the value at `at_ms`, carrying the previous value over skipped steps so
    /// the series stays at a fixed step, and keeps at most `capacity` values.
    fn push(&mut self, at_ms: i64, value: f64, step: i64, capacity: usize) {
        if let Some(&last) = self.values.back() {
            let missing = (at_ms.saturating_sub(self.last_ms) / step).saturating_sub(1);
            let missing = usize::try_from(missing).unwrap_or(0).min(capacity);
            if missing == capacity {
                // A gap longer than the whole history: start afresh.
                self.values.clear();
            } else {
                self.values.extend(std::iter::repeat_n(last, missing));
            }
        }
        self.values.push_back(value);
        self.last_ms = at_ms;
        self.since_fit += 1;
        while self.values.len() > capacity.max(1) {
            self.values.pop_front();
        }
    }
}

/// The transitions a new forecast causes, with hysteresis.
fn judge(
    spec: &ForecastSpec,
    tripped: &mut Option<ForecastDirection>,
    view: &ForecastView,
) -> Vec<Transition> {
    let threshold = spec.threshold_percent;
    let change = view.change_percent;
    let beyond = |direction: ForecastDirection, limit: f64| match direction {
        ForecastDirection::Rise => change > limit,
        ForecastDirection::Fall => change < -limit,
        ForecastDirection::Either => change.abs() > limit,
    };
    let wants = match spec.direction {
        ForecastDirection::Either if change > threshold => Some(ForecastDirection::Rise),
        ForecastDirection::Either if change < -threshold => Some(ForecastDirection::Fall),
        ForecastDirection::Either => None,
        direction => beyond(direction, threshold).then_some(direction),
    };
    let describe = || {
        format!(
            "forecast {:.6} in {}s is {:+.1}% from the current {:.6} (threshold {}%; interval [{:.6}, {:.6}])",
            view.value,
            view.horizon_ms / 1000,
            change,
            view.current,
            threshold,
            view.lower,
            view.upper
        )
    };
    let mut out = Vec::new();
    if let Some(current) = *tripped {
        let holds = beyond(current, threshold * CLEAR_FRACTION);
        let reversed = wants.is_some_and(|w| w != current);
        if holds && !reversed {
            return out;
        }
        *tripped = None;
        out.push(Transition {
            change: Change::Cleared,
            reason: describe(),
        });
    }
    if let Some(direction) = wants {
        *tripped = Some(direction);
        let verb = match direction {
            ForecastDirection::Fall => "consolidate",
            _ => "provision",
        };
        out.push(Transition {
            change: Change::Tripped,
            reason: format!("{verb}: {}", describe()),
        });
    }
    out
}
