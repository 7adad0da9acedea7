//! Actions end to end: the real binary in cluster mode against the real API server
//! (`../shared/k8s/`, with kube-controller-manager so Deployments get ReplicaSets and
//! pods), rules applied with kubectl, samples remote-written, and the effect checked as
//! a user would: the tripped pod evicted and only it, `status.lastActions`, the Events
//! on the rule and on the pod, the metrics; dry run and the pause switch changing
//! nothing; an SLO's HPA claim released when the SLO is deleted.
//!
//! Waits poll the API with a deadline; never a fixed sleep.

use crate::common;
use crate::common::k8s::{Cluster, eventually};
use crate::common::process::Running;
use crate::common::{pod_memory as memory, remote_write as write};

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use prophet::rules::crd::{AnomalyAction, SLOViolation};

/// Starts Prophet acting for real (ingest open, as in a test) on one namespace, its
/// pause switch in that namespace too.
fn start_prophet(cluster: &Cluster, ns: &str, extra: &[&str]) -> (Running, String) {
    let mut args = vec![
        "run",
        "--cluster",
        "--allow-unauthenticated-write",
        "--leader-elect=false",
        "--namespace",
        ns,
        "--lease-namespace",
        ns,
    ];
    args.extend_from_slice(extra);
    let (prophet, addr, _) =
        common::process::start_prophet(&args, &[("KUBECONFIG", cluster.kubeconfig.as_os_str())]);
    (prophet, addr)
}

fn deployment(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: registry.k8s.io/pause:3.10}}]
"#
    )
}

fn restart_rule(ns: &str, name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: {name}, namespace: {ns}}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "> 1Gi"
  remediation: {{type: restart, cooldownSeconds: 300}}
{extra}
"#
    )
}

/// The names of the pods of `app`, waiting until there are `n`.
async fn pods(client: &kube::Client, ns: &str, app: &str, n: usize) -> Vec<(String, String)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("{n} pods of {app}"),
        Duration::from_secs(60),
        || async {
            let list = api
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            let live: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
                .collect();
            (live.len() == n).then_some(live)
        },
    )
    .await
}

/// Whether the pod with this uid is gone or terminating.
async fn pod_gone(client: &kube::Client, ns: &str, name: &str, uid: &str) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.unwrap() {
        None => true,
        Some(pod) => {
            pod.metadata.uid.as_deref() != Some(uid) || pod.metadata.deletion_timestamp.is_some()
        }
    }
}

