//! Helpers for the orchestrator tests: a folder with orchestrator.toml and
//! channels.d/, the real `orchestrator` binary running it, and its HTTP API
//! over loopback, read through the API's own types and typed client
//! (`speeddata_api`); its event stream through [`SseEvents`].

use std::io::{BufRead, BufReader};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_channel::status::Counters;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value as Json;
use speeddata_api::{ChannelStatus, Client, ErrorBody, Event, Lagged, State};

use crate::{bin, free_port, ChannelOpts, EXAMPLE_SCHEMA};

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fleet folder: `orchestrator.toml` and `channels.d/`.
pub struct FleetDir {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
}

impl FleetDir {
    /// `supervisor` lines go into `[supervisor]`.
    pub fn new(supervisor: &[&str]) -> FleetDir {
        let dir = crate::tempdir();
        std::fs::create_dir(dir.path().join("channels.d")).unwrap();
        std::fs::write(dir.path().join("channels.d/schema.avsc"), EXAMPLE_SCHEMA).unwrap();
        let http_port = free_tcp_port();
        let mut t = format!(
            "channels_dir = \"channels.d\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[supervisor]\n"
        );
        for l in supervisor {
            t += l;
            t += "\n";
        }
        t += "\n[defaults]\narchive.dir = \"archive\"\n";
        std::fs::write(dir.path().join("orchestrator.toml"), t).unwrap();
        FleetDir { dir, http_port }
    }

    pub fn channels_dir(&self) -> PathBuf {
        self.dir.path().join("channels.d")
    }

    /// Writes a channel file (its archive goes to `<fleet>/archive/<name>`
    /// through the defaults).
    pub fn add(&self, opts: &ChannelOpts) {
        let text = opts
            .toml()
            .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n");
        self.write(&format!("{}.toml", opts.name), &text);
    }

    /// Writes a file into channels.d atomically (rename), as an editor or a
    /// deployment tool would.
    pub fn write(&self, file: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.channels_dir().join(file)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.channels_dir().join(file)).unwrap();
    }

    pub fn archive_dir(&self, channel: &str) -> PathBuf {
        self.dir.path().join("archive").join(channel)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("orchestrator.toml")
    }

    /// Sets a top-level key of orchestrator.toml (before any table).
    pub fn set_top(&self, line: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), format!("{line}\n{text}")).unwrap();
    }

    /// Writes `token` to the file `api-token` and names it as
    /// `http.token_file`: writes through the API need it from now on.
    pub fn set_token(&self, token: &str) {
        std::fs::write(self.dir.path().join("api-token"), format!("{token}\n")).unwrap();
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(
            self.config(),
            text.replace("[http]\n", "[http]\ntoken_file = \"api-token\"\n"),
        )
        .unwrap();
    }

    /// Starts `orchestrator run` on this folder.
    pub fn start(&self) -> Orchestrator {
        self.start_with_env(&[])
    }

    /// Starts `orchestrator run` with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Orchestrator {
        let mut cmd = Command::new(bin("orchestrator"));
        cmd.args(["run", "--config"])
            .arg(self.config())
            .envs(env.iter().copied());
        self.start_command(cmd)
    }

    /// Starts `orchestrator run` with `RLIMIT_NOFILE` set to `soft` and
    /// `hard` (as `prlimit --nofile=soft:hard` would).
    pub fn start_with_fd_limit(&self, soft: u64, hard: u64) -> Orchestrator {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("orchestrator"));
        cmd.args(["run", "--config"]).arg(self.config());
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: only setrlimit, a plain system call, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.start_command(cmd)
    }

    /// Starts `orchestrator run` as systemd would with `WatchdogSec`:
    /// `WATCHDOG_PID` set to the orchestrator's own pid.
    pub fn start_with_watchdog(&self, env: &[(&str, &str)]) -> Orchestrator {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\""])
            .arg(bin("orchestrator"))
            .arg(self.config())
            .envs(env.iter().copied());
        self.start_command(cmd)
    }

    fn start_command(&self, mut cmd: Command) -> Orchestrator {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orchestrator");
        let log = crate::collect_lines(child.stderr.take().unwrap());
        let o = Orchestrator {
            child,
            port: self.http_port,
            log,
        };
        o.wait_http();
        o
    }
}

