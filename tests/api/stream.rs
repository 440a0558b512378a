//! `GET /events` read with a real SSE client.

use serde_json::json;

use crate::support::{NOW, Received, TestApp, TestDb, eventually};

fn names(events: &[Received]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn live_events_arrive_in_order_with_sequence_ids() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    app.insert(&user, "a", NOW, json!({"n": 1})).await;
    // Published before "b" exists, though "b" is dated earlier.
    assert_eq!(sse.next().await, Received { id: 1, event: "a".into(), data: json!({"n": 1}) });
    app.insert(&user, "b", NOW - 5, json!([1, 2])).await;
    assert_eq!(sse.next().await, Received { id: 2, event: "b".into(), data: json!([1, 2]) });
}

#[tokio::test]
async fn a_new_subscriber_gets_the_latest_event_of_each_name() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    app.publish(&user, &[("a", json!("a1")), ("b", json!("b1")), ("a", json!("a2"))]).await;

    let mut sse = app.subscribe().await;
    let sync = sse.take(2).await;
    assert_eq!(sync[0], Received { id: 2, event: "b".into(), data: json!("b1") });
    assert_eq!(sync[1], Received { id: 3, event: "a".into(), data: json!("a2") });
    app.insert(&user, "c", NOW, json!("c1")).await;
    assert_eq!(sse.next().await, Received { id: 4, event: "c".into(), data: json!("c1") });
}

#[tokio::test]
async fn a_future_event_arrives_at_its_second_and_not_before() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    app.insert(&user, "later", NOW + 10, json!("due")).await;
    app.set_time(NOW + 9);
    // Published at once, after everything due by now: had "later" been
    // published early, it would arrive first.
    app.insert(&user, "marker", NOW + 9, json!("m")).await;
    assert_eq!(sse.next().await.event, "marker");
    app.clock.advance(999);
    app.insert(&user, "marker", NOW + 9, json!("m2")).await;
    assert_eq!(sse.next().await.data, json!("m2"), "still not due 1 ms before its second");
    app.clock.advance(1);
    assert_eq!(sse.next().await.event, "later");
}

#[tokio::test]
async fn scheduled_events_go_out_in_timestamp_then_insertion_order() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    for (name, offset) in [("c", 30), ("a1", 10), ("b", 20), ("a2", 10)] {
        app.insert(&user, name, NOW + offset, json!(name)).await;
    }
    app.set_time(NOW + 60);
    let got = sse.take(4).await;
    assert_eq!(names(&got), ["a1", "a2", "b", "c"]);
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_cancelled_event_is_never_published() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let mut sse = app.subscribe().await;
    let doomed = app.insert(&user, "doomed", NOW + 5, json!(0)).await;
    let path = format!("/events/{}/cancel", doomed["id"].as_str().unwrap());
    assert_eq!(app.get_as(&user.jwt, &path).await.status(), 200);
    app.insert(&user, "after", NOW + 6, json!(1)).await;
    app.set_time(NOW + 10);
    assert_eq!(sse.next().await.event, "after");
    assert!(app.subscribe().await.take(1).await.iter().all(|e| e.event != "doomed"));
}

#[tokio::test]
async fn retry_then_heartbeats() {
    use futures_util::StreamExt;
    let app = TestApp::spawn_with(&["--heartbeat", "1", "--retry", "1500"]).await;
    let response = app.http.get(app.url("/events")).send().await.unwrap();
    let mut body = response.bytes_stream();
    let mut next = async || {
        tokio::time::timeout(crate::support::DEADLINE, body.next()).await.unwrap().unwrap().unwrap()
    };
    assert_eq!(&next().await[..], b"retry:1500\n\n");
    for _ in 0..2 {
        assert_eq!(&next().await[..], b":\n\n", "a comment heartbeat");
    }
}

#[tokio::test]
async fn a_departed_client_is_dropped_at_once() {
    // The heartbeat is far away: only noticing the closed socket can explain
    // the stream going away within the deadline.
    let app = TestApp::spawn_with(&["--heartbeat", "3600"]).await;
    let sse = app.subscribe().await;
    assert_eq!(app.hub.subscribers(), 1);
    drop(sse);
    eventually("the server to drop the departed client", || async { app.hub.subscribers() == 0 })
        .await;
}

#[tokio::test]
async fn shutdown_closes_open_streams() {
    let mut app = TestApp::spawn().await;
    let mut sse = app.subscribe().await;
    app.shut_down().await;
    sse.ended().await;
}

#[tokio::test]
async fn state_and_schedule_survive_a_restart() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    app.insert(&user, "now", NOW, json!(1)).await;
    app.insert(&user, "due-while-down-2", NOW + 20, json!(3)).await;
    app.insert(&user, "due-while-down-1", NOW + 10, json!(2)).await;
    app.insert(&user, "far", NOW + 100, json!(4)).await;
    eventually("publication", || async {
        app.collection(&user, user.collection).await[0]["published"] == true
    })
    .await;
    // The clock moves while the server is down: the two events that fell
    // due meanwhile are published by the new one at start-up, in order.
    let app = app.restart_at(NOW + 30).await;
    let mut sse = app.subscribe().await;
    let sync = sse.take(3).await;
    assert_eq!(names(&sync), ["now", "due-while-down-1", "due-while-down-2"]);
    assert_eq!(sync.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(app.collection(&user, user.collection).await.len(), 4, "the token is still valid");
    app.set_time(NOW + 100);
    assert_eq!(sse.next().await, Received { id: 4, event: "far".into(), data: json!(4) });
}

