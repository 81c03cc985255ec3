//! A relay that cannot be spawned because the orchestrator is out of
//! descriptors (EMFILE) is tried again shortly, and that is counted
//! neither as a failure (which would park the channel as `failed`) nor as a
//! restart. Its own test binary: it lowers the process's descriptor limit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::config::Config;
use orchestrator::state::{Fleet, State};
use orchestrator::supervisor::{self, Supervisor};
use relay_channel::status::{Ready, StatusLine};

fn set_soft_limit(soft: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let before = r.rlim_cur;
        r.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        before
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_spawn_out_of_descriptors_is_retried_and_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../channels.d/example.avsc");
    std::fs::create_dir(d.join("channels.d")).unwrap();
    std::fs::write(
        d.join("channels.d/a.toml"),
        format!(
            "name = \"a\"\nschema = {:?}\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = {:?}\n",
            schema.display().to_string(),
            d.join("archive").display().to_string()
        ),
    )
    .unwrap();
    // A stand-in relay: ready at once (the line the relay writes, from the
    // protocol's own type), then waits to be stopped.
    let relay = d.join("relay");
    let ready = StatusLine::Ready(Ready {
        channel: "a".into(),
        pid: 0,
        bind: "127.0.0.1:9".into(),
        group: None,
        recv_buffer_granted: 0,
        archive_dir: d.join("archive/a"),
        full: None,
        decimated: None,
        gso: false,
    });
    std::fs::write(
        &relay,
        format!("#!/bin/sh\necho '{}'\nexec sleep 60\n", ready.to_json()),
    )
    .unwrap();
    std::fs::set_permissions(&relay, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // One failure would park the channel for an hour.
    std::fs::write(
        d.join("orchestrator.toml"),
        format!(
            "relay_binary = {:?}\n[supervisor]\nmax_restarts = 0\ncooldown = \"1h\"\n",
            relay.display().to_string()
        ),
    )
    .unwrap();
    let cfg = Config::load(&d.join("orchestrator.toml"), None).unwrap();
    let binary = supervisor::relay_binary(&cfg).unwrap();
    let fleet = Arc::new(Fleet::new());
    let mut sup = Supervisor::new(cfg, binary, fleet.clone());
    // The files are read now; the channel's task spawns once this test
    // yields, by when no descriptor can be had.
    sup.reconcile("test");
    let saved = set_soft_limit(3);

    let end = Instant::now() + Duration::from_secs(5);
    let mut retries = 0;
    let (_, mut events) = fleet.subscribe(0);
    while retries < 2 {
        let e = tokio::time::timeout_at(end.into(), events.recv())
            .await
            .expect("two retries within 5 s")
            .unwrap();
        let a = fleet.get("a").unwrap();
        assert_ne!(a.state, State::Failed, "{a:?}");
        if e.kind.name() == "restarting" {
            let reason = a.reason.clone().unwrap_or_default();
            assert_eq!(a.state, State::Backoff, "{a:?}");
            assert!(
                reason.contains("Too many open files") && reason.contains("trying again in 1s"),
                "{reason}"
            );
            retries += 1;
        }
    }
    set_soft_limit(saved);

    loop {
        let a = fleet.get("a").unwrap();
        if a.state == State::Ready {
            assert_eq!(a.restarts, 0, "{a:?}");
            break;
        }
        assert_ne!(a.state, State::Failed, "{a:?}");
        assert!(Instant::now() < end, "not ready within 5 s: {a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sup.shutdown().await;
}
