//! A PredictiveScale's actions on Karpenter `karpenter.sh/v1` NodePools: placeholder pods
//! that reserve capacity ahead of a forecast rise, a raise of the pool's `spec.limits` to
//! make room for them, a disruption budget that holds consolidation through the forecast
//! peak, and a move of scheduling preference between two pools by `spec.weight`.
//!
//! It owns the placeholder Deployment `prophet-reserve-<rule>` in the rule's own
//! namespace and Prophet's marks on NodePools (annotations under `aiops.prophet.io/`,
//! one disruption budget entry per rule, raised limits and weights it can give back).
//! The tenant's rule never decides alone which NodePool it may change or how far: the
//! cluster admin's annotations on the NodePool do ([`NodePoolPolicy`]). It must never
//! edit a NodePool's `spec.template` (requirements, labels, taints: Karpenter reads any
//! change there as drift and replaces every node of the pool), never lower a limit the
//! user set, never replace the user's budgets (it adds and removes its own entry, found
//! by value), and never write a NodePool without a `resourceVersion` precondition.
//!
//! NodePools are cluster-scoped and Karpenter need not be installed for Prophet to
//! start, so they are read through the dynamic API; a missing CRD is
//! `KarpenterMissing`, a missing NodePool `NotFound` (both retried).
//!
//! RBAC: `karpenter.sh` `nodepools` get, list, patch (cluster-wide); `apps` `deployments`
//! get, patch (server-side apply creates), delete in the rules' namespaces. Discovery of
//! `/apis/karpenter.sh/v1` (granted to every authenticated user by `system:discovery`).
//! The PriorityClass `prophet-placeholder` (deploy/priorityclass.yaml) must be installed;
//! nothing is read or written of it at run time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Value, json};

use super::{ANNOTATION_PREFIX, ActError, Acted, Actor, TargetRef, guard};
use crate::eval::ForecastView;
use crate::rules::crd::{PredictiveScaleSpec, Reservation};
use crate::rules::quantity::parse_quantity;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "prophet";
/// The PriorityClass of placeholder pods (deploy/priorityclass.yaml).
pub const PLACEHOLDER_PRIORITY_CLASS: &str = "prophet-placeholder";
/// The container of placeholder pods: it sleeps and uses next to nothing.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The label Karpenter puts on every node of a NodePool, naming it.
pub const NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";

/// Admin policy: the namespaces whose rules may act on the pool, comma-separated.
pub const ALLOWED_NAMESPACES: &str = "aiops.prophet.io/allowed-namespaces";
/// Admin policy: the most Prophet may raise `spec.limits.cpu` to.
pub const MAX_LIMITS_CPU: &str = "aiops.prophet.io/max-limits-cpu";
/// Admin policy: the most Prophet may raise `spec.limits.memory` to.
pub const MAX_LIMITS_MEMORY: &str = "aiops.prophet.io/max-limits-memory";
/// Admin policy: the most placeholder pods one rule may keep for the pool.
pub const MAX_PLACEHOLDERS: &str = "aiops.prophet.io/max-placeholders";
/// The user's limits before Prophet first raised them (JSON: `{"cpu": "100"}`).
pub const ORIGINAL_LIMITS: &str = "aiops.prophet.io/original-limits";
/// The limits Prophet last wrote (JSON): a limit is given back only while it still has
/// this value; one the user changed since is theirs.
pub const LIMITS_SET: &str = "aiops.prophet.io/limits-set";
/// The pool's weight before a rule first changed it (JSON: a number, or null for none).
pub const ORIGINAL_WEIGHT: &str = "aiops.prophet.io/original-weight";

/// Placeholders one rule keeps at most when the rule does not say.
const DEFAULT_MAX_PLACEHOLDERS: i32 = 10;
const DEFAULT_PLACEHOLDER_CPU: &str = "1";
const DEFAULT_PLACEHOLDER_MEMORY: &str = "1Gi";
/// Karpenter's documented default when a pool has no budgets: written out when Prophet
/// adds the first entry, so that its entry does not lift the default for other reasons.
const DEFAULT_BUDGET_NODES: &str = "10%";
/// The longest name a placeholder Deployment (and the label values naming it) may have.
const MAX_NAME: usize = 63;

const RESOURCES: [&str; 2] = ["cpu", "memory"];

/// `karpenter.sh/v1` `NodePool`.
pub fn node_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("karpenter.sh", "v1", "NodePool"),
        "nodepools",
    )
}

fn budget_annotation(actor: &Actor) -> String {
    format!("{ANNOTATION_PREFIX}budget.{}", actor.claim_key())
}

fn limits_annotation(actor: &Actor) -> String {
    format!("{ANNOTATION_PREFIX}limits.{}", actor.claim_key())
}

fn weight_annotation(actor: &Actor) -> String {
    format!("{ANNOTATION_PREFIX}weight.{}", actor.claim_key())
}

// ---------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------

/// What the cluster admin allows Prophet to do to one NodePool, read from the pool's
/// annotations (a tenant can write its rule, not the cluster-scoped pool).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodePoolPolicy {
    /// `aiops.prophet.io/allowed-namespaces`: the namespaces whose rules may act on the
    /// pool. None without the annotation: no rule may.
    pub allowed_namespaces: Option<Vec<String>>,
    /// `aiops.prophet.io/max-limits-cpu` in cores: the most `spec.limits.cpu` may be
    /// raised to. None: never raised.
    pub max_limits_cpu: Option<f64>,
    /// `aiops.prophet.io/max-limits-memory` in bytes. None: never raised.
    pub max_limits_memory: Option<f64>,
    /// `aiops.prophet.io/max-placeholders`: placeholders one rule may keep for the pool
    /// (on top of the rule's own `maxPlaceholders`). None: only the rule's cap.
    pub max_placeholders: Option<i32>,
}

impl NodePoolPolicy {
    /// Reads the policy from a pool's annotations; a value that does not parse is
    /// refused (`InvalidNodePoolPolicy`) rather than read as "no limit".
    pub fn from_annotations(
        pool: &str,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, ActError> {
        let empty = BTreeMap::new();
        let annotations = annotations.unwrap_or(&empty);
        let invalid = |key: &str, value: &str, why: String| {
            ActError::refused(
                "InvalidNodePoolPolicy",
                format!("NodePool {pool}: annotation {key}={value:?} is invalid: {why}"),
            )
        };
        let quantity = |key: &str| -> Result<Option<f64>, ActError> {
            match annotations.get(key) {
                None => Ok(None),
                Some(value) => match parse_quantity(value.trim()) {
                    Ok(q) if q >= 0.0 => Ok(Some(q)),
                    Ok(_) => Err(invalid(key, value, "negative".into())),
                    Err(e) => Err(invalid(key, value, e.to_string())),
                },
            }
        };
        let max_placeholders = match annotations.get(MAX_PLACEHOLDERS) {
            None => None,
            Some(value) => match value.trim().parse::<i32>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    return Err(invalid(
                        MAX_PLACEHOLDERS,
                        value,
                        "expected a whole number, 0 or more".into(),
                    ));
                }
            },
        };
        Ok(Self {
            allowed_namespaces: annotations.get(ALLOWED_NAMESPACES).map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|ns| !ns.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            max_limits_cpu: quantity(MAX_LIMITS_CPU)?,
            max_limits_memory: quantity(MAX_LIMITS_MEMORY)?,
            max_placeholders,
        })
    }

    /// Reads the policy of a NodePool object.
    pub fn of(pool: &DynamicObject) -> Result<Self, ActError> {
        Self::from_annotations(&pool_name(pool), pool.metadata.annotations.as_ref())
    }

    /// Refuses (`NodePoolNotAllowed`) a rule whose namespace the pool does not list.
    pub fn check_allowed(&self, actor: &Actor, pool: &str) -> Result<(), ActError> {
        match &self.allowed_namespaces {
            Some(list) if list.contains(&actor.namespace) => Ok(()),
            Some(list) => Err(ActError::refused(
                "NodePoolNotAllowed",
                format!(
                    "NodePool {pool} allows rules of namespaces {list:?} ({ALLOWED_NAMESPACES}), not {}'s namespace {:?}; a cluster admin must add it",
                    actor.describe(),
                    actor.namespace
                ),
            )),
            None => Err(ActError::refused(
                "NodePoolNotAllowed",
                format!(
                    "NodePool {pool} has no {ALLOWED_NAMESPACES} annotation, so no rule may change it; a cluster admin must add one listing {:?} for {} to act on it",
                    actor.namespace,
                    actor.describe()
                ),
            )),
        }
    }

    /// The most `resource` (`cpu`, `memory`) may be raised to.
    fn max_limit(&self, resource: &str) -> Option<f64> {
        match resource {
            "cpu" => self.max_limits_cpu,
            "memory" => self.max_limits_memory,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sizing
// ---------------------------------------------------------------------------------------

/// A rule's `reservation`, parsed: how a forecast becomes placeholder pods.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// Cores (bytes) one unit of the forecast query stands for.
    pub cpu_per_unit: Option<f64>,
    pub memory_per_unit: Option<f64>,
    /// What one placeholder requests, as written (for the pod) and as a number.
    pub placeholder_cpu: String,
    pub placeholder_memory: String,
    pub cpu_per_placeholder: f64,
    pub memory_per_placeholder: f64,
    /// The rule's cap on placeholders.
    pub max_placeholders: i32,
}

impl Sizing {
    /// Parses a reservation; refused (`InvalidReservation`) when a quantity does not
    /// parse, a placeholder would request nothing, or neither `cpuPerUnit` nor
    /// `memoryPerUnit` says what a unit of the forecast stands for.
    pub fn parse(reservation: &Reservation) -> Result<Self, ActError> {
        let invalid = |field: &str, value: &str, why: &str| {
            ActError::refused(
                "InvalidReservation",
                format!("reservation.{field} {value:?} is invalid: {why}"),
            )
        };
        let quantity = |field: &str, value: &str, positive: bool| -> Result<f64, ActError> {
            match parse_quantity(value.trim()) {
                Ok(q) if q > 0.0 || (!positive && q == 0.0) => Ok(q),
                Ok(_) => Err(invalid(
                    field,
                    value,
                    if positive {
                        "must be more than 0"
                    } else {
                        "must not be negative"
                    },
                )),
                Err(e) => Err(invalid(field, value, &e.to_string())),
            }
        };
        let per_unit = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| quantity(field, v, false))
                .transpose()
        };
        let cpu_per_unit = per_unit("cpuPerUnit", &reservation.cpu_per_unit)?;
        let memory_per_unit = per_unit("memoryPerUnit", &reservation.memory_per_unit)?;
        if cpu_per_unit.is_none() && memory_per_unit.is_none() {
            return Err(ActError::refused(
                "InvalidReservation",
                "reservation needs cpuPerUnit or memoryPerUnit: what one unit of the forecast query stands for",
            ));
        }
        let placeholder_cpu = reservation
            .placeholder_cpu
            .clone()
            .unwrap_or_else(|| DEFAULT_PLACEHOLDER_CPU.to_owned());
        let placeholder_memory = reservation
            .placeholder_memory
            .clone()
            .unwrap_or_else(|| DEFAULT_PLACEHOLDER_MEMORY.to_owned());
        let cpu_per_placeholder = quantity("placeholderCpu", &placeholder_cpu, true)?;
        let memory_per_placeholder = quantity("placeholderMemory", &placeholder_memory, true)?;
        let max_placeholders = reservation
            .max_placeholders
            .unwrap_or(DEFAULT_MAX_PLACEHOLDERS);
        if max_placeholders < 0 {
            return Err(invalid(
                "maxPlaceholders",
                &max_placeholders.to_string(),
                "must not be negative",
            ));
        }
        Ok(Self {
            cpu_per_unit,
            memory_per_unit,
            placeholder_cpu: placeholder_cpu.trim().to_owned(),
            placeholder_memory: placeholder_memory.trim().to_owned(),
            cpu_per_placeholder,
            memory_per_placeholder,
            max_placeholders,
        })
    }

    /// Placeholders for a forecast: the forecast rise (never below zero) in cores and in
    /// bytes, each divided by what one placeholder requests and rounded up, the larger of
    /// the two; capped by the rule's `maxPlaceholders` and the pool's cap.
    pub fn replicas(&self, forecast: &ForecastView, pool_cap: Option<i32>) -> i32 {
        let rise = forecast.value - forecast.current;
        let rise = if rise.is_finite() { rise.max(0.0) } else { 0.0 };
        let needed = |per_unit: Option<f64>, per_placeholder: f64| -> f64 {
            // The small slack keeps a float product such as 3 × 0.1 / 0.1 from rounding
            // up to one placeholder too many.
            per_unit.map_or(0.0, |u| (rise * u / per_placeholder - 1e-9).ceil().max(0.0))
        };
        let wanted = needed(self.cpu_per_unit, self.cpu_per_placeholder)
            .max(needed(self.memory_per_unit, self.memory_per_placeholder));
        let cap = pool_cap.map_or(self.max_placeholders, |c| c.min(self.max_placeholders));
        // `as` saturates: a huge forecast is capped, never wraps.
        (wanted.min(f64::from(i32::MAX)) as i32).min(cap).max(0)
    }

    /// What `replicas` placeholders request in all, as a limits claim.
    fn reserved(&self, replicas: i32) -> BTreeMap<String, f64> {
        let n = f64::from(replicas);
        BTreeMap::from([
            ("cpu".to_owned(), n * self.cpu_per_placeholder),
            ("memory".to_owned(), n * self.memory_per_placeholder),
        ])
    }
}

