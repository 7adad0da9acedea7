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
