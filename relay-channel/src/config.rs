//! Channel configuration: one TOML file per channel.
//!
//! The file is parsed into raw structs that mirror the TOML exactly (serde,
//! `deny_unknown_fields`), then validated into a [`ChannelSpec`], the only
//! type the rest of the relay sees. Validation gathers every problem it can
//! find before refusing, and each problem names the file and the key, so an
//! operator fixes a file in one pass. The orchestrator validates channel files
//! with this same code (`ChannelSpec::from_table`), so `orchestrator check`
//! accepts exactly what the relay accepts.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Largest payload of one UDP datagram over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Default deflate level (zlib's default).
pub const DEFAULT_DEFLATE_LEVEL: u32 = 6;
/// Default zstd level. Level 1, not zstd's own default of 3: on sampled
/// telemetry (blocks of doubles) it compresses faster and as small or
/// smaller (benches/RESULTS.md), and compression is what limits an
/// archiving relay on a small machine.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Names accepted by [`Codec::parse`].
const ACCEPTED_CODECS: &str = "null, deflate, snappy, zstd, zstandard";

/// Block compression codec of the archive files (`archive.codec` and
/// `archive.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// No compression.
    Null,
    /// Raw deflate (RFC 1951, no zlib header), level 0..=9.
    Deflate { level: u32 },
    /// Raw snappy block followed by the big-endian CRC32 of the uncompressed data.
    Snappy,
    /// One zstd frame per block (with content size and checksum).
    Zstd { level: i32 },
}

impl Codec {
    /// Parses a configured codec name (`null`, `deflate`, `snappy`, `zstd` or
    /// `zstandard`) and optional level. Deflate takes 0..=9 (default
    /// [`DEFAULT_DEFLATE_LEVEL`]), zstd takes zstd's level range (default
    /// [`DEFAULT_ZSTD_LEVEL`]); `null` and `snappy` take no level.
    pub fn parse(name: &str, level: Option<i32>) -> Result<Codec, String> {
        match name {
            "null" | "snappy" => {
                if let Some(l) = level {
                    return Err(format!(
                        "codec {name:?} takes no compression level (got {l})"
                    ));
                }
                Ok(if name == "null" {
                    Codec::Null
                } else {
                    Codec::Snappy
                })
            }
            "deflate" => match level {
                None => Ok(Codec::Deflate {
                    level: DEFAULT_DEFLATE_LEVEL,
                }),
                Some(l @ 0..=9) => Ok(Codec::Deflate { level: l as u32 }),
                Some(l) => Err(format!("deflate level must be 0..=9, got {l}")),
            },
            "zstd" | "zstandard" => {
                let range = zstd::compression_level_range();
                match level {
                    None => Ok(Codec::Zstd {
                        level: DEFAULT_ZSTD_LEVEL,
                    }),
                    Some(l) if range.contains(&l) => Ok(Codec::Zstd { level: l }),
                    Some(l) => Err(format!(
                        "zstd level must be {}..={}, got {l}",
                        range.start(),
                        range.end()
                    )),
                }
            }
            other => Err(format!(
                "unknown codec {other:?} (accepted: {ACCEPTED_CODECS})"
            )),
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`receive.bind`), or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: key.to_string(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// Raw TOML shape.

/// A number written as an integer or a decimal.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Int(i64),
    Float(f64),
}

/// A size: an integer number of bytes or a string such as `"8MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Option<String>,
    schema: Option<PathBuf>,
    receive: Option<RawReceive>,
    archive: Option<RawArchive>,
    full: Option<RawOutput>,
    decimated: Option<RawDecimated>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceive {
    bind: Option<String>,
    group: Option<String>,
    interface: Option<String>,
    recv_buffer: Option<RawSize>,
    validate: Option<bool>,
    batch: Option<i64>,
    allow_from: Option<Vec<String>>,
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    dir: Option<PathBuf>,
    codec: Option<String>,
    level: Option<i64>,
    block_size: Option<RawSize>,
    rotate_size: Option<RawSize>,
    rotate_interval: Option<String>,
    flush_interval: Option<String>,
    fsync: Option<String>,
    queue: Option<RawSize>,
    quarantine_size: Option<RawSize>,
    retention_age: Option<String>,
    retention_size: Option<RawSize>,
    time_field: Option<String>,
    adaptive: Option<bool>,
    compress_threads: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    group: Option<String>,
    interface: Option<String>,
    ttl: Option<i64>,
    loopback: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecimated {
    group: Option<String>,
    interface: Option<String>,
    ttl: Option<i64>,
    loopback: Option<bool>,
    algorithm: Option<String>,
    factor: Option<i64>,
    rate_hz: Option<RawNumber>,
    keep_last: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Validated shape.

/// A validated channel: what `relay-channel run` executes.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    /// The file this came from.
    pub file: PathBuf,
    pub name: String,
    /// Absolute or file-relative path resolved against the file's folder.
    pub schema_path: PathBuf,
    pub receive: ReceiveSpec,
    pub archive: ArchiveSpec,
    pub full: Option<OutputSpec>,
    pub decimated: Option<DecimatedSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveSpec {
    pub bind: SocketAddrV4,
    pub group: Option<Ipv4Addr>,
    /// Interface for the join (`0.0.0.0`: the kernel chooses).
    pub interface: Interface,
    pub recv_buffer: usize,
    pub validate: bool,
    /// Datagrams per `recvmmsg` call.
    pub batch: usize,
    /// Senders accepted; empty: every sender.
    pub allow_from: Vec<ipnet::Ipv4Net>,
    /// How a datum sits in a datagram.
    pub encoding: Encoding,
}

/// A network interface, by address (`"127.0.0.1"`) or by name (`"eth1"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    Addr(Ipv4Addr),
    /// Resolved to its first IPv4 address when used.
    Name(String),
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interface::Addr(a) => a.fmt(f),
            Interface::Name(n) => f.write_str(n),
        }
    }
}

/// How a datum sits in a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The datagram is exactly one Avro binary datum.
    Datum,
    /// Avro single-object encoding: `C3 01`, the schema's 8-byte CRC-64-AVRO
    /// fingerprint, then the datum. The header must match the channel's
    /// schema; the archive stores the datum, the outputs forward the
    /// datagram unchanged.
    SingleObject,
}

