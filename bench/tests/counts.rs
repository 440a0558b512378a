//! A small real run of the bench against an in-process Broker: it must count
//! every delivery, and count refusals apart from failures.

use std::process::Command;

use serde_json::Value;

/// Serves a Broker on an ephemeral port; returns its address.
async fn broker(extra: &[&str]) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args =
        vec!["broker", "--secret", "bench-test", "--save-path", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let broker = broker::Broker::open(broker::Config::from_args(args)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(broker.serve(listener, std::future::pending()));
    (addr, dir)
}

/// Runs broker-bench with `args` and returns its JSON result.
fn bench(args: &[&str]) -> Value {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_broker-bench"))
        .args(args)
        .args(["--json", out.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "broker-bench {args:?} failed");
    serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_every_delivery() {
    let (addr, _dir) = broker(&[]).await;
    let result = tokio::task::spawn_blocking(move || {
        bench(&["fanout", "--addr", &addr, "-n", "40", "--procs", "2", "-k", "5", "-b", "20"])
    })
    .await
    .unwrap();
    let m = &result["metrics"];
    assert_eq!(m["subscribers connected"], 40.0);
    assert_eq!(m["deliveries expected"], 40.0 * 25.0);
    assert_eq!(m["deliveries lost"], 0.0);
    assert_eq!(m["streams ended early"], 0.0);
    assert!(m["single event to last subscriber p99"].as_f64().unwrap() > 0.0);
    assert_eq!(result["failures"], Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_apart_from_failures() {
    let (addr, _dir) = broker(&["--max-connections", "30"]).await;
    let result = tokio::task::spawn_blocking(move || {
        bench(&["subscribers", "--addr", &addr, "-n", "50", "--procs", "2"])
    })
    .await
    .unwrap();
    let m = &result["metrics"];
    assert_eq!(m["subscribers connected"], 30.0);
    assert_eq!(m["subscribers refused (503)"], 20.0);
    assert_eq!(m["subscribers failed"], 0.0);
}
