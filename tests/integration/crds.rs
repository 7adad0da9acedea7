//! `deploy/crds/` is generated from the Rust types in `src/rules/crd.rs`. This test
//! regenerates the CRDs and fails when the committed files differ, so a change to a
//! type cannot ship without the matching CRD. `PROPHET_BLESS=1 cargo test --test integration crds`
//! rewrites the files instead.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use prophet::rules::crd::{self, GENERATED_HEADER, GROUP, VERSION};
use serde::Deserialize;

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("crds")
}

fn blessing() -> bool {
    std::env::var_os("PROPHET_BLESS").is_some_and(|value| value == "1")
}

#[test]
fn deploy_crds_match_the_rust_types() {
    let dir = crd_dir();
    if blessing() {
        crd::write_crds(&dir).expect("write deploy/crds");
    }

    let mut stale = Vec::new();
    for crd in crd::crds() {
        let file = dir.join(crd::crd_file_name(&crd));
        let expected = crd::render_crd_yaml(&crd);
        match fs::read_to_string(&file) {
            Ok(actual) if actual == expected => {}
            Ok(_) => stale.push(format!("{} differs", file.display())),
            Err(error) => stale.push(format!("{} cannot be read: {error}", file.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds is out of date with src/rules/crd.rs:\n  {}\nRun `PROPHET_BLESS=1 cargo test --test integration crds` and commit the result.",
        stale.join("\n  ")
    );

    // A kind that was renamed or removed must not leave its old CRD behind. Checked in
    // the same test as the contents so it never races the blessing above.
    let expected: BTreeSet<String> = crd::crds().iter().map(crd::crd_file_name).collect();
    let present: BTreeSet<String> = fs::read_dir(crd_dir())
        .expect("read deploy/crds")
        .map(|entry| {
            entry
                .expect("read deploy/crds entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        present, expected,
        "deploy/crds should hold exactly one generated file per kind; delete stale ones"
    );
    for name in &present {
        let text = fs::read_to_string(crd_dir().join(name)).expect("read CRD file");
        assert!(
            text.starts_with(GENERATED_HEADER),
            "{name} lacks the generated-file header"
        );
    }
}

fn find<'a>(crds: &'a [CustomResourceDefinition], kind: &str) -> &'a CustomResourceDefinition {
    crds.iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

fn property<'a>(schema: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    path.split('.').fold(schema, |schema, name| {
        schema
            .properties
            .as_ref()
            .and_then(|properties| properties.get(name))
            .unwrap_or_else(|| panic!("schema has no property {path:?} (missing at {name:?})"))
    })
}

fn root_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|validation| validation.open_api_v3_schema.as_ref())
        .expect("CRD version has an OpenAPI schema")
}

#[test]
fn every_crd_is_a_namespaced_v1alpha1_kind_with_a_status_subresource() {
    let crds = crd::crds();
    let kinds: Vec<&str> = crds
        .iter()
        .map(|crd| crd.spec.names.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "AnomalyAction",
            "PredictiveScale",
            "SLOViolation",
            "ActionApproval"
        ]
    );
    for crd in &crds {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, GROUP, "{kind}");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.{GROUP}", crd.spec.names.plural).as_str()),
            "{kind}"
        );
        assert_eq!(crd.spec.versions.len(), 1, "{kind}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION, "{kind}");
        assert!(
            version.served && version.storage,
            "{kind} must be served and stored"
        );
        // The rules have a status Prophet writes; an approval is its approver's record.
        assert_eq!(
            version
                .subresources
                .as_ref()
                .is_some_and(|subresources| subresources.status.is_some()),
            kind != "ActionApproval",
            "{kind}: a status subresource for the rules only"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|names| !names.is_empty()),
            "{kind} needs a short name"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["prophet".to_owned()][..]),
            "{kind}: `kubectl get prophet` lists every kind"
        );
    }
    assert_eq!(
        find(&crds, "SLOViolation").spec.names.plural,
        "sloviolations"
    );
}

