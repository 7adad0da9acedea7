//! (placeholder until the workload actions land)
use super::{ActError, Acted, Actor};
use crate::eval::PodRef;
use crate::rules::crd::TargetResourceType;
use kube::Client;

pub async fn evict(
    _client: &Client,
    _actor: &Actor,
    pods: &[PodRef],
    _detection: &str,
) -> Vec<Result<Acted, ActError>> {
    pods.iter()
        .map(|_| Err(ActError::refused("NotBuilt", "not built")))
        .collect()
}

pub async fn rollout_restart(
    _client: &Client,
    _actor: &Actor,
    _pod: &PodRef,
    _kind: TargetResourceType,
    _detection: &str,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn rollout_restart_named(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _kind: TargetResourceType,
    _name: &str,
    _detection: &str,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}
