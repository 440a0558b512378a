//! The store's contract: what every backend must do, checked on the suite's
//! backend (SQLite, or PostgreSQL with `BROKER_TEST_BACKEND=postgres`).

use std::sync::Arc;

use broker::domain::{Event, Filter, User};
use broker::store::{Cancel, Store, StoreError};
use uuid::Uuid;

use crate::support::{TestDb, config, on_postgres};

/// A store on a database of its own, with what keeps that database alive.
async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir, Option<TestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let db = if on_postgres() { Some(TestDb::create().await) } else { None };
    let store =
        broker::store::open(config(dir.path(), db.as_ref(), &[]).store_location(), Arc::default())
            .unwrap();
    (store, dir, db)
}

fn event(name: &str, collection: Uuid, timestamp: i64) -> Event {
    Event {
        id: Uuid::new_v4(),
        user_id: collection,
        collection_id: collection,
        event: name.into(),
        timestamp,
        published: false,
        cancelled: false,
        data: serde_json::value::to_raw_value(name).unwrap(),
    }
}

#[tokio::test]
async fn publication_numbers_due_events_in_timestamp_then_insertion_order() {
    let (store, _dir, _db) = fresh().await;
    let c = Uuid::new_v4();
    let now = broker::Clock::System.now_secs();
    for (name, ago) in [("a", 5), ("b", 9), ("c", 5), ("d", 7), ("later", -1000)] {
        store.insert_event(event(name, c, now - ago)).await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.next_due().await.unwrap().is_some_and(|t| t <= now + 1), "due already");
    let first = store.publish_due(now, 2).await.unwrap();
    let second = store.publish_due(now, 10).await.unwrap();
    let got: Vec<(i64, &str)> =
        first.iter().chain(&second).map(|p| (p.seq, p.event.event.as_str())).collect();
    assert_eq!(got, [(1, "b"), (2, "d"), (3, "a"), (4, "c")]);
    assert!(first.iter().all(|p| p.event.published));
    assert!(store.publish_due(now, 10).await.unwrap().is_empty(), "published once");
    assert_eq!(store.head().await.unwrap(), 4);
    assert_eq!(store.next_due().await.unwrap(), Some(now + 1000));
    assert_eq!(store.pending().await.unwrap(), 1);
    let replayed = store.replay(1, 4, &Filter::default(), 10).await.unwrap();
    assert_eq!(replayed.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let only_a = Filter::new(vec![c], vec!["a".into()]).unwrap();
    let replayed = store.replay(0, 4, &only_a, 10).await.unwrap();
    assert_eq!(replayed.iter().map(|p| p.seq).collect::<Vec<_>>(), [3]);
}

#[tokio::test]
async fn the_snapshot_is_the_latest_event_of_each_name() {
    let (store, _dir, _db) = fresh().await;
    let (c, other) = (Uuid::new_v4(), Uuid::new_v4());
    for (name, collection) in [("x", c), ("y", c), ("x", c), ("x", other)] {
        store.insert_event(event(name, collection, 0)).await.unwrap();
        store.publish_due(0, 10).await.unwrap();
    }
    let all = store.snapshot(&Filter::default(), true).await.unwrap();
    assert_eq!(all.head, 4);
    // The latest of each name across the selected collections.
    assert_eq!(all.latest.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 4]);
    let mine = store.snapshot(&Filter::new(vec![c], vec![]).unwrap(), true).await.unwrap();
    assert_eq!(mine.latest.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3]);
}

#[tokio::test]
async fn cancellation_is_final_and_excludes_publication() {
    let (store, _dir, _db) = fresh().await;
    let c = Uuid::new_v4();
    let future = event("f", c, 100);
    let now = event("n", c, 0);
    store.insert_event(future.clone()).await.unwrap();
    store.insert_event(now.clone()).await.unwrap();
    assert!(matches!(store.cancel_event(future.id, Uuid::new_v4()).await, Ok(Cancel::NotOwner)));
    assert!(
        matches!(store.cancel_event(future.id, c).await, Ok(Cancel::Cancelled(e)) if e.cancelled)
    );
    assert!(matches!(store.cancel_event(future.id, c).await, Ok(Cancel::AlreadyCancelled)));
    assert!(matches!(store.cancel_event(Uuid::new_v4(), c).await, Ok(Cancel::NotFound)));
    let published = store.publish_due(1000, 10).await.unwrap();
    assert_eq!(published.iter().map(|p| p.event.id).collect::<Vec<_>>(), [now.id]);
    assert!(matches!(store.cancel_event(now.id, c).await, Ok(Cancel::AlreadyPublished)));
    assert_eq!(store.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn users_are_found_by_name_and_id_and_names_are_unique() {
    let (store, _dir, _db) = fresh().await;
    let user = User {
        id: Uuid::new_v4(),
        username: "alice".into(),
        password_hash: "hash".into(),
        collection_id: Uuid::new_v4(),
        ..User::default()
    };
    store.create_user(user.clone()).await.unwrap();
    let again = User { id: Uuid::new_v4(), ..user.clone() };
    assert!(matches!(store.create_user(again).await, Err(StoreError::UsernameTaken)));
    assert_eq!(store.user_by_name("alice").await.unwrap().map(|u| u.id), Some(user.id));
    assert_eq!(store.user_by_id(user.id).await.unwrap().map(|u| u.username), Some("alice".into()));
    assert!(store.user_by_name("bob").await.unwrap().is_none());
    assert!(!store.is_empty().await.unwrap());
    let secret = store.keep_secret("first".into()).await.unwrap();
    assert_eq!(store.keep_secret("second".into()).await.unwrap(), secret, "kept once");
}
