//! The three custom resource kinds of `aiops.prophet.io/v1alpha1` — `AnomalyAction`,
//! `PredictiveScale` and `SLOViolation` — as Rust types, and the generation of their
//! CustomResourceDefinitions. These types are the single source of truth for
//! `deploy/crds/` (regenerated and checked by `tests/integration/crds.rs`) and for the rules read
//! from `rules/*.yaml` in standalone mode. The `///` comment on every field becomes the
//! user documentation in the CRD schema (`kubectl explain`), so it is written for users.
//!
//! This module only describes shapes. It never interprets a rule (thresholds, durations
//! and PromQL are parsed when a rule is compiled) and never talks to a cluster.
//!
//! **Evolution policy.** `v1alpha1` changes are additive only: a new field is optional
//! and has a default that keeps today's behaviour, so every object already stored in a
//! cluster (and every file in `rules/`) keeps its meaning. Never rename, retype or
//! remove a field, tighten a validation or change a default here; that takes a new
//! version (`v1alpha2`/`v1beta1`) served beside this one. A `format` must be one
//! Kubernetes knows (`int32`, `int64`, `float`, `double`, `date-time`, ...).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Prophet kind.
pub const GROUP: &str = "aiops.prophet.io";
/// The only API version Prophet serves and stores.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Prophet object: `<group>/<version>`.
pub const API_VERSION: &str = "aiops.prophet.io/v1alpha1";

/// First line of every generated CRD file, so nobody edits one by hand.
pub const GENERATED_HEADER: &str = "# Generated from src/rules/crd.rs by tests/integration/crds.rs (PROPHET_BLESS=1 cargo test --test integration crds); do not edit.";

// ---------------------------------------------------------------------------------------
// AnomalyAction
// ---------------------------------------------------------------------------------------

/// Watches one metric and remediates the workload whose series misbehaves.
// Each `printcolumn(...)` repeats keys such as `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "aiops.prophet.io",
    version = "v1alpha1",
    kind = "AnomalyAction",
    plural = "anomalyactions",
    namespaced,
    status = "AnomalyActionStatus",
    derive = "PartialEq",
    shortname = "aa",
    category = "prophet",
    doc = "An AnomalyAction watches a metric or PromQL expression from the Prometheus remote-write stream and, when a series crosses its threshold or leaves its anomaly band, remediates the workload that series belongs to: restart, scale or alert.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the rule stands: Pending, Detected, Remediating, Resolved or Failed"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Threshold",
        type_ = "string",
        json_path = ".spec.threshold",
        description = "Comparison that trips the rule"
    ),
    printcolumn(
        name = "Remediation",
        type_ = "string",
        json_path = ".spec.remediation.type",
        description = "What is done when the rule trips"
    ),
    printcolumn(
        name = "Remediations",
        type_ = "integer",
        json_path = ".status.remediationCount",
        description = "How many remediations were performed"
    ),
    printcolumn(
        name = "Last Detected",
        type_ = "date",
        json_path = ".status.lastDetected",
        description = "When a series last tripped the rule"
    ),
    printcolumn(
        name = "Metric",
        type_ = "string",
        json_path = ".spec.metric",
        priority = 1,
        description = "The PromQL selector or expression watched"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyActionSpec {
    /// Where the metric comes from. `prometheus` (the default) means series received on
    /// Prophet's remote-write endpoint; `grafana-ml` and `otel` name series produced by
    /// Grafana Machine Learning or an OpenTelemetry pipeline. Only `prometheus` is
    /// evaluated by this version; rules with another source are reported invalid.
    #[serde(default)]
    pub source: MetricSource,

    /// The PromQL selector or expression to watch, for example
    /// `container_memory_working_set_bytes{namespace="shop",container!=""}`. It is
    /// evaluated per series: only the pods whose own series trips are acted on.
    pub metric: String,

    /// Comparison that trips the rule: an operator (`>`, `>=`, `<`, `<=`, `==`, `!=`)
    /// followed by a Kubernetes quantity or number, for example `> 1Gi`, `<= 0.5` or
    /// `> 500m`. Optional when `detection` is set (a rule with both trips when either
    /// holds); a rule with neither is reported invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,

    /// How long the condition (threshold or anomaly band) must hold without interruption
    /// before a series trips, in Prometheus duration syntax (`30s`, `5m`, `1h30m`),
    /// measured in event time (the samples' timestamps). Omitted means a series trips on
    /// the first sample or evaluation that meets the condition, except that a
    /// `likelihood` rule that restarts or scales without `requireApproval`, and sets no
    /// `detection.sensitivity` either, must have its band broken for 15m (its
    /// `threshold` still trips at once).
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,

    /// What to do about a tripped series.
    pub remediation: Remediation,

    /// The workloads this rule may act on. Omitted means the pods of the rule's own
    /// namespace selected by `remediation.podSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RemediationTarget>,

    /// Put K8sGPT's analysis of the acted-on workload in `status.k8sgptAnalysis` and the
    /// action's Event, asked after the action: from the K8sGPT operator's `Result`
    /// objects, or a K8sGPT server at `endpoint`. An unavailable K8sGPT never delays or
    /// fails an action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8sgpt: Option<K8sGptConfig>,

    /// URL of a non-secret receiver of a notification for every detection and its
    /// resolution, in `webhookFormat`. A URL that carries a token (Slack, most custom
    /// receivers) belongs in a Secret: use `webhookSecretRef`. The host must be allowed
    /// with `--allow-url-host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,

    /// A key of a Secret in the rule's namespace holding the webhook URL (or, for
    /// `webhookFormat: pagerduty`, the Events API v2 routing key). Used instead of
    /// `webhookUrl` when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,

    /// The body sent to the webhook: `alertmanager` (Alertmanager's webhook JSON, the
    /// default), `slack` (an incoming-webhook message) or `pagerduty` (Events API v2).
    #[serde(default)]
    pub webhook_format: WebhookFormat,

    /// The `severity` label of alerts and notifications. Default `warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,

    /// Decide, record and publish Events, but change nothing and notify no one, as
    /// Prophet's global `--dry-run` does for every rule.
    #[serde(default)]
    pub dry_run: bool,

    /// Allow acting on objects that a GitOps controller keeps in sync (ArgoCD's
    /// tracking annotation or label, Flux's labels). Off by default: the GitOps
    /// controller would revert the change and the two would flap.
    #[serde(default)]
    pub allow_git_ops_managed: bool,

    /// Anomaly detection, instead of or beside `threshold`: a band around each series'
    /// own recent behaviour. A series trips when its value leaves the band (or, when a
    /// threshold is set too, when either condition holds), for the `for` duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
}

/// Where an AnomalyAction's metric comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum MetricSource {
    /// Series received from Prometheus on Prophet's remote-write endpoint.
    #[default]
    #[serde(rename = "prometheus")]
    Prometheus,
    /// Series produced by Grafana Machine Learning (forecasts, outlier scores).
    #[serde(rename = "grafana-ml")]
    GrafanaMl,
    /// Series produced by an OpenTelemetry pipeline.
    #[serde(rename = "otel")]
    Otel,
}

