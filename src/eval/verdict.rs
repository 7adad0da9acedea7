//! Verdicts: what eval tells reconcile. Only *changes* are emitted: a series trips once and
//! clears once, however many samples confirm it in between.

use std::time::Instant;

use serde::Serialize;

use super::predict::ForecastView;
use crate::labels::Labels;
use crate::rules::load::RuleKey;

/// The direction of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Tripped,
    Cleared,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tripped => "tripped",
            Self::Cleared => "cleared",
        }
    }
}

/// A pod a verdict names, from the series' `namespace` and `pod` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// A change in one series' state under one rule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub rule: RuleKey,
    pub change: Change,
    pub series: Labels,
    /// The sample value that decided it (absent when the series went stale or away).
    #[serde(serialize_with = "serialize_optional_value")]
    pub value: Option<f64>,
    /// Event time of the deciding sample, ms since the Unix epoch.
    pub sample_time_ms: i64,
    /// Human-readable why.
    pub reason: String,
    /// Pods to act on: the series' own pod, if it lies in the rule's scope.
    pub targets: Vec<PodRef>,
    /// Why the series' pod, if any, is not a target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untargeted: Option<String>,
    /// A PredictiveScale's forecast behind the change (its `status.lastForecast`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastView>,
    /// When the request carrying the deciding sample arrived.
    #[serde(skip)]
    pub arrived: Instant,
}

/// Values as strings, as Prometheus's HTTP API writes them, so NaN and ±Inf survive JSON.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// A value as [`format_value`] writes it.
pub(super) fn serialize_value<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_value(*value))
}

fn serialize_optional_value<S: serde::Serializer>(
    value: &Option<f64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => serialize_value(v, s),
        None => s.serialize_none(),
    }
}
