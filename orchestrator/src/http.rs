//! The HTTP API: health, readiness, channel status, restarts, Prometheus
//! metrics and the lifecycle event stream.
//!
//! | method | path | answer |
//! |--------|------|--------|
//! | GET | `/healthz` | 200 `ok` |
//! | GET | `/readyz` | 200 `ready`, or 503 listing the others |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/api/v1/info` | 200 `{"version", "writes", "auth", "writes_refused"}` |
//! | GET | `/api/v1/openapi.json` | 200 this API's OpenAPI 3 document |
//! | GET | `/api/v1/channels` | 200 `{"channels": [status, ...]}` |
//! | GET | `/api/v1/channels/{name}` | 200 status, 404 |
//! | PUT | `/api/v1/channels/{name}` | 201/200 status; 400, 401, 403, 409/422 with `problems` |
//! | DELETE | `/api/v1/channels/{name}` | 204, 404 |
//! | POST | `/api/v1/channels/{name}/restart` | 202 `{"restarting": name}`, 404, 503 |
//! | GET | `/api/v1/channels/{name}/live` | WebSocket of decimated records (see [`crate::live`]) |
//! | GET | `/api/v1/channels/{name}/schema` | 200 the channel's Avro schema (JSON), 404 |
//! | GET | `/api/v1/channels/{name}/config` | 200 the channel file's text and schema |
//! | POST | `/api/v1/channels/{name}/check-schema` | 200 `{"compatible", "problems"}` |
//! | GET | `/api/v1/ports/free` | 200 `{"ports"}`, 409 too few |
//! | GET | `/api/v1/events` | server-sent events (`?since=N`) |
//! | POST | `/api/v1/holds` | 201 the hold and what it covers; 409, 422 with `field` |
//! | GET | `/api/v1/holds` | 200 every hold and what it covers |
//! | GET | `/api/v1/holds/{name}` | 200 one hold, 404 |
//! | DELETE | `/api/v1/holds/{name}` | 204, 404 |
//! | GET | `/` | the web console (see [`crate::console`]) |
//! | GET | `/channels/{name}` | the web console's page of a channel |
//! | GET | `/assets/{file}` | the web console's scripts and styles |
//!
//! Every body is a type of `speeddata_api`; every error is its
//! `ErrorBody`, `{"error", "field"?, "problems"?}`. The OpenAPI document is
//! generated from those types and the handlers' `#[utoipa::path]`: each
//! route is registered once, with its documentation ([`routes`]).
//!
//! Write requests (restart, registration, check-schema) need the API token
//! (`Authorization: Bearer`, 401 without it) when `http.token_file` is set.
//! Without a token they are refused with 403 while `http.listen` is not a
//! loopback address, from a peer off loopback, from a page of another
//! origin (`Origin` differs from `Host`), and when `Host` does not name
//! the loopback (a DNS-rebinding page). The live stream refuses other
//! origins too.
//!
//! Unknown paths answer 404 and a wrong method 405 (with `Allow`), both
//! with a JSON `{"error": ...}` body.
//!
//! Connections are bounded (see [`Limits`]): a client has
//! [`HEADER_TIMEOUT`] to send a whole request head, a kept-alive
//! connection may sit idle between requests for [`IDLE_TIMEOUT`], and at
//! most `http.max_connections` are open at once; a connection beyond that
//! is answered 503 at once and closed. A response being sent (an event
//! stream above all) is never cut by these timeouts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use speeddata_api::{
    ChannelList, ChannelStatus, Checked, ErrorBody, HoldList, Info, Lagged, NewHold, Ports,
    Registration, Restarting, SchemaCheck,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::state::{Event, Fleet, State as ChannelState};
use crate::supervisor::Request;

/// How often an idle event stream carries a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a restart request waits for the supervisor's answer.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a whole request head: counted from
/// the connection's acceptance for its first request, from the first byte
/// of the next one on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds on the API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, at most; more are answered 503 and closed.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// What the API reads and whom it asks.
pub struct Api {
    pub fleet: Arc<Fleet>,
    pub requests: mpsc::Sender<Request>,
    /// The orchestrator's configuration, kept current on reload; the
    /// registration endpoints answer 503 without it.
    pub config: Option<SharedConfig>,
    /// The API token (`http.token_file`); write requests must carry it.
    pub token: Option<String>,
}

/// The configuration as last loaded, shared with the signal handler that
/// reloads it.
pub type SharedConfig = Arc<std::sync::RwLock<Arc<crate::config::Config>>>;

/// The peer of a request's connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

#[derive(Clone)]
struct AppState {
    fleet: Arc<Fleet>,
    requests: mpsc::Sender<Request>,
    /// Becomes `true` when the server shuts down: event streams end then,
    /// so that the graceful shutdown does not wait for them forever.
    closing: watch::Receiver<bool>,
    /// The live streams' hubs.
    live: Arc<crate::live::Live>,
    /// The address the API listens on (writes need it to be loopback).
    listen: SocketAddr,
    config: Option<SharedConfig>,
    token: Option<Arc<str>>,
    /// The OpenAPI document, as served.
    openapi: Arc<str>,
}

/// The OpenAPI document's frame: the paths and schemas come from the
/// handlers' `#[utoipa::path]` and the types of `speeddata_api`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "speeddata-relay orchestrator API",
        description = "Channel status, lifecycle events, registration, holds and the live stream of a speeddata-relay host. Write requests need `Authorization: Bearer <token>` when http.token_file is set, else come from loopback."
    ),
    components(schemas(speeddata_api::EventKind, speeddata_api::Lagged))
)]
struct ApiDoc;

/// Every route, each registered once with its documentation: the router
/// and the OpenAPI document cannot disagree.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(fleet_page))
        .routes(routes!(channel_page))
        .routes(routes!(asset))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(info))
        .routes(routes!(openapi_json))
        .routes(routes!(channels))
        .routes(routes!(channel, register, unregister))
        .routes(routes!(schema))
        .routes(routes!(channel_config))
        .routes(routes!(check_schema))
        .routes(routes!(restart))
        .routes(routes!(live))
        .routes(routes!(free_ports))
        .routes(routes!(holds_list, hold_create))
        .routes(routes!(hold_get, hold_delete))
        .routes(routes!(events))
        .split_for_parts()
}

