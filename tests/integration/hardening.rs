//! No input takes Prophet down: the real binary, given rules nested deep enough to
//! overflow a stack beside a good rule.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
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
}

fn rules_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), yaml).expect("rules written");
    dir
}

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
