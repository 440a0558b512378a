//! HTTPS with certificates from files: HTTP/2 and HTTP/1.1 on one port,
//! reloads, plain HTTP on the TLS port, unusable certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Version;
use serde_json::json;

use crate::support::{NOW, Sse, TestApp, config, eventually, ok_json};

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1.
pub struct Certificates {
    pub ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    pub fn new(dir: &Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Broker test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let certs = Self { ca, cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        certs.issue("first");
        certs
    }

    /// Writes a new server certificate (with `name` as its organisation);
    /// returns it in DER.
    fn issue(&self, name: &str) -> Vec<u8> {
        self.issue_until(name, (2049, 12, 31))
    }

    /// The same, valid until `(year, month, day)`.
    fn issue_until(&self, name: &str, (year, month, day): (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        cert.der().to_vec()
    }

    fn client(&self, app: &TestApp, http1: bool) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap();
        let addr = app.base.trim_start_matches("https://localhost:");
        let addr = format!("127.0.0.1:{addr}").parse().unwrap();
        let builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .resolve("localhost", addr);
        let builder = if http1 { builder.http1_only() } else { builder };
        builder.build().unwrap()
    }
}

/// A broker serving HTTPS with `certs`, its client trusting the test CA.
async fn https(certs: &Certificates) -> TestApp {
    https_with(certs, &[]).await
}

/// The same, with more options.
pub async fn https_with(certs: &Certificates, extra: &[&str]) -> TestApp {
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--tls-cert", cert, "--tls-key", key];
    args.extend_from_slice(extra);
    let mut app = TestApp::start_with_config(config(dir.path(), None, &args)).await;
    // The app keeps its data: a reader opened later needs the directory.
    app.dir = std::sync::Arc::new(dir);
    app.base = app.base.replace("http://127.0.0.1", "https://localhost");
    app.http = certs.client(&app, false);
    app
}

#[tokio::test]
async fn https_serves_http2_and_http1_with_every_stream_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let mut app = https(&certs).await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), Version::HTTP_2);
    assert_eq!(health.headers()["strict-transport-security"], "max-age=31536000");
    let alice = app.user("alice").await;
    // Twelve streams: over HTTP/1.1 a browser would stop at six.
    let mut streams = Vec::new();
    for _ in 0..12 {
        let response = app.open_stream("/events", &[]).await;
        assert_eq!(response.version(), Version::HTTP_2);
        streams.push(Sse::new(response));
    }
    let http1 = certs.client(&app, true);
    let response = http1.get(app.url("/events")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.headers()["strict-transport-security"], "max-age=31536000");
    streams.push(Sse::new(response));
    app.insert(&alice, "over-tls", NOW, json!({"n": 1})).await;
    for stream in &mut streams {
        assert_eq!(stream.next().await.event, "over-tls");
    }
    // Resume works as over plain HTTP.
    let resumed = app.open_stream("/events", &[("last-event-id", "0")]).await;
    assert_eq!(Sse::new(resumed).next().await.event, "over-tls");
    // Shutting down ends every stream.
    app.shut_down().await;
    for stream in &mut streams {
        stream.ended().await;
    }
}

/// Over HTTP/2 the stream keeps the promises it makes over HTTP/1.1: the
/// latest state on connect, filters, heartbeats, and a stream whose client
/// takes nothing (HTTP/2 flow control holds its data back) is dropped after
/// `--write-stall` while the others get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_stream_keeps_its_promises() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let app = https_with(&certs, &["--heartbeat", "1", "--write-stall", "1"]).await;
    let alice = app.user("alice").await;
    app.insert(&alice, "a", NOW, json!(1)).await;
    app.insert(&alice, "b", NOW, json!(2)).await;
    let filtered = app.open_stream("/events?event=b", &[]).await;
    assert_eq!(filtered.version(), Version::HTTP_2);
    assert_eq!(Sse::new(filtered).next().await.event, "b", "the latest b, and no a");
    let mut raw = app.open_stream("/events?event=none", &[]).await.bytes_stream();
    let mut seen = Vec::new();
    while !seen.windows(3).any(|w| w == b":\n\n") {
        let chunk = tokio::time::timeout(crate::support::DEADLINE, raw.next()).await;
        seen.extend_from_slice(&chunk.expect("a heartbeat").unwrap().unwrap());
    }
    // 48 events of 64 KiB: more than the client's 2 MiB stream window and
    // what the server queues.
    let stalled = app.open_stream("/events?event=big", &[]).await;
    let mut live = app.subscribe_to("/events?event=big", &[]).await;
    let before = app.hub.subscribers();
    let padding = "x".repeat(64 * 1024);
    for n in 0..48 {
        app.insert(&alice, "big", NOW, json!([n, padding])).await;
        assert_eq!(live.next().await.data[0], n);
    }
    eventually("the stalled stream to be dropped", || async {
        app.hub.subscribers() == before - 1
    })
    .await;
    Sse::new(stalled).ended().await;
    // A client that goes away is let go at once, heartbeat or not.
    drop(live);
    eventually("the departed stream to be dropped", || async {
        app.hub.subscribers() == before - 2
    })
    .await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = https(&Certificates::new(dir.path())).await;
    let plain = app.base.replace("https://localhost", "http://127.0.0.1");
    let response = reqwest::get(format!("{plain}/healthz")).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("HTTPS"), "{body}");
}

