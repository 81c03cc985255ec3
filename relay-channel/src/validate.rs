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
//! once (module `compile`) into a flat arena of nodes (named-type references become node indices,
//! so recursive schemas work; runs of fixed-size fields merge into one bounds
//! check) and [`Validator::validate`] walks the bytes without allocating.
//!
//! In front of the walker is a fast path (module `fast`): the fixed-size
//! fields, bounded varints (int, long, enum index, and the dates, times and
//! timestamps with their ranges) and arrays of fixed-size items of the top
//! record and its nested records are flattened into a list of ops that one
//! loop checks, without recursion and without a `Result` per field; a field
//! of any other shape (strings, bytes, unions, maps, other arrays) is handed
//! to the walker as it comes. The fast path only says yes or no: a datum it
//! rejects is walked again from the start, so the walker alone decides what
//! [`Invalid`] says, and the verdicts are the walker's (the tests compare
//! the two on random and corrupted datums).
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
//! record: its fields in order.
//!
//! Logical types are encoded as their underlying type, and their values are
//! checked too, so that no reader that converts them (fastavro's default
//! reader, say, which stops at the first value it cannot convert and so loses
//! the rest of the file) meets a value it cannot represent. Out of range is
//! [`Reason::LogicalTypeRange`]:
//! - `date` (days), `timestamp-millis`, `timestamp-micros`,
//!   `local-timestamp-millis`, `local-timestamp-micros`: within years 1 to
//!   9999, i.e. 0001-01-01T00:00:00 to 9999-12-31T23:59:59.999… (UTC for the
//!   timestamps); the range of Python's `datetime`, and so of fastavro's.
//!   `timestamp-nanos` and `local-timestamp-nanos` need no check: every long
//!   of nanoseconds lies within years 1677 to 2262 (and fastavro 1.13 does
//!   not convert them at all).
//! - `time-millis`, `time-micros`: within one day, `0 <= v < 86,400,000`
//!   (`86,400,000,000` for micros).
//! - `decimal` (on bytes or fixed): the unscaled value, a big-endian two's
//!   complement integer, has at most `precision` digits:
//!   `|unscaled| < 10^precision`, exactly. (A fixed too small to hold an out
//!   of range value is not checked and stays a plain fixed. So is a precision
//!   of 157,824 digits or more, which every value of up to 64 KiB meets.)
//! - `uuid` on a string: the RFC 4122 form, 8-4-4-4-12 hex digits (either
//!   case), 36 characters; `uuid` on bytes: 16 bytes. A uuid on a fixed(16)
//!   and a duration (fixed(12)) can hold no wrong value.
//! - `big-decimal` is checked as bytes only (see "Laxer" below).
//!
//! # Naming the field
//!
//! A [`Reason::LogicalTypeRange`] names the field it was found in
//! ([`Invalid::field`]), as a dotted path of field names from the top record
//! (`time`, `inner.when`), with `[]` for the items of an array and `{}` for
//! the values of a map (`samples[].at`, `by_day{}`); a union branch adds
//! nothing; a logical type that is the whole schema has no field (`None`).
//! The receive path carries [`Invalid`] by value (it is `Copy`) and displays
//! it only later, as the quarantine entry's `detail`, without the validator
//! at hand, so the name travels inside it as a `&'static str`: each path is
//! built once, when the schema is compiled, and interned in a process-wide
//! set, so compiling the same schema again (the orchestrator re-checks
//! channel files on every reload) reuses the strings instead of leaking new
//! ones; what the set holds is bounded by the distinct paths of the schemas
//! the process ever compiled. While walking, the validator carries only the
//! index of the check that failed (its internal error stays two words, so
//! the hot recursion returns in registers) and builds the [`Invalid`] once,
//! on the way out.
//!
//! A named record with logical-type fields is compiled once per place it is
//! used, so that each copy names its own path (`inner.when` and
//! `recs[].when`); records without them are shared, as before. A reference
//! back into a record being compiled (recursion) shares it: inside a
//! recursive type the path is that of its first level (`list.next.at` is
//! reported as `list.at`). Past 65,536 nodes records are shared regardless,
//! so a schema that reuses a type at every level cannot blow up; a shared
//! copy names the path of its first use.
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
//! - Logical-type values out of range ([`Reason::LogicalTypeRange`]):
//!   apache-avro reads dates, times and timestamps as plain numbers and
//!   decimals without their precision, so it accepts any; and it parses a
//!   uuid string in any of the `uuid` crate's forms (also 32 digits without
//!   hyphens, braced, `urn:uuid:`), where only the hyphenated form passes
//!   here (the one the spec names, and the one every reader parses).
//!
//! Laxer (accepted here, rejected there): the content of `big-decimal` bytes
//! is not parsed, so bytes that are not a well-formed big decimal pass
//! (fastavro does not know the type and reads them as bytes).

