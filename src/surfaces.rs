//! The listeners Prophet serves and what guards them: the ingest listener (remote-write
//! and the JSON APIs, behind the credential gate, over TLS when configured) and, with
//! `--metrics-listen`, a listener of its own for the probes and `/metrics`, which need no
//! credential. Credential and certificate files are followed and re-read when they
//! change. Both modes (standalone and cluster) serve through [`Surfaces::serve`]; what a
//! request may carry stays the router's business (`http.rs`), connections the server
//! loop's (`serve.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{AuthConfig, Gate, IngestSafety};
use crate::http::{AppState, MetricsAccess};
use crate::review::MetricsReviewer;
use crate::serve::ServeLimits;
use crate::tls::{Tls, TlsFiles};
use crate::{Error, Result};

/// How the listeners are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurfaceConfig {
    /// The credentials ingest (and the JSON APIs) accept; none: open.
    pub auth: AuthConfig,
    /// The server certificate (PEM, chain first) and its key; `None`: plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// A listener of its own for `/healthz`, `/readyz` and `/metrics`; `None`: they are
    /// served on the ingest listener, still without credentials.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/api/v1/rules` and `/api/v1/decisions` (behind the gate).
    pub api: bool,
    /// Accept that an unauthenticated ingest drives real actions.
    pub allow_unauthenticated_write: bool,
    /// `/metrics` only for callers whose Kubernetes token may get it (cluster mode).
    pub metrics_auth_kubernetes: bool,
    /// How often the credential and certificate files are checked for changes.
    pub reload_every: Duration,
}

impl Default for SurfaceConfig {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_listen: None,
            api: true,
            allow_unauthenticated_write: false,
            metrics_auth_kubernetes: false,
            reload_every: Duration::from_secs(1),
        }
    }
}

/// The loaded surfaces: the gate and TLS in force, ready to serve.
pub struct Surfaces {
    config: SurfaceConfig,
    gate: Arc<Gate>,
    tls: Option<Arc<Tls>>,
}

