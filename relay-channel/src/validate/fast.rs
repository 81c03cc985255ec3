//! The fast path of [`Validator::validate`].
//!
//! The general walker ([`Validator::walk`]) follows the node graph: a call per
//! field, a jump on the node's kind, and a `Result` carrying a [`Fault`] out of
//! every level. For records of fixed-size fields, bounded varints and arrays
//! of fixed-size items (the telemetry records the relay mostly sees: a
//! timestamp, a counter, an array of doubles) that is most of the work.
//!
//! [`FastPath::compile`] flattens the compiled nodes, once, into a list of
//! [`Op`]s: nested records are inlined (their fields become ops of the
//! enclosing list, and runs of fixed-size fields across record boundaries
//! merge into one [`Op::Skip`]); a field of any other shape (bytes, strings,
//! unions, maps, arrays of variable-size items, decimals, uuids, and a record
//! at the nesting limit) becomes an [`Op::Walk`], which hands that one field
//! to the general walker at the depth the walker would have reached it.
//! [`FastPath::accepts`] runs the ops in a loop, without recursion, and says
//! only yes or no: no offset, no reason, no `Result` per field.
//!
//! It is a filter in front of the walker, not a replacement: when it says no,
//! [`Validator::validate`] walks the datum again with the general walker,
//! which finds the same defect and describes it (offset, reason, field)
//! exactly as before. Every op checks what the walker checks for its node, so
//! the fast path accepts exactly the datums the walker accepts; the
//! differential tests in `validate.rs` hold it to that, against the walker and
//! against apache-avro.
//!
//! [`Fault`]: super::Fault

use super::{CheckKind, Cursor, Node, Validator, MAX_DEPTH};
use crate::varint::unzigzag;

/// Most ops a fast path may have (a record with more flattened fields than
/// this takes the general walker only). It bounds the compile time of
/// schemas that reuse a record type many times over.
const MAX_OPS: usize = 1024;

/// One step of the fast path. Each op checks what [`Validator::walk`] checks
/// for the node it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Exactly this many bytes of any content ([`Node::Skip`], merged across
    /// record boundaries).
    Skip(usize),
    /// One byte, 0 or 1.
    Boolean,
    /// A varint of at most 5 bytes whose zig-zag value lies within
    /// `lo..=hi`: an int (the whole 32-bit range), an enum index (`0` to the
    /// symbol count less one), a date or a time-millis (their ranges).
    Int { lo: i32, hi: i32 },
    /// A varint of at most 10 bytes: a long.
    Long,
    /// A long within `lo..=hi`: time-micros, the timestamps of millis and
    /// micros.
    LongIn { lo: i64, hi: i64 },
    /// An array of items of exactly `size` bytes (`size > 0`), blocks as in
    /// [`super::blocks`].
    Array { size: usize },
    /// Any other node, checked by the general walker at `depth`.
    Walk { node: u32, depth: u32 },
}

/// The ops of a schema, run by [`FastPath::accepts`].
#[derive(Debug, Clone)]
pub(super) struct FastPath {
    ops: Box<[Op]>,
}

impl FastPath {
    /// Flattens `v`'s nodes from its root. `None` when nothing would be
    /// gained: the ops would all hand over to the walker (a root that is a
    /// union or a map, say, or a record of strings), or there would be more
    /// than [`MAX_OPS`].
    pub(super) fn compile(v: &Validator) -> Option<FastPath> {
        let mut f = Flatten { v, ops: Vec::new() };
        f.node(v.root, 0)?;
        if f.ops.iter().all(|op| matches!(op, Op::Walk { .. })) {
            return None;
        }
        Some(FastPath {
            ops: f.ops.into_boxed_slice(),
        })
    }

    #[cfg(test)]
    pub(super) fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether `datum` is exactly one datum of `v`'s schema. Never allocates
    /// and never panics.
    #[inline(always)]
    pub(super) fn accepts(&self, v: &Validator, datum: &[u8]) -> bool {
        // Invariant: pos <= datum.len().
        let mut pos = 0usize;
        for op in self.ops.iter() {
            pos = match *op {
                Op::Skip(n) => {
                    if n > datum.len() - pos {
                        return false;
                    }
                    pos + n
                }
                Op::Boolean => match datum.get(pos) {
                    Some(0 | 1) => pos + 1,
                    _ => return false,
                },
                Op::Int { lo, hi } => match varint(datum, pos, 5) {
                    Some((z, end)) if (i64::from(lo)..=i64::from(hi)).contains(&unzigzag(z)) => end,
                    _ => return false,
                },
                Op::Long => match varint(datum, pos, 10) {
                    Some((_, end)) => end,
                    None => return false,
                },
                Op::LongIn { lo, hi } => match varint(datum, pos, 10) {
                    Some((z, end)) if (lo..=hi).contains(&unzigzag(z)) => end,
                    _ => return false,
                },
                Op::Array { size } => match array(datum, pos, size) {
                    Some(end) => end,
                    None => return false,
                },
                Op::Walk { node, depth } => {
                    let mut cur = Cursor { buf: datum, pos };
                    if v.walk(node, &mut cur, depth).is_err() {
                        return false;
                    }
                    cur.pos
                }
            };
        }
        pos == datum.len()
    }
}

