//! (placeholder until k8sgpt lands)
use super::ActError;
use kube::Client;

pub async fn analysis(
    _client: &Client,
    _namespace: &str,
    _targets: &[(String, String)],
    _max_chars: usize,
) -> Result<Option<String>, ActError> {
    Ok(None)
}
