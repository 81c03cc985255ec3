//! `PUT`/`DELETE /api/v1/channels/{name}`, its configuration, schema
//! checks and free ports: channels.d written through the API.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use speeddata_api::{
    ChannelStatus, Checked, Deregistered, ErrorBody, Ports, Registration, SchemaCheck,
};

use crate::state::State as ChannelState;

use super::auth::{Cfg, Writer};
use super::{error, no_channel, ApiError, AppState};

pub(super) type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

pub(super) fn refused(r: crate::registry::Refused) -> Response {
    use crate::registry::Refused;
    match r {
        Refused::BadName(m) => error(StatusCode::BAD_REQUEST, m),
        Refused::Invalid(p) => {
            ApiError::problems(StatusCode::UNPROCESSABLE_ENTITY, p).into_response()
        }
        Refused::Conflict(p) => ApiError::problems(StatusCode::CONFLICT, p).into_response(),
    }
}

pub(super) fn bad_body(e: axum::extract::rejection::JsonRejection) -> Response {
    error(e.status(), e.body_text())
}

/// How long `?wait=ready` waits beyond `start_timeout`: the reload's
/// debounce and the spawn.
pub(super) const WAIT_SLACK: Duration = Duration::from_secs(2);

/// `PUT /api/v1/channels/{name}[?wait=ready][&dry_run=true]`: registers
/// or replaces a channel (see [`crate::registry`]); `dry_run` checks
/// without writing (200 `{"problems": []}`).
#[utoipa::path(put, path = "/api/v1/channels/{name}", tag = "registration",
    params(("name" = String, Path, description = "The channel's name"),
        ("wait" = Option<String>, Query, description = "`ready`: answer once the channel is ready, failed or backing off"),
        ("dry_run" = Option<bool>, Query, description = "Check without writing")),
    request_body = Registration,
    responses((status = 200, description = "Replaced (or, with dry_run, nothing wrong: a Checked body)", body = ChannelStatus),
        (status = 201, description = "Registered", body = ChannelStatus),
        (status = 400, description = "A bad name, query or body", body = ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 409, description = "Conflicts with another channel (problems)", body = ErrorBody),
        (status = 422, description = "The channel file or schema does not validate (problems)", body = ErrorBody),
        (status = 503, description = "This server has no channels folder", body = ErrorBody)))]
