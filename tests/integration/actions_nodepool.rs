//! PredictiveScale's actions on Karpenter NodePools (src/actuate/nodepool.rs) against a
//! real API server, with a test copy of Karpenter's v1 NodePool CRD
//! (tests/fixtures/crds/karpenter.yaml, real-shaped where Prophet reads and writes) and
//! deploy/priorityclass.yaml installed. What a cluster admin and a tenant would notice:
//! a pool that does not allow the rule's namespace is left alone; provisioning creates
//! the placeholder pods owned by the rule and pinned to the pool, raises the pool's
//! limits within the admin's bound, adds one hold beside the user's budgets, and doing it
//! again changes nothing; consolidating and releasing give back exactly what Prophet
//! took; weights move without touching the pool's template; a stale write is refused by
//! the server the way the action expects.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use prophet::actuate::nodepool::{self, node_pool_resource};
use prophet::actuate::{Acted, Actor};
use prophet::eval::ForecastView;
use prophet::eval::forecast::ForecastModel;
use prophet::rules::crd::{PredictiveScale, PredictiveScaleSpec};
use prophet::rules::load::RuleKind;
use serde_json::{Value, json};

use crate::common;
use crate::common::k8s::Cluster;

/// Installs the NodePool CRD and the PriorityClass once per test binary.
fn setup(cluster: &Cluster) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        cluster.install_crds();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let crd = root.join("tests/fixtures/crds/karpenter.yaml");
        let class = root.join("deploy/priorityclass.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
        cluster.kubectl(&["apply", "--server-side", "-f", class.to_str().unwrap()]);
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/nodepools.karpenter.sh",
        ]);
    });
}

/// A NodePool as a user writes one: a template with requirements, labels and taints,
/// limits, their own budget and a weight; `annotations` are the admin's policy.
fn create_pool(cluster: &Cluster, name: &str, weight: i64, annotations: Value) -> Value {
    let pool = json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "weight": weight,
            "limits": {"cpu": "100", "memory": "400Gi"},
            "disruption": {
                "consolidationPolicy": "WhenEmptyOrUnderutilized",
                "consolidateAfter": "5m",
                "budgets": [
                    {"nodes": "20%"},
                    {"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h", "reasons": ["Drifted"]},
                ],
            },
            "template": {
                "metadata": {"labels": {"team": "shop"}},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                    "requirements": [
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                    ],
                    "taints": [{"key": "team", "value": "shop", "effect": "NoSchedule"}],
                },
            },
        },
    });
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&pool.to_string()));
    pool
}

fn allowing(namespace: &str) -> Value {
    json!({
        "aiops.prophet.io/allowed-namespaces": format!("web,{namespace}"),
        "aiops.prophet.io/max-limits-cpu": "102",
        "aiops.prophet.io/max-limits-memory": "1000Gi",
        "aiops.prophet.io/max-placeholders": "6",
    })
}

/// Creates the PredictiveScale, so the placeholders' owner is a real object, and the
/// actor that acts for it.
async fn rule(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    spec: Value,
) -> (Actor, PredictiveScaleSpec) {
    let object = json!({
        "apiVersion": "aiops.prophet.io/v1alpha1",
        "kind": "PredictiveScale",
        "metadata": {"name": "checkout", "namespace": ns},
        "spec": spec,
    });
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&object.to_string()));
    let created = Api::<PredictiveScale>::namespaced(client.clone(), ns)
        .get("checkout")
        .await
        .unwrap();
    let actor = Actor {
        kind: RuleKind::PredictiveScale,
        namespace: ns.to_owned(),
        name: "checkout".into(),
        uid: created.metadata.uid.clone().unwrap(),
        allow_git_ops: false,
        allow_cross_namespace: false,
    };
    (actor, created.spec)
}

