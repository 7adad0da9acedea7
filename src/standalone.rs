//! Standalone mode: rules from a folder of YAML files, the dry-run actuator, and no
//! cluster contacted, ever. Builds the pipeline (ingest → route → eval → reconcile →
//! actuate) and serves HTTP until shutdown; everything before actuate is the same code a
//! cluster deployment runs.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::actuate::{DecisionLog, DryRun};
use crate::eval::{EvalEvent, EvalHandle, Evaluator, EvaluatorState, Restored, RuleSetChange};
use crate::http::{AppState, InvalidDocument, RuleListing, RuleStatus};
use crate::ingest::Limits;
use crate::metrics::{Metrics, RuleStateLabels};
use crate::reconcile::Decider;
use crate::rules::compile::{CompileError, CompileOptions, CompiledRule, compile};
use crate::rules::load::{LoadReport, RuleKey, load_dir};
use crate::rules::tenancy::Tenancy;
use crate::{Error, Result};

/// The most characters of a rule's summary its status carries, as an Event's note.
const SUMMARY_CHARS: usize = 1000;

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
    /// How long a rule's step waits for series that have not reached it (`--settle-delay`).
    pub settle_delay: Duration,
    /// Which series each rule may read.
    pub tenancy: Tenancy,
    /// How HA pairs' series are told apart and deduplicated.
    pub ha: crate::ha::HaConfig,
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
            settle_delay: Duration::from_millis(crate::eval::DEFAULT_SETTLE_DELAY_MS as u64),
            tenancy: Tenancy::default(),
            ha: crate::ha::HaConfig::default(),
        }
    }
}

/// Everything `prophet run` is told.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rules_dir: PathBuf,
    /// How often the rules folder is checked for changes (SIGHUP re-reads it at once).
    pub rules_poll: Duration,
    pub listen: SocketAddr,
    pub pipeline: PipelineConfig,
    pub serve: crate::serve::ServeLimits,
    /// Credentials, TLS and the listeners.
    pub surfaces: crate::surfaces::SurfaceConfig,
}

/// The running stages behind the HTTP surface.
pub struct Pipeline {
    pub state: Arc<AppState>,
    config: PipelineConfig,
    eval_thread: std::thread::JoinHandle<EvaluatorState>,
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

/// A loaded rule set, compiled: what the evaluator runs and what the rules endpoint lists.
pub struct CompiledSet {
    pub active: Vec<CompiledRule>,
    pub listing: RuleListing,
}

/// Compiles every loaded rule, confining each to its namespace as `tenancy` says. Each
/// rule that is new or changed since `previous` is logged (active, or invalid or
/// unsupported with the reason), and each document that did not load.
pub fn compile_set(
    report: &LoadReport,
    options: CompileOptions,
    tenancy: &Tenancy,
    previous: &RuleListing,
) -> CompiledSet {
    let before: HashMap<&RuleKey, &RuleStatus> =
        previous.rules.iter().map(|r| (&r.rule, r)).collect();
    let changed = |key: &RuleKey, state: &str, generation: Option<i64>| {
        before
            .get(key)
            .is_none_or(|r| r.state != state || r.generation != generation)
    };
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

    let mut rules = Vec::new();
    let mut active = Vec::new();
    for rule in &report.rules {
        let key = rule.key();
        let options = CompileOptions {
            confine_to_namespace: tenancy.confines(&key.namespace),
            ..options
        };
        let generation = rule.metadata().generation;
        match compile(rule, options) {
            Ok(mut compiled) => {
                if options.confine_to_namespace {
                    compiled
                        .summary
                        .push_str(&format!(" (series of namespace {} only)", key.namespace));
                }
                if changed(&key, "active", generation) {
                    tracing::info!(rule = %key, condition = %compiled.summary, "rule active");
                }
                // What the rule evaluates, defaults filled in (a band left at its
                // defaults differs between alerting and acting rules): RuleValid's
                // message in cluster mode, cut as Event notes are (a metric may be
                // 64 KiB of PromQL).
                let mut message = format!("evaluated on the stream: {}", compiled.summary);
                if let Some((cut, _)) = message.char_indices().nth(SUMMARY_CHARS) {
                    message.truncate(cut);
                    message.push('…');
                }
                rules.push(RuleStatus {
                    rule: key,
                    state: "active",
                    message: Some(message),
                    generation,
                });
                active.push(compiled);
            }
            Err(error) => {
                let state = match error {
                    CompileError::Invalid(_) => "invalid",
                    CompileError::Unsupported(_) => "unsupported",
                };
                if changed(&key, state, generation) {
                    tracing::warn!(rule = %key, state, reason = %error, "rule not evaluated");
                }
                rules.push(RuleStatus {
                    rule: key,
                    state,
                    message: Some(error.to_string()),
                    generation,
                });
            }
        }
    }
    CompiledSet {
        active,
        listing: RuleListing {
            rules,
            invalid_documents,
        },
    }
}

/// Sets `prophet_rules{state}` from a listing.
fn count_rules(metrics: &Metrics, listing: &RuleListing) {
    for state in ["active", "invalid", "unsupported"] {
        let n = listing.rules.iter().filter(|s| s.state == state).count();
        metrics
            .rules
            .get_or_create(&RuleStateLabels { state })
            .set(n as i64);
    }
}

/// What consumes the evaluator's verdicts and rule-set changes: handed the events and
/// the decision log, it returns the task that reconciles until the events end.
pub type ReconcileDriver = Box<
    dyn FnOnce(mpsc::UnboundedReceiver<EvalEvent>, DecisionLog) -> tokio::task::JoinHandle<()>
        + Send,
>;

/// Standalone mode's driver: decide each verdict and record it, acting on nothing.
pub fn dry_run_driver() -> ReconcileDriver {
    Box::new(|events, decisions| {
        tokio::spawn(crate::reconcile::run(
            events,
            Decider::new(HashMap::new(), true),
            Arc::new(DryRun { log: decisions }),
        ))
    })
}

impl Pipeline {
    /// Compiles the loaded rules (reporting each one that is invalid or unsupported) and
    /// starts eval and standalone reconcile. Must be called within a tokio runtime.
    pub fn start(report: &LoadReport, config: &PipelineConfig) -> Result<Self> {
        Self::start_with(report, config, dry_run_driver(), false)
    }

