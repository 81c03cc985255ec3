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
    /// When its first record was taken: a file it starts closes
    /// `rotate_interval` later.
    pub(super) started: Option<Instant>,
    /// Its records' bytes.
    pub(super) bytes: u64,
}

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
}

impl OpenBlock {
    pub(super) fn with_capacity(bytes: usize) -> OpenBlock {
        OpenBlock {
            data: Vec::with_capacity(bytes),
            records: 0,
            started: None,
            first_arrival: None,
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
    /// arrived at `first`: records written from elsewhere, or added with
    /// [`extend`](Self::extend).
    pub(super) fn start(&mut self, records: u64, first: Option<SystemTime>) {
        self.records = records;
        self.first_arrival = Some(first.unwrap_or_else(SystemTime::now));
        self.started = Some(Instant::now());
    }

    /// Appends the bytes of the records [`start`](Self::start) counted.
    pub(super) fn extend(&mut self, records: &[u8]) {
        self.data.extend_from_slice(records);
    }

    /// Adds one record, which arrived at `arrived`.
    #[inline]
    pub(super) fn push(&mut self, record: &[u8], arrived: Option<SystemTime>) {
        if self.records == 0 {
            self.first_arrival = Some(arrived.unwrap_or_else(SystemTime::now));
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