/// The API's OpenAPI 3 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The API's routes; event streams end when `closing` turns true.
fn build(api: Api, listen: SocketAddr, closing: watch::Receiver<bool>) -> Router {
    let (router, doc) = routes();
    let state = AppState {
        fleet: api.fleet,
        requests: api.requests,
        closing,
        live: Arc::default(),
        listen,
        config: api.config,
        token: api.token.map(Arc::from),
        openapi: Arc::from(doc.to_json().unwrap_or_default()),
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Binds the API's address. The error names the address; the caller adds
/// where it came from (`http.listen`).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// Serves the API on `listener` with the default [`Limits`]; see
/// [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, api, Limits::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, closes the connections that are not serving a request, ends
/// the open event streams and returns once every connection is closed.
pub async fn serve_with(
    listener: TcpListener,
    api: Api,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (closing_tx, closing) = watch::channel(false);
    let app = build(api, listener.local_addr()?, closing.clone());
    // At least one; at most what a semaphore (and `acquire_many`) takes.
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let refusal = refusal(max);
    let mut refused = Throttled::default();
    let mut accept_errors = Throttled::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors (or memory): the listener stays
                    // readable, so wait a little rather than spin.
                    accept_errors.note(|n| {
                        tracing::warn!(error = %e, errors = n, "HTTP: cannot accept connections")
                    });
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(connection(
                    stream,
                    peer,
                    app.clone(),
                    limits,
                    closing.clone(),
                    slot,
                ));
            }
            Err(_) => {
                refuse(stream, &refusal);
                refused.note(|n| {
                    tracing::warn!(
                        refused = n,
                        max_connections = max,
                        "HTTP: too many connections; refusing new ones with 503"
                    )
                });
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection holds a slot until it is closed.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Errors of one connection that `accept` reports; the next is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Counts occurrences and reports at most one line every 10 s, with the
/// count since the last report.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn note(&mut self, report: impl FnOnce(u64)) {
        self.count += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            report(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

/// What a connection beyond the cap is told.
fn refusal(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody::new(format!(
        "too many connections (at most {max} at once)"
    )))
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection beyond the cap with a 503 and closes it, without
/// waiting for anything: a client learns that the server is up but busy
/// (and when to try again), where a bare close would look like a crash.
/// What part of the request has already arrived is read first, so that the
/// close is a FIN rather than a reset that could make the client lose the
/// answer.
fn refuse(stream: TcpStream, answer: &[u8]) {
    use std::io::{Read, Write};
    // Plain non-blocking calls: tokio has not seen this socket's readiness yet.
    let Ok(mut s) = stream.into_std() else { return };
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    // A fresh socket's send buffer takes the whole answer.
    let _ = s.write(answer);
}

/// Serves one connection, and closes it when its client is too slow to
/// send a request head or leaves it idle too long, or at shutdown.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let router = TowerToHyperService::new(app);
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let in_flight = activity.request_started();
            let response = router.call(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Served {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    // The header timeout is ours (hyper's would also cut kept-alive
    // connections that are merely idle).
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service)
        // The live stream's WebSockets: once upgraded, a connection is
        // theirs, outside these timeouts and the connection cap.
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some((t, _)) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !stopping => {
                stopping = true;
                if activity.idle() {
                    return;
                }
                // Finish the response under way (event streams end now).
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.changed.notified() => {}
            _ = expired => {
                if let Some((t, why)) = activity.deadline(&limits) {
                    if t <= Instant::now() {
                        tracing::debug!(%peer, "closing the HTTP connection: {why}");
                        return;
                    }
                }
            }
        }
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    /// Told whenever `state` changes.
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response is not finished.
    in_flight: usize,
    /// Responses finished.
    served: u64,
    /// When the connection was accepted or its last response finished.
    idle_since: Instant,
    /// When the first byte after `idle_since` arrived (a request head under
    /// way).
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                served: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A whole request head arrived; the request is served until the
    /// returned guard (kept with the response body) is dropped.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.lock().in_flight += 1;
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.lock().in_flight == 0
    }

    /// When the connection is to be closed unless something happens first,
    /// and why; `None` while a request is served.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let s = self.lock();
        if s.in_flight > 0 {
            None
        } else if s.served == 0 {
            Some((
                s.idle_since + limits.header_timeout,
                "no whole request head in time",
            ))
        } else if let Some(t) = s.head_started {
            Some((t + limits.header_timeout, "no whole request head in time"))
        } else {
            Some((s.idle_since + limits.idle_timeout, "idle"))
        }
    }
}

/// A request being served: dropped with its response body, once the
/// response is sent (or the connection is gone).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        s.served += 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as served until it is
/// sent.
struct Served {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Served {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Every handler's error: a status and the API's one error body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(message),
        }
    }

    /// A request field at fault.
    fn field(status: StatusCode, field: Option<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(status, message);
        e.body.field = field;
        e
    }

    /// A channel file or schema that does not pass the checks.
    fn problems(status: StatusCode, list: Vec<speeddata_api::Problem>) -> ApiError {
        let n = list.len();
        let mut e = ApiError::new(
            status,
            match list.first() {
                Some(p) if n == 1 => format!("{}: {}", p.key, p.message),
                _ => format!("{n} problems with the channel"),
            },
        );
        e.body.problems = Some(list);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"speeddata\""),
            );
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The orchestrator's configuration, for the handlers that need it (503
/// without one).
struct Cfg(Arc<crate::config::Config>);

impl FromRequestParts<AppState> for Cfg {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, s: &AppState) -> Result<Cfg, ApiError> {
        s.config().map(Cfg)
    }
}

/// A write request that may go on, and who made it (`token` or `local`);
/// 401 or 403 otherwise (see [`AppState::may_write`]).
struct Writer(&'static str);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Writer, ApiError> {
        let peer =
            parts.extensions.get::<Peer>().map(|p| p.0).ok_or_else(|| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no peer address")
            })?;
        s.may_write(&parts.headers, peer).map(Writer)
    }
}

impl AppState {
    /// How write requests are authorized: `token`, `loopback`, or
    /// `refused` (with why).
    fn write_auth(&self) -> (&'static str, Option<String>) {
        if self.token.is_some() {
            ("token", None)
        } else if self.listen.ip().is_loopback() {
            ("loopback", None)
        } else {
            (
                "refused",
                Some(format!(
                    "write requests are refused: http.listen ({}) is not a loopback address and no API token is set (http.token_file)",
                    self.listen
                )),
            )
        }
    }

    /// Whether this write request may go on; the 401 or 403 answer if not.
    /// Returns who made it: `token`, or `local`.
    fn may_write(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<&'static str, ApiError> {
        let refused = |status: StatusCode, why: String| {
            tracing::warn!(%peer, "HTTP: write request refused: {why}");
            ApiError::new(status, why)
        };
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match given {
                Some(t) if tokens_equal(t, token) => Ok("token"),
                Some(_) => Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "the API token is wrong".into(),
                )),
                None => Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "write requests need the API token: Authorization: Bearer <token>".into(),
                )),
            };
        }
        if let (_, Some(why)) = self.write_auth() {
            return Err(refused(StatusCode::FORBIDDEN, why));
        }
        if !peer.ip().is_loopback() {
            return Err(refused(
                StatusCode::FORBIDDEN,
                format!(
                    "write requests are accepted from loopback only, not from {}",
                    peer.ip()
                ),
            ));
        }
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return Err(refused(
                    StatusCode::FORBIDDEN,
                    format!("write requests must name the loopback in Host, not {host:?}"),
                ));
            }
        }
        same_origin(headers).map_err(|why| refused(StatusCode::FORBIDDEN, why))?;
        Ok("local")
    }

    /// The configuration, or the 503 answer without one.
    fn config(&self) -> Result<Arc<crate::config::Config>, ApiError> {
        match &self.config {
            Some(c) => Ok(c.read().unwrap_or_else(|p| p.into_inner()).clone()),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server has no channels folder",
            )),
        }
    }
}

