//! Fast structural validation of Avro binary datums.
//!
//! Every datagram a channel receives must be exactly one Avro binary-encoded
//! datum of the channel's schema: it decodes fully and leaves no trailing
//! bytes. With `validate = true` the receive path checks each datagram with
//! [`Validator::validate`] before forwarding and archiving it, and drops (and
//! counts, under [`Reason::as_str`]) the ones that fail, so that the archive
//! files stay readable by any Avro reader.
//!
//! Decoding into `apache_avro::types::Value` allocates for every datum and is
//! too slow at ~1 M datagrams/s. Instead [`Validator::new`] compiles the schema
//! once into a flat arena of nodes (named-type references become node indices,
//! so recursive schemas work; runs of fixed-size fields merge into one bounds
//! check) and [`Validator::validate`] walks the bytes without allocating.
//!
//! # Rules (Avro 1.11 binary encoding)
//!
//! null: no bytes; boolean: one byte, 0 or 1; int: zig-zag varint of at most
//! 5 bytes whose value fits in 32 bits; long: zig-zag varint of at most 10
//! bytes; float: 4 bytes; double: 8; bytes and string: a non-negative long
//! length then that many bytes, UTF-8 for strings; fixed: its size; enum: an
//! int index below the symbol count; union: a long branch index in range, then
//! that branch; array and map: blocks of a long count and that many items
//! (map items are a string key and a value) ending with a count of 0, where a
//! negative count `-n` is followed by a long byte size and then `n` items;
//! record: its fields in order. Logical types are checked as their underlying
//! type (decimal: bytes or fixed; uuid: string, bytes or fixed; date and
//! time-millis: int; time-micros and the timestamps: long; duration: fixed;
//! big-decimal: bytes).
//!
//! # Differences from apache-avro 0.22 (`GenericDatumReader::read_value`)
//!
//! Stricter (rejected here, accepted there):
//! - An int-typed varint (int, date, time-millis, enum index) longer than
//!   5 bytes is [`Reason::BadVarint`]; apache-avro reads ints as longs of up to
//!   10 bytes. The Java implementation rejects them too.
//! - A block with a negative count must give a byte size equal to the bytes
//!   its items occupy ([`Reason::BlockSizeMismatch`]). apache-avro (like the
//!   Java and fastavro decoders) reads the size and ignores it, but readers that
//!   skip fields use it to jump over the block, so a wrong one corrupts them.
//! - Nesting beyond 128 records/arrays/maps is [`Reason::TooDeep`].
//! - A block of always-empty items (null, an empty record, fixed(0)) may not
//!   claim more items than bytes left ([`Reason::ImplausibleCount`]).
//! - apache-avro takes end-of-input at a boolean, a string's body or a union
//!   index as a null and so accepts some truncated datums; here they are
//!   [`Reason::Truncated`].
//!
//! Laxer (accepted here, rejected there): the content of logical types is not
//! parsed, so a string that is not a UUID in a uuid field, or big-decimal bytes
//! that are not a well-formed big decimal, pass.

use std::collections::HashMap;
use std::fmt;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, NamespaceRef,
    RecordSchema, ResolvedSchema, Schema, UuidSchema,
};

/// Deepest nesting of records, arrays and maps that [`Validator::validate`]
/// follows before giving up with [`Reason::TooDeep`].
const MAX_DEPTH: u32 = 128;

/// One compiled schema node. Indices refer to [`Validator::nodes`] and
/// [`Validator::edges`].
#[derive(Debug, Clone, Copy)]
enum Node {
    /// Exactly this many bytes of any content: null (0), float (4), double
    /// (8), fixed, and runs of such fields (or whole records of them) merged.
    Skip(usize),
    Boolean,
    /// int, date, time-millis.
    Int,
    /// long, time-micros, timestamp-*, local-timestamp-*.
    Long,
    /// bytes, decimal on bytes, big-decimal, uuid on bytes.
    Bytes,
    /// string, uuid on string.
    String,
    Enum {
        symbols: usize,
    },
    /// Branches are `edges[first..first + len]`.
    Union {
        first: u32,
        len: u32,
    },
    /// Fields are `edges[first..first + len]`.
    Record {
        first: u32,
        len: u32,
    },
    Array {
        items: u32,
        /// Lower bound of one item's encoded length.
        item_min: usize,
    },
    Map {
        values: u32,
        /// Lower bound of one entry's (key and value) encoded length.
        entry_min: usize,
    },
}

/// A schema compiled for allocation-free validation of binary datums.
///
/// Build it once per channel with [`Validator::new`]; it is immutable, cheap
/// to share between threads, and [`Validator::validate`] never allocates.
#[derive(Debug, Clone)]
pub struct Validator {
    nodes: Box<[Node]>,
    edges: Box<[u32]>,
    root: u32,
    /// Lower bound of the encoded length of a whole datum.
    root_min: usize,
}

/// Why and where a datagram is not exactly one datum of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// Byte offset in the datagram of the offending item (for
    /// [`Reason::TrailingBytes`], where the datum ended).
    pub offset: usize,
    /// What is wrong there.
    pub reason: Reason,
}

/// The kind of defect [`Validator::validate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The datagram is empty and the schema needs at least one byte.
    Empty,
    /// The datagram ends inside the datum, or a length points past its end.
    Truncated,
    /// The datum ends before the datagram does.
    TrailingBytes,
    /// A varint runs on past its maximum size: 5 bytes for an int (also date,
    /// time-millis and enum indices), 10 for a long.
    BadVarint,
    /// An int (also date, time-millis, enum index) outside the 32-bit range.
    IntOutOfRange,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// A boolean byte other than 0 or 1.
    BadBoolean,
    /// An enum index that is negative or not below the number of symbols.
    EnumIndexOutOfRange,
    /// A union branch index that is negative or not below the number of branches.
    UnionIndexOutOfRange,
    /// A bytes or string length below zero.
    NegativeLength,
    /// An array or map block count that cannot fit in the bytes left: its items
    /// would need more bytes than remain, or (for always-empty items such as
    /// null) it exceeds the number of bytes left counted from the block start.
    ImplausibleCount,
    /// The byte size after a negative block count differs from the bytes its
    /// items occupy.
    BlockSizeMismatch,
    /// Records, arrays and maps nested more than 128 deep.
    TooDeep,
}

