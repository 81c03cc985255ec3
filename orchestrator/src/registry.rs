//! Channel registration through the API: the files of `channels.d`,
//! validated exactly as `orchestrator check` validates them, then written
//! atomically. `channels.d` stays the only source of truth: a file the API
//! wrote and one an operator wrote by hand are the same thing, and the
//! usual reload (the folder watcher) starts, restarts or stops the channel.
//!
//! - [`prepare`] checks a registration (name, TOML, schema, conflicts with
//!   every other file) without writing anything;
//! - [`write`] writes the schema (`{name}.avsc`) and then the channel file
//!   (`{name}.toml`), each through a temporary file in the same folder,
//!   fsync and rename, so that a crash leaves either the old files or the
//!   new ones, or a lone new `.avsc`, which starts nothing;
//! - [`remove`] deletes a channel file, and its schema when no other file
//!   uses it;
//! - [`check_schema`] says whether a writer's schema is read correctly as a
//!   channel's schema (Avro schema resolution);
//! - [`free_ports`] finds receive ports no channel file uses and nothing
//!   on this host has bound; [`port_user`] says who uses one.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use relay_channel::config::{self as rc, ConfigError};

use crate::config::{self, Config};

/// A problem as the API reports it.
pub use speeddata_api::{ChannelConfig, Problem};

/// Why a registration is refused.
#[derive(Debug)]
pub enum Refused {
    /// The name breaks the channel name rules (400).
    BadName(String),
    /// The file or schema is wrong (422).
    Invalid(Vec<Problem>),
    /// It conflicts with another channel file (409).
    Conflict(Vec<Problem>),
}

fn problems_of(e: &ConfigError) -> Vec<Problem> {
    e.problems
        .iter()
        .map(|p| Problem {
            file: e.file.display().to_string(),
            key: p.key.clone(),
            message: p.message.clone(),
        })
        .collect()
}

fn problem(file: &Path, key: &str, message: String) -> Vec<Problem> {
    vec![Problem {
        file: file.display().to_string(),
        key: key.into(),
        message,
    }]
}

/// The channel name rules, with the reason a name breaks them.
pub fn check_name(name: &str) -> Result<(), Refused> {
    if rc::valid_name(name) {
        Ok(())
    } else {
        Err(Refused::BadName(format!(
            "{name:?} is not a channel name: 1 to 64 of a-z, 0-9, '_' and '-'"
        )))
    }
}

/// A registration that passed every check, ready to be written.
#[derive(Debug)]
pub struct Prepared {
    pub channel_file: PathBuf,
    pub schema_file: PathBuf,
    /// The channel file's text as it will be written (`schema` key set).
    pub channel_text: String,
    pub schema_text: String,
    /// Whether a file of this name exists (replaced) or not (new).
    pub exists: bool,
    /// Whether both files already hold exactly these bytes.
    pub unchanged: bool,
}

