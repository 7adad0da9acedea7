//! Notifications against real HTTP receivers (axum on 127.0.0.1:0, recording every
//! request into a channel): Alertmanager replicas, each webhook format, retries,
//! timeouts, the allow-list and redirects; the webhook URL from a Secret through the
//! real API server. Tests wait on the receivers' channels, never on sleeps.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use prophet::actuate::alert::{Alert, Notifier, NotifierConfig, WebhookTarget, webhook_target};
use prophet::actuate::outbound::{Outbound, OutboundConfig};
use prophet::actuate::{ActError, Actor};
use prophet::labels::Labels;
use prophet::rules::crd::{SecretKeyRef, WebhookFormat};
use prophet::rules::load::{RuleKey, RuleKind};
use serde_json::Value;
use tokio::sync::mpsc;

/// How a receiver answers one request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16),
    /// Never answers.
    Hang,
    /// 307 to this location.
    Redirect(String),
}

/// One request a receiver got.
#[derive(Debug)]
struct Received {
    path: String,
    body: Value,
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<Vec<Answer>>>,
    seen: mpsc::UnboundedSender<Received>,
}

async fn record(State(script): State<Script>, uri: Uri, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = script.seen.send(Received {
        path: uri.path().to_owned(),
        body,
    });
    let answer = {
        let mut answers = script.answers.lock().unwrap();
        // The last answer repeats.
        if answers.len() > 1 {
            answers.remove(0)
        } else {
            answers[0].clone()
        }
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::Hang => std::future::pending().await,
        Answer::Redirect(to) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
    }
}

/// A receiver on 127.0.0.1 answering `answers` in turn (the last one repeated).
async fn receiver(answers: Vec<Answer>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (seen, rx) = mpsc::unbounded_channel();
    let script = Script {
        answers: Arc::new(Mutex::new(answers)),
        seen,
    };
    let app = axum::Router::new().fallback(record).with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the receiver got a request in time")
        .expect("receiver running")
}

fn outbound(hosts: &[&str], timeout: Duration) -> Outbound {
    Outbound::new(OutboundConfig {
        allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        timeout,
        ..OutboundConfig::default()
    })
    .unwrap()
}

