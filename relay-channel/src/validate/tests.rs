use super::compile::{intern, FIRST_DAY, FIRST_SECOND, LAST_DAY, LAST_SECOND, UNFOLD_LIMIT};
use super::*;
use crate::varint::zigzag;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{EnumSchema, FixedSchema, Name, UuidSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Uuid};
use std::collections::HashSet;
use std::time::{Duration as StdDuration, Instant};

const EXAMPLE: &str = include_str!("../../../channels.d/example.avsc");

/// Every type, logical types, named references and a recursive list.
const ALL_TYPES: &str = r#"{
  "type": "record", "name": "All", "namespace": "t",
  "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "by", "type": "bytes"},
    {"name": "s", "type": "string"},
    {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "a", "type": "int"},
      {"name": "deep", "type": {"type": "record", "name": "Deep", "fields": [
        {"name": "x", "type": "double"}, {"name": "y", "type": "float"}, {"name": "z", "type": "null"}]}}
    ]}},
    {"name": "arr", "type": {"type": "array", "items": "long"}},
    {"name": "doubles", "type": {"type": "array", "items": "double"}},
    {"name": "recs", "type": {"type": "array", "items": "Inner"}},
    {"name": "m", "type": {"type": "map", "values": "string"}},
    {"name": "u", "type": ["null", "long", "string", "Inner"]},
    {"name": "dec_b", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "dec_f", "type": {"type": "fixed", "name": "DecF", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 3}},
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
    {"name": "list", "type": {"type": "record", "name": "Node", "fields": [
      {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}},
    {"name": "nulls", "type": {"type": "array", "items": "null"}},
    {"name": "mo", "type": {"type": "map", "values": ["null", {"type": "array", "items": "Color"}]}},
    {"name": "tail", "type": "boolean"}
  ]
}"#;

const LIST: &str = r#"{"type":"record","name":"Node","fields":[
    {"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;

/// xorshift64: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1)).map(|_| self.byte()).collect()
    }
    /// Mostly small magnitudes (short varints), sometimes anything.
    fn long(&mut self) -> i64 {
        match self.below(4) {
            0 => self.next() as i64,
            1 => (self.next() as i64) >> self.below(64),
            _ => self.below(200) as i64 - 100,
        }
    }
    fn int(&mut self) -> i32 {
        (self.long() >> 32) as i32 ^ self.long() as i32
    }
    /// A timestamp-micros within years 1 to 9999.
    fn timestamp_micros(&mut self) -> i64 {
        self.long() % 62_135_596_800_000_000
    }
    fn string(&mut self) -> String {
        const PARTS: [&str; 6] = ["a", "Z", "0", " ", "é", "日本"];
        (0..self.below(6))
            .map(|_| PARTS[self.below(PARTS.len())])
            .collect()
    }
}

fn parse(json: &str) -> Schema {
    Schema::parse_str(json).expect("test schema parses")
}

fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("value encodes")
}

/// Zig-zag varint of `v`.
fn zz(v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::put_long(&mut out, v);
    out
}

fn reason(v: &Validator, x: &[u8]) -> Option<Reason> {
    v.validate(x).err().map(|e| e.reason)
}

/// apache-avro's decode of `x`: how many bytes it consumed.
fn apache_consumed(schema: &Schema, x: &[u8]) -> Result<usize, apache_avro::Error> {
    let reader = GenericDatumReader::builder(schema).build()?;
    let mut rest = x;
    reader.read_value(&mut rest)?;
    Ok(x.len() - rest.len())
}

fn apache_accepts(schema: &Schema, x: &[u8]) -> bool {
    matches!(apache_consumed(schema, x), Ok(n) if n == x.len())
}

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    )
}

fn example_value(rng: &mut Rng) -> Value {
    record(vec![
        ("time", Value::TimestampMicros(rng.timestamp_micros())),
        ("message", Value::String(rng.string())),
        ("counter", Value::Int(rng.int())),
        ("sine_wave", Value::Double(rng.next() as f64)),
        ("ramp", Value::Double(f64::from_bits(rng.next()))),
        ("square_wave", Value::Double(-1.0)),
        ("noise", Value::Double(0.25)),
    ])
}

fn inner_value(rng: &mut Rng) -> Value {
    record(vec![
        ("a", Value::Int(rng.int())),
        (
            "deep",
            record(vec![
                ("x", Value::Double(rng.next() as f64)),
                ("y", Value::Float(f32::from_bits(rng.next() as u32))),
                ("z", Value::Null),
            ]),
        ),
    ])
}

fn color(rng: &mut Rng) -> Value {
    let i = rng.below(3);
    Value::Enum(i as u32, ["RED", "GREEN", "BLUE"][i].to_owned())
}

fn list_value(rng: &mut Rng, len: usize) -> Value {
    let next = if len == 0 {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(list_value(rng, len - 1)))
    };
    record(vec![("v", Value::Int(rng.int())), ("next", next)])
}

fn all_types_value(rng: &mut Rng) -> Value {
    let u = match rng.below(4) {
        0 => Value::Union(0, Box::new(Value::Null)),
        1 => Value::Union(1, Box::new(Value::Long(rng.long()))),
        2 => Value::Union(2, Box::new(Value::String(rng.string()))),
        _ => Value::Union(3, Box::new(inner_value(rng))),
    };
    let mo = (0..rng.below(3))
        .map(|_| {
            let v = if rng.below(2) == 0 {
                Value::Union(0, Box::new(Value::Null))
            } else {
                let colors = (0..rng.below(3)).map(|_| color(rng)).collect();
                Value::Union(1, Box::new(Value::Array(colors)))
            };
            (rng.string(), v)
        })
        .collect();
    record(vec![
        ("n", Value::Null),
        ("b", Value::Boolean(rng.below(2) == 1)),
        ("i", Value::Int(rng.int())),
        ("l", Value::Long(rng.long())),
        ("f", Value::Float(1.5)),
        ("d", Value::Double(rng.next() as f64)),
        ("by", Value::Bytes(rng.bytes(5))),
        ("s", Value::String(rng.string())),
        ("e", color(rng)),
        ("fx", Value::Fixed(4, vec![rng.byte(), 0, 0xff, 0x80])),
        ("inner", inner_value(rng)),
        (
            "arr",
            Value::Array((0..rng.below(4)).map(|_| Value::Long(rng.long())).collect()),
        ),
        (
            "doubles",
            Value::Array((0..rng.below(3)).map(|_| Value::Double(0.5)).collect()),
        ),
        (
            "recs",
            Value::Array((0..rng.below(3)).map(|_| inner_value(rng)).collect()),
        ),
        (
            "m",
            Value::Map(
                (0..rng.below(3))
                    .map(|_| (rng.string(), Value::String(rng.string())))
                    .collect(),
            ),
        ),
        ("u", u),
        (
            "dec_b",
            Value::Decimal(Decimal::from([rng.byte(), rng.byte()])),
        ),
        // Within precision 18: |unscaled| < 10^18.
        (
            "dec_f",
            Value::Decimal(Decimal::from(
                (rng.long() % 1_000_000_000_000_000_000).to_be_bytes(),
            )),
        ),
        (
            "id",
            Value::Uuid(Uuid::from_u64_pair(rng.next(), rng.next())),
        ),
        // Years 1 to 9999.
        (
            "date",
            Value::Date(rng.int().rem_euclid(3_652_059) - 719_162),
        ),
        ("ts", Value::TimestampMicros(rng.timestamp_micros())),
        (
            "dur",
            Value::Duration(Duration::new(
                Months::new(rng.next() as u32),
                Days::new(7),
                Millis::new(rng.next() as u32),
            )),
        ),
        ("list", {
            let len = rng.below(4);
            list_value(rng, len)
        }),
        (
            "nulls",
            Value::Array((0..rng.below(3)).map(|_| Value::Null).collect()),
        ),
        ("mo", Value::Map(mo)),
        ("tail", Value::Boolean(rng.below(2) == 1)),
    ])
}

/// One to three random edits: byte changes, small +-1 nudges (which keep
/// many lengths and indices plausible), insertions, deletions, truncation,
/// appended bytes.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    const SPECIAL: [u8; 7] = [0x00, 0x01, 0x02, 0x03, 0x7f, 0x80, 0xff];
    let mut x = valid.to_vec();
    for _ in 0..1 + rng.below(4) / 3 * (1 + rng.below(2)) {
        let at = rng.below(x.len() + 1);
        let have = at < x.len();
        match rng.below(9) {
            0 if have => x[at] = rng.byte(),
            1 if have => x[at] ^= 1 << rng.below(8),
            2 if have => x[at] = x[at].wrapping_add(2),
            3 if have => x[at] = x[at].wrapping_sub(2),
            4 => x.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
            5 => x.insert(at, rng.byte()),
            6 if have => {
                x.remove(at);
            }
            7 => x.truncate(at),
            _ => {
                for _ in 0..1 + rng.below(3) {
                    x.push(SPECIAL[rng.below(SPECIAL.len())]);
                }
            }
        }
    }
    x
}

/// Whether `x[at..]` starts with an int varint of 6 to 10 bytes whose
/// value fits in 32 bits: apache-avro reads it, the spec (and Java) do not.
fn overlong_int_at(x: &[u8], at: usize) -> bool {
    let mut z = 0u64;
    for (j, &b) in x.iter().skip(at).take(10).enumerate() {
        z |= u64::from(b & 0x7f) << (7 * j);
        if b < 0x80 {
            let v = (z >> 1) as i64 ^ -((z & 1) as i64);
            return j >= 5 && i32::try_from(v).is_ok();
        }
    }
    false
}

