//! Helpers for the end-to-end tests: each test gets its own folder, its own
//! ports and multicast groups, runs the real `relay-channel` binary, talks to
//! it over loopback sockets, and reads the archives with real Avro readers
//! (apache-avro here, fastavro through `py/read_avro.py`).
//!
//! Network safety: every socket here is bound to 127.0.0.1 or joins on
//! 127.0.0.1; every multicast send leaves by 127.0.0.1 with TTL 0.

pub mod fleet;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use apache_avro::Schema;
use relay_channel::status::{IoPath, Ready, Stats, StatusLine};
use serde_json::Value as Json;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The example schema shipped in channels.d.
pub const EXAMPLE_SCHEMA: &str = include_str!("../../channels.d/example.avsc");

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a workspace binary, built once per test run (debug profile) so
/// the tests never run a stale binary.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args([
                "build",
                "--quiet",
                "-p",
                "relay-channel",
                "-p",
                "orchestrator",
                "-p",
                "speeddata-benches",
                "--bins",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let p = target.join("debug").join(name);
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A fresh folder for one test, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("speeddata-test-")
        .tempdir()
        .expect("tempdir")
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A multicast group in 239.255.0.0/16 that no other test of this run uses.
pub fn unique_group() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(239, 255, 100 + (pid % 100) as u8, 1 + (n % 250) as u8)
}

/// One example record as an apache-avro value.
pub fn example_value(counter: i32, message: &str) -> Value {
    let t = counter as f64 / 1000.0;
    Value::Record(vec![
        (
            "time".into(),
            Value::TimestampMicros(1_795_383_000_000_000 + counter as i64 * 1000),
        ),
        ("message".into(), Value::String(message.into())),
        ("counter".into(), Value::Int(counter)),
        (
            "sine_wave".into(),
            Value::Double((t * std::f64::consts::TAU).sin()),
        ),
        ("ramp".into(), Value::Double(t.fract())),
        (
            "square_wave".into(),
            Value::Double(if t.fract() < 0.5 { 1.0 } else { -1.0 }),
        ),
        (
            "noise".into(),
            Value::Double(((counter as f64) * 12.9898).sin().fract()),
        ),
    ])
}

/// One example record, encoded by apache-avro (an encoder independent of
/// the relay's code).
pub fn example_datum(schema: &Schema, counter: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value(&mut out, example_value(counter, message))
        .unwrap();
    out
}

/// One example record in Avro single-object encoding, by apache-avro.
pub fn example_single_object(schema: &Schema, counter: i32, message: &str) -> Vec<u8> {
    let mut w = apache_avro::GenericSingleObjectWriter::new_with_capacity(schema, 256).unwrap();
    let mut out = Vec::new();
    w.write_value_ref(&example_value(counter, message), &mut out)
        .unwrap();
    out
}

pub fn example_schema() -> Schema {
    Schema::parse_str(EXAMPLE_SCHEMA).unwrap()
}

/// `n` example records, counters 0 to `n - 1`, encoded by apache-avro.
pub fn example_records(n: usize, message: &str) -> Vec<Vec<u8>> {
    example_records_from(0, n, message)
}

/// `n` example records, counters from `first` on, encoded by apache-avro.
pub fn example_records_from(first: i32, n: usize, message: &str) -> Vec<Vec<u8>> {
    let schema = example_schema();
    (first..)
        .take(n)
        .map(|i| example_datum(&schema, i, message))
        .collect()
}

/// Malformed datagrams of every kind the relay must reject, built from a
/// valid one.
pub fn malformed(valid: &[u8], i: usize) -> Vec<u8> {
    match i % 5 {
        0 => valid[..valid.len() / 2].to_vec(),
        1 => {
            let mut x = valid.to_vec();
            x.extend_from_slice(b"trailing garbage");
            x
        }
        2 => Vec::new(),
        3 => vec![0x80u8; 64 + i], // a varint that never ends
        _ => {
            // 65,507 bytes of junk: a string length far past the end.
            let mut x = vec![0xffu8; 65_507];
            x[0] = 0x02;
            x
        }
    }
}

fn set_rcvbuf_force(s: &Socket, bytes: i32) {
    // SAFETY: plain integer option on a valid socket. Needs root; without it
    // the normal (clamped) size stays.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            4,
        );
    }
    let _ = s.set_recv_buffer_size(bytes as usize);
}

