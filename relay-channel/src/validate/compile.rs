//! The schema compiler of [`Validator::new`]: the schema, resolved by
//! apache-avro, becomes the flat arena of nodes the walker follows
//! (named-type references become node indices, runs of fixed-size fields
//! merge into one bounds check), each logical type its check with its
//! bounds and field path, then the minimum encoded lengths and the fast
//! path are worked out once.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, NamespaceRef,
    RecordSchema, ResolvedSchema, Schema, UuidSchema,
};

use super::{fast, Check, CheckKind, CompileError, Logical, Node, Validator, NO_CHECK};

/// Node count past which named records with logical-type fields are shared
/// instead of compiled once per use (see "Naming the field" in [`super`]).
pub(super) const UNFOLD_LIMIT: usize = 1 << 16;

/// Decimal precisions from this many digits up are not checked: every
/// unscaled value of up to 65,535 bytes, at most 2^524,279 in magnitude, is
/// below 10^157,824.
const DECIMAL_UNCHECKED: usize = 157_824;

/// Years 1 to 9999: 0001-01-01T00:00:00 and 9999-12-31T23:59:59 in seconds
/// since 1970-01-01T00:00:00.
pub(super) const FIRST_SECOND: i64 = -62_135_596_800;
pub(super) const LAST_SECOND: i64 = 253_402_300_799;
/// The same days, in days since 1970-01-01.
pub(super) const FIRST_DAY: i64 = -719_162;
pub(super) const LAST_DAY: i64 = 2_932_896;
const DAY_MILLIS: i64 = 86_400_000;

/// Compiles `schema` (see [`Validator::new`]).
pub(super) fn compile(schema: &Schema) -> Result<Validator, CompileError> {
    let resolved = ResolvedSchema::new(schema).map_err(CompileError::Resolve)?;
    let mut c = Compiler {
        nodes: Vec::new(),
        edges: Vec::new(),
        checks: Vec::new(),
        named: HashMap::new(),
        open: Vec::new(),
        defs: resolved.get_names(),
        records: Vec::new(),
        path: String::new(),
    };
    let root = c.compile(schema, None)?;
    c.finish(root)
}

