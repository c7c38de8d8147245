//! The browser side, served on the client port next to the API: the JavaScript client
//! `ringcast.js` (always), and, when `web.pages` is on, the live scoreboard demo at `/`
//! and the cluster dashboard at `/dashboard`.
//!
//! The files live in `crates/ringcastd/web/` and are compiled into the binary
//! (`include_str!`), so every node serves the same client as the protocol it speaks and
//! nothing is read from disk at run time. They are sent with `Cache-Control: no-cache`
//! and an `ETag`: browsers keep a copy but revalidate it, and get `304 Not Modified`
//! while the node runs the same build. The pages only use the HTTP API (the dashboard
//! with the API key an operator types into it); this module adds no endpoint of its
//! own beyond the files.

use crate::node::Node;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, OnceLock};

/// The JavaScript client (docs/javascript.md).
pub const RINGCAST_JS: &str = include_str!("../web/ringcast.js");
/// The live scoreboard demo page.
pub const SCOREBOARD_HTML: &str = include_str!("../web/index.html");
/// The cluster dashboard page.
pub const DASHBOARD_HTML: &str = include_str!("../web/dashboard.html");

/// A served file: its body, content type and entity tag.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

/// FNV-1a, 64 bits: a stable fingerprint of a file's bytes for its `ETag`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn asset(body: &'static str, content_type: &'static str) -> Asset {
    let tag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    // A quoted hex string is always a valid header value.
    let etag = HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    Asset { body, content_type, etag }
}

fn assets() -> &'static [Asset; 3] {
    static ASSETS: OnceLock<[Asset; 3]> = OnceLock::new();
    ASSETS.get_or_init(|| {
        [
            asset(RINGCAST_JS, "text/javascript; charset=utf-8"),
            asset(SCOREBOARD_HTML, "text/html; charset=utf-8"),
            asset(DASHBOARD_HTML, "text/html; charset=utf-8"),
        ]
    })
}

fn serve(a: &Asset, headers: &HeaderMap) -> Response {
    let common = [
        (header::CONTENT_TYPE, HeaderValue::from_static(a.content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, a.etag.clone()),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/").as_bytes() == a.etag.as_bytes());
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (StatusCode::OK, common, a.body).into_response()
}

fn pages_disabled() -> Response {
    crate::http::error_response(
        ringcast_proto::ErrorCode::NotFound,
        "the web pages are disabled on this node (web.pages = false); /ringcast.js is always served",
    )
}

/// `GET /ringcast.js`.
pub(crate) async fn ringcast_js(headers: HeaderMap) -> Response {
    serve(&assets()[0], &headers)
}

/// `GET /`: the live scoreboard.
pub(crate) async fn scoreboard(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !node.config.web.pages {
        return pages_disabled();
    }
    serve(&assets()[1], &headers)
}

/// `GET /dashboard`: the cluster dashboard.
pub(crate) async fn dashboard(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !node.config.web.pages {
        return pages_disabled();
    }
    serve(&assets()[2], &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_revalidate() {
        let a = &assets()[0];
        assert_eq!(serve(a, &HeaderMap::new()).status(), StatusCode::OK);
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, a.etag.clone());
        assert_eq!(serve(a, &h).status(), StatusCode::NOT_MODIFIED);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\", W/\"nope\""));
        assert_eq!(serve(a, &h).status(), StatusCode::OK);
        assert_ne!(assets()[0].etag, assets()[1].etag);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
