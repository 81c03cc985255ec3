use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::state::{Fleet, State as ChannelState};
use crate::supervisor::Request;

use super::*;
use super::{auth::*, events::*, transport::*};
use crate::state::{EventKind, Exit};
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
    include_str!("mod.rs")
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
fn kernel_drops_is_nullable_in_the_document() {
    // The portable I/O path has no kernel drop counter: the API writes
    // `null` (relay_channel::status::Stats), and the schema must allow it,
    // or generated clients reject the channel.
    let doc = serde_json::to_value(openapi()).unwrap();
    let text = doc["components"]["schemas"].to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut found = 0;
    for (name, schema) in schemas {
        let mut stack = vec![schema];
        while let Some(v) = stack.pop() {
            if let Some(k) = v.get("properties").and_then(|p| p.get("kernel_drops")) {
                found += 1;
                let ty = &k["type"];
                assert!(
                    ty.as_array().is_some_and(|a| a.iter().any(|t| t == "null")),
                    "{name}.kernel_drops: {k}"
                );
            }
            if let Some(all) = v.get("allOf").and_then(|a| a.as_array()) {
                stack.extend(all);
            }
        }
    }
    assert!(found > 0, "no kernel_drops property in {text}");
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

/// Every property name of the document's schemas, and every parameter
/// name, at any depth.
fn documented_fields() -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                if let Some(Value::Array(params)) = m.get("parameters") {
                    out.extend(
                        params
                            .iter()
                            .filter_map(|p| p["name"].as_str().map(String::from)),
                    );
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&serde_json::to_value(openapi()).unwrap(), &mut out);
    out
}

/// The API field names a script reads: `snake_case` words after a `.` or
/// in quotes (the console's own names are camelCase), other than
/// configuration keys it names in its text (`http.token_file`).
fn fields_read_by(script: &str) -> Vec<String> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
        if i > 0 && (b[i - 1] == b'.' || b[i - 1] == b'\'' || b[i - 1] == b'"') && word(b[i]) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let w = &script[start..i];
            let config_key = script[..start].ends_with("http.");
            if w.contains('_') && b[start].is_ascii_lowercase() && !config_key {
                out.push(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_console_reads_only_fields_the_document_names() {
    let documented = documented_fields();
    let mut checked = 0;
    for (name, script) in crate::console::scripts() {
        for field in fields_read_by(script) {
            assert!(
                documented.contains(&field),
                "{name} reads {field:?}, which the OpenAPI document does not name"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} field reads found");
    assert_eq!(fields_read_by("c.rates.receved_per_s"), ["receved_per_s"]);
    assert!(!documented.contains("receved_per_s"));
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
            path.replace("{name}", "a")
                .replace("{file}", "x.js")
                .replace("{port}", "26000")
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
    assert!(doc["components"]["schemas"]["ChannelStatus"]["properties"]["counters"].is_object());
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
    assert_eq!(r.json(), json!({"error": "no channel \"x\"", "name": "x"}));

    // SpeedData v0.5's fields and filter: `a` runs (active), `b` does not.
    let r = call("GET", format!("{base}/api/v1/channels?status=active")).await;
    assert_eq!(r.status, 200);
    let names: Vec<Value> = r.json()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("a")]);
    assert_eq!(r.json()["channels"][0]["status"], "active");
    let r = call("GET", format!("{base}/api/v1/channels?status=registered")).await;
    assert_eq!(r.json()["channels"][0]["name"], "b");
    assert_eq!(r.json()["channels"][0]["status"], "registered");
    assert_eq!(r.json()["channels"].as_array().unwrap().len(), 1);
    let r = call("GET", format!("{base}/api/v1/channels?status=gone")).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("status"))
    );
    let r = call("GET", format!("{base}/api/v1/health")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["service"], "speeddata-registration-api");
    assert_eq!(r.json()["version"], "0.5.0");

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

    // A URL that is not UTF-8 once decoded: JSON like every API error.
    for path in [
        "/api/v1/channels/%FF",
        "/api/v1/channels/%C3%28/schema",
        "/api/v1/holds/%FE%FF",
    ] {
        let r = call("GET", format!("{base}{path}")).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("UTF-8") || error.contains("utf-8"),
            "{path}: {error}"
        );
    }
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

/// Whether `s` is still open: nothing arrives, and no close, within
/// 100 ms.
async fn still_open(s: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf))
        .await
        .is_err()
}

/// Asserts that the server closed `s` at once and without a word: it was
/// evicted (the header and idle timeouts are 10 s and 60 s here).
async fn assert_evicted(s: &mut TcpStream, which: &str) {
    let (got, took) = until_closed(s, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "{which}: {got:?}");
    assert!(
        took < Duration::from_secs(1),
        "{which}: closed after {took:?}"
    );
}

