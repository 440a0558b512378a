//! Webhooks: the published events of a claimed collection, POSTed to the
//! endpoints its owner registered, signed as Standard Webhooks says
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Delivery follows the log, not the fan-out: each endpoint has a task that
//! reads the collection's events after the endpoint's `delivered` sequence
//! number from the store, in sequence order, and sends the matching ones
//! one at a time, each until the endpoint answers 2xx (at least once, in
//! publication order). A failure is retried after 1 s, 2 s, 4 s, … at most
//! [`LAST_RETRY`] apart; once an event has failed for `--webhook-retry-for`
//! the endpoint is paused with the reason, and resuming it starts again at
//! that event. Progress and the latest attempts are written to the store
//! (at most every [`SAVE_EVERY`] while busy), so a restart, a kill or
//! another node resumes from the last acknowledged event, sending at most
//! that short tail again (each duplicate with the same `webhook-id`).
//! Retention never deletes an event an active endpoint has yet to receive.
//!
//! A manager on every node looks at the endpoints each second (and at once
//! when one is added or changed on its node) and runs the tasks of those
//! whose lease (`webhook:<id>`) it holds, renewing them each time, all in
//! one statement however many there are: one node at a time delivers to
//! an endpoint, and when it dies another takes over within [`LEASE`]
//! seconds. A new publication wakes the
//! tasks at once; each endpoint has its own task and keep-alive
//! connection, so a slow one delays nothing else.
//!
//! Safety: `https://` only unless `--webhook-allow-http`; every address a
//! name resolves to is checked when connecting (so DNS rebinding cannot
//! reach inside) and loopback, private, link-local and other non-public
//! ranges are refused unless `--webhook-allow-private`; each attempt has
//! [`TIMEOUT`], redirects are failures, and at most [`MAX_RESPONSE`] bytes
//! of an answer are read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::{Filter, Published};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Store, Webhook};

/// Seconds a node's hold on an endpoint lasts unless renewed (every second).
pub const LEASE: i64 = 5;

/// The name of the lease that lets one node deliver to endpoint `id`.
fn lease_name(id: Uuid) -> String {
    format!("webhook:{id}")
}

/// The longest an attempt may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an answer read.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// The first wait before a retry; it doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const LAST_RETRY: Duration = Duration::from_secs(300);
/// Least time between two writes of progress while busy.
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// Events read from the log at a time.
const BATCH: usize = 100;
/// Attempts kept for the owner to see.
const KEPT: usize = 10;
/// Longest URL taken.
const MAX_URL: usize = 2_000;

/// What the command line says of webhooks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://` URLs are allowed.
    pub allow_http: bool,
    /// Non-public addresses are allowed.
    pub allow_private: bool,
    /// How long an event is retried before the endpoint is paused.
    pub retry_for: Duration,
}

/// One attempt to deliver an event, as the owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// When it started (UNIX milliseconds).
    pub at: i64,
    /// The event's sequence number.
    pub seq: i64,
    /// The event's id (the `webhook-id` header).
    pub event_id: Uuid,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// What went wrong, if anything did.
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// A new signing secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> Result<String, String> {
    let mut random = [0; 24];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("whsec_{}", STANDARD.encode(random)))
}

/// The `webhook-signature` of a message: `v1,` and the base64 HMAC-SHA256,
/// keyed by the secret's bytes, of `<id>.<timestamp>.<body>`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut context =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key));
    for part in [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body] {
        context.update(part);
    }
    Some(format!("v1,{}", STANDARD.encode(context.sign())))
}

/// Whether an endpoint that asked for `events` receives an event named
/// `name` (an exact name, a `prefix*` pattern, or every event when none).
pub fn wants(events: &[String], name: &str) -> bool {
    events.is_empty()
        || events.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        })
}

/// Where an endpoint is, taken apart.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Checks an endpoint's URL against the settings (and its address, when it
/// is one): the reason it is refused.
pub fn check_url(url: &str, settings: &Settings) -> Result<(), String> {
    let target = target(url, settings)?;
    match target.host.parse::<IpAddr>() {
        Ok(ip) if !settings.allow_private && forbidden(ip) => Err(private(ip)),
        _ => Ok(()),
    }
}