async fn metric(addr: &str, prefix: &str) -> Vec<String> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tripped_pod_is_evicted_once_recorded_and_announced() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("evict");
    let client = cluster.client().await;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment(&ns, "api", 2)));
    let before = pods(&client, &ns, "api", 2).await;
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&restart_rule(&ns, "memory", "")),
    );
    let (_prophet, addr) = start_prophet(cluster, &ns, &[]);
    let rules: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    eventually("the rule to be Ready", Duration::from_secs(60), || async {
        let rule = rules.get("memory").await.ok()?;
        let ready = rule
            .status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;

    // One pod's memory crosses 1Gi, the other's does not.
    let (hot, hot_uid) = &before[0];
    let (cool, cool_uid) = &before[1];
    let now = common::now_ms();
    write(
        &addr,
        vec![
            memory(&ns, hot, now, 2.0 * 1024.0 * 1024.0 * 1024.0),
            memory(&ns, cool, now, 100.0 * 1024.0 * 1024.0),
        ],
    )
    .await;

    let rule = eventually(
        "the eviction in status",
        Duration::from_secs(60),
        || async {
            let rule = rules.get("memory").await.ok()?;
            let done = rule
                .status
                .as_ref()?
                .last_actions
                .iter()
                .any(|a| a.action == "evict" && a.result == "Succeeded");
            done.then_some(rule)
        },
    )
    .await;
    assert!(
        pod_gone(&client, &ns, hot, hot_uid).await,
        "{hot} is still there"
    );
    assert!(
        !pod_gone(&client, &ns, cool, cool_uid).await,
        "{cool} did not trip and must be left alone"
    );
    let status = rule.status.unwrap();
    let record = &status.last_actions[0];
    assert_eq!(record.target, format!("Pod {ns}/{hot}"));
    assert_eq!(record.target_uid.as_deref(), Some(hot_uid.as_str()));
    assert!(record.detection.is_some(), "{record:?}");
    assert_eq!(status.remediation_count, 1);
    assert!(status.last_remediated.is_some());

    // Announced on the rule and on the pod.
    eventually("the Events", Duration::from_secs(30), || async {
        let on_rule = common::k8s::event_reasons(&client, &ns, "memory").await;
        let on_pod = common::k8s::event_reasons(&client, &ns, hot).await;
        (on_rule.iter().any(|r| r == "Acted") && on_pod.iter().any(|r| r == "Acted")).then_some(())
    })
    .await;

    // The same series still tripped: no second eviction (one per detection), and the
    // metric counts one.
    write(
        &addr,
        vec![memory(
            &ns,
            hot,
            now + 15_000,
            2.0 * 1024.0 * 1024.0 * 1024.0,
        )],
    )
    .await;
    let evicted = metric(&addr, "prophet_actions_total").await;
    let line = evicted
        .iter()
        .find(|l| l.contains("action=\"evict\"") && l.contains("result=\"succeeded\""))
        .unwrap_or_else(|| panic!("{evicted:?}"));
    assert!(line.ends_with(" 1"), "{line}");
    let latency = metric(&addr, "prophet_action_latency_seconds_").await;
    eprintln!("trip-to-eviction latency: {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_the_pause_switch_change_nothing() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("paused");
    let client = cluster.client().await;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment(&ns, "web", 2)));
    let before = pods(&client, &ns, "web", 2).await;
    // Every action paused before Prophet starts.
    cluster.kubectl(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "prophet-control",
        "--from-literal=paused=true",
    ]);
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "{}---{}",
            restart_rule(&ns, "practice", "  dryRun: true"),
            restart_rule(&ns, "memory", "")
        )),
    );
    let (_prophet, addr) = start_prophet(cluster, &ns, &[]);
    let rules: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    eventually("the rules to be Ready", Duration::from_secs(60), || async {
        for name in ["practice", "memory"] {
            let rule = rules.get(name).await.ok()?;
            rule.status?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?;
        }
        Some(())
    })
    .await;
    let (pod, uid) = &before[0];
    write(
        &addr,
        vec![memory(
            &ns,
            pod,
            common::now_ms(),
            2.0 * 1024.0 * 1024.0 * 1024.0,
        )],
    )
    .await;

    let result_of = |rule: AnomalyAction| {
        rule.status
            .and_then(|s| s.last_actions.first().cloned())
            .map(|a| (a.result, a.message.unwrap_or_default()))
    };
    let (result, _) = eventually("the dry run recorded", Duration::from_secs(60), || async {
        result_of(rules.get("practice").await.ok()?)
    })
    .await;
    assert_eq!(result, "DryRun");
    let (result, message) = eventually("the pause recorded", Duration::from_secs(60), || async {
        result_of(rules.get("memory").await.ok()?)
    })
    .await;
    assert_eq!(result, "Failed");
    assert!(message.contains("paused"), "{message}");
    let failing = rules.get("memory").await.unwrap().status.unwrap();
    assert!(
        failing
            .conditions
            .iter()
            .any(|c| c.type_ == "ActionFailed" && c.status == "True" && c.reason == "Paused"),
        "{:?}",
        failing.conditions
    );
    assert!(!pod_gone(&client, &ns, pod, uid).await, "paused, yet acted");

    // Resumed: the held action is done, once.
    cluster.kubectl(&["-n", &ns, "delete", "configmap", "prophet-control"]);
    eventually(
        "the eviction after resuming",
        Duration::from_secs(60),
        || async { pod_gone(&client, &ns, pod, uid).await.then_some(()) },
    )
    .await;
    let practice = rules.get("practice").await.unwrap().status.unwrap();
    assert!(
        practice.last_actions.iter().all(|a| a.result == "DryRun"),
        "{:?}",
        practice.last_actions
    );
}