/// A running orchestrator.
pub struct Orchestrator {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

/// An HTTP answer: status and body.
pub struct Http {
    pub status: u16,
    pub body: String,
}

impl Http {
    /// The body as JSON, for a test of the wire format itself.
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The body as the API type it must be.
    pub fn parse<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a {} ({e}): {}", std::any::type_name::<T>(), self.body))
    }
}

impl Orchestrator {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn wait_http(&self) {
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "the orchestrator's HTTP API did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The API's URL for `path`.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The API's typed client (without a token: reads need none).
    pub fn client(&self) -> Client {
        Client::new(&self.url(""), None)
    }

    /// A request without a body to the API. Every status is returned (a
    /// 4xx or 5xx is an answer to assert on, not an error); a connection
    /// that fails, or an answer not complete within 10 s, fails the test.
    pub fn request(&self, method: &str, path: &str) -> Http {
        let (status, body) = self
            .client()
            .send(method, path, None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()));
        Http { status, body }
    }

    pub fn get(&self, path: &str) -> Http {
        self.request("GET", path)
    }

    /// A request with a JSON body (if any) and extra headers; every status
    /// is returned.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Json>,
        headers: &[(&str, &str)],
    ) -> Http {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let agent = agent(Duration::from_secs(30));
        let mut response = match body {
            Some(j) => agent.run(
                b.header("content-type", "application/json")
                    .body(j.to_string())
                    .unwrap(),
            ),
            None => agent.run(b.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        Http {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// One request through the typed client: a success's status and body
    /// as `T`, or an error's status and [`ErrorBody`]. No answer within
    /// 30 s, or a success whose body is not a `T`, fails the test.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(u16, T), (u16, ErrorBody)> {
        match self
            .client()
            .call(method, path, body, Duration::from_secs(30))
        {
            Ok(answer) => Ok(answer),
            Err(speeddata_api::Error::Status { status, body }) => Err((status, body)),
            Err(e) => panic!("{method} {path}: {e}; log:\n{}", self.log()),
        }
    }

    /// Every channel's status.
    pub fn channels(&self) -> Vec<ChannelStatus> {
        self.client()
            .channels()
            .unwrap_or_else(|e| panic!("the channel list: {e}; log:\n{}", self.log()))
    }

    /// A channel's status; `None` if there is no such channel.
    pub fn channel(&self, name: &str) -> Option<ChannelStatus> {
        match self.client().channel(name) {
            Ok(c) => Some(c),
            Err(e) if e.status() == Some(404) => None,
            Err(e) => panic!("channel {name}: {e}; log:\n{}", self.log()),
        }
    }

    /// Waits until `cond` holds for the channel; returns its status.
    pub fn wait_channel(
        &self,
        name: &str,
        limit: Duration,
        cond: impl Fn(&ChannelStatus) -> bool,
    ) -> ChannelStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(c) = self.channel(name) {
                if cond(&c) {
                    return c;
                }
            }
            if Instant::now() > end {
                panic!(
                    "channel {name}: condition not met within {limit:?}; status: {:?}\nlog:\n{}",
                    self.channel(name),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready(&self, name: &str) -> ChannelStatus {
        self.wait_channel(name, Duration::from_secs(30), |c| c.state == State::Ready)
    }

    pub fn signal(&self, sig: i32) {
        crate::kill(self.child.id(), sig);
    }

    /// Waits for exit; returns the exit code (128+signal if killed).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        crate::wait_child(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "orchestrator did not exit within {limit:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// Lifecycle events from the SSE stream (replayed from the start), until
    /// `enough` says so or `limit` passes. Each event's data is an [`Event`];
    /// a `lagged` notice (events that could not be delivered) is not one and
    /// is left out, which leaves a gap in the events' `seq`.
    pub fn events(&self, limit: Duration, enough: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let path = "/api/v1/events?since=0";
        // The stream does not end: the time limit ends it (a read past it
        // fails, which ends the events below).
        let response = agent(limit)
            .get(self.url(path))
            .header("Accept", "text/event-stream")
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()));
        assert_eq!(response.status(), 200, "GET {path}");
        let mut events = Vec::new();
        for data in SseEvents::new(BufReader::new(response.into_body().into_reader())) {
            match serde_json::from_str::<Event>(&data) {
                Ok(e) => events.push(e),
                Err(e) if serde_json::from_str::<Lagged>(&data).is_err() => {
                    panic!("GET {path}: not an event ({e}): {data}")
                }
                Err(_) => continue,
            }
            if enough(&events) {
                break;
            }
        }
        events
    }

    /// The metrics page.
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        r.body
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running channel's relay pid.
pub fn pid_of(c: &ChannelStatus) -> u32 {
    c.pid.expect("a running channel has a pid")
}

/// The counters of a channel's latest stats line; `None` before its relay
/// reported any.
pub fn counters(c: &ChannelStatus) -> Option<&Counters> {
    c.counters.as_ref().map(|s| &s.counters)
}

/// An HTTP client for one exchange, all of it within `timeout`: every
/// status is an answer (not an error), and no connection is kept for reuse.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .build(),
    )
}

/// The data of each event of a `text/event-stream` body, read line by line
/// through a buffered reader: a line split across reads (or chunks) is
/// whole once its end has arrived. Comments (`:` lines such as keep-alives)
/// and the `event`, `id` and `retry` fields are skipped; the `data` lines of
/// one event are joined with `\n`, and an event ends at a blank line. The
/// events stop at the end of the body, or at the first read that fails
/// (e.g. at a time limit); an event not ended by then is dropped.
pub struct SseEvents<R> {
    reader: R,
    line: String,
    data: Option<String>,
}

impl<R: BufRead> SseEvents<R> {
    pub fn new(reader: R) -> SseEvents<R> {
        SseEvents {
            reader,
            line: String::new(),
            data: None,
        }
    }
}

impl<R: BufRead> Iterator for SseEvents<R> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = self.line.strip_suffix('\n').unwrap_or(&self.line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    return Some(data);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            if field == "data" {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
        }
    }
}

