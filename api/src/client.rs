//! A blocking client of the API: one typed method per call. The API token,
//! when there is one, goes in an `Authorization: Bearer` header and
//! nowhere else: it is never printed, logged or put in an error message.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::*;

/// How long a request may take, unless a call says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registration that waits for the channel may take (the server
/// bounds it by the supervisor's start timeout).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where to send requests, and the token to send with them.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No answer: nothing listens there, a time-out, a broken connection.
    Unreachable {
        base: String,
        message: String,
        kind: Unreachable,
    },
    /// An answer with an error status, and its body (an [`ErrorBody`]; a
    /// body that is not one becomes its `error`, shortened).
    Status { status: u16, body: ErrorBody },
    /// A success whose body is not what the call returns.
    Body { url: String, message: String },
}

/// Why there was no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Refused,
    TimedOut,
    Other,
}

impl Error {
    /// The HTTP status, for an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable {
                base,
                message,
                kind,
            } => match kind {
                Unreachable::Refused => write!(
                    f,
                    "the orchestrator is not running at {base} (connection refused; is http.listen right? see --url)"
                ),
                Unreachable::TimedOut => write!(
                    f,
                    "the orchestrator at {base} did not answer in time ({message})"
                ),
                Unreachable::Other => write!(
                    f,
                    "cannot reach the orchestrator at {base}: {message} (is it running? is http.listen right?)"
                ),
            },
            Error::Status { status, body } => {
                write!(f, "{} ({})", body.error, describe_status(*status))
            }
            Error::Body { url, message } => {
                write!(f, "the answer of {url} is not what was expected: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// `HTTP 404 Not Found`.
pub fn describe_status(code: u16) -> String {
    match ureq::http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(r) => format!("HTTP {code} {r}"),
        None => format!("HTTP {code}"),
    }
}

/// `http://host:port` from what a user gives (`host:port` is taken as
/// http), without a trailing slash.
pub fn normalize_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A path segment with everything but unreserved characters
/// percent-encoded, so that no name can change the request's path.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A registration's outcome: whether the channel is new, and its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub created: bool,
    pub status: ChannelStatus,
}

