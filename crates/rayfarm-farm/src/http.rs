//! How the manager serves HTTP: the limits every request and connection lives under, and the
//! accept loop that enforces the connection limits.
//!
//! This module owns the transport only: it knows nothing of jobs or of the farm key (the API's
//! bearer check is a layer in [`crate::api`]). What it guarantees, whatever clients do:
//!
//! - a request is first put to the server's [`Gate`] (the API's: the farm's token) on its
//!   headers alone: a refused one is answered at once and its body is never read, so a client
//!   without the token cannot make the server hold a body (nor wait for one);
//! - at most [`HttpLimits::max_concurrent_requests`] requests run at once (the others wait),
//!   counted from before their bodies are read;
//! - a request body is at most [`HttpLimits::max_body_bytes`] (413 beyond, at once when its
//!   `Content-Length` says so), copied into one buffer as it arrives (a body sent one byte per
//!   chunk costs its size, not a buffer per chunk), and read whole before any handler runs, so
//!   a handler that ignores it never leaves the connection unusable for the client's next
//!   request;
//! - a request that has not been answered after [`HttpLimits::request_timeout`] gets 408;
//! - at most [`HttpLimits::max_connections`] connections are open. A newcomer beyond that is
//!   let in and the oldest *idle* connection (no request in flight; a client that connected and
//!   said nothing, or sent half a header, counts as idle) is closed, or the oldest connection
//!   when none is idle. So a flood of silent connections cannot keep a real client out;
//! - a connection with no request in flight for [`HttpLimits::idle_timeout`] is closed, and so
//!   is one whose request headers take longer than [`HttpLimits::header_read_timeout`];
//! - an accept error (out of file descriptors, say) pauses accepting for a moment instead of
//!   spinning;
//! - connections closed to keep the limits are logged at most once per [`LOG_EVERY`], with a
//!   count, never one line per connection.
//!
//! With a certificate and key ([`load_tls`]), connections speak TLS (rustls) first; the
//! handshake must finish within [`HttpLimits::header_read_timeout`] and a connection still
//! handshaking can be evicted like an idle one.
//!
//! Shutdown: [`serve`] returns when `stop` flips to `true`; each connection task watches the same
//! channel, finishes the request in flight (at most [`SHUTDOWN_GRACE`]) and closes.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// A connection-limit or accept-error log line is written at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after an accept error (EMFILE and friends), so the loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a connection closed for shutdown or eviction may take to finish its request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The HTTP limits; PROTOCOL.md lists them with these defaults.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request body (submit and register bodies are small JSON).
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait their turn (and time out after `request_timeout`).
    pub max_concurrent_requests: usize,
    /// A request not answered within this gets 408.
    pub request_timeout: Duration,
    /// Open HTTP connections; beyond this the oldest idle one is closed for a newcomer.
    pub max_connections: usize,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// The most bytes a connection buffers while it reads a request's head (larger heads get
    /// 431): 300 clients each holding about 390 KB of unfinished headers took a manager from
    /// 17 to 146 MB under hyper's default of about 400 KB.
    pub max_head_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 64,
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
            idle_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 << 10,
        }
    }
}

/// Decides from a request's method, path and headers alone whether it may go on: `None` lets it
/// through, `Some(answer)` refuses it with that answer before its body is read (see
/// [`serve`]). The manager's API passes one that checks the farm's token
/// ([`crate::api::token_gate`]), the live view on loopback one that checks `Host` and
/// `Origin` ([`crate::live`]).
pub type Gate =
    Arc<dyn Fn(&axum::http::request::Parts) -> Option<axum::response::Response> + Send + Sync>;

/// Wraps `app` in the per-request limits: body size and timeout. (Concurrency is counted in
/// [`serve`]'s connections, before the body is read.)
pub fn limit_requests(app: Router, limits: &HttpLimits) -> Router {
    app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ))
    .layer(tower_http::limit::RequestBodyLimitLayer::new(
        limits.max_body_bytes,
    ))
    // axum's own Json limit (2 MiB) would otherwise be the one that answers.
    .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
}