/// What an AnomalyAction does about a tripped series.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// The action: `restart` the tripped pods, `scale` the workload that owns them, or
    /// only `alert` (Kubernetes Event, webhook) without touching anything.
    #[serde(rename = "type")]
    pub type_: RemediationType,

    /// Labels a pod must carry to be remediated. Empty means any pod whose own series
    /// tripped, within `target`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_selector: BTreeMap<String, String>,

    /// When true, an action is proposed (in status and as an Event) but only performed
    /// once approved.
    #[serde(default)]
    pub require_approval: bool,

    /// Minimum number of seconds between two remediations of the same target (a pod, or
    /// the series when no pod is named), so a flapping series does not cause a restart
    /// loop. Measured in event time (the samples' timestamps). Default 300.
    #[serde(default = "default_cooldown_seconds")]
    #[schemars(schema_with = "non_negative_int64")]
    pub cooldown_seconds: u64,

    /// For `scale`: the replica count to set. Omitted means `scaleStep` more replicas
    /// than the workload currently has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// For `scale`: how many replicas one detection adds. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_step: Option<i32>,

    /// For `scale`: the most replicas Prophet scales a workload to (and the highest
    /// `minReplicas` it sets on an HPA, never above the HPA's `maxReplicas`). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
}

/// A key of a Secret in the rule's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// The key within the Secret's data.
    pub key: String,
}

/// The body a webhook receives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Alertmanager's webhook JSON (`version: "4"`, `alerts: [...]`).
    #[default]
    Alertmanager,
    /// A Slack incoming-webhook message.
    Slack,
    /// PagerDuty Events API v2: `trigger`, then `resolve` with the same `dedup_key`.
    Pagerduty,
}

/// One tier of an SLO's multi-window burn-rate table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BurnRateTier {
    /// The long window (a Prometheus duration, e.g. `1h`).
    pub long_window: String,
    /// The short window that confirms the burn is still going on (e.g. `5m`).
    pub short_window: String,
    /// Burn rate (error ratio ÷ error budget) above which the tier fires.
    pub factor: f64,
}

fn default_cooldown_seconds() -> u64 {
    300
}

/// How an AnomalyAction tells anomalous values from normal ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// `likelihood` (the default): trips when the series has lately been more surprising
    /// than usual. Each value has three surprises: its distance from the mean of
    /// `window`; from a Holt-Winters forecast (an hour-smoothed level plus a daily
    /// season); and from a slow one (a day-smoothed level). The mean of each over the
    /// last 10 values (48 for the slow one) is compared with its own usual level, learnt
    /// over days (no verdict in a series' first two days); sensitivity k flags any of
    /// them 5k/3 standard deviations above its level (5σ at k = 3) and above half its
    /// largest of the last month. A single value more than k/2 times as far from the
    /// mean or the value a day earlier (whichever is nearer) as any in the last month
    /// (1.5 times at k = 3) breaks the band at once.
    /// `zscore`: mean ± sensitivity·σ; `mad`: median ± sensitivity·MAD (the MAD scaled
    /// by 1.4826 so that it estimates σ for normal data, which makes one sensitivity
    /// mean the same for both); `seasonal`: a seasonal (MSTL) baseline with a
    /// prediction interval, fitted to the series at 1-minute steps and judged every
    /// minute.
    #[serde(default)]
    pub algorithm: DetectionAlgorithm,

    /// Width of the band, in σ (zscore), scaled MADs (mad), σ of the baseline's
    /// prediction interval (seasonal) or, for likelihood, in 5/3 σ of the recent mean
    /// surprises. Default 3, which suits alerts. A `likelihood` rule that restarts or
    /// scales without `requireApproval` gets 6 instead, and when it sets neither this
    /// nor `for`, its band must also be broken for 15m before it trips (its threshold
    /// still trips at once): a false trip costs a workload there, not a look. On NAB's
    /// real data that keeps false trips under one per series per 100 days, finding
    /// fewer incidents, later (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,

    /// How much of each series' history the band is computed from (a Prometheus
    /// duration). Default `1h`.
    #[serde(default = "default_detection_window")]
    pub window: String,

    /// No verdict before a series has this many samples in its window (cold start).
    /// Default 10.
    #[serde(default = "default_min_samples")]
    #[schemars(schema_with = "non_negative_int32")]
    pub min_samples: u32,

    /// How long a tripped series' value must stay normal before it clears, in event
    /// time (a Prometheus duration; `0s` clears at the first normal value). For
    /// `zscore`, `mad` and `seasonal`, normal is back within the band the series tripped
    /// against (and under the threshold), default the detection `window`, so that a
    /// series whose band has followed it into an anomaly, and whose return to normal
    /// then looks anomalous too, is one incident: one trip, one clear. For `likelihood`,
    /// normal is not surprising, default `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_after: Option<String>,
}

