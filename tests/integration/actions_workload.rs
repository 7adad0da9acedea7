//! The workload actions against a real API server with kube-controller-manager (its
//! ReplicaSet, disruption and HPA controllers run; no kubelet, so pods stay Pending
//! unless a test marks them Running and Ready): evictions within disruption budgets,
//! refusals (bare pod, another namespace, GitOps, paused), rollout restarts, direct
//! scaling, HPA minimum claims of two rules, and a KEDA ScaledObject's minimum.
//!
//! Each test works in its own namespace and checks what a user would see with kubectl:
//! pods gone or kept, annotations, replica counts, minimums. Waits poll the API with a
//! deadline.

use crate::common;
use crate::common::k8s::{Cluster, eventually};

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use prophet::actuate::hpa::{self, MinReplicas};
use prophet::actuate::workload;
use prophet::actuate::{ActError, Actor};
use prophet::eval::PodRef;
use prophet::rules::crd::TargetResourceType;
use prophet::rules::load::RuleKind;

fn actor(namespace: &str, uid: &str) -> Actor {
    Actor {
        kind: RuleKind::AnomalyAction,
        namespace: namespace.into(),
        name: "memory".into(),
        uid: uid.into(),
        allow_git_ops: false,
        allow_cross_namespace: false,
    }
}

/// A client without kube's default retry of 429s, as the lead builds for actions: a
/// disruption budget's refusal must come back at once, not after minutes of retries.
async fn client(cluster: &Cluster) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

fn deployment(name: &str, replicas: i32, labels: &str, paused: bool) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}{labels}}}
spec:
  replicas: {replicas}
  paused: {paused}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{{name: app, image: registry.invalid/app:1}}]
"#
    )
}

/// The live (not terminating) pods of app `name`, once there are `count`.
async fn live_pods(client: &kube::Client, ns: &str, name: &str, count: usize) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app={name}");
    eventually(
        &format!("{count} pods of {ns}/{name}"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let selector = selector.clone();
            async move {
                let mut pods: Vec<Pod> = api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                (pods.len() == count).then_some(pods)
            }
        },
    )
    .await
}

fn pod_ref(ns: &str, pod: &Pod) -> PodRef {
    PodRef {
        namespace: ns.into(),
        name: pod.metadata.name.clone().unwrap(),
    }
}

/// Whether the pod named like `pod` (its uid) is gone or terminating.
async fn evicted(client: &kube::Client, ns: &str, pod: &Pod) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api
        .get_opt(pod.metadata.name.as_deref().unwrap())
        .await
        .unwrap()
    {
        None => true,
        Some(now) => {
            now.metadata.uid != pod.metadata.uid || now.metadata.deletion_timestamp.is_some()
        }
    }
}

#[tokio::test]
async fn evicting_a_tripped_pod_leaves_its_siblings_and_acts_once() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("evict");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("web", 3, "", false)),
    );
    let pods = live_pods(&client, &ns, "web", 3).await;
    let actor = actor(&ns, "11111111-0000-0000-0000-000000000001");
    let tripped = [pod_ref(&ns, &pods[0])];

    let first = workload::evict(&client, &actor, &tripped, "d1").await;
    let acted = first[0].as_ref().expect("evicted");
    assert!(acted.changed, "{acted:?}");
    assert_eq!(acted.action, "evict");
    assert!(evicted(&client, &ns, &pods[0]).await);
    for sibling in &pods[1..] {
        assert!(
            !evicted(&client, &ns, sibling).await,
            "a sibling was evicted"
        );
    }

    let second = workload::evict(&client, &actor, &tripped, "d1").await;
    let again = second[0].as_ref().expect("no error");
    assert!(!again.changed, "{again:?}");
    // The ReplicaSet replaces the evicted pod: three live pods again.
    live_pods(&client, &ns, "web", 3).await;
}

