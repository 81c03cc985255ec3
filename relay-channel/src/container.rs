//! Avro object container files (Avro 1.11 spec, "Object Container Files"), written by hand.
//!
//! The relay archives datagrams that already hold Avro-encoded datums and must put those
//! bytes into container blocks as they are, without decoding and re-encoding them.
//! `apache_avro::Writer` cannot append pre-encoded bytes (and its `flush` uses `write`
//! while its `Drop` swallows errors), so this module writes the format itself:
//!
//! - [`encode_header`]: magic `Obj\x01`, metadata map (`avro.schema` as given by the
//!   caller, docs and logical types kept; `avro.codec`), 16-byte sync marker;
//! - [`BlockEncoder::encode_block`]: record count, byte size, compressed data, sync marker;
//! - [`recover_part`]: cuts a file left by a crashed writer back to its last whole block;
//! - [`read_header`]: parses a header, for tools and tests.
//!
//! Nothing here panics on file content: every length read from a file is bounded by the
//! bytes actually present before anything is allocated for it.

use std::fs::OpenOptions;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use crate::config::{self, Codec};
use crate::varint::{put_long, read_long_from};

/// The 4-byte magic that starts every Avro object container file.
pub const MAGIC: [u8; 4] = *b"Obj\x01";

/// The format's names for the codecs (the codec itself is configuration).
impl Codec {
    /// The value written to the `avro.codec` metadata key.
    pub fn avro_name(&self) -> &'static str {
        match self {
            Codec::Null => "null",
            Codec::Deflate { .. } => "deflate",
            Codec::Snappy => "snappy",
            Codec::Zstd { .. } => "zstandard",
        }
    }

    /// Maps an `avro.codec` header value to a codec with its default level;
    /// `None` for codecs this module does not handle (e.g. `bzip2`, `xz`).
    pub fn from_avro_name(name: &str) -> Option<Codec> {
        match name {
            "null" => Some(Codec::Null),
            "deflate" => Some(Codec::Deflate {
                level: config::DEFAULT_DEFLATE_LEVEL,
            }),
            "snappy" => Some(Codec::Snappy),
            "zstandard" => Some(Codec::Zstd {
                level: config::DEFAULT_ZSTD_LEVEL,
            }),
            _ => None,
        }
    }
}

/// A fresh random 16-byte sync marker (OS randomness; if that fails, a marker derived
/// from std's randomly seeded hasher, the clock and the process id).
pub fn new_sync_marker() -> [u8; 16] {
    let mut sync = [0u8; 16];
    if getrandom::fill(&mut sync).is_err() {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, half) in sync.chunks_mut(8).enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    sync
}

/// Appends a container header to `out`: magic, metadata (`avro.schema` = `schema_json`
/// byte for byte, `avro.codec`), sync marker.
pub fn encode_header(schema_json: &str, codec: &Codec, sync: &[u8; 16], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    put_long(out, 2);
    put_bytes(out, b"avro.schema");
    put_bytes(out, schema_json.as_bytes());
    put_bytes(out, b"avro.codec");
    put_bytes(out, codec.avro_name().as_bytes());
    put_long(out, 0);
    out.extend_from_slice(sync);
}

/// How much [`BlockEncoder::encode_preemptible`] compresses between two
/// questions whether to go on: at zstd level 19 about 8 ms of work.
pub const PREEMPT_CHUNK: usize = 32 << 10;

/// Levels up to this one compress a block in about a millisecond: not
/// worth cutting it up ([`BlockEncoder::encode_preemptible`] compresses
/// them whole).
pub const PREEMPT_ABOVE_LEVEL: i32 = 3;

/// Compresses `data` into one zstd frame in `out` (whose capacity holds the
/// bound), [`PREEMPT_CHUNK`] bytes at a time, asking `stop` between them;
/// the frame is the one `compress2` makes (content size, checksum: the
/// context's parameters). An `Interrupted` error when stopped.
fn compress_preemptibly(
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    data: &[u8],
    out: &mut Vec<u8>,
    stop: &mut dyn FnMut() -> bool,
) -> io::Result<usize> {
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    let zerr = |code: usize| io::Error::other(zstd::zstd_safe::get_error_name(code));
    cctx.reset(ResetDirective::SessionOnly).map_err(zerr)?;
    cctx.set_pledged_src_size(Some(data.len() as u64))
        .map_err(zerr)?;
    let mut output = OutBuffer::around(out);
    let chunks = data.len().div_ceil(PREEMPT_CHUNK);
    for (i, chunk) in data.chunks(PREEMPT_CHUNK).enumerate() {
        if stop() {
            cctx.reset(ResetDirective::SessionOnly).map_err(zerr)?;
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "block compression given up for a cheaper level",
            ));
        }
        let last = i + 1 == chunks;
        let mut input = InBuffer::around(chunk);
        loop {
            // Flushed after each chunk: zstd compresses only whole blocks
            // of its own (128 KiB) otherwise, and a stop could come only
            // that often. The frame then holds smaller blocks (the window
            // goes on across them: a percent or two of ratio).
            let end = if last {
                ZSTD_EndDirective::ZSTD_e_end
            } else {
                ZSTD_EndDirective::ZSTD_e_flush
            };
            let left = cctx
                .compress_stream2(&mut output, &mut input, end)
                .map_err(zerr)?;
            let done = left == 0 && input.pos() == chunk.len();
            if done {
                break;
            }
        }
    }
    Ok(output.pos())
}

/// Encodes container blocks, reusing its scratch buffer and compressor state from block
/// to block, so that steady-state encoding does not allocate.
pub struct BlockEncoder {
    codec: Codec,
    /// With zstd: the level in use now, which the archive may lower under
    /// load ([`BlockEncoder::set_zstd`]); `None`: blocks are stored, as raw
    /// blocks in a zstd frame.
    zstd_level: Option<i32>,
    scratch: Vec<u8>,
    deflate: Option<flate2::Compress>,
    snappy: Option<snap::raw::Encoder>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for BlockEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockEncoder")
            .field("codec", &self.codec)
            .field("scratch_capacity", &self.scratch.capacity())
            .finish_non_exhaustive()
    }
}

