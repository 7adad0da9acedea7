//! Load run: end-to-end remote-write ingest over HTTP, Prophet beside its peers, in the
//! same run. Each receiver (the real `prophet` binary, Debian's `victoria-metrics`, and
//! Debian's `prometheus` with `--web.enable-remote-write-receiver`) is started on a free
//! loopback port.
//!
//! - **Synthetic request** (the handlers' throughput): `wrk` sends one synthetic
//!   2000-series Kubernetes-shaped request (`prophet::synth`) again and again, to Prophet
//!   with rules matching 10% and all of its series: 2 s of warm-up, then `LOAD_SECONDS`
//!   (default 10) measured over `LOAD_CONNECTIONS` (default 8) connections. After the
//!   first request its samples are duplicates, which the windows refuse at once.
//!   Samples/s = 2xx requests/s × 2000; ratios against victoria-metrics.
//! - **Fleet traffic** (ingest with rules, evaluation included): the real captures sent by
//!   20 hosts as in the `fleet` bench, time moving on pass after pass, each host's
//!   requests in order on one of 4 keep-alive connections (as a remote-write shard keeps
//!   its series in order), each waiting for its answer; 429 and 503 are retried. Prophet's
//!   `204` comes once the evaluator has applied the request, so this is ingest with
//!   evaluation. 3 passes of warm-up, then `LOAD_FLEET_PASSES` (default 10) measured.
//!   Prophet with no rules and with the 100 rules of `benches/fleet-rules.yaml`, beside
//!   victoria-metrics and prometheus.
//!
//! Run: `cargo bench --bench load` (needs `apt-get install wrk victoria-metrics prometheus`;
//! without them it says so and measures nothing).

#[path = "common/fleet.rs"]
mod fleet_traffic;

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::now_ms;

use fleet_traffic::Traffic;
use prophet::synth;

const SERIES: usize = 2000;
const V1: &str = "application/x-protobuf";
const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// Kills and reaps the server when dropped, whatever happened.
struct Server {
    name: &'static str,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn start(name: &'static str, program: &str, args: &[String], ready_url: &str) -> Server {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut server = Server { name, child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_get_ok(ready_url) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.child.kill();
    let mut stderr = String::new();
    if let Some(mut pipe) = server.child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let tail: String = stderr.lines().rev().take(10).collect::<Vec<_>>().join("\n");
    panic!(
        "{} not ready at {ready_url} within 30 s; stderr ends:\n{tail}",
        server.name
    );
}

/// A bare HTTP/1.0 GET: is the answer a 200?
fn http_get_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

struct Measured {
    samples_per_second: f64,
    non_2xx: u64,
    latency: String,
}

fn wrk(dir: &Path, url: &str, body: &Path, content_type: &str, seconds: u64) -> Measured {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            r#"local f = io.open("{}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
wrk.headers["Content-Encoding"] = "snappy"
wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"
done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
"#,
            body.display()
        ),
    )
    .expect("writing the wrk script");
    let connections = std::env::var("LOAD_CONNECTIONS").unwrap_or_else(|_| "8".into());
    let run = |secs: u64| {
        let output = Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{secs}s"),
                "-s",
            ])
            .arg(&script)
            .arg(url)
            .output()
            .expect("running wrk");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(2);
    let out = run(seconds);
    let field = |prefix: &str, index: usize| {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(index))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("wrk printed no {prefix:?}:\n{out}"))
    };
    let total: f64 = field("Requests/sec:", 1).parse().expect("a rate");
    let non_2xx: u64 = field("non2xx", 1).parse().expect("a count");
    let measured_requests = total * seconds as f64;
    let ok_rate = if measured_requests > 0.0 {
        total * (1.0 - non_2xx as f64 / measured_requests).max(0.0)
    } else {
        0.0
    };
    assert!(
        (non_2xx as f64) <= 0.01 * measured_requests,
        "{url}: {non_2xx} non-2xx answers out of about {measured_requests:.0}"
    );
    Measured {
        samples_per_second: ok_rate * SERIES as f64,
        non_2xx,
        latency: field("Latency", 1),
    }
}

