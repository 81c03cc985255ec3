//! `orchestrator status`: asks a running orchestrator's API for its
//! channels and prints them as a table.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use relay_channel::status::COUNTERS;
use serde_json::Value;

/// How long `status` waits for the orchestrator.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Asks a running orchestrator's API at `base` (e.g.
/// `"http://127.0.0.1:9464"`; a bare `host:port` is taken as http) for
/// `/api/v1/channels` and returns a table, or the API's JSON (pretty) when
/// `json`. The text has no trailing newline.
pub fn status(base: &str, json: bool) -> anyhow::Result<String> {
    let base = normalize_base(base);
    let url = format!("{base}/api/v1/channels");
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(&url).call().map_err(|e| {
        anyhow!(
            "cannot reach the orchestrator at {base}: {e} (is it running? is http.listen right?)"
        )
    })?;
    let code = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| anyhow!("reading the answer of the orchestrator at {url}: {e}"))?;
    if !code.is_success() {
        bail!("the orchestrator at {url} answered {code}: {}", body.trim());
    }
    let value: Value = serde_json::from_str(&body).with_context(|| {
        format!("the orchestrator at {url} answered something that is not JSON")
    })?;
    if channel_list(&value).is_none() {
        bail!("the orchestrator at {url} answered JSON without a channel list");
    }
    if json {
        Ok(serde_json::to_string_pretty(&value)?)
    } else {
        Ok(render_table(&value))
    }
}

pub(crate) fn normalize_base(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// The channels of an answer: `{"channels": [...]}` or a bare list.
fn channel_list(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Object(o) => o.get("channels").and_then(Value::as_array),
        _ => None,
    }
}

const HEADERS: [&str; 10] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "RECEIVED/s",
    "ARCHIVED",
    "REJECTED",
    "DROPPED",
    "LAST EXIT",
];
/// Columns aligned to the right (numbers).
const RIGHT: [bool; 10] = [
    false, false, true, true, true, true, true, true, true, false,
];

/// The sum of the counters that [`COUNTERS`] puts in the column `name`;
/// `None` when the channel has none of them (no stats yet).
fn column_total(counters: Option<&Value>, name: &str) -> Option<u64> {
    COUNTERS
        .iter()
        .filter(|c| c.column == Some(name))
        .filter_map(|c| counters?.get(c.key)?.as_u64())
        .reduce(|a, b| a + b)
}

/// The table of an `/api/v1/channels` answer, then one line per failed
/// channel (its reason) and per channel whose file does not validate.
/// No trailing newline.
pub fn render_table(v: &Value) -> String {
    let empty = Vec::new();
    let channels = channel_list(v).unwrap_or(&empty);
    let mut rows: Vec<[String; 10]> = vec![HEADERS.map(String::from)];
    let mut notes = Vec::new();
    for c in channels {
        let name = cell(c.get("name").and_then(Value::as_str).unwrap_or("?"));
        let state = c.get("state").and_then(Value::as_str).unwrap_or("?");
        let column = |name: &str| column_total(c.get("counters"), name);
        let received_per_s = c
            .get("rates")
            .and_then(|m| m.get("received_per_s"))
            .and_then(Value::as_f64);
        rows.push([
            name.clone(),
            cell(state),
            opt(c.get("pid").and_then(Value::as_u64)),
            c.get("uptime_s")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), human_duration),
            opt(c.get("restarts").and_then(Value::as_u64)),
            received_per_s.map_or_else(|| "-".into(), format_rate),
            opt(column("ARCHIVED")),
            opt(column("REJECTED")),
            opt(column("DROPPED")),
            c.get("last_exit")
                .and_then(|e| e.get("description"))
                .and_then(Value::as_str)
                .map_or_else(|| "-".into(), cell),
        ]);
        if state == "failed" {
            let reason = c
                .get("reason")
                .and_then(Value::as_str)
                .or_else(|| {
                    c.get("last_exit")
                        .and_then(|e| e.get("description"))
                        .and_then(Value::as_str)
                })
                .unwrap_or("no reason given");
            notes.push(format!("{name}: failed: {}", cell(reason)));
        }
        if let Some(err) = c.get("config_error").and_then(Value::as_str) {
            notes.push(format!("{name}: config error: {}", cell(err)));
        }
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, s) in widths.iter_mut().zip(row) {
            *w = (*w).max(s.chars().count());
        }
    }
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, s) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - s.chars().count());
                if RIGHT[i] {
                    line.push_str(&pad);
                    line.push_str(s);
                } else {
                    line.push_str(s);
                    if i + 1 < row.len() {
                        line.push_str(&pad);
                    }
                }
            }
            line.trim_end().to_string()
        })
        .collect();
    if channels.is_empty() {
        lines.push("(no channels)".into());
    }
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes);
    }
    lines.join("\n")
}

