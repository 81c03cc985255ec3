//! The live stream: `GET /api/v1/channels/{name}/live`, a WebSocket of a
//! channel's decimated records as JSON.
//!
//! One hub per watched channel: a task with one socket joined to the
//! channel's `[decimated]` group on its configured interface, decoding each
//! datagram once with the channel's schema and handing the record to every
//! client's bounded queue without waiting for any of them. Each client has
//! a task of its own that takes from its queue at its `max_rate` (the
//! newest record wins) and writes to its WebSocket: a slow client only
//! loses records of its own (counted, then reported as `{"dropped": n}`).
//! The hub (and its membership) ends when its last client goes, so nothing
//! is decoded while nobody watches.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use base64::Engine as _;
use relay_channel::config::{ChannelSpec, Encoding, OutputSpec};
use serde_json::{json, Map, Number, Value as Json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Clients of one channel at once, at most; one more is answered 503.
pub const MAX_CLIENTS: usize = 64;
/// Records per second a client gets unless it asks (`?max_rate=`).
pub const DEFAULT_MAX_RATE: u32 = 100;
/// The most `?max_rate=` may ask for.
pub const MAX_MAX_RATE: u32 = 100_000;
/// Records a client's queue holds while its socket is busy; beyond, the
/// oldest is dropped (and counted).
pub const QUEUE: usize = 256;
/// A client whose socket takes no message for this long is closed: a
/// client that stopped reading must not hold one of the channel's places
/// for ever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

// ---------------------------------------------------------------------------
// JSON mapping.

/// An Avro value as JSON: numbers as numbers (longs beyond 2^53 - 1 as
/// strings, NaN and infinities as null), enums as their symbol, bytes and
/// fixed as base64, records and maps as objects, arrays as arrays, unions
/// as the plain value, logical types as their underlying number (dates in
/// days, times and timestamps in their unit), decimals as base64 of their
/// two's-complement bytes (see [`Mapping`] for their decimal value), big
/// decimals and UUIDs as strings, durations as
/// `{"months", "days", "millis"}`.
#[cfg(test)]
pub fn to_json(v: &Value) -> Json {
    map(v, None, &BTreeMap::new())
}

/// [`to_json`] for values of one schema, which knows each decimal's scale:
/// decimals of up to 38 digits become decimal strings (`"-12.50"`).
pub struct Mapping<'s> {
    schema: &'s Schema,
    names: BTreeMap<String, &'s Schema>,
}

impl<'s> Mapping<'s> {
    pub fn new(schema: &'s Schema) -> Mapping<'s> {
        let mut names = BTreeMap::new();
        collect_names(schema, &mut names);
        Mapping { schema, names }
    }

    pub fn to_json(&self, v: &Value) -> Json {
        map(v, Some(self.schema), &self.names)
    }
}

/// A decimal's value from its unscaled two's-complement bytes, if they fit
/// 128 bits.
fn decimal_string(bytes: &[u8], scale: usize) -> Option<String> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    let n = i128::from_be_bytes(wide);
    let mut digits = n.unsigned_abs().to_string();
    if scale > 0 {
        if digits.len() <= scale {
            digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
        }
        digits.insert(digits.len() - scale, '.');
    }
    Some(if n < 0 { format!("-{digits}") } else { digits })
}

