//! Pausing a Chaos Mesh experiment while an SLO is violated (`enableChaos` with
//! `chaosRef`): a `Schedule` or `PodChaos` (`chaos-mesh.org/v1alpha1`) in the rule's
//! namespace is paused with the annotation `experiment.chaos-mesh.org/pause: "true"`,
//! Chaos Mesh's documented way to pause both kinds, and resumed by removing it.
//!
//! Several rules may pause one experiment, and its user may have paused it by hand, so
//! each pause is a claim, `aiops.prophet.io/paused-by.<claim key>: "true"`: resuming
//! removes the rule's own claim and the pause only when no claim is left and Prophet set
//! the pause. An experiment found paused without any claim was paused by its user
//! (recorded as `aiops.prophet.io/paused-by-user: "true"` at the first claim) and is
//! never unpaused by Prophet.
//!
//! It owns only these annotations; it never starts, creates, edits or deletes an
//! experiment, and never acts outside the checks of [`guard`]. Read through kube's
//! dynamic API, so Prophet needs no Chaos Mesh types and runs where it is not installed.
//!
//! RBAC: `schedules.chaos-mesh.org` and `podchaos.chaos-mesh.org` get, patch.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::{ActError, Acted, Actor, TargetRef, guard};
use crate::rules::crd::ChaosRef;

/// Chaos Mesh's pause annotation, honoured by both `Schedule` and `PodChaos`.
pub const PAUSE_ANNOTATION: &str = "experiment.chaos-mesh.org/pause";
/// The prefix of a rule's claim on a pause; its claim key follows.
pub const PAUSED_BY_PREFIX: &str = "aiops.prophet.io/paused-by.";
/// Set when the experiment was already paused by its user when first claimed.
pub const PAUSED_BY_USER: &str = "aiops.prophet.io/paused-by-user";

const GROUP: &str = "chaos-mesh.org";
const VERSION: &str = "v1alpha1";

/// The API resource of a supported experiment kind.
fn resource(kind: &str) -> Option<ApiResource> {
    let plural = match kind {
        "Schedule" => "schedules",
        "PodChaos" => "podchaos",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, kind),
        plural,
    ))
}

/// Pauses (`paused`) or resumes the experiment `chaos` in `namespace` on behalf of
/// `actor`; `changed: false` when already as wanted (paused with this actor's claim, or
/// without it). A resume leaves the experiment paused while another rule's claim remains
/// or when its user paused it; the summary says which.
///
/// Refused: an unsupported kind (`UnsupportedChaosKind`), another namespace or a
/// GitOps-managed experiment. Failed: `ChaosMeshMissing` when the kind's CRD is not
/// installed, `NotFound` when the experiment is not there, other API errors.
pub async fn set_paused(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    chaos: &ChaosRef,
    paused: bool,
) -> Result<Acted, ActError> {
    // Chaos Mesh writes the experiment's status between our read and our patch: read
    // afresh and try again on a 409, a few times.
    super::workload::retry_conflicts(|| set_paused_once(client, actor, namespace, chaos, paused))
        .await
}

/// One read-decide-patch of [`set_paused`].
async fn set_paused_once(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    chaos: &ChaosRef,
    paused: bool,
) -> Result<Acted, ActError> {
    let described = format!("{} {namespace}/{}", chaos.kind, chaos.name);
    let ar = resource(&chaos.kind).ok_or_else(|| {
        ActError::refused(
            "UnsupportedChaosKind",
            format!(
                "chaosRef names {described}; Prophet pauses only a Chaos Mesh Schedule or PodChaos"
            ),
        )
    })?;
    guard::check_namespace(actor, namespace, &described)?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let object = match api.get(&chaos.name).await {
        Ok(object) => object,
        Err(e) => return Err(read_error(client, &ar, &described, e).await),
    };
    guard::check_git_ops(actor, &object.metadata, &described)?;

    let target = TargetRef {
        kind: chaos.kind.clone(),
        namespace: Some(namespace.to_owned()),
        name: chaos.name.clone(),
        uid: object.metadata.uid.clone(),
    };
    let version_before = object.metadata.resource_version.clone();
    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    let plan = plan(&annotations, &actor.claim_key(), paused);
    let action = if paused {
        "chaos-pause"
    } else {
        "chaos-resume"
    };
    let Some(changes) = plan.annotations else {
        return Ok(Acted {
            action,
            target,
            version_before: version_before.clone(),
            version_after: version_before,
            changed: false,
            summary: format!("{described}: {}", plan.summary),
        });
    };
    let patch = json!({
        "metadata": {
            // Guarded by resourceVersion: claims of two rules written at once must not
            // overwrite each other's view of who still holds the pause (409, retried).
            "resourceVersion": version_before,
            "annotations": changes,
        }
    });
    let patched = api
        .patch(&chaos.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            ActError::api(
                format_args!(
                    "{} {described}",
                    if paused { "pausing" } else { "resuming" }
                ),
                e,
            )
        })?;
    Ok(Acted {
        action,
        target,
        version_before,
        version_after: patched.metadata.resource_version,
        changed: true,
        summary: format!("{described}: {}", plan.summary),
    })
}