#[derive(Default, Debug)]
struct Tally {
    both_accept: usize,
    both_reject: usize,
    eof_quirk: usize,
    stricter: usize,
    /// Of `stricter`: logical-type values out of range.
    logical: usize,
}

/// Checks the validator against apache-avro on `x`.
///
/// `oracle` is the schema apache-avro decodes with: the channel schema,
/// except that a big-decimal would be left unannotated, since the
/// validator deliberately checks it as bytes only.
fn cross_check(v: &Validator, oracle: &Schema, x: &[u8], tally: &mut Tally) {
    let ours = v.validate(x);
    let literal = apache_accepts(oracle, x);
    // apache-avro 0.22 reads end-of-input at a boolean, a string's body or
    // a union index as null, so it accepts some truncated datums. Decoding
    // `x` followed by padding, and requiring that it stop exactly at the end
    // of `x`, asks the same question without that bug.
    let mut padded = x.to_vec();
    padded.extend_from_slice(&[0; 16]);
    let theirs = matches!(apache_consumed(oracle, &padded), Ok(n) if n == x.len());
    assert!(
        literal || !theirs,
        "padding cannot make apache-avro accept {x:02x?}"
    );
    if literal && !theirs {
        // Exclusion: the EOF-as-null bug. These are truncations, always,
        // though the validator may name them Empty, or notice first that a
        // count cannot fit.
        let reason = ours.map_err(|e| e.reason);
        assert!(
            matches!(
                reason,
                Err(Reason::Truncated | Reason::ImplausibleCount | Reason::Empty)
            ),
            "{reason:?} {x:02x?}"
        );
        tally.eof_quirk += 1;
        return;
    }
    match (ours, theirs) {
        (Ok(()), true) => tally.both_accept += 1,
        (Err(_), false) => tally.both_reject += 1,
        (Ok(()), false) => panic!("validator accepts what apache-avro rejects: {x:02x?}"),
        (Err(e), true) => {
            // Exclusions: the deliberate, documented stricter rules.
            let deliberate = match e.reason {
                // Blocks of always-empty items claiming more items than bytes left.
                Reason::ImplausibleCount => true,
                // A negative block count's byte size, which apache-avro ignores.
                Reason::BlockSizeMismatch => true,
                // Nesting limit.
                Reason::TooDeep => true,
                // An int in more than 5 bytes.
                Reason::BadVarint => overlong_int_at(x, e.offset),
                // A logical-type value apache-avro reads without checking
                // its range (or a uuid string in a form it also parses).
                Reason::LogicalTypeRange => {
                    tally.logical += 1;
                    true
                }
                _ => false,
            };
            assert!(
                deliberate,
                "validator rejects ({e}) what apache-avro accepts: {x:02x?}"
            );
            tally.stricter += 1;
        }
    }
}

#[test]
fn example_schema() {
    let schema = parse(EXAMPLE);
    let v = Validator::new(&schema).unwrap();
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..50 {
        let x = encode(&schema, example_value(&mut rng));
        assert_eq!(v.validate(&x), Ok(()));
        for len in 0..x.len() {
            assert!(v.validate(&x[..len]).is_err(), "truncated to {len}");
        }
        let mut long = x.clone();
        long.extend_from_slice(b"junk");
        let err = v.validate(&long).unwrap_err();
        assert_eq!(err.reason, Reason::TrailingBytes);
        assert_eq!(err.offset, x.len());
    }
    assert_eq!(reason(&v, &[]), Some(Reason::Empty));
}

#[test]
fn all_types_valid_and_truncated() {
    let schema = parse(ALL_TYPES);
    let v = Validator::new(&schema).unwrap();
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..200 {
        let x = encode(&schema, all_types_value(&mut rng));
        assert_eq!(v.validate(&x), Ok(()), "{x:02x?}");
        for len in 0..x.len() {
            assert!(v.validate(&x[..len]).is_err(), "truncated to {len}");
        }
        let mut long = x.clone();
        long.push(0);
        assert_eq!(reason(&v, &long), Some(Reason::TrailingBytes));
    }
}

#[test]
fn cross_check_against_apache_avro() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();

    // Mutated valid encodings of the all-types and example schemas.
    let all = parse(ALL_TYPES);
    let example = parse(EXAMPLE);
    for (schema, oracle, make, n) in [
        (&all, &all, all_types_value as fn(&mut Rng) -> Value, 4000),
        (&example, &example, example_value, 1500),
    ] {
        let v = Validator::new(schema).unwrap();
        let valid: Vec<Vec<u8>> = (0..100).map(|_| encode(schema, make(&mut rng))).collect();
        for x in &valid {
            cross_check(&v, oracle, x, &mut tally);
        }
        for _ in 0..n {
            let pick = rng.below(valid.len());
            let x = mutate(&mut rng, &valid[pick]);
            cross_check(&v, oracle, &x, &mut tally);
        }
        for _ in 0..300 {
            let x = rng.bytes(200);
            cross_check(&v, oracle, &x, &mut tally);
        }
    }

    // Random short inputs, biased to small bytes, against small schemas.
    let small = [
        r#""null""#,
        r#""boolean""#,
        r#""int""#,
        r#""long""#,
        r#""string""#,
        r#"["null", "long", "string", "boolean"]"#,
        r#"{"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}"#,
        r#"{"type": "array", "items": "null"}"#,
        r#"{"type": "array", "items": "int"}"#,
        r#"{"type": "array", "items": {"type": "fixed", "name": "F2", "size": 2}}"#,
        r#"{"type": "map", "values": "boolean"}"#,
        r#"{"type": "map", "values": {"type": "array", "items": ["null", "int"]}}"#,
        r#"{"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "boolean"}, {"name": "b", "type": "string"},
            {"name": "c", "type": ["null", "R"]}]}"#,
        LIST,
    ];
    for json in small {
        let schema = parse(json);
        let v = Validator::new(&schema).unwrap();
        for _ in 0..600 {
            let len = rng.below(12);
            let x: Vec<u8> = (0..len)
                .map(|_| match rng.below(3) {
                    0 => rng.byte(),
                    _ => rng.below(6) as u8,
                })
                .collect();
            cross_check(&v, &schema, &x, &mut tally);
        }
    }

    let total = tally.both_accept + tally.both_reject + tally.eof_quirk + tally.stricter;
    assert!(total > 13_000, "{tally:?}");
    // Enough of both verdicts for the comparison to mean something.
    assert!(tally.both_accept > 1500, "{tally:?}");
    assert!(tally.both_reject > 5000, "{tally:?}");
    // The exclusions stay narrow.
    assert!(tally.stricter + tally.eof_quirk < total / 10, "{tally:?}");
    // Mutations reach the logical types too.
    assert!(tally.logical >= 10, "{tally:?}");
}

#[test]
fn deep_list_is_too_deep_without_overflow() {
    let schema = parse(LIST);
    let v = Validator::new(&schema).unwrap();
    let list = |len: usize| {
        let mut x = [0x00, 0x02].repeat(len);
        x.extend_from_slice(&[0x00, 0x00]);
        x
    };
    // 10,000 levels, on a small stack: refused at the depth limit.
    let deep = list(10_000);
    let v2 = v.clone();
    let err = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || v2.validate(&deep))
        .unwrap()
        .join()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.reason, Reason::TooDeep);
    assert_eq!(err.offset, 2 * MAX_DEPTH as usize);
    // At the limit (128 records) it passes, one more is too deep.
    assert_eq!(v.validate(&list(MAX_DEPTH as usize - 1)), Ok(()));
    assert_eq!(reason(&v, &list(MAX_DEPTH as usize)), Some(Reason::TooDeep));
    // apache-avro has no limit (it takes a large stack to show it).
    let deeper = list(MAX_DEPTH as usize);
    let accepted = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || apache_accepts(&schema, &deeper))
        .unwrap()
        .join()
        .unwrap();
    assert!(accepted);

    // Nesting through arrays counts too.
    let tree = parse(
        r#"{"type":"record","name":"T","fields":[{"name":"kids","type":{"type":"array","items":"T"}}]}"#,
    );
    let v = Validator::new(&tree).unwrap();
    let mut x = [0x02].repeat(10_000);
    x.extend([0x00].repeat(10_001));
    assert_eq!(reason(&v, &x), Some(Reason::TooDeep));
}