/// Schema-to-nodes compiler state.
struct Compiler<'s> {
    nodes: Vec<Node>,
    edges: Vec<u32>,
    checks: Vec<Check>,
    /// Named types compiled so far that every use shares, by fully qualified
    /// name.
    named: HashMap<Name, u32>,
    /// Records being compiled, innermost last: a reference to one of them is
    /// recursion and shares its node.
    open: Vec<(Name, u32)>,
    /// Definitions of every named type, from apache-avro's resolution.
    defs: &'s NamesRef<'s>,
    /// Record nodes and their full names, for error messages.
    records: Vec<(u32, String)>,
    /// Path of the field being compiled (see "Naming the field" in [`super`]).
    path: String,
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

    /// Adds a check of the field at the current path.
    fn check(&mut self, logical: Logical, lo: i64, hi: i64) -> Result<u32, CompileError> {
        self.check_with(Check {
            logical,
            path: None,
            lo,
            hi,
            size: 0,
            max: Box::default(),
        })
    }

    fn check_with(&mut self, mut check: Check) -> Result<u32, CompileError> {
        // u32::MAX is NO_CHECK.
        let index = u32::try_from(self.checks.len())
            .ok()
            .filter(|&i| i != NO_CHECK)
            .ok_or(CompileError::TooLarge)?;
        check.path = (!self.path.is_empty()).then(|| intern(&self.path));
        self.checks.push(check);
        Ok(index)
    }

    /// Compiles `schema` with `suffix` added to the path (`.name`, `[]`, `{}`).
    fn compile_at(
        &mut self,
        suffix: &str,
        schema: &'s Schema,
        ns: NamespaceRef<'_>,
    ) -> Result<u32, CompileError> {
        let len = self.path.len();
        self.path.push_str(suffix);
        let node = self.compile(schema, ns);
        self.path.truncate(len);
        node
    }

    /// A node of a previously compiled named type that this use may share.
    fn lookup(&self, fq: &Name) -> Option<u32> {
        self.open
            .iter()
            .rev()
            .find(|(name, _)| name == fq)
            .map(|&(_, index)| index)
            .or_else(|| self.named.get(fq).copied())
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

    /// A decimal on a fixed of `size` bytes, checked if the fixed can hold an
    /// out-of-range value; shared as a plain fixed otherwise.
    fn decimal_fixed(
        &mut self,
        name: &Name,
        ns: NamespaceRef<'_>,
        size: usize,
        precision: usize,
    ) -> Result<u32, CompileError> {
        // Every value fits if max >= 2^(8 * size - 1), the largest magnitude
        // (of the most negative value) a fixed of `size` bytes holds.
        match decimal_max(precision) {
            Some(max)
                if max.len() < size
                    || (max.len() == size && max.first().is_some_and(|&b| b < 0x80)) =>
            {
                let check = self.check_with(Check {
                    logical: Logical::Decimal,
                    path: None,
                    lo: 0,
                    hi: 0,
                    size,
                    max,
                })?;
                self.push(Node::Checked {
                    kind: CheckKind::DecimalFixed,
                    check,
                })
            }
            _ => self.named(name, ns, Node::Skip(size)),
        }
    }

    /// Compiles `schema`, found in the enclosing namespace `ns`, to a node.
    fn compile(&mut self, schema: &'s Schema, ns: NamespaceRef<'_>) -> Result<u32, CompileError> {
        const MS: i64 = 1_000;
        const US: i64 = 1_000_000;
        let node = match schema {
            Schema::Null => Node::Skip(0),
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long | Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::Long,
            Schema::Date => Node::Checked {
                kind: CheckKind::Int,
                check: self.check(Logical::Date, FIRST_DAY, LAST_DAY)?,
            },
            Schema::TimeMillis => Node::Checked {
                kind: CheckKind::Int,
                check: self.check(Logical::TimeMillis, 0, DAY_MILLIS - 1)?,
            },
            Schema::TimeMicros => Node::Checked {
                kind: CheckKind::Long,
                check: self.check(Logical::TimeMicros, 0, DAY_MILLIS * MS - 1)?,
            },
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                let logical = if matches!(schema, Schema::TimestampMillis) {
                    Logical::TimestampMillis
                } else {
                    Logical::LocalTimestampMillis
                };
                let (lo, hi) = (FIRST_SECOND * MS, LAST_SECOND * MS + (MS - 1));
                Node::Checked {
                    kind: CheckKind::Long,
                    check: self.check(logical, lo, hi)?,
                }
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                let logical = if matches!(schema, Schema::TimestampMicros) {
                    Logical::TimestampMicros
                } else {
                    Logical::LocalTimestampMicros
                };
                let (lo, hi) = (FIRST_SECOND * US, LAST_SECOND * US + (US - 1));
                Node::Checked {
                    kind: CheckKind::Long,
                    check: self.check(logical, lo, hi)?,
                }
            }
            Schema::Float => Node::Skip(4),
            Schema::Double => Node::Skip(8),
            Schema::Bytes | Schema::BigDecimal => Node::Bytes,
            Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                precision,
                ..
            }) => match decimal_max(*precision) {
                Some(max) => Node::Checked {
                    kind: CheckKind::DecimalBytes,
                    check: self.check_with(Check {
                        logical: Logical::Decimal,
                        path: None,
                        lo: 0,
                        hi: 0,
                        size: 0,
                        max,
                    })?,
                },
                None => Node::Bytes,
            },
            Schema::Uuid(UuidSchema::Bytes) => Node::Checked {
                kind: CheckKind::UuidBytes,
                check: self.check(Logical::Uuid, 0, 0)?,
            },
            Schema::String => Node::String,
            Schema::Uuid(UuidSchema::String) => Node::Checked {
                kind: CheckKind::UuidString,
                check: self.check(Logical::Uuid, 0, 0)?,
            },
            Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(FixedSchema { name, size, .. }),
                precision,
                ..
            }) => return self.decimal_fixed(name, ns, *size, *precision),
            Schema::Fixed(FixedSchema { name, size, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, size, .. }))
            | Schema::Duration(FixedSchema { name, size, .. }) => {
                return self.named(name, ns, Node::Skip(*size));
            }
            Schema::Enum(EnumSchema { name, symbols, .. }) => {
                let symbols = symbols.len();
                return self.named(name, ns, Node::Enum { symbols });
            }
            Schema::Array(array) => Node::Array {
                items: self.compile_at("[]", &array.items, ns)?,
                item_min: 0, // set by `finish`
            },
            Schema::Map(map) => Node::Map {
                values: self.compile_at("{}", &map.types, ns)?,
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
                if let Some(index) = self.lookup(fq.as_ref()) {
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
        if let Some(index) = self.lookup(&fq) {
            return Ok(index);
        }
        // Open before the fields so that they can refer back to it.
        let index = self.push(Node::Record { first: 0, len: 0 })?;
        self.open.push((fq.clone(), index));
        self.records.push((index, fq.to_string()));
        let checks_before = self.checks.len();

        let mut fields = Vec::with_capacity(record.fields.len());
        let mut run = 0usize; // bytes of fixed-size fields not yet emitted
        for field in &record.fields {
            let dot = if self.path.is_empty() { "" } else { "." };
            let node = self.compile_at(
                &format!("{dot}{}", field.name),
                &field.schema,
                fq.namespace(),
            )?;
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
        self.open.pop();
        // Share it with later uses unless it names paths of its own.
        if self.checks.len() == checks_before || self.nodes.len() >= UNFOLD_LIMIT {
            self.named.insert(fq, index);
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
                    Node::Checked {
                        kind: CheckKind::DecimalFixed,
                        check,
                    } => self.checks[check as usize].size,
                    Node::Boolean
                    | Node::Int
                    | Node::Long
                    | Node::Bytes
                    | Node::String
                    | Node::Checked { .. }
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
        let mut v = Validator {
            nodes: self.nodes.into_boxed_slice(),
            edges: self.edges.into_boxed_slice(),
            checks: self.checks.into_boxed_slice(),
            root,
            root_min: min[root as usize],
            fast: None,
        };
        v.fast = fast::FastPath::compile(&v);
        Ok(v)
    }
}

/// `10^precision - 1`, big-endian without leading zero bytes (empty for 0);
/// `None` from [`DECIMAL_UNCHECKED`] digits up.
fn decimal_max(precision: usize) -> Option<Box<[u8]>> {
    if precision >= DECIMAL_UNCHECKED {
        return None;
    }
    // Little-endian 64-bit limbs, multiplied up 19 digits at a time.
    let mut limbs: Vec<u64> = vec![1];
    let mut left = precision;
    while left > 0 {
        let digits = left.min(19);
        let factor = u128::from(10u64.pow(digits as u32));
        let mut carry = 0u128;
        for limb in &mut limbs {
            let x = u128::from(*limb) * factor + carry;
            *limb = x as u64;
            carry = x >> 64;
        }
        if carry > 0 {
            limbs.push(carry as u64);
        }
        left -= digits;
    }
    for limb in &mut limbs {
        let (x, borrow) = limb.overflowing_sub(1);
        *limb = x;
        if !borrow {
            break;
        }
    }
    let bytes: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Some(bytes[start..].into())
}

/// `path`, as a string that lives as long as the process, shared with every
/// earlier call for the same path.
pub(super) fn intern(path: &str) -> &'static str {
    static PATHS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut paths = PATHS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(&p) = paths.get(path) {
        return p;
    }
    let p: &'static str = Box::leak(path.into());
    paths.insert(p);
    p
}
