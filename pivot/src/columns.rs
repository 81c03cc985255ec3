//! Records to columns: a channel's schema, with the signals asked for,
//! becomes a list of columns ([`Columns::new`]), each an Arrow builder
//! that decodes its field straight from the Avro bytes
//! ([`Columns::decode`]), without an Avro value in between.
//!
//! The top record's fields, and the fields of records nested in it, are
//! columns of their own, named by their dotted path (`pos.x`), as
//! `pandas.json_normalize` names them. Below that, Arrow's types:
//!
//! | Avro | Arrow |
//! |---|---|
//! | null | null |
//! | boolean | boolean |
//! | int, long, float, double | int32, int64, float32, float64 |
//! | string, uuid (string) | utf8 |
//! | bytes, big-decimal | binary |
//! | fixed, duration, uuid (fixed) | fixed_size_binary |
//! | decimal (precision up to 38) | decimal128; wider: binary |
//! | enum | dictionary<int32, utf8> of the symbols |
//! | date | date32 |
//! | time-millis, time-micros | time32[ms], time64[us] |
//! | timestamp-millis/micros/nanos | timestamp[unit, UTC] |
//! | local-timestamp-* | timestamp[unit] (no zone) |
//! | array | list<item> |
//! | map | map<utf8, value> |
//! | union of null and one type | that type, nullable (null is null) |
//! | other unions | struct of one nullable field a branch, named after the branch's type; the branch taken holds the value |
//! | record (inside an array, a map or a union) | struct |
//!
//! A recursive schema has no fixed set of columns: it is refused.

use std::sync::Arc;

use apache_avro::schema::{
    DecimalSchema, InnerDecimalSchema, Name, NamespaceRef, RecordSchema, ResolvedSchema, Schema,
    UuidSchema,
};
use relay_channel::avro_leaf;

use arrow::array::{
    new_null_array, Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBufferBuilder,
    BooleanBuilder, Date32Builder, Decimal128Builder, DictionaryArray, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListArray, MapArray, NullArray,
    StringArray, StringBuilder, StructArray, Time32MillisecondBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Int32Type, TimeUnit};

/// Why a schema or a signal cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the schema cannot be read: {0}")]
    Schema(String),
    #[error("the schema is recursive (type {0} contains itself): it has no fixed set of columns")]
    Recursive(String),
    #[error(
        "no signal \"{0}\" in the schema (signals are field names, dotted through nested records)"
    )]
    NoSignal(String),
}

/// Reading Avro bytes failed: the record is not of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Malformed;

type R = Result<(), Malformed>;