#[test]
fn huge_counts_are_rejected_fast() {
    let start = Instant::now();
    let nulls = Validator::new(&parse(r#"{"type":"array","items":"null"}"#)).unwrap();
    let doubles = Validator::new(&parse(r#"{"type":"array","items":"double"}"#)).unwrap();
    let strings = Validator::new(&parse(r#"{"type":"map","values":"string"}"#)).unwrap();
    for count in [1i64 << 60, -(1 << 60), i64::MAX, i64::MIN, 1000] {
        let mut x = zz(count);
        if count < 0 {
            x.extend(zz(0));
        }
        x.push(0);
        for v in [&nulls, &doubles, &strings] {
            let err = v.validate(&x).unwrap_err();
            assert_eq!((err.offset, err.reason), (0, Reason::ImplausibleCount));
        }
    }
    assert!(start.elapsed() < StdDuration::from_millis(200));

    // Always-empty items: up to the bytes left from the block's count.
    assert_eq!(nulls.validate(&[0x04, 0x00]), Ok(()));
    assert_eq!(
        reason(&nulls, &[0x06, 0x00]),
        Some(Reason::ImplausibleCount)
    );
    // Deliberately stricter than apache-avro, which takes three nulls.
    let schema = parse(r#"{"type":"array","items":"null"}"#);
    assert!(apache_accepts(&schema, &[0x06, 0x00]));
}

#[test]
fn primitives() {
    let v = |json: &str| Validator::new(&parse(json)).unwrap();
    let null = v(r#""null""#);
    assert_eq!(null.validate(&[]), Ok(()));
    assert_eq!(reason(&null, &[0]), Some(Reason::TrailingBytes));

    let boolean = v(r#""boolean""#);
    assert_eq!(boolean.validate(&[0]), Ok(()));
    assert_eq!(boolean.validate(&[1]), Ok(()));
    assert_eq!(reason(&boolean, &[2]), Some(Reason::BadBoolean));
    assert_eq!(reason(&boolean, &[]), Some(Reason::Empty));

    let int = v(r#""int""#);
    assert_eq!(int.validate(&zz(i32::MIN.into())), Ok(()));
    assert_eq!(int.validate(&zz(i32::MAX.into())), Ok(()));
    assert_eq!(reason(&int, &zz(1 << 31)), Some(Reason::IntOutOfRange));
    assert_eq!(
        reason(&int, &zz(-(1 << 31) - 1)),
        Some(Reason::IntOutOfRange)
    );
    assert_eq!(int.validate(&[0x80, 0x80, 0x80, 0x80, 0x00]), Ok(()));
    // Six bytes: not an int (apache-avro takes it, the spec and Java do not).
    let six = [0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
    assert_eq!(reason(&int, &six), Some(Reason::BadVarint));
    assert!(apache_accepts(&parse(r#""int""#), &six));
    assert_eq!(reason(&int, &[0x80]), Some(Reason::Truncated));

    let long = v(r#""long""#);
    assert_eq!(long.validate(&zz(i64::MIN)), Ok(()));
    assert_eq!(long.validate(&zz(i64::MAX)), Ok(()));
    let mut eleven = [0xff; 11];
    eleven[10] = 0x01;
    assert_eq!(reason(&long, &eleven), Some(Reason::BadVarint));
    // Excess bits in the tenth byte are dropped, as apache-avro and Java do.
    let mut ten = [0xff; 10];
    ten[9] = 0x7f;
    assert_eq!(long.validate(&ten), Ok(()));
    assert!(apache_accepts(&parse(r#""long""#), &ten));

    let float = v(r#""float""#);
    assert_eq!(float.validate(&[0; 4]), Ok(()));
    assert_eq!(reason(&float, &[0; 3]), Some(Reason::Truncated));
    let double = v(r#""double""#);
    assert_eq!(double.validate(&[0xff; 8]), Ok(()));

    let string = v(r#""string""#);
    assert_eq!(string.validate(b"\x06abc"), Ok(()));
    assert_eq!(string.validate(b"\x00"), Ok(()));
    let err = string.validate(b"\x06a\xffc").unwrap_err();
    assert_eq!((err.offset, err.reason), (2, Reason::InvalidUtf8));
    assert_eq!(reason(&string, b"\x01"), Some(Reason::NegativeLength));
    assert_eq!(reason(&string, b"\x08abc"), Some(Reason::Truncated));
    let bytes = v(r#""bytes""#);
    assert_eq!(bytes.validate(b"\x04\xff\xfe"), Ok(()));

    let fixed = v(r#"{"type":"fixed","name":"F","size":3}"#);
    assert_eq!(fixed.validate(&[1, 2, 3]), Ok(()));
    assert_eq!(reason(&fixed, &[1, 2]), Some(Reason::Truncated));
    let huge = v(r#"{"type":"fixed","name":"F","size":1000000000000}"#);
    assert_eq!(reason(&huge, &[1, 2]), Some(Reason::Truncated));

    let e = v(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
    assert_eq!(e.validate(&zz(2)), Ok(()));
    assert_eq!(reason(&e, &zz(3)), Some(Reason::EnumIndexOutOfRange));
    assert_eq!(reason(&e, &zz(-1)), Some(Reason::EnumIndexOutOfRange));

    let u = v(r#"["null","string"]"#);
    assert_eq!(u.validate(&[0]), Ok(()));
    assert_eq!(u.validate(&[2, 0]), Ok(()));
    assert_eq!(reason(&u, &zz(2)), Some(Reason::UnionIndexOutOfRange));
    assert_eq!(reason(&u, &zz(-1)), Some(Reason::UnionIndexOutOfRange));
    // apache-avro takes an empty datagram as branch 0 (null); it is not a datum.
    assert_eq!(reason(&u, &[]), Some(Reason::Empty));
}

#[test]
fn negative_block_counts() {
    let json = r#"{"type":"map","values":"long"}"#;
    let schema = parse(json);
    let v = Validator::new(&schema).unwrap();
    // Two entries in one block of 6 bytes ("a" -> 1, "bc" -> -1), then the end.
    let mut x = zz(-2);
    x.extend(zz(7));
    x.extend(b"\x02a\x02\x04bc\x01\x00");
    assert_eq!(v.validate(&x), Ok(()));
    assert!(apache_accepts(&schema, &x));
    // A wrong byte size: apache-avro ignores it, the validator does not.
    x[1] = zz(6)[0];
    let err = v.validate(&x).unwrap_err();
    assert_eq!((err.offset, err.reason), (1, Reason::BlockSizeMismatch));
    assert!(apache_accepts(&schema, &x));

    let doubles = Validator::new(&parse(r#"{"type":"array","items":"double"}"#)).unwrap();
    let mut x = zz(-2);
    x.extend(zz(16));
    x.extend([0; 16]);
    x.push(0);
    assert_eq!(doubles.validate(&x), Ok(()));
    x[1] = zz(15)[0];
    assert_eq!(reason(&doubles, &x), Some(Reason::BlockSizeMismatch));
}

/// `zz(len)` and the bytes: a bytes or string datum.
fn bytes_datum(b: &[u8]) -> Vec<u8> {
    let mut x = zz(b.len() as i64);
    x.extend_from_slice(b);
    x
}

/// Asserts a [`Reason::LogicalTypeRange`] at `offset`.
fn assert_out_of_range(v: &Validator, x: &[u8], offset: usize) -> Invalid {
    let err = v.validate(x).unwrap_err();
    assert_eq!(
        (err.offset, err.reason),
        (offset, Reason::LogicalTypeRange),
        "{err} {x:02x?}"
    );
    err
}

/// Every range-checked logical type on an int or a long, and its
/// inclusive bounds: Python's `datetime` years 1 to 9999 (what fastavro
/// 1.13 converts to without an OverflowError), one day for the times.
const RANGES: &[(&str, Logical, i64, i64)] = &[
    (
        r#"{"type":"int","logicalType":"date"}"#,
        Logical::Date,
        -719_162,
        2_932_896,
    ),
    (
        r#"{"type":"int","logicalType":"time-millis"}"#,
        Logical::TimeMillis,
        0,
        86_399_999,
    ),
    (
        r#"{"type":"long","logicalType":"time-micros"}"#,
        Logical::TimeMicros,
        0,
        86_399_999_999,
    ),
    (
        r#"{"type":"long","logicalType":"timestamp-millis"}"#,
        Logical::TimestampMillis,
        -62_135_596_800_000,
        253_402_300_799_999,
    ),
    (
        r#"{"type":"long","logicalType":"local-timestamp-millis"}"#,
        Logical::LocalTimestampMillis,
        -62_135_596_800_000,
        253_402_300_799_999,
    ),
    (
        r#"{"type":"long","logicalType":"timestamp-micros"}"#,
        Logical::TimestampMicros,
        -62_135_596_800_000_000,
        253_402_300_799_999_999,
    ),
    (
        r#"{"type":"long","logicalType":"local-timestamp-micros"}"#,
        Logical::LocalTimestampMicros,
        -62_135_596_800_000_000,
        253_402_300_799_999_999,
    ),
];

#[test]
fn dates_times_and_timestamps_at_their_bounds() {
    // The bounds, from the calendar: 0001-01-01 is day 1 of the proleptic
    // Gregorian calendar and 1970-01-01 day 719,163; 9999-12-31 is day
    // 3,652,059.
    assert_eq!(FIRST_DAY, 1 - 719_163);
    assert_eq!(LAST_DAY, 3_652_059 - 719_163);
    assert_eq!(FIRST_SECOND, FIRST_DAY * 86_400);
    assert_eq!(LAST_SECOND, (LAST_DAY + 1) * 86_400 - 1);

    for &(json, logical, lo, hi) in RANGES {
        let schema = parse(json);
        let v = Validator::new(&schema).unwrap();
        for ok in [lo, lo + 1, 0, hi - 1, hi] {
            assert_eq!(v.validate(&zz(ok)), Ok(()), "{json} {ok}");
        }
        let int = json.contains("\"int\"");
        let (min, max) = if int {
            (i32::MIN.into(), i32::MAX.into())
        } else {
            (i64::MIN, i64::MAX)
        };
        for bad in [lo - 1, hi + 1, min, max, lo - 1_000_000, hi + 1_000_000] {
            let err = assert_out_of_range(&v, &zz(bad), 0);
            assert_eq!((err.field, err.logical), (None, Some(logical)));
            // Stricter than apache-avro, which reads any number.
            assert!(apache_accepts(&schema, &zz(bad)), "{json} {bad}");
        }
        if int {
            // Beyond 32 bits it is still not an int at all.
            assert_eq!(reason(&v, &zz(1 << 31)), Some(Reason::IntOutOfRange));
        }
        assert_eq!(reason(&v, &zz(hi + 1)[..1]), Some(Reason::Truncated));
    }

    // Issue 7's value: some time in the year 132,177.
    let micros = Validator::new(&parse(RANGES[5].0)).unwrap();
    let err = assert_out_of_range(&micros, &zz(4_108_947_283_768_568_201), 0);
    assert_eq!(
        err.to_string(),
        "the datum: timestamp-micros value at offset 0 is outside years 1 to 9999 \
         (0001-01-01 to 9999-12-31)"
    );

    // Every long of nanoseconds lies within years 1677 to 2262.
    for json in [
        r#"{"type":"long","logicalType":"timestamp-nanos"}"#,
        r#"{"type":"long","logicalType":"local-timestamp-nanos"}"#,
    ] {
        let v = Validator::new(&parse(json)).unwrap();
        assert!(matches!(v.nodes[v.root as usize], Node::Long));
        for ok in [i64::MIN, -1, 0, i64::MAX] {
            assert_eq!(v.validate(&zz(ok)), Ok(()), "{json} {ok}");
        }
    }
    // A plain long stays a plain long.
    let long = Validator::new(&parse(r#""long""#)).unwrap();
    assert!(matches!(long.nodes[long.root as usize], Node::Long));
    assert!(long.checks.is_empty());
}

/// `n` in big-endian two's complement, in its fewest bytes (none for 0),
/// then sign-extended by `extra` bytes.
fn twos(n: i128, extra: usize) -> Vec<u8> {
    let full = n.to_be_bytes();
    let sign = if n < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    while start < 16
        && full[start] == sign
        && (start == 15 || full[start + 1] & 0x80 == sign & 0x80)
    {
        start += 1;
    }
    if n == -1 {
        start = 15;
    }
    let mut out = vec![sign; extra];
    out.extend_from_slice(&full[start..]);
    out
}

fn decimal_bytes(precision: impl std::fmt::Display) -> Schema {
    parse(&format!(
        r#"{{"type":"bytes","logicalType":"decimal","precision":{precision},"scale":1}}"#
    ))
}

fn decimal_fixed(size: impl std::fmt::Display, precision: impl std::fmt::Display) -> Schema {
    parse(&format!(
        r#"{{"type":"fixed","name":"D","size":{size},"logicalType":"decimal","precision":{precision}}}"#
    ))
}

#[test]
fn decimals_on_bytes_fit_their_precision() {
    assert_eq!(twos(0, 0), Vec::<u8>::new());
    assert_eq!(twos(-1, 0), [0xff]);
    assert_eq!(twos(128, 0), [0x00, 0x80]);
    assert_eq!(twos(-128, 1), [0xff, 0x80]);
    assert_eq!(twos(-129, 0), [0xff, 0x7f]);

    let schema = decimal_bytes(3);
    let v = Validator::new(&schema).unwrap();
    let ok: &[&[u8]] = &[
        b"",
        &[0x00],
        &[0xff],
        &[0x03, 0xe7],                   // 999
        &[0xfc, 0x19],                   // -999
        &[0x00, 0x00, 0x00, 0x03, 0xe7], // 999, sign-extended
        &[0xff, 0xff, 0xfc, 0x19],       // -999, sign-extended
        &[0x00, 0x80],                   // 128
        &[0x80],                         // -128
    ];
    for b in ok {
        assert_eq!(v.validate(&bytes_datum(b)), Ok(()), "{b:02x?}");
    }
    let bad: &[&[u8]] = &[
        &[0x03, 0xe8],             // 1000
        &[0xfc, 0x18],             // -1000
        &[0x00, 0x00, 0x03, 0xe8], // 1000, sign-extended
        &[0xff, 0xff, 0xfc, 0x18], // -1000, sign-extended
        &[0x7f, 0xff],
        &[0x80, 0x00],
        &[0x01, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for b in bad {
        let x = bytes_datum(b);
        let err = assert_out_of_range(&v, &x, 0);
        assert_eq!(err.logical, Some(Logical::Decimal));
        // apache-avro reads a decimal without its precision.
        assert!(apache_accepts(&schema, &x));
    }

    // Long values: 60,000 bytes of sign extension, then the value.
    for (sign, last, fits) in [
        (0x00, [0x03, 0xe7], true),
        (0x00, [0x03, 0xe8], false),
        (0xff, [0xfc, 0x19], true),
        (0xff, [0xfc, 0x18], false),
    ] {
        let mut b = vec![sign; 60_000];
        b.extend(last);
        let x = bytes_datum(&b);
        if fits {
            assert_eq!(v.validate(&x), Ok(()));
        } else {
            assert_out_of_range(&v, &x, 0);
        }
    }
    let x = bytes_datum(&[0x7f; 60_000]);
    assert_out_of_range(&v, &x, 0);
    // A length far past the end is truncated, not out of range.
    let mut x = zz(1 << 62);
    x.push(0x7f);
    assert_eq!(reason(&v, &x), Some(Reason::Truncated));
    assert_eq!(reason(&v, &zz(-2)), Some(Reason::NegativeLength));

    // Precision 1: -9 to 9.
    let one = Validator::new(&decimal_bytes(1)).unwrap();
    for (n, fits) in [(9, true), (-9, true), (10, false), (-10, false), (0, true)] {
        let x = bytes_datum(&twos(n, 0));
        assert_eq!(one.validate(&x).is_ok(), fits, "{n}");
    }

    // Against i128 arithmetic: precisions 1 to 38, values near the bounds
    // and anywhere, in their fewest bytes and sign-extended.
    let mut rng = Rng(0xdec1_3a15);
    for precision in 1..=38usize {
        let v = Validator::new(&decimal_bytes(precision)).unwrap();
        let bound = 10i128.pow(precision as u32);
        for _ in 0..400 {
            let near = rng.below(5) as i128 - 2;
            let n = match rng.below(4) {
                0 => bound + near,
                1 => -bound + near,
                2 => ((rng.next() as i128) << 64 | rng.next() as i128) >> rng.below(128),
                _ => (rng.long() as i128) % bound,
            };
            let x = bytes_datum(&twos(n, rng.below(3)));
            let fits = n.unsigned_abs() < bound as u128;
            assert_eq!(v.validate(&x).is_ok(), fits, "{precision} {n}");
        }
    }
}

#[test]
fn decimals_on_fixed_fit_their_precision() {
    // fixed(2), precision 4: -9,999 to 9,999.
    let schema = decimal_fixed(2, 4);
    let v = Validator::new(&schema).unwrap();
    for (b, fits) in [
        ([0x27, 0x0f], true),  // 9999
        ([0xd8, 0xf1], true),  // -9999
        ([0x00, 0x00], true),  // 0
        ([0xff, 0xff], true),  // -1
        ([0x27, 0x10], false), // 10000
        ([0xd8, 0xf0], false), // -10000
        ([0x7f, 0xff], false),
        ([0x80, 0x00], false),
    ] {
        if fits {
            assert_eq!(v.validate(&b), Ok(()), "{b:02x?}");
        } else {
            assert_out_of_range(&v, &b, 0);
            assert!(apache_accepts(&schema, &b));
        }
    }
    assert_eq!(reason(&v, &[0x27]), Some(Reason::Truncated));

    // fixed(8), precision 18 and fixed(16), precision 38, at the bounds.
    for (size, precision) in [(8usize, 18usize), (16, 38)] {
        let v = Validator::new(&decimal_fixed(size, precision)).unwrap();
        let bound = 10i128.pow(precision as u32);
        for (n, fits) in [
            (bound - 1, true),
            (-(bound - 1), true),
            (bound, false),
            (-bound, false),
            (0, true),
        ] {
            let b = n.to_be_bytes();
            let x = &b[16 - size..];
            if size < 16 && i64::try_from(n).is_err() {
                continue;
            }
            assert_eq!(v.validate(x).is_ok(), fits, "{size} {n}");
        }
        let mut most_negative = vec![0; size];
        most_negative[0] = 0x80;
        assert_out_of_range(&v, &most_negative, 0);
    }

    // fixed(1), precision 2: -99 to 99; precision 3 cannot be exceeded.
    let v = Validator::new(&decimal_fixed(1, 2)).unwrap();
    assert_eq!(v.validate(&[99]), Ok(()));
    assert_eq!(v.validate(&[(-99i8) as u8]), Ok(()));
    assert_out_of_range(&v, &[100], 0);
    assert_out_of_range(&v, &[(-100i8) as u8], 0);
    assert_out_of_range(&v, &[0x80], 0);
    let v = Validator::new(&decimal_fixed(1, 3)).unwrap();
    assert!(matches!(v.nodes[v.root as usize], Node::Skip(1)));

    // A fixed too small to go out of range (2 bytes hold at most 32,768
    // in magnitude; precision 5 allows 99,999), a uuid on fixed and a
    // duration stay plain fixed, merged with their neighbours.
    let rec = parse(
        r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"double"},
            {"name":"d","type":{"type":"fixed","name":"D","size":2,"logicalType":"decimal","precision":5}},
            {"name":"u","type":{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}},
            {"name":"dur","type":{"type":"fixed","name":"Du","size":12,"logicalType":"duration"}}]}"#,
    );
    let v = Validator::new(&rec).unwrap();
    assert!(matches!(v.nodes[v.root as usize], Node::Skip(38)));
    assert_eq!(v.validate(&[0xff; 38]), Ok(()));
    // A checked one is not merged, but the fields around it still are.
    let rec = parse(
        r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"double"},
            {"name":"d","type":{"type":"fixed","name":"D","size":2,"logicalType":"decimal","precision":4}},
            {"name":"b","type":"double"},
            {"name":"c","type":"float"},
            {"name":"d2","type":"D"}]}"#,
    );
    let v = Validator::new(&rec).unwrap();
    let Node::Record { first, len } = v.nodes[v.root as usize] else {
        panic!("{:?}", v.nodes);
    };
    let kinds: Vec<Node> = v.edges[first as usize..(first + len) as usize]
        .iter()
        .map(|&e| v.nodes[e as usize])
        .collect();
    assert!(
        matches!(
            kinds[..],
            [
                Node::Skip(8),
                Node::Checked {
                    kind: CheckKind::DecimalFixed,
                    ..
                },
                Node::Skip(12),
                Node::Checked {
                    kind: CheckKind::DecimalFixed,
                    ..
                }
            ]
        ),
        "{kinds:?}"
    );
    let mut x = vec![0u8; 24];
    assert_eq!(v.validate(&x), Ok(()));
    x[22..].copy_from_slice(&[0x27, 0x10]);
    let err = assert_out_of_range(&v, &x, 22);
    assert_eq!(err.field, Some("d2"));

    // A fixed of 10^12 bytes: truncated, whatever the precision.
    let v = Validator::new(&decimal_fixed(1_000_000_000_000u64, 5)).unwrap();
    assert_eq!(reason(&v, &[0; 100]), Some(Reason::Truncated));
}

#[test]
fn huge_precisions() {
    // 65,535 bytes of 0x7f 0xff…: 2^524,279 - 1, about 10^157,823.3, so
    // 157,824 digits: one too many for precision 157,823.
    let mut top = vec![0xff; 65_535];
    top[0] = 0x7f;
    let start = Instant::now();
    let v = Validator::new(&decimal_bytes(157_823)).unwrap();
    let compiled = start.elapsed();
    assert_out_of_range(&v, &bytes_datum(&top), 0);
    top[0] = 0x0f;
    assert_eq!(v.validate(&bytes_datum(&top)), Ok(()));
    // From 157,824 digits on nothing of up to 64 KiB can be out of
    // range: not checked, and compiled at once whatever the precision.
    let start = Instant::now();
    for precision in [157_824, 1 << 40, u64::MAX] {
        let v = Validator::new(&decimal_bytes(precision)).unwrap();
        assert!(matches!(v.nodes[v.root as usize], Node::Bytes));
        top[0] = 0x7f;
        assert_eq!(v.validate(&bytes_datum(&top)), Ok(()));
    }
    assert!(start.elapsed() < StdDuration::from_millis(100));
    // The largest bound takes a moment to compute, once.
    assert!(compiled < StdDuration::from_secs(10), "{compiled:?}");
}

#[test]
fn uuid_strings_and_bytes() {
    let schema = parse(r#"{"type":"string","logicalType":"uuid"}"#);
    let v = Validator::new(&schema).unwrap();
    let s = |t: &str| bytes_datum(t.as_bytes());
    for good in [
        "01234567-89ab-cdef-0123-456789abcdef",
        "01234567-89AB-CDEF-0123-456789ABCDEF",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-FFFF-ffff-FFFF-ffffffffffff",
    ] {
        assert_eq!(v.validate(&s(good)), Ok(()), "{good}");
        assert!(apache_accepts(&schema, &s(good)), "{good}");
    }
    let id = encode(&schema, Value::Uuid(Uuid::from_u128(0x1234)));
    assert_eq!(v.validate(&id), Ok(()));
    // Forms the `uuid` crate (and Python) also parse, but not the one the
    // spec names: stricter than apache-avro.
    for other in [
        "0123456789abcdef0123456789abcdef",
        "{01234567-89ab-cdef-0123-456789abcdef}",
        "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
    ] {
        let err = assert_out_of_range(&v, &s(other), 0);
        assert_eq!(err.logical, Some(Logical::Uuid));
        assert!(apache_accepts(&schema, &s(other)), "{other}");
    }
    for bad in [
        "",
        "abc",
        "01234567-89ab-cdef-0123-456789abcde",
        "01234567-89ab-cdef-0123-456789abcdef0",
        "01234567089ab-cdef-0123-456789abcdef",
        "0123456-789ab-cdef-0123-456789abcdef",
        "g1234567-89ab-cdef-0123-456789abcdef",
        "+1234567-89ab-cdef-0123-456789abcdef",
        " 1234567-89ab-cdef-0123-456789abcdef",
        "01234567-89ab-cdef-0123-456789abcd\u{0661}",
    ] {
        assert_out_of_range(&v, &s(bad), 0);
        assert!(!apache_accepts(&schema, &s(bad)), "{bad}");
    }
    // Invalid UTF-8 is still invalid UTF-8, at its byte.
    let mut x = s("01234567-89ab-cdef-0123-456789abcdef");
    x[5] = 0xff;
    let err = v.validate(&x).unwrap_err();
    assert_eq!((err.offset, err.reason), (5, Reason::InvalidUtf8));
    let x = s("01234567-89ab-cdef-0123-456789abcdef");
    assert_eq!(reason(&v, &x[..20]), Some(Reason::Truncated));

    // uuid on bytes: exactly 16 bytes (apache-avro's Uuid::from_slice).
    let b = parse(r#"{"type":"bytes","logicalType":"uuid"}"#);
    assert!(matches!(b, Schema::Uuid(UuidSchema::Bytes)));
    let v = Validator::new(&b).unwrap();
    assert_eq!(v.validate(&bytes_datum(&[7; 16])), Ok(()));
    for len in [0, 1, 15, 17, 36] {
        let x = bytes_datum(&vec![7; len]);
        assert_out_of_range(&v, &x, 0);
        assert!(!apache_accepts(&b, &x), "{len}");
    }
    // uuid on fixed(16): any 16 bytes, a plain fixed.
    let f = parse(r#"{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}"#);
    assert!(matches!(f, Schema::Uuid(UuidSchema::Fixed(_))));
    let v = Validator::new(&f).unwrap();
    assert!(matches!(v.nodes[v.root as usize], Node::Skip(16)));
    assert_eq!(v.validate(&[0xff; 16]), Ok(()));

    // big-decimal is checked as bytes only: deliberately laxer than
    // apache-avro, which parses the content.
    let big = parse(r#"{"type":"bytes","logicalType":"big-decimal"}"#);
    let v = Validator::new(&big).unwrap();
    // Well formed: 2 bytes of unscaled value, then scale 3, as bytes of 4.
    let good = [0x08, 0x04, 0x01, 0x00, 0x06];
    assert_eq!(v.validate(&good), Ok(()));
    assert!(apache_accepts(&big, &good));
    assert_eq!(v.validate(&[0x02, 0x7f]), Ok(()));
    assert!(!apache_accepts(&big, &[0x02, 0x7f]));
}

const PATHS: &str = r#"{"type":"record","name":"R","namespace":"t","fields":[
    {"name":"time","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"inner","type":{"type":"record","name":"Inner","fields":[
        {"name":"n","type":"int"},
        {"name":"when","type":{"type":"int","logicalType":"date"}}]}},
    {"name":"recs","type":{"type":"array","items":"Inner"}},
    {"name":"by_day","type":{"type":"map","values":{"type":"int","logicalType":"time-millis"}}},
    {"name":"maybe","type":["null",{"type":"long","logicalType":"timestamp-millis"}]},
    {"name":"price","type":{"type":"fixed","name":"Price","size":4,"logicalType":"decimal","precision":4,"scale":2}},
    {"name":"cost","type":"Price"},
    {"name":"id","type":{"type":"string","logicalType":"uuid"}}
]}"#;

/// A datum of [`PATHS`], with an out-of-range value in field `bad` (if
/// any): the datum and the offset of the bad value.
fn paths_datum(bad: &str) -> (Vec<u8>, usize) {
    let mut x = Vec::new();
    let mut at = usize::MAX;
    let mut put = |x: &mut Vec<u8>, field: &str, good: Vec<u8>, wrong: Vec<u8>| {
        if field == bad {
            at = x.len();
            x.extend(wrong);
        } else {
            x.extend(good);
        }
    };
    put(&mut x, "time", zz(0), zz(4_108_947_283_768_568_201));
    x.extend(zz(1)); // inner.n
    put(&mut x, "inner", zz(0), zz(2_932_897));
    x.extend(zz(2)); // recs: a block of 2
    x.extend(zz(1)); // recs[0].n
    x.extend(zz(2));
    x.extend(zz(1)); // recs[1].n
    put(&mut x, "recs", zz(3), zz(-719_163));
    x.extend(zz(0));
    x.extend(zz(1)); // by_day: a block of 1
    x.extend(bytes_datum(b"mon"));
    put(&mut x, "by_day", zz(5), zz(86_400_000));
    x.extend(zz(0));
    x.extend(zz(1)); // maybe: the second branch
    put(&mut x, "maybe", zz(7), zz(i64::MAX));
    put(&mut x, "price", vec![0, 0, 0, 1], vec![0, 0, 0x27, 0x10]);
    put(&mut x, "cost", vec![0xff; 4], vec![0xff, 0xff, 0xd8, 0xf0]);
    put(
        &mut x,
        "id",
        bytes_datum(b"01234567-89ab-cdef-0123-456789abcdef"),
        bytes_datum(b"01234567-89ab-cdef-0123-456789abcdeg"),
    );
    (x, at)
}

#[test]
fn out_of_range_values_name_their_field() {
    let schema = parse(PATHS);
    let v = Validator::new(&schema).unwrap();
    let (good, _) = paths_datum("");
    assert_eq!(v.validate(&good), Ok(()));
    assert!(apache_accepts(&schema, &good));
    for (bad, path, logical) in [
        ("time", "time", Logical::TimestampMicros),
        ("inner", "inner.when", Logical::Date),
        ("recs", "recs[].when", Logical::Date),
        ("by_day", "by_day{}", Logical::TimeMillis),
        ("maybe", "maybe", Logical::TimestampMillis),
        ("price", "price", Logical::Decimal),
        ("cost", "cost", Logical::Decimal),
        ("id", "id", Logical::Uuid),
    ] {
        let (x, at) = paths_datum(bad);
        let err = assert_out_of_range(&v, &x, at);
        assert_eq!((err.field, err.logical), (Some(path), Some(logical)));
        let text = err.to_string();
        assert!(text.starts_with(&format!("field `{path}`: ")), "{text}");
        assert!(text.contains(logical.as_str()), "{text}");
        assert!(apache_accepts(&schema, &x) || bad == "id", "{bad}");
    }
    let (x, _) = paths_datum("inner");
    let err = v.validate(&x).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `inner.when`: date value at offset 2 is outside years 1 to 9999 \
         (0001-01-01 to 9999-12-31)"
    );
    let (x, _) = paths_datum("by_day");
    assert_eq!(
        v.validate(&x).unwrap_err().to_string(),
        format!(
            "field `by_day{{}}`: time-millis value at offset {} is not a time of day \
             (0 to 24 h, 24 h excluded)",
            paths_datum("by_day").1
        )
    );
    let (x, _) = paths_datum("price");
    assert!(v
        .validate(&x)
        .unwrap_err()
        .to_string()
        .ends_with("decimal at offset 18 has more digits than its precision"));

    // The paths are interned: compiling the schema again reuses them.
    let again = Validator::new(&schema).unwrap();
    let (x, _) = paths_datum("recs");
    let (a, b) = (v.validate(&x).unwrap_err(), again.validate(&x).unwrap_err());
    assert!(std::ptr::eq(a.field.unwrap(), b.field.unwrap()));
    assert!(std::ptr::eq(intern("recs[].when"), a.field.unwrap()));

    // Other reasons name no field.
    let err = v.validate(&good[..good.len() - 1]).unwrap_err();
    assert_eq!(
        (err.reason, err.field, err.logical),
        (Reason::Truncated, None, None)
    );
}

#[test]
fn recursive_types_name_their_first_level() {
    let node = r#"{"type":"record","name":"Node","fields":[
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"next","type":["null","Node"]}]}"#;
    // Three levels, the last out of range.
    let mut x = Vec::new();
    for (i, at) in [0, 1, i64::MIN].into_iter().enumerate() {
        x.extend(zz(at));
        x.extend(zz(if i < 2 { 1 } else { 0 }));
    }
    let v = Validator::new(&parse(node)).unwrap();
    let err = assert_out_of_range(&v, &x, 4);
    assert_eq!(err.field, Some("at"));
    let wrapped =
        format!(r#"{{"type":"record","name":"W","fields":[{{"name":"list","type":{node}}}]}}"#);
    let v = Validator::new(&parse(&wrapped)).unwrap();
    assert_eq!(assert_out_of_range(&v, &x, 4).field, Some("list.at"));
}

#[test]
fn a_type_reused_at_every_level_compiles_small() {
    // L0 holds a timestamp; each L(k) holds two L(k-1): 2^24 uses of L0,
    // far too many to compile one copy each.
    let mut json = r#"{"type":"record","name":"L0","fields":[
        {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#
        .to_owned();
    for k in 1..=24 {
        json = format!(
            r#"{{"type":"record","name":"L{k}","fields":[{{"name":"a","type":{json}}},{{"name":"b","type":"L{}"}}]}}"#,
            k - 1
        );
    }
    let start = Instant::now();
    let v = Validator::new(&parse(&json)).unwrap();
    assert!(start.elapsed() < StdDuration::from_secs(5));
    assert!(v.nodes.len() < 2 * UNFOLD_LIMIT, "{}", v.nodes.len());
    assert!(v.checks.len() < UNFOLD_LIMIT, "{}", v.checks.len());
    // The first use has its own path.
    let mut x = zz(i64::MAX);
    x.extend(vec![0; (1 << 24) - 1]);
    let err = assert_out_of_range(&v, &x, 0);
    assert_eq!(err.field, Some(&*format!("{}t", "a.".repeat(24))));
    assert_eq!(v.validate(&vec![0; 1 << 24]), Ok(()));
}

thread_local! {
    /// Allocations made by this thread (see [`CountingAllocator`]).
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The system allocator, counting each thread's allocations so that a
/// test can show some code makes none.
struct CountingAllocator;

// SAFETY: forwards to the system allocator; the counter is a
// const-initialised thread-local without a destructor.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn validate_does_not_allocate() {
    let mut rng = Rng(0xa110_c8ed);
    let all = parse(ALL_TYPES);
    let paths = parse(PATHS);
    let mut cases: Vec<(Validator, Vec<Vec<u8>>)> = vec![
        (
            Validator::new(&all).unwrap(),
            (0..200)
                .map(|_| {
                    let x = encode(&all, all_types_value(&mut rng));
                    if rng.below(2) == 0 {
                        x
                    } else {
                        mutate(&mut rng, &x)
                    }
                })
                .collect(),
        ),
        (
            Validator::new(&paths).unwrap(),
            [
                "", "time", "inner", "recs", "by_day", "maybe", "price", "cost", "id",
            ]
            .iter()
            .map(|bad| paths_datum(bad).0)
            .collect(),
        ),
    ];
    // And schemas with a fast path, valid datums and not.
    for json in [SAMPLES_800, FIXED_ONLY, MIXED] {
        let schema = parse(json);
        let v = Validator::new(&schema).unwrap();
        assert!(v.fast.is_some());
        let datums = (0..200)
            .map(|_| {
                let mut x = Vec::new();
                write_random(&mut rng, &schema, &mut x);
                if rng.below(2) == 0 {
                    x
                } else {
                    mutate(&mut rng, &x)
                }
            })
            .collect();
        cases.push((v, datums));
    }
    let mut verdicts = [0usize; 2];
    let before = ALLOCATIONS.with(|n| n.get());
    for (v, datums) in &cases {
        for x in datums {
            verdicts[usize::from(v.validate(x).is_err())] += 1;
        }
    }
    assert_eq!(ALLOCATIONS.with(|n| n.get()), before);
    assert!(verdicts[0] > 50 && verdicts[1] > 50, "{verdicts:?}");
}

#[test]
fn named_references_across_namespaces() {
    let schema = parse(
        r#"{"type":"record","name":"R","namespace":"a","fields":[
            {"name":"x","type":{"type":"record","name":"X","namespace":"b","fields":[
                {"name":"y","type":{"type":"fixed","name":"Y","size":2}},
                {"name":"s","type":"string"}]}},
            {"name":"x2","type":"b.X"},
            {"name":"y2","type":"b.Y"},
            {"name":"r","type":["null","R"]}]}"#,
    );
    let v = Validator::new(&schema).unwrap();
    let x_value = |s: &str| {
        record(vec![
            ("y", Value::Fixed(2, vec![1, 2])),
            ("s", Value::String(s.to_owned())),
        ])
    };
    let inner = record(vec![
        ("x", x_value("h")),
        ("x2", x_value("")),
        ("y2", Value::Fixed(2, vec![3, 4])),
        ("r", Value::Union(0, Box::new(Value::Null))),
    ]);
    let outer = record(vec![
        ("x", x_value("i")),
        ("x2", x_value("jk")),
        ("y2", Value::Fixed(2, vec![5, 6])),
        ("r", Value::Union(1, Box::new(inner))),
    ]);
    let x = &encode(&schema, outer)[..];
    assert!(apache_accepts(&schema, x));
    assert_eq!(reason(&v, &x[..x.len() - 1]), Some(Reason::Truncated));
}

#[test]
fn compile_errors() {
    let looped = parse(r#"{"type":"record","name":"A","fields":[{"name":"a","type":"A"}]}"#);
    let err = Validator::new(&looped).unwrap_err();
    assert!(matches!(err, CompileError::Unencodable { .. }), "{err}");
    assert!(err.to_string().contains("`A`"), "{err}");
    // Through a union with an escape it is fine.
    assert!(Validator::new(&parse(LIST)).is_ok());
}

#[test]
fn labels_and_messages() {
    let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(Reason::as_str).collect();
    assert_eq!(labels.len(), Reason::ALL.len());
    assert_eq!(Reason::ALL.len(), 14);
    for label in labels {
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{label}"
        );
    }
    let e = Invalid {
        offset: 57,
        reason: Reason::TrailingBytes,
        field: None,
        logical: None,
    };
    assert_eq!(
        e.to_string(),
        "trailing bytes: the datum ends at offset 57, before the datagram"
    );
    assert_eq!(Reason::TooDeep.to_string(), "too_deep");
    assert_eq!(Reason::LogicalTypeRange.to_string(), "logical_type_range");
    let e = Invalid {
        offset: 3,
        reason: Reason::LogicalTypeRange,
        field: Some("a.b"),
        logical: Some(Logical::Uuid),
    };
    assert_eq!(
        e.to_string(),
        "field `a.b`: uuid at offset 3 is not a UUID (a string of 8-4-4-4-12 hex digits, \
         or 16 bytes)"
    );

    // The walk's error and nodes stay two words: the recursive walk
    // returns its result in registers, as before logical types had checks
    // (16 bytes on 64-bit targets; 12 where a word is 4 bytes).
    assert!(std::mem::size_of::<Result<(), Fault>>() <= 2 * std::mem::size_of::<u64>());
    assert_eq!(std::mem::size_of::<Node>(), 16);

    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Validator>();
    send_sync::<Invalid>();
    send_sync::<CompileError>();
}

// The fast path (validate/fast.rs).

const SAMPLES_64: &str = include_str!("../../../benches/schemas/samples-64.avsc");
const SAMPLES_800: &str = include_str!("../../../benches/schemas/samples-800.avsc");
const SAMPLES_8K: &str = include_str!("../../../benches/schemas/samples-8k.avsc");

/// Fixed-size fields and bounded varints only, a nested record among
/// them, an array of fixed-size records.
const FIXED_ONLY: &str = r#"{"type":"record","name":"F","fields":[
    {"name":"b","type":"boolean"},
    {"name":"i","type":"int"},
    {"name":"l","type":"long"},
    {"name":"f","type":"float"},
    {"name":"d","type":"double"},
    {"name":"inner","type":{"type":"record","name":"In","fields":[
        {"name":"x","type":"double"},{"name":"on","type":"boolean"},{"name":"n","type":"int"}]}},
    {"name":"fx","type":{"type":"fixed","name":"F3","size":3}},
    {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}},
    {"name":"pairs","type":{"type":"array","items":{"type":"record","name":"P","fields":[
        {"name":"a","type":"float"},{"name":"b","type":{"type":"fixed","name":"F2","size":2}}]}}},
    {"name":"tail","type":"double"}]}"#;

/// The logical types with a range on ints and longs, and some without.
const LOGICAL_RANGES: &str = r#"{"type":"record","name":"L","fields":[
    {"name":"date","type":{"type":"int","logicalType":"date"}},
    {"name":"t_ms","type":{"type":"int","logicalType":"time-millis"}},
    {"name":"t_us","type":{"type":"long","logicalType":"time-micros"}},
    {"name":"ts_ms","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"ts_ns","type":{"type":"long","logicalType":"timestamp-nanos"}},
    {"name":"lts_ms","type":{"type":"long","logicalType":"local-timestamp-millis"}},
    {"name":"lts_us","type":{"type":"long","logicalType":"local-timestamp-micros"}},
    {"name":"dur","type":{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}},
    {"name":"pairs","type":{"type":"array","items":{"type":"fixed","name":"D2","size":2}}}]}"#;

/// Strings, unions, a map, bytes and arrays of items of varying size (or
/// none) among fast fields: those go to the walker, the rest stay fast.
const MIXED: &str = r#"{"type":"record","name":"M","fields":[
    {"name":"time","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"name","type":"string"},
    {"name":"maybe","type":["null","long",{"type":"int","logicalType":"date"}]},
    {"name":"n","type":"int"},
    {"name":"tags","type":{"type":"map","values":"string"}},
    {"name":"longs","type":{"type":"array","items":"long"}},
    {"name":"nulls","type":{"type":"array","items":"null"}},
    {"name":"blob","type":"bytes"},
    {"name":"x","type":"double"}]}"#;

/// The varint of `z`, as a conforming writer may write it: mostly in its
/// fewest bytes, sometimes padded with continuation bytes up to `max`
/// bytes; rarely (ints only) beyond, which apache-avro reads and the spec
/// does not.
fn put_varint(rng: &mut Rng, out: &mut Vec<u8>, z: u64, max: usize) {
    let start = out.len();
    varint::put(out, z);
    let len = out.len() - start;
    let pad = match rng.below(16) {
        0 | 1 => rng.below(max - len + 1),
        2 if max == 5 => 6 - len + rng.below(5),
        _ => 0,
    };
    if pad > 0 {
        *out.last_mut().unwrap() |= 0x80;
        out.extend(std::iter::repeat_n(0x80, pad - 1));
        out.push(0x00);
    }
}

/// Inclusive bounds of a range-checked logical type.
fn logical_bounds(schema: &Schema) -> Option<(i64, i64)> {
    let logical = match schema {
        Schema::Date => Logical::Date,
        Schema::TimeMillis => Logical::TimeMillis,
        Schema::TimeMicros => Logical::TimeMicros,
        Schema::TimestampMillis => Logical::TimestampMillis,
        Schema::TimestampMicros => Logical::TimestampMicros,
        Schema::LocalTimestampMillis => Logical::LocalTimestampMillis,
        Schema::LocalTimestampMicros => Logical::LocalTimestampMicros,
        _ => return None,
    };
    RANGES
        .iter()
        .find(|r| r.1 == logical)
        .map(|&(_, _, lo, hi)| (lo, hi))
}

/// Writes the items of an array or map: several blocks, some with a
/// negative count and their byte size (now and then a wrong one), then
/// the end; mostly a few items, sometimes a thousand or more.
fn write_blocks(rng: &mut Rng, out: &mut Vec<u8>, item: &mut dyn FnMut(&mut Rng, &mut Vec<u8>)) {
    let mut left = if rng.below(8) == 0 {
        rng.below(2000)
    } else {
        rng.below(6)
    };
    while left > 0 {
        let k = 1 + rng.below(left);
        let mut body = Vec::new();
        for _ in 0..k {
            item(rng, &mut body);
        }
        if rng.below(3) == 0 {
            put_varint(rng, out, zigzag(-(k as i64)), 10);
            let size = body.len() as i64 + if rng.below(10) == 0 { 1 } else { 0 };
            put_varint(rng, out, zigzag(size), 10);
        } else {
            put_varint(rng, out, zigzag(k as i64), 10);
        }
        out.extend(body);
        left -= k;
    }
    put_varint(rng, out, 0, 10);
}

/// Writes a random datum of `schema` (which has no named references) to
/// `out`, in the ways a conforming writer may ([`put_varint`],
/// [`write_blocks`]); logical-type values lie mostly within their range,
/// often at its ends, and now and then just outside.
fn write_random(rng: &mut Rng, schema: &Schema, out: &mut Vec<u8>) {
    if let Some((lo, hi)) = logical_bounds(schema) {
        let v = match rng.below(20) {
            0 => lo - 1,
            1 => hi + 1,
            2..=4 => lo + rng.below(3) as i64,
            5..=7 => hi - rng.below(3) as i64,
            _ => lo + (rng.next() % (hi - lo) as u64) as i64,
        };
        let int = matches!(schema, Schema::Date | Schema::TimeMillis);
        put_varint(rng, out, zigzag(v), if int { 5 } else { 10 });
        return;
    }
    match schema {
        Schema::Null => {}
        Schema::Boolean => out.push(rng.below(2) as u8),
        Schema::Int => {
            let z = zigzag(rng.int().into());
            put_varint(rng, out, z, 5)
        }
        Schema::Long | Schema::TimestampNanos | Schema::LocalTimestampNanos => {
            let z = zigzag(rng.long());
            put_varint(rng, out, z, 10)
        }
        Schema::Float => out.extend((0..4).map(|_| rng.byte())),
        Schema::Double => out.extend((0..8).map(|_| rng.byte())),
        Schema::Fixed(FixedSchema { size, .. }) | Schema::Duration(FixedSchema { size, .. }) => {
            out.extend((0..*size).map(|_| rng.byte()))
        }
        Schema::Bytes => {
            let b = rng.bytes(6);
            put_varint(rng, out, zigzag(b.len() as i64), 10);
            out.extend(b);
        }
        Schema::String => {
            let s = rng.string();
            put_varint(rng, out, zigzag(s.len() as i64), 10);
            out.extend(s.as_bytes());
        }
        Schema::Enum(EnumSchema { symbols, .. }) => {
            let z = zigzag(rng.below(symbols.len()) as i64);
            put_varint(rng, out, z, 5)
        }
        Schema::Array(array) => write_blocks(rng, out, &mut |rng, out| {
            write_random(rng, &array.items, out)
        }),
        Schema::Map(map) => write_blocks(rng, out, &mut |rng, out| {
            write_random(rng, &Schema::String, out);
            write_random(rng, &map.types, out);
        }),
        Schema::Union(union) => {
            let i = rng.below(union.variants().len());
            put_varint(rng, out, zigzag(i as i64), 10);
            write_random(rng, &union.variants()[i], out);
        }
        Schema::Record(record) => {
            for field in &record.fields {
                write_random(rng, &field.schema, out);
            }
        }
        other => unimplemented!("{other:?}"),
    }
}

/// The fast path against the walker on `x`: the same verdict, and
/// [`Validator::validate`] gives exactly the walker's [`Invalid`].
/// Whether `x` is valid.
fn fast_agrees(v: &Validator, x: &[u8]) -> bool {
    let walker = v.validate_walking(x);
    if let Some(fast) = &v.fast {
        assert_eq!(fast.accepts(v, x), walker.is_ok(), "{walker:?} {x:02x?}");
    }
    assert_eq!(v.validate(x), walker, "{x:02x?}");
    walker.is_ok()
}

#[test]
fn fast_path_agrees_with_the_walker_and_apache_avro() {
    let mut rng = Rng(0xfa57_0a7c);
    let mut tally = Tally::default();
    let mut reasons = HashSet::new();
    for (json, fast_only, n) in [
        (FIXED_ONLY, true, 2000),
        (SAMPLES_64, true, 600),
        (SAMPLES_800, true, 600),
        (SAMPLES_8K, true, 200),
        (LOGICAL_RANGES, true, 2000),
        (MIXED, false, 2000),
        (EXAMPLE, false, 600),
    ] {
        let schema = parse(json);
        let v = Validator::new(&schema).unwrap();
        let fast = v.fast.as_ref().expect("a fast path");
        let walks = fast
            .ops()
            .iter()
            .any(|op| matches!(op, fast::Op::Walk { .. }));
        assert_eq!(walks, !fast_only, "{:?}", fast.ops());
        let mut verdicts = [0usize; 2];
        for i in 0..n {
            let mut x = Vec::new();
            write_random(&mut rng, &schema, &mut x);
            if i % 2 == 1 {
                x = mutate(&mut rng, &x);
            }
            verdicts[usize::from(!fast_agrees(&v, &x))] += 1;
            if let Err(e) = v.validate(&x) {
                reasons.insert(e.reason);
            }
            cross_check(&v, &schema, &x, &mut tally);
        }
        // Random bytes, mostly rejected.
        for _ in 0..n / 4 {
            let x = rng.bytes(40);
            fast_agrees(&v, &x);
            cross_check(&v, &schema, &x, &mut tally);
        }
        assert!(
            verdicts[0] > n / 5 && verdicts[1] > n / 5,
            "{verdicts:?} {json}"
        );
    }
    // As the bench's sender writes them: one block, canonical varints.
    for (json, values) in [(SAMPLES_64, 6), (SAMPLES_800, 99), (SAMPLES_8K, 1020)] {
        let v = Validator::new(&parse(json)).unwrap();
        for i in 0..100 {
            let mut x = zz(rng.timestamp_micros());
            x.extend(zz(rng.int().into()));
            x.extend(zz(values));
            x.extend((0..8 * values).map(|_| rng.byte()));
            x.push(0);
            assert!(v.fast.as_ref().unwrap().accepts(&v, &x));
            assert!(fast_agrees(&v, &x));
            if i < 5 {
                for len in 0..x.len() {
                    assert!(!fast_agrees(&v, &x[..len]));
                }
            }
        }
    }
    // The all-types schema, mostly walked.
    let all = parse(ALL_TYPES);
    let v = Validator::new(&all).unwrap();
    assert!(v.fast.is_some());
    for i in 0..1000 {
        let x = encode(&all, all_types_value(&mut rng));
        let x = if i % 2 == 0 { x } else { mutate(&mut rng, &x) };
        fast_agrees(&v, &x);
        cross_check(&v, &all, &x, &mut tally);
    }
    // Every reason the fast path can meet was met (all but nesting too
    // deep, which these schemas do not reach).
    for r in Reason::ALL.iter().filter(|r| **r != Reason::TooDeep) {
        assert!(reasons.contains(r), "{r:?} never met: {reasons:?}");
    }
    assert!(
        tally.both_accept > 2000 && tally.both_reject > 2000,
        "{tally:?}"
    );
    assert!(tally.logical > 100, "{tally:?}");
}

#[test]
fn fast_path_ops() {
    use fast::Op;
    let ops = |json: &str| {
        Validator::new(&parse(json))
            .unwrap()
            .fast
            .map(|f| f.ops().to_vec())
    };
    let int = Op::Int {
        lo: i32::MIN,
        hi: i32::MAX,
    };
    let (lo, hi) = (RANGES[5].2, RANGES[5].3);
    for json in [SAMPLES_64, SAMPLES_800, SAMPLES_8K] {
        assert_eq!(
            ops(json).unwrap(),
            [Op::LongIn { lo, hi }, int, Op::Array { size: 8 }]
        );
    }
    // Runs of fixed-size fields merge across the nested record; the
    // enum is a bounded int; the array's items are records of 6 bytes.
    assert_eq!(
        ops(FIXED_ONLY).unwrap(),
        [
            Op::Boolean,
            int,
            Op::Long,
            Op::Skip(4 + 8 + 8),
            Op::Boolean,
            int,
            Op::Skip(3),
            Op::Int { lo: 0, hi: 2 },
            Op::Array { size: 6 },
            Op::Skip(8),
        ]
    );
    let v = Validator::new(&parse(EXAMPLE)).unwrap();
    let string = v.fast.as_ref().unwrap().ops()[1];
    assert!(
        matches!(string, Op::Walk { node, depth: 1 } if matches!(v.nodes[node as usize], Node::String)),
        "{string:?}"
    );
    assert_eq!(
        ops(EXAMPLE).unwrap()[2..],
        [int, Op::Skip(32)],
        "{:?}",
        ops(EXAMPLE)
    );
    assert_eq!(
        ops(r#"{"type":"int","logicalType":"date"}"#).unwrap(),
        [Op::Int {
            lo: -719_162,
            hi: 2_932_896
        }]
    );
    // Nothing to gain: everything would be walked.
    for json in [
        r#""null""#,
        r#"["null","long"]"#,
        r#"{"type":"map","values":"long"}"#,
        r#"{"type":"array","items":"long"}"#,
        r#"{"type":"record","name":"S","fields":[{"name":"s","type":"string"},{"name":"n","type":"null"}]}"#,
    ] {
        assert_eq!(ops(json), None, "{json}");
    }
    // An enum without symbols takes no index.
    let none = r#"{"type":"enum","name":"N","symbols":[]}"#;
    let v = Validator::new(&parse(none)).unwrap();
    assert_eq!(ops(none).unwrap(), [Op::Int { lo: 0, hi: -1 }]);
    assert!(!fast_agrees(&v, &[0]));
    // More than 1,024 ops: the walker only.
    let fields = |n: usize| {
        let fields: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"name":"f{i}","type":"int"}}"#))
            .collect();
        format!(
            r#"{{"type":"record","name":"W","fields":[{}]}}"#,
            fields.join(",")
        )
    };
    assert_eq!(ops(&fields(1024)).map(|o| o.len()), Some(1024));
    assert_eq!(ops(&fields(1025)), None);
    let v = Validator::new(&parse(&fields(1025))).unwrap();
    assert!(fast_agrees(&v, &[0; 1025]));
}

/// `inner` inside `levels` records of `{"v": FIRST, "r": inner}`,
/// built without JSON (whose parser stops at 128 levels).
fn nested(levels: usize, first: &str, inner: Schema) -> Schema {
    let template = parse(&format!(
        r#"{{"type":"record","name":"T","fields":[
            {{"name":"v","type":"{first}"}},{{"name":"r","type":"null"}}]}}"#
    ));
    let mut schema = inner;
    for k in (0..levels).rev() {
        let Schema::Record(mut record) = template.clone() else {
            unreachable!()
        };
        record.name = Name::new(format!("R{k}")).unwrap();
        record.fields[1].schema = schema;
        schema = Schema::Record(record);
    }
    schema
}

#[test]
fn fast_path_nesting_limit() {
    // 130 records, each a long and the next: at depth 128 the record is
    // handed to the walker, which refuses it as too deep.
    let last = parse(r#"{"type":"record","name":"Last","fields":[{"name":"v","type":"long"}]}"#);
    let v = Validator::new(&nested(129, "long", last)).unwrap();
    let ops = v.fast.as_ref().unwrap().ops();
    assert_eq!(ops.len(), 129);
    assert!(ops[..128].iter().all(|&op| op == fast::Op::Long));
    assert!(matches!(ops[128], fast::Op::Walk { depth: 128, .. }));
    let x = [0u8; 130];
    assert!(!fast_agrees(&v, &x));
    let err = v.validate(&x).unwrap_err();
    assert_eq!((err.offset, err.reason), (128, Reason::TooDeep));
    // One level fewer passes.
    let last = parse(r#"{"type":"record","name":"Last","fields":[{"name":"v","type":"long"}]}"#);
    let v = Validator::new(&nested(127, "long", last)).unwrap();
    assert!(v
        .fast
        .as_ref()
        .unwrap()
        .ops()
        .iter()
        .all(|&op| op == fast::Op::Long));
    assert!(fast_agrees(&v, &[0u8; 128]));

    // An array at the limit is walked too.
    let doubles = parse(r#"{"type":"array","items":"double"}"#);
    let v = Validator::new(&nested(128, "int", doubles)).unwrap();
    let ops = v.fast.as_ref().unwrap().ops();
    assert!(matches!(ops[128], fast::Op::Walk { depth: 128, .. }));
    let err = v.validate(&[0u8; 129]).unwrap_err();
    assert_eq!((err.offset, err.reason), (128, Reason::TooDeep));
    let doubles = parse(r#"{"type":"array","items":"double"}"#);
    let v = Validator::new(&nested(127, "int", doubles)).unwrap();
    assert_eq!(
        v.fast.as_ref().unwrap().ops()[127],
        fast::Op::Array { size: 8 }
    );
    let mut x = vec![0u8; 127];
    x.extend(zz(1));
    x.extend([0; 8]);
    x.push(0);
    assert!(fast_agrees(&v, &x));
}
