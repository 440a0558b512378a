//! Webhooks: a real HTTP receiver of the test's own, signatures checked as
//! Standard Webhooks says, retries, pauses, restarts and a cluster.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::claim;
use crate::support::{
    NOW, TestApp, TestDb, TestUser, error_json, eventually, ok_json, on_postgres,
};

/// Options that let webhooks reach the receiver on 127.0.0.1.
const LOCAL: &[&str] = &["--webhook-allow-http", "--webhook-allow-private"];

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    timestamp: i64,
    signature: String,
    body: Value,
    raw: String,
}

/// An HTTP server recording what it is sent; it answers the statuses queued
/// in `answers`, then 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
    /// Milliseconds it takes to answer.
    delay: Arc<std::sync::atomic::AtomicU64>,
    url: String,
}

impl Receiver {
    async fn start() -> Self {
        let mut receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        receiver.url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let answer = state.answers.lock().unwrap().pop_front().unwrap_or(200);
                    state.got.lock().unwrap().push(Delivery {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
                        signature: header("webhook-signature"),
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                        raw: body,
                    });
                    let delay = state.delay.load(std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The `data` of what it got, in order.
    fn data(&self) -> Vec<Value> {
        self.got().into_iter().map(|d| d.body["data"]["data"].clone()).collect()
    }

    /// The `data` of what it got, each event once (its first time), in order.
    fn firsts(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let got = self.got().into_iter().filter(|d| seen.insert(d.id.clone()));
        got.map(|d| d.body["data"]["data"].clone()).collect()
    }

    fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }
}

async fn register(app: &TestApp, owner: &TestUser, body: Value) -> reqwest::Response {
    app.post_as(&owner.jwt, &format!("/collections/{}/webhooks", owner.collection), &body).await
}

async fn created(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn webhook(app: &TestApp, owner: &TestUser, id: &str) -> Value {
    ok_json(
        app.get_as(&owner.jwt, &format!("/collections/{}/webhooks/{id}", owner.collection)).await,
    )
    .await
}

async fn patch(app: &TestApp, owner: &TestUser, id: &str, body: Value) -> Value {
    let path = format!("/collections/{}/webhooks/{id}", owner.collection);
    ok_json(app.send(Method::PATCH, &owner.jwt, &path, Some(&body)).await).await
}

/// Alice, owning her collection, with a webhook to `receiver`: its record
/// (with the secret).
async fn alice_with_hook(app: &TestApp, receiver: &Receiver, events: Value) -> (TestUser, Value) {
    let alice = app.user("alice").await;
    claim(app, &alice, false).await;
    let hook =
        created(register(app, &alice, json!({"url": receiver.url, "events": events})).await).await;
    (alice, hook)
}

#[tokio::test]
async fn published_events_are_posted_signed_in_order() {
    let app = TestApp::spawn_with(LOCAL).await;
    let receiver = Receiver::start().await;
    // Published before the webhook: not sent.
    let early = app.user("early").await;
    app.publish(&early, &[("x", json!(0))]).await;
    let (alice, hook) = alice_with_hook(&app, &receiver, json!(["card:*", "title"])).await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    let bob = app.user("bob").await;
    app.insert(&alice, "card:later", NOW + 60, json!("later")).await;
    for i in 0..20 {
        let name = ["card:1", "title", "other"][i % 3];
        app.publish(&alice, &[(name, json!(i))]).await;
        app.publish(&bob, &[("card:1", json!(i))]).await;
    }
    let mut wanted: Vec<Value> = (0..20).filter(|i| i % 3 != 2).map(|i| json!(i)).collect();
    eventually("the deliveries", || async { receiver.data().len() >= wanted.len() }).await;
    app.set_time(NOW + 60);
    wanted.push(json!("later"));
    eventually("the future event", || async { receiver.data().len() >= wanted.len() }).await;
    assert_eq!(receiver.data(), wanted, "alice's events only, those asked for, in order");
    for d in receiver.got() {
        let event = &d.body["data"];
        assert_eq!(d.body["type"], "event.published");
        assert_eq!(event["collection_id"], json!(alice.collection));
        assert_eq!(d.id, event["id"].as_str().unwrap(), "webhook-id is the event's id");
        assert_eq!(d.timestamp, NOW + if event["data"] == "later" { 60 } else { 0 });
        let expected = broker::webhooks::signature(&secret, &d.id, d.timestamp, d.raw.as_bytes());
        assert_eq!(Some(d.signature), expected);
    }
    // The owner sees where delivery stands, without the secret.
    let id = hook["id"].as_str().unwrap();
    eventually("the progress saved", || async {
        let seen = webhook(&app, &alice, id).await;
        seen["attempts"].as_array().is_some_and(|a| a.len() == 10 && a[0]["status"] == 200)
    })
    .await;
    let listed = ok_json(
        app.get_as(&alice.jwt, &format!("/collections/{}/webhooks", alice.collection)).await,
    )
    .await;
    assert_eq!(listed["webhooks"].as_array().map(Vec::len), Some(1));
    assert!(listed["webhooks"][0].get("secret").is_none(), "{listed}");
}

#[tokio::test]
async fn a_failed_delivery_is_retried_then_the_webhook_pauses_and_resumes() {
    let app = TestApp::spawn_with(&[
        "--webhook-allow-http",
        "--webhook-allow-private",
        "--webhook-retry-for",
        "2",
    ])
    .await;
    let receiver = Receiver::start().await;
    let (alice, hook) = alice_with_hook(&app, &receiver, json!([])).await;
    let id = hook["id"].as_str().unwrap();
    // Two failures, then taken: the same message three times, then the next.
    receiver.answer(&[500, 503]);
    app.publish(&alice, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("the retries", || async { receiver.got().len() >= 4 }).await;
    let got = receiver.got();
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[1].id, got[2].id);
    assert_eq!(receiver.data(), [json!(1), json!(1), json!(1), json!(2)]);
    // A receiver that keeps failing: paused after --webhook-retry-for.
    receiver.answer(&[500; 100]);
    app.publish(&alice, &[("a", json!(3)), ("a", json!(4))]).await;
    eventually("paused as failing", || async { webhook(&app, &alice, id).await["paused"] == true })
        .await;
    let paused = webhook(&app, &alice, id).await;
    assert!(paused["failing"].as_str().unwrap().contains("answered 500"), "{paused}");
    assert_eq!(paused["attempts"][0]["status"], 500);
    let tried = receiver.got().len();
    assert!(receiver.data()[4..].iter().all(|d| *d == json!(3)), "nothing after the failing event");
    // Resumed: from the event that failed, nothing lost.
    receiver.answers.lock().unwrap().clear();
    let resumed = patch(&app, &alice, id, json!({"paused": false})).await;
    assert_eq!(
        (resumed["paused"].clone(), resumed["failing"].clone()),
        (json!(false), Value::Null)
    );
    eventually("resumed", || async { receiver.data().last() == Some(&json!(4)) }).await;
    assert_eq!(receiver.data()[tried..], [json!(3), json!(4)]);
}

#[tokio::test]
async fn only_the_owner_manages_webhooks_to_allowed_urls() {
    let app = TestApp::spawn_with(&["--max-webhooks", "2"]).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    claim(&app, &alice, false).await;
    for (url, why) in [
        ("http://example.com/hook", "https://"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[::1]/", "not a public address"),
        ("https://user:pw@example.com/", "user name"),
        ("not a url", "absolute"),
    ] {
        let message = error_json(register(&app, &alice, json!({"url": url})).await, 400).await;
        assert!(message.contains(why), "{url}: {message}");
    }
    let bad_name =
        register(&app, &alice, json!({"url": "https://example.com/", "events": ["a\nb"]})).await;
    error_json(bad_name, 400).await;
    // A name that resolves to loopback passes the URL check and fails at
    // the connection, whatever the DNS answers.
    let local =
        created(register(&app, &alice, json!({"url": "https://localhost:9/hook"})).await).await;
    app.publish(&alice, &[("a", json!(1))]).await;
    let id = local["id"].as_str().unwrap().to_owned();
    eventually("the refused attempt", || async {
        let error = &webhook(&app, &alice, &id).await["attempts"][0]["error"];
        error.as_str().is_some_and(|e| e.contains("not a public address"))
    })
    .await;
    // Others may neither see nor change them; unclaimed collections have none.
    let path = format!("/collections/{}/webhooks", alice.collection);
    error_json(app.get_as(&bob.jwt, &path).await, 403).await;
    error_json(app.post_as(&bob.jwt, &path, &json!({"url": "https://example.com/"})).await, 403)
        .await;
    let one = format!("{path}/{id}");
    error_json(app.send(Method::DELETE, &bob.jwt, &one, None).await, 403).await;
    error_json(app.post_as(&bob.jwt, &format!("{one}/secret"), &json!({})).await, 403).await;
    error_json(register(&app, &bob, json!({"url": "https://example.com/"})).await, 404).await;
    error_json(app.get_as(&alice.jwt, &format!("{path}/{}", Uuid::new_v4())).await, 404).await;
    // At most --max-webhooks.
    created(register(&app, &alice, json!({"url": "https://example.com/2"})).await).await;
    error_json(register(&app, &alice, json!({"url": "https://example.com/3"})).await, 409).await;
    // A rotated secret is shown once; deleted is gone.
    let rotated =
        ok_json(app.post_as(&alice.jwt, &format!("{one}/secret"), &json!({})).await).await;
    assert!(
        rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_") && s != local["secret"])
    );
    assert_eq!(app.send(Method::DELETE, &alice.jwt, &one, None).await.status(), 204);
    error_json(app.get_as(&alice.jwt, &one).await, 404).await;
}

#[tokio::test]
async fn delivery_resumes_where_it_stopped_after_a_restart() {
    let app = TestApp::spawn_with(LOCAL).await;
    let receiver = Receiver::start().await;
    let (alice, hook) = alice_with_hook(&app, &receiver, json!([])).await;
    let id = hook["id"].as_str().unwrap().to_owned();
    app.publish(&alice, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("delivered and saved", || async {
        receiver.data().len() == 2
            && webhook(&app, &alice, &id).await["attempts"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    // Down while the receiver fails; after the restart the failed event is
    // sent again, then the rest.
    receiver.answer(&[500]);
    app.publish(&alice, &[("a", json!(3))]).await;
    eventually("the failed attempt", || async { receiver.got().len() == 3 }).await;
    let app = app.restart_at(NOW).await;
    app.publish(&alice, &[("a", json!(4))]).await;
    eventually("the rest delivered", || async { receiver.data().last() == Some(&json!(4)) }).await;
    // Nothing acknowledged is sent again; the failed event is (at least
    // once more), then the rest.
    assert_eq!(receiver.data()[..3], [json!(1), json!(2), json!(3)]);
    assert_eq!(receiver.firsts(), [json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test]
async fn retention_keeps_what_a_webhook_has_yet_to_receive() {
    let app = TestApp::spawn_with(LOCAL).await;
    let receiver = Receiver::start().await;
    let (alice, hook) = alice_with_hook(&app, &receiver, json!([])).await;
    crate::retention::retain(&app, &alice, json!({"keep_latest": 1})).await;
    let id = hook["id"].as_str().unwrap();
    // Paused: it holds nothing back, and resumes after what was trimmed.
    patch(&app, &alice, id, json!({"paused": true})).await;
    app.publish(&alice, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("trimmed", || async { crate::retention::listed(&app, &alice).await == [json!(2)] })
        .await;
    // Active and failing: the events it has not received stay.
    receiver.answer(&[500; 2]);
    patch(&app, &alice, id, json!({"paused": false})).await;
    app.publish(&alice, &[("a", json!(3)), ("a", json!(4))]).await;
    eventually("first attempt", || async { !receiver.got().is_empty() }).await;
    assert_eq!(receiver.data()[0], json!(2), "resumed at the oldest kept event");
    eventually("delivered in full", || async { receiver.data().last() == Some(&json!(4)) }).await;
    let data = receiver.data();
    assert_eq!(data[3..], [json!(3), json!(4)], "{data:?}");
    eventually("then trimmed", || async {
        crate::retention::listed(&app, &alice).await == [json!(4)]
    })
    .await;
}

/// Registrations sent together never pass `--max-webhooks` together: the
/// count and the insert are one step (on PostgreSQL spread over three
/// nodes of one database).
#[tokio::test]
async fn registrations_sent_together_stop_at_the_limit() {
    let app = TestApp::spawn_with(&["--max-webhooks", "3"]).await;
    let alice = app.user("alice").await;
    claim(&app, &alice, false).await;
    let others = if on_postgres() { vec![app.node().await, app.node().await] } else { vec![] };
    let nodes: Vec<&TestApp> = std::iter::once(&app).chain(&others).collect();
    let statuses = futures_util::future::join_all((0..24).map(|i| {
        let (node, alice) = (nodes[i % nodes.len()], &alice);
        async move {
            let url = format!("https://example.com/{i}");
            register(node, alice, json!({ "url": url })).await.status().as_u16()
        }
    }))
    .await;
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(created, 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| [201, 409].contains(s)), "{statuses:?}");
    let path = format!("/collections/{}/webhooks", alice.collection);
    let listed = ok_json(app.get_as(&alice.jwt, &path).await).await;
    assert_eq!(listed["webhooks"].as_array().map(Vec::len), Some(3), "{listed}");
}

/// On a cluster one node delivers (the lease's holder); when it stops,
/// another takes over once the lease has run out, losing nothing.
#[tokio::test]
async fn one_node_delivers_and_another_takes_over() {
    let first = TestApp::spawn_on(Some(Arc::new(TestDb::create().await)), LOCAL).await;
    let mut nodes = vec![first.node().await, first.node().await, first];
    let receiver = Receiver::start().await;
    let (alice, _) = alice_with_hook(&nodes[0], &receiver, json!([])).await;
    for i in 0..30 {
        nodes[i % 3].publish(&alice, &[("a", json!(i))]).await;
    }
    eventually("delivered", || async { receiver.data().len() >= 30 }).await;
    assert_eq!(
        receiver.data(),
        (0..30).map(|i| json!(i)).collect::<Vec<_>>(),
        "each once, in order"
    );
    // Stop every node but one: it takes over when the leases run out.
    let last = nodes.pop().unwrap();
    for mut node in nodes {
        node.shut_down().await;
    }
    last.publish(&alice, &[("a", json!(30))]).await;
    last.set_time(NOW + broker::webhooks::LEASE + 1);
    eventually("delivered by the last node", || async {
        receiver.data().last() == Some(&json!(30))
    })
    .await;
    // A node stopped while an answer was on its way has not recorded that
    // event as delivered: the next node sends it again, with the same
    // webhook-id (at least once), so each event arrives first in order.
    assert_eq!(receiver.firsts(), (0..=30).map(|i| json!(i)).collect::<Vec<_>>());
}

/// `kill -9` of the node delivering to an endpoint: on PostgreSQL another
/// of three nodes takes over once the lease has run out, on SQLite the
/// node restarted goes on; either way within 10 s, nothing missing.
#[tokio::test]
async fn a_killed_delivering_node_is_taken_over_within_seconds() {
    use crate::process::Binary;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let start = |i: usize| Binary::node(dirs[i].path(), db.as_ref(), LOCAL);
    let mut nodes = vec![start(0).await];
    if db.is_some() {
        nodes.extend([start(1).await, start(2).await]);
    }
    let receiver = Receiver::start().await;
    let (jwt, collection) = nodes[0].user("alice").await;
    let post = async |node: &Binary, path: &str, body: Value| {
        node.http.post(node.url(path)).bearer_auth(&jwt).json(&body).send().await.unwrap()
    };
    let claimed = post(&nodes[0], "/collections", json!({"collection_id": collection})).await;
    assert_eq!(claimed.status(), 201);
    let path = format!("/collections/{collection}/webhooks");
    created(post(&nodes[0], &path, json!({"url": receiver.url})).await).await;
    let insert = async |nodes: &[Binary], range: std::ops::Range<usize>| {
        for n in range {
            let body =
                json!({"event": "e", "collection_id": collection, "timestamp": 0, "data": n});
            ok_json(post(&nodes[n % nodes.len()], "/insert", body).await).await;
        }
    };
    // Killed mid-delivery: the receiver takes 20 ms an event.
    receiver.delay.store(20, std::sync::atomic::Ordering::Relaxed);
    insert(&nodes, 0..30).await;
    eventually("the first events", || async { receiver.data().len() >= 10 }).await;
    let sent = async |node: &Binary| {
        let text = node.http.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("broker_webhooks_sent_total "));
        line.and_then(|l| l.split(' ').nth(1)?.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut counts = Vec::new();
    for node in &nodes {
        counts.push(sent(node).await);
    }
    assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "one node delivers: {counts:?}");
    let holder = counts.iter().position(|n| *n > 0).unwrap();
    nodes[holder].child.start_kill().unwrap();
    nodes[holder].child.wait().await.unwrap();
    let killed = std::time::Instant::now();
    if db.is_none() {
        nodes[holder] = start(holder).await;
    } else {
        nodes.remove(holder);
    }
    let before = receiver.got().len();
    insert(&nodes, 30..60).await;
    let within = std::time::Duration::from_secs(10);
    crate::support::eventually_within(within, "the takeover", || async {
        receiver.got().len() > before
    })
    .await;
    eprintln!("delivery went on {:?} after the kill", killed.elapsed());
    eventually("the rest", || async { receiver.data().contains(&json!(59)) }).await;
    let all: Vec<Value> = (0..60).map(|n| json!(n)).collect();
    assert_eq!(receiver.firsts(), all, "each event, in order");
    if db.is_some() {
        let mut counts = Vec::new();
        for node in &nodes {
            counts.push(sent(node).await);
        }
        assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "one node took over: {counts:?}");
    }
}

/// A keep-latest trim held back for a failing webhook is dropped when the
/// owner changes the retention: set back to "keep everything", the
/// collection loses nothing once the webhook catches up.
#[tokio::test]
async fn a_held_trim_does_not_outlive_its_retention() {
    use crate::retention::{listed, retain};
    let app = TestApp::spawn_with(LOCAL).await;
    let receiver = Receiver::start().await;
    let (alice, hook) = alice_with_hook(&app, &receiver, json!([])).await;
    let id = hook["id"].as_str().unwrap();
    retain(&app, &alice, json!({"keep_latest": 1})).await;
    // Bob's collection, trimmed by the same sweeps, shows when one has run.
    let bob = app.user("bob").await;
    claim(&app, &bob, false).await;
    retain(&app, &bob, json!({"keep_latest": 1})).await;
    receiver.answer(&[500; 2]);
    app.publish(&alice, &[("a", json!(1)), ("a", json!(2))]).await;
    app.publish(&bob, &[("b", json!(1)), ("b", json!(2))]).await;
    eventually("a sweep past alice's events", || async { listed(&app, &bob).await == [json!(2)] })
        .await;
    assert_eq!(listed(&app, &alice).await, [json!(1), json!(2)], "held for the webhook");
    retain(&app, &alice, json!({})).await;
    eventually("delivered and saved", || async {
        receiver.data().last() == Some(&json!(2))
            && webhook(&app, &alice, id).await["attempts"][0]["status"] == 200
    })
    .await;
    app.publish(&bob, &[("b", json!(3))]).await;
    eventually("a sweep since", || async { listed(&app, &bob).await == [json!(3)] }).await;
    assert_eq!(listed(&app, &alice).await, [json!(1), json!(2)], "kept, as now asked");
}