/// Checks a registration of channel `name`: the TOML text of its file and
/// its schema (JSON). Nothing is written.
pub fn prepare(
    cfg: &Config,
    name: &str,
    channel_text: &str,
    schema: &serde_json::Value,
) -> Result<Prepared, Refused> {
    check_name(name)?;
    let dir = &cfg.channels_dir;
    let channel_file = dir.join(format!("{name}.toml"));
    let schema_name = format!("{name}.avsc");
    let schema_file = dir.join(&schema_name);
    let mut table = rc::parse_table(channel_text, &channel_file)
        .map_err(|e| Refused::Invalid(problems_of(&e)))?;
    match table.get("name") {
        None => {}
        Some(v) if v.as_str() == Some(name) => {}
        Some(v) => {
            return Err(Refused::Invalid(problem(
                &channel_file,
                "name",
                format!("{v} is not {name:?}, the name in the request's path"),
            )))
        }
    }
    let mut text = channel_text.to_string();
    match table.get("schema") {
        None => {
            // A key of the root table: before any table header.
            text = format!("schema = \"{schema_name}\"\n{text}");
        }
        Some(v) if v.as_str().map(|s| s.trim_start_matches("./")) == Some(&schema_name) => {}
        Some(v) => {
            return Err(Refused::Invalid(problem(
                &channel_file,
                "schema",
                format!(
                    "{v}: the API writes the schema beside the channel file as {schema_name:?}; leave the key out or set it to that"
                ),
            )))
        }
    }
    table.insert("schema".into(), toml::Value::String(schema_name.clone()));
    let schema_text =
        match schema {
            serde_json::Value::Object(_)
            | serde_json::Value::Array(_)
            | serde_json::Value::String(_) => {
                let mut t = serde_json::to_string_pretty(schema).expect("JSON serializes");
                t.push('\n');
                t
            }
            _ => return Err(Refused::Invalid(problem(
                &schema_file,
                "schema",
                "must be an Avro schema: a JSON object, array (a union) or string (a type name)"
                    .into(),
            ))),
        };
    let candidate = config::validate_channel(
        table,
        &channel_file,
        &cfg.defaults,
        Some(schema_text.clone()),
    )
    .map_err(|e| Refused::Invalid(problems_of(&e)))?;
    // Conflicts with every other file that validates, as `check` finds them.
    let fleet = config::load_fleet(cfg).map_err(|e| {
        Refused::Invalid(problem(
            dir,
            "channels_dir",
            format!("cannot read {}: {e}", dir.display()),
        ))
    })?;
    let others: Vec<config::Channel> = fleet
        .channels
        .into_iter()
        .filter(|c| rc::normalize(c.file()) != rc::normalize(&channel_file))
        .collect();
    let conflicts = config::conflicts(&candidate, &others);
    if !conflicts.is_empty() {
        return Err(Refused::Conflict(
            conflicts
                .into_iter()
                .map(|p| Problem {
                    file: channel_file.display().to_string(),
                    key: p.key,
                    message: p.message,
                })
                .collect(),
        ));
    }
    let exists = channel_file.exists();
    let unchanged = exists
        && std::fs::read(&channel_file).ok().as_deref() == Some(text.as_bytes())
        && std::fs::read(&schema_file).ok().as_deref() == Some(schema_text.as_bytes());
    Ok(Prepared {
        channel_file,
        schema_file,
        channel_text: text,
        schema_text,
        exists,
        unchanged,
    })
}

/// Set (to `after-schema-write`) by the crash test only: the process
/// aborts between the two writes.
const FAILPOINT: &str = "SPEEDDATA_FAILPOINT";

/// Writes the schema, then the channel file, each atomically.
pub fn write(p: &Prepared) -> std::io::Result<()> {
    write_atomic(&p.schema_file, p.schema_text.as_bytes())?;
    if std::env::var(FAILPOINT).as_deref() == Ok("after-schema-write") {
        std::process::abort();
    }
    write_atomic(&p.channel_file, p.channel_text.as_bytes())
}

/// Writes `path` through a temporary file in its folder (a name no reload
/// looks at), fsync, rename, then fsyncs the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What [`remove`] deleted.
#[derive(Debug, PartialEq, Eq)]
pub struct Removed {
    pub channel_file: PathBuf,
    /// The schema, if no other channel file uses it.
    pub schema_file: Option<PathBuf>,
}

/// The file that holds channel `name`: the one the fleet knows, else
/// `{name}.toml`.
pub fn channel_file(cfg: &Config, known: Option<PathBuf>, name: &str) -> Option<PathBuf> {
    known
        .or_else(|| Some(cfg.channels_dir.join(format!("{name}.toml"))))
        .filter(|f| f.is_file())
}

/// The schema file a channel file names, resolved against its folder.
fn schema_of(file: &Path) -> Option<PathBuf> {
    let table = rc::read_table(file).ok()?;
    let schema = table.get("schema")?.as_str()?;
    Some(rc::normalize(&rc::base_dir(file).join(schema)))
}

/// Deletes channel file `file`, then its schema if it lies in the channels
/// folder and no other channel file names it.
pub fn remove(cfg: &Config, file: &Path) -> std::io::Result<Removed> {
    let schema = schema_of(file);
    std::fs::remove_file(file)?;
    let dir = &cfg.channels_dir;
    std::fs::File::open(dir)?.sync_all()?;
    let mut removed = Removed {
        channel_file: file.to_path_buf(),
        schema_file: None,
    };
    if let Some(schema) = schema {
        let in_dir = schema.parent().map(rc::normalize) == Some(rc::normalize(dir));
        let shared = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .any(|p| schema_of(&p).as_ref() == Some(&schema));
        if in_dir && !shared && schema.is_file() {
            std::fs::remove_file(&schema)?;
            std::fs::File::open(dir)?.sync_all()?;
            removed.schema_file = Some(schema);
        }
    }
    Ok(removed)
}

