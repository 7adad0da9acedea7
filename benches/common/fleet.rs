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

/// `capture` as `host` sends it, `shift_ms` later than captured, compressed. An unread
/// host's metric names carry a prefix that no rule reads.
fn as_sent(capture: &WriteRequest, host: usize, unread: bool, shift_ms: i64) -> Vec<u8> {
    let mut request = capture.clone();
    for series in &mut request.timeseries {
        for label in &mut series.labels {
            if label.name == "instance" {
                // 127.0.0.1:19101 → host-07.fleet.internal:19101
                let port = label.value.rsplit(':').next().unwrap_or_default();
                label.value = format!("host-{host:02}.fleet.internal:{port}");
            }
            if unread && label.name == "__name__" {
                label.value.insert_str(0, "unread_");
            }
        }
        for sample in &mut series.samples {
            sample.timestamp += shift_ms;
        }
    }
    synth::compress(&request.encode_to_vec())
}

/// The captures as one pass of the fleet's traffic after another, each starting one
/// scrape interval after the last sample of the one before. Beside the [`HOSTS`], more
/// hosts may send the same traffic under metric names no rule reads, as a Prometheus
/// scraping far more than the rules watch would: their requests are built once, and
/// their samples, never kept, keep their times.
pub struct Traffic {
    captures: Vec<WriteRequest>,
    /// Per capture, the requests of the unread hosts.
    unread: Vec<Vec<Vec<u8>>>,
    /// How far the first pass is moved from the captured times.
    offset_ms: i64,
    span_ms: i64,
    next: usize,
}

impl Traffic {
    /// Passes whose first starts at `start_ms`, or at the captured time, with
    /// `unread_hosts` hosts sending beside the [`HOSTS`].
    pub fn starting_at(start_ms: Option<i64>, unread_hosts: usize) -> Self {
        let captures = captures();
        let times = captures
            .iter()
            .flat_map(|r| &r.timeseries)
            .flat_map(|s| &s.samples)
            .map(|s| s.timestamp);
        let (first, last) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
        let offset_ms = start_ms.map_or(0, |start| start - first);
        let unread = captures
            .iter()
            .map(|capture| {
                (HOSTS..HOSTS + unread_hosts)
                    .map(|host| as_sent(capture, host, true, offset_ms))
                    .collect()
            })
            .collect();
        Self {
            captures,
            unread,
            offset_ms,
            span_ms: last - first + 3_000,
            next: 0,
        }
    }

    /// Event time one pass covers.
    pub fn span_ms(&self) -> i64 {
        self.span_ms
    }

    /// The requests of the next pass: capture by capture, the [`HOSTS`] then the unread
    /// hosts within each.
    pub fn next_pass(&mut self) -> Vec<Vec<u8>> {
        let shift_ms = self.offset_ms + self.span_ms * self.next as i64;
        self.next += 1;
        let mut bodies = Vec::new();
        for (capture, unread) in self.captures.iter().zip(&self.unread) {
            bodies.extend((0..HOSTS).map(|host| as_sent(capture, host, false, shift_ms)));
            bodies.extend(unread.iter().cloned());
        }
        bodies
    }

    /// Samples in each request of a pass, in the same order.
    pub fn samples_per_request(&self) -> Vec<usize> {
        self.captures
            .iter()
            .zip(&self.unread)
            .flat_map(|(r, unread)| {
                let n = r.timeseries.iter().map(|s| s.samples.len()).sum::<usize>();
                std::iter::repeat_n(n, HOSTS + unread.len())
            })
            .collect()
    }
}
