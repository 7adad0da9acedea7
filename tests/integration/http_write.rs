//! `POST /api/v1/write` as a remote-write sender sees it: every status code of the spec,
//! the 2.0 response headers, and that refused requests leave no trace.

use crate::common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use prophet::ingest::STALE_NAN_BITS;
use prophet::proto::v1;
use prost::Message;

const MEM: &str = "container_memory_working_set_bytes";

fn app() -> App {
    start(&threshold_rule("mem", MEM, "> 1Gi", ""))
}

fn pod_series(pod: &str, samples: &[(i64, f64)]) -> v1::TimeSeries {
    series(
        &[("__name__", MEM), ("namespace", "default"), ("pod", pod)],
        samples,
    )
}

const GI: f64 = 1024.0 * 1024.0 * 1024.0;

#[tokio::test]
async fn accepts_1_0_with_any_of_its_content_types() {
    let app = app();
    let t = now_ms();
    for (i, content_type) in [
        Some("application/x-protobuf"),
        Some("application/x-protobuf;proto=prometheus.WriteRequest"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let body = v1_body(vec![pod_series("a", &[(t + i as i64, 1.0)])]);
        let answer = app.write(content_type, body).await;
        assert_eq!(
            answer.status,
            StatusCode::NO_CONTENT,
            "{content_type:?}: {}",
            answer.body
        );
        assert!(answer.body.is_empty());
        assert!(
            !answer
                .headers
                .contains_key("x-prometheus-remote-write-samples-written"),
            "1.0 answers carry no 2.0 headers"
        );
    }
    assert_eq!(app.rule("mem").await["counters"]["samples"], 3);
}

#[tokio::test]
async fn accepts_2_0_and_reports_what_was_written() {
    let app = app();
    let t = now_ms();
    let labels: &[(&str, &str)] = &[("__name__", MEM), ("namespace", "default"), ("pod", "a")];
    let other: &[(&str, &str)] = &[("__name__", "up"), ("job", "x")];
    let body = v2_body(&[(labels, &[(t, 1.0), (t + 1, 2.0)]), (other, &[(t, 1.0)])]);
    let answer = app.write(Some(V2), body).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("x-prometheus-remote-write-samples-written"), "3");
    assert_eq!(header("x-prometheus-remote-write-histograms-written"), "0");
    assert_eq!(header("x-prometheus-remote-write-exemplars-written"), "0");
    assert_eq!(app.rule("mem").await["counters"]["samples"], 2);
}

