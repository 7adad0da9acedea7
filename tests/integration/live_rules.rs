//! Live rule changes: a rule set replaced while running keeps the state of the rules
//! whose inputs did not change, drops what was removed, and never applies a batch routed
//! under the old set; standalone mode re-reads its folder when a file changes, when a
//! mounted ConfigMap swaps its `..data` link, and on SIGHUP (which no longer ends the
//! process).

use crate::common;
use crate::common::process::{start_prophet, wait_line};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prophet::eval::SubmitError;
use prophet::ingest::{self, Limits, Protocol, SnappyBuffer};
use prophet::route::Batch;
use prophet::rules::load::{LoadReport, parse_documents};

fn report(yaml: &str) -> LoadReport {
    let (rules, invalid) = parse_documents(yaml, Path::new("test"));
    assert!(invalid.is_empty(), "{invalid:?}");
    LoadReport { rules, invalid }
}

fn memory_rule(name: &str, threshold: &str, cooldown: u32) -> String {
    format!(
        r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: {name}, namespace: default}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "{threshold}"
  remediation: {{type: alert, cooldownSeconds: {cooldown}}}
"#
    )
}

fn tripped(rule: &serde_json::Value) -> usize {
    rule["trippedSeries"].as_array().map_or(0, Vec::len)
}

fn memory(pod: &str, at: i64, bytes: f64) -> prophet::proto::v1::TimeSeries {
    common::series(
        &[
            ("__name__", "container_memory_working_set_bytes"),
            ("namespace", "default"),
            ("pod", pod),
        ],
        &[(at, bytes)],
    )
}

#[tokio::test]
async fn an_edit_that_keeps_the_inputs_keeps_the_state_and_a_removal_forgets() {
    let app = common::start(&memory_rule("memory", "> 1Gi", 300));
    let now = common::now_ms();
    let answer = app
        .write(
            Some(common::V1),
            common::v1_body(vec![memory("web-1", now, 2e9)]),
        )
        .await;
    assert_eq!(answer.status, 204);
    assert_eq!(tripped(&app.rule("memory").await), 1);

    // The cooldown changes, the selector does not: still tripped, no second decision.
    let edited = memory_rule("memory", "> 1Gi", 600) + "---\n" + &memory_rule("other", "> 5Gi", 60);
    app.pipeline.apply_rules(&report(&edited)).await.unwrap();
    assert_eq!(tripped(&app.rule("memory").await), 1);
    assert_eq!(tripped(&app.rule("other").await), 0);
    let answer = app
        .write(
            Some(common::V1),
            common::v1_body(vec![memory("web-1", now + 15_000, 2.1e9)]),
        )
        .await;
    assert_eq!(answer.status, 204);
    // A barrier: web-2 trips both rules. Decisions are made in the order of the verdicts,
    // so once its two are there, a second decision about web-1 would be too.
    let answer = app
        .write(
            Some(common::V1),
            common::v1_body(vec![memory("web-2", now + 30_000, 6e9)]),
        )
        .await;
    assert_eq!(answer.status, 204);
    let decisions = app.wait_decisions(3).await;
    let about_web_1 = decisions
        .iter()
        .filter(|d| d["series"]["pod"] == "web-1")
        .count();
    assert_eq!(about_web_1, 1, "one trip, one decision: {decisions:?}");
    assert_eq!(decisions.len(), 3, "{decisions:?}");

    // Removed: gone from the rules endpoint and from routing.
    app.pipeline
        .apply_rules(&report(&memory_rule("other", "> 5Gi", 60)))
        .await
        .unwrap();
    let rules = app.get_json("/api/v1/rules").await;
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["other"]);
}

#[tokio::test]
async fn a_batch_routed_under_the_old_rules_is_refused_for_a_retry() {
    let app = common::start(&memory_rule("memory", "> 1Gi", 300));
    let state = app.pipeline.state.clone();
    let old_router = state.current_router();
    let now = common::now_ms();
    let body = common::v1_body(vec![memory("web-1", now, 2e9)]);
    let mut buffer = SnappyBuffer::new();
    let decoded = buffer.decompress(&body, 1 << 20).unwrap();
    let mut batch = Batch::new(Instant::now(), now, usize::MAX);
    ingest::decode(Protocol::V1, decoded, &Limits::default(), now, |s| {
        old_router.route(s, &mut batch)
    })
    .unwrap();
    assert_eq!(batch.entries.len(), 1);

    app.pipeline
        .apply_rules(&report(&memory_rule("memory", "> 1Gi", 300)))
        .await
        .unwrap();
    let applied = state.eval.submit(batch).unwrap().await.unwrap();
    assert_eq!(applied, Err(SubmitError::RulesChanged));
    assert_eq!(
        tripped(&app.rule("memory").await),
        0,
        "nothing of it applied"
    );

    // Over HTTP the same request now routes under the new set and is applied.
    let answer = app.write(Some(common::V1), body).await;
    assert_eq!(answer.status, 204);
    assert_eq!(tripped(&app.rule("memory").await), 1);
}

