//! Idempotent inserts, retention, and resuming across deleted events.

use reqwest::Method;
use serde_json::{Value, json};

use crate::access::claim;
use crate::support::{NOW, TestApp, TestUser, error_json, eventually, ok_json};

/// POSTs `/insert` with an `Idempotency-Key`; the raw response.
async fn insert_keyed(
    app: &TestApp,
    user: &TestUser,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    let request = app.http.post(app.url("/insert")).bearer_auth(&user.jwt);
    request.header("idempotency-key", key).json(body).send().await.expect("request")
}

fn body(user: &TestUser, name: &str, data: Value) -> Value {
    json!({"event": name, "collection_id": user.collection, "timestamp": NOW, "data": data})
}

/// The ids of a collection's events, as listed.
pub async fn listed(app: &TestApp, user: &TestUser) -> Vec<Value> {
    app.collection(user, user.collection).await.into_iter().map(|e| e["data"].clone()).collect()
}

/// Sets the retention of `owner`'s collection.
pub async fn retain(app: &TestApp, owner: &TestUser, retention: Value) -> Value {
    let path = format!("/collections/{}", owner.collection);
    let body = json!({ "retention": retention });
    ok_json(app.send(Method::PATCH, &owner.jwt, &path, Some(&body)).await).await
}

#[tokio::test]
async fn a_retried_insert_with_its_key_is_stored_once() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let first = insert_keyed(&app, &alice, "k-1", &body(&alice, "a", json!(1))).await;
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = ok_json(first).await;
    let again = insert_keyed(&app, &alice, "k-1", &body(&alice, "a", json!(1))).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(ok_json(again).await, first);
    assert_eq!(listed(&app, &alice).await, [json!(1)]);

    // The same key with another body is a client bug, not a retry.
    let other = insert_keyed(&app, &alice, "k-1", &body(&alice, "a", json!(2))).await;
    assert!(error_json(other, 409).await.contains("Idempotency-Key"));
    // Keys are the user's own: bob's "k-1" is another insert.
    let bobs = ok_json(insert_keyed(&app, &bob, "k-1", &body(&bob, "a", json!(1))).await).await;
    assert_ne!(bobs["event"]["id"], first["event"]["id"]);
    // Without a key, every insert is stored (1.x).
    app.insert(&alice, "a", NOW, json!(3)).await;
    app.insert(&alice, "a", NOW, json!(3)).await;
    assert_eq!(listed(&app, &alice).await, [json!(1), json!(3), json!(3)]);
    for bad in ["", &"k".repeat(256), "a\tb"] {
        let response = insert_keyed(&app, &alice, bad, &body(&alice, "a", json!(4))).await;
        error_json(response, 400).await;
    }

    // A key survives a restart, and on PostgreSQL is seen by every node.
    let app = app.restart_at(NOW + 60).await;
    let retry = ok_json(insert_keyed(&app, &alice, "k-1", &body(&alice, "a", json!(1))).await);
    assert_eq!(retry.await, first);
    if app.db.is_some() {
        let other = app.node().await;
        let retry = insert_keyed(&other, &alice, "k-1", &body(&alice, "a", json!(1))).await;
        assert_eq!(ok_json(retry).await, first);
    }
    assert_eq!(listed(&app, &alice).await, [json!(1), json!(3), json!(3)]);
}

