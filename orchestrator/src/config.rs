//! `orchestrator.toml` and the fleet of channel files in `channels.d/`.
//!
//! Channel files are validated by relay-channel's own config type
//! ([`ChannelSpec`]) with the orchestrator's `[defaults]` merged under them,
//! so what `orchestrator check` accepts is exactly what a relay accepts. On
//! top of that, the fleet is checked for conflicts no single file can see:
//! duplicate names, two channels on one receive address, two channels
//! archiving into one folder, two outputs on one group and port (unless
//! both are the same output of their channels and say `shared = true`).

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_channel::config::{self as rc, ChannelSpec, ConfigError, Problem};
use serde::Deserialize;

/// Where `orchestrator run` looks without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/speeddata/orchestrator.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// `http.max_connections` when not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The highest `http.max_connections` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// `http.export_max_duration` when not set: the longest range one export
/// may ask for.
pub const DEFAULT_EXPORT_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// `http.export_max_channels` when not set.
pub const DEFAULT_EXPORT_MAX_CHANNELS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    channels_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    relay_binary: Option<PathBuf>,
    http: Option<RawHttp>,
    supervisor: Option<RawSupervisor>,
    defaults: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    max_connections: Option<i64>,
    token_file: Option<PathBuf>,
    export_max_duration: Option<String>,
    export_max_channels: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    start_timeout: Option<String>,
    stop_timeout: Option<String>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    backoff_factor: Option<f64>,
    stable_after: Option<String>,
    max_restarts: Option<i64>,
    restart_window: Option<String>,
    cooldown: Option<String>,
    liveness_timeout: Option<String>,
}

/// The shortest `supervisor.liveness_timeout` other than off: a relay
/// writes its stats line every second.
pub const MIN_LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);

/// How children are started, restarted and stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A child not `ready` within this is killed and counted as a failure.
    pub start_timeout: Duration,
    /// After SIGTERM, SIGKILL follows this long after.
    pub stop_timeout: Duration,
    /// The first restart delay; each consecutive failure multiplies it by
    /// `backoff_factor`, up to `backoff_max`; jitter of up to ±20% is added.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_factor: f64,
    /// A child that stayed up this long resets the backoff.
    pub stable_after: Duration,
    /// More than `max_restarts` failures within `restart_window` park the
    /// channel as `failed`; it is tried again after `cooldown`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub cooldown: Duration,
    /// A relay that has been `ready` and then writes no stdout line (its
    /// stats line comes every second) for this long is hung: it is killed
    /// and counted as a failure. `None` (written `"0s"`): never.
    pub liveness_timeout: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            backoff_factor: 2.0,
            stable_after: Duration::from_secs(30),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            liveness_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// A validated `orchestrator.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub channels_dir: PathBuf,
    /// The orchestrator's own state (`state_dir`, default `state/` beside
    /// this file): the holds, in `holds/`.
    pub state_dir: PathBuf,
    /// The relay binary; `None`: `relay-channel` beside the orchestrator's
    /// own executable.
    pub relay_binary: Option<PathBuf>,
    pub listen: SocketAddr,
    /// HTTP connections open at once, at most (before the descriptor
    /// limit's say, see [`crate::fdlimit::http_cap`]).
    pub max_connections: usize,
    /// `http.token_file`, resolved against this file's folder: the API
    /// token that write requests must carry. Read when the orchestrator
    /// starts (and by the `channel` commands), see [`read_token`].
    pub token_file: Option<PathBuf>,
    /// `http.export_max_duration`: the longest range an export may ask
    /// for (413 beyond).
    pub export_max_duration: Duration,
    /// `http.export_max_channels`: the most channels an export may ask
    /// for (413 beyond).
    pub export_max_channels: usize,
    pub policy: Policy,
    /// Merged under every channel file; relative paths already resolved
    /// against this file's folder.
    pub defaults: toml::Table,
}

impl Config {
    /// Reads and validates `orchestrator.toml`. `channels_dir` overrides the
    /// file's own.
    pub fn load(path: &Path, channels_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let table = rc::read_table(path)?;
        Self::from_table(table, path, channels_dir)
    }

