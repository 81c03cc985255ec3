//! The pivot export's query: SpeedData's `GET /api/v1/pivot/export`
//! parameters (`channels`, `start`, `end` or `duration`, `signals`), and
//! ours (`last`, `format`, `time`), parsed once for the endpoint, the
//! command line and the offline reader. Every error names the parameter.
//!
//! The range is `[start, end)`: a record at `start` is in, one at `end`
//! is out.

use std::fmt;
use std::time::{Duration, SystemTime};

use relay_channel::config::valid_name;
use relay_channel::holds::parse_rfc3339;

/// What the export is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// SpeedData's: `/<channel>/<signal>` datasets.
    #[default]
    Hdf5,
    Parquet,
    /// Arrow IPC file.
    Arrow,
    Csv,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Hdf5, Format::Parquet, Format::Arrow, Format::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Hdf5 => "hdf5",
            Format::Parquet => "parquet",
            Format::Arrow => "arrow",
            Format::Csv => "csv",
        }
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Hdf5 => "h5",
            Format::Parquet => "parquet",
            Format::Arrow => "arrow",
            Format::Csv => "csv",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Which time selects the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBasis {
    /// Each record's own time (`archive.time_field`).
    Record,
    /// When the relay received it (the span of its block).
    Arrival,
}

impl TimeBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeBasis::Record => "record",
            TimeBasis::Arrival => "arrival",
        }
    }
}

/// A parsed export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivotQuery {
    pub channels: Vec<String>,
    /// Inclusive.
    pub start: SystemTime,
    /// Exclusive.
    pub end: SystemTime,
    /// Dotted field names; `None`: every field. The time field always
    /// comes.
    pub signals: Option<Vec<String>>,
    pub format: Format,
    /// `None`: each channel's default (record time where it has a time
    /// field, else arrival time).
    pub time: Option<TimeBasis>,
}

/// A parameter that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for QueryError {}

fn bad(field: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        field,
        message: message.into(),
    }
}

/// The longest a duration may be written (a query string can be long; a
/// number need not be).
const MAX_DURATION_TEXT: usize = 64;

/// An ISO 8601 duration of fixed length: `PT30S`, `PT1.5S`, `PT5M`,
/// `PT1H`, `P1D`, `P1W`, `P1DT12H`. Years and months are refused: their
/// length depends on the calendar.
pub fn parse_iso_duration(s: &str) -> Result<Duration, String> {
    let text = s;
    if s.len() > MAX_DURATION_TEXT {
        return Err("too long for a duration".into());
    }
    let Some(mut rest) = s.strip_prefix('P').or_else(|| s.strip_prefix('p')) else {
        return Err(format!(
            "{text:?} is not an ISO 8601 duration (PT30S, PT5M, PT1H, P1D)"
        ));
    };
    if rest.is_empty() {
        return Err(format!("{text:?} has no number"));
    }
    let mut total = 0f64;
    let mut in_time = false;
    let mut units_seen = String::new();
    let mut time_parts = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(['T', 't']) {
            if in_time {
                return Err(format!("{text:?} has T twice"));
            }
            in_time = true;
            rest = r;
            continue;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
            .ok_or_else(|| format!("{text:?} ends in a number without a unit"))?;
        if len == 0 {
            return Err(format!("{text:?}: a unit without a number"));
        }
        let number: f64 = rest[..len]
            .replace(',', ".")
            .parse()
            .map_err(|_| format!("{text:?}: {:?} is not a number", &rest[..len]))?;
        let unit = rest[len..].chars().next().expect("found above");
        let seconds = match (in_time, unit.to_ascii_uppercase()) {
            (false, 'W') => 7.0 * 86_400.0,
            (false, 'D') => 86_400.0,
            (true, 'H') => 3_600.0,
            (true, 'M') => 60.0,
            (true, 'S') => 1.0,
            (false, 'Y' | 'M') => {
                return Err(format!(
                    "{text:?}: years and months have no fixed length; write days (P30D) or hours"
                ))
            }
            _ => {
                return Err(format!(
                    "{text:?}: {unit:?} is not a unit here (PnW, PnD, then T and nH, nM, nS)"
                ))
            }
        };
        if units_seen.contains(unit.to_ascii_uppercase()) {
            return Err(format!("{text:?} names {unit} twice"));
        }
        units_seen.push(unit.to_ascii_uppercase());
        time_parts += usize::from(in_time);
        total += number * seconds;
        rest = &rest[len + unit.len_utf8()..];
    }
    if units_seen.is_empty() || (in_time && time_parts == 0) {
        return Err(format!("{text:?} has no number after P or T"));
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// An ISO 8601 duration as SpeedData writes them, to the millisecond:
/// `PT30S`, `PT1.5S`, `PT3600S`.
pub fn format_iso_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("PT{}S", ms / 1000)
    } else {
        let s = format!("PT{}.{:03}", ms / 1000, ms % 1000);
        format!("{}S", s.trim_end_matches('0'))
    }
}