#[test]
fn seed_fields_appear_in_the_schemas() {
    let crds = crd::crds();
    let fields: [(&str, &[&str]); 3] = [
        (
            "AnomalyAction",
            &[
                "spec.source",
                "spec.metric",
                "spec.threshold",
                "spec.for",
                "spec.remediation.type",
                "spec.remediation.podSelector",
                "spec.remediation.requireApproval",
                "spec.remediation.cooldownSeconds",
                "spec.remediation.replicas",
                "spec.target.namespace",
                "spec.target.labels",
                "spec.target.resourceType",
                "spec.target.name",
                "spec.k8sgpt.enabled",
                "spec.k8sgpt.endpoint",
                "spec.webhookUrl",
                "status.phase",
                "status.lastDetected",
                "status.lastRemediated",
                "status.remediationCount",
                "status.k8sgptAnalysis",
                "status.observedGeneration",
                "status.message",
                "status.conditions",
            ],
        ),
        (
            "PredictiveScale",
            &[
                "spec.forecastQuery",
                "spec.nodePoolRef.name",
                "spec.horizon",
                "spec.thresholdPercent",
                "spec.action",
                "spec.grafanaEndpoint",
                "status.phase",
                "status.lastForecast.value",
                "status.lastForecast.lower",
                "status.lastForecast.upper",
                "status.lastForecast.current",
                "status.lastForecast.at",
                "status.lastScaled",
                "status.scalingCount",
                "status.observedGeneration",
                "status.message",
                "status.conditions",
            ],
        ),
        (
            "SLOViolation",
            &[
                "spec.sloName",
                "spec.sloTarget",
                "spec.errorBudgetThreshold",
                "spec.actions",
                "spec.hpaRef.name",
                "spec.hpaRef.namespace",
                "spec.enableChaos",
                "spec.sli.ratio.errors",
                "spec.sli.ratio.total",
                "spec.sli.latency.bucket",
                "spec.sli.latency.le",
                "spec.period",
                "status.phase",
                "status.errorBudgetRemaining",
                "status.timeToExhaustion",
                "status.lastViolated",
                "status.violationCount",
                "status.observedGeneration",
                "status.message",
                "status.conditions",
            ],
        ),
    ];
    for (kind, paths) in fields {
        let schema = root_schema(find(&crds, kind));
        for path in paths {
            let field = property(schema, path);
            assert!(
                field
                    .description
                    .as_deref()
                    .is_some_and(|text| !text.is_empty()),
                "{kind} {path} has no description for users"
            );
        }
    }
}

#[test]
fn schemas_carry_the_enums_and_defaults_users_rely_on() {
    let crds = crd::crds();
    let anomaly = root_schema(find(&crds, "AnomalyAction"));
    let strings = |schema: &JSONSchemaProps| -> Vec<String> {
        schema
            .enum_
            .iter()
            .flatten()
            .filter_map(|value| value.0.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        strings(property(anomaly, "spec.source")),
        ["prometheus", "grafana-ml", "otel"]
    );
    assert_eq!(
        strings(property(anomaly, "spec.remediation.type")),
        ["restart", "scale", "alert"]
    );
    assert_eq!(
        property(anomaly, "spec.remediation.cooldownSeconds")
            .default
            .as_ref()
            .map(|value| value.0.clone()),
        Some(serde_json::json!(300))
    );
    let action = property(anomaly, "spec.remediation");
    assert_eq!(action.required.as_deref(), Some(&["type".to_owned()][..]));

    let slo = root_schema(find(&crds, "SLOViolation"));
    assert_eq!(
        property(slo, "spec.period")
            .default
            .as_ref()
            .map(|value| value.0.clone()),
        Some(serde_json::json!("30d"))
    );
    let sli = property(slo, "spec.sli");
    assert_eq!(
        sli.one_of.as_ref().map(Vec::len),
        Some(2),
        "the API server should reject an sli with both or neither indicator"
    );
    let spec_required = property(slo, "spec").required.clone().unwrap_or_default();
    assert!(
        !spec_required.contains(&"sli".to_owned()),
        "sli stays optional in the schema so the design's example applies"
    );
}

/// What `kubectl get <kind>` shows by default (priority 0), as (name, jsonPath, type).
fn default_columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|column| column.priority.unwrap_or(0) == 0)
        .map(|column| {
            (
                column.name.clone(),
                column.json_path.clone(),
                column.type_.clone(),
            )
        })
        .collect()
}

