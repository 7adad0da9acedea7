//! The guarded HTTP client of every outbound call Prophet makes (Alertmanager, webhooks,
//! Slack, PagerDuty, K8sGPT, Grafana). It owns the allow-list (`--allow-url-host`), the
//! address checks made on the *resolved* address (so DNS cannot point an allowed name at
//! cloud metadata or a link-local service), the refusal of redirects to another host, and
//! the bounds on time and response size. It must never put a URL's path or query in a
//! log line or an error (Slack and many webhook URLs carry their token there): only the
//! host. No other module makes HTTP calls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;

use super::ActError;

/// Limits of outbound calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Hosts a URL may name (`--allow-url-host`): exact names (`alertmanager.monitoring`),
    /// suffix patterns (`*.example.com`: any name under `example.com`, not the apex), IP
    /// addresses and CIDRs (`10.0.0.0/8`, `127.0.0.1`).
    pub allow_hosts: Vec<String>,
    /// The longest one call may take, connecting and reading included.
    pub timeout: Duration,
    /// The most bytes of a response body read; the rest is dropped.
    pub max_response_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// One entry of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A host name, lower case, without a trailing dot.
    Exact(String),
    /// `*.example.com` kept as `.example.com`: names strictly under it.
    Suffix(String),
    /// An address range; a single address is a full-length prefix.
    Net(IpAddr, u8),
}

impl Allowed {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        if entry.is_empty() {
            return None;
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        };
        if let Some(suffix) = entry.strip_prefix("*.") {
            return name_ok(suffix).then(|| Self::Suffix(format!(".{suffix}")));
        }
        let (addr, prefix) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry.as_str(), None),
        };
        let bare = addr.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= full)?,
                None => full,
            };
            return Some(Self::Net(ip, prefix));
        }
        if prefix.is_some() || !name_ok(&entry) {
            return None;
        }
        Some(Self::Exact(entry))
    }
}

/// How a host was allowed: it decides which resolved addresses it may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostMatch {
    /// Named exactly, or an address inside a listed range: private and loopback
    /// addresses are allowed (an in-cluster Alertmanager is a private ClusterIP).
    Explicit,
    /// Only by a `*.` pattern: anyone who can add a name under the suffix could point it
    /// anywhere, so private and loopback addresses are allowed only inside a listed range.
    Pattern,
}

/// The class of an address, for what may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Never reached: link-local (169.254.0.0/16, fe80::/10, with cloud metadata at
    /// 169.254.169.254), other cloud metadata addresses (fd00:ec2::254, Alibaba's
    /// 100.100.100.200), unspecified, multicast and broadcast.
    Forbidden,
    /// Loopback, private (RFC 1918), shared (100.64.0.0/10), unique-local IPv6: reached
    /// only when explicitly allowed.
    Internal,
    /// Everything else.
    Public,
}

/// Classifies an address; an IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is
/// classified as the IPv4 address it carries, as the kernel routes it.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    if ip.is_link_local()
        || ip.is_unspecified()
        || o[0] == 0 // "this network": 0.0.0.0/8 reaches the host itself on Linux
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip == Ipv4Addr::new(100, 100, 100, 200)
    {
        return AddressClass::Forbidden;
    }
    let shared = o[0] == 100 && (o[1] & 0xc0) == 64;
    if ip.is_loopback() || ip.is_private() || shared {
        return AddressClass::Internal;
    }
    AddressClass::Public
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    let link_local = (s[0] & 0xffc0) == 0xfe80;
    let metadata = ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    if link_local || metadata || ip.is_unspecified() || ip.is_multicast() {
        return AddressClass::Forbidden;
    }
    let unique_local = (s[0] & 0xfe00) == 0xfc00;
    if ip.is_loopback() || unique_local {
        return AddressClass::Internal;
    }
    AddressClass::Public
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            (u32::from(a) & mask) == (u32::from(n) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            (u128::from(a) & mask) == (u128::from(n) & mask)
        }
        _ => false,
    }
}

