//! A channel's schema: its text as written, the compiled validator and the
//! single-object header, loaded from the file the channel names. The
//! orchestrator loads it the same way to check channel files.

use apache_avro::schema::{ResolvedSchema, Schema};

use crate::config::{ChannelSpec, ConfigError, Encoding, Problem};
use crate::decimate::Decimator;
use crate::validate::Validator;

/// The schema of a channel: its text as written (for the archive header) and
/// the compiled validator.
pub struct ChannelSchema {
    pub text: String,
    pub validator: Validator,
    /// The single-object encoding header of this schema (`C3 01` and the
    /// CRC-64-AVRO fingerprint of its canonical form).
    pub single_object_header: [u8; 10],
    /// The decimated output's decimator, compiled for this schema.
    pub decimator: Option<Decimator>,
}

/// Reads, parses and compiles the channel's schema, and the decimator for
/// it; problems are configuration errors against the `schema` key,
/// `decimated.keep_last` for a name that is not a field of the schema, or
/// `archive.time_field` for a name that is not a timestamp field of it.
pub fn load(spec: &ChannelSpec) -> Result<ChannelSchema, ConfigError> {
    let err = |m: String| ConfigError {
        file: spec.file.clone(),
        problems: vec![Problem {
            key: "schema".into(),
            message: m,
        }],
    };
    let path = &spec.schema_path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    from_text(spec, text)
}

/// Like [`load`], with the schema's text given (not yet written to
/// `spec.schema_path`, which problems still name).
pub fn from_text(spec: &ChannelSpec, text: String) -> Result<ChannelSchema, ConfigError> {
    let err = |m: String| ConfigError {
        file: spec.file.clone(),
        problems: vec![Problem {
            key: "schema".into(),
            message: m,
        }],
    };
    let path = &spec.schema_path;
    // JSON first: serde_json says where (line and column) the text stops
    // being JSON; apache-avro's own message does not.
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        return Err(err(format!(
            "{} is not JSON (an Avro schema is a JSON document): {e}",
            path.display()
        )));
    }
    let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
        err(format!(
            "{} is not a valid Avro schema: {e}",
            path.display()
        ))
    })?;
    let validator = Validator::new(&schema).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if let Some(field) = &spec.archive.time_field {
        check_time_field(&schema, field).map_err(|m| ConfigError {
            file: spec.file.clone(),
            problems: vec![Problem {
                key: "archive.time_field".into(),
                message: m,
            }],
        })?;
    }
    use apache_avro::headers::HeaderBuilder as _;
    let header = apache_avro::headers::RabinFingerprintHeader::from_schema(&schema).build_header();
    let mut single_object_header = [0u8; 10];
    single_object_header.copy_from_slice(&header[..10]);
    let decimator = match &spec.decimated {
        Some(d) => {
            let prefix: &[u8] = match spec.receive.encoding {
                Encoding::SingleObject => &single_object_header,
                Encoding::Datum => &[],
            };
            let window = d.window.into();
            Some(
                Decimator::new(&schema, d.algorithm, window, &d.keep_last, prefix)
                    .map(|dec| dec.trusting_validated_input(spec.receive.validate))
                    .map_err(|m| ConfigError {
                        file: spec.file.clone(),
                        problems: vec![Problem {
                            key: "decimated.keep_last".into(),
                            message: m,
                        }],
                    })?,
            )
        }
        None => None,
    };
    Ok(ChannelSchema {
        text: text.trim().to_string(),
        validator,
        single_object_header,
        decimator,
    })
}

