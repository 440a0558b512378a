//! The `broker` binary itself: command line, secret file, signals, and
//! durability under `kill -9`.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::support::{DEADLINE, Sse, TestDb, ok_json};

/// A running `broker` process.
pub struct Binary {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    /// What it logged (standard error), line by line.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The `broker` binary, run in `cwd`, with no Broker variables inherited.
pub fn command(cwd: &Path) -> Command {
    clean(Command::new(env!("CARGO_BIN_EXE_broker")), cwd)
}

/// The same under umask 000 (through `sh`, which sets it and execs).
fn command_under_umask_000(cwd: &Path) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", "umask 000 && exec \"$@\"", "sh", env!("CARGO_BIN_EXE_broker")]);
    clean(command, cwd)
}

fn clean(mut command: Command, cwd: &Path) -> Command {
    command.current_dir(cwd).kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("BROKER_") || key == "SAVE_PATH" {
            command.env_remove(key);
        }
    }
    command
}

impl Binary {
    /// Starts the binary and waits until it says where it listens.
    pub async fn start(mut command: Command) -> Self {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("the binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let base = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(at) = line.find("listening on ") {
                    let rest = &line[at + "listening on ".len()..];
                    let url = rest.split(|c: char| c == '"' || c.is_whitespace()).next().unwrap();
                    return url.replace("0.0.0.0", "127.0.0.1");
                }
            }
            panic!("the binary exited before listening: {:?}", log.lock().unwrap());
        })
        .await
        .expect("the binary listens within the deadline");
        // Keep reading the log so that the process never blocks on it.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, base, http: reqwest::Client::new(), log }
    }

    /// A node on a port of its own, its data in `dir` or on `db`.
    pub async fn node(dir: &Path, db: Option<&TestDb>, extra: &[&str]) -> Self {
        let mut c = command(dir);
        c.args(["--port", "0", "--secret", "s", "--host", "127.0.0.1"]).args(extra);
        if let Some(db) = db {
            c.args(["--database-url", &db.url]);
        }
        Self::start(c).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// The process's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        crate::limits::rss(self.child.id().expect("running"))
    }

    /// Sends the signal `name` (`-TERM`, `-HUP`) to the process.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args([name, &pid]).status().await.unwrap();
        assert!(status.success());
    }

    /// Logs a user in; returns (jwt, status) — the jwt empty if refused.
    pub async fn user_login(&self, name: &str, password: &str) -> (String, u16) {
        let response = self.post("/login", &json!({"username": name, "password": password})).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (body["jwt"].as_str().unwrap_or_default().to_owned(), status)
    }

    /// Signs a user up and logs in; returns (jwt, collection).
    pub async fn user(&self, name: &str) -> (String, Uuid) {
        let collection = Uuid::new_v4();
        ok_json(
            self.post(
                "/users",
                &json!({"username": name, "password": "pw", "collection_id": collection}),
            )
            .await,
        )
        .await;
        let body =
            ok_json(self.post("/login", &json!({"username": name, "password": "pw"})).await).await;
        (body["jwt"].as_str().unwrap().to_owned(), collection)
    }
}

#[tokio::test]
async fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let help = command(dir.path()).arg("--help").output().await.unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in
        ["--port", "--origin", "--expiry", "--secret", "--save-path", "SAVE_PATH", "BROKER_PORT"]
    {
        assert!(text.contains(option), "--help lacks {option}:\n{text}");
    }
    let version = command(dir.path()).arg("--version").output().await.unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn seed_command_line_with_a_generated_secret_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut c = command(dir.path());
        c.args(["-port", "0", "-origin", "http://localhost:3000", "-expiry", "3600"]);
        Binary::start(c)
    };
    let broker = start().await;
    let (jwt, _) = broker.user("alice").await;
    let secret = dir.path().join("broker_data").join("secret");
    assert!(secret.exists(), "the secret is kept in ./broker_data");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    broker.signal("-TERM").await;
    drop(broker);
    let broker = start().await;
    let user = broker.http.get(broker.url("/events/user")).bearer_auth(&jwt).send().await.unwrap();
    ok_json(user).await;
}

#[tokio::test]
async fn environment_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.env("BROKER_PORT", "0")
        .env("SAVE_PATH", "elsewhere")
        .env("BROKER_SECRET", "env-secret")
        .env("BROKER_PRIVATE_STREAM", "true");
    let broker = Binary::start(c).await;
    let (jwt, _) = broker.user("alice").await;
    assert!(dir.path().join("elsewhere").join("broker.sqlite3").exists());
    assert!(!dir.path().join("elsewhere").join("secret").exists(), "the given secret is used");
    let anonymous = broker.http.get(broker.url("/events")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "BROKER_PRIVATE_STREAM=true");
    let with_token = broker.http.get(broker.url("/events")).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
}

