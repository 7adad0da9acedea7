//! The status controller of cluster mode: level-triggered reconciles of the three kinds,
//! woken by the ledger (a verdict, a new rule set, new live figures) rather than polled.
//! A reconcile decides from the resource as the cache holds it, the rule as compiled and
//! the ledger's level state ([`super::status`], pure), and writes status with
//! server-side apply under one field manager only when the desired status differs from
//! the stored one; then it publishes the Events that transition stands for. Our own
//! status write changes no spec, so it never triggers a rule-set rebuild, and a
//! reconcile of an unchanged rule writes nothing: no loop.
//!
//! Gentle on the API server: one reconcile per rule at a time, at most
//! [`CONCURRENCY`] at once, status writes drawn from one token bucket
//! ([`WRITE_BUDGET_PER_SECOND`], whatever the number of resources), failures retried
//! with exponential backoff, and only the leader writes.
//!
//! When an actuator is given (cluster mode), a reconcile also acts: it takes the
//! rule's decided actions from the ledger and carries them out once per detection, sets
//! what the rule holds while tripped (an HPA claim, a chaos pause, a NodePool
//! reservation, alerts), records each action in `status.lastActions` and as Events on the
//! rule and on the object acted on, and keeps a finalizer on a rule that holds effects,
//! so deleting it undoes them first. Actions are retried with backoff and never repeated
//! once they succeeded (a new leader skips the detections its predecessor's status
//! records, and each action is idempotent on its target).
//!
//! RBAC: get, list, watch on the three kinds; patch on them (the finalizer) and on their
//! `status`; create and patch on `events.k8s.io` events; and what the actions use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::leader::Leadership;
use super::ledger::{Intent, Ledger, RuleLevel};
use super::status::{self, Observed, Transition};
use crate::actuate::dispatch::{Attempt, AttemptResult, ClusterActuator, RuleObject};
use crate::http::AppState;
use crate::metrics::{ControllerLabels, ReconcileLabels};
use crate::rules::crd::{ActionApproval, ActionRecord, PendingApproval};
use crate::rules::crd::{
    AnomalyAction, AnomalyActionStatus, PredictiveScale, PredictiveScaleStatus, SLOViolation,
    SLOViolationStatus,
};
use crate::rules::load::{Rule, RuleKey, RuleKind};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "prophet";

/// Reconciles running at once.
pub const CONCURRENCY: usize = 8;

/// Status writes per second across all resources, and the burst allowed.
pub const WRITE_BUDGET_PER_SECOND: f64 = 50.0;
const WRITE_BURST: f64 = 100.0;

/// What the three kinds have in common for the controller.
pub trait RuleResource:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    type Status: Serialize + DeserializeOwned + PartialEq + Clone + Send;
    const KIND: RuleKind;
    fn current_status(&self) -> Option<&Self::Status>;
    fn desired(current: Option<&Self::Status>, observed: &Observed<'_>) -> Option<Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn message(status: &Self::Status) -> Option<&str>;
    fn to_rule(&self) -> Rule;
    fn rule_object(&self) -> RuleObject<'_>;
    fn last_actions(status: &Self::Status) -> &[ActionRecord];
}

macro_rules! rule_resource {
    ($kind:ty, $status:ty, $rule_kind:expr, $desired:path, $object:path) => {
        impl RuleResource for $kind {
            type Status = $status;
            const KIND: RuleKind = $rule_kind;
            fn current_status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }
            fn desired(
                current: Option<&Self::Status>,
                observed: &Observed<'_>,
            ) -> Option<Self::Status> {
                $desired(current, observed)
            }
            fn conditions(status: &Self::Status) -> &[Condition] {
                &status.conditions
            }
            fn message(status: &Self::Status) -> Option<&str> {
                status.message.as_deref()
            }
            fn to_rule(&self) -> Rule {
                Rule::from(self.clone())
            }
            fn rule_object(&self) -> RuleObject<'_> {
                $object(self)
            }
            fn last_actions(status: &Self::Status) -> &[ActionRecord] {
                &status.last_actions
            }
        }
    };
}

rule_resource!(
    AnomalyAction,
    AnomalyActionStatus,
    RuleKind::AnomalyAction,
    status::anomaly_action,
    RuleObject::Anomaly
);
rule_resource!(
    PredictiveScale,
    PredictiveScaleStatus,
    RuleKind::PredictiveScale,
    status::predictive_scale,
    RuleObject::Predictive
);
rule_resource!(
    SLOViolation,
    SLOViolationStatus,
    RuleKind::SloViolation,
    status::slo_violation,
    RuleObject::Slo
);

/// The caches of the three kinds (one store per watched namespace, or one for all), and
/// of the approvals of held actions.
#[derive(Clone, Default)]
pub struct Caches {
    pub anomaly: Vec<Store<AnomalyAction>>,
    pub predictive: Vec<Store<PredictiveScale>>,
    pub slo: Vec<Store<SLOViolation>>,
    pub approvals: Vec<Store<ActionApproval>>,
}

fn find<K: RuleResource>(stores: &[Store<K>], key: &RuleKey) -> Option<Arc<K>> {
    let reference = ObjectRef::<K>::new(&key.name).within(&key.namespace);
    stores.iter().find_map(|s| s.get(&reference))
}

impl Caches {
    /// The approvals in force for one rule's held actions: naming the rule, created
    /// less than `ttl` ago.
    fn approvals_for(&self, rule: &RuleKey, ttl: Duration) -> Vec<Arc<ActionApproval>> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.approvals
            .iter()
            .flat_map(|store| store.state())
            .filter(|a| {
                a.metadata.namespace.as_deref() == Some(rule.namespace.as_str())
                    && a.spec.rule == rule.name
                    && a.metadata.deletion_timestamp.is_none()
                    && a.metadata
                        .creation_timestamp
                        .as_ref()
                        .is_some_and(|created| {
                            now.as_second().saturating_sub(created.0.as_second()) < ttl_seconds
                        })
            })
            .collect()
    }

    /// Every cached resource, as rules.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = Vec::new();
        for store in &self.anomaly {
            rules.extend(store.state().iter().map(|r| r.to_rule()));
        }
        for store in &self.predictive {
            rules.extend(store.state().iter().map(|r| r.to_rule()));
        }
        for store in &self.slo {
            rules.extend(store.state().iter().map(|r| r.to_rule()));
        }
        rules
    }
}

/// A token bucket for status writes.
struct WriteBudget {
    tokens: f64,
    at: Instant,
}

impl WriteBudget {
    /// Takes a token, or says how long until one is there (and reserves it: the caller
    /// must wait that long before writing, so waiting writers queue in order).
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.at).as_secs_f64() * WRITE_BUDGET_PER_SECOND)
            .min(WRITE_BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                -self.tokens / WRITE_BUDGET_PER_SECOND,
            ))
        }
    }
}

