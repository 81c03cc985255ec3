//! A record's own time, read from its Avro bytes: the `archive.time_field`
//! of the channel (a `long` timestamp, at a dotted path through nested
//! records), for the archive's block index and for exports that select
//! records by it.
//!
//! The schema is compiled once into a small tree of skips ([`RecordTime::new`]):
//! fixed-size fields are a byte count, the time field a capture. Reading a
//! record's time ([`RecordTime::read`]) walks only up to the time field;
//! walking a whole record ([`RecordTime::walk`]) also finds where the next
//! one starts, for blocks whose records are not delimited. Records reach
//! here already validated; a record that does not walk gives `None`.

use std::collections::HashMap;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamespaceRef, RecordSchema,
    ResolvedSchema, Schema, UuidSchema,
};

use crate::avro_leaf;
use crate::varint;

/// The unit of a timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Millis,
    Micros,
    Nanos,
}

impl TimeUnit {
    /// `ms`, `us` or `ns`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Millis => "ms",
            TimeUnit::Micros => "us",
            TimeUnit::Nanos => "ns",
        }
    }

    /// Units of this kind in a microsecond, as a ratio: `value * mul / div`
    /// is microseconds.
    pub fn to_micros(self, v: i64) -> i64 {
        match self {
            TimeUnit::Millis => v.saturating_mul(1000),
            TimeUnit::Micros => v,
            TimeUnit::Nanos => v.div_euclid(1000),
        }
    }

    /// Microseconds as this unit (rounded down).
    pub fn from_micros(self, us: i64) -> i64 {
        match self {
            TimeUnit::Millis => us.div_euclid(1000),
            TimeUnit::Micros => us,
            TimeUnit::Nanos => us.saturating_mul(1000),
        }
    }

    /// The unit of a timestamp schema; `None` for any other schema.
    pub fn of(schema: &Schema) -> Option<TimeUnit> {
        match schema {
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Some(TimeUnit::Millis),
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Some(TimeUnit::Micros),
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Some(TimeUnit::Nanos),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    /// So many bytes (null, boolean, float, double, fixed).
    Fixed(usize),
    /// A varint (int, long, enum, and their logical types).
    Varint,
    /// A length, then so many bytes (bytes, string).
    Bytes,
    Union(Vec<usize>),
    Array(usize),
    Map(usize),
    Record(Vec<usize>),
    /// The time field: a long, captured.
    Capture,
}

impl From<avro_leaf::Leaf> for Node {
    fn from(leaf: avro_leaf::Leaf) -> Node {
        match leaf {
            avro_leaf::Leaf::Fixed(n) => Node::Fixed(n),
            avro_leaf::Leaf::Varint => Node::Varint,
            avro_leaf::Leaf::Bytes => Node::Bytes,
        }
    }
}

/// The name of a named leaf type (enum, fixed, and the logical types over
/// fixed).
fn named_leaf(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Enum(EnumSchema { name, .. })
        | Schema::Fixed(FixedSchema { name, .. })
        | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, .. }))
        | Schema::Duration(FixedSchema { name, .. })
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(FixedSchema { name, .. }),
            ..
        }) => Some(name),
        _ => None,
    }
}

/// Why a walk stopped.
enum Stop {
    /// The time was read and the caller wants nothing more.
    Done,
    /// The bytes do not walk.
    Bad,
}

/// Reads one field's value, a `long` timestamp, out of a schema's records.
#[derive(Debug, Clone)]
pub struct RecordTime {
    nodes: Vec<Node>,
    root: usize,
    unit: TimeUnit,
}