#[tokio::test]
async fn json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s", "--log-format", "json"]).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let line: Value = serde_json::from_str(&first).expect("a JSON log line");
    assert!(line["fields"]["message"].is_string(), "{line}");
    assert!(line["level"].is_string(), "{line}");
}

#[tokio::test]
async fn sigterm_closes_streams_and_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s"]);
    let mut broker = Binary::start(c).await;
    let response = broker.http.get(broker.url("/events")).send().await.unwrap();
    let mut sse = Sse::new(response);
    broker.signal("-TERM").await;
    sse.ended().await;
    let status =
        tokio::time::timeout(DEADLINE, broker.child.wait()).await.expect("exits promptly").unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_insert() {
    let dir = tempfile::tempdir().unwrap();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let start = || {
        let mut c = command(dir.path());
        c.args(["--port", "0", "--secret", "s", "--host", "127.0.0.1"]);
        if let Some(db) = &db {
            c.args(["--database-url", &db.url]);
        }
        Binary::start(c)
    };
    let mut broker = start().await;
    let (jwt, collection) = broker.user("writer").await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (http, url, jwt, acknowledged) =
            (broker.http.clone(), broker.url("/insert"), jwt.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let body = json!({"event": format!("w{w}"), "collection_id": collection, "timestamp": 0, "data": n});
                let Ok(response) = http.post(&url).bearer_auth(&jwt).json(&body).send().await else { break };
                let Ok(record) = response.json::<Value>().await else { break };
                acknowledged.lock().unwrap().push(record["event"]["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    crate::support::eventually("some inserts", || async {
        acknowledged.lock().unwrap().len() >= 300
    })
    .await;
    broker.child.start_kill().unwrap();
    broker.child.wait().await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let broker = start().await;
    let listing = broker
        .http
        .get(broker.url(&format!("/events/collections/{collection}")))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = ok_json(listing).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged inserts lost", lost.len(), acknowledged.len());
}

/// `broker admin grant` works on the store of a running server (and on a
/// missing user fails with a message); the server sees the new
/// administrator at its next request.
#[tokio::test]
async fn broker_admin_grant_works_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let store_args: Vec<&str> = match &db {
        Some(db) => vec!["--database-url", &db.url],
        None => vec!["--save-path", "data"],
    };
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s", "--host", "127.0.0.1"]).args(&store_args);
    let broker = Binary::start(c).await;
    let (jwt, _) = broker.user("root").await;
    let admin_users = || broker.http.get(broker.url("/admin/users")).bearer_auth(&jwt).send();
    assert_eq!(admin_users().await.unwrap().status(), 403);
    let grant = |name: &str| {
        let mut c = command(dir.path());
        c.args(["admin", "grant", name]).args(&store_args).stderr(Stdio::piped());
        c.output()
    };
    let missing = grant("nobody").await.unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user is named"));
    assert!(grant("root").await.unwrap().status.success());
    let page = ok_json(admin_users().await.unwrap()).await;
    assert_eq!(page["users"][0]["username"], "root");
    assert_eq!(page["users"][0]["admin"], true);
}