/// What reconciles share.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub ledger: Arc<Ledger>,
    pub app: Arc<AppState>,
    pub leadership: Leadership,
    pub recorder: Recorder,
    budget: Mutex<WriteBudget>,
    /// Failures in a row per rule, for backoff.
    failures: Mutex<HashMap<RuleKey, u32>>,
    /// The status this leader last wrote per rule (with the resource's uid): the cache
    /// lags a write by a moment, and a reconcile in that moment must not write the same
    /// status (and publish the same Events) again. Cleared when leadership is gained.
    written: Mutex<HashMap<RuleKey, (String, serde_json::Value)>>,
    /// Rules being reconciled now, and whether they were marked again meanwhile.
    in_flight: Mutex<HashMap<RuleKey, bool>>,
    /// When each rule last had an Event of each reason, for [`EVENT_INTERVAL`].
    events: Mutex<HashMap<(RuleKey, &'static str), Instant>>,
    /// Carries out actions; `None`: status and Events only.
    actuator: Option<Arc<ClusterActuator>>,
    /// Decided actions whose deciding sample is older than this are not done (a replica
    /// that just became leader holds what it decided as a standby).
    max_action_lag: Option<Duration>,
    /// Actions done and not yet in a written status, per rule, oldest first.
    unwritten: Mutex<HashMap<RuleKey, Vec<ActionRecord>>>,
    /// The newest failing action per rule (reason, message), until one succeeds.
    failing: Mutex<HashMap<RuleKey, (String, String)>>,
    /// The level state each rule's held actions were last set for.
    held: Mutex<HashMap<RuleKey, String>>,
    /// The spec generation each rule's held actions were last set for.
    held_generations: Mutex<HashMap<RuleKey, Option<i64>>>,
    /// Per rule, held actions and notifications failing in a row (for their backoff,
    /// which a successful status write does not reset), the failures recorded, and the
    /// time before which they are not tried again.
    level_failures: Mutex<HashMap<RuleKey, LevelFailures>>,
    /// The newest K8sGPT analysis per rule, until written.
    analysis: Mutex<HashMap<RuleKey, String>>,
    /// How long an ActionApproval stays in force after it is created.
    approval_ttl: Duration,
    /// Per rule, the ledger's trip count that the last status this leader wrote
    /// counted (violationCount).
    counted_trips: Mutex<HashMap<RuleKey, u64>>,
    /// Events held back by [`EVENT_INTERVAL`], published once it passed if the status
    /// they announce still holds (a flap must not leave a Tripped rule without its
    /// Event).
    suppressed: Mutex<HashMap<RuleKey, Vec<Transition>>>,
}

/// How long an ActionApproval stays in force by default.
pub const APPROVAL_TTL: Duration = Duration::from_secs(3600);

/// Held actions failing in a row, the failures recorded, and when to try again.
type LevelFailures = (u32, std::collections::HashSet<String>, Option<Instant>);

/// How long a deleted rule keeps trying to release what it holds before its finalizer
/// goes anyway.
pub const RELEASE_GRACE: Duration = Duration::from_secs(600);

/// The finalizer on a rule that holds side effects.
pub const FINALIZER: &str = "aiops.prophet.io/cleanup";

/// A rule gets at most one Event of a reason in this time: a series flapping around its
/// threshold changes status each time (status stays true), not the Event stream.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(60);

impl Context {
    /// Whether an Event of `reason` may be published for `rule` now.
    fn event_allowed(&self, rule: &RuleKey, reason: &'static str) -> bool {
        let now = Instant::now();
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(events.get(&(rule.clone(), reason)), Some(at) if now.duration_since(*at) < EVENT_INTERVAL)
    }

    /// Notes an Event published (a failed publish leaves the next one free to go).
    fn event_published(&self, rule: &RuleKey, reason: &'static str) {
        let now = Instant::now();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() > 10_000 {
            // Rules come and go: forget what no longer limits anything.
            events.retain(|_, at| now.duration_since(*at) < EVENT_INTERVAL);
        }
        events.insert((rule.clone(), reason), now);
    }
}

impl Context {
    pub fn new(
        client: Client,
        caches: Caches,
        ledger: Arc<Ledger>,
        app: Arc<AppState>,
        leadership: Leadership,
        recorder: Recorder,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            caches,
            ledger,
            app,
            leadership,
            recorder,
            budget: Mutex::new(WriteBudget {
                tokens: WRITE_BURST,
                at: Instant::now(),
            }),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            actuator: None,
            max_action_lag: None,
            unwritten: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            held_generations: Mutex::new(HashMap::new()),
            level_failures: Mutex::new(HashMap::new()),
            analysis: Mutex::new(HashMap::new()),
            approval_ttl: APPROVAL_TTL,
            counted_trips: Mutex::new(HashMap::new()),
            suppressed: Mutex::new(HashMap::new()),
        })
    }

    /// [`Self::new`], acting through `actuator`.
    #[allow(clippy::too_many_arguments)]
    pub fn acting(
        client: Client,
        caches: Caches,
        ledger: Arc<Ledger>,
        app: Arc<AppState>,
        leadership: Leadership,
        recorder: Recorder,
        actuator: Arc<ClusterActuator>,
        max_action_lag: Duration,
        approval_ttl: Duration,
    ) -> Arc<Self> {
        let mut ctx = Self::new(client, caches, ledger, app, leadership, recorder);
        if let Some(ctx) = Arc::get_mut(&mut ctx) {
            ctx.actuator = Some(actuator);
            ctx.max_action_lag = Some(max_action_lag);
            ctx.approval_ttl = approval_ttl;
        }
        ctx
    }
}

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("status write of {rule} failed: {source}")]
    Write { rule: RuleKey, source: kube::Error },
    /// Reading or updating the rule itself (its finalizer, its latest status) failed.
    #[error("cannot read or update {rule}: {source}")]
    Finalizer { rule: RuleKey, source: kube::Error },
    #[error("{rule} is being deleted and what it holds is not released yet: {message}")]
    Release { rule: RuleKey, message: String },
}

/// What a reconcile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// Status was already what it should be (or the resource is gone, or not compiled yet).
    Unchanged,
    Written,
    /// Not the leader: nothing written.
    Standby,
}

/// Reconciles one rule: writes its status if it should change, then its Events.
pub async fn reconcile(ctx: &Context, key: &RuleKey) -> Result<Reconciled, ReconcileError> {
    match key.kind {
        RuleKind::AnomalyAction => reconcile_kind(ctx, find(&ctx.caches.anomaly, key), key).await,
        RuleKind::PredictiveScale => {
            reconcile_kind(ctx, find(&ctx.caches.predictive, key), key).await
        }
        RuleKind::SloViolation => reconcile_kind(ctx, find(&ctx.caches.slo, key), key).await,
    }
}