/// A channel's files as written.
pub fn read_config(name: &str, file: &Path) -> std::io::Result<ChannelConfig> {
    let channel = std::fs::read_to_string(file)?;
    let schema_file = schema_of(file);
    let schema = schema_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok(ChannelConfig {
        name: name.to_string(),
        file: file.to_path_buf(),
        channel,
        schema_file,
        schema,
    })
}

/// Whether data written with `writer` (JSON) is read correctly as the
/// channel's schema `reader` (text): identical, or resolvable by Avro's
/// schema resolution. Problems say why not.
pub fn check_schema(writer: &serde_json::Value, reader: &str) -> (bool, Vec<String>) {
    let writer = match apache_avro::Schema::parse(writer) {
        Ok(s) => s,
        Err(e) => return (false, vec![format!("not a valid Avro schema: {e}")]),
    };
    let reader = match apache_avro::Schema::parse_str(reader) {
        Ok(s) => s,
        Err(e) => {
            return (
                false,
                vec![format!("the channel's schema does not parse: {e}")],
            )
        }
    };
    if writer.canonical_form() == reader.canonical_form() {
        return (true, vec![]);
    }
    match apache_avro::schema_compatibility::SchemaCompatibility::can_read(&writer, &reader) {
        Ok(_) => (true, vec![]),
        Err(e) => (false, vec![e.to_string()]),
    }
}

/// Ports in `from..=to` that no valid channel file receives on and no UDP
/// socket on this host has bound (IPv4 or IPv6), lowest first, at most
/// `count`.
pub fn free_ports(cfg: &Config, from: u16, to: u16, count: usize) -> Vec<u16> {
    let mut used: BTreeSet<u16> = bound_udp_ports();
    if let Ok(fleet) = config::load_fleet(cfg) {
        used.extend(fleet.channels.iter().map(|c| c.spec.receive.bind.port()));
    }
    (from..=to)
        .filter(|p| *p != 0 && !used.contains(p))
        .take(count)
        .collect()
}

/// Who uses a port, as [`free_ports`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortUser {
    Free,
    /// A valid channel file receives on it (the first, by file name).
    Channel(String),
    /// A UDP socket of this host has bound it, and no channel file names it.
    Host,
}

/// Who uses receive port `port`: a channel file, another socket of this
/// host, or nobody.
pub fn port_user(cfg: &Config, port: u16) -> PortUser {
    if let Ok(fleet) = config::load_fleet(cfg) {
        if let Some(c) = fleet
            .channels
            .iter()
            .find(|c| c.spec.receive.bind.port() == port)
        {
            return PortUser::Channel(c.name().to_string());
        }
    }
    if bound_udp_ports().contains(&port) {
        PortUser::Host
    } else {
        PortUser::Free
    }
}

/// Local ports of every UDP socket of this host's network namespace, from
/// `/proc/net/udp` and `/proc/net/udp6` (Linux; empty elsewhere, where
/// only channel files count as users of a port).
fn bound_udp_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            ports.extend(parse_proc_net(&text));
        }
    }
    ports
}

/// The local ports of a `/proc/net/udp*` table: the second column is
/// `ADDRESS:PORT` in hex.
fn parse_proc_net(text: &str) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(|l| {
        let local = l.split_whitespace().nth(1)?;
        let port = local.rsplit_once(':')?.1;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_ports() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             0: 0100007F:6590 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n\
             1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n";
        assert_eq!(parse_proc_net(text).collect::<Vec<_>>(), vec![26000, 68]);
    }

    #[test]
    fn schema_resolution() {
        let reader = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        let same: serde_json::Value = serde_json::from_str(reader).unwrap();
        assert_eq!(check_schema(&same, reader), (true, vec![]));
        // An int is promoted to the reader's long.
        let promoted =
            serde_json::json!({"type":"record","name":"R","fields":[{"name":"a","type":"int"}]});
        assert!(check_schema(&promoted, reader).0);
        let wrong =
            serde_json::json!({"type":"record","name":"R","fields":[{"name":"a","type":"string"}]});
        let (ok, problems) = check_schema(&wrong, reader);
        assert!(!ok && !problems.is_empty());
        let (ok, problems) = check_schema(&serde_json::json!({"type": "nope"}), reader);
        assert!(
            !ok && problems[0].contains("not a valid Avro schema"),
            "{problems:?}"
        );
    }

    #[test]
    fn names() {
        assert!(check_name("rig-1_a").is_ok());
        for bad in ["", "a/b", "..", "A", "a.b", &"x".repeat(65)] {
            assert!(matches!(check_name(bad), Err(Refused::BadName(_))), "{bad}");
        }
    }
}
