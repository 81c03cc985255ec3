//! `orchestrator import speeddata`: a SpeedData (v0.6) configuration turned
//! into channel files.
//!
//! SpeedData configures its relays with `config/relay.yaml` (the channels,
//! decimation, rotation, retention), `config/global.yaml` (the two
//! multicast groups every channel sends to, the archive folder) and, from
//! v0.5 on, the SQLite registry of channels registered through its API
//! (`data/registry.db`, which overrides `relay.yaml`: "Database overrides
//! YAML"). [`import`] reads them, maps every key it knows to a channel
//! file key, and reports every key it does not know, so that nothing is
//! dropped unsaid. Each channel becomes `<name>.toml` and `<name>.avsc` (its
//! schema, copied byte for byte) in the output folder. Every file is
//! validated as `orchestrator check` validates it, fleet conflicts
//! included, before anything is written; a file that exists with other
//! content is never overwritten (nothing is written then).
//!
//! SpeedData sends every channel to the same two groups; here two
//! channels on one group are refused unless both say `shared = true` for
//! that output, which the import writes when it imports several channels.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use relay_channel::config::{self as rc, Algorithm};
use yaml_serde::Value as Yaml;

use crate::channel_cmd::{Failure, EXIT_CONFIG, EXIT_FAILED};
use crate::config;
use crate::registry::write_atomic;

/// SpeedData's relay's built-in values, used where its files say nothing
/// (its C relay starts from these, relay/c/src/config.c).
pub const SPEEDDATA_FULL_GROUP: &str = "239.1.1.1:6000";
pub const SPEEDDATA_DECIMATED_GROUP: &str = "239.1.1.2:6001";
const SPEEDDATA_AVRO_PATH: &str = "./data";
const SPEEDDATA_FACTOR: i64 = 5;
const SPEEDDATA_ROTATE_BYTES: i64 = 50 * 1024 * 1024;
/// The multicast TTL SpeedData's relay sends with.
pub const SPEEDDATA_TTL: u32 = 2;
/// The address SpeedData's relay receives on (with the channel's port).
pub const SPEEDDATA_RECEIVE_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The multicast interface that stands for "the kernel's choice", as
/// SpeedData's relay, which sets none, sends.
pub const DEFAULT_INTERFACE: &str = "0.0.0.0";

/// What `orchestrator import speeddata` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// A SpeedData tree (holding `config/relay.yaml`) or a folder holding
    /// `relay.yaml` itself (a deployed `/etc/speeddata`).
    pub path: PathBuf,
    /// The folder to write the channel files into.
    pub out: PathBuf,
    /// SpeedData's SQLite registry (`data/registry.db`).
    pub registry: Option<PathBuf>,
    /// The folder relative paths resolve against (default: the tree, or
    /// the configuration folder itself).
    pub root: Option<PathBuf>,
    pub dry_run: bool,
    /// The address each channel receives on, with its SpeedData port.
    pub receive_address: Ipv4Addr,
    /// The interface multicast leaves by (an address or a name).
    pub interface: String,
    pub ttl: u32,
}

impl Options {
    /// SpeedData's own behaviour for everything not given.
    pub fn new(path: PathBuf, out: PathBuf) -> Options {
        Options {
            path,
            out,
            registry: None,
            root: None,
            dry_run: false,
            receive_address: SPEEDDATA_RECEIVE_ADDRESS,
            interface: DEFAULT_INTERFACE.into(),
            ttl: SPEEDDATA_TTL,
        }
    }
}

// ---------------------------------------------------------------------------
// Where values come from.

/// The files a value can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Relay,
    Global,
    Registry,
    /// Not in any file: SpeedData's built-in value, or an import option.
    Builtin,
}

/// A SpeedData key: its file and dotted key (`channels[0].port`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Src {
    file: File,
    key: String,
}

impl Src {
    fn new(file: File, key: impl Into<String>) -> Src {
        Src {
            file,
            key: key.into(),
        }
    }
    fn child(&self, key: &str) -> Src {
        Src::new(self.file, format!("{}.{key}", self.key))
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
struct Val<T> {
    v: T,
    src: Src,
}

fn val<T>(v: T, src: Src) -> Val<T> {
    Val { v, src }
}

/// One line of the table: a SpeedData key (or several) mapped to one of
/// ours, for the channels named.
#[derive(Debug, Clone)]
struct Mapped {
    src: Vec<Src>,
    target: String,
    value: String,
    note: Option<String>,
}

/// The decimation, rotation and retention settings of a channel.
#[derive(Debug, Clone)]
struct Settings {
    dec_enabled: Val<bool>,
    dec_factor: Val<i64>,
    dec_algorithm: Val<String>,
    rot_mode: Option<Val<String>>,
    rot_threshold: Option<Val<i64>>,
    ret_mode: Option<Val<String>>,
    ret_value: Option<Val<i64>>,
}

impl Settings {
    fn speeddata_defaults() -> Settings {
        let b = |k: &str| Src::new(File::Builtin, k);
        Settings {
            dec_enabled: val(true, b("decimation.enabled")),
            dec_factor: val(SPEEDDATA_FACTOR, b("decimation.factor")),
            dec_algorithm: val("downsample".into(), b("decimation.algorithm")),
            rot_mode: None,
            rot_threshold: None,
            ret_mode: None,
            ret_value: None,
        }
    }
}

/// One channel as SpeedData would run it.
#[derive(Debug, Clone)]
struct ChannelIn {
    name: Val<String>,
    port: Val<i64>,
    schema: Val<String>,
    /// Its `config_json` (registry channels): sections that override the
    /// relay.yaml ones for this channel.
    overrides: Vec<(String, Yaml, Src)>,
}

/// A channel ready to be written.
struct ChannelOut {
    name: String,
    toml_text: String,
    schema_text: String,
    schema_from: PathBuf,
    rows: Vec<Mapped>,
}

/// The whole import: what it read, mapped, could not map, and found wrong.
struct Importer {
    relay: PathBuf,
    global: Option<PathBuf>,
    registry: Option<PathBuf>,
    root: PathBuf,
    errors: Vec<String>,
    /// Keys not mapped: (SpeedData key, why).
    unmapped: Vec<(String, String)>,
}

impl Importer {
    fn path(&self, f: File) -> String {
        match f {
            File::Relay => self.relay.display().to_string(),
            File::Global => self
                .global
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "global.yaml".into()),
            File::Registry => self
                .registry
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            File::Builtin => "(built in)".into(),
        }
    }

    /// How the table names a key: `relay.yaml channels[0].port`.
    fn label(&self, s: &Src) -> String {
        match s.file {
            File::Relay => format!("relay.yaml {}", s.key),
            File::Global => format!("global.yaml {}", s.key),
            File::Registry => {
                let name = self
                    .registry
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "registry".into());
                format!("{name} {}", s.key)
            }
            File::Builtin => s.key.clone(),
        }
    }

