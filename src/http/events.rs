//! `POST /insert`, the event listings and `GET|POST /events/{id}/cancel`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{AuthUser, Json, Path};
use super::listing::{self, Paging};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{Event, EventName, check_timestamp, compact_json};
use crate::metrics::Metrics;
use crate::store::{Cancel, Inserted, Key, ListOf};

/// The body of `POST /insert`.
#[derive(Deserialize, ToSchema)]
pub struct Insert {
    /// The event's name; the latest published event of each name is the
    /// current state.
    #[schema(value_type = EventName)]
    event: String,
    /// The collection it belongs to.
    collection_id: Uuid,
    /// When to publish it, in UNIX seconds; a past time means now.
    #[schema(minimum = 0, maximum = 253402300799.0)]
    #[serde(deserialize_with = "crate::domain::integer")]
    timestamp: i64,
    /// Any JSON value.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
}

/// `{"event": record}`
#[derive(Serialize, ToSchema)]
pub struct One {
    event: Event,
}

/// `{"events": [...]}`, and `"cursor"` with `limit` (written by
/// [`listing`], page by page).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Many {
    events: Vec<Event>,
    /// With `limit` only: where the next page starts, or null at the end.
    cursor: Option<String>,
}

/// `{"info": [...], "events": [...]}`, and `"cursor"` with `limit`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OfUser {
    /// The events of the user's own collection.
    info: Vec<Event>,
    /// The events the user inserted.
    events: Vec<Event>,
    /// With `limit` only: where the next pages start, or null at the end.
    cursor: Option<String>,
}

/// Stores an event, due at its timestamp, and answers `{"event": record}`.
#[utoipa::path(post, path = "/insert", tag = "events", request_body = Insert,
    description = "With an `Idempotency-Key`, the insert happens once: a retry with the same key (from the same user, within `--idempotency-window`) stores nothing and answers the first insert's event again, with `Idempotent-Replayed: true`; the same key with another body is 409.",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
        description = "A key the client chose for this insert (a UUID, say), reused for its retries.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event is stored durably (or was, by the first insert with this key).", body = One,
            headers(("idempotent-replayed" = String, description = "`true` when the key stored the event earlier."))),
        (status = 400, description = "The body or the `Idempotency-Key` is invalid, or the data does not match the collection's schema for this event name (then `path` says where).", body = ErrorBody),
        (status = 403, description = "The collection is claimed and the caller is neither its owner nor a writer.", body = ErrorBody),
        (status = 409, description = "The `Idempotency-Key` was used for another insert.", body = ErrorBody),
        (status = 429, description = "The caller inserts faster than `--insert-rate` allows.", body = ErrorBody,
            headers(("retry-after" = String))),
    ))]
pub async fn insert(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    headers: HeaderMap,
    Json(body): Json<Insert>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let rules = app.rules().await?;
    if !rules.may_write(&body.collection_id, user_id) {
        return Err(ApiError::forbidden(
            "only the collection's owner and writers may insert into it",
        ));
    }
    if let Err(seconds) = app.inserts.take(user_id, &app.clock) {
        return Err(ApiError::too_many("too many inserts; slow down", seconds));
    }
    let event = Event {
        // Time-ordered, so the event-id index grows at its end instead of
        // dirtying a random page per insert (a quarter more inserts a
        // second on SQLite, BENCHMARKS.md).
        id: Uuid::now_v7(),
        user_id,
        collection_id: body.collection_id,
        event: EventName::parse(body.event)?.into_string(),
        timestamp: check_timestamp(body.timestamp)?,
        published: false,
        cancelled: false,
        data: compact_json(&body.data, app.max_depth)?,
    };
    if let Some(schemas) = rules.schemas.get(&event.collection_id) {
        let data: serde_json::Value =
            serde_json::from_str(event.data.get()).map_err(ApiError::internal)?;
        if let Err(refused) = schemas.check(&event.event, &data) {
            return Err(ApiError::invalid_at(refused.reason, refused.path));
        }
    }
    let now = app.clock.now_secs();
    let key = key.map(|key| Key { key, now, since: now - app.idempotency_window });
    match app.store.insert_event(event.clone(), key, Some(now)).await? {
        inserted @ (Inserted::New | Inserted::Published(_)) => {
            Metrics::add(&app.hub.metrics.inserted, 1);
            let mut answer = axum::Json(One { event }).into_response();
            if let Inserted::Published(answering) = inserted {
                // Dropped with the response's head, once that is in the
                // connection's buffer: the fan-out starts as it is sent.
                answer.extensions_mut().insert(answering);
            } else {
                app.wake.poke(); // for the scheduler to publish when due
            }
            Ok(answer)
        }
        Inserted::Again(first) => {
            let same = (&first.event, first.collection_id, first.timestamp, first.data.get())
                == (&event.event, event.collection_id, event.timestamp, event.data.get());
            if !same {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key was used for another insert; use a new key",
                ));
            }
            let replayed = [(HeaderName::from_static("idempotent-replayed"), "true")];
            Ok((replayed, axum::Json(One { event: first })).into_response())
        }
    }
}

