//! An SLOViolation's `rollback`: what `kubectl rollout undo` does to a Deployment, once
//! per detection. The revisions are the ReplicaSets the Deployment controls (ordered by
//! `deployment.kubernetes.io/revision`); the current one is the ReplicaSet whose pod
//! template is the Deployment's own, and the one rolled back to is the newest earlier
//! revision Prophet has not already rolled back from, so a second violation rolls back
//! further instead of returning to the rollout it escaped. The Deployment records both
//! marks in one patch guarded by its `resourceVersion`: `aiops.prophet.io/rolled-back-for`
//! (the detection, which makes a repeated call change nothing) and
//! `aiops.prophet.io/rolled-back-from` (the pod-template hashes left, the last ten).
//!
//! It owns nothing but those two annotations and the Deployment's `spec.template`; it
//! never touches ReplicaSets (the Deployment controller turns the template change into
//! the rollout), never rolls back a paused Deployment, and never acts outside the checks
//! of [`guard`].
//!
//! RBAC: `deployments` get, patch; `replicasets` list; `horizontalpodautoscalers` get
//! (for [`rollback_target_of_hpa`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::{ActError, Acted, Actor, TargetRef, guard};

/// The detection the Deployment was last rolled back for.
pub const ROLLED_BACK_FOR: &str = "aiops.prophet.io/rolled-back-for";
/// The pod-template hashes Prophet rolled the Deployment back from, oldest first, comma
/// separated: never rolled back to again.
pub const ROLLED_BACK_FROM: &str = "aiops.prophet.io/rolled-back-from";
/// How many hashes [`ROLLED_BACK_FROM`] keeps: enough for any revision history a
/// Deployment keeps by default (10), bounded so the annotation cannot grow forever.
pub const ROLLED_BACK_FROM_LIMIT: usize = 10;

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

/// The Deployment an HPA scales: its namespace and name. An HPA scaling anything but an
/// `apps` Deployment is refused (`UnsupportedRollbackTarget`): only a Deployment keeps
/// its earlier revisions as ReplicaSets to roll back to.
pub async fn rollback_target_of_hpa(
    client: &kube::Client,
    namespace: &str,
    hpa: &str,
) -> Result<(String, String), ActError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let object = api.get(hpa).await.map_err(|e| {
        ActError::api(
            format_args!("reading HorizontalPodAutoscaler {namespace}/{hpa}"),
            e,
        )
    })?;
    let target = object.spec.scale_target_ref;
    let group = target
        .api_version
        .as_deref()
        .and_then(|v| v.split_once('/').map(|(g, _)| g))
        .unwrap_or("");
    if target.kind != "Deployment" || group != "apps" {
        return Err(ActError::refused(
            "UnsupportedRollbackTarget",
            format!(
                "HorizontalPodAutoscaler {namespace}/{hpa} scales {} {} ({}); rollback supports only an apps/v1 Deployment: set the rule's targetRef",
                target.kind,
                target.name,
                target.api_version.as_deref().unwrap_or("no apiVersion"),
            ),
        ));
    }
    Ok((namespace.to_owned(), target.name))
}

/// Rolls the Deployment `namespace/deployment` back to its previous revision for
/// `detection`, as `kubectl rollout undo` would, skipping revisions Prophet already
/// rolled back from. Calling it again for the same detection changes nothing
/// (`changed: false`).
///
/// Refused: another namespace or a GitOps-managed Deployment (see [`guard`]), a paused
/// Deployment (`DeploymentPaused`), no earlier revision left (`NoPreviousRevision`).
/// Retryable: API errors (a 409 when the Deployment changed since it was read), and a
/// rollout the Deployment controller has not caught up with (`RolloutInProgress`).
pub async fn rollback(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    deployment: &str,
    detection: &str,
) -> Result<Acted, ActError> {
    // The Deployment controller writes status between our read and our patch (each
    // write moves the resourceVersion the patch is guarded by): read afresh and try
    // again, a few times, before a Conflict goes back to the caller's backoff.
    super::workload::retry_conflicts(|| {
        rollback_once(client, actor, namespace, deployment, detection)
    })
    .await
}

