//! Ingest throughput, in samples per second (`Throughput::Elements`).
//!
//! - `captures`: snappy + zero-copy decode of every real Prometheus 2.42 capture in
//!   `../shared/testdata`, beside prost's full decode of the same bodies as the baseline.
//! - `pipeline/{v1,v2}/{10pct,all}`: a synthetic 2000-series Kubernetes-shaped request,
//!   snappy + decode + route (`route`), and the same plus window insert and threshold
//!   evaluation (`route+window`), with 10% of series or all of them matching rules.
//! - `rules/{none,100-mixed}`: decode, route, window and evaluate the same traffic with no
//!   rules and with 100 rules of the evaluated shapes (see [`mixed_rules`]), which keep a
//!   quarter of the series: the cost of a realistic rule set. Measured in steady state, as
//!   a receiver runs: the evaluator has already seen the series (the first
//!   [`WARM_REQUESTS`] scrapes, not timed), and the next scrapes of the same series are
//!   timed. `rules/100-mixed-cold` times the first scrapes instead, every series new.
//!   `rules/100-mixed-route` is decode and route alone, the part of the work done on the
//!   HTTP handlers (the evaluator runs on its own thread). `rules/100-unmatched` loads the
//!   same 100 rules over namespaces the traffic does not have: every series is checked
//!   against them and none is kept, the floor of what a rule set costs.
//!   `rules/100-mixed-5pct` narrows each of the 100 rules to one app: 5% of the series kept.
//!
//! - `ha/*`: HA deduplication's cost (see [`ha`]).
//!
//! Every route goes through HA deduplication with the default labels, as the write
//! handler does.
//!
//! Run: `cargo bench --bench ingest`.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use common::compile_all;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prophet::eval::Evaluator;
use prophet::ha::{Admission, HaConfig, HaTracker};
use prophet::ingest::{self, Limits, Protocol};
use prophet::route::{Batch, Router};
use prophet::rules::compile::CompiledRule;
use prophet::synth;
use prost::Message;

const NOW_MS: i64 = 4_102_444_800_000;
const SERIES: usize = 2000;
const REQUESTS: usize = 50;
/// Scrapes applied before the steady-state measurement (2.5 minutes of event time).
const WARM_REQUESTS: usize = 10;

fn captures(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/remote-write/prometheus-2.42");
    let mut bodies = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the shared captures") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            bodies.push(std::fs::read(path).unwrap());
        }
    }
    bodies.sort();
    let mut buffer = ingest::SnappyBuffer::new();
    // Snappy + zero-copy decode of one capture; returns its sample count.
    let decode = |body: &[u8], buffer: &mut ingest::SnappyBuffer| {
        let decoded = buffer.decompress(body, 32 << 20).unwrap();
        ingest::decode(
            Protocol::V1,
            decoded,
            &Limits::default(),
            NOW_MS,
            |_| Ok(()),
        )
        .unwrap()
        .samples
    };
    let samples: usize = bodies.iter().map(|b| decode(b, &mut buffer)).sum();
    let mut group = c.benchmark_group("captures");
    group.throughput(Throughput::Elements(samples as u64));
    group.bench_function("prophet-decode", |b| {
        b.iter(|| {
            for body in &bodies {
                decode(body, &mut buffer);
            }
        })
    });
    group.bench_function("prost-decode-baseline", |b| {
        b.iter(|| {
            for body in &bodies {
                let decoded = buffer.decompress(body, 32 << 20).unwrap();
                prophet::proto::v1::WriteRequest::decode(decoded).unwrap();
            }
        })
    });
    group.finish();
}

/// Threshold rules on `metrics` (indices into `synth::METRICS`), loaded the way users
/// write them.
fn rules(metrics: impl Iterator<Item = usize>) -> Vec<CompiledRule> {
    let yaml: String = metrics
        .map(|m| {
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r{m}, namespace: shop}}\nspec:\n  metric: {}{{job=\"kubelet\"}}\n  threshold: \"> 1e12\"\n  remediation: {{type: alert}}\n---\n",
                synth::METRICS[m]
            )
        })
        .collect();
    compile_all(&yaml)
}

fn pipeline(c: &mut Criterion) {
    let t0 = 1_700_000_000_000;
    for (version, protocol) in [("v1", Protocol::V1), ("v2", Protocol::V2)] {
        let bodies: Vec<Vec<u8>> = (0..REQUESTS)
            .map(|k| {
                let ts = t0 + k as i64 * 15_000;
                synth::compress(&match protocol {
                    Protocol::V1 => synth::request_v1(SERIES, ts),
                    Protocol::V2 => synth::request_v2(SERIES, ts),
                })
            })
            .collect();
        // 2 of the 20 metric families: 10% of the series.
        for (matching, rule_set, kept) in [
            ("10pct", rules([1, 16].into_iter()), SERIES / 10),
            ("all", rules(0..synth::METRICS.len()), SERIES),
        ] {
            let mut group = c.benchmark_group(format!("pipeline/{version}/{matching}"));
            group.throughput(Throughput::Elements((SERIES * REQUESTS) as u64));
            let evaluator = Evaluator::new(rule_set.clone(), 10_000);
            let router = evaluator.router(7);
            let mut buffer = ingest::SnappyBuffer::new();
            // The group's name is a claim about the request: check it.
            let batch = route(protocol, &bodies[0], &router, &mut buffer);
            assert_eq!(batch.kept_samples, kept, "pipeline/{version}/{matching}");
            group.bench_function("route", |b| {
                b.iter(|| {
                    for body in &bodies {
                        route(protocol, body, &router, &mut buffer);
                    }
                })
            });
            group.bench_function("route+window", |b| {
                evaluate_all(b, &rule_set, protocol, &bodies, &router, &mut buffer)
            });
            group.finish();
        }
    }
}