/// Text made fit for one cell or line: each run of line breaks or other
/// control characters becomes `; `.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for ch in s.trim().chars() {
        if ch.is_control() {
            if !gap {
                out.push_str("; ");
                gap = true;
            }
        } else {
            out.push(ch);
            gap = false;
        }
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

fn format_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({"channels": [
            {
                "name": "east", "file": "channels.d/east.toml", "state": "ready",
                "pid": 4242, "uptime_s": 192.4, "restarts": 0, "last_exit": null,
                "reason": null, "last_stderr": [], "config_error": null,
                "counters": {"received": 120000, "archived": 119990, "rejected": 3,
                             "archive_dropped": 5, "kernel_drops": 2},
                "rates": {"received_per_s": 1000.0}
            },
            {
                "name": "north", "file": "channels.d/north.toml", "state": "failed",
                "pid": null, "uptime_s": null, "restarts": 6,
                "last_exit": {"code": 1, "signal": null, "at": "2024-01-01T00:00:00Z",
                              "description": "exited with 1"},
                "reason": "6 failures within 60s; next try in 5m",
                "last_stderr": ["error: address in use"], "config_error": null,
                "counters": null, "rates": null
            },
            {
                "name": "west-long-name", "file": "channels.d/west.toml", "state": "ready",
                "pid": 17, "uptime_s": 7530.0, "restarts": 12, "last_exit":
                    {"code": null, "signal": 9, "at": "2024-01-01T00:00:00Z",
                     "description": "killed by SIGKILL"},
                "reason": null, "last_stderr": [],
                "config_error": "west.toml: receive.port: expected an integer\nwest.toml: archive.dir: missing",
                "counters": {"received": 5, "archived": 5, "rejected": 0},
                "rates": {"received_per_s": 12.5}
            }
        ]})
    }

    #[test]
    fn table_is_aligned_and_lists_problems() {
        let text = render_table(&sample());
        let expected = "\
NAME            STATE    PID  UPTIME  RESTARTS  RECEIVED/s  ARCHIVED  REJECTED  DROPPED  LAST EXIT
east            ready   4242   3m12s         0        1000    119990         3        7  -
north           failed     -       -         6           -         -         -        -  exited with 1
west-long-name  ready     17   2h05m        12        12.5         5         0        -  killed by SIGKILL

north: failed: 6 failures within 60s; next try in 5m
west-long-name: config error: west.toml: receive.port: expected an integer; west.toml: archive.dir: missing";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn every_counter_column_is_a_column_of_the_table() {
        for c in COUNTERS {
            if let Some(col) = c.column {
                assert!(
                    HEADERS.contains(&col),
                    "{}: column {col} is not shown",
                    c.key
                );
            }
        }
        assert_eq!(
            column_total(sample()["channels"][0].get("counters"), "DROPPED"),
            Some(7)
        );
        assert_eq!(column_total(None, "ARCHIVED"), None);
    }

    #[test]
    fn a_bare_list_and_an_empty_fleet() {
        let list = sample()["channels"].clone();
        assert_eq!(render_table(&list), render_table(&sample()));
        let text = render_table(&json!({"channels": []}));
        assert!(text.starts_with("NAME  STATE  PID"), "{text}");
        assert!(text.ends_with("(no channels)"), "{text}");
    }

    #[test]
    fn durations_read_like_a_human_wrote_them() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(3600.0), "1h00m");
        assert_eq!(human_duration(90061.0), "1d01h");
        assert_eq!(human_duration(f64::NAN), "0s");
    }

    #[test]
    fn an_unreachable_orchestrator_is_a_clear_error() {
        // A port nobody listens on: bind one, learn it, close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = status(&format!("127.0.0.1:{port}"), false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the orchestrator at http://127.0.0.1:{port}: "
            )),
            "{msg}"
        );
        assert!(
            msg.ends_with("(is it running? is http.listen right?)"),
            "{msg}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn asks_a_running_api() {
        use crate::state::{Fleet, State};
        use std::sync::Arc;
        let fleet = Arc::new(Fleet::new());
        fleet.update("a", "a.toml".as_ref(), |s| {
            s.state = State::Failed;
            s.reason = Some("crash loop".into());
        });
        let listener = crate::http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let (requests, _) = tokio::sync::mpsc::channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let api = crate::http::Api {
            fleet,
            requests,
            config: None,
            token: None,
        };
        let server = tokio::spawn(crate::http::serve(listener, api, async move {
            let _ = stopped.await;
        }));
        let (table, json) = tokio::task::spawn_blocking(move || {
            (status(&base, false).unwrap(), status(&base, true).unwrap())
        })
        .await
        .unwrap();
        assert!(table.starts_with("NAME  STATE   PID"), "{table}");
        assert!(table.contains("\na     failed    -"), "{table}");
        assert!(table.ends_with("\na: failed: crash loop"), "{table}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["channels"][0]["state"], "failed");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
