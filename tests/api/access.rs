//! Claimed and private collections: who may insert, list and stream what.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{NOW, Sse, TestApp, TestUser, error_json, ok_json};

/// Claims `owner`'s own collection, private or not.
pub async fn claim(app: &TestApp, owner: &TestUser, private: bool) -> Value {
    let body = json!({"collection_id": owner.collection, "private": private});
    let response = app.post_as(&owner.jwt, "/collections", &body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Gives `member` a role in `owner`'s collection (`None`: removes them).
pub async fn set_member(
    app: &TestApp,
    owner: &TestUser,
    member: &str,
    role: Option<&str>,
) -> Value {
    let path = format!("/collections/{}/members/{member}", owner.collection);
    let response = match role {
        Some(role) => app.send(Method::PUT, &owner.jwt, &path, Some(&json!({"role": role}))).await,
        None => app.send(Method::DELETE, &owner.jwt, &path, None).await,
    };
    ok_json(response).await
}

/// A stream opened with `user`'s token.
pub async fn stream_of(app: &TestApp, user: &TestUser, query: &str) -> Sse {
    let bearer = format!("Bearer {}", user.jwt);
    app.subscribe_to(&format!("/events{query}"), &[("authorization", &bearer)]).await
}

/// Inserts into `collection` as `user`, due now.
async fn insert_into(
    app: &TestApp,
    user: &TestUser,
    collection: Uuid,
    name: &str,
) -> reqwest::Response {
    let body =
        json!({"event": name, "collection_id": collection, "timestamp": NOW, "data": {"n": name}});
    app.insert_raw(&user.jwt, &body).await
}

#[tokio::test]
async fn a_claimed_collection_takes_inserts_from_its_owner_and_writers_only() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let claimed = claim(&app, &alice, false).await;
    assert_eq!(claimed["owner"]["username"], "alice");
    assert_eq!(claimed["private"], false);
    let refused = insert_into(&app, &bob, alice.collection, "x").await;
    assert!(error_json(refused, 403).await.contains("owner and writers"));
    set_member(&app, &alice, "bob", Some("writer")).await;
    let collection = set_member(&app, &alice, "carol", Some("reader")).await;
    let roles: Vec<(&str, &str)> = collection["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["username"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [("bob", "writer"), ("carol", "reader")]);
    ok_json(insert_into(&app, &bob, alice.collection, "by-bob").await).await;
    ok_json(insert_into(&app, &alice, alice.collection, "by-alice").await).await;
    error_json(insert_into(&app, &carol, alice.collection, "x").await, 403).await;
    // Public: everyone reads it.
    let dave = app.user("dave").await;
    assert_eq!(app.collection(&dave, alice.collection).await.len(), 2);
}

#[tokio::test]
async fn claims_are_refused_when_taken_or_written_by_others() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // Only alice wrote to her collection: she may claim it.
    app.insert(&alice, "mine", NOW + 60, json!(1)).await;
    claim(&app, &alice, true).await;
    let again = json!({"collection_id": alice.collection});
    let message = error_json(app.post_as(&alice.jwt, "/collections", &again).await, 409).await;
    assert!(message.contains("already"), "{message}");
    error_json(app.post_as(&bob.jwt, "/collections", &again).await, 409).await;
    // Bob's collection holds an event of alice's: bob cannot claim it.
    let body = json!({"event": "x", "collection_id": bob.collection, "timestamp": NOW, "data": 1});
    ok_json(app.insert_raw(&alice.jwt, &body).await).await;
    let theirs = json!({"collection_id": bob.collection});
    let message = error_json(app.post_as(&bob.jwt, "/collections", &theirs).await, 409).await;
    assert!(message.contains("other users"), "{message}");
    // Only the owner manages a collection, and only a claimed one.
    let path = format!("/collections/{}", alice.collection);
    let patch = json!({"private": false});
    error_json(app.send(Method::PATCH, &bob.jwt, &path, Some(&patch)).await, 403).await;
    error_json(app.get_as(&bob.jwt, &path).await, 403).await;
    let unclaimed = format!("/collections/{}", Uuid::new_v4());
    error_json(app.get_as(&bob.jwt, &unclaimed).await, 404).await;
    let member = format!("/collections/{}/members/nobody", alice.collection);
    let role = json!({"role": "reader"});
    error_json(app.send(Method::PUT, &alice.jwt, &member, Some(&role)).await, 404).await;
    let bad_role = json!({"role": "owner"});
    let bob_member = format!("/collections/{}/members/bob", alice.collection);
    error_json(app.send(Method::PUT, &alice.jwt, &bob_member, Some(&bad_role)).await, 422).await;
    let herself = format!("/collections/{}/members/alice", alice.collection);
    error_json(app.send(Method::PUT, &alice.jwt, &herself, Some(&role)).await, 409).await;
}

#[tokio::test]
async fn a_private_collection_is_listed_to_its_owner_and_members_only() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    claim(&app, &alice, true).await;
    app.insert(&alice, "secret", NOW + 60, json!("s")).await;
    let path = format!("/events/collections/{}", alice.collection);
    assert!(error_json(app.get_as(&bob.jwt, &path).await, 403).await.contains("private"));
    set_member(&app, &alice, "bob", Some("reader")).await;
    assert_eq!(app.collection(&bob, alice.collection).await.len(), 1);
    assert_eq!(app.collection(&alice, alice.collection).await.len(), 1);
    error_json(app.get_as(&carol.jwt, &path).await, 403).await;
    // Owner and members see the collection's rules; others do not.
    let rules = format!("/collections/{}", alice.collection);
    ok_json(app.get_as(&bob.jwt, &rules).await).await;
    error_json(app.get_as(&carol.jwt, &rules).await, 403).await;
    // Signing up with a private collection as one's own shows nothing of it.
    let body =
        json!({"username": "mallory", "password": "secret-pw", "collection_id": alice.collection});
    ok_json(app.post("/users", &body).await).await;
    let jwt =
        ok_json(app.log_in("mallory", "secret-pw").await).await["jwt"].as_str().unwrap().to_owned();
    let listed = ok_json(app.get_as(&jwt, "/events/user").await).await;
    assert_eq!(listed["info"], json!([]), "{listed}");
    // Made public, everyone reads it.
    let public = json!({"private": false});
    let changed = ok_json(app.send(Method::PATCH, &alice.jwt, &rules, Some(&public)).await).await;
    assert_eq!(changed["private"], false);
    assert_eq!(app.collection(&carol, alice.collection).await.len(), 1);
}

