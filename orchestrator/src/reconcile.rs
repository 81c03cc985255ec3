//! Reconcile as a pure diff: what runs and what `channels.d` holds now go
//! in, the [`Action`]s that make the first match the second come out. The
//! supervisor reads the folder beforehand and applies the actions after.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What a channel task runs: a task whose version differs from its
/// file's is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub file: PathBuf,
    /// Of the file with the defaults merged, the schema and the defaults.
    pub fingerprint: u64,
}

/// A file that does not validate, as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenFile {
    /// The channel it would be.
    pub name: String,
    pub file: PathBuf,
    pub error: String,
    /// Of the file's text and the error: announced again when it changes.
    pub print: u64,
}

/// What `channels.d` holds.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Valid channels (one per name), in the order of their files.
    pub valid: Vec<(String, Version)>,
    pub broken: Vec<BrokenFile>,
}

impl Found {
    /// The announcement to remember per broken file, once this is applied:
    /// a file that validates again (or is gone) is news when it breaks.
    pub fn prints(&self) -> BTreeMap<PathBuf, u64> {
        self.broken
            .iter()
            .map(|b| (b.file.clone(), b.print))
            .collect()
    }
}

/// What the supervisor has.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// Channel tasks, by name.
    pub tasks: BTreeMap<String, Version>,
    /// Channels shown as failed for a broken file, without a task.
    pub broken: BTreeSet<String>,
    /// Broken files already announced, with their print.
    pub announced: BTreeMap<PathBuf, u64>,
}

/// One step towards what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new channel: start its task.
    Start(String),
    /// Its file, schema or defaults changed: restart it.
    Reconfigure(String),
    /// As it was: clear any configuration error it shows.
    Unchanged(String),
    /// Its file no longer validates: show the error, keep it running.
    KeepRunning { name: String, error: String },
    /// A broken file with no channel running: show it as failed.
    ShowBroken {
        name: String,
        file: PathBuf,
        error: String,
    },
    /// A file's error not announced as it reads now: count, log, emit.
    Announce {
        name: String,
        file: PathBuf,
        error: String,
    },
    /// Its file is gone: stop the task.
    Stop(String),
    /// A broken channel whose file is gone (or now names another channel).
    Forget(String),
}