fn spec(pool: &str, alternate: Option<&str>) -> Value {
    let mut spec = json!({
        "forecastQuery": "sum(rate(requests_total[5m]))",
        "nodePoolRef": {"name": pool},
        "horizon": "1h",
        "thresholdPercent": 20,
        "action": "provision",
        // Requests per second: half a core and 1Gi each.
        "reservation": {"cpuPerUnit": "500m", "memoryPerUnit": "1Gi"},
    });
    if let Some(alternate) = alternate {
        spec["alternateNodePoolRef"] = json!({"name": alternate});
        spec["action"] = json!("adjust");
    }
    spec
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Requests rising from 10 to 14 per second within the hour.
fn rise(now: i64) -> ForecastView {
    ForecastView {
        current: 10.0,
        value: 14.0,
        lower: 13.0,
        upper: 15.0,
        change_percent: 40.0,
        model: ForecastModel::Trend,
        at_ms: now,
        horizon_ms: 3_600_000,
        history: 120,
    }
}

async fn read_pool(client: &kube::Client, name: &str) -> Value {
    let pool = Api::<DynamicObject>::all_with(client.clone(), &node_pool_resource())
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(pool).unwrap()
}

fn budgets(pool: &Value) -> Vec<Value> {
    pool["spec"]["disruption"]["budgets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Prophet's own annotations on a pool (the admin's policy ones left out).
fn marks(pool: &Value) -> Vec<String> {
    pool["metadata"]["annotations"]
        .as_object()
        .map(|a| {
            a.keys()
                .filter(|k| k.starts_with("aiops.prophet.io/"))
                .filter(|k| !k.contains("allowed-namespaces") && !k.contains("/max-"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn changed(acted: &[Acted], action: &str) -> bool {
    acted
        .iter()
        .filter(|a| a.action == action)
        .any(|a| a.changed)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_does_not_allow_the_namespace_is_refused_and_unchanged() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-refused");
    let name = format!("{ns}-general");
    // Bounds set, but no namespace allowed; then another namespace only.
    create_pool(
        cluster,
        &name,
        10,
        json!({"aiops.prophet.io/max-limits-cpu": "200"}),
    );
    let (actor, spec) = rule(cluster, &client, &ns, spec(&name, None)).await;
    let before = read_pool(&client, &name).await;

    let err = nodepool::provision(&client, &actor, &spec, &rise(now_ms()), "d-1", now_ms())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NodePoolNotAllowed");
    assert!(err.is_refused());

    cluster.kubectl(&[
        "annotate",
        "nodepool",
        &name,
        "aiops.prophet.io/allowed-namespaces=web,payments",
    ]);
    let before = {
        let after_annotate = read_pool(&client, &name).await;
        assert_eq!(after_annotate["spec"], before["spec"]);
        after_annotate
    };
    let err = nodepool::provision(&client, &actor, &spec, &rise(now_ms()), "d-1", now_ms())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NodePoolNotAllowed");
    let after = read_pool(&client, &name).await;
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    let placeholders = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get_opt("prophet-reserve-checkout")
        .await
        .unwrap();
    assert!(placeholders.is_none(), "no placeholders for a refused rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_reserves_once_and_consolidate_gives_back_only_prophets_part() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-provision");
    let name = format!("{ns}-general");
    let created = create_pool(cluster, &name, 10, allowing(&ns));
    let (actor, spec) = rule(cluster, &client, &ns, spec(&name, None)).await;
    let original = read_pool(&client, &name).await;
    let now = now_ms();

    let acted = nodepool::provision(&client, &actor, &spec, &rise(now), "d-1", now)
        .await
        .unwrap();
    assert!(changed(&acted, "placeholders"), "{acted:?}");
    assert!(changed(&acted, "nodepool-limits"), "{acted:?}");
    assert!(changed(&acted, "nodepool-budget"), "{acted:?}");

    // 4 requests per second more: 2 cores and 4Gi, 4 placeholders of 1 core / 1Gi.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let placeholders = deployments.get("prophet-reserve-checkout").await.unwrap();
    assert_eq!(placeholders.spec.replicas, Some(4));
    let owner = &placeholders.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, actor.uid);
    assert_eq!(owner.kind, "PredictiveScale");
    let pod = placeholders.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
        name
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("prophet-placeholder")
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(0));
    // The pods exist (the PriorityClass admitted them) and wait for a node.
    wait_for("the placeholder pods", async || {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        let list = pods
            .list(
                &kube::api::ListParams::default()
                    .labels("aiops.prophet.io/placeholder=prophet-reserve-checkout"),
            )
            .await
            .unwrap();
        list.items.len() == 4
            && list
                .items
                .iter()
                .all(|p| p.spec.as_ref().unwrap().priority == Some(-10))
    })
    .await;

    let pool = read_pool(&client, &name).await;
    // cpu 100 + 4 capped at the admin's 102; memory 400Gi + 4Gi within 1000Gi.
    assert_eq!(
        pool["spec"]["limits"],
        json!({"cpu": "102", "memory": "404Gi"})
    );
    // The user's two budgets, then exactly one of Prophet's.
    let list = budgets(&pool);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[..2], budgets(&created)[..]);
    assert_eq!(list[2]["nodes"], "0");
    assert_eq!(list[2]["reasons"], json!(["Underutilized", "Empty"]));
    assert_eq!(pool["spec"]["template"], original["spec"]["template"]);
    assert_eq!(pool["spec"]["weight"], 10);

    // Again, as after a restart: nothing changes.
    let again = nodepool::provision(&client, &actor, &spec, &rise(now), "d-1", now + 30_000)
        .await
        .unwrap();
    assert!(again.iter().all(|a| !a.changed), "{again:?}");
    let unchanged = read_pool(&client, &name).await;
    assert_eq!(
        unchanged["metadata"]["resourceVersion"],
        pool["metadata"]["resourceVersion"]
    );
    assert_eq!(
        deployments
            .get("prophet-reserve-checkout")
            .await
            .unwrap()
            .metadata
            .generation,
        placeholders.metadata.generation
    );

    // The forecast falls: placeholders to zero, only Prophet's budget goes, the user's
    // limits come back.
    let acted = nodepool::consolidate(&client, &actor, &spec, "d-2")
        .await
        .unwrap();
    assert!(changed(&acted, "placeholders"), "{acted:?}");
    let pool = read_pool(&client, &name).await;
    assert_eq!(budgets(&pool), budgets(&created));
    assert_eq!(
        pool["spec"]["limits"],
        json!({"cpu": "100", "memory": "400Gi"})
    );
    assert_eq!(pool["spec"], original["spec"]);
    assert!(marks(&pool).is_empty(), "{:?}", marks(&pool));
    let placeholders = deployments.get("prophet-reserve-checkout").await.unwrap();
    assert_eq!(placeholders.spec.replicas, Some(0));
    let again = nodepool::consolidate(&client, &actor, &spec, "d-2")
        .await
        .unwrap();
    assert!(again.iter().all(|a| !a.changed), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_the_user_changed_meanwhile_is_theirs_and_a_moved_peak_moves_the_hold() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-moved");
    let name = format!("{ns}-general");
    let created = create_pool(cluster, &name, 10, allowing(&ns));
    let (actor, spec) = rule(cluster, &client, &ns, spec(&name, None)).await;
    let now = now_ms();
    nodepool::provision(&client, &actor, &spec, &rise(now), "d-1", now)
        .await
        .unwrap();
    let first = budgets(&read_pool(&client, &name).await)[2].clone();

    // The next forecast peaks an hour later: one hold still, the new one.
    let mut later = rise(now + 60_000);
    later.horizon_ms = 2 * 3_600_000;
    let acted = nodepool::provision(&client, &actor, &spec, &later, "d-1", now + 60_000)
        .await
        .unwrap();
    assert!(changed(&acted, "nodepool-budget"), "{acted:?}");
    let list = budgets(&read_pool(&client, &name).await);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_ne!(list[2], first);

    // The user raises memory by hand; giving back leaves their value.
    cluster.kubectl(&[
        "patch",
        "nodepool",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"limits":{"memory":"500Gi"}}}"#,
    ]);
    nodepool::consolidate(&client, &actor, &spec, "d-2")
        .await
        .unwrap();
    let pool = read_pool(&client, &name).await;
    assert_eq!(
        pool["spec"]["limits"],
        json!({"cpu": "100", "memory": "500Gi"})
    );
    assert_eq!(budgets(&pool), budgets(&created));
    assert!(marks(&pool).is_empty(), "{:?}", marks(&pool));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjust_moves_weights_only_and_release_restores_everything() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-adjust");
    let (spot, on_demand) = (format!("{ns}-spot"), format!("{ns}-on-demand"));
    create_pool(cluster, &spot, 10, allowing(&ns));
    create_pool(cluster, &on_demand, 50, allowing(&ns));
    let (actor, spec) = rule(cluster, &client, &ns, spec(&spot, Some(&on_demand))).await;
    let (spot0, on_demand0) = (
        read_pool(&client, &spot).await,
        read_pool(&client, &on_demand).await,
    );
    let template = |pool: &Value| serde_json::to_string(&pool["spec"]["template"]).unwrap();

    // Rising: the spot pool (nodePoolRef) is preferred.
    let acted = nodepool::adjust(&client, &actor, &spec, true, "d-1")
        .await
        .unwrap();
    assert_eq!(acted.iter().filter(|a| a.changed).count(), 2, "{acted:?}");
    let (s, o) = (
        read_pool(&client, &spot).await,
        read_pool(&client, &on_demand).await,
    );
    assert_eq!(
        (s["spec"]["weight"].clone(), o["spec"]["weight"].clone()),
        (json!(50), json!(10))
    );
    // Never the template: Karpenter would replace every node as drifted.
    assert_eq!(template(&s), template(&spot0));
    assert_eq!(template(&o), template(&on_demand0));
    let again = nodepool::adjust(&client, &actor, &spec, true, "d-1")
        .await
        .unwrap();
    assert!(again.iter().all(|a| !a.changed), "{again:?}");

    // Falling: back to the on-demand pool, which is where the user had it.
    nodepool::adjust(&client, &actor, &spec, false, "d-2")
        .await
        .unwrap();
    let (s, o) = (
        read_pool(&client, &spot).await,
        read_pool(&client, &on_demand).await,
    );
    assert_eq!(s["spec"], spot0["spec"]);
    assert_eq!(o["spec"], on_demand0["spec"]);
    assert!(marks(&s).is_empty() && marks(&o).is_empty());

    // Rising again, and a reservation on the spot pool; then the rule is deleted.
    nodepool::adjust(&client, &actor, &spec, true, "d-3")
        .await
        .unwrap();
    let now = now_ms();
    nodepool::provision(&client, &actor, &spec, &rise(now), "d-3", now)
        .await
        .unwrap();
    let s = read_pool(&client, &spot).await;
    assert_ne!(s["spec"], spot0["spec"]);
    let acted = nodepool::release(&client, &actor, &spec).await.unwrap();
    assert!(changed(&acted, "release"), "{acted:?}");
    let (s, o) = (
        read_pool(&client, &spot).await,
        read_pool(&client, &on_demand).await,
    );
    assert_eq!(
        s["spec"], spot0["spec"],
        "limits, weight and budgets restored"
    );
    assert_eq!(o["spec"], on_demand0["spec"]);
    assert!(
        marks(&s).is_empty() && marks(&o).is_empty(),
        "{:?} {:?}",
        marks(&s),
        marks(&o)
    );
    let placeholders = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get_opt("prophet-reserve-checkout")
        .await
        .unwrap();
    assert!(
        placeholders.is_none_or(|d| d.metadata.deletion_timestamp.is_some()),
        "placeholders deleted"
    );
    // Released twice, or with the pools gone: nothing to do, no error.
    assert!(
        nodepool::release(&client, &actor, &spec)
            .await
            .unwrap()
            .is_empty()
    );
    cluster.kubectl(&["delete", "nodepool", &spot, &on_demand]);
    assert!(
        nodepool::release(&client, &actor, &spec)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjust_without_an_alternate_is_refused_and_a_missing_pool_is_not_found() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-missing");
    let (actor, spec) = rule(cluster, &client, &ns, spec(&format!("{ns}-absent"), None)).await;
    let err = nodepool::adjust(&client, &actor, &spec, true, "d-1")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NoAlternateNodePool");
    assert!(err.is_refused());
    let err = nodepool::provision(&client, &actor, &spec, &rise(now_ms()), "d-1", now_ms())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotFound");
    assert!(!err.is_refused());
}

/// The mock tests of the conflict path answer a stale `test` op with 422 and a message
/// naming the test; this checks that a real API server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_version_test_is_answered_as_the_action_expects() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    setup(cluster);
    let client = cluster.client().await;
    let ns = cluster.namespace("np-stale");
    let name = format!("{ns}-general");
    create_pool(cluster, &name, 10, allowing(&ns));
    let read = read_pool(&client, &name).await;
    // Someone else writes between our read and our patch.
    cluster.kubectl(&[
        "patch",
        "nodepool",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"weight":11}}"#,
    ]);
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": read["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/spec/disruption/budgets/-", "value": {"nodes": "0"}},
    ]);
    let api = Api::<DynamicObject>::all_with(client.clone(), &node_pool_resource());
    let err = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch).unwrap()),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    // 422 naming no object and no field: what the action reads as "changed since read".
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .details
            .as_ref()
            .is_none_or(|d| d.name.is_empty() && d.causes.is_empty()),
        "{status:?}"
    );
    assert_eq!(
        budgets(&read_pool(&client, &name).await).len(),
        2,
        "nothing lost, nothing added"
    );
}
