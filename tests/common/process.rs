//! Helpers for tests that run real processes (the `prophet` binary, Debian's Prometheus).

use std::net::TcpListener;
use std::process::Child;

/// Kills and reaps the child process when dropped, whatever happened in the test.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `rules` folder in `dir` holding `yaml` as `file`: what `prophet run --rules` reads.
pub fn rules_folder(dir: &std::path::Path, file: &str, yaml: &str) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join(file), yaml).unwrap();
    rules
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Percent-encodes everything but unreserved characters, for a URL query value (a PromQL
/// expression sent to Prometheus's query API).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus, the remote-write sender and PromQL oracle of the end-to-end
/// tests; `None` (the test says it skipped, or fails under `PROPHET_TEST_REQUIRE=1`)
/// where it is not installed.
pub fn prometheus() -> Option<&'static std::path::Path> {
    let binary = std::path::Path::new("/usr/bin/prometheus");
    if binary.exists() {
        Some(binary)
    } else {
        super::k8s::skip(
            "needs Debian's prometheus at /usr/bin/prometheus (apt-get install prometheus)",
        );
        None
    }
}

/// Starts the `prophet` binary with `args` and `--listen 127.0.0.1:0` unless `args`
/// name one (plus `env`),
/// echoing its log; returns it, the address it reports listening on, and its log lines
/// from then on.
pub fn start_prophet(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Running, String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_prophet"));
    command
        .args(args)
        .args(if args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("prophet starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("prophet: {line}");
            let _ = tx.send(line);
        }
    });
    let running = Running(child);
    let line = wait_line(&rx, "listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address after \"listening on\"")
        .to_owned();
    (running, addr, rx)
}

/// The next log line containing `text`, waiting at most a minute.
pub fn wait_line(lines: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {text:?}"));
        if line.contains(text) {
            return line;
        }
    }
}

/// Starts Debian's Prometheus with `config` (its `prometheus.yml`) and its data in `dir`,
/// listening on `port`; its output is discarded.
pub fn start_prometheus(dir: &std::path::Path, port: u16, config: &str) -> Running {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let child = std::process::Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Running(child)
}

/// A reqwest client for talking to the processes. reqwest is built without a bundled
/// crypto provider (the binary installs ring); a test run alone must install it too.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
