//! The `prophet` binary: parses the command line and wires the library's stages.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prophet::auth::AuthConfig;
use prophet::cluster::{self, ClusterConfig};
use prophet::ingest::Limits;
use prophet::reconcile::leader::LeaseConfig;
use prophet::rules::compile::CompileOptions;
use prophet::rules::tenancy::Tenancy;
use prophet::serve::ServeLimits;
use prophet::standalone::{self, PipelineConfig, RunConfig};
use prophet::surfaces::SurfaceConfig;

/// Prophet evaluates SRE rules on the Prometheus remote-write stream.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Standalone mode (the default): rules from a folder, decisions recorded, nothing
    /// acted on. With `--cluster`: rules from the cluster's custom resources, status and
    /// Events written by one leader.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions, or write them into a folder.
    Crds {
        /// Write one file per kind into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// Folder of rule YAML files (every document of every *.yaml / *.yml file).
    #[arg(long, default_value = "rules", env = "PROPHET_RULES")]
    rules: PathBuf,
    /// Address for remote-write and the JSON endpoints, and for /metrics, /healthz and
    /// /readyz unless --metrics-listen gives them their own.
    #[arg(long, default_value = "0.0.0.0:8080", env = "PROPHET_LISTEN")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics alone, apart from the ingest listener
    /// (the probes never ask a credential; /metrics as --metrics-auth says). Default:
    /// served on --listen.
    #[arg(long, env = "PROPHET_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Bearer tokens remote-write (and the JSON API) accept, one per line, so an old and
    /// a new one overlap during a rotation. Re-read when it changes.
    #[arg(long, env = "PROPHET_WRITE_TOKEN_FILE")]
    write_token_file: Option<PathBuf>,
    /// `user:password` pairs remote-write (and the JSON API) accept, one per line.
    /// Re-read when it changes.
    #[arg(long, env = "PROPHET_WRITE_BASIC_AUTH_FILE")]
    write_basic_auth_file: Option<PathBuf>,
    /// Client certificates signed by this CA (PEM) are accepted as a credential; needs
    /// --tls-cert-file. Re-read when it changes.
    #[arg(long, env = "PROPHET_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// Serve the ingest listener over TLS with this certificate chain (PEM); with
    /// --tls-key-file. Re-read when it changes.
    #[arg(long, env = "PROPHET_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, env = "PROPHET_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// `off` removes /api/v1/rules and /api/v1/decisions (which name series labels and
    /// every decision); `on` serves them behind the ingest credentials.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    api: Switch,
    /// Who may read /metrics: `none` (anyone) or `kubernetes` (a bearer token that a
    /// TokenReview accepts and whose user may get the non-resource URL /metrics, checked
    /// by SubjectAccessReview; cluster mode).
    #[arg(long, value_enum, default_value_t = MetricsAuth::None, requires_if("kubernetes", "cluster"))]
    metrics_auth: MetricsAuth,
    /// Cluster mode: accept that an unauthenticated remote-write drives real actions.
    /// Without it Prophet refuses to act on an open ingest.
    #[arg(long)]
    allow_unauthenticated_write: bool,
    /// Largest decoded remote-write body, in bytes; larger ones are refused (413)
    /// before anything of that size is allocated.
    #[arg(long, default_value_t = 32 << 20)]
    max_decoded_bytes: usize,
    /// Most compressed request bytes received at once across all requests (each
    /// reserves its Content-Length before its body is read); past it, 503 with
    /// Retry-After. Never less than one largest body.
    #[arg(long, default_value_t = 256 << 20)]
    max_bytes_in_flight: usize,
    /// Most series a rule keeps; samples of further series are dropped and counted.
    #[arg(long, default_value_t = 10_000)]
    series_limit: usize,
    /// Let rules act on objects outside their own namespace (an AnomalyAction's
    /// `target.namespace`, an SLO's `hpaRef.namespace`). Off: such a rule is refused.
    #[arg(long)]
    allow_cross_namespace: bool,
    /// Batches queued for the evaluator before remote-write answers 503.
    #[arg(long, default_value_t = 256)]
    eval_queue: usize,
    /// Decisions kept for GET /api/v1/decisions.
    #[arg(long, default_value_t = 10_000)]
    decisions_kept: usize,
    /// HA pairs: a label naming the HA cluster (repeatable; together their values name
    /// it). Per cluster the samples of one replica are accepted, the others dropped.
    #[arg(long = "ha-cluster-label", value_name = "NAME", default_values = ["cluster", "prometheus"])]
    ha_cluster_labels: Vec<String>,
    /// HA pairs: a label naming the replica (repeatable), dropped from kept series.
    /// Series without one are never deduplicated; `--ha-replica-label=` turns it off.
    #[arg(long = "ha-replica-label", value_name = "NAME", default_values = ["__replica__", "prometheus_replica"])]
    ha_replica_labels: Vec<String>,
    /// HA pairs: how long the elected replica may send nothing (on Prophet's clock)
    /// before the next replica heard from is elected.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    ha_failover_timeout: std::time::Duration,
    /// Save windows and detector state (SLO budgets, forecast history, tripped series)
    /// here, and restore them at start.
    #[arg(long, env = "PROPHET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How long a step of an expression, forecast or SLO waits, on the receiver's clock,
    /// for series that have not reached it yet (remote-write shards send apart) after
    /// the first sample past it arrived; 0s evaluates at once. Per-sample thresholds
    /// and bands never wait.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    settle_delay: std::time::Duration,
    /// How often the state is saved with --state-dir (also at shutdown), e.g. 30s, 5m.
    #[arg(long, default_value = "1m", value_parser = parse_interval)]
    state_interval: std::time::Duration,
    /// Which Prometheus's PromQL rules mean: 3 (left-open ranges and lookback, `.`
    /// matches a newline, `double_exponential_smoothing`) or 2 (as Prometheus 2.x).
    #[arg(long, default_value = "3", env = "PROPHET_PROMQL_SEMANTICS")]
    promql_semantics: prophet::eval::promql::Semantics,
    /// Cluster mode: rules from the AnomalyAction, PredictiveScale and SLOViolation
    /// resources of the cluster (in-cluster config, else KUBECONFIG or ~/.kube/config),
    /// their status and Events written by the leader. `--rules` is then not read.
    #[arg(long)]
    cluster: bool,
    /// Cluster mode: watch only this namespace (repeatable; a Role per namespace then
    /// suffices). Default: all namespaces.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Cluster mode: a namespace whose rules read every series (repeatable), for
    /// cluster-wide rules such as node metrics.
    #[arg(long = "privileged-namespace", value_name = "NAMESPACE")]
    privileged_namespaces: Vec<String>,
    /// Cluster mode: confine each rule to series labelled with its own namespace (unless
    /// its namespace is privileged).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    isolate_namespaces: bool,
    /// Cluster mode: hold a Lease so that one replica writes status and acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Cluster mode: the leader Lease's name.
    #[arg(long, default_value = "prophet-leader")]
    lease_name: String,
    /// Cluster mode: the leader Lease's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long the leader Lease holds without renewal: whole seconds, at least 2s
    /// (the Lease says it in seconds), e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_lease_duration)]
    lease_duration: std::time::Duration,
    /// Cluster mode: a decision whose deciding sample is older than this against the
    /// wall clock (a sender catching up, a lagging standby, restored state) is recorded
    /// as `stale` and never acted on; cooldowns must pass on the wall clock too.
    #[arg(long, default_value = "2m", value_parser = parse_interval)]
    max_action_lag: std::time::Duration,
    /// This replica's name in the Lease and in Events. Default: POD_NAME, else the host
    /// name.
    #[arg(long)]
    identity: Option<String>,
    /// Cluster mode: decide, record in status and publish Events, but change nothing and
    /// notify no one (every rule, as a rule's own `dryRun` does for itself).
    #[arg(long)]
    dry_run: bool,
    /// Cluster mode: the most actions that change something, across all rules, per
    /// minute; the rest wait for the budget.
    #[arg(long, default_value_t = 30)]
    max_actions_per_minute: u32,
    /// Cluster mode: the namespace where the K8sGPT operator writes its Result objects
    /// (for `k8sgpt.enabled` rules). Default: read them in every namespace.
    #[arg(long)]
    k8sgpt_namespace: Option<String>,
    /// Cluster mode: an Alertmanager to send alerts to (repeatable: every replica of an
    /// HA Alertmanager, as Prometheus does), e.g. http://alertmanager.monitoring:9093.
    #[arg(long = "alertmanager-url", value_name = "URL")]
    alertmanager_urls: Vec<String>,
    /// Cluster mode: how often firing alerts are re-sent to Alertmanager, each with an
    /// `endsAt` four intervals ahead (so they resolve by themselves if Prophet stops).
    #[arg(long, default_value = "1m", value_parser = parse_interval)]
    alert_resend_interval: std::time::Duration,
    /// Cluster mode: where PagerDuty events (webhookFormat: pagerduty) are sent.
    #[arg(long, default_value = "https://events.pagerduty.com/v2/enqueue")]
    pagerduty_events_url: String,
    /// A host that webhooks, K8sGPT and Grafana may be called on (repeatable): an exact
    /// name, `*.example.com`, or an IP or CIDR. Every other host is refused; the
    /// Alertmanagers given are allowed.
    #[arg(long = "allow-url-host", value_name = "HOST")]
    allow_url_hosts: Vec<String>,
    /// Cluster mode: the ConfigMap that pauses every action when its `paused` key is
    /// `"true"`, or those of the namespaces listed in `pausedNamespaces` (comma-separated),
    /// live; in the Lease's namespace.
    #[arg(long, default_value = "prophet-control")]
    control_configmap: String,
    /// Cluster mode: how long an ActionApproval stays in force after it is created (it
    /// acts only while its detection is still tripped).
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    approval_ttl: std::time::Duration,
    /// How long a client has to send a whole request head (e.g. 10s); a connection
    /// still short of one is closed. Also ends a keep-alive connection that sends no
    /// next request within it.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    header_read_timeout: std::time::Duration,
    /// Closes a connection with no request in flight that stays silent this long.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    idle_timeout: std::time::Duration,
    /// Connections served at once; at the cap the longest-idle one is closed to make
    /// room. Keep it well below the descriptor limit (ulimit -n).
    #[arg(long, default_value_t = 512, value_parser = parse_max_connections)]
    max_connections: usize,
    /// On SIGTERM, how long open connections get to finish before they are dropped and
    /// the final state is written.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    shutdown_grace: std::time::Duration,
}

