//! `POST /users` (sign up) and `POST /login`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::Json;
use super::stream::TOKEN_COOKIE;
use super::{ApiError, AppState, ErrorBody};
use crate::auth::Passwords;
use crate::domain::{Password, User, Username};

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
        (status = 409, description = "The username is taken.", body = ErrorBody),
    ))]
pub async fn sign_up(
    State(app): State<AppState>,
    Json(body): Json<SignUp>,
) -> Result<axum::Json<Created>, ApiError> {
    let username = Username::parse(body.username)?;
    let password = Password::parse(body.password)?;
    let password_hash = Passwords::hash(password).await.map_err(ApiError::internal)?;
    let id = Uuid::new_v4();
    let user = User {
        id,
        username: username.as_str().to_owned(),
        password_hash,
        collection_id: body.collection_id,
    };
    app.store.create_user(user).await?;
    Ok(axum::Json(Created { id }))
}

/// Checks a password and answers `{"jwt": "..."}`, also set as the
/// `broker_token` cookie for the event stream. An unknown user and a
/// wrong password get the same answer after the same work.
#[utoipa::path(post, path = "/login", tag = "users", request_body = LogIn,
    responses(
        (status = 200, description = "A token, also set as the `broker_token` cookie for `GET /events`.",
            body = Token, headers(("set-cookie" = String, description = "`broker_token=<jwt>; Path=/events; HttpOnly`"))),
        (status = 401, description = "Unknown user or wrong password.", body = ErrorBody,
            headers(("www-authenticate" = String))),
    ))]
pub async fn log_in(
    State(app): State<AppState>,
    Json(body): Json<LogIn>,
) -> Result<impl IntoResponse, ApiError> {
    let refused = || ApiError::unauthorized("invalid username or password");
    let password = Password::parse(body.password).map_err(|_| refused())?;
    let user = app.store.user_by_name(&body.username).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !app.passwords.verify(password, hash).await {
        return Err(refused());
    }
    let user = user.ok_or_else(refused)?;
    let jwt = app.keys()?.issue(user.id, &app.clock).map_err(ApiError::internal)?;
    // Lets a same-site browser page open the stream without putting the
    // token in its URL; only `GET /events` reads this cookie.
    let cookie = format!(
        "{TOKEN_COOKIE}={jwt}; Path=/events; Max-Age={}; HttpOnly; SameSite=Lax",
        app.keys()?.lifetime()
    );
    Ok(([(header::SET_COOKIE, cookie)], axum::Json(Token { jwt })))
}