/// The parsed allow-list, shared by the URL check and the resolver.
#[derive(Debug, Default)]
struct AllowList {
    entries: Vec<Allowed>,
}

impl AllowList {
    fn host_match(&self, host: &str) -> Option<HostMatch> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut found = None;
        for entry in &self.entries {
            match entry {
                Allowed::Exact(name) if *name == host => return Some(HostMatch::Explicit),
                Allowed::Suffix(suffix) if host.ends_with(suffix.as_str()) => {
                    found = Some(HostMatch::Pattern)
                }
                _ => {}
            }
        }
        found
    }

    fn in_listed_net(&self, ip: IpAddr) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Allowed::Net(net, prefix) if in_net(ip, *net, *prefix)))
    }

    /// Whether a resolved (or literal) address may be reached for a host allowed by
    /// `how` (`None`: the host itself is an address literal, allowed only by a range).
    fn admits(&self, ip: IpAddr, how: Option<HostMatch>) -> bool {
        match classify(ip) {
            AddressClass::Forbidden => false,
            AddressClass::Internal => how == Some(HostMatch::Explicit) || self.in_listed_net(ip),
            AddressClass::Public => how.is_some() || self.in_listed_net(ip),
        }
    }
}

/// Why a name resolved to nothing that may be reached; found again in reqwest's error
/// chain to refuse instead of retrying.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to addresses that may not be reached (link-local, cloud metadata, multicast, or internal for a host allowed only by a pattern)"
)]
struct BlockedAddress {
    host: String,
}

/// reqwest's resolver: resolves with tokio and drops every address the allow-list does
/// not admit for the name, so a connection can only go where the checks said.
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let how = allow.host_match(&host);
            if how.is_none() {
                return Err(Box::new(BlockedAddress { host }) as _);
            }
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let admitted: Vec<SocketAddr> =
                resolved.filter(|a| allow.admits(a.ip(), how)).collect();
            if admitted.is_empty() {
                return Err(Box::new(BlockedAddress { host }) as _);
            }
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

/// The answer to a call: status and at most `max_response_bytes` of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// True when the body was longer than the limit and cut.
    pub truncated: bool,
}