fn map(v: &Value, s: Option<&Schema>, names: &BTreeMap<String, &Schema>) -> Json {
    let b64 = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
    let s = match s {
        Some(Schema::Ref { name }) => names.get(&name.fullname(None)).copied(),
        other => other,
    };
    let to_json = |v: &Value, sub: Option<&Schema>| map(v, sub, names);
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(l) => {
            if l.unsigned_abs() <= MAX_SAFE_INTEGER {
                json!(l)
            } else {
                Json::String(l.to_string())
            }
        }
        Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => json!(l),
        Value::Float(f) => float(f64::from(*f)),
        Value::Double(d) => float(*d),
        Value::Bytes(b) | Value::Fixed(_, b) => b64(b),
        Value::String(s) => Json::String(s.clone()),
        Value::Enum(_, symbol) => Json::String(symbol.clone()),
        Value::Union(i, inner) => {
            let sub = match s {
                Some(Schema::Union(u)) => u.variants().get(*i as usize),
                _ => None,
            };
            to_json(inner, sub)
        }
        Value::Array(items) => {
            let sub = match s {
                Some(Schema::Array(a)) => Some(&*a.items),
                _ => None,
            };
            Json::Array(items.iter().map(|v| to_json(v, sub)).collect())
        }
        Value::Map(m) => {
            let sub = match s {
                Some(Schema::Map(m)) => Some(&*m.types),
                _ => None,
            };
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), to_json(&m[k], sub)))
                    .collect(),
            )
        }
        Value::Record(fields) => {
            let record = match s {
                Some(Schema::Record(r)) => Some(r),
                _ => None,
            };
            Json::Object(
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        // Decoded fields come in the schema's order.
                        let sub = record
                            .and_then(|r| {
                                r.fields
                                    .get(i)
                                    .filter(|f| &f.name == k)
                                    .or_else(|| r.fields.iter().find(|f| &f.name == k))
                            })
                            .map(|f| &f.schema);
                        (k.clone(), to_json(v, sub))
                    })
                    .collect(),
            )
        }
        Value::Decimal(d) => match <Vec<u8>>::try_from(d) {
            Ok(bytes) => match s {
                Some(Schema::Decimal(ds)) => {
                    decimal_string(&bytes, ds.scale).map_or_else(|| b64(&bytes), Json::String)
                }
                _ => b64(&bytes),
            },
            Err(_) => Json::Null,
        },
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Duration(d) => json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// A `?fields=` list: dotted paths into the record.
pub fn parse_fields(s: &str) -> Result<Vec<Vec<String>>, String> {
    let mut paths = Vec::new();
    for f in s.split(',') {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        let path: Vec<String> = f.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("fields: {f:?} is not a dotted field name"));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err("fields: no field named".into());
    }
    Ok(paths)
}

/// The parts of `record` the paths name, in the same nesting; a path the
/// record does not have is left out.
pub fn project(record: &Json, paths: &[Vec<String>]) -> Json {
    let mut out = Map::new();
    for path in paths {
        let mut v = record;
        let mut found = true;
        for key in path {
            match v.get(key) {
                Some(next) => v = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            insert(&mut out, path, v.clone());
        }
    }
    Json::Object(out)
}

fn insert(out: &mut Map<String, Json>, path: &[String], v: Json) {
    let (first, rest) = path.split_first().expect("a path has a name");
    if rest.is_empty() {
        out.insert(first.clone(), v);
        return;
    }
    let inner = out
        .entry(first.clone())
        .or_insert_with(|| Json::Object(Map::new()));
    // A whole value already asked for holds this part.
    if let Json::Object(m) = inner {
        insert(m, rest, v);
    }
}

/// Whether the schema has the dotted path (through records, and unions of
/// a record with null).
pub fn has_path(schema: &Schema, path: &[String]) -> bool {
    fn fields_of<'a>(
        s: &'a Schema,
        names: &'a BTreeMap<String, &'a Schema>,
    ) -> Option<&'a apache_avro::schema::RecordSchema> {
        match s {
            Schema::Record(r) => Some(r),
            Schema::Ref { name } => names
                .get(&name.fullname(None))
                .and_then(|s| fields_of(s, names)),
            Schema::Union(u) => u.variants().iter().find_map(|v| fields_of(v, names)),
            _ => None,
        }
    }
    let mut names = BTreeMap::new();
    collect_names(schema, &mut names);
    let mut s = schema;
    for key in path {
        let Some(r) = fields_of(s, &names) else {
            return false;
        };
        match r.fields.iter().find(|f| &f.name == key) {
            Some(f) => s = &f.schema,
            None => return false,
        }
    }
    true
}

fn collect_names<'a>(s: &'a Schema, names: &mut BTreeMap<String, &'a Schema>) {
    match s {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), s);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Decimal(apache_avro::schema::DecimalSchema {
            inner: apache_avro::schema::InnerDecimalSchema::Fixed(f),
            ..
        }) => {
            names.insert(f.name.fullname(None), s);
        }
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Hubs and clients.

/// How a client asked to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOpts {
    pub fields: Option<Vec<Vec<String>>>,
    pub max_rate: u32,
}

/// Every watched channel's hub.
#[derive(Default)]
pub struct Live {
    hubs: Mutex<BTreeMap<String, Arc<Hub>>>,
}