/// Marks a pod Running and Ready through its status, as a kubelet would.
fn mark_ready(cluster: &Cluster, ns: &str, pod: &Pod) {
    cluster.kubectl(&[
        "patch",
        "pod",
        "-n",
        ns,
        pod.metadata.name.as_deref().unwrap(),
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
}

async fn pdb_settled(client: &kube::Client, ns: &str, name: &str, healthy: i32, allowed: i32) {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("PDB {name} with {healthy} healthy and {allowed} disruptions allowed"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let pdb = api.get(name).await.ok()?;
                let status = pdb.status?;
                (status.observed_generation == pdb.metadata.generation
                    && status.current_healthy == Some(healthy)
                    && status.disruptions_allowed == Some(allowed))
                .then_some(())
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_disruption_budget_holds_evictions_back() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("pdb");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("api", 2, "", false)),
    );
    let pods = live_pods(&client, &ns, "api", 2).await;
    // The Eviction API checks budgets only for running pods.
    for pod in &pods {
        mark_ready(cluster, &ns, pod);
    }
    let pdb = |min: i32| {
        format!(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: api}}\nspec: {{minAvailable: {min}, selector: {{matchLabels: {{app: api}}}}}}\n"
        )
    };
    cluster.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], Some(&pdb(2)));
    pdb_settled(&client, &ns, "api", 2, 0).await;

    // The API server agrees the budget allows nothing: its own answer is a 429.
    let direct = Api::<Pod>::namespaced(client.clone(), &ns)
        .evict(
            pods[0].metadata.name.as_deref().unwrap(),
            &Default::default(),
        )
        .await;
    assert!(
        matches!(&direct, Err(kube::Error::Api(s)) if s.code == 429),
        "{direct:?}"
    );

    let actor = actor(&ns, "11111111-0000-0000-0000-000000000002");
    let tripped = [pod_ref(&ns, &pods[0])];
    let held = workload::evict(&client, &actor, &tripped, "d1").await;
    match &held[0] {
        Err(ActError::Failed {
            reason,
            retry_after,
            message,
        }) => {
            assert_eq!(*reason, "DisruptionBudget", "{message}");
            assert!(retry_after.is_some());
            assert!(message.contains("api"), "{message}");
        }
        other => panic!("expected DisruptionBudget, got {other:?}"),
    }
    assert!(
        !evicted(&client, &ns, &pods[0]).await,
        "the pod was evicted"
    );

    // A budget of one disruption: of two tripped pods, one goes now, one later.
    cluster.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], Some(&pdb(1)));
    pdb_settled(&client, &ns, "api", 2, 1).await;
    let both = [pod_ref(&ns, &pods[0]), pod_ref(&ns, &pods[1])];
    let results = workload::evict(&client, &actor, &both, "d1").await;
    assert!(results[0].as_ref().is_ok_and(|a| a.changed), "{results:?}");
    assert_eq!(
        results[1].as_ref().unwrap_err().reason(),
        "DisruptionBudget",
        "{results:?}"
    );
    assert!(evicted(&client, &ns, &pods[0]).await);
    assert!(!evicted(&client, &ns, &pods[1]).await);
}

#[tokio::test]
async fn bare_pods_and_pods_of_another_namespace_are_refused() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("bare");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: lonely}\nspec: {containers: [{name: app, image: registry.invalid/app:1}]}\n",
        ),
    );
    let lonely = PodRef {
        namespace: ns.clone(),
        name: "lonely".into(),
    };
    let actor_here = actor(&ns, "11111111-0000-0000-0000-000000000003");
    let results = workload::evict(&client, &actor_here, std::slice::from_ref(&lonely), "d1").await;
    let refused = results[0].as_ref().unwrap_err();
    assert!(refused.is_refused());
    assert_eq!(refused.reason(), "BarePod");
    let still: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = still.get("lonely").await.unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none());

    let elsewhere = actor("somewhere-else", "11111111-0000-0000-0000-000000000004");
    let results = workload::evict(&client, &elsewhere, &[lonely], "d1").await;
    assert_eq!(results[0].as_ref().unwrap_err().reason(), "CrossNamespace");
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