async fn reconcile_kind<K: RuleResource>(
    ctx: &Context,
    resource: Option<Arc<K>>,
    key: &RuleKey,
) -> Result<Reconciled, ReconcileError> {
    if !ctx.leadership.is_leader() {
        return Ok(Reconciled::Standby);
    }
    let Some(resource) = resource else {
        return Ok(Reconciled::Unchanged);
    };
    if let Some(actuator) = ctx.actuator.clone() {
        if resource.meta().deletion_timestamp.is_some() {
            return finalize(ctx, &actuator, resource.as_ref(), key).await;
        }
        act(ctx, &actuator, resource.as_ref(), key).await?;
    }
    let uid = resource.meta().uid.clone().unwrap_or_default();
    let events_held_back = ctx
        .suppressed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(key);
    if events_held_back && let Some(status) = current_status(ctx, resource.as_ref(), key, &uid) {
        publish_held_back(ctx, resource.as_ref(), key, K::conditions(&status)).await;
    }
    let Some((current, desired, recorded)) = plan_status(ctx, resource.as_ref(), key, &uid) else {
        return Ok(Reconciled::Unchanged);
    };
    let wait = ctx.budget.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (current, desired, recorded) = match wait {
        Ok(()) => (current, desired, recorded),
        Err(wait) => {
            // The token is reserved: wait for it, holding this reconcile's slot, so at
            // most CONCURRENCY rules wait and the rest stay marked in the ledger; then
            // decide again from what the ledger holds by then.
            tokio::time::sleep(wait).await;
            match plan_status(ctx, resource.as_ref(), key, &uid) {
                Some(planned) => planned,
                None => return Ok(Reconciled::Unchanged),
            }
        }
    };
    let current = current.as_ref();
    // Fencing: the lease is checked again just before the write.
    if !ctx.leadership.is_leader() {
        return Ok(Reconciled::Standby);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    ctx.app.metrics.status_writes.inc();
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| ReconcileError::Write {
        rule: key.clone(),
        source,
    })?;
    // The trips this status counted.
    if let Some(level) = ctx.ledger.level(key) {
        ctx.counted_trips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), level.detections);
    }
    // What was recorded is written: forget it (newer records stay for the next write).
    if recorded > 0
        && let Some(records) = ctx
            .unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
    {
        records.drain(..recorded.min(records.len()));
    }
    ctx.analysis
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
    if let Ok(value) = serde_json::to_value(&desired) {
        ctx.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (uid.clone(), value));
    }
    let before = current.map_or(&[][..], |s| K::conditions(s));
    for transition in status::transitions(before, K::conditions(&desired), K::message(&desired)) {
        if !ctx.event_allowed(key, transition.reason) {
            hold_back(ctx, key, transition);
            continue;
        }
        if publish(ctx, resource.as_ref(), &transition).await {
            ctx.event_published(key, transition.reason);
        }
    }
    Ok(Reconciled::Written)
}

/// Keeps an Event the rate limit held back, and wakes the rule when it may go.
fn hold_back(ctx: &Context, key: &RuleKey, transition: Transition) {
    {
        let mut suppressed = ctx.suppressed.lock().unwrap_or_else(|e| e.into_inner());
        let held = suppressed.entry(key.clone()).or_default();
        held.retain(|t| t.reason != transition.reason);
        held.push(transition);
    }
    let ledger = ctx.ledger.clone();
    let key = key.clone();
    tokio::spawn(async move {
        tokio::time::sleep(EVENT_INTERVAL).await;
        ledger.mark(key);
    });
}

/// Publishes the Events held back for a rule whose time has come, if what they announce
/// still holds in `conditions`; drops those it no longer does.
async fn publish_held_back<K: RuleResource>(
    ctx: &Context,
    resource: &K,
    key: &RuleKey,
    conditions: &[Condition],
) {
    let due: Vec<Transition> = {
        let mut suppressed = ctx.suppressed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(held) = suppressed.get_mut(key) else {
            return;
        };
        held.retain(|t| status::transition_holds(t.reason, conditions));
        let (due, waiting): (Vec<Transition>, Vec<Transition>) = held
            .drain(..)
            .partition(|t| ctx.event_allowed(key, t.reason));
        *held = waiting;
        if held.is_empty() {
            suppressed.remove(key);
        }
        due
    };
    for transition in due {
        if publish(ctx, resource, &transition).await {
            ctx.event_published(key, transition.reason);
        }
    }
}

