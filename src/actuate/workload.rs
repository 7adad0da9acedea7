//! Workload actions of an AnomalyAction's `restart`: evicting the pods whose own series
//! tripped, and rolling restarts of the Deployment or StatefulSet that owns them (or of
//! one named in `target.name`). Also how a pod's owning workload is found, which
//! [`super::hpa`] shares.
//!
//! It must never delete a pod (only the `policy/v1` Eviction API, which honours
//! PodDisruptionBudgets), never force an eviction, never evict a pod no controller will
//! recreate, and never evict more pods of one workload in one call than its budget
//! allows. It writes only `aiops.prophet.io/` annotations and the
//! `kubectl.kubernetes.io/restartedAt` template annotation `kubectl rollout restart`
//! writes, by merge patches guarded by `metadata.resourceVersion`.
//!
//! RBAC: pods get; pods/eviction create; poddisruptionbudgets list; replicasets get;
//! deployments and statefulsets get, patch (StatefulSet pods' eviction record, rollout
//! restarts); get on any other controller kind that owns pods (daemonsets, jobs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams,
    Preconditions,
};
use kube::core::{GroupVersionKind, Selector, SelectorExt};
use serde_json::json;

use super::{ActError, Acted, Actor, TargetRef, guard};
use crate::eval::PodRef;
use crate::rules::crd::TargetResourceType;

/// On a workload: the detection its last rollout restart was for.
pub const RESTARTED_FOR: &str = "aiops.prophet.io/restarted-for";
/// On a StatefulSet: the detection its pods were last evicted for, and
/// [`EVICTED_PODS`] which pods (`name=uid,...`): a StatefulSet's pods come back under
/// the same name, so the name alone cannot tell an evicted pod from its replacement.
pub const EVICTED_FOR: &str = "aiops.prophet.io/evicted-for";
pub const EVICTED_PODS: &str = "aiops.prophet.io/evicted-pods";
/// The pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// When pods held back by a disruption budget are worth trying again, unless the API
/// server says otherwise: long enough for a replacement pod to become ready.
pub const EVICTION_RETRY: Duration = Duration::from_secs(30);

/// A controlling owner of an object, as read.
#[derive(Debug, Clone)]
pub struct Controller {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub meta: ObjectMeta,
}

impl Controller {
    fn describe(&self) -> String {
        let ns = self.meta.namespace.as_deref().unwrap_or_default();
        format!("{} {ns}/{}", self.kind, self.name)
    }
}

