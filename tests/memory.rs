//! Memory held per retained series and per SLO, measured with a counting global allocator
//! (this test binary's own). Prints the figures (`cargo test --test memory -- --nocapture`)
//! and bounds them, so a change that bloats windows fails here.

mod common;

use std::sync::atomic::Ordering;

use common::counting::{Counting, LIVE};
use common::{apply_v1, evaluator, series, v1_body};
use prophet::eval::Evaluator;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Feeds `series` synthetic Kubernetes-shaped series (13 labels, ~426 bytes) once.
fn feed(evaluator: &mut Evaluator, series: usize) {
    let t = 1_700_000_000_000;
    let body = prophet::synth::compress(&prophet::synth::request_v1(series, t));
    apply_v1(evaluator, &body, i64::MAX);
}

/// One test: the count is of the whole process, so nothing else may run beside it.
#[test]
fn bytes_held() {
    bytes_per_retained_series_and_per_slo();
    bytes_per_series_of_a_band_rule_with_its_window_full();
    churned_series_leave_nothing_behind();
    huge_label_sets_are_held_within_the_label_byte_budget();
}

fn bytes_per_retained_series_and_per_slo() {
    // Every metric family: each series is retained by exactly one rule.
    let yaml: String = prophet::synth::METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r{i}}}\nspec:\n  metric: {m}\n  threshold: \"> 1e12\"\n  remediation: {{type: alert}}\n---\n"
            )
        })
        .collect();
    let mut rules = evaluator(&yaml);
    let series = 20_000;
    let before = LIVE.load(Ordering::Relaxed);
    feed(&mut rules, series);
    let per_series = (LIVE.load(Ordering::Relaxed) - before) / series;
    assert_eq!(rules.series_active(), series);
    println!("bytes per retained series (13 labels, 426 B of label text): {per_series}");
    assert!(per_series < 1024, "{per_series} bytes per series");

    let before = LIVE.load(Ordering::Relaxed);
    let slo = evaluator(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: SLOViolation\nmetadata: {name: s}\nspec:\n  sloName: s\n  sloTarget: \"99.9%\"\n  errorBudgetThreshold: 0.1\n  actions: [{type: alert}]\n  sli: {ratio: {errors: 'e_total', total: 't_total'}}\n",
    );
    let per_slo = LIVE.load(Ordering::Relaxed) - before;
    println!("bytes per 30-day SLO (rules, windows and rollups): {per_slo}");
    assert!(per_slo < 1_200_000, "{per_slo} bytes per SLO");
    drop(slo);
}

/// A band rule over an hour of 15 s samples: the window's samples, plus the running history
/// each algorithm keeps (a z-score's sums, a MAD's sorted values).
fn bytes_per_series_of_a_band_rule_with_its_window_full() {
    let series = 1_000;
    let t0 = 1_700_000_000_000;
    let bodies: Vec<Vec<u8>> = (0..240)
        .map(|k| prophet::synth::compress(&prophet::synth::request_v1(series, t0 + k * 15_000)))
        .collect();
    let metric = prophet::synth::METRICS[0];
    for algorithm in ["zscore", "mad"] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut rules = evaluator(&format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: b}}\nspec:\n  metric: {metric}\n  detection: {{algorithm: {algorithm}, window: 1h}}\n  remediation: {{type: alert}}\n"
        ));
        for body in &bodies {
            apply_v1(&mut rules, body, i64::MAX);
        }
        let kept = rules.series_active();
        assert_eq!(kept, series / prophet::synth::METRICS.len());
        let per_series = (LIVE.load(Ordering::Relaxed) - before) / kept;
        println!("bytes per series of a 1h {algorithm} band (240 samples): {per_series}");
        // 240 samples of 16 bytes in the window, and for a MAD 240 sorted values of 8.
        assert!(
            per_series < 8 * 1024,
            "{algorithm}: {per_series} bytes per series"
        );
        drop(rules);
    }
}

/// Pods that come, trip and go (a rollout every minute): once they are evicted, nothing of
/// them may stay. 396 000 such series once left ~0.33 KiB each behind (RSS 23 → 144 MiB).
fn churned_series_leave_nothing_behind() {
    const PER_GENERATION: usize = 500;
    let mut rules = evaluator(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: c}\nspec:\n  metric: container_memory_working_set_bytes\n  threshold: \"> 1Gi\"\n  detection: {algorithm: zscore, window: 5m}\n  remediation: {type: alert}\n",
    );
    let t0 = 1_700_000_000_000;
    let generation = |rules: &mut Evaluator, g: usize| {
        let pods: Vec<_> = (0..PER_GENERATION)
            .map(|i| {
                let pod = format!("checkout-{g}-{i}");
                let at = t0 + g as i64 * 60_000;
                series(
                    &[
                        ("__name__", "container_memory_working_set_bytes"),
                        ("namespace", "default"),
                        ("pod", &pod),
                    ],
                    &[(at, 1e6), (at + 15_000, 2e9), (at + 30_000, 3e9)],
                )
            })
            .collect();
        apply_v1(rules, &v1_body(pods), i64::MAX)
    };
    // Warm up past the 5-minute lookback, so that eviction keeps pace.
    for g in 0..20 {
        generation(&mut rules, g);
    }
    let before = LIVE.load(Ordering::Relaxed) as i64;
    let generations = 200;
    let mut tripped = 0;
    for g in 20..20 + generations {
        tripped += generation(&mut rules, g).verdicts.len();
    }
    let after = LIVE.load(Ordering::Relaxed) as i64;
    let churned = (generations * PER_GENERATION) as i64;
    assert!(tripped >= churned as usize, "every pod trips: {tripped}");
    let per_churned = (after - before) as f64 / churned as f64;
    println!("bytes left per churned series (100 000 tripped and gone): {per_churned:.2}");
    assert!(
        per_churned < 8.0,
        "{per_churned} bytes left per churned series"
    );
}

/// Series of 480 KiB of labels each (8 labels of 60 KiB: within the decoder's per-label
/// and per-series limits) once cost 1.27 MiB each, 12 GiB at the series limit; the
/// windows' label-byte budget (32 MiB per selector) now bounds what one rule holds.
fn huge_label_sets_are_held_within_the_label_byte_budget() {
    let mut rules = evaluator(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: h}\nspec:\n  metric: wide\n  threshold: \"> 1\"\n  remediation: {type: alert}\n",
    );
    let filler = "x".repeat(60 << 10);
    let before = LIVE.load(Ordering::Relaxed);
    let t = 1_700_000_000_000;
    let mut dropped = 0;
    for request in 0..20 {
        let wide: Vec<_> = (0..10)
            .map(|i| {
                let id = format!("{request}-{i}");
                let mut labels = vec![("__name__", "wide"), ("id", id.as_str())];
                let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
                labels.extend(names.iter().map(|n| (*n, filler.as_str())));
                series(&labels, &[(t, 0.0)])
            })
            .collect();
        let outcome = apply_v1(&mut rules, &v1_body(wide), i64::MAX);
        dropped += outcome.over_limit.iter().map(|(_, n)| n).sum::<usize>();
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "bytes held for 200 series of 480 KiB of labels: {:.1} MiB ({} series kept, {dropped} samples refused)",
        held as f64 / (1 << 20) as f64,
        rules.series_active()
    );
    assert!(rules.series_active() < 70, "{}", rules.series_active());
    assert_eq!(rules.series_active() + dropped, 200);
    assert!(held < 40 << 20, "{held} bytes held");
}
