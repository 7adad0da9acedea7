//! Evaluation cost per rule per step: one rule of each detector kind, alone in its
//! evaluator, over a realistic amount of data.
//!
//! A measured iteration is `Evaluator::apply` of one batch holding one scrape of the
//! rule's series, one step of event time after the previous scrape, so that it crosses
//! exactly one evaluation boundary of the rule. Batches are built untimed the way the
//! receiver builds them: a remote-write 1.0 body encoded from the prost types, decoded by
//! `ingest` and routed by the evaluator's router (not snappy: the transport's cost is in
//! `benches/ingest.rs`). The history a rule needs is fed the same way before measuring,
//! and each bench first checks through `Evaluator::snapshot()` (and `export()`) that its
//! rule does what the bench is named after.
//!
//! - `threshold/step`: a plain selector with a threshold over 100 series; one step is one
//!   sample per series (`Throughput::Elements` gives the cost per sample).
//! - `zscore/step`, `mad/step`: a z-score or MAD band over 1h (240 samples at 15 s) per
//!   series, 100 series.
//! - `expression/step`: `sum by (namespace, pod) (rate(x[5m]))` with threshold `> 5` over
//!   100 counters, windows full: one evaluation per 15 s step.
//! - `expression-mad/step`: `rate(x[5m])` of the same counters judged by a MAD band over
//!   its last day of results (5760 steps of 15 s) per series: one evaluation per step.
//! - `slo/step`: a 30-day SLOViolation over 10 error and 20 total counters whose rollups
//!   hold 30 days of per-minute counts: one per-minute evaluation (4 tiers and budget).
//! - `forecast/*`: a PredictiveScale over `sum(x)` of 100 series, 1h horizon, with 3 days
//!   of derived history at 1 min. It refits every 5th step (12 times per horizon):
//!   `refit-step` times only those steps, `mean-step` every step, and `fit-only` the
//!   `forecast::forecast` calls of 12 refits, in turn, on their 4320 points.
//!
//! Run: `cargo bench --bench eval`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::compile_all;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prophet::eval::forecast::{self, ForecastModel};
use prophet::eval::{DetectorState, Evaluator, RuleSnapshot, SeriesForecast};
use prophet::ingest::{self, Limits, Protocol};
use prophet::proto::v1;
use prophet::route::{Batch, Router};
use prophet::synth;
use prost::Message;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Midnight UTC on 2023-11-14, so that minutes and days start on their boundaries.
const T0_MS: i64 = 19_675 * DAY_MS;
const SCRAPE_MS: i64 = 15 * SECOND_MS;
const PODS: usize = 100;
/// Batches built ahead of each timed run of `apply`; bounds the memory they take.
const CHUNK: u64 = 256;
/// A PredictiveScale with a 1h horizon at a 1 min step refits every 60 / 12 steps.
const REFIT_EVERY_MS: i64 = 5 * MINUTE_MS;

/// Deterministic pseudo-noise in [-1, 1]: a SplitMix64 hash of `i`.
fn noise(i: u64) -> f64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Noise for series `i` at `at_ms`, different for every series and scrape.
fn jitter(i: usize, at_ms: i64) -> f64 {
    noise((at_ms / SECOND_MS) as u64 * 1_000 + i as u64)
}

/// Seconds since `T0_MS`.
fn seconds(at_ms: i64) -> f64 {
    (at_ms - T0_MS) as f64 / 1_000.0
}

/// Pod `pod`'s Kubernetes label set from `synth` (15 labels, pods spread over four
/// namespaces), with `overrides` set, sorted by name as Prometheus sends them.
fn series(pod: usize, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels = synth::series_labels(1, pod);
    for &(name, value) in overrides {
        labels.retain(|(n, _)| n != name);
        labels.push((name.to_owned(), value.to_owned()));
    }
    labels.sort();
    labels
}

/// One scrape target: its series, and the routed batch of one scrape of them.
struct Scrape {
    request: v1::WriteRequest,
    router: Router,
}

