//! PromQL functions: every function of Prometheus 2.42 but the native-histogram ones
//! (`histogram_count`, `histogram_sum`, `histogram_fraction`): the range-vector
//! functions (`rate` and friends, `deriv`, `predict_linear`, `holt_winters`, the
//! `*_over_time` functions, `absent_over_time`), over a range selector or a subquery;
//! `histogram_quantile` over classic buckets; the math, clamping, rounding and date
//! functions; `time`, `timestamp`, `absent`, `label_replace`, `label_join`, `sort`,
//! `sort_desc`, `scalar`, `vector`; and Prometheus 3's name `double_exponential_smoothing`
//! for `holt_winters`. Each follows Prometheus 2.42's
//! `functions.go` step for step, floating-point operation order included, so results
//! agree to the last bit where Go and Rust arithmetic agree.

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};

use super::engine::{Engine, Vector};
use super::go_time;
use super::source::SeriesSource;
use super::value::{
    METRIC_NAME, Value, drop_metric_name, ensure_unique, go_max, go_min, kahan_inc, kahan_sum_inc,
    quantile, set_label, valid_label_name,
};
use super::{EvalError, Semantics};
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
    // An optional scalar argument, evaluated when present.
    let optional_scalar = |i: usize| -> Result<Option<f64>, EvalError> {
        args.get(i).map(|a| engine.eval_scalar(a, ts)).transpose()
    };
    match name {
        "rate" | "irate" | "increase" | "delta" | "idelta" | "resets" | "changes" | "deriv"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "stddev_over_time" | "stdvar_over_time" | "last_over_time"
        | "present_over_time" => range_function(engine, name, arg(0)?, [f64::NAN; 2], ts),
        "quantile_over_time" => {
            let q = engine.eval_scalar(arg(0)?, ts)?;
            range_function(engine, name, arg(1)?, [q, f64::NAN], ts)
        }
        "predict_linear" => {
            let seconds = engine.eval_scalar(arg(1)?, ts)?;
            range_function(engine, name, arg(0)?, [seconds, f64::NAN], ts)
        }
        "holt_winters" | "double_exponential_smoothing" => {
            let smoothing = engine.eval_scalar(arg(1)?, ts)?;
            let trend = engine.eval_scalar(arg(2)?, ts)?;
            range_function(engine, name, arg(0)?, [smoothing, trend], ts)
        }
        "absent_over_time" => {
            let selector = arg(0)?;
            let mut present = false;
            engine.visit_range_input(selector, ts, name, &mut |_, _, _| present = true)?;
            Ok(Value::Vector(absent(present, selector)))
        }
        "absent" => {
            let selector = arg(0)?;
            let present = !engine.eval_vector(selector, ts)?.is_empty();
            Ok(Value::Vector(absent(present, selector)))
        }
        "histogram_quantile" => {
            let q = engine.eval_scalar(arg(0)?, ts)?;
            let out = histogram_quantile(q, engine.eval_vector(arg(1)?, ts)?);
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "abs" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::abs),
        "ceil" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::ceil),
        "floor" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::floor),
        "exp" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::exp),
        "sqrt" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::sqrt),
        "ln" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::ln),
        "log2" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::log2),
        "log10" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::log10),
        "sin" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::sin),
        "cos" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::cos),
        "tan" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::tan),
        "asin" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::asin),
        "acos" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::acos),
        "atan" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::atan),
        "sinh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::sinh),
        "cosh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::cosh),
        "tanh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::tanh),
        "asinh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::asinh),
        "acosh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::acosh),
        "atanh" => map_vector(engine.eval_vector(arg(0)?, ts)?, f64::atanh),
        // The same operation order as Prometheus, so the last bit agrees.
        "rad" => map_vector(engine.eval_vector(arg(0)?, ts)?, |v| {
            v * std::f64::consts::PI / 180.0
        }),
        "deg" => map_vector(engine.eval_vector(arg(0)?, ts)?, |v| {
            v * 180.0 / std::f64::consts::PI
        }),
        "sgn" => map_vector(engine.eval_vector(arg(0)?, ts)?, |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }),
        "round" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            // Inverted first, as Prometheus does ("fewer floating point accuracy issues").
            let inverse = 1.0 / optional_scalar(1)?.unwrap_or(1.0);
            map_vector(input, |v| (v * inverse + 0.5).floor() / inverse)
        }
        "clamp" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            let min = engine.eval_scalar(arg(1)?, ts)?;
            let max = engine.eval_scalar(arg(2)?, ts)?;
            if max < min {
                return Ok(Value::Vector(Vector::new()));
            }
            map_vector(input, |v| go_max(min, go_min(max, v)))
        }
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
        "time" => Ok(Value::Scalar(ts as f64 / 1000.0)),
        "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
        "timestamp" => timestamp(engine, arg(0)?, ts),
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let part = |seconds: i64| date_part(name, seconds);
            match args.first() {
                // Without an argument: the evaluation time.
                None => Ok(Value::Vector(vec![(
                    Labels::from_pairs([]),
                    part(ts / 1000),
                )])),
                Some(input) => {
                    map_vector(engine.eval_vector(input, ts)?, |v| part(go_float_to_int(v)))
                }
            }
        }
        "label_replace" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            let out = label_replace(
                engine.semantics(),
                input,
                string_arg(arg(1)?)?,
                string_arg(arg(2)?)?,
                string_arg(arg(3)?)?,
                string_arg(arg(4)?)?,
            )?;
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "label_join" => {
            let input = engine.eval_vector(arg(0)?, ts)?;
            let sources = args
                .iter()
                .skip(3)
                .map(|a| string_arg(a))
                .collect::<Result<Vec<_>, _>>()?;
            let out = label_join(
                engine.semantics(),
                input,
                string_arg(arg(1)?)?,
                string_arg(arg(2)?)?,
                &sources,
            )?;
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "sort" | "sort_desc" => {
            let mut input = engine.eval_vector(arg(0)?, ts)?;
            sort_by_value(&mut input, name == "sort_desc");
            Ok(Value::Vector(input))
        }
        other => Err(EvalError::Unsupported(format!("function \"{other}\""))),
    }
}