/// The status a rule has (as this leader last wrote it, or as the cache holds it), the
/// one it should have and how many action records it adds; `None` when nothing is to be
/// written.
fn plan_status<K: RuleResource>(
    ctx: &Context,
    resource: &K,
    key: &RuleKey,
    uid: &str,
) -> Option<(Option<K::Status>, K::Status, usize)> {
    let listing = ctx.app.current_listing();
    let compiled = listing.rules.iter().find(|r| r.rule == *key);
    let level: Option<RuleLevel> = ctx.ledger.level(key);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let records: Vec<ActionRecord> = entry(&ctx.unwritten, key).unwrap_or_default();
    let failure = entry(&ctx.failing, key);
    let analysis = entry(&ctx.analysis, key);
    let pending: Vec<PendingApproval> = if key.kind == RuleKind::AnomalyAction {
        ctx.ledger
            .awaiting(key)
            .iter()
            .filter_map(|intent| {
                Some(PendingApproval {
                    detection: intent.detection.clone(),
                    action: intent.decision.action.clone(),
                    targets: intent
                        .decision
                        .targets
                        .iter()
                        .map(|p| format!("Pod {}/{}", p.namespace, p.name))
                        .collect(),
                    series: intent.decision.series.to_string(),
                    detected_at: Time(
                        k8s_openapi::jiff::Timestamp::from_second(
                            intent.decision.sample_time_ms.div_euclid(1000),
                        )
                        .ok()?,
                    ),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let observed = Observed {
        compiled,
        level: level.as_ref(),
        generation: resource.meta().generation,
        now: &now,
        pending_approvals: &pending,
        new_trips: ctx
            .counted_trips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .zip(level.as_ref())
            .map(|(counted, level)| level.detections.saturating_sub(*counted)),
        actions: &records,
        action_failure: failure.as_ref().map(|(r, m)| (r.as_str(), m.as_str())),
        analysis: analysis.as_deref(),
    };
    let current = current_status(ctx, resource, key, uid);
    let desired = K::desired(current.as_ref(), &observed)?;
    (current.as_ref() != Some(&desired)).then_some((current, desired, records.len()))
}

/// Publishes one Event; whether it went.
async fn publish<K: RuleResource>(ctx: &Context, resource: &K, transition: &Transition) -> bool {
    let event = Event {
        type_: if transition.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: transition.reason.into(),
        note: Some(transition.note.clone()),
        action: "Evaluate".into(),
        secondary: None,
    };
    let reference = resource.object_ref(&());
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) => true,
        Err(error) => {
            // An Event is a courtesy: status already says it.
            tracing::warn!(%error, rule = %resource.name_any(), reason = transition.reason, "cannot publish Event");
            false
        }
    }
}

/// Carries out what a rule's actions call for now: its decided actions (once per
/// detection) and what it holds while tripped, then records every attempt (audit log,
/// metrics, Events, and `status.lastActions` through [`Context::unwritten`]).
async fn act<K: RuleResource>(
    ctx: &Context,
    actuator: &ClusterActuator,
    resource: &K,
    key: &RuleKey,
) -> Result<(), ReconcileError> {
    let rule = resource.rule_object();
    let acting_for_real = !actuator.config().dry_run && !rule.dry_run();
    let mut attempts: Vec<(Attempt, Option<Instant>)> = Vec::new();
    // Held actions someone approved join the due ones, with who approved them. Taken
    // before the level is read, so an intent recorded meanwhile finds its trip there.
    let mut due = ctx.ledger.take_intents(key);
    if key.kind == RuleKind::AnomalyAction {
        let awaiting = ctx.ledger.awaiting(key);
        if !awaiting.is_empty() {
            let approvals = ctx.caches.approvals_for(key, ctx.approval_ttl);
            for held in awaiting {
                let Some(approval) = approvals
                    .iter()
                    .find(|a| a.spec.detection == held.detection)
                else {
                    continue;
                };
                if let Some(mut intent) = ctx.ledger.take_approved(key, &held.detection) {
                    intent.approver = Some(approval.spec.approver.clone());
                    due.push(intent);
                }
            }
        }
    }
    let level = ctx.ledger.level(key);
    let tripped = level.as_ref().is_some_and(|l| l.tripped_count() > 0);
    // What was done already, as status records it. A leader that has not written this
    // rule's status in its term reads it from the API server rather than the cache,
    // which may lag the previous leader's last write: it must not act again on a
    // detection its predecessor acted on a moment ago.
    let fresh_term = !ctx
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(key);
    let mut done_before = resource
        .current_status()
        .map(|s| K::last_actions(s).to_vec())
        .unwrap_or_default();
    if !due.is_empty() && fresh_term {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
        match api.get(&key.name).await {
            Ok(latest) => {
                done_before = latest
                    .current_status()
                    .map(|s| K::last_actions(s).to_vec())
                    .unwrap_or_default();
                // The status this reconcile writes builds on this copy, not the cache's.
                if let (Some(status), Some(uid)) =
                    (latest.current_status(), latest.meta().uid.clone())
                    && let Ok(value) = serde_json::to_value(status)
                {
                    ctx.written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), (uid, value));
                }
            }
            Err(error) => {
                // Not knowing what was done, nothing is done now: tried again shortly.
                ctx.ledger.requeue(key, due);
                return Err(ReconcileError::Finalizer {
                    rule: key.clone(),
                    source: error,
                });
            }
        }
    }
    // What is no longer to be done is recorded and dropped: a detection whose series
    // cleared (or tripped anew), a first try on a sample too old (decided while a
    // standby), one already done (by an earlier leader, as status says), a target acted
    // on within the cooldown (status keeps it across restarts).
    let cooldown = match resource.rule_object() {
        RuleObject::Anomaly(r) => Duration::from_secs(r.spec.remediation.cooldown_seconds),
        _ => Duration::ZERO,
    };
    let now_s = k8s_openapi::jiff::Timestamp::now().as_second();
    let mut todo = Vec::new();
    for intent in due {
        let series = intent.decision.series.to_string();
        let still_tripped = level
            .as_ref()
            .and_then(|l| l.tripped.get(&series))
            .is_some_and(|at| *at == intent.decision.sample_time_ms);
        let already = done_before.iter().any(|r| {
            r.detection.as_deref() == Some(intent.detection.as_str())
                && (r.result == "Succeeded" || r.result == "Unchanged")
        });
        let target = intent
            .decision
            .targets
            .first()
            .map(|p| format!("Pod {}/{}", p.namespace, p.name));
        let cooling = target.as_ref().and_then(|target| {
            done_before.iter().find(|r| {
                r.result == "Succeeded"
                    && r.target == *target
                    && now_s.saturating_sub(r.time.0.as_second())
                        < i64::try_from(cooldown.as_secs()).unwrap_or(i64::MAX)
            })
        });
        let dropped = if already {
            None
        } else if !still_tripped {
            Some((
                "NoLongerTripped",
                "the detection is over (its series cleared or tripped anew) before it was acted on"
                    .to_owned(),
            ))
        } else if intent.attempts == 0 && intent.approver.is_none() && stale(ctx, &intent) {
            Some((
                "Stale",
                "its deciding sample is older than --max-action-lag (decided while a standby, or waiting too long): not acted on".to_owned(),
            ))
        } else if let Some(record) = cooling {
            Some((
                "Cooldown",
                format!(
                    "{} was acted on at {} (status.lastActions), within the cooldown",
                    record.target, record.time.0
                ),
            ))
        } else {
            todo.push(intent);
            continue;
        };
        if let Some((reason, message)) = dropped {
            let mut attempt = Attempt::skipped(
                &intent.decision.action,
                target.as_deref().unwrap_or(&series),
                &intent.detection,
                reason,
                message,
            );
            attempt.approver.clone_from(&intent.approver);
            attempts.push((attempt, None));
        }
    }
    // The finalizer goes on before the first effect is held, so deleting the rule can
    // never leave an effect behind.
    if acting_for_real
        && rule.holds_effects()
        && (tripped || !todo.is_empty())
        && !has_finalizer(resource)
        && let Err(error) = add_finalizer::<K>(ctx, key).await
    {
        ctx.ledger.requeue(key, todo);
        record(ctx, resource, key, attempts).await;
        return Err(error);
    }
    let mut retry = Vec::new();
    // Fencing: an action runs only while this replica leads, checked before each.
    if !todo.is_empty() && ctx.leadership.is_leader() {
        let leading = || ctx.leadership.is_leader();
        let actings = actuator.act_on_all(rule, &todo, &leading).await;
        // Those not tried (leadership lost on the way) wait in the ledger.
        let mut todo = todo.into_iter();
        let tried: Vec<Intent> = todo.by_ref().take(actings.len()).collect();
        ctx.ledger.requeue(key, todo.collect());
        for (mut intent, acting) in tried.into_iter().zip(actings) {
            if let Some(analysis) = acting.analysis {
                ctx.analysis
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), analysis);
            }
            let mut again: Option<Attempt> = None;
            for mut attempt in acting.attempts {
                attempt.approver.clone_from(&intent.approver);
                if attempt.retry() {
                    // A failure repeated with the same reason is recorded once.
                    let repeated = intent.attempts > 0 && intent.last_failure == attempt.reason;
                    again = Some(attempt.clone());
                    if repeated {
                        continue;
                    }
                }
                attempts.push((attempt, Some(intent.arrived)));
            }
            if let Some(failed) = again {
                intent.attempts = intent.attempts.saturating_add(1);
                let wait = failed
                    .retry_after
                    .unwrap_or_else(|| backoff(intent.attempts))
                    .max(Duration::from_millis(200));
                intent.not_before = Some(Instant::now() + wait);
                intent.last_failure = failed.reason;
                retry.push((intent, wait));
            }
        }
    } else if !todo.is_empty() {
        ctx.ledger.requeue(key, todo);
    }
    // Held actions: set again only when the level they hold for changed, or the last
    // try failed or was refused (then with backoff, and recorded once per reason).
    let forecast = level
        .as_ref()
        .and_then(|l| l.last_forecast)
        .map(|f| format!("{:.3e}@{}", f.value, f.at_ms / 60_000))
        .unwrap_or_default();
    let signature = format!(
        "{}:{}:{:?}:{forecast}",
        tripped,
        level
            .as_ref()
            .and_then(|l| l.current_detection.as_ref())
            .map_or("", |(id, _)| id.as_str()),
        resource.meta().generation
    );
    let held_for = entry(&ctx.held, key);
    let mut level_attempts = Vec::new();
    // Held actions and notifications failing in a row wait out their backoff, however
    // often the rule is woken meanwhile.
    let backing_off = ctx
        .level_failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .and_then(|(_, _, not_before)| *not_before)
        .is_some_and(|t| Instant::now() < t);
    if held_for.as_deref() != Some(signature.as_str()) && ctx.leadership.is_leader() && !backing_off
    {
        // A spec edited while holding: what the old spec named is given back first.
        let generation = resource.meta().generation;
        let previous = entry(&ctx.held_generations, key);
        // A new term does not know what an earlier leader held for an older spec: an
        // SLO's strays are cheap to look for (they are only released, never re-set);
        // a PredictiveScale's release would churn its placeholders, so only a spec
        // change seen here gives its pools back.
        let moved = match previous {
            Some(previous) => previous != generation,
            None => key.kind == RuleKind::SloViolation,
        };
        let mut released_all = true;
        if moved {
            let released = actuator.release_moved(rule).await;
            released_all = !released
                .iter()
                .any(|a| a.retry() || a.result == AttemptResult::Refused);
            level_attempts.extend(released);
        }
        let held = actuator.hold(rule, level.as_ref()).await;
        if released_all {
            ctx.held_generations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), generation);
        }
        if !held
            .iter()
            .any(|a| a.retry() || a.result == AttemptResult::Refused)
        {
            ctx.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), signature);
        }
        level_attempts.extend(held);
    }
    if ctx.leadership.is_leader() && !backing_off {
        level_attempts.extend(actuator.notify(rule, level.as_ref()).await);
    }
    let level_retry = {
        let mut failing = ctx.level_failures.lock().unwrap_or_else(|e| e.into_inner());
        let unsettled: Vec<&Attempt> = level_attempts
            .iter()
            .filter(|a| a.retry() || a.result == AttemptResult::Refused)
            .collect();
        if unsettled.is_empty() {
            failing.remove(key);
            None
        } else {
            let (count, seen, not_before) = failing.entry(key.clone()).or_default();
            *count = count.saturating_add(1);
            let wait = backoff(*count);
            *not_before = Some(Instant::now() + wait);
            // The same failure again is recorded once; the retries go on quietly.
            level_attempts.retain(|a| {
                if !(a.retry() || a.result == AttemptResult::Refused) {
                    return true;
                }
                seen.insert(format!(
                    "{}|{}|{}",
                    a.action,
                    a.target,
                    a.reason.unwrap_or("")
                ))
            });
            Some(wait)
        }
    };
    attempts.extend(level_attempts.into_iter().map(|a| (a, None)));

    let retry_in = retry.iter().map(|(_, wait)| *wait).min();
    ctx.ledger
        .requeue(key, retry.into_iter().map(|(intent, _)| intent).collect());
    let wait = match (retry_in, level_retry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(wait) = wait {
        let ledger = ctx.ledger.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            ledger.mark(key);
        });
    }
    record(ctx, resource, key, attempts).await;
    Ok(())
}

