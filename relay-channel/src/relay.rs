//! One channel, wired together: the receive thread ([`crate::receive`]),
//! the archive thread, the quarantine thread, and the control loop on tokio
//! (signals, the stats line, thread supervision).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::archive::Archive;
use crate::config::{ChannelSpec, ConfigError, DecimationWindow, Encoding, OutputSpec};
use crate::decimate::Decimator;
use crate::handover;
use crate::ledger::Ledger;
#[cfg(target_os = "linux")]
use crate::mmsg;
use crate::net::{self, BatchSender};
use crate::quarantine;
use crate::receive::classify::Classifier;
use crate::receive::membership::Join;
use crate::receive::outputs::Outputs;
use crate::receive::{self, ReceivePath};
use crate::schema;
use crate::status::{FileClosed, IoPath, Ready, StatusLine, Stopped};

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

/// How a channel runs, beside its channel file: what the command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The holds folder (`--holds-dir`): retention keeps the files its
    /// holds cover (see [`crate::holds`]). `None`: no holds.
    pub holds_dir: Option<PathBuf>,
}

/// Set by the orchestrator for its relays: stdin is a pipe whose only
/// writer is the orchestrator, and end-of-file on it means the orchestrator
/// ended (however it ended); the relay then stops as on SIGTERM. This ties
/// a relay's life to its supervisor's on every platform (Linux also has
/// `PR_SET_PDEATHSIG`).
pub const LIFELINE_ENV: &str = "SPEEDDATA_LIFELINE";

/// With [`LIFELINE_ENV`] set: a thread that reads stdin until end-of-file,
/// then says so.
fn lifeline() -> Option<tokio::sync::oneshot::Receiver<()>> {
    std::env::var_os(LIFELINE_ENV)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watch = move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    };
    thread::Builder::new()
        .name("lifeline".into())
        .spawn(watch)
        .ok()?;
    Some(rx)
}

/// Runs the channel until SIGTERM or SIGINT (returns `Ok`) or until it
/// cannot go on (returns the error).
pub fn run(spec: ChannelSpec) -> Result<(), RunError> {
    run_with(spec, &RunOptions::default())
}

/// [`run`], with options.
pub fn run_with(spec: ChannelSpec, options: &RunOptions) -> Result<(), RunError> {
    let schema = schema::load(&spec)?;
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
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    if let Some(h) = &options.holds_dir {
        tracing::info!(holds_dir = %h.display(), "retention keeps the files the holds there cover");
    }
    let archive = Archive::open(
        &spec.archive,
        &spec.name,
        &schema.text,
        options.holds_dir.as_deref(),
        ledger.clone(),
        closed_tx,
    )
    .map_err(|e| failed(&format!("archive folder {}", archive_dir.display()), e))?;

    let (quarantine, quarantine_writer) = quarantine::path(
        archive_dir.join("quarantine.jsonl"),
        spec.archive.quarantine_size,
        ledger.clone(),
    );

    // Time windows of the decimated output go by the kernel's arrival stamps.
    let stamps = spec
        .decimated
        .as_ref()
        .is_some_and(|d| matches!(d.window, DecimationWindow::PerSecond(_)));
    let io = crate::portable_io::io_path();
    let rs = net::open_receive(&spec.receive, stamps, io)
        .map_err(|e| failed(&format!("receive.bind {}", spec.receive.bind), e))?;
    log_receive_socket(&rs, spec.receive.recv_buffer, io);
    if !rs.drop_counter {
        ledger.set_kernel_drops_absent();
    }
    let (to_archive, archive_inbox) =
        handover::archive_queue(spec.archive.queue, spec.receive.batch);
    let header =
        (spec.receive.encoding == Encoding::SingleObject).then_some(schema.single_object_header);
    let (outputs, gso) = open_outputs(&spec, schema.decimator, io)?;
    let parts = receive::Parts {
        socket: rs.socket,
        batch: spec.receive.batch,
        stamps: rs.stamps,
        io,
        classifier: Classifier::new(
            spec.receive.allow_from.clone(),
            header,
            spec.receive.validate.then_some(schema.validator),
        ),
        outputs,
        to_archive,
        quarantine,
        join: spec
            .receive
            .group
            .map(|g| Join::new(g, spec.receive.interface.clone(), &spec.name)),
    };
    let mut path = ReceivePath::new(parts, ledger.clone(), &spec.name);
    path.keep_joined();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("tokio runtime", e))?;
    rt.block_on(control(
        spec,
        path,
        (archive, archive_inbox, closed),
        quarantine_writer,
        ledger,
        (rs.recv_buffer_granted, gso, io),
    ))
}