impl BlockEncoder {
    /// An encoder for `codec`. Compressor state is created on the first block (so errors
    /// surface from [`encode_block`](Self::encode_block)); out-of-range levels are clamped.
    pub fn new(codec: Codec) -> Self {
        let codec = match codec {
            Codec::Deflate { level } => Codec::Deflate {
                level: level.min(9),
            },
            Codec::Zstd { level } => {
                let range = zstd::compression_level_range();
                Codec::Zstd {
                    level: level.clamp(*range.start(), *range.end()),
                }
            }
            c => c,
        };
        BlockEncoder {
            zstd_level: match codec {
                Codec::Zstd { level } => Some(level),
                _ => None,
            },
            codec,
            scratch: Vec::new(),
            deflate: None,
            snappy: None,
            zstd: None,
        }
    }

    /// With zstd, the level of the next blocks: `Some(level)`, or `None` to
    /// store them uncompressed (raw blocks in a zstd frame: any zstd reader
    /// reads them, at the cost of a copy). Other codecs ignore it.
    pub fn set_zstd(&mut self, level: Option<i32>) -> io::Result<()> {
        if !matches!(self.codec, Codec::Zstd { .. }) || level == self.zstd_level {
            return Ok(());
        }
        if let (Some(l), Some(z)) = (level, &mut self.zstd) {
            let range = zstd::compression_level_range();
            z.set_compression_level(l.clamp(*range.start(), *range.end()))?;
        }
        self.zstd_level = level;
        Ok(())
    }

    /// With zstd, the level of the next blocks (`None`: stored); `None` with
    /// other codecs.
    pub fn zstd_level(&self) -> Option<i32> {
        self.zstd_level
    }

    /// Appends one whole block (count, size, compressed data, sync) to `out`. `data` is the
    /// concatenation of `count` datums. A `count` of 0 appends nothing (a zero-count block
    /// would end reading early in some readers); `data` must then be empty.
    pub fn encode_block(
        &mut self,
        count: u64,
        data: &[u8],
        sync: &[u8; 16],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        self.write_block(count, data, sync, out).map(|_| ())
    }

    /// Writes one whole block, as [`encode_block`](Self::encode_block) lays it out, to `w`
    /// ([`encode`](Self::encode), then [`EncodedBlock::write_to`]); returns its length.
    pub fn write_block(
        &mut self,
        count: u64,
        data: &[u8],
        sync: &[u8; 16],
        w: &mut impl Write,
    ) -> io::Result<u64> {
        let block = self.encode(count, data, sync)?;
        block.write_to(w)?;
        Ok(block.len())
    }

    /// Encodes one whole block, laid out as [`encode_block`](Self::encode_block) does, as
    /// the slices to write in order. Nothing is copied that need not be: with the null codec
    /// and stored zstd blocks the records stay in `data` (the block's few header bytes
    /// beside them), a compressed body in the compressor's buffer. A `count` of 0 gives an
    /// empty block (nothing to write); `data` must then be empty.
    pub fn encode<'a>(
        &'a mut self,
        count: u64,
        data: &'a [u8],
        sync: &'a [u8; 16],
    ) -> io::Result<EncodedBlock<'a>> {
        self.encode_with(count, data, sync, None)
    }

    /// [`encode`](Self::encode), giving up when `stop` says so: with zstd
    /// above [`PREEMPT_ABOVE_LEVEL`] the records are compressed
    /// [`PREEMPT_CHUNK`] bytes at a time, and
    /// `stop` is asked between chunks; when it answers true the block is
    /// abandoned (an `Interrupted` error, the compressor ready for the next
    /// block). The archive uses it so that a slow level (19 takes tens of
    /// milliseconds a block) never holds the queue up past the moment the
    /// level should change. Other codecs, and stored blocks, ignore `stop`.
    pub fn encode_preemptible<'a>(
        &'a mut self,
        count: u64,
        data: &'a [u8],
        sync: &'a [u8; 16],
        stop: &mut dyn FnMut() -> bool,
    ) -> io::Result<EncodedBlock<'a>> {
        self.encode_with(count, data, sync, Some(stop))
    }

    fn encode_with<'a>(
        &'a mut self,
        count: u64,
        data: &'a [u8],
        sync: &'a [u8; 16],
        stop: Option<&mut dyn FnMut() -> bool>,
    ) -> io::Result<EncodedBlock<'a>> {
        if count == 0 {
            if data.is_empty() {
                return Ok(EncodedBlock::default());
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "block with 0 records but non-empty data",
            ));
        }
        let count = i64::try_from(count)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record count too large"))?;
        let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "block too large");
        let mut head = Vec::with_capacity(40);
        put_long(&mut head, count);
        let mut crc_bytes = [0u8; 4];
        let stored = matches!(self.codec, Codec::Zstd { .. }) && self.zstd_level.is_none();
        // The block's body: what follows the head, before the sync marker.
        let body: &[u8] = match self.codec {
            Codec::Null => {
                put_long(
                    &mut head,
                    i64::try_from(data.len()).map_err(|_| too_large())?,
                );
                data
            }
            Codec::Deflate { level } => {
                let c = self.deflate.get_or_insert_with(|| {
                    flate2::Compress::new(flate2::Compression::new(level), false)
                });
                c.reset();
                deflate_into(c, data, &mut self.scratch)?;
                put_long(
                    &mut head,
                    i64::try_from(self.scratch.len()).map_err(|_| too_large())?,
                );
                &self.scratch
            }
            Codec::Snappy => {
                let max = snap::raw::max_compress_len(data.len());
                if max == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "block too large for snappy",
                    ));
                }
                if self.scratch.len() < max {
                    self.scratch.resize(max, 0);
                }
                let enc = self.snappy.get_or_insert_with(snap::raw::Encoder::new);
                let n = enc
                    .compress(data, &mut self.scratch[..max])
                    .map_err(io::Error::other)?;
                crc_bytes = crc32fast::hash(data).to_be_bytes();
                put_long(&mut head, i64::try_from(n + 4).map_err(|_| too_large())?);
                &self.scratch[..n]
            }
            Codec::Zstd { .. } if stored => {
                // The frame's headers go in `scratch`, the records stay in
                // `data`: see `zstd_stored_frame`.
                let chunks = data.len().div_ceil(ZSTD_MAX_BLOCK).max(1);
                let size = ZSTD_STORED_FRAME_HEADER + 3 * chunks + data.len();
                put_long(&mut head, i64::try_from(size).map_err(|_| too_large())?);
                zstd_stored_headers(data.len(), &mut self.scratch);
                data
            }
            Codec::Zstd { level } => {
                let level = self.zstd_level.unwrap_or(level);
                let z = match &mut self.zstd {
                    Some(z) => z,
                    slot => {
                        let mut z = zstd::bulk::Compressor::new(level)?;
                        z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                        z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
                        slot.insert(z)
                    }
                };
                self.scratch.clear();
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(data.len()));
                let n = match stop {
                    Some(stop) if data.len() > PREEMPT_CHUNK && level > PREEMPT_ABOVE_LEVEL => {
                        compress_preemptibly(z.context_mut(), data, &mut self.scratch, stop)?
                    }
                    _ => z.compress_to_buffer(data, &mut self.scratch)?,
                };
                put_long(&mut head, i64::try_from(n).map_err(|_| too_large())?);
                &self.scratch[..n]
            }
        };
        let crc = if matches!(self.codec, Codec::Snappy) {
            crc_bytes.to_vec()
        } else {
            Vec::new()
        };
        let mut parts: Vec<&'a [u8]> = Vec::with_capacity(8);
        if stored {
            // The frame header, then each chunk of records after its 3-byte
            // block header (an empty frame: one empty block).
            let (frame, block_headers) = self.scratch.split_at(ZSTD_STORED_FRAME_HEADER);
            parts.push(frame);
            let mut block_headers = block_headers.chunks(3);
            if data.is_empty() {
                parts.extend(block_headers.next());
            }
            for chunk in data.chunks(ZSTD_MAX_BLOCK) {
                parts.extend(block_headers.next());
                parts.push(chunk);
            }
        } else {
            parts.push(body);
        }
        Ok(EncodedBlock {
            head,
            parts,
            crc,
            sync,
        })
    }
}

