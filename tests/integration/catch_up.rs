//! A sender catching up after an outage of its remote endpoint sends each series in
//! order over many minutes in one request (Prometheus replays its WAL). Every sample of
//! such a request lands in its window and is judged in order, as if it had arrived live;
//! a sample behind the clock as it was *before* the request is still refused as late.
//! And a rule's clock moves with every sample it is sent, stored or not, so a rule at its
//! series limit whose series were all replaced lets the new ones in.

use crate::common;

use prophet::proto::v1;

const STEP_MS: i64 = 15_000;

fn backlog(pods: &[&str], from_ms: i64, steps: i64, value: impl Fn(&str, i64) -> f64) -> Vec<u8> {
    let series: Vec<v1::TimeSeries> = pods
        .iter()
        .map(|pod| {
            let samples: Vec<(i64, f64)> = (0..steps)
                .map(|i| (from_ms + i * STEP_MS, value(pod, i)))
                .collect();
            common::series(
                &[
                    ("__name__", "queue_depth"),
                    ("namespace", "default"),
                    ("pod", pod),
                ],
                &samples,
            )
        })
        .collect();
    common::v1_body(series)
}

const RULE: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: queue, namespace: default}
spec:
  metric: queue_depth
  threshold: "> 100"
  remediation: {type: alert}
"#;

