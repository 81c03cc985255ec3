//! `GET /api/v1/pivot/export`: channels over a time range, as columns
//! (SpeedData's Pivot API call, and more: see `speeddata_api::pivot` for
//! the parameters, `speeddata_pivot` for what is read and written).

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use speeddata_api::pivot::PivotQuery;
use speeddata_api::ErrorBody;

use super::auth::{tokens_equal, Cfg};
use super::{ApiError, AppState};
use crate::pivot::{check_limits, request, Refused, ToBody};

/// The longest query string taken: far beyond any real one (64 channel
/// names and a hundred signals), short of one sent to exhaust memory.
const MAX_QUERY: usize = 64 << 10;

/// `GET /api/v1/pivot/export?channels=a,b&start=…&duration=PT30S`.
#[utoipa::path(get, path = "/api/v1/pivot/export", tag = "pivot",
    params(
        ("channels" = String, Query, description = "Comma list of channel names (required)"),
        ("start" = Option<String>, Query, description = "RFC 3339 time, inclusive; with `end` or `duration`"),
        ("end" = Option<String>, Query, description = "RFC 3339 time, exclusive"),
        ("duration" = Option<String>, Query, description = "ISO 8601 duration: PT30S, PT1.5S, PT5M, PT1H, P1D"),
        ("last" = Option<String>, Query, description = "ISO 8601 duration ending now, instead of start"),
        ("signals" = Option<String>, Query, description = "Comma list of fields (dotted through nested records); default every field; the time field always comes"),
        ("format" = Option<String>, Query, description = "hdf5 (default), parquet, arrow or csv"),
        ("time" = Option<String>, Query, description = "record (default with archive.time_field) or arrival")),
    responses((status = 200, description = "The export: HDF5, Parquet, Arrow IPC or CSV; a zip of one file a channel for several channels in the last three. X-Export-Empty-Channels names the channels with no data in the range", content_type = "application/octet-stream"),
        (status = 400, description = "A parameter is wrong (`field` names it)", body = ErrorBody),
        (status = 401, description = "http.token_file is set and the token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "The archive cannot answer: a file of the range was written under another schema (the message names it)", body = ErrorBody),
        (status = 413, description = "Over http.export_max_duration or http.export_max_channels (the message names it)", body = ErrorBody)))]
pub(super) async fn export(
    State(s): State<AppState>,
    Cfg(cfg): Cfg,
    headers: HeaderMap,
    axum::Extension(peer): axum::Extension<super::Peer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let peer: SocketAddr = peer.0;
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|t| tokens_equal(t, token)) {
            tracing::warn!(%peer, "HTTP: export refused: no or wrong API token");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "exports hand out data: they need the API token (Authorization: Bearer <token>)",
            )
            .into_response();
        }
    }
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY {
        return bad(
            None,
            format!(
                "the query string is {} bytes; at most {MAX_QUERY} are taken",
                raw.len()
            ),
        );
    }
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(&raw) {
        Ok(p) => p,
        Err(e) => return bad(None, format!("the query string does not parse: {e}")),
    };
    let query = match PivotQuery::parse(&pairs, std::time::SystemTime::now()) {
        Ok(q) => q,
        Err(e) => return bad(Some(e.field), e.message),
    };
    let refused = check_limits(&query, cfg.export_max_duration, cfg.export_max_channels).err();
    let fleet = s.fleet.clone();
    let prepared = match refused {
        Some(r) => Err(r),
        None => {
            let q = query.clone();
            let planned = tokio::task::spawn_blocking(move || {
                let req = request(&q, |name| {
                    fleet.get(name)?;
                    fleet.spec(name).map(|s| (*s).clone())
                })?;
                speeddata_pivot::plan(&req).map_err(Refused::Bad)
            })
            .await;
            match planned {
                Ok(p) => p,
                Err(e) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response()
                }
            }
        }
    };
    let plan = match prepared {
        Ok(p) => p,
        Err(Refused::NotFound(m)) => {
            return ApiError::field(StatusCode::NOT_FOUND, Some("channels".into()), m)
                .into_response()
        }
        Err(Refused::TooLarge(m)) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m).into_response()
        }
        Err(Refused::Bad(e)) if e.archive => {
            return ApiError::new(StatusCode::CONFLICT, e.message).into_response()
        }
        Err(Refused::Bad(e)) => return bad(e.field, e.message),
    };
    let empty = plan.empty_channels().join(",");
    let name = plan.file_name();
    let content_type = plan.content_type();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let abort = tx.clone();
    let what = format!(
        "channels={} start={} end={} format={}",
        query.channels.join(","),
        relay_channel::holds::stamp(query.start),
        relay_channel::holds::stamp(query.end),
        query.format.as_str()
    );
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        match plan.write(ToBody::new(tx)) {
            Ok(summary) => tracing::info!(
                %peer, rows = ?summary.rows, blocks = summary.blocks_read,
                bytes = summary.bytes_decoded, took_ms = t0.elapsed().as_millis() as u64,
                "export sent: {what}"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::info!(%peer, "export stopped: the client went away ({what})")
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "export failed: {what}");
                let _ = abort.blocking_send(Err(e));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&empty) {
        h.insert("x-export-empty-channels", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn bad(field: Option<&str>, message: impl Into<String>) -> Response {
    ApiError::field(StatusCode::BAD_REQUEST, field.map(str::to_string), message).into_response()
}
