//! Scaling: an AnomalyAction's `scale` of the workload that owns the tripped pods, and
//! the HorizontalPodAutoscaler `minReplicas` claims it shares with an SLOViolation's
//! `scale`. A workload that an HPA scales is never scaled directly (the HPA would undo
//! it): its HPA's minimum is raised through a claim instead, and an HPA that KEDA
//! generates from a `ScaledObject` is left alone, the ScaledObject's
//! `minReplicaCount` claimed instead (KEDA would revert the HPA).
//!
//! Claims: several rules may raise one minimum. Each holds its own claim as an
//! annotation on the object (`aiops.prophet.io/min-replicas.<claim key>: "<n>"`, the
//! detection it last stepped for beside it); the first claim keeps the user's value in
//! `aiops.prophet.io/original-min-replicas`; the minimum is the largest of the original
//! and every claim, never above the maximum; releasing the last claim restores the
//! original and removes the bookkeeping. A user's edit of the minimum while claimed
//! becomes the new original.
//!
//! It must never lower a replica count or a minimum below what the user set, never
//! scale a workload an HPA scales, and writes nothing but the minimum (or
//! `spec.replicas` through the `scale` subresource) and its `aiops.prophet.io/`
//! annotations, by merge patches guarded by `metadata.resourceVersion`.
//!
//! RBAC: pods get; replicasets get; deployments and statefulsets get, patch;
//! deployments/scale and statefulsets/scale patch; horizontalpodautoscalers
//! (autoscaling) get, list, patch; scaledobjects (keda.sh) get, patch.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::json;

use super::workload::{pod_workload, retry_conflicts};
use super::{ActError, Acted, Actor, TargetRef, guard};
use crate::eval::PodRef;
use crate::rules::crd::TargetResourceType;

/// On an HPA or ScaledObject: the minimum the user had before the first claim.
pub const ORIGINAL_MIN: &str = "aiops.prophet.io/original-min-replicas";
/// The prefix of each rule's claim (`<prefix><claim key>: "<n>"`).
pub const CLAIM_PREFIX: &str = "aiops.prophet.io/min-replicas.";
/// The prefix of the detection each claim was last set for.
pub const CLAIM_FOR_PREFIX: &str = "aiops.prophet.io/min-replicas-for.";
/// On a workload scaled directly: the detection it was scaled for, and to how many.
pub const SCALED_FOR: &str = "aiops.prophet.io/scaled-for";
pub const SCALED_TO: &str = "aiops.prophet.io/scaled-to";

/// What a claim on a minimum wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinReplicas {
    /// This many above the current minimum, once per detection.
    Step(i32),
    /// Exactly this many.
    Exactly(i32),
}

/// The object holding a minimum, and its field names.
#[derive(Debug, Clone, Copy)]
struct MinHolder {
    kind: &'static str,
    action: &'static str,
    min_field: &'static str,
    max_field: &'static str,
    default_min: i32,
    default_max: i32,
}

const HPA: MinHolder = MinHolder {
    kind: "HorizontalPodAutoscaler",
    action: "hpa-min-replicas",
    min_field: "minReplicas",
    max_field: "maxReplicas",
    default_min: 1,
    default_max: i32::MAX,
};

/// KEDA's defaults: `minReplicaCount` 0, `maxReplicaCount` 100.
const SCALED_OBJECT: MinHolder = MinHolder {
    kind: "ScaledObject",
    action: "keda-min-replicas",
    min_field: "minReplicaCount",
    max_field: "maxReplicaCount",
    default_min: 0,
    default_max: 100,
};

impl MinHolder {
    fn resource(&self) -> ApiResource {
        match self.kind {
            "ScaledObject" => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
                "scaledobjects",
            ),
            _ => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        }
    }
}

/// The state a claim is planned from: the object's minimum, maximum and annotations.
#[derive(Debug, Clone, PartialEq)]
struct ClaimState {
    min: i32,
    max: i32,
    annotations: BTreeMap<String, String>,
}

