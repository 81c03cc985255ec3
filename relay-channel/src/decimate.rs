//! Schema-aware decimation for the decimated output: windows of valid records
//! (N records, or 1/R seconds of arrival time) folded into records of the
//! channel's own schema, so one schema decodes both outputs.
//!
//! - `downsample`: one record of each window, as it came (the last of N, or
//!   the first of a time window, forwarded on arrival);
//! - `average`, `rms`: one record per window, each numeric field the mean
//!   (or root mean square) of its values;
//! - `minmax`: two records per window, the per-field minimum then maximum.
//!
//! Numeric fields are `int`, `long`, `float` and `double` at any depth of
//! nested records, unions of `null` and one of them (aggregated over the
//! non-null values), and arrays of them (element-wise while every array of
//! the window has one length). Every other field, and the fields named in
//! `keep_last`, takes the window's last value, copied byte for byte; so do
//! logical types (a display must see real time stamps).
//!
//! The schema is compiled once (module `compile`) into a flat list of
//! [`Step`]s. Per record, the numeric leaves are decoded into a scratch list
//! and committed to the window's accumulators only if the whole datum
//! decoded (with validation off a datagram may be anything); the last record
//! is kept as bytes. At the end of a window its records are encoded once,
//! walking the last record's bytes. Nothing is allocated per record once the
//! buffers have grown.

use std::time::{Duration, Instant};

use crate::avro_leaf;
use crate::config::{Algorithm, DecimationWindow};
use crate::varint::{put_long, read_long};

use apache_avro::schema::Schema;

mod compile;

/// Deepest nesting followed when skipping a value.
const MAX_DEPTH: u32 = 128;

/// How records are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// N consecutive valid records.
    Records(u64),
    /// Windows of this much arrival time, on a grid from the first record.
    Every(Duration),
}

impl From<DecimationWindow> for Window {
    fn from(w: DecimationWindow) -> Window {
        match w {
            DecimationWindow::Records(n) => Window::Records(u64::from(n.max(1))),
            DecimationWindow::PerSecond(hz) => Window::Every(Duration::from_secs_f64(1.0 / hz)),
        }
    }
}

/// A numeric leaf's Avro type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Int,
    Long,
    Float,
    Double,
}

impl Num {
    fn of(schema: &Schema) -> Option<Num> {
        match schema {
            Schema::Int => Some(Num::Int),
            Schema::Long => Some(Num::Long),
            Schema::Float => Some(Num::Float),
            Schema::Double => Some(Num::Double),
            _ => None,
        }
    }
}

/// One part of a record, in encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A number, aggregated in accumulator `acc`.
    Num { num: Num, acc: u32 },
    /// A union of null and a number; `number` is the number's branch.
    OptNum { num: Num, acc: u32, number: u8 },
    /// An array of numbers, aggregated element-wise in `arrays[array]`.
    Array { num: Num, array: u32 },
    /// Anything else: the last record's value, found with skip node `skip`.
    Last { skip: u32 },
}

/// How to find the end of a value (for values copied as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Skip {
    Fixed(usize),
    Varint,
    Bytes,
    Union(Vec<u32>),
    Array(u32),
    Map(u32),
    Record(Vec<u32>),
}

impl From<avro_leaf::Leaf> for Skip {
    fn from(leaf: avro_leaf::Leaf) -> Skip {
        match leaf {
            avro_leaf::Leaf::Fixed(n) => Skip::Fixed(n),
            avro_leaf::Leaf::Varint => Skip::Varint,
            avro_leaf::Leaf::Bytes => Skip::Bytes,
        }
    }
}

/// Sums with Neumaier's compensation: accurate over long windows.
#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    s: f64,
    c: f64,
}

impl Sum {
    #[inline(always)]
    fn add(&mut self, x: f64) {
        let t = self.s + x;
        // Past an overflow the sum is infinite and stays so, as IEEE says.
        if t.is_finite() {
            if self.s.abs() >= x.abs() {
                self.c += (self.s - t) + x;
            } else {
                self.c += (x - t) + self.s;
            }
        }
        self.s = t;
    }

    fn total(&self) -> f64 {
        self.s + self.c
    }
}

/// What a window keeps of each value: only what its algorithm sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Sum,
    Squares,
    Extremes,
}

/// One numeric field's window.
#[derive(Debug, Clone, Copy)]
struct Acc {
    /// Values added (non-null ones, for unions).
    n: u64,
    /// Finite values of floating fields.
    sum: Sum,
    /// Squares of finite values.
    squares: Sum,
    /// Integer fields: exact sum and sum of squares (`None` past u128).
    int_sum: i128,
    int_squares: Option<u128>,
    min: f64,
    max: f64,
    int_min: i64,
    int_max: i64,
    nan: bool,
    plus_inf: bool,
    minus_inf: bool,
}

impl Acc {
    const EMPTY: Acc = Acc {
        n: 0,
        sum: Sum { s: 0.0, c: 0.0 },
        squares: Sum { s: 0.0, c: 0.0 },
        int_sum: 0,
        int_squares: Some(0),
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        int_min: i64::MAX,
        int_max: i64::MIN,
        nan: false,
        plus_inf: false,
        minus_inf: false,
    };

