//! Rules that read one selector share its windows (`eval::Store`). Each rule must still
//! decide exactly as it does when loaded alone: when another rule would keep the series
//! longer, would accept a later sample, or saved a longer history before a restart.

use crate::common;

use common::*;
use prophet::eval::EvaluatorState;

const LABELS_A: &[(&str, &str)] = &[
    ("__name__", "queue_depth"),
    ("namespace", "default"),
    ("pod", "worker-a"),
];
const LABELS_B: &[(&str, &str)] = &[
    ("__name__", "queue_depth"),
    ("namespace", "default"),
    ("pod", "worker-b"),
];

/// A threshold rule: retention 0, so its windows alone are idle after the 5m lookback.
fn above() -> String {
    threshold_rule("above", "queue_depth", "> 25", "")
}

/// A band rule on the same selector whose 30m window keeps series for 30m.
fn band() -> String {
    band_rule("band", "queue_depth", "zscore", "30m", 20, "")
}

fn of(decisions: &[Decision], rule: &str) -> Vec<Decision> {
    decisions.iter().filter(|d| d.0 == rule).cloned().collect()
}

/// The threshold rule's decisions on `bodies` when loaded alone, and beside the 30m band
/// rule.
fn above_alone_and_beside_a_band(bodies: &[Vec<u8>], now: i64) -> (Vec<Decision>, Vec<Decision>) {
    let alone = of(&decisions(&mut evaluator(&above()), bodies, now), "above");
    let together = of(
        &decisions(&mut evaluator(&(above() + &band())), bodies, now),
        "above",
    );
    (alone, together)
}

/// A series that trips the threshold rule and then stops reporting is cleared after the
/// 5m lookback, also beside a band rule that keeps the series for 30m.
#[test]
fn a_silent_series_is_cleared_after_the_readers_own_idle_time() {
    let now = now_ms();
    let t0 = now - 3_600_000;
    // worker-a trips once and goes silent; worker-b keeps the clock moving for 12m,
    // one request per minute.
    let mut bodies = vec![v1_body(vec![series(LABELS_A, &[(t0, 30.0)])])];
    for minute in 0..12 {
        let samples: Vec<(i64, f64)> = (1..=4)
            .map(|i| (t0 + minute * 60_000 + i * 15_000, 10.0))
            .collect();
        bodies.push(v1_body(vec![series(LABELS_B, &samples)]));
    }
    let (alone, together) = above_alone_and_beside_a_band(&bodies, now);
    assert!(
        alone.iter().any(|d| d.1 == "Cleared"),
        "alone, the silent series is evicted and cleared: {alone:?}"
    );
    assert_eq!(
        together, alone,
        "the threshold rule decides as it does alone"
    );
}

/// A late sample (a lagging remote-write shard) that the threshold rule alone refuses as
/// too old is refused beside a band rule that would still accept it.
#[test]
fn a_sample_too_old_for_a_reader_is_not_judged_by_it() {
    let now = now_ms();
    let t0 = now - 3_600_000;
    let samples: Vec<(i64, f64)> = (0..=28).map(|i| (t0 + i * 15_000, 10.0)).collect();
    let bodies = vec![
        // worker-b takes the clock to t0 + 7m.
        v1_body(vec![series(LABELS_B, &samples)]),
        // worker-a's only sample, from t0 + 1m: behind the clock by more than 5m.
        v1_body(vec![series(LABELS_A, &[(t0 + 60_000, 30.0)])]),
    ];
    let (alone, together) = above_alone_and_beside_a_band(&bodies, now);
    assert!(
        alone.is_empty(),
        "alone, the late sample is too old: {alone:?}"
    );
    assert_eq!(
        together, alone,
        "the threshold rule decides as it does alone"
    );
}