/// The ownerReference that names an object's controller, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Reads the metadata of the object `owner` names, whatever its kind (known kinds by
/// their exact plural; others, such as an Argo Rollout, by kube's pluralisation).
pub async fn read_controller(
    client: &kube::Client,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<Controller, ActError> {
    let gvk = GroupVersionKind::from(owner.clone());
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let read = api.get_metadata(&owner.name).await.map_err(|e| {
        ActError::api(
            format!("reading {} {namespace}/{}", owner.kind, owner.name),
            e,
        )
    })?;
    Ok(Controller {
        api_version: owner.api_version.clone(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        meta: read.metadata,
    })
}

/// A pod's controller and the workload that keeps it: the same object, except for a
/// ReplicaSet that is itself controlled (by a Deployment, or an Argo Rollout), whose
/// controller is the workload. `None` for a bare pod.
pub async fn pod_workload(
    client: &kube::Client,
    pod: &Pod,
) -> Result<Option<(Controller, Controller)>, ActError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let Some(owner) = controller_ref(&pod.metadata) else {
        return Ok(None);
    };
    let direct = read_controller(client, namespace, owner).await?;
    let workload = match (direct.kind.as_str(), controller_ref(&direct.meta)) {
        ("ReplicaSet", Some(up)) => read_controller(client, namespace, up).await?,
        _ => direct.clone(),
    };
    Ok(Some((direct, workload)))
}

fn pod_name(pod: &PodRef) -> String {
    format!("Pod {}/{}", pod.namespace, pod.name)
}

fn unchanged_pod(pod: &PodRef, uid: Option<String>, version: Option<String>, why: &str) -> Acted {
    Acted {
        action: "evict",
        target: TargetRef {
            kind: "Pod".into(),
            namespace: Some(pod.namespace.clone()),
            name: pod.name.clone(),
            uid,
        },
        version_before: version,
        version_after: None,
        changed: false,
        summary: format!("pod {}/{} {why}", pod.namespace, pod.name),
    }
}

/// A pod that passed every check and waits for its eviction.
struct Candidate {
    index: usize,
    pod: Pod,
    /// The workload (its uid) whose budget the eviction spends.
    workload: Controller,
    /// The StatefulSet whose record names the pod, for StatefulSet pods.
    stateful: Option<Controller>,
}

enum Prepared {
    Done(Acted),
    Evict(Box<Candidate>),
}

/// The StatefulSet's record of the pods evicted for `detection`: name → uid.
fn eviction_record(meta: &ObjectMeta, detection: &str) -> BTreeMap<String, String> {
    let annotations = meta.annotations.clone().unwrap_or_default();
    if annotations.get(EVICTED_FOR).map(String::as_str) != Some(detection) {
        return BTreeMap::new();
    }
    annotations
        .get(EVICTED_PODS)
        .map(|pods| {
            pods.split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(n, u)| (n.to_owned(), u.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn prepare(
    client: &kube::Client,
    actor: &Actor,
    index: usize,
    target: &PodRef,
    detection: &str,
) -> Result<Prepared, ActError> {
    let name = pod_name(target);
    guard::check_namespace(actor, &target.namespace, &name)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let Some(pod) = pods
        .get_opt(&target.name)
        .await
        .map_err(|e| ActError::api(format!("reading {name}"), e))?
    else {
        return Ok(Prepared::Done(unchanged_pod(
            target,
            None,
            None,
            "is already gone",
        )));
    };
    let uid = pod.metadata.uid.clone();
    let version = pod.metadata.resource_version.clone();
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Prepared::Done(unchanged_pod(
            target,
            uid,
            version,
            "is already terminating",
        )));
    }
    let Some((direct, workload)) = pod_workload(client, &pod).await? else {
        return Err(ActError::refused(
            "BarePod",
            format!(
                "{name} has no controller (no ownerReference with controller: true): evicting it would delete it for good"
            ),
        ));
    };
    // GitOps keeps the workload (and at times the ReplicaSet), never the pod itself.
    guard::check_git_ops(actor, &direct.meta, &direct.describe())?;
    guard::check_git_ops(actor, &workload.meta, &workload.describe())?;
    let stateful = (direct.kind == "StatefulSet").then(|| direct.clone());
    if let Some(set) = &stateful {
        let record = eviction_record(&set.meta, detection);
        if record
            .get(&target.name)
            .is_some_and(|evicted| Some(evicted) != uid.as_ref())
        {
            return Ok(Prepared::Done(unchanged_pod(
                target,
                uid,
                version,
                "was already evicted for this detection (this is its replacement)",
            )));
        }
    }
    Ok(Prepared::Evict(Box::new(Candidate {
        index,
        pod,
        workload,
        stateful,
    })))
}

/// How many pods of a workload one call may evict: the least `disruptionsAllowed` of
/// the budgets whose selector matches any of `pods`; one when none does.
fn budget(pdbs: &[PodDisruptionBudget], pods: &[&Pod]) -> (i32, Vec<String>) {
    let mut allowed: Option<i32> = None;
    let mut names = Vec::new();
    for pdb in pdbs {
        // A null selector selects no pod in policy/v1; an empty one selects them all.
        let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.clone()) else {
            continue;
        };
        let Ok(selector) = Selector::try_from(selector) else {
            continue;
        };
        let matches = pods.iter().any(|pod| {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            selector.matches(&labels)
        });
        if matches {
            let disruptions = pdb
                .status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0);
            allowed = Some(allowed.map_or(disruptions, |a| a.min(disruptions)));
            names.push(pdb.metadata.name.clone().unwrap_or_default());
        }
    }
    (allowed.unwrap_or(1).max(0), names)
}

/// Maps the Eviction API's answer: a 429 is a disruption budget that allows no eviction
/// now (retried after the server's hint, or [`EVICTION_RETRY`]).
fn eviction_error(name: &str, error: kube::Error) -> ActError {
    if let kube::Error::Api(status) = &error
        && status.code == 429
    {
        let details = status.details.as_ref();
        let retry_after = details
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(EVICTION_RETRY);
        let causes: Vec<&str> = details
            .map(|d| d.causes.iter().map(|c| c.message.as_str()).collect())
            .unwrap_or_default();
        return ActError::Failed {
            reason: "DisruptionBudget",
            message: format!("evicting {name}: {} {}", status.message, causes.join("; "))
                .trim_end()
                .to_owned(),
            retry_after: Some(retry_after),
        };
    }
    ActError::api(format!("evicting {name}"), error)
}

async fn evict_one(client: &kube::Client, pod: &Pod) -> Result<Acted, ActError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let target = PodRef {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let described = pod_name(&target);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    // The uid precondition: never evict a same-named replacement of the pod read.
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match pods.evict(&name, &params).await {
        Ok(_) => Ok(Acted {
            action: "evict",
            target: TargetRef {
                kind: "Pod".into(),
                namespace: Some(namespace),
                name,
                uid: pod.metadata.uid.clone(),
            },
            version_before: pod.metadata.resource_version.clone(),
            version_after: None,
            changed: true,
            summary: format!("evicted pod {}/{}", target.namespace, target.name),
        }),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(unchanged_pod(
            &target,
            pod.metadata.uid.clone(),
            pod.metadata.resource_version.clone(),
            "was gone before its eviction",
        )),
        // A failed uid precondition: the pod read is gone, a replacement stands.
        Err(kube::Error::Api(status))
            if status.code == 409 && status.message.contains("Precondition failed") =>
        {
            Ok(unchanged_pod(
                &target,
                pod.metadata.uid.clone(),
                pod.metadata.resource_version.clone(),
                "was replaced before its eviction",
            ))
        }
        Err(error) => Err(eviction_error(&described, error)),
    }
}

/// Records on a StatefulSet which of its pods are evicted for `detection`, before they
/// are, so a second call knows their same-named replacements.
async fn record_stateful_evictions(
    client: &kube::Client,
    set: &Controller,
    pods: &[&Pod],
    detection: &str,
) -> Result<(), ActError> {
    let namespace = set.meta.namespace.clone().unwrap_or_default();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let doing = format!("recording the evictions on {}", set.describe());
    retry_conflicts(|| async {
        // Read afresh each time: the record may have grown since the pods were checked.
        let now = api
            .get(&set.name)
            .await
            .map_err(|e| ActError::api(&doing, e))?;
        let mut record = eviction_record(&now.metadata, detection);
        for pod in pods {
            if let (Some(name), Some(uid)) = (&pod.metadata.name, &pod.metadata.uid) {
                record.insert(name.clone(), uid.clone());
            }
        }
        let value: Vec<String> = record.iter().map(|(n, u)| format!("{n}={u}")).collect();
        let patch = json!({
            "metadata": {
                "resourceVersion": now.metadata.resource_version,
                "annotations": { EVICTED_FOR: detection, EVICTED_PODS: value.join(",") },
            }
        });
        api.patch(&set.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| ActError::api(&doing, e))?;
        Ok(())
    })
    .await
}

/// Evicts the tripped `pods` (a rule's `target.resourceType: Pod`), one result per pod
/// in their order. Each pod is checked first (namespace; GitOps on its controller and
/// workload); a bare pod is refused (`BarePod`); a pod gone or terminating is
/// `changed: false`. Per workload, no more pods are evicted than its
/// PodDisruptionBudgets allow now (one without a budget); the rest fail with
/// `DisruptionBudget` and a `retry_after`, to be evicted on a later call. The Eviction
/// API's own 429 is the same failure; nothing is ever deleted or forced.
///
/// Idempotent per `detection`: an evicted pod is terminating or gone on the next call,
/// and a StatefulSet's replacement pod (same name) is known by the record left on the
/// StatefulSet.
///
/// The kube client's default retry layer retries 429s for minutes; callers pass a
/// client built with `Config::default_retry = false` (or none), so that a budget's
/// refusal comes back here at once.
pub async fn evict(
    client: &kube::Client,
    actor: &Actor,
    pods: &[PodRef],
    detection: &str,
) -> Vec<Result<Acted, ActError>> {
    let mut results: Vec<Option<Result<Acted, ActError>>> = vec![None; pods.len()];
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut seen = HashSet::new();
    for (index, target) in pods.iter().enumerate() {
        if !seen.insert((target.namespace.as_str(), target.name.as_str())) {
            results[index] = Some(Ok(unchanged_pod(
                target,
                None,
                None,
                "is listed twice; acted on once",
            )));
            continue;
        }
        results[index] = match prepare(client, actor, index, target, detection).await {
            Ok(Prepared::Done(acted)) => Some(Ok(acted)),
            Ok(Prepared::Evict(candidate)) => {
                candidates.push(*candidate);
                None
            }
            Err(error) => Some(Err(error)),
        };
    }

    // Group by workload, in the order the pods came.
    let mut groups: Vec<Vec<Candidate>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for candidate in candidates {
        let key = candidate
            .workload
            .meta
            .uid
            .clone()
            .unwrap_or_else(|| candidate.workload.describe());
        let at = *group_of.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(candidate);
    }

    let mut budgets_by_namespace: HashMap<String, Vec<PodDisruptionBudget>> = HashMap::new();
    for group in groups {
        let namespace = group[0].pod.metadata.namespace.clone().unwrap_or_default();
        let workload = group[0].workload.describe();
        if !budgets_by_namespace.contains_key(&namespace) {
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    budgets_by_namespace.insert(namespace.clone(), list.items);
                }
                Err(error) => {
                    let error = ActError::api(
                        format!("listing the PodDisruptionBudgets of namespace {namespace}"),
                        error,
                    );
                    for candidate in group {
                        results[candidate.index] = Some(Err(error.clone()));
                    }
                    continue;
                }
            }
        }
        let pdbs = budgets_by_namespace
            .get(&namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let group_pods: Vec<&Pod> = group.iter().map(|c| &c.pod).collect();
        let (allowed, pdb_names) = budget(pdbs, &group_pods);
        let allowed = usize::try_from(allowed).unwrap_or(0).min(group.len());
        let (now, later) = group.split_at(allowed);
        for candidate in later {
            let name = candidate.pod.metadata.name.clone().unwrap_or_default();
            let why = if pdb_names.is_empty() {
                format!("{workload} has no PodDisruptionBudget, so one pod is evicted per call")
            } else {
                format!(
                    "the PodDisruptionBudget(s) {} of {workload} allow {allowed} disruption(s) now",
                    pdb_names.join(", ")
                )
            };
            results[candidate.index] = Some(Err(ActError::Failed {
                reason: "DisruptionBudget",
                message: format!("pod {namespace}/{name} is not evicted yet: {why}"),
                retry_after: Some(EVICTION_RETRY),
            }));
        }
        if now.is_empty() {
            continue;
        }
        if let Some(set) = &now[0].stateful {
            let to_record: Vec<&Pod> = now.iter().map(|c| &c.pod).collect();
            if let Err(error) = record_stateful_evictions(client, set, &to_record, detection).await
            {
                for candidate in now {
                    results[candidate.index] = Some(Err(error.clone()));
                }
                continue;
            }
        }
        for candidate in now {
            results[candidate.index] = Some(evict_one(client, &candidate.pod).await);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ActError::failed("Internal", "pod left unhandled"))))
        .collect()
}

