//! AnomalyAction rules over PromQL expressions, through the real pipeline: evaluated at
//! each 15 s step of event time over the windows, each returned series judged on its
//! own, and unsupported PromQL reported on the rule without affecting the others. Also
//! checks that evaluating over the windows gives exactly what the same engine gives over
//! all the samples, i.e. that the windows keep everything each selector needs.

use crate::common;

use axum::http::StatusCode;
use common::*;
use prophet::eval::WindowSource;
use prophet::eval::promql::{self, EvalOptions, MemorySource, Semantics};
use prophet::ingest::Sample;
use prophet::labels::Labels;
use prophet::rules::compile::{EXPRESSION_STEP_MS, LOOKBACK_MS, query_inputs};
use prophet::window::{SelectorWindows, WindowSpec};

fn expression_rule(name: &str, metric: &str, threshold: &str) -> String {
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  metric: '{metric}'\n  threshold: '{threshold}'\n  remediation: {{type: restart, cooldownSeconds: 0}}\n---\n"
    )
}

/// Counter samples every 15 s on the step grid, `rate` per second, from `start` for `n`
/// samples.
fn counter(start: i64, n: usize, rate: impl Fn(usize) -> f64) -> Vec<(i64, f64)> {
    let mut total = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                total += rate(i) * 15.0;
            }
            (start + 15_000 * i as i64, total)
        })
        .collect()
}

fn requests(pod: &str, samples: &[(i64, f64)]) -> prophet::proto::v1::TimeSeries {
    series(
        &[
            ("__name__", "http_requests_total"),
            ("namespace", "shop"),
            ("pod", pod),
            ("code", "200"),
        ],
        samples,
    )
}

/// A start on the step grid, far enough back for `n` samples to end before now.
fn grid_start(n: usize) -> i64 {
    let start = now_ms() - 15_000 * (n as i64 + 8);
    start - start.rem_euclid(EXPRESSION_STEP_MS)
}

