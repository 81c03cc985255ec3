//! The block index: beside each archive file, `{stem}.avro.idx` says, for
//! every block the relay wrote, where it lies, how many records it holds,
//! when its first and last records arrived and (with `archive.time_field`)
//! the least and greatest record time in it. An export reads the index of
//! a file, not its blocks, to find the few blocks a time range needs.
//!
//! The index is named after the file's stem (`{channel}-{from}`), which the
//! file keeps when it is closed and renamed, so closing renames nothing
//! more. It is written after each block, never before: an entry always
//! describes a block on disk. It is a hint, never the only copy of
//! anything: a reader checks each entry against the file (offsets follow
//! each other from the header, ends within the file) and walks the
//! container's block headers itself past the last good entry, without
//! decompressing anything ([`load`]); recovery after a crash rebuilds what
//! is missing ([`rebuild`]).
//!
//! # Format
//!
//! 8 bytes of magic, `SDIDX\0\0\x01`, then one 56-byte entry a block, seven
//! little-endian 64-bit integers: the block's offset in the file, its end
//! (after its sync marker), its record count, the arrival of its first and
//! of its last record (µs since the epoch, UTC), the least and the greatest
//! record time in the time field's own unit (`i64::MAX`, `i64::MIN`
//! without a time field).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Codec;
use crate::container::{self, Header};
use crate::file_names;
use crate::record_time::RecordTime;
use crate::varint;

/// The end of an index file's name.
pub const SUFFIX: &str = ".avro.idx";
const MAGIC: [u8; 8] = *b"SDIDX\0\0\x01";
const ENTRY_LEN: usize = 56;

/// What the index says of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where the block starts in the file.
    pub offset: u64,
    /// Where it ends, after its sync marker.
    pub end: u64,
    pub count: u64,
    /// Arrival of its first record, µs since the epoch.
    pub first_arrival_us: i64,
    /// Arrival of its last record, µs since the epoch.
    pub last_arrival_us: i64,
    /// Least record time, in the time field's unit; `i64::MAX` if none.
    pub min_time: i64,
    /// Greatest record time; `i64::MIN` if none.
    pub max_time: i64,
}

impl Entry {
    /// The least and greatest record time, if the block has them.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        (self.min_time <= self.max_time).then_some((self.min_time, self.max_time))
    }

    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        let words = [
            self.offset as i64,
            self.end as i64,
            self.count as i64,
            self.first_arrival_us,
            self.last_arrival_us,
            self.min_time,
            self.max_time,
        ];
        for (chunk, w) in b.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Entry {
        let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Entry {
            offset: w(0) as u64,
            end: w(1) as u64,
            count: w(2) as u64,
            first_arrival_us: w(3),
            last_arrival_us: w(4),
            min_time: w(5),
            max_time: w(6),
        }
    }
}

/// Microseconds since the epoch (negative before it).
pub fn epoch_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The time `us` microseconds after the epoch.
pub fn from_epoch_us(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// `{stem}.avro.idx`: the index of `stem`'s file.
pub fn index_name(stem: &str) -> String {
    format!("{stem}{SUFFIX}")
}

/// The stem of an archive file's name: `{stem}.avro.part`,
/// `{stem}--{to}.avro` or `{stem}.avro`; `None` for any other name.
pub fn stem_of(name: &str) -> Option<&str> {
    if let Some(stem) = file_names::part_stem(name) {
        return Some(stem);
    }
    let base = name.strip_suffix(file_names::CLOSED_SUFFIX)?;
    Some(file_names::span_head(base).unwrap_or(base))
}

/// The index beside the archive file `data`.
pub fn index_path(data: &Path) -> Option<PathBuf> {
    let name = data.file_name()?.to_str()?;
    Some(data.with_file_name(index_name(stem_of(name)?)))
}

/// Appends an entry a block to a file's index. A write that fails stops
/// the index (readers walk the blocks past its end); the archive goes on.
pub(crate) struct IndexWriter {
    file: Option<File>,
    path: PathBuf,
}

impl IndexWriter {
    /// Starts the index at `path`, replacing one left there.
    pub(crate) fn create(path: PathBuf) -> IndexWriter {
        let file = crate::nofollow::open(
            OpenOptions::new().write(true).create(true).truncate(true),
            0,
            &path,
        )
        .and_then(|mut f| f.write_all(&MAGIC).map(|()| f));
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the block index; exports will read this file's block headers instead");
                None
            }
        };
        IndexWriter { file, path }
    }

    pub(crate) fn append(&mut self, e: &Entry) {
        let Some(f) = &mut self.file else { return };
        if let Err(err) = f.write_all(&e.encode()) {
            tracing::warn!(file = %self.path.display(), error = %err, "block index write failed; the index stops here, exports read the rest from the file");
            self.file = None;
        }
    }
}