/// One read-decide-patch of [`rollback`].
async fn rollback_once(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    deployment: &str,
    detection: &str,
) -> Result<Acted, ActError> {
    let described = format!("Deployment {namespace}/{deployment}");
    guard::check_namespace(actor, namespace, &described)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let object = deployments
        .get(deployment)
        .await
        .map_err(|e| ActError::api(format_args!("reading {described}"), e))?;
    guard::check_git_ops(actor, &object.metadata, &described)?;

    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    let target = TargetRef {
        kind: "Deployment".into(),
        namespace: Some(namespace.to_owned()),
        name: deployment.to_owned(),
        uid: object.metadata.uid.clone(),
    };
    let version_before = object.metadata.resource_version.clone();
    if annotations.get(ROLLED_BACK_FOR).map(String::as_str) == Some(detection) {
        return Ok(Acted {
            action: "rollback",
            target,
            version_before: version_before.clone(),
            version_after: version_before,
            changed: false,
            summary: format!("{described} was already rolled back for this detection"),
        });
    }
    let spec = &object.spec;
    if spec.paused == Some(true) {
        return Err(ActError::refused(
            "DeploymentPaused",
            format!(
                "{described} is paused; resume it (kubectl rollout resume) before it can be rolled back"
            ),
        ));
    }
    let uid = object.metadata.uid.clone().unwrap_or_default();
    let current_template = serde_json::to_value(&spec.template)
        .map_err(|e| ActError::failed("Invalid", format!("{described}: template: {e}")))?;

    let selector = kube::core::Selector::try_from(spec.selector.clone()).map_err(|e| {
        ActError::failed(
            "Invalid",
            format!("{described} has a selector Prophet cannot read: {e}"),
        )
    })?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let listed = replica_sets
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|e| ActError::api(format_args!("listing the ReplicaSets of {described}"), e))?;
    let revisions: Vec<Revision> = listed
        .items
        .iter()
        .filter(|rs| controlled_by(rs, &uid))
        .filter_map(Revision::of)
        .collect();

    let rolled_back_from = split_list(annotations.get(ROLLED_BACK_FROM).map(String::as_str));
    let (current, previous) = choose(&current_template, &revisions, &rolled_back_from)
        .map_err(|why| why.into_error(&described, spec_generation(&object)))?;

    let mut from = rolled_back_from;
    from.retain(|h| *h != current.hash);
    from.push(current.hash.clone());
    let keep_from = from.len().saturating_sub(ROLLED_BACK_FROM_LIMIT);
    let from = from[keep_from..].join(",");

    let patch = json!({
        "metadata": {
            // A merge patch carrying resourceVersion is refused with 409 if the
            // Deployment changed since it was read: the choice of revision is then made
            // again from a fresh read instead of undoing a rollout we never saw.
            "resourceVersion": version_before,
            "annotations": {ROLLED_BACK_FOR: detection, ROLLED_BACK_FROM: from},
        },
        "spec": {"template": merge_patch(&current_template, &previous.template)},
    });
    let patched = deployments
        .patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ActError::api(format_args!("rolling back {described}"), e))?;

    let images = match (images(&current_template), images(&previous.template)) {
        (now, then) if now != then => format!(" (images {now} → {then})"),
        _ => String::new(),
    };
    Ok(Acted {
        action: "rollback",
        target,
        version_before,
        version_after: patched.metadata.resource_version,
        changed: true,
        summary: format!(
            "rolled {described} back from revision {} (pod-template-hash {}) to revision {} (pod-template-hash {}){images}",
            current.revision, current.hash, previous.revision, previous.hash
        ),
    })
}

fn spec_generation(object: &Deployment) -> (Option<i64>, Option<i64>) {
    (
        object.metadata.generation,
        object.status.as_ref().and_then(|s| s.observed_generation),
    )
}

