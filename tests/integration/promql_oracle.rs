//! The PromQL engine against the real thing: a deterministic synthetic data set (counters
//! with a reset, a gap and a late start; gauges; a classic histogram; a series ended by a
//! staleness marker) is remote-written to Debian's Prometheus 2.42 and loaded into a
//! `MemorySource`; then a fixed list of expressions is evaluated by both at several
//! instants (on and off the sample grid, inside the gap, at the lookback's edge, just
//! after the staleness marker) and the results must agree: the same label sets and
//! values within 1e-9 relative (NaN equal to NaN), or an error from both.
//!
//! Needs `/usr/bin/prometheus` (`apt-get install prometheus`; `.ci/run` installs it).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{Running, free_port, percent_encode};

use prophet::eval::promql::{self, EvalOptions, MemorySource, Semantics, Value};
use prophet::ingest::{STALE_NAN_BITS, Sample};
use prophet::labels::Labels;
use prophet::proto::v1;
use prost::Message;

/// Kills Prometheus when dropped, whatever happened in the test.
pub(crate) const STEP_MS: i64 = 15_000;
/// Samples per series: 40 minutes at 15 s.
pub(crate) const POINTS: i64 = 161;
/// The `web` counters have no samples at these grid indexes (a 9-minute gap).
pub(crate) const GAP: std::ops::RangeInclusive<i64> = 90..=125;
/// `queue_depth` gets a staleness marker at this index and nothing after it.
pub(crate) const STALE_AT: i64 = 121;
/// A counter that only starts here, so its first rate needs the zero-point clamp.
pub(crate) const LATE_START: i64 = 140;

/// A small deterministic generator (SplitMix64), so the data set is the same every run.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(crate) struct Series {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<(i64, f64)>,
}

