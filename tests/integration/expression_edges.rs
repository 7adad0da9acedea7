//! Edge cases of expression rules, driving the Evaluator directly (found in review):
//! the oldest step a catch-up evaluates, senders whose clock runs ahead, sample times at
//! the edge of i64, inputs that fall silent, gaps in a z-score history, and a restore
//! after the rule's step changed.

use crate::common;

use common::*;
use prophet::eval::Evaluator;

/// Applies one batch of `series` at the receiver's clock `now`; returns the change,
/// sample time and value of every verdict.
fn feed(
    ev: &mut Evaluator,
    now: i64,
    series: Vec<prophet::proto::v1::TimeSeries>,
) -> Vec<(String, i64, Option<f64>)> {
    apply_v1(ev, &v1_body(series), now)
        .verdicts
        .into_iter()
        .map(|v| (v.change.as_str().to_owned(), v.sample_time_ms, v.value))
        .collect()
}

fn rule(metric: &str, threshold: &str) -> String {
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: '{metric}'\n  threshold: '{threshold}'\n  remediation: {{type: alert}}\n"
    )
}

fn m(samples: &[(i64, f64)]) -> prophet::proto::v1::TimeSeries {
    series(&[("__name__", "m"), ("pod", "a")], samples)
}

/// A batch carrying minutes of steps: every step is evaluated, in order, each with its
/// whole range in the windows although the batch moved the series far past it.
#[test]
fn every_catch_up_step_sees_its_whole_range() {
    let mut ev = evaluator(&rule("max_over_time(m[1m])", "> 50"));
    let now = 10_000_000_000;
    let base = 9_000_000_000; // a multiple of 15 s
    assert!(feed(&mut ev, now, vec![m(&[(base + 1_000_000, 0.0)])]).is_empty());
    // One sample a second up to base+1_229_999, a spike of 100 at base+1_110_001.
    let s: Vec<(i64, f64)> = (1_000_001..=1_229_001)
        .step_by(1000)
        .map(|t| (base + t, if t == 1_110_001 { 100.0 } else { 0.0 }))
        .collect();
    let v = feed(&mut ev, now, vec![m(&s)]);
    // The first step is the first boundary after the first sample, 1_005_000; every
    // step from there to the clock (1_229_001) is evaluated. Prometheus's
    // max_over_time(m[1m]) covers the spike at the steps 1_125_000 to 1_170_000 (the
    // 2.x range [t - 1m, t] includes its start).
    let changes: Vec<(&str, i64)> = v.iter().map(|(c, t, _)| (c.as_str(), t - base)).collect();
    assert_eq!(
        changes,
        [("tripped", 1_125_000), ("cleared", 1_185_000)],
        "{v:?}"
    );
}

fn skewed(skew: i64) -> Vec<(String, i64, Option<f64>)> {
    let mut ev = evaluator(&rule("rate(m[1m])", "> 0.5"));
    let base = 9_000_000_000;
    let mut all = Vec::new();
    for i in 0..40i64 {
        let t = base + i * 15_000;
        // the receiver's clock is `skew` behind the sender's
        all.extend(feed(&mut ev, t - skew, vec![m(&[(t, i as f64 * 15.0)])]));
    }
    all
}

/// A sender whose clock is ahead of the receiver's (accepted up to 10 min): evaluations
/// happen at the receiver-capped clock, and the windows keep what those need.
#[test]
fn a_sender_ahead_of_the_receiver_clock_still_trips() {
    assert!(!skewed(0).is_empty());
    let v = skewed(120_000);
    assert!(
        !v.is_empty(),
        "rate() over a sender 2 min ahead returns nothing"
    );
}