fn requests(ns: &str, code: &str, samples: &[(i64, f64)]) -> prophet::proto::v1::TimeSeries {
    common::series(
        &[
            ("__name__", "http_requests_total"),
            ("code", code),
            ("job", "checkout"),
            ("namespace", ns),
        ],
        samples,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_raises_its_hpa_while_violated_follows_an_edit_and_deleting_it_restores_the_hpa() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = cluster.namespace("slo");
    let client = cluster.client().await;
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: checkout, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: checkout}}
  minReplicas: 2
  maxReplicas: 6
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: checkout-canary, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: checkout}}
  minReplicas: 1
  maxReplicas: 4
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]
---
apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {{name: checkout, namespace: {ns}}}
spec:
  sloName: checkout-availability
  sloTarget: "99%"
  errorBudgetThreshold: 0.5
  period: 1h
  sli:
    ratio:
      errors: http_requests_total{{job="checkout", code=~"5.."}}
      total: http_requests_total{{job="checkout"}}
  actions: [{{type: scale, value: increase}}]
  hpaRef: {{name: checkout}}
"#,
            deployment(&ns, "checkout", 1)
        )),
    );
    let (_prophet, addr) = start_prophet(cluster, &ns, &[]);
    let slos: Api<SLOViolation> = Api::namespaced(client.clone(), &ns);
    eventually("the SLO to be Ready", Duration::from_secs(60), || async {
        let slo = slos.get("checkout").await.ok()?;
        slo.status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .map(|_| ())
    })
    .await;

    // After an hour without traffic (an SLO judges nothing before its counters cover
    // its windows), a minute of 1000 requests with 20 errors: 2% against a 1% budget. On
    // a minute's last millisecond: an SLO is judged at minute boundaries, once its series
    // reach one.
    let t = (common::now_ms() - 120_000).div_euclid(60_000) * 60_000 - 1;
    let quiet = t - 3_600_000;
    write(
        &addr,
        vec![
            requests(
                &ns,
                "200",
                &[(quiet, 5_000.0), (t, 5_000.0), (t + 60_000, 5_980.0)],
            ),
            requests(&ns, "500", &[(quiet, 10.0), (t, 10.0), (t + 60_000, 30.0)]),
        ],
    )
    .await;

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let min_replicas = |hpa: &HorizontalPodAutoscaler| hpa.spec.min_replicas;
    eventually(
        "the HPA's minimum raised",
        Duration::from_secs(60),
        || async {
            let hpa = hpas.get("checkout").await.ok()?;
            (min_replicas(&hpa) == Some(3)).then_some(())
        },
    )
    .await;
    let slo = slos.get("checkout").await.unwrap();
    assert!(
        slo.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "aiops.prophet.io/cleanup"),
        "an SLO holding a claim carries the finalizer"
    );

    // The SLO now names another HPA while still violated: the first gets its own
    // minimum back, the second is raised.
    cluster.kubectl(&[
        "-n",
        &ns,
        "patch",
        "sloviolation",
        "checkout",
        "--type=merge",
        "-p",
        r#"{"spec":{"hpaRef":{"name":"checkout-canary"}}}"#,
    ]);
    eventually(
        "the claim moved to the HPA the SLO names now",
        Duration::from_secs(60),
        || async {
            let first = hpas.get("checkout").await.ok()?;
            let second = hpas.get("checkout-canary").await.ok()?;
            (min_replicas(&first) == Some(2) && min_replicas(&second) == Some(2)).then_some(())
        },
    )
    .await;
    let first = hpas.get("checkout").await.unwrap();
    assert!(
        first
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("aiops.prophet.io/")),
        "the first HPA keeps no claim"
    );

    // Deleting the SLO gives the HPA back its own minimum, then lets the SLO go.
    cluster.kubectl(&[
        "-n",
        &ns,
        "delete",
        "sloviolation",
        "checkout",
        "--wait=false",
    ]);
    eventually("the SLO gone", Duration::from_secs(60), || async {
        slos.get_opt("checkout").await.ok()?.is_none().then_some(())
    })
    .await;
    let hpa = hpas.get("checkout-canary").await.unwrap();
    assert_eq!(min_replicas(&hpa), Some(1));
    let leftovers: Vec<String> = hpa
        .metadata
        .annotations
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with("aiops.prophet.io/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Installs deploy/approvals.yaml (the approver ClusterRole and the admission policy),
/// once per test binary; waits until the policy is enforced.
fn install_approvals(cluster: &Cluster) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let file =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/approvals.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    });
}