/// One column's builder and decoder.
enum Col {
    /// Not exported: walked over.
    Skip(Skip),
    Null(usize),
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Date(Date32Builder),
    TimeMs(Time32MillisecondBuilder),
    TimeUs(Time64MicrosecondBuilder),
    TsMs(TimestampMillisecondBuilder),
    TsUs(TimestampMicrosecondBuilder),
    TsNs(TimestampNanosecondBuilder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Fixed(FixedSizeBinaryBuilder, usize),
    Decimal(Decimal128Builder, Option<usize>),
    Enum(Int32Builder, Arc<StringArray>),
    /// A union of null and one type: `null` is the null branch's index.
    Nullable(usize, Box<Col>),
    /// Any other union: one field a branch (`None` for the null branch).
    Union(Vec<Option<Col>>, Fields, BooleanBufferBuilder),
    List(Box<Col>, Vec<i32>, BooleanBufferBuilder, Arc<Field>),
    Map(
        Box<Col>,
        StringBuilder,
        Vec<i32>,
        BooleanBufferBuilder,
        Arc<Field>,
    ),
    Struct(Vec<Col>, Fields, BooleanBufferBuilder),
}

/// Walking over a value not exported.
#[derive(Debug, Clone)]
enum Skip {
    Fixed(usize),
    Varint,
    Bytes,
    Union(Vec<Skip>),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Record(Vec<Skip>),
}

impl From<avro_leaf::Leaf> for Skip {
    fn from(leaf: avro_leaf::Leaf) -> Skip {
        match leaf {
            avro_leaf::Leaf::Fixed(n) => Skip::Fixed(n),
            avro_leaf::Leaf::Varint => Skip::Varint,
            avro_leaf::Leaf::Bytes => Skip::Bytes,
        }
    }
}

/// A record's place in the top record: a column, or a flattened record.
enum Slot {
    Col(usize),
    Record(Vec<Slot>),
}

/// A channel's columns.
pub struct Columns {
    cols: Vec<Col>,
    /// `(name, type)` of each column exported, in order.
    fields: Vec<Field>,
    /// The index of each exported column in `cols`.
    exported: Vec<usize>,
    top: Vec<Slot>,
}

impl Columns {
    /// The columns of `schema` (a record) for `signals` (dotted field
    /// names; `None` for every field); `always` is exported in any case
    /// (the time field).
    pub fn new(
        schema: &Schema,
        signals: Option<&[String]>,
        always: Option<&str>,
    ) -> Result<Columns, PlanError> {
        let resolved = ResolvedSchema::new(schema).map_err(|e| PlanError::Schema(e.to_string()))?;
        let mut c = Compiler {
            defs: resolved.get_names(),
            open: Vec::new(),
        };
        let Schema::Record(root) = schema else {
            return Err(PlanError::Schema("the schema is not a record".into()));
        };
        let wanted: Option<Vec<String>> = signals.map(|s| {
            let mut w: Vec<String> = s.to_vec();
            if let Some(a) = always {
                w.push(a.to_string());
            }
            w
        });
        if let Some(w) = &wanted {
            for s in w {
                if !has_path(&c, root, root.name.namespace(), s) {
                    return Err(PlanError::NoSignal(s.clone()));
                }
            }
        }
        let mut out = Columns {
            cols: Vec::new(),
            fields: Vec::new(),
            exported: Vec::new(),
            top: Vec::new(),
        };
        let ns = root.name.namespace().map(str::to_owned);
        c.open
            .push(root.name.fully_qualified_name(None).into_owned());
        out.top = out.flatten(&mut c, root, ns.as_deref(), "", wanted.as_deref())?;
        Ok(out)
    }

    fn flatten(
        &mut self,
        c: &mut Compiler<'_>,
        record: &RecordSchema,
        ns: NamespaceRef<'_>,
        prefix: &str,
        wanted: Option<&[String]>,
    ) -> Result<Vec<Slot>, PlanError> {
        let mut slots = Vec::new();
        for f in &record.fields {
            let path = format!("{prefix}{}", f.name);
            let (schema, fns) = c.deref(&f.schema, ns)?;
            // Whether the field is exported: all of it, some of it, none.
            let whole = wanted.is_none_or(|w| w.contains(&path));
            let some = wanted.is_some_and(|w| w.iter().any(|s| s.starts_with(&format!("{path}."))));
            if let Schema::Record(inner) = schema {
                if whole || some {
                    let fq = inner.name.fully_qualified_name(fns.as_deref()).into_owned();
                    c.enter(&fq)?;
                    let inner_ns = inner.name.namespace().map(str::to_owned).or(fns.clone());
                    let sub = self.flatten(
                        c,
                        inner,
                        inner_ns.as_deref(),
                        &format!("{path}."),
                        if whole { None } else { wanted },
                    )?;
                    c.open.pop();
                    slots.push(Slot::Record(sub));
                    continue;
                }
            }
            let col = if whole {
                let (col, ty) = c.col(schema, fns.as_deref())?;
                self.fields.push(Field::new(&path, ty, true));
                self.exported.push(self.cols.len());
                col
            } else {
                Col::Skip(c.skip(schema, fns.as_deref())?)
            };
            slots.push(Slot::Col(self.cols.len()));
            self.cols.push(col);
        }
        Ok(slots)
    }

    /// The exported columns' names and types, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Decodes the record at `pos` of `data` into the columns, leaving
    /// `pos` after it. On error the columns may hold part of the record:
    /// the caller gives up on the whole export.
    pub fn decode(&mut self, data: &[u8], pos: &mut usize) -> Result<(), Malformed> {
        fn go(cols: &mut [Col], slots: &[Slot], b: &[u8], pos: &mut usize) -> R {
            for s in slots {
                match s {
                    Slot::Col(i) => cols[*i].decode(b, pos)?,
                    Slot::Record(sub) => go(cols, sub, b, pos)?,
                }
            }
            Ok(())
        }
        go(&mut self.cols, &self.top, data, pos)
    }

    /// Rows decoded since the last [`finish`](Self::finish).
    pub fn rows(&self) -> usize {
        self.exported.first().map_or(0, |&i| self.cols[i].len())
    }

