//! End-to-end tests of `orchestrator import speeddata`: SpeedData
//! configurations (our own fixtures, shaped like SpeedData v0.6's
//! config/relay.yaml, config/global.yaml and v0.5's data/registry.db)
//! turned into channel files, checked by `orchestrator check`, and run by
//! the real orchestrator: records sent as a SpeedData sender sends them are
//! read back from the archive by apache-avro and fastavro.
//!
//! Network safety: the files the tests run are imported with `--interface
//! 127.0.0.1 --ttl 0`; receive addresses are 127.0.0.1; the groups are
//! this run's own (239.255.x.y). Files imported with SpeedData's defaults
//! (TTL 2, the default interface) are only checked, never run.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use speeddata_tests::fleet::*;
use speeddata_tests::*;

/// A schema shaped like SpeedData's example: the time a plain `long` with
/// `logicalType` beside its `type`, where Avro ignores it.
const SCHEMA: &str = r#"{
    "namespace": "test.speeddata",
    "type": "record",
    "name": "sample",
    "fields": [
        {"name": "time", "type": "long", "logicalType": "timestamp-nanos"},
        {"name": "message", "type": "string"},
        {"name": "counter", "type": "int"},
        {"name": "sine_wave", "type": "double"},
        {"name": "ramp", "type": "double"}
    ]
}
"#;

/// A SpeedData tree: `config/relay.yaml`, `config/global.yaml` (if given)
/// and the schema at `config/agents/sample.avsc`.
fn tree(relay: &str, global: Option<&str>) -> tempfile::TempDir {
    let d = tempdir();
    std::fs::create_dir_all(d.path().join("config/agents")).unwrap();
    std::fs::write(d.path().join("config/relay.yaml"), relay).unwrap();
    if let Some(g) = global {
        std::fs::write(d.path().join("config/global.yaml"), g).unwrap();
    }
    std::fs::write(d.path().join("config/agents/sample.avsc"), SCHEMA).unwrap();
    d
}

/// relay.yaml with these channels (name, port) and SpeedData's sections.
fn relay_yaml(channels: &[(&str, u16)]) -> String {
    let mut t = String::from("# SpeedData relay configuration (test fixture)\nchannels:\n");
    for (name, port) in channels {
        t += &format!(
            "  - name: \"{name}\"\n    port: {port}\n    schema: \"config/agents/sample.avsc\"\n"
        );
    }
    t += "decimation:\n  enabled: true\n  factor: 5\n  algorithm: \"downsample\"\n";
    t += "rotation:\n  mode: \"time\"\n  threshold: 3600\n";
    t += "retention:\n  mode: \"ttl\"\n  value: 86400\n";
    t
}

/// global.yaml with these groups.
fn global_yaml(full: &str, decimated: &str) -> String {
    let split = |g: &str| {
        let a: SocketAddrV4 = g.parse().unwrap();
        (a.ip().to_string(), a.port())
    };
    let ((fa, fp), (da, dp)) = (split(full), split(decimated));
    format!(
        "multicast:\n  full_rate:\n    address: \"{fa}\"\n    port: {fp}\n  decimated:\n    address: \"{da}\"\n    port: {dp}\nstorage:\n  avro_path: \"./data\"\n"
    )
}

const SPEEDDATA_GLOBAL: &str = "multicast:\n  full_rate:\n    address: \"239.1.1.1\"\n    port: 6000\n  decimated:\n    address: \"239.1.1.2\"\n    port: 6001\nstorage:\n  avro_path: \"./data\"\n";

/// Runs `orchestrator import speeddata PATH --out OUT ARGS...`.
fn import(path: &Path, out: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "import",
        "speeddata",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let cwd = if path.is_dir() {
        path
    } else {
        path.parent().unwrap()
    };
    run_orchestrator(&all, cwd)
}

fn import_ok(path: &Path, out: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = import(path, out, args);
    assert_eq!(code, 0, "import failed:\n{stdout}\n{stderr}");
    stdout
}