/// Ingest accepts any past time: a sample near `i64::MIN` schedules no step (it used to
/// overflow the step arithmetic), and the rule evaluates normally at the next sample.
#[test]
fn an_extreme_past_timestamp_gives_no_step_and_the_rule_goes_on() {
    let seasonal = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: m\n  detection: {algorithm: seasonal, window: 1d}\n  remediation: {type: alert}\n";
    for yaml in [rule("rate(m[1m])", "> 0.5"), seasonal.to_owned()] {
        let mut ev = evaluator(&yaml);
        let now = 1_700_000_000_000;
        assert!(feed(&mut ev, now, vec![m(&[(i64::MIN + 1, 1.0)])]).is_empty());
        assert!(feed(&mut ev, now, vec![m(&[(now - 10_000, 1.0)])]).is_empty());
        // Both steps (15 s and 1 min) put the first evaluation at the same boundary.
        let at = ev.snapshot()[0].values.as_ref().and_then(|v| v.at_ms);
        assert_eq!(at, Some(1_699_999_980_000), "{yaml}");
    }
}

/// A rule whose inputs all go silent is still evaluated as event time moves on (other
/// rules' samples), so a tripped series clears once its range has emptied, as
/// Prometheus resolves it.
#[test]
fn a_tripped_expression_clears_when_its_inputs_go_silent() {
    let yaml = format!(
        "{}---\n{}",
        rule("rate(m[1m])", "> 0.5"),
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: other, namespace: shop}\nspec:\n  metric: 'other'\n  threshold: '> 1e9'\n  remediation: {type: alert}\n"
    );
    let mut ev = evaluator(&yaml);
    let base = 9_000_000_000;
    let mut all = Vec::new();
    for i in 0..10i64 {
        let t = base + i * 15_000;
        all.extend(feed(&mut ev, t, vec![m(&[(t, i as f64 * 15.0)])]));
    }
    let stale = f64::from_bits(prophet::ingest::STALE_NAN_BITS);
    let t = base + 10 * 15_000;
    all.extend(feed(&mut ev, t, vec![m(&[(t, stale)])]));
    // Other traffic keeps flowing for 20 minutes.
    for i in 11..90i64 {
        let t = base + i * 15_000;
        all.extend(feed(
            &mut ev,
            t,
            vec![series(&[("__name__", "other")], &[(t, 1.0)])],
        ));
    }
    assert!(
        all.iter().any(|(c, _, _)| c == "cleared"),
        "never cleared: {all:?}"
    );
}

/// After a gap in evaluations (inputs silent, or a restart with --state-dir), a z-score
/// history holds only the values seen: carried over the gap it would look flat, and any
/// ordinary value would be "anomalous".
#[test]
fn a_gap_does_not_make_a_zscore_band_flat() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: 'm * 1'\n  detection: {algorithm: zscore, sensitivity: 3, window: 10m, minSamples: 5}\n  remediation: {type: alert}\n";
    let mut ev = evaluator(yaml);
    let base = 9_000_000_000;
    let mut all = Vec::new();
    let value = |i: i64| if i % 2 == 0 { 10.0 } else { 12.0 };
    for i in 0..80i64 {
        let t = base + i * 15_000;
        all.extend(feed(&mut ev, t, vec![m(&[(t, value(i))])]));
    }
    assert!(all.is_empty(), "{all:?}");
    // 30 minutes of silence, then the same alternating values.
    for i in 200..210i64 {
        let t = base + i * 15_000;
        all.extend(feed(&mut ev, t, vec![m(&[(t, value(i))])]));
    }
    assert!(
        all.is_empty(),
        "ordinary values tripped after a gap: {all:?}"
    );
}

/// Switching detection from zscore (15 s step) to seasonal (1 min step) changes the
/// rule's step: its saved state is not restored, so evaluations stay on the 1 min grid
/// and 15 s history is never taken for 1 min history.
#[test]
fn restore_after_a_step_change_stays_on_the_grid() {
    let rule_with = |algo: &str| {
        format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: 'm * 1'\n  detection: {{algorithm: {algo}, window: 1d}}\n  remediation: {{type: alert}}\n"
        )
    };
    let base = 9_000_000_000; // on the 1 min grid
    assert_eq!(base % 60_000, 0);
    let mut ev = evaluator(&rule_with("zscore"));
    for i in 0..8i64 {
        let t = base + i * 15_000;
        feed(&mut ev, t, vec![m(&[(t, 1.0)])]);
    }
    // last evaluated step: base + 105_000 (45 s past a minute)
    let saved = ev.export();
    let mut ev2 = evaluator(&rule_with("seasonal"));
    let report = ev2.restore(saved, 1, i64::MAX);
    let mut at = Vec::new();
    for i in 8..20i64 {
        let t = base + i * 15_000;
        feed(&mut ev2, t, vec![m(&[(t, 1.0)])]);
        if let Some(a) = ev2.snapshot()[0].values.as_ref().and_then(|v| v.at_ms) {
            at.push(a - base);
        }
    }
    at.dedup();
    assert!(
        at.iter().all(|t| t % 60_000 == 0),
        "{at:?} after {report:?}"
    );
}

