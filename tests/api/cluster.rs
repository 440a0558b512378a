//! Several nodes on one PostgreSQL database. These tests always run on
//! PostgreSQL, whatever the suite's backend.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    NOW, Received, TestApp, TestDb, TestUser, admin_sql, error_json, eventually, ok_json,
    pg_admin_url,
};

/// A node on the database at `url` (a server of the test's own).
async fn node_on(url: &str) -> TestApp {
    let unused = std::path::Path::new("no-sqlite-here");
    TestApp::start_with_config(crate::support::config(unused, None, &["--database-url", url])).await
}

/// `n` nodes on one new database, sharing a manual clock.
async fn cluster(n: usize) -> Vec<TestApp> {
    let first = TestApp::spawn_on(Some(Arc::new(TestDb::create().await)), &[]).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(nodes[0].node().await);
    }
    nodes
}

/// Every subscriber on every node receives every event once, in one order
/// with the same ids, while eight publishers insert on all nodes at once.
#[tokio::test]
async fn every_node_delivers_every_event_once_in_one_order() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 40;
    let nodes = Arc::new(cluster(3).await);
    let user = Arc::new(nodes[0].user("alice").await);
    let mut streams = Vec::new();
    for node in nodes.iter() {
        streams.push(node.subscribe().await);
        streams.push(node.subscribe().await);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (nodes, user) = (nodes.clone(), user.clone());
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let node = &nodes[(p + n) % nodes.len()];
                node.insert(&user, &format!("p{p}"), NOW, json!(n)).await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = PUBLISHERS * EACH;
    let mut first: Option<Vec<Received>> = None;
    for stream in &mut streams {
        let got = stream.take(total).await;
        let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
        assert_eq!(ids, (1..=total as i64).collect::<Vec<_>>(), "every id once, in order");
        // Each publisher's events in the order it inserted them.
        for p in 0..PUBLISHERS {
            let mine: Vec<&Value> =
                got.iter().filter(|r| r.event == format!("p{p}")).map(|r| &r.data).collect();
            assert_eq!(
                mine,
                (0..EACH).map(|n| json!(n)).collect::<Vec<_>>().iter().collect::<Vec<_>>()
            );
        }
        match &first {
            Some(first) => assert_eq!(first, &got, "the same stream on every node"),
            None => first = Some(got),
        }
    }
}

/// A token from one node works on another; a subscriber that saw events on
/// one node resumes on another with the id it was sent.
#[tokio::test]
async fn tokens_and_resume_work_on_any_node() {
    let nodes = cluster(2).await;
    let user = nodes[0].user("alice").await;
    ok_json(nodes[1].get_as(&user.jwt, "/events/user").await).await;
    let mut on_a = nodes[0].subscribe().await;
    for n in 0..3 {
        nodes[1].insert(&user, "tick", NOW, json!(n)).await;
    }
    let seen = on_a.take(3).await;
    drop(on_a);
    for n in 3..6 {
        nodes[0].insert(&user, "tick", NOW, json!(n)).await;
    }
    let last = seen[1].id.to_string();
    let mut on_b = nodes[1].subscribe_to("/events", &[("last-event-id", &last)]).await;
    let resumed = on_b.take(4).await;
    assert_eq!(resumed.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(resumed[0], seen[2]);
    assert_eq!(
        resumed.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
        [2, 3, 4, 5].map(|n| json!(n))
    );
}

/// Nodes started without `--secret` share the secret the first one kept in
/// the database.
#[tokio::test]
async fn nodes_without_a_secret_share_one_from_the_database() {
    let db = TestDb::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &tempfile::TempDir| {
        let args =
            ["broker", "--database-url", &db.url, "--save-path", dir.path().to_str().unwrap()];
        broker::Broker::open(broker::Config::from_args(args))
    };
    let (a, b) = (open(&dir_a).await.unwrap(), open(&dir_b).await.unwrap());
    let serve = |broker: broker::Broker| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let token = broker.shutdown_token();
        tokio::spawn(broker.serve(listener, std::future::pending()));
        (base, token)
    };
    let ((a, stop_a), (b, stop_b)) = (serve(a).await, serve(b).await);
    let http = reqwest::Client::new();
    let user = json!({"username": "alice", "password": "pw", "collection_id": Uuid::new_v4()});
    ok_json(http.post(format!("{a}/users")).json(&user).send().await.unwrap()).await;
    let login = json!({"username": "alice", "password": "pw"});
    let jwt = ok_json(http.post(format!("{a}/login")).json(&login).send().await.unwrap()).await;
    let jwt = jwt["jwt"].as_str().unwrap();
    let mine = http.get(format!("{b}/events/user")).bearer_auth(jwt).send().await.unwrap();
    ok_json(mine).await;
    assert!(!dir_a.path().join("secret").exists(), "the secret is in the database, not a file");
    stop_a.cancel();
    stop_b.cancel();
}