/// `orchestrator check` on a folder of channel files (an empty
/// orchestrator.toml beside it).
fn check(dir: &Path) -> (i32, String, String) {
    let cfg = dir.parent().unwrap().join("check-orchestrator.toml");
    std::fs::write(&cfg, "").unwrap();
    run_orchestrator(
        &[
            "check",
            "--config",
            cfg.to_str().unwrap(),
            "--channels-dir",
            dir.to_str().unwrap(),
        ],
        dir,
    )
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

fn get<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next().unwrap())?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

fn str_of(t: &toml::Table, key: &str) -> String {
    get(t, key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{key} missing or not a string: {t:#?}"))
        .to_string()
}

fn int_of(t: &toml::Table, key: &str) -> i64 {
    get(t, key)
        .and_then(|v| v.as_integer())
        .unwrap_or_else(|| panic!("{key} missing or not an integer: {t:#?}"))
}

/// The lines of the report's "Not mapped" part.
fn not_mapped(report: &str) -> Vec<&str> {
    report
        .split("\nNot mapped:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no \"Not mapped\" part:\n{report}"))
        .lines()
        .take_while(|l| l.starts_with("  "))
        .collect()
}

/// The lines of the report's "Mapped" part.
fn mapped(report: &str) -> Vec<&str> {
    report
        .split("\nNot mapped:\n")
        .next()
        .unwrap()
        .split("Mapped (SpeedData key -> our key = value):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no \"Mapped\" part:\n{report}"))
        .lines()
        .collect()
}

/// Whether a mapped line maps `from` to `to`.
fn maps(report: &str, from: &str, to: &str) -> bool {
    mapped(report)
        .iter()
        .any(|l| l.trim_start().starts_with(from) && l.contains(to))
}

#[test]
fn a_single_channel_keeps_speeddatas_groups_exactly() {
    let t = tree(&relay_yaml(&[("example", 26000)]), Some(SPEEDDATA_GLOBAL));
    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &[]);
    let c = read_toml(&out.join("example.toml"));
    assert_eq!(str_of(&c, "name"), "example");
    assert_eq!(str_of(&c, "schema"), "example.avsc");
    assert_eq!(str_of(&c, "receive.bind"), "127.0.0.1:26000");
    assert_eq!(str_of(&c, "full.group"), "239.1.1.1:6000");
    assert_eq!(str_of(&c, "decimated.group"), "239.1.1.2:6001");
    // SpeedData's relay: the default interface, TTL 2.
    assert_eq!(str_of(&c, "full.interface"), "0.0.0.0");
    assert_eq!(int_of(&c, "full.ttl"), 2);
    assert_eq!(int_of(&c, "decimated.ttl"), 2);
    // One channel: nothing shared.
    assert!(get(&c, "full.shared").is_none() && get(&c, "decimated.shared").is_none());
    assert_eq!(str_of(&c, "decimated.algorithm"), "downsample");
    assert_eq!(int_of(&c, "decimated.factor"), 5);
    let root = std::fs::canonicalize(t.path()).unwrap();
    let dir = PathBuf::from(str_of(&c, "archive.dir"));
    assert_eq!(std::fs::canonicalize(dir.parent().unwrap()).unwrap(), root);
    assert_eq!(dir.file_name().unwrap(), "data");
    assert_eq!(str_of(&c, "archive.rotate_interval"), "3600s");
    assert_eq!(str_of(&c, "archive.retention_age"), "86400s");
    // The schema is copied byte for byte, logicalType beside "long" and all.
    assert_eq!(
        std::fs::read(out.join("example.avsc")).unwrap(),
        SCHEMA.as_bytes()
    );
    assert!(
        maps(
            &report,
            "global.yaml multicast.full_rate",
            "example.toml full.group = \"239.1.1.1:6000\""
        ),
        "{report}"
    );
    assert!(!report.contains("Shared groups"), "{report}");
    let (code, stdout, stderr) = check(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 channel(s), all valid"), "{stdout}");
}

