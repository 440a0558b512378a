//! `/admin`: what administrators (made by `broker admin grant`) may do.
//!
//! List and search users, disable and enable them, reset their passwords,
//! and see any claimed collection. Every action is logged (target
//! `broker::admin`) with the administrator who did it.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::collections::show_to;
use super::extract::{AuthUser, Json, Path};
use super::users::{gone, new_password, set_password};
use super::{ApiError, App, AppState, ErrorBody};
use crate::auth::Passwords;
use crate::domain::{Password, User};
use crate::store::{Change, Changed, Collection};

/// Users answered per page unless `limit` says otherwise.
const PAGE: u16 = 100;

/// An administrator, checked against the store on each request.
pub struct Administrator(User);

impl axum::extract::FromRequestParts<AppState> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Self, ApiError> {
        let AuthUser(id) = AuthUser::from_request_parts(parts, app).await?;
        let user = app.store.user_by_id(id).await?.ok_or_else(gone)?;
        if !user.admin {
            return Err(ApiError::forbidden("only administrators may do this"));
        }
        Ok(Self(user))
    }
}

/// A user as administrators see it (never the password hash).
#[derive(Serialize, ToSchema)]
pub struct Account {
    id: Uuid,
    username: String,
    collection_id: Uuid,
    /// Whether the user is an administrator.
    admin: bool,
    /// Whether the account is disabled.
    disabled: bool,
}

impl From<User> for Account {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            collection_id: u.collection_id,
            admin: u.admin,
            disabled: u.disabled,
        }
    }
}

/// `{"users": [...], "cursor": ...}`.
#[derive(Serialize, ToSchema)]
pub struct Accounts {
    users: Vec<Account>,
    /// Where the next page starts, or null after the last.
    cursor: Option<String>,
}

/// The query of `GET /admin/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    #[serde(default)]
    search: String,
    limit: Option<u16>,
    #[serde(default)]
    cursor: String,
}

/// Lists the users whose name contains `search`, by name, a page at a time.
#[utoipa::path(get, path = "/admin/users", tag = "admin",
    params(
        ("search" = Option<String>, Query, description = "Only names containing this, ignoring case."),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "Users per page (default 100)."),
        ("cursor" = Option<String>, Query, description = "The cursor of the previous page."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users.", body = Accounts),
        (status = 400, description = "An invalid query parameter.", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator.", body = ErrorBody),
    ))]
pub async fn users(
    State(app): State<AppState>,
    Administrator(_): Administrator,
    query: Result<Query<Search>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Accounts>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "limit must be 1 to 1000"));
    }
    let found = app.store.find_users(&query.search, &query.cursor, usize::from(limit)).await?;
    let cursor =
        found.last().filter(|_| found.len() == usize::from(limit)).map(|u| u.username.clone());
    Ok(axum::Json(Accounts { users: found.into_iter().map(Account::from).collect(), cursor }))
}

/// The body of `PATCH /admin/users/{id}`: what to change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    /// Disable (no login; tokens and open streams end) or enable the account.
    disabled: Option<bool>,
    /// A new password; every token of the user is revoked.
    #[schema(value_type = Option<Password>)]
    password: Option<String>,
}

/// Disables or enables a user, or resets their password.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin", request_body = AccountChange,
    params(("id" = Uuid, Path, description = "The user.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account, changed.", body = Account),
        (status = 400, description = "The id is not a UUID, or the password is invalid.", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
    ))]
pub async fn update_user(
    State(app): State<AppState>,
    Administrator(admin): Administrator,
    Path(id): Path<Uuid>,
    Json(body): Json<AccountChange>,
) -> Result<axum::Json<Account>, ApiError> {
    let password = body.password.map(|p| new_password(&app, p)).transpose()?;
    if let Some(password) = password {
        let hash = Passwords::hash(password).await.map_err(ApiError::internal)?;
        set_password(&app, id, hash).await?;
        tracing::info!(target: "broker::admin", by = %admin.username, user = %id, "password reset");
    }
    if let Some(disabled) = body.disabled {
        account(&app, id, disabled).await?;
        let action = if disabled { "account disabled" } else { "account enabled" };
        tracing::info!(target: "broker::admin", by = %admin.username, user = %id, "{action}");
    }
    let user = app.store.user_by_id(id).await?.ok_or_else(no_user)?;
    Ok(axum::Json(user.into()))
}

async fn account(app: &App, user: Uuid, disabled: bool) -> Result<(), ApiError> {
    let change = Change::Account {
        user,
        password_hash: None,
        disabled: Some(disabled),
        admin: None,
        // Enabling again does not bring the old tokens back.
        revoke: disabled,
    };
    match app.change(change).await? {
        Changed::Done => Ok(()),
        _ => Err(no_user()),
    }
}

fn no_user() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such user")
}

/// Any claimed collection with its owner and members.
#[utoipa::path(get, path = "/admin/collections/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "The collection.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The collection.", body = Collection),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator.", body = ErrorBody),
        (status = 404, description = "Nobody claimed this collection.", body = ErrorBody),
    ))]
pub async fn collection(
    State(app): State<AppState>,
    Administrator(admin): Administrator,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Collection>, ApiError> {
    tracing::info!(target: "broker::admin", by = %admin.username, collection = %id, "collection viewed");
    show_to(&app, id).await
}