    #[inline(always)]
    fn add_int(&mut self, x: i64, need: Need) {
        self.n += 1;
        match need {
            Need::Sum => self.int_sum += i128::from(x),
            Need::Squares => {
                let sq = u128::from(x.unsigned_abs()).pow(2);
                self.int_squares = self.int_squares.and_then(|s| s.checked_add(sq));
                self.squares.add((x as f64) * (x as f64));
            }
            Need::Extremes => {
                self.int_min = self.int_min.min(x);
                self.int_max = self.int_max.max(x);
            }
        }
    }

    #[inline(always)]
    fn add_float(&mut self, x: f64, need: Need) {
        self.n += 1;
        if x.is_finite() {
            match need {
                Need::Sum => self.sum.add(x),
                Need::Squares => self.squares.add(x * x),
                Need::Extremes => {
                    self.min = self.min.min(x);
                    self.max = self.max.max(x);
                }
            }
        } else if x.is_nan() {
            self.nan = true;
        } else {
            if x > 0.0 {
                self.plus_inf = true;
            } else {
                self.minus_inf = true;
            }
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }

    #[inline(always)]
    fn add(&mut self, v: Scalar, need: Need) {
        match v {
            Scalar::Int(x) => self.add_int(x, need),
            Scalar::Float(x) => self.add_float(x, need),
        }
    }

    /// The folded value of an integer field.
    fn int(&self, fold: Fold) -> i64 {
        match fold {
            Fold::Mean => div_round(self.int_sum, i128::from(self.n)) as i64,
            Fold::Min => self.int_min,
            Fold::Max => self.int_max,
            Fold::Rms => {
                let mean = match self.int_squares {
                    Some(sq) => sq as f64 / self.n as f64,
                    None => self.squares.total() / self.n as f64,
                };
                mean.sqrt().round() as i64
            }
        }
    }

    /// The folded value of a floating field.
    fn float(&self, fold: Fold) -> f64 {
        if self.nan {
            return f64::NAN;
        }
        match fold {
            Fold::Min => self.min,
            Fold::Max => self.max,
            Fold::Mean => match (self.plus_inf, self.minus_inf) {
                (true, true) => f64::NAN,
                (true, false) => f64::INFINITY,
                (false, true) => f64::NEG_INFINITY,
                (false, false) => self.sum.total() / self.n as f64,
            },
            Fold::Rms if self.plus_inf || self.minus_inf => f64::INFINITY,
            Fold::Rms => (self.squares.total() / self.n as f64).sqrt(),
        }
    }
}

/// `sum / n` rounded to the nearest integer, halves away from zero.
fn div_round(sum: i128, n: i128) -> i128 {
    let (q, r) = (sum / n, sum % n);
    if 2 * r.abs() >= n {
        q + sum.signum()
    } else {
        q
    }
}

/// Which value of a window a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    Mean,
    Rms,
    Min,
    Max,
}

/// A decoded numeric value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    Int(i64),
    Float(f64),
}

/// One array of numbers' window.
#[derive(Debug, Default)]
struct ArrayAcc {
    elements: Vec<Acc>,
    /// The length of every array so far in this window.
    len: Option<usize>,
    /// Arrays of different lengths came: the window's last one is sent.
    ragged: bool,
}

/// A decoded record's numbers, in step order, before they are committed.
#[derive(Debug, Default)]
struct Scratch {
    /// Values of `Num` steps, non-null `OptNum` steps and array elements.
    values: Vec<Scalar>,
    /// Per array step, in order: how many elements it had.
    lengths: Vec<usize>,
    /// Per `OptNum` step, in order: whether it was null.
    nulls: Vec<bool>,
}

