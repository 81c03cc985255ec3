//! Shared pieces of the load generator and benchmarks.
//!
//! The central piece is a hand-written Avro binary encoder for the example
//! schema (`channels.d/example.avsc`, record `speeddata.example.Sample`), so
//! that senders can produce valid datagrams without an Avro library on the
//! hot path and without allocating per record:
//!
//! - [`ExampleRecord`]: one sample, borrowing its message text;
//! - [`encode_example`]: appends the record's Avro binary datum to a buffer;
//! - [`ExampleSource`]: produces successive records (counter, test signals,
//!   deterministic noise) for a given sender clock;
//! - [`put_long`], [`put_int`], [`put_double`], [`put_string`]: the Avro
//!   primitive encodings, reusable for other schemas.
//!
//! The throughput benchmarks use fixed-size records instead
//! (`benches/schemas/samples-{64,800,8k}.avsc`: `time`, `counter` and an
//! array of N doubles), selected by [`Size`]:
//!
//! - [`encode_samples`]: appends one such datum to a buffer;
//! - [`SamplesSource`]: produces successive records without allocating;
//! - [`samples_header`]: reads `time` and `counter` back from a datagram,
//!   which is what the benchmark receivers need for loss and latency.
//!
//! The modules hold the benchmark machinery: [`sockets`] (the loopback and
//! local-group sockets of `ceiling` and the harness's receiver, read and
//! written through `relay_channel::mmsg`, the batch layer the relay runs)
//! and [`harness`] (the `throughput` benchmark itself); [`lines`] types what
//! `ceiling` and `loadgen` print.

pub mod harness;
pub mod lines;
pub mod sockets;

use std::f64::consts::TAU;

/// One `speeddata.example.Sample` record.
///
/// Field order and types follow `channels.d/example.avsc`:
/// `time` (long, timestamp-micros), `message` (string), `counter` (int),
/// `sine_wave`, `ramp`, `square_wave`, `noise` (double).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExampleRecord<'a> {
    /// Sender clock, microseconds since the Unix epoch (UTC).
    pub time: i64,
    /// Free text from the sender.
    pub message: &'a str,
    /// Sample number, increasing by one per datagram.
    pub counter: i32,
    /// `sin(2π·f·t)` with f = [`SIGNAL_HZ`].
    pub sine_wave: f64,
    /// Sawtooth rising from 0 to 1 (fractional part of t in seconds·f).
    pub ramp: f64,
    /// +1 or -1, the sign of `sine_wave`.
    pub square_wave: f64,
    /// Uniform noise in [-1, 1).
    pub noise: f64,
}

/// Frequency of the generated test signals.
pub const SIGNAL_HZ: f64 = 1.0;

/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Encoded size of everything in an example record except the message text
/// itself: at most 10 bytes (time) + 10 (message length) + 5 (counter) +
/// 4 × 8 (doubles).
pub const EXAMPLE_OVERHEAD_MAX: usize = 10 + 10 + 5 + 4 * 8;