#[tokio::test]
async fn a_rollout_restart_happens_once_per_detection() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("restart");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("web", 1, "", false)),
    );
    let pods = live_pods(&client, &ns, "web", 1).await;
    let actor = actor(&ns, "11111111-0000-0000-0000-000000000005");
    let pod = pod_ref(&ns, &pods[0]);

    let mismatch =
        workload::rollout_restart(&client, &actor, &pod, TargetResourceType::StatefulSet, "d1")
            .await
            .unwrap_err();
    assert_eq!(mismatch.reason(), "KindMismatch");
    assert!(mismatch.to_string().contains("Deployment"), "{mismatch}");

    let first =
        workload::rollout_restart(&client, &actor, &pod, TargetResourceType::Deployment, "d1")
            .await
            .unwrap();
    assert!(first.changed, "{first:?}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let restarted = deployments.get("web").await.unwrap();
    let at = template_annotation(&restarted, workload::RESTARTED_AT).expect("restartedAt");
    assert!(at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{at}");
    assert_eq!(
        restarted.metadata.annotations.as_ref().unwrap()[workload::RESTARTED_FOR],
        "d1"
    );
    // The Deployment controller rolls a new ReplicaSet out.
    eventually("a second ReplicaSet", Duration::from_secs(60), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client, &ns);
            (sets.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
        }
    })
    .await;

    let second = workload::rollout_restart_named(
        &client,
        &actor,
        &ns,
        TargetResourceType::Deployment,
        "web",
        "d1",
    )
    .await
    .unwrap();
    assert!(!second.changed, "{second:?}");
    let after = deployments.get("web").await.unwrap();
    assert_eq!(
        template_annotation(&after, workload::RESTARTED_AT),
        Some(at)
    );
}

#[tokio::test]
async fn paused_and_git_ops_deployments_are_refused() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("refuse");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("held", 1, "", true)),
    );
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment(
            "synced",
            1,
            ", kustomize.toolkit.fluxcd.io/name: apps",
            false,
        )),
    );
    let mut actor = actor(&ns, "11111111-0000-0000-0000-000000000006");
    let paused = workload::rollout_restart_named(
        &client,
        &actor,
        &ns,
        TargetResourceType::Deployment,
        "held",
        "d1",
    )
    .await
    .unwrap_err();
    assert_eq!(paused.reason(), "DeploymentPaused");
    assert!(paused.is_refused());

    let pods = live_pods(&client, &ns, "synced", 1).await;
    let pod = pod_ref(&ns, &pods[0]);
    let restart =
        workload::rollout_restart(&client, &actor, &pod, TargetResourceType::Deployment, "d1")
            .await
            .unwrap_err();
    assert_eq!(restart.reason(), "GitOpsManaged");
    assert!(restart.to_string().contains("Flux"), "{restart}");
    let evict = workload::evict(&client, &actor, std::slice::from_ref(&pod), "d1").await;
    assert_eq!(evict[0].as_ref().unwrap_err().reason(), "GitOpsManaged");
    assert!(!evicted(&client, &ns, &pods[0]).await);

    actor.allow_git_ops = true;
    let allowed =
        workload::rollout_restart(&client, &actor, &pod, TargetResourceType::Deployment, "d1")
            .await
            .unwrap();
    assert!(allowed.changed);
}

async fn replicas(client: &kube::Client, ns: &str, name: &str) -> i32 {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.get(name).await.unwrap().spec.replicas.unwrap()
}

#[tokio::test]
async fn scaling_without_an_hpa_adds_a_step_once_per_detection_up_to_max() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("scale");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("web", 1, "", false)),
    );
    let pods = live_pods(&client, &ns, "web", 1).await;
    let actor = actor(&ns, "11111111-0000-0000-0000-000000000007");
    let pod = pod_ref(&ns, &pods[0]);

    let first = hpa::scale(&client, &actor, &pod, 1, 3, None, "d1")
        .await
        .unwrap();
    assert!(first.changed, "{first:?}");
    assert_eq!(first.action, "scale");
    assert_eq!(replicas(&client, &ns, "web").await, 2);
    let again = hpa::scale(&client, &actor, &pod, 1, 3, None, "d1")
        .await
        .unwrap();
    assert!(!again.changed, "{again:?}");
    assert_eq!(replicas(&client, &ns, "web").await, 2);

    let next = hpa::scale(&client, &actor, &pod, 5, 3, None, "d2")
        .await
        .unwrap();
    assert!(next.changed);
    assert_eq!(replicas(&client, &ns, "web").await, 3, "capped at max");
    let at_max = hpa::scale(&client, &actor, &pod, 1, 3, None, "d3")
        .await
        .unwrap();
    assert!(!at_max.changed);
    assert!(at_max.summary.contains("max 3"), "{}", at_max.summary);
    assert_eq!(replicas(&client, &ns, "web").await, 3);

    // A named target (target.name) scales the same way.
    let named = hpa::scale_named(
        &client,
        &actor,
        &ns,
        TargetResourceType::Deployment,
        "web",
        1,
        4,
        None,
        "d4",
    )
    .await
    .unwrap();
    assert!(named.changed, "{named:?}");
    assert_eq!(replicas(&client, &ns, "web").await, 4);
}

