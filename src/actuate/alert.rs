//! Notifications, level-based: what is firing for each rule goes to every configured
//! Alertmanager (`POST /api/v2/alerts`, as Prometheus sends it) and to the rule's webhook
//! (Alertmanager's webhook JSON, a Slack message or a PagerDuty Events v2 event). The
//! reconcile loop hands [`Notifier::sync`] the full set of a rule's firing alerts on
//! every reconcile; the notifier compares it with what it last delivered and sends only
//! the difference: new alerts trigger, alerts gone resolve, unchanged ones send nothing.
//! A failed delivery is not remembered as delivered, so the next `sync` tries again.
//! [`Notifier::run`] re-sends firing alerts to Alertmanager before their `endsAt`, so if
//! Prophet dies they resolve by themselves. It owns no Kubernetes object but reads the
//! rule's webhook Secret, and it must never log or report a webhook URL or routing key:
//! hosts only. All HTTP goes through [`Outbound`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::outbound::{Outbound, host_of_str, with_retries};
use super::{ActError, Acted, Actor, TargetRef, format_time_ms};
use crate::labels::Labels;
use crate::rules::crd::{SecretKeyRef, WebhookFormat};
use crate::rules::load::RuleKey;

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Alertmanager is told an alert ends this many resend intervals from now, as
/// Prometheus does: missing a few re-sends does not resolve it, but it resolves by
/// itself if Prophet stops.
const ENDS_AT_INTERVALS: u32 = 4;

/// PagerDuty refuses a longer summary.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;

/// Alerts listed one by one in a Slack message; the rest are counted.
const SLACK_LISTED: usize = 10;

/// One alert: one (rule, series).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Alertmanager's identity of the alert: `alertname`, `prophet_rule`, `namespace`,
    /// the series labels, `severity`.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `rule` (the link), `value`.
    pub annotations: BTreeMap<String, String>,
    /// When the series tripped, ms since the epoch.
    pub starts_at_ms: i64,
    /// The link to the rule.
    pub generator_url: String,
    /// Stable across processes and leaders: PagerDuty's `dedup_key`.
    pub dedup_key: String,
}

/// Labels Prophet sets itself; a series label of the same name is kept as
/// `exported_<name>`, as Prometheus does with clashing target labels.
const OWN_LABELS: [&str; 5] = [
    "alertname",
    "prophet_rule",
    "namespace",
    "severity",
    "metric",
];

impl Alert {
    /// The alert of `rule` for one tripped series. `severity` is the rule's (default
    /// `warning`, an SLO's `critical`), `reason` the decision's reason, `value` the
    /// deciding value, `starts_at_ms` when the series tripped, `rule_link` a URL or
    /// reference to the rule (Prophet's `/api/v1/rules` page, a console link).
    pub fn new(
        rule: &Actor,
        series: &Labels,
        severity: &str,
        reason: &str,
        value: Option<&str>,
        starts_at_ms: i64,
        rule_link: &str,
    ) -> Self {
        let mut labels = BTreeMap::new();
        for (name, value) in series.iter() {
            if value.is_empty() {
                continue;
            }
            if name == "__name__" {
                labels.insert("metric".to_owned(), value.to_owned());
                continue;
            }
            if !valid_label_name(name) {
                continue;
            }
            let name = if OWN_LABELS.contains(&name) {
                format!("exported_{name}")
            } else {
                name.to_owned()
            };
            labels.insert(name, value.to_owned());
        }
        labels.insert("alertname".to_owned(), rule.name.clone());
        labels.insert(
            "prophet_rule".to_owned(),
            format!("{}/{}/{}", rule.kind.as_str(), rule.namespace, rule.name),
        );
        labels.insert("namespace".to_owned(), rule.namespace.clone());
        labels.insert("severity".to_owned(), severity.to_owned());

        let mut annotations = BTreeMap::new();
        annotations.insert(
            "summary".to_owned(),
            format!(
                "{} {}/{}: {reason}",
                rule.kind.as_str(),
                rule.namespace,
                rule.name
            ),
        );
        let description = match value {
            Some(v) => format!("{reason} (value {v}) on {series}"),
            None => format!("{reason} on {series}"),
        };
        annotations.insert("description".to_owned(), description);
        if let Some(v) = value {
            annotations.insert("value".to_owned(), v.to_owned());
        }
        if !rule_link.is_empty() {
            annotations.insert("rule".to_owned(), rule_link.to_owned());
        }
        Self {
            labels,
            annotations,
            starts_at_ms,
            generator_url: rule_link.to_owned(),
            dedup_key: dedup_key(&rule.uid, series),
        }
    }

