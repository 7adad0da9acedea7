//! Shared test helpers: an in-process Prophet (the real pipeline and HTTP router, driven
//! with `tower::ServiceExt::oneshot`) and remote-write request builders from prost types.
#![allow(dead_code)]

pub mod counting;
pub mod k8s;
pub mod process;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use prophet::eval::{Evaluator, Outcome};
use prophet::ingest::{self, Limits, Protocol, SnappyBuffer};
use prophet::proto::{v1, v2};
use prophet::route::Batch;
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::load::parse_documents;
use prophet::standalone::{Pipeline, PipelineConfig};
use prost::Message;
use tower::ServiceExt;

pub const V1: &str = "application/x-protobuf";
pub const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// An in-process Prophet on the given rule YAML.
pub struct App {
    pub pipeline: Pipeline,
    pub router: axum::Router,
}

pub fn start(rules_yaml: &str) -> App {
    start_with(rules_yaml, PipelineConfig::default())
}

pub fn start_with(rules_yaml: &str, config: PipelineConfig) -> App {
    let (rules, invalid) = parse_documents(rules_yaml, std::path::Path::new("test"));
    let report = prophet::rules::load::LoadReport { rules, invalid };
    let pipeline = Pipeline::start(&report, &config).expect("pipeline starts");
    let router = prophet::http::router(pipeline.state.clone());
    App { pipeline, router }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl App {
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// POSTs a body to /api/v1/write with the given Content-Type (None: no header).
    pub async fn write(&self, content_type: Option<&str>, body: Vec<u8>) -> Answer {
        let mut request = Request::post("/api/v1/write").header("content-encoding", "snappy");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let answer = self
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    /// Decisions are made by the reconcile task after the evaluator acknowledged the
    /// batch; this waits (bounded) until at least `n` are recorded, then a little longer so
    /// that an unexpected extra decision would show too, and returns them all.
    pub async fn wait_decisions(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            if self.decisions().await.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.decisions().await
    }

    pub async fn decisions(&self) -> Vec<serde_json::Value> {
        self.get_json("/api/v1/decisions").await["decisions"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The live view of one rule from /api/v1/rules.
    pub async fn rule(&self, name: &str) -> serde_json::Value {
        rule_named(&self.get_json("/api/v1/rules").await, name)
    }

    pub async fn metrics(&self) -> String {
        self.send(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .body
    }
}

/// `GET http://{addr}/metrics` of a running process (Prophet's or Prometheus's own).
pub async fn scrape(client: &reqwest::Client, addr: &str) -> String {
    client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample line starting with `series` in an exposition (0 when absent).
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A 1.0 series from label pairs and (timestamp, value) samples.
pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> v1::TimeSeries {
    v1::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| v1::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| v1::Sample { value, timestamp })
            .collect(),
        ..Default::default()
    }
}

/// A snappy-compressed 1.0 request.
pub fn v1_body(timeseries: Vec<v1::TimeSeries>) -> Vec<u8> {
    snappy(
        &v1::WriteRequest {
            timeseries,
            metadata: Vec::new(),
        }
        .encode_to_vec(),
    )
}

/// A snappy-compressed 2.0 request from label pairs and samples, with a fresh symbol table.
/// A series for [`v2_body`]: label pairs and (timestamp, value) samples.
pub type SeriesSpec<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

pub fn v2_body(series: &[SeriesSpec<'_>]) -> Vec<u8> {
    let mut symbols = vec![String::new()];
    let refs = |s: &str, symbols: &mut Vec<String>| -> u32 {
        if let Some(i) = symbols.iter().position(|x| x == s) {
            return i as u32;
        }
        symbols.push(s.to_owned());
        symbols.len() as u32 - 1
    };
    let timeseries = series
        .iter()
        .map(|(labels, samples)| v2::TimeSeries {
            labels_refs: labels
                .iter()
                .flat_map(|(n, v)| [refs(n, &mut symbols), refs(v, &mut symbols)])
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| v2::Sample {
                    value,
                    timestamp,
                    start_timestamp: 0,
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    snappy(
        &v2::Request {
            symbols,
            timeseries,
        }
        .encode_to_vec(),
    )
}

pub fn snappy(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(bytes).unwrap()
}

/// One AnomalyAction threshold rule.
pub fn threshold_rule(name: &str, metric: &str, threshold: &str, extra: &str) -> String {
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  metric: '{metric}'\n  threshold: '{threshold}'\n  remediation: {{type: restart, cooldownSeconds: 300}}\n{extra}---\n"
    )
}

/// One AnomalyAction band rule on `metric`: `algorithm` at 3 σ (or scaled MADs) over
/// `window` of history, no verdict before `min_samples`, acting without cooldown.
pub fn band_rule(
    name: &str,
    metric: &str,
    algorithm: &str,
    window: &str,
    min_samples: usize,
    extra: &str,
) -> String {
    // `clearAfter: 0s`: these rules clear at the first normal value, which is what the
    // recounts they are checked against do; hysteresis is tested on its own.
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  metric: {metric}\n  detection: {{algorithm: {algorithm}, sensitivity: 3, window: {window}, minSamples: {min_samples}, clearAfter: 0s}}\n  remediation: {{type: alert, cooldownSeconds: 0}}\n{extra}---\n"
    )
}

/// The rule called `name` in an /api/v1/rules answer.
pub fn rule_named(rules: &serde_json::Value, name: &str) -> serde_json::Value {
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["name"] == name)
        .unwrap_or_else(|| panic!("rule {name} in {rules}"))
        .clone()
}

/// An evaluator for the rules in `yaml`, which must all load and compile.
pub fn evaluator(yaml: &str) -> Evaluator {
    let (rules, invalid) = parse_documents(yaml, std::path::Path::new("test"));
    assert!(invalid.is_empty(), "{invalid:?}");
    let compiled = rules
        .iter()
        .map(|r| compile(r, CompileOptions::default()).unwrap())
        .collect();
    Evaluator::new(compiled, 100_000)
}

/// Decodes a snappy remote-write 1.0 `body`, routes it with the evaluator's own router
/// and applies it, as the receiver does when its clock reads `now_ms`.
pub fn apply_v1(evaluator: &mut Evaluator, body: &[u8], now_ms: i64) -> Outcome {
    let router = evaluator.router(1);
    let mut buffer = SnappyBuffer::new();
    let decoded = buffer.decompress(body, 256 << 20).unwrap();
    let mut batch = Batch::new(std::time::Instant::now(), now_ms, usize::MAX);
    ingest::decode(Protocol::V1, decoded, &Limits::default(), now_ms, |s| {
        router.route(s, &mut batch)
    })
    .unwrap();
    evaluator.apply(&batch)
}

/// A deterministic uniform noise in [-1, 1] (a linear congruential generator).
pub struct Noise(pub u64);

impl Noise {
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// `n` values: `level(i)` plus that noise.
pub fn noisy(n: usize, seed: u64, level: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut noise = Noise(seed);
    (0..n).map(|i| level(i) + noise.next()).collect()
}

/// A decision as the tests compare them: rule name, change, series, sample time.
pub type Decision = (String, String, String, i64);

/// Applies `bodies` in turn, as the receiver does when its clock reads `now_ms`, and
/// returns every decision.
pub fn decisions(evaluator: &mut Evaluator, bodies: &[Vec<u8>], now_ms: i64) -> Vec<Decision> {
    let mut all = Vec::new();
    for body in bodies {
        for v in apply_v1(evaluator, body, now_ms).verdicts {
            all.push((
                v.rule.name.clone(),
                format!("{:?}", v.change),
                v.series.to_string(),
                v.sample_time_ms,
            ));
        }
    }
    all
}

/// Remote-writes `series` (protocol 1.0) to a running Prophet; the request must be
/// accepted.
pub async fn remote_write(addr: &str, series: Vec<prophet::proto::v1::TimeSeries>) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/write"))
        .header("Content-Type", V1)
        .header("Content-Encoding", "snappy")
        .body(v1_body(series))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());
}

/// One sample of a pod's `container_memory_working_set_bytes`.
pub fn pod_memory(
    namespace: &str,
    pod: &str,
    at: i64,
    bytes: f64,
) -> prophet::proto::v1::TimeSeries {
    series(
        &[
            ("__name__", "container_memory_working_set_bytes"),
            ("namespace", namespace),
            ("pod", pod),
        ],
        &[(at, bytes)],
    )
}