fn log_receive_socket(rs: &net::ReceiveSocket, requested: usize, io: IoPath) {
    let granted = rs.recv_buffer_granted;
    if granted < requested {
        tracing::warn!(
            requested,
            granted,
            "the kernel granted less receive buffer than asked (raise net.core.rmem_max, or run with CAP_NET_ADMIN)"
        );
    } else {
        tracing::info!(requested, granted, "receive buffer");
    }
    match io {
        IoPath::Portable => tracing::info!(
            "portable I/O path: one datagram per system call, no kernel drop counter \
             (kernel_drops reads null){}",
            if cfg!(target_os = "linux") {
                " (SPEEDDATA_PORTABLE_IO)"
            } else {
                ""
            }
        ),
        IoPath::Mmsg if !rs.drop_counter => tracing::warn!(
            "the kernel does not report receive drops (SO_RXQ_OVFL) on this socket: kernel_drops reads null"
        ),
        IoPath::Mmsg => {}
    }
}

/// Opens the full-rate and decimated outputs the spec asks for; says
/// whether they send with UDP GSO (see `mmsg::SendBatch`).
fn open_outputs(
    spec: &ChannelSpec,
    decimator: Option<Decimator>,
    io: IoPath,
) -> Result<(Outputs, bool), RunError> {
    let open = |section: &str, o: &OutputSpec| {
        net::open_output(o)
            .map(|socket| BatchSender::new(socket, spec.receive.batch, io))
            .map_err(|e| RunError::Failed(format!("{}: {e}", output_what(section, o))))
    };
    let full = spec.full.as_ref().map(|o| open("full", o)).transpose()?;
    let decimated = match (&spec.decimated, decimator) {
        (Some(d), Some(decimator)) => Some((open("decimated", &d.output)?, decimator)),
        _ => None,
    };
    let senders = full.iter().chain(decimated.as_ref().map(|(s, _)| s));
    let gso = senders.clone().any(BatchSender::gso);
    if gso {
        tracing::info!("outputs send runs of equal-length datagrams with UDP GSO");
    } else if senders.count() > 0 {
        let why = if io == IoPath::Portable {
            "the portable I/O path sends one datagram per call"
        } else if gso_turned_off() {
            "turned off by SPEEDDATA_GSO"
        } else {
            "the kernel does not offer it"
        };
        tracing::info!("outputs send without UDP GSO: {why}");
    }
    Ok((Outputs::new(full, decimated, &spec.name), gso))
}

/// Whether `SPEEDDATA_GSO` turned UDP GSO off (Linux's batch path).
#[cfg(target_os = "linux")]
fn gso_turned_off() -> bool {
    !mmsg::gso_wanted(std::env::var_os(mmsg::GSO_ENV).as_deref())
}

#[cfg(not(target_os = "linux"))]
fn gso_turned_off() -> bool {
    false
}

/// "full.group 239.1.1.1:6000 (interface eth1)", for errors.
fn output_what(section: &str, o: &OutputSpec) -> String {
    match &o.interface {
        Some(i) => format!("{section}.group {} ({section}.interface {i})", o.dest),
        None => format!("{section}.group {}", o.dest),
    }
}

/// Where the archive reports the files it closed, for the control loop to
/// write: only the control thread writes stdout.
type FileClosedReceiver = tokio::sync::mpsc::UnboundedReceiver<FileClosed>;

