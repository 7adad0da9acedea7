//! The cluster actuator: what a rule's spec asks for, turned into calls of the action
//! modules, behind the checks that hold for every action whatever its kind — the global
//! and per-rule dry run, the live pause switch, the global budget of actions per minute,
//! and one lock per target across rules (two rules tripping on one pod restart it once).
//! It decides nothing about *whether* to act (reconcile did, from the verdicts), and it
//! never writes a rule's status: it answers [`Attempt`]s, which reconcile records.
//!
//! Two shapes of action:
//! - **per detection** ([`ClusterActuator::act_on`]): an AnomalyAction's `restart` or
//!   `scale`, an SLO's `rollback` — done once for each detection reconcile hands over;
//! - **held while tripped** ([`ClusterActuator::hold`]): an SLO's HPA claim and chaos
//!   pause, a PredictiveScale's NodePool reservation, alerts — set while the rule is
//!   tripped and undone when it clears or the resource is deleted
//!   ([`ClusterActuator::release`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Client, Resource};

use super::alert::{self, Alert, Notifier, WebhookTarget};
use super::hpa::{self, MinReplicas};
use super::{ActError, Acted, Actor, TargetRef, chaos, k8sgpt, nodepool, rollback, workload};
use crate::reconcile::ledger::{Intent, RuleLevel};
use crate::rules::crd::{
    ActionRecord, AnomalyAction, PredictiveScale, RemediationType, SLOViolation, ScaleAction,
    SloActionType, TargetResourceType, WebhookFormat,
};
use crate::rules::load::{RuleKey, RuleKind};

/// What the operator allows actions to do.
#[derive(Debug, Clone)]
pub struct ActionConfig {
    /// `--dry-run`: decide, record, publish Events; change nothing.
    pub dry_run: bool,
    /// `--allow-cross-namespace`.
    pub allow_cross_namespace: bool,
    /// `--max-actions-per-minute`: every action that changes something draws from it.
    pub max_actions_per_minute: u32,
    /// `--k8sgpt-namespace`: where the K8sGPT operator writes its Results; `None`: read
    /// them in every namespace.
    pub k8sgpt_namespace: Option<String>,
}

impl Default for ActionConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            allow_cross_namespace: false,
            max_actions_per_minute: 30,
            k8sgpt_namespace: None,
        }
    }
}

/// The pause switch, live: the whole cluster, or some namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseState {
    pub all: bool,
    pub namespaces: HashSet<String>,
    /// The switch has not been read yet (at start, or its watch fails): nothing acts
    /// until it is, so a restart in the middle of an incident cannot act past a pause.
    pub unknown: bool,
}

impl PauseState {
    /// Not read yet: everything held.
    pub fn unread() -> Self {
        Self {
            unknown: true,
            ..Self::default()
        }
    }

    pub fn pauses(&self, namespace: &str) -> bool {
        self.unknown || self.all || self.namespaces.contains(namespace)
    }
}

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// Already as wanted, or held back by another rule's action on the same target.
    Unchanged,
    DryRun,
    Refused,
    Failed,
}

impl AttemptResult {
    /// As written in `status.lastActions[].result`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::Unchanged => "Unchanged",
            Self::DryRun => "DryRun",
            Self::Refused => "Refused",
            Self::Failed => "Failed",
        }
    }

    /// As the `result` label of `prophet_actions_total`.
    pub fn metric(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Unchanged => "unchanged",
            Self::DryRun => "dry-run",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// One action tried, for status, the Events, the audit log and the metrics.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub action: String,
    /// The object acted on (or meant to be).
    pub target: String,
    pub target_ref: Option<TargetRef>,
    pub result: AttemptResult,
    pub message: String,
    /// CamelCase, for a refusal or failure.
    pub reason: Option<&'static str>,
    pub detection: Option<String>,
    pub retry_after: Option<Duration>,
    pub version_before: Option<String>,
    pub version_after: Option<String>,
    /// Who approved the action, for a rule with `requireApproval`.
    pub approver: Option<String>,
}

impl Attempt {
    fn from_result(
        action: &str,
        target: &str,
        detection: Option<&str>,
        result: Result<Acted, ActError>,
    ) -> Self {
        match result {
            Ok(acted) => Self {
                action: acted.action.to_owned(),
                target: acted.target.to_string(),
                result: if acted.changed {
                    AttemptResult::Succeeded
                } else {
                    AttemptResult::Unchanged
                },
                message: acted.summary,
                reason: None,
                detection: detection.map(str::to_owned),
                retry_after: None,
                version_before: acted.version_before,
                version_after: acted.version_after,
                target_ref: Some(acted.target),
                approver: None,
            },
            Err(error) => {
                let (result, retry_after) = match &error {
                    ActError::Refused { .. } => (AttemptResult::Refused, None),
                    ActError::Failed { retry_after, .. } => (AttemptResult::Failed, *retry_after),
                };
                Self {
                    action: action.to_owned(),
                    target: target.to_owned(),
                    target_ref: None,
                    result,
                    reason: Some(error.reason()),
                    message: error.to_string(),
                    detection: detection.map(str::to_owned),
                    retry_after,
                    version_before: None,
                    version_after: None,
                    approver: None,
                }
            }
        }
    }

    fn not_done(
        action: &str,
        target: &str,
        detection: Option<&str>,
        result: AttemptResult,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            action: action.to_owned(),
            target: target.to_owned(),
            target_ref: None,
            result,
            message,
            reason: Some(reason),
            detection: detection.map(str::to_owned),
            retry_after: None,
            version_before: None,
            version_after: None,
            approver: None,
        }
    }

    /// An action not done because it is no longer to be done (the detection is over,
    /// its sample too old, its target in cooldown): recorded, not a failure.
    pub fn skipped(
        action: &str,
        target: &str,
        detection: &str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self::not_done(
            action,
            target,
            Some(detection),
            AttemptResult::Unchanged,
            reason,
            message,
        )
    }

    /// Whether the action should be tried again later.
    pub fn retry(&self) -> bool {
        self.result == AttemptResult::Failed
    }

    /// The line in `status.lastActions`.
    pub fn record(&self, at: &Time, approver: Option<&str>) -> ActionRecord {
        ActionRecord {
            time: at.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            target_uid: self.target_ref.as_ref().and_then(|t| t.uid.clone()),
            result: self.result.as_str().to_owned(),
            message: (!self.message.is_empty()).then(|| truncate(&self.message, 512)),
            detection: self.detection.clone(),
            approver: approver.map(str::to_owned),
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The rule resource an action is for, whatever its kind.
#[derive(Clone, Copy)]
pub enum RuleObject<'a> {
    Anomaly(&'a AnomalyAction),
    Predictive(&'a PredictiveScale),
    Slo(&'a SLOViolation),
}

impl RuleObject<'_> {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::Anomaly(r) => r.meta(),
            Self::Predictive(r) => r.meta(),
            Self::Slo(r) => r.meta(),
        }
    }

    fn kind(&self) -> RuleKind {
        match self {
            Self::Anomaly(_) => RuleKind::AnomalyAction,
            Self::Predictive(_) => RuleKind::PredictiveScale,
            Self::Slo(_) => RuleKind::SloViolation,
        }
    }

    fn key(&self) -> RuleKey {
        let meta = self.meta();
        RuleKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The resource's own `dryRun`.
    pub fn dry_run(&self) -> bool {
        match self {
            Self::Anomaly(r) => r.spec.dry_run,
            Self::Predictive(r) => r.spec.dry_run,
            Self::Slo(r) => r.spec.dry_run,
        }
    }

    /// Whether the rule can hold side effects that deleting it must undo (an HPA claim,
    /// a paused experiment, NodePool changes, placeholders, firing alerts): such a
    /// resource carries Prophet's finalizer.
    pub fn holds_effects(&self) -> bool {
        match self {
            Self::Anomaly(r) => {
                r.spec.remediation.type_ != RemediationType::Restart || has_webhook_anomaly(r)
            }
            Self::Predictive(_) => true,
            Self::Slo(r) => {
                r.spec.enable_chaos
                    || r.spec.webhook_url.as_deref().is_some_and(|u| !u.is_empty())
                    || r.spec.webhook_secret_ref.is_some()
                    || r.spec
                        .actions
                        .iter()
                        .any(|a| matches!(a.type_, SloActionType::Scale | SloActionType::Alert))
            }
        }
    }
}

fn has_webhook_anomaly(r: &AnomalyAction) -> bool {
    r.spec.webhook_url.as_deref().is_some_and(|u| !u.is_empty())
        || r.spec.webhook_secret_ref.is_some()
}

/// A token bucket of actions per minute.
struct ActionBudget {
    tokens: f64,
    at: Instant,
    per_minute: f64,
}

impl ActionBudget {
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let per_second = self.per_minute / 60.0;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * per_second)
            .min(self.per_minute.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / per_second.max(f64::MIN_POSITIVE),
            ))
        }
    }
}

