//! Leader election on a `coordination.k8s.io/v1` Lease. Every replica ingests and
//! evaluates, so a standby's windows are warm; only the leader writes status, records
//! Events and acts. A replica leads while it holds the Lease and has renewed it within
//! the lease duration by its own monotonic clock: [`Leadership::is_leader`] is checked
//! just before every write, so a leader cut off from the API server stops at its
//! deadline, before a standby may take over. Writes to the Lease carry its
//! `resourceVersion`, so two replicas never both win one round. A standby judges another
//! holder's lease expired by its own monotonic clock, as client-go does: only once the
//! Lease it saw has stayed unchanged for the lease duration since it first saw it, never
//! by comparing the holder's `renewTime` with its own wall clock (clocks of two nodes
//! differ; the holder fences itself by its monotonic clock too).
//!
//! RBAC: get, create and update on `leases` in the Lease's namespace.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews, and a standby retries.
    pub retry: Duration,
}

/// This replica's leadership, shared with everything that writes.
#[derive(Clone)]
pub struct Leadership {
    /// Until when this replica may act (its last successful renewal + the lease
    /// duration, less a margin for clock rate differences); `None` when not leading.
    until: Arc<Mutex<Option<Instant>>>,
    changes: watch::Receiver<bool>,
}

impl Leadership {
    /// Always the leader (a single replica started with `--leader-elect=false`).
    pub fn always() -> Self {
        let (_, changes) = watch::channel(true);
        Self {
            until: Arc::new(Mutex::new(None)),
            changes,
        }
    }

    /// Never the leader (tests of a standby).
    pub fn never() -> Self {
        let (_, changes) = watch::channel(false);
        Self {
            until: Arc::new(Mutex::new(None)),
            changes,
        }
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        if self.changes.has_changed().is_err() {
            // The election loop is gone: `always()`, or the process is stopping.
            return *self.changes.borrow();
        }
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Changes of leadership (true: became leader).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.changes.clone()
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Starts the election loop; it runs until `stop` resolves, then releases the Lease if
/// held, so a standby takes over without waiting for it to expire.
pub fn spawn(
    api: Api<Lease>,
    config: LeaseConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, changes) = watch::channel(false);
    let until = Arc::new(Mutex::new(None));
    let leadership = Leadership {
        until: until.clone(),
        changes,
    };
    let task = tokio::spawn(async move {
        tokio::pin!(stop);
        let mut leading = false;
        let mut observed: Option<Observed> = None;
        loop {
            let attempt_started = Instant::now();
            let round = tokio::time::timeout(
                config.retry.max(Duration::from_secs(1)),
                try_acquire_or_renew(&api, &config, &mut observed),
            );
            let round = tokio::select! {
                round = round => round.unwrap_or(Err(Unreachable::TimedOut)),
                () = &mut stop => break,
            };
            match round {
                Ok(held) => {
                    let deadline = held.then(|| attempt_started + config.duration.mul_f32(0.9));
                    *until.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
                    if held != leading {
                        leading = held;
                        tracing::info!(
                            identity = %config.identity,
                            lease = %config.name,
                            "{}",
                            if held { "became the leader" } else { "lost the lease to another replica" }
                        );
                        let _ = tx.send(held);
                    }
                }
                Err(error) => {
                    // The deadline stays: a leader cut off keeps leading only until it.
                    tracing::warn!(%error, "cannot reach the leader lease");
                }
            }
            let next = if leading {
                config.retry
            } else {
                config.retry + config.retry / 2
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = &mut stop => break,
            }
            if leading && !leadership_valid(&until) {
                leading = false;
                tracing::warn!("leader lease not renewed in time: no longer acting");
                let _ = tx.send(false);
            }
        }
        *until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = tx.send(false);
        if leading {
            // Bounded: an API server that does not answer must not hold up shutdown.
            let _ = tokio::time::timeout(
                config.retry.max(Duration::from_secs(1)),
                release(&api, &config),
            )
            .await;
        }
    });
    (leadership, task)
}

fn leadership_valid(until: &Mutex<Option<Instant>>) -> bool {
    until
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|until| Instant::now() < until)
}

/// Another holder's Lease as this replica last saw it, and since when (its own clock).
struct Observed {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: Option<String>,
    since: Instant,
}

/// Why a round did not reach the Lease.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("the API server did not answer in time")]
    TimedOut,
}

/// One round: create the Lease, renew it, or take it over once it has stayed unchanged
/// for its duration. Returns whether this replica holds it afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, Unreachable> {
    let duration_seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let resource_version = lease.metadata.resource_version.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    if !ours && !free {
        // Expired only when what we see has not changed for the holder's lease duration,
        // by our own clock.
        let renew_time = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let same = observed.as_ref().is_some_and(|o| {
            o.holder == spec.holder_identity
                && o.renew_time == renew_time
                && o.resource_version == resource_version
        });
        if !same {
            *observed = Some(Observed {
                holder: spec.holder_identity.clone(),
                renew_time,
                resource_version,
                since: Instant::now(),
            });
        }
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_seconds)).unwrap_or(0),
        );
        let expired = observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= held_for);
        if !expired {
            return Ok(false);
        }
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(micro_now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(micro_now());
    // `replace` sends the resourceVersion read above: a concurrent writer makes it 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            *observed = None;
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Gives the Lease up at shutdown (best effort: it expires anyway).
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!("leader lease released"),
        Err(error) => tracing::warn!(%error, "cannot release the leader lease"),
    }
}
