//! Prophet's own metrics, served at `/metrics`: one prometheus-client registry, created at
//! start and shared by every stage. Metrics are updated once per request or per batch,
//! never per sample in a loop.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub version: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SampleLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub kind: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// Every metric Prophet exports.
pub struct Metrics {
    registry: Registry,
    /// Remote-write requests by protocol version and HTTP status.
    pub requests: Family<RequestLabels, Counter>,
    /// Samples of accepted requests by fate: accepted (some rule needs the series),
    /// unmatched (no rule does), duplicate (an HA replica's that is not elected);
    /// rejected: needed, but refused with 503 because the
    /// evaluator was behind. Samples of requests refused as malformed are not counted.
    pub samples: Family<SampleLabels, Counter>,
    /// Samples of series carrying an HA replica label, by fate: accepted (elected
    /// replica), duplicate (another replica: dropped), missing_cluster and over_limit
    /// (kept as sent, not deduplicated).
    pub ha_samples: Family<SampleLabels, Counter>,
    /// Times an HA cluster's election moved to another replica.
    pub ha_failovers: Counter,
    /// HA clusters whose elected replica is remembered.
    pub ha_clusters: Gauge,
    /// Series tracked in windows.
    pub series_active: Gauge,
    /// Samples a rule dropped because it already holds `--series-limit` series.
    pub series_limit_dropped: Family<RuleLabels, Counter>,
    /// Samples a window dropped, by reason (`out_of_order`: older than the series'
    /// newest sample or than its rule's clock allows).
    pub window_dropped: Family<DropLabels, Counter>,
    /// Samples taken after a step that reads them had settled without them (its
    /// `--settle-delay` ran out first); they count from the next step on.
    pub late_samples: Counter,
    /// Steps of expressions, forecasts and SLOs evaluated because their settle delay ran
    /// out, not because every series they read had reached them.
    pub steps_settled_by_delay: Counter,
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Seconds from the arrival of the request carrying a sample to the verdict it caused.
    pub verdict_latency: Histogram,
    /// Rules by state (active, invalid, unsupported).
    pub rules: Family<RuleStateLabels, Gauge>,
    /// Cluster mode: reconciles by controller (the kind) and result, as
    /// controller-runtime names them.
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    pub reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    /// 1 while this replica leads (cluster mode).
    pub leader: Gauge,
    /// Status writes sent to the API server.
    pub status_writes: Counter,
    /// TLS handshakes on the ingest listener that failed or did not finish in time (a
    /// client certificate from another CA, a plain-HTTP sender, a stalled client).
    pub tls_handshake_failures: Counter,
    /// Actions by rule kind, action and result (cluster mode).
    pub actions: Family<ActionLabels, Counter>,
    /// Seconds from the arrival of the request carrying the deciding sample to the end of
    /// the action's API call.
    pub action_latency: Family<ActionKindLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `AnomalyAction`, `PredictiveScale`, `SLOViolation`.
    pub kind: &'static str,
    /// `evict`, `rollout-restart`, `scale`, `alert`, ...
    pub action: String,
    /// `succeeded`, `unchanged`, `dry-run`, `refused`, `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionKindLabels {
    pub kind: &'static str,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    /// `success`, `error` or `requeue`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleStateLabels {
    pub state: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        // No registry prefix: the operator metrics keep controller-runtime's names.
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "prophet_remote_write_requests",
            "Remote-write requests by protocol version and HTTP status code",
            requests.clone(),
        );
        let samples = Family::<SampleLabels, Counter>::default();
        registry.register(
            "prophet_remote_write_samples",
            "Remote-write samples by result: accepted, unmatched, duplicate or rejected",
            samples.clone(),
        );
        let ha_samples = Family::<SampleLabels, Counter>::default();
        registry.register(
            "prophet_ha_samples",
            "Samples of series with an HA replica label by result: accepted, duplicate, missing_cluster or over_limit",
            ha_samples.clone(),
        );
        let ha_failovers = Counter::default();
        registry.register(
            "prophet_ha_failovers",
            "Times an HA cluster's elected replica fell silent for the failover timeout and another was elected",
            ha_failovers.clone(),
        );
        let ha_clusters = Gauge::default();
        registry.register(
            "prophet_ha_clusters",
            "HA clusters whose elected replica is tracked",
            ha_clusters.clone(),
        );
        let series_active = Gauge::default();
        registry.register(
            "prophet_series_active",
            "Series currently held in rule windows",
            series_active.clone(),
        );
        let series_limit_dropped = Family::<RuleLabels, Counter>::default();
        registry.register(
            "prophet_series_limit_dropped_samples",
            "Samples dropped because their rule already holds its series limit",
            series_limit_dropped.clone(),
        );
        let window_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "prophet_window_dropped_samples",
            "Samples dropped by rule windows, by reason",
            window_dropped.clone(),
        );
        let late_samples = Counter::default();
        registry.register(
            "prophet_late_samples",
            "Samples that arrived after a step reading them had settled; used from the next step on",
            late_samples.clone(),
        );
        let steps_settled_by_delay = Counter::default();
        registry.register(
            "prophet_steps_settled_by_delay",
            "Rule steps evaluated when their settle delay ran out, with series still missing",
            steps_settled_by_delay.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "prophet_rule_verdicts",
            "Verdict changes by rule kind and verdict",
            verdicts.clone(),
        );
        let verdict_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "prophet_verdict_latency_seconds",
            "Time from the arrival of a remote-write request to the verdict it caused",
            verdict_latency.clone(),
        );
        let rules = Family::<RuleStateLabels, Gauge>::default();
        registry.register("prophet_rules", "Loaded rules by state", rules.clone());
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "controller_runtime_reconcile",
            "Reconciles of Prophet's custom resources by controller and result",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "controller_runtime_reconcile_errors",
            "Reconciles that failed, by controller",
            reconcile_errors.clone(),
        );
        let reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_histogram);
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Time a reconcile took, by controller",
            reconcile_time.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "prophet_leader",
            "1 while this replica leads and may write status, Events and act",
            leader.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "prophet_status_writes",
            "Status writes sent to the API server",
            status_writes.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "prophet_tls_handshake_failures",
            "TLS handshakes on the ingest listener that failed or did not finish within the header-read timeout",
            tls_handshake_failures.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "prophet_actions",
            "Actions taken or tried, by rule kind, action and result",
            actions.clone(),
        );
        let action_latency: Family<ActionKindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_histogram);
        registry.register(
            "prophet_action_latency_seconds",
            "Seconds from the arrival of the deciding sample to the end of the action's API call",
            action_latency.clone(),
        );
        Self {
            actions,
            action_latency,
            tls_handshake_failures,
            reconciles,
            reconcile_errors,
            reconcile_time,
            leader,
            status_writes,
            registry,
            requests,
            samples,
            ha_samples,
            ha_failovers,
            ha_clusters,
            series_active,
            series_limit_dropped,
            window_dropped,
            late_samples,
            steps_settled_by_delay,
            verdicts,
            verdict_latency,
            rules,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_samples(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.samples
                .get_or_create(&SampleLabels { result })
                .inc_by(n as u64);
        }
    }
}

impl Metrics {
    /// Adds one accepted request's HA counts.
    pub fn count_ha(&self, counts: &crate::ha::HaCounts) {
        for (result, n) in [
            ("accepted", counts.accepted),
            ("duplicate", counts.duplicate),
            ("missing_cluster", counts.missing_cluster),
            ("over_limit", counts.over_limit),
        ] {
            if n > 0 {
                self.ha_samples
                    .get_or_create(&SampleLabels { result })
                    .inc_by(n as u64);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