/// A string literal argument (`label_replace`'s and `label_join`'s), through any
/// parentheses.
fn string_arg(expr: &Expr) -> Result<&str, EvalError> {
    match expr {
        Expr::StringLiteral(s) => Ok(&s.val),
        Expr::Paren(p) => string_arg(&p.expr),
        _ => Err(EvalError::Type("expected a string literal argument".into())),
    }
}

/// `absent` and `absent_over_time`: nothing if the input had a series, else one element
/// of value 1 whose labels are the selector's equality matchers (Prometheus's
/// `createLabelsForAbsentFunction`: a name matched twice, or by another operator, is
/// left out; anything but a selector gives no labels).
fn absent(present: bool, input: &Expr) -> Vector {
    if present {
        return Vector::new();
    }
    let matchers = match unwrap_parens(input) {
        Expr::VectorSelector(vs) => &vs.matchers.matchers,
        Expr::MatrixSelector(ms) => &ms.vs.matchers.matchers,
        _ => return vec![(Labels::from_pairs([]), 1.0)],
    };
    let mut labels: Vec<(&str, &str)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for m in matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        labels.retain(|(n, _)| *n != m.name);
        if m.op == MatchOp::Equal && !seen.contains(&m.name.as_str()) {
            // An empty value is no label.
            if !m.value.is_empty() {
                labels.push((&m.name, &m.value));
            }
        }
        seen.push(&m.name);
    }
    vec![(Labels::from_pairs(labels), 1.0)]
}

