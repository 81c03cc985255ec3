//! The compression pool (`archive.compress_threads` above 1): blocks are
//! compressed on several threads at once and written by the archive thread
//! in the order they were made.
//!
//! With one compress thread (the default on small machines) there is no
//! pool: the archive thread compresses each block itself, between taking
//! batches, and writes it straight from the batch (see
//! [`super::writer`]). With a pool it copies each block's records into a
//! job, hands the job to the pool, and writes the blocks as they come
//! back, in order: at most [`IN_FLIGHT_PER_THREAD`] jobs per thread are
//! out at once, so memory stays bounded and a slow disk holds the archive
//! thread back, and with it the queue the adaptive level watches.
//!
//! A block's sync marker is the file's, and which file a block goes to is
//! known only when it is written: the pool encodes each block with a
//! placeholder marker, which the archive thread overwrites when it writes.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::block::BlockMeta;
use crate::config::Codec;
use crate::container::BlockEncoder;

/// Jobs out per compress thread: one being compressed, one waiting.
pub(super) const IN_FLIGHT_PER_THREAD: usize = 2;

/// The length of the sync marker at the end of every encoded block.
pub(super) const SYNC_LEN: usize = 16;

/// How many threads compress a channel's blocks when
/// `archive.compress_threads` is not set: one (the archive thread itself)
/// unless the machine has cores to spare beyond every channel's receive
/// and archive threads, which are then shared among the channels, up to 4
/// per channel. Codecs that do not compress always get one.
pub(super) fn compress_threads(cores: usize, channels: usize, codec: &Codec) -> usize {
    if matches!(codec, Codec::Null) {
        return 1;
    }
    let channels = channels.max(1);
    let spare = cores.saturating_sub(2 * channels);
    (1 + spare / channels).min(4)
}

/// The CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub(super) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One block to compress.
struct Job {
    seq: u64,
    count: u64,
    /// The block's records, back to back.
    data: Vec<u8>,
    /// Where the block goes (empty; reused from block to block).
    out: Vec<u8>,
    /// With zstd, the level (`None`: stored).
    level: Option<i32>,
}

/// One block compressed.
pub(super) struct Done {
    seq: u64,
    /// Whether the block could be encoded, and why not.
    pub(super) result: io::Result<()>,
    /// The whole block, ending with a placeholder sync marker.
    pub(super) block: Vec<u8>,
    /// The compress thread's CPU time for it.
    pub(super) cpu: Duration,
    /// The job's records buffer, for the next job.
    data: Vec<u8>,
}

/// Compress threads, and the jobs out with them.
pub(super) struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    next_seq: u64,
    /// The next block to write.
    next_out: u64,
    /// Blocks compressed, waiting for the ones before them.
    ready: BTreeMap<u64, Done>,
    /// Records and block buffers to reuse: steady work does not allocate
    /// (a fresh large buffer is fresh pages, faulted in one by one).
    free: Vec<(Vec<u8>, Vec<u8>)>,
    max_in_flight: usize,
}

