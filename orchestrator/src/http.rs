//! The HTTP API: health, readiness, channel status, restarts, Prometheus
//! metrics and the lifecycle event stream.
//!
//! | method | path                               | answer                                   |
//! |--------|------------------------------------|------------------------------------------|
//! | GET    | `/healthz`                         | 200 `ok`                                 |
//! | GET    | `/readyz`                          | 200 `ready`, or 503 listing the others   |
//! | GET    | `/api/v1/channels`                 | 200 `{"channels": [status, ...]}`        |
//! | GET    | `/api/v1/channels/{name}`          | 200 status, 404 `{"error": ...}`         |
//! | POST   | `/api/v1/channels/{name}/restart`  | 202 `{"restarting": name}`, 404, 503     |
//! | GET    | `/metrics`                         | Prometheus text format                   |
//! | GET    | `/api/v1/events[?since=N]`         | server-sent events                       |
//!
//! Unknown paths answer 404 and a wrong method 405 (with `Allow`), both
//! with a JSON `{"error": ...}` body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::state::{Event, Fleet, State as ChannelState};
use crate::supervisor::Request;

/// How often an idle event stream carries a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a restart request waits for the supervisor's answer.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API reads and whom it asks.
pub struct Api {
    pub fleet: Arc<Fleet>,
    pub requests: mpsc::Sender<Request>,
}

#[derive(Clone)]
struct AppState {
    fleet: Arc<Fleet>,
    requests: mpsc::Sender<Request>,
    /// Becomes `true` when the server shuts down: event streams end then,
    /// so that the graceful shutdown does not wait for them forever.
    closing: watch::Receiver<bool>,
    /// Keeps `closing` open when no [`serve`] owns its sender.
    _closing_sender: Option<Arc<watch::Sender<bool>>>,
}

/// The API's routes. Event streams served by this router end only when
/// their client goes away; [`serve`] also ends them at shutdown.
pub fn router(api: Api) -> Router {
    let (tx, rx) = watch::channel(false);
    build(api, rx, Some(Arc::new(tx)))
}

fn build(
    api: Api,
    closing: watch::Receiver<bool>,
    closing_sender: Option<Arc<watch::Sender<bool>>>,
) -> Router {
    let state = AppState {
        fleet: api.fleet,
        requests: api.requests,
        closing,
        _closing_sender: closing_sender,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/channels/{name}", get(channel))
        .route("/api/v1/channels/{name}/restart", post(restart))
        .route("/api/v1/events", get(events))
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

/// Serves the API on `listener` until `shutdown` resolves, then ends the
/// open event streams and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = build(api, rx, None);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

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

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.fleet.metrics.render(),
    )
        .into_response()
}

async fn channels(State(s): State<AppState>) -> Response {
    Json(json!({ "channels": s.fleet.list() })).into_response()
}

async fn channel(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.fleet.get(&name) {
        Some(c) => Json(c).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no channel {name:?}")),
    }
}

async fn restart(State(s): State<AppState>, Path(name): Path<String>) -> Response {
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
            (StatusCode::ACCEPTED, Json(json!({ "restarting": name }))).into_response()
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
                .data(json!({ "missed": missed }).to_string()),
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
        .event(e.event)
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
    use crate::state::Fleet;
    use serde_json::{Map, Value};
    use std::io::{BufRead, BufReader};
    use tokio::task::JoinHandle;

    struct Server {
        base: String,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(fleet: Arc<Fleet>, requests: mpsc::Sender<Request>) -> Server {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, Api { fleet, requests }, async move {
                let _ = stopped.await;
            }));
            Server {
                base,
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

    fn stats(received: u64) -> Map<String, Value> {
        json!({"event": "stats", "received": received, "archived": received, "rejected": 1})
            .as_object()
            .unwrap()
            .clone()
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
        f.emit("started", Some("a"), json!({"pid": 4242}));
        f.emit("ready", Some("a"), Value::Null);
        f.emit(
            "failed",
            Some("b"),
            json!({"reason": "6 failures within 60s"}),
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
        let r = call("DELETE", format!("{base}/api/v1/channels/a")).await;
        assert_eq!(r.status, 405);

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
        fleet.emit("restarting", Some("b"), json!({"delay_ms": 100}));
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
        fleet.emit("ready", Some("b"), Value::Null);
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
        let emitted = 3000;
        for i in 0..emitted {
            fleet.emit("started", Some("a"), json!({"pid": i}));
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
            fleet.emit("ready", Some("a"), Value::Null);
        }
        assert!(matches!(stream.next().await, Some(Item::Lagged(76))));
        let after = emitted + 76 + 1;
        assert!(matches!(stream.next().await, Some(Item::Event(e)) if e.seq == after));
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
