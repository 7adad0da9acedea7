//! The evaluator's own thread. Handlers submit batches over a bounded channel and wait for
//! the acknowledgement, so a `204` means the samples are in their windows; when the channel
//! is full, submission fails at once and ingest answers `503` so the sender retries
//! (backpressure, not loss). One thread owns the evaluator: no locks on windows. When a
//! rule's step waits for series that have not reached it, the thread wakes at the step's
//! settle deadline (`--settle-delay` on the receiver's clock) even if no batch comes.
//!
//! A new rule set replaces the evaluator between two batches, carrying over the state of
//! every rule that still reads the same series the same way (the `--state-dir` path, in
//! memory), and bumps the rule-set generation: a batch routed under the previous set is
//! refused (its selector ids name other windows now) and its sender retries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{Evaluator, EvaluatorState, Outcome, Restored, RuleSnapshot, Verdict};
use crate::metrics::{Metrics, RuleLabels, VerdictLabels};
use crate::route::{Batch, Router};
use crate::rules::compile::{ActionPlan, CompiledRule};
use crate::rules::load::RuleKey;

enum Job {
    Apply {
        batch: Batch,
        done: oneshot::Sender<Result<(), SubmitError>>,
    },
    Snapshot(oneshot::Sender<Vec<RuleSnapshot>>),
    Export(oneshot::Sender<EvaluatorState>),
    Replace {
        rules: Vec<CompiledRule>,
        now_ms: i64,
        done: oneshot::Sender<Arc<Router>>,
    },
}

/// What the evaluator tells reconcile, in the order it happened: a verdict of the
/// current rule set, or a new rule set (every later verdict is of that set).
#[derive(Debug)]
pub enum EvalEvent {
    Verdict(Verdict),
    Rules(RuleSetChange),
}

/// A rule set took effect.
#[derive(Debug, Clone, Default)]
pub struct RuleSetChange {
    /// The action plan of every active rule.
    pub plans: HashMap<RuleKey, ActionPlan>,
    /// Active rules whose windows and detector state were carried over (their tripped
    /// series are still tripped); every other active rule starts afresh.
    pub kept: HashSet<RuleKey>,
}

/// Why a batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("evaluation is behind; retry later")]
    Busy,
    #[error("the evaluator has stopped")]
    Stopped,
    #[error("the rules changed while the request was routed; retry")]
    RulesChanged,
}

/// The handle handlers hold; cheap to clone.
#[derive(Clone)]
pub struct EvalHandle {
    jobs: mpsc::Sender<Job>,
}

impl EvalHandle {
    /// Queues a batch; the receiver resolves once it is applied, or refused because the
    /// rule set changed since it was routed.
    pub fn submit(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<(), SubmitError>>, SubmitError> {
        let (done, applied) = oneshot::channel();
        self.jobs
            .try_send(Job::Apply { batch, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
            })?;
        Ok(applied)
    }

    /// False once the evaluator thread has stopped (it never does before shutdown unless
    /// it failed); readiness reports it.
    pub fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// The live state of every active rule, taken between two batches.
    pub async fn snapshot(&self) -> Result<Vec<RuleSnapshot>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Snapshot(reply))
            .await
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)
    }

    /// Replaces the rule set between two batches, keeping the state of rules that read
    /// the same series the same way; returns the router for the new set. `now_ms` is the
    /// receiver's clock, which carried-over event clocks never pass.
    pub async fn replace_rules(
        &self,
        rules: Vec<CompiledRule>,
        now_ms: i64,
    ) -> Result<Arc<Router>, SubmitError> {
        let (done, replaced) = oneshot::channel();
        self.jobs
            .send(Job::Replace {
                rules,
                now_ms,
                done,
            })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        replaced.await.map_err(|_| SubmitError::Stopped)
    }

    /// Everything `--state-dir` saves, taken between two batches.
    pub async fn export(&self) -> Result<EvaluatorState, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Export(reply))
            .await
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)
    }
}

/// The evaluator thread's stack. Expressions are evaluated by recursion over their
/// tree; rules are refused past `promql::size::MAX_DEPTH` levels, which a debug build
/// evaluates within the default 2 MiB (`promql/tests.rs` checks it), and this leaves
/// eight times that as headroom. Only the pages used are ever committed.
const EVAL_STACK_BYTES: usize = 16 << 20;

