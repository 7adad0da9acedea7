//! The HTTP server loop: accepts connections and serves the router on each, with the
//! limits that keep one client from holding Prophet hostage. It owns connections, not
//! requests: what a request may carry is the router's business (`http.rs`).
//!
//! - **Header read timeout.** A request head must arrive in full within
//!   [`ServeLimits::header_read_timeout`] of the connection being ready for it (accepted,
//!   or done with its previous request: hyper starts the clock then), or the connection
//!   is closed. A client trickling a head byte by byte cannot hold a connection open.
//! - **Idle timeout.** A connection on which nothing was read or written for
//!   [`ServeLimits::idle_timeout`] is closed, unless a request is being handled (a
//!   remote-write waits silently for the evaluator; the router's own 30 s timeout
//!   bounds that). A response counts as idle when the client stops reading it.
//! - **Connection cap.** At most [`ServeLimits::max_connections`] connections are served
//!   at once, so descriptors run out here rather than in `accept` (where a full table
//!   leaves the listener unable to take even a probe). At the cap a new connection is
//!   still taken: the connection idle longest (no request being handled or answered,
//!   which includes one that has sent only part of a head) is closed to make room, so
//!   idle or stalled connections can never keep `/healthz` or a sender out. Only when
//!   every connection is in the middle of a request is the new one answered `503` and
//!   closed. (A registry rather than a semaphore: choosing whom to evict needs each
//!   connection's state.)
//! - **Shutdown.** When `shutdown` resolves the listener is closed, every connection is
//!   asked to finish (hyper's graceful shutdown: the request in flight is answered,
//!   idle connections close at once), and whatever is still open after
//!   [`ServeLimits::shutdown_grace`] is dropped, so [`serve`] always returns and the
//!   pipeline behind it can drain and save its state.
//!
//! - **TLS** ([`serve_tls`]). The handshake must end within the header-read timeout
//!   (a client stalling it holds nothing for longer than one stalling a head). HTTP/2 is
//!   served when the client chose it by ALPN, HTTP/1.1 otherwise; the limits above hold
//!   for both, and the header-read timeout is HTTP/1's (HTTP/2 has no request head to
//!   time; the idle timeout closes a silent HTTP/2 connection). A request on a
//!   connection whose client certificate was verified carries
//!   [`crate::auth::VerifiedClientCertificate`] in its extensions.
//!
//! Plain HTTP is HTTP/1.1 only (remote-write senders speak HTTP/1.1 to a plain-HTTP
//! endpoint, and guessing HTTP/2 from the first bytes would wait outside the header-read
//! timeout). Time here is the wall clock (tokio's), never event time: these limits are
//! about sockets, not samples.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The limits [`serve`] applies to connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a client has to send a whole request head, from the moment the
    /// connection is ready for one.
    pub header_read_timeout: Duration,
    /// How long a connection may stay silent while no request is being handled.
    pub idle_timeout: Duration,
    /// Connections served at once. Keep it well below the process's descriptor limit
    /// (`ulimit -n`): the state file, the listener and the runtime need some too.
    pub max_connections: usize,
    /// How long open connections get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// How long to wait before accepting again after `accept` failed (typically a full
/// descriptor table): long enough not to spin, short enough that a freed descriptor is
/// used promptly.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a connection refused at the cap is told.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Refused connections being answered at once; past this many, a refused connection is
/// closed without an answer, so refusing cannot itself hold many descriptors.
const MAX_REFUSING: usize = 64;

/// How long a refused connection is kept to deliver its `503`.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then closes the listener,
/// lets open connections finish for at most `limits.shutdown_grace` and drops the rest.
/// Returns once no connection is left; an error only if the listener's address cannot
/// be read. Failed `accept`s are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    serve_tls(listener, app, shutdown, limits, None).await
}

/// The HTTP/1.1 and HTTP/2 connection builders, one per protocol so that each
/// connection is served in the protocol it chose (ALPN) without sniffing its bytes.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

