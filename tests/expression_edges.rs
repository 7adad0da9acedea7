//! Edge cases of expression rules, driving the Evaluator directly (found in review):
//! the oldest step a catch-up evaluates, senders whose clock runs ahead, sample times at
//! the edge of i64, inputs that fall silent, gaps in a z-score history, and a restore
//! after the rule's step changed.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use prophet::eval::Evaluator;
use prophet::ingest::{self, Limits, Protocol, SnappyBuffer};
use prophet::route::Batch;
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::load::parse_documents;

fn build(yaml: &str) -> Evaluator {
    let (rules, invalid) = parse_documents(yaml, Path::new("review"));
    assert!(invalid.is_empty(), "{invalid:?}");
    let compiled = rules
        .iter()
        .map(|r| compile(r, CompileOptions::default()).unwrap())
        .collect();
    Evaluator::new(compiled, 100_000)
}

/// Applies one batch; returns (change, sample time) of every verdict.
fn feed(
    ev: &mut Evaluator,
    now: i64,
    ts: Vec<prophet::proto::v1::TimeSeries>,
) -> Vec<(String, i64, Option<f64>)> {
    let router = ev.router(1);
    let body = v1_body(ts);
    let mut buffer = SnappyBuffer::new();
    let decoded = buffer.decompress(&body, 256 << 20).unwrap().to_vec();
    let mut batch = Batch::new(Instant::now(), now, usize::MAX);
    ingest::decode(Protocol::V1, &decoded, &Limits::default(), now, |s| {
        router.route(s, &mut batch)
    })
    .unwrap();
    ev.apply(&batch)
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

/// A batch carrying more than a step: the oldest step evaluated (the first boundary at
/// most a minute behind the clock) must still see its whole range in the windows.
#[test]
fn the_oldest_catch_up_step_sees_its_whole_range() {
    let mut ev = build(&rule("max_over_time(m[1m])", "> 50"));
    let now = 10_000_000_000;
    let base = 9_000_000_000; // a multiple of 15 s
    assert!(feed(&mut ev, now, vec![m(&[(base + 1_000_000, 0.0)])]).is_empty());
    // One sample a second up to base+1_229_999, a spike of 100 at base+1_110_001.
    let s: Vec<(i64, f64)> = (1_000_001..=1_229_001)
        .step_by(1000)
        .map(|t| (base + t, if t == 1_110_001 { 100.0 } else { 0.0 }))
        .collect();
    let v = feed(&mut ev, now, vec![m(&s)]);
    // The clock is at 1_229_001: steps from 1_170_000 on are evaluated. Prometheus's
    // max_over_time(m[1m]) at 1_170_000 covers [1_110_000, 1_170_000], spike included.
    assert_eq!(
        v.first().map(|(c, t, _)| (c.as_str(), *t)),
        Some(("tripped", base + 1_170_000)),
        "{v:?}"
    );
}

fn skewed(skew: i64) -> Vec<(String, i64, Option<f64>)> {
    let mut ev = build(&rule("rate(m[1m])", "> 0.5"));
    let base = 9_000_000_000;
    let mut all = Vec::new();
    for i in 0..40i64 {
        let t = base + i * 15_000;
        // the receiver's clock is `skew` behind the sender's
        all.extend(feed(&mut ev, t - skew, vec![m(&[(t, i as f64 * 15.0)])]));
    }
    all
}

/// A sender whose clock is ahead of the receiver's (accepted up to 10 min) has its
/// windows trimmed relative to its own newest sample, but evaluations happen at the
/// receiver-capped clock.
#[test]
fn a_sender_ahead_of_the_receiver_clock_still_trips() {
    let v0 = skewed(0);
    println!("no skew: {v0:?}");
    assert!(!v0.is_empty());
    let v = skewed(120_000);
    println!("2 min skew: {v:?}");
    assert!(
        !v.is_empty(),
        "rate() over a sender 2 min ahead returns nothing"
    );
}

#[test]
fn an_extreme_past_timestamp_gives_no_step_and_the_rule_goes_on() {
    let mut ev = build(&rule("rate(m[1m])", "> 0.5"));
    let v = feed(&mut ev, 1_700_000_000_000, vec![m(&[(i64::MIN + 1, 1.0)])]);
    println!("{v:?}");
    let v = feed(
        &mut ev,
        1_700_000_000_000,
        vec![m(&[(1_699_999_990_000, 1.0)])],
    );
    println!(
        "after: {v:?} {}",
        serde_json::to_string(
            &ev.snapshot()
                .iter()
                .map(|r| r.values.clone())
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
}

#[test]
fn an_extreme_past_timestamp_in_a_seasonal_rule_gives_no_step() {
    let mut ev = build(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: m\n  detection: {algorithm: seasonal, window: 1d}\n  remediation: {type: alert}\n",
    );
    let v = feed(&mut ev, 1_700_000_000_000, vec![m(&[(i64::MIN + 1, 1.0)])]);
    println!("{v:?}");
    let v = feed(
        &mut ev,
        1_700_000_000_000,
        vec![m(&[(1_699_999_990_000, 1.0)])],
    );
    println!(
        "after: {v:?} {}",
        serde_json::to_string(
            &ev.snapshot()
                .iter()
                .map(|r| r.values.clone())
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
}

/// A rule whose inputs all go silent is never evaluated again: a tripped series whose
/// range still held samples at the last evaluation stays tripped for ever, where
/// Prometheus resolves it once the range has emptied.
#[test]
fn a_tripped_expression_clears_when_its_inputs_go_silent() {
    let yaml = format!(
        "{}---\n{}",
        rule("rate(m[1m])", "> 0.5"),
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: other, namespace: shop}\nspec:\n  metric: 'other'\n  threshold: '> 1e9'\n  remediation: {type: alert}\n"
    );
    let mut ev = build(&yaml);
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
    println!("{all:?}");
    let snap = ev.snapshot();
    let r = snap.iter().find(|r| r.rule.name == "r").unwrap();
    println!(
        "tripped now: {:?}",
        r.tripped_series
            .iter()
            .map(|t| &t.series)
            .collect::<Vec<_>>()
    );
    assert!(
        all.iter().any(|(c, _, _)| c == "cleared"),
        "never cleared: {all:?}"
    );
}

/// After a gap in evaluations (inputs silent, or a restart with --state-dir), remember()
/// carries the last value over every missed step: a zscore/MAD band then sees a flat
/// history and any ordinary value is "anomalous".
#[test]
fn a_gap_does_not_make_a_zscore_band_flat() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: 'm * 1'\n  detection: {algorithm: zscore, sensitivity: 3, window: 10m, minSamples: 5}\n  remediation: {type: alert}\n";
    let mut ev = build(yaml);
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

/// Switching detection from zscore (15 s step) to seasonal (1 min step) keeps the
/// fingerprint, so last_ms (on the 15 s grid) is restored and every later evaluation is
/// off the 1 min grid; the 15 s history is also taken as 1 min history.
#[test]
fn restore_after_a_step_change_stays_on_the_grid() {
    let rule_with = |algo: &str| {
        format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: 'm * 1'\n  detection: {{algorithm: {algo}, window: 1d}}\n  remediation: {{type: alert}}\n"
        )
    };
    let base = 9_000_000_000; // on the 1 min grid
    assert_eq!(base % 60_000, 0);
    let mut ev = build(&rule_with("zscore"));
    for i in 0..8i64 {
        let t = base + i * 15_000;
        feed(&mut ev, t, vec![m(&[(t, 1.0)])]);
    }
    // last evaluated step: base + 105_000 (45 s past a minute)
    let saved = ev.export();
    let mut ev2 = build(&rule_with("seasonal"));
    let report = ev2.restore(saved, 1, i64::MAX);
    println!("{report:?}");
    let mut at = Vec::new();
    for i in 8..20i64 {
        let t = base + i * 15_000;
        feed(&mut ev2, t, vec![m(&[(t, 1.0)])]);
        if let Some(a) = ev2.snapshot()[0].values.as_ref().and_then(|v| v.at_ms) {
            at.push(a - base);
        }
    }
    at.dedup();
    println!(
        "evaluated at (offset in the minute): {:?}",
        at.iter().map(|t| t % 60_000).collect::<Vec<_>>()
    );
    assert!(at.iter().all(|t| t % 60_000 == 0), "{at:?}");
}