#[tokio::test]
async fn private_events_reach_only_the_streams_that_may_read_them() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    claim(&app, &alice, true).await;
    set_member(&app, &alice, "bob", Some("reader")).await;
    let mut anonymous = app.subscribe().await;
    let mut outsider = stream_of(&app, &carol, "").await;
    let mut member = stream_of(&app, &bob, "").await;
    let mut filtered = stream_of(&app, &bob, &format!("?collection_id={}", alice.collection)).await;
    ok_json(insert_into(&app, &alice, alice.collection, "private").await).await;
    ok_json(insert_into(&app, &carol, carol.collection, "public").await).await;
    let seen = member.take(2).await;
    assert_eq!(seen.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["private", "public"]);
    assert_eq!(filtered.next().await, seen[0], "same id and data with a filter");
    // The others see a gap in the ids, nothing else.
    for stream in [&mut anonymous, &mut outsider] {
        assert_eq!(stream.next().await, seen[1]);
    }
    // The sync on connect and the replay follow the same rules.
    let mut late = app.subscribe().await;
    assert_eq!(late.next().await.event, "public");
    let mut late_member = stream_of(&app, &bob, "").await;
    let synced: Vec<String> = late_member.take(2).await.into_iter().map(|e| e.event).collect();
    assert_eq!(synced, ["private", "public"]);
    let before = (seen[0].id - 1).to_string();
    let mut resumed = app.subscribe_to("/events", &[("last-event-id", &before)]).await;
    assert_eq!(resumed.next().await, seen[1]);
    let bearer = format!("Bearer {}", bob.jwt);
    let mut resumed_member = app
        .subscribe_to("/events", &[("last-event-id", &before), ("authorization", &bearer)])
        .await;
    assert_eq!(resumed_member.take(2).await, seen);
}

#[tokio::test]
async fn removing_a_member_or_going_private_takes_effect_on_open_streams() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, false).await;
    set_member(&app, &alice, "bob", Some("reader")).await;
    let mut anonymous = app.subscribe().await;
    let mut member = stream_of(&app, &bob, "").await;
    ok_json(insert_into(&app, &alice, alice.collection, "while-public").await).await;
    assert_eq!(anonymous.next().await.event, "while-public");
    assert_eq!(member.next().await.event, "while-public");
    let rules = format!("/collections/{}", alice.collection);
    let private = json!({"private": true});
    ok_json(app.send(Method::PATCH, &alice.jwt, &rules, Some(&private)).await).await;
    ok_json(insert_into(&app, &alice, alice.collection, "while-private").await).await;
    assert_eq!(member.next().await.event, "while-private");
    set_member(&app, &alice, "bob", None).await;
    ok_json(insert_into(&app, &alice, alice.collection, "after-removal").await).await;
    ok_json(insert_into(&app, &bob, bob.collection, "marker").await).await;
    // Neither the anonymous stream nor the removed member sees the private ones.
    assert_eq!(anonymous.next().await.event, "marker");
    assert_eq!(member.next().await.event, "marker");
    let path = format!("/events/collections/{}", alice.collection);
    error_json(app.get_as(&bob.jwt, &path).await, 403).await;
    error_json(insert_into(&app, &bob, alice.collection, "x").await, 403).await;
}

