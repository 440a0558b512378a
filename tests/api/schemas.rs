//! JSON Schemas per event name: inserts checked, the rest untouched.

use reqwest::Method;
use serde_json::{Value, json};

use crate::access::{claim, set_member};
use crate::support::{NOW, TestApp, TestUser, error_json, ok_json};

/// Sets (with `Some`) or removes the schema of `event` in `owner`'s collection.
pub async fn set_schema(
    app: &TestApp,
    owner: &TestUser,
    event: &str,
    schema: Option<Value>,
) -> reqwest::Response {
    let path = format!("/collections/{}/schemas/{}", owner.collection, event.replace('*', "%2A"));
    match schema {
        Some(schema) => app.send(Method::PUT, &owner.jwt, &path, Some(&schema)).await,
        None => app.send(Method::DELETE, &owner.jwt, &path, None).await,
    }
}

/// Inserts into `collection` as `user`; the raw response.
pub async fn insert_data(
    app: &TestApp,
    user: &TestUser,
    collection: uuid::Uuid,
    event: &str,
    data: Value,
) -> reqwest::Response {
    let body = json!({"event": event, "collection_id": collection, "timestamp": NOW, "data": data});
    app.insert_raw(&user.jwt, &body).await
}

#[tokio::test]
async fn inserts_must_match_the_schema_of_their_name_or_pattern() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, false).await;
    set_member(&app, &alice, "bob", Some("writer")).await;
    let board = alice.collection;
    // Stored before any schema: left as it is.
    ok_json(insert_data(&app, &alice, board, "card:1", json!("just text")).await).await;

    let card = json!({
        "type": "object",
        "required": ["title"],
        "properties": {"title": {"type": "string", "maxLength": 20}, "column": {"enum": ["todo", "done"]}},
    });
    let set = ok_json(set_schema(&app, &alice, "card:*", Some(card.clone())).await).await;
    assert_eq!(set, json!({"schemas": {"card:*": card}}));
    ok_json(set_schema(&app, &alice, "title", Some(json!({"type": "string"}))).await).await;

    ok_json(insert_data(&app, &bob, board, "card:2", json!({"title": "Ship it"})).await).await;
    let refused = insert_data(&app, &bob, board, "card:3", json!({"title": 7})).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["path"], "/title", "{body}");
    assert!(body["error"].as_str().unwrap().contains("card:*"), "{body}");
    let missing: Value = insert_data(&app, &bob, board, "card:4", json!({"column": "todo"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(missing["path"], "", "the whole object lacks a property: {missing}");
    let wrong: Value =
        insert_data(&app, &bob, board, "card:5", json!({"title": "x", "column": "later"}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(wrong["path"], "/column");
    // An exact name; a name no schema covers; another collection.
    assert_eq!(insert_data(&app, &alice, board, "title", json!(1)).await.status(), 400);
    ok_json(insert_data(&app, &alice, board, "title", json!("Board")).await).await;
    ok_json(insert_data(&app, &alice, board, "cards", json!(1)).await).await;
    ok_json(insert_data(&app, &bob, bob.collection, "card:1", json!(1)).await).await;
    let stored: Vec<Value> =
        app.collection(&alice, board).await.into_iter().map(|e| e["data"].clone()).collect();
    assert_eq!(stored, [json!("just text"), json!({"title": "Ship it"}), json!("Board"), json!(1)]);

    // Members read the schemas; only the owner changes them.
    let path = format!("/collections/{board}/schemas");
    let listed = ok_json(app.get_as(&bob.jwt, &path).await).await;
    assert_eq!(listed["schemas"].as_object().map(|o| o.len()), Some(2));
    error_json(set_schema(&app, &bob, "card:*", None).await, 404).await; // bob's own: unclaimed
    let bobs_try = app.send(Method::DELETE, &bob.jwt, &format!("{path}/card:%2A"), None).await;
    error_json(bobs_try, 403).await;
    let left = ok_json(set_schema(&app, &alice, "card:*", None).await).await;
    assert_eq!(left["schemas"], json!({"title": {"type": "string"}}));
    ok_json(insert_data(&app, &bob, board, "card:3", json!({"title": 7})).await).await;
}

#[tokio::test]
async fn an_invalid_schema_is_refused_with_a_reason() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    claim(&app, &alice, false).await;
    for bad in [
        json!({"type": "strung"}),
        json!({"minLength": -1}),
        json!({"$ref": "https://example.com/remote.json"}),
    ] {
        let response = set_schema(&app, &alice, "card", Some(bad.clone())).await;
        let message = error_json(response, 400).await;
        assert!(message.starts_with("invalid JSON Schema"), "{bad}: {message}");
    }
    // A schema is a JSON object (`true` and `false` are written `{}` and `{"not": {}}`).
    error_json(set_schema(&app, &alice, "card", Some(json!(17))).await, 422).await;
    ok_json(set_schema(&app, &alice, "never", Some(json!({"not": {}}))).await).await;
    assert_eq!(
        insert_data(&app, &alice, alice.collection, "never", json!(null)).await.status(),
        400
    );
    let schemas = ok_json(
        app.get_as(&alice.jwt, &format!("/collections/{}/schemas", alice.collection)).await,
    )
    .await;
    assert_eq!(schemas, json!({"schemas": {"never": {"not": {}}}}));
}