#[tokio::test]
async fn refuses_other_media_types_protos_and_encodings_with_415() {
    let app = app();
    let body = v1_body(vec![pod_series("a", &[(now_ms(), 1.0)])]);
    for content_type in [
        "application/json",
        "text/plain",
        "application/x-protobuf;proto=io.prometheus.write.v3.Request",
    ] {
        let answer = app.write(Some(content_type), body.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert!(!answer.body.trim().is_empty());
    }
    let request = Request::post("/api/v1/write")
        .header("content-type", V2)
        .header("content-encoding", "gzip")
        .body(Body::from(body))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(answer.body.contains("gzip"), "{}", answer.body);
    assert_eq!(
        answer.headers["x-prometheus-remote-write-samples-written"], "0",
        "a refused 2.0 request still reports what was written"
    );
}

#[tokio::test]
async fn refuses_other_methods_with_405() {
    let app = app();
    for method in ["GET", "PUT", "DELETE"] {
        let request = Request::builder()
            .method(method)
            .uri("/api/v1/write")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.send(request).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}

/// Each malformed body, with a word its one-line reason must contain.
fn malformed_bodies() -> Vec<(&'static str, Option<&'static str>, Vec<u8>, &'static str)> {
    let t = now_ms();
    let good = v1::WriteRequest {
        timeseries: vec![pod_series("a", &[(t, 1.0)])],
        metadata: vec![],
    }
    .encode_to_vec();
    let compressed = snappy(&good);
    let framed = {
        use std::io::Write;
        let mut w = snap::write::FrameEncoder::new(Vec::new());
        w.write_all(&good).unwrap();
        w.into_inner().unwrap()
    };
    let no_name = v1_body(vec![series(&[("job", "x")], &[(t, 1.0)])]);
    let empty_name = v1_body(vec![series(&[("__name__", "up"), ("", "x")], &[(t, 1.0)])]);
    let duplicate = v1_body(vec![series(
        &[("__name__", "up"), ("job", "a"), ("job", "b")],
        &[(t, 1.0)],
    )]);
    let future = v1_body(vec![pod_series("a", &[(t + 11 * 60 * 1000, 1.0)])]);
    let odd_refs = snappy(
        &prophet::proto::v2::Request {
            symbols: vec!["".into(), "__name__".into(), "up".into()],
            timeseries: vec![prophet::proto::v2::TimeSeries {
                labels_refs: vec![1, 2, 1],
                ..Default::default()
            }],
        }
        .encode_to_vec(),
    );
    let out_of_range = snappy(
        &prophet::proto::v2::Request {
            symbols: vec!["".into(), "__name__".into(), "up".into()],
            timeseries: vec![prophet::proto::v2::TimeSeries {
                labels_refs: vec![1, 7],
                ..Default::default()
            }],
        }
        .encode_to_vec(),
    );
    let mut garbage = good.clone();
    garbage.truncate(good.len() - 3);
    vec![
        (
            "random bytes",
            None,
            b"definitely not snappy".to_vec(),
            "snappy",
        ),
        (
            "truncated snappy",
            None,
            compressed[..compressed.len() / 2].to_vec(),
            "snappy",
        ),
        ("framed snappy", None, framed, "framed"),
        ("truncated protobuf", None, snappy(&garbage), "protobuf"),
        (
            "not protobuf",
            None,
            snappy(b"\xff\xff\xff\xff"),
            "protobuf",
        ),
        ("no __name__", None, no_name, "__name__"),
        ("empty label name", None, empty_name, "empty name"),
        ("duplicate label name", None, duplicate, "more than once"),
        ("future sample", None, future, "ahead"),
        ("odd labels_refs", Some(V2), odd_refs, "odd"),
        ("symbol out of range", Some(V2), out_of_range, "symbol 7"),
    ]
}

#[tokio::test]
async fn refuses_malformed_bodies_with_400_and_a_one_line_reason() {
    let app = app();
    for (case, content_type, body, word) in malformed_bodies() {
        let answer = app.write(content_type.or(Some(V1)), body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{case}: {}",
            answer.body
        );
        let reason = answer.body.trim_end();
        assert!(
            !reason.is_empty() && !reason.contains('\n'),
            "{case}: {reason:?}"
        );
        assert!(reason.contains(word), "{case}: {reason:?} lacks {word:?}");
    }
    // The server keeps serving, and nothing of the refused requests was kept.
    let answer = app
        .write(
            Some(V1),
            v1_body(vec![pod_series("a", &[(now_ms(), 2.0 * GI)])]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(app.rule("mem").await["counters"]["samples"], 1);
}

#[tokio::test]
async fn refuses_a_decoded_size_above_the_limit_with_413() {
    let app = app();
    // A snappy header declaring 64 MiB, then a few literal bytes: a tiny "bomb".
    let mut bomb = vec![0x80, 0x80, 0x80, 0x20];
    bomb.extend(std::iter::repeat_n(0u8, 4096));
    let answer = app.write(Some(V1), bomb).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.body.contains("67108864"), "{}", answer.body);
}

#[tokio::test]
async fn a_refused_request_leaves_no_trace() {
    let app = app();
    let t = now_ms();
    // One matching series over the threshold, then a series without __name__: the whole
    // request is refused, so the first series must not trip the rule.
    let body = v1_body(vec![
        pod_series("a", &[(t, 2.0 * GI)]),
        series(&[("job", "x")], &[(t, 1.0)]),
    ]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::BAD_REQUEST
    );
    // A future sample in a valid series is refused and must not move the series' clock:
    // the next sample, at the present, is still in order.
    let future = v1_body(vec![pod_series("a", &[(t + 20 * 60 * 1000, 2.0 * GI)])]);
    assert_eq!(
        app.write(Some(V1), future).await.status,
        StatusCode::BAD_REQUEST
    );
    assert!(app.decisions().await.is_empty());
    let rule = app.rule("mem").await;
    assert_eq!(rule["counters"]["samples"], 0);
    assert_eq!(rule["series"], 0);

    let answer = app
        .write(Some(V1), v1_body(vec![pod_series("a", &[(t, 2.0 * GI)])]))
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["sampleTimeMs"], t);
}

#[tokio::test]
async fn an_exact_duplicate_sample_is_accepted_once() {
    let app = app();
    let t = now_ms();
    let body = v1_body(vec![pod_series("a", &[(t, 2.0 * GI)])]);
    for _ in 0..3 {
        assert_eq!(
            app.write(Some(V1), body.clone()).await.status,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(app.rule("mem").await["counters"]["samples"], 1);
    assert_eq!(app.wait_decisions(1).await.len(), 1);
}

#[tokio::test]
async fn stale_markers_end_the_value_other_nans_and_infinities_are_values() {
    let app = app();
    let t = now_ms() - 60_000;
    let stale = f64::from_bits(STALE_NAN_BITS);
    let samples = [
        (t, f64::INFINITY),    // +Inf is a value: > 1Gi trips
        (t + 1_000, stale),    // staleness marker: clears
        (t + 2_000, 2.0 * GI), // trips again
        (t + 3_000, f64::NAN), // an ordinary NaN is a value that is not > 1Gi: clears
    ];
    let answer = app
        .write(Some(V1), v1_body(vec![pod_series("a", &samples)]))
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let decisions = app.wait_decisions(4).await;
    let summary: Vec<(String, String, serde_json::Value)> = decisions
        .iter()
        .map(|d| {
            (
                d["verdict"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
                d["value"].clone(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 4, "{summary:?}");
    assert_eq!(summary[0].0, "tripped");
    assert_eq!(summary[0].2, "+Inf");
    assert_eq!(summary[1].0, "cleared");
    assert!(summary[1].1.contains("stale"), "{summary:?}");
    assert_eq!(summary[1].2, serde_json::Value::Null);
    assert_eq!(summary[2].0, "tripped");
    assert_eq!(summary[3].0, "cleared");
    assert_eq!(summary[3].2, "NaN");
}

#[tokio::test]
async fn a_series_ended_by_a_staleness_marker_is_neither_listed_nor_counted() {
    let app = app();
    let t = now_ms() - 60_000;
    let stale = f64::from_bits(STALE_NAN_BITS);
    let answer = app
        .write(
            Some(V1),
            v1_body(vec![
                pod_series("a", &[(t, 2.0 * GI), (t + 1_000, 2.0 * GI)]),
                pod_series("b", &[(t, 1.0), (t + 1_000, stale)]),
            ]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let values = &app.rule("mem").await["values"];
    let results = values["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{values}");
    assert_eq!(results[0]["series"]["pod"], "a", "{values}");
    assert_eq!(values["resultCount"], 1, "{values}");
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_on_the_same_listener() {
    let app = app();
    let t = now_ms();
    app.write(
        Some(V1),
        v1_body(vec![
            pod_series("a", &[(t, 2.0 * GI)]),
            series(&[("__name__", "up")], &[(t, 1.0)]),
        ]),
    )
    .await;
    app.write(Some("text/plain"), vec![]).await;
    for path in ["/healthz", "/readyz"] {
        let answer = app
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    let metrics = app.metrics().await;
    for line in [
        r#"prophet_remote_write_requests_total{version="1.0",code="204"} 1"#,
        r#"prophet_remote_write_requests_total{version="unknown",code="415"} 1"#,
        r#"prophet_remote_write_samples_total{result="accepted"} 1"#,
        r#"prophet_remote_write_samples_total{result="unmatched"} 1"#,
        "prophet_series_active 1",
        r#"prophet_rule_verdicts_total{kind="AnomalyAction",verdict="tripped"} 1"#,
        "prophet_verdict_latency_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_body_larger_than_any_decodable_one_is_refused_with_413_and_counted() {
    let limits = prophet::ingest::Limits {
        max_decoded_bytes: 1 << 10,
        ..Default::default()
    };
    let app = start_with(
        &threshold_rule("mem", MEM, "> 1Gi", ""),
        prophet::standalone::PipelineConfig {
            limits,
            ..Default::default()
        },
    );
    let answer = app.write(Some(V2), vec![0u8; 4 << 10]).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(
        answer.headers["x-prometheus-remote-write-samples-written"],
        "0"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"prophet_remote_write_requests_total{version="2.0",code="413"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_sender_with_a_fast_clock_does_not_age_other_series() {
    let app = start(&threshold_rule("mem", MEM, "> 1Gi", ""));
    let t = now_ms();
    let body = v1_body(vec![
        pod_series("good", &[(t - 60_000, 2.0 * GI)]),
        // Nine minutes ahead: accepted (under the 10-minute limit) but it must not move
        // the rule's clock past the present.
        pod_series("skewed", &[(t + 9 * 60_000, 2.0 * GI)]),
    ]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    let next = v1_body(vec![pod_series("good", &[(t, 2.0 * GI)])]);
    assert_eq!(
        app.write(Some(V1), next).await.status,
        StatusCode::NO_CONTENT
    );
    let decisions = app.wait_decisions(2).await;
    let verdicts: Vec<_> = decisions
        .iter()
        .map(|d| {
            (
                d["verdict"].as_str().unwrap(),
                d["series"]["pod"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(verdicts, [("tripped", "good"), ("tripped", "skewed")]);
    assert_eq!(app.rule("mem").await["series"], 2);
}

#[tokio::test]
async fn extreme_timestamps_neither_crash_nor_trip() {
    let app = start(&threshold_rule("mem", MEM, "> 1Gi", "  for: 1m\n"));
    let t = now_ms();
    let body = v1_body(vec![pod_series(
        "a",
        &[(i64::MIN + 1, 2.0 * GI), (t, 2.0 * GI)],
    )]);
    assert_eq!(
        app.write(Some(V1), body).await.status,
        StatusCode::NO_CONTENT
    );
    // The evaluator is still there, and the ancient sample did not satisfy `for`.
    assert_eq!(
        app.send(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let later = v1_body(vec![pod_series("a", &[(t + 1_000, 2.0 * GI)])]);
    assert_eq!(
        app.write(Some(V1), later).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(app.wait_decisions(1).await.is_empty());
    assert_eq!(app.rule("mem").await["counters"]["samples"], 3);
}

/// Uploads in flight are bounded in total: a request reserves its `Content-Length`
/// before its body is read, one that would pass the budget is answered 503 with
/// `Retry-After` (Prometheus retries it) without being read, and the budget comes back
/// when an upload ends.
#[tokio::test]
async fn request_bodies_in_flight_are_bounded_in_total_with_503() {
    let limits = prophet::ingest::Limits {
        max_decoded_bytes: 64 << 10,
        max_bytes_in_flight: 100 << 10,
        ..Default::default()
    };
    let app = start_with(
        &threshold_rule("mem", MEM, "> 1Gi", ""),
        prophet::standalone::PipelineConfig {
            limits,
            ..Default::default()
        },
    );
    // A sender that announced 70 KiB and is still sending.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let stalled = Request::post("/api/v1/write")
        .header("content-type", V1)
        .header("content-encoding", "snappy")
        .header("content-length", (70 << 10).to_string())
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let router = app.router.clone();
    let upload = tokio::spawn(async move {
        use tower::ServiceExt;
        router.oneshot(stalled).await.unwrap().status()
    });
    tx.send(Ok(axum::body::Bytes::from(vec![0u8; 1024])))
        .await
        .unwrap();
    // Once the first chunk is taken, the stalled request holds its reservation.
    let body = v1_body(vec![pod_series("web-1", &[(now_ms(), 2e9)])]);
    let mut refused = None;
    for _ in 0..1000 {
        let answer = app
            .send(
                Request::post("/api/v1/write")
                    .header("content-type", V1)
                    .header("content-encoding", "snappy")
                    .header("content-length", (40 << 10).to_string())
                    .body(Body::from(vec![0u8; 40 << 10]))
                    .unwrap(),
            )
            .await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(answer);
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("a request past the budget is refused");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(refused.body.contains("request bodies"), "{}", refused.body);
    // A small request still fits beside the stalled one (a request without a
    // Content-Length reserves the largest body instead, which would not).
    let answer = app
        .send(
            Request::post("/api/v1/write")
                .header("content-type", V1)
                .header("content-encoding", "snappy")
                .header("content-length", body.len().to_string())
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    // The stalled sender gives up; its reservation comes back.
    drop(tx);
    let _ = upload.await.unwrap();
    let answer = app
        .send(
            Request::post("/api/v1/write")
                .header("content-type", V1)
                .header("content-encoding", "snappy")
                .header("content-length", (80 << 10).to_string())
                .body(Body::from(vec![0u8; 80 << 10]))
                .unwrap(),
        )
        .await;
    assert_ne!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
}

/// Prometheus takes a label with an empty value for no label: a plain-selector rule's
/// decision about a series sent with `shard=""` (over 1.0 and over 2.0) names no `shard`,
/// and it is the series sent without the label.
#[tokio::test]
async fn a_label_with_an_empty_value_is_no_label_for_a_plain_selector_rule() {
    let app = app();
    let t = now_ms();
    let with_empty: &[(&str, &str)] = &[
        ("__name__", MEM),
        ("namespace", "default"),
        ("pod", "a"),
        ("shard", ""),
    ];
    let answer = app
        .write(
            Some(V1),
            v1_body(vec![series(with_empty, &[(t, 2.0 * GI)])]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let labels = &decisions[0]["series"];
    assert!(labels.get("shard").is_none(), "{labels}");
    assert_eq!(labels["pod"], "a", "{labels}");
    assert_eq!(
        decisions[0]["targets"],
        serde_json::json!([{"namespace": "default", "name": "a"}])
    );
    // Without the label, and over 2.0 with it: the same series, still tripped once.
    let answer = app
        .write(
            Some(V1),
            v1_body(vec![pod_series("a", &[(t + 1000, 3.0 * GI)])]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    let answer = app
        .write(Some(V2), v2_body(&[(with_empty, &[(t + 2000, 4.0 * GI)])]))
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    let rule = app.rule("mem").await;
    assert_eq!(rule["series"], 1, "{rule}");
    assert_eq!(rule["counters"]["samples"], 3, "{rule}");
    let tripped = &rule["trippedSeries"];
    assert_eq!(tripped.as_array().map(Vec::len), Some(1), "{rule}");
    assert!(tripped[0]["series"].get("shard").is_none(), "{rule}");
    assert_eq!(tripped[0]["sampleTimeMs"], t + 2000, "{rule}");
    assert_eq!(app.wait_decisions(2).await.len(), 1, "no second trip");
}