#[tokio::test]
async fn the_sync_shows_each_reader_the_latest_state_it_may_read() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    claim(&app, &alice, true).await;
    set_member(&app, &alice, "bob", Some("reader")).await;
    let mut witness = stream_of(&app, &alice, "").await;
    ok_json(insert_into(&app, &carol, carol.collection, "status").await).await;
    ok_json(insert_into(&app, &alice, alice.collection, "status").await).await;
    ok_json(insert_into(&app, &alice, alice.collection, "secret").await).await;
    let published = witness.take(3).await;
    // Anonymous and outsiders: the latest public "status", nothing else.
    let mut anonymous = app.subscribe().await;
    assert_eq!(anonymous.next().await, published[0]);
    let mut outsider = stream_of(&app, &carol, "?event=status&event=secret").await;
    assert_eq!(outsider.next().await, published[0]);
    // A member: the private "status", newer, and "secret".
    let mut member = stream_of(&app, &bob, "").await;
    assert_eq!(member.take(2).await, published[1..]);
    let filtered =
        format!("?collection_id={}&collection_id={}", carol.collection, alice.collection);
    // Naming collections: each one's own state, carol's "status" too.
    let mut member = stream_of(&app, &bob, &filtered).await;
    assert_eq!(member.take(3).await, published);
    let mut public_only =
        stream_of(&app, &bob, &format!("?collection_id={}", carol.collection)).await;
    assert_eq!(public_only.next().await, published[0]);
    // Nothing more came in any of them: a new public status is next everywhere.
    ok_json(insert_into(&app, &carol, carol.collection, "status").await).await;
    let marker = witness.next().await;
    for stream in [&mut anonymous, &mut outsider, &mut member, &mut public_only] {
        assert_eq!(stream.next().await, marker);
    }
}

#[tokio::test]
async fn a_stream_is_told_which_named_collections_it_may_not_read() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, true).await;
    let public = Uuid::new_v4();
    let query = format!("?envelope=true&collection_id={}&collection_id={public}", alice.collection);
    let forbidden =
        |data: &Value| (data["collections"].clone(), data["error"].as_str().map(str::to_owned));
    let mut anonymous = app.subscribe_to(&format!("/events{query}"), &[]).await;
    let (id, event, data) = anonymous.next_raw().await;
    assert_eq!((id.as_str(), event.as_str()), ("", "forbidden"), "no id: the position stays");
    let (collections, error) = forbidden(&data);
    assert_eq!(collections, json!([alice.collection]));
    assert!(error.unwrap().starts_with("not logged in"));
    let mut outsider = stream_of(&app, &bob, &query).await;
    let (_, event, data) = outsider.next_raw().await;
    assert_eq!(event, "forbidden");
    assert!(forbidden(&data).1.unwrap().starts_with("not a member"));
    // The owner is told nothing: her first event is her own.
    let mut owner = stream_of(&app, &alice, &query).await;
    ok_json(insert_into(&app, &alice, alice.collection, "secret").await).await;
    assert_eq!(owner.next().await.data["event"], "secret");

    // Let in, bob is told so on the same stream, and the next event comes.
    set_member(&app, &alice, "bob", Some("reader")).await;
    let (_, event, data) = outsider.next_raw().await;
    assert_eq!((event.as_str(), forbidden(&data)), ("forbidden", (json!([]), None)));
    ok_json(insert_into(&app, &alice, alice.collection, "welcome").await).await;
    assert_eq!(outsider.next().await.data["event"], "welcome");
    // Let out again: told again.
    set_member(&app, &alice, "bob", None).await;
    let (_, event, data) = outsider.next_raw().await;
    assert_eq!((event.as_str(), forbidden(&data).0), ("forbidden", json!([alice.collection])));

    // A plain (1.x) stream gets a comment only: its first event is a real one.
    let mut plain = app
        .subscribe_to(
            &format!("/events?collection_id={}&collection_id={public}", alice.collection),
            &[],
        )
        .await;
    let body = json!({"event": "open", "collection_id": public, "timestamp": NOW, "data": 1});
    ok_json(app.insert_raw(&bob.jwt, &body).await).await;
    assert_eq!(plain.next().await.event, "open");
    assert_eq!(anonymous.next().await.data["event"], "open", "nothing private before it");
}