/// A state file from before windows were shared holds each rule's own windows: a
/// threshold rule's only the newest sample, a band rule's its history. Restored into one
/// shared window set, whatever the rules' order, the band keeps its history and trips on
/// an outlier as it does restored alone.
#[test]
fn restoring_a_shared_store_keeps_the_longest_saved_history() {
    let now = now_ms();
    let t0 = now - 3_600_000;
    let history: Vec<(i64, f64)> = (0..40)
        .map(|i| (t0 + i * 15_000, 10.0 + (i % 3) as f64))
        .collect();
    let body = v1_body(vec![series(LABELS_A, &history)]);
    // What the previous release saved: each rule's own windows.
    let saved = |yaml: &str| {
        let mut ev = evaluator(yaml);
        apply_v1(&mut ev, &body, now);
        ev.export().rules.remove(0)
    };
    // A 2m band shares the threshold rule's windows (both forget a series after 5m).
    let short_band = band_rule("band", "queue_depth", "zscore", "2m", 5, "");
    let state = EvaluatorState {
        rules: vec![saved(&above()), saved(&short_band)],
    };
    let outlier = v1_body(vec![series(LABELS_A, &[(t0 + 40 * 15_000, 100.0)])]);
    let decide = |yaml: &str| {
        let mut ev = evaluator(yaml);
        ev.restore(state.clone(), 1, now);
        of(
            &decisions(&mut ev, std::slice::from_ref(&outlier), now),
            "band",
        )
    };
    let alone = decide(&short_band);
    assert_eq!(alone.len(), 1, "restored alone, the band trips: {alone:?}");
    assert_eq!(decide(&(above() + &short_band)), alone);
    assert_eq!(decide(&(short_band.clone() + &above())), alone);
}

/// Rules on one selector (those that forget a series after the same time share its
/// windows: the 2m and 4m bands keep 4m for both), each judging only its own history:
/// every rule decides exactly as it does when loaded alone.
#[test]
fn rules_sharing_a_selector_decide_as_they_do_alone() {
    let rules = [
        band_rule("short", "queue_depth", "zscore", "2m", 5, ""),
        band_rule("medium", "queue_depth", "zscore", "4m", 5, ""),
        band_rule("long", "queue_depth", "zscore", "10m", 20, ""),
        band_rule("median", "queue_depth", "mad", "10m", 20, ""),
        threshold_rule("above", "queue_depth", "> 25", ""),
        threshold_rule("expression", "queue_depth * 2", "> 50", ""),
    ];
    let t0 = now_ms() - 3_600_000;
    let pods = ["worker-0", "worker-1", "worker-2"];
    let levels: Vec<Vec<f64>> = (0..pods.len() as u64)
        .map(|p| {
            noisy(200, 7 + p, |i| match i {
                60..=119 => 30.0,
                150 => 80.0,
                _ => 10.0,
            })
        })
        .collect();
    // Ten samples per pod per request, as a remote-write queue sends them.
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|batch| {
            let timeseries = pods
                .iter()
                .zip(&levels)
                .map(|(pod, values)| {
                    let samples: Vec<(i64, f64)> = (batch * 10..batch * 10 + 10)
                        .map(|i| (t0 + 15_000 * i as i64, values[i]))
                        .collect();
                    series(
                        &[
                            ("__name__", "queue_depth"),
                            ("namespace", "default"),
                            ("pod", pod),
                        ],
                        &samples,
                    )
                })
                .collect();
            v1_body(timeseries)
        })
        .collect();
    let decide = |yaml: &str| decisions(&mut evaluator(yaml), &bodies, now_ms());
    let together = decide(&rules.concat());
    for rule in &rules {
        let alone = decide(rule);
        let name = &alone.first().expect("every rule decides something").0;
        let shared: Vec<_> = together.iter().filter(|d| d.0 == *name).cloned().collect();
        assert_eq!(shared, alone, "{name}");
    }
    // The two z-score rules judge different histories.
    let changes = |name: &str| -> Vec<_> {
        of(&together, name)
            .into_iter()
            .map(|d| (d.1, d.2, d.3))
            .collect()
    };
    assert_ne!(changes("short"), changes("long"));
}
