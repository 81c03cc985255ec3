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
//! | GET | `/api/v1/health` | 200 SpeedData v0.5's `{"status", "service", "version"}` |
//! | GET | `/api/v1/channels` | 200 `{"channels": [status, ...]}` (`?status=active` or `registered`) |
//! | POST | `/api/v1/channels` | SpeedData v0.5's registration (see [`speeddata`]): 201; 400, 401, 403, 409 |
//! | GET | `/api/v1/channels/{name}` | 200 status, 404 |
//! | PUT | `/api/v1/channels/{name}` | 201/200 status; 400, 401, 403, 409/422 with `problems` |
//! | DELETE | `/api/v1/channels/{name}` | 200 `{"status", "name", "message"}`, 404 |
//! | POST | `/api/v1/channels/{name}/restart` | 202 `{"restarting": name}`, 404, 503 |
//! | GET | `/api/v1/channels/{name}/live` | WebSocket of decimated records (see [`crate::live`]) |
//! | GET | `/api/v1/channels/{name}/schema` | 200 the channel's Avro schema (JSON), 404 |
//! | GET | `/api/v1/channels/{name}/config` | 200 the channel file's text and schema |
//! | POST | `/api/v1/channels/{name}/check-schema` | 200 `{"compatible", "problems"}` |
//! | POST | `/api/v1/channels/{name}/validate-schema` | 200/409 `{"valid", "message", ...}` (SpeedData v0.5) |
//! | GET | `/api/v1/ports/free` | 200 `{"ports"}`, 409 too few |
//! | GET | `/api/v1/ports/available` | 200 `{"range", "available", "count"}` (SpeedData v0.5) |
//! | GET | `/api/v1/ports/{port}/status` | 200 `{"port", "available", "status", "channel"?}` (SpeedData v0.5) |
//! | GET | `/api/v1/events` | server-sent events (`?since=N`) |
//! | POST | `/api/v1/holds` | 201 the hold and what it covers; 409, 422 with `field` |
//! | GET | `/api/v1/holds` | 200 every hold and what it covers |
//! | GET | `/api/v1/holds/{name}` | 200 one hold, 404 |
//! | DELETE | `/api/v1/holds/{name}` | 204, 404 |
//! | GET | `/api/v1/pivot/export` | 200 channels over a range as columns (HDF5, Parquet, Arrow, CSV); 400, 401, 404, 413 |
//! | GET | `/` | the web console (see [`crate::console`]) |
//! | GET | `/channels/{name}` | the web console's page of a channel |
//! | GET | `/assets/{file}` | the web console's scripts and styles |
//!
//! Every body is a type of `speeddata_api`; every error is its
//! `ErrorBody`, `{"error", "field"?, "problems"?}`. The OpenAPI document is
//! generated from those types and the handlers' `#[utoipa::path]`: each
//! route is registered once, with its documentation ([`routes`]).
//!
//! A channel's 404 carries its `name` too, as SpeedData's did.
//!
//! Write requests (restart, registration, check-schema, validate-schema)
//! need the API token
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
//! most `http.max_connections` are open at once. A response being sent (an
//! event stream above all) is never cut by these timeouts.
//!
//! At the cap, a new connection evicts the open one that has waited
//! longest without being served: one that has not sent a whole request
//! head yet (nothing, or part of one), or a kept-alive one idle between
//! requests, counted from its acceptance or from its last answer.
//! The evicted connection is closed without an answer, as at the header
//! timeout. A connection serving a request (an event stream above all) is
//! never evicted, and a WebSocket no longer counts once upgraded; only
//! when every open connection is serving is the new one answered 503 at
//! once (`Retry-After: 1`) and closed. So clients that open connections
//! and never finish a request head cannot lock out the console or the
//! CLI: each new client pushes the oldest of them out. Evictions are
//! logged once, then counted at most once a minute.
//!
//! nginx makes room more narrowly: when no more than a sixteenth of its
//! `worker_connections` are free, `ngx_drain_connections` closes an eighth
//! (at most 32) of its "reusable" connections, oldest first; a connection is reusable
//! while it waits for the first byte of a request or is kept alive between
//! requests, and stops being so once a byte arrives, so one reading its
//! request head is never drained, only cut by `client_header_timeout`
//! (60 s); with no connection free, nginx closes the new one unanswered.
//! hyper has no connection limit (it serves the connections it is handed)
//! and bounds a slow head only with `header_read_timeout` (30 s by
//! default), which we replace with our own. The module `transport` has the
//! details and the sources.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use speeddata_api::ErrorBody;
use tokio::sync::{mpsc, watch};

use crate::state::Fleet;
use crate::supervisor::Request;
use relay_channel::config::ChannelSpec;

mod auth;
mod channels;
mod console;
mod events;
mod holds;
mod live;
mod pivot;
mod registration;
mod server;
mod speeddata;
#[cfg(test)]
mod tests;
mod transport;

pub use transport::{bind, serve_with, Limits};

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
        .routes(routes!(console::fleet_page))
        .routes(routes!(console::channel_page))
        .routes(routes!(console::asset))
        .routes(routes!(server::healthz))
        .routes(routes!(server::readyz))
        .routes(routes!(server::metrics))
        .routes(routes!(server::info))
        .routes(routes!(server::openapi_json))
        .routes(routes!(speeddata::health))
        .routes(routes!(channels::channels, speeddata::create))
        .routes(routes!(
            channels::channel,
            registration::register,
            registration::unregister
        ))
        .routes(routes!(channels::schema))
        .routes(routes!(registration::channel_config))
        .routes(routes!(registration::check_schema))
        .routes(routes!(speeddata::validate_schema))
        .routes(routes!(channels::restart))
        .routes(routes!(live::live))
        .routes(routes!(registration::free_ports))
        .routes(routes!(speeddata::available_ports))
        .routes(routes!(speeddata::port_status))
        .routes(routes!(holds::holds_list, holds::hold_create))
        .routes(routes!(holds::hold_get, holds::hold_delete))
        .routes(routes!(events::events))
        .routes(routes!(pivot::export))
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
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Every API error is JSON: an answer of 400 and up in plain text (what
/// axum's extractors answer for a path, query or body they cannot read, a
/// URL that is not UTF-8 among them) becomes `{"error": text}`. The text
/// answers that are meant (`/readyz`'s 503 listing the channels not ready)
/// are outside `/api/`.
async fn json_errors(uri: Uri, r: Response) -> Response {
    let is_text = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !(r.status().is_client_error() || r.status().is_server_error())
        || !is_text
        || !uri.path().starts_with("/api/")
    {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let text = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        text
    };
    error(parts.status, text)
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

/// 404 for channel `name`: our error, with SpeedData v0.5's `name`.
fn no_channel(name: &str) -> Response {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, format!("no channel {name:?}"));
    e.body.speeddata.name = Some(name.to_string());
    e.into_response()
}

/// Channel `name`'s configuration, or the 404 to answer (boxed: a
/// response is large): no such channel, or none valid yet (its file has
/// not loaded).
fn configured_channel(s: &AppState, name: &str) -> Result<Arc<ChannelSpec>, Box<Response>> {
    if s.fleet.get(name).is_none() {
        return Err(Box::new(no_channel(name)));
    }
    s.fleet.spec(name).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!("channel {name} has no valid configuration yet"),
        ))
    })
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
