//! Every body of the API. Each type derives `Serialize` (the server),
//! `Deserialize` (the clients) and `ToSchema` (the OpenAPI document).

use std::path::PathBuf;

use relay_channel::holds::Hold;
use relay_channel::status::{Rates, Stats};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A channel's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A child was started and has not said `ready` yet.
    Starting,
    /// The child said `ready`.
    Ready,
    /// The child failed; it is started again after a delay.
    Backoff,
    /// Parked: too many failures (tried again after the cool-down), or a
    /// configuration error (tried again when its file changes).
    Failed,
    /// Not running, on purpose.
    Stopped,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Starting,
        State::Ready,
        State::Backoff,
        State::Failed,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// When (RFC 3339).
    pub at: String,
    /// In words: "exited with 1", "killed by SIGKILL", "not ready within 10s".
    pub description: String,
}

/// Everything shown about one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelStatus {
    pub name: String,
    /// The channel file.
    #[schema(value_type = String)]
    pub file: PathBuf,
    pub state: State,
    /// The running child's process id.
    pub pid: Option<u32>,
    /// Seconds the current child has been running.
    pub uptime_s: Option<f64>,
    /// Times a child of this channel was started again (after a failure,
    /// a change of its file, or a restart asked through the API).
    pub restarts: u64,
    pub last_exit: Option<Exit>,
    /// Why the channel is `failed` or in `backoff`.
    pub reason: Option<String>,
    /// The last lines the child wrote on stderr.
    pub last_stderr: Vec<String>,
    /// Set while the channel's file does not validate; a running instance
    /// keeps running meanwhile.
    pub config_error: Option<String>,
    /// The child's latest `stats` line (counters since the child started).
    pub counters: Option<Stats>,
    /// Per-second rates of the counters between the last two stats lines;
    /// every rate reads 0 once the next line is overdue, so a relay that
    /// stopped reporting does not show its last rate as if it were still
    /// moving data.
    pub rates: Option<Rates>,
    /// When the current child's latest stats line arrived (RFC 3339).
    pub last_report_at: Option<String>,
    /// The archive files this channel closed most recently, newest first
    /// (kept across the channel's restarts).
    pub archive_files: Vec<ArchiveFile>,
    /// The decimated output's group and algorithm, from the channel's
    /// configuration; `null` without a `[decimated]` section.
    pub decimation: Option<Decimation>,
    /// SpeedData v0.5's `port`: the receive port (`receive.bind`'s), from
    /// the channel's configuration; `null` until a valid one is known.
    #[serde(default)]
    pub port: Option<u16>,
    /// SpeedData v0.5's `schema_path`: the channel's schema file, resolved
    /// (the file the relay reads, not the path a registration named).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub schema_path: Option<PathBuf>,
    /// SpeedData v0.5's `status`: `active` while a relay runs (`state`
    /// `starting` or `ready`), else `registered`.
    #[serde(default)]
    pub status: RegistrationStatus,
    /// SpeedData v0.5's `created_at`: when the channel file was last
    /// modified (RFC 3339, UTC), as of its last validation; `null` until
    /// the file validated once.
    #[serde(default)]
    pub created_at: Option<String>,
    /// SpeedData v0.5's `config`: `decimation` (the decimated output's
    /// `factor`) and `rotation` (`archive.rotate_interval`, seconds).
    #[serde(default)]
    pub config: Option<ChannelSettings>,
}

/// SpeedData v0.5's channel `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationStatus {
    /// A relay runs (`state` is `starting` or `ready`).
    Active,
    /// Registered, no relay running (`backoff`, `failed`, `stopped`).
    #[default]
    Registered,
}

impl RegistrationStatus {
    /// The SpeedData status of a channel in `state`.
    pub fn of(state: State) -> RegistrationStatus {
        match state {
            State::Starting | State::Ready => RegistrationStatus::Active,
            State::Backoff | State::Failed | State::Stopped => RegistrationStatus::Registered,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationStatus::Active => "active",
            RegistrationStatus::Registered => "registered",
        }
    }
}

