//! An SLOViolation's actions against a real API server with its controller manager
//! (`../shared/k8s/`): `rollback` of Deployments whose ReplicaSets the Deployment
//! controller really made, the pause and resume of Chaos Mesh experiments (test copies
//! of its CRDs in `tests/fixtures/crds/chaos-mesh.yaml`), and K8sGPT analyses read from
//! `Result` objects (`tests/fixtures/crds/k8sgpt.yaml`). What a user would see is checked
//! with the API, as `kubectl get` would show it.
//!
//! Each test keeps to namespaces of its own; the test CRDs are installed once and never
//! removed, so the "not installed" cases run on a private control plane of their own.
//! Waits poll the API with a deadline, never a fixed sleep.

use crate::common;
use crate::common::k8s::{Cluster, eventually};

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use prophet::actuate::{Actor, chaos, k8sgpt, rollback};
use prophet::rules::crd::ChaosRef;
use prophet::rules::load::RuleKind;

const WAIT: Duration = Duration::from_secs(60);

/// An SLOViolation `name` in `namespace`, with a uid of its own (its claim key).
fn actor(namespace: &str, name: &str, uid: &str) -> Actor {
    Actor {
        kind: RuleKind::SloViolation,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        allow_git_ops: false,
        allow_cross_namespace: false,
    }
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/crds/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Installs the test CRDs of `file` once per test binary and waits until served.
fn install(cluster: &Cluster, file: &str, crds: &[&str]) {
    cluster.kubectl(&["apply", "--server-side", "-f", &fixture(file)]);
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let names: Vec<String> = crds.iter().map(|c| format!("crd/{c}")).collect();
    args.extend(names.iter().map(String::as_str));
    cluster.kubectl(&args);
}

fn install_chaos_mesh(cluster: &Cluster) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        install(
            cluster,
            "chaos-mesh.yaml",
            &["schedules.chaos-mesh.org", "podchaos.chaos-mesh.org"],
        )
    });
}

fn install_k8sgpt(cluster: &Cluster) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| install(cluster, "k8sgpt.yaml", &["results.core.k8sgpt.ai"]));
}

// ---------------------------------------------------------------------------------
// rollback

fn deployment_yaml(
    namespace: &str,
    name: &str,
    image: &str,
    extra_labels: &str,
    paused: bool,
) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app: {name}
{extra_labels}
spec:
  replicas: 1
  paused: {paused}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: {image}
"#
    )
}

fn image_of(deployment: &Deployment) -> String {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key).cloned())
}