/// Compares a presented token with ours in time that does not depend on
/// where they differ.
fn tokens_equal(given: &str, ours: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    given.len() == ours.len() && bool::from(given.as_bytes().ct_eq(ours.as_bytes()))
}

/// Whether `host` (a Host header: name or address, and a port) names this
/// machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A browser names the page that makes a request in `Origin`: a request
/// from a page of another site (which could otherwise restart channels or
/// read the live stream through the user's browser) is refused. Clients
/// that are not browsers send no `Origin`.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match authority {
        Some(a) if !host.is_empty() && a.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(format!(
            "a request from the page {origin:?} is refused: only this server's own pages ({host}) may make it"
        )),
    }
}

#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The web console: the fleet", content_type = "text/html", body = String)))]
async fn fleet_page() -> Response {
    crate::console::fleet_page()
}

#[utoipa::path(get, path = "/channels/{name}", tag = "console", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The web console: one channel", content_type = "text/html", body = String)))]
async fn channel_page(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    crate::console::channel_page(s.fleet.get(&name).is_some())
}

#[utoipa::path(get, path = "/assets/{file}", tag = "console", params(("file" = String, Path, description = "A script or style sheet of the console")),
    responses((status = 200, description = "The asset"), (status = 404, description = "No such asset", body = ErrorBody)))]
async fn asset(Path(file): Path<String>) -> Response {
    crate::console::asset(&file)
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, format!("no asset {file:?}")))
}

/// `GET /api/v1/info`: what the console needs to know of the server.
#[utoipa::path(get, path = "/api/v1/info", tag = "server",
    responses((status = 200, description = "What the console needs to know of the server", body = Info)))]
async fn info(State(s): State<AppState>) -> Response {
    let (auth, refused) = s.write_auth();
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        writes: refused.is_none(),
        auth: auth.into(),
        writes_refused: refused,
    })
    .into_response()
}

/// `GET /api/v1/channels/{name}/schema`: the schema the channel's relay
/// runs with, as JSON.
#[utoipa::path(get, path = "/api/v1/channels/{name}/schema", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The Avro schema the channel's relay runs with", body = Object),
        (status = 404, description = "No such channel, or no schema yet", body = ErrorBody),
        (status = 422, description = "The schema file is not JSON", body = ErrorBody)))]
async fn schema(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if s.fleet.get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    }
    let Some(spec) = s.fleet.spec(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("channel {name} has no valid configuration yet"),
        );
    };
    let text = match std::fs::read_to_string(&spec.schema_path) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("cannot read {}: {e}", spec.schema_path.display()),
            )
        }
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} is not JSON: {e}", spec.schema_path.display()),
        ),
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn refused(r: crate::registry::Refused) -> Response {
    use crate::registry::Refused;
    match r {
        Refused::BadName(m) => error(StatusCode::BAD_REQUEST, m),
        Refused::Invalid(p) => {
            ApiError::problems(StatusCode::UNPROCESSABLE_ENTITY, p).into_response()
        }
        Refused::Conflict(p) => ApiError::problems(StatusCode::CONFLICT, p).into_response(),
    }
}

fn bad_body(e: axum::extract::rejection::JsonRejection) -> Response {
    error(e.status(), e.body_text())
}

/// How long `?wait=ready` waits beyond `start_timeout`: the reload's
/// debounce and the spawn.
const WAIT_SLACK: Duration = Duration::from_secs(2);

/// `PUT /api/v1/channels/{name}[?wait=ready][&dry_run=true]`: registers
/// or replaces a channel (see [`crate::registry`]); `dry_run` checks
/// without writing (200 `{"problems": []}`).
#[utoipa::path(put, path = "/api/v1/channels/{name}", tag = "registration",
    params(("name" = String, Path, description = "The channel's name"),
        ("wait" = Option<String>, Query, description = "`ready`: answer once the channel is ready, failed or backing off"),
        ("dry_run" = Option<bool>, Query, description = "Check without writing")),
    request_body = Registration,
    responses((status = 200, description = "Replaced (or, with dry_run, nothing wrong: a Checked body)", body = ChannelStatus),
        (status = 201, description = "Registered", body = ChannelStatus),
        (status = 400, description = "A bad name, query or body", body = ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 409, description = "Conflicts with another channel (problems)", body = ErrorBody),
        (status = 422, description = "The channel file or schema does not validate (problems)", body = ErrorBody),
        (status = 503, description = "This server has no channels folder", body = ErrorBody)))]
async fn register(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Writer(who): Writer,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    Cfg(cfg): Cfg,
    body: JsonBody<Registration>,
) -> Response {
    if let Err(r) = crate::registry::check_name(&name) {
        return refused(r);
    }
    let (mut wait, mut dry_run) = (false, false);
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        match (k.as_str(), v.as_str()) {
            ("wait", "ready") => wait = true,
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => {}
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k}={v:?} (wait=ready, dry_run=true)"),
                )
            }
        }
    }
    let Json(reg) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    // One registration at a time: the checks see the files as the write
    // will leave them.
    static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _writing = WRITING.lock().await;
    // A few small files: done on the (single-threaded) runtime's thread.
    let prepared = match crate::registry::prepare(&cfg, &name, &reg.channel, &reg.schema) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    if dry_run {
        return Json(Checked { problems: vec![] }).into_response();
    }
    let status = if prepared.exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let written_at = std::time::Instant::now();
    if !prepared.unchanged {
        let written = crate::registry::write(&prepared);
        if let Err(e) = written {
            tracing::error!(channel = %name, error = %e, "cannot write the channel's files");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write {}: {e}", prepared.channel_file.display()),
            );
        }
        tracing::info!(
            channel = %name,
            file = %prepared.channel_file.display(),
            by = who,
            "channel {} through the API",
            if prepared.exists { "replaced" } else { "registered" }
        );
    }
    drop(_writing);
    if wait && !prepared.unchanged {
        let limit = cfg.policy.start_timeout + WAIT_SLACK;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let started = s.fleet.started(&name);
                let settled = s.fleet.get(&name).is_some_and(|c| {
                    started.is_some_and(|t| t > written_at)
                        && matches!(
                            c.state,
                            ChannelState::Ready | ChannelState::Failed | ChannelState::Backoff
                        )
                });
                if settled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    match s.fleet.get(&name) {
        Some(c) => (status, Json(c)).into_response(),
        None => (
            status,
            Json(ChannelStatus::new(&name, prepared.channel_file)),
        )
            .into_response(),
    }
}