use std::fmt;

mod compile;
mod fast;

pub use crate::reject::Reason;
use crate::varint::{self, Overrun, MAX_INT_LEN, MAX_LONG_LEN};

use apache_avro::schema::Schema;

/// Deepest nesting of records, arrays and maps that [`Validator::validate`]
/// follows before giving up with [`Reason::TooDeep`].
const MAX_DEPTH: u32 = 128;

/// "No logical-type check": [`Fault::check`] of every other fault.
const NO_CHECK: u32 = u32::MAX;

/// One compiled schema node. Indices refer to [`Validator::nodes`],
/// [`Validator::edges`] and [`Validator::checks`].
#[derive(Debug, Clone, Copy)]
enum Node {
    /// Exactly this many bytes of any content: null (0), float (4), double
    /// (8), fixed (also uuid on fixed, duration, and decimal on a fixed too
    /// small to go out of range), and runs of such fields (or whole records of
    /// them) merged.
    Skip(usize),
    Boolean,
    Int,
    /// long, timestamp-nanos, local-timestamp-nanos.
    Long,
    /// bytes, big-decimal, decimal with a precision of 157,824 or more.
    Bytes,
    String,
    /// A value of a logical type, checked as `checks[check]` says.
    Checked {
        kind: CheckKind,
        check: u32,
    },
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

/// The kinds of [`Node::Checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckKind {
    /// date, time-millis: an int within `lo..=hi`.
    Int,
    /// time-micros, timestamp-millis/micros, local-timestamp-millis/micros:
    /// a long within `lo..=hi`.
    Long,
    /// decimal on bytes: at most `max` in magnitude.
    DecimalBytes,
    /// decimal on fixed: `size` bytes, at most `max` in magnitude.
    DecimalFixed,
    /// uuid on string: the 8-4-4-4-12 form.
    UuidString,
    /// uuid on bytes: 16 bytes.
    UuidBytes,
}

/// What one logical-type node checks, and where it is.
#[derive(Debug, Clone)]
struct Check {
    logical: Logical,
    /// The field's path, interned; `None` for the whole datum.
    path: Option<&'static str>,
    /// Inclusive bounds of a [`CheckKind::Int`] or [`CheckKind::Long`] value.
    lo: i64,
    hi: i64,
    /// Size of a [`CheckKind::DecimalFixed`].
    size: usize,
    /// Largest magnitude of a decimal's unscaled value, `10^precision - 1`,
    /// big-endian without leading zero bytes.
    max: Box<[u8]>,
}

/// A schema compiled for allocation-free validation of binary datums.
///
/// Build it once per channel with [`Validator::new`]; it is immutable, cheap
/// to share between threads, and [`Validator::validate`] never allocates.
#[derive(Debug, Clone)]
pub struct Validator {
    nodes: Box<[Node]>,
    edges: Box<[u32]>,
    checks: Box<[Check]>,
    root: u32,
    /// Lower bound of the encoded length of a whole datum.
    root_min: usize,
    /// The flattened ops that accept most datums without the walker, where
    /// the schema has them (see [`fast`]).
    fast: Option<fast::FastPath>,
}

/// Why and where a datagram is not exactly one datum of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// Byte offset in the datagram of the offending item (for
    /// [`Reason::TrailingBytes`], where the datum ended).
    pub offset: usize,
    /// What is wrong there.
    pub reason: Reason,
    /// For [`Reason::LogicalTypeRange`]: the field, as a dotted path from the
    /// top record (`time`, `inner.when`, `samples[].at`, `by_day{}`); `None`
    /// when the logical type is the whole schema, and for other reasons.
    pub field: Option<&'static str>,
    /// For [`Reason::LogicalTypeRange`]: the logical type; `None` for other
    /// reasons.
    pub logical: Option<Logical>,
}

/// The logical types whose values [`Validator::validate`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Logical {
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    LocalTimestampMillis,
    LocalTimestampMicros,
    Decimal,
    Uuid,
}

impl Logical {
    /// The `logicalType` name, e.g. `"timestamp-micros"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Logical::Date => "date",
            Logical::TimeMillis => "time-millis",
            Logical::TimeMicros => "time-micros",
            Logical::TimestampMillis => "timestamp-millis",
            Logical::TimestampMicros => "timestamp-micros",
            Logical::LocalTimestampMillis => "local-timestamp-millis",
            Logical::LocalTimestampMicros => "local-timestamp-micros",
            Logical::Decimal => "decimal",
            Logical::Uuid => "uuid",
        }
    }
}

