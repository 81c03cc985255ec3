//! `orchestrator hold add|ls|rm` and `orchestrator export`: holds through
//! the API (`/api/v1/holds`), and a hold's data copied out for an analyst
//! (see [`crate::export`]).

use std::path::Path;
use std::time::SystemTime;

use speeddata_api::{HoldReport, NewHold};

use crate::channel_cmd::{Client, Failure, EXIT_CONFIG};

/// A time on the command line: RFC 3339, `now`, or `-15m` (that long
/// before `now`); as RFC 3339 in UTC.
pub fn parse_time(s: &str, now: SystemTime) -> Result<String, String> {
    let s = s.trim();
    let t = if s == "now" {
        now
    } else if let Some(ago) = s.strip_prefix('-') {
        let d = humantime::parse_duration(ago)
            .map_err(|e| format!("{s:?}: {e} (write e.g. -15m, -2h, -90s)"))?;
        now.checked_sub(d)
            .ok_or_else(|| format!("{s:?} is before the epoch"))?
    } else {
        // Checked by the server, which also takes offsets.
        return Ok(s.to_string());
    };
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `hold add`.
pub fn add(
    client: &Client,
    name: &str,
    from: &str,
    to: &str,
    channels: &[String],
    note: Option<&str>,
) -> Result<String, Failure> {
    let now = SystemTime::now();
    let from =
        parse_time(from, now).map_err(|e| Failure::new(EXIT_CONFIG, format!("--from {e}")))?;
    let to = parse_time(to, now).map_err(|e| Failure::new(EXIT_CONFIG, format!("--to {e}")))?;
    let h = client.create_hold(&NewHold {
        name: name.to_string(),
        from,
        to,
        channels: (!channels.is_empty()).then(|| channels.to_vec()),
        note: note.map(String::from),
    })?;
    let scope = h
        .channels
        .iter()
        .map(|c| {
            format!(
                "{} ({} files, {})",
                c.channel,
                c.files.len(),
                bytes(c.bytes)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "hold {name}: {} to {}; keeps now: {}",
        h.hold.from,
        h.hold.to,
        if scope.is_empty() {
            "nothing yet".into()
        } else {
            scope
        }
    ))
}

/// `hold ls`: a table.
pub fn list(client: &Client) -> Result<String, Failure> {
    let holds = client.holds()?;
    if holds.is_empty() {
        return Ok("no holds".into());
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "FROM".into(),
        "TO".into(),
        "CHANNELS".into(),
        "FILES".into(),
        "BYTES".into(),
        "BY".into(),
        "NOTE".into(),
    ]];
    for h in &holds {
        let files: usize = h.channels.iter().map(|c| c.files.len()).sum();
        let names: Vec<&str> = h.channels.iter().map(|c| c.channel.as_str()).collect();
        rows.push(vec![
            h.hold.name.clone(),
            h.hold.from.clone(),
            h.hold.to.clone(),
            if names.is_empty() {
                "-".into()
            } else {
                names.join(",")
            },
            files.to_string(),
            bytes(h.bytes),
            h.hold.created_by.clone().unwrap_or_else(|| "-".into()),
            h.hold.note.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    Ok(rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `hold rm`.
pub fn remove(client: &Client, name: &str) -> Result<String, Failure> {
    client.delete_hold(name)?;
    Ok(format!(
        "removed hold {name} (its files go at the next retention pass that finds them past retention)"
    ))
}

/// `export NAME --out DIR [--cut]`.
pub fn export(client: &Client, name: &str, out: &Path, cut: bool) -> Result<String, Failure> {
    let hold: HoldReport = client.hold(name)?;
    let m =
        crate::export::export(&hold, out, cut).map_err(|e| Failure::failed(format!("{e:#}")))?;
    let mut lines = vec![format!(
        "exported hold {name} into {}: {} records, {} in {} channel(s)",
        out.display(),
        m.records,
        bytes(m.bytes),
        m.channels.len()
    )];
    for c in &m.channels {
        lines.push(format!(
            "  {}: {} file(s), {} records, {}{}",
            c.channel,
            c.files.len(),
            c.records,
            bytes(c.bytes),
            if c.cut {
                format!(
                    ", cut to the range by {}",
                    c.time_field.as_deref().unwrap_or("?")
                )
            } else if cut {
                " (whole files: no archive.time_field)".into()
            } else {
                String::new()
            }
        ));
    }
    lines.push(format!("manifest: {}", out.join("MANIFEST.json").display()));
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_now_relative_and_absolute() {
        let now = humantime::parse_rfc3339("2026-11-23T14:02:00Z").unwrap();
        assert_eq!(parse_time("now", now).unwrap(), "2026-11-23T14:02:00.000Z");
        assert_eq!(parse_time("-15m", now).unwrap(), "2026-11-23T13:47:00.000Z");
        assert_eq!(
            parse_time("-1h 30m", now).unwrap(),
            "2026-11-23T12:32:00.000Z"
        );
        assert_eq!(
            parse_time("2026-11-23T13:55:00Z", now).unwrap(),
            "2026-11-23T13:55:00Z"
        );
        assert!(parse_time("-soon", now).is_err());
    }
}