/// Appends the Avro zig-zag varint encoding of a `long`.
#[inline]
pub fn put_long(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends the Avro zig-zag varint encoding of an `int`.
///
/// For any `i32`, the 32-bit zig-zag value equals the 64-bit one, so this is
/// the `long` encoding of the widened value.
#[inline]
pub fn put_int(v: i32, out: &mut Vec<u8>) {
    put_long(i64::from(v), out);
}

/// Appends an Avro `double`: 8 bytes, little-endian IEEE 754.
#[inline]
pub fn put_double(v: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends an Avro `string`: byte length as a `long`, then the UTF-8 bytes.
#[inline]
pub fn put_string(s: &str, out: &mut Vec<u8>) {
    put_long(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the Avro binary datum of `rec` (no header, no framing) to `out`.
///
/// `out` is not cleared: callers that reuse one buffer per datagram call
/// `out.clear()` first. Once `out` has grown to the datum's size, encoding
/// does not allocate.
pub fn encode_example(rec: &ExampleRecord, out: &mut Vec<u8>) {
    out.reserve(EXAMPLE_OVERHEAD_MAX + rec.message.len());
    put_long(rec.time, out);
    put_string(rec.message, out);
    put_int(rec.counter, out);
    put_double(rec.sine_wave, out);
    put_double(rec.ramp, out);
    put_double(rec.square_wave, out);
    put_double(rec.noise, out);
}

/// The deterministic test signals at sender time `time_us` (µs since the
/// epoch): `(sine_wave, ramp, square_wave)` for a [`SIGNAL_HZ`] signal.
///
/// The phase is taken modulo one period before the sine, so the values stay
/// exact for large epoch times.
pub fn signals_at(time_us: i64) -> (f64, f64, f64) {
    // Phase in [0, 1): fractional part of t·f with t in seconds.
    let period_us = (1e6 / SIGNAL_HZ) as i64;
    let ramp = time_us.rem_euclid(period_us) as f64 / period_us as f64;
    let sine = (TAU * ramp).sin();
    let square = if sine >= 0.0 { 1.0 } else { -1.0 };
    (sine, ramp, square)
}

/// Marsaglia's xorshift64 generator: small, fast and deterministic.
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// Default seed used when none is given (any non-zero value works).
    pub const DEFAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator from `seed`; a zero seed (a fixed point of xorshift) is
    /// replaced by [`Self::DEFAULT_SEED`].
    pub fn new(seed: u64) -> Self {
        let state = if seed == 0 { Self::DEFAULT_SEED } else { seed };
        Self { state }
    }

    /// The next 64-bit value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A uniform value in [0, 1) with 53 random bits.
    #[inline]
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in [-1, 1).
    #[inline]
    pub fn next_signed_unit(&mut self) -> f64 {
        self.next_unit() * 2.0 - 1.0
    }
}

/// Produces successive example records: the counter increases by one
/// (wrapping at `i32::MAX`), the signals follow the given sender time, and
/// the noise comes from a seeded [`XorShift64`].
#[derive(Debug, Clone)]
pub struct ExampleSource {
    next_counter: i32,
    rng: XorShift64,
}

impl ExampleSource {
    /// A source whose first record carries `start_counter`.
    pub fn new(start_counter: i32, seed: u64) -> Self {
        Self {
            next_counter: start_counter,
            rng: XorShift64::new(seed),
        }
    }

    /// The counter the next record will carry.
    pub fn next_counter(&self) -> i32 {
        self.next_counter
    }

    /// The next record, stamped with `time_us` (µs since the epoch).
    pub fn next_record<'m>(&mut self, time_us: i64, message: &'m str) -> ExampleRecord<'m> {
        let counter = self.next_counter;
        self.next_counter = counter.wrapping_add(1);
        let (sine_wave, ramp, square_wave) = signals_at(time_us);
        ExampleRecord {
            time: time_us,
            message,
            counter,
            sine_wave,
            ramp,
            square_wave,
            noise: self.rng.next_signed_unit(),
        }
    }
}

/// Microseconds since the Unix epoch from the system clock (0 if the clock
/// reads before the epoch).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What `loadgen --size` sends: the example record, or a benchmark record
/// of a fixed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
pub enum Size {
    /// `channels.d/example.avsc` records (size depends on `--message`).
    #[value(name = "example")]
    #[serde(rename = "example")]
    Example,
    /// `samples-64.avsc`: 6 doubles, about 62 bytes.
    #[value(name = "64")]
    #[serde(rename = "64")]
    S64,
    /// `samples-800.avsc`: 99 doubles, about 806 bytes.
    #[value(name = "800")]
    #[serde(rename = "800")]
    S800,
    /// `samples-8k.avsc`: 1020 doubles, about 8,174 bytes.
    #[value(name = "8k")]
    #[serde(rename = "8k")]
    S8k,
}

impl Size {
    /// The benchmark sizes, smallest first.
    pub const SAMPLES: [Size; 3] = [Size::S64, Size::S800, Size::S8k];

    /// Number of doubles in `values` (`None` for the example record).
    pub fn values(self) -> Option<usize> {
        match self {
            Size::Example => None,
            Size::S64 => Some(6),
            Size::S800 => Some(99),
            Size::S8k => Some(1020),
        }
    }

    /// The name used on the command line and in reports.
    pub fn label(self) -> &'static str {
        match self {
            Size::Example => "example",
            Size::S64 => "64",
            Size::S800 => "800",
            Size::S8k => "8k",
        }
    }

    /// The schema text (`benches/schemas/samples-*.avsc`, or the example's).
    pub fn schema_text(self) -> &'static str {
        match self {
            Size::Example => include_str!("../../channels.d/example.avsc"),
            Size::S64 => include_str!("../schemas/samples-64.avsc"),
            Size::S800 => include_str!("../schemas/samples-800.avsc"),
            Size::S8k => include_str!("../schemas/samples-8k.avsc"),
        }
    }

    /// The schema's file name.
    pub fn schema_file(self) -> &'static str {
        match self {
            Size::Example => "example.avsc",
            Size::S64 => "samples-64.avsc",
            Size::S800 => "samples-800.avsc",
            Size::S8k => "samples-8k.avsc",
        }
    }

    /// Largest encoded datum of this size (for the example: without the
    /// message text).
    pub fn max_datum(self) -> usize {
        match self.values() {
            Some(n) => SAMPLES_OVERHEAD_MAX + 8 * n,
            None => EXAMPLE_OVERHEAD_MAX,
        }
    }

    /// Encoded size of a datum sent now with a small counter (what the
    /// reports use for byte rates).
    pub fn typical_datum(self) -> usize {
        let mut out = Vec::new();
        match self.values() {
            Some(n) => encode_samples(now_micros(), 1000, std::iter::repeat_n(0.0, n), &mut out),
            None => encode_example(
                &ExampleSource::new(1000, 1).next_record(now_micros(), "speeddata"),
                &mut out,
            ),
        }
        out.len()
    }
}

