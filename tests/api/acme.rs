//! Automatic certificates against a real ACME server: Debian's `pebble`,
//! with `pebble-challtestsrv` as its DNS server answering 127.0.0.1 for
//! every name, so that it validates the Broker under test.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use crate::support::{NOW, Sse, TestApp, TestDb, config, eventually_within, on_postgres};
use crate::tls::Certificates;

/// The name Broker gets its certificate for.
const DOMAIN: &str = "broker.test";
/// How long pebble may take to issue (it validates over the network).
const ISSUING: Duration = Duration::from_secs(60);

/// A pebble CA and its DNS server, stopped when dropped.
struct Pebble {
    _children: [tokio::process::Child; 2],
    dir: tempfile::TempDir,
    api: u16,
    management: u16,
    /// Trusts the test CA that signed pebble's own HTTPS certificate.
    client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pebble {
    /// Pebble validating TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port`.
    async fn start(tls_port: u16, http_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certificates::new(dir.path());
        std::fs::write(dir.path().join("ca.pem"), certs.ca.pem()).unwrap();
        let (api, management, dns_management) = (free_port(), free_port(), free_port());
        let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": certs.cert,
            "privateKey": certs.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
        let spawn = |command: &mut tokio::process::Command, name: &str| {
            command.stdout(log(name)).stderr(log(name)).kill_on_drop(true).spawn().unwrap_or_else(
                |e| panic!("cannot run {name} (Debian's pebble package; .ci/run installs it): {e}"),
            )
        };
        let dns_server = spawn(
            tokio::process::Command::new("pebble-challtestsrv")
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-dns01", &format!("127.0.0.1:{dns}"), "-defaultIPv4", "127.0.0.1"])
                .args(["-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""]),
            "pebble-challtestsrv",
        );
        let pebble = spawn(
            tokio::process::Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // No random validation delay; always validate afresh.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0"),
            "pebble",
        );
        let root = reqwest::Certificate::from_pem(certs.ca.pem().as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .build()
            .unwrap();
        let pebble = Self { _children: [dns_server, pebble], dir, api, management, client };
        eventually_within(ISSUING, "pebble's directory", || async {
            let directory = pebble.client.get(pebble.directory()).send().await;
            directory.is_ok_and(|r| r.status().is_success())
        })
        .await;
        pebble
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root pebble issues under (it makes a new one at every start).
    async fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let pem = self.client.get(url).send().await.unwrap().text().await.unwrap();
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// Broker's options to obtain its certificate from this pebble.
    fn args(&self) -> Vec<String> {
        let ca = self.ca().to_str().unwrap().to_owned();
        ["--host", "127.0.0.1", "--acme-domain", DOMAIN, "--acme-email", "ops@broker.test"]
            .into_iter()
            .map(String::from)
            .chain(["--acme-directory".into(), self.directory(), "--acme-ca".into(), ca])
            .collect()
    }
}

/// The leaf certificate `port` presents for [`DOMAIN`], if the handshake
/// succeeds and the chain verifies against `root`.
async fn presented(
    port: u16,
    root: &rustls::pki_types::CertificateDer<'static>,
) -> Result<Vec<u8>, String> {
    crate::tls::presented_by(port, DOMAIN, root).await
}

/// What `port` presents once `wanted` says so, failing after [`ISSUING`].
async fn presented_when(
    port: u16,
    root: &rustls::pki_types::CertificateDer<'static>,
    what: &str,
    wanted: impl Fn(&Result<Vec<u8>, String>) -> bool,
) -> Vec<u8> {
    let start = tokio::time::Instant::now();
    loop {
        let served = presented(port, root).await;
        if wanted(&served) {
            return served.unwrap();
        }
        assert!(start.elapsed() < ISSUING, "timed out waiting for {what}: {served:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A broker on `listener` with `args`, its data in `data`, and an HTTPS
/// client for [`DOMAIN`] trusting `root`.
async fn broker(
    listener: TcpListener,
    data: &std::path::Path,
    db: Option<&TestDb>,
    args: &[String],
    root: &rustls::pki_types::CertificateDer<'static>,
) -> TestApp {
    let port = listener.local_addr().unwrap().port();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app = TestApp::start_on(listener, config(data, db, &args)).await;
    app.base = format!("https://{DOMAIN}:{port}");
    app.http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(root).unwrap())
        .resolve(DOMAIN, ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    app
}

async fn test_db() -> Option<TestDb> {
    if on_postgres() { Some(TestDb::create().await) } else { None }
}

#[tokio::test]
async fn a_certificate_is_obtained_by_tls_alpn_01_kept_and_renewed_while_streams_go_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pebble = Pebble::start(port, free_port()).await;
    let root = pebble.root().await;
    let (data, db) = (tempfile::tempdir().unwrap(), test_db().await);
    let mut app = broker(listener, data.path(), db.as_ref(), &pebble.args(), &root).await;
    let first = presented_when(port, &root, "a certificate from pebble", Result::is_ok).await;
    // Served over HTTP/2 like any certificate; streams work.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    let alice = app.user("alice").await;
    let mut stream = app.subscribe().await;
    app.insert(&alice, "first", NOW, json!(1)).await;
    assert_eq!(stream.next().await.event, "first");
    if db.is_none() {
        // Kept in the data directory, readable by Broker only.
        let kept = data.path().join("acme").join("certificate_broker.test");
        let mode = std::os::unix::fs::PermissionsExt::mode(&kept.metadata().unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{kept:?} is readable by others");
    }
    // Two thirds into its lifetime, it is renewed; every handshake on the
    // way is served (the old certificate stays until the new one is in).
    let (from, until) = broker::tls::x509::validity(&first).unwrap();
    app.clock.set((until - (until - from) / 3 + 1) * 1000);
    let second = presented_when(port, &root, "a renewed certificate", |served| match served {
        Ok(cert) => *cert != first,
        Err(e) => panic!("not served while renewing: {e}"),
    })
    .await;
    let bob = app.user("bob").await; // alice's token expired as the clock moved
    app.insert(&bob, "after-renewal", NOW, json!(2)).await;
    assert_eq!(stream.next().await.event, "after-renewal");
    // A restart serves the kept certificate at once, without ordering (the
    // clock is back before the renewal time: nothing is due).
    drop(stream);
    app.shut_down().await;
    let args = pebble.args();
    drop(pebble); // no CA any more: only the kept certificate can serve
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let app = broker(listener, data.path(), db.as_ref(), &args, &root).await;
    eventually_within(Duration::from_secs(10), "the kept certificate", || async {
        presented(port, &root).await.is_ok_and(|cert| cert == second)
    })
    .await;
    let mut replay = Sse::new(app.open_stream("/events", &[("last-event-id", "0")]).await);
    assert_eq!(replay.next().await.event, "first");
}

#[tokio::test]
async fn http_01_is_answered_on_the_plain_port_which_redirects_the_rest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = free_port();
    let pebble = Pebble::start(free_port(), plain).await;
    let root = pebble.root().await;
    let mut args = pebble.args();
    args.extend(["--acme-challenge", "http-01", "--http-redirect-port"].map(String::from));
    args.push(plain.to_string());
    let (data, db) = (tempfile::tempdir().unwrap(), test_db().await);
    let app = broker(listener, data.path(), db.as_ref(), &args, &root).await;
    eventually_within(ISSUING, "a certificate from pebble", || async {
        presented(port, &root).await.is_ok()
    })
    .await;
    crate::support::ok_json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(format!("http://{DOMAIN}:{plain}/healthz"));
    let response = response.header("host", format!("{DOMAIN}:{plain}"));
    let response = client
        .execute(
            response
                .build()
                .map(|mut r| {
                    *r.url_mut() = format!("http://127.0.0.1:{plain}/healthz").parse().unwrap();
                    r
                })
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], format!("https://{DOMAIN}:{port}/healthz").as_str());
    // No challenge pending: nothing to answer.
    let token = client.get(format!("http://127.0.0.1:{plain}/.well-known/acme-challenge/x"));
    assert_eq!(token.send().await.unwrap().status(), 404);
}

/// Nodes on one database order one certificate: the node holding the lease
/// orders, and whichever node the CA reaches answers the challenge from the
/// database.
#[tokio::test]
async fn nodes_sharing_a_database_share_one_certificate_and_its_challenges() {
    if !on_postgres() {
        return; // SQLite has one node
    }
    let reached = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = reached.local_addr().unwrap().port();
    let pebble = Pebble::start(port, free_port()).await;
    let root = pebble.root().await;
    let db = TestDb::create().await;
    // The node the CA cannot reach starts first and takes the lease …
    let hidden = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hidden_port = hidden.local_addr().unwrap().port();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = broker(hidden, one.path(), Some(&db), &pebble.args(), &root).await;
    let account = format!("account {}", pebble.directory());
    let store =
        broker::store::open(config(one.path(), Some(&db), &[]).store_location(), Arc::default())
            .unwrap();
    eventually_within(ISSUING, "the first node's ACME account", || async {
        store.acme_get(&account).await.unwrap().is_some()
    })
    .await;
    // … and the node the CA reaches answers its challenge.
    let second = broker(reached, two.path(), Some(&db), &pebble.args(), &root).await;
    let cert = presented_when(port, &root, "the reachable node's certificate", Result::is_ok).await;
    eventually_within(ISSUING, "the same certificate on the other node", || async {
        presented(hidden_port, &root).await.is_ok_and(|c| c == cert)
    })
    .await;
    drop((first, second));
}
