//! What a rule's `status` should say, decided from the rule as compiled, its level state
//! in the ledger and the status it has now: pure functions, no I/O, so a reconcile that
//! runs twice writes once (the second finds nothing to change) and each outcome is
//! unit-tested. Also the Events a status change stands for: derived from the stored
//! status and the desired one, so an Event is published once per transition, whoever
//! the leader is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::ledger::RuleLevel;
use crate::actuate::Outcome;
use crate::http::RuleStatus;
use crate::rules::crd::{
    ActionRecord, AnomalyActionStatus, AnomalyPhase, Forecast, PendingApproval,
    PredictiveScalePhase, PredictiveScaleStatus, SLOViolationStatus, SloPhase,
};

/// Everything a desired status is decided from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The rule as compiled into the running rule set; `None` while the rule set that
    /// holds this resource has not been applied yet.
    pub compiled: Option<&'a RuleStatus>,
    pub level: Option<&'a RuleLevel>,
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// The wall clock, for condition transitions.
    pub now: &'a Time,
    /// Actions done (or tried) since status was last written, oldest first.
    pub actions: &'a [ActionRecord],
    /// The newest failure or refusal of an action, while no later action succeeded:
    /// (reason, message).
    pub action_failure: Option<(&'a str, &'a str)>,
    /// K8sGPT's analysis of what was last acted on.
    pub analysis: Option<&'a str>,
    /// Actions held by `requireApproval` now.
    pub pending_approvals: &'a [PendingApproval],
    /// Trips since status was last written by this leader (`None`: not known, a new
    /// leader): a violation that began and ended between two writes still counts.
    pub new_trips: Option<u64>,
}

/// How many actions `status.lastActions` keeps.
pub const LAST_ACTIONS: usize = 10;

/// `status.lastActions`: the new records, newest first, then what was there.
fn last_actions(current: &[ActionRecord], observed: &Observed<'_>) -> Vec<ActionRecord> {
    observed
        .actions
        .iter()
        .rev()
        .chain(current.iter())
        .take(LAST_ACTIONS)
        .cloned()
        .collect()
}

/// Actions that count as a remediation (or a scaling): changes to workloads and node
/// pools, not notifications, releases or resumes.
const COUNTED_ACTIONS: [&str; 10] = [
    "evict",
    "rollout-restart",
    "scale",
    "hpa-min-replicas",
    "keda-min-replicas",
    "rollback",
    "placeholders",
    "nodepool-limits",
    "nodepool-budget",
    "nodepool-weight",
];

/// How many detections the new records changed something for (one provision that
/// touches a pool three ways is one), and the time of the newest change.
fn changes(observed: &Observed<'_>) -> (i64, Option<Time>) {
    let changed: Vec<&ActionRecord> = observed
        .actions
        .iter()
        .filter(|a| a.result == "Succeeded" && COUNTED_ACTIONS.contains(&a.action.as_str()))
        .collect();
    let mut detections: Vec<String> = changed
        .iter()
        .map(|a| a.detection.clone().unwrap_or_else(|| a.target.clone()))
        .collect();
    detections.sort();
    detections.dedup();
    (
        detections.len() as i64,
        changed.last().map(|a| a.time.clone()),
    )
}

/// `ActionFailed`: true while the newest action failed or was refused and none
/// succeeded after it.
fn action_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    observed: &Observed<'_>,
) -> bool {
    let (status, reason, message) = match observed.action_failure {
        Some((reason, message)) => (true, reason, message.to_owned()),
        None => (false, "NoFailure", "no action is failing".to_owned()),
    };
    set_condition(
        conditions,
        previous,
        ACTION_FAILED,
        status,
        reason,
        message,
        observed,
    );
    status
}

/// A Kubernetes Event a status transition stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// CamelCase, stable: Events are grouped by reason.
    pub reason: &'static str,
    pub warning: bool,
    /// Stable text; the changing figures are in status.
    pub note: String,
}

const READY: &str = "Ready";
const RULE_VALID: &str = "RuleValid";
const TRIPPED: &str = "Tripped";
const AWAITING_APPROVAL: &str = "AwaitingApproval";
const ACTION_FAILED: &str = "ActionFailed";