/// The band an expression result is judged against is the band of the values the
/// expression returned for that series at the steps before, within the band's window:
/// checked at every step against a plain recount (a sort), through noise, a spike, a
/// series that vanishes past the lookback and comes back with a fresh history, and a
/// restore into a new evaluator.
#[test]
fn an_expression_band_is_the_band_of_the_values_it_returned() {
    fn recount(values: &[f64], algorithm: &str) -> Option<(f64, f64)> {
        if values.len() < 4 {
            return None;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        let n = values.len() as f64;
        let (center, spread) = if algorithm == "zscore" {
            let mean = values.iter().sum::<f64>() / n;
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean, variance.sqrt())
        } else {
            let center = median(&mut values.to_vec());
            let mut deviations: Vec<f64> = values.iter().map(|v| (v - center).abs()).collect();
            let mad = median(&mut deviations);
            if mad > 0.0 {
                (center, mad * 1.4826)
            } else {
                // More than half the history equal: the mean deviation, scaled to σ.
                let mean = deviations.iter().sum::<f64>() / n;
                (center, mean * (std::f64::consts::PI / 2.0).sqrt())
            }
        };
        Some((center - 3.0 * spread, center + 3.0 * spread))
    }
    for algorithm in ["zscore", "mad"] {
        let yaml = format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: 'm * 1'\n  detection: {{algorithm: {algorithm}, sensitivity: 3, window: 3m, minSamples: 4, clearAfter: 0s}}\n  remediation: {{type: alert}}\n"
        );
        let mut ev = evaluator(&yaml);
        let base = 9_000_000_000;
        let mut seed = 7u64;
        let mut noise = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        // Per pod, the (time, value) the expression returned since the series last
        // (re)appeared.
        let mut returned: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
        let mut checked = 0;
        for i in 0..160i64 {
            if i == 80 {
                let saved = ev.export();
                ev = evaluator(&yaml);
                ev.restore(saved, 1, i64::MAX);
            }
            let t = base + i * 15_000;
            let a = 1e6 + 50.0 * noise() + if i == 60 { 900.0 } else { 0.0 };
            let mut batch = vec![series(&[("__name__", "m"), ("pod", "a")], &[(t, a)])];
            // Pod b is silent for 8 minutes: past the 5 minute lookback it is no longer
            // returned, and its history starts again when it comes back.
            if !(40..72).contains(&i) {
                let b = 20.0 * noise() + (i % 7) as f64;
                batch.push(series(&[("__name__", "m"), ("pod", "b")], &[(t, b)]));
            }
            feed(&mut ev, t, batch);
            // While pod b falls silent, the step waits for it until the settle delay runs
            // out on the receiver's clock; from then on b is quiet and waited for no more.
            ev.tick(t + ev.settle_delay_ms());
            let snapshot = ev.snapshot();
            let state = snapshot[0].values.as_ref().expect("an expression rule");
            assert_eq!(state.at_ms, Some(t));
            let seen: Vec<String> = state
                .results
                .iter()
                .map(|r| r.series.get("pod").unwrap().to_owned())
                .collect();
            returned.retain(|pod, _| seen.contains(pod));
            for result in &state.results {
                let pod = result.series.get("pod").unwrap().to_owned();
                let history = returned.entry(pod.clone()).or_default();
                let before: Vec<f64> = history
                    .iter()
                    .filter(|(at, _)| *at >= t - 180_000)
                    .map(|(_, v)| *v)
                    .collect();
                let shown = result.band.map(|b| (b.lower, b.upper));
                match (recount(&before, algorithm), shown) {
                    (None, None) => {}
                    (Some(want), Some(got)) => {
                        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
                        assert!(
                            close(want.0, got.0) && close(want.1, got.1),
                            "{algorithm} {pod} at step {i}: {got:?}, recounted {want:?}"
                        );
                        checked += 1;
                    }
                    (want, got) => {
                        panic!("{algorithm} {pod} at step {i}: {got:?}, recounted {want:?}")
                    }
                }
                history.push((t, result.value));
            }
        }
        assert!(checked > 200, "{algorithm}: only {checked} bands checked");
        assert!(
            returned.contains_key("b"),
            "{algorithm}: pod b never came back"
        );
    }
}