impl fmt::Display for Logical {
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
            Reason::LogicalTypeRange => {
                match self.field {
                    Some(path) => write!(f, "field `{path}`: ")?,
                    None => f.write_str("the datum: ")?,
                }
                match self.logical {
                    Some(
                        l @ (Logical::Date
                        | Logical::TimestampMillis
                        | Logical::TimestampMicros
                        | Logical::LocalTimestampMillis
                        | Logical::LocalTimestampMicros),
                    ) => write!(
                        f,
                        "{l} value at offset {at} is outside years 1 to 9999 \
                         (0001-01-01 to 9999-12-31)"
                    ),
                    Some(l @ (Logical::TimeMillis | Logical::TimeMicros)) => write!(
                        f,
                        "{l} value at offset {at} is not a time of day (0 to 24 h, 24 h excluded)"
                    ),
                    Some(Logical::Decimal) => write!(
                        f,
                        "decimal at offset {at} has more digits than its precision"
                    ),
                    Some(Logical::Uuid) => write!(
                        f,
                        "uuid at offset {at} is not a UUID (a string of 8-4-4-4-12 hex digits, \
                         or 16 bytes)"
                    ),
                    None => write!(
                        f,
                        "value at offset {at} is outside the range of its logical type"
                    ),
                }
            }
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

/// The walk's own error: an [`Invalid`] without its field, which
/// [`Validator::validate`] looks up once at the end. Two words, so that the
/// recursive walk returns it in registers.
#[derive(Debug, Clone, Copy)]
struct Fault {
    offset: usize,
    reason: Reason,
    /// Index in [`Validator::checks`] for [`Reason::LogicalTypeRange`],
    /// otherwise [`NO_CHECK`].
    check: u32,
}

impl Validator {
    /// Compiles `schema`. Fails if its named types do not resolve or a part of
    /// it can never be encoded (see [`CompileError`]).
    pub fn new(schema: &Schema) -> Result<Validator, CompileError> {
        compile::compile(schema)
    }

    /// Checks that `datum` is exactly one datum of the schema: it decodes
    /// completely and nothing follows, and the values of its logical types
    /// are in range. Never allocates and never panics.
    #[inline]
    pub fn validate(&self, datum: &[u8]) -> Result<(), Invalid> {
        match &self.fast {
            Some(fast) if fast.accepts(self, datum) => Ok(()),
            // Rejected (or no fast path): the walker says why.
            _ => self.validate_walking(datum),
        }
    }

    /// [`Validator::validate`] without the fast path: the general walker
    /// alone. The same verdicts and the same [`Invalid`]; for tests, fuzzing
    /// and measurements.
    #[doc(hidden)]
    pub fn validate_walking(&self, datum: &[u8]) -> Result<(), Invalid> {
        self.fault(datum).map_err(|fault| self.invalid(fault))
    }

