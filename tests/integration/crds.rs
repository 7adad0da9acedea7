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
    assert_eq!(kinds, ["AnomalyAction", "PredictiveScale", "SLOViolation"]);
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
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|subresources| subresources.status.is_some()),
            "{kind} needs a status subresource"
        );
        let columns = version
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default();
        assert!(
            columns.iter().any(|column| column.name == "Phase"),
            "{kind} should print its phase"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|names| !names.is_empty()),
            "{kind} needs a short name"
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
