//! Actuate: what is done about a decision. The only stage that may touch anything outside
//! Prophet's own rules. This version has the dry-run actuator of standalone mode, which
//! records each decision (log line and [`DecisionLog`]) and changes nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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