pub(super) async fn register(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Writer(who): Writer,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    Cfg(cfg): Cfg,
    body: JsonBody<Registration>,
) -> Response {
    if let Err(r) = crate::registry::check_name(&name) {
        return refused(r);
    }
    let (mut wait, mut dry_run) = (false, false);
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        match (k.as_str(), v.as_str()) {
            ("wait", "ready") => wait = true,
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => {}
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k}={v:?} (wait=ready, dry_run=true)"),
                )
            }
        }
    }
    let Json(reg) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let ask = Ask {
        name: &name,
        channel: &reg.channel,
        schema: &reg.schema,
        dry_run,
        wait,
        create_only: false,
        who,
    };
    match apply(&s, &cfg, ask).await {
        Ok(Done::Checked) => Json(Checked { problems: vec![] }).into_response(),
        Ok(Done::Written { status, channel }) => (status, Json(channel)).into_response(),
        Err(Failed::Refused(r)) => refused(r),
        Err(Failed::Exists) => error(StatusCode::CONFLICT, format!("channel {name} exists")),
        Err(Failed::Write(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// A registration, once its request is read: `PUT
/// /api/v1/channels/{name}` and SpeedData's `POST /api/v1/channels` both
/// come here.
pub(super) struct Ask<'a> {
    pub name: &'a str,
    /// The channel file's text (TOML).
    pub channel: &'a str,
    pub schema: &'a serde_json::Value,
    /// Check only.
    pub dry_run: bool,
    /// Answer once the channel is ready, failed or backing off.
    pub wait: bool,
    /// Refuse to replace a channel file that exists ([`Failed::Exists`]).
    pub create_only: bool,
    /// Who asked (`token`, `local`), for the log.
    pub who: &'static str,
}

/// What [`apply`] did.
pub(super) enum Done {
    /// Dry run: nothing wrong.
    Checked,
    /// Written (or already so): 201 new, 200 replaced; the channel's status.
    Written {
        status: StatusCode,
        channel: Box<ChannelStatus>,
    },
}

/// Why [`apply`] did nothing.
pub(super) enum Failed {
    Refused(crate::registry::Refused),
    /// `create_only`, and the channel file exists.
    Exists,
    /// The files could not be written (the message says which).
    Write(String),
}

/// Checks and writes a registration (see [`crate::registry`]), then waits
/// for the channel if asked to.
pub(super) async fn apply(
    s: &AppState,
    cfg: &crate::config::Config,
    ask: Ask<'_>,
) -> Result<Done, Failed> {
    let name = ask.name;
    crate::registry::check_name(name).map_err(Failed::Refused)?;
    // One registration at a time: the checks see the files as the write
    // will leave them.
    static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let writing = WRITING.lock().await;
    // A few small files: done on the (single-threaded) runtime's thread.
    let prepared =
        crate::registry::prepare(cfg, name, ask.channel, ask.schema).map_err(Failed::Refused)?;
    if ask.create_only && prepared.exists {
        return Err(Failed::Exists);
    }
    if ask.dry_run {
        return Ok(Done::Checked);
    }
    let status = if prepared.exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let written_at = std::time::Instant::now();
    if !prepared.unchanged {
        if let Err(e) = crate::registry::write(&prepared) {
            tracing::error!(channel = %name, error = %e, "cannot write the channel's files");
            return Err(Failed::Write(format!(
                "cannot write {}: {e}",
                prepared.channel_file.display()
            )));
        }
        tracing::info!(
            channel = %name,
            file = %prepared.channel_file.display(),
            by = ask.who,
            "channel {} through the API",
            if prepared.exists { "replaced" } else { "registered" }
        );
    }
    drop(writing);
    if ask.wait && !prepared.unchanged {
        let limit = cfg.policy.start_timeout + WAIT_SLACK;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let started = s.fleet.started(name);
                let settled = s.fleet.get(name).is_some_and(|c| {
                    started.is_some_and(|t| t > written_at)
                        && matches!(
                            c.state,
                            ChannelState::Ready | ChannelState::Failed | ChannelState::Backoff
                        )
                });
                if settled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let channel = s
        .fleet
        .get(name)
        .unwrap_or_else(|| ChannelStatus::new(name, prepared.channel_file));
    Ok(Done::Written {
        status,
        channel: Box::new(channel),
    })
}

/// `DELETE /api/v1/channels/{name}`: removes the channel's file (and its
/// schema unless another file uses it); the reload stops the channel,
/// whose archive is finalized and kept. Answers once the channel stopped
/// (at most `stop_timeout` and a little), with SpeedData v0.5's body.
#[utoipa::path(delete, path = "/api/v1/channels/{name}", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "Removed; the channel has stopped, its archive is kept", body = Deregistered),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
pub(super) async fn unregister(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Writer(who): Writer,
    Cfg(cfg): Cfg,
) -> Response {
    if let Err(r) = crate::registry::check_name(&name) {
        return refused(r);
    }
    let known = s.fleet.get(&name).map(|c| c.file);
    let Some(file) = crate::registry::channel_file(&cfg, known, &name) else {
        return no_channel(&name);
    };
    let removed = crate::registry::remove(&cfg, &file);
    match removed {
        Ok(r) => tracing::info!(
            channel = %name,
            file = %r.channel_file.display(),
            schema = ?r.schema_file,
            by = who,
            "channel removed through the API"
        ),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot remove {}: {e}", file.display()),
            )
        }
    }
    let limit = cfg.policy.stop_timeout + WAIT_SLACK;
    let _ = tokio::time::timeout(limit, async {
        while s.fleet.get(&name).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Json(Deregistered {
        status: "success".into(),
        message: format!("Channel '{name}' de-registered and relay stopped"),
        name,
    })
    .into_response()
}

/// `GET /api/v1/channels/{name}/config`: the channel file's text and its
/// schema, as written.
#[utoipa::path(get, path = "/api/v1/channels/{name}/config", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The channel file and its schema as written", body = speeddata_api::ChannelConfig),
        (status = 404, description = "No such channel", body = ErrorBody)))]