impl Reason {
    /// Every reason, for registering one metric per label up front.
    pub const ALL: &'static [Reason] = &[
        Reason::Empty,
        Reason::Truncated,
        Reason::TrailingBytes,
        Reason::BadVarint,
        Reason::IntOutOfRange,
        Reason::InvalidUtf8,
        Reason::BadBoolean,
        Reason::EnumIndexOutOfRange,
        Reason::UnionIndexOutOfRange,
        Reason::NegativeLength,
        Reason::ImplausibleCount,
        Reason::BlockSizeMismatch,
        Reason::TooDeep,
    ];

    /// Short snake_case label for metrics and logs, e.g. `"trailing_bytes"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::Truncated => "truncated",
            Reason::TrailingBytes => "trailing_bytes",
            Reason::BadVarint => "bad_varint",
            Reason::IntOutOfRange => "int_out_of_range",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::BadBoolean => "bad_boolean",
            Reason::EnumIndexOutOfRange => "enum_index_out_of_range",
            Reason::UnionIndexOutOfRange => "union_index_out_of_range",
            Reason::NegativeLength => "negative_length",
            Reason::ImplausibleCount => "implausible_count",
            Reason::BlockSizeMismatch => "block_size_mismatch",
            Reason::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.reason {
            Reason::Empty => write!(f, "empty datagram (the schema needs at least one byte)"),
            Reason::Truncated => write!(f, "truncated: the item at offset {at} runs past the end"),
            Reason::TrailingBytes => {
                write!(
                    f,
                    "trailing bytes: the datum ends at offset {at}, before the datagram"
                )
            }
            Reason::BadVarint => write!(f, "overlong varint at offset {at}"),
            Reason::IntOutOfRange => write!(f, "int at offset {at} is outside the 32-bit range"),
            Reason::InvalidUtf8 => write!(f, "invalid UTF-8 at offset {at}"),
            Reason::BadBoolean => write!(f, "boolean byte at offset {at} is neither 0 nor 1"),
            Reason::EnumIndexOutOfRange => write!(f, "enum index at offset {at} is out of range"),
            Reason::UnionIndexOutOfRange => {
                write!(f, "union branch index at offset {at} is out of range")
            }
            Reason::NegativeLength => write!(f, "negative length at offset {at}"),
            Reason::ImplausibleCount => write!(
                f,
                "array/map block count at offset {at} cannot fit in the rest of the datagram"
            ),
            Reason::BlockSizeMismatch => write!(
                f,
                "array/map block byte size at offset {at} does not match its items"
            ),
            Reason::TooDeep => write!(
                f,
                "nesting deeper than {MAX_DEPTH} records/arrays/maps at offset {at}"
            ),
        }
    }
}

impl std::error::Error for Invalid {}

/// A schema [`Validator::new`] cannot compile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// apache-avro could not resolve the schema's named types (say, a
    /// reference to an undefined name, or a name defined twice).
    #[error("cannot resolve the schema's named types: {0}")]
    Resolve(#[source] apache_avro::Error),
    /// A reference to a name the schema does not define.
    #[error("the schema refers to `{name}`, which it does not define")]
    UnresolvedRef {
        /// The fully qualified name.
        name: String,
    },
    /// No finite datum of this part of the schema exists: a record that always
    /// contains itself, or an empty union as the whole schema.
    #[error("{what} has no finite encoding (it always contains itself, or is an empty union)")]
    Unencodable {
        /// The record's fully qualified name, or "the schema".
        what: String,
    },
    /// More than 2^32 nodes.
    #[error("the schema is too large to compile")]
    TooLarge,
}

impl Validator {
    /// Compiles `schema`. Fails if its named types do not resolve or a part of
    /// it can never be encoded (see [`CompileError`]).
    pub fn new(schema: &Schema) -> Result<Validator, CompileError> {
        let resolved = ResolvedSchema::new(schema).map_err(CompileError::Resolve)?;
        let mut c = Compiler {
            nodes: Vec::new(),
            edges: Vec::new(),
            named: HashMap::new(),
            defs: resolved.get_names(),
            records: Vec::new(),
        };
        let root = c.compile(schema, None)?;
        c.finish(root)
    }

    /// Checks that `datum` is exactly one datum of the schema: it decodes
    /// completely and nothing follows. Never allocates and never panics.
    pub fn validate(&self, datum: &[u8]) -> Result<(), Invalid> {
        if datum.is_empty() && self.root_min > 0 {
            return Err(Invalid {
                offset: 0,
                reason: Reason::Empty,
            });
        }
        let mut cur = Cursor { buf: datum, pos: 0 };
        self.walk(self.root, &mut cur, 0)?;
        if cur.pos == datum.len() {
            Ok(())
        } else {
            Err(cur.invalid(cur.pos, Reason::TrailingBytes))
        }
    }

    /// Checks one datum of `node` at the cursor. `depth` counts the records,
    /// arrays and maps already entered.
    fn walk(&self, mut node: u32, cur: &mut Cursor<'_>, depth: u32) -> Result<(), Invalid> {
        loop {
            return match self.nodes[node as usize] {
                Node::Skip(n) => cur.skip(n, cur.pos),
                Node::Boolean => cur.boolean(),
                Node::Int => cur.int().map(drop),
                Node::Long => cur.long().map(drop),
                Node::Bytes => cur.bytes().map(drop),
                Node::String => cur.string(),
                Node::Enum { symbols } => {
                    let at = cur.pos;
                    let index = cur.int()?;
                    match usize::try_from(index) {
                        Ok(i) if i < symbols => Ok(()),
                        _ => Err(cur.invalid(at, Reason::EnumIndexOutOfRange)),
                    }
                }
                Node::Union { first, len } => {
                    let at = cur.pos;
                    let index = cur.long()?;
                    match u32::try_from(index) {
                        Ok(i) if i < len => {
                            // A branch adds no nesting of its own: loop, do not recurse.
                            node = self.edges[(first + i) as usize];
                            continue;
                        }
                        _ => Err(cur.invalid(at, Reason::UnionIndexOutOfRange)),
                    }
                }
                Node::Record { first, len } => {
                    let depth = enter(cur, depth)?;
                    let fields = &self.edges[first as usize..(first + len) as usize];
                    for &field in fields {
                        self.walk(field, cur, depth)?;
                    }
                    Ok(())
                }
                Node::Array { items, item_min } => {
                    let depth = enter(cur, depth)?;
                    let fixed = match self.nodes[items as usize] {
                        Node::Skip(n) => Some(n),
                        _ => None,
                    };
                    blocks(cur, item_min, fixed, |cur| self.walk(items, cur, depth))
                }
                Node::Map { values, entry_min } => {
                    let depth = enter(cur, depth)?;
                    blocks(cur, entry_min, None, |cur| {
                        cur.string()?;
                        self.walk(values, cur, depth)
                    })
                }
            };
        }
    }
}

/// Enters one more level of nesting, or fails with [`Reason::TooDeep`].
#[inline]
fn enter(cur: &Cursor<'_>, depth: u32) -> Result<u32, Invalid> {
    if depth < MAX_DEPTH {
        Ok(depth + 1)
    } else {
        Err(cur.invalid(cur.pos, Reason::TooDeep))
    }
}

