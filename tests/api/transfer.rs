//! `broker export` and `broker import` between the two backends. These
//! tests always use both SQLite and PostgreSQL, whatever the suite's backend.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::process::{Binary, command};
use crate::support::{Sse, TestDb, ok_json};

/// Runs `broker <args>` with `input` on standard input; its exit status and
/// standard output.
async fn run(cwd: &std::path::Path, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut child = command(cwd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    (output.status.success(), String::from_utf8(output.stdout).unwrap())
}

#[tokio::test]
async fn sqlite_to_postgres_to_sqlite_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let db = TestDb::create().await;

    // Some history on SQLite: published, pending and cancelled events.
    let mut c = command(dir.path());
    c.args(["--port", "0", "--host", "127.0.0.1", "--secret", "s", "--save-path", a]);
    let mut broker = Binary::start(c).await;
    let (jwt, collection) = broker.user("alice").await;
    // Bob's collection is private: it must stay so on the other backend.
    let (bob, private) = broker.user("bob").await;
    let claim = json!({"collection_id": private, "private": true});
    let claimed = broker.http.post(broker.url("/collections")).bearer_auth(&bob).json(&claim);
    assert_eq!(claimed.send().await.unwrap().status(), 201);
    // So must its schema and retention.
    let path = broker.url(&format!("/collections/{private}/schemas/card:*"));
    let schema = broker.http.put(path).bearer_auth(&bob).json(&json!({"type": "object"}));
    assert_eq!(schema.send().await.unwrap().status(), 200);
    let retention = json!({"retention": {"keep_latest": 5}});
    let path = broker.url(&format!("/collections/{private}"));
    let patched = broker.http.patch(path).bearer_auth(&bob).json(&retention);
    assert_eq!(patched.send().await.unwrap().status(), 200);
    // And its webhook, with its secret.
    let hook = json!({"url": "https://hooks.example.com/broker", "events": ["card:*"]});
    let path = broker.url(&format!("/collections/{private}/webhooks"));
    let added = broker.http.post(path).bearer_auth(&bob).json(&hook).send().await.unwrap();
    assert_eq!(added.status(), 201);
    let secret = added.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    let mut sse = Sse::new(broker.http.get(broker.url("/events")).send().await.unwrap());
    let insert = |event: &str, timestamp: i64, data: Value| {
        let body = json!({"event": event, "collection_id": collection, "timestamp": timestamp, "data": data});
        broker.http.post(broker.url("/insert")).bearer_auth(&jwt).json(&body).send()
    };
    for n in 0..5 {
        ok_json(insert(&format!("e{}", n % 2), 0, json!({"n": n})).await.unwrap()).await;
    }
    ok_json(insert("later", 4_000_000_000, json!("pending")).await.unwrap()).await;
    let gone = ok_json(insert("gone", 4_000_000_000, json!(0)).await.unwrap()).await;
    let cancel = format!("/events/{}/cancel", gone["event"]["id"].as_str().unwrap());
    ok_json(broker.http.get(broker.url(&cancel)).bearer_auth(&jwt).send().await.unwrap()).await;
    let live = sse.take(5).await;
    broker.child.kill().await.unwrap();

    let (ok, exported) = run(dir.path(), &["export", "--save-path", a], b"").await;
    assert!(ok);
    assert_eq!(exported.lines().count(), 2 + 1 + 1 + 7, "{exported}");
    assert!(exported.contains(&format!(r#""secret":"{secret}""#)), "{exported}");
    assert!(exported.contains(r#""private":true"#), "{exported}");
    assert!(exported.contains(r#""retention":{"keep_latest":5}"#), "{exported}");
    assert!(exported.contains(r#""schemas":{"card:*":{"type":"object"}}"#), "{exported}");
    let (ok, _) =
        run(dir.path(), &["import", "--database-url", &db.url], exported.as_bytes()).await;
    assert!(ok, "import into PostgreSQL");
    let (ok, _) =
        run(dir.path(), &["import", "--database-url", &db.url], exported.as_bytes()).await;
    assert!(!ok, "a second import into a store that is not empty is refused");
    let (ok, from_pg) = run(dir.path(), &["export", "--database-url", &db.url], b"").await;
    assert!(ok);
    assert_eq!(from_pg, exported, "PostgreSQL holds what SQLite held");
    let (ok, _) = run(dir.path(), &["import", "--save-path", b], from_pg.as_bytes()).await;
    assert!(ok, "import into SQLite");
    let (ok, back) = run(dir.path(), &["export", "--save-path", b], b"").await;
    assert!(ok);
    assert_eq!(back, exported, "and back again");

    // On PostgreSQL the old password logs in and the old ids resume.
    let mut c = command(dir.path());
    c.args(["--port", "0", "--host", "127.0.0.1", "--secret", "s", "--database-url", &db.url]);
    let broker = Binary::start(c).await;
    let (jwt, status) = broker.user_login("alice", "pw").await;
    assert_eq!(status, 200, "the old password logs in");
    assert_eq!(broker.user_login("alice", "wrong").await.1, 401);
    let listing = broker.http.get(broker.url(&format!("/events/collections/{private}")));
    assert_eq!(listing.bearer_auth(&jwt).send().await.unwrap().status(), 403, "still private");
    let (bob, _) = broker.user_login("bob", "pw").await;
    let hooks = broker.http.get(broker.url(&format!("/collections/{private}/webhooks")));
    let hooks = ok_json(hooks.bearer_auth(&bob).send().await.unwrap()).await;
    assert_eq!(hooks["webhooks"][0]["url"], "https://hooks.example.com/broker", "{hooks}");
    let last = live[1].id.to_string();
    let response = broker
        .http
        .get(broker.url("/events"))
        .header("last-event-id", &last)
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(Sse::new(response).take(3).await, live[2..]);
    let mut fresh = Sse::new(broker.http.get(broker.url("/events")).send().await.unwrap());
    let latest: Vec<i64> = fresh.take(2).await.iter().map(|r| r.id).collect();
    assert_eq!(latest, [4, 5], "the latest of each name");
}