/// Passes of the fleet's traffic sent before measuring: past the longest range of the
/// fleet's expressions (5 minutes), so their steps read full ranges.
const FLEET_WARM_PASSES: usize = 3;
/// Connections sending the fleet's traffic. Each carries the requests of its own hosts
/// in order, as a Prometheus remote-write shard carries its own series in order.
const FLEET_CONNECTIONS: usize = 4;

/// What sending the fleet's traffic to one receiver measured.
struct FleetMeasured {
    samples_per_second: f64,
    /// Answers asking to retry (429, 503: evaluation behind), each retried as Prometheus
    /// would.
    retried: u64,
    /// Other non-2xx answers: their samples were refused and are not counted.
    refused: u64,
}

/// Sends `passes` (the first [`FLEET_WARM_PASSES`] unmeasured) to `url` over
/// [`FLEET_CONNECTIONS`] keep-alive connections, each waiting for its answer before its
/// next request: samples/s is what the receiver accepted and answered while measured.
fn fleet_load(url: &str, passes: &[Vec<Vec<u8>>], samples: &[usize]) -> FleetMeasured {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let barrier = &Barrier::new(FLEET_CONNECTIONS);
    // Per sender: when measuring started and ended, samples accepted, retries, refusals.
    let results: Vec<(Instant, Instant, usize, u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..FLEET_CONNECTIONS)
            .map(|connection| {
                scope.spawn(move || {
                    let mut stream = TcpStream::connect(host).expect("connecting");
                    stream.set_nodelay(true).expect("TCP_NODELAY");
                    let mut reply = Vec::with_capacity(4096);
                    let (mut sent, mut retried, mut refused) = (0, 0, 0);
                    let mut started = Instant::now();
                    for (p, pass) in passes.iter().enumerate() {
                        if p == FLEET_WARM_PASSES {
                            barrier.wait();
                            started = Instant::now();
                            (sent, retried, refused) = (0, 0, 0);
                        }
                        let mine = pass
                            .iter()
                            .zip(samples)
                            .enumerate()
                            .filter(|(i, _)| i % fleet_traffic::HOSTS % FLEET_CONNECTIONS == connection);
                        for (_, (body, &n)) in mine {
                            loop {
                                let head = format!(
                                    "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {V1}\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n",
                                    body.len()
                                );
                                stream.write_all(head.as_bytes()).expect("sending");
                                stream.write_all(body).expect("sending");
                                match read_status(&mut stream, &mut reply) {
                                    200..=299 => {
                                        sent += n;
                                        break;
                                    }
                                    429 | 503 => {
                                        retried += 1;
                                        std::thread::sleep(Duration::from_millis(5));
                                    }
                                    status => {
                                        if refused == 0 {
                                            eprintln!(
                                                "{url}: {status}: {}",
                                                String::from_utf8_lossy(&reply)
                                            );
                                        }
                                        refused += 1;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    (started, Instant::now(), sent, retried, refused)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a sender"))
            .collect()
    });
    // From the first sender's start to the last one's end.
    let first = results.iter().map(|r| r.0).min().expect("senders");
    let last = results.iter().map(|r| r.1).max().expect("senders");
    let accepted: usize = results.iter().map(|r| r.2).sum();
    FleetMeasured {
        samples_per_second: accepted as f64 / (last - first).as_secs_f64(),
        retried: results.iter().map(|r| r.3).sum(),
        refused: results.iter().map(|r| r.4).sum(),
    }
}

/// Reads one HTTP/1.1 answer (headers and a `Content-Length` body) into `reply`; its
/// status.
fn read_status(stream: &mut TcpStream, reply: &mut Vec<u8>) -> u16 {
    reply.clear();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).expect("reading an answer");
        assert!(n > 0, "the receiver closed the connection");
        reply.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding"),
        "a chunked answer:\n{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("a Content-Length"));
    while reply.len() < end + length {
        let n = stream.read(&mut chunk).expect("reading an answer");
        assert!(n > 0, "the receiver closed the connection");
        reply.extend_from_slice(&chunk[..n]);
    }
    head.get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line")
}

fn missing_tools() -> Vec<&'static str> {
    ["wrk", "victoria-metrics", "prometheus"]
        .into_iter()
        .filter(|tool| {
            !std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).exists()))
        })
        .collect()
}

fn rules_file(dir: &Path, name: &str, metrics: impl Iterator<Item = usize>) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("rules folder");
    let yaml: String = metrics
        .map(|m| {
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r{m}, namespace: shop}}\nspec:\n  metric: {}\n  threshold: \"> 1e12\"\n  remediation: {{type: alert}}\n---\n",
                synth::METRICS[m]
            )
        })
        .collect();
    std::fs::write(folder.join("rules.yaml"), yaml).expect("rules file");
    folder
}

