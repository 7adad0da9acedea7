//! An HA pair of real Prometheus servers (Debian's 2.42), identical but for their
//! `__replica__` external label, scraping the same target and remote-writing to the real
//! `prophet` binary: one replica's samples are accepted, so a sum over the series is not
//! doubled and a series trips once; when the elected replica is stopped (by its pid), the
//! other is elected after the failover timeout and the rules go on with its samples.
//!
//! Needs `/usr/bin/prometheus` (`apt-get install prometheus`; `.ci/run` installs it).

use crate::common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::metric;
use common::process::{Running, free_port};

use super::e2e_prometheus::{get_json, wait_decision};

const RULES: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: target-up, namespace: default}
spec:
  metric: up{job="prophet"}
  threshold: "== 1"
  remediation: {type: alert}
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: targets-up, namespace: default}
spec:
  metric: sum(up{job="prophet"})
  threshold: ">= 1"
  remediation: {type: alert}
"#;

/// One replica: scrapes Prophet itself every second and writes to it.
fn start_replica(dir: &std::path::Path, prophet: &str, replica: &str) -> Running {
    let dir = dir.join(replica);
    std::fs::create_dir(&dir).unwrap();
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  external_labels: {{cluster: e2e, __replica__: {replica}}}
scrape_configs:
  - job_name: prophet
    static_configs: [{{targets: ["{prophet}"]}}]
remote_write:
  - url: http://{prophet}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
"#
    );
    common::process::start_prometheus(&dir, free_port(), &config)
}

