//! Prophet: a Prometheus remote-write receiver, a continuous rule evaluator and a
//! Kubernetes operator in one binary.
//!
//! # Layout
//! Data flows one way, one module per stage (see `DESIGN.md`):
//! - [`http`]: the axum router (remote-write endpoint, `/metrics`, health, debug JSON).
//! - [`ingest`]: content negotiation, snappy, zero-copy protobuf decode and validation.
//! - [`ha`]: HA pairs: one replica's samples accepted per cluster, the others dropped.
//! - [`route`]: the compiled rule set's index; drops series no rule needs.
//! - [`window`]: per (rule input, series) windows of samples, in event time.
//! - [`eval`]: PromQL over windows and the detectors (thresholds, bands, SLO burn rates,
//!   forecasts); emits verdict changes.
//! - [`reconcile`]: verdicts to decisions (cooldown, approval); in cluster mode the
//!   ledger of tripped series, status and Events, and leader election.
//! - [`actuate`]: what is done about a decision (dry-run recorder in standalone mode).
//! - [`rules`]: the CRD types, quantities and durations, compiling a CR into inputs.
//! - [`standalone`]: wires the stages for `prophet run`.
//! - [`cluster`]: wires the same stages for `prophet run --cluster`: rules from custom
//!   resources, status and Events, one leader.
//! - [`surfaces`]: the listeners (ingest with its credentials and TLS, probes and
//!   metrics apart) and the files they follow; [`auth`] (the credential gate, the
//!   predicate that keeps an unauthenticated ingest from driving real actions), [`tls`],
//!   [`follow`] (files re-read when they change), [`review`] (`/metrics` behind
//!   Kubernetes tokens).
//! - [`serve`]: the HTTP server loop: header-read and idle timeouts, the connection cap,
//!   and a shutdown bounded by a grace period.
//! - [`state`]: the `--state-dir` file (versioned, checksummed, atomic).
//! - [`labels`]: the canonical label set shared by every stage after ingest.
//! - [`metrics`], [`telemetry`]: Prophet's own `/metrics` and logging.
//! - [`proto`]: prost types generated from `proto/`.
//! - [`synth`]: synthetic Kubernetes-shaped requests for benchmarks and load runs.

use std::net::SocketAddr;
use std::path::PathBuf;

pub mod actuate;
pub mod auth;
pub mod cluster;
pub mod eval;
pub mod follow;
pub mod ha;
pub mod http;
pub mod ingest;
pub mod labels;
pub mod metrics;
pub mod proto;
pub mod reconcile;
pub mod review;
pub mod route;
pub mod rules;
pub mod serve;
pub mod standalone;
pub mod state;
pub mod surfaces;
pub mod synth;
pub mod telemetry;
pub mod tls;
pub mod window;

/// What can stop Prophet as a whole. Per-request and per-rule problems never do: they are
/// answered or reported where they arise.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read rules from {dir}: {source}")]
    Rules {
        dir: PathBuf,
        source: rules::load::LoadError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the evaluator thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot write CRDs: {0}")]
    Crds(std::io::Error),
    #[error("the evaluator has stopped")]
    EvaluatorStopped,
    #[error(
        "cannot reach the Kubernetes API (in-cluster config, KUBECONFIG or ~/.kube/config): {0}"
    )]
    Kube(kube::Error),
    #[error("ingest credentials: {0}")]
    Auth(auth::AuthError),
    #[error("TLS: {0}")]
    Tls(tls::TlsError),
    #[error("{0}")]
    Surfaces(String),
    #[error(transparent)]
    UnauthenticatedIngest(auth::UnauthenticatedIngest),
    /// An action setting that cannot be used (an allow-list entry, an Alertmanager URL).
    #[error("actions: {0}")]
    Actions(String),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Rules { .. } => "rules",
            Self::Bind { .. } => "bind",
            Self::Serve(_) => "serve",
            Self::Actions(_) => "actions",
            Self::Spawn(_) => "spawn",
            Self::Crds(_) => "crds",
            Self::EvaluatorStopped => "evaluator",
            Self::Kube(_) => "kube",
            Self::Auth(_) => "auth",
            Self::Tls(_) => "tls",
            Self::Surfaces(_) => "surfaces",
            Self::UnauthenticatedIngest(_) => "unauthenticated_ingest",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
