//! The web console: the fleet page (`/`), a channel's page
//! (`/channels/{name}`) and their scripts and style, embedded in the
//! binary from `orchestrator/web/` so that the console works offline and
//! with nothing else installed.
//!
//! The pages are static; their scripts read the API (`/api/v1/...`), the
//! event stream and the live WebSocket of the same origin. Every response
//! carries a Content-Security-Policy that allows nothing but this origin:
//! no inline script, no third-party font, script or connection, so that
//! text from a channel (a schema's `doc`, an error message) can never run
//! as code even if a page forgot to treat it as text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const FLEET_PAGE: &str = include_str!("../web/fleet.html");
const CHANNEL_PAGE: &str = include_str!("../web/channel.html");

/// Everything under `/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/console.css"),
    },
    Asset {
        name: "common.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/common.js"),
    },
    Asset {
        name: "fleet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/fleet.js"),
    },
    Asset {
        name: "channel.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/channel.js"),
    },
    Asset {
        name: "holds.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/holds.js"),
    },
    Asset {
        name: "export.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/export.js"),
    },
    Asset {
        name: "register.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/register.js"),
    },
    Asset {
        name: "stripchart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/stripchart.js"),
    },
];

/// Only this origin, for everything; images also as `data:` (the empty
/// favicon).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

fn respond(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Embedded in this binary: a new orchestrator serves new files.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the fleet page.
pub fn fleet_page() -> Response {
    respond(StatusCode::OK, "text/html; charset=utf-8", FLEET_PAGE)
}

/// `GET /channels/{name}`: a channel's page; 404 (the same page, which
/// says so) for a channel the orchestrator does not know.
pub fn channel_page(known: bool) -> Response {
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    respond(status, "text/html; charset=utf-8", CHANNEL_PAGE)
}

/// `GET /assets/{file}`; `None` for a file that is not embedded.
/// The console's scripts: name and text.
#[cfg(test)]
pub(crate) fn scripts() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS
        .iter()
        .filter(|a| a.name.ends_with(".js"))
        .map(|a| (a.name, a.body))
}

pub fn asset(name: &str) -> Option<Response> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| respond(StatusCode::OK, a.content_type, a.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages load only embedded files, by paths the server answers,
    /// and nothing from another origin.
    #[test]
    fn the_pages_refer_only_to_embedded_assets() {
        for page in [FLEET_PAGE, CHANNEL_PAGE] {
            for part in page.split(['"', '\'']) {
                if let Some(name) = part.strip_prefix("/assets/") {
                    assert!(asset(name).is_some(), "{part} is not embedded");
                }
                assert!(!part.contains("//"), "a page refers to {part}");
            }
            assert!(
                !page.contains("<script>"),
                "inline scripts are refused by the CSP"
            );
            assert!(
                !page.contains("style="),
                "inline styles are refused by the CSP"
            );
        }
    }
}
