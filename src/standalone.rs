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
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::actuate::{DecisionLog, DryRun};
use crate::eval::Evaluator;
use crate::http::{AppState, InvalidDocument, RuleStatus};
use crate::ingest::Limits;
use crate::metrics::{Metrics, RuleStateLabels};
use crate::reconcile::Decider;
use crate::rules::compile::{CompileError, CompileOptions, compile};
use crate::rules::load::{LoadReport, load_dir};
use crate::{Error, Result};

/// How the pipeline behind the HTTP surface is set up.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub limits: Limits,
    pub series_limit: usize,
    pub compile: CompileOptions,
    /// Batches queued for the evaluator before ingest answers 503.
    pub eval_queue: usize,
    /// Decisions kept for `GET /api/v1/decisions`.
    pub decisions_kept: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            series_limit: 10_000,
            compile: CompileOptions::default(),
            eval_queue: 256,
            decisions_kept: 10_000,
        }
    }
}

/// Everything `prophet run` is told.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rules_dir: PathBuf,
    pub listen: SocketAddr,
    pub pipeline: PipelineConfig,
}

/// The running stages behind the HTTP surface.
pub struct Pipeline {
    pub state: Arc<AppState>,
    eval_thread: std::thread::JoinHandle<()>,
    reconcile: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    /// Compiles the loaded rules (reporting each one that is invalid or unsupported) and
    /// starts eval and reconcile. Must be called within a tokio runtime.
    pub fn start(report: &LoadReport, config: &PipelineConfig) -> Result<Self> {
        let invalid_documents: Vec<InvalidDocument> = report
            .invalid
            .iter()
            .map(|doc| {
                tracing::warn!("rule document not loaded: {doc}");
                let mut origin = doc.file.display().to_string();
                if let Some(document) = doc.document {
                    origin.push_str(&format!(" document {document}"));
                }
                InvalidDocument {
                    origin,
                    reason: doc.to_string(),
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
            metrics
                .rules
                .get_or_create(&RuleStateLabels { state })
                .set(n as i64);
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
            ready: AtomicBool::new(true),
        });
        Ok(Self {
            state,
            eval_thread,
            reconcile,
        })
    }

    /// Waits until everything accepted has gone through eval and reconcile. Call after
    /// the HTTP server (which holds the other references to the state) has stopped.
    pub async fn drain(self) {
        drop(self.state);
        let eval_thread = self.eval_thread;
        let _ = tokio::task::spawn_blocking(move || eval_thread.join()).await;
        let _ = self.reconcile.await;
    }
}

/// Loads the rules, binds the listener and serves until `shutdown` resolves; then drains
/// what was accepted through eval and reconcile before returning.
pub async fn run(
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let report = load_dir(&config.rules_dir).map_err(|source| Error::Rules {
        dir: config.rules_dir.clone(),
        source,
    })?;
    let pipeline = Pipeline::start(&report, &config.pipeline)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(
        addr = %local,
        rules = pipeline.state.rules.len(),
        "listening on {local} (standalone, dry run: no cluster is contacted)"
    );
    axum::serve(listener, crate::http::router(pipeline.state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)?;
    pipeline.drain().await;
    tracing::info!("stopped");
    Ok(())
}
