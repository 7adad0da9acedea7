//! SLOViolation rules, end to end through the HTTP surface: counters in, burn rates and
//! budget out, and a decision when the SLO is violated.

use crate::common;

use axum::http::StatusCode;
use common::*;

const SLO: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {name: checkout, namespace: default}
spec:
  sloName: checkout-availability
  sloTarget: "99%"
  errorBudgetThreshold: 0.5
  period: 1h
  sli:
    ratio:
      errors: http_requests_total{job="checkout", code=~"5.."}
      total: http_requests_total{job="checkout"}
  actions: [{type: scale, value: increase}, {type: alert}]
  hpaRef: {name: checkout-hpa}
"#;

fn requests(code: &str, samples: &[(i64, f64)]) -> prophet::proto::v1::TimeSeries {
    series(
        &[
            ("__name__", "http_requests_total"),
            ("code", code),
            ("job", "checkout"),
        ],
        samples,
    )
}

/// An hour of no traffic (an SLO judges nothing before its counters cover its windows),
/// then from two minutes ago a minute that takes the counters from 5 000 ok and 10
/// errors to the given values. Each request must be accepted. An SLO is judged at each
/// minute boundary over the minutes before it, once its series have reached the
/// boundary: the samples are each a minute's last millisecond, so that each minute is
/// judged when it arrives.
async fn send_minute(app: &App, ok: f64, errors: f64) {
    let t = (now_ms() - 120_000).div_euclid(60_000) * 60_000 - 1;
    let quiet = t - 3_600_000;
    let body = v1_body(vec![
        requests("200", &[(quiet, 5_000.0), (t, 5_000.0), (t + 60_000, ok)]),
        requests("500", &[(quiet, 10.0), (t, 10.0), (t + 60_000, errors)]),
    ]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_burning_error_budget_trips_the_slo_and_the_rule_shows_it() {
    let app = start(SLO);
    let rule = app.rule("checkout").await;
    assert_eq!(rule["state"], "active", "{rule}");

    // Baselines, then a minute of 1000 requests with 20 errors: 2% against a 1% budget.
    send_minute(&app, 5_980.0, 30.0).await;

    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let decision = &decisions[0];
    assert_eq!(decision["verdict"], "tripped");
    assert_eq!(decision["action"], "scale:increase+alert");
    assert_eq!(decision["outcome"], "act");
    assert_eq!(
        decision["object"],
        "HorizontalPodAutoscaler default/checkout-hpa"
    );
    // Budget remaining = 1 - (20/1000) / (1 - 0.99) = -1.
    let value: f64 = decision["value"].as_str().unwrap().parse().unwrap();
    assert!((value + 1.0).abs() < 1e-9, "{value}");
    let reason = decision["reason"].as_str().unwrap();
    assert!(
        reason.contains("error budget remaining -100.0% < 50.0%"),
        "{reason}"
    );

    let slo = &app.rule("checkout").await["slo"];
    assert!(
        (slo["budgetRemaining"].as_f64().unwrap() + 1.0).abs() < 1e-9,
        "{slo}"
    );
    let first = &slo["tiers"][0];
    assert!(
        (first["longBurnRate"].as_f64().unwrap() - 2.0).abs() < 1e-9,
        "{slo}"
    );
    assert_eq!(first["firing"], true);
    assert_eq!(slo["timeToExhaustionDays"], 0.0);
}

#[tokio::test]
async fn a_quiet_service_neither_trips_nor_shows_nan() {
    let app = start(SLO);
    send_minute(&app, 5_000.0, 10.0).await;
    assert!(app.wait_decisions(1).await.is_empty());
    let slo = &app.rule("checkout").await["slo"];
    assert_eq!(slo["budgetRemaining"], 1.0, "{slo}");
    assert_eq!(slo["timeToExhaustionDays"], serde_json::Value::Null);
    assert_eq!(slo["tiers"][0]["longBurnRate"], 0.0);
}

#[tokio::test]
async fn slo_rules_without_a_usable_sli_are_reported_invalid() {
    let app = start(&format!(
        "{}\n---\n{}",
        SLO.replace("name: checkout,", "name: no-sli,")
            .split("  sli:")
            .next()
            .unwrap(),
        SLO.replace("name: checkout,", "name: rated,").replace(
            r#"total: http_requests_total{job="checkout"}"#,
            r#"total: rate(http_requests_total[5m])"#
        )
    ));
    let no_sli = app.rule("no-sli").await;
    assert_eq!(no_sli["state"], "invalid");
    assert!(
        no_sli["message"].as_str().unwrap().contains("spec.sli"),
        "{no_sli}"
    );
    let rated = app.rule("rated").await;
    assert_eq!(rated["state"], "invalid");
    assert!(
        rated["message"]
            .as_str()
            .unwrap()
            .contains("spec.sli.ratio.total"),
        "{rated}"
    );
}

#[tokio::test]
async fn the_burn_rate_table_can_be_overridden() {
    let custom = SLO.replace(
        "  period: 1h\n",
        "  period: 1h\n  burnRateTiers:\n    - {longWindow: 10m, shortWindow: 2m, factor: 1.5}\n",
    );
    let app = start(&custom.replace("errorBudgetThreshold: 0.5", "errorBudgetThreshold: 0"));
    send_minute(&app, 5_980.0, 30.0).await;
    let slo = &app.rule("checkout").await["slo"];
    let tiers = slo["tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 1, "{slo}");
    assert_eq!(tiers[0]["longMs"], 600_000);
    assert_eq!(tiers[0]["factor"], 1.5);
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1);
    assert!(
        decisions[0]["reason"]
            .as_str()
            .unwrap()
            .contains("over 10m and"),
        "{decisions:?}"
    );

    let bad = start(&SLO.replace(
        "  period: 1h\n",
        "  period: 1h\n  burnRateTiers: [{longWindow: 5m, shortWindow: 1h, factor: 2}]\n",
    ));
    let rule = bad.rule("checkout").await;
    assert_eq!(rule["state"], "invalid");
    assert!(
        rule["message"]
            .as_str()
            .unwrap()
            .contains("burnRateTiers[0]"),
        "{rule}"
    );
}

#[test]
fn an_error_counter_silent_past_the_lookback_keeps_its_baseline() {
    // In process, the settle delay 0: the step the silent counter holds back settles at
    // once, so its window is swept as it would be after the delay.
    let mut slo = evaluator(SLO).with_settle_delay(0);
    // An hour of 1000 ok requests a minute; one error counter (10) falls silent after 50
    // minutes, for longer than the 5-minute lookback, while another (503, no errors)
    // goes on, and comes back with 80 errors more. On a minute's last millisecond: an
    // SLO is judged at each minute boundary, once its series reach it.
    let t0 = (now_ms() - 70 * 60_000).div_euclid(60_000) * 60_000 - 1;
    let counter = |from: f64, per_minute: f64, minutes: std::ops::Range<i64>| {
        minutes
            .map(|k| (t0 + k * 60_000, from + per_minute * k as f64))
            .collect::<Vec<_>>()
    };
    let now = now_ms();
    for minute in 0..60 {
        let mut sent = vec![
            requests("200", &counter(5_000.0, 1_000.0, minute..minute + 1)),
            requests("503", &counter(0.0, 0.0, minute..minute + 1)),
        ];
        if minute <= 50 {
            sent.push(requests("500", &counter(10.0, 0.0, minute..minute + 1)));
        }
        apply_v1(&mut slo, &v1_body(sent), now);
    }
    let back = v1_body(vec![
        requests("200", &counter(5_000.0, 1_000.0, 60..61)),
        requests("500", &[(t0 + 60 * 60_000, 90.0)]),
        requests("503", &counter(0.0, 0.0, 60..61)),
    ]);
    apply_v1(&mut slo, &back, now);

    // 80 errors among the hour's ~60 000 requests: a 1h burn rate of about 0.133 against
    // a 1% budget (0 when the silent counter's baseline was evicted with its window).
    let state = slo.snapshot().remove(0).slo.expect("the SLO is judged");
    let burn = state.tiers[0].long_burn_rate;
    assert!((0.13..0.137).contains(&burn), "{state:?}");
    assert!(state.covered_ms >= 60 * 60_000, "{state:?}");
}