/// What to write: the new minimum and the annotations to set (`Some`) or remove.
#[derive(Debug, Clone, PartialEq)]
struct ClaimPlan {
    min: i32,
    annotations: BTreeMap<String, Option<String>>,
    /// Whether the minimum or the claim changes (not only bookkeeping).
    changed: bool,
    summary: String,
}

fn claims(annotations: &BTreeMap<String, String>) -> BTreeMap<&str, i32> {
    annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(CLAIM_PREFIX)?, v.trim().parse().ok()?)))
        .collect()
}

/// The user's own minimum: the recorded original, unless the minimum is no longer what
/// the claims made it (a user or GitOps edited it), in which case the edit is.
fn original(state: &ClaimState) -> i32 {
    let all = claims(&state.annotations);
    let recorded = state
        .annotations
        .get(ORIGINAL_MIN)
        .and_then(|v| v.trim().parse::<i32>().ok());
    match recorded {
        Some(recorded) if !all.is_empty() => {
            let expected = all
                .values()
                .copied()
                .fold(recorded, i32::max)
                .min(state.max);
            if expected == state.min {
                recorded
            } else {
                state.min
            }
        }
        _ => state.min,
    }
}

fn plan_claim(
    state: &ClaimState,
    key: &str,
    want: MinReplicas,
    cap: Option<i32>,
    detection: &str,
) -> ClaimPlan {
    let claim_key = format!("{CLAIM_PREFIX}{key}");
    let for_key = format!("{CLAIM_FOR_PREFIX}{key}");
    let original = original(state);
    let own = state
        .annotations
        .get(&claim_key)
        .and_then(|v| v.trim().parse::<i32>().ok());
    let own_for = state.annotations.get(&for_key).map(String::as_str);
    let ceiling = cap.unwrap_or(i32::MAX).min(state.max);
    let claim = match want {
        MinReplicas::Exactly(n) => n.min(ceiling),
        MinReplicas::Step(_) if own_for == Some(detection) && own.is_some() => {
            own.unwrap_or(state.min)
        }
        // A step only ever raises this rule's claim, even when its cap has come down.
        MinReplicas::Step(step) => state
            .min
            .saturating_add(step.max(0))
            .min(ceiling)
            .max(own.unwrap_or(0)),
    }
    .max(0);
    let mut others = claims(&state.annotations);
    others.remove(key);
    let min = others
        .values()
        .copied()
        .fold(original.max(claim), i32::max)
        .min(state.max);
    let mut annotations = BTreeMap::new();
    annotations.insert(claim_key, Some(claim.to_string()));
    annotations.insert(for_key, Some(detection.to_owned()));
    annotations.insert(ORIGINAL_MIN.to_owned(), Some(original.to_string()));
    let changed = min != state.min || own != Some(claim);
    let summary = if min != state.min {
        format!(
            "minimum {} → {min} (this rule's claim {claim}, original {original})",
            state.min
        )
    } else if claim >= ceiling && claim > original && min == claim {
        format!("minimum already {min}, the most this rule may set")
    } else {
        format!("minimum stays {min} (this rule's claim {claim}, original {original})")
    };
    ClaimPlan {
        min,
        annotations,
        changed,
        summary,
    }
}

fn plan_release(state: &ClaimState, key: &str) -> Option<ClaimPlan> {
    let claim_key = format!("{CLAIM_PREFIX}{key}");
    let for_key = format!("{CLAIM_FOR_PREFIX}{key}");
    if !state.annotations.contains_key(&claim_key) && !state.annotations.contains_key(&for_key) {
        return None;
    }
    let original = original(state);
    let mut others = claims(&state.annotations);
    others.remove(key);
    let mut annotations = BTreeMap::new();
    annotations.insert(claim_key, None);
    annotations.insert(for_key, None);
    let min = if others.is_empty() {
        annotations.insert(ORIGINAL_MIN.to_owned(), None);
        original
    } else {
        annotations.insert(ORIGINAL_MIN.to_owned(), Some(original.to_string()));
        others
            .values()
            .copied()
            .fold(original, i32::max)
            .min(state.max)
    };
    let summary = if others.is_empty() {
        format!(
            "minimum {} → {min}: last claim released, original restored",
            state.min
        )
    } else {
        format!(
            "minimum {} → {min}: claim released, {} other claim(s) held",
            state.min,
            others.len()
        )
    };
    Some(ClaimPlan {
        min,
        annotations,
        changed: true,
        summary,
    })
}

