//! K8sGPT's analysis of the workload a rule acted on, for `status.k8sgptAnalysis`, the
//! Event and the alert: read from the `Result` objects the K8sGPT operator writes
//! (`results.core.k8sgpt.ai/v1alpha1`, in the operator's own namespace), keeping those
//! about the targets and summarising them into one bounded text.
//!
//! Advisory only: it never writes anything, and K8sGPT not being installed is no error
//! (`Ok(None)`), so an analysis can never fail or block an action; the caller bounds the
//! time it waits. Opt-in, [`analysis_from_server`] asks a K8sGPT server run with
//! `--http` (`k8sgpt.endpoint`) instead, through the guarded outbound client, with
//! explanations off (they would call an LLM and send cluster data out).
//!
//! RBAC: `results.core.k8sgpt.ai` list, cluster-wide (or in the operator's namespace
//! when `results_namespace` is given).

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde::Deserialize;

use super::ActError;

const GROUP: &str = "core.k8sgpt.ai";
const VERSION: &str = "v1alpha1";
/// Results read per request, and at most in all: a cluster with more open findings than
/// this is summarised from the first ones.
const PAGE: u32 = 250;
const MAX_READ: usize = 2000;
/// Errors quoted per Result.
const ERRORS_PER_RESULT: usize = 3;

/// The spec of a K8sGPT `Result` (the operator's `ResultSpec`); every field defaults so
/// a Result from another operator version still reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
struct ResultSpec {
    kind: String,
    /// `namespace/name` for a namespaced object.
    name: String,
    error: Vec<Failure>,
    details: String,
    /// The top owner, as `Kind/name` (a pod's Deployment), in the object's namespace.
    parent_object: String,
    backend: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
struct Failure {
    text: String,
}

/// K8sGPT's findings about `targets` (`(kind, name)` pairs, such as a Deployment and
/// its pods) in `namespace`: one text naming each Result kept, its first errors and its
/// details, at most `max_chars` characters. Results are read in `results_namespace`, or
/// in every namespace when None (the operator writes them in its own).
///
/// `Ok(None)` when K8sGPT's CRD is not installed or nothing is found about the targets.
/// Errors (RBAC, an unreachable server) are the caller's to log; they must not fail the
/// action.
pub async fn analysis(
    client: &kube::Client,
    results_namespace: Option<&str>,
    namespace: &str,
    targets: &[(String, String)],
    max_chars: usize,
) -> Result<Option<String>, ActError> {
    if targets.is_empty() || max_chars == 0 {
        return Ok(None);
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "Result"),
        "results",
    );
    let api: Api<DynamicObject> = match results_namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut found = Vec::new();
    let mut read = 0;
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            // A list 404s only when the type is not served: K8sGPT is not installed.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::debug!("K8sGPT's Result CRD is not installed: no analysis");
                return Ok(None);
            }
            Err(e) => return Err(ActError::api("listing K8sGPT Results", e)),
        };
        read += page.items.len();
        for object in page.items {
            let Ok(spec) = serde_json::from_value::<ResultSpec>(
                object.data.get("spec").cloned().unwrap_or_default(),
            ) else {
                continue;
            };
            if is_about(&spec, namespace, targets) {
                found.push(spec);
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() && read < MAX_READ => {
                params = params.continue_token(&token);
            }
            _ => break,
        }
    }
    if found.is_empty() {
        tracing::debug!(%namespace, ?targets, "K8sGPT has no Result about the targets");
        return Ok(None);
    }
    // Listing order is by name; sort so the text is stable across reads.
    found.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(Some(summarise(&found, max_chars)))
}

/// The same summary, from a K8sGPT server's REST API (`k8sgpt serve --http`: `POST
/// /v1/analyze`, the gRPC gateway of `ServerAnalyzerService.Analyze`), asked about
/// `namespace` with `explain: false`. The URL must pass the outbound allow-list.
pub async fn analysis_from_server(
    outbound: &super::outbound::Outbound,
    endpoint: &str,
    namespace: &str,
    targets: &[(String, String)],
    max_chars: usize,
) -> Result<Option<String>, ActError> {
    if targets.is_empty() || max_chars == 0 {
        return Ok(None);
    }
    let url = format!("{}/v1/analyze", endpoint.trim_end_matches('/'));
    let request = serde_json::json!({"namespace": namespace, "explain": false});
    let reply = outbound.post_json(&url, &[], &request).await?;
    let answer: serde_json::Value = reply.json().map_err(|e| {
        ActError::failed(
            "K8sGptUnreadable",
            format!("the K8sGPT server's answer is not JSON: {e}"),
        )
    })?;
    let mut found: Vec<ResultSpec> = answer
        .get("results")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| serde_json::from_value::<ResultSpec>(r.clone()).ok())
        .filter(|spec| is_about(spec, namespace, targets))
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    found.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(Some(summarise(&found, max_chars)))
}