fn notifier(alertmanagers: Vec<String>, resend: Duration, pagerduty: &str) -> Arc<Notifier> {
    Notifier::new(
        outbound(&["127.0.0.1"], Duration::from_secs(5)),
        NotifierConfig {
            alertmanagers,
            resend_interval: resend,
            pagerduty_url: pagerduty.to_owned(),
            external_url: "http://prophet.test".to_owned(),
        },
    )
    .unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ms_of(rfc3339: &Value) -> i64 {
    let text = rfc3339.as_str().expect("a time");
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .expect("RFC 3339")
        .as_millisecond()
}

fn actor() -> Actor {
    Actor {
        kind: RuleKind::AnomalyAction,
        namespace: "shop".into(),
        name: "memory".into(),
        uid: "6f1c0d7e-aaaa-bbbb-cccc-000000000001".into(),
        allow_git_ops: false,
        allow_cross_namespace: false,
    }
}

fn rule() -> RuleKey {
    RuleKey {
        kind: RuleKind::AnomalyAction,
        namespace: "shop".into(),
        name: "memory".into(),
    }
}

fn alert(pod: &str, starts_at_ms: i64) -> Alert {
    Alert::new(
        &actor(),
        &Labels::from_pairs([
            ("__name__", "container_memory_working_set_bytes"),
            ("pod", pod),
        ]),
        "critical",
        "memory > 1Gi",
        Some("1.5Gi"),
        starts_at_ms,
        "http://prophet.test/api/v1/rules",
    )
}

#[tokio::test]
async fn every_alertmanager_replica_gets_the_alert_then_its_resolution() {
    let (am0, mut rx0) = receiver(vec![Answer::Status(200)]).await;
    let (am1, mut rx1) = receiver(vec![Answer::Status(200)]).await;
    let resend = Duration::from_secs(60);
    let notifier = notifier(
        vec![format!("http://{am0}"), format!("http://{am1}/")],
        resend,
        "",
    );
    let now = now_ms();
    let results = notifier
        .sync(&rule(), None, vec![alert("api-0", now - 5_000)], now)
        .await;
    assert_eq!(results.len(), 1);
    let acted = results[0].as_ref().expect("delivered");
    assert_eq!(acted.action, "alert");
    assert_eq!(acted.target.kind, "Alertmanager");
    for rx in [&mut rx0, &mut rx1] {
        let got = next(rx).await;
        assert_eq!(got.path, "/api/v2/alerts");
        let sent = &got.body[0];
        assert_eq!(sent["labels"]["alertname"], "memory");
        assert_eq!(sent["labels"]["pod"], "api-0");
        assert_eq!(sent["labels"]["severity"], "critical");
        assert_eq!(ms_of(&sent["startsAt"]), now - 5_000);
        // Firing: ends 4 resend intervals ahead, so it lives through missed re-sends.
        assert_eq!(ms_of(&sent["endsAt"]), now + 4 * 60_000);
    }

    // The same alert again: nothing sent.
    let results = notifier
        .sync(
            &rule(),
            None,
            vec![alert("api-0", now - 5_000)],
            now + 1_000,
        )
        .await;
    assert!(results.is_empty(), "{results:?}");
    assert!(rx0.try_recv().is_err() && rx1.try_recv().is_err());

    // Gone: resolved at once on both.
    let later = now + 30_000;
    let results = notifier.sync(&rule(), None, vec![], later).await;
    assert!(results[0].is_ok(), "{results:?}");
    for rx in [&mut rx0, &mut rx1] {
        let got = next(rx).await;
        assert_eq!(got.body[0]["labels"]["pod"], "api-0");
        assert_eq!(ms_of(&got.body[0]["endsAt"]), later);
    }
}

#[tokio::test]
async fn one_alertmanager_down_does_not_stop_the_others() {
    let (up, mut rx) = receiver(vec![Answer::Status(200)]).await;
    // A port nothing listens on: connection refused.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let notifier = notifier(
        vec![format!("http://{down}"), format!("http://{up}")],
        Duration::from_secs(60),
        "",
    );
    let now = now_ms();
    let results = notifier
        .sync(&rule(), None, vec![alert("api-0", now)], now)
        .await;
    let acted = results[0]
        .as_ref()
        .expect("one replica accepting is success");
    assert_eq!(acted.target.name, up.to_string());
    // The first acceptance ends the wait: whether the down replica's refusal came
    // before it (and is named) depends on timing; what a user notices is the success.
    assert!(acted.summary.contains(&up.to_string()), "{}", acted.summary);
    assert_eq!(next(&mut rx).await.body[0]["labels"]["pod"], "api-0");

    // None accepting is a retryable failure, and the alert is tried again next sync.
    let only_down = notifier_for(vec![format!("http://{down}")]);
    let results = only_down
        .sync(&rule(), None, vec![alert("api-0", now)], now)
        .await;
    let error = results[0].as_ref().expect_err("nobody accepted");
    assert!(!error.is_refused());
    assert_eq!(error.reason(), "WebhookUnreachable");
    let again = only_down
        .sync(&rule(), None, vec![alert("api-0", now)], now)
        .await;
    assert_eq!(
        again.len(),
        1,
        "a failed delivery is retried by the next sync"
    );
}

fn notifier_for(alertmanagers: Vec<String>) -> Arc<Notifier> {
    notifier(alertmanagers, Duration::from_secs(60), "")
}

