//! `/collections`: claiming a collection, making it private or public, and
//! its members.
//!
//! A user claims a collection id that holds no events of other users; from
//! then on only the owner and writers insert into it, and, while it is
//! private, only the owner, writers and readers read it (everyone else gets
//! 403: the existence of a claimed collection is not a secret, its events
//! are). Only the owner manages it.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{AuthUser, Json, Path};
use super::{ApiError, App, AppState, ErrorBody};
use crate::policy::{Retention, Role};
use crate::presence::Presents;
use crate::store::{Change, Changed, Collection};

/// The body of `POST /collections`.
#[derive(Deserialize, ToSchema)]
pub struct Claim {
    /// The collection to claim: it must hold no events of other users.
    collection_id: Uuid,
    /// Whether only the owner and members may read it (default true).
    #[serde(default = "yes")]
    private: bool,
}

fn yes() -> bool {
    true
}

/// The body of `PATCH /collections/{id}`: what changes (what is left
/// out, or null, does not).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Private from now on, or public.
    private: Option<bool>,
    /// Which events it keeps from now on: `{}` all of them (the default),
    /// `max_age` (seconds), `keep_latest` (per name), or both.
    #[serde(default, deserialize_with = "object")]
    #[schema(value_type = Option<Retention>)]
    retention: Option<Retention>,
}

/// A retention given as a JSON object only (serde would also take an
/// array of its fields).
fn object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Retention>, D::Error> {
    let Some(map) = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? else {
        return Ok(None);
    };
    serde_json::from_value(map.into()).map(Some).map_err(serde::de::Error::custom)
}

/// The body of `PUT /collections/{id}/members/{username}`.
#[derive(Deserialize, ToSchema)]
pub struct Membership {
    /// `reader` (may read) or `writer` (may read and insert).
    role: Role,
}

/// Claims a collection and answers it.
#[utoipa::path(post, path = "/collections", tag = "collections", request_body = Claim,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The collection is the caller's.", body = Collection),
        (status = 409, description = "It is claimed already, or holds events of other users.", body = ErrorBody),
    ))]
pub async fn claim(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<Claim>,
) -> Result<(StatusCode, axum::Json<Collection>), ApiError> {
    let (collection, private) = (body.collection_id, body.private);
    match app.change(Change::Claim { collection, owner: user, private }).await? {
        Changed::Done => {
            tracing::info!(%user, %collection, private, "collection claimed");
            Ok((StatusCode::CREATED, show_to(&app, collection).await?))
        }
        Changed::Claimed(owner) if owner == user => {
            Err(ApiError::new(StatusCode::CONFLICT, "you own this collection already"))
        }
        Changed::Claimed(_) => {
            Err(ApiError::new(StatusCode::CONFLICT, "another user owns this collection"))
        }
        Changed::WrittenByOthers | Changed::NotFound => Err(ApiError::new(
            StatusCode::CONFLICT,
            "the collection holds events of other users; claim a new collection id",
        )),
    }
}

/// The collection with its owner and members, for the owner and members.
#[utoipa::path(get, path = "/collections/{id}", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection.", body = Collection),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither its owner nor a member.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn show(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Collection>, ApiError> {
    member_view(&app, id, user).await?;
    show_to(&app, id).await
}

/// Who has the collection open now.
#[utoipa::path(get, path = "/collections/{id}/presence", tag = "collections",
    description = "The users whose streams name the collection now (over every node), with their connection count and since when (a user whose last stream closed stays for `--presence-grace-ms`), and the anonymous streams' count. Any collection, claimed or not; a private one's to its readers only.",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Who is present.", body = Presents),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The collection is private and the caller is neither its owner nor a member.", body = ErrorBody),
    ))]
