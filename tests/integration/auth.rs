//! Only Prometheus may speak: the real binary with credentials on its ingest listener.
//! Debian's Prometheus writes with a bearer token, with basic auth and over mutual TLS,
//! and its samples arrive and trip a rule; with a wrong or missing credential every
//! request is refused with 401 (counted: each batch the sender tries shows), nothing is
//! accepted and nothing is evaluated. A token rotated by swapping a Secret-style
//! `..data` link takes effect without a restart, and so does a certificate (new
//! connections get it); a client that never completes its TLS handshake is closed at the
//! header-read timeout, and counted with the handshakes a certificate from another CA
//! fails. Probes and metrics answer without
//! credentials on their own listener while ingest refuses; with
//! `--metrics-auth=kubernetes` (against a real API server) `/metrics` answers only a
//! ServiceAccount token granted `get` on it. In process: a refusal is answered from the
//! headers alone, before the body is read.
//!
//! The Prometheus tests need `/usr/bin/prometheus` (`apt-get install prometheus`).
//! Certificates are made at test time (rcgen).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::process::{Running, free_port};
use prophet::auth::{AuthConfig, Gate};
use tower::ServiceExt;

/// A started `prophet run`: the process, its ingest address and its probes address.
struct Prophet {
    _process: Running,
    ingest: String,
    probes: String,
    /// Every line it logged so far (debug level for Prophet's own modules).
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Prophet {
    /// The lines logged so far that contain `text`.
    fn logged(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }
}

/// Starts `prophet run` on the rules in `rules` with `args`; probes and metrics on a
/// listener of their own.
fn start_prophet(rules: &Path, args: &[&str]) -> Prophet {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prophet"));
    command.args(["run", "--rules"]).arg(rules).args(args);
    start(command)
}

/// Starts `command` (a `prophet run`) with its listeners on free loopback ports.
fn start(mut command: Command) -> Prophet {
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        // Debug, so that a credential logged anywhere (refusals are logged at debug)
        // would show.
        .env("RUST_LOG", "info,prophet=debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("prophet starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("prophet: {line}");
            lines.lock().unwrap().push(line.clone());
            for (marker, kind) in [
                ("listening on ", "ingest"),
                ("probes and metrics on ", "probes"),
            ] {
                if let Some(rest) = line.split(marker).nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((kind, addr));
                }
            }
        }
    });
    let process = Running(child);
    let (mut ingest, mut probes) = (None, None);
    while ingest.is_none() || probes.is_none() {
        let (kind, addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("prophet reports both addresses within 30 s");
        match kind {
            "ingest" => ingest = Some(addr),
            _ => probes = Some(addr),
        }
    }
    Prophet {
        _process: process,
        ingest: ingest.unwrap(),
        probes: probes.unwrap(),
        log,
    }
}