    /// The columns decoded so far, as arrays; the builders start again
    /// empty.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.exported
            .iter()
            .map(|&i| self.cols[i].finish())
            .collect()
    }
}

/// Whether `path` names a field, through records, of `record`.
fn has_path(c: &Compiler<'_>, record: &RecordSchema, ns: NamespaceRef<'_>, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(f) = record.fields.iter().find(|f| f.name == head) else {
        return false;
    };
    match rest {
        None => true,
        Some(rest) => match c.deref(&f.schema, ns) {
            Ok((Schema::Record(inner), fns)) => {
                let inner_ns = inner.name.namespace().map(str::to_owned).or(fns);
                has_path(c, inner, inner_ns.as_deref(), rest)
            }
            _ => false,
        },
    }
}

struct Compiler<'s> {
    defs: &'s apache_avro::schema::NamesRef<'s>,
    /// Records being compiled, by full name: meeting one again is recursion.
    open: Vec<Name>,
}

impl<'s> Compiler<'s> {
    /// `schema` with a reference resolved, and the namespace it is in.
    fn deref<'a>(
        &self,
        schema: &'a Schema,
        ns: NamespaceRef<'_>,
    ) -> Result<(&'a Schema, Option<String>), PlanError>
    where
        's: 'a,
    {
        match schema {
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns);
                let def = self
                    .defs
                    .get(fq.as_ref())
                    .ok_or_else(|| PlanError::Schema(format!("{fq} is not defined")))?;
                Ok((*def, fq.namespace().map(str::to_owned)))
            }
            s => Ok((s, ns.map(str::to_owned))),
        }
    }

    fn enter(&mut self, fq: &Name) -> Result<(), PlanError> {
        if self.open.contains(fq) {
            return Err(PlanError::Recursive(fq.to_string()));
        }
        self.open.push(fq.clone());
        Ok(())
    }

    /// The builder of `schema`, and its Arrow type.
    fn col(&mut self, schema: &Schema, ns: NamespaceRef<'_>) -> Result<(Col, DataType), PlanError> {
        let (schema, ns) = self.deref(schema, ns)?;
        let ns = ns.as_deref();
        let utc = Some(Arc::from("UTC"));
        Ok(match schema {
            Schema::Null => (Col::Null(0), DataType::Null),
            Schema::Boolean => (Col::Bool(BooleanBuilder::new()), DataType::Boolean),
            Schema::Int => (Col::Int(Int32Builder::new()), DataType::Int32),
            Schema::Long => (Col::Long(Int64Builder::new()), DataType::Int64),
            Schema::Float => (Col::Float(Float32Builder::new()), DataType::Float32),
            Schema::Double => (Col::Double(Float64Builder::new()), DataType::Float64),
            Schema::Date => (Col::Date(Date32Builder::new()), DataType::Date32),
            Schema::TimeMillis => (
                Col::TimeMs(Time32MillisecondBuilder::new()),
                DataType::Time32(TimeUnit::Millisecond),
            ),
            Schema::TimeMicros => (
                Col::TimeUs(Time64MicrosecondBuilder::new()),
                DataType::Time64(TimeUnit::Microsecond),
            ),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                let tz = matches!(schema, Schema::TimestampMillis)
                    .then_some(utc)
                    .flatten();
                let ty = DataType::Timestamp(TimeUnit::Millisecond, tz.clone());
                (
                    Col::TsMs(TimestampMillisecondBuilder::new().with_timezone_opt(tz)),
                    ty,
                )
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                let tz = matches!(schema, Schema::TimestampMicros)
                    .then_some(utc)
                    .flatten();
                let ty = DataType::Timestamp(TimeUnit::Microsecond, tz.clone());
                (
                    Col::TsUs(TimestampMicrosecondBuilder::new().with_timezone_opt(tz)),
                    ty,
                )
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                let tz = matches!(schema, Schema::TimestampNanos)
                    .then_some(utc)
                    .flatten();
                let ty = DataType::Timestamp(TimeUnit::Nanosecond, tz.clone());
                (
                    Col::TsNs(TimestampNanosecondBuilder::new().with_timezone_opt(tz)),
                    ty,
                )
            }
            Schema::String | Schema::Uuid(UuidSchema::String) => {
                (Col::Str(StringBuilder::new()), DataType::Utf8)
            }
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid(UuidSchema::Bytes) => {
                (Col::Bin(BinaryBuilder::new()), DataType::Binary)
            }
            Schema::Fixed(f) | Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => (
                Col::Fixed(FixedSizeBinaryBuilder::new(f.size as i32), f.size),
                DataType::FixedSizeBinary(f.size as i32),
            ),
            Schema::Decimal(DecimalSchema {
                precision,
                scale,
                inner,
            }) => {
                let size = match inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                };
                if *precision <= 38 && size.is_none_or(|s| s <= 16) {
                    let ty = DataType::Decimal128(*precision as u8, *scale as i8);
                    let b = Decimal128Builder::new().with_data_type(ty.clone());
                    (Col::Decimal(b, size), ty)
                } else {
                    match size {
                        None => (Col::Bin(BinaryBuilder::new()), DataType::Binary),
                        Some(s) => (
                            Col::Fixed(FixedSizeBinaryBuilder::new(s as i32), s),
                            DataType::FixedSizeBinary(s as i32),
                        ),
                    }
                }
            }
            Schema::Enum(e) => {
                let symbols = Arc::new(StringArray::from(e.symbols.clone()));
                (
                    Col::Enum(Int32Builder::new(), symbols),
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                )
            }
            Schema::Array(a) => {
                let (item, ty) = self.col(&a.items, ns)?;
                let f = Arc::new(Field::new("item", ty, true));
                (
                    Col::List(
                        Box::new(item),
                        vec![0],
                        BooleanBufferBuilder::new(0),
                        f.clone(),
                    ),
                    DataType::List(f),
                )
            }
            Schema::Map(m) => {
                let (value, ty) = self.col(&m.types, ns)?;
                let entries = Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("keys", DataType::Utf8, false),
                        Field::new("values", ty, true),
                    ])),
                    false,
                ));
                (
                    Col::Map(
                        Box::new(value),
                        StringBuilder::new(),
                        vec![0],
                        BooleanBufferBuilder::new(0),
                        entries.clone(),
                    ),
                    DataType::Map(entries, false),
                )
            }
            Schema::Union(u) => {
                let variants = u.variants();
                let null = variants.iter().position(|v| matches!(v, Schema::Null));
                if let (Some(null), 2) = (null, variants.len()) {
                    let (inner, ty) = self.col(&variants[1 - null], ns)?;
                    (Col::Nullable(null, Box::new(inner)), ty)
                } else {
                    let mut cols = Vec::new();
                    let mut fields = Vec::new();
                    for v in variants {
                        if matches!(v, Schema::Null) {
                            cols.push(None);
                            continue;
                        }
                        let (col, ty) = self.col(v, ns)?;
                        fields.push(Field::new(branch_name(v), ty, true));
                        cols.push(Some(col));
                    }
                    let fields = Fields::from(fields);
                    (
                        Col::Union(cols, fields.clone(), BooleanBufferBuilder::new(0)),
                        DataType::Struct(fields),
                    )
                }
            }
            Schema::Record(r) => {
                let fq = r.name.fully_qualified_name(ns).into_owned();
                self.enter(&fq)?;
                let inner_ns = r
                    .name
                    .namespace()
                    .map(str::to_owned)
                    .or(ns.map(str::to_owned));
                let mut cols = Vec::new();
                let mut fields = Vec::new();
                for f in &r.fields {
                    let (col, ty) = self.col(&f.schema, inner_ns.as_deref())?;
                    fields.push(Field::new(&f.name, ty, true));
                    cols.push(col);
                }
                self.open.pop();
                let fields = Fields::from(fields);
                (
                    Col::Struct(cols, fields.clone(), BooleanBufferBuilder::new(0)),
                    DataType::Struct(fields),
                )
            }
            Schema::Ref { .. } => unreachable!("resolved by deref"),
        })
    }

    /// The walk over a value of `schema` that is not exported.
    fn skip(&mut self, schema: &Schema, ns: NamespaceRef<'_>) -> Result<Skip, PlanError> {
        let (schema, ns) = self.deref(schema, ns)?;
        let ns = ns.as_deref();
        if let Some(leaf) = avro_leaf::leaf(schema) {
            return Ok(Skip::from(leaf));
        }
        Ok(match schema {
            Schema::Array(a) => Skip::Array(Box::new(self.skip(&a.items, ns)?)),
            Schema::Map(m) => Skip::Map(Box::new(self.skip(&m.types, ns)?)),
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(|v| self.skip(v, ns))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(r) => {
                let fq = r.name.fully_qualified_name(ns).into_owned();
                self.enter(&fq)?;
                let inner_ns = r
                    .name
                    .namespace()
                    .map(str::to_owned)
                    .or(ns.map(str::to_owned));
                let fields = r
                    .fields
                    .iter()
                    .map(|f| self.skip(&f.schema, inner_ns.as_deref()))
                    .collect::<Result<_, _>>()?;
                self.open.pop();
                Skip::Record(fields)
            }
            Schema::Ref { .. } => unreachable!("resolved by deref"),
            _ => unreachable!("leaf types are classified by avro_leaf::leaf"),
        })
    }
}