/// TLS for [`serve_tls`]: the configuration in force, and where failed handshakes are
/// counted (they never reach the router, so its counts cannot show them).
#[derive(Clone)]
pub struct TlsServing {
    pub tls: Arc<crate::tls::Tls>,
    pub handshake_failures: prometheus_client::metrics::counter::Counter,
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
    tls: Option<TlsServing>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let mut http1 = auto::Builder::new(TokioExecutor::new()).http1_only();
    http1
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut http2 = auto::Builder::new(TokioExecutor::new()).http2_only();
    http2.http2().timer(TokioTimer::new());
    let builder = Arc::new(Builders { http1, http2 });
    let registry = Arc::new(Registry::new(limits.max_connections.max(1)));
    let refusing = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set does not grow with every one ever served.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(addr = %local, %error, "cannot accept a connection; retrying");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let Some(conn) = registry.admit() else {
            // Debug, not warn: a flood of connections must not become a flood of logs.
            tracing::debug!(
                max_connections = limits.max_connections,
                "connection refused: every connection is in the middle of a request"
            );
            // Over TLS the connection is just closed: a plain-text 503 would reach a TLS
            // client as a broken handshake anyway.
            if tls.is_none()
                && let Some(refusal) = Refusal::start(&refusing)
            {
                connections.spawn(refuse(stream, refusal));
            }
            continue;
        };
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            builder.clone(),
            conn,
            limits,
            stopped.clone(),
            tls.as_ref()
                .map(|tls| (tls.tls.acceptor(), tls.handshake_failures.clone())),
        ));
    }

    drop(listener);
    let open = registry.len();
    tracing::info!(
        open,
        grace = ?limits.shutdown_grace,
        "listener closed; finishing open connections"
    );
    let _ = stop.send(true);
    let finished = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = connections.len(),
            "shutdown grace over: dropping the connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection until it ends, is found idle, is evicted to make room, or
/// shutdown's grace runs out (then the server aborts this task).
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    builders: Arc<Builders>,
    conn: Admitted,
    limits: ServeLimits,
    mut stopped: watch::Receiver<bool>,
    tls: Option<(
        tokio_rustls::TlsAcceptor,
        prometheus_client::metrics::counter::Counter,
    )>,
) {
    let _ = stream.set_nodelay(true);
    let tracked = Tracked {
        stream,
        conn: conn.state.clone(),
    };
    let Some((acceptor, handshake_failures)) = tls else {
        let service = CountInFlight::new(app, &conn, None);
        let connection = builders
            .http1
            .serve_connection(TokioIo::new(tracked), service);
        return drive(connection, &conn, limits, stopped).await;
    };
    // The handshake is bounded like a request head, and yields to eviction and shutdown.
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked));
    let stream = tokio::select! {
        shaken = handshake => match shaken {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                // Debug: a scanner or a sender with the wrong CA must not flood the log;
                // the count shows them.
                tracing::debug!(%error, "TLS handshake failed");
                handshake_failures.inc();
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake not done within the header-read timeout");
                handshake_failures.inc();
                return;
            }
        },
        () = conn.state.evict.notified() => return,
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    let session = stream.get_ref().1;
    // rustls verified any certificate the client sent against the client CA; one that
    // did not chain to it failed the handshake above.
    let certificate = session
        .peer_certificates()
        .is_some_and(|chain| !chain.is_empty())
        .then_some(crate::auth::VerifiedClientCertificate);
    let http2 = session.alpn_protocol() == Some(b"h2".as_slice());
    tracing::debug!(
        http2,
        client_certificate = certificate.is_some(),
        "TLS connection established"
    );
    let service = CountInFlight::new(app, &conn, certificate);
    let io = TokioIo::new(stream);
    if http2 {
        drive(
            builders.http2.serve_connection(io, service),
            &conn,
            limits,
            stopped,
        )
        .await;
    } else {
        drive(
            builders.http1.serve_connection(io, service),
            &conn,
            limits,
            stopped,
        )
        .await;
    }
}

