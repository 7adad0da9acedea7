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
    /// Event time and wall time (ms) of the last action per (rule, target); the target
    /// is the pod, or the series for alerts on series without a pod.
    last_acted: HashMap<(RuleKey, String), (i64, i64)>,
    dry_run: bool,
    /// With a lag set (cluster mode): a decision whose deciding sample is older than this
    /// against the wall clock is stale and never acted on, and a cooldown must have
    /// passed on the wall clock too. Standalone mode sets none, so a replay of old
    /// samples decides exactly as it did live.
    max_action_lag_ms: Option<i64>,
    /// The newest deciding sample's time per rule (rules' clocks differ), and the size of
    /// `last_acted` at which it is next pruned of cooldowns that have passed (series churn
    /// must not grow it).
    newest_sample_ms: HashMap<RuleKey, i64>,
    prune_at: usize,
}

/// `last_acted` is pruned once it holds this many entries (and then at twice what is left).
const PRUNE_MIN: usize = 1024;

impl Decider {
    pub fn new(plans: HashMap<RuleKey, ActionPlan>, dry_run: bool) -> Self {
        Self {
            plans,
            last_acted: HashMap::new(),
            dry_run,
            max_action_lag_ms: None,
            newest_sample_ms: HashMap::new(),
            prune_at: PRUNE_MIN,
        }
    }

