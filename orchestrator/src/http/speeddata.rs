//! SpeedData v0.5's registration API on ours: its calls, unchanged, answer
//! as SpeedData answered them (docs/api.md, "SpeedData v0.5 calls").
//!
//! Nothing here registers a channel by another path: `POST
//! /api/v1/channels` translates SpeedData's request into a channel file
//! ([`channel_text`]) and a schema ([`load_schema`]), and hands them to
//! the registration of `PUT /api/v1/channels/{name}`
//! ([`super::registration::apply`]), so a channel made this way is an
//! ordinary file of channels.d afterwards. SpeedData's other calls read
//! what the rest of the API reads (the fleet's status, the free ports).
//!
//! The translation:
//! - `receive.bind` is `{address}:{port}`, the address `[defaults]`'
//!   `receive.bind`'s if set, else 127.0.0.1 (where SpeedData's relay
//!   received, and what `orchestrator import speeddata` writes);
//! - `[archive]` comes from `[defaults]` (`archive.dir` at least), with
//!   `config.rotation` (seconds) as `rotate_interval`;
//! - `config.decimation` (N) is a `[decimated]` output, `downsample` with
//!   `factor` N; the group to send to cannot be guessed: it comes from
//!   `config.decimated` (`group`, `interface`, `ttl`, ...) or from
//!   `[defaults]` (a `decimated.group` there is every channel's, shared
//!   as SpeedData's was), else 400;
//! - `config.receive`, `config.archive`, `config.full`, `config.decimated`
//!   (our extension) are written into those sections as they are;
//! - `schema` is a file's path (absolute, else relative to
//!   orchestrator.toml's folder, else to the channels folder) or the Avro
//!   schema itself; either way it is written beside the channel file as
//!   `{name}.avsc`, like every registration.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path as FsPath, PathBuf};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use speeddata_api::{
    AvailablePorts, ChannelCreated, ErrorBody, Health, NewChannel, PortRange, PortStatus,
    SchemaToValidate, SchemaValidation, State as ChannelState,
};

use crate::config::Config;
use crate::registry::{PortUser, Refused};

use super::auth::{Cfg, Writer};
use super::registration::{apply, bad_body, Ask, Done, Failed, JsonBody};
use super::{configured_channel, error, ApiError, AppState};

/// The version of SpeedData's registration API these calls answer as.
pub const SPEEDDATA_API_VERSION: &str = "0.5.0";

/// The largest schema file `POST /api/v1/channels` reads.
const MAX_SCHEMA_FILE: u64 = 16 << 20;

/// `GET /api/v1/health`: SpeedData v0.5's health check.
#[utoipa::path(get, path = "/api/v1/health", tag = "speeddata",
    responses((status = 200, description = "SpeedData v0.5's health check, and this orchestrator's version", body = Health)))]
pub(super) async fn health() -> Response {
    Json(Health {
        status: "ok".into(),
        service: "speeddata-registration-api".into(),
        version: SPEEDDATA_API_VERSION.into(),
        relay_version: env!("CARGO_PKG_VERSION").into(),
    })
    .into_response()
}

/// A 400 with SpeedData's words and, where one is at fault, the field.
fn bad(field: Option<&str>, message: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::BAD_REQUEST, field.map(String::from), message)
}

/// Where a registration's schema comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SchemaSource {
    /// A file's path, as given.
    Path(String),
    /// The schema itself (not in SpeedData: our extension).
    Inline(Value),
}

/// A `POST /api/v1/channels` request, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub name: String,
    pub port: u16,
    pub schema: SchemaSource,
    /// `config` as given (an object).
    pub config: Map<String, Value>,
}