#[tokio::test]
async fn a_rate_expression_trips_the_pod_whose_rate_is_high_with_its_exact_value() {
    let app = start(&expression_rule(
        "hot-pods",
        r#"sum by (namespace, pod) (rate(http_requests_total{namespace="shop"}[1m]))"#,
        "> 5",
    ));
    let view = app.rule("hot-pods").await;
    assert_eq!(view["state"], "active");
    // It says what it evaluates (RuleValid's message in cluster mode).
    assert_eq!(
        view["message"],
        r#"evaluated on the stream: sum by (namespace, pod) (rate(http_requests_total{namespace="shop"}[1m])) > 5"#
    );
    let start = grid_start(12);
    // pod a: 2/s throughout; pod b: 2/s, then 10/s from the 7th sample on.
    let a = counter(start, 12, |_| 2.0);
    let b = counter(start, 12, |i| if i >= 7 { 10.0 } else { 2.0 });
    let body = v1_body(vec![requests("a", &a), requests("b", &b)]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let d = &decisions[0];
    assert_eq!(d["verdict"], "tripped");
    assert_eq!(d["targets"][0]["name"], "b");
    // All in one batch, yet every step in it is evaluated in order, as if the samples
    // had arrived live. Prometheus 3's [1m] range leaves out the sample at its start, so
    // it holds four samples 15 s apart, and rate extrapolates their 45 s by 15 s to the
    // range's start: at the 8th sample's step two of the three intervals are at 10/s and
    // one at 2/s, 330 over 45 s, the first rate above 5 (at the 7th, 210 over 45 s:
    // 4.67). In floats, as Prometheus 3 computes it:
    let rate = 330.0 * ((45.0 + 15.0) / 45.0 / 60.0);
    assert!((rate - 22.0f64 / 3.0).abs() < 1e-12);
    assert_eq!(d["value"], rate.to_string());
    assert_eq!(d["sampleTimeMs"], a[8].0);
    let view = app.rule("hot-pods").await;
    let results = view["values"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{view}");
    assert_eq!(view["trippedSeries"][0]["series"]["pod"], "b", "{view}");
}

#[tokio::test]
async fn a_rule_with_a_long_metric_says_what_it_evaluates_in_a_thousand_characters() {
    let long = format!(r#"m{{pod!="{}"}}"#, "x".repeat(5000));
    let app = start(&expression_rule("long", &long, "> 5"));
    let view = app.rule("long").await;
    assert_eq!(view["state"], "active", "{view}");
    let message = view["message"].as_str().unwrap();
    assert_eq!(message.chars().count(), 1001, "{message}");
    assert!(
        message.starts_with(r#"evaluated on the stream: m{pod!="xxx"#) && message.ends_with("x…"),
        "{message}"
    );
}

#[tokio::test]
async fn a_series_the_expression_stops_returning_clears() {
    let app = start(&expression_rule(
        "hot-pods",
        r#"sum by (pod) (rate(http_requests_total{namespace="shop"}[1m])) > 5"#,
        "> 0",
    ));
    let start = grid_start(30);
    let hot = counter(start, 12, |_| 10.0);
    assert_eq!(
        app.write(Some(V1), v1_body(vec![requests("b", &hot)]))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.wait_decisions(1).await[0]["verdict"], "tripped");
    // The pod cools down: the comparison filters it out of the result.
    let cool: Vec<_> = counter(start, 30, |i| if i < 12 { 10.0 } else { 1.0 })
        .into_iter()
        .skip(12)
        .collect();
    for chunk in cool.chunks(2) {
        app.write(Some(V1), v1_body(vec![requests("b", chunk)]))
            .await;
    }
    let decisions = app.wait_decisions(2).await;
    assert_eq!(decisions[1]["verdict"], "cleared", "{decisions:#?}");
    assert!(
        decisions[1]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer returns"),
        "{decisions:#?}"
    );
    // Rate over [1m] (left-open: four samples, three intervals, extrapolated from 45 s
    // to 60 s) drops under 5 once two of its intervals are at 1/s: at index 12,
    // (2·10 + 1)·15 / 45 = 7 still holds; at index 13 it is (10 + 2·1)·15 / 45 = 4.
    assert_eq!(decisions[1]["sampleTimeMs"], start + 15_000 * 13);
}

/// Prometheus 3's UTF-8 names (an OpenTelemetry metric sent as is): a quoted metric and
/// label name select, are grouped by and come back in the verdict, by default.
#[tokio::test]
async fn utf8_metric_and_label_names_select_and_group() {
    let app = start(&expression_rule(
        "otel",
        r#"sum by ("service.name", pod) (rate({"http.server.requests", namespace="shop"}[1m]))"#,
        "> 5",
    ));
    assert_eq!(
        app.rule("otel").await["state"],
        "active",
        "{}",
        app.rule("otel").await
    );
    let start = grid_start(12);
    let samples = counter(start, 12, |_| 10.0);
    let body = v1_body(vec![series(
        &[
            ("__name__", "http.server.requests"),
            ("namespace", "shop"),
            ("pod", "a"),
            ("service.name", "checkout"),
        ],
        &samples,
    )]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions[0]["verdict"], "tripped", "{decisions:#?}");
    assert_eq!(
        decisions[0]["series"]["service.name"], "checkout",
        "{decisions:#?}"
    );
}

#[tokio::test]
async fn unsupported_promql_makes_only_that_rule_invalid_and_names_the_part() {
    let rules = [
        expression_rule("native", "histogram_count(up)", "> 0"),
        expression_rule("pinned", "up @ 1700000000", "> 0"),
        expression_rule("range", "up[5m]", "> 0"),
        expression_rule("ahead", "up offset -1m", "> 0"),
        expression_rule("huge", "max_over_time(rate(up[1m])[30d:1s])", "> 0"),
        expression_rule(
            "fine",
            r#"sum by (namespace, pod) (rate(http_requests_total[1m]))"#,
            "> 5",
        ),
    ]
    .concat();
    let app = start(&rules);
    for (name, part) in [
        ("native", "histogram_count"),
        ("pinned", "@ modifier"),
        ("range", "matrix"),
        ("ahead", "negative offset"),
        ("huge", "subquery [30d:1s]"),
    ] {
        let rule = app.rule(name).await;
        assert_eq!(rule["state"], "invalid", "{rule}");
        let message = rule["message"].as_str().unwrap();
        assert!(
            message.contains(part) && message.contains("spec.metric"),
            "{name}: {message}"
        );
    }
    assert_eq!(app.rule("fine").await["state"], "active");
    let start = grid_start(8);
    let body = v1_body(vec![requests("a", &counter(start, 8, |_| 9.0))]);
    app.write(Some(V1), body).await;
    assert_eq!(app.wait_decisions(1).await[0]["targets"][0]["name"], "a");
}

/// Feeds samples into windows with the retention compile gives each selector, sample by
/// sample in time order as remote write delivers them, and at every step compares the
/// engine over the windows with the engine over every sample.
#[test]
fn evaluating_over_the_windows_equals_evaluating_over_all_samples() {
    let expressions = [
        r#"rate(http_requests_total[1m])"#,
        r#"sum by (pod) (increase(http_requests_total[5m]))"#,
        r#"http_requests_total"#,
        r#"max_over_time(queue_depth[2m]) - min_over_time(queue_depth[2m])"#,
        r#"queue_depth offset 1m"#,
        r#"avg_over_time(queue_depth[30s] offset 2m)"#,
        r#"max by (pod) (queue_depth) / on(pod) sum by (pod) (rate(http_requests_total[1m]))"#,
        r#"changes(queue_depth[3m]) + resets(http_requests_total[3m])"#,
        r#"quantile(0.9, last_over_time(queue_depth[1m]))"#,
        // Subqueries reach back their range (and offset) before each evaluation.
        r#"max_over_time(rate(http_requests_total[1m])[10m:])"#,
        r#"avg_over_time(max by (pod) (queue_depth)[5m:30s] offset 2m)"#,
        r#"max_over_time(deriv(queue_depth[1m])[3m:15s])"#,
        r#"predict_linear(queue_depth[5m], 600)"#,
        r#"queue_depth * on(pod) group_left sum by (pod) (rate(http_requests_total[1m]))"#,
        r#"absent(queue_depth{pod="c"}) or absent_over_time(queue_depth[1m])"#,
        r#"queue_depth @ end() - queue_depth @ start() offset 30s"#,
    ];
    // Two pods; one counter with a reset and a gap longer than the lookback, one gauge
    // scraped every 10 s with a staleness marker.
    let mut all: Vec<(Labels, Vec<Sample>)> = Vec::new();
    for pod in ["a", "b"] {
        let mut samples = Vec::new();
        let mut total = 0.0;
        for i in 0..200i64 {
            if (80..110).contains(&i) && pod == "b" {
                continue; // a gap of 7.5 minutes
            }
            total = if i == 50 { 3.0 } else { total + (i % 7) as f64 };
            samples.push(Sample {
                timestamp_ms: 1_000_000 + i * 15_000 + if pod == "a" { 1_234 } else { 0 },
                value: total,
            });
        }
        all.push((
            Labels::from_pairs([("__name__", "http_requests_total"), ("pod", pod)]),
            samples,
        ));
        let gauge: Vec<Sample> = (0..300i64)
            .map(|i| Sample {
                timestamp_ms: 1_000_000 + i * 10_000,
                value: if i == 120 && pod == "a" {
                    f64::from_bits(prophet::ingest::STALE_NAN_BITS)
                } else {
                    ((i * 37) % 11) as f64
                },
            })
            .collect();
        all.push((
            Labels::from_pairs([("__name__", "queue_depth"), ("pod", pod)]),
            gauge,
        ));
    }
    let memory = MemorySource::new(
        all.iter()
            .map(|(labels, samples)| promql::SeriesSamples {
                labels: labels.clone(),
                samples: samples.clone(),
            })
            .collect(),
    );
    let mut events: Vec<(i64, usize, Sample)> = all
        .iter()
        .enumerate()
        .flat_map(|(s, (_, samples))| samples.iter().map(move |x| (x.timestamp_ms, s, *x)))
        .collect();
    events.sort_by_key(|(t, s, _)| (*t, *s));
    for text in expressions {
        let expr = promql::parse(text).unwrap();
        let inputs = query_inputs(&expr, EXPRESSION_STEP_MS);
        let mut windows: Vec<SelectorWindows> = inputs
            .iter()
            .map(|i| {
                SelectorWindows::new(WindowSpec {
                    retention_ms: i.retention_ms,
                    idle_ms: i.retention_ms.max(LOOKBACK_MS),
                    series_limit: 100,
                    reclaim_ms: i64::MAX,
                    label_bytes_limit: usize::MAX,
                })
            })
            .collect();
        let compare = |step: i64, windows: &[SelectorWindows]| {
            let source = WindowSource::new(
                inputs
                    .iter()
                    .map(|i| &i.selector)
                    .zip(windows.iter())
                    .collect(),
            );
            // The windows keep what either semantics reads (2's closed ranges read one
            // sample more, at the range's start).
            for semantics in [Semantics::V3, Semantics::V2] {
                let opts = EvalOptions {
                    semantics,
                    ..EvalOptions::default()
                };
                let over_windows = promql::evaluate(&expr, step, &source, &opts);
                let over_all = promql::evaluate(&expr, step, &memory, &opts);
                assert!(over_all.is_ok(), "{text}: {over_all:?}");
                assert_eq!(
                    format!("{over_windows:?}"),
                    format!("{over_all:?}"),
                    "{text} at {step} under {semantics}"
                );
            }
        };
        let mut compared = 0;
        let mut last_step = i64::MIN;
        for &(t, s, sample) in &events {
            // Before the first sample after a step boundary, everything up to the
            // boundary has arrived: evaluate there.
            let step = (t - 1).div_euclid(EXPRESSION_STEP_MS) * EXPRESSION_STEP_MS;
            if step > last_step && last_step != i64::MIN {
                compare(step, &windows);
                compared += 1;
            }
            last_step = last_step.max(step);
            let (labels, _) = &all[s];
            for (input, w) in inputs.iter().zip(&mut windows) {
                if input.selector.selects(labels) {
                    let hash = xxhash_rust::xxh3::xxh3_64(labels.as_canonical());
                    let id = w.get_or_insert(hash, labels.as_canonical()).unwrap();
                    w.insert(id, sample, t);
                }
            }
        }
        assert!(compared > 100, "{text}: {compared}");
    }
}

#[tokio::test]
async fn an_expression_that_fails_at_run_time_is_shown_on_its_rule_and_others_go_on() {
    let rules = [
        // Both pods' series have the same `namespace`: one-to-one matching on it finds two
        // series per side, which Prometheus refuses at evaluation time.
        expression_rule(
            "ambiguous",
            r#"rate(http_requests_total[1m]) / on(namespace) rate(http_requests_total[1m])"#,
            "> 0",
        ),
        expression_rule(
            "fine",
            r#"sum by (namespace, pod) (rate(http_requests_total[1m]))"#,
            "> 5",
        ),
    ]
    .concat();
    let app = start(&rules);
    assert_eq!(app.rule("ambiguous").await["state"], "active");
    let start = grid_start(8);
    let body = v1_body(vec![
        requests("a", &counter(start, 8, |_| 9.0)),
        requests("b", &counter(start, 8, |_| 1.0)),
    ]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["rule"]["name"], "fine");
    let view = app.rule("ambiguous").await;
    let values = &view["values"];
    assert!(
        values["error"]
            .as_str()
            .unwrap()
            .contains("many-to-many matching not allowed"),
        "{view}"
    );
    assert!(values["failedEvaluations"].as_u64().unwrap() >= 1, "{view}");
}