/// The anomaly detection algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DetectionAlgorithm {
    /// The recent surprise against its usual level (the default).
    #[default]
    Likelihood,
    /// Mean ± k standard deviations of the window.
    Zscore,
    /// Median ± k scaled median absolute deviations of the window: robust to outliers.
    Mad,
    /// A seasonal baseline (MSTL) with a prediction interval.
    Seasonal,
}

fn default_detection_window() -> String {
    "1h".to_owned()
}

fn default_min_samples() -> u32 {
    10
}

/// Schema of an unsigned count: schemars would say `format: uint64`, which the API
/// server does not recognize (and warns about since Kubernetes 1.34).
fn non_negative_int64(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int64", "minimum": 0})
}

/// Schema of a small unsigned count (a `u32`): schemars would say `format: uint32`,
/// which the API server does not recognize (`Warning: unrecognized format "uint32"`).
/// `int32` with a minimum of 0 is what Kubernetes knows; the Rust type keeps accepting
/// every value the API server accepts.
fn non_negative_int32(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int32", "minimum": 0})
}

/// The action an AnomalyAction takes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RemediationType {
    /// Delete the tripped pods so their controller recreates them.
    Restart,
    /// Change the replica count of the workload that owns the tripped pods.
    Scale,
    /// Only notify: a Kubernetes Event and, if configured, the webhook.
    Alert,
}

/// The workloads an AnomalyAction may act on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationTarget {
    /// Namespace of the workloads. Omitted means the rule's own namespace; acting in
    /// another namespace must be allowed in the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// Labels the workload must carry. Empty means no label constraint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Kind of workload acted on: `Pod` (the default), `Deployment` or `StatefulSet`.
    #[serde(default)]
    pub resource_type: TargetResourceType,

    /// Name of one workload to act on. Omitted means every workload matched by
    /// `labels` whose series tripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Kind of workload an AnomalyAction acts on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TargetResourceType {
    /// Individual pods.
    #[default]
    Pod,
    /// A Deployment (restarted by a rollout, or scaled).
    Deployment,
    /// A StatefulSet (restarted by a rollout, or scaled).
    StatefulSet,
}

/// Connection to a K8sGPT server that explains detections.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct K8sGptConfig {
    /// Whether to ask K8sGPT for an analysis of each detection.
    #[serde(default)]
    pub enabled: bool,

    /// Base URL of a K8sGPT server run with `--http` (for example
    /// `http://k8sgpt.k8sgpt.svc:8080`), to ask it directly (`POST /v1/analyze`, with
    /// explanations off, which would call an LLM and send cluster data out) instead of
    /// reading the K8sGPT operator's `Result` objects. Opt-in; the host must be allowed
    /// with `--allow-url-host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Observed state of an AnomalyAction, written by Prophet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyActionStatus {
    /// Where the rule stands: `Pending` (nothing detected yet), `Detected`,
    /// `Remediating`, `Resolved` or `Failed` (invalid rule or failed action; see
    /// `message`).
    #[serde(default)]
    pub phase: AnomalyPhase,

    /// When a series last tripped the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detected: Option<Time>,

    /// When a remediation was last performed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediated: Option<Time>,

    /// How many remediations this rule has performed.
    #[serde(default)]
    pub remediation_count: i64,

    /// Actions held by `requireApproval`, each until an ActionApproval names its
    /// detection or its series clears (at most 10, oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_approvals: Vec<PendingApproval>,

    /// K8sGPT's analysis of the workload last acted on (bounded), when `k8sgpt.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8sgpt_analysis: Option<String>,

    /// The most recent actions, newest first (at most 10): what was done to which
    /// object, and how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_actions: Vec<ActionRecord>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Human-readable detail: why the rule is invalid, or what it last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Standard Kubernetes conditions (for example `Ready`), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One action taken (or tried) by Prophet, as recorded in a rule's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// When it ended.
    pub time: Time,
    /// What was done: `evict`, `rollout-restart`, `scale`, `hpa-min-replicas`,
    /// `keda-min-replicas`, `alert`, `webhook`, `rollback`, `chaos-pause`,
    /// `chaos-resume`, `placeholders`, `nodepool-limits`, `nodepool-budget`,
    /// `nodepool-weight`, `release`.
    pub action: String,
    /// The object acted on, as `Kind namespace/name` (or `Kind name`).
    pub target: String,
    /// The object's uid, when it is a Kubernetes object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_uid: Option<String>,
    /// `Succeeded`, `Unchanged` (already as wanted), `DryRun`, `Refused` or `Failed`.
    pub result: String,
    /// Why it was refused or failed, or what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The detection acted on (stable across restarts and leaders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<String>,
    /// Who approved it, for rules with `requireApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

