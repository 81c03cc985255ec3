//! The connections: the cap on how many are open, the head and idle
//! timeouts, keep-alive, and a graceful shutdown that ends event streams.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use speeddata_api::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{build, Api, Peer};

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

/// Binds the API's address. The error names the address; the caller adds
/// where it came from (`http.listen`).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
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
pub(super) fn is_connection_error(e: &io::Error) -> bool {
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
pub(super) struct Throttled {
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
pub(super) fn refusal(max: usize) -> Vec<u8> {
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
pub(super) struct Activity {
    state: Mutex<ActivityState>,
    /// Told whenever `state` changes.
    changed: Notify,
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
pub(super) struct InFlight(Arc<Activity>);

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

/// The connection's socket, noting when bytes arrive.
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
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
