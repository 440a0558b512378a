//! The HTTP API: one file per resource, the extractors and the error type.

mod admin;
mod collections;
mod console;
mod error;
mod events;
mod extract;
mod listing;
mod openapi;
pub(crate) mod ops;
mod schemas;
mod signals;
pub(crate) mod stream;
mod users;
mod webhooks;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{get, patch, post, put};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::{ApiError, ErrorBody};

use crate::auth::{Claims, Keys, Passwords};
use crate::clock::Clock;
use crate::feed::Feed;
use crate::hub::Hub;
use crate::policy::AccessState;
use crate::scheduler::Wake;
use crate::store::Store;
use crate::store::{Change, Changed};
use crate::throttle::{Failures, Proxy, Rate};

/// What every handler can reach.
pub struct App {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// Who has which collection open.
    pub presence: Arc<crate::presence::Presence>,
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
    /// The streams served through hyper, watched for stalls.
    pub stalls: Arc<crate::serve::stalls::Stalls>,
    /// Origins allowed by CORS.
    pub origins: Vec<HeaderValue>,
    /// Failed logins per username and per client address.
    pub logins: Logins,
    /// Inserts per user, if limited.
    pub inserts: Rate,
    /// Signals per user.
    pub signals: Rate,
    /// Sign-ups per client address (an hour's worth at once).
    pub signups: Rate<IpAddr>,
    /// The fewest characters of a new password (0: no rule).
    pub min_password_length: usize,
    /// How long idempotency keys are remembered, in seconds.
    pub idempotency_window: i64,
    /// What webhooks may reach.
    pub webhooks: crate::webhooks::Settings,
    /// Most webhooks per collection.
    pub max_webhooks: usize,
    /// Tells this node's webhook deliveries that an endpoint changed.
    pub webhooks_changed: Arc<tokio::sync::Notify>,
    /// The `Strict-Transport-Security` value sent over HTTPS, if any.
    pub hsts: Option<HeaderValue>,
}

/// Failed logins, counted per username and per client address.
pub struct Logins {
    /// By username as given (known or not).
    pub names: Failures<str>,
    /// By client address.
    pub addresses: Failures<IpAddr>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted: Vec<Proxy>,
}

impl App {
    /// The JWT keys, or 503 while the secret is still unknown.
    pub fn keys(&self) -> Result<&Keys, ApiError> {
        self.keys.get().ok_or_else(not_yet)
    }

    /// The access rules; read from the store if they never were (the
    /// database was unreachable since the start), 503 if it still is.
    pub async fn rules(&self) -> Result<Arc<AccessState>, ApiError> {
        if let Some(rules) = self.hub.access.loaded() {
            return Ok(rules);
        }
        self.hub.refresh_access(self.store.as_ref()).await?;
        self.hub.access.loaded().ok_or_else(not_yet)
    }

    /// The claims of a token that verifies and was not revoked.
    pub async fn session(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.keys()?.verify(token, &self.clock)?;
        match self.rules().await?.refuses(&claims) {
            Some(why) => Err(ApiError::unauthorized(why)),
            None => Ok(claims),
        }
    }

    /// Applies a change to the rules and installs the new rules on this
    /// node at once (other nodes follow within [`crate::cluster::RULES_POLL`]).
    pub async fn change(&self, change: Change) -> Result<Changed, ApiError> {
        let changed = self.store.change(change).await?;
        self.hub.refresh_access(self.store.as_ref()).await?;
        Ok(changed)
    }
}

fn not_yet() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database is not reachable yet")
}

/// Handler state.
pub type AppState = Arc<App>;

/// CORS for `origins`: the one definition of it, which the router applies
/// and the lean stream path runs too (`crate::serve`), so that both answer
/// with the same headers.
pub fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.to_vec()))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("idempotency-key"),
        ])
        // A page reads how long to wait, and whether an insert was a retry.
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("idempotent-replayed"),
        ])
        .allow_credentials(true)
}

/// The API's routes with CORS for the app's origins and a body limit of
/// `max_body` bytes.
pub fn router(app: AppState, max_body: usize) -> Router {
    let cors = cors(&app.origins);
    Router::new()
        .route("/users", post(users::sign_up))
        .route("/login", post(users::log_in))
        .route("/logout", post(users::log_out))
        .route("/refresh", post(users::refresh))
        .route("/users/me", get(users::me))
        .route("/users/me/password", post(users::change_password))
        .route("/users/password-rule", get(users::password_rule))
        .route("/collections", post(collections::claim))
        .route("/collections/{id}", get(collections::show).patch(collections::update))
        .route("/collections/{id}/presence", get(collections::presence))
        .route("/collections/{id}/schemas", get(schemas::list))
        .route("/collections/{id}/schemas/{event}", put(schemas::put).delete(schemas::delete))
        .route("/collections/{id}/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/collections/{id}/webhooks/{webhook_id}",
            get(webhooks::show).patch(webhooks::update).delete(webhooks::delete),
        )
        .route("/collections/{id}/webhooks/{webhook_id}/secret", post(webhooks::rotate))
        .route(
            "/collections/{id}/members/{username}",
            put(collections::add_member).delete(collections::remove_member),
        )
        .route("/admin/users", get(admin::users))
        .route("/admin/users/{id}", patch(admin::update_user))
        .route("/admin/collections/{id}", get(admin::collection))
        .route("/insert", post(events::insert))
        .route("/signal", post(signals::send))
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
