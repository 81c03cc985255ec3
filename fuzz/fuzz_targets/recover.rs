//! Archive recovery (`container::recover_part`) of `.part` files.
//!
//! Input: a control byte (codec, mode), a block-layout byte and record counts,
//! then bytes the mode uses. The file is a container written with the crate's
//! own encoder (header and 0 to 4 blocks of example records) and then
//! - mode 0: followed by arbitrary bytes;
//! - mode 1: cut at an arbitrary offset, then arbitrary bytes;
//! - mode 2: arbitrary bytes changed anywhere (xor), then arbitrary bytes;
//! - mode 3: not built at all: the input is the file.
//!
//! Oracle: nothing panics; when the header is intact it is recognised and
//! every block wholly before the first changed byte is kept; the file is cut to
//! exactly `valid_len` (or left alone when the header is not recognised); what
//! is kept is a header and whole blocks (count, size, data, sync marker) whose
//! counts add up to the reported records; and apache-avro's `Reader` reads the
//! kept file to the end with that many records whenever the kept bytes are the
//! encoder's own (at least the records of the intact blocks otherwise: block
//! data is checked to decompress, not to hold well-formed records).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_channel::config::Codec;
use relay_channel::container::{self, BlockEncoder};

const SCHEMA: &str = include_str!("../../channels.d/example.avsc");

const CODECS: [Codec; 4] = [
    Codec::Null,
    Codec::Deflate { level: 6 },
    Codec::Snappy,
    Codec::Zstd { level: 1 },
];

const SYNC: [u8; 16] = *b"fuzz-sync-marker";

/// This process's scratch file.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relay-fuzz-recover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir.join("f.avro.part")
    })
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One example record (`channels.d/example.avsc`), encoded.
fn record(i: i64, out: &mut Vec<u8>) {
    put_long(out, 1_763_000_000_000_000 + i * 1000);
    let msg = format!("sample {i}");
    put_long(out, msg.len() as i64);
    out.extend_from_slice(msg.as_bytes());
    put_long(out, i);
    for k in 0..4 {
        out.extend_from_slice(&((i * 7 + k) as f64 * 0.25).to_le_bytes());
    }
}

/// Reads a long at `*pos` in `b`, for the oracle's own walk.
fn get_long(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut n = 0u64;
    for i in 0..10 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((n >> 1) as i64 ^ -((n & 1) as i64));
        }
    }
    None
}

/// Walks the blocks of `file[header_len..]`: each a positive count, a size, that many
/// bytes and the sync marker, ending exactly at the end. Returns (blocks, records),
/// counted wide enough not to overflow.
fn walk_blocks(file: &[u8], header_len: usize, sync: &[u8; 16]) -> (u64, u128) {
    let mut pos = header_len;
    let (mut blocks, mut records) = (0u64, 0u128);
    while pos < file.len() {
        let count = get_long(file, &mut pos).expect("kept block count");
        assert!(count > 0, "kept block with count {count} at {pos}");
        let size = get_long(file, &mut pos).expect("kept block size");
        let size = usize::try_from(size).expect("kept block size >= 0");
        let end = pos
            .checked_add(size)
            .and_then(|e| e.checked_add(16))
            .expect("kept block size fits");
        assert!(end <= file.len(), "kept block runs past the end");
        assert_eq!(&file[end - 16..end], sync, "kept block without its marker");
        pos = end;
        blocks += 1;
        records += count as u128;
    }
    (blocks, records)
}

/// Records apache-avro's `Reader` reads before the end or the first error, and
/// whether it reached the end.
fn apache_read(file: &[u8]) -> (u64, bool) {
    let reader = apache_avro::Reader::new(file).expect("apache-avro reads the kept header");
    let mut n = 0;
    for v in reader {
        if v.is_err() {
            return (n, false);
        }
        n += 1;
    }
    (n, true)
}

