//! Presence: who has a collection open, announced to the streams that ask.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::{claim, set_member, stream_of};
use crate::support::{NOW, Sse, TestApp, TestUser, error_json, eventually, ok_json};

/// The next `event:presence` frame's data (no id).
async fn next_presence(stream: &mut Sse) -> Value {
    let (id, event, data) = stream.next_raw().await;
    assert_eq!((id.as_str(), event.as_str()), ("", "presence"), "{data}");
    data
}

/// `(type, username)` of a join or leave frame.
async fn change(stream: &mut Sse) -> (String, String) {
    let data = next_presence(stream).await;
    (data["type"].as_str().unwrap().into(), data["username"].as_str().unwrap().into())
}

/// `GET /collections/{id}/presence` as `user`: `[(username, connections)]`
/// and the anonymous count.
async fn present(app: &TestApp, user: &TestUser, collection: Uuid) -> (Vec<(String, u64)>, u64) {
    let body =
        ok_json(app.get_as(&user.jwt, &format!("/collections/{collection}/presence")).await).await;
    let users = body["users"].as_array().unwrap().iter();
    let users =
        users.map(|u| (u["username"].as_str().unwrap().into(), u["connections"].as_u64().unwrap()));
    (users.collect(), body["anonymous"].as_u64().unwrap())
}

async fn wait_present(
    app: &TestApp,
    user: &TestUser,
    collection: Uuid,
    expected: (Vec<(&str, u64)>, u64),
) {
    let expected = (expected.0.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(), expected.1);
    eventually("the presence", || async { present(app, user, collection).await == expected }).await;
}

#[tokio::test]
async fn a_user_with_several_tabs_joins_once_and_leaves_after_the_grace_period() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let board = Uuid::new_v4();
    let query = format!("?collection_id={board}");
    let mut watcher = app.subscribe_to(&format!("/events{query}&presence=true"), &[]).await;
    let list = next_presence(&mut watcher).await;
    assert_eq!(list, json!({"collection_id": board, "type": "list", "users": [], "anonymous": 1}));

    let first_tab = stream_of(&app, &alice, &query).await;
    let second_tab = stream_of(&app, &alice, &query).await;
    let joined = next_presence(&mut watcher).await;
    assert_eq!(
        (joined["type"].as_str(), joined["user_id"].as_str()),
        (Some("join"), Some(&*alice.id.to_string()))
    );
    assert_eq!(joined["username"], "alice");
    wait_present(&app, &bob, board, (vec![("alice", 2)], 1)).await;

    // Both tabs close, one comes back within the grace period: nothing.
    drop((first_tab, second_tab));
    wait_present(&app, &bob, board, (vec![("alice", 0)], 1)).await;
    let again = stream_of(&app, &alice, &query).await;
    wait_present(&app, &bob, board, (vec![("alice", 1)], 1)).await;
    app.set_time(NOW + 10); // the first pending leave is past: still present
    let _bobs = stream_of(&app, &bob, &query).await;
    assert_eq!(
        change(&mut watcher).await,
        ("join".into(), "bob".into()),
        "no leave and join of alice"
    );

    // Now alice's last tab closes for good: she leaves once the grace is over.
    drop(again);
    wait_present(&app, &bob, board, (vec![("alice", 0), ("bob", 1)], 1)).await;
    app.set_time(NOW + 16);
    assert_eq!(change(&mut watcher).await, ("leave".into(), "alice".into()));
    wait_present(&app, &bob, board, (vec![("bob", 1)], 1)).await;
}

#[tokio::test]
async fn presence_of_a_private_collection_is_its_readers_and_a_removed_member_leaves_at_once() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    claim(&app, &alice, true).await;
    set_member(&app, &alice, "bob", Some("reader")).await;
    set_member(&app, &alice, "dave", Some("reader")).await;
    let board = alice.collection;
    let query = format!("?collection_id={board}&presence=true");
    let mut owners = stream_of(&app, &alice, &query).await;
    let list = next_presence(&mut owners).await;
    assert_eq!(list["users"][0]["username"], "alice", "the owner herself");
    // An outsider is not present, is told nothing of it, and may not ask.
    let mut outsiders =
        stream_of(&app, &carol, &format!("{query}&collection_id={}", carol.collection)).await;
    let carols = next_presence(&mut outsiders).await;
    // Only her own collection is listed (herself in it), not the board.
    assert_eq!(carols["collection_id"], json!(carol.collection));
    assert_eq!(carols["users"][0]["username"], "carol");
    error_json(app.get_as(&carol.jwt, &format!("/collections/{board}/presence")).await, 403).await;
    let _bobs = stream_of(&app, &bob, &query).await;
    let _daves = stream_of(&app, &dave, &query).await;
    assert_eq!(change(&mut owners).await, ("join".into(), "bob".into()));
    assert_eq!(change(&mut owners).await, ("join".into(), "dave".into()));
    wait_present(&app, &alice, board, (vec![("alice", 1), ("bob", 1), ("dave", 1)], 0)).await;

    // Removed, bob leaves at once (the clock does not move); dave logs out.
    set_member(&app, &alice, "bob", None).await;
    assert_eq!(change(&mut owners).await, ("leave".into(), "bob".into()));
    assert_eq!(app.post_as(&dave.jwt, "/logout", &json!({})).await.status(), 204);
    assert_eq!(change(&mut owners).await, ("leave".into(), "dave".into()));
    // The outsider's stream never heard of any of it: its next frame is
    // of its own collection.
    let _carols_own =
        stream_of(&app, &alice, &format!("?collection_id={}", carol.collection)).await;
    assert_eq!(change(&mut outsiders).await, ("join".into(), "alice".into()));
}
