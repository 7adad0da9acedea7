//! The ledger: the level state between eval and the cluster. For each rule, the series
//! tripped now (fed by verdict changes, so it is state and not a queue of messages: a
//! reconcile that failed or was never run finds the truth here later), when it last
//! tripped, the last decision and the live figures status shows. Every change marks
//! the rule dirty and wakes its reconcile at once; the wake path is a de-duplicated set
//! of rule keys, so memory grows with the number of rules, never with the number of
//! verdicts, and nothing here ever waits on the API server.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::actuate::{Decision, Outcome};
use crate::eval::{Change, ForecastView, RuleSetChange, RuleSnapshot, Verdict};
use crate::labels::Labels;
use crate::rules::load::RuleKey;

/// Most tripped series listed per rule (status names a few; the count is exact).
const TRIPPED_KEPT: usize = 1_000;

/// Most actions waiting per rule. A standby replica decides as the leader does but never
/// acts, so its queue would only grow: the oldest go first (they would be stale by the
/// time this replica leads anyway).
const INTENTS_KEPT: usize = 64;

/// Most actions held for approval per rule.
const AWAITING_KEPT: usize = 10;

/// An action decided and not yet carried out: taken by the leader's reconcile of the
/// rule, which acts on it or, when it failed in a way worth retrying, puts it back.
#[derive(Debug, Clone)]
pub struct Intent {
    pub decision: Decision,
    /// A stable id of the detection acted on: the same on every replica that saw the same
    /// samples (rule, series, event time of the trip), so an action is done once per
    /// detection whoever leads, and actions record it on what they change.
    pub detection: String,
    /// When the request carrying the deciding sample arrived (for the latency metric).
    pub arrived: Instant,
    /// Failed attempts so far, and the earliest time of the next.
    pub attempts: u32,
    pub not_before: Option<Instant>,
    /// The reason of the last failure: the same failure again is not recorded again.
    pub last_failure: Option<&'static str>,
    /// Who approved it, for a rule with `requireApproval`.
    pub approver: Option<String>,
}

impl Intent {
    /// The action `decision` takes on `verdict` (of detection `detection`, when known),
    /// not tried yet.
    fn new(verdict: &Verdict, decision: &Decision, detection: Option<String>) -> Self {
        Self {
            decision: decision.clone(),
            detection: detection.unwrap_or_else(|| {
                detection_id(&verdict.rule, &verdict.series, verdict.sample_time_ms)
            }),
            arrived: verdict.arrived,
            attempts: 0,
            not_before: None,
            last_failure: None,
            approver: None,
        }
    }
}

