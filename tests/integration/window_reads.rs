//! Expressions and bands read windows through narrow paths (series kept in label order,
//! the newest sample of an instant selector, ranges searched from the newest sample, a
//! z-score's running moments): these check them against plain recounts of the same
//! samples.

use crate::common;

use common::*;
use prophet::eval::WindowSource;
use prophet::eval::promql::{EvalOptions, MemorySource, evaluate};
use prophet::ingest::{STALE_NAN_BITS, Sample};
use prophet::labels::Labels;
use prophet::route::Selector;
use prophet::window::{SelectorWindows, WindowSpec};

/// The engine over windows (ordered, select_latest, samples_between) gives what it gives
/// over a MemorySource of the same samples (sorted by the engine, default select_latest),
/// stale markers and samples exactly on range and lookback edges included.
#[test]
fn window_source_agrees_with_memory_source() {
    let spec = WindowSpec {
        retention_ms: 3_600_000,
        idle_ms: i64::MAX / 4,
        series_limit: 1000,
        reclaim_ms: i64::MAX,
        label_bytes_limit: usize::MAX,
    };
    let mut windows = SelectorWindows::new(spec);
    let mut memory = MemorySource::default();
    let stale = f64::from_bits(STALE_NAN_BITS);
    let pods = ["b", "a", "A", "", "é", "a-b", "Z", "zz"];
    let mut seed = 5u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for (i, pod) in pods.iter().enumerate() {
        for name in ["m", "n"] {
            let labels = Labels::from_pairs([("__name__", name), ("pod", pod), ("Up", "x")]);
            let id = windows
                .get_or_insert(labels.hash_with_seed(1) ^ i as u64, labels.as_canonical())
                .unwrap();
            let mut samples = Vec::new();
            let mut t = 0;
            while t < 1_200_000 {
                t += 15_000 * (1 + (rnd() % 3) as i64);
                let value = match rnd() % 7 {
                    0 => stale,
                    1 => 5.0,
                    _ => (rnd() % 10) as f64,
                };
                let s = Sample {
                    timestamp_ms: t,
                    value,
                };
                windows.insert(id, s, 10_000_000);
                samples.push(s);
            }
            memory.push(labels, samples);
        }
    }
    let selector = |text: &str| match promql_parser::parser::parse(text).unwrap() {
        promql_parser::parser::Expr::VectorSelector(vs) => Selector::from_promql(&vs),
        _ => unreachable!(),
    };
    let sel = selector(r#"{__name__=~"m|n"}"#);
    let exprs = [
        r#"{__name__=~"m|n"}"#,
        r#"topk(3, {__name__=~"m|n"})"#,
        r#"bottomk(2, {__name__=~"m|n"}) by (__name__)"#,
        r#"sum by (Up) ({__name__=~"m|n"})"#,
        r#"rate({__name__=~"m|n"}[1m])"#,
        r#"count_over_time({__name__=~"m|n"}[45s])"#,
        r#"last_over_time({__name__=~"m|n"}[30s] offset 15s)"#,
        r#"{__name__=~"m|n"} - ignoring(Up) {__name__=~"m|n"}"#,
        r#"max by (pod) ({__name__=~"m|n"}) / on(pod) group_right sum without (Up) ({__name__=~"m|n"})"#,
        r#"-{__name__=~"m|n"}"#,
    ];
    let opts = EvalOptions {
        lookback_ms: 60_000,
        ..EvalOptions::default()
    };
    for expr in exprs {
        let parsed = promql_parser::parser::parse(expr).unwrap();
        // Every millisecond around every 15 s boundary: edges of every range.
        for base in (0..1_300_000).step_by(15_000) {
            for at in [base - 1, base, base + 1] {
                let source = WindowSource::new(vec![(&sel, &windows)]);
                let from_windows = format!("{:?}", evaluate(&parsed, at, &source, &opts));
                let from_memory = format!("{:?}", evaluate(&parsed, at, &memory, &opts));
                assert_eq!(from_windows, from_memory, "{expr} at {at}");
            }
        }
    }
}

/// The same through what a receiver's windows go through: short retention, so ring
/// buffers wrap under the ranges read; series that go quiet, are evicted and come back;
/// and restores from saved windows (exported in reverse order). The memory source is built
/// from the windows' own contents at every check, so only the reading paths differ.
#[test]
fn window_source_agrees_through_wrapped_buffers_evictions_and_restores() {
    let spec = WindowSpec {
        retention_ms: 60_000,
        idle_ms: 90_000,
        series_limit: 1000,
        reclaim_ms: i64::MAX,
        label_bytes_limit: usize::MAX,
    };
    let mut windows = SelectorWindows::new(spec);
    let stale = f64::from_bits(STALE_NAN_BITS);
    let sets: Vec<Labels> = [
        &[("pod", "b")][..],
        &[("pod", "a")],
        &[("pod", "a-b")],
        &[("pod", "")],
        &[("pod", "é")],
        &[("pod", "A"), ("z", "1")],
        &[("pod", "A")],
        &[("Pod", "A")],
        &[],
    ]
    .iter()
    .flat_map(|pairs| {
        ["m", "n"].map(|name| Labels::from_pairs(pairs.iter().copied().chain([("__name__", name)])))
    })
    .collect();
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let s = r#"{__name__=~"m|n"}"#;
    let sel = match promql_parser::parser::parse(s).unwrap() {
        promql_parser::parser::Expr::VectorSelector(vs) => Selector::from_promql(&vs),
        _ => unreachable!(),
    };
    let exprs: Vec<String> = [
        "{s}[30s]",
        "{s}[1m] offset 7s",
        "rate({s}[1m])",
        "increase({s}[45s])",
        "delta({s}[20s])",
        "irate({s}[1m])",
        "resets({s}[1m])",
        "changes({s}[1m])",
        "avg_over_time({s}[1m])",
        "min_over_time({s}[5s])",
        "stddev_over_time({s}[1m])",
        "quantile_over_time(0.3, {s}[1m])",
        "last_over_time({s}[1m] offset -3s)",
        "topk(3, count_over_time({s}[1m]))",
        "sum by (pod) (rate({s}[1m]))",
    ]
    .iter()
    .map(|e| e.replace("{s}", s))
    .collect();
    let parsed: Vec<_> = exprs
        .iter()
        .map(|e| promql_parser::parser::parse(e).unwrap())
        .collect();
    let opts = EvalOptions {
        lookback_ms: 60_000,
        ..EvalOptions::default()
    };
    let mut quiet_until = vec![0i64; sets.len()];
    let (mut wrapped, mut evicted, mut restores) = (0, 0, 0);
    let mut t = 0i64;
    while t < 1_500_000 {
        t += 1_000;
        for (i, labels) in sets.iter().enumerate() {
            if t < quiet_until[i] || rnd() % 4 == 0 {
                continue;
            }
            if rnd() % 300 == 0 {
                quiet_until[i] = t + 100_000 + (rnd() % 100_000) as i64;
                continue;
            }
            let value = match rnd() % 9 {
                0 => stale,
                1 => f64::NAN,
                2 => 0.0,
                _ => (rnd() % 100) as f64,
            };
            let id = windows
                .get_or_insert(labels.hash_with_seed(1), labels.as_canonical())
                .unwrap();
            windows.insert(
                id,
                Sample {
                    timestamp_ms: t,
                    value,
                },
                t,
            );
        }
        evicted += windows.evict_idle().len();
        if t % 250_000 == 0 {
            let mut exported = windows.export();
            exported.reverse();
            windows = SelectorWindows::new(spec);
            windows.import(exported, 1, t);
            restores += 1;
        }
        if t % 3_000 != 0 {
            continue;
        }
        let memory = MemorySource::new(
            windows
                .export()
                .into_iter()
                .map(|e| prophet::eval::promql::SeriesSamples {
                    labels: e.labels,
                    samples: e.samples,
                })
                .collect(),
        );
        wrapped += windows
            .iter_ordered()
            .filter(|(_, w)| !w.slices_between(t - 61_000, t).1.is_empty())
            .count();
        let source = WindowSource::new(vec![(&sel, &windows)]);
        for (expr, parsed) in exprs.iter().zip(&parsed) {
            for at in [t - 60_000, t - 1, t, t + 1_500] {
                let from_windows = format!("{:?}", evaluate(parsed, at, &source, &opts));
                let from_memory = format!("{:?}", evaluate(parsed, at, &memory, &opts));
                assert_eq!(from_windows, from_memory, "{expr} at {at}");
            }
        }
    }
    // The paths this test is for were taken.
    assert!(wrapped > 100, "{wrapped} wrapped reads");
    assert!(evicted > 10, "{evicted} evictions");
    assert_eq!(restores, 6);
}

/// A band's history is `[history_from, t)`, even where `history_from` saturates at
/// i64::MIN: a sample at exactly that time is history (a z-score and a MAD band alike).
#[test]
fn band_history_keeps_a_sample_at_i64_min() {
    for algorithm in ["zscore", "mad"] {
        band_history_at_i64_min(algorithm);
    }
}

fn band_history_at_i64_min(algorithm: &str) {
    let yaml = &band_rule("band", "queue_depth", algorithm, "10m", 2, "");
    let mut evaluator = evaluator(yaml);
    let labels = [
        ("__name__", "queue_depth"),
        ("namespace", "default"),
        ("pod", "p"),
    ];
    let body = v1_body(vec![series(
        &labels,
        &[
            (i64::MIN, 100.0),
            (i64::MIN + 1, 101.0),
            (i64::MIN + 2, 1000.0),
        ],
    )]);
    let got = decisions(&mut evaluator, &[body], 0);
    // Same history shifted to ordinary times trips at the third sample.
    let mut reference = common::evaluator(yaml);
    let t0 = 1_000_000_000;
    let shifted = v1_body(vec![series(
        &labels,
        &[(t0, 100.0), (t0 + 1, 101.0), (t0 + 2, 1000.0)],
    )]);
    let want = decisions(&mut reference, &[shifted], t0 + 10);
    assert_eq!(want.len(), 1, "{algorithm}: {want:?}");
    assert_eq!(
        got.len(),
        want.len(),
        "{algorithm} at i64::MIN: {got:?}; shifted: {want:?}"
    );
}

// A z-score band's running sums against a recount, one sample per batch received at its
// own time, so the history of the sample at t is the finite values timed in
// [t - window, t): values far out entering and leaving the history must not leave the
// sums imprecise (checked by helper-12's review).

/// The decisions (change, sample time) of a z-score band recounted from the samples
/// themselves, with `for` 0: trips when the value leaves the band, clears when it is back.
fn recounted(samples: &[(i64, f64)], window_ms: i64, k: f64, min: usize) -> Vec<(String, i64)> {
    let mut tripped = false;
    let mut out = Vec::new();
    for (i, &(t, v)) in samples.iter().enumerate() {
        let history: Vec<f64> = samples[..i]
            .iter()
            .filter(|(s, x)| *s >= t - window_ms && x.is_finite())
            .map(|(_, x)| *x)
            .collect();
        let excluded = if history.len() >= min.max(2) {
            let n = history.len() as f64;
            let mean = history.iter().sum::<f64>() / n;
            let sd = (history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            v < mean - k * sd || v > mean + k * sd
        } else {
            false
        };
        if excluded && !tripped {
            tripped = true;
            out.push(("Tripped".to_owned(), t));
        } else if !excluded && tripped {
            tripped = false;
            out.push(("Cleared".to_owned(), t));
        }
    }
    out
}

/// A z-score band rule over `m`.
fn rule(window: &str, min: usize) -> String {
    band_rule("z", "m", "zscore", window, min, "")
}

/// The rule's decisions (change, time, reason), one sample per batch received at its time.
fn decide(yaml: &str, samples: &[(i64, f64)]) -> Vec<(String, i64, String)> {
    let mut ev = evaluator(yaml);
    let mut got = Vec::new();
    for &(t, v) in samples {
        let body = v1_body(vec![series(&[("__name__", "m")], &[(t, v)])]);
        for verdict in apply_v1(&mut ev, &body, t).verdicts {
            got.push((format!("{:?}", verdict.change), t, verdict.reason));
        }
    }
    got
}

fn check(yaml: &str, window_ms: i64, min: usize, samples: &[(i64, f64)]) {
    let got = decide(yaml, samples);
    let want = recounted(samples, window_ms, 3.0, min);
    let plain: Vec<(String, i64)> = got.iter().map(|(c, t, _)| (c.clone(), *t)).collect();
    if let Some(first) = (0..plain.len().max(want.len())).find(|&i| plain.get(i) != want.get(i)) {
        panic!(
            "{} decisions, {} recounted; first difference at {first}: got {:?}, recounted {:?}",
            plain.len(),
            want.len(),
            got.get(first),
            want.get(first)
        );
    }
}

/// A level change far larger than the noise (10 ± 1, then 1e8 ± 1 from sample 300 on),
/// and once the old level has left the 30m history, an outlier 2.5 above the new level.
#[test]
fn a_level_change_leaves_the_running_band_as_recounted() {
    let t0 = 1_700_000_000_000_i64;
    let mut noise = Noise(7);
    let samples: Vec<(i64, f64)> = (0..600)
        .map(|i| {
            let level = if i < 300 { 10.0 } else { 1e8 };
            let v = if i == 425 {
                1e8 + 2.5
            } else {
                level + noise.next()
            };
            (t0 + i * 15_000, v)
        })
        .collect();
    check(&rule("30m", 5), 1_800_000, 5, &samples);
}

/// Rare spikes of 1e7 on 10 ± 1, judged against a minute of history.
#[test]
fn a_spike_leaving_a_short_history_leaves_the_band_as_recounted() {
    let t0 = 1_700_000_000_000_i64;
    let mut noise = Noise(42);
    let samples: Vec<(i64, f64)> = (0..3_000)
        .map(|i| {
            let v = if i % 100 == 50 {
                1e7
            } else {
                10.0 + noise.next()
            };
            (t0 + i * 15_000, v)
        })
        .collect();
    check(&rule("1m", 2), 60_000, 2, &samples);
}

/// Values beyond 1e154 whose squared offsets overflow: the recount's σ is infinite (no
/// value is outside), the running σ² is inf − inf = NaN, which `max(0.0)` turns into 0.
#[test]
fn overflowing_squares_give_the_recounted_band() {
    let t0 = 1_700_000_000_000_i64;
    let samples: Vec<(i64, f64)> = (0..100)
        .map(|i| (t0 + i * 15_000, if i % 2 == 0 { 1e200 } else { -1e200 }))
        .collect();
    check(&rule("5m", 5), 300_000, 5, &samples);
}
