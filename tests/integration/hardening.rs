//! No input takes Prophet down, no stop loses state: the real binary, given a rule
//! nested deep enough to overflow a stack, connections that stall or idle, more
//! connections than it serves at once, and a SIGTERM while a request head is half sent.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::process::{Running, free_port};
use common::*;

/// The real binary on a loopback port.
struct Prophet {
    process: Running,
    port: u16,
}

impl Prophet {
    /// Starts `prophet run` on `rules` with `args` and waits until it answers /readyz.
    fn start(rules: &Path, args: &[&str]) -> Prophet {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_prophet"))
            .args(["run", "--rules"])
            .arg(rules)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prophet starts");
        let mut prophet = Prophet {
            process: Running(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prophet
            .try_get("/readyz")
            .is_none_or(|(status, _)| status != 200)
        {
            assert!(
                prophet.process_is_running(),
                "prophet exited before it was ready"
            );
            assert!(Instant::now() < deadline, "prophet did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        prophet
    }

    fn process_is_running(&mut self) -> bool {
        matches!(self.process.0.try_wait(), Ok(None))
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        // A guard against hanging forever, not a timed assertion: every read below
        // expects an answer or the server closing the connection long before this.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        stream
    }

    /// One request on a fresh connection; the status and body, or `None` if the
    /// connection failed or closed without an answer.
    fn try_request(&self, request: &[u8]) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        stream.write_all(request).ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        self.try_request(
            format!("GET {path} HTTP/1.1\r\nHost: prophet\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.try_get(path).expect("an answer");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    fn write(&self, body: &[u8]) -> u16 {
        let mut request = format!(
            "POST /api/v1/write HTTP/1.1\r\nHost: prophet\r\nContent-Type: {V1}\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.try_request(&request).expect("an answer").0
    }

    /// Sends SIGTERM (by pid, as Kubernetes stops a pod) and waits for the exit.
    fn terminate(mut self) -> ExitStatus {
        let pid = self.process.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        // The bound only keeps a broken build from hanging the test run; the process
        // is expected to exit within its shutdown grace.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "prophet did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open descriptors of the process (sockets included).
    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.0.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

/// Reads until the server closes the connection; true if it did (rather than the
/// 30 s guard running out).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn rules_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), yaml).expect("rules written");
    dir
}

const HALF_A_HEAD: &[u8] =
    b"POST /api/v1/write HTTP/1.1\r\nHost: prophet\r\nContent-Type: application/x-pro";

#[test]
fn a_rule_nested_too_deep_is_invalid_and_the_others_keep_working() {
    let deep = [
        ("deep-chain", vec!["m"; 3000].join(" + ")),
        (
            "deep-abs",
            format!("{}m{}", "abs(".repeat(3000), ")".repeat(3000)),
        ),
        (
            "deep-sum",
            format!("{}m{}", "sum(".repeat(5000), ")".repeat(5000)),
        ),
        ("deep-minus", format!("{}m", "-".repeat(20_000))),
    ];
    let mut yaml: String = deep
        .iter()
        .map(|(name, metric)| threshold_rule(name, metric, "> 1", ""))
        .collect();
    yaml.push_str(&threshold_rule("good", "m", "> 1", ""));
    let rules = rules_dir(&yaml);
    let mut prophet = Prophet::start(rules.path(), &[]);

    let listed = prophet.get_json("/api/v1/rules");
    for (name, _) in &deep {
        let rule = rule_named(&listed, name);
        assert_eq!(rule["state"], "invalid", "{rule}");
        let reason = rule["message"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("spec.metric is too large to evaluate safely: it is nested")
                && reason.ends_with("over the limit of 128"),
            "{name}: {reason}"
        );
    }
    assert_eq!(rule_named(&listed, "good")["state"], "active");

    // Samples that every one of the deep rules would have matched.
    let t = now_ms();
    let body = v1_body(vec![series(
        &[("__name__", "m"), ("namespace", "default"), ("pod", "p1")],
        &[(t - 30_000, 5.0), (t, 5.0)],
    )]);
    assert_eq!(prophet.write(&body), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    let decisions = loop {
        let decisions = prophet.get_json("/api/v1/decisions")["decisions"].clone();
        if decisions.as_array().is_some_and(|d| !d.is_empty()) {
            break decisions;
        }
        assert!(Instant::now() < deadline, "the good rule never tripped");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(decisions[0]["rule"]["name"], "good");
    assert_eq!(decisions[0]["verdict"], "tripped");
    assert_eq!(prophet.try_get("/healthz").map(|(s, _)| s), Some(200));
    assert!(prophet.process_is_running());
}

#[test]
fn sigterm_with_a_half_sent_request_head_exits_and_writes_the_state() {
    let rules = rules_dir(&threshold_rule("mem", "m", "> 1", ""));
    let state = tempfile::tempdir().expect("state dir");
    // A header timeout far longer than the grace: the grace is what must end it.
    let prophet = Prophet::start(
        rules.path(),
        &[
            "--state-dir",
            state.path().to_str().expect("UTF-8 path"),
            "--header-read-timeout",
            "10m",
            "--idle-timeout",
            "10m",
            "--shutdown-grace",
            "1s",
        ],
    );
    let t = now_ms();
    let body = v1_body(vec![series(
        &[("__name__", "m"), ("namespace", "default"), ("pod", "p1")],
        &[(t, 5.0)],
    )]);
    assert_eq!(prophet.write(&body), 204);

    let mut stalled = prophet.connect();
    stalled.write_all(HALF_A_HEAD).expect("half a head sent");
    let _silent = prophet.connect();
    // Connections are accepted in order: once a later one is answered, both are held
    // by the server.
    assert_eq!(prophet.try_get("/healthz").map(|(s, _)| s), Some(200));
    let state_file = state.path().join("evaluator.state");
    assert!(!state_file.exists(), "no save is due before shutdown");

    let status = prophet.terminate();
    assert!(status.success(), "prophet exited with {status}");
    let saved = std::fs::metadata(&state_file).expect("the final state was written");
    assert!(saved.len() > 0);
    assert!(closed_by_server(&mut stalled));
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let rules = rules_dir(&threshold_rule("mem", "m", "> 1", ""));
    let prophet = Prophet::start(rules.path(), &["--idle-timeout", "1s"]);

    let mut silent = prophet.connect();
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stays open"
    );

    // A keep-alive connection, idle after its request was answered.
    let mut kept = prophet.connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: prophet\r\n\r\n")
        .expect("request sent");
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(
        closed_by_server(&mut kept),
        "an idle keep-alive connection stays open"
    );
}

#[test]
fn a_stalled_request_head_is_dropped_after_the_header_read_timeout() {
    let rules = rules_dir(&threshold_rule("mem", "m", "> 1", ""));
    let prophet = Prophet::start(
        rules.path(),
        &["--header-read-timeout", "1s", "--idle-timeout", "10m"],
    );
    let mut stalled = prophet.connect();
    stalled.write_all(HALF_A_HEAD).expect("half a head sent");
    assert!(
        closed_by_server(&mut stalled),
        "a half-sent head holds its connection"
    );
}

#[test]
fn healthz_answers_while_many_idle_and_stalled_connections_are_open() {
    let rules = rules_dir(&threshold_rule("mem", "m", "> 1", ""));
    let cap = 64;
    let prophet = Prophet::start(rules.path(), &["--max-connections", &cap.to_string()]);
    let baseline = prophet.open_descriptors();

    // Five times the cap: half silent, half with a request head half sent.
    let mut held = Vec::new();
    for i in 0..5 * cap {
        let mut stream = prophet.connect();
        if i % 2 == 0 {
            stream.write_all(HALF_A_HEAD).expect("half a head sent");
        }
        held.push(stream);
    }
    for _ in 0..3 {
        assert_eq!(
            prophet.try_get("/healthz").map(|(s, _)| s),
            Some(200),
            "/healthz refused with {} connections held",
            held.len()
        );
    }
    // The oldest idle connections made room: the server holds about the cap, not the
    // five times as many the client opened. (A few evicted sockets may not be closed
    // yet when this counts: their tasks close them as soon as they run.)
    let open = prophet.open_descriptors();
    assert!(
        open <= baseline + cap + 8,
        "{open} descriptors open (baseline {baseline}, cap {cap})"
    );
    assert!(closed_by_server(&mut held[0]), "the oldest was not closed");
}

#[test]
fn past_the_cap_with_every_connection_busy_a_new_one_is_answered_503() {
    let rules = rules_dir(&threshold_rule("mem", "m", "> 1", ""));
    let cap = 4;
    let prophet = Prophet::start(rules.path(), &["--max-connections", &cap.to_string()]);
    // Requests in flight: heads complete, bodies promised and not sent. The server's
    // `100 Continue` says the handler is waiting for the body: the request is in flight.
    let mut busy = Vec::new();
    for _ in 0..cap {
        let mut stream = prophet.connect();
        stream
            .write_all(
                format!(
                    "POST /api/v1/write HTTP/1.1\r\nHost: prophet\r\nContent-Type: {V1}\r\nContent-Encoding: snappy\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("head sent");
        let mut answer = [0u8; 25];
        stream.read_exact(&mut answer).expect("100 Continue");
        assert_eq!(&answer, b"HTTP/1.1 100 Continue\r\n\r\n");
        busy.push(stream);
    }
    let answer = prophet.try_get("/healthz");
    let (status, _) = answer.expect("an answer");
    assert_eq!(status, 503);
    // Finishing one request frees a place.
    drop(busy.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while prophet.try_get("/healthz").map(|(s, _)| s) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no place freed after a connection closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