/// A quantity written by Prophet: cores rounded up to millicores (`4`, `1500m`), bytes
/// rounded up and written in the largest binary unit that divides them.
pub fn format_quantity(resource: &str, value: f64) -> String {
    if resource == "cpu" {
        let millis = (value * 1000.0 - 1e-6).ceil().max(0.0) as u64;
        if millis.is_multiple_of(1000) {
            format!("{}", millis / 1000)
        } else {
            format!("{millis}m")
        }
    } else {
        let bytes = (value - 1e-6).ceil().max(0.0) as u64;
        for (suffix, unit) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if bytes != 0 && bytes.is_multiple_of(unit) {
                return format!("{}{suffix}", bytes / unit);
            }
        }
        bytes.to_string()
    }
}

/// A limit as the NodePool holds it: `spec.limits` values are int-or-string.
fn quantity_value(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_quantity(s.trim()).ok(),
        _ => None,
    }
}

fn same_quantity(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

// ---------------------------------------------------------------------------------------
// Limits: claims, the user's originals and what Prophet last wrote
// ---------------------------------------------------------------------------------------

/// Changes to a pool's `spec.limits` and Prophet's annotations about them.
#[derive(Debug, Default, PartialEq)]
struct LimitsPlan {
    /// `spec.limits.<resource>` to write.
    set: Vec<(String, Value)>,
    /// Annotations to write (Some) or remove (None).
    annotations: Vec<(String, Option<String>)>,
    /// `cpu 100 → 104`, for the summary.
    changes: Vec<String>,
    /// Why a limit that would have blocked the reservation was not raised.
    notes: Vec<String>,
}

fn json_map(text: Option<&String>) -> serde_json::Map<String, Value> {
    text.and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every rule's limits claim on the pool (`aiops.prophet.io/limits.<claim key>`), by
/// claim key; `ours` replaces (or with None removes) this rule's.
fn limit_claims(
    annotations: &BTreeMap<String, String>,
    our_key: &str,
    ours: Option<&BTreeMap<String, f64>>,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let prefix = format!("{ANNOTATION_PREFIX}limits.");
    let mut claims: BTreeMap<String, BTreeMap<String, f64>> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.as_str() != our_key)
        .map(|(k, v)| {
            let claim = json_map(Some(v))
                .iter()
                .filter_map(|(r, q)| Some((r.clone(), quantity_value(q)?)))
                .collect();
            (k.clone(), claim)
        })
        .collect();
    if let Some(ours) = ours {
        claims.insert(our_key.to_owned(), ours.clone());
    }
    claims
}

/// The limit of `resource` Prophet wants: the user's original plus every claim, capped
/// by the admin's maximum, and never below the original.
fn wanted_limit(
    original: f64,
    max: f64,
    resource: &str,
    claims: &BTreeMap<String, BTreeMap<String, f64>>,
) -> f64 {
    let claimed: f64 = claims.values().filter_map(|c| c.get(resource)).sum();
    original.max((original + claimed).min(max))
}

/// Plans the limits for this rule's claim `ours` (None: the claim is given back).
///
/// A claim raises each limit the pool has (a missing limit blocks nothing) by what the
/// rule reserves, up to the policy's maximum (none: never raised), never lowering it.
/// Giving a claim back lowers a limit to what the remaining claims want, or to the
/// user's original when none remain, but only while the limit still has the value
/// Prophet last wrote: a limit the user changed since is left as it is.
fn plan_limits(
    pool: &Value,
    policy: &NodePoolPolicy,
    annotations: &BTreeMap<String, String>,
    our_key: &str,
    ours: Option<&BTreeMap<String, f64>>,
) -> LimitsPlan {
    let mut plan = LimitsPlan::default();
    let current = pool["spec"]["limits"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let ours = ours.filter(|c| c.values().any(|v| *v > 0.0));
    let had_claim = annotations.contains_key(our_key);
    if ours.is_none() && !had_claim {
        return plan;
    }
    let recorded = json_map(annotations.get(ORIGINAL_LIMITS));
    let originals: serde_json::Map<String, Value> = if annotations.contains_key(ORIGINAL_LIMITS) {
        recorded
    } else {
        RESOURCES
            .iter()
            .filter_map(|r| Some(((*r).to_owned(), current.get(*r)?.clone())))
            .collect()
    };
    let mut written = json_map(annotations.get(LIMITS_SET));
    let claims = limit_claims(annotations, our_key, ours);
    let others_left = claims.keys().any(|k| k != our_key);

    for resource in RESOURCES {
        let Some(original_value) = originals.get(resource) else {
            continue; // no limit: nothing to raise, nothing to give back
        };
        let Some(original) = quantity_value(original_value) else {
            continue;
        };
        let now = current.get(resource).and_then(quantity_value);
        let max = policy.max_limit(resource);
        if ours.is_some() {
            let Some(max) = max else {
                plan.notes.push(format!(
                    "limits.{resource} not raised: the NodePool has no {}",
                    if resource == "cpu" {
                        MAX_LIMITS_CPU
                    } else {
                        MAX_LIMITS_MEMORY
                    }
                ));
                continue;
            };
            let wanted = wanted_limit(original, max, resource, &claims);
            let text = format_quantity(resource, wanted);
            let wanted = parse_quantity(&text).unwrap_or(wanted);
            // A limit the user has removed since (now unlimited) blocks nothing.
            if now.is_some_and(|now| wanted > now && !same_quantity(wanted, now)) {
                plan.changes.push(format!(
                    "limits.{resource} {} → {text}",
                    current
                        .get(resource)
                        .map_or_else(|| "none".to_owned(), value_text)
                ));
                plan.set
                    .push((resource.to_owned(), Value::String(text.clone())));
                written.insert(resource.to_owned(), Value::String(text));
            }
        } else {
            // Giving back: only a limit still at the value Prophet wrote.
            let Some(last) = written.get(resource).and_then(quantity_value) else {
                continue;
            };
            if !now.is_some_and(|now| same_quantity(now, last)) {
                written.remove(resource);
                continue;
            }
            let target = if others_left {
                let text = format_quantity(
                    resource,
                    wanted_limit(original, max.unwrap_or(original), resource, &claims),
                );
                written.insert(resource.to_owned(), Value::String(text.clone()));
                Value::String(text)
            } else {
                written.remove(resource);
                original_value.clone()
            };
            if !quantity_value(&target).is_some_and(|t| now.is_some_and(|n| same_quantity(t, n))) {
                plan.changes.push(format!(
                    "limits.{resource} {} → {}",
                    current
                        .get(resource)
                        .map_or_else(|| "none".to_owned(), value_text),
                    value_text(&target)
                ));
                plan.set.push((resource.to_owned(), target));
            }
        }
    }

    let mut annotate = |key: &str, value: Option<String>| {
        if annotations.get(key) != value.as_ref() {
            plan.annotations.push((key.to_owned(), value));
        }
    };
    if others_left || ours.is_some() {
        annotate(
            ORIGINAL_LIMITS,
            Some(Value::Object(originals.clone()).to_string()),
        );
        annotate(
            LIMITS_SET,
            (!written.is_empty()).then(|| Value::Object(written.clone()).to_string()),
        );
    } else {
        annotate(ORIGINAL_LIMITS, None);
        annotate(LIMITS_SET, None);
    }
    annotate(
        our_key,
        ours.map(|c| {
            let claim: serde_json::Map<String, Value> = c
                .iter()
                .map(|(r, v)| (r.clone(), Value::String(format_quantity(r, *v))))
                .collect();
            Value::Object(claim).to_string()
        }),
    );
    plan
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Disruption budget: the consolidation hold
// ---------------------------------------------------------------------------------------

const MINUTE_MS: i64 = 60_000;

fn utc(ms: i64) -> Option<k8s_openapi::jiff::Zoned> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC))
}

/// A duration of whole minutes as Go's `time.Duration` prints it (`1h30m0s`, `5m0s`):
/// the form Karpenter's pattern accepts and a Go client writes back unchanged, so the
/// entry is still found by value after any controller round-trips the object.
pub fn go_duration(minutes: i64) -> String {
    let (hours, minutes) = (minutes / 60, minutes % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m0s")
    } else {
        format!("{minutes}m0s")
    }
}

/// Prophet's disruption budget entry that holds consolidation (`Underutilized`,
/// `Empty`; drift and expiry go on) from the minute of `now_ms` until `until_ms`,
/// rounded up to a whole minute. Karpenter budgets take a cron schedule and a duration
/// and no end time, so the schedule is the current minute, UTC, of this day of this
/// month (`37 14 3 6 *`): it fires once a year, so an entry left behind by accident
/// would hold consolidation again a year later, for the same duration, and nothing else.
pub fn hold_budget(now_ms: i64, until_ms: i64) -> Value {
    let start_ms = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let minutes = ((until_ms - start_ms + MINUTE_MS - 1).div_euclid(MINUTE_MS)).max(1);
    let schedule = utc(start_ms).map_or_else(
        || "* * * * *".to_owned(),
        |t| format!("{} {} {} {} *", t.minute(), t.hour(), t.day(), t.month()),
    );
    json!({
        "nodes": "0",
        "reasons": ["Underutilized", "Empty"],
        "schedule": schedule,
        "duration": go_duration(minutes),
    })
}

