//! The live console at `/`: a page from which a person signs up, logs in,
//! watches the stream, inserts, cancels and browses events. Its HTML, CSS
//! and JavaScript are compiled into the binary; the page is a client of the
//! public API like any other, with no privileges of its own.

use axum::http::header;
use axum::response::IntoResponse;

/// Scripts, styles and connections from this origin only; no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// The console page.
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The live console.", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", include_str!("../console/index.html"))
}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "console",
    responses((status = 200, description = "The console's script.", content_type = "text/javascript; charset=utf-8", body = String)))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", include_str!("../console/console.js"))
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console.css", tag = "console",
    responses((status = 200, description = "The console's style sheet.", content_type = "text/css; charset=utf-8", body = String)))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", include_str!("../console/console.css"))
}