/// A comma list: its non-empty items, trimmed.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// A dotted field name: Avro names (`[A-Za-z_][A-Za-z0-9_]*`) joined by
/// dots.
pub fn valid_signal(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl PivotQuery {
    /// Parses the query's parameters (decoded `key=value` pairs); `now`
    /// ends a `last=` range.
    pub fn parse(pairs: &[(String, String)], now: SystemTime) -> Result<PivotQuery, QueryError> {
        let get = |key: &'static str| -> Result<Option<&str>, QueryError> {
            let mut values = pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
            let first = values.next();
            if values.next().is_some() {
                return Err(bad(key, "given more than once"));
            }
            Ok(first.map(String::as_str))
        };
        let channels = get("channels")?;
        let start = get("start")?;
        let end = get("end")?;
        let duration = get("duration")?;
        let last = get("last")?;
        let signals = get("signals")?;
        let format = get("format")?;
        let time = get("time")?;
        for (k, _) in pairs {
            if ![
                "channels", "start", "end", "duration", "last", "signals", "format", "time",
            ]
            .contains(&k.as_str())
            {
                return Err(QueryError {
                    field: "query",
                    message: format!(
                        "unknown parameter {:?} (channels, start, end, duration, last, signals, format, time)",
                        k.chars().take(64).collect::<String>()
                    ),
                });
            }
        }

        let channels = list(channels.ok_or_else(|| {
            bad(
                "channels",
                "missing: name one or more channels, comma-separated",
            )
        })?);
        if channels.is_empty() {
            return Err(bad("channels", "empty: name one or more channels"));
        }
        if let Some(c) = channels.iter().find(|c| !valid_name(c)) {
            return Err(bad(
                "channels",
                format!(
                    "{:?} is not a channel name (1 to 64 of a-z, 0-9, '_' and '-')",
                    c.chars().take(80).collect::<String>()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(c) = channels.iter().find(|c| !seen.insert(*c)) {
            return Err(bad("channels", format!("{c:?} is named twice")));
        }

        let time_of = |field: &'static str, v: &str| {
            parse_rfc3339(v).ok_or_else(|| {
                bad(
                    field,
                    format!(
                        "{:?} is not an RFC 3339 time with Z or an offset (2026-12-07T10:00:00Z)",
                        v.chars().take(80).collect::<String>()
                    ),
                )
            })
        };
        let duration_of =
            |field: &'static str, v: &str| parse_iso_duration(v).map_err(|e| bad(field, e));
        let (start, end) = match (start, last) {
            (Some(_), Some(_)) => return Err(bad("last", "give start or last, not both")),
            (None, Some(last)) => {
                if end.is_some() || duration.is_some() {
                    return Err(bad(
                        "last",
                        "ends now: give neither end nor duration with it",
                    ));
                }
                let d = duration_of("last", last)?;
                let start = now
                    .checked_sub(d)
                    .ok_or_else(|| bad("last", "reaches before the epoch"))?;
                (start, now)
            }
            (None, None) => {
                return Err(bad(
                    "start",
                    "missing: give start (with end or duration), or last",
                ))
            }
            (Some(start), None) => {
                let start = time_of("start", start)?;
                let end = match (end, duration) {
                    (Some(_), Some(_)) => {
                        return Err(bad("duration", "give end or duration, not both"))
                    }
                    (Some(end), None) => time_of("end", end)?,
                    (None, Some(d)) => start
                        .checked_add(duration_of("duration", d)?)
                        .ok_or_else(|| bad("duration", "reaches past what a clock can say"))?,
                    (None, None) => {
                        return Err(bad("end", "missing: give end or duration with start"))
                    }
                };
                (start, end)
            }
        };
        if end <= start {
            return Err(bad("end", "the range is empty: end must come after start"));
        }

        let signals = match signals {
            None => None,
            Some(s) => {
                let s = list(s);
                if let Some(bad_one) = s.iter().find(|x| !valid_signal(x)) {
                    return Err(bad(
                        "signals",
                        format!(
                            "{:?} is not a field name (dotted Avro names: pos.x)",
                            bad_one.chars().take(80).collect::<String>()
                        ),
                    ));
                }
                (!s.is_empty()).then_some(s)
            }
        };
        let format = match format {
            None => Format::default(),
            Some(f) => Format::parse(f)
                .ok_or_else(|| bad("format", "one of hdf5 (the default), parquet, arrow, csv"))?,
        };
        let time = match time {
            None => None,
            Some("record") => Some(TimeBasis::Record),
            Some("arrival") => Some(TimeBasis::Arrival),
            Some(_) => return Err(bad("time", "record or arrival")),
        };
        Ok(PivotQuery {
            channels,
            start,
            end,
            signals,
            format,
            time,
        })
    }

    /// The range's length.
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }

    /// The query as parameters, in the order SpeedData writes them
    /// (`channels`, `start`, `duration`, `signals`), then ours.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("channels", self.channels.join(",")),
            (
                "start",
                humantime::format_rfc3339_millis(self.start).to_string(),
            ),
            ("duration", format_iso_duration(self.duration())),
        ];
        if let Some(s) = &self.signals {
            out.push(("signals", s.join(",")));
        }
        out.push(("format", self.format.as_str().into()));
        if let Some(t) = self.time {
            out.push(("time", t.as_str().into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<PivotQuery, QueryError> {
        let pairs: Vec<(String, String)> = s
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        PivotQuery::parse(&pairs, t("2026-12-07T12:00:00Z"))
    }

    fn t(s: &str) -> SystemTime {
        parse_rfc3339(s).unwrap()
    }

    fn field(s: &str) -> &'static str {
        q(s).unwrap_err().field
    }

    #[test]
    fn durations_of_fixed_length() {
        let secs = |s: &str| parse_iso_duration(s).unwrap().as_secs_f64();
        assert_eq!(secs("PT30S"), 30.0);
        assert_eq!(secs("PT1.5S"), 1.5);
        assert_eq!(secs("PT0,25S"), 0.25);
        assert_eq!(secs("PT5M"), 300.0);
        assert_eq!(secs("PT1H"), 3600.0);
        assert_eq!(secs("P1D"), 86_400.0);
        assert_eq!(secs("P1W"), 604_800.0);
        assert_eq!(secs("P1DT12H30M"), 131_400.0);
        for bad in [
            "", "P", "30S", "PT", "PTS", "PT30", "P9999Y", "P1M", "PT1D", "P1H", "PT1S1S",
            "PT1.2.3S", "PTT1S",
        ] {
            assert!(parse_iso_duration(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse_iso_duration(&format!("PT{}S", "9".repeat(100))).is_err());
        assert_eq!(format_iso_duration(Duration::from_secs(30)), "PT30S");
        assert_eq!(format_iso_duration(Duration::from_millis(1500)), "PT1.5S");
        assert_eq!(format_iso_duration(Duration::from_millis(1250)), "PT1.25S");
    }

    #[test]
    fn speeddata_s_call_as_it_is() {
        let p = q("start=2026-12-07T10:00:00Z&duration=PT30S&channels=a,b&signals=x,y").unwrap();
        assert_eq!(p.channels, ["a", "b"]);
        assert_eq!(p.start, t("2026-12-07T10:00:00Z"));
        assert_eq!(p.end, t("2026-12-07T10:00:30Z"));
        assert_eq!(
            p.signals.as_deref(),
            Some(&["x".to_string(), "y".to_string()][..])
        );
        assert_eq!(p.format, Format::Hdf5);
        assert_eq!(p.time, None);
        // An offset, an end, our parameters.
        let p = q("channels=a&start=2026-12-07T11:00:00%2B01:00&end=2026-12-07T10:00:01Z&format=parquet&time=arrival")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(p.field, "start", "a query string is decoded before parsing");
        let p = q("channels=a&start=2026-12-07T11:00:00+01:00&end=2026-12-07T10:00:01Z&format=parquet&time=arrival").unwrap();
        assert_eq!(p.start, t("2026-12-07T10:00:00Z"));
        assert_eq!(p.duration(), Duration::from_secs(1));
        assert_eq!(
            (p.format, p.time),
            (Format::Parquet, Some(TimeBasis::Arrival))
        );
        let p = q("channels=a&last=PT30S&signals=pos.x").unwrap();
        assert_eq!(p.end, t("2026-12-07T12:00:00Z"));
        assert_eq!(p.start, t("2026-12-07T11:59:30Z"));
        assert_eq!(p.signals.unwrap(), ["pos.x"]);
    }

    #[test]
    fn every_wrong_parameter_is_named() {
        assert_eq!(
            field("start=2026-12-07T10:00:00Z&duration=PT30S"),
            "channels"
        );
        assert_eq!(field("channels=&last=PT1S"), "channels");
        assert_eq!(field("channels=A&last=PT1S"), "channels");
        assert_eq!(field("channels=a,a&last=PT1S"), "channels");
        assert_eq!(field("channels=a"), "start");
        assert_eq!(field("channels=a&start=garbage&duration=PT1S"), "start");
        assert_eq!(
            field("channels=a&start=2026-12-07T10:00:00&duration=PT1S"),
            "start"
        );
        assert_eq!(field("channels=a&start=2026-12-07T10:00:00Z"), "end");
        assert_eq!(
            field("channels=a&start=2026-12-07T10:00:00Z&end=2026-12-07T10:00:00Z"),
            "end"
        );
        assert_eq!(
            field("channels=a&start=2026-12-07T10:00:00Z&end=2026-12-07T10:00:01Z&duration=PT1S"),
            "duration"
        );
        assert_eq!(
            field("channels=a&start=2026-12-07T10:00:00Z&duration=P9999Y"),
            "duration"
        );
        assert_eq!(
            field("channels=a&last=PT1S&start=2026-12-07T10:00:00Z"),
            "last"
        );
        assert_eq!(
            field("channels=a&last=PT1S&end=2026-12-07T10:00:00Z"),
            "last"
        );
        assert_eq!(field("channels=a&last=soon"), "last");
        assert_eq!(field("channels=a&last=PT1S&signals=../x"), "signals");
        assert_eq!(field("channels=a&last=PT1S&signals=1x"), "signals");
        assert_eq!(field("channels=a&last=PT1S&format=xlsx"), "format");
        assert_eq!(field("channels=a&last=PT1S&time=now"), "time");
        assert_eq!(field("channels=a&last=PT1S&last=PT2S"), "last");
        assert_eq!(field("channels=a&last=PT1S&x=1"), "query");
        let many = (0..10_000)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            q(&format!("channels={many}&last=PT1S")).is_ok(),
            "the channel limit is the server's"
        );
    }

    #[test]
    fn a_query_goes_out_as_it_came_in() {
        let p = q("channels=a,b&start=2026-12-07T10:00:00Z&duration=PT1.5S&signals=x,pos.y&format=csv&time=record").unwrap();
        let pairs: Vec<(String, String)> = p
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(PivotQuery::parse(&pairs, SystemTime::now()).unwrap(), p);
    }
}
