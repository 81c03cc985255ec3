//! The live outputs: every valid datagram on the full-rate output, what
//! the decimator makes of them on the decimated one.

use std::time::{Duration, Instant};

use crate::decimate::Decimator;
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

/// The full-rate and decimated outputs of a channel, either optional.
pub(crate) struct Outputs<E = net::BatchSender> {
    full: Option<E>,
    decimated: Option<(E, Decimator)>,
    send_log: RateLimit,
    /// Datagrams the decimator could not decode (with validation off).
    undecodable_log: RateLimit,
    channel: String,
}

impl<E: Emit> Outputs<E> {
    pub(crate) fn new(
        full: Option<E>,
        decimated: Option<(E, Decimator)>,
        channel: &str,
    ) -> Outputs<E> {
        Outputs {
            full,
            decimated,
            send_log: RateLimit::new(1, Duration::from_secs(60)),
            undecodable_log: RateLimit::new(1, Duration::from_secs(60)),
            channel: channel.to_string(),
        }
    }

    /// Sends a batch's valid datagrams (`valid`: indices for `datagram`)
    /// on the outputs and counts what was sent and what failed.
    /// `arrival` gives when each arrived, for time windows.
    pub(crate) fn forward<'a>(
        &mut self,
        valid: &[usize],
        datagram: impl Fn(usize) -> &'a [u8],
        arrival: impl Fn(usize) -> Instant,
        now: Instant,
        counts: &mut BatchCounts,
    ) {
        let full = match &mut self.full {
            Some(out) => out.emit(valid.iter().map(|&i| datagram(i))),
            None => SendOutcome::default(),
        };
        let mut undecodable = 0u64;
        let dec = match &mut self.decimated {
            Some((out, decimator)) => {
                for &i in valid {
                    if !decimator.offer(datagram(i), arrival(i)) {
                        undecodable += 1;
                    }
                }
                send_ready(out, decimator)
            }
            None => SendOutcome::default(),
        };
        counts.forwarded_full += full.sent;
        counts.send_errors_full += full.failed;
        counts.forwarded_decimated += dec.sent;
        counts.send_errors_decimated += dec.failed;
        self.log_errors(&[(&full, "full"), (&dec, "decimated")], now);
        if undecodable > 0 {
            if let Some(suppressed) = self.undecodable_log.allow(now) {
                tracing::warn!(
                    channel = %self.channel, undecodable, suppressed,
                    "the decimator could not decode datagrams (receive.validate is off): left out of the decimated output"
                );
            }
        }
    }

    /// Nothing arrived: ends a decimation window that is over at `now`.
    pub(crate) fn tick(&mut self, now: Instant, counts: &mut BatchCounts) {
        if let Some((out, decimator)) = &mut self.decimated {
            decimator.tick(now);
            let dec = send_ready(out, decimator);
            counts.forwarded_decimated += dec.sent;
            counts.send_errors_decimated += dec.failed;
            self.log_errors(&[(&dec, "decimated")], now);
        }
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

/// Sends what the decimator has ready.
fn send_ready<E: Emit>(out: &mut E, decimator: &mut Decimator) -> SendOutcome {
    if decimator.ready_count() == 0 {
        return SendOutcome::default();
    }
    let sent = out.emit(decimator.ready());
    decimator.clear();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;

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

    /// A decimator that downsamples by `n` (any schema does for that).
    fn every(n: u32) -> Decimator {
        let schema = apache_avro::Schema::parse_str("\"int\"").unwrap();
        let window = crate::config::DecimationWindow::Records(n).into();
        Decimator::new(&schema, Algorithm::Downsample, window, &[], &[]).unwrap()
    }

    fn datagrams(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i]).collect()
    }

    #[test]
    fn full_gets_every_valid_datagram_decimated_every_nth() {
        let data = datagrams(10);
        let mut o = Outputs::new(
            Some(Recorder::default()),
            Some((Recorder::default(), every(2))),
            "ch",
        );
        let mut counts = BatchCounts::new();
        let now = Instant::now();
        o.forward(&[0, 2, 3], |i| &data[i], |_| now, now, &mut counts);
        o.forward(&[4, 9], |i| &data[i], |_| now, now, &mut counts);
        assert_eq!(o.full.as_ref().unwrap().0, [[0], [2], [3], [4], [9]]);
        assert_eq!(o.decimated.as_ref().unwrap().0 .0, [[2], [4]]);
        assert_eq!((counts.forwarded_full, counts.forwarded_decimated), (5, 2));
        assert_eq!(counts.send_errors_full + counts.send_errors_decimated, 0);
    }

    #[test]
    fn a_time_window_ends_on_a_tick_without_input() {
        let schema = apache_avro::Schema::parse_str("\"double\"").unwrap();
        let window = crate::config::DecimationWindow::PerSecond(10.0).into();
        let avg = Decimator::new(&schema, Algorithm::Average, window, &[], &[]).unwrap();
        let mut o = Outputs::new(None, Some((Recorder::default(), avg)), "ch");
        let data = [1.0f64.to_le_bytes(), 3.0f64.to_le_bytes()];
        let mut counts = BatchCounts::new();
        let t0 = Instant::now();
        o.forward(&[0, 1], |i| &data[i], |_| t0, t0, &mut counts);
        o.tick(t0 + Duration::from_millis(50), &mut counts);
        assert_eq!(counts.forwarded_decimated, 0);
        o.tick(t0 + Duration::from_millis(100), &mut counts);
        assert_eq!(counts.forwarded_decimated, 1);
        assert_eq!(o.decimated.as_ref().unwrap().0 .0, [2.0f64.to_le_bytes()]);
    }

    #[test]
    fn refused_datagrams_are_counted_and_the_rest_go_on() {
        let data = [vec![1], vec![0xFF], vec![2]];
        let mut o = Outputs::new(Some(Recorder::default()), None, "ch");
        let mut counts = BatchCounts::new();
        o.forward(
            &[0, 1, 2],
            |i| &data[i],
            |_| Instant::now(),
            Instant::now(),
            &mut counts,
        );
        assert_eq!((counts.forwarded_full, counts.send_errors_full), (2, 1));
        assert_eq!(counts.forwarded_decimated, 0);
    }

    #[test]
    fn no_outputs_send_nothing() {
        let mut o: Outputs<Recorder> = Outputs::new(None, None, "ch");
        let mut counts = BatchCounts::new();
        o.forward(
            &[0],
            |_| &[1][..],
            |_| Instant::now(),
            Instant::now(),
            &mut counts,
        );
        assert_eq!(counts.forwarded_full + counts.forwarded_decimated, 0);
    }
}