/// The expression inside any parentheses.
pub(super) fn unwrap_parens(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

/// `timestamp(v)`: each element's sample time in seconds. For a plain selector that is
/// the time of the sample the lookback found; for anything else Prometheus's elements
/// carry the evaluation time.
fn timestamp<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    input: &Expr,
    ts: i64,
) -> Result<Value, EvalError> {
    let out: Vector = match unwrap_parens(input) {
        Expr::VectorSelector(vs) => engine
            .instant_samples(vs, ts)
            .into_iter()
            .map(|(labels, sample)| {
                (
                    drop_metric_name(&labels),
                    sample.timestamp_ms as f64 / 1000.0,
                )
            })
            .collect(),
        other => engine
            .eval_vector(other, ts)?
            .into_iter()
            .map(|(labels, _)| (drop_metric_name(&labels), ts as f64 / 1000.0))
            .collect(),
    };
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

/// Go's conversion of a float to int64 on amd64 (`CVTTSD2SQ`): truncation, and the
/// "integer indefinite" value, the smallest int64, for NaN and out-of-range values.
fn go_float_to_int(v: f64) -> i64 {
    // 2^63: the int64 range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if (-LIMIT..LIMIT).contains(&v) {
        v as i64
    } else {
        i64::MIN
    }
}

/// One part of the UTC date of `seconds` after the epoch, as Go's `time` package computes
/// it (so even the dates of absurd times, such as a NaN's, agree with Prometheus).
fn date_part(name: &str, seconds: i64) -> f64 {
    let date = go_time::Date::of_unix(seconds);
    f64::from(match name {
        "minute" => date.minute,
        "hour" => date.hour,
        "day_of_week" => date.weekday,
        "day_of_month" => date.day,
        "day_of_year" => date.year_day,
        "days_in_month" => date.days_in_month(),
        "month" => date.month,
        _ => return date.year as f64,
    })
}

