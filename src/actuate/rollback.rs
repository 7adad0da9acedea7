//! (placeholder until rollback lands)
use super::{ActError, Acted, Actor};
use kube::Client;

pub async fn rollback(
    _client: &Client,
    _actor: &Actor,
    _namespace: &str,
    _deployment: &str,
    _detection: &str,
) -> Result<Acted, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn rollback_target_of_hpa(
    _client: &Client,
    _namespace: &str,
    _hpa: &str,
) -> Result<(String, String), ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}
