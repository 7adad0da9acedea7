//! A 4 KiB snappy "bomb" whose header declares far more than the decoded-size limit must
//! be refused before anything of that size is allocated. A counting global allocator
//! (this test binary's own) records the largest single allocation and the peak of live
//! bytes while bombs are handled.

mod common;

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use common::counting::{Counting, LARGEST, LIVE, PEAK};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A snappy block header (varint) declaring `declared` decoded bytes, then `filler` bytes.
fn bomb(declared: u64, filler: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut n = declared;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    // A long run of copy elements is what a real bomb would hold; its content does not
    // matter here because the header alone must be enough to refuse it.
    body.resize(filler, 0xfe);
    body
}

#[tokio::test]
async fn a_snappy_bomb_is_refused_without_allocating_its_declared_size() {
    let app = common::start(&common::threshold_rule(
        "mem",
        "container_memory_working_set_bytes",
        "> 1Gi",
        "",
    ));
    // Warm up the server's lazily created state with one valid request.
    let t = common::now_ms();
    let ok = common::v1_body(vec![common::series(&[("__name__", "up")], &[(t, 1.0)])]);
    assert_eq!(
        app.write(Some(common::V1), ok).await.status,
        StatusCode::NO_CONTENT
    );

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    for declared in [33 << 20, 1 << 30, u32::MAX as u64, 1 << 40] {
        let answer = app.write(Some(common::V1), bomb(declared, 4096)).await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared {declared}: {}",
            answer.body
        );
    }
    let peak_growth = PEAK.load(Ordering::Relaxed) - baseline;
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        peak_growth < 1 << 20,
        "handling bombs raised live memory by {peak_growth} bytes"
    );
    assert!(largest < 1 << 20, "largest allocation was {largest} bytes");
}
