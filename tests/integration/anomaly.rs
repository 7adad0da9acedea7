//! AnomalyAction anomaly detection (`spec.detection`) on synthetic series of known shape,
//! through the real pipeline: a step, a spike, a slow drift, and pure noise that must not
//! trip; cold start and `for` apply.

use crate::common;

use axum::http::StatusCode;
use common::*;

fn rule(name: &str, algorithm: &str, extra: &str) -> String {
    band_rule(name, "queue_depth", algorithm, "10m", 20, extra)
}

/// Sends `values` as one series, 15 s apart, ending a minute ago; returns the decisions
/// as (verdict, index of the deciding sample).
async fn run(app: &App, values: &[f64]) -> Vec<(String, usize)> {
    let end = now_ms() - 60_000;
    let start = end - 15_000 * values.len() as i64;
    let samples: Vec<(i64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (start + 15_000 * i as i64, v))
        .collect();
    let body = v1_body(vec![series(
        &[
            ("__name__", "queue_depth"),
            ("namespace", "default"),
            ("pod", "worker-0"),
        ],
        &samples,
    )]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    app.wait_decisions(0)
        .await
        .iter()
        .map(|d| {
            let at = d["sampleTimeMs"].as_i64().unwrap();
            (
                d["verdict"].as_str().unwrap().to_owned(),
                ((at - start) / 15_000) as usize,
            )
        })
        .collect()
}

#[tokio::test]
async fn pure_noise_never_trips() {
    for algorithm in ["zscore", "mad"] {
        let app = start(&rule("noise", algorithm, ""));
        let decisions = run(&app, &noisy(500, 7, |_| 100.0)).await;
        assert!(decisions.is_empty(), "{algorithm}: {decisions:?}");
        // The rules endpoint shows the live value and the band it is judged against.
        let view = app.rule("noise").await;
        let live = &view["values"]["results"][0];
        let value: f64 = live["value"].as_str().unwrap().parse().unwrap();
        let (lower, upper) = (
            live["band"]["lower"].as_f64().unwrap(),
            live["band"]["upper"].as_f64().unwrap(),
        );
        assert!(lower < value && value < upper, "{view}");
        // Noise in [-1, 1]: a 3σ band is about ±1.7 wide around 100.
        assert!(lower > 97.0 && upper < 103.0, "{view}");
        assert_eq!(live["tripped"], false);
    }
}

#[tokio::test]
async fn a_step_trips_at_its_first_sample() {
    for algorithm in ["zscore", "mad"] {
        let app = start(&rule("step", algorithm, ""));
        let values = noisy(100, 11, |i| if i < 60 { 100.0 } else { 150.0 });
        let decisions = run(&app, &values).await;
        assert_eq!(
            decisions.first(),
            Some(&("tripped".to_owned(), 60)),
            "{algorithm}"
        );
        let rule = app.rule("step").await;
        assert!(
            rule["summary"]
                .as_str()
                .unwrap()
                .contains(&format!("{algorithm} band")),
            "{rule}"
        );
    }
}

#[tokio::test]
async fn a_spike_trips_and_clears_with_the_next_normal_sample() {
    let app = start(&rule("spike", "mad", ""));
    let mut values = noisy(80, 3, |_| 100.0);
    values[50] = 130.0;
    let decisions = run(&app, &values).await;
    assert_eq!(
        decisions,
        [("tripped".to_owned(), 50), ("cleared".to_owned(), 51)]
    );
}

/// One incident is one trip: a level shift that lasts longer than the band's window is
/// taken into the series' history (the band follows it, and the value is inside), and
/// its end then looks like a shift of its own. With the default `clearAfter` (the
/// window) the series trips when the shift starts, stays tripped through its end, says
/// since when it has been anomalous, and clears once a window of values has been
/// normal.
#[tokio::test]
async fn an_incident_longer_than_the_window_trips_once_and_clears_once() {
    for algorithm in ["zscore", "mad"] {
        let yaml = format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: shift, namespace: default}}\nspec:\n  metric: queue_depth\n  detection: {{algorithm: {algorithm}, window: 10m, minSamples: 20}}\n  remediation: {{type: alert, cooldownSeconds: 0}}\n"
        );
        let app = start(&yaml);
        // 15 s apart: 40 samples a window. Shifted by 50 from sample 60 to 199.
        let values = noisy(
            400,
            21,
            |i| if (60..200).contains(&i) { 150.0 } else { 100.0 },
        );
        let decisions = run(&app, &values).await;
        assert_eq!(
            decisions.first(),
            Some(&("tripped".to_owned(), 60)),
            "{algorithm}"
        );
        assert_eq!(decisions.len(), 2, "{algorithm}: {decisions:?}");
        assert_eq!(decisions[1].0, "cleared", "{algorithm}: {decisions:?}");
        // Normal again from 200; the band of the shifted level flags that for a while,
        // then a whole window (40 samples) inside the band clears it.
        assert!(
            (240..=300).contains(&decisions[1].1),
            "{algorithm}: {decisions:?}"
        );
    }
}

