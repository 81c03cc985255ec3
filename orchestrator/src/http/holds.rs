//! `/api/v1/holds[/{name}]`: holds and what they cover.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use speeddata_api::{ErrorBody, HoldList, NewHold};

use super::auth::{Cfg, Writer};
use super::registration::JsonBody;
use super::{error, ApiError, AppState};

/// Every channel's archive folder, for what holds cover.
pub(super) fn archives(s: &AppState) -> Vec<crate::holds::ArchiveOf> {
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
pub(super) async fn holds_list(State(s): State<AppState>, Cfg(cfg): Cfg) -> Response {
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
pub(super) async fn hold_get(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Cfg(cfg): Cfg,
) -> Response {
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
pub(super) async fn hold_create(
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
pub(super) async fn hold_delete(
    Path(name): Path<String>,
    Writer(who): Writer,
    Cfg(cfg): Cfg,
) -> Response {
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
