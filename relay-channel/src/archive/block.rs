//! The open block: the records the archive gathers until they go out as
//! one block, and what the archive knows of a block besides its records.

use std::time::{Instant, SystemTime};

/// What the archive knows of a block besides its records.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockMeta {
    pub(super) count: u64,
    /// The arrival time of its first record: a file it starts is named
    /// after it.
    pub(super) first_arrival: Option<SystemTime>,
    /// The arrival time of its last record.
    pub(super) last_arrival: Option<SystemTime>,
    /// The least and greatest record time (`archive.time_field`) in it:
    /// `(i64::MAX, i64::MIN)` without one.
    pub(super) times: (i64, i64),
    /// When its first record was taken: a file it starts closes
    /// `rotate_interval` later.
    pub(super) started: Option<Instant>,
    /// Its records' bytes.
    pub(super) bytes: u64,
}

/// No record time yet: any time is less than the first and greater than
/// the second.
pub(super) const NO_TIMES: (i64, i64) = (i64::MAX, i64::MIN);

/// The records gathered for the next block.
pub(super) struct OpenBlock {
    /// Its records, back to back.
    data: Vec<u8>,
    records: u64,
    /// When its first record was taken: it is written `flush_interval`
    /// later.
    started: Option<Instant>,
    /// The arrival time of its first record.
    first_arrival: Option<SystemTime>,
    /// The arrival time of its last record.
    last_arrival: Option<SystemTime>,
    /// The least and greatest record time in it.
    times: (i64, i64),
}

impl OpenBlock {
    pub(super) fn with_capacity(bytes: usize) -> OpenBlock {
        OpenBlock {
            data: Vec::with_capacity(bytes),
            records: 0,
            started: None,
            first_arrival: None,
            last_arrival: None,
            times: NO_TIMES,
        }
    }

    /// Bytes of the records it holds.
    #[inline]
    pub(super) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// How many records it holds.
    #[inline]
    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// When its first record was taken; `None` while it is empty.
    #[inline]
    pub(super) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The block, empty, now holds `records` records, the first of which
    /// arrived at `first` and the last at `last`, with record times within
    /// `times`: records written from elsewhere, or added with
    /// [`extend`](Self::extend).
    pub(super) fn start(
        &mut self,
        records: u64,
        (first, last): (Option<SystemTime>, Option<SystemTime>),
        times: (i64, i64),
    ) {
        self.records = records;
        self.first_arrival = Some(first.unwrap_or_else(SystemTime::now));
        self.last_arrival = last.or(self.first_arrival);
        self.times = times;
        self.started = Some(Instant::now());
    }

    /// Appends the bytes of the records [`start`](Self::start) counted.
    pub(super) fn extend(&mut self, records: &[u8]) {
        self.data.extend_from_slice(records);
    }

    /// Adds one record, which arrived at `arrived`, of record time `time`.
    #[inline]
    pub(super) fn push(&mut self, record: &[u8], arrived: Option<SystemTime>, time: Option<i64>) {
        if self.records == 0 {
            self.first_arrival = Some(arrived.unwrap_or_else(SystemTime::now));
            self.times = NO_TIMES;
        }
        if arrived.is_some() {
            self.last_arrival = arrived;
        }
        if let Some(t) = time {
            self.times = (self.times.0.min(t), self.times.1.max(t));
        }
        self.data.extend_from_slice(record);
        self.records += 1;
        self.started.get_or_insert_with(Instant::now);
    }

    /// What is known of the block, whose records are `bytes` long, as it
    /// goes out; the block counts no records from now on (its bytes, if
    /// they are its own, go with [`take_data`](Self::take_data)).
    #[inline]
    pub(super) fn take_meta(&mut self, bytes: usize) -> BlockMeta {
        let meta = BlockMeta {
            count: self.records,
            first_arrival: self.first_arrival.take(),
            last_arrival: self.last_arrival.take(),
            times: std::mem::replace(&mut self.times, NO_TIMES),
            started: self.started.take(),
            bytes: bytes as u64,
        };
        self.records = 0;
        meta
    }

    /// The records' bytes, taken out to be written; the buffer comes back
    /// with [`put_back`](Self::put_back).
    #[inline]
    pub(super) fn take_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }

    /// Gives the buffer [`take_data`](Self::take_data) took back, emptied.
    #[inline]
    pub(super) fn put_back(&mut self, data: Vec<u8>) {
        self.data = data;
        self.data.clear();
    }
}