/// One encoded block, as slices to write in order (see [`BlockEncoder::encode`]): its head
/// (record count and size), the body, a checksum for snappy, the sync marker.
#[derive(Debug, Default)]
pub struct EncodedBlock<'a> {
    head: Vec<u8>,
    parts: Vec<&'a [u8]>,
    crc: Vec<u8>,
    sync: &'a [u8],
}

impl EncodedBlock<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        (self.head.len()
            + self.parts.iter().map(|p| p.len()).sum::<usize>()
            + self.crc.len()
            + self.sync.len()) as u64
    }

    /// Whether there is nothing to write (a block of 0 records).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes it to `w` with vectored writes (again after a short write or an
    /// interruption). On an error, part of it may have been written.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(self.parts.len() + 3);
        slices.push(io::IoSlice::new(&self.head));
        slices.extend(self.parts.iter().map(|p| io::IoSlice::new(p)));
        slices.push(io::IoSlice::new(&self.crc));
        slices.push(io::IoSlice::new(self.sync));
        write_all_vectored(w, &mut slices)
    }
}

/// Writes every byte of `slices` to `w`, again after a short write or an
/// interruption.
fn write_all_vectored(w: &mut impl Write, mut slices: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The length of a stored zstd frame's header: magic, descriptor, 8-byte
/// content size.
const ZSTD_STORED_FRAME_HEADER: usize = 13;

/// Writes into `scratch` (cleared first) the headers of a zstd frame of raw
/// blocks holding `len` bytes: the frame header ([`ZSTD_STORED_FRAME_HEADER`]
/// bytes), then the 3-byte header of each block in order. The frame is those
/// headers with each block's bytes after its header (`zstd_stored_frame`).
fn zstd_stored_headers(len: usize, scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Content_Size_flag 3 (8 bytes), Single_Segment_flag.
    scratch.push(0b1110_0000);
    scratch.extend_from_slice(&(len as u64).to_le_bytes());
    let chunks = len.div_ceil(ZSTD_MAX_BLOCK).max(1);
    for i in 0..chunks {
        let size = if i + 1 < chunks {
            ZSTD_MAX_BLOCK
        } else {
            len - i * ZSTD_MAX_BLOCK
        };
        let last = u32::from(i + 1 == chunks);
        // Last_Block, Block_Type 0 (raw), Block_Size.
        let header = last | ((size as u32) << 3);
        scratch.extend_from_slice(&header.to_le_bytes()[..3]);
    }
}

/// The largest raw block of a zstd frame.
const ZSTD_MAX_BLOCK: usize = 128 << 10;

/// Writes `data` into `scratch` (cleared first) as one zstd frame of raw
/// (uncompressed) blocks, with its content size and no checksum (RFC 8878:
/// single segment, 8-byte frame content size, blocks of at most 128 KiB).
#[cfg(test)]
fn zstd_stored_frame(data: &[u8], scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.reserve(data.len() + 13 + 3 * (data.len() / ZSTD_MAX_BLOCK + 1));
    scratch.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Content_Size_flag 3 (8 bytes), Single_Segment_flag.
    scratch.push(0b1110_0000);
    scratch.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut chunks = data.chunks(ZSTD_MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty last raw block.
        scratch.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Last_Block, Block_Type 0 (raw), Block_Size.
        let header = last | ((chunk.len() as u32) << 3);
        scratch.extend_from_slice(&header.to_le_bytes()[..3]);
        scratch.extend_from_slice(chunk);
    }
}

/// Raw-deflates `data` into `scratch` (cleared first), growing it only when needed.
fn deflate_into(c: &mut flate2::Compress, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<()> {
    scratch.clear();
    scratch.reserve(data.len() + data.len() / 16 + 64);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&data[done..], scratch, flate2::FlushCompress::Finish)
            .map_err(io::Error::other)?;
        match status {
            flate2::Status::StreamEnd => return Ok(()),
            flate2::Status::Ok | flate2::Status::BufError => {
                if scratch.len() == scratch.capacity() || status == flate2::Status::BufError {
                    scratch.reserve(scratch.capacity().max(4096));
                }
            }
        }
    }
}

