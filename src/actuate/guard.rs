//! The checks every action makes before it changes anything: a rule acts only in its own
//! namespace unless Prophet is started with `--allow-cross-namespace`, and never on an
//! object a GitOps controller keeps in sync unless the rule opts in (the controller
//! would revert the change, and the two would flap). Pure functions of the actor and the
//! target's metadata, so each action calls them on the object it has just read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ActError, Actor};

/// Refuses a target outside the actor's namespace, unless cross-namespace actions are
/// allowed. `target` names the object for the message.
pub fn check_namespace(actor: &Actor, namespace: &str, target: &str) -> Result<(), ActError> {
    if namespace == actor.namespace || actor.allow_cross_namespace {
        return Ok(());
    }
    Err(ActError::refused(
        "CrossNamespace",
        format!(
            "{target} is in namespace {namespace:?}, not the rule's own {:?}; start Prophet with --allow-cross-namespace to allow it",
            actor.namespace
        ),
    ))
}

/// Which GitOps controller keeps an object in sync, if any, by the marks each leaves:
/// ArgoCD's tracking annotation (its default since 2.x for annotation tracking, and
/// 3.0's default) or its `argocd.argoproj.io/instance` label; Flux's kustomize or helm
/// controller labels, unless Flux's reconciliation of the object is disabled.
/// `app.kubernetes.io/instance` alone is not taken as ArgoCD's: Helm sets it on every
/// chart's objects, and an object merely installed is no GitOps object.
pub fn git_ops_owner(meta: &ObjectMeta) -> Option<&'static str> {
    let has_annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(key))
    };
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    let has_label = |key: &str| meta.labels.as_ref().is_some_and(|l| l.contains_key(key));
    if has_annotation("argocd.argoproj.io/tracking-id") || has_label("argocd.argoproj.io/instance")
    {
        return Some("ArgoCD");
    }
    let flux_disabled = annotation("kustomize.toolkit.fluxcd.io/reconcile")
        .or_else(|| annotation("fluxcd.io/ignore"))
        .is_some_and(|v| v == "disabled" || v == "true");
    if !flux_disabled
        && (has_label("kustomize.toolkit.fluxcd.io/name")
            || has_label("helm.toolkit.fluxcd.io/name"))
    {
        return Some("Flux");
    }
    None
}

/// Refuses an object a GitOps controller keeps in sync, unless the rule allows it.
pub fn check_git_ops(actor: &Actor, meta: &ObjectMeta, target: &str) -> Result<(), ActError> {
    match git_ops_owner(meta) {
        Some(owner) if !actor.allow_git_ops => Err(ActError::refused(
            "GitOpsManaged",
            format!(
                "{target} is kept in sync by {owner}, which would revert the change; set allowGitOpsManaged on the rule to act on it anyway"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::RuleKind;
    use std::collections::BTreeMap;

    fn actor(allow_git_ops: bool, allow_cross_namespace: bool) -> Actor {
        Actor {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops,
            allow_cross_namespace,
        }
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        ObjectMeta {
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn another_namespace_is_refused_unless_allowed() {
        assert!(check_namespace(&actor(false, false), "shop", "Pod shop/a").is_ok());
        let refused =
            check_namespace(&actor(false, false), "payments", "Pod payments/a").unwrap_err();
        assert_eq!(refused.reason(), "CrossNamespace");
        assert!(refused.is_refused());
        assert!(refused.to_string().contains("--allow-cross-namespace"));
        assert!(check_namespace(&actor(false, true), "payments", "Pod payments/a").is_ok());
    }

    #[test]
    fn argo_and_flux_objects_are_refused_unless_the_rule_opts_in() {
        let argo = meta(
            &[],
            &[(
                "argocd.argoproj.io/tracking-id",
                "shop:apps/Deployment:shop/api",
            )],
        );
        let flux = meta(&[("kustomize.toolkit.fluxcd.io/name", "apps")], &[]);
        let helm_release = meta(&[("helm.toolkit.fluxcd.io/name", "api")], &[]);
        for (object, owner) in [(&argo, "ArgoCD"), (&flux, "Flux"), (&helm_release, "Flux")] {
            let refused =
                check_git_ops(&actor(false, false), object, "Deployment shop/api").unwrap_err();
            assert_eq!(refused.reason(), "GitOpsManaged");
            assert!(refused.to_string().contains(owner), "{refused}");
            assert!(check_git_ops(&actor(true, false), object, "Deployment shop/api").is_ok());
        }
    }

    #[test]
    fn objects_merely_applied_or_installed_by_helm_are_not_git_ops_objects() {
        let applied = meta(
            &[("app.kubernetes.io/instance", "api")],
            &[("kubectl.kubernetes.io/last-applied-configuration", "{}")],
        );
        assert_eq!(git_ops_owner(&applied), None);
        let flux_off = meta(
            &[("kustomize.toolkit.fluxcd.io/name", "apps")],
            &[("kustomize.toolkit.fluxcd.io/reconcile", "disabled")],
        );
        assert_eq!(git_ops_owner(&flux_off), None);
    }
}
