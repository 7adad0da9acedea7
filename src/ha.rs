//! HA pairs: deduplication of Prometheus replicas that scrape the same targets and write
//! the same series, differing only in a replica label, as Cortex's and Mimir's HA tracker
//! does. Per HA cluster (the values of the cluster labels), the samples of one replica
//! (the values of the replica labels) are accepted, the elected one; the others' are
//! dropped and counted until the elected replica has sent nothing for the failover
//! timeout, on the receiver's clock, when the next replica heard from is elected
//! instead. Kept series lose their replica labels, so both replicas' series are one.
//!
//! Sits between ingest and route: [`HaRequest::admit`] judges each decoded series before
//! the router sees it. It owns the elections and nothing else; it never reads rule state
//! nor the wall clock (the request's arrival is passed in). Elections live in memory
//! only: after a restart the first replica heard from is elected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::ingest::SeriesView;
use crate::labels::{LabelNames, short_eq};

/// Most HA clusters tracked at once. A sender cycling cluster values could otherwise
/// grow the elections without bound; past it, elections whose replica has been silent
/// for the failover timeout are forgotten, and a further cluster's series pass without
/// deduplication (counted as `over_limit`) while every tracked one is alive.
pub const MAX_HA_CLUSTERS: usize = 1000;

/// What identifies an HA pair's series, and how long an elected replica may stay silent.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Labels whose values together name the HA cluster (a missing one counts as empty).
    pub cluster_labels: Vec<String>,
    /// Labels whose values name the replica; empty turns deduplication off.
    pub replica_labels: Vec<String>,
    pub failover_timeout: Duration,
}

impl Default for HaConfig {
    /// Cortex's and Mimir's labels (`cluster`, `__replica__`) and the Prometheus
    /// Operator's (`prometheus`, `prometheus_replica`, which kube-prometheus sets on every
    /// Prometheus), with Cortex's 30 s failover timeout.
    fn default() -> Self {
        Self {
            cluster_labels: vec!["cluster".into(), "prometheus".into()],
            replica_labels: vec!["__replica__".into(), "prometheus_replica".into()],
            failover_timeout: Duration::from_secs(30),
        }
    }
}

/// The samples of one request by HA fate, added to `prophet_ha_samples_total` once the
/// request is accepted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HaCounts {
    /// From the elected replica of their cluster.
    pub accepted: usize,
    /// From another replica: dropped.
    pub duplicate: usize,
    /// With a replica label but no cluster label: kept as sent, not deduplicated.
    pub missing_cluster: usize,
    /// From a cluster beyond [`MAX_HA_CLUSTERS`]: kept as sent, not deduplicated.
    pub over_limit: usize,
}

/// What to do with one series.
#[derive(Debug, Clone, Copy)]
pub enum Admission<'t> {
    /// Route it, leaving out the labels in `strip` (the replica labels, for a series of
    /// an elected replica).
    Keep { strip: Option<&'t LabelNames> },
    /// A non-elected replica's: drop it.
    Duplicate,
}

/// The verdict on a (cluster, replica), remembered for the run of series that share
/// those values (every series of a Prometheus's request carries the same external
/// labels, so a request asks the tracker once).
#[derive(Debug, Clone)]
enum Verdict {
    Elected,
    /// Not the elected replica, which is the one described.
    Duplicate(Arc<str>),
    OverLimit,
}

/// One cluster's elected replica.
#[derive(Debug)]
struct Election {
    /// The replica labels' values, encoded as [`encode`] writes them.
    replica: Box<[u8]>,
    /// For logs and answers: `prometheus_replica="prometheus-k8s-0"`.
    shown: Arc<str>,
    /// When the elected replica was last heard from (a request's arrival).
    last_seen: Instant,
}

/// The elections of every HA cluster heard from. Shared by the request handlers.
pub struct HaTracker {
    /// Cluster labels first, then replica labels: one walk over a series finds both.
    wanted: LabelNames,
    clusters: usize,
    replicas: LabelNames,
    failover_timeout: Duration,
    // std Mutex: held for one map lookup, never across an await; asked once per request.
    elections: Mutex<HashMap<Box<[u8]>, Election>>,
    failovers: Counter,
    tracked: Gauge,
    warned_over_limit: AtomicBool,
}