/// What [`recover_part`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Whole good blocks kept.
    pub blocks: u64,
    /// Records in those blocks.
    pub records: u64,
    /// File length after recovery (end of the last good block); 0 if `!header_ok`.
    pub valid_len: u64,
    /// Bytes cut off the end; 0 if `!header_ok`.
    pub truncated_bytes: u64,
    /// Whether the header was a complete Avro container header with a codec we handle.
    /// If false the file was left unchanged.
    pub header_ok: bool,
}

/// Crash recovery of a file left open by a crashed writer: reads the header, walks the
/// blocks, checking each block's trailing sync marker and that its data decompresses
/// (snappy: CRC matches; zstd: frame checksum matches), then truncates the file to the
/// end of the last whole good block (`set_len` + `sync_all`). If the header is incomplete,
/// not an Avro container or names a codec we do not handle, `header_ok` is false and the
/// file is left unchanged (the caller renames it aside; we never delete data).
///
/// Only a regular file is touched: a symlink in its place is refused
/// (`O_NOFOLLOW`), as is anything else that is not a plain file.
pub fn recover_part(path: &Path) -> io::Result<Recovery> {
    let file = crate::nofollow::open(
        OpenOptions::new().read(true).write(true),
        libc::O_NONBLOCK,
        path,
    )?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file_len = meta.len();
    let mut rd = CountingReader {
        inner: BufReader::with_capacity(64 * 1024, (&file).take(file_len)),
        pos: 0,
    };
    let header = match read_header(&mut rd) {
        Ok(h) => h,
        Err(HeaderError::Io(e)) => return Err(e),
        Err(_) => return Ok(Recovery::default()),
    };
    let Some(codec) = Codec::from_avro_name(&header.codec) else {
        return Ok(Recovery::default());
    };
    let mut rec = Recovery {
        header_ok: true,
        valid_len: rd.pos,
        ..Recovery::default()
    };
    let mut checker = BlockChecker::default();
    while rd.pos < file_len {
        let block = next_block(&mut rd, file_len, codec, &header.sync, &mut checker)?;
        // A count that takes the total past u64::MAX is no writer's: damage.
        match block.and_then(|count| rec.records.checked_add(count)) {
            Some(records) => {
                rec.blocks += 1;
                rec.records = records;
                rec.valid_len = rd.pos;
            }
            None => break,
        }
    }
    drop(rd);
    rec.truncated_bytes = file_len - rec.valid_len;
    // Also when nothing is cut: gives back space allocated beyond the end.
    file.set_len(rec.valid_len)?;
    file.sync_all()?;
    Ok(rec)
}

/// Reusable buffers for checking blocks during recovery.
#[derive(Default)]
struct BlockChecker {
    data: Vec<u8>,
    out: Vec<u8>,
}

/// Reads and checks one block at `rd`; `Ok(Some(count))` if it is whole and good,
/// `Ok(None)` if it is damaged or incomplete, `Err` only for real I/O errors.
fn next_block<R: Read>(
    rd: &mut CountingReader<R>,
    file_len: u64,
    codec: Codec,
    sync: &[u8; 16],
    ck: &mut BlockChecker,
) -> io::Result<Option<u64>> {
    let count = match soft(read_long_from(rd))? {
        Some(c) if c > 0 => c as u64,
        _ => return Ok(None),
    };
    let size = match soft(read_long_from(rd))? {
        Some(s) if s >= 0 => s as u64,
        _ => return Ok(None),
    };
    // Data plus the 16-byte marker must fit in what is left of the file.
    if size.saturating_add(16) > file_len - rd.pos {
        return Ok(None);
    }
    ck.data.clear();
    let got = rd.by_ref().take(size).read_to_end(&mut ck.data)?;
    let mut marker = [0u8; 16];
    if got as u64 != size || soft(rd.read_exact(&mut marker))?.is_none() || &marker != sync {
        return Ok(None);
    }
    Ok(check_data(codec, &ck.data, &mut ck.out).then_some(count))
}

/// Decompresses a block's data, written under `codec`, into `out` (which
/// is cleared first).
pub fn decompress(codec: Codec, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    out.clear();
    match codec {
        Codec::Null => out.extend_from_slice(data),
        Codec::Deflate { .. } => {
            flate2::read::DeflateDecoder::new(data).read_to_end(out)?;
        }
        Codec::Snappy => {
            let split = data
                .len()
                .checked_sub(4)
                .ok_or_else(|| bad("snappy block too short"))?;
            let (body, crc) = data.split_at(split);
            let len = snap::raw::decompress_len(body).map_err(|e| bad(&e.to_string()))?;
            out.resize(len, 0);
            let n = snap::raw::Decoder::new()
                .decompress(body, out)
                .map_err(|e| bad(&e.to_string()))?;
            out.truncate(n);
            if crc32fast::hash(out).to_be_bytes() != [crc[0], crc[1], crc[2], crc[3]] {
                return Err(bad("snappy block CRC mismatch"));
            }
        }
        Codec::Zstd { .. } => {
            zstd::stream::read::Decoder::with_buffer(data)?
                .single_frame()
                .read_to_end(out)?;
        }
    }
    Ok(())
}

