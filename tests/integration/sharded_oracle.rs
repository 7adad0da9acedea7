//! Expression rules against the real Prometheus when the samples come the way a
//! sharded remote-write sends them. The oracle's data set (see `promql_oracle`) is
//! written to Prometheus 2.42 in one request, and fed to an evaluator running every
//! oracle expression that loads as an expression rule, one time slice (15 s) after the other, each
//! slice split over 1, 2, 4 or 8 shards: series partitioned across shards (and moved
//! between them halfway, as resharding does), the shards' requests in a different order
//! each slice, and some shards a request late (their slice arrives after the other
//! shards' next one). Every step a rule evaluated must agree with Prometheus's
//! `query_range` at that step, with any number of shards as with one.
//!
//! What cannot be waited for is not delayed here: a series seen for the first time, or
//! coming back after it went quiet, does not hold a step (see the README's
//! "Settling"); its shard is on time at such slices.
//!
//! Needs `/usr/bin/prometheus`.

use crate::common;
use crate::promql_oracle::{
    EXPRESSIONS, GAP, LATE_START, Oracle, Outcome, POINTS, Rng, STEP_MS, diff, label_map,
    prometheus_outcome,
};

use std::collections::BTreeMap;

use common::process::percent_encode;
use prophet::eval::Evaluator;
use prophet::eval::promql::Semantics;
use prophet::proto::v1;
use prophet::rules::compile::{CompileOptions, DetectorSpec, compile};
use prophet::rules::load::parse_documents;

/// Longer than a shard is late here (one request, 15 s of the receiver's clock).
const SETTLE_MS: i64 = 30_000;

/// Every oracle expression that loads as an expression rule, with its text.
fn rules() -> (
    Vec<prophet::rules::compile::CompiledRule>,
    Vec<&'static str>,
) {
    let mut compiled = Vec::new();
    let mut texts = Vec::new();
    for (i, text) in EXPRESSIONS.iter().enumerate() {
        // A block scalar keeps the expression verbatim (quotes, backslashes, braces).
        let yaml = format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: e{i}, namespace: oracle}}\nspec:\n  metric: |-\n    {text}\n  threshold: '> 1e300'\n  remediation: {{type: alert}}\n"
        );
        let (loaded, invalid) = parse_documents(&yaml, std::path::Path::new("oracle"));
        assert!(invalid.is_empty(), "{text}: {invalid:?}");
        // Some are not rules (a range vector, `@`, a negative offset): refused with a reason.
        // `@ start()` and `@ end()` name the range of a range query, not the step.
        if text.contains('@') {
            continue;
        }
        // A plain selector is judged sample by sample (it never waits): not compared.
        // Prometheus 2's PromQL: the oracle is Debian's Prometheus 2.42.
        let options = CompileOptions {
            semantics: Semantics::V2,
            ..CompileOptions::default()
        };
        if let Ok(rule) = compile(&loaded[0], options)
            && matches!(rule.detector, DetectorSpec::Expression { .. })
        {
            compiled.push(rule);
            texts.push(*text);
        }
    }
    (compiled, texts)
}

/// What the evaluator returned at each step, per rule (by index).
type Evaluations = Vec<BTreeMap<i64, Outcome>>;