/// Every node's scheduler looks at the shared schedule; each due event is
/// published once, by one of them, also when the node it was inserted on
/// has stopped.
#[tokio::test]
async fn scheduled_events_are_published_once_by_whichever_node_is_alive() {
    let mut nodes = cluster(3).await;
    let user = nodes[0].user("alice").await;
    for n in 0..20 {
        nodes[n % 3].insert(&user, &format!("e{n}"), NOW + 10 + (n as i64 % 4), json!(n)).await;
    }
    let mut streams = Vec::new();
    for node in &nodes[1..] {
        streams.push(node.subscribe().await);
    }
    nodes[0].shut_down().await;
    // The last are due at NOW + 13: a second later the survivors take over.
    nodes[1].set_time(NOW + 14);
    for stream in &mut streams {
        let got = stream.take(20).await;
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
        let names: BTreeSet<String> = got.iter().map(|r| r.event.clone()).collect();
        assert_eq!(names.len(), 20, "each event once");
    }
    let published = nodes[1].collection(&user, user.collection).await;
    assert!(published.iter().all(|e| e["published"] == true));
}

/// Cancel on one node races publication on another: each event is either
/// cancelled (and never sent) or published (and the cancel is refused with
/// 409), never both.
#[tokio::test]
async fn cancel_and_publication_race_safely_across_nodes() {
    const EVENTS: usize = 60;
    let nodes = Arc::new(cluster(2).await);
    let user = Arc::new(nodes[0].user("alice").await);
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        let record = nodes[0].insert(&user, &format!("e{n}"), NOW + 5, json!(n)).await;
        ids.push(record["id"].as_str().unwrap().to_owned());
    }
    let mut stream = nodes[0].subscribe().await;
    let cancels = {
        let (nodes, user, ids) = (nodes.clone(), user.clone(), ids.clone());
        tokio::spawn(async move {
            let mut outcome = HashMap::new();
            for id in ids {
                let response = nodes[1].get_as(&user.jwt, &format!("/events/{id}/cancel")).await;
                outcome.insert(id, response.status().as_u16());
            }
            outcome
        })
    };
    nodes[0].set_time(NOW + 5);
    let outcome = cancels.await.unwrap();
    let cancelled: BTreeSet<&String> = ids.iter().filter(|id| outcome[*id] == 200).collect();
    assert!(outcome.values().all(|s| *s == 200 || *s == 409), "{outcome:?}");
    let published = EVENTS - cancelled.len();
    let got = stream.take(published).await;
    let names: BTreeSet<String> = got.iter().map(|r| r.event.clone()).collect();
    for (n, id) in ids.iter().enumerate() {
        assert_ne!(names.contains(&format!("e{n}")), cancelled.contains(id), "event {n}");
    }
    let listing = nodes[1].collection(&user, user.collection).await;
    for event in listing {
        let id = event["id"].as_str().unwrap().to_owned();
        assert_eq!(event["cancelled"] == true, cancelled.contains(&id));
        assert_eq!(event["published"] == true, !cancelled.contains(&id));
    }
}