/// A union branch's field name: a named type's name, else the type's.
fn branch_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.name().to_string(),
        Schema::Enum(e) => e.name.name().to_string(),
        Schema::Fixed(f) => f.name.name().to_string(),
        Schema::Ref { name } => name.name().to_string(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        other => {
            let json = serde_json::to_value(other).unwrap_or_default();
            match &json {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o
                    .get("logicalType")
                    .or_else(|| o.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("value")
                    .to_string(),
                _ => "value".into(),
            }
        }
    }
}

#[inline]
fn long(b: &[u8], pos: &mut usize) -> Result<i64, Malformed> {
    let mut z: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        if shift < 64 {
            z |= u64::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
        shift += 7;
        if shift >= 70 {
            return Err(Malformed);
        }
    }
}

#[inline]
fn take<'a>(b: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], Malformed> {
    let end = pos
        .checked_add(n)
        .filter(|&e| e <= b.len())
        .ok_or(Malformed)?;
    let s = &b[*pos..end];
    *pos = end;
    Ok(s)
}

#[inline]
fn bytes<'a>(b: &'a [u8], pos: &mut usize) -> Result<&'a [u8], Malformed> {
    let n = usize::try_from(long(b, pos)?).map_err(|_| Malformed)?;
    take(b, pos, n)
}

