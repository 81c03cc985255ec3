//! One channel, wired together: the receive thread (recvmmsg → validate →
//! sendmmsg to the outputs → hand the batch to the archive), the archive
//! thread, and the control loop on tokio (signals, the stats line, thread
//! supervision).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::archive::Archive;
use crate::config::{ChannelSpec, ConfigError, MAX_DATAGRAM};
use crate::handover::{self, Batch, RejectedDatagram, Rejection, ToArchive, HAND_OVER_AFTER};
use crate::ledger::{BatchCounts, Ledger};
use crate::logs::RateLimit;
use crate::net::{self, Receiver, Sender};
use crate::quarantine;
use crate::status::{Ready, StatusLine, Stopped};
use crate::validate::Validator;

/// Why a channel stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration (or the schema it names) is wrong: exit 78.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Anything else: exit 1, worth a restart.
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    /// The process exit code: 78 (EX_CONFIG) for a configuration error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => 78,
            RunError::Failed(_) => 1,
        }
    }
}

/// The schema of a channel: its text as written (for the archive header) and
/// the compiled validator.
pub struct LoadedSchema {
    pub text: String,
    pub validator: Validator,
    /// The single-object encoding header of this schema (`C3 01` and the
    /// CRC-64-AVRO fingerprint of its canonical form).
    pub single_object_header: [u8; 10],
}

/// Reads, parses and compiles the channel's schema; problems are
/// configuration errors against the `schema` key.
pub fn load_schema(spec: &ChannelSpec) -> Result<LoadedSchema, ConfigError> {
    let err = |m: String| ConfigError {
        file: spec.file.clone(),
        problems: vec![crate::config::Problem {
            key: "schema".into(),
            message: m,
        }],
    };
    let path = &spec.schema_path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
        err(format!(
            "{} is not a valid Avro schema: {e}",
            path.display()
        ))
    })?;
    let validator = Validator::new(&schema).map_err(|e| err(format!("{}: {e}", path.display())))?;
    use apache_avro::headers::HeaderBuilder as _;
    let header = apache_avro::headers::RabinFingerprintHeader::from_schema(&schema).build_header();
    let mut single_object_header = [0u8; 10];
    single_object_header.copy_from_slice(&header[..10]);
    Ok(LoadedSchema {
        text: text.trim().to_string(),
        validator,
        single_object_header,
    })
}