/// Broker's router mounted in another axum application: `/events` is then
/// served by the axum handler rather than the lean writer.
#[tokio::test]
async fn the_router_mounts_in_another_app() {
    let dir = tempfile::tempdir().unwrap();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let config = crate::support::config(dir.path(), db.as_ref(), &[]);
    let broker = broker::Broker::open(config).await.unwrap();
    let outer = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .merge(broker.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, outer).await });
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/hello")).send().await.unwrap().text().await.unwrap(),
        "hello"
    );
    let response = http.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut sse = crate::support::Sse::new(response);
    let collection = uuid::Uuid::new_v4();
    let user = json!({"username": "alice", "password": "pw", "collection_id": collection});
    http.post(format!("{base}/users")).json(&user).send().await.unwrap();
    let login: serde_json::Value = http
        .post(format!("{base}/login"))
        .json(&json!({"username": "alice", "password": "pw"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = json!({"event": "mounted", "collection_id": collection, "timestamp": 0, "data": 1});
    let jwt = login["jwt"].as_str().unwrap();
    let inserted = http.post(format!("{base}/insert")).bearer_auth(jwt).json(&event).send().await;
    assert_eq!(inserted.unwrap().status(), 200);
    assert_eq!(sse.next().await, Received { id: 1, event: "mounted".into(), data: json!(1) });
    broker.shutdown_token().cancel();
    sse.ended().await;
}

#[tokio::test]
async fn the_latest_state_is_right_when_one_batch_publishes_a_name_twice() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    for (name, value) in [("a", 1), ("b", 2), ("a", 3)] {
        app.insert(&user, name, NOW + 10, json!(value)).await;
    }
    let mut witness = app.subscribe().await;
    app.set_time(NOW + 10);
    assert_eq!(names(&witness.take(3).await), ["a", "b", "a"]);
    let sync = app.subscribe().await.take(2).await;
    assert_eq!(sync[0], Received { id: 2, event: "b".into(), data: json!(2) });
    assert_eq!(sync[1], Received { id: 3, event: "a".into(), data: json!(3) });
}

#[tokio::test]
async fn an_envelope_stream_carries_names_in_the_data_of_unnamed_events() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    app.publish(&user, &[("a", json!(1)), ("b", json!({"x": [2]}))]).await;
    // The fields of the API's event record: its UUID (what cancel takes),
    // its author and its timestamp, as the listing shows them.
    let records = app.collection(&user, user.collection).await;
    let envelope = |id: i64, name: &str, data| {
        let record = records.iter().find(|r| r["event"] == name).expect("listed");
        Received {
            id,
            event: "message".into(),
            data: json!({"event": name, "collection_id": user.collection, "id": record["id"],
                "user_id": user.id, "timestamp": record["timestamp"], "data": data}),
        }
    };

    // The sync, then live events.
    let mut sse = app.subscribe_to("/events?envelope=true", &[]).await;
    assert_eq!(
        sse.take(2).await,
        [envelope(1, "a", json!(1)), envelope(2, "b", json!({"x": [2]}))]
    );
    let inserted = app.insert(&user, "line\u{2028}name \"q\"", NOW, json!("c")).await;
    let live = sse.next().await;
    assert_eq!(live.data["id"], inserted["id"], "the UUID insert answered");
    assert_eq!(live.data["data"], "c");
    assert_eq!(live.data["timestamp"], NOW);
    assert_eq!(live.data["user_id"], json!(user.id));
    assert_eq!(live.data["event"], "line\u{2028}name \"q\"");

    // A replay.
    let mut sse = app.subscribe_to("/events?envelope=1&last_event_id=1", &[]).await;
    assert_eq!(sse.next().await, envelope(2, "b", json!({"x": [2]})));

    // Plain streams are unchanged.
    let mut sse = app.subscribe_to("/events?envelope=false", &[]).await;
    assert_eq!(sse.next().await, Received { id: 1, event: "a".into(), data: json!(1) });
    let refused = app.open_stream("/events?envelope=yes", &[]).await;
    crate::support::error_json(refused, 400).await;
}

/// A connection whose first request is `GET /events` gets a response head
/// written by hand (the lean path); `/events` later on a kept-alive
/// connection goes through the router's layers. Both carry the same
/// headers: CORS, the request id, the stream's own.
#[tokio::test]
async fn the_lean_path_and_the_router_answer_a_stream_with_the_same_headers() {
    let app = TestApp::spawn_with(&["--origin", "http://a.test"]).await;
    let open = async |client: &reqwest::Client| {
        let request = client.get(app.url("/events")).header("origin", "http://a.test");
        let response = request.header("x-request-id", "r-1").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                !["date", "connection", "transfer-encoding"].contains(&name.as_str())
            })
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        headers
    };
    let lean = open(&reqwest::Client::new()).await;
    let kept = reqwest::Client::new();
    let health = kept.get(app.url("/healthz")).send().await.unwrap();
    health.bytes().await.unwrap(); // the connection is free for the next request
    let routed = open(&kept).await;
    assert_eq!(lean, routed);
}