impl Series {
    /// The series' labels as remote write sends them.
    pub(crate) fn wire_labels(&self) -> Vec<v1::Label> {
        self.labels
            .iter()
            .map(|(name, value)| v1::Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }
}

fn series(pairs: &[(&str, &str)]) -> Series {
    Series {
        labels: pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        samples: Vec::new(),
    }
}

/// The data set, with grid time `t(i) = start + i × 15 s`.
pub(crate) fn data_set(start: i64) -> Vec<Series> {
    let t = |i: i64| start + i * STEP_MS;
    let mut rng = Rng(42);
    let mut out = Vec::new();

    // Counters.
    for (job, instance, code) in [
        ("api", "a:80", "200"),
        ("api", "a:80", "500"),
        ("api", "b:80", "200"),
        ("api", "b:80", "500"),
        ("web", "c:80", "200"),
        ("web", "c:80", "503"),
    ] {
        let mut s = series(&[
            ("__name__", "http_requests_total"),
            ("job", job),
            ("instance", instance),
            ("code", code),
        ]);
        let mut value = if code == "200" { 1000.0 } else { 3.0 };
        for i in 0..POINTS {
            let step = if code == "200" {
                5.0 + (rng.unit() * 20.0).floor() / 2.0
            } else {
                (rng.unit() * 3.0).floor()
            };
            value += step;
            if job == "web" && GAP.contains(&i) {
                continue;
            }
            // instance b restarts: its counters reset.
            if instance == "b:80" && i == 100 {
                value = 2.0;
            }
            // instance b is scraped with jitter, so its intervals are uneven.
            let jitter = if instance == "b:80" {
                (i * 7919) % 2000
            } else {
                0
            };
            s.samples.push((t(i) + jitter, value));
        }
        out.push(s);
    }
    let mut late = series(&[
        ("__name__", "http_requests_total"),
        ("job", "batch"),
        ("instance", "e:80"),
        ("code", "200"),
    ]);
    let mut value = 4.0;
    for i in LATE_START..POINTS {
        late.samples.push((t(i), value));
        value += 3.0 + rng.unit();
    }
    out.push(late);

    // Gauges, on the same label sets so that dropping the name collides.
    for instance in ["a:80", "b:80", "c:80"] {
        let mut memory = series(&[
            ("__name__", "memory_usage_bytes"),
            ("job", "api"),
            ("instance", instance),
        ]);
        let mut temperature = series(&[
            ("__name__", "temperature_celsius"),
            ("job", "api"),
            ("instance", instance),
        ]);
        let mut m = 1.0e8 + rng.unit() * 1.0e8;
        let mut c = rng.unit() * 10.0 - 5.0;
        for i in 0..POINTS {
            m += (rng.unit() - 0.5) * 4.0e6;
            c += rng.unit() * 2.0 - 1.0;
            memory.samples.push((t(i), m));
            temperature.samples.push((t(i), c));
        }
        out.push(memory);
        out.push(temperature);
    }

    // A classic histogram per instance.
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
    for instance in ["a:80", "b:80"] {
        let mut counts = [0.0f64; 7];
        let (mut sum, mut count) = (0.0, 0.0);
        let mut buckets: Vec<Series> = bounds
            .iter()
            .map(|le| {
                series(&[
                    ("__name__", "http_request_duration_seconds_bucket"),
                    ("job", "api"),
                    ("instance", instance),
                    ("le", le),
                ])
            })
            .collect();
        let mut sum_series = series(&[
            ("__name__", "http_request_duration_seconds_sum"),
            ("job", "api"),
            ("instance", instance),
        ]);
        let mut count_series = series(&[
            ("__name__", "http_request_duration_seconds_count"),
            ("job", "api"),
            ("instance", instance),
        ]);
        for i in 0..POINTS {
            let observations = (rng.unit() * 20.0) as usize;
            for _ in 0..observations {
                // Mostly fast, with a long tail.
                let d = rng.unit().powi(3) * 3.0;
                for (b, le) in bounds.iter().enumerate() {
                    let le: f64 = le.parse().unwrap();
                    if d <= le {
                        counts[b] += 1.0;
                    }
                }
                sum += d;
                count += 1.0;
            }
            for (b, s) in buckets.iter_mut().enumerate() {
                s.samples.push((t(i), counts[b]));
            }
            sum_series.samples.push((t(i), sum));
            count_series.samples.push((t(i), count));
        }
        out.append(&mut buckets);
        out.push(sum_series);
        out.push(count_series);
    }

    // An info metric to join on (as kube_pod_owner or kube_node_info are): c:80's has
    // no node, so a group_left(node) copies none.
    for (instance, owner, node) in [
        ("a:80", "web", "n1"),
        ("b:80", "batch", "n2"),
        ("c:80", "web", ""),
    ] {
        let mut pairs = vec![
            ("__name__", "pod_info"),
            ("job", "api"),
            ("instance", instance),
            ("owner", owner),
        ];
        if !node.is_empty() {
            pairs.push(("node", node));
        }
        let mut info = series(&pairs);
        for i in 0..POINTS {
            info.samples.push((t(i), 1.0));
        }
        out.push(info);
    }

    // Paths with and without non-ASCII letters and digits, for the regex classes, which
    // are ASCII in Go.
    for (k, path) in ["/cafe", "/café", "/naïve_2", "/x٣", "/a b", "/a\u{b}b"]
        .iter()
        .enumerate()
    {
        let mut hits = series(&[("__name__", "path_hits"), ("path", path)]);
        for i in 0..POINTS {
            hits.samples.push((t(i), (k as f64) + 1.0));
        }
        out.push(hits);
    }

    // Ties and NaNs, for the order of sort, topk and bottomk: a few (insertion sort in
    // Go) and many (Go's pdqsort).
    let few = [f64::NAN, 5.0, 5.0, f64::NAN, 3.0, 5.0];
    for (k, v) in few.iter().enumerate() {
        let mut s = series(&[("__name__", "ties"), ("i", &k.to_string())]);
        for i in 0..POINTS {
            s.samples.push((t(i), *v));
        }
        out.push(s);
    }
    for k in 0..40usize {
        let v = if k % 7 == 3 {
            f64::NAN
        } else {
            ((k * 5) % 4) as f64
        };
        let group = if k % 2 == 0 { "even" } else { "odd" };
        let mut s = series(&[
            ("__name__", "ties_many"),
            ("i", &format!("{k:02}")),
            ("g", group),
        ]);
        for i in 0..POINTS {
            s.samples.push((t(i), v));
        }
        out.push(s);
    }

    // A series with an empty label value, which Prometheus treats as no label.
    let mut shard = series(&[("__name__", "shard_up"), ("job", "db"), ("shard", "")]);
    for i in 0..POINTS {
        shard.samples.push((t(i), 1.0));
    }
    out.push(shard);

    // A series that ends with a staleness marker.
    let mut queue = series(&[
        ("__name__", "queue_depth"),
        ("job", "worker"),
        ("instance", "d:80"),
    ]);
    for i in 0..STALE_AT {
        queue.samples.push((t(i), (rng.unit() * 50.0).floor()));
    }
    queue
        .samples
        .push((t(STALE_AT), f64::from_bits(STALE_NAN_BITS)));
    out.push(queue);
    out
}

/// What the engine is compared on.
pub(crate) const EXPRESSIONS: &[&str] = &[
    // Selectors and matchers.
    "http_requests_total",
    r#"http_requests_total{code=~"5.."}"#,
    r#"http_requests_total{code!="200", job=~"api|web"}"#,
    r#"http_requests_total{instance!~"a.*"}"#,
    "queue_depth",
    "http_requests_total offset 10m",
    "memory_usage_bytes offset -1m",
    "http_requests_total @ end()",
    "rate(http_requests_total[5m] @ start() offset 1m)",
    r#"http_requests_total{instance="a:80"}[1m]"#,
    // Range functions.
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[1m])",
    "rate(http_requests_total[5m] offset 5m)",
    "irate(http_requests_total[5m])",
    "increase(http_requests_total[10m])",
    "increase(http_requests_total[45s])",
    "delta(temperature_celsius[5m])",
    "idelta(temperature_celsius[2m])",
    "resets(http_requests_total[30m])",
    "changes(http_requests_total[10m])",
    "avg_over_time(memory_usage_bytes[10m])",
    "min_over_time(temperature_celsius[10m])",
    "max_over_time(temperature_celsius[10m])",
    "sum_over_time(memory_usage_bytes[5m])",
    "count_over_time(http_requests_total[5m])",
    "stddev_over_time(memory_usage_bytes[10m])",
    "stddev_over_time(temperature_celsius[3m])",
    "quantile_over_time(0.9, temperature_celsius[10m])",
    "quantile_over_time(0.5, http_requests_total[4m])",
    "last_over_time(queue_depth[10m])",
    "count_over_time(queue_depth[2m])",
    // Aggregations.
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum without (instance, code) (rate(http_requests_total[5m]))",
    "sum(http_requests_total)",
    "avg by (instance) (memory_usage_bytes)",
    "avg(temperature_celsius)",
    "min(temperature_celsius)",
    "max by (job) (temperature_celsius)",
    "count by (code) (http_requests_total)",
    "quantile(0.5, memory_usage_bytes)",
    "quantile by (job) (0.9, rate(http_requests_total[5m]))",
    "topk(2, rate(http_requests_total[5m]))",
    "bottomk(2, memory_usage_bytes)",
    "topk by (job) (1, http_requests_total)",
    // Histograms.
    "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.99, sum by (job, le) (increase(http_request_duration_seconds_bucket[10m])))",
    "histogram_quantile(0.3, http_request_duration_seconds_bucket)",
    "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])",
    // Vector matching.
    r#"http_requests_total{code=~"5.."} / ignoring(code) http_requests_total{code="200"}"#,
    r#"sum by (job) (rate(http_requests_total{code=~"5.."}[5m])) / on(job) sum by (job) (rate(http_requests_total[5m]))"#,
    r#"rate(http_requests_total{code="500"}[5m]) > bool on(instance) rate(http_requests_total{code="200"}[5m])"#,
    "memory_usage_bytes > ignoring(job) memory_usage_bytes offset 5m",
    "http_requests_total / http_requests_total",
    "http_requests_total / ignoring(code) http_requests_total",
    r#"http_requests_total{code="200"} and on(instance) http_requests_total{code="500"}"#,
    r#"memory_usage_bytes or on(instance) http_requests_total{job="web"}"#,
    r#"http_requests_total unless on(instance) memory_usage_bytes"#,
    // Comparisons and arithmetic with scalars.
    "memory_usage_bytes > 1.5e8",
    "memory_usage_bytes > bool 1.5e8",
    "1.5e8 < memory_usage_bytes",
    "temperature_celsius <= bool 0",
    "temperature_celsius != 0",
    "rate(http_requests_total[5m]) >= 0.5",
    "memory_usage_bytes / 1024 / 1024",
    "memory_usage_bytes % 1000",
    "temperature_celsius ^ 2",
    "2 ^ temperature_celsius",
    "-temperature_celsius",
    "(1 + 2) * 3 - 4 / 8 % 3",
    "1 > bool 2",
    // Helpers.
    "abs(temperature_celsius)",
    "clamp_min(temperature_celsius, 0)",
    "clamp_max(memory_usage_bytes, 1.2e8)",
    "scalar(sum(memory_usage_bytes))",
    "scalar(memory_usage_bytes)",
    "vector(1) + 2",
    "memory_usage_bytes / scalar(max(memory_usage_bytes))",
    // Errors both must report.
    r#"abs({__name__=~"memory_usage_bytes|temperature_celsius"})"#,
    // predict_linear and deriv (disks and queues filling up).
    "predict_linear(memory_usage_bytes[10m], 3600)",
    "predict_linear(memory_usage_bytes[30m] offset 5m, 4 * 3600) < 1.2e8",
    "predict_linear(queue_depth[5m], 60)",
    "predict_linear(http_requests_total[2m], 600)",
    "deriv(temperature_celsius[5m])",
    "deriv(http_requests_total[10m])",
    "deriv(pod_info[5m])",
    // Many-to-one matching (joins with info metrics).
    "memory_usage_bytes * on(instance) group_left(owner, node) pod_info",
    "pod_info * on(instance) group_right(owner) rate(http_requests_total[5m])",
    "sum by (instance) (rate(http_requests_total[5m])) * on(instance) group_left(owner) pod_info",
    "http_requests_total / on(instance) group_left memory_usage_bytes",
    "rate(http_requests_total[5m]) > on(instance, job) group_left 0 * memory_usage_bytes",
    "rate(http_requests_total[5m]) > bool on(instance) group_left(owner) pod_info",
    "http_requests_total * on(job) group_left pod_info",
    r#"{__name__=~"memory_usage_bytes|temperature_celsius"} * on(instance) group_left pod_info"#,
    "pod_info * ignoring(owner, node) group_right memory_usage_bytes",
    // absent and friends (targets down).
    r#"absent(nonexistent{job="x", instance=~"a.*", env="prod"})"#,
    r#"absent(nonexistent{job="x", job="y", zone=""})"#,
    "absent(memory_usage_bytes)",
    "absent(queue_depth)",
    "absent(sum(nonexistent))",
    r#"absent_over_time(queue_depth{job="worker"}[2m])"#,
    r#"absent_over_time(nonexistent{a="b"}[5m])"#,
    r#"present_over_time(http_requests_total{job="web"}[1m])"#,
    // Time and dates.
    "time()",
    "time() - timestamp(queue_depth)",
    "timestamp(http_requests_total)",
    "timestamp(sum(memory_usage_bytes))",
    "timestamp(memory_usage_bytes offset 1m)",
    "hour()",
    "minute()",
    "day_of_week()",
    "day_of_month()",
    "day_of_year()",
    "days_in_month()",
    "month()",
    "year()",
    "hour(timestamp(memory_usage_bytes))",
    "day_of_week(vector(1.7e9))",
    "days_in_month(vector(951782400))",
    "year(temperature_celsius * 1e9)",
    "month(temperature_celsius * 3e6)",
    "day_of_year(vector(-1e11))",
    "year(vector(0/0))",
    // Labels.
    r#"label_replace(http_requests_total, "host", "$1", "instance", "(.*):.*")"#,
    r#"label_replace(memory_usage_bytes, "instance", "", "instance", "a.*")"#,
    r#"label_replace(http_requests_total, "x", "$1$2", "code", "(5)(.*)")"#,
    r#"label_replace(http_requests_total, "x", "${1}x$1x", "code", "(.).*")"#,
    r#"label_replace(http_requests_total, "1bad", "x", "code", ".*")"#,
    r#"label_replace(http_requests_total, "code", "", "code", ".*")"#,
    r#"label_join(http_requests_total, "key", "/", "job", "instance", "code")"#,
    r#"label_join(memory_usage_bytes, "instance", "-", "nope")"#,
    // Math.
    "round(temperature_celsius)",
    "round(temperature_celsius, 0.5)",
    "round(memory_usage_bytes, 1e6)",
    "ceil(temperature_celsius)",
    "floor(temperature_celsius)",
    "sqrt(memory_usage_bytes)",
    "sqrt(temperature_celsius)",
    "exp(temperature_celsius)",
    "ln(memory_usage_bytes)",
    "ln(temperature_celsius)",
    "log2(memory_usage_bytes)",
    "log10(memory_usage_bytes)",
    "sgn(temperature_celsius)",
    "sin(temperature_celsius) + cos(temperature_celsius) + tan(temperature_celsius)",
    "asin(temperature_celsius / 10) + acos(temperature_celsius / 10) + atan(temperature_celsius)",
    "sinh(temperature_celsius) + cosh(temperature_celsius) + tanh(temperature_celsius)",
    "asinh(temperature_celsius) + acosh(abs(temperature_celsius) + 1) + atanh(temperature_celsius / 10)",
    "deg(temperature_celsius) + rad(temperature_celsius)",
    "pi()",
    "clamp(temperature_celsius, -1, 1)",
    "clamp(temperature_celsius, 1, -1)",
    "temperature_celsius atan2 on(instance) temperature_celsius offset 1m",
    "temperature_celsius atan2 0.5",
    "2 atan2 temperature_celsius",
    // Aggregations.
    "stddev(temperature_celsius)",
    "stdvar by (job) (rate(http_requests_total[5m]))",
    "stddev(ties_many)",
    "group by (job) (http_requests_total)",
    "group(memory_usage_bytes)",
    r#"count_values("value", ceil(temperature_celsius))"#,
    r#"count_values by (job) ("c", http_requests_total{code="500"} % 3)"#,
    r#"count_values without (instance) ("v", round(temperature_celsius))"#,
    r#"count_values("v", ties)"#,
    r#"count_values("1bad", ties)"#,
    // Ordering: sort and topk/bottomk through ties and NaNs (compared in order).
    "sort(temperature_celsius)",
    "sort_desc(memory_usage_bytes)",
    "sort(ties)",
    "sort_desc(ties)",
    "sort(ties_many)",
    "sort_desc(ties_many)",
    "topk(2, ties)",
    "topk(1, ties)",
    "bottomk(2, ties)",
    "bottomk(1, ties)",
    "topk(4, ties)",
    "topk(3, ties_many)",
    "bottomk(5, ties_many)",
    "topk by (g) (2, ties_many)",
    "bottomk(20, ties_many)",
    // Range functions added with the rest.
    "stdvar_over_time(temperature_celsius[5m])",
    "holt_winters(memory_usage_bytes[10m], 0.3, 0.6)",
    "holt_winters(temperature_celsius[5m], 0.9, 0.1)",
    "holt_winters(memory_usage_bytes[5m], 1, 0.5)",
    "holt_winters(nonexistent[5m], 1, 0.5)",
    // Subqueries.
    "max_over_time(rate(http_requests_total[5m])[30m:])",
    "max_over_time(rate(http_requests_total[5m])[30m:1m])",
    "avg_over_time(memory_usage_bytes[10m:30s])",
    "min_over_time(sum by (job) (rate(http_requests_total[1m]))[15m:2m] offset 3m)",
    "rate(http_requests_total[10m:1m])",
    "deriv(memory_usage_bytes[10m:])",
    "quantile_over_time(0.9, temperature_celsius[20m:1m])",
    "last_over_time(queue_depth[10m:1m])",
    "max_over_time(max_over_time(temperature_celsius[2m:30s])[10m:1m])",
    "memory_usage_bytes[5m:1m]",
    "predict_linear(avg(memory_usage_bytes)[30m:1m], 600)",
    "absent_over_time(nonexistent[5m:1m])",
    "count_over_time(http_requests_total[20m:1m] @ end())",
    "max_over_time(memory_usage_bytes[10m:1m] @ start())",
    "max_over_time(rate(http_requests_total[1m])[10m:15s]) > 2",
    // The shapes of widely used alerts (kube-prometheus, node-exporter, Prometheus).
    "sum by (instance) (max by (instance) (memory_usage_bytes) * on(instance) group_left(owner) topk by (instance) (1, max by (instance, owner) (pod_info)))",
    "absent(queue_depth == 1)",
    r#"count(count by (owner) (label_replace(pod_info, "owner", "$1", "owner", "(w).*")))"#,
    "2 ^ max(pod_info) by (job) - 1 - sum(2 ^ max by (job, instance) (pod_info)) by (job)",
    "stdvar(temperature_celsius) by (job) != 0",
    r#"min without (code) (rate(http_requests_total[5m]) / ignoring(code) group_left rate(http_requests_total{code="200"}[5m]))"#,
    "predict_linear(memory_usage_bytes[10m], 4 * 3600) < 1.5e8 and memory_usage_bytes > 1e8",
    "time() - max by (job) (timestamp(memory_usage_bytes))",
    "sum_over_time(vector(time())[5m:1m])",
    // Regex classes are ASCII (Go's RE2).
    r#"path_hits{path=~"/\\w+"}"#,
    r#"path_hits{path!~".*\\d.*"}"#,
    r#"path_hits{path=~"/\\W*\\w*\\b.*"}"#,
    r#"path_hits{path=~"/a\\sb"}"#,
    r#"label_replace(path_hits, "word", "$1", "path", "/(\\w+).*")"#,
    // An empty label value is no label.
    "shard_up",
    r#"shard_up{shard=""}"#,
    "sum by (shard) (shard_up)",
];

