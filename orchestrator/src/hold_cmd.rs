//! `orchestrator hold add|ls|rm` and `orchestrator export`: holds through
//! the API (`/api/v1/holds`), and a hold's data copied out for an analyst
//! (see [`crate::export`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::channel_cmd::{answer_failure, Client, Failure, EXIT_CONFIG};

const TIMEOUT: Duration = Duration::from_secs(30);

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
    let mut body = json!({ "name": name, "from": from, "to": to });
    if !channels.is_empty() {
        body["channels"] = json!(channels);
    }
    if let Some(n) = note {
        body["note"] = json!(n);
    }
    let (code, text) = client.send("POST", "/api/v1/holds", Some(body.to_string()), TIMEOUT)?;
    if code != 201 {
        return Err(answer_failure(code, &text));
    }
    let h: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let scope = match h["channels"].as_array() {
        Some(cs) => cs
            .iter()
            .map(|c| {
                format!(
                    "{} ({} files, {})",
                    c["channel"].as_str().unwrap_or("?"),
                    c["files"].as_array().map_or(0, Vec::len),
                    bytes(c["bytes"].as_u64().unwrap_or(0))
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => String::new(),
    };
    Ok(format!(
        "hold {name}: {} to {}; keeps now: {}",
        h["hold"]["from"].as_str().unwrap_or(&from),
        h["hold"]["to"].as_str().unwrap_or(&to),
        if scope.is_empty() {
            "nothing yet".into()
        } else {
            scope
        }
    ))
}

/// `hold ls`: a table.
pub fn list(client: &Client) -> Result<String, Failure> {
    let (code, text) = client.send("GET", "/api/v1/holds", None, TIMEOUT)?;
    if code != 200 {
        return Err(answer_failure(code, &text));
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::failed(format!("the answer is not JSON: {e}")))?;
    let holds = v["holds"].as_array().cloned().unwrap_or_default();
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
        let files: usize = h["channels"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["files"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        rows.push(vec![
            h["hold"]["name"].as_str().unwrap_or("?").into(),
            h["hold"]["from"].as_str().unwrap_or("?").into(),
            h["hold"]["to"].as_str().unwrap_or("?").into(),
            {
                let names: Vec<&str> = h["channels"]
                    .as_array()
                    .map(|cs| cs.iter().filter_map(|c| c["channel"].as_str()).collect())
                    .unwrap_or_default();
                if names.is_empty() {
                    "-".into()
                } else {
                    names.join(",")
                }
            },
            files.to_string(),
            bytes(h["bytes"].as_u64().unwrap_or(0)),
            h["hold"]["created_by"].as_str().unwrap_or("-").into(),
            h["hold"]["note"].as_str().unwrap_or("").into(),
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
    let (code, text) = client.send("DELETE", &format!("/api/v1/holds/{name}"), None, TIMEOUT)?;
    if code != 204 {
        return Err(answer_failure(code, &text));
    }
    Ok(format!(
        "removed hold {name} (its files go at the next retention pass that finds them past retention)"
    ))
}

/// `export NAME --out DIR [--cut]`.
pub fn export(client: &Client, name: &str, out: &Path, cut: bool) -> Result<String, Failure> {
    let (code, text) = client.send("GET", &format!("/api/v1/holds/{name}"), None, TIMEOUT)?;
    if code != 200 {
        return Err(answer_failure(code, &text));
    }
    let hold: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::failed(format!("the answer is not JSON: {e}")))?;
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
