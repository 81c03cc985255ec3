//! From a channel file's table to a [`ChannelSpec`]: the raw shape that
//! mirrors the TOML exactly (serde, `deny_unknown_fields`), then the checks
//! that gather every problem, each naming its key, before refusing.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    base_dir, default_queue, default_recv_buffer, deserialize_table, host_memory, name_from_file,
    normalize, parse_duration, parse_size, valid_name, Algorithm, ArchiveSpec, ChannelSpec, Codec,
    ConfigError, DecimatedSpec, DecimationWindow, Encoding, Fsync, Interface, OutputSpec, Problem,
    ReceiveSpec, DEFAULT_BATCH, DEFAULT_BLOCK_SIZE, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_QUARANTINE_SIZE, DEFAULT_ROTATE_INTERVAL, DEFAULT_ROTATE_SIZE, DEFAULT_TTL,
    MAX_COMPRESS_THREADS, MAX_RATE_HZ,
};

/// Validates a channel file's table (defaults merged already) from `path`.
pub(super) fn channel(table: toml::Table, path: &Path) -> Result<ChannelSpec, ConfigError> {
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
pub(super) struct RawChannel {
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
    cpu: Option<i64>,
    realtime: Option<bool>,
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
    shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecimated {
    group: Option<String>,
    interface: Option<String>,
    ttl: Option<i64>,
    loopback: Option<bool>,
    shared: Option<bool>,
    algorithm: Option<String>,
    factor: Option<i64>,
    rate_hz: Option<RawNumber>,
    keep_last: Option<Vec<String>>,
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
        let name = raw.name.unwrap_or_else(|| name_from_file(self.file));
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
                    shared: o.shared,
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
            .unwrap_or_else(|| default_recv_buffer(host_memory()) as u64);
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
        let cpu = match r.cpu {
            None => Some(None),
            Some(c) => self.receive_cpu(c).map(Some),
        };
        Some(ReceiveSpec {
            cpu: cpu?,
            realtime: r.realtime.unwrap_or(false),
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

    /// `receive.cpu`: a CPU this process may run on.
    fn receive_cpu(&mut self, cpu: i64) -> Option<usize> {
        let allowed = crate::sched::allowed_cpus();
        let Some(allowed) = allowed else {
            self.problem(
                "receive.cpu",
                "pinning a thread to a CPU is not supported on this platform: leave the key out",
            );
            return None;
        };
        match usize::try_from(cpu) {
            Ok(c) if allowed.contains(&c) => Some(c),
            _ => {
                let list: Vec<String> = allowed.iter().map(usize::to_string).collect();
                self.problem(
                    "receive.cpu",
                    format!(
                        "{cpu} is not a CPU this host lets the relay run on (allowed: {})",
                        list.join(", ")
                    ),
                );
                None
            }
        }
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
        let queue = self
            .size("archive.queue", a.queue)
            .unwrap_or_else(|| default_queue(host_memory()));
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
            shared: o.shared.unwrap_or(false),
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
                shared: d.shared,
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