/// Feeds the data set slice by slice over `shards` shards and records every step each
/// rule evaluated. Returns the evaluations and how many samples arrived late.
fn feed(oracle: &Oracle, shards: usize, seed: u64) -> (Evaluations, u64) {
    let (compiled, _) = rules();
    let n = compiled.len();
    let mut ev = Evaluator::new(compiled, 100_000).with_settle_delay(SETTLE_MS);
    let mut rng = Rng(seed);
    let t = |i: i64| oracle.start + i * STEP_MS;
    // The slice each series comes back in after a gap, and the slice each first appears
    // in: its shard is on time then.
    let unwaitable = |i: i64| i == 0 || i == LATE_START || i == *GAP.end() + 1;
    let mut evaluations: Evaluations = (0..n).map(|_| BTreeMap::new()).collect();
    // A shard's late request: its body, when it arrives, and the series it carries.
    let mut late_request: Option<(Vec<u8>, i64, Vec<usize>)> = None;
    let mut out_of_order = 0;
    let record = |ev: &Evaluator, evaluations: &mut Evaluations| {
        for (k, rule) in ev.snapshot().iter().enumerate() {
            let Some(state) = &rule.values else { continue };
            let Some(at) = state.at_ms else { continue };
            let outcome = match &state.error {
                Some(error) => Outcome::Error(error.clone()),
                // The view lists the first 50 results only.
                None if state.results.len() >= 50 => continue,
                None => Outcome::Vector(
                    state
                        .results
                        .iter()
                        .map(|r| (label_map(&r.series), r.value))
                        .collect(),
                ),
            };
            evaluations[k].entry(at).or_insert(outcome);
        }
    };
    for i in 0..POINTS {
        // Resharding halfway: the series are dealt out anew.
        let epoch = u64::from(i >= POINTS / 2);
        let mut bodies: Vec<Vec<v1::TimeSeries>> = vec![Vec::new(); shards];
        let mut carried: Vec<Vec<usize>> = vec![Vec::new(); shards];
        for (s, series) in oracle.data.iter().enumerate() {
            let samples: Vec<v1::Sample> = series
                .samples
                .iter()
                .filter(|(ts, _)| (t(i)..t(i + 1)).contains(ts))
                .map(|&(timestamp, value)| v1::Sample { value, timestamp })
                .collect();
            if samples.is_empty() {
                continue;
            }
            // The first slice in one request: a series never seen cannot be waited for
            // (as when Prophet starts in the middle of a sender's stream).
            let shard = if i == 0 {
                0
            } else {
                (Rng(s as u64 * 7919 + epoch).next() % shards as u64) as usize
            };
            carried[shard].push(s);
            bodies[shard].push(v1::TimeSeries {
                labels: series.wire_labels(),
                samples,
                ..Default::default()
            });
        }
        // The shards in another order each slice.
        let mut order: Vec<usize> = (0..shards).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, (rng.next() % (k as u64 + 1)) as usize);
        }
        // One shard in four is a request late (at most one at a time, and none with
        // one shard).
        let late = (shards > 1 && !unwaitable(i) && rng.next().is_multiple_of(4))
            .then(|| order[(rng.next() % shards as u64) as usize]);
        let received = t(i) + 2_000;
        for (k, &shard) in order.iter().enumerate() {
            let body = std::mem::take(&mut bodies[shard]);
            if body.is_empty() {
                continue;
            }
            let encoded = common::v1_body(body);
            let series = std::mem::take(&mut carried[shard]);
            if Some(shard) == late {
                // Still one late request at a time: the previous one arrives first.
                if let Some((body, at, _)) = late_request.take() {
                    out_of_order += common::apply_v1(&mut ev, &body, at.max(received)).out_of_order;
                    record(&ev, &mut evaluations);
                }
                late_request = Some((encoded, t(i + 1) + 3_000, series));
                continue;
            }
            // The previous slice's late request comes after this slice's first, unless
            // that one carries a series of it: a shard sends in order, and resharding
            // drains the old shards first.
            let overlaps = late_request
                .as_ref()
                .is_some_and(|(_, _, late)| late.iter().any(|s| series.contains(s)));
            let mut requests = Vec::new();
            let late_one = late_request
                .take()
                .map(|(body, at, _)| (body, at.max(received)));
            let this_one = (encoded, received + k as i64 * 100);
            match (late_one, overlaps) {
                (Some(late_one), true) => requests.extend([late_one, this_one]),
                (Some(late_one), false) => requests.extend([this_one, late_one]),
                (None, _) => requests.push(this_one),
            }
            for (body, at) in requests {
                out_of_order += common::apply_v1(&mut ev, &body, at).out_of_order;
                record(&ev, &mut evaluations);
            }
        }
    }
    if let Some((body, at, _)) = late_request.take() {
        out_of_order += common::apply_v1(&mut ev, &body, at).out_of_order;
        record(&ev, &mut evaluations);
    }
    assert_eq!(
        out_of_order, 0,
        "{shards} shards: the feed sent a series out of order"
    );
    ev.tick(t(POINTS) + SETTLE_MS);
    record(&ev, &mut evaluations);
    let late = ev.snapshot().iter().map(|r| r.counters.late_samples).sum();
    (evaluations, late)
}