/// When a hold made by [`hold_budget`] ends (ms), read back from its schedule and
/// duration: the schedule's last firing at or before `now_ms`, plus the duration.
pub fn hold_end_ms(entry: &Value, now_ms: i64) -> Option<i64> {
    let fields: Vec<i8> = entry["schedule"]
        .as_str()?
        .split_whitespace()
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [minute, hour, day, month] = fields[..] else {
        return None;
    };
    let duration = entry["duration"].as_str()?.trim_end_matches("0s");
    let (hours, rest) = duration.split_once('h').unwrap_or(("0", duration));
    let minutes: i64 = rest.trim_end_matches('m').parse().unwrap_or(0);
    let total = hours.parse::<i64>().ok()? * 60 + minutes;
    let year = utc(now_ms)?.year();
    let start = |year: i16| -> Option<i64> {
        let at = k8s_openapi::jiff::civil::date(year, month, day).at(hour, minute, 0, 0);
        Some(
            at.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
                .ok()?
                .timestamp()
                .as_millisecond(),
        )
    };
    let this_year = start(year)?;
    let start = if this_year > now_ms {
        start(year - 1)?
    } else {
        this_year
    };
    Some(start + total * MINUTE_MS)
}

// ---------------------------------------------------------------------------------------
// The NodePool patch: a JSON Patch guarded by the resourceVersion read
// ---------------------------------------------------------------------------------------

/// RFC 6901: `~` and `/` in a key.
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A JSON Patch of one NodePool, built from the object as read: its first operation
/// tests `metadata.resourceVersion`, so a change made by anyone between the read and
/// the patch fails it (the server answers 409 or 422) instead of being overwritten.
struct PoolPatch {
    ops: Vec<Value>,
    has_annotations: bool,
    budgets: Option<Vec<Value>>,
    has_disruption: bool,
    changed: bool,
}

impl PoolPatch {
    fn new(pool: &Value) -> Self {
        Self {
            ops: vec![json!({
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": pool["metadata"]["resourceVersion"],
            })],
            has_annotations: pool["metadata"]["annotations"].is_object(),
            budgets: pool["spec"]["disruption"]["budgets"].as_array().cloned(),
            has_disruption: pool["spec"]["disruption"].is_object(),
            changed: false,
        }
    }

    fn push(&mut self, op: Value) {
        self.ops.push(op);
        self.changed = true;
    }

    fn annotate(&mut self, key: &str, value: Option<String>) {
        let path = format!("/metadata/annotations/{}", pointer_key(key));
        match value {
            Some(value) => {
                if !self.has_annotations {
                    self.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
                    self.has_annotations = true;
                }
                self.push(json!({"op": "add", "path": path, "value": value}));
            }
            None => self.push(json!({"op": "remove", "path": path})),
        }
    }

    fn set_limit(&mut self, resource: &str, value: Value) {
        self.push(json!({"op": "add", "path": format!("/spec/limits/{resource}"), "value": value}));
    }

    fn set_weight(&mut self, weight: Option<i64>) {
        match weight {
            Some(w) => self.push(json!({"op": "add", "path": "/spec/weight", "value": w})),
            None => self.push(json!({"op": "remove", "path": "/spec/weight"})),
        }
    }

    /// Removes the budget entry equal to `entry`, if the list has it (tested first, so
    /// the index is the one read). True when found.
    fn remove_budget(&mut self, entry: &Value) -> bool {
        let Some(budgets) = &mut self.budgets else {
            return false;
        };
        let Some(index) = budgets.iter().position(|b| b == entry) else {
            return false;
        };
        budgets.remove(index);
        let path = format!("/spec/disruption/budgets/{index}");
        self.push(json!({"op": "test", "path": path, "value": entry}));
        self.push(json!({"op": "remove", "path": path}));
        true
    }

    /// Appends `entry` to the user's budgets; where the pool has none (Karpenter then
    /// applies one of 10%), that default is written out beside it.
    fn add_budget(&mut self, entry: Value) {
        match &mut self.budgets {
            Some(budgets) => {
                budgets.push(entry.clone());
                self.push(
                    json!({"op": "add", "path": "/spec/disruption/budgets/-", "value": entry}),
                );
            }
            None => {
                let list = json!([{"nodes": DEFAULT_BUDGET_NODES}, entry]);
                if self.has_disruption {
                    self.push(
                        json!({"op": "add", "path": "/spec/disruption/budgets", "value": list}),
                    );
                } else {
                    self.push(
                        json!({"op": "add", "path": "/spec/disruption", "value": {"budgets": list}}),
                    );
                    self.has_disruption = true;
                }
                self.budgets = list.as_array().cloned();
            }
        }
    }
}