/// A receiver joined to a multicast group on 127.0.0.1, collecting what
/// arrives on a thread of its own.
pub struct GroupReceiver {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupReceiver {
    pub fn join(group: SocketAddrV4) -> GroupReceiver {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_multicast_all_v4(false).unwrap();
        set_rcvbuf_force(&s, 32 << 20);
        s.bind(&SockAddr::from(group)).unwrap();
        s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let sock: UdpSocket = s.into();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let got = got.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        got.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
                // Drain what is queued.
                sock.set_nonblocking(true).unwrap();
                while let Ok(n) = sock.recv(&mut buf) {
                    got.lock().unwrap().push(buf[..n].to_vec());
                }
            })
        };
        GroupReceiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Stops and returns everything received, in arrival order.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// A sender of datagrams to a relay: unicast to 127.0.0.1, or multicast
/// leaving by 127.0.0.1 with TTL 0.
pub struct Sender {
    sock: UdpSocket,
    to: SocketAddrV4,
}

impl Sender {
    pub fn new(to: SocketAddrV4) -> Sender {
        Sender::from_addr(to, Ipv4Addr::LOCALHOST)
    }

    /// A sender bound to `from` (an address of 127.0.0.0/8).
    pub fn from_addr(to: SocketAddrV4, from: Ipv4Addr) -> Sender {
        assert!(from.is_loopback());
        assert!(
            to.ip().is_loopback() || to.ip().is_multicast(),
            "tests send to 127.0.0.0/8 or to a group on 127.0.0.1 only"
        );
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        if to.ip().is_multicast() {
            s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
            s.set_multicast_ttl_v4(0).unwrap();
            s.set_multicast_loop_v4(true).unwrap();
        }
        s.set_send_buffer_size(4 << 20).unwrap();
        s.bind(&SockAddr::from(SocketAddrV4::new(from, 0))).unwrap();
        Sender { sock: s.into(), to }
    }

    pub fn send(&self, d: &[u8]) {
        self.sock.send_to(d, self.to).unwrap();
    }

