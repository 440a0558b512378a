//! Resuming a stream with `Last-Event-ID` (header or query parameter).

use serde_json::json;

use crate::support::{NOW, Received, Sse, TestApp, TestUser};

/// Inserts `n` events named `e{i}` from `from` on, concurrently with the test.
fn publish_in_background(
    app: &TestApp,
    user: &TestUser,
    from: usize,
    n: usize,
) -> tokio::task::JoinHandle<()> {
    let (http, url, jwt, collection) =
        (app.http.clone(), app.url("/insert"), user.jwt.clone(), user.collection);
    tokio::spawn(async move {
        for i in from..from + n {
            let body = json!({"event": format!("e{i}"), "collection_id": collection, "timestamp": NOW, "data": i});
            let response = http.post(&url).bearer_auth(&jwt).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    })
}

fn ids(events: &[Received]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

async fn resume_while_publishing(path: &str, header: Option<&str>) {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut first = app.subscribe().await;
    publish_in_background(&app, &user, 0, 10).await.unwrap();
    let seen = first.take(4).await;
    assert_eq!(ids(&seen), [1, 2, 3, 4]);
    drop(first);

    // Events keep coming while the client reconnects and replays.
    let publisher = publish_in_background(&app, &user, 10, 60);
    let headers: Vec<(&str, &str)> = header.map(|id| ("last-event-id", id)).into_iter().collect();
    let mut again = app.subscribe_to(path, &headers).await;
    let rest = again.take(66).await;
    publisher.await.unwrap();
    assert_eq!(ids(&rest), (5..=70).collect::<Vec<_>>(), "every event once, in order, no sync");
    assert!(rest.iter().all(|e| e.data == json!(e.id - 1)));
}

#[tokio::test]
async fn resume_with_the_last_event_id_header() {
    resume_while_publishing("/events", Some("4")).await;
}

#[tokio::test]
async fn resume_with_the_query_parameter() {
    resume_while_publishing("/events?last_event_id=4", None).await;
}

#[tokio::test]
async fn the_header_wins_over_a_stale_query_parameter() {
    // A browser reconnects to the same URL with a fresher header.
    resume_while_publishing("/events?last_event_id=1", Some("4")).await;
}

#[tokio::test]
async fn resume_across_a_restart() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    publish_in_background(&app, &user, 0, 5).await.unwrap();
    assert_eq!(ids(&sse.take(5).await), [1, 2, 3, 4, 5]);
    let app = app.restart_at(NOW).await;
    sse.ended().await;
    publish_in_background(&app, &user, 5, 5).await.unwrap();
    let mut sse = app.subscribe_to("/events", &[("last-event-id", "2")]).await;
    assert_eq!(ids(&sse.take(8).await), [3, 4, 5, 6, 7, 8, 9, 10]);
    publish_in_background(&app, &user, 10, 1).await.unwrap();
    assert_eq!(sse.next().await.id, 11);
}

#[tokio::test]
async fn an_unknown_id_gets_a_reset_then_the_latest_state() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    app.publish(&user, &[("a", json!("a1")), ("b", json!("b1")), ("a", json!("a2"))]).await;
    for bad in ["99", "-1", "yesterday"] {
        let mut sse = app.subscribe_to("/events", &[("last-event-id", bad)]).await;
        let got = sse.take(3).await;
        assert_eq!(
            got[0],
            Received {
                id: 3,
                event: "reset".into(),
                data: json!({"reason": "unknown last event id", "head": 3})
            }
        );
        assert_eq!(got[1], Received { id: 2, event: "b".into(), data: json!("b1") });
        assert_eq!(got[2], Received { id: 3, event: "a".into(), data: json!("a2") });
    }
}

#[tokio::test]
async fn an_up_to_date_client_gets_only_what_is_new() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    app.publish(&user, &[("a", json!(1))]).await;
    let mut sse: Sse = app.subscribe_to("/events?last_event_id=1", &[]).await;
    app.insert(&user, "b", NOW, json!(2)).await;
    assert_eq!(sse.next().await, Received { id: 2, event: "b".into(), data: json!(2) });
}

/// Subscribers that arrive together share one read of the latest state; each
/// still gets a state consistent with its own place in the live stream: the
/// latest event, then every later one, once, with no gap.
#[tokio::test]
async fn subscribers_arriving_together_while_publishing_miss_nothing() {
    const EVENTS: i64 = 80;
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let (http, url, jwt, collection) =
        (app.http.clone(), app.url("/insert"), user.jwt.clone(), user.collection);
    let publisher = tokio::spawn(async move {
        for i in 0..EVENTS {
            let body =
                json!({"event": "e", "collection_id": collection, "timestamp": NOW, "data": i});
            let response = http.post(&url).bearer_auth(&jwt).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    });
    let mut watcher = app.subscribe().await;
    watcher.take(10).await; // well under way
    let opened = futures_util::future::join_all((0..24).map(|_| app.subscribe())).await;
    publisher.await.unwrap();
    for mut sse in opened {
        let first = sse.next().await;
        assert_eq!(first.data, json!(first.id - 1), "the latest state: {first:?}");
        let rest = sse.take((EVENTS - first.id) as usize).await;
        assert_eq!(ids(&rest), (first.id + 1..=EVENTS).collect::<Vec<_>>(), "after {first:?}");
    }
}