fn main() {
    // Criterion-style arguments (`--bench`) are accepted and ignored.
    let missing = missing_tools();
    if !missing.is_empty() {
        println!(
            "load run skipped: {} not installed (apt-get install wrk victoria-metrics prometheus)",
            missing.join(", ")
        );
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    synthetic_run(dir.path());
    fleet_run(dir.path());
    println!("command: cargo bench --bench load");
}

/// The real binary with the rules in `rules`; its write URL.
fn start_prophet(rules: &Path, extra: &[&str]) -> (Server, String) {
    let port = free_port();
    let mut args = vec![
        "run".to_owned(),
        "--rules".to_owned(),
        rules.display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let server = start(
        "prophet",
        env!("CARGO_BIN_EXE_prophet"),
        &args,
        &format!("http://127.0.0.1:{port}/readyz"),
    );
    (server, format!("http://127.0.0.1:{port}/api/v1/write"))
}

fn start_victoria_metrics(dir: &Path) -> (Server, String) {
    let port = free_port();
    let args = vec![
        format!("-httpListenAddr=127.0.0.1:{port}"),
        format!("-storageDataPath={}", dir.display()),
        "-retentionPeriod=100y".to_owned(),
    ];
    let server = start(
        "victoria-metrics",
        "victoria-metrics",
        &args,
        &format!("http://127.0.0.1:{port}/health"),
    );
    (server, format!("http://127.0.0.1:{port}/api/v1/write"))
}

fn start_prometheus(dir: &Path) -> (Server, String) {
    let port = free_port();
    std::fs::create_dir_all(dir).expect("a data folder");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global: {scrape_interval: 15s}\n").expect("config");
    let args = vec![
        "--web.enable-remote-write-receiver".to_owned(),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        format!("--config.file={}", config.display()),
    ];
    let server = start(
        "prometheus",
        "prometheus",
        &args,
        &format!("http://127.0.0.1:{port}/-/ready"),
    );
    (server, format!("http://127.0.0.1:{port}/api/v1/write"))
}

/// One synthetic request, repeated by `wrk`: the handlers' throughput (after the first
/// request, its samples are duplicates, which the windows refuse at once).
fn synthetic_run(dir: &Path) {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let now_ms = now_ms();
    let v1 = dir.join("v1.bin");
    let v2 = dir.join("v2.bin");
    std::fs::write(&v1, synth::compress(&synth::request_v1(SERIES, now_ms))).expect("body");
    std::fs::write(&v2, synth::compress(&synth::request_v2(SERIES, now_ms))).expect("body");
    // Two of the twenty metric families: 10% of the series.
    let ten_percent = rules_file(dir, "ten-percent", [1, 16].into_iter());
    let all = rules_file(dir, "all", 0..synth::METRICS.len());

    let mut rows: Vec<(String, Measured, u64)> = Vec::new();
    for (label, rules) in [("10%", &ten_percent), ("all", &all)] {
        let (server, url) = start_prophet(rules, &[]);
        for (version, body, content_type) in [("v1", &v1, V1), ("v2", &v2, V2)] {
            let measured = wrk(dir, &url, body, content_type, seconds);
            rows.push((
                format!("prophet {version} {label}"),
                measured,
                server.rss_kib(),
            ));
        }
    }
    {
        let (server, url) = start_victoria_metrics(&dir.join("vm"));
        let measured = wrk(dir, &url, &v1, V1, seconds);
        rows.push(("victoria-metrics v1".into(), measured, server.rss_kib()));
    }
    {
        let (server, url) = start_prometheus(&dir.join("prom"));
        let measured = wrk(dir, &url, &v1, V1, seconds);
        rows.push(("prometheus v1".into(), measured, server.rss_kib()));
    }

    let baseline = rows
        .iter()
        .find(|(name, ..)| name.starts_with("victoria-metrics"))
        .map_or(f64::NAN, |(_, m, _)| m.samples_per_second);
    println!("\n{SERIES}-series request, {seconds} s per run, ratios against victoria-metrics:");
    for (name, m, rss) in &rows {
        println!(
            "{name:<22} {:>12.0} samples/s  {:>6.2}x  latency {:>8}  non-2xx {:>3}  RSS {:>7} KiB",
            m.samples_per_second,
            m.samples_per_second / baseline,
            m.latency,
            m.non_2xx,
            rss
        );
    }
}

/// The fleet's traffic (real captures, 20 hosts, time moving on pass after pass) to
/// Prophet with no rules and with the 100 rules of `benches/fleet-rules.yaml`, beside
/// victoria-metrics and prometheus: what ingest with rules costs over HTTP, where
/// evaluation runs on its own thread and a `204` means the samples were evaluated.
fn fleet_run(dir: &Path) {
    let measured_passes: usize = std::env::var("LOAD_FLEET_PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let passes_total = FLEET_WARM_PASSES + measured_passes;
    // The last pass ends about now: receivers that keep a retention see recent samples.
    let span_ms = Traffic::starting_at(None, 0).span_ms();
    let mut traffic = Traffic::starting_at(Some(now_ms() - span_ms * passes_total as i64), 0);
    let samples = traffic.samples_per_request();
    let passes: Vec<Vec<Vec<u8>>> = (0..passes_total).map(|_| traffic.next_pass()).collect();
    let no_rules = dir.join("fleet-none");
    std::fs::create_dir_all(&no_rules).expect("rules folder");
    let fleet_rules = dir.join("fleet-rules");
    std::fs::create_dir_all(&fleet_rules).expect("rules folder");
    std::fs::write(
        fleet_rules.join("fleet-rules.yaml"),
        include_str!("fleet-rules.yaml"),
    )
    .expect("rules file");

    let mut rows: Vec<(&str, FleetMeasured, u64)> = Vec::new();
    // As in the `fleet` bench: no rule of the 100 is cut short by its series limit.
    let limit = ["--series-limit", "100000"];
    for (name, rules) in [
        ("prophet, no rules", &no_rules),
        ("prophet, 100 rules", &fleet_rules),
    ] {
        let (server, url) = start_prophet(rules, &limit);
        let measured = fleet_load(&url, &passes, &samples);
        rows.push((name, measured, server.rss_kib()));
    }
    {
        let (server, url) = start_victoria_metrics(&dir.join("fleet-vm"));
        let measured = fleet_load(&url, &passes, &samples);
        rows.push(("victoria-metrics", measured, server.rss_kib()));
    }
    {
        let (server, url) = start_prometheus(&dir.join("fleet-prom"));
        let measured = fleet_load(&url, &passes, &samples);
        rows.push(("prometheus", measured, server.rss_kib()));
    }

    let rate = |name: &str| {
        rows.iter()
            .find(|(n, ..)| *n == name)
            .map_or(f64::NAN, |(_, m, _)| m.samples_per_second)
    };
    let (none, vm) = (rate("prophet, no rules"), rate("victoria-metrics"));
    println!(
        "\nfleet traffic ({} hosts, {} samples a pass), {measured_passes} passes measured after {FLEET_WARM_PASSES}, {FLEET_CONNECTIONS} connections:",
        fleet_traffic::HOSTS,
        samples.iter().sum::<usize>()
    );
    println!(
        "{:<20} {:>12} {:>12} {:>10} {:>8} {:>8} {:>11}",
        "receiver", "samples/s", "vs no rules", "vs VM", "retried", "refused", "RSS KiB"
    );
    for (name, m, rss) in &rows {
        println!(
            "{name:<20} {:>12.0} {:>12.2} {:>10.2} {:>8} {:>8} {:>11}",
            m.samples_per_second,
            m.samples_per_second / none,
            m.samples_per_second / vm,
            m.retried,
            m.refused,
            rss
        );
    }
}