/// Array and map blocks: a count (negative: then a byte size), items,
/// until a count of 0; `item` is called once an item.
#[inline]
fn blocks(b: &[u8], pos: &mut usize, mut item: impl FnMut(&mut usize) -> R) -> R {
    loop {
        let mut n = long(b, pos)?;
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            n = n.checked_neg().ok_or(Malformed)?;
            long(b, pos)?;
        }
        if n as u64 > (b.len() - *pos) as u64 + (1 << 20) {
            return Err(Malformed);
        }
        for _ in 0..n {
            item(pos)?;
        }
    }
}

/// Array blocks of fixed-size items of `size` bytes: `items` gets each
/// block's items' bytes at once.
#[inline]
fn fixed_blocks(b: &[u8], pos: &mut usize, size: usize, mut items: impl FnMut(&[u8])) -> R {
    loop {
        let mut n = long(b, pos)?;
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            n = n.checked_neg().ok_or(Malformed)?;
            long(b, pos)?;
        }
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .ok_or(Malformed)?;
        items(take(b, pos, len)?);
    }
}

/// A big-endian two's complement integer of up to 16 bytes.
fn i128_be(s: &[u8]) -> Result<i128, Malformed> {
    if s.len() > 16 {
        return Err(Malformed);
    }
    let fill = if s.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 16];
    buf[16 - s.len()..].copy_from_slice(s);
    Ok(i128::from_be_bytes(buf))
}

impl Skip {
    fn go(&self, b: &[u8], pos: &mut usize) -> R {
        match self {
            Skip::Fixed(n) => {
                take(b, pos, *n)?;
            }
            Skip::Varint => {
                long(b, pos)?;
            }
            Skip::Bytes => {
                bytes(b, pos)?;
            }
            Skip::Union(v) => {
                let i = usize::try_from(long(b, pos)?).map_err(|_| Malformed)?;
                v.get(i).ok_or(Malformed)?.go(b, pos)?;
            }
            Skip::Array(item) => blocks(b, pos, |pos| item.go(b, pos))?,
            Skip::Map(value) => blocks(b, pos, |pos| {
                bytes(b, pos)?;
                value.go(b, pos)
            })?,
            Skip::Record(fields) => {
                for f in fields {
                    f.go(b, pos)?;
                }
            }
        }
        Ok(())
    }
}

