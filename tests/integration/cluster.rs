//! Cluster mode against a real API server (`../shared/k8s/`): the real binary with
//! `--cluster`, rules applied with kubectl, samples remote-written to it, and everything
//! checked through the API as a user would with `kubectl get` and `kubectl events`:
//! status and conditions, Events, a live edit that keeps state, a deletion, an invalid
//! rule, a tenant that cannot see another namespace's series, and a leader that dies.
//!
//! Waits are on the API's own signals (a condition, a phase, the Lease's holder), polled
//! with a deadline; never a fixed sleep.

use crate::common;
use crate::common::k8s::{Cluster, eventually};
use crate::common::process::Running;
use crate::common::{pod_memory as memory, remote_write as write};

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use prophet::rules::crd::AnomalyAction;

/// Starts `prophet run --cluster` against the test cluster; returns it and its address.
fn start_prophet(cluster: &Cluster, extra: &[&str]) -> (Running, String) {
    // Status, Events and leadership are what these tests watch: actions stay dry run
    // (tests/integration/actions_cluster.rs runs them for real).
    let mut args = vec!["run", "--cluster", "--dry-run"];
    args.extend_from_slice(extra);
    let (prophet, addr, _) =
        common::process::start_prophet(&args, &[("KUBECONFIG", cluster.kubeconfig.as_os_str())]);
    (prophet, addr)
}

