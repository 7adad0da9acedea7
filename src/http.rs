//! The HTTP surface: axum routers for `POST /api/v1/write`, `/metrics`, `/healthz`,
//! `/readyz` and the read-only JSON endpoints. Handlers translate between HTTP and the
//! stages (ingest, route, eval); no decoding or rule logic lives here.
//!
//! Two surfaces ([`ingest_router`], [`probes_router`]), one listener each when
//! `--metrics-listen` is given, or one router for both ([`router`] when nothing is
//! configured). The ingest surface's write and JSON routes sit behind the credential
//! [`Gate`]: a request without an accepted credential is answered `401` from its headers
//! alone, before its body is read or decompressed. Probes never need a credential (the
//! kubelet has none).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router as HttpRouter;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower_http::timeout::TimeoutLayer;

use crate::actuate::{Decision, DecisionLog};
use crate::auth::{Gate, VerifiedClientCertificate};
use crate::eval::{EvalHandle, RuleSnapshot, SubmitError};
use crate::ha::{Admission, HaCounts, HaTracker};
use crate::ingest::{self, DecodeStats, IngestError, Limits, Protocol, SnappyBuffer};
use crate::metrics::{Metrics, RequestLabels};
use crate::review::{MetricsReviewer, Review};
use crate::route::{Batch, Router};
use crate::rules::load::RuleKey;

/// A rule as loading and compiling left it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    pub rule: RuleKey,
    /// `active`, `invalid` or `unsupported`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `metadata.generation` of the resource this was compiled from (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// A YAML document that did not load as a rule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidDocument {
    pub origin: String,
    pub reason: String,
}

/// The rule set as loading and compiling left it, for `GET /api/v1/rules`.
#[derive(Debug, Clone, Default)]
pub struct RuleListing {
    pub rules: Vec<RuleStatus>,
    pub invalid_documents: Vec<InvalidDocument>,
}

/// State shared by the handlers.
pub struct AppState {
    pub limits: Limits,
    /// The current rule set's index; swapped whole when the rules change.
    pub router: RwLock<Arc<Router>>,
    pub eval: EvalHandle,
    /// HA pairs' elections: which replica's samples are accepted per cluster.
    pub ha: HaTracker,
    pub metrics: Arc<Metrics>,
    pub decisions: DecisionLog,
    pub listing: RwLock<Arc<RuleListing>>,
    pub ready: AtomicBool,
    /// Compressed request bytes that may be held at once, in KiB (see
    /// [`Limits::max_bytes_in_flight`]).
    pub bodies_in_flight: tokio::sync::Semaphore,
}

/// The permits of [`AppState::bodies_in_flight`]: the budget, but never less than one
/// body of the largest size accepted (which would then never be read).
pub fn in_flight_budget(limits: &Limits) -> tokio::sync::Semaphore {
    let bytes = limits.max_bytes_in_flight.max(max_body_bytes(limits));
    tokio::sync::Semaphore::new(
        bytes
            .div_ceil(1024)
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    )
}

