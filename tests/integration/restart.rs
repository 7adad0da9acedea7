//! `--state-dir`: the real binary is stopped (SIGTERM) mid-stream and started again. The
//! SLO's error budget continues from where it was, a tripped series stays tripped without
//! a second decision, and a corrupt state file is reported and set aside, never fatal.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Running, free_port};
use common::*;

const RULES: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {name: checkout, namespace: default}
spec:
  sloName: checkout-availability
  sloTarget: "99%"
  errorBudgetThreshold: 0.1
  period: 1h
  sli:
    ratio:
      errors: http_requests_total{job="checkout", code=~"5.."}
      total: http_requests_total{job="checkout"}
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: deep-queue, namespace: default}
spec:
  metric: queue_depth
  threshold: "> 10"
  remediation: {type: restart, cooldownSeconds: 0}
"#;

struct Prophet {
    process: Running,
    base: String,
    client: reqwest::Client,
}

async fn start_prophet(rules: &Path, state: &Path) -> Prophet {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_prophet"))
        .args(["run", "--rules"])
        .arg(rules)
        .arg("--state-dir")
        .arg(state)
        .args(["--state-interval", "1s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prophet starts");
    let prophet = Prophet {
        process: Running(child),
        base: format!("http://127.0.0.1:{port}"),
        client: common::process::http_client(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = prophet
            .client
            .get(format!("{}/readyz", prophet.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return prophet;
        }
        assert!(Instant::now() < deadline, "prophet did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Prophet {
    async fn write(&self, body: Vec<u8>) {
        let response = self
            .client
            .post(format!("{}/api/v1/write", self.base))
            .header("Content-Type", V1)
            .header("Content-Encoding", "snappy")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn rule(&self, name: &str) -> serde_json::Value {
        rule_named(&self.get("/api/v1/rules").await, name)
    }

    /// The decisions about `rule` once there are at least `n` (reconcile runs behind the
    /// evaluator), after a grace period in which any further ones would show.
    async fn decisions(&self, rule: &str, n: usize) -> Vec<serde_json::Value> {
        let fetch = || async {
            self.get("/api/v1/decisions").await["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["rule"]["name"] == rule)
                .cloned()
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while fetch().await.len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        fetch().await
    }

    /// SIGTERM, as Kubernetes stops a pod, and wait for the graceful exit.
    fn stop(mut self) {
        let pid = self.process.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                assert!(status.success(), "prophet exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "prophet did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One minute of traffic ending at `t`: the counters' values then, and the queue depth.
fn minute(t: i64, ok: f64, errors: f64, queue: f64) -> Vec<u8> {
    let requests = |code: &str, value: f64| {
        series(
            &[
                ("__name__", "http_requests_total"),
                ("code", code),
                ("job", "checkout"),
            ],
            &[(t, value)],
        )
    };
    v1_body(vec![
        requests("200", ok),
        requests("500", errors),
        series(
            &[
                ("__name__", "queue_depth"),
                ("namespace", "default"),
                ("pod", "worker-0"),
            ],
            &[(t, queue)],
        ),
    ])
}

async fn budget(prophet: &Prophet) -> f64 {
    let rule = prophet.rule("checkout").await;
    rule["slo"]["budgetRemaining"]
        .as_f64()
        .unwrap_or_else(|| panic!("{rule}"))
}

#[tokio::test]
async fn a_restart_keeps_the_error_budget_and_tripped_series() {
    let dir = tempfile::tempdir().unwrap();
    let rules = common::process::rules_folder(dir.path(), "rules.yaml", RULES);
    let state = dir.path().join("state");
    // Each minute's last millisecond: an SLO is judged at each minute boundary over the
    // minutes before it, once its series have reached it.
    let t0 = (now_ms() - 10 * 60_000).div_euclid(60_000) * 60_000 - 1;

    let prophet = start_prophet(&rules, &state).await;
    // Baselines, then 1000 requests with 5 errors: 0.5% against a 1% budget.
    prophet.write(minute(t0, 5_000.0, 10.0, 1.0)).await;
    prophet
        .write(minute(t0 + 60_000, 5_995.0, 15.0, 50.0))
        .await;
    assert!((budget(&prophet).await - 0.5).abs() < 1e-9);
    let decisions = prophet.decisions("deep-queue", 1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["verdict"], "tripped");
    prophet.stop();
    assert!(state.join("evaluator.state").exists());

    let prophet = start_prophet(&rules, &state).await;
    // 1000 more requests, no errors: the saved counter values are the baselines, so the
    // period holds 5 errors in 2000 requests.
    prophet
        .write(minute(t0 + 120_000, 6_995.0, 15.0, 60.0))
        .await;
    assert!(
        (budget(&prophet).await - 0.75).abs() < 1e-9,
        "{}",
        prophet.rule("checkout").await
    );
    // The queue is still deep: it was tripped before the restart and still is; no new
    // decision (in a cluster, no second restart of the pod).
    prophet
        .write(minute(t0 + 180_000, 7_995.0, 15.0, 5.0))
        .await;
    let decisions = prophet.decisions("deep-queue", 1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["verdict"], "cleared", "{decisions:#?}");
    prophet.stop();
}

#[tokio::test]
async fn a_corrupt_state_file_is_reported_set_aside_and_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let rules = common::process::rules_folder(dir.path(), "rules.yaml", RULES);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let file = state.join("evaluator.state");
    std::fs::write(&file, b"PROPHETS\x01\x00\x00\x00 not really a state file").unwrap();

    let prophet = start_prophet(&rules, &state).await;
    assert_eq!(prophet.rule("checkout").await["state"], "active");
    assert!(state.join("evaluator.state.unusable").exists());
    let t0 = (now_ms() - 5 * 60_000).div_euclid(60_000) * 60_000 - 1;
    prophet.write(minute(t0, 5_000.0, 10.0, 1.0)).await;
    prophet.write(minute(t0 + 60_000, 5_995.0, 15.0, 1.0)).await;
    assert!((budget(&prophet).await - 0.5).abs() < 1e-9);
    prophet.stop();
    // The next save wrote a good file.
    let prophet = start_prophet(&rules, &state).await;
    prophet
        .write(minute(t0 + 120_000, 6_995.0, 15.0, 1.0))
        .await;
    assert!((budget(&prophet).await - 0.75).abs() < 1e-9);
    prophet.stop();
}

/// The default detector's learnt state (days of it) survives a restart with
/// `--state-dir`: replayed with an export and restore on its third day, a series gives
/// the same verdicts as without, and a level shift right after the restart trips at once
/// (a detector starting afresh would wait two days).
#[test]
fn a_likelihood_rule_keeps_what_it_learnt_across_a_restart() {
    let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: r, namespace: shop}\nspec:\n  metric: m\n  detection: {}\n  remediation: {type: alert}\n";
    let base = 1_700_000_040_000i64;
    let restart = 2 * 288 + 200;
    let shift = restart + 3;
    let replay = |restart_at: Option<i64>| {
        let mut ev = evaluator(yaml);
        let mut changes = Vec::new();
        for i in 0..shift + 20 {
            if Some(i) == restart_at {
                let saved = ev.export();
                let json = serde_json::to_vec(&saved).unwrap();
                ev = evaluator(yaml);
                ev.restore(serde_json::from_slice(&json).unwrap(), 1, i64::MAX);
            }
            let t = base + i * 300_000;
            let v = 100.0
                + 20.0 * (std::f64::consts::TAU * i as f64 / 288.0).sin()
                + ((i * 7919) % 13) as f64 * 0.1
                + if i >= shift { 20.0 } else { 0.0 };
            let body = v1_body(vec![series(&[("__name__", "m"), ("pod", "a")], &[(t, v)])]);
            for verdict in apply_v1(&mut ev, &body, t).verdicts {
                changes.push((
                    verdict.change.as_str().to_owned(),
                    (verdict.sample_time_ms - base) / 300_000,
                ));
            }
        }
        changes
    };
    let straight = replay(None);
    assert_eq!(
        straight.first(),
        Some(&("tripped".to_owned(), shift)),
        "{straight:?}"
    );
    assert_eq!(replay(Some(restart)), straight);
}