    /// Sends all, pausing so that at most `per_ms` datagrams go out per
    /// millisecond (a debug-build relay must keep up without kernel drops).
    pub fn send_paced(&self, ds: &[Vec<u8>], per_ms: usize) {
        let start = Instant::now();
        for (i, d) in ds.iter().enumerate() {
            self.send(d);
            if (i + 1) % per_ms == 0 {
                let due = start + Duration::from_millis(((i + 1) / per_ms) as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// Sends `records` to each address from a thread of its own, paced as
/// [`Sender::send_paced`]; join the threads to wait for the end.
pub fn send_paced_to_each(
    to: impl IntoIterator<Item = SocketAddrV4>,
    records: &[Vec<u8>],
    per_ms: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    to.into_iter()
        .map(|bind| {
            let recs = records.to_vec();
            std::thread::spawn(move || Sender::new(bind).send_paced(&recs, per_ms))
        })
        .collect()
}

/// Options for a test channel file.
#[derive(Clone, Debug)]
pub struct ChannelOpts {
    pub name: String,
    pub bind: SocketAddrV4,
    pub group: Option<Ipv4Addr>,
    pub full: Option<SocketAddrV4>,
    pub decimated: Option<(SocketAddrV4, u32)>,
    /// The [decimated] keys that choose the algorithm and the window, in
    /// place of `algorithm = "downsample"` and `factor` from `decimated`.
    pub decimation: Option<String>,
    /// Extra lines for the [archive] section.
    pub archive: Vec<String>,
    /// Extra lines for the [receive] section.
    pub receive: Vec<String>,
    pub recv_buffer: String,
}

impl ChannelOpts {
    pub fn unicast(name: &str) -> ChannelOpts {
        ChannelOpts {
            name: name.into(),
            bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()),
            group: None,
            full: None,
            decimated: None,
            decimation: None,
            archive: vec![],
            receive: vec![],
            recv_buffer: "32MiB".into(),
        }
    }

    pub fn toml(&self) -> String {
        let mut t = format!(
            "name = \"{}\"\nschema = \"schema.avsc\"\n\n[receive]\nbind = \"{}\"\nrecv_buffer = \"{}\"\n",
            self.name, self.bind, self.recv_buffer
        );
        if let Some(g) = self.group {
            t += &format!("group = \"{g}\"\ninterface = \"127.0.0.1\"\n");
        }
        for l in &self.receive {
            t += l;
            t += "\n";
        }
        t += "\n[archive]\ndir = \"archive\"\n";
        for l in &self.archive {
            t += l;
            t += "\n";
        }
        if let Some(f) = self.full {
            t += &format!("\n[full]\ngroup = \"{f}\"\ninterface = \"127.0.0.1\"\nttl = 0\n");
        }
        if let Some((d, n)) = self.decimated {
            let how = match &self.decimation {
                Some(keys) => keys.clone(),
                None => format!("algorithm = \"downsample\"\nfactor = {n}"),
            };
            t += &format!(
                "\n[decimated]\ngroup = \"{d}\"\ninterface = \"127.0.0.1\"\nttl = 0\n{how}\n"
            );
        }
        t
    }
}

/// A running `relay-channel`, its folder and its stdout lines, read as the
/// relay's own [`StatusLine`] type.
pub struct Relay {
    pub dir: PathBuf,
    pub name: String,
    child: Child,
    events: Arc<Mutex<Vec<StatusLine>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The write end of the relay's stdin (a pipe, as the orchestrator
    /// gives it): closed by [`Relay::close_stdin`] or when the test ends.
    stdin: Option<std::process::ChildStdin>,
}

/// Writes the channel file (and the example schema) into `dir`.
pub fn write_channel(dir: &Path, opts: &ChannelOpts) -> PathBuf {
    write_channel_with_schema(dir, opts, EXAMPLE_SCHEMA)
}

/// Writes the channel file and `schema` (Avro schema JSON) into `dir`.
pub fn write_channel_with_schema(dir: &Path, opts: &ChannelOpts, schema: &str) -> PathBuf {
    std::fs::write(dir.join("schema.avsc"), schema).unwrap();
    let path = dir.join(format!("{}.toml", opts.name));
    std::fs::write(&path, opts.toml()).unwrap();
    path
}

impl Relay {
    /// Starts `relay-channel run` on the channel file and waits for `ready`.
    pub fn start(dir: &Path, opts: &ChannelOpts) -> Relay {
        let config = write_channel(dir, opts);
        let mut r = Relay::spawn(dir, &config, &opts.name);
        r.wait_ready(Duration::from_secs(20));
        r
    }

    /// Like [`Relay::start`], with `schema` (Avro schema JSON) as the
    /// channel's schema instead of the example's.
    pub fn start_with_schema(dir: &Path, opts: &ChannelOpts, schema: &str) -> Relay {
        let config = write_channel_with_schema(dir, opts, schema);
        let mut r = Relay::spawn(dir, &config, &opts.name);
        r.wait_ready(Duration::from_secs(20));
        r
    }

    /// Starts `relay-channel run --config FILE` without waiting.
    pub fn spawn(dir: &Path, config: &Path, name: &str) -> Relay {
        let mut cmd = Command::new(bin("relay-channel"));
        cmd.args(["run", "--config"]).arg(config);
        Relay::spawn_command(dir, cmd, name)
    }

    /// Like [`Relay::start`], the command changed by `more` first (extra
    /// arguments, environment).
    pub fn start_with(dir: &Path, opts: &ChannelOpts, more: impl FnOnce(&mut Command)) -> Relay {
        let config = write_channel(dir, opts);
        let mut cmd = Command::new(bin("relay-channel"));
        cmd.args(["run", "--config"]).arg(&config);
        more(&mut cmd);
        let mut r = Relay::spawn_command(dir, cmd, &opts.name);
        r.wait_ready(Duration::from_secs(20));
        r
    }

    /// Starts `relay-channel run --config FILE` alone in a new network
    /// namespace whose loopback is up (needs root), without waiting. Other
    /// programs enter it with [`Relay::in_netns`].
    pub fn spawn_in_netns(dir: &Path, config: &Path, name: &str) -> Relay {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" run --config \"$1\"",
        ])
        .arg(bin("relay-channel"))
        .arg(config);
        Relay::spawn_command(dir, cmd, name)
    }

    /// Starts `PREFIX... relay-channel run --config FILE` (a wrapper such as
    /// `setpriv` or `prlimit`), without waiting.
    pub fn spawn_wrapped(dir: &Path, config: &Path, name: &str, prefix: &[&str]) -> Relay {
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(bin("relay-channel"))
            .args(["run", "--config"])
            .arg(config);
        Relay::spawn_command(dir, cmd, name)
    }

    /// A command that runs `program` inside this relay's network namespace.
    pub fn in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.pid().to_string())
            .args(["--net", "--"])
            .arg(program);
        cmd
    }