/// A compiled decimator for one schema: feed it valid records, take the
/// datagrams it produces with [`Decimator::ready`].
#[derive(Debug)]
pub struct Decimator {
    algorithm: Algorithm,
    /// What the accumulators keep, for `algorithm`.
    need: Need,
    /// The datagrams offered were validated: decoded straight into the
    /// window, without the scratch list.
    trusted: bool,
    window: Window,
    steps: Vec<Step>,
    skips: Vec<Skip>,
    /// Bytes before the datum in every datagram (the single-object header).
    prefix: Vec<u8>,
    accs: Vec<Acc>,
    arrays: Vec<ArrayAcc>,
    scratch: Scratch,
    /// The window's last record (the datum, without prefix).
    last: Vec<u8>,
    /// Records in the open window.
    in_window: u64,
    /// Time windows: the grid's origin and the open window's index.
    origin: Option<Instant>,
    open: Option<u64>,
    /// Datagrams produced and not yet taken: bytes back to back, and ends.
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Decimator {
    /// Compiles `schema` for `algorithm`; `keep_last` names fields (dotted
    /// paths from the top record) that take the window's last value.
    /// `prefix` is what comes before the datum in every datagram. The error
    /// says which `keep_last` entry names no field.
    pub fn new(
        schema: &Schema,
        algorithm: Algorithm,
        window: Window,
        keep_last: &[String],
        prefix: &[u8],
    ) -> Result<Decimator, String> {
        let c = compile::compile(schema, keep_last)?;
        Ok(Decimator {
            algorithm,
            window,
            accs: vec![Acc::EMPTY; c.accs as usize],
            trusted: false,
            need: match algorithm {
                Algorithm::Rms => Need::Squares,
                Algorithm::MinMax => Need::Extremes,
                Algorithm::Average | Algorithm::Downsample => Need::Sum,
            },
            arrays: (0..c.arrays).map(|_| ArrayAcc::default()).collect(),
            steps: c.steps,
            skips: c.skips,
            prefix: prefix.to_vec(),
            scratch: Scratch::default(),
            last: Vec::new(),
            in_window: 0,
            origin: None,
            open: None,
            out: Vec::new(),
            ends: Vec::new(),
        })
    }

    /// Says that every datagram offered was accepted by the validator (the
    /// channel validates): each is then decoded once, straight into the
    /// window.
    pub fn trusting_validated_input(mut self, trusted: bool) -> Decimator {
        self.trusted = trusted;
        self
    }

    /// Feeds one valid datagram (prefix included) that arrived at `now`.
    /// False if its datum does not decode (possible only without
    /// validation): it is left out of the window.
    pub fn offer(&mut self, datagram: &[u8], now: Instant) -> bool {
        let folds = self.algorithm != Algorithm::Downsample;
        let datum = datagram.get(self.prefix.len()..).unwrap_or_default();
        if folds && !self.trusted && !self.decode(datum) {
            return false;
        }
        if let Window::Every(period) = self.window {
            let k = self.index(now, period);
            if self.open.is_some_and(|o| o != k) {
                self.end_window();
            }
            if self.open.is_none() && !folds {
                self.push_datagram(datagram);
            }
            self.open = Some(k);
        }
        if folds {
            if self.trusted {
                if !self.fold_in(datum) {
                    return false;
                }
            } else {
                self.commit();
            }
            self.last.clear();
            self.last.extend_from_slice(datum);
        }
        self.in_window += 1;
        if let Window::Records(n) = self.window {
            if self.in_window >= n {
                if !folds {
                    self.push_datagram(datagram);
                }
                self.end_window();
            }
        }
        true
    }

    /// Ends the open time window if it is over at `now`.
    pub fn tick(&mut self, now: Instant) {
        if let (Window::Every(period), Some(open)) = (self.window, self.open) {
            if self.index(now, period) != open {
                self.end_window();
            }
        }
    }

    /// When the open time window ends, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.window, self.open, self.origin) {
            (Window::Every(period), Some(k), Some(origin)) => {
                let nanos = period.as_nanos().saturating_mul(u128::from(k) + 1);
                Some(origin + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
            }
            _ => None,
        }
    }