/// Whether a block's data decodes under `codec`.
fn check_data(codec: Codec, data: &[u8], out: &mut Vec<u8>) -> bool {
    match codec {
        Codec::Null => true,
        Codec::Deflate { .. } => {
            let mut d = flate2::Decompress::new(false);
            if out.len() < 64 * 1024 {
                out.resize(64 * 1024, 0);
            }
            loop {
                let consumed = d.total_in() as usize;
                let before = (d.total_in(), d.total_out());
                match d.decompress(&data[consumed..], out, flate2::FlushDecompress::None) {
                    Ok(flate2::Status::StreamEnd) => return d.total_in() as usize == data.len(),
                    Ok(_) if (d.total_in(), d.total_out()) != before => {}
                    _ => return false,
                }
            }
        }
        Codec::Snappy => {
            let Some(split) = data.len().checked_sub(4) else {
                return false;
            };
            let (body, crc) = data.split_at(split);
            let Ok(len) = snap::raw::decompress_len(body) else {
                return false;
            };
            // A snappy element of at most 3 bytes expands to at most 64 bytes.
            if len > body.len().saturating_mul(32) {
                return false;
            }
            out.clear();
            out.resize(len, 0);
            match snap::raw::Decoder::new().decompress(body, out) {
                Ok(n) if n == len => {
                    crc32fast::hash(out).to_be_bytes() == [crc[0], crc[1], crc[2], crc[3]]
                }
                _ => false,
            }
        }
        Codec::Zstd { .. } => {
            if zstd::zstd_safe::find_frame_compressed_size(data) != Ok(data.len()) {
                return false;
            }
            match zstd::stream::read::Decoder::with_buffer(data) {
                Ok(dec) => io::copy(&mut dec.single_frame(), &mut io::sink()).is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// A parsed container header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The `avro.schema` metadata value, byte for byte.
    pub schema_json: String,
    /// The `avro.codec` metadata value (`null` if absent).
    pub codec: String,
    /// The file's sync marker.
    pub sync: [u8; 16],
    /// Header length in bytes; the first block starts here.
    pub len: u64,
}

/// Why [`read_header`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The input ended inside the header.
    #[error("header is truncated")]
    Truncated,
    /// The input does not start with `Obj\x01`.
    #[error("not an Avro object container file (bad magic)")]
    BadMagic,
    /// The metadata is not a well-formed map<bytes> with a UTF-8 JSON `avro.schema`.
    #[error("malformed header: {0}")]
    Malformed(&'static str),
    /// Reading failed.
    #[error("I/O error reading header: {0}")]
    Io(#[source] io::Error),
}

/// Reads a container file's header from `r` (which should be buffered), consuming
/// exactly the header's bytes. Allocation is bounded by the bytes actually read.
pub fn read_header(r: &mut impl Read) -> Result<Header, HeaderError> {
    let mut rd = CountingReader { inner: r, pos: 0 };
    let mut magic = [0u8; 4];
    rd.read_exact(&mut magic).map_err(header_err)?;
    if magic != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let mut schema: Option<Vec<u8>> = None;
    let mut codec: Option<Vec<u8>> = None;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let mut n = read_long_from(&mut rd).map_err(header_err)?;
        if n == 0 {
            break;
        }
        if n < 0 {
            // Negative count: absolute value, followed by the block's byte size.
            n = n
                .checked_neg()
                .ok_or(HeaderError::Malformed("bad map block count"))?;
            read_long_from(&mut rd).map_err(header_err)?;
        }
        for _ in 0..n {
            read_bytes(&mut rd, &mut key)?;
            read_bytes(&mut rd, &mut value)?;
            match key.as_slice() {
                b"avro.schema" => schema = Some(std::mem::take(&mut value)),
                b"avro.codec" => codec = Some(std::mem::take(&mut value)),
                _ => {}
            }
        }
    }
    let mut sync = [0u8; 16];
    rd.read_exact(&mut sync).map_err(header_err)?;
    let schema = schema.ok_or(HeaderError::Malformed("no avro.schema"))?;
    let schema_json =
        String::from_utf8(schema).map_err(|_| HeaderError::Malformed("avro.schema not UTF-8"))?;
    if serde_json::from_str::<serde::de::IgnoredAny>(&schema_json).is_err() {
        return Err(HeaderError::Malformed("avro.schema is not JSON"));
    }
    let codec = match codec {
        None => "null".to_owned(),
        Some(c) => {
            String::from_utf8(c).map_err(|_| HeaderError::Malformed("avro.codec not UTF-8"))?
        }
    };
    Ok(Header {
        schema_json,
        codec,
        sync,
        len: rd.pos,
    })
}

/// Reads an Avro `bytes`/`string` (long length + data) into `buf`, growing it only
/// as data actually arrives.
fn read_bytes<R: Read>(rd: &mut CountingReader<R>, buf: &mut Vec<u8>) -> Result<(), HeaderError> {
    let len = read_long_from(rd).map_err(header_err)?;
    let len = u64::try_from(len).map_err(|_| HeaderError::Malformed("negative length"))?;
    buf.clear();
    let got = rd.by_ref().take(len).read_to_end(buf).map_err(header_err)?;
    if got as u64 != len {
        return Err(HeaderError::Truncated);
    }
    Ok(())
}

fn header_err(e: io::Error) -> HeaderError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => HeaderError::Truncated,
        io::ErrorKind::InvalidData => HeaderError::Malformed("bad varint"),
        _ => HeaderError::Io(e),
    }
}

/// Maps end-of-data and malformed-data errors to `None`, keeps real I/O errors.
fn soft<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
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

/// A reader that counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Appends an Avro `bytes` value (length + data).
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use apache_avro::{Reader, Schema};

    const SCHEMA: &str = include_str!("../../channels.d/example.avsc");

    const ALL: [Codec; 4] = [
        Codec::Null,
        Codec::Deflate { level: 6 },
        Codec::Snappy,
        Codec::Zstd { level: 3 },
    ];

    fn schema() -> Schema {
        Schema::parse_str(SCHEMA).unwrap()
    }

    /// One datum, as `apache_avro::to_avro_datum` (deprecated in 0.22) would encode it.
    fn datum(s: &Schema, v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        apache_avro::writer::datum::GenericDatumWriter::builder(s)
            .build()
            .unwrap()
            .write_value_ref(&mut out, v)
            .unwrap();
        out
    }

    fn record(i: i64) -> Value {
        let t = i as f64 * 0.001;
        Value::Record(vec![
            (
                "time".into(),
                Value::TimestampMicros(1_763_000_000_000_000 + i * 1000),
            ),
            ("message".into(), Value::String(format!("sample {i}"))),
            ("counter".into(), Value::Int(i as i32)),
            (
                "sine_wave".into(),
                Value::Double((std::f64::consts::TAU * 5.0 * t).sin()),
            ),
            ("ramp".into(), Value::Double(t.fract())),
            (
                "square_wave".into(),
                Value::Double(if i % 20 < 10 { 1.0 } else { -1.0 }),
            ),
            (
                "noise".into(),
                Value::Double(((i * 7919) % 2000) as f64 / 1000.0 - 1.0),
            ),
        ])
    }

    /// Datums for block sizes `sizes`, numbered consecutively.
    fn blocks(sizes: &[usize]) -> Vec<Vec<Value>> {
        let mut i = 0;
        sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        i += 1;
                        record(i)
                    })
                    .collect()
            })
            .collect()
    }

    /// A block compressed a chunk at a time reads back as any other; one
    /// given up leaves the encoder ready for the next block, and the file
    /// holds only whole blocks.
    #[test]
    fn preemptible_blocks_read_back_and_a_block_given_up_leaves_nothing() {
        let s = schema();
        let sync = new_sync_marker();
        let codec = Codec::Zstd { level: 19 };
        let mut out = Vec::new();
        encode_header(SCHEMA, &codec, &sync, &mut out);
        let mut enc = BlockEncoder::new(codec);
        let all = blocks(&[3000, 5, 3000]);
        let mut asked = 0;
        for (i, b) in all.iter().enumerate() {
            let mut data = Vec::new();
            for v in b {
                data.extend(datum(&s, v));
            }
            if i == 0 {
                // Given up after the first chunk: nothing is written.
                assert!(data.len() > 2 * PREEMPT_CHUNK, "{}", data.len());
                let e = enc
                    .encode_preemptible(b.len() as u64, &data, &sync, &mut || true)
                    .map(|_| ())
                    .unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::Interrupted);
            }
            let block = enc
                .encode_preemptible(b.len() as u64, &data, &sync, &mut || {
                    asked += 1;
                    false
                })
                .unwrap();
            block.write_to(&mut out).unwrap();
        }
        assert!(asked >= 4, "{asked}");
        let got: Vec<Value> = Reader::new(&out[..]).unwrap().map(|v| v.unwrap()).collect();
        let want: Vec<Value> = all.into_iter().flatten().collect();
        assert_eq!(got, want);
    }

    /// The adaptive archive's levels, stored blocks among them, in one
    /// file: apache-avro reads every record back in order, and a stored
    /// frame (several raw blocks past 128 KiB) decodes with zstd as it was.
    #[test]
    fn zstd_levels_change_between_blocks_and_stored_frames_read_back() {
        let s = schema();
        let sync = new_sync_marker();
        let mut out = Vec::new();
        let codec = Codec::Zstd { level: 3 };
        encode_header(SCHEMA, &codec, &sync, &mut out);
        let mut enc = BlockEncoder::new(codec);
        let all = blocks(&[40, 3000, 40, 1, 40]);
        for (b, level) in all.iter().zip([Some(3), None, Some(-64), None, Some(1)]) {
            enc.set_zstd(level).unwrap();
            let mut data = Vec::new();
            for v in b {
                data.extend(datum(&s, v));
            }
            enc.encode_block(b.len() as u64, &data, &sync, &mut out)
                .unwrap();
        }
        let got: Vec<Value> = Reader::new(&out[..]).unwrap().map(|v| v.unwrap()).collect();
        let want: Vec<Value> = all.into_iter().flatten().collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);

        for len in [
            0,
            1,
            ZSTD_MAX_BLOCK - 1,
            ZSTD_MAX_BLOCK,
            ZSTD_MAX_BLOCK + 1,
            3 * ZSTD_MAX_BLOCK + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let count = 1u64;
            let mut stored = BlockEncoder::new(Codec::Zstd { level: 1 });
            stored.set_zstd(None).unwrap();
            let mut block = Vec::new();
            let n = stored.write_block(count, &data, &sync, &mut block).unwrap();
            assert_eq!(n as usize, block.len(), "{len}");
            let mut r = &block[..];
            assert_eq!(read_long_from(&mut r).unwrap(), count as i64);
            let size = read_long_from(&mut r).unwrap() as usize;
            assert_eq!(size + 16, r.len(), "{len}: the size field");
            let frame = &r[..size];
            assert_eq!(zstd::decode_all(frame).unwrap(), data, "{len}");
            assert_eq!(&r[size..], &sync[..]);
            // The records are written in place; the frame is the same as
            // one built in a buffer.
            let mut built = Vec::new();
            zstd_stored_frame(&data, &mut built);
            assert_eq!(frame, &built[..], "{len}");
        }
    }

    /// A whole file; also returns the end offset of the header and of each block.
    fn build(codec: Codec, blocks: &[Vec<Value>], sync: &[u8; 16]) -> (Vec<u8>, Vec<usize>) {
        let s = schema();
        let mut out = Vec::new();
        encode_header(SCHEMA, &codec, sync, &mut out);
        let mut ends = vec![out.len()];
        let mut enc = BlockEncoder::new(codec);
        for b in blocks {
            let mut data = Vec::new();
            for v in b {
                data.extend(datum(&s, v));
            }
            enc.encode_block(b.len() as u64, &data, sync, &mut out)
                .unwrap();
            ends.push(out.len());
        }
        (out, ends)
    }

    fn read_all(bytes: &[u8]) -> Vec<Value> {
        Reader::new(bytes).unwrap().map(|v| v.unwrap()).collect()
    }

    fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn container_round_trip_all_codecs() {
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[1, 7, 120, 3]);
        let expected: Vec<Value> = bl.iter().flatten().cloned().collect();
        for codec in ALL {
            let sync = new_sync_marker();
            let (bytes, ends) = build(codec, &bl, &sync);
            let p = write_tmp(&dir, "f.avro", &bytes);
            let f = std::fs::File::open(&p).unwrap();
            let reader = Reader::new(BufReader::new(f)).unwrap();
            match reader.writer_schema() {
                Schema::Record(r) => {
                    assert!(r.doc.as_deref().unwrap().starts_with("The SpeedData"));
                    assert!(r.fields.iter().all(|f| f.doc.is_some()), "{codec:?}");
                    assert_eq!(r.fields[0].schema, Schema::TimestampMicros);
                }
                other => panic!("{other:?}"),
            }
            let got: Vec<Value> = reader.map(|v| v.unwrap()).collect();
            assert_eq!(got, expected, "{codec:?}");

            let h = read_header(&mut BufReader::new(std::fs::File::open(&p).unwrap())).unwrap();
            assert_eq!(h.schema_json, SCHEMA);
            assert_eq!(h.codec, codec.avro_name());
            assert_eq!(h.sync, sync);
            assert_eq!(h.len as usize, ends[0]);
        }
    }

    #[test]
    fn container_header_only_is_empty_file() {
        for codec in ALL {
            let (bytes, _) = build(codec, &[], &new_sync_marker());
            assert!(read_all(&bytes).is_empty());
            let h = read_header(&mut &bytes[..]).unwrap();
            assert_eq!(h.len as usize, bytes.len());
        }
    }

    #[test]
    fn container_reads_apache_avro_written_header() {
        let s = schema();
        let mut w = apache_avro::Writer::builder()
            .schema(&s)
            .writer(Vec::new())
            .build()
            .unwrap();
        w.append_value(record(1)).unwrap();
        let bytes = w.into_inner().unwrap();
        let h = read_header(&mut &bytes[..]).unwrap();
        assert_eq!(h.codec, "null");
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "w.avro", &bytes);
        let r = recover_part(&p).unwrap();
        assert_eq!(
            (r.header_ok, r.blocks, r.records, r.truncated_bytes),
            (true, 1, 1, 0)
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn container_recover_gives_back_space_allocated_beyond_the_end() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = build(Codec::Null, &blocks(&[4, 9]), &new_sync_marker());
        let p = write_tmp(&dir, "ahead.avro.part", &bytes);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        // SAFETY: integer arguments only; `f` is open.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                4 << 20,
            )
        };
        drop(f);
        if r == 0 {
            assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 4 << 20);
        }
        let rec = recover_part(&p).unwrap();
        assert_eq!((rec.blocks, rec.records, rec.truncated_bytes), (2, 13, 0));
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), bytes.len() as u64);
        assert!(m.blocks() * 512 < 1 << 20, "{m:?}");
    }

    #[test]
    fn container_recover_cut_inside_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[4, 9, 6]);
        for codec in ALL {
            let (bytes, ends) = build(codec, &bl, &new_sync_marker());
            let good = ends[2];
            let expected: Vec<Value> = bl[..2].iter().flatten().cloned().collect();
            for cut in good..bytes.len() {
                let p = write_tmp(&dir, "c.avro.part", &bytes[..cut]);
                let r = recover_part(&p).unwrap();
                assert_eq!(
                    r,
                    Recovery {
                        blocks: 2,
                        records: 13,
                        valid_len: good as u64,
                        truncated_bytes: (cut - good) as u64,
                        header_ok: true
                    },
                    "{codec:?} cut {cut}"
                );
                let after = std::fs::read(&p).unwrap();
                assert_eq!(after, &bytes[..good]);
                assert_eq!(read_all(&after), expected, "{codec:?} cut {cut}");
            }
            // The whole file is kept as it is.
            let p = write_tmp(&dir, "c.avro.part", &bytes);
            let r = recover_part(&p).unwrap();
            assert_eq!((r.blocks, r.records, r.truncated_bytes), (3, 19, 0));
            assert_eq!(std::fs::read(&p).unwrap(), bytes);
        }
    }

    #[test]
    fn container_recover_garbage_appended() {
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[5, 5]);
        for codec in ALL {
            let sync = new_sync_marker();
            let (bytes, ends) = build(codec, &bl, &sync);
            let expected: Vec<Value> = bl.iter().flatten().cloned().collect();
            let (other, _) = build(codec, &bl, &new_sync_marker());
            let mut fake_huge = Vec::new();
            put_long(&mut fake_huge, 3);
            put_long(&mut fake_huge, i64::MAX);
            let mut wrong_count = Vec::new();
            put_long(&mut wrong_count, -1);
            wrong_count.extend_from_slice(&bytes[ends[0]..]);
            let mut bad_data = Vec::new();
            put_long(&mut bad_data, 1);
            put_long(&mut bad_data, 8);
            bad_data.extend_from_slice(&[0xff; 8]);
            bad_data.extend_from_slice(&sync);
            let garbages: Vec<Vec<u8>> = vec![
                vec![0; 4096],
                (0..3000u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect(),
                other[ends[0]..].to_vec(),
                fake_huge,
                wrong_count,
                vec![0xff; 11],
                bad_data,
            ];
            for (gi, g) in garbages.iter().enumerate() {
                if codec == Codec::Null && gi == 6 {
                    continue; // null data is not checked beyond the marker
                }
                let mut f = bytes.clone();
                f.extend_from_slice(g);
                let p = write_tmp(&dir, "g.avro.part", &f);
                let r = recover_part(&p).unwrap();
                assert!(r.header_ok);
                assert_eq!((r.blocks, r.records), (2, 10), "{codec:?} garbage {gi}");
                assert_eq!(r.valid_len as usize, bytes.len());
                assert_eq!(r.truncated_bytes as usize, g.len());
                let after = std::fs::read(&p).unwrap();
                assert_eq!(read_all(&after), expected);
            }
        }
    }

    #[test]
    fn container_recover_record_total_does_not_overflow() {
        // Found writing the oracle of the recover fuzz target (fuzz/), and
        // reproduced with it: three null-codec blocks that each claim i64::MAX
        // records in 0 bytes, after two good blocks, overflowed the record
        // total (a panic in debug builds, a wrong count in release). The input,
        // with this file's marker: `fe ff ff ff ff ff ff ff ff 01` (count
        // i64::MAX), `00` (size 0), the marker; three times.
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[5, 5]);
        for codec in ALL {
            let sync = new_sync_marker();
            let (bytes, _) = build(codec, &bl, &sync);
            let mut forged = vec![
                0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00,
            ];
            forged.extend_from_slice(&sync);
            let mut f = bytes.clone();
            for _ in 0..3 {
                f.extend_from_slice(&forged);
            }
            let p = write_tmp(&dir, "o.avro.part", &f);
            let r = recover_part(&p).unwrap();
            assert!(r.header_ok);
            // The good blocks stay; no count adds up past u64::MAX.
            assert!(r.valid_len as usize >= bytes.len(), "{codec:?} {r:?}");
            assert!(r.records >= 10, "{codec:?} {r:?}");
            assert_eq!(std::fs::read(&p).unwrap().len() as u64, r.valid_len);
            if codec == Codec::Null {
                // Null data is not checked beyond the marker: the first forged
                // block stays, the second would take the total past u64::MAX.
                assert_eq!((r.blocks, r.records), (3, 10 + i64::MAX as u64));
            } else {
                // Empty data does not decompress: the forged blocks go.
                assert_eq!((r.blocks, r.records), (2, 10), "{codec:?}");
            }
        }
    }

    #[test]
    fn container_recover_rejects_damaged_checksummed_block() {
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[5, 30, 5]);
        for codec in [Codec::Snappy, Codec::Zstd { level: 3 }] {
            let (bytes, ends) = build(codec, &bl, &new_sync_marker());
            // Flip a byte in the checksum (last 4 bytes before the marker) of block 2.
            let mut f = bytes.clone();
            f[ends[2] - 17] ^= 0x55;
            let p = write_tmp(&dir, "d.avro.part", &f);
            let r = recover_part(&p).unwrap();
            assert_eq!((r.blocks, r.records), (1, 5), "{codec:?}");
            assert_eq!(r.valid_len as usize, ends[1]);
        }
    }

    #[test]
    fn container_recover_header_only_and_truncated_header() {
        let dir = tempfile::tempdir().unwrap();
        for codec in ALL {
            let (bytes, ends) = build(codec, &blocks(&[3]), &new_sync_marker());
            let hlen = ends[0];
            let p = write_tmp(&dir, "h.avro.part", &bytes[..hlen]);
            let r = recover_part(&p).unwrap();
            assert_eq!(
                r,
                Recovery {
                    header_ok: true,
                    valid_len: hlen as u64,
                    ..Recovery::default()
                }
            );
            assert!(read_all(&std::fs::read(&p).unwrap()).is_empty());
            for cut in 0..hlen {
                let p = write_tmp(&dir, "t.avro.part", &bytes[..cut]);
                let r = recover_part(&p).unwrap();
                assert!(!r.header_ok, "{codec:?} cut {cut}");
                assert_eq!(r.truncated_bytes, 0);
                assert_eq!(std::fs::read(&p).unwrap(), &bytes[..cut]);
            }
        }
        let p = write_tmp(
            &dir,
            "n.avro.part",
            b"this is not an avro file at all, but long enough",
        );
        assert!(!recover_part(&p).unwrap().header_ok);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"this is not an avro file at all, but long enough"
        );
        // A codec we do not handle: left alone.
        let mut h = MAGIC.to_vec();
        put_long(&mut h, 2);
        put_bytes(&mut h, b"avro.schema");
        put_bytes(&mut h, b"\"long\"");
        put_bytes(&mut h, b"avro.codec");
        put_bytes(&mut h, b"bzip2");
        put_long(&mut h, 0);
        h.extend_from_slice(&[7; 16]);
        h.extend_from_slice(&[1, 2, 3]);
        let p = write_tmp(&dir, "b.avro.part", &h);
        assert!(!recover_part(&p).unwrap().header_ok);
        assert_eq!(std::fs::read(&p).unwrap(), h);
    }

    /// Deterministic xorshift for the no-panic tests.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn container_recover_never_panics_on_damage() {
        let dir = tempfile::tempdir().unwrap();
        let bl = blocks(&[3, 4, 5]);
        let mut st = 0x9e37_79b9_7f4a_7c15u64;
        for codec in ALL {
            let (bytes, _) = build(codec, &bl, &new_sync_marker());
            for _ in 0..150 {
                let mut f = bytes.clone();
                for _ in 0..1 + rng(&mut st) % 4 {
                    let i = (rng(&mut st) % f.len() as u64) as usize;
                    f[i] = rng(&mut st) as u8;
                }
                let cut = (rng(&mut st) % (f.len() as u64 + 1)) as usize;
                f.truncate(cut.max(f.len() / 2));
                let p = write_tmp(&dir, "z.avro.part", &f);
                let r = recover_part(&p).unwrap();
                let after = std::fs::read(&p).unwrap();
                assert_eq!(
                    after.len() as u64,
                    if r.header_ok {
                        r.valid_len
                    } else {
                        f.len() as u64
                    }
                );
                let _ = read_header(&mut &f[..]);
            }
        }
        for len in [0usize, 1, 5, 40, 1000] {
            let f: Vec<u8> = (0..len).map(|_| rng(&mut st) as u8).collect();
            let _ = read_header(&mut &f[..]);
            let mut g = MAGIC.to_vec();
            g.extend_from_slice(&f);
            let _ = read_header(&mut &g[..]);
            let p = write_tmp(&dir, "r.avro.part", &g);
            recover_part(&p).unwrap();
        }
    }

    #[test]
    fn container_block_encoder_reuse_matches_fresh() {
        let s = schema();
        let sync = new_sync_marker();
        for codec in ALL {
            let mut reused = BlockEncoder::new(codec);
            let mut warm = None;
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (k, n) in [1usize, 50, 2, 300, 0, 17, 300, 1].into_iter().enumerate() {
                let mut data = Vec::new();
                for i in 0..n {
                    data.extend(datum(&s, &record((k * 1000 + i) as i64)));
                }
                reused.encode_block(n as u64, &data, &sync, &mut a).unwrap();
                BlockEncoder::new(codec)
                    .encode_block(n as u64, &data, &sync, &mut b)
                    .unwrap();
                assert_eq!(a, b, "{codec:?} block {k}");
                // After the largest block, the scratch buffer is never reallocated.
                if k == 3 {
                    warm = Some((reused.scratch.as_ptr(), reused.scratch.capacity()));
                } else if k > 3 {
                    let now = (reused.scratch.as_ptr(), reused.scratch.capacity());
                    assert_eq!(Some(now), warm, "{codec:?} block {k}");
                }
            }
        }
    }

    #[test]
    fn container_zero_count_block() {
        let mut enc = BlockEncoder::new(Codec::Snappy);
        let mut out = Vec::new();
        enc.encode_block(0, &[], &[0; 16], &mut out).unwrap();
        assert!(out.is_empty());
        assert!(enc.encode_block(0, &[1], &[0; 16], &mut out).is_err());
    }

    #[test]
    fn container_codec_avro_names() {
        for c in ALL {
            assert_eq!(
                Codec::from_avro_name(c.avro_name()).map(|c| c.avro_name()),
                Some(c.avro_name())
            );
        }
        assert_eq!(Codec::from_avro_name("zstd"), None);
    }

    #[test]
    fn sync_markers_differ() {
        let syncs = (new_sync_marker(), new_sync_marker());
        assert_ne!(syncs.0, syncs.1);
    }
}