/// A workload kind that a rollout restarts.
fn workload_kind(kind: TargetResourceType) -> Option<&'static str> {
    match kind {
        TargetResourceType::Deployment => Some("Deployment"),
        TargetResourceType::StatefulSet => Some("StatefulSet"),
        TargetResourceType::Pod => None,
    }
}

/// Restarts the `kind` (Deployment or StatefulSet) that owns `pod` by a rollout, as
/// `kubectl rollout restart` does (Pod → ReplicaSet → Deployment; Pod → StatefulSet).
/// Refused: a pod owned by another kind (`KindMismatch`), a bare pod (`BarePod`), and
/// whatever [`rollout_restart_named`] refuses.
pub async fn rollout_restart(
    client: &kube::Client,
    actor: &Actor,
    pod: &PodRef,
    kind: TargetResourceType,
    detection: &str,
) -> Result<Acted, ActError> {
    let name = pod_name(pod);
    let Some(wanted) = workload_kind(kind) else {
        return Err(ActError::refused(
            "UnsupportedKind",
            format!("a rollout restart needs a Deployment or StatefulSet, not {kind:?}"),
        ));
    };
    guard::check_namespace(actor, &pod.namespace, &name)?;
    let read: Pod = Api::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(|e| ActError::api(format!("reading {name}"), e))?;
    let Some((direct, workload)) = pod_workload(client, &read).await? else {
        return Err(ActError::refused(
            "BarePod",
            format!("{name} has no controller, so no {wanted} to restart"),
        ));
    };
    if workload.kind != wanted || workload.api_version != "apps/v1" {
        let chain = if direct.name == workload.name && direct.kind == workload.kind {
            direct.describe()
        } else {
            format!("{} of {}", direct.describe(), workload.describe())
        };
        return Err(ActError::refused(
            "KindMismatch",
            format!("{name} belongs to {chain}, not to a {wanted}"),
        ));
    }
    rollout_restart_named(
        client,
        actor,
        &pod.namespace,
        kind,
        &workload.name,
        detection,
    )
    .await
}