    /// The datagrams produced since the last [`Decimator::clear`].
    pub fn ready(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let d = &self.out[start..end];
            start = end;
            d
        })
    }

    /// How many datagrams are ready.
    pub fn ready_count(&self) -> usize {
        self.ends.len()
    }

    /// Forgets the datagrams produced (they were sent).
    pub fn clear(&mut self) {
        self.out.clear();
        self.ends.clear();
    }

    fn index(&mut self, now: Instant, period: Duration) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let nanos = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(nanos / period.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn push_datagram(&mut self, datagram: &[u8]) {
        self.out.extend_from_slice(datagram);
        self.ends.push(self.out.len());
    }

    /// Emits the window's records (if it has any) and starts a new one.
    fn end_window(&mut self) {
        if self.in_window > 0 {
            match self.algorithm {
                Algorithm::Downsample => {}
                Algorithm::Average => self.encode(Fold::Mean),
                Algorithm::Rms => self.encode(Fold::Rms),
                Algorithm::MinMax => {
                    self.encode(Fold::Min);
                    self.encode(Fold::Max);
                }
            }
        }
        self.in_window = 0;
        self.open = None;
        for a in &mut self.accs {
            *a = Acc::EMPTY;
        }
        for a in &mut self.arrays {
            a.elements.iter_mut().for_each(|e| *e = Acc::EMPTY);
            a.len = None;
            a.ragged = false;
        }
    }

    /// Decodes a datum's numbers straight into the window (a datum the
    /// validator accepted decodes to its end: no scratch list needed); false
    /// if it does not.
    fn fold_in(&mut self, d: &[u8]) -> bool {
        let Decimator {
            steps,
            skips,
            accs,
            arrays,
            need,
            ..
        } = self;
        let need = *need;
        let mut pos = 0;
        for step in steps.iter() {
            let ok = match *step {
                Step::Num { num, acc } => {
                    read_num(d, &mut pos, num).map(|v| accs[acc as usize].add(v, need))
                }
                Step::OptNum { num, acc, number } => match read_long(d, &mut pos) {
                    Some(b) if b == i64::from(number) => {
                        read_num(d, &mut pos, num).map(|v| accs[acc as usize].add(v, need))
                    }
                    Some(b) if b == i64::from(1 - number) => Some(()),
                    _ => None,
                },
                Step::Array { num, array } => {
                    fold_array(&mut arrays[array as usize], d, &mut pos, num, need)
                }
                Step::Last { skip } => skip_value(skips, skip, d, pos, 0).map(|p| pos = p),
            };
            if ok.is_none() {
                return false;
            }
        }
        pos == d.len()
    }

    /// Decodes a datum's numbers into the scratch list; false if it does not
    /// decode to its end.
    fn decode(&mut self, d: &[u8]) -> bool {
        let s = &mut self.scratch;
        s.values.clear();
        s.lengths.clear();
        s.nulls.clear();
        let mut pos = 0;
        for step in &self.steps {
            let ok = match *step {
                Step::Num { num, .. } => read_num(d, &mut pos, num).map(|v| s.values.push(v)),
                Step::OptNum { num, number, .. } => read_long(d, &mut pos).and_then(|b| {
                    let is_null = b != i64::from(number);
                    s.nulls.push(is_null);
                    if is_null {
                        (b == i64::from(1 - number)).then_some(())
                    } else {
                        read_num(d, &mut pos, num).map(|v| s.values.push(v))
                    }
                }),
                Step::Array { num, .. } => {
                    let before = s.values.len();
                    read_array(d, &mut pos, num, &mut s.values)
                        .map(|()| s.lengths.push(s.values.len() - before))
                }
                Step::Last { skip } => skip_value(&self.skips, skip, d, pos, 0).map(|p| pos = p),
            };
            if ok.is_none() {
                return false;
            }
        }
        pos == d.len()
    }

    /// Adds the scratch list to the window.
    fn commit(&mut self) {
        let s = &self.scratch;
        let need = self.need;
        let (mut v, mut l, mut nl) = (0, 0, 0);
        for step in &self.steps {
            match *step {
                Step::Num { acc, .. } => {
                    self.accs[acc as usize].add(s.values[v], need);
                    v += 1;
                }
                Step::OptNum { acc, .. } => {
                    if !s.nulls[nl] {
                        self.accs[acc as usize].add(s.values[v], need);
                        v += 1;
                    }
                    nl += 1;
                }
                Step::Array { array, .. } => {
                    let len = s.lengths[l];
                    l += 1;
                    let a = &mut self.arrays[array as usize];
                    match a.len {
                        None => a.len = Some(len),
                        Some(n) if n != len => a.ragged = true,
                        Some(_) => {}
                    }
                    if !a.ragged {
                        if a.elements.len() < len {
                            a.elements.resize(len, Acc::EMPTY);
                        }
                        for (e, x) in a.elements.iter_mut().zip(&s.values[v..v + len]) {
                            e.add(*x, need);
                        }
                    }
                    v += len;
                }
                Step::Last { .. } => {}
            }
        }
    }

    /// Encodes one record of the window: the last record, its numbers
    /// replaced by `fold` of the window's.
    fn encode(&mut self, fold: Fold) {
        self.out.extend_from_slice(&self.prefix);
        let d = &self.last;
        let out = &mut self.out;
        let mut pos = 0;
        for step in &self.steps {
            let start = pos;
            // The last record decoded when it came: these cannot fail.
            match *step {
                Step::Num { num, acc } => {
                    let _ = read_num(d, &mut pos, num);
                    put_num(out, num, &self.accs[acc as usize], fold);
                }
                Step::OptNum { num, acc, number } => {
                    if read_long(d, &mut pos) == Some(i64::from(number)) {
                        let _ = read_num(d, &mut pos, num);
                    }
                    let a = &self.accs[acc as usize];
                    if a.n == 0 {
                        put_long(out, i64::from(1 - number));
                    } else {
                        put_long(out, i64::from(number));
                        put_num(out, num, a, fold);
                    }
                }
                Step::Array { num, array } => {
                    let a = &self.arrays[array as usize];
                    let _ = each_element(d, &mut pos, num, |_| {});
                    match a.len {
                        Some(len) if !a.ragged => {
                            if len > 0 {
                                put_long(out, len as i64);
                                for e in &a.elements[..len] {
                                    put_num(out, num, e, fold);
                                }
                            }
                            put_long(out, 0);
                        }
                        _ => out.extend_from_slice(&d[start..pos]),
                    }
                }
                Step::Last { skip } => {
                    pos = skip_value(&self.skips, skip, d, pos, 0).unwrap_or(d.len());
                    out.extend_from_slice(&d[start..pos]);
                }
            }
        }
        self.ends.push(self.out.len());
    }
}

#[inline(always)]
fn read_fixed<const N: usize>(d: &[u8], pos: &mut usize) -> Option<[u8; N]> {
    let bytes = d.get(*pos..*pos + N)?.try_into().ok()?;
    *pos += N;
    Some(bytes)
}

#[inline(always)]
fn read_num(d: &[u8], pos: &mut usize, num: Num) -> Option<Scalar> {
    Some(match num {
        Num::Int => {
            let v = read_long(d, pos)?;
            i32::try_from(v).ok()?;
            Scalar::Int(v)
        }
        Num::Long => Scalar::Int(read_long(d, pos)?),
        Num::Float => Scalar::Float(f64::from(f32::from_le_bytes(read_fixed(d, pos)?))),
        Num::Double => Scalar::Float(f64::from_le_bytes(read_fixed(d, pos)?)),
    })
}

fn put_num(out: &mut Vec<u8>, num: Num, acc: &Acc, fold: Fold) {
    match num {
        Num::Int | Num::Long => put_long(out, acc.int(fold)),
        Num::Float => out.extend_from_slice(&(acc.float(fold) as f32).to_le_bytes()),
        Num::Double => out.extend_from_slice(&acc.float(fold).to_le_bytes()),
    }
}

