//! Cluster mode (`prophet run --cluster`): the same pipeline as standalone mode, with
//! rules from the custom resources of the cluster instead of a folder, reconciles that
//! write each rule's status and Events, and one leader among the replicas. What differs
//! from standalone is only the rule source (reflectors of the three kinds, debounced
//! into whole rule-set updates), the reconcile driver (the ledger and the status
//! controller) and who may write (the leader); actions stay dry-run for now.
//!
//! Availability first: the HTTP server listens before the API server has answered, so
//! ingest and evaluation never wait on it; rules appear once the caches are filled, and
//! an API server that goes away only delays status (the ledger holds the truth, and
//! every status converges once it is back).

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::StreamExt;

use crate::actuate::dispatch::{ActionConfig, ClusterActuator, PauseState};
use crate::actuate::{DecisionLog, DryRun};
use crate::eval::EvalEvent;
use crate::reconcile::Decider;
use crate::reconcile::controller::{self, Caches, Context, RuleResource};
use crate::reconcile::leader::{self, Leadership, LeaseConfig};
use crate::reconcile::ledger::Ledger;
use crate::rules::crd::ActionApproval;
use crate::rules::load::{LoadReport, RuleKey, RuleKind};
use crate::standalone::{Pipeline, PipelineConfig, ReconcileDriver};
use crate::{Error, Result};

/// Everything `prophet run --cluster` is told.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub listen: SocketAddr,
    pub pipeline: PipelineConfig,
    /// Connection limits and the shutdown grace of the HTTP server.
    pub serve: crate::serve::ServeLimits,
    /// Watch only these namespaces (a Role per namespace suffices); empty: all.
    pub namespaces: Vec<String>,
    /// The Lease to lead by; `None`: this replica always leads.
    pub lease: Option<LeaseConfig>,
    /// How long the rule source waits for a burst of changes to end (and at most 4×
    /// that) before it applies one rule-set update.
    pub debounce: Duration,
    /// How often live figures (SLO budgets) are read from the evaluator for status.
    pub figures_every: Duration,
    /// Decisions on samples older than this (against the wall clock) are stale.
    pub max_action_lag: Duration,
    /// Credentials, TLS and the listeners.
    pub surfaces: crate::surfaces::SurfaceConfig,
    /// What actions may do.
    pub actions: ActionConfig,
    /// Alertmanagers, the resend interval, PagerDuty's URL.
    pub notify: crate::actuate::alert::NotifierConfig,
    /// Hosts outbound calls may go to.
    pub allow_url_hosts: Vec<String>,
    /// The pause switch: a ConfigMap's namespace and name.
    pub control: (String, String),
    /// How long an ActionApproval stays in force.
    pub approval_ttl: Duration,
}

/// This replica's name: `POD_NAME` (the downward API), else the host name.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("prophet-{}", std::process::id()))
}

/// Resolves once `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts a reflector for `api`; every watch event (applied, deleted, relisted) wakes
/// `changed`. The cache keeps no `managedFields`.
fn reflect<K: RuleResource>(
    api: Api<K>,
    changed: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> Store<K> {
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|object| {
            object.meta_mut().managed_fields = None;
        });
    let stream = reflector::reflector(writer, events);
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut stop = pin!(stopped(stop));
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(error)) => {
                        tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying with backoff");
                    }
                    None => return,
                },
                () = &mut stop => return,
            }
        }
    });
    reader
}

/// Starts a reflector of the approvals of held actions; each approval seen wakes the
/// reconcile of the rule it names.
fn reflect_approvals(
    api: Api<ActionApproval>,
    ledger: Arc<Ledger>,
    stop: watch::Receiver<bool>,
) -> Store<ActionApproval> {
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|object| {
            object.metadata.managed_fields = None;
        });
    let stream = reflector::reflector(writer, events);
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut stop = pin!(stopped(stop));
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Apply(approval) | watcher::Event::InitApply(approval))) => {
                        ledger.mark(RuleKey {
                            kind: RuleKind::AnomalyAction,
                            namespace: approval.metadata.namespace.clone().unwrap_or_default(),
                            name: approval.spec.rule.clone(),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watch of ActionApprovals failed; retrying with backoff");
                    }
                    None => return,
                },
                () = &mut stop => return,
            }
        }
    });
    reader
}