/// Restarts the named Deployment or StatefulSet (a rule's `target.name`) by a rollout:
/// sets `kubectl.kubernetes.io/restartedAt` on its pod template and records
/// `aiops.prophet.io/restarted-for: <detection>` on it in the same merge patch, guarded
/// by its `resourceVersion` (409 is retried). A second call for the same detection
/// changes nothing. Refused: another namespace, a GitOps-managed workload (unless
/// allowed), a paused Deployment (`DeploymentPaused`: it would not roll).
pub async fn rollout_restart_named(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    kind: TargetResourceType,
    name: &str,
    detection: &str,
) -> Result<Acted, ActError> {
    retry_conflicts(|| restart_once(client, actor, namespace, kind, name, detection)).await
}

/// How many times an action reads afresh and tries again when its guarded write met a
/// 409 (a controller updated the object's status between our read and our write).
const CONFLICT_TRIES: usize = 3;

/// Runs `attempt` until it does not fail with a 409, at most [`CONFLICT_TRIES`] times:
/// each attempt reads the object afresh, so this is the optimistic lock's loop. The last
/// conflict is returned (retryable) for the caller to back off.
pub(crate) async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, ActError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ActError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if error.reason() == "Conflict" && tries < CONFLICT_TRIES => tries += 1,
            done => return done,
        }
    }
}

