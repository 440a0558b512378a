//! `/collections/{id}/schemas`: the JSON Schemas a claimed collection's
//! owner sets for its event names (see [`crate::schemas`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::collections::{member_view, owned, unclaimed};
use super::extract::{AuthUser, Json, Path};
use super::{ApiError, AppState, ErrorBody};
use crate::schemas::{compile, valid_pattern};
use crate::store::Change;

/// `{"schemas": {"<event name or pattern>": <schema>, …}}`
#[derive(Serialize, ToSchema)]
pub struct SchemaList {
    /// The schemas, by event name or pattern (`card:*`).
    #[schema(value_type = BTreeMap<String, Object>)]
    schemas: BTreeMap<String, Value>,
}

/// The schemas of a collection, as its owner and members see them.
#[utoipa::path(get, path = "/collections/{id}/schemas", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The schemas inserts are checked against.", body = SchemaList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither its owner nor a member.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<SchemaList>, ApiError> {
    let rule = member_view(&app, id, user).await?;
    Ok(axum::Json(SchemaList { schemas: rule.schemas.clone() }))
}

/// Sets the JSON Schema (draft 2020-12) that the data of events named
/// `event` must match from now on.
#[utoipa::path(put, path = "/collections/{id}/schemas/{event}", tag = "collections",
    description = "`event` is an event name, or a pattern: a prefix ending in `*` (`card:*`; `*` alone: every name). An insert is checked against the schema of its exact name, else of the longest pattern covering it; one that does not match is refused with 400 and the failing place in its data (`path`, a JSON Pointer). Events stored before are left as they are. A `$ref` may only point inside the schema. Every node checks by the new schema within a second.",
    params(("id" = Uuid, Path, description = "The collection."),
           ("event" = String, Path, description = "The event name or pattern.")),
    request_body(content = Object, description = "A JSON Schema, draft 2020-12, as an object (`{}` accepts anything, `{\"not\": {}}` nothing)."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection's schemas, with this one.", body = SchemaList),
        (status = 400, description = "The id is not a UUID, the name is empty or too long, or the schema is not a valid JSON Schema.", body = ErrorBody),
        (status = 403, description = "The caller does not own it.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
        (status = 422, description = "The body is not a JSON object.", body = ErrorBody),
    ))]
pub async fn put(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, event)): Path<(Uuid, String)>,
    Json(schema): Json<Value>,
) -> Result<axum::Json<SchemaList>, ApiError> {
    if !valid_pattern(&event) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the event name must be 1 to 200 bytes, without control characters",
        ));
    }
    let checked = schema.clone();
    tokio::task::spawn_blocking(move || compile(&checked))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    owned(&app, id, user).await?;
    tracing::info!(%user, collection = %id, %event, "schema set");
    set(&app, id, event, Some(schema.to_string())).await
}

/// Removes the schema of an event name or pattern.
#[utoipa::path(delete, path = "/collections/{id}/schemas/{event}", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection."),
           ("event" = String, Path, description = "The event name or pattern.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection's schemas, without this one.", body = SchemaList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own it.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, event)): Path<(Uuid, String)>,
) -> Result<axum::Json<SchemaList>, ApiError> {
    owned(&app, id, user).await?;
    tracing::info!(%user, collection = %id, %event, "schema removed");
    set(&app, id, event, None).await
}

async fn set(
    app: &super::App,
    collection: Uuid,
    event: String,
    schema: Option<String>,
) -> Result<axum::Json<SchemaList>, ApiError> {
    app.change(Change::Schema { collection, event, schema }).await?;
    let rules = app.rules().await?;
    let rule = rules.collections.get(&collection).ok_or_else(unclaimed)?;
    Ok(axum::Json(SchemaList { schemas: rule.schemas.clone() }))
}