fn int_at(object: &DynamicObject, field: &str) -> Option<i32> {
    object.data["spec"][field]
        .as_i64()
        .and_then(|v| i32::try_from(v).ok())
}

fn state_of(holder: &MinHolder, object: &DynamicObject) -> ClaimState {
    ClaimState {
        min: int_at(object, holder.min_field).unwrap_or(holder.default_min),
        max: int_at(object, holder.max_field).unwrap_or(holder.default_max),
        annotations: object.metadata.annotations.clone().unwrap_or_default(),
    }
}

/// [`write_min_once`], read afresh and tried again on a 409.
async fn write_min(
    client: &kube::Client,
    actor: &Actor,
    holder: MinHolder,
    namespace: &str,
    name: &str,
    plan: impl Fn(&ClaimState) -> Option<ClaimPlan>,
) -> Result<Option<Acted>, ActError> {
    retry_conflicts(|| write_min_once(client, actor, holder, namespace, name, &plan)).await
}

/// Reads the holder, plans with `plan`, and writes the plan by a merge patch guarded by
/// the resourceVersion read (409 is retried by the caller with a fresh read).
async fn write_min_once(
    client: &kube::Client,
    actor: &Actor,
    holder: MinHolder,
    namespace: &str,
    name: &str,
    plan: &impl Fn(&ClaimState) -> Option<ClaimPlan>,
) -> Result<Option<Acted>, ActError> {
    let described = format!("{} {namespace}/{name}", holder.kind);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &holder.resource());
    let object = api
        .get(name)
        .await
        .map_err(|e| ActError::api(format!("reading {described}"), e))?;
    guard::check_git_ops(actor, &object.metadata, &described)?;
    let state = state_of(&holder, &object);
    let Some(plan) = plan(&state) else {
        return Ok(None);
    };
    let target = TargetRef {
        kind: holder.kind.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: object.metadata.uid.clone(),
    };
    let version_before = object.metadata.resource_version.clone();
    let unchanged = plan.min == state.min
        && plan
            .annotations
            .iter()
            .all(|(k, v)| state.annotations.get(k) == v.as_ref());
    if unchanged {
        return Ok(Some(Acted {
            action: holder.action,
            target,
            version_before: version_before.clone(),
            version_after: version_before,
            changed: false,
            summary: format!("{described}: {}", plan.summary),
        }));
    }
    let mut spec = serde_json::Map::new();
    if plan.min != state.min {
        spec.insert(holder.min_field.into(), json!(plan.min));
    }
    let patch = json!({
        "metadata": { "resourceVersion": version_before, "annotations": plan.annotations },
        "spec": spec,
    });
    let written = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ActError::api(format!("setting the minimum of {described}"), e))?;
    Ok(Some(Acted {
        action: holder.action,
        target,
        version_before,
        version_after: written.metadata.resource_version,
        changed: plan.changed,
        summary: format!("{described}: {}", plan.summary),
    }))
}

/// The KEDA ScaledObject that generates this HPA, if any.
fn scaled_object_of(hpa: &HorizontalPodAutoscaler) -> Option<String> {
    hpa.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.kind == "ScaledObject" && r.api_version.starts_with("keda.sh/"))
        .map(|r| r.name.clone())
}

/// A ScaledObject Prophet cannot read or change (no CRD served, no RBAC) is refused:
/// changing its HPA instead would be reverted by KEDA.
fn keda_error(hpa: &str, scaled_object: &str, error: ActError) -> ActError {
    match error.reason() {
        "Forbidden" | "NotFound" | "ApiError" | "Invalid" => ActError::refused(
            "KedaManaged",
            format!(
                "{hpa} is managed by KEDA ScaledObject {scaled_object}, which Prophet cannot change ({error}); KEDA would revert a change of the HPA"
            ),
        ),
        _ => error,
    }
}