/// Encoded size of a samples record except its doubles: at most 10 bytes
/// (time) + 5 (counter) + 10 (item count) + 1 (end of array).
pub const SAMPLES_OVERHEAD_MAX: usize = 10 + 5 + 10 + 1;

/// Appends the Avro binary datum of a samples record (`time`, `counter`,
/// `values`) to `out`.
///
/// `values` must yield exactly `values.len()` items (the array is written as
/// one block of that many items, then the end marker). `out` is not
/// cleared; once it has grown to the datum's size, encoding does not
/// allocate.
pub fn encode_samples<I>(time: i64, counter: i32, values: I, out: &mut Vec<u8>)
where
    I: ExactSizeIterator<Item = f64>,
{
    let n = values.len();
    out.reserve(SAMPLES_OVERHEAD_MAX + 8 * n);
    put_long(time, out);
    put_int(counter, out);
    if n > 0 {
        put_long(n as i64, out);
        // Filling a zeroed run of the final length is much faster than
        // growing the vector eight bytes at a time.
        let start = out.len();
        out.resize(start + 8 * n, 0);
        let mut written = 0;
        for (slot, v) in out[start..].chunks_exact_mut(8).zip(values) {
            slot.copy_from_slice(&v.to_le_bytes());
            written += 1;
        }
        assert_eq!(written, n, "iterator yielded fewer items than its len()");
    }
    put_long(0, out);
}

/// Reads an Avro zig-zag varint `long` from the start of `buf`: the value
/// and the number of bytes it took, or `None` if `buf` ends first or the
/// varint is longer than 10 bytes.
#[inline]
pub fn read_long(buf: &[u8]) -> Option<(i64, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let v = ((n >> 1) as i64) ^ -((n & 1) as i64);
            return Some((v, i + 1));
        }
    }
    None
}

/// `time` (µs since the epoch) and `counter` of a samples datagram: the
/// first two fields, read without decoding the rest.
#[inline]
pub fn samples_header(datagram: &[u8]) -> Option<(i64, i32)> {
    let (time, a) = read_long(datagram)?;
    let (counter, _) = read_long(&datagram[a..])?;
    let counter = i32::try_from(counter).ok()?;
    Some((time, counter))
}