/// The certificate a new TLS connection to `app` is shown.
async fn presented(app: &TestApp, certs: &Certificates) -> Vec<u8> {
    let port = app.base.trim_start_matches("https://localhost:").parse().unwrap();
    presented_by(port, "localhost", certs.ca.der()).await.unwrap()
}

/// The leaf certificate 127.0.0.1:`port` presents for `name`, if the
/// handshake succeeds and the chain verifies against `root`.
pub async fn presented_by(
    port: u16,
    name: &str,
    root: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
) -> Result<Vec<u8>, String> {
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connect(socket, name, root).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// A TLS client connection over `socket` to `name`, trusting `root` only
/// (no ALPN: HTTP/1.1).
async fn connect(
    socket: tokio::net::TcpStream,
    name: &str,
    root: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    connect_alpn(socket, name, root, None).await
}

/// The same, offering `alpn` (such as `h2`).
pub async fn connect_alpn(
    socket: tokio::net::TcpStream,
    name: &str,
    root: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    alpn: Option<&[u8]>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols.extend(alpn.map(<[u8]>::to_vec));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, socket).await;
    tls.map_err(|e| e.to_string())
}

/// Over HTTPS/1.1 (the lean path) a client that takes nothing is dropped
/// after `--write-stall`, well before it falls `--max-lag` behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_1_1_a_stalled_client_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let app = https_with(&certs, &["--write-stall", "1"]).await;
    let port: u16 = app.base.trim_start_matches("https://localhost:").parse().unwrap();
    let socket = crate::limits::small_window(port).await;
    let stalled = connect(socket, "localhost", certs.ca.der()).await.unwrap();
    crate::limits::dropped_when_stalled(&app, stalled).await;
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_connections_and_streams_survive() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let app = https(&certs).await;
    let alice = app.user("alice").await;
    let mut stream = app.subscribe().await;
    let first = presented(&app, &certs).await;
    let second = certs.issue("second");
    assert_ne!(first, second);
    eventually("the new certificate", || async { presented(&app, &certs).await == second }).await;
    app.insert(&alice, "after-reload", NOW, json!(1)).await;
    assert_eq!(stream.next().await.event, "after-reload");
    // A broken file is not taken: the current certificate stays.
    std::fs::write(&certs.cert, "garbage").unwrap();
    ok_json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(presented(&app, &certs).await, second);
}

/// SIGHUP reloads the files even when nothing else would: their times are
/// put back, so the watcher, which compares them, sees no change.
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    use crate::process::{Binary, command};
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let modified = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let times = [(&certs.cert, modified(&certs.cert)), (&certs.key, modified(&certs.key))];
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s", "--tls-cert", certs.cert.to_str().unwrap()]);
    c.args(["--tls-key", certs.key.to_str().unwrap()]);
    let broker = Binary::start(c).await;
    let port = broker.base.rsplit(':').next().unwrap().parse().unwrap();
    let presented = || presented_by(port, "localhost", certs.ca.der());
    let first = presented().await.unwrap();
    let second = certs.issue("second");
    assert_ne!(first, second);
    for (path, time) in times {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
    }
    broker.signal("-HUP").await;
    eventually("the certificate reloaded on SIGHUP", || async {
        presented().await.unwrap() == second
    })
    .await;
}

