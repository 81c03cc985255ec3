//! The web console, end to end: the real orchestrator and relays, and
//! Debian's chromium driven by playwright-core (`tests/console/`), which
//! `scripts/test` installs. The browser script checks the pages as a user
//! would see them, downloads exports from their forms, and writes
//! screenshots (and the exports) to `target/console-screenshots/`.
//!
//! Also here: the pages' HTTP answers (content types, the Content-Security
//! Policy, escaping left to the browser's text nodes), and write requests:
//! refused from another origin, and off loopback (an orchestrator listening
//! on a non-loopback address inside a network namespace of its own).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use speeddata_api::State;
use speeddata_tests::fleet::FleetDir;
use speeddata_tests::{
    bin, free_port, group_addr, root, unique_group, ChannelOpts, EXAMPLE_SCHEMA,
};

/// Text of the live channel's schema doc: HTML that must show as text.
const MARKER: &str =
    "Rig <script>window.__xss = 1</script><img src=\"/xss-doc\" onerror=\"window.__xss=2\">";

fn screenshots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("console-screenshots")
}

#[test]
fn the_console_shows_the_fleet_and_live_charts_in_a_real_browser() {
    let console = root().join("tests/console");
    assert!(
        console.join("node_modules/playwright-core").is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need chromium and playwright-core: run scripts/test, which installs them"
    );
    let fleet = FleetDir::new(&["backoff_initial = \"1s\""]);
    // `rig`: a decimated output (every second record) and a schema whose
    // doc holds HTML; `aux`: no decimated output.
    let mut rig = ChannelOpts::unicast("rig");
    rig.decimated = Some((group_addr(unique_group(), free_port()), 2));
    let mut schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    schema["doc"] = MARKER.into();
    fleet.write("rig.avsc", &serde_json::to_string_pretty(&schema).unwrap());
    fleet.write(
        "rig.toml",
        &rig.toml()
            .replace("schema = \"schema.avsc\"", "schema = \"rig.avsc\"")
            .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n"),
    );
    fleet.add(&ChannelOpts::unicast("aux"));
    // `broken`: a file that does not validate (its schema is missing).
    let broken = ChannelOpts::unicast("broken")
        .toml()
        .replace("schema = \"schema.avsc\"", "schema = \"missing.avsc\"");
    fleet.write("broken.toml", &broken);
    let o = fleet.start();
    o.wait_ready("rig");
    o.wait_ready("aux");

    let shots = screenshots_dir();
    let started = Instant::now();
    let out = Command::new("node")
        .arg(console.join("console.test.mjs"))
        .current_dir(&console)
        .env("CONSOLE_BASE", format!("http://127.0.0.1:{}", o.port))
        .env("CONSOLE_LIVE", "rig")
        .env("CONSOLE_KILL", "aux")
        .env("CONSOLE_RECEIVE", rig.bind.to_string())
        .env("CONSOLE_LOADGEN", bin("loadgen"))
        .env("CONSOLE_SCREENSHOTS", &shots)
        .env("CONSOLE_MARKER", MARKER)
        .env("CONSOLE_BROKEN", "broken")
        .stdin(Stdio::null())
        .output()
        .expect("run node (the browser test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser checks failed after {:?}; orchestrator log:\n{}",
        started.elapsed(),
        o.log()
    );
    for shot in [
        "fleet.png",
        "channel.png",
        "channel-stopped.png",
        "fleet-dark.png",
        "channel-dark.png",
        "export-channel.png",
        "export-fleet.png",
    ] {
        let meta = std::fs::metadata(shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(meta.len() > 10_000, "{shot} is only {} bytes", meta.len());
    }
    // The browser's visit changed nothing: the killed channel came back.
    o.wait_ready("aux");
}

#[test]
fn pages_and_assets_are_served_with_a_policy_that_allows_only_this_origin() {
    let fleet = FleetDir::new(&[]);
    let mut opts = ChannelOpts::unicast("web");
    opts.decimated = Some((group_addr(unique_group(), free_port()), 10));
    fleet.add(&opts);
    let o = fleet.start();
    o.wait_ready("web");

    for (path, status, content_type) in [
        ("/", 200, "text/html; charset=utf-8"),
        ("/channels/web", 200, "text/html; charset=utf-8"),
        ("/channels/nope", 404, "text/html; charset=utf-8"),
        ("/assets/console.css", 200, "text/css; charset=utf-8"),
        ("/assets/channel.js", 200, "text/javascript; charset=utf-8"),
        (
            "/assets/stripchart.js",
            200,
            "text/javascript; charset=utf-8",
        ),
        ("/assets/export.js", 200, "text/javascript; charset=utf-8"),
    ] {
        let r = raw_get(o.port, path, &[]);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    assert_eq!(raw_get(o.port, "/assets/nope.js", &[]).status, 404);
    assert_eq!(raw_get(o.port, "/assets/..%2fconsole.rs", &[]).status, 404);

    // The schema, as JSON, for the channel page: an Avro schema document,
    // compared as JSON on purpose.
    let s = o.get("/api/v1/channels/web/schema");
    assert_eq!(s.status, 200);
    assert_eq!(
        s.json(),
        serde_json::from_str::<serde_json::Value>(EXAMPLE_SCHEMA).unwrap()
    );
    assert_eq!(o.get("/api/v1/channels/nope/schema").status, 404);

    // The channel's status names its decimation.
    let c = o.channel("web").unwrap();
    let decimation = c.decimation.as_ref().unwrap();
    assert_eq!(decimation.algorithm, "downsample");
    assert_eq!(decimation.factor, Some(10));
    assert_eq!(decimation.group, opts.decimated.unwrap().0.to_string());

    // On loopback, writes are allowed: from a client that is not a
    // browser, and from this server's own pages; not from another site's
    // page, nor through a name that is not the loopback's.
    let info = o.client().info().unwrap();
    assert!(info.writes, "{info:?}");
    let port = o.port;
    let host = format!("127.0.0.1:{port}");
    let own = format!("http://127.0.0.1:{port}");
    let restart = "/api/v1/channels/web/restart";
    assert_eq!(
        raw(port, "POST", restart, &[("Host", &host), ("Origin", &own)]).status,
        202
    );
    o.wait_ready("web");
    let r = raw(
        port,
        "POST",
        restart,
        &[("Host", &host), ("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("evil.example"), "{}", r.body);
    let r = raw(
        port,
        "POST",
        restart,
        &[
            ("Host", &format!("evil.example:{port}")),
            ("Origin", &format!("http://evil.example:{port}")),
        ],
    );
    assert_eq!(r.status, 403, "a DNS-rebinding page: {}", r.body);
    // The live stream refuses another site's page too.
    let r = raw(
        port,
        "GET",
        "/api/v1/channels/web/live",
        &[
            ("Host", &host),
            ("Origin", "http://evil.example"),
            ("Connection", "Upgrade, close"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    o.wait_channel("web", Duration::from_secs(20), |c| {
        c.restarts == 1 && c.state == State::Ready
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        o.channel("web").unwrap().restarts,
        1,
        "only the allowed restart happened"
    );
}

/// An orchestrator listening on a non-loopback address (an address put on
/// the loopback device of a network namespace of its own, so that nothing
/// is reachable from outside) serves
/// reads and the pages, and refuses every write with 403.
#[test]
fn writes_are_refused_when_the_api_listens_off_loopback() {
    let fleet = FleetDir::new(&[]);
    fleet.add(&ChannelOpts::unicast("far"));
    let port = fleet.http_port;
    let config = std::fs::read_to_string(fleet.config()).unwrap();
    std::fs::write(
        fleet.config(),
        config.replace(&format!("127.0.0.1:{port}"), &format!("10.199.0.1:{port}")),
    )
    .unwrap();
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && ip addr add 10.199.0.1/32 dev lo && exec \"$0\" run --config \"$1\"",
        ])
        .arg(bin("orchestrator"))
        .arg(fleet.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the orchestrator in a network namespace (unshare)");
    let pid = child.id();
    // nsenter must not run before unshare has made the namespace.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).ok();
    let end = Instant::now() + Duration::from_secs(10);
    while ns(&pid.to_string()) == ns("self") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A client inside the namespace: python's urllib prints the status and
    // body of each request.
    let client = r#"
import sys, time, urllib.request, urllib.error
base = sys.argv[1]
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=body,
                                 headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
end = time.time() + 30
while True:
    try:
        status, body = call("GET", "/api/v1/channels/far")
        if '"state":"ready"' in body:
            break
    except OSError:
        pass
    if time.time() > end:
        sys.exit("not ready within 30 s")
    time.sleep(0.1)
put = b'{"channel": "[receive]\\nbind = \\"127.0.0.1:1\\"\\n[archive]\\n", "schema": "int"}'
for method, path, body in [("GET", "/api/v1/info", None), ("GET", "/", None),
                           ("POST", "/api/v1/channels/far/restart", None),
                           ("PUT", "/api/v1/channels/neo", put),
                           ("DELETE", "/api/v1/channels/far", None)]:
    status, body = call(method, path, body)
    print(method, path, status, body.replace("\n", " ")[:300])
"#;
    let out = Command::new("nsenter")
        .args([
            "--target",
            &pid.to_string(),
            "--net",
            "--",
            "python3",
            "-c",
            client,
        ])
        .arg(format!("http://10.199.0.1:{port}"))
        .output()
        .expect("nsenter");
    // SAFETY: kill(2) on the orchestrator this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let mut log = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\norchestrator log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("GET /api/v1/info 200 "), "{text}");
    assert!(lines[0].contains("\"writes\":false"), "{text}");
    assert!(lines[0].contains("is not a loopback address"), "{text}");
    assert!(lines[1].starts_with("GET / 200 "), "{text}");
    assert!(
        lines[2].starts_with("POST /api/v1/channels/far/restart 403 "),
        "{text}"
    );
    assert!(
        lines[2].contains("10.199.0.1"),
        "the refusal names the address: {text}"
    );
    assert!(
        lines[3].starts_with("PUT /api/v1/channels/neo 403 "),
        "{text}"
    );
    assert!(
        lines[4].starts_with("DELETE /api/v1/channels/far 403 "),
        "{text}"
    );
    assert!(fleet.channels_dir().join("far.toml").exists());
    assert!(!fleet.channels_dir().join("neo.toml").exists());
}

struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Raw {
    raw(port, "GET", path, headers)
}

/// One HTTP/1.1 request with exactly these headers (Host among them if
/// given; 127.0.0.1 otherwise), read to its end.
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: 127.0.0.1:{port}\r\n");
    }
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("connection") {
            req = req.replace("Connection: close\r\n", "");
        }
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}