/// Checks that `path` (dotted names through nested records) names a field
/// of `schema` whose type is a `long` with logical type `timestamp-millis`,
/// `-micros` or `-nanos`, or `local-timestamp-*`. The message names the
/// field and what it is instead.
fn check_time_field(schema: &Schema, path: &str) -> Result<(), String> {
    let resolved = ResolvedSchema::new(schema).map_err(|e| e.to_string())?;
    let names = resolved.get_names();
    let deref = |s: &'_ Schema, ns: &Option<String>| -> Option<Schema> {
        match s {
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns.as_deref());
                names.get(fq.as_ref()).map(|d| (*d).clone())
            }
            _ => None,
        }
    };
    let Schema::Record(root) = schema else {
        return Err(format!(
            "\"{path}\": the schema is {}, not a record: it has no fields",
            describe(schema)
        ));
    };
    let mut record = root.clone();
    let mut ns = record.name.namespace().map(str::to_owned);
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(field) = record.fields.iter().find(|f| f.name == *part) else {
            return Err(format!(
                "\"{path}\": record {} has no field \"{part}\"",
                record.name.name()
            ));
        };
        let so_far = parts[..=i].join(".");
        let ty = deref(&field.schema, &ns).unwrap_or_else(|| field.schema.clone());
        if i + 1 == parts.len() {
            return match ty {
                Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::TimestampNanos
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::LocalTimestampNanos => Ok(()),
                other => Err(format!(
                    "field \"{so_far}\" is {}, not a long with logicalType \
                     timestamp-millis, timestamp-micros or timestamp-nanos \
                     (or local-timestamp-*)",
                    describe(&other)
                )),
            };
        }
        match ty {
            Schema::Record(r) => {
                ns = r.name.namespace().map(str::to_owned).or(ns);
                record = r;
            }
            other => {
                return Err(format!(
                    "\"{path}\": field \"{so_far}\" is {}, not a record",
                    describe(&other)
                ))
            }
        }
    }
    unreachable!("a path has at least one part")
}