/// Each rule's webhook target and when it was read.
type WebhookCache = HashMap<RuleKey, (Instant, Option<Arc<WebhookTarget>>)>;

/// How long a webhook target read from a Secret is reused before it is read again (a
/// rotated Secret takes effect within this).
const WEBHOOK_TTL: Duration = Duration::from_secs(60);

/// Most characters of a K8sGPT analysis kept in status, the Event and the alert.
const ANALYSIS_CHARS: usize = 1_000;

/// How long a K8sGPT analysis may take; it is asked after the action, never before.
const ANALYSIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Carries out actions against the cluster (and the notification endpoints).
pub struct ClusterActuator {
    client: Client,
    config: ActionConfig,
    notifier: Arc<Notifier>,
    /// Calls out of the cluster besides notifications (Grafana annotations).
    outbound: super::outbound::Outbound,
    pause: Arc<RwLock<PauseState>>,
    budget: Mutex<ActionBudget>,
    /// When each target was last changed, by any rule: the cross-rule lock.
    recent: Mutex<HashMap<String, Instant>>,
    webhooks: Mutex<WebhookCache>,
}

/// What acting on a rule came to.
#[derive(Debug, Default)]
pub struct Acting {
    pub attempts: Vec<Attempt>,
    /// K8sGPT's analysis of what was acted on.
    pub analysis: Option<String>,
}

