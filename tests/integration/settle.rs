//! Steps of expressions and SLOs settle before they are evaluated: a step waits until
//! every series its rule reads has reached it (remote-write shards deliver one step's
//! samples in several requests, in any order), or until `--settle-delay` has run out on
//! the receiver's clock since the first sample past it arrived, so a series that went
//! quiet never holds a step for long. Each step is evaluated once; a sample arriving
//! after its step settled is counted and used from the next step on. A backlog split
//! over shards is evaluated step by step as if it had arrived live. The receiver's
//! clock is the one each batch carries and [`Evaluator::tick`]: no sleeps.

use crate::common;

use common::*;
use prophet::eval::{Evaluator, Outcome};

const STEP: i64 = 15_000;
/// A multiple of the step and of a minute.
const BASE: i64 = 1_800_000_000_000;
const DELAY: i64 = 10_000;

fn expression_rule(metric: &str, threshold: &str) -> String {
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: '{metric}'\n  threshold: '{threshold}'\n  remediation: {{type: alert}}\n"
    )
}

fn m(pod: &str, samples: &[(i64, f64)]) -> prophet::proto::v1::TimeSeries {
    series(
        &[("__name__", "m"), ("namespace", "shop"), ("pod", pod)],
        samples,
    )
}

/// The step the rule last evaluated, and the value of its one result then.
fn evaluated(ev: &Evaluator) -> (Option<i64>, Option<f64>) {
    let snapshot = ev.snapshot();
    let state = snapshot[0].values.as_ref().expect("an expression rule");
    (
        state.at_ms.map(|t| t - BASE),
        state.results.first().map(|r| r.value),
    )
}

fn changes(outcome: &Outcome) -> Vec<(String, i64)> {
    outcome
        .verdicts
        .iter()
        .map(|v| (v.change.as_str().to_owned(), v.sample_time_ms - BASE))
        .collect()
}

#[test]
fn a_step_waits_for_every_series_and_a_quiet_one_only_for_the_settle_delay() {
    let mut ev = evaluator(&expression_rule("sum(m)", "> 25")).with_settle_delay(DELAY);
    let at = |i: i64| BASE + i * STEP;
    // Two pods, one request each per step (two shards), received 1 s after the step;
    // the first step's in one request (a series never seen cannot be waited for).
    apply_v1(
        &mut ev,
        &v1_body(vec![m("a", &[(at(0), 10.0)]), m("b", &[(at(0), 10.0)])]),
        at(0) + 1_000,
    );
    for i in 1..4 {
        apply_v1(
            &mut ev,
            &v1_body(vec![m("a", &[(at(i), 10.0)])]),
            at(i) + 1_000,
        );
        apply_v1(
            &mut ev,
            &v1_body(vec![m("b", &[(at(i), 10.0)])]),
            at(i) + 1_000,
        );
    }
    assert_eq!(evaluated(&ev), (Some(3 * STEP), Some(20.0)));

    // Step 4: pod a's shard first. Nothing is evaluated before pod b's arrives...
    let outcome = apply_v1(
        &mut ev,
        &v1_body(vec![m("a", &[(at(4), 30.0)])]),
        at(4) + 1_000,
    );
    assert!(outcome.verdicts.is_empty());
    assert_eq!(
        evaluated(&ev),
        (Some(3 * STEP), Some(20.0)),
        "evaluated early"
    );
    // ...and then the step sees both: 30 + 10.
    apply_v1(
        &mut ev,
        &v1_body(vec![m("b", &[(at(4), 10.0)])]),
        at(4) + 3_000,
    );
    assert_eq!(evaluated(&ev), (Some(4 * STEP), Some(40.0)));

    // Step 5: pod b goes quiet. The step waits the settle delay from the arrival of
    // pod a's sample, on the receiver's clock, and not a millisecond less.
    let received = at(5) + 1_000;
    let outcome = apply_v1(&mut ev, &v1_body(vec![m("a", &[(at(5), 30.0)])]), received);
    assert!(outcome.verdicts.is_empty());
    assert_eq!(ev.next_deadline(), Some(received + DELAY));
    assert!(ev.tick(received + DELAY - 1).verdicts.is_empty());
    assert_eq!(evaluated(&ev).0, Some(4 * STEP));
    let outcome = ev.tick(received + DELAY);
    assert_eq!(outcome.settled_by_delay, 1);
    // b's sample of step 4 is within the lookback: 30 + 10 again, still tripped.
    assert_eq!(evaluated(&ev), (Some(5 * STEP), Some(40.0)));
    assert_eq!(ev.next_deadline(), None, "nothing waits any more");

    // Step 6: pod b is quiet now, so pod a's sample settles the step at once.
    let outcome = apply_v1(
        &mut ev,
        &v1_body(vec![m("a", &[(at(6), 5.0)])]),
        at(6) + 1_000,
    );
    assert_eq!(evaluated(&ev), (Some(6 * STEP), Some(15.0)));
    assert_eq!(changes(&outcome), [("cleared".to_owned(), 6 * STEP)]);

    // Pod b's sample of step 5 arrives after its step settled: taken, counted as late,
    // and read from the next step on (it is b's newest sample at step 7).
    let outcome = apply_v1(
        &mut ev,
        &v1_body(vec![m("b", &[(at(5), 50.0)])]),
        at(6) + 2_000,
    );
    assert_eq!((outcome.appended, outcome.late), (1, 1));
    assert_eq!(
        evaluated(&ev).0,
        Some(6 * STEP),
        "a settled step is not evaluated again"
    );
    assert_eq!(ev.snapshot()[0].counters.late_samples, 1);
    // b is waited for again: step 7 needs it, and it arrives.
    apply_v1(
        &mut ev,
        &v1_body(vec![m("a", &[(at(7), 5.0)])]),
        at(7) + 1_000,
    );
    assert_eq!(evaluated(&ev).0, Some(6 * STEP));
    let outcome = apply_v1(
        &mut ev,
        &v1_body(vec![m("b", &[(at(7), 50.0)])]),
        at(7) + 2_000,
    );
    assert_eq!(evaluated(&ev), (Some(7 * STEP), Some(55.0)));
    assert_eq!(changes(&outcome), [("tripped".to_owned(), 7 * STEP)]);
}