/// SpeedData v0.5's `config` of a channel, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ChannelSettings {
    /// The decimated output's `factor` (records a window); absent without a
    /// decimated output or with one by `rate_hz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimation: Option<u32>,
    /// `archive.rotate_interval`, in whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<u64>,
}

impl ChannelStatus {
    /// A channel not started yet.
    pub fn new(name: &str, file: PathBuf) -> ChannelStatus {
        ChannelStatus {
            name: name.into(),
            file,
            state: State::Stopped,
            pid: None,
            uptime_s: None,
            restarts: 0,
            last_exit: None,
            reason: None,
            last_stderr: Vec::new(),
            config_error: None,
            counters: None,
            rates: None,
            last_report_at: None,
            archive_files: Vec::new(),
            decimation: None,
            port: None,
            schema_path: None,
            status: RegistrationStatus::Registered,
            created_at: None,
            config: None,
        }
    }
}

/// An archive file a relay closed (its `file_closed` line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveFile {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
    /// When the orchestrator read the line (RFC 3339).
    pub closed_at: String,
}

/// What a channel's decimated output sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Decimation {
    /// `ip:port` of the decimated group.
    pub group: String,
    /// `downsample`, `average`, `minmax` or `rms`.
    pub algorithm: String,
    /// Records per window (`factor`), or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<u32>,
    /// windows per second of arrival time (`rate_hz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
    /// Fields that take the window's last value.
    pub keep_last: Vec<String>,
}

/// `GET /api/v1/channels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelStatus>,
}

/// One lifecycle event of the event stream (`GET /api/v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// The channel, for channel events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `event`, with the fields of each kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A child was started.
    Started {
        pid: u32,
        #[schema(value_type = String)]
        file: PathBuf,
    },
    /// The child said `ready`.
    Ready { pid: u32 },
    /// The child stopped reporting for `silent_for` ("5s") and is killed.
    Hung { pid: u32, silent_for: String },
    /// The child ended: by itself or for a failure (`exit`), or because it
    /// was stopped on purpose (`reason`).
    Exited {
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit: Option<Exit>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A child starts again after `delay_ms`: after a failure (`after`), or
    /// at once on a command (`reason`).
    Restarting {
        delay_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Parked: too many failures, or a configuration error (exit 78).
    Failed {
        reason: String,
        exit: Exit,
        last_stderr: Vec<String>,
    },
    /// The channel stopped for good (its file was removed, or the
    /// orchestrator stops).
    Stopped,
    /// channels.d was read again.
    Reloaded {
        reason: String,
        started: usize,
        restarted: usize,
        stopped: usize,
    },
    /// A file does not validate (a channel file, the channels folder, or
    /// orchestrator.toml).
    ConfigError {
        #[schema(value_type = String)]
        file: PathBuf,
        error: String,
    },
}

impl EventKind {
    /// The `event` tag, which is also the server-sent event's name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. } => "started",
            EventKind::Ready { .. } => "ready",
            EventKind::Hung { .. } => "hung",
            EventKind::Exited { .. } => "exited",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Failed { .. } => "failed",
            EventKind::Stopped => "stopped",
            EventKind::Reloaded { .. } => "reloaded",
            EventKind::ConfigError { .. } => "config_error",
        }
    }
}

/// The event stream's `lagged` event: this many events could not be
/// delivered (they fell out of the history before a replay, or the client
/// read too slowly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lagged {
    pub missed: u64,
}

/// `GET /api/v1/info`: what the console needs to know of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    /// Whether write requests can be accepted at all.
    pub writes: bool,
    /// How writes are authorized: `token`, `loopback` or `refused`.
    pub auth: String,
    /// Why writes are refused, when they are.
    pub writes_refused: Option<String>,
}

/// `POST /api/v1/channels/{name}/restart`: accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Restarting {
    /// The channel being restarted.
    pub restarting: String,
}

/// The body of `PUT /api/v1/channels/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Registration {
    /// The channel file's text (TOML) without a `schema` key: the server
    /// names the schema file itself.
    pub channel: String,
    /// The channel's Avro schema (JSON).
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// One thing wrong with a channel file or schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    pub file: String,
    /// The key (`receive.bind`); empty for the file as a whole.
    #[serde(default)]
    pub key: String,
    pub message: String,
}