impl AppState {
    /// The router requests are routed with now.
    pub fn current_router(&self) -> Arc<Router> {
        // std RwLock: held only to clone or swap an Arc, never across an await.
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The rules as last loaded.
    pub fn current_listing(&self) -> Arc<RuleListing> {
        self.listing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes a new rule set visible: its router (requests routed from now on use it) and
    /// its listing.
    pub fn swap_rules(&self, router: Arc<Router>, listing: RuleListing) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = router;
        *self.listing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(listing);
    }
}

/// Protocol label for requests refused before their protocol was known.
const UNKNOWN_VERSION: &str = "unknown";

/// Builds the router of every endpoint, with no credential required: Prophet as it runs
/// when nothing about authentication is configured (and the router tests drive).
pub fn router(state: Arc<AppState>) -> HttpRouter {
    ingest_router(
        state,
        Arc::new(Gate::open()),
        true,
        Some(MetricsAccess::Open),
    )
}

/// Who may read `/metrics`.
#[derive(Clone, Default)]
pub enum MetricsAccess {
    /// Anyone (the default: Prometheus scrapes it without credentials).
    #[default]
    Open,
    /// Callers whose Kubernetes bearer token may `get` the non-resource URL `/metrics`.
    Reviewed(Arc<MetricsReviewer>),
}

/// The ingest surface: `POST /api/v1/write` and, with `api`, the JSON endpoints, both
/// behind `gate`; with `probes`, also the probes (open) and `/metrics` (as it says), for
/// when they have no listener of their own.
pub fn ingest_router(
    state: Arc<AppState>,
    gate: Arc<Gate>,
    api: bool,
    probes: Option<MetricsAccess>,
) -> HttpRouter {
    let guarded = (state.clone(), gate.clone());
    let mut router = HttpRouter::new().route(
        "/api/v1/write",
        post(write).route_layer(axum::middleware::from_fn_with_state(
            guarded.clone(),
            require_write_credential,
        )),
    );
    if api {
        let api = HttpRouter::new()
            .route("/api/v1/rules", get(rules))
            .route("/api/v1/decisions", get(decisions))
            .route_layer(axum::middleware::from_fn_with_state(
                guarded,
                require_api_credential,
            ));
        router = router.merge(api);
    }
    if let Some(access) = probes {
        router = router.merge(probe_routes(access));
    }
    limit(router).with_state(state)
}

/// The probes and metrics surface: `/healthz` and `/readyz` with no credential, and
/// `/metrics` as `access` says.
pub fn probes_router(state: Arc<AppState>, access: MetricsAccess) -> HttpRouter {
    limit(probe_routes(access)).with_state(state)
}

fn probe_routes(access: MetricsAccess) -> HttpRouter<Arc<AppState>> {
    let metrics_route = match access {
        MetricsAccess::Open => get(metrics),
        MetricsAccess::Reviewed(reviewer) => get(metrics).route_layer(
            axum::middleware::from_fn_with_state(reviewer, require_metrics_reader),
        ),
    };
    HttpRouter::new()
        .route("/metrics", metrics_route)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

/// Admits a `/metrics` request whose bearer token the API server says may get
/// `/metrics`: `401` without a token or with one it does not know, `403` for a user
/// without the grant, `503` when the API server cannot be asked (the scrape is retried).
async fn require_metrics_reader(
    State(reviewer): State<Arc<MetricsReviewer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return challenge_bearer((StatusCode::UNAUTHORIZED, "unauthorized\n").into_response());
    };
    match reviewer.review(token).await {
        Ok(Review::Allowed) => next.run(request).await,
        Ok(Review::Unauthenticated) => {
            challenge_bearer((StatusCode::UNAUTHORIZED, "unauthorized\n").into_response())
        }
        Ok(Review::Forbidden) => (StatusCode::FORBIDDEN, "forbidden\n").into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot review a /metrics caller's token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot review the token now\n",
            )
                .into_response()
        }
    }
}

fn challenge_bearer(mut response: Response) -> Response {
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="prophet-metrics""#),
    );
    response
}

/// Body-size and time limits shared by every surface.
fn limit(router: HttpRouter<Arc<AppState>>) -> HttpRouter<Arc<AppState>> {
    router
        // The write handler enforces its own body limit, so that the refusal is answered
        // (and counted) like every other one.
        .layer(DefaultBodyLimit::disable())
        // 503, not 408: Prometheus retries a 5xx, while a 4xx would drop the samples.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
}

