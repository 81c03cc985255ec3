//! A relay that cannot be spawned because the orchestrator is out of
//! descriptors (EMFILE) is tried again shortly, and that is counted
//! neither as a failure (which would park the channel as `failed`) nor as a
//! restart. Its own test binary: it lowers the process's descriptor limit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::state::{Fleet, State};
use orchestrator::supervisor::{self, Supervisor};

fn set_soft_limit(soft: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        // rlim_t is 32 bits on 32-bit ARM.
        #[allow(clippy::useless_conversion)]
        let before = u64::from(r.rlim_cur);
        r.rlim_cur = libc::rlim_t::try_from(soft).unwrap_or(libc::rlim_t::MAX);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        before
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_spawn_out_of_descriptors_is_retried_and_not_counted() {
    // A stand-in relay: ready at once, then waits to be stopped. One
    // failure would park the channel for an hour.
    let (_dir, cfg) = common::fleet_dir(
        "echo ready\nexec sleep 60",
        "max_restarts = 0\ncooldown = \"1h\"",
    );
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