fn hpa_yaml(name: &str, target: &str, min: i32, max: i32, owner: Option<(&str, &str)>) -> String {
    let owner = owner
        .map(|(so, uid)| {
            format!(
                "\n  ownerReferences: [{{apiVersion: keda.sh/v1alpha1, kind: ScaledObject, name: {so}, uid: {uid}, controller: true}}]"
            )
        })
        .unwrap_or_default();
    format!(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}{owner}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}
"#
    )
}

async fn hpa_min(client: &kube::Client, ns: &str, name: &str) -> (i32, Vec<String>) {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let hpa = api.get(name).await.unwrap();
    let ours = hpa
        .metadata
        .annotations
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with("aiops.prophet.io/"))
        .collect();
    (hpa.spec.min_replicas.unwrap_or(1), ours)
}

#[tokio::test]
async fn scaling_a_workload_an_hpa_scales_raises_the_hpa_minimum() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("hpa");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("web", 1, "", false)),
    );
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&hpa_yaml("web", "web", 1, 5, None)),
    );
    let pods = live_pods(&client, &ns, "web", 1).await;
    let actor = actor(&ns, "11111111-0000-0000-0000-000000000008");
    let pod = pod_ref(&ns, &pods[0]);

    let found = hpa::hpa_for(&client, &ns, "Deployment", "web")
        .await
        .unwrap();
    assert_eq!(found.unwrap().metadata.name.as_deref(), Some("web"));
    let claimed = hpa::scale(&client, &actor, &pod, 2, 10, None, "d1")
        .await
        .unwrap();
    assert!(claimed.changed, "{claimed:?}");
    assert_eq!(claimed.action, "hpa-min-replicas");
    assert_eq!(claimed.target.kind, "HorizontalPodAutoscaler");
    assert_eq!(hpa_min(&client, &ns, "web").await.0, 3);
    let again = hpa::scale(&client, &actor, &pod, 2, 10, None, "d1")
        .await
        .unwrap();
    assert!(!again.changed, "{again:?}");
    assert_eq!(hpa_min(&client, &ns, "web").await.0, 3);
    // A new detection steps again, up to the HPA's maxReplicas.
    hpa::scale(&client, &actor, &pod, 4, 10, None, "d2")
        .await
        .unwrap();
    assert_eq!(hpa_min(&client, &ns, "web").await.0, 5);

    let released = hpa::release_claim(&client, &actor, &ns, "web")
        .await
        .unwrap()
        .unwrap();
    assert!(released.changed);
    let (min, ours) = hpa_min(&client, &ns, "web").await;
    assert_eq!(min, 1);
    assert!(ours.is_empty(), "{ours:?}");
}

#[tokio::test]
async fn two_rules_claim_one_hpa_and_the_original_comes_back() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("claims");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&hpa_yaml("api", "api", 2, 10, None)),
    );
    let a = actor(&ns, "aaaaaaaa-0000-0000-0000-000000000001");
    let mut b = actor(&ns, "bbbbbbbb-0000-0000-0000-000000000002");
    b.kind = RuleKind::SloViolation;

    hpa::claim_min_replicas(&client, &a, &ns, "api", MinReplicas::Exactly(4), None, "a1")
        .await
        .unwrap();
    hpa::claim_min_replicas(&client, &b, &ns, "api", MinReplicas::Exactly(6), None, "b1")
        .await
        .unwrap();
    let (min, ours) = hpa_min(&client, &ns, "api").await;
    assert_eq!(min, 6);
    assert!(ours.contains(&"aiops.prophet.io/original-min-replicas".to_owned()));

    hpa::release_claim(&client, &b, &ns, "api")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hpa_min(&client, &ns, "api").await.0, 4, "a's claim holds");
    assert!(
        hpa::release_claim(&client, &b, &ns, "api")
            .await
            .unwrap()
            .is_none()
    );
    hpa::release_claim(&client, &a, &ns, "api")
        .await
        .unwrap()
        .unwrap();
    let (min, ours) = hpa_min(&client, &ns, "api").await;
    assert_eq!(min, 2, "the original comes back");
    assert!(ours.is_empty(), "{ours:?}");

    // An HPA in another namespace is refused without --allow-cross-namespace.
    let other = actor("elsewhere", "cccccccc-0000-0000-0000-000000000003");
    let refused = hpa::claim_min_replicas(
        &client,
        &other,
        &ns,
        "api",
        MinReplicas::Step(1),
        None,
        "c1",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.reason(), "CrossNamespace");
}