#[tokio::test]
async fn unusable_certificates_are_refused_at_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let other = tempfile::tempdir().unwrap();
    let mismatched = Certificates::new(other.path());
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let wrong_key = mismatched.key.to_str().unwrap();
    for (cert, key, name, reason) in [
        (garbage, key, "localhost", "holds no PEM certificate"),
        (missing, key, "localhost", "cannot read the certificate"),
        (cert, garbage, "localhost", "cannot read the private key"),
        (cert, wrong_key, "localhost", "cannot be used together"),
        (cert, key, "broker.example.org", "not valid for broker.example.org"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let args = ["--tls-cert", cert, "--tls-key", key, "--tls-name", name];
        let error = broker::Broker::open(config(data.path(), None, &args)).await.err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(reason), "{cert} {key}: {message}");
    }
    // Expired (UTCTime), then valid far ahead (GeneralizedTime, from 2050).
    certs.issue_until("old", (2021, 1, 1));
    let data = tempfile::tempdir().unwrap();
    let args = ["--tls-cert", cert, "--tls-key", key];
    let error = broker::Broker::open(config(data.path(), None, &args)).await.err();
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("expired at 1609459200"), "{message}");
    certs.issue_until("long-lived", (2060, 1, 1));
    assert!(broker::Broker::open(config(data.path(), None, &args)).await.is_ok());
    // The binary says so and exits with an error.
    let output = crate::process::command(dir.path())
        .args(["--tls-cert", garbage, "--tls-key", key, "--save-path", "data", "--port", "0"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no PEM certificate"));
}

#[tokio::test]
async fn the_plain_http_port_redirects_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let plain_port = plain.to_string();
    let args = [
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--host",
        "127.0.0.1",
        "--http-redirect-port",
        &plain_port,
    ];
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_config(config(data.path(), None, &args)).await;
    let https_port = app.base.rsplit(':').next().unwrap().to_owned();
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    eventually("the redirect listener", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", plain)).await.is_ok()
    })
    .await;
    let url = format!("http://localhost:{plain}/events?event=a&event=b");
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://localhost:{https_port}/events?event=a&event=b").as_str()
    );
}

/// What losing vendor/h2's patch would cost (Cargo drops a `[patch]` that
/// no longer fits with a mere warning): measured as BENCHMARKS.md does, the
/// server's resident memory before and after opening idle event streams
/// over HTTP/2, one per connection. With the patch this build holds about
/// 18 KB per connection, without it about 31 KB (its 28 KiB of
/// per-connection buffers, 2,000 connections, 2026-12-03): the bound sits
/// between the two.
#[tokio::test]
async fn an_idle_http2_stream_costs_what_the_h2_patch_promises() {
    use crate::process::{Binary, command};
    const STREAMS: u64 = 1500;
    const BOUND: u64 = 24 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s", "--tls-cert", certs.cert.to_str().unwrap()]);
    c.args(["--tls-key", certs.key.to_str().unwrap(), "--max-connections", "4000"]);
    let broker = Binary::start(c).await;
    let port: u16 = broker.base.rsplit(':').next().unwrap().parse().unwrap();
    let root = reqwest::Certificate::from_pem(certs.ca.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{port}/events");
    let open = async |n: u64, streams: &mut Vec<_>| {
        for _ in 0..n {
            // A client each: one connection each, as browsers on many machines.
            let client = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(root.clone())
                .resolve("localhost", ([127, 0, 0, 1], port).into())
                .build()
                .unwrap();
            let response = client.get(&url).send().await.unwrap();
            assert_eq!((response.status().as_u16(), response.version()), (200, Version::HTTP_2));
            streams.push((client, response)); // open on the server once its head came
        }
    };
    // What the first connections set up once (TLS state, thread caches) is
    // not what each one costs: measured after a few, as the benchmark does.
    let mut streams = Vec::new();
    open(100, &mut streams).await;
    let before = broker.rss();
    open(STREAMS, &mut streams).await;
    let per_stream = broker.rss().saturating_sub(before) / STREAMS;
    assert!(
        per_stream < BOUND,
        "{per_stream} B per idle HTTP/2 stream (bound {BOUND}): is vendor/h2 still patched?"
    );
}