    /// [`Self::start`] with the given reconcile driver. With `rules_later` (cluster mode:
    /// the rules arrive once the caches are filled), saved state is kept aside and put
    /// back at the first rule-set update, and saved again as it was until then.
    pub fn start_with(
        report: &LoadReport,
        config: &PipelineConfig,
        driver: ReconcileDriver,
        rules_later: bool,
    ) -> Result<Self> {
        let CompiledSet { active, listing } = compile_set(
            report,
            config.compile,
            &config.tenancy,
            &RuleListing::default(),
        );
        let metrics = Arc::new(Metrics::new());
        count_rules(&metrics, &listing);
        let plans: HashMap<_, _> = active
            .iter()
            .map(|r| (r.key.clone(), r.plan.clone()))
            .collect();
        let settle_ms = i64::try_from(config.settle_delay.as_millis()).unwrap_or(i64::MAX);
        let mut evaluator =
            Evaluator::new(active, config.series_limit).with_settle_delay(settle_ms);
        let seed = RandomState::new().hash_one(0x5eed_u64);
        let router = Arc::new(evaluator.router(seed));
        let state_file = config.state_dir.as_ref().map(|dir| dir.join(STATE_FILE));
        let saved = state_file.as_deref().and_then(load_saved);
        let (kept, pending) = match saved {
            Some(saved) if rules_later => (HashSet::new(), Some(saved)),
            Some(saved) => (restore(&mut evaluator, saved, seed), None),
            None => (HashSet::new(), None),
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // Reconcile learns the rule set before any verdict of it.
        let _ = events_tx.send(EvalEvent::Rules(RuleSetChange { plans, kept }));
        let (eval, eval_thread) = crate::eval::spawn(
            evaluator,
            pending,
            seed,
            config.series_limit,
            metrics.clone(),
            events_tx,
            config.eval_queue,
        )
        .map_err(Error::Spawn)?;
        let decisions = DecisionLog::new(config.decisions_kept);
        let reconcile = driver(events_rx, decisions.clone());
        let state = Arc::new(AppState {
            limits: config.limits,
            router: RwLock::new(router),
            eval,
            ha: crate::ha::HaTracker::new(
                &config.ha,
                metrics.ha_failovers.clone(),
                metrics.ha_clusters.clone(),
            ),
            metrics,
            decisions,
            listing: RwLock::new(Arc::new(listing)),
            ready: AtomicBool::new(true),
            bodies_in_flight: crate::http::in_flight_budget(&config.limits),
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
            config: config.clone(),
            eval_thread,
            reconcile,
            state_file,
            saver,
        })
    }

    /// Replaces the rule set while running: rules that still read the same series the
    /// same way keep their windows and detector state; requests routed under the old set
    /// and not yet applied are refused with 503 (the sender retries them).
    pub async fn apply_rules(&self, report: &LoadReport) -> Result<()> {
        let CompiledSet { active, listing } = compile_set(
            report,
            self.config.compile,
            &self.config.tenancy,
            &self.state.current_listing(),
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let router = self
            .state
            .eval
            .replace_rules(active, now_ms)
            .await
            .map_err(|_| Error::EvaluatorStopped)?;
        count_rules(&self.state.metrics, &listing);
        tracing::info!(
            rules = listing.rules.len(),
            active = listing.rules.iter().filter(|r| r.state == "active").count(),
            "rule set updated"
        );
        self.state.swap_rules(router, listing);
        Ok(())
    }

    /// The end of a run in either mode, once the server and every other holder of the
    /// pipeline have stopped: drains it (the last state is saved) and returns how
    /// serving ended.
    pub async fn finish(pipeline: Arc<Self>, served: Result<()>) -> Result<()> {
        match Arc::try_unwrap(pipeline) {
            Ok(pipeline) => pipeline.drain().await,
            Err(_) => tracing::warn!("pipeline still shared at shutdown: state not saved"),
        }
        served?;
        tracing::info!("stopped");
        Ok(())
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
            let Ok(state) = eval_thread.join() else {
                return;
            };
            if let Some(path) = state_file {
                save(&path, &state);
            }
        })
        .await;
        let _ = self.reconcile.await;
    }
}

/// Reads the saved state, if there is any. A file that cannot be used (corrupt,
/// truncated, from another format) is reported and set aside, never fatal: the rules then
/// start afresh.
fn load_saved(path: &Path) -> Option<EvaluatorState> {
    if let Some(dir) = path.parent()
        && let Err(error) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot create the state folder");
    }
    match crate::state::load::<EvaluatorState>(path) {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no saved state: starting afresh");
            None
        }
        Ok(Some(state)) => Some(state),
        Err(error) => {
            tracing::warn!(kind = error.metric_label(), "saved state ignored: {error}");
            if error.is_unusable_file() {
                // Keep it for a post-mortem instead of overwriting it at the next save.
                let aside = path.with_extension("state.unusable");
                if let Err(error) = std::fs::rename(path, &aside) {
                    tracing::warn!(%error, "cannot move the unusable state file aside");
                }
            }
            None
        }
    }
}