async fn restart_once(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    kind: TargetResourceType,
    name: &str,
    detection: &str,
) -> Result<Acted, ActError> {
    let Some(kind_name) = workload_kind(kind) else {
        return Err(ActError::refused(
            "UnsupportedKind",
            format!("a rollout restart needs a Deployment or StatefulSet, not {kind:?}"),
        ));
    };
    let described = format!("{kind_name} {namespace}/{name}");
    guard::check_namespace(actor, namespace, &described)?;
    let (meta, paused) = match kind {
        TargetResourceType::Deployment => {
            let d: Deployment = Api::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| ActError::api(format!("reading {described}"), e))?;
            let paused = d.spec.paused.unwrap_or(false);
            (d.metadata, paused)
        }
        _ => {
            let s: StatefulSet = Api::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| ActError::api(format!("reading {described}"), e))?;
            (s.metadata, false)
        }
    };
    guard::check_git_ops(actor, &meta, &described)?;
    let target = TargetRef {
        kind: kind_name.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: meta.uid.clone(),
    };
    let restarted_for = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTARTED_FOR))
        .map(String::as_str);
    if restarted_for == Some(detection) {
        return Ok(Acted {
            action: "rollout-restart",
            target,
            version_before: meta.resource_version.clone(),
            version_after: meta.resource_version.clone(),
            changed: false,
            summary: format!("{described} was already restarted for this detection"),
        });
    }
    if paused {
        return Err(ActError::refused(
            "DeploymentPaused",
            format!("{described} is paused: a restart would not roll out until it is resumed"),
        ));
    }
    let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
    let patch = json!({
        "metadata": {
            "resourceVersion": meta.resource_version,
            "annotations": { RESTARTED_FOR: detection },
        },
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } },
    });
    let params = PatchParams::default();
    let doing = format!("restarting {described}");
    let after = match kind {
        TargetResourceType::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|d| d.metadata.resource_version),
        _ => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|s| s.metadata.resource_version),
    }
    .map_err(|e| ActError::api(&doing, e))?;
    Ok(Acted {
        action: "rollout-restart",
        target,
        version_before: meta.resource_version.clone(),
        version_after: after,
        changed: true,
        summary: format!("restarted {described} (restartedAt {now})"),
    })
}

/// A mock API server for the actions' error paths: each expected request (method,
/// path, optional check of its body) is answered with a status and a JSON body.
#[cfg(test)]
pub(crate) mod mock {
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    pub fn client() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    /// Expects one request; answers `status` with `answer`; returns the request's body.
    pub async fn expect(
        handle: &mut Handle,
        method: Method,
        path: &str,
        status: u16,
        answer: Value,
    ) -> Value {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}"));
        assert_eq!(request.method(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                .expect("a response"),
        );
        body
    }