    /// A hash of the labels, as Alertmanager identifies alerts: 16 hex digits.
    pub fn fingerprint(&self) -> String {
        let mut text = Vec::new();
        for (name, value) in &self.labels {
            text.extend_from_slice(name.as_bytes());
            text.push(0xff);
            text.extend_from_slice(value.as_bytes());
            text.push(0xff);
        }
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&text))
    }

    fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn annotation(&self, name: &str) -> &str {
        self.annotations
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Alertmanager's (and Prometheus's classic) label names: `[a-zA-Z_][a-zA-Z0-9_]*`,
/// without the reserved `__` prefix.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && !name.starts_with("__") && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The id of one (rule, series), the same in every process and on every leader: xxh3
/// (stable by specification, unlike std's `RandomState`) of the rule's uid and the
/// series' labels in name order, written with separators that cannot occur in either.
pub fn dedup_key(rule_uid: &str, series: &Labels) -> String {
    let mut text = Vec::with_capacity(64);
    text.extend_from_slice(rule_uid.as_bytes());
    text.push(0xff);
    for (name, value) in series.iter() {
        text.extend_from_slice(name.as_bytes());
        text.push(0xfe);
        text.extend_from_slice(value.as_bytes());
        text.push(0xff);
    }
    format!("prophet-{:032x}", xxhash_rust::xxh3::xxh3_128(&text))
}

/// Where a rule's notifications go besides Alertmanager.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub format: WebhookFormat,
    /// The webhook URL, or for PagerDuty the routing key. A secret: never printed.
    pub url_or_key: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.format {
            WebhookFormat::Pagerduty => "(routing key)".to_owned(),
            _ => host_of_str(&self.url_or_key),
        };
        f.debug_struct("WebhookTarget")
            .field("format", &self.format)
            .field("host", &at)
            .finish()
    }
}

/// The value of a key of a Secret in `namespace`, trimmed, for the spec field `field`
/// that names it (`webhookSecretRef`, `grafanaTokenSecretRef`). A missing Secret or key
/// is `Failed("SecretNotFound")` (retried: the Secret may come later); the value never
/// appears in a message. RBAC: `get` on `secrets` in that namespace.
pub async fn secret_value(
    client: &kube::Client,
    namespace: &str,
    secret: &SecretKeyRef,
    field: &str,
) -> Result<String, ActError> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let found = api.get_opt(&secret.name).await.map_err(|e| {
        ActError::api(
            format!(
                "reading key {:?} of Secret {namespace}/{}",
                secret.key, secret.name
            ),
            e,
        )
    })?;
    let Some(found) = found else {
        return Err(ActError::failed(
            "SecretNotFound",
            format!(
                "the Secret {namespace}/{} does not exist ({field}, key {:?})",
                secret.name, secret.key
            ),
        ));
    };
    found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ActError::failed(
                "SecretNotFound",
                format!(
                    "Secret {namespace}/{} has no non-empty key {:?} ({field})",
                    secret.name, secret.key
                ),
            )
        })
}

/// The rule's webhook from its spec: the Secret's key when `secret` is set (it wins over
/// `url`), else `url`; `None` when neither is set. A missing Secret or key is
/// `Failed("SecretNotFound")` (retried: the Secret may come later); PagerDuty without a
/// Secret is refused, as its routing key must be one. RBAC: `get` on `secrets` in the
/// rule's namespace.
pub async fn webhook_target(
    client: &kube::Client,
    namespace: &str,
    url: Option<&str>,
    secret: Option<&SecretKeyRef>,
    format: WebhookFormat,
) -> Result<Option<WebhookTarget>, ActError> {
    if let Some(secret) = secret {
        let value = secret_value(client, namespace, secret, "webhookSecretRef").await?;
        return Ok(Some(WebhookTarget {
            format,
            url_or_key: value,
        }));
    }
    match url {
        None => Ok(None),
        Some(_) if format == WebhookFormat::Pagerduty => Err(ActError::refused(
            "WebhookNeedsSecret",
            "webhookFormat pagerduty takes its routing key from webhookSecretRef; webhookUrl is not used for it",
        )),
        Some(url) => Ok(Some(WebhookTarget {
            format,
            url_or_key: url.to_owned(),
        })),
    }
}

/// How the notifier is set up (CLI flags).
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Base URLs of Alertmanager (`--alertmanager-url`, repeatable): every replica of an
    /// HA Alertmanager gets every alert.
    pub alertmanagers: Vec<String>,
    /// How often firing alerts are re-sent to Alertmanager (`--alert-resend-interval`).
    pub resend_interval: Duration,
    /// PagerDuty's Events v2 URL (`--pagerduty-events-url`).
    pub pagerduty_url: String,
    /// Prophet's own URL, for Alertmanager-format webhooks' `externalURL`.
    pub external_url: String,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            alertmanagers: Vec::new(),
            resend_interval: Duration::from_secs(60),
            pagerduty_url: PAGERDUTY_EVENTS_URL.to_owned(),
            external_url: String::new(),
        }
    }
}

/// What has been delivered for one rule.
#[derive(Default)]
struct RuleState {
    /// The alerts firing at the last `sync`, by fingerprint: what the resend loop sends.
    firing: BTreeMap<String, Alert>,
    /// Delivered to Alertmanager as firing (to one replica at least).
    alertmanager: BTreeMap<String, Alert>,
    /// The webhook last used and what it was sent as firing.
    webhook: Option<(WebhookTarget, BTreeMap<String, Alert>)>,
}

