//! PromQL functions: the range-vector functions (`rate` and friends, `*_over_time`),
//! `histogram_quantile` over classic buckets, and the instant helpers `abs`,
//! `clamp_min`, `clamp_max`, `scalar`, `vector`. Each follows Prometheus 2.42's
//! `functions.go` step for step, floating-point operation order included, so results
//! agree to the last bit where Go and Rust arithmetic agree.

use promql_parser::parser::{Call, Expr, MatrixSelector};

use super::EvalError;
use super::engine::{Engine, Vector, duration_ms};
use super::source::SeriesSource;
use super::value::{
    METRIC_NAME, Value, drop_metric_name, ensure_unique, go_max, go_min, kahan_sum_inc, quantile,
};
use crate::ingest::Sample;
use crate::labels::{Labels, LabelsMap};

/// Evaluates a function call at `ts`.
pub(super) fn eval<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    call: &Call,
    ts: i64,
) -> Result<Value, EvalError> {
    let name = call.func.name;
    let args = &call.args.args;
    let arg = |i: usize| -> Result<&Expr, EvalError> {
        args.get(i)
            .map(|a| a.as_ref())
            .ok_or_else(|| EvalError::Type(format!("missing argument {i} of \"{name}\"")))
    };
    match name {
        "rate" | "irate" | "increase" | "delta" | "idelta" | "resets" | "changes"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "stddev_over_time" | "last_over_time" => {
            range_function(engine, name, matrix_selector(arg(0)?, name)?, None, ts)
        }
        "quantile_over_time" => {
            let q = engine.eval_scalar(arg(0)?, ts)?;
            range_function(engine, name, matrix_selector(arg(1)?, name)?, Some(q), ts)
        }
        "histogram_quantile" => {
            let q = engine.eval_scalar(arg(0)?, ts)?;
            let out = histogram_quantile(q, engine.eval_vector(arg(1)?, ts)?);
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "abs" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::abs),
        "clamp_min" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            let min = engine.eval_scalar(arg(1)?, ts)?;
            map_vector(input, |v| go_max(min, v))
        }
        "clamp_max" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            let max = engine.eval_scalar(arg(1)?, ts)?;
            map_vector(input, |v| go_min(max, v))
        }
        "scalar" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            Ok(Value::Scalar(match input.as_slice() {
                [(_, v)] => *v,
                _ => f64::NAN,
            }))
        }
        "vector" => Ok(Value::Vector(vec![(
            Labels::from_pairs([]),
            engine.eval_scalar(arg(0)?, ts)?,
        )])),
        other => Err(EvalError::Unsupported(format!("function \"{other}\""))),
    }
}

/// The range selector a range function reads, through any parentheses.
fn matrix_selector<'e>(expr: &'e Expr, name: &str) -> Result<&'e MatrixSelector, EvalError> {
    match expr {
        Expr::MatrixSelector(ms) => Ok(ms),
        Expr::Paren(p) => matrix_selector(&p.expr, name),
        Expr::Subquery(_) => Err(EvalError::Unsupported(format!(
            "a subquery as argument of \"{name}\""
        ))),
        _ => Err(EvalError::Type(format!(
            "expected type range vector in call to function \"{name}\""
        ))),
    }
}

