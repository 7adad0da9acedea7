//! Standalone mode: rules from a folder of YAML files, the dry-run actuator, and no
//! cluster contacted, ever. Builds the pipeline (ingest → route → eval → reconcile →
//! actuate) and serves HTTP until shutdown; everything before actuate is the same code a
//! cluster deployment runs.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::actuate::{DecisionLog, DryRun};
use crate::eval::Evaluator;
use crate::http::{AppState, InvalidDocument, RuleStatus};
use crate::ingest::Limits;
use crate::metrics::{Metrics, RuleStateLabels};
use crate::reconcile::Decider;
use crate::rules::compile::{CompileError, CompileOptions, compile};
use crate::rules::load::load_dir;
use crate::{Error, Result};

/// Everything `prophet run` is told.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rules_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub series_limit: usize,
    pub compile: CompileOptions,
    /// Batches queued for the evaluator before ingest answers 503.
    pub eval_queue: usize,
    /// Decisions kept for `GET /api/v1/decisions`.
    pub decisions_kept: usize,
}

/// Loads the rules, binds the listener and serves until `shutdown` resolves; then drains
/// what was accepted through eval and reconcile before returning.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let report = load_dir(&config.rules_dir).map_err(|source| Error::Rules {
        dir: config.rules_dir.clone(),
        source,
    })?;
    let invalid_documents: Vec<InvalidDocument> = report
        .invalid
        .iter()
        .map(|doc| {
            tracing::warn!(origin = %doc.origin(), reason = %doc.reason, "rule document not loaded");
            InvalidDocument {
                origin: doc.origin(),
                reason: doc.reason.clone(),
            }
        })
        .collect();

    let mut statuses = Vec::new();
    let mut active = Vec::new();
    for rule in &report.rules {
        let key = rule.key();
        match compile(rule, config.compile) {
            Ok(compiled) => {
                tracing::info!(rule = %key, condition = %compiled.summary, "rule active");
                statuses.push(RuleStatus {
                    rule: key,
                    state: "active",
                    message: None,
                });
                active.push(compiled);
            }
            Err(error) => {
                let state = match error {
                    CompileError::Invalid(_) => "invalid",
                    CompileError::Unsupported(_) => "unsupported",
                };
                tracing::warn!(rule = %key, state, reason = %error, "rule not evaluated");
                statuses.push(RuleStatus {
                    rule: key,
                    state,
                    message: Some(error.to_string()),
                });
            }
        }
    }

    let metrics = Arc::new(Metrics::new());
    for state in ["active", "invalid", "unsupported"] {
        let n = statuses.iter().filter(|s| s.state == state).count();
        metrics.rules.get_or_create(&RuleStateLabels { state }).set(n as i64);
    }
    let plans: HashMap<_, _> = active
        .iter()
        .map(|r| (r.key.clone(), r.plan.clone()))
        .collect();
    let evaluator = Evaluator::new(active, config.series_limit);
    let router = Arc::new(evaluator.router(RandomState::new().hash_one(0x5eed_u64)));
    let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
    let (eval, eval_thread) =
        crate::eval::spawn(evaluator, metrics.clone(), verdict_tx, config.eval_queue)
            .map_err(Error::Spawn)?;
    let decisions = DecisionLog::new(config.decisions_kept);
    let reconcile = tokio::spawn(crate::reconcile::run(
        verdict_rx,
        Decider::new(plans, true),
        Arc::new(DryRun {
            log: decisions.clone(),
        }),
    ));

    let state = Arc::new(AppState {
        limits: config.limits,
        router,
        eval,
        metrics,
        decisions,
        rules: statuses,
        invalid_documents,
        ready: AtomicBool::new(false),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(
        addr = %local,
        rules = state.rules.len(),
        "listening on {local} (standalone, dry run: no cluster is contacted)"
    );
    state.ready.store(true, Ordering::Relaxed);
    axum::serve(listener, crate::http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)?;
    // The router (and with it the last EvalHandle) is gone: the evaluator drains its queue
    // and stops, closing the verdict channel, which ends reconcile.
    let _ = tokio::task::spawn_blocking(move || eval_thread.join()).await;
    let _ = reconcile.await;
    tracing::info!("stopped");
    Ok(())
}