/// Sends alerts. Shared as `Arc<Notifier>` by the reconcilers and the resend loop.
pub struct Notifier {
    outbound: Outbound,
    config: NotifierConfig,
    /// Per rule, behind an async mutex held for a whole delivery, so the resend loop and
    /// a reconcile never interleave their view of one rule. The outer std mutex is held
    /// only to find the rule's entry, never across an await.
    rules: Mutex<HashMap<RuleKey, Arc<tokio::sync::Mutex<RuleState>>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self
            .config
            .alertmanagers
            .iter()
            .map(|u| host_of_str(u))
            .collect();
        f.debug_struct("Notifier")
            .field("alertmanagers", &hosts)
            .field("resend_interval", &self.config.resend_interval)
            .finish_non_exhaustive()
    }
}

/// Which deliveries a rule's alerts need: by fingerprint, those firing but not
/// delivered, and those delivered but no longer firing.
fn diff<'a>(
    delivered: &'a BTreeMap<String, Alert>,
    firing: &'a BTreeMap<String, Alert>,
) -> (Vec<&'a Alert>, Vec<&'a Alert>) {
    let new = firing
        .iter()
        .filter(|(k, _)| !delivered.contains_key(*k))
        .map(|(_, a)| a)
        .collect();
    let gone = delivered
        .iter()
        .filter(|(k, _)| !firing.contains_key(*k))
        .map(|(_, a)| a)
        .collect();
    (new, gone)
}

