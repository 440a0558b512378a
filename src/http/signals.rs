//! `POST /signal`: a message for the streams of a collection that are open
//! now, never stored (typing indicators, cursors, "moving this card").
//!
//! The sender needs the permission an insert needs; the signal goes to
//! this node's streams at once and, on a shared store, to the other
//! nodes' through the store ([`crate::feed::Feed::signal`]). A signal is
//! delivered at most once, to streams that asked for signals
//! (`?signals=true`), may read the collection and keep up; it has no
//! sequence number, so it is never replayed and never moves a client's
//! resume position.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{AuthUser, Json};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{EventName, Signal, compact_json};
use crate::store::SIGNAL_BYTES;

/// The body of `POST /signal`.
#[derive(Deserialize, ToSchema)]
pub struct SignalBody {
    /// The collection whose streams receive it.
    collection_id: Uuid,
    /// Its name, as an event's.
    #[schema(value_type = EventName)]
    event: String,
    /// Any JSON value; with the name, at most 7,700 bytes once compacted.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
}

/// `{"signal": ...}`: what the streams received.
#[derive(serde::Serialize, ToSchema)]
pub struct Sent {
    signal: Signal,
}

/// Sends a signal to the streams of a collection open now.
#[utoipa::path(post, path = "/signal", tag = "events", request_body = SignalBody,
    description = "Sends a signal to the streams of `collection_id` that asked for signals (`GET /events?collection_id=…&signals=true`), on every node: an `event: signal` frame without id whose data is `{\"collection_id\", \"event\", \"user_id\", \"data\"}`. Nothing is stored: a signal is never listed, replayed or resumed, and reaches only the streams open now, at most once (a stream far behind misses it). Private collections' signals reach their readers only.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Handed to the streams.", body = Sent),
        (status = 403, description = "The collection is claimed and the caller is neither its owner nor a writer.", body = ErrorBody),
        (status = 413, description = "The signal is larger than 7,700 bytes (name and data).", body = ErrorBody),
        (status = 429, description = "The caller signals faster than `--signal-rate` allows.", body = ErrorBody,
            headers(("retry-after" = String))),
    ))]
pub async fn send(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    Json(body): Json<SignalBody>,
) -> Result<axum::Json<Sent>, ApiError> {
    if !app.rules().await?.may_write(&body.collection_id, user_id) {
        return Err(ApiError::forbidden(
            "only the collection's owner and writers may signal to it",
        ));
    }
    let signal = Signal {
        collection_id: body.collection_id,
        event: EventName::parse(body.event)?.into_string(),
        user_id,
        data: compact_json(&body.data, app.max_depth)?,
    };
    // The node's name and the ids take the rest of what the store carries.
    if signal.event.len() + signal.data.get().len() > SIGNAL_BYTES - 200 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a signal's name and data are at most {} bytes", SIGNAL_BYTES - 200),
        ));
    }
    if let Err(seconds) = app.signals.take(user_id, &app.clock) {
        return Err(ApiError::too_many("too many signals; slow down", seconds));
    }
    app.feed.signal(&signal).await?;
    Ok(axum::Json(Sent { signal }))
}