/// Waits until the Deployment controller has seen the Deployment's latest spec and
/// made the ReplicaSet of `image`; returns that ReplicaSet's pod-template-hash.
async fn rolled_out(client: &kube::Client, namespace: &str, name: &str, image: &str) -> String {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("the ReplicaSet of {name} with {image}"),
        WAIT,
        || async {
            let d = deployments.get(name).await.ok()?;
            let observed = d.status.as_ref()?.observed_generation?;
            if observed < d.metadata.generation? {
                return None;
            }
            let list = replica_sets
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .ok()?;
            list.items.iter().find_map(|rs| {
                let template_image = rs
                    .spec
                    .template
                    .as_ref()?
                    .spec
                    .as_ref()?
                    .containers
                    .first()?
                    .image
                    .clone()?;
                (template_image == image)
                    .then(|| {
                        rs.metadata
                            .labels
                            .as_ref()?
                            .get("pod-template-hash")
                            .cloned()
                    })
                    .flatten()
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_steps_back_once_per_detection_and_never_returns_to_a_left_rollout() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("rollback");
    let rule = actor(&ns, "checkout-slo", "aaaa1111-0000-0000-0000-000000000001");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    let mut hashes = Vec::new();
    for version in ["v1", "v2", "v3"] {
        let image = format!("registry.invalid/api:{version}");
        cluster.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&deployment_yaml(&ns, "api", &image, "", false)),
        );
        hashes.push(rolled_out(&client, &ns, "api", &image).await);
    }

    // The first detection rolls back from v3 to v2, as `kubectl rollout undo` would.
    let acted = rollback::rollback(&client, &rule, &ns, "api", "det-1")
        .await
        .expect("rolled back");
    assert!(acted.changed);
    assert_eq!(acted.action, "rollback");
    assert!(
        acted.summary.contains("revision 3") && acted.summary.contains("revision 2"),
        "{}",
        acted.summary
    );
    let now = deployments.get("api").await.unwrap();
    assert_eq!(image_of(&now), "registry.invalid/api:v2");
    assert_eq!(
        annotation(&now.metadata, rollback::ROLLED_BACK_FOR).as_deref(),
        Some("det-1")
    );
    assert_eq!(
        annotation(&now.metadata, rollback::ROLLED_BACK_FROM),
        Some(hashes[2].clone())
    );
    // The audit trail's versions: the patch made a new one (the Deployment controller
    // may have written status since, so it need not be the newest).
    assert!(acted.version_after.is_some(), "{acted:?}");
    assert_ne!(acted.version_after, acted.version_before);
    // The controller rolls out v2 again from its old ReplicaSet (no new one), which
    // becomes revision 4: v3's revision 3 is now the newest earlier one.
    assert_eq!(
        rolled_out(&client, &ns, "api", "registry.invalid/api:v2").await,
        hashes[1]
    );
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let v2 = format!("api-{}", hashes[1]);
    eventually("v2's ReplicaSet to be revision 4", WAIT, || async {
        let rs = replica_sets.get(&v2).await.ok()?;
        (annotation(&rs.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("4"))
            .then_some(())
    })
    .await;

    // The same detection again changes nothing.
    let again = rollback::rollback(&client, &rule, &ns, "api", "det-1")
        .await
        .expect("answered");
    assert!(!again.changed, "{}", again.summary);
    assert_eq!(again.version_before, again.version_after);
    // (Its status moves on as the controller works; its spec does not.)
    let after = deployments.get("api").await.unwrap();
    assert_eq!(after.metadata.generation, now.metadata.generation);
    assert_eq!(image_of(&after), "registry.invalid/api:v2");

    // A new detection rolls back further, to v1, not back to v3 (revision 3, now the
    // newest earlier revision than v2's renumbered 4).
    let further = rollback::rollback(&client, &rule, &ns, "api", "det-2")
        .await
        .expect("rolled back further");
    assert!(further.changed);
    let now = deployments.get("api").await.unwrap();
    assert_eq!(image_of(&now), "registry.invalid/api:v1");
    assert_eq!(
        annotation(&now.metadata, rollback::ROLLED_BACK_FROM),
        Some(format!("{},{}", hashes[2], hashes[1]))
    );
    rolled_out(&client, &ns, "api", "registry.invalid/api:v1").await;

    // Every earlier revision has been left: nothing to roll back to.
    let refused = rollback::rollback(&client, &rule, &ns, "api", "det-3")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "NoPreviousRevision", "{refused}");
    assert!(refused.is_refused());
    assert_eq!(
        image_of(&deployments.get("api").await.unwrap()),
        "registry.invalid/api:v1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_refused_where_it_may_not_or_cannot_act() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("rollback-refused");
    let rule = actor(&ns, "checkout-slo", "bbbb2222-0000-0000-0000-000000000002");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // One revision only.
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&deployment_yaml(
            &ns,
            "single",
            "registry.invalid/single:v1",
            "",
            false,
        )),
    );
    rolled_out(&client, &ns, "single", "registry.invalid/single:v1").await;
    let refused = rollback::rollback(&client, &rule, &ns, "single", "det-1")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "NoPreviousRevision", "{refused}");

    // Kept in sync by Flux, with two revisions: refused, and left as it is.
    let flux = "    kustomize.toolkit.fluxcd.io/name: apps";
    for version in ["v1", "v2"] {
        let image = format!("registry.invalid/gitops:{version}");
        cluster.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&deployment_yaml(&ns, "gitops", &image, flux, false)),
        );
        rolled_out(&client, &ns, "gitops", &image).await;
    }
    let refused = rollback::rollback(&client, &rule, &ns, "gitops", "det-1")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "GitOpsManaged", "{refused}");
    let gitops = deployments.get("gitops").await.unwrap();
    assert_eq!(image_of(&gitops), "registry.invalid/gitops:v2");
    assert_eq!(
        annotation(&gitops.metadata, rollback::ROLLED_BACK_FOR),
        None
    );

    // A rule of another namespace may not touch it.
    let stranger = actor(
        "elsewhere",
        "checkout-slo",
        "cccc3333-0000-0000-0000-000000000003",
    );
    let refused = rollback::rollback(&client, &stranger, &ns, "single", "det-1")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "CrossNamespace", "{refused}");

    // A paused Deployment is refused: its user holds its rollouts.
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&deployment_yaml(
            &ns,
            "paused",
            "registry.invalid/paused:v1",
            "",
            true,
        )),
    );
    let refused = rollback::rollback(&client, &rule, &ns, "paused", "det-1")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "DeploymentPaused", "{refused}");

    // The workload of an HPA: its Deployment, never another kind.
    let hpa = |name: &str, kind: &str, api_version: &str| {
        format!(
            r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
  namespace: {ns}
spec:
  minReplicas: 1
  maxReplicas: 3
  scaleTargetRef:
    apiVersion: {api_version}
    kind: {kind}
    name: single
"#
        )
    };
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&hpa("by-deployment", "Deployment", "apps/v1")),
    );
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&hpa("by-statefulset", "StatefulSet", "apps/v1")),
    );
    assert_eq!(
        rollback::rollback_target_of_hpa(&client, &ns, "by-deployment")
            .await
            .unwrap(),
        (ns.clone(), "single".to_owned())
    );
    let refused = rollback::rollback_target_of_hpa(&client, &ns, "by-statefulset")
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "UnsupportedRollbackTarget", "{refused}");
}