/// Produces successive samples records of a fixed number of values: the
/// counter increases by one per record (wrapping at `i32::MAX`), value `i`
/// is a 16-bit quantised sine (phase advancing with the counter, a
/// different phase per signal) plus -8..=7 counts of xorshift noise, so the
/// data compress like real ADC readings rather than like random bits.
#[derive(Debug, Clone)]
pub struct SamplesSource {
    n: usize,
    next_counter: i32,
    rng: XorShift64,
    table: [i16; 256],
}

impl SamplesSource {
    /// A source of records with `n` values whose first record carries
    /// `start_counter`.
    pub fn new(n: usize, start_counter: i32, seed: u64) -> Self {
        let mut table = [0i16; 256];
        for (k, t) in table.iter_mut().enumerate() {
            *t = ((TAU * k as f64 / 256.0).sin() * 30_000.0).round() as i16;
        }
        Self {
            n,
            next_counter: start_counter,
            rng: XorShift64::new(seed),
            table,
        }
    }

    /// Number of values per record.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether records carry no values.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The counter the next record will carry.
    pub fn next_counter(&self) -> i32 {
        self.next_counter
    }

    /// Appends the next record, stamped with `time_us`, to `out`; returns
    /// its counter.
    pub fn encode_next(&mut self, time_us: i64, out: &mut Vec<u8>) -> i32 {
        let counter = self.next_counter;
        self.next_counter = counter.wrapping_add(1);
        let phase = counter as u32 as usize;
        let table = &self.table;
        let rng = &mut self.rng;
        // Four bits of noise per value: one xorshift step serves 16 values.
        let mut bits = 0u64;
        let values = (0..self.n).map(move |i| {
            if i % 16 == 0 {
                bits = rng.next_u64();
            }
            let noise = (bits & 15) as i32 - 8;
            bits >>= 4;
            let q = i32::from(table[phase.wrapping_add(i.wrapping_mul(37)) & 255]) + noise;
            f64::from(q) * (1.0 / 32_768.0)
        });
        encode_samples(time_us, counter, values, out);
        counter
    }
}

static STOP: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

/// Makes SIGINT and SIGTERM set the flag [`stop_requested`] reads, so a
/// bench program stops by itself at its next check (and still reports).
pub fn install_stop_signals() {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, STOP.clone()) {
            eprintln!("cannot handle signal {sig}: {e}");
        }
    }
}

