//! The classifier: whether a datagram is relayed, or why not.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::MAX_DATAGRAM;
use crate::handover::Rejection;
use crate::validate::Validator;

/// The receive path's checks, in order: the sender, the size, the
/// single-object header, the schema.
pub(crate) struct Classifier {
    /// Accepted senders; empty: all.
    allow_from: Vec<Ipv4Net>,
    /// With single-object encoding, the header every datagram starts with;
    /// the datum after it is what is validated and archived.
    header: Option<[u8; 10]>,
    /// `None` with `receive.validate = false`.
    validator: Option<Validator>,
}

impl Classifier {
    pub(crate) fn new(
        allow_from: Vec<Ipv4Net>,
        header: Option<[u8; 10]>,
        validator: Option<Validator>,
    ) -> Classifier {
        Classifier {
            allow_from,
            header,
            validator,
        }
    }

    /// Bytes before the datum in each datagram.
    pub(crate) fn header_len(&self) -> usize {
        self.header.map_or(0, |h| h.len())
    }

    /// Accepts a datagram from `from` (`truncated`: the kernel cut it
    /// short), or says why not.
    #[inline]
    pub(crate) fn classify(
        &self,
        datagram: &[u8],
        from: Ipv4Addr,
        truncated: bool,
    ) -> Result<(), Rejection> {
        if !self.allow_from.is_empty() && !self.allow_from.iter().any(|n| n.contains(&from)) {
            Err(Rejection::SenderNotAllowed)
        } else if truncated || datagram.len() > MAX_DATAGRAM {
            Err(Rejection::Oversized)
        } else if self.header.is_some_and(|h| !datagram.starts_with(&h)) {
            Err(Rejection::WrongHeader)
        } else if let Some(v) = &self.validator {
            let skip = self.header_len();
            v.validate(&datagram[skip..]).map_err(|mut inv| {
                inv.offset += skip;
                Rejection::Invalid(inv)
            })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;

    const HEADER: [u8; 10] = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn validator() -> Validator {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap();
        Validator::new(&schema).unwrap()
    }

    fn reason(r: Result<(), Rejection>) -> &'static str {
        r.map_or_else(|e| e.reason().as_str(), |()| "ok")
    }

    #[test]
    fn without_checks_everything_passes() {
        let c = Classifier::new(Vec::new(), None, None);
        assert_eq!(reason(c.classify(b"", LOCAL, false)), "ok");
        assert_eq!(reason(c.classify(b"anything", LOCAL, false)), "ok");
        assert_eq!(c.header_len(), 0);
    }

    #[test]
    fn only_allowed_senders_pass_and_that_is_checked_first() {
        let c = Classifier::new(vec!["10.0.0.0/8".parse().unwrap()], None, Some(validator()));
        assert_eq!(
            reason(c.classify(&[2], Ipv4Addr::new(10, 1, 2, 3), false)),
            "ok"
        );
        assert_eq!(reason(c.classify(&[2], LOCAL, false)), "sender_not_allowed");
        assert_eq!(reason(c.classify(&[2], LOCAL, true)), "sender_not_allowed");
    }

    #[test]
    fn truncated_or_too_long_is_oversized() {
        let c = Classifier::new(Vec::new(), None, None);
        assert_eq!(reason(c.classify(&[2], LOCAL, true)), "oversized");
        let long = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(reason(c.classify(&long, LOCAL, false)), "oversized");
        let max = vec![0u8; MAX_DATAGRAM];
        assert_eq!(reason(c.classify(&max, LOCAL, false)), "ok");
    }

    #[test]
    fn the_schema_decides_what_is_left() {
        let c = Classifier::new(Vec::new(), None, Some(validator()));
        assert_eq!(reason(c.classify(&[2], LOCAL, false)), "ok");
        assert_eq!(reason(c.classify(&[], LOCAL, false)), "empty");
        let r = c.classify(&[2, 0], LOCAL, false).unwrap_err();
        let Rejection::Invalid(inv) = r else {
            panic!("{r:?}")
        };
        assert_eq!((inv.reason, inv.offset), (Reason::TrailingBytes, 1));
    }

    #[test]
    fn a_single_object_header_is_checked_then_skipped() {
        let c = Classifier::new(Vec::new(), Some(HEADER), Some(validator()));
        assert_eq!(c.header_len(), 10);
        let mut good = HEADER.to_vec();
        good.push(2);
        assert_eq!(reason(c.classify(&good, LOCAL, false)), "ok");
        assert_eq!(reason(c.classify(&[2], LOCAL, false)), "wrong_header");
        let mut other = good.clone();
        other[9] ^= 1;
        assert_eq!(reason(c.classify(&other, LOCAL, false)), "wrong_header");
        // Offsets count from the start of the datagram, header included.
        good.push(0);
        let Err(Rejection::Invalid(inv)) = c.classify(&good, LOCAL, false) else {
            panic!("trailing byte accepted")
        };
        assert_eq!((inv.reason, inv.offset), (Reason::TrailingBytes, 11));
    }
}
