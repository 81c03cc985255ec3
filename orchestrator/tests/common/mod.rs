//! What the orchestrator's integration tests share: a fleet folder with one
//! channel and a stand-in relay.

use std::path::{Path, PathBuf};

use orchestrator::config::Config;
use relay_channel::status::{Ready, StatusLine};

/// A folder with channel `a` and a stand-in relay running `script` (after
/// `ready`, the relay's own `ready` line); `supervisor` lines go into
/// `[supervisor]`.
pub fn fleet_dir(script: &str, supervisor: &str) -> (tempfile::TempDir, Config) {
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
        io: Default::default(),
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
