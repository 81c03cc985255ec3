//! The connections: the cap on how many are open and who makes room when
//! it is reached, the head and idle timeouts, keep-alive, and a graceful
//! shutdown that ends event streams.
//!
//! # Admission
//!
//! At most `http.max_connections` connections are open at once. When a
//! new one arrives at the cap, the connection that has waited longest
//! without being served is closed to make room for it: every connection
//! that is not serving a request waits in [`Admission`]'s queue, ordered
//! by when it began to wait (its acceptance, or, kept alive, the moment
//! its last response was flushed to the socket). That is a connection that has not
//! sent a whole request head yet (nothing at all, or part of one) or a
//! kept-alive one idle between requests. A connection serving a request
//! (an event stream above all) is never evicted, and a WebSocket has left
//! the table once upgraded; only when every open connection is serving
//! does a new one get a 503 and a close. So clients that open connections
//! and never finish a request head (256 of them fill the default table)
//! cannot lock out the console or the CLI: each new client pushes the
//! oldest of them out, and a client that reconnects in a loop only
//! evicts its own earlier connections. An evicted connection is closed
//! without an answer, as at the head or idle timeout (a client retries a
//! kept-alive connection closed under it, as it must anyway).
//!
//! nginx does less (as read in its source, commit 3f6f782):
//! `ngx_get_connection` calls `ngx_drain_connections` first, which, once
//! no more than a sixteenth of `worker_connections` are free, closes an
//! eighth of its "reusable" connections (at least one, at most 32) from
//! the old end of their queue, logging "worker_connections are not enough, reusing
//! connections" at most once a second (`src/core/ngx_connection.c`). HTTP
//! marks a connection reusable while it waits for the first byte of a
//! request (`ngx_http_init_connection`, `ngx_http_wait_request_handler`)
//! and while it is kept alive between requests (`ngx_http_set_keepalive`,
//! `ngx_http_keepalive_handler`), and unmarks it as soon as a byte arrives
//! (`src/http/ngx_http_request.c`): a connection reading its request line
//! and headers is never drained, only cut by `client_header_timeout`
//! (60 s by default). With no free connection left, the new socket is
//! closed without an answer (`src/event/ngx_event_accept.c`). Here a
//! connection part-way through its head is evicted too: that is the
//! connection a slow client holds.
//!
//! hyper (1.x) has no connection limit of its own: `hyper::server::conn`
//! serves one connection it is handed, and accepting is the caller's. It
//! bounds a slow head only with `http1::Builder::header_read_timeout`
//! (30 s by default; it needs a timer), whose clock starts when hyper
//! begins to read a head, right after the previous response on a
//! kept-alive connection, so that it would also cut one merely idle: we
//! turn it off and keep our own [`HEADER_TIMEOUT`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse as _;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use speeddata_api::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{build, Api, Peer};

/// How long a client may take to send a whole request head: counted from
/// the connection's acceptance for its first request, from the first byte
/// of the next one on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection waits for the one it evicted to close (a
/// matter of microseconds: the evicted connection's task closes it as
/// soon as it runs); past that it is answered 503.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// How often evictions are logged, at most (the first one of a burst at
/// once).
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Bounds on the API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, at most. A new one beyond that evicts the
    /// connection that has waited longest without being served; when
    /// every one is serving a request it is answered 503 and closed.
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