/// Terminating a node's database connections: requests answer 503 with
/// `Retry-After` (never 500) until the pool reconnects, and every event
/// published meanwhile reaches the node's subscribers.
#[tokio::test]
async fn lost_connections_are_replaced_and_nothing_is_missed() {
    let nodes = cluster(2).await;
    let user = nodes[0].user("alice").await;
    let mut stream = nodes[0].subscribe().await;
    nodes[0].insert(&user, "before", NOW, json!(0)).await;
    assert_eq!(stream.next().await.event, "before");
    let db = nodes[0].db.as_ref().unwrap();
    let name = db.url.rsplit('/').next().unwrap();
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    admin_sql(&pg_admin_url(), &terminate).await;
    let mut sent = 0;
    for n in 1..=10 {
        let node = &nodes[n % 2];
        let body = json!({"event": "during", "collection_id": user.collection, "timestamp": NOW, "data": n});
        let response = node.insert_raw(&user.jwt, &body).await;
        match response.status().as_u16() {
            200 => sent += 1,
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                error_json(response, 503).await;
            }
            other => panic!("status {other}"),
        }
    }
    eventually("the nodes to recover", || async {
        let body = json!({"event": "after", "collection_id": user.collection, "timestamp": NOW, "data": 0});
        nodes[0].insert_raw(&user.jwt, &body).await.status() == 200
    })
    .await;
    let got = stream.take(sent + 1).await;
    assert_eq!(got.iter().filter(|r| r.event == "during").count(), sent);
    assert_eq!(got.last().unwrap().event, "after");
    let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
    assert_eq!(ids, (2..=sent as i64 + 2).collect::<Vec<_>>(), "no gap, no repeat");
}

/// A node whose database does not answer at start still serves: health is
/// fine, readiness and everything that needs the database answer 503 with
/// `Retry-After`, promptly.
#[tokio::test]
async fn a_node_starts_while_its_database_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = node_on(&format!("postgres://postgres@127.0.0.1:{port}/broker")).await;
    ok_json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    let started = std::time::Instant::now();
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert!(ready.headers().contains_key("retry-after"));
    error_json(ready, 503).await;
    error_json(app.sign_up("alice", Uuid::new_v4()).await, 503).await;
    let token = TestUser { id: Uuid::nil(), collection: Uuid::nil(), jwt: "x".into() };
    error_json(app.get_as(&token.jwt, "/events/user").await, 401).await;
    error_json(app.open_stream("/events", &[]).await, 503).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Access rules changed through one node hold on every node: private
/// events reach only members' streams wherever they are, at once after a
/// collection is made private (the feed reads the new rules before the
/// events), and removals, logouts and disabled accounts end access on the
/// other nodes' open streams within a second.
#[tokio::test]
async fn access_rules_hold_on_every_node() {
    use crate::access::{claim, set_member, stream_of};
    let nodes = cluster(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, bob, carol) = (a.user("alice").await, a.user("bob").await, a.user("carol").await);
    let mut outsider = stream_of(b, &carol, "").await;
    let mut anonymous = b.subscribe().await;
    claim(a, &alice, true).await;
    set_member(a, &alice, "bob", Some("reader")).await;
    let mut member = stream_of(b, &bob, "").await;
    a.insert(&alice, "private", NOW, json!(1)).await;
    a.insert(&carol, "public", NOW, json!(2)).await;
    assert_eq!(member.next().await.event, "private");
    assert_eq!(member.next().await.event, "public");
    assert_eq!(outsider.next().await.event, "public");
    assert_eq!(anonymous.next().await.event, "public");
    // Removed on node A: node B's stream stops receiving the collection.
    set_member(a, &alice, "bob", None).await;
    a.insert(&alice, "after-removal", NOW, json!(3)).await;
    a.insert(&carol, "marker", NOW, json!(4)).await;
    assert_eq!(member.next().await.event, "marker");
    let path = format!("/events/collections/{}", alice.collection);
    eventually("node B refuses the removed member", || async {
        b.get_as(&bob.jwt, &path).await.status() == 403
    })
    .await;
    // Logged out on node A: the token's stream on node B ends.
    let mut alices = stream_of(b, &alice, "").await;
    assert_eq!(a.post_as(&alice.jwt, "/logout", &json!({})).await.status(), 204);
    alices.ended().await;
    eventually("node B refuses the revoked token", || async {
        b.get_as(&alice.jwt, "/users/me").await.status() == 401
    })
    .await;
}

