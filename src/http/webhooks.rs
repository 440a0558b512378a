//! `/collections/{id}/webhooks`: the endpoints a claimed collection's owner
//! has its published events POSTed to (see [`crate::webhooks`]).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::collections::owned;
use super::extract::{AuthUser, Json, Path};
use super::{ApiError, App, AppState, ErrorBody};
use crate::schemas::valid_pattern;
use crate::store::Webhook;
use crate::webhooks::{Attempt, check_url, new_secret};

/// Most event names or patterns a webhook names.
const MAX_EVENTS: usize = 100;
/// Longest description.
const MAX_DESCRIPTION: usize = 500;

/// The body of `POST /collections/{id}/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where events are POSTed: `https://` (`http://` only with
    /// `--webhook-allow-http`), a public address (unless
    /// `--webhook-allow-private`).
    #[schema(min_length = 1, max_length = 2000)]
    url: String,
    /// The event names, or prefixes ending in `*` (`card:*`), it receives
    /// (none or empty: every event of the collection).
    #[serde(default)]
    #[schema(max_items = 100)]
    events: Vec<String>,
    /// Words for people.
    #[serde(default)]
    #[schema(max_length = 500)]
    description: String,
}

/// The body of `PATCH /collections/{id}/webhooks/{webhook_id}`: what
/// changes (what is left out, or null, does not).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdate {
    /// A new URL.
    url: Option<String>,
    /// New event names or patterns (empty: every event).
    events: Option<Vec<String>>,
    /// New words for people.
    description: Option<String>,
    /// `true` stops delivery; `false` resumes it (after a failure too) at
    /// the first event not yet delivered.
    paused: Option<bool>,
}

/// A webhook as its owner sees it.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    /// Its id.
    id: Uuid,
    /// The collection whose events it receives.
    collection_id: Uuid,
    /// Where events are POSTed.
    url: String,
    /// The event names or patterns it receives (empty: every event).
    events: Vec<String>,
    /// Words for people.
    description: String,
    /// Whether delivery is stopped (by its owner, or after a failure).
    paused: bool,
    /// Why delivery gave up, if it did (cleared when resumed).
    failing: Option<String>,
    /// The sequence number of the last event delivered or passed over.
    delivered: i64,
    /// When it was registered (UNIX seconds).
    created: i64,
    /// The latest attempts, newest first (at most 10).
    attempts: Vec<Attempt>,
    /// The signing secret (`whsec_…`): only in the answer that created or
    /// rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookView {
    fn of(hook: Webhook, show_secret: bool) -> Self {
        Self {
            id: hook.id,
            collection_id: hook.collection,
            attempts: serde_json::from_str(&hook.attempts).unwrap_or_default(),
            secret: show_secret.then_some(hook.secret),
            url: hook.url,
            events: hook.events,
            description: hook.description,
            paused: hook.paused,
            failing: hook.failing,
            delivered: hook.delivered,
            created: hook.created,
        }
    }
}

/// `{"webhooks": [...]}`
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    /// The collection's webhooks, oldest first.
    webhooks: Vec<WebhookView>,
}

/// Registers a webhook: from now on the collection's published events are
/// POSTed to it, signed.
#[utoipa::path(post, path = "/collections/{id}/webhooks", tag = "collections", request_body = NewWebhook,
    description = "Each event published from now on (an insert, or a future event when its time comes) whose name the webhook asks for is POSTed to `url` as `{\"type\":\"event.published\",\"timestamp\":\"<RFC 3339>\",\"data\":<the event>}`, signed as Standard Webhooks says: headers `webhook-id` (the event's id: the same on every retry), `webhook-timestamp` and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` keyed by the secret). Events go one at a time in sequence order; an answer other than 2xx (redirects included) or none within 10 s is retried after 1, 2, 4 … s, at most 5 min apart, and after `--webhook-retry-for` the webhook is paused with the reason in `failing`. The secret is in this answer only.",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The webhook, with its secret.", body = WebhookView),
        (status = 400, description = "The id is not a UUID, or the URL, an event name or the description is not allowed.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
        (status = 409, description = "The collection has `--max-webhooks` webhooks already.", body = ErrorBody),
    ))]
pub async fn create(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<NewWebhook>,
) -> Result<(StatusCode, axum::Json<WebhookView>), ApiError> {
    check(&app, &body.url, &body.events, &body.description)?;
    owned(&app, id, user).await?;
    let hook = Webhook {
        id: Uuid::new_v4(),
        collection: id,
        url: body.url,
        events: body.events,
        description: body.description,
        secret: new_secret().map_err(ApiError::internal)?,
        paused: false,
        failing: None,
        delivered: app.store.head().await?,
        attempts: "[]".into(),
        created: app.clock.now_secs(),
    };
    if !app.store.add_webhook(hook.clone(), app.max_webhooks).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a collection has at most {} webhooks", app.max_webhooks),
        ));
    }
    app.webhooks_changed.notify_one();
    tracing::info!(%user, collection = %id, webhook = %hook.id, url = %hook.url, "webhook registered");
    Ok((StatusCode::CREATED, axum::Json(WebhookView::of(hook, true))))
}

