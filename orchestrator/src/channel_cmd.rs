//! `orchestrator channel add|rm|show`: one channel through a running
//! orchestrator's API.
//!
//! channels.d stays the source of truth: these commands never write there
//! themselves, the orchestrator does (`PUT`/`DELETE
//! /api/v1/channels/{name}`), and what it writes is what it reads back at
//! the next reload. The API token, when there is one, goes in an
//! `Authorization: Bearer` header and nowhere else: it is never printed,
//! logged or put in an error message.

use std::fmt;
use std::path::Path;

use serde_json::Value;
pub use speeddata_api::Client;
use speeddata_api::{ChannelStatus, Problem, Registration};

/// Exit code of a configuration problem (ours or the server's 409/422).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code of every other failure.
pub const EXIT_FAILED: u8 = 1;

/// Why a command failed: the lines to print (each after `error: `) and the
/// exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub lines: Vec<String>,
}

impl Failure {
    pub(crate) fn new(code: u8, line: impl Into<String>) -> Failure {
        Failure {
            code,
            lines: vec![line.into()],
        }
    }
    pub(crate) fn failed(line: impl Into<String>) -> Failure {
        Failure::new(EXIT_FAILED, line)
    }
    fn config(file: &Path, key: &str, message: impl fmt::Display) -> Failure {
        let file = file.display();
        Failure::new(
            EXIT_CONFIG,
            if key.is_empty() {
                format!("{file}: {message}")
            } else {
                format!("{file}: {key}: {message}")
            },
        )
    }
}

/// 409/422 list their problems (exit 78); any other failure is the
/// server's `error` with the HTTP status, or why there was no answer
/// (exit 1).
impl From<speeddata_api::Error> for Failure {
    fn from(e: speeddata_api::Error) -> Failure {
        use speeddata_api::Error;
        match e {
            Error::Status { status, body } if status == 409 || status == 422 => {
                match body.problems.as_deref() {
                    Some(ps) if !ps.is_empty() => Failure {
                        code: EXIT_CONFIG,
                        lines: ps.iter().map(format_problem).collect(),
                    },
                    _ => Failure::new(EXIT_CONFIG, Error::Status { status, body }.to_string()),
                }
            }
            e => Failure::failed(e.to_string()),
        }
    }
}

/// What `channel add` sends: the channel's name and the request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub name: String,
    pub body: Registration,
}

/// Reads a channel file and its schema into the `PUT` body: the file's text
/// without its own top-level `schema` key (the server names the schema file
/// itself), and the schema as JSON. The schema is `schema` if given, else
/// the file the channel's `schema` key names, relative to the channel
/// file's folder.
pub fn prepare_add(file: &Path, schema: Option<&Path>) -> Result<Upload, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", file.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| Failure::config(file, "", format!("not valid TOML: {e}")))?;
    let name = match table.get("name") {
        None => relay_channel::config::channel_name(None, file),
        Some(toml::Value::String(n)) => relay_channel::config::channel_name(Some(n), file),
        Some(_) => return Err(Failure::config(file, "name", "must be a string")),
    };
    if name.is_empty() {
        return Err(Failure::config(file, "name", "no channel name"));
    }
    let own_schema = match table.get("schema") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Failure::config(file, "schema", "must be a string")),
    };
    let schema_path = match (schema, own_schema) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(s)) => file.parent().unwrap_or(Path::new("")).join(s),
        (None, None) => {
            return Err(Failure::config(
                file,
                "schema",
                "missing: name the schema file here or give --schema FILE.avsc",
            ))
        }
    };
    let schema_text = std::fs::read_to_string(&schema_path)
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", schema_path.display())))?;
    let schema_json: Value = serde_json::from_str(&schema_text).map_err(|e| {
        Failure::config(
            &schema_path,
            "",
            format!("not JSON (an Avro schema is JSON): {e}"),
        )
    })?;

    let channel = strip_schema_key(&text);
    // The text must still say exactly what the file says, the schema key
    // aside: a key written in a way this line-based removal misses (over
    // several lines, say) is refused rather than sent half-removed.
    let mut expected = table;
    expected.remove("schema");
    if toml::from_str::<toml::Table>(&channel).ok().as_ref() != Some(&expected) {
        return Err(Failure::config(
            file,
            "schema",
            "cannot remove this key from the text; write it on one line (schema = \"FILE.avsc\") before any [table], or delete it and give --schema",
        ));
    }
    Ok(Upload {
        name,
        body: Registration {
            channel,
            schema: schema_json,
        },
    })
}