fn decisions_about<'d>(decisions: &'d serde_json::Value, rule: &str) -> Vec<&'d serde_json::Value> {
    decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["rule"]["name"] == rule)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_pair_counts_once_and_fails_over_when_its_elected_replica_stops() {
    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = common::process::rules_folder(dir.path(), "ha.yaml", RULES);
    let (_prophet, addr, log) = common::process::start_prophet(
        &[
            "run",
            "--rules",
            rules.to_str().unwrap(),
            "--ha-failover-timeout",
            "6s",
        ],
        &[],
    );
    let names = ["a", "b"];
    let mut replicas = names.map(|name| Some(start_replica(dir.path(), &addr, name)));
    let client = common::process::http_client();

    // The first replica heard from is elected.
    let elected_line = common::process::wait_line(&log, "HA cluster heard from first");
    let elected = usize::from(!elected_line.contains(r#"replica=__replica__="a""#));
    let other_name = names[1 - elected];
    assert!(
        elected_line.contains(&format!(r#"replica=__replica__="{}""#, names[elected])),
        "{elected_line}"
    );

    // One series, one trip, and a sum that is not doubled.
    let trip = wait_decision(&client, &addr, "target-up").await;
    assert_eq!(trip["verdict"], "tripped", "{trip}");
    assert_eq!(trip["series"]["cluster"], "e2e", "{trip}");
    assert!(trip["series"].get("__replica__").is_none(), "{trip}");
    let sum = wait_decision(&client, &addr, "targets-up").await;
    assert_eq!(sum["value"], "1", "one target, counted once: {sum}");
    // Both replicas are writing: the other's samples are dropped as duplicates.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        &common::scrape(&client, &addr).await,
        r#"prophet_ha_samples_total{result="duplicate"}"#,
    ) == 0.0
    {
        assert!(Instant::now() < deadline, "no duplicate samples counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rules_view = get_json(&client, &format!("http://{addr}/api/v1/rules"))
        .await
        .unwrap();
    let plain = common::rule_named(&rules_view, "target-up");
    assert_eq!(plain["series"], 1, "both replicas' series are one: {plain}");

    // Stop the elected replica; the other takes over once it has been silent for 6 s (a
    // timeout well above the replicas' 1 s send interval, even on a loaded machine).
    let mut stopped = replicas[elected].take().unwrap();
    stopped.0.kill().unwrap();
    stopped.0.wait().unwrap();
    let stopped_ms = now_ms();
    let failover = common::process::wait_line(&log, "HA failover");
    assert!(
        failover.contains(&format!(r#"to=__replica__="{other_name}""#)),
        "{failover}"
    );
    let silent: f64 = failover
        .split("silent_s=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{failover}"));
    assert!(silent > 6.0, "failed over after {silent} s: {failover}");

    // The rules go on with the survivor's samples: the sum is evaluated after the stop,
    // still 1, and nothing cleared or tripped again.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = get_json(&client, &format!("http://{addr}/api/v1/rules")).await;
        let values = view
            .as_ref()
            .map(|v| common::rule_named(v, "targets-up")["values"].clone());
        let at = values.as_ref().and_then(|v| v["atMs"].as_i64());
        if let (Some(values), Some(at)) = (&values, at)
            && at > stopped_ms + 8_000
        {
            assert_eq!(values["resultCount"], 1, "{values}");
            assert_eq!(values["results"][0]["value"], "1", "{values}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no evaluation after the failover: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let decisions = get_json(&client, &format!("http://{addr}/api/v1/decisions"))
        .await
        .unwrap();
    for rule in ["target-up", "targets-up"] {
        let about = decisions_about(&decisions, rule);
        assert_eq!(about.len(), 1, "one decision about {rule}: {about:?}");
    }
    let metrics = common::scrape(&client, &addr).await;
    assert_eq!(
        metric(&metrics, "prophet_ha_failovers_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "prophet_ha_clusters"), 1.0, "{metrics}");
    assert!(
        metric(&metrics, r#"prophet_ha_samples_total{result="accepted"}"#) > 0.0,
        "{metrics}"
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Over HTTP, in process: the other replica's request is answered 202 with the reason,
/// its samples counted as duplicates and kept out of the rule; the elected replica's
/// series is kept without its replica label.
#[tokio::test]
async fn the_other_replicas_request_is_acknowledged_and_dropped() {
    let app = common::start(&common::threshold_rule(
        "mem",
        "container_memory_working_set_bytes",
        "> 1Gi",
        "",
    ));
    let t = common::now_ms();
    let replica = |name: &str, at: i64, value: f64| {
        common::v1_body(vec![common::series(
            &[
                ("__name__", "container_memory_working_set_bytes"),
                ("namespace", "default"),
                ("pod", "a"),
                ("prometheus", "monitoring/k8s"),
                ("prometheus_replica", name),
            ],
            &[(at, value)],
        )])
    };
    let answer = app
        .write(Some(common::V1), replica("prometheus-k8s-0", t, 1.0))
        .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    let answer = app
        .write(Some(common::V1), replica("prometheus-k8s-1", t + 1, 2e12))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert!(
        answer.body.contains(r#"samples of replica {prometheus_replica="prometheus-k8s-1"} dropped, the elected replica is {prometheus_replica="prometheus-k8s-0"}"#),
        "{}",
        answer.body
    );
    let rule = app.rule("mem").await;
    assert_eq!(rule["counters"]["samples"], 1, "{rule}");
    assert!(
        rule["trippedSeries"].as_array().unwrap().is_empty(),
        "{rule}"
    );
    // The elected replica trips the rule; its series has no replica label.
    let answer = app
        .write(Some(common::V1), replica("prometheus-k8s-0", t + 2, 2e12))
        .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["series"]["prometheus"], "monitoring/k8s");
    assert!(decisions[0]["series"].get("prometheus_replica").is_none());
    let metrics = app.metrics().await;
    for line in [
        r#"prophet_ha_samples_total{result="accepted"} 2"#,
        r#"prophet_ha_samples_total{result="duplicate"} 1"#,
        r#"prophet_remote_write_samples_total{result="duplicate"} 1"#,
        r#"prophet_remote_write_requests_total{version="1.0",code="202"} 1"#,
        "prophet_ha_clusters 1",
        "prophet_ha_failovers_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}
