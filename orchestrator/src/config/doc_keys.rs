//! The orchestrator.toml reference (`docs/orchestrator-file.md`) and the
//! parser agree: every key the raw structs accept is documented, and every
//! documented key is one the parser accepts (see
//! [`relay_channel::config::keys`]). Every key of both lists is also put,
//! alone, in an orchestrator.toml, which the parser must not call unknown.

use std::path::Path;

use relay_channel::config::keys::{accepted, check_reference, problem_lines, table_with_only};

use super::{Config, RawConfig};

const REFERENCE: &str = include_str!("../../../docs/orchestrator-file.md");

/// The problems the parser finds in an orchestrator.toml holding only
/// `key` (a string, or an empty table for `defaults`).
fn problems_with_only(key: &str) -> Vec<String> {
    problem_lines(Config::from_table(
        table_with_only(key),
        Path::new("/nonexistent/orchestrator.toml"),
        None,
    ))
}

#[test]
fn every_orchestrator_key_is_documented_and_every_documented_key_is_accepted() {
    let accepted = accepted::<RawConfig>();
    for k in [
        "channels_dir",
        "http.listen",
        "supervisor.cooldown",
        "defaults",
    ] {
        assert!(accepted.contains(k), "{k} not in {accepted:?}");
    }
    let problems = problems_with_only("http.no_such_key");
    assert!(
        problems.iter().any(|p| p.contains("unknown field")),
        "{problems:?}"
    );
    check_reference(
        "docs/orchestrator-file.md",
        REFERENCE,
        &accepted,
        problems_with_only,
    );
}
