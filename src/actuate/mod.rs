//! Actuate: what is done about a decision. The only stage that may touch anything outside
//! Prophet's own rules, and the only one that makes outbound HTTP calls. Standalone mode
//! has the dry-run actuator, which records each decision (log line and [`DecisionLog`])
//! and changes nothing; in cluster mode reconcile calls the actions of the submodules,
//! each an idempotent async function on behalf of an [`Actor`] (the rule's resource)
//! that answers [`Acted`] or an [`ActError`] to report and retry.
//!
//! - [`guard`]: the checks every action makes first (namespace, GitOps ownership).
//! - [`workload`]: pod eviction and rollout restarts; [`hpa`]: scaling through the
//!   `scale` subresource, HPA `minReplicas` claims and KEDA ScaledObjects.
//! - [`rollback`], [`chaos`]: an SLO's rollback and chaos-experiment pause;
//!   [`k8sgpt`]: K8sGPT analyses.
//! - [`nodepool`]: Karpenter NodePools (placeholders, limits, disruption budgets,
//!   weights) and Grafana annotations.
//! - [`outbound`]: the guarded HTTP client (allow-list, resolved-address checks,
//!   bounded time and size); [`alert`]: Alertmanager, webhooks, Slack and PagerDuty.

pub mod alert;
pub mod chaos;
pub mod dispatch;
pub mod guard;
pub mod hpa;
pub mod k8sgpt;
pub mod nodepool;
pub mod outbound;
pub mod rollback;
pub mod workload;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Serialize;

use crate::eval::{Change, PodRef, format_value};
use crate::labels::Labels;
use crate::rules::load::RuleKey;

/// What reconcile decided for one verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Its place in the decision log, counting from 1 (0 until logged): a reader pages
    /// with `GET /api/v1/decisions?since=ID`.
    pub id: u64,
    pub rule: RuleKey,
    pub verdict: Change,
    /// `restart`, `scale`, `alert` (an SLO's actions joined with `+`); `resolve` when a
    /// series cleared.
    pub action: String,
    /// `act`, or why not: `cooldown`, `awaiting-approval`, `no-target`, `stale`.
    pub outcome: Outcome,
    pub targets: Vec<PodRef>,
    /// The object acted on besides pods (an SLO's HorizontalPodAutoscaler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub reason: String,
    pub series: Labels,
    pub value: Option<String>,
    /// Event time of the deciding sample (RFC 3339) and the same in ms.
    pub sample_time: String,
    pub sample_time_ms: i64,
    /// True while nothing is acted on (standalone mode).
    pub dry_run: bool,
    /// A PredictiveScale's forecast behind the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<crate::eval::ForecastView>,
}

/// Whether the decision leads to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The action is taken (or, in dry-run, would be).
    Act,
    /// The same target was acted on within the rule's cooldown.
    Cooldown,
    /// `requireApproval` holds the action until a person approves it.
    AwaitingApproval,
    /// The rule tripped on a series that names no pod in the rule's scope; alerts still go.
    NoTarget,
    /// A cleared series: the rule's phase moves to Resolved; nothing is done.
    Resolved,
    /// The deciding sample is older than `--max-action-lag` against the wall clock (a
    /// sender catching up after an outage, a lagging standby, restored state): recorded,
    /// never acted on.
    Stale,
}

impl Decision {
    pub fn new(
        verdict: &crate::eval::Verdict,
        action: &str,
        outcome: Outcome,
        reason: String,
        dry_run: bool,
    ) -> Self {
        Self {
            id: 0,
            rule: verdict.rule.clone(),
            verdict: verdict.change,
            action: action.to_owned(),
            outcome,
            targets: verdict.targets.clone(),
            object: None,
            reason,
            series: verdict.series.clone(),
            value: verdict.value.map(format_value),
            sample_time: format_time_ms(verdict.sample_time_ms),
            sample_time_ms: verdict.sample_time_ms,
            dry_run,
            forecast: verdict.forecast,
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time_ms(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| ms.to_string())
}

/// The most recent decisions, newest last, bounded so a flapping rule cannot grow memory.
#[derive(Clone)]
pub struct DecisionLog {
    inner: Arc<Mutex<(VecDeque<Decision>, u64)>>,
    capacity: usize,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new((VecDeque::with_capacity(capacity.min(1024)), 0))),
            capacity,
        }
    }

    pub fn push(&self, mut decision: Decision) {
        // std Mutex: held only to push or clone, never across an await.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (log, last_id) = &mut *guard;
        *last_id += 1;
        decision.id = *last_id;
        log.push_back(decision);
        while log.len() > self.capacity {
            log.pop_front();
        }
    }

    /// Every decision kept, oldest first.
    pub fn snapshot(&self) -> Vec<Decision> {
        self.page(None, usize::MAX)
    }

    /// At most `limit` decisions, oldest first: those after id `since`, or without it the
    /// newest. Only the page is copied, so a reader costs what it asks for.
    pub fn page(&self, since: Option<u64>, limit: usize) -> Vec<Decision> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let log = &guard.0;
        let start = match since {
            Some(since) => log.partition_point(|d| d.id <= since),
            None => log.len().saturating_sub(limit),
        };
        log.range(start..).take(limit).cloned().collect()
    }
}