/// Whether a decided action's deciding sample is too old to act on now.
fn stale(ctx: &Context, intent: &Intent) -> bool {
    let Some(lag) = ctx.max_action_lag else {
        return false;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    now_ms.saturating_sub(intent.decision.sample_time_ms)
        > i64::try_from(lag.as_millis()).unwrap_or(i64::MAX)
}

/// Records attempts: the audit log line, the metrics, the failing condition, the records
/// for status and the Events on the rule and on the object acted on.
async fn record<K: RuleResource>(
    ctx: &Context,
    resource: &K,
    key: &RuleKey,
    attempts: Vec<(Attempt, Option<Instant>)>,
) {
    if attempts.is_empty() {
        return;
    }
    let now = Time(
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    );
    let uid = resource.meta().uid.clone().unwrap_or_default();
    let kind = key.kind.as_str();
    let mut records = Vec::new();
    for (attempt, arrived) in &attempts {
        tracing::info!(
            target: "prophet::audit",
            rule = %key,
            rule_uid = %uid,
            action = %attempt.action,
            target = %attempt.target,
            target_uid = attempt.target_ref.as_ref().and_then(|t| t.uid.as_deref()).unwrap_or(""),
            result = attempt.result.as_str(),
            reason = attempt.reason.unwrap_or(""),
            detection = attempt.detection.as_deref().unwrap_or(""),
            version_before = attempt.version_before.as_deref().unwrap_or(""),
            version_after = attempt.version_after.as_deref().unwrap_or(""),
            approver = attempt.approver.as_deref().unwrap_or(""),
            message = %attempt.message,
            "action"
        );
        ctx.app
            .metrics
            .actions
            .get_or_create(&crate::metrics::ActionLabels {
                kind,
                action: attempt.action.clone(),
                result: attempt.result.metric(),
            })
            .inc();
        if let Some(arrived) = arrived
            && matches!(
                attempt.result,
                AttemptResult::Succeeded | AttemptResult::Unchanged
            )
        {
            ctx.app
                .metrics
                .action_latency
                .get_or_create(&crate::metrics::ActionKindLabels {
                    kind,
                    action: attempt.action.clone(),
                })
                .observe(arrived.elapsed().as_secs_f64());
        }
        records.push(attempt.record(&now, attempt.approver.as_deref()));
    }
    {
        let mut failing = ctx.failing.lock().unwrap_or_else(|e| e.into_inner());
        let failed = attempts
            .iter()
            .rev()
            .find(|(a, _)| matches!(a.result, AttemptResult::Failed | AttemptResult::Refused));
        match failed {
            Some((attempt, _)) => {
                failing.insert(
                    key.clone(),
                    (
                        attempt.reason.unwrap_or("ActionFailed").to_owned(),
                        format!("{} {}: {}", attempt.action, attempt.target, attempt.message),
                    ),
                );
            }
            None if attempts.iter().any(|(a, _)| {
                matches!(
                    a.result,
                    AttemptResult::Succeeded | AttemptResult::Unchanged
                )
            }) =>
            {
                failing.remove(key);
            }
            None => {}
        }
    }
    {
        let mut unwritten = ctx.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        let pending = unwritten.entry(key.clone()).or_default();
        pending.extend(records);
        // While status writes fail, only what status can show is kept.
        let excess = pending.len().saturating_sub(status::LAST_ACTIONS);
        pending.drain(..excess);
    }
    // K8sGPT's analysis of what was acted on goes into the Events of its actions too.
    let analysis = entry(&ctx.analysis, key);
    for (attempt, _) in &attempts {
        publish_action(ctx, resource, key, attempt, analysis.as_deref()).await;
    }
}

/// The Events of one action: on the rule, and on the object acted on when it changed.
async fn publish_action<K: RuleResource>(
    ctx: &Context,
    resource: &K,
    key: &RuleKey,
    attempt: &Attempt,
    analysis: Option<&str>,
) {
    let notification = matches!(attempt.action.as_str(), "alert" | "webhook");
    let (reason, warning): (&'static str, bool) = match attempt.result {
        // A delivery is a courtesy to announce: once a minute per rule at most.
        AttemptResult::Succeeded if notification => ("Notified", false),
        AttemptResult::Succeeded => ("Acted", false),
        AttemptResult::Unchanged => return,
        AttemptResult::DryRun => ("DryRun", false),
        AttemptResult::Refused => ("ActionRefused", true),
        AttemptResult::Failed => ("ActionFailed", true),
    };
    // Failures and deliveries are limited like status transitions; each change to an
    // object is an Event.
    let limited = warning || notification;
    if limited && !ctx.event_allowed(key, reason) {
        return;
    }
    let mut note = format!("{} {}: {}", attempt.action, attempt.target, attempt.message);
    if let Some(analysis) = analysis.filter(|_| attempt.result == AttemptResult::Succeeded) {
        note.push_str(&format!(" | K8sGPT: {analysis}"));
    }
    // The API server refuses an Event note over 1 KiB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.clone()),
        action: action_verb(&attempt.action).into(),
        secondary: None,
    };
    let reference = resource.object_ref(&());
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) if limited => ctx.event_published(key, reason),
        Ok(()) => {}
        Err(error) => {
            tracing::warn!(%error, rule = %key, "cannot publish the action's Event");
        }
    }
    if attempt.result == AttemptResult::Succeeded
        && let Some(target) = &attempt.target_ref
        && let Some(api_version) = api_version_of(&target.kind)
    {
        let on_target = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(target.kind.clone()),
            name: Some(target.name.clone()),
            namespace: target.namespace.clone(),
            uid: target.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            note: Some(format!("by {key}: {note}").chars().take(1000).collect()),
            secondary: Some(reference),
            ..event
        };
        if let Err(error) = ctx.recorder.publish(&event, &on_target).await {
            tracing::warn!(%error, rule = %key, "cannot publish the Event on the object acted on");
        }
    }
}