impl RecordTime {
    /// The reader of `path` (dotted names through nested records) in
    /// `schema`, a record; an error says why the field cannot be read (not
    /// there, not a timestamp, a named type that does not resolve).
    pub fn new(schema: &Schema, path: &str) -> Result<RecordTime, String> {
        let resolved = ResolvedSchema::new(schema).map_err(|e| e.to_string())?;
        let mut c = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
            defs: resolved.get_names(),
            unit: None,
        };
        let parts: Vec<&str> = path.split('.').collect();
        let root = c.compile(schema, None, Some(&parts))?;
        let unit = c
            .unit
            .ok_or_else(|| format!("\"{path}\" is not a timestamp field of the schema"))?;
        Ok(RecordTime {
            nodes: c.nodes,
            root,
            unit,
        })
    }

    /// The time field's unit.
    pub fn unit(&self) -> TimeUnit {
        self.unit
    }

    /// The time of the record that `record` starts with (its bytes up to
    /// the time field are read, no further).
    #[inline]
    pub fn read(&self, record: &[u8]) -> Option<i64> {
        let mut pos = 0;
        let mut time = None;
        match self.go(self.root, record, &mut pos, &mut time, true) {
            Err(Stop::Done) => time,
            _ => None,
        }
    }

    /// Walks the whole record at `pos` of `data`, leaving `pos` after it:
    /// its time; `None` if it does not walk (`pos` is then anywhere).
    pub fn walk(&self, data: &[u8], pos: &mut usize) -> Option<i64> {
        let mut time = None;
        match self.go(self.root, data, pos, &mut time, false) {
            Ok(()) => time,
            Err(_) => None,
        }
    }

    fn go(
        &self,
        node: usize,
        b: &[u8],
        pos: &mut usize,
        time: &mut Option<i64>,
        early: bool,
    ) -> Result<(), Stop> {
        match &self.nodes[node] {
            Node::Fixed(n) => {
                *pos = pos
                    .checked_add(*n)
                    .filter(|&p| p <= b.len())
                    .ok_or(Stop::Bad)?;
            }
            Node::Varint => {
                long(b, pos)?;
            }
            Node::Bytes => {
                let n = usize::try_from(long(b, pos)?).map_err(|_| Stop::Bad)?;
                *pos = pos
                    .checked_add(n)
                    .filter(|&p| p <= b.len())
                    .ok_or(Stop::Bad)?;
            }
            Node::Union(branches) => {
                let i = usize::try_from(long(b, pos)?).map_err(|_| Stop::Bad)?;
                let branch = *branches.get(i).ok_or(Stop::Bad)?;
                self.go(branch, b, pos, time, early)?;
            }
            Node::Array(items) => {
                self.blocks(b, pos, |pos| self.go(*items, b, pos, time, early))?
            }
            Node::Map(values) => self.blocks(b, pos, |pos| {
                let n = usize::try_from(long(b, pos)?).map_err(|_| Stop::Bad)?;
                *pos = pos
                    .checked_add(n)
                    .filter(|&p| p <= b.len())
                    .ok_or(Stop::Bad)?;
                self.go(*values, b, pos, time, early)
            })?,
            Node::Record(fields) => {
                for &f in fields {
                    self.go(f, b, pos, time, early)?;
                }
            }
            Node::Capture => {
                *time = Some(long(b, pos)?);
                if early {
                    return Err(Stop::Done);
                }
            }
        }
        Ok(())
    }

    /// Array or map blocks: a count (negative: then a byte size), items,
    /// until a count of 0.
    fn blocks(
        &self,
        b: &[u8],
        pos: &mut usize,
        mut item: impl FnMut(&mut usize) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        loop {
            let mut n = long(b, pos)?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                n = n.checked_neg().ok_or(Stop::Bad)?;
                long(b, pos)?;
            }
            // Every item takes at least a byte, but for empty ones: bound
            // the loop by what is left all the same.
            if n as u128 > (b.len() - *pos) as u128 + 1 && n > 1 << 24 {
                return Err(Stop::Bad);
            }
            for _ in 0..n {
                item(pos)?;
            }
        }
    }
}

#[inline]
fn long(b: &[u8], pos: &mut usize) -> Result<i64, Stop> {
    let (z, next) = varint::read(b, *pos, varint::MAX_LONG_LEN).map_err(|_| Stop::Bad)?;
    *pos = next;
    Ok(varint::unzigzag(z))
}

struct Compiler<'s> {
    nodes: Vec<Node>,
    /// Named types compiled so far (off the time field's path).
    named: HashMap<Name, usize>,
    defs: &'s apache_avro::schema::NamesRef<'s>,
    unit: Option<TimeUnit>,
}

