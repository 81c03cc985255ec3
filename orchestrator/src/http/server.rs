//! `/healthz`, `/readyz`, `/metrics`, `/api/v1/info` and the OpenAPI
//! document: the server itself.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use speeddata_api::Info;

use crate::state::State as ChannelState;

use super::AppState;

/// `GET /api/v1/info`: what the console needs to know of the server.
#[utoipa::path(get, path = "/api/v1/info", tag = "server",
    responses((status = 200, description = "What the console needs to know of the server", body = Info)))]
pub(super) async fn info(State(s): State<AppState>) -> Response {
    let (auth, refused) = s.write_auth();
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        writes: refused.is_none(),
        auth: auth.into(),
        writes_refused: refused,
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "server",
    responses((status = 200, description = "This document: the API's OpenAPI 3 description", body = Object)))]
pub(super) async fn openapi_json(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "The orchestrator runs", content_type = "text/plain", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "server",
    responses((status = 200, description = "Every channel is ready", content_type = "text/plain", body = String),
        (status = 503, description = "The channels that are not, and why", content_type = "text/plain", body = String)))]
pub(super) async fn readyz(State(s): State<AppState>) -> Response {
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

pub(super) fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format: every channel's counters, labelled by channel, and the supervision counters", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.fleet.render_metrics(),
    )
        .into_response()
}
