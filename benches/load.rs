//! Load run: end-to-end remote-write ingest over HTTP, Prophet beside its peers, on the
//! same request in the same run.
//!
//! Each receiver (the real `prophet` binary with 10% and with all series matching rules,
//! Debian's `victoria-metrics`, and Debian's `prometheus` with
//! `--web.enable-remote-write-receiver`) is started on a free loopback port and loaded by
//! `wrk` with one synthetic 2000-series Kubernetes-shaped request (`prophet::synth`),
//! repeated: 2 s of warm-up, then `LOAD_SECONDS` (default 10) measured with
//! `LOAD_CONNECTIONS` (default 8) connections. Samples/s = 2xx requests/s × 2000. Ratios
//! are against victoria-metrics in the same run.
//!
//! Run: `cargo bench --bench load` (needs `apt-get install wrk victoria-metrics prometheus`;
//! without them it says so and measures nothing).

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    use std::io::Write;
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
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("a temp dir");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64;
    let v1 = dir.path().join("v1.bin");
    let v2 = dir.path().join("v2.bin");
    std::fs::write(&v1, synth::compress(&synth::request_v1(SERIES, now_ms))).expect("body");
    std::fs::write(&v2, synth::compress(&synth::request_v2(SERIES, now_ms))).expect("body");
    // Two of the twenty metric families: 10% of the series.
    let ten_percent = rules_file(dir.path(), "ten-percent", [1, 16].into_iter());
    let all = rules_file(dir.path(), "all", 0..synth::METRICS.len());

    let mut rows: Vec<(String, Measured, u64)> = Vec::new();
    for (label, rules) in [("10%", &ten_percent), ("all", &all)] {
        let port = free_port();
        let args = vec![
            "run".to_owned(),
            "--rules".to_owned(),
            rules.display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        let server = start(
            "prophet",
            env!("CARGO_BIN_EXE_prophet"),
            &args,
            &format!("http://127.0.0.1:{port}/readyz"),
        );
        let url = format!("http://127.0.0.1:{port}/api/v1/write");
        for (version, body, content_type) in [("v1", &v1, V1), ("v2", &v2, V2)] {
            let measured = wrk(dir.path(), &url, body, content_type, seconds);
            rows.push((
                format!("prophet {version} {label}"),
                measured,
                server.rss_kib(),
            ));
        }
    }
    {
        let port = free_port();
        let args = vec![
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", dir.path().join("vm").display()),
            "-retentionPeriod=100y".to_owned(),
        ];
        let server = start(
            "victoria-metrics",
            "victoria-metrics",
            &args,
            &format!("http://127.0.0.1:{port}/health"),
        );
        let url = format!("http://127.0.0.1:{port}/api/v1/write");
        let measured = wrk(dir.path(), &url, &v1, V1, seconds);
        rows.push(("victoria-metrics v1".into(), measured, server.rss_kib()));
    }
    {
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global: {scrape_interval: 15s}\n").expect("config");
        let args = vec![
            "--web.enable-remote-write-receiver".to_owned(),
            format!("--storage.tsdb.path={}", dir.path().join("prom").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--config.file={}", config.display()),
        ];
        let server = start(
            "prometheus",
            "prometheus",
            &args,
            &format!("http://127.0.0.1:{port}/-/ready"),
        );
        let url = format!("http://127.0.0.1:{port}/api/v1/write");
        let measured = wrk(dir.path(), &url, &v1, V1, seconds);
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
    println!("command: cargo bench --bench load");
}