impl Scrape {
    fn new(series: Vec<Vec<(String, String)>>, router: Router) -> Self {
        let timeseries = series
            .into_iter()
            .map(|labels| v1::TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| v1::Label { name, value })
                    .collect(),
                samples: vec![v1::Sample::default()],
                ..Default::default()
            })
            .collect();
        Self {
            request: v1::WriteRequest {
                timeseries,
                metadata: Vec::new(),
            },
            router,
        }
    }

    /// The batch of a scrape at `at_ms` in which series `i` has the value `value(i)`.
    fn batch(&mut self, at_ms: i64, value: impl Fn(usize) -> f64) -> Batch {
        for (i, series) in self.request.timeseries.iter_mut().enumerate() {
            series.samples[0] = v1::Sample {
                value: value(i),
                timestamp: at_ms,
            };
        }
        let body = self.request.encode_to_vec();
        let mut batch = Batch::new(Instant::now(), at_ms, usize::MAX);
        ingest::decode(Protocol::V1, &body, &Limits::default(), at_ms, |s| {
            self.router.route(s, &mut batch)
        })
        .expect("a valid request");
        batch
    }
}

/// One rule's evaluator and its scrape target, scraped every `step_ms` of event time.
struct Run {
    evaluator: Evaluator,
    scrape: Scrape,
    /// The value of series `i` at a time.
    values: fn(usize, i64) -> f64,
    step_ms: i64,
    /// Event time of the latest scrape.
    clock_ms: i64,
}

impl Run {
    fn new(
        yaml: &str,
        series: Vec<Vec<(String, String)>>,
        values: fn(usize, i64) -> f64,
        step_ms: i64,
    ) -> Self {
        let rules = compile_all(yaml);
        assert_eq!(rules.len(), 1);
        let evaluator = Evaluator::new(rules, 10_000);
        let router = evaluator.router(7);
        Self {
            scrape: Scrape::new(series, router),
            evaluator,
            values,
            step_ms,
            clock_ms: T0_MS - step_ms,
        }
    }

    /// The batch of the next scrape.
    fn next_batch(&mut self) -> Batch {
        self.clock_ms += self.step_ms;
        let (at_ms, values) = (self.clock_ms, self.values);
        self.scrape.batch(at_ms, |i| values(i, at_ms))
    }

    /// Applies the next `steps` scrapes, untimed.
    fn feed(&mut self, steps: usize) {
        for _ in 0..steps {
            let batch = self.next_batch();
            self.evaluator.apply(&batch);
        }
    }

    fn snapshot(&self) -> RuleSnapshot {
        self.evaluator.snapshot().remove(0)
    }

    /// The time `apply` takes on the next `iters` scrapes, each batch built beforehand.
    fn time_steps(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            let batches: Vec<Batch> = (0..n).map(|_| self.next_batch()).collect();
            let start = Instant::now();
            for batch in &batches {
                black_box(self.evaluator.apply(batch));
            }
            total += start.elapsed();
            left -= n;
        }
        total
    }
}

fn memory_gauge(i: usize, at_ms: i64) -> f64 {
    // One pod in ten above the 2e9 threshold.
    let base = if i.is_multiple_of(10) {
        3e9
    } else {
        5e8 + 1e7 * i as f64
    };
    base + 1e6 * jitter(i, at_ms)
}

fn threshold() -> Run {
    let yaml = r#"apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: memory-high, namespace: shop}
spec:
  metric: container_memory_working_set_bytes{job="kubelet"}
  threshold: "> 2e9"
  remediation: {type: alert}
"#;
    let pods = (0..PODS).map(|p| series(p, &[])).collect();
    let mut run = Run::new(yaml, pods, memory_gauge, SCRAPE_MS);
    run.feed(4);
    let snapshot = run.snapshot();
    assert_eq!(snapshot.series, PODS);
    assert_eq!(snapshot.values.as_ref().unwrap().result_count, PODS);
    assert_eq!(snapshot.tripped_series.len(), PODS / 10);
    run
}

fn zscore() -> Run {
    band_run("zscore")
}

fn mad() -> Run {
    band_run("mad")
}