/// Lifecycle of an AnomalyAction.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AnomalyPhase {
    /// Watching; nothing detected yet.
    #[default]
    Pending,
    /// A series tripped the rule.
    Detected,
    /// A remediation is in progress (or awaiting approval).
    Remediating,
    /// The series went back to normal.
    Resolved,
    /// The rule is invalid or its action failed; see `message`.
    Failed,
}

// ---------------------------------------------------------------------------------------
// PredictiveScale
// ---------------------------------------------------------------------------------------

/// Forecasts a metric and resizes a node pool ahead of the change.
// Each `printcolumn(...)` repeats keys such as `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "aiops.prophet.io",
    version = "v1alpha1",
    kind = "PredictiveScale",
    plural = "predictivescales",
    namespaced,
    status = "PredictiveScaleStatus",
    derive = "PartialEq",
    shortname = "pscale",
    category = "prophet",
    doc = "A PredictiveScale forecasts a metric over a horizon and acts on a node pool before the change arrives: provision capacity when the forecast rises more than thresholdPercent above the current value, consolidate when it falls that much below.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Monitoring, Scaling, Complete or Failed"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Action",
        type_ = "string",
        json_path = ".spec.action",
        description = "What is done to the node pool"
    ),
    printcolumn(
        name = "NodePool",
        type_ = "string",
        json_path = ".spec.nodePoolRef.name",
        description = "The node pool acted on"
    ),
    printcolumn(
        name = "Horizon",
        type_ = "string",
        json_path = ".spec.horizon",
        description = "How far ahead the forecast looks"
    ),
    printcolumn(
        name = "Forecast",
        type_ = "number",
        json_path = ".status.lastForecast.value",
        description = "Last forecast value at the horizon"
    ),
    printcolumn(
        name = "Last Scaled",
        type_ = "date",
        json_path = ".status.lastScaled",
        description = "When the node pool was last changed"
    ),
    printcolumn(
        name = "Threshold%",
        type_ = "number",
        json_path = ".spec.thresholdPercent",
        priority = 1,
        description = "Forecast change (percent) that triggers the action"
    ),
    printcolumn(
        name = "Scalings",
        type_ = "integer",
        json_path = ".status.scalingCount",
        priority = 1,
        description = "How many scaling actions were performed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PredictiveScaleSpec {
    /// The PromQL expression to forecast, for example
    /// `sum(rate(container_cpu_usage_seconds_total[5m]))`, evaluated every minute of
    /// event time; each series it returns (at most 20) is forecast on its own. The
    /// Grafana ML style `ml_forecast(<expr>, <horizon>)` seen in older examples means the
    /// same: forecast `<expr>`; its horizon must equal `horizon`.
    pub forecast_query: String,

    /// The node pool whose capacity is changed (a Karpenter NodePool).
    pub node_pool_ref: NodePoolRef,

    /// How far ahead to forecast, in Prometheus duration syntax (`30m`, `1h`, `1d`).
    pub horizon: String,

    /// Relative change, in percent of the current value, that the forecast must exceed
    /// before acting: `20` means act when the forecast is more than 20% above (provision)
    /// or below (consolidate) the current value. The rule clears when the predicted
    /// change falls under half of it.
    pub threshold_percent: f64,

    /// What to do: `provision` capacity ahead of a rise, `consolidate` ahead of a fall,
    /// or `adjust` in whichever direction the forecast moves.
    pub action: ScaleAction,

    /// Base URL of a Grafana instance: each forecast-driven action is marked on it with
    /// an annotation (the API token comes from `grafanaTokenSecretRef`). Prophet makes
    /// its forecasts in-process (augurs MSTL and ETS models) whether or not this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grafana_endpoint: Option<String>,

    /// A key of a Secret in the rule's namespace holding a Grafana service-account token
    /// for the annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grafana_token_secret_ref: Option<SecretKeyRef>,

    /// For `provision` and `consolidate`: how capacity is reserved ahead of demand, as
    /// placeholder pods (pause containers at a negative priority) pinned to the NodePool.
    /// Without it a rise only raises the NodePool's limits and holds consolidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,

    /// For `adjust`: the other NodePool (for example the on-demand pool beside a spot
    /// pool in `nodePoolRef`). A rise gives `nodePoolRef` the higher `weight`, a fall
    /// gives it to this one. Only weights change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate_node_pool_ref: Option<NodePoolRef>,

    /// Decide, record and publish Events, but change nothing (see `--dry-run`).
    #[serde(default)]
    pub dry_run: bool,
}

/// How a PredictiveScale turns a forecast into reserved capacity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// CPU that one unit of the forecast query stands for (a quantity such as `500m`).
    /// For a query in cores, `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_unit: Option<String>,

    /// Memory that one unit of the forecast query stands for (a quantity such as
    /// `256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_per_unit: Option<String>,

    /// CPU requested by one placeholder pod. Default `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder_cpu: Option<String>,

    /// Memory requested by one placeholder pod. Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder_memory: Option<String>,

    /// The most placeholder pods kept for this rule. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_placeholders: Option<i32>,
}