/// The Event `action` (UpperCamelCase, as events.k8s.io wants).
fn action_verb(action: &str) -> &'static str {
    match action {
        "evict" => "Evict",
        "rollout-restart" => "RolloutRestart",
        "scale" | "hpa-min-replicas" | "keda-min-replicas" => "Scale",
        "rollback" => "Rollback",
        "chaos-pause" => "PauseChaos",
        "chaos-resume" => "ResumeChaos",
        "alert" | "webhook" => "Notify",
        "release" => "Release",
        _ => "Act",
    }
}

fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" => "v1",
        "Deployment" | "StatefulSet" | "ReplicaSet" => "apps/v1",
        "HorizontalPodAutoscaler" => "autoscaling/v2",
        "ScaledObject" => "keda.sh/v1alpha1",
        "NodePool" => "karpenter.sh/v1",
        "Schedule" | "PodChaos" => "chaos-mesh.org/v1alpha1",
        _ => return None,
    })
}

fn has_finalizer<K: RuleResource>(resource: &K) -> bool {
    resource
        .meta()
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Adds Prophet's finalizer, keeping the others (a JSON patch appends to the list).
async fn add_finalizer<K: RuleResource>(
    ctx: &Context,
    key: &RuleKey,
) -> Result<(), ReconcileError> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let current = api
        .get(&key.name)
        .await
        .map_err(|source| ReconcileError::Finalizer {
            rule: key.clone(),
            source,
        })?;
    if has_finalizer(&current) {
        return Ok(());
    }
    let version = current.meta().resource_version.clone().unwrap_or_default();
    let operations = if current.meta().finalizers.is_some() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(operations).map_err(|e| ReconcileError::Release {
            rule: key.clone(),
            message: e.to_string(),
        })?;
    api.patch(
        &key.name,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|source| ReconcileError::Finalizer {
        rule: key.clone(),
        source,
    })?;
    Ok(())
}

/// A rule being deleted: undo what it holds, then let it go.
async fn finalize<K: RuleResource>(
    ctx: &Context,
    actuator: &ClusterActuator,
    resource: &K,
    key: &RuleKey,
) -> Result<Reconciled, ReconcileError> {
    if !has_finalizer(resource) {
        return Ok(Reconciled::Unchanged);
    }
    let attempts = actuator.release(resource.rule_object()).await;
    let failed: Vec<String> = attempts
        .iter()
        .filter(|a| a.retry() || a.result == AttemptResult::Refused)
        .map(|a| format!("{} {}: {}", a.action, a.target, a.message))
        .collect();
    record(
        ctx,
        resource,
        key,
        attempts.into_iter().map(|a| (a, None)).collect(),
    )
    .await;
    if !failed.is_empty() {
        // A release that keeps failing (RBAC taken away, a receiver gone for good) must
        // not hold the rule, or its namespace's deletion, forever: RELEASE_GRACE after
        // the deletion the finalizer goes anyway, said in a Warning Event.
        let deleting_for = resource.meta().deletion_timestamp.as_ref().map_or(0, |t| {
            k8s_openapi::jiff::Timestamp::now()
                .as_second()
                .saturating_sub(t.0.as_second())
        });
        if deleting_for < i64::try_from(RELEASE_GRACE.as_secs()).unwrap_or(i64::MAX) {
            return Err(ReconcileError::Release {
                rule: key.clone(),
                message: failed.join("; "),
            });
        }
        let transition = Transition {
            reason: "ReleaseAbandoned",
            warning: true,
            note: format!(
                "deleted {deleting_for}s ago and what it held could not all be released; left as is: {}",
                failed.join("; ")
            )
            .chars()
            .take(1000)
            .collect(),
        };
        publish(ctx, resource, &transition).await;
        tracing::warn!(rule = %key, deleting_for, left = %failed.join("; "), "finalizer removed without releasing everything");
    }
    if !ctx.leadership.is_leader() {
        return Ok(Reconciled::Standby);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let finalizers = resource.meta().finalizers.clone().unwrap_or_default();
    if let Some(index) = finalizers.iter().position(|f| f == FINALIZER) {
        let operations = serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
        ]);
        let patch: json_patch::Patch =
            serde_json::from_value(operations).map_err(|e| ReconcileError::Release {
                rule: key.clone(),
                message: e.to_string(),
            })?;
        match api
            .patch(
                &key.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Finalizer {
                    rule: key.clone(),
                    source,
                });
            }
        }
    }
    ctx.held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
    ctx.failing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
    ctx.unwritten
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
    tracing::info!(rule = %key, "released what the rule held; finalizer removed");
    Ok(Reconciled::Written)
}

fn controller_name(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::AnomalyAction => "anomalyaction",
        RuleKind::PredictiveScale => "predictivescale",
        RuleKind::SloViolation => "sloviolation",
    }
}

/// Runs reconciles as the ledger marks rules dirty, until `stop` resolves.
pub async fn run(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()> + Send) {
    let mut leadership = ctx.leadership.changes();
    // Whether an election is still running to follow (none with `--leader-elect=false`,
    // and none once it ended at shutdown): a closed channel would wake this loop at once,
    // again and again.
    let mut following = leadership.has_changed().is_ok();
    ctx.app
        .metrics
        .leader
        .set(i64::from(ctx.leadership.is_leader()));
    let running = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut reconciles = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    'run: loop {
        let election = async {
            if following {
                leadership.changed().await.is_ok()
            } else {
                std::future::pending().await
            }
        };
        let keys = tokio::select! {
            keys = ctx.ledger.take_dirty() => keys,
            open = election => {
                if !open {
                    following = false;
                }
                let leading = ctx.leadership.is_leader();
                ctx.app.metrics.leader.set(i64::from(leading));
                if open && *leadership.borrow_and_update() && leading {
                    // A new leader converges every status to the truth it holds now,
                    // from what the API server holds (another leader wrote meanwhile),
                    // and sets what rules hold again (each action is idempotent).
                    ctx.written.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.counted_trips
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    mark_listed(&ctx);
                } else if !leading {
                    // What this term had not written or done is the next leader's to
                    // decide from its own ledger and the written status.
                    ctx.unwritten.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.failing.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    // A later term starts from what the API server holds.
                    ctx.written.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.counted_trips
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    ctx.analysis.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    ctx.ledger.drop_intents();
                    if let Some(actuator) = &ctx.actuator {
                        actuator.stand_down();
                    }
                }
                continue;
            }
            () = &mut stop => break 'run,
        };
        // Finished reconciles leave the set as they go.
        while reconciles.try_join_next().is_some() {}
        for key in keys {
            {
                let mut in_flight = ctx.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(again) = in_flight.get_mut(&key) {
                    // One reconcile per rule at a time; this one runs again after it.
                    *again = true;
                    continue;
                }
                in_flight.insert(key.clone(), false);
            }
            let permit = tokio::select! {
                permit = running.clone().acquire_owned() => permit,
                () = &mut stop => break 'run,
            };
            let Ok(permit) = permit else { break 'run };
            let ctx = ctx.clone();
            reconciles.spawn(async move {
                let _permit = permit;
                reconcile_timed(&ctx, key.clone()).await;
                let again = ctx
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key)
                    .unwrap_or(false);
                if again {
                    ctx.ledger.mark(key);
                }
            });
        }
    }
    // At shutdown a reconcile may be waiting on an API server that does not answer; the
    // statuses converge at the next leader, and the pipeline must drain now.
    reconciles.abort_all();
    while reconciles.join_next().await.is_some() {}
}

