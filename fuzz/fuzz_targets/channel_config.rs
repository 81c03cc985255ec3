//! The channel file parser: arbitrary text (and bytes) through the loading and
//! validation `relay-channel check` does, `--defaults` included.
//!
//! Input: a control byte, then the file. If the control byte is odd, the file
//! is split at its first NUL: the part before is the `--defaults` TOML merged
//! under the part after. A file that is not UTF-8 is loaded from disk as
//! `check` reads it; UTF-8 text goes through `ChannelSpec::from_text`. When the
//! channel validates and its schema is the one beside the file, the schema is
//! loaded too (`schema::load`, as `check` does).
//!
//! Oracle: nothing panics; `Ok`, or every problem names a key, except the
//! problems about the file as a whole (unreadable, not TOML), which name the
//! file; a problem with a key names the key the text has (its section).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_channel::config::{parse_table, ChannelSpec, ConfigError};

const SCHEMA: &str = include_str!("../../channels.d/example.avsc");

/// This process's scratch folder, with `example.avsc` in it.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relay-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::write(dir.join("example.avsc"), SCHEMA).expect("schema file");
        std::fs::canonicalize(&dir).expect("canonical scratch folder")
    })
}

/// `key` with each quoted part (as `{:?}` writes it, escapes included)
/// replaced by `q`.
fn unquoted(key: &str) -> String {
    let mut out = String::new();
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        out.push('q');
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
    out
}

/// Whether every problem names a key, or is one about the whole file.
fn check_problems(e: &ConfigError, file: &Path) {
    assert_eq!(e.file, file, "{e}");
    assert!(!e.problems.is_empty(), "an error without problems");
    for p in &e.problems {
        assert!(
            !p.message.trim().is_empty(),
            "a problem without a message: {e}"
        );
        if p.key.is_empty() {
            assert!(
                p.message.starts_with("not valid TOML")
                    || p.message.starts_with("cannot read the file"),
                "a problem that names no key: {:?}",
                p.message
            );
        } else {
            // Quoted parts (`archive."a.b"`) may hold any text, dots too.
            let bare = unquoted(&p.key);
            assert!(
                !bare.starts_with('.') && !bare.ends_with('.') && !bare.contains(".."),
                "malformed key {:?}",
                p.key
            );
        }
    }
    // Display starts with the file (TOML syntax errors run on over more lines).
    assert!(
        e.to_string().starts_with(&file.display().to_string()),
        "{e}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    let file = dir.join("ch.toml");
    let (defaults, text) = match rest.iter().position(|&b| b == 0) {
        Some(nul) if ctl & 1 == 1 => (Some(&rest[..nul]), &rest[nul + 1..]),
        _ => (None, rest),
    };
    let defaults = match defaults.map(std::str::from_utf8) {
        None => None,
        Some(Err(_)) => return,
        Some(Ok(d)) => match parse_table(d, Path::new("--defaults")) {
            Ok(t) => Some(t),
            Err(e) => {
                check_problems(&e, Path::new("--defaults"));
                return;
            }
        },
    };
    let result = match std::str::from_utf8(text) {
        Ok(t) => ChannelSpec::from_text(t, &file, defaults.as_ref()),
        Err(_) => {
            std::fs::write(&file, text).expect("write scratch file");
            let r = ChannelSpec::load(&file, defaults.as_ref());
            let _ = std::fs::remove_file(&file);
            r
        }
    };
    let spec = match result {
        Ok(spec) => spec,
        Err(e) => {
            check_problems(&e, &file);
            return;
        }
    };
    assert!(
        relay_channel::config::valid_name(&spec.name),
        "{:?}",
        spec.name
    );
    assert!((1..=1024).contains(&spec.receive.batch));
    // The schema is read only where it is the one beside the file: a path the
    // text names could be anything on this machine (a FIFO, /dev/zero).
    if spec.schema_path == dir.join("example.avsc") {
        if let Err(e) = relay_channel::schema::load(&spec) {
            panic!("the example schema does not load: {e}");
        }
    }
});