/// Reference to the node pool a PredictiveScale resizes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolRef {
    /// Name of the node pool.
    pub name: String,
}

/// What a PredictiveScale does to its node pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScaleAction {
    /// Add capacity when the forecast rises past the threshold.
    Provision,
    /// Remove capacity when the forecast falls past the threshold.
    Consolidate,
    /// Add or remove capacity, following the forecast in either direction.
    Adjust,
}

/// Observed state of a PredictiveScale, written by Prophet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictiveScaleStatus {
    /// Where the rule stands: `Monitoring`, `Scaling`, `Complete` (the last scaling
    /// finished) or `Failed` (invalid rule or failed action; see `message`).
    #[serde(default)]
    pub phase: PredictiveScalePhase,

    /// The most recent forecast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forecast: Option<Forecast>,

    /// When the node pool was last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaled: Option<Time>,

    /// How many scaling actions this rule has performed.
    #[serde(default)]
    pub scaling_count: i64,

    /// The most recent actions, newest first (at most 10): what was done to which
    /// object, and how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_actions: Vec<ActionRecord>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Human-readable detail: why the rule is invalid, or what it last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Standard Kubernetes conditions (for example `Ready`), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One forecast of a PredictiveScale's query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// Forecast value at the horizon.
    pub value: f64,
    /// Lower bound of the forecast's prediction interval at the horizon.
    pub lower: f64,
    /// Upper bound of the forecast's prediction interval at the horizon.
    pub upper: f64,
    /// The query's value when the forecast was made.
    pub current: f64,
    /// When the forecast was made (time of the last sample used).
    pub at: Time,
}

/// Lifecycle of a PredictiveScale.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PredictiveScalePhase {
    /// Forecasting; no action needed.
    #[default]
    Monitoring,
    /// A node pool change is in progress.
    Scaling,
    /// The last node pool change finished.
    Complete,
    /// The rule is invalid or its action failed; see `message`.
    Failed,
}

// ---------------------------------------------------------------------------------------
// SLOViolation
// ---------------------------------------------------------------------------------------

/// Tracks a service level objective's error budget and acts before it runs out.
// Each `printcolumn(...)` repeats keys such as `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "aiops.prophet.io",
    version = "v1alpha1",
    kind = "SLOViolation",
    plural = "sloviolations",
    namespaced,
    status = "SLOViolationStatus",
    derive = "PartialEq",
    shortname = "slov",
    category = "prophet",
    doc = "An SLOViolation tracks a service level objective: it measures the service level indicator over the period, computes how much error budget remains and how fast it burns (multi-window burn rates), and runs its actions when a burn-rate tier fires or the remaining budget falls below errorBudgetThreshold.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Monitoring, Violated, Remediating or Resolved"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.sloTarget",
        description = "Objective, for example 99.9%"
    ),
    printcolumn(
        name = "Budget",
        type_ = "number",
        json_path = ".status.errorBudgetRemaining",
        description = "Fraction of the error budget left (1 = untouched, below 0 = overspent)"
    ),
    printcolumn(
        name = "Exhausted In (d)",
        type_ = "number",
        json_path = ".status.timeToExhaustion",
        description = "Days until the budget runs out at the current burn rate"
    ),
    printcolumn(
        name = "Last Violated",
        type_ = "date",
        json_path = ".status.lastViolated",
        description = "When the objective was last violated"
    ),
    printcolumn(
        name = "SLO",
        type_ = "string",
        json_path = ".spec.sloName",
        priority = 1,
        description = "Name of the objective"
    ),
    printcolumn(
        name = "Violations",
        type_ = "integer",
        json_path = ".status.violationCount",
        priority = 1,
        description = "How many times the objective was violated"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SLOViolationSpec {
    /// Name of the objective, used in Events, notifications and Prophet's metrics.
    pub slo_name: String,

    /// The objective: the fraction of good events to reach over `period`, written as a
    /// percentage (`"99.9%"`) or a ratio (`"0.999"`). Must be strictly between 0 and 100%.
    pub slo_target: String,

    /// Fraction of the error budget (between 0 and 1) below which the actions run:
    /// `0.1` means act when less than 10% of the budget remains. The actions also run
    /// when a burn-rate tier fires (see `burnRateTiers`), whatever the budget left.
    pub error_budget_threshold: f64,

    /// What to do when the objective is violated (a burn-rate tier fires or the budget
    /// falls below `errorBudgetThreshold`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<SloAction>,

    /// The HorizontalPodAutoscaler changed by `scale` actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_ref: Option<HpaRef>,

    /// Let Prophet pause the chaos experiment named in `chaosRef` whenever a burn-rate
    /// tier fires or the budget falls below `errorBudgetThreshold`, and resume it when the
    /// objective is healthy again. Off by default. Prophet never starts an experiment.
    #[serde(default)]
    pub enable_chaos: bool,

    /// The chaos experiment (a Chaos Mesh `Schedule` or `PodChaos` in the rule's
    /// namespace) that `enableChaos` pauses while the objective is violated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_ref: Option<ChaosRef>,

    /// The workload `rollback` rolls back (a Deployment in the rule's namespace).
    /// Omitted: the HPA's `scaleTargetRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<WorkloadRef>,

    /// URL of a non-secret receiver for `alert` actions (see AnomalyAction's
    /// `webhookUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,

    /// A key of a Secret holding the webhook URL or PagerDuty routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,

    /// The body sent to the webhook: `alertmanager` (default), `slack` or `pagerduty`.
    #[serde(default)]
    pub webhook_format: WebhookFormat,

    /// The `severity` label of alerts and notifications. Default `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,

    /// Decide, record and publish Events, but change nothing (see `--dry-run`).
    #[serde(default)]
    pub dry_run: bool,

    /// Allow acting on objects that a GitOps controller keeps in sync. Off by default.
    #[serde(default)]
    pub allow_git_ops_managed: bool,

    /// How the service level is measured: either `ratio` (error events over total events)
    /// or `latency` (requests slower than a histogram bucket bound). Required for Prophet
    /// to evaluate the objective: without it the rule is reported invalid in its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sli: Option<SliSpec>,

    /// Rolling window over which the objective is measured, in Prometheus duration
    /// syntax (`28d`, `30d`), between 1h and 10y. Defaults to `30d`.
    #[serde(default = "default_slo_period")]
    pub period: String,

    /// The multi-window burn-rate table. Omitted: 1h/5m at 14.4×, 6h/30m at 6×, 1d/2h
    /// at 3×, 3d/6h at 1× for a 30-day period, the factors scaled to `period`. A tier
    /// fires when the burn rate over both its windows exceeds its factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_tiers: Option<Vec<BurnRateTier>>,
}

fn default_slo_period() -> String {
    "30d".to_owned()
}

/// One action an SLOViolation runs when its error budget runs low.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloAction {
    /// The action: `scale` the workload through `hpaRef`, `alert`, `rollback` the last
    /// rollout, or run a `chaos` experiment (only with `enableChaos`).
    #[serde(rename = "type")]
    pub type_: SloActionType,

    /// Argument of the action; for `scale`, `increase` (the default) or a replica count
    /// for the HPA's minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The kinds of action an SLOViolation can run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SloActionType {
    /// Raise the capacity of the workload through its HorizontalPodAutoscaler.
    Scale,
    /// Notify: a Kubernetes Event and, if configured, a webhook.
    Alert,
    /// Roll the workload back to its previous revision.
    Rollback,
    /// Run a chaos experiment (requires `enableChaos`).
    Chaos,
}

