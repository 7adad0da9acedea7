//! The manifests under `deploy/` parse as the Kubernetes objects they claim to be, and
//! the rules shipped in the ConfigMap load and compile, so `kubectl apply` gets no typo.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::load::parse_documents;
use serde::Deserialize;

fn documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn the_deployment_manifests_are_valid_objects_wired_together() {
    let docs = documents("deploy/prophet.yaml");
    let mut kinds = Vec::new();
    let mut deployment = None;
    let mut service = None;
    let mut rules = None;
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => drop(serde_yaml::from_value::<Namespace>(doc).unwrap()),
            "ServiceAccount" => drop(serde_yaml::from_value::<ServiceAccount>(doc).unwrap()),
            "ConfigMap" => rules = Some(serde_yaml::from_value::<ConfigMap>(doc).unwrap()),
            "Deployment" => deployment = Some(serde_yaml::from_value::<Deployment>(doc).unwrap()),
            "Service" => service = Some(serde_yaml::from_value::<Service>(doc).unwrap()),
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service"
        ]
    );
    let deployment = deployment.unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "run");
    assert!(
        args.windows(2)
            .any(|w| w == ["--rules", "/etc/prophet/rules"])
    );
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, "/etc/prophet/rules");
    let volumes = pod.volumes.unwrap();
    assert_eq!(volumes[0].name, mount.name);
    assert_eq!(
        volumes[0].config_map.as_ref().unwrap().name,
        "prophet-rules"
    );
    // The state survives container restarts on a writable volume (the root filesystem
    // is read-only).
    assert!(
        args.windows(2)
            .any(|w| w == ["--state-dir", "/var/lib/prophet"])
    );
    let state = &container.volume_mounts.as_ref().unwrap()[1];
    assert_eq!(state.mount_path, "/var/lib/prophet");
    assert!(
        volumes
            .iter()
            .any(|v| v.name == state.name && v.empty_dir.is_some())
    );
    let service = service.unwrap().spec.unwrap();
    assert_eq!(service.ports.unwrap()[0].port, 8080);

    // The example rule in the ConfigMap is an active rule.
    for (file, text) in rules.unwrap().data.unwrap() {
        let (loaded, invalid) = parse_documents(&text, std::path::Path::new(&file));
        assert!(invalid.is_empty(), "{invalid:?}");
        for rule in &loaded {
            compile(rule, CompileOptions::default()).unwrap();
        }
    }
}

#[test]
fn the_remote_write_fragment_points_at_the_service() {
    let docs = documents("deploy/prometheus-remote-write.yaml");
    let url = docs[0]["remote_write"][0]["url"].as_str().unwrap();
    assert_eq!(url, "http://prophet.prophet-system.svc:8080/api/v1/write");
}