    fn fault(&self, datum: &[u8]) -> Result<(), Fault> {
        if datum.is_empty() && self.root_min > 0 {
            return Err(Fault {
                offset: 0,
                reason: Reason::Empty,
                check: NO_CHECK,
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

    #[cold]
    fn invalid(&self, fault: Fault) -> Invalid {
        let check = self.checks.get(fault.check as usize);
        Invalid {
            offset: fault.offset,
            reason: fault.reason,
            field: check.and_then(|c| c.path),
            logical: check.map(|c| c.logical),
        }
    }

    /// Checks one datum of `node` at the cursor. `depth` counts the records,
    /// arrays and maps already entered.
    fn walk(&self, mut node: u32, cur: &mut Cursor<'_>, depth: u32) -> Result<(), Fault> {
        loop {
            return match self.nodes[node as usize] {
                Node::Skip(n) => cur.skip(n, cur.pos),
                Node::Boolean => cur.boolean(),
                Node::Int => cur.int().map(drop),
                Node::Long => cur.long().map(drop),
                Node::Bytes => cur.bytes().map(drop),
                Node::String => cur.string(),
                Node::Checked { kind, check } => self.checked(kind, check, cur),
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

    /// Checks one value of a logical type at the cursor. Apart from
    /// [`Validator::walk`], so that the plain nodes' loop stays as small as
    /// it was (and its stack frame too, in debug builds).
    fn checked(&self, kind: CheckKind, check: u32, cur: &mut Cursor<'_>) -> Result<(), Fault> {
        let c = &self.checks[check as usize];
        let at = cur.pos;
        let fits = match kind {
            CheckKind::Int => {
                let v = i64::from(cur.int()?);
                c.lo <= v && v <= c.hi
            }
            CheckKind::Long => {
                let v = cur.long()?;
                c.lo <= v && v <= c.hi
            }
            CheckKind::DecimalBytes => decimal_fits(cur.bytes()?, &c.max),
            CheckKind::DecimalFixed => decimal_fits(cur.take(c.size)?, &c.max),
            CheckKind::UuidString => {
                let body = cur.bytes()?;
                is_uuid(body) || {
                    // Not a UUID; but invalid UTF-8 is said first.
                    cur.utf8(body)?;
                    false
                }
            }
            CheckKind::UuidBytes => cur.bytes()?.len() == 16,
        };
        if fits {
            Ok(())
        } else {
            Err(out_of_range(at, check))
        }
    }
}

/// A [`Reason::LogicalTypeRange`] fault of the value at `at`.
#[cold]
fn out_of_range(at: usize, check: u32) -> Fault {
    Fault {
        offset: at,
        reason: Reason::LogicalTypeRange,
        check,
    }
}

/// Whether the big-endian two's complement integer `unscaled` (empty is 0) is
/// at most `max` (big-endian, no leading zero bytes) in magnitude. Linear in
/// the length, no allocation.
///
/// For `v >= 0` that is `v <= max`. For `v < 0`, `|v| = !v + 1`, so it is
/// `!v < max`. Either way the comparison is of unsigned numbers once the
/// sign-extension bytes (0x00 or 0xff) are dropped and the rest of a
/// negative number is inverted.
fn decimal_fits(unscaled: &[u8], max: &[u8]) -> bool {
    let Some(&first) = unscaled.first() else {
        return true;
    };
    let sign = if first & 0x80 == 0 { 0x00 } else { 0xff };
    let start = unscaled
        .iter()
        .position(|&b| b != sign)
        .unwrap_or(unscaled.len());
    let magnitude = &unscaled[start..];
    match magnitude.len().cmp(&max.len()) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => {
            for (&b, &m) in magnitude.iter().zip(max) {
                let b = b ^ sign;
                if b != m {
                    return b < m;
                }
            }
            // Equal: `v == max` fits, `!v == max` is `|v| == max + 1`.
            sign == 0x00
        }
    }
}

/// Whether `s` is a UUID in the RFC 4122 string form: 8-4-4-4-12 hex digits
/// (either case) separated by hyphens.
fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Enters one more level of nesting, or fails with [`Reason::TooDeep`].
#[inline]
fn enter(cur: &Cursor<'_>, depth: u32) -> Result<u32, Fault> {
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
    mut item: impl FnMut(&mut Cursor<'_>) -> Result<(), Fault>,
) -> Result<(), Fault> {
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
    fn invalid(&self, offset: usize, reason: Reason) -> Fault {
        Fault {
            offset,
            reason,
            check: NO_CHECK,
        }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Advances over `n` bytes, or fails as truncated at `at`.
    #[inline]
    fn skip(&mut self, n: usize, at: usize) -> Result<(), Fault> {
        if n <= self.remaining() {
            self.pos += n;
            Ok(())
        } else {
            Err(self.invalid(at, Reason::Truncated))
        }
    }

    /// Advances over `n` bytes and returns them, or fails as truncated.
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let start = self.pos;
        self.skip(n, start)?;
        let buf: &'a [u8] = self.buf;
        Ok(&buf[start..self.pos])
    }

    /// Reads a varint of at most `max_len` bytes (see [`varint::read`]).
    #[inline]
    fn varint(&mut self, max_len: usize) -> Result<u64, Fault> {
        let start = self.pos;
        match varint::read(self.buf, start, max_len) {
            Ok((value, end)) => {
                self.pos = end;
                Ok(value)
            }
            Err(Overrun::Truncated) => Err(self.invalid(start, Reason::Truncated)),
            Err(Overrun::TooLong) => Err(self.invalid(start, Reason::BadVarint)),
        }
    }

    #[inline]
    fn long(&mut self) -> Result<i64, Fault> {
        let z = self.varint(MAX_LONG_LEN)?;
        Ok(varint::unzigzag(z))
    }

    #[inline]
    fn int(&mut self) -> Result<i32, Fault> {
        let at = self.pos;
        let z = self.varint(MAX_INT_LEN)?;
        let v = varint::unzigzag(z);
        i32::try_from(v).map_err(|_| self.invalid(at, Reason::IntOutOfRange))
    }

    #[inline]
    fn boolean(&mut self) -> Result<(), Fault> {
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
    fn bytes(&mut self) -> Result<&'a [u8], Fault> {
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
    fn string(&mut self) -> Result<(), Fault> {
        let body = self.bytes()?;
        self.utf8(body)
    }

    /// Checks that `body`, which ends at the cursor, is UTF-8.
    #[inline]
    fn utf8(&self, body: &[u8]) -> Result<(), Fault> {
        match std::str::from_utf8(body) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(self.invalid(self.pos - body.len() + e.valid_up_to(), Reason::InvalidUtf8))
            }
        }
    }
}

#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;
