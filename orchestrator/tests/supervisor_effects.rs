//! The channel task's effect runner, driven by stand-in relays (small
//! shell scripts that speak the relay's stdout protocol): what the
//! lifecycle decides is what the fleet's status and event stream show.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::state::{EventKind, Fleet, State};
use orchestrator::supervisor::{self, Supervisor};
use relay_channel::status::{Ready, StatusLine};
use tokio::sync::broadcast::Receiver;

/// A folder with channel `a` and a stand-in relay running `script` (after
/// `ready`, the relay's own `ready` line); `supervisor` lines go into
/// `[supervisor]`.
fn fleet_dir(script: &str, supervisor: &str) -> (tempfile::TempDir, Config) {
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
    let relay: PathBuf = d.join("relay");
    let script = script.replace("ready", &format!("'{}'", ready.to_json()));
    std::fs::write(&relay, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&relay, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("orchestrator.toml"),
        format!(
            "relay_binary = {:?}\n[supervisor]\nbackoff_initial = \"50ms\"\nstop_timeout = \"2s\"\n{supervisor}\n",
            relay.display().to_string()
        ),
    )
    .unwrap();
    let cfg = Config::load(&d.join("orchestrator.toml"), None).unwrap();
    (dir, cfg)
}

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