/// Issue 14: a seasonal band with `window: 2d` must come once the series has two days
/// of history, whether it is scraped every minute or every 5 minutes (it came on
/// 1-minute data only: the history looked one step short of two seasons at refit).
#[test]
fn a_two_day_seasonal_band_comes_on_five_minute_data_too() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: m\n  detection: {algorithm: seasonal, window: 2d, minSamples: 100}\n  remediation: {type: alert}\n";
    for (scrape_min, offset_ms) in [
        (1i64, 7_000i64),
        (5, 7_000),
        (5, 0),
        (5, 53_000),
        (5, 59_999),
    ] {
        let mut ev = evaluator(yaml);
        let base = 1_700_000_040_000i64; // on a minute boundary
        let mut banded_at = None;
        let total = (2 * 1440 + 180) / scrape_min;
        for i in 0..total {
            let t = base + i * scrape_min * 60_000 + offset_ms;
            let minute = (i * scrape_min) as f64;
            let v = 100.0
                + 20.0 * (std::f64::consts::TAU * minute / 1440.0).sin()
                + ((i * 7919) % 13) as f64 * 0.1;
            feed(&mut ev, t, vec![m(&[(t, v)])]);
            let snapshot = ev.snapshot();
            let has_band = snapshot[0]
                .values
                .as_ref()
                .and_then(|v| v.results.first())
                .is_some_and(|r| r.band.is_some());
            if has_band && banded_at.is_none() {
                banded_at = Some(i * scrape_min);
            }
        }
        let why = result_of(&ev, "a").and_then(|r| r.band_missing);
        let at = banded_at.unwrap_or_else(|| {
            panic!("no band on {scrape_min}-minute data, offset {offset_ms}: {why:?}")
        });
        // Two days of one-minute steps, and the first refit (hourly) after them.
        assert!(
            (2 * 1440..=2 * 1440 + 61).contains(&at),
            "{scrape_min}-minute data: first band at minute {at}"
        );
    }
}

/// The seasonal rule of the gap tests: a band over 12h of an hourly pattern (the
/// periodogram's season), or `window` of a daily one.
fn seasonal_rule(window: &str) -> String {
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: m\n  detection: {{algorithm: seasonal, window: {window}, minSamples: 100, clearAfter: 0s}}\n  remediation: {{type: alert}}\n"
    )
}

/// Pod `a`'s result in the rule's latest evaluation.
fn result_of(ev: &Evaluator, pod: &str) -> Option<prophet::eval::ResultValue> {
    ev.snapshot()[0]
        .values
        .as_ref()?
        .results
        .iter()
        .find(|r| r.series.get("pod") == Some(pod))
        .cloned()
}

/// Issue 14: one missed scrape (a 10-minute gap, longer than the 5m lookback) forgot a
/// seasonal band's days of history, so the band disappeared and a 25σ spike two hours
/// later was not flagged. The history is kept across the gap.
#[test]
fn a_missed_scrape_keeps_the_seasonal_history() {
    let mut ev = evaluator(&seasonal_rule("12h"));
    let base = 1_700_000_040_000i64;
    let value = |minute: i64| {
        10.0 * (std::f64::consts::TAU * minute as f64 / 60.0).sin()
            + ((minute * 7919) % 13) as f64 * 0.1
    };
    let spike = 13 * 60 + 10 + 120;
    let mut trips = Vec::new();
    for minute in 0..=spike + 1 {
        // Scrapes missed from 13:00 to 13:10.
        if (13 * 60..13 * 60 + 10).contains(&minute) {
            continue;
        }
        let t = base + minute * 60_000;
        let v = value(minute) + if minute == spike { 10.0 } else { 0.0 };
        for (change, at, _) in feed(&mut ev, t, vec![m(&[(t, v)])]) {
            trips.push((change, (at - base) / 60_000));
        }
        if minute == 50 {
            // Cold start, and the rules endpoint says so.
            let early = result_of(&ev, "a").expect("pod a returned");
            assert!(early.band.is_none());
            let why = early.band_missing.expect("a reason for the missing band");
            assert!(why.contains("cold start"), "{why}");
        }
    }
    assert!(
        trips.contains(&("tripped".to_owned(), spike)),
        "the spike after the gap was not flagged: {trips:?}"
    );
}