/// Whether SIGINT or SIGTERM has arrived since [`install_stop_signals`].
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;

    fn example_schema() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../channels.d/example.avsc");
        let text = std::fs::read_to_string(path).expect("read example.avsc");
        Schema::parse_str(&text).expect("parse example.avsc")
    }

    fn to_value(rec: &ExampleRecord) -> Value {
        Value::Record(vec![
            ("time".into(), Value::TimestampMicros(rec.time)),
            ("message".into(), Value::String(rec.message.into())),
            ("counter".into(), Value::Int(rec.counter)),
            ("sine_wave".into(), Value::Double(rec.sine_wave)),
            ("ramp".into(), Value::Double(rec.ramp)),
            ("square_wave".into(), Value::Double(rec.square_wave)),
            ("noise".into(), Value::Double(rec.noise)),
        ])
    }

    fn hand(rec: &ExampleRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode_example(rec, &mut out);
        out
    }

    #[test]
    fn hand_encoding_matches_apache_avro() {
        let schema = example_schema();
        let long_message = "x".repeat(300);
        let messages = ["speeddata", "", "grüße, 温度 ✓", long_message.as_str()];
        let mut source = ExampleSource::new(-3, 42);
        let mut records = Vec::new();
        for (i, msg) in messages.iter().enumerate() {
            let t = 1_763_847_000_123_456 + i as i64 * 250_000;
            records.push(source.next_record(t, msg));
        }
        // Edge values of every field type.
        records.push(ExampleRecord {
            time: i64::MIN,
            message: "min",
            counter: i32::MIN,
            sine_wave: -0.0,
            ramp: f64::MIN_POSITIVE,
            square_wave: -1.0,
            noise: f64::NEG_INFINITY,
        });
        records.push(ExampleRecord {
            time: i64::MAX,
            message: "max",
            counter: i32::MAX,
            sine_wave: f64::MAX,
            ramp: 0.999_999,
            square_wave: 1.0,
            noise: f64::INFINITY,
        });
        records.push(ExampleRecord {
            time: 0,
            message: "zero",
            counter: 0,
            sine_wave: 0.0,
            ramp: 0.0,
            square_wave: 1.0,
            noise: -1.0,
        });
        // `GenericDatumWriter` is what `apache_avro::to_avro_datum` (deprecated
        // in 0.22) does: validate against the schema, then encode.
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        for rec in &records {
            let expected = writer.write_value_to_vec(to_value(rec)).expect("encode");
            assert_eq!(hand(rec), expected, "record {rec:?}");
        }
    }

    #[test]
    fn decodes_back_with_apache_avro() {
        let schema = example_schema();
        let mut source = ExampleSource::new(7, 1);
        let rec = source.next_record(1_700_000_000_250_000, "speeddata");
        let bytes = hand(&rec);
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        let mut input = bytes.as_slice();
        let value = reader.read_value(&mut input).expect("decode");
        assert!(input.is_empty(), "whole datum consumed");
        assert_eq!(value, to_value(&rec));
    }

    #[test]
    fn encoding_appends_and_reuses_buffer() {
        let rec = ExampleSource::new(0, 0).next_record(1, "abc");
        let mut buf = Vec::new();
        encode_example(&rec, &mut buf);
        let one = buf.clone();
        encode_example(&rec, &mut buf);
        assert_eq!(buf.len(), 2 * one.len());
        buf.clear();
        let cap = buf.capacity();
        let ptr = buf.as_ptr();
        encode_example(&rec, &mut buf);
        assert_eq!(buf, one);
        assert_eq!(
            (buf.capacity(), buf.as_ptr()),
            (cap, ptr),
            "no reallocation"
        );
    }

    #[test]
    fn signals_and_counter() {
        let mut source = ExampleSource::new(i32::MAX - 1, 9);
        let a = source.next_record(5_250_000, "m");
        let b = source.next_record(5_750_000, "m");
        let c = source.next_record(6_000_000, "m");
        assert_eq!(
            (a.counter, b.counter, c.counter),
            (i32::MAX - 1, i32::MAX, i32::MIN)
        );
        assert!((a.ramp - 0.25).abs() < 1e-12 && (a.sine_wave - 1.0).abs() < 1e-12);
        assert_eq!(a.square_wave, 1.0);
        assert!((b.ramp - 0.75).abs() < 1e-12 && (b.sine_wave + 1.0).abs() < 1e-12);
        assert_eq!(b.square_wave, -1.0);
        assert_eq!(c.ramp, 0.0);
        assert_eq!(
            signals_at(-250_000).1,
            0.75,
            "negative times wrap into [0, 1)"
        );
    }

    #[test]
    fn noise_is_deterministic_and_in_range() {
        let mut a = XorShift64::new(123);
        let mut b = XorShift64::new(123);
        let mut sum = 0.0;
        for _ in 0..100_000 {
            let x = a.next_signed_unit();
            assert_eq!(x, b.next_signed_unit());
            assert!((-1.0..1.0).contains(&x));
            sum += x;
        }
        assert!((sum / 100_000.0).abs() < 0.02, "mean near zero");
        assert_ne!(XorShift64::new(0).next_u64(), 0, "zero seed replaced");
    }

    #[test]
    fn varint_lengths() {
        let mut out = Vec::new();
        put_long(-1, &mut out);
        assert_eq!(out, [0x01]);
        out.clear();
        put_long(64, &mut out);
        assert_eq!(out, [0x80, 0x01]);
        out.clear();
        put_long(i64::MIN, &mut out);
        assert_eq!(out.len(), 10);
        out.clear();
        put_int(i32::MIN, &mut out);
        assert_eq!(out, [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    }

    fn samples_schema(size: Size) -> Schema {
        Schema::parse_str(size.schema_text()).expect("parse samples schema")
    }

    fn samples_value(time: i64, counter: i32, values: &[f64]) -> Value {
        Value::Record(vec![
            ("time".into(), Value::TimestampMicros(time)),
            ("counter".into(), Value::Int(counter)),
            (
                "values".into(),
                Value::Array(values.iter().map(|v| Value::Double(*v)).collect()),
            ),
        ])
    }

    #[test]
    fn samples_encoding_matches_apache_avro() {
        let edge = [
            0.0,
            -0.0,
            1.5,
            -1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for size in Size::SAMPLES {
            let schema = samples_schema(size);
            let writer = GenericDatumWriter::builder(&schema)
                .build()
                .expect("writer");
            let n = size.values().unwrap();
            let mut cases: Vec<(i64, i32, Vec<f64>)> = vec![
                (1_763_847_000_123_456, 0, vec![0.25; n]),
                (
                    i64::MIN,
                    i32::MIN,
                    edge.iter().copied().cycle().take(n).collect(),
                ),
                (
                    i64::MAX,
                    i32::MAX,
                    (0..n).map(|i| i as f64 * 1e-3).collect(),
                ),
                (0, -1, Vec::new()),
                (-5, 64, vec![2.0]),
            ];
            // What the source produces, with its own values read back.
            let mut source = SamplesSource::new(n, 41, 7);
            let mut buf = Vec::new();
            let c = source.encode_next(1_700_000_000_000_001, &mut buf);
            let reader = GenericDatumReader::builder(&schema)
                .build()
                .expect("reader");
            let mut input = buf.as_slice();
            let Value::Record(fields) = reader.read_value(&mut input).expect("decode") else {
                panic!("not a record");
            };
            assert!(input.is_empty(), "whole datum consumed");
            let Value::Array(items) = &fields[2].1 else {
                panic!("values is not an array")
            };
            assert_eq!(items.len(), n);
            let vals: Vec<f64> = items
                .iter()
                .map(|v| match v {
                    Value::Double(d) => *d,
                    other => panic!("not a double: {other:?}"),
                })
                .collect();
            assert!(vals.iter().all(|v| v.abs() < 1.0));
            assert_eq!(fields[0].1, Value::TimestampMicros(1_700_000_000_000_001));
            assert_eq!((c, &fields[1].1), (41, &Value::Int(41)));
            cases.push((1_700_000_000_000_001, 41, vals));
            for (time, counter, values) in &cases {
                let expected = writer
                    .write_value_to_vec(samples_value(*time, *counter, values))
                    .expect("encode");
                let mut hand = Vec::new();
                encode_samples(*time, *counter, values.iter().copied(), &mut hand);
                assert_eq!(hand, expected, "{size:?} time {time} counter {counter}");
                assert_eq!(samples_header(&hand), Some((*time, *counter)));
            }
            assert_eq!(buf, {
                let mut again = Vec::new();
                encode_samples(
                    1_700_000_000_000_001,
                    41,
                    cases.last().unwrap().2.iter().copied(),
                    &mut again,
                );
                again
            });
        }
    }

    #[test]
    fn samples_sizes_are_as_advertised() {
        let now = now_micros();
        for (size, lo, hi) in [
            (Size::S64, 56, 64),
            (Size::S800, 800, 812),
            (Size::S8k, 8_150, 8_192),
        ] {
            let n = size.values().unwrap();
            let mut source = SamplesSource::new(n, 0, 1);
            let mut buf = Vec::new();
            source.encode_next(now, &mut buf);
            assert!(
                (lo..=hi).contains(&buf.len()),
                "{size:?}: {} bytes",
                buf.len()
            );
            assert!(buf.len() <= size.max_datum());
            let cap = buf.capacity();
            let ptr = buf.as_ptr();
            for _ in 0..10 {
                buf.clear();
                source.encode_next(now, &mut buf);
            }
            assert_eq!(
                (buf.capacity(), buf.as_ptr()),
                (cap, ptr),
                "no reallocation"
            );
            assert!(buf.len() <= size.max_datum());
        }
    }

    #[test]
    fn read_long_round_trips() {
        for v in [0, 1, -1, 63, -64, 64, 1 << 40, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_long(v, &mut out);
            assert_eq!(read_long(&out), Some((v, out.len())));
            assert_eq!(read_long(&out[..out.len() - 1]), None);
        }
        assert_eq!(read_long(&[0x80; 11]), None);
    }
}
