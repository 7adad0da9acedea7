//! The example rules in `rules/` are documentation users copy, and the rule set
//! standalone mode runs by default, so they must stay loadable: every file loads with
//! no invalid document, the design document's seed rules read back with the values
//! they were written with, and every rule survives a write-and-read round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prophet::rules::crd::{
    AnomalyAction, MetricSource, PredictiveScale, RemediationType, SLOViolation, ScaleAction,
    ServiceLevelIndicator, SloActionType, TargetResourceType,
};
use prophet::rules::duration::parse_duration;
use prophet::rules::load::{LoadReport, Rule, RuleKey, RuleKind, load_dir, parse_documents};
use prophet::rules::quantity::{CmpOp, Threshold};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn load_examples() -> LoadReport {
    let report = load_dir(&rules_dir()).expect("rules/ can be listed");
    let problems: Vec<String> = report.invalid.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "example rules must all load:\n  {}",
        problems.join("\n  ")
    );
    report
}

fn find<'a>(report: &'a LoadReport, kind: RuleKind, namespace: &str, name: &str) -> &'a Rule {
    let key = RuleKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    report
        .rules
        .iter()
        .find(|rule| rule.key() == key)
        .unwrap_or_else(|| panic!("rules/ has no {key}"))
}

fn anomaly<'a>(report: &'a LoadReport, namespace: &str, name: &str) -> &'a AnomalyAction {
    match find(report, RuleKind::AnomalyAction, namespace, name) {
        Rule::AnomalyAction(rule) => rule,
        other => panic!("expected an AnomalyAction, got {other:?}"),
    }
}

fn predictive<'a>(report: &'a LoadReport, namespace: &str, name: &str) -> &'a PredictiveScale {
    match find(report, RuleKind::PredictiveScale, namespace, name) {
        Rule::PredictiveScale(rule) => rule,
        other => panic!("expected a PredictiveScale, got {other:?}"),
    }
}