impl Surfaces {
    /// Reads every credential and certificate file; a missing or unusable one stops
    /// Prophet at start rather than serving open what was meant to be closed.
    pub fn load(config: SurfaceConfig) -> Result<Self> {
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.auth.client_ca_file.clone(),
                })
                .map_err(Error::Tls)?,
            )),
            (None, None) => None,
            _ => {
                return Err(Error::Surfaces(
                    "--tls-cert-file and --tls-key-file go together".to_owned(),
                ));
            }
        };
        if tls.is_none() && config.auth.client_ca_file.is_some() {
            return Err(Error::Surfaces(
                "--client-ca-file needs TLS on the listener (--tls-cert-file, --tls-key-file)"
                    .to_owned(),
            ));
        }
        let gate = Arc::new(Gate::load(config.auth.clone()).map_err(Error::Auth)?);
        Ok(Self { config, gate, tls })
    }

    /// Whether every write must carry a credential.
    pub fn ingest_is_authenticated(&self) -> bool {
        !self.gate.is_open()
    }

    /// Checks, with [`crate::auth::ingest_may_drive_actions`], that what is ingested may
    /// drive the actions configured, and says loudly when ingest is open. Cluster mode
    /// calls it at start with `real_actions` false while every action is dry run.
    pub fn check_actions(&self, real_actions: bool) -> Result<()> {
        let safety = crate::auth::ingest_may_drive_actions(
            self.ingest_is_authenticated(),
            real_actions,
            self.config.allow_unauthenticated_write,
        )
        .map_err(Error::UnauthenticatedIngest)?;
        match safety {
            IngestSafety::Authenticated => {}
            IngestSafety::AllowedUnauthenticated => tracing::warn!(
                "UNAUTHENTICATED REMOTE WRITE (--allow-unauthenticated-write): anyone who can reach the ingest port can forge the samples every rule acts on"
            ),
            IngestSafety::UnauthenticatedDryRun => tracing::warn!(
                "UNAUTHENTICATED REMOTE WRITE: anyone who can reach the ingest port can forge the samples every rule believes. Actions are dry run now; once real actions are enabled Prophet refuses to start like this. Give --write-token-file, --write-basic-auth-file or --client-ca-file (or --allow-unauthenticated-write)"
            ),
        }
        Ok(())
    }

    /// What guards ingest, for the start-up log line.
    pub fn describe(&self) -> String {
        let mut guards = Vec::new();
        if self.config.auth.token_file.is_some() {
            guards.push("bearer token");
        }
        if self.config.auth.basic_auth_file.is_some() {
            guards.push("basic auth");
        }
        if self.config.auth.client_ca_file.is_some() {
            guards.push("client certificate");
        }
        let credentials = if guards.is_empty() {
            "no credential".to_owned()
        } else {
            guards.join(" or ")
        };
        let transport = if self.tls.is_some() {
            "TLS"
        } else {
            "plain HTTP"
        };
        format!("{transport}, {credentials}")
    }

    /// Serves the ingest surface on `listener` (and the probes on `--metrics-listen`)
    /// until `shutdown` resolves, following the credential and certificate files
    /// meanwhile. `kube` reviews `/metrics` callers with `--metrics-auth=kubernetes`.
    /// Returns once both servers have stopped.
    pub async fn serve(
        self,
        listener: TcpListener,
        state: Arc<AppState>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        limits: ServeLimits,
        kube: Option<kube::Client>,
    ) -> Result<()> {
        let access = match (self.config.metrics_auth_kubernetes, kube) {
            (false, _) => MetricsAccess::Open,
            (true, Some(client)) => MetricsAccess::Reviewed(Arc::new(MetricsReviewer::new(client))),
            (true, None) => {
                return Err(Error::Surfaces(
                    "--metrics-auth=kubernetes needs --cluster (a Kubernetes API to review tokens with)"
                        .to_owned(),
                ));
            }
        };
        let probes = match self.config.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?;
                let local = listener.local_addr().map_err(Error::Serve)?;
                tracing::info!(addr = %local, "probes and metrics on {local}");
                Some(listener)
            }
            None => None,
        };
        let (stop_tx, stop) = watch::channel(false);
        let signal = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let followers = self.follow(&stop);
        let ingest = crate::http::ingest_router(
            state.clone(),
            self.gate.clone(),
            self.config.api,
            probes.is_none().then(|| access.clone()),
        );
        let tls = self.tls.map(|tls| crate::serve::TlsServing {
            tls,
            handshake_failures: state.metrics.tls_handshake_failures.clone(),
        });
        let served_ingest =
            crate::serve::serve_tls(listener, ingest, stopped(stop.clone()), limits, tls);
        let served_probes = async {
            match probes {
                Some(listener) => {
                    let app = crate::http::probes_router(state, access);
                    crate::serve::serve(listener, app, stopped(stop.clone()), limits).await
                }
                None => Ok(()),
            }
        };
        let (ingest, probes) = tokio::join!(served_ingest, served_probes);
        signal.abort();
        for follower in followers {
            follower.abort();
        }
        ingest.map_err(Error::Serve)?;
        probes.map_err(Error::Serve)
    }

    /// Follows the credential and certificate files, re-reading them when they change.
    fn follow(&self, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let gate = self.gate.clone();
        tasks.push(tokio::spawn(crate::follow::follow(
            "credentials",
            gate.files(),
            self.config.reload_every,
            stop.clone(),
            move || match gate.reload() {
                Ok(true) => tracing::info!("ingest credentials re-read: the new ones are in force"),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    %error,
                    "cannot re-read the ingest credentials; the ones in force stay"
                ),
            },
        )));
        if let Some(tls) = self.tls.clone() {
            tasks.push(tokio::spawn(crate::follow::follow(
                "certificates",
                tls.files(),
                self.config.reload_every,
                stop.clone(),
                move || match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificates re-read: new connections use them"),
                    Err(error) => tracing::warn!(
                        %error,
                        "cannot re-read the TLS certificates; the ones in force stay"
                    ),
                },
            )));
        }
        tasks
    }
}

/// Resolves once `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