fn install_keda(cluster: &Cluster) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crds/keda.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", crd]);
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/scaledobjects.keda.sh",
        ]);
    });
}

#[tokio::test]
async fn a_keda_hpa_has_its_scaled_object_minimum_claimed() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    install_keda(cluster);
    let client = client(cluster).await;
    let ns = cluster.namespace("keda");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&deployment("worker", 1, "", false)),
    );
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: worker}\nspec:\n  scaleTargetRef: {name: worker}\n  minReplicaCount: 1\n  maxReplicaCount: 8\n  triggers: [{type: cpu, metricType: Utilization, metadata: {value: \"60\"}}]\n",
        ),
    );
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    let objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let scaled_object = objects.get("worker").await.unwrap();
    let uid = scaled_object.metadata.uid.clone().unwrap();
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&hpa_yaml(
            "keda-hpa-worker",
            "worker",
            1,
            8,
            Some(("worker", &uid)),
        )),
    );
    let pods = live_pods(&client, &ns, "worker", 1).await;
    let actor = actor(&ns, "11111111-0000-0000-0000-000000000009");

    let claimed = hpa::scale(&client, &actor, &pod_ref(&ns, &pods[0]), 2, 10, None, "d1")
        .await
        .unwrap();
    assert!(claimed.changed, "{claimed:?}");
    assert_eq!(claimed.action, "keda-min-replicas");
    let min_count = |o: &DynamicObject| o.data["spec"]["minReplicaCount"].as_i64();
    assert_eq!(min_count(&objects.get("worker").await.unwrap()), Some(3));
    assert_eq!(hpa_min(&client, &ns, "keda-hpa-worker").await, (1, vec![]));

    hpa::release_claim(&client, &actor, &ns, "keda-hpa-worker")
        .await
        .unwrap()
        .unwrap();
    let restored = objects.get("worker").await.unwrap();
    assert_eq!(min_count(&restored), Some(1));
    assert!(
        restored
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("aiops.prophet.io/"))
    );
}

#[tokio::test]
async fn a_stateful_set_pod_is_evicted_once_per_detection_though_its_name_comes_back() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = client(cluster).await;
    let ns = cluster.namespace("sts");
    cluster.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: db, image: registry.invalid/db:1}]
"#,
        ),
    );
    let first_pod = live_pods(&client, &ns, "db", 1).await.remove(0);
    let actor = actor(&ns, "11111111-0000-0000-0000-00000000000a");
    let db0 = [PodRef {
        namespace: ns.clone(),
        name: "db-0".into(),
    }];
    let evicted_now = workload::evict(&client, &actor, &db0, "d1").await;
    assert!(
        evicted_now[0].as_ref().is_ok_and(|a| a.changed),
        "{evicted_now:?}"
    );
    // The StatefulSet controller brings db-0 back: a new pod under the same name.
    let replacement = eventually("db-0 replaced", Duration::from_secs(60), || {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let old = first_pod.metadata.uid.clone();
        async move {
            let pod = api.get_opt("db-0").await.ok()??;
            (pod.metadata.uid != old && pod.metadata.deletion_timestamp.is_none()).then_some(pod)
        }
    })
    .await;
    let again = workload::evict(&client, &actor, &db0, "d1").await;
    assert!(again[0].as_ref().is_ok_and(|a| !a.changed), "{again:?}");
    assert!(!evicted(&client, &ns, &replacement).await);
    // A new detection evicts it again.
    let next = workload::evict(&client, &actor, &db0, "d2").await;
    assert!(next[0].as_ref().is_ok_and(|a| a.changed), "{next:?}");
}