impl Col {
    #[inline]
    fn decode(&mut self, b: &[u8], pos: &mut usize) -> R {
        match self {
            Col::Skip(s) => s.go(b, pos)?,
            Col::Null(n) => *n += 1,
            Col::Bool(x) => x.append_value(take(b, pos, 1)?[0] != 0),
            Col::Int(x) => x.append_value(long(b, pos)? as i32),
            Col::Long(x) => x.append_value(long(b, pos)?),
            Col::Float(x) => x.append_value(f32::from_le_bytes(
                take(b, pos, 4)?.try_into().map_err(|_| Malformed)?,
            )),
            Col::Double(x) => x.append_value(f64::from_le_bytes(
                take(b, pos, 8)?.try_into().map_err(|_| Malformed)?,
            )),
            Col::Date(x) => x.append_value(long(b, pos)? as i32),
            Col::TimeMs(x) => x.append_value(long(b, pos)? as i32),
            Col::TimeUs(x) => x.append_value(long(b, pos)?),
            Col::TsMs(x) => x.append_value(long(b, pos)?),
            Col::TsUs(x) => x.append_value(long(b, pos)?),
            Col::TsNs(x) => x.append_value(long(b, pos)?),
            Col::Str(x) => {
                let s = std::str::from_utf8(bytes(b, pos)?).map_err(|_| Malformed)?;
                x.append_value(s);
            }
            Col::Bin(x) => x.append_value(bytes(b, pos)?),
            Col::Fixed(x, n) => x.append_value(take(b, pos, *n)?).map_err(|_| Malformed)?,
            Col::Decimal(x, size) => {
                let s = match size {
                    Some(n) => take(b, pos, *n)?,
                    None => bytes(b, pos)?,
                };
                x.append_value(i128_be(s)?);
            }
            Col::Enum(x, symbols) => {
                let i = long(b, pos)?;
                if i < 0 || i as usize >= symbols.len() {
                    return Err(Malformed);
                }
                x.append_value(i as i32);
            }
            Col::Nullable(null, inner) => {
                let i = long(b, pos)?;
                if i == *null as i64 {
                    inner.append_null();
                } else if i == 1 - *null as i64 {
                    inner.decode(b, pos)?;
                } else {
                    return Err(Malformed);
                }
            }
            Col::Union(cols, _, valid) => {
                let i = usize::try_from(long(b, pos)?).map_err(|_| Malformed)?;
                if i >= cols.len() {
                    return Err(Malformed);
                }
                for (j, c) in cols.iter_mut().enumerate() {
                    match c {
                        Some(c) if j == i => c.decode(b, pos)?,
                        Some(c) => c.append_null(),
                        None => {}
                    }
                }
                valid.append(cols[i].is_some());
            }
            Col::List(item, offsets, valid, _) => {
                match &mut **item {
                    // Arrays of doubles (a signal's samples): each block's
                    // items in one go.
                    Col::Double(x) => fixed_blocks(b, pos, 8, |bytes| {
                        for c in bytes.chunks_exact(8) {
                            x.append_value(f64::from_le_bytes(c.try_into().expect("8 bytes")));
                        }
                    })?,
                    Col::Float(x) => fixed_blocks(b, pos, 4, |bytes| {
                        for c in bytes.chunks_exact(4) {
                            x.append_value(f32::from_le_bytes(c.try_into().expect("4 bytes")));
                        }
                    })?,
                    item => blocks(b, pos, |pos| item.decode(b, pos))?,
                }
                offsets.push(item.len() as i32);
                valid.append(true);
            }
            Col::Map(value, keys, offsets, valid, _) => {
                blocks(b, pos, |pos| {
                    let k = std::str::from_utf8(bytes(b, pos)?).map_err(|_| Malformed)?;
                    keys.append_value(k);
                    value.decode(b, pos)
                })?;
                offsets.push(keys.len() as i32);
                valid.append(true);
            }
            Col::Struct(cols, _, valid) => {
                for c in cols.iter_mut() {
                    c.decode(b, pos)?;
                }
                valid.append(true);
            }
        }
        Ok(())
    }

