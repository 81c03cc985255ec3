//! End-to-end tests of what `relay-channel` refuses: senders outside
//! `allow_from`, datagrams without the single-object header, floods of
//! garbage next to a valid stream, and values out of range for their
//! logical types. What is refused is counted by reason and never archived
//! or re-emitted; what is archived reads back whole with fastavro and
//! apache-avro.

use std::net::Ipv4Addr;
use std::time::Duration;

use speeddata_tests::*;

#[test]
fn senders_outside_allow_from_are_rejected_with_their_reason() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("allowlist");
    let full = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.receive = vec!["allow_from = [\"127.0.0.2\"]".into()];
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let allowed = example_records(300, "allowed");
    let stranger = example_records(200, "stranger");
    Sender::from_addr(opts.bind, Ipv4Addr::new(127, 0, 0, 2)).send_paced(&allowed, 10);
    Sender::from_addr(opts.bind, Ipv4Addr::LOCALHOST).send_paced(&stranger, 10);
    relay.wait_received(500, Duration::from_secs(20));
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.rejected, 200, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("sender_not_allowed"),
        Some(&200),
        "{last:?}"
    );
    assert_balanced(&last);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        full_rx.finish() == allowed,
        "the full-rate output carried a stranger's datagrams"
    );
    assert!(read_archive(&archive) == allowed);
}

#[test]
fn single_object_encoding_is_checked_archived_as_datums_and_forwarded_whole() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("single-object");
    let full = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.receive = vec!["encoding = \"single_object\"".into()];
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let schema = example_schema();
    let objects: Vec<Vec<u8>> = (0..500)
        .map(|i| example_single_object(&schema, i, "so"))
        .collect();
    let datums: Vec<Vec<u8>> = (0..500).map(|i| example_datum(&schema, i, "so")).collect();
    assert!(objects
        .iter()
        .zip(&datums)
        .all(|(o, d)| o[..2] == [0xC3, 0x01] && o[10..] == d[..]));
    // Plain datums (no header) and another schema's fingerprint are refused.
    let mut other = objects[0].clone();
    other[5] ^= 0xff;
    let mut stream = objects.clone();
    stream.extend(datums[..20].iter().cloned());
    stream.push(other);
    relay.feed(opts.bind, &stream, 10);
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.archived, 500, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("wrong_header"),
        Some(&21),
        "{last:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        full_rx.finish() == objects,
        "the full-rate output did not carry the datagrams unchanged"
    );
    assert!(
        read_archive(&archive) == datums,
        "the archive does not hold the bare datums"
    );
}

/// A flood of invalid datagrams (short and long) next to a valid stream, at
/// a rate the relay keeps up with: every valid record is archived. `quarantine`
/// is the `archive.quarantine_size` line.
fn flood_next_to_valid_stream(name: &str, quarantine: &str) {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast(name);
    // The smallest archive queue there is.
    opts.archive = vec!["queue = \"1MiB\"".into(), quarantine.into()];
    let relay = Relay::start(dir.path(), &opts);
    let valid = example_records(3_000, "flood");
    let mut stream = Vec::new();
    for (i, v) in valid.iter().enumerate() {
        stream.push(v.clone());
        for k in 0..20 {
            stream.push(match (i + k) % 2 {
                // Short: a varint that never ends.
                0 => vec![0x80u8; 3],
                // Long: a string length far past the end, and junk.
                _ => {
                    let mut x = vec![0xffu8; 1_400];
                    x[0] = 0x02;
                    x
                }
            });
        }
    }
    Sender::new(opts.bind).send_paced(&stream, 20);
    relay.wait_received(stream.len() as u64, Duration::from_secs(60));
    let (archive, last) = relay.stop_ok();
    // (A flood too fast to judge would show kernel drops.)
    assert_kernel_drops_none(&last);
    assert_balanced(&last);
    assert_eq!(last.counters.rejected, 60_000, "{last:?}");
    assert_eq!(
        last.counters.archive_dropped, 0,
        "valid records lost to the flood: {last:?}"
    );
    assert_eq!(last.counters.archived, 3_000, "{last:?}");
    assert!(read_archive(&archive) == valid, "archive differs");
    // Every reject is kept or counted as not kept.
    assert_eq!(
        last.counters.quarantined + last.counters.quarantine_dropped,
        60_000,
        "{last:?}"
    );
}

#[test]
fn a_flood_of_garbage_never_costs_a_valid_record_its_place() {
    flood_next_to_valid_stream("flood-kept", "quarantine_size = \"16MiB\"");
}

#[test]
fn a_flood_of_garbage_without_quarantine_never_costs_a_valid_record_its_place() {
    flood_next_to_valid_stream("flood-unkept", "quarantine_size = 0");
}

// ---------------------------------------------------------------------------
// Logical types: values no reader can convert are rejected, not archived.

/// A schema with logical types at the top and in a nested record.
const LOGICAL_SCHEMA: &str = r#"{
  "type": "record", "name": "Reading", "namespace": "test.logical",
  "fields": [
    {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}},
    {"name": "counter", "type": "int"}
  ]
}"#;

/// `n` as a decimal's unscaled bytes: big-endian two's complement, fewest
/// bytes.
fn unscaled(n: i64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let sign = if n < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    while start < 7 && b[start] == sign && (b[start + 1] & 0x80) == (sign & 0x80) {
        start += 1;
    }
    b[start..].to_vec()
}