#[tokio::test]
async fn concurrent_retries_store_one_event() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let nodes = match app.db {
        Some(_) => vec![app.node().await, app.node().await],
        None => vec![],
    };
    let all: Vec<&TestApp> = std::iter::once(&app).chain(&nodes).collect();
    let once = body(&alice, "a", json!("once"));
    let tries = (0..24).map(|i| insert_keyed(all[i % all.len()], &alice, "same", &once));
    let answers = futures_util::future::join_all(tries).await;
    let mut ids = Vec::new();
    for answer in answers {
        ids.push(ok_json(answer).await["event"]["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one event for one key: {ids:?}");
    assert_eq!(listed(&app, &alice).await, [json!("once")]);
}

#[tokio::test]
async fn a_key_is_forgotten_after_its_window() {
    let app = TestApp::spawn_with(&["--idempotency-window", "60"]).await;
    let alice = app.user("alice").await;
    let first = ok_json(insert_keyed(&app, &alice, "k", &body(&alice, "a", json!(1))).await).await;
    app.set_time(NOW + 30);
    let again = ok_json(insert_keyed(&app, &alice, "k", &body(&alice, "a", json!(1))).await).await;
    assert_eq!(again, first);
    app.set_time(NOW + 61);
    let later = ok_json(insert_keyed(&app, &alice, "k", &body(&alice, "a", json!(2))).await).await;
    assert_ne!(later["event"]["id"], first["event"]["id"]);
    assert_eq!(listed(&app, &alice).await, [json!(1), json!(2)]);
}

#[tokio::test]
async fn only_the_owner_sets_a_valid_retention() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, false).await;
    let path = format!("/collections/{}", alice.collection);
    for bad in [json!({"retention": {"keep_latest": 0}}), json!({"retention": {"max_age": -5}})] {
        error_json(app.send(Method::PATCH, &alice.jwt, &path, Some(&bad)).await, 400).await;
    }
    for unknown in [json!({"retention": {"forever": true}}), json!({"retention": [null, null]})] {
        error_json(app.send(Method::PATCH, &alice.jwt, &path, Some(&unknown)).await, 422).await;
    }
    // Nothing given, nothing changes.
    let same = ok_json(app.send(Method::PATCH, &alice.jwt, &path, Some(&json!({}))).await).await;
    assert_eq!((&same["private"], &same["retention"]), (&json!(false), &json!({})));
    let set = json!({"retention": {"keep_latest": 2}});
    error_json(app.send(Method::PATCH, &bob.jwt, &path, Some(&set)).await, 403).await;
    let shown = retain(&app, &alice, json!({"keep_latest": 2, "max_age": 86400})).await;
    assert_eq!(shown["retention"], json!({"keep_latest": 2, "max_age": 86400}));
    assert_eq!(shown["private"], false);
    let shown = ok_json(app.get_as(&alice.jwt, &path).await).await;
    assert_eq!(shown["retention"], json!({"keep_latest": 2, "max_age": 86400}));
    assert_eq!(retain(&app, &alice, json!({})).await["retention"], json!({}));
}

#[tokio::test]
async fn keep_latest_drops_older_events_of_each_name_but_never_the_state() {
    let app = TestApp::spawn_with(&["--expiry", "86400"]).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, false).await;
    retain(&app, &alice, json!({"keep_latest": 2})).await;
    // A future event stays pending whatever the limit.
    app.insert(&alice, "a", NOW + 3600, json!("later")).await;
    let events: Vec<(&str, Value)> =
        (1..=5).map(|i| ("a", json!(format!("a{i}")))).chain([("b", json!("b1"))]).collect();
    app.publish(&alice, &events).await;
    // Bob's collection (not claimed, no server default) keeps everything.
    app.publish(&bob, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("alice's collection trimmed", || async {
        listed(&app, &alice).await == [json!("a4"), json!("a5"), json!("b1"), json!("later")]
    })
    .await;
    assert_eq!(listed(&app, &bob).await, [json!(1), json!(2)]);
    // The state a new stream syncs is what it was.
    let path = format!("/events?collection_id={}", alice.collection);
    let got = app.subscribe_to(&path, &[]).await.take(2).await;
    assert_eq!((&*got[0].event, &got[0].data, &*got[1].event), ("a", &json!("a5"), "b"));
    // When the pending event comes due, it is the newest "a": a4 goes.
    app.set_time(NOW + 3600);
    eventually("the pending event published and a4 trimmed", || async {
        listed(&app, &alice).await == [json!("a5"), json!("b1"), json!("later")]
    })
    .await;
}

