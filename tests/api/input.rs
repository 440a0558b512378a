//! Bad input gets a 4xx and a JSON reason; CORS is exactly as configured.

use serde_json::json;
use uuid::Uuid;

use crate::support::{NOW, TestApp, error_json};

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let app = TestApp::spawn_with(&["--max-body", "4096"]).await;
    let user = app.user("alice").await;
    let send = |body: String| app.insert_text(&user.jwt, body);
    let c = user.collection;
    let cases: [(String, u16); 11] = [
        ("{\"event\":".into(), 400),
        ("[]".into(), 422),
        // serde would take a struct's fields in order from an array.
        (format!("[\"e\",\"{c}\",1,{{}}]"), 422),
        (
            format!(
                "{{\"event\":\"e\",\"collection_id\":\"{c}\",\"timestamp\":\"soon\",\"data\":1}}"
            ),
            422,
        ),
        (format!("{{\"event\":\"e\",\"collection_id\":\"{c}\",\"data\":1}}"), 422),
        (
            "{\"event\":\"e\",\"collection_id\":\"not-a-uuid\",\"timestamp\":1,\"data\":1}".into(),
            422,
        ),
        (format!("{{\"event\":\"\",\"collection_id\":\"{c}\",\"timestamp\":1,\"data\":1}}"), 400),
        (
            format!("{{\"event\":\"a\\nb\",\"collection_id\":\"{c}\",\"timestamp\":1,\"data\":1}}"),
            400,
        ),
        (format!("{{\"event\":\"e\",\"collection_id\":\"{c}\",\"timestamp\":-1,\"data\":1}}"), 400),
        (
            format!("{{\"event\":\"e\",\"collection_id\":\"{c}\",\"timestamp\":1.5,\"data\":1}}"),
            422,
        ),
        (
            format!(
                "{{\"event\":\"e\",\"collection_id\":\"{c}\",\"timestamp\":1,\"data\":\"{}\"}}",
                "x".repeat(5000)
            ),
            413,
        ),
    ];
    for (body, status) in cases {
        let message = error_json(send(body.clone()).await, status).await;
        assert!(!message.is_empty(), "{body}");
    }
    for body in ["{}", "[1]"] {
        let no_type =
            app.http.post(app.url("/insert")).bearer_auth(&user.jwt).body(body).send().await;
        error_json(no_type.unwrap(), 415).await;
    }
    let json_suffix = app
        .http
        .post(app.url("/insert"))
        .bearer_auth(&user.jwt)
        .header("content-type", "application/vnd.broker+json; charset=utf-8")
        .body("{}")
        .send()
        .await
        .unwrap();
    error_json(json_suffix, 422).await; // JSON taken; fields missing
    error_json(app.get_as(&user.jwt, "/events/collections/42").await, 400).await;
    error_json(app.http.get(app.url("/nowhere")).send().await.unwrap(), 404).await;
    error_json(app.http.delete(app.url("/users")).send().await.unwrap(), 405).await;
    // The server is still fine.
    assert_eq!(app.insert(&user, "ok", NOW, json!(null)).await["event"], "ok");
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let app = TestApp::spawn_with(&["--origin", "http://a.test,http://b.test"]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/insert"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    for origin in ["http://a.test", "http://b.test"] {
        let response = preflight(origin).await.unwrap();
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], origin);
        let methods = headers["access-control-allow-methods"].to_str().unwrap().to_uppercase();
        assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
        let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_lowercase();
        for h in ["authorization", "accept", "content-type", "idempotency-key"] {
            assert!(allowed.contains(h), "{allowed}");
        }
    }
    let response = preflight("http://evil.test").await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
    let simple = app
        .http
        .get(app.url("/events/user"))
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert!(simple.headers().get("access-control-allow-origin").is_none());
    let body = json!({"username": "x", "password": "y", "collection_id": Uuid::new_v4()});
    let ok = app
        .http
        .post(app.url("/users"))
        .header("origin", "http://b.test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "http://b.test");
    let exposed = ok.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("idempotent-replayed"),
        "{exposed}"
    );
}

/// Data nested deeper than `--max-depth` (64) is refused at insert, with a
/// reason, however deep; what fits is stored as sent.
#[tokio::test]
async fn deeply_nested_data_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let insert = |depth: usize| {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            "{{\"event\":\"deep\",\"collection_id\":\"{}\",\"timestamp\":{NOW},\"data\":{data}}}",
            user.collection
        );
        app.insert_text(&user.jwt, body)
    };
    let fits = crate::support::ok_json(insert(64).await).await;
    assert_eq!(
        fits["event"]["data"],
        serde_json::from_str::<serde_json::Value>(&format!("{}{}", "[".repeat(64), "]".repeat(64)))
            .unwrap()
    );
    for depth in [65, 100_000] {
        let message = error_json(insert(depth).await, 400).await;
        assert!(message.contains("nested"), "{message}");
    }
    assert_eq!(app.collection(&user, user.collection).await.len(), 1, "nothing deeper was stored");
}
