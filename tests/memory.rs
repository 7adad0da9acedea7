//! Memory held per retained series and per SLO, measured with a counting global allocator
//! (this test binary's own). Prints the figures (`cargo test --test memory -- --nocapture`)
//! and bounds them, so a change that bloats windows fails here.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::counting::{Counting, LIVE};
use prophet::eval::Evaluator;
use prophet::ingest::{self, Limits, Protocol, SnappyBuffer};
use prophet::route::Batch;
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::load::parse_documents;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn build(yaml: &str) -> Evaluator {
    let (rules, invalid) = parse_documents(yaml, Path::new("memory"));
    assert!(invalid.is_empty(), "{invalid:?}");
    let compiled = rules
        .iter()
        .map(|r| compile(r, CompileOptions::default()).unwrap())
        .collect();
    Evaluator::new(compiled, 100_000)
}

/// Feeds `series` synthetic Kubernetes-shaped series (13 labels, ~426 bytes) once.
fn feed(evaluator: &mut Evaluator, series: usize) {
    let router = evaluator.router(1);
    let t = 1_700_000_000_000;
    let body = prophet::synth::compress(&prophet::synth::request_v1(series, t));
    let mut buffer = SnappyBuffer::new();
    let decoded = buffer.decompress(&body, 256 << 20).unwrap();
    let mut batch = Batch::new(Instant::now(), i64::MAX, usize::MAX);
    ingest::decode(Protocol::V1, decoded, &Limits::default(), i64::MAX, |s| {
        router.route(s, &mut batch)
    })
    .unwrap();
    evaluator.apply(&batch);
}

#[test]
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
    let mut evaluator = build(&yaml);
    let series = 20_000;
    let before = LIVE.load(Ordering::Relaxed);
    feed(&mut evaluator, series);
    let per_series = (LIVE.load(Ordering::Relaxed) - before) / series;
    assert_eq!(evaluator.series_active(), series);
    println!("bytes per retained series (13 labels, 426 B of label text): {per_series}");
    assert!(per_series < 1024, "{per_series} bytes per series");

    let before = LIVE.load(Ordering::Relaxed);
    let slo = build(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: SLOViolation\nmetadata: {name: s}\nspec:\n  sloName: s\n  sloTarget: \"99.9%\"\n  errorBudgetThreshold: 0.1\n  actions: [{type: alert}]\n  sli: {ratio: {errors: 'e_total', total: 't_total'}}\n",
    );
    let per_slo = LIVE.load(Ordering::Relaxed) - before;
    println!("bytes per 30-day SLO (rules, windows and rollups): {per_slo}");
    assert!(per_slo < 1_200_000, "{per_slo} bytes per SLO");
    drop(slo);
}
