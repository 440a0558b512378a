//! The store's contract: what every backend must do, checked on the suite's
//! backend (SQLite, or PostgreSQL with `BROKER_TEST_BACKEND=postgres`).

use std::sync::Arc;

use broker::domain::{Event, Filter, User};
use broker::policy::Role;
use broker::store::{
    Cancel, Change, Changed, Inserted, ListOf, Position, Record, Store, StoreError,
};
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
        store.insert_event(event(name, c, now - ago), None, None).await.unwrap();
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

/// Given `now`, SQLite publishes an insert due by then in its own
/// transaction, after what is published and never before an earlier event
/// still due; PostgreSQL leaves every publication to the scheduler.
#[tokio::test]
async fn an_insert_due_at_once_is_published_with_it_unless_others_are_due() {
    let (store, _dir, _db) = fresh().await;
    let c = Uuid::new_v4();
    let inserted = store.insert_event(event("a", c, 5), None, Some(10)).await.unwrap();
    let Some(mut publications) = store.publications() else {
        assert!(matches!(inserted, Inserted::New));
        return;
    };
    assert!(store.publications().is_none(), "taken once");
    let mut next = || {
        let batch = publications.batches.try_recv().expect("a batch per commit");
        let got = batch.published.iter().map(|p| (p.seq, p.event.event.clone(), p.event.published));
        (got.collect::<Vec<_>>(), batch.answered)
    };
    let Inserted::Published(answering) = inserted else { panic!("published with its insert") };
    let (published, answered) = next();
    assert_eq!(published, [(1, "a".to_owned(), true)]);
    // The batch goes to the streams once the insert's answer is written
    // (its `Answering` dropped), not before.
    let mut answered = std::pin::pin!(answered.wait());
    tokio::select! {
        biased;
        _ = &mut answered => panic!("answered before the answer was written"),
        () = std::future::ready(()) => {}
    }
    drop(answering);
    assert!(answered.await, "answered once the answer was written");
    assert_eq!(store.pending().await.unwrap(), 0);
    let latest = store.snapshot(&Filter::default(), true).await.unwrap();
    assert_eq!((latest.head, latest.latest[0].seq), (1, 1));

    // A future event becomes due; an insert due at once waits behind it.
    let future = store.insert_event(event("f", c, 20), None, Some(10)).await.unwrap();
    assert!(matches!(future, Inserted::New));
    let behind = store.insert_event(event("b", c, 10), None, Some(30)).await.unwrap();
    assert!(matches!(behind, Inserted::New));
    let published = store.publish_due(30, 10).await.unwrap();
    let got: Vec<(i64, &str)> = published.iter().map(|p| (p.seq, p.event.event.as_str())).collect();
    assert_eq!(got, [(2, "b"), (3, "f")]);
    let after = store.insert_event(event("c", c, 30), None, Some(30)).await.unwrap();
    assert!(matches!(after, Inserted::Published(_)));
    assert_eq!(next().0, [(4, "c".to_owned(), true)]);
    assert!(publications.batches.try_recv().is_err(), "the scheduler's own go to it");
    let replayed = store.replay(0, 4, &Filter::default(), 10).await.unwrap();
    assert_eq!(replayed.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

#[tokio::test]
async fn the_snapshot_is_the_latest_event_of_each_name() {
    let (store, _dir, _db) = fresh().await;
    let (c, other) = (Uuid::new_v4(), Uuid::new_v4());
    for (name, collection) in [("x", c), ("y", c), ("x", c), ("x", other)] {
        store.insert_event(event(name, collection, 0), None, None).await.unwrap();
        store.publish_due(0, 10).await.unwrap();
    }
    let all = store.snapshot(&Filter::default(), true).await.unwrap();
    assert_eq!(all.head, 4);
    // The latest of each name across the selected collections.
    assert_eq!(all.latest.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 4]);
    let mine = store.snapshot(&Filter::new(vec![c], vec![]).unwrap(), true).await.unwrap();
    assert_eq!(mine.latest.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3]);
    // Naming collections: the latest of each name in each of them.
    let both = store.snapshot(&Filter::new(vec![c, other], vec![]).unwrap(), true).await.unwrap();
    assert_eq!(both.latest.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3, 4]);
}