    /// The API server's error body.
    pub fn status(code: u16, reason: &str, message: &str) -> Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": reason, "code": code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::RuleKind;
    use http::Method;
    use serde_json::Value;

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "shop",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            },
        }))
        .unwrap()
    }

    fn pdb(selector: Value, allowed: Option<i32>) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": selector},
            "status": allowed.map(|a| json!({
                "disruptionsAllowed": a, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2,
            })),
        }))
        .unwrap()
    }

    #[test]
    fn the_budget_is_the_least_a_matching_pdb_allows_and_one_without() {
        let web = pod("web-1", &[("app", "web")]);
        let pods = [&web];
        assert_eq!(budget(&[], &pods).0, 1);
        let matching = pdb(json!({"matchLabels": {"app": "web"}}), Some(2));
        let other = pdb(json!({"matchLabels": {"app": "db"}}), Some(0));
        assert_eq!(budget(&[matching.clone(), other], &pods).0, 2);
        let tight = pdb(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}),
            Some(0),
        );
        assert_eq!(budget(&[matching.clone(), tight], &pods).0, 0);
        // No status yet: the PDB controller has not counted; the API server would refuse.
        assert_eq!(budget(&[pdb(json!({}), None)], &pods).0, 0);
        // A null selector selects nothing.
        assert_eq!(budget(&[pdb(Value::Null, Some(0))], &pods).0, 1);
    }

    #[test]
    fn a_stateful_sets_record_counts_only_for_its_detection() {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "annotations": {EVICTED_FOR: "d1", EVICTED_PODS: "db-0=u0,db-1=u1"},
        }))
        .unwrap();
        let record = eviction_record(&meta, "d1");
        assert_eq!(record.get("db-0").map(String::as_str), Some("u0"));
        assert_eq!(record.len(), 2);
        assert!(eviction_record(&meta, "d2").is_empty());
    }

    fn daemon_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "agent-x", "namespace": "shop", "uid": "pod-uid", "resourceVersion": "3",
                "labels": {"app": "agent"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-uid", "controller": true}],
            },
        })
    }

    #[tokio::test]
    async fn a_429_from_the_eviction_api_is_a_disruption_budget_with_its_retry_after() {
        let (client, mut handle) = mock::client();
        let server = tokio::spawn(async move {
            mock::expect(
                &mut handle,
                Method::GET,
                "/api/v1/namespaces/shop/pods/agent-x",
                200,
                daemon_pod(),
            )
            .await;
            mock::expect(
                &mut handle,
                Method::GET,
                "/apis/apps/v1/namespaces/shop/daemonsets/agent",
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": "agent", "namespace": "shop", "uid": "ds-uid"}}),
            )
            .await;
            mock::expect(
                &mut handle,
                Method::GET,
                "/apis/policy/v1/namespaces/shop/poddisruptionbudgets",
                200,
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList", "metadata": {}, "items": []}),
            )
            .await;
            let mut refusal = mock::status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            refusal["details"] = json!({
                "causes": [{"reason": "DisruptionBudget", "message": "The disruption budget agent needs 3 healthy pods and has 3 currently"}],
                "retryAfterSeconds": 7,
            });
            let eviction = mock::expect(
                &mut handle,
                Method::POST,
                "/api/v1/namespaces/shop/pods/agent-x/eviction",
                429,
                refusal,
            )
            .await;
            // Only the pod read is evicted: never a same-named replacement.
            assert_eq!(
                eviction["delete_options"]["preconditions"]["uid"],
                "pod-uid"
            );
            assert!(
                handle.next_request().await.is_none(),
                "nothing after the refusal"
            );
        });
        let target = PodRef {
            namespace: "shop".into(),
            name: "agent-x".into(),
        };
        let results = evict(&client, &actor(), &[target], "d1").await;
        drop(client);
        server.await.unwrap();
        match &results[0] {
            Err(ActError::Failed {
                reason,
                message,
                retry_after,
            }) => {
                assert_eq!(*reason, "DisruptionBudget");
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
                assert!(message.contains("needs 3 healthy pods"), "{message}");
                assert!(message.contains("shop/agent-x"), "{message}");
            }
            other => panic!("expected DisruptionBudget, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pod_without_a_controller_is_never_evicted() {
        let (client, mut handle) = mock::client();
        let server = tokio::spawn(async move {
            let mut bare = daemon_pod();
            bare["metadata"]["ownerReferences"] = json!([]);
            mock::expect(
                &mut handle,
                Method::GET,
                "/api/v1/namespaces/shop/pods/agent-x",
                200,
                bare,
            )
            .await;
            assert!(handle.next_request().await.is_none(), "no eviction");
        });
        let target = PodRef {
            namespace: "shop".into(),
            name: "agent-x".into(),
        };
        let results = evict(&client, &actor(), &[target], "d1").await;
        drop(client);
        server.await.unwrap();
        let refused = results[0].as_ref().unwrap_err();
        assert_eq!(refused.reason(), "BarePod");
        assert!(refused.is_refused());
    }
}
