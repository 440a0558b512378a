//! The one error type of the HTTP API.
//!
//! Every failure becomes `{"error": "..."}` with its status. Server-side
//! failures are logged in full and answered with a generic message.

use std::borrow::Cow;
use std::fmt::Display;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::TokenError;
use crate::domain::Invalid;
use crate::store::StoreError;

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// The body of every error answer: `{"error": "..."}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    #[schema(value_type = String)]
    error: Cow<'static, str>,
    /// With an insert refused by its collection's schema: where in its data
    /// (a JSON Pointer; `""` for the whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    retry_after: u64,
    path: Option<String>,
}

impl ApiError {
    /// An error with this status and client-facing message.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        let retry_after =
            if status == StatusCode::SERVICE_UNAVAILABLE { RETRY_AFTER_SECS } else { 0 };
        Self { status, message: message.into(), retry_after, path: None }
    }

    /// 400: the data does not match its schema at `path`.
    pub fn invalid_at(message: String, path: String) -> Self {
        Self { path: Some(path), ..Self::new(StatusCode::BAD_REQUEST, message) }
    }

    /// 429: too many requests; the client may try again in `seconds`.
    pub fn too_many(message: impl Into<Cow<'static, str>>, seconds: u64) -> Self {
        Self { retry_after: seconds.max(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, message) }
    }

    /// 403: the user may not do this.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 401: missing or bad credentials.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 500: logs `error` and tells the client nothing about it.
    pub fn internal(error: impl Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.message, path: self.path });
        match self.status {
            StatusCode::UNAUTHORIZED => {
                (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            _ if self.retry_after > 0 => {
                (self.status, [(header::RETRY_AFTER, self.retry_after.to_string())], body)
                    .into_response()
            }
            _ => (self.status, body).into_response(),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.0)
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::unauthorized(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // 400, not 409: what Broker 1.x answered, and its clients expect.
            StoreError::UsernameTaken => Self::new(StatusCode::BAD_REQUEST, "username is taken"),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "answering 503");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; retry later",
                )
            }
            StoreError::Backend(_) => Self::internal(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        // A path that does not parse (e.g. a malformed UUID) is a bad request.
        let status =
            if e.status().is_server_error() { e.status() } else { StatusCode::BAD_REQUEST };
        Self::new(status, e.body_text())
    }
}