#[test]
fn several_channels_share_speeddatas_two_groups_and_pass_check() {
    let t = tree(
        &relay_yaml(&[("alpha", 26001), ("beta", 26002), ("gamma", 26003)]),
        Some(SPEEDDATA_GLOBAL),
    );
    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &[]);
    for (name, port) in [("alpha", 26001), ("beta", 26002), ("gamma", 26003)] {
        let c = read_toml(&out.join(format!("{name}.toml")));
        assert_eq!(str_of(&c, "name"), name);
        assert_eq!(str_of(&c, "receive.bind"), format!("127.0.0.1:{port}"));
        assert_eq!(str_of(&c, "full.group"), "239.1.1.1:6000");
        assert_eq!(str_of(&c, "decimated.group"), "239.1.1.2:6001");
        assert_eq!(get(&c, "full.shared").and_then(|v| v.as_bool()), Some(true));
        assert_eq!(
            get(&c, "decimated.shared").and_then(|v| v.as_bool()),
            Some(true)
        );
        assert_eq!(
            std::fs::read(out.join(format!("{name}.avsc"))).unwrap(),
            SCHEMA.as_bytes()
        );
    }
    assert!(
        maps(
            &report,
            "relay.yaml decimation.factor",
            "every channel's decimated.factor = 5"
        ),
        "{report}"
    );
    assert!(
        report.contains("Shared groups: SpeedData sends every channel to the same two groups"),
        "{report}"
    );
    let (code, stdout, stderr) = check(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("3 channel(s), all valid"), "{stdout}");
    // Without `shared`, the fleet check refuses the second channel on the
    // group: the key is what lets them share.
    let beta = std::fs::read_to_string(out.join("beta.toml")).unwrap();
    std::fs::write(
        out.join("beta.toml"),
        beta.replacen("shared = true", "shared = false", 1),
    )
    .unwrap();
    let (code, _, stderr) = check(&out);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(
            "beta.toml: full.group: the output 239.1.1.1:6000 is also used by channel \"alpha\""
        ),
        "{stderr}"
    );
}