/// An event stream on a connection of its own, its response head read:
/// the connection is serving a request from then on.
async fn open_event_stream(server: &Server) -> TcpStream {
    use tokio::io::AsyncReadExt;
    let mut s = raw(server, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the event stream's head within 5 s")
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    s
}

/// A request with `Connection: close` on a new connection, answered within
/// 1 s: the whole answer.
async fn answered(server: &Server) -> String {
    let mut s = raw(
        server,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (got, took) = until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    got
}

const HALF_HEAD: &str = "GET /healthz HTTP/1.1\r\nHost: x\r\n";

#[tokio::test(flavor = "current_thread")]
async fn a_full_table_of_half_open_connections_still_admits_new_clients() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let server = Server::start_with(fleet(), supervisor(), limits).await;
    // Every slot held by a connection that never finishes its head (or
    // sends nothing at all).
    let mut half = Vec::new();
    for sent in [HALF_HEAD, "", HALF_HEAD, "GET /hea"] {
        half.push(raw(&server, sent).await);
    }
    // Each new client is answered, evicting the oldest of them (and then
    // closes; another half-open connection fills the table again).
    for i in 0..2 {
        let got = answered(&server).await;
        assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
        assert!(got.ends_with("\r\n\r\nok"), "{got:?}");
        assert_evicted(&mut half[i], &format!("half-open connection {i}")).await;
        for (j, s) in half.iter_mut().enumerate().skip(i + 1) {
            assert!(still_open(s).await, "half-open connection {j} was closed");
        }
        half.push(raw(&server, HALF_HEAD).await);
    }
    // A client that only reconnects (and keeps every connection open)
    // evicts its own connections.
    let mut again = Vec::new();
    for _ in 0..10 {
        again.push(raw(&server, HALF_HEAD).await);
    }
    let got = answered(&server).await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert_evicted(&mut again[0], "the first reconnection").await;
    assert!(still_open(&mut again[9]).await);
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_connection_evicted_is_the_one_that_waited_longest_without_being_served() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let server = Server::start_with(fleet(), supervisor(), limits).await;
    // `half`: a head under way since before `kept` was served; `kept`:
    // kept alive, idle since its answer; `late`: half-open since after.
    let mut half = raw(&server, HALF_HEAD).await;
    let mut kept = raw(&server, "").await;
    assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200 "));
    let mut late = raw(&server, "GET /").await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // New clients that stay open: each is kept alive after its answer,
    // and the one that waited longest goes, `half` first.
    let mut first = raw(&server, "").await;
    assert!(healthz_on(&mut first).await.starts_with("HTTP/1.1 200 "));
    assert_evicted(&mut half, "the oldest half-open connection").await;
    assert!(still_open(&mut kept).await && still_open(&mut late).await);

    let mut second = raw(&server, "").await;
    assert!(healthz_on(&mut second).await.starts_with("HTTP/1.1 200 "));
    assert_evicted(&mut kept, "the kept-alive connection idle longest").await;
    assert!(still_open(&mut late).await);

    let mut third = raw(&server, "").await;
    assert!(healthz_on(&mut third).await.starts_with("HTTP/1.1 200 "));
    assert_evicted(&mut late, "the younger half-open connection").await;

    // Serving again puts a connection at the back of the queue: `first`
    // answered now, `second` goes next.
    assert!(healthz_on(&mut first).await.starts_with("HTTP/1.1 200 "));
    let got = answered(&server).await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert_evicted(&mut second, "the kept-alive connection idle longest").await;
    assert!(still_open(&mut first).await && still_open(&mut third).await);
    server.stop().await;
}

#[test]
fn eviction_never_takes_a_connection_serving_a_request() {
    let admission = Arc::new(Admission::new(3));
    let (a, b) = (admission.admit(), admission.admit());
    // `a` serves a request: `b`, younger, is the one to go.
    let (serving, refused) = a.0.request_started();
    assert!(!refused);
    assert!(admission.evict_oldest());
    assert!(b.0.evicted() && !a.0.evicted());
    // No other candidate: a new connection would be answered 503.
    assert!(!admission.evict_oldest());
    // `b`'s head completes just after its eviction: the request is
    // refused, and the connection closes once that is answered.
    let (answering, refused) = b.0.request_started();
    assert!(refused && !b.0.evicted());
    drop(answering);
    assert!(!b.0.evicted(), "closed before its answer is flushed");
    b.0.flushed();
    assert!(b.0.evicted());
    // `a`, kept alive once answered, waits again once its answer is
    // flushed.
    drop(serving);
    assert!(!admission.evict_oldest());
    a.0.flushed();
    assert!(admission.evict_oldest());
    assert!(a.0.evicted());
    // A closed connection leaves the queue.
    drop(admission.admit());
    assert!(!admission.evict_oldest());
}

#[tokio::test(flavor = "current_thread")]
async fn connections_beyond_a_table_of_busy_ones_are_answered_503() {
    let fleet = fleet();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = Server::start_with(fleet.clone(), supervisor(), limits).await;
    // An event stream is never evicted: a half-open connection beside it
    // is.
    let mut stream = open_event_stream(&server).await;
    let mut half = raw(&server, HALF_HEAD).await;
    let got = answered(&server).await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert_evicted(&mut half, "the half-open connection").await;

    // Every connection serving a request: 503 at once, and a close.
    let _other = open_event_stream(&server).await;
    let got = answered(&server).await;
    assert!(
        got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{got:?}"
    );
    assert!(got.contains("retry-after: 1\r\n"), "{got:?}");
    assert!(
        got.ends_with(r#"{"error":"too many connections (at most 2 at once)"}"#),
        "{got:?}"
    );
    // Both streams still deliver.
    fleet.emit(Some("b"), EventKind::Ready { pid: 1 });
    {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("ready") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("the event within 5 s")
                .unwrap();
            assert!(n > 0, "the stream was closed");
            got.extend_from_slice(&buf[..n]);
        }
    }

    // A slot comes free when a connection closes.
    drop(stream);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = answered(&server).await;
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < end, "no slot came free: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Shutting down ends the event stream.
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
