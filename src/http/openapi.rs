//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated
//! from the handlers' annotations and the types they read and answer.
//!
//! Errors every operation of a kind can answer are added here, once: those
//! of the JSON body extractor to each operation with a body, 401 to each
//! operation that takes a token.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{
    ErrorBody, admin, collections, console, events, ops, schemas, signals, stream, users, webhooks,
};
use crate::domain::Event;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Broker",
        description = "Real-time zero-code API server: users, JWT auth, immutable JSON events, scheduled publication and a Server-Sent-Events stream."
    ),
    paths(
        users::sign_up,
        users::log_in,
        users::log_out,
        users::refresh,
        users::me,
        users::change_password,
        users::password_rule,
        collections::claim,
        collections::show,
        collections::update,
        collections::presence,
        schemas::list,
        schemas::put,
        schemas::delete,
        webhooks::create,
        webhooks::list,
        webhooks::show,
        webhooks::update,
        webhooks::rotate,
        webhooks::delete,
        collections::add_member,
        collections::remove_member,
        admin::users,
        admin::update_user,
        admin::collection,
        events::insert,
        signals::send,
        events::collection,
        events::user,
        events::cancel,
        stream::subscribe,
        ops::health,
        ops::ready,
        ops::metrics,
        description,
        console::page,
        console::script,
        console::style,
    ),
    components(schemas(ErrorBody, Event)),
    modifiers(&CommonErrors),
    tags(
        (name = "users", description = "Sign up, log in and out, and the caller's account."),
        (name = "collections", description = "Claimed collections: private or public, and their members."),
        (name = "admin", description = "For administrators (`broker admin grant USERNAME`)."),
        (name = "events", description = "Insert, list and cancel events."),
        (name = "stream", description = "The Server-Sent-Events stream."),
        (name = "operations", description = "Health, readiness, metrics and this description."),
        (name = "console", description = "The live console, for people."),
    )
)]
struct ApiDoc;

/// Adds the security schemes and the errors shared by many operations.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("broker_token"))),
        );
        let error = |description: &str| {
            ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
            )
        };
        for item in api.paths.paths.values_mut() {
            let ops =
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                if op.request_body.is_some() {
                    for (status, description) in [
                        ("400", "The body is not valid JSON, or a value in it is invalid."),
                        ("413", "The body is larger than `--max-body`."),
                        ("415", "The body is not `application/json`."),
                        ("422", "A field is missing or has the wrong type."),
                    ] {
                        responses
                            .entry(status.into())
                            .or_insert_with(|| error(description).build().into());
                    }
                }
                if op.security.is_some() {
                    responses.entry("401".into()).or_insert_with(|| {
                        error("A missing, malformed, expired or revoked token.")
                            .header("www-authenticate", HeaderBuilder::new().build())
                            .build()
                            .into()
                    });
                }
            }
        }
    }
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", content_type = "application/json")))]
pub async fn description() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], json.as_str())
}