#[tokio::test]
async fn the_resend_loop_keeps_alerts_alive_with_a_fresh_ends_at() {
    let (am, mut rx) = receiver(vec![Answer::Status(200)]).await;
    let notifier = notifier(vec![format!("http://{am}")], Duration::from_millis(300), "");
    let now = now_ms();
    notifier
        .sync(&rule(), None, vec![alert("api-0", now)], now)
        .await;
    let first = ms_of(&next(&mut rx).await.body[0]["endsAt"]);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let loop_task = tokio::spawn(notifier.clone().run(async {
        let _ = stopped.await;
    }));
    let resent = next(&mut rx).await;
    assert_eq!(resent.body[0]["labels"]["pod"], "api-0");
    let second = ms_of(&resent.body[0]["endsAt"]);
    assert!(
        second > first,
        "endsAt moves forward: {first} then {second}"
    );
    let third = ms_of(&next(&mut rx).await.body[0]["endsAt"]);
    assert!(third > second);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), loop_task)
        .await
        .expect("the loop stops")
        .unwrap();
}

#[tokio::test]
async fn each_webhook_format_as_received() {
    let (hook, mut rx) = receiver(vec![Answer::Status(200)]).await;
    let (pd, mut pd_rx) = receiver(vec![Answer::Status(202)]).await;
    let notifier = notifier(
        vec![],
        Duration::from_secs(60),
        &format!("http://{pd}/v2/enqueue"),
    );
    let now = now_ms();
    let firing = || vec![alert("api-0", now), alert("api-1", now)];

    // Alertmanager's webhook JSON.
    let am_format = WebhookTarget {
        format: WebhookFormat::Alertmanager,
        url_or_key: format!("http://{hook}/alertmanager-hook"),
    };
    let results = notifier
        .sync(&rule(), Some(&am_format), firing(), now)
        .await;
    assert_eq!(results.len(), 1);
    let acted = results[0].as_ref().expect("sent");
    assert_eq!(
        (acted.action, acted.target.kind.as_str()),
        ("webhook", "Webhook")
    );
    assert_eq!(acted.target.name, hook.to_string());
    let got = next(&mut rx).await;
    assert_eq!(got.path, "/alertmanager-hook");
    assert_eq!(got.body["version"], "4");
    assert_eq!(got.body["status"], "firing");
    assert_eq!(got.body["receiver"], "prophet");
    assert_eq!(got.body["externalURL"], "http://prophet.test");
    assert_eq!(got.body["commonLabels"]["alertname"], "memory");
    assert_eq!(got.body["alerts"].as_array().map(Vec::len), Some(2));
    assert_eq!(got.body["alerts"][0]["status"], "firing");
    assert!(got.body["alerts"][0]["fingerprint"].is_string());
    let results = notifier.sync(&rule(), Some(&am_format), vec![], now).await;
    assert!(results[0].is_ok());
    let got = next(&mut rx).await;
    assert_eq!(got.body["status"], "resolved");
    assert_eq!(got.body["alerts"].as_array().map(Vec::len), Some(2));

    // Slack: one message per change, saying FIRING then RESOLVED.
    let slack = WebhookTarget {
        format: WebhookFormat::Slack,
        url_or_key: format!("http://{hook}/services/T0/B0/s3cr3t"),
    };
    let results = notifier.sync(&rule(), Some(&slack), firing(), now).await;
    assert!(
        results[0]
            .as_ref()
            .is_ok_and(|a| !a.summary.contains("s3cr3t"))
    );
    let got = next(&mut rx).await;
    assert!(got.body["text"].as_str().unwrap().contains("[FIRING:2]"));
    assert!(got.body["blocks"].as_array().is_some_and(|b| b.len() == 3));
    notifier.sync(&rule(), Some(&slack), vec![], now).await;
    let got = next(&mut rx).await;
    assert!(got.body["text"].as_str().unwrap().contains("RESOLVED"));

    // PagerDuty: one event per alert to the events URL, keyed by the dedup key.
    let pagerduty = WebhookTarget {
        format: WebhookFormat::Pagerduty,
        url_or_key: "R0UT1NGKEY".into(),
    };
    let results = notifier
        .sync(&rule(), Some(&pagerduty), firing(), now)
        .await;
    assert_eq!(results.len(), 2);
    let mut keys = Vec::new();
    for _ in 0..2 {
        let got = next(&mut pd_rx).await;
        assert_eq!(got.path, "/v2/enqueue");
        assert_eq!(got.body["routing_key"], "R0UT1NGKEY");
        assert_eq!(got.body["event_action"], "trigger");
        assert_eq!(got.body["payload"]["severity"], "critical");
        assert_eq!(got.body["payload"]["group"], "shop");
        keys.push(got.body["dedup_key"].clone());
    }
    notifier
        .sync(&rule(), Some(&pagerduty), vec![alert("api-1", now)], now)
        .await;
    let got = next(&mut pd_rx).await;
    assert_eq!(got.body["event_action"], "resolve");
    assert_eq!(
        got.body["dedup_key"],
        alert("api-0", now).dedup_key.as_str()
    );
    assert!(keys.contains(&got.body["dedup_key"]));
}

