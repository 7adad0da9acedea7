//! Unit tests of the engine's tricky semantics (lookback, staleness, range boundaries,
//! extrapolation, counter resets, matching), none of which need a Prometheus. The same
//! semantics are compared with a real Prometheus in `tests/integration/promql_oracle.rs`.

use super::functions::{Bucket, Window, bucket_quantile, extrapolated_rate, instant_value};
use super::*;
use crate::ingest::{STALE_NAN_BITS, Sample};
use crate::labels::Labels;

fn s(timestamp_ms: i64, value: f64) -> Sample {
    Sample {
        timestamp_ms,
        value,
    }
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

/// Evaluates under Prometheus 2's semantics, which most of these tests pin down (3's
/// differences have tests of their own, and Prometheus 3's test files run in
/// `tests/integration/promqltest.rs`).
fn eval(source: &MemorySource, text: &str, at_ms: i64) -> Result<Value, EvalError> {
    eval_with(source, text, at_ms, Semantics::V2)
}

fn eval_with(
    source: &MemorySource,
    text: &str,
    at_ms: i64,
    semantics: Semantics,
) -> Result<Value, EvalError> {
    let expr = parse_with(text, semantics).unwrap();
    let opts = EvalOptions {
        semantics,
        ..EvalOptions::default()
    };
    evaluate(&expr, at_ms, source, &opts)
}

/// The vector's elements sorted by their labels' text, for comparisons.
fn vector(value: Result<Value, EvalError>) -> Vec<(String, f64)> {
    let Value::Vector(v) = value.unwrap() else {
        panic!("not a vector");
    };
    let mut v: Vec<(String, f64)> = v.into_iter().map(|(l, x)| (l.to_string(), x)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn one(value: Result<Value, EvalError>) -> f64 {
    match vector(value).as_slice() {
        [(_, v)] => *v,
        other => panic!("expected one element, got {other:?}"),
    }
}

fn window(start_ms: i64, end_ms: i64) -> Window {
    Window {
        start_ms,
        end_ms,
        range_seconds: (end_ms - start_ms) as f64 / 1000.0,
        eval_ms: end_ms,
        semantics: Semantics::V2,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn lookback_includes_its_start_and_ends_at_a_staleness_marker() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "g"), ("i", "1")]),
        vec![s(0, 1.0), s(10_000, 2.0)],
    );
    source.push(
        labels(&[("__name__", "g"), ("i", "2")]),
        vec![s(0, 5.0), s(10_000, stale()), s(20_000, 6.0)],
    );
    // Newest sample at or before t.
    assert_eq!(
        vector(eval(&source, "g", 15_000)),
        [(r#"g{i="1"}"#.into(), 2.0)]
    );
    assert_eq!(one(eval(&source, r#"g{i="1"}"#, 9_999)), 1.0);
    // Exactly 5 minutes old still counts (Prometheus 2.x); a millisecond more does not.
    assert_eq!(one(eval(&source, r#"g{i="1"}"#, 310_000)), 2.0);
    assert!(vector(eval(&source, r#"g{i="1"}"#, 310_001)).is_empty());
    // After the marker the series is gone until its next sample.
    assert!(vector(eval(&source, r#"g{i="2"}"#, 10_000)).is_empty());
    assert!(vector(eval(&source, r#"g{i="2"}"#, 19_999)).is_empty());
    assert_eq!(one(eval(&source, r#"g{i="2"}"#, 20_000)), 6.0);
    // Offsets move the reading time back.
    assert_eq!(one(eval(&source, r#"g{i="2"} offset 15s"#, 20_000)), 5.0);
}

#[test]
fn range_selectors_are_closed_and_skip_staleness_markers() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "c")]),
        vec![
            s(0, 1.0),
            s(15_000, 2.0),
            s(30_000, stale()),
            s(45_000, 3.0),
        ],
    );
    let Ok(Value::Matrix(m)) = eval(&source, "c[45s]", 45_000) else {
        panic!("not a matrix");
    };
    assert_eq!(m[0].samples, [s(0, 1.0), s(15_000, 2.0), s(45_000, 3.0)]);
    assert_eq!(one(eval(&source, "count_over_time(c[30s])", 45_000)), 2.0);
    assert_eq!(
        one(eval(&source, "count_over_time(c[29999ms])", 45_000)),
        1.0
    );
}

#[test]
fn extrapolation_reaches_the_window_edges_within_the_threshold() {
    let points = [
        s(15_000, 10.0),
        s(30_000, 20.0),
        s(45_000, 30.0),
        s(60_000, 40.0),
    ];
    // 15 s to the start is within 1.1 × 15 s: extrapolated all the way, 30 × 60/45.
    let increase = extrapolated_rate(&points, &window(0, 60_000), true, false).unwrap();
    assert!(close(increase, 40.0), "{increase}");
    let rate = extrapolated_rate(&points, &window(0, 60_000), true, true).unwrap();
    assert!(close(rate, 40.0 / 60.0), "{rate}");
    // 30 s to the start is beyond the threshold: only half an interval is added.
    let later = &points[1..];
    let increase = extrapolated_rate(later, &window(0, 60_000), true, false).unwrap();
    assert!(close(increase, 20.0 * 37.5 / 30.0), "{increase}");
}

#[test]
fn counters_are_not_extrapolated_below_zero() {
    let points = [
        s(15_000, 1.0),
        s(30_000, 11.0),
        s(45_000, 21.0),
        s(60_000, 31.0),
    ];
    // The zero point lies 1.5 s before the first sample, nearer than the window start.
    let increase = extrapolated_rate(&points, &window(0, 60_000), true, false).unwrap();
    assert!(close(increase, 30.0 * 46.5 / 45.0), "{increase}");
    // delta is not a counter: extrapolated to the edge.
    let delta = extrapolated_rate(&points, &window(0, 60_000), false, false).unwrap();
    assert!(close(delta, 40.0), "{delta}");
}

#[test]
fn counter_resets_add_back_the_value_before_the_drop() {
    let points = [s(0, 10.0), s(15_000, 20.0), s(30_000, 5.0), s(45_000, 15.0)];
    let increase = extrapolated_rate(&points, &window(0, 45_000), true, false).unwrap();
    assert!(close(increase, 25.0), "{increase}");
    assert_eq!(instant_value(&points[..3], true), Some(5.0 / 15.0));
    assert_eq!(instant_value(&points[..3], false), Some(-15.0));
    assert_eq!(instant_value(&points[..1], true), None);
    assert_eq!(
        extrapolated_rate(&points[..1], &window(0, 45_000), true, true),
        None
    );

    let mut source = MemorySource::default();
    source.push(labels(&[("__name__", "c"), ("j", "x")]), points.to_vec());
    assert_eq!(
        vector(eval(&source, "resets(c[1m])", 45_000)),
        [(r#"{j="x"}"#.into(), 1.0)]
    );
    assert_eq!(one(eval(&source, "changes(c[1m])", 45_000)), 3.0);
    // last_over_time alone keeps the metric name.
    assert_eq!(
        vector(eval(&source, "last_over_time(c[1m])", 45_000)),
        [(r#"c{j="x"}"#.into(), 15.0)]
    );
}

#[test]
fn histogram_quantile_interpolates_and_fixes_monotonicity() {
    let b = |upper_bound, count| Bucket { upper_bound, count };
    let mut buckets = vec![b(f64::INFINITY, 10.0), b(0.1, 5.0), b(0.5, 8.0)];
    // Rank 5 is the top of the first bucket.
    assert_eq!(bucket_quantile(0.5, &mut buckets.clone()), 0.1);
    // Rank 6.5 is half-way through (0.1, 0.5].
    assert!(close(bucket_quantile(0.65, &mut buckets), 0.3));
    // A rank in the +Inf bucket gives the highest finite bound.
    assert_eq!(
        bucket_quantile(0.99, &mut vec![b(0.1, 5.0), b(f64::INFINITY, 10.0)]),
        0.1
    );
    // A bucket lagging behind a lower one is raised to it.
    let mut lagging = vec![b(0.1, 6.0), b(0.5, 4.0), b(f64::INFINITY, 10.0)];
    assert!(close(bucket_quantile(0.5, &mut lagging), 5.0 / 6.0 * 0.1));
    assert!(bucket_quantile(0.5, &mut vec![b(0.1, 5.0)]).is_nan());
    assert_eq!(
        bucket_quantile(1.5, &mut vec![b(f64::INFINITY, 1.0)]),
        f64::INFINITY
    );

    let mut source = MemorySource::default();
    for (le, count) in [("0.1", 5.0), ("0.5", 8.0), ("+Inf", 10.0)] {
        source.push(
            labels(&[("__name__", "h_bucket"), ("le", le), ("job", "a")]),
            vec![s(0, count)],
        );
    }
    assert_eq!(
        vector(eval(&source, "histogram_quantile(0.5, h_bucket)", 0)),
        [(r#"{job="a"}"#.into(), 0.1)]
    );
}

#[test]
fn one_to_one_matching_and_metric_names() {
    let mut source = MemorySource::default();
    for (code, v) in [("200", 90.0), ("500", 10.0)] {
        source.push(
            labels(&[("__name__", "req"), ("job", "a"), ("code", code)]),
            vec![s(0, v)],
        );
    }
    source.push(
        labels(&[("__name__", "total"), ("job", "a")]),
        vec![s(0, 100.0)],
    );
    assert_eq!(
        vector(eval(
            &source,
            r#"req{code="500"} / ignoring(code) total"#,
            0
        )),
        [(r#"{job="a"}"#.into(), 0.1)]
    );
    assert_eq!(
        vector(eval(&source, r#"req{code="500"} / on(job) total"#, 0)),
        [(r#"{job="a"}"#.into(), 0.1)]
    );
    // Two left elements for one right one need group_left.
    assert_eq!(
        eval(&source, "req / ignoring(code) total", 0),
        Err(EvalError::MultipleMatches)
    );
    assert!(matches!(
        eval(&source, "total / ignoring(code) req", 0),
        Err(EvalError::ManyToMany { .. })
    ));
    // A filtering comparison keeps the name; bool drops it.
    assert_eq!(
        vector(eval(&source, "req > 50", 0)),
        [(r#"req{code="200", job="a"}"#.into(), 90.0)]
    );
    assert_eq!(
        vector(eval(&source, "req > bool 50", 0)),
        [
            (r#"{code="200", job="a"}"#.into(), 1.0),
            (r#"{code="500", job="a"}"#.into(), 0.0)
        ]
    );
    // A scalar on the left: the element's own value is kept.
    assert_eq!(one(eval(&source, "50 > req", 0)), 10.0);
    // Dropping the name makes two series the same.
    source.push(
        labels(&[("__name__", "other"), ("job", "a")]),
        vec![s(0, 1.0)],
    );
    assert_eq!(
        eval(&source, r#"abs({__name__=~"total|other"})"#, 0),
        Err(EvalError::DuplicateLabelset)
    );
}

#[test]
fn aggregations_group_and_topk_keeps_labels() {
    let mut source = MemorySource::default();
    for (i, v) in [("1", 3.0), ("2", 1.0), ("3", 2.0)] {
        source.push(
            labels(&[("__name__", "g"), ("job", "a"), ("i", i)]),
            vec![s(0, v)],
        );
    }
    assert_eq!(
        vector(eval(&source, "sum by (job) (g)", 0)),
        [(r#"{job="a"}"#.into(), 6.0)]
    );
    assert_eq!(
        vector(eval(&source, "max without (i) (g)", 0)),
        [(r#"{job="a"}"#.into(), 3.0)]
    );
    assert_eq!(one(eval(&source, "avg(g)", 0)), 2.0);
    assert_eq!(one(eval(&source, "quantile(0.25, g)", 0)), 1.5);
    assert_eq!(
        vector(eval(&source, "topk(2, g)", 0)),
        [
            (r#"g{i="1", job="a"}"#.into(), 3.0),
            (r#"g{i="3", job="a"}"#.into(), 2.0)
        ]
    );
    assert_eq!(
        vector(eval(&source, "bottomk(1, g)", 0)),
        [(r#"g{i="2", job="a"}"#.into(), 1.0)]
    );
    assert!(vector(eval(&source, "topk(0, g)", 0)).is_empty());
    assert_eq!(
        eval(&source, "scalar(sum(g)) * 2", 0),
        Ok(Value::Scalar(12.0))
    );
    assert_eq!(
        vector(eval(&source, "clamp_max(g, 2)", 0)),
        [
            (r#"{i="1", job="a"}"#.into(), 2.0),
            (r#"{i="2", job="a"}"#.into(), 1.0),
            (r#"{i="3", job="a"}"#.into(), 2.0)
        ]
    );
}

#[test]
fn check_names_what_is_unsupported() {
    let err = |text: &str| check(&parse(text).unwrap()).unwrap_err().to_string();
    // Native histograms are not kept, and Prometheus 3's experimental parts are not 2.42's.
    assert_eq!(
        err("histogram_count(x)"),
        r#"function "histogram_count" is not supported"#
    );
    assert_eq!(
        err("limitk(2, x)"),
        r#"aggregation "limitk" is not supported"#
    );
    for supported in [
        "sum by (job) (rate(x[5m])) > bool 2",
        "predict_linear(x[5m], 60) < 0",
        "stddev(x) + stdvar(x) + group(x)",
        r#"count_values("v", x)"#,
        "a * on(x) group_left(y) b",
        "a / on(x) group_right b",
        "max_over_time(rate(x[5m])[1h:])",
        "absent(x) or absent_over_time(y[5m])",
        r#"label_join(label_replace(x, "a", "$1", "b", "(.*)"), "c", "-", "a", "b")"#,
        "hour() == 3 and day_of_week(timestamp(x)) > 5",
        "x @ end() - x @ start() offset 5m",
        "holt_winters(x[10m], 0.5, 0.5) + double_exponential_smoothing(x[10m], 0.5, 0.5)",
        "a atan2 b",
        "ml_forecast(sum(rate(x[5m])), 1h)",
    ] {
        assert!(check(&parse(supported).unwrap()).is_ok(), "{supported}");
    }
}

#[test]
fn subqueries_step_on_multiples_of_their_step_and_reach_back_their_range() {
    let mut source = MemorySource::default();
    // One sample a second from t = 0 to 600 s, value = t in seconds.
    source.push(
        labels(&[("__name__", "c")]),
        (0..=600).map(|i| s(i * 1000, i as f64)).collect(),
    );
    // Steps at 60, 120, ..., 300 s (the first multiple of 1m at or after 250 - 60 s is
    // 240 s, no: 190 s rounds up to 240 s): 240 and 300... evaluated at 250 s with
    // [1m:1m] the steps are 240 only (190 < 240 <= 250).
    assert_eq!(
        one(eval(&source, "count_over_time(c[1m:1m])", 250_000)),
        1.0
    );
    assert_eq!(
        one(eval(&source, "max_over_time(c[1m:1m])", 250_000)),
        240.0
    );
    // [5m:1m] at 300 s: steps 0, 60, ..., 300 (both ends, as Prometheus 2.x).
    assert_eq!(
        one(eval(&source, "count_over_time(c[5m:1m])", 300_000)),
        6.0
    );
    // A subquery of a range function: rate over 1m is 1/s at every step.
    assert_eq!(
        one(eval(&source, "avg_over_time(rate(c[1m])[5m:30s])", 600_000)),
        1.0
    );
    // The default step is EvalOptions::subquery_step_ms (1m, Prometheus's default).
    assert_eq!(one(eval(&source, "count_over_time(c[5m:])", 600_000)), 6.0);
    // offset moves the subquery's window back.
    assert_eq!(
        one(eval(&source, "max_over_time(c[1m:1m] offset 2m)", 600_000)),
        480.0
    );
}

#[test]
fn group_left_copies_the_one_sides_labels_and_refuses_ambiguity() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "req"), ("pod", "a"), ("code", "200")]),
        vec![s(0, 10.0)],
    );
    source.push(
        labels(&[("__name__", "req"), ("pod", "a"), ("code", "500")]),
        vec![s(0, 2.0)],
    );
    source.push(
        labels(&[
            ("__name__", "owner"),
            ("pod", "a"),
            ("owner", "web"),
            ("node", ""),
        ]),
        vec![s(0, 1.0)],
    );
    assert_eq!(
        vector(eval(&source, "req * on(pod) group_left(owner) owner", 0)),
        [
            (r#"{code="200", owner="web", pod="a"}"#.into(), 10.0),
            (r#"{code="500", owner="web", pod="a"}"#.into(), 2.0)
        ]
    );
    assert_eq!(
        vector(eval(&source, "owner * on(pod) group_right(owner) req", 0)),
        [
            (r#"{code="200", owner="web", pod="a"}"#.into(), 10.0),
            (r#"{code="500", owner="web", pod="a"}"#.into(), 2.0)
        ]
    );
    // Without group_left the two left series match one right series: an error.
    assert_eq!(
        eval(&source, "req * on(pod) owner", 0),
        Err(EvalError::MultipleMatches)
    );
    // Results that group_left cannot tell apart: arithmetic drops the names that
    // told the left series apart.
    source.push(
        labels(&[("__name__", "req2"), ("pod", "a"), ("code", "200")]),
        vec![s(0, 1.0)],
    );
    assert_eq!(
        eval(
            &source,
            r#"{__name__=~"req|req2", code="200"} * on(pod) group_left owner"#,
            0
        ),
        Err(EvalError::GroupingNotUnique)
    );
}

#[test]
fn ml_forecast_splits_at_its_last_top_level_comma() {
    assert_eq!(
        split_ml_forecast("ml_forecast(sum(rate(x[5m])), 1h)"),
        Some(("sum(rate(x[5m]))", "1h"))
    );
    assert_eq!(
        split_ml_forecast(r#" ml_forecast( topk(2, x{a="p,q"}) , "30m" ) "#),
        Some((r#"topk(2, x{a="p,q"})"#, r#""30m""#))
    );
    assert_eq!(split_ml_forecast("sum(x)"), None);
    assert_eq!(split_ml_forecast("ml_forecast(x)"), None);
    assert_eq!(
        split_ml_forecast("ml_forecast(x, 1h) + ml_forecast(y, 1h)"),
        None
    );
}

/// The deepest expression of each shape that still passes the size check.
fn at_the_depth_limit() -> Vec<(&'static str, String)> {
    let levels = size::MAX_DEPTH - 1;
    vec![
        ("chain", vec!["m"; size::MAX_DEPTH].join(" + ")),
        (
            "abs",
            format!("{}m{}", "abs(".repeat(levels), ")".repeat(levels)),
        ),
        (
            "sum",
            format!("{}m{}", "sum by (pod) (".repeat(levels), ")".repeat(levels)),
        ),
        ("minus", format!("{}m", "-".repeat(levels))),
        (
            "mixed",
            format!(
                "{}{}{}",
                "abs(".repeat(60),
                vec!["-m"; 33].join(" * "),
                ")".repeat(60)
            ),
        ),
    ]
}

#[test]
fn expressions_at_the_depth_limit_evaluate_within_a_default_thread_stack() {
    // Parsing, copying, printing and dropping happen where rules are compiled (the async
    // runtime's threads, 2 MiB by default); evaluating on the evaluator thread, which has
    // 16 MiB: half of that here is the limit's margin in a debug build, whatever
    // RUST_MIN_STACK says.
    let handled = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for (shape, text) in at_the_depth_limit() {
                let size = check_size(&text).unwrap_or_else(|e| panic!("{shape}: {e}"));
                assert!(size.depth <= size::MAX_DEPTH, "{shape}: {size:?}");
                let expr = parse(&text).unwrap_or_else(|e| panic!("{shape}: {e}"));
                let copy = expr.clone();
                assert!(!format!("{copy:?}").is_empty());
                drop(copy);
            }
        })
        .expect("thread starts")
        .join();
    assert!(
        handled.is_ok(),
        "an expression at the limit failed to parse or drop"
    );
    let evaluated = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(|| {
            let mut source = MemorySource::default();
            source.push(labels(&[("__name__", "m"), ("pod", "a")]), vec![s(0, 2.0)]);
            for (shape, text) in at_the_depth_limit() {
                let expr = parse(&text).unwrap_or_else(|e| panic!("{shape}: {e}"));
                let value = evaluate(&expr, 1_000, &source, &EvalOptions::default());
                assert!(value.is_ok(), "{shape}: {value:?}");
            }
        })
        .expect("thread starts")
        .join();
    assert!(
        evaluated.is_ok(),
        "an expression at the limit failed to evaluate"
    );
}

#[test]
fn parse_refuses_expressions_past_the_limits_unparsed() {
    let deeper = vec!["m"; size::MAX_DEPTH + 1].join(" + ");
    let error = parse(&deeper).expect_err("one level too deep");
    assert!(
        error.contains(&format!("nested {} levels deep", size::MAX_DEPTH + 1)),
        "{error}"
    );
    let error = parse(&format!("{}m", "-".repeat(20_000))).expect_err("20 000 minus signs");
    assert!(error.contains("over the limit of 128"), "{error}");
}

#[test]
fn a_label_with_an_empty_value_is_no_label_in_results() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "up"), ("job", "db"), ("shard", "")]),
        vec![s(0, 1.0), s(15_000, 1.0)],
    );
    // Prometheus never shows `shard=""`: not on the series, not as a group.
    assert_eq!(
        vector(eval(&source, "up", 15_000)),
        [(r#"up{job="db"}"#.into(), 1.0)]
    );
    assert_eq!(
        vector(eval(&source, r#"up{shard=""}"#, 15_000)),
        [(r#"up{job="db"}"#.into(), 1.0)]
    );
    assert_eq!(
        vector(eval(&source, "sum by (shard) (up)", 15_000)),
        [("{}".into(), 1.0)]
    );
    assert_eq!(
        vector(eval(&source, "last_over_time(up[1m])", 15_000)),
        [(r#"up{job="db"}"#.into(), 1.0)]
    );
}

/// Prometheus 3's name for `holt_winters`, which Prometheus 2.42 (the oracle) does not
/// know: the cases of Prometheus's own `functions.test` ("Tests for
/// double_exponential_smoothing", float series only; a linear trend is followed exactly
/// whatever the range's boundaries, so 2.x and 3.x semantics agree on them).
#[test]
fn double_exponential_smoothing_follows_prometheus_test_cases() {
    // `load 10s` with `<start>+<step>x1000`: samples every 10 s.
    let load = |series: &[(&str, &str, f64, f64)]| {
        let mut source = MemorySource::default();
        for &(instance, group, start, step) in series {
            source.push(
                labels(&[
                    ("__name__", "http_requests"),
                    ("job", "api-server"),
                    ("instance", instance),
                    ("group", group),
                ]),
                (0..=1000)
                    .map(|i| s(i * 10_000, start + step * i as f64))
                    .collect(),
            );
        }
        source
    };
    let expected = |pairs: &[(&str, &str, f64)]| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = pairs
            .iter()
            .map(|&(instance, group, value)| {
                let l = labels(&[
                    ("job", "api-server"),
                    ("instance", instance),
                    ("group", group),
                ]);
                (l.to_string(), value)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let text = "double_exponential_smoothing(http_requests[1m], 0.01, 0.1)";
    let positive = load(&[
        ("0", "production", 0.0, 10.0),
        ("1", "production", 0.0, 20.0),
        ("0", "canary", 0.0, 30.0),
        ("1", "canary", 0.0, 40.0),
    ]);
    assert_eq!(
        vector(eval(&positive, text, 8_000_000)),
        expected(&[
            ("0", "production", 8000.0),
            ("1", "production", 16000.0),
            ("0", "canary", 24000.0),
            ("1", "canary", 32000.0),
        ])
    );
    let negative = load(&[
        ("0", "production", 8000.0, -10.0),
        ("1", "production", 0.0, -20.0),
        ("0", "canary", 0.0, 30.0),
        ("1", "canary", 0.0, -40.0),
    ]);
    assert_eq!(
        vector(eval(&negative, text, 8_000_000)),
        expected(&[
            ("0", "production", 0.0),
            ("1", "production", -16000.0),
            ("0", "canary", 24000.0),
            ("1", "canary", -32000.0),
        ])
    );
    // The same function under its Prometheus 2 name.
    assert_eq!(
        eval(
            &negative,
            "holt_winters(http_requests[1m], 0.01, 0.1)",
            8_000_000
        ),
        eval(&negative, text, 8_000_000)
    );
}

/// `check` and the evaluator must agree: every function `check` accepts is evaluated,
/// whatever its arguments' shape.
#[test]
fn every_function_check_accepts_is_evaluated() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "x"), ("le", "1")]),
        (0..40).map(|i| s(i * 15_000, i as f64)).collect(),
    );
    let candidates = |name: &str| {
        [
            format!("{name}(x[5m])"),
            format!("{name}(0.5, x[5m])"),
            format!("{name}(x[5m], 60)"),
            format!("{name}(x[5m], 0.5, 0.5)"),
            format!("{name}(0.5, x)"),
            format!("{name}(x, 0, 1)"),
            format!("{name}(x, 1)"),
            format!(r#"{name}(x, "a", "b", "le", "(.*)")"#),
            format!(r#"{name}(x, "a", "-", "le")"#),
            format!("{name}(1)"),
            format!("{name}(x)"),
            format!("{name}()"),
        ]
    };
    for name in super::check::FUNCTIONS {
        let text = candidates(name)
            .into_iter()
            .find(|t| parse(t).is_ok())
            .unwrap_or_else(|| panic!("no call of {name} parses"));
        let result = eval(&source, &text, 600_000);
        assert!(
            !matches!(result, Err(EvalError::Unsupported(_))),
            "{text}: {result:?}"
        );
    }
}

/// Prometheus 3's left-open ranges and lookback: a sample exactly at `t - range` (or
/// `t - 5m`) is out under 3 and in under 2; subquery steps at `t - range` likewise.
#[test]
fn prometheus_3_ranges_and_lookback_are_left_open() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "x")]),
        (0..=10).map(|i| s(i * 60_000, i as f64)).collect(),
    );
    let at = 10 * 60_000;
    for (text, v2, v3) in [
        ("count_over_time(x[5m])", 6.0, 5.0),
        ("count_over_time(x[1m:1m])", 2.0, 1.0),
        ("min_over_time(x[5m])", 5.0, 6.0),
    ] {
        assert_eq!(
            one(eval_with(&source, text, at, Semantics::V2)),
            v2,
            "{text}"
        );
        assert_eq!(
            one(eval_with(&source, text, at, Semantics::V3)),
            v3,
            "{text}"
        );
    }
    // The newest sample is 5 minutes old at 15m: still seen under 2, gone under 3.
    let late = 15 * 60_000;
    assert_eq!(one(eval_with(&source, "x", late, Semantics::V2)), 10.0);
    assert_eq!(vector(eval_with(&source, "x", late, Semantics::V3)), []);
}

/// Prometheus 3's `.` matches a newline, in matchers and in `label_replace`; 2's does not.
#[test]
fn prometheus_3_regex_dot_matches_newline() {
    let mut source = MemorySource::default();
    source.push(
        labels(&[("__name__", "x"), ("msg", "foo\nbar")]),
        vec![s(0, 1.0)],
    );
    assert_eq!(
        vector(eval_with(&source, r#"x{msg=~"foo.*"}"#, 0, Semantics::V2)),
        []
    );
    assert_eq!(
        one(eval_with(&source, r#"x{msg=~"foo.*"}"#, 0, Semantics::V3)),
        1.0
    );
    let replace = r#"label_replace(x, "m", "$1", "msg", "(.*)")"#;
    assert!(
        vector(eval_with(&source, replace, 0, Semantics::V2))[0]
            .0
            .contains("msg=")
    );
    assert!(
        !vector(eval_with(&source, replace, 0, Semantics::V2))[0]
            .0
            .contains("m=")
    );
    assert!(
        vector(eval_with(&source, replace, 0, Semantics::V3))[0]
            .0
            .contains("m=")
    );
}

/// `holt_winters` is refused under Prometheus 3's semantics with the new name given;
/// UTF-8 label names are valid destinations there.
#[test]
fn prometheus_3_names() {
    let mut source = MemorySource::default();
    source.push(labels(&[("__name__", "x"), ("a", "1")]), vec![s(0, 1.0)]);
    let err = eval_with(&source, "holt_winters(x[5m], 0.5, 0.5)", 0, Semantics::V3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("double_exponential_smoothing"), "{err}");
    assert!(eval_with(&source, "holt_winters(x[5m], 0.5, 0.5)", 0, Semantics::V2).is_ok());
    let dotted = r#"label_replace(x, "service.name", "$1", "a", "(.*)")"#;
    assert!(eval_with(&source, dotted, 0, Semantics::V2).is_err());
    let Ok(Value::Vector(v)) = eval_with(&source, dotted, 0, Semantics::V3) else {
        panic!("not a vector");
    };
    assert_eq!(v[0].0.get("service.name"), Some("1"));
    // Quoted UTF-8 names select series (promql-parser 0.11 parses them).
    source.push(
        labels(&[("__name__", "my.metric"), ("label.name", "v")]),
        vec![s(0, 2.0)],
    );
    assert_eq!(
        one(eval_with(
            &source,
            r#"{"my.metric", "label.name"="v"}"#,
            0,
            Semantics::V3
        )),
        2.0
    );
}

/// Prometheus 3's `topk`: a NaN k is an error in its own words, a k of -Inf gives
/// nothing (2.x: an overflow error for both).
#[test]
fn prometheus_3_topk_parameters() {
    let mut source = MemorySource::default();
    source.push(labels(&[("__name__", "x")]), vec![s(0, 1.0)]);
    let nan = eval_with(&source, "topk(NaN, x)", 0, Semantics::V3).unwrap_err();
    assert_eq!(nan.to_string(), "Parameter value is NaN");
    assert_eq!(
        vector(eval_with(&source, "topk(-Inf, x)", 0, Semantics::V3)),
        []
    );
    assert!(eval_with(&source, "topk(-Inf, x)", 0, Semantics::V2).is_err());
    assert!(eval_with(&source, "topk(NaN, x)", 0, Semantics::V2).is_err());
}