/// Resumes the experiment for `actor` when the objective is healthy again or the rule
/// goes away; `Ok(None)` when the experiment (or Chaos Mesh) is already gone.
pub async fn release(
    client: &kube::Client,
    actor: &Actor,
    namespace: &str,
    chaos: &ChaosRef,
) -> Result<Option<Acted>, ActError> {
    match set_paused(client, actor, namespace, chaos, false).await {
        Ok(acted) => Ok(Some(acted)),
        Err(e) if matches!(e.reason(), "NotFound" | "ChaosMeshMissing") => {
            tracing::debug!(experiment = %chaos.name, %namespace, error = %e, "no experiment to resume");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A failed read: a 404 is either the experiment or the whole resource type missing,
/// which discovery tells apart (readable by every authenticated user, so it needs no
/// RBAC of its own).
async fn read_error(
    client: &kube::Client,
    ar: &ApiResource,
    described: &str,
    error: kube::Error,
) -> ActError {
    let is_404 = matches!(&error, kube::Error::Api(s) if s.code == 404);
    if !is_404 {
        return ActError::api(format_args!("reading {described}"), error);
    }
    let served = match client.list_api_group_resources(&ar.api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == ar.plural),
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        // Discovery itself failed: report the read's own 404.
        Err(_) => true,
    };
    if served {
        ActError::api(format_args!("reading {described}"), error)
    } else {
        ActError::failed(
            "ChaosMeshMissing",
            format!(
                "{described}: the cluster does not serve {}.{} ({}): is Chaos Mesh installed?",
                ar.plural, ar.group, ar.api_version
            ),
        )
    }
}

/// What a pause or resume changes in the experiment's annotations.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// The merge patch of `metadata.annotations` (`null` removes); None when nothing
    /// is to change.
    annotations: Option<Map<String, Value>>,
    summary: String,
}

/// The pure decision of [`set_paused`] from the experiment's annotations.
fn plan(annotations: &BTreeMap<String, String>, claim_key: &str, paused: bool) -> Plan {
    let ours = format!("{PAUSED_BY_PREFIX}{claim_key}");
    let is_paused = annotations.get(PAUSE_ANNOTATION).map(String::as_str) == Some("true");
    let has_ours = annotations.contains_key(&ours);
    let others = annotations
        .keys()
        .filter(|k| k.starts_with(PAUSED_BY_PREFIX) && **k != ours)
        .count();
    let by_user = annotations.get(PAUSED_BY_USER).map(String::as_str) == Some("true");
    let mut patch = Map::new();
    let summary;
    if paused {
        if is_paused && has_ours {
            return unchanged("already paused by this rule");
        }
        patch.insert(ours, "true".into());
        if !is_paused {
            patch.insert(PAUSE_ANNOTATION.into(), "true".into());
            if annotations.contains_key(PAUSED_BY_USER) {
                // The user's own pause is gone (they resumed it): this pause is ours.
                patch.insert(PAUSED_BY_USER.into(), Value::Null);
            }
            summary = "paused".to_owned();
        } else if others == 0 && !has_ours && !by_user {
            patch.insert(PAUSED_BY_USER.into(), "true".into());
            summary = "already paused by its user; claimed, and will be left paused".to_owned();
        } else {
            summary = "already paused; claimed by this rule too".to_owned();
        }
    } else {
        if !has_ours {
            return unchanged("not paused by this rule");
        }
        patch.insert(ours, Value::Null);
        if others > 0 {
            summary = format!("released this rule's pause; kept paused for {others} other rule(s)");
        } else if by_user {
            patch.insert(PAUSED_BY_USER.into(), Value::Null);
            summary = "released this rule's pause; kept paused, as its user paused it".to_owned();
        } else if is_paused {
            patch.insert(PAUSE_ANNOTATION.into(), Value::Null);
            summary = "resumed".to_owned();
        } else {
            summary = "released this rule's pause (it was no longer paused)".to_owned();
        }
    }
    Plan {
        annotations: Some(patch),
        summary,
    }
}

fn unchanged(summary: &str) -> Plan {
    Plan {
        annotations: None,
        summary: summary.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a plan's patch to annotations, as the API server's merge patch does.
    fn apply(annotations: &mut BTreeMap<String, String>, plan: &Plan) {
        for (key, value) in plan.annotations.iter().flatten() {
            match value.as_str() {
                Some(v) => annotations.insert(key.clone(), v.to_owned()),
                None => annotations.remove(key),
            };
        }
    }

    fn step(annotations: &mut BTreeMap<String, String>, key: &str, paused: bool) -> Plan {
        let plan = plan(annotations, key, paused);
        apply(annotations, &plan);
        plan
    }

    fn is_paused(annotations: &BTreeMap<String, String>) -> bool {
        annotations.get(PAUSE_ANNOTATION).map(String::as_str) == Some("true")
    }

    #[test]
    fn one_rule_pauses_and_resumes_once_each() {
        let mut a = BTreeMap::new();
        assert!(step(&mut a, "slo-1", true).annotations.is_some());
        assert!(is_paused(&a));
        assert_eq!(a["aiops.prophet.io/paused-by.slo-1"], "true");
        assert!(step(&mut a, "slo-1", true).annotations.is_none());
        assert_eq!(step(&mut a, "slo-1", false).summary, "resumed");
        assert!(a.is_empty(), "{a:?}");
        assert!(step(&mut a, "slo-1", false).annotations.is_none());
    }

    #[test]
    fn the_pause_stays_until_every_rule_releases_it() {
        let mut a = BTreeMap::new();
        step(&mut a, "slo-1", true);
        step(&mut a, "slo-2", true);
        let first = step(&mut a, "slo-1", false);
        assert!(is_paused(&a), "{}", first.summary);
        assert!(first.summary.contains("1 other rule"));
        step(&mut a, "slo-2", false);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_pause_of_its_user_is_never_lifted() {
        let mut a = BTreeMap::from([(PAUSE_ANNOTATION.to_owned(), "true".to_owned())]);
        step(&mut a, "slo-1", true);
        assert_eq!(a[PAUSED_BY_USER], "true");
        step(&mut a, "slo-2", true);
        step(&mut a, "slo-1", false);
        step(&mut a, "slo-2", false);
        assert_eq!(
            a,
            BTreeMap::from([(PAUSE_ANNOTATION.to_owned(), "true".to_owned())])
        );
    }

    #[test]
    fn a_user_resume_while_claimed_makes_the_next_pause_prophets_own() {
        let mut a = BTreeMap::from([(PAUSE_ANNOTATION.to_owned(), "true".to_owned())]);
        step(&mut a, "slo-1", true);
        a.remove(PAUSE_ANNOTATION); // the user resumes it by hand
        step(&mut a, "slo-2", true);
        assert!(!a.contains_key(PAUSED_BY_USER));
        step(&mut a, "slo-1", false);
        step(&mut a, "slo-2", false);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn only_the_two_chaos_mesh_kinds_are_supported() {
        assert_eq!(resource("Schedule").unwrap().plural, "schedules");
        assert_eq!(
            resource("PodChaos").unwrap().api_version,
            "chaos-mesh.org/v1alpha1"
        );
        assert!(resource("NetworkChaos").is_none());
        assert!(PAUSED_BY_PREFIX.starts_with(super::super::ANNOTATION_PREFIX));
    }
}