/// [`FastPath::compile`]'s state.
struct Flatten<'v> {
    v: &'v Validator,
    ops: Vec<Op>,
}

impl Flatten<'_> {
    /// Adds `op`, merging a skip into a skip before it. `None` past
    /// [`MAX_OPS`].
    fn push(&mut self, op: Op) -> Option<()> {
        if let (Op::Skip(n), Some(Op::Skip(before))) = (op, self.ops.last_mut()) {
            // Beyond usize::MAX no datagram has the bytes anyway; saturating
            // keeps the verdict (truncated).
            *before = before.saturating_add(n);
            return Some(());
        }
        if self.ops.len() >= MAX_OPS {
            return None;
        }
        self.ops.push(op);
        Some(())
    }

    /// Adds the ops of `node`, which [`Validator::walk`] would check at
    /// `depth`.
    fn node(&mut self, node: u32, depth: u32) -> Option<()> {
        let v = self.v;
        let walk = Op::Walk { node, depth };
        let op = match v.nodes[node as usize] {
            Node::Skip(0) => return Some(()),
            Node::Skip(n) => Op::Skip(n),
            Node::Boolean => Op::Boolean,
            Node::Int => Op::Int {
                lo: i32::MIN,
                hi: i32::MAX,
            },
            Node::Long => Op::Long,
            Node::Checked { kind, check } => {
                let c = &v.checks[check as usize];
                match kind {
                    // The walker reads an int, then checks the range: the
                    // range within 32 bits is the same check.
                    CheckKind::Int => Op::Int {
                        lo: clamp_i32(c.lo),
                        hi: clamp_i32(c.hi),
                    },
                    CheckKind::Long => Op::LongIn { lo: c.lo, hi: c.hi },
                    _ => walk,
                }
            }
            Node::Enum { symbols } => Op::Int {
                lo: 0,
                // No symbols: -1, so that no index passes.
                hi: clamp_i32(i64::try_from(symbols).unwrap_or(i64::MAX) - 1),
            },
            // The walker enters a record (or an array) only below the
            // nesting limit; at it, it is left to the walker, which refuses.
            Node::Record { first, len } if depth < MAX_DEPTH => {
                for &field in &v.edges[first as usize..(first + len) as usize] {
                    self.node(field, depth + 1)?;
                }
                return Some(());
            }
            Node::Array { items, item_min } if depth < MAX_DEPTH => {
                match v.nodes[items as usize] {
                    // `blocks` skips such items as one run of bytes.
                    Node::Skip(size) if size > 0 && size == item_min => Op::Array { size },
                    _ => walk,
                }
            }
            Node::Record { .. }
            | Node::Array { .. }
            | Node::Bytes
            | Node::String
            | Node::Union { .. }
            | Node::Map { .. } => walk,
        };
        self.push(op)
    }
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

/// Reads the varint at `pos` of at most `max_len` (5 or 10) bytes: its value
/// and the position after it, or `None` where [`Cursor::varint`] fails
/// (truncated, or too long). Bits beyond the 64th of a 10-byte varint are
/// dropped, as there.
///
/// A reader of its own, not [`crate::varint::read`], because it reads
/// differently: one byte is one comparison, and with 8 bytes left a varint
/// of up to 8 bytes is read at once (the first byte without its
/// continuation bit ends it, and the 7-bit groups are packed together in
/// three steps), where the shared reader takes a byte a step. Near the end
/// of the datagram, and for 9 and 10 bytes, it falls back on the shared
/// reader.
#[inline(always)]
fn varint(buf: &[u8], pos: usize, max_len: usize) -> Option<(u64, usize)> {
    let &first = buf.get(pos)?;
    if first < 0x80 {
        return Some((u64::from(first), pos + 1));
    }
    if let Some(bytes) = buf.get(pos..).and_then(|rest| rest.first_chunk::<8>()) {
        let word = u64::from_le_bytes(*bytes);
        // The continuation bits that are clear: where varints end.
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let len = (ends.trailing_zeros() / 8 + 1) as usize;
            if len > max_len {
                return None;
            }
            // The bytes up to the end, without continuation bits, then the
            // 7-bit groups packed: pairs into 14 bits, fours into 28, all 8
            // into 56.
            let x = word & (ends ^ (ends - 1)) & 0x7f7f_7f7f_7f7f_7f7f;
            let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
            let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
            let x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
            return Some((x, pos + len));
        }
        if max_len <= 8 {
            return None;
        }
    }
    crate::varint::read(buf, pos, max_len).ok()
}

