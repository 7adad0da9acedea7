//! Property tests of the two parsers input reaches first: the remote-write path (snappy,
//! then the protobuf walk and validation, for both protocols) and the rule loader and
//! compiler. Whatever the bytes, they answer with a value or an error and never panic.
//! Bounded (proptest's default 256 cases per property, plus mutations of real inputs), so
//! they run in every `cargo test`.

use crate::common;

use std::path::Path;
use std::time::Instant;

use prophet::ingest::{self, Limits, Protocol, SnappyBuffer};
use prophet::route::Batch;
use prophet::rules::compile::{CompileOptions, compile};
use prophet::rules::load::parse_documents;
use proptest::prelude::*;

/// Runs a body through what the write handler does with it.
fn ingest_body(evaluator: &prophet::eval::Evaluator, protocol: Protocol, body: &[u8]) {
    let router = evaluator.router(1);
    let mut buffer = SnappyBuffer::new();
    let limits = Limits {
        max_decoded_bytes: 1 << 20,
        ..Limits::default()
    };
    let Ok(decoded) = buffer.decompress(body, limits.max_decoded_bytes) else {
        return;
    };
    let now = common::now_ms();
    let mut batch = Batch::new(Instant::now(), now, limits.max_kept_label_bytes);
    let _ = ingest::decode(protocol, decoded, &limits, now, |series| {
        router.route(series, &mut batch)
    });
}

const RULE: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: m, namespace: default}
spec:
  metric: '{__name__=~".+"}'
  threshold: "> 1"
  remediation: {type: alert}
"#;

/// A valid request to mutate.
fn real_request() -> Vec<u8> {
    common::v1_body(vec![common::series(
        &[("__name__", "up"), ("job", "a"), ("pod", "p")],
        &[(common::now_ms(), 1.0)],
    )])
}

proptest! {
    #[test]
    fn any_bytes_through_both_protocols_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let evaluator = common::evaluator(RULE);
        for protocol in [Protocol::V1, Protocol::V2] {
            ingest_body(&evaluator, protocol, &body);
            // The same bytes as a valid snappy block: the protobuf walk sees them.
            ingest_body(&evaluator, protocol, &common::snappy(&body));
        }
    }

    #[test]
    fn mutated_real_requests_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let evaluator = common::evaluator(RULE);
        let mut raw = snap::raw::Decoder::new().decompress_vec(&real_request()).unwrap();
        for (at, byte) in flips {
            let len = raw.len();
            raw[at % len] = byte;
        }
        for protocol in [Protocol::V1, Protocol::V2] {
            ingest_body(&evaluator, protocol, &common::snappy(&raw));
        }
    }

    #[test]
    fn any_rule_text_loads_or_is_reported_never_panics(text in "[-a-zA-Z0-9:{}\\[\\]()\"'#&*!|>=<,.~ \n]{0,400}") {
        let document = format!("apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r}}\nspec:\n  metric: {text}\n  threshold: '> 1'\n  remediation: {{type: alert}}\n");
        for yaml in [text.as_str(), document.as_str()] {
            let (rules, _invalid) = parse_documents(yaml, Path::new("fuzz.yaml"));
            for rule in &rules {
                let _ = compile(rule, CompileOptions::default());
            }
        }
    }
}