#[tokio::test]
async fn cancellation_is_final_and_excludes_publication() {
    let (store, _dir, _db) = fresh().await;
    let c = Uuid::new_v4();
    let future = event("f", c, 100);
    let now = event("n", c, 0);
    store.insert_event(future.clone(), None, None).await.unwrap();
    store.insert_event(now.clone(), None, None).await.unwrap();
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

fn user(name: &str) -> User {
    User {
        id: Uuid::new_v4(),
        username: name.into(),
        password_hash: "hash".into(),
        collection_id: Uuid::new_v4(),
        ..User::default()
    }
}

#[tokio::test]
async fn listings_go_by_timestamp_then_insertion_a_page_at_a_time() {
    let (store, _dir, _db) = fresh().await;
    let (c, other) = (Uuid::new_v4(), Uuid::new_v4());
    for (name, collection, timestamp) in
        [("a", c, 30), ("b", c, 10), ("c", other, 20), ("d", c, 10)]
    {
        store.insert_event(event(name, collection, timestamp), None, None).await.unwrap();
    }
    let names = |page: &[broker::store::Listed]| {
        page.iter().map(|l| l.event.event.clone()).collect::<Vec<_>>()
    };
    let first = store.list(ListOf::Collection(c), None, 2).await.unwrap();
    assert_eq!(names(&first), ["b", "d"]);
    let after = Some(first[1].position);
    assert_eq!(names(&store.list(ListOf::Collection(c), after, 2).await.unwrap()), ["a"]);
    let start = Some(Position::START);
    assert_eq!(
        names(&store.list(ListOf::Collection(c), start, 10).await.unwrap()),
        ["b", "d", "a"]
    );
    // `event()` makes the collection's id its author's.
    assert_eq!(names(&store.list(ListOf::User(other), None, 10).await.unwrap()), ["c"]);
    assert!(store.list(ListOf::Nothing, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn access_changes_move_the_version_and_read_back_whole() {
    let (store, _dir, _db) = fresh().await;
    let (alice, bob) = (user("alice"), user("Bobby"));
    for u in [&alice, &bob] {
        store.create_user(u.clone()).await.unwrap();
    }
    let c = Uuid::new_v4();
    let before = store.access_version().await.unwrap();
    let claim = Change::Claim { collection: c, owner: alice.id, private: true };
    assert_eq!(store.change(claim.clone()).await.unwrap(), Changed::Done);
    assert_eq!(store.change(claim).await.unwrap(), Changed::Claimed(alice.id));
    let member = Change::Member { collection: c, user: bob.id, role: Some(Role::Writer) };
    assert_eq!(store.change(member).await.unwrap(), Changed::Done);
    let unknown = Change::Privacy { collection: Uuid::new_v4(), private: false };
    assert_eq!(store.change(unknown).await.unwrap(), Changed::NotFound);
    let revoke = Change::Account {
        user: bob.id,
        password_hash: None,
        disabled: Some(true),
        admin: None,
        revoke: true,
    };
    assert_eq!(store.change(revoke).await.unwrap(), Changed::Done);
    let jti = Uuid::new_v4();
    store.change(Change::Revoke { jti, exp: i64::MAX / 2 }).await.unwrap();
    let version = store.access_version().await.unwrap();
    assert!(version > before, "every change moves the version");

    let state = store.access().await.unwrap();
    assert_eq!(state.version, version, "read consistently with its version");
    let rule = &state.collections[&c];
    assert!(rule.private && rule.owner == alice.id && rule.members[&bob.id] == Role::Writer);
    let standing = state.users[&bob.id];
    assert!(standing.disabled && standing.generation > 0);
    assert!(state.revoked.contains(&jti));
    let collection = store.collection(c).await.unwrap().expect("claimed");
    assert_eq!(collection.owner.username, "alice");
    assert_eq!(
        collection.members.iter().map(|m| m.username.as_str()).collect::<Vec<_>>(),
        ["Bobby"]
    );
    assert!(store.collection(Uuid::new_v4()).await.unwrap().is_none());
    // Names contain the search, ignoring case, by name, after `after`.
    let found = store.find_users("b", "", 10).await.unwrap();
    assert_eq!(found.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["Bobby"]);
    let after_bobby = store.find_users("", "Bobby", 10).await.unwrap();
    assert_eq!(after_bobby.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["alice"]);
}

#[tokio::test]
async fn an_export_imports_into_an_empty_store_as_it_was() {
    let (store, _dir, _db) = fresh().await;
    let alice = user("alice");
    store.create_user(alice.clone()).await.unwrap();
    let c = Uuid::new_v4();
    store.change(Change::Claim { collection: c, owner: alice.id, private: true }).await.unwrap();
    for (name, timestamp) in [("a", 0), ("b", 0), ("later", i64::from(i32::MAX))] {
        store.insert_event(event(name, c, timestamp), None, None).await.unwrap();
    }
    store.publish_due(1, 10).await.unwrap();

    let mut records: Vec<Record> =
        store.users_after(None, 10).await.unwrap().into_iter().map(Record::User).collect();
    let rule = store.access().await.unwrap().collections[&c].as_ref().clone();
    records.push(Record::Collection { id: c, rule });
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|(_, e, seq)| (e.event.as_str(), *seq)).collect::<Vec<_>>(),
        [("a", Some(1)), ("b", Some(2)), ("later", None)]
    );
    records.extend(events.into_iter().map(|(_, event, seq)| Record::Event { event, seq }));

    let (copy, _dir2, _db2) = fresh().await;
    assert!(copy.is_empty().await.unwrap());
    copy.import(records).await.unwrap();
    assert_eq!(copy.user_by_name("alice").await.unwrap().map(|u| u.id), Some(alice.id));
    assert_eq!(copy.head().await.unwrap(), 2);
    assert_eq!(copy.pending().await.unwrap(), 1);
    assert!(copy.access().await.unwrap().collections[&c].private);
    let latest = copy.snapshot(&Filter::default(), false).await.unwrap().latest;
    assert_eq!(
        latest.iter().map(|p| (p.seq, p.event.event.as_str())).collect::<Vec<_>>(),
        [(1, "a"), (2, "b")]
    );
    assert!(copy.snapshot(&Filter::default(), true).await.unwrap().latest.is_empty(), "private");
}

#[tokio::test]
async fn acme_values_are_kept_and_the_lease_has_one_holder_at_a_time() {
    let (store, _dir, _db) = fresh().await;
    assert_eq!(store.acme_get("account").await.unwrap(), None);
    store.acme_put("account", Some("key")).await.unwrap();
    assert_eq!(store.acme_get("account").await.unwrap().as_deref(), Some("key"));
    store.acme_put("account", None).await.unwrap();
    assert_eq!(store.acme_get("account").await.unwrap(), None);
    assert!(store.lease("acme-lease", "one", 100, 200).await.unwrap());
    // A SQLite database has one node: it always holds the lease.
    if on_postgres() {
        assert!(!store.lease("acme-lease", "two", 150, 250).await.unwrap(), "held until 200");
        assert!(store.lease("other", "two", 150, 250).await.unwrap(), "leases are apart");
        assert!(
            store.lease("acme-lease", "one", 150, 300).await.unwrap(),
            "extended by its holder"
        );
        assert!(store.lease("acme-lease", "two", 301, 400).await.unwrap(), "expired: free again");
    }
    store.ping().await.unwrap();
}
