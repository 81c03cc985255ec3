//! Registration through the API, end to end: `PUT`, `GET .../config`,
//! `DELETE /api/v1/channels/{name}`, `check-schema` and `ports/free`
//! against the real orchestrator and relays; the files of `channels.d`
//! and the archives are read from disk (apache-avro).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value as Json};
use speeddata_api::{ChannelStatus, Checked, ErrorBody, Ports, Registration, SchemaCheck, State};
use speeddata_tests::fleet::{counters, pid_of, FleetDir, Orchestrator};
use speeddata_tests::{
    avro_files, example_records, free_port, group_addr, read_with_apache_avro, unique_group,
    ChannelOpts, Sender, EXAMPLE_SCHEMA,
};

/// A channel file's text for the API: no `schema` key (the API sets it),
/// the archive folder from `[defaults]`.
fn channel_text(opts: &ChannelOpts) -> String {
    opts.toml()
        .replace("schema = \"schema.avsc\"\n", "")
        .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n")
}

fn schema() -> Json {
    serde_json::from_str(EXAMPLE_SCHEMA).unwrap()
}

fn registration(channel: &str, schema: &Json) -> Registration {
    Registration {
        channel: channel.into(),
        schema: schema.clone(),
    }
}

/// `PUT /api/v1/channels/{name}?wait=ready`: the status and the channel's
/// status, or the status and what is wrong.
fn put(
    o: &Orchestrator,
    name: &str,
    channel: &str,
    schema: &Json,
) -> Result<(u16, ChannelStatus), (u16, ErrorBody)> {
    o.call(
        "PUT",
        &format!("/api/v1/channels/{name}?wait=ready"),
        Some(&registration(channel, schema)),
    )
}

/// A registration's request body, as sent over the wire.
fn registration_json(channel: &str, schema: &Json) -> Json {
    serde_json::to_value(registration(channel, schema)).unwrap()
}

/// Every file of a folder and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_channel_registered_through_the_api_runs_is_replaced_alone_and_is_removed_with_its_archive_kept(
) {
    let fleet = FleetDir::new(&[]);
    fleet.add(&ChannelOpts::unicast("other"));
    let o = fleet.start();
    let other_pid = pid_of(&o.wait_ready("other"));

    let mut opts = ChannelOpts::unicast("reg");
    opts.archive.push("flush_interval = \"200ms\"".into());
    let (status, body) =
        put(&o, "reg", &channel_text(&opts), &schema()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 201, "{body:?}");
    assert_eq!(body.name, "reg");
    assert_eq!(
        body.state,
        State::Ready,
        "?wait=ready answers once it is ready: {body:?}"
    );
    let dir = fleet.channels_dir();
    let written = std::fs::read_to_string(dir.join("reg.toml")).unwrap();
    assert!(written.starts_with("schema = \"reg.avsc\"\n"), "{written}");
    assert!(
        written.ends_with(&channel_text(&opts)),
        "the rest is the text as sent"
    );
    let avsc: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reg.avsc")).unwrap()).unwrap();
    assert_eq!(avsc, schema());

    // Its config, as written.
    let c = o.client().channel_config("reg").unwrap();
    assert_eq!(c.channel, written);
    assert_eq!(c.schema, schema());

    // Records sent to it are archived.
    let sender = Sender::new(opts.bind);
    for d in example_records(100, "registered") {
        sender.send(&d);
    }
    o.wait_channel("reg", Duration::from_secs(20), |c| {
        counters(c).is_some_and(|n| n.archived == 100)
    });

    // Replaced with a changed file: 200, only it restarts.
    let first_pid = o.channel("reg").unwrap().pid;
    opts.recv_buffer = "16MiB".into();
    let (status, body) =
        put(&o, "reg", &channel_text(&opts), &schema()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body.state, State::Ready);
    assert_ne!(body.pid, first_pid, "the replaced channel restarted");
    assert_eq!(
        o.channel("other").unwrap().pid,
        Some(other_pid),
        "the other channel did not"
    );
    assert_eq!(o.channel("other").unwrap().restarts, 0);

    // The same files again: nothing changes, nothing restarts.
    let (status, body) =
        put(&o, "reg", &channel_text(&opts), &schema()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body.pid, o.channel("reg").unwrap().pid);

    // Removed: 200 once it stopped (SpeedData v0.5's body); both files
    // gone; the archive is kept, finalized, with every record.
    let r = o.send("DELETE", "/api/v1/channels/reg", None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let body: speeddata_api::Deregistered = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (
            body.status.as_str(),
            body.name.as_str(),
            body.message.as_str()
        ),
        (
            "success",
            "reg",
            "Channel 'reg' de-registered and relay stopped"
        )
    );
    assert!(!dir.join("reg.toml").exists() && !dir.join("reg.avsc").exists());
    assert!(
        o.channel("reg").is_none(),
        "the channel is gone from the API"
    );
    let files = avro_files(&fleet.archive_dir("reg"));
    assert!(!files.is_empty(), "the archive is kept");
    assert_eq!(read_with_apache_avro(&files).len(), 100);
    assert_eq!(
        o.send("DELETE", "/api/v1/channels/reg", None, &[]).status,
        404
    );
    assert_eq!(o.get("/api/v1/channels/reg/config").status, 404);
    assert_eq!(o.channel("other").unwrap().pid, Some(other_pid));
}