/// Reads an HPA and where its minimum lives: the HPA, or the KEDA ScaledObject that
/// generates it.
async fn holder_of(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    hpa: &str,
) -> Result<Option<(MinHolder, String)>, ActError> {
    let described = format!("HorizontalPodAutoscaler {namespace}/{hpa}");
    guard::check_namespace(actor, namespace, &described)?;
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let Some(read) = api
        .get_opt(hpa)
        .await
        .map_err(|e| ActError::api(format!("reading {described}"), e))?
    else {
        return Ok(None);
    };
    guard::check_git_ops(actor, &read.metadata, &described)?;
    Ok(Some(match scaled_object_of(&read) {
        Some(scaled_object) => (SCALED_OBJECT, scaled_object),
        None => (HPA, hpa.to_owned()),
    }))
}

/// Claims a minimum on the HPA `namespace/hpa` for `actor` (an AnomalyAction's `scale`
/// of a workload an HPA scales, or an SLOViolation's `scale` through `hpaRef`): the HPA's
/// `minReplicas` becomes the largest of the user's value and every rule's claim, capped
/// by `max` and the HPA's `maxReplicas`. `Step` adds its step to the current minimum
/// once per `detection`; `Exactly` claims that many. An HPA generated by a KEDA
/// ScaledObject has its ScaledObject's `minReplicaCount` claimed instead (refused with
/// `KedaManaged` when it cannot be changed). Checks: namespace, GitOps (on the HPA and
/// on the ScaledObject). A 409 (another writer between read and patch) is retryable.
pub async fn claim_min_replicas(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    hpa: &str,
    want: MinReplicas,
    max: Option<i32>,
    detection: &str,
) -> Result<Acted, ActError> {
    let described = format!("HorizontalPodAutoscaler {namespace}/{hpa}");
    let Some((holder, name)) = holder_of(client, actor, namespace, hpa).await? else {
        return Err(ActError::failed(
            "NotFound",
            format!("{described} does not exist"),
        ));
    };
    let key = actor.claim_key();
    let written = write_min(client, actor, holder, namespace, &name, |state| {
        Some(plan_claim(state, &key, want, max, detection))
    })
    .await;
    let written = match holder.kind {
        "ScaledObject" => written.map_err(|e| keda_error(&described, &name, e)),
        _ => written,
    }?;
    written.ok_or_else(|| ActError::failed("Internal", "a claim planned nothing"))
}

/// Releases `actor`'s claim on the HPA `namespace/hpa` (or its ScaledObject): the
/// minimum falls to the largest remaining claim, or back to the user's original when it
/// was the last. `None` when the actor holds no claim there (or the HPA is gone).
pub async fn release_claim(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    hpa: &str,
) -> Result<Option<Acted>, ActError> {
    let described = format!("HorizontalPodAutoscaler {namespace}/{hpa}");
    let Some((holder, name)) = holder_of(client, actor, namespace, hpa).await? else {
        return Ok(None);
    };
    let key = actor.claim_key();
    let released = write_min(client, actor, holder, namespace, &name, |state| {
        plan_release(state, &key)
    })
    .await;
    let mut released = match holder.kind {
        "ScaledObject" => released.map_err(|e| keda_error(&described, &name, e)),
        _ => released,
    }?;
    if let Some(acted) = &mut released {
        acted.action = "release";
    }
    Ok(released)
}

/// The HPA in `namespace` whose `scaleTargetRef` is the `kind` (`Deployment`,
/// `StatefulSet`) named `name`, if any (the first by name when several are).
pub async fn hpa_for(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Option<HorizontalPodAutoscaler>, ActError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        ActError::api(
            format!("listing the HorizontalPodAutoscalers of namespace {namespace}"),
            e,
        )
    })?;
    let mut found: Vec<HorizontalPodAutoscaler> = list
        .items
        .into_iter()
        .filter(|hpa| {
            let target = &hpa.spec.scale_target_ref;
            let group = target
                .api_version
                .as_deref()
                .and_then(|v| v.split_once('/'))
                .map_or("", |(g, _)| g);
            target.kind == kind && target.name == name && group == "apps"
        })
        .collect();
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(found.into_iter().next())
}

