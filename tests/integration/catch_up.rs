//! A sender catching up after an outage of its remote endpoint sends each series in
//! order over many minutes in one request (Prometheus replays its WAL). Every sample of
//! such a request lands in its window and is judged in order, as if it had arrived live;
//! a sample behind the clock as it was *before* the request is still refused as late.

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