#[test]
fn a_series_scraped_less_often_than_the_step_holds_only_the_steps_it_reaches() {
    // Pod b is scraped every minute, pod a every 15 s: b's next sample is expected a
    // minute after its last, so the steps in between do not wait for it.
    let mut ev = evaluator(&expression_rule("sum(m)", "> 1000")).with_settle_delay(DELAY);
    let at = |i: i64| BASE + i * STEP;
    for i in 0..12 {
        let mut batch = vec![m("a", &[(at(i), 1.0)])];
        if i % 4 == 0 {
            batch.push(m("b", &[(at(i), 2.0)]));
        }
        let outcome = apply_v1(&mut ev, &v1_body(batch), at(i) + 1_000);
        // Until its second sample, pod b's rhythm is unknown: steps wait for it.
        if i >= 5 {
            assert_eq!(outcome.settled_by_delay, 0, "step {i} waited for pod b");
            assert_eq!(evaluated(&ev), (Some(i * STEP), Some(3.0)), "step {i}");
        }
    }
}

/// Ten minutes of two pods, one sample per 15 s; pod b's value jumps for two minutes.
fn backlog(pod: &str) -> Vec<(i64, f64)> {
    (0..40)
        .map(|i| {
            let high = pod == "b" && (20..28).contains(&i);
            (BASE + i * STEP, if high { 100.0 } else { 10.0 })
        })
        .collect()
}

/// Feeds steps `steps` live, each pod in its own request (two shards) received 2 s
/// after the step; returns the rule's changes.
fn live(ev: &mut Evaluator, steps: std::ops::Range<usize>) -> Vec<(String, i64)> {
    let (a, b) = (backlog("a"), backlog("b"));
    let mut all = Vec::new();
    for i in steps {
        let received = a[i].0 + 2_000;
        for (pod, samples) in [("a", &a), ("b", &b)] {
            let body = v1_body(vec![m(pod, &samples[i..=i])]);
            all.extend(changes(&apply_v1(ev, &body, received)));
        }
    }
    all
}

#[test]
fn a_backlog_split_over_shards_is_evaluated_step_by_step_as_if_live() {
    let yaml = expression_rule("max_over_time(sum(m)[1m:15s])", "> 100");
    let expected = live(&mut evaluator(&yaml).with_settle_delay(DELAY), 0..40);
    // Pod b's last high sample is at step 27; Prometheus 3's left-open subquery range
    // (t − 1m, t] leaves it out from step 31 on.
    assert_eq!(
        expected,
        [
            ("tripped".to_owned(), 20 * STEP),
            ("cleared".to_owned(), 31 * STEP)
        ]
    );
    // Live for two and a half minutes; then the sender's remote endpoint (us) is down
    // for seven and a half, and the sender catches up: each shard's request carries its
    // pod's backlog in order, pod b's shard first.
    let mut ev = evaluator(&yaml).with_settle_delay(DELAY);
    assert!(live(&mut ev, 0..10).is_empty());
    let now = BASE + 60 * STEP;
    let first = apply_v1(&mut ev, &v1_body(vec![m("b", &backlog("b")[10..])]), now);
    assert_eq!((first.appended, first.out_of_order), (30, 0));
    assert!(
        first.verdicts.is_empty(),
        "steps evaluated before pod a's samples came: {:?}",
        changes(&first)
    );
    let second = apply_v1(
        &mut ev,
        &v1_body(vec![m("a", &backlog("a")[10..])]),
        now + 500,
    );
    assert_eq!(
        (second.appended, second.out_of_order, second.late),
        (30, 0, 0)
    );
    assert_eq!(changes(&second), expected);
    assert_eq!(evaluated(&ev).0, Some(39 * STEP));
}