#[test]
fn every_refusal_leaves_channels_d_byte_for_byte_as_it_was() {
    let fleet = FleetDir::new(&[]);
    let mut other = ChannelOpts::unicast("other");
    other.full = Some(group_addr(unique_group(), free_port()));
    fleet.add(&other);
    let o = fleet.start();
    o.wait_ready("other");
    let dir = fleet.channels_dir();
    let before = snapshot(&dir);
    let good = channel_text(&ChannelOpts::unicast("neo"));

    let cases: Vec<(&str, String, Json, u16, &str)> = vec![
        (
            "neo",
            good.replace("recv_buffer = \"32MiB\"", "recv_buffer = \"lots\""),
            schema(),
            422,
            "receive.recv_buffer",
        ),
        (
            "neo",
            "name = \"neo\"\n[receive\n".into(),
            schema(),
            422,
            "",
        ),
        (
            "neo",
            good.clone(),
            json!({"type": "record", "name": "X"}),
            422,
            "schema",
        ),
        (
            "neo",
            good.replace("name = \"neo\"", "name = \"old\""),
            schema(),
            422,
            "name",
        ),
        (
            "neo",
            format!("schema = \"schema.avsc\"\n{good}"),
            schema(),
            422,
            "schema",
        ),
    ];
    for (name, text, schema, status, key) in &cases {
        let (got, body) = put(&o, name, text, schema).expect_err("a refusal");
        assert_eq!(got, *status, "{name}: {body:?}");
        let problems = body.problems.as_ref().unwrap_or_else(|| panic!("{body:?}"));
        assert!(!problems.is_empty(), "{body:?}");
        if !key.is_empty() {
            assert!(
                problems.iter().any(|p| p.key == *key),
                "key {key}: {body:?}"
            );
        }
        assert!(
            problems.iter().all(|p| p.file.ends_with("neo.toml")),
            "{body:?}"
        );
        assert_eq!(snapshot(&dir), before, "after {key}: channels.d changed");
    }

    // Conflicts with `other`: its receive port, its output group. 409,
    // naming the other file.
    let mut same_port = ChannelOpts::unicast("neo");
    same_port.bind = other.bind;
    let mut same_group = ChannelOpts::unicast("neo");
    same_group.full = other.full;
    for (opts, key) in [(same_port, "receive.bind"), (same_group, "full.group")] {
        let (got, body) = put(&o, "neo", &channel_text(&opts), &schema()).expect_err("a refusal");
        assert_eq!(got, 409, "{body:?}");
        let p = &body.problems.as_ref().unwrap_or_else(|| panic!("{body:?}"))[0];
        assert_eq!(p.key, key, "{body:?}");
        assert!(p.message.contains("other.toml"), "{body:?}");
        assert_eq!(snapshot(&dir), before);
    }

    // Names that are not channel names: 400.
    for path in ["a%2Fb", "%2E%2E", "Upper", "a.b"] {
        let r = o.send(
            "PUT",
            &format!("/api/v1/channels/{path}"),
            Some(&registration_json(&good, &schema())),
            &[],
        );
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(snapshot(&dir), before);
    }
    // Not JSON, or not the registration's shape: a body the type cannot
    // make, so written as JSON.
    let r = o.send(
        "PUT",
        "/api/v1/channels/neo",
        Some(&json!({"channel": good})),
        &[],
    );
    assert!(r.status == 422 || r.status == 400, "{}", r.body);
    assert_eq!(snapshot(&dir), before);

    // A dry run checks and writes nothing.
    let checked = o.call::<Checked>(
        "PUT",
        "/api/v1/channels/neo?dry_run=true",
        Some(&registration(&good, &schema())),
    );
    assert_eq!(checked, Ok((200, Checked { problems: vec![] })));
    assert_eq!(snapshot(&dir), before);
}