    fn error(&mut self, s: &Src, message: impl Into<String>) {
        let message = message.into();
        let line = if s.key.is_empty() {
            format!("{}: {message}", self.path(s.file))
        } else {
            format!("{}: {}: {message}", self.path(s.file), s.key)
        };
        self.errors.push(line);
    }

    fn not_mapped(&mut self, s: &Src, why: impl Into<String>) {
        let label = self.label(s);
        self.unmapped.push((label, why.into()));
    }

    fn unknown(&mut self, s: &Src) {
        self.not_mapped(
            s,
            "unknown key: neither SpeedData's relay nor this import reads it",
        );
    }

    /// An integer (or a string of one).
    fn int(&mut self, v: &Yaml, s: &Src) -> Option<i64> {
        match v {
            Yaml::Number(n) if n.as_i64().is_some() => n.as_i64(),
            Yaml::String(t) if t.trim().parse::<i64>().is_ok() => t.trim().parse().ok(),
            other => {
                self.error(s, format!("{} is not a whole number", show(other)));
                None
            }
        }
    }

    fn string(&mut self, v: &Yaml, s: &Src) -> Option<String> {
        match v {
            Yaml::String(t) => Some(t.clone()),
            other => {
                self.error(s, format!("{} is not a string", show(other)));
                None
            }
        }
    }

    fn boolean(&mut self, v: &Yaml, s: &Src) -> Option<bool> {
        match v {
            Yaml::Bool(b) => Some(*b),
            other => {
                self.error(s, format!("{} is not true or false", show(other)));
                None
            }
        }
    }

    /// The entries of a mapping, keys as text; anything else is an error.
    fn entries(&mut self, v: &Yaml, s: &Src) -> Vec<(String, Yaml)> {
        match v {
            Yaml::Mapping(m) => m.iter().map(|(k, v)| (key_text(k), v.clone())).collect(),
            Yaml::Null => Vec::new(),
            other => {
                self.error(s, format!("{} is not a mapping of keys", show(other)));
                Vec::new()
            }
        }
    }
}

/// A YAML key as text.
fn key_text(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => "null".into(),
        other => show(other),
    }
}

/// A YAML value on one line, for messages.
fn show(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Null => "null (nothing)".into(),
        other => yaml_serde::to_string(other)
            .map(|t| t.trim().replace('\n', " "))
            .unwrap_or_else(|_| "?".into()),
    }
}

// ---------------------------------------------------------------------------
// Reading.

/// Where relay.yaml and global.yaml are, and the folder relative paths
/// resolve against.
fn locate(path: &Path) -> Result<(PathBuf, PathBuf, &'static str), Failure> {
    let abs = absolute(path);
    if abs.join("config/relay.yaml").is_file() {
        Ok((abs.join("config"), abs, "a SpeedData tree: config/ inside"))
    } else if abs.join("relay.yaml").is_file() {
        Ok((
            abs.clone(),
            abs,
            "a SpeedData configuration folder: relay.yaml inside, as deployed to /etc/speeddata",
        ))
    } else {
        Err(Failure::new(
            EXIT_CONFIG,
            format!(
                "{}: neither config/relay.yaml (a SpeedData tree) nor relay.yaml (a configuration folder such as /etc/speeddata) is there",
                path.display()
            ),
        ))
    }
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    rc::normalize(&p)
}

fn read_yaml(im: &mut Importer, file: File, path: &Path) -> Yaml {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            im.error(&Src::new(file, ""), format!("cannot read the file: {e}"));
            return Yaml::Null;
        }
    };
    match yaml_serde::from_str::<Yaml>(&text) {
        Ok(v) => v,
        Err(e) => {
            im.error(&Src::new(file, ""), format!("not valid YAML: {e}"));
            Yaml::Null
        }
    }
}

/// Applies a `decimation` section (or a registry's number or flag) to
/// `set`.
fn decimation(im: &mut Importer, v: &Yaml, s: &Src, set: &mut Settings) {
    match v {
        Yaml::Number(_) => {
            if let Some(n) = im.int(v, s) {
                set.dec_factor = val(n, s.clone());
            }
            return;
        }
        Yaml::Bool(b) => {
            set.dec_enabled = val(*b, s.clone());
            return;
        }
        _ => {}
    }
    for (k, v) in im.entries(v, s) {
        let ks = s.child(&k);
        match k.as_str() {
            "enabled" => {
                if let Some(b) = im.boolean(&v, &ks) {
                    set.dec_enabled = val(b, ks);
                }
            }
            "factor" => {
                if let Some(n) = im.int(&v, &ks) {
                    set.dec_factor = val(n, ks);
                }
            }
            "algorithm" => {
                if let Some(a) = im.string(&v, &ks) {
                    set.dec_algorithm = val(a, ks);
                }
            }
            _ => im.unknown(&ks),
        }
    }
}

/// Applies a `rotation` or `retention` section (`mode` and `threshold` or
/// `value`; a registry's plain number is the threshold or value).
fn mode_and_amount(
    im: &mut Importer,
    v: &Yaml,
    s: &Src,
    amount_key: &str,
    mode: &mut Option<Val<String>>,
    amount: &mut Option<Val<i64>>,
) {
    if let Yaml::Number(_) = v {
        if let Some(n) = im.int(v, s) {
            *amount = Some(val(n, s.clone()));
        }
        return;
    }
    for (k, v) in im.entries(v, s) {
        let ks = s.child(&k);
        if k == "mode" {
            if let Some(m) = im.string(&v, &ks) {
                *mode = Some(val(m, ks));
            }
        } else if k == amount_key {
            if let Some(n) = im.int(&v, &ks) {
                *amount = Some(val(n, ks));
            }
        } else {
            im.unknown(&ks);
        }
    }
}

/// Applies one section of settings (`decimation`, `rotation`,
/// `retention`); false if `key` is none of them.
fn setting(im: &mut Importer, key: &str, v: &Yaml, s: &Src, set: &mut Settings) -> bool {
    match key {
        "decimation" => decimation(im, v, s, set),
        "rotation" => mode_and_amount(
            im,
            v,
            s,
            "threshold",
            &mut set.rot_mode,
            &mut set.rot_threshold,
        ),
        "retention" => mode_and_amount(im, v, s, "value", &mut set.ret_mode, &mut set.ret_value),
        _ => return false,
    }
    true
}