    /// Appends a null (for a parent that is null, a null of a union).
    fn append_null(&mut self) {
        match self {
            Col::Skip(_) => {}
            Col::Null(n) => *n += 1,
            Col::Bool(x) => x.append_null(),
            Col::Int(x) | Col::Enum(x, _) => x.append_null(),
            Col::Date(x) => x.append_null(),
            Col::Long(x) => x.append_null(),
            Col::Float(x) => x.append_null(),
            Col::Double(x) => x.append_null(),
            Col::TimeMs(x) => x.append_null(),
            Col::TimeUs(x) => x.append_null(),
            Col::TsMs(x) => x.append_null(),
            Col::TsUs(x) => x.append_null(),
            Col::TsNs(x) => x.append_null(),
            Col::Str(x) => x.append_null(),
            Col::Bin(x) => x.append_null(),
            Col::Fixed(x, _) => x.append_null(),
            Col::Decimal(x, _) => x.append_null(),
            Col::Nullable(_, inner) => inner.append_null(),
            Col::Union(cols, _, valid) => {
                cols.iter_mut().flatten().for_each(Col::append_null);
                valid.append(false);
            }
            Col::List(item, offsets, valid, _) => {
                offsets.push(item.len() as i32);
                valid.append(false);
            }
            Col::Map(_, keys, offsets, valid, _) => {
                offsets.push(keys.len() as i32);
                valid.append(false);
            }
            Col::Struct(cols, _, valid) => {
                cols.iter_mut().for_each(Col::append_null);
                valid.append(false);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Skip(_) => 0,
            Col::Null(n) => *n,
            Col::Bool(x) => x.len(),
            Col::Int(x) | Col::Enum(x, _) => x.len(),
            Col::Date(x) => x.len(),
            Col::Long(x) => x.len(),
            Col::Float(x) => x.len(),
            Col::Double(x) => x.len(),
            Col::TimeMs(x) => x.len(),
            Col::TimeUs(x) => x.len(),
            Col::TsMs(x) => x.len(),
            Col::TsUs(x) => x.len(),
            Col::TsNs(x) => x.len(),
            Col::Str(x) => x.len(),
            Col::Bin(x) => x.len(),
            Col::Fixed(x, _) => x.len(),
            Col::Decimal(x, _) => x.len(),
            Col::Nullable(_, inner) => inner.len(),
            Col::Union(_, _, valid) | Col::Struct(_, _, valid) => valid.len(),
            Col::List(_, offsets, ..) | Col::Map(_, _, offsets, ..) => offsets.len() - 1,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        fn nulls(valid: &mut BooleanBufferBuilder) -> Option<NullBuffer> {
            let n = NullBuffer::new(valid.finish());
            (n.null_count() > 0).then_some(n)
        }
        fn offsets(o: &mut Vec<i32>) -> OffsetBuffer<i32> {
            let last = *o.last().expect("offsets start with 0");
            let done = std::mem::replace(o, vec![0]);
            // The next batch's offsets start from 0 again: the child
            // builders are finished at the same time.
            debug_assert!(last >= 0);
            OffsetBuffer::new(done.into())
        }
        match self {
            Col::Skip(_) => unreachable!("skipped columns are not exported"),
            Col::Null(n) => Arc::new(NullArray::new(std::mem::take(n))),
            Col::Bool(x) => Arc::new(x.finish()),
            Col::Int(x) => Arc::new(x.finish()),
            Col::Date(x) => Arc::new(x.finish()),
            Col::Long(x) => Arc::new(x.finish()),
            Col::Float(x) => Arc::new(x.finish()),
            Col::Double(x) => Arc::new(x.finish()),
            Col::TimeMs(x) => Arc::new(x.finish()),
            Col::TimeUs(x) => Arc::new(x.finish()),
            Col::TsMs(x) => Arc::new(x.finish()),
            Col::TsUs(x) => Arc::new(x.finish()),
            Col::TsNs(x) => Arc::new(x.finish()),
            Col::Str(x) => Arc::new(x.finish()),
            Col::Bin(x) => Arc::new(x.finish()),
            Col::Fixed(x, _) => Arc::new(x.finish()),
            Col::Decimal(x, _) => Arc::new(x.finish()),
            Col::Enum(x, symbols) => {
                let keys = x.finish();
                Arc::new(
                    DictionaryArray::<Int32Type>::try_new(keys, symbols.clone() as ArrayRef)
                        .expect("keys checked against the symbols"),
                )
            }
            Col::Nullable(_, inner) => inner.finish(),
            Col::Union(cols, fields, valid) => {
                let arrays: Vec<ArrayRef> = cols.iter_mut().flatten().map(Col::finish).collect();
                let n = valid.len();
                if arrays.is_empty() {
                    valid.finish();
                    return new_null_array(&DataType::Struct(fields.clone()), n);
                }
                Arc::new(StructArray::new(fields.clone(), arrays, nulls(valid)))
            }
            Col::List(item, o, valid, field) => {
                let values = item.finish();
                Arc::new(ListArray::new(
                    field.clone(),
                    offsets(o),
                    values,
                    nulls(valid),
                ))
            }
            Col::Map(value, keys, o, valid, entries) => {
                let DataType::Struct(fields) = entries.data_type() else {
                    unreachable!("map entries are a struct")
                };
                let k: ArrayRef = Arc::new(keys.finish());
                let v = value.finish();
                let s = StructArray::new(fields.clone(), vec![k, v], None);
                Arc::new(MapArray::new(
                    entries.clone(),
                    offsets(o),
                    s,
                    nulls(valid),
                    false,
                ))
            }
            Col::Struct(cols, fields, valid) => {
                let n = valid.len();
                let arrays: Vec<ArrayRef> = cols.iter_mut().map(Col::finish).collect();
                let nulls = nulls(valid);
                if arrays.is_empty() {
                    return Arc::new(StructArray::new_empty_fields(n, nulls));
                }
                Arc::new(StructArray::new(fields.clone(), arrays, nulls))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    const NESTED: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "pos", "type": {"type": "record", "name": "P", "fields": [
            {"name": "x", "type": "double"}, {"name": "y", "type": "double"}]}},
        {"name": "label", "type": "string"},
        {"name": "opt", "type": ["null", "long"]}
    ]}"#;

    fn names(c: &Columns) -> Vec<String> {
        c.fields().iter().map(|f| f.name().clone()).collect()
    }

    #[test]
    fn nested_records_are_dotted_columns_and_signals_pick_them() {
        let s = schema(NESTED);
        assert_eq!(
            names(&Columns::new(&s, None, None).unwrap()),
            ["pos.x", "pos.y", "label", "opt"]
        );
        let some = Columns::new(&s, Some(&["pos.y".into()]), Some("label")).unwrap();
        assert_eq!(names(&some), ["pos.y", "label"]);
        let whole = Columns::new(&s, Some(&["pos".into()]), None).unwrap();
        assert_eq!(names(&whole), ["pos.x", "pos.y"]);
        for bad in ["nope", "pos.z", "label.x", "pos."] {
            assert_eq!(
                Columns::new(&s, Some(&[bad.into()]), None).err(),
                Some(PlanError::NoSignal(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_decode_into_columns_and_unexported_fields_are_walked_over() {
        let s = schema(NESTED);
        let mut data = Vec::new();
        for (x, label, opt) in [(1.5f64, "a", Some(7i64)), (-2.0, "bcd", None)] {
            data.extend_from_slice(&x.to_le_bytes());
            data.extend_from_slice(&0.25f64.to_le_bytes());
            data.push((label.len() * 2) as u8);
            data.extend_from_slice(label.as_bytes());
            match opt {
                Some(v) => data.extend_from_slice(&[2, (v * 2) as u8]),
                None => data.push(0),
            }
        }
        let mut c = Columns::new(&s, Some(&["pos.x".into(), "opt".into()]), None).unwrap();
        let mut pos = 0;
        c.decode(&data, &mut pos).unwrap();
        c.decode(&data, &mut pos).unwrap();
        assert_eq!(pos, data.len());
        assert_eq!(c.rows(), 2);
        let cols = c.finish();
        let x = cols[0]
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert_eq!(x.values().to_vec(), [1.5, -2.0]);
        let opt = cols[1]
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!((opt.value(0), opt.is_null(1)), (7, true));
        assert_eq!(c.rows(), 0, "the builders start again");
        // A record cut short does not decode.
        let mut pos = 0;
        assert!(c.decode(&data[..19], &mut pos).is_err());
    }

    #[test]
    fn a_recursive_schema_is_refused() {
        let s = schema(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "v", "type": "int"},
                {"name": "next", "type": ["null", "Node"]}]}"#,
        );
        assert_eq!(
            Columns::new(&s, None, None).err(),
            Some(PlanError::Recursive("Node".into()))
        );
    }
}