/// Starts Prometheus scraping itself (its series labelled `pod`) and remote-writing to
/// `url` with the given extra lines of its remote_write entry.
fn start_prometheus(dir: &Path, pod: &str, url: &str, remote_write_extra: &str) -> Running {
    let port = free_port();
    let config = format!(
        r#"
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels: {{namespace: default, pod: {pod}}}
remote_write:
  - url: {url}
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
{remote_write_extra}
"#
    );
    let path = dir.join(format!("prometheus-{pod}.yml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join(format!("data-{pod}")).display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Running(child)
}

/// A rules folder with one rule: Prometheus's own `up` at 1 for 2 s trips it.
fn rules(dir: &Path) -> PathBuf {
    common::process::rules_folder(
        dir,
        "up.yaml",
        &common::threshold_rule(
            "prometheus-up",
            r#"up{job="prometheus"}"#,
            "== 1",
            "  for: 2s\n",
        ),
    )
}

/// A Secret as the kubelet mounts it: `name -> ..data/name`, `..data -> ..v<version>`,
/// replaced by writing a new version folder and swapping the `..data` link at once.
fn mount_secret(dir: &Path, name: &str, content: &str, version: u32) -> PathBuf {
    mount_secret_files(dir, &[(name, content)], version).remove(0)
}

/// [`mount_secret`] with several keys, all swapped at once.
fn mount_secret_files(dir: &Path, files: &[(&str, &str)], version: u32) -> Vec<PathBuf> {
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    for (name, content) in files {
        std::fs::write(versioned.join(name), content).unwrap();
    }
    let swap = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&swap);
    std::os::unix::fs::symlink(format!("..v{version}"), &swap).unwrap();
    std::fs::rename(&swap, dir.join("..data")).unwrap();
    files
        .iter()
        .map(|(name, _)| {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
            link
        })
        .collect()
}

/// A counter's value in an exposition, 0 when absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const WRITES_204: &str = r#"prophet_remote_write_requests_total{version="1.0",code="204"}"#;
const WRITES_401: &str = r#"prophet_remote_write_requests_total{version="1.0",code="401"}"#;
const ACCEPTED: &str = r#"prophet_remote_write_samples_total{result="accepted"}"#;
const HANDSHAKE_FAILURES: &str = "prophet_tls_handshake_failures_total";

async fn metrics(client: &reqwest::Client, prophet: &Prophet) -> String {
    client
        .get(format!("http://{}/metrics", prophet.probes))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("metrics answer without credentials")
        .text()
        .await
        .unwrap()
}

/// Polls `/metrics` until `done` holds, up to `within`.
async fn wait_metrics(
    client: &reqwest::Client,
    prophet: &Prophet,
    within: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics(client, prophet).await;
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The decisions, read with the given `Authorization` header.
async fn decisions(
    client: &reqwest::Client,
    prophet: &Prophet,
    authorization: &str,
) -> Vec<serde_json::Value> {
    let answer = client
        .get(format!("http://{}/api/v1/decisions", prophet.ingest))
        .header("authorization", authorization)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the API admits the ingest credential");
    answer.json::<serde_json::Value>().await.unwrap()["decisions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits up to 90 s for a decision about `prometheus-up` on the series of `pod`.
async fn wait_trip(client: &reqwest::Client, prophet: &Prophet, authorization: &str, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let found = decisions(client, prophet, authorization)
            .await
            .into_iter()
            .any(|d| d["rule"]["name"] == "prometheus-up" && d["series"]["pod"] == pod);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus-up did not trip on {pod} within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An empty remote-write 1.0 request, to probe the gate by hand.
fn empty_write() -> Vec<u8> {
    common::v1_body(Vec::new())
}

async fn post_write(
    client: &reqwest::Client,
    prophet: &Prophet,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("http://{}/api/v1/write", prophet.ingest))
        .header("content-type", common::V1)
        .header("content-encoding", "snappy")
        .body(empty_write())
        .timeout(Duration::from_secs(5));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_admits_prometheus_and_a_rotation_needs_no_restart() {
    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let token_file = mount_secret(&secret, "token", "old-token\n", 1);
    let prophet = start_prophet(
        &rules,
        &["--write-token-file", token_file.to_str().unwrap()],
    );
    // Prometheus reads its credentials file at every request.
    let credentials = dir.path().join("prometheus-credentials");
    std::fs::write(&credentials, "old-token\n").unwrap();
    let _prometheus = start_prometheus(
        dir.path(),
        "prometheus-0",
        &format!("http://{}/api/v1/write", prophet.ingest),
        &format!(
            "    authorization: {{type: Bearer, credentials_file: {}}}",
            credentials.display()
        ),
    );
    let client = common::process::http_client();
    wait_trip(&client, &prophet, "Bearer old-token", "prometheus-0").await;
    let text = metrics(&client, &prophet).await;
    assert!(counter(&text, WRITES_204) > 0.0, "{text}");
    assert_eq!(
        counter(&text, WRITES_401),
        0.0,
        "Prometheus is never refused:\n{text}"
    );

    // The JSON API asks for the same credential.
    let api = client
        .get(format!("http://{}/api/v1/rules", prophet.ingest))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(
        api.headers()["www-authenticate"],
        r#"Bearer realm="prophet""#
    );

    // Rotation, as a Secret update: the new token only. Prometheus still sends the old
    // one, and each of its batches is refused and counted.
    mount_secret(&secret, "token", "new-token\n", 2);
    let refused_before = counter(&metrics(&client, &prophet).await, WRITES_401);
    let text = wait_metrics(
        &client,
        &prophet,
        Duration::from_secs(30),
        "the old token refused, batch after batch",
        |text| counter(text, WRITES_401) >= refused_before + 3.0,
    )
    .await;
    let accepted_while_refused = counter(&text, ACCEPTED);
    assert_eq!(
        post_write(&client, &prophet, Some("Bearer old-token"))
            .await
            .status(),
        401
    );
    assert_eq!(
        post_write(&client, &prophet, Some("Bearer new-token"))
            .await
            .status(),
        204
    );
    assert_eq!(
        counter(&metrics(&client, &prophet).await, ACCEPTED),
        accepted_while_refused,
        "nothing of the refused batches was accepted"
    );

    // Prometheus rotates too: its samples are accepted again, no restart on either side.
    std::fs::write(&credentials, "new-token\n").unwrap();
    let accepted_204 = counter(&metrics(&client, &prophet).await, WRITES_204);
    wait_metrics(
        &client,
        &prophet,
        Duration::from_secs(30),
        "Prometheus accepted with the new token",
        |text| {
            counter(text, WRITES_204) >= accepted_204 + 3.0
                && counter(text, ACCEPTED) > accepted_while_refused
        },
    )
    .await;
    // Refusals were logged (at debug), the tokens never; and a standalone Prophet has
    // no cause to warn about an open ingest.
    assert!(!prophet.logged("unauthorized").is_empty());
    for secret in ["old-token", "new-token"] {
        assert!(prophet.logged(secret).is_empty(), "{secret} logged");
    }
    assert!(prophet.logged("UNAUTHENTICATED").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_a_wrong_password_is_refused_and_nothing_is_evaluated() {
    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, "prometheus:correct horse\n").unwrap();
    let prophet = start_prophet(
        &rules,
        &["--write-basic-auth-file", users.to_str().unwrap()],
    );
    let password = dir.path().join("password");
    std::fs::write(&password, "wrong horse\n").unwrap();
    let _prometheus = start_prometheus(
        dir.path(),
        "prometheus-0",
        &format!("http://{}/api/v1/write", prophet.ingest),
        &format!(
            "    basic_auth: {{username: prometheus, password_file: {}}}",
            password.display()
        ),
    );
    let client = common::process::http_client();
    let authorization = "Basic cHJvbWV0aGV1czpjb3JyZWN0IGhvcnNl"; // prometheus:correct horse

    // Every batch is refused: the sender's tries show in the count, none is accepted.
    let text = wait_metrics(
        &client,
        &prophet,
        Duration::from_secs(60),
        "Prometheus refused batch after batch",
        |text| counter(text, WRITES_401) >= 5.0,
    )
    .await;
    assert_eq!(counter(&text, WRITES_204), 0.0, "{text}");
    assert_eq!(counter(&text, ACCEPTED), 0.0, "{text}");
    assert!(
        decisions(&client, &prophet, authorization).await.is_empty(),
        "nothing evaluated"
    );
    let rule = client
        .get(format!("http://{}/api/v1/rules", prophet.ingest))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let rule = common::rule_named(&rule, "prometheus-up");
    assert!(
        rule["series"].as_u64().unwrap_or(0) == 0,
        "no series reached the rule: {rule}"
    );

    // The right password (Prometheus re-reads its password file): samples arrive and the
    // rule trips.
    std::fs::write(&password, "correct horse\n").unwrap();
    wait_trip(&client, &prophet, authorization, "prometheus-0").await;
    for secret in [
        "horse",
        "cHJvbWV0aGV1czpjb3JyZWN0IGhvcnNl",
        "cHJvbWV0aGV1czp3cm9uZyBob3JzZQ==",
    ] {
        assert!(prophet.logged(secret).is_empty(), "{secret} logged");
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM
/// files in `dir`.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn certificates(dir: &Path) -> Certificates {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "prophet test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "prophet",
    );
    let (client_cert, client_key) = leaf(
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        "prometheus",
    );
    Certificates {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server-key.pem", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client-key.pem", client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_the_certified_sender_and_refuses_one_without_a_certificate() {
    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let certs = certificates(dir.path());
    let prophet = start_prophet(
        &rules,
        &[
            "--tls-cert-file",
            certs.server_cert.to_str().unwrap(),
            "--tls-key-file",
            certs.server_key.to_str().unwrap(),
            "--client-ca-file",
            certs.ca.to_str().unwrap(),
            // The decisions are read with a token here (reqwest speaks plain HTTP in
            // these tests); the senders have none.
            "--api=off",
        ],
    );
    let url = format!("https://{}/api/v1/write", prophet.ingest);
    // The certified sender speaks HTTP/2 (ALPN; 2.42's default, said here to be sure).
    let _certified = start_prometheus(
        dir.path(),
        "certified",
        &url,
        &format!(
            "    enable_http2: true\n    tls_config: {{ca_file: {}, cert_file: {}, key_file: {}}}",
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    );
    // Trusts the server, but has no certificate of its own; HTTP/1.1 over TLS.
    let _anonymous = start_prometheus(
        dir.path(),
        "anonymous",
        &url,
        &format!(
            "    enable_http2: false\n    tls_config: {{ca_file: {}}}",
            certs.ca.display()
        ),
    );
    let client = common::process::http_client();
    let text = wait_metrics(
        &client,
        &prophet,
        Duration::from_secs(60),
        "the certified sender accepted, the anonymous one refused",
        |text| {
            counter(text, ACCEPTED) > 0.0
                && counter(text, WRITES_401) >= 3.0
                && text.contains(
                    r#"prophet_rule_verdicts_total{kind="AnomalyAction",verdict="tripped"} 1"#,
                )
        },
    )
    .await;
    assert!(counter(&text, WRITES_204) > 0.0, "{text}");
    assert_eq!(counter(&text, HANDSHAKE_FAILURES), 0.0, "{text}");

    // A client certificate from another CA fails the handshake: no request is made, and
    // the count shows the attempt.
    let rogue = dir.path().join("rogue");
    std::fs::create_dir(&rogue).unwrap();
    let rogue = certificates(&rogue);
    let tcp = tokio::net::TcpStream::connect(&prophet.ingest)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connector = tls_connector(&certs.ca, Some((&rogue.client_cert, &rogue.client_key)));
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        // TLS 1.3: the client is done before the server has judged its certificate; the
        // server's refusal arrives on the first read.
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 16];
        let read = stream.read(&mut buffer).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let text = wait_metrics(
        &client,
        &prophet,
        Duration::from_secs(10),
        "the rogue certificate's handshake counted",
        |text| counter(text, HANDSHAKE_FAILURES) >= 1.0,
    )
    .await;
    assert_eq!(counter(&text, HANDSHAKE_FAILURES), 1.0, "{text}");
    // Exactly one series tripped: the certified sender's (the anonymous sender's `up`
    // would be a second one).
    assert!(
        text.contains(r#"prophet_series_active 1"#),
        "only the certified sender's series reached the rule:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer_without_credentials_while_ingest_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "t0ken\n").unwrap();
    let prophet = start_prophet(
        &rules,
        &["--write-token-file", tokens.to_str().unwrap(), "--api=off"],
    );
    let client = common::process::http_client();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = client
            .get(format!("http://{}{path}", prophet.probes))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path} on the probes listener");
        let answer = client
            .get(format!("http://{}{path}", prophet.ingest))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path} is not on the ingest listener");
    }
    for path in ["/api/v1/rules", "/api/v1/decisions"] {
        let answer = client
            .get(format!("http://{}{path}", prophet.ingest))
            .header("authorization", "Bearer t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path} is off");
    }
    let refused = post_write(&client, &prophet, None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer realm="prophet""#
    );
    assert_eq!(
        post_write(&client, &prophet, Some("Bearer t0ken "))
            .await
            .status(),
        204
    );
    assert_eq!(
        post_write(&client, &prophet, Some("Bearer t0ke"))
            .await
            .status(),
        401
    );
    let text = metrics(&client, &prophet).await;
    assert_eq!(counter(&text, WRITES_401), 2.0, "{text}");
    assert_eq!(counter(&text, WRITES_204), 1.0, "{text}");
}

#[test]
fn a_credential_file_that_cannot_be_read_stops_prophet_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    for (flag, why) in [
        ("--write-token-file", "cannot read"),
        ("--write-basic-auth-file", "cannot read"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_prophet"))
            .args(["run", "--rules"])
            .arg(&rules)
            .args(["--listen", "127.0.0.1:0", flag, "/nonexistent/credentials"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(why) && stderr.contains("/nonexistent/credentials"),
            "{stderr}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_prophet"))
        .args(["run", "--rules"])
        .arg(&rules)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client-ca-file",
            "/nonexistent/ca.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs TLS"));
}

/// A body that never arrives: a handler that reads it would wait for ever.
fn endless_body() -> Body {
    Body::from_stream(tokio_stream::pending::<Result<Vec<u8>, std::io::Error>>())
}

#[tokio::test]
async fn a_refusal_is_answered_from_the_headers_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "t0ken\n").unwrap();
    let app = common::start(&common::threshold_rule("r", "m", "> 1", ""));
    let gate = Arc::new(
        Gate::load(AuthConfig {
            token_file: Some(tokens),
            ..AuthConfig::default()
        })
        .unwrap(),
    );
    let router = prophet::http::ingest_router(
        app.pipeline.state.clone(),
        gate,
        true,
        Some(prophet::http::MetricsAccess::Open),
    );
    let request = Request::post("/api/v1/write")
        .header("content-type", common::V2)
        .header("content-encoding", "snappy")
        .header("authorization", "Bearer wrong")
        .body(endless_body())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    // A 2.0 sender is told nothing was written, as with every other refusal.
    assert_eq!(
        answer.headers()["x-prometheus-remote-write-samples-written"],
        "0"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"prophet_remote_write_requests_total{version="2.0",code="401"} 1"#),
        "{metrics}"
    );
    // Probes stay open on the same router.
    let probe = router
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_metrics_auth_lets_only_a_granted_service_account_read_metrics() {
    let Some(cluster) = common::k8s::cluster() else {
        return;
    };
    cluster.install_crds();
    let ns = "metrics-auth";
    let _ = cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: scraper, namespace: {ns}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {ns}}}\n"
        )),
    );
    // The component's ClusterRoles, as installed, and the reader granted to the scraper.
    let rbac = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/components/secure-metrics/rbac.yaml"),
    )
    .unwrap();
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&rbac));
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-scraper}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prophet-metrics-reader}}\nsubjects: [{{kind: ServiceAccount, name: scraper, namespace: {ns}}}]\n"
        )),
    );
    // What the component grants Prophet is what the review needs (Prophet runs with the
    // admin kubeconfig below; this checks the grant itself).
    for resource in [
        "tokenreviews.authentication.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
    ] {
        let answer = cluster.kubectl(&[
            "auth",
            "can-i",
            "create",
            resource,
            "--as=system:serviceaccount:prophet-system:prophet",
        ]);
        assert_eq!(answer.trim(), "yes", "{resource}");
    }
    let token = |account: &str| {
        cluster
            .kubectl(&["-n", ns, "create", "token", account])
            .trim()
            .to_owned()
    };
    let (scraper, stranger) = (token("scraper"), token("stranger"));

    let mut command = Command::new(env!("CARGO_BIN_EXE_prophet"));
    command
        .args([
            "run",
            "--cluster",
            "--dry-run",
            "--leader-elect=false",
            "--metrics-auth=kubernetes",
        ])
        .args(["--namespace", ns])
        .env("KUBECONFIG", &cluster.kubeconfig);
    let prophet = start(command);
    // Cluster mode with no write credential says so loudly (actions are dry run, so it
    // still starts).
    assert_eq!(prophet.logged("UNAUTHENTICATED REMOTE WRITE").len(), 1);
    let client = common::process::http_client();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client
            .get(format!("http://{}{path}", prophet.probes))
            .timeout(Duration::from_secs(10));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            get(probe, None).await.unwrap().status(),
            200,
            "{probe} needs no token"
        );
    }
    let anonymous = get("/metrics", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert_eq!(
        get("/metrics", Some("not-a-token")).await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/metrics", Some(&stranger)).await.unwrap().status(),
        403
    );
    let granted = get("/metrics", Some(&scraper)).await.unwrap();
    assert_eq!(granted.status(), 200);
    assert!(granted.text().await.unwrap().contains("prophet_leader"));
    // A repeated scrape is answered from the cache as well.
    assert_eq!(get("/metrics", Some(&scraper)).await.unwrap().status(), 200);
    assert_eq!(
        get("/metrics", Some(&stranger)).await.unwrap().status(),
        403
    );
}