    /// Decisions on samples older than `lag` are stale (see the field).
    pub fn with_max_action_lag(mut self, lag: std::time::Duration) -> Self {
        self.max_action_lag_ms = Some(i64::try_from(lag.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// A new rule set took effect: its plans replace the old ones, and the cooldowns of
    /// rules that are gone or start afresh are forgotten (a rule that starts afresh has
    /// no tripped series left to be in cooldown for).
    pub fn rules_changed(&mut self, change: &RuleSetChange) {
        self.plans = change.plans.clone();
        self.newest_sample_ms
            .retain(|rule, _| change.plans.contains_key(rule));
        self.last_acted
            .retain(|(rule, _), _| change.kept.contains(rule) && change.plans.contains_key(rule));
    }

    /// Forgets the targets whose cooldown has passed on both clocks: they decide the same
    /// without an entry.
    fn prune(&mut self, now_ms: i64) {
        let wall_clock = self.max_action_lag_ms.is_some();
        let plans = &self.plans;
        let newest_of = &self.newest_sample_ms;
        self.last_acted.retain(|(rule, _), &mut (sample, wall)| {
            let newest = newest_of.get(rule).copied().unwrap_or(i64::MIN);
            plans.get(rule).is_some_and(|plan| {
                newest.saturating_sub(sample) < plan.cooldown_ms
                    || (wall_clock && now_ms.saturating_sub(wall) < plan.cooldown_ms)
            })
        });
        self.prune_at = (self.last_acted.len() * 2).max(PRUNE_MIN);
    }

    /// How many targets are remembered for their cooldown.
    pub fn remembered(&self) -> usize {
        self.last_acted.len()
    }

    /// The decision for one verdict; `None` for a rule without a plan (removed meanwhile).
    pub fn decide(&mut self, verdict: &Verdict) -> Option<Decision> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.decide_at(verdict, now_ms)
    }

    /// [`Self::decide`] at wall time `now_ms`.
    pub fn decide_at(&mut self, verdict: &Verdict, now_ms: i64) -> Option<Decision> {
        let mut decision = self.decide_action(verdict, now_ms)?;
        decision.object = self.plans.get(&verdict.rule).and_then(|p| p.object.clone());
        Some(decision)
    }

    fn decide_action(&mut self, verdict: &Verdict, now_ms: i64) -> Option<Decision> {
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
        if let Some(lag) = self.max_action_lag_ms
            && now_ms.saturating_sub(verdict.sample_time_ms) > lag
        {
            return Some(Decision::new(
                verdict,
                action,
                Outcome::Stale,
                format!(
                    "{}; the deciding sample is {}s old, past --max-action-lag ({}s): not acted on",
                    verdict.reason,
                    now_ms.saturating_sub(verdict.sample_time_ms) / 1000,
                    lag / 1000
                ),
                self.dry_run,
            ));
        }
        let key = (verdict.rule.clone(), target);
        let wall_clock = self.max_action_lag_ms.is_some();
        if let Some(&(last_sample, last_wall)) = self.last_acted.get(&key)
            && (verdict.sample_time_ms.saturating_sub(last_sample) < plan.cooldown_ms
                || (wall_clock && now_ms.saturating_sub(last_wall) < plan.cooldown_ms))
        {
            let mut passed = verdict.sample_time_ms.saturating_sub(last_sample);
            if wall_clock {
                passed = passed.min(now_ms.saturating_sub(last_wall));
            }
            let left = plan.cooldown_ms.saturating_sub(passed) / 1000;
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
        let decision = Decision::new(
            verdict,
            action,
            Outcome::Act,
            verdict.reason.clone(),
            self.dry_run,
        );
        self.last_acted
            .insert(key, (verdict.sample_time_ms, now_ms));
        let newest = self
            .newest_sample_ms
            .entry(verdict.rule.clone())
            .or_insert(i64::MIN);
        *newest = (*newest).max(verdict.sample_time_ms);
        if self.last_acted.len() >= self.prune_at {
            self.prune(now_ms);
        }
        Some(decision)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::PodRef;
    use crate::labels::Labels;
    use crate::rules::load::RuleKind;
    use std::time::{Duration, Instant};

    const MIN: i64 = 60_000;

    fn key() -> RuleKey {
        RuleKey {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
        }
    }

    fn decider(plan: ActionPlan) -> Decider {
        Decider::new(HashMap::from([(key(), plan)]), false)
            .with_max_action_lag(Duration::from_secs(120))
    }

    fn restart(cooldown_ms: i64) -> ActionPlan {
        ActionPlan {
            action: "restart".into(),
            needs_pod: true,
            cooldown_ms,
            ..ActionPlan::default()
        }
    }

    fn verdict(change: Change, pod: Option<&str>, at: i64) -> Verdict {
        Verdict {
            rule: key(),
            change,
            series: Labels::from_pairs([("__name__", "m"), ("pod", pod.unwrap_or(""))]),
            value: Some(2.0),
            sample_time_ms: at,
            reason: "m > 1".into(),
            targets: pod
                .map(|p| {
                    vec![PodRef {
                        namespace: "shop".into(),
                        name: p.into(),
                    }]
                })
                .unwrap_or_default(),
            untargeted: pod.is_none().then(|| "the series names no pod".into()),
            forecast: None,
            arrived: Instant::now(),
        }
    }

    fn outcome(d: &mut Decider, v: &Verdict, now: i64) -> Outcome {
        d.decide_at(v, now).unwrap().outcome
    }

    #[test]
    fn acts_then_holds_until_both_clocks_pass_the_cooldown() {
        let mut d = decider(restart(5 * MIN));
        let t = 1_000 * MIN;
        assert_eq!(
            outcome(&mut d, &verdict(Change::Tripped, Some("a"), t), t),
            Outcome::Act
        );
        // Event time passed the cooldown, the wall clock did not (a sender catching up).
        let later = verdict(Change::Tripped, Some("a"), t + 6 * MIN);
        assert_eq!(outcome(&mut d, &later, t + MIN), Outcome::Cooldown);
        // Both passed.
        assert_eq!(outcome(&mut d, &later, t + 6 * MIN), Outcome::Act);
        // Another pod is another target.
        let other = verdict(Change::Tripped, Some("b"), t + 6 * MIN);
        assert_eq!(outcome(&mut d, &other, t + 6 * MIN), Outcome::Act);
    }

    #[test]
    fn a_decision_on_an_old_sample_is_stale_and_starts_no_cooldown() {
        let mut d = decider(restart(5 * MIN));
        let t = 1_000 * MIN;
        let old = verdict(Change::Tripped, Some("a"), t - 3 * MIN);
        let decision = d.decide_at(&old, t).unwrap();
        assert_eq!(decision.outcome, Outcome::Stale);
        assert!(
            decision.reason.contains("max-action-lag"),
            "{}",
            decision.reason
        );
        let fresh = verdict(Change::Tripped, Some("a"), t);
        assert_eq!(outcome(&mut d, &fresh, t), Outcome::Act);
    }

    #[test]
    fn standalone_replays_decide_by_event_time_alone() {
        let mut d = Decider::new(HashMap::from([(key(), restart(5 * MIN))]), true);
        let t = 1_000 * MIN;
        // Samples a year old, decided now: as they were decided live.
        let now = t + 365 * 24 * 60 * MIN;
        assert_eq!(
            outcome(&mut d, &verdict(Change::Tripped, Some("a"), t), now),
            Outcome::Act
        );
        let later = verdict(Change::Tripped, Some("a"), t + 6 * MIN);
        assert_eq!(outcome(&mut d, &later, now), Outcome::Act);
    }

    #[test]
    fn series_churn_does_not_grow_the_cooldown_bookkeeping() {
        let mut d = decider(restart(5 * MIN));
        let t = 1_000 * MIN;
        // 100 000 pods each trip once, a second apart, as a churning fleet would.
        for i in 0..100_000i64 {
            let at = t + i * 1_000;
            let pod = format!("pod-{i}");
            assert_eq!(
                outcome(&mut d, &verdict(Change::Tripped, Some(&pod), at), at),
                Outcome::Act
            );
        }
        // Only the pods within the 5-minute cooldown matter; the rest are forgotten.
        assert!(
            d.remembered() <= 2 * PRUNE_MIN.max(300),
            "{}",
            d.remembered()
        );
        // A pod still in cooldown is still held.
        let last = t + 99_999 * 1_000;
        let again = verdict(Change::Tripped, Some("pod-99999"), last + 1_000);
        assert_eq!(outcome(&mut d, &again, last + 1_000), Outcome::Cooldown);
    }

    #[test]
    fn approval_no_target_and_resolution() {
        let t = 1_000 * MIN;
        let mut held = decider(ActionPlan {
            require_approval: true,
            ..restart(0)
        });
        assert_eq!(
            outcome(&mut held, &verdict(Change::Tripped, Some("a"), t), t),
            Outcome::AwaitingApproval
        );
        let mut d = decider(restart(0));
        let untargeted = d.decide_at(&verdict(Change::Tripped, None, t), t).unwrap();
        assert_eq!(untargeted.outcome, Outcome::NoTarget);
        assert!(
            untargeted.reason.contains("names no pod"),
            "{}",
            untargeted.reason
        );
        let cleared = d
            .decide_at(&verdict(Change::Cleared, Some("a"), t), t)
            .unwrap();
        assert_eq!(cleared.outcome, Outcome::Resolved);
        assert_eq!(cleared.action, "resolve");
    }

    #[test]
    fn a_rule_gone_decides_nothing_and_a_fresh_rule_forgets_its_cooldown() {
        let t = 1_000 * MIN;
        let mut d = decider(restart(5 * MIN));
        assert_eq!(
            outcome(&mut d, &verdict(Change::Tripped, Some("a"), t), t),
            Outcome::Act
        );
        // Same plans, rule not kept (its inputs changed): cooldown forgotten.
        d.rules_changed(&RuleSetChange {
            plans: HashMap::from([(key(), restart(5 * MIN))]),
            kept: Default::default(),
        });
        assert_eq!(
            outcome(
                &mut d,
                &verdict(Change::Tripped, Some("a"), t + MIN),
                t + MIN
            ),
            Outcome::Act
        );
        d.rules_changed(&RuleSetChange::default());
        assert!(
            d.decide_at(&verdict(Change::Tripped, Some("a"), t), t)
                .is_none()
        );
    }
}