/// relay.yaml: its channels, and the settings every channel shares.
fn read_relay(im: &mut Importer, doc: &Yaml) -> (Vec<ChannelIn>, Settings) {
    let mut set = Settings::speeddata_defaults();
    let mut channels = Vec::new();
    let top = Src::new(File::Relay, "");
    for (k, v) in im.entries(doc, &top) {
        let s = Src::new(File::Relay, k.clone());
        if k == "channels" {
            match &v {
                Yaml::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let cs = Src::new(File::Relay, format!("channels[{i}]"));
                        if let Some(c) = channel_entry(im, item, &cs) {
                            channels.push(c);
                        }
                    }
                }
                Yaml::Null => {}
                other => im.error(&s, format!("{} is not a list of channels", show(other))),
            }
        } else if k == "storage" {
            for (sk, _) in im.entries(&v, &s) {
                im.not_mapped(
                    &s.child(&sk),
                    "SpeedData reads storage from global.yaml only (its orchestrator's RELAY_OUTPUT_DIR): set it there",
                );
            }
        } else if !setting(im, &k, &v, &s, &mut set) {
            im.unknown(&s);
        }
    }
    (channels, set)
}

/// One entry of relay.yaml's `channels`: `name`, `port`, `schema`.
fn channel_entry(im: &mut Importer, item: &Yaml, cs: &Src) -> Option<ChannelIn> {
    let (mut name, mut port, mut schema) = (None, None, None);
    let mut seen = BTreeSet::new();
    for (k, v) in im.entries(item, cs) {
        let ks = cs.child(&k);
        seen.insert(k.clone());
        match k.as_str() {
            "name" => name = im.string(&v, &ks).map(|n| val(n, ks)),
            "port" => port = im.int(&v, &ks).map(|p| val(p, ks)),
            "schema" => schema = im.string(&v, &ks).map(|p| val(p, ks)),
            _ => im.unknown(&ks),
        }
    }
    for key in ["name", "port", "schema"] {
        if !seen.contains(key) {
            im.error(&cs.child(key), "missing");
        }
    }
    Some(ChannelIn {
        name: name?,
        port: port?,
        schema: schema?,
        overrides: Vec::new(),
    })
}

/// global.yaml's groups and archive folder, SpeedData's built-in ones
/// where it says nothing.
struct Global {
    full: Val<String>,
    decimated: Val<String>,
    avro_path: Val<String>,
}

fn read_global(im: &mut Importer, doc: &Yaml) -> Global {
    let b = |k: &str| Src::new(File::Builtin, k);
    let mut g = Global {
        full: val(SPEEDDATA_FULL_GROUP.into(), b("multicast.full_rate")),
        decimated: val(SPEEDDATA_DECIMATED_GROUP.into(), b("multicast.decimated")),
        avro_path: val(SPEEDDATA_AVRO_PATH.into(), b("storage.avro_path")),
    };
    let top = Src::new(File::Global, "");
    for (k, v) in im.entries(doc, &top) {
        let s = Src::new(File::Global, k.clone());
        match k.as_str() {
            "multicast" => {
                for (mk, mv) in im.entries(&v, &s) {
                    let ms = s.child(&mk);
                    match mk.as_str() {
                        "full_rate" => group(im, &mv, &ms, &mut g.full),
                        "decimated" => group(im, &mv, &ms, &mut g.decimated),
                        _ => im.unknown(&ms),
                    }
                }
            }
            "storage" => {
                for (sk, sv) in im.entries(&v, &s) {
                    let ss = s.child(&sk);
                    if sk == "avro_path" {
                        if let Some(p) = im.string(&sv, &ss) {
                            g.avro_path = val(p, ss);
                        }
                    } else {
                        im.unknown(&ss);
                    }
                }
            }
            _ => im.not_mapped(
                &s,
                "not a relay setting (global.yaml is shared by SpeedData's services): nothing to map",
            ),
        }
    }
    g
}

/// A multicast group of global.yaml: `address` and `port`, each defaulting
/// to the built-in group's.
fn group(im: &mut Importer, v: &Yaml, s: &Src, into: &mut Val<String>) {
    let builtin: SocketAddrV4 = into.v.parse().expect("the built-in groups parse");
    let (mut address, mut port) = (builtin.ip().to_string(), i64::from(builtin.port()));
    let mut seen = false;
    for (k, v) in im.entries(v, s) {
        let ks = s.child(&k);
        match k.as_str() {
            "address" => {
                if let Some(a) = im.string(&v, &ks) {
                    address = a;
                    seen = true;
                }
            }
            "port" => {
                if let Some(p) = im.int(&v, &ks) {
                    port = p;
                    seen = true;
                }
            }
            _ => im.unknown(&ks),
        }
    }
    if seen {
        *into = val(format!("{address}:{port}"), s.clone());
    }
}