/// A TLS client trusting only `ca`, presenting `client` (certificate, key) if given.
fn tls_connector(ca: &Path, client: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![rustls_pki_types::CertificateDer::from_pem_file(cert).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The certificate the server at `addr` presents in a TLS handshake trusting only `ca`;
/// an error when the handshake fails (a certificate from another CA).
async fn presented_certificate(addr: &str, ca: &Path) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls_connector(ca, None).connect(name, tcp).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_stalled_handshake_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    let (old, new) = (certificates(&v1), certificates(&v2));
    let secret = dir.path().join("tls");
    std::fs::create_dir(&secret).unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    let mounted = |certs: &Certificates, version| {
        mount_secret_files(
            &secret,
            &[
                ("tls.crt", &read(&certs.server_cert)),
                ("tls.key", &read(&certs.server_key)),
            ],
            version,
        )
    };
    let files = mounted(&old, 1);
    let prophet = start_prophet(
        &rules,
        &[
            "--tls-cert-file",
            files[0].to_str().unwrap(),
            "--tls-key-file",
            files[1].to_str().unwrap(),
            "--write-token-file",
            mount_secret(&dir.path().join("token"), "token", "t\n", 1)
                .to_str()
                .unwrap(),
            "--header-read-timeout",
            "1s",
        ],
    );
    assert_eq!(
        presented_certificate(&prophet.ingest, &old.ca)
            .await
            .unwrap(),
        pem_der(&old.server_cert)
    );

    // The Secret is updated (a certificate from another CA): new connections get it.
    mounted(&new, 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rotated = tokio::time::timeout(
            Duration::from_secs(5),
            presented_certificate(&prophet.ingest, &new.ca),
        )
        .await;
        if let Ok(Ok(der)) = rotated {
            assert_eq!(der, pem_der(&new.server_cert));
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A client that opens a connection and never says hello holds it for the
    // header-read timeout, not for ever.
    use tokio::io::AsyncReadExt;
    let mut silent = tokio::net::TcpStream::connect(&prophet.ingest)
        .await
        .unwrap();
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .expect("closed within 10 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let text = metrics(&common::process::http_client(), &prophet).await;
    assert!(counter(&text, HANDSHAKE_FAILURES) >= 1.0, "{text}");
}