    fn spawn_command(dir: &Path, mut cmd: Command, name: &str) -> Relay {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay-channel");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = collect_lines(child.stderr.take().unwrap());
        let out = child.stdout.take().unwrap();
        let reader = {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let v: StatusLine = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("stdout line is not a status line ({e}): {line}")
                    });
                    events.lock().unwrap().push(v);
                }
            })
        };
        let stdin = child.stdin.take();
        Relay {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            child,
            events,
            stderr,
            reader: Some(reader),
            stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn events(&self) -> Vec<StatusLine> {
        self.events.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for the `ready` line; panics with stderr after `limit`.
    pub fn wait_ready(&mut self, limit: Duration) -> Ready {
        let end = Instant::now() + limit;
        loop {
            let ready = self.events().into_iter().find_map(|e| match e {
                StatusLine::Ready(r) => Some(r),
                _ => None,
            });
            if let Some(r) = ready {
                // Every relay the tests start says which I/O path it runs:
                // the one the environment asks for (.ci/run runs the relay
                // tests once more with SPEEDDATA_PORTABLE_IO=1).
                assert_eq!(r.io, expected_io(), "{r:?}");
                return r;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "relay-channel exited ({status}) before \"ready\"; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < end,
                "no \"ready\" event within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The latest stats line.
    pub fn last_stats(&self) -> Option<Stats> {
        last_stats(&self.events()).cloned()
    }

    /// Closes the relay's stdin, as the end of its orchestrator would.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until a stats line shows `received >= n` (the relay has read
    /// what was sent).
    pub fn wait_received(&self, n: u64, limit: Duration) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.last_stats().is_some_and(|s| s.counters.received >= n) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "relay did not report {n} received within {limit:?}: {:?}\n{}",
            self.last_stats(),
            self.stderr()
        );
    }

    pub fn signal(&self, sig: i32) {
        kill(self.child.id(), sig);
    }

    /// SIGTERM, wait for exit; returns the exit code and the final stats.
    pub fn stop(mut self) -> (i32, Stats) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(Duration::from_secs(30));
        let last = self
            .last_stats()
            .unwrap_or_else(|| panic!("no stats line; stderr:\n{}", self.stderr()));
        assert!(last.last, "the last stats line is the final one");
        (code, last)
    }

    /// Sends `datagrams` to the relay's unicast address at most `per_ms` a
    /// millisecond and waits until its stats show them received.
    pub fn feed(&self, to: SocketAddrV4, datagrams: &[Vec<u8>], per_ms: usize) {
        let before = self.last_stats().map(|s| s.counters.received).unwrap_or(0);
        Sender::new(to).send_paced(datagrams, per_ms);
        self.wait_received(before + datagrams.len() as u64, Duration::from_secs(30));
    }

    /// SIGTERM; asserts a clean exit (0) and returns the channel's archive
    /// folder and the final stats line.
    pub fn stop_ok(self) -> (PathBuf, Stats) {
        let archive = self.archive_dir();
        let (code, last) = self.stop();
        assert_eq!(code, 0, "relay-channel did not exit cleanly: {last:?}");
        (archive, last)
    }

    /// Waits for exit; returns the exit code (128+signal if killed).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let code = wait_child(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "relay-channel did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            )
        });
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        code
    }

    /// The channel's archive folder.
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.join("archive").join(&self.name)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The latest stats line of a relay's stdout lines.
pub fn last_stats(lines: &[StatusLine]) -> Option<&Stats> {
    lines.iter().rev().find_map(|e| match e {
        StatusLine::Stats(s) => Some(s),
        _ => None,
    })
}

/// The paths of the `file_closed` lines.
pub fn closed_paths(lines: &[StatusLine]) -> Vec<PathBuf> {
    lines
        .iter()
        .filter_map(|e| match e {
            StatusLine::FileClosed(f) => Some(f.path.clone()),
            _ => None,
        })
        .collect()
}