/// SpeedData's truthiness, for "Missing required fields".
fn given(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

/// A whole number, written as a JSON number (`5`, `5.0`) or a string of
/// digits (`"5"`), as Python's `int()` takes it.
fn whole(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads SpeedData's registration body: 400 as SpeedData answered for a
/// body that is not an object, a missing field, a port that is not an
/// integer; and for a field of the wrong type.
pub(crate) fn parse(body: &Value) -> Result<Request, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(bad(None, "Request body required"));
    };
    let (name, port, schema) = (obj.get("name"), obj.get("port"), obj.get("schema"));
    if !(given(name) && given(port) && given(schema)) {
        let mut e = bad(None, "Missing required fields");
        e.body.speeddata.required = Some(vec!["name".into(), "port".into(), "schema".into()]);
        return Err(e);
    }
    let Some(name) = name.and_then(Value::as_str) else {
        return Err(bad(Some("name"), "name must be a string"));
    };
    let port = match port.and_then(whole) {
        None => return Err(bad(Some("port"), "Port must be an integer")),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => p,
            _ => return Err(bad(Some("port"), "Port must be between 1 and 65535")),
        },
    };
    let schema = match schema {
        Some(Value::String(s)) => SchemaSource::Path(s.clone()),
        Some(v @ (Value::Object(_) | Value::Array(_))) => SchemaSource::Inline(v.clone()),
        _ => {
            return Err(bad(
                Some("schema"),
                "schema must be a schema file's path or an Avro schema (a JSON object)",
            ))
        }
    };
    let config = match obj.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(bad(Some("config"), "config must be an object")),
    };
    Ok(Request {
        name: name.to_string(),
        port,
        schema,
        config,
    })
}

/// `config.{key}` as a TOML table: absent, or an object of the section's
/// keys.
fn section(v: Option<Value>, key: &str) -> Result<Option<toml::Table>, ApiError> {
    let field = format!("config.{key}");
    let field = field.as_str();
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => match toml::Value::try_from(v) {
            Ok(toml::Value::Table(t)) => Ok(Some(t)),
            Ok(_) => Err(bad(Some(field), format!("{field} must be an object"))),
            Err(e) => Err(bad(
                Some(field),
                format!("{field} cannot be a channel file's [{key}]: {e}"),
            )),
        },
        Some(_) => Err(bad(
            Some(field),
            format!("{field} must be an object of [{key}]'s keys"),
        )),
    }
}

/// A whole number above 0 in `config.{key}`; `None` if absent or null.
fn positive(config: &mut Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match config.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match whole(&v) {
            Some(n) if n >= 1 && n <= max => Ok(Some(n)),
            _ => Err(bad(
                Some(format!("config.{key}").as_str()),
                format!("config.{key} must be a whole number from 1 to {max}, not {v}"),
            )),
        },
    }
}

/// `[defaults]`' `{section}.{key}`, if set.
fn default_of<'a>(defaults: &'a toml::Table, section: &str, key: &str) -> Option<&'a toml::Value> {
    defaults.get(section)?.as_table()?.get(key)
}

/// The address a registration receives on when the request names none:
/// `[defaults]`' `receive.bind`'s (its port is each channel's own), else
/// 127.0.0.1, where SpeedData's relay received.
pub(crate) fn bind_ip(defaults: &toml::Table) -> Ipv4Addr {
    default_of(defaults, "receive", "bind")
        .and_then(toml::Value::as_str)
        .and_then(|b| b.parse::<SocketAddrV4>().ok())
        .map_or(Ipv4Addr::LOCALHOST, |a| *a.ip())
}

