//! The datagram validator, differential against apache-avro.
//!
//! Input: one byte that picks a schema from a small checked-in set (every Avro
//! type, logical types, nested and recursive records, arrays, maps, unions,
//! enums, fixed, and the bench's samples record, which takes the fast path
//! throughout), then the datagram.
//!
//! Oracle:
//! - `Validator::validate` (fast path, then the walker) and
//!   `Validator::validate_walking` (the walker alone) give the same result;
//! - `Validator::validate` accepts => apache-avro decodes the datagram and
//!   consumes every byte;
//! - apache-avro decodes it, consuming every byte, and the validator rejects
//!   => the reason is one of the documented deliberate differences (module doc
//!   of `relay_channel::validate`, "Differences from apache-avro");
//! - nothing panics.
#![no_main]

use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use relay_channel::validate::Validator;

/// The schemas, by name. The first byte of an input picks one (modulo).
const SCHEMAS: &[(&str, &str)] = &[
    ("example", include_str!("../../channels.d/example.avsc")),
    ("all_types", include_str!("../schemas/all_types.avsc")),
    ("logical", include_str!("../schemas/logical.avsc")),
    ("list", include_str!("../schemas/list.avsc")),
    ("tree", include_str!("../schemas/tree.avsc")),
    ("union", include_str!("../schemas/union.avsc")),
    ("empty_items", include_str!("../schemas/empty_items.avsc")),
    ("scalars", include_str!("../schemas/scalars.avsc")),
    (
        "samples",
        include_str!("../../benches/schemas/samples-800.avsc"),
    ),
];

struct Compiled {
    name: &'static str,
    validator: Validator,
    /// What apache-avro decodes with: the schema without the logical types
    /// whose content apache-avro parses and the validator deliberately does
    /// not (uuid, big-decimal: "Laxer" in the module doc).
    oracle: Schema,
}

fn compiled() -> &'static [Compiled] {
    static C: OnceLock<Vec<Compiled>> = OnceLock::new();
    C.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|&(name, json)| {
                let schema = Schema::parse_str(json).expect("checked-in schema parses");
                let validator = Validator::new(&schema).expect("checked-in schema compiles");
                let lax = json
                    .replace("\"uuid\"", "\"not-uuid\"")
                    .replace("\"big-decimal\"", "\"not-big-decimal\"");
                let oracle = Schema::parse_str(&lax).expect("oracle schema parses");
                Compiled {
                    name,
                    validator,
                    oracle,
                }
            })
            .collect()
    })
}

/// How many bytes apache-avro's decode of one datum of `schema` consumes.
fn apache_consumed(schema: &Schema, x: &[u8]) -> Result<usize, apache_avro::Error> {
    let reader = GenericDatumReader::builder(schema).build()?;
    let mut rest = x;
    reader.read_value(&mut rest)?;
    Ok(x.len() - rest.len())
}

/// Whether `x[at..]` starts with an int varint of 6 to 10 bytes whose value
/// fits in 32 bits: apache-avro reads it, the spec (and Java) do not.
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

fuzz_target!(|data: &[u8]| {
    let Some((&pick, x)) = data.split_first() else {
        return;
    };
    let c = &compiled()[pick as usize % SCHEMAS.len()];
    let name = c.name;
    let verdict = c.validator.validate(x);
    let walked = c.validator.validate_walking(x);
    assert_eq!(
        verdict, walked,
        "{name}: the fast path and the walker disagree: {x:02x?}"
    );
    let err = match verdict {
        Ok(()) => {
            let theirs = apache_consumed(&c.oracle, x);
            assert!(
                matches!(theirs, Ok(n) if n == x.len()),
                "{name}: the validator accepts what apache-avro does not decode whole \
                 ({theirs:?} of {} bytes): {x:02x?}",
                x.len()
            );
            return;
        }
        Err(e) => e,
    };
    // The deliberate differences (stricter by design): apache-avro is not
    // asked, since huge counts and deep nesting are what it handles slowly.
    // `logical_type_range` is matched by label: it may not exist yet.
    // An int in more than 5 bytes is deliberately refused too.
    let label = err.reason.as_str();
    if matches!(
        label,
        "implausible_count" | "block_size_mismatch" | "too_deep" | "logical_type_range"
    ) || (label == "bad_varint" && overlong_int_at(x, err.offset))
    {
        return;
    }
    if !matches!(apache_consumed(&c.oracle, x), Ok(n) if n == x.len()) {
        return; // both reject
    }
    // apache-avro 0.22 takes end-of-input at a boolean, a string's body or a
    // union index as null. Decoding `x` followed by padding, and requiring that
    // it stop exactly at the end of `x`, asks the question without that bug.
    let mut padded = x.to_vec();
    padded.extend_from_slice(&[0; 16]);
    if !matches!(apache_consumed(&c.oracle, &padded), Ok(n) if n == x.len()) {
        assert!(
            matches!(label, "truncated" | "empty"),
            "{name}: apache-avro accepts a truncated datum, and the validator says {err}, \
             not truncated: {x:02x?}"
        );
        return;
    }
    panic!("{name}: the validator rejects ({err}) what apache-avro decodes whole: {x:02x?}");
});