/// Applies `f` to every element; drops the metric name as Prometheus's math functions do.
fn map_vector(input: Vector, f: impl Fn(f64) -> f64) -> Result<Value, EvalError> {
    let out: Vector = input
        .into_iter()
        .map(|(labels, v)| (drop_metric_name(&labels), f(v)))
        .collect();
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

/// A range function over each series of `ms`. Every one but `last_over_time` drops the
/// metric name (Prometheus: "last_over_time acts like offset").
fn range_function<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    name: &str,
    ms: &MatrixSelector,
    param: Option<f64>,
    ts: i64,
) -> Result<Value, EvalError> {
    let range_end = engine.selector_time(&ms.vs, ts);
    let range_ms = duration_ms(ms.range);
    let window = Window {
        start_ms: range_end.saturating_sub(range_ms),
        end_ms: range_end,
        range_seconds: ms.range.as_secs_f64(),
    };
    let function: fn(&[Sample], &Window, Option<f64>) -> Option<f64> = match name {
        "rate" => |p, w, _| extrapolated_rate(p, w, true, true),
        "increase" => |p, w, _| extrapolated_rate(p, w, true, false),
        "delta" => |p, w, _| extrapolated_rate(p, w, false, false),
        "irate" => |p, _, _| instant_value(p, true),
        "idelta" => |p, _, _| instant_value(p, false),
        "resets" => |p, _, _| Some(resets(p)),
        "changes" => |p, _, _| Some(changes(p)),
        "avg_over_time" => |p, _, _| Some(avg_over_time(p)),
        "min_over_time" => |p, _, _| Some(min_over_time(p)),
        "max_over_time" => |p, _, _| Some(max_over_time(p)),
        "sum_over_time" => |p, _, _| Some(sum_over_time(p)),
        "count_over_time" => |p, _, _| Some(p.len() as f64),
        "stddev_over_time" => |p, _, _| Some(stddev_over_time(p)),
        "quantile_over_time" => |p, _, q| {
            let mut values: Vec<f64> = p.iter().map(|p| p.value).collect();
            Some(quantile(q.unwrap_or(f64::NAN), &mut values))
        },
        "last_over_time" => |p, _, _| p.last().map(|p| p.value),
        other => return Err(EvalError::Unsupported(format!("function \"{other}\""))),
    };
    let mut out = Vector::new();
    engine.visit_range(ms, ts, |labels, points| {
        if let Some(value) = function(points, &window, param) {
            let labels = if name == "last_over_time" {
                labels.clone()
            } else {
                drop_metric_name(labels)
            };
            out.push((labels, value));
        }
    });
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

/// The bounds of a range function's window.
pub(super) struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub range_seconds: f64,
}

/// Prometheus's `extrapolatedRate`, behind `rate`, `increase` and `delta`: the change
/// over the samples (with counter resets added back for counters), extrapolated towards
/// the window's edges when the first and last samples lie within 1.1 average sample
/// intervals of them (else by half an interval), but for counters never past the point
/// where the counter would have been zero. `None` with fewer than two samples.
pub(super) fn extrapolated_rate(
    points: &[Sample],
    window: &Window,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let (first, last) = match points {
        [first, .., last] => (first, last),
        _ => return None,
    };
    let mut result = last.value - first.value;
    if is_counter {
        let mut prev = first.value;
        for p in &points[1..] {
            if p.value < prev {
                result += prev;
            }
            prev = p.value;
        }
    }
    let mut duration_to_start = (first.timestamp_ms - window.start_ms) as f64 / 1000.0;
    let duration_to_end = (window.end_ms - last.timestamp_ms) as f64 / 1000.0;
    let sampled_interval = (last.timestamp_ms - first.timestamp_ms) as f64 / 1000.0;
    let average_between = sampled_interval / (points.len() - 1) as f64;

    if is_counter && result > 0.0 && first.value >= 0.0 {
        // A counter starts at zero: extrapolating further back would invent negative
        // values.
        let duration_to_zero = sampled_interval * (first.value / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }

    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= window.range_seconds;
    }
    Some(result * factor)
}

/// Prometheus's `instantValue`, behind `irate` and `idelta`: from the last two samples;
/// for `irate` a drop is a counter reset, so the last value is the increase.
pub(super) fn instant_value(points: &[Sample], is_rate: bool) -> Option<f64> {
    let [.., previous, last] = points else {
        return None;
    };
    let mut result = if is_rate && last.value < previous.value {
        last.value
    } else {
        last.value - previous.value
    };
    let interval_ms = last.timestamp_ms - previous.timestamp_ms;
    if interval_ms == 0 {
        return None;
    }
    if is_rate {
        result /= interval_ms as f64 / 1000.0;
    }
    Some(result)
}

fn resets(points: &[Sample]) -> f64 {
    points
        .windows(2)
        .filter(|w| w[1].value < w[0].value)
        .count() as f64
}

fn changes(points: &[Sample]) -> f64 {
    points
        .windows(2)
        .filter(|w| w[1].value != w[0].value && !(w[1].value.is_nan() && w[0].value.is_nan()))
        .count() as f64
}

