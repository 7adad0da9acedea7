//! The evaluator's own thread. Handlers submit batches over a bounded channel and wait for
//! the acknowledgement, so a `204` means the samples are in their windows; when the channel
//! is full, submission fails at once and ingest answers `503` so the sender retries
//! (backpressure, not loss). One thread owns the evaluator: no locks on windows.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{Evaluator, EvaluatorState, RuleSnapshot, Verdict};
use crate::metrics::{Metrics, RuleLabels, VerdictLabels};
use crate::route::Batch;

enum Job {
    Apply {
        batch: Batch,
        done: oneshot::Sender<()>,
    },
    Snapshot(oneshot::Sender<Vec<RuleSnapshot>>),
    Export(oneshot::Sender<EvaluatorState>),
}

/// Why a batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("evaluation is behind; retry later")]
    Busy,
    #[error("the evaluator has stopped")]
    Stopped,
}

/// The handle handlers hold; cheap to clone.
#[derive(Clone)]
pub struct EvalHandle {
    jobs: mpsc::Sender<Job>,
}

impl EvalHandle {
    /// Queues a batch; the receiver resolves once it is applied.
    pub fn submit(&self, batch: Batch) -> Result<oneshot::Receiver<()>, SubmitError> {
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
/// applying what was queued, and hands the evaluator back (for a last save); verdicts go
/// to `verdicts` in the order they were decided.
pub fn spawn(
    mut evaluator: Evaluator,
    metrics: Arc<Metrics>,
    verdicts: mpsc::UnboundedSender<Verdict>,
    queue: usize,
) -> std::io::Result<(EvalHandle, JoinHandle<Evaluator>)> {
    let (jobs, mut queued) = mpsc::channel(queue.max(1));
    let thread = std::thread::Builder::new()
        .name("prophet-eval".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            while let Some(job) = queued.blocking_recv() {
                match job {
                    Job::Apply { batch, done } => {
                        apply(&mut evaluator, &metrics, &verdicts, &batch);
                        // The handler may have gone (client hung up); the batch counts anyway.
                        let _ = done.send(());
                    }
                    Job::Snapshot(reply) => {
                        let _ = reply.send(evaluator.snapshot());
                    }
                    Job::Export(reply) => {
                        let _ = reply.send(evaluator.export());
                    }
                }
            }
            evaluator
        })?;
    Ok((EvalHandle { jobs }, thread))
}

fn apply(
    evaluator: &mut Evaluator,
    metrics: &Metrics,
    verdicts: &mpsc::UnboundedSender<Verdict>,
    batch: &Batch,
) {
    let outcome = evaluator.apply(batch);
    metrics.series_active.set(evaluator.series_active() as i64);
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
        let _ = verdicts.send(verdict);
    }
}