/// Reference to a chaos experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChaosRef {
    /// `Schedule` or `PodChaos` (Chaos Mesh, `chaos-mesh.org/v1alpha1`).
    pub kind: String,
    /// Name of the experiment in the rule's namespace.
    pub name: String,
}

/// Reference to a workload in the rule's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `Deployment` (the only kind `rollback` supports).
    #[serde(default = "default_workload_kind")]
    pub kind: String,
    /// Name of the workload.
    pub name: String,
}

fn default_workload_kind() -> String {
    "Deployment".to_owned()
}

/// Reference to a HorizontalPodAutoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HpaRef {
    /// Name of the HorizontalPodAutoscaler.
    pub name: String,
    /// Namespace of the HorizontalPodAutoscaler. Omitted means the rule's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How an SLOViolation measures its service level: exactly one of `ratio` or `latency`.
///
/// Kept as a struct of two options (rather than a Rust enum) so the YAML reads
/// `sli: {ratio: {...}}` with every serializer and the CRD schema stays structural; the
/// schema's `oneOf` makes the API server reject both or neither, and
/// [`SliSpec::indicator`] does the same for rules read from files.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["ratio"]}, {"required": ["latency"]}]))]
pub struct SliSpec {
    /// Availability-style indicator: the fraction of events that are errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioSli>,

    /// Latency-style indicator: the fraction of requests slower than a histogram bucket
    /// bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySli>,
}

/// An SLI measured as error events over total events, both counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatioSli {
    /// Selector of the counter of failed events, for example
    /// `http_requests_total{job="backend",code=~"5.."}`.
    pub errors: String,

    /// Selector of the counter of all events, for example
    /// `http_requests_total{job="backend"}`.
    pub total: String,
}

/// An SLI measured from a latency histogram: requests slower than `le` are errors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencySli {
    /// Selector of the histogram's `_bucket` series, for example
    /// `http_request_duration_seconds_bucket{job="backend"}`.
    pub bucket: String,

    /// Bucket bound, in the histogram's unit, that a good request must not exceed, for
    /// example `"0.3"`. It must be one of the histogram's `le` label values.
    pub le: String,
}

/// A validated view of [`SliSpec`]: the one indicator it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceLevelIndicator<'a> {
    /// Error events over total events.
    Ratio(&'a RatioSli),
    /// Requests slower than a histogram bucket bound.
    Latency(&'a LatencySli),
}

/// Why an SLOViolation's `sli` cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSli {
    /// `spec.sli` is absent.
    #[error("spec.sli is missing: set sli.ratio {{errors, total}} or sli.latency {{bucket, le}}")]
    Missing,
    /// `spec.sli` names neither indicator.
    #[error("spec.sli is empty: set exactly one of sli.ratio or sli.latency")]
    Empty,
    /// `spec.sli` names both indicators.
    #[error("spec.sli sets both ratio and latency: set exactly one of them")]
    Both,
}