/// Expressions whose answer's order is part of it: compared element by element.
fn ordered(text: &str) -> bool {
    [
        "sort(",
        "sort_desc(",
        "topk(",
        "bottomk(",
        "topk by",
        "bottomk by",
    ]
    .iter()
    .any(|p| text.starts_with(p))
}

fn start_prometheus(dir: &Path, port: u16) -> Running {
    let binary = Path::new("/usr/bin/prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--storage.tsdb.retention.time=10y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Running(child)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A result reduced to what is compared: label set → values (one per sample).
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Scalar(f64),
    String(String),
    Vector(BTreeMap<BTreeMap<String, String>, f64>),
    Matrix(BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>),
    Error(String),
}

pub(crate) fn label_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

fn prophet_outcome(result: Result<Value, promql::EvalError>) -> Outcome {
    match result {
        Err(e) => Outcome::Error(e.to_string()),
        Ok(Value::Scalar(v)) => Outcome::Scalar(v),
        Ok(Value::String(s)) => Outcome::String(s),
        Ok(Value::Vector(v)) => {
            let n = v.len();
            let map: BTreeMap<_, _> = v.iter().map(|(l, x)| (label_map(l), *x)).collect();
            assert_eq!(map.len(), n, "prophet returned duplicate label sets");
            Outcome::Vector(map)
        }
        Ok(Value::Matrix(m)) => Outcome::Matrix(
            m.iter()
                .map(|s| {
                    (
                        label_map(&s.labels),
                        s.samples
                            .iter()
                            .map(|x| (x.timestamp_ms, x.value))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

/// `[1700000000.123, "1.5"]` as (milliseconds, value).
fn point(p: &serde_json::Value) -> (i64, f64) {
    let ts = p[0].as_f64().expect("timestamp");
    let v = p[1].as_str().expect("value string");
    ((ts * 1000.0).round() as i64, v.parse().expect("float"))
}

fn metric(m: &serde_json::Value) -> BTreeMap<String, String> {
    m.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn prometheus_outcome(body: &serde_json::Value) -> Outcome {
    if body["status"] != "success" {
        return Outcome::Error(body["error"].as_str().unwrap_or("?").to_owned());
    }
    let data = &body["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => Outcome::Scalar(point(result).1),
        Some("string") => Outcome::String(result[1].as_str().unwrap_or_default().to_owned()),
        Some("vector") => Outcome::Vector(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (metric(&e["metric"]), point(&e["value"]).1))
                .collect(),
        ),
        Some("matrix") => Outcome::Matrix(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        metric(&e["metric"]),
                        e["values"].as_array().unwrap().iter().map(point).collect(),
                    )
                })
                .collect(),
        ),
        other => Outcome::Error(format!("unexpected result type {other:?}")),
    }
}

fn same(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// A human-readable difference, or `None` if the outcomes agree.
pub(crate) fn diff(prophet: &Outcome, prometheus: &Outcome) -> Option<String> {
    let mut out = Vec::new();
    match (prophet, prometheus) {
        (Outcome::Error(_), Outcome::Error(_)) => {}
        (Outcome::Scalar(a), Outcome::Scalar(b)) if same(*a, *b) => {}
        (Outcome::String(a), Outcome::String(b)) if a == b => {}
        (Outcome::Vector(a), Outcome::Vector(b)) => {
            for (labels, x) in a {
                match b.get(labels) {
                    None => out.push(format!("  only prophet:    {labels:?} = {x}")),
                    Some(y) if !same(*x, *y) => out.push(format!(
                        "  value differs:   {labels:?}: prophet {x}, prometheus {y}"
                    )),
                    Some(_) => {}
                }
            }
            for (labels, y) in b {
                if !a.contains_key(labels) {
                    out.push(format!("  only prometheus: {labels:?} = {y}"));
                }
            }
        }
        (Outcome::Matrix(a), Outcome::Matrix(b)) => {
            for (labels, xs) in a {
                match b.get(labels) {
                    None => out.push(format!("  only prophet:    {labels:?} = {xs:?}")),
                    Some(ys) => {
                        let equal = xs.len() == ys.len()
                            && xs.iter().zip(ys).all(|(x, y)| x.0 == y.0 && same(x.1, y.1));
                        if !equal {
                            out.push(format!(
                                "  samples differ:  {labels:?}\n    prophet    {xs:?}\n    prometheus {ys:?}"
                            ));
                        }
                    }
                }
            }
            for labels in b.keys() {
                if !a.contains_key(labels) {
                    out.push(format!("  only prometheus: {labels:?}"));
                }
            }
        }
        (a, b) => out.push(format!("  prophet {a:?}\n  prometheus {b:?}")),
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

/// A Prometheus holding the data set (remote-written in one request), ready to answer;
/// `None` (skipped) without one. The data end a couple of minutes before now, on a
/// 15 s grid.
pub(crate) struct Oracle {
    /// Stopped first, then its data directory removed (fields drop in this order).
    _prometheus: Running,
    _dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    /// Time of the data set's first grid point.
    pub start: i64,
    pub data: Vec<Series>,
}

impl Oracle {
    pub async fn start() -> Option<Oracle> {
        common::process::prometheus()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let prometheus = start_prometheus(dir.path(), port);
        let base = format!("http://127.0.0.1:{port}");
        let client = common::process::http_client();

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("{base}/-/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The data end a couple of minutes before now, on a 15 s grid.
        let end = (now_ms() - 120_000).div_euclid(STEP_MS) * STEP_MS;
        let start = end - (POINTS - 1) * STEP_MS;
        let data = data_set(start);

        let request = v1::WriteRequest {
            timeseries: data
                .iter()
                .map(|s| v1::TimeSeries {
                    labels: s.wire_labels(),
                    samples: s
                        .samples
                        .iter()
                        .map(|&(timestamp, value)| v1::Sample { value, timestamp })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            metadata: Vec::new(),
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .unwrap();
        let response = client
            .post(format!("{base}/api/v1/write"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "remote write refused: {status} {}",
            response.text().await.unwrap_or_default()
        );
        Some(Oracle {
            _prometheus: prometheus,
            _dir: dir,
            base,
            client,
            start,
            data,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_agrees_with_prometheus() {
    let Some(oracle) = Oracle::start().await else {
        return;
    };
    let Oracle {
        base,
        client,
        start,
        data,
        ..
    } = &oracle;
    let (base, client, start) = (base.as_str(), client, *start);
    let t = |i: i64| start + i * STEP_MS;

    let mut source = MemorySource::default();
    for s in data {
        source.push(
            Labels::from_pairs(s.labels.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            s.samples
                .iter()
                .map(|&(timestamp_ms, value)| Sample {
                    timestamp_ms,
                    value,
                })
                .collect(),
        );
    }

    let times = [
        ("last sample", t(POINTS - 1)),
        ("off the grid", t(POINTS - 1) + 7_345),
        ("mid-range", t(60) + 500),
        ("inside the gap", t(95) + 3_500),
        ("lookback edge in the gap", t(*GAP.start() - 1) + 300_000),
        ("deep in the gap", t(120)),
        ("after the staleness marker", t(STALE_AT) + 1_000),
        ("after the late start", t(LATE_START) + 20_000),
    ];

    // Debian's Prometheus is 2.42: the engine is compared under Prometheus 2's semantics
    // (Prometheus 3's are checked on its own test files, `promqltest.rs`).
    let opts = EvalOptions {
        semantics: Semantics::V2,
        ..EvalOptions::default()
    };
    let mut compared = 0;
    let mut failures = Vec::new();
    let (mut empty, mut errors) = (0, 0);
    for text in EXPRESSIONS {
        let expr =
            promql::parse_with(text, Semantics::V2).unwrap_or_else(|e| panic!("{text}: {e}"));
        for (what, at) in times {
            let result = promql::evaluate(&expr, at, &source, &opts);
            let our_order = match &result {
                Ok(Value::Vector(v)) => Some(v.iter().map(|(l, _)| label_map(l)).collect()),
                _ => None,
            };
            let ours = prophet_outcome(result);
            let url = format!(
                "{base}/api/v1/query?query={}&time={}.{:03}",
                percent_encode(text),
                at.div_euclid(1000),
                at.rem_euclid(1000)
            );
            let body: serde_json::Value =
                client.get(&url).send().await.unwrap().json().await.unwrap();
            let theirs = prometheus_outcome(&body);
            compared += 1;
            match &theirs {
                Outcome::Error(_) => errors += 1,
                Outcome::Vector(v) if v.is_empty() => empty += 1,
                Outcome::Matrix(m) if m.is_empty() => empty += 1,
                _ => {}
            }
            if let Some(d) = diff(&ours, &theirs) {
                failures.push(format!("{text} at {what} ({at}):\n{d}"));
            } else if ordered(text) {
                let their_order: Option<Vec<BTreeMap<String, String>>> = body["data"]["result"]
                    .as_array()
                    .map(|r| r.iter().map(|e| metric(&e["metric"])).collect());
                if our_order != their_order {
                    failures.push(format!(
                        "{text} at {what} ({at}): the order differs\n  prophet    {our_order:?}\n  prometheus {their_order:?}"
                    ));
                }
            }
        }
    }
    println!(
        "{} of {compared} evaluations ({} expressions × {} times) agree with Prometheus",
        compared - failures.len(),
        EXPRESSIONS.len(),
        times.len()
    );
    println!("Prometheus answered {empty} of them with nothing and {errors} with an error");
    // Guards against a test that compares nothing: most answers must have content.
    assert!(
        empty + errors < compared / 5,
        "too many empty answers ({empty}) or errors ({errors}): is the data set in Prometheus?"
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} evaluations differ from Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
