//! The connection limit and what bounds the server's memory.

use crate::support::{NOW, Sse, TestApp, TestDb, error_json, eventually};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Held by the tests that move tens of megabytes, so that they do not run
/// at once: each measures the server's memory.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn beyond_the_limit_a_subscriber_gets_503_at_once() {
    let app = TestApp::spawn_with(&["--max-connections", "2"]).await;
    let first = app.subscribe().await;
    let _second = app.subscribe().await;
    let refused = app.open_stream("/events", &[]).await;
    assert_eq!(refused.headers()["retry-after"], "5");
    error_json(refused, 503).await;
    drop(first);
    eventually("a place to free up", || async { app.hub.subscribers() == 1 }).await;
    app.subscribe().await;
}

/// Over plain HTTP a client that takes nothing is dropped after
/// `--write-stall`, well before it falls `--max-lag` behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_after_the_write_stall() {
    let app = TestApp::spawn_with(&["--write-stall", "1"]).await;
    let port = app.base.rsplit(':').next().unwrap().parse().unwrap();
    dropped_when_stalled(&app, small_window(port).await).await;
}

/// A connection to 127.0.0.1:`port` that receives into a 4 KiB buffer.
pub async fn small_window(port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

/// Subscribes over `connection` (plain or TLS) and never reads; publishes
/// 8 MiB in 128 events (more than the sockets hold, far less than the
/// default `--max-lag`) until `app` drops the stream as stalled.
pub async fn dropped_when_stalled<S: AsyncRead + AsyncWrite + Unpin>(
    app: &TestApp,
    mut connection: S,
) {
    let alice = app.user("alice").await;
    connection.write_all(b"GET /events HTTP/1.1\r\nHost: broker\r\n\r\n").await.unwrap();
    eventually("the subscriber to be counted", || async { app.hub.subscribers() == 1 }).await;
    let padding = "x".repeat(64 * 1024);
    for n in 0..128 {
        app.insert(&alice, "big", NOW, json!([n, padding])).await;
    }
    // Only the stall can drop it: a task blocked in a write never reads
    // the hub, so never finds itself behind.
    eventually("the stalled stream to be dropped", || async { app.hub.subscribers() == 0 }).await;
}

/// A subscriber that never reads while 96 MiB of events go out: the
/// server's memory stays bounded, a subscriber that keeps up gets
/// everything, and the stalled one, once it reads, finds it was
/// disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_the_others_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _alone = HEAVY.lock().await;
    const EVENTS: usize = 1500;
    const SIZE: usize = 64 * 1024;
    /// Publishers stay at most this many events ahead of the normal
    /// subscriber (well inside --max-lag): it keeps up by construction.
    const WINDOW: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::process::command(dir.path());
    // A write stall longer than the test: the stalled client must be dropped
    // for falling behind, not for the time a busy machine takes.
    let args = ["--port", "0", "--host", "127.0.0.1", "--secret", "s", "--max-lag", "256"];
    command.args(args).args(["--write-stall", "600"]);
    let broker = crate::process::Binary::start(command).await;
    let (jwt, collection) = broker.user("alice").await;

    let addr = broker.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled.write_all(b"GET /events HTTP/1.1\r\nHost: broker\r\n\r\n").await.unwrap();
    let mut normal = Sse::new(broker.http.get(broker.url("/events")).send().await.unwrap());
    let got = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let got = got.clone();
        async move {
            let mut ids = Vec::with_capacity(EVENTS);
            for _ in 0..EVENTS {
                ids.push(normal.next().await.id);
                got.fetch_add(1, Ordering::Release);
            }
            ids
        }
    });

    let pid = broker.child.id().unwrap();
    let baseline = broker.rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let padding = "x".repeat(SIZE);
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (http, url, jwt, padding, got, peak) = (
            broker.http.clone(),
            broker.url("/insert"),
            jwt.clone(),
            padding.clone(),
            got.clone(),
            peak.clone(),
        );
        publishers.push(tokio::spawn(async move {
            for n in (p..EVENTS).step_by(8) {
                eventually("the normal subscriber to keep up", || async {
                    n < got.load(Ordering::Acquire) + WINDOW
                })
                .await;
                let body = json!({"event": "big", "collection_id": collection, "timestamp": 0, "data": [n, padding]});
                let response = http.post(&url).bearer_auth(&jwt).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200);
                peak.fetch_max(rss(pid), Ordering::Relaxed);
            }
        }));
    }
    let ids = reader.await.unwrap();
    assert_eq!(ids, (1..=EVENTS as i64).collect::<Vec<_>>(), "every event, in order");
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    println!(
        "server RSS grew by {} KiB while {} MiB went out",
        growth >> 10,
        (EVENTS * SIZE) >> 20
    );
    assert!(growth < 48 << 20, "server memory grew by {growth} bytes");

    // Once it reads, the stalled client finds the reason, then the end of
    // the stream.
    let mut seen = Vec::new();
    let drained = tokio::time::timeout(crate::support::DEADLINE, stalled.read_to_end(&mut seen));
    drained.await.expect("the stalled stream ends").unwrap();
    let tail = String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..]).into_owned();
    assert!(tail.ends_with("reconnect with Last-Event-ID to resume\n\n"), "{tail}");
    assert!(tail.contains(": disconnected: too slow"), "{tail}");
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// A listing is written as it is read from the store: 64 MiB of events go
/// out while the server's memory grows by a small fraction of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_listing_streams_in_bounded_memory() {
    use futures_util::StreamExt;
    let _alone = HEAVY.lock().await;
    const EVENTS: usize = 4096;
    const SIZE: usize = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let mut command = crate::process::command(dir.path());
    command.args(["--port", "0", "--host", "127.0.0.1", "--secret", "s"]);
    if let Some(db) = &db {
        command.args(["--database-url", &db.url]);
    }
    let broker = crate::process::Binary::start(command).await;
    let (jwt, collection) = broker.user("alice").await;
    let padding = "x".repeat(SIZE);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (http, url, jwt, padding) =
                (broker.http.clone(), broker.url("/insert"), jwt.clone(), padding.clone());
            tokio::spawn(async move {
                for n in (w..EVENTS).step_by(16) {
                    // Far in the future: nothing is published meanwhile.
                    let body = json!({"event": "big", "collection_id": collection, "timestamp": 4_000_000_000i64, "data": [n, padding]});
                    let response = http.post(&url).bearer_auth(&jwt).json(&body).send().await;
                    assert_eq!(response.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let baseline = broker.rss();
    let url = broker.url(&format!("/events/collections/{collection}"));
    let response = broker.http.get(url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut body, mut bytes, mut peak, mut tail) = (response.bytes_stream(), 0, baseline, vec![]);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("the whole listing");
        bytes += chunk.len();
        tail = chunk[chunk.len().saturating_sub(2)..].to_vec();
        peak = peak.max(broker.rss());
    }
    assert!(bytes > EVENTS * SIZE, "{bytes} bytes");
    assert_eq!(tail, b"]}");
    let growth = peak.saturating_sub(baseline);
    println!("server RSS grew by {} KiB while {} MiB went out", growth >> 10, bytes >> 20);
    assert!(growth < 24 << 20, "server memory grew by {growth} bytes");
}
