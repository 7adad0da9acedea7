//! (placeholder until nodepool lands)
use super::{ActError, Acted, Actor};
use crate::eval::ForecastView;
use crate::rules::crd::PredictiveScaleSpec;
use kube::Client;

pub async fn provision(
    _client: &Client,
    _actor: &Actor,
    _spec: &PredictiveScaleSpec,
    _forecast: &ForecastView,
    _detection: &str,
    _now_ms: i64,
) -> Result<Vec<Acted>, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn consolidate(
    _client: &Client,
    _actor: &Actor,
    _spec: &PredictiveScaleSpec,
    _detection: &str,
) -> Result<Vec<Acted>, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn adjust(
    _client: &Client,
    _actor: &Actor,
    _spec: &PredictiveScaleSpec,
    _rising: bool,
    _detection: &str,
) -> Result<Vec<Acted>, ActError> {
    Err(ActError::refused("NotBuilt", "not built"))
}

pub async fn release(
    _client: &Client,
    _actor: &Actor,
    _spec: &PredictiveScaleSpec,
) -> Result<Vec<Acted>, ActError> {
    Ok(Vec::new())
}