#[test]
fn every_key_is_mapped_or_reported_and_unknown_keys_show_as_not_mapped() {
    let relay = "\
channels:
  - name: \"probe\"
    port: 26100
    schema: \"config/agents/sample.avsc\"
    owner: \"lab 3\"
decimation:
  enabled: true
  factor: 10
  algorithm: \"minmax\"
  window: 4
rotation:
  mode: \"size\"
  threshold: 104857600
retention:
  mode: \"quota\"
  value: 1073741824
storage:
  avro_path: \"./elsewhere\"
alerts:
  email: \"ops@example.invalid\"
";
    let global = "\
multicast:
  full_rate:
    address: \"239.1.1.1\"
    port: 6000
    ttl: 4
  decimated:
    address: \"239.1.1.2\"
    port: 6001
storage:
  avro_path: \"./data\"
  compression: \"none\"
pivot:
  port: 8000
";
    let t = tree(relay, Some(global));
    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &[]);
    for (from, to) in [
        ("relay.yaml channels[0].name", "probe.toml name = \"probe\""),
        (
            "relay.yaml channels[0].schema",
            "probe.toml schema = \"probe.avsc\"",
        ),
        (
            "relay.yaml channels[0].port",
            "probe.toml receive.bind = \"127.0.0.1:26100\"",
        ),
        (
            "relay.yaml decimation.algorithm",
            "probe.toml decimated.algorithm = \"minmax\"",
        ),
        (
            "relay.yaml decimation.factor",
            "probe.toml decimated.factor = 10",
        ),
        (
            "relay.yaml rotation.mode + relay.yaml rotation.threshold",
            "probe.toml archive.rotate_size = 104857600",
        ),
        (
            "relay.yaml retention.mode + relay.yaml retention.value",
            "probe.toml archive.retention_size = 1073741824",
        ),
        ("global.yaml storage.avro_path", "probe.toml archive.dir = "),
        (
            "global.yaml multicast.full_rate",
            "probe.toml full.group = \"239.1.1.1:6000\"",
        ),
        (
            "global.yaml multicast.decimated",
            "probe.toml decimated.group = \"239.1.1.2:6001\"",
        ),
    ] {
        assert!(maps(&report, from, to), "{from} -> {to} not in:\n{report}");
    }
    // decimation.enabled is mapped too: the [decimated] section is there.
    let c = read_toml(&out.join("probe.toml"));
    assert_eq!(int_of(&c, "archive.rotate_size"), 104_857_600);
    assert_eq!(int_of(&c, "archive.retention_size"), 1_073_741_824);
    assert!(str_of(&c, "archive.dir").ends_with("/data"), "{c:#?}");
    let unmapped = not_mapped(&report);
    for key in [
        "relay.yaml channels[0].owner: unknown key",
        "relay.yaml decimation.window: unknown key",
        "relay.yaml storage.avro_path: SpeedData reads storage from global.yaml only",
        "relay.yaml alerts: unknown key",
        "global.yaml multicast.full_rate.ttl: unknown key",
        "global.yaml storage.compression: unknown key",
        "global.yaml pivot: not a relay setting",
    ] {
        assert!(
            unmapped.iter().any(|l| l.trim_start().starts_with(key)),
            "{key:?} not reported as not mapped:\n{report}"
        );
    }
    assert_eq!(unmapped.len(), 7, "{report}");
    let (code, stdout, stderr) = check(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // decimation.enabled = false: no [decimated], and its factor and
    // algorithm are reported as not mapped.
    let t = tree(
        "channels:\n  - {name: quiet, port: 26101, schema: config/agents/sample.avsc}\ndecimation:\n  enabled: false\n  factor: 5\n  algorithm: rms\n",
        Some(SPEEDDATA_GLOBAL),
    );
    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &[]);
    let c = read_toml(&out.join("quiet.toml"));
    assert!(get(&c, "decimated").is_none(), "{c:#?}");
    assert!(
        maps(
            &report,
            "relay.yaml decimation.enabled",
            "[decimated] = left out"
        ),
        "{report}"
    );
    for key in [
        "relay.yaml decimation.factor",
        "relay.yaml decimation.algorithm",
    ] {
        assert!(
            not_mapped(&report)
                .iter()
                .any(|l| l.trim_start().starts_with(key) && l.contains("decimation is off")),
            "{key}:\n{report}"
        );
    }
}

#[test]
fn a_different_existing_file_is_refused_and_nothing_is_written() {
    let t = tree(
        &relay_yaml(&[("one", 26201), ("two", 26202)]),
        Some(SPEEDDATA_GLOBAL),
    );
    let out = t.path().join("channels.d");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("two.avsc"), "{\"type\": \"string\"}\n").unwrap();
    let (code, stdout, stderr) = import(t.path(), &out, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: exists with other content: not overwritten",
            out.join("two.avsc").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["two.avsc"]);
    assert_eq!(
        std::fs::read_to_string(out.join("two.avsc")).unwrap(),
        "{\"type\": \"string\"}\n"
    );

    // Gone, the import writes; again, the same files are left as they are.
    std::fs::remove_file(out.join("two.avsc")).unwrap();
    import_ok(t.path(), &out, &[]);
    let before = std::fs::read(out.join("one.toml")).unwrap();
    let again = import_ok(t.path(), &out, &[]);
    assert!(again.contains("one.toml: unchanged"), "{again}");
    assert_eq!(std::fs::read(out.join("one.toml")).unwrap(), before);
    // A channel file edited since is not overwritten either.
    std::fs::write(
        out.join("one.toml"),
        format!("{}\n# edited\n", String::from_utf8(before).unwrap()),
    )
    .unwrap();
    let (code, _, stderr) = import(t.path(), &out, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("one.toml: exists with other content"),
        "{stderr}"
    );
}