#[tokio::test]
async fn max_age_drops_old_and_cancelled_events_but_the_latest_of_each_name() {
    let app = TestApp::spawn_with(&["--expiry", "86400"]).await;
    let alice = app.user("alice").await;
    claim(&app, &alice, false).await;
    let old = NOW - 7200;
    for (name, data) in [("a", "a-old"), ("b", "b-old"), ("a", "a-new")] {
        app.insert(&alice, name, old, json!(data)).await;
    }
    let cancelled = app.insert(&alice, "c", NOW + 60, json!("cancelled")).await;
    let path = format!("/events/{}/cancel", cancelled["id"].as_str().unwrap());
    ok_json(app.send(Method::POST, &alice.jwt, &path, None).await).await;
    app.insert(&alice, "d", NOW + 86_400, json!("pending")).await;
    eventually("the old events published", || async {
        let events = app.collection(&alice, alice.collection).await;
        events.iter().filter(|e| e["published"] == true).count() == 3
    })
    .await;
    retain(&app, &alice, json!({"max_age": 3600})).await;
    // Only a-old is older than an hour and not the latest of its name;
    // the cancelled event is dropped once its time is an hour past.
    eventually("a-old deleted", || async {
        listed(&app, &alice).await
            == [json!("b-old"), json!("a-new"), json!("cancelled"), json!("pending")]
    })
    .await;
    app.set_time(NOW + 60 + 3601);
    eventually("the cancelled event deleted", || async {
        listed(&app, &alice).await == [json!("b-old"), json!("a-new"), json!("pending")]
    })
    .await;
}

#[tokio::test]
async fn the_server_default_applies_to_unclaimed_collections_only() {
    let app = TestApp::spawn_with(&["--retention", "latest=1"]).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &bob, false).await;
    app.publish(&alice, &[("a", json!(1)), ("a", json!(2)), ("b", json!(3))]).await;
    app.publish(&bob, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("alice's collection trimmed", || async {
        listed(&app, &alice).await == [json!(2), json!(3)]
    })
    .await;
    assert_eq!(listed(&app, &bob).await, [json!(1), json!(2)]);
    let user = ok_json(app.get_as(&alice.jwt, "/events/user").await).await;
    assert_eq!(user["events"].as_array().map(Vec::len), Some(2));
}

/// A client resuming from an id whose events were deleted gets every later
/// event that is kept, in order, and no reset: the latest of each name is
/// never deleted, so it cannot have missed a state.
#[tokio::test]
async fn resuming_across_deleted_events_needs_no_reset() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    claim(&app, &alice, false).await;
    app.publish(&alice, &[("a", json!("a1")), ("b", json!("b1"))]).await; // ids 1, 2
    // A client saw id 2, then went away while these were published.
    let later = [("a", "a2"), ("a", "a3"), ("b", "b2"), ("a", "a4"), ("c", "c1")]; // 3..=7
    app.publish(&alice, &later.map(|(n, d)| (n, json!(d)))).await;
    retain(&app, &alice, json!({"keep_latest": 1})).await;
    eventually("trimmed to the latest of each name", || async {
        listed(&app, &alice).await == [json!("b2"), json!("a4"), json!("c1")]
    })
    .await;
    for (from, expected) in [
        ("2", vec![(5, "b2"), (6, "a4"), (7, "c1")]),
        // Id 4 (a3) itself was deleted: its place in the log still counts.
        ("4", vec![(5, "b2"), (6, "a4"), (7, "c1")]),
        ("6", vec![(7, "c1")]),
    ] {
        let mut sse = app.subscribe_to("/events", &[("last-event-id", from)]).await;
        let got = sse.take(expected.len()).await;
        let got: Vec<(i64, String)> =
            got.iter().map(|r| (r.id, r.data.as_str().unwrap_or("").to_owned())).collect();
        let expected: Vec<(i64, String)> =
            expected.into_iter().map(|(id, d)| (id, d.to_owned())).collect();
        assert_eq!(got, expected, "resuming from {from}");
        app.insert(&alice, "z", NOW, json!(from)).await;
        assert_eq!(sse.next().await.event, "z", "then live, with no reset before");
    }
    let mut sse = app.subscribe_to("/events", &[("last-event-id", "99")]).await;
    assert_eq!(sse.next().await.event, "reset", "an id above the head is still unknown");
}
