//! Who may write: the API token, or loopback without one; the shared
//! work of handlers (the configuration, the write check) as extractors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};

use super::{ApiError, AppState, Peer};

/// The orchestrator's configuration, for the handlers that need it (503
/// without one).
pub(super) struct Cfg(pub(super) Arc<crate::config::Config>);

impl FromRequestParts<AppState> for Cfg {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, s: &AppState) -> Result<Cfg, ApiError> {
        s.config().map(Cfg)
    }
}

/// 401 or 403 otherwise (see [`AppState::may_write`]).
pub(super) struct Writer(pub(super) &'static str);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Writer, ApiError> {
        let peer =
            parts.extensions.get::<Peer>().map(|p| p.0).ok_or_else(|| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no peer address")
            })?;
        s.may_write(&parts.headers, peer).map(Writer)
    }
}

impl AppState {
    /// How write requests are authorized: `token`, `loopback`, or
    /// `refused` (with why).
    pub(super) fn write_auth(&self) -> (&'static str, Option<String>) {
        if self.token.is_some() {
            ("token", None)
        } else if self.listen.ip().is_loopback() {
            ("loopback", None)
        } else {
            (
                "refused",
                Some(format!(
                    "write requests are refused: http.listen ({}) is not a loopback address and no API token is set (http.token_file)",
                    self.listen
                )),
            )
        }
    }

    /// Whether this write request may go on; the 401 or 403 answer if not.
    /// Returns who made it: `token`, or `local`.
    pub(super) fn may_write(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<&'static str, ApiError> {
        let refused = |status: StatusCode, why: String| {
            tracing::warn!(%peer, "HTTP: write request refused: {why}");
            ApiError::new(status, why)
        };
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match given {
                Some(t) if tokens_equal(t, token) => Ok("token"),
                Some(_) => Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "the API token is wrong".into(),
                )),
                None => Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "write requests need the API token: Authorization: Bearer <token>".into(),
                )),
            };
        }
        if let (_, Some(why)) = self.write_auth() {
            return Err(refused(StatusCode::FORBIDDEN, why));
        }
        if !peer.ip().is_loopback() {
            return Err(refused(
                StatusCode::FORBIDDEN,
                format!(
                    "write requests are accepted from loopback only, not from {}",
                    peer.ip()
                ),
            ));
        }
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return Err(refused(
                    StatusCode::FORBIDDEN,
                    format!("write requests must name the loopback in Host, not {host:?}"),
                ));
            }
        }
        same_origin(headers).map_err(|why| refused(StatusCode::FORBIDDEN, why))?;
        Ok("local")
    }

    /// The configuration, or the 503 answer without one.
    pub(super) fn config(&self) -> Result<Arc<crate::config::Config>, ApiError> {
        match &self.config {
            Some(c) => Ok(c.read().unwrap_or_else(|p| p.into_inner()).clone()),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server has no channels folder",
            )),
        }
    }
}

/// Compares a presented token with ours in time that does not depend on
/// where they differ.
pub(super) fn tokens_equal(given: &str, ours: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    given.len() == ours.len() && bool::from(given.as_bytes().ct_eq(ours.as_bytes()))
}

/// Whether `host` (a Host header: name or address, and a port) names this
/// machine's loopback.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A browser names the page that makes a request in `Origin`: a request
/// from a page of another site (which could otherwise restart channels or
/// read the live stream through the user's browser) is refused. Clients
/// that are not browsers send no `Origin`.
pub(super) fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match authority {
        Some(a) if !host.is_empty() && a.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(format!(
            "a request from the page {origin:?} is refused: only this server's own pages ({host}) may make it"
        )),
    }
}
