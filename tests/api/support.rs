//! A real Broker on an ephemeral port with its own temporary database and a
//! manual clock, and the clients the tests drive it with.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use broker::clock::ManualClock;
use broker::hub::Hub;
use broker::{Broker, Clock, Config};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The manual clock's start: 2027-01-15T08:00:00Z, in milliseconds.
pub const T0: i64 = 1_800_000_000_000;
/// [`T0`] in seconds, the unit of event timestamps.
pub const NOW: i64 = T0 / 1000;
/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Whether the suite runs on PostgreSQL (`BROKER_TEST_BACKEND=postgres`)
/// rather than embedded SQLite.
pub fn on_postgres() -> bool {
    std::env::var("BROKER_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

/// The PostgreSQL server on which tests create their databases.
pub fn pg_admin_url() -> String {
    std::env::var("BROKER_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL database of one test's own, dropped when it is.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TestDb {
    /// A new empty database on the server of [`pg_admin_url`].
    pub async fn create() -> Self {
        Self::create_on(&pg_admin_url()).await
    }

    /// A new empty database on the server that `admin` connects to.
    pub async fn create_on(admin: &str) -> Self {
        let name = format!("broker_test_{}", Uuid::new_v4().simple());
        admin_sql(admin, &format!("CREATE DATABASE {name}")).await;
        let base = admin.rsplit_once('/').expect("a database URL").0;
        Self { url: format!("{base}/{name}"), admin: admin.to_owned(), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, sql) =
            (self.admin.clone(), format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        // Drop may run inside a runtime: do the work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.expect("a runtime").block_on(admin_sql(&admin, &sql));
        });
        let _ = dropped.join();
    }
}

/// Runs one statement on the server's administrative database.
pub async fn admin_sql(admin: &str, sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(admin, tokio_postgres::NoTls).await.expect("PostgreSQL for tests");
    let connection = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = connection.await;
}

/// A Broker served in-process.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub hub: Arc<Hub>,
    pub dir: Arc<TempDir>,
    /// The test's PostgreSQL database, when the suite runs on PostgreSQL.
    pub db: Option<Arc<TestDb>>,
    extra: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), broker::Error>>>,
}

/// A signed-up, logged-in user.
pub struct TestUser {
    pub id: Uuid,
    pub collection: Uuid,
    pub jwt: String,
}

/// Parses a command line for a test broker keeping its data in `db`, or
/// else in `dir`.
pub fn config(dir: &Path, db: Option<&TestDb>, extra: &[&str]) -> Config {
    let mut args = vec!["broker", "--secret", "test-secret", "--save-path"];
    let dir = dir.to_str().expect("temporary paths are UTF-8");
    args.push(dir);
    if let Some(db) = db {
        args.extend_from_slice(&["--database-url", &db.url]);
    }
    args.extend_from_slice(extra);
    Config::from_args(args)
}

impl TestApp {
    /// A new broker on a new database, its clock at [`T0`].
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// A new broker with extra command-line options.
    pub async fn spawn_with(extra: &[&str]) -> Self {
        let db = if on_postgres() { Some(Arc::new(TestDb::create().await)) } else { None };
        Self::spawn_on(db, extra).await
    }

    /// A new broker on `db` (or on SQLite), its clock at [`T0`].
    pub async fn spawn_on(db: Option<Arc<TestDb>>, extra: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        Self::start(dir, db, Clock::manual(T0).1.clone(), extra).await
    }