/// The detection id of a trip: 16 hex digits of a stable hash (never the process's
/// random hasher: another replica must compute the same id).
pub fn detection_id(rule: &RuleKey, series: &Labels, sample_time_ms: i64) -> String {
    let text = format!("{rule}\n{series}\n{sample_time_ms}");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// One rule's level state.
#[derive(Debug, Clone, Default)]
pub struct RuleLevel {
    /// Tripped series now, by their labels as Prometheus prints them, with the event time
    /// (ms) each tripped at.
    pub tripped: BTreeMap<String, i64>,
    /// The labels of each tripped series (for alerts), by the same key.
    pub tripped_labels: HashMap<String, Labels>,
    /// Tripped series beyond [`TRIPPED_KEPT`] (counted, not named).
    pub tripped_uncounted: usize,
    /// Actions decided and not yet done, oldest first.
    pub intents: VecDeque<Intent>,
    /// Actions held by `requireApproval`, oldest first, while their series stays tripped.
    pub awaiting: VecDeque<Intent>,
    /// The newest trip's detection id and deciding sample time: level actions (an SLO's
    /// HPA claim, a chaos pause, a NodePool reservation) hold while a rule is tripped and
    /// name this detection.
    pub current_detection: Option<(String, i64)>,
    /// Event time (ms) of the newest trip.
    pub last_detected_ms: Option<i64>,
    /// Trips seen since the rule (with these inputs) started.
    pub detections: u64,
    /// The newest decision about the rule.
    pub last_decision: Option<Decision>,
    /// A PredictiveScale's newest forecast.
    pub last_forecast: Option<ForecastView>,
    /// An SLO's budget remaining and time to exhaustion (days), from the evaluator.
    pub slo: Option<(f64, Option<f64>)>,
    /// Why an SLO is not judged (its latency `le` matches no bucket), from the evaluator.
    pub slo_not_judged: Option<String>,
}

impl RuleLevel {
    /// How many series are tripped now.
    pub fn tripped_count(&self) -> usize {
        self.tripped.len() + self.tripped_uncounted
    }
}

/// Level state of every rule, and the set of rules whose reconcile is due.
#[derive(Default)]
pub struct Ledger {
    // std Mutex: held for map updates only, never across an await.
    levels: Mutex<HashMap<RuleKey, RuleLevel>>,
    dirty: Mutex<HashSet<RuleKey>>,
    wake: Notify,
}

impl Ledger {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The level state of one rule (a copy).
    pub fn level(&self, rule: &RuleKey) -> Option<RuleLevel> {
        self.lock_levels().get(rule).cloned()
    }

    fn lock_levels(&self) -> std::sync::MutexGuard<'_, HashMap<RuleKey, RuleLevel>> {
        self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a rule dirty and wakes the reconciler.
    pub fn mark(&self, rule: RuleKey) {
        let inserted = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rule);
        if inserted {
            self.wake.notify_one();
        }
    }

    /// Marks every known rule dirty (a new leader, the API server back).
    pub fn mark_all(&self) {
        let keys: Vec<RuleKey> = self.lock_levels().keys().cloned().collect();
        for key in keys {
            self.mark(key);
        }
    }

    /// Takes the set of dirty rules, waiting until there is one.
    pub async fn take_dirty(&self) -> Vec<RuleKey> {
        loop {
            let notified = self.wake.notified();
            let taken: Vec<RuleKey> = self
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// A rule set took effect: rules gone are forgotten, rules that start afresh lose
    /// their tripped series (their detectors no longer hold them, so no clear would
    /// come), and every active rule is marked dirty so its status shows the new spec.
    pub fn rules_changed(&self, change: &RuleSetChange) {
        {
            let mut levels = self.lock_levels();
            levels.retain(|rule, _| change.plans.contains_key(rule));
            for rule in change.plans.keys() {
                let level = levels.entry(rule.clone()).or_default();
                if !change.kept.contains(rule) {
                    level.tripped.clear();
                    level.tripped_labels.clear();
                    level.tripped_uncounted = 0;
                    level.intents.clear();
                    level.awaiting.clear();
                    level.current_detection = None;
                }
            }
        }
        for rule in change.plans.keys() {
            self.mark(rule.clone());
        }
    }

    /// A verdict and the decision taken on it.
    pub fn record(&self, verdict: &Verdict, decision: Option<&Decision>) {
        {
            let mut levels = self.lock_levels();
            let level = levels.entry(verdict.rule.clone()).or_default();
            let series = verdict.series.to_string();
            match verdict.change {
                Change::Tripped => {
                    if level.tripped.len() < TRIPPED_KEPT || level.tripped.contains_key(&series) {
                        level.tripped.insert(series.clone(), verdict.sample_time_ms);
                        level.tripped_labels.insert(series, verdict.series.clone());
                    } else {
                        level.tripped_uncounted += 1;
                    }
                    level.detections += 1;
                    level.last_detected_ms = Some(
                        level
                            .last_detected_ms
                            .map_or(verdict.sample_time_ms, |t| t.max(verdict.sample_time_ms)),
                    );
                }
                Change::Cleared => {
                    level.tripped_labels.remove(&series);
                    // A held action is for its detection only: gone with it.
                    level
                        .awaiting
                        .retain(|i| i.decision.series.to_string() != series);
                    if level.tripped.remove(&series).is_none() {
                        level.tripped_uncounted = level.tripped_uncounted.saturating_sub(1);
                    }
                }
            }
            if verdict.forecast.is_some() {
                level.last_forecast = verdict.forecast;
            }
            // Actions are decided on trips only: the trip's id is theirs.
            let detection = (verdict.change == Change::Tripped)
                .then(|| detection_id(&verdict.rule, &verdict.series, verdict.sample_time_ms));
            match &detection {
                Some(id) => level.current_detection = Some((id.clone(), verdict.sample_time_ms)),
                None if level.tripped.is_empty() => level.current_detection = None,
                None => {}
            }
            if let Some(decision) = decision {
                level.last_decision = Some(decision.clone());
                if decision.outcome == Outcome::AwaitingApproval && !decision.dry_run {
                    if level.awaiting.len() >= AWAITING_KEPT {
                        level.awaiting.pop_front();
                    }
                    level
                        .awaiting
                        .push_back(Intent::new(verdict, decision, detection.clone()));
                }
                if decision.outcome == Outcome::Act && !decision.dry_run {
                    if level.intents.len() >= INTENTS_KEPT {
                        level.intents.pop_front();
                    }
                    level
                        .intents
                        .push_back(Intent::new(verdict, decision, detection.clone()));
                }
            }
        }
        self.mark(verdict.rule.clone());
    }

    /// Takes the actions of a rule that are due now; those waiting for a retry stay.
    pub fn take_intents(&self, rule: &RuleKey) -> Vec<Intent> {
        let now = Instant::now();
        let mut levels = self.lock_levels();
        let Some(level) = levels.get_mut(rule) else {
            return Vec::new();
        };
        let (due, waiting): (Vec<Intent>, Vec<Intent>) = level
            .intents
            .drain(..)
            .partition(|i| i.not_before.is_none_or(|t| t <= now));
        level.intents.extend(waiting);
        due
    }

    /// The actions of a rule held for approval, oldest first.
    pub fn awaiting(&self, rule: &RuleKey) -> Vec<Intent> {
        self.lock_levels()
            .get(rule)
            .map(|l| l.awaiting.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the held action of `detection` (approved) out of the held ones.
    pub fn take_approved(&self, rule: &RuleKey, detection: &str) -> Option<Intent> {
        let mut levels = self.lock_levels();
        let level = levels.get_mut(rule)?;
        let index = level
            .awaiting
            .iter()
            .position(|i| i.detection == detection)?;
        level.awaiting.remove(index)
    }

    /// Makes every action waiting for a retry due now (what held them, such as the pause
    /// switch, changed).
    pub fn wake_intents(&self) {
        for level in self.lock_levels().values_mut() {
            for intent in &mut level.intents {
                intent.not_before = None;
            }
        }
    }

    /// Forgets every action waiting for a retry (this replica stopped leading: a retry
    /// decided in its term is not carried into a later one).
    pub fn drop_intents(&self) {
        for level in self.lock_levels().values_mut() {
            level.intents.retain(|i| i.attempts == 0);
        }
    }

    /// Puts back actions to retry (at their `not_before`), ahead of newer ones.
    pub fn requeue(&self, rule: &RuleKey, intents: Vec<Intent>) {
        if intents.is_empty() {
            return;
        }
        let mut levels = self.lock_levels();
        let Some(level) = levels.get_mut(rule) else {
            return;
        };
        for intent in intents.into_iter().rev() {
            level.intents.push_front(intent);
        }
        while level.intents.len() > INTENTS_KEPT {
            level.intents.pop_front();
        }
    }

    /// Live figures from the evaluator (an SLO's budget). A rule is marked dirty only
    /// when a figure moved by a step status shows: 0.1% of budget, or 5% of the time
    /// to exhaustion.
    pub fn observe(&self, snapshots: &[RuleSnapshot]) {
        let mut moved = Vec::new();
        {
            let mut levels = self.lock_levels();
            for snapshot in snapshots {
                let Some(slo) = &snapshot.slo else { continue };
                let Some(level) = levels.get_mut(&snapshot.rule) else {
                    continue;
                };
                let now = (slo.budget_remaining, slo.time_to_exhaustion_days);
                let said_changed = level.slo_not_judged != slo.not_judged;
                if figures_moved(level.slo, now) || said_changed {
                    level.slo = Some(now);
                    level.slo_not_judged = slo.not_judged.clone();
                    moved.push(snapshot.rule.clone());
                }
            }
        }
        for rule in moved {
            self.mark(rule);
        }
    }
}

fn figures_moved(before: Option<(f64, Option<f64>)>, now: (f64, Option<f64>)) -> bool {
    let Some((budget, tte)) = before else {
        return true;
    };
    if (budget - now.0).abs() >= 0.001 || budget.is_finite() != now.0.is_finite() {
        return true;
    }
    match (tte, now.1) {
        (None, None) => false,
        (Some(a), Some(b)) => (a - b).abs() > 0.05 * a.abs().max(b.abs()).max(0.01),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;
    use crate::rules::load::RuleKind;

    fn key(name: &str) -> RuleKey {
        RuleKey {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn verdict(rule: &str, pod: &str, change: Change, at: i64) -> Verdict {
        Verdict {
            rule: key(rule),
            change,
            series: Labels::from_pairs([("__name__", "m"), ("pod", pod)]),
            value: Some(1.0),
            sample_time_ms: at,
            reason: String::new(),
            targets: Vec::new(),
            untargeted: None,
            forecast: None,
            arrived: std::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn many_verdicts_make_one_wake_per_rule() {
        let ledger = Ledger::new();
        for i in 0..1000 {
            ledger.record(
                &verdict("a", &format!("p{}", i % 3), Change::Tripped, i),
                None,
            );
            ledger.record(&verdict("b", "p", Change::Tripped, i), None);
        }
        let mut dirty = ledger.take_dirty().await;
        dirty.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(dirty, vec![key("a"), key("b")]);
        let level = ledger.level(&key("a")).unwrap();
        assert_eq!(level.tripped_count(), 3);
        assert_eq!(level.last_detected_ms, Some(999));
    }

    #[test]
    fn a_cleared_series_leaves_the_tripped_set() {
        let ledger = Ledger::new();
        ledger.record(&verdict("a", "p1", Change::Tripped, 1), None);
        ledger.record(&verdict("a", "p2", Change::Tripped, 2), None);
        ledger.record(&verdict("a", "p1", Change::Cleared, 3), None);
        let level = ledger.level(&key("a")).unwrap();
        assert_eq!(
            level.tripped.keys().collect::<Vec<_>>(),
            vec![r#"m{pod="p2"}"#]
        );
        assert_eq!(level.detections, 2);
    }

    #[test]
    fn a_rule_that_starts_afresh_forgets_its_tripped_series() {
        let ledger = Ledger::new();
        ledger.record(&verdict("a", "p1", Change::Tripped, 1), None);
        ledger.record(&verdict("b", "p1", Change::Tripped, 1), None);
        ledger.record(&verdict("gone", "p1", Change::Tripped, 1), None);
        let mut change = RuleSetChange::default();
        change.plans.insert(key("a"), Default::default());
        change.plans.insert(key("b"), Default::default());
        change.kept.insert(key("a"));
        ledger.rules_changed(&change);
        assert_eq!(ledger.level(&key("a")).unwrap().tripped_count(), 1);
        assert_eq!(ledger.level(&key("b")).unwrap().tripped_count(), 0);
        assert!(ledger.level(&key("gone")).is_none());
    }

    #[test]
    fn budget_moves_are_shown_by_the_step() {
        assert!(figures_moved(None, (1.0, None)));
        assert!(!figures_moved(Some((0.5, None)), (0.5004, None)));
        assert!(figures_moved(Some((0.5, None)), (0.499, None)));
        assert!(!figures_moved(Some((0.5, Some(10.0))), (0.5, Some(10.3))));
        assert!(figures_moved(Some((0.5, Some(10.0))), (0.5, Some(11.0))));
        assert!(figures_moved(Some((0.5, None)), (0.5, Some(11.0))));
    }
}