/// Issue 14: a series scraped every 30 minutes (longer than the 5m lookback) never got
/// a seasonal band: between its samples, with other series moving the rule's clock, it
/// was dropped with its history each time.
#[test]
fn a_series_scraped_every_half_hour_gets_a_seasonal_band() {
    let mut ev = evaluator(&seasonal_rule("3d"));
    let base = 1_700_000_040_000i64;
    let daily = |minute: i64| {
        100.0
            + 20.0 * (std::f64::consts::TAU * minute as f64 / 1440.0).sin()
            + ((minute * 7919) % 13) as f64 * 0.05
    };
    let mut banded = None;
    for minute in 0..(3 * 1440 + 120) {
        let t = base + minute * 60_000;
        // Pod b every minute keeps the rule's clock moving; pod a every 30 minutes.
        let mut batch = vec![series(&[("__name__", "m"), ("pod", "b")], &[(t, 1.0)])];
        if minute % 30 == 0 {
            batch.push(series(
                &[("__name__", "m"), ("pod", "a")],
                &[(t, daily(minute))],
            ));
        }
        feed(&mut ev, t, batch);
        if banded.is_none()
            && minute % 30 == 0
            && result_of(&ev, "a").is_some_and(|r| r.band.is_some())
        {
            banded = Some(minute);
        }
    }
    let at = banded.expect("pod a never got a band");
    assert!(at <= 2 * 1440 + 90, "first band at minute {at}");
}

/// The default detector on an expression rule: judged at every 15 s step with state of
/// its own per result series; quiet through a noisy daily pattern once it has learnt it,
/// and trips once, within a minute, when the level shifts.
#[test]
fn the_default_detector_judges_an_expressions_results() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: 'm * 1'\n  detection: {}\n  remediation: {type: alert}\n";
    let mut ev = evaluator(yaml);
    let base = 1_700_000_040_000i64;
    let shift = 3 * 1440 + 100;
    let mut changes = Vec::new();
    for minute in 0..shift + 30 {
        let t = base + minute * 60_000;
        let v = 100.0
            + 20.0 * (std::f64::consts::TAU * minute as f64 / 1440.0).sin()
            + ((minute * 7919) % 13) as f64 * 0.1
            + if minute >= shift { 15.0 } else { 0.0 };
        for (change, at, _) in feed(&mut ev, t, vec![m(&[(t, v)])]) {
            changes.push((change, (at - base) / 60_000));
        }
    }
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].0, "tripped");
    assert!((shift..=shift + 1).contains(&changes[0].1), "{changes:?}");
}

/// The rules endpoint shows a default-detector rule's band: none in its first two days
/// (warm-up), then the band its latest value was judged against, around that value.
#[test]
fn the_rules_endpoint_shows_the_default_detectors_band() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: m\n  detection: {}\n  remediation: {type: alert}\n";
    let mut ev = evaluator(yaml);
    let base = 1_700_000_040_000i64;
    for i in 0..(3 * 288) {
        let t = base + i * 300_000;
        let v = 50.0 + ((i * 7919) % 13) as f64 * 0.1;
        feed(&mut ev, t, vec![m(&[(t, v)])]);
        let shown = result_of(&ev, "a").expect("pod a shown");
        if i < 2 * 288 {
            assert!(shown.band.is_none(), "a band in warm-up at {i}");
        } else {
            let band = shown.band.expect("a band after warm-up");
            assert!(
                !band.excludes(v) && band.lower < v && v < band.upper,
                "{band:?}"
            );
        }
    }
}