/// Sets one condition in `conditions`, keeping its `lastTransitionTime` from `previous`
/// when its status did not change (so an unchanged condition compares equal).
fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
    observed: &Observed<'_>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or_else(|| observed.now.clone(), |c| c.last_transition_time.clone());
    conditions.push(Condition {
        type_: kind.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: observed.generation,
        last_transition_time,
    });
}

/// Whether the rule is valid and evaluated, as the common conditions say.
struct Validity {
    valid: bool,
    message: Option<String>,
}

/// `RuleValid` and `Ready` (shared by the three kinds); `None` while the resource's
/// current generation is not compiled yet (nothing to say about it).
fn common_conditions(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    observed: &Observed<'_>,
) -> Option<Validity> {
    let compiled = observed.compiled?;
    if compiled.generation.is_some() && compiled.generation != observed.generation {
        return None;
    }
    let (valid, reason) = match compiled.state {
        "active" => (true, "Valid"),
        "unsupported" => (false, "Unsupported"),
        _ => (false, "Invalid"),
    };
    let message = compiled.message.clone();
    set_condition(
        conditions,
        previous,
        RULE_VALID,
        valid,
        reason,
        message
            .clone()
            .unwrap_or_else(|| "the rule compiled and is evaluated on the stream".into()),
        observed,
    );
    set_condition(
        conditions,
        previous,
        READY,
        valid,
        if valid { "Evaluating" } else { reason },
        if valid {
            "evaluated on every sample of its series".into()
        } else {
            "not evaluated: see RuleValid".into()
        },
        observed,
    );
    // A valid rule's message (what it evaluates) stays in RuleValid: the status's own
    // message is then the newest decision.
    Some(Validity {
        valid,
        message: message.filter(|_| !valid),
    })
}

fn tripped_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    level: Option<&RuleLevel>,
    observed: &Observed<'_>,
) -> bool {
    let count = level.map_or(0, RuleLevel::tripped_count);
    let tripped = count > 0;
    let message = match level.filter(|_| tripped) {
        Some(level) => {
            let named: Vec<&str> = level.tripped.keys().take(3).map(String::as_str).collect();
            let more = count.saturating_sub(named.len());
            let mut text = format!("{count} series tripped: {}", named.join(", "));
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        }
        None => "no series tripped".into(),
    };
    set_condition(
        conditions,
        previous,
        TRIPPED,
        tripped,
        if tripped { "Tripped" } else { "NotTripped" },
        message,
        observed,
    );
    tripped
}

/// `AwaitingApproval` (AnomalyAction): true while the rule is tripped and its newest
/// decision is held by `requireApproval`.
fn approval_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    observed: &Observed<'_>,
) {
    let (status, reason, message) = match observed.pending_approvals {
        [] => (
            false,
            "NothingHeld",
            "no action is waiting for approval".to_owned(),
        ),
        [first, ..] => (
            true,
            "RequireApproval",
            format!(
                "{} action(s) held until approved (requireApproval); the oldest: {} of {} for detection {}: approve it with an ActionApproval naming rule and detection",
                observed.pending_approvals.len(),
                first.action,
                first.series,
                first.detection
            ),
        ),
    };
    set_condition(
        conditions,
        previous,
        AWAITING_APPROVAL,
        status,
        reason,
        message,
        observed,
    );
}

/// A status time, to the second: `metav1.Time` is written in whole seconds, so a finer
/// time would never compare equal to what the API server holds, and every reconcile would
/// write again.
fn time_of(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(ms.div_euclid(1000))
        .ok()
        .map(Time)
}

/// What the newest decision says, for `message`.
fn decision_message(level: Option<&RuleLevel>) -> Option<String> {
    let decision = level?.last_decision.as_ref()?;
    let outcome = match decision.outcome {
        Outcome::Act if decision.dry_run => "would act (dry run)",
        Outcome::Act => "acted",
        Outcome::Cooldown => "held by cooldown",
        Outcome::AwaitingApproval => "awaiting approval",
        Outcome::NoTarget => "no target",
        Outcome::Resolved => "resolved",
        Outcome::Stale => "stale (not acted on)",
    };
    Some(format!(
        "{} {}: {outcome}; {}",
        decision.action, decision.series, decision.reason
    ))
}