impl<'s> Compiler<'s> {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Compiles `schema`; `path` is what is left of the time field's path
    /// when `schema` is on it (the records along it are compiled for this
    /// one place, not shared).
    fn compile(
        &mut self,
        schema: &'s Schema,
        ns: NamespaceRef<'_>,
        path: Option<&[&str]>,
    ) -> Result<usize, String> {
        if let Some(path) = path.filter(|p| p.is_empty()) {
            debug_assert!(path.is_empty());
            return match TimeUnit::of(schema) {
                Some(unit) => {
                    self.unit = Some(unit);
                    Ok(self.push(Node::Capture))
                }
                None => Err(
                    "the time field is not a timestamp (a long with a timestamp logical type)"
                        .into(),
                ),
            };
        }
        if let Some(leaf) = avro_leaf::leaf(schema) {
            let node = Node::from(leaf);
            // Named leaves are kept by name, for the references to them.
            return Ok(match named_leaf(schema) {
                Some(name) => self.named(name, ns, node),
                None => self.push(node),
            });
        }
        let node = match schema {
            Schema::Array(a) => {
                let items = self.compile(&a.items, ns, None)?;
                Node::Array(items)
            }
            Schema::Map(m) => {
                let values = self.compile(&m.types, ns, None)?;
                Node::Map(values)
            }
            Schema::Union(u) => {
                let branches = u
                    .variants()
                    .iter()
                    .map(|s| self.compile(s, ns, None))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::Union(branches)
            }
            Schema::Record(r) => return self.record(r, ns, path),
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns);
                if path.is_none() {
                    if let Some(&i) = self.named.get(fq.as_ref()) {
                        return Ok(i);
                    }
                }
                let def = *self
                    .defs
                    .get(fq.as_ref())
                    .ok_or_else(|| format!("the schema names {fq} but does not define it"))?;
                return self.compile(def, fq.namespace(), path);
            }
            _ => unreachable!("leaf types are classified by avro_leaf::leaf"),
        };
        Ok(self.push(node))
    }

    fn named(&mut self, name: &Name, ns: NamespaceRef<'_>, node: Node) -> usize {
        let i = self.push(node);
        self.named
            .insert(name.fully_qualified_name(ns).into_owned(), i);
        i
    }

    fn record(
        &mut self,
        r: &'s RecordSchema,
        ns: NamespaceRef<'_>,
        path: Option<&[&str]>,
    ) -> Result<usize, String> {
        let fq = r.name.fully_qualified_name(ns).into_owned();
        let index = self.push(Node::Record(Vec::new()));
        if path.is_none() {
            // Before the fields, so that they can refer back to it.
            self.named.insert(fq.clone(), index);
        }
        let (here, rest) = match path {
            Some([first, rest @ ..]) => (Some(*first), Some(rest)),
            _ => (None, None),
        };
        if let Some(h) = here {
            if !r.fields.iter().any(|f| f.name == h) {
                return Err(format!("record {} has no field \"{h}\"", r.name.name()));
            }
        }
        let mut fields = Vec::with_capacity(r.fields.len());
        for f in &r.fields {
            let on_path = (Some(f.name.as_str()) == here).then_some(rest).flatten();
            fields.push(self.compile(&f.schema, fq.namespace(), on_path)?);
        }
        self.nodes[index] = Node::Record(fields);
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    const SCHEMA: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "label", "type": "string"},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "int"}}},
        {"name": "maybe", "type": ["null", "double"]},
        {"name": "inner", "type": {"type": "record", "name": "In", "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
        ]}},
        {"name": "other", "type": "In"},
        {"name": "tail", "type": "string"}
    ]}"#;

    #[allow(deprecated)] // to_avro_datum: the plain way to encode one datum
    fn encode(at: i64, label: &str) -> Vec<u8> {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let inner = |t: i64| {
            Value::Record(vec![
                ("flag".into(), Value::Boolean(true)),
                ("at".into(), Value::TimestampMillis(t)),
            ])
        };
        let v = Value::Record(vec![
            ("label".into(), Value::String(label.into())),
            (
                "tags".into(),
                Value::Map(
                    [(
                        "k".to_string(),
                        Value::Array(vec![Value::Int(1), Value::Int(-7)]),
                    )]
                    .into_iter()
                    .collect(),
                ),
            ),
            (
                "maybe".into(),
                Value::Union(1, Box::new(Value::Double(2.5))),
            ),
            ("inner".into(), inner(at)),
            ("other".into(), inner(-1)),
            ("tail".into(), Value::String("end".into())),
        ]);
        apache_avro::to_avro_datum(&schema, v).unwrap()
    }

    #[test]
    fn reads_a_nested_time_past_maps_unions_and_strings_and_walks_whole_records() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let rt = RecordTime::new(&schema, "inner.at").unwrap();
        assert_eq!(rt.unit(), TimeUnit::Millis);
        let (a, b) = (encode(1_700_000_000_123, "x"), encode(-5, "longer label"));
        assert_eq!(rt.read(&a), Some(1_700_000_000_123));
        // The same named type elsewhere is not the time field.
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let mut pos = 0;
        assert_eq!(rt.walk(&both, &mut pos), Some(1_700_000_000_123));
        assert_eq!(pos, a.len());
        assert_eq!(rt.walk(&both, &mut pos), Some(-5));
        assert_eq!(pos, both.len());
        assert_eq!(
            rt.walk(&both[..both.len() - 1], &mut 0),
            Some(1_700_000_000_123)
        );
        let mut p = a.len();
        assert_eq!(
            rt.walk(&both[..both.len() - 1], &mut p),
            None,
            "a cut record"
        );
    }

    #[test]
    fn a_path_that_is_no_timestamp_is_refused() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        assert!(RecordTime::new(&schema, "label")
            .unwrap_err()
            .contains("not a timestamp"));
        assert!(RecordTime::new(&schema, "inner.nope")
            .unwrap_err()
            .contains("no field \"nope\""));
        assert!(RecordTime::new(&schema, "nope").is_err());
    }
}