struct Hub {
    /// The configuration it was started with.
    spec: Arc<ChannelSpec>,
    clients: Mutex<BTreeMap<u64, Arc<Queue>>>,
    next_id: Mutex<u64>,
    /// Told when the last client went: the hub task ends, closing its socket.
    stop: Notify,
}

/// One client's records, waiting for its task.
struct Queue {
    state: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    records: VecDeque<Arc<Json>>,
    dropped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    fn push(&self, r: Arc<Json>) {
        let mut p = lock(&self.state);
        if p.records.len() >= QUEUE {
            p.records.pop_front();
            p.dropped += 1;
        }
        p.records.push_back(r);
        drop(p);
        self.ready.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *lock(&self.state))
    }
}

/// Why a client cannot be registered.
pub enum Refusal {
    /// The channel has [`MAX_CLIENTS`] already.
    Full,
    /// The channel cannot be watched: told to the client as `{"error": ...}`.
    Unwatchable(String),
}

/// A client of a hub, until dropped.
pub struct Registration {
    live: Arc<Live>,
    channel: String,
    hub: Arc<Hub>,
    id: u64,
    queue: Arc<Queue>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut hubs = lock(&self.live.hubs);
        let mut clients = lock(&self.hub.clients);
        clients.remove(&self.id);
        if clients.is_empty() {
            if hubs
                .get(&self.channel)
                .is_some_and(|h| Arc::ptr_eq(h, &self.hub))
            {
                hubs.remove(&self.channel);
            }
            self.hub.stop.notify_one();
        }
    }
}

impl Live {
    /// Registers a client of the channel, starting its hub (joining the
    /// group) if it is the first.
    pub fn register(self: &Arc<Self>, spec: &Arc<ChannelSpec>) -> Result<Registration, Refusal> {
        let mut hubs = lock(&self.hubs);
        // A hub of an older configuration serves its clients on until they
        // go; new clients get a hub of the current one.
        let hub = match hubs.get(&spec.name).filter(|h| Arc::ptr_eq(&h.spec, spec)) {
            Some(h) => h.clone(),
            None => {
                let source = Source::open(spec).map_err(Refusal::Unwatchable)?;
                let hub = Arc::new(Hub {
                    spec: spec.clone(),
                    clients: Mutex::new(BTreeMap::new()),
                    next_id: Mutex::new(0),
                    stop: Notify::new(),
                });
                tokio::spawn(run_hub(hub.clone(), source, spec.name.clone()));
                hubs.insert(spec.name.clone(), hub.clone());
                hub
            }
        };
        let mut clients = lock(&hub.clients);
        if clients.len() >= MAX_CLIENTS {
            return Err(Refusal::Full);
        }
        let id = {
            let mut n = lock(&hub.next_id);
            *n += 1;
            *n
        };
        let queue = Arc::new(Queue {
            state: Mutex::new(Pending::default()),
            ready: Notify::new(),
        });
        clients.insert(id, queue.clone());
        drop(clients);
        Ok(Registration {
            live: self.clone(),
            channel: spec.name.clone(),
            hub: hub.clone(),
            id,
            queue,
        })
    }
}

/// A channel's decimated group: the joined socket and the decoding.
struct Source {
    socket: tokio::net::UdpSocket,
    schema: Schema,
    header: Option<[u8; 10]>,
}

impl Source {
    fn open(spec: &ChannelSpec) -> Result<Source, String> {
        let Some(d) = &spec.decimated else {
            return Err(format!(
                "channel {} has no decimated output: nothing to watch",
                spec.name
            ));
        };
        if !d.output.dest.ip().is_multicast() {
            return Err(format!(
                "channel {}'s decimated output goes to {} (unicast), not a group the orchestrator can join",
                spec.name, d.output.dest
            ));
        }
        if d.output.shared {
            // Every channel of a shared group sends there: the datagrams of
            // this one cannot be told from the others' by the group alone.
            return Err(format!(
                "channel {}'s decimated output {} is shared with other channels (decimated.shared = true): the live view cannot tell this channel's records apart; give the channel a group of its own to watch it",
                spec.name, d.output.dest
            ));
        }
        let loaded = relay_channel::schema::load(spec).map_err(|e| e.to_string())?;
        let schema = Schema::parse_str(&loaded.text).map_err(|e| e.to_string())?;
        // The hub builds its own; one that cannot be built is said now.
        apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .map_err(|e| format!("cannot decode channel {}'s schema: {e}", spec.name))?;
        let socket = join(&d.output).map_err(|e| {
            format!(
                "cannot join {} for channel {}: {e}",
                d.output.dest, spec.name
            )
        })?;
        tracing::info!(channel = %spec.name, group = %d.output.dest, "live view: joined the decimated group");
        Ok(Source {
            socket,
            schema,
            header: (spec.receive.encoding == Encoding::SingleObject)
                .then_some(loaded.single_object_header),
        })
    }
}