/// `DELETE /api/v1/channels/{name}`: removes the channel's file (and its
/// schema unless another file uses it); the reload stops the channel,
/// whose archive is finalized and kept. Answers once the channel stopped
/// (at most `stop_timeout` and a little).
#[utoipa::path(delete, path = "/api/v1/channels/{name}", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 204, description = "Removed; the channel has stopped, its archive is kept"),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn unregister(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Writer(who): Writer,
    Cfg(cfg): Cfg,
) -> Response {
    if let Err(r) = crate::registry::check_name(&name) {
        return refused(r);
    }
    let known = s.fleet.get(&name).map(|c| c.file);
    let Some(file) = crate::registry::channel_file(&cfg, known, &name) else {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    };
    let removed = crate::registry::remove(&cfg, &file);
    match removed {
        Ok(r) => tracing::info!(
            channel = %name,
            file = %r.channel_file.display(),
            schema = ?r.schema_file,
            by = who,
            "channel removed through the API"
        ),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot remove {}: {e}", file.display()),
            )
        }
    }
    let limit = cfg.policy.stop_timeout + WAIT_SLACK;
    let _ = tokio::time::timeout(limit, async {
        while s.fleet.get(&name).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /api/v1/channels/{name}/config`: the channel file's text and its
/// schema, as written.
#[utoipa::path(get, path = "/api/v1/channels/{name}/config", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The channel file and its schema as written", body = speeddata_api::ChannelConfig),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn channel_config(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Cfg(cfg): Cfg,
) -> Response {
    if crate::registry::check_name(&name).is_err() && s.fleet.get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    }
    let known = s.fleet.get(&name).map(|c| c.file);
    let Some(file) = crate::registry::channel_file(&cfg, known, &name) else {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    };
    match crate::registry::read_config(&name, &file) {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(
            StatusCode::NOT_FOUND,
            format!("cannot read {}: {e}", file.display()),
        ),
    }
}

/// `POST /api/v1/channels/{name}/check-schema` with a schema (JSON):
/// whether records written with it are read correctly as the channel's.
#[utoipa::path(post, path = "/api/v1/channels/{name}/check-schema", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    request_body(content = Object, description = "An Avro schema"),
    responses((status = 200, description = "Whether records written with it read correctly as the channel's", body = SchemaCheck),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn check_schema(
    State(s): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
    body: JsonBody<serde_json::Value>,
) -> Response {
    let Json(writer) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let Some(spec) = s.fleet.spec(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    };
    let reader = match std::fs::read_to_string(&spec.schema_path) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("cannot read {}: {e}", spec.schema_path.display()),
            )
        }
    };
    let (compatible, problems) = crate::registry::check_schema(&writer, &reader);
    Json(SchemaCheck {
        compatible,
        problems,
    })
    .into_response()
}

/// `GET /api/v1/ports/free?from=26000&to=26999&count=1`: receive ports no
/// channel file uses and no UDP socket of this host has bound.
#[utoipa::path(get, path = "/api/v1/ports/free", tag = "registration",
    params(("from" = Option<u16>, Query, description = "Lowest port (26000)"),
        ("to" = Option<u16>, Query, description = "Highest port (26999)"),
        ("count" = Option<usize>, Query, description = "How many (1 to 1000; 1)")),
    responses((status = 200, description = "Receive ports no channel file uses and no UDP socket has bound", body = Ports),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 409, description = "Too few free ports (the ones found in `ports`)", body = ErrorBody)))]
async fn free_ports(
    Cfg(cfg): Cfg,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (mut from, mut to, mut count) = (26000u16, 26999u16, 1usize);
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        let bad = || {
            error(
                StatusCode::BAD_REQUEST,
                format!("{k}: {v:?} is not a port (1 to 65535) or count (1 to 1000)"),
            )
        };
        match k.as_str() {
            "from" => match v.parse() {
                Ok(p) if p > 0 => from = p,
                _ => return bad(),
            },
            "to" => match v.parse() {
                Ok(p) if p > 0 => to = p,
                _ => return bad(),
            },
            "count" => match v.parse() {
                Ok(n) if (1..=1000).contains(&n) => count = n,
                _ => return bad(),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (from, to, count)"),
                )
            }
        }
    }
    if from > to {
        return error(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) is above to ({to})"),
        );
    }
    let ports = crate::registry::free_ports(&cfg, from, to, count);
    if ports.len() < count {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "only {} of {count} free ports between {from} and {to}",
                ports.len()
            ),
        );
        e.body.ports = Some(ports);
        return e.into_response();
    }
    Json(Ports { ports }).into_response()
}

/// Every channel's archive folder, for what holds cover.
fn archives(s: &AppState) -> Vec<crate::holds::ArchiveOf> {
    s.fleet
        .list()
        .into_iter()
        .filter_map(|c| {
            let spec = s.fleet.spec(&c.name)?;
            Some(crate::holds::ArchiveOf {
                dir: spec.archive.channel_dir(&c.name),
                time_field: spec.archive.time_field.clone(),
                channel: c.name,
            })
        })
        .collect()
}

/// `GET /api/v1/holds`: every hold and what it covers.
#[utoipa::path(get, path = "/api/v1/holds", tag = "holds",
    responses((status = 200, description = "Every hold and what it covers", body = HoldList)))]
async fn holds_list(State(s): State<AppState>, Cfg(cfg): Cfg) -> Response {
    let archives = archives(&s);
    let holds: Vec<_> = crate::holds::list(&cfg)
        .iter()
        .map(|h| crate::holds::report(h, &archives))
        .collect();
    Json(HoldList { holds }).into_response()
}

/// `GET /api/v1/holds/{name}`.
#[utoipa::path(get, path = "/api/v1/holds/{name}", tag = "holds", params(("name" = String, Path, description = "The hold's name")),
    responses((status = 200, description = "The hold and what it covers", body = speeddata_api::HoldReport),
        (status = 404, description = "No such hold", body = ErrorBody)))]
async fn hold_get(State(s): State<AppState>, Path(name): Path<String>, Cfg(cfg): Cfg) -> Response {
    match crate::holds::get(&cfg, &name) {
        Some(h) => Json(crate::holds::report(&h, &archives(&s))).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no hold {name:?}")),
    }
}

/// `POST /api/v1/holds` with `{"name", "from", "to", "channels"?, "note"?}`.
#[utoipa::path(post, path = "/api/v1/holds", tag = "holds", request_body = NewHold,
    responses((status = 201, description = "Made: the hold and what it covers", body = speeddata_api::HoldReport),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 409, description = "A hold of that name exists", body = ErrorBody),
        (status = 422, description = "A field is wrong (`field` names it)", body = ErrorBody)))]
async fn hold_create(
    State(s): State<AppState>,
    Writer(who): Writer,
    Cfg(cfg): Cfg,
    body: JsonBody<NewHold>,
) -> Response {
    use crate::holds::Refused;
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()).into_response()
        }
    };
    let known: Vec<String> = s.fleet.list().into_iter().map(|c| c.name).collect();
    match crate::holds::create(&cfg, &known, req, who) {
        Ok(hold) => {
            tracing::info!(hold = %hold.name, from = %hold.from, to = %hold.to, channels = ?hold.channels, by = who, "hold made");
            (
                StatusCode::CREATED,
                Json(crate::holds::report(&hold, &archives(&s))),
            )
                .into_response()
        }
        Err(Refused::Exists(m)) => error(StatusCode::CONFLICT, m),
        Err(Refused::Invalid(field, m)) => ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field.to_string()),
            format!("{field}: {m}"),
        )
        .into_response(),
    }
}

/// `DELETE /api/v1/holds/{name}`: its files go at the next retention pass
/// that finds them past retention.
#[utoipa::path(delete, path = "/api/v1/holds/{name}", tag = "holds", params(("name" = String, Path, description = "The hold's name")),
    responses((status = 204, description = "Removed: its files go at the next retention pass that finds them past retention"),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody)))]
async fn hold_delete(Path(name): Path<String>, Writer(who): Writer, Cfg(cfg): Cfg) -> Response {
    match crate::holds::remove(&cfg, &name) {
        Ok(true) => {
            tracing::info!(hold = %name, by = who, "hold removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no hold {name:?}")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot remove hold {name}: {e}"),
        ),
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "server",
    responses((status = 200, description = "This document: the API's OpenAPI 3 description", body = Object)))]
async fn openapi_json(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "The orchestrator runs", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "server",
    responses((status = 200, description = "Every channel is ready", content_type = "text/plain", body = String),
        (status = 503, description = "The channels that are not, and why", content_type = "text/plain", body = String)))]
async fn readyz(State(s): State<AppState>) -> Response {
    if s.fleet.all_ready() {
        return (StatusCode::OK, "ready").into_response();
    }
    let waiting: Vec<String> = s
        .fleet
        .list()
        .into_iter()
        .filter(|c| c.state != ChannelState::Ready)
        .map(|c| match &c.reason {
            Some(r) => format!("{} ({}: {})", c.name, c.state.as_str(), one_line(r)),
            None => format!("{} ({})", c.name, c.state.as_str()),
        })
        .collect();
    let text = if waiting.is_empty() {
        "not ready".to_string()
    } else {
        format!("not ready: {}", waiting.join(", "))
    };
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format: every channel's counters, labelled by channel, and the supervision counters", content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.fleet.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/channels", tag = "channels",
    responses((status = 200, description = "Every channel's status", body = ChannelList)))]
async fn channels(State(s): State<AppState>) -> Response {
    Json(ChannelList {
        channels: s.fleet.list(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/v1/channels/{name}", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The channel's status", body = ChannelStatus),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn channel(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.fleet.get(&name) {
        Some(c) => Json(c).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no channel {name:?}")),
    }
}

/// `GET /api/v1/channels/{name}/live[?fields=a,b.c][&max_rate=N]`: 404
/// for an unknown channel, 400 for a bad query or a request that is not a
/// WebSocket upgrade, 503 when the channel has
/// [`crate::live::MAX_CLIENTS`] clients already; a channel that cannot be
/// watched (no decimated output) gets one `{"error": ...}` message, then a
/// close.
#[utoipa::path(get, path = "/api/v1/channels/{name}/live", tag = "channels",
    params(("name" = String, Path, description = "The channel's name"),
        ("fields" = Option<String>, Query, description = "Dotted field names, comma-separated"),
        ("max_rate" = Option<u32>, Query, description = "Records a second, at most")),
    responses((status = 101, description = "A WebSocket of the decimated records as JSON objects by field name"),
        (status = 400, description = "A bad query, or not a WebSocket request", body = ErrorBody),
        (status = 403, description = "A page of another origin", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 503, description = "Too many live clients already", body = ErrorBody)))]
async fn live(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    use crate::live::{self, Refusal};
    if let Err(why) = same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if s.fleet.get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    }
    let spec = s.fleet.spec(&name);
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query does not parse");
    };
    let opts = match live_opts(query, spec.as_deref()) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("this is a WebSocket endpoint: {}", e.body_text()),
            )
        }
    };
    let registered = match &spec {
        Some(spec) => s.live.register(spec),
        None => Err(Refusal::Unwatchable(format!(
            "channel {name} has no valid configuration yet"
        ))),
    };
    match registered {
        Ok(reg) => {
            let closing = s.closing.clone();
            upgrade.on_upgrade(move |ws| live::serve_client(ws, reg, opts, closing))
        }
        Err(Refusal::Full) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "channel {name} has {} live clients already",
                    live::MAX_CLIENTS
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        Err(Refusal::Unwatchable(why)) => {
            upgrade.on_upgrade(move |ws| live::refuse_client(ws, why))
        }
    }
}

/// The live stream's query: `fields` (dotted names of the schema) and
/// `max_rate` (records a second).
fn live_opts(
    query: Vec<(String, String)>,
    spec: Option<&relay_channel::config::ChannelSpec>,
) -> Result<crate::live::ClientOpts, String> {
    use crate::live::{self, ClientOpts};
    let mut opts = ClientOpts {
        fields: None,
        max_rate: live::DEFAULT_MAX_RATE,
    };
    for (k, v) in query {
        match k.as_str() {
            "fields" => opts.fields = Some(live::parse_fields(&v)?),
            "max_rate" => {
                opts.max_rate = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=live::MAX_MAX_RATE).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "max_rate: {v:?} is not a number of records a second from 1 to {}",
                            live::MAX_MAX_RATE
                        )
                    })?
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (fields, max_rate)"
                ))
            }
        }
    }
    if let (Some(paths), Some(spec)) = (&opts.fields, spec) {
        if let Ok(schema) = relay_channel::schema::load(spec)
            .map_err(|e| e.to_string())
            .and_then(|l| apache_avro::Schema::parse_str(&l.text).map_err(|e| e.to_string()))
        {
            for p in paths {
                if !live::has_path(&schema, p) {
                    return Err(format!("fields: the schema has no field {:?}", p.join(".")));
                }
            }
        }
    }
    Ok(opts)
}

#[utoipa::path(post, path = "/api/v1/channels/{name}/restart", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 202, description = "Restarting", body = Restarting),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 503, description = "The supervisor is not running", body = ErrorBody),
        (status = 504, description = "The supervisor did not answer in time", body = ErrorBody)))]
async fn restart(State(s): State<AppState>, Path(name): Path<String>, _: Writer) -> Response {
    let (reply, answer) = oneshot::channel();
    let ask = async {
        s.requests
            .send(Request::Restart {
                name: name.clone(),
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    };
    match tokio::time::timeout(RESTART_TIMEOUT, ask).await {
        Ok(Some(Ok(()))) => {
            (StatusCode::ACCEPTED, Json(Restarting { restarting: name })).into_response()
        }
        Ok(Some(Err(message))) => error(StatusCode::NOT_FOUND, message),
        Ok(None) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is not running",
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the supervisor did not answer within {}s",
                RESTART_TIMEOUT.as_secs()
            ),
        ),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(("since" = Option<u64>, Query, description = "Replay the stored events after this seq (Last-Event-ID wins)")),
    responses((status = 200, description = "Server-sent events: each one's data is an Event, its name the event's `event`; a `lagged` event carries a Lagged", content_type = "text/event-stream", body = Event),
        (status = 400, description = "A bad since or Last-Event-ID", body = ErrorBody)))]
async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // A reconnecting client's Last-Event-ID is newer than its URL's `since`.
    // An empty one is as good as none.
    let last_id = match headers
        .get("last-event-id")
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be an event's seq (a number)",
                )
            }
        },
    };
    // Without either, only events to come are sent.
    let (past, rx) = s.fleet.subscribe(last_id.or(since).unwrap_or(u64::MAX));
    let stream = event_stream(past, last_id.or(since), rx, s.closing).map(|item| {
        Ok::<_, Infallible>(match item {
            Item::Event(e) => sse_event(&e),
            Item::Lagged(missed) => SseEvent::default()
                .event("lagged")
                .data(serde_json::to_string(&Lagged { missed }).unwrap_or_default()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

fn sse_event(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.name())
        .data(data)
}

/// What an event stream carries.
#[derive(Debug)]
enum Item {
    Event(Event),
    /// This many events could not be delivered: they fell out of the
    /// history before a replay, or this client read too slowly.
    Lagged(u64),
}

/// Replays `past` (the stored events after `after`, saying first if some
/// were already forgotten), then forwards `rx` until the server closes.
fn event_stream(
    past: Vec<Event>,
    after: Option<u64>,
    rx: broadcast::Receiver<Event>,
    closing: watch::Receiver<bool>,
) -> impl Stream<Item = Item> + Send + 'static {
    let mut queue: VecDeque<Item> = VecDeque::with_capacity(past.len() + 1);
    if let (Some(after), Some(first)) = (after, past.first()) {
        let missed = first.seq.saturating_sub(after.saturating_add(1));
        if missed > 0 {
            queue.push_back(Item::Lagged(missed));
        }
    }
    queue.extend(past.into_iter().map(Item::Event));
    futures_util::stream::unfold(
        (queue, rx, closing),
        |(mut queue, mut rx, mut closing)| async move {
            if *closing.borrow() {
                return None;
            }
            if let Some(item) = queue.pop_front() {
                return Some((item, (queue, rx, closing)));
            }
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => return None,
                r = rx.recv() => r,
            };
            let item = match next {
                Ok(e) => Item::Event(e),
                Err(broadcast::error::RecvError::Lagged(n)) => Item::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, (queue, rx, closing)))
        },
    )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such resource: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EventKind, Exit, Fleet};
    use serde_json::{json, Value};

    fn started(pid: u32) -> EventKind {
        EventKind::Started {
            pid,
            file: "a.toml".into(),
        }
    }
    use std::io::{BufRead, BufReader};
    use tokio::task::JoinHandle;

    struct Server {
        base: String,
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(fleet: Arc<Fleet>, requests: mpsc::Sender<Request>) -> Server {
            Server::start_with(fleet, requests, Limits::default()).await
        }

        async fn start_with(
            fleet: Arc<Fleet>,
            requests: mpsc::Sender<Request>,
            limits: Limits,
        ) -> Server {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let api = Api {
                fleet,
                requests,
                config: None,
                token: None,
            };
            let task = tokio::spawn(serve_with(listener, api, limits, async move {
                let _ = stopped.await;
            }));
            Server {
                base: format!("http://{addr}"),
                addr,
                stop: Some(stop),
                task,
            }
        }

        /// Shuts the server down; it must be done within 5 s even with
        /// event streams open.
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("graceful shutdown within 5 s")
                .unwrap()
                .unwrap();
        }
    }

    /// A fake supervisor: knows channel `a` only.
    #[allow(clippy::single_match)] // `Request` may grow variants
    fn supervisor() -> mpsc::Sender<Request> {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                #[allow(unreachable_patterns)]
                match req {
                    Request::Restart { name, reply } => {
                        let answer = if name == "a" {
                            Ok(())
                        } else {
                            Err(format!("no channel {name:?}"))
                        };
                        let _ = reply.send(answer);
                    }
                    _ => {}
                }
            }
        });
        tx
    }

    fn stats(received: u64) -> relay_channel::status::Stats {
        let mut s = relay_channel::status::Stats::default();
        s.counters.received = received;
        s.counters.archived = received - 1;
        s.counters.rejected = 1;
        s
    }

    /// `a` ready, `b` failed; three events.
    fn fleet() -> Arc<Fleet> {
        let f = Arc::new(Fleet::new());
        f.update("a", "a.toml".as_ref(), |s| {
            s.state = ChannelState::Ready;
            s.pid = Some(4242);
        });
        f.record_stats("a", stats(10));
        f.update("b", "b.toml".as_ref(), |s| {
            s.state = ChannelState::Failed;
            s.restarts = 6;
            s.reason = Some("6 failures within 60s".into());
        });
        f.emit(Some("a"), started(4242));
        f.emit(Some("a"), EventKind::Ready { pid: 4242 });
        f.emit(
            Some("b"),
            EventKind::Failed {
                reason: "6 failures within 60s".into(),
                exit: Exit {
                    code: Some(1),
                    signal: None,
                    at: "T".into(),
                    description: "exited with 1".into(),
                },
                last_stderr: vec![],
            },
        );
        f
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        content_type: String,
        allow: Option<String>,
        body: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            assert!(
                self.content_type.starts_with("application/json"),
                "{self:?}"
            );
            serde_json::from_str(&self.body).unwrap()
        }
    }

    fn agent(timeout: Duration) -> ureq::Agent {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build(),
        )
    }

    async fn call(method: &'static str, url: String) -> Reply {
        tokio::task::spawn_blocking(move || {
            let agent = agent(Duration::from_secs(10));
            let mut r = match method {
                "GET" => agent.get(&url).call(),
                "POST" => agent.post(&url).send_empty(),
                "PUT" => agent.put(&url).send_empty(),
                "DELETE" => agent.delete(&url).call(),
                _ => unreachable!(),
            }
            .unwrap();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let content_type = header("content-type").unwrap_or_default();
            let allow = header("allow");
            Reply {
                status: r.status().as_u16(),
                content_type,
                allow,
                body: r.body_mut().read_to_string().unwrap(),
            }
        })
        .await
        .unwrap()
    }

    #[test]
    fn loopback_hosts_and_same_origin() {
        for h in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST",
            "[::1]:9464",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "[2001:db8::1]:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9464")])).is_ok());
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://127.0.0.1:9464")
        ]))
        .is_ok());
        for origin in [
            "http://127.0.0.1:9465",
            "http://evil.example",
            "null",
            "file://",
        ] {
            assert!(
                same_origin(&headers(&[("host", "127.0.0.1:9464"), ("origin", origin)])).is_err(),
                "{origin}"
            );
        }
    }

    /// The routes this module's documentation lists: (method, path).
    fn documented_here() -> std::collections::BTreeSet<(String, String)> {
        include_str!("http.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | "))
            .filter_map(|l| {
                let mut cells = l.split(" | ");
                let method = cells.next()?;
                let path = cells.next()?.trim_matches('`');
                path.starts_with('/')
                    .then(|| (method.to_string(), path.to_string()))
            })
            .collect()
    }

    /// The routes the OpenAPI document lists.
    fn in_the_document() -> std::collections::BTreeSet<(String, String)> {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut out = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_documented_here() {
        let here = documented_here();
        let doc = in_the_document();
        assert!(here.len() >= 23, "{here:?}");
        assert_eq!(
            doc.difference(&here).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "routes in the OpenAPI document but not in this module's table"
        );
        assert_eq!(
            here.difference(&doc).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "routes in this module's table but not in the OpenAPI document"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_documented_route_is_served_and_the_document_too() {
        // No supervisor: a restart is answered 503 at once.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let server = Server::start(Arc::new(Fleet::new()), tx).await;
        for (method, path) in in_the_document() {
            // The event stream does not end (its route is tested below).
            if path == "/api/v1/events" {
                continue;
            }
            let url = format!(
                "{}{}",
                server.base,
                path.replace("{name}", "a").replace("{file}", "x.js")
            );
            let method: &'static str = match method.as_str() {
                "GET" => "GET",
                "PUT" => "PUT",
                "POST" => "POST",
                "DELETE" => "DELETE",
                other => panic!("{other} {path}: a method this test does not send"),
            };
            let r = call(method, url).await;
            assert_ne!(r.status, 405, "{method} {path}: {r:?}");
            assert!(
                !r.body.contains("no such resource"),
                "{method} {path} is documented but not served: {r:?}"
            );
        }
        let doc = call("GET", format!("{}/api/v1/openapi.json", server.base))
            .await
            .json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(
            doc["components"]["schemas"]["ChannelStatus"]["properties"]["counters"].is_object()
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn health_readiness_and_channels() {
        let fleet = fleet();
        let server = Server::start(fleet.clone(), supervisor()).await;
        let base = &server.base;

        let r = call("GET", format!("{base}/healthz")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));

        let r = call("GET", format!("{base}/readyz")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "not ready: b (failed: 6 failures within 60s)");
        fleet.update("b", "b.toml".as_ref(), |s| s.state = ChannelState::Ready);
        let r = call("GET", format!("{base}/readyz")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        fleet.update("b", "b.toml".as_ref(), |s| s.state = ChannelState::Failed);

        let r = call("GET", format!("{base}/api/v1/channels")).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        let list = v["channels"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["name"], "a");
        assert_eq!(list[0]["state"], "ready");
        assert_eq!(list[0]["pid"], 4242);
        assert_eq!(list[0]["counters"]["received"], 10);
        assert_eq!(list[1]["name"], "b");
        assert_eq!(list[1]["state"], "failed");
        assert_eq!(list[1]["restarts"], 6);
        assert_eq!(list[1]["reason"], "6 failures within 60s");
        assert!(list[1]["pid"].is_null());

        let r = call("GET", format!("{base}/api/v1/channels/b")).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["name"], "b");
        assert_eq!(v["state"], "failed");

        let r = call("GET", format!("{base}/api/v1/channels/x")).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), json!({"error": "no channel \"x\""}));

        server.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn restart_asks_the_supervisor() {
        let server = Server::start(fleet(), supervisor()).await;
        let base = &server.base;

        let r = call("POST", format!("{base}/api/v1/channels/a/restart")).await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json(), json!({"restarting": "a"}));

        let r = call("POST", format!("{base}/api/v1/channels/x/restart")).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), json!({"error": "no channel \"x\""}));

        let r = call("GET", format!("{base}/api/v1/channels/a/restart")).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.allow.as_deref(), Some("POST"));
        server.stop().await;

        // No supervisor behind the API.
        let (gone, _) = mpsc::channel(1);
        let server = Server::start(fleet(), gone).await;
        let r = call("POST", format!("{}/api/v1/channels/a/restart", server.base)).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json(), json!({"error": "the supervisor is not running"}));
        server.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metrics_unknown_paths_and_wrong_methods() {
        let server = Server::start(fleet(), supervisor()).await;
        let base = &server.base;

        let r = call("GET", format!("{base}/metrics")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        assert!(
            r.body
                .contains("speeddata_channel_state{channel=\"a\",state=\"ready\"} 1"),
            "{}",
            r.body
        );
        assert!(r
            .body
            .contains("speeddata_channel_state{channel=\"b\",state=\"failed\"} 1"));
        assert!(r
            .body
            .contains("speeddata_channel_received_datagrams_total{channel=\"a\"} 10"));
        assert!(r.body.contains("# TYPE speeddata_channel_state gauge"));

        let r = call("GET", format!("{base}/nope")).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), json!({"error": "no such resource: GET /nope"}));
        let r = call("GET", format!("{base}/api/v1/channels/a/b/c")).await;
        assert_eq!(r.status, 404);

        let r = call("POST", format!("{base}/healthz")).await;
        assert_eq!(r.status, 405);
        assert_eq!(
            r.json(),
            json!({"error": "POST is not allowed on /healthz"})
        );
        assert_eq!(r.allow.as_deref(), Some("GET,HEAD"));
        let r = call("POST", format!("{base}/api/v1/channels/a")).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.allow.as_deref(), Some("GET,HEAD,PUT,DELETE"));

        let r = call("GET", format!("{base}/api/v1/events?since=x")).await;
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].is_string());
        server.stop().await;
    }

    /// One server-sent event: its fields, or `comment` for a comment.
    type Frame = Vec<(String, String)>;

    /// Reads `url` as an event stream on a blocking thread; frames arrive
    /// on the receiver, `connected` first once the headers are in.
    fn read_events(
        url: String,
        last_event_id: Option<&'static str>,
    ) -> (mpsc::Receiver<Frame>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::task::spawn_blocking(move || {
            let agent = agent(Duration::from_secs(20));
            let mut req = agent.get(&url);
            if let Some(id) = last_event_id {
                req = req.header("Last-Event-ID", id);
            }
            let r = req.call().unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(
                r.headers().get("content-type").unwrap(),
                "text/event-stream"
            );
            let connected = vec![("connected".to_string(), String::new())];
            if tx.blocking_send(connected).is_err() {
                return;
            }
            let mut frame = Frame::new();
            for line in BufReader::new(r.into_body().into_reader()).lines() {
                let Ok(line) = line else { break };
                if line.is_empty() {
                    if tx.blocking_send(std::mem::take(&mut frame)).is_err() {
                        return;
                    }
                } else if let Some(comment) = line.strip_prefix(':') {
                    frame.push(("comment".into(), comment.trim().into()));
                } else {
                    let (k, v) = line.split_once(':').unwrap_or((&line, ""));
                    frame.push((k.into(), v.trim_start().into()));
                }
            }
            // The end of the stream.
            let _ = tx.blocking_send(Frame::new());
        });
        (rx, task)
    }

    async fn next(rx: &mut mpsc::Receiver<Frame>) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the reader is alive")
    }

    fn field<'a>(f: &'a Frame, key: &str) -> &'a str {
        f.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {f:?}"))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_replay_then_stream() {
        let fleet = fleet();
        let server = Server::start(fleet.clone(), supervisor()).await;
        let (mut rx, reader) = read_events(format!("{}/api/v1/events?since=1", server.base), None);
        assert_eq!(next(&mut rx).await[0].0, "connected");

        let f = next(&mut rx).await;
        assert_eq!((field(&f, "id"), field(&f, "event")), ("2", "ready"));
        let data: Value = serde_json::from_str(field(&f, "data")).unwrap();
        assert_eq!(data["seq"], 2);
        assert_eq!(data["event"], "ready");
        assert_eq!(data["channel"], "a");
        let f = next(&mut rx).await;
        assert_eq!((field(&f, "id"), field(&f, "event")), ("3", "failed"));
        let data: Value = serde_json::from_str(field(&f, "data")).unwrap();
        assert_eq!(data["reason"], "6 failures within 60s");

        // A new event, emitted after the client connected.
        fleet.emit(
            Some("b"),
            EventKind::Restarting {
                delay_ms: 100,
                after: Some("exited with 1".into()),
                reason: None,
            },
        );
        let f = next(&mut rx).await;
        assert_eq!((field(&f, "id"), field(&f, "event")), ("4", "restarting"));
        let data: Value = serde_json::from_str(field(&f, "data")).unwrap();
        assert_eq!(
            (data["channel"].as_str(), data["delay_ms"].as_u64()),
            (Some("b"), Some(100))
        );

        // Last-Event-ID (a reconnecting client) wins over ?since.
        let (mut rx2, reader2) =
            read_events(format!("{}/api/v1/events?since=0", server.base), Some("3"));
        assert_eq!(next(&mut rx2).await[0].0, "connected");
        assert_eq!(field(&next(&mut rx2).await, "id"), "4");

        // Without since: only what comes next.
        let (mut rx3, reader3) = read_events(format!("{}/api/v1/events", server.base), None);
        assert_eq!(next(&mut rx3).await[0].0, "connected");
        fleet.emit(Some("b"), EventKind::Ready { pid: 1 });
        assert_eq!(field(&next(&mut rx3).await, "id"), "5");
        assert_eq!(field(&next(&mut rx2).await, "id"), "5");
        assert_eq!(field(&next(&mut rx).await, "id"), "5");

        // Shutting down ends the open streams.
        server.stop().await;
        for rx in [&mut rx, &mut rx2, &mut rx3] {
            assert!(next(rx).await.is_empty(), "the stream ends");
        }
        for r in [reader, reader2, reader3] {
            r.await.unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_forgotten_or_missed_are_reported() {
        let fleet = Arc::new(Fleet::new());
        // More than the history keeps.
        let emitted: u64 = 3000;
        for i in 0..emitted {
            fleet.emit(Some("a"), started(i as u32));
        }
        let (stored, _) = fleet.subscribe(0);
        let (kept, oldest) = (stored.len() as u64, stored[0].seq);
        assert_eq!(oldest, emitted - kept + 1);
        let server = Server::start(fleet.clone(), supervisor()).await;
        let url = format!("{}/api/v1/events?since=0", server.base);
        let (mut rx, reader) = read_events(url, None);
        assert_eq!(next(&mut rx).await[0].0, "connected");
        let f = next(&mut rx).await;
        assert_eq!(field(&f, "event"), "lagged");
        let missed = format!("{{\"missed\":{}}}", oldest - 1);
        assert_eq!(field(&f, "data"), missed);
        let first = next(&mut rx).await;
        assert_eq!(field(&first, "id"), oldest.to_string());
        server.stop().await;
        drop(rx);
        reader.await.unwrap();

        // A reader too slow for the broadcast is told how many it missed
        // (the broadcast buffer holds as many events as the history).
        let (past, events) = fleet.subscribe(u64::MAX);
        let (_tx, closing) = watch::channel(false);
        let mut stream = Box::pin(event_stream(past, None, events, closing));
        for _ in 0..kept + 76 {
            fleet.emit(Some("a"), EventKind::Ready { pid: 1 });
        }
        assert!(matches!(stream.next().await, Some(Item::Lagged(76))));
        let after = emitted + 76 + 1;
        assert!(matches!(stream.next().await, Some(Item::Event(e)) if e.seq == after));
    }

    /// A connection to `server` that has sent `sent`.
    async fn raw(server: &Server, sent: &str) -> TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(sent.as_bytes()).await.unwrap();
        s
    }

    /// Reads until the server closes the connection (EOF or reset): what it
    /// sent and how long that took. Panics if it is still open after `limit`.
    async fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
        use tokio::io::AsyncReadExt;
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(t0 + limit, s.read(&mut buf)).await {
                Err(_) => panic!(
                    "still open after {limit:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
    }

    /// Sends one keep-alive request on `s` and reads its answer (whose body
    /// is `ok`).
    async fn healthz_on(s: &mut TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    const SHORT: Limits = Limits {
        max_connections: 16,
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1200),
    };

    #[tokio::test(flavor = "current_thread")]
    async fn slow_request_heads_and_idle_connections_are_closed() {
        let server = Server::start_with(fleet(), supervisor(), SHORT).await;
        let ms = Duration::from_millis;

        // Nothing sent, or a head never finished: closed after the header
        // timeout.
        let t0 = Instant::now();
        let mut silent = raw(&server, "").await;
        let mut half = raw(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        for s in [&mut silent, &mut half] {
            let (got, _) = until_closed(s, ms(3000)).await;
            assert!(got.is_empty(), "{got:?}");
            assert!(t0.elapsed() >= ms(250), "closed after {:?}", t0.elapsed());
        }

        // A kept-alive connection: idle longer than the header timeout is
        // fine; idle longer than the idle timeout is not.
        let mut kept = raw(&server, "").await;
        assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(ms(700)).await;
        assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"));
        let (got, took) = until_closed(&mut kept, ms(5000)).await;
        assert!(got.is_empty(), "{got:?}");
        assert!(took >= ms(1100), "closed after {took:?} idle");

        // A kept-alive connection whose next head stalls: the header
        // timeout, counted from its first byte.
        let mut stalls = raw(&server, "").await;
        healthz_on(&mut stalls).await;
        tokio::time::sleep(ms(500)).await;
        {
            use tokio::io::AsyncWriteExt;
            stalls.write_all(b"GET /hea").await.unwrap();
        }
        let (_, took) = until_closed(&mut stalls, ms(3000)).await;
        assert!(took >= ms(250) && took < ms(1000), "closed after {took:?}");
        server.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn event_streams_outlive_the_timeouts() {
        let fleet = fleet();
        let short = Limits {
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(200),
            ..SHORT
        };
        let server = Server::start_with(fleet.clone(), supervisor(), short).await;
        let (mut rx, reader) = read_events(format!("{}/api/v1/events", server.base), None);
        assert_eq!(next(&mut rx).await[0].0, "connected");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        fleet.emit(Some("b"), EventKind::Ready { pid: 1 });
        assert_eq!(field(&next(&mut rx).await, "event"), "ready");
        server.stop().await;
        assert!(next(&mut rx).await.is_empty(), "the stream ends");
        reader.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_beyond_the_cap_are_answered_503() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let server = Server::start_with(fleet(), supervisor(), limits).await;
        let head = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
        let first = raw(&server, head).await;
        let _second = raw(&server, head).await;
        let mut third = raw(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (got, took) = until_closed(&mut third, Duration::from_secs(2)).await;
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got:?}"
        );
        assert!(got.contains("retry-after: 1\r\n"), "{got:?}");
        assert!(
            got.ends_with(r#"{"error":"too many connections (at most 2 at once)"}"#),
            "{got:?}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");

        // A slot comes free when a connection closes.
        drop(first);
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = raw(
                &server,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            let (r, _) = until_closed(&mut s, Duration::from_secs(5)).await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < end, "no slot came free: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Shutting down closes the connections that wait for a head, long
        // before their header timeout.
        server.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn binding_a_taken_address_is_an_error() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err
            .to_string()
            .starts_with(&format!("cannot listen on {addr}: ")));
    }
}