impl ClusterActuator {
    pub fn new(
        client: Client,
        config: ActionConfig,
        notifier: Arc<Notifier>,
        outbound: super::outbound::Outbound,
        pause: Arc<RwLock<PauseState>>,
    ) -> Self {
        let per_minute = f64::from(config.max_actions_per_minute.max(1));
        Self {
            client,
            config,
            notifier,
            outbound,
            pause,
            budget: Mutex::new(ActionBudget {
                tokens: per_minute,
                at: Instant::now(),
                per_minute,
            }),
            recent: Mutex::new(HashMap::new()),
            webhooks: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ActionConfig {
        &self.config
    }

    /// This replica no longer leads: it forgets what it delivered, so it stops
    /// re-sending alerts (the new leader sends them; those it sent expire by `endsAt`).
    pub fn stand_down(&self) {
        self.notifier.clear();
    }

    fn actor(&self, rule: RuleObject<'_>) -> Actor {
        let meta = rule.meta();
        let allow_git_ops = match rule {
            RuleObject::Anomaly(r) => r.spec.allow_git_ops_managed,
            RuleObject::Slo(r) => r.spec.allow_git_ops_managed,
            // A NodePool's own annotations say who may change it.
            RuleObject::Predictive(_) => false,
        };
        Actor {
            kind: rule.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            allow_git_ops,
            allow_cross_namespace: self.config.allow_cross_namespace,
        }
    }

    /// Why nothing may change now, if so: dry run (global or the rule's) or the pause
    /// switch.
    fn held_back(&self, rule: RuleObject<'_>) -> Option<(AttemptResult, &'static str, String)> {
        if self.config.dry_run || rule.dry_run() {
            let why = if self.config.dry_run {
                "--dry-run: decided and recorded, nothing changed"
            } else {
                "dryRun: decided and recorded, nothing changed"
            };
            return Some((AttemptResult::DryRun, "DryRun", why.to_owned()));
        }
        let namespace = rule.meta().namespace.clone().unwrap_or_default();
        let paused = self
            .pause
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pauses(&namespace);
        paused.then(|| {
            let unread = self
                .pause
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .unknown;
            let message = if unread {
                "the pause switch (--control-configmap) has not been read yet: actions wait for it".to_owned()
            } else {
                format!(
                    "actions are paused (the pause switch, cluster-wide or for namespace {namespace}); retried when resumed"
                )
            };
            (AttemptResult::Failed, "Paused", message)
        })
    }

    /// Draws one action from the global budget.
    fn draw_budget(&self) -> Result<(), Duration> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// When `target` was changed within `cooldown`, by any rule.
    fn recently_changed(&self, target: &str, cooldown: Duration) -> Option<Duration> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(target)
            .map(Instant::elapsed)
            .filter(|ago| *ago < cooldown)
    }

    fn note_changed(&self, keys: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() > 10_000 {
            // Cooldowns are minutes: forget what can no longer hold anything back.
            recent.retain(|_, at| now.duration_since(*at) < Duration::from_secs(24 * 3600));
        }
        for key in keys {
            recent.insert(key, now);
        }
    }

    /// Acts on one detection of `rule` (an AnomalyAction's restart or scale, an SLO's
    /// rollback).
    pub async fn act_on(&self, rule: RuleObject<'_>, intent: &Intent) -> Acting {
        let detection = intent.detection.as_str();
        let action = intent.decision.action.clone();
        let target = intent
            .decision
            .targets
            .first()
            .map(|p| format!("Pod {}/{}", p.namespace, p.name))
            .or_else(|| intent.decision.object.clone())
            .unwrap_or_else(|| intent.decision.series.to_string());
        if let Some((result, reason, message)) = self.held_back(rule) {
            return Acting {
                attempts: vec![Attempt::not_done(
                    &action,
                    &target,
                    Some(detection),
                    result,
                    reason,
                    message,
                )],
                analysis: None,
            };
        }
        match rule {
            RuleObject::Anomaly(resource) => self.anomaly(resource, intent).await,
            RuleObject::Slo(resource) => Acting {
                attempts: self.slo_rollback(resource, detection).await,
                analysis: None,
            },
            // A PredictiveScale's actions are held while its forecast trips.
            RuleObject::Predictive(_) => Acting::default(),
        }
    }

    async fn anomaly(&self, resource: &AnomalyAction, intent: &Intent) -> Acting {
        let actor = self.actor(RuleObject::Anomaly(resource));
        let spec = &resource.spec;
        let detection = intent.detection.as_str();
        let cooldown = Duration::from_secs(spec.remediation.cooldown_seconds);
        let pods = &intent.decision.targets;
        let kind = spec
            .target
            .as_ref()
            .map(|t| t.resource_type)
            .unwrap_or_default();
        let mut attempts = Vec::new();
        // The targets another rule changed within this rule's cooldown are left alone.
        let mut free = Vec::new();
        for pod in pods {
            let key = format!("Pod {}/{}", pod.namespace, pod.name);
            match self.recently_changed(&key, cooldown) {
                Some(ago) => attempts.push(Attempt::not_done(
                    &intent.decision.action,
                    &key,
                    Some(detection),
                    AttemptResult::Unchanged,
                    "TargetLocked",
                    format!(
                        "{key} was acted on {}s ago (by this or another rule), within the cooldown",
                        ago.as_secs()
                    ),
                )),
                None => free.push(pod.clone()),
            }
        }
        // Alerts are held while tripped (see `notify`), not done per detection.
        if spec.remediation.type_ == RemediationType::Alert {
            return Acting::default();
        }
        // A pod outside `remediation.podSelector` is never acted on: the series may
        // lack the labels the selector names, so the live pod is checked.
        let mut selected = Vec::new();
        for pod in free {
            match self.outside_selector(spec, &pod).await {
                Some(refused) => attempts.push(Attempt::from_result(
                    &intent.decision.action,
                    &format!("Pod {}/{}", pod.namespace, pod.name),
                    Some(detection),
                    Err(refused),
                )),
                None => selected.push(pod),
            }
        }
        let free = selected;
        if free.is_empty() && !pods.is_empty() {
            return Acting {
                attempts,
                analysis: None,
            };
        }
        if let Err(wait) = self.draw_budget() {
            attempts.push(budget_exhausted(
                &intent.decision.action,
                &intent.decision.series.to_string(),
                detection,
                wait,
            ));
            return Acting {
                attempts,
                analysis: None,
            };
        }
        // Workload-wide actions (a rollout, a scale) are done once per rule and cooldown
        // window, whichever of the workload's pods tripped: the id is the window's; and
        // a workload any rule changed within the cooldown is left alone (two pods
        // tripping either side of a window's edge restart it once).
        let window = workload_detection(&actor, intent.decision.sample_time_ms, cooldown);
        let workload_wide =
            spec.remediation.type_ == RemediationType::Scale || kind != TargetResourceType::Pod;
        let named = spec.target.as_ref().and_then(|t| t.name.as_ref()).is_some();
        let owner = match free.first() {
            Some(pod) if workload_wide && !named => self.owner_of(pod).await,
            _ => None,
        };
        if let Some(owner) = &owner
            && let Some(ago) = self.recently_changed(owner, cooldown)
        {
            attempts.push(Attempt::not_done(
                &intent.decision.action,
                owner,
                Some(detection),
                AttemptResult::Unchanged,
                "TargetLocked",
                format!(
                    "{owner} was changed {}s ago (by this or another rule), within the cooldown",
                    ago.as_secs()
                ),
            ));
            return Acting {
                attempts,
                analysis: None,
            };
        }
        match spec.remediation.type_ {
            RemediationType::Restart => match kind {
                TargetResourceType::Pod => {
                    for (pod, result) in free
                        .iter()
                        .zip(workload::evict(&self.client, &actor, &free, detection).await)
                    {
                        let key = format!("Pod {}/{}", pod.namespace, pod.name);
                        attempts.push(Attempt::from_result("evict", &key, Some(detection), result));
                    }
                }
                TargetResourceType::Deployment | TargetResourceType::StatefulSet => {
                    let named = spec.target.as_ref().and_then(|t| t.name.clone());
                    let result = match (&named, free.first()) {
                        (Some(name), _) => {
                            let namespace = spec
                                .target
                                .as_ref()
                                .and_then(|t| t.namespace.clone())
                                .unwrap_or_else(|| actor.namespace.clone());
                            workload::rollout_restart_named(
                                &self.client,
                                &actor,
                                &namespace,
                                kind,
                                name,
                                &window,
                            )
                            .await
                        }
                        (None, Some(pod)) => {
                            workload::rollout_restart(&self.client, &actor, pod, kind, &window)
                                .await
                        }
                        (None, None) => Err(ActError::refused(
                            "NoTarget",
                            "the tripped series names no pod and the rule names no workload",
                        )),
                    };
                    attempts.push(Attempt::from_result(
                        "rollout-restart",
                        named.as_deref().unwrap_or("the pods' owner"),
                        Some(&window),
                        result,
                    ));
                }
            },
            RemediationType::Scale => {
                let step = spec.remediation.scale_step.unwrap_or(1).max(1);
                let max = spec.remediation.max_replicas.unwrap_or(10).max(1);
                let named = spec.target.as_ref().and_then(|t| t.name.clone());
                let result = match (&named, free.first()) {
                    (Some(name), _) => {
                        let namespace = spec
                            .target
                            .as_ref()
                            .and_then(|t| t.namespace.clone())
                            .unwrap_or_else(|| actor.namespace.clone());
                        hpa::scale_named(
                            &self.client,
                            &actor,
                            &namespace,
                            kind,
                            name,
                            step,
                            max,
                            spec.remediation.replicas,
                            &window,
                        )
                        .await
                    }
                    (None, Some(pod)) => {
                        hpa::scale(
                            &self.client,
                            &actor,
                            pod,
                            step,
                            max,
                            spec.remediation.replicas,
                            &window,
                        )
                        .await
                    }
                    (None, None) => Err(ActError::refused(
                        "NoTarget",
                        "the tripped series names no pod whose workload could be scaled",
                    )),
                };
                attempts.push(Attempt::from_result(
                    "scale",
                    "the pods' owner",
                    Some(&window),
                    result,
                ));
            }
            RemediationType::Alert => {}
        }
        let mut changed = changed_keys(&attempts, &free);
        // The workload is locked whichever way it was changed (directly, or through its
        // HPA or ScaledObject).
        if let Some(owner) = owner
            && !changed.is_empty()
        {
            changed.push(owner);
        }
        self.note_changed(changed);
        let analysis = match &spec.k8sgpt {
            Some(k8sgpt)
                if k8sgpt.enabled
                    && attempts
                        .iter()
                        .any(|a| a.result == AttemptResult::Succeeded) =>
            {
                let targets: Vec<(String, String)> = free
                    .iter()
                    .map(|p| ("Pod".to_owned(), p.name.clone()))
                    .chain(attempts.iter().filter_map(|a| {
                        a.target_ref
                            .as_ref()
                            .map(|t| (t.kind.clone(), t.name.clone()))
                    }))
                    .collect();
                let asked = async {
                    match k8sgpt.endpoint.as_deref().filter(|e| !e.is_empty()) {
                        // Opt-in: a K8sGPT server, through the outbound allow-list.
                        Some(endpoint) => {
                            k8sgpt::analysis_from_server(
                                &self.outbound,
                                endpoint,
                                &actor.namespace,
                                &targets,
                                ANALYSIS_CHARS,
                            )
                            .await
                        }
                        None => {
                            k8sgpt::analysis(
                                &self.client,
                                self.config.k8sgpt_namespace.as_deref(),
                                &actor.namespace,
                                &targets,
                                ANALYSIS_CHARS,
                            )
                            .await
                        }
                    }
                };
                match tokio::time::timeout(ANALYSIS_TIMEOUT, asked).await {
                    Ok(Ok(analysis)) => analysis,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, rule = %actor.describe(), "no K8sGPT analysis");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(rule = %actor.describe(), "K8sGPT analysis timed out");
                        None
                    }
                }
            }
            _ => None,
        };
        Acting { attempts, analysis }
    }

    /// The workload that owns `pod` (through its ReplicaSet for a Deployment), as
    /// `Kind namespace/name`, the key its changes are locked by; `None` when it cannot
    /// be read (the action itself then says why).
    async fn owner_of(&self, pod: &crate::eval::PodRef) -> Option<String> {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let live = pods.get_opt(&pod.name).await.ok()??;
        let owner = live
            .metadata
            .owner_references?
            .into_iter()
            .find(|o| o.controller == Some(true))?;
        if owner.kind != "ReplicaSet" {
            return Some(format!("{} {}/{}", owner.kind, pod.namespace, owner.name));
        }
        let sets: kube::Api<ReplicaSet> =
            kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let set = sets.get_opt(&owner.name).await.ok()??;
        let top = set
            .metadata
            .owner_references
            .into_iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        Some(match top {
            Some(top) => format!("{} {}/{}", top.kind, pod.namespace, top.name),
            None => format!("ReplicaSet {}/{}", pod.namespace, owner.name),
        })
    }

    /// Why `pod` may not be acted on under the rule's `remediation.podSelector`, if so
    /// (a pod already gone is left to the action, which says so).
    async fn outside_selector(
        &self,
        spec: &crate::rules::crd::AnomalyActionSpec,
        pod: &crate::eval::PodRef,
    ) -> Option<ActError> {
        let selector = &spec.remediation.pod_selector;
        if selector.is_empty() {
            return None;
        }
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let live = match api.get_opt(&pod.name).await {
            Ok(Some(live)) => live,
            Ok(None) => return None,
            Err(error) => {
                return Some(ActError::api(
                    format!("reading Pod {}/{} for its labels", pod.namespace, pod.name),
                    error,
                ));
            }
        };
        let labels = live.metadata.labels.unwrap_or_default();
        let mismatch: Vec<String> = selector
            .iter()
            .filter(|(k, v)| labels.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        (!mismatch.is_empty()).then(|| {
            ActError::refused(
                "OutsidePodSelector",
                format!(
                    "Pod {}/{} does not carry {} of remediation.podSelector",
                    pod.namespace,
                    pod.name,
                    mismatch.join(", ")
                ),
            )
        })
    }

    /// Acts on several detections of one rule at once. An AnomalyAction's pod restarts
    /// go out in one eviction call, so no more pods of one workload are evicted at once
    /// than its disruption budget allows (one without a budget), however many of its
    /// pods tripped together; the rest fail with `DisruptionBudget` and are retried.
    ///
    /// `leading` is asked before each action: once it says no, the rest are left (the
    /// answer is shorter than `intents`), for whoever leads to do.
    pub async fn act_on_all(
        &self,
        rule: RuleObject<'_>,
        intents: &[Intent],
        leading: &(dyn Fn() -> bool + Sync),
    ) -> Vec<Acting> {
        let batch = match rule {
            RuleObject::Anomaly(resource) => {
                resource.spec.remediation.type_ == RemediationType::Restart
                    && resource
                        .spec
                        .target
                        .as_ref()
                        .map(|t| t.resource_type)
                        .unwrap_or_default()
                        == TargetResourceType::Pod
                    && intents.len() > 1
                    && self.held_back(rule).is_none()
            }
            _ => false,
        };
        if let (true, RuleObject::Anomaly(resource)) = (batch, rule) {
            return self.evict_together(resource, intents).await;
        }
        let mut out = Vec::with_capacity(intents.len());
        for intent in intents {
            if !leading() {
                break;
            }
            out.push(self.act_on(rule, intent).await);
        }
        out
    }

    async fn evict_together(&self, resource: &AnomalyAction, intents: &[Intent]) -> Vec<Acting> {
        let actor = self.actor(RuleObject::Anomaly(resource));
        let cooldown = Duration::from_secs(resource.spec.remediation.cooldown_seconds);
        let mut out: Vec<Acting> = intents.iter().map(|_| Acting::default()).collect();
        // (intent index, pod) to evict.
        let mut chosen: Vec<(usize, crate::eval::PodRef)> = Vec::new();
        for (index, intent) in intents.iter().enumerate() {
            let detection = intent.detection.as_str();
            let Some(pod) = intent.decision.targets.first() else {
                continue;
            };
            let key = format!("Pod {}/{}", pod.namespace, pod.name);
            if let Some(ago) = self.recently_changed(&key, cooldown) {
                out[index].attempts.push(Attempt::not_done(
                    "evict",
                    &key,
                    Some(detection),
                    AttemptResult::Unchanged,
                    "TargetLocked",
                    format!(
                        "{key} was acted on {}s ago (by this or another rule), within the cooldown",
                        ago.as_secs()
                    ),
                ));
                continue;
            }
            if let Some(refused) = self.outside_selector(&resource.spec, pod).await {
                out[index].attempts.push(Attempt::from_result(
                    "evict",
                    &key,
                    Some(detection),
                    Err(refused),
                ));
                continue;
            }
            if let Err(wait) = self.draw_budget() {
                out[index]
                    .attempts
                    .push(budget_exhausted("evict", &key, detection, wait));
                continue;
            }
            chosen.push((index, pod.clone()));
        }
        if chosen.is_empty() {
            return out;
        }
        let pods: Vec<crate::eval::PodRef> = chosen.iter().map(|(_, p)| p.clone()).collect();
        // One record of what a StatefulSet had evicted, for the batch's cooldown window.
        let window = workload_detection(
            &actor,
            intents[chosen[0].0].decision.sample_time_ms,
            cooldown,
        );
        let results = workload::evict(&self.client, &actor, &pods, &window).await;
        for ((index, pod), result) in chosen.into_iter().zip(results) {
            let key = format!("Pod {}/{}", pod.namespace, pod.name);
            let detection = intents[index].detection.clone();
            out[index].attempts.push(Attempt::from_result(
                "evict",
                &key,
                Some(&detection),
                result,
            ));
        }
        let attempts: Vec<Attempt> = out.iter().flat_map(|a| a.attempts.clone()).collect();
        self.note_changed(changed_keys(&attempts, &[]));
        out
    }

    async fn slo_rollback(&self, resource: &SLOViolation, detection: &str) -> Vec<Attempt> {
        let spec = &resource.spec;
        if !spec
            .actions
            .iter()
            .any(|a| a.type_ == SloActionType::Rollback)
        {
            return Vec::new();
        }
        let actor = self.actor(RuleObject::Slo(resource));
        let target = match (&spec.target_ref, &spec.hpa_ref) {
            (Some(workload), _) => {
                if workload.kind != "Deployment" {
                    Err(ActError::refused(
                        "UnsupportedKind",
                        format!(
                            "rollback supports Deployments; targetRef names a {}",
                            workload.kind
                        ),
                    ))
                } else {
                    Ok((actor.namespace.clone(), workload.name.clone()))
                }
            }
            (None, Some(hpa)) => {
                let namespace = hpa
                    .namespace
                    .clone()
                    .unwrap_or_else(|| actor.namespace.clone());
                match super::guard::check_namespace(
                    &actor,
                    &namespace,
                    &format!("HorizontalPodAutoscaler {namespace}/{}", hpa.name),
                ) {
                    Ok(()) => {
                        rollback::rollback_target_of_hpa(&self.client, &namespace, &hpa.name).await
                    }
                    Err(refused) => Err(refused),
                }
            }
            (None, None) => Err(ActError::refused(
                "NoTarget",
                "rollback needs targetRef or hpaRef to know which Deployment to roll back",
            )),
        };
        let result = match target {
            Ok((namespace, name)) => {
                if let Err(wait) = self.draw_budget() {
                    return vec![budget_exhausted(
                        "rollback",
                        &format!("Deployment {namespace}/{name}"),
                        detection,
                        wait,
                    )];
                }
                rollback::rollback(&self.client, &actor, &namespace, &name, detection).await
            }
            Err(error) => Err(error),
        };
        let attempts = vec![Attempt::from_result(
            "rollback",
            "the SLO's Deployment",
            Some(detection),
            result,
        )];
        self.note_changed(changed_keys(&attempts, &[]));
        attempts
    }

    /// Sets the actions a rule holds while tripped, for its level state now: an SLO's
    /// HPA claim and chaos pause, a PredictiveScale's NodePool changes. Called when the
    /// level changed (tripped or cleared, a new detection) or a previous call failed.
    pub async fn hold(&self, rule: RuleObject<'_>, level: Option<&RuleLevel>) -> Vec<Attempt> {
        let tripped = level.is_some_and(|l| l.tripped_count() > 0);
        let detection = level
            .and_then(|l| l.current_detection.as_ref())
            .map(|(id, _)| id.clone());
        match rule {
            RuleObject::Anomaly(_) => Vec::new(),
            RuleObject::Slo(resource) => {
                self.hold_slo(rule, resource, tripped, detection.as_deref())
                    .await
            }
            RuleObject::Predictive(resource) => {
                self.hold_predictive(rule, resource, level, tripped, detection.as_deref())
                    .await
            }
        }
    }

    async fn hold_slo(
        &self,
        rule: RuleObject<'_>,
        resource: &SLOViolation,
        violated: bool,
        detection: Option<&str>,
    ) -> Vec<Attempt> {
        let spec = &resource.spec;
        let actor = self.actor(rule);
        let mut attempts = Vec::new();
        // Setting is held back (dry run, pause switch); giving back never is: it only
        // removes Prophet's own marks.
        let held_back = if violated { self.held_back(rule) } else { None };
        if let Some(hpa) = &spec.hpa_ref
            && let Some(scale) = spec
                .actions
                .iter()
                .find(|a| a.type_ == SloActionType::Scale)
        {
            let namespace = hpa
                .namespace
                .clone()
                .unwrap_or_else(|| actor.namespace.clone());
            let target = format!("HorizontalPodAutoscaler {namespace}/{}", hpa.name);
            let action = if violated {
                "hpa-min-replicas"
            } else {
                "release"
            };
            if let Some((result, reason, message)) = &held_back {
                attempts.push(Attempt::not_done(
                    action,
                    &target,
                    detection,
                    *result,
                    reason,
                    message.clone(),
                ));
            } else if violated {
                let want = match scale.value.as_deref().map(str::trim) {
                    None | Some("") | Some("increase") => Ok(MinReplicas::Step(1)),
                    Some(text) => text.parse::<i32>().map(MinReplicas::Exactly).map_err(|_| {
                        ActError::refused(
                            "InvalidValue",
                            format!(
                                "scale value {text:?} is neither `increase` nor a replica count"
                            ),
                        )
                    }),
                };
                let result = async {
                    let want = want?;
                    super::guard::check_namespace(&actor, &namespace, &target)?;
                    hpa::claim_min_replicas(
                        &self.client,
                        &actor,
                        &namespace,
                        &hpa.name,
                        want,
                        None,
                        detection.unwrap_or("violation"),
                    )
                    .await
                }
                .await;
                attempts.push(Attempt::from_result(action, &target, detection, result));
            } else {
                let result = hpa::release_claim(&self.client, &actor, &namespace, &hpa.name).await;
                if let Some(attempt) = released(action, &target, result) {
                    attempts.push(attempt);
                }
            }
        }
        if spec.enable_chaos
            && let Some(chaos) = &spec.chaos_ref
        {
            let target = format!("{} {}/{}", chaos.kind, actor.namespace, chaos.name);
            let action = if violated {
                "chaos-pause"
            } else {
                "chaos-resume"
            };
            if let Some((result, reason, message)) = &held_back {
                attempts.push(Attempt::not_done(
                    action,
                    &target,
                    detection,
                    *result,
                    reason,
                    message.clone(),
                ));
            } else if violated {
                let result =
                    chaos::set_paused(&self.client, &actor, &actor.namespace, chaos, true).await;
                attempts.push(Attempt::from_result(action, &target, detection, result));
            } else {
                // Healthy: this rule's claim goes (an experiment already gone is fine).
                let result = chaos::release(&self.client, &actor, &actor.namespace, chaos).await;
                attempts.extend(released(action, &target, result));
            }
        }
        attempts
    }

    async fn hold_predictive(
        &self,
        rule: RuleObject<'_>,
        resource: &PredictiveScale,
        level: Option<&RuleLevel>,
        tripped: bool,
        detection: Option<&str>,
    ) -> Vec<Attempt> {
        let spec = &resource.spec;
        let actor = self.actor(rule);
        let target = format!("NodePool {}", spec.node_pool_ref.name);
        let forecast = level.and_then(|l| l.last_forecast);
        let detection_id = detection.unwrap_or("forecast");
        let action = match (spec.action, tripped) {
            (ScaleAction::Provision, true) => "provision",
            (ScaleAction::Provision, false) | (ScaleAction::Consolidate, true) => "consolidate",
            (ScaleAction::Adjust, true) => "adjust",
            (ScaleAction::Consolidate, false) | (ScaleAction::Adjust, false) => return Vec::new(),
        };
        if let Some((result, reason, message)) = self.held_back(rule) {
            return vec![Attempt::not_done(
                action, &target, detection, result, reason, message,
            )];
        }
        let result = match action {
            "provision" => match &forecast {
                Some(forecast) => {
                    let now_ms = now_ms();
                    nodepool::provision(&self.client, &actor, spec, forecast, detection_id, now_ms)
                        .await
                }
                None => Err(ActError::failed(
                    "NoForecast",
                    "tripped without a forecast to size the reservation by",
                )),
            },
            "consolidate" => nodepool::consolidate(&self.client, &actor, spec, detection_id).await,
            _ => {
                let rising = forecast.is_some_and(|f| f.change_percent > 0.0);
                nodepool::adjust(&self.client, &actor, spec, rising, detection_id).await
            }
        };
        match result {
            // Nothing to change (the pool already as wanted, or nothing held to give
            // back): nothing to record either.
            Ok(acted) if acted.is_empty() => Vec::new(),
            Ok(acted) => {
                // Only what changed is recorded: setting a level again (a new term, a
                // moved forecast) mostly finds the pool as it was.
                let mut attempts: Vec<Attempt> = acted
                    .into_iter()
                    .filter(|a| a.changed)
                    .map(|a| Attempt::from_result(action, &target, detection, Ok(a)))
                    .collect();
                let changes: Vec<String> = attempts
                    .iter()
                    .filter(|a| a.result == AttemptResult::Succeeded)
                    .map(|a| format!("{}: {}", a.action, a.message))
                    .collect();
                if !changes.is_empty()
                    && let Some(annotated) = self
                        .annotate_grafana(resource, &actor, action, &changes.join("; "))
                        .await
                {
                    attempts.push(annotated);
                }
                attempts
            }
            Err(error) => vec![Attempt::from_result(action, &target, detection, Err(error))],
        }
    }

    /// Marks a forecast-driven change on the rule's Grafana (`grafanaEndpoint`), as an
    /// annotation tagged `prophet`, the rule and the action. A courtesy: a Grafana that
    /// fails is logged and never holds the action back or makes it retry.
    async fn annotate_grafana(
        &self,
        resource: &PredictiveScale,
        actor: &Actor,
        action: &str,
        text: &str,
    ) -> Option<Attempt> {
        let endpoint = resource
            .spec
            .grafana_endpoint
            .as_deref()?
            .trim_end_matches('/');
        if endpoint.is_empty() {
            return None;
        }
        let token = match &resource.spec.grafana_token_secret_ref {
            Some(secret) => match alert::secret_value(
                &self.client,
                &actor.namespace,
                secret,
                "grafanaTokenSecretRef",
            )
            .await
            {
                Ok(token) => Some(token),
                Err(error) => {
                    tracing::warn!(%error, rule = %actor.describe(), "no Grafana token: annotation not sent");
                    return None;
                }
            },
            None => None,
        };
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let body = serde_json::json!({
            "time": now_ms(),
            "tags": ["prophet", actor.describe(), action],
            "text": format!("Prophet {action} on NodePool {} ({}): {text}", resource.spec.node_pool_ref.name, actor.describe()),
        });
        let url = format!("{endpoint}/api/annotations");
        match self.outbound.post_json(&url, &headers, &body).await {
            Ok(_) => Some(Attempt::from_result(
                "grafana-annotation",
                "Grafana",
                None,
                Ok(Acted {
                    action: "grafana-annotation",
                    target: TargetRef {
                        kind: "Grafana".into(),
                        namespace: None,
                        name: super::outbound::host_of_str(&url),
                        uid: None,
                    },
                    version_before: None,
                    version_after: None,
                    changed: true,
                    summary: format!("{action} marked on Grafana"),
                }),
            )),
            Err(error) => {
                tracing::warn!(%error, rule = %actor.describe(), "Grafana annotation not sent");
                None
            }
        }
    }

    /// Delivers a rule's alerts and webhook notifications for its tripped series now
    /// (level-based: the notifier sends only what changed since it last delivered).
    pub async fn notify(&self, rule: RuleObject<'_>, level: Option<&RuleLevel>) -> Vec<Attempt> {
        let key = rule.key();
        let Some(settings) = NotifySettings::of(rule) else {
            return Vec::new();
        };
        if self.held_back(rule).is_some() {
            return Vec::new();
        }
        let actor = self.actor(rule);
        let webhook = match self.webhook(rule, &key, &actor, &settings).await {
            Ok(webhook) => webhook,
            Err(error) => {
                return vec![Attempt::from_result("webhook", "Webhook", None, Err(error))];
            }
        };
        let link = format!(
            "kubectl -n {} get {} {}",
            actor.namespace,
            actor.kind.as_str().to_ascii_lowercase(),
            actor.name
        );
        let firing: Vec<Alert> = match level {
            Some(level) if settings.alertmanager || webhook.is_some() => level
                .tripped
                .iter()
                .filter_map(|(text, at)| {
                    let labels = level.tripped_labels.get(text)?;
                    let reason = level
                        .last_decision
                        .as_ref()
                        .filter(|d| d.series.to_string() == *text)
                        .map_or_else(|| format!("{text} tripped"), |d| d.reason.clone());
                    let value = level
                        .last_decision
                        .as_ref()
                        .filter(|d| d.series.to_string() == *text)
                        .and_then(|d| d.value.clone());
                    Some(Alert::new(
                        &actor,
                        labels,
                        &settings.severity,
                        &reason,
                        value.as_deref(),
                        *at,
                        &link,
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        self.notifier
            .sync(&key, webhook.as_deref(), firing, now_ms())
            .await
            .into_iter()
            .map(|result| Attempt::from_result("alert", "Alertmanager", None, result))
            .collect()
    }

    async fn webhook(
        &self,
        rule: RuleObject<'_>,
        key: &RuleKey,
        actor: &Actor,
        settings: &NotifySettings,
    ) -> Result<Option<Arc<WebhookTarget>>, ActError> {
        let _ = rule;
        if settings.url.is_none() && settings.secret.is_none() {
            return Ok(None);
        }
        if let Some((at, target)) = self
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            && at.elapsed() < WEBHOOK_TTL
        {
            return Ok(target.clone());
        }
        let target = alert::webhook_target(
            &self.client,
            &actor.namespace,
            settings.url.as_deref(),
            settings.secret.as_ref(),
            settings.format,
        )
        .await?
        .map(Arc::new);
        self.webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (Instant::now(), target.clone()));
        Ok(target)
    }

    /// A rule whose spec changed: gives back what it holds on objects its spec no longer
    /// names (an SLO's former HPA or experiment, a PredictiveScale's former NodePools);
    /// what it still names is set again by [`Self::hold`]. Undoing is never held back by
    /// the pause switch: it only removes Prophet's own marks.
    pub async fn release_moved(&self, rule: RuleObject<'_>) -> Vec<Attempt> {
        let actor = self.actor(rule);
        let mut attempts = Vec::new();
        match rule {
            RuleObject::Slo(resource) => {
                let spec = &resource.spec;
                let current_hpa = spec
                    .hpa_ref
                    .as_ref()
                    .filter(|_| spec.actions.iter().any(|a| a.type_ == SloActionType::Scale))
                    .map(|h| {
                        (
                            h.namespace
                                .clone()
                                .unwrap_or_else(|| actor.namespace.clone()),
                            h.name.clone(),
                        )
                    });
                let other = current_hpa.as_ref().map(|(ns, _)| ns.clone());
                attempts.extend(
                    self.release_hpa_claims(&actor, other, current_hpa.as_ref())
                        .await,
                );
                let current_chaos = spec
                    .chaos_ref
                    .as_ref()
                    .filter(|_| spec.enable_chaos)
                    .map(|c| (c.kind.clone(), c.name.clone()));
                for kind in ["Schedule", "PodChaos"] {
                    for name in self.claimed_experiments(&actor, kind).await {
                        if current_chaos.as_ref() == Some(&(kind.to_owned(), name.clone())) {
                            continue;
                        }
                        let chaos = crate::rules::crd::ChaosRef {
                            kind: kind.to_owned(),
                            name,
                        };
                        let target = format!("{kind} {}/{}", actor.namespace, chaos.name);
                        let result =
                            chaos::release(&self.client, &actor, &actor.namespace, &chaos).await;
                        attempts.extend(released("chaos-resume", &target, result));
                    }
                }
            }
            // While held back (paused, dry run) `hold` would not set the pools again:
            // nothing is given back either.
            RuleObject::Predictive(_) if self.held_back(rule).is_some() => {}
            RuleObject::Predictive(resource) => {
                // Every pool carrying the rule's marks is given back; `hold` sets the
                // pools the spec names now again.
                attempts.extend(self.release_pools(&actor, resource).await);
            }
            RuleObject::Anomaly(_) => {}
        }
        attempts
    }

    /// The Chaos Mesh experiments of `kind` in the rule's namespace that the rule holds
    /// paused; none when Chaos Mesh is not installed or cannot be read.
    async fn claimed_experiments(&self, actor: &Actor, kind: &str) -> Vec<String> {
        use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
        let plural = if kind == "Schedule" {
            "schedules"
        } else {
            "podchaos"
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("chaos-mesh.org", "v1alpha1", kind),
            plural,
        );
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(self.client.clone(), &actor.namespace, &resource);
        let claim = format!("{}{}", chaos::PAUSED_BY_PREFIX, actor.claim_key());
        match api.list(&kube::api::ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|o| {
                    o.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(&claim))
                })
                .filter_map(|o| o.metadata.name)
                .collect(),
            Err(error) => {
                tracing::debug!(%error, kind, rule = %actor.describe(), "cannot list experiments to release");
                Vec::new()
            }
        }
    }

    /// Undoes what a rule holds (its resource is being deleted): HPA claims, a paused
    /// experiment, NodePool changes, firing alerts. Targets already gone are skipped.
    pub async fn release(&self, rule: RuleObject<'_>) -> Vec<Attempt> {
        let actor = self.actor(rule);
        let key = rule.key();
        let mut attempts: Vec<Attempt> = self
            .notifier
            .resolve_all(&key, now_ms())
            .await
            .into_iter()
            .map(|r| Attempt::from_result("alert", "Alertmanager", None, r))
            .collect();
        self.notifier.forget(&key);
        self.webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        match rule {
            RuleObject::Slo(resource) => {
                let spec = &resource.spec;
                if let Some(hpa) = &spec.hpa_ref {
                    let namespace = hpa
                        .namespace
                        .clone()
                        .unwrap_or_else(|| actor.namespace.clone());
                    let target = format!("HorizontalPodAutoscaler {namespace}/{}", hpa.name);
                    let result =
                        hpa::release_claim(&self.client, &actor, &namespace, &hpa.name).await;
                    attempts.extend(released("release", &target, result));
                }
                if let Some(chaos) = &spec.chaos_ref {
                    let target = format!("{} {}/{}", chaos.kind, actor.namespace, chaos.name);
                    let result =
                        chaos::release(&self.client, &actor, &actor.namespace, chaos).await;
                    attempts.extend(released("chaos-resume", &target, result));
                }
            }
            RuleObject::Predictive(resource) => {
                attempts.extend(self.release_pools(&actor, resource).await);
            }
            RuleObject::Anomaly(resource) => {
                let other = resource
                    .spec
                    .target
                    .as_ref()
                    .and_then(|t| t.namespace.clone());
                attempts.extend(self.release_hpa_claims(&actor, other, None).await);
            }
        }
        attempts
    }

    /// Gives back the rule's HPA (and ScaledObject) claims in its namespace and `other`,
    /// except on `keep` (namespace, name).
    async fn release_hpa_claims(
        &self,
        actor: &Actor,
        other: Option<String>,
        keep: Option<&(String, String)>,
    ) -> Vec<Attempt> {
        let mut namespaces = vec![actor.namespace.clone()];
        namespaces.extend(other.filter(|ns| *ns != actor.namespace));
        let mut attempts = Vec::new();
        for namespace in namespaces {
            match self.claimed_hpas(actor, &namespace).await {
                Ok(claimed) => {
                    for hpa in claimed {
                        if keep == Some(&(namespace.clone(), hpa.clone())) {
                            continue;
                        }
                        let target = format!("HorizontalPodAutoscaler {namespace}/{hpa}");
                        let result =
                            hpa::release_claim(&self.client, actor, &namespace, &hpa).await;
                        attempts.extend(released("release", &target, result));
                    }
                }
                Err(error) => attempts.push(Attempt::from_result(
                    "release",
                    &format!("the HPAs of namespace {namespace}"),
                    None,
                    Err(error),
                )),
            }
        }
        attempts
    }

    /// Gives back what the rule holds on every NodePool carrying its marks; only what
    /// changed is recorded.
    async fn release_pools(&self, actor: &Actor, resource: &PredictiveScale) -> Vec<Attempt> {
        let target = format!("NodePool {}", resource.spec.node_pool_ref.name);
        match nodepool::release(&self.client, actor, &resource.spec).await {
            Ok(acted) => acted
                .into_iter()
                .filter(|a| a.changed)
                .map(|a| Attempt::from_result("release", &target, None, Ok(a)))
                .collect(),
            Err(error) => vec![Attempt::from_result("release", &target, None, Err(error))],
        }
    }

    /// The HPAs in `namespace` whose minimum the rule claims, directly or through the
    /// KEDA ScaledObject that owns them (an AnomalyAction's `scale` raises an HPA's
    /// minimum rather than fight it): `release_claim` undoes either.
    async fn claimed_hpas(&self, actor: &Actor, namespace: &str) -> Result<Vec<String>, ActError> {
        use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
        let claim = format!(
            "{}min-replicas.{}",
            super::ANNOTATION_PREFIX,
            actor.claim_key()
        );
        let api: kube::Api<HorizontalPodAutoscaler> =
            kube::Api::namespaced(self.client.clone(), namespace);
        let hpas = api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| ActError::api(format!("listing the HPAs of {namespace}"), e))?;
        let claimed_by_keda = self.claimed_scaled_objects(namespace, &claim).await?;
        Ok(hpas
            .items
            .into_iter()
            .filter(|h| {
                let direct = h
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(&claim));
                let through_keda = h
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "ScaledObject" && claimed_by_keda.contains(&o.name));
                direct || through_keda
            })
            .filter_map(|h| h.metadata.name)
            .collect())
    }

    /// The KEDA ScaledObjects of `namespace` carrying `claim`; none when KEDA is not
    /// installed.
    async fn claimed_scaled_objects(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<HashSet<String>, ActError> {
        use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
            "scaledobjects",
        );
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(self.client.clone(), namespace, &resource);
        match api.list(&kube::api::ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter(|o| {
                    o.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(claim))
                })
                .filter_map(|o| o.metadata.name)
                .collect()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(HashSet::new()),
            Err(error) => Err(ActError::api(
                format!("listing the ScaledObjects of {namespace}"),
                error,
            )),
        }
    }
}

