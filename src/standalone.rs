//! Standalone mode: rules from a folder of YAML files, the dry-run actuator, and no
//! cluster contacted, ever. Builds the pipeline (ingest → route → eval → reconcile →
//! actuate) and serves HTTP until shutdown; everything before actuate is the same code a
//! cluster deployment runs.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::actuate::{DecisionLog, DryRun};
use crate::eval::{EvalHandle, Evaluator, EvaluatorState, Restored};
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
    /// Where windows and detector state are saved (every `state_interval` and at
    /// shutdown) and restored from at start; `None` keeps nothing across restarts.
    pub state_dir: Option<PathBuf>,
    pub state_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            series_limit: 10_000,
            compile: CompileOptions::default(),
            eval_queue: 256,
            decisions_kept: 10_000,
            state_dir: None,
            state_interval: Duration::from_secs(60),
        }
    }
}

/// Everything `prophet run` is told.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rules_dir: PathBuf,
    pub listen: SocketAddr,
    pub pipeline: PipelineConfig,
    pub serve: crate::serve::ServeLimits,
}

/// The running stages behind the HTTP surface.
pub struct Pipeline {
    pub state: Arc<AppState>,
    eval_thread: std::thread::JoinHandle<Evaluator>,
    reconcile: tokio::task::JoinHandle<()>,
    /// The state file and its periodic saver, with `--state-dir`.
    state_file: Option<PathBuf>,
    saver: Option<Saver>,
}

/// The periodic saver and the signal that stops it between two saves.
struct Saver {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The file in `--state-dir` that holds the evaluator's state.
pub const STATE_FILE: &str = "evaluator.state";

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
        let mut evaluator = Evaluator::new(active, config.series_limit);
        let seed = RandomState::new().hash_one(0x5eed_u64);
        let router = Arc::new(evaluator.router(seed));
        let state_file = config.state_dir.as_ref().map(|dir| dir.join(STATE_FILE));
        if let Some(path) = &state_file {
            restore(&mut evaluator, path, seed);
        }
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
        let saver = state_file.clone().map(|path| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(save_every(
                state.eval.clone(),
                path,
                config.state_interval.max(Duration::from_secs(1)),
                stopped,
            ));
            Saver { task, stop }
        });
        Ok(Self {
            state,
            eval_thread,
            reconcile,
            state_file,
            saver,
        })
    }

    /// Waits until everything accepted has gone through eval and reconcile. Call after
    /// the HTTP server (which holds the other references to the state) has stopped.
    pub async fn drain(self) {
        if let Some(saver) = self.saver {
            // Stopped between saves, never in the middle of one, so the final save below
            // is the last write of the file; and it holds an evaluator handle, which
            // would keep the evaluator running.
            let _ = saver.stop.send(true);
            let _ = saver.task.await;
        }
        drop(self.state);
        let eval_thread = self.eval_thread;
        let state_file = self.state_file;
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(evaluator) = eval_thread.join() else {
                return;
            };
            if let Some(path) = state_file {
                save(&path, &evaluator.export());
            }
        })
        .await;
        let _ = self.reconcile.await;
    }
}

/// Restores saved state into the evaluator, if there is any. A file that cannot be used
/// (corrupt, truncated, from another format) is reported and set aside, never fatal:
/// the rules then start afresh.
fn restore(evaluator: &mut Evaluator, path: &Path, seed: u64) {
    if let Some(dir) = path.parent()
        && let Err(error) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot create the state folder");
    }
    let state = match crate::state::load::<EvaluatorState>(path) {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no saved state: starting afresh");
            return;
        }
        Ok(Some(state)) => state,
        Err(error) => {
            tracing::warn!(kind = error.metric_label(), "saved state ignored: {error}");
            if error.is_unusable_file() {
                // Keep it for a post-mortem instead of overwriting it at the next save.
                let aside = path.with_extension("state.unusable");
                if let Err(error) = std::fs::rename(path, &aside) {
                    tracing::warn!(%error, "cannot move the unusable state file aside");
                }
            }
            return;
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for outcome in evaluator.restore(state, seed, now_ms) {
        match outcome {
            Restored::Rule { rule, series } => {
                tracing::info!(%rule, series, "rule state restored");
            }
            Restored::Dropped { rule, why } => {
                tracing::warn!(%rule, "saved rule state not restored: {why}");
            }
        }
    }
}

/// Writes the state file; a failure is logged and the next save tries again.
fn save(path: &Path, state: &EvaluatorState) {
    match crate::state::save(path, state) {
        Ok(()) => tracing::debug!(path = %path.display(), "state saved"),
        Err(error) => tracing::warn!(kind = error.metric_label(), "cannot save state: {error}"),
    }
}

/// Saves the evaluator's state every `every` until `stop` is set. The export is taken on
/// the evaluator thread between batches; serialising and writing happen off it, and a
/// save once started is always finished before this returns.
async fn save_every(
    eval: EvalHandle,
    path: PathBuf,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(state) = eval.export().await else {
            return;
        };
        let path = path.clone();
        let _ = tokio::task::spawn_blocking(move || save(&path, &state)).await;
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
    let app = crate::http::router(pipeline.state.clone());
    crate::serve::serve(listener, app, shutdown, config.serve)
        .await
        .map_err(Error::Serve)?;
    pipeline.drain().await;
    tracing::info!("stopped");
    Ok(())
}