/// Runs the channel until SIGTERM or SIGINT (returns `Ok`) or until it
/// cannot go on (returns the error).
pub fn run(spec: ChannelSpec) -> Result<(), RunError> {
    let schema = load_schema(&spec)?;
    let ledger = Arc::new(Ledger::new());
    let failed = |what: &str, e: std::io::Error| RunError::Failed(format!("{what}: {e}"));

    let archive_dir = spec.archive.channel_dir(&spec.name);
    if let Err(e) = crate::archive::refuse_symlinked_folder(&archive_dir) {
        return Err(RunError::Config(ConfigError {
            file: spec.file.clone(),
            problems: vec![crate::config::Problem {
                key: "archive.dir".into(),
                message: format!(
                    "the channel folder {e}: it must be a real folder inside archive.dir (archive.dir itself may be a symlink)"
                ),
            }],
        }));
    }
    let archive = Archive::open(&spec.archive, &spec.name, &schema.text, ledger.clone())
        .map_err(|e| failed(&format!("archive folder {}", archive_dir.display()), e))?;

    let (quarantine, quarantine_writer) = quarantine::path(
        archive_dir.join("quarantine.jsonl"),
        spec.archive.quarantine_size,
        ledger.clone(),
    );

    let rs = net::open_receive(&spec.receive)
        .map_err(|e| failed(&format!("receive.bind {}", spec.receive.bind), e))?;
    let requested = spec.receive.recv_buffer;
    if rs.recv_buffer_granted < requested {
        tracing::warn!(
            requested,
            granted = rs.recv_buffer_granted,
            "the kernel granted less receive buffer than asked (raise net.core.rmem_max, or run with CAP_NET_ADMIN)"
        );
    } else {
        tracing::info!(
            requested,
            granted = rs.recv_buffer_granted,
            "receive buffer"
        );
    }
    if !rs.drop_counter {
        tracing::warn!("the kernel does not report receive drops (SO_RXQ_OVFL) on this socket");
    }
    let full = match &spec.full {
        Some(o) => Some(Sender::new(
            net::open_output(o).map_err(|e| failed(&output_what("full", o), e))?,
            spec.receive.batch,
        )),
        None => None,
    };
    let decimated = match &spec.decimated {
        Some(d) => Some(Sender::new(
            net::open_output(&d.output)
                .map_err(|e| failed(&output_what("decimated", &d.output), e))?,
            spec.receive.batch,
        )),
        None => None,
    };

    let (to_archive, archive_inbox) =
        handover::archive_queue(spec.archive.queue, spec.receive.batch);
    let join = spec
        .receive
        .group
        .map(|g| (g, spec.receive.interface.clone()));
    let mut path = ReceivePath {
        receiver: Receiver::new(&rs.socket, spec.receive.batch),
        socket: rs.socket,
        validator: spec.receive.validate.then_some(schema.validator),
        allow_from: spec.receive.allow_from.clone(),
        header: (spec.receive.encoding == crate::config::Encoding::SingleObject)
            .then_some(schema.single_object_header),
        full,
        decimated,
        factor: spec.decimated.as_ref().map_or(1, |d| d.factor as u64),
        valid_seen: 0,
        valid: Vec::with_capacity(spec.receive.batch),
        picked: Vec::with_capacity(spec.receive.batch),
        counts: BatchCounts::new(),
        pending: None,
        pending_since: None,
        to_archive,
        ledger: ledger.clone(),
        join,
        joined: false,
        ever_joined: false,
        next_join: Instant::now(),
        reject_log: RateLimit::new(5, Duration::from_secs(60)),
        drop_log: RateLimit::new(1, Duration::from_secs(60)),
        error_log: RateLimit::new(1, Duration::from_secs(60)),
        send_log: RateLimit::new(1, Duration::from_secs(60)),
        channel: spec.name.clone(),
        quarantine,
    };
    path.keep_joined(true);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("tokio runtime", e))?;
    rt.block_on(control(
        spec,
        path,
        (archive, archive_inbox),
        quarantine_writer,
        ledger,
        rs.recv_buffer_granted,
    ))
}

/// "full.group 239.1.1.1:6000 (interface eth1)", for errors.
fn output_what(section: &str, o: &crate::config::OutputSpec) -> String {
    match &o.interface {
        Some(i) => format!("{section}.group {} ({section}.interface {i})", o.dest),
        None => format!("{section}.group {}", o.dest),
    }
}