#[test]
fn a_catch_up_request_lands_whole_and_is_judged_in_order() {
    let mut evaluator = common::evaluator(RULE);
    let start = 1_700_000_000_000;
    // 10 minutes of three series, each in order, one after the other in the request;
    // pod c crosses the threshold at minute 8 and comes back at minute 9.
    let steps = 40;
    let body = backlog(&["a", "b", "c"], start, steps, |pod, i| {
        if pod == "c" && (32..36).contains(&i) {
            500.0
        } else {
            10.0
        }
    });
    let outcome = common::apply_v1(&mut evaluator, &body, start + steps * STEP_MS);
    assert_eq!(outcome.out_of_order, 0, "no sample of the backlog is lost");
    assert_eq!(outcome.appended, 3 * steps as usize);
    let changes: Vec<(String, i64)> = outcome
        .verdicts
        .iter()
        .map(|v| {
            (
                v.change.as_str().to_owned(),
                (v.sample_time_ms - start) / STEP_MS,
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![("tripped".to_owned(), 32), ("cleared".to_owned(), 36)],
        "judged at the samples' own times"
    );
}

#[test]
fn a_sample_behind_the_clock_before_the_request_is_still_late() {
    let mut evaluator = common::evaluator(RULE);
    let start = 1_700_000_000_000;
    let live = backlog(&["a"], start + 20 * 60_000, 1, |_, _| 10.0);
    common::apply_v1(&mut evaluator, &live, start + 20 * 60_000);
    // Ten minutes behind the clock the previous request set: refused, counted.
    let late = backlog(&["b"], start + 10 * 60_000, 4, |_, _| 10.0);
    let outcome = common::apply_v1(&mut evaluator, &late, start + 20 * 60_000);
    assert_eq!(outcome.out_of_order, 4);
    assert_eq!(outcome.appended, 0);
}

/// A rule at its series limit whose every series is replaced (a rollout) lets the new
/// series in once the old ones have gone idle, instead of refusing them forever.
#[test]
fn a_rule_at_its_series_limit_lets_a_rollouts_new_series_in() {
    use prophet::eval::Evaluator;
    use prophet::rules::compile::{CompileOptions, compile};
    use prophet::rules::load::parse_documents;
    let (rules, _) = parse_documents(RULE, std::path::Path::new("test"));
    let compiled = rules
        .iter()
        .map(|r| compile(r, CompileOptions::default()).unwrap())
        .collect();
    let mut evaluator = Evaluator::new(compiled, 2);
    let start = 1_700_000_000_000;
    let old = backlog(&["old-1", "old-2"], start, 1, |_, _| 10.0);
    common::apply_v1(&mut evaluator, &old, start);
    // The rollout: only the new pods send from now on, one request a minute; new-1 is
    // over the threshold all along.
    let mut tripped_at = None;
    for minute in 1..=10 {
        let at = start + minute * 60_000;
        let body = backlog(&["new-1", "new-2"], at, 1, |pod, _| {
            if pod == "new-1" { 500.0 } else { 10.0 }
        });
        let outcome = common::apply_v1(&mut evaluator, &body, at);
        if outcome
            .verdicts
            .iter()
            .any(|v| v.change.as_str() == "tripped" && v.series.get("pod") == Some("new-1"))
        {
            tripped_at = Some(minute);
            break;
        }
    }
    let minute = tripped_at.expect("the new series get in once the old ones are idle");
    // The old series go idle after the 5-minute lookback, swept within a quarter of it.
    assert!((5..=8).contains(&minute), "tripped at minute {minute}");
}

/// A real Prometheus whose remote endpoint (Prophet) is down for the first ~40 s of its
/// data: it queues and retries, and once Prophet listens it sends the backlog, then
/// live data. The backlog lands whole, and the expression rule trips at the step it
/// would have tripped at live, with the value Prometheus itself computes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_catching_up_after_an_outage_is_judged_as_if_live() {
    use crate::e2e_prometheus::{get_json, start_prometheus_with, wait_decision};
    use common::process::{free_port, percent_encode};
    use std::time::{Duration, Instant};

    if common::process::prometheus().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Samples of `up` in the last 30 s: it passes 20 about 20 s after the first scrape,
    // inside the outage.
    const QUERY: &str = r#"count_over_time(up{job="prometheus"}[30s])"#;
    let rules = common::process::rules_folder(
        dir.path(),
        "warming.yaml",
        &format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: warming-up, namespace: default}}\nspec:\n  metric: '{QUERY}'\n  threshold: '> 20'\n  remediation: {{type: alert}}\n"
        ),
    );
    // Nothing listens here until Prophet starts: Prometheus's requests are refused.
    let prophet_addr = format!("127.0.0.1:{}", free_port());
    // Two jobs on one target, each keeping only its synthetic series (`up`, ...).
    let (_prometheus, port) = start_prometheus_with(
        dir.path(),
        &prophet_addr,
        r#"
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:{port}"], labels: {namespace: default, pod: prometheus-0}}]
    metric_relabel_configs: [{source_labels: [__name__], regex: ".*", action: drop}]
  - job_name: copy
    static_configs: [{targets: ["127.0.0.1:{port}"], labels: {namespace: default, pod: prometheus-1}}]
    metric_relabel_configs: [{source_labels: [__name__], regex: ".*", action: drop}]
"#,
    );
    let prometheus = format!("http://127.0.0.1:{port}");
    let client = common::process::http_client();
    let query = |q: &str| format!("{prometheus}/api/v1/query?query={}", percent_encode(q));

    // The outage lasts until Prometheus holds 40 s of data (a watermark of its own).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = get_json(
            &client,
            &query(r#"count_over_time(up{job="prometheus"}[1m])"#),
        )
        .await;
        let held = answer
            .as_ref()
            .and_then(|a| {
                a["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        if held >= 40.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus holds {held} s of data after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Its own metrics (not scraped here) say the requests were refused and retried.
    let own = common::scrape(&client, &format!("127.0.0.1:{port}")).await;
    let retried: f64 = own
        .lines()
        .filter(|l| l.starts_with("prometheus_remote_storage_samples_retried_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        retried > 0.0,
        "Prometheus never retried: the endpoint was not down"
    );

    let rules = rules.to_str().unwrap();
    let (_prophet, addr, _log) = common::process::start_prophet(
        &[
            "run",
            "--rules",
            rules,
            "--listen",
            &prophet_addr,
            "--promql-semantics",
            "2",
        ],
        &[],
    );
    assert_eq!(addr, prophet_addr);

    // The rule's decision arrives once the backlog has landed.
    let decision = wait_decision(&client, &addr, "warming-up").await;
    assert_eq!(decision["verdict"], "tripped", "{decision}");
    let at = decision["sampleTimeMs"].as_i64().unwrap();
    assert_eq!(at % 15_000, 0, "evaluated at a step boundary: {decision}");

    // Live, the rule trips at the first step where Prometheus's own answer passes 20:
    // the steps before it (from the first scrape) and at it, as Prometheus answers them.
    let first_scrape = get_json(
        &client,
        &query(r#"min_over_time(timestamp(up{job="prometheus"})[5m:1s])"#),
    )
    .await
    .and_then(|a| {
        a["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
    })
    .expect("the first scrape's time");
    let from = (first_scrape * 1000.0) as i64;
    let range = client
        .get(format!(
            "{prometheus}/api/v1/query_range?query={}&start={}&end={}&step=15",
            percent_encode(QUERY),
            (from.div_euclid(15_000) + 1) * 15,
            at / 1000
        ))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let points = range["data"]["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{range}"));
    let live: Vec<(i64, f64)> = points
        .iter()
        .map(|p| {
            (
                (p[0].as_f64().unwrap() * 1000.0) as i64,
                p[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let tripped_live = live.iter().find(|(_, v)| *v > 20.0).copied();
    let value: f64 = decision["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        tripped_live,
        Some((at, value)),
        "Prometheus's steps: {live:?}"
    );
    assert!(
        at < from + 60_000,
        "the trip ({at}) falls in the outage, which began at {from}"
    );

    // Every sample of the backlog was taken: none refused as late or out of order.
    let metrics = common::scrape(&client, &addr).await;
    let counter = |series: &str| common::metric(&metrics, series);
    assert_eq!(counter("prophet_late_samples_total"), 0.0, "{metrics}");
    assert_eq!(
        counter(r#"prophet_window_dropped_samples_total{reason="out_of_order"}"#),
        0.0,
        "{metrics}"
    );
}