/// What a rule notifies with.
struct NotifySettings {
    alertmanager: bool,
    url: Option<String>,
    secret: Option<crate::rules::crd::SecretKeyRef>,
    format: WebhookFormat,
    severity: String,
}

impl NotifySettings {
    fn of(rule: RuleObject<'_>) -> Option<Self> {
        let settings = match rule {
            RuleObject::Anomaly(r) => Self {
                alertmanager: r.spec.remediation.type_ == RemediationType::Alert,
                url: r.spec.webhook_url.clone().filter(|u| !u.is_empty()),
                secret: r.spec.webhook_secret_ref.clone(),
                format: r.spec.webhook_format,
                severity: r.spec.severity.clone().unwrap_or_else(|| "warning".into()),
            },
            RuleObject::Slo(r) => Self {
                alertmanager: r
                    .spec
                    .actions
                    .iter()
                    .any(|a| a.type_ == SloActionType::Alert),
                url: r.spec.webhook_url.clone().filter(|u| !u.is_empty()),
                secret: r.spec.webhook_secret_ref.clone(),
                format: r.spec.webhook_format,
                severity: r.spec.severity.clone().unwrap_or_else(|| "critical".into()),
            },
            RuleObject::Predictive(_) => return None,
        };
        (settings.alertmanager || settings.url.is_some() || settings.secret.is_some())
            .then_some(settings)
    }
}