/// The entries of the index at `path` that parse, in order (a torn last
/// entry is left out); empty if there is none.
pub fn read_entries(path: &Path) -> io::Result<Vec<Entry>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if data.len() < MAGIC.len() || data[..MAGIC.len()] != MAGIC {
        return Ok(Vec::new());
    }
    Ok(data[MAGIC.len()..]
        .chunks_exact(ENTRY_LEN)
        .map(Entry::decode)
        .collect())
}

/// One block of a file, as far as it is known without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub offset: u64,
    pub end: u64,
    pub count: u64,
    /// Arrival of its first and last records, µs since the epoch: from the
    /// index, or the file's span when the index does not have the block.
    pub arrival_us: (i64, i64),
    /// Least and greatest record time: `None` when not known (the index
    /// does not have the block, or the channel has no time field).
    pub time: Option<(i64, i64)>,
    /// Whether the index had the block.
    pub indexed: bool,
}

/// A file's header and blocks.
#[derive(Debug, Clone)]
pub struct FileBlocks {
    pub header: Header,
    pub codec: Codec,
    pub blocks: Vec<Block>,
    /// The file's length as read: blocks end within it.
    pub len: u64,
}

/// The blocks of the archive file at `path`, which spans `span_us` (arrival,
/// µs since the epoch; blocks the index does not have are given this span):
/// the index's entries as far as they agree with the file, then the
/// container's block headers, walked up to the last whole block (a file
/// being written may end inside one).
pub fn load(path: &Path, span_us: (i64, i64)) -> io::Result<FileBlocks> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let header = container::read_header(&mut BufReader::new(&file))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let codec = Codec::from_avro_name(&header.codec).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("codec {} is not one the relay writes", header.codec),
        )
    })?;
    let mut blocks = Vec::new();
    let mut at = header.len;
    if let Some(idx) = index_path(path) {
        for e in read_entries(&idx)? {
            if e.offset != at || e.end <= e.offset || e.end > len || e.count == 0 {
                break;
            }
            blocks.push(Block {
                offset: e.offset,
                end: e.end,
                count: e.count,
                arrival_us: (e.first_arrival_us, e.last_arrival_us),
                time: e.time_range(),
                indexed: true,
            });
            at = e.end;
        }
    }
    let mut rd = BufReader::with_capacity(256, &file);
    rd.seek(SeekFrom::Start(at))?;
    while at < len {
        let Some((count, size, data_at)) = block_header(&mut rd, at)? else {
            break;
        };
        let end = data_at.saturating_add(size).saturating_add(16);
        if end > len {
            break;
        }
        let mut sync = [0u8; 16];
        file.read_exact_at(&mut sync, end - 16)?;
        if sync != header.sync {
            break;
        }
        blocks.push(Block {
            offset: at,
            end,
            count,
            arrival_us: span_us,
            time: None,
            indexed: false,
        });
        at = end;
        rd.seek(SeekFrom::Start(at))?;
    }
    Ok(FileBlocks {
        header,
        codec,
        blocks,
        len,
    })
}

/// A block's count and data size, and where its data starts; `None` where
/// no block header parses.
fn block_header(rd: &mut impl Read, at: u64) -> io::Result<Option<(u64, u64, u64)>> {
    let mut counting = Counting { inner: rd, n: 0 };
    let parsed = (|| {
        let count = varint::read_long_from(&mut counting)?;
        let size = varint::read_long_from(&mut counting)?;
        Ok::<_, io::Error>((count, size))
    })();
    match parsed {
        Ok((count, size)) if count > 0 && size >= 0 => {
            Ok(Some((count as u64, size as u64, at + counting.n)))
        }
        Ok(_) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads a block of `file` and decompresses its records into `out`; checks
/// that the block is the one `block` says (its count and sync marker).
pub fn read_block(
    file: &File,
    blocks: &FileBlocks,
    block: &Block,
    raw: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("block at offset {}: {what}", block.offset),
        )
    };
    // Only what the buffer never held is zeroed: not every block again.
    let len = usize::try_from(block.end.saturating_sub(block.offset))
        .map_err(|_| bad("longer than this machine can address"))?;
    raw.resize(len, 0);
    file.read_exact_at(raw, block.offset)?;
    let mut pos = 0;
    let count = varint::read_long(raw, &mut pos).ok_or_else(|| bad("no count"))?;
    let size = varint::read_long(raw, &mut pos).ok_or_else(|| bad("no size"))?;
    if count as u64 != block.count || pos as u64 + size as u64 + 16 != raw.len() as u64 {
        return Err(bad("it is not the block the index says"));
    }
    if raw[raw.len() - 16..] != blocks.header.sync {
        return Err(bad("wrong sync marker"));
    }
    container::decompress(blocks.codec, &raw[pos..raw.len() - 16], out)
        .map_err(|e| bad(&e.to_string()))
}