/// Drives a connection until it ends, is found idle, is evicted or shutdown's grace runs
/// out; asks it to finish gracefully when shutdown begins.
async fn drive<C>(
    connection: C,
    conn: &Admitted,
    limits: ServeLimits,
    mut stopped: watch::Receiver<bool>,
) where
    C: GracefulConnection,
{
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        let idle_check = conn.state.idle_deadline(limits.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = stopped.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = conn.state.evict.notified() => {
                tracing::debug!("idle connection closed to make room for a new one");
                return;
            }
            () = tokio::time::sleep_until(idle_check), if !stopping => {
                if conn.state.is_idle(limits.idle_timeout) {
                    tracing::debug!("idle connection closed");
                    return;
                }
            }
        }
    }
}

/// A hyper-util connection of either protocol, over either transport.
trait GracefulConnection:
    Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
{
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I> GracefulConnection for auto::Connection<'_, I, CountInFlight, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

/// Answers a connection refused at the cap with `503` and closes it. The request the
/// client sent is read and discarded before closing: closing a socket with unread data
/// resets the connection, and the client would lose the answer.
async fn refuse(mut stream: TcpStream, _refusal: Refusal) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(AT_CAPACITY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One refused connection being answered, counted against [`MAX_REFUSING`].
struct Refusal(Arc<AtomicUsize>);

impl Refusal {
    fn start(refusing: &Arc<AtomicUsize>) -> Option<Self> {
        if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(refusing.clone()))
    }
}

impl Drop for Refusal {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections being served, for the cap and for choosing one to evict.
struct Registry {
    max: usize,
    /// When the server started: activity times are milliseconds since then.
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            max,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// A std mutex: nothing awaits while it is held, and it is held for a map update
    /// (or, at the cap, one scan of at most `max` entries).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // A panic while holding the lock leaves the map consistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection, first evicting the longest-idle one if the cap is
    /// reached. `None` when every open connection is in the middle of a request.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let victim = open
                .iter()
                .filter(|(_, conn)| conn.is_between_requests())
                .min_by_key(|(_, conn)| conn.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(evicted) = open.remove(&victim) {
                // Removed now, so the count is right at once; the task closes the socket
                // as soon as it runs. `notify_one` keeps the wake-up if it is not waiting.
                evicted.evicted.store(true, Ordering::Release);
                evicted.evict.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            handling: AtomicUsize::new(0),
            responding: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        state.touch();
        open.insert(id, state.clone());
        Some(Admitted {
            id,
            state,
            registry: self.clone(),
        })
    }
}

/// A connection's place in the registry; leaving it (the task ending, or being aborted
/// at the end of the shutdown grace) frees the place.
struct Admitted {
    id: u64,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.state.evicted.load(Ordering::Acquire) {
            self.registry.lock().remove(&self.id);
        }
    }
}

/// What the server knows about one connection.
struct ConnState {
    epoch: Instant,
    /// Requests being handled: from the head's arrival until the router has answered.
    handling: AtomicUsize,
    /// Responses being written: from the router's answer until hyper has taken the
    /// whole body (or dropped it).
    responding: AtomicUsize,
    /// Milliseconds since `epoch` at the last byte read or written.
    last_active_ms: AtomicU64,
    /// Set when evicted (and already removed from the registry).
    evicted: AtomicBool,
    evict: Notify,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When to look again whether the connection is idle: `idle` after its last
    /// activity, or, while a request is being handled (which may be silent for long,
    /// as a write waits for the evaluator), `idle` from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.handling.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.epoch + last + idle
    }

    /// Silent for `idle` with no request being handled. A response still being written
    /// to a client that stopped reading it counts as idle.
    fn is_idle(&self, idle: Duration) -> bool {
        let silent_ms = self
            .now_ms()
            .saturating_sub(self.last_active_ms.load(Ordering::Relaxed));
        self.handling.load(Ordering::Acquire) == 0 && u128::from(silent_ms) >= idle.as_millis()
    }

    /// No request being handled and no response being written: closing the connection
    /// loses no request Prophet has begun to handle.
    fn is_between_requests(&self) -> bool {
        self.handling.load(Ordering::Acquire) == 0 && self.responding.load(Ordering::Acquire) == 0
    }
}

/// The socket, noting each read and write as activity.
struct Tracked {
    stream: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router as a hyper service, counting each request as handled until the router
/// answers and as responding until its body is written, so a connection busy with a
/// slow request is never taken for idle nor evicted.
#[derive(Clone)]
struct CountInFlight {
    inner: TowerToHyperService<Router>,
    conn: Arc<ConnState>,
    certificate: Option<crate::auth::VerifiedClientCertificate>,
}

impl CountInFlight {
    fn new(
        app: Router,
        conn: &Admitted,
        certificate: Option<crate::auth::VerifiedClientCertificate>,
    ) -> Self {
        Self {
            inner: TowerToHyperService::new(app),
            conn: conn.state.clone(),
            certificate,
        }
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for CountInFlight {
    type Response = hyper::Response<CountedBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        if let Some(certificate) = self.certificate {
            request.extensions_mut().insert(certificate);
        }
        let handling = Stage::enter(&self.conn, |conn| &conn.handling);
        let conn = self.conn.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Responding before no longer handling: never both counts at zero between.
            let responding = Stage::enter(&conn, |conn| &conn.responding);
            drop(handling);
            Ok(response.map(|body| CountedBody {
                body,
                _responding: responding,
            }))
        })
    }
}

/// A request counted in one stage (handling or responding) of its connection, until
/// dropped.
struct Stage {
    conn: Arc<ConnState>,
    count: fn(&ConnState) -> &AtomicUsize,
}

impl Stage {
    fn enter(conn: &Arc<ConnState>, count: fn(&ConnState) -> &AtomicUsize) -> Self {
        count(conn).fetch_add(1, Ordering::AcqRel);
        conn.touch();
        Self {
            conn: conn.clone(),
            count,
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // The idle clock starts when a stage ends, not when it began.
        self.conn.touch();
        (self.count)(&self.conn).fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as responding until hyper has taken
/// all of it (or dropped it).
struct CountedBody {
    body: axum::body::Body,
    _responding: Stage,
}

impl hyper::body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn handling(conn: &Admitted) -> Stage {
        Stage::enter(&conn.state, |conn| &conn.handling)
    }

    fn responding(conn: &Admitted) -> Stage {
        Stage::enter(&conn.state, |conn| &conn.responding)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_when_silent_and_no_request_is_being_handled() {
        let registry = Arc::new(Registry::new(8));
        let conn = registry.admit().expect("room");
        let idle = Duration::from_secs(60);
        assert!(!conn.state.is_idle(idle));
        advance(idle).await;
        assert!(conn.state.is_idle(idle));

        // A request being handled (a write waiting for the evaluator) is never idle.
        let request = handling(&conn);
        advance(idle * 10).await;
        assert!(!conn.state.is_idle(idle));
        assert!(conn.state.idle_deadline(idle) >= Instant::now() + idle);

        // Its response, once the client stops reading it, is.
        let response = responding(&conn);
        drop(request);
        assert!(!conn.state.is_idle(idle), "the idle clock starts afresh");
        advance(idle).await;
        assert!(conn.state.is_idle(idle));
        assert!(!conn.state.is_between_requests());
        drop(response);
        assert!(conn.state.is_between_requests());
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let registry = Arc::new(Registry::new(3));
        let busy = registry.admit().expect("room");
        let _busy_request = handling(&busy);
        advance(Duration::from_secs(1)).await;
        let older = registry.admit().expect("room");
        advance(Duration::from_secs(1)).await;
        let newer = registry.admit().expect("room");

        // The busy one is the oldest, but it is in the middle of a request.
        let fourth = registry.admit().expect("an idle connection makes room");
        assert!(older.state.evicted.load(Ordering::Acquire));
        assert!(!busy.state.evicted.load(Ordering::Acquire));
        assert!(!newer.state.evicted.load(Ordering::Acquire));
        assert_eq!(registry.len(), 3);

        // A response still being written is not evicted either.
        let _newer_response = responding(&newer);
        let _fourth_request = handling(&fourth);
        assert!(registry.admit().is_none(), "every connection is busy");
        assert_eq!(registry.len(), 3);

        // A connection that ends frees its place; an evicted one already had.
        drop(older);
        assert_eq!(registry.len(), 3);
        drop(busy);
        assert_eq!(registry.len(), 2);
        assert!(registry.admit().is_some());
    }
}