/// Decode, route and evaluate every body with a fresh evaluator per iteration (its setup
/// is not timed), so that every sample is new to its window.
fn evaluate_all(
    b: &mut criterion::Bencher<'_>,
    rule_set: &[CompiledRule],
    protocol: Protocol,
    bodies: &[Vec<u8>],
    router: &Router,
    buffer: &mut ingest::SnappyBuffer,
) {
    b.iter_batched(
        || Evaluator::new(rule_set.to_vec(), 10_000),
        |mut evaluator| {
            for body in bodies {
                let batch = route(protocol, body, router, buffer);
                evaluator.apply(&batch);
            }
            evaluator
        },
        BatchSize::PerIteration,
    )
}

/// Decode, HA deduplication (the default labels, as `prophet run` has them) and route,
/// as the write handler does.
fn route(
    protocol: Protocol,
    body: &[u8],
    router: &Router,
    buffer: &mut ingest::SnappyBuffer,
) -> Batch {
    static TRACKER: OnceLock<HaTracker> = OnceLock::new();
    let tracker = TRACKER.get_or_init(tracker);
    route_ha(protocol, body, router, buffer, tracker)
}

/// An HA tracker with the default labels, whose elected replica never times out during
/// a bench.
fn tracker() -> HaTracker {
    let config = HaConfig {
        failover_timeout: std::time::Duration::from_secs(24 * 3600),
        ..HaConfig::default()
    };
    HaTracker::new(&config, Default::default(), Default::default())
}

fn route_ha(
    protocol: Protocol,
    body: &[u8],
    router: &Router,
    buffer: &mut ingest::SnappyBuffer,
    tracker: &HaTracker,
) -> Batch {
    let decoded = buffer.decompress(body, 32 << 20).unwrap();
    let mut batch = Batch::new(Instant::now(), NOW_MS, usize::MAX);
    let mut ha = tracker.request(Instant::now());
    ingest::decode(
        protocol,
        decoded,
        &Limits::default(),
        NOW_MS,
        |s| match ha.admit(s) {
            Admission::Keep { strip } => router.route_stripped(s, strip, &mut batch),
            Admission::Duplicate => Ok(()),
        },
    )
    .unwrap();
    batch
}

/// HA deduplication's cost, decode and route included, with the 100 mixed rules (a
/// quarter of the series kept): `plain/*` is traffic without HA labels (every sender's
/// cost) with deduplication off and on; `pair/*` is an HA replica's (`cluster` and
/// `prometheus_replica` on every series) with deduplication off (its series kept with
/// the replica label), from the elected replica (kept without it) and from the other one
/// (dropped).
fn ha(c: &mut Criterion) {
    let t0 = 1_700_000_000_000;
    let bodies = |external: &[(&str, &str)]| -> Vec<Vec<u8>> {
        (0..REQUESTS)
            .map(|k| {
                synth::compress(&synth::request_v1_with(
                    SERIES,
                    t0 + k as i64 * 15_000,
                    external,
                ))
            })
            .collect()
    };
    let plain = bodies(&[]);
    let replica = |name| bodies(&[("cluster", "eu-1"), ("prometheus_replica", name)]);
    let (elected, other) = (replica("prometheus-k8s-0"), replica("prometheus-k8s-1"));
    let router = Evaluator::new(
        mixed_rules(&["shop", "payments", "search", "checkout"], false),
        10_000,
    )
    .router(7);
    let (off, on) = (HaTracker::off(), tracker());
    let mut buffer = ingest::SnappyBuffer::new();
    // The first replica heard from is elected; check what each case keeps.
    assert_eq!(
        route_ha(Protocol::V1, &elected[0], &router, &mut buffer, &on).kept_samples,
        SERIES / 4
    );
    assert_eq!(
        route_ha(Protocol::V1, &other[0], &router, &mut buffer, &on).kept_samples,
        0
    );
    assert_eq!(
        route_ha(Protocol::V1, &plain[0], &router, &mut buffer, &on).kept_samples,
        SERIES / 4
    );
    let mut group = c.benchmark_group("ha");
    group.throughput(Throughput::Elements((SERIES * REQUESTS) as u64));
    for (name, bodies, tracker) in [
        ("plain/off", &plain, &off),
        ("plain/on", &plain, &on),
        ("pair/off", &elected, &off),
        ("pair/elected", &elected, &on),
        ("pair/duplicate", &other, &on),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for body in bodies {
                    route_ha(Protocol::V1, body, &router, &mut buffer, tracker);
                }
            })
        });
    }
    group.finish();
}