/// The guarantee the hub relies on: a reader that tails the log by
/// sequence number never sees a number before every lower one is visible,
/// while publishers on several nodes publish at once.
#[tokio::test]
async fn sequence_numbers_become_visible_in_order() {
    const PUBLISHERS: usize = 6;
    const ROUNDS: usize = 40;
    let first = TestApp::spawn_on(Some(Arc::new(TestDb::create().await)), &[]).await;
    let stores: Vec<_> = (0..3).map(|_| first.store()).collect();
    let user = Uuid::new_v4();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let store = stores[p % stores.len()].clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..ROUNDS {
                let event = broker::domain::Event {
                    id: Uuid::new_v4(),
                    user_id: user,
                    collection_id: user,
                    event: format!("p{p}"),
                    timestamp: 0,
                    published: false,
                    cancelled: false,
                    data: serde_json::value::to_raw_value(&n).unwrap(),
                };
                store.insert_event(event, None, None).await.expect("insert");
                store.publish_due(NOW, 4).await.expect("publish");
            }
        }));
    }
    let tailer = {
        let store = stores[0].clone();
        tokio::spawn(async move {
            let (mut last, filter) = (0, broker::domain::Filter::default());
            while last < (PUBLISHERS * ROUNDS) as i64 {
                for p in store.replay(last, i64::MAX, &filter, 16).await.expect("replay") {
                    assert_eq!(p.seq, last + 1, "a number became visible before the one below it");
                    last = p.seq;
                }
            }
            last
        })
    };
    for publisher in publishers {
        publisher.await.unwrap();
    }
    // Whatever a publisher left behind is published now.
    while !stores[0].publish_due(NOW, 1024).await.unwrap().is_empty() {}
    let last = tokio::time::timeout(crate::support::DEADLINE, tailer).await.unwrap().unwrap();
    assert_eq!(last, (PUBLISHERS * ROUNDS) as i64);
    assert_eq!(stores[1].head().await.unwrap(), last);
}

/// A PostgreSQL server of one test's own (`initdb` and `pg_ctl` in a
/// temporary directory, on a port of its own), so that stopping it costs
/// no other test its database.
struct OwnServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnServer {
    /// A new cluster, not started yet.
    async fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Self { dir, port };
        if as_root() {
            // PostgreSQL refuses to run as root: its files are postgres's.
            let status = std::process::Command::new("chown")
                .args(["postgres", server.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        server
            .pg("initdb", &["-D", &server.data(), "-A", "trust", "-U", "postgres", "--no-sync"])
            .await;
        server
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = format!("{}/log", self.dir.path().display());
        self.pg("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]).await;
    }

    async fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]).await;
    }

