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