fuzz_target!(|data: &[u8]| {
    let [ctl, layout, rest @ ..] = data else {
        return;
    };
    let codec = CODECS[usize::from(ctl & 3)];
    let mode = (ctl >> 2) & 3;

    // The file as the writer left it, and where each part ends.
    let mut original = Vec::new();
    container::encode_header(SCHEMA, &codec, &SYNC, &mut original);
    let mut ends = vec![original.len()];
    let mut records_before = vec![0u64];
    let nblocks = usize::from(layout % 5);
    let (sizes, rest) = rest.split_at(nblocks.min(rest.len()));
    let mut enc = BlockEncoder::new(codec);
    let mut i = 0i64;
    for &s in sizes {
        let n = 1 + u64::from(s % 32);
        let mut block = Vec::new();
        for _ in 0..n {
            record(i, &mut block);
            i += 1;
        }
        enc.encode_block(n, &block, &SYNC, &mut original)
            .expect("encodes");
        ends.push(original.len());
        records_before.push(records_before.last().unwrap() + n);
    }

    // The damaged file, and the first offset where it differs from `original`.
    let (file, first_change) = match mode {
        0 => {
            let mut f = original.clone();
            f.extend_from_slice(rest);
            (f, original.len())
        }
        1 => {
            let Some(([a, b], tail)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let cut = usize::from(u16::from_le_bytes([*a, *b])) % (original.len() + 1);
            let mut f = original[..cut].to_vec();
            f.extend_from_slice(tail);
            (f, cut)
        }
        2 => {
            // Up to 8 (offset, xor) edits, then the rest appended.
            let edits = usize::from(rest.first().copied().unwrap_or(0) % 9);
            let rest = rest.get(1..).unwrap_or_default();
            let (edits, tail) = rest.split_at((edits * 3).min(rest.len()));
            let mut f = original.clone();
            let mut first = original.len();
            for e in edits.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % original.len();
                if e[2] != 0 {
                    f[at] ^= e[2];
                    first = first.min(at);
                }
            }
            f.extend_from_slice(tail);
            (f, first)
        }
        _ => (rest.to_vec(), 0),
    };

    let path = scratch();
    std::fs::write(path, &file).expect("write scratch file");
    let rec = container::recover_part(path).expect("recovery of a readable file succeeds");
    let after = std::fs::read(path).expect("read scratch file");
    let _ = std::fs::remove_file(path);

    if !rec.header_ok {
        assert_eq!(after, file, "a file without a usable header is left alone");
        assert_eq!((rec.valid_len, rec.truncated_bytes), (0, 0));
        assert!(
            mode == 3 || first_change < ends[0],
            "an intact header is not recognised: {rec:?}"
        );
        return;
    }
    assert_eq!(after.len() as u64, rec.valid_len, "{rec:?}");
    assert_eq!(after[..], file[..after.len()], "recovery only cuts");
    assert_eq!(rec.truncated_bytes, (file.len() - after.len()) as u64);

    let header = container::read_header(&mut &after[..]).expect("kept header reads");
    let (blocks, records) = walk_blocks(&after, header.len as usize, &header.sync);
    assert_eq!(
        (blocks, records),
        (rec.blocks, rec.records.into()),
        "{rec:?}"
    );
    if mode == 3 || first_change < ends[0] {
        return; // a header of the input's making: nothing more to expect
    }

    // Every block wholly before the first change is kept.
    let intact = ends.iter().rposition(|&e| e <= first_change).unwrap();
    assert!(
        rec.valid_len >= ends[intact] as u64 && rec.records >= records_before[intact],
        "intact blocks lost: {intact} blocks end at {}, first change at {first_change}: {rec:?}",
        ends[intact]
    );

    let (read, to_end) = apache_read(&after);
    if after[..] == original[..after.len().min(original.len())] {
        assert!(to_end, "apache-avro stops after {read} records: {rec:?}");
        assert_eq!(read, rec.records, "{rec:?}");
    } else {
        assert!(
            read >= records_before[intact],
            "{read} records read: {rec:?}"
        );
        if to_end {
            assert_eq!(read, rec.records, "{rec:?}");
        }
    }
});
