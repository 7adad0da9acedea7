//! The values an expression evaluates to, and the small label and float operations the
//! rest of the engine shares. Float helpers reproduce Go's `math` package where it
//! differs from Rust's (`math.Max` returns NaN if either side is NaN; Rust's `max` does
//! not), because results must match Prometheus's bit for bit where they can.

use std::cmp::Ordering;

use super::source::SeriesSamples;
use super::{EvalError, Semantics};
use crate::labels::Labels;

/// The metric name label, which functions, arithmetic and aggregations drop.
pub(super) const METRIC_NAME: &str = "__name__";

/// The result of evaluating an expression at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    /// One value per series, labels unique.
    Vector(Vec<(Labels, f64)>),
    /// The samples a range selector took, per series (staleness markers removed).
    Matrix(Vec<SeriesSamples>),
    String(String),
}

impl Value {
    /// The name Prometheus gives this type in messages and in its HTTP API.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Scalar(_) => "scalar",
            Self::Vector(_) => "vector",
            Self::Matrix(_) => "matrix",
            Self::String(_) => "string",
        }
    }
}

/// The labels without the metric name.
pub(super) fn drop_metric_name(labels: &Labels) -> Labels {
    labels.retain(|n| n != METRIC_NAME.as_bytes())
}

/// Only the labels named in `names`.
pub(super) fn keep_labels(labels: &Labels, names: &[String]) -> Labels {
    labels.retain(|n| names.iter().any(|k| k.as_bytes() == n))
}

/// The labels except those named in `names` (and except the metric name if `drop_name`).
pub(super) fn remove_labels(labels: &Labels, names: &[String], drop_name: bool) -> Labels {
    labels.retain(|n| {
        !(names.iter().any(|k| k.as_bytes() == n) || drop_name && n == METRIC_NAME.as_bytes())
    })
}

/// The labels with `name` set to `value`, or without `name` when `value` is empty or
/// `None`: in Prometheus a label with an empty value is no label (`labels.Builder.Set`).
pub(super) fn set_label(labels: &Labels, name: &str, value: Option<&str>) -> Labels {
    let mut pairs: Vec<(&str, &str)> = labels.iter().filter(|(n, _)| *n != name).collect();
    if let Some(value) = value.filter(|v| !v.is_empty()) {
        pairs.push((name, value));
    }
    Labels::from_pairs(pairs)
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*` in Prometheus 2.x,
/// any non-empty UTF-8 text in 3.x (`model.LabelName.IsValid`).
pub(super) fn valid_label_name(name: &str, semantics: Semantics) -> bool {
    match semantics {
        // Prometheus 3 accepts any UTF-8 name but the empty one.
        Semantics::V3 => !name.is_empty(),
        Semantics::V2 => {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
    }
}

/// Prometheus's order of label sets (`labels.Compare`): pair by pair, name then value,
/// then the shorter first. The canonical byte form orders differently (its separator
/// sorts after every character), so series are sorted with this before anything whose
/// outcome depends on input order, such as `topk` ties.
pub(super) fn compare_labels(a: &Labels, b: &Labels) -> Ordering {
    a.cmp(b)
}

/// Fails like Prometheus if two elements of a result share their labels.
pub(super) fn ensure_unique(vector: &[(Labels, f64)]) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        vector.len(),
        crate::labels::LabelsState::default(),
    );
    for (labels, _) in vector {
        if !seen.insert(labels) {
            return Err(EvalError::DuplicateLabelset);
        }
    }
    Ok(())
}

/// Go's `math.Max`: NaN if either is NaN, +0 over -0.
pub(super) fn go_max(x: f64, y: f64) -> f64 {
    if x.is_infinite() && x > 0.0 || y.is_infinite() && y > 0.0 {
        return f64::INFINITY;
    }
    if x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    if x == 0.0 && x == y {
        return if x.is_sign_negative() { y } else { x };
    }
    if x > y { x } else { y }
}

/// Go's `math.Min`: NaN if either is NaN, -0 over +0.
pub(super) fn go_min(x: f64, y: f64) -> f64 {
    if x.is_infinite() && x < 0.0 || y.is_infinite() && y < 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    if x == 0.0 && x == y {
        return if x.is_sign_negative() { x } else { y };
    }
    if x < y { x } else { y }
}

/// One step of Kahan-Neumaier summation, as Prometheus's `kahanSumInc`.
pub(super) fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus 3's `kahansum.Inc`: [`kahan_sum_inc`], but a sum that became infinite
/// drops its compensation (which would otherwise turn it into NaN).
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    if (sum + inc).is_infinite() {
        return (sum + inc, 0.0);
    }
    kahan_sum_inc(inc, sum, c)
}

/// Prometheus's `quantile` over a set of values (the φ-quantile with linear
/// interpolation between closest ranks); sorts `values`, NaN first as Prometheus's
/// `vectorByValueHeap` orders them.
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_min_max_propagate_nan_and_order_zeroes() {
        assert!(go_max(f64::NAN, 1.0).is_nan());
        assert!(go_min(1.0, f64::NAN).is_nan());
        assert_eq!(go_max(f64::NAN, f64::INFINITY), f64::INFINITY);
        assert!(go_max(-0.0, 0.0).is_sign_positive());
        assert!(go_min(0.0, -0.0).is_sign_negative());
        assert_eq!(go_max(2.0, 3.0), 3.0);
        assert_eq!(go_min(2.0, 3.0), 2.0);
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        assert_eq!(quantile(0.5, &mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(quantile(0.0, &mut [4.0, 1.0]), 1.0);
        assert_eq!(quantile(1.0, &mut [4.0, 1.0]), 4.0);
        assert_eq!(quantile(-1.0, &mut [4.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [4.0]), f64::INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn label_order_is_prometheus_order() {
        let a = Labels::from_pairs([("a", "x")]);
        let ab = Labels::from_pairs([("ab", "x")]);
        assert_eq!(compare_labels(&a, &ab), Ordering::Less);
        let short = Labels::from_pairs([("a", "x")]);
        let long = Labels::from_pairs([("a", "x"), ("b", "")]);
        assert_eq!(compare_labels(&short, &long), Ordering::Less);
    }
}
