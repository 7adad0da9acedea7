//! (placeholder until the scale actions land)
use super::{ActError, Acted, Actor};
use crate::eval::PodRef;
use kube::Client;

pub enum MinReplicas {
    Step(i32),
    Exactly(i32),
}

#[allow(clippy::too_many_arguments)]
pub async fn scale(
    _client: &Client,
    _actor: &Actor,
    _pod: &PodRef,
    _step: i32,
    _max: i32,
    _replicas: Option<i32>,
    _detection: &str,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn claim_min_replicas(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _hpa: &str,
    _want: MinReplicas,
    _max: Option<i32>,
    _detection: &str,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn release_claim(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _hpa: &str,
) -> Result<Option<Acted>, ActError> {
    Ok(None)
}
