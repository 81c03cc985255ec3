//! The live outputs: every valid datagram on the full-rate output, the
//! decimator's picks on the decimated one.

use std::time::{Duration, Instant};

use crate::ledger::BatchCounts;
use crate::logs::RateLimit;
use crate::net::{self, SendOutcome};

/// Something datagrams are sent on, a batch at a time: a socket
/// ([`net::BatchSender`]), or a recorder in tests.
pub(crate) trait Emit {
    /// Sends the datagrams in order; counts what was sent and what failed.
    fn emit<'a>(&mut self, datagrams: impl Iterator<Item = &'a [u8]>) -> SendOutcome;
}

impl Emit for net::BatchSender {
    fn emit<'a>(&mut self, datagrams: impl Iterator<Item = &'a [u8]>) -> SendOutcome {
        self.send(datagrams)
    }
}

/// Picks every `factor`-th valid datagram, counting across batches.
#[derive(Debug)]
pub(crate) struct Decimator {
    factor: u64,
    /// Valid datagrams seen, for the phase.
    seen: u64,
}

impl Decimator {
    pub(crate) fn new(factor: u32) -> Decimator {
        Decimator {
            factor: u64::from(factor.max(1)),
            seen: 0,
        }
    }

    /// Appends to `picked` those of `valid` (a batch's valid datagrams, by
    /// index) that the decimated output carries.
    pub(crate) fn pick(&mut self, valid: &[usize], picked: &mut Vec<usize>) {
        for &i in valid {
            self.seen += 1;
            if self.seen % self.factor == 0 {
                picked.push(i);
            }
        }
    }
}

/// The full-rate and decimated outputs of a channel, either optional.
pub(crate) struct Outputs<E = net::BatchSender> {
    full: Option<E>,
    decimated: Option<(E, Decimator)>,
    /// This batch's picks for the decimated output.
    picked: Vec<usize>,
    send_log: RateLimit,
    channel: String,
}

impl<E: Emit> Outputs<E> {
    /// `batch`: the most datagrams one call forwards.
    pub(crate) fn new(
        full: Option<E>,
        decimated: Option<(E, Decimator)>,
        batch: usize,
        channel: &str,
    ) -> Outputs<E> {
        Outputs {
            full,
            decimated,
            picked: Vec::with_capacity(batch),
            send_log: RateLimit::new(1, Duration::from_secs(60)),
            channel: channel.to_string(),
        }
    }

    /// Sends a batch's valid datagrams (`valid`: indices for `datagram`)
    /// on the outputs and counts what was sent and what failed.
    pub(crate) fn forward<'a>(
        &mut self,
        valid: &[usize],
        datagram: impl Fn(usize) -> &'a [u8],
        now: Instant,
        counts: &mut BatchCounts,
    ) {
        let full = match &mut self.full {
            Some(out) => out.emit(valid.iter().map(|&i| datagram(i))),
            None => SendOutcome::default(),
        };
        let mut dec = SendOutcome::default();
        if let Some((out, decimator)) = &mut self.decimated {
            self.picked.clear();
            decimator.pick(valid, &mut self.picked);
            if !self.picked.is_empty() {
                dec = out.emit(self.picked.iter().map(|&i| datagram(i)));
            }
        }
        counts.forwarded_full += full.sent;
        counts.send_errors_full += full.failed;
        counts.forwarded_decimated += dec.sent;
        counts.send_errors_decimated += dec.failed;
        self.log_errors(&[(&full, "full"), (&dec, "decimated")], now);
    }

    fn log_errors(&mut self, outcomes: &[(&SendOutcome, &str)], now: Instant) {
        for (out, name) in outcomes {
            if let Some(errno) = out.error {
                if let Some(suppressed) = self.send_log.allow(now) {
                    tracing::warn!(
                        channel = %self.channel, output = name, failed = out.failed, suppressed,
                        error = %std::io::Error::from_raw_os_error(errno), "send failed"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is given; refuses datagrams that start with 0xFF.
    #[derive(Default)]
    struct Recorder(Vec<Vec<u8>>);

    impl Emit for Recorder {
        fn emit<'a>(&mut self, datagrams: impl Iterator<Item = &'a [u8]>) -> SendOutcome {
            let mut out = SendOutcome::default();
            for d in datagrams {
                if d.first() == Some(&0xFF) {
                    out.failed += 1;
                    out.error = Some(libc::EPERM);
                } else {
                    self.0.push(d.to_vec());
                    out.sent += 1;
                }
            }
            out
        }
    }

    fn datagrams(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i]).collect()
    }

    #[test]
    fn the_decimator_picks_every_nth_across_batches() {
        let mut d = Decimator::new(3);
        let mut picked = Vec::new();
        d.pick(&[0, 1], &mut picked);
        assert!(picked.is_empty());
        d.pick(&[5, 6, 7, 8], &mut picked);
        assert_eq!(picked, [5, 8]);
        let mut every = Decimator::new(1);
        picked.clear();
        every.pick(&[1, 2], &mut picked);
        assert_eq!(picked, [1, 2]);
    }

    #[test]
    fn full_gets_every_valid_datagram_decimated_every_nth() {
        let data = datagrams(10);
        let mut o = Outputs::new(
            Some(Recorder::default()),
            Some((Recorder::default(), Decimator::new(2))),
            16,
            "ch",
        );
        let mut counts = BatchCounts::new();
        let now = Instant::now();
        o.forward(&[0, 2, 3], |i| &data[i], now, &mut counts);
        o.forward(&[4, 9], |i| &data[i], now, &mut counts);
        assert_eq!(o.full.as_ref().unwrap().0, [[0], [2], [3], [4], [9]]);
        assert_eq!(o.decimated.as_ref().unwrap().0 .0, [[2], [4]]);
        assert_eq!((counts.forwarded_full, counts.forwarded_decimated), (5, 2));
        assert_eq!(counts.send_errors_full + counts.send_errors_decimated, 0);
    }

    #[test]
    fn refused_datagrams_are_counted_and_the_rest_go_on() {
        let data = [vec![1], vec![0xFF], vec![2]];
        let mut o = Outputs::new(Some(Recorder::default()), None, 4, "ch");
        let mut counts = BatchCounts::new();
        o.forward(&[0, 1, 2], |i| &data[i], Instant::now(), &mut counts);
        assert_eq!((counts.forwarded_full, counts.send_errors_full), (2, 1));
        assert_eq!(counts.forwarded_decimated, 0);
    }

    #[test]
    fn no_outputs_send_nothing() {
        let mut o: Outputs<Recorder> = Outputs::new(None, None, 4, "ch");
        let mut counts = BatchCounts::new();
        o.forward(&[0], |_| &[1][..], Instant::now(), &mut counts);
        assert_eq!(counts.forwarded_full + counts.forwarded_decimated, 0);
    }
}