#[test]
fn kubectl_get_shows_phase_key_figure_last_detection_ready_and_age() {
    let crds = crd::crds();
    // (kind, its key figure, its last detection): what an operator looks for first.
    let expected = [
        (
            "AnomalyAction",
            ".status.remediationCount",
            ".status.lastDetected",
        ),
        (
            "PredictiveScale",
            ".status.lastForecast.value",
            ".status.lastScaled",
        ),
        (
            "SLOViolation",
            ".status.errorBudgetRemaining",
            ".status.lastViolated",
        ),
    ];
    for (kind, figure, last) in expected {
        let columns = default_columns(find(&crds, kind));
        let paths: Vec<&str> = columns.iter().map(|(_, path, _)| path.as_str()).collect();
        assert_eq!(paths.first(), Some(&".status.phase"), "{kind}: {columns:?}");
        assert!(
            paths.contains(&r#".status.conditions[?(@.type=="Ready")].status"#),
            "{kind}: {columns:?}"
        );
        assert!(paths.contains(&figure), "{kind}: {columns:?}");
        assert!(
            columns
                .iter()
                .any(|(_, path, kind)| path == last && kind == "date"),
            "{kind}: the last detection shows as an age: {columns:?}"
        );
        assert_eq!(
            columns
                .last()
                .map(|(name, path, _)| (name.as_str(), path.as_str())),
            Some(("Age", ".metadata.creationTimestamp")),
            "{kind}"
        );
        // A PromQL expression is too long for the default table: `-o wide` shows it.
        assert!(
            !paths.contains(&".spec.metric") && !paths.contains(&".spec.forecastQuery"),
            "{kind}: {columns:?}"
        );
    }
}

/// Every `format` in a schema, with the path where it is.
fn formats(schema: &JSONSchemaProps, path: &str, found: &mut Vec<(String, String)>) {
    if let Some(format) = &schema.format {
        found.push((path.to_owned(), format.clone()));
    }
    for (name, property) in schema.properties.iter().flatten() {
        formats(property, &format!("{path}.{name}"), found);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        formats(items, &format!("{path}[]"), found);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        formats(values, &format!("{path}{{}}"), found);
    }
}

#[test]
fn every_schema_format_is_one_kubernetes_knows() {
    // The formats the API server recognises (k8s.io/apiextensions-apiserver's
    // supported formats); any other draws `Warning: unrecognized format` on every apply.
    let known = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "duration",
    ];
    for crd in crd::crds() {
        let mut found = Vec::new();
        formats(root_schema(&crd), "", &mut found);
        for (path, format) in found {
            assert!(
                known.contains(&format.as_str()),
                "{} {path}: format {format:?} is not one Kubernetes knows",
                crd.spec.names.kind
            );
        }
    }
}

#[test]
fn descriptions_say_what_this_version_does() {
    let crds = crd::crds();
    let description = |kind: &str, path: &str| {
        // As one line: the descriptions keep the doc comments' line breaks.
        property(root_schema(find(&crds, kind)), path)
            .description
            .clone()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Detection-only rules are evaluated.
    let threshold = description("AnomalyAction", "spec.threshold");
    assert!(!threshold.contains("not evaluate"), "{threshold}");
    assert!(threshold.contains("detection"), "{threshold}");
    // Forecasts are made in-process; Grafana gets annotations of the actions.
    let grafana = description("PredictiveScale", "spec.grafanaEndpoint");
    assert!(!grafana.contains("instead of"), "{grafana}");
    assert!(grafana.contains("annotation"), "{grafana}");
    assert!(grafana.contains("in-process"), "{grafana}");
    // There is no allow-list of webhook URLs.
    let webhook = description("AnomalyAction", "spec.webhookUrl");
    assert!(!webhook.contains("allow-list"), "{webhook}");
}

#[test]
fn prophet_crds_prints_one_document_per_kind() {
    let text = crd::render_all_crds_yaml();
    let documents: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| CustomResourceDefinition::deserialize(document).expect("a CRD"))
        .collect();
    let names: Vec<Option<String>> = documents
        .iter()
        .map(|crd| crd.metadata.name.clone())
        .collect();
    let expected: Vec<Option<String>> = crd::crds()
        .into_iter()
        .map(|crd| crd.metadata.name)
        .collect();
    assert_eq!(names, expected);
    assert_eq!(
        text.matches("\n---\n").count(),
        3,
        "one separator between each two CRDs"
    );
}

#[test]
fn a_real_api_server_takes_the_crds_without_a_warning() {
    let Some(cluster) = crate::common::k8s::cluster() else {
        return;
    };
    // Warnings come with a create, not with an update that leaves a field as it was,
    // and another test may have installed the CRDs already: create them under a group
    // of this test's own, in a dry run, from exactly what `prophet crds` prints.
    let group = format!("aiops-{}.test.prophet.io", std::process::id());
    let text = crd::render_all_crds_yaml().replace(GROUP, &group);
    let mut child = std::process::Command::new(&cluster.kubectl)
        .args(["create", "--dry-run=server", "-o", "name", "-f", "-"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stderr.trim(), "", "kubectl warned");
    let created: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        created,
        [
            "anomalyactions",
            "predictivescales",
            "sloviolations",
            "actionapprovals"
        ]
        .map(|plural| format!("customresourcedefinition.apiextensions.k8s.io/{plural}.{group}"))
    );
}