/// Carries out decisions.
pub trait Actuator: Send + Sync {
    fn act(&self, decision: Decision);
}

/// Standalone mode's actuator: logs and records every decision, acts on nothing.
pub struct DryRun {
    pub log: DecisionLog,
}

impl Actuator for DryRun {
    fn act(&self, decision: Decision) {
        let targets: Vec<String> = decision
            .targets
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        tracing::info!(
            rule = %decision.rule,
            verdict = decision.verdict.as_str(),
            action = %decision.action,
            outcome = ?decision.outcome,
            targets = %targets.join(","),
            series = %decision.series,
            value = decision.value.as_deref().unwrap_or(""),
            sample_time = %decision.sample_time,
            reason = %decision.reason,
            "decision (dry run)"
        );
        self.log.push(decision);
    }
}

/// The rule resource on whose behalf an action is taken: for ownership, claims, the
/// checks of [`guard`] and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: crate::rules::load::RuleKind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The resource's `allowGitOpsManaged`.
    pub allow_git_ops: bool,
    /// Prophet's `--allow-cross-namespace`.
    pub allow_cross_namespace: bool,
}

/// The API group and version of Prophet's resources.
pub const API_VERSION: &str = "aiops.prophet.io/v1alpha1";

/// The prefix of every annotation Prophet writes on objects it acts on.
pub const ANNOTATION_PREFIX: &str = "aiops.prophet.io/";

impl Actor {
    /// An owner reference to the resource, for objects it creates (placeholders), so
    /// the garbage collector removes them with it.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: API_VERSION.to_owned(),
            kind: self.kind.as_str().to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }
    }

    /// A short stable key for this resource in annotation names (claims), unique per
    /// resource and valid as an annotation name's part: `<kind>.<namespace>.<name>`
    /// would overflow 63 characters, so the uid's first 8 hex digits.
    pub fn claim_key(&self) -> String {
        let short: String = self.uid.chars().filter(|c| *c != '-').take(8).collect();
        format!("{}-{short}", self.kind.as_str().to_ascii_lowercase())
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// An object acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What one action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted {
    /// `evict`, `rollout-restart`, `scale`, `hpa-min-replicas`, ... (see
    /// `ActionRecord::action`).
    pub action: &'static str,
    pub target: TargetRef,
    /// The target's `resourceVersion` before and after, for the audit log.
    pub version_before: Option<String>,
    pub version_after: Option<String>,
    /// False when the object already was as the action wants it: reconciling twice
    /// acts once, and the second answer is `changed: false`.
    pub changed: bool,
    /// What changed, for status and the Event (`replicas 2 → 3`).
    pub summary: String,
}

/// Why an action was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// Not done, and not retried until the rule or the target changes: the target may
    /// not be acted on (another namespace, GitOps-managed, a bare pod, a paused
    /// Deployment, a KEDA-owned HPA that cannot be changed).
    #[error("{message}")]
    Refused {
        /// CamelCase, for the `ActionFailed` condition and the Event.
        reason: &'static str,
        message: String,
    },
    /// Not done this time: retried with backoff (after `retry_after` when the server
    /// said when, as a PodDisruptionBudget's 429 does).
    #[error("{message}")]
    Failed {
        reason: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
}

impl ActError {
    pub fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            message: message.into(),
        }
    }

    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Failed {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An API error met while `doing` something, classified by its HTTP status:
    /// `Forbidden` (403: RBAC), `NotFound` (404), `Conflict` (409: retried at once with
    /// a fresh read), `Invalid` (422), `TooManyRequests` (429), `ServerError` (5xx),
    /// `Unreachable` (no answer). All are retried with backoff.
    pub fn api(doing: impl std::fmt::Display, error: kube::Error) -> Self {
        let reason = match &error {
            kube::Error::Api(status) => match status.code {
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                500..=599 => "ServerError",
                _ => "ApiError",
            },
            _ => "Unreachable",
        };
        Self::failed(reason, format!("{doing}: {error}"))
    }

    /// The CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { reason, .. } | Self::Failed { reason, .. } => reason,
        }
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}