/// Connections the kernel completes and queues for `accept`, at most.
/// std and mio (tokio's `TcpListener::bind`) ask for 128, which a burst of
/// connections overflows while the server is still accepting: the kernel
/// then drops the SYNs of everyone else too, and their clients try again
/// only after a second. nginx asks for 511 on Linux; the kernel caps this
/// at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the API's address. The error names the address; the caller adds
/// where it came from (`http.listen`).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let listening = || {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std and mio do: a restart need not wait for TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listening()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, closes the connections that are not serving a request, ends
/// the open event streams and returns once every connection is closed.
/// At the connection cap a new connection evicts the one that has waited
/// longest without being served (see the module's doc).
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
    let admission = Arc::new(Admission::new(max));
    let refusal = refusal(max);
    let mut refused = Throttled::default();
    let mut evictions = Throttled::every(EVICTION_LOG_INTERVAL);
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
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if admission.evict_oldest() => {
                evictions.note(|n| {
                    tracing::warn!(
                        evicted = n,
                        max_connections = max,
                        "HTTP: too many connections; closing the ones that have waited longest without sending a request, to admit new ones"
                    )
                });
                // The evicted connection closes as soon as its task runs,
                // and its slot is this one's.
                tokio::select! {
                    _ = &mut shutdown => break,
                    slot = tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()) => {
                        slot.ok().and_then(Result::ok)
                    }
                }
            }
            Err(_) => None,
        };
        match slot {
            Some(slot) => {
                let activity = admission.admit();
                tokio::spawn(connection(
                    stream,
                    peer,
                    app.clone(),
                    limits,
                    closing.clone(),
                    activity,
                    slot,
                ));
            }
            None => {
                refuse(stream, &refusal);
                refused.note(|n| {
                    tracing::warn!(
                        refused = n,
                        max_connections = max,
                        "HTTP: too many connections, every one serving a request; refusing new ones with 503"
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
pub(super) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Counts occurrences and reports the first at once, then at most one
/// line every 10 s (or the interval given to [`Throttled::every`]), with
/// the count since the last report.
pub(super) struct Throttled {
    last: Option<Instant>,
    count: u64,
    interval: Duration,
}

impl Default for Throttled {
    fn default() -> Throttled {
        Throttled::every(Duration::from_secs(10))
    }
}

impl Throttled {
    pub(super) fn every(interval: Duration) -> Throttled {
        Throttled {
            last: None,
            count: 0,
            interval,
        }
    }

    pub(super) fn note(&mut self, report: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= self.interval) {
            report(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

/// The message of a 503 for want of connections.
fn too_many(max: usize) -> String {
    format!("too many connections (at most {max} at once)")
}

/// What a connection beyond the cap is told.
pub(super) fn refusal(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody::new(too_many(max))).unwrap_or_default();
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
pub(super) fn refuse(stream: TcpStream, answer: &[u8]) {
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
pub(super) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    admitted: Admitted,
    _slot: OwnedSemaphorePermit,
) {
    let activity = admitted.0.clone();
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let router = TowerToHyperService::new(app);
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let (in_flight, evicted) = activity.request_started();
            // A head completed just after the connection was chosen for
            // eviction: it is answered as a connection beyond the cap is.
            let response = (!evicted).then(|| router.call(req));
            let max = activity.admission.max;
            async move {
                let response = match response {
                    Some(r) => r.await?,
                    None => evicted_answer(max),
                };
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
        if activity.evicted() {
            tracing::debug!(%peer, "closing the HTTP connection: evicted to admit a new one");
            return;
        }
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

/// The connections that are not serving a request, for eviction: each
/// waits in `queue` under the number it drew when it began to wait, so the
/// first is the one that has waited longest.
pub(super) struct Admission {
    queue: Mutex<Waiting>,
    /// `http.max_connections`, for the 503's message.
    max: usize,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    queue: BTreeMap<u64, Arc<Activity>>,
}

impl Waiting {
    /// Queues `activity` (locked as `s`) behind every other.
    fn push(&mut self, activity: &Arc<Activity>, s: &mut ActivityState) {
        let key = self.next;
        self.next += 1;
        s.waiting = Some(key);
        self.queue.insert(key, activity.clone());
    }
}

impl Admission {
    pub(super) fn new(max: usize) -> Admission {
        Admission {
            queue: Mutex::new(Waiting::default()),
            max,
        }
    }

    /// Locked before any connection's state, never after.
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection, waiting for its first request head.
    pub(super) fn admit(self: &Arc<Self>) -> Admitted {
        let activity = Arc::new(Activity::new(self.clone()));
        let mut w = self.lock();
        w.push(&activity, &mut activity.lock());
        Admitted(activity)
    }

    /// Marks the connection that has waited longest without being served
    /// as evicted and wakes it (it closes then); `false` if every open
    /// connection is serving a request.
    pub(super) fn evict_oldest(&self) -> bool {
        let mut w = self.lock();
        let Some((_, victim)) = w.queue.pop_first() else {
            return false;
        };
        let mut s = victim.lock();
        s.waiting = None;
        s.evicted = true;
        drop(s);
        drop(w);
        victim.changed.notify_one();
        true
    }
}

/// A connection in [`Admission`]'s table: taken out of it when dropped,
/// with the connection.
pub(super) struct Admitted(pub(super) Arc<Activity>);

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.0;
        let mut w = a.admission.lock();
        let mut s = a.lock();
        s.closed = true;
        if let Some(key) = s.waiting.take() {
            w.queue.remove(&key);
        }
    }
}

/// What a connection whose request head completed after it was evicted is
/// told: a 503, as a connection beyond the cap, and a close.
fn evicted_answer(max: usize) -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        axum::Json(ErrorBody::new(too_many(max))),
    )
        .into_response()
}

/// What a connection is doing, for its timeouts and for eviction.
pub(super) struct Activity {
    state: Mutex<ActivityState>,
    /// Told whenever `state` changes, and when the connection is evicted.
    changed: Notify,
    admission: Arc<Admission>,
}

pub(super) struct ActivityState {
    /// Requests whose response is not finished.
    in_flight: usize,
    /// Responses finished.
    served: u64,
    /// When the connection was accepted or its last response finished.
    idle_since: Instant,
    /// When the first byte after `idle_since` arrived (a request head under
    /// way).
    head_started: Option<Instant>,
    /// The connection's place in [`Admission`]'s queue while it serves no
    /// request.
    waiting: Option<u64>,
    /// A response has ended, and hyper may still hold some of it: the
    /// connection waits (for eviction) only once it has flushed it all.
    unflushed: bool,
    /// Chosen to make room for a new connection: it closes.
    evicted: bool,
    /// The connection is gone.
    closed: bool,
}

impl Activity {
    fn new(admission: Arc<Admission>) -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                served: 0,
                idle_since: Instant::now(),
                head_started: None,
                waiting: None,
                unflushed: false,
                evicted: false,
                closed: false,
            }),
            changed: Notify::new(),
            admission,
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
    /// returned guard (kept with the response body) is dropped, and the
    /// connection cannot be evicted meanwhile. `true` with it if the
    /// connection was evicted first: the request is to be refused.
    pub(super) fn request_started(self: &Arc<Self>) -> (InFlight, bool) {
        let mut w = self.admission.lock();
        let mut s = self.lock();
        s.in_flight += 1;
        s.unflushed = false;
        if let Some(key) = s.waiting.take() {
            w.queue.remove(&key);
        }
        let evicted = s.evicted;
        drop(s);
        drop(w);
        self.changed.notify_one();
        (InFlight(self.clone()), evicted)
    }

    fn idle(&self) -> bool {
        self.lock().in_flight == 0
    }

    /// Evicted, and not serving a request (one whose head beat the
    /// eviction is answered first): to be closed now.
    pub(super) fn evicted(&self) -> bool {
        let s = self.lock();
        s.evicted && s.in_flight == 0 && !s.unflushed
    }

    /// hyper has handed everything it wrote to the socket. After a
    /// response, the connection waits for its next request from now on:
    /// closing it earlier could cut the response.
    pub(super) fn flushed(self: &Arc<Self>) {
        if !self.lock().unflushed {
            return;
        }
        let mut w = self.admission.lock();
        let mut s = self.lock();
        if !s.unflushed || s.in_flight > 0 {
            return;
        }
        s.unflushed = false;
        if !s.evicted && !s.closed {
            w.push(self, &mut s);
        }
        drop(s);
        drop(w);
        self.changed.notify_one();
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
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let mut s = a.lock();
        s.in_flight -= 1;
        s.served += 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
            // Kept alive, it waits for its next request behind every
            // other waiting connection once the response is flushed.
            s.unflushed = true;
        }
        drop(s);
        a.changed.notify_one();
    }
}

/// A response body that keeps its request counted as served until it is
/// sent.
pub(super) struct Served {
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

/// The connection's socket, noting when bytes arrive and when hyper has
/// flushed what it wrote.
pub(super) struct Watched {
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
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.activity.flushed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