/// Marks every rule of the current listing dirty, and forgets what was written for
/// rules no longer listed (resources come and go).
pub fn mark_listed(ctx: &Context) {
    let listing = ctx.app.current_listing();
    let listed: std::collections::HashSet<&RuleKey> =
        listing.rules.iter().map(|r| &r.rule).collect();
    ctx.written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|rule, _| listed.contains(rule));
    // Rules deleted without a finalizer leave nothing behind here either.
    forget_unlisted(&ctx.held, &listed);
    forget_unlisted(&ctx.held_generations, &listed);
    forget_unlisted(&ctx.level_failures, &listed);
    forget_unlisted(&ctx.failing, &listed);
    forget_unlisted(&ctx.unwritten, &listed);
    forget_unlisted(&ctx.analysis, &listed);
    forget_unlisted(&ctx.suppressed, &listed);
    for rule in &listing.rules {
        ctx.ledger.mark(rule.rule.clone());
    }
}

/// The status a rule has: as this leader last wrote it (the cache lags a write by a
/// moment), else as the cache holds it.
fn current_status<K: RuleResource>(
    ctx: &Context,
    resource: &K,
    key: &RuleKey,
    uid: &str,
) -> Option<K::Status> {
    ctx.written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .filter(|(written_uid, _)| written_uid == uid)
        .and_then(|(_, value)| serde_json::from_value(value.clone()).ok())
        .or_else(|| resource.current_status().cloned())
}

/// A copy of one rule's entry in a per-rule map.
fn entry<V: Clone>(map: &Mutex<HashMap<RuleKey, V>>, key: &RuleKey) -> Option<V> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned()
}

/// Drops the entries of rules no longer listed from a per-rule map.
fn forget_unlisted<V>(
    map: &Mutex<HashMap<RuleKey, V>>,
    listed: &std::collections::HashSet<&RuleKey>,
) {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|rule, _| listed.contains(rule));
}

async fn reconcile_timed(ctx: &Arc<Context>, key: RuleKey) {
    let controller = controller_name(key.kind);
    let started = Instant::now();
    let result = reconcile(ctx, &key).await;
    ctx.app
        .metrics
        .reconcile_time
        .get_or_create(&ControllerLabels { controller })
        .observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.app
        .metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            controller,
            result: label,
        })
        .inc();
    let retry_in = match result {
        Ok(_) => {
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            return;
        }
        Err(error) => {
            ctx.app
                .metrics
                .reconcile_errors
                .get_or_create(&ControllerLabels { controller })
                .inc();
            let failures = {
                let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
                let n = failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            let conflict = matches!(&error, ReconcileError::Write { source: kube::Error::Api(e), .. } if e.code == 409);
            if conflict {
                tracing::debug!(%error, "status conflict; retrying");
            } else {
                tracing::warn!(%error, failures, "reconcile failed; retrying with backoff");
            }
            backoff(failures)
        }
    };
    let ledger = ctx.ledger.clone();
    tokio::spawn(async move {
        tokio::time::sleep(retry_in).await;
        ledger.mark(key);
    });
}

/// 200 ms doubling per failure in a row, at most a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(9).saturating_sub(1)))
        .min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(9), Duration::from_millis(51_200));
        assert_eq!(backoff(40), Duration::from_millis(51_200));
    }

    #[test]
    fn the_write_budget_does_not_grow_with_the_number_of_rules() {
        let mut budget = WriteBudget {
            tokens: WRITE_BURST,
            at: Instant::now(),
        };
        let waits: Vec<Duration> = (0..1_000)
            .map(|_| budget.take().err().unwrap_or_default())
            .collect();
        // The burst at once, then one write per 1/rate each, in order: the thousandth
        // waits about (1000 - burst) / rate, however many rules there are.
        assert_eq!(
            waits[..WRITE_BURST as usize - 1].iter().max(),
            Some(&Duration::ZERO)
        );
        let last = waits[999].as_secs_f64();
        let expected = (1_000.0 - WRITE_BURST) / WRITE_BUDGET_PER_SECOND;
        assert!(
            (expected - 1.0..=expected).contains(&last),
            "{last} vs {expected}"
        );
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "in order");
    }
}