/// When the archive asks the kernel to put data on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Never,
    OnRotate,
    Interval,
}

#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    /// The archive root; this channel's files go to `dir/<name>/`.
    pub dir: PathBuf,
    pub codec: Codec,
    pub block_size: usize,
    pub rotate_size: u64,
    pub rotate_interval: Duration,
    pub flush_interval: Duration,
    pub fsync: Fsync,
    /// Bytes of datagrams the archive queue holds before the receive path
    /// drops (counted as `archive_dropped`).
    pub queue: u64,
    pub quarantine_size: u64,
    pub retention_age: Option<Duration>,
    pub retention_size: Option<u64>,
    /// `archive.time_field`: a (dotted) field of the schema holding each
    /// record's own time (`long`, `timestamp-*` or `local-timestamp-*`),
    /// checked when the schema is loaded. The relay does nothing else with
    /// it; exports of the archive use it.
    pub time_field: Option<String>,
    /// `archive.adaptive` (zstd only; default on): under load the zstd
    /// level goes down, to storing blocks if it must, so that the archive
    /// never costs a record; `level` is the preferred level it climbs back
    /// to.
    pub adaptive: bool,
    /// `archive.compress_threads`: threads that compress blocks; `None`
    /// (the default): decided at start from the cores and the channel count
    /// (see `archive::pool::compress_threads`).
    pub compress_threads: Option<usize>,
}

impl ArchiveSpec {
    /// The folder this channel's files live in.
    pub fn channel_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub dest: SocketAddrV4,
    /// Interface multicast leaves by; `None` only for unicast.
    pub interface: Option<Interface>,
    pub ttl: u32,
    pub loopback: bool,
}

/// What the decimated output sends for a window of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// One record of the window, as it came.
    Downsample,
    /// Each numeric field's mean.
    Average,
    /// Two records: each numeric field's minimum, then maximum.
    MinMax,
    /// Each numeric field's root mean square.
    Rms,
}

impl Algorithm {
    pub const NAMES: [&'static str; 4] = ["downsample", "average", "minmax", "rms"];

    /// The name used in channel files: `downsample`, `average`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Downsample => "downsample",
            Algorithm::Average => "average",
            Algorithm::MinMax => "minmax",
            Algorithm::Rms => "rms",
        }
    }

    fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "downsample" => Algorithm::Downsample,
            "average" => Algorithm::Average,
            "minmax" => Algorithm::MinMax,
            "rms" => Algorithm::Rms,
            _ => return None,
        })
    }
}

/// How the decimated output groups valid records into windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecimationWindow {
    /// `factor`: this many consecutive records.
    Records(u32),
    /// `rate_hz`: windows of 1 / this many seconds of arrival time.
    PerSecond(f64),
}

/// The most windows a second `rate_hz` may ask for.
pub const MAX_RATE_HZ: f64 = 100_000.0;

#[derive(Debug, Clone, PartialEq)]
pub struct DecimatedSpec {
    pub output: OutputSpec,
    pub algorithm: Algorithm,
    pub window: DecimationWindow,
    /// Dotted field names that take the window's last value (checked
    /// against the schema when it is loaded).
    pub keep_last: Vec<String>,
}

