//! Why a datagram was rejected: the vocabulary of `rejected_by_reason` on
//! the stats line (see [`crate::status::reject_reasons`]), in logs and in
//! the quarantine file. One label per reason, defined once here, a leaf the
//! stdout protocol, the validator and the receive path all use.
//!
//! [`Reason`] is the validator's (`validate::Reason`, what is wrong with a
//! datum); [`RejectReason`] adds the receive path's own checks.

use std::fmt;

/// The kind of defect the validator (`Validator::validate`) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The datagram is empty and the schema needs at least one byte.
    Empty,
    /// The datagram ends inside the datum, or a length points past its end.
    Truncated,
    /// The datum ends before the datagram does.
    TrailingBytes,
    /// A varint runs on past its maximum size: 5 bytes for an int (also date,
    /// time-millis and enum indices), 10 for a long.
    BadVarint,
    /// An int (also date, time-millis, enum index) outside the 32-bit range.
    IntOutOfRange,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// A boolean byte other than 0 or 1.
    BadBoolean,
    /// An enum index that is negative or not below the number of symbols.
    EnumIndexOutOfRange,
    /// A union branch index that is negative or not below the number of branches.
    UnionIndexOutOfRange,
    /// A bytes or string length below zero.
    NegativeLength,
    /// An array or map block count that cannot fit in the bytes left: its items
    /// would need more bytes than remain, or (for always-empty items such as
    /// null) it exceeds the number of bytes left counted from the block start.
    ImplausibleCount,
    /// The byte size after a negative block count differs from the bytes its
    /// items occupy.
    BlockSizeMismatch,
    /// Records, arrays and maps nested more than 128 deep.
    TooDeep,
    /// A value of a logical type outside what the type can represent: a date
    /// or timestamp outside years 1 to 9999, a time of day outside one day, a
    /// decimal with more digits than its precision, a uuid that is not one.
    LogicalTypeRange,
}

impl Reason {
    /// Every reason the validator gives (for tests and documentation).
    pub const ALL: &'static [Reason] = &[
        Reason::Empty,
        Reason::Truncated,
        Reason::TrailingBytes,
        Reason::BadVarint,
        Reason::IntOutOfRange,
        Reason::InvalidUtf8,
        Reason::BadBoolean,
        Reason::EnumIndexOutOfRange,
        Reason::UnionIndexOutOfRange,
        Reason::NegativeLength,
        Reason::ImplausibleCount,
        Reason::BlockSizeMismatch,
        Reason::TooDeep,
        Reason::LogicalTypeRange,
    ];

    /// Short snake_case label for metrics and logs, e.g. `"trailing_bytes"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::Truncated => "truncated",
            Reason::TrailingBytes => "trailing_bytes",
            Reason::BadVarint => "bad_varint",
            Reason::IntOutOfRange => "int_out_of_range",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::BadBoolean => "bad_boolean",
            Reason::EnumIndexOutOfRange => "enum_index_out_of_range",
            Reason::UnionIndexOutOfRange => "union_index_out_of_range",
            Reason::NegativeLength => "negative_length",
            Reason::ImplausibleCount => "implausible_count",
            Reason::BlockSizeMismatch => "block_size_mismatch",
            Reason::TooDeep => "too_deep",
            Reason::LogicalTypeRange => "logical_type_range",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rejection is counted under: one label each, on the stats line
/// (`rejected_by_reason`), in logs and in the quarantine file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    Oversized,
    SenderNotAllowed,
    WrongHeader,
    /// The validator's reason.
    Invalid(Reason),
}

impl RejectReason {
    /// The labels of the receive path's own checks (the validator's are
    /// [`Reason::ALL`]).
    pub(crate) const OWN_REASONS: &'static [&'static str] =
        &["oversized", "sender_not_allowed", "wrong_header"];

    /// The label, e.g. `"sender_not_allowed"` or `"trailing_bytes"`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::SenderNotAllowed => "sender_not_allowed",
            RejectReason::WrongHeader => "wrong_header",
            RejectReason::Invalid(r) => r.as_str(),
        }
    }
}

/// Every label a rejection can carry: the receive path's own checks, then
/// the validator's reasons.
pub(crate) fn labels() -> impl Iterator<Item = &'static str> {
    RejectReason::OWN_REASONS
        .iter()
        .copied()
        .chain(Reason::ALL.iter().map(|r| r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_reasons_keep_their_labels() {
        let own = [
            RejectReason::Oversized,
            RejectReason::SenderNotAllowed,
            RejectReason::WrongHeader,
        ]
        .map(RejectReason::as_str);
        assert_eq!(RejectReason::OWN_REASONS, own);
        assert_eq!(
            RejectReason::Invalid(Reason::TrailingBytes).as_str(),
            "trailing_bytes"
        );
    }

    #[test]
    fn every_label_is_listed_once() {
        let all: Vec<_> = labels().collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert_eq!(
            all.len(),
            RejectReason::OWN_REASONS.len() + Reason::ALL.len()
        );
        for r in Reason::ALL {
            assert!(all.contains(&RejectReason::Invalid(*r).as_str()), "{r}");
        }
    }
}