/// Counts events and says how many happened at most once per [`LOG_EVERY`].
pub struct RateLog {
    what: &'static str,
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl RateLog {
    pub const fn new(what: &'static str) -> RateLog {
        RateLog {
            what,
            count: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Records one event; logs the count so far when the last line is old enough.
    pub fn event(&self, detail: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let n = self.count.swap(0, Ordering::Relaxed);
        tracing::warn!(
            "HTTP: {n} {} in the last {} s (latest: {detail})",
            self.what,
            LOG_EVERY.as_secs()
        );
    }
}

/// One open connection, as the accept loop sees it.
struct ConnState {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request start or end (or the accept).
    last_active_ms: AtomicU64,
    close: Notify,
}

/// The open connections, oldest first (ids only grow).
struct Conns {
    epoch: Instant,
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection; when that makes more than `max`, picks one to close: the
    /// oldest idle one, else the oldest. Returns the new connection and whether one was closed.
    fn admit(&self, id: u64, max: usize) -> (Arc<ConnState>, bool) {
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = false;
        while open.len() >= max.max(1) {
            let victim = open
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                .or_else(|| open.iter().next())
                .map(|(id, _)| *id);
            let Some(victim) = victim else { break };
            if let Some(c) = open.remove(&victim) {
                // notify_one keeps the permit if the task is not waiting yet.
                c.close.notify_one();
                evicted = true;
            }
        }
        open.insert(id, state.clone());
        (state, evicted)
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Marks a request in flight on its connection until dropped.
struct InFlight(Arc<ConnState>, Arc<Conns>);

impl InFlight {
    fn new(c: Arc<ConnState>, conns: Arc<Conns>) -> InFlight {
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        c.last_active_ms.store(conns.now_ms(), Ordering::Relaxed);
        InFlight(c, conns)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .last_active_ms
            .store(self.1.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle on a running [`serve`], for tests: how many connections are open.
#[derive(Clone)]
pub struct ServeStats(Arc<Conns>);

impl ServeStats {
    pub fn open_connections(&self) -> usize {
        self.0.len()
    }
}

/// Why [`load_tls`] could not make a TLS identity; messages name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read a PEM certificate chain: {reason}", cert.display())]
    Cert {
        cert: std::path::PathBuf,
        reason: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", cert.display())]
    NoCert { cert: std::path::PathBuf },
    #[error("{}: cannot read a PEM private key: {reason}", key.display())]
    Key {
        key: std::path::PathBuf,
        reason: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("TLS: {0}")]
    Protocols(tokio_rustls::rustls::Error),
    #[error("{} and {}: the certificate and key do not make a TLS identity: {reason}", cert.display(), key.display())]
    Identity {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        reason: tokio_rustls::rustls::Error,
    },
}

/// A TLS server configuration from a PEM certificate chain and a PEM private key; errors name
/// the file at fault.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, TlsError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|reason| TlsError::Cert {
            cert: cert.to_path_buf(),
            reason,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            cert: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|reason| TlsError::Key {
        key: key.to_path_buf(),
        reason,
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Protocols)?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|reason| TlsError::Identity {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What every connection of one [`serve`] shares: the app, its gate, the request permits.
#[derive(Clone)]
struct Shared {
    app: Router,
    gate: Option<Gate>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Serves `app` on `listener` under `limits` (over TLS with `tls`) until `stop` flips to
/// `true`, putting each request to `gate` first. Returns a [`ServeStats`] at once and the
/// serving future to await.
pub fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    gate: Option<Gate>,
    stop: watch::Receiver<bool>,
) -> (ServeStats, impl std::future::Future<Output = ()> + Send) {
    let conns = Arc::new(Conns {
        epoch: Instant::now(),
        open: Mutex::new(BTreeMap::new()),
    });
    let stats = ServeStats(conns.clone());
    let shared = Shared {
        app: limit_requests(app, &limits),
        gate,
        permits: Arc::new(tokio::sync::Semaphore::new(
            limits.max_concurrent_requests.max(1),
        )),
    };
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    (
        stats,
        accept_loop(listener, shared, limits, tls, conns, stop),
    )
}

async fn accept_loop(
    listener: TcpListener,
    app: Shared,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: Arc<Conns>,
    mut stop: watch::Receiver<bool>,
) {
    static EVICTIONS: RateLog =
        RateLog::new("connection(s) closed to admit newer ones (the connection limit is reached)");
    static ACCEPT_ERRORS: RateLog = RateLog::new("accept error(s)");
    static HANDSHAKES: RateLog = RateLog::new("TLS handshake(s) failed or timed out");
    let mut next_id = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                ACCEPT_ERRORS.event(&e.to_string());
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let (state, evicted) = conns.admit(id, limits.max_connections);
        if evicted {
            EVICTIONS.event(&format!("admitting {peer}"));
        }
        let (app, conns, stop, limits) = (app.clone(), conns.clone(), stop.clone(), limits.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, app, &limits, state.clone(), conns.clone(), stop).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => r,
                        // Evicted while handshaking.
                        _ = state.close.notified() => {
                            conns.remove(id);
                            return;
                        }
                    };
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            connection(tls_stream, app, &limits, state.clone(), conns.clone(), stop)
                                .await
                        }
                        Ok(Err(e)) => HANDSHAKES.event(&format!("{peer}: {e}")),
                        Err(_) => HANDSHAKES.event(&format!("{peer}: no handshake in time")),
                    }
                }
            }
            conns.remove(id);
        });
    }
}

/// An answer that also closes the connection (its request's body is left unread).
fn refuse(status: axum::http::StatusCode, why: &str) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    let mut r = (status, why.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether a request announces a body (a `Content-Length` above 0, or any transfer coding).
pub(crate) fn announces_body(parts: &axum::http::request::Parts) -> bool {
    use axum::http::header;
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Why [`collect_body`] stopped.
#[derive(Debug, PartialEq)]
enum BodyError {
    TooLarge,
    Broken,
}

/// Reads `body` whole into one buffer, at most `max` bytes. Each frame is copied and dropped as
/// it arrives: keeping the frames themselves (as `axum::body::to_bytes` does) kept each one's
/// read buffer alive, so a body sent one byte per chunk cost tens of bytes of memory per byte.
async fn collect_body<B>(body: B, max: usize) -> Result<Vec<u8>, BodyError>
where
    B: hyper::body::Body + Unpin,
{
    use hyper::body::Buf;
    let mut body = body;
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else {
            return Ok(out);
        };
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue; // trailers
        };
        if data.remaining() > max - out.len() {
            return Err(BodyError::TooLarge);
        }
        let mut data = data;
        while data.has_remaining() {
            let chunk = data.chunk();
            out.extend_from_slice(chunk);
            let n = chunk.len();
            data.advance(n);
        }
    }
}

/// Gets a request ready for the app: puts it to the gate, takes a request permit, and reads its
/// whole body (at most `max` bytes; the permit and the body within `timeout`) before any handler
/// runs. A handler that ignores the body (pause, resume) would otherwise answer while part of it
/// is still unread, and hyper then closes the connection after the answer: a keep-alive client
/// that reuses it loses its next request ("peer disconnected"). Reading it here keeps every
/// connection reusable, and a refused body closes the connection and says so. The permit is
/// returned with the request and held until its answer is made.
async fn admit(
    req: hyper::Request<Incoming>,
    shared: &Shared,
    max: usize,
    timeout: Duration,
) -> Result<(axum::extract::Request, tokio::sync::OwnedSemaphorePermit), axum::response::Response> {
    use axum::http::{header, HeaderValue, StatusCode};
    let (parts, body) = req.into_parts();
    if let Some(gate) = &shared.gate {
        if let Some(mut refused) = gate(&parts) {
            if announces_body(&parts) {
                refused
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Err(refused);
        }
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over the limit of {max} bytes"),
        )
    };
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let read = async {
        let permit = shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the request semaphore is never closed");
        (permit, collect_body(body, max).await)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok((permit, Ok(bytes))) => Ok((
            axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)),
            permit,
        )),
        Ok((_, Err(BodyError::TooLarge))) => Err(too_large()),
        Ok((_, Err(BodyError::Broken))) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the request body was cut short",
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time (or the server is busy)",
        )),
    }
}