impl Pool {
    /// Starts `threads` compress threads for `codec`, named after `channel`.
    pub(super) fn start(threads: usize, codec: Codec, channel: &str) -> io::Result<Pool> {
        let max_in_flight = threads * IN_FLIGHT_PER_THREAD;
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(max_in_flight);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(max_in_flight);
        let mut pool = Pool {
            jobs: Some(jobs_tx),
            done: done_rx,
            threads: Vec::with_capacity(threads),
            next_seq: 0,
            next_out: 0,
            ready: BTreeMap::new(),
            free: Vec::new(),
            max_in_flight,
        };
        for i in 0..threads {
            let (jobs, done) = (jobs_rx.clone(), done_tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || compress_loop(codec, &jobs, &done))
                .map_err(|e| {
                    io::Error::other(format!("{channel}: cannot start compress thread: {e}"))
                })?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// How many blocks are out (sent, not yet handed back by
    /// [`next`](Self::next)).
    pub(super) fn in_flight(&self) -> usize {
        (self.next_seq - self.next_out) as usize
    }

    /// Whether another job may be sent without waiting.
    pub(super) fn has_room(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    /// Sends `count` records, `data`, to be compressed at `level`. The
    /// caller makes room first ([`has_room`](Self::has_room)), or this
    /// waits for a compress thread to take a job.
    pub(super) fn send(&mut self, count: u64, data: &[u8], level: Option<i32>) {
        let (mut buf, mut out) = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        out.clear();
        let job = Job {
            seq: self.next_seq,
            count,
            data: buf,
            out,
            level,
        };
        self.next_seq += 1;
        let jobs = self.jobs.as_ref().expect("the pool is running");
        if let Err(e) = jobs.send(job) {
            // Every compress thread is gone (it cannot be: they catch
            // panics); the block comes back as an error, counted by the
            // archive as lost.
            let job = e.into_inner();
            self.ready.insert(
                job.seq,
                Done {
                    seq: job.seq,
                    result: Err(io::Error::other("the compress threads are gone")),
                    block: job.out,
                    cpu: Duration::ZERO,
                    data: job.data,
                },
            );
        }
    }

    /// The next block in order: `wait` for it if it is not back yet, or
    /// `None` at once. `None` too when nothing is out.
    pub(super) fn next(&mut self, wait: bool) -> Option<Done> {
        if self.in_flight() == 0 {
            return None;
        }
        loop {
            if let Some(d) = self.ready.remove(&self.next_out) {
                self.next_out += 1;
                return Some(d);
            }
            let d = if wait {
                self.done.recv().ok()
            } else {
                self.done.try_recv().ok()
            };
            match d {
                Some(d) => {
                    self.ready.insert(d.seq, d);
                }
                None if wait => {
                    // Cannot happen while the pool holds a sender of its
                    // own threads' results... but never wait forever.
                    let seq = self.next_out;
                    self.next_out += 1;
                    return Some(Done {
                        seq,
                        result: Err(io::Error::other("the compress threads are gone")),
                        block: Vec::new(),
                        cpu: Duration::ZERO,
                        data: Vec::new(),
                    });
                }
                None => return None,
            }
        }
    }

    /// Takes back a block's buffers, for the next job.
    pub(super) fn recycle(&mut self, done: Done) {
        if self.free.len() < self.max_in_flight {
            self.free.push((done.data, done.block));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The archive thread's side of the pool: the pool, if the channel has
/// one, and what the archive knows of each block out with it, in order.
pub(super) struct PoolQueue {
    pool: Option<Pool>,
    in_flight: VecDeque<BlockMeta>,
}

impl PoolQueue {
    pub(super) fn new(pool: Option<Pool>) -> PoolQueue {
        PoolQueue {
            pool,
            in_flight: VecDeque::new(),
        }
    }

    /// Whether blocks are compressed on the pool's threads.
    #[inline]
    pub(super) fn enabled(&self) -> bool {
        self.pool.is_some()
    }

    /// Whether no block is out with the pool.
    #[inline]
    pub(super) fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Whether another block must wait for one to come back.
    #[inline]
    pub(super) fn full(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| !p.has_room())
    }

    /// The oldest block out with the pool.
    #[inline]
    pub(super) fn oldest(&self) -> Option<&BlockMeta> {
        self.in_flight.front()
    }

    /// Hands the block `meta` tells of, `data` its records, to the pool to
    /// be compressed at `level`.
    pub(super) fn send(&mut self, meta: BlockMeta, data: &[u8], level: Option<i32>) {
        if let Some(p) = &mut self.pool {
            p.send(meta.count, data, level);
            self.in_flight.push_back(meta);
        }
    }

    /// The next block compressed, in order, waiting for it if `wait`;
    /// `None` when there is none (or none back yet).
    pub(super) fn next(&mut self, wait: bool) -> Option<(BlockMeta, Done)> {
        let done = self.pool.as_mut().and_then(|p| p.next(wait))?;
        let meta = self
            .in_flight
            .pop_front()
            .expect("the archive keeps each block out with the pool");
        Some((meta, done))
    }

    /// Gives a block written back to the pool, for its buffers.
    pub(super) fn recycle(&mut self, done: Done) {
        if let Some(p) = &mut self.pool {
            p.recycle(done);
        }
    }
}

/// A compress thread: encodes jobs until the pool hangs up.
fn compress_loop(codec: Codec, jobs: &Receiver<Job>, done: &Sender<Done>) {
    let mut encoder = BlockEncoder::new(codec);
    let placeholder = [0u8; SYNC_LEN];
    while let Ok(mut job) = jobs.recv() {
        let c0 = thread_cpu_time();
        let result = catch_unwind(AssertUnwindSafe(|| {
            encoder.set_zstd(job.level)?;
            encoder.encode_block(job.count, &job.data, &placeholder, &mut job.out)
        }));
        let result = result.unwrap_or_else(|_| {
            // A fresh encoder: the old one may be half-way through.
            encoder = BlockEncoder::new(codec);
            Err(io::Error::other("compressing the block panicked"))
        });
        let d = Done {
            seq: job.seq,
            result,
            block: job.out,
            cpu: thread_cpu_time().saturating_sub(c0),
            data: job.data,
        };
        if done.send(d).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_decided_from_cores_and_channels() {
        let zstd = Codec::Zstd { level: 1 };
        // A Pi or this 2-core box: one (the archive thread).
        assert_eq!(compress_threads(1, 1, &zstd), 1);
        assert_eq!(compress_threads(2, 1, &zstd), 1);
        assert_eq!(compress_threads(4, 2, &zstd), 1);
        // Cores to spare: shared among the channels, at most 4 each.
        assert_eq!(compress_threads(4, 1, &zstd), 3);
        assert_eq!(compress_threads(64, 1, &zstd), 4);
        assert_eq!(compress_threads(16, 4, &zstd), 3);
        assert_eq!(compress_threads(16, 8, &zstd), 1);
        // Nothing to compress: one.
        assert_eq!(compress_threads(64, 1, &Codec::Null), 1);
        assert_eq!(compress_threads(8, 0, &zstd), 4);
    }

    /// Blocks come back in the order they were sent, whatever thread
    /// finished first, and decode to the records sent.
    #[test]
    fn blocks_come_back_in_order() {
        let mut pool = Pool::start(3, Codec::Zstd { level: 3 }, "t").unwrap();
        let mut got = Vec::new();
        for i in 0..50u64 {
            if !pool.has_room() {
                got.push(pool.next(true).unwrap());
            }
            // Blocks of very different sizes, so threads finish out of order.
            let n = if i % 3 == 0 { 200_000 } else { 10 };
            let data = vec![2 * (i % 60) as u8; n as usize];
            pool.send(n, &data, if i % 5 == 0 { None } else { Some(3) });
            while let Some(d) = pool.next(false) {
                got.push(d);
            }
        }
        while let Some(d) = pool.next(true) {
            got.push(d);
        }
        assert_eq!(got.len(), 50);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.seq, i as u64);
            d.result.as_ref().unwrap();
            let block = &d.block;
            // A whole file: header, the block, read back with apache-avro.
            let sync = [7u8; SYNC_LEN];
            let mut file = Vec::new();
            crate::container::encode_header(
                r#""int""#,
                &Codec::Zstd { level: 3 },
                &sync,
                &mut file,
            );
            file.extend_from_slice(&block[..block.len() - SYNC_LEN]);
            file.extend_from_slice(&sync);
            let values: Vec<_> = apache_avro::Reader::new(&file[..])
                .unwrap()
                .map(|v| v.unwrap())
                .collect();
            let n = if i % 3 == 0 { 200_000 } else { 10 };
            assert_eq!(values.len(), n, "block {i}");
            assert_eq!(
                values[0],
                apache_avro::types::Value::Int((i % 60) as i32),
                "block {i}"
            );
        }
    }
}