/// Calls `f` with each element of an array of numbers, block by block;
/// how many there were.
#[inline(always)]
fn each_element(d: &[u8], pos: &mut usize, num: Num, mut f: impl FnMut(Scalar)) -> Option<usize> {
    let mut n = 0;
    loop {
        let count = read_long(d, pos)?;
        if count == 0 {
            return Some(n);
        }
        if count < 0 {
            read_long(d, pos)?; // the block's size in bytes
        }
        // Every number takes at least one byte.
        let count = usize::try_from(count.unsigned_abs()).ok()?;
        if count > d.len() - *pos {
            return None;
        }
        for _ in 0..count {
            f(read_num(d, pos, num)?);
        }
        n += count;
    }
}

/// Reads an array of numbers' elements into `values`.
fn read_array(d: &[u8], pos: &mut usize, num: Num, values: &mut Vec<Scalar>) -> Option<()> {
    each_element(d, pos, num, |v| values.push(v)).map(|_| ())
}

/// Adds an array of numbers' elements to its window, element by element.
fn fold_array(a: &mut ArrayAcc, d: &[u8], pos: &mut usize, num: Num, need: Need) -> Option<()> {
    let mut i = 0;
    let ArrayAcc {
        elements, ragged, ..
    } = a;
    let len = each_element(d, pos, num, |x| {
        if !*ragged {
            if i == elements.len() {
                elements.push(Acc::EMPTY);
            }
            elements[i].add(x, need);
        }
        i += 1;
    })?;
    match a.len {
        None => a.len = Some(len),
        Some(n) if n != len => a.ragged = true,
        Some(_) => {}
    }
    Some(())
}

/// The end of the value of skip node `id` that starts at `pos`.
fn skip_value(skips: &[Skip], id: u32, d: &[u8], mut pos: usize, depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let Some(node) = skips.get(id as usize) else {
        return Some(pos);
    };
    match node {
        Skip::Fixed(n) => pos.checked_add(*n).filter(|&p| p <= d.len()),
        Skip::Varint => read_long(d, &mut pos).map(|_| pos),
        Skip::Bytes => {
            let len = usize::try_from(read_long(d, &mut pos)?).ok()?;
            pos.checked_add(len).filter(|&p| p <= d.len())
        }
        Skip::Union(branches) => {
            let b = usize::try_from(read_long(d, &mut pos)?).ok()?;
            skip_value(skips, *branches.get(b)?, d, pos, depth + 1)
        }
        Skip::Record(fields) => {
            for &f in fields {
                pos = skip_value(skips, f, d, pos, depth + 1)?;
            }
            Some(pos)
        }
        Skip::Array(items) | Skip::Map(items) => loop {
            let count = read_long(d, &mut pos)?;
            if count == 0 {
                return Some(pos);
            }
            if count < 0 {
                let size = usize::try_from(read_long(d, &mut pos)?).ok()?;
                pos = pos.checked_add(size).filter(|&p| p <= d.len())?;
                continue;
            }
            let map = matches!(node, Skip::Map(_));
            let before = pos;
            for i in 0..count {
                if map {
                    let len = usize::try_from(read_long(d, &mut pos)?).ok()?;
                    pos = pos.checked_add(len).filter(|&p| p <= d.len())?;
                }
                pos = skip_value(skips, *items, d, pos, depth + 1)?;
                // Items of no bytes (null, empty records): all alike.
                if i == 0 && pos == before {
                    break;
                }
            }
        },
    }
}

#[cfg(test)]
#[allow(deprecated)] // to_avro_datum, from_avro_datum: the plain way to test one datum
mod tests {
    use super::*;
    use apache_avro::types::Value;

