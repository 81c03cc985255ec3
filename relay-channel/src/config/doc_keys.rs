//! The channel-file reference (`docs/channel-file.md`) and the parser agree:
//! every key the raw structs accept is documented, and every documented key
//! is one the parser accepts (see [`super::keys`]). Every key of both lists
//! is also put, alone, in a channel file, which the parser must not call
//! unknown.

use std::collections::BTreeSet;
use std::path::Path;

use super::check::RawChannel;
use super::keys::{accepted, check_reference, problem_lines, table_with_only};
use super::ChannelSpec;

const REFERENCE: &str = include_str!("../../../docs/channel-file.md");

fn accepted_keys() -> BTreeSet<String> {
    accepted::<RawChannel>()
}

/// The problems the parser finds in a channel file holding only `key`.
fn problems_with_only(key: &str) -> Vec<String> {
    problem_lines(ChannelSpec::from_table(
        table_with_only(key),
        Path::new("c/ch.toml"),
        None,
    ))
}

#[test]
fn the_walk_finds_the_raw_structs_keys() {
    let keys = accepted_keys();
    for k in [
        "name",
        "schema",
        "receive.bind",
        "archive.codec",
        "decimated.keep_last",
    ] {
        assert!(keys.contains(k), "{k} not in {keys:?}");
    }
    for section in ["receive", "archive", "full", "decimated"] {
        assert!(!keys.contains(section), "{section} is a section, not a key");
    }
    // The parser itself says a key is unknown the way the check below
    // looks for.
    let problems = problems_with_only("receive.no_such_key");
    assert!(
        problems.iter().any(|p| p.contains("unknown field")),
        "{problems:?}"
    );
}

#[test]
fn every_channel_key_is_documented_and_every_documented_key_is_accepted() {
    check_reference(
        "docs/channel-file.md",
        REFERENCE,
        &accepted_keys(),
        problems_with_only,
    );
}