/// While tripped, the rules endpoint says since when the series has been anomalous.
#[tokio::test]
async fn a_tripped_series_says_since_when_it_is_anomalous() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: since, namespace: default}\nspec:\n  metric: queue_depth\n  detection: {algorithm: zscore, window: 10m, minSamples: 20}\n  remediation: {type: alert, cooldownSeconds: 0}\n";
    let app = start(yaml);
    let values = noisy(100, 23, |i| if i >= 60 { 150.0 } else { 100.0 });
    let end = now_ms() - 60_000;
    let start_ms = end - 15_000 * values.len() as i64;
    let decisions = run(&app, &values).await;
    assert_eq!(decisions, [("tripped".to_owned(), 60)]);
    let view = app.rule("since").await;
    let since = view["trippedSeries"][0]["anomalousSinceMs"]
        .as_i64()
        .unwrap();
    // `run` ends its samples a minute before now, as computed here a moment earlier.
    let index = (since - start_ms + 7_500).div_euclid(15_000);
    assert!((59..=61).contains(&index), "{view}");
}

#[tokio::test]
async fn the_for_duration_ignores_a_lone_spike_and_cold_start_ignores_early_ones() {
    let app = start(&rule("held", "zscore", "  for: 1m\n"));
    let mut values = noisy(80, 5, |_| 100.0);
    values[5] = 500.0; // before minSamples: no band yet
    values[50] = 130.0; // one sample: shorter than `for`
    assert!(run(&app, &values).await.is_empty());
}

#[tokio::test]
async fn a_slow_drift_moves_the_band_with_it() {
    // Half a noise amplitude per 10-minute window: the band follows the series, so only a
    // threshold (or a forecast) would catch such a drift.
    let app = start(&rule("drift", "zscore", ""));
    let values = noisy(400, 9, |i| 100.0 + i as f64 * 0.0125);
    assert!(run(&app, &values).await.is_empty());
}

#[tokio::test]
async fn a_threshold_beside_detection_trips_on_either() {
    let yaml =
        rule("both", "zscore", "").replace("  detection:", "  threshold: \"> 120\"\n  detection:");
    let app = start(&yaml);
    // Drifts up slowly past the threshold: no band trip, but the threshold's.
    let values = noisy(400, 13, |i| 100.0 + i as f64 * 0.1);
    let decisions = run(&app, &values).await;
    let first = decisions.first().expect("a trip").clone();
    assert_eq!(first.0, "tripped");
    assert!((190..=215).contains(&first.1), "{decisions:?}");
}