impl Reply {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// The guarded client. Cheap to clone: one connection pool shared by all clones.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allow: Arc<AllowList>,
    config: Arc<OutboundConfig>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The flag that widens the allow-list, named in refusals.
pub const ALLOW_FLAG: &str = "--allow-url-host";

/// Installs ring as the process's rustls provider, as kube and the listener use it;
/// harmless when one is installed already.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already (by kube or the TLS listener).
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Outbound {
    /// A client with these limits. Fails only when an allow-list entry cannot be read
    /// (the message names it) or the TLS stack cannot be built.
    pub fn new(config: OutboundConfig) -> Result<Self, String> {
        let mut entries = Vec::new();
        for host in &config.allow_hosts {
            entries.push(Allowed::parse(host).ok_or_else(|| {
                format!(
                    "{ALLOW_FLAG} {host:?} is neither a host name, a *.suffix pattern, an IP address nor a CIDR"
                )
            })?);
        }
        Self::build(config, AllowList { entries })
    }

    fn build(config: OutboundConfig, allow: AllowList) -> Result<Self, String> {
        install_crypto_provider();
        let allow = Arc::new(allow);
        let client = reqwest::Client::builder()
            // A proxy would resolve the name itself, past the resolved-address check.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                allow: allow.clone(),
            })
            .redirect(redirect::Policy::custom(same_host_redirects))
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .timeout(config.timeout)
            .user_agent(concat!("prophet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the outbound HTTP client: {e}"))?;
        Ok(Self {
            client,
            allow,
            config: Arc::new(config),
        })
    }

    /// Adds a host (same forms as `--allow-url-host`), e.g. each configured
    /// Alertmanager's. Call before cloning: clones made earlier keep the old list.
    pub fn allow(&mut self, host: &str) -> Result<(), String> {
        let entry = Allowed::parse(host)
            .ok_or_else(|| format!("{host:?} is not a host name, pattern, address or CIDR"))?;
        let mut entries = self.allow.entries.clone();
        if !entries.contains(&entry) {
            entries.push(entry);
        }
        let config = (*self.config).clone();
        *self = Self::build(config, AllowList { entries })?;
        Ok(())
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// Checks a URL before any connection: scheme http or https, host allowed, and a
    /// literal address admitted (the resolver is not asked about literals).
    pub fn check_url(&self, url: &str) -> Result<Url, ActError> {
        let parsed = Url::parse(url).map_err(|e| {
            // The parse error names no part of the URL; the URL itself may be a secret.
            ActError::refused("UrlNotAllowed", format!("not a valid URL: {e}"))
        })?;
        let host = host_of(&parsed);
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ActError::refused(
                "UrlNotAllowed",
                format!(
                    "the URL to {host} uses scheme {:?}; only http and https are allowed",
                    parsed.scheme()
                ),
            ));
        }
        let allowed = match parsed.host_str() {
            // IPv6 literals come bracketed; the url crate has normalised every literal.
            Some(h) => match h.trim_start_matches('[').trim_end_matches(']').parse() {
                Ok(ip) => self.allow.admits(ip, None),
                Err(_) => self.allow.host_match(h).is_some(),
            },
            None => false,
        };
        if !allowed {
            return Err(ActError::refused(
                "UrlNotAllowed",
                format!(
                    "host {host} is not allowed for outbound calls; add it with {ALLOW_FLAG} (link-local and cloud metadata addresses are never allowed)"
                ),
            ));
        }
        Ok(parsed)
    }

    /// POSTs `body` as JSON. 2xx is `Ok`; see [`Outbound::send`] for the errors.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<Reply, ActError> {
        let parsed = self.check_url(url)?;
        let mut request = self.client.post(parsed.clone()).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(&parsed, "POST", request).await
    }

    /// GETs a URL. 2xx is `Ok`; see [`Outbound::send`] for the errors.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, ActError> {
        let parsed = self.check_url(url)?;
        let mut request = self.client.get(parsed.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(&parsed, "GET", request).await
    }

    /// Sends and reads at most `max_response_bytes`. Errors: a denied URL or a name that
    /// resolves only to forbidden addresses is `Refused` (`UrlNotAllowed`); 5xx
    /// (`WebhookServerError`), 429 (`WebhookThrottled`, with the server's Retry-After),
    /// no answer in time (`WebhookTimeout`) and no connection (`WebhookUnreachable`) are
    /// `Failed` and [`is_transient`]; other 4xx (`WebhookRejected`) and a redirect not
    /// followed (`WebhookRedirected`) are `Failed`, not transient.
    async fn send(
        &self,
        url: &Url,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, ActError> {
        let host = host_of(url);
        let response = request
            .send()
            .await
            .map_err(|e| classify_error(method, &host, e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reply = self
            .read_body(method, &host, status.as_u16(), response)
            .await?;
        if status.is_success() {
            return Ok(reply);
        }
        let excerpt = excerpt(&reply.body);
        let message = format!("{method} to {host} answered {status}{excerpt}");
        Err(match status.as_u16() {
            429 => ActError::Failed {
                reason: "WebhookThrottled",
                message,
                retry_after,
            },
            500..=599 => ActError::failed("WebhookServerError", message),
            300..=399 => ActError::failed(
                "WebhookRedirected",
                format!("{message}: redirects to another host are not followed"),
            ),
            _ => ActError::failed("WebhookRejected", message),
        })
    }

    async fn read_body(
        &self,
        method: &str,
        host: &str,
        status: u16,
        mut response: reqwest::Response,
    ) -> Result<Reply, ActError> {
        let limit = self.config.max_response_bytes;
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(classify_error(method, host, e)),
            }
        }
        Ok(Reply {
            status,
            body,
            truncated,
        })
    }
}

/// The host (and port, if given) of a URL: all of it that may be logged.
pub fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => "(no host)".to_owned(),
    }
}

/// The host of a URL string, or a placeholder; never any other part of it.
pub fn host_of_str(url: &str) -> String {
    Url::parse(url)
        .map(|u| host_of(&u))
        .unwrap_or_else(|_| "(invalid URL)".to_owned())
}