/// The actions that turn `running` into what was `found`, in order.
pub fn plan(running: &Running, found: &Found) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    // Each task's file once the valid channels are applied.
    let mut files: BTreeMap<&str, &PathBuf> = running
        .tasks
        .iter()
        .map(|(n, v)| (n.as_str(), &v.file))
        .collect();
    for (name, version) in &found.valid {
        wanted.insert(name);
        files.insert(name, &version.file);
        actions.push(match running.tasks.get(name.as_str()) {
            None => Action::Start(name.clone()),
            Some(v) if v != version => Action::Reconfigure(name.clone()),
            Some(_) => Action::Unchanged(name.clone()),
        });
    }
    for b in &found.broken {
        let (name, error) = (b.name.clone(), b.error.clone());
        match files.get(b.name.as_str()) {
            // The running instance of this file is left alone.
            Some(&f) if *f == b.file => {
                wanted.insert(&b.name);
                actions.push(Action::KeepRunning { name, error });
            }
            // Another file holds the name (a duplicate): report only.
            Some(_) => {}
            None => {
                wanted.insert(&b.name);
                let file = b.file.clone();
                actions.push(Action::ShowBroken { name, file, error });
            }
        }
        if running.announced.get(&b.file) != Some(&b.print) {
            actions.push(Action::Announce {
                name: b.name.clone(),
                file: b.file.clone(),
                error: b.error.clone(),
            });
        }
    }
    let unwanted = |n: &&String| !wanted.contains(n.as_str());
    actions.extend(
        running
            .tasks
            .keys()
            .filter(unwanted)
            .cloned()
            .map(Action::Stop),
    );
    actions.extend(
        running
            .broken
            .iter()
            .filter(unwanted)
            .cloned()
            .map(Action::Forget),
    );
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(file: &str, fingerprint: u64) -> Version {
        Version {
            file: file.into(),
            fingerprint,
        }
    }

    fn running(tasks: &[(&str, Version)]) -> Running {
        Running {
            tasks: tasks
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            ..Running::default()
        }
    }

    fn found(valid: &[(&str, Version)], broken: &[&BrokenFile]) -> Found {
        Found {
            valid: valid
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            broken: broken.iter().map(|b| (*b).clone()).collect(),
        }
    }

    fn broken(name: &str, file: &str, print: u64) -> BrokenFile {
        BrokenFile {
            name: name.into(),
            file: file.into(),
            error: format!("{file}: bad"),
            print,
        }
    }

    fn announce(b: &BrokenFile) -> Action {
        Action::Announce {
            name: b.name.clone(),
            file: b.file.clone(),
            error: b.error.clone(),
        }
    }

    #[test]
    fn new_files_start_removed_ones_stop_changed_ones_restart() {
        let now = running(&[
            ("same", version("same.toml", 1)),
            ("changed", version("changed.toml", 1)),
            ("moved", version("moved.toml", 1)),
            ("removed", version("removed.toml", 1)),
        ]);
        let seen = found(
            &[
                ("same", version("same.toml", 1)),
                ("changed", version("changed.toml", 2)),
                ("moved", version("elsewhere.toml", 1)),
                ("new", version("new.toml", 1)),
            ],
            &[],
        );
        assert_eq!(
            plan(&now, &seen),
            [
                Action::Unchanged("same".into()),
                Action::Reconfigure("changed".into()),
                Action::Reconfigure("moved".into()),
                Action::Start("new".into()),
                Action::Stop("removed".into()),
            ]
        );
    }

    #[test]
    fn a_broken_file_of_a_running_channel_leaves_it_running() {
        let now = running(&[("a", version("a.toml", 1))]);
        let b = broken("a", "a.toml", 9);
        assert_eq!(
            plan(&now, &found(&[], &[&b])),
            [
                Action::KeepRunning {
                    name: "a".into(),
                    error: b.error.clone()
                },
                announce(&b),
            ]
        );
    }

    #[test]
    fn a_broken_new_file_is_shown_failed_and_announced_once_per_change() {
        let b = broken("n", "n.toml", 9);
        let mut now = Running::default();
        let show = Action::ShowBroken {
            name: "n".into(),
            file: "n.toml".into(),
            error: b.error.clone(),
        };
        let seen = found(&[], &[&b]);
        assert_eq!(plan(&now, &seen), [show.clone(), announce(&b)]);
        now.broken.insert("n".into());
        now.announced = seen.prints();
        assert_eq!(plan(&now, &seen), vec![show.clone()], "said already");
        let changed = broken("n", "n.toml", 10);
        assert_eq!(
            plan(&now, &found(&[], &[&changed])),
            [show, announce(&changed)]
        );
    }

    #[test]
    fn a_broken_file_that_validates_again_starts_its_channel() {
        let mut now = Running::default();
        now.broken.insert("n".into());
        now.announced.insert("n.toml".into(), 9);
        let seen = found(&[("n", version("n.toml", 1))], &[]);
        assert_eq!(plan(&now, &seen), [Action::Start("n".into())]);
        assert!(seen.prints().is_empty(), "its next error is news");
    }

    #[test]
    fn a_removed_broken_file_is_forgotten() {
        let mut now = Running::default();
        now.broken.insert("n".into());
        assert_eq!(plan(&now, &Found::default()), [Action::Forget("n".into())]);
    }

    #[test]
    fn a_broken_duplicate_of_a_running_name_is_only_reported() {
        let now = running(&[("a", version("a.toml", 1))]);
        let dup = broken("a", "z.toml", 9);
        assert_eq!(
            plan(&now, &found(&[("a", version("a.toml", 1))], &[&dup])),
            [Action::Unchanged("a".into()), announce(&dup)]
        );
        // Nor does a new channel's duplicate show it failed.
        let now = Running::default();
        assert_eq!(
            plan(&now, &found(&[("a", version("a.toml", 1))], &[&dup])),
            [Action::Start("a".into()), announce(&dup)]
        );
    }

    #[test]
    fn a_channel_whose_file_breaks_under_another_name_is_stopped() {
        // The name moved out of a.toml, which is broken now: the task of
        // a.toml is not that file's channel any more.
        let now = running(&[("a", version("a.toml", 1))]);
        let b = broken("b", "a.toml", 9);
        assert_eq!(
            plan(&now, &found(&[], &[&b])),
            [
                Action::ShowBroken {
                    name: "b".into(),
                    file: "a.toml".into(),
                    error: b.error.clone()
                },
                announce(&b),
                Action::Stop("a".into()),
            ]
        );
    }
}
