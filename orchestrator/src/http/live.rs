//! `/api/v1/channels/{name}/live`: the live stream's WebSocket.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use speeddata_api::ErrorBody;

use super::auth::same_origin;
use super::{error, no_channel, AppState};

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
pub(super) async fn live(
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
        return no_channel(&name);
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
pub(super) fn live_opts(
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
