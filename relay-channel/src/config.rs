//! Channel configuration: one TOML file per channel.
//!
//! The file is parsed into raw structs that mirror the TOML exactly (serde,
//! `deny_unknown_fields`), then validated into a [`ChannelSpec`], the only
//! type the rest of the relay sees (both steps in module `check`).
//! Validation gathers every problem it can find before refusing, and each
//! problem names the file and the key, so an operator fixes a file in one
//! pass. The orchestrator validates channel files with this same code
//! (`ChannelSpec::from_table`), so `orchestrator check` accepts exactly what
//! the relay accepts.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod check;

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
    /// The CPU the receive thread is pinned to, if any.
    pub cpu: Option<usize>,
    /// Ask for `SCHED_FIFO` for the receive thread (needs `CAP_SYS_NICE`).
    pub realtime: bool,
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
    /// checked when the schema is loaded. The archive keeps each block's
    /// least and greatest record time in its block index
    /// ([`crate::index`]); exports select records by it.
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
    /// `shared`: other channels may send to the same destination (those
    /// whose same output says `shared` too); the orchestrator's fleet check
    /// refuses two outputs on one destination otherwise. The relay itself
    /// sends the same either way.
    pub shared: bool,
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
/// `receive.recv_buffer` on a host with [`FULL_DEFAULTS_MEMORY`] or more;
/// less on a smaller one ([`default_recv_buffer`]).
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;
pub const DEFAULT_BATCH: usize = 64;
pub const DEFAULT_BLOCK_SIZE: usize = 256 << 10;
pub const DEFAULT_ROTATE_SIZE: u64 = 256 << 20;
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// `archive.queue` on a host with [`FULL_DEFAULTS_MEMORY`] or more; less on
/// a smaller one ([`default_queue`]).
pub const DEFAULT_QUEUE: u64 = 32 << 20;
/// Hosts with at least this much memory get the full defaults of
/// `archive.queue` and `receive.recv_buffer`; smaller ones (a 1 GiB
/// Raspberry Pi running several channels) get them scaled down in
/// proportion, to at least [`SMALL_QUEUE`] and [`SMALL_RECV_BUFFER`].
pub const FULL_DEFAULTS_MEMORY: u64 = 4 << 30;
/// The least default `archive.queue`, on the smallest hosts.
pub const SMALL_QUEUE: u64 = 4 << 20;
/// The least default `receive.recv_buffer`, on the smallest hosts.
pub const SMALL_RECV_BUFFER: usize = 2 << 20;

/// The host's physical memory in bytes, if the system says.
pub fn host_memory() -> Option<u64> {
    // SAFETY: sysconf only reads its argument.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || size <= 0 {
        return None;
    }
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(size).ok()?)
}

/// `full` scaled by `memory` / [`FULL_DEFAULTS_MEMORY`], between `least`
/// and `full` (full when the memory is unknown).
fn scaled(full: u64, least: u64, memory: Option<u64>) -> u64 {
    match memory {
        Some(m) if m < FULL_DEFAULTS_MEMORY => {
            let part = (full as u128 * m as u128 / FULL_DEFAULTS_MEMORY as u128) as u64;
            part.clamp(least, full)
        }
        _ => full,
    }
}

/// The default `archive.queue` on a host with `memory` bytes: 32 MiB from
/// 4 GiB up, 8 MiB at 1 GiB, never under 4 MiB.
pub fn default_queue(memory: Option<u64>) -> u64 {
    scaled(DEFAULT_QUEUE, SMALL_QUEUE, memory)
}

/// The default `receive.recv_buffer` on a host with `memory` bytes: 8 MiB
/// from 4 GiB up, 2 MiB at 1 GiB and under.
pub fn default_recv_buffer(memory: Option<u64>) -> usize {
    scaled(DEFAULT_RECV_BUFFER as u64, SMALL_RECV_BUFFER as u64, memory) as usize
}
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
        check::channel(table, path)
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

/// The name of the channel `file` describes: its `name` key if it has one,
/// else the file's name without `.toml` (its stem; empty for a path without
/// a file name). Not checked: see [`valid_name`].
pub fn channel_name(name: Option<&str>, file: &Path) -> String {
    name.map_or_else(|| name_from_file(file), str::to_string)
}

/// The name a channel file gives a channel without a `name` key: its stem.
fn name_from_file(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
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
    fn defaults_scale_down_on_small_hosts_only() {
        let gib = 1u64 << 30;
        assert_eq!(default_queue(None), DEFAULT_QUEUE);
        assert_eq!(default_queue(Some(64 * gib)), DEFAULT_QUEUE);
        assert_eq!(default_queue(Some(4 * gib)), DEFAULT_QUEUE);
        assert_eq!(default_queue(Some(2 * gib)), 16 << 20);
        assert_eq!(default_queue(Some(gib)), 8 << 20);
        assert_eq!(default_queue(Some(gib / 4)), SMALL_QUEUE);
        assert_eq!(default_recv_buffer(Some(8 * gib)), DEFAULT_RECV_BUFFER);
        assert_eq!(default_recv_buffer(Some(2 * gib)), 4 << 20);
        assert_eq!(default_recv_buffer(Some(gib)), SMALL_RECV_BUFFER);
        assert_eq!(default_recv_buffer(Some(gib / 2)), SMALL_RECV_BUFFER);
    }

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
    fn the_channel_name_is_the_name_key_else_the_file_stem() {
        let file = Path::new("/etc/speeddata/channels.d/north.toml");
        assert_eq!(channel_name(Some("east"), file), "east");
        assert_eq!(channel_name(None, file), "north");
        assert_eq!(channel_name(None, Path::new("c/x.y.toml")), "x.y");
        assert_eq!(channel_name(None, Path::new("/")), "");
    }

    #[test]
    fn minimal_file_gets_defaults_and_resolves_paths() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.name, "ch1");
        assert_eq!(s.schema_path, Path::new("/etc/speeddata/channels.d/s.avsc"));
        assert_eq!(s.archive.dir, Path::new("/etc/speeddata/channels.d/data"));
        assert_eq!(s.receive.recv_buffer, default_recv_buffer(host_memory()));
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