/// The channel file (TOML) of SpeedData registration `req`, under the
/// fleet's `[defaults]`: receiving on [`bind_ip`] (unless
/// `config.receive.bind` says otherwise), its `[archive]` from
/// `[defaults]`, and what `config` asks for. What cannot be written into
/// a channel file is a 400 naming the field.
pub(crate) fn channel_text(req: &Request, defaults: &toml::Table) -> Result<String, ApiError> {
    let mut config = req.config.clone();
    let mut receive = section(config.remove("receive"), "receive")?.unwrap_or_default();
    match receive.get("bind") {
        None => {
            receive.insert(
                "bind".into(),
                SocketAddrV4::new(bind_ip(defaults), req.port)
                    .to_string()
                    .into(),
            );
        }
        Some(toml::Value::String(b))
            if b.parse::<SocketAddrV4>()
                .is_ok_and(|a| a.port() == req.port) => {}
        Some(b) => {
            return Err(bad(
                Some("config.receive.bind"),
                format!(
                    "config.receive.bind ({b}) must be \"IP:{}\": the port is `port`'s",
                    req.port
                ),
            ))
        }
    }
    let mut archive = section(config.remove("archive"), "archive")?.unwrap_or_default();
    if let Some(secs) = positive(&mut config, "rotation", 10 * 365 * 86_400)? {
        if archive.contains_key("rotate_interval") {
            return Err(bad(
                Some("config.rotation"),
                "give config.rotation or config.archive.rotate_interval, not both",
            ));
        }
        archive.insert("rotate_interval".into(), format!("{secs}s").into());
    }
    let full = section(config.remove("full"), "full")?;
    let mut decimated = section(config.remove("decimated"), "decimated")?;
    if let Some(factor) = positive(&mut config, "decimation", u64::from(u32::MAX))? {
        let mut d = decimated.take().unwrap_or_default();
        if !d.contains_key("group") && default_of(defaults, "decimated", "group").is_none() {
            return Err(bad(
                Some("config.decimation"),
                "config.decimation needs a decimated output to send to, which this server cannot choose \
                 (the fleet's [defaults] give no decimated.group): give config.decimated = \
                 {\"group\": \"239.255.10.2:6001\", \"interface\": \"127.0.0.1\", \"ttl\": 0} \
                 (the group and port, the interface multicast leaves by, and its TTL), or leave decimation out",
            ));
        }
        if d.contains_key("factor") || d.contains_key("rate_hz") {
            return Err(bad(
                Some("config.decimation"),
                "give config.decimation or config.decimated.factor/rate_hz, not both",
            ));
        }
        if !d.contains_key("algorithm") {
            d.insert("algorithm".into(), "downsample".into());
        }
        d.insert("factor".into(), toml::Value::Integer(factor as i64));
        decimated = Some(d);
    }
    if let Some(key) = config.keys().next() {
        return Err(bad(
            Some(format!("config.{key}").as_str()),
            format!(
                "config.{key} is not a setting of a channel: decimation, rotation, receive, archive, full, decimated"
            ),
        ));
    }
    // Written section by section, in the order of docs/channel-file.md.
    let toml_text = |t: toml::Table| toml::to_string(&t).expect("a TOML table serializes");
    let mut top = toml::Table::new();
    top.insert("name".into(), req.name.clone().into());
    top.insert("schema".into(), format!("{}.avsc", req.name).into());
    let mut text = format!(
        "# Registered through SpeedData's POST /api/v1/channels.\n{}",
        toml_text(top)
    );
    for (key, section) in [
        ("receive", Some(receive)),
        ("archive", Some(archive)),
        ("full", full),
        ("decimated", decimated),
    ] {
        if let Some(section) = section {
            let mut t = toml::Table::new();
            t.insert(key.into(), section.into());
            text.push('\n');
            text.push_str(&toml_text(t));
        }
    }
    Ok(text)
}

/// Where a schema file named `given` is looked for: an absolute path as
/// it is; a relative one in orchestrator.toml's folder, then in the
/// channels folder.
pub(crate) fn schema_candidates(cfg: &Config, given: &str) -> Vec<PathBuf> {
    let p = FsPath::new(given);
    if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        vec![
            relay_channel::config::base_dir(&cfg.file).join(p),
            cfg.channels_dir.join(p),
        ]
    }
}

