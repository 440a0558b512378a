//! `POST /signal`: messages for the streams of a collection open now,
//! never stored, on streams that asked for them.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::{claim, set_member, stream_of};
use crate::support::{NOW, Sse, TestApp, TestUser, error_json, ok_json};

/// Sends a signal as `user`.
async fn signal(
    app: &TestApp,
    user: &TestUser,
    collection: Uuid,
    data: Value,
) -> reqwest::Response {
    let body = json!({"collection_id": collection, "event": "typing", "data": data});
    app.post_as(&user.jwt, "/signal", &body).await
}

/// Inserts `name` into `collection` as `user`, due now.
async fn insert(app: &TestApp, user: &TestUser, collection: Uuid, name: &str) {
    let body = json!({"event": name, "collection_id": collection, "timestamp": NOW, "data": 0});
    ok_json(app.insert_raw(&user.jwt, &body).await).await;
}

/// The next frame's name and data, and whether it carried an id.
async fn next(stream: &mut Sse) -> (String, Value, bool) {
    let (id, event, data) = stream.next_raw().await;
    (event, data, !id.is_empty())
}

#[tokio::test]
async fn a_signal_reaches_the_streams_that_asked_for_it_and_is_never_stored() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let (a, b) = (alice.collection, Uuid::new_v4());
    let mut asked = app.subscribe_to(&format!("/events?collection_id={a}&signals=true"), &[]).await;
    let mut plain = app.subscribe_to(&format!("/events?collection_id={a}"), &[]).await;
    let mut elsewhere =
        app.subscribe_to(&format!("/events?collection_id={b}&signals=true"), &[]).await;
    let mut everything = app.subscribe().await;

    let sent = ok_json(signal(&app, &alice, a, json!({"card": 7})).await).await;
    let expected =
        json!({"collection_id": a, "event": "typing", "user_id": alice.id, "data": {"card": 7}});
    assert_eq!(sent["signal"], expected);
    insert(&app, &alice, a, "after").await;
    insert(&app, &alice, b, "after").await;

    assert_eq!(next(&mut asked).await, ("signal".into(), expected, false), "no id");
    assert_eq!(next(&mut asked).await.0, "after");
    for stream in [&mut plain, &mut elsewhere, &mut everything] {
        assert_eq!(next(stream).await, ("after".into(), json!(0), true), "no signal first");
    }
    // Nothing stored: not listed, not in a new stream's sync, not replayed.
    assert_eq!(app.collection(&alice, a).await.len(), 1, "only the event");
    let mut later = app.subscribe_to(&format!("/events?collection_id={a}&signals=true"), &[]).await;
    assert_eq!(next(&mut later).await.0, "after");
    let resumed = format!("/events?collection_id={a}&signals=true&last_event_id=0");
    let mut resumed = app.subscribe_to(&resumed, &[]).await;
    assert_eq!(next(&mut resumed).await.0, "after");
}

#[tokio::test]
async fn signals_others_leaves_out_the_senders_own_streams() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let query = format!("?collection_id={}&signals=others", alice.collection);
    let (mut alices, mut bobs) =
        (stream_of(&app, &alice, &query).await, stream_of(&app, &bob, &query).await);
    ok_json(signal(&app, &alice, alice.collection, json!(1)).await).await;
    ok_json(signal(&app, &bob, alice.collection, json!(2)).await).await;
    assert_eq!(next(&mut bobs).await.1["data"], 1, "alice's");
    assert_eq!(next(&mut alices).await.1["data"], 2, "bob's, not her own");
}

#[tokio::test]
async fn signals_of_a_private_collection_reach_its_readers_only() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    claim(&app, &alice, true).await;
    set_member(&app, &alice, "carol", Some("reader")).await;
    let (private, public) = (alice.collection, bob.collection);
    let query = format!("?collection_id={private}&collection_id={public}&signals=true");
    let mut outsider = stream_of(&app, &bob, &query).await;
    let mut anonymous = app.subscribe_to(&format!("/events{query}"), &[]).await;
    let mut member = stream_of(&app, &carol, &query).await;
    ok_json(signal(&app, &alice, private, json!("secret")).await).await;
    insert(&app, &bob, public, "public").await;
    assert_eq!(next(&mut member).await.1["data"], "secret");
    for stream in [&mut outsider, &mut anonymous] {
        assert_eq!(next(stream).await.0, "public", "the signal never reached them");
    }
    // A reader may not signal (it is a write); an outsider neither.
    error_json(signal(&app, &carol, private, json!(1)).await, 403).await;
    error_json(signal(&app, &bob, private, json!(1)).await, 403).await;
}

#[tokio::test]
async fn signals_are_checked_and_limited() {
    let app = TestApp::spawn_with(&["--signal-rate", "2"]).await;
    let alice = app.user("alice").await;
    let c = alice.collection;
    let big = json!({"collection_id": c, "event": "x", "data": "a".repeat(7700)});
    error_json(app.post_as(&alice.jwt, "/signal", &big).await, 413).await;
    ok_json(signal(&app, &alice, c, json!(1)).await).await;
    ok_json(signal(&app, &alice, c, json!(2)).await).await;
    let refused = signal(&app, &alice, c, json!(3)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let anonymous =
        app.post("/signal", &json!({"collection_id": c, "event": "x", "data": 1})).await;
    assert_eq!(anonymous.status(), 401);
    // Without a collection: a stream all the same, told that none will come.
    let mut response = app.open_stream("/events?signals=true", &[]).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("none named, none will come"), "{first:?}");
    let response = app.open_stream(&format!("/events?collection_id={c}&signals=maybe"), &[]).await;
    error_json(response, 400).await;
}
