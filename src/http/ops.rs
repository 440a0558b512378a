//! Operations: `GET /healthz`, `GET /readyz`, `GET /metrics`, and the
//! middleware that gives every request an id and records its metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::{ApiError, AppState, ErrorBody};
use crate::metrics::Gauges;

/// The request-id header, read from a proxy if it set one, and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// `{"status": "..."}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Status)))]
pub async fn health() -> axum::Json<Status> {
    axum::Json(Status { status: "ok" })
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = Status),
        (status = 503, description = "The database does not answer.", body = ErrorBody,
            headers(("retry-after" = String))),
    ))]
pub async fn ready(State(app): State<AppState>) -> Result<axum::Json<Status>, ApiError> {
    app.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database does not answer")
    })?;
    app.rules().await?;
    Ok(axum::Json(Status { status: "ready" }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let (logins, clock) = (&app.logins, &app.clock);
    let gauges = Gauges {
        subscribers: app.hub.subscribers(),
        pending: app.store.pending().await?,
        throttled: logins.names.throttled(clock) + logins.addresses.throttled(clock),
    };
    let body = app.hub.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// A request id: the caller's `x-request-id` if it is short and printable,
/// else the next number of this process.
pub fn request_id(given: Option<&HeaderValue>) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    given
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map_or_else(|| format!("{:x}", NEXT.fetch_add(1, Ordering::Relaxed)), str::to_owned)
}

/// Runs a request inside a span carrying its id, answers the id, and
/// records the request's route, status and latency.
pub async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers().get(REQUEST_ID));
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!("request", %id, method = %request.method(), %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    app.hub.metrics.request(route, status.as_u16(), started.elapsed());
    span.in_scope(|| {
        if status.is_server_error() || status.is_client_error() {
            tracing::info!(status = status.as_u16(), elapsed = ?started.elapsed(), "answered");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed = ?started.elapsed(), "answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
