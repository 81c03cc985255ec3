//! End-to-end tests of `relay-channel`'s configuration and start-up
//! failures: a clear message naming the file and key, and the right exit
//! code (78 for a configuration that is wrong, 1 for what fails at start,
//! such as a port in use or an archive folder that cannot be made).

use speeddata_tests::*;

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("schema.avsc"), EXAMPLE_SCHEMA).unwrap();
    let p = dir.join("bad.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn run_config(path: &std::path::Path) -> (i32, String) {
    let (code, _, err) = run_relay(&["run", "--config", path.to_str().unwrap()]);
    (code, err)
}

#[test]
fn unknown_key_exits_78_naming_file_and_key() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\nbuffer_size = 5\n[archive]\ndir = \"a\"\n",
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains("receive") && err.contains("buffer_size"),
        "{err}"
    );
}

#[test]
fn bad_values_exit_78_naming_every_key() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1\"\n[archive]\ndir = \"a\"\ncodec = \"lz4\"\nrotate_size = \"huge\"\n\
         [decimated]\ngroup = \"239.255.1.1:6001\"\ninterface = \"127.0.0.1\"\nttl = 0\nalgorithm = \"median\"\nfactor = 5\n",
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    for key in [
        "receive.bind",
        "archive.codec",
        "archive.rotate_size",
        "decimated.algorithm",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn invalid_schema_exits_78() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\n",
    );
    std::fs::write(
        dir.path().join("schema.avsc"),
        r#"{"type":"record","name":"x","fields":[{"name":"a","type":"nonesuch"}]}"#,
    )
    .unwrap();
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("schema.avsc") && err.contains("schema"),
        "{err}"
    );
    let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
}

/// A schema file that is not JSON says where: line and column.
#[test]
fn a_schema_that_is_not_json_exits_78_naming_line_and_column() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\n",
    );
    std::fs::write(
        dir.path().join("schema.avsc"),
        "{\n  \"type\": \"record\",\n  \"name\": \"x\"\n  \"fields\": []\n}\n",
    )
    .unwrap();
    for args in [["run", "--config"], ["check", "--config"]] {
        let (code, _, err) = run_relay(&[args[0], args[1], p.to_str().unwrap()]);
        assert_eq!(code, 78, "{err}");
        assert!(
            err.contains("schema.avsc is not JSON") && err.contains("line 4 column 3"),
            "{err}"
        );
    }
}

#[test]
fn time_field_must_be_a_timestamp_field_of_the_schema() {
    let dir = tempdir();
    for (field, ok, says) in [
        ("time", true, ""),
        ("nonesuch", false, "has no field \"nonesuch\""),
        ("counter", false, "\"counter\" is int"),
        ("time.x", false, "not a record"),
    ] {
        let p = write_config(
            dir.path(),
            &format!(
                "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\ntime_field = \"{field}\"\n"
            ),
        );
        let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
        if ok {
            assert_eq!(code, 0, "{field}: {err}");
            continue;
        }
        assert_eq!(code, 78, "{field}: {err}");
        assert!(
            err.contains("bad.toml") && err.contains("archive.time_field") && err.contains(says),
            "{field}: {err}"
        );
    }
}

#[test]
fn compress_threads_must_be_in_range() {
    let dir = tempdir();
    for (n, ok) in [("1", true), ("8", true), ("0", false), ("65", false)] {
        let p = write_config(
            dir.path(),
            &format!(
                "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\ncompress_threads = {n}\n"
            ),
        );
        let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
        if ok {
            assert_eq!(code, 0, "{n}: {err}");
            continue;
        }
        assert_eq!(code, 78, "{n}: {err}");
        assert!(
            err.contains("bad.toml")
                && err.contains("archive.compress_threads")
                && err.contains("out of range (1 to 64)"),
            "{n}: {err}"
        );
    }
}

#[test]
fn port_in_use_exits_1() {
    let dir = tempdir();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = write_config(
        dir.path(),
        &format!("schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:{port}\"\n[archive]\ndir = \"a\"\n"),
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("receive.bind") && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn archive_folder_that_cannot_be_created_exits_1() {
    let dir = tempdir();
    std::fs::write(dir.path().join("a-file"), b"not a folder").unwrap();
    let p = write_config(
        dir.path(),
        &format!(
            "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:{}\"\n[archive]\ndir = \"a-file/archive\"\n",
            free_port()
        ),
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("archive folder") && err.contains("a-file"),
        "{err}"
    );
}

#[test]
fn a_channel_folder_that_is_a_symlink_is_refused_but_archive_dir_may_be_one() {
    use std::os::unix::fs::symlink;
    // The channel's own folder, <archive.dir>/<name>, is a symlink: exit 78.
    let dir = tempdir();
    let elsewhere = tempdir();
    let opts = ChannelOpts::unicast("moved");
    let config = write_channel(dir.path(), &opts);
    std::fs::create_dir_all(dir.path().join("archive")).unwrap();
    symlink(elsewhere.path(), dir.path().join("archive").join("moved")).unwrap();
    let (code, _out, err) = run_relay(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("moved.toml") && err.contains("archive.dir") && err.contains("symlink"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // archive.dir itself a symlink (a mount elsewhere, say): fine.
    let dir = tempdir();
    let real = tempdir();
    symlink(real.path(), dir.path().join("archive")).unwrap();
    let opts = ChannelOpts::unicast("linked-root");
    let relay = Relay::start(dir.path(), &opts);
    let valid = example_records(50, "root");
    relay.feed(opts.bind, &valid, 5);
    relay.stop_ok();
    assert!(read_archive(&real.path().join("linked-root")) == valid);
}

#[test]
fn the_example_channel_file_is_valid() {
    let p = root().join("channels.d/example.toml");
    let (code, out, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"example\" is valid"), "{out}");
}