/// At most 200 characters of a body, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(200).collect();
    format!(": {cut}")
}

/// Follows a redirect only to the same host (and never from https to http), at most 3.
fn same_host_redirects(attempt: redirect::Attempt<'_>) -> redirect::Action {
    let Some(first) = attempt.previous().first() else {
        return attempt.stop();
    };
    let next = attempt.url();
    let same_host = next.host_str() == first.host_str()
        && next.port_or_known_default() == first.port_or_known_default();
    let downgrade = first.scheme() == "https" && next.scheme() != "https";
    if attempt.previous().len() > 3 || !same_host || downgrade {
        attempt.stop()
    } else {
        attempt.follow()
    }
}

/// A reqwest error as an [`ActError`], naming the host only (`without_url`).
fn classify_error(method: &str, host: &str, error: reqwest::Error) -> ActError {
    let error = error.without_url();
    if let Some(blocked) = find_source::<BlockedAddress>(&error) {
        return ActError::refused(
            "UrlNotAllowed",
            format!("{method} to {host} not sent: {blocked}; see {ALLOW_FLAG}"),
        );
    }
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if error.is_timeout() {
        ActError::failed(
            "WebhookTimeout",
            format!("{method} to {host} had no answer in time: {chain}"),
        )
    } else {
        ActError::failed(
            "WebhookUnreachable",
            format!("{method} to {host} failed: {chain}"),
        )
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether an error may go away by itself (5xx, 429, timeout, no connection), so a
/// retry makes sense.
pub fn is_transient(error: &ActError) -> bool {
    matches!(
        error,
        ActError::Failed {
            reason: "WebhookServerError"
                | "WebhookThrottled"
                | "WebhookTimeout"
                | "WebhookUnreachable",
            ..
        }
    )
}

/// The waits between attempts of [`with_retries`].
pub const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// The longest a server's Retry-After is honoured within one call; longer, the call
/// gives up and the next reconcile tries again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Runs `attempt` up to 3 times while it fails with a transient error, waiting 200 ms
/// then 800 ms (or a server's Retry-After up to 2 s). The whole takes at most 3 call
/// timeouts plus 4 s. Returns the last error.
pub async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, ActError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ActError>>,
{
    let mut waits = BACKOFF.iter();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) => {
                let Some(wait) = waits.next() else {
                    return Err(error);
                };
                let wait = match &error {
                    ActError::Failed {
                        retry_after: Some(after),
                        ..
                    } if *after <= MAX_RETRY_AFTER => (*after).max(*wait),
                    ActError::Failed {
                        retry_after: Some(_),
                        ..
                    } => return Err(error),
                    _ => *wait,
                };
                tracing::debug!(reason = error.reason(), ?wait, "outbound call retried");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList {
            entries: entries.iter().filter_map(|e| Allowed::parse(e)).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn allow_list_entries_parse() {
        assert_eq!(
            Allowed::parse("Hooks.Slack.com."),
            Some(Allowed::Exact("hooks.slack.com".into()))
        );
        assert_eq!(
            Allowed::parse("*.example.com"),
            Some(Allowed::Suffix(".example.com".into()))
        );
        assert_eq!(
            Allowed::parse("10.0.0.0/8"),
            Some(Allowed::Net(ip("10.0.0.0"), 8))
        );
        assert_eq!(
            Allowed::parse("127.0.0.1"),
            Some(Allowed::Net(ip("127.0.0.1"), 32))
        );
        assert_eq!(Allowed::parse("[::1]"), Some(Allowed::Net(ip("::1"), 128)));
        assert_eq!(Allowed::parse("10.0.0.0/33"), None);
        assert_eq!(Allowed::parse("name/8"), None);
        assert_eq!(Allowed::parse("*."), None);
        assert_eq!(Allowed::parse("*"), None);
        assert_eq!(Allowed::parse("a*.b"), None);
        assert_eq!(Allowed::parse("host:9093"), None);
        assert_eq!(Allowed::parse(" "), None);
    }

    #[test]
    fn host_matching_exact_and_suffix() {
        let allow = list(&["hooks.slack.com", "*.example.com"]);
        assert_eq!(
            allow.host_match("hooks.slack.com"),
            Some(HostMatch::Explicit)
        );
        assert_eq!(
            allow.host_match("HOOKS.slack.com."),
            Some(HostMatch::Explicit)
        );
        assert_eq!(allow.host_match("a.example.com"), Some(HostMatch::Pattern));
        assert_eq!(
            allow.host_match("a.b.example.com"),
            Some(HostMatch::Pattern)
        );
        // The apex and look-alikes are not under the suffix.
        assert_eq!(allow.host_match("example.com"), None);
        assert_eq!(allow.host_match("badexample.com"), None);
        assert_eq!(allow.host_match("slack.com"), None);
        assert_eq!(allow.host_match("hooks.slack.com.evil.io"), None);
    }

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        for (addr, class) in [
            ("169.254.169.254", Forbidden),
            ("169.254.1.1", Forbidden),
            ("fe80::1", Forbidden),
            ("febf::1", Forbidden),
            ("fd00:ec2::254", Forbidden),
            ("100.100.100.200", Forbidden),
            ("0.0.0.0", Forbidden),
            ("0.1.2.3", Forbidden),
            ("::", Forbidden),
            ("224.0.0.1", Forbidden),
            ("ff02::1", Forbidden),
            ("255.255.255.255", Forbidden),
            ("::ffff:169.254.169.254", Forbidden),
            ("::ffff:100.100.100.200", Forbidden),
            ("127.0.0.1", Internal),
            ("::1", Internal),
            ("10.1.2.3", Internal),
            ("172.16.0.1", Internal),
            ("192.168.1.1", Internal),
            ("100.64.0.1", Internal),
            ("fd12::1", Internal),
            ("::ffff:10.0.0.1", Internal),
            ("8.8.8.8", Public),
            ("2606:4700::1111", Public),
            ("100.128.0.1", Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn resolved_addresses_are_admitted_by_how_the_host_was_allowed() {
        let allow = list(&["alertmanager.monitoring", "*.example.com", "10.2.0.0/16"]);
        let exact = allow.host_match("alertmanager.monitoring");
        let pattern = allow.host_match("x.example.com");
        // An exact name may reach a private ClusterIP, never metadata.
        assert!(allow.admits(ip("10.96.0.10"), exact));
        assert!(allow.admits(ip("8.8.8.8"), exact));
        assert!(!allow.admits(ip("169.254.169.254"), exact));
        assert!(!allow.admits(ip("::ffff:169.254.169.254"), exact));
        // A pattern reaches public addresses, internal ones only inside a listed range.
        assert!(allow.admits(ip("93.184.216.34"), pattern));
        assert!(!allow.admits(ip("10.96.0.10"), pattern));
        assert!(!allow.admits(ip("127.0.0.1"), pattern));
        assert!(allow.admits(ip("10.2.3.4"), pattern));
        // A literal address is allowed only by a range.
        assert!(allow.admits(ip("10.2.3.4"), None));
        assert!(!allow.admits(ip("10.3.0.1"), None));
        assert!(!allow.admits(ip("8.8.8.8"), None));
        // Even listed, forbidden addresses stay forbidden.
        let wide = list(&["0.0.0.0/0", "::/0"]);
        assert!(!wide.admits(ip("169.254.169.254"), None));
        assert!(!wide.admits(ip("fe80::1"), None));
        assert!(wide.admits(ip("127.0.0.1"), None));
    }

    #[test]
    fn v4_ranges_match_mapped_v6() {
        assert!(in_net(ip("::ffff:10.1.1.1"), ip("10.0.0.0"), 8));
        assert!(in_net(ip("10.1.1.1"), ip("10.0.0.0"), 8));
        assert!(!in_net(ip("11.1.1.1"), ip("10.0.0.0"), 8));
        assert!(in_net(ip("1.2.3.4"), ip("0.0.0.0"), 0));
        assert!(in_net(ip("fd00::1"), ip("fd00::"), 8));
    }

    fn outbound(hosts: &[&str]) -> Outbound {
        Outbound::new(OutboundConfig {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..OutboundConfig::default()
        })
        .expect("client")
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        let out = outbound(&["hooks.slack.com", "127.0.0.1"]);
        assert!(
            out.check_url("https://hooks.slack.com/services/T/B/secret")
                .is_ok()
        );
        assert!(out.check_url("http://127.0.0.1:9093/api/v2/alerts").is_ok());
        for url in [
            "https://evil.example/services/T/B/secret",
            "ftp://hooks.slack.com/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            "http://127.0.0.2/",
            "not a url",
        ] {
            let error = out.check_url(url).expect_err(url);
            assert_eq!(error.reason(), "UrlNotAllowed", "{url}");
            assert!(error.is_refused());
            assert!(!error.to_string().contains("secret"), "{error}");
            assert!(!error.to_string().contains("meta-data"), "{error}");
        }
        let error = out
            .check_url("https://evil.example/services/T/B/secret")
            .expect_err("denied");
        assert!(error.to_string().contains("evil.example"), "{error}");
        assert!(error.to_string().contains(ALLOW_FLAG), "{error}");
    }

    #[test]
    fn allow_adds_a_host() {
        let mut out = outbound(&[]);
        assert!(out.check_url("http://am.monitoring:9093/").is_err());
        out.allow("am.monitoring").expect("valid");
        assert!(out.check_url("http://am.monitoring:9093/").is_ok());
        assert!(out.allow("a/b/c").is_err());
        assert!(
            Outbound::new(OutboundConfig {
                allow_hosts: vec!["10.0.0.0/99".into()],
                ..OutboundConfig::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_what_the_list_does_not_admit() {
        let allow = Arc::new(list(&["localhost"]));
        let resolver = GuardedResolver {
            allow: allow.clone(),
        };
        let addrs: Vec<SocketAddr> = resolver
            .resolve("localhost".parse().expect("name"))
            .await
            .expect("loopback admitted for an exact name")
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
        // A name the list does not name is not even looked up.
        let error = match resolver.resolve("example.org".parse().expect("name")).await {
            Ok(_) => panic!("resolved an unlisted name"),
            Err(e) => e,
        };
        assert!(error.downcast_ref::<BlockedAddress>().is_some());
    }

    #[tokio::test]
    async fn a_name_the_resolver_blocks_is_refused_not_retried() {
        // The URL check passes (`localhost` listed) while the resolver's list, the one a
        // connection obeys, does not name it: the refusal must come back through
        // reqwest's error chain as `UrlNotAllowed`, not as a retryable connect error.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut out = outbound(&["127.0.0.1"]);
        out.allow = Arc::new(list(&["localhost"]));
        let error = out
            .post_json(
                &format!("http://localhost:{port}/path/secret"),
                &[],
                &serde_json::json!({}),
            )
            .await
            .expect_err("blocked at resolution");
        assert!(error.is_refused(), "{error:?}");
        assert_eq!(error.reason(), "UrlNotAllowed");
        assert!(error.to_string().contains("localhost:"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_three_times_with_backoff() {
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let result: Result<(), ActError> = with_retries(|| {
            calls += 1;
            async { Err(ActError::failed("WebhookServerError", "500")) }
        })
        .await;
        assert_eq!(result.expect_err("fails").reason(), "WebhookServerError");
        assert_eq!(calls, 3);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));

        let mut calls = 0;
        let result: Result<(), ActError> = with_retries(|| {
            calls += 1;
            async { Err(ActError::failed("WebhookRejected", "400")) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1, "a rejection is not retried");

        let mut calls = 0;
        let result = with_retries(|| {
            calls += 1;
            let n = calls;
            async move {
                if n < 2 {
                    Err(ActError::failed("WebhookTimeout", "slow"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.expect("second attempt"), 2);
    }

    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(excerpt(b""), "");
        assert_eq!(excerpt(b" no_text "), ": no_text");
        assert_eq!(excerpt(&[b'x'; 1000]).len(), 202);
    }
}