/// Checks the blocks of an array or map. `item_min` is a lower bound of an
/// item's encoded length, `fixed` its exact length when that never varies, and
/// `item` checks one item.
///
/// Items whose encoding is always empty (`item_min == 0`: null, a record of
/// nulls, fixed(0)) are not walked at all. For them a block may claim at most
/// as many items as there are bytes left in the datagram, counted from the
/// block's count; this is deliberately stricter than the Avro spec (which
/// allows any count) so that a datagram of a few bytes cannot make a downstream
/// decoder materialise millions of values.
#[inline]
fn blocks(
    cur: &mut Cursor<'_>,
    item_min: usize,
    fixed: Option<usize>,
    mut item: impl FnMut(&mut Cursor<'_>) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    loop {
        let at = cur.pos;
        let count = cur.long()?;
        if count == 0 {
            return Ok(());
        }
        let size = if count < 0 {
            let size_at = cur.pos;
            Some((size_at, cur.long()?))
        } else {
            None
        };
        let n = count.unsigned_abs();
        let start = cur.pos;
        if item_min == 0 {
            if n > (cur.buf.len() - at) as u64 {
                return Err(cur.invalid(at, Reason::ImplausibleCount));
            }
        } else if n.saturating_mul(item_min as u64) > cur.remaining() as u64 {
            return Err(cur.invalid(at, Reason::ImplausibleCount));
        } else if let Some(width) = fixed {
            // Fits: n * width <= n * item_min <= remaining (width == item_min).
            cur.skip(n as usize * width, start)?;
        } else {
            for _ in 0..n {
                item(cur)?;
            }
        }
        if let Some((size_at, size)) = size {
            if i64::try_from(cur.pos - start) != Ok(size) {
                return Err(cur.invalid(size_at, Reason::BlockSizeMismatch));
            }
        }
    }
}

/// Read position in a datagram. Invariant: `pos <= buf.len()`.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn invalid(&self, offset: usize, reason: Reason) -> Invalid {
        Invalid { offset, reason }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Advances over `n` bytes, or fails as truncated at `at`.
    #[inline]
    fn skip(&mut self, n: usize, at: usize) -> Result<(), Invalid> {
        if n <= self.remaining() {
            self.pos += n;
            Ok(())
        } else {
            Err(self.invalid(at, Reason::Truncated))
        }
    }

    /// Reads a varint of at most `max_len` bytes. Like apache-avro (and Java),
    /// bits beyond the 64th in a 10-byte varint are dropped, not rejected.
    #[inline]
    fn varint(&mut self, max_len: usize) -> Result<u64, Invalid> {
        let start = self.pos;
        let mut value = 0u64;
        let mut shift = 0u32;
        for i in 0..max_len {
            let Some(&b) = self.buf.get(start + i) else {
                return Err(self.invalid(start, Reason::Truncated));
            };
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                self.pos = start + i + 1;
                return Ok(value);
            }
            shift += 7;
        }
        Err(self.invalid(start, Reason::BadVarint))
    }

    #[inline]
    fn long(&mut self) -> Result<i64, Invalid> {
        let z = self.varint(10)?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    #[inline]
    fn int(&mut self) -> Result<i32, Invalid> {
        let at = self.pos;
        let z = self.varint(5)?;
        let v = (z >> 1) as i64 ^ -((z & 1) as i64);
        i32::try_from(v).map_err(|_| self.invalid(at, Reason::IntOutOfRange))
    }

    #[inline]
    fn boolean(&mut self) -> Result<(), Invalid> {
        match self.buf.get(self.pos) {
            Some(0 | 1) => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.invalid(self.pos, Reason::BadBoolean)),
            None => Err(self.invalid(self.pos, Reason::Truncated)),
        }
    }

    /// Skips a length-prefixed byte sequence and returns it.
    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], Invalid> {
        let at = self.pos;
        let len = self.long()?;
        let Ok(len) = u64::try_from(len) else {
            return Err(self.invalid(at, Reason::NegativeLength));
        };
        if len > self.remaining() as u64 {
            return Err(self.invalid(at, Reason::Truncated));
        }
        let start = self.pos;
        self.pos += len as usize;
        let buf: &'a [u8] = self.buf;
        Ok(&buf[start..self.pos])
    }

    #[inline]
    fn string(&mut self) -> Result<(), Invalid> {
        let body = self.bytes()?;
        match std::str::from_utf8(body) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(self.invalid(self.pos - body.len() + e.valid_up_to(), Reason::InvalidUtf8))
            }
        }
    }
}

/// Schema-to-nodes compiler state.
struct Compiler<'s> {
    nodes: Vec<Node>,
    edges: Vec<u32>,
    /// Named types compiled so far, by fully qualified name.
    named: HashMap<Name, u32>,
    /// Definitions of every named type, from apache-avro's resolution.
    defs: &'s NamesRef<'s>,
    /// Record nodes and their full names, for error messages.
    records: Vec<(u32, String)>,
}

impl<'s> Compiler<'s> {
    fn push(&mut self, node: Node) -> Result<u32, CompileError> {
        let index = u32::try_from(self.nodes.len()).map_err(|_| CompileError::TooLarge)?;
        self.nodes.push(node);
        Ok(index)
    }

    fn push_edges(&mut self, edges: &[u32]) -> Result<(u32, u32), CompileError> {
        let first = u32::try_from(self.edges.len()).map_err(|_| CompileError::TooLarge)?;
        let len = u32::try_from(edges.len()).map_err(|_| CompileError::TooLarge)?;
        first.checked_add(len).ok_or(CompileError::TooLarge)?;
        self.edges.extend_from_slice(edges);
        Ok((first, len))
    }

    /// The node of the named type `name` (defined in `ns`), made with `node`
    /// on first sight.
    fn named(
        &mut self,
        name: &Name,
        ns: NamespaceRef<'_>,
        node: Node,
    ) -> Result<u32, CompileError> {
        let fq = name.fully_qualified_name(ns);
        if let Some(&index) = self.named.get(fq.as_ref()) {
            return Ok(index);
        }
        let index = self.push(node)?;
        self.named.insert(fq.into_owned(), index);
        Ok(index)
    }

