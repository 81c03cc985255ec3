//! Avro's variable-length integers: zig-zag, then 7 bits a byte, least
//! significant group first, the high bit set on every byte but the last.
//! An int takes at most [`MAX_INT_LEN`] bytes, a long [`MAX_LONG_LEN`].
//!
//! One writer and the readers every part of the relay shares: the validator
//! (its walker reads with [`read`]; its fast path keeps a reader of its own
//! that takes 8 bytes at once, see `validate::fast`), the decimator
//! ([`read_long`]) and the container format ([`read_long_from`], over a
//! stream). The slice readers sit on the receive path: they are small and
//! inlined into their callers.

use std::io::{self, Read};

/// Most bytes of an Avro int (also an enum index, a date, a time-millis).
pub(crate) const MAX_INT_LEN: usize = 5;

/// Most bytes of an Avro long (also a length, a count, a union index).
pub(crate) const MAX_LONG_LEN: usize = 10;

/// The zig-zag code of `v`: small magnitudes, positive or negative, become
/// small numbers (0, -1, 1, -2 → 0, 1, 2, 3).
#[inline(always)]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The value of the zig-zag code `z`.
#[inline(always)]
pub(crate) fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// Appends `z` as a varint, in its fewest bytes.
#[inline]
pub(crate) fn put(out: &mut Vec<u8>, mut z: u64) {
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends `v` as an Avro long (zig-zag varint).
#[inline]
pub(crate) fn put_long(out: &mut Vec<u8>, v: i64) {
    put(out, zigzag(v));
}

/// Why [`read`] found no varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overrun {
    /// The input ends inside the varint.
    Truncated,
    /// No byte among the first `max_len` ends it.
    TooLong,
}

/// Reads the varint at `pos` of at most `max_len` bytes: its (zig-zag)
/// value and the position after it. Like apache-avro (and Java), bits
/// beyond the 64th in a 10-byte varint are dropped, not rejected.
#[inline(always)]
pub(crate) fn read(buf: &[u8], pos: usize, max_len: usize) -> Result<(u64, usize), Overrun> {
    let mut value = 0u64;
    let mut shift = 0u32;
    for i in 0..max_len {
        let Some(&b) = buf.get(pos + i) else {
            return Err(Overrun::Truncated);
        };
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok((value, pos + i + 1));
        }
        shift += 7;
    }
    Err(Overrun::TooLong)
}

/// Reads an Avro long at `*pos` and advances past it; `None` (and `*pos`
/// unchanged) if the input ends inside it or it runs past 10 bytes.
#[inline(always)]
pub(crate) fn read_long(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let (z, end) = read(buf, *pos, MAX_LONG_LEN).ok()?;
    *pos = end;
    Some(unzigzag(z))
}

/// Reads an Avro long from a stream, strictly: a 10th byte may only carry
/// the 64th bit. Errors: `UnexpectedEof` if the input ends inside it,
/// `InvalidData` if it is over-long.
pub(crate) fn read_long_from(r: &mut impl Read) -> io::Result<i64> {
    let mut n: u64 = 0;
    for i in 0..MAX_LONG_LEN {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        let b = b[0];
        if i == MAX_LONG_LEN - 1 && b > 1 {
            break;
        }
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(unzigzag(n));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: [i64; 12] = [
        0,
        -1,
        1,
        -64,
        63,
        64,
        -65,
        1 << 40,
        i32::MIN as i64,
        i32::MAX as i64,
        i64::MAX,
        i64::MIN,
    ];

    #[test]
    fn zigzag_interleaves_signs() {
        for (v, z) in [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4)] {
            assert_eq!(zigzag(v), z);
            assert_eq!(unzigzag(z), v);
        }
        assert_eq!(zigzag(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        for v in VALUES {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn longs_round_trip_through_every_reader() {
        for v in VALUES {
            let mut b = Vec::new();
            put_long(&mut b, v);
            assert!(b.len() <= MAX_LONG_LEN);
            b.push(0xff); // what follows is not read
            let mut pos = 0;
            assert_eq!(read_long(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len() - 1);
            assert_eq!(read(&b, 0, MAX_LONG_LEN), Ok((zigzag(v), b.len() - 1)));
            assert_eq!(read_long_from(&mut &b[..]).unwrap(), v);
        }
        let mut b = Vec::new();
        put_long(&mut b, -3);
        assert_eq!(b, [5]);
    }

    #[test]
    fn the_longest_encodings() {
        let mut b = Vec::new();
        put_long(&mut b, i64::MIN);
        assert_eq!(
            b,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        b.clear();
        put_long(&mut b, i32::MIN.into());
        assert_eq!(b.len(), MAX_INT_LEN);
        assert_eq!(read(&b, 0, MAX_INT_LEN), Ok((zigzag(i32::MIN.into()), 5)));
        b.clear();
        put(&mut b, u64::from(u32::MAX) + 1);
        assert_eq!(b.len(), 5);
        b.clear();
        put(&mut b, 1 << 35);
        assert_eq!(b.len(), 6);
        assert_eq!(read(&b, 0, MAX_INT_LEN), Err(Overrun::TooLong));
    }

    #[test]
    fn overlong_and_truncated_input() {
        // Padded with continuation bytes: the same value, within the limit.
        assert_eq!(read(&[0x85, 0x80, 0x00], 0, MAX_INT_LEN), Ok((5, 3)));
        let five = [0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(read(&five, 0, MAX_INT_LEN), Ok((0, 5)));
        let six = [0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(read(&six, 0, MAX_INT_LEN), Err(Overrun::TooLong));
        assert_eq!(read(&six, 0, MAX_LONG_LEN), Ok((0, 6)));
        let eleven = [0xff; 11];
        assert_eq!(read(&eleven, 0, MAX_LONG_LEN), Err(Overrun::TooLong));
        let mut pos = 0;
        assert_eq!(read_long(&eleven, &mut pos), None);
        assert_eq!(pos, 0);
        assert_eq!(
            read_long_from(&mut &eleven[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Bits beyond the 64th: dropped by the slice readers, refused by
        // the stream reader.
        let mut ten = [0xff; 10];
        ten[9] = 0x7f;
        assert_eq!(read(&ten, 0, MAX_LONG_LEN), Ok((u64::MAX, 10)));
        assert_eq!(
            read_long_from(&mut &ten[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Cut short, empty, and at the very end.
        for cut in [&[][..], &[0x80], &[0xff, 0xff]] {
            assert_eq!(read(cut, 0, MAX_LONG_LEN), Err(Overrun::Truncated));
            let mut pos = 0;
            assert_eq!(read_long(cut, &mut pos), None);
            assert_eq!(pos, 0);
            assert_eq!(
                read_long_from(&mut &cut[..]).unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
        }
        assert_eq!(read(&[0x80], 1, MAX_LONG_LEN), Err(Overrun::Truncated));
        assert_eq!(read(&[0x80, 0x05], 1, MAX_LONG_LEN), Ok((5, 2)));
    }
}
