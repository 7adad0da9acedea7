//! (placeholder until alerts land)
use super::{ActError, Acted, Actor};
use crate::labels::Labels;
use crate::rules::crd::{SecretKeyRef, WebhookFormat};
use crate::rules::load::RuleKey;

pub struct Alert;
impl Alert {
    pub fn new(
        _actor: &Actor,
        _series: &Labels,
        _severity: &str,
        _reason: &str,
        _value: Option<String>,
        _link: &str,
        _starts_at_ms: i64,
    ) -> Self {
        Alert
    }
}
pub struct WebhookTarget;
pub struct Notifier;
impl Notifier {
    pub async fn sync(
        &self,
        _rule: &RuleKey,
        _webhook: Option<&WebhookTarget>,
        _firing: Vec<Alert>,
        _now_ms: i64,
    ) -> Vec<Result<Acted, ActError>> {
        Vec::new()
    }
    pub async fn resolve_all(&self, _rule: &RuleKey) -> Vec<Result<Acted, ActError>> {
        Vec::new()
    }
}
pub async fn webhook_target(
    _client: &kube::Client,
    _namespace: &str,
    _url: Option<&str>,
    _secret: Option<&SecretKeyRef>,
    _format: WebhookFormat,
) -> Result<Option<WebhookTarget>, ActError> {
    Ok(None)
}