/// Prometheus's answer to each expression at every step of the data set.
async fn prometheus_steps(oracle: &Oracle, texts: &[&str]) -> Vec<BTreeMap<i64, Outcome>> {
    let (from, to) = (oracle.start, oracle.start + (POINTS - 1) * STEP_MS);
    let mut all = Vec::new();
    for text in texts {
        let url = format!(
            "{}/api/v1/query_range?query={}&start={}&end={}&step=15",
            oracle.base,
            percent_encode(text),
            from / 1000,
            to / 1000,
        );
        let body: serde_json::Value = oracle
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut steps: BTreeMap<i64, Outcome> = BTreeMap::new();
        match prometheus_outcome(&body) {
            Outcome::Matrix(series) => {
                for at in (0..POINTS).map(|i| from + i * STEP_MS) {
                    let vector = series
                        .iter()
                        .filter_map(|(labels, points)| {
                            let (_, v) = points.iter().find(|(ts, _)| *ts == at)?;
                            Some((labels.clone(), *v))
                        })
                        .collect();
                    steps.insert(at, Outcome::Vector(vector));
                }
            }
            other => {
                for at in (0..POINTS).map(|i| from + i * STEP_MS) {
                    let copy = match &other {
                        Outcome::Error(e) => Outcome::Error(e.clone()),
                        Outcome::Scalar(v) => Outcome::Scalar(*v),
                        _ => Outcome::Error(format!("unexpected answer {other:?}")),
                    };
                    steps.insert(at, copy);
                }
            }
        }
        all.push(steps);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_remote_write_agrees_with_prometheus_as_one_shard_does() {
    let Some(oracle) = Oracle::start().await else {
        return;
    };
    let (_, texts) = rules();
    let theirs = prometheus_steps(&oracle, &texts).await;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (shards, seed) in [(1, 1), (2, 2), (4, 4), (8, 8)] {
        let (ours, late) = feed(&oracle, shards, seed);
        let (mut compared, mut differ) = (0, 0);
        for (k, text) in texts.iter().enumerate() {
            for (at, outcome) in &ours[k] {
                let Some(expected) = theirs[k].get(at) else {
                    continue;
                };
                compared += 1;
                if let Some(d) = diff(outcome, expected) {
                    differ += 1;
                    if failures.len() < 40 {
                        let step = (at - oracle.start) / STEP_MS;
                        failures.push(format!("{shards} shards: {text} at step {step}:\n{d}"));
                    }
                }
            }
        }
        let steps = texts.len() * POINTS as usize;
        report.push(format!(
            "{shards} shard(s): {compared} of {steps} rule steps evaluated on their own and compared, {differ} differ; {late} samples late"
        ));
        // Steps that settle together (a shard's late request completing two) show only
        // the second in the rule's view: nearly every step is still compared.
        if compared * 10 < steps * 9 {
            failures.push(format!(
                "{shards} shards: only {compared} of {steps} steps compared"
            ));
        }
        if late != 0 {
            failures.push(format!("{shards} shards: samples arrived after their step"));
        }
    }
    println!(
        "{} expressions load as rules\n{}",
        texts.len(),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{}\n{}",
        report.join("\n"),
        failures.join("\n")
    );
}