#[tokio::test]
async fn a_server_error_twice_then_ok_takes_three_attempts() {
    let (hook, mut rx) = receiver(vec![
        Answer::Status(500),
        Answer::Status(503),
        Answer::Status(200),
    ])
    .await;
    let notifier = notifier_for(vec![]);
    let target = WebhookTarget {
        format: WebhookFormat::Alertmanager,
        url_or_key: format!("http://{hook}/hook"),
    };
    let now = now_ms();
    let results = notifier
        .sync(&rule(), Some(&target), vec![alert("api-0", now)], now)
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    assert!(rx.try_recv().is_err(), "exactly three attempts");
}

#[tokio::test]
async fn a_rejected_delivery_is_not_remembered_and_the_next_sync_retries_it() {
    let (hook, mut rx) = receiver(vec![Answer::Status(400), Answer::Status(200)]).await;
    let notifier = notifier_for(vec![]);
    let target = WebhookTarget {
        format: WebhookFormat::Slack,
        url_or_key: format!("http://{hook}/services/x"),
    };
    let now = now_ms();
    let results = notifier
        .sync(&rule(), Some(&target), vec![alert("api-0", now)], now)
        .await;
    let error = results[0].as_ref().expect_err("400");
    assert_eq!(error.reason(), "WebhookRejected");
    assert!(!error.to_string().contains("/services/x"), "{error}");
    next(&mut rx).await;
    assert!(rx.try_recv().is_err(), "a 4xx is not retried at once");

    let results = notifier
        .sync(&rule(), Some(&target), vec![alert("api-0", now)], now)
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        next(&mut rx).await.body["text"]
            .as_str()
            .unwrap()
            .contains("FIRING")
    );
    let results = notifier
        .sync(&rule(), Some(&target), vec![alert("api-0", now)], now)
        .await;
    assert!(results.is_empty(), "delivered once, not again");
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_within_the_bound() {
    let (hook, mut rx) = receiver(vec![Answer::Hang]).await;
    let out = outbound(&["127.0.0.1"], Duration::from_millis(500));
    let started = Instant::now();
    let error = out
        .post_json(&format!("http://{hook}/hook"), &[], &serde_json::json!({}))
        .await
        .expect_err("no answer");
    let took = started.elapsed();
    assert_eq!(error.reason(), "WebhookTimeout", "{error}");
    assert!(!error.is_refused());
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    next(&mut rx).await;
}