/// A registration checked with `dry_run=true`: nothing wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Checked {
    /// Always empty here (problems come with a 409 or 422 [`ErrorBody`]).
    pub problems: Vec<Problem>,
}

/// `GET /api/v1/channels/{name}/config`: the channel file and schema as
/// written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelConfig {
    pub name: String,
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// The channel file's text.
    pub channel: String,
    #[schema(value_type = Option<String>)]
    pub schema_file: Option<PathBuf>,
    /// The schema as JSON (`null` if the file is missing or not JSON).
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// `POST /api/v1/channels/{name}/check-schema`: whether records written
/// with the given schema are read correctly as the channel's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SchemaCheck {
    pub compatible: bool,
    pub problems: Vec<String>,
}

/// `GET /api/v1/ports/free`: receive ports no channel file uses and no UDP
/// socket of this host has bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ports {
    pub ports: Vec<u16>,
}

/// The body of `POST /api/v1/holds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    pub name: String,
    /// Start of the range, RFC 3339 with an offset.
    pub from: String,
    /// End of the range (inclusive), RFC 3339; may lie in the future.
    pub to: String,
    /// The channels it covers; absent: every channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An archive file a hold covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeldFile {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub bytes: u64,
    /// Its time span (RFC 3339, UTC).
    pub from: String,
    pub to: String,
}

/// What a hold covers of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Coverage {
    pub channel: String,
    /// The record field whose time the range is compared with, if the
    /// channel has one (else the files' arrival times).
    pub time_field: Option<String>,
    pub files: Vec<HeldFile>,
    pub bytes: u64,
}

/// A hold and what it covers now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HoldReport {
    pub hold: Hold,
    pub channels: Vec<Coverage>,
    /// Bytes of every file covered.
    pub bytes: u64,
}

/// `GET /api/v1/holds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HoldList {
    pub holds: Vec<HoldReport>,
}

/// `GET /api/v1/health`: SpeedData v0.5's health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Always `speeddata-registration-api`.
    pub service: String,
    /// The version of SpeedData's registration API this answers as,
    /// `0.5.0`.
    pub version: String,
    /// This orchestrator's own version.
    pub relay_version: String,
}

/// The body of `POST /api/v1/channels` (SpeedData v0.5's registration).
/// The server reads it field by field, so that a missing or mistyped
/// field is answered as SpeedData answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewChannel {
    pub name: String,
    /// The receive port: an integer (or a string of digits).
    pub port: u16,
    /// A schema file's path (absolute, else relative to orchestrator.toml's
    /// folder, else to the channels folder), or the Avro schema itself.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<NewChannelConfig>,
}

/// `config` of [`NewChannel`]: SpeedData's `decimation` and `rotation`,
/// and sections of the channel file written as they are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct NewChannelConfig {
    /// A decimated output, `downsample` with this `factor`; needs
    /// `decimated.group` (and `interface` for multicast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimation: Option<u32>,
    /// `archive.rotate_interval`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<u64>,
    /// Keys of the channel file's `[receive]` (`bind`'s port must be `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub receive: Option<serde_json::Value>,
    /// Keys of `[archive]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub archive: Option<serde_json::Value>,
    /// Keys of `[full]`: a full-rate output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub full: Option<serde_json::Value>,
    /// Keys of `[decimated]`: a decimated output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub decimated: Option<serde_json::Value>,
}

/// `POST /api/v1/channels`: registered (SpeedData v0.5's answer, and the
/// channel's `state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelCreated {
    /// Always `success`.
    pub status: String,
    pub name: String,
    pub port: u16,
    /// The relay's process id once it runs.
    pub pid: Option<u32>,
    /// `Channel 'x' registered and relay started`, or what became of it.
    pub message: String,
    /// The channel's lifecycle state when the answer was sent.
    pub state: State,
}