/// The API calls of a reconcile against a mock API server, in kube-rs's controller-rs
/// style: each scenario asserts every request's method, path and body and answers as
/// the API server would, including the errors a real one will not produce on demand.
#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::http::{RuleListing, RuleStatus};
    use crate::labels::Labels;
    use crate::reconcile::leader::Leadership;
    use crate::rules::load::LoadReport;
    use crate::standalone::{Pipeline, PipelineConfig};
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use kube::runtime::events::Reporter;
    use kube::runtime::watcher;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn rule_key() -> RuleKey {
        RuleKey {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
        }
    }

    fn resource(status: Option<AnomalyActionStatus>) -> AnomalyAction {
        let mut rule: AnomalyAction = serde_json::from_value(serde_json::json!({
            "apiVersion": "aiops.prophet.io/v1alpha1",
            "kind": "AnomalyAction",
            "metadata": {"name": "memory", "namespace": "shop", "generation": 1, "uid": "u-1", "resourceVersion": "7"},
            "spec": {"metric": "m", "threshold": "> 1", "remediation": {"type": "alert"}},
        }))
        .unwrap();
        rule.status = status;
        rule
    }

    /// A context whose caches hold `rule`, whose rule set lists it as active and whose
    /// ledger holds `tripped` series; requests go to the returned mock.
    async fn context(
        rule: AnomalyAction,
        tripped: &[&str],
        leader: bool,
    ) -> (Arc<Context>, Handle, Pipeline) {
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(rule));
        let pipeline = Pipeline::start(&LoadReport::default(), &PipelineConfig::default()).unwrap();
        let listing = RuleListing {
            rules: vec![RuleStatus {
                rule: rule_key(),
                state: "active",
                message: None,
                generation: Some(1),
            }],
            invalid_documents: Vec::new(),
        };
        pipeline
            .state
            .swap_rules(pipeline.state.current_router(), listing);
        let ledger = Ledger::new();
        for (i, pod) in tripped.iter().enumerate() {
            ledger.record(
                &crate::eval::Verdict {
                    rule: rule_key(),
                    change: crate::eval::Change::Tripped,
                    series: Labels::from_pairs([("__name__", "m"), ("pod", pod)]),
                    value: Some(2.0),
                    sample_time_ms: 1_700_000_000_000 + i as i64,
                    reason: "m > 1".into(),
                    targets: Vec::new(),
                    untargeted: None,
                    forecast: None,
                    arrived: Instant::now(),
                },
                None,
            );
        }
        let leadership = if leader {
            Leadership::always()
        } else {
            Leadership::never()
        };
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "prophet".into(),
                instance: Some("test".into()),
            },
        );
        let caches = Caches {
            anomaly: vec![reader],
            ..Caches::default()
        };
        let ctx = Context::new(
            client,
            caches,
            ledger,
            pipeline.state.clone(),
            leadership,
            recorder,
        );
        (ctx, handle, pipeline)
    }

    async fn body_json(request: Request<Body>) -> serde_json::Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Expects the status patch; answers `status` (200 echoes the patch back).
    async fn expect_status_patch(handle: &mut Handle, answer: StatusCode) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("a status patch");
        assert_eq!(request.method(), Method::PATCH);
        let uri = request.uri().to_string();
        assert!(
            uri.starts_with(
                "/apis/aiops.prophet.io/v1alpha1/namespaces/shop/anomalyactions/memory/status?"
            ),
            "{uri}"
        );
        assert!(
            uri.contains("fieldManager=prophet") && uri.contains("force=true"),
            "{uri}"
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let patch = body_json(request).await;
        let response = if answer.is_success() {
            let mut object = serde_json::to_value(resource(None)).unwrap();
            object["status"] = patch["status"].clone();
            Response::builder()
                .status(answer)
                .body(Body::from(serde_json::to_vec(&object).unwrap()))
        } else {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "refused by the test", "reason": "Conflict", "code": answer.as_u16(),
            });
            Response::builder()
                .status(answer)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
        };
        send.send_response(response.unwrap());
        patch
    }

    async fn expect_event(handle: &mut Handle) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("an Event");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/shop/events"
        );
        let event = body_json(request).await;
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&event).unwrap()))
                .unwrap(),
        );
        event
    }

    #[tokio::test]
    async fn a_trip_patches_status_then_publishes_one_event() {
        let (ctx, mut handle, _pipeline) = context(resource(None), &["web-1"], true).await;
        let verifier = tokio::spawn(async move {
            let patch = expect_status_patch(&mut handle, StatusCode::OK).await;
            assert_eq!(patch["apiVersion"], "aiops.prophet.io/v1alpha1");
            assert_eq!(patch["kind"], "AnomalyAction");
            assert_eq!(patch["status"]["phase"], "Detected");
            assert_eq!(patch["status"]["observedGeneration"], 1);
            let tripped = patch["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Tripped")
                .unwrap()
                .clone();
            assert_eq!(tripped["status"], "True");
            assert!(tripped["message"].as_str().unwrap().contains("web-1"));
            let event = expect_event(&mut handle).await;
            assert_eq!(event["reason"], "Tripped");
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["regarding"]["name"], "memory");
            assert_eq!(event["regarding"]["kind"], "AnomalyAction");
            handle
        });
        let done = reconcile(&ctx, &rule_key()).await.unwrap();
        assert_eq!(done, Reconciled::Written);
        let mut handle = tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .unwrap()
            .unwrap();
        // Reconciled again before the cache saw the write: nothing is sent twice.
        assert_eq!(
            reconcile(&ctx, &rule_key()).await.unwrap(),
            Reconciled::Unchanged
        );
        handle.send_error(std::io::Error::other("no request was expected"));
    }

    #[tokio::test]
    async fn a_conflict_or_a_refusal_is_an_error_to_retry_never_a_crash() {
        for code in [
            StatusCode::CONFLICT,
            StatusCode::FORBIDDEN,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let (ctx, mut handle, _pipeline) = context(resource(None), &["web-1"], true).await;
            let verifier = tokio::spawn(async move {
                expect_status_patch(&mut handle, code).await;
                // The retry writes the same status again, then the Event: none was
                // published for the status that was not written.
                let patch = expect_status_patch(&mut handle, StatusCode::OK).await;
                assert_eq!(patch["status"]["phase"], "Detected");
                let event = expect_event(&mut handle).await;
                assert_eq!(event["reason"], "Tripped");
            });
            let error = reconcile(&ctx, &rule_key()).await.unwrap_err();
            match &error {
                ReconcileError::Write {
                    source: kube::Error::Api(status),
                    ..
                } => assert_eq!(status.code, code.as_u16()),
                other => panic!("{code}: {other}"),
            }
            assert_eq!(
                reconcile(&ctx, &rule_key()).await.unwrap(),
                Reconciled::Written
            );
            tokio::time::timeout(Duration::from_secs(5), verifier)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_flapping_rule_changes_status_each_time_but_gets_one_event_a_minute() {
        let (ctx, mut handle, _pipeline) = context(resource(None), &["web-1"], true).await;
        let verifier = tokio::spawn(async move {
            let tripped = expect_status_patch(&mut handle, StatusCode::OK).await;
            assert_eq!(tripped["status"]["phase"], "Detected");
            assert_eq!(expect_event(&mut handle).await["reason"], "Tripped");
            let resolved = expect_status_patch(&mut handle, StatusCode::OK).await;
            assert_eq!(resolved["status"]["phase"], "Resolved");
            assert_eq!(expect_event(&mut handle).await["reason"], "Resolved");
            // Tripped again within the minute: the status says so, no second Event.
            let again = expect_status_patch(&mut handle, StatusCode::OK).await;
            assert_eq!(again["status"]["phase"], "Detected");
            handle
        });
        let series = |change| crate::eval::Verdict {
            rule: rule_key(),
            change,
            series: Labels::from_pairs([("__name__", "m"), ("pod", "web-1")]),
            value: Some(2.0),
            sample_time_ms: 1_700_000_100_000,
            reason: "m > 1".into(),
            targets: Vec::new(),
            untargeted: None,
            forecast: None,
            arrived: Instant::now(),
        };
        assert_eq!(
            reconcile(&ctx, &rule_key()).await.unwrap(),
            Reconciled::Written
        );
        ctx.ledger
            .record(&series(crate::eval::Change::Cleared), None);
        assert_eq!(
            reconcile(&ctx, &rule_key()).await.unwrap(),
            Reconciled::Written
        );
        ctx.ledger
            .record(&series(crate::eval::Change::Tripped), None);
        assert_eq!(
            reconcile(&ctx, &rule_key()).await.unwrap(),
            Reconciled::Written
        );
        let mut handle = tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .unwrap()
            .unwrap();
        handle.send_error(std::io::Error::other("no request was expected"));
    }

    #[tokio::test]
    async fn a_standby_and_an_unchanged_status_send_nothing() {
        let (standby, _handle, _pipeline) = context(resource(None), &["web-1"], false).await;
        assert_eq!(
            reconcile(&standby, &rule_key()).await.unwrap(),
            Reconciled::Standby
        );

        // The status the leader would write is already there.
        let (probe, _h, _p) = context(resource(None), &[], true).await;
        let listing = probe.app.current_listing();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let current = status::anomaly_action(
            None,
            &Observed {
                compiled: listing.rules.first(),
                level: probe.ledger.level(&rule_key()).as_ref(),
                generation: Some(1),
                now: &now,
                actions: &[],
                action_failure: None,
                analysis: None,
                pending_approvals: &[],
                new_trips: None,
            },
        );
        let (ctx, _handle, _pipeline) = context(resource(current), &[], true).await;
        assert_eq!(
            reconcile(&ctx, &rule_key()).await.unwrap(),
            Reconciled::Unchanged
        );
    }
}
