//! Accounts and sessions: `POST /users` (sign up), `POST /login`,
//! `POST /logout`, `POST /refresh`, `GET /users/me` and
//! `POST /users/me/password`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{AuthUser, ClientAddress, Json, Session};
use super::stream::TOKEN_COOKIE;
use super::{ApiError, App, AppState, ErrorBody};
use crate::auth::Passwords;
use crate::domain::{Password, User, Username};
use crate::store::{Change, Changed};

/// The body of `POST /users`.
#[derive(Deserialize, ToSchema)]
pub struct SignUp {
    #[schema(value_type = Username)]
    username: String,
    #[schema(value_type = Password)]
    password: String,
    /// The collection that holds this user's own ("info") events.
    collection_id: Uuid,
}

/// The body of `POST /login`.
#[derive(Deserialize, ToSchema)]
pub struct LogIn {
    username: String,
    #[schema(value_type = Password)]
    password: String,
}

/// `{"id": "<uuid>"}`: the new user's id.
#[derive(Serialize, ToSchema)]
pub struct Created {
    id: Uuid,
}

/// `{"jwt": "..."}`: a bearer token for the other endpoints.
#[derive(Serialize, ToSchema)]
pub struct Token {
    jwt: String,
}

/// Registers a user and answers `{"id": "<uuid>"}`.
#[utoipa::path(post, path = "/users", tag = "users", request_body = SignUp,
    responses(
        (status = 200, description = "The user is registered.", body = Created),
        (status = 400, description = "The username is taken (`{\"error\": \"username is taken\"}`, as Broker 1.x answered), or a field is invalid.", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address (`--signup-rate` an hour).",
            body = ErrorBody, headers(("retry-after" = String))),
    ))]
pub async fn sign_up(
    State(app): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<SignUp>,
) -> Result<axum::Json<Created>, ApiError> {
    if let Some(address) = address {
        let taken = app.signups.take_shared(address, app.store.as_ref(), &app.clock).await?;
        taken.map_err(|seconds| {
            ApiError::too_many("too many sign-ups from this address; retry later", seconds)
        })?;
    }
    let username = Username::parse(body.username)?;
    let password = new_password(&app, body.password)?;
    let password_hash = Passwords::hash(password).await.map_err(ApiError::internal)?;
    let id = Uuid::new_v4();
    let user = User {
        id,
        username: username.as_str().to_owned(),
        password_hash,
        collection_id: body.collection_id,
        ..User::default()
    };
    app.store.create_user(user).await?;
    Ok(axum::Json(Created { id }))
}

/// Checks a password and answers `{"jwt": "..."}`, also set as the
/// `broker_token` cookie for the event stream. An unknown user and a
/// wrong password get the same answer after the same work; repeated
/// failures for one username or from one address must wait (429).
#[utoipa::path(post, path = "/login", tag = "users", request_body = LogIn,
    responses(
        (status = 200, description = "A token, also set as the `broker_token` cookie for `GET /events`.",
            body = Token, headers(("set-cookie" = String, description = "`broker_token=<jwt>; Path=/events; HttpOnly`"))),
        (status = 401, description = "Unknown user or wrong password.", body = ErrorBody,
            headers(("www-authenticate" = String))),
        (status = 403, description = "The account is disabled.", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this username or from this address.",
            body = ErrorBody, headers(("retry-after" = String))),
    ))]
pub async fn log_in(
    State(app): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<LogIn>,
) -> Result<Response, ApiError> {
    let (logins, clock) = (&app.logins, &app.clock);
    let wait = [
        logins.names.wait(&body.username, clock),
        address.and_then(|a| logins.addresses.wait(&a, clock)),
    ];
    if let Some(seconds) = wait.into_iter().flatten().max() {
        return Err(ApiError::too_many("too many failed logins; retry later", seconds));
    }
    let user = app.store.user_by_name(&body.username).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let matches = match Password::parse(body.password) {
        Ok(password) => app.passwords.verify(password, hash).await,
        Err(_) => false,
    };
    let Some(user) = user.filter(|_| matches) else {
        logins.names.fail(&body.username, clock);
        if let Some(address) = address {
            logins.addresses.fail(&address, clock);
        }
        return Err(ApiError::unauthorized("invalid username or password"));
    };
    logins.names.clear(&body.username);
    if user.disabled {
        return Err(ApiError::forbidden("this account is disabled"));
    }
    token(&app, user.id, Some(user.username), user.generation)
}

/// `{"jwt"}` with a new token for `user` (named `name`), also set as the cookie.
fn token(
    app: &App,
    user: Uuid,
    name: Option<String>,
    generation: i64,
) -> Result<Response, ApiError> {
    let keys = app.keys()?;
    let jwt = keys.issue(user, name, generation, &app.clock).map_err(ApiError::internal)?;
    // Lets a same-site browser page open the stream without putting the
    // token in its URL; only `GET /events` reads this cookie.
    let cookie = format!(
        "{TOKEN_COOKIE}={jwt}; Path=/events; Max-Age={}; HttpOnly; SameSite=Lax",
        keys.lifetime()
    );
    Ok(([(header::SET_COOKIE, cookie)], axum::Json(Token { jwt })).into_response())
}

/// Revokes the token it is called with and clears the cookie.
#[utoipa::path(post, path = "/logout", tag = "users", security(("bearer" = [])),
    responses(
        (status = 204, description = "The token is revoked everywhere; its open streams end.",
            headers(("set-cookie" = String, description = "Clears `broker_token`."))),
    ))]