async fn control(
    spec: ChannelSpec,
    path: ReceivePath,
    (archive, archive_inbox): (Archive, handover::ArchiveInbox),
    quarantine_writer: Option<quarantine::Writer>,
    ledger: Arc<Ledger>,
    recv_buffer_granted: usize,
) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let failed = |what: &str, e: std::io::Error| RunError::Failed(format!("{what}: {e}"));
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| failed("signals", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| failed("signals", e))?;

    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let stop = Arc::new(AtomicBool::new(false));

    let archive_thread = {
        let guard = EndGuard("archive", ended_tx.clone());
        thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                let _guard = guard;
                archive.run(archive_inbox);
            })
            .map_err(|e| failed("spawn archive thread", e))?
    };
    let quarantine_thread = match quarantine_writer {
        Some(w) => {
            let guard = EndGuard("quarantine", ended_tx.clone());
            Some(
                thread::Builder::new()
                    .name("quarantine".into())
                    .spawn(move || {
                        let _guard = guard;
                        w.run();
                    })
                    .map_err(|e| failed("spawn quarantine thread", e))?,
            )
        }
        None => None,
    };
    let receive_thread = {
        let guard = EndGuard("receive", ended_tx);
        let stop = stop.clone();
        thread::Builder::new()
            .name("receive".into())
            .spawn(move || {
                let _guard = guard;
                path.run(&stop);
            })
            .map_err(|e| failed("spawn receive thread", e))?
    };

    StatusLine::Ready(Ready {
        channel: spec.name.clone(),
        pid: std::process::id(),
        bind: spec.receive.bind.to_string(),
        group: spec.receive.group.map(|g| g.to_string()),
        recv_buffer_granted,
        archive_dir: spec.archive.channel_dir(&spec.name),
        full: spec.full.as_ref().map(|o| o.dest.to_string()),
        decimated: spec.decimated.as_ref().map(|d| d.output.dest.to_string()),
    })
    .emit();
    tracing::info!(channel = %spec.name, bind = %spec.receive.bind, "ready");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => ledger.stats_line(&spec.name, false).emit(),
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            Some(which) = ended.recv() => break Err(which),
        }
    };
    match outcome {
        Ok(sig) => {
            tracing::info!(channel = %spec.name, "{sig}: stopping, writing out what is buffered")
        }
        Err(which) => {
            tracing::error!(channel = %spec.name, "the {which} thread ended unexpectedly; stopping")
        }
    }
    stop.store(true, Ordering::Relaxed);
    let receive_ok = receive_thread.join().is_ok();
    let archive_ok = archive_thread.join().is_ok();
    // The quarantine is for inspection: its failure is logged, not fatal.
    if quarantine_thread.is_some_and(|t| t.join().is_err()) {
        tracing::error!(channel = %spec.name, "the quarantine thread panicked");
    }
    ledger.stats_line(&spec.name, true).emit();
    StatusLine::Stopped(Stopped {
        channel: spec.name.clone(),
    })
    .emit();
    match outcome {
        Ok(_) if receive_ok && archive_ok => {
            tracing::info!(channel = %spec.name, "stopped");
            Ok(())
        }
        Ok(_) | Err(_) => Err(RunError::Failed(format!(
            "channel {}: {} thread failed",
            spec.name,
            if receive_ok { "archive" } else { "receive" }
        ))),
    }
}

/// Tells the control loop a thread has ended, however it ended (also on
/// panic, as the guard drops while unwinding).
struct EndGuard(
    &'static str,
    tokio::sync::mpsc::UnboundedSender<&'static str>,
);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// Everything the receive thread owns.
struct ReceivePath {
    receiver: Receiver,
    /// Kept open for the receiver's descriptor.
    socket: socket2::Socket,
    validator: Option<Validator>,
    /// Accepted senders; empty: all.
    allow_from: Vec<ipnet::Ipv4Net>,
    /// With single-object encoding, the header every datagram starts with;
    /// the datum after it is what is validated and archived.
    header: Option<[u8; 10]>,
    full: Option<Sender>,
    decimated: Option<Sender>,
    factor: u64,
    /// Valid datagrams seen, for the decimator's phase.
    valid_seen: u64,
    /// Indices of the current batch's valid datagrams.
    valid: Vec<usize>,
    /// Indices picked for the decimated output.
    picked: Vec<usize>,
    /// The current batch's counts, for the ledger.
    counts: BatchCounts,
    /// The batch being filled for the archive; its records already count as
    /// `in_flight`. Handed over when full or [`HAND_OVER_AFTER`] old, so a
    /// slow stream does not spend a queue slot per datagram.
    pending: Option<Batch>,
    pending_since: Option<Instant>,
    to_archive: ToArchive,
    ledger: Arc<Ledger>,
    /// Where copies of rejected datagrams go.
    quarantine: quarantine::Feed,
    /// The group and interface address to stay joined to.
    join: Option<(Ipv4Addr, crate::config::Interface)>,
    joined: bool,
    ever_joined: bool,
    next_join: Instant,
    reject_log: RateLimit,
    drop_log: RateLimit,
    error_log: RateLimit,
    send_log: RateLimit,
    channel: String,
}

