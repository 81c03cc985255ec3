//! Holds: an incident's data kept past retention. A hold names a time
//! range (and, optionally, channels); every relay's retention keeps the
//! archive files of a held channel whose time span overlaps it. Holds are
//! small JSON files in `state_dir/holds/` ([`Config::holds_dir`]), written
//! atomically by [`relay_channel::holds::write`]; relays read that folder
//! at each retention pass, so a hold made here is honoured within seconds
//! and survives restarts of the orchestrator and the relays.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use relay_channel::holds::{self as rh, Hold};

use crate::config::Config;

/// The body of `POST /api/v1/holds`.
pub use speeddata_api::{Coverage, HeldFile, HoldReport as Report, NewHold};

/// Why a hold is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A hold of this name exists (409).
    Exists(String),
    /// A field is wrong (422): the field, and why.
    Invalid(&'static str, String),
}

/// A channel whose archive a hold may cover.
#[derive(Debug, Clone)]
pub struct ArchiveOf {
    pub channel: String,
    /// The channel's archive folder.
    pub dir: PathBuf,
    /// `archive.time_field`, for `export --cut`.
    pub time_field: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Checks and writes a new hold; `known` are the channels of the fleet,
/// `by` who asks (`token` or `local`).
pub fn create(cfg: &Config, known: &[String], req: NewHold, by: &str) -> Result<Hold, Refused> {
    if !relay_channel::config::valid_name(&req.name) {
        return Err(Refused::Invalid(
            "name",
            format!(
                "{:?} is not a hold name: 1 to 64 of a-z, 0-9, '_' and '-'",
                req.name
            ),
        ));
    }
    let mut hold = Hold {
        name: req.name,
        from: req.from,
        to: req.to,
        channels: req.channels,
        note: req.note,
        created_at: Some(rfc3339(SystemTime::now())),
        created_by: Some(by.to_string()),
    };
    let probe = |from: &str, to: &str| Hold {
        from: from.into(),
        to: to.into(),
        ..hold.clone()
    };
    // Each time on its own, so that the problem names its field.
    let Some((from, _)) = probe(&hold.from, &hold.from).range() else {
        return Err(Refused::Invalid(
            "from",
            format!(
                "{:?} is not an RFC 3339 time, e.g. 2026-11-23T14:02:00Z",
                hold.from
            ),
        ));
    };
    let Some((to, _)) = probe(&hold.to, &hold.to).range() else {
        return Err(Refused::Invalid(
            "to",
            format!(
                "{:?} is not an RFC 3339 time, e.g. 2026-11-23T14:10:00Z",
                hold.to
            ),
        ));
    };
    if from > to {
        return Err(Refused::Invalid(
            "to",
            format!("{} is before from ({})", hold.to, hold.from),
        ));
    }
    // Stored normalized, in UTC.
    hold.from = rfc3339(from);
    hold.to = rfc3339(to);
    if let Some(list) = &mut hold.channels {
        if list.is_empty() {
            return Err(Refused::Invalid(
                "channels",
                "an empty list holds nothing: leave it out to hold every channel".into(),
            ));
        }
        list.sort();
        list.dedup();
        if let Some(unknown) = list.iter().find(|c| !known.contains(c)) {
            return Err(Refused::Invalid(
                "channels",
                format!("no channel {unknown:?} (channels: {})", known.join(", ")),
            ));
        }
    }
    if let Some(note) = &hold.note {
        if note.len() > 4096 {
            return Err(Refused::Invalid("note", "longer than 4096 bytes".into()));
        }
    }
    let dir = cfg.holds_dir();
    if path_of(&dir, &hold.name).exists() {
        return Err(Refused::Exists(format!(
            "a hold named {:?} exists; remove it first or choose another name",
            hold.name
        )));
    }
    std::fs::create_dir_all(&dir)
        .and_then(|()| rh::write(&dir, &hold))
        .map_err(|e| {
            Refused::Invalid(
                "name",
                format!("cannot write the hold into {}: {e}", dir.display()),
            )
        })?;
    Ok(hold)
}

fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Every hold, by name.
pub fn list(cfg: &Config) -> Vec<Hold> {
    let mut v = rh::read_dir(&cfg.holds_dir());
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn get(cfg: &Config, name: &str) -> Option<Hold> {
    if !relay_channel::config::valid_name(name) {
        return None;
    }
    list(cfg).into_iter().find(|h| h.name == name)
}

/// Removes a hold; `false` if there was none of that name.
pub fn remove(cfg: &Config, name: &str) -> std::io::Result<bool> {
    if get(cfg, name).is_none() {
        return Ok(false);
    }
    rh::remove(&cfg.holds_dir(), name)?;
    Ok(true)
}

/// What `hold` covers now of each channel it holds among `archives`.
pub fn report(hold: &Hold, archives: &[ArchiveOf]) -> Report {
    let mut channels = Vec::new();
    for a in archives.iter().filter(|a| hold.covers(&a.channel)) {
        let files: Vec<HeldFile> = rh::closed_files(&a.dir)
            .into_iter()
            .filter(|(_, _, span)| rh::held(*span, std::slice::from_ref(hold), &a.channel))
            .map(|(path, bytes, span)| HeldFile {
                path,
                bytes,
                from: rfc3339(span.from),
                to: rfc3339(span.to),
            })
            .collect();
        channels.push(Coverage {
            channel: a.channel.clone(),
            time_field: a.time_field.clone(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
        });
    }
    Report {
        bytes: channels.iter().map(|c| c.bytes).sum(),
        hold: hold.clone(),
        channels,
    }
}