    pub fn from_table(
        table: toml::Table,
        path: &Path,
        channels_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = rc::deserialize_table(table, path)?;
        let base = rc::base_dir(path);
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.into(),
                message,
            })
        };

        let channels_dir = match channels_dir {
            Some(d) => d.to_path_buf(),
            None => base.join(raw.channels_dir.unwrap_or_else(|| "channels.d".into())),
        };
        let relay_binary = raw.relay_binary.map(|p| base.join(p));
        let state_dir = base.join(raw.state_dir.unwrap_or_else(|| "state".into()));
        let (listen_text, max_connections, token_file, export_duration, export_channels) =
            match raw.http {
                Some(h) => (
                    h.listen,
                    h.max_connections,
                    h.token_file,
                    h.export_max_duration,
                    h.export_max_channels,
                ),
                None => (None, None, None, None, None),
            };
        let export_max_duration = match export_duration {
            None => DEFAULT_EXPORT_MAX_DURATION,
            Some(v) => match rc::parse_duration(&v, "write e.g. \"1h\", \"24h\", \"7d\"") {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    problem("http.export_max_duration", "must be longer than 0s".into());
                    DEFAULT_EXPORT_MAX_DURATION
                }
                Err(e) => {
                    problem("http.export_max_duration", e);
                    DEFAULT_EXPORT_MAX_DURATION
                }
            },
        };
        let export_max_channels = match export_channels {
            None => DEFAULT_EXPORT_MAX_CHANNELS,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                problem(
                    "http.export_max_channels",
                    format!("{n} is out of range (1 to 100000)"),
                );
                DEFAULT_EXPORT_MAX_CHANNELS
            }
        };
        let token_file = token_file.map(|p| base.join(p));
        let listen_text = listen_text.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                problem(
                    "http.listen",
                    format!(
                        "{listen_text:?} is not an address with a port, e.g. \"127.0.0.1:9464\""
                    ),
                );
                DEFAULT_LISTEN.parse().expect("default listen parses")
            }
        };
        let max_connections = match max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if (1..=MAX_MAX_CONNECTIONS as i64).contains(&n) => n as usize,
            Some(n) => {
                problem(
                    "http.max_connections",
                    format!("{n} is out of range (1 to {MAX_MAX_CONNECTIONS})"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
        };

        let mut policy = Policy::default();
        if let Some(s) = raw.supervisor {
            let mut dur = |key: &str, v: Option<String>, into: &mut Duration| {
                if let Some(v) = v {
                    match rc::parse_duration(&v, "write e.g. \"100ms\", \"10s\", \"5m\"") {
                        Ok(d) if !d.is_zero() => *into = d,
                        Ok(_) => problem(
                            &format!("supervisor.{key}"),
                            "must be longer than 0s".into(),
                        ),
                        Err(e) => problem(&format!("supervisor.{key}"), e),
                    }
                }
            };
            dur("start_timeout", s.start_timeout, &mut policy.start_timeout);
            dur("stop_timeout", s.stop_timeout, &mut policy.stop_timeout);
            dur(
                "backoff_initial",
                s.backoff_initial,
                &mut policy.backoff_initial,
            );
            dur("backoff_max", s.backoff_max, &mut policy.backoff_max);
            dur("stable_after", s.stable_after, &mut policy.stable_after);
            dur(
                "restart_window",
                s.restart_window,
                &mut policy.restart_window,
            );
            dur("cooldown", s.cooldown, &mut policy.cooldown);
            if let Some(v) = s.liveness_timeout {
                match rc::parse_duration(&v, "write e.g. \"5s\", or \"0s\" to turn it off") {
                    Ok(d) if d.is_zero() => policy.liveness_timeout = None,
                    Ok(d) if d >= MIN_LIVENESS_TIMEOUT => policy.liveness_timeout = Some(d),
                    Ok(_) => problem(
                        "supervisor.liveness_timeout",
                        format!("{v:?} is too short: relays report once a second; write \"0s\" (off) or at least \"2s\""),
                    ),
                    Err(e) => problem("supervisor.liveness_timeout", e),
                }
            }
            if let Some(f) = s.backoff_factor {
                if (1.0..=10.0).contains(&f) {
                    policy.backoff_factor = f;
                } else {
                    problem(
                        "supervisor.backoff_factor",
                        format!("{f} is out of range (1.0 to 10.0)"),
                    );
                }
            }
            if let Some(n) = s.max_restarts {
                if (0..=10_000).contains(&n) {
                    policy.max_restarts = n as u32;
                } else {
                    problem(
                        "supervisor.max_restarts",
                        format!("{n} is out of range (0 to 10000)"),
                    );
                }
            }
            if policy.backoff_max < policy.backoff_initial {
                problem(
                    "supervisor.backoff_max",
                    "must not be shorter than backoff_initial".into(),
                );
            }
        }

        let mut defaults = raw.defaults.unwrap_or_default();
        absolutize_paths(&mut defaults, &base);
        for p in check_defaults(&defaults) {
            problem(&format!("defaults.{}", p.key), p.message);
        }
        if problems.is_empty() {
            Ok(Config {
                file: path.to_path_buf(),
                channels_dir,
                state_dir,
                relay_binary,
                listen,
                max_connections,
                token_file,
                export_max_duration,
                export_max_channels,
                policy,
                defaults,
            })
        } else {
            Err(ConfigError {
                file: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The `[defaults]` table as TOML text, for `relay-channel --defaults`.
    pub fn defaults_text(&self) -> String {
        toml::to_string(&self.defaults).expect("a TOML table serializes")
    }
}

/// Paths in `[defaults]` are relative to orchestrator.toml, not to the
/// channel files they end up in.
fn absolutize_paths(defaults: &mut toml::Table, base: &Path) {
    let abs = |s: &mut String| {
        *s = rc::normalize(&base.join(&*s))
            .to_string_lossy()
            .into_owned()
    };
    if let Some(toml::Value::String(s)) = defaults.get_mut("schema") {
        abs(s);
    }
    if let Some(toml::Value::Table(a)) = defaults.get_mut("archive") {
        if let Some(toml::Value::String(s)) = a.get_mut("dir") {
            abs(s);
        }
    }
}

/// Problems in `[defaults]` alone: its keys and values must be ones a
/// channel file accepts. Checked by validating them over a minimal channel.
fn check_defaults(defaults: &toml::Table) -> Vec<Problem> {
    let minimal: toml::Table = toml::from_str(
        "name = \"defaults\"\nschema = \"/nonexistent.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"/nonexistent\"\n",
    )
    .expect("minimal channel parses");
    let mut t = defaults.clone();
    t.remove("name");
    match ChannelSpec::from_table(t, Path::new("[defaults]"), Some(&minimal)) {
        Ok(_) => vec![],
        Err(e) => e.problems,
    }
}

/// The API token: the first line of `http.token_file`, trimmed. Errors
/// name the file and key, never the token.
pub fn read_token(cfg: &Config) -> Result<Option<String>, ConfigError> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let err = |message: String| ConfigError {
        file: cfg.file.clone(),
        problems: vec![Problem {
            key: "http.token_file".into(),
            message,
        }],
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(err(format!(
            "{} holds no token of at least 16 characters on its first line",
            path.display()
        )));
    }
    Ok(Some(token.to_string()))
}

impl Config {
    /// Where the holds are kept, one file each; relays read it at every
    /// retention pass.
    pub fn holds_dir(&self) -> PathBuf {
        self.state_dir.join("holds")
    }
}

/// One valid channel of the fleet.
#[derive(Debug, Clone)]
pub struct Channel {
    pub spec: ChannelSpec,
    /// Changes whenever the channel's effective configuration (its file
    /// with defaults merged, or its schema) changes.
    pub fingerprint: u64,
}

impl Channel {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn file(&self) -> &Path {
        &self.spec.file
    }
}

/// A channel file that cannot run: its problems, and the channel name it
/// would have had (the `name` key if readable, else the file stem).
#[derive(Debug, Clone)]
pub struct InvalidChannel {
    pub name: String,
    pub error: ConfigError,
}

/// What `channels.d` holds right now: the channels that can run, and the
/// files that cannot.
#[derive(Debug, Default)]
pub struct ChannelSet {
    pub channels: Vec<Channel>,
    pub rejected: Vec<InvalidChannel>,
}

/// Reads every `*.toml` in the channels folder (sorted by file name),
/// validates each with the defaults merged, then checks fleet conflicts: of
/// two conflicting files the one that sorts first keeps the channel.
pub fn load_fleet(cfg: &Config) -> Result<ChannelSet, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.channels_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut fleet = ChannelSet::default();
    for file in files {
        match load_channel(&file, &cfg.defaults) {
            Ok(c) => fleet.channels.push(c),
            Err(error) => fleet.rejected.push(InvalidChannel {
                name: name_of(&file),
                error,
            }),
        }
    }
    check_conflicts(&mut fleet);
    Ok(fleet)
}

/// The channel name a file stands for, even when it does not validate.
pub fn name_of(file: &Path) -> String {
    let table = rc::read_table(file).ok();
    let name = table.as_ref().and_then(|t| t.get("name")?.as_str());
    rc::channel_name(name, file)
}

/// Validates one channel file exactly as relay-channel will, schema included.
pub fn load_channel(file: &Path, defaults: &toml::Table) -> Result<Channel, ConfigError> {
    let table = rc::read_table(file)?;
    validate_channel(table, file, defaults, None)
}

/// Validates a channel file's table as [`load_channel`] does, as if it
/// were at `file`; with `schema_text`, that is the schema's text instead of
/// what the file's `schema` key names (not written yet).
pub fn validate_channel(
    table: toml::Table,
    file: &Path,
    defaults: &toml::Table,
    schema_text: Option<String>,
) -> Result<Channel, ConfigError> {
    let merged_text = {
        let mut t = table.clone();
        rc::merge_under(&mut t, defaults);
        toml::to_string(&t).unwrap_or_default()
    };
    let spec = ChannelSpec::from_table(table, file, Some(defaults))?;
    let schema = match schema_text {
        Some(text) => relay_channel::schema::from_text(&spec, text)?,
        None => relay_channel::schema::load(&spec)?,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    merged_text.hash(&mut h);
    schema.text.hash(&mut h);
    Ok(Channel {
        spec,
        fingerprint: h.finish(),
    })
}

fn check_conflicts(fleet: &mut ChannelSet) {
    let mut kept: Vec<Channel> = Vec::new();
    for c in std::mem::take(&mut fleet.channels) {
        let problems = conflicts(&c, &kept);
        if problems.is_empty() {
            kept.push(c);
        } else {
            fleet.rejected.push(InvalidChannel {
                name: c.name().to_string(),
                error: ConfigError {
                    file: c.file().to_path_buf(),
                    problems,
                },
            });
        }
    }
    fleet.channels = kept;
}

/// What `c` conflicts with among channels already accepted. Two outputs
/// may send to one destination only when both are full-rate outputs, or
/// both decimated ones, and both say `shared = true` (SpeedData's model:
/// every channel on the same two groups).
pub(crate) fn conflicts(c: &Channel, kept: &[Channel]) -> Vec<Problem> {
    let mut out = Vec::new();
    let s = &c.spec;
    // An output may not share its destination even with the channel's own other output.
    if let (Some(f), Some(d)) = (&s.full, &s.decimated) {
        if f.dest == d.output.dest {
            out.push(Problem {
                key: "decimated.group".into(),
                message: format!("{} is also this channel's full.group", d.output.dest),
            });
        }
    }
    let mut add_why = |key: &str, what: String, other: &Channel, why: &str| {
        out.push(Problem {
            key: key.into(),
            message: format!(
                "{what} is also used by channel {:?} ({}){why}",
                other.name(),
                other.file().display()
            ),
        })
    };
    for o in kept {
        let t = &o.spec;
        if t.name == s.name {
            add_why("name", format!("the name {:?}", s.name), o, "");
        }
        if receive_overlaps(&s.receive, &t.receive) {
            add_why(
                "receive.bind",
                format!(
                    "the receive address {}{}",
                    s.receive.bind,
                    s.receive
                        .group
                        .map(|g| format!(" (group {g})"))
                        .unwrap_or_default()
                ),
                o,
                "",
            );
        }
        if rc::normalize(&s.archive.channel_dir(&s.name))
            == rc::normalize(&t.archive.channel_dir(&t.name))
        {
            add_why(
                "archive.dir",
                format!(
                    "the archive folder {}",
                    s.archive.channel_dir(&s.name).display()
                ),
                o,
                "",
            );
        }
        for (key, mine) in outputs(s) {
            for (other_key, theirs) in outputs(t) {
                if mine.dest != theirs.dest {
                    continue;
                }
                let why = if key != other_key {
                    format!(", as its {other_key}: a full-rate and a decimated output never share a group")
                } else if mine.shared && theirs.shared {
                    continue;
                } else {
                    let section = key.trim_end_matches(".group");
                    format!("; channels share a group only when both say {section}.shared = true")
                };
                add_why(key, format!("the output {}", mine.dest), o, &why);
            }
        }
    }
    out
}

/// A channel's outputs: (the key of their group, the output).
fn outputs(s: &ChannelSpec) -> Vec<(&'static str, &rc::OutputSpec)> {
    let mut v = Vec::new();
    if let Some(f) = &s.full {
        v.push(("full.group", f));
    }
    if let Some(d) = &s.decimated {
        v.push(("decimated.group", &d.output));
    }
    v
}

/// Whether two receive sockets would take each other's datagrams (or fail
/// to bind): same port and, for unicast, overlapping addresses; for
/// multicast, the same group.
fn receive_overlaps(a: &rc::ReceiveSpec, b: &rc::ReceiveSpec) -> bool {
    if a.bind.port() != b.bind.port() {
        return false;
    }
    match (a.group, b.group) {
        (Some(ga), Some(gb)) => ga == gb,
        _ => {
            let (ia, ib) = (a.bind.ip(), b.bind.ip());
            ia == ib || ia.is_unspecified() || ib.is_unspecified()
        }
    }
}

/// Every problem of a fleet, for `orchestrator check`, file by file.
pub struct InvalidChannels<'a>(pub &'a [InvalidChannel]);

impl fmt::Display for InvalidChannels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_file: BTreeMap<&Path, Vec<&InvalidChannel>> = BTreeMap::new();
        for r in self.0 {
            by_file.entry(&r.error.file).or_default().push(r);
        }
        for rs in by_file.values() {
            for r in rs {
                writeln!(f, "{}", r.error)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod doc_keys;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const SCHEMA: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#;

    fn setup(channels: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("channels.d")).unwrap();
        write(&d.path().join("channels.d"), "s.avsc", SCHEMA);
        for (n, t) in channels {
            write(&d.path().join("channels.d"), n, t);
        }
        write(
            d.path(),
            "orchestrator.toml",
            "[defaults]\nschema = \"channels.d/s.avsc\"\narchive.dir = \"data\"\n",
        );
        let cfg = Config::load(&d.path().join("orchestrator.toml"), None).unwrap();
        (d, cfg)
    }

    #[test]
    fn defaults_fill_in_and_resolve_against_orchestrator_toml() {
        let (d, cfg) = setup(&[("a.toml", "[receive]\nbind = \"127.0.0.1:7001\"\n")]);
        let fleet = load_fleet(&cfg).unwrap();
        assert!(
            fleet.rejected.is_empty(),
            "{}",
            InvalidChannels(&fleet.rejected)
        );
        let a = &fleet.channels[0];
        assert_eq!(a.name(), "a");
        let base = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(a.spec.archive.dir, base.join("data"));
        assert_eq!(a.spec.schema_path, base.join("channels.d/s.avsc"));
    }

    #[test]
    fn every_fleet_conflict_is_caught_and_named() {
        let (_d, cfg) = setup(&[
            ("a.toml", "[receive]\nbind = \"127.0.0.1:7001\"\n[full]\ngroup = \"239.1.1.1:6000\"\ninterface = \"127.0.0.1\"\n"),
            // Same receive address as a.
            ("b.toml", "[receive]\nbind = \"0.0.0.0:7001\"\n"),
            // Same name as a.
            ("c.toml", "name = \"a\"\n[receive]\nbind = \"127.0.0.1:7003\"\n"),
            // Same output as a.
            ("d.toml", "[receive]\nbind = \"127.0.0.1:7004\"\n[decimated]\ngroup = \"239.1.1.1:6000\"\ninterface = \"127.0.0.1\"\nfactor = 2\n"),
            // Same group on the same port: conflict; another group: fine.
            ("e.toml", "[receive]\nbind = \"0.0.0.0:7005\"\ngroup = \"239.2.2.2\"\n"),
            ("f.toml", "[receive]\nbind = \"0.0.0.0:7005\"\ngroup = \"239.2.2.2\"\n"),
            ("g.toml", "[receive]\nbind = \"0.0.0.0:7005\"\ngroup = \"239.2.2.3\"\n"),
            // Archive folder of e, reached through another root.
            ("h.toml", "name = \"e\"\n[receive]\nbind = \"127.0.0.1:7008\"\n"),
        ]);
        let fleet = load_fleet(&cfg).unwrap();
        let ok: Vec<&str> = fleet.channels.iter().map(|c| c.name()).collect();
        assert_eq!(ok, ["a", "e", "g"]);
        let report = InvalidChannels(&fleet.rejected).to_string();
        for needle in [
            "b.toml: receive.bind: the receive address 0.0.0.0:7001",
            "c.toml: name: the name \"a\"",
            "d.toml: decimated.group: the output 239.1.1.1:6000",
            "f.toml: receive.bind",
            "h.toml: archive.dir",
        ] {
            assert!(report.contains(needle), "{needle:?} not in:\n{report}");
        }
    }

    #[test]
    fn outputs_share_a_group_only_when_both_say_shared() {
        let out = |section: &str, group: &str, shared: bool| {
            let mut t =
                format!("\n[{section}]\ngroup = \"{group}\"\ninterface = \"127.0.0.1\"\nttl = 0\n");
            if shared {
                t += "shared = true\n";
            }
            if section == "decimated" {
                t += "factor = 5\n";
            }
            t
        };
        let chan = |port: u16, outs: &[String]| {
            format!("[receive]\nbind = \"127.0.0.1:{port}\"\n{}", outs.concat())
        };
        let both = |port, shared_full, shared_dec| {
            chan(
                port,
                &[
                    out("full", "239.1.1.1:6000", shared_full),
                    out("decimated", "239.1.1.2:6001", shared_dec),
                ],
            )
        };
        let (_d, cfg) = setup(
            &[
                ("a.toml", both(7001, true, true)),
                // Both outputs shared with a's: fine.
                ("b.toml", both(7002, true, true)),
                // The full-rate group shared, the decimated one not: refused.
                ("c.toml", both(7003, true, false)),
                // a's full-rate group as a decimated output: refused though
                // both say shared.
                (
                    "d.toml",
                    chan(7004, &[out("decimated", "239.1.1.1:6000", true)]),
                ),
                // Not shared at all: refused.
                (
                    "e.toml",
                    chan(7005, &[out("full", "239.1.1.1:6000", false)]),
                ),
            ]
            .iter()
            .map(|(n, t)| (*n, t.as_str()))
            .collect::<Vec<_>>(),
        );
        let fleet = load_fleet(&cfg).unwrap();
        let ok: Vec<&str> = fleet.channels.iter().map(|c| c.name()).collect();
        assert_eq!(ok, ["a", "b"]);
        let report = InvalidChannels(&fleet.rejected).to_string();
        for needle in [
            "c.toml: decimated.group: the output 239.1.1.2:6001 is also used by channel \"a\"",
            "a.toml); channels share a group only when both say decimated.shared = true",
            "d.toml: decimated.group: the output 239.1.1.1:6000 is also used by channel \"a\"",
            "a.toml), as its full.group: a full-rate and a decimated output never share a group",
            "e.toml: full.group: the output 239.1.1.1:6000 is also used by channel \"a\"",
            "both say full.shared = true",
        ] {
            assert!(report.contains(needle), "{needle:?} not in:\n{report}");
        }
        assert!(!report.contains("c.toml: full.group"), "{report}");
    }

    #[test]
    fn bad_defaults_are_reported_against_orchestrator_toml() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "orchestrator.toml",
            "[supervisor]\nbackoff_initial = \"soon\"\nmax_restarts = -1\n[defaults]\narchive.codec = \"lz4\"\narchive.bogus = 1\n",
        );
        let e = Config::load(&d.path().join("orchestrator.toml"), None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("supervisor.backoff_initial"), "{text}");
        assert!(text.contains("supervisor.max_restarts"), "{text}");
        assert!(text.contains("defaults.archive"), "{text}");
    }

    #[test]
    fn liveness_timeout_is_on_by_default_off_at_zero_and_never_too_short() {
        let d = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            write(d.path(), "orchestrator.toml", text);
            Config::load(&d.path().join("orchestrator.toml"), None)
        };
        assert_eq!(
            load("").unwrap().policy.liveness_timeout,
            Some(Duration::from_secs(5))
        );
        let off = load("[supervisor]\nliveness_timeout = \"0s\"\n").unwrap();
        assert_eq!(off.policy.liveness_timeout, None);
        let set = load("[supervisor]\nliveness_timeout = \"12s\"\n").unwrap();
        assert_eq!(set.policy.liveness_timeout, Some(Duration::from_secs(12)));
        for bad in ["\"500ms\"", "\"soon\""] {
            let e = load(&format!("[supervisor]\nliveness_timeout = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("supervisor.liveness_timeout"), "{e}");
        }
    }

    #[test]
    fn http_max_connections_defaults_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("orchestrator.toml");
        write(d.path(), "orchestrator.toml", "");
        let cfg = Config::load(&file, None).unwrap();
        assert_eq!(cfg.max_connections, DEFAULT_MAX_CONNECTIONS);
        write(
            d.path(),
            "orchestrator.toml",
            "[http]\nmax_connections = 3\n",
        );
        assert_eq!(Config::load(&file, None).unwrap().max_connections, 3);
        for bad in ["0", "-1", "1000001"] {
            write(
                d.path(),
                "orchestrator.toml",
                &format!("[http]\nmax_connections = {bad}\n"),
            );
            let text = Config::load(&file, None).unwrap_err().to_string();
            assert!(
                text.contains("orchestrator.toml")
                    && text.contains("http.max_connections: ")
                    && text.contains("out of range (1 to 1000000)"),
                "{text}"
            );
        }
        write(
            d.path(),
            "orchestrator.toml",
            "[http]\nmax_connections = \"many\"\n",
        );
        let text = Config::load(&file, None).unwrap_err().to_string();
        assert!(text.contains("http.max_connections"), "{text}");
    }

    #[test]
    fn a_key_that_is_not_bare_is_named_quoted() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "orchestrator.toml", "''=1\n[http]\n\"a b\"=2\n");
        let text = Config::load(&d.path().join("orchestrator.toml"), None)
            .unwrap_err()
            .to_string();
        assert!(text.contains("orchestrator.toml: \"\": "), "{text}");
    }

    #[test]
    fn fingerprint_follows_file_and_schema() {
        let (d, cfg) = setup(&[("a.toml", "[receive]\nbind = \"127.0.0.1:7001\"\n")]);
        let f1 = load_fleet(&cfg).unwrap().channels[0].fingerprint;
        assert_eq!(f1, load_fleet(&cfg).unwrap().channels[0].fingerprint);
        write(
            &d.path().join("channels.d"),
            "s.avsc",
            &SCHEMA.replace("\"a\"", "\"b\""),
        );
        let f2 = load_fleet(&cfg).unwrap().channels[0].fingerprint;
        assert_ne!(f1, f2);
        write(
            &d.path().join("channels.d"),
            "a.toml",
            "[receive]\nbind = \"127.0.0.1:7002\"\n",
        );
        assert_ne!(f2, load_fleet(&cfg).unwrap().channels[0].fingerprint);
    }
}
