//! Decoding every real Prometheus 2.42 capture in `../shared/testdata` gives exactly the
//! counts an independent decoder wrote in its MANIFEST.json, and the same series as the
//! prost-generated types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prophet::ingest::{self, Limits, Protocol};
use prophet::proto::v1::WriteRequest;
use prost::Message;

#[derive(serde::Deserialize)]
struct Expected {
    series: usize,
    samples: usize,
    metadata: usize,
    nan_samples: usize,
    content_type: String,
    content_encoding: String,
}

fn captures() -> (PathBuf, BTreeMap<String, Expected>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/remote-write/prometheus-2.42");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.json"))
        .unwrap_or_else(|e| panic!("reading {}/MANIFEST.json: {e}", dir.display()));
    (dir, serde_json::from_str(&manifest).unwrap())
}

const NOW_MS: i64 = 4_102_444_800_000; // 2100-01-01: every capture lies in the past.

#[test]
fn every_capture_decodes_to_its_manifest_counts() {
    let (dir, manifest) = captures();
    assert!(manifest.len() >= 70, "expected the full capture set");
    let mut buffer = ingest::SnappyBuffer::new();
    for (file, expected) in &manifest {
        let body = std::fs::read(dir.join(file)).unwrap();
        let protocol = ingest::negotiate(
            Some(&expected.content_type),
            Some(&expected.content_encoding),
        )
        .unwrap();
        assert_eq!(protocol, Protocol::V1);
        let decoded = buffer
            .decompress(&body, Limits::default().max_decoded_bytes)
            .unwrap();
        let mut nan_samples = 0;
        let mut series_seen = 0;
        let stats = ingest::decode(protocol, decoded, &Limits::default(), NOW_MS, |series| {
            series_seen += 1;
            nan_samples += series.samples.iter().filter(|s| s.value.is_nan()).count();
            assert!(!series.metric_name.is_empty());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(stats.series, expected.series, "{file}: series");
        assert_eq!(series_seen, expected.series, "{file}: callbacks");
        assert_eq!(stats.samples, expected.samples, "{file}: samples");
        assert_eq!(stats.metadata, expected.metadata, "{file}: metadata");
        assert_eq!(nan_samples, expected.nan_samples, "{file}: NaN samples");
    }
}

#[test]
fn zero_copy_walk_agrees_with_prost_on_every_label_and_sample() {
    let (dir, manifest) = captures();
    let mut buffer = ingest::SnappyBuffer::new();
    for file in manifest.keys() {
        let body = std::fs::read(dir.join(file)).unwrap();
        let decoded = buffer.decompress(&body, 32 << 20).unwrap();
        let reference = WriteRequest::decode(decoded).unwrap();
        let mut index = 0;
        ingest::decode(
            Protocol::V1,
            decoded,
            &Limits::default(),
            NOW_MS,
            |series| {
                let want = &reference.timeseries[index];
                index += 1;
                let labels: Vec<(&[u8], &[u8])> =
                    series.labels.iter().map(|l| (l.name, l.value)).collect();
                let want_labels: Vec<(&[u8], &[u8])> = want
                    .labels
                    .iter()
                    .map(|l| (l.name.as_bytes(), l.value.as_bytes()))
                    .collect();
                assert_eq!(labels, want_labels, "{file}: series {index}");
                assert_eq!(series.samples.len(), want.samples.len());
                for (got, want) in series.samples.iter().zip(&want.samples) {
                    assert_eq!(got.timestamp_ms, want.timestamp);
                    assert_eq!(got.value.to_bits(), want.value.to_bits());
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(index, reference.timeseries.len(), "{file}");
    }
}