/// What the hold should become: the budget entry now on the pool for this rule (found
/// by the value kept in its annotation) is left when it ends at the same minute as the
/// wanted one, else replaced; `wanted` None removes it. Returns the summary of a change.
fn plan_hold(
    patch: &mut PoolPatch,
    annotations: &BTreeMap<String, String>,
    key: &str,
    wanted: Option<&Value>,
    now_ms: i64,
) -> Option<String> {
    let kept: Option<Value> = annotations
        .get(key)
        .and_then(|text| serde_json::from_str(text).ok());
    let on_pool = kept.as_ref().filter(|entry| {
        patch
            .budgets
            .as_ref()
            .is_some_and(|budgets| budgets.contains(entry))
    });
    match (on_pool, wanted) {
        (Some(old), Some(new))
            if hold_end_ms(old, now_ms).is_some()
                && hold_end_ms(old, now_ms) == hold_end_ms(new, now_ms) =>
        {
            None
        }
        (old, Some(new)) => {
            if let Some(old) = old {
                patch.remove_budget(old);
            }
            patch.add_budget(new.clone());
            patch.annotate(key, Some(new.to_string()));
            let until = hold_end_ms(new, now_ms).map(super::format_time_ms);
            Some(format!(
                "consolidation held until {}",
                until.as_deref().unwrap_or("the forecast peak")
            ))
        }
        (old, None) => {
            let removed = old.is_some_and(|old| patch.remove_budget(old));
            if kept.is_some() || annotations.contains_key(key) {
                patch.annotate(key, None);
            }
            removed.then(|| "consolidation hold removed".to_owned())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------

/// The weights of (preferred, other) that make `preferred` win over `other`, given
/// their original weights (None: none, which Karpenter reads as 0): the higher of the
/// two goes to the preferred pool and the lower to the other; equal weights are
/// split by one. 0 is written as no weight (the schema's minimum is 1).
pub fn preferred_weights(preferred: Option<i64>, other: Option<i64>) -> (Option<i64>, Option<i64>) {
    let (a, b) = (preferred.unwrap_or(0), other.unwrap_or(0));
    let (mut high, mut low) = (a.max(b).clamp(0, 100), a.min(b).clamp(0, 100));
    if high == low {
        if high < 100 {
            high += 1;
        } else {
            low -= 1;
        }
    }
    let weight = |w: i64| (w > 0).then_some(w);
    let keep = |w: i64, original: Option<i64>| {
        // A pool keeps its own original (absent stays absent).
        if original.unwrap_or(0) == w {
            original
        } else {
            weight(w)
        }
    };
    (keep(high, preferred), keep(low, other))
}

fn weight_of(pool: &Value) -> Option<i64> {
    pool["spec"]["weight"].as_i64()
}

/// A pool's weight before any rule changed it: the recorded original while a claim
/// holds one, else the weight it has.
fn original_weight(pool: &Value, annotations: &BTreeMap<String, String>) -> Option<i64> {
    match annotations
        .get(ORIGINAL_WEIGHT)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        Some(v) => v.as_i64(),
        None => weight_of(pool),
    }
}

fn weight_text(w: Option<i64>) -> String {
    w.map_or_else(|| "none".to_owned(), |w| w.to_string())
}

/// Plans one pool's weight: `wanted` with this rule's claim recorded, or back to its
/// original (claim and original removed) when `wanted` is the original.
fn plan_weight(
    patch: &mut PoolPatch,
    pool: &Value,
    annotations: &BTreeMap<String, String>,
    key: &str,
    wanted: Option<i64>,
) -> Option<String> {
    let original = original_weight(pool, annotations);
    let now = weight_of(pool);
    if now != wanted {
        patch.set_weight(wanted);
    }
    if wanted == original {
        if annotations.contains_key(key) {
            patch.annotate(key, None);
        }
        if annotations.contains_key(ORIGINAL_WEIGHT) {
            patch.annotate(ORIGINAL_WEIGHT, None);
        }
    } else {
        let original_text = original.map_or(Value::Null, Value::from).to_string();
        if annotations.get(ORIGINAL_WEIGHT) != Some(&original_text) {
            patch.annotate(ORIGINAL_WEIGHT, Some(original_text));
        }
        let claim = wanted.map_or(Value::Null, Value::from).to_string();
        if annotations.get(key) != Some(&claim) {
            patch.annotate(key, Some(claim));
        }
    }
    (now != wanted).then(|| format!("weight {} → {}", weight_text(now), weight_text(wanted)))
}

/// Gives this rule's weight claim back: the original weight returns while the pool
/// still has the weight the rule set (one the user changed since is theirs).
fn release_weight(
    patch: &mut PoolPatch,
    pool: &Value,
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Option<String> {
    let claim = annotations.get(key)?;
    let claimed = serde_json::from_str::<Value>(claim)
        .ok()
        .map(|v| v.as_i64());
    let original = original_weight(pool, annotations);
    let now = weight_of(pool);
    patch.annotate(key, None);
    if annotations.contains_key(ORIGINAL_WEIGHT) {
        patch.annotate(ORIGINAL_WEIGHT, None);
    }
    if claimed == Some(now) && now != original {
        patch.set_weight(original);
        return Some(format!(
            "weight {} → {}",
            weight_text(now),
            weight_text(original)
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------
// Placeholders
// ---------------------------------------------------------------------------------------

/// FNV-1a: a hash that is the same in every build, for names.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `prefix` + `name`, at most 63 characters: a longer one is cut and ends with a hash of
/// the whole, so two long names never share a result. Valid as a Deployment name and as
/// a label value (rule names are DNS subdomains: lowercase alphanumerics, `-` and `.`).
pub fn bounded_name(prefix: &str, name: &str) -> String {
    let whole = format!("{prefix}{name}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let hash = format!("{:08x}", fnv1a(name));
    let cut: String = whole.chars().take(MAX_NAME - hash.len() - 1).collect();
    format!("{}-{hash}", cut.trim_end_matches(['-', '.']))
}

/// The placeholder Deployment of a rule.
pub fn placeholder_name(actor: &Actor) -> String {
    bounded_name("prophet-reserve-", &actor.name)
}

/// The pool's taints, tolerated, so its new nodes can take the placeholders.
fn tolerations(pool: &Value) -> Option<Vec<Toleration>> {
    let taints = pool["spec"]["template"]["spec"]["taints"].as_array()?;
    let list: Vec<Toleration> = taints
        .iter()
        .filter_map(|t| {
            let key = t["key"].as_str()?.to_owned();
            let value = t["value"].as_str().map(str::to_owned);
            Some(Toleration {
                operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
                key: Some(key),
                value,
                effect: t["effect"].as_str().map(str::to_owned),
                ..Toleration::default()
            })
        })
        .collect();
    (!list.is_empty()).then_some(list)
}

/// The placeholder Deployment as Prophet applies it.
fn placeholder_deployment(
    actor: &Actor,
    pool_name: &str,
    pool: &Value,
    sizing: &Sizing,
    replicas: i32,
) -> Deployment {
    let name = placeholder_name(actor);
    let selector = BTreeMap::from([(format!("{ANNOTATION_PREFIX}placeholder"), name.clone())]);
    let mut labels = selector.clone();
    labels.insert(
        format!("{ANNOTATION_PREFIX}predictivescale"),
        bounded_name("", &actor.name),
    );
    labels.insert("app.kubernetes.io/managed-by".into(), "prophet".into());
    labels.insert(
        "app.kubernetes.io/component".into(),
        "capacity-placeholder".into(),
    );
    let requests = BTreeMap::from([
        ("cpu".to_owned(), Quantity(sizing.placeholder_cpu.clone())),
        (
            "memory".to_owned(),
            Quantity(sizing.placeholder_memory.clone()),
        ),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(actor.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![actor.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            revision_history_limit: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // Below every workload (priority 0), never preempting: the scheduler
                    // evicts these first when real pods need the room, and Karpenter
                    // adds a node for them ahead of time.
                    priority_class_name: Some(PLACEHOLDER_PRIORITY_CLASS.into()),
                    node_selector: Some(BTreeMap::from([(
                        NODEPOOL_LABEL.to_owned(),
                        pool_name.to_owned(),
                    )])),
                    tolerations: tolerations(pool),
                    termination_grace_period_seconds: Some(0),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65535),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![Container {
                        name: "pause".into(),
                        image: Some(PAUSE_IMAGE.into()),
                        // Limits equal to requests: a namespace quota on limits admits
                        // the pods, and the pause process never comes near them.
                        resources: Some(ResourceRequirements {
                            limits: Some(requests.clone()),
                            requests: Some(requests),
                            ..ResourceRequirements::default()
                        }),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".into()]),
                                ..Capabilities::default()
                            }),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

fn deployment_target(deployment: &Deployment) -> TargetRef {
    TargetRef {
        kind: "Deployment".into(),
        namespace: deployment.metadata.namespace.clone(),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        uid: deployment.metadata.uid.clone(),
    }
}

/// Reads the rule's placeholder Deployment, refusing (`PlaceholderNameTaken`) one of that
/// name that the rule does not own: applying would take it over.
async fn read_placeholders(
    client: &kube::Client,
    actor: &Actor,
    refuse_foreign: bool,
) -> Result<Option<Deployment>, ActError> {
    let name = placeholder_name(actor);
    let target = format!("Deployment {}/{name}", actor.namespace);
    guard::check_namespace(actor, &actor.namespace, &target)?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &actor.namespace);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| ActError::api(format!("reading {target}"), e))?;
    if let Some(existing) = &existing {
        let owned = existing
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|refs| refs.iter().any(|r| r.uid == actor.uid));
        if !owned && !refuse_foreign {
            return Ok(None);
        }
        if !owned {
            return Err(ActError::refused(
                "PlaceholderNameTaken",
                format!(
                    "{target} exists and is not owned by {}; Prophet will not take it over for placeholders",
                    actor.describe()
                ),
            ));
        }
        guard::check_git_ops(actor, &existing.metadata, &target)?;
    }
    Ok(existing)
}

/// Applies the placeholder Deployment (server-side apply, field manager `prophet`,
/// forced: the object is the rule's own). Unchanged when the server kept the version.
async fn apply_placeholders(
    client: &kube::Client,
    existing: Option<&Deployment>,
    wanted: &Deployment,
    dry_run: bool,
) -> Result<Acted, ActError> {
    let target = deployment_target(wanted);
    let api: Api<Deployment> = Api::namespaced(
        client.clone(),
        &target.namespace.clone().unwrap_or_default(),
    );
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let applied = api
        .patch(&target.name, &params, &Patch::Apply(wanted))
        .await
        .map_err(|e| ActError::api(format!("applying placeholders {target}"), e))?;
    let before = existing.and_then(|d| d.metadata.resource_version.clone());
    let after = applied.metadata.resource_version.clone();
    let replicas = |d: Option<&Deployment>| d.and_then(|d| d.spec.replicas);
    let (was, now) = (replicas(existing), replicas(Some(wanted)).unwrap_or(0));
    // Not the resourceVersion: the Deployment controller writes status all the time.
    // The spec's generation, and the metadata Prophet sets, tell what the apply did.
    let changed = existing.is_none_or(|e| {
        e.metadata.generation != applied.metadata.generation
            || e.metadata.labels != applied.metadata.labels
            || e.metadata.owner_references != applied.metadata.owner_references
    });
    Ok(Acted {
        action: "placeholders",
        target: deployment_target(&applied),
        changed,
        version_before: before,
        version_after: after,
        summary: format!(
            "placeholders {} → {now}",
            was.map_or_else(|| "none".to_owned(), |w| w.to_string())
        ),
    })
}

// ---------------------------------------------------------------------------------------
// Reading and patching NodePools
// ---------------------------------------------------------------------------------------

fn pool_name(pool: &DynamicObject) -> String {
    pool.metadata.name.clone().unwrap_or_default()
}

fn pool_target(pool: &DynamicObject) -> TargetRef {
    TargetRef {
        kind: "NodePool".into(),
        namespace: None,
        name: pool_name(pool),
        uid: pool.metadata.uid.clone(),
    }
}

fn pools(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &node_pool_resource())
}

/// Why a NodePool read answered 404: the pool is missing, or Karpenter's CRD is (the
/// API server answers 404 for a resource it does not serve too).
async fn missing_pool(client: &kube::Client, name: &str) -> ActError {
    match client.list_api_group_resources("karpenter.sh/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "nodepools") => ActError::failed(
            "NotFound",
            format!("NodePool {name} does not exist (karpenter.sh/v1)"),
        ),
        Ok(_) | Err(kube::Error::Api(_)) => karpenter_missing(name),
        Err(e) => ActError::api(
            format!("discovering karpenter.sh/v1 for NodePool {name}"),
            e,
        ),
    }
}

fn karpenter_missing(name: &str) -> ActError {
    ActError::failed(
        "KarpenterMissing",
        format!(
            "NodePool {name}: the API server does not serve karpenter.sh/v1 nodepools; is Karpenter (v1) installed?"
        ),
    )
}

async fn read_pool(client: &kube::Client, name: &str) -> Result<DynamicObject, ActError> {
    match pools(client).get(name).await {
        Ok(pool) => Ok(pool),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            Err(missing_pool(client, name).await)
        }
        Err(e) => Err(ActError::api(format!("reading NodePool {name}"), e)),
    }
}

/// Reads a pool, None when it or Karpenter is gone (release skips those).
async fn read_pool_opt(
    client: &kube::Client,
    name: &str,
) -> Result<Option<DynamicObject>, ActError> {
    match read_pool(client, name).await {
        Ok(pool) => Ok(Some(pool)),
        Err(e) if matches!(e.reason(), "NotFound" | "KarpenterMissing") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A 422 that names no object and no invalid field: the JSON Patch did not apply to the
/// object as it is now (a failed `test`, or a budget index gone), which the API server
/// answers with only "the server rejected our request due to an error in our request".
/// A schema violation names the object and its causes.
fn patch_did_not_apply(status: &kube::core::Status) -> bool {
    status.code == 422
        && status
            .details
            .as_ref()
            .is_none_or(|d| d.name.is_empty() && d.causes.is_empty())
}

/// Sends a pool's guarded JSON Patch. A failed `test` (the pool changed since it was
/// read: the server answers 422, or 409 where it checks the version itself) is a
/// `Conflict`, retried with a fresh read, never a lost update.
async fn send_patch(
    client: &kube::Client,
    name: &str,
    patch: PoolPatch,
    wanted: &str,
    dry_run: bool,
) -> Result<DynamicObject, ActError> {
    let ops = Value::Array(patch.ops);
    let json_patch = serde_json::from_value(ops).map_err(|e| {
        ActError::failed(
            "Internal",
            format!("NodePool {name}: building the JSON patch: {e}"),
        )
    })?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run,
        ..PatchParams::default()
    };
    match pools(client)
        .patch(name, &params, &Patch::<()>::Json(json_patch))
        .await
    {
        Ok(pool) => Ok(pool),
        Err(kube::Error::Api(status)) if status.code == 409 || patch_did_not_apply(&status) => {
            Err(ActError::failed(
                "Conflict",
                format!(
                    "NodePool {name} changed between read and patch ({}); {wanted} is retried on the pool as it is now",
                    status.message
                ),
            ))
        }
        Err(e) => Err(ActError::api(
            format!("patching NodePool {name} ({wanted})"),
            e,
        )),
    }
}

fn annotations_of(pool: &DynamicObject) -> BTreeMap<String, String> {
    pool.metadata.annotations.clone().unwrap_or_default()
}

fn pool_json(pool: &DynamicObject, name: &str) -> Result<Value, ActError> {
    serde_json::to_value(pool).map_err(|e| {
        ActError::failed(
            "Internal",
            format!("NodePool {name}: reading the object: {e}"),
        )
    })
}

/// One Acted per concern of a pool patch (they share its versions).
fn pool_acted(
    before: &DynamicObject,
    after: Option<&DynamicObject>,
    concerns: Vec<(&'static str, Option<String>, String)>,
) -> Vec<Acted> {
    concerns
        .into_iter()
        .map(|(action, change, unchanged)| Acted {
            action,
            target: pool_target(after.unwrap_or(before)),
            version_before: before.metadata.resource_version.clone(),
            version_after: after.unwrap_or(before).metadata.resource_version.clone(),
            changed: change.is_some(),
            summary: change.unwrap_or(unchanged),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The actions
// ---------------------------------------------------------------------------------------

/// Reserves capacity on `spec.nodePoolRef` ahead of a forecast rise:
/// 1. with `reservation`, placeholder pods (`prophet-reserve-<rule>` in the rule's
///    namespace, owned by it): ceil(max(0, value − current) × per unit ÷ per
///    placeholder) over CPU and memory, the larger, capped by `maxPlaceholders` and the
///    pool's `aiops.prophet.io/max-placeholders`;
/// 2. each pool limit (cpu, memory) raised by what the placeholders request, up to the
///    pool's `aiops.prophet.io/max-limits-*` (none: never raised), never lowered; the
///    user's originals and this rule's claim kept in annotations for [`release`];
/// 3. a disruption budget entry holding consolidation from now until the forecast's
///    time (`at_ms + horizon_ms`), added beside the user's budgets, replaced when the
///    peak moves.
///
/// Refused when the pool does not allow the rule's namespace, is GitOps-managed (unless
/// the rule allows it), the reservation is invalid, or the placeholder name is taken.
/// `spec.dryRun` sends every write as a server-side dry run. Idempotent: the same
/// forecast again answers `changed: false` for each concern.
pub async fn provision(
    client: &kube::Client,
    actor: &Actor,
    spec: &PredictiveScaleSpec,
    forecast: &ForecastView,
    detection: &str,
    now_ms: i64,
) -> Result<Vec<Acted>, ActError> {
    // Karpenter writes the pool's status all the time, moving the resourceVersion each
    // patch is guarded by: read afresh and try again on a conflict, a few times (each
    // step is idempotent, so what the first try already did is found done).
    super::workload::retry_conflicts(|| {
        provision_once(client, actor, spec, forecast, detection, now_ms)
    })
    .await
}

/// One pass of [`provision`].
async fn provision_once(
    client: &kube::Client,
    actor: &Actor,
    spec: &PredictiveScaleSpec,
    forecast: &ForecastView,
    detection: &str,
    now_ms: i64,
) -> Result<Vec<Acted>, ActError> {
    let name = spec.node_pool_ref.name.as_str();
    let sizing = spec.reservation.as_ref().map(Sizing::parse).transpose()?;
    let pool = read_pool(client, name).await?;
    let target = format!("NodePool {name}");
    guard::check_git_ops(actor, &pool.metadata, &target)?;
    let policy = NodePoolPolicy::of(&pool)?;
    policy.check_allowed(actor, name)?;
    let existing = match &sizing {
        Some(_) => read_placeholders(client, actor, true).await?,
        None => None,
    };
    let value = pool_json(&pool, name)?;
    let annotations = annotations_of(&pool);
    let replicas = sizing
        .as_ref()
        .map_or(0, |s| s.replicas(forecast, policy.max_placeholders));
    tracing::info!(
        rule = %actor.describe(), pool = name, detection, replicas,
        forecast = forecast.value, current = forecast.current,
        "provisioning ahead of a forecast rise"
    );

    // The pool first: room (limits) and the hold before the demand arrives.
    let mut patch = PoolPatch::new(&value);
    // No placeholders wanted (the forecast no longer rises): the claim stays as it is;
    // provisioning never lowers a limit, consolidate and release give it back.
    let reserved = sizing
        .as_ref()
        .filter(|_| replicas > 0)
        .map(|s| s.reserved(replicas));
    let limits = match &reserved {
        Some(reserved) => plan_limits(
            &value,
            &policy,
            &annotations,
            &limits_annotation(actor),
            Some(reserved),
        ),
        None => LimitsPlan::default(),
    };
    for (resource, v) in &limits.set {
        patch.set_limit(resource, v.clone());
    }
    for (key, v) in &limits.annotations {
        patch.annotate(key, v.clone());
    }
    let until_ms = forecast.at_ms.saturating_add(forecast.horizon_ms);
    let hold = hold_budget(now_ms, until_ms);
    let hold_change = plan_hold(
        &mut patch,
        &annotations,
        &budget_annotation(actor),
        Some(&hold),
        now_ms,
    );
    let patched = if patch.changed {
        Some(send_patch(client, name, patch, "reserving capacity", spec.dry_run).await?)
    } else {
        None
    };
    let limits_change = (!limits.changes.is_empty()).then(|| limits.changes.join(", "));
    let mut limits_unchanged = "limits unchanged".to_owned();
    if !limits.notes.is_empty() {
        limits_unchanged = format!("{limits_unchanged} ({})", limits.notes.join("; "));
    }
    let mut acted = pool_acted(
        &pool,
        patched.as_ref(),
        vec![
            ("nodepool-limits", limits_change, limits_unchanged),
            (
                "nodepool-budget",
                hold_change,
                "consolidation already held until the forecast peak".to_owned(),
            ),
        ],
    );

    if let Some(sizing) = &sizing {
        let wanted = placeholder_deployment(actor, name, &value, sizing, replicas);
        acted.push(apply_placeholders(client, existing.as_ref(), &wanted, spec.dry_run).await?);
    }
    Ok(acted)
}

/// Gives back what [`provision`] took for this rule ahead of a forecast fall: the
/// placeholders go to zero (the Deployment stays, for the next rise), the rule's hold
/// is removed (the user's budgets and other rules' holds stay) and its limits claim is
/// given back (the limits return to the user's original when no other claim is left,
/// unless the user changed them since). Undoing Prophet's own marks is never refused by
/// the pool's policy or GitOps checks: only adding capacity is.
pub async fn consolidate(
    client: &kube::Client,
    actor: &Actor,
    spec: &PredictiveScaleSpec,
    detection: &str,
) -> Result<Vec<Acted>, ActError> {
    let name = spec.node_pool_ref.name.as_str();
    let pool = read_pool(client, name).await?;
    let existing = read_placeholders(client, actor, false).await?;
    tracing::info!(rule = %actor.describe(), pool = name, detection, "consolidating ahead of a forecast fall");
    let mut acted = give_back_pool(client, actor, &pool, false, spec.dry_run).await?;
    if let Some(existing) = existing {
        acted.push(scale_placeholders_to_zero(client, &existing, spec.dry_run).await?);
    }
    Ok(acted)
}

/// Sets the placeholders' replicas to zero with a merge patch of that one field (the
/// next [`provision`] applies the whole object again).
async fn scale_placeholders_to_zero(
    client: &kube::Client,
    existing: &Deployment,
    dry_run: bool,
) -> Result<Acted, ActError> {
    let target = deployment_target(existing);
    let was = existing.spec.replicas;
    if was == Some(0) {
        return Ok(Acted {
            action: "placeholders",
            target,
            version_before: existing.metadata.resource_version.clone(),
            version_after: existing.metadata.resource_version.clone(),
            changed: false,
            summary: "placeholders already 0".into(),
        });
    }
    let api: Api<Deployment> = Api::namespaced(
        client.clone(),
        target.namespace.as_deref().unwrap_or_default(),
    );
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run,
        ..PatchParams::default()
    };
    let applied = api
        .patch(
            &target.name,
            &params,
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(|e| ActError::api(format!("scaling placeholders {target} to 0"), e))?;
    Ok(Acted {
        action: "placeholders",
        target: deployment_target(&applied),
        version_before: existing.metadata.resource_version.clone(),
        version_after: applied.metadata.resource_version.clone(),
        changed: true,
        summary: format!(
            "placeholders {} → 0",
            was.map_or_else(|| "1".to_owned(), |w| w.to_string())
        ),
    })
}

/// Removes this rule's hold and limits claim (and, with `weights`, its weight claim)
/// from one pool.
async fn give_back_pool(
    client: &kube::Client,
    actor: &Actor,
    pool: &DynamicObject,
    weights: bool,
    dry_run: bool,
) -> Result<Vec<Acted>, ActError> {
    let name = pool_name(pool);
    let value = pool_json(pool, &name)?;
    let annotations = annotations_of(pool);
    // The policy only bounds raises; a pool whose annotations no longer parse still
    // gets Prophet's marks removed.
    let policy = NodePoolPolicy::of(pool).unwrap_or_default();
    let mut patch = PoolPatch::new(&value);
    let limits = plan_limits(
        &value,
        &policy,
        &annotations,
        &limits_annotation(actor),
        None,
    );
    for (resource, v) in &limits.set {
        patch.set_limit(resource, v.clone());
    }
    for (key, v) in &limits.annotations {
        patch.annotate(key, v.clone());
    }
    let hold = plan_hold(&mut patch, &annotations, &budget_annotation(actor), None, 0);
    let weight = if weights {
        release_weight(&mut patch, &value, &annotations, &weight_annotation(actor))
    } else {
        None
    };
    let patched = if patch.changed {
        Some(send_patch(client, &name, patch, "giving back capacity", dry_run).await?)
    } else {
        None
    };
    let limits_change = (!limits.changes.is_empty()).then(|| limits.changes.join(", "));
    let mut concerns = vec![
        (
            "nodepool-limits",
            limits_change,
            "limits not raised by this rule".to_owned(),
        ),
        (
            "nodepool-budget",
            hold,
            "no consolidation hold of this rule".to_owned(),
        ),
    ];
    if weights {
        concerns.push((
            "nodepool-weight",
            weight,
            "weight not changed by this rule".to_owned(),
        ));
    }
    Ok(pool_acted(pool, patched.as_ref(), concerns))
}

/// Moves scheduling preference between `spec.nodePoolRef` and
/// `spec.alternateNodePoolRef` by `spec.weight` alone: rising, `nodePoolRef` gets the
/// higher of the two pools' original weights and the alternate the lower; falling, the
/// other way round (equal weights are split by one). The originals are recorded for
/// [`release`]; a pool back at its original loses the records. Nothing else of either
/// pool changes: never `spec.template` (Karpenter would replace every node as drifted).
///
/// Refused without an alternate (`NoAlternateNodePool`), when either pool does not allow
/// the rule's namespace or is GitOps-managed, or when another rule holds a weight claim
/// on either (`NodePoolWeightClaimed`: two rules would flap the weight).
pub async fn adjust(
    client: &kube::Client,
    actor: &Actor,
    spec: &PredictiveScaleSpec,
    rising: bool,
    detection: &str,
) -> Result<Vec<Acted>, ActError> {
    let Some(alternate) = &spec.alternate_node_pool_ref else {
        return Err(ActError::refused(
            "NoAlternateNodePool",
            format!(
                "{}: action adjust moves preference between nodePoolRef and alternateNodePoolRef, and alternateNodePoolRef is not set",
                actor.describe()
            ),
        ));
    };
    let (primary_name, alternate_name) =
        (spec.node_pool_ref.name.as_str(), alternate.name.as_str());
    if primary_name == alternate_name {
        return Err(ActError::refused(
            "NoAlternateNodePool",
            format!(
                "{}: alternateNodePoolRef names the same NodePool {primary_name} as nodePoolRef",
                actor.describe()
            ),
        ));
    }
    let primary = read_pool(client, primary_name).await?;
    let other = read_pool(client, alternate_name).await?;
    let key = weight_annotation(actor);
    for pool in [&primary, &other] {
        let name = pool_name(pool);
        guard::check_git_ops(actor, &pool.metadata, &format!("NodePool {name}"))?;
        NodePoolPolicy::of(pool)?.check_allowed(actor, &name)?;
        let prefix = format!("{ANNOTATION_PREFIX}weight.");
        if let Some(claim) = annotations_of(pool)
            .keys()
            .find(|k| k.starts_with(&prefix) && **k != key)
        {
            return Err(ActError::refused(
                "NodePoolWeightClaimed",
                format!(
                    "NodePool {name}: its weight is held by another rule ({claim}); one rule at a time moves a pool's weight"
                ),
            ));
        }
    }
    let (primary_value, other_value) = (
        pool_json(&primary, primary_name)?,
        pool_json(&other, alternate_name)?,
    );
    let (primary_ann, other_ann) = (annotations_of(&primary), annotations_of(&other));
    let (p0, o0) = (
        original_weight(&primary_value, &primary_ann),
        original_weight(&other_value, &other_ann),
    );
    let (primary_wanted, other_wanted) = if rising {
        preferred_weights(p0, o0)
    } else {
        let (o, p) = preferred_weights(o0, p0);
        (p, o)
    };
    tracing::info!(
        rule = %actor.describe(), detection, rising,
        primary = primary_name, alternate = alternate_name,
        "moving NodePool preference"
    );
    let mut acted = Vec::new();
    for (pool, value, annotations, wanted) in [
        (&primary, &primary_value, &primary_ann, primary_wanted),
        (&other, &other_value, &other_ann, other_wanted),
    ] {
        let name = pool_name(pool);
        let mut patch = PoolPatch::new(value);
        let change = plan_weight(&mut patch, value, annotations, &key, wanted);
        let patched = if patch.changed {
            Some(send_patch(client, &name, patch, "moving preference", spec.dry_run).await?)
        } else {
            None
        };
        acted.extend(pool_acted(
            pool,
            patched.as_ref(),
            vec![(
                "nodepool-weight",
                change,
                format!("weight already {}", weight_text(wanted)),
            )],
        ));
    }
    Ok(acted)
}

/// Undoes everything this rule holds: on every NodePool carrying one of its marks (not
/// only the pools the spec names now, since the rule may have changed), its hold, its
/// limits claim and its weight claim; and deletes its placeholder Deployment. Objects
/// already gone (the pool, Karpenter, the Deployment) are skipped. For the finalizer
/// when the rule is deleted, and when its spec changes. Never refused.
pub async fn release(
    client: &kube::Client,
    actor: &Actor,
    spec: &PredictiveScaleSpec,
) -> Result<Vec<Acted>, ActError> {
    let suffix = format!(".{}", actor.claim_key());
    let marked = |pool: &DynamicObject| {
        pool.metadata.annotations.as_ref().is_some_and(|a| {
            a.keys()
                .any(|k| k.starts_with(ANNOTATION_PREFIX) && k.ends_with(&suffix))
        })
    };
    let listed = match pools(client).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.is_not_found() => Vec::new(),
        Err(e) => return Err(ActError::api("listing NodePools to release", e)),
    };
    let mut names: Vec<String> = listed.iter().filter(|p| marked(p)).map(pool_name).collect();
    names.sort();
    names.dedup();
    let mut acted = Vec::new();
    for name in names {
        // Read again, one by one: the list is as old as its slowest page.
        let Some(pool) = read_pool_opt(client, &name).await? else {
            continue;
        };
        acted.extend(
            give_back_pool(client, actor, &pool, true, spec.dry_run)
                .await?
                .into_iter()
                .filter(|a| a.changed),
        );
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &actor.namespace);
    let name = placeholder_name(actor);
    if let Some(existing) = deployments
        .get_opt(&name)
        .await
        .map_err(|e| ActError::api(format!("reading Deployment {}/{name}", actor.namespace), e))?
    {
        let owned = existing
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|refs| refs.iter().any(|r| r.uid == actor.uid));
        if owned {
            let params = DeleteParams {
                dry_run: spec.dry_run,
                ..DeleteParams::background()
            };
            match deployments.delete(&name, &params).await {
                Ok(_) => acted.push(Acted {
                    action: "release",
                    target: deployment_target(&existing),
                    version_before: existing.metadata.resource_version.clone(),
                    version_after: None,
                    changed: true,
                    summary: "placeholders deleted".into(),
                }),
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => {
                    return Err(ActError::api(
                        format!(
                            "deleting placeholders Deployment {}/{name}",
                            actor.namespace
                        ),
                        e,
                    ));
                }
            }
        }
    }
    Ok(acted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::forecast::ForecastModel;
    use crate::rules::load::RuleKind;

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::PredictiveScale,
            namespace: "shop".into(),
            name: "checkout".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    fn forecast(current: f64, value: f64) -> ForecastView {
        ForecastView {
            current,
            value,
            lower: value,
            upper: value,
            change_percent: 0.0,
            model: ForecastModel::Trend,
            at_ms: 1_750_000_000_000,
            horizon_ms: 3_600_000,
            history: 100,
        }
    }

    fn reservation(cpu: Option<&str>, memory: Option<&str>) -> Reservation {
        Reservation {
            cpu_per_unit: cpu.map(str::to_owned),
            memory_per_unit: memory.map(str::to_owned),
            placeholder_cpu: None,
            placeholder_memory: None,
            max_placeholders: None,
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // --- sizing -------------------------------------------------------------------------

    #[test]
    fn placeholders_cover_the_forecast_rise_in_cpu_or_memory_whichever_needs_more() {
        // A query in cores: 3.2 cores more, placeholders of 1 core: 4.
        let cpu = Sizing::parse(&reservation(Some("1"), None)).unwrap();
        assert_eq!(cpu.replicas(&forecast(10.0, 13.2), None), 4);
        // A query in requests per second, 500m and 256Mi per unit, placeholders of the
        // default 1 core / 1Gi: 6 rps more → 3 cores (3) and 1.5Gi (2): 3.
        let both = Sizing::parse(&reservation(Some("500m"), Some("256Mi"))).unwrap();
        assert_eq!(both.replicas(&forecast(10.0, 16.0), None), 3);
        // Memory the larger: 1Gi per unit, 2.5 units more → 3 placeholders of 1Gi.
        let memory = Sizing::parse(&reservation(Some("100m"), Some("1Gi"))).unwrap();
        assert_eq!(memory.replicas(&forecast(1.0, 3.5), None), 3);
    }

    #[test]
    fn placeholders_are_capped_by_the_rule_and_the_pool() {
        let sizing = Sizing::parse(&reservation(Some("1"), None)).unwrap();
        assert_eq!(
            sizing.replicas(&forecast(0.0, 500.0), None),
            10,
            "default cap"
        );
        assert_eq!(
            sizing.replicas(&forecast(0.0, 500.0), Some(4)),
            4,
            "pool cap"
        );
        let mut r = reservation(Some("1"), None);
        r.max_placeholders = Some(2);
        let sizing = Sizing::parse(&r).unwrap();
        assert_eq!(
            sizing.replicas(&forecast(0.0, 500.0), Some(4)),
            2,
            "rule cap"
        );
        assert_eq!(sizing.replicas(&forecast(0.0, 1e300), None), 2);
    }

    #[test]
    fn no_placeholders_when_the_forecast_falls_or_is_not_a_number() {
        let sizing = Sizing::parse(&reservation(Some("1"), Some("1Gi"))).unwrap();
        assert_eq!(sizing.replicas(&forecast(10.0, 8.0), None), 0);
        assert_eq!(sizing.replicas(&forecast(10.0, 10.0), None), 0);
        assert_eq!(sizing.replicas(&forecast(10.0, f64::NAN), None), 0);
        assert_eq!(sizing.replicas(&forecast(f64::INFINITY, 1.0), None), 0);
    }

    #[test]
    fn an_exact_multiple_is_not_rounded_up_by_float_error() {
        // 0.3 × 1 / 0.1 is 2.9999999999999996 or 3.0000000000000004 in floats.
        let mut r = reservation(Some("1"), None);
        r.placeholder_cpu = Some("100m".into());
        let sizing = Sizing::parse(&r).unwrap();
        assert_eq!(sizing.replicas(&forecast(0.0, 0.3), None), 3);
        assert_eq!(sizing.replicas(&forecast(0.0, 0.30001), None), 4);
    }

    #[test]
    fn a_reservation_that_cannot_size_anything_is_refused() {
        let none = Sizing::parse(&reservation(None, None)).unwrap_err();
        assert_eq!(none.reason(), "InvalidReservation");
        assert!(none.is_refused());
        let bad = Sizing::parse(&reservation(Some("lots"), None)).unwrap_err();
        assert!(bad.to_string().contains("cpuPerUnit"), "{bad}");
        let mut zero = reservation(Some("1"), None);
        zero.placeholder_memory = Some("0".into());
        let zero = Sizing::parse(&zero).unwrap_err();
        assert!(zero.to_string().contains("placeholderMemory"), "{zero}");
        let mut negative = reservation(Some("1"), None);
        negative.max_placeholders = Some(-1);
        assert_eq!(
            Sizing::parse(&negative).unwrap_err().reason(),
            "InvalidReservation"
        );
        let defaults = Sizing::parse(&reservation(Some("1"), None)).unwrap();
        assert_eq!(
            (
                defaults.placeholder_cpu.as_str(),
                defaults.placeholder_memory.as_str()
            ),
            ("1", "1Gi")
        );
        assert_eq!(defaults.max_placeholders, 10);
    }

    #[test]
    fn quantities_are_written_rounded_up_in_a_readable_unit() {
        assert_eq!(format_quantity("cpu", 4.0), "4");
        assert_eq!(format_quantity("cpu", 1.5), "1500m");
        assert_eq!(format_quantity("cpu", 0.1 + 0.2), "300m");
        assert_eq!(format_quantity("cpu", 0.0004), "1m");
        assert_eq!(
            format_quantity("memory", 8.0 * 1024.0 * 1024.0 * 1024.0),
            "8Gi"
        );
        assert_eq!(
            format_quantity("memory", 1536.0 * 1024.0 * 1024.0),
            "1536Mi"
        );
        assert_eq!(format_quantity("memory", 1000.0), "1000");
        assert_eq!(format_quantity("memory", 0.0), "0");
    }

    // --- policy -------------------------------------------------------------------------

    #[test]
    fn the_pool_policy_is_read_from_the_admins_annotations() {
        let policy = NodePoolPolicy::from_annotations(
            "general",
            Some(&annotations(&[
                (ALLOWED_NAMESPACES, " shop, web ,,"),
                (MAX_LIMITS_CPU, "200"),
                (MAX_LIMITS_MEMORY, "800Gi"),
                (MAX_PLACEHOLDERS, "5"),
                ("unrelated", "x"),
            ])),
        )
        .unwrap();
        assert_eq!(
            policy,
            NodePoolPolicy {
                allowed_namespaces: Some(vec!["shop".into(), "web".into()]),
                max_limits_cpu: Some(200.0),
                max_limits_memory: Some(800.0 * (1u64 << 30) as f64),
                max_placeholders: Some(5),
            }
        );
        assert!(policy.check_allowed(&actor(), "general").is_ok());
    }

    #[test]
    fn a_pool_without_the_allow_annotation_or_without_the_namespace_is_refused() {
        let none = NodePoolPolicy::from_annotations("general", None).unwrap();
        assert_eq!(none, NodePoolPolicy::default());
        let refused = none.check_allowed(&actor(), "general").unwrap_err();
        assert_eq!(refused.reason(), "NodePoolNotAllowed");
        assert!(refused.is_refused());
        assert!(
            refused.to_string().contains(ALLOWED_NAMESPACES),
            "{refused}"
        );
        let other = NodePoolPolicy::from_annotations(
            "general",
            Some(&annotations(&[(ALLOWED_NAMESPACES, "web,shopping")])),
        )
        .unwrap();
        let refused = other.check_allowed(&actor(), "general").unwrap_err();
        assert_eq!(refused.reason(), "NodePoolNotAllowed");
        assert!(refused.to_string().contains("\"shop\""), "{refused}");
    }

    #[test]
    fn a_policy_value_that_does_not_parse_is_refused_not_read_as_unlimited() {
        for (key, value) in [
            (MAX_LIMITS_CPU, "lots"),
            (MAX_LIMITS_MEMORY, "-1Gi"),
            (MAX_PLACEHOLDERS, "ten"),
            (MAX_PLACEHOLDERS, "-1"),
        ] {
            let err = NodePoolPolicy::from_annotations(
                "general",
                Some(&annotations(&[(ALLOWED_NAMESPACES, "shop"), (key, value)])),
            )
            .unwrap_err();
            assert_eq!(err.reason(), "InvalidNodePoolPolicy", "{key}={value}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    // --- the hold -----------------------------------------------------------------------

    /// 2025-06-15T14:37:20Z
    const NOW: i64 = 1_749_998_240_000;

    #[test]
    fn the_hold_is_a_budget_of_zero_for_consolidation_from_this_minute_to_the_peak() {
        // The peak 1h30m10s from now: from 14:37:00, 1h31m rounded up.
        let entry = hold_budget(NOW, NOW + 90 * 60_000 + 10_000);
        assert_eq!(
            entry,
            json!({
                "nodes": "0",
                "reasons": ["Underutilized", "Empty"],
                "schedule": "37 14 15 6 *",
                "duration": "1h31m0s",
            })
        );
        assert_eq!(
            hold_end_ms(&entry, NOW),
            Some(NOW - 20_000 + 91 * 60_000),
            "the end is read back from the entry"
        );
    }

    #[test]
    fn the_hold_duration_is_rounded_up_to_whole_minutes() {
        let start = NOW - 20_000; // 14:37:00
        let duration = |until: i64| hold_budget(NOW, until)["duration"].clone();
        assert_eq!(duration(start + 60 * 60_000), "1h0m0s", "exact");
        assert_eq!(
            duration(start + 60 * 60_000 + 1),
            "1h1m0s",
            "a millisecond more"
        );
        assert_eq!(duration(start + 5 * 60_000), "5m0s");
        assert_eq!(duration(start + 26 * 3_600_000), "26h0m0s");
        assert_eq!(duration(NOW - 3_600_000), "1m0s", "a peak already past");
        assert_eq!(go_duration(59), "59m0s");
        assert_eq!(go_duration(61), "1h1m0s");
    }

    #[test]
    fn every_hold_matches_karpenters_duration_pattern() {
        // ^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$, checked by hand: the CRD enforces it.
        let pattern = regex::Regex::new(r"^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$").unwrap();
        for minutes in [1, 59, 60, 61, 1440, 100_000] {
            let d = go_duration(minutes);
            assert!(pattern.is_match(&d), "{d}");
        }
    }

    #[test]
    fn a_hold_made_last_year_is_read_with_last_years_date() {
        // Made on 31 December at 23:30 for two hours; read at 00:10 on 1 January.
        let new_year = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let made = new_year - 30 * 60_000;
        let entry = hold_budget(made, made + 120 * 60_000);
        assert_eq!(entry["schedule"], "30 23 31 12 *");
        assert_eq!(
            hold_end_ms(&entry, new_year + 10 * 60_000),
            Some(made + 120 * 60_000)
        );
        assert_eq!(hold_end_ms(&json!({"nodes": "0"}), NOW), None);
    }

    fn pool(budgets: Option<Value>) -> Value {
        let mut pool = json!({
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodePool",
            "metadata": {"name": "general", "resourceVersion": "41", "annotations": {ALLOWED_NAMESPACES: "shop"}},
            "spec": {
                "limits": {"cpu": "100", "memory": "400Gi"},
                "disruption": {"consolidateAfter": "0s"},
                "template": {"spec": {"requirements": []}},
            },
        });
        if let Some(budgets) = budgets {
            pool["spec"]["disruption"]["budgets"] = budgets;
        }
        pool
    }

    #[test]
    fn the_hold_is_added_to_the_users_budgets_behind_a_version_test() {
        let user = json!([{"nodes": "20%"}]);
        let pool = pool(Some(user));
        let mut patch = PoolPatch::new(&pool);
        let key = budget_annotation(&actor());
        let hold = hold_budget(NOW, NOW + 3_600_000);
        let change = plan_hold(&mut patch, &BTreeMap::new(), &key, Some(&hold), NOW);
        assert!(
            change
                .unwrap()
                .starts_with("consolidation held until 2025-06-15T15:38")
        );
        assert_eq!(
            patch.ops,
            vec![
                json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"}),
                json!({"op": "add", "path": "/spec/disruption/budgets/-", "value": hold}),
                json!({"op": "add", "path": "/metadata/annotations/aiops.prophet.io~1budget.predictivescale-0b6c2f0e", "value": hold.to_string()}),
            ]
        );
    }

    #[test]
    fn the_same_peak_keeps_the_hold_and_a_moved_peak_replaces_it() {
        let key = budget_annotation(&actor());
        let hold = hold_budget(NOW, NOW + 3_600_000);
        let pool = pool(Some(json!([{"nodes": "20%"}, hold.clone()])));
        let kept = annotations(&[(key.as_str(), &hold.to_string())]);

        // Five minutes later, the same peak: a new entry would differ (its schedule is
        // the current minute) but end at the same minute, so nothing changes.
        let later = NOW + 5 * 60_000;
        let same = hold_budget(later, NOW + 3_600_000);
        assert_ne!(same, hold);
        let mut patch = PoolPatch::new(&pool);
        assert_eq!(plan_hold(&mut patch, &kept, &key, Some(&same), later), None);
        assert!(!patch.changed);

        // The peak moved: the old entry is tested and removed by its index, the new one
        // appended; the user's entry is not touched.
        let moved = hold_budget(later, NOW + 2 * 3_600_000);
        let mut patch = PoolPatch::new(&pool);
        assert!(plan_hold(&mut patch, &kept, &key, Some(&moved), later).is_some());
        assert_eq!(
            patch.ops[1..4],
            [
                json!({"op": "test", "path": "/spec/disruption/budgets/1", "value": hold}),
                json!({"op": "remove", "path": "/spec/disruption/budgets/1"}),
                json!({"op": "add", "path": "/spec/disruption/budgets/-", "value": moved}),
            ]
        );

        // Given back: removed by value, the annotation with it.
        let mut patch = PoolPatch::new(&pool);
        assert_eq!(
            plan_hold(&mut patch, &kept, &key, None, later).as_deref(),
            Some("consolidation hold removed")
        );
        assert_eq!(patch.ops.len(), 4);
        assert_eq!(patch.budgets, Some(vec![json!({"nodes": "20%"})]));
    }

    #[test]
    fn a_pool_without_budgets_keeps_karpenters_default_beside_the_hold() {
        let hold = hold_budget(NOW, NOW + 3_600_000);
        let mut patch = PoolPatch::new(&pool(None));
        patch.add_budget(hold.clone());
        assert_eq!(
            patch.ops[1],
            json!({"op": "add", "path": "/spec/disruption/budgets", "value": [{"nodes": "10%"}, hold]})
        );
        let mut bare = pool(None);
        bare["spec"].as_object_mut().unwrap().remove("disruption");
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        let mut patch = PoolPatch::new(&bare);
        patch.add_budget(hold.clone());
        patch.annotate("aiops.prophet.io/x", Some("y".into()));
        assert_eq!(
            patch.ops[1..],
            [
                json!({"op": "add", "path": "/spec/disruption", "value": {"budgets": [{"nodes": "10%"}, hold]}}),
                json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
                json!({"op": "add", "path": "/metadata/annotations/aiops.prophet.io~1x", "value": "y"}),
            ]
        );
    }

    // --- limits -------------------------------------------------------------------------

    fn policy(cpu: Option<f64>, memory: Option<f64>) -> NodePoolPolicy {
        NodePoolPolicy {
            allowed_namespaces: Some(vec!["shop".into()]),
            max_limits_cpu: cpu,
            max_limits_memory: memory,
            max_placeholders: None,
        }
    }

    const GI: f64 = 1_073_741_824.0;

    fn claim(cpu: f64, memory: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("cpu".into(), cpu), ("memory".into(), memory)])
    }

    #[test]
    fn limits_are_raised_by_the_reservation_within_the_admins_bound() {
        let key = limits_annotation(&actor());
        let plan = plan_limits(
            &pool(None),
            &policy(Some(103.0), Some(1000.0 * GI)),
            &BTreeMap::new(),
            &key,
            Some(&claim(4.0, 8.0 * GI)),
        );
        assert_eq!(
            plan.set,
            vec![
                ("cpu".to_owned(), json!("103")),
                ("memory".to_owned(), json!("408Gi"))
            ]
        );
        assert_eq!(
            plan.annotations,
            vec![
                (
                    ORIGINAL_LIMITS.to_owned(),
                    Some(r#"{"cpu":"100","memory":"400Gi"}"#.to_owned())
                ),
                (
                    LIMITS_SET.to_owned(),
                    Some(r#"{"cpu":"103","memory":"408Gi"}"#.to_owned())
                ),
                (
                    key.clone(),
                    Some(r#"{"cpu":"4","memory":"8Gi"}"#.to_owned())
                ),
            ]
        );
        assert_eq!(
            plan.changes,
            ["limits.cpu 100 → 103", "limits.memory 400Gi → 408Gi"]
        );
    }

    #[test]
    fn limits_are_never_raised_without_a_bound_and_never_lowered() {
        let key = limits_annotation(&actor());
        let plan = plan_limits(
            &pool(None),
            &policy(None, Some(300.0 * GI)),
            &BTreeMap::new(),
            &key,
            Some(&claim(4.0, 8.0 * GI)),
        );
        assert!(plan.set.is_empty(), "{plan:?}");
        assert!(plan.notes[0].contains(MAX_LIMITS_CPU), "{plan:?}");
        // A pool without a memory limit: nothing blocks memory, nothing is written.
        let mut unlimited = pool(None);
        unlimited["spec"]["limits"] = json!({"cpu": 100});
        let plan = plan_limits(
            &unlimited,
            &policy(Some(200.0), Some(1000.0 * GI)),
            &BTreeMap::new(),
            &key,
            Some(&claim(4.0, 8.0 * GI)),
        );
        assert_eq!(plan.set, vec![("cpu".to_owned(), json!("104"))]);
        assert_eq!(plan.annotations[0].1.as_deref(), Some(r#"{"cpu":100}"#));
        // The user removed the cpu limit after Prophet recorded it: not written back.
        let mut removed = unlimited.clone();
        removed["spec"]["limits"] = json!({});
        let held = annotations(&[(ORIGINAL_LIMITS, r#"{"cpu":100}"#)]);
        let plan = plan_limits(
            &removed,
            &policy(Some(200.0), None),
            &held,
            &key,
            Some(&claim(4.0, 0.0)),
        );
        assert!(plan.set.is_empty(), "{plan:?}");
    }

    #[test]
    fn giving_the_claim_back_restores_the_users_limit_unless_they_changed_it() {
        let key = limits_annotation(&actor());
        let mut raised = pool(None);
        raised["spec"]["limits"] = json!({"cpu": "104", "memory": "400Gi"});
        let held = annotations(&[
            (ORIGINAL_LIMITS, r#"{"cpu":"100","memory":"400Gi"}"#),
            (LIMITS_SET, r#"{"cpu":"104"}"#),
            (key.as_str(), r#"{"cpu":"4","memory":"8Gi"}"#),
        ]);
        let p = policy(Some(200.0), None);
        let plan = plan_limits(&raised, &p, &held, &key, None);
        assert_eq!(plan.set, vec![("cpu".to_owned(), json!("100"))]);
        assert_eq!(
            plan.annotations,
            vec![
                (ORIGINAL_LIMITS.to_owned(), None),
                (LIMITS_SET.to_owned(), None),
                (key.clone(), None)
            ]
        );
        // The user set 150 since: theirs now, only the marks go.
        raised["spec"]["limits"]["cpu"] = json!("150");
        let plan = plan_limits(&raised, &p, &held, &key, None);
        assert!(plan.set.is_empty(), "{plan:?}");
        assert_eq!(plan.annotations.len(), 3);
        // Nothing held: nothing to do.
        let plan = plan_limits(&raised, &p, &BTreeMap::new(), &key, None);
        assert_eq!(plan, LimitsPlan::default());
    }

    #[test]
    fn claims_of_two_rules_add_up_and_one_given_back_leaves_the_others() {
        let ours = limits_annotation(&actor());
        let theirs = format!("{ANNOTATION_PREFIX}limits.predictivescale-99999999");
        let mut raised = pool(None);
        raised["spec"]["limits"] = json!({"cpu": "106", "memory": "400Gi"});
        let held = annotations(&[
            (ORIGINAL_LIMITS, r#"{"cpu":"100","memory":"400Gi"}"#),
            (LIMITS_SET, r#"{"cpu":"106"}"#),
            (ours.as_str(), r#"{"cpu":"4"}"#),
            (theirs.as_str(), r#"{"cpu":"2"}"#),
        ]);
        let p = policy(Some(200.0), None);
        // Ours grows to 8: 100 + 8 + 2.
        let plan = plan_limits(&raised, &p, &held, &ours, Some(&claim(8.0, 0.0)));
        assert_eq!(plan.set, vec![("cpu".to_owned(), json!("110"))]);
        // Ours given back: 100 + 2, the marks of the other rule stay.
        let plan = plan_limits(&raised, &p, &held, &ours, None);
        assert_eq!(plan.set, vec![("cpu".to_owned(), json!("102"))]);
        assert_eq!(
            plan.annotations,
            vec![
                (LIMITS_SET.to_owned(), Some(r#"{"cpu":"102"}"#.to_owned())),
                (ours.clone(), None)
            ]
        );
    }

    // --- weights and names --------------------------------------------------------------

    #[test]
    fn the_preferred_pool_gets_the_higher_of_the_two_weights() {
        assert_eq!(preferred_weights(Some(10), Some(50)), (Some(50), Some(10)));
        assert_eq!(preferred_weights(Some(50), Some(10)), (Some(50), Some(10)));
        assert_eq!(preferred_weights(Some(30), Some(30)), (Some(31), Some(30)));
        assert_eq!(
            preferred_weights(Some(100), Some(100)),
            (Some(100), Some(99))
        );
        assert_eq!(preferred_weights(None, None), (Some(1), None));
        assert_eq!(preferred_weights(None, Some(20)), (Some(20), None));
    }

    #[test]
    fn placeholder_names_fit_in_63_characters_and_stay_distinct() {
        assert_eq!(placeholder_name(&actor()), "prophet-reserve-checkout");
        let long = "a".repeat(40) + "-" + &"b".repeat(40);
        let mut other = long.clone();
        other.push('c');
        let (a, b) = (
            bounded_name("prophet-reserve-", &long),
            bounded_name("prophet-reserve-", &other),
        );
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("prophet-reserve-aaaa"));
        // A cut that ends on a separator drops it.
        let dotted = format!("{}.{}", "x".repeat(37), "y".repeat(30));
        let name = bounded_name("prophet-reserve-", &dotted);
        assert!(!name.contains(".-") && !name.contains("--"), "{name}");
    }

    #[test]
    fn the_placeholder_pods_are_pause_containers_pinned_to_the_pool() {
        let mut r = reservation(Some("1"), None);
        r.placeholder_cpu = Some("500m".into());
        let sizing = Sizing::parse(&r).unwrap();
        let mut pool = pool(None);
        pool["spec"]["template"]["spec"]["taints"] = json!([{"key": "gpu", "effect": "NoSchedule"}, {"key": "team", "value": "shop", "effect": "NoExecute"}]);
        let d = placeholder_deployment(&actor(), "general", &pool, &sizing, 3);
        let d = serde_json::to_value(&d).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], actor().uid);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"],
            json!({"karpenter.sh/nodepool": "general"})
        );
        assert_eq!(pod["priorityClassName"], "prophet-placeholder");
        assert_eq!(pod["terminationGracePeriodSeconds"], 0);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["containers"][0]["image"], PAUSE_IMAGE);
        assert_eq!(
            pod["containers"][0]["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(
            pod["tolerations"],
            json!([
                {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "team", "operator": "Equal", "value": "shop", "effect": "NoExecute"},
            ])
        );
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({"aiops.prophet.io/placeholder": "prophet-reserve-checkout"})
        );
    }
}

/// The error paths a real API server will not produce on demand, against a mock that
/// checks each request and answers as the server would.
#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::eval::forecast::ForecastModel;
    use crate::rules::load::RuleKind;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use std::time::Duration;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    type Send = tower_test::mock::SendResponse<Response<Body>>;

    const POOL_PATH: &str = "/apis/karpenter.sh/v1/nodepools/general";

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::PredictiveScale,
            namespace: "shop".into(),
            name: "checkout".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    /// A rule without a reservation: provision touches the pool alone.
    fn spec() -> PredictiveScaleSpec {
        serde_json::from_value(json!({
            "forecastQuery": "sum(rate(requests_total[5m]))",
            "nodePoolRef": {"name": "general"},
            "horizon": "1h",
            "thresholdPercent": 20,
            "action": "provision",
        }))
        .unwrap()
    }

    fn forecast() -> ForecastView {
        ForecastView {
            current: 10.0,
            value: 14.0,
            lower: 13.0,
            upper: 15.0,
            change_percent: 40.0,
            model: ForecastModel::Trend,
            at_ms: 1_749_998_240_000,
            horizon_ms: 3_600_000,
            history: 100,
        }
    }

    fn pool() -> Value {
        json!({
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodePool",
            "metadata": {
                "name": "general", "uid": "p-1", "resourceVersion": "41",
                "annotations": {ALLOWED_NAMESPACES: "shop"},
            },
            "spec": {
                "limits": {"cpu": "100"},
                "disruption": {"consolidateAfter": "0s", "budgets": [{"nodes": "10%"}]},
                "template": {"spec": {"requirements": []}},
            },
        })
    }

    fn answer(send: Send, status: StatusCode, body: &Value) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    fn failure(code: StatusCode, reason: &str, message: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })
    }

    /// As a real API server answers a JSON Patch whose `test` fails (checked against
    /// one by the integration test `a_stale_version_test_is_answered_as_the_action_expects`).
    fn test_failed() -> Value {
        let mut status = failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "the server rejected our request due to an error in our request",
        );
        status["details"] = json!({});
        status
    }

    /// As a real API server answers a patch that breaks the CRD's schema.
    fn schema_invalid() -> Value {
        let mut status = failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "NodePool.karpenter.sh \"general\" is invalid: spec.disruption.budgets: Too many: 51: must have at most 50 items",
        );
        status["details"] = json!({
            "name": "general", "group": "karpenter.sh", "kind": "NodePool",
            "causes": [{"reason": "FieldValueTooMany", "message": "Too many: 51: must have at most 50 items", "field": "spec.disruption.budgets"}],
        });
        status
    }

    async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Request<Body>, Send) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        (request, send)
    }

    async fn run<F, T>(scenario: F) -> Result<Vec<Acted>, ActError>
    where
        F: FnOnce(Handle) -> T,
        T: std::future::Future<Output = ()> + std::marker::Send + 'static,
    {
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "default");
        let verifier = tokio::spawn(scenario(handle));
        // One pass: its requests are what is checked (`provision` repeats it on 409).
        let result = provision_once(
            &client,
            &actor(),
            &spec(),
            &forecast(),
            "d-1",
            1_749_998_240_000,
        )
        .await;
        tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .expect("the scenario ends")
            .expect("the scenario passes");
        result
    }

    /// Reads the pool, then answers its guarded patch with `status`.
    async fn patch_answered(status: StatusCode, reply: Value) -> ActError {
        run(move |mut handle| async move {
            let (_, send) = expect(&mut handle, Method::GET, POOL_PATH).await;
            answer(send, StatusCode::OK, &pool());
            let (request, send) = expect(&mut handle, Method::PATCH, POOL_PATH).await;
            assert_eq!(
                request.headers()["content-type"],
                "application/json-patch+json"
            );
            assert!(
                request
                    .uri()
                    .query()
                    .unwrap_or("")
                    .contains("fieldManager=prophet")
            );
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            // The version read is tested first; the user's budget is not replaced.
            assert_eq!(
                body[0],
                json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"})
            );
            assert_eq!(body[1]["op"], "add");
            assert_eq!(body[1]["path"], "/spec/disruption/budgets/-");
            assert_eq!(body[1]["value"]["nodes"], "0");
            answer(send, status, &reply);
        })
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn a_pool_changed_between_read_and_patch_is_a_conflict_to_retry() {
        let err = patch_answered(
            StatusCode::CONFLICT,
            failure(
                StatusCode::CONFLICT,
                "Conflict",
                "Operation cannot be fulfilled on nodepools.karpenter.sh \"general\": the object has been modified",
            ),
        )
        .await;
        assert_eq!(err.reason(), "Conflict");
        assert!(!err.is_refused());
        assert!(
            err.to_string().contains("NodePool general changed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failed_version_test_is_a_conflict_to_retry_too() {
        // What the API server answers when a JSON Patch `test` op fails.
        let err = patch_answered(StatusCode::UNPROCESSABLE_ENTITY, test_failed()).await;
        assert_eq!(err.reason(), "Conflict");
        assert!(!err.is_refused());
    }

    #[tokio::test]
    async fn an_invalid_patch_stays_invalid() {
        let err = patch_answered(StatusCode::UNPROCESSABLE_ENTITY, schema_invalid()).await;
        assert_eq!(err.reason(), "Invalid");
        assert!(!err.is_refused());
    }

    #[tokio::test]
    async fn no_rbac_on_nodepools_is_forbidden_and_nothing_is_written() {
        let err = run(|mut handle| async move {
            let (_, send) = expect(&mut handle, Method::GET, POOL_PATH).await;
            answer(
                send,
                StatusCode::FORBIDDEN,
                &failure(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "nodepools.karpenter.sh \"general\" is forbidden: User \"system:serviceaccount:prophet-system:prophet\" cannot get resource \"nodepools\"",
                ),
            );
            // The test ends with the handle dropped: a further request would fail the
            // action with a transport error instead of Forbidden.
        })
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "Forbidden");
        assert!(
            err.to_string().contains("reading NodePool general"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_pool_and_missing_karpenter_are_told_apart() {
        let not_found = |what: &str| failure(StatusCode::NOT_FOUND, "NotFound", what);
        let err = run(move |mut handle| async move {
            let (_, send) = expect(&mut handle, Method::GET, POOL_PATH).await;
            answer(
                send,
                StatusCode::NOT_FOUND,
                &not_found("the server could not find the requested resource"),
            );
            let (_, send) = expect(&mut handle, Method::GET, "/apis/karpenter.sh/v1").await;
            answer(
                send,
                StatusCode::NOT_FOUND,
                &not_found("the server could not find the requested resource"),
            );
        })
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "KarpenterMissing");
        assert!(!err.is_refused());

        let err = run(move |mut handle| async move {
            let (_, send) = expect(&mut handle, Method::GET, POOL_PATH).await;
            answer(send, StatusCode::NOT_FOUND, &not_found("nodepools.karpenter.sh \"general\" not found"));
            let (_, send) = expect(&mut handle, Method::GET, "/apis/karpenter.sh/v1").await;
            answer(
                send,
                StatusCode::OK,
                &json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "karpenter.sh/v1",
                    "resources": [{"name": "nodepools", "singularName": "nodepool", "namespaced": false, "kind": "NodePool", "verbs": ["get", "list", "patch"]}],
                }),
            );
        })
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "NotFound");
        assert!(
            err.to_string().contains("NodePool general does not exist"),
            "{err}"
        );
    }
}