    /// Runs a PostgreSQL program, as the postgres user when we are root.
    async fn pg(&self, program: &str, args: &[&str]) {
        let bin = std::process::Command::new("pg_config").arg("--bindir").output().unwrap();
        let path = format!("{}/{program}", String::from_utf8_lossy(&bin.stdout).trim());
        let mut command = if as_root() {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            tokio::process::Command::new(&path)
        };
        let output = command.args(args).output().await.unwrap();
        assert!(output.status.success(), "{program}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let bin = std::process::Command::new("pg_config").arg("--bindir").output().unwrap();
        let pg_ctl = format!("{}/pg_ctl", String::from_utf8_lossy(&bin.stdout).trim());
        let data = self.data();
        let mut command = std::process::Command::new(if as_root() { "runuser" } else { &pg_ctl });
        if as_root() {
            command.args(["-u", "postgres", "--", &pg_ctl]);
        }
        let _ = command.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The database down at start, up, down while serving, up again: each node
/// answers 503 with `Retry-After` while it is down, recovers by itself, and
/// its subscribers receive every event published in the meantime.
#[tokio::test]
async fn nodes_ride_out_a_database_restart() {
    let server = OwnServer::init().await;
    let url = server.url();
    let node = || node_on(&url);
    let nodes = [node().await, node().await];
    for node in &nodes {
        let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
        assert!(ready.headers().contains_key("retry-after"));
        error_json(ready, 503).await;
    }
    server.start().await;
    for node in &nodes {
        eventually("readiness", || async {
            node.http.get(node.url("/readyz")).send().await.unwrap().status() == 200
        })
        .await;
    }
    let user = nodes[0].user("alice").await;
    let mut streams = [nodes[0].subscribe().await, nodes[1].subscribe().await];
    nodes[1].insert(&user, "before", NOW, json!(0)).await;

    server.stop().await;
    for node in &nodes {
        let started = std::time::Instant::now();
        let body =
            json!({"event": "x", "collection_id": user.collection, "timestamp": NOW, "data": 0});
        let response = node.insert_raw(&user.jwt, &body).await;
        assert!(response.headers().contains_key("retry-after"));
        error_json(response, 503).await;
        error_json(node.http.get(node.url("/readyz")).send().await.unwrap(), 503).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    server.start().await;
    eventually("inserts to succeed again", || async {
        let body = json!({"event": "after", "collection_id": user.collection, "timestamp": NOW, "data": 1});
        nodes[0].insert_raw(&user.jwt, &body).await.status() == 200
    })
    .await;
    nodes[1].insert(&user, "last", NOW, json!(2)).await;
    for stream in &mut streams {
        let got = stream.take(3).await;
        let names: Vec<&str> = got.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(names, ["before", "after", "last"]);
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    }
}

/// A signal sent on one node reaches the streams that asked for it on
/// every node, once, and an outsider's on none, while nothing is stored.
#[tokio::test]
async fn a_signal_reaches_every_node_once() {
    let nodes = cluster(3).await;
    let (alice, bob) = (nodes[0].user("alice").await, nodes[0].user("bob").await);
    let private = alice.collection;
    let body = json!({"collection_id": private, "private": true});
    assert_eq!(nodes[0].post_as(&alice.jwt, "/collections", &body).await.status(), 201);
    let query =
        format!("/events?collection_id={private}&collection_id={}&signals=true", bob.collection);
    let bearer = |user: &TestUser| format!("Bearer {}", user.jwt);
    let mut readers = Vec::new();
    let mut outsiders = Vec::new();
    for node in &nodes {
        // Every node knows the collection is private before the signal.
        eventually("the rule on every node", || async {
            node.get_as(&bob.jwt, &format!("/events/collections/{private}")).await.status() == 403
        })
        .await;
        readers.push(node.subscribe_to(&query, &[("authorization", &bearer(&alice))]).await);
        outsiders.push(node.subscribe_to(&query, &[("authorization", &bearer(&bob))]).await);
    }
    let signal = json!({"collection_id": private, "event": "cursor", "data": {"x": 1}});
    ok_json(nodes[1].post_as(&alice.jwt, "/signal", &signal).await).await;
    let after =
        json!({"event": "after", "collection_id": bob.collection, "timestamp": NOW, "data": 0});
    ok_json(nodes[2].insert_raw(&bob.jwt, &after).await).await;
    for (reader, outsider) in readers.iter_mut().zip(&mut outsiders) {
        let (id, event, data) = reader.next_raw().await;
        assert_eq!((id.as_str(), event.as_str(), &data["data"]), ("", "signal", &json!({"x": 1})));
        assert_eq!(reader.next_raw().await.1, "after", "once");
        assert_eq!(outsider.next_raw().await.1, "after", "no signal for an outsider");
    }
}

/// Presence is the union of every node's: a join on one node is announced
/// on the others, a user with streams on two nodes leaves once the last
/// one closes, and the users of a node that stops (as if killed: it says
/// nothing more) leave everywhere once it is found dead.
#[tokio::test]
async fn presence_is_the_same_on_every_node() {
    let mut nodes = cluster(3).await;
    let (alice, bob) = (nodes[0].user("alice").await, nodes[0].user("bob").await);
    let board = Uuid::new_v4();
    let query = format!("/events?collection_id={board}");
    let bearer = |user: &TestUser| format!("Bearer {}", user.jwt);
    let mut watcher = nodes[0].subscribe_to(&format!("{query}&presence=true"), &[]).await;
    let (_, _, list) = watcher.next_raw().await;
    assert_eq!((list["type"].as_str(), &list["users"]), (Some("list"), &json!([])));
    let change = |data: Value| {
        (data["type"].as_str().unwrap().to_owned(), data["username"].as_str().unwrap().to_owned())
    };

    let on_one = nodes[1].subscribe_to(&query, &[("authorization", &bearer(&alice))]).await;
    assert_eq!(change(watcher.next_raw().await.2), ("join".into(), "alice".into()));
    let on_two = nodes[2].subscribe_to(&query, &[("authorization", &bearer(&alice))]).await;
    let path = format!("/collections/{board}/presence");
    for node in &nodes {
        eventually("alice's two streams, seen from every node", || async {
            let body = ok_json(node.get_as(&bob.jwt, &path).await).await;
            body["users"] == json!([{"user_id": alice.id, "username": "alice", "connections": 2, "since": NOW}])
                && body["anonymous"] == 1
        })
        .await;
    }
    // Her stream on node 1 ends, then (after the grace) the one on node 2.
    drop(on_one);
    let connections = |n: u64| {
        let expected =
            json!([{"user_id": alice.id, "username": "alice", "connections": n, "since": NOW}]);
        move |body: Value| body["users"] == expected
    };
    for node in &nodes {
        eventually("alice's stream on node 1 closed", || async {
            connections(1)(ok_json(node.get_as(&bob.jwt, &path).await).await)
        })
        .await;
    }
    nodes[1].set_time(NOW + 10);
    let _bobs = nodes[2].subscribe_to(&query, &[("authorization", &bearer(&bob))]).await;
    assert_eq!(change(watcher.next_raw().await.2), ("join".into(), "bob".into()), "alice stayed");
    drop(on_two);
    eventually("alice's streams closed", || async {
        let body = ok_json(nodes[0].get_as(&bob.jwt, &path).await).await;
        body["users"][0]["connections"] == 0
    })
    .await;
    nodes[2].set_time(NOW + 20);
    assert_eq!(change(watcher.next_raw().await.2), ("leave".into(), "alice".into()));

    // Node 2 stops saying anything: bob leaves everywhere within 10 s.
    let mut dead = nodes.pop().unwrap();
    dead.shut_down().await;
    assert_eq!(change(watcher.next_raw().await.2), ("leave".into(), "bob".into()));
}

/// A node that loses the database keeps its presence, and says it all
/// again when the database is back and has forgotten it (as it does a node
/// silent for too long).
#[tokio::test]
async fn presence_outlives_a_database_outage() {
    let server = OwnServer::init().await;
    server.start().await;
    let url = server.url();
    let node = || node_on(&url);
    let nodes = [node().await, node().await];
    let (alice, bob) = (nodes[0].user("alice").await, nodes[0].user("bob").await);
    let board = Uuid::new_v4();
    let (query, path) =
        (format!("/events?collection_id={board}"), format!("/collections/{board}/presence"));
    let bearer = |user: &TestUser| format!("Bearer {}", user.jwt);
    let mut watcher = nodes[0]
        .subscribe_to(&format!("{query}&presence=true"), &[("authorization", &bearer(&bob))])
        .await;
    assert_eq!(watcher.next_raw().await.2["users"][0]["username"], "bob");
    let _alices = nodes[1].subscribe_to(&query, &[("authorization", &bearer(&alice))]).await;
    assert_eq!(watcher.next_raw().await.2["username"], "alice");
    let names = |body: Value| -> Vec<String> {
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };

    server.stop().await;
    // Each node still knows who is there through it (and the watching
    // node, through the other).
    assert_eq!(names(ok_json(nodes[0].get_as(&bob.jwt, &path).await).await), ["alice", "bob"]);
    assert_eq!(names(ok_json(nodes[1].get_as(&bob.jwt, &path).await).await), ["alice"]);

    server.start().await;
    let forget = "DELETE FROM presence; DELETE FROM presence_nodes";
    eventually("the database back", || async {
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_ok()
    })
    .await;
    admin_sql(&url, forget).await;
    // A node that starts now learns it all from the database.
    let third = node().await;
    eventually("both nodes to have told their presence again", || async {
        names(ok_json(third.get_as(&bob.jwt, &path).await).await) == ["alice", "bob"]
    })
    .await;
}

/// Retention on a cluster: one node sweeps (the lease's holder); when it
/// stops, another takes over once the lease has run out.
#[tokio::test]
async fn one_node_sweeps_for_retention_and_another_takes_over() {
    use crate::retention::{listed, retain};
    let mut nodes = cluster(2).await;
    let alice = nodes[0].user("alice").await;
    crate::access::claim(&nodes[0], &alice, false).await;
    retain(&nodes[0], &alice, json!({"keep_latest": 1})).await;
    nodes[1].publish(&alice, &[("a", json!(1)), ("a", json!(2))]).await;
    eventually("trimmed", || async { listed(&nodes[1], &alice).await == [json!(2)] }).await;
    let expired = async |node: &TestApp| {
        let text = crate::ops::metrics(node).await;
        let line = text.lines().find(|l| l.starts_with("broker_events_expired_total "));
        line.and_then(|l| l.split(' ').nth(1)?.parse::<u64>().ok()).unwrap_or(0)
    };
    let counts = [expired(&nodes[0]).await, expired(&nodes[1]).await];
    assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "one sweeper: {counts:?}");
    let sweeper = counts.iter().position(|n| *n > 0).unwrap();
    let mut gone = nodes.remove(sweeper);
    gone.shut_down().await;
    let other = &nodes[0];
    other.publish(&alice, &[("a", json!(3))]).await;
    other.set_time(NOW + broker::retention::LEASE + 1);
    eventually("trimmed by the other node", || async { listed(other, &alice).await == [json!(3)] })
        .await;
    assert!(expired(other).await > 0);
}

/// A schema set on one node checks inserts on every node within a second.
#[tokio::test]
async fn a_schema_reaches_every_node() {
    use crate::schemas::{insert_data, set_schema};
    let nodes = cluster(2).await;
    let alice = nodes[0].user("alice").await;
    crate::access::claim(&nodes[0], &alice, false).await;
    ok_json(set_schema(&nodes[0], &alice, "card:*", Some(json!({"type": "object"}))).await).await;
    eventually("the other node to refuse", || async {
        insert_data(&nodes[1], &alice, alice.collection, "card:1", json!(1)).await.status() == 400
    })
    .await;
    ok_json(insert_data(&nodes[1], &alice, alice.collection, "card:1", json!({})).await).await;
}

/// Failed logins are pooled by the nodes of a shared store: failures for one
/// name spread over three nodes make each refuse it, as one node would; a
/// success on one node forgets them everywhere. (Each node's exchange, run
/// once a second by a running node, is called here directly.)
#[tokio::test]
async fn failed_logins_count_across_the_nodes() {
    use broker::throttle::Failures;
    let db = TestDb::create().await;
    let store = || {
        broker::store::open(
            broker::store::Location::Postgres { url: &db.url, pool: 2 },
            Arc::default(),
        )
        .unwrap()
    };
    let (clock, hand) = broker::Clock::manual(crate::support::T0);
    let nodes: Vec<(Failures<str>, _)> = (0..3).map(|_| (Failures::new(5, 900), store())).collect();
    let exchange = async || {
        for (failures, store) in &nodes {
            failures.exchange(store.as_ref(), &clock).await.unwrap();
        }
    };
    exchange().await; // as running nodes do from the start
    for n in 0..5 {
        nodes[n % 3].0.fail("alice", &clock);
    }
    assert!(nodes.iter().all(|(f, _)| f.wait("alice", &clock).is_none()), "2, 2 and 1 alone");
    exchange().await;
    exchange().await; // the first nodes learn the last one's
    for (failures, _) in &nodes {
        assert_eq!(failures.wait("alice", &clock), Some(1), "5 in all: wait 1 s");
    }
    assert!(nodes[0].0.wait("bob", &clock).is_none());
    // A whole second later a sixth failure, on one node: 2 s for everyone.
    hand.advance(1000);
    nodes[2].0.fail("alice", &clock);
    exchange().await;
    exchange().await;
    for (failures, _) in &nodes {
        assert_eq!(failures.wait("alice", &clock), Some(2));
    }
    // A success forgets them on every node (once its block is over).
    hand.advance(2000);
    nodes[1].0.clear("alice");
    exchange().await;
    nodes[0].0.fail("alice", &clock);
    exchange().await;
    exchange().await;
    assert!(nodes.iter().all(|(f, _)| f.wait("alice", &clock).is_none()), "counting starts over");
}

/// The same on three running nodes, through HTTP: five wrong passwords for
/// one name, spread over the nodes (2, 2 and 1), make each node refuse the
/// right one, as one node refuses after five; without pooling none would.
#[tokio::test]
async fn failed_logins_spread_over_three_running_nodes_are_refused_by_each() {
    use crate::ops::{metrics, value};
    let nodes = cluster(3).await;
    nodes[0].user("alice").await;
    for n in 0..5 {
        error_json(nodes[n % 3].log_in("alice", "wrong").await, 401).await;
    }
    for node in &nodes {
        // Asked of the metrics: a login to find out would clear the count.
        eventually("the node to learn of all five failures", || async {
            value(&metrics(node).await, "broker_logins_throttled") >= 1.0
        })
        .await;
        let refused = error_json(node.log_in("alice", "secret-pw").await, 429).await;
        assert!(refused.contains("too many"));
    }
}

/// Sign-ups per client address are counted once for the whole cluster:
/// with `--signup-rate 3`, three sign-ups from one address spread over
/// three nodes use up its hour on all of them; another address is not
/// touched, and the bucket refills for every node alike.
#[tokio::test]
async fn sign_ups_per_address_are_counted_across_the_nodes() {
    let extra = ["--signup-rate", "3", "--trusted-proxy", "127.0.0.1"];
    let first = TestApp::spawn_on(Some(Arc::new(TestDb::create().await)), &extra).await;
    let nodes = [first.node().await, first.node().await, first];
    let sign_up = async |node: &TestApp, from: &str| {
        let body = json!({"username": Uuid::new_v4().to_string(), "password": "pw",
            "collection_id": Uuid::new_v4()});
        let request = node.http.post(node.url("/users")).header("x-forwarded-for", from);
        request.json(&body).send().await.unwrap()
    };
    for node in &nodes {
        ok_json(sign_up(node, "198.51.100.1").await).await;
    }
    for node in &nodes {
        let refused = sign_up(node, "198.51.100.1").await;
        assert_eq!(refused.headers()["retry-after"], "1200", "3 an hour: one more in 20 minutes");
        assert!(error_json(refused, 429).await.contains("too many sign-ups"));
    }
    ok_json(sign_up(&nodes[1], "198.51.100.2").await).await;
    nodes[0].clock.advance(1_200_000); // the nodes share one clock
    ok_json(sign_up(&nodes[2], "198.51.100.1").await).await;
    error_json(sign_up(&nodes[0], "198.51.100.1").await, 429).await;
}
