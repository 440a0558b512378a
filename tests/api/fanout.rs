//! The indexed fan-out: an event costs the streams that receive it, not
//! the others. Measured by `broker_frames_skipped_total`, the event frames
//! streams looked at and did not write, next to `broker_deliveries_total`.

use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::access::{claim, stream_of};
use crate::support::{NOW, Sse, TestApp, TestUser, ok_json};

/// The event frames streams looked at: (written, looked at and not written).
async fn frames(app: &TestApp) -> (f64, f64) {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = response.text().await.unwrap();
    let value = |series: &str| {
        let line =
            text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok());
        line.expect("the series")
    };
    (value("broker_deliveries_total"), value("broker_frames_skipped_total"))
}

/// Inserts `n` events named `e<i>` into `collection`, `batch` at a time.
async fn insert_many(app: &TestApp, user: &TestUser, collection: Uuid, n: usize, batch: usize) {
    for start in (0..n).step_by(batch) {
        join_all((start..n.min(start + batch)).map(|i| async move {
            let body = json!({"event": format!("e{i}"), "collection_id": collection, "timestamp": NOW, "data": i});
            ok_json(app.insert_raw(&user.jwt, &body).await).await
        }))
        .await;
    }
}

/// `n` streams on `path`, all open.
async fn streams(app: &TestApp, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<Sse> {
    join_all((0..n).map(|_| app.subscribe_to(path, headers))).await
}

#[tokio::test]
async fn events_into_one_collection_leave_the_streams_of_another_untouched() {
    let app = TestApp::spawn().await;
    let user = app.user("writer").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let _others = streams(&app, &format!("/events?collection_id={b}"), &[], 1000).await;
    let mut on_a = app.subscribe_to(&format!("/events?collection_id={a}"), &[]).await;
    let mut everything = app.subscribe().await;

    insert_many(&app, &user, a, 1000, 50).await;
    for stream in [&mut on_a, &mut everything] {
        let got = stream.take(1000).await;
        assert!(got.windows(2).all(|w| w[0].id < w[1].id), "in order, once each");
    }
    // The stream on A and the unfiltered one wrote 1,000 frames each; the
    // 1,000 streams on B looked at none.
    assert_eq!(frames(&app).await, (2000.0, 0.0));
}

#[tokio::test]
async fn a_stream_falls_behind_only_on_what_it_receives() {
    let app = TestApp::spawn_with(&["--max-lag", "16"]).await;
    let user = app.user("writer").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut on_b = app.subscribe_to(&format!("/events?collection_id={b}"), &[]).await;
    insert_many(&app, &user, a, 200, 50).await;
    insert_many(&app, &user, b, 1, 1).await;
    let got = on_b.next().await;
    assert_eq!((got.event.as_str(), got.data.clone()), ("e0", json!(0)), "still open, not dropped");
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("broker_slow_consumers_dropped_total 0"), "nobody dropped");
}

#[tokio::test]
async fn a_stream_on_two_collections_gets_both_in_sequence_order() {
    let app = TestApp::spawn().await;
    let user = app.user("writer").await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut both =
        app.subscribe_to(&format!("/events?collection_id={a}&collection_id={b}"), &[]).await;
    let mut named = app.subscribe_to("/events?event=e0&event=e1", &[]).await;
    // Alternating, one at a time: publication order is insertion order.
    for (i, collection) in [a, b, c, a, b, c, b, a].into_iter().enumerate() {
        let body = json!({"event": format!("e{}", i % 2), "collection_id": collection, "timestamp": NOW, "data": i});
        ok_json(app.insert_raw(&user.jwt, &body).await).await;
    }
    let got = both.take(6).await;
    let order: Vec<i64> = got.iter().map(|r| r.data.as_i64().unwrap()).collect();
    assert_eq!(order, [0, 1, 3, 4, 6, 7], "A's and B's, not C's");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "by sequence number");
    // Indexed by event name when it names no collection: every event here.
    let order: Vec<i64> = named.take(8).await.iter().map(|r| r.data.as_i64().unwrap()).collect();
    assert_eq!(order, [0, 1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn a_private_event_costs_the_streams_that_may_not_read_it_nothing() {
    let app = TestApp::spawn().await;
    let (owner, outsider) = (app.user("owner").await, app.user("outsider").await);
    claim(&app, &owner, true).await;
    let bearer = format!("Bearer {}", outsider.jwt);
    let path = format!("/events?collection_id={}", owner.collection);
    let _outside = streams(&app, &path, &[("authorization", &bearer)], 1000).await;
    let mut own = stream_of(&app, &owner, &format!("?collection_id={}", owner.collection)).await;
    insert_many(&app, &owner, owner.collection, 10, 10).await;
    assert_eq!(own.take(10).await.len(), 10);
    assert_eq!(frames(&app).await, (10.0, 0.0), "the 1,000 outsiders' streams looked at none");
}

#[tokio::test]
async fn streams_that_arrive_together_each_get_the_latest_state_of_their_own_collections() {
    let app = TestApp::spawn().await;
    let user = app.user("writer").await;
    let collections: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    for (i, collection) in collections.iter().enumerate() {
        let body =
            json!({"event": "state", "collection_id": collection, "timestamp": NOW, "data": i});
        ok_json(app.insert_raw(&user.jwt, &body).await).await;
    }
    // Published: the last one reaches a stream on its collection.
    let last = collections[199];
    let mut witness = app.subscribe_to(&format!("/events?collection_id={last}"), &[]).await;
    assert_eq!(witness.next().await.data, json!(199));
    // 200 streams at once, one on each collection, and one on two of them.
    let paths = collections.iter().map(|c| format!("/events?collection_id={c}")).chain([format!(
        "/events?collection_id={}&collection_id={}",
        collections[3], collections[7]
    )]);
    let app = &app;
    let mut streams = join_all(paths.map(|p| async move { app.subscribe_to(&p, &[]).await })).await;
    for (i, stream) in streams.iter_mut().take(200).enumerate() {
        assert_eq!(stream.next().await.data, json!(i), "its own collection's state only");
    }
    let both: Vec<_> = streams[200].take(2).await.into_iter().map(|r| r.data).collect();
    assert_eq!(both, [json!(3), json!(7)]);
}