/// A socket bound to the output's group and port, joined on its interface.
fn join(out: &OutputSpec) -> io::Result<tokio::net::UdpSocket> {
    let group: Ipv4Addr = *out.dest.ip();
    let iface = match &out.interface {
        Some(i) => relay_channel::interface::resolve(i)?,
        None => Ipv4Addr::UNSPECIFIED,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Linux: only this socket's own groups (see relay-channel's net.rs);
    // other kernels deliver so already.
    #[cfg(target_os = "linux")]
    s.set_multicast_all_v4(false)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&SockAddr::from(SocketAddrV4::new(group, out.dest.port())))?;
    s.join_multicast_v4(&group, &iface)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

async fn run_hub(hub: Arc<Hub>, source: Source, channel: String) {
    let reader =
        match apache_avro::reader::datum::GenericDatumReader::builder(&source.schema).build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "live view: cannot decode this schema");
                return;
            }
        };
    let mapping = Mapping::new(&source.schema);
    let mut buf = vec![0u8; 65_536];
    let mut bad = 0u64;
    loop {
        let n = tokio::select! {
            _ = hub.stop.notified() => break,
            r = source.socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "live view: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut d = &buf[..n];
        if let Some(h) = &source.header {
            match d.strip_prefix(&h[..]) {
                Some(rest) => d = rest,
                None => {
                    bad += 1;
                    continue;
                }
            }
        }
        let record = match reader.read_value(&mut d) {
            Ok(v) => Arc::new(mapping.to_json(&v)),
            Err(e) => {
                bad += 1;
                tracing::debug!(%channel, error = %e, "live view: a datagram does not decode");
                continue;
            }
        };
        for q in lock(&hub.clients).values() {
            q.push(record.clone());
        }
    }
    tracing::info!(%channel, undecodable = bad, "live view: left the decimated group (no client left)");
}

/// Records a client may be sent: `rate` a second, in bursts of at most a
/// tenth of a second's worth (one at least).
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        let capacity = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: 1.0,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.capacity);
        self.at = now;
    }

    /// How long until one record may go.
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes up to `n` records' worth; at least one if [`Bucket::wait`] said zero.
    fn take(&mut self, n: usize) -> usize {
        let k = (self.tokens.floor() as usize).min(n).max(1);
        self.tokens -= k as f64;
        k
    }
}

/// Why a client's service ended.
enum Ended {
    /// The client closed, or the connection failed.
    Client,
    /// The server is shutting down.
    Shutdown,
    /// The client took nothing for [`SEND_TIMEOUT`].
    Stalled,
}

/// Serves a registered client until it leaves or the server shuts down
/// (`closing` turns true).
pub async fn serve_client(
    mut ws: axum::extract::ws::WebSocket,
    reg: Registration,
    opts: ClientOpts,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use axum::extract::ws::Message;
    let queue = reg.queue.clone();
    let mut bucket = Bucket::new(opts.max_rate);
    let ended = 'serve: loop {
        tokio::select! {
            _ = queue.ready.notified() => {}
            m = ws.recv() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break 'serve Ended::Client,
                Some(Ok(_)) => continue,
            },
            _ = closing.wait_for(|c| *c) => break 'serve Ended::Shutdown,
        }
        let wait = bucket.wait(Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closing.wait_for(|c| *c) => break 'serve Ended::Shutdown,
            }
            bucket.refill(Instant::now());
        }
        let pending = queue.take();
        if pending.records.is_empty() {
            continue;
        }
        // Over the rate, the newest records win.
        let k = bucket.take(pending.records.len());
        let skip = pending.records.len() - k;
        // The hub's records are shared: serialized as they are, unless
        // fields are picked.
        let records: Vec<Cow<'_, Json>> = pending
            .records
            .iter()
            .skip(skip)
            .map(|r| match &opts.fields {
                Some(paths) => Cow::Owned(project(r, paths)),
                None => Cow::Borrowed(&**r),
            })
            .collect();
        let mut messages = Vec::with_capacity(2);
        if pending.dropped > 0 {
            messages.push(json!({ "dropped": pending.dropped }).to_string());
        }
        messages.push(if records.len() == 1 {
            records[0].to_string()
        } else {
            serde_json::to_string(&records).expect("JSON values serialize")
        });
        for m in messages {
            tokio::select! {
                sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Text(m.into()))) => match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break 'serve Ended::Client,
                    Err(_) => break 'serve Ended::Stalled,
                },
                _ = closing.wait_for(|c| *c) => break 'serve Ended::Shutdown,
            }
        }
    };
    if let Ended::Stalled = ended {
        tracing::info!(
            channel = %reg.channel,
            "live view: closing a client that read nothing for {}s",
            SEND_TIMEOUT.as_secs()
        );
    }
    if let Ended::Shutdown = ended {
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(None))).await;
    }
    drop(reg);
}