fn condition(rule: &AnomalyAction, kind: &str) -> Option<(String, String, String)> {
    rule.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn rules(ns: &str) -> String {
    format!(
        r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: memory, namespace: {ns}}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "> 1Gi"
  remediation: {{type: alert, cooldownSeconds: 300}}
---
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: broken, namespace: {ns}}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "=> 1Gi"
  remediation: {{type: alert}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_get_status_and_events_and_follow_edits() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("tenant");
    let other = cluster.namespace("other");
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&rules(&ns)));
    let client = cluster.client().await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    let (_prophet, addr) = start_prophet(
        cluster,
        &[
            "--namespace",
            &ns,
            "--namespace",
            &other,
            "--leader-elect=false",
        ],
    );

    // Status: the valid rule is Ready, the invalid one says why, with the field path.
    let ready = eventually("the rule to be Ready", Duration::from_secs(60), || async {
        let rule = api.get("memory").await.ok()?;
        (condition(&rule, "Ready")?.0 == "True").then_some(rule)
    })
    .await;
    // RuleValid says what is evaluated, as compiled: here within the rule's namespace.
    let valid = condition(&ready, "RuleValid").unwrap();
    assert_eq!(
        valid,
        (
            "True".to_owned(),
            "Valid".to_owned(),
            format!(
                "evaluated on the stream: container_memory_working_set_bytes > 1Gi (series of namespace {ns} only)"
            )
        )
    );
    let broken = eventually(
        "the broken rule's status",
        Duration::from_secs(30),
        || async {
            let rule = api.get("broken").await.ok()?;
            condition(&rule, "RuleValid").map(|c| (rule, c))
        },
    )
    .await;
    assert_eq!(broken.1.0, "False");
    assert_eq!(broken.1.1, "Invalid");
    assert!(broken.1.2.contains("spec.threshold"), "{}", broken.1.2);
    assert_eq!(
        format!("{:?}", broken.0.status.as_ref().unwrap().phase),
        "Failed"
    );

    // A tenant's series trips its rule; another namespace's series is not its business.
    let now = common::now_ms();
    write(
        &addr,
        vec![
            memory(&ns, "web-1", now, 2e9),
            memory(&other, "intruder", now, 5e9),
        ],
    )
    .await;
    let tripped = eventually("the rule to trip", Duration::from_secs(30), || async {
        let rule = api.get("memory").await.ok()?;
        let tripped = condition(&rule, "Tripped")?;
        (tripped.0 == "True").then_some((rule, tripped))
    })
    .await;
    assert!(tripped.1.2.contains("web-1"), "{}", tripped.1.2);
    assert!(!tripped.1.2.contains("intruder"), "{}", tripped.1.2);
    assert!(tripped.1.2.starts_with("1 series"), "{}", tripped.1.2);
    let status = tripped.0.status.clone().unwrap();
    assert_eq!(format!("{:?}", status.phase), "Detected");
    assert!(status.last_detected.is_some());
    eventually("a Tripped Event", Duration::from_secs(30), || async {
        common::k8s::event_reasons(&client, &ns, "memory")
            .await
            .contains(&"Tripped".to_string())
            .then_some(())
    })
    .await;

    // A live edit that leaves the inputs alone keeps the rule's state: still tripped.
    cluster.kubectl(&[
        "-n",
        &ns,
        "patch",
        "anomalyaction",
        "memory",
        "--type=merge",
        "-p",
        r#"{"spec":{"remediation":{"cooldownSeconds":600}}}"#,
    ]);
    let edited = eventually(
        "status of generation 2",
        Duration::from_secs(30),
        || async {
            let rule = api.get("memory").await.ok()?;
            (rule.status.as_ref()?.observed_generation == Some(2)).then_some(rule)
        },
    )
    .await;
    assert_eq!(condition(&edited, "Tripped").unwrap().0, "True");

    // The series goes back under the threshold: Resolved, with an Event.
    write(&addr, vec![memory(&ns, "web-1", now + 15_000, 1e8)]).await;
    eventually("the rule to resolve", Duration::from_secs(30), || async {
        let rule = api.get("memory").await.ok()?;
        (format!("{:?}", rule.status?.phase) == "Resolved").then_some(())
    })
    .await;
    eventually("a Resolved Event", Duration::from_secs(30), || async {
        common::k8s::event_reasons(&client, &ns, "memory")
            .await
            .contains(&"Resolved".to_string())
            .then_some(())
    })
    .await;

    // Deleted: the rule is gone from what Prophet evaluates.
    cluster.kubectl(&["-n", &ns, "delete", "anomalyaction", "memory"]);
    eventually(
        "the rule to be dropped",
        Duration::from_secs(30),
        || async {
            let rules: serde_json::Value = reqwest::get(format!("http://{addr}/api/v1/rules"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let names: Vec<&str> = rules["rules"]
                .as_array()?
                .iter()
                .filter_map(|r| r["rule"]["name"].as_str())
                .collect();
            (!names.contains(&"memory") && names.contains(&"broken")).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("leader");
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&rules(&ns)));
    let client = cluster.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let args = |identity: &'static str| {
        vec![
            "--namespace".to_string(),
            ns.clone(),
            "--lease-namespace".into(),
            ns.clone(),
            "--lease-duration".into(),
            "3s".into(),
            "--identity".into(),
            identity.into(),
        ]
    };
    let a_args = args("replica-a");
    let (mut first, first_addr) = start_prophet(
        cluster,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let holder = |leases: Api<Lease>| async move {
        leases
            .get_opt("prophet-leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually("replica-a to lead", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move { (holder(leases).await.as_deref() == Some("replica-a")).then_some(()) }
    })
    .await;
    let b_args = args("replica-b");
    let (_second, second_addr) = start_prophet(
        cluster,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Both ingest; only the leader writes. The standby reports it does not lead.
    let metrics = |addr: String| async move {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    eventually("replica-a's leader gauge", Duration::from_secs(30), || {
        let addr = first_addr.clone();
        async move {
            metrics(addr)
                .await?
                .contains("prophet_leader 1")
                .then_some(())
        }
    })
    .await;
    assert!(
        metrics(second_addr.clone())
            .await
            .unwrap()
            .contains("prophet_leader 0"),
        "the standby must not lead"
    );

    // The leader dies without a word (no lease release): the standby takes over once
    // the lease expires, and writes status from then on.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    eventually("replica-b to lead", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move { (holder(leases).await.as_deref() == Some("replica-b")).then_some(()) }
    })
    .await;
    let now = common::now_ms();
    write(&second_addr, vec![memory(&ns, "web-1", now, 2e9)]).await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    eventually(
        "the new leader's status write",
        Duration::from_secs(30),
        || async {
            let rule = api.get("memory").await.ok()?;
            (condition(&rule, "Tripped")?.0 == "True").then_some(())
        },
    )
    .await;
    // The Event follows the status write.
    let tripped_events = eventually("the Tripped Event", Duration::from_secs(30), || async {
        let n = common::k8s::event_reasons(&client, &ns, "memory")
            .await
            .iter()
            .filter(|r| *r == "Tripped")
            .count();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(tripped_events, 1, "one trip, one Event");
    // A barrier: the series clears, and once its Resolved Event is there, a second
    // Tripped Event for the trip would be too.
    write(&second_addr, vec![memory(&ns, "web-1", now + 15_000, 1e8)]).await;
    eventually("the Resolved Event", Duration::from_secs(30), || async {
        common::k8s::event_reasons(&client, &ns, "memory")
            .await
            .contains(&"Resolved".to_string())
            .then_some(())
    })
    .await;
    let tripped_events = common::k8s::event_reasons(&client, &ns, "memory")
        .await
        .iter()
        .filter(|r| *r == "Tripped")
        .count();
    assert_eq!(tripped_events, 1, "one trip, one Event");
}

async fn leader_gauge(addr: &str) -> Option<String> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("prophet_leader "))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_away_loses_nothing_and_the_cut_off_leader_stops() {
    let Some(private) = common::k8s::PrivateCluster::start("away") else {
        return;
    };
    let cluster = &private.cluster;
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds");
    cluster.kubectl(&["apply", "--server-side", "-f", crds]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/anomalyactions.aiops.prophet.io",
    ]);
    cluster.kubectl(&["create", "namespace", "away"]);
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&rules("away")));
    let (_prophet, addr) = start_prophet(
        cluster,
        &[
            "--lease-namespace",
            "away",
            "--lease-duration",
            "3s",
            "--identity",
            "only",
        ],
    );
    let client = cluster.client().await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), "away");
    eventually("the rule to be Ready", Duration::from_secs(60), || async {
        let rule = api.get("memory").await.ok()?;
        (condition(&rule, "Ready")?.0 == "True").then_some(())
    })
    .await;

    private.stop();
    // Ingest and evaluation go on; readiness is about ingest.
    let now = common::now_ms();
    write(&addr, vec![memory("away", "web-1", now, 2e9)]).await;
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let rules: serde_json::Value = reqwest::get(format!("http://{addr}/api/v1/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let memory_rule = common::rule_named(&rules, "memory");
    assert_eq!(memory_rule["trippedSeries"].as_array().unwrap().len(), 1);
    // A leader that cannot renew its lease stops acting at its deadline.
    eventually(
        "the cut-off leader to stand down",
        Duration::from_secs(30),
        || async { (leader_gauge(&addr).await? == "prophet_leader 0").then_some(()) },
    )
    .await;

    private.restart();
    // Back: the lease is taken again and the status converges to what happened meanwhile.
    let client = cluster.client().await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), "away");
    let rule = eventually(
        "the status to converge",
        Duration::from_secs(90),
        || async {
            let rule = api.get("memory").await.ok()?;
            (condition(&rule, "Tripped")?.0 == "True").then_some(rule)
        },
    )
    .await;
    assert_eq!(format!("{:?}", rule.status.unwrap().phase), "Detected");
    assert_eq!(
        leader_gauge(&addr).await.as_deref(),
        Some("prophet_leader 1")
    );
}