/// A band rule of `algorithm` over an hour of each series' samples, windows full.
fn band_run(algorithm: &str) -> Run {
    let yaml = &format!(
        r#"apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: memory-anomaly, namespace: shop}}
spec:
  metric: container_memory_working_set_bytes{{job="kubelet"}}
  detection: {{algorithm: {algorithm}, window: 1h}}
  remediation: {{type: alert}}
"#
    );
    // Uniform noise in ±a stays within √3 σ of its mean, and within 1.35 scaled MADs of its
    // median: no series leaves its band.
    let values = |i: usize, at_ms: i64| 5e8 + 1e7 * i as f64 + 1e6 * jitter(i, at_ms);
    let pods = (0..PODS).map(|p| series(p, &[])).collect();
    let mut run = Run::new(yaml, pods, values, SCRAPE_MS);
    run.feed((HOUR_MS / SCRAPE_MS) as usize + 4);
    let state = run.evaluator.export();
    let windows = &state.rules[0].inputs[0];
    assert_eq!(windows.len(), PODS);
    for window in windows {
        // The newest sample and the hour before it, the 240 its band is computed from.
        assert_eq!(window.samples.len(), 241, "an hour of samples at 15 s");
    }
    let snapshot = run.snapshot();
    let values = snapshot.values.unwrap();
    assert_eq!(values.result_count, PODS);
    for result in &values.results {
        let band = result.band.expect("a band from an hour of history");
        assert!(band.lower < band.center && band.center < band.upper);
    }
    assert!(snapshot.tripped_series.is_empty());
    run
}

fn expression() -> Run {
    let yaml = r#"apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: busy-pods, namespace: shop}
spec:
  metric: sum by (namespace, pod) (rate(http_requests_total{job="api"}[5m]))
  threshold: "> 5"
  remediation: {type: alert}
"#;
    // Counters rising at 6 to 7 per second: every pod is over the threshold.
    let values = |i: usize, at_ms: i64| (6.0 + i as f64 / PODS as f64) * seconds(at_ms);
    let pods = (0..PODS)
        .map(|p| series(p, &[("__name__", "http_requests_total"), ("job", "api")]))
        .collect();
    let mut run = Run::new(yaml, pods, values, SCRAPE_MS);
    // Five minutes fill the ranges; two more fill the catch-up the windows also keep.
    run.feed((7 * MINUTE_MS / SCRAPE_MS) as usize);
    let state = run.evaluator.export();
    let samples: usize = state.rules[0].inputs[0]
        .iter()
        .map(|w| w.samples.len())
        .sum();
    assert!(
        samples >= PODS * 20,
        "{samples} samples: the 5m ranges are full"
    );
    let before = run.snapshot();
    run.feed(1);
    let snapshot = run.snapshot();
    let values = snapshot.values.as_ref().unwrap();
    assert_eq!(values.at_ms, Some(run.clock_ms), "evaluated at this step");
    assert_ne!(values.at_ms, before.values.unwrap().at_ms);
    assert_eq!(values.result_count, PODS);
    assert!(values.error.is_none(), "{:?}", values.error);
    assert_eq!(snapshot.counters.tripped, PODS as u64);
    run
}

/// An expression judged by a band over a day of its results: the per-step cost of the
/// band's history, which a day makes long.
fn expression_mad() -> Run {
    let yaml = r#"apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: odd-rates, namespace: shop}
spec:
  metric: rate(http_requests_total{job="api"}[5m])
  detection: {algorithm: mad, window: 1d}
  remediation: {type: alert}
"#;
    // Counters whose rate wanders within ±5% around 6 to 7 per second: inside the band.
    let values = |i: usize, at_ms: i64| {
        (6.0 + i as f64 / PODS as f64) * seconds(at_ms) + 10.0 * jitter(i, at_ms)
    };
    let pods = (0..PODS)
        .map(|p| series(p, &[("__name__", "http_requests_total"), ("job", "api")]))
        .collect();
    let mut run = Run::new(yaml, pods, values, SCRAPE_MS);
    run.feed((DAY_MS / SCRAPE_MS) as usize + 4);
    let state = run.evaluator.export();
    let DetectorState::Expression(saved) = &state.rules[0].detector else {
        panic!("an expression detector");
    };
    assert_eq!(saved.results.len(), PODS);
    for result in &saved.results {
        assert!(
            result.history.len() >= (DAY_MS / SCRAPE_MS) as usize,
            "{} values: a day of results",
            result.history.len()
        );
    }
    run.feed(1);
    let snapshot = run.snapshot();
    let values = snapshot.values.as_ref().unwrap();
    assert_eq!(values.at_ms, Some(run.clock_ms), "evaluated at this step");
    assert_eq!(values.result_count, PODS);
    assert!(
        values.results.iter().all(|r| r.band.is_some()),
        "every result has its band"
    );
    assert_eq!(snapshot.counters.tripped, 0, "noise inside its band");
    run
}