/// Prometheus 2.42's incremental mean, which avoids overflowing where a plain sum would.
fn avg_over_time(points: &[Sample]) -> f64 {
    let mut mean = 0.0f64;
    let mut count = 0.0f64;
    for p in points {
        count += 1.0;
        let v = p.value;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                // Same-signed infinities: the mean is already right, and subtracting them
                // would give NaN.
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

fn min_over_time(points: &[Sample]) -> f64 {
    let mut min = points.first().map_or(f64::NAN, |p| p.value);
    for p in points {
        if p.value < min || min.is_nan() {
            min = p.value;
        }
    }
    min
}

fn max_over_time(points: &[Sample]) -> f64 {
    let mut max = points.first().map_or(f64::NAN, |p| p.value);
    for p in points {
        if p.value > max || max.is_nan() {
            max = p.value;
        }
    }
    max
}

fn sum_over_time(points: &[Sample]) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for p in points {
        (sum, c) = kahan_sum_inc(p.value, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// Population standard deviation, by Welford's method with Kahan-compensated sums as in
/// Prometheus.
fn stddev_over_time(points: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        count += 1.0;
        let delta = p.value - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (p.value - (mean + c_mean)), aux, c_aux);
    }
    ((aux + c_aux) / count).sqrt()
}

/// One classic bucket: its upper bound (`le`) and cumulative count.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub upper_bound: f64,
    pub count: f64,
}

/// `histogram_quantile` over classic buckets: groups the input by its labels other than
/// `le` and computes Prometheus's `bucketQuantile` per group. Elements without a
/// parseable `le` are ignored; the result drops `le` and the metric name.
fn histogram_quantile(q: f64, input: Vector) -> Vector {
    // Grouped in first-seen order; the key keeps the metric name, as Prometheus's does.
    let mut index: LabelsMap<usize> = LabelsMap::default();
    let mut groups: Vec<(Labels, Vec<Bucket>)> = Vec::new();
    for (labels, value) in input {
        let Some(upper_bound) = labels.get("le").and_then(parse_go_float) else {
            continue;
        };
        let key = labels.retain(|n| n != b"le");
        let bucket = Bucket {
            upper_bound,
            count: value,
        };
        match index.get(&key) {
            Some(&i) => groups[i].1.push(bucket),
            None => {
                index.insert(key, groups.len());
                let result = Labels::from_pairs(
                    labels
                        .iter()
                        .filter(|(n, _)| *n != "le" && *n != METRIC_NAME),
                );
                groups.push((result, vec![bucket]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(labels, mut buckets)| (labels, bucket_quantile(q, &mut buckets)))
        .collect()
}

/// Parses a label value as Go's `strconv.ParseFloat` would for the values exporters
/// write (`0.5`, `1e-3`, `+Inf`).
fn parse_go_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok()
}

/// Prometheus's `bucketQuantile`: sorts the buckets, merges equal bounds, forces the
/// counts to be monotonic (scrapes are not atomic, so a later bucket can lag), then
/// interpolates linearly inside the bucket where the rank falls. The highest bucket must
/// be `+Inf`; a rank in it gives the second-highest bound.
pub(super) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    match buckets.last() {
        Some(b) if b.upper_bound == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    coalesce_buckets(buckets);
    ensure_monotonic(buckets);
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // sort.Search over all but the +Inf bucket: the first bucket whose count reaches
    // the rank, or len-1 if none does.
    let searched = buckets.len() - 1;
    let b = buckets[..searched]
        .iter()
        .position(|x| x.count >= rank)
        .unwrap_or(searched);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].upper_bound;
    }
    if b == 0 && buckets[0].upper_bound <= 0.0 {
        return buckets[0].upper_bound;
    }
    let mut bucket_start = 0.0;
    let bucket_end = buckets[b].upper_bound;
    let mut count = buckets[b].count;
    if b > 0 {
        bucket_start = buckets[b - 1].upper_bound;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Merges buckets with the same upper bound (series that differ only in how `le` is
/// written, such as `1` and `1.0`), summing their counts.
fn coalesce_buckets(buckets: &mut Vec<Bucket>) {
    let mut merged: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.upper_bound == b.upper_bound => last.count += b.count,
            _ => merged.push(*b),
        }
    }
    *buckets = merged;
}

fn ensure_monotonic(buckets: &mut [Bucket]) {
    let mut max = f64::NEG_INFINITY;
    for b in buckets {
        if b.count > max {
            max = b.count;
        } else if b.count < max {
            b.count = max;
        }
    }
}