    const SCHEMA: &str = r#"{"type": "record", "name": "Sample", "namespace": "t", "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "seq", "type": "long"},
        {"name": "level", "type": "int"},
        {"name": "pos", "type": {"type": "record", "name": "Pos", "fields": [
            {"name": "x", "type": "double"}, {"name": "y", "type": "float"}]}},
        {"name": "spectrum", "type": {"type": "array", "items": "double"}},
        {"name": "opt", "type": ["null", "double"]},
        {"name": "label", "type": "string"},
        {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["A", "B"]}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "home", "type": "Pos"}
    ]}"#;

    struct Row {
        time: i64,
        seq: i64,
        level: i32,
        x: f64,
        y: f32,
        spectrum: Vec<f64>,
        opt: Option<f64>,
        label: &'static str,
        mode: u32,
    }

    fn schema() -> Schema {
        Schema::parse_str(SCHEMA).unwrap()
    }

    fn pos(x: f64, y: f32) -> Value {
        Value::Record(vec![
            ("x".into(), Value::Double(x)),
            ("y".into(), Value::Float(y)),
        ])
    }

    fn encode(r: &Row) -> Vec<u8> {
        let v = Value::Record(vec![
            ("time".into(), Value::TimestampMicros(r.time)),
            ("seq".into(), Value::Long(r.seq)),
            ("level".into(), Value::Int(r.level)),
            ("pos".into(), pos(r.x, r.y)),
            (
                "spectrum".into(),
                Value::Array(r.spectrum.iter().map(|&d| Value::Double(d)).collect()),
            ),
            (
                "opt".into(),
                match r.opt {
                    Some(d) => Value::Union(1, Box::new(Value::Double(d))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            ("label".into(), Value::String(r.label.into())),
            (
                "mode".into(),
                Value::Enum(r.mode, ["A", "B"][r.mode as usize].into()),
            ),
            (
                "tags".into(),
                Value::Map([("k".to_string(), Value::String(r.label.into()))].into()),
            ),
            ("home".into(), pos(r.x * 2.0, r.y)),
        ]);
        apache_avro::to_avro_datum(&schema(), v).unwrap()
    }

    fn decode(d: &[u8]) -> Vec<(String, Value)> {
        match apache_avro::from_avro_datum(&schema(), &mut &d[..], None).unwrap() {
            Value::Record(f) => f,
            v => panic!("{v:?}"),
        }
    }

    fn field<'a>(r: &'a [(String, Value)], name: &str) -> &'a Value {
        &r.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                time: 1_000,
                seq: 1,
                level: 1,
                x: 0.5,
                y: 1.0,
                spectrum: vec![1.0, 2.0],
                opt: None,
                label: "a",
                mode: 0,
            },
            Row {
                time: 2_000,
                seq: 2,
                level: 2,
                x: -1.5,
                y: 2.0,
                spectrum: vec![3.0, 6.0],
                opt: Some(4.0),
                label: "b",
                mode: 1,
            },
            Row {
                time: 3_000,
                seq: 3,
                level: 4,
                x: 10.0,
                y: 4.0,
                spectrum: vec![5.0, 1.0],
                opt: Some(8.0),
                label: "c",
                mode: 0,
            },
        ]
    }

    fn run(algorithm: Algorithm, keep_last: &[&str]) -> Vec<Vec<(String, Value)>> {
        let keep: Vec<String> = keep_last.iter().map(|s| s.to_string()).collect();
        let mut d = Decimator::new(&schema(), algorithm, Window::Records(3), &keep, &[]).unwrap();
        let now = Instant::now();
        for r in rows() {
            assert!(d.offer(&encode(&r), now));
        }
        let out: Vec<_> = d.ready().map(decode).collect();
        d.clear();
        assert_eq!(d.ready_count(), 0);
        out
    }

    #[test]
    fn average_folds_numbers_and_keeps_the_last_of_everything_else() {
        let out = run(Algorithm::Average, &[]);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(field(r, "time"), &Value::TimestampMicros(3_000));
        assert_eq!(field(r, "seq"), &Value::Long(2));
        // (1 + 2 + 4) / 3 = 2.33 -> 2
        assert_eq!(field(r, "level"), &Value::Int(2));
        assert_eq!(field(r, "pos"), &pos(3.0, 7.0 / 3.0));
        assert_eq!(
            field(r, "spectrum"),
            &Value::Array(vec![Value::Double(3.0), Value::Double(3.0)])
        );
        assert_eq!(
            field(r, "opt"),
            &Value::Union(1, Box::new(Value::Double(6.0)))
        );
        assert_eq!(field(r, "label"), &Value::String("c".into()));
        assert_eq!(field(r, "mode"), &Value::Enum(0, "A".into()));
        assert_eq!(field(r, "home"), &pos(6.0, 7.0 / 3.0));
    }

    #[test]
    fn trusted_input_folds_the_same_in_one_pass() {
        let mut rs = rows();
        rs[1].spectrum = vec![1.0];
        for algorithm in [Algorithm::Average, Algorithm::MinMax, Algorithm::Rms] {
            let outputs = |trusted: bool| {
                let mut d = Decimator::new(&schema(), algorithm, Window::Records(2), &[], &[])
                    .unwrap()
                    .trusting_validated_input(trusted);
                for r in rs.iter().chain(&rows()) {
                    assert!(d.offer(&encode(r), Instant::now()));
                }
                d.ready().map(<[u8]>::to_vec).collect::<Vec<_>>()
            };
            let one_pass = outputs(true);
            assert_eq!(
                one_pass.len(),
                if algorithm == Algorithm::MinMax { 6 } else { 3 }
            );
            assert_eq!(one_pass, outputs(false), "{algorithm:?}");
        }
    }

    #[test]
    fn keep_last_names_fields_at_any_depth() {
        let out = run(Algorithm::Average, &["seq", "pos.x"]);
        let r = &out[0];
        assert_eq!(field(r, "seq"), &Value::Long(3));
        assert_eq!(field(r, "pos"), &pos(10.0, 7.0 / 3.0));
        assert_eq!(field(r, "home"), &pos(6.0, 7.0 / 3.0));
    }

    #[test]
    fn keep_last_naming_no_field_is_an_error_that_names_it() {
        let new = |keep: &[&str]| {
            let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
            Decimator::new(
                &schema(),
                Algorithm::Average,
                Window::Records(2),
                &keep,
                &[],
            )
            .map(|_| ())
            .unwrap_err()
        };
        assert_eq!(
            new(&["nope"]),
            "\"nope\": record Sample has no field \"nope\""
        );
        assert_eq!(new(&["pos.z"]), "\"pos.z\": record Pos has no field \"z\"");
        assert_eq!(
            new(&["label.x"]),
            "\"label.x\": field \"label\" is not a record"
        );
        assert_eq!(
            new(&["home.q"]),
            "\"home.q\": record Pos has no field \"q\""
        );
        assert!(new(&["seq", "seq"]).contains("repeats another entry"));
    }

    #[test]
    fn minmax_sends_the_envelope_and_keeps_a_spike() {
        let out = run(Algorithm::MinMax, &[]);
        assert_eq!(out.len(), 2);
        let (lo, hi) = (&out[0], &out[1]);
        assert_eq!(field(lo, "level"), &Value::Int(1));
        assert_eq!(field(hi, "level"), &Value::Int(4));
        assert_eq!(field(lo, "pos"), &pos(-1.5, 1.0));
        assert_eq!(field(hi, "pos"), &pos(10.0, 4.0));
        assert_eq!(
            field(hi, "spectrum"),
            &Value::Array(vec![Value::Double(5.0), Value::Double(6.0)])
        );
        assert_eq!(
            field(lo, "opt"),
            &Value::Union(1, Box::new(Value::Double(4.0)))
        );
        assert_eq!(field(lo, "time"), &Value::TimestampMicros(3_000));
    }

    #[test]
    fn rms_is_the_root_of_the_mean_square() {
        let out = run(Algorithm::Rms, &[]);
        let r = &out[0];
        let x = ((0.25 + 2.25 + 100.0) / 3.0f64).sqrt();
        assert_eq!(
            field(r, "pos"),
            &pos(x, ((1.0 + 4.0 + 16.0) / 3.0f64).sqrt() as f32)
        );
        // sqrt(21 / 3) = 2.65 -> 3
        assert_eq!(field(r, "level"), &Value::Int(3));
    }

    #[test]
    fn integer_means_round_halves_away_from_zero() {
        assert_eq!(div_round(3, 2), 2);
        assert_eq!(div_round(-3, 2), -2);
        assert_eq!(div_round(5, 4), 1);
        assert_eq!(div_round(-5, 4), -1);
        assert_eq!(div_round(7, 3), 2);
        let mut a = Acc::EMPTY;
        for x in [i64::MAX, i64::MAX, i64::MAX - 1] {
            a.add_int(x, Need::Sum);
        }
        assert_eq!(a.int(Fold::Mean), i64::MAX);
    }

    #[test]
    fn nan_in_nan_out_and_infinities_as_ieee_says() {
        let fold = |xs: &[f64], f: Fold| {
            let need = match f {
                Fold::Mean => Need::Sum,
                Fold::Rms => Need::Squares,
                Fold::Min | Fold::Max => Need::Extremes,
            };
            let mut a = Acc::EMPTY;
            xs.iter().for_each(|&x| a.add_float(x, need));
            a.float(f)
        };
        assert!(fold(&[1.0, f64::NAN, 2.0], Fold::Mean).is_nan());
        assert!(fold(&[f64::NAN, 2.0], Fold::Min).is_nan());
        assert_eq!(fold(&[1.0, f64::INFINITY], Fold::Mean), f64::INFINITY);
        assert!(fold(&[f64::NEG_INFINITY, f64::INFINITY], Fold::Mean).is_nan());
        assert_eq!(
            fold(&[f64::NEG_INFINITY, 3.0], Fold::Min),
            f64::NEG_INFINITY
        );
        assert_eq!(fold(&[f64::NEG_INFINITY, 3.0], Fold::Rms), f64::INFINITY);
        assert_eq!(fold(&[1e308, 1e308], Fold::Mean), f64::INFINITY);
        // Compensated: a naive sum of these loses the small terms.
        let xs: Vec<f64> = (0..10_000)
            .map(|i| if i % 2 == 0 { 1e16 } else { 1.0 })
            .collect();
        assert_eq!(fold(&xs, Fold::Mean), (5_000.0 * 1e16 + 5_000.0) / 10_000.0);
    }

    #[test]
    fn unions_all_null_stay_null_and_ragged_arrays_send_the_last() {
        let mut rs = rows();
        rs[1].opt = None;
        rs[2].opt = None;
        rs[1].spectrum = vec![1.0];
        let mut d =
            Decimator::new(&schema(), Algorithm::Average, Window::Records(3), &[], &[]).unwrap();
        for r in &rs {
            d.offer(&encode(r), Instant::now());
        }
        let out: Vec<_> = d.ready().map(decode).collect();
        assert_eq!(
            field(&out[0], "opt"),
            &Value::Union(0, Box::new(Value::Null))
        );
        assert_eq!(
            field(&out[0], "spectrum"),
            &Value::Array(vec![Value::Double(5.0), Value::Double(1.0)])
        );
    }

    #[test]
    fn an_undecodable_datum_is_left_out() {
        let mut d =
            Decimator::new(&schema(), Algorithm::Average, Window::Records(2), &[], &[]).unwrap();
        let good = encode(&rows()[0]);
        assert!(!d.offer(&good[..good.len() - 1], Instant::now()));
        assert!(!d.offer(&[good.as_slice(), &[0]].concat(), Instant::now()));
        assert_eq!(d.ready_count(), 0);
        assert!(d.offer(&good, Instant::now()));
        assert!(d.offer(&encode(&rows()[2]), Instant::now()));
        let out: Vec<_> = d.ready().map(decode).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(field(&out[0], "level"), &Value::Int(3)); // (1 + 4) / 2 = 2.5 -> 3
    }

    #[test]
    fn time_windows_end_on_the_grid_and_are_never_empty() {
        let ms = Duration::from_millis;
        let mut d = Decimator::new(
            &schema(),
            Algorithm::Average,
            Window::Every(ms(10)),
            &[],
            &[],
        )
        .unwrap();
        let t0 = Instant::now();
        let rs = rows();
        d.offer(&encode(&rs[0]), t0);
        d.offer(&encode(&rs[1]), t0 + ms(9));
        assert_eq!(d.deadline(), Some(t0 + ms(10)));
        d.tick(t0 + ms(9));
        assert_eq!(d.ready_count(), 0);
        d.offer(&encode(&rs[2]), t0 + ms(12));
        assert_eq!(d.ready_count(), 1);
        // A pause: the open window ends once, no empty ones follow.
        d.tick(t0 + ms(1_000));
        d.tick(t0 + ms(2_000));
        assert_eq!(d.ready_count(), 2);
        assert_eq!(d.deadline(), None);
        let out: Vec<_> = d.ready().map(decode).collect();
        assert_eq!(field(&out[0], "level"), &Value::Int(2)); // (1 + 2) / 2 = 1.5 -> 2
        assert_eq!(field(&out[1], "level"), &Value::Int(4));
    }

    #[test]
    fn downsample_sends_the_nth_or_the_first_of_each_time_window() {
        let data: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
        let s = Schema::parse_str(r#""int""#).unwrap();
        let mut d =
            Decimator::new(&s, Algorithm::Downsample, Window::Records(5), &[], &[]).unwrap();
        for x in &data {
            d.offer(x, Instant::now());
        }
        assert_eq!(d.ready().collect::<Vec<_>>(), [&[4u8][..], &[9]]);
        let ms = Duration::from_millis;
        let mut d =
            Decimator::new(&s, Algorithm::Downsample, Window::Every(ms(10)), &[], &[]).unwrap();
        let t0 = Instant::now();
        for (i, x) in data.iter().enumerate() {
            d.offer(x, t0 + ms(3 * i as u64));
        }
        // Windows [0, 10), [10, 20), [20, 30): records 0, 4 and 7 open them.
        assert_eq!(d.ready().collect::<Vec<_>>(), [&[0u8][..], &[4], &[7]]);
    }

    #[test]
    fn the_single_object_header_is_kept_on_every_output() {
        let header = [0xc3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut d = Decimator::new(
            &schema(),
            Algorithm::MinMax,
            Window::Records(2),
            &[],
            &header,
        )
        .unwrap();
        for r in &rows()[..2] {
            d.offer(&[&header[..], &encode(r)].concat(), Instant::now());
        }
        let out: Vec<&[u8]> = d.ready().collect();
        assert_eq!(out.len(), 2);
        for o in out {
            assert_eq!(o[..10], header);
            decode(&o[10..]);
        }
    }

    #[test]
    fn recursive_and_nested_types_are_copied_as_they_came() {
        let s = Schema::parse_str(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "v", "type": "double"},
                {"name": "next", "type": ["null", "Node"]},
                {"name": "nulls", "type": {"type": "array", "items": "null"}},
                {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 3}},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 5}}
            ]}"#,
        )
        .unwrap();
        let node = |v: f64, next: Value| {
            Value::Record(vec![
                ("v".into(), Value::Double(v)),
                ("next".into(), next),
                ("nulls".into(), Value::Array(vec![Value::Null; 3])),
                ("fx".into(), Value::Fixed(3, vec![1, 2, 3])),
                (
                    "amount".into(),
                    Value::Decimal(apache_avro::Decimal::from(vec![1u8, 0])),
                ),
            ])
        };
        let leaf = node(7.0, Value::Union(0, Box::new(Value::Null)));
        let a = node(1.0, Value::Union(1, Box::new(leaf.clone())));
        let b = node(3.0, Value::Union(0, Box::new(Value::Null)));
        let mut d = Decimator::new(&s, Algorithm::Average, Window::Records(2), &[], &[]).unwrap();
        for v in [a, b.clone()] {
            assert!(d.offer(&apache_avro::to_avro_datum(&s, v).unwrap(), Instant::now()));
        }
        let out: Vec<&[u8]> = d.ready().collect();
        let got = apache_avro::from_avro_datum(&s, &mut &out[0][..], None).unwrap();
        let Value::Record(mut expected) = b else {
            unreachable!()
        };
        expected[0].1 = Value::Double(2.0);
        assert_eq!(got, Value::Record(expected));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Time per record on the bench's 800-byte schema (not a check: run with
    /// `cargo test --release -p relay-channel --lib decimate::speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn time_per_record() {
        let schema =
            Schema::parse_str(include_str!("../../benches/schemas/samples-800.avsc")).unwrap();
        let mut datum = Vec::new();
        put_long(&mut datum, 1_700_000_000_000_000);
        put_long(&mut datum, 7);
        put_long(&mut datum, 99);
        for i in 0..99 {
            datum.extend_from_slice(&(i as f64 * 0.5).to_le_bytes());
        }
        put_long(&mut datum, 0);
        for algorithm in [
            Algorithm::Downsample,
            Algorithm::Average,
            Algorithm::MinMax,
            Algorithm::Rms,
        ] {
            for trusted in [false, true] {
                let mut d = Decimator::new(&schema, algorithm, Window::Records(50), &[], &[])
                    .unwrap()
                    .trusting_validated_input(trusted);
                let now = Instant::now();
                let n = 2_000_000;
                let t = Instant::now();
                for _ in 0..n {
                    assert!(d.offer(&datum, now));
                    if d.ready_count() > 0 {
                        d.clear();
                    }
                }
                let ns = t.elapsed().as_nanos() as f64 / n as f64;
                eprintln!("{algorithm:?} (trusted {trusted}): {ns:.0} ns a record");
            }
        }
    }
}
