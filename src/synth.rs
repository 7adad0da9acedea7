//! Synthetic remote-write requests shaped like a Kubernetes cluster's traffic (cAdvisor and
//! kube-state-metrics series with their usual labels), for benchmarks, load runs and tests.
//! Deterministic: the same parameters give the same bytes.

use prost::Message;

use crate::proto::{v1, v2};

/// Metric families, as a kubelet/cAdvisor and kube-state-metrics scrape would send them.
pub const METRICS: [&str; 20] = [
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
    "container_fs_reads_bytes_total",
    "container_fs_writes_bytes_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_periods_total",
    "container_spec_memory_limit_bytes",
    "container_spec_cpu_quota",
    "container_last_seen",
    "container_start_time_seconds",
    "container_threads",
    "container_file_descriptors",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_resource_requests",
    "kube_pod_container_resource_limits",
    "kube_pod_status_ready",
];

/// One series' labels (sorted by name, `__name__` first) for pod `pod` and metric `metric`.
pub fn series_labels(metric: usize, pod: usize) -> Vec<(String, String)> {
    let namespace = ["shop", "payments", "search", "checkout"][pod % 4];
    let app = ["backend", "frontend", "worker", "api", "cache"][pod % 5];
    let node = format!(
        "ip-10-0-{}-{}.eu-west-1.compute.internal",
        pod % 7,
        10 + pod % 13
    );
    let pod_name = format!(
        "{app}-7d9c5b{:04x}-{:05x}",
        pod * 7919 % 65536,
        pod * 104_729 % 1_048_576
    );
    vec![
        ("__name__".into(), METRICS[metric % METRICS.len()].into()),
        ("app".into(), app.into()),
        ("container".into(), app.into()),
        ("endpoint".into(), "https-metrics".into()),
        (
            "id".into(),
            format!(
                "/kubepods/burstable/pod{:08x}-{:04x}",
                pod * 2_654_435_761 % 4_294_967_296,
                pod % 65536
            ),
        ),
        (
            "image".into(),
            format!(
                "registry.example.com/{namespace}/{app}:v1.{}.{}",
                pod % 9,
                pod % 31
            ),
        ),
        (
            "instance".into(),
            format!("10.0.{}.{}:10250", pod % 7, 10 + pod % 13),
        ),
        ("job".into(), "kubelet".into()),
        ("metrics_path".into(), "/metrics/cadvisor".into()),
        ("namespace".into(), namespace.into()),
        ("node".into(), node),
        ("pod".into(), pod_name),
        ("service".into(), "kubelet".into()),
    ]
}

/// The series of a request: `series` of them, metrics cycling fastest, one sample each at
/// `timestamp_ms`.
fn series_set(series: usize) -> impl Iterator<Item = (usize, Vec<(String, String)>)> {
    (0..series).map(|i| (i, series_labels(i % METRICS.len(), i / METRICS.len())))
}

fn value(i: usize, timestamp_ms: i64) -> f64 {
    (i as f64) * 1024.0 + (timestamp_ms / 1000 % 600) as f64
}

/// A remote-write 1.0 request body (protobuf, not yet compressed).
pub fn request_v1(series: usize, timestamp_ms: i64) -> Vec<u8> {
    request_v1_with(series, timestamp_ms, &[])
}

/// [`request_v1`] with `external` labels added to every series, in their sorted places,
/// as Prometheus adds its `external_labels` (an HA replica's `cluster` and `__replica__`).
pub fn request_v1_with(series: usize, timestamp_ms: i64, external: &[(&str, &str)]) -> Vec<u8> {
    let request = v1::WriteRequest {
        timeseries: series_set(series)
            .map(|(i, mut labels)| v1::TimeSeries {
                labels: {
                    labels.extend(external.iter().map(|(n, v)| (n.to_string(), v.to_string())));
                    labels.sort();
                    labels
                        .into_iter()
                        .map(|(name, value)| v1::Label { name, value })
                        .collect()
                },
                samples: vec![v1::Sample {
                    value: value(i, timestamp_ms),
                    timestamp: timestamp_ms,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: Vec::new(),
    };
    request.encode_to_vec()
}

/// A remote-write 2.0 request body (protobuf, not yet compressed).
pub fn request_v2(series: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut symbols = vec![String::new()];
    let mut index = std::collections::HashMap::new();
    let mut symbol = |s: String, symbols: &mut Vec<String>| -> u32 {
        *index.entry(s.clone()).or_insert_with(|| {
            symbols.push(s);
            symbols.len() as u32 - 1
        })
    };
    let mut timeseries = Vec::with_capacity(series);
    for (i, labels) in series_set(series) {
        let mut labels_refs = Vec::with_capacity(labels.len() * 2);
        for (name, value) in labels {
            labels_refs.push(symbol(name, &mut symbols));
            labels_refs.push(symbol(value, &mut symbols));
        }
        timeseries.push(v2::TimeSeries {
            labels_refs,
            samples: vec![v2::Sample {
                value: value(i, timestamp_ms),
                timestamp: timestamp_ms,
                start_timestamp: 0,
            }],
            ..Default::default()
        });
    }
    v2::Request {
        symbols,
        timeseries,
    }
    .encode_to_vec()
}

/// Snappy block compression, as remote-write senders do.
pub fn compress(body: &[u8]) -> Vec<u8> {
    // Compressing a Vec cannot fail for inputs below snappy's 4 GiB limit.
    snap::raw::Encoder::new()
        .compress_vec(body)
        .unwrap_or_default()
}