/// The logical-typed values of one record of [`LOGICAL_SCHEMA`].
#[derive(Clone, Copy)]
struct Reading {
    time: i64,
    day: i32,
    amount: i64,
    when: i64,
}

/// One record of [`LOGICAL_SCHEMA`], encoded by apache-avro.
fn logical_datum(schema: &apache_avro::Schema, r: Reading, counter: i32) -> Vec<u8> {
    use apache_avro::types::Value;
    let value = Value::Record(vec![
        ("time".into(), Value::TimestampMicros(r.time)),
        ("day".into(), Value::Date(r.day)),
        (
            "amount".into(),
            Value::Decimal(apache_avro::Decimal::from(unscaled(r.amount))),
        ),
        (
            "inner".into(),
            Value::Record(vec![("when".into(), Value::TimestampMillis(r.when))]),
        ),
        ("counter".into(), Value::Int(counter)),
    ]);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

#[test]
fn out_of_range_logical_values_are_rejected_so_fastavro_reads_the_whole_archive() {
    let dir = tempdir();
    let opts = ChannelOpts::unicast("logical");
    let relay = Relay::start_with_schema(dir.path(), &opts, LOGICAL_SCHEMA);
    let schema = apache_avro::Schema::parse_str(LOGICAL_SCHEMA).unwrap();

    // 2026-11-22T21:30:00Z, in microseconds and in days.
    const T0: i64 = 1_795_383_000_000_000;
    const DAY0: i32 = 20_779;
    let valid_at = |i: i32| Reading {
        time: T0 + i64::from(i) * 1_000,
        day: DAY0 + i % 7,
        // Up to nine digits: 9,999,999.99 at most.
        amount: if i % 2 == 0 {
            999_999_999 - i64::from(i)
        } else {
            -123_456 * i64::from(i)
        },
        when: T0 / 1_000 + i64::from(i),
    };
    // Valid as Avro, out of range for their logical types: (field, values).
    let ok = valid_at(0);
    let bad_kinds = [
        // In the year 132,177.
        (
            "time",
            Reading {
                time: 4_108_947_283_768_568_201,
                ..ok
            },
        ),
        (
            "time",
            Reading {
                time: 253_402_300_800_000_000,
                ..ok
            },
        ), // 10000-01-01
        (
            "time",
            Reading {
                time: -62_135_596_800_000_001,
                ..ok
            },
        ), // before 0001-01-01
        (
            "day",
            Reading {
                day: 2_932_897,
                ..ok
            },
        ), // 10000-01-01
        (
            "amount",
            Reading {
                amount: 1_000_000_000,
                ..ok
            },
        ), // ten digits
        (
            "amount",
            Reading {
                amount: -1_000_000_000,
                ..ok
            },
        ),
        (
            "inner.when",
            Reading {
                when: i64::MAX,
                ..ok
            },
        ),
    ];
    let mut stream = Vec::new();
    let mut valid = Vec::new();
    let mut bad = Vec::new();
    for i in 0..2_000 {
        let d = logical_datum(&schema, valid_at(i), i);
        stream.push(d.clone());
        valid.push(d);
        if i % 50 == 25 {
            let (field, r) = bad_kinds[bad.len() % bad_kinds.len()];
            let d = logical_datum(&schema, r, -1);
            stream.push(d.clone());
            bad.push((field, d));
        }
    }
    assert_eq!(bad.len(), 40);
    relay.feed(opts.bind, &stream, 10);
    let (archive, last) = relay.stop_ok();

    // Exactly the out-of-range ones are rejected, under their own reason.
    assert_balanced(&last);
    assert_eq!(last.counters.received, 2_040, "{last:?}");
    assert_eq!(last.counters.archived, 2_000, "{last:?}");
    assert_eq!(last.counters.rejected, 40, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("logical_type_range"),
        Some(&40),
        "{last:?}"
    );
    assert_eq!(last.rejected_by_reason.len(), 1, "{last:?}");

    // Quarantine: each entry says why and names the field.
    // Its lines are JSON, the format it keeps for people and their tools.
    let q = std::fs::read_to_string(archive.join("quarantine.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40, "{q}");
    for (line, (field, d)) in lines.iter().zip(&bad) {
        assert_eq!(line["reason"], "logical_type_range", "{line}");
        assert_eq!(line["length"], d.len(), "{line}");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("field `{field}`")), "{detail}");
    }
    assert!(lines[0]["detail"]
        .as_str()
        .unwrap()
        .contains("timestamp-micros value at offset 0 is outside years 1 to 9999"));

    // The archive holds exactly the valid records, and reads to its end with
    // fastavro's default reader (logical types converted) and apache-avro.
    let files = avro_files(&archive);
    assert!(!files.is_empty() && part_files(&archive).is_empty());
    let values = read_values_with_fastavro(&files);
    assert_eq!(values.len(), 2_000);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v["counter"], i as i64, "{v}");
    }
    assert_eq!(values[0]["time"], "2026-11-22T21:30:00+00:00");
    assert_eq!(values[0]["day"], "2026-11-22");
    assert_eq!(values[0]["amount"], "9999999.99");
    assert_eq!(values[1]["amount"], "-1234.56");
    assert_eq!(
        values[1]["inner"]["when"],
        "2026-11-22T21:30:00.001000+00:00"
    );
    assert_eq!(values[1_999]["time"], "2026-11-22T21:30:01.999000+00:00");
    assert!(
        read_with_apache_avro(&files) == valid,
        "apache-avro reads other records"
    );
}