/// A schema's type in a few words: `int`, `long (time-micros)`,
/// `record Probe`, `a union of null and long (timestamp-millis)`.
fn describe(s: &Schema) -> String {
    let logical = |base: &str, lt: &str| format!("{base} (logicalType {lt})");
    match s {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "a long without a logicalType".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Date => logical("int", "date"),
        Schema::TimeMillis => logical("int", "time-millis"),
        Schema::TimeMicros => logical("long", "time-micros"),
        Schema::TimestampMillis => logical("long", "timestamp-millis"),
        Schema::TimestampMicros => logical("long", "timestamp-micros"),
        Schema::TimestampNanos => logical("long", "timestamp-nanos"),
        Schema::LocalTimestampMillis => logical("long", "local-timestamp-millis"),
        Schema::LocalTimestampMicros => logical("long", "local-timestamp-micros"),
        Schema::LocalTimestampNanos => logical("long", "local-timestamp-nanos"),
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Array(_) => "an array".into(),
        Schema::Map(_) => "a map".into(),
        Schema::Union(u) => format!(
            "a union of {}",
            u.variants()
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Ref { name } => name.name().to_string(),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{
      "type": "record", "name": "Reading", "namespace": "t",
      "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "seq", "type": "long"},
        {"name": "count", "type": "int"},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "maybe", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "probe", "type": {"type": "record", "name": "Probe", "fields": [
          {"name": "at", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
          {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}}]}},
        {"name": "again", "type": "Probe"}
      ]}"#;

    fn check(field: &str) -> Result<(), String> {
        check_time_field(&Schema::parse_str(SCHEMA).unwrap(), field)
    }

    #[test]
    fn a_schema_that_is_not_json_is_reported_with_its_line_and_column() {
        let spec = ChannelSpec::from_text(
            "schema = \"s.avsc\"\n[receive]\nbind = \"127.0.0.1:26000\"\n[archive]\ndir = \"data\"\n",
            std::path::Path::new("/etc/speeddata/channels.d/ch.toml"),
            None,
        )
        .unwrap();
        let text =
            "{\n  \"type\": \"record\",\n  \"name\": \"r\",\n  \"fields\": [,]\n}".to_string();
        let e = from_text(&spec, text).err().expect("not JSON");
        let m = &e.problems[0].message;
        assert!(m.contains("is not JSON"), "{m}");
        assert!(m.contains("line 4 column 14"), "{m}");
    }

    #[test]
    fn time_fields_are_timestamps_at_any_depth() {
        for ok in ["time", "probe.at", "probe.local", "again.at"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_time_field_that_is_missing_or_not_a_timestamp_says_what_it_is() {
        for (field, says) in [
            ("nonesuch", "record Reading has no field \"nonesuch\""),
            ("probe.nonesuch", "record Probe has no field \"nonesuch\""),
            ("seq", "field \"seq\" is a long without a logicalType"),
            ("count", "field \"count\" is int, not a long"),
            ("day", "field \"day\" is int (logicalType date)"),
            (
                "maybe",
                "field \"maybe\" is a union of null, long (logicalType timestamp-millis)",
            ),
            ("probe", "field \"probe\" is record Probe"),
            (
                "time.x",
                "field \"time\" is long (logicalType timestamp-micros), not a record",
            ),
        ] {
            let e = check(field).unwrap_err();
            assert!(e.contains(says), "{field}: {e}");
        }
        let e = check_time_field(&Schema::Long, "time").unwrap_err();
        assert!(e.contains("not a record"), "{e}");
    }

    /// SpeedData's schemas put `logicalType` beside `"type": "long"` in the
    /// field itself, where the Avro specification ignores it: the field is
    /// a plain long. Such a schema loads as SpeedData's relay takes it, its
    /// records validate and decimate, and its text is kept as written.
    #[test]
    #[allow(deprecated)] // to_avro_datum: the plain way to encode one datum in a test
    fn a_logical_type_beside_the_field_type_is_ignored_as_avro_says() {
        let text = r#"{
            "namespace": "sd.example", "type": "record", "name": "data",
            "fields": [
                {"name": "time", "type": "long", "logicalType": "timestamp-nanos"},
                {"name": "message", "type": "string"},
                {"name": "counter", "type": "int"},
                {"name": "sine_wave", "type": "double"}
            ]
        }"#;
        let channel = |extra: &str| {
            ChannelSpec::from_text(
                &format!(
                    "schema = \"s.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"d\"\n{extra}"
                ),
                std::path::Path::new("c/x.toml"),
                None,
            )
            .unwrap()
        };
        let spec = channel(
            "[decimated]\ngroup = \"239.1.1.2:6001\"\ninterface = \"127.0.0.1\"\nalgorithm = \"average\"\nfactor = 2\n",
        );
        let loaded = from_text(&spec, text.to_string()).unwrap();
        assert_eq!(loaded.text, text.trim());
        let schema = Schema::parse_str(text).unwrap();
        let Schema::Record(r) = &schema else {
            panic!("{schema:?}")
        };
        assert_eq!(r.fields[0].schema, Schema::Long);
        let datum = apache_avro::to_avro_datum(
            &schema,
            apache_avro::types::Value::Record(vec![
                (
                    "time".into(),
                    apache_avro::types::Value::Long(1_795_383_000_123_456_789),
                ),
                (
                    "message".into(),
                    apache_avro::types::Value::String("hi".into()),
                ),
                ("counter".into(), apache_avro::types::Value::Int(7)),
                ("sine_wave".into(), apache_avro::types::Value::Double(0.5)),
            ]),
        )
        .unwrap();
        assert!(loaded.validator.validate(&datum).is_ok());
        assert!(loaded
            .validator
            .validate(&datum[..datum.len() - 1])
            .is_err());
        // Not a timestamp for our archive either: a plain long.
        let spec = channel("time_field = \"time\"\n");
        let Err(e) = from_text(&spec, text.to_string()) else {
            panic!("a plain long taken as a timestamp")
        };
        let e = e.to_string();
        assert!(e.contains("a long without a logicalType"), "{e}");
    }
}
