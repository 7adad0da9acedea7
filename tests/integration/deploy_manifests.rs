//! What `deploy/` installs. The kustomize base (`kubectl apply -k deploy/`) renders with
//! the kubectl users have, and a real API server accepts every object of it (server-side
//! dry run: admission, schemas, Pod Security) without a warning; the StatefulSet, its
//! Services, its ServiceAccount, RBAC and PodDisruptionBudget are wired to each other;
//! the operator's ServiceAccount may do what cluster mode needs and nothing else, and
//! people bound to `edit`/`view` may manage/read the rules. The Prometheus fragments
//! write to every replica with the token of the Secret the StatefulSet mounts, the
//! NetworkPolicy lets only Prometheus reach the ingest port and leaves the probes' and
//! metrics' port open, and the standalone example still parses and loads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::crd;
use prophet::rules::load::parse_documents;
use serde::Deserialize;

use crate::common::k8s::{Cluster, cluster};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml_documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

fn documents(path: &str) -> Vec<serde_yaml::Value> {
    yaml_documents(&std::fs::read_to_string(repo(path)).unwrap())
}

/// Runs the test cluster's kubectl; the output whatever the exit status, so a test can
/// read warnings on stderr.
fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(&cluster.kubectl)
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl kustomize DIR`: exactly what `kubectl apply -k DIR` sends.
fn kustomize(cluster: &Cluster, dir: &str) -> String {
    let dir = repo(dir);
    cluster.kubectl(&["kustomize", dir.to_str().unwrap()])
}

/// The one rendered object of `kind` named `name`.
fn object<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str, name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"));
    serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

/// The objects `kubectl apply -k deploy/` installs, as `kind/name` (cluster-scoped) or
/// `kind/namespace/name`.
const INSTALLED: [&str; 21] = [
    "Namespace/prophet-system",
    "CustomResourceDefinition/anomalyactions.aiops.prophet.io",
    "CustomResourceDefinition/predictivescales.aiops.prophet.io",
    "CustomResourceDefinition/sloviolations.aiops.prophet.io",
    "CustomResourceDefinition/actionapprovals.aiops.prophet.io",
    "ServiceAccount/prophet-system/prophet",
    "ClusterRole/prophet",
    "ClusterRoleBinding/prophet",
    "Role/prophet-system/prophet-leader-election",
    "RoleBinding/prophet-system/prophet-leader-election",
    "ClusterRole/prophet-edit",
    "ClusterRole/prophet-view",
    "ClusterRole/prophet-approver",
    "ValidatingAdmissionPolicy/prophet-approver-is-the-requester",
    "ValidatingAdmissionPolicyBinding/prophet-approver-is-the-requester",
    "Service/prophet-system/prophet",
    "Service/prophet-system/prophet-headless",
    "StatefulSet/prophet-system/prophet",
    "PodDisruptionBudget/prophet-system/prophet",
    "NetworkPolicy/prophet-system/prophet",
    "PriorityClass/prophet-placeholder",
];

/// Cluster-scoped kinds kustomize 5.8's built-in schema does not know: its namespace
/// transformer stamps `prophet-system` on them, which the API server ignores for a
/// cluster-scoped object (the server-side dry run below installs them as such).
const CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

fn identity(doc: &serde_yaml::Value) -> String {
    let kind = doc["kind"].as_str().unwrap();
    let name = doc["metadata"]["name"].as_str().unwrap();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .filter(|_| !CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE.contains(&kind));
    match namespace {
        Some(namespace) => format!("{kind}/{namespace}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

#[test]
fn the_base_renders_the_operator_and_nothing_else() {
    let Some(cluster) = cluster() else { return };
    let docs = yaml_documents(&kustomize(cluster, "deploy"));
    let rendered: BTreeSet<String> = docs.iter().map(identity).collect();
    let expected: BTreeSet<String> = INSTALLED.iter().map(|s| s.to_string()).collect();
    assert_eq!(rendered, expected);
    assert_eq!(docs.len(), 21, "one document per object");
    // Every namespaced object lands in prophet-system; the examples, components and
    // integrations stay out.
    for doc in &docs {
        if let Some(namespace) = doc["metadata"]["namespace"].as_str() {
            assert_eq!(namespace, "prophet-system", "{}", identity(doc));
        }
    }
}

#[test]
fn the_kustomization_lists_every_generated_crd() {
    let kustomization = &documents("deploy/Kustomization")[0];
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for crd in crd::crds() {
        let file = format!("crds/{}", crd::crd_file_name(&crd));
        assert!(
            resources.contains(&file.as_str()),
            "deploy/Kustomization does not install {file}"
        );
    }
    for resource in resources {
        assert!(
            repo("deploy").join(resource).is_file(),
            "deploy/Kustomization names {resource}, which is not a file"
        );
    }
}

#[test]
fn the_statefulset_is_wired_to_its_services_account_lease_and_budget() {
    let Some(cluster) = cluster() else { return };
    let docs = yaml_documents(&kustomize(cluster, "deploy"));
    let set: StatefulSet = object(&docs, "StatefulSet", "prophet");
    let spec = set.spec;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selects_pods = |selector: &std::collections::BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects_pods(spec.selector.match_labels.as_ref().unwrap()));

    // Prometheus finds each replica by name through the headless Service, also while
    // the replica is starting.
    let headless: Service = object(&docs, "Service", "prophet-headless");
    assert_eq!(spec.service_name.as_deref(), Some("prophet-headless"));
    let headless = headless.spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert!(selects_pods(headless.selector.as_ref().unwrap()));
    let service: Service = object(&docs, "Service", "prophet");
    let service = service.spec.unwrap();
    assert!(selects_pods(service.selector.as_ref().unwrap()));
    for ports in [&headless.ports, &service.ports] {
        let port = &ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        // The probes' and metrics' listener, per replica and behind the Service.
        let metrics = &ports.as_ref().unwrap()[1];
        assert_eq!(metrics.port, 8081);
        assert_eq!(
            metrics.target_port,
            Some(IntOrString::String("metrics".into()))
        );
    }

    let pod = spec.template.spec.unwrap();
    let account: ServiceAccount = object(&docs, "ServiceAccount", "prophet");
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_ne!(pod.automount_service_account_token, Some(false));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("prophet:0.1.0"));
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "run");
    for arg in [
        "--cluster",
        "--listen=0.0.0.0:8080",
        "--metrics-listen=0.0.0.0:8081",
        "--state-dir=/var/lib/prophet",
        "--leader-elect=true",
        "--privileged-namespace=prophet-system",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} missing from {args:?}");
    }
    // The Lease it elects a leader with is the one its Role lets it update.
    let lease = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("--lease-name");
    let role: Role = object(&docs, "Role", "prophet-leader-election");
    let update = role
        .rules
        .unwrap()
        .into_iter()
        .find(|r| r.verbs.contains(&"update".to_owned()))
        .unwrap();
    assert_eq!(update.resource_names, Some(vec![lease.to_owned()]));

    // Leader-election identity and namespace come from the downward API.
    let env = container.env.clone().unwrap();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        let field = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, path);
    }
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&container.liveness_probe), "/healthz");
    assert_eq!(probe_path(&container.readiness_probe), "/readyz");
    // Probes go to the listener that asks for no credential.
    for probe in [
        &container.startup_probe,
        &container.liveness_probe,
        &container.readiness_probe,
    ] {
        let port = &probe.as_ref().unwrap().http_get.as_ref().unwrap().port;
        assert_eq!(port, &IntOrString::String("metrics".into()));
    }
    let container_ports: Vec<(String, i32)> = container
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        container_ports,
        [("http".to_owned(), 8080), ("metrics".to_owned(), 8081)]
    );

    // Ingest asks for the token of the Secret prophet-remote-write, mounted as a folder
    // (no subPath, so a rotation reaches the pod).
    let token_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--write-token-file="))
        .expect("--write-token-file");
    let (folder, key) = token_file.rsplit_once('/').unwrap();
    assert_eq!(key, "token");
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == folder)
        .expect("the token's folder is mounted");
    assert_eq!(mount.sub_path, None);
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("prophet-remote-write"));
    assert_ne!(secret.optional, Some(true), "no token, no start");

    // Only Prometheus reaches the ingest port; probes and metrics stay reachable.
    let policy: NetworkPolicy = object(&docs, "NetworkPolicy", "prophet");
    let policy = policy.spec.unwrap();
    assert!(selects_pods(
        policy
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));
    assert_eq!(policy.policy_types, Some(vec!["Ingress".to_owned()]));
    let rules = policy.ingress.unwrap();
    let allows = |port: &str| {
        rules
            .iter()
            .filter(|rule| {
                rule.ports.as_ref().is_some_and(|ports| {
                    ports
                        .iter()
                        .any(|p| p.port == Some(IntOrString::String(port.into())))
                })
            })
            .collect::<Vec<_>>()
    };
    let ingest = allows("http");
    assert_eq!(ingest.len(), 1, "{ingest:?}");
    let from = ingest[0].from.as_ref().expect("ingest is not open to all");
    assert!(!from.is_empty());
    for peer in from {
        let pods = peer.pod_selector.as_ref().expect("only some pods");
        assert_eq!(
            pods.match_labels.as_ref().unwrap()["app.kubernetes.io/name"],
            "prometheus"
        );
    }
    let metrics = allows("metrics");
    assert!(
        metrics.iter().any(|rule| rule.from.is_none()),
        "probes and scrapers come from anywhere: {metrics:?}"
    );
    let resources = container.resources.as_ref().unwrap();
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );

    // Hardened: non-root, read-only root, no privilege escalation, no capabilities,
    // the runtime's seccomp profile.
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    // --state-dir is on a volume of its own per replica.
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/lib/prophet")
        .expect("a volume at /var/lib/prophet");
    let claims = spec.volume_claim_templates.unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(mount.name.as_str()))
    );

    // A drain takes one replica at a time.
    let budget: PodDisruptionBudget = object(&docs, "PodDisruptionBudget", "prophet");
    let budget = budget.spec.unwrap();
    assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
    assert!(selects_pods(
        budget.selector.unwrap().match_labels.as_ref().unwrap()
    ));
}

/// The rendering of `deploy/`, with two parts of it applied for real, once per test
/// binary and before any test uses them (with the CRDs): the Namespace (a server-side dry run creates
/// nothing, so the namespaced objects of a dry run would find no namespace; and Pod
/// Security reads its labels) and the RBAC objects (a dry run grants nothing). Done once
/// so that tests never race to create the same object.
fn installed(cluster: &Cluster) -> &'static [serde_yaml::Value] {
    static INSTALLED: OnceLock<Vec<serde_yaml::Value>> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // `kubectl auth can-i` finds the kinds by discovery: they must be served
        // (Karpenter's NodePool too, as a test copy).
        cluster.install_crds();
        let karpenter = repo("tests/fixtures/crds/karpenter.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", karpenter.to_str().unwrap()]);
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/nodepools.karpenter.sh",
        ]);
        let docs = yaml_documents(&kustomize(cluster, "deploy"));
        let namespace = docs
            .iter()
            .find(|d| d["kind"] == "Namespace")
            .expect("the rendering has its Namespace");
        cluster.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&serde_yaml::to_string(namespace).unwrap()),
        );
        let rbac: Vec<String> = docs
            .iter()
            .filter(|d| {
                let kind = d["kind"].as_str().unwrap();
                kind == "ServiceAccount"
                    || kind.starts_with("Role")
                    || kind.starts_with("ClusterRole")
            })
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        cluster.kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some(&rbac.join("---\n")),
        );
        docs
    })
}

/// Warnings kubectl printed, except the one about objects an earlier server-side apply
/// created (another test's `install_crds`), which says nothing about the manifests.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("Warning"))
        .filter(|line| !line.contains("last-applied-configuration"))
        .collect()
}

#[test]
fn a_real_api_server_accepts_the_whole_install_without_warnings() {
    let Some(cluster) = cluster() else { return };
    let rendering = kustomize(cluster, "deploy");
    installed(cluster);

    let out = kubectl(
        cluster,
        &["apply", "--dry-run=server", "-o", "name", "-f", "-"],
        &rendering,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "apply failed:\n{stdout}{stderr}");
    // Admission (Pod Security `restricted` is enforced on the namespace and warns about
    // the pod template), schemas and the CRDs' own validation all had their say.
    assert!(warnings(&stderr).is_empty(), "{stderr}");
    let applied: BTreeSet<&str> = stdout.lines().collect();
    let expected: BTreeSet<&str> = [
        "namespace/prophet-system",
        "customresourcedefinition.apiextensions.k8s.io/anomalyactions.aiops.prophet.io",
        "customresourcedefinition.apiextensions.k8s.io/predictivescales.aiops.prophet.io",
        "customresourcedefinition.apiextensions.k8s.io/sloviolations.aiops.prophet.io",
        "customresourcedefinition.apiextensions.k8s.io/actionapprovals.aiops.prophet.io",
        "serviceaccount/prophet",
        "clusterrole.rbac.authorization.k8s.io/prophet",
        "clusterrole.rbac.authorization.k8s.io/prophet-edit",
        "clusterrole.rbac.authorization.k8s.io/prophet-view",
        "clusterrole.rbac.authorization.k8s.io/prophet-approver",
        "validatingadmissionpolicy.admissionregistration.k8s.io/prophet-approver-is-the-requester",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/prophet-approver-is-the-requester",
        "clusterrolebinding.rbac.authorization.k8s.io/prophet",
        "role.rbac.authorization.k8s.io/prophet-leader-election",
        "rolebinding.rbac.authorization.k8s.io/prophet-leader-election",
        "service/prophet",
        "service/prophet-headless",
        "statefulset.apps/prophet",
        "poddisruptionbudget.policy/prophet",
        "networkpolicy.networking.k8s.io/prophet",
        "priorityclass.scheduling.k8s.io/prophet-placeholder",
    ]
    .into();
    assert_eq!(applied, expected, "{stderr}");
}

#[test]
fn kubectl_apply_f_deploy_reads_only_objects() {
    let Some(cluster) = cluster() else { return };
    installed(cluster);
    // A user's first guess: every *.yaml/*.yml of the folder is a Kubernetes object
    // (the kustomization is named `Kustomization`, the Prometheus fragments are in
    // integrations/), so this applies the operator (without the CRDs, in crds/).
    let dir = repo("deploy");
    let out = kubectl(
        cluster,
        &[
            "apply",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            dir.to_str().unwrap(),
        ],
        "",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("statefulset.apps/prophet"), "{stdout}");
}

#[test]
fn the_pod_template_passes_pod_security_restricted() {
    let Some(cluster) = cluster() else { return };
    // The same dry run catches a pod template that breaks the namespace's Pod Security
    // level: the test above would see a warning, not silence, if the hardening went.
    let rendering = kustomize(cluster, "deploy");
    installed(cluster);
    let weakened = rendering.replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    assert_ne!(weakened, rendering);
    let out = kubectl(
        cluster,
        &["apply", "--dry-run=server", "-o", "name", "-f", "-"],
        &weakened,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("would violate PodSecurity \"restricted"),
        "{stderr}"
    );
}

/// `kubectl auth can-i VERB RESOURCE [flags]` as `who`.
fn can(cluster: &Cluster, who: &str, query: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i"];
    args.extend_from_slice(query);
    let as_user = format!("--as={who}");
    args.push(&as_user);
    let out = kubectl(cluster, &args, "");
    // `no` exits 1; anything but yes/no is a broken query.
    match text(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: {other}{}", text(&out.stderr)),
    }
}

#[test]
fn the_operator_may_do_what_cluster_mode_needs_and_nothing_else() {
    let Some(cluster) = cluster() else { return };
    installed(cluster);
    let operator = "system:serviceaccount:prophet-system:prophet";
    let rules = cluster.namespace("rbac-rules");
    let ns = format!("--namespace={rules}");
    let allowed: &[&[&str]] = &[
        &[
            "list",
            "anomalyactions.aiops.prophet.io",
            "--all-namespaces",
        ],
        &[
            "watch",
            "predictivescales.aiops.prophet.io",
            "--all-namespaces",
        ],
        &["get", "sloviolations.aiops.prophet.io", &ns],
        &[
            "patch",
            "anomalyactions.aiops.prophet.io",
            "--subresource=status",
            &ns,
        ],
        &[
            "update",
            "sloviolations.aiops.prophet.io",
            "--subresource=status",
            &ns,
        ],
        &["create", "events.events.k8s.io", &ns],
        // Actions (deploy/rbac.yaml says why each).
        &["create", "pods", "--subresource=eviction", &ns],
        &["patch", "deployments.apps", &ns],
        &["patch", "statefulsets.apps", "--subresource=scale", &ns],
        &["patch", "horizontalpodautoscalers.autoscaling", &ns],
        &["patch", "nodepools.karpenter.sh"],
        &["patch", "anomalyactions.aiops.prophet.io", &ns],
        &[
            "watch",
            "actionapprovals.aiops.prophet.io",
            "--all-namespaces",
        ],
        &["get", "secrets", &ns],
        &["watch", "configmaps", "--namespace=prophet-system"],
        &["patch", "events.events.k8s.io", &ns],
        &[
            "create",
            "leases.coordination.k8s.io",
            "--namespace=prophet-system",
        ],
        &[
            "get",
            "leases.coordination.k8s.io/prophet-leader",
            "--namespace=prophet-system",
        ],
        &[
            "update",
            "leases.coordination.k8s.io/prophet-leader",
            "--namespace=prophet-system",
        ],
    ];
    let refused: &[&[&str]] = &[
        // Rules belong to their authors.
        &["update", "anomalyactions.aiops.prophet.io", &ns],
        &["delete", "sloviolations.aiops.prophet.io", &ns],
        // Leases only in its own namespace, and only its own.
        &["create", "leases.coordination.k8s.io", &ns],
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "--namespace=prophet-system",
        ],
        // Workloads only through the actions' verbs: no deleting pods (evictions
        // honour budgets), no creating them, no touching other kinds.
        &["delete", "pods", &ns],
        &["create", "pods", &ns],
        &["delete", "statefulsets.apps", &ns],
        &["update", "deployments.apps", &ns],
        &["delete", "nodepools.karpenter.sh"],
        // Secrets by name only, ConfigMaps only its own pause switch's namespace.
        &["list", "secrets", &ns],
        &["list", "configmaps", &ns],
        // Approvals are the approvers'.
        &["create", "actionapprovals.aiops.prophet.io", &ns],
        // Core Events are not the ones it writes.
        &["create", "events", &ns],
    ];
    // The authorizer sees new roles and bindings a moment after they are stored.
    for query in allowed {
        eventually(&format!("the operator may {query:?}"), || {
            can(cluster, operator, query)
        });
    }
    for query in refused {
        assert!(!can(cluster, operator, query), "the operator may {query:?}");
    }
}

/// Polls `condition` until it holds, for at most a minute: the authorizer's caches, and
/// the cluster-role aggregation controller that fills `edit`/`view`, follow new roles a
/// moment after they are stored.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "after a minute, still not: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn edit_and_view_users_manage_and_read_the_rules_of_their_namespace() {
    let Some(cluster) = cluster() else { return };
    let docs = installed(cluster);
    for name in ["prophet-edit", "prophet-view"] {
        let role: ClusterRole = object(docs, "ClusterRole", name);
        let labels = role.metadata.labels.unwrap();
        let aggregate_to = name.trim_start_matches("prophet-");
        assert_eq!(
            labels
                .get(&format!(
                    "rbac.authorization.k8s.io/aggregate-to-{aggregate_to}"
                ))
                .map(String::as_str),
            Some("true")
        );
    }
    let team = cluster.namespace("rbac-team");
    let editor = format!("editor-{team}");
    let viewer = format!("viewer-{team}");
    for (user, role) in [(&editor, "edit"), (&viewer, "view")] {
        cluster.kubectl(&[
            "create",
            "rolebinding",
            user,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
            &format!("--namespace={team}"),
        ]);
    }
    let ns = format!("--namespace={team}");
    for kind in [
        "anomalyactions.aiops.prophet.io",
        "predictivescales.aiops.prophet.io",
        "sloviolations.aiops.prophet.io",
    ] {
        eventually(&format!("{editor} may create {kind}"), || {
            can(cluster, &editor, &["create", kind, &ns])
        });
        eventually(&format!("{viewer} may list {kind}"), || {
            can(cluster, &viewer, &["list", kind, &ns])
        });
        assert!(can(cluster, &editor, &["delete", kind, &ns]));
        assert!(can(cluster, &editor, &["watch", kind, &ns]));
        assert!(can(
            cluster,
            &viewer,
            &["get", kind, "--subresource=status", &ns]
        ));
        assert!(!can(cluster, &viewer, &["create", kind, &ns]));
        // Status is the operator's record, not the editors'.
        assert!(!can(
            cluster,
            &editor,
            &["patch", kind, "--subresource=status", &ns]
        ));
        // Only in the namespace they were given.
        assert!(!can(
            cluster,
            &editor,
            &["create", kind, "--namespace=default"]
        ));
    }
}

#[test]
fn the_single_namespace_component_swaps_the_cluster_grant_for_a_namespace_one() {
    let Some(cluster) = cluster() else { return };
    // kustomize refuses an overlay inside its base: use the component as a user would,
    // from a kustomization of their own outside deploy/.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("single-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let relative = |to: &str| {
        // CARGO_TARGET_TMPDIR is inside the repository's target/ folder in a normal build;
        // kustomize wants relative paths.
        pathdiff(&repo(to), &dir)
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            relative("deploy"),
            relative("deploy/components/single-namespace")
        ),
    )
    .unwrap();
    let docs = yaml_documents(&cluster.kubectl(&["kustomize", dir.to_str().unwrap()]));
    std::fs::remove_dir_all(&dir).unwrap();
    let kinds: Vec<String> = docs.iter().map(identity).collect();
    assert!(
        !kinds.contains(&"ClusterRoleBinding/prophet".to_owned()),
        "{kinds:?}"
    );
    let binding: RoleBinding = object(&docs, "RoleBinding", "prophet");
    assert_eq!(binding.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "prophet");
    let set: StatefulSet = object(&docs, "StatefulSet", "prophet");
    let args = set.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--namespace=shop".to_owned()), "{args:?}");
}

#[test]
fn the_secure_metrics_component_turns_on_kubernetes_metrics_auth() {
    let Some(cluster) = cluster() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("secure-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            pathdiff(&repo("deploy"), &dir),
            pathdiff(&repo("deploy/components/secure-metrics"), &dir)
        ),
    )
    .unwrap();
    let docs = yaml_documents(&cluster.kubectl(&["kustomize", dir.to_str().unwrap()]));
    std::fs::remove_dir_all(&dir).unwrap();
    let set: StatefulSet = object(&docs, "StatefulSet", "prophet");
    let args = set.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--metrics-auth=kubernetes".to_owned()),
        "{args:?}"
    );
    let reviews: ClusterRole = object(&docs, "ClusterRole", "prophet-metrics-auth");
    let granted: Vec<(String, String)> = reviews
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|rule| {
            let group = rule.api_groups.unwrap()[0].clone();
            assert_eq!(rule.verbs, ["create"]);
            rule.resources
                .unwrap()
                .into_iter()
                .map(move |resource| (group.clone(), resource))
        })
        .collect();
    assert_eq!(
        granted,
        [
            (
                "authentication.k8s.io".to_owned(),
                "tokenreviews".to_owned()
            ),
            (
                "authorization.k8s.io".to_owned(),
                "subjectaccessreviews".to_owned()
            )
        ]
    );
    let reader: ClusterRole = object(&docs, "ClusterRole", "prophet-metrics-reader");
    let rule = &reader.rules.unwrap()[0];
    assert_eq!(rule.non_resource_urls, Some(vec!["/metrics".to_owned()]));
    assert_eq!(rule.verbs, ["get"]);
}

/// `to` relative to the folder `from`, both absolute.
fn pathdiff(to: &Path, from: &Path) -> String {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// The remote-write URL of each replica of the StatefulSet in `deploy/`.
fn replica_urls() -> Vec<String> {
    let set: StatefulSet =
        serde_yaml::from_value(documents("deploy/statefulset.yaml")[0].clone()).unwrap();
    let spec = set.spec;
    let replicas = spec.replicas.unwrap();
    let service = spec.service_name.unwrap();
    (0..replicas)
        .map(|n| format!("http://prophet-{n}.{service}.prophet-system.svc:8080/api/v1/write"))
        .collect()
}

#[test]
fn every_prometheus_fragment_writes_to_every_replica_by_name_with_the_token() {
    let urls = replica_urls();
    let list = |entries: &serde_yaml::Value| -> Vec<String> {
        entries
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap().to_owned())
            .collect()
    };
    let authorizations = |entries: &serde_yaml::Value| -> Vec<serde_yaml::Value> {
        entries
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["authorization"].clone())
            .collect()
    };
    let plain = &documents("deploy/integrations/prometheus-remote-write.yml")[0];
    assert_eq!(list(&plain["remote_write"]), urls);
    for authorization in authorizations(&plain["remote_write"]) {
        assert_eq!(authorization["type"], "Bearer");
        let file = authorization["credentials_file"].as_str().unwrap();
        assert!(file.ends_with("/prophet-remote-write/token"), "{file}");
    }
    let operator = &documents("deploy/integrations/prometheus-operator.yaml")[0];
    assert_eq!(operator["kind"], "Prometheus");
    assert_eq!(list(&operator["spec"]["remoteWrite"]), urls);
    let helm = &documents("deploy/integrations/kube-prometheus-stack-values.yaml")[0];
    let helm = &helm["prometheus"]["prometheusSpec"]["remoteWrite"];
    assert_eq!(list(helm), urls);
    for authorization in authorizations(&operator["spec"]["remoteWrite"])
        .into_iter()
        .chain(authorizations(helm))
    {
        assert_eq!(authorization["type"], "Bearer");
        assert_eq!(authorization["credentials"]["name"], "prophet-remote-write");
        assert_eq!(authorization["credentials"]["key"], "token");
    }
    let argo = &documents("deploy/integrations/argocd-application.yaml")[0];
    assert_eq!(argo["kind"], "Application");
    assert_eq!(argo["spec"]["source"]["path"], "deploy");
    assert_eq!(argo["spec"]["destination"]["namespace"], "prophet-system");
}

#[test]
fn the_standalone_example_is_valid_objects_wired_together() {
    let docs = documents("deploy/examples/standalone/prophet.yaml");
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
    // Its own namespace: applying the example beside the install changes nothing of it.
    assert_eq!(
        deployment.metadata.namespace.as_deref(),
        Some("prophet-standalone")
    );
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

    let kustomization = &documents("deploy/examples/standalone/kustomization.yaml")[0];
    assert_eq!(kustomization["resources"][0], "prophet.yaml");
}

#[test]
fn the_standalone_example_renders() {
    let Some(cluster) = cluster() else { return };
    let docs = yaml_documents(&kustomize(cluster, "deploy/examples/standalone"));
    assert_eq!(docs.len(), 5);
}
