//! The channel task's effect runner, driven by stand-in relays (small
//! shell scripts that speak the relay's stdout protocol): what the
//! lifecycle decides is what the fleet's status and event stream show.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fleet_dir;
use orchestrator::state::{EventKind, Fleet, State};
use orchestrator::supervisor::{self, Supervisor};
use tokio::sync::broadcast::Receiver;

/// The kinds of the events that arrive within `limit`, until `last`.
async fn events_until(rx: &mut Receiver<orchestrator::state::Event>, last: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while kinds.last().map(String::as_str) != Some(last) {
        let e = tokio::time::timeout_at(end, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {last} event within 10 s; so far {kinds:?}"))
            .unwrap();
        if e.channel.as_deref() == Some("a") {
            kinds.push(e.kind.name().to_string());
        }
    }
    kinds
}

#[tokio::test(flavor = "current_thread")]
async fn a_ready_line_shows_ready_and_is_announced_once() {
    let (_dir, cfg) = fleet_dir("echo ready\nexec sleep 30", "");
    let binary = supervisor::relay_binary(&cfg).unwrap();
    let fleet = Arc::new(Fleet::new());
    let (_, mut rx) = fleet.subscribe(0);
    let mut sup = Supervisor::new(cfg, binary, fleet.clone());
    sup.reconcile("test");
    assert_eq!(events_until(&mut rx, "ready").await, ["started", "ready"]);
    let a = fleet.get("a").unwrap();
    assert_eq!(a.state, State::Ready);
    assert!(a.pid.is_some());
    sup.shutdown().await;
    assert_eq!(
        events_until(&mut rx, "stopped").await,
        ["exited", "stopped"]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_ready_line_from_a_child_being_stopped_is_not_shown() {
    // Says nothing at first; on SIGTERM, `ready` (as a confused relay
    // might), then ends.
    let (_dir, cfg) = fleet_dir("trap 'echo ready; exit 0' TERM\nsleep 30 & wait", "");
    let binary = supervisor::relay_binary(&cfg).unwrap();
    let fleet = Arc::new(Fleet::new());
    let (_, mut rx) = fleet.subscribe(0);
    let mut sup = Supervisor::new(cfg, binary, fleet.clone());
    sup.reconcile("test");
    assert_eq!(events_until(&mut rx, "started").await, ["started"]);
    sup.shutdown().await;
    assert_eq!(
        events_until(&mut rx, "stopped").await,
        ["exited", "stopped"]
    );
    let a = fleet.get("a").unwrap();
    assert_eq!(a.state, State::Stopped, "{a:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_child_is_killed_as_hung_and_started_again() {
    let (_dir, cfg) = fleet_dir("echo ready\nexec sleep 30", "liveness_timeout = \"2s\"");
    let binary = supervisor::relay_binary(&cfg).unwrap();
    let fleet = Arc::new(Fleet::new());
    let (_, mut rx) = fleet.subscribe(0);
    let mut sup = Supervisor::new(cfg, binary, fleet.clone());
    sup.reconcile("test");
    let first = events_until(&mut rx, "ready").await;
    let pid = fleet.get("a").unwrap().pid.unwrap();
    assert_eq!(first, ["started", "ready"]);
    assert_eq!(
        events_until(&mut rx, "ready").await,
        ["hung", "exited", "restarting", "started", "ready"]
    );
    let a = fleet.get("a").unwrap();
    assert_ne!(a.pid, Some(pid));
    assert_eq!(a.restarts, 1);
    let exit = a.last_exit.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    let (past, _) = fleet.subscribe(0);
    let hung = past
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Hung { pid, silent_for } => Some((*pid, silent_for.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(hung, (pid, "2s".to_string()));
    sup.shutdown().await;
}