// Defaults, named so docs/channel-file.md and the code agree.
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;
pub const DEFAULT_BATCH: usize = 64;
pub const DEFAULT_BLOCK_SIZE: usize = 256 << 10;
pub const DEFAULT_ROTATE_SIZE: u64 = 256 << 20;
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_QUEUE: u64 = 32 << 20;
pub const DEFAULT_QUARANTINE_SIZE: u64 = 16 << 20;
/// The variable the orchestrator sets, for each relay it starts, to the
/// number of channels it runs: how many share the host's cores when
/// `archive.compress_threads` is decided at start.
pub const CHANNELS_ENV: &str = "SPEEDDATA_CHANNELS";
/// The most threads `archive.compress_threads` may ask for.
pub const MAX_COMPRESS_THREADS: usize = 64;
pub const DEFAULT_TTL: u32 = 1;

impl ChannelSpec {
    /// Reads and validates a channel file, with `defaults` merged under it.
    pub fn load(path: &Path, defaults: Option<&toml::Table>) -> Result<ChannelSpec, ConfigError> {
        let table = read_table(path)?;
        Self::from_table(table, path, defaults)
    }

    /// Parses and validates the text of a channel file as [`load`](Self::load)
    /// does once it has read it; `path` is where the text stands (paths in it
    /// resolve against its folder, and errors name it).
    pub fn from_text(
        text: &str,
        path: &Path,
        defaults: Option<&toml::Table>,
    ) -> Result<ChannelSpec, ConfigError> {
        Self::from_table(parse_table(text, path)?, path, defaults)
    }

    /// Validates an already parsed channel file. `defaults`, when given, is
    /// merged under the file: a key the file sets wins.
    pub fn from_table(
        mut table: toml::Table,
        path: &Path,
        defaults: Option<&toml::Table>,
    ) -> Result<ChannelSpec, ConfigError> {
        if let Some(defaults) = defaults {
            merge_under(&mut table, defaults);
        }
        let raw: RawChannel = deserialize_table(table, path)?;
        // Paths in the file are relative to its folder; made absolute so
        // logs and status lines name them unambiguously.
        let base = base_dir(path);
        let mut v = Checker {
            file: path,
            base: &base,
            problems: Vec::new(),
        };
        let spec = v.channel(raw);
        if v.problems.is_empty() {
            Ok(spec.expect("a spec is built whenever there is no problem"))
        } else {
            Err(ConfigError {
                file: path.to_path_buf(),
                problems: v.problems,
            })
        }
    }
}

/// Deserializes a parsed configuration file (`path`, for errors) into its
/// raw shape `T`. The error names the key (see [`dotted_key`]) and says
/// what is wrong with it on one line.
pub fn deserialize_table<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    path: &Path,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = dotted_key(e.path());
        // toml appends "in `key`" on a line of its own; the key is
        // already named.
        let message = e.into_inner().to_string();
        let message: Vec<&str> = message
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("in `"))
            .collect();
        ConfigError::one(path, &key, message.join(" "))
    })
}

/// The folder that relative paths in the configuration file `path` resolve
/// against: its own, made absolute where it exists.
pub fn base_dir(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&parent).unwrap_or(parent)
}

/// The dotted key (`receive.allow_from[0]`) of a deserialization path, empty
/// for the file as a whole. A key that is not a bare TOML key is quoted
/// (`archive."a b"`, `""`), so that every key, even an empty one, is named.
pub fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        let name = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Unknown => "?",
        };
        if !out.is_empty() {
            out.push('.');
        }
        let bare = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare || matches!(segment, Segment::Unknown) {
            out.push_str(name);
        } else {
            out.push_str(&format!("{name:?}"));
        }
    }
    out
}

/// Reads a TOML file into a table; errors name the file.
pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(path, "", format!("cannot read the file: {e}")))?;
    parse_table(&text, path)
}

/// Parses TOML text into a table; errors name `origin`.
pub fn parse_table(text: &str, origin: &Path) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::one(origin, "", format!("not valid TOML: {e}")))
}

/// Merges `defaults` under `table`: tables merge key by key, anything else in
/// `table` wins.
pub fn merge_under(table: &mut toml::Table, defaults: &toml::Table) {
    for (k, dv) in defaults {
        match (table.get_mut(k), dv) {
            (None, _) => {
                table.insert(k.clone(), dv.clone());
            }
            (Some(toml::Value::Table(t)), toml::Value::Table(d)) => merge_under(t, d),
            (Some(_), _) => {}
        }
    }
}