/// True when the Deployment with `uid` is the ReplicaSet's controller (the selector
/// alone could match another Deployment's ReplicaSets).
fn controlled_by(rs: &ReplicaSet, uid: &str) -> bool {
    !uid.is_empty()
        && rs.metadata.deletion_timestamp.is_none()
        && rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// One revision of a Deployment: a ReplicaSet it controls.
#[derive(Debug, Clone, PartialEq)]
struct Revision {
    revision: i64,
    /// The ReplicaSet's `pod-template-hash`: stable for a template, since the
    /// Deployment controller reuses the ReplicaSet of an equal template.
    hash: String,
    /// Its pod template without the `pod-template-hash` label: what the Deployment's
    /// template is while this revision is current.
    template: Value,
}

impl Revision {
    /// None for a ReplicaSet without a revision, a hash or a template (not made by the
    /// Deployment controller, so not a revision to roll back to).
    fn of(rs: &ReplicaSet) -> Option<Self> {
        let revision = rs
            .metadata
            .annotations
            .as_ref()?
            .get(REVISION)?
            .parse()
            .ok()?;
        let hash = rs.metadata.labels.as_ref()?.get(HASH_LABEL)?.clone();
        let mut template = serde_json::to_value(rs.spec.template.as_ref()?).ok()?;
        if let Some(labels) = template
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(HASH_LABEL);
        }
        Some(Self {
            revision,
            hash,
            template,
        })
    }
}

/// Why no revision could be chosen.
#[derive(Debug, Clone, PartialEq)]
enum NoChoice {
    /// No ReplicaSet has the Deployment's template: the controller has not yet made
    /// it (retryable).
    NoCurrent { revisions: usize },
    /// Nothing earlier to roll back to, or only revisions already rolled back from.
    NoPrevious { current: i64, skipped: Vec<i64> },
}

impl NoChoice {
    fn into_error(
        self,
        described: &str,
        (generation, observed): (Option<i64>, Option<i64>),
    ) -> ActError {
        match self {
            NoChoice::NoCurrent { revisions } => ActError::failed(
                "RolloutInProgress",
                format!(
                    "{described}: none of its {revisions} ReplicaSets has its current pod template (generation {}, observed by the Deployment controller: {}); retrying once the controller has created it",
                    generation.map_or("?".into(), |g| g.to_string()),
                    observed.map_or("none".into(), |g| g.to_string()),
                ),
            ),
            NoChoice::NoPrevious { current, skipped } if skipped.is_empty() => ActError::refused(
                "NoPreviousRevision",
                format!(
                    "{described} has no revision earlier than its current revision {current} to roll back to"
                ),
            ),
            NoChoice::NoPrevious { current, skipped } => ActError::refused(
                "NoPreviousRevision",
                format!(
                    "{described} has no revision earlier than its current revision {current} that Prophet has not already rolled back from (skipped revisions {skipped:?}; see the {ROLLED_BACK_FROM} annotation)"
                ),
            ),
        }
    }
}

/// The current revision (the newest with the Deployment's template) and the one to roll
/// back to: the newest earlier revision whose hash is neither current nor in
/// `rolled_back_from`.
fn choose<'a>(
    template: &Value,
    revisions: &'a [Revision],
    rolled_back_from: &[String],
) -> Result<(&'a Revision, &'a Revision), NoChoice> {
    let current = revisions
        .iter()
        .filter(|r| r.template == *template)
        .max_by_key(|r| r.revision)
        .ok_or(NoChoice::NoCurrent {
            revisions: revisions.len(),
        })?;
    let earlier = || {
        revisions
            .iter()
            .filter(|r| r.revision < current.revision && r.hash != current.hash)
    };
    earlier()
        .filter(|r| !rolled_back_from.contains(&r.hash))
        .max_by_key(|r| r.revision)
        .map(|previous| (current, previous))
        .ok_or_else(|| {
            let mut skipped: Vec<i64> = earlier().map(|r| r.revision).collect();
            skipped.sort_unstable();
            NoChoice::NoPrevious {
                current: current.revision,
                skipped,
            }
        })
}