/// Scales the workload (Deployment through its ReplicaSet, or StatefulSet) that owns
/// `pod`, an AnomalyAction's `scale`: to `replicas` when given, else `step` more than
/// now, never above `max` and never down. A workload an HPA scales has the HPA's minimum
/// claimed instead ([`claim_min_replicas`], with `Exactly(replicas)` or `Step(step)`).
/// Otherwise through the `scale` subresource, once per `detection`: the workload first
/// records `aiops.prophet.io/scaled-for` and `scaled-to`, then is scaled, so a second
/// call changes nothing and one interrupted between the two finishes the same scale.
/// Refused: a bare pod, a pod of another kind of controller (`NotScalable`), another
/// namespace, a GitOps-managed workload.
pub async fn scale(
    client: &kube::Client,
    actor: &Actor,
    pod: &PodRef,
    step: i32,
    max: i32,
    replicas: Option<i32>,
    detection: &str,
) -> Result<Acted, ActError> {
    let pod_name = format!("Pod {}/{}", pod.namespace, pod.name);
    guard::check_namespace(actor, &pod.namespace, &pod_name)?;
    let read: Pod = Api::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(|e| ActError::api(format!("reading {pod_name}"), e))?;
    let Some((_, workload)) = pod_workload(client, &read).await? else {
        return Err(ActError::refused(
            "BarePod",
            format!("{pod_name} has no controller, so no workload to scale"),
        ));
    };
    let kind = workload.kind.as_str();
    if workload.api_version != "apps/v1" || !matches!(kind, "Deployment" | "StatefulSet") {
        return Err(ActError::refused(
            "NotScalable",
            format!(
                "{pod_name} belongs to {} {}, not to a Deployment or StatefulSet",
                workload.kind, workload.name
            ),
        ));
    }
    let scaling = Scaling {
        namespace: &pod.namespace,
        kind,
        name: &workload.name,
        step,
        max,
        replicas,
        detection,
    };
    scale_workload_or_hpa(client, actor, scaling).await
}

/// [`scale`] for a named workload (a rule's `target.name` with `resourceType`
/// `Deployment` or `StatefulSet`) instead of a pod's owner.
#[allow(clippy::too_many_arguments)]
pub async fn scale_named(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    kind: TargetResourceType,
    name: &str,
    step: i32,
    max: i32,
    replicas: Option<i32>,
    detection: &str,
) -> Result<Acted, ActError> {
    let kind = match kind {
        TargetResourceType::Deployment => "Deployment",
        TargetResourceType::StatefulSet => "StatefulSet",
        TargetResourceType::Pod => {
            return Err(ActError::refused(
                "UnsupportedKind",
                "scaling a named target needs resourceType Deployment or StatefulSet",
            ));
        }
    };
    guard::check_namespace(actor, namespace, &format!("{kind} {namespace}/{name}"))?;
    let scaling = Scaling {
        namespace,
        kind,
        name,
        step,
        max,
        replicas,
        detection,
    };
    scale_workload_or_hpa(client, actor, scaling).await
}

/// One scale of a workload, as [`scale`] and [`scale_named`] were asked for it.
#[derive(Debug, Clone, Copy)]
struct Scaling<'a> {
    namespace: &'a str,
    /// `Deployment` or `StatefulSet`.
    kind: &'a str,
    name: &'a str,
    step: i32,
    max: i32,
    replicas: Option<i32>,
    detection: &'a str,
}