/// Starts the evaluator thread. It stops when every [`EvalHandle`] is dropped, after
/// applying what was queued, and hands back the state to save last; verdicts and
/// rule-set changes go to `events` in the order they happened. `seed` keys the series
/// hash of the evaluator's routers (the one already built from `evaluator` included) and
/// `series_limit` is every later rule set's. `pending` is saved state whose rules are not
/// known yet: it is put back at the first rule-set update (and exported as it is until
/// then, so a save before it keeps it).
pub fn spawn(
    mut evaluator: Evaluator,
    mut pending: Option<EvaluatorState>,
    seed: u64,
    series_limit: usize,
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<EvalEvent>,
    queue: usize,
) -> std::io::Result<(EvalHandle, JoinHandle<EvaluatorState>)> {
    let (jobs, mut queued) = mpsc::channel(queue.max(1));
    // Only to wait for the next job with a timeout: the next step's settle deadline.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("prophet-eval".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            let mut generation = 0;
            loop {
                // A step waiting for series that have not reached it is evaluated when
                // its settle delay runs out, whether or not another batch comes.
                let job = match evaluator.next_deadline() {
                    None => queued.blocking_recv(),
                    Some(deadline) => {
                        let wait = deadline.saturating_sub(wall_ms());
                        let wait = std::time::Duration::from_millis(wait.max(0) as u64);
                        // The timer is made inside the runtime, which it needs.
                        let next = timer
                            .block_on(async { tokio::time::timeout(wait, queued.recv()).await });
                        match next {
                            Ok(job) => job,
                            Err(_) => {
                                let outcome = evaluator.tick(wall_ms());
                                report(&metrics, &events, outcome);
                                continue;
                            }
                        }
                    }
                };
                let Some(job) = job else { break };
                match job {
                    Job::Apply { batch, done } => {
                        if batch.generation != generation {
                            let _ = done.send(Err(SubmitError::RulesChanged));
                            continue;
                        }
                        apply(&mut evaluator, &metrics, &events, &batch);
                        // The handler may have gone (client hung up); the batch counts anyway.
                        let _ = done.send(Ok(()));
                    }
                    Job::Replace {
                        rules,
                        now_ms,
                        done,
                    } => {
                        generation += 1;
                        let change = replace(
                            &mut evaluator,
                            rules,
                            pending.take(),
                            seed,
                            series_limit,
                            now_ms,
                        );
                        metrics.series_active.set(evaluator.series_active() as i64);
                        let _ = events.send(EvalEvent::Rules(change));
                        let router = evaluator.router(seed).with_generation(generation);
                        let _ = done.send(Arc::new(router));
                    }
                    Job::Snapshot(reply) => {
                        let _ = reply.send(evaluator.snapshot());
                    }
                    Job::Export(reply) => {
                        let mut state = evaluator.export();
                        if let Some(saved) = &pending {
                            merge_saved(&mut state, saved.clone());
                        }
                        let _ = reply.send(state);
                    }
                }
            }
            // What the last save writes: every rule's state, and saved state that never
            // found its rules (no rule set arrived) as it was.
            let mut state = evaluator.export();
            if let Some(saved) = pending {
                merge_saved(&mut state, saved);
            }
            state
        })?;
    Ok((EvalHandle { jobs }, thread))
}

/// Adds the saved rules that `state` does not hold.
fn merge_saved(state: &mut EvaluatorState, saved: EvaluatorState) {
    let present: HashSet<RuleKey> = state.rules.iter().map(|r| r.rule.clone()).collect();
    state.rules.extend(
        saved
            .rules
            .into_iter()
            .filter(|r| !present.contains(&r.rule)),
    );
}

/// Swaps in an evaluator for `rules`, carrying over what still fits (from the running
/// evaluator, else from `saved`).
fn replace(
    evaluator: &mut Evaluator,
    rules: Vec<CompiledRule>,
    saved: Option<EvaluatorState>,
    seed: u64,
    series_limit: usize,
    now_ms: i64,
) -> RuleSetChange {
    let plans = rules
        .iter()
        .map(|r| (r.key.clone(), r.plan.clone()))
        .collect();
    let mut state = evaluator.export();
    if let Some(saved) = saved {
        merge_saved(&mut state, saved);
    }
    let mut next =
        Evaluator::new(rules, series_limit).with_settle_delay(evaluator.settle_delay_ms());
    let mut kept = HashSet::new();
    for outcome in next.restore(state, seed, now_ms) {
        match outcome {
            Restored::Rule { rule, series } => {
                tracing::debug!(%rule, series, "rule state carried over");
                kept.insert(rule);
            }
            Restored::Dropped { rule, why } => {
                tracing::info!(%rule, "rule starts afresh: {why}");
            }
        }
    }
    *evaluator = next;
    RuleSetChange { plans, kept }
}

fn apply(
    evaluator: &mut Evaluator,
    metrics: &Metrics,
    verdicts: &mpsc::UnboundedSender<EvalEvent>,
    batch: &Batch,
) {
    let outcome = evaluator.apply(batch);
    metrics.series_active.set(evaluator.series_active() as i64);
    report(metrics, verdicts, outcome);
}

/// The receiver's clock, ms since the epoch (what ingest stamps batches with).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Counts what a batch or a tick did and passes its verdicts on.
fn report(metrics: &Metrics, verdicts: &mpsc::UnboundedSender<EvalEvent>, outcome: Outcome) {
    metrics.late_samples.inc_by(outcome.late as u64);
    metrics
        .steps_settled_by_delay
        .inc_by(outcome.settled_by_delay as u64);
    let out_of_order = outcome.out_of_order;
    let over_limit: usize = outcome.over_limit.iter().map(|(_, n)| n).sum();
    if over_limit > 0 || out_of_order > 0 {
        tracing::warn!(
            over_limit_samples = over_limit,
            out_of_order_samples = out_of_order,
            "samples dropped from a batch"
        );
    }
    for (key, samples) in outcome.over_limit {
        metrics
            .series_limit_dropped
            .get_or_create(&RuleLabels {
                kind: key.kind.as_str(),
                namespace: key.namespace,
                name: key.name,
            })
            .inc_by(samples as u64);
    }
    metrics
        .window_dropped
        .get_or_create(&crate::metrics::DropLabels {
            reason: "out_of_order",
        })
        .inc_by(out_of_order as u64);
    for verdict in outcome.verdicts {
        metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                kind: verdict.rule.kind.as_str(),
                verdict: verdict.change.as_str(),
            })
            .inc();
        metrics
            .verdict_latency
            .observe(verdict.arrived.elapsed().as_secs_f64());
        // The reconcile loop only stops at shutdown, after the evaluator.
        let _ = verdicts.send(EvalEvent::Verdict(verdict));
    }
}