/// The schema in the first of `candidates` that is a file: 400 as
/// SpeedData answered when there is none or it is not JSON.
pub(crate) fn load_schema(candidates: &[PathBuf], given: &str) -> Result<Value, ApiError> {
    let Some(file) = candidates.iter().find(|p| p.is_file()) else {
        let mut e = bad(Some("schema"), "Schema file not found");
        e.body.speeddata.path = Some(given.to_string());
        e.body.speeddata.details = Some(format!(
            "looked for {}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Err(e);
    };
    let invalid = |details: String| {
        let mut e = bad(Some("schema"), "Invalid schema file (not valid JSON)");
        e.body.speeddata.path = Some(given.to_string());
        e.body.speeddata.details = Some(details);
        e
    };
    match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_SCHEMA_FILE => {
            return Err(invalid(format!(
                "{} is larger than {} MiB",
                file.display(),
                MAX_SCHEMA_FILE >> 20
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(invalid(format!("cannot read {}: {e}", file.display()))),
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
    serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))
}

/// 409 of a port a channel file, or another socket of this host, uses.
fn port_in_use(port: u16, used_by: Option<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::CONFLICT, "Port already in use");
    e.body.speeddata.port = Some(port);
    if used_by.is_none() {
        e.body.speeddata.details = Some(format!(
            "a UDP socket of this host has bound port {port}; no channel file names it"
        ));
    }
    e.body.speeddata.used_by = used_by;
    e
}

fn name_taken(name: &str) -> Response {
    let mut e = ApiError::new(StatusCode::CONFLICT, "Channel name already registered");
    e.body.speeddata.name = Some(name.to_string());
    e.into_response()
}

/// `POST /api/v1/channels`: SpeedData v0.5's registration, written as a
/// channel file through the registration of `PUT
/// /api/v1/channels/{name}`; answers once the relay is ready or failed.
#[utoipa::path(post, path = "/api/v1/channels", tag = "speeddata",
    request_body = NewChannel,
    responses((status = 201, description = "Registered; `pid` once its relay runs", body = ChannelCreated),
        (status = 400, description = "A missing or bad field (`required`, `field`), a schema file not found or not JSON (`path`), or a channel file that does not validate (`problems`)", body = ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 409, description = "The port is in use (`port`, `used_by`), the name is registered (`name`), or another conflict with a channel file (`problems`)", body = ErrorBody),
        (status = 503, description = "This server has no channels folder", body = ErrorBody)))]
pub(super) async fn create(
    State(s): State<AppState>,
    Writer(who): Writer,
    Cfg(cfg): Cfg,
    body: JsonBody<Value>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(Refused::BadName(m)) = crate::registry::check_name(&req.name) {
        return bad(Some("name"), m).into_response();
    }
    // In SpeedData's order: the port, the schema file, then the name.
    match crate::registry::port_user(&cfg, req.port) {
        PortUser::Free => {}
        PortUser::Channel(c) => return port_in_use(req.port, Some(c)).into_response(),
        PortUser::Host => return port_in_use(req.port, None).into_response(),
    }
    let schema = match &req.schema {
        SchemaSource::Path(p) => match load_schema(&schema_candidates(&cfg, p), p) {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        },
        SchemaSource::Inline(v) => v.clone(),
    };
    if s.fleet.get(&req.name).is_some()
        || cfg.channels_dir.join(format!("{}.toml", req.name)).exists()
    {
        return name_taken(&req.name);
    }
    let text = match channel_text(&req, &cfg.defaults) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let ask = Ask {
        name: &req.name,
        channel: &text,
        schema: &schema,
        dry_run: false,
        wait: true,
        create_only: true,
        who,
    };
    match apply(&s, &cfg, ask).await {
        Ok(Done::Written { channel, .. }) => {
            let message = match channel.state {
                ChannelState::Ready => {
                    format!("Channel '{}' registered and relay started", req.name)
                }
                state => format!(
                    "Channel '{}' registered; its relay is {}{}",
                    req.name,
                    state.as_str(),
                    channel
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            };
            (
                StatusCode::CREATED,
                Json(ChannelCreated {
                    status: "success".into(),
                    name: req.name,
                    port: req.port,
                    pid: channel.pid,
                    message,
                    state: channel.state,
                }),
            )
                .into_response()
        }
        Ok(Done::Checked) => error(StatusCode::INTERNAL_SERVER_ERROR, "not written"),
        Err(Failed::Exists) => name_taken(&req.name),
        Err(Failed::Refused(Refused::BadName(m))) => bad(Some("name"), m).into_response(),
        Err(Failed::Refused(Refused::Invalid(p))) => {
            ApiError::problems(StatusCode::BAD_REQUEST, p).into_response()
        }
        Err(Failed::Refused(Refused::Conflict(p))) => {
            ApiError::problems(StatusCode::CONFLICT, p).into_response()
        }
        Err(Failed::Write(m)) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// `POST /api/v1/channels/{name}/validate-schema` with `{"schema": ...}`:
/// whether it is the channel's schema (equal as JSON). See
/// `check-schema` for whether records written with it read correctly.
#[utoipa::path(post, path = "/api/v1/channels/{name}/validate-schema", tag = "speeddata",
    params(("name" = String, Path, description = "The channel's name")),
    request_body = SchemaToValidate,
    responses((status = 200, description = "The schema is the channel's", body = SchemaValidation),
        (status = 400, description = "No `schema` in the body", body = ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 403, description = "Writes are refused from here", body = ErrorBody),
        (status = 404, description = "No such channel (`name`)", body = ErrorBody),
        (status = 409, description = "It is not: both schemas", body = SchemaValidation)))]
pub(super) async fn validate_schema(
    State(s): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
    body: JsonBody<Value>,
) -> Response {
    let spec = match configured_channel(&s, &name) {
        Ok(spec) => spec,
        Err(r) => return *r,
    };
    let provided = match body {
        Ok(Json(Value::Object(mut o))) if o.contains_key("schema") => {
            o.remove("schema").unwrap_or_default()
        }
        Ok(_) => {
            return bad(Some("schema"), "Request body must contain 'schema' field").into_response()
        }
        Err(e) => return bad_body(e),
    };
    let registered = std::fs::read_to_string(&spec.schema_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
    let registered = match registered {
        Ok(v) => v,
        Err(details) => {
            let mut e = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed to load registered schema",
            );
            e.body.speeddata.details = Some(details);
            e.body.speeddata.path = Some(spec.schema_path.display().to_string());
            return e.into_response();
        }
    };
    if provided == registered {
        Json(SchemaValidation {
            valid: true,
            message: "Schema matches registered schema".into(),
            registered_schema: None,
            provided_schema: None,
        })
        .into_response()
    } else {
        (
            StatusCode::CONFLICT,
            Json(SchemaValidation {
                valid: false,
                message: "Schema does not match".into(),
                registered_schema: Some(registered),
                provided_schema: Some(provided),
            }),
        )
            .into_response()
    }
}

/// `GET /api/v1/ports/available?start=26000&end=27000`: the ports of the
/// range (both ends included) that no channel file receives on and no UDP
/// socket of this host has bound, as `GET /api/v1/ports/free` finds them.
#[utoipa::path(get, path = "/api/v1/ports/available", tag = "speeddata",
    params(("start" = Option<u16>, Query, description = "Lowest port (26000)"),
        ("end" = Option<u16>, Query, description = "Highest port, included (27000)")),
    responses((status = 200, description = "The free ports of the range", body = AvailablePorts),
        (status = 400, description = "A bad query, or start not below end", body = ErrorBody),
        (status = 503, description = "This server has no channels folder", body = ErrorBody)))]
