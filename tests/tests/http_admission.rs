//! One client cannot hold the API: the real `orchestrator` binary, its
//! connection table (the default `http.max_connections`) flooded with
//! connections that never finish a request head, still answers everyone
//! else at once. Everything is over 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use speeddata_tests::fleet::*;

/// The connections the flood opens.
const FLOOD: usize = 1500;
/// `http.max_connections` when not set (orchestrator/src/config.rs).
const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Raises this process's soft `RLIMIT_NOFILE` to at least `need` (the hard
/// limit too, if it is lower and we may).
fn raise_fd_limit(need: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    if r.rlim_cur >= need {
        return;
    }
    let new = libc::rlimit {
        rlim_cur: need,
        rlim_max: r.rlim_max.max(need),
    };
    // SAFETY: setrlimit reads the struct we own.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
    assert_eq!(
        set,
        0,
        "cannot raise the open-file limit to {need} (now {}:{}): {}",
        r.rlim_cur,
        r.rlim_max,
        std::io::Error::last_os_error()
    );
}

/// Whether the server has closed `s`: EOF or a reset within `wait`, and
/// what it sent before (nothing, for an evicted connection).
fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[test]
fn a_flood_of_half_open_connections_does_not_lock_out_the_api() {
    raise_fd_limit(FLOOD as u64 + 256);
    let fleet = FleetDir::new(&[]);
    let orch = fleet.start();
    let started = Instant::now() + Duration::from_secs(5);
    while !orch.log().contains("orchestrator starting") {
        assert!(
            Instant::now() < started,
            "no start line; log:\n{}",
            orch.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        orch.log()
            .contains(&format!("http_max_connections={DEFAULT_MAX_CONNECTIONS}")),
        "the default cap is not in force; log:\n{}",
        orch.log()
    );

    // Connections that send part of a request head and nothing more,
    // many times the cap.
    let addr: SocketAddr = ([127, 0, 0, 1], orch.port).into();
    let t0 = Instant::now();
    let mut half_open: Vec<TcpStream> = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", orch.log()));
        // One already evicted may be reset: fine.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
        half_open.push(s);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{i} connections in {:?}",
            t0.elapsed()
        );
    }
    let opening = t0.elapsed();

    // The API, the channel list and the console each answer at once.
    for path in ["/healthz", "/api/v1/channels", "/"] {
        let t = Instant::now();
        let (status, body) = orch
            .client()
            .send("GET", path, None, Duration::from_secs(1))
            .unwrap_or_else(|e| {
                panic!(
                    "GET {path} after {FLOOD} half-open connections: {e} (after {:?}); log:\n{}",
                    t.elapsed(),
                    orch.log()
                )
            });
        let took = t.elapsed();
        assert_eq!(status, 200, "GET {path}: {body}");
        assert!(took < Duration::from_secs(1), "GET {path} took {took:?}");
        eprintln!("GET {path}: 200 in {took:?}");
    }
    let channels = orch.get("/api/v1/channels");
    assert!(channels.json()["channels"].is_array(), "{}", channels.body);

    // The oldest were evicted: closed at once, without an answer; the
    // newest wait for their heads (or their header timeout).
    let evicted = FLOOD - DEFAULT_MAX_CONNECTIONS;
    for (i, s) in half_open.iter_mut().enumerate().take(evicted) {
        match closed_within(s, Duration::from_secs(1)) {
            Some(got) => assert!(
                got.is_empty(),
                "evicted connection {i} was told {:?}",
                String::from_utf8_lossy(&got)
            ),
            None => panic!("connection {i} of {FLOOD} is still open"),
        }
    }
    let newest = half_open.last_mut().unwrap();
    assert_eq!(
        closed_within(newest, Duration::from_millis(100)),
        None,
        "the newest half-open connection was closed"
    );
    // The table's bound holds: the orchestrator's descriptors are the
    // cap's and a few of its own.
    let fds = open_files(orch.pid());
    assert!(fds < DEFAULT_MAX_CONNECTIONS + 64, "{fds} descriptors open");

    // Evictions are logged once (then counted at most once a minute).
    let logged = Instant::now() + Duration::from_secs(5);
    let lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("too many connections; closing"))
            .count()
    };
    while lines(&orch.log()) == 0 {
        assert!(
            Instant::now() < logged,
            "no eviction logged:\n{}",
            orch.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines(&orch.log()), 1, "{}", orch.log());
    assert!(!orch.log().contains("refusing new ones"), "{}", orch.log());
    drop(half_open);
    eprintln!(
        "{FLOOD} half-open connections opened in {opening:?}; test done in {:?}",
        t0.elapsed()
    );
}