/// How long the receive thread keeps draining the socket after a stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How often a failed multicast join is tried again.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How often a standing membership is checked (by joining again).
const JOIN_CHECK: Duration = Duration::from_secs(2);

impl ReceivePath {
    fn run(mut self, stop: &AtomicBool) {
        let mut drain_until: Option<Instant> = None;
        loop {
            if drain_until.is_none() && stop.load(Ordering::Relaxed) {
                // Take what the kernel already holds, then stop.
                drain_until = Some(Instant::now() + DRAIN_LIMIT);
            }
            if drain_until.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            match self.receiver.recv(drain_until.is_some()) {
                Ok(0) => {}
                Ok(n) => self.process(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if drain_until.is_some() {
                        break;
                    }
                    self.hand_over_if_due(true);
                    let lost = self.quarantine.hand_over_if_due(Instant::now(), true);
                    if lost > 0 {
                        self.ledger.quarantine_dropped(lost);
                    }
                }
                Err(e) => {
                    self.ledger.receive_error();
                    if let Some(suppressed) = self.error_log.allow(Instant::now()) {
                        tracing::warn!(channel = %self.channel, error = %e, suppressed, "receive error");
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
            if self.join.is_some() {
                self.keep_joined(false);
            }
        }
        drop(self.socket);
        // The archive thread is still draining: wait for room rather than drop.
        if let Some(b) = self.pending.take().filter(|b| !b.is_empty()) {
            if let Err(b) = self.to_archive.send_timeout(b, Duration::from_secs(10)) {
                self.ledger.archive_dropped(b.len() as u64);
            }
        }
        let lost = self.quarantine.close();
        self.ledger.quarantine_dropped(lost);
    }

    /// Hands the pending batch over when it is full or old enough (or, with
    /// `idle`, whenever it holds anything).
    fn hand_over_if_due(&mut self, idle: bool) -> u64 {
        let Some(b) = &self.pending else { return 0 };
        if b.is_empty() {
            return 0;
        }
        let due = idle
            || b.bytes() >= handover::BATCH_BYTES
            || self
                .pending_since
                .is_some_and(|t| t.elapsed() >= HAND_OVER_AFTER);
        if !due {
            return 0;
        }
        self.pending_since = None;
        let b = self.pending.take().expect("checked above");
        match self.to_archive.try_send(b) {
            Ok(()) => 0,
            Err(mut b) => {
                let n = b.len() as u64;
                self.ledger.archive_dropped(n);
                b.clear();
                self.pending = Some(b);
                n
            }
        }
    }

    /// Keeps the multicast membership: joins (retrying every second while
    /// the interface is missing), then checks every few seconds that the
    /// membership still stands. The kernel drops it silently when the
    /// interface goes away; the next check joins again once it is back.
    fn keep_joined(&mut self, first: bool) {
        let Some((group, iface)) = &self.join else {
            return;
        };
        let (group, iface) = (*group, iface.clone());
        let now = Instant::now();
        if now < self.next_join {
            return;
        }
        let was_joined = self.joined;
        match net::join(&self.socket, group, &iface) {
            Ok(()) => {
                self.joined = true;
                self.next_join = now + JOIN_CHECK;
                if self.ever_joined {
                    tracing::warn!(channel = %self.channel, %group, interface = %iface, "joined the multicast group again: the membership had been lost (interface gone and back)");
                } else {
                    tracing::info!(channel = %self.channel, %group, interface = %iface, "joined multicast group");
                }
                self.ever_joined = true;
            }
            // Still a member.
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                self.joined = true;
                self.next_join = now + JOIN_CHECK;
            }
            Err(e) => {
                self.joined = false;
                self.next_join = now + JOIN_RETRY;
                if first || was_joined {
                    tracing::warn!(
                        channel = %self.channel, %group, interface = %iface, error = %e,
                        "cannot join the multicast group yet; retrying every second"
                    );
                }
            }
        }
        self.ledger.set_joined(self.joined);
    }

    /// Bytes before the datum in each datagram.
    fn header_len(&self) -> usize {
        self.header.map_or(0, |h| h.len())
    }

    fn process(&mut self, n: usize) {
        let now = Instant::now();
        let mut batch = self.pending.take().or_else(|| self.to_archive.take());
        self.counts.clear();
        self.valid.clear();
        for i in 0..n {
            let (d, from, truncated) = self.receiver.datagram(i);
            self.counts.datagram(d.len());
            let verdict = if !self.allow_from.is_empty()
                && !self.allow_from.iter().any(|n| n.contains(from.ip()))
            {
                Err(Rejection::SenderNotAllowed)
            } else if truncated || d.len() > MAX_DATAGRAM {
                Err(Rejection::Oversized)
            } else if self.header.is_some_and(|h| !d.starts_with(&h)) {
                Err(Rejection::WrongHeader)
            } else if let Some(v) = &self.validator {
                v.validate(&d[self.header_len()..]).map_err(|mut inv| {
                    inv.offset += self.header_len();
                    Rejection::Invalid(inv)
                })
            } else {
                Ok(())
            };
            match verdict {
                Ok(()) => self.valid.push(i),
                Err(detail) => {
                    self.counts.rejected(detail.reason());
                    let reason = detail.reason().as_str();
                    if let Some(suppressed) = self.reject_log.allow(now) {
                        tracing::warn!(
                            channel = %self.channel, %from, reason, %detail, length = d.len(), suppressed,
                            "rejected a datagram"
                        );
                    }
                    let r = RejectedDatagram {
                        at: SystemTime::now(),
                        from,
                        rejection: detail,
                    };
                    if !self.quarantine.offer(d, r, now) {
                        self.counts.quarantine_dropped += 1;
                    }
                }
            }
        }

        let rx = &self.receiver;
        let full = match &mut self.full {
            Some(s) => s.send(self.valid.iter().map(|&i| rx.datagram(i).0)),
            None => Default::default(),
        };
        let mut dec = Default::default();
        if let Some(s) = &mut self.decimated {
            self.picked.clear();
            for &i in &self.valid {
                self.valid_seen += 1;
                if self.valid_seen % self.factor == 0 {
                    self.picked.push(i);
                }
            }
            if !self.picked.is_empty() {
                dec = s.send(self.picked.iter().map(|&i| rx.datagram(i).0));
            }
        }
        for (out, name) in [(&full, "full"), (&dec, "decimated")] {
            if let Some(errno) = out.error {
                if let Some(suppressed) = self.send_log.allow(now) {
                    tracing::warn!(
                        channel = %self.channel, output = name, failed = out.failed, suppressed,
                        error = %std::io::Error::from_raw_os_error(errno), "send failed"
                    );
                }
            }
        }

        let valid = self.valid.len() as u64;
        let (queued, mut dropped) = match &mut batch {
            Some(b) => {
                let skip = self.header_len();
                for &i in &self.valid {
                    b.push(&rx.datagram(i).0[skip..]);
                }
                (valid, 0)
            }
            None => (0, valid),
        };
        if let Some(b) = batch {
            if !b.is_empty() && self.pending_since.is_none() {
                self.pending_since = Some(now);
            }
            self.pending = Some(b);
        }
        let c = &mut self.counts;
        c.to_archive = queued;
        c.not_archived = dropped;
        c.quarantine_dropped += self.quarantine.hand_over_if_due(now, false);
        c.forwarded_full = full.sent;
        c.send_errors_full = full.failed;
        c.forwarded_decimated = dec.sent;
        c.send_errors_decimated = dec.failed;
        c.kernel_drops = self.receiver.kernel_drops as u64;
        self.ledger.received(c);
        dropped += self.hand_over_if_due(false);
        if dropped > 0 {
            if let Some(suppressed) = self.drop_log.allow(now) {
                tracing::warn!(
                    channel = %self.channel, dropped, suppressed,
                    "archive queue full: datagrams not archived (still forwarded)"
                );
            }
        }
    }
}