/// `kubectl create -f -` of an approval as `user`: whether it was accepted, and what
/// kubectl said.
fn approve_as(cluster: &Cluster, user: &str, yaml: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(&cluster.kubectl)
        .args(["create", "-f", "-", "--as", user])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_restart_waits_for_an_approver_and_records_who() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    install_approvals(cluster);
    let ns = cluster.namespace("approve");
    let client = cluster.client().await;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment(&ns, "db", 2)));
    let before = pods(&client, &ns, "db", 2).await;
    cluster.kubectl(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "approvers",
        "--clusterrole=prophet-approver",
        "--user=alice",
    ]);
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {{name: memory, namespace: {ns}}}
spec:
  metric: container_memory_working_set_bytes
  threshold: "> 1Gi"
  remediation: {{type: restart, requireApproval: true, cooldownSeconds: 300}}
"#
        )),
    );
    let (_prophet, addr) = start_prophet(cluster, &ns, &[]);
    let rules: Api<AnomalyAction> = Api::namespaced(client.clone(), &ns);
    eventually("the rule to be Ready", Duration::from_secs(60), || async {
        let rule = rules.get("memory").await.ok()?;
        rule.status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .map(|_| ())
    })
    .await;
    // The admission policy takes a moment to be enforced once installed: probe it with
    // an approval of no detection (harmless if it were let through).
    let mut probe = 0;
    eventually_sync(|| {
        probe += 1;
        let yaml = format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: ActionApproval\nmetadata: {{name: probe-{probe}, namespace: {ns}}}\nspec: {{rule: memory, detection: none, approver: carol}}\n"
        );
        (!approve_as(cluster, "alice", &yaml).0).then_some(())
    });
    let (pod, uid) = &before[0];
    write(
        &addr,
        vec![memory(
            &ns,
            pod,
            common::now_ms(),
            2.0 * 1024.0 * 1024.0 * 1024.0,
        )],
    )
    .await;

    let held = eventually(
        "the action held for approval",
        Duration::from_secs(60),
        || async {
            let status = rules.get("memory").await.ok()?.status?;
            status.pending_approvals.first().cloned()
        },
    )
    .await;
    assert_eq!(held.action, "restart");
    assert_eq!(held.targets, vec![format!("Pod {ns}/{pod}")]);
    assert!(
        !pod_gone(&client, &ns, pod, uid).await,
        "acted before approval"
    );

    let approval = |approver: &str, name: &str| {
        format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: ActionApproval\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{rule: memory, detection: \"{}\", approver: {approver}}}\n",
            held.detection
        )
    };
    // Someone RBAC does not let approve: refused by the API server; nothing happens.
    let (accepted, said) = approve_as(cluster, "bob", &approval("bob", "by-bob"));
    assert!(!accepted, "{said}");
    assert!(said.contains("forbidden"), "{said}");
    // An approver naming someone else: refused by the admission policy.
    let (accepted, said) = approve_as(cluster, "alice", &approval("carol", "as-carol"));
    assert!(!accepted, "{said}");
    assert!(
        said.contains("spec.approver must be your own user name"),
        "{said}"
    );
    assert!(
        !pod_gone(&client, &ns, pod, uid).await,
        "acted without an approval"
    );

    // Alice approves as herself: the pod is evicted and the record names her.
    let (accepted, said) = approve_as(cluster, "alice", &approval("alice", "by-alice"));
    assert!(accepted, "{said}");
    eventually("the approved eviction", Duration::from_secs(60), || async {
        pod_gone(&client, &ns, pod, uid).await.then_some(())
    })
    .await;
    let status = eventually(
        "the record of who approved",
        Duration::from_secs(60),
        || async {
            let status = rules.get("memory").await.ok()?.status?;
            status
                .last_actions
                .iter()
                .any(|a| a.action == "evict" && a.result == "Succeeded")
                .then_some(status)
        },
    )
    .await;
    let record = status
        .last_actions
        .iter()
        .find(|a| a.action == "evict")
        .unwrap();
    assert_eq!(record.approver.as_deref(), Some("alice"));
    assert_eq!(record.detection.as_deref(), Some(held.detection.as_str()));
    assert!(
        status.pending_approvals.is_empty(),
        "{:?}",
        status.pending_approvals
    );
}

/// Polls a blocking check for at most a minute.
fn eventually_sync<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}