/// After a crash: makes the index of the (recovered) file at `path` whole
/// again. Entries that agree with the file are kept; blocks it lacks are
/// added with `span_us` as their arrival and, with `time`, their records'
/// time range, read from the records themselves. Written to a temporary
/// file and renamed over the index.
pub fn rebuild(path: &Path, span_us: (i64, i64), time: Option<&RecordTime>) -> io::Result<usize> {
    let Some(idx) = index_path(path) else {
        return Ok(0);
    };
    let blocks = load(path, span_us)?;
    let on_disk = read_entries(&idx)?.len();
    let missing = blocks.blocks.iter().filter(|b| !b.indexed).count();
    if missing == 0 && on_disk == blocks.blocks.len() {
        return Ok(0);
    }
    let file = File::open(path)?;
    let (mut raw, mut out) = (Vec::new(), Vec::new());
    let mut bytes = MAGIC.to_vec();
    for b in &blocks.blocks {
        let mut e = Entry {
            offset: b.offset,
            end: b.end,
            count: b.count,
            first_arrival_us: b.arrival_us.0,
            last_arrival_us: b.arrival_us.1,
            min_time: b.time.map_or(i64::MAX, |t| t.0),
            max_time: b.time.map_or(i64::MIN, |t| t.1),
        };
        if let (false, Some(rt)) = (b.indexed, time) {
            read_block(&file, &blocks, b, &mut raw, &mut out)?;
            let mut pos = 0;
            for _ in 0..b.count {
                let Some(t) = rt.walk(&out, &mut pos) else {
                    break;
                };
                e.min_time = e.min_time.min(t);
                e.max_time = e.max_time.max(t);
            }
        }
        bytes.extend_from_slice(&e.encode());
    }
    let tmp = idx.with_extension("idx.tmp");
    fs::write(&tmp, &bytes)?;
    fs::rename(&tmp, &idx)?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_and_index_names() {
        assert_eq!(
            stem_of("a-20261122T213000.123Z.avro.part"),
            Some("a-20261122T213000.123Z")
        );
        assert_eq!(
            stem_of("a-20261122T213000.123Z--20261122T223000.000Z.avro"),
            Some("a-20261122T213000.123Z")
        );
        assert_eq!(
            stem_of("a-20261122T213000.123Z.avro"),
            Some("a-20261122T213000.123Z")
        );
        assert_eq!(stem_of("a.idx"), None);
        assert_eq!(
            index_path(Path::new(
                "/d/a-20261122T213000.123Z--20261122T223000.000Z.avro"
            ))
            .unwrap(),
            Path::new("/d/a-20261122T213000.123Z.avro.idx")
        );
    }

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.avro.idx");
        let mut w = IndexWriter::create(path.clone());
        let e = Entry {
            offset: 100,
            end: 300,
            count: 7,
            first_arrival_us: 1,
            last_arrival_us: 2,
            min_time: -3,
            max_time: 4,
        };
        w.append(&e);
        w.append(&Entry {
            offset: 300,
            end: 400,
            ..e
        });
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(
            read_entries(&path).unwrap(),
            [
                e,
                Entry {
                    offset: 300,
                    end: 400,
                    ..e
                }
            ]
        );
        assert_eq!(e.time_range(), Some((-3, 4)));
        assert_eq!(
            Entry {
                min_time: i64::MAX,
                max_time: i64::MIN,
                ..e
            }
            .time_range(),
            None
        );
        assert!(read_entries(&dir.path().join("none.idx"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn epoch_microseconds_round_trip() {
        for us in [0, 1, -1, 1_795_383_000_123_456, -62_135_596_800_000_000] {
            assert_eq!(epoch_us(from_epoch_us(us)), us);
        }
    }
}