    /// Compiles `schema`, found in the enclosing namespace `ns`, to a node.
    fn compile(&mut self, schema: &'s Schema, ns: NamespaceRef<'_>) -> Result<u32, CompileError> {
        let node = match schema {
            Schema::Null => Node::Skip(0),
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Skip(4),
            Schema::Double => Node::Skip(8),
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Node::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Node::String,
            Schema::Fixed(FixedSchema { name, size, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, size, .. }))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(FixedSchema { name, size, .. }),
                ..
            })
            | Schema::Duration(FixedSchema { name, size, .. }) => {
                return self.named(name, ns, Node::Skip(*size));
            }
            Schema::Enum(EnumSchema { name, symbols, .. }) => {
                let symbols = symbols.len();
                return self.named(name, ns, Node::Enum { symbols });
            }
            Schema::Array(array) => Node::Array {
                items: self.compile(&array.items, ns)?,
                item_min: 0, // set by `finish`
            },
            Schema::Map(map) => Node::Map {
                values: self.compile(&map.types, ns)?,
                entry_min: 0, // set by `finish`
            },
            Schema::Union(union) => {
                let branches = union
                    .variants()
                    .iter()
                    .map(|branch| self.compile(branch, ns))
                    .collect::<Result<Vec<_>, _>>()?;
                let (first, len) = self.push_edges(&branches)?;
                Node::Union { first, len }
            }
            Schema::Record(record) => return self.record(record, ns),
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns);
                if let Some(&index) = self.named.get(fq.as_ref()) {
                    return Ok(index);
                }
                let Some(def) = self.defs.get(fq.as_ref()) else {
                    return Err(CompileError::UnresolvedRef {
                        name: fq.to_string(),
                    });
                };
                return self.compile(def, fq.namespace());
            }
        };
        self.push(node)
    }

    fn record(
        &mut self,
        record: &'s RecordSchema,
        ns: NamespaceRef<'_>,
    ) -> Result<u32, CompileError> {
        let fq = record.name.fully_qualified_name(ns).into_owned();
        if let Some(&index) = self.named.get(&fq) {
            return Ok(index);
        }
        // Register before the fields so that they can refer back to it.
        let index = self.push(Node::Record { first: 0, len: 0 })?;
        self.named.insert(fq.clone(), index);
        self.records.push((index, fq.to_string()));

        let mut fields = Vec::with_capacity(record.fields.len());
        let mut run = 0usize; // bytes of fixed-size fields not yet emitted
        for field in &record.fields {
            let node = self.compile(&field.schema, fq.namespace())?;
            if let Node::Skip(n) = self.nodes[node as usize] {
                run = run.saturating_add(n);
            } else {
                if run > 0 {
                    fields.push(self.push(Node::Skip(run))?);
                    run = 0;
                }
                fields.push(node);
            }
        }
        if fields.is_empty() {
            // Only fixed-size fields (none can refer back to this record, or
            // it would not be fixed-size): the record is a fixed-size blob.
            self.nodes[index as usize] = Node::Skip(run);
            return Ok(index);
        }
        if run > 0 {
            fields.push(self.push(Node::Skip(run))?);
        }
        let (first, len) = self.push_edges(&fields)?;
        self.nodes[index as usize] = Node::Record { first, len };
        Ok(index)
    }

    fn edges_of(&self, first: u32, len: u32) -> &[u32] {
        &self.edges[first as usize..(first + len) as usize]
    }

    /// Checks that every record can be encoded, computes the minimum encoded
    /// lengths, and builds the validator.
    fn finish(mut self, root: u32) -> Result<Validator, CompileError> {
        // Which nodes have a finite encoding: a least fixpoint from "none".
        let mut finite = vec![false; self.nodes.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..self.nodes.len() {
                if finite[i] {
                    continue;
                }
                let now = match self.nodes[i] {
                    Node::Union { first, len } => self
                        .edges_of(first, len)
                        .iter()
                        .any(|&b| finite[b as usize]),
                    Node::Record { first, len } => self
                        .edges_of(first, len)
                        .iter()
                        .all(|&f| finite[f as usize]),
                    _ => true,
                };
                if now {
                    finite[i] = true;
                    changed = true;
                }
            }
        }
        if let Some((_, name)) = self.records.iter().find(|(i, _)| !finite[*i as usize]) {
            return Err(CompileError::Unencodable {
                what: format!("record `{name}`"),
            });
        }
        if !finite[root as usize] {
            return Err(CompileError::Unencodable {
                what: "the schema".to_owned(),
            });
        }

        // Lower bounds of encoded lengths, iterated up from zero. Every round
        // gives valid lower bounds; the loop stops when they settle.
        let mut min = vec![0usize; self.nodes.len()];
        for _ in 0..=self.nodes.len() {
            let mut changed = false;
            for i in 0..self.nodes.len() {
                let now = match self.nodes[i] {
                    Node::Skip(n) => n,
                    Node::Boolean
                    | Node::Int
                    | Node::Long
                    | Node::Bytes
                    | Node::String
                    | Node::Enum { .. }
                    | Node::Array { .. }
                    | Node::Map { .. } => 1,
                    Node::Union { first, len } => self
                        .edges_of(first, len)
                        .iter()
                        .map(|&b| min[b as usize])
                        .min()
                        .unwrap_or(usize::MAX)
                        .saturating_add(1),
                    Node::Record { first, len } => self
                        .edges_of(first, len)
                        .iter()
                        .fold(0usize, |sum, &f| sum.saturating_add(min[f as usize])),
                };
                if now != min[i] {
                    min[i] = now;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for node in &mut self.nodes {
            match node {
                Node::Array { items, item_min } => *item_min = min[*items as usize],
                Node::Map { values, entry_min } => {
                    // A key is at least its one-byte length.
                    *entry_min = min[*values as usize].saturating_add(1);
                }
                _ => {}
            }
        }
        Ok(Validator {
            nodes: self.nodes.into_boxed_slice(),
            edges: self.edges.into_boxed_slice(),
            root,
            root_min: min[root as usize],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{Days, Decimal, Duration, Millis, Months, Uuid};
    use std::time::{Duration as StdDuration, Instant};

    const EXAMPLE: &str = include_str!("../../channels.d/example.avsc");

    /// Every type, logical types, named references and a recursive list.
    const ALL_TYPES: &str = r#"{
      "type": "record", "name": "All", "namespace": "t",
      "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
          {"name": "a", "type": "int"},
          {"name": "deep", "type": {"type": "record", "name": "Deep", "fields": [
            {"name": "x", "type": "double"}, {"name": "y", "type": "float"}, {"name": "z", "type": "null"}]}}
        ]}},
        {"name": "arr", "type": {"type": "array", "items": "long"}},
        {"name": "doubles", "type": {"type": "array", "items": "double"}},
        {"name": "recs", "type": {"type": "array", "items": "Inner"}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {"name": "u", "type": ["null", "long", "string", "Inner"]},
        {"name": "dec_b", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "dec_f", "type": {"type": "fixed", "name": "DecF", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 3}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
        {"name": "list", "type": {"type": "record", "name": "Node", "fields": [
          {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}},
        {"name": "nulls", "type": {"type": "array", "items": "null"}},
        {"name": "mo", "type": {"type": "map", "values": ["null", {"type": "array", "items": "Color"}]}},
        {"name": "tail", "type": "boolean"}
      ]
    }"#;

    const LIST: &str = r#"{"type":"record","name":"Node","fields":[
        {"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;

    /// xorshift64: small, deterministic.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            (0..self.below(max + 1)).map(|_| self.byte()).collect()
        }
        /// Mostly small magnitudes (short varints), sometimes anything.
        fn long(&mut self) -> i64 {
            match self.below(4) {
                0 => self.next() as i64,
                1 => (self.next() as i64) >> self.below(64),
                _ => self.below(200) as i64 - 100,
            }
        }
        fn int(&mut self) -> i32 {
            (self.long() >> 32) as i32 ^ self.long() as i32
        }
        fn string(&mut self) -> String {
            const PARTS: [&str; 6] = ["a", "Z", "0", " ", "é", "日本"];
            (0..self.below(6))
                .map(|_| PARTS[self.below(PARTS.len())])
                .collect()
        }
    }

    fn parse(json: &str) -> Schema {
        Schema::parse_str(json).expect("test schema parses")
    }

    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .expect("writer")
            .write_value_to_vec(value)
            .expect("value encodes")
    }

    /// Zig-zag varint of `v`.
    fn zz(v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push(z as u8 | 0x80);
            z >>= 7;
        }
    }

    fn reason(v: &Validator, x: &[u8]) -> Option<Reason> {
        v.validate(x).err().map(|e| e.reason)
    }

    /// apache-avro's decode of `x`: how many bytes it consumed.
    fn apache_consumed(schema: &Schema, x: &[u8]) -> Result<usize, apache_avro::Error> {
        let reader = GenericDatumReader::builder(schema).build()?;
        let mut rest = x;
        reader.read_value(&mut rest)?;
        Ok(x.len() - rest.len())
    }

    fn apache_accepts(schema: &Schema, x: &[u8]) -> bool {
        matches!(apache_consumed(schema, x), Ok(n) if n == x.len())
    }

    fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(
            fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        )
    }

    fn example_value(rng: &mut Rng) -> Value {
        record(vec![
            ("time", Value::TimestampMicros(rng.long())),
            ("message", Value::String(rng.string())),
            ("counter", Value::Int(rng.int())),
            ("sine_wave", Value::Double(rng.next() as f64)),
            ("ramp", Value::Double(f64::from_bits(rng.next()))),
            ("square_wave", Value::Double(-1.0)),
            ("noise", Value::Double(0.25)),
        ])
    }

    fn inner_value(rng: &mut Rng) -> Value {
        record(vec![
            ("a", Value::Int(rng.int())),
            (
                "deep",
                record(vec![
                    ("x", Value::Double(rng.next() as f64)),
                    ("y", Value::Float(f32::from_bits(rng.next() as u32))),
                    ("z", Value::Null),
                ]),
            ),
        ])
    }

    fn color(rng: &mut Rng) -> Value {
        let i = rng.below(3);
        Value::Enum(i as u32, ["RED", "GREEN", "BLUE"][i].to_owned())
    }

    fn list_value(rng: &mut Rng, len: usize) -> Value {
        let next = if len == 0 {
            Value::Union(0, Box::new(Value::Null))
        } else {
            Value::Union(1, Box::new(list_value(rng, len - 1)))
        };
        record(vec![("v", Value::Int(rng.int())), ("next", next)])
    }

    fn all_types_value(rng: &mut Rng) -> Value {
        let u = match rng.below(4) {
            0 => Value::Union(0, Box::new(Value::Null)),
            1 => Value::Union(1, Box::new(Value::Long(rng.long()))),
            2 => Value::Union(2, Box::new(Value::String(rng.string()))),
            _ => Value::Union(3, Box::new(inner_value(rng))),
        };
        let mo = (0..rng.below(3))
            .map(|_| {
                let v = if rng.below(2) == 0 {
                    Value::Union(0, Box::new(Value::Null))
                } else {
                    let colors = (0..rng.below(3)).map(|_| color(rng)).collect();
                    Value::Union(1, Box::new(Value::Array(colors)))
                };
                (rng.string(), v)
            })
            .collect();
        let fixed8: Vec<u8> = (0..8).map(|_| rng.byte()).collect();
        record(vec![
            ("n", Value::Null),
            ("b", Value::Boolean(rng.below(2) == 1)),
            ("i", Value::Int(rng.int())),
            ("l", Value::Long(rng.long())),
            ("f", Value::Float(1.5)),
            ("d", Value::Double(rng.next() as f64)),
            ("by", Value::Bytes(rng.bytes(5))),
            ("s", Value::String(rng.string())),
            ("e", color(rng)),
            ("fx", Value::Fixed(4, vec![rng.byte(), 0, 0xff, 0x80])),
            ("inner", inner_value(rng)),
            (
                "arr",
                Value::Array((0..rng.below(4)).map(|_| Value::Long(rng.long())).collect()),
            ),
            (
                "doubles",
                Value::Array((0..rng.below(3)).map(|_| Value::Double(0.5)).collect()),
            ),
            (
                "recs",
                Value::Array((0..rng.below(3)).map(|_| inner_value(rng)).collect()),
            ),
            (
                "m",
                Value::Map(
                    (0..rng.below(3))
                        .map(|_| (rng.string(), Value::String(rng.string())))
                        .collect(),
                ),
            ),
            ("u", u),
            (
                "dec_b",
                Value::Decimal(Decimal::from([rng.byte(), rng.byte()])),
            ),
            ("dec_f", Value::Decimal(Decimal::from(fixed8))),
            (
                "id",
                Value::Uuid(Uuid::from_u64_pair(rng.next(), rng.next())),
            ),
            ("date", Value::Date(rng.int())),
            ("ts", Value::TimestampMicros(rng.long())),
            (
                "dur",
                Value::Duration(Duration::new(
                    Months::new(rng.next() as u32),
                    Days::new(7),
                    Millis::new(rng.next() as u32),
                )),
            ),
            ("list", {
                let len = rng.below(4);
                list_value(rng, len)
            }),
            (
                "nulls",
                Value::Array((0..rng.below(3)).map(|_| Value::Null).collect()),
            ),
            ("mo", Value::Map(mo)),
            ("tail", Value::Boolean(rng.below(2) == 1)),
        ])
    }

    /// One to three random edits: byte changes, small +-1 nudges (which keep
    /// many lengths and indices plausible), insertions, deletions, truncation,
    /// appended bytes.
    fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
        const SPECIAL: [u8; 7] = [0x00, 0x01, 0x02, 0x03, 0x7f, 0x80, 0xff];
        let mut x = valid.to_vec();
        for _ in 0..1 + rng.below(4) / 3 * (1 + rng.below(2)) {
            let at = rng.below(x.len() + 1);
            let have = at < x.len();
            match rng.below(9) {
                0 if have => x[at] = rng.byte(),
                1 if have => x[at] ^= 1 << rng.below(8),
                2 if have => x[at] = x[at].wrapping_add(2),
                3 if have => x[at] = x[at].wrapping_sub(2),
                4 => x.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                5 => x.insert(at, rng.byte()),
                6 if have => {
                    x.remove(at);
                }
                7 => x.truncate(at),
                _ => {
                    for _ in 0..1 + rng.below(3) {
                        x.push(SPECIAL[rng.below(SPECIAL.len())]);
                    }
                }
            }
        }
        x
    }

    /// Whether `x[at..]` starts with an int varint of 6 to 10 bytes whose
    /// value fits in 32 bits: apache-avro reads it, the spec (and Java) do not.
    fn overlong_int_at(x: &[u8], at: usize) -> bool {
        let mut z = 0u64;
        for (j, &b) in x.iter().skip(at).take(10).enumerate() {
            z |= u64::from(b & 0x7f) << (7 * j);
            if b < 0x80 {
                let v = (z >> 1) as i64 ^ -((z & 1) as i64);
                return j >= 5 && i32::try_from(v).is_ok();
            }
        }
        false
    }

    #[derive(Default, Debug)]
    struct Tally {
        both_accept: usize,
        both_reject: usize,
        eof_quirk: usize,
        stricter: usize,
    }

    /// Checks the validator against apache-avro on `x`.
    ///
    /// `oracle` is the schema apache-avro decodes with: the channel schema,
    /// except that logical types whose content apache-avro parses (uuid,
    /// big-decimal) are left unannotated, since the validator deliberately
    /// checks them as their underlying type only.
    fn cross_check(v: &Validator, oracle: &Schema, x: &[u8], tally: &mut Tally) {
        let ours = v.validate(x);
        let literal = apache_accepts(oracle, x);
        // apache-avro 0.22 reads end-of-input at a boolean, a string's body or
        // a union index as null, so it accepts some truncated datums. Decoding
        // `x` followed by padding, and requiring that it stop exactly at the end
        // of `x`, asks the same question without that bug.
        let mut padded = x.to_vec();
        padded.extend_from_slice(&[0; 16]);
        let theirs = matches!(apache_consumed(oracle, &padded), Ok(n) if n == x.len());
        assert!(
            literal || !theirs,
            "padding cannot make apache-avro accept {x:02x?}"
        );
        if literal && !theirs {
            // Exclusion: the EOF-as-null bug. These are truncations, always,
            // though the validator may name them Empty, or notice first that a
            // count cannot fit.
            let reason = ours.map_err(|e| e.reason);
            assert!(
                matches!(
                    reason,
                    Err(Reason::Truncated | Reason::ImplausibleCount | Reason::Empty)
                ),
                "{reason:?} {x:02x?}"
            );
            tally.eof_quirk += 1;
            return;
        }
        match (ours, theirs) {
            (Ok(()), true) => tally.both_accept += 1,
            (Err(_), false) => tally.both_reject += 1,
            (Ok(()), false) => panic!("validator accepts what apache-avro rejects: {x:02x?}"),
            (Err(e), true) => {
                // Exclusions: the deliberate, documented stricter rules.
                let deliberate = match e.reason {
                    // Blocks of always-empty items claiming more items than bytes left.
                    Reason::ImplausibleCount => true,
                    // A negative block count's byte size, which apache-avro ignores.
                    Reason::BlockSizeMismatch => true,
                    // Nesting limit.
                    Reason::TooDeep => true,
                    // An int in more than 5 bytes.
                    Reason::BadVarint => overlong_int_at(x, e.offset),
                    _ => false,
                };
                assert!(
                    deliberate,
                    "validator rejects ({e}) what apache-avro accepts: {x:02x?}"
                );
                tally.stricter += 1;
            }
        }
    }

    #[test]
    fn example_schema() {
        let schema = parse(EXAMPLE);
        let v = Validator::new(&schema).unwrap();
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..50 {
            let x = encode(&schema, example_value(&mut rng));
            assert_eq!(v.validate(&x), Ok(()));
            for len in 0..x.len() {
                assert!(v.validate(&x[..len]).is_err(), "truncated to {len}");
            }
            let mut long = x.clone();
            long.extend_from_slice(b"junk");
            let err = v.validate(&long).unwrap_err();
            assert_eq!(err.reason, Reason::TrailingBytes);
            assert_eq!(err.offset, x.len());
        }
        assert_eq!(reason(&v, &[]), Some(Reason::Empty));
    }

    #[test]
    fn all_types_valid_and_truncated() {
        let schema = parse(ALL_TYPES);
        let v = Validator::new(&schema).unwrap();
        let mut rng = Rng(0x5eed_0002);
        for _ in 0..200 {
            let x = encode(&schema, all_types_value(&mut rng));
            assert_eq!(v.validate(&x), Ok(()), "{x:02x?}");
            for len in 0..x.len() {
                assert!(v.validate(&x[..len]).is_err(), "truncated to {len}");
            }
            let mut long = x.clone();
            long.push(0);
            assert_eq!(reason(&v, &long), Some(Reason::TrailingBytes));
        }
    }

    #[test]
    fn cross_check_against_apache_avro() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tally = Tally::default();

        // Mutated valid encodings of the all-types and example schemas.
        let all = parse(ALL_TYPES);
        let all_oracle = parse(&ALL_TYPES.replace("\"uuid\"", "\"not-uuid\""));
        let example = parse(EXAMPLE);
        for (schema, oracle, make, n) in [
            (
                &all,
                &all_oracle,
                all_types_value as fn(&mut Rng) -> Value,
                4000,
            ),
            (&example, &example, example_value, 1500),
        ] {
            let v = Validator::new(schema).unwrap();
            let valid: Vec<Vec<u8>> = (0..100).map(|_| encode(schema, make(&mut rng))).collect();
            for x in &valid {
                cross_check(&v, oracle, x, &mut tally);
            }
            for _ in 0..n {
                let pick = rng.below(valid.len());
                let x = mutate(&mut rng, &valid[pick]);
                cross_check(&v, oracle, &x, &mut tally);
            }
            for _ in 0..300 {
                let x = rng.bytes(200);
                cross_check(&v, oracle, &x, &mut tally);
            }
        }

        // Random short inputs, biased to small bytes, against small schemas.
        let small = [
            r#""null""#,
            r#""boolean""#,
            r#""int""#,
            r#""long""#,
            r#""string""#,
            r#"["null", "long", "string", "boolean"]"#,
            r#"{"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}"#,
            r#"{"type": "array", "items": "null"}"#,
            r#"{"type": "array", "items": "int"}"#,
            r#"{"type": "array", "items": {"type": "fixed", "name": "F2", "size": 2}}"#,
            r#"{"type": "map", "values": "boolean"}"#,
            r#"{"type": "map", "values": {"type": "array", "items": ["null", "int"]}}"#,
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "a", "type": "boolean"}, {"name": "b", "type": "string"},
                {"name": "c", "type": ["null", "R"]}]}"#,
            LIST,
        ];
        for json in small {
            let schema = parse(json);
            let v = Validator::new(&schema).unwrap();
            for _ in 0..600 {
                let len = rng.below(12);
                let x: Vec<u8> = (0..len)
                    .map(|_| match rng.below(3) {
                        0 => rng.byte(),
                        _ => rng.below(6) as u8,
                    })
                    .collect();
                cross_check(&v, &schema, &x, &mut tally);
            }
        }

        let total = tally.both_accept + tally.both_reject + tally.eof_quirk + tally.stricter;
        assert!(total > 13_000, "{tally:?}");
        // Enough of both verdicts for the comparison to mean something.
        assert!(tally.both_accept > 1500, "{tally:?}");
        assert!(tally.both_reject > 5000, "{tally:?}");
        // The exclusions stay narrow.
        assert!(tally.stricter + tally.eof_quirk < total / 10, "{tally:?}");
    }

    #[test]
    fn deep_list_is_too_deep_without_overflow() {
        let schema = parse(LIST);
        let v = Validator::new(&schema).unwrap();
        let list = |len: usize| {
            let mut x = [0x00, 0x02].repeat(len);
            x.extend_from_slice(&[0x00, 0x00]);
            x
        };
        // 10,000 levels, on a small stack: refused at the depth limit.
        let deep = list(10_000);
        let v2 = v.clone();
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || v2.validate(&deep))
            .unwrap()
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.reason, Reason::TooDeep);
        assert_eq!(err.offset, 2 * MAX_DEPTH as usize);
        // At the limit (128 records) it passes, one more is too deep.
        assert_eq!(v.validate(&list(MAX_DEPTH as usize - 1)), Ok(()));
        assert_eq!(reason(&v, &list(MAX_DEPTH as usize)), Some(Reason::TooDeep));
        // apache-avro has no limit (it takes a large stack to show it).
        let deeper = list(MAX_DEPTH as usize);
        let accepted = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || apache_accepts(&schema, &deeper))
            .unwrap()
            .join()
            .unwrap();
        assert!(accepted);

        // Nesting through arrays counts too.
        let tree = parse(
            r#"{"type":"record","name":"T","fields":[{"name":"kids","type":{"type":"array","items":"T"}}]}"#,
        );
        let v = Validator::new(&tree).unwrap();
        let mut x = [0x02].repeat(10_000);
        x.extend([0x00].repeat(10_001));
        assert_eq!(reason(&v, &x), Some(Reason::TooDeep));
    }

    #[test]
    fn huge_counts_are_rejected_fast() {
        let start = Instant::now();
        let nulls = Validator::new(&parse(r#"{"type":"array","items":"null"}"#)).unwrap();
        let doubles = Validator::new(&parse(r#"{"type":"array","items":"double"}"#)).unwrap();
        let strings = Validator::new(&parse(r#"{"type":"map","values":"string"}"#)).unwrap();
        for count in [1i64 << 60, -(1 << 60), i64::MAX, i64::MIN, 1000] {
            let mut x = zz(count);
            if count < 0 {
                x.extend(zz(0));
            }
            x.push(0);
            for v in [&nulls, &doubles, &strings] {
                let err = v.validate(&x).unwrap_err();
                assert_eq!((err.offset, err.reason), (0, Reason::ImplausibleCount));
            }
        }
        assert!(start.elapsed() < StdDuration::from_millis(200));

        // Always-empty items: up to the bytes left from the block's count.
        assert_eq!(nulls.validate(&[0x04, 0x00]), Ok(()));
        assert_eq!(
            reason(&nulls, &[0x06, 0x00]),
            Some(Reason::ImplausibleCount)
        );
        // Deliberately stricter than apache-avro, which takes three nulls.
        let schema = parse(r#"{"type":"array","items":"null"}"#);
        assert!(apache_accepts(&schema, &[0x06, 0x00]));
    }

    #[test]
    fn primitives() {
        let v = |json: &str| Validator::new(&parse(json)).unwrap();
        let null = v(r#""null""#);
        assert_eq!(null.validate(&[]), Ok(()));
        assert_eq!(reason(&null, &[0]), Some(Reason::TrailingBytes));

        let boolean = v(r#""boolean""#);
        assert_eq!(boolean.validate(&[0]), Ok(()));
        assert_eq!(boolean.validate(&[1]), Ok(()));
        assert_eq!(reason(&boolean, &[2]), Some(Reason::BadBoolean));
        assert_eq!(reason(&boolean, &[]), Some(Reason::Empty));

        let int = v(r#""int""#);
        assert_eq!(int.validate(&zz(i32::MIN.into())), Ok(()));
        assert_eq!(int.validate(&zz(i32::MAX.into())), Ok(()));
        assert_eq!(reason(&int, &zz(1 << 31)), Some(Reason::IntOutOfRange));
        assert_eq!(
            reason(&int, &zz(-(1 << 31) - 1)),
            Some(Reason::IntOutOfRange)
        );
        assert_eq!(int.validate(&[0x80, 0x80, 0x80, 0x80, 0x00]), Ok(()));
        // Six bytes: not an int (apache-avro takes it, the spec and Java do not).
        let six = [0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(reason(&int, &six), Some(Reason::BadVarint));
        assert!(apache_accepts(&parse(r#""int""#), &six));
        assert_eq!(reason(&int, &[0x80]), Some(Reason::Truncated));

        let long = v(r#""long""#);
        assert_eq!(long.validate(&zz(i64::MIN)), Ok(()));
        assert_eq!(long.validate(&zz(i64::MAX)), Ok(()));
        let mut eleven = [0xff; 11];
        eleven[10] = 0x01;
        assert_eq!(reason(&long, &eleven), Some(Reason::BadVarint));
        // Excess bits in the tenth byte are dropped, as apache-avro and Java do.
        let mut ten = [0xff; 10];
        ten[9] = 0x7f;
        assert_eq!(long.validate(&ten), Ok(()));
        assert!(apache_accepts(&parse(r#""long""#), &ten));

        let float = v(r#""float""#);
        assert_eq!(float.validate(&[0; 4]), Ok(()));
        assert_eq!(reason(&float, &[0; 3]), Some(Reason::Truncated));
        let double = v(r#""double""#);
        assert_eq!(double.validate(&[0xff; 8]), Ok(()));

        let string = v(r#""string""#);
        assert_eq!(string.validate(b"\x06abc"), Ok(()));
        assert_eq!(string.validate(b"\x00"), Ok(()));
        let err = string.validate(b"\x06a\xffc").unwrap_err();
        assert_eq!((err.offset, err.reason), (2, Reason::InvalidUtf8));
        assert_eq!(reason(&string, b"\x01"), Some(Reason::NegativeLength));
        assert_eq!(reason(&string, b"\x08abc"), Some(Reason::Truncated));
        let bytes = v(r#""bytes""#);
        assert_eq!(bytes.validate(b"\x04\xff\xfe"), Ok(()));

        let fixed = v(r#"{"type":"fixed","name":"F","size":3}"#);
        assert_eq!(fixed.validate(&[1, 2, 3]), Ok(()));
        assert_eq!(reason(&fixed, &[1, 2]), Some(Reason::Truncated));
        let huge = v(r#"{"type":"fixed","name":"F","size":1000000000000}"#);
        assert_eq!(reason(&huge, &[1, 2]), Some(Reason::Truncated));

        let e = v(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
        assert_eq!(e.validate(&zz(2)), Ok(()));
        assert_eq!(reason(&e, &zz(3)), Some(Reason::EnumIndexOutOfRange));
        assert_eq!(reason(&e, &zz(-1)), Some(Reason::EnumIndexOutOfRange));

        let u = v(r#"["null","string"]"#);
        assert_eq!(u.validate(&[0]), Ok(()));
        assert_eq!(u.validate(&[2, 0]), Ok(()));
        assert_eq!(reason(&u, &zz(2)), Some(Reason::UnionIndexOutOfRange));
        assert_eq!(reason(&u, &zz(-1)), Some(Reason::UnionIndexOutOfRange));
        // apache-avro takes an empty datagram as branch 0 (null); it is not a datum.
        assert_eq!(reason(&u, &[]), Some(Reason::Empty));
    }

    #[test]
    fn negative_block_counts() {
        let json = r#"{"type":"map","values":"long"}"#;
        let schema = parse(json);
        let v = Validator::new(&schema).unwrap();
        // Two entries in one block of 6 bytes ("a" -> 1, "bc" -> -1), then the end.
        let mut x = zz(-2);
        x.extend(zz(7));
        x.extend(b"\x02a\x02\x04bc\x01\x00");
        assert_eq!(v.validate(&x), Ok(()));
        assert!(apache_accepts(&schema, &x));
        // A wrong byte size: apache-avro ignores it, the validator does not.
        x[1] = zz(6)[0];
        let err = v.validate(&x).unwrap_err();
        assert_eq!((err.offset, err.reason), (1, Reason::BlockSizeMismatch));
        assert!(apache_accepts(&schema, &x));

        let doubles = Validator::new(&parse(r#"{"type":"array","items":"double"}"#)).unwrap();
        let mut x = zz(-2);
        x.extend(zz(16));
        x.extend([0; 16]);
        x.push(0);
        assert_eq!(doubles.validate(&x), Ok(()));
        x[1] = zz(15)[0];
        assert_eq!(reason(&doubles, &x), Some(Reason::BlockSizeMismatch));
    }

    #[test]
    fn logical_types_are_checked_as_their_underlying_type() {
        // Deliberately laxer than apache-avro, which parses the content.
        let uuid = parse(r#"{"type":"string","logicalType":"uuid"}"#);
        let v = Validator::new(&uuid).unwrap();
        assert_eq!(v.validate(b"\x06abc"), Ok(()));
        assert!(!apache_accepts(&uuid, b"\x06abc"));
        let id = encode(&uuid, Value::Uuid(Uuid::from_u128(0x1234)));
        assert_eq!(v.validate(&id), Ok(()));

        let big = parse(r#"{"type":"bytes","logicalType":"big-decimal"}"#);
        let v = Validator::new(&big).unwrap();
        // Well formed: 2 bytes of unscaled value, then scale 3, as bytes of 4.
        let good = [0x08, 0x04, 0x01, 0x00, 0x06];
        assert_eq!(v.validate(&good), Ok(()));
        assert!(apache_accepts(&big, &good));
        assert_eq!(v.validate(&[0x02, 0x7f]), Ok(()));
        assert!(!apache_accepts(&big, &[0x02, 0x7f]));

        for json in [
            r#"{"type":"int","logicalType":"date"}"#,
            r#"{"type":"int","logicalType":"time-millis"}"#,
        ] {
            let v = Validator::new(&parse(json)).unwrap();
            assert_eq!(reason(&v, &zz(1 << 31)), Some(Reason::IntOutOfRange));
        }
        for json in [
            r#"{"type":"long","logicalType":"time-micros"}"#,
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            r#"{"type":"long","logicalType":"timestamp-nanos"}"#,
            r#"{"type":"long","logicalType":"local-timestamp-millis"}"#,
            r#"{"type":"long","logicalType":"local-timestamp-micros"}"#,
            r#"{"type":"long","logicalType":"local-timestamp-nanos"}"#,
        ] {
            let v = Validator::new(&parse(json)).unwrap();
            assert_eq!(v.validate(&zz(1 << 40)), Ok(()), "{json}");
        }
        let dur = parse(r#"{"type":"fixed","name":"D","size":12,"logicalType":"duration"}"#);
        assert!(matches!(dur, Schema::Duration(_)));
        let v = Validator::new(&dur).unwrap();
        assert_eq!(v.validate(&[0; 12]), Ok(()));
        assert_eq!(reason(&v, &[0; 11]), Some(Reason::Truncated));
        let uuid_fixed = parse(r#"{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}"#);
        assert!(matches!(uuid_fixed, Schema::Uuid(UuidSchema::Fixed(_))));
        assert_eq!(
            Validator::new(&uuid_fixed).unwrap().validate(&[7; 16]),
            Ok(())
        );
    }

    #[test]
    fn named_references_across_namespaces() {
        let schema = parse(
            r#"{"type":"record","name":"R","namespace":"a","fields":[
                {"name":"x","type":{"type":"record","name":"X","namespace":"b","fields":[
                    {"name":"y","type":{"type":"fixed","name":"Y","size":2}},
                    {"name":"s","type":"string"}]}},
                {"name":"x2","type":"b.X"},
                {"name":"y2","type":"b.Y"},
                {"name":"r","type":["null","R"]}]}"#,
        );
        let v = Validator::new(&schema).unwrap();
        let x_value = |s: &str| {
            record(vec![
                ("y", Value::Fixed(2, vec![1, 2])),
                ("s", Value::String(s.to_owned())),
            ])
        };
        let inner = record(vec![
            ("x", x_value("h")),
            ("x2", x_value("")),
            ("y2", Value::Fixed(2, vec![3, 4])),
            ("r", Value::Union(0, Box::new(Value::Null))),
        ]);
        let outer = record(vec![
            ("x", x_value("i")),
            ("x2", x_value("jk")),
            ("y2", Value::Fixed(2, vec![5, 6])),
            ("r", Value::Union(1, Box::new(inner))),
        ]);
        let x = &encode(&schema, outer)[..];
        assert!(apache_accepts(&schema, x));
        assert_eq!(reason(&v, &x[..x.len() - 1]), Some(Reason::Truncated));
    }

    #[test]
    fn compile_errors() {
        let looped = parse(r#"{"type":"record","name":"A","fields":[{"name":"a","type":"A"}]}"#);
        let err = Validator::new(&looped).unwrap_err();
        assert!(matches!(err, CompileError::Unencodable { .. }), "{err}");
        assert!(err.to_string().contains("`A`"), "{err}");
        // Through a union with an escape it is fine.
        assert!(Validator::new(&parse(LIST)).is_ok());
    }

    #[test]
    fn labels_and_messages() {
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(Reason::as_str).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        assert_eq!(Reason::ALL.len(), 13);
        for label in labels {
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{label}"
            );
        }
        let e = Invalid {
            offset: 57,
            reason: Reason::TrailingBytes,
        };
        assert_eq!(
            e.to_string(),
            "trailing bytes: the datum ends at offset 57, before the datagram"
        );
        assert_eq!(Reason::TooDeep.to_string(), "too_deep");

        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Validator>();
        send_sync::<Invalid>();
        send_sync::<CompileError>();
    }
}