/// The desired status of an AnomalyAction.
pub fn anomaly_action(
    current: Option<&AnomalyActionStatus>,
    observed: &Observed<'_>,
) -> Option<AnomalyActionStatus> {
    let previous = current.map_or(&[][..], |s| &s.conditions[..]);
    let mut conditions = Vec::new();
    let validity = common_conditions(&mut conditions, previous, observed)?;
    let level = observed.level;
    let tripped = tripped_condition(&mut conditions, previous, level, observed);
    approval_condition(&mut conditions, previous, observed);
    let failing = action_condition(&mut conditions, previous, observed);
    let (acted, acted_at) = changes(observed);
    let was_detected = current.is_some_and(|s| {
        matches!(
            s.phase,
            AnomalyPhase::Detected | AnomalyPhase::Remediating | AnomalyPhase::Resolved
        )
    }) || level.is_some_and(|l| l.detections > 0);
    let remediating =
        acted > 0 || (tripped && current.is_some_and(|s| s.phase == AnomalyPhase::Remediating));
    let phase = if !validity.valid || (failing && tripped) {
        AnomalyPhase::Failed
    } else if tripped && remediating {
        AnomalyPhase::Remediating
    } else if tripped {
        AnomalyPhase::Detected
    } else if was_detected {
        AnomalyPhase::Resolved
    } else {
        AnomalyPhase::Pending
    };
    let last_detected = level
        .and_then(|l| l.last_detected_ms)
        .and_then(time_of)
        .or_else(|| current.and_then(|s| s.last_detected.clone()));
    Some(AnomalyActionStatus {
        phase,
        last_detected,
        last_remediated: acted_at.or_else(|| current.and_then(|s| s.last_remediated.clone())),
        remediation_count: current.map_or(0, |s| s.remediation_count) + acted,
        pending_approvals: observed.pending_approvals.to_vec(),
        k8sgpt_analysis: observed
            .analysis
            .map(str::to_owned)
            .or_else(|| current.and_then(|s| s.k8sgpt_analysis.clone())),
        last_actions: last_actions(current.map_or(&[][..], |s| &s.last_actions[..]), observed),
        observed_generation: observed.generation,
        message: validity.message.or_else(|| decision_message(level)),
        conditions,
    })
}

/// The desired status of a PredictiveScale.
pub fn predictive_scale(
    current: Option<&PredictiveScaleStatus>,
    observed: &Observed<'_>,
) -> Option<PredictiveScaleStatus> {
    let previous = current.map_or(&[][..], |s| &s.conditions[..]);
    let mut conditions = Vec::new();
    let validity = common_conditions(&mut conditions, previous, observed)?;
    let level = observed.level;
    let tripped = tripped_condition(&mut conditions, previous, level, observed);
    let failing = action_condition(&mut conditions, previous, observed);
    let (acted, acted_at) = changes(observed);
    let phase = if !validity.valid || failing {
        PredictiveScalePhase::Failed
    } else if tripped {
        PredictiveScalePhase::Scaling
    } else if acted > 0 || current.is_some_and(|s| s.phase == PredictiveScalePhase::Complete) {
        PredictiveScalePhase::Complete
    } else {
        PredictiveScalePhase::Monitoring
    };
    let last_forecast = level
        .and_then(|l| l.last_forecast)
        .and_then(|f| {
            Some(Forecast {
                value: f.value,
                lower: f.lower,
                upper: f.upper,
                current: f.current,
                at: time_of(f.at_ms)?,
            })
        })
        .filter(|f| {
            [f.value, f.lower, f.upper, f.current]
                .iter()
                .all(|v| v.is_finite())
        })
        .or_else(|| current.and_then(|s| s.last_forecast.clone()));
    Some(PredictiveScaleStatus {
        phase,
        last_forecast,
        last_scaled: acted_at.or_else(|| current.and_then(|s| s.last_scaled.clone())),
        scaling_count: current.map_or(0, |s| s.scaling_count) + acted,
        last_actions: last_actions(current.map_or(&[][..], |s| &s.last_actions[..]), observed),
        observed_generation: observed.generation,
        message: validity.message.or_else(|| decision_message(level)),
        conditions,
    })
}