/// Whether a process is running (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the name in parentheses: state, then the parent's pid.
                    let rest = stat.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A process's `RLIMIT_NOFILE`: (soft, hard).
pub fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// How many descriptors a process has open.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields after the name: state is [0]; utime is field 14 → [11], stime [12].
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A unicast channel with a full-rate output on its own group.
pub fn channel_with_output(name: &str) -> (ChannelOpts, SocketAddrV4) {
    let mut o = ChannelOpts::unicast(name);
    let full = crate::group_addr(crate::unique_group(), free_port());
    o.full = Some(full);
    (o, full)
}

/// Runs `orchestrator` with arguments to completion in `cwd`: (code,
/// stdout, stderr).
pub fn run_orchestrator(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin("orchestrator"));
    cmd.current_dir(cwd);
    crate::run_to_end(cmd, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that arrives in the given pieces, one per read.
    struct Pieces(std::collections::VecDeque<&'static [u8]>);

    impl std::io::Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(piece) = self.0.pop_front() else {
                return Ok(0);
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(&piece[n..]);
            }
            Ok(n)
        }
    }

    fn events(pieces: &[&'static str]) -> Vec<String> {
        let pieces = pieces.iter().map(|p| p.as_bytes()).collect();
        SseEvents::new(BufReader::new(Pieces(pieces))).collect()
    }

    #[test]
    fn a_line_split_across_reads_is_read_whole() {
        let got = events(&[
            ": keep-alive\n\nevent: started\nid: 1\nda",
            "ta: {\"channel\":\"a\",",
            "\"event\":\"started\"}",
            "\n",
            "\nevent: ready\r\nid: 2\r\ndata:{\"seq\":2}\r\n\r",
            "\n",
        ]);
        assert_eq!(
            got,
            [r#"{"channel":"a","event":"started"}"#, r#"{"seq":2}"#]
        );
    }

    #[test]
    fn data_lines_of_one_event_are_joined_and_an_unended_event_is_dropped() {
        let got = events(&["data: 1\ndata:\ndata: 3\n\n\n\ndata: cut"]);
        assert_eq!(got, ["1\n\n3"]);
    }

    #[test]
    fn the_events_stop_at_a_failed_read() {
        struct Fails(bool);
        impl std::io::Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                let piece = b"data: 1\n\ndata: 2\n";
                buf[..piece.len()].copy_from_slice(piece);
                Ok(piece.len())
            }
        }
        let got: Vec<String> = SseEvents::new(BufReader::new(Fails(false))).collect();
        assert_eq!(got, ["1"]);
    }
}