/// The channels of SpeedData's registry (v0.5's `channels` table), in the
/// order SpeedData lists them.
fn read_registry(im: &mut Importer, path: &Path) -> Vec<ChannelIn> {
    let top = Src::new(File::Registry, "");
    let rows = match query_registry(path) {
        Ok(r) => r,
        Err(e) => {
            im.error(&top, e);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for row in rows {
        let name = row.text("name").unwrap_or_default();
        let cs = Src::new(File::Registry, format!("channels[{name}]"));
        let mut c = ChannelIn {
            name: val(name.clone(), cs.child("name")),
            port: val(0, cs.child("port")),
            schema: val(String::new(), cs.child("schema_path")),
            overrides: Vec::new(),
        };
        let mut ok = true;
        for (col, v) in &row.columns {
            let ks = cs.child(col);
            match col.as_str() {
                "name" => {}
                "port" => match v {
                    rusqlite::types::Value::Integer(p) => c.port.v = *p,
                    other => {
                        im.error(&ks, format!("{other:?} is not a port number"));
                        ok = false;
                    }
                },
                "schema_path" => match v {
                    rusqlite::types::Value::Text(t) => c.schema.v = t.clone(),
                    other => {
                        im.error(&ks, format!("{other:?} is not a path"));
                        ok = false;
                    }
                },
                "config_json" => match v {
                    rusqlite::types::Value::Null => {}
                    rusqlite::types::Value::Text(t) => {
                        config_json(im, t, &ks, &mut c);
                    }
                    other => im.error(&ks, format!("{other:?} is not JSON text")),
                },
                "status" | "created_at" | "pid" | "last_heartbeat" => {
                    if !matches!(v, rusqlite::types::Value::Null) {
                        im.not_mapped(
                            &ks,
                            format!(
                                "{} is SpeedData's runtime state, not configuration (the orchestrator keeps its own)",
                                sql_text(v)
                            ),
                        );
                    }
                }
                _ => im.not_mapped(
                    &ks,
                    "unknown column: neither SpeedData's relay nor this import reads it",
                ),
            }
        }
        if ok {
            out.push(c);
        }
    }
    out
}

/// A registry channel's `config_json`: SpeedData updates the channel's
/// configuration with it (`name`, `port` and `schema` included), so its
/// sections override relay.yaml's for this channel.
fn config_json(im: &mut Importer, text: &str, s: &Src, c: &mut ChannelIn) {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => {
            im.error(s, format!("not valid JSON: {e}"));
            return;
        }
    };
    let Ok(doc) = yaml_serde::to_value(&json) else {
        im.error(s, "cannot be read");
        return;
    };
    for (k, v) in im.entries(&doc, s) {
        let ks = s.child(&k);
        match k.as_str() {
            "name" => {
                if let Some(n) = im.string(&v, &ks) {
                    if n != c.name.v {
                        im.error(
                            &ks,
                            format!(
                                "{n:?} renames channel {:?}: SpeedData would run it as {n:?}; make the two agree",
                                c.name.v
                            ),
                        );
                    }
                }
            }
            "port" => {
                if let Some(p) = im.int(&v, &ks) {
                    c.port = val(p, ks);
                }
            }
            "schema" => {
                if let Some(p) = im.string(&v, &ks) {
                    c.schema = val(p, ks);
                }
            }
            "decimation" | "rotation" | "retention" => c.overrides.push((k.clone(), v, ks)),
            _ => im.unknown(&ks),
        }
    }
}

/// One row of the registry's `channels` table, column by column.
struct SqlRow {
    columns: Vec<(String, rusqlite::types::Value)>,
}

impl SqlRow {
    fn text(&self, col: &str) -> Option<String> {
        self.columns
            .iter()
            .find(|(c, _)| c == col)
            .map(|(_, v)| match v {
                rusqlite::types::Value::Text(t) => t.clone(),
                other => sql_text(other),
            })
    }
}

fn sql_text(v: &rusqlite::types::Value) -> String {
    use rusqlite::types::Value as V;
    match v {
        V::Null => "NULL".into(),
        V::Integer(i) => i.to_string(),
        V::Real(r) => r.to_string(),
        V::Text(t) => format!("{t:?}"),
        V::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

fn query_registry(path: &Path) -> Result<Vec<SqlRow>, String> {
    use rusqlite::{Connection, OpenFlags};
    if !path.is_file() {
        return Err("no such file".into());
    }
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open it as SQLite: {e}"))?;
    let mut stmt = db
        .prepare("SELECT * FROM channels ORDER BY rowid")
        .map_err(|e| {
            format!("not SpeedData's registry (its table `channels` cannot be read: {e})")
        })?;
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    for needed in ["name", "port", "schema_path"] {
        if !names.iter().any(|n| n == needed) {
            return Err(format!(
                "not SpeedData's registry: its table `channels` has no column `{needed}` (it has {})",
                names.join(", ")
            ));
        }
    }
    let rows = stmt
        .query_map([], |row| {
            let mut columns = Vec::new();
            for (i, n) in names.iter().enumerate() {
                columns.push((n.clone(), row.get::<_, rusqlite::types::Value>(i)?));
            }
            Ok(SqlRow { columns })
        })
        .map_err(|e| format!("cannot read the table `channels`: {e}"))?;
    let rows = rows
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read the table `channels`: {e}"));
    rows
}

// ---------------------------------------------------------------------------
// Mapping.

/// The channels SpeedData would run: the registry's, then relay.yaml's
/// whose name and port the registry (or an earlier entry) does not hold,
/// as SpeedData inserts its YAML baseline into the registry and then runs
/// what the registry holds.
fn merge(im: &mut Importer, registry: Vec<ChannelIn>, yaml: Vec<ChannelIn>) -> Vec<ChannelIn> {
    let mut out: Vec<ChannelIn> = registry;
    let registry_names: BTreeSet<String> = out.iter().map(|c| c.name.v.clone()).collect();
    for c in yaml {
        let entry = Src::new(File::Relay, c.name.src.key.trim_end_matches(".name"));
        if registry_names.contains(&c.name.v) {
            let by = im.label(&Src::new(File::Registry, format!("channels[{}]", c.name.v)));
            im.not_mapped(
                &entry,
                format!(
                    "channel {:?} is overridden by {by} (SpeedData: the database overrides YAML)",
                    c.name.v
                ),
            );
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.name.v == c.name.v) {
            let first = im.label(&o.name.src);
            im.not_mapped(
                &entry,
                format!(
                    "not imported: a second channel named {:?} ({first} is the first); SpeedData's registry keeps the first and never runs this one",
                    c.name.v
                ),
            );
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.port.v == c.port.v) {
            let other = im.label(&o.port.src);
            im.not_mapped(
                &entry,
                format!(
                    "not imported: port {} is also channel {:?}'s ({other}); SpeedData's registry holds one channel a port and never runs this one",
                    c.port.v, o.name.v
                ),
            );
            continue;
        }
        out.push(c);
    }
    out
}

/// Context every channel shares.
struct Shared<'a> {
    opts: &'a Options,
    global: &'a Global,
    settings: &'a Settings,
    /// More than one channel: their outputs share SpeedData's groups.
    several: bool,
    header: String,
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes `key = value` into a channel file, with the SpeedData keys it
/// comes from as a comment.
fn line(toml: &mut String, key: &str, value: String, src: &[&Src], im: &Importer) {
    let from: Vec<String> = src.iter().map(|s| im.label(s)).collect();
    let _ = writeln!(
        toml,
        "{:<34} # {}",
        format!("{key} = {value}"),
        from.join(", ")
    );
}

/// Adds a row to the table.
fn push(rows: &mut Vec<Mapped>, src: &[&Src], target: &str, value: &str, note: Option<String>) {
    rows.push(Mapped {
        src: src.iter().map(|s| (*s).clone()).collect(),
        target: target.into(),
        value: value.into(),
        note,
    })
}

/// Builds one channel's file and table rows; `None` after an error.
fn map_channel(im: &mut Importer, c: &ChannelIn, sh: &Shared) -> Option<ChannelOut> {
    let errors_before = im.errors.len();
    let mut rows: Vec<Mapped> = Vec::new();
    let mut toml = sh.header.clone();

    // The name.
    let name = &c.name.v;
    if !rc::valid_name(name) {
        im.error(
            &c.name.src,
            format!(
                "{name:?} is not a channel name here: use 1 to 64 of a-z, 0-9, '_' and '-' (it names the archive folder); rename the channel"
            ),
        );
        return None;
    }
    let v = quoted(name);
    line(&mut toml, "name", v.clone(), &[&c.name.src], im);
    push(&mut rows, &[&c.name.src], "name", &v, None);

    // The schema, copied beside the channel file.
    let schema_from = rc::normalize(&im.root.join(&c.schema.v));
    let schema_text = match std::fs::read_to_string(&schema_from) {
        Ok(t) => Some(t),
        Err(e) => {
            im.error(
                &c.schema.src,
                format!("cannot read {}: {e}", schema_from.display()),
            );
            None
        }
    };
    let schema_file = format!("{name}.avsc");
    let v = quoted(&schema_file);
    line(&mut toml, "schema", v.clone(), &[&c.schema.src], im);
    let beside = schema_text
        .as_deref()
        .map(logical_beside_type)
        .unwrap_or_default();
    let mut note = format!("a copy of {}, byte for byte", schema_from.display());
    if !beside.is_empty() {
        let _ = write!(
            note,
            "; its field(s) {} put logicalType beside their type, where Avro ignores it: plain longs, for SpeedData's readers and the relay alike",
            beside.join(", ")
        );
    }
    push(&mut rows, &[&c.schema.src], "schema", &v, Some(note));

    // [receive]
    toml.push_str("\n[receive]\n");
    let port = match u16::try_from(c.port.v) {
        Ok(p) if p > 0 => p,
        _ => {
            im.error(
                &c.port.src,
                format!("{} is not a UDP port (1 to 65535)", c.port.v),
            );
            0
        }
    };
    let bind = quoted(&SocketAddrV4::new(sh.opts.receive_address, port).to_string());
    line(&mut toml, "bind", bind.clone(), &[&c.port.src], im);
    let note = if sh.opts.receive_address == SPEEDDATA_RECEIVE_ADDRESS {
        "SpeedData's relay binds 127.0.0.1:PORT, so only senders on this host reach it, and so here; --receive-address 0.0.0.0 takes senders on other hosts too".to_string()
    } else if sh.opts.receive_address.is_unspecified() {
        "every interface (--receive-address): senders on other hosts reach it; SpeedData's relay bound 127.0.0.1:PORT".to_string()
    } else {
        format!(
            "--receive-address {}; SpeedData's relay bound 127.0.0.1:PORT",
            sh.opts.receive_address
        )
    };
    push(&mut rows, &[&c.port.src], "receive.bind", &bind, Some(note));

    // [archive]
    toml.push_str("\n[archive]\n");
    let dir = rc::normalize(&im.root.join(&sh.global.avro_path.v));
    let v = quoted(&dir.to_string_lossy());
    line(&mut toml, "dir", v.clone(), &[&sh.global.avro_path.src], im);
    push(&mut rows,
        &[&sh.global.avro_path.src],
        "archive.dir",
        &v,
        Some(format!(
            "resolved against {}; files go to {}/<channel>/, where SpeedData wrote data_<time>.avro into the folder itself",
            im.root.display(),
            dir.display()
        )),
    );
    let set = effective(im, c, sh.settings);
    match (&set.rot_mode, &set.rot_threshold) {
        (None, None) => {
            let src = Src::new(File::Builtin, "rotation");
            line(
                &mut toml,
                "rotate_size",
                SPEEDDATA_ROTATE_BYTES.to_string(),
                &[&src],
                im,
            );
            push(&mut rows,
                &[&src],
                "archive.rotate_size",
                &SPEEDDATA_ROTATE_BYTES.to_string(),
                Some("not set: SpeedData's relay closes its files at 50 MB; archive.rotate_interval stays at its default, 1h".into()),
            );
        }
        (Some(m), Some(t)) => {
            let threshold = positive(im, t);
            match m.v.as_str() {
                "time" => {
                    let v = quoted(&format!("{threshold}s"));
                    line(
                        &mut toml,
                        "rotate_interval",
                        v.clone(),
                        &[&m.src, &t.src],
                        im,
                    );
                    push(&mut rows,
                        &[&m.src, &t.src],
                        "archive.rotate_interval",
                        &v,
                        Some("archive.rotate_size stays at its default, 256MiB: a file also closes at that size".into()),
                    );
                }
                "size" => {
                    line(
                        &mut toml,
                        "rotate_size",
                        threshold.to_string(),
                        &[&m.src, &t.src],
                        im,
                    );
                    push(&mut rows,
                        &[&m.src, &t.src],
                        "archive.rotate_size",
                        &threshold.to_string(),
                        Some("bytes; archive.rotate_interval stays at its default, 1h: a file also closes an hour after its first record".into()),
                    );
                }
                other => im.error(
                    &m.src,
                    format!("{other:?} is not a rotation mode: time or size"),
                ),
            }
        }
        (Some(m), None) => im.error(
            &m.src.clone_parent().child("threshold"),
            "missing: seconds (mode time) or bytes (mode size)",
        ),
        (None, Some(t)) => im.error(&t.src.clone_parent().child("mode"), "missing: time or size"),
    }
    match (&set.ret_mode, &set.ret_value) {
        (None, None) => {}
        (Some(m), Some(a)) => {
            let amount = positive(im, a);
            match m.v.as_str() {
                "ttl" => {
                    let v = quoted(&format!("{amount}s"));
                    line(&mut toml, "retention_age", v.clone(), &[&m.src, &a.src], im);
                    push(
                        &mut rows,
                        &[&m.src, &a.src],
                        "archive.retention_age",
                        &v,
                        Some("closed files whose span ended longer ago are deleted".into()),
                    );
                }
                "quota" => {
                    line(
                        &mut toml,
                        "retention_size",
                        amount.to_string(),
                        &[&m.src, &a.src],
                        im,
                    );
                    push(
                        &mut rows,
                        &[&m.src, &a.src],
                        "archive.retention_size",
                        &amount.to_string(),
                        Some(
                            "bytes, for this channel's folder: the oldest closed files go first"
                                .into(),
                        ),
                    );
                }
                other => im.error(
                    &m.src,
                    format!("{other:?} is not a retention mode: ttl or quota"),
                ),
            }
        }
        (Some(m), None) => im.error(
            &m.src.clone_parent().child("value"),
            "missing: seconds (mode ttl) or bytes (mode quota)",
        ),
        (None, Some(a)) => im.error(&a.src.clone_parent().child("mode"), "missing: ttl or quota"),
    }

    // [full] and [decimated]
    let iface_src = Src::new(
        File::Builtin,
        if sh.opts.interface == DEFAULT_INTERFACE {
            "(SpeedData sets no multicast interface)"
        } else {
            "--interface"
        },
    );
    let ttl_src = Src::new(
        File::Builtin,
        if sh.opts.ttl == SPEEDDATA_TTL {
            "(SpeedData's relay sends with TTL 2)"
        } else {
            "--ttl"
        },
    );
    let shared_src = Src::new(
        File::Builtin,
        "(SpeedData sends every channel to these groups)",
    );
    let output = |toml: &mut String,
                  rows_section: &str,
                  group: &Val<String>,
                  im: &mut Importer,
                  rows: &mut Vec<Mapped>| {
        let _ = writeln!(toml, "\n[{rows_section}]");
        let g = quoted(&group.v);
        line(toml, "group", g.clone(), &[&group.src], im);
        push(
            rows,
            &[&group.src],
            &format!("{rows_section}.group"),
            &g,
            None,
        );
        let i = quoted(&sh.opts.interface);
        line(toml, "interface", i.clone(), &[&iface_src], im);
        push(
            rows,
            &[&iface_src],
            &format!("{rows_section}.interface"),
            &i,
            Some(if sh.opts.interface == DEFAULT_INTERFACE {
                "the kernel's choice by its routes, as SpeedData sends; --interface names one, 127.0.0.1 keeps it on this host".into()
            } else {
                "--interface".into()
            }),
        );
        line(toml, "ttl", sh.opts.ttl.to_string(), &[&ttl_src], im);
        push(
            rows,
            &[&ttl_src],
            &format!("{rows_section}.ttl"),
            &sh.opts.ttl.to_string(),
            None,
        );
        if sh.several {
            line(toml, "shared", "true".into(), &[&shared_src], im);
            push(
                rows,
                &[&shared_src],
                &format!("{rows_section}.shared"),
                "true",
                Some("several channels on one group: see \"Shared groups\" below".into()),
            );
        }
    };
    output(&mut toml, "full", &sh.global.full, im, &mut rows);
    if set.dec_enabled.v {
        output(&mut toml, "decimated", &sh.global.decimated, im, &mut rows);
        let a = &set.dec_algorithm;
        if Algorithm::NAMES.contains(&a.v.as_str()) {
            let v = quoted(&a.v);
            line(&mut toml, "algorithm", v.clone(), &[&a.src], im);
            push(&mut rows, &[&a.src], "decimated.algorithm", &v, None);
        } else {
            im.error(
                &a.src,
                format!(
                    "{:?} is not an algorithm here: one of {}",
                    a.v,
                    Algorithm::NAMES.join(", ")
                ),
            );
        }
        let f = &set.dec_factor;
        let factor = match f.v {
            n if n <= 1 => 1,
            n if n > i64::from(u32::MAX) => {
                im.error(
                    &f.src,
                    format!("{n} is out of range (at most {})", u32::MAX),
                );
                1
            }
            n => n,
        };
        line(&mut toml, "factor", factor.to_string(), &[&f.src], im);
        push(
            &mut rows,
            &[&f.src],
            "decimated.factor",
            &factor.to_string(),
            (f.v < 1).then(|| {
                format!(
                    "{}: SpeedData sends every record for a factor of 1 or less",
                    f.v
                )
            }),
        );
    } else {
        push(
            &mut rows,
            &[&set.dec_enabled.src],
            "[decimated]",
            "left out",
            Some("decimation is off: no decimated output, as SpeedData sends none".into()),
        );
        // Reported where the key is unused: off for every channel (in
        // relay.yaml), or by the same registry entry.
        let off_everywhere = set.dec_enabled.src.file == File::Relay;
        for s in [&set.dec_factor.src, &set.dec_algorithm.src] {
            if s.file == File::Registry || (s.file == File::Relay && off_everywhere) {
                im.not_mapped(
                    s,
                    "decimation is off (decimation.enabled is false): nothing to decimate",
                );
            }
        }
    }
    if im.errors.len() > errors_before {
        return None;
    }
    Some(ChannelOut {
        name: name.clone(),
        toml_text: toml,
        schema_text: schema_text?,
        schema_from,
        rows,
    })
}

impl Src {
    /// The section a key is in (`decimation` of `decimation.factor`).
    fn clone_parent(&self) -> Src {
        match self.key.rsplit_once('.') {
            Some((parent, _)) => Src::new(self.file, parent),
            None => self.clone(),
        }
    }
}

/// The fields of a schema (dotted through nested records) whose
/// `logicalType` stands beside their `type` instead of inside it, as in
/// SpeedData's example schema. Nothing for text that is not JSON.
fn logical_beside_type(schema_text: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, prefix, out)),
            serde_json::Value::Object(o) => {
                for f in o
                    .get("fields")
                    .and_then(|f| f.as_array())
                    .into_iter()
                    .flatten()
                {
                    let name = f.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let path = if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    if f.get("logicalType").is_some() {
                        out.push(format!("`{path}`"));
                    }
                    if let Some(t) = f.get("type") {
                        walk(t, &path, out);
                    }
                }
                for key in ["items", "values"] {
                    if let Some(t) = o.get(key) {
                        walk(t, prefix, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str(schema_text) {
        walk(&v, "", &mut out);
    }
    out
}

/// A threshold that must be above 0.
fn positive(im: &mut Importer, v: &Val<i64>) -> i64 {
    if v.v <= 0 {
        im.error(&v.src, format!("{} must be above 0", v.v));
    }
    v.v
}

/// The channel's settings: relay.yaml's, then its registry `config_json`'s.
fn effective(im: &mut Importer, c: &ChannelIn, global: &Settings) -> Settings {
    let mut set = global.clone();
    for (key, v, s) in &c.overrides {
        setting(im, key, v, s, &mut set);
    }
    // A registry's plain number where relay.yaml names no mode: the unit
    // relay.yaml's own example uses, seconds.
    let b = |k: &str| {
        Src::new(
            File::Builtin,
            format!("{k} (not set: seconds, as relay.yaml's example)"),
        )
    };
    if set.rot_mode.is_none() && set.rot_threshold.is_some() {
        set.rot_mode = Some(val("time".into(), b("rotation.mode")));
    }
    if set.ret_mode.is_none() && set.ret_value.is_some() {
        set.ret_mode = Some(val("ttl".into(), b("retention.mode")));
    }
    set
}

// ---------------------------------------------------------------------------
// The command.

/// The folder's other channel files that validate on their own, for the
/// fleet check (those that need orchestrator.toml's `[defaults]` cannot be
/// checked here: counted).
fn existing_channels(out: &Path, ours: &BTreeSet<PathBuf>) -> (Vec<config::Channel>, usize) {
    let Ok(rd) = std::fs::read_dir(out) else {
        return (Vec::new(), 0);
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .filter(|p| !ours.contains(p))
        .collect();
    files.sort();
    let mut ok = Vec::new();
    let mut unchecked = 0;
    for f in files {
        match config::load_channel(&f, &toml::Table::new()) {
            Ok(c) => ok.push(c),
            Err(_) => unchecked += 1,
        }
    }
    (ok, unchecked)
}

/// What becomes of one file.
enum Fate {
    New,
    Unchanged,
}

/// Runs the import; its report, or why nothing was written.
pub fn import(opts: &Options) -> Result<String, Failure> {
    let (config_dir, tree_root, kind) = locate(&opts.path)?;
    let root = opts.root.as_deref().map(absolute).unwrap_or(tree_root);
    let relay = config_dir.join("relay.yaml");
    let global = Some(config_dir.join("global.yaml")).filter(|p| p.is_file());
    let mut im = Importer {
        relay: relay.clone(),
        global: global.clone(),
        registry: opts.registry.as_deref().map(absolute),
        root: root.clone(),
        errors: Vec::new(),
        unmapped: Vec::new(),
    };
    let relay_doc = read_yaml(&mut im, File::Relay, &relay);
    let (yaml_channels, settings) = read_relay(&mut im, &relay_doc);
    let global_doc = match &global {
        Some(g) => read_yaml(&mut im, File::Global, g),
        None => Yaml::Null,
    };
    let global_cfg = read_global(&mut im, &global_doc);
    let registry_channels = match im.registry.clone() {
        Some(r) => read_registry(&mut im, &r),
        None => {
            let default_db = root.join("data/registry.db");
            if default_db.is_file() {
                im.unmapped.push((
                    default_db.display().to_string(),
                    "SpeedData's registry is there (its channels override relay.yaml's): not read without --registry; pass --registry to import it too".into(),
                ));
            }
            Vec::new()
        }
    };
    let channels = merge(&mut im, registry_channels, yaml_channels);
    if channels.is_empty() && im.errors.is_empty() {
        im.error(
            &Src::new(File::Relay, "channels"),
            "no channel to import (and none in a registry)",
        );
    }
    let mut sources = vec![relay.display().to_string()];
    sources.extend(global.iter().map(|g| g.display().to_string()));
    sources.extend(im.registry.iter().map(|r| r.display().to_string()));
    let header = format!(
        "# Imported from SpeedData by `orchestrator import speeddata`, from\n# {}.\n# Each key's comment names the SpeedData key it comes from.\n",
        sources.join(",\n# ")
    );
    let shared = Shared {
        opts,
        global: &global_cfg,
        settings: &settings,
        several: channels.len() > 1,
        header,
    };
    let mut outs = Vec::new();
    for c in &channels {
        if let Some(o) = map_channel(&mut im, c, &shared) {
            outs.push(o);
        }
    }
    // A setting every channel shares is wrong once, not once a channel.
    let mut seen = BTreeSet::new();
    im.errors.retain(|e| seen.insert(e.clone()));
    let mut seen = BTreeSet::new();
    im.unmapped.retain(|u| seen.insert(u.clone()));
    if !im.errors.is_empty() {
        return Err(Failure {
            code: EXIT_CONFIG,
            lines: im.errors,
        });
    }

    // Every channel file validates as `orchestrator check` would, and the
    // fleet (with the folder's other files) has no conflict.
    let out_dir = absolute(&opts.out);
    let our_files: BTreeSet<PathBuf> = outs
        .iter()
        .map(|o| out_dir.join(format!("{}.toml", o.name)))
        .collect();
    let (mut fleet, unchecked) = existing_channels(&out_dir, &our_files);
    let mut problems = Vec::new();
    for o in &outs {
        let file = out_dir.join(format!("{}.toml", o.name));
        let checked = rc::parse_table(&o.toml_text, &file).and_then(|t| {
            config::validate_channel(t, &file, &toml::Table::new(), Some(o.schema_text.clone()))
        });
        match checked {
            Ok(ch) => {
                let conflicts = config::conflicts(&ch, &fleet);
                for p in conflicts {
                    problems.push(format!("{}: {}: {}", file.display(), p.key, p.message));
                }
                fleet.push(ch);
            }
            Err(e) => problems.extend(e.to_string().lines().map(|l| {
                l.replace(
                    &format!("{}.avsc", out_dir.join(&o.name).display()),
                    &o.schema_from.display().to_string(),
                )
            })),
        }
    }
    if !problems.is_empty() {
        return Err(Failure {
            code: EXIT_CONFIG,
            lines: problems,
        });
    }

    // Nothing that exists with other content is overwritten.
    let mut plan: Vec<(PathBuf, String, Fate)> = Vec::new();
    let mut refused = Vec::new();
    for o in &outs {
        for (file, text) in [
            (out_dir.join(format!("{}.avsc", o.name)), &o.schema_text),
            (out_dir.join(format!("{}.toml", o.name)), &o.toml_text),
        ] {
            match std::fs::read(&file) {
                Ok(have) if have == text.as_bytes() => {
                    plan.push((file, text.clone(), Fate::Unchanged))
                }
                Ok(_) => refused.push(format!(
                    "{}: exists with other content: not overwritten",
                    file.display()
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    plan.push((file, text.clone(), Fate::New))
                }
                Err(e) => refused.push(format!("{}: cannot read it: {e}", file.display())),
            }
        }
    }
    if !refused.is_empty() {
        refused.push(format!(
            "nothing was written; move the file(s) away or import into another folder than {}",
            out_dir.display()
        ));
        return Err(Failure {
            code: EXIT_FAILED,
            lines: refused,
        });
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "SpeedData configuration: {} ({kind})",
        absolute(&opts.path).display()
    );
    let _ = writeln!(report, "  relay.yaml:  {}", relay.display());
    match &global {
        Some(g) => {
            let _ = writeln!(report, "  global.yaml: {}", g.display());
        }
        None => {
            let _ = writeln!(
                report,
                "  global.yaml: none (SpeedData then uses its built-in groups {SPEEDDATA_FULL_GROUP}, {SPEEDDATA_DECIMATED_GROUP} and ./data)"
            );
        }
    }
    let _ = writeln!(
        report,
        "  registry:    {}",
        im.registry
            .as_ref()
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| "none (--registry not given)".into())
    );
    let _ = writeln!(
        report,
        "  relative paths resolve against {} ({})",
        root.display(),
        if opts.root.is_some() {
            "--root"
        } else if config_dir == root {
            "the configuration folder itself"
        } else {
            "the tree, SpeedData's working folder"
        }
    );
    write_table(&mut report, &im, &outs);
    if outs.len() > 1 {
        let _ = writeln!(
            report,
            "\nShared groups: SpeedData sends every channel to the same two groups ({} and {}), and so do these {} channels, so that SpeedData's receivers (its stripchart, your own) keep working. Two channels on one group are refused unless both say so, hence full.shared = true and decimated.shared = true in each file. Receivers tell the channels apart by the sender's address and port (each relay sends from its own socket), as with SpeedData. The orchestrator's live view (the console's strip charts) cannot, and refuses to watch a shared decimated group: to watch a channel live, give it a group of its own and drop `shared`.",
            global_cfg.full.v,
            global_cfg.decimated.v,
            outs.len()
        );
    }
    let _ = writeln!(
        report,
        "\n{} {}:",
        if opts.dry_run {
            "Would write (--dry-run: nothing written) into"
        } else {
            "Wrote into"
        },
        out_dir.display()
    );
    if !opts.dry_run {
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            return Err(Failure::failed(format!(
                "{}: cannot create it: {e}",
                out_dir.display()
            )));
        }
        // Schemas first: a channel file never names a schema not there yet.
        let mut order: Vec<&(PathBuf, String, Fate)> = plan.iter().collect();
        order.sort_by_key(|(f, _, _)| f.extension().is_some_and(|x| x == "toml"));
        for (file, text, fate) in order {
            if let Fate::New = fate {
                write_atomic(file, text.as_bytes()).map_err(|e| {
                    Failure::failed(format!("{}: cannot write it: {e}", file.display()))
                })?;
            }
        }
    }
    for (file, text, fate) in &plan {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let what = match fate {
            Fate::New => "new",
            Fate::Unchanged => "unchanged (already there, identical)",
        };
        let _ = writeln!(report, "  {name}: {what}, {} bytes", text.len());
        if opts.dry_run && file.extension().is_some_and(|x| x == "toml") {
            for l in text.lines() {
                let _ = writeln!(report, "    | {l}");
            }
        }
    }
    if unchecked > 0 {
        let _ = writeln!(
            report,
            "\n{unchecked} other channel file(s) in {} do not validate on their own (they may need orchestrator.toml's [defaults]): `orchestrator check` checks them against these.",
            out_dir.display()
        );
    }
    let _ = write!(
        report,
        "\nNext: orchestrator check --config ORCHESTRATOR.toml --channels-dir {}",
        out_dir.display()
    );
    Ok(report)
}

/// The table: every mapped key (rows of several channels that agree are
/// one row), then every key not mapped and why.
fn write_table(report: &mut String, im: &Importer, outs: &[ChannelOut]) {
    /// Rows of several channels that agree, as one.
    struct Line {
        src: String,
        target: String,
        value: String,
        note: Option<String>,
        channels: Vec<String>,
    }
    let mut lines: Vec<Line> = Vec::new();
    for o in outs {
        for r in &o.rows {
            let src = r
                .src
                .iter()
                .map(|s| im.label(s))
                .collect::<Vec<_>>()
                .join(" + ");
            match lines.iter_mut().find(|l| {
                l.src == src && l.target == r.target && l.value == r.value && l.note == r.note
            }) {
                Some(l) => l.channels.push(o.name.clone()),
                None => lines.push(Line {
                    src,
                    target: r.target.clone(),
                    value: r.value.clone(),
                    note: r.note.clone(),
                    channels: vec![o.name.clone()],
                }),
            }
        }
    }
    let _ = writeln!(report, "\nMapped (SpeedData key -> our key = value):");
    let width = lines.iter().map(|l| l.src.len()).max().unwrap_or(0).min(56);
    for l in &lines {
        let whose = if l.channels.len() == outs.len() && outs.len() > 1 {
            "every channel's".to_string()
        } else {
            l.channels
                .iter()
                .map(|n| format!("{n}.toml"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            report,
            "  {:<width$} -> {whose} {} = {}",
            l.src, l.target, l.value
        );
        if let Some(n) = &l.note {
            let _ = writeln!(report, "  {:<width$}    note: {n}", "");
        }
    }
    let _ = writeln!(report, "\nNot mapped:");
    if im.unmapped.is_empty() {
        let _ = writeln!(report, "  nothing: every key was mapped");
    }
    for (k, why) in &im.unmapped {
        let _ = writeln!(report, "  {k}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(relay: &str, global: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("config/agents")).unwrap();
        std::fs::write(d.path().join("config/relay.yaml"), relay).unwrap();
        if let Some(g) = global {
            std::fs::write(d.path().join("config/global.yaml"), g).unwrap();
        }
        std::fs::write(
            d.path().join("config/agents/s.avsc"),
            r#"{"type":"record","name":"s","fields":[{"name":"time","type":"long","logicalType":"timestamp-nanos"}]}"#,
        )
        .unwrap();
        d
    }

    #[test]
    fn without_global_yaml_the_built_in_groups_and_folder_are_used() {
        let d = tree(
            "channels:\n  - {name: a, port: 26000, schema: config/agents/s.avsc}\n",
            None,
        );
        let mut o = Options::new(d.path().into(), d.path().join("out"));
        o.dry_run = true;
        let report = import(&o).unwrap();
        assert!(report.contains("group = \"239.1.1.1:6000\""), "{report}");
        assert!(report.contains("group = \"239.1.1.2:6001\""), "{report}");
        assert!(report.contains("rotate_size = 52428800"), "{report}");
        assert!(report.contains(&format!("dir = \"{}\"", d.path().join("data").display())));
        assert!(!d.path().join("out").exists());
    }

    #[test]
    fn every_problem_names_its_file_and_key_all_at_once() {
        let d = tree(
            "channels:\n  - {name: Bad Name, port: 26000, schema: config/agents/s.avsc}\n  - {name: b, port: 70000, schema: config/agents/none.avsc}\n  - {port: 1}\ndecimation: {factor: many, algorithm: median}\nrotation: {mode: weekly, threshold: 1}\nretention: {mode: ttl}\n",
            Some("multicast:\n  full_rate: {address: 239.1.1.1, port: x}\n"),
        );
        let f = import(&Options::new(d.path().into(), d.path().join("out"))).unwrap_err();
        assert_eq!(f.code, EXIT_CONFIG);
        let text = f.lines.join("\n");
        for needle in [
            "relay.yaml: channels[2].name: missing",
            "relay.yaml: channels[2].schema: missing",
            "relay.yaml: decimation.factor: \"many\" is not a whole number",
            "global.yaml: multicast.full_rate.port: \"x\" is not a whole number",
            "relay.yaml: channels[0].name: \"Bad Name\" is not a channel name",
            "relay.yaml: channels[1].port: 70000 is not a UDP port",
            "relay.yaml: channels[1].schema: cannot read",
            "relay.yaml: decimation.algorithm: \"median\" is not an algorithm",
            "relay.yaml: rotation.mode: \"weekly\" is not a rotation mode",
            "relay.yaml: retention.value: missing",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert!(!d.path().join("out").exists());
    }
}