struct Checker<'a> {
    file: &'a Path,
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        normalize(&self.base.join(p))
    }

    fn channel(&mut self, raw: RawChannel) -> Option<ChannelSpec> {
        let name = match raw.name {
            Some(n) => n,
            None => self
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !valid_name(&name) {
            self.problem(
                "name",
                format!(
                    "{name:?} is not a valid channel name: use 1 to 64 of a-z, 0-9, '_' and '-' \
                     (the name defaults to the file name without .toml)"
                ),
            );
        }
        let schema_path = match raw.schema {
            Some(p) => Some(self.resolve(&p)),
            None => {
                self.problem("schema", "missing: the path of the channel's .avsc schema");
                None
            }
        };
        let receive = match raw.receive {
            Some(r) => self.receive(r),
            None => {
                self.problem("receive", "missing section [receive] (at least `bind`)");
                None
            }
        };
        let archive = match raw.archive {
            Some(a) => self.archive(a),
            None => {
                self.problem("archive", "missing section [archive] (at least `dir`)");
                None
            }
        };
        let full = raw.full.and_then(|o| {
            self.output(
                "full",
                RawOutput {
                    group: o.group,
                    interface: o.interface,
                    ttl: o.ttl,
                    loopback: o.loopback,
                },
            )
        });
        let decimated = match raw.decimated {
            Some(d) => self.decimated(d),
            None => None,
        };
        Some(ChannelSpec {
            file: self.file.to_path_buf(),
            name,
            schema_path: schema_path?,
            receive: receive?,
            archive: archive?,
            full,
            decimated,
        })
    }

    fn receive(&mut self, r: RawReceive) -> Option<ReceiveSpec> {
        let bind = match r.bind {
            Some(b) => self.socket_addr("receive.bind", &b),
            None => {
                self.problem(
                    "receive.bind",
                    "missing: the address and port to receive on, e.g. \"127.0.0.1:26000\"",
                );
                None
            }
        };
        let group = r.group.and_then(|g| match g.parse::<Ipv4Addr>() {
            Ok(a) if a.is_multicast() => Some(a),
            Ok(a) => {
                self.problem(
                    "receive.group",
                    format!("{a} is not an IPv4 multicast address (224.0.0.0/4)"),
                );
                None
            }
            Err(_) => {
                self.problem(
                    "receive.group",
                    format!("{g:?} is not an IPv4 address (the group takes no port: the port is bind's)"),
                );
                None
            }
        });
        let interface = match r.interface {
            Some(i) => self.interface("receive.interface", &i),
            None => Some(Interface::Addr(Ipv4Addr::UNSPECIFIED)),
        };
        if let (Some(b), Some(g)) = (bind, group) {
            if !b.ip().is_unspecified() && *b.ip() != g {
                self.problem(
                    "receive.bind",
                    format!(
                        "with a group, bind to 0.0.0.0:{port} or {g}:{port}; {b} would not receive the group",
                        port = b.port()
                    ),
                );
            }
        }
        let recv_buffer = self
            .size("receive.recv_buffer", r.recv_buffer)
            .unwrap_or(DEFAULT_RECV_BUFFER as u64);
        let recv_buffer = self.in_range("receive.recv_buffer", recv_buffer, 4096, 1 << 31);
        let batch = r.batch.unwrap_or(DEFAULT_BATCH as i64);
        let batch = self.in_range("receive.batch", batch, 1, 1024);
        let mut allow_from = Vec::new();
        for (i, a) in r.allow_from.unwrap_or_default().iter().enumerate() {
            let parsed = a
                .parse::<ipnet::Ipv4Net>()
                .or_else(|_| a.parse::<Ipv4Addr>().map(ipnet::Ipv4Net::from));
            match parsed {
                Ok(n) => allow_from.push(n.trunc()),
                Err(_) => self.problem(
                    &format!("receive.allow_from[{i}]"),
                    format!("{a:?} is not an IPv4 address or network, e.g. \"10.1.0.0/16\" or \"127.0.0.1\""),
                ),
            }
        }
        let encoding = match r.encoding.as_deref().unwrap_or("datum") {
            "datum" => Some(Encoding::Datum),
            "single_object" => Some(Encoding::SingleObject),
            other => {
                self.problem(
                    "receive.encoding",
                    format!("{other:?} is not one of \"datum\", \"single_object\""),
                );
                None
            }
        };
        Some(ReceiveSpec {
            encoding: encoding?,
            allow_from,
            bind: bind?,
            group,
            interface: interface?,
            recv_buffer: recv_buffer? as usize,
            validate: r.validate.unwrap_or(true),
            batch: batch? as usize,
        })
    }

    fn archive(&mut self, a: RawArchive) -> Option<ArchiveSpec> {
        let dir = match a.dir {
            Some(d) => Some(self.resolve(&d)),
            None => {
                self.problem(
                    "archive.dir",
                    "missing: the folder archives are written under",
                );
                None
            }
        };
        let level = a
            .level
            .and_then(|l| self.in_range("archive.level", l, -7, 22))
            .map(|l| l as i32);
        let codec_name = a.codec.unwrap_or_else(|| "zstd".to_string());
        let codec = match Codec::parse(&codec_name, level) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem("archive.codec", e);
                None
            }
        };
        let block_size = self
            .size("archive.block_size", a.block_size)
            .unwrap_or(DEFAULT_BLOCK_SIZE as u64);
        let block_size = self.in_range("archive.block_size", block_size, 1, 64 << 20);
        let rotate_size = self
            .size("archive.rotate_size", a.rotate_size)
            .unwrap_or(DEFAULT_ROTATE_SIZE);
        let rotate_size = self.in_range("archive.rotate_size", rotate_size, 1, u64::MAX);
        let rotate_interval = self
            .duration("archive.rotate_interval", a.rotate_interval)
            .unwrap_or(DEFAULT_ROTATE_INTERVAL);
        let flush_interval = self
            .duration("archive.flush_interval", a.flush_interval)
            .unwrap_or(DEFAULT_FLUSH_INTERVAL);
        if rotate_interval.is_zero() {
            self.problem("archive.rotate_interval", "must be longer than 0s");
        }
        if flush_interval.is_zero() {
            self.problem("archive.flush_interval", "must be longer than 0s");
        }
        let fsync = match a.fsync.as_deref().unwrap_or("on_rotate") {
            "never" => Some(Fsync::Never),
            "on_rotate" => Some(Fsync::OnRotate),
            "interval" => Some(Fsync::Interval),
            other => {
                self.problem(
                    "archive.fsync",
                    format!("{other:?} is not one of \"never\", \"on_rotate\", \"interval\""),
                );
                None
            }
        };
        let queue = self.size("archive.queue", a.queue).unwrap_or(DEFAULT_QUEUE);
        let queue = self.in_range("archive.queue", queue, 1 << 20, 1 << 32);
        let quarantine_size = self
            .size("archive.quarantine_size", a.quarantine_size)
            .unwrap_or(DEFAULT_QUARANTINE_SIZE);
        let retention_age = a
            .retention_age
            .and_then(|s| self.duration("archive.retention_age", Some(s)));
        let retention_size = a
            .retention_size
            .and_then(|s| self.size("archive.retention_size", Some(s)));
        // `Some(None)`: not set, decided at start; `None`: out of range.
        let compress_threads = match a.compress_threads {
            Some(n) => self
                .in_range(
                    "archive.compress_threads",
                    n,
                    1,
                    MAX_COMPRESS_THREADS as i64,
                )
                .map(|n| Some(n as usize)),
            None => Some(None),
        };
        let time_field = a.time_field;
        if time_field
            .as_deref()
            .is_some_and(|f| f.split('.').any(str::is_empty))
        {
            self.problem(
                "archive.time_field",
                format!(
                    "{:?} is not a field name (dotted names reach into nested records: \"probe.time\")",
                    time_field.as_deref().unwrap_or_default()
                ),
            );
        }
        Some(ArchiveSpec {
            dir: dir?,
            codec: codec?,
            block_size: block_size? as usize,
            rotate_size: rotate_size?,
            rotate_interval,
            flush_interval,
            fsync: fsync?,
            queue: queue?,
            quarantine_size,
            retention_age,
            retention_size,
            time_field,
            adaptive: a.adaptive.unwrap_or(true),
            compress_threads: compress_threads?,
        })
    }

    fn output(&mut self, section: &str, o: RawOutput) -> Option<OutputSpec> {
        let key = |k: &str| format!("{section}.{k}");
        let dest = match o.group {
            Some(g) => self.socket_addr(&key("group"), &g),
            None => {
                self.problem(
                    &key("group"),
                    "missing: the group and port to send to, e.g. \"239.1.1.1:6000\" \
                     (leave the whole section out to turn this output off)",
                );
                None
            }
        };
        let interface = match o.interface {
            Some(i) => self.interface(&key("interface"), &i),
            None => None,
        };
        if let Some(d) = dest {
            if d.ip().is_multicast() && interface.is_none() {
                self.problem(
                    &key("interface"),
                    "missing: multicast needs the address of the interface it leaves by \
                     (\"127.0.0.1\" keeps it on this host)",
                );
            }
            if d.port() == 0 || d.ip().is_unspecified() {
                self.problem(&key("group"), format!("{d} is not a destination"));
            }
        }
        let ttl = self.in_range(&key("ttl"), o.ttl.unwrap_or(DEFAULT_TTL as i64), 0, 255);
        Some(OutputSpec {
            dest: dest?,
            interface,
            ttl: ttl? as u32,
            loopback: o.loopback.unwrap_or(true),
        })
    }

    fn decimated(&mut self, d: RawDecimated) -> Option<DecimatedSpec> {
        let output = self.output(
            "decimated",
            RawOutput {
                group: d.group,
                interface: d.interface,
                ttl: d.ttl,
                loopback: d.loopback,
            },
        );
        let name = d.algorithm.as_deref().unwrap_or("downsample");
        let algorithm = Algorithm::parse(name);
        if algorithm.is_none() {
            self.problem(
                "decimated.algorithm",
                format!(
                    "{name:?} is not an algorithm: one of {}",
                    Algorithm::NAMES.map(|n| format!("\"{n}\"")).join(", ")
                ),
            );
        }
        let window = match (d.factor, d.rate_hz) {
            (Some(_), Some(_)) => {
                self.problem(
                    "decimated.factor",
                    "cannot be given with decimated.rate_hz: give one, `factor` (records a window) or `rate_hz` (windows a second)",
                );
                None
            }
            (None, None) => {
                self.problem(
                    "decimated.factor",
                    "missing: give decimated.factor (records a window) or decimated.rate_hz (windows a second)",
                );
                None
            }
            (Some(f), None) => self
                .in_range("decimated.factor", f, 1, i64::from(u32::MAX))
                .map(|f| DecimationWindow::Records(f as u32)),
            (None, Some(r)) => {
                let hz = match r {
                    RawNumber::Int(i) => i as f64,
                    RawNumber::Float(f) => f,
                };
                if hz > 0.0 && hz <= MAX_RATE_HZ {
                    Some(DecimationWindow::PerSecond(hz))
                } else {
                    self.problem(
                        "decimated.rate_hz",
                        format!("{hz} is out of range (above 0, at most {MAX_RATE_HZ})"),
                    );
                    None
                }
            }
        };
        let keep_last = d.keep_last.unwrap_or_default();
        if keep_last.iter().any(|k| k.is_empty()) {
            self.problem("decimated.keep_last", "an empty field name");
        }
        Some(DecimatedSpec {
            output: output?,
            algorithm: algorithm?,
            window: window?,
            keep_last,
        })
    }

    fn socket_addr(&mut self, key: &str, s: &str) -> Option<SocketAddrV4> {
        match s.parse::<SocketAddrV4>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("{s:?} is not an IPv4 address with a port, e.g. \"127.0.0.1:26000\""),
                );
                None
            }
        }
    }

    fn interface(&mut self, key: &str, s: &str) -> Option<Interface> {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Some(Interface::Addr(a));
        }
        let name_ok = !s.is_empty()
            && s.len() < 16
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if name_ok && s.parse::<std::net::IpAddr>().is_err() {
            Some(Interface::Name(s.to_string()))
        } else {
            self.problem(
                key,
                format!("{s:?} is neither an IPv4 interface address (\"127.0.0.1\") nor an interface name (\"eth1\")"),
            );
            None
        }
    }

    fn size(&mut self, key: &str, raw: Option<RawSize>) -> Option<u64> {
        match raw? {
            RawSize::Bytes(n) => Some(n),
            RawSize::Text(t) => match parse_size(&t) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.problem(key, e);
                    None
                }
            },
        }
    }

    fn duration(&mut self, key: &str, raw: Option<String>) -> Option<Duration> {
        match parse_duration(&raw?, "write e.g. \"500ms\", \"1s\", \"1h\"") {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    fn in_range<T>(&mut self, key: &str, v: T, min: T, max: T) -> Option<T>
    where
        T: PartialOrd + fmt::Display + Copy,
    {
        if v < min || v > max {
            self.problem(key, format!("{v} is out of range ({min} to {max})"));
            None
        } else {
            Some(v)
        }
    }
}

/// Lexical normalization, without touching the filesystem: `a/./b/../c`
/// becomes `a/c`, so paths in logs and status lines read plainly.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Channel names: 1 to 64 of `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses a human-readable duration: `"500ms"`, `"10s"`, `"1h 30m"`. The
/// error says what is wrong, then `hint` (e.g. `write e.g. "1s"`).
pub fn parse_duration(s: &str, hint: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e}); {hint}"))
}