async fn status_writes(addr: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("prophet_status_writes_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Status writes stay within the write budget (50/s, burst 100) however many resources
/// trip at once, each resource is written for what changed and no more, and a status
/// write never wakes its own reconcile into a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_resources_are_written_within_the_budget_and_once_each() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("many");
    const N: usize = 300;
    let mut yaml = String::new();
    for i in 0..N {
        yaml.push_str(&format!(
            "---\napiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r{i}, namespace: {ns}}}\nspec:\n  metric: 'load{{shard=\"{i}\"}}'\n  threshold: \"> 1\"\n  remediation: {{type: alert}}\n"
        ));
    }
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml));
    let client = cluster.client().await;
    let api: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let (_prophet, addr) = start_prophet(cluster, &["--namespace", &ns, "--leader-elect=false"]);
    let all = |kind: &'static str| {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            (list
                .items
                .iter()
                .filter(|r| condition(r, kind).is_some_and(|c| c.0 == "True"))
                .count()
                == N)
                .then_some(())
        }
    };
    eventually("every resource Ready", Duration::from_secs(120), || {
        all("Ready")
    })
    .await;
    let ready_writes = status_writes(&addr).await;
    let allowed = |elapsed: Duration| 100.0 + 50.0 * elapsed.as_secs_f64() + 1.0;
    assert!(
        ready_writes >= N as f64,
        "{ready_writes} writes for {N} resources"
    );
    assert!(
        ready_writes <= allowed(started.elapsed()),
        "{ready_writes} writes in {:?}",
        started.elapsed()
    );

    let tripped_from = Instant::now();
    let series: Vec<_> = (0..N)
        .map(|i| {
            common::series(
                &[
                    ("__name__", "load"),
                    ("namespace", &ns),
                    ("shard", &i.to_string()),
                ],
                &[(common::now_ms(), 2.0)],
            )
        })
        .collect();
    write(&addr, series).await;
    eventually("every resource Tripped", Duration::from_secs(120), || {
        all("Tripped")
    })
    .await;
    let tripped_writes = status_writes(&addr).await - ready_writes;
    assert!(
        tripped_writes <= allowed(tripped_from.elapsed()),
        "{tripped_writes} writes in {:?}",
        tripped_from.elapsed()
    );
    // One write per resource for the trip (its status then holds), give or take a
    // resource reconciled while its trip was still arriving.
    assert!(
        (N as f64..=1.1 * N as f64).contains(&tripped_writes),
        "{tripped_writes} writes for {N} trips"
    );
}