fn apis<K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>>(
    client: &Client,
    namespaces: &[String],
) -> Vec<Api<K>> {
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// The reconcile driver of cluster mode: each verdict is decided and recorded (the
/// decision log), and goes into the ledger with its decision, where the leader's
/// reconcile takes the actions to do; each rule set updates the ledger.
fn cluster_driver(ledger: Arc<Ledger>, max_action_lag: Duration, dry_run: bool) -> ReconcileDriver {
    Box::new(
        move |mut events: mpsc::UnboundedReceiver<EvalEvent>, decisions: DecisionLog| {
            tokio::spawn(async move {
                let mut decider =
                    Decider::new(Default::default(), dry_run).with_max_action_lag(max_action_lag);
                let actuator = DryRun { log: decisions };
                while let Some(event) = events.recv().await {
                    match event {
                        EvalEvent::Rules(change) => {
                            decider.rules_changed(&change);
                            ledger.rules_changed(&change);
                        }
                        EvalEvent::Verdict(verdict) => {
                            let decision = decider.decide(&verdict);
                            ledger.record(&verdict, decision.as_ref());
                            if let Some(decision) = decision {
                                crate::actuate::Actuator::act(&actuator, decision);
                            }
                        }
                    }
                }
            })
        },
    )
}

/// A fingerprint of what the rule set is built from: which resources, at which spec
/// generation. Status writes change neither, so they never rebuild the rule set.
fn rule_set_signature(caches: &Caches) -> Vec<(RuleKind, String, String, Option<i64>)> {
    fn add<K: RuleResource>(
        stores: &[Store<K>],
        out: &mut Vec<(RuleKind, String, String, Option<i64>)>,
    ) {
        for store in stores {
            // Arcs of the cached objects: nothing is copied but the names.
            for object in store.state() {
                let meta = object.meta();
                out.push((
                    K::KIND,
                    meta.namespace.clone().unwrap_or_default(),
                    format!(
                        "{}/{}",
                        meta.name.as_deref().unwrap_or_default(),
                        meta.uid.as_deref().unwrap_or_default()
                    ),
                    // A deletion (with our finalizer on) wakes every rule's reconcile,
                    // which releases what the rule holds.
                    meta.generation.map(|g| {
                        if meta.deletion_timestamp.is_some() {
                            -g
                        } else {
                            g
                        }
                    }),
                ));
            }
        }
    }
    let mut signature = Vec::new();
    add(&caches.anomaly, &mut signature);
    add(&caches.predictive, &mut signature);
    add(&caches.slo, &mut signature);
    signature.sort();
    signature
}

/// How long the rule source waits for every watch to list before it applies what it has.
const CACHE_WAIT: Duration = Duration::from_secs(30);

/// Applies the cached resources as the rule set whenever they change, a burst of changes
/// (an ArgoCD sync of hundreds) as one update.
async fn rule_source(
    caches: Caches,
    changed: Arc<Notify>,
    pipeline: Arc<Pipeline>,
    ctx: Arc<Context>,
    debounce: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut stop_signal = pin!(stopped(stop));
    // Caches first: an empty cache is not "every rule deleted".
    let ready = async {
        for store in &caches.anomaly {
            let _ = store.wait_until_ready().await;
        }
        for store in &caches.predictive {
            let _ = store.wait_until_ready().await;
        }
        for store in &caches.slo {
            let _ = store.wait_until_ready().await;
        }
    };
    // One kind that never becomes ready (its CRD missing, RBAC for one namespace
    // missing) must not hold back every other rule: after a while the kinds that are
    // ready are applied, and the rest join when their watch lists.
    tokio::select! {
        waited = tokio::time::timeout(CACHE_WAIT, ready) => {
            if waited.is_err() {
                tracing::warn!(
                    "not every watch of the rules has listed within {}s (a CRD or RBAC missing?): applying the rules listed so far",
                    CACHE_WAIT.as_secs()
                );
            }
        }
        () = &mut stop_signal => return,
    }
    let mut applied = None;
    loop {
        let signature = rule_set_signature(&caches);
        if applied.as_ref() != Some(&signature) {
            let report = LoadReport {
                rules: caches.rules(),
                invalid: Vec::new(),
            };
            match pipeline.apply_rules(&report).await {
                Ok(()) => {
                    applied = Some(signature);
                    controller::mark_listed(&ctx);
                }
                Err(error) => {
                    tracing::warn!(%error, "rule set not applied");
                    return;
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = &mut stop_signal => return,
        }
        // Let the burst end: wait until `debounce` passes without a change, at most 4×.
        let deadline = tokio::time::Instant::now() + debounce * 4;
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(debounce) => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// Reads live figures from the evaluator every `every` for status.
async fn figures(ctx: Arc<Context>, every: Duration, stop: watch::Receiver<bool>) {
    let mut stop_signal = pin!(stopped(stop));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop_signal => return,
        }
        if let Ok(snapshots) = ctx.app.eval.snapshot().await {
            ctx.ledger.observe(&snapshots);
        }
    }
}

/// The notifier of alerts and webhooks, and its resend loop.
fn notifier(
    config: &ClusterConfig,
    stop: watch::Receiver<bool>,
) -> Result<(
    Arc<crate::actuate::alert::Notifier>,
    tokio::task::JoinHandle<()>,
)> {
    use crate::actuate::alert::Notifier;
    use crate::actuate::outbound::{Outbound, OutboundConfig};
    let outbound = Outbound::new(OutboundConfig {
        allow_hosts: config.allow_url_hosts.clone(),
        ..OutboundConfig::default()
    })
    .map_err(Error::Actions)?;
    let notifier = Notifier::new(outbound, config.notify.clone()).map_err(Error::Actions)?;
    let task = tokio::spawn(notifier.clone().run(stopped(stop)));
    Ok((notifier, task))
}

/// Follows the pause switch: the ConfigMap `control` (namespace, name), live. `paused:
/// "true"` pauses every action; `pausedNamespaces: "a,b"` those of the rules in these
/// namespaces. A missing ConfigMap pauses nothing.
async fn follow_pause_switch(
    client: Client,
    (namespace, name): (String, String),
    pause: Arc<std::sync::RwLock<PauseState>>,
    ledger: Arc<Ledger>,
    stop: watch::Receiver<bool>,
) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config).default_backoff();
    let mut events = pin!(events);
    let mut stop = pin!(stopped(stop));
    let set = |state: PauseState| {
        let changed = {
            let mut current = pause.write().unwrap_or_else(|e| e.into_inner());
            let changed = *current != state;
            if changed {
                tracing::warn!(paused = state.all, namespaces = ?state.namespaces, "the pause switch changed");
                *current = state;
            }
            changed
        };
        // What waited for the switch goes at once, not at its next retry.
        if changed {
            ledger.wake_intents();
            ledger.mark_all();
        }
    };
    let read = |map: &ConfigMap| {
        let data = map.data.clone().unwrap_or_default();
        PauseState {
            all: data.get("paused").is_some_and(|v| v.trim() == "true"),
            namespaces: data
                .get("pausedNamespaces")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            unknown: false,
        }
    };
    let mut seen_in_list = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map))) => {
                    seen_in_list = true;
                    set(read(&map));
                }
                Some(Ok(watcher::Event::Delete(_))) => set(PauseState::default()),
                Some(Ok(watcher::Event::Init)) => seen_in_list = false,
                Some(Ok(watcher::Event::InitDone)) => {
                    if !seen_in_list {
                        set(PauseState::default());
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, %namespace, %name, "cannot watch the pause switch; retrying");
                }
                None => return,
            },
            () = &mut stop => return,
        }
    }
}