/// `label_replace(v, dst, replacement, src, regex)`: where the anchored `regex` matches
/// the value of `src`, `dst` is set to the expanded `replacement` (removed if that is
/// empty); other elements pass unchanged. The metric name stays.
fn label_replace(
    semantics: Semantics,
    input: Vector,
    dst: &str,
    replacement: &str,
    src: &str,
    regex: &str,
) -> Result<Vector, EvalError> {
    let re = regex::Regex::new(&super::go_regex::anchored(regex, semantics)).map_err(|_| {
        EvalError::Function(format!(
            "invalid regular expression in label_replace(): {regex}"
        ))
    })?;
    if !valid_label_name(dst, semantics) {
        return Err(EvalError::Function(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    Ok(input
        .into_iter()
        .map(|(labels, v)| {
            let value = labels.get(src).unwrap_or_default();
            let labels = match re.captures(value) {
                None => labels,
                Some(captures) => {
                    let mut expanded = String::new();
                    captures.expand(replacement, &mut expanded);
                    set_label(&labels, dst, Some(&expanded))
                }
            };
            (labels, v)
        })
        .collect())
}

/// `label_join(v, dst, separator, src...)`: `dst` set to the `src` values joined by
/// `separator` (removed if that is empty). The metric name stays.
fn label_join(
    semantics: Semantics,
    input: Vector,
    dst: &str,
    separator: &str,
    sources: &[&str],
) -> Result<Vector, EvalError> {
    if let Some(bad) = sources.iter().find(|s| !valid_label_name(s, semantics)) {
        return Err(EvalError::Function(format!(
            "invalid source label name in label_join(): {bad}"
        )));
    }
    if !valid_label_name(dst, semantics) {
        return Err(EvalError::Function(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    Ok(input
        .into_iter()
        .map(|(labels, v)| {
            let joined = sources
                .iter()
                .map(|s| labels.get(s).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(separator);
            (set_label(&labels, dst, Some(&joined)), v)
        })
        .collect())
}

/// `sort` (ascending) and `sort_desc`, NaN last either way, ordered as Prometheus 2.42
/// orders them: Go's `sort.Sort` over its value heaps, reversed, so that even equal
/// values come out in the same order.
fn sort_by_value(input: &mut Vector, descending: bool) {
    // sort: the reverse of a descending order with NaN first; sort_desc: the reverse
    // of an ascending one with NaN first.
    let heap_less = |a: f64, b: f64| a.is_nan() || if descending { a < b } else { a > b };
    super::gosort::sort(input, |a, b| heap_less(b.1, a.1));
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

/// A range function over each series of its range argument (a range selector or a
/// subquery). Every one but `last_over_time` drops the metric name (Prometheus:
/// "last_over_time acts like offset"). `params` are the function's scalar arguments.
fn range_function<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    name: &str,
    input: &Expr,
    params: [f64; 2],
    ts: i64,
) -> Result<Value, EvalError> {
    type RangeFn = fn(&[Sample], &Window, [f64; 2]) -> Option<f64>;
    let function: RangeFn = match name {
        "rate" => |p, w, _| extrapolated_rate(p, w, true, true),
        "increase" => |p, w, _| extrapolated_rate(p, w, true, false),
        "delta" => |p, w, _| extrapolated_rate(p, w, false, false),
        "irate" => |p, _, _| instant_value(p, true),
        "idelta" => |p, _, _| instant_value(p, false),
        "resets" => |p, _, _| Some(resets(p)),
        "changes" => |p, _, _| Some(changes(p)),
        // Regressed on the first sample's time, as Prometheus does to keep precision.
        "deriv" => |p, _, _| {
            let first = p.first()?.timestamp_ms;
            (p.len() >= 2).then(|| linear_regression(p, first).0)
        },
        // Regressed on the evaluation time: the intercept is the value "now".
        "predict_linear" => |p, w, [seconds, _]| {
            (p.len() >= 2).then(|| {
                let (slope, intercept) = linear_regression(p, w.eval_ms);
                slope * seconds + intercept
            })
        },
        "holt_winters" | "double_exponential_smoothing" => {
            |p, _, [smoothing, trend]| holt_winters(p, smoothing, trend)
        }
        "avg_over_time" if engine.semantics() == Semantics::V3 => {
            |p, _, _| Some(avg_over_time_kahan(p))
        }
        "avg_over_time" => |p, _, _| Some(avg_over_time(p)),
        "min_over_time" => |p, _, _| Some(min_over_time(p)),
        "max_over_time" => |p, _, _| Some(max_over_time(p)),
        "sum_over_time" => |p, _, _| Some(sum_over_time(p)),
        "count_over_time" => |p, _, _| Some(p.len() as f64),
        "stddev_over_time" => |p, _, _| Some(stdvar_over_time(p).sqrt()),
        "stdvar_over_time" => |p, _, _| Some(stdvar_over_time(p)),
        "present_over_time" => |_, _, _| Some(1.0),
        "quantile_over_time" => |p, _, [q, _]| {
            let mut values: Vec<f64> = p.iter().map(|p| p.value).collect();
            Some(quantile(q, &mut values))
        },
        "last_over_time" => |p, _, _| p.last().map(|p| p.value),
        other => return Err(EvalError::Unsupported(format!("function \"{other}\""))),
    };
    // Prometheus checks holt_winters' factors when it first has a series to smooth.
    let factors = if matches!(name, "holt_winters" | "double_exponential_smoothing") {
        holt_winters_factors(params)
    } else {
        Ok(())
    };
    let mut out = Vector::new();
    let mut failed = None;
    engine.visit_range_input(input, ts, name, &mut |labels, points, window| {
        if let Err(e) = &factors {
            failed.get_or_insert_with(|| e.clone());
            return;
        }
        if let Some(value) = function(points, window, params) {
            let labels = if name == "last_over_time" {
                labels.clone()
            } else {
                drop_metric_name(labels)
            };
            out.push((labels, value));
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

/// Prometheus's `linearRegression`: least squares over `(t - intercept_ms, value)` in
/// seconds, with Kahan-compensated sums; a constant series has slope 0 (NaN if that
/// constant is infinite). Returns `(slope, intercept)`.
fn linear_regression(points: &[Sample], intercept_ms: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = points.first().map_or(f64::NAN, |p| p.value);
    let mut const_y = true;
    for (i, p) in points.iter().enumerate() {
        if const_y && i > 0 && p.value != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.timestamp_ms - intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(p.value, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * p.value, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y) = (sum_x + c_x, sum_y + c_y);
    let (sum_xy, sum_x2) = (sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Prometheus 2.42's checks of `holt_winters`' smoothing and trend factors.
fn holt_winters_factors([smoothing, trend]: [f64; 2]) -> Result<(), EvalError> {
    // Go's %f: six decimals.
    if smoothing <= 0.0 || smoothing >= 1.0 {
        return Err(EvalError::Function(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {smoothing:.6}"
        )));
    }
    if trend <= 0.0 || trend >= 1.0 {
        return Err(EvalError::Function(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {trend:.6}"
        )));
    }
    Ok(())
}

/// Prometheus 2.42's `holt_winters` (double exponential smoothing; Prometheus 3 calls it
/// `double_exponential_smoothing`): the last smoothed value, `None` under two samples.
fn holt_winters(points: &[Sample], smoothing: f64, trend: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let trend_value = |i: usize, s0: f64, s1: f64, b: f64| {
        if i == 0 {
            b
        } else {
            trend * (s1 - s0) + (1.0 - trend) * b
        }
    };
    let (mut s0, mut s1) = (0.0, points[0].value);
    let mut b = points[1].value - points[0].value;
    for (i, p) in points.iter().enumerate().skip(1) {
        let x = smoothing * p.value;
        b = trend_value(i - 1, s0, s1, b);
        let y = (1.0 - smoothing) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Some(s1)
}

/// The bounds of a range function's window, and the evaluation time it is read at.
pub(super) struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub range_seconds: f64,
    /// The evaluation's time (not moved by `offset` or `@`): what `predict_linear`
    /// predicts from.
    pub eval_ms: i64,
    /// Prometheus 2's or 3's PromQL (3 caps a counter's extrapolation to its start
    /// before cutting it at zero, 2 after).
    pub semantics: Semantics,
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

    let threshold = average_between * 1.1;
    // Prometheus 3 first caps the extrapolation to the start at half an interval, then
    // cuts it where the counter would reach zero; 2.x cuts first, then caps.
    if window.semantics == Semantics::V3 && duration_to_start >= threshold {
        duration_to_start = average_between / 2.0;
    }
    if is_counter && result > 0.0 && first.value >= 0.0 {
        // A counter starts at zero: extrapolating further back would invent negative
        // values.
        let duration_to_zero = sampled_interval * (first.value / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }

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

/// Prometheus 3's `avg_over_time`: a Kahan-compensated sum divided by the count, or,
/// once that sum overflows, an incremental mean with compensation.
fn avg_over_time_kahan(points: &[Sample]) -> f64 {
    let Some((first, rest)) = points.split_first() else {
        return f64::NAN;
    };
    let (mut sum, mut count, mut mean, mut c) = (first.value, 1.0, 0.0, 0.0);
    let mut incremental = false;
    for p in rest {
        count += 1.0;
        if !incremental {
            let (new_sum, new_c) = kahan_inc(p.value, sum, c);
            if !new_sum.is_infinite() {
                (sum, c) = (new_sum, new_c);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(p.value / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
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

/// Population variance, by Welford's method with Kahan-compensated sums as in
/// Prometheus (`stddev_over_time` is its square root).
fn stdvar_over_time(points: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        count += 1.0;
        let delta = p.value - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (p.value - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
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