pub(super) async fn available_ports(
    Cfg(cfg): Cfg,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (mut start, mut end) = (26000u16, 27000u16);
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        let slot = match k.as_str() {
            "start" => &mut start,
            "end" => &mut end,
            _ => {
                return bad(None, format!("unknown query parameter {k:?} (start, end)"))
                    .into_response()
            }
        };
        match v.trim().parse::<u16>() {
            Ok(p) => *slot = p,
            Err(_) => {
                return bad(
                    Some(k.as_str()),
                    format!("{k}: {v:?} is not a port (0 to 65535)"),
                )
                .into_response()
            }
        }
    }
    if start >= end {
        return bad(None, "Invalid range: start must be < end").into_response();
    }
    let available = crate::registry::free_ports(&cfg, start, end, usize::MAX);
    Json(AvailablePorts {
        range: PortRange { start, end },
        count: available.len(),
        available,
    })
    .into_response()
}

/// `GET /api/v1/ports/{port}/status`: free, or in use by a channel (or by
/// another socket of this host).
#[utoipa::path(get, path = "/api/v1/ports/{port}/status", tag = "speeddata",
    params(("port" = u16, Path, description = "A UDP port")),
    responses((status = 200, description = "Whether the port is free, and which channel uses it", body = PortStatus),
        (status = 400, description = "Not a port", body = ErrorBody),
        (status = 503, description = "This server has no channels folder", body = ErrorBody)))]