/// Connects to the cluster, serves and reconciles until `shutdown` resolves; then drains
/// what was accepted before returning.
pub async fn run(
    config: ClusterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let surfaces = crate::surfaces::Surfaces::load(config.surfaces.clone())?;
    // Forged samples must not drive real actions: without --dry-run, ingest needs a
    // credential (or the explicit --allow-unauthenticated-write).
    surfaces.check_actions(!config.actions.dry_run)?;
    let client = Client::try_default().await.map_err(Error::Kube)?;
    // For --metrics-auth=kubernetes: reviews /metrics callers' tokens.
    let review_client = client.clone();
    let (stop_tx, stop) = watch::channel(false);
    let ledger = Ledger::new();
    let pipeline = Arc::new(Pipeline::start_with(
        &LoadReport::default(),
        &config.pipeline,
        cluster_driver(
            ledger.clone(),
            config.max_action_lag,
            config.actions.dry_run,
        ),
        true,
    )?);

    let changed = Arc::new(Notify::new());
    let caches = Caches {
        anomaly: apis(&client, &config.namespaces)
            .into_iter()
            .map(|api| reflect(api, changed.clone(), stop.clone()))
            .collect(),
        predictive: apis(&client, &config.namespaces)
            .into_iter()
            .map(|api| reflect(api, changed.clone(), stop.clone()))
            .collect(),
        slo: apis(&client, &config.namespaces)
            .into_iter()
            .map(|api| reflect(api, changed.clone(), stop.clone()))
            .collect(),
        approvals: apis(&client, &config.namespaces)
            .into_iter()
            .map(|api| reflect_approvals(api, ledger.clone(), stop.clone()))
            .collect(),
    };

    let (leadership, election) = match &config.lease {
        Some(lease) => {
            let api = Api::namespaced(client.clone(), &lease.namespace);
            let (leadership, task) = leader::spawn(api, lease.clone(), stopped(stop.clone()));
            (leadership, Some(task))
        }
        None => (Leadership::always(), None),
    };
    let identity = config
        .lease
        .as_ref()
        .map_or_else(default_identity, |l| l.identity.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "prophet".into(),
            instance: Some(identity.clone()),
        },
    );
    let pause = Arc::new(std::sync::RwLock::new(PauseState::unread()));
    let pause_switch = tokio::spawn(follow_pause_switch(
        client.clone(),
        config.control.clone(),
        pause.clone(),
        ledger.clone(),
        stop.clone(),
    ));
    let (notifier, notifier_task) = notifier(&config, stop.clone())?;
    // Actions get a client of their own that does not retry a 429 by itself: a
    // disruption budget's refusal must come back at once, to be reported and retried
    // with the action's own backoff, not hold the reconcile for minutes.
    let action_client = {
        let mut kube_config = kube::Config::infer()
            .await
            .map_err(|e| Error::Actions(format!("Kubernetes client config: {e}")))?;
        kube_config.default_retry = false;
        Client::try_from(kube_config).map_err(Error::Kube)?
    };
    let outbound =
        crate::actuate::outbound::Outbound::new(crate::actuate::outbound::OutboundConfig {
            allow_hosts: config.allow_url_hosts.clone(),
            ..Default::default()
        })
        .map_err(Error::Actions)?;
    let actuator = Arc::new(ClusterActuator::new(
        action_client,
        config.actions.clone(),
        notifier,
        outbound,
        pause,
    ));
    let ctx = Context::acting(
        client,
        caches.clone(),
        ledger,
        pipeline.state.clone(),
        leadership,
        recorder,
        actuator,
        config.max_action_lag,
        config.approval_ttl,
    );
    let reconciler = tokio::spawn(controller::run(ctx.clone(), stopped(stop.clone())));
    let source = tokio::spawn(rule_source(
        caches,
        changed,
        pipeline.clone(),
        ctx.clone(),
        config.debounce,
        stop.clone(),
    ));
    let live = tokio::spawn(figures(ctx.clone(), config.figures_every, stop.clone()));

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(
        addr = %local,
        %identity,
        namespaces = ?config.namespaces,
        leader_election = config.lease.is_some(),
        ingest = %surfaces.describe(),
        dry_run = config.actions.dry_run,
        "listening on {local} (cluster mode{})",
        if config.actions.dry_run {
            ", --dry-run: status and Events are written, nothing is acted on"
        } else {
            ""
        }
    );
    let served = surfaces
        .serve(
            listener,
            pipeline.state.clone(),
            shutdown,
            config.serve,
            Some(review_client),
        )
        .await;
    let _ = stop_tx.send(true);
    let _ = source.await;
    let _ = live.await;
    let _ = reconciler.await;
    let _ = pause_switch.await;
    let _ = notifier_task.await;
    if let Some(election) = election {
        let _ = election.await;
    }
    drop(ctx);
    Pipeline::finish(pipeline, served).await
}