impl Notifier {
    /// A notifier sending through `outbound`; each Alertmanager's host is added to the
    /// allow-list. Fails when an Alertmanager URL is not an http(s) URL with a host.
    pub fn new(mut outbound: Outbound, config: NotifierConfig) -> Result<Arc<Self>, String> {
        for url in &config.alertmanagers {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("--alertmanager-url: not a URL ({e})"))?;
            let host = parsed
                .host_str()
                .filter(|_| matches!(parsed.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    "--alertmanager-url must be an http(s) URL with a host".to_owned()
                })?;
            outbound.allow(host)?;
        }
        Ok(Arc::new(Self {
            outbound,
            config,
            rules: Mutex::new(HashMap::new()),
        }))
    }

    fn rule_state(&self, rule: &RuleKey) -> Arc<tokio::sync::Mutex<RuleState>> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.entry(rule.clone()).or_default().clone()
    }

    /// Makes what is notified for `rule` match `firing` (its alerts firing now, one per
    /// series): alerts not yet delivered are sent (Alertmanager with an `endsAt` in the
    /// future, the webhook's trigger), alerts delivered but absent are resolved, the rest
    /// send nothing. Call on every reconcile of the rule, leader only, not for dry-run
    /// rules. Returns one result per delivery attempted (none when nothing changed):
    /// `alert` for Alertmanager (one POST per replica; one success is success), `webhook`
    /// for the webhook. A failed delivery is tried again by the next `sync`. A changed
    /// webhook target gets the old target's alerts resolved first (best effort).
    pub async fn sync(
        &self,
        rule: &RuleKey,
        webhook: Option<&WebhookTarget>,
        firing: Vec<Alert>,
        now_ms: i64,
    ) -> Vec<Result<Acted, ActError>> {
        let entry = self.rule_state(rule);
        let mut state = entry.lock().await;
        state.firing = firing.into_iter().map(|a| (a.fingerprint(), a)).collect();
        let mut results = Vec::new();

        if !self.config.alertmanagers.is_empty() {
            let (new, gone) = diff(&state.alertmanager, &state.firing);
            if !new.is_empty() || !gone.is_empty() {
                let (new, gone): (Vec<Alert>, Vec<Alert>) = (
                    new.into_iter().cloned().collect(),
                    gone.into_iter().cloned().collect(),
                );
                let result = self.to_alertmanagers(&new, &gone, now_ms).await;
                if result.is_ok() {
                    for alert in &gone {
                        state.alertmanager.remove(&alert.fingerprint());
                    }
                    for alert in new {
                        state.alertmanager.insert(alert.fingerprint(), alert);
                    }
                }
                results.push(result);
            }
        }

        // A webhook target that changed (or was removed): resolve there what it was sent.
        let changed = state
            .webhook
            .as_ref()
            .is_some_and(|(old, _)| Some(old) != webhook);
        if changed && let Some((old, sent)) = state.webhook.take() {
            let gone: Vec<&Alert> = sent.values().collect();
            let resolved = self.to_webhook(rule, &old, &[], &gone, now_ms).await;
            results.extend(resolved.into_iter().map(|r| r.map(|(acted, _)| acted)));
        }
        if let Some(target) = webhook {
            let sent = match &mut state.webhook {
                Some((_, sent)) => std::mem::take(sent),
                None => BTreeMap::new(),
            };
            let mut now_sent = sent.clone();
            let (new, gone) = diff(&sent, &state.firing);
            if !new.is_empty() || !gone.is_empty() {
                // Resolves first: PagerDuty resolving then triggering one dedup_key
                // (labels changed, key kept) must end triggered.
                for result in self.to_webhook(rule, target, &[], &gone, now_ms).await {
                    if let Ok((_, done)) = &result {
                        for alert in done {
                            now_sent.remove(&alert.fingerprint());
                        }
                    }
                    results.push(result.map(|(acted, _)| acted));
                }
                for result in self.to_webhook(rule, target, &new, &[], now_ms).await {
                    if let Ok((_, done)) = &result {
                        for alert in done {
                            now_sent.insert(alert.fingerprint(), (*alert).clone());
                        }
                    }
                    results.push(result.map(|(acted, _)| acted));
                }
            }
            state.webhook = Some((target.clone(), now_sent));
        }
        results
    }

    /// Resolves everything delivered for `rule` (Alertmanager and the last webhook), as
    /// `sync` with nothing firing: call when the rule is deleted, then [`Self::forget`].
    pub async fn resolve_all(&self, rule: &RuleKey, now_ms: i64) -> Vec<Result<Acted, ActError>> {
        let webhook = {
            let entry = self.rule_state(rule);
            let state = entry.lock().await;
            state.webhook.as_ref().map(|(t, _)| t.clone())
        };
        self.sync(rule, webhook.as_ref(), Vec::new(), now_ms).await
    }

    /// Drops what is remembered of `rule` (deleted, after [`Self::resolve_all`]).
    pub fn forget(&self, rule: &RuleKey) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.remove(rule);
    }

    /// Drops what is remembered of every rule, resolving nothing: call on losing the
    /// leadership, so this replica stops re-sending; the new leader takes over (its first
    /// `sync` sends each firing alert once more).
    pub fn clear(&self) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.clear();
    }

    /// Re-sends every rule's firing alerts to every Alertmanager each resend interval,
    /// with a fresh `endsAt`, until `stop` completes; alerts whose resolution failed are
    /// resolved again. Webhooks are not re-sent. Spawn once.
    pub async fn run(self: Arc<Self>, stop: impl Future) {
        if self.config.alertmanagers.is_empty() {
            stop.await;
            return;
        }
        // `interval` panics on zero; a resend more often than this is a mistake anyway.
        let every = self.config.resend_interval.max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate; `sync` has just sent.
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    // A round held up by a slow Alertmanager must not hold shutdown.
                    tokio::select! {
                        _ = &mut stop => return,
                        () = self.resend(wall_ms()) => {}
                    }
                }
            }
        }
    }

    /// One round of [`Self::run`]: every rule's firing alerts to every Alertmanager.
    pub async fn resend(&self, now_ms: i64) {
        let entries: Vec<(RuleKey, Arc<tokio::sync::Mutex<RuleState>>)> = {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            rules.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (rule, entry) in entries {
            let mut state = entry.lock().await;
            if state.firing.is_empty() && state.alertmanager.is_empty() {
                continue;
            }
            let firing: Vec<Alert> = state.firing.values().cloned().collect();
            let (_, gone) = diff(&state.alertmanager, &state.firing);
            let gone: Vec<Alert> = gone.into_iter().cloned().collect();
            match self.to_alertmanagers(&firing, &gone, now_ms).await {
                Ok(_) => state.alertmanager = state.firing.clone(),
                Err(error) => tracing::warn!(
                    rule = %rule,
                    reason = error.reason(),
                    error = %error,
                    "re-sending alerts to Alertmanager failed; tried again next interval"
                ),
            }
        }
    }

    /// Posts `firing` (ending 4 resend intervals from now) and `resolved` (ending now) to
    /// every Alertmanager at once; one that accepts is enough.
    async fn to_alertmanagers(
        &self,
        firing: &[Alert],
        resolved: &[Alert],
        now_ms: i64,
    ) -> Result<Acted, ActError> {
        let ends = now_ms
            .saturating_add((self.config.resend_interval * ENDS_AT_INTERVALS).as_millis() as i64);
        let body = alertmanager_alerts_body(firing, resolved, ends, now_ms);
        let mut calls = tokio::task::JoinSet::new();
        for base in &self.config.alertmanagers {
            let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
            let outbound = self.outbound.clone();
            let body = body.clone();
            let host = host_of_str(base);
            calls.spawn(async move {
                let result = with_retries(|| outbound.post_json(&url, &[], &body)).await;
                (host, result)
            });
        }
        let mut accepted = Vec::new();
        let mut errors: Vec<(String, ActError)> = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((host, Ok(_))) => {
                    accepted.push(host);
                    // One replica accepting is enough (they gossip): a slow or dropped
                    // replica must not hold the reconcile; the others finish on their
                    // own.
                    calls.detach_all();
                    break;
                }
                Ok((host, Err(error))) => errors.push((host, error)),
                Err(join) => errors.push((
                    "(task)".to_owned(),
                    ActError::failed("AlertmanagerUnavailable", join.to_string()),
                )),
            }
        }
        accepted.sort();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        let failed: Vec<String> = errors
            .iter()
            .map(|(host, e)| format!("{host}: {e}"))
            .collect();
        let counts = format!("{} firing, {} resolved", firing.len(), resolved.len());
        if accepted.is_empty() {
            let reason = errors
                .first()
                .map(|(_, e)| e.reason())
                .unwrap_or("AlertmanagerUnavailable");
            return Err(ActError::failed(
                reason,
                format!(
                    "no Alertmanager accepted the alerts ({counts}): {}",
                    failed.join("; ")
                ),
            ));
        }
        for (host, error) in &errors {
            tracing::warn!(alertmanager = %host, reason = error.reason(), error = %error, "an Alertmanager did not accept the alerts");
        }
        let mut summary = format!("{counts} sent to Alertmanager {}", accepted.join(", "));
        if !failed.is_empty() {
            summary.push_str(&format!(" (not accepted by {})", failed.join("; ")));
        }
        Ok(Acted {
            action: "alert",
            target: TargetRef {
                kind: "Alertmanager".to_owned(),
                namespace: None,
                name: accepted.join(","),
                uid: None,
            },
            version_before: None,
            version_after: None,
            changed: true,
            summary,
        })
    }

    /// Sends `firing` or `resolved` alerts to the webhook: one message for the
    /// Alertmanager and Slack formats, one event per alert for PagerDuty. Each result
    /// comes with the alerts it delivered.
    async fn to_webhook<'a>(
        &self,
        rule: &RuleKey,
        target: &WebhookTarget,
        firing: &[&'a Alert],
        resolved: &[&'a Alert],
        now_ms: i64,
    ) -> Vec<Result<(Acted, Vec<&'a Alert>), ActError>> {
        let (alerts, is_firing) = if resolved.is_empty() {
            (firing, true)
        } else {
            (resolved, false)
        };
        if alerts.is_empty() {
            return Vec::new();
        }
        let status = if is_firing { "firing" } else { "resolved" };
        let mut messages: Vec<(String, Value, Vec<&'a Alert>)> = Vec::new();
        match target.format {
            WebhookFormat::Alertmanager => messages.push((
                target.url_or_key.clone(),
                alertmanager_webhook_body(
                    rule,
                    is_firing,
                    alerts,
                    now_ms,
                    &self.config.external_url,
                ),
                alerts.to_vec(),
            )),
            WebhookFormat::Slack => messages.push((
                target.url_or_key.clone(),
                slack_body(rule, is_firing, alerts),
                alerts.to_vec(),
            )),
            WebhookFormat::Pagerduty => {
                for alert in alerts {
                    messages.push((
                        self.config.pagerduty_url.clone(),
                        pagerduty_event(&target.url_or_key, alert, is_firing, rule),
                        vec![*alert],
                    ));
                }
            }
        }
        let format = format!("{:?}", target.format).to_ascii_lowercase();
        let mut results = Vec::new();
        for (url, body, delivered) in messages {
            let host = host_of_str(&url);
            let sent = with_retries(|| self.outbound.post_json(&url, &[], &body)).await;
            results.push(sent.map(|_| {
                let acted = Acted {
                    action: "webhook",
                    target: TargetRef {
                        kind: "Webhook".to_owned(),
                        namespace: None,
                        name: host.clone(),
                        uid: None,
                    },
                    version_before: None,
                    version_after: None,
                    changed: true,
                    summary: format!(
                        "{} {status} sent to {format} webhook {host}",
                        delivered.len()
                    ),
                };
                (acted, delivered)
            }));
        }
        results
    }
}

/// The time now, ms since the epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The body of Alertmanager's `POST /api/v2/alerts`: `firing` end at `ends_ms`,
/// `resolved` at `now_ms` (never before they started: Alertmanager refuses that).
pub fn alertmanager_alerts_body(
    firing: &[Alert],
    resolved: &[Alert],
    ends_ms: i64,
    now_ms: i64,
) -> Value {
    let one = |alert: &Alert, ends: i64| {
        json!({
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": format_time_ms(alert.starts_at_ms),
            "endsAt": format_time_ms(ends.max(alert.starts_at_ms)),
            "generatorURL": alert.generator_url,
        })
    };
    Value::Array(
        firing
            .iter()
            .map(|a| one(a, ends_ms))
            .chain(resolved.iter().map(|a| one(a, now_ms)))
            .collect(),
    )
}

/// The labels (or annotations) every alert shares.
fn common(
    alerts: &[&Alert],
    pick: impl Fn(&Alert) -> &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let Some((first, rest)) = alerts.split_first() else {
        return BTreeMap::new();
    };
    pick(first)
        .iter()
        .filter(|(k, v)| rest.iter().all(|a| pick(a).get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Alertmanager's webhook JSON (`version: "4"`), grouped by rule.
pub fn alertmanager_webhook_body(
    rule: &RuleKey,
    firing: bool,
    alerts: &[&Alert],
    now_ms: i64,
    external_url: &str,
) -> Value {
    let status = if firing { "firing" } else { "resolved" };
    let prophet_rule = format!("{}/{}/{}", rule.kind.as_str(), rule.namespace, rule.name);
    let group_key = format!("{{}}:{{prophet_rule={prophet_rule:?}}}");
    let listed: Vec<Value> = alerts
        .iter()
        .map(|alert| {
            json!({
                "status": status,
                "labels": alert.labels,
                "annotations": alert.annotations,
                "startsAt": format_time_ms(alert.starts_at_ms),
                // Alertmanager's zero time for an alert not yet ended.
                "endsAt": if firing {
                    "0001-01-01T00:00:00Z".to_owned()
                } else {
                    format_time_ms(now_ms.max(alert.starts_at_ms))
                },
                "generatorURL": alert.generator_url,
                "fingerprint": alert.fingerprint(),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "prophet",
        "groupLabels": { "prophet_rule": prophet_rule },
        "commonLabels": common(alerts, |a| &a.labels),
        "commonAnnotations": common(alerts, |a| &a.annotations),
        "externalURL": external_url,
        "alerts": listed,
    })
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (the notification's fallback) and blocks
/// listing up to 10 alerts. A resolved message says RESOLVED.
pub fn slack_body(rule: &RuleKey, firing: bool, alerts: &[&Alert]) -> Value {
    let (mark, status) = if firing {
        (":red_circle:", "FIRING")
    } else {
        (":large_green_circle:", "RESOLVED")
    };
    let title = format!(
        "[{status}:{}] {} {}/{}",
        alerts.len(),
        rule.kind.as_str(),
        rule.namespace,
        rule.name
    );
    let text = format!("{mark} {}", slack_escape(&title));
    let mut blocks = vec![json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": format!("{mark} *{}*", slack_escape(&title)) },
    })];
    for alert in alerts.iter().take(SLACK_LISTED) {
        let mut line = format!("*{}*", slack_escape(alert.annotation("description")));
        let severity = alert.label("severity");
        if !severity.is_empty() {
            line.push_str(&format!("\nseverity: `{}`", slack_escape(severity)));
        }
        if alert.generator_url.starts_with("http") {
            line.push_str(&format!(
                "  <{}|rule>",
                alert.generator_url.replace('|', "%7C")
            ));
        }
        let line: String = line.chars().take(2900).collect();
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": line } }));
    }
    if alerts.len() > SLACK_LISTED {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("and {} more", alerts.len() - SLACK_LISTED) }],
        }));
    }
    json!({ "text": text, "blocks": blocks })
}

/// PagerDuty's severities; anything else is `warning`.
pub fn pagerduty_severity(severity: &str) -> &'static str {
    match severity.to_ascii_lowercase().as_str() {
        "critical" | "page" => "critical",
        "error" => "error",
        "info" | "informational" | "none" => "info",
        _ => "warning",
    }
}