/// 100 rules of the three evaluated shapes, spread over the synthetic metric families and
/// namespaces, as a cluster's rule set would be. With `by_app`, each rule also selects one
/// app of five (a fifth of what it would keep otherwise).
fn mixed_rules(namespaces: &[&str], by_app: bool) -> Vec<CompiledRule> {
    let yaml: String = (0..100)
        .map(|i| {
            let metric = synth::METRICS[i % synth::METRICS.len()];
            let namespace = namespaces[i % namespaces.len()];
            let app = if by_app {
                format!(", app=\"{}\"", ["backend", "frontend", "worker", "api", "cache"][i % 5])
            } else {
                String::new()
            };
            // The SLOs' errors: a subset of their total.
            let errors = if by_app {
                format!("{app}, instance=~\"10.0.1.*\"")
            } else {
                ", app=\"api\"".to_string()
            };
            let spec = match i % 4 {
                0 | 1 => format!(
                    "  metric: {metric}{{namespace=\"{namespace}\", container!=\"\"{app}}}\n  threshold: \"> 1e12\"\n  remediation: {{type: alert}}\n"
                ),
                2 => format!(
                    "  metric: {metric}{{namespace=~\"{namespace}|default\"{app}}}\n  detection: {{algorithm: zscore, window: 10m}}\n  remediation: {{type: alert}}\n"
                ),
                _ => format!(
                    "  sloName: s{i}\n  sloTarget: \"99.9%\"\n  errorBudgetThreshold: 0.1\n  actions: [{{type: alert}}]\n  sli: {{ratio: {{errors: '{metric}{{namespace=\"{namespace}\"{errors}}}', total: '{metric}{{namespace=\"{namespace}\"{app}}}'}}}}\n"
                ),
            };
            let kind = if i % 4 == 3 { "SLOViolation" } else { "AnomalyAction" };
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: {kind}\nmetadata: {{name: r{i}, namespace: {namespace}}}\nspec:\n{spec}---\n"
            )
        })
        .collect();
    compile_all(&yaml)
}

fn rule_count(c: &mut Criterion) {
    let t0 = 1_700_000_000_000;
    let bodies: Vec<Vec<u8>> = (0..REQUESTS)
        .map(|k| synth::compress(&synth::request_v1(SERIES, t0 + k as i64 * 15_000)))
        .collect();
    let mut group = c.benchmark_group("rules");
    let (warm, timed) = bodies.split_at(WARM_REQUESTS);
    // Each metric family's rules select one namespace of four (the SLOs' `errors` a subset
    // of their `total`): a quarter of the series is kept.
    let present = ["shop", "payments", "search", "checkout"];
    let absent: Vec<String> = present.iter().map(|n| format!("{n}-elsewhere")).collect();
    let absent: Vec<&str> = absent.iter().map(String::as_str).collect();
    for (name, rule_set, kept) in [
        ("none", Vec::new(), 0),
        ("100-mixed", mixed_rules(&present, false), SERIES / 4),
        ("100-mixed-5pct", mixed_rules(&present, true), SERIES / 20),
        ("100-unmatched", mixed_rules(&absent, false), 0),
    ] {
        let router = Evaluator::new(rule_set.clone(), 10_000).router(7);
        let mut buffer = ingest::SnappyBuffer::new();
        // The group's name is a claim about the rules: check what they keep.
        let batch = route(Protocol::V1, &bodies[0], &router, &mut buffer);
        assert_eq!(batch.kept_samples, kept, "rules/{name}");
        group.throughput(Throughput::Elements((SERIES * timed.len()) as u64));
        let mut warm_buffer = ingest::SnappyBuffer::new();
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut evaluator = Evaluator::new(rule_set.clone(), 10_000);
                    for body in warm {
                        evaluator.apply(&route(Protocol::V1, body, &router, &mut warm_buffer));
                    }
                    evaluator
                },
                |mut evaluator| {
                    for body in timed {
                        let batch = route(Protocol::V1, body, &router, &mut buffer);
                        evaluator.apply(&batch);
                    }
                    evaluator
                },
                BatchSize::PerIteration,
            )
        });
        if name == "100-mixed" {
            group.bench_function("100-mixed-route", |b| {
                b.iter(|| {
                    for body in timed {
                        route(Protocol::V1, body, &router, &mut buffer);
                    }
                })
            });
            group.throughput(Throughput::Elements((SERIES * REQUESTS) as u64));
            group.bench_function("100-mixed-cold", |b| {
                evaluate_all(b, &rule_set, Protocol::V1, &bodies, &router, &mut buffer)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, captures, pipeline, rule_count, ha);
criterion_main!(benches);
