//! The fleet's traffic: the Prometheus 2.42 captures in `../shared/testdata` (a
//! Prometheus, a node-exporter and a VictoriaMetrics scraped every 3 s: 679 metric
//! families) sent by [`HOSTS`] such hosts, every capture once per host with its
//! `instance` label naming the host, one pass of the captures after another. Shared by
//! the `fleet` bench (in process) and the `load` run (over HTTP).

use std::path::PathBuf;

use prophet::proto::v1::WriteRequest;
use prophet::synth;
use prost::Message;

/// Hosts sending the captured traffic.
pub const HOSTS: usize = 20;

/// The captures in the order Prometheus sent them.
fn captures() -> Vec<WriteRequest> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/remote-write/prometheus-2.42");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the shared captures")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let body = std::fs::read(path).unwrap();
            let decoded = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            WriteRequest::decode(decoded.as_slice()).unwrap()
        })
        .collect()
}

/// Every capture as each host sends it, `shift_ms` later than captured, compressed:
/// capture by capture, host by host within each.
fn fleet_round(captures: &[WriteRequest], shift_ms: i64) -> Vec<Vec<u8>> {
    let mut bodies = Vec::with_capacity(captures.len() * HOSTS);
    for capture in captures {
        for host in 0..HOSTS {
            let mut request = capture.clone();
            for series in &mut request.timeseries {
                for label in &mut series.labels {
                    if label.name == "instance" {
                        // 127.0.0.1:19101 → host-07.fleet.internal:19101
                        let port = label.value.rsplit(':').next().unwrap_or_default();
                        label.value = format!("host-{host:02}.fleet.internal:{port}");
                    }
                }
                for sample in &mut series.samples {
                    sample.timestamp += shift_ms;
                }
            }
            bodies.push(synth::compress(&request.encode_to_vec()));
        }
    }
    bodies
}

/// The captures as one pass of the fleet's traffic after another, each starting one
/// scrape interval after the last sample of the one before.
pub struct Traffic {
    captures: Vec<WriteRequest>,
    /// How far the first pass is moved from the captured times.
    offset_ms: i64,
    span_ms: i64,
    next: usize,
}

impl Traffic {
    /// Passes whose first starts at `start_ms`, or at the captured time.
    pub fn starting_at(start_ms: Option<i64>) -> Self {
        let captures = captures();
        let times = captures
            .iter()
            .flat_map(|r| &r.timeseries)
            .flat_map(|s| &s.samples)
            .map(|s| s.timestamp);
        let (first, last) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
        Self {
            captures,
            offset_ms: start_ms.map_or(0, |start| start - first),
            span_ms: last - first + 3_000,
            next: 0,
        }
    }

    /// Event time one pass covers.
    pub fn span_ms(&self) -> i64 {
        self.span_ms
    }

    /// The requests of the next pass, in the order [`fleet_round`] gives.
    pub fn next_pass(&mut self) -> Vec<Vec<u8>> {
        let pass = fleet_round(
            &self.captures,
            self.offset_ms + self.span_ms * self.next as i64,
        );
        self.next += 1;
        pass
    }

    /// Samples in each request of a pass, in the same order.
    pub fn samples_per_request(&self) -> Vec<usize> {
        let per_capture = self
            .captures
            .iter()
            .map(|r| r.timeseries.iter().map(|s| s.samples.len()).sum::<usize>());
        per_capture
            .flat_map(|n| std::iter::repeat_n(n, HOSTS))
            .collect()
    }
}