async fn rule_names(addr: &str) -> Vec<String> {
    let rules: serde_json::Value = reqwest::get(format!("http://{addr}/api/v1/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Waits (bounded) until the rules endpoint lists exactly `names`.
async fn wait_rules(addr: &str, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rule_names(addr).await;
        if now == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rules are {now:?}, not {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lays out `files` as a mounted ConfigMap does: a timestamped folder, a `..data` link to
/// it, and a link per file into `..data`.
fn configmap_version(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let versioned = dir.join(version);
    std::fs::create_dir(&versioned).unwrap();
    for (name, text) in files {
        std::fs::write(versioned.join(name), text).unwrap();
    }
    // The swap is atomic: a new link renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_folder_is_reread_on_change_on_a_configmap_swap_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    configmap_version(
        dir.path(),
        "..2026_12_06_01",
        &[("rules.yaml", &memory_rule("first", "> 1Gi", 300))],
    );
    let rules = dir.path().to_str().unwrap();
    let (mut prophet, addr, lines) = start_prophet(&["run", "--rules", rules], &[]);
    wait_rules(&addr, &["first"]).await;

    // The ConfigMap is updated: a new version behind `..data`.
    configmap_version(
        dir.path(),
        "..2026_12_06_02",
        &[(
            "rules.yaml",
            &(memory_rule("first", "> 1Gi", 300) + "---\n" + &memory_rule("second", "> 2Gi", 300)),
        )],
    );
    wait_rules(&addr, &["first", "second"]).await;

    // A plain file added beside it.
    std::fs::write(
        dir.path().join("third.yaml"),
        memory_rule("third", "> 3Gi", 300),
    )
    .unwrap();
    wait_rules(&addr, &["first", "second", "third"]).await;

    // SIGHUP re-reads (and no longer ends the process).
    let status = Command::new("kill")
        .args(["-HUP", &prophet.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_line(&lines, "re-reading the rules: SIGHUP");
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(prophet.0.try_wait().unwrap().is_none(), "still running");
    wait_rules(&addr, &["first", "second", "third"]).await;
}

/// Cluster mode learns its rules after it starts: saved state waits for them, so a
/// restart keeps a rule's tripped series (and a 30-day budget), also across a restart
/// during which no rule set arrived at all.
#[tokio::test]
async fn saved_state_waits_for_rules_that_arrive_after_the_start() {
    use prophet::standalone::{Pipeline, PipelineConfig, dry_run_driver};
    let dir = tempfile::tempdir().unwrap();
    let config = PipelineConfig {
        state_dir: Some(dir.path().to_path_buf()),
        ..PipelineConfig::default()
    };
    let start = || {
        let pipeline =
            Pipeline::start_with(&LoadReport::default(), &config, dry_run_driver(), true).unwrap();
        let router = prophet::http::router(pipeline.state.clone());
        common::App { pipeline, router }
    };
    let rules = report(&memory_rule("memory", "> 1Gi", 300));

    let first = start();
    first.pipeline.apply_rules(&rules).await.unwrap();
    let answer = first
        .write(
            Some(common::V1),
            common::v1_body(vec![memory("web-1", common::now_ms(), 2e9)]),
        )
        .await;
    assert_eq!(answer.status, 204);
    assert_eq!(tripped(&first.rule("memory").await), 1);
    drop(first.router);
    first.pipeline.drain().await;

    // A restart during which the rules never arrived (the API server away): the state
    // saved at its end is still the first run's.
    let second = start();
    drop(second.router);
    second.pipeline.drain().await;

    let third = start();
    third.pipeline.apply_rules(&rules).await.unwrap();
    assert_eq!(
        tripped(&third.rule("memory").await),
        1,
        "the tripped series survived both restarts"
    );
}

/// The decision log is read a page at a time: at most 1000 decisions an answer, the
/// newest by default, or those after an id (`since`), oldest first.
#[tokio::test]
async fn decisions_are_read_a_page_at_a_time() {
    let app = common::start(&memory_rule("memory", "> 1Gi", 0));
    let now = common::now_ms();
    // 1200 pods trip, in two requests.
    for half in 0..2 {
        let series = (0..600)
            .map(|i| memory(&format!("web-{}", half * 600 + i), now + half * 15_000, 2e9))
            .collect();
        let answer = app.write(Some(common::V1), common::v1_body(series)).await;
        assert_eq!(answer.status, 204);
    }
    let ids = |page: &serde_json::Value| -> Vec<u64> {
        page["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect()
    };
    // Decisions are made after the 204; wait for the last one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids(&app.get_json("/api/v1/decisions?limit=1").await) != vec![1200] {
        assert!(std::time::Instant::now() < deadline, "1200 decisions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newest = ids(&app.get_json("/api/v1/decisions").await);
    assert_eq!(newest, (201..=1200).collect::<Vec<_>>(), "the newest 1000");
    let first = ids(&app.get_json("/api/v1/decisions?since=0&limit=500").await);
    assert_eq!(first, (1..=500).collect::<Vec<_>>());
    let next = ids(&app.get_json("/api/v1/decisions?since=500&limit=5000").await);
    assert_eq!(
        next,
        (501..=1500).filter(|&i| i <= 1200).collect::<Vec<_>>()
    );
    assert!(ids(&app.get_json("/api/v1/decisions?since=1200").await).is_empty());
}