#[test]
fn a_dry_run_writes_nothing_and_prints_what_it_would_write() {
    let t = tree(&relay_yaml(&[("example", 26000)]), Some(SPEEDDATA_GLOBAL));
    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &["--dry-run"]);
    assert!(!out.exists(), "{report}");
    assert!(
        report.contains("Would write (--dry-run: nothing written)"),
        "{report}"
    );
    assert!(report.contains("example.toml: new"), "{report}");
    assert!(report.contains("example.avsc: new"), "{report}");
    assert!(report.contains("    | [receive]"), "{report}");
    assert!(report.contains("group = \"239.1.1.1:6000\""), "{report}");
    // Into an existing folder, too.
    std::fs::create_dir_all(&out).unwrap();
    import_ok(t.path(), &out, &["--dry-run"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn a_deployed_configuration_folder_resolves_paths_against_itself() {
    // /etc/speeddata holds relay.yaml and global.yaml themselves.
    let d = tempdir();
    let etc = d.path().join("etc-speeddata");
    std::fs::create_dir_all(etc.join("agents")).unwrap();
    std::fs::write(etc.join("agents/sample.avsc"), SCHEMA).unwrap();
    std::fs::write(
        etc.join("relay.yaml"),
        "channels:\n  - {name: deployed, port: 26300, schema: agents/sample.avsc}\n",
    )
    .unwrap();
    std::fs::write(etc.join("global.yaml"), SPEEDDATA_GLOBAL).unwrap();
    let out = d.path().join("channels.d");
    let report = import_ok(&etc, &out, &[]);
    assert!(
        report.contains("the configuration folder itself"),
        "{report}"
    );
    let c = read_toml(&out.join("deployed.toml"));
    assert_eq!(PathBuf::from(str_of(&c, "archive.dir")), etc.join("data"));
    // relay.yaml without the three sections: SpeedData's built-in values.
    assert_eq!(int_of(&c, "decimated.factor"), 5);
    assert_eq!(int_of(&c, "archive.rotate_size"), 50 * 1024 * 1024);
    assert!(get(&c, "archive.retention_age").is_none());
    // --root: another folder for relative paths.
    let (code, _, stderr) = import(
        &etc,
        &d.path().join("other"),
        &["--root", d.path().to_str().unwrap()],
    );
    assert_eq!(code, 78);
    assert!(
        stderr.contains(&format!(
            "{}: channels[0].schema: cannot read {}",
            etc.join("relay.yaml").display(),
            d.path().join("agents/sample.avsc").display()
        )),
        "{stderr}"
    );
    let (code, _, stderr) = import(&d.path().join("nothing"), &out, &[]);
    assert_eq!(code, 78);
    assert!(stderr.contains("neither config/relay.yaml"), "{stderr}");
}

#[test]
fn registry_channels_are_imported_and_override_relay_yaml() {
    let t = tree(
        &relay_yaml(&[("example", 26400), ("clash", 26402), ("plain", 26403)]),
        Some(SPEEDDATA_GLOBAL),
    );
    let db_path = t.path().join("data/registry.db");
    std::fs::create_dir_all(db_path.parent().unwrap()).unwrap();
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch(
            "CREATE TABLE channels (
                name TEXT PRIMARY KEY,
                port INTEGER UNIQUE NOT NULL,
                schema_path TEXT NOT NULL,
                config_json TEXT,
                status TEXT DEFAULT 'registered',
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                pid INTEGER,
                last_heartbeat TIMESTAMP
            );",
        )
        .unwrap();
        let add = |name: &str, port: i64, config: Option<&str>, pid: Option<i64>| {
            db.execute(
                "INSERT INTO channels (name, port, schema_path, config_json, status, pid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    name,
                    port,
                    "config/agents/sample.avsc",
                    config,
                    if pid.is_some() { "active" } else { "registered" },
                    pid
                ],
            )
            .unwrap();
        };
        add(
            "example",
            26410,
            Some(r#"{"decimation": 10, "rotation": 600, "colour": "red"}"#),
            Some(4242),
        );
        add("registered", 26402, None, None);
    }
    // Without --registry, the registry beside the tree is reported, not read.
    let out = t.path().join("without");
    let report = import_ok(t.path(), &out, &["--dry-run"]);
    assert!(
        not_mapped(&report)
            .iter()
            .any(|l| l.contains("registry.db") && l.contains("not read without --registry")),
        "{report}"
    );

    let out = t.path().join("channels.d");
    let report = import_ok(t.path(), &out, &["--registry", db_path.to_str().unwrap()]);
    // The registry's example wins over relay.yaml's, with its own settings.
    let example = read_toml(&out.join("example.toml"));
    assert_eq!(str_of(&example, "receive.bind"), "127.0.0.1:26410");
    assert_eq!(int_of(&example, "decimated.factor"), 10);
    assert_eq!(str_of(&example, "archive.rotate_interval"), "600s");
    assert!(
        maps(
            &report,
            "registry.db channels[example].config_json.decimation",
            "example.toml decimated.factor = 10"
        ),
        "{report}"
    );
    // A registry-only channel is imported; relay.yaml's `clash` is not:
    // its port is the registry's `registered`, as SpeedData never ran it.
    let registered = read_toml(&out.join("registered.toml"));
    assert_eq!(str_of(&registered, "receive.bind"), "127.0.0.1:26402");
    assert_eq!(int_of(&registered, "decimated.factor"), 5);
    assert!(!out.join("clash.toml").exists());
    let plain = read_toml(&out.join("plain.toml"));
    assert_eq!(str_of(&plain, "receive.bind"), "127.0.0.1:26403");
    let unmapped = not_mapped(&report);
    for (key, why) in [
        (
            "relay.yaml channels[0]",
            "overridden by registry.db channels[example]",
        ),
        (
            "relay.yaml channels[1]",
            "port 26402 is also channel \"registered\"",
        ),
        (
            "registry.db channels[example].config_json.colour",
            "unknown key",
        ),
        ("registry.db channels[example].status", "runtime state"),
        (
            "registry.db channels[example].pid",
            "4242 is SpeedData's runtime state",
        ),
    ] {
        assert!(
            unmapped
                .iter()
                .any(|l| l.trim_start().starts_with(key) && l.contains(why)),
            "{key}: {why:?} not in:\n{report}"
        );
    }
    let (code, stdout, stderr) = check(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("3 channel(s), all valid"), "{stdout}");

    // A file that is not SpeedData's registry is named as such.
    let bogus = t.path().join("bogus.db");
    rusqlite::Connection::open(&bogus)
        .unwrap()
        .execute_batch("CREATE TABLE other (x INTEGER);")
        .unwrap();
    let (code, _, stderr) = import(
        t.path(),
        &t.path().join("x"),
        &["--registry", bogus.to_str().unwrap()],
    );
    assert_eq!(code, 78);
    assert!(
        stderr.contains(&format!("{}: not SpeedData's registry", bogus.display())),
        "{stderr}"
    );
}