/// Puts saved state back into the evaluator's rules; returns the rules restored.
fn restore(evaluator: &mut Evaluator, state: EvaluatorState, seed: u64) -> HashSet<RuleKey> {
    let mut kept = HashSet::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for outcome in evaluator.restore(state, seed, now_ms) {
        match outcome {
            Restored::Rule { rule, series } => {
                tracing::info!(%rule, series, "rule state restored");
                kept.insert(rule);
            }
            Restored::Dropped { rule, why } => {
                tracing::warn!(%rule, "saved rule state not restored: {why}");
            }
        }
    }
    kept
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
    let surfaces = crate::surfaces::Surfaces::load(config.surfaces.clone())?;
    let pipeline = Arc::new(Pipeline::start(&report, &config.pipeline)?);
    let (stop_reload, stopped) = tokio::sync::watch::channel(false);
    let reload = tokio::spawn(reload_rules(
        config.rules_dir.clone(),
        pipeline.clone(),
        config.rules_poll,
        stopped,
    ));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(
        addr = %local,
        rules = pipeline.state.current_listing().rules.len(),
        ingest = %surfaces.describe(),
        "listening on {local} (standalone, dry run: no cluster is contacted)"
    );
    let served = surfaces
        .serve(
            listener,
            pipeline.state.clone(),
            shutdown,
            config.serve,
            None,
        )
        .await;
    let _ = stop_reload.send(true);
    let _ = reload.await;
    Pipeline::finish(pipeline, served).await
}

/// One entry of a rules folder as [`folder_signature`] sees it.
pub(crate) type EntrySignature = (
    std::ffi::OsString,
    Option<u64>,
    Option<std::time::SystemTime>,
    Option<PathBuf>,
);

/// What the rules folder looks like now: each entry's name, size and modification time
/// (through links) and link target. A mounted ConfigMap changes by swapping its `..data`
/// link, which changes the target even where sizes and times would not. Also used to
/// follow credential and certificate files (`crate::follow`).
pub(crate) fn folder_signature(dir: &Path) -> Vec<EntrySignature> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut signature: Vec<EntrySignature> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| {
            let path = entry.path();
            let metadata = std::fs::metadata(&path).ok();
            (
                entry.file_name(),
                metadata.as_ref().map(|m| m.len()),
                metadata.and_then(|m| m.modified().ok()),
                std::fs::read_link(&path).ok(),
            )
        })
        .collect();
    signature.sort();
    signature
}

/// Re-reads the rules folder on SIGHUP and whenever it changes (checked every `every`),
/// and applies it as the new rule set. A folder that cannot be read keeps the rules as
/// they are.
async fn reload_rules(
    dir: PathBuf,
    pipeline: Arc<Pipeline>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = folder_signature(&dir);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hangups.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let why = tokio::select! {
            () = hangup => "SIGHUP",
            _ = ticks.tick() => {
                let now = folder_signature(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                "the folder changed"
            }
            _ = stop.changed() => return,
        };
        match load_dir(&dir) {
            Ok(report) => {
                tracing::info!(dir = %dir.display(), "re-reading the rules: {why}");
                if let Err(error) = pipeline.apply_rules(&report).await {
                    tracing::warn!(%error, "rules not applied");
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot re-read the rules; keeping the current ones");
            }
        }
    }
}
