//! Reconcile: turns verdicts into decisions. For each verdict, at most one action, guarded
//! by the rule's cooldown (per target, in event time so a replay decides the same) and
//! `requireApproval`, then hands it to the actuator. The cluster controllers that also
//! write CR status and Events will live here; standalone mode uses [`Decider`] directly.

pub mod controller;
pub mod leader;
pub mod ledger;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::actuate::{Actuator, Decision, Outcome};
use crate::eval::{Change, EvalEvent, RuleSetChange, Verdict};
use crate::rules::compile::ActionPlan;
use crate::rules::load::RuleKey;

/// Decides, per verdict, what to do under each rule's action plan.
pub struct Decider {
    plans: HashMap<RuleKey, ActionPlan>,
    /// Event time of the last action per (rule, target); the target is the pod, or the
    /// series for alerts on series without a pod.
    last_acted: HashMap<(RuleKey, String), i64>,
    dry_run: bool,
}

impl Decider {
    pub fn new(plans: HashMap<RuleKey, ActionPlan>, dry_run: bool) -> Self {
        Self {
            plans,
            last_acted: HashMap::new(),
            dry_run,
        }
    }

    /// A new rule set took effect: its plans replace the old ones, and the cooldowns of
    /// rules that are gone or start afresh are forgotten (a rule that starts afresh has
    /// no tripped series left to be in cooldown for).
    pub fn rules_changed(&mut self, change: &RuleSetChange) {
        self.plans = change.plans.clone();
        self.last_acted
            .retain(|(rule, _), _| change.kept.contains(rule) && change.plans.contains_key(rule));
    }

    /// The decision for one verdict; `None` for a rule without a plan (removed meanwhile).
    pub fn decide(&mut self, verdict: &Verdict) -> Option<Decision> {
        let mut decision = self.decide_action(verdict)?;
        decision.object = self.plans.get(&verdict.rule).and_then(|p| p.object.clone());
        Some(decision)
    }

    fn decide_action(&mut self, verdict: &Verdict) -> Option<Decision> {
        let plan = self.plans.get(&verdict.rule)?;
        let action = plan.action.as_str();
        if verdict.change == Change::Cleared {
            return Some(Decision::new(
                verdict,
                "resolve",
                Outcome::Resolved,
                verdict.reason.clone(),
                self.dry_run,
            ));
        }
        if plan.needs_pod && verdict.targets.is_empty() {
            let why = verdict.untargeted.clone().unwrap_or_default();
            return Some(Decision::new(
                verdict,
                action,
                Outcome::NoTarget,
                format!("{}; {why}", verdict.reason),
                self.dry_run,
            ));
        }
        let target = verdict
            .targets
            .first()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_else(|| verdict.series.to_string());
        let key = (verdict.rule.clone(), target);
        if let Some(&last) = self.last_acted.get(&key)
            && verdict.sample_time_ms.saturating_sub(last) < plan.cooldown_ms
        {
            let left = plan
                .cooldown_ms
                .saturating_sub(verdict.sample_time_ms.saturating_sub(last))
                / 1000;
            return Some(Decision::new(
                verdict,
                action,
                Outcome::Cooldown,
                format!("{}; in cooldown for another {left}s", verdict.reason),
                self.dry_run,
            ));
        }
        if plan.require_approval {
            return Some(Decision::new(
                verdict,
                action,
                Outcome::AwaitingApproval,
                format!("{}; requireApproval holds the action", verdict.reason),
                self.dry_run,
            ));
        }
        self.last_acted.insert(key, verdict.sample_time_ms);
        Some(Decision::new(
            verdict,
            action,
            Outcome::Act,
            verdict.reason.clone(),
            self.dry_run,
        ))
    }
}

/// Standalone reconcile loop: decide each verdict and hand it to the actuator, until the
/// evaluator's channel closes (evaluator stopped).
pub async fn run(
    mut events: mpsc::UnboundedReceiver<EvalEvent>,
    mut decider: Decider,
    actuator: Arc<dyn Actuator>,
) {
    while let Some(event) = events.recv().await {
        match event {
            EvalEvent::Rules(change) => decider.rules_changed(&change),
            EvalEvent::Verdict(verdict) => {
                if let Some(decision) = decider.decide(&verdict) {
                    actuator.act(decision);
                }
            }
        }
    }
}