fn target(url: &str, settings: &Settings) -> Result<Target, String> {
    let invalid = || format!("{url:?} is not an absolute http(s) URL");
    if url.len() > MAX_URL {
        return Err(format!("a URL has at most {MAX_URL} bytes"));
    }
    let uri: hyper::Uri = url.parse().map_err(|_| invalid())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if settings.allow_http => false,
        Some("http") => {
            return Err("webhook URLs must be https:// (unless --webhook-allow-http)".into());
        }
        _ => return Err(invalid()),
    };
    let authority = uri.authority().ok_or_else(invalid)?;
    if authority.as_str().contains('@') {
        return Err("webhook URLs may not carry a user name or password".into());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(Target {
        https,
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: authority.as_str().to_owned(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    })
}

/// Whether an address is outside the public internet: loopback, private,
/// shared (CGNAT), link-local (cloud metadata), unspecified, multicast,
/// reserved, or an IPv6 form of one.
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || first == 0
                || first >= 240
                || (first == 100 && (second & 0xc0) == 64)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => forbidden(IpAddr::V4(v4)),
            None => {
                let first = a.segments()[0];
                a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

fn private(ip: IpAddr) -> String {
    format!("{ip} is not a public address (allowed only with --webhook-allow-private)")
}

/// A connection to one endpoint, kept alive between attempts.
struct Endpoint {
    target: Target,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Endpoint {
    /// POSTs `body` with `headers`: the status answered.
    async fn post(
        &mut self,
        deliveries: &Deliveries,
        body: Bytes,
        headers: [(&str, String); 3],
    ) -> Result<u16, String> {
        tokio::time::timeout(TIMEOUT, async {
            let mut sender = match self.connection.take() {
                Some(mut sender) => match sender.ready().await {
                    Ok(()) => sender,
                    Err(_) => deliveries.connect(&self.target).await?,
                },
                None => deliveries.connect(&self.target).await?,
            };
            let mut request = hyper::Request::post(&self.target.path)
                .header(hyper::header::HOST, &self.target.authority)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, "Broker-Webhooks");
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut read = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > MAX_RESPONSE {
                    return Ok(status); // the rest is not read; nor is the connection kept
                }
            }
            self.connection = Some(sender);
            Ok(status)
        })
        .await
        .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
    }
}

/// What became of an event's delivery.
enum Outcome {
    Sent,
    Stopped,
    GaveUp(String),
}

/// The webhook deliveries of one node.
pub struct Deliveries {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    clock: Clock,
    /// This node, as the leases' holder.
    holder: String,
    settings: Settings,
    tls: TlsConnector,
    /// Rung when an endpoint was added or changed on this node, so that
    /// the manager looks at once rather than at its next tick.
    changed: Arc<tokio::sync::Notify>,
}

/// A delivery task the manager runs.
struct Task {
    hook: Webhook,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Deliveries {
    /// Deliveries by the node `holder`.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        clock: Clock,
        holder: String,
        settings: Settings,
        changed: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "webhooks: a system certificate could not be loaded");
        }
        roots.add_parsable_certificates(found.certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        let config = match config {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "webhooks: no TLS configuration; https endpoints will fail");
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        };
        let tls = TlsConnector::from(Arc::new(config));
        Arc::new(Self { store, hub, clock, holder, settings, tls, changed })
    }

    /// Runs the manager until `shutdown` (see the module's documentation);
    /// it ends once its tasks have saved their progress and given their
    /// leases back, so that another node takes over at once.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tasks: HashMap<Uuid, Task> = HashMap::new();
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = self.changed.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                let hooks = match self.store.webhooks(None).await {
                    Ok(hooks) => hooks,
                    Err(error) => {
                        tracing::debug!(%error, "webhooks: cannot list the endpoints");
                        continue;
                    }
                };
                tasks.retain(|_, task| !task.handle.is_finished());
                for (id, task) in &tasks {
                    let same = |h: &&Webhook| {
                        h.id == *id
                            && !h.paused
                            && (&h.url, &h.events, &h.secret)
                                == (&task.hook.url, &task.hook.events, &task.hook.secret)
                    };
                    if !hooks.iter().any(|h| same(&h)) {
                        task.stop.cancel();
                    }
                }
                let now = self.clock.now_secs();
                let active: Vec<Webhook> = hooks.into_iter().filter(|h| !h.paused).collect();
                // One statement for every lease, however many endpoints.
                let names = active.iter().map(|h| lease_name(h.id)).collect();
                let held = self.store.leases(names, &self.holder, now, now + LEASE).await;
                if let Err(error) = &held {
                    tracing::debug!(%error, "webhooks: cannot renew the leases");
                }
                let held: HashSet<String> = held.unwrap_or_default().into_iter().collect();
                for hook in active {
                    match (held.contains(&lease_name(hook.id)), tasks.get(&hook.id)) {
                        (true, None) => {
                            let stop = shutdown.child_token();
                            let id = hook.id;
                            let handle =
                                tokio::spawn(self.clone().deliver(hook.clone(), stop.clone()));
                            tasks.insert(id, Task { hook, stop, handle });
                        }
                        (true, Some(_)) => {}
                        (false, running) => {
                            if let Some(task) = running {
                                tracing::info!(webhook = %hook.id, "webhooks: lease lost");
                                task.stop.cancel();
                            }
                        }
                    }
                }
            }
            for (id, task) in tasks {
                task.stop.cancel();
                let _ = task.handle.await;
                let now = self.clock.now_secs();
                let _ = self.store.lease(&lease_name(id), &self.holder, now, now - 1).await;
            }
        })
    }

    /// Delivers an endpoint's events until `stop`, or until it gives up.
    async fn deliver(self: Arc<Self>, hook: Webhook, stop: CancellationToken) {
        let Ok(target) = target(&hook.url, &self.settings) else {
            let reason = format!("the URL {:?} is no longer allowed", hook.url);
            self.save(&hook, hook.delivered, &VecDeque::new(), Some(reason)).await;
            return;
        };
        let Ok(filter) = Filter::new(vec![hook.collection], vec![]) else { return };
        let mut endpoint = Endpoint { target, connection: None };
        let mut attempts: VecDeque<Attempt> =
            serde_json::from_str(&hook.attempts).unwrap_or_default();
        let mut published = self.hub.published();
        let mut delivered = hook.delivered;
        let (mut saved, mut saved_at) = (delivered, Instant::now());
        tracing::info!(webhook = %hook.id, from = delivered, "webhooks: delivering");
        loop {
            let batch = match self.store.replay(delivered, i64::MAX, &filter, BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::debug!(%error, webhook = %hook.id, "webhooks: cannot read the log");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if saved != delivered {
                    self.save(&hook, delivered, &attempts, None).await;
                    (saved, saved_at) = (delivered, Instant::now());
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = published.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            for p in batch {
                if wants(&hook.events, &p.event.event) {
                    match self.send(&hook, &mut endpoint, &p, &mut attempts, delivered, &stop).await
                    {
                        Outcome::Sent => {}
                        Outcome::Stopped => {
                            self.save(&hook, delivered, &attempts, None).await;
                            return;
                        }
                        Outcome::GaveUp(reason) => {
                            tracing::warn!(webhook = %hook.id, %reason, "webhooks: paused as failing");
                            self.save(&hook, delivered, &attempts, Some(reason)).await;
                            return;
                        }
                    }
                }
                delivered = p.seq;
                if saved_at.elapsed() >= SAVE_EVERY {
                    self.save(&hook, delivered, &attempts, None).await;
                    (saved, saved_at) = (delivered, Instant::now());
                }
            }
        }
    }

    /// Sends one event until the endpoint takes it, the task stops, or the
    /// retries run out (then why).
    async fn send(
        &self,
        hook: &Webhook,
        endpoint: &mut Endpoint,
        p: &Published,
        attempts: &mut VecDeque<Attempt>,
        delivered: i64,
        stop: &CancellationToken,
    ) -> Outcome {
        let body = serde_json::json!({
            "type": "event.published",
            "timestamp": iso8601(p.event.timestamp),
            "data": p.event,
        });
        let body = Bytes::from(body.to_string());
        let id = p.event.id.to_string();
        let (mut delay, mut failing_since) = (FIRST_RETRY, None);
        loop {
            let started = Instant::now();
            let now = self.clock.now_millis();
            let timestamp = now.div_euclid(1000);
            let Some(signature) = signature(&hook.secret, &id, timestamp, &body) else {
                return Outcome::GaveUp("the signing secret is not valid base64".into());
            };
            let headers = [
                ("webhook-id", id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ];
            let result = tokio::select! {
                () = stop.cancelled() => return Outcome::Stopped,
                result = endpoint.post(self, body.clone(), headers) => result,
            };
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (status, error) = match result {
                Ok(status) if (200..300).contains(&status) => (Some(status), None),
                Ok(status) if (300..400).contains(&status) => {
                    (Some(status), Some("redirects are not followed".to_owned()))
                }
                Ok(status) => (Some(status), Some(format!("answered {status}"))),
                Err(error) => (None, Some(error)),
            };
            attempts.push_front(Attempt {
                at: now,
                seq: p.seq,
                event_id: p.event.id,
                status,
                error: error.clone(),
                ms,
            });
            attempts.truncate(KEPT);
            let metrics = &self.hub.metrics;
            let Some(error) = error else {
                Metrics::add(&metrics.webhooks_sent, 1);
                return Outcome::Sent;
            };
            Metrics::add(&metrics.webhooks_failed, 1);
            let since = *failing_since.get_or_insert(started);
            if since.elapsed() >= self.settings.retry_for {
                return Outcome::GaveUp(format!(
                    "event {} (seq {}) failed for {} s; last: {error}",
                    p.event.id,
                    p.seq,
                    since.elapsed().as_secs()
                ));
            }
            self.save(hook, delivered, attempts, None).await;
            tokio::select! {
                () = stop.cancelled() => return Outcome::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(LAST_RETRY);
        }
    }

    /// Writes where delivery stands (errors are logged: the worst outcome
    /// is sending a few events again).
    async fn save(
        &self,
        hook: &Webhook,
        delivered: i64,
        attempts: &VecDeque<Attempt>,
        failing: Option<String>,
    ) {
        let attempts = serde_json::to_string(attempts).unwrap_or_else(|_| "[]".into());
        if let Err(error) = self.store.webhook_progress(hook.id, delivered, attempts, failing).await
        {
            tracing::warn!(%error, webhook = %hook.id, "webhooks: progress not saved");
        }
    }

    /// A new connection to `target`, to its first allowed address.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
        let addresses = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
        let mut failure = format!("{} has no address", target.host);
        for address in addresses {
            if !self.settings.allow_private && forbidden(address.ip()) {
                failure = private(address.ip());
                continue;
            }
            let tcp = match tokio::net::TcpStream::connect(address).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    failure = format!("cannot connect to {address}: {e}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            return if target.https {
                let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| format!("{}: {e}", target.host))?;
                let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                handshake(tls).await
            } else {
                handshake(tcp).await
            };
        }
        Err(failure)
    }
}

/// An HTTP/1.1 client connection over `io`, driven by its own task.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// UNIX seconds as an RFC 3339 UTC time (`2026-12-04T10:00:00Z`).
fn iso8601(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(signature("not a secret", "id", 1, b""), None);
    }

    #[test]
    fn names_and_patterns() {
        let events = vec!["card:*".to_owned(), "title".to_owned()];
        assert!(wants(&events, "card:moved") && wants(&events, "title"));
        assert!(!wants(&events, "titles") && !wants(&events, "car"));
        assert!(wants(&[], "anything"));
    }

    #[test]
    fn refuses_what_is_not_public() {
        let strict =
            Settings { allow_http: false, allow_private: false, retry_for: Duration::ZERO };
        for url in [
            "http://example.com/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]:8443/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://user:pw@example.com/",
            "ftp://example.com/",
            "/relative",
        ] {
            assert!(check_url(url, &strict).is_err(), "{url}");
        }
        assert!(check_url("https://example.com/hook?x=1", &strict).is_ok());
        assert!(check_url("https://93.184.216.34:8443/", &strict).is_ok());
        let open = Settings { allow_http: true, allow_private: true, ..strict };
        assert!(check_url("http://127.0.0.1:9/", &open).is_ok());
        let target = target("http://127.0.0.1:9/a?b", &open).unwrap();
        assert_eq!((target.port, target.path.as_str(), target.https), (9, "/a?b", false));
    }

    #[test]
    fn formats_times() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_614_265_330), "2021-02-25T15:02:10Z");
        assert_eq!(iso8601(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