async fn scale_workload_or_hpa(
    client: &kube::Client,
    actor: &Actor,
    scaling: Scaling<'_>,
) -> Result<Acted, ActError> {
    let namespace = scaling.namespace;
    if let Some(hpa) = hpa_for(client, namespace, scaling.kind, scaling.name).await? {
        let hpa_name = hpa.metadata.name.unwrap_or_default();
        let want = scaling
            .replicas
            .map_or(MinReplicas::Step(scaling.step), MinReplicas::Exactly);
        return claim_min_replicas(
            client,
            actor,
            namespace,
            &hpa_name,
            want,
            Some(scaling.max),
            scaling.detection,
        )
        .await;
    }
    scale_workload(client, actor, scaling).await
}

/// The number a direct scale goes to, or `None` with why not.
fn scale_target(
    current: i32,
    recorded: Option<i32>,
    step: i32,
    max: i32,
    replicas: Option<i32>,
) -> Result<i32, String> {
    if let Some(recorded) = recorded {
        // Scaled (or about to be) for this detection already.
        return if current >= recorded {
            Err(format!(
                "already scaled for this detection ({current} replicas)"
            ))
        } else {
            Ok(recorded)
        };
    }
    let want = replicas
        .unwrap_or(current.saturating_add(step.max(0)))
        .min(max);
    if current >= max {
        Err(format!(
            "already at the most this rule allows ({current} of max {max})"
        ))
    } else if want <= current {
        Err(format!(
            "already has {current} replicas (wanted {want}); never scaled down"
        ))
    } else {
        Ok(want)
    }
}

async fn scale_workload(
    client: &kube::Client,
    actor: &Actor,
    scaling: Scaling<'_>,
) -> Result<Acted, ActError> {
    retry_conflicts(|| scale_once(client, actor, scaling)).await
}