/// A proxy of the test's own in front of `upstreams` that cuts connections
/// at random points: before the whole request went through, or after it
/// did and before the answer comes back (the insert committed, the client
/// never knows). A connection to an upstream that is down is cut too.
async fn cutting_proxy(upstreams: Arc<Mutex<Vec<String>>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        for n in 1u64.. {
            let Ok((mut client, _)) = listener.accept().await else { break };
            let upstream = {
                let all = upstreams.lock().unwrap();
                all[n as usize % all.len()].clone()
            };
            // xorshift: which cut, and where, for this connection.
            let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (cut, at) = (x % 4, (x >> 8) as usize % 200 + 1);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let mut request = vec![0; 64 * 1024];
                let mut answer = vec![0; 64 * 1024];
                let mut sent = 0;
                loop {
                    tokio::select! {
                        read = client.read(&mut request) => {
                            let Ok(n @ 1..) = read else { return };
                            let n = if cut == 0 { n.min(at.saturating_sub(sent)) } else { n };
                            if server.write_all(&request[..n]).await.is_err() || (cut == 0 && sent + n >= at) {
                                return;
                            }
                            sent += n;
                        }
                        read = server.read(&mut answer) => {
                            let Ok(n @ 1..) = read else { return };
                            if cut == 1 || client.write_all(&answer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// Writers that retry every insert, with its key, through connections cut
/// at random points while a node is killed: every key is stored exactly
/// once, as the event its acknowledgement named, and nothing else is.
#[tokio::test]
async fn retried_inserts_with_keys_are_stored_exactly_once_through_cuts_and_a_kill() {
    const WRITERS: usize = 64;
    const EACH: usize = 8;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let db = if crate::support::on_postgres() { Some(TestDb::create().await) } else { None };
    let start = |i: usize| Binary::node(dirs[i].path(), db.as_ref(), &[]);
    let mut nodes = vec![start(0).await];
    if db.is_some() {
        nodes.extend([start(1).await, start(2).await]);
    }
    let address = |node: &Binary| node.base.trim_start_matches("http://").to_owned();
    let upstreams = Arc::new(Mutex::new(nodes.iter().map(address).collect::<Vec<_>>()));
    let proxy = cutting_proxy(upstreams.clone()).await;
    let (jwt, collection) = nodes[0].user("writer").await;
    let acknowledged = Arc::new(Mutex::new(std::collections::HashMap::<String, String>::new()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, url, jwt) = (http.clone(), format!("{proxy}/insert"), jwt.clone());
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let key = format!("w{w}-{n}");
                let body =
                    json!({"event": "e", "collection_id": collection, "timestamp": 0, "data": key});
                loop {
                    let sent = http.post(&url).bearer_auth(&jwt).header("idempotency-key", &key);
                    let Ok(response) = sent.json(&body).send().await else { continue };
                    let status = response.status().as_u16();
                    let Ok(record) = response.json::<Value>().await else { continue };
                    match status {
                        200 => {
                            let id = record["event"]["id"].as_str().unwrap().to_owned();
                            acknowledged.lock().unwrap().insert(key, id);
                            break;
                        }
                        // A node going down, or the database unreachable.
                        500.. => continue,
                        _ => panic!("{status}: {record}"),
                    }
                }
            }
        }));
    }
    crate::support::eventually("a third of the inserts", || async {
        acknowledged.lock().unwrap().len() >= WRITERS * EACH / 3
    })
    .await;
    // kill -9 one node; on SQLite, start it again on the same data.
    nodes[0].child.start_kill().unwrap();
    nodes[0].child.wait().await.unwrap();
    if db.is_none() {
        nodes[0] = start(0).await;
    } else {
        nodes.remove(0);
    }
    *upstreams.lock().unwrap() = nodes.iter().map(address).collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let listing = nodes[0]
        .http
        .get(nodes[0].url(&format!("/events/collections/{collection}")))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let mut stored = std::collections::HashMap::new();
    for event in ok_json(listing).await["events"].as_array().unwrap() {
        let key = event["data"].as_str().unwrap().to_owned();
        let again = stored.insert(key.clone(), event["id"].as_str().unwrap().to_owned());
        assert!(again.is_none(), "{key} stored twice");
    }
    assert_eq!(acknowledged.len(), WRITERS * EACH);
    assert_eq!(stored, acknowledged, "each key stored once, as acknowledged");
}

/// Broker's data directory and files are its user's only, whatever the
/// umask, on a fresh start and after a restart; a directory others can
/// read is named in a warning, or refused with `--strict-permissions`.
#[tokio::test]
async fn the_data_directory_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("made/by-broker");
    let mode = |name: &str| {
        let path = if name.is_empty() { data.clone() } else { data.join(name) };
        std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let start = |extra: &[&str]| {
        let mut c = command_under_umask_000(root.path());
        c.args(["--port", "0", "--host", "127.0.0.1", "--save-path"]).arg(&data).args(extra);
        c
    };
    for round in ["fresh", "restarted"] {
        let mut broker = Binary::start(start(&[])).await;
        broker.user(&format!("user-{round}")).await; // the WAL has something
        assert_eq!(mode(""), 0o700, "{round}");
        assert_eq!(
            std::fs::metadata(data.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for file in ["broker.sqlite3", "broker.sqlite3-wal", "broker.sqlite3-shm", "secret"] {
            assert_eq!(mode(file), 0o600, "{round}: {file}");
        }
        let log = broker.log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.contains("other users can read")), "{log:?}");
        broker.signal("-TERM").await;
        broker.child.wait().await.unwrap();
    }
    // Made readable by others (an older Broker, a careless copy).
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("broker.sqlite3"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let mut broker = Binary::start(start(&[])).await;
    let warned =
        || broker.log.lock().unwrap().iter().find(|l| l.contains("other users can")).cloned();
    crate::support::eventually("the warning", || async { warned().is_some() }).await;
    let warning = warned().unwrap();
    assert!(
        warning.contains(&format!("{} (644)", data.join("broker.sqlite3").display())),
        "{warning}"
    );
    assert!(warning.contains("chmod -R go="), "{warning}");
    broker.signal("-TERM").await;
    broker.child.wait().await.unwrap();
    let refused = start(&["--strict-permissions"]).output().await.unwrap();
    assert!(!refused.status.success());
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("other users can read") && log.contains("--strict-permissions"), "{log}");
}