/// Cumulative request counts of pod `i / 2`, code 200 (even `i`) or 500 (odd): 1000
/// requests a minute of which 0.5 fail, half of a 99.9% SLO's budget.
fn requests(i: usize, at_ms: i64) -> f64 {
    let per_minute = if i.is_multiple_of(2) { 999.5 } else { 0.5 };
    per_minute * seconds(at_ms) / 60.0
}

fn slo() -> Run {
    let yaml = r#"apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {name: api-availability, namespace: shop}
spec:
  sloName: api-availability
  sloTarget: "99.9%"
  errorBudgetThreshold: 0.1
  period: 30d
  sli:
    ratio:
      errors: http_requests_total{job="api", code=~"5.."}
      total: http_requests_total{job="api"}
"#;
    let series_set = (0..10)
        .flat_map(|p| ["200", "500"].map(|code| (p, code)))
        .map(|(p, code)| {
            series(
                p,
                &[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("code", code),
                ],
            )
        })
        .collect();
    let mut run = Run::new(yaml, series_set, requests, MINUTE_MS);
    // The first scrape is every counter's baseline; the next 30 days of minutes count.
    let started = Instant::now();
    run.feed(30 * 1440 + 1);
    eprintln!(
        "slo: fed 30 days of per-minute scrapes in {:.1?}",
        started.elapsed()
    );
    let state = run.evaluator.export();
    let DetectorState::Slo(slo) = &state.rules[0].detector else {
        panic!("an SLO detector");
    };
    let saved = serde_json::to_value(slo).unwrap();
    let buckets = saved["buckets"].as_array().unwrap().len();
    assert_eq!(buckets, 30 * 1440, "a bucket for every minute of 30 days");
    let snapshot = run.snapshot();
    assert_eq!(snapshot.series, 30, "10 error and 20 total series");
    let slo = snapshot.slo.unwrap();
    assert_eq!(slo.at_ms, run.clock_ms, "evaluated at this minute");
    assert_eq!(slo.tiers.len(), 4);
    for tier in &slo.tiers {
        assert!((tier.long_burn_rate - 0.5).abs() < 1e-3, "{tier:?}");
        assert!((tier.short_burn_rate - 0.5).abs() < 1e-3, "{tier:?}");
    }
    assert!(
        (slo.budget_remaining - 0.5).abs() < 1e-3,
        "{}",
        slo.budget_remaining
    );
    run
}

/// Pod memory with a daily cycle, whose sum a PredictiveScale forecasts.
fn daily_memory(i: usize, at_ms: i64) -> f64 {
    let day = (at_ms - T0_MS) as f64 / DAY_MS as f64;
    1e9 * (1.0 + 0.3 * (std::f64::consts::TAU * day).sin()) + 2e7 * jitter(i, at_ms)
}

/// A PredictiveScale with 3 days of derived history, at the step after a refit.
struct Forecasting {
    run: Run,
    /// The next step that refits.
    next_refit: i64,
    /// The histories of one horizon's refits, in turn.
    histories: Vec<Vec<f64>>,
}

/// Whether the rule's one forecast is sound, and that forecast.
fn latest(run: &Run) -> SeriesForecast {
    let state = run.snapshot().forecast.unwrap();
    assert!(state.error.is_none(), "{:?}", state.error);
    assert_eq!(state.forecasts.len(), 1);
    state.forecasts[0].clone()
}

