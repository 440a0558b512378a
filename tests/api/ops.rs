//! Health, readiness, metrics and request ids.

use serde_json::json;

use crate::support::{NOW, TestApp, eventually, ok_json};

pub async fn metrics(app: &TestApp) -> String {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    response.text().await.unwrap()
}

/// The value of the series whose line starts with `series ` (0 if absent).
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    assert_eq!(
        ok_json(app.http.get(app.url("/healthz")).send().await.unwrap()).await["status"],
        "ok"
    );
    assert_eq!(
        ok_json(app.http.get(app.url("/readyz")).send().await.unwrap()).await["status"],
        "ready"
    );
}

#[tokio::test]
async fn metrics_follow_what_happens() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    app.insert(&user, "now", NOW, json!(1)).await;
    let later = app.insert(&user, "later", NOW + 60, json!(2)).await;
    let gone = app.insert(&user, "gone", NOW + 60, json!(3)).await;
    let path = format!("/events/{}/cancel", gone["id"].as_str().unwrap());
    ok_json(app.get_as(&user.jwt, &path).await).await;
    sse.next().await;
    let text = metrics(&app).await;
    assert_eq!(value(&text, "broker_events_inserted_total"), 3.0);
    assert_eq!(value(&text, "broker_events_published_total"), 1.0);
    assert_eq!(value(&text, "broker_events_cancelled_total"), 1.0);
    assert_eq!(value(&text, "broker_scheduled_events_pending"), 1.0, "{later}");
    assert_eq!(value(&text, "broker_subscribers"), 1.0);
    assert!(value(&text, "broker_deliveries_total") >= 1.0);
    assert_eq!(value(&text, "broker_http_requests_total{route=\"/insert\",status=\"200\"}"), 3.0);
    assert_eq!(value(&text, "broker_http_requests_total{route=\"/events\",status=\"200\"}"), 1.0);
    assert_eq!(value(&text, "broker_http_request_duration_seconds_count{route=\"/insert\"}"), 3.0);
    assert!(value(&text, "broker_store_commit_duration_seconds_count") >= 4.0);
    drop(sse);
    eventually("the subscriber gauge to drop", || async {
        value(&metrics(&app).await, "broker_subscribers") == 0.0
    })
    .await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
    let given = app.http.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await;
    assert_eq!(given.unwrap().headers()["x-request-id"], "abc-123");
    let stream = app.open_stream("/events", &[("x-request-id", "stream-7")]).await;
    assert_eq!(stream.headers()["x-request-id"], "stream-7");
}

#[tokio::test]
async fn the_openapi_description_covers_every_route() {
    let app = TestApp::spawn().await;
    let doc = ok_json(app.http.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = |path: &str, method: &str| !doc["paths"][path][method].is_null();
    for (path, methods) in [
        ("/users", &["post"][..]),
        ("/login", &["post"]),
        ("/insert", &["post"]),
        ("/events", &["get"]),
        ("/events/user", &["get"]),
        ("/logout", &["post"]),
        ("/refresh", &["post"]),
        ("/users/me", &["get"]),
        ("/users/me/password", &["post"]),
        ("/users/password-rule", &["get"]),
        ("/collections", &["post"]),
        ("/collections/{id}", &["get", "patch"]),
        ("/collections/{id}/members/{username}", &["put", "delete"]),
        ("/admin/users", &["get"]),
        ("/admin/users/{id}", &["patch"]),
        ("/admin/collections/{id}", &["get"]),
        ("/events/collections/{collection_id}", &["get"]),
        ("/events/{id}/cancel", &["get", "post"]),
        ("/signal", &["post"]),
        ("/collections/{id}/presence", &["get"]),
        ("/collections/{id}/schemas", &["get"]),
        ("/collections/{id}/schemas/{event}", &["put", "delete"]),
        ("/collections/{id}/webhooks", &["get", "post"]),
        ("/collections/{id}/webhooks/{webhook_id}", &["get", "patch", "delete"]),
        ("/collections/{id}/webhooks/{webhook_id}/secret", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/", &["get"]),
        ("/console.js", &["get"]),
        ("/console.css", &["get"]),
    ] {
        for method in methods {
            assert!(documented(path, method), "{method} {path} is not described");
        }
    }
    assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(32), "an undescribed path");
    // Operations that take a token or a body list the errors that brings.
    let insert = &doc["paths"]["/insert"]["post"]["responses"];
    for status in ["200", "400", "401", "413", "415", "422"] {
        assert!(!insert[status].is_null(), "POST /insert lacks {status}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_nothing_remote() {
    let app = TestApp::spawn().await;
    for (path, content_type) in
        [("/", "text/html"), ("/console.js", "text/javascript"), ("/console.css", "text/css")]
    {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert!(header("content-security-policy").starts_with("default-src 'none'"), "{path}");
        let body = response.text().await.unwrap();
        assert!(body.len() > 1000, "{path}");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} loads from afar");
    }
}