/// The `401` a refused request gets, with one `WWW-Authenticate` challenge per scheme
/// accepted.
fn unauthorized(gate: &Gate, mut response: Response) -> Response {
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    for challenge in gate.challenges() {
        response
            .headers_mut()
            .append(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// Admits a write by its credential, or answers `401` without reading its body, counted
/// in `prophet_remote_write_requests_total{code="401"}` under the protocol its headers
/// name. What was presented is never logged.
async fn require_write_credential(
    State((state, gate)): State<(Arc<AppState>, Arc<Gate>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<VerifiedClientCertificate>()
        .copied();
    let Err(refusal) = gate.check(request.headers(), certificate) else {
        return next.run(request).await;
    };
    tracing::debug!(
        reason = refusal.as_str(),
        "remote-write request refused: unauthorized"
    );
    let protocol = header(request.headers(), CONTENT_TYPE)
        .ok()
        .and_then(|content_type| ingest::negotiate(content_type, None).ok());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            version: protocol.map_or(UNKNOWN_VERSION, Protocol::as_str),
            code: StatusCode::UNAUTHORIZED.as_u16(),
        })
        .inc();
    let response = WriteResponse {
        protocol,
        status: StatusCode::UNAUTHORIZED,
        stats: DecodeStats::default(),
        message: Some("unauthorized".to_owned()),
        retry_after: false,
    };
    unauthorized(&gate, response.into_response())
}

/// The JSON endpoints name series labels and every decision: the same credential as a
/// write is asked for.
async fn require_api_credential(
    State((_, gate)): State<(Arc<AppState>, Arc<Gate>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<VerifiedClientCertificate>()
        .copied();
    match gate.check(request.headers(), certificate) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::debug!(
                reason = refusal.as_str(),
                "API request refused: unauthorized"
            );
            unauthorized(&gate, "unauthorized\n".into_response())
        }
    }
}

thread_local! {
    /// Decompression buffer per worker thread, reused across requests.
    static DECOMPRESSED: RefCell<SnappyBuffer> = RefCell::new(SnappyBuffer::new());
}

/// Keeps an exceptional request's buffer from pinning memory on its thread.
const RETAINED_BUFFER_MAX: usize = 8 << 20;

/// A request's answer; 2.0 answers carry the written counts, whatever the status.
struct WriteResponse {
    protocol: Option<Protocol>,
    status: StatusCode,
    stats: DecodeStats,
    message: Option<String>,
    retry_after: bool,
}

impl IntoResponse for WriteResponse {
    fn into_response(self) -> Response {
        let mut response = match self.message {
            Some(message) => (self.status, format!("{message}\n")).into_response(),
            None => self.status.into_response(),
        };
        let headers = response.headers_mut();
        if self.protocol == Some(Protocol::V2) {
            for (name, n) in [
                (
                    "x-prometheus-remote-write-samples-written",
                    self.stats.samples,
                ),
                (
                    "x-prometheus-remote-write-histograms-written",
                    self.stats.histograms,
                ),
                (
                    "x-prometheus-remote-write-exemplars-written",
                    self.stats.exemplars,
                ),
            ] {
                headers.insert(name, HeaderValue::from(n));
            }
        }
        if self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn status_of(error: &IngestError) -> StatusCode {
    match error {
        IngestError::UnsupportedMediaType(_)
        | IngestError::UnsupportedProto(_)
        | IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IngestError::TooLarge { .. }
        | IngestError::KeptLabelsTooLarge { .. }
        | IngestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn header(headers: &HeaderMap, name: axum::http::HeaderName) -> Result<Option<&str>, IngestError> {
    headers
        .get(&name)
        .map(|v| {
            v.to_str()
                .map_err(|_| IngestError::UnsupportedMediaType(format!("non-ASCII {name} header")))
        })
        .transpose()
}

/// What a request's series were, by HA fate (see [`crate::ha`]).
struct HaOutcome {
    counts: HaCounts,
    /// Why its first dropped series was dropped.
    refusal: Option<String>,
}

/// Decompresses, decodes, validates, deduplicates HA replicas and routes one request:
/// all or nothing (an HA election it caused stands, even if the request is refused).
fn ingest_body(
    state: &AppState,
    protocol: Protocol,
    body: &[u8],
    arrived: Instant,
) -> Result<(DecodeStats, Batch, HaOutcome), IngestError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    DECOMPRESSED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let result = buffer
            .decompress(body, state.limits.max_decoded_bytes)
            .and_then(|decoded| {
                let router = state.current_router();
                let mut batch = Batch::new(arrived, now_ms, state.limits.max_kept_label_bytes);
                let mut ha = state.ha.request(arrived);
                let stats =
                    ingest::decode(protocol, decoded, &state.limits, now_ms, |series| match ha
                        .admit(series)
                    {
                        Admission::Keep { strip } => {
                            router.route_stripped(series, strip, &mut batch)
                        }
                        Admission::Duplicate => Ok(()),
                    })?;
                let ha = HaOutcome {
                    counts: ha.counts,
                    refusal: ha.refusal().map(str::to_owned),
                };
                Ok((stats, batch, ha))
            });
        if buffer.capacity() > RETAINED_BUFFER_MAX {
            *buffer = SnappyBuffer::new();
        }
        result
    })
}

/// The largest compressed body that can decode within `max_decoded_bytes`: snappy's
/// worst case for n bytes is 32 + n + n/6.
fn max_body_bytes(limits: &Limits) -> usize {
    32 + limits.max_decoded_bytes + limits.max_decoded_bytes / 6
}

async fn read_body(body: Body, limits: &Limits) -> Result<Bytes, IngestError> {
    let limit = max_body_bytes(limits);
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        // http-body's length-limit error is the only one that names its limit.
        if error.to_string().contains("length limit") {
            IngestError::BodyTooLarge { limit }
        } else {
            IngestError::Body(error.to_string())
        }
    })
}