/// One SpeedData record of [`SCHEMA`], encoded by apache-avro.
fn record(schema: &Schema, counter: i32, time: i64) -> Vec<u8> {
    let t = f64::from(counter) / 20.0;
    let v = Value::Record(vec![
        ("time".into(), Value::Long(time)),
        ("message".into(), Value::String(format!("word {counter}"))),
        ("counter".into(), Value::Int(counter)),
        (
            "sine_wave".into(),
            Value::Double((t * std::f64::consts::TAU).sin()),
        ),
        ("ramp".into(), Value::Double(t.fract())),
    ]);
    let mut out = Vec::new();
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value(&mut out, v)
        .unwrap();
    out
}

#[test]
fn imported_channels_pass_check_run_and_archive_speeddata_records() {
    let full = group_addr(unique_group(), free_port());
    let decimated = group_addr(unique_group(), free_port());
    let ports = [free_port(), free_port()];
    let t = tree(
        &relay_yaml(&[("sd-one", ports[0]), ("sd-two", ports[1])]),
        Some(&global_yaml(&full.to_string(), &decimated.to_string())),
    );
    let fleet = FleetDir::new(&[]);
    // channels.d holds FleetDir's schema.avsc already: no channel of ours.
    let report = import_ok(
        t.path(),
        &fleet.channels_dir(),
        &["--interface", "127.0.0.1", "--ttl", "0"],
    );
    for name in ["sd-one", "sd-two"] {
        let c = read_toml(&fleet.channels_dir().join(format!("{name}.toml")));
        assert_eq!(str_of(&c, "full.interface"), "127.0.0.1", "{report}");
        assert_eq!(int_of(&c, "full.ttl"), 0);
        assert_eq!(str_of(&c, "decimated.interface"), "127.0.0.1");
        assert_eq!(int_of(&c, "decimated.ttl"), 0);
    }
    let (code, stdout, stderr) = run_orchestrator(
        &["check", "--config", fleet.config().to_str().unwrap()],
        fleet.dir.path(),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("2 channel(s), all valid"), "{stdout}");

    let mut orch = fleet.start();
    orch.wait_ready("sd-one");
    orch.wait_ready("sd-two");
    let rx = GroupReceiver::join(full);
    let schema = Schema::parse_str(SCHEMA).unwrap();
    const N: i32 = 300;
    let t0: i64 = 1_795_383_000_123_456_789;
    let sent: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|k| {
            (0..N)
                .map(|i| record(&schema, i, t0 + i64::from(i) * 1_000_000 + k))
                .collect()
        })
        .collect();
    let senders: Vec<_> = ports
        .iter()
        .zip(&sent)
        .map(|(port, records)| {
            let to = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, *port);
            let records = records.clone();
            std::thread::spawn(move || Sender::new(to).send_paced(&records, 1))
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    for name in ["sd-one", "sd-two"] {
        orch.wait_channel(name, Duration::from_secs(30), |c| {
            counters(c).map(|n| n.archived) == Some(N as u64)
        });
    }
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(30)), 0);
    std::thread::sleep(Duration::from_millis(200));

    // Both channels' datagrams on SpeedData's one full-rate group.
    let mut got = rx.finish();
    let mut want: Vec<Vec<u8>> = sent.concat();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "the shared full-rate group carried {} of {}",
        got.len(),
        want.len()
    );

    for (name, records) in ["sd-one", "sd-two"].iter().zip(&sent) {
        let dir = t.path().join("data").join(name);
        let files = avro_files(&dir);
        assert!(!files.is_empty(), "no archive in {}", dir.display());
        assert!(
            read_with_apache_avro(&files) == *records,
            "{name}: apache-avro read other records"
        );
        let fast = read_with_fastavro(&files);
        assert!(
            fast.records == *records,
            "{name}: fastavro read other records"
        );
        for (path, header_schema, _) in &fast.files {
            assert_eq!(header_schema.trim(), SCHEMA.trim(), "{}", path.display());
        }
        // The time is a plain long, as Avro (and SpeedData's readers) say.
        let values = read_values_with_fastavro(&files);
        assert_eq!(values.len(), N as usize);
        assert_eq!(
            values[7]["time"].as_i64(),
            Some(t0 + 7_000_000 + i64::from(*name == "sd-two"))
        );
        assert_eq!(values[7]["counter"].as_i64(), Some(7));
    }
}
