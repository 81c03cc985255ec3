//! The orchestrator.toml reference (`docs/orchestrator-file.md`) and the
//! parser agree: every key the raw structs accept is documented, and every
//! documented key is one the parser accepts (see
//! [`relay_channel::config::keys`]). Every key of both lists is also put,
//! alone, in an orchestrator.toml, which the parser must not call unknown.

use std::collections::BTreeSet;
use std::path::Path;

use relay_channel::config::keys::{accepted, documented, table_with_only};

use super::{Config, RawConfig};

const REFERENCE: &str = include_str!("../../../docs/orchestrator-file.md");

/// The problems the parser finds in an orchestrator.toml holding only
/// `key` (a string, or an empty table for `defaults`).
fn problems_with_only(key: &str) -> Vec<String> {
    let table = table_with_only(key);
    match Config::from_table(table, Path::new("/nonexistent/orchestrator.toml"), None) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect(),
    }
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
    let documented = documented(REFERENCE);
    let mut seen = BTreeSet::new();
    let twice: Vec<&String> = documented.iter().filter(|k| !seen.insert(*k)).collect();
    assert!(
        twice.is_empty(),
        "docs/orchestrator-file.md documents these keys twice: {twice:?}"
    );
    let documented: BTreeSet<String> = documented.into_iter().collect();
    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/orchestrator-file.md and the parser disagree:\n  accepted, not documented: {undocumented:?}\n  documented, not accepted: {unknown:?}"
    );
    for key in accepted.union(&documented) {
        let problems = problems_with_only(key);
        assert!(
            !problems.iter().any(|p| p.contains("unknown field")),
            "{key}: the parser calls it unknown: {problems:?}"
        );
    }
}