impl Client {
    /// `base`: e.g. `"http://127.0.0.1:9464"`; a bare `host:port` is taken
    /// as http.
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: normalize_base(base),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request: the status and body of any answer, whatever its
    /// status; `Err` only when there is no answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, String), Error> {
        let url = format!("{}{path}", self.base);
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(b)
                    .map_err(|e| self.unreachable_msg(e.to_string()))?,
            ),
            None => agent.run(
                request
                    .body(())
                    .map_err(|e| self.unreachable_msg(e.to_string()))?,
            ),
        };
        let mut response = result.map_err(|e| self.unreachable(&e))?;
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
        Ok((code, text))
    }

    fn unreachable_msg(&self, message: String) -> Error {
        Error::Unreachable {
            base: self.base.clone(),
            message,
            kind: Unreachable::Other,
        }
    }

    /// ureq's errors name the URL at most, never a header.
    fn unreachable(&self, e: &ureq::Error) -> Error {
        let kind = match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Unreachable::Refused
            }
            ureq::Error::Timeout(_) => Unreachable::TimedOut,
            _ => Unreachable::Other,
        };
        Error::Unreachable {
            base: self.base.clone(),
            message: e.to_string(),
            kind,
        }
    }

    /// One call: a success's body as `T`, or the error.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<(u16, T), Error> {
        let body = body.map(|b| serde_json::to_string(b).expect("request bodies serialize"));
        let (code, text) = self.send(method, path, body, timeout)?;
        if !(200..300).contains(&code) {
            return Err(Error::Status {
                status: code,
                body: error_body(&text),
            });
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text)
            .map(|v| (code, v))
            .map_err(|e| Error::Body {
                url: format!("{}{path}", self.base),
                message: e.to_string(),
            })
    }

    /// `GET /api/v1/pivot/export` with `query`, the body written to `out`
    /// as it arrives: the bytes written and the channels the answer says
    /// had no data in the range. No time limit on the whole (an export of
    /// a day takes a while); 60 s at most without a byte.
    pub fn pivot(
        &self,
        query: &crate::pivot::PivotQuery,
        out: &mut impl std::io::Write,
    ) -> Result<(u64, Vec<String>), Error> {
        let pairs = query.to_pairs();
        let qs: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", segment(v)))
            .collect();
        let url = format!("{}/api/v1/pivot/export?{}", self.base, qs.join("&"));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_recv_body(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .max_idle_connections(0)
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let mut request = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let request = request
            .body(())
            .map_err(|e| self.unreachable_msg(e.to_string()))?;
        let mut response = agent.run(request).map_err(|e| self.unreachable(&e))?;
        let code = response.status().as_u16();
        if !(200..300).contains(&code) {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(Error::Status {
                status: code,
                body: error_body(&text),
            });
        }
        let empty = response
            .headers()
            .get("x-export-empty-channels")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
        let n = std::io::copy(&mut body, out).map_err(|e| Error::Body {
            url: url.clone(),
            message: format!("the export broke off: {e}"),
        })?;
        Ok((n, empty))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call("GET", path, None::<&()>, TIMEOUT).map(|(_, v)| v)
    }

    /// `GET /api/v1/channels`.
    pub fn channels(&self) -> Result<Vec<ChannelStatus>, Error> {
        self.get::<ChannelList>("/api/v1/channels")
            .map(|l| l.channels)
    }

    /// `GET /api/v1/channels/{name}`.
    pub fn channel(&self, name: &str) -> Result<ChannelStatus, Error> {
        self.get(&format!("/api/v1/channels/{}", segment(name)))
    }

    /// `GET /api/v1/info`.
    pub fn info(&self) -> Result<Info, Error> {
        self.get("/api/v1/info")
    }

    /// `POST /api/v1/channels/{name}/restart`.
    pub fn restart(&self, name: &str) -> Result<Restarting, Error> {
        let path = format!("/api/v1/channels/{}/restart", segment(name));
        self.call("POST", &path, None::<&()>, TIMEOUT)
            .map(|(_, v)| v)
    }

    /// `PUT /api/v1/channels/{name}[?wait=ready]`.
    pub fn register(
        &self,
        name: &str,
        registration: &Registration,
        wait: bool,
    ) -> Result<Registered, Error> {
        let mut path = format!("/api/v1/channels/{}", segment(name));
        if wait {
            path.push_str("?wait=ready");
        }
        let timeout = if wait { WAIT_TIMEOUT } else { TIMEOUT };
        let (code, status) = self.call("PUT", &path, Some(registration), timeout)?;
        Ok(Registered {
            created: code == 201,
            status,
        })
    }

    /// `PUT /api/v1/channels/{name}?dry_run=true`: the checks alone.
    pub fn check_registration(
        &self,
        name: &str,
        registration: &Registration,
    ) -> Result<Checked, Error> {
        let path = format!("/api/v1/channels/{}?dry_run=true", segment(name));
        self.call("PUT", &path, Some(registration), TIMEOUT)
            .map(|(_, v)| v)
    }

    /// `DELETE /api/v1/channels/{name}`: once the channel has stopped.
    pub fn unregister(&self, name: &str) -> Result<Deregistered, Error> {
        let path = format!("/api/v1/channels/{}", segment(name));
        self.call("DELETE", &path, None::<&()>, TIMEOUT)
            .map(|(_, v)| v)
    }

    /// `GET /api/v1/channels/{name}/config`.
    pub fn channel_config(&self, name: &str) -> Result<ChannelConfig, Error> {
        self.get(&format!("/api/v1/channels/{}/config", segment(name)))
    }

    /// `GET /api/v1/channels/{name}/schema`: the schema the relay runs with.
    pub fn schema(&self, name: &str) -> Result<serde_json::Value, Error> {
        self.get(&format!("/api/v1/channels/{}/schema", segment(name)))
    }

    /// `POST /api/v1/channels/{name}/check-schema`.
    pub fn check_schema(
        &self,
        name: &str,
        schema: &serde_json::Value,
    ) -> Result<SchemaCheck, Error> {
        let path = format!("/api/v1/channels/{}/check-schema", segment(name));
        self.call("POST", &path, Some(schema), TIMEOUT)
            .map(|(_, v)| v)
    }

    /// `GET /api/v1/ports/free?from=&to=&count=`.
    pub fn free_ports(&self, from: u16, to: u16, count: usize) -> Result<Ports, Error> {
        self.get(&format!(
            "/api/v1/ports/free?from={from}&to={to}&count={count}"
        ))
    }

    /// `GET /api/v1/holds`.
    pub fn holds(&self) -> Result<Vec<HoldReport>, Error> {
        self.get::<HoldList>("/api/v1/holds").map(|l| l.holds)
    }

    /// `GET /api/v1/holds/{name}`.
    pub fn hold(&self, name: &str) -> Result<HoldReport, Error> {
        self.get(&format!("/api/v1/holds/{}", segment(name)))
    }

    /// `POST /api/v1/holds`.
    pub fn create_hold(&self, hold: &NewHold) -> Result<HoldReport, Error> {
        self.call("POST", "/api/v1/holds", Some(hold), TIMEOUT)
            .map(|(_, v)| v)
    }

    /// `DELETE /api/v1/holds/{name}`.
    pub fn delete_hold(&self, name: &str) -> Result<(), Error> {
        let path = format!("/api/v1/holds/{}", segment(name));
        self.call::<serde_json::Value>("DELETE", &path, None::<&()>, TIMEOUT)
            .map(|_| ())
    }
}

/// An error answer's body: the [`ErrorBody`] it is, else its text
/// (shortened) as the error, else a placeholder.
fn error_body(text: &str) -> ErrorBody {
    if let Ok(b) = serde_json::from_str::<ErrorBody>(text) {
        return b;
    }
    let text = text.trim();
    if text.is_empty() {
        return ErrorBody::new("the orchestrator gave no reason");
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    ErrorBody::new(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_segments() {
        assert_eq!(normalize_base("127.0.0.1:9464/"), "http://127.0.0.1:9464");
        assert_eq!(normalize_base("https://h:1"), "https://h:1");
        assert_eq!(segment("a b/../c"), "a%20b%2F..%2Fc");
    }

    #[test]
    fn an_error_answer_is_read_as_the_error_body_or_its_text() {
        assert_eq!(
            error_body(r#"{"error": "no hold \"x\"", "field": "name"}"#).field,
            Some("name".into())
        );
        assert_eq!(error_body("  ").error, "the orchestrator gave no reason");
        assert_eq!(error_body("plain text").error, "plain text");
        let e = Error::Status {
            status: 404,
            body: ErrorBody::new("no channel \"x\""),
        };
        assert_eq!(e.to_string(), "no channel \"x\" (HTTP 404 Not Found)");
    }
}
