//! How a value of one of Avro's leaf types is laid out in the binary
//! encoding: a fixed number of bytes, one zig-zag varint, or a length and
//! then so many bytes. The walks that step over values they do not read
//! (the decimator's, the record-time reader's, the pivot's) take it from
//! this one table, so that each type is classified once.

use apache_avro::schema::{DecimalSchema, FixedSchema, InnerDecimalSchema, Schema, UuidSchema};

/// The encoding of a leaf type's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// So many bytes (null, boolean, float, double, fixed, and the logical
    /// types over fixed).
    Fixed(usize),
    /// One varint (int, long, enum, and the logical types over them).
    Varint,
    /// A varint length, then so many bytes (bytes, string, and the logical
    /// types over them).
    Bytes,
}

/// The encoding of `schema`'s values if it is a leaf type; `None` for the
/// compound types (array, map, union, record) and for a reference, which
/// the caller resolves.
pub fn leaf(schema: &Schema) -> Option<Leaf> {
    Some(match schema {
        Schema::Null => Leaf::Fixed(0),
        Schema::Boolean => Leaf::Fixed(1),
        Schema::Float => Leaf::Fixed(4),
        Schema::Double => Leaf::Fixed(8),
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos
        | Schema::Enum(_) => Leaf::Varint,
        Schema::Bytes
        | Schema::String
        | Schema::BigDecimal
        | Schema::Uuid(UuidSchema::Bytes | UuidSchema::String)
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Bytes,
            ..
        }) => Leaf::Bytes,
        Schema::Fixed(FixedSchema { size, .. })
        | Schema::Uuid(UuidSchema::Fixed(FixedSchema { size, .. }))
        | Schema::Duration(FixedSchema { size, .. })
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(FixedSchema { size, .. }),
            ..
        }) => Leaf::Fixed(*size),
        Schema::Array(_)
        | Schema::Map(_)
        | Schema::Union(_)
        | Schema::Record(_)
        | Schema::Ref { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{leaf, Leaf};
    use apache_avro::Schema;

    #[test]
    fn leaves_are_classified_by_their_encoding_and_compound_types_are_not_leaves() {
        let cases = [
            (r#""null""#, Some(Leaf::Fixed(0))),
            (r#""boolean""#, Some(Leaf::Fixed(1))),
            (r#""float""#, Some(Leaf::Fixed(4))),
            (r#""double""#, Some(Leaf::Fixed(8))),
            (r#""int""#, Some(Leaf::Varint)),
            (
                r#"{"type":"long","logicalType":"timestamp-nanos"}"#,
                Some(Leaf::Varint),
            ),
            (
                r#"{"type":"enum","name":"E","symbols":["a","b"]}"#,
                Some(Leaf::Varint),
            ),
            (r#""string""#, Some(Leaf::Bytes)),
            (
                r#"{"type":"bytes","logicalType":"decimal","precision":4}"#,
                Some(Leaf::Bytes),
            ),
            (
                r#"{"type":"fixed","name":"F","size":12}"#,
                Some(Leaf::Fixed(12)),
            ),
            (
                r#"{"type":"fixed","name":"D","size":12,"logicalType":"duration"}"#,
                Some(Leaf::Fixed(12)),
            ),
            (r#"{"type":"array","items":"int"}"#, None),
            (r#"{"type":"map","values":"int"}"#, None),
            (r#"["null","int"]"#, None),
            (r#"{"type":"record","name":"R","fields":[]}"#, None),
        ];
        for (text, want) in cases {
            let s = Schema::parse_str(text).unwrap();
            assert_eq!(leaf(&s), want, "{text}");
        }
    }
}