/// True when the Result is about one of the targets in `namespace`: the object itself,
/// or an object whose top owner (`parentObject`) is a target.
fn is_about(spec: &ResultSpec, namespace: &str, targets: &[(String, String)]) -> bool {
    let Some((object_namespace, name)) = spec.name.split_once('/') else {
        // Cluster-scoped (a Node): never one of a namespaced rule's targets.
        return false;
    };
    if object_namespace != namespace {
        return false;
    }
    let parent = spec.parent_object.split_once('/');
    targets.iter().any(|(kind, target)| {
        (kind.eq_ignore_ascii_case(&spec.kind) && name == target)
            || parent.is_some_and(|(pk, pn)| kind.eq_ignore_ascii_case(pk) && pn == target)
    })
}

/// One text for the Results kept, cut at `max_chars` characters (with `…`).
fn summarise(found: &[ResultSpec], max_chars: usize) -> String {
    let mut text = format!(
        "K8sGPT found {} problem{}:",
        found.len(),
        if found.len() == 1 { "" } else { "s" }
    );
    for spec in found {
        text.push_str(&format!("\n- {} {}", spec.kind, spec.name));
        if !spec.parent_object.is_empty() {
            text.push_str(&format!(" (of {})", spec.parent_object));
        }
        text.push(':');
        let errors: Vec<&str> = spec
            .error
            .iter()
            .map(|f| f.text.trim())
            .filter(|t| !t.is_empty())
            .collect();
        for error in errors.iter().take(ERRORS_PER_RESULT) {
            text.push(' ');
            text.push_str(error);
            if !error.ends_with('.') {
                text.push('.');
            }
        }
        if errors.len() > ERRORS_PER_RESULT {
            text.push_str(&format!(" (and {} more)", errors.len() - ERRORS_PER_RESULT));
        }
        let details = spec.details.trim();
        if !details.is_empty() {
            let by = if spec.backend.is_empty() {
                String::new()
            } else {
                format!(" ({})", spec.backend)
            };
            text.push_str(&format!(" Explanation{by}: {details}"));
        }
    }
    truncate(text, max_chars)
}

/// `text` cut to at most `max_chars` characters, the last being `…` when cut.
fn truncate(text: String, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text;
    }
    let keep = max_chars.saturating_sub(1);
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let mut cut = text[..end].trim_end().to_owned();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(kind: &str, name: &str, parent: &str, errors: &[&str]) -> ResultSpec {
        ResultSpec {
            kind: kind.into(),
            name: name.into(),
            error: errors
                .iter()
                .map(|t| Failure { text: (*t).into() })
                .collect(),
            parent_object: parent.into(),
            ..ResultSpec::default()
        }
    }

    fn targets(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
            .collect()
    }

    #[test]
    fn a_result_is_about_its_object_or_its_owner_in_the_namespace() {
        let pod = result("Pod", "shop/api-7d-x", "Deployment/api", &["crash"]);
        assert!(is_about(&pod, "shop", &targets(&[("Deployment", "api")])));
        assert!(is_about(&pod, "shop", &targets(&[("Pod", "api-7d-x")])));
        assert!(!is_about(
            &pod,
            "payments",
            &targets(&[("Deployment", "api")])
        ));
        assert!(!is_about(&pod, "shop", &targets(&[("Deployment", "web")])));
        let node = result("Node", "node-1", "", &["NotReady"]);
        assert!(!is_about(&node, "shop", &targets(&[("Node", "node-1")])));
    }

    #[test]
    fn the_summary_names_each_result_and_its_first_errors() {
        let mut pod = result("Pod", "shop/api-x", "Deployment/api", &["a", "b", "c", "d"]);
        pod.details = "Fix the image.".into();
        pod.backend = "openai".into();
        let text = summarise(&[pod], 10_000);
        assert_eq!(
            text,
            "K8sGPT found 1 problem:\n- Pod shop/api-x (of Deployment/api): a. b. c. (and 1 more) Explanation (openai): Fix the image."
        );
    }

    #[test]
    fn the_summary_is_cut_on_a_character_boundary() {
        assert_eq!(truncate("héllo wörld".into(), 5), "héll…");
        assert_eq!(truncate("héllo".into(), 5), "héllo");
        assert_eq!(truncate("ab".into(), 1), "…");
        let long = summarise(&[result("Pod", "shop/a", "", &[&"é".repeat(500)])], 100);
        assert_eq!(long.chars().count(), 100);
        assert!(long.ends_with('…'));
    }
}
