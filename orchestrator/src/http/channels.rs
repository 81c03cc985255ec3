//! `/api/v1/channels[/{name}[/schema|/restart]]`: status, schema, restart.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use speeddata_api::{ChannelList, ChannelStatus, ErrorBody, RegistrationStatus, Restarting};
use tokio::sync::oneshot;

use crate::supervisor::Request;

use super::auth::Writer;
use super::{configured_channel, error, no_channel, ApiError, AppState};

/// How long a restart request waits for the supervisor's answer.
pub(super) const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /api/v1/channels/{name}/schema`: the schema the channel's relay
/// runs with, as JSON.
#[utoipa::path(get, path = "/api/v1/channels/{name}/schema", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The Avro schema the channel's relay runs with", body = Object),
        (status = 404, description = "No such channel, or no schema yet", body = ErrorBody),
        (status = 422, description = "The schema file is not JSON", body = ErrorBody)))]
pub(super) async fn schema(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let spec = match configured_channel(&s, &name) {
        Ok(spec) => spec,
        Err(r) => return *r,
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

/// `GET /api/v1/channels[?status=active|registered]`: every channel's
/// status, or those of SpeedData v0.5's `status`.
#[utoipa::path(get, path = "/api/v1/channels", tag = "channels",
    params(("status" = Option<String>, Query, description = "Only the channels of this SpeedData status: `active` (a relay runs: starting or ready) or `registered` (none runs)")),
    responses((status = 200, description = "Every channel's status", body = ChannelList),
        (status = 400, description = "A bad query", body = ErrorBody)))]
pub(super) async fn channels(
    State(s): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut only = None;
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        match (k.as_str(), v.as_str()) {
            ("status", "active") => only = Some(RegistrationStatus::Active),
            ("status", "registered") => only = Some(RegistrationStatus::Registered),
            ("status", _) => {
                return ApiError::field(
                    StatusCode::BAD_REQUEST,
                    Some("status".into()),
                    format!("status={v:?}: `active` or `registered`"),
                )
                .into_response()
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (status)"),
                )
            }
        }
    }
    let mut channels = s.fleet.list();
    if let Some(only) = only {
        channels.retain(|c| c.status == only);
    }
    Json(ChannelList { channels }).into_response()
}

#[utoipa::path(get, path = "/api/v1/channels/{name}", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The channel's status", body = ChannelStatus),
        (status = 404, description = "No such channel", body = ErrorBody)))]
pub(super) async fn channel(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.fleet.get(&name) {
        Some(c) => Json(c).into_response(),
        None => no_channel(&name),
    }
}

#[utoipa::path(post, path = "/api/v1/channels/{name}/restart", tag = "channels", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 202, description = "Restarting", body = Restarting),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 503, description = "The supervisor is not running", body = ErrorBody),
        (status = 504, description = "The supervisor did not answer in time", body = ErrorBody)))]
pub(super) async fn restart(
    State(s): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
) -> Response {
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