impl SliSpec {
    /// The one indicator this SLI holds, or why it holds none or two.
    pub fn indicator(&self) -> Result<ServiceLevelIndicator<'_>, InvalidSli> {
        match (&self.ratio, &self.latency) {
            (Some(ratio), None) => Ok(ServiceLevelIndicator::Ratio(ratio)),
            (None, Some(latency)) => Ok(ServiceLevelIndicator::Latency(latency)),
            (None, None) => Err(InvalidSli::Empty),
            (Some(_), Some(_)) => Err(InvalidSli::Both),
        }
    }
}

/// Why an SLOViolation's `sloTarget` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSloTarget {
    /// Not a number, with or without `%`.
    #[error(
        "sloTarget {input:?} is not a number: expected a percentage like \"99.9%\" or a ratio like \"0.999\""
    )]
    NotANumber {
        /// The text as written in the rule.
        input: String,
    },
    /// A number outside the open interval (0, 1) once read as a ratio.
    #[error(
        "sloTarget {input:?} is out of range: expected more than 0% and less than 100% (a 100% objective has no error budget)"
    )]
    OutOfRange {
        /// The text as written in the rule.
        input: String,
    },
}

impl SLOViolationSpec {
    /// The one indicator of `spec.sli`, or why the rule cannot be evaluated.
    pub fn indicator(&self) -> Result<ServiceLevelIndicator<'_>, InvalidSli> {
        self.sli.as_ref().ok_or(InvalidSli::Missing)?.indicator()
    }

    /// `sloTarget` as a ratio in (0, 1): `"99.9%"` and `"0.999"` both give 0.999.
    ///
    /// A bare number above 1 (such as `"99.9"`) is refused rather than guessed at, since
    /// the author may have meant either a percentage or a typo.
    pub fn target_ratio(&self) -> Result<f64, InvalidSloTarget> {
        parse_slo_target(&self.slo_target)
    }
}

/// Reads an SLO target written as a percentage (`"99.9%"`) or a ratio (`"0.999"`).
pub fn parse_slo_target(input: &str) -> Result<f64, InvalidSloTarget> {
    let text = input.trim();
    // A percentage is read as `<number>e-2` so the float parser rounds once: "99.9%"
    // gives exactly the double nearest 0.999, which dividing by 100 would not.
    let (number, exponent) = match text.strip_suffix('%') {
        Some(percent) => (percent.trim_end(), "e-2"),
        None => (text, ""),
    };
    // Rust's float parser also accepts "inf", "NaN" and exponents; an objective must be
    // a plain decimal, so only digits, one dot and an optional leading sign get that far.
    let looks_decimal = !number.is_empty()
        && number
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    let ratio: f64 = match format!("{number}{exponent}").parse() {
        Ok(ratio) if looks_decimal => ratio,
        _ => {
            return Err(InvalidSloTarget::NotANumber {
                input: input.to_owned(),
            });
        }
    };
    if ratio > 0.0 && ratio < 1.0 {
        Ok(ratio)
    } else {
        Err(InvalidSloTarget::OutOfRange {
            input: input.to_owned(),
        })
    }
}

/// Observed state of an SLOViolation, written by Prophet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SLOViolationStatus {
    /// Where the objective stands: `Monitoring` (no tier firing, budget above the
    /// threshold), `Violated`, `Remediating` (actions running) or `Resolved`.
    #[serde(default)]
    pub phase: SloPhase,

    /// Fraction of the error budget left over the period: 1 means untouched, 0 spent,
    /// below 0 overspent. Absent until enough data has been seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_budget_remaining: Option<f64>,

    /// Days until the budget runs out at the current burn rate (remaining budget ×
    /// period ÷ the burn rate over the first tier's long window, 1h by default). Absent
    /// when the budget is not burning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_exhaustion: Option<f64>,

    /// When the objective was last violated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_violated: Option<Time>,

    /// How many times the objective was violated.
    #[serde(default)]
    pub violation_count: i64,

    /// The most recent actions, newest first (at most 10): what was done to which
    /// object, and how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_actions: Vec<ActionRecord>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Human-readable detail: why the rule is invalid, or what it last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Standard Kubernetes conditions (for example `Ready`), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of an SLOViolation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SloPhase {
    /// No burn-rate tier fires and the budget is above the threshold.
    #[default]
    Monitoring,
    /// A burn-rate tier fires or the budget is below the threshold.
    Violated,
    /// Actions are running.
    Remediating,
    /// The budget recovered above the threshold after a violation.
    Resolved,
}

// ---------------------------------------------------------------------------------------
// ActionApproval
// ---------------------------------------------------------------------------------------