async fn write(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> WriteResponse {
    let arrived = Instant::now();
    let content_type = header(&headers, CONTENT_TYPE);
    let negotiated = content_type.clone().and_then(|content_type| {
        ingest::negotiate(content_type, header(&headers, CONTENT_ENCODING)?)
    });
    let response = match negotiated {
        // A 2.0 sender refused for its encoding still gets the 2.0 headers.
        Err(error) => refuse(
            content_type
                .ok()
                .and_then(|ct| ingest::negotiate(ct, None).ok()),
            error,
        ),
        Ok(protocol) => 'read: {
            // The body's bytes are reserved before it is read: uploads in flight are
            // bounded in total, not only each one.
            let limit = max_body_bytes(&state.limits);
            let declared = headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .unwrap_or(limit)
                .min(limit);
            let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
            let Ok(_reserved) = state.bodies_in_flight.try_acquire_many(kib) else {
                break 'read WriteResponse {
                    protocol: Some(protocol),
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    stats: DecodeStats::default(),
                    message: Some(format!(
                        "more than {} MiB of request bodies are being received; retry",
                        state.limits.max_bytes_in_flight >> 20
                    )),
                    retry_after: true,
                };
            };
            let ingested = match read_body(body, &state.limits).await {
                Ok(body) => ingest_body(&state, protocol, &body, arrived),
                Err(error) => Err(error),
            };
            // The body is gone here: a request waiting for the evaluator holds only its
            // (small) batch.
            match ingested {
                Err(error) => refuse(Some(protocol), error),
                Ok((stats, batch, ha)) => commit(&state, protocol, stats, batch, ha).await,
            }
        }
    };
    let version = response.protocol.map_or(UNKNOWN_VERSION, Protocol::as_str);
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            version,
            code: response.status.as_u16(),
        })
        .inc();
    response
}

fn refuse(protocol: Option<Protocol>, error: IngestError) -> WriteResponse {
    tracing::debug!(kind = error.kind(), %error, "remote-write request refused");
    WriteResponse {
        protocol,
        status: status_of(&error),
        stats: DecodeStats::default(),
        message: Some(error.to_string()),
        retry_after: false,
    }
}

/// Hands the batch to the evaluator and waits until it is applied. A request whose
/// samples were all an HA replica's that is not elected is answered `202` (as Cortex and
/// Mimir answer it; Prometheus takes any 2xx as written) with the reason.
async fn commit(
    state: &AppState,
    protocol: Protocol,
    stats: DecodeStats,
    batch: Batch,
    ha: HaOutcome,
) -> WriteResponse {
    let unmatched = batch.unmatched_samples;
    let kept = batch.kept_samples;
    let all_duplicates = ha.counts.duplicate > 0 && ha.counts.duplicate == stats.samples;
    let mut response = WriteResponse {
        protocol: Some(protocol),
        status: if all_duplicates {
            StatusCode::ACCEPTED
        } else {
            StatusCode::NO_CONTENT
        },
        stats,
        message: ha.refusal.filter(|_| all_duplicates),
        retry_after: false,
    };
    if !batch.entries.is_empty() {
        let applied = match state.eval.submit(batch) {
            Ok(applied) => applied.await.unwrap_or(Err(SubmitError::Stopped)),
            Err(e) => Err(e),
        };
        if let Err(error) = applied {
            state.metrics.count_samples("rejected", kept);
            response.status = StatusCode::SERVICE_UNAVAILABLE;
            response.stats = DecodeStats::default();
            response.message = Some(error.to_string());
            response.retry_after = true;
            return response;
        }
    }
    state.metrics.count_samples("accepted", kept);
    state.metrics.count_samples("unmatched", unmatched);
    state
        .metrics
        .count_samples("duplicate", ha.counts.duplicate);
    state.metrics.count_ha(&ha.counts);
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.eval.is_running() {
        (StatusCode::SERVICE_UNAVAILABLE, "evaluator stopped")
    } else if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleView {
    #[serde(flatten)]
    status: RuleStatus,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    live: Option<RuleSnapshot>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RulesResponse {
    rules: Vec<RuleView>,
    invalid_documents: Vec<InvalidDocument>,
}

async fn rules(State(state): State<Arc<AppState>>) -> Response {
    let live = match state.eval.snapshot().await {
        Ok(live) => live,
        Err(error) => return (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    };
    let listing = state.current_listing();
    let rules = listing
        .rules
        .iter()
        .map(|status| RuleView {
            status: status.clone(),
            live: live.iter().find(|s| s.rule == status.rule).cloned(),
        })
        .collect();
    Json(RulesResponse {
        rules,
        invalid_documents: listing.invalid_documents.clone(),
    })
    .into_response()
}

#[derive(Serialize)]
struct DecisionsResponse {
    decisions: Vec<Decision>,
}

/// Most decisions one answer holds: the log keeps up to `--decisions-kept`, and a
/// reader asking for all of them at once, several at a time, held hundreds of MB.
const DECISIONS_PAGE_MAX: usize = 1000;

/// `GET /api/v1/decisions?since=ID&limit=N`.
#[derive(serde::Deserialize)]
struct DecisionsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

async fn decisions(
    State(state): State<Arc<AppState>>,
    Query(query): Query<DecisionsQuery>,
) -> Json<DecisionsResponse> {
    let limit = query
        .limit
        .unwrap_or(DECISIONS_PAGE_MAX)
        .clamp(1, DECISIONS_PAGE_MAX);
    Json(DecisionsResponse {
        decisions: state.decisions.page(query.since, limit),
    })
}