/// On or off.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Switch {
    On,
    Off,
}

/// Who may read /metrics.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum MetricsAuth {
    /// Anyone.
    None,
    /// A Kubernetes bearer token allowed to get /metrics (TokenReview and
    /// SubjectAccessReview).
    Kubernetes,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    prophet::rules::duration::parse_duration(text).map_err(|e| e.to_string())
}

/// At least one connection, or nothing could ever be served.
fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// A connection timeout: zero would close every connection before its first request.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let timeout = parse_interval(text)?;
    if timeout.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(timeout)
}

fn parse_lease_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = parse_interval(text)?;
    if duration.subsec_nanos() != 0 || duration.as_secs() < 2 {
        return Err(format!(
            "{text:?}: a lease lasts whole seconds, at least 2s (the Lease holds it in seconds)"
        ));
    }
    Ok(duration)
}

impl Default for RunArgs {
    fn default() -> Self {
        // Parsing no arguments yields the documented defaults.
        RunArgs::parse_from(["run"])
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    prophet::telemetry::init();
    let result = match cli.command.unwrap_or_else(|| Command::Run(Box::default())) {
        Command::Crds { out } => crds(out),
        Command::Run(args) => run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(kind = error.metric_label(), "{error}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out: Option<PathBuf>) -> prophet::Result<()> {
    match out {
        Some(dir) => prophet::rules::crd::write_crds(&dir).map_err(prophet::Error::Crds),
        None => {
            print!("{}", prophet::rules::crd::render_all_crds_yaml());
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> prophet::Result<()> {
    let pipeline = PipelineConfig {
        limits: Limits {
            max_decoded_bytes: args.max_decoded_bytes,
            max_bytes_in_flight: args.max_bytes_in_flight,
            ..Limits::default()
        },
        series_limit: args.series_limit,
        compile: CompileOptions {
            allow_cross_namespace: args.allow_cross_namespace,
            semantics: args.promql_semantics,
            ..CompileOptions::default()
        },
        eval_queue: args.eval_queue,
        decisions_kept: args.decisions_kept,
        state_dir: args.state_dir,
        state_interval: args.state_interval,
        settle_delay: args.settle_delay,
        tenancy: Tenancy {
            isolate: args.cluster && args.isolate_namespaces,
            privileged: args.privileged_namespaces.clone(),
        },
        ha: prophet::ha::HaConfig {
            cluster_labels: args.ha_cluster_labels,
            replica_labels: args.ha_replica_labels,
            failover_timeout: args.ha_failover_timeout,
        },
    };
    let serve = ServeLimits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        shutdown_grace: args.shutdown_grace,
    };
    let surfaces = SurfaceConfig {
        auth: AuthConfig {
            token_file: args.write_token_file,
            basic_auth_file: args.write_basic_auth_file,
            client_ca_file: args.client_ca_file,
        },
        tls_cert_file: args.tls_cert_file,
        tls_key_file: args.tls_key_file,
        metrics_listen: args.metrics_listen,
        api: args.api == Switch::On,
        allow_unauthenticated_write: args.allow_unauthenticated_write,
        metrics_auth_kubernetes: args.metrics_auth == MetricsAuth::Kubernetes,
        reload_every: std::time::Duration::from_secs(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(prophet::Error::Serve)?;
    if args.cluster {
        let identity = args.identity.unwrap_or_else(cluster::default_identity);
        let control_namespace = args.lease_namespace.clone();
        let config = ClusterConfig {
            listen: args.listen,
            pipeline,
            serve,
            namespaces: args.namespaces,
            lease: args.leader_elect.then(|| LeaseConfig {
                name: args.lease_name,
                namespace: args.lease_namespace,
                identity,
                duration: args.lease_duration,
                retry: args.lease_duration / 5,
            }),
            debounce: std::time::Duration::from_millis(200),
            figures_every: std::time::Duration::from_secs(10),
            max_action_lag: args.max_action_lag,
            surfaces,
            actions: prophet::actuate::dispatch::ActionConfig {
                dry_run: args.dry_run,
                allow_cross_namespace: args.allow_cross_namespace,
                max_actions_per_minute: args.max_actions_per_minute,
                k8sgpt_namespace: args.k8sgpt_namespace,
            },
            notify: prophet::actuate::alert::NotifierConfig {
                alertmanagers: args.alertmanager_urls,
                resend_interval: args.alert_resend_interval,
                pagerduty_url: args.pagerduty_events_url,
                ..prophet::actuate::alert::NotifierConfig::default()
            },
            allow_url_hosts: args.allow_url_hosts,
            control: (control_namespace, args.control_configmap),
            approval_ttl: args.approval_ttl,
        };
        return runtime.block_on(cluster::run(config, shutdown_signal()));
    }
    let config = RunConfig {
        rules_dir: args.rules,
        rules_poll: std::time::Duration::from_secs(1),
        listen: args.listen,
        pipeline,
        serve,
        surfaces,
    };
    runtime.block_on(standalone::run(config, shutdown_signal()))
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: draining accepted samples");
}
