//! `orchestrator status`: asks a running orchestrator's API for its
//! channels and prints them as a table.

use relay_channel::status::Counters;
use speeddata_api::{ChannelList, ChannelStatus, Client, State};

/// Asks a running orchestrator's API at `base` (e.g.
/// `"http://127.0.0.1:9464"`; a bare `host:port` is taken as http) for
/// `/api/v1/channels` and returns a table, or the API's JSON (pretty) when
/// `json`. The text has no trailing newline.
pub fn status(base: &str, json: bool) -> Result<String, speeddata_api::Error> {
    let channels = Client::new(base, None).channels()?;
    if json {
        Ok(serde_json::to_string_pretty(&ChannelList { channels }).expect("statuses serialize"))
    } else {
        Ok(render_table(&channels))
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
/// `None` when the channel has no stats yet.
fn column_total(counters: Option<&Counters>, name: &str) -> Option<u64> {
    let counters = counters?;
    Some(
        counters
            .values()
            .filter(|(c, _)| c.column == Some(name))
            .map(|(_, v)| v)
            .sum(),
    )
}

/// The table of the channels, then one line per failed channel (its
/// reason) and per channel whose file does not validate. No trailing
/// newline.
pub fn render_table(channels: &[ChannelStatus]) -> String {
    let mut rows: Vec<[String; 10]> = vec![HEADERS.map(String::from)];
    let mut notes = Vec::new();
    for c in channels {
        let name = cell(&c.name);
        let column = |name: &str| column_total(c.counters.as_ref().map(|s| &s.counters), name);
        let last_exit = c.last_exit.as_ref().map(|e| e.description.as_str());
        rows.push([
            name.clone(),
            c.state.as_str().into(),
            opt(c.pid.map(u64::from)),
            c.uptime_s.map_or_else(|| "-".into(), human_duration),
            c.restarts.to_string(),
            c.rates
                .as_ref()
                .map_or_else(|| "-".into(), |r| format_rate(r.received)),
            opt(column("ARCHIVED")),
            opt(column("REJECTED")),
            opt(column("DROPPED")),
            last_exit.map_or_else(|| "-".into(), cell),
        ]);
        if c.state == State::Failed {
            let reason = c
                .reason
                .as_deref()
                .or(last_exit)
                .unwrap_or("no reason given");
            notes.push(format!("{name}: failed: {}", cell(reason)));
        }
        if let Some(err) = &c.config_error {
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
    use relay_channel::status::{Rates, Stats, COUNTERS};
    use speeddata_api::Exit;

    fn stats(received: u64, archived: u64, rejected: u64, dropped: (u64, u64)) -> Stats {
        let mut s = Stats::default();
        s.counters.received = received;
        s.counters.archived = archived;
        s.counters.rejected = rejected;
        s.counters.archive_dropped = dropped.0;
        s.counters.kernel_drops = dropped.1;
        s
    }

    fn exit(code: Option<i32>, signal: Option<i32>, description: &str) -> Option<Exit> {
        Some(Exit {
            code,
            signal,
            at: "2024-01-01T00:00:00Z".into(),
            description: description.into(),
        })
    }

    fn sample() -> Vec<ChannelStatus> {
        let mut east = ChannelStatus::new("east", "channels.d/east.toml".into());
        east.state = State::Ready;
        east.pid = Some(4242);
        east.uptime_s = Some(192.4);
        east.counters = Some(stats(120000, 119990, 3, (5, 2)));
        east.rates = Some(Rates {
            received: 1000.0,
            ..Rates::default()
        });
        let mut north = ChannelStatus::new("north", "channels.d/north.toml".into());
        north.state = State::Failed;
        north.restarts = 6;
        north.last_exit = exit(Some(1), None, "exited with 1");
        north.reason = Some("6 failures within 60s; next try in 5m".into());
        north.last_stderr = vec!["error: address in use".into()];
        let mut west = ChannelStatus::new("west-long-name", "channels.d/west.toml".into());
        west.state = State::Ready;
        west.pid = Some(17);
        west.uptime_s = Some(7530.0);
        west.restarts = 12;
        west.last_exit = exit(None, Some(9), "killed by SIGKILL");
        west.config_error = Some(
            "west.toml: receive.port: expected an integer\nwest.toml: archive.dir: missing".into(),
        );
        west.counters = Some(stats(5, 5, 0, (0, 0)));
        west.rates = Some(Rates {
            received: 12.5,
            ..Rates::default()
        });
        vec![east, north, west]
    }

    #[test]
    fn table_is_aligned_and_lists_problems() {
        let text = render_table(&sample());
        let expected = "\
NAME            STATE    PID  UPTIME  RESTARTS  RECEIVED/s  ARCHIVED  REJECTED  DROPPED  LAST EXIT
east            ready   4242   3m12s         0        1000    119990         3        7  -
north           failed     -       -         6           -         -         -        -  exited with 1
west-long-name  ready     17   2h05m        12        12.5         5         0        0  killed by SIGKILL

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
        let east = &sample()[0];
        assert_eq!(
            column_total(east.counters.as_ref().map(|s| &s.counters), "DROPPED"),
            Some(7)
        );
        assert_eq!(column_total(None, "ARCHIVED"), None);
    }

    #[test]
    fn an_empty_fleet() {
        let text = render_table(&[]);
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
                "the orchestrator is not running at http://127.0.0.1:{port} (connection refused"
            )),
            "{msg}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn asks_a_running_api() {
        use crate::state::Fleet;
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
        let server = tokio::spawn(crate::http::serve_with(
            listener,
            api,
            crate::http::Limits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let (table, json) = tokio::task::spawn_blocking(move || {
            (status(&base, false).unwrap(), status(&base, true).unwrap())
        })
        .await
        .unwrap();
        assert!(table.starts_with("NAME  STATE   PID"), "{table}");
        assert!(table.contains("\na     failed    -"), "{table}");
        assert!(table.ends_with("\na: failed: crash loop"), "{table}");
        let v: ChannelList = serde_json::from_str(&json).unwrap();
        assert_eq!(v.channels[0].state, State::Failed);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