/// The desired status of an SLOViolation. Budget figures are rounded to the step a
/// reader notices (0.1% of budget, 0.1 day), so noise below it writes nothing.
pub fn slo_violation(
    current: Option<&SLOViolationStatus>,
    observed: &Observed<'_>,
) -> Option<SLOViolationStatus> {
    let previous = current.map_or(&[][..], |s| &s.conditions[..]);
    let mut conditions = Vec::new();
    let validity = common_conditions(&mut conditions, previous, observed)?;
    let level = observed.level;
    let violated = tripped_condition(&mut conditions, previous, level, observed);
    action_condition(&mut conditions, previous, observed);
    let (acted, _) = changes(observed);
    let was_violated = current.is_some_and(|s| {
        matches!(
            s.phase,
            SloPhase::Violated | SloPhase::Remediating | SloPhase::Resolved
        )
    }) || level.is_some_and(|l| l.detections > 0);
    let remediating = acted > 0 || current.is_some_and(|s| s.phase == SloPhase::Remediating);
    let phase = if violated && remediating {
        SloPhase::Remediating
    } else if violated {
        SloPhase::Violated
    } else if was_violated && validity.valid {
        SloPhase::Resolved
    } else {
        SloPhase::Monitoring
    };
    let figures = level.and_then(|l| l.slo);
    let round = |v: f64, step: f64| (v / step).round() * step;
    let error_budget_remaining = figures
        .map(|(budget, _)| round(budget, 0.001))
        .filter(|v| v.is_finite());
    let time_to_exhaustion = figures
        .and_then(|(_, tte)| tte)
        .map(|days| round(days, 0.1))
        .filter(|v| v.is_finite());
    let (error_budget_remaining, time_to_exhaustion) = if figures.is_some() {
        (error_budget_remaining, time_to_exhaustion)
    } else {
        (
            current.and_then(|s| s.error_budget_remaining),
            current.and_then(|s| s.time_to_exhaustion),
        )
    };
    let last_violated = level
        .and_then(|l| l.last_detected_ms)
        .and_then(time_of)
        .or_else(|| current.and_then(|s| s.last_violated.clone()));
    let previously_violated =
        current.is_some_and(|s| matches!(s.phase, SloPhase::Violated | SloPhase::Remediating));
    let began = i64::from(violated && !previously_violated);
    let trips = observed
        .new_trips
        .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let violation_count = current.map_or(0, |s| s.violation_count) + began.max(trips);
    Some(SLOViolationStatus {
        phase,
        error_budget_remaining,
        time_to_exhaustion,
        last_violated,
        violation_count,
        last_actions: last_actions(current.map_or(&[][..], |s| &s.last_actions[..]), observed),
        observed_generation: observed.generation,
        message: validity
            .message
            .or_else(|| level.and_then(|l| l.slo_not_judged.clone()))
            .or_else(|| decision_message(level)),
        conditions,
    })
}

fn condition_status<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.as_str())
}

/// The Events a status change stands for: the rule became invalid or valid again, it
/// tripped, it cleared.
pub fn transitions(
    before: &[Condition],
    after: &[Condition],
    message: Option<&str>,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let changed = |kind| {
        let now = condition_status(after, kind);
        (condition_status(before, kind) != now)
            .then_some(now)
            .flatten()
    };
    match changed(RULE_VALID) {
        Some("False") => out.push(Transition {
            reason: "RuleInvalid",
            warning: true,
            note: message
                .unwrap_or("the rule is not evaluated")
                .chars()
                .take(1000)
                .collect(),
        }),
        Some("True") if condition_status(before, RULE_VALID).is_some() => out.push(Transition {
            reason: "RuleValid",
            warning: false,
            note: "the rule compiled and is evaluated on the stream".into(),
        }),
        _ => {}
    }
    if changed(AWAITING_APPROVAL) == Some("True") {
        out.push(Transition {
            reason: "AwaitingApproval",
            warning: false,
            note: "an action is held until approved; see status".into(),
        });
    }
    if changed(ACTION_FAILED) == Some("True") {
        out.push(Transition {
            reason: "ActionFailed",
            warning: true,
            note: "an action failed or was refused; see the ActionFailed condition".into(),
        });
    }
    match changed(TRIPPED) {
        Some("True") => out.push(Transition {
            reason: "Tripped",
            warning: true,
            note: "the rule tripped; see status for the series and the decision".into(),
        }),
        Some("False") if condition_status(before, TRIPPED) == Some("True") => {
            out.push(Transition {
                reason: "Resolved",
                warning: false,
                note: "no series is tripped any more".into(),
            })
        }
        _ => {}
    }
    out
}