/// The collection's webhooks.
#[utoipa::path(get, path = "/collections/{id}/webhooks", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Its webhooks, oldest first, without their secrets.", body = WebhookList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<WebhookList>, ApiError> {
    owned(&app, id, user).await?;
    let hooks = app.store.webhooks(Some(id)).await?;
    Ok(axum::Json(WebhookList {
        webhooks: hooks.into_iter().map(|h| WebhookView::of(h, false)).collect(),
    }))
}

/// One webhook, with its latest attempts.
#[utoipa::path(get, path = "/collections/{id}/webhooks/{webhook_id}", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection."),
           ("webhook_id" = Uuid, Path, description = "The webhook.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhook, without its secret.", body = WebhookView),
        (status = 400, description = "An id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or it has no such webhook.", body = ErrorBody),
    ))]
pub async fn show(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, webhook)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<WebhookView>, ApiError> {
    let hook = find(&app, id, webhook, user).await?;
    Ok(axum::Json(WebhookView::of(hook, false)))
}

/// Changes a webhook's URL, events or description, or pauses or resumes it.
#[utoipa::path(patch, path = "/collections/{id}/webhooks/{webhook_id}", tag = "collections",
    request_body = WebhookUpdate,
    params(("id" = Uuid, Path, description = "The collection."),
           ("webhook_id" = Uuid, Path, description = "The webhook.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhook, changed (delivery follows within a second).", body = WebhookView),
        (status = 400, description = "An id is not a UUID, or the URL, an event name or the description is not allowed.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or it has no such webhook.", body = ErrorBody),
    ))]
pub async fn update(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, webhook)): Path<(Uuid, Uuid)>,
    Json(body): Json<WebhookUpdate>,
) -> Result<axum::Json<WebhookView>, ApiError> {
    let mut hook = find(&app, id, webhook, user).await?;
    hook.url = body.url.unwrap_or(hook.url);
    hook.events = body.events.unwrap_or(hook.events);
    hook.description = body.description.unwrap_or(hook.description);
    check(&app, &hook.url, &hook.events, &hook.description)?;
    if let Some(paused) = body.paused {
        hook.paused = paused;
        if !paused {
            hook.failing = None;
        }
    }
    save(&app, hook, false).await
}

/// Gives a webhook a new signing secret, used from the next attempt on.
#[utoipa::path(post, path = "/collections/{id}/webhooks/{webhook_id}/secret", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection."),
           ("webhook_id" = Uuid, Path, description = "The webhook.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhook, with its new secret (the old one signs nothing sent after about a second).", body = WebhookView),
        (status = 400, description = "An id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or it has no such webhook.", body = ErrorBody),
    ))]
pub async fn rotate(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, webhook)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<WebhookView>, ApiError> {
    let mut hook = find(&app, id, webhook, user).await?;
    hook.secret = new_secret().map_err(ApiError::internal)?;
    save(&app, hook, true).await
}

/// Removes a webhook: nothing more is sent to it.
#[utoipa::path(delete, path = "/collections/{id}/webhooks/{webhook_id}", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection."),
           ("webhook_id" = Uuid, Path, description = "The webhook.")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "It is gone (an attempt under way may still finish)."),
        (status = 400, description = "An id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own the collection.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or it has no such webhook.", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, webhook)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find(&app, id, webhook, user).await?;
    if !app.store.delete_webhook(webhook).await? {
        return Err(no_webhook());
    }
    app.webhooks_changed.notify_one();
    tracing::info!(%user, collection = %id, %webhook, "webhook removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The webhook `webhook` of the caller's collection `id`.
async fn find(app: &App, id: Uuid, webhook: Uuid, user: Uuid) -> Result<Webhook, ApiError> {
    owned(app, id, user).await?;
    let hooks = app.store.webhooks(Some(id)).await?;
    hooks.into_iter().find(|h| h.id == webhook).ok_or_else(no_webhook)
}

fn no_webhook() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "this collection has no such webhook")
}

/// 400 unless the URL, event names and description are allowed.
fn check(app: &App, url: &str, events: &[String], description: &str) -> Result<(), ApiError> {
    let invalid = |message: String| Err(ApiError::new(StatusCode::BAD_REQUEST, message));
    if let Err(reason) = check_url(url, &app.webhooks) {
        return invalid(reason);
    }
    if events.len() > MAX_EVENTS || !events.iter().all(|e| valid_pattern(e)) {
        return invalid(format!(
            "a webhook names at most {MAX_EVENTS} events or patterns of 1 to 200 bytes, without control characters"
        ));
    }
    if description.len() > MAX_DESCRIPTION {
        return invalid(format!("a description has at most {MAX_DESCRIPTION} bytes"));
    }
    Ok(())
}

async fn save(
    app: &App,
    hook: Webhook,
    show_secret: bool,
) -> Result<axum::Json<WebhookView>, ApiError> {
    if !app.store.edit_webhook(hook.clone()).await? {
        return Err(no_webhook());
    }
    app.webhooks_changed.notify_one();
    Ok(axum::Json(WebhookView::of(hook, show_secret)))
}