/// With `http.token_file`, every write needs `Authorization: Bearer`.
#[test]
fn writes_need_the_token_when_one_is_set() {
    let fleet = FleetDir::new(&[]);
    let token = "0123456789abcdef0123456789abcdef";
    fleet.set_token(token);
    fleet.add(&ChannelOpts::unicast("other"));
    let o = fleet.start();
    o.wait_ready("other");
    let dir = fleet.channels_dir();
    let before = snapshot(&dir);
    let body = registration_json(&channel_text(&ChannelOpts::unicast("neo")), &schema());
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "Basic abc")],
    ] {
        let r = o.send("PUT", "/api/v1/channels/neo", Some(&body), &headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(
            o.send("POST", "/api/v1/channels/other/restart", None, &headers)
                .status,
            401
        );
        assert_eq!(
            o.send("DELETE", "/api/v1/channels/other", None, &headers)
                .status,
            401
        );
        assert_eq!(
            o.send(
                "POST",
                "/api/v1/channels/other/check-schema",
                Some(&schema()),
                &headers
            )
            .status,
            401
        );
        assert_eq!(snapshot(&dir), before);
    }
    assert!(!o.log().contains(token), "the token is never logged");
    // Reads stay open.
    assert_eq!(o.get("/api/v1/channels/other").status, 200);
    assert_eq!(o.client().info().unwrap().auth, "token");
    let bearer = format!("Bearer {token}");
    let r = o.send(
        "PUT",
        "/api/v1/channels/neo?wait=ready",
        Some(&body),
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.parse::<ChannelStatus>().state, State::Ready);
}

#[test]
fn check_schema_and_free_ports() {
    let fleet = FleetDir::new(&[]);
    let opts = ChannelOpts::unicast("chk");
    fleet.add(&opts);
    let o = fleet.start();
    o.wait_ready("chk");
    let path = "/api/v1/channels/chk/check-schema";
    let check = |s: &Json| o.client().check_schema("chk", s).unwrap();

    assert_eq!(
        o.call::<SchemaCheck>("POST", path, Some(&schema())),
        Ok((
            200,
            SchemaCheck {
                compatible: true,
                problems: vec![]
            }
        ))
    );
    // A writer with a field the reader lacks resolves (it is skipped); one
    // whose field changed type does not.
    let mut extra = schema();
    extra["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "type": "int"}));
    assert!(check(&extra).compatible);
    let mut changed = schema();
    changed["fields"][2]["type"] = json!("string");
    let v = check(&changed);
    assert!(!v.compatible, "{v:?}");
    assert!(!v.problems.is_empty());
    let v = check(&json!({"type": "nope"}));
    assert!(!v.compatible);
    assert_eq!(
        o.send(
            "POST",
            "/api/v1/channels/nope/check-schema",
            Some(&schema()),
            &[]
        )
        .status,
        404
    );

    // Free ports: never the channel's, never one bound on this host.
    let used = opts.bind.port();
    let (status, Ports { ports }) = o
        .call(
            "GET",
            &format!(
                "/api/v1/ports/free?from={used}&to={}&count=2",
                used.saturating_add(50)
            ),
            None::<&()>,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 200);
    assert_eq!(ports.len(), 2);
    assert!(!ports.contains(&used), "{ports:?}");
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p = held.local_addr().unwrap().port();
    let r = o.get(&format!("/api/v1/ports/free?from={p}&to={p}"));
    assert_eq!(r.status, 409, "a bound port is not free: {}", r.body);
    assert_eq!(o.get("/api/v1/ports/free?from=10&to=5").status, 400);
}

/// A crash between the schema's write and the channel file's leaves a
/// lone `.avsc`, which starts nothing.
#[test]
fn a_crash_between_the_two_writes_leaves_nothing_that_starts() {
    let fleet = FleetDir::new(&[]);
    fleet.add(&ChannelOpts::unicast("other"));
    let mut o = fleet.start_with_env(&[("SPEEDDATA_FAILPOINT", "after-schema-write")]);
    o.wait_ready("other");
    let body = registration_json(&channel_text(&ChannelOpts::unicast("neo")), &schema());
    let url = format!("http://127.0.0.1:{}/api/v1/channels/neo", o.port);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .build(),
    );
    let r = agent
        .put(&url)
        .header("content-type", "application/json")
        .send(body.to_string());
    assert!(r.is_err(), "the orchestrator died before it answered");
    o.wait_exit(Duration::from_secs(20));
    let dir = fleet.channels_dir();
    assert!(dir.join("neo.avsc").exists() && !dir.join("neo.toml").exists());
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary file left"
    );
    let o = fleet.start();
    o.wait_ready("other");
    std::thread::sleep(Duration::from_millis(800));
    let names: Vec<String> = o.channels().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["other"]);
}