/// Serves one connection until the client closes it, it idles too long, the accept loop
/// evicts it, or the manager stops.
async fn connection<Io>(
    stream: Io,
    app: Shared,
    limits: &HttpLimits,
    state: Arc<ConnState>,
    conns: Arc<Conns>,
    mut stop: watch::Receiver<bool>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let (state, conns) = (state.clone(), conns.clone());
        let (max_body, body_timeout) = (limits.max_body_bytes, limits.request_timeout);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = InFlight::new(state.clone(), conns.clone());
            let shared = app.clone();
            async move {
                let r = match admit(req, &shared, max_body, body_timeout).await {
                    Ok((req, permit)) => {
                        let r = shared.app.clone().oneshot(req).await;
                        drop(permit);
                        r
                    }
                    Err(refused) => Ok(refused),
                };
                drop(guard);
                r
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let tick_every = (limits.idle_timeout / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(tick_every);
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let wind_down = loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            // Evicted for a newcomer: an idle connection goes at once, a busy one finishes.
            _ = state.close.notified() => {
                if state.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                break true;
            }
            _ = stop.changed() => break true,
            _ = tick.tick() => {
                let idle = state.in_flight.load(Ordering::Relaxed) == 0
                    && conns.now_ms().saturating_sub(state.last_active_ms.load(Ordering::Relaxed)) > idle_ms;
                if idle {
                    break false;
                }
            }
        }
    };
    if wind_down {
        // Lets a request in flight finish; an idle connection closes at once.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, ServeStats, watch::Sender<bool>) {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/ignore", post(|| async { "ignored" }))
            .route(
                "/echo",
                post(|body: String| async move { body.len().to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let (stats, fut) = serve(listener, app, limits, None, None, rx);
        tokio::spawn(fut);
        (addr, stats, tx)
    }

    /// One request on a fresh connection; the status line and body.
    async fn request(addr: std::net::SocketAddr, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The attack (no token needed): send a request head that never ends. A connection buffers
    /// at most `max_head_bytes` of it, then answers 431 and closes: 512 connections hold at
    /// most 32 MiB of unfinished heads, not 200 MB. An ordinary head passes.
    #[tokio::test]
    async fn an_unfinished_head_beyond_the_limit_is_refused() {
        let (addr, _stats, _stop) = start(HttpLimits::default()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
        let mut out = Vec::new();
        let mut sent = 0;
        // Less than hyper's default buffer (about 408 KiB), which waited for more: the head is
        // refused long before.
        while sent < 400 << 10 {
            if s.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            sent += line.len();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let r = String::from_utf8_lossy(&out);
        assert!(r.starts_with("HTTP/1.1 431"), "after {sent} bytes: {r:?}");
        let r = request(
            addr,
            &format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(8 << 10)
            ),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(200)]);
    }

    #[tokio::test]
    async fn silent_connections_beyond_the_limit_do_not_keep_a_client_out() {
        let limits = HttpLimits {
            max_connections: 8,
            ..Default::default()
        };
        let (addr, stats, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let r = request(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("ok"), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            stats.open_connections() <= 8,
            "{} connections open",
            stats.open_connections()
        );
    }

    /// A body that arrives after the handler could have answered (the handler ignores it) must
    /// not cost the client its keep-alive connection: the next request on it is answered.
    #[tokio::test]
    async fn a_late_body_that_the_handler_ignores_keeps_the_connection_usable() {
        let (addr, _stats, _stop) = start(HttpLimits::default()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"{}").await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answers within 5 s")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
        assert!(out.ends_with("ok"), "{out}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let limits = HttpLimits {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (addr, stats, _stop) = start(limits).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("the server closes an idle connection")
            .unwrap();
        assert_eq!(n, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stats.open_connections(), 0);
    }

    /// The attack: a client without the token announces a large body and sends it slowly (or
    /// never). The gate refuses it from its headers alone, at once, and closes the connection;
    /// before, the body was read (and held) first and the client got 408 after 30 s.
    #[tokio::test]
    async fn a_refused_request_is_answered_at_once_and_its_body_never_read() {
        let app = Router::new().route("/secret", post(|body: String| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, rx) = watch::channel(false);
        let gate: Gate = Arc::new(|parts| {
            let ok = parts.headers.get("x-token").is_some_and(|v| v == "right");
            (!ok).then(|| (axum::http::StatusCode::UNAUTHORIZED, "no").into_response())
        });
        let (_, fut) = serve(listener, app, HttpLimits::default(), None, Some(gate), rx);
        tokio::spawn(fut);
        let t = Instant::now();
        let r = request(
            addr,
            "POST /secret HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\nonly the start",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let r = request(
            addr,
            "POST /secret HTTP/1.1\r\nHost: x\r\nx-token: right\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
    }

    /// A body's bytes, each frame counted while it is alive.
    struct Tracked(Vec<u8>, Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl hyper::body::Buf for Tracked {
        fn remaining(&self) -> usize {
            self.0.len()
        }
        fn chunk(&self) -> &[u8] {
            &self.0
        }
        fn advance(&mut self, n: usize) {
            self.0.drain(..n);
        }
    }

    /// A body of `n` one-byte frames that counts how many of them are alive at once.
    struct OneByteFrames {
        left: usize,
        live: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    impl hyper::body::Body for OneByteFrames {
        type Data = Tracked;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Tracked>, Self::Error>>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(live, Ordering::SeqCst);
            let t = Tracked(vec![b'x'], self.live.clone());
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(t))))
        }
    }

    /// The attack: a body sent one byte per chunk. `axum::body::to_bytes` kept every chunk (and
    /// with it hyper's read buffer, about 40 bytes of memory per byte sent); each is now copied
    /// and dropped as it arrives.
    #[tokio::test]
    async fn a_body_in_one_byte_chunks_is_held_as_one_buffer() {
        let frames = |n| OneByteFrames {
            left: n,
            live: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        };
        let body = frames(5000);
        let peak = body.peak.clone();
        let got = collect_body(body, 5000).await.unwrap();
        assert_eq!(got, vec![b'x'; 5000]);
        assert_eq!(peak.load(Ordering::SeqCst), 1, "frames were kept");
        assert_eq!(
            collect_body(frames(5001), 5000).await,
            Err(BodyError::TooLarge)
        );
    }

    #[tokio::test]
    async fn a_large_body_is_refused_and_a_slow_request_times_out() {
        let limits = HttpLimits {
            max_body_bytes: 1000,
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (addr, _stats, _stop) = start(limits).await;
        let body = "x".repeat(5000);
        let r = request(
            addr,
            &format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        let r = request(
            addr,
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with('5'), "{r}");
        let r = request(
            addr,
            "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    }
}
