//! (placeholder until chaos lands)
use super::{ActError, Acted, Actor};
use crate::rules::crd::ChaosRef;
use kube::Client;

pub async fn set_paused(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _chaos: &ChaosRef,
    _paused: bool,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn release(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _chaos: &ChaosRef,
) -> Result<Option<Acted>, ActError> {
    Ok(None)
}