/// Approves one held action of an AnomalyAction with `requireApproval`.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "aiops.prophet.io",
    version = "v1alpha1",
    kind = "ActionApproval",
    plural = "actionapprovals",
    namespaced,
    derive = "PartialEq",
    shortname = "approval",
    category = "prophet",
    doc = "An ActionApproval lets Prophet carry out one action an AnomalyAction with requireApproval holds: the detection named in the rule's status.pendingApprovals. Who may approve is whoever may create ActionApprovals in the namespace (RBAC), apart from who may edit the rule; the ValidatingAdmissionPolicy in deploy/ makes spec.approver the name of the user who creates it. An approval acts only while that detection is still tripped, and expires (Prophet's --approval-ttl, one hour by default, from its creation).",
    printcolumn(
        name = "Rule",
        type_ = "string",
        json_path = ".spec.rule",
        description = "The AnomalyAction whose action is approved"
    ),
    printcolumn(
        name = "Detection",
        type_ = "string",
        json_path = ".spec.detection",
        description = "The detection approved"
    ),
    printcolumn(
        name = "Approver",
        type_ = "string",
        json_path = ".spec.approver",
        description = "Who approved"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ActionApprovalSpec {
    /// Name of the AnomalyAction, in this namespace, whose held action is approved.
    pub rule: String,
    /// The detection approved, as the rule's `status.pendingApprovals[].detection` names
    /// it: one action, for that detection only.
    pub detection: String,
    /// Who approves: the user name of whoever creates this object (the admission policy
    /// shipped in deploy/ rejects any other), recorded with the action.
    pub approver: String,
}

/// An action held by `requireApproval`, as shown in an AnomalyAction's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    /// The detection to name in an ActionApproval.
    pub detection: String,
    /// The action proposed (`restart`, `scale`).
    pub action: String,
    /// The pods it would act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The tripped series.
    pub series: String,
    /// When the series tripped (event time).
    pub detected_at: Time,
}

// ---------------------------------------------------------------------------------------
// CRD generation
// ---------------------------------------------------------------------------------------

/// The CustomResourceDefinitions of every Prophet kind, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        AnomalyAction::crd(),
        PredictiveScale::crd(),
        SLOViolation::crd(),
        ActionApproval::crd(),
    ]
}

/// File name of a CRD in `deploy/crds/`: `<plural>.<group>.yaml`, which is the CRD's own
/// object name plus `.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    let plural = &crd.spec.names.plural;
    format!("{plural}.{}.yaml", crd.spec.group)
}

/// A CRD as the YAML written to `deploy/crds/`, starting with [`GENERATED_HEADER`].
///
/// # Panics
/// Never in practice: a CRD is plain data (string-keyed maps, strings, numbers), which
/// YAML can always represent; a failure would be a bug in the serializer.
pub fn render_crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd)
        .expect("a CustomResourceDefinition is plain string-keyed data and always serializes");
    format!("{GENERATED_HEADER}\n{body}")
}

/// Every CRD from [`crds`] as one multi-document YAML stream, each document (header
/// comment included) separated from the previous one by a `---` line: what `prophet crds`
/// prints, ready for `kubectl apply -f -`. [`render_crd_yaml`] alone has no separator,
/// so concatenating its outputs would run the three objects into one invalid document.
pub fn render_all_crds_yaml() -> String {
    crds()
        .iter()
        .map(render_crd_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes every CRD from [`crds`] to `dir` (created if missing), one file per kind named
/// by [`crd_file_name`]. Existing files are overwritten; other files are left alone.
pub fn write_crds(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for crd in crds() {
        fs::write(dir.join(crd_file_name(&crd)), render_crd_yaml(&crd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_target_accepts_percent_and_ratio() {
        assert_eq!(parse_slo_target("99.9%"), Ok(0.999));
        assert_eq!(parse_slo_target("0.999"), Ok(0.999));
        assert_eq!(parse_slo_target(" 99.5 % "), Ok(0.995));
        assert_eq!(parse_slo_target("50%"), Ok(0.5));
    }

    #[test]
    fn slo_target_rejects_non_numbers_and_full_objectives() {
        for bad in ["", "%", "abc", "99.9%%", "inf", "NaN%", "1e-3"] {
            assert!(
                matches!(
                    parse_slo_target(bad),
                    Err(InvalidSloTarget::NotANumber { .. })
                ),
                "{bad:?} should not be a number"
            );
        }
        for out in ["100%", "0%", "0", "1", "99.9", "-5%", "150%"] {
            assert!(
                matches!(
                    parse_slo_target(out),
                    Err(InvalidSloTarget::OutOfRange { .. })
                ),
                "{out:?} should be out of range"
            );
        }
        let message = parse_slo_target("99.9").unwrap_err().to_string();
        assert!(message.contains("\"99.9\""), "{message}");
    }

    #[test]
    fn sli_needs_exactly_one_indicator() {
        let ratio = RatioSli {
            errors: "e".into(),
            total: "t".into(),
        };
        let latency = LatencySli {
            bucket: "b".into(),
            le: "0.3".into(),
        };
        let only_ratio = SliSpec {
            ratio: Some(ratio.clone()),
            latency: None,
        };
        assert_eq!(
            only_ratio.indicator(),
            Ok(ServiceLevelIndicator::Ratio(&ratio))
        );
        let only_latency = SliSpec {
            ratio: None,
            latency: Some(latency.clone()),
        };
        assert_eq!(
            only_latency.indicator(),
            Ok(ServiceLevelIndicator::Latency(&latency))
        );
        assert_eq!(SliSpec::default().indicator(), Err(InvalidSli::Empty));
        let both = SliSpec {
            ratio: Some(ratio),
            latency: Some(latency),
        };
        assert_eq!(both.indicator(), Err(InvalidSli::Both));
    }

    #[test]
    fn crd_file_names_follow_plural_dot_group() {
        let names: Vec<String> = crds().iter().map(crd_file_name).collect();
        assert_eq!(
            names,
            [
                "anomalyactions.aiops.prophet.io.yaml",
                "predictivescales.aiops.prophet.io.yaml",
                "sloviolations.aiops.prophet.io.yaml",
                "actionapprovals.aiops.prophet.io.yaml",
            ]
        );
    }
}