    /// A new broker with exactly this configuration, its clock at [`T0`].
    pub async fn start_with_config(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, config).await
    }

    /// The same, on `listener`.
    pub async fn start_on(listener: tokio::net::TcpListener, config: Config) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        Self::serve_on(listener, config, dir, Clock::manual(T0).1.clone()).await
    }

    /// Stops this broker gracefully, sets the clock to `secs`, and starts a
    /// new one on the same data with the same options.
    pub async fn restart_at(mut self, secs: i64) -> Self {
        self.shut_down().await;
        self.set_time(secs);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Self::start(self.dir.clone(), self.db.clone(), self.clock.clone(), &extra).await
    }

    /// Another node on the same database and clock, with the same options
    /// (PostgreSQL only: SQLite has one node).
    pub async fn node(&self) -> Self {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        Self::start(dir, self.db.clone(), self.clock.clone(), &extra).await
    }

    /// The store this broker uses, opened once more (as another process would).
    pub fn store(&self) -> Arc<dyn broker::store::Store> {
        let config = config(self.dir.path(), self.db.as_deref(), &[]);
        broker::store::open(config.store_location(), Arc::default()).expect("the store opens")
    }

    async fn start(
        dir: Arc<TempDir>,
        db: Option<Arc<TestDb>>,
        clock: Arc<ManualClock>,
        extra: &[&str],
    ) -> Self {
        let config = config(dir.path(), db.as_deref(), extra);
        let mut app = Self::serve(config, dir, clock).await;
        app.db = db;
        app.extra = extra.iter().map(|s| s.to_string()).collect();
        app
    }

    async fn serve(config: Config, dir: Arc<TempDir>, clock: Arc<ManualClock>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_on(listener, config, dir, clock).await
    }

    async fn serve_on(
        listener: tokio::net::TcpListener,
        config: Config,
        dir: Arc<TempDir>,
        clock: Arc<ManualClock>,
    ) -> Self {
        let broker = Broker::open_with_clock(config, Clock::Manual(clock.clone()))
            .await
            .expect("broker starts");
        let hub = broker.hub();
        let addr: SocketAddr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(broker.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            clock,
            hub,
            dir,
            db: None,
            extra: Vec::new(),
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops the server the way SIGTERM does and waits until it has stopped.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("shutdown within the deadline")
                .expect("server task")
                .expect("clean shutdown");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON without a token.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.expect("request")
    }

    /// GETs `path` with a bearer token.
    pub async fn get_as(&self, jwt: &str, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(jwt).send().await.expect("request")
    }

    /// Sends `method path` with a bearer token and an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        jwt: &str,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(jwt);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request")
    }

    /// POSTs JSON with a bearer token.
    pub async fn post_as(&self, jwt: &str, path: &str, body: &Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, jwt, path, Some(body)).await
    }

    pub async fn sign_up(&self, username: &str, collection: Uuid) -> reqwest::Response {
        self.post(
            "/users",
            &json!({"username": username, "password": "secret-pw", "collection_id": collection}),
        )
        .await
    }

    pub async fn log_in(&self, username: &str, password: &str) -> reqwest::Response {
        self.post("/login", &json!({"username": username, "password": password})).await
    }

    /// Signs a new user up and logs them in.
    pub async fn user(&self, username: &str) -> TestUser {
        let collection = Uuid::new_v4();
        let id = ok_json(self.sign_up(username, collection).await).await["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id is a UUID");
        let jwt = ok_json(self.log_in(username, "secret-pw").await).await["jwt"]
            .as_str()
            .expect("jwt is a string")
            .to_owned();
        TestUser { id, collection, jwt }
    }

    /// Inserts an event; returns the raw response.
    pub async fn insert_raw(&self, jwt: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/insert"))
            .bearer_auth(jwt)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POSTs a raw JSON text to `/insert` with a token; the raw response.
    pub async fn insert_text(&self, jwt: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url("/insert"))
            .bearer_auth(jwt)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Inserts an event that must be accepted; returns its record.
    pub async fn insert(&self, user: &TestUser, event: &str, timestamp: i64, data: Value) -> Value {
        let body = json!({"event": event, "collection_id": user.collection, "timestamp": timestamp, "data": data});
        ok_json(self.insert_raw(&user.jwt, &body).await).await["event"].take()
    }

    /// Inserts events due now and waits until they are published.
    pub async fn publish(&self, user: &TestUser, events: &[(&str, Value)]) {
        let mut witness = self.subscribe().await;
        for (name, data) in events {
            self.insert(user, name, NOW, data.clone()).await;
        }
        witness.take(events.len()).await;
    }

    /// The events of a collection, as listed by the API.
    pub async fn collection(&self, user: &TestUser, collection: Uuid) -> Vec<Value> {
        let mut body =
            ok_json(self.get_as(&user.jwt, &format!("/events/collections/{collection}")).await)
                .await;
        serde_json::from_value(body["events"].take()).expect("an array of events")
    }

    /// Opens `/events` with a real SSE client.
    pub async fn subscribe(&self) -> Sse {
        self.subscribe_to("/events", &[]).await
    }

    /// GETs `path` (under `/events`) with these headers; the raw response.
    pub async fn open_stream(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    /// Opens a stream that must be accepted, with a real SSE client.
    pub async fn subscribe_to(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        let response = self.open_stream(path, headers).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse::new(response)
    }

    /// Moves the clock to `secs` (UNIX seconds).
    pub fn set_time(&self, secs: i64) {
        self.clock.set(secs * 1000);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts a 200 and returns the JSON body.
pub async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "unexpected status, body {body}");
    body
}

/// Asserts the status and that the body is `{"error": "<non-empty>"}`;
/// returns the message.
pub async fn error_json(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let body: Value = response.json().await.expect("a JSON error body");
    let message = body["error"].as_str().expect("an \"error\" string").to_owned();
    assert!(!message.is_empty());
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only \"error\" in {body}");
    message
}

/// One received SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// A real SSE client on `/events` (the `eventsource-stream` parser).
pub struct Sse(EventStream);

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource;
        Self(Box::pin(response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string()))))
    }

    /// The next event; fails the test if none comes within the deadline.
    pub async fn next(&mut self) -> Received {
        let (id, event, data) = self.next_raw().await;
        Received { id: id.parse().expect("a numeric id"), event, data }
    }

    /// The next event as it came: its id (the last one seen if it has
    /// none), name and JSON data.
    pub async fn next_raw(&mut self) -> (String, String, Value) {
        let event = tokio::time::timeout(DEADLINE, self.0.next())
            .await
            .expect("an event within the deadline")
            .expect("the stream is open")
            .expect("a well-formed event");
        (event.id, event.event, serde_json::from_str(&event.data).expect("JSON data"))
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// Waits for the server to end the stream.
    pub async fn ended(&mut self) {
        let end = tokio::time::timeout(DEADLINE, async {
            while let Some(item) = self.0.next().await {
                if item.is_err() {
                    break;
                }
            }
        });
        end.await.expect("the stream ends within the deadline");
    }
}

/// Waits until `check` holds, failing the test after the deadline.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(DEADLINE, what, check).await;
}

/// The same, with another deadline (for work outside Broker, such as a
/// certificate authority's).
pub async fn eventually_within<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