async fn scale_once(
    client: &kube::Client,
    actor: &Actor,
    scaling: Scaling<'_>,
) -> Result<Acted, ActError> {
    let Scaling {
        namespace,
        kind,
        name,
        step,
        max,
        replicas,
        detection,
    } = scaling;
    let described = format!("{kind} {namespace}/{name}");
    let (meta, current) = if kind == "Deployment" {
        let d: Deployment = Api::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| ActError::api(format!("reading {described}"), e))?;
        let replicas = d.spec.replicas.unwrap_or(1);
        (d.metadata, replicas)
    } else {
        let s: StatefulSet = Api::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| ActError::api(format!("reading {described}"), e))?;
        let replicas = s.spec.replicas.unwrap_or(1);
        (s.metadata, replicas)
    };
    guard::check_git_ops(actor, &meta, &described)?;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let recorded = (annotations.get(SCALED_FOR).map(String::as_str) == Some(detection))
        .then(|| annotations.get(SCALED_TO).and_then(|v| v.parse().ok()))
        .flatten();
    let target = TargetRef {
        kind: kind.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: meta.uid.clone(),
    };
    let want = match scale_target(current, recorded, step, max, replicas) {
        Ok(want) => want,
        Err(why) => {
            return Ok(Acted {
                action: "scale",
                target,
                version_before: meta.resource_version.clone(),
                version_after: meta.resource_version.clone(),
                changed: false,
                summary: format!("{described} {why}"),
            });
        }
    };
    let params = PatchParams::default();
    // First the record, so a second call for this detection knows; then the scale,
    // guarded by the version the record left.
    let mut version = meta.resource_version.clone();
    if recorded.is_none() {
        let record = json!({
            "metadata": {
                "resourceVersion": version,
                "annotations": { SCALED_FOR: detection, SCALED_TO: want.to_string() },
            }
        });
        let doing = format!("recording the scale of {described}");
        version = if kind == "Deployment" {
            Api::<Deployment>::namespaced(client.clone(), namespace)
                .patch(name, &params, &Patch::Merge(&record))
                .await
                .map(|d| d.metadata.resource_version)
        } else {
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .patch(name, &params, &Patch::Merge(&record))
                .await
                .map(|s| s.metadata.resource_version)
        }
        .map_err(|e| ActError::api(&doing, e))?;
    }
    let scale = json!({
        "metadata": { "resourceVersion": version },
        "spec": { "replicas": want },
    });
    let doing = format!("scaling {described} to {want}");
    let scaled = if kind == "Deployment" {
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch_scale(name, &params, &Patch::Merge(&scale))
            .await
    } else {
        Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch_scale(name, &params, &Patch::Merge(&scale))
            .await
    }
    .map_err(|e| ActError::api(&doing, e))?;
    Ok(Acted {
        action: "scale",
        target,
        version_before: meta.resource_version.clone(),
        version_after: scaled.metadata.resource_version,
        changed: true,
        summary: format!("{described} replicas {current} → {want}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuate::workload::mock;
    use crate::rules::load::RuleKind;
    use http::Method;

    fn state(min: i32, max: i32, annotations: &[(&str, &str)]) -> ClaimState {
        ClaimState {
            min,
            max,
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Applies a plan to a state, as the API server applies the merge patch.
    fn apply(mut state: ClaimState, plan: &ClaimPlan) -> ClaimState {
        state.min = plan.min;
        for (k, v) in &plan.annotations {
            match v {
                Some(v) => state.annotations.insert(k.clone(), v.clone()),
                None => state.annotations.remove(k),
            };
        }
        state
    }

    #[test]
    fn a_step_claim_adds_once_per_detection_and_never_passes_the_maximum() {
        let start = state(2, 5, &[]);
        let first = plan_claim(&start, "a", MinReplicas::Step(2), None, "d1");
        assert_eq!(first.min, 4);
        assert!(first.changed);
        let after = apply(start, &first);
        assert_eq!(after.annotations[ORIGINAL_MIN], "2");
        assert_eq!(after.annotations[&format!("{CLAIM_PREFIX}a")], "4");
        let again = plan_claim(&after, "a", MinReplicas::Step(2), None, "d1");
        assert_eq!(again.min, 4);
        assert!(!again.changed);
        let next = plan_claim(&after, "a", MinReplicas::Step(2), None, "d2");
        assert_eq!(next.min, 5, "capped by maxReplicas");
        let capped = plan_claim(&after, "a", MinReplicas::Step(2), Some(3), "d2");
        assert_eq!(capped.min, 4, "a step never lowers the rule's own claim");
    }

    #[test]
    fn the_highest_claim_wins_and_the_last_release_restores_the_original() {
        let start = state(2, 10, &[]);
        let a = apply(
            start.clone(),
            &plan_claim(&start, "a", MinReplicas::Exactly(4), None, "a1"),
        );
        let ab = apply(
            a.clone(),
            &plan_claim(&a, "b", MinReplicas::Exactly(6), None, "b1"),
        );
        assert_eq!(ab.min, 6);
        let released_b = apply(ab.clone(), &plan_release(&ab, "b").unwrap());
        assert_eq!(released_b.min, 4);
        assert!(plan_release(&released_b, "b").is_none());
        let released = apply(released_b.clone(), &plan_release(&released_b, "a").unwrap());
        assert_eq!(released.min, 2);
        assert!(
            released.annotations.is_empty(),
            "{:?}",
            released.annotations
        );
    }

    #[test]
    fn a_users_edit_while_claimed_becomes_the_original() {
        let claimed = state(
            5,
            10,
            &[
                (ORIGINAL_MIN, "2"),
                ("aiops.prophet.io/min-replicas.a", "5"),
            ],
        );
        assert_eq!(original(&claimed), 2);
        let edited = ClaimState { min: 7, ..claimed };
        assert_eq!(original(&edited), 7);
        let released = plan_release(&edited, "a").unwrap();
        assert_eq!(released.min, 7);
    }

    #[test]
    fn a_direct_scale_steps_up_to_max_and_never_down() {
        assert_eq!(scale_target(1, None, 1, 10, None), Ok(2));
        assert_eq!(scale_target(1, None, 5, 3, None), Ok(3));
        assert_eq!(scale_target(2, None, 1, 10, Some(6)), Ok(6));
        assert!(
            scale_target(3, None, 1, 3, None)
                .unwrap_err()
                .contains("max 3")
        );
        assert!(scale_target(6, None, 1, 10, Some(4)).is_err());
        // Recorded for this detection: done when reached, finished when not.
        assert!(scale_target(2, Some(2), 1, 10, None).is_err());
        assert_eq!(scale_target(1, Some(2), 1, 10, None), Ok(2));
    }

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::SloViolation,
            namespace: "shop".into(),
            name: "latency".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    fn hpa_object(owner: Option<serde_json::Value>) -> serde_json::Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop", "uid": "hpa-uid", "resourceVersion": "5",
                         "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default()},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 2, "maxReplicas": 10},
        })
    }

    const HPA_PATH: &str = "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/web";

    async fn claim(client: &kube::Client) -> Result<Acted, ActError> {
        claim_min_replicas(
            client,
            &actor(),
            "shop",
            "web",
            MinReplicas::Exactly(4),
            None,
            "d1",
        )
        .await
    }

    #[tokio::test]
    async fn a_409_on_the_hpa_patch_is_read_again_and_stays_retryable() {
        let (client, mut handle) = mock::client();
        let server = tokio::spawn(async move {
            mock::expect(&mut handle, Method::GET, HPA_PATH, 200, hpa_object(None)).await;
            for _ in 0..CONFLICT_TRIES_EXPECTED {
                mock::expect(&mut handle, Method::GET, HPA_PATH, 200, hpa_object(None)).await;
                let patch = mock::expect(
                    &mut handle,
                    Method::PATCH,
                    HPA_PATH,
                    409,
                    mock::status(409, "Conflict", "the object has been modified"),
                )
                .await;
                assert_eq!(patch["metadata"]["resourceVersion"], "5");
                assert_eq!(patch["spec"]["minReplicas"], 4);
                assert_eq!(
                    patch["metadata"]["annotations"]["aiops.prophet.io/original-min-replicas"],
                    "2"
                );
                assert_eq!(
                    patch["metadata"]["annotations"]["aiops.prophet.io/min-replicas.sloviolation-0b6c2f0e"],
                    "4"
                );
            }
            assert!(handle.next_request().await.is_none());
        });
        let result = claim(&client).await;
        drop(client);
        server.await.unwrap();
        let error = result.unwrap_err();
        assert_eq!(error.reason(), "Conflict");
        assert!(!error.is_refused(), "a conflict is retried");
    }

    /// Matches `workload::CONFLICT_TRIES`.
    const CONFLICT_TRIES_EXPECTED: usize = 3;

    #[tokio::test]
    async fn a_403_is_forbidden_and_not_retried_at_once() {
        let (client, mut handle) = mock::client();
        let server = tokio::spawn(async move {
            mock::expect(&mut handle, Method::GET, HPA_PATH, 200, hpa_object(None)).await;
            mock::expect(&mut handle, Method::GET, HPA_PATH, 200, hpa_object(None)).await;
            mock::expect(
                &mut handle,
                Method::PATCH,
                HPA_PATH,
                403,
                mock::status(403, "Forbidden", "cannot patch horizontalpodautoscalers"),
            )
            .await;
            assert!(handle.next_request().await.is_none());
        });
        let result = claim(&client).await;
        drop(client);
        server.await.unwrap();
        let error = result.unwrap_err();
        assert_eq!(error.reason(), "Forbidden");
        assert!(
            error
                .to_string()
                .contains("HorizontalPodAutoscaler shop/web"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_keda_hpa_whose_scaled_object_cannot_be_read_is_refused() {
        let (client, mut handle) = mock::client();
        let server = tokio::spawn(async move {
            let owner = json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                               "name": "web", "uid": "so-uid", "controller": true});
            mock::expect(
                &mut handle,
                Method::GET,
                HPA_PATH,
                200,
                hpa_object(Some(owner)),
            )
            .await;
            mock::expect(
                &mut handle,
                Method::GET,
                "/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects/web",
                404,
                mock::status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
            .await;
            assert!(
                handle.next_request().await.is_none(),
                "the HPA is not patched"
            );
        });
        let result = claim(&client).await;
        drop(client);
        server.await.unwrap();
        let error = result.unwrap_err();
        assert_eq!(error.reason(), "KedaManaged");
        assert!(error.is_refused());
    }
}
