//! The decimator, on datagrams that may be anything, its outputs checked
//! with apache-avro.
//!
//! Input: one byte that picks a schema from the checked-in set, one that
//! picks the algorithm and the window (1 to 4 records), then datagrams, each
//! a length byte and that many bytes.
//!
//! Oracle:
//! - nothing panics, whatever the bytes (with validation off the decimator
//!   sees anything);
//! - a datagram the validator accepts is taken into its window;
//! - when every datagram of the run is valid, every record the decimator
//!   sends decodes with apache-avro to its last byte.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use relay_channel::config::Algorithm;
use relay_channel::decimate::{Decimator, Window};
use relay_channel::validate::Validator;

const SCHEMAS: &[&str] = &[
    include_str!("../../channels.d/example.avsc"),
    include_str!("../schemas/all_types.avsc"),
    include_str!("../schemas/logical.avsc"),
    include_str!("../schemas/list.avsc"),
    include_str!("../schemas/tree.avsc"),
    include_str!("../schemas/union.avsc"),
    include_str!("../schemas/empty_items.avsc"),
    include_str!("../schemas/scalars.avsc"),
];

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Downsample,
    Algorithm::Average,
    Algorithm::MinMax,
    Algorithm::Rms,
];

fn compiled() -> &'static [(Schema, Validator)] {
    static C: OnceLock<Vec<(Schema, Validator)>> = OnceLock::new();
    C.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|json| {
                let schema = Schema::parse_str(json).expect("checked-in schema parses");
                let validator = Validator::new(&schema).expect("checked-in schema compiles");
                (schema, validator)
            })
            .collect()
    })
}

/// Whether apache-avro decodes `x` as one datum of `schema`, to its end.
fn decodes_whole(schema: &Schema, x: &[u8]) -> bool {
    let Ok(reader) = GenericDatumReader::builder(schema).build() else {
        return false;
    };
    let mut rest = x;
    reader.read_value(&mut rest).is_ok() && rest.is_empty()
}

fuzz_target!(|data: &[u8]| {
    let [pick, how, rest @ ..] = data else {
        return;
    };
    let (schema, validator) = &compiled()[*pick as usize % SCHEMAS.len()];
    let algorithm = ALGORITHMS[*how as usize % 4];
    let window = Window::Records(u64::from(how / 4 % 4 + 1));
    let mut d = Decimator::new(schema, algorithm, window, &[], &[]).expect("compiles");
    let now = Instant::now();
    let mut all_valid = true;
    let mut rest = rest;
    while let [len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        rest = next;
        let valid = validator.validate(datagram).is_ok();
        all_valid &= valid;
        let taken = d.offer(datagram, now);
        assert!(taken || !valid, "a valid datagram was left out: {datagram:02x?}");
    }
    if all_valid {
        for out in d.ready() {
            assert!(
                decodes_whole(schema, out),
                "{algorithm:?}: a sent record does not decode: {out:02x?}"
            );
        }
    }
});