impl HaTracker {
    /// A tracker counting failovers and tracked clusters in the given metrics. A name
    /// both a cluster and a replica label is taken as a cluster label.
    pub fn new(config: &HaConfig, failovers: Counter, tracked: Gauge) -> Self {
        let cluster_names = LabelNames::new(&config.cluster_labels);
        let replica_names: Vec<&str> = config
            .replica_labels
            .iter()
            .map(String::as_str)
            .filter(|name| !cluster_names.contains(name.as_bytes()))
            .collect();
        let replicas = LabelNames::new(&replica_names);
        Self {
            wanted: LabelNames::new(cluster_names.iter().chain(replicas.iter())),
            clusters: cluster_names.len(),
            replicas,
            failover_timeout: config.failover_timeout,
            elections: Mutex::new(HashMap::new()),
            failovers,
            tracked,
            warned_over_limit: AtomicBool::new(false),
        }
    }

    /// A tracker that deduplicates nothing.
    pub fn off() -> Self {
        Self::new(
            &HaConfig {
                replica_labels: Vec::new(),
                ..HaConfig::default()
            },
            Counter::default(),
            Gauge::default(),
        )
    }

    /// Judges the series of one request that arrived at `now`.
    pub fn request<'a>(&self, now: Instant) -> HaRequest<'_, 'a> {
        HaRequest {
            tracker: self,
            now,
            values: Vec::with_capacity(self.wanted.len()),
            last: Vec::with_capacity(self.wanted.len()),
            verdict: None,
            scratch: Vec::new(),
            counts: HaCounts::default(),
            refusal: None,
        }
    }

    /// The verdict on the replica whose cluster and replica label values are `values`
    /// (cluster labels first), updating the election.
    fn judge(&self, values: &[&[u8]], scratch: &mut Vec<u8>, now: Instant) -> Verdict {
        let (cluster, replica) = values.split_at(self.clusters);
        scratch.clear();
        encode(cluster, scratch);
        // A replica that is a StatefulSet's pod is named by its ordinal; the rest of its
        // name is the shard's (the Prometheus Operator's shards share `prometheus` and
        // differ only in `prometheus_replica`: prometheus-k8s-0 and prometheus-k8s-1 are a
        // pair, prometheus-k8s-shard-1-0 writes other series), part of the cluster.
        for value in replica {
            encode(&[shard_of(value)], scratch);
        }
        let key_len = scratch.len();
        encode(replica, scratch);
        let (key, replica_key) = scratch.split_at(key_len);
        let mut elections = self
            .elections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(election) = elections.get_mut(key) {
            if *election.replica == *replica_key {
                election.last_seen = election.last_seen.max(now);
                return Verdict::Elected;
            }
            let silent = now.saturating_duration_since(election.last_seen);
            if silent <= self.failover_timeout {
                return Verdict::Duplicate(election.shown.clone());
            }
            let shown: Arc<str> = self.show(self.clusters, replica).into();
            tracing::warn!(
                cluster = %self.show(0, cluster),
                from = %election.shown,
                to = %shown,
                silent_s = silent.as_secs_f64(),
                "HA failover: the elected replica fell silent; accepting another"
            );
            self.failovers.inc();
            *election = Election {
                replica: replica_key.into(),
                shown,
                last_seen: now,
            };
            return Verdict::Elected;
        }
        if elections.len() >= MAX_HA_CLUSTERS {
            let timeout = self.failover_timeout;
            elections.retain(|_, e| now.saturating_duration_since(e.last_seen) <= timeout);
            if elections.len() >= MAX_HA_CLUSTERS {
                if !self.warned_over_limit.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limit = MAX_HA_CLUSTERS,
                        cluster = %self.show(0, cluster),
                        "more HA clusters than tracked at once: further clusters pass without deduplication"
                    );
                }
                self.tracked.set(elections.len() as i64);
                return Verdict::OverLimit;
            }
        }
        let shown: Arc<str> = self.show(self.clusters, replica).into();
        tracing::info!(
            cluster = %self.show(0, cluster),
            replica = %shown,
            "HA cluster heard from first: accepting this replica"
        );
        elections.insert(
            key.into(),
            Election {
                replica: replica_key.into(),
                shown,
                last_seen: now,
            },
        );
        self.tracked.set(elections.len() as i64);
        Verdict::Elected
    }

    /// `name="value", ...` for the non-empty values, `values[i]` being the value of
    /// wanted name `first + i`.
    fn show(&self, first: usize, values: &[&[u8]]) -> String {
        self.wanted
            .iter()
            .skip(first)
            .zip(values)
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={:?}", String::from_utf8_lossy(value)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What precedes a replica value's StatefulSet ordinal (`prometheus-k8s` of
/// `prometheus-k8s-1`); empty when the value ends in no `-<digits>`, so that replicas named
/// `a` and `b` are one pair.
fn shard_of(value: &[u8]) -> &[u8] {
    match value.iter().rposition(|&b| b == b'-') {
        Some(dash)
            if dash + 1 < value.len() && value[dash + 1..].iter().all(u8::is_ascii_digit) =>
        {
            &value[..dash]
        }
        _ => &[],
    }
}

/// Each value with its length before it, so that no two lists of values encode alike.
fn encode(values: &[&[u8]], out: &mut Vec<u8>) {
    for value in values {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

/// The HA side of one request: judges its series in turn and counts their samples.
pub struct HaRequest<'t, 'a> {
    tracker: &'t HaTracker,
    now: Instant,
    /// The wanted labels' values in the series being judged, and in the last run's.
    values: Vec<&'a [u8]>,
    last: Vec<&'a [u8]>,
    verdict: Option<Verdict>,
    scratch: Vec<u8>,
    pub counts: HaCounts,
    /// Why the first duplicate series was dropped, for the answer.
    refusal: Option<String>,
}

impl<'t, 'a> HaRequest<'t, 'a> {
    /// Whether the series is kept (and which labels it loses) or dropped as another
    /// replica's. A series without a replica label passes as it is. A label with an
    /// empty value is no label.
    #[inline]
    pub fn admit(&mut self, series: &SeriesView<'_, 'a>) -> Admission<'t> {
        let tracker = self.tracker;
        if tracker.replicas.is_empty() {
            return Admission::Keep { strip: None };
        }
        self.values.clear();
        self.values.resize(tracker.wanted.len(), &[]);
        for label in series.labels {
            if let Some(i) = tracker.wanted.position(label.name) {
                self.values[i] = label.value;
            }
        }
        let (cluster, replica) = self.values.split_at(tracker.clusters);
        if replica.iter().all(|v| v.is_empty()) {
            return Admission::Keep { strip: None };
        }
        let samples = series.samples.len();
        if cluster.iter().all(|v| v.is_empty()) {
            self.counts.missing_cluster += samples;
            return Admission::Keep { strip: None };
        }
        let verdict = match &self.verdict {
            Some(verdict)
                if self
                    .last
                    .iter()
                    .zip(&self.values)
                    .all(|(last, value)| short_eq(last, value)) =>
            {
                verdict.clone()
            }
            _ => {
                let verdict = tracker.judge(&self.values, &mut self.scratch, self.now);
                std::mem::swap(&mut self.last, &mut self.values);
                self.verdict = Some(verdict.clone());
                verdict
            }
        };
        match verdict {
            Verdict::Elected => {
                self.counts.accepted += samples;
                Admission::Keep {
                    strip: Some(&tracker.replicas),
                }
            }
            Verdict::OverLimit => {
                self.counts.over_limit += samples;
                Admission::Keep { strip: None }
            }
            Verdict::Duplicate(elected) => {
                self.counts.duplicate += samples;
                if self.refusal.is_none() {
                    // `last` holds this series' values, whether remembered or just judged.
                    let (cluster, replica) = self.last.split_at(tracker.clusters);
                    self.refusal = Some(format!(
                        "HA cluster {{{}}}: samples of replica {{{}}} dropped, the elected replica is {{{elected}}}",
                        tracker.show(0, cluster),
                        tracker.show(tracker.clusters, replica),
                    ));
                }
                Admission::Duplicate
            }
        }
    }

    /// Why the request's first dropped series was dropped, if any was.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Label, Sample};

    const SAMPLES: &[Sample] = &[
        Sample {
            timestamp_ms: 1,
            value: 1.0,
        },
        Sample {
            timestamp_ms: 2,
            value: 2.0,
        },
    ];

    /// A decoded series with these labels and two samples.
    fn view<'s, 'a>(labels: &'s [Label<'a>]) -> SeriesView<'s, 'a> {
        SeriesView {
            index: 0,
            metric_name: b"up",
            labels,
            sorted: false,
            encoded_labels: &[],
            samples: SAMPLES,
            histograms: 0,
            exemplars: 0,
        }
    }

    fn tracker() -> HaTracker {
        HaTracker::new(&HaConfig::default(), Counter::default(), Gauge::default())
    }

    /// How one series with these labels fares in a request of its own arriving at `at`;
    /// returns the labels it would be routed with (None: dropped) and the counts.
    fn judge(
        tracker: &HaTracker,
        at: Instant,
        pairs: &[(&str, &str)],
    ) -> (Option<Vec<String>>, HaCounts) {
        let labels: Vec<Label<'_>> = pairs
            .iter()
            .map(|(n, v)| Label {
                name: n.as_bytes(),
                value: v.as_bytes(),
            })
            .collect();
        let mut request = tracker.request(at);
        let kept = match request.admit(&view(&labels)) {
            Admission::Keep { strip } => Some(
                pairs
                    .iter()
                    .filter(|(n, _)| !strip.is_some_and(|s| s.contains(n.as_bytes())))
                    .map(|(n, _)| n.to_string())
                    .collect(),
            ),
            Admission::Duplicate => None,
        };
        (kept, request.counts)
    }

    fn replica(name: &'static str) -> [(&'static str, &'static str); 3] {
        [
            ("__name__", "up"),
            ("cluster", "eu-1"),
            ("__replica__", name),
        ]
    }

    #[test]
    fn the_first_replica_heard_from_is_elected_and_the_other_dropped() {
        let (tracker, t0) = (tracker(), Instant::now());
        let (kept, counts) = judge(&tracker, t0, &replica("a"));
        assert_eq!(
            kept.unwrap(),
            ["__name__", "cluster"],
            "replica label dropped"
        );
        assert_eq!(counts.accepted, 2);
        let (kept, counts) = judge(&tracker, t0 + Duration::from_secs(1), &replica("b"));
        assert_eq!(kept, None);
        assert_eq!((counts.accepted, counts.duplicate), (0, 2));
        // Still `a` as long as it keeps sending.
        for s in [20, 40, 60] {
            let at = t0 + Duration::from_secs(s);
            assert!(judge(&tracker, at, &replica("a")).0.is_some());
            assert!(judge(&tracker, at, &replica("b")).0.is_none());
        }
        assert_eq!(tracker.failovers.get(), 0);
        assert_eq!(tracker.tracked.get(), 1);
    }

    #[test]
    fn the_operators_shards_are_clusters_of_their_own_and_their_replicas_pairs() {
        let (tracker, t0) = (tracker(), Instant::now());
        let pod = |name: &'static str| {
            [
                ("__name__", "up"),
                ("prometheus", "monitoring/k8s"),
                ("prometheus_replica", name),
            ]
        };
        for shard in ["prometheus-k8s-0", "prometheus-k8s-shard-1-0"] {
            assert!(judge(&tracker, t0, &pod(shard)).0.is_some(), "{shard}");
        }
        for twin in ["prometheus-k8s-1", "prometheus-k8s-shard-1-1"] {
            assert!(judge(&tracker, t0, &pod(twin)).0.is_none(), "{twin}");
        }
        assert_eq!(tracker.tracked.get(), 2);
        assert_eq!(
            shard_of(b"prometheus-k8s-shard-1-12"),
            b"prometheus-k8s-shard-1"
        );
        assert_eq!(shard_of(b"b"), b"");
        assert_eq!(shard_of(b"replica-"), b"");
    }

    #[test]
    fn another_replica_takes_over_once_the_elected_one_is_silent_for_the_timeout() {
        let (tracker, t0) = (tracker(), Instant::now());
        assert!(judge(&tracker, t0, &replica("a")).0.is_some());
        // 30 s of silence is within the timeout; past it, `b` is elected.
        assert!(
            judge(&tracker, t0 + Duration::from_secs(30), &replica("b"))
                .0
                .is_none()
        );
        assert_eq!(tracker.failovers.get(), 0);
        let after = t0 + Duration::from_millis(30_001);
        let (kept, counts) = judge(&tracker, after, &replica("b"));
        assert_eq!(kept.unwrap(), ["__name__", "cluster"]);
        assert_eq!(counts.accepted, 2);
        assert_eq!(tracker.failovers.get(), 1);
        // `a` coming back is now the duplicate.
        assert!(
            judge(&tracker, after + Duration::from_secs(1), &replica("a"))
                .0
                .is_none()
        );
        // A request of `a` that arrived (and was timed) before `b` took over cannot move
        // `b`'s clock back.
        assert!(
            judge(&tracker, after + Duration::from_secs(2), &replica("b"))
                .0
                .is_some()
        );
        assert!(judge(&tracker, t0, &replica("b")).0.is_some());
        assert!(
            judge(&tracker, after + Duration::from_secs(32), &replica("a"))
                .0
                .is_none()
        );
        assert_eq!(tracker.failovers.get(), 1);
    }

    #[test]
    fn series_without_the_labels_pass_as_they_are() {
        let (tracker, t0) = (tracker(), Instant::now());
        let plain = [("__name__", "up"), ("job", "api")];
        let (kept, counts) = judge(&tracker, t0, &plain);
        assert_eq!(kept.unwrap(), ["__name__", "job"]);
        assert_eq!(counts, HaCounts::default());
        // A cluster label alone is no HA pair.
        let cluster_only = [("__name__", "up"), ("cluster", "eu-1")];
        assert_eq!(
            judge(&tracker, t0, &cluster_only).0.unwrap(),
            ["__name__", "cluster"]
        );
        // A replica label without a cluster: kept with its label, as Cortex does, and
        // counted.
        let no_cluster = [("__name__", "up"), ("__replica__", "a")];
        let (kept, counts) = judge(&tracker, t0, &no_cluster);
        assert_eq!(kept.unwrap(), ["__name__", "__replica__"]);
        assert_eq!(counts.missing_cluster, 2);
        // An empty value is no label.
        let empty = [("__name__", "up"), ("cluster", "eu-1"), ("__replica__", "")];
        assert_eq!(judge(&tracker, t0, &empty).1, HaCounts::default());
        assert_eq!(tracker.tracked.get(), 0);
        // Off: nothing is judged.
        let off = HaTracker::off();
        assert_eq!(judge(&off, t0, &replica("a")).0.unwrap().len(), 3);
        assert_eq!(judge(&off, t0, &replica("b")).0.unwrap().len(), 3);
    }

    /// kube-prometheus: `prometheus` names the pair, `prometheus_replica` the pod. Two
    /// pairs (k8s and user workload) in one `cluster` are two HA clusters.
    #[test]
    fn every_cluster_label_together_names_the_cluster() {
        let (tracker, t0) = (tracker(), Instant::now());
        let series = |prometheus: &'static str, pod: &'static str| {
            [
                ("__name__", "up"),
                ("cluster", "eu-1"),
                ("prometheus", prometheus),
                ("prometheus_replica", pod),
            ]
        };
        let kept = judge(&tracker, t0, &series("monitoring/k8s", "prometheus-k8s-0"));
        assert_eq!(kept.0.unwrap(), ["__name__", "cluster", "prometheus"]);
        assert!(
            judge(&tracker, t0, &series("monitoring/uwl", "prometheus-uwl-1"))
                .0
                .is_some()
        );
        assert!(
            judge(&tracker, t0, &series("monitoring/k8s", "prometheus-k8s-1"))
                .0
                .is_none()
        );
        assert!(
            judge(&tracker, t0, &series("monitoring/uwl", "prometheus-uwl-0"))
                .0
                .is_none()
        );
        assert_eq!(tracker.tracked.get(), 2);
    }

    /// One request asks the tracker once per run of series with the same labels' values,
    /// and judges a series with other values on its own.
    #[test]
    fn a_request_is_judged_series_by_series() {
        let (tracker, t0) = (tracker(), Instant::now());
        assert!(judge(&tracker, t0, &replica("a")).0.is_some());
        let labels = |name| {
            replica(name).map(|(n, v)| Label {
                name: n.as_bytes(),
                value: v.as_bytes(),
            })
        };
        let (a, b) = (labels("a"), labels("b"));
        let mut request = tracker.request(t0);
        let fates: Vec<bool> = [&a, &a, &b, &a]
            .into_iter()
            .map(|labels| matches!(request.admit(&view(labels)), Admission::Keep { .. }))
            .collect();
        assert_eq!(fates, [true, true, false, true]);
        assert_eq!((request.counts.accepted, request.counts.duplicate), (6, 2));
        assert_eq!(
            request.refusal(),
            Some(
                r#"HA cluster {cluster="eu-1"}: samples of replica {__replica__="b"} dropped, the elected replica is {__replica__="a"}"#
            )
        );
    }

    #[test]
    fn clusters_beyond_the_limit_pass_without_deduplication() {
        let (tracker, t0) = (tracker(), Instant::now());
        let names: Vec<String> = (0..=MAX_HA_CLUSTERS).map(|i| format!("c{i}")).collect();
        for name in &names[..MAX_HA_CLUSTERS] {
            let series = [("cluster", name.as_str()), ("__replica__", "a")];
            assert_eq!(judge(&tracker, t0, &series).1.accepted, 2);
        }
        let last = [
            ("cluster", names[MAX_HA_CLUSTERS].as_str()),
            ("__replica__", "a"),
        ];
        let (kept, counts) = judge(&tracker, t0, &last);
        assert_eq!(kept.unwrap(), ["cluster", "__replica__"]);
        assert_eq!(counts.over_limit, 2);
        // Once the others have been silent for the timeout, they make room.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(judge(&tracker, later, &last).1.accepted, 2);
        assert_eq!(tracker.tracked.get(), 1);
    }
}