/// Asserts the relay's accounting identity on a stats line:
/// `received = archived + rejected + archive_dropped + in_flight`.
/// The kernel dropped nothing: `kernel_drops` reads 0 on the batch path;
/// on the portable path, which has no kernel counter, it reads `null`
/// (absent), never 0.
pub fn assert_kernel_drops_none(s: &Stats) {
    match expected_io() {
        IoPath::Mmsg => assert_eq!(s.counters.kernel_drops, 0, "{s:?}"),
        IoPath::Portable => assert!(
            s.kernel_drops_absent,
            "the portable path has no kernel drop counter: kernel_drops must read null: {s:?}"
        ),
    }
}

pub fn assert_balanced(s: &Stats) {
    let n = &s.counters;
    assert_eq!(
        n.received,
        n.archived + n.rejected + n.archive_dropped + n.in_flight,
        "received = archived + rejected + archive_dropped + in_flight fails: {s:?}"
    );
}

/// Sends signal `sig` to process `pid`: one the test started, or a child
/// of one (a relay of its orchestrator).
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; the tests signal only their
    // own processes.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits up to `limit` for a child to exit; its exit code (128+signal if a
/// signal ended it), or `None` after killing it when it did not exit.
pub fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's output lines on a thread of its own.
pub fn collect_lines(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Closed archive files (`*.avro`) of a folder, sorted by name (= by time).
pub fn avro_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "avro"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a count of days since 1970-01-01: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An archive file name's stamp, `20261122T213000.123Z`, as a time.
pub fn parse_stamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(4..6)?, n(6..8)?);
    let secs = days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?;
    let ms = secs * 1000 + n(16..19)?;
    Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

/// A time in RFC 3339 to the millisecond, in the local time of a UTC offset
/// of `offset_minutes` (`Z` for 0): `2026-11-22T22:30:00.123+01:00`.
pub fn rfc3339(t: SystemTime, offset_minutes: i64) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 + offset_minutes * 60_000;
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let offset = if offset_minutes == 0 {
        "Z".to_string()
    } else {
        let a = offset_minutes.abs();
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", a / 60, a % 60)
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}{offset}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The span a closed archive file's name gives, `{channel}-{from}--{to}.avro`:
/// (channel, from, to); `None` for any other name.
pub fn name_span(path: &Path) -> Option<(String, SystemTime, SystemTime)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".avro")?;
    let (head, to) = name.rsplit_once("--")?;
    let (channel, from) = head.rsplit_once('-')?;
    Some((channel.to_string(), parse_stamp(from)?, parse_stamp(to)?))
}

/// Whether a closed archive file's name span overlaps `[from, to]` (ends
/// inclusive); panics for a name without a span.
pub fn overlaps(file: &Path, from: SystemTime, to: SystemTime) -> bool {
    let (_, f, t) =
        name_span(file).unwrap_or_else(|| panic!("{} has no span in its name", file.display()));
    f <= to && t >= from
}

/// Writes a hold file, `{dir}/{name}.json`, as the orchestrator would
/// (atomically: a temporary name, then a rename).
pub fn write_hold(dir: &Path, name: &str, from: &str, to: &str, channels: Option<&[&str]>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut hold = serde_json::json!({"name": name, "from": from, "to": to});
    if let Some(cs) = channels {
        hold["channels"] = serde_json::json!(cs);
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&hold).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.json"))).unwrap();
}

/// Files in a folder whose names end in `.part`.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every record of the files, in order, read with apache-avro's Reader and
/// re-encoded with the file's own schema: (file, record bytes).
pub fn read_with_apache_avro(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let reader = apache_avro::Reader::new(std::fs::File::open(f).unwrap())
            .unwrap_or_else(|e| panic!("apache-avro cannot open {}: {e}", f.display()));
        let schema = reader.writer_schema().clone();
        for v in reader {
            let v = v.unwrap_or_else(|e| panic!("apache-avro cannot read {}: {e}", f.display()));
            let mut buf = Vec::new();
            apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap()
                .write_value(&mut buf, v)
                .unwrap();
            out.push(buf);
        }
    }
    out
}

/// What fastavro (Python) reads from the files: per file, the schema text in
/// its header and every record re-encoded by fastavro.
pub struct FastavroRead {
    pub files: Vec<(PathBuf, String, usize)>,
    pub records: Vec<Vec<u8>>,
}