/// At most `max` characters, the last one an ellipsis when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A PagerDuty Events API v2 event: `trigger` with a payload, or `resolve` with only
/// the routing and dedup keys.
pub fn pagerduty_event(routing_key: &str, alert: &Alert, firing: bool, rule: &RuleKey) -> Value {
    if !firing {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": alert.dedup_key,
        });
    }
    // The source: the most specific thing the series names.
    let source = ["pod", "instance", "job"]
        .iter()
        .find_map(|l| alert.labels.get(*l).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| format!("{}/{}", rule.namespace, rule.name));
    let component = ["container", "deployment", "service", "job"]
        .iter()
        .find_map(|l| alert.labels.get(*l))
        .cloned()
        .unwrap_or_else(|| alert.label("metric").to_owned());
    let mut details = serde_json::Map::new();
    details.insert("labels".to_owned(), json!(alert.labels));
    details.insert("annotations".to_owned(), json!(alert.annotations));
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.dedup_key,
        "client": "Prophet",
        "payload": {
            "summary": truncate_chars(alert.annotation("description"), PAGERDUTY_SUMMARY_MAX),
            "source": source,
            "severity": pagerduty_severity(alert.label("severity")),
            "timestamp": format_time_ms(alert.starts_at_ms),
            "component": component,
            "group": rule.namespace,
            "class": rule.kind.as_str(),
            "custom_details": details,
        },
    });
    if alert.generator_url.starts_with("http") {
        event["client_url"] = json!(alert.generator_url);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::RuleKind;

    fn actor() -> Actor {
        Actor {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
            uid: "0b6c2f0e-1111-2222-3333-444455556666".into(),
            allow_git_ops: false,
            allow_cross_namespace: false,
        }
    }

    fn key() -> RuleKey {
        RuleKey {
            kind: RuleKind::AnomalyAction,
            namespace: "shop".into(),
            name: "memory".into(),
        }
    }

    fn series(pod: &str) -> Labels {
        Labels::from_pairs([
            ("__name__", "container_memory_working_set_bytes"),
            ("namespace", "shop"),
            ("pod", pod),
            ("container", "api"),
            ("odd-name", "x"),
            ("__meta", "y"),
            ("empty", ""),
        ])
    }

    fn alert(pod: &str) -> Alert {
        Alert::new(
            &actor(),
            &series(pod),
            "critical",
            "memory > 1Gi",
            Some("1.5Gi"),
            1_700_000_000_000,
            "http://prophet.example/api/v1/rules/AnomalyAction/shop/memory",
        )
    }

    #[test]
    fn alert_labels_and_annotations() {
        let a = alert("api-0");
        let labels: Vec<(&str, &str)> = a
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("alertname", "memory"),
                ("container", "api"),
                ("exported_namespace", "shop"),
                ("metric", "container_memory_working_set_bytes"),
                ("namespace", "shop"),
                ("pod", "api-0"),
                ("prophet_rule", "AnomalyAction/shop/memory"),
                ("severity", "critical"),
            ]
        );
        assert_eq!(
            a.annotation("summary"),
            "AnomalyAction shop/memory: memory > 1Gi"
        );
        assert!(a.annotation("description").contains("(value 1.5Gi)"));
        assert!(a.annotation("description").contains("pod=\"api-0\""));
        assert_eq!(a.annotation("value"), "1.5Gi");
        assert_eq!(a.annotation("rule"), a.generator_url);
    }

    #[test]
    fn label_names_alertmanager_accepts() {
        assert!(valid_label_name("pod"));
        assert!(valid_label_name("_x9"));
        assert!(!valid_label_name("9x"));
        assert!(!valid_label_name("a-b"));
        assert!(!valid_label_name("a.b"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name(""));
    }

    #[test]
    fn dedup_keys_are_stable_and_distinct() {
        let s = series("api-0");
        // Pinned: the same in every process, build and leader (xxh3 is specified).
        assert_eq!(dedup_key("uid-1", &s), dedup_key("uid-1", &s.clone()));
        let pinned = dedup_key("uid-1", &Labels::from_pairs([("pod", "a")]));
        assert_eq!(
            pinned,
            dedup_key("uid-1", &Labels::from_pairs([("pod", "a")]))
        );
        assert!(pinned.starts_with("prophet-") && pinned.len() == 8 + 32);
        assert_ne!(dedup_key("uid-1", &s), dedup_key("uid-2", &s));
        assert_ne!(dedup_key("uid-1", &s), dedup_key("uid-1", &series("api-1")));
        // Separators keep `a="bc"` and `ab="c"` apart.
        assert_ne!(
            dedup_key("u", &Labels::from_pairs([("a", "bc")])),
            dedup_key("u", &Labels::from_pairs([("ab", "c")]))
        );
        assert_eq!(
            alert("api-0").dedup_key,
            dedup_key(&actor().uid, &series("api-0"))
        );
    }

    #[test]
    fn dedup_key_is_pinned_across_builds() {
        // xxh3_128 is a specified function: this value may never change, or every
        // leader after an upgrade would open a second PagerDuty incident.
        let expected = format!(
            "prophet-{:032x}",
            xxhash_rust::xxh3::xxh3_128(b"uid-1\xffpod\xfea\xff")
        );
        assert_eq!(
            dedup_key("uid-1", &Labels::from_pairs([("pod", "a")])),
            expected
        );
    }

    fn keyed(alerts: &[Alert]) -> BTreeMap<String, Alert> {
        alerts
            .iter()
            .map(|a| (a.fingerprint(), a.clone()))
            .collect()
    }

    #[test]
    fn diff_new_gone_and_unchanged() {
        let delivered = keyed(&[alert("a"), alert("b")]);
        let firing = keyed(&[alert("b"), alert("c")]);
        let (new, gone) = diff(&delivered, &firing);
        assert_eq!(
            new.iter().map(|a| a.label("pod")).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(
            gone.iter().map(|a| a.label("pod")).collect::<Vec<_>>(),
            ["a"]
        );
        let (new, gone) = diff(&firing, &firing);
        assert!(new.is_empty() && gone.is_empty());
        // A changed value (annotation) is the same alert; a changed label is another.
        let mut revalued = alert("b");
        revalued.annotations.insert("value".into(), "2Gi".into());
        let (before, after) = (keyed(&[alert("b")]), keyed(&[revalued]));
        let (new, gone) = diff(&before, &after);
        assert!(new.is_empty() && gone.is_empty());
        let mut relabelled = alert("b");
        relabelled.labels.insert("severity".into(), "info".into());
        let after = keyed(&[relabelled]);
        let (new, gone) = diff(&before, &after);
        assert_eq!((new.len(), gone.len()), (1, 1));
    }

    #[test]
    fn alertmanager_api_body() {
        let body = alertmanager_alerts_body(
            &[alert("a")],
            &[alert("b")],
            1_700_000_240_000,
            1_700_000_060_000,
        );
        assert_eq!(body[0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(body[0]["endsAt"], "2023-11-14T22:17:20.000Z");
        assert_eq!(body[1]["endsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(body[0]["labels"]["pod"], "a");
        assert_eq!(body[0]["annotations"]["value"], "1.5Gi");
        assert!(
            body[0]["generatorURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("http"))
        );
        // A resolution never ends before the alert started.
        let body = alertmanager_alerts_body(&[], &[alert("b")], 0, 0);
        assert_eq!(body[0]["endsAt"], body[0]["startsAt"]);
    }

    #[test]
    fn alertmanager_webhook_json() {
        let (a, b) = (alert("a"), alert("b"));
        let body = alertmanager_webhook_body(&key(), true, &[&a, &b], 0, "http://prophet");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "prophet");
        assert_eq!(body["externalURL"], "http://prophet");
        assert_eq!(
            body["groupKey"],
            "{}:{prophet_rule=\"AnomalyAction/shop/memory\"}"
        );
        assert_eq!(
            body["groupLabels"]["prophet_rule"],
            "AnomalyAction/shop/memory"
        );
        assert_eq!(body["commonLabels"]["alertname"], "memory");
        assert!(body["commonLabels"].get("pod").is_none(), "pods differ");
        assert_eq!(body["commonAnnotations"]["value"], "1.5Gi");
        let alerts = body["alerts"].as_array().expect("alerts");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alerts[0]["fingerprint"], a.fingerprint());
        assert_eq!(alerts[0]["fingerprint"].as_str().map(str::len), Some(16));
        for field in ["labels", "annotations", "startsAt", "generatorURL"] {
            assert!(alerts[0].get(field).is_some(), "{field}");
        }
        let body = alertmanager_webhook_body(&key(), false, &[&a], 1_700_000_060_000, "");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["alerts"][0]["status"], "resolved");
        assert_eq!(body["alerts"][0]["endsAt"], "2023-11-14T22:14:20.000Z");
    }

    #[test]
    fn slack_message() {
        let a = alert("a");
        let body = slack_body(&key(), true, &[&a]);
        let text = body["text"].as_str().expect("text");
        assert!(
            text.contains("[FIRING:1] AnomalyAction shop/memory"),
            "{text}"
        );
        let blocks = body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 2);
        let line = blocks[1]["text"]["text"].as_str().expect("line");
        assert!(line.contains("memory &gt; 1Gi"), "escaped: {line}");
        assert!(
            line.contains("<http://prophet.example/api/v1/rules/AnomalyAction/shop/memory|rule>")
        );
        let resolved = slack_body(&key(), false, &[&a]);
        assert!(
            resolved["text"]
                .as_str()
                .is_some_and(|t| t.contains("RESOLVED"))
        );

        let many: Vec<Alert> = (0..13).map(|i| alert(&format!("p{i}"))).collect();
        let refs: Vec<&Alert> = many.iter().collect();
        let body = slack_body(&key(), true, &refs);
        let blocks = body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 1 + SLACK_LISTED + 1);
        assert_eq!(blocks[11]["elements"][0]["text"], "and 3 more");
    }

    #[test]
    fn pagerduty_events() {
        let a = alert("a");
        let event = pagerduty_event("R0UT1NG", &a, true, &key());
        assert_eq!(event["routing_key"], "R0UT1NG");
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], a.dedup_key);
        let payload = &event["payload"];
        assert_eq!(payload["severity"], "critical");
        assert_eq!(payload["source"], "a");
        assert_eq!(payload["component"], "api");
        assert_eq!(payload["group"], "shop");
        assert_eq!(payload["class"], "AnomalyAction");
        assert_eq!(payload["custom_details"]["labels"]["pod"], "a");
        assert!(
            payload["summary"]
                .as_str()
                .is_some_and(|s| s.contains("memory > 1Gi"))
        );

        let resolve = pagerduty_event("R0UT1NG", &a, false, &key());
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UT1NG", "event_action": "resolve", "dedup_key": a.dedup_key})
        );

        let mut long = alert("a");
        long.annotations
            .insert("description".into(), "é".repeat(5000));
        let event = pagerduty_event("k", &long, true, &key());
        let summary = event["payload"]["summary"].as_str().expect("summary");
        assert_eq!(summary.chars().count(), PAGERDUTY_SUMMARY_MAX);
        assert!(summary.ends_with('…'));
    }

    #[test]
    fn pagerduty_severity_mapping() {
        for (given, expected) in [
            ("critical", "critical"),
            ("CRITICAL", "critical"),
            ("page", "critical"),
            ("error", "error"),
            ("warning", "warning"),
            ("info", "info"),
            ("none", "info"),
            ("high", "warning"),
            ("", "warning"),
        ] {
            assert_eq!(pagerduty_severity(given), expected, "{given}");
        }
    }

    /// A Secret Prophet may not read (RBAC) is a retryable `Forbidden` naming the Secret:
    /// the admin client of the integration tests cannot produce it.
    #[tokio::test]
    async fn a_forbidden_secret_read_names_the_secret() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "default");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a Secret read");
            assert_eq!(request.method(), Method::GET);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/shop/secrets/pd");
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "secrets \"pd\" is forbidden: User \"system:serviceaccount:prophet:prophet\" cannot get resource \"secrets\"",
                "reason": "Forbidden", "code": 403,
            });
            send.send_response(
                Response::builder()
                    .status(403)
                    .body(Body::from(serde_json::to_vec(&status).expect("json")))
                    .expect("response"),
            );
        });
        let secret = SecretKeyRef {
            name: "pd".into(),
            key: "routingKey".into(),
        };
        let error = webhook_target(
            &client,
            "shop",
            None,
            Some(&secret),
            WebhookFormat::Pagerduty,
        )
        .await
        .expect_err("forbidden");
        assert_eq!(error.reason(), "Forbidden");
        assert!(!error.is_refused());
        assert!(error.to_string().contains("Secret shop/pd"), "{error}");
        assert!(error.to_string().contains("routingKey"), "{error}");
        server.await.expect("the mock server saw the read");
    }

    #[tokio::test]
    async fn pagerduty_needs_its_key_from_a_secret() {
        let (mock, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(mock, "default");
        let error = webhook_target(
            &client,
            "shop",
            Some("https://events.pagerduty.com/v2/enqueue"),
            None,
            WebhookFormat::Pagerduty,
        )
        .await
        .expect_err("refused");
        assert!(error.is_refused());
        assert_eq!(error.reason(), "WebhookNeedsSecret");
    }

    #[test]
    fn webhook_target_debug_hides_the_secret() {
        let slack = WebhookTarget {
            format: WebhookFormat::Slack,
            url_or_key: "https://hooks.slack.com/services/T0/B0/s3cr3t".into(),
        };
        let shown = format!("{slack:?}");
        assert!(
            shown.contains("hooks.slack.com") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        let pd = WebhookTarget {
            format: WebhookFormat::Pagerduty,
            url_or_key: "R0UT1NGKEY".into(),
        };
        assert!(!format!("{pd:?}").contains("R0UT1NGKEY"));
    }
}
