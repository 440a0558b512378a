//! Filtered and authenticated subscriptions.

use serde_json::json;
use uuid::Uuid;

use crate::support::{NOW, Received, TestApp, TestUser, error_json};

fn names(events: &[Received]) -> Vec<(&str, i64)> {
    events.iter().map(|e| (e.event.as_str(), e.id)).collect()
}

/// Inserts an event named `event` into `collection` as `user`, due now.
async fn insert_into(app: &TestApp, user: &TestUser, collection: Uuid, event: &str) {
    let body = json!({"event": event, "collection_id": collection, "timestamp": NOW, "data": null});
    assert_eq!(app.insert_raw(&user.jwt, &body).await.status(), 200);
}

#[tokio::test]
async fn filters_select_the_sync_and_the_live_stream() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let insert = async |collection, event| insert_into(&app, &user, collection, event).await;
    let mut witness = app.subscribe().await;
    insert(a, "x").await; // 1
    insert(b, "x").await; // 2
    insert(a, "y").await; // 3
    insert(b, "z").await; // 4
    witness.take(4).await;

    let mut all = app.subscribe().await;
    assert_eq!(names(&all.take(3).await), [("x", 2), ("y", 3), ("z", 4)]);
    let mut in_a = app.subscribe_to(&format!("/events?collection_id={a}"), &[]).await;
    assert_eq!(names(&in_a.take(2).await), [("x", 1), ("y", 3)], "latest per name within A");
    let mut named_x = app.subscribe_to("/events?event=x", &[]).await;
    assert_eq!(names(&named_x.take(1).await), [("x", 2)]);
    let path = format!("/events?collection_id={a}&collection_id={b}&event=y&event=z");
    let mut both = app.subscribe_to(&path, &[]).await;
    assert_eq!(names(&both.take(2).await), [("y", 3), ("z", 4)]);

    insert(b, "y").await; // 5
    insert(a, "x").await; // 6
    insert(b, "w").await; // 7
    assert_eq!(names(&all.take(3).await), [("y", 5), ("x", 6), ("w", 7)]);
    assert_eq!(names(&in_a.take(1).await), [("x", 6)]);
    assert_eq!(names(&named_x.take(1).await), [("x", 6)]);
    assert_eq!(names(&both.take(1).await), [("y", 5)]);

    // Resuming applies the filter to the replay too.
    let mut resumed =
        app.subscribe_to(&format!("/events?collection_id={b}&last_event_id=1"), &[]).await;
    assert_eq!(names(&resumed.take(4).await), [("x", 2), ("z", 4), ("y", 5), ("w", 7)]);
}

#[tokio::test]
async fn bad_filters_are_refused() {
    let app = TestApp::spawn().await;
    error_json(app.open_stream("/events?collection_id=nope", &[]).await, 400).await;
    error_json(app.open_stream("/events?colection_id=x", &[]).await, 400).await;
    error_json(app.open_stream("/events?event=", &[]).await, 400).await;
}

#[tokio::test]
async fn a_private_stream_takes_a_header_query_or_cookie_token() {
    let app = TestApp::spawn_with(&["--private-stream"]).await;
    let user = app.user("alice").await;
    let message = error_json(app.open_stream("/events", &[]).await, 401).await;
    assert!(message.contains("token"), "{message}");
    error_json(app.open_stream("/events?token=forged", &[]).await, 401).await;
    error_json(app.open_stream("/events", &[("cookie", "broker_token=forged")]).await, 401).await;

    let bearer = format!("Bearer {}", user.jwt);
    app.subscribe_to("/events", &[("authorization", &bearer)]).await;
    app.subscribe_to(&format!("/events?token={}", user.jwt), &[]).await;
    // The cookie login sets.
    let login = app.log_in("alice", "secret-pw").await;
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap();
    let mut sse =
        app.subscribe_to("/events", &[("cookie", &format!("theme=dark; {cookie}"))]).await;
    app.insert(&user, "hello", NOW, json!(1)).await;
    assert_eq!(sse.next().await.event, "hello");
}

#[tokio::test]
async fn an_open_stream_takes_anonymous_subscribers_but_checks_tokens() {
    let app = TestApp::spawn().await;
    app.subscribe().await;
    error_json(app.open_stream("/events?token=forged", &[]).await, 401).await;
}

#[tokio::test]
async fn a_stream_closes_when_its_token_expires() {
    let app = TestApp::spawn_with(&["--expiry", "60"]).await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe_to(&format!("/events?token={}", user.jwt), &[]).await;
    let mut anonymous = app.subscribe().await;
    app.clock.advance(59_000);
    app.insert(&user, "still", NOW, json!(1)).await;
    assert_eq!(sse.next().await.event, "still");
    app.clock.advance(1_000);
    sse.ended().await;
    let bob = app.user("bob").await; // alice's token has expired too
    app.insert(&bob, "later", NOW, json!(2)).await;
    assert_eq!(anonymous.take(2).await[1].event, "later", "other streams go on");
}

#[tokio::test]
async fn a_stream_naming_collections_syncs_each_collections_own_state() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let insert = async |collection, event| insert_into(&app, &user, collection, event).await;
    let mut witness = app.subscribe().await;
    insert(a, "card:1").await; // 1
    insert(b, "card:1").await; // 2
    insert(a, "card:2").await; // 3
    insert(a, "card:1").await; // 4
    witness.take(4).await;
    let of = |events: &[Received]| events.iter().map(|e| e.id).collect::<Vec<_>>();

    // Both boards' card:1, each the latest of its own board.
    let both = format!("/events?collection_id={a}&collection_id={b}");
    let mut sse = app.subscribe_to(&both, &[]).await;
    assert_eq!(of(&sse.take(3).await), [2, 3, 4]);
    let mut named = app.subscribe_to(&format!("{both}&event=card:1"), &[]).await;
    assert_eq!(of(&named.take(2).await), [2, 4]);
    // Unfiltered: 1.x's latest of each name, whatever its collection.
    let mut all = app.subscribe().await;
    assert_eq!(of(&all.take(2).await), [3, 4]);
    // Nothing more in any of them: the next event is the next one out.
    insert(b, "card:9").await; // 5
    for stream in [&mut sse, &mut all] {
        assert_eq!(stream.next().await.id, 5);
    }
}