/// `orchestrator channel add/show/rm`, the command line over the API,
/// with the token of `http.token_file`.
#[test]
fn the_channel_commands_add_show_and_remove_through_the_api() {
    use speeddata_tests::fleet::run_orchestrator;
    let fleet = FleetDir::new(&[]);
    fleet.set_token("fedcba9876543210fedcba9876543210");
    let other = ChannelOpts::unicast("other");
    fleet.add(&other);
    let o = fleet.start();
    o.wait_ready("other");
    let config = fleet.config();
    let config = config.to_str().unwrap();

    // A file of its own, outside channels.d, with a schema beside it.
    let work = speeddata_tests::tempdir();
    std::fs::write(work.path().join("mine.avsc"), EXAMPLE_SCHEMA).unwrap();
    let mut mine = ChannelOpts::unicast("mine");
    mine.archive.push("# kept as written".into());
    let text = mine
        .toml()
        .replace("schema = \"schema.avsc\"", "schema = \"mine.avsc\"")
        .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n");
    std::fs::write(work.path().join("mine.toml"), &text).unwrap();
    let file = work.path().join("mine.toml");
    let (code, out, err) = run_orchestrator(
        &["channel", "add", file.to_str().unwrap(), "--config", config],
        work.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("added channel mine: ready"), "{out}");
    assert_eq!(o.channel("mine").unwrap().state, State::Ready);
    let written = std::fs::read_to_string(fleet.channels_dir().join("mine.toml")).unwrap();
    assert!(
        written.contains("# kept as written") && written.starts_with("schema = \"mine.avsc\""),
        "{written}"
    );

    let (code, out, _) = run_orchestrator(
        &["channel", "show", "mine", "--config", config],
        work.path(),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("# kept as written") && out.contains("speeddata.example"),
        "{out}"
    );

    // Problems: printed file: key: message, exit 78, nothing written.
    let before = snapshot(&fleet.channels_dir());
    let mut clash = ChannelOpts::unicast("clash");
    clash.bind = other.bind;
    std::fs::write(
        work.path().join("clash.toml"),
        clash
            .toml()
            .replace("schema = \"schema.avsc\"", "schema = \"mine.avsc\"")
            .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n"),
    )
    .unwrap();
    let clash_file = work.path().join("clash.toml");
    let (code, out, err) = run_orchestrator(
        &[
            "channel",
            "add",
            clash_file.to_str().unwrap(),
            "--config",
            config,
        ],
        work.path(),
    );
    assert_eq!(code, 78, "{out}{err}");
    assert!(
        err.contains("clash.toml: receive.bind: ") && err.contains("other.toml"),
        "{err}"
    );
    assert_eq!(snapshot(&fleet.channels_dir()), before);

    // Without the token the API refuses.
    let wrong = speeddata_tests::tempdir();
    let wrong_cfg = wrong.path().join("orchestrator.toml");
    std::fs::write(
        &wrong_cfg,
        format!("[http]\nlisten = \"127.0.0.1:{}\"\n", o.port),
    )
    .unwrap();
    let (code, _, err) = run_orchestrator(
        &[
            "channel",
            "rm",
            "mine",
            "--config",
            wrong_cfg.to_str().unwrap(),
        ],
        work.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") || err.contains("token"), "{err}");

    let (code, out, err) =
        run_orchestrator(&["channel", "rm", "mine", "--config", config], work.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(!fleet.channels_dir().join("mine.toml").exists());
    assert!(o.channel("mine").is_none());
}