/// The channel file's text without its top-level `schema = ...` line: the
/// first such line of the root table (before the first `[table]` header),
/// with its comment and line end. Every other byte is kept.
pub fn strip_schema_key(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_root = true;
    let mut removed = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start_matches([' ', '\t']);
        if t.starts_with('[') {
            in_root = false;
        }
        if in_root && !removed && is_schema_line(t) {
            removed = true;
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Whether a line (leading blanks removed) sets the key `schema`, bare or
/// quoted.
fn is_schema_line(t: &str) -> bool {
    ["schema", "\"schema\"", "'schema'"].iter().any(|key| {
        t.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with('='))
    })
}

/// One problem of a 409/422 answer as `orchestrator check` prints it:
/// `file: key: message` (`file: message` without a key).
pub fn format_problem(p: &Problem) -> String {
    let mut parts: Vec<&str> = [p.file.as_str(), p.key.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    parts.push(if p.message.is_empty() {
        "(no message)"
    } else {
        &p.message
    });
    parts.join(": ")
}

/// `orchestrator channel add`: sends the channel file and its schema;
/// on success the line to print.
pub fn add(
    client: &Client,
    file: &Path,
    schema: Option<&Path>,
    wait: bool,
) -> Result<String, Failure> {
    let upload = prepare_add(file, schema)?;
    let r = client.register(&upload.name, &upload.body, wait)?;
    let verb = if r.created { "added" } else { "replaced" };
    Ok(format!(
        "{verb} channel {}: {}",
        r.status.name,
        describe(&r.status)
    ))
}

/// A channel's status in a few words: `ready (pid 1234)`, `failed: why`.
fn describe(status: &ChannelStatus) -> String {
    let mut out = status.state.as_str().to_string();
    if let Some(pid) = status.pid {
        out.push_str(&format!(" (pid {pid})"));
    }
    for why in [&status.reason, &status.config_error].into_iter().flatten() {
        out.push_str(": ");
        out.push_str(&why.replace('\n', "; "));
    }
    out
}

/// `orchestrator channel rm`: the line to print once the channel is gone.
pub fn remove(client: &Client, name: &str) -> Result<String, Failure> {
    client.unregister(name)?;
    Ok(format!("removed channel {name} (archive kept)"))
}

/// `orchestrator channel show`: the channel file's path and text, then the
/// schema file's path and the schema, pretty. No trailing newline.
pub fn show(client: &Client, name: &str) -> Result<String, Failure> {
    let c = client.channel_config(name)?;
    let channel = c.channel.trim_end_matches('\n');
    let schema = serde_json::to_string_pretty(&c.schema).unwrap_or_default();
    let schema_file = c
        .schema_file
        .as_deref()
        .map_or_else(|| "?".into(), |p| p.display().to_string());
    Ok(format!(
        "==> {} <==\n{channel}\n\n==> {schema_file} <==\n{schema}",
        c.file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use speeddata_api::{Error, ErrorBody, State};

    fn problem(file: &str, key: &str, message: &str) -> Problem {
        Problem {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A status body as the server sends it.
    fn status_json(state: State, pid: Option<u32>) -> String {
        let mut s = ChannelStatus::new("east", "/etc/speeddata/channels.d/east.toml".into());
        s.state = state;
        s.pid = pid;
        serde_json::to_string(&s).unwrap()
    }

    #[test]
    fn the_schema_key_goes_and_every_other_byte_stays() {
        let text = "# east: the east antenna\nname = \"east\"\nschema = \"east.avsc\"   # its schema\n\n# receive\n[receive]\nbind = \"127.0.0.1:7001\"\n";
        assert_eq!(
            strip_schema_key(text),
            "# east: the east antenna\nname = \"east\"\n\n# receive\n[receive]\nbind = \"127.0.0.1:7001\"\n"
        );
    }

    #[test]
    fn a_schema_key_in_a_table_is_not_the_channels() {
        let text = "name = \"a\"\n[decimated]\nschema = \"kept\"\n";
        assert_eq!(strip_schema_key(text), text);
        // The root's goes, a table's stays.
        let text = "schema = \"x.avsc\"\n[t]\nschema = \"y\"\n";
        assert_eq!(strip_schema_key(text), "[t]\nschema = \"y\"\n");
    }

    #[test]
    fn spaces_quotes_and_line_ends_vary() {
        assert_eq!(
            strip_schema_key("schema=\"x\"\nname=\"a\"\n"),
            "name=\"a\"\n"
        );
        assert_eq!(
            strip_schema_key("  schema\t= 'x'\r\nname = \"a\"\r\n"),
            "name = \"a\"\r\n"
        );
        assert_eq!(strip_schema_key("\"schema\" = \"x\""), "");
        assert_eq!(strip_schema_key("'schema'=\"x\"\n"), "");
        // Other keys that merely begin with "schema" stay.
        let t = "schema_version = 2\nschemas = 1\n";
        assert_eq!(strip_schema_key(t), t);
    }

    #[test]
    fn no_schema_key_changes_nothing() {
        for t in [
            "",
            "\n",
            "name = \"a\"\n[receive]\nbind = \"127.0.0.1:1\"\n",
            "# schema = \"x\"\n",
        ] {
            assert_eq!(strip_schema_key(t), t);
        }
    }

    #[test]
    fn problems_read_like_check_prints_them() {
        let p = problem(
            "/etc/speeddata/channels.d/east.toml",
            "receive.bind",
            "expected IP:PORT",
        );
        assert_eq!(
            format_problem(&p),
            "/etc/speeddata/channels.d/east.toml: receive.bind: expected IP:PORT"
        );
        let p = problem("east.toml", "", "not valid TOML");
        assert_eq!(format_problem(&p), "east.toml: not valid TOML");
        let f = Failure::from(Error::Status {
            status: 409,
            body: ErrorBody {
                problems: Some(vec![
                    problem("a.toml", "receive.bind", "also used by \"b\""),
                    problem("a.toml", "name", "taken"),
                ]),
                ..ErrorBody::new("2 problems with the channel")
            },
        });
        assert_eq!(f.code, EXIT_CONFIG);
        assert_eq!(
            f.lines,
            [
                "a.toml: receive.bind: also used by \"b\"",
                "a.toml: name: taken"
            ]
        );
        let f = Failure::from(Error::Status {
            status: 404,
            body: ErrorBody::new("no channel \"x\""),
        });
        assert_eq!(f.code, EXIT_FAILED);
        assert_eq!(f.lines, ["no channel \"x\" (HTTP 404 Not Found)"]);
    }

    #[test]
    fn the_upload_names_the_channel_and_carries_the_schema_as_json() {
        let d = tempfile::tempdir().unwrap();
        let schema = r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}"#;
        std::fs::write(d.path().join("s.avsc"), schema).unwrap();
        std::fs::write(d.path().join("other.avsc"), "\"int\"").unwrap();
        std::fs::write(d.path().join("bad.avsc"), "record r { int a; }").unwrap();
        let file = d.path().join("stem.toml");
        std::fs::write(
            &file,
            "# c\nschema = \"s.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n",
        )
        .unwrap();

        let u = prepare_add(&file, None).unwrap();
        assert_eq!(u.name, "stem");
        assert_eq!(u.body.channel, "# c\n[receive]\nbind = \"127.0.0.1:1\"\n");
        assert_eq!(
            u.body.schema,
            serde_json::from_str::<Value>(schema).unwrap()
        );
        // --schema wins over the file's own key.
        let u = prepare_add(&file, Some(&d.path().join("other.avsc"))).unwrap();
        assert_eq!(u.body.schema, json!("int"));

        std::fs::write(&file, "name = \"east\"\nschema = \"bad.avsc\"\n").unwrap();
        let f = prepare_add(&file, None).unwrap_err();
        assert_eq!(f.code, EXIT_CONFIG);
        assert!(
            f.lines[0].starts_with(&format!(
                "{}: not JSON",
                d.path().join("bad.avsc").display()
            )),
            "{f:?}"
        );

        std::fs::write(&file, "name = \"east\"\n").unwrap();
        let f = prepare_add(&file, None).unwrap_err();
        assert!(f.lines[0].contains("schema: missing"), "{f:?}");
        let u = prepare_add(&file, Some(&d.path().join("s.avsc"))).unwrap();
        assert_eq!(u.name, "east");

        // A key the line-based removal cannot take out is refused.
        std::fs::write(&file, "schema = \"\"\"\ns.avsc\"\"\"\n").unwrap();
        let f = prepare_add(&file, Some(&d.path().join("s.avsc"))).unwrap_err();
        assert!(f.lines[0].contains("cannot remove this key"), "{f:?}");

        let f = prepare_add(&d.path().join("missing.toml"), None).unwrap_err();
        assert_eq!(f.code, EXIT_FAILED);
        assert!(f.lines[0].starts_with("cannot read "), "{f:?}");
    }

    /// One request as the fake server saw it.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A server on 127.0.0.1 that answers each connection with the next
    /// canned `(status line, body)` and reports what it was sent.
    fn fake_server(
        answers: Vec<(&'static str, &str)>,
    ) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let answers: Vec<(&'static str, String)> = answers
            .into_iter()
            .map(|(status, body)| (status, body.to_string()))
            .collect();
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (n, v) = line.split_once(':').unwrap();
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut buf = vec![0; len];
                reader.read_exact(&mut buf).unwrap();
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                seen.push(Seen {
                    request_line: request_line.trim_end().to_string(),
                    headers,
                    body: String::from_utf8(buf).unwrap(),
                });
            }
            seen
        });
        (base, server)
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn requests_and_answers_over_http() {
        let d = tempfile::tempdir().unwrap();
        let schema = r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}"#;
        std::fs::write(d.path().join("east.avsc"), schema).unwrap();
        let file = d.path().join("east.toml");
        let text = "# the east antenna\nname = \"east\"\nschema = \"east.avsc\"\n[receive]\nbind = \"127.0.0.1:7001\"\n";
        std::fs::write(&file, text).unwrap();

        let (ready, starting) = (
            status_json(State::Ready, Some(1234)),
            status_json(State::Starting, None),
        );
        let (base, server) = fake_server(vec![
            ("201 Created", &ready),
            ("200 OK", &starting),
            (
                "422 Unprocessable Entity",
                r#"{"problems": [{"file": "/etc/speeddata/channels.d/east.toml", "key": "receive.bind", "message": "not an address"}]}"#,
            ),
            (
                "401 Unauthorized",
                r#"{"error": "this request needs the API token"}"#,
            ),
            (
                "200 OK",
                r#"{"status": "success", "name": "east", "message": "Channel 'east' de-registered and relay stopped"}"#,
            ),
            ("404 Not Found", r#"{"error": "no channel \"west\""}"#),
            (
                "200 OK",
                r#"{"name": "east", "file": "/etc/speeddata/channels.d/east.toml", "channel": "name = \"east\"\nschema = \"east.avsc\"\n", "schema_file": "/etc/speeddata/channels.d/east.avsc", "schema": {"type": "string"}}"#,
            ),
        ]);
        let with_token = Client::new(&base, Some(TOKEN.into()));
        let without = Client::new(&base, None);
        assert!(!format!("{with_token:?}").contains(TOKEN));

        let out = add(&with_token, &file, None, true).unwrap();
        assert_eq!(out, "added channel east: ready (pid 1234)");
        let out = add(&without, &file, None, false).unwrap();
        assert_eq!(out, "replaced channel east: starting");
        let f = add(&with_token, &file, None, true).unwrap_err();
        assert_eq!(f.code, 78);
        assert_eq!(
            f.lines,
            ["/etc/speeddata/channels.d/east.toml: receive.bind: not an address"]
        );
        let f = add(&with_token, &file, None, true).unwrap_err();
        assert_eq!(f.code, 1);
        assert_eq!(
            f.lines,
            ["this request needs the API token (HTTP 401 Unauthorized)"]
        );
        assert_eq!(
            remove(&with_token, "east").unwrap(),
            "removed channel east (archive kept)"
        );
        let f = remove(&with_token, "west").unwrap_err();
        assert_eq!(
            (f.code, f.lines[0].as_str()),
            (1, "no channel \"west\" (HTTP 404 Not Found)")
        );
        assert_eq!(
            show(&without, "east").unwrap(),
            "==> /etc/speeddata/channels.d/east.toml <==\nname = \"east\"\nschema = \"east.avsc\"\n\n==> /etc/speeddata/channels.d/east.avsc <==\n{\n  \"type\": \"string\"\n}"
        );

        let seen = server.join().unwrap();
        let lines: Vec<&str> = seen.iter().map(|s| s.request_line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "PUT /api/v1/channels/east?wait=ready HTTP/1.1",
                "PUT /api/v1/channels/east HTTP/1.1",
                "PUT /api/v1/channels/east?wait=ready HTTP/1.1",
                "PUT /api/v1/channels/east?wait=ready HTTP/1.1",
                "DELETE /api/v1/channels/east HTTP/1.1",
                "DELETE /api/v1/channels/west HTTP/1.1",
                "GET /api/v1/channels/east/config HTTP/1.1",
            ]
        );
        let put = &seen[0];
        assert_eq!(put.header("content-type"), Some("application/json"));
        assert_eq!(
            put.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let body: Value = serde_json::from_str(&put.body).unwrap();
        assert_eq!(
            body,
            json!({
                "channel": "# the east antenna\nname = \"east\"\n[receive]\nbind = \"127.0.0.1:7001\"\n",
                "schema": serde_json::from_str::<Value>(schema).unwrap(),
            })
        );
        assert_eq!(seen[1].header("authorization"), None);
        assert_eq!(seen[1].body, put.body);
        assert_eq!(
            seen[4].header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(seen[6].header("authorization"), None);
    }

    #[test]
    fn a_stopped_orchestrator_is_named_as_such() {
        // A port nobody listens on: bind one, learn it, close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(&format!("127.0.0.1:{port}"), Some(TOKEN.into()));
        let f = remove(&client, "east").unwrap_err();
        assert_eq!(f.code, 1);
        assert!(
            f.lines[0].starts_with(&format!(
                "the orchestrator is not running at http://127.0.0.1:{port} (connection refused"
            )),
            "{f:?}"
        );
        assert!(!f.lines[0].contains(TOKEN));
    }
}