/// Checks the blocks of an array of items of `size` bytes at `pos`, as
/// [`super::blocks`] does with a fixed item width: the position after the
/// array, or `None`.
#[inline(always)]
fn array(buf: &[u8], mut pos: usize, size: usize) -> Option<usize> {
    loop {
        let (z, end) = varint(buf, pos, 10)?;
        pos = end;
        let count = unzigzag(z);
        if count == 0 {
            return Some(pos);
        }
        let declared = if count < 0 {
            let (z, end) = varint(buf, pos, 10)?;
            pos = end;
            Some(unzigzag(z))
        } else {
            None
        };
        // The items' bytes, which must be there.
        let bytes = count.unsigned_abs().checked_mul(size as u64)?;
        if bytes > (buf.len() - pos) as u64 {
            return None;
        }
        if declared.is_some_and(|d| i64::try_from(bytes) != Ok(d)) {
            return None;
        }
        pos += bytes as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64.
    fn next(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    /// The fast varint against the walker's, for every length from 1 to 11
    /// bytes, canonical and padded with continuation bytes, followed by 0 to
    /// 9 more bytes (so that both the 8-byte read and the byte-by-byte one
    /// run), cut short, and without an end.
    #[test]
    fn varints_read_as_the_walker_reads_them() {
        let mut state = 0x7a11_5eed;
        let mut checked = 0;
        for _ in 0..20_000 {
            let r = next(&mut state);
            let value = r >> (r % 64);
            let mut x = Vec::new();
            crate::varint::put(&mut x, value);
            // Padding: the last byte gets a continuation bit and zero groups
            // follow (the same value, more bytes); sometimes no end at all.
            let pad = (next(&mut state) % 4) as usize;
            if pad > 0 {
                *x.last_mut().unwrap() |= 0x80;
                x.extend(std::iter::repeat_n(0x80, pad - 1));
                if !next(&mut state).is_multiple_of(8) {
                    x.push(0x00);
                }
            }
            let cut = next(&mut state).is_multiple_of(6);
            if cut {
                x.truncate((next(&mut state) % (x.len() as u64 + 1)) as usize);
            }
            let tail = (next(&mut state) % 10) as usize;
            for _ in 0..tail {
                x.push(next(&mut state) as u8);
            }
            let at = (next(&mut state) % 3) as usize;
            let mut buf = vec![0x80; at];
            buf.extend_from_slice(&x);
            for max_len in [5, 10] {
                let mut cur = Cursor { buf: &buf, pos: at };
                let theirs = cur.varint(max_len).ok().map(|v| (v, cur.pos));
                assert_eq!(varint(&buf, at, max_len), theirs, "{buf:02x?} {max_len}");
                checked += 1;
            }
        }
        assert_eq!(checked, 40_000);
        // At the very end, and past it.
        assert_eq!(varint(&[], 0, 10), None);
        assert_eq!(varint(&[0x80], 1, 10), None);
        assert_eq!(varint(&[0x80, 0x05], 1, 10), Some((5, 2)));
    }

    #[test]
    fn arrays_of_fixed_items() {
        // Two blocks of doubles, the second with a negative count and its
        // byte size, then the end.
        let mut x = vec![0x04];
        x.extend([0; 16]);
        x.extend([0x03, 0x20]);
        x.extend([0; 16]);
        x.push(0x00);
        assert_eq!(array(&x, 0, 8), Some(x.len()));
        assert_eq!(array(&x[..x.len() - 1], 0, 8), None);
        // A wrong byte size.
        x[18] = 0x1e;
        assert_eq!(array(&x, 0, 8), None);
        // Counts that cannot fit, and overflow the multiplication.
        assert_eq!(array(&[0x02, 0, 0, 0, 0, 0, 0, 0, 0x00], 0, 8), None);
        let huge = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(array(&huge, 0, 8), None);
        assert_eq!(array(&[0x00], 0, 8), Some(1));
        assert_eq!(array(&[], 0, 8), None);
    }
}