const SLO: &str = r#"
apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {name: checkout, namespace: shop}
spec:
  sloName: checkout
  sloTarget: "99%"
  errorBudgetThreshold: 0
  period: 1h
  burnRateTiers: [{longWindow: 5m, shortWindow: 1m, factor: 2}]
  sli:
    ratio:
      errors: http_requests_total{code="500"}
      total: http_requests_total
  actions: [{type: alert}]
"#;

/// Counters every 15 s for 20 minutes: 100 requests a step, 5 of them failing from
/// minute 8 to 11 (5% against a 1% budget).
fn requests(code: &str) -> prophet::proto::v1::TimeSeries {
    let mut value = 0.0;
    let samples: Vec<(i64, f64)> = (0..80)
        .map(|i| {
            let failing = (32..44).contains(&i);
            value += match (code, failing) {
                ("500", true) => 5.0,
                ("500", false) => 0.0,
                _ => 100.0,
            };
            (BASE + i * STEP, value)
        })
        .collect();
    series(
        &[("__name__", "http_requests_total"), ("code", code)],
        &samples,
    )
}

#[test]
fn an_slo_backlog_split_over_shards_trips_and_clears_at_the_minutes_it_would_live() {
    let (ok, errors) = (requests("200"), requests("500"));
    let mut live = evaluator(SLO).with_settle_delay(DELAY);
    let mut expected = Vec::new();
    for i in 0..ok.samples.len() {
        let at = |s: &prophet::proto::v1::TimeSeries| {
            let mut one = s.clone();
            one.samples = vec![s.samples[i]];
            one
        };
        let received = ok.samples[i].timestamp + 2_000;
        expected.extend(changes(&apply_v1(
            &mut live,
            &v1_body(vec![at(&ok)]),
            received,
        )));
        expected.extend(changes(&apply_v1(
            &mut live,
            &v1_body(vec![at(&errors)]),
            received,
        )));
    }
    // Judged at each minute boundary over the minutes before it. Minutes 8, 9 and 10
    // each have 20 errors in 420 requests: at 10:00, 40 errors in the 4040 requests
    // counted so far overspend the 1% budget; it is back above 0 at 16:00.
    assert_eq!(
        expected,
        [
            ("tripped".to_owned(), 10 * 60_000),
            ("cleared".to_owned(), 16 * 60_000)
        ],
    );

    // Live for five minutes, then a backlog of fifteen by shard, the errors' first.
    let mut ev = evaluator(SLO).with_settle_delay(DELAY);
    let part = |s: &prophet::proto::v1::TimeSeries, steps: std::ops::Range<usize>| {
        let mut part = s.clone();
        part.samples = s.samples[steps].to_vec();
        part
    };
    for i in 0..20 {
        let received = ok.samples[i].timestamp + 2_000;
        for s in [&ok, &errors] {
            assert!(
                apply_v1(&mut ev, &v1_body(vec![part(s, i..i + 1)]), received)
                    .verdicts
                    .is_empty()
            );
        }
    }
    let now = BASE + 30 * 60_000;
    let first = apply_v1(&mut ev, &v1_body(vec![part(&errors, 20..80)]), now);
    assert!(first.verdicts.is_empty(), "{:?}", changes(&first));
    let second = apply_v1(&mut ev, &v1_body(vec![part(&ok, 20..80)]), now + 500);
    assert_eq!(changes(&second), expected);
    let slo = ev.snapshot()[0].slo.clone().expect("an SLO");
    let live_slo = live.snapshot()[0].slo.clone().expect("an SLO");
    assert_eq!(slo, live_slo, "the same budget and burn rates as live");
}

/// The evaluator's thread wakes when a step's settle delay runs out, with no request to
/// wake it: pod b went quiet, and pod a's last step is still evaluated.
#[tokio::test]
async fn the_evaluator_wakes_for_a_settle_deadline_without_a_request() {
    let config = prophet::standalone::PipelineConfig {
        settle_delay: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let app = start_with(&expression_rule("sum(m)", "> 25"), config);
    let start = (now_ms() - 120_000).div_euclid(STEP) * STEP;
    let at = |i: i64| start + i * STEP;
    let both = |i: i64| v1_body(vec![m("a", &[(at(i), 10.0)]), m("b", &[(at(i), 10.0)])]);
    for i in 0..3 {
        assert_eq!(app.write(Some(V1), both(i)).await.status, 204);
    }
    let evaluated_at = |view: &serde_json::Value| view["values"]["atMs"].as_i64();
    assert_eq!(evaluated_at(&app.rule("r").await), Some(at(2)));
    // Pod a's sample of step 3 alone: the step waits for pod b, then for the delay.
    let body = v1_body(vec![m("a", &[(at(3), 30.0)])]);
    assert_eq!(app.write(Some(V1), body).await.status, 204);
    let decisions = app.wait_decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["verdict"], "tripped");
    assert_eq!(decisions[0]["sampleTimeMs"], at(3));
    assert_eq!(decisions[0]["value"], "40");
    assert_eq!(evaluated_at(&app.rule("r").await), Some(at(3)));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("prophet_steps_settled_by_delay_total 1"),
        "{metrics}"
    );
}