// ---------------------------------------------------------------------------------
// chaos

fn chaos_api(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("chaos-mesh.org", "v1alpha1", kind),
        plural,
    );
    Api::namespaced_with(client.clone(), namespace, &ar)
}

/// The experiment's annotations, as `kubectl get -o yaml` shows them.
async fn annotations_of(api: &Api<DynamicObject>, name: &str) -> BTreeMap<String, String> {
    api.get(name)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

fn paused(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(chaos::PAUSE_ANNOTATION).map(String::as_str) == Some("true")
}

fn experiments(ns: &str) -> String {
    format!(
        r#"
apiVersion: chaos-mesh.org/v1alpha1
kind: Schedule
metadata:
  name: nightly
  namespace: {ns}
spec:
  schedule: "@every 10m"
  type: PodChaos
  podChaos:
    action: pod-kill
    mode: one
---
apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata:
  name: kill-one
  namespace: {ns}
spec:
  action: pod-kill
  mode: one
---
apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata:
  name: held
  namespace: {ns}
  annotations:
    experiment.chaos-mesh.org/pause: "true"
spec:
  action: pod-kill
  mode: one
"#
    )
}

fn chaos_ref(kind: &str, name: &str) -> ChaosRef {
    ChaosRef {
        kind: kind.into(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_experiments_pause_while_claimed_and_a_users_pause_is_kept() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    install_chaos_mesh(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("chaos");
    // Created, not applied: kubectl apply would add an annotation of its own.
    cluster.kubectl_stdin(&["create", "-f", "-"], Some(&experiments(&ns)));
    let first = actor(&ns, "checkout-slo", "dddd4444-0000-0000-0000-000000000004");
    let second = actor(&ns, "search-slo", "eeee5555-0000-0000-0000-000000000005");
    let schedules = chaos_api(&client, &ns, "Schedule", "schedules");
    let pod_chaos = chaos_api(&client, &ns, "PodChaos", "podchaos");
    let nightly = chaos_ref("Schedule", "nightly");

    // One rule: pause, pause again (nothing more), resume.
    let acted = chaos::set_paused(&client, &first, &ns, &nightly, true)
        .await
        .unwrap();
    assert!(acted.changed && acted.action == "chaos-pause", "{acted:?}");
    let a = annotations_of(&schedules, "nightly").await;
    assert!(paused(&a), "{a:?}");
    assert_eq!(
        a[&format!("{}{}", chaos::PAUSED_BY_PREFIX, first.claim_key())],
        "true"
    );
    let again = chaos::set_paused(&client, &first, &ns, &nightly, true)
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.version_before, acted.version_after);
    let resumed = chaos::release(&client, &first, &ns, &nightly)
        .await
        .unwrap()
        .unwrap();
    assert!(
        resumed.changed && resumed.action == "chaos-resume",
        "{resumed:?}"
    );
    assert!(resumed.summary.ends_with("resumed"), "{}", resumed.summary);
    assert!(annotations_of(&schedules, "nightly").await.is_empty());
    let idle = chaos::set_paused(&client, &first, &ns, &nightly, false)
        .await
        .unwrap();
    assert!(!idle.changed);

    // Two rules: paused until both have resumed it.
    let kill_one = chaos_ref("PodChaos", "kill-one");
    chaos::set_paused(&client, &first, &ns, &kill_one, true)
        .await
        .unwrap();
    chaos::set_paused(&client, &second, &ns, &kill_one, true)
        .await
        .unwrap();
    let kept = chaos::set_paused(&client, &first, &ns, &kill_one, false)
        .await
        .unwrap();
    assert!(
        paused(&annotations_of(&pod_chaos, "kill-one").await),
        "{}",
        kept.summary
    );
    chaos::set_paused(&client, &second, &ns, &kill_one, false)
        .await
        .unwrap();
    assert!(annotations_of(&pod_chaos, "kill-one").await.is_empty());

    // Paused by its user before any rule: never unpaused by Prophet.
    let held = chaos_ref("PodChaos", "held");
    chaos::set_paused(&client, &first, &ns, &held, true)
        .await
        .unwrap();
    assert_eq!(
        annotations_of(&pod_chaos, "held").await[chaos::PAUSED_BY_USER],
        "true"
    );
    chaos::release(&client, &first, &ns, &held).await.unwrap();
    assert_eq!(
        annotations_of(&pod_chaos, "held").await,
        BTreeMap::from([(chaos::PAUSE_ANNOTATION.to_owned(), "true".to_owned())])
    );

    // A missing experiment fails (retryable), and releasing it is nothing to do.
    let ghost = chaos_ref("Schedule", "ghost");
    let missing = chaos::set_paused(&client, &first, &ns, &ghost, true)
        .await
        .unwrap_err();
    assert_eq!(missing.reason(), "NotFound", "{missing}");
    assert!(!missing.is_refused());
    assert_eq!(
        chaos::release(&client, &first, &ns, &ghost).await.unwrap(),
        None
    );

    // Refused: a kind Prophet does not pause, and another namespace's experiment.
    let refused = chaos::set_paused(&client, &first, &ns, &chaos_ref("NetworkChaos", "x"), true)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "UnsupportedChaosKind");
    let stranger = actor("elsewhere", "slo", "ffff6666-0000-0000-0000-000000000006");
    let refused = chaos::set_paused(&client, &stranger, &ns, &nightly, true)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "CrossNamespace");
    assert!(annotations_of(&schedules, "nightly").await.is_empty());
}

// ---------------------------------------------------------------------------------
// K8sGPT

fn k8sgpt_result(ns: &str, name: &str, object: &str, parent: &str, error: &str) -> String {
    format!(
        r#"
apiVersion: core.k8sgpt.ai/v1alpha1
kind: Result
metadata:
  name: {name}
  namespace: {ns}
spec:
  backend: openai
  kind: Pod
  name: {object}
  parentObject: {parent}
  details: ""
  error:
    - text: "{error}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8sgpt_results_about_the_target_are_summarised_within_bounds() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    install_k8sgpt(cluster);
    let client = cluster.client().await;
    // The operator writes Results in its own namespace, about objects in others.
    let operator = cluster.namespace("k8sgpt-operator");
    let shop = cluster.namespace("shop");
    let results = [
        k8sgpt_result(
            &operator,
            "shopapi7d9f",
            &format!("{shop}/api-7d9f-x2"),
            "Deployment/api",
            "back-off 5m0s restarting failed container=api",
        ),
        k8sgpt_result(
            &operator,
            "shopweb5c1a",
            &format!("{shop}/web-5c1a-q8"),
            "Deployment/web",
            "OOMKilled",
        ),
    ]
    .join("---");
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&results));

    let targets = vec![("Deployment".to_owned(), "api".to_owned())];
    let text = k8sgpt::analysis(&client, Some(&operator), &shop, &targets, 1000)
        .await
        .unwrap()
        .expect("an analysis");
    assert!(text.contains("K8sGPT found 1 problem"), "{text}");
    assert!(text.contains(&format!("{shop}/api-7d9f-x2")), "{text}");
    assert!(
        text.contains("back-off 5m0s restarting failed container=api"),
        "{text}"
    );
    assert!(
        !text.contains("OOMKilled") && !text.contains("web"),
        "{text}"
    );

    // Read from every namespace, the same.
    let everywhere = k8sgpt::analysis(&client, None, &shop, &targets, 1000)
        .await
        .unwrap();
    assert_eq!(everywhere.as_deref(), Some(text.as_str()));

    // Bounded.
    let short = k8sgpt::analysis(&client, Some(&operator), &shop, &targets, 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(short.chars().count(), 30, "{short}");
    assert!(short.ends_with('…'));

    // Nothing about a workload K8sGPT found no problem with.
    let healthy = vec![("Deployment".to_owned(), "cart".to_owned())];
    assert_eq!(
        k8sgpt::analysis(&client, None, &shop, &healthy, 1000)
            .await
            .unwrap(),
        None
    );
}

/// A control plane without Chaos Mesh or K8sGPT installed (a private one: the shared
/// cluster has the test CRDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_chaos_mesh_or_k8sgpt_nothing_is_paused_and_there_is_no_analysis() {
    let Some(private) = common::k8s::PrivateCluster::start("no-addons") else {
        return;
    };
    let client = private.cluster.client().await;
    let rule = actor(
        "shop",
        "checkout-slo",
        "abab7777-0000-0000-0000-000000000007",
    );
    let nightly = chaos_ref("Schedule", "nightly");

    let missing = chaos::set_paused(&client, &rule, "shop", &nightly, true)
        .await
        .unwrap_err();
    assert_eq!(missing.reason(), "ChaosMeshMissing", "{missing}");
    assert!(
        missing.to_string().contains("schedules.chaos-mesh.org"),
        "{missing}"
    );
    assert_eq!(
        chaos::release(&client, &rule, "shop", &nightly)
            .await
            .unwrap(),
        None
    );

    let targets = vec![("Deployment".to_owned(), "api".to_owned())];
    assert_eq!(
        k8sgpt::analysis(&client, None, "shop", &targets, 1000)
            .await
            .unwrap(),
        None
    );
}