pub(super) async fn channel_config(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Cfg(cfg): Cfg,
) -> Response {
    if crate::registry::check_name(&name).is_err() && s.fleet.get(&name).is_none() {
        return no_channel(&name);
    }
    let known = s.fleet.get(&name).map(|c| c.file);
    let Some(file) = crate::registry::channel_file(&cfg, known, &name) else {
        return no_channel(&name);
    };
    match crate::registry::read_config(&name, &file) {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(
            StatusCode::NOT_FOUND,
            format!("cannot read {}: {e}", file.display()),
        ),
    }
}

/// `POST /api/v1/channels/{name}/check-schema` with a schema (JSON):
/// whether records written with it are read correctly as the channel's.
#[utoipa::path(post, path = "/api/v1/channels/{name}/check-schema", tag = "registration", params(("name" = String, Path, description = "The channel's name")),
    request_body(content = Object, description = "An Avro schema"),
    responses((status = 200, description = "Whether records written with it read correctly as the channel's", body = SchemaCheck),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
pub(super) async fn check_schema(
    State(s): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
    body: JsonBody<serde_json::Value>,
) -> Response {
    let Json(writer) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let Some(spec) = s.fleet.spec(&name) else {
        return no_channel(&name);
    };
    let reader = match std::fs::read_to_string(&spec.schema_path) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("cannot read {}: {e}", spec.schema_path.display()),
            )
        }
    };
    let (compatible, problems) = crate::registry::check_schema(&writer, &reader);
    Json(SchemaCheck {
        compatible,
        problems,
    })
    .into_response()
}

/// `GET /api/v1/ports/free?from=26000&to=26999&count=1`: receive ports no
/// channel file uses and no UDP socket of this host has bound.
#[utoipa::path(get, path = "/api/v1/ports/free", tag = "registration",
    params(("from" = Option<u16>, Query, description = "Lowest port (26000)"),
        ("to" = Option<u16>, Query, description = "Highest port (26999)"),
        ("count" = Option<usize>, Query, description = "How many (1 to 1000; 1)")),
    responses((status = 200, description = "Receive ports no channel file uses and no UDP socket has bound", body = Ports),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 409, description = "Too few free ports (the ones found in `ports`)", body = ErrorBody)))]
pub(super) async fn free_ports(
    Cfg(cfg): Cfg,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (mut from, mut to, mut count) = (26000u16, 26999u16, 1usize);
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        let bad = || {
            error(
                StatusCode::BAD_REQUEST,
                format!("{k}: {v:?} is not a port (1 to 65535) or count (1 to 1000)"),
            )
        };
        match k.as_str() {
            "from" => match v.parse() {
                Ok(p) if p > 0 => from = p,
                _ => return bad(),
            },
            "to" => match v.parse() {
                Ok(p) if p > 0 => to = p,
                _ => return bad(),
            },
            "count" => match v.parse() {
                Ok(n) if (1..=1000).contains(&n) => count = n,
                _ => return bad(),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (from, to, count)"),
                )
            }
        }
    }
    if from > to {
        return error(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) is above to ({to})"),
        );
    }
    let ports = crate::registry::free_ports(&cfg, from, to, count);
    if ports.len() < count {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "only {} of {count} free ports between {from} and {to}",
                ports.len()
            ),
        );
        e.body.ports = Some(ports);
        return e.into_response();
    }
    Json(Ports { ports }).into_response()
}