pub async fn log_out(
    State(app): State<AppState>,
    Session(claims): Session,
) -> Result<Response, ApiError> {
    let change = match claims.jti {
        Some(jti) => Change::Revoke { jti, exp: claims.exp },
        // A token from before token ids: only a new generation revokes it.
        None => Change::Account {
            user: claims.sub,
            password_hash: None,
            disabled: None,
            admin: None,
            revoke: true,
        },
    };
    app.change(change).await?;
    let cookie = format!("{TOKEN_COOKIE}=; Path=/events; Max-Age=0; HttpOnly; SameSite=Lax");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// Exchanges a valid token for a fresh one (the old one stays valid until
/// it expires or is logged out).
#[utoipa::path(post, path = "/refresh", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "A fresh token, also set as the `broker_token` cookie.", body = Token,
            headers(("set-cookie" = String))),
    ))]
pub async fn refresh(
    State(app): State<AppState>,
    Session(claims): Session,
) -> Result<Response, ApiError> {
    token(&app, claims.sub, claims.name, claims.generation)
}

/// The caller's account.
#[derive(Serialize, ToSchema)]
pub struct Me {
    id: Uuid,
    username: String,
    /// The collection of the user's own ("info") events.
    collection_id: Uuid,
    /// Whether the user may use the `/admin` endpoints.
    admin: bool,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account.", body = Me),
    ))]
pub async fn me(
    State(app): State<AppState>,
    AuthUser(id): AuthUser,
) -> Result<axum::Json<Me>, ApiError> {
    let user = app.store.user_by_id(id).await?.ok_or_else(gone)?;
    Ok(axum::Json(Me {
        id,
        username: user.username,
        collection_id: user.collection_id,
        admin: user.admin,
    }))
}

/// 401 for a token whose user no longer exists.
pub(super) fn gone() -> ApiError {
    ApiError::unauthorized("the token's user no longer exists")
}

/// The body of `POST /users/me/password`.
#[derive(Deserialize, ToSchema)]
pub struct NewPassword {
    #[schema(value_type = Password)]
    old_password: String,
    #[schema(value_type = Password)]
    new_password: String,
}

/// Changes the caller's password, revoking every token issued before;
/// answers a new token.
#[utoipa::path(post, path = "/users/me/password", tag = "users", request_body = NewPassword,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The password is changed and every earlier token revoked; a new token.",
            body = Token, headers(("set-cookie" = String))),
        (status = 400, description = "The new password is empty, too long, or shorter than `--min-password-length`.", body = ErrorBody),
        (status = 401, description = "A bad token, or the old password is wrong.", body = ErrorBody,
            headers(("www-authenticate" = String))),
        (status = 429, description = "Too many wrong old passwords.", body = ErrorBody,
            headers(("retry-after" = String))),
    ))]
pub async fn change_password(
    State(app): State<AppState>,
    Session(claims): Session,
    Json(body): Json<NewPassword>,
) -> Result<Response, ApiError> {
    let new = new_password(&app, body.new_password)?;
    let user = app.store.user_by_id(claims.sub).await?.ok_or_else(gone)?;
    let names = &app.logins.names;
    if let Some(seconds) = names.wait(&user.username, &app.clock) {
        return Err(ApiError::too_many("too many failed logins; retry later", seconds));
    }
    let old = Password::parse(body.old_password).ok();
    let matches = match old {
        Some(old) => app.passwords.verify(old, Some(user.password_hash.clone())).await,
        None => false,
    };
    if !matches {
        names.fail(&user.username, &app.clock);
        return Err(ApiError::unauthorized("the old password is wrong"));
    }
    let password_hash = Passwords::hash(new).await.map_err(ApiError::internal)?;
    set_password(&app, user.id, password_hash).await?;
    token(&app, user.id, Some(user.username), user.generation + 1)
}

/// A new password: valid, and at least `--min-password-length` characters.
pub(super) fn new_password(app: &App, value: String) -> Result<Password, ApiError> {
    let min = app.min_password_length;
    if value.chars().count() < min {
        let message = format!("password must be at least {min} characters");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, message));
    }
    Ok(Password::parse(value)?)
}

/// `{"min_length": N, "max_length": 1024}`: what a new password must be.
#[derive(Serialize, ToSchema)]
pub struct PasswordRule {
    min_length: usize,
    max_length: usize,
}

/// The rule new passwords must follow (for a sign-up form to show it):
/// `--min-password-length` (1 when not set) to 1024 characters.
#[utoipa::path(get, path = "/users/password-rule", tag = "users",
    responses((status = 200, description = "The rule.", body = PasswordRule)))]
pub async fn password_rule(State(app): State<AppState>) -> axum::Json<PasswordRule> {
    let min_length = app.min_password_length.max(1);
    axum::Json(PasswordRule { min_length, max_length: crate::domain::MAX_PASSWORD_LENGTH })
}

/// Stores a new password hash and revokes every token issued so far.
pub(super) async fn set_password(app: &App, user: Uuid, hash: String) -> Result<(), ApiError> {
    let change = Change::Account {
        user,
        password_hash: Some(hash),
        disabled: None,
        admin: None,
        revoke: true,
    };
    match app.change(change).await? {
        Changed::Done => Ok(()),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such user")),
    }
}