/// Tells the client why it cannot watch, then closes.
pub async fn refuse_client(mut ws: axum::extract::ws::WebSocket, error: String) {
    use axum::extract::ws::Message;
    let text = json!({ "error": error }).to_string();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        ws.send(Message::Text(text.into())).await?;
        ws.send(Message::Close(None)).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_avro_type_maps_to_json() {
        use apache_avro::{BigDecimal, Days, Decimal, Duration as AvroDuration, Millis, Months};
        let cases: Vec<(Value, Json)> = vec![
            (Value::Null, Json::Null),
            (Value::Boolean(true), json!(true)),
            (Value::Int(-7), json!(-7)),
            (Value::Long(1 << 40), json!(1_u64 << 40)),
            (Value::Long((1 << 53) - 1), json!((1_i64 << 53) - 1)),
            (Value::Long(-((1 << 53) - 1)), json!(-((1_i64 << 53) - 1))),
            (Value::Long(1 << 53), json!("9007199254740992")),
            (Value::Long(i64::MIN), json!("-9223372036854775808")),
            (Value::Float(1.5), json!(1.5)),
            (Value::Double(-0.25), json!(-0.25)),
            (Value::Double(f64::NAN), Json::Null),
            (Value::Double(f64::INFINITY), Json::Null),
            (Value::Bytes(vec![0, 1, 2, 255]), json!("AAEC/w==")),
            (Value::Fixed(3, b"abc".to_vec()), json!("YWJj")),
            (Value::String("héllo".into()), json!("héllo")),
            (Value::Enum(1, "RED".into()), json!("RED")),
            (Value::Union(0, Box::new(Value::Null)), Json::Null),
            (Value::Union(1, Box::new(Value::Int(3))), json!(3)),
            (
                Value::Array(vec![Value::Int(1), Value::String("x".into())]),
                json!([1, "x"]),
            ),
            (
                Value::Map(HashMap::from([
                    ("b".to_string(), Value::Long(2)),
                    ("a".to_string(), Value::Null),
                ])),
                json!({"a": null, "b": 2}),
            ),
            (
                Value::Record(vec![
                    ("z".into(), Value::Int(1)),
                    (
                        "inner".into(),
                        Value::Record(vec![("d".into(), Value::Double(2.5))]),
                    ),
                ]),
                json!({"z": 1, "inner": {"d": 2.5}}),
            ),
            (Value::Date(19_000), json!(19_000)),
            (Value::TimeMillis(1_000), json!(1_000)),
            (Value::TimeMicros(1_000_000), json!(1_000_000)),
            (
                Value::TimestampMillis(1_795_383_000_000),
                json!(1_795_383_000_000_i64),
            ),
            (
                Value::TimestampMicros(1_795_383_000_000_000),
                json!(1_795_383_000_000_000_i64),
            ),
            (
                Value::TimestampNanos(1_795_383_000_000_000_001),
                json!(1_795_383_000_000_000_001_i64),
            ),
            (Value::LocalTimestampMillis(5), json!(5)),
            (Value::LocalTimestampMicros(6), json!(6)),
            (Value::LocalTimestampNanos(7), json!(7)),
            (Value::Decimal(Decimal::from(vec![1u8, 24])), json!("ARg=")),
            (
                Value::BigDecimal("12.50".parse::<BigDecimal>().unwrap()),
                json!("12.50"),
            ),
            (
                Value::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()),
                json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            ),
            (
                Value::Duration(AvroDuration::new(
                    Months::new(1),
                    Days::new(2),
                    Millis::new(3),
                )),
                json!({"months": 1, "days": 2, "millis": 3}),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(to_json(&v), want, "{v:?}");
        }
    }

    #[test]
    fn a_record_decoded_from_the_wire_keeps_its_field_order() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
                {"name": "o", "type": ["null", {"type": "record", "name": "I", "fields": [
                    {"name": "x", "type": "float"}]}]},
                {"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}}
            ]}"#,
        )
        .unwrap();
        let v = Value::Record(vec![
            ("t".into(), Value::TimestampMicros(42)),
            ("e".into(), Value::Enum(1, "B".into())),
            (
                "o".into(),
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![("x".into(), Value::Float(0.5))])),
                ),
            ),
            ("f".into(), Value::Fixed(2, vec![0xff, 0])),
        ]);
        let mut bytes = Vec::new();
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value(&mut bytes, v)
            .unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        let j = to_json(&back);
        assert_eq!(
            j.to_string(),
            r#"{"t":42,"e":"B","o":{"x":0.5},"f":"/wA="}"#
        );
        assert!(has_path(&schema, &["o".into(), "x".into()]));
        assert!(has_path(&schema, &["e".into()]));
        assert!(!has_path(&schema, &["o".into(), "y".into()]));
        assert!(!has_path(&schema, &["e".into(), "x".into()]));
    }

    #[test]
    fn decimals_are_decimal_strings_where_the_schema_gives_their_scale() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                {"name": "opt", "type": ["null", {"type": "fixed", "name": "D", "size": 4, "logicalType": "decimal", "precision": 8, "scale": 3}]},
                {"name": "list", "type": {"type": "array", "items": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 0}}},
                {"name": "again", "type": {"type": "map", "values": "D"}}
            ]}"#,
        )
        .unwrap();
        let dec = |b: &[u8]| Value::Decimal(apache_avro::Decimal::from(b.to_vec()));
        let v = Value::Record(vec![
            ("price".into(), dec(&[0x04, 0xe2])), // 1250
            (
                "opt".into(),
                Value::Union(1, Box::new(dec(&[0xff, 0xff, 0xff, 0xfb]))),
            ), // -5
            (
                "list".into(),
                Value::Array(vec![dec(&[0x7f]), dec(&[0x80])]),
            ),
            (
                "again".into(),
                Value::Map(HashMap::from([("k".to_string(), dec(&[0, 0, 0x30, 0x39]))])), // 12345
            ),
        ]);
        assert_eq!(
            Mapping::new(&schema).to_json(&v),
            json!({"price": "12.50", "opt": "-0.005", "list": ["127", "-128"], "again": {"k": "12.345"}})
        );
        // Without the schema: the bytes.
        assert_eq!(to_json(&dec(&[0x04, 0xe2])), json!("BOI="));
        assert_eq!(decimal_string(&[0; 17], 2), None);
        assert_eq!(decimal_string(&[0x01], 3).as_deref(), Some("0.001"));
    }

    #[test]
    fn fields_pick_dotted_paths() {
        let r = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": null});
        let p = parse_fields("a,b.c,missing,b.x").unwrap();
        assert_eq!(project(&r, &p), json!({"a": 1, "b": {"c": 2}}));
        let p = parse_fields("b,b.c").unwrap();
        assert_eq!(project(&r, &p), json!({"b": {"c": 2, "d": 3}}));
        assert!(parse_fields("a,,b..c").is_err());
        assert!(parse_fields(",").is_err());
    }

    #[test]
    fn the_bucket_allows_the_rate_and_no_more() {
        for (rate, lo, hi) in [(5, 10, 11), (100, 200, 210)] {
            let start = Instant::now();
            let mut b = Bucket::new(rate);
            b.at = start;
            let (mut sent, mut now) = (0, start);
            while now - start < Duration::from_secs(2) {
                let w = b.wait(now);
                if w.is_zero() {
                    sent += b.take(1_000);
                } else {
                    now += w;
                }
                now += Duration::from_micros(100);
            }
            assert!((lo..=hi).contains(&sent), "rate {rate}: {sent}");
        }
    }
}
