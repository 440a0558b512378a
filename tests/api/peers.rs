//! Work a peer with no token can make Broker do, and its bounds (the table
//! in docs/security.md): a request head sent slowly, HTTP/2 rapid resets
//! and a PING flood. Sign-ups, logins and stream opens are tested with
//! their own features (sessions.rs, limits.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, eventually_within};
use crate::tls::{Certificates, connect_alpn, https_with};

/// What a client sends first on an HTTP/2 connection: the preface and
/// empty SETTINGS.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Reads HTTP/2 frames until the connection ends: their (type, payload).
async fn frames<S: AsyncRead + Unpin>(mut socket: S) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut head = [0u8; 9];
    while socket.read_exact(&mut head).await.is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        if socket.read_exact(&mut payload).await.is_err() {
            break;
        }
        frames.push((head[3], payload));
    }
    frames
}

/// An HTTP/2 connection to `app` over TLS, its preface sent.
async fn h2(
    port: u16,
    certs: &Certificates,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = connect_alpn(socket, "localhost", certs.ca.der(), Some(b"h2")).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(PREFACE).await.unwrap();
    tls
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}

/// The "rapid reset" pattern (CVE-2023-44487): requests opened and reset
/// at once, each costing the server a stream set up and torn down, without
/// ever counting against the concurrent-stream limit. After 20 such resets
/// pending, the connection is closed with GOAWAY ENHANCE_YOUR_CALM, and the
/// server goes on serving others.
#[tokio::test]
async fn http2_rapid_resets_end_the_connection_with_enhance_your_calm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let app = https_with(&certs, &[]).await;
    let mut tls = h2(port_of(&app.base), &certs).await;
    // GET https://localhost/healthz in HPACK, with no dynamic table entry.
    let mut request = vec![0x82, 0x87, 0x04, 8];
    request.extend(b"/healthz");
    request.extend([0x01, 9]);
    request.extend(b"localhost");
    let mut flood = Vec::new();
    for stream in (1..2000).step_by(2) {
        flood.extend(frame(1, 0x5, stream, &request)); // HEADERS, END_STREAM | END_HEADERS
        flood.extend(frame(3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = tls.write_all(&flood).await; // the server may close before the end
    let frames = tokio::time::timeout(Duration::from_secs(20), frames(tls)).await.unwrap();
    let goaway = frames.iter().find(|(kind, _)| *kind == 7).expect("a GOAWAY frame");
    assert_eq!(u32::from_be_bytes(goaway.1[4..8].try_into().unwrap()), 0xb, "ENHANCE_YOUR_CALM");
    let answered = frames.iter().filter(|(kind, _)| *kind == 1).count();
    assert!(answered < 100, "{answered} of 1,000 reset requests answered");
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

/// A client that sends PINGs and never reads the PONGs: the server answers
/// one at a time and reads the next only once the previous answer is
/// written, so when its socket is full it stops reading, and its memory
/// stays where it was; other clients are served meanwhile.
#[tokio::test]
async fn an_http2_ping_flood_is_held_back_by_the_unread_answers() {
    use crate::process::{Binary, command};
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let mut c = command(dir.path());
    c.args(["--port", "0", "--secret", "s", "--tls-cert", certs.cert.to_str().unwrap()]);
    c.args(["--tls-key", certs.key.to_str().unwrap()]);
    let broker = Binary::start(c).await;
    let mut tls = h2(port_of(&broker.base), &certs).await;
    let ping = frame(6, 0, 0, b"flooding");
    let chunk: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 4096).collect();
    let before = broker.rss();
    let written = Arc::new(AtomicU64::new(0));
    let writing = written.clone();
    // 256 MiB of PINGs at most: far more than the sockets hold.
    let writer = tokio::spawn(async move {
        for _ in 0..(256 << 20) / chunk.len() {
            if tls.write_all(&chunk).await.is_err() {
                return;
            }
            writing.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    // Until the writer is held back: nothing written for a second.
    let mut last = (0, tokio::time::Instant::now());
    eventually_within(Duration::from_secs(120), "the PING flood to be held back", || {
        let now = written.load(Ordering::Relaxed);
        let held = now == last.0 && last.1.elapsed() > Duration::from_secs(1);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        }
        async move { held }
    })
    .await;
    let sent = written.load(Ordering::Relaxed);
    assert!(sent < 256 << 20, "the server read {sent} bytes of PINGs without answering them");
    let grown = broker.rss().saturating_sub(before);
    assert!(grown < 16 << 20, "the server grew by {grown} bytes under {sent} bytes of PINGs");
    let root = reqwest::Certificate::from_pem(certs.ca.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("localhost", ([127, 0, 0, 1], port_of(&broker.base)).into())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", port_of(&broker.base));
    assert_eq!(client.get(url).send().await.unwrap().status(), 200);
    writer.abort();
}

/// A connection that sends part of a request head, or nothing, is closed
/// after 30 seconds: on the plain port, on the TLS port before the
/// handshake and after it.
#[tokio::test]
async fn a_request_head_sent_too_slowly_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let tls_app = https_with(&certs, &[]).await;
    let plain = TestApp::spawn().await;
    let cut_off = async |mut socket: tokio::net::TcpStream, sent: &[u8]| {
        socket.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(45), socket.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "still open after 45 s having sent {sent:?}");
    };
    let connect = async |port| tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls_port = port_of(&tls_app.base);
    let after_handshake = async {
        let socket = connect(tls_port).await;
        let mut tls = connect_alpn(socket, "localhost", certs.ca.der(), None).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(45), tls.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "a TLS connection with half a head still open after 45 s");
    };
    tokio::join!(
        async {
            cut_off(connect(port_of(&plain.base)).await, b"GET /healthz HTTP/1.1\r\nho").await
        },
        async { cut_off(connect(port_of(&plain.base)).await, b"").await },
        async { cut_off(connect(tls_port).await, b"").await },
        after_handshake,
    );
}
