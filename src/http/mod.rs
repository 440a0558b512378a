//! The HTTP API: one file per resource, the extractors and the error type.

mod console;
mod error;
mod events;
mod extract;
mod listing;
mod openapi;
pub(crate) mod ops;
pub(crate) mod stream;
mod users;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::{ApiError, ErrorBody};

use crate::auth::{Keys, Passwords};
use crate::clock::Clock;
use crate::feed::Feed;
use crate::hub::Hub;
use crate::scheduler::Wake;
use crate::store::Store;

/// What every handler can reach.
pub struct App {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// What feeds the hub, in sequence order.
    pub feed: Arc<Feed>,
    /// The scheduler's doorbell.
    pub wake: Arc<Wake>,
    /// JWT keys, once the secret is known (on a shared database, once the
    /// database has been reached).
    pub keys: OnceLock<Keys>,
    /// Password hashing.
    pub passwords: Passwords,
    /// The time source.
    pub clock: Clock,
    /// Whether `/events` refuses anonymous subscribers.
    pub private_stream: bool,
    /// The SSE `retry:` value, in milliseconds.
    pub retry_ms: u64,
    /// How deeply an event's data may nest arrays and objects.
    pub max_depth: usize,
    /// How long an event stream's peer may refuse data before it is dropped.
    pub write_stall: std::time::Duration,
    /// Origins allowed by CORS.
    pub origins: Vec<HeaderValue>,
}

impl App {
    /// The JWT keys, or 503 while the secret is still unknown.
    pub fn keys(&self) -> Result<&Keys, ApiError> {
        self.keys.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database is not reachable yet")
        })
    }
}

/// Handler state.
pub type AppState = Arc<App>;

/// The API's routes with CORS for the app's origins and a body limit of
/// `max_body` bytes.
pub fn router(app: AppState, max_body: usize) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(app.origins.clone()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
        .allow_credentials(true);
    Router::new()
        .route("/users", post(users::sign_up))
        .route("/login", post(users::log_in))
        .route("/insert", post(events::insert))
        .route("/events", get(stream::subscribe))
        .route("/events/user", get(events::user))
        .route("/events/collections/{collection_id}", get(events::collection))
        .route("/events/{id}/cancel", get(events::cancel).post(events::cancel))
        .route("/healthz", get(ops::health))
        .route("/readyz", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::description))
        .route("/", get(console::page))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .fallback(no_route)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), ops::track))
        .layer(cors)
        .with_state(app)
}

/// Answers 404 for a path no route serves.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {}", uri.path()))
}
