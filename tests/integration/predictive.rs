//! PredictiveScale through the real pipeline: the query evaluated every minute of event
//! time into a derived series, forecast `horizon` ahead, tripping when the forecast moves
//! past `thresholdPercent`. Linear growth trips `provision` with the extrapolated value,
//! a daily pattern trips an hour before its peak (a seasonal model, not a trend), and a
//! flat series never trips.

use crate::common;

use axum::http::StatusCode;
use common::*;

const MINUTE: i64 = 60_000;

fn rule(name: &str, action: &str, horizon: &str, threshold: f64) -> String {
    format!(
        r#"apiVersion: aiops.prophet.io/v1alpha1
kind: PredictiveScale
metadata: {{name: {name}, namespace: shop}}
spec:
  forecastQuery: 'sum(demand{{namespace="shop"}})'
  nodePoolRef: {{name: general}}
  horizon: {horizon}
  thresholdPercent: {threshold}
  action: {action}
---
"#
    )
}

/// Deterministic noise in [-1, 1].
fn noise(i: i64) -> f64 {
    ((i as f64 * 12.9898).sin() * 43_758.545_3).fract()
}

/// Sends one sample per minute of `value(minute)` for minutes `0..minutes` from `start`,
/// one request each (as a live Prometheus would, a batch every few seconds), across two
/// pods so the query's `sum` has work to do.
async fn feed(app: &App, start: i64, minutes: std::ops::Range<i64>, value: impl Fn(i64) -> f64) {
    for m in minutes {
        let at = start + m * MINUTE;
        let v = value(m);
        let body = v1_body(vec![
            series(
                &[("__name__", "demand"), ("namespace", "shop"), ("pod", "a")],
                &[(at, v * 0.25)],
            ),
            series(
                &[("__name__", "demand"), ("namespace", "shop"), ("pod", "b")],
                &[(at, v * 0.75)],
            ),
        ]);
        assert_eq!(
            app.write(Some(V1), body).await.status,
            StatusCode::NO_CONTENT
        );
    }
}

/// A start on the minute grid, `minutes` before now (so every sample lies in the past).
fn start_minutes_ago(minutes: i64) -> i64 {
    let start = now_ms() - (minutes + 5) * MINUTE;
    start - start.rem_euclid(MINUTE)
}

#[tokio::test]
async fn linear_growth_provisions_with_the_extrapolated_forecast() {
    let app = start(&rule("growth", "provision", "30m", 20.0));
    assert_eq!(app.rule("growth").await["state"], "active");
    let start = start_minutes_ago(60);
    // 100 + 2/min: 30 minutes ahead the demand is 60 higher.
    feed(&app, start, 0..60, |m| {
        100.0 + 2.0 * m as f64 + 0.2 * noise(m)
    })
    .await;
    let decisions = app.wait_decisions(1).await;
    let d = &decisions[0];
    assert_eq!(d["verdict"], "tripped", "{d}");
    assert_eq!(d["action"], "provision");
    assert_eq!(d["object"], "NodePool general");
    // The first forecast comes with the 30th point of history (minute 29).
    let at = d["sampleTimeMs"].as_i64().unwrap();
    assert_eq!(at, start + 29 * MINUTE, "{d}");
    let f = &d["forecast"];
    let current = f["current"].as_f64().unwrap();
    let value = f["value"].as_f64().unwrap();
    assert!((current - 158.0).abs() < 1.0, "{f}");
    assert!(
        (value - 218.0).abs() < 218.0 * 0.03,
        "forecast {value}: {f}"
    );
    assert!(f["lower"].as_f64().unwrap() <= value && value <= f["upper"].as_f64().unwrap());
    assert!(f["changePercent"].as_f64().unwrap() > 20.0, "{f}");
    // It stays tripped while the growth goes on: no flapping.
    assert_eq!(app.decisions().await.len(), 1);
    let view = app.rule("growth").await;
    let forecasts = &view["forecast"]["forecasts"];
    assert_eq!(forecasts[0]["tripped"], true, "{view}");
    assert_eq!(forecasts[0]["history"], 60, "{view}");
}