async fn control(
    spec: ChannelSpec,
    path: ReceivePath,
    (archive, archive_inbox, mut closed): (Archive, handover::ArchiveInbox, FileClosedReceiver),
    quarantine_writer: Option<quarantine::Writer>,
    ledger: Arc<Ledger>,
    (recv_buffer_granted, gso, io): (usize, bool, IoPath),
) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let failed = |e: std::io::Error| RunError::Failed(format!("signals: {e}"));
    let mut sigterm = signal(SignalKind::terminate()).map_err(failed)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(failed)?;
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let first = ReceiveFirst {
        cpu: spec.receive.cpu,
        realtime: spec.receive.realtime,
    };
    let threads = Threads::spawn(
        (path, first),
        (archive, archive_inbox),
        quarantine_writer,
        ended_tx,
    )?;
    ready_line(&spec, recv_buffer_granted, gso, io).emit();
    tracing::info!(channel = %spec.name, bind = %spec.receive.bind, "ready");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let lifeline = lifeline();
    let orchestrator_gone = async {
        let said = match lifeline {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !said {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(orchestrator_gone);
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => ledger.stats_line(&spec.name, false).emit(),
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            _ = &mut orchestrator_gone => break Ok("the orchestrator ended (stdin closed)"),
            Some(which) = ended.recv() => break Err(which),
            Some(file) = closed.recv() => StatusLine::FileClosed(file).emit(),
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
    let (receive_ok, archive_ok) = threads.stop_and_join(&spec.name);
    // Every file closed is reported before the last lines.
    while let Ok(file) = closed.try_recv() {
        StatusLine::FileClosed(file).emit();
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

fn ready_line(spec: &ChannelSpec, recv_buffer_granted: usize, gso: bool, io: IoPath) -> StatusLine {
    StatusLine::Ready(Ready {
        channel: spec.name.clone(),
        pid: std::process::id(),
        bind: spec.receive.bind.to_string(),
        group: spec.receive.group.map(|g| g.to_string()),
        recv_buffer_granted,
        archive_dir: spec.archive.channel_dir(&spec.name),
        full: spec.full.as_ref().map(|o| o.dest.to_string()),
        decimated: spec.decimated.as_ref().map(|d| d.output.dest.to_string()),
        gso,
        io,
    })
}

/// The channel's threads; each tells the control loop when it ends.
struct Threads {
    receive: JoinHandle<()>,
    archive: JoinHandle<()>,
    quarantine: Option<JoinHandle<()>>,
    /// Asks the receive thread to drain and stop; the others follow as
    /// their queues close.
    stop: Arc<AtomicBool>,
}

impl Threads {
    fn spawn(
        (path, first): (ReceivePath, ReceiveFirst),
        (archive, inbox): (Archive, handover::ArchiveInbox),
        quarantine_writer: Option<quarantine::Writer>,
        ended: EndedSender,
    ) -> Result<Threads, RunError> {
        let archive = spawn("archive", &ended, move || archive.run(inbox))?;
        let quarantine = quarantine_writer
            .map(|w| spawn("quarantine", &ended, move || w.run()))
            .transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let receive = {
            let stop = stop.clone();
            spawn("receive", &ended, move || {
                receive_first(first);
                path.run(&stop)
            })?
        };
        Ok(Threads {
            receive,
            archive,
            quarantine,
            stop,
        })
    }

    /// Stops the receive thread and waits for every thread; returns whether
    /// the receive and archive threads ended without a panic.
    fn stop_and_join(self, channel: &str) -> (bool, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let receive_ok = self.receive.join().is_ok();
        let archive_ok = self.archive.join().is_ok();
        // The quarantine is for inspection: its failure is logged, not fatal.
        if self.quarantine.is_some_and(|t| t.join().is_err()) {
            tracing::error!(channel = %channel, "the quarantine thread panicked");
        }
        (receive_ok, archive_ok)
    }
}

/// What the receive thread asks of the scheduler (`receive.cpu`,
/// `receive.realtime`).
struct ReceiveFirst {
    cpu: Option<usize>,
    realtime: bool,
}

/// Applies `first` to the calling thread, the receive thread, and says in
/// the log what was granted.
fn receive_first(first: ReceiveFirst) {
    if let Some(cpu) = first.cpu {
        match crate::sched::pin(cpu) {
            Ok(()) => tracing::info!(
                cpu,
                "the receive thread runs on CPU {cpu} only (receive.cpu)"
            ),
            Err(e) => tracing::warn!(
                cpu,
                "receive.cpu: cannot pin the receive thread to CPU {cpu} ({e}); it runs on any CPU"
            ),
        }
    }
    if first.realtime {
        match crate::sched::realtime() {
            Ok(()) => tracing::info!(
                "the receive thread runs SCHED_FIFO at priority {} (receive.realtime)",
                crate::sched::RECEIVE_RT_PRIORITY
            ),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => tracing::warn!(
                "receive.realtime: the kernel refused SCHED_FIFO ({e}): the relay needs an \
                 RLIMIT_RTPRIO of at least 1 (the systemd unit sets LimitRTPRIO=1; from a shell: \
                 prlimit --rtprio=1) or CAP_SYS_NICE; the receive thread runs at the default \
                 priority"
            ),
            Err(e) => tracing::warn!(
                "receive.realtime: cannot run the receive thread SCHED_FIFO ({e}); it runs at the default priority"
            ),
        }
    }
}

/// Where threads report their end: their name.
type EndedSender = tokio::sync::mpsc::UnboundedSender<&'static str>;

/// Starts the thread `name`, which reports its end on `ended`.
fn spawn(
    name: &'static str,
    ended: &EndedSender,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, RunError> {
    let guard = EndGuard(name, ended.clone());
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _guard = guard;
            body();
        })
        .map_err(|e| RunError::Failed(format!("spawn {name} thread: {e}")))
}

/// Tells the control loop a thread has ended, however it ended (also on
/// panic, as the guard drops while unwinding).
struct EndGuard(&'static str, EndedSender);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}