/// `DELETE /api/v1/channels/{name}`: removed, its relay stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deregistered {
    /// Always `success`.
    pub status: String,
    pub name: String,
    /// `Channel 'x' de-registered and relay stopped`.
    pub message: String,
}

/// A range of ports, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// `GET /api/v1/ports/available`: the ports of `range` no channel file
/// receives on and no UDP socket of this host has bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AvailablePorts {
    pub range: PortRange,
    pub available: Vec<u16>,
    pub count: usize,
}

/// `GET /api/v1/ports/{port}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortStatus {
    pub port: u16,
    pub available: bool,
    /// `free` or `in_use`.
    pub status: String,
    /// The channel that receives on it; absent when it is free, or taken
    /// by a socket of this host that no channel file names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// The body of `POST /api/v1/channels/{name}/validate-schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaToValidate {
    /// An Avro schema (JSON).
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// `POST /api/v1/channels/{name}/validate-schema`: whether a schema is the
/// channel's (equal as JSON), with both when it is not (409).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaValidation {
    pub valid: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub registered_schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub provided_schema: Option<serde_json::Value>,
}

/// Every error's body: what is wrong, and where when it is known.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// In words, for a person.
    #[serde(default)]
    pub error: String,
    /// The request field at fault (a hold's `from`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong with a channel file or schema, one entry each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<Problem>>,
    /// With a 409 from `/api/v1/ports/free`: the free ports found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// SpeedData v0.5's fields, where an answer carries them.
    #[serde(flatten)]
    pub speeddata: Box<SpeedDataError>,
}

/// The fields SpeedData v0.5's errors carry beside `error` (kept apart, and
/// boxed, so that an [`ErrorBody`] stays small).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct SpeedDataError {
    /// The channel at fault (404 of a channel, 409 of a name already
    /// registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fields a `POST /api/v1/channels` needs, when some are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<Vec<String>>,
    /// The port already in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The channel that uses `port` (absent when it is a socket of this
    /// host that no channel file names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    /// The schema file named, as it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// More about what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            ..ErrorBody::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_flat_with_its_tag() {
        let e = Event {
            seq: 3,
            time: "2026-12-07T01:00:00Z".into(),
            channel: Some("a".into()),
            kind: EventKind::Exited {
                pid: 7,
                exit: None,
                reason: Some("stopped".into()),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"seq": 3, "time": "2026-12-07T01:00:00Z", "channel": "a",
                   "event": "exited", "pid": 7, "reason": "stopped"})
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        let stopped = json!({"seq": 4, "time": "T", "channel": "a", "event": "stopped"});
        let e: Event = serde_json::from_value(stopped).unwrap();
        assert_eq!(e.kind, EventKind::Stopped);
        assert_eq!(e.kind.name(), "stopped");
    }

    #[test]
    fn an_error_body_carries_only_what_it_has() {
        assert_eq!(
            serde_json::to_value(ErrorBody::new("no channel \"x\"")).unwrap(),
            json!({"error": "no channel \"x\""})
        );
        // SpeedData's fields sit beside ours, flat.
        let mut e = ErrorBody::new("Port already in use");
        e.speeddata.port = Some(26001);
        e.speeddata.used_by = Some("sensor1".into());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"error": "Port already in use", "port": 26001, "used_by": "sensor1"})
        );
        assert_eq!(serde_json::from_value::<ErrorBody>(v).unwrap(), e);
        assert_eq!(
            serde_json::from_value::<ErrorBody>(json!({"error": "x"})).unwrap(),
            ErrorBody::new("x")
        );
    }

    #[test]
    fn a_channel_status_reads_without_speeddata_fields() {
        let s = ChannelStatus::new("a", "a.toml".into());
        let mut v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], "registered");
        for k in ["port", "schema_path", "status", "created_at", "config"] {
            v.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(serde_json::from_value::<ChannelStatus>(v).unwrap(), s);
        assert_eq!(
            RegistrationStatus::of(State::Starting),
            RegistrationStatus::Active
        );
        assert_eq!(
            RegistrationStatus::of(State::Backoff).as_str(),
            "registered"
        );
    }
}
