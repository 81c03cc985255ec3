//! One `relay-channel` child process: spawned in its own process group,
//! tied to the orchestrator's life (a pipe on its stdin whose only writer
//! is the orchestrator: at its end the relay reads end-of-file and stops
//! cleanly, on every platform; on Linux also `PR_SET_PDEATHSIG`), its stdout
//! status lines and stderr log lines read as they come, stopped with
//! SIGTERM then SIGKILL. It starts with the descriptor limit the
//! orchestrator was started with, not the one it raised for itself.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

/// A running relay.
pub struct Child {
    pub pid: u32,
    process: tokio::process::Child,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
    /// The stdout pipe's descriptor, owned by `stdout`: valid while that is.
    stdout_fd: Option<std::os::fd::RawFd>,
    stderr: Option<Lines<BufReader<ChildStderr>>>,
    /// The write end of the relay's stdin, never written: it closes when
    /// the orchestrator ends, however it ends, and the relay stops.
    _lifeline: Option<ChildStdin>,
}

/// Something a child said or did.
#[derive(Debug)]
pub enum Output {
    Stdout(String),
    Stderr(String),
    Exited(ExitStatus),
}

/// Starts `binary run --config FILE [--defaults TOML]`, with the holds
/// folder in `SPEEDDATA_HOLDS_DIR` and the number of channels the
/// orchestrator runs in `SPEEDDATA_CHANNELS` (how many relays share the
/// cores, for `archive.compress_threads`).
pub fn spawn(
    binary: &Path,
    file: &Path,
    defaults: &str,
    holds_dir: &Path,
    channels: usize,
) -> io::Result<Child> {
    let parent = std::process::id();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("run").arg("--config").arg(file);
    if !defaults.trim().is_empty() {
        cmd.arg("--defaults").arg(defaults);
    }
    // systemd's notification and watchdog variables are the orchestrator's.
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(var);
    }
    // The relay then leaves timestamps out of its log lines: the
    // orchestrator's own log stamps each forwarded line.
    cmd.env(relay_channel::logs::SUPERVISED_ENV, "1");
    cmd.env("SPEEDDATA_HOLDS_DIR", holds_dir);
    cmd.env(relay_channel::config::CHANNELS_ENV, channels.to_string());
    cmd.env(relay_channel::relay::LIFELINE_ENV, "1");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a signal meant for the orchestrator's
        // group (Ctrl-C in a terminal) does not reach the children; the
        // orchestrator stops them itself, in order.
        .process_group(0);
    // The orchestrator's raised descriptor limit is not the relay's.
    let limit = crate::fdlimit::child_limit();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(limit) = &limit {
                if libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SIGTERM (a clean stop that finalizes the archive) when the
            // orchestrator dies, even by SIGKILL. The orchestrator spawns
            // from its main thread, which lives as long as the process.
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The orchestrator may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut process = cmd.spawn()?;
    let pid = process.id().unwrap_or(0);
    let lifeline = process.stdin.take();
    let stdout_fd = process.stdout.as_ref().map(|s| {
        use std::os::fd::AsRawFd;
        s.as_raw_fd()
    });
    let stdout = process.stdout.take().map(|s| BufReader::new(s).lines());
    let stderr = process.stderr.take().map(|s| BufReader::new(s).lines());
    Ok(Child {
        pid,
        process,
        stdout,
        stdout_fd,
        stderr,
        _lifeline: lifeline,
    })
}

impl Child {
    /// The next thing the child says or does. Exit is reported only after
    /// both pipes are drained, so no status or log line is lost. Cancel
    /// safe: use it in `select!`.
    pub async fn next(&mut self) -> io::Result<Output> {
        loop {
            tokio::select! {
                line = next_line(&mut self.stdout) => match line? {
                    Some(l) => return Ok(Output::Stdout(l)),
                    None => self.stdout = None,
                },
                line = next_line(&mut self.stderr) => match line? {
                    Some(l) => return Ok(Output::Stderr(l)),
                    None => self.stderr = None,
                },
                status = self.process.wait(), if self.stdout.is_none() && self.stderr.is_none() => {
                    return Ok(Output::Exited(status?));
                }
            }
        }
    }

    /// Whether the child's stdout pipe holds bytes not read yet (status
    /// lines the orchestrator has not seen: after a pause of its own, say).
    pub fn output_waiting(&self) -> bool {
        let (Some(fd), Some(_)) = (self.stdout_fd, &self.stdout) else {
            return false;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int, the bytes queued in the pipe.
        let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        r == 0 && n > 0
    }

    /// Stops reading the pipes (a descendant may hold them open): `next`
    /// then waits only for the exit.
    pub fn abandon_pipes(&mut self) {
        self.stdout = None;
        self.stderr = None;
    }

    /// Sends a signal to the child's process group.
    pub fn signal(&self, sig: Signal) {
        if self.pid != 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), sig);
        }
    }
}

async fn next_line<R>(lines: &mut Option<Lines<R>>) -> io::Result<Option<String>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    match lines {
        Some(l) => match l.next_line().await {
            Ok(v) => Ok(v),
            // A line that is not UTF-8: skip it rather than lose the pipe.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(Some(String::from("<non-UTF-8 output>")))
            }
            Err(e) => Err(e),
        },
        None => std::future::pending().await,
    }
}

/// "exited with 1", "killed by SIGKILL".
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("an unknown signal");
        format!("killed by {name}")
    } else {
        "ended".into()
    }
}