fn forecasting() -> Forecasting {
    let yaml = r#"apiVersion: aiops.prophet.io/v1alpha1
kind: PredictiveScale
metadata: {name: general-pool, namespace: shop}
spec:
  forecastQuery: 'sum(container_memory_working_set_bytes{job="kubelet"})'
  nodePoolRef: {name: general}
  horizon: 1h
  thresholdPercent: 50
  action: provision
"#;
    let pods = (0..PODS).map(|p| series(p, &[])).collect();
    let mut run = Run::new(yaml, pods, daily_memory, MINUTE_MS);
    let started = Instant::now();
    run.feed(3 * 1440);
    eprintln!(
        "forecast: fed 3 days of per-minute scrapes (with their refits) in {:.1?}",
        started.elapsed()
    );
    let now = latest(&run);
    assert_eq!(now.history, 3 * 1440);
    // Find the refit cadence: a refit at a step, then none for four steps.
    let next_refit = now.forecast.unwrap().at_ms + REFIT_EVERY_MS;
    while run.clock_ms < next_refit {
        run.feed(1);
        let fitted_at = latest(&run).forecast.unwrap().at_ms;
        assert_eq!(fitted_at == run.clock_ms, run.clock_ms == next_refit);
    }
    // The histories of one horizon's 12 refits, each fitted alone to the same forecast
    // as the evaluator's: the cost of a fit varies with the data (about 10 to 40 ms).
    let mut histories = Vec::new();
    let mut refit = next_refit;
    for _ in 0..12 {
        refit += REFIT_EVERY_MS;
        run.feed(((refit - run.clock_ms) / MINUTE_MS) as usize);
        let now = latest(&run);
        let view = now.forecast.unwrap();
        assert_eq!(view.at_ms, run.clock_ms);
        assert_eq!((now.history, view.history), (3 * 1440, 3 * 1440));
        assert_eq!(view.model, ForecastModel::Seasonal { period_steps: 1440 });
        let state = run.evaluator.export();
        let DetectorState::Forecast(saved) = &state.rules[0].detector else {
            panic!("a forecast detector");
        };
        let history: Vec<f64> = saved.series[0]
            .values
            .iter()
            .map(|&bits| f64::from_bits(bits))
            .collect();
        let fit = forecast::forecast(&history, MINUTE_MS, HOUR_MS, 0.95).unwrap();
        assert_eq!((fit.value, fit.model), (view.value, view.model));
        histories.push(history);
    }
    Forecasting {
        run,
        next_refit: refit + REFIT_EVERY_MS,
        histories,
    }
}

/// Benches one step of the rule `setup` makes. The setup runs only if the bench does
/// (criterion skips the closure of a bench its filter leaves out).
fn bench_step(c: &mut Criterion, name: &str, per_sample: bool, setup: fn() -> Run) {
    let mut group = c.benchmark_group(name);
    if per_sample {
        group.throughput(Throughput::Elements(PODS as u64));
    }
    let mut run = None;
    group.bench_function("step", |b| {
        let run = run.get_or_insert_with(setup);
        b.iter_custom(|iters| run.time_steps(iters))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_step(c, "threshold", true, threshold);
    bench_step(c, "zscore", true, zscore);
    bench_step(c, "mad", true, mad);
    bench_step(c, "expression", false, expression);
    bench_step(c, "expression-mad", false, expression_mad);
    bench_step(c, "slo", false, slo);

    let mut group = c.benchmark_group("forecast");
    group.sample_size(20);
    let mut state: Option<Forecasting> = None;
    group.bench_function("refit-step", |b| {
        let Forecasting {
            run, next_refit, ..
        } = state.get_or_insert_with(forecasting);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run.feed(((*next_refit - run.clock_ms) / MINUTE_MS - 1) as usize);
                let batch = run.next_batch();
                let start = Instant::now();
                black_box(run.evaluator.apply(&batch));
                total += start.elapsed();
                *next_refit += REFIT_EVERY_MS;
            }
            total
        });
        // The last step timed was a refit.
        assert_eq!(
            latest(run).forecast.unwrap().at_ms,
            *next_refit - REFIT_EVERY_MS
        );
    });
    group.bench_function("mean-step", |b| {
        let Forecasting { run, .. } = state.get_or_insert_with(forecasting);
        b.iter_custom(|iters| run.time_steps(iters))
    });
    // Which history fit-only fits next: criterion calls the closure once per sample.
    let mut turn = 0;
    group.bench_function("fit-only", |b| {
        let Forecasting { histories, .. } = state.get_or_insert_with(forecasting);
        b.iter(|| {
            turn = (turn + 1) % histories.len();
            forecast::forecast(black_box(&histories[turn]), MINUTE_MS, HOUR_MS, 0.95)
        })
    });
    group.finish();
}

criterion_group!(eval, benches);
criterion_main!(eval);