/// Whether the status a transition's Event announced still holds in `conditions`: an
/// Event held back by the rate limit is published late only if so.
pub fn transition_holds(reason: &str, conditions: &[Condition]) -> bool {
    let status = |kind| condition_status(conditions, kind);
    match reason {
        "RuleInvalid" => status(RULE_VALID) == Some("False"),
        "RuleValid" => status(RULE_VALID) == Some("True"),
        "AwaitingApproval" => status(AWAITING_APPROVAL) == Some("True"),
        "ActionFailed" => status(ACTION_FAILED) == Some("True"),
        "Tripped" => status(TRIPPED) == Some("True"),
        "Resolved" => status(TRIPPED) == Some("False"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn compiled(state: &'static str, generation: i64) -> RuleStatus {
        RuleStatus {
            rule: crate::rules::load::RuleKey {
                kind: crate::rules::load::RuleKind::AnomalyAction,
                namespace: "shop".into(),
                name: "r".into(),
            },
            state,
            message: Some(if state == "active" {
                "evaluated on the stream: m outside likelihood band (k=3, 1h)".into()
            } else {
                "spec.threshold: not a quantity".into()
            }),
            generation: Some(generation),
        }
    }

    fn tripped(series: &[&str], at: i64) -> RuleLevel {
        RuleLevel {
            tripped: series.iter().map(|s| (s.to_string(), at)).collect(),
            detections: series.len() as u64,
            last_detected_ms: Some(at),
            ..RuleLevel::default()
        }
    }

    #[test]
    fn an_active_rule_with_nothing_tripped_is_pending_and_ready() {
        let compiled = compiled("active", 1);
        let t = now(100);
        let observed = Observed {
            compiled: Some(&compiled),
            level: None,
            generation: Some(1),
            now: &t,
            actions: &[],
            action_failure: None,
            analysis: None,
            pending_approvals: &[],
            new_trips: None,
        };
        let status = anomaly_action(None, &observed).unwrap();
        assert_eq!(status.phase, AnomalyPhase::Pending);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(condition_status(&status.conditions, READY), Some("True"));
        assert_eq!(condition_status(&status.conditions, TRIPPED), Some("False"));
        // RuleValid says what is evaluated; the status's message is left to decisions.
        let valid = status
            .conditions
            .iter()
            .find(|c| c.type_ == RULE_VALID)
            .unwrap();
        assert_eq!(
            valid.message,
            "evaluated on the stream: m outside likelihood band (k=3, 1h)"
        );
        assert_eq!(status.message, None);
    }

    #[test]
    fn an_invalid_rule_fails_with_the_reason_and_one_event() {
        let compiled = compiled("invalid", 3);
        let t = now(100);
        let observed = Observed {
            compiled: Some(&compiled),
            level: None,
            generation: Some(3),
            now: &t,
            actions: &[],
            action_failure: None,
            analysis: None,
            pending_approvals: &[],
            new_trips: None,
        };
        let status = anomaly_action(None, &observed).unwrap();
        assert_eq!(status.phase, AnomalyPhase::Failed);
        let valid = status
            .conditions
            .iter()
            .find(|c| c.type_ == RULE_VALID)
            .unwrap();
        assert_eq!(valid.status, "False");
        assert_eq!(valid.reason, "Invalid");
        assert!(
            valid.message.contains("spec.threshold"),
            "{}",
            valid.message
        );
        let events = transitions(&[], &status.conditions, status.message.as_deref());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "RuleInvalid");
        // The same status again: nothing changes, no Event.
        let again = anomaly_action(Some(&status), &observed).unwrap();
        assert_eq!(again, status);
        assert!(transitions(&status.conditions, &again.conditions, None).is_empty());
    }

    #[test]
    fn a_spec_not_compiled_yet_says_nothing() {
        let compiled = compiled("active", 1);
        let t = now(100);
        let observed = Observed {
            compiled: Some(&compiled),
            level: None,
            generation: Some(2),
            now: &t,
            actions: &[],
            action_failure: None,
            analysis: None,
            pending_approvals: &[],
            new_trips: None,
        };
        assert!(anomaly_action(None, &observed).is_none());
    }

    #[test]
    fn a_trip_detects_then_resolves_keeping_transition_times() {
        let compiled = compiled("active", 1);
        let level = tripped(&[r#"m{pod="a"}"#], 50_000);
        let t1 = now(100);
        let detected = anomaly_action(
            None,
            &Observed {
                compiled: Some(&compiled),
                level: Some(&level),
                generation: Some(1),
                now: &t1,
                actions: &[],
                action_failure: None,
                analysis: None,
                pending_approvals: &[],
                new_trips: None,
            },
        )
        .unwrap();
        assert_eq!(detected.phase, AnomalyPhase::Detected);
        assert_eq!(detected.last_detected, time_of(50_000));
        let events = transitions(&[], &detected.conditions, None);
        assert_eq!(
            events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            vec!["Tripped"]
        );

        let cleared = RuleLevel {
            tripped: Default::default(),
            ..level.clone()
        };
        let t2 = now(200);
        let resolved = anomaly_action(
            Some(&detected),
            &Observed {
                compiled: Some(&compiled),
                level: Some(&cleared),
                generation: Some(1),
                now: &t2,
                actions: &[],
                action_failure: None,
                analysis: None,
                pending_approvals: &[],
                new_trips: None,
            },
        )
        .unwrap();
        assert_eq!(resolved.phase, AnomalyPhase::Resolved);
        let ready = |s: &AnomalyActionStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == READY)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(ready(&resolved), ready(&detected), "Ready did not change");
        let events = transitions(&detected.conditions, &resolved.conditions, None);
        assert_eq!(
            events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            vec!["Resolved"]
        );
    }

    #[test]
    fn a_held_action_awaits_approval_and_says_which_detection_to_approve() {
        let compiled = compiled("active", 1);
        let level = tripped(&[r#"m{pod="a"}"#], 50_000);
        let held = [PendingApproval {
            detection: "3f2a9c0d11e4b7a2".into(),
            action: "restart".into(),
            targets: vec!["Pod shop/a".into()],
            series: r#"m{pod="a"}"#.into(),
            detected_at: now(50),
        }];
        let t = now(100);
        let observed = Observed {
            compiled: Some(&compiled),
            level: Some(&level),
            generation: Some(1),
            now: &t,
            actions: &[],
            action_failure: None,
            analysis: None,
            pending_approvals: &held,
            new_trips: None,
        };
        let status = anomaly_action(None, &observed).unwrap();
        assert_eq!(
            condition_status(&status.conditions, AWAITING_APPROVAL),
            Some("True")
        );
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == AWAITING_APPROVAL)
            .unwrap();
        assert!(
            condition.message.contains("3f2a9c0d11e4b7a2"),
            "{}",
            condition.message
        );
        assert_eq!(status.pending_approvals, held);
        let events = transitions(&[], &status.conditions, None);
        assert!(
            events.iter().any(|e| e.reason == "AwaitingApproval"),
            "{events:?}"
        );
        // Approved and done (or its series cleared): nothing held any more.
        let done = anomaly_action(
            Some(&status),
            &Observed {
                pending_approvals: &[],
                new_trips: None,
                ..observed
            },
        )
        .unwrap();
        assert_eq!(
            condition_status(&done.conditions, AWAITING_APPROVAL),
            Some("False")
        );
        assert!(done.pending_approvals.is_empty());
    }

    #[test]
    fn an_action_failing_shows_until_one_succeeds_and_counts_only_changes() {
        let compiled = compiled("active", 1);
        let level = tripped(&[r#"m{pod="a"}"#], 50_000);
        let t = now(100);
        let record = |result: &str| ActionRecord {
            time: now(90),
            action: "evict".into(),
            target: "Pod shop/a".into(),
            target_uid: Some("u1".into()),
            result: result.into(),
            message: Some("detail".into()),
            detection: Some("d1".into()),
            approver: None,
        };
        let failed = [record("Failed")];
        let observed = Observed {
            compiled: Some(&compiled),
            level: Some(&level),
            generation: Some(1),
            now: &t,
            actions: &failed,
            action_failure: Some((
                "DisruptionBudget",
                "evict Pod shop/a: the budget allows none",
            )),
            analysis: None,
            pending_approvals: &[],
            new_trips: None,
        };
        let status = anomaly_action(None, &observed).unwrap();
        assert_eq!(status.phase, AnomalyPhase::Failed);
        assert_eq!(status.remediation_count, 0);
        assert_eq!(
            condition_status(&status.conditions, ACTION_FAILED),
            Some("True")
        );
        assert!(
            transitions(&[], &status.conditions, None)
                .iter()
                .any(|e| e.reason == "ActionFailed")
        );
        let succeeded = [record("Succeeded")];
        let retried = anomaly_action(
            Some(&status),
            &Observed {
                actions: &succeeded,
                action_failure: None,
                ..observed
            },
        )
        .unwrap();
        assert_eq!(retried.phase, AnomalyPhase::Remediating);
        assert_eq!(retried.remediation_count, 1);
        assert_eq!(retried.last_actions.len(), 2);
        assert_eq!(retried.last_actions[0].result, "Succeeded");
        assert_eq!(
            condition_status(&retried.conditions, ACTION_FAILED),
            Some("False")
        );
        // Written once: the same reconcile again (nothing new) changes nothing.
        let again = anomaly_action(
            Some(&retried),
            &Observed {
                actions: &[],
                action_failure: None,
                ..observed
            },
        )
        .unwrap();
        assert_eq!(again, retried);
    }

    #[test]
    fn an_slo_that_is_not_judged_says_why_and_shows_no_budget() {
        let compiled = compiled("active", 1);
        let level = RuleLevel {
            slo: Some((f64::NAN, None)),
            slo_not_judged: Some("no series of the histogram has a bucket at le".into()),
            ..RuleLevel::default()
        };
        let t = now(100);
        let status = slo_violation(
            None,
            &Observed {
                compiled: Some(&compiled),
                level: Some(&level),
                generation: Some(1),
                now: &t,
                actions: &[],
                action_failure: None,
                analysis: None,
                pending_approvals: &[],
                new_trips: None,
            },
        )
        .unwrap();
        assert_eq!(status.phase, SloPhase::Monitoring);
        assert_eq!(status.error_budget_remaining, None);
        assert!(status.message.unwrap().contains("bucket at le"));
    }

    #[test]
    fn an_slo_counts_each_violation_once_and_rounds_its_budget() {
        let compiled = compiled("active", 1);
        let mut level = tripped(&["{}"], 10_000);
        level.slo = Some((0.123_456, Some(3.333)));
        let t = now(100);
        let observed = Observed {
            compiled: Some(&compiled),
            level: Some(&level),
            generation: Some(1),
            now: &t,
            actions: &[],
            action_failure: None,
            analysis: None,
            pending_approvals: &[],
            new_trips: None,
        };
        let violated = slo_violation(None, &observed).unwrap();
        assert_eq!(violated.phase, SloPhase::Violated);
        assert_eq!(violated.violation_count, 1);
        assert_eq!(violated.error_budget_remaining, Some(0.123));
        assert_eq!(violated.time_to_exhaustion, Some(3.3000000000000003));
        let again = slo_violation(Some(&violated), &observed).unwrap();
        assert_eq!(again.violation_count, 1, "still the same violation");
        assert_eq!(again, violated);
        // Two violations that began and ended between two writes: both counted, though
        // status never saw them violated.
        let calm = RuleLevel {
            detections: 3,
            ..RuleLevel::default()
        };
        let after = slo_violation(
            Some(&violated),
            &Observed {
                level: Some(&calm),
                new_trips: Some(2),
                ..observed
            },
        )
        .unwrap();
        assert_eq!(after.violation_count, 3);
        assert_eq!(after.phase, SloPhase::Resolved);
    }
}