fn budget_exhausted(action: &str, target: &str, detection: &str, wait: Duration) -> Attempt {
    let mut attempt = Attempt::not_done(
        action,
        target,
        Some(detection),
        AttemptResult::Failed,
        "ActionBudget",
        format!(
            "the global budget of actions per minute (--max-actions-per-minute) is spent; retried in {}s",
            wait.as_secs().max(1)
        ),
    );
    attempt.retry_after = Some(wait);
    attempt
}

/// An attempt for a release; `None` when there was nothing to release.
fn released(
    action: &str,
    target: &str,
    result: Result<Option<Acted>, ActError>,
) -> Option<Attempt> {
    match result {
        Ok(None) => None,
        Ok(Some(acted)) => Some(Attempt::from_result(action, target, None, Ok(acted))),
        Err(error) => Some(Attempt::from_result(action, target, None, Err(error))),
    }
}

/// The keys of the targets an attempt changed, and of the pods behind them, for the
/// cross-rule lock.
fn changed_keys(attempts: &[Attempt], pods: &[crate::eval::PodRef]) -> Vec<String> {
    let mut keys = Vec::new();
    for attempt in attempts {
        if attempt.result == AttemptResult::Succeeded {
            if let Some(target) = &attempt.target_ref {
                keys.push(target.to_string());
            }
            keys.push(attempt.target.clone());
        }
    }
    if !keys.is_empty() {
        keys.extend(
            pods.iter()
                .map(|p| format!("Pod {}/{}", p.namespace, p.name)),
        );
    }
    keys
}