pub async fn presence(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Presents>, ApiError> {
    if !app.rules().await?.may_read(&id, Some(user)) {
        return Err(ApiError::forbidden("only the owner and members see a private collection"));
    }
    Ok(axum::Json(app.presence.of(id).await))
}

/// Makes the caller's collection private or public, or sets its retention.
#[utoipa::path(patch, path = "/collections/{id}", tag = "collections", request_body = Update,
    description = "Retention deletes, within a minute and in the background, the published and cancelled events older than `max_age` (by their timestamp) and the published events that have `keep_latest` later ones of the same name; the latest published event of each name and pending events always stay.",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection, changed; open streams follow within a second.", body = Collection),
        (status = 400, description = "The id is not a UUID, or a limit is below 1.", body = ErrorBody),
        (status = 403, description = "The caller does not own it.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn update(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<Update>,
) -> Result<axum::Json<Collection>, ApiError> {
    let retention = body
        .retention
        .map(Retention::checked)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    owned(&app, id, user).await?;
    if let Some(private) = body.private {
        app.change(Change::Privacy { collection: id, private }).await?;
        tracing::info!(%user, collection = %id, private, "collection privacy changed");
    }
    if let Some(retention) = retention {
        app.change(Change::Retention { collection: id, retention }).await?;
        tracing::info!(%user, collection = %id, ?retention, "collection retention changed");
    }
    show_to(&app, id).await
}

/// Gives a user a role in the caller's collection.
#[utoipa::path(put, path = "/collections/{id}/members/{username}", tag = "collections",
    request_body = Membership,
    params(("id" = Uuid, Path, description = "The collection."),
           ("username" = String, Path, description = "The member's login name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection with the member.", body = Collection),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own it.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or no user has this name.", body = ErrorBody),
        (status = 409, description = "The user is the collection's owner.", body = ErrorBody),
    ))]
pub async fn add_member(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, username)): Path<(Uuid, String)>,
    Json(body): Json<Membership>,
) -> Result<axum::Json<Collection>, ApiError> {
    set_member(&app, id, user, &username, Some(body.role)).await
}

/// Takes a user's role in the caller's collection away.
#[utoipa::path(delete, path = "/collections/{id}/members/{username}", tag = "collections",
    params(("id" = Uuid, Path, description = "The collection."),
           ("username" = String, Path, description = "The member's login name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection without the member; their open streams stop receiving its events within a second.", body = Collection),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller does not own it.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection, or no user has this name.", body = ErrorBody),
        (status = 409, description = "The user is the collection's owner.", body = ErrorBody),
    ))]
pub async fn remove_member(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, username)): Path<(Uuid, String)>,
) -> Result<axum::Json<Collection>, ApiError> {
    set_member(&app, id, user, &username, None).await
}

async fn set_member(
    app: &App,
    id: Uuid,
    owner: Uuid,
    username: &str,
    role: Option<Role>,
) -> Result<axum::Json<Collection>, ApiError> {
    owned(app, id, owner).await?;
    let member = app
        .store
        .user_by_name(username)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no user has this name"))?;
    if member.id == owner {
        return Err(ApiError::new(StatusCode::CONFLICT, "the owner cannot also be a member"));
    }
    app.change(Change::Member { collection: id, user: member.id, role }).await?;
    let role = role.map(Role::as_str);
    tracing::info!(%owner, collection = %id, member = %username, ?role, "collection member changed");
    show_to(app, id).await
}

/// The rule of the claimed collection `id`, if `user` is its owner or a
/// member (what they may see of it).
pub(super) async fn member_view(
    app: &App,
    id: Uuid,
    user: Uuid,
) -> Result<std::sync::Arc<crate::policy::Rule>, ApiError> {
    let rules = app.rules().await?;
    let rule = rules.collections.get(&id).ok_or_else(unclaimed)?;
    if rule.owner != user && !rule.members.contains_key(&user) {
        return Err(ApiError::forbidden("only the owner and members see a collection"));
    }
    Ok(rule.clone())
}

/// Fails unless `user` owns the claimed collection `id`.
pub(super) async fn owned(app: &App, id: Uuid, user: Uuid) -> Result<(), ApiError> {
    let rules = app.rules().await?;
    let rule = rules.collections.get(&id).ok_or_else(unclaimed)?;
    if rule.owner != user {
        return Err(ApiError::forbidden("only the collection's owner may change it"));
    }
    Ok(())
}

/// 404: nobody claimed the collection.
pub(super) fn unclaimed() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "nobody claimed this collection")
}

/// The claimed collection `id` as stored.
pub(super) async fn show_to(app: &App, id: Uuid) -> Result<axum::Json<Collection>, ApiError> {
    let collection = app.store.collection(id).await?.ok_or_else(unclaimed)?;
    Ok(axum::Json(collection))
}