#[tokio::test]
async fn a_host_not_allowed_is_refused_without_connecting() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Only the address is allowed; the name `localhost` is not, nor 127.0.0.2.
    let out = outbound(&["127.0.0.1"], Duration::from_secs(2));
    for url in [
        format!("http://localhost:{port}/services/T/B/secret"),
        format!("http://127.0.0.2:{port}/"),
        format!("http://169.254.169.254:{port}/latest/meta-data/"),
    ] {
        let error = out
            .post_json(&url, &[], &serde_json::json!({}))
            .await
            .expect_err("denied");
        assert!(
            matches!(
                error,
                ActError::Refused {
                    reason: "UrlNotAllowed",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("--allow-url-host"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection was made: {accepted:?}"
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed() {
    let (elsewhere, mut elsewhere_rx) = receiver(vec![Answer::Status(200)]).await;
    let (hook, mut rx) = receiver(vec![
        Answer::Redirect(format!("http://localhost:{}/stolen", elsewhere.port())),
        Answer::Redirect(format!("http://{}/moved", "127.0.0.1:1")),
        Answer::Redirect("/same-host".to_owned()),
        Answer::Status(200),
    ])
    .await;
    // Both hosts allowed: the redirect is refused for leaving the host, not the list.
    let out = outbound(&["127.0.0.1", "localhost"], Duration::from_secs(5));
    let url = format!("http://{hook}/hook");
    let error = out
        .post_json(&url, &[], &serde_json::json!({}))
        .await
        .expect_err("not followed");
    assert_eq!(error.reason(), "WebhookRedirected", "{error}");
    next(&mut rx).await;
    // Another port is another server.
    let error = out
        .post_json(&url, &[], &serde_json::json!({}))
        .await
        .expect_err("not followed");
    assert_eq!(error.reason(), "WebhookRedirected", "{error}");
    next(&mut rx).await;
    assert!(
        elsewhere_rx.try_recv().is_err(),
        "the other host got nothing"
    );
    // A redirect on the same host is followed.
    out.post_json(&url, &[], &serde_json::json!({}))
        .await
        .expect("followed on the same host");
    next(&mut rx).await;
    assert_eq!(next(&mut rx).await.path, "/same-host");
}

#[tokio::test]
async fn the_webhook_url_comes_from_a_secret() {
    let Some(cluster) = crate::common::k8s::cluster() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("alert-secret");
    let (hook, mut rx) = receiver(vec![Answer::Status(200)]).await;
    let url = format!("http://{hook}/services/T0/B0/s3cr3t");
    cluster.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "slack",
        &format!("--from-literal=url={url}"),
    ]);
    let secret = |name: &str, key: &str| SecretKeyRef {
        name: name.into(),
        key: key.into(),
    };

    // The Secret wins over the URL.
    let target = webhook_target(
        &client,
        &ns,
        Some("http://ignored.example/"),
        Some(&secret("slack", "url")),
        WebhookFormat::Slack,
    )
    .await
    .expect("read")
    .expect("a target");
    assert_eq!(target.url_or_key, url);
    assert!(!format!("{target:?}").contains("s3cr3t"));
    let now = now_ms();
    let results = notifier_for(vec![])
        .sync(&rule(), Some(&target), vec![alert("api-0", now)], now)
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(next(&mut rx).await.path, "/services/T0/B0/s3cr3t");

    for (name, key) in [("slack", "nokey"), ("absent", "url")] {
        let error = webhook_target(
            &client,
            &ns,
            None,
            Some(&secret(name, key)),
            WebhookFormat::Slack,
        )
        .await
        .expect_err("missing");
        assert_eq!(error.reason(), "SecretNotFound");
        assert!(!error.is_refused(), "retried: the Secret may come later");
        assert!(
            error.to_string().contains(name) && error.to_string().contains(key),
            "{error}"
        );
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }

    // The URL alone, and nothing at all.
    let plain = webhook_target(
        &client,
        &ns,
        Some("http://h/x"),
        None,
        WebhookFormat::Alertmanager,
    )
    .await
    .expect("no read needed");
    assert_eq!(plain.map(|t| t.url_or_key), Some("http://h/x".to_owned()));
    assert!(
        webhook_target(&client, &ns, None, None, WebhookFormat::Slack)
            .await
            .expect("nothing to read")
            .is_none()
    );
}