/// Runs `py/read_avro.py` with `args`; its JSON output.
fn run_read_avro(args: &[&std::ffi::OsStr]) -> Json {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/read_avro.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "fastavro could not read the archive (pip install fastavro?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every record of the files, in order, as fastavro's default reader
/// returns it (`fastavro.reader(f)`, logical types converted to datetime,
/// date, Decimal, UUID), as JSON objects: dates and times in ISO 8601
/// (`"2026-11-22T21:30:00+00:00"`), decimals and UUIDs as strings, bytes in
/// hex. Panics, with fastavro's error, if a record cannot be read.
pub fn read_values_with_fastavro(files: &[PathBuf]) -> Vec<Json> {
    let mut args = vec![std::ffi::OsStr::new("--values")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let v = run_read_avro(&args);
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["records"].as_array().unwrap().iter().cloned())
        .collect()
}

/// Reads the files with fastavro through `py/read_avro.py`.
pub fn read_with_fastavro(files: &[PathBuf]) -> FastavroRead {
    let args: Vec<&std::ffi::OsStr> = files.iter().map(|f| f.as_os_str()).collect();
    let v = run_read_avro(&args);
    let mut r = FastavroRead {
        files: vec![],
        records: vec![],
    };
    for f in v["files"].as_array().unwrap() {
        let recs = f["records"].as_array().unwrap();
        r.files.push((
            PathBuf::from(f["path"].as_str().unwrap()),
            f["schema"].as_str().unwrap().to_string(),
            recs.len(),
        ));
        for h in recs {
            r.records.push(from_hex(h.as_str().unwrap()));
        }
    }
    r
}

/// Reads a channel's archive with both readers, checks they agree and that
/// every file's header carries the schema as written; returns the records.
pub fn read_archive(dir: &Path) -> Vec<Vec<u8>> {
    let files = avro_files(dir);
    assert!(!files.is_empty(), "no archive file in {}", dir.display());
    let fast = read_with_fastavro(&files);
    let apache = read_with_apache_avro(&files);
    assert_eq!(
        fast.records.len(),
        apache.len(),
        "fastavro and apache-avro disagree on the count"
    );
    assert!(
        fast.records == apache,
        "fastavro and apache-avro disagree on the records"
    );
    for (path, schema, _) in &fast.files {
        assert_eq!(
            schema.trim(),
            EXAMPLE_SCHEMA.trim(),
            "{} does not carry the schema as written",
            path.display()
        );
    }
    fast.records
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The group address with a port, for outputs.
pub fn group_addr(g: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(g, port)
}

/// Runs `relay-channel` with arguments to completion: (exit code, stdout,
/// stderr).
pub fn run_relay(args: &[&str]) -> (i32, String, String) {
    run_to_end(Command::new(bin("relay-channel")), args)
}

/// Runs `cmd` with `args` and no stdin to completion: (exit code, stdout,
/// stderr).
pub fn run_to_end(mut cmd: Command, args: &[&str]) -> (i32, String, String) {
    let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The local address a socket address resolves to (for messages).
pub fn describe(a: SocketAddr) -> String {
    a.to_string()
}

/// The I/O path relays started by the tests run: the portable one where
/// `SPEEDDATA_PORTABLE_IO` asks for it (they inherit the environment).
pub fn expected_io() -> IoPath {
    let forced = relay_channel::portable_io::portable_wanted(
        std::env::var_os(relay_channel::portable_io::PORTABLE_ENV).as_deref(),
    );
    if forced || !cfg!(target_os = "linux") {
        IoPath::Portable
    } else {
        IoPath::Mmsg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_rfc3339_times_are_read_and_written_as_the_relay_does() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_383_000_123);
        assert_eq!(parse_stamp("20261122T213000.123Z"), Some(t));
        assert_eq!(rfc3339(t, 0), "2026-11-22T21:30:00.123Z");
        assert_eq!(rfc3339(t, 150), "2026-11-23T00:00:00.123+02:30");
        assert_eq!(rfc3339(t, -22 * 60), "2026-11-21T23:30:00.123-22:00");
        assert_eq!(
            parse_stamp("20240229T000000.000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        assert_eq!(
            name_span(Path::new(
                "/a/x--y-20261122T213000.123Z--20261122T213001.000Z.avro"
            )),
            Some((
                "x--y".into(),
                t,
                UNIX_EPOCH + Duration::from_millis(1_795_383_001_000)
            ))
        );
        assert_eq!(name_span(Path::new("x-20261122T213000.123Z.avro")), None);
    }
}
