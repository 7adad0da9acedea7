//! End to end with real components: Debian's Prometheus scrapes itself and remote-writes
//! to the real `prophet` binary in standalone mode; a threshold rule on that data must
//! trip, and the decision must name the series' labels and value; a rule over a PromQL
//! expression must trip with the value Prometheus itself gives for that expression at
//! that time.
//!
//! Needs `/usr/bin/prometheus` (`apt-get install prometheus`; `.ci/run` installs it).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Running, free_port, percent_encode};

/// Starts `prophet run` on a free port; returns it and the address it reports. Its
/// PromQL is Prometheus 2's, as the Prometheus it is compared with is Debian's 2.42.
fn start_prophet(rules: &Path) -> (Running, String) {
    let rules = rules.to_str().expect("a UTF-8 temp path");
    let (prophet, addr, _) =
        common::process::start_prophet(&["run", "--rules", rules, "--promql-semantics", "2"], &[]);
    (prophet, addr)
}

/// Starts Prometheus remote-writing to `prophet`; returns it and its HTTP port.
fn start_prometheus(dir: &Path, prophet: &str) -> (Running, u16) {
    start_prometheus_with(
        dir,
        prophet,
        r#"
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels: {namespace: default, pod: prometheus-0}
"#,
    )
}

/// Starts Prometheus scraping every second with `scrape_configs` (where `{port}` is its
/// own port) and remote-writing to `prophet`; returns it and its HTTP port.
pub(crate) fn start_prometheus_with(
    dir: &Path,
    prophet: &str,
    scrape_configs: &str,
) -> (Running, u16) {
    let port = free_port();
    let scrape_configs = scrape_configs.replace("{port}", &port.to_string());
    let config = format!(
        r#"
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
{scrape_configs}
remote_write:
  - url: http://{prophet}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
"#
    );
    (common::process::start_prometheus(dir, port, &config), port)
}

pub(crate) fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> impl Future<Output = Option<serde_json::Value>> {
    let request = client.get(url).timeout(Duration::from_secs(5)).send();
    async move { request.await.ok()?.json().await.ok() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_trips_a_threshold_rule() {
    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = common::process::rules_folder(
        dir.path(),
        "e2e.yaml",
        r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: prometheus-up, namespace: default}
spec:
  metric: up{job="prometheus"}
  threshold: "== 1"
  for: 2s
  remediation: {type: restart, podSelector: {app: prometheus}, cooldownSeconds: 300}
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: ingest-rate, namespace: default}
spec:
  metric: 'sum by (namespace, pod) (rate(prometheus_tsdb_head_samples_appended_total[5s]))'
  threshold: "> 0"
  remediation: {type: alert}
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: never-loaded, namespace: default}
spec:
  metric: up
  threshold: "=> 1"
  remediation: {type: alert}
"#,
    );
    let (_prophet, addr) = start_prophet(&rules);
    let (_prometheus, prometheus_port) = start_prometheus(dir.path(), &addr);
    let client = common::process::http_client();

    let rules_view = get_json(&client, &format!("http://{addr}/api/v1/rules"))
        .await
        .expect("rules endpoint");
    let invalid = rules_view["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["name"] == "never-loaded")
        .unwrap();
    assert_eq!(invalid["state"], "invalid", "{rules_view}");

    let decision = wait_decision(&client, &addr, "prometheus-up").await;
    assert_eq!(decision["verdict"], "tripped", "{decision}");
    assert_eq!(decision["action"], "restart");
    assert_eq!(decision["outcome"], "act");
    assert_eq!(decision["dryRun"], true);
    assert_eq!(decision["value"], "1");
    let series = &decision["series"];
    assert_eq!(series["__name__"], "up");
    assert_eq!(series["job"], "prometheus");
    assert_eq!(series["pod"], "prometheus-0");
    assert!(
        series["instance"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{series}"
    );
    assert_eq!(
        decision["targets"],
        serde_json::json!([{"namespace": "default", "name": "prometheus-0"}])
    );
    let sample_ms = decision["sampleTimeMs"].as_i64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - sample_ms).abs() < 120_000,
        "sample time is the scrape's"
    );
    assert!(decision["reason"].as_str().unwrap().contains("== 1"));

    // The expression rule: its value is what Prometheus answers for the same expression
    // at the same time, from the same samples.
    let decision = wait_decision(&client, &addr, "ingest-rate").await;
    assert_eq!(decision["verdict"], "tripped", "{decision}");
    assert_eq!(decision["targets"][0]["name"], "prometheus-0", "{decision}");
    let value: f64 = decision["value"].as_str().unwrap().parse().unwrap();
    let at = decision["sampleTimeMs"].as_i64().unwrap();
    assert_eq!(at % 15_000, 0, "evaluated at a step boundary");
    let query = "sum by (namespace, pod) (rate(prometheus_tsdb_head_samples_appended_total[5s]))";
    let answer = client
        .get(format!(
            "http://127.0.0.1:{prometheus_port}/api/v1/query?query={}&time={}",
            percent_encode(query),
            at as f64 / 1000.0
        ))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let theirs: f64 = answer["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap();
    assert!(
        ((value - theirs) / theirs).abs() <= 1e-9,
        "Prophet {value} vs Prometheus {theirs} at {at}: {answer}"
    );

    let metrics = common::scrape(&client, &addr).await;
    assert!(
        metrics.contains(r#"prophet_remote_write_requests_total{version="1.0",code="204"}"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"code="400""#),
        "Prometheus's own requests must all be accepted:\n{metrics}"
    );
}

/// The first decision about `rule`, waiting up to 90 s.
pub(crate) async fn wait_decision(
    client: &reqwest::Client,
    addr: &str,
    rule: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let decisions = get_json(client, &format!("http://{addr}/api/v1/decisions")).await;
        let found = decisions.as_ref().and_then(|d| {
            d["decisions"]
                .as_array()?
                .iter()
                .find(|d| d["rule"]["name"] == rule)
                .cloned()
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no decision about {rule} within 90 s; last answer: {decisions:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