fn slo<'a>(report: &'a LoadReport, namespace: &str, name: &str) -> &'a SLOViolation {
    match find(report, RuleKind::SloViolation, namespace, name) {
        Rule::SloViolation(rule) => rule,
        other => panic!("expected an SLOViolation, got {other:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn every_example_file_loads_without_invalid_documents() {
    let report = load_examples();
    let mut files: Vec<String> = std::fs::read_dir(rules_dir())
        .expect("list rules/")
        .map(|entry| {
            entry
                .expect("rules/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    assert!(
        files.iter().all(|file| file.ends_with(".yaml")),
        "rules/ should hold only rule files: {files:?}"
    );
    assert!(files.contains(&"seed-examples.yaml".to_owned()));
    assert_eq!(
        report.rules.len(),
        7,
        "three seed rules and four realistic ones"
    );
}

#[test]
fn the_examples_bring_every_namespace_they_use_but_default() {
    // `kubectl apply -f rules/` on a fresh cluster must not fail for want of a
    // namespace: each one a rule lives in is `default` or created by a file that sorts
    // before every rule file (kubectl applies the files in name order).
    let report = load_examples();
    let namespace_file = rules_dir().join("00-namespace-shop.yaml");
    let text = std::fs::read_to_string(&namespace_file).expect("read the namespace file");
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_yaml::from_str(&text).expect("a Namespace");
    let created = namespace.metadata.name.expect("a name");
    for rule in &report.rules {
        let key = rule.key();
        assert!(
            key.namespace == "default" || key.namespace == created,
            "{key} lives in a namespace nothing in rules/ creates"
        );
    }
    assert!(
        report
            .rules
            .iter()
            .any(|rule| rule.key().namespace == created)
    );
}

#[test]
fn the_examples_apply_to_a_fresh_cluster() {
    let Some(cluster) = crate::common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    // Fresh as far as the examples go: no `shop` namespace (a cluster reused from an
    // earlier run may have one).
    cluster.kubectl(&[
        "delete",
        "namespace",
        "shop",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
    ]);
    let dir = rules_dir();
    cluster.kubectl(&["apply", "-f", dir.to_str().unwrap()]);

    let report = load_examples();
    let mut expected: Vec<String> = report
        .rules
        .iter()
        .map(|rule| {
            let key = rule.key();
            format!("{} {} {}", key.namespace, key.kind, key.name)
        })
        .collect();
    expected.sort();
    // `kubectl get prophet` (the category) lists every kind.
    let listed = cluster.kubectl(&[
        "get",
        "prophet",
        "--all-namespaces",
        "-o",
        "custom-columns=NS:.metadata.namespace,KIND:.kind,NAME:.metadata.name",
        "--no-headers",
    ]);
    let mut found: Vec<String> = listed
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| expected.contains(line))
        .collect();
    found.sort();
    assert_eq!(found, expected, "{listed}");

    // What `kubectl get` shows of a rule: its state first, the PromQL only with -o wide.
    let table = cluster.kubectl(&["get", "aa", "--namespace=shop"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header[..3], ["NAME", "PHASE", "READY"], "{table}");
    assert!(
        table.contains("LAST DETECTED") && header.last() == Some(&"AGE"),
        "{table}"
    );
    assert!(!table.contains("METRIC"), "{table}");
    let wide = cluster.kubectl(&["get", "aa", "--namespace=shop", "-o", "wide"]);
    assert!(wide.contains("METRIC"), "{wide}");

    cluster.kubectl(&["delete", "-f", dir.to_str().unwrap(), "--wait=false"]);
}

#[test]
fn the_seed_file_holds_exactly_the_three_design_examples() {
    let text = std::fs::read_to_string(rules_dir().join("seed-examples.yaml")).expect("read seed");
    let (rules, invalid) = parse_documents(&text, Path::new("seed-examples.yaml"));
    assert!(invalid.is_empty(), "{invalid:#?}");
    let keys: Vec<String> = rules.iter().map(|rule| rule.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "AnomalyAction default/backend-memory-anomaly",
            "PredictiveScale default/cpu-forecast-scaling",
            "SLOViolation default/backend-availability-slo",
        ]
    );
}

#[test]
fn seed_anomaly_action_has_the_design_values() {
    let report = load_examples();
    let spec = &anomaly(&report, "default", "backend-memory-anomaly").spec;
    assert_eq!(spec.source, MetricSource::Prometheus);
    assert_eq!(spec.metric, "container_memory_working_set_bytes");
    assert_eq!(spec.threshold.as_deref(), Some("> 1Gi"));
    assert_eq!(spec.for_, None);
    assert_eq!(spec.remediation.type_, RemediationType::Restart);
    assert_eq!(spec.remediation.pod_selector, labels(&[("app", "backend")]));
    assert!(!spec.remediation.require_approval);
    assert_eq!(spec.remediation.cooldown_seconds, 300);
    assert_eq!(spec.remediation.replicas, None);
    let target = spec.target.as_ref().expect("target");
    assert_eq!(target.namespace.as_deref(), Some("default"));
    assert_eq!(target.labels, labels(&[("app", "backend")]));
    assert_eq!(target.resource_type, TargetResourceType::Pod);
    assert_eq!(target.name, None);
    let k8sgpt = spec.k8sgpt.as_ref().expect("k8sgpt");
    assert!(k8sgpt.enabled);
    assert_eq!(
        k8sgpt.endpoint.as_deref(),
        Some("http://k8sgpt-operator.k8sgpt.svc.cluster.local:8080")
    );
    assert_eq!(spec.webhook_url.as_deref(), Some(""));
    let threshold =
        Threshold::parse(spec.threshold.as_deref().unwrap_or_default()).expect("threshold");
    assert_eq!(
        threshold,
        Threshold {
            op: CmpOp::Gt,
            value: 1_073_741_824.0
        }
    );
}

#[test]
fn seed_predictive_scale_has_the_design_values() {
    let report = load_examples();
    let spec = &predictive(&report, "default", "cpu-forecast-scaling").spec;
    assert_eq!(
        spec.forecast_query,
        "ml_forecast(sum(rate(container_cpu_usage_seconds_total[5m])), 1h)"
    );
    assert_eq!(spec.node_pool_ref.name, "default");
    assert_eq!(spec.horizon, "1h");
    assert_eq!(spec.threshold_percent, 20.0);
    assert_eq!(spec.action, ScaleAction::Provision);
    assert_eq!(
        spec.grafana_endpoint.as_deref(),
        Some("http://grafana.monitoring.svc.cluster.local:3000")
    );
}

#[test]
fn seed_slo_violation_has_the_design_values() {
    let report = load_examples();
    let spec = &slo(&report, "default", "backend-availability-slo").spec;
    assert_eq!(spec.slo_name, "backend-availability");
    assert_eq!(spec.slo_target, "99.9%");
    assert_eq!(spec.target_ratio(), Ok(0.999));
    assert_eq!(spec.error_budget_threshold, 0.1);
    let actions: Vec<(SloActionType, Option<&str>)> = spec
        .actions
        .iter()
        .map(|action| (action.type_, action.value.as_deref()))
        .collect();
    assert_eq!(
        actions,
        [
            (SloActionType::Scale, Some("increase")),
            (SloActionType::Alert, None)
        ]
    );
    let hpa = spec.hpa_ref.as_ref().expect("hpaRef");
    assert_eq!(hpa.name, "backend-hpa");
    assert_eq!(hpa.namespace.as_deref(), Some("default"));
    assert!(!spec.enable_chaos);
    assert_eq!(spec.period, "30d", "period defaults to 30d");
    assert_eq!(spec.sli, None, "the design's example has no SLI");
    assert!(spec.indicator().is_err(), "so it cannot be evaluated yet");
}

#[test]
fn realistic_anomaly_action_has_its_fields() {
    let report = load_examples();
    let spec = &anomaly(&report, "shop", "shop-oomkill-risk").spec;
    assert_eq!(
        spec.metric,
        r#"container_memory_working_set_bytes{namespace="shop",container!=""}"#
    );
    assert_eq!(spec.threshold.as_deref(), Some("> 1800Mi"));
    let threshold =
        Threshold::parse(spec.threshold.as_deref().unwrap_or_default()).expect("threshold");
    assert_eq!(threshold.value, 1800.0 * 1024.0 * 1024.0);
    assert_eq!(spec.for_.as_deref(), Some("10m"));
    assert_eq!(
        parse_duration(spec.for_.as_deref().unwrap_or_default()),
        Ok(std::time::Duration::from_secs(600))
    );
    assert_eq!(spec.remediation.type_, RemediationType::Restart);
    assert_eq!(
        spec.remediation.pod_selector,
        labels(&[("tier", "backend")])
    );
    assert_eq!(spec.remediation.cooldown_seconds, 900);
    let target = spec.target.as_ref().expect("target");
    assert_eq!(target.namespace.as_deref(), Some("shop"));
    assert_eq!(target.resource_type, TargetResourceType::Pod);
    assert_eq!(
        spec.k8sgpt.as_ref().map(|k8sgpt| k8sgpt.enabled),
        Some(false)
    );
}

#[test]
fn realistic_predictive_scale_has_its_fields() {
    let report = load_examples();
    let spec = &predictive(&report, "shop", "shop-cpu-forecast").spec;
    assert_eq!(
        spec.forecast_query,
        r#"sum(rate(container_cpu_usage_seconds_total{namespace="shop",container!=""}[5m]))"#
    );
    assert_eq!(spec.node_pool_ref.name, "shop-workers");
    assert_eq!(spec.horizon, "30m");
    assert_eq!(
        parse_duration(&spec.horizon),
        Ok(std::time::Duration::from_secs(1800))
    );
    assert_eq!(spec.threshold_percent, 25.0);
    assert_eq!(spec.action, ScaleAction::Adjust);
    assert_eq!(spec.grafana_endpoint, None);
}

#[test]
fn realistic_slo_violation_has_its_fields() {
    let report = load_examples();
    let spec = &slo(&report, "shop", "checkout-availability").spec;
    assert_eq!(spec.slo_target, "99.5%");
    assert_eq!(spec.target_ratio(), Ok(0.995));
    assert_eq!(spec.period, "28d");
    assert_eq!(
        parse_duration(&spec.period),
        Ok(std::time::Duration::from_secs(28 * 86_400))
    );
    assert_eq!(spec.error_budget_threshold, 0.25);
    match spec.indicator() {
        Ok(ServiceLevelIndicator::Ratio(ratio)) => {
            assert_eq!(
                ratio.errors,
                r#"http_requests_total{namespace="shop",service="checkout",code=~"5.."}"#
            );
            assert_eq!(
                ratio.total,
                r#"http_requests_total{namespace="shop",service="checkout"}"#
            );
        }
        other => panic!("expected a ratio SLI, got {other:?}"),
    }
    let kinds: Vec<SloActionType> = spec.actions.iter().map(|action| action.type_).collect();
    assert_eq!(kinds, [SloActionType::Alert, SloActionType::Scale]);
    assert_eq!(
        spec.hpa_ref.as_ref().map(|hpa| hpa.name.as_str()),
        Some("checkout")
    );
    assert!(!spec.enable_chaos);
}

#[test]
fn every_rule_round_trips_through_yaml_and_json() {
    let report = load_examples();
    for rule in &report.rules {
        let key = rule.key();
        let yaml = serde_yaml::to_string(rule).expect("serialize to YAML");
        let (reparsed, invalid) = parse_documents(&yaml, Path::new("round-trip.yaml"));
        assert!(invalid.is_empty(), "{key}: {invalid:#?}\n{yaml}");
        assert_eq!(
            reparsed.as_slice(),
            std::slice::from_ref(rule),
            "{key}\n{yaml}"
        );

        // JSON is what the API server stores and the operator reads back.
        let json = serde_json::to_string(rule).expect("serialize to JSON");
        let reparsed_json: Rule = match key.kind {
            RuleKind::AnomalyAction => {
                Rule::from(serde_json::from_str::<AnomalyAction>(&json).expect("json"))
            }
            RuleKind::PredictiveScale => {
                Rule::from(serde_json::from_str::<PredictiveScale>(&json).expect("json"))
            }
            RuleKind::SloViolation => {
                Rule::from(serde_json::from_str::<SLOViolation>(&json).expect("json"))
            }
        };
        assert_eq!(&reparsed_json, rule, "{key}\n{json}");
    }
}

#[test]
fn every_duration_and_threshold_in_the_examples_parses() {
    let report = load_examples();
    for rule in &report.rules {
        let key = rule.key();
        match rule {
            Rule::AnomalyAction(rule) => {
                if let Some(threshold) = &rule.spec.threshold {
                    Threshold::parse(threshold).unwrap_or_else(|error| panic!("{key}: {error}"));
                }
                if let Some(duration) = &rule.spec.for_ {
                    parse_duration(duration).unwrap_or_else(|error| panic!("{key}: {error}"));
                }
            }
            Rule::PredictiveScale(rule) => {
                parse_duration(&rule.spec.horizon).unwrap_or_else(|error| panic!("{key}: {error}"));
            }
            Rule::SloViolation(rule) => {
                parse_duration(&rule.spec.period).unwrap_or_else(|error| panic!("{key}: {error}"));
                rule.spec
                    .target_ratio()
                    .unwrap_or_else(|error| panic!("{key}: {error}"));
            }
        }
    }
}