/// The detection id of a workload-wide action (a rollout, a scale): one per rule and
/// cooldown window of event time, so the pods of one workload tripping one after
/// another restart or scale it once.
fn workload_detection(actor: &Actor, sample_time_ms: i64, cooldown: Duration) -> String {
    let window = i64::try_from(cooldown.as_millis())
        .unwrap_or(i64::MAX)
        .max(60_000);
    let text = format!("{}\n{}", actor.uid, sample_time_ms.div_euclid(window));
    format!("w{:015x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()) >> 4)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forecast-driven change is marked on Grafana with the rule's token, and a Grafana
    /// that is down holds nothing back.
    #[tokio::test]
    async fn a_change_is_marked_on_grafana_with_the_rules_token() {
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::json;
        // Grafana: records what it is sent.
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/api/annotations",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::Json<serde_json::Value>| {
                    let seen_tx = seen_tx.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let _ = seen_tx.send((auth, body.0));
                        axum::Json(json!({"id": 1, "message": "Annotation added"}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grafana = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The API server: one Secret read, the token.
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a Secret read");
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/shop/secrets/grafana"
            );
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "grafana", "namespace": "shop"},
                "data": {"token": "Z2xzYV9zZWNyZXQ="},
            });
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&secret).unwrap()))
                    .unwrap(),
            );
        });
        let outbound =
            super::super::outbound::Outbound::new(super::super::outbound::OutboundConfig {
                allow_hosts: vec!["127.0.0.1".into()],
                ..Default::default()
            })
            .unwrap();
        let notifier = Notifier::new(outbound.clone(), Default::default()).unwrap();
        let actuator = ClusterActuator::new(
            client,
            ActionConfig::default(),
            notifier,
            outbound,
            Arc::new(RwLock::new(PauseState::default())),
        );
        let rule: PredictiveScale = serde_json::from_value(json!({
            "apiVersion": "aiops.prophet.io/v1alpha1", "kind": "PredictiveScale",
            "metadata": {"name": "cpu", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "forecastQuery": "sum(rate(cpu[5m]))", "nodePoolRef": {"name": "spot"},
                "horizon": "1h", "thresholdPercent": 20, "action": "provision",
                "grafanaEndpoint": format!("http://{grafana}/"),
                "grafanaTokenSecretRef": {"name": "grafana", "key": "token"},
            },
        }))
        .unwrap();
        let actor = actuator.actor(RuleObject::Predictive(&rule));
        let attempt = actuator
            .annotate_grafana(&rule, &actor, "provision", "placeholders: 0 -> 4")
            .await
            .expect("annotated");
        assert_eq!(attempt.result, AttemptResult::Succeeded);
        let (auth, body) = seen.recv().await.unwrap();
        assert_eq!(auth.as_deref(), Some("Bearer glsa_secret"));
        assert_eq!(
            body["tags"],
            json!(["prophet", "PredictiveScale shop/cpu", "provision"])
        );
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .contains("placeholders: 0 -> 4"),
            "{body}"
        );
        // A Grafana that is gone: nothing recorded, nothing to retry.
        let gone: PredictiveScale = serde_json::from_value(json!({
            "apiVersion": "aiops.prophet.io/v1alpha1", "kind": "PredictiveScale",
            "metadata": {"name": "cpu", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "forecastQuery": "x", "nodePoolRef": {"name": "spot"}, "horizon": "1h",
                "thresholdPercent": 20, "action": "provision",
                "grafanaEndpoint": "http://127.0.0.1:9",
            },
        }))
        .unwrap();
        assert!(
            actuator
                .annotate_grafana(&gone, &actor, "provision", "x")
                .await
                .is_none()
        );
    }

    /// The opt-in K8sGPT server: asked about the namespace with explanations off, its
    /// findings about the target kept and summarised.
    #[tokio::test]
    async fn a_k8sgpt_server_is_asked_without_explanations() {
        use serde_json::json;
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/v1/analyze",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(body.0);
                    axum::Json(json!({
                        "status": "ProblemDetected", "problems": 2,
                        "results": [
                            {"kind": "Pod", "name": "shop/api-0",
                             "error": [{"text": "Back-off restarting failed container"}],
                             "parentObject": "Deployment/api"},
                            {"kind": "Service", "name": "shop/other",
                             "error": [{"text": "no endpoints"}]},
                        ],
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let outbound =
            super::super::outbound::Outbound::new(super::super::outbound::OutboundConfig {
                allow_hosts: vec!["127.0.0.1".into()],
                ..Default::default()
            })
            .unwrap();
        let targets = [("Pod".to_owned(), "api-0".to_owned())];
        let summary = k8sgpt::analysis_from_server(
            &outbound,
            &format!("http://{server}/"),
            "shop",
            &targets,
            ANALYSIS_CHARS,
        )
        .await
        .unwrap()
        .expect("a finding about the pod");
        assert!(summary.contains("Back-off restarting"), "{summary}");
        assert!(!summary.contains("no endpoints"), "{summary}");
        assert_eq!(
            seen.recv().await.unwrap(),
            json!({"namespace": "shop", "explain": false})
        );
        // A server not on the allow-list is never called.
        let closed = super::super::outbound::Outbound::new(Default::default()).unwrap();
        let refused = k8sgpt::analysis_from_server(
            &closed,
            &format!("http://{server}"),
            "shop",
            &targets,
            ANALYSIS_CHARS,
        )
        .await
        .unwrap_err();
        assert_eq!(refused.reason(), "UrlNotAllowed");
        assert!(seen.try_recv().is_err());
    }

    #[test]
    fn the_budget_refills_by_the_minute() {
        let mut budget = ActionBudget {
            tokens: 2.0,
            at: Instant::now(),
            per_minute: 2.0,
        };
        assert!(budget.take().is_ok());
        assert!(budget.take().is_ok());
        let wait = budget.take().unwrap_err();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn one_workload_action_per_rule_and_cooldown_window() {
        let actor = Actor {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
            uid: "u-1".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        };
        let five_minutes = Duration::from_secs(300);
        let t = 1_000 * 300_000;
        assert_eq!(
            workload_detection(&actor, t + 1_000, five_minutes),
            workload_detection(&actor, t + 200_000, five_minutes)
        );
        assert_ne!(
            workload_detection(&actor, t + 1_000, five_minutes),
            workload_detection(&actor, t + 300_000, five_minutes)
        );
    }

    #[test]
    fn the_pause_switch_holds_the_namespaces_named() {
        let pause = PauseState {
            all: false,
            namespaces: HashSet::from(["shop".to_owned()]),
            unknown: false,
        };
        assert!(
            PauseState::unread().pauses("web"),
            "unread, everything waits"
        );
        assert!(pause.pauses("shop"));
        assert!(!pause.pauses("web"));
        assert!(
            PauseState {
                all: true,
                ..PauseState::default()
            }
            .pauses("web")
        );
    }
}