/// The `Idempotency-Key` header, if given: 1 to 255 printable ASCII
/// characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    // `HeaderValue::to_str` also takes tabs: check the bytes themselves.
    match std::str::from_utf8(key) {
        Ok(key)
            if (1..=255).contains(&key.len())
                && key.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// The paging parameters of the listings, for the API description.
const PAGING: &str = "With `limit` (1 to 1000), one page of each list is answered, and `cursor`: pass it back for the next page; it is null once every list is exhausted. Without `limit`, everything (after `cursor`, if given), as Broker 1.x answered.";

/// `{"events": [...]}`: a collection's events by ascending timestamp.
#[utoipa::path(get, path = "/events/collections/{collection_id}", tag = "events",
    description = PAGING,
    params(
        ("collection_id" = Uuid, Path, description = "The collection."),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "Answer one page of at most this many events, and a cursor."),
        ("cursor" = Option<String>, Query, pattern = r"^(end|-?[0-9]{1,18}\.-?[0-9]{1,18})$", description = "Where the page starts: the cursor of the previous page."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection's events, published or not, by ascending timestamp.", body = Many),
        (status = 400, description = "The collection id is not a UUID, or `limit` or `cursor` is invalid.", body = ErrorBody),
        (status = 403, description = "The collection is private and the caller is neither its owner nor a member.", body = ErrorBody),
    ))]
pub async fn collection(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    Path(collection_id): Path<Uuid>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let paging = Paging::parse(query.as_deref())?;
    if !app.rules().await?.may_read(&collection_id, Some(user_id)) {
        return Err(ApiError::forbidden(
            "this collection is private: only its owner and members may read it",
        ));
    }
    listing::respond(app.store.clone(), &[("events", ListOf::Collection(collection_id))], paging)
}

/// `{"info": [...], "events": [...]}`: the events of the user's own
/// collection, and the events the user inserted.
#[utoipa::path(get, path = "/events/user", tag = "events", security(("bearer" = [])),
    description = PAGING,
    params(
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "Answer one page of at most this many events of each list, and a cursor."),
        ("cursor" = Option<String>, Query, pattern = r"^(end|-?[0-9]{1,18}\.-?[0-9]{1,18})~(end|-?[0-9]{1,18}\.-?[0-9]{1,18})$", description = "Where the pages start: the cursor of the previous answer."),
    ),
    responses(
        (status = 200, description = "The caller's events, by ascending timestamp.", body = OfUser),
        (status = 400, description = "`limit` or `cursor` is invalid.", body = ErrorBody),
    ))]
pub async fn user(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let paging = Paging::parse(query.as_deref())?;
    let user = app.store.user_by_id(user_id).await?.ok_or_else(super::users::gone)?;
    // A user's own collection may be one that somebody else made private.
    let info = match app.rules().await?.may_read(&user.collection_id, Some(user_id)) {
        true => ListOf::Collection(user.collection_id),
        false => ListOf::Nothing,
    };
    let lists = [("info", info), ("events", ListOf::User(user_id))];
    listing::respond(app.store.clone(), &lists, paging)
}

/// Cancels a future event of the caller's: `{"event": record}`.
#[utoipa::path(method(get, post), path = "/events/{id}/cancel", tag = "events",
    params(("id" = Uuid, Path, description = "The event to cancel.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event is cancelled and will never be published.", body = One),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The event belongs to another user.", body = ErrorBody),
        (status = 404, description = "No event has this id.", body = ErrorBody),
        (status = 409, description = "The event is already published or cancelled.", body = ErrorBody),
    ))]
pub async fn cancel(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<One>, ApiError> {
    match app.store.cancel_event(id, user_id).await? {
        Cancel::Cancelled(event) => {
            Metrics::add(&app.hub.metrics.cancelled, 1);
            Ok(axum::Json(One { event }))
        }
        Cancel::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "no such event")),
        Cancel::NotOwner => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the user who inserted an event may cancel it",
        )),
        Cancel::AlreadyPublished => {
            Err(ApiError::new(StatusCode::CONFLICT, "the event is already published"))
        }
        Cancel::AlreadyCancelled => {
            Err(ApiError::new(StatusCode::CONFLICT, "the event is already cancelled"))
        }
    }
}