pub(super) async fn port_status(Cfg(cfg): Cfg, Path(port): Path<String>) -> Response {
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return bad(Some("port"), format!("{port:?} is not a port (1 to 65535)"))
                .into_response()
        }
    };
    let (available, channel) = match crate::registry::port_user(&cfg, port) {
        PortUser::Free => (true, None),
        PortUser::Channel(c) => (false, Some(c)),
        PortUser::Host => (false, None),
    };
    Json(PortStatus {
        port,
        available,
        status: if available { "free" } else { "in_use" }.into(),
        channel,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(config: Value) -> Request {
        parse(&json!({"name": "sensor1", "port": 26001, "schema": "s.avsc", "config": config}))
            .unwrap()
    }

    /// No `[defaults]`.
    fn none() -> toml::Table {
        toml::Table::new()
    }

    fn table(text: &str) -> toml::Table {
        assert!(text.starts_with("# Registered through"), "{text}");
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_request_is_read_as_speeddata_read_it() {
        let r = parse(&json!({"name": "a", "port": "26001", "schema": "x.avsc"})).unwrap();
        assert_eq!(r.port, 26001);
        assert_eq!(r.schema, SchemaSource::Path("x.avsc".into()));
        assert!(r.config.is_empty());
        let inline = json!({"type": "record", "name": "r", "fields": []});
        let r =
            parse(&json!({"name": "a", "port": 7.0, "schema": inline, "config": null})).unwrap();
        assert_eq!((r.port, r.schema), (7, SchemaSource::Inline(inline)));

        for missing in [
            json!({"port": 1, "schema": "x"}),
            json!({"name": "", "port": 1, "schema": "x"}),
            json!({"name": "a", "port": 0, "schema": "x"}),
            json!({"name": "a", "port": 1, "schema": null}),
        ] {
            let e = parse(&missing).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.error, "Missing required fields");
            assert_eq!(
                e.body.speeddata.required.as_deref(),
                Some(&["name".to_string(), "port".into(), "schema".into()][..])
            );
        }
        let e = parse(&json!({"name": "a", "port": "x1", "schema": "x"})).unwrap_err();
        assert_eq!(
            (e.body.error.as_str(), e.body.field.as_deref()),
            ("Port must be an integer", Some("port"))
        );
        let e = parse(&json!({"name": "a", "port": 1.5, "schema": "x"})).unwrap_err();
        assert_eq!(e.body.error, "Port must be an integer");
        let e = parse(&json!({"name": "a", "port": 70000, "schema": "x"})).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("port"));
        assert_eq!(
            parse(&json!([1])).unwrap_err().body.error,
            "Request body required"
        );
        let e = parse(&json!({"name": "a", "port": 1, "schema": 5})).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("schema"));
        let e = parse(&json!({"name": "a", "port": 1, "schema": "x", "config": 5})).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("config"));
    }

    #[test]
    fn a_plain_registration_receives_and_archives() {
        let text = channel_text(&req(json!({})), &none()).unwrap();
        assert_eq!(
            text,
            "# Registered through SpeedData's POST /api/v1/channels.\n\
             name = \"sensor1\"\nschema = \"sensor1.avsc\"\n\n\
             [receive]\nbind = \"127.0.0.1:26001\"\n\n\
             [archive]\n"
        );
        let t = table(&text);
        let expected: toml::Table = toml::from_str(
            "name = \"sensor1\"\nschema = \"sensor1.avsc\"\n[receive]\nbind = \"127.0.0.1:26001\"\n[archive]\n",
        )
        .unwrap();
        assert_eq!(t, expected);
        // [defaults]' receive.bind gives the address.
        let defaults = toml::from_str("receive.bind = \"0.0.0.0:1\"").unwrap();
        let t = table(&channel_text(&req(json!({})), &defaults).unwrap());
        assert_eq!(t["receive"]["bind"].as_str(), Some("0.0.0.0:26001"));
    }

    #[test]
    fn decimation_and_rotation_become_sections() {
        let r = req(json!({
            "decimation": 5,
            "rotation": 3600,
            "decimated": {"group": "239.255.10.2:6001", "interface": "127.0.0.1", "ttl": 0},
            "full": {"group": "239.255.10.1:6000", "interface": "127.0.0.1", "ttl": 0},
            "archive": {"codec": "null"},
            "receive": {"bind": "10.0.0.1:26001", "validate": false},
        }));
        let t = table(&channel_text(&r, &none()).unwrap());
        let expected: toml::Table = toml::from_str(
            r#"name = "sensor1"
schema = "sensor1.avsc"
[receive]
bind = "10.0.0.1:26001"
validate = false
[archive]
codec = "null"
rotate_interval = "3600s"
[full]
group = "239.255.10.1:6000"
interface = "127.0.0.1"
ttl = 0
[decimated]
group = "239.255.10.2:6001"
interface = "127.0.0.1"
ttl = 0
algorithm = "downsample"
factor = 5
"#,
        )
        .unwrap();
        assert_eq!(t, expected);
        // An algorithm given stays; a null decimation is none.
        let r = req(
            json!({"decimation": "2", "decimated": {"group": "239.1.1.1:1", "algorithm": "minmax"}}),
        );
        let t = table(&channel_text(&r, &none()).unwrap());
        assert_eq!(t["decimated"]["algorithm"].as_str(), Some("minmax"));
        assert_eq!(t["decimated"]["factor"].as_integer(), Some(2));
        let t = table(&channel_text(&req(json!({"decimation": null})), &none()).unwrap());
        assert!(!t.contains_key("decimated"));
    }

    #[test]
    fn what_cannot_be_written_is_a_400_naming_the_field() {
        let field = |config: Value| {
            let e = channel_text(&req(config), &none()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            e.body.field.unwrap()
        };
        // No group to send the decimated records to.
        assert_eq!(field(json!({"decimation": 5})), "config.decimation");
        assert_eq!(
            field(json!({"decimation": 5, "decimated": {"interface": "127.0.0.1"}})),
            "config.decimation"
        );
        assert_eq!(
            field(json!({"decimation": 5, "decimated": {"group": "239.1.1.1:1", "rate_hz": 2}})),
            "config.decimation"
        );
        assert_eq!(field(json!({"decimation": 0})), "config.decimation");
        assert_eq!(field(json!({"decimation": "five"})), "config.decimation");
        assert_eq!(field(json!({"rotation": -1})), "config.rotation");
        assert_eq!(
            field(json!({"rotation": 60, "archive": {"rotate_interval": "1m"}})),
            "config.rotation"
        );
        assert_eq!(field(json!({"retention": 86400})), "config.retention");
        assert_eq!(field(json!({"full": "239.1.1.1:1"})), "config.full");
        assert_eq!(field(json!({"full": {"ttl": null}})), "config.full");
        assert_eq!(
            field(json!({"receive": {"bind": "127.0.0.1:1"}})),
            "config.receive.bind"
        );
    }

    #[test]
    fn a_decimated_group_from_defaults_serves_every_registration() {
        // SpeedData's model: every channel on one decimated group, given by
        // [defaults] and shared.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("channels.d")).unwrap();
        let file = d.path().join("orchestrator.toml");
        std::fs::write(
            &file,
            "channels_dir = \"channels.d\"\n[defaults]\narchive.dir = \"archive\"\n\
             decimated.group = \"239.1.1.2:6001\"\ndecimated.interface = \"127.0.0.1\"\n\
             decimated.ttl = 0\ndecimated.shared = true\ndecimated.factor = 5\n",
        )
        .unwrap();
        let cfg = Config::load(&file, None).unwrap();
        let schema =
            json!({"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]});
        for (name, port) in [("one", 26001), ("two", 26002)] {
            let r = parse(
                &json!({"name": name, "port": port, "schema": "x", "config": {"decimation": 2}}),
            )
            .unwrap();
            let text = channel_text(&r, &cfg.defaults).unwrap();
            let t = table(&text);
            assert_eq!(t["decimated"].as_table().unwrap().len(), 2, "{text}");
            assert_eq!(t["decimated"]["factor"].as_integer(), Some(2));
            assert_eq!(
                t["receive"]["bind"].as_str(),
                Some(&*format!("127.0.0.1:{port}"))
            );
            // The file validates under the defaults, beside the other one.
            let p = crate::registry::prepare(&cfg, name, &text, &schema)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(p.channel_text, text, "the schema key is already there");
            crate::registry::write(&p).unwrap();
        }
        let fleet = crate::config::load_fleet(&cfg).unwrap();
        assert_eq!(fleet.channels.len(), 2, "{:?}", fleet.rejected);
        for c in &fleet.channels {
            let dec = c.spec.decimated.as_ref().unwrap();
            assert_eq!(dec.output.dest.to_string(), "239.1.1.2:6001");
        }
        // Without decimation the file says nothing of it: the defaults'
        // output is the channel's, as it is every channel's.
        let r = parse(&json!({"name": "three", "port": 26003, "schema": "x"})).unwrap();
        assert!(!table(&channel_text(&r, &cfg.defaults).unwrap()).contains_key("decimated"));
    }

    #[test]
    fn schema_files_are_looked_for_where_documented() {
        let d = tempfile::tempdir().unwrap();
        let (conf, chans) = (d.path().join("etc"), d.path().join("etc/channels.d"));
        std::fs::create_dir_all(&chans).unwrap();
        std::fs::write(conf.join("a.avsc"), r#"{"type": "string"}"#).unwrap();
        std::fs::write(chans.join("b.avsc"), r#""int""#).unwrap();
        std::fs::write(chans.join("bad.avsc"), "{nope").unwrap();
        let file = conf.join("orchestrator.toml");
        std::fs::write(&file, "channels_dir = \"channels.d\"\n").unwrap();
        let cfg = Config::load(&file, None).unwrap();
        let load = |p: &str| load_schema(&schema_candidates(&cfg, p), p);
        assert_eq!(load("a.avsc").unwrap(), json!({"type": "string"}));
        assert_eq!(load("b.avsc").unwrap(), json!("int"));
        assert_eq!(load("channels.d/b.avsc").unwrap(), json!("int"));
        let abs = chans.join("b.avsc").display().to_string();
        assert_eq!(load(&abs).unwrap(), json!("int"));
        let e = load("missing.avsc").unwrap_err();
        assert_eq!(e.body.error, "Schema file not found");
        assert_eq!(e.body.speeddata.path.as_deref(), Some("missing.avsc"));
        let e = load("bad.avsc").unwrap_err();
        assert_eq!(e.body.error, "Invalid schema file (not valid JSON)");
        assert!(e.body.speeddata.details.is_some());
    }
}