/// Parses a human-readable size: `"8MiB"`, `"256 KiB"`, `"1GB"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size; write e.g. \"8MiB\", \"256KiB\", \"1GB\""))
}

pub mod keys;

#[cfg(test)]
mod doc_keys;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChannelSpec, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        ChannelSpec::from_table(table, Path::new("/etc/speeddata/channels.d/ch1.toml"), None)
    }

    const MINIMAL: &str = r#"
        schema = "s.avsc"
        [receive]
        bind = "127.0.0.1:26000"
        [archive]
        dir = "data"
    "#;

    #[test]
    fn codec_parse() {
        assert_eq!(Codec::parse("null", None), Ok(Codec::Null));
        assert_eq!(Codec::parse("snappy", None), Ok(Codec::Snappy));
        assert_eq!(
            Codec::parse("deflate", None),
            Ok(Codec::Deflate { level: 6 })
        );
        assert_eq!(
            Codec::parse("deflate", Some(9)),
            Ok(Codec::Deflate { level: 9 })
        );
        assert_eq!(
            Codec::parse("zstd", None),
            Ok(Codec::Zstd {
                level: DEFAULT_ZSTD_LEVEL
            })
        );
        assert_eq!(
            Codec::parse("zstandard", Some(19)),
            Ok(Codec::Zstd { level: 19 })
        );
        assert!(Codec::parse("deflate", Some(10)).is_err());
        assert!(Codec::parse("deflate", Some(-1)).is_err());
        assert!(Codec::parse("zstd", Some(1000)).is_err());
        assert!(Codec::parse("snappy", Some(1)).is_err());
        let e = Codec::parse("lz4", None).unwrap_err();
        for n in ["null", "deflate", "snappy", "zstd", "zstandard"] {
            assert!(e.contains(n), "{e}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults_and_resolves_paths() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.name, "ch1");
        assert_eq!(s.schema_path, Path::new("/etc/speeddata/channels.d/s.avsc"));
        assert_eq!(s.archive.dir, Path::new("/etc/speeddata/channels.d/data"));
        assert_eq!(s.receive.recv_buffer, DEFAULT_RECV_BUFFER);
        assert!(s.receive.validate);
        assert_eq!(s.archive.codec.avro_name(), "zstandard");
        assert_eq!(s.archive.rotate_size, DEFAULT_ROTATE_SIZE);
        assert!(s.full.is_none() && s.decimated.is_none());
    }

    #[test]
    fn time_field_is_kept_as_written_and_must_be_a_name() {
        assert_eq!(parse(MINIMAL).unwrap().archive.time_field, None);
        let with = |f: &str| parse(&format!("{MINIMAL}\ntime_field = \"{f}\"\n"));
        assert_eq!(
            with("probe.time").unwrap().archive.time_field.as_deref(),
            Some("probe.time")
        );
        for bad in ["", "a..b", ".a", "a."] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.problems[0].key, "archive.time_field", "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_its_section() {
        let e = parse(&format!("{MINIMAL}\nbogus_key = 1\n")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ch1.toml"), "{text}");
        assert!(text.contains("archive"), "{text}");
        assert!(text.contains("bogus_key"), "{text}");
    }

    #[test]
    fn keys_that_are_not_bare_are_named_quoted() {
        // Found by fuzzing (fuzz/, target channel_config): the empty key of
        // `''=0xa` was reported with no key at all, as if the file as a whole
        // were wrong; an empty key in a section as `archive.`.
        let e = ChannelSpec::from_text("''=0xa", Path::new("c/x.toml"), None).unwrap_err();
        assert_eq!(e.problems[0].key, r#""""#, "{e}");
        let e = parse(&MINIMAL.replace("[archive]", "[archive]\n\"\" = 1")).unwrap_err();
        assert_eq!(e.problems[0].key, r#"archive."""#, "{e}");
        let e = parse(&MINIMAL.replace("[archive]", "[archive]\n\"a.b c\" = 1")).unwrap_err();
        assert_eq!(e.problems[0].key, r#"archive."a.b c""#, "{e}");
        let e = parse(&format!("{MINIMAL}\nlevel = \"x\"")).unwrap_err();
        assert_eq!(e.problems[0].key, "archive.level", "{e}");
        let e = parse(&MINIMAL.replace("bind =", "allow_from = [1]\nbind =")).unwrap_err();
        assert_eq!(e.problems[0].key, "receive.allow_from[0]", "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse(
            r#"
            name = "Bad Name"
            [receive]
            bind = "nowhere"
            recv_buffer = "lots"
            [archive]
            dir = "d"
            codec = "lz4"
            flush_interval = "soon"
            [full]
            group = "239.1.1.1:6000"
            [decimated]
            group = "239.1.1.2:6001"
            interface = "127.0.0.1"
            algorithm = "median"
        "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "name",
            "schema",
            "receive.bind",
            "receive.recv_buffer",
            "archive.codec",
            "archive.flush_interval",
            "full.interface",
            "decimated.algorithm",
            "decimated.factor",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
    }

    #[test]
    fn decimation_takes_one_window_key_and_an_algorithm() {
        let with = |keys: &str| {
            parse(&format!(
                "{MINIMAL}\n[decimated]\ngroup = \"239.1.1.2:6001\"\ninterface = \"127.0.0.1\"\n{keys}\n"
            ))
        };
        let d = with("algorithm = \"minmax\"\nrate_hz = 2.5\nkeep_last = [\"seq\", \"a.b\"]")
            .unwrap()
            .decimated
            .unwrap();
        assert_eq!(d.algorithm, Algorithm::MinMax);
        assert_eq!(d.window, DecimationWindow::PerSecond(2.5));
        assert_eq!(d.keep_last, ["seq", "a.b"]);
        let d = with("factor = 10").unwrap().decimated.unwrap();
        assert_eq!(
            (d.algorithm, d.window),
            (Algorithm::Downsample, DecimationWindow::Records(10))
        );
        assert_eq!(
            with("rate_hz = 50").unwrap().decimated.unwrap().window,
            DecimationWindow::PerSecond(50.0)
        );
        for (keys, key, words) in [
            (
                "factor = 5\nrate_hz = 5",
                "decimated.factor",
                "decimated.rate_hz",
            ),
            (
                "algorithm = \"rms\"",
                "decimated.factor",
                "decimated.rate_hz",
            ),
            (
                "algorithm = \"median\"\nfactor = 2",
                "decimated.algorithm",
                "\"minmax\"",
            ),
            ("rate_hz = 0", "decimated.rate_hz", "out of range"),
            ("rate_hz = -1.5", "decimated.rate_hz", "out of range"),
            ("rate_hz = 1e9", "decimated.rate_hz", "out of range"),
            ("factor = 0", "decimated.factor", "out of range"),
            (
                "factor = 2\nkeep_last = [\"\"]",
                "decimated.keep_last",
                "empty",
            ),
            ("factor = 2\nkeep_last = \"seq\"", "decimated.keep_last", ""),
        ] {
            let e = with(keys).unwrap_err();
            assert_eq!(e.problems.len(), 1, "{keys}: {e}");
            assert_eq!(e.problems[0].key, key, "{keys}: {e}");
            assert!(e.problems[0].message.contains(words), "{keys}: {e}");
        }
    }

    #[test]
    fn a_bad_duration_says_what_is_wrong_then_the_hint() {
        assert_eq!(parse_duration("1m 30s", "-"), Ok(Duration::from_secs(90)));
        let e = parse_duration("soon", "write e.g. \"1s\"").unwrap_err();
        assert!(
            e.starts_with("\"soon\" is not a duration (") && e.ends_with("); write e.g. \"1s\""),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_durations_are_human_readable() {
        let s = parse(
            r#"
            schema = "s.avsc"
            [receive]
            bind = "0.0.0.0:26000"
            group = "239.10.0.1"
            interface = "127.0.0.1"
            recv_buffer = "16MiB"
            [archive]
            dir = "/var/lib/speeddata"
            rotate_size = "1GiB"
            rotate_interval = "15m"
            flush_interval = "250ms"
            block_size = 65536
        "#,
        )
        .unwrap();
        assert_eq!(s.receive.recv_buffer, 16 << 20);
        assert_eq!(s.receive.group, Some(Ipv4Addr::new(239, 10, 0, 1)));
        assert_eq!(s.archive.rotate_size, 1 << 30);
        assert_eq!(s.archive.rotate_interval, Duration::from_secs(900));
        assert_eq!(s.archive.flush_interval, Duration::from_millis(250));
        assert_eq!(s.archive.block_size, 65536);
        assert_eq!(s.archive.dir, Path::new("/var/lib/speeddata"));
    }

    #[test]
    fn allow_from_takes_networks_and_addresses() {
        let s = parse(&MINIMAL.replace(
            "bind = \"127.0.0.1:26000\"",
            "bind = \"127.0.0.1:26000\"\nallow_from = [\"10.1.2.3/16\", \"127.0.0.1\"]",
        ))
        .unwrap();
        let nets: Vec<String> = s.receive.allow_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.1.0.0/16", "127.0.0.1/32"]);
        let e = parse(&MINIMAL.replace(
            "bind = \"127.0.0.1:26000\"",
            "bind = \"127.0.0.1:26000\"\nallow_from = [\"localhost\"]",
        ))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "receive.allow_from[0]");
    }

    #[test]
    fn interfaces_are_addresses_or_names() {
        let text = |iface: &str| {
            format!(
                "schema = \"s.avsc\"\n[receive]\nbind = \"0.0.0.0:1\"\ngroup = \"239.1.2.3\"\ninterface = \"{iface}\"\n[archive]\ndir = \"d\"\n"
            )
        };
        let s = parse(&text("eth1")).unwrap();
        assert_eq!(s.receive.interface, Interface::Name("eth1".into()));
        let s = parse(&text("10.0.0.7")).unwrap();
        assert_eq!(
            s.receive.interface,
            Interface::Addr(Ipv4Addr::new(10, 0, 0, 7))
        );
        let e = parse(&text("not an interface")).unwrap_err();
        assert_eq!(e.problems[0].key, "receive.interface");
        let e = parse(&text("::1")).unwrap_err();
        assert_eq!(e.problems[0].key, "receive.interface");
    }

    #[test]
    fn defaults_merge_under_the_file() {
        let defaults: toml::Table = toml::from_str(
            r#"
            [archive]
            dir = "/var/lib/speeddata"
            codec = "snappy"
        "#,
        )
        .unwrap();
        let table: toml::Table = toml::from_str(
            r#"
            schema = "s.avsc"
            [receive]
            bind = "127.0.0.1:1"
            [archive]
            codec = "deflate"
        "#,
        )
        .unwrap();
        let s = ChannelSpec::from_table(table, Path::new("c/x.toml"), Some(&defaults)).unwrap();
        assert_eq!(s.archive.dir, Path::new("/var/lib/speeddata"));
        assert_eq!(s.archive.codec.avro_name(), "deflate");
    }

    #[test]
    fn group_bind_must_be_wildcard_or_the_group() {
        let e = parse(
            r#"
            schema = "s.avsc"
            [receive]
            bind = "127.0.0.1:26000"
            group = "239.10.0.1"
            [archive]
            dir = "d"
        "#,
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "receive.bind");
    }
}