#[tokio::test]
async fn a_seasonal_band_catches_an_anomaly_that_the_daily_swing_hides_from_zscore() {
    const DAY: i64 = 1440;
    let rules = ["seasonal", "zscore"]
        .map(|algorithm| {
            format!(
                r#"apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: {algorithm}, namespace: default}}
spec:
  metric: requests_in_flight
  detection: {{algorithm: {algorithm}, sensitivity: 4, window: 3d, minSamples: 100, clearAfter: 0s}}
  remediation: {{type: alert, cooldownSeconds: 0}}
---
"#
            )
        })
        .concat();
    let app = start(&rules);
    // A daily swing of ±50 around 200, noise ±1, one sample a minute for two days and
    // sixteen hours; at 15:00 on the third day, +30 for one minute: well inside the
    // day's range, far outside what that time of day looks like.
    let spike = 2 * DAY + 900;
    let mut noise = Noise(17);
    let value = |m: i64, noise: &mut Noise| {
        let phase = 2.0 * std::f64::consts::PI * m as f64 / DAY as f64;
        200.0 + 50.0 * phase.sin() + noise.next() + if m == spike { 30.0 } else { 0.0 }
    };
    let minutes = 2 * DAY + 960;
    let start = {
        let t = now_ms() - (minutes + 5) * 60_000;
        t - t.rem_euclid(60_000)
    };
    for m in 0..minutes {
        let body = v1_body(vec![series(
            &[
                ("__name__", "requests_in_flight"),
                ("namespace", "default"),
                ("pod", "api-0"),
            ],
            &[(start + m * 60_000, value(m, &mut noise))],
        )]);
        assert_eq!(
            app.write(Some(V1), body).await.status,
            StatusCode::NO_CONTENT
        );
    }
    let decisions = app.wait_decisions(2).await;
    let seen: Vec<(String, String, i64)> = decisions
        .iter()
        .map(|d| {
            (
                d["rule"]["name"].as_str().unwrap().to_owned(),
                d["verdict"].as_str().unwrap().to_owned(),
                (d["sampleTimeMs"].as_i64().unwrap() - start) / 60_000,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("seasonal".to_owned(), "tripped".to_owned(), spike),
            ("seasonal".to_owned(), "cleared".to_owned(), spike + 1),
        ],
        "{decisions:#?}"
    );
    let view = app.rule("seasonal").await;
    let band = &view["values"]["results"][0]["band"];
    let width = band["upper"].as_f64().unwrap() - band["lower"].as_f64().unwrap();
    assert!(
        width < 20.0,
        "a band of the time of day, not of the day: {view}"
    );
}

/// `detection: {}` in a rule that restarts without approval is a band for acting: over
/// a series' third day, a ten-minute burst and a moderate two-hour shift trip the
/// alerting default but not it, and a large two-hour shift trips it once its band has
/// been broken for 15 minutes, not at the first surprising value.
#[test]
fn the_default_band_of_a_rule_that_restarts_waits_to_be_sure() {
    let rule = |name: &str, action: &str| {
        format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  metric: m\n  detection: {{}}\n  remediation: {{type: {action}}}\n---\n"
        )
    };
    let mut ev = evaluator(&(rule("alerting", "alert") + &rule("acting", "restart")));
    let base = 1_700_000_100_000i64;
    let step = 300_000;
    // (pod, how far the series moves, for how many 5-minute steps)
    let incidents = [
        ("burst", 32.0, 2),
        ("moderate", 8.0, 24),
        ("large", 32.0, 24),
    ];
    let start = 3 * 288;
    let mut noise: Vec<Noise> = (0..incidents.len() as u64).map(Noise).collect();
    let mut trips = Vec::new();
    for i in 0..start + 48 {
        let t = base + i * step;
        let all = incidents
            .iter()
            .zip(&mut noise)
            .map(|(&(pod, by, steps), noise)| {
                let daily = 20.0 * (std::f64::consts::TAU * i as f64 / 288.0).sin();
                let moved = if (start..start + steps).contains(&i) {
                    by
                } else {
                    0.0
                };
                series(
                    &[("__name__", "m"), ("pod", pod)],
                    &[(t, 100.0 + daily + noise.next() + moved)],
                )
            })
            .collect();
        for verdict in apply_v1(&mut ev, &v1_body(all), t).verdicts {
            assert_eq!(verdict.change.as_str(), "tripped", "{verdict:?}");
            trips.push((
                verdict.rule.name.clone(),
                verdict.series.get("pod").unwrap_or_default().to_owned(),
                (verdict.sample_time_ms - base) / step - start,
                verdict.reason,
            ));
        }
    }
    let at = |rule: &str, pod: &str| {
        trips
            .iter()
            .filter(|(r, p, ..)| r == rule && p == pod)
            .map(|(.., at, reason)| (*at, reason.clone()))
            .collect::<Vec<_>>()
    };
    for pod in ["burst", "moderate", "large"] {
        let alerting = at("alerting", pod);
        assert_eq!(alerting.len(), 1, "{pod}: {trips:?}");
        assert_eq!(alerting[0].0, 0, "{pod} alerts at once: {trips:?}");
    }
    assert!(at("acting", "burst").is_empty(), "{trips:?}");
    assert!(at("acting", "moderate").is_empty(), "{trips:?}");
    let acting = at("acting", "large");
    assert_eq!(acting.len(), 1, "{trips:?}");
    let (when, reason) = &acting[0];
    assert!((3..=6).contains(when), "{trips:?}");
    assert!(reason.ends_with(" for 900s"), "{reason}");
}