#[tokio::test]
async fn a_flat_series_never_trips_and_shows_its_forecast() {
    let app = start(&rule("flat", "adjust", "1h", 10.0));
    let start = start_minutes_ago(180);
    feed(&app, start, 0..180, |m| 500.0 + 5.0 * noise(m)).await;
    let view = app.rule("flat").await;
    let forecast = &view["forecast"]["forecasts"][0]["forecast"];
    let value = forecast["value"].as_f64().unwrap();
    assert!((value - 500.0).abs() < 10.0, "{view}");
    assert_eq!(app.decisions().await.len(), 0);
}

#[tokio::test]
async fn a_daily_pattern_provisions_an_hour_before_its_peak() {
    let app = start(&rule("daily", "provision", "1h", 50.0));
    const DAY: i64 = 1440;
    // Quiet at 100 all day except a ramp to 400 over the hour before 12:00 and back down
    // over the hour after: a trend model sees nothing coming, a daily season does.
    let shape = |m: i64| {
        let minute_of_day = m.rem_euclid(DAY);
        let from_peak = (minute_of_day - 720).abs();
        let ramp = if from_peak < 60 {
            300.0 * (60 - from_peak) as f64 / 60.0
        } else {
            0.0
        };
        100.0 + ramp + 2.0 * noise(m)
    };
    let start = start_minutes_ago(2 * DAY + 660);
    let day3 = start + 2 * DAY * MINUTE;
    let trips_on_day3 = |decisions: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        decisions
            .into_iter()
            .filter(|d| d["verdict"] == "tripped" && d["sampleTimeMs"].as_i64().unwrap() >= day3)
            .collect()
    };
    // Two days of history (the trend model of the second day reacts to its ramp only
    // once it has begun), then the third morning up to 10:00: quiet, nothing coming
    // within the hour.
    feed(&app, start, 0..2 * DAY + 600, shape).await;
    let early = trips_on_day3(app.decisions().await);
    assert!(
        early.is_empty(),
        "tripped before 10:00 on day 3: {early:#?}"
    );
    // 10:00 to 11:00, the hour before the ramp: the season says it is coming.
    feed(&app, start, 2 * DAY + 600..2 * DAY + 660, shape).await;
    let trips = trips_on_day3(app.decisions().await);
    assert_eq!(trips.len(), 1, "{trips:#?}");
    let f = &trips[0]["forecast"];
    assert_eq!(f["model"]["seasonal"]["periodSteps"], 1440, "{f}");
    assert!(f["current"].as_f64().unwrap() < 110.0, "{f}");
    // It trips once the hour ahead reaches past the threshold on the ramp (11:10 is
    // 150, +50%), so around 10:10, not earlier.
    let at = trips[0]["sampleTimeMs"].as_i64().unwrap();
    assert!(
        (day3 + 605 * MINUTE..=day3 + 625 * MINUTE).contains(&at),
        "tripped at minute {} of day 3: {f}",
        (at - day3) / MINUTE
    );
    // By 11:00 the forecast an hour ahead is the peak itself.
    let view = app.rule("daily").await;
    let latest = &view["forecast"]["forecasts"][0]["forecast"];
    let peak = latest["value"].as_f64().unwrap();
    assert!((peak - 400.0).abs() < 40.0, "{view}");
}

#[tokio::test]
async fn the_seed_style_ml_forecast_is_read_and_its_horizon_checked() {
    let seed_style = rule("seed", "provision", "1h", 20.0).replace(
        r#"'sum(demand{namespace="shop"})'"#,
        r#"'ml_forecast(sum(demand{namespace="shop"}), 1h)'"#,
    );
    let mismatched = rule("mismatch", "provision", "30m", 20.0).replace(
        r#"'sum(demand{namespace="shop"})'"#,
        r#"'ml_forecast(sum(demand{namespace="shop"}), 1h)'"#,
    );
    let no_threshold = rule("zero", "adjust", "1h", 0.0);
    let app = start(&format!("{seed_style}{mismatched}{no_threshold}"));
    let seed = app.rule("seed").await;
    assert_eq!(seed["state"], "active", "{seed}");
    let mismatch = app.rule("mismatch").await;
    assert_eq!(mismatch["state"], "invalid");
    assert!(
        mismatch["message"]
            .as_str()
            .unwrap()
            .contains("spec.horizon"),
        "{mismatch}"
    );
    let zero = app.rule("zero").await;
    assert_eq!(zero["state"], "invalid");
    assert!(
        zero["message"]
            .as_str()
            .unwrap()
            .contains("thresholdPercent"),
        "{zero}"
    );
}