/// The comma list of an annotation, without empty items.
fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: keys `to` lacks become
/// `null`, so the template is replaced as a whole, as `kubectl rollout undo` replaces
/// it, and not merged with the one rolled back from. `to` holds no `null` (serialised
/// Kubernetes objects omit unset fields), which a merge patch could not express.
fn merge_patch(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, old) in from {
                match to.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(key.clone(), merge_patch(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in to {
                if !from.contains_key(key) {
                    patch.insert(key.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// `name=image` of each container of a pod template, for the summary.
fn images(template: &Value) -> String {
    let containers = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let images: BTreeMap<&str, &str> = containers
        .iter()
        .map(|c| {
            (
                c.get("name").and_then(Value::as_str).unwrap_or("?"),
                c.get("image").and_then(Value::as_str).unwrap_or("?"),
            )
        })
        .collect();
    images
        .iter()
        .map(|(name, image)| format!("{name}={image}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> Value {
        json!({
            "metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{"name": "api", "image": image}]},
        })
    }

    fn revision(revision: i64, hash: &str, image: &str) -> Revision {
        Revision {
            revision,
            hash: hash.into(),
            template: template(image),
        }
    }

    /// Applies a merge patch as RFC 7386 says, to check [`merge_patch`].
    fn apply(target: &Value, patch: &Value) -> Value {
        match patch {
            Value::Object(patch) => {
                let mut out = target.as_object().cloned().unwrap_or_default();
                for (key, value) in patch {
                    if value.is_null() {
                        out.remove(key);
                    } else {
                        let merged = apply(out.get(key).unwrap_or(&Value::Null), value);
                        out.insert(key.clone(), merged);
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    #[test]
    fn the_previous_revision_is_the_newest_earlier_one() {
        let revisions = [
            revision(1, "a", "v1"),
            revision(3, "c", "v3"),
            revision(2, "b", "v2"),
        ];
        let (current, previous) = choose(&template("v3"), &revisions, &[]).unwrap();
        assert_eq!((current.revision, previous.revision), (3, 2));
    }

    #[test]
    fn a_template_already_rolled_back_from_is_never_returned_to() {
        // After rolling back from c (revision 3) to b, the controller renumbers b as 4.
        let revisions = [
            revision(1, "a", "v1"),
            revision(3, "c", "v3"),
            revision(4, "b", "v2"),
        ];
        let (current, previous) = choose(&template("v2"), &revisions, &["c".into()]).unwrap();
        assert_eq!((current.hash.as_str(), previous.hash.as_str()), ("b", "a"));
        // With a and c both left, nothing is left to roll back to.
        let refused = choose(&template("v2"), &revisions, &["c".into(), "a".into()])
            .unwrap_err()
            .into_error("Deployment shop/api", (Some(4), Some(4)));
        assert_eq!(refused.reason(), "NoPreviousRevision");
        assert!(refused.is_refused());
        assert!(refused.to_string().contains("[1, 3]"), "{refused}");
    }

    #[test]
    fn a_single_revision_has_nothing_to_roll_back_to() {
        let refused = choose(&template("v1"), &[revision(1, "a", "v1")], &[])
            .unwrap_err()
            .into_error("Deployment shop/api", (Some(1), Some(1)));
        assert_eq!(refused.reason(), "NoPreviousRevision");
        assert!(
            refused.to_string().contains("current revision 1"),
            "{refused}"
        );
    }

    #[test]
    fn a_template_without_its_replica_set_yet_is_retried() {
        let failed = choose(&template("v9"), &[revision(1, "a", "v1")], &[])
            .unwrap_err()
            .into_error("Deployment shop/api", (Some(2), Some(1)));
        assert_eq!(failed.reason(), "RolloutInProgress");
        assert!(!failed.is_refused());
    }

    #[test]
    fn the_merge_patch_replaces_the_template_as_a_whole() {
        let from = json!({
            "metadata": {"labels": {"app": "api"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
            "spec": {"containers": [{"name": "api", "image": "v3", "env": [{"name": "A", "value": "1"}]}], "priorityClassName": "high"},
        });
        let to = template("v2");
        let patch = merge_patch(&from, &to);
        assert_eq!(apply(&from, &patch), to);
        assert_eq!(patch["spec"]["priorityClassName"], Value::Null);
        assert_eq!(merge_patch(&to, &to), json!({}));
    }

    #[test]
    fn lists_and_images_read_as_a_user_writes_them() {
        assert_eq!(split_list(Some("a, b,,c")), ["a", "b", "c"]);
        assert!(split_list(None).is_empty());
        assert_eq!(images(&template("nginx:1")), "api=nginx:1");
        assert!(ROLLED_BACK_FOR.starts_with(super::super::ANNOTATION_PREFIX));
        assert!(ROLLED_BACK_FROM.starts_with(super::super::ANNOTATION_PREFIX));
    }
}

/// The error paths a real API server will not produce on demand, against a mock that
/// answers as the API server would.
#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::rules::load::RuleKind;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::SloViolation,
            namespace: "shop".into(),
            name: "checkout".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    fn pod_template(image: &str, hash: Option<&str>) -> Value {
        let mut labels = json!({"app": "api"});
        if let Some(hash) = hash {
            labels["pod-template-hash"] = hash.into();
        }
        json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "api", "image": image}]}})
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop", "uid": "dep-uid", "resourceVersion": "7", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": pod_template("api:v3", None)},
            "status": {"observedGeneration": 3},
        })
    }

    fn replica_set(revision: i64, hash: &str, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("api-{hash}"), "namespace": "shop",
                "labels": {"app": "api", "pod-template-hash": hash},
                "annotations": {REVISION: revision.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": "dep-uid", "controller": true}],
            },
            "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": pod_template(image, Some(hash))},
        })
    }

    fn respond(
        send: tower_test::mock::SendResponse<Response<Body>>,
        status: StatusCode,
        body: &Value,
    ) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    fn failure(code: StatusCode, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
               "message": format!("refused by the test: {reason}"), "code": code.as_u16()})
    }

    /// Answers the read of the Deployment and the list of its ReplicaSets, then
    /// checks the rollback patch and answers it with `answer`.
    async fn serve(mut handle: Handle, answer: StatusCode, reason: &'static str) {
        let (request, send) = handle
            .next_request()
            .await
            .expect("a read of the Deployment");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path(),
            "/apis/apps/v1/namespaces/shop/deployments/api"
        );
        respond(send, StatusCode::OK, &deployment());

        let (request, send) = handle.next_request().await.expect("a list of ReplicaSets");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path(),
            "/apis/apps/v1/namespaces/shop/replicasets"
        );
        assert!(
            request
                .uri()
                .query()
                .unwrap_or("")
                .contains("labelSelector=app%3Dapi"),
            "{}",
            request.uri()
        );
        let list = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {"resourceVersion": "9"},
            "items": [replica_set(1, "aaa", "api:v1"), replica_set(3, "ccc", "api:v3"), replica_set(2, "bbb", "api:v2")],
        });
        respond(send, StatusCode::OK, &list);

        let (request, send) = handle.next_request().await.expect("the rollback patch");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/apps/v1/namespaces/shop/deployments/api"
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let patch: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {
                    "resourceVersion": "7",
                    "annotations": {ROLLED_BACK_FOR: "det-1", ROLLED_BACK_FROM: "ccc"},
                },
                "spec": {"template": {"spec": {"containers": [{"name": "api", "image": "api:v2"}]}}},
            })
        );
        if answer.is_success() {
            let mut after = deployment();
            after["metadata"]["resourceVersion"] = "8".into();
            after["spec"]["template"] = pod_template("api:v2", None);
            respond(send, answer, &after);
        } else {
            respond(send, answer, &failure(answer, reason));
        }
    }

    async fn run(answer: StatusCode, reason: &'static str) -> Result<Acted, ActError> {
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "default");
        let server = tokio::spawn(serve(handle, answer, reason));
        // One attempt: its requests are what is checked (`rollback` repeats it on 409).
        let result = rollback_once(&client, &actor(), "shop", "api", "det-1").await;
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the scenario ends")
            .expect("the scenario's assertions hold");
        result
    }

    #[tokio::test]
    async fn the_patch_rolls_back_one_revision_under_the_read_resource_version() {
        let acted = run(StatusCode::OK, "").await.unwrap();
        assert!(acted.changed);
        assert_eq!(acted.version_before.as_deref(), Some("7"));
        assert_eq!(acted.version_after.as_deref(), Some("8"));
        assert_eq!(
            acted.summary,
            "rolled Deployment shop/api back from revision 3 (pod-template-hash ccc) to revision 2 (pod-template-hash bbb) (images api=api:v3 → api=api:v2)"
        );
    }

    #[tokio::test]
    async fn a_conflict_on_the_patch_is_retried() {
        let error = run(StatusCode::CONFLICT, "Conflict").await.unwrap_err();
        assert_eq!(error.reason(), "Conflict");
        assert!(!error.is_refused());
        assert!(
            error
                .to_string()
                .contains("rolling back Deployment shop/api"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_forbidden_patch_says_so() {
        let error = run(StatusCode::FORBIDDEN, "Forbidden").await.unwrap_err();
        assert_eq!(error.reason(), "Forbidden");
        assert!(!error.is_refused());
        assert!(error.to_string().contains("Deployment shop/api"), "{error}");
    }
}
