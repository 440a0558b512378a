//! The accept loop.
//!
//! A connection whose first request is `GET /events` is served by the lean
//! SSE writer: its request head is parsed from a small temporary buffer and
//! then the stream is written straight to the socket, so an open stream
//! keeps no HTTP framework buffers (hyper keeps ~16 KB per connection).
//! Every other connection goes to hyper with the axum router, which also
//! serves `/events` when it arrives later on a keep-alive connection.
//!
//! With TLS the same holds for HTTP/1.1 (the stream is written straight to
//! the TLS connection); a connection that chose HTTP/2 by ALPN goes to
//! hyper, event streams included; a client that speaks plain HTTP to the
//! TLS port is told so.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::http::{App, ops, stream};
use crate::tls::Tls;

/// Longest request head accepted on the SSE path (hyper answers longer ones).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections may take to finish once shutdown starts.
pub const GRACE: Duration = Duration::from_secs(5);
/// Most bytes queued for one HTTP/2 stream beyond its client's window.
const H2_SEND_BUFFER: usize = 64 * 1024;
/// What a request line must start with to take the SSE path.
const EVENTS: &[u8] = b"GET /events";

/// Accepts connections until `shutdown`, then waits (at most [`GRACE`]) for
/// open ones to finish. Runs on the streams' runtime, where event streams
/// stay; every other connection moves to the `api` runtime.
pub async fn run(
    listener: TcpListener,
    api: tokio::runtime::Handle,
    app: Arc<App>,
    router: Router,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    // Over HTTPS every answer carries Strict-Transport-Security.
    let router = match app.hsts.clone().filter(|_| tls.is_some()) {
        Some(hsts) => {
            router.layer(axum::middleware::map_response(move |mut response: Response| {
                let hsts = hsts.clone();
                async move {
                    response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
                    response
                }
            }))
        }
        None => router,
    };
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (app, router, shutdown, spawner, api) =
            (app.clone(), router.clone(), shutdown.clone(), tasks.clone(), api.clone());
        let tls = tls.clone();
        tasks.spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Some(tls) = tls {
                return https(socket, peer, &tls, app, router, shutdown, spawner).await;
            }
            match read_head(socket).await {
                Head::Events(socket, headers, query) => {
                    let stall = app.write_stall;
                    if let Some((subscriber, socket)) =
                        events(socket, app, headers, query, false).await
                    {
                        // A task of its own, sized for the stream alone.
                        spawner.spawn(stream::write_to(subscriber, socket, stall));
                    }
                }
                Head::Other(socket, prefix) => {
                    // Ordinary requests run on the API runtime.
                    let Ok(socket) = socket.into_std() else { return };
                    api.spawn(spawner.track_future(async move {
                        if let Ok(socket) = TcpStream::from_std(socket) {
                            http(socket, peer, prefix, router, shutdown).await;
                        }
                    }));
                }
                Head::Gone => {}
            }
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("connections still open after {GRACE:?}; closing them");
    }
}

async fn accept_failed(error: &std::io::Error) {
    // Out of file descriptors: wait for some to close rather than spin.
    tracing::error!(%error, "accept failed");
    if error.raw_os_error().is_some_and(|code| code == 24 || code == 23) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum Head<S> {
    /// `GET /events…` with its headers and query string.
    Events(S, HeaderMap, Option<String>),
    /// Anything else, with the bytes already read.
    Other(S, Vec<u8>),
    /// The client left or took too long.
    Gone,
}

async fn read_head<S: AsyncRead + Unpin>(mut socket: S) -> Head<S> {
    let mut buf = Vec::with_capacity(512);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let seen = buf.len().min(EVENTS.len());
            let boundary = buf.get(EVENTS.len()).is_none_or(|b| *b == b' ' || *b == b'?');
            if buf[..seen] != EVENTS[..seen] || !boundary || buf.len() > MAX_HEAD {
                return Some(None);
            }
            match parse_events_head(&buf) {
                Parsed::Complete(headers, query) => return Some(Some((headers, query))),
                Parsed::Partial => {}
                Parsed::Invalid => return Some(None),
            }
        }
    });
    match read.await {
        Ok(Some(Some((headers, query)))) => Head::Events(socket, headers, query),
        Ok(Some(None)) => Head::Other(socket, buf),
        Ok(None) | Err(_) => Head::Gone,
    }
}

enum Parsed {
    Complete(HeaderMap, Option<String>),
    Partial,
    Invalid,
}

fn parse_events_head(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    }
    let Some(target) = request.path else { return Parsed::Invalid };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    if path != "/events" {
        return Parsed::Invalid;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Parsed::Invalid;
        };
        headers.append(name, value);
    }
    Parsed::Complete(headers, query)
}

/// Answers an event-stream request: on success writes the response head
/// and the first chunk and hands back the stream to write; on failure
/// writes the error response and closes.
async fn events<S: AsyncWrite + Unpin>(
    mut socket: S,
    app: Arc<App>,
    headers: HeaderMap,
    query: Option<String>,
    tls: bool,
) -> Option<(stream::Subscriber, S)> {
    let started = std::time::Instant::now();
    let (metrics, stall) = (app.hub.metrics.clone(), app.write_stall);
    match Box::pin(open_events(app, headers, query, tls)).await {
        Ok((mut subscriber, mut head)) => {
            metrics.request("/events", 200, started.elapsed());
            head.extend_from_slice(&subscriber.take_first().unwrap_or_default());
            // The sync may be large: a peer that takes none of it is dropped
            // like any stalled stream.
            stream::write_all(&mut socket, &head, stall).await.ok()?;
            Some((subscriber, socket))
        }
        Err((status, response)) => {
            metrics.request("/events", status, started.elapsed());
            let _ = socket.write_all(&response).await;
            let _ = socket.shutdown().await;
            None
        }
    }
}

/// Opens the stream: its subscriber and response head (with HSTS over
/// `tls`), or the whole error response.
async fn open_events(
    app: Arc<App>,
    headers: HeaderMap,
    query: Option<String>,
    tls: bool,
) -> Result<(stream::Subscriber, Vec<u8>), (u16, Vec<u8>)> {
    let id = ops::request_id(headers.get(ops::REQUEST_ID));
    let mut cors = format!("{}{}: {id}\r\n", cors_headers(&app.origins, &headers), ops::REQUEST_ID);
    if let Some(hsts) = app.hsts.as_ref().filter(|_| tls) {
        cors.push_str(&format!("strict-transport-security: {}\r\n", hsts.to_str().unwrap_or("")));
    }
    match stream::open(&app, &headers, query.as_deref()).await {
        Ok(subscriber) => {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for (name, value) in stream::STREAM_HEADERS {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("connection: close\r\n{cors}\r\n"));
            Ok((subscriber, head.into_bytes()))
        }
        Err(error) => {
            let response = error.into_response();
            let status = response.status().as_u16();
            tracing::info!(%id, status, "refused an event stream");
            let mut head = format!("HTTP/1.1 {}\r\n", response.status());
            for (name, value) in response.headers() {
                head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
            }
            let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await;
            let body = body.unwrap_or_default();
            head.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n{cors}\r\n",
                body.len()
            ));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            Err((status, bytes))
        }
    }
}

/// The CORS response headers for a simple request from `headers`' origin
/// (none unless it is one of `origins`), each line ending in CRLF.
fn cors_headers(origins: &[HeaderValue], headers: &HeaderMap) -> String {
    match headers.get(header::ORIGIN) {
        Some(origin) if origins.contains(origin) => format!(
            "access-control-allow-origin: {}\r\naccess-control-allow-credentials: true\r\nvary: origin\r\n",
            origin.to_str().unwrap_or("")
        ),
        _ => "vary: origin\r\n".to_owned(),
    }
}

/// Serves an ordinary HTTP/1.1 connection with hyper.
async fn http<S>(
    socket: S,
    peer: SocketAddr,
    prefix: Vec<u8>,
    router: Router,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Rewind { prefix, at: 0, inner: socket });
    let service = TowerToHyperService::new(router.map_request(with_peer(peer)));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(io, service);
    until_shutdown(Box::pin(connection), &shutdown, |c| c.graceful_shutdown()).await;
}

/// Runs a hyper connection; on shutdown, lets it finish gracefully.
///
/// The connection comes boxed: a future moved into an async fn or block is
/// stored by each of them, and an HTTP/2 connection over TLS is 2.7 KB.
async fn until_shutdown<C, E>(
    mut connection: std::pin::Pin<Box<C>>,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result { tracing::debug!(error = %e, "connection error") }
            return;
        }
        () = shutdown.cancelled() => graceful(connection.as_mut()),
    }
    let _ = connection.await;
}

/// Tells the handlers who the peer is (for the per-address login limit).
fn with_peer<B>(peer: SocketAddr) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }
}

/// Serves a connection to the TLS port with hyper: HTTP/2 or HTTP/1.1 as
/// ALPN chose, with the app's `Strict-Transport-Security` on every answer.
///
/// What lives on (a stream, an HTTP/2 or HTTP/1.1 connection) gets a task
/// of its own, sized for it alone: this handshake's future is several
/// kilobytes that an idle connection should not keep.
async fn https(
    socket: TcpStream,
    peer: SocketAddr,
    tls: &Tls,
    app: Arc<App>,
    router: Router,
    shutdown: CancellationToken,
    spawner: TaskTracker,
) {
    // A TLS client speaks first, and first sends a handshake record (0x16).
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEAD_TIMEOUT, socket.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => return plain_http_refused(socket).await,
        _ => return,
    }
    let accepted = tokio::time::timeout(HEAD_TIMEOUT, tls.accept(socket, app.store.as_ref())).await;
    let stream = match accepted {
        Ok(Ok(Some(stream))) => stream,
        Ok(Ok(None)) => return, // an ACME challenge, answered
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return,
    };
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        // HTTP/1.1: the lean stream path, as over plain HTTP.
        match read_head(stream).await {
            Head::Events(stream, headers, query) => {
                let stall = app.write_stall;
                let opened = events(stream, app, headers, query, true).await;
                if let Some((subscriber, stream)) = opened {
                    spawner.spawn(stream::write_to_tls(subscriber, stream, stall));
                }
            }
            Head::Other(stream, prefix) => {
                spawner.spawn(http(stream, peer, prefix, router, shutdown));
            }
            Head::Gone => {}
        }
        return;
    }
    let service = TowerToHyperService::new(router.map_request(with_peer(peer)));
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // What a stream whose client reads nothing can hold (hyper's default: 400 KiB).
        .max_send_buf_size(H2_SEND_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    let connection = Box::pin(connection);
    spawner.spawn(
        async move { until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await },
    );
}

/// Answers a plain-HTTP request on the TLS port, rather than leaving the
/// client waiting for a handshake.
async fn plain_http_refused(mut socket: TcpStream) {
    const BODY: &str = r#"{"error":"this port speaks HTTPS: use an https:// URL"}"#;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A socket that first replays the bytes read while choosing a path.
struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_head` makes of `parts`, written one after the other by a
    /// client that then waits (or leaves, with `leave`).
    async fn head_of(parts: &[&[u8]], leave: bool) -> Head<tokio::io::DuplexStream> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                tokio::task::yield_now().await;
            }
            if !leave {
                std::future::pending::<()>().await;
            }
        });
        let head = read_head(server).await;
        writer.abort();
        head
    }

    #[tokio::test]
    async fn an_events_head_split_anywhere_is_read_whole() {
        let text =
            b"GET /events?collection_id=x&event=y HTTP/1.1\r\nHost: b\r\nLast-Event-ID: 5\r\n\r\n";
        for split in 0..=text.len() {
            let Head::Events(_, headers, query) =
                head_of(&[&text[..split], &text[split..]], false).await
            else {
                panic!("split at {split}: not read as an event stream");
            };
            assert_eq!(query.as_deref(), Some("collection_id=x&event=y"), "split at {split}");
            assert_eq!(headers["last-event-id"], "5", "split at {split}");
        }
    }

    #[tokio::test]
    async fn other_requests_go_on_with_every_byte_read() {
        for text in [
            &b"GET /users/me HTTP/1.1\r\n\r\n"[..],
            b"POST /events HTTP/1.1\r\n\r\n",
            b"GET /eventsource.js HTTP/1.1\r\n\r\n",
            b"GET /events/user HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            let Head::Other(_, read) = head_of(&[text], false).await else {
                panic!("{:?} taken for an event stream", String::from_utf8_lossy(text));
            };
            assert!(text.starts_with(&read) && !read.is_empty(), "the bytes read are handed on");
        }
    }

    #[tokio::test]
    async fn an_oversized_head_is_left_to_hyper_and_a_departed_client_is_gone() {
        let long = [b'a'; MAX_HEAD];
        let Head::Other(_, read) =
            head_of(&[b"GET /events HTTP/1.1\r\nX-Long: ", &long, b"\r\n\r\n"], false).await
        else {
            panic!("an oversized head is not an event stream");
        };
        assert!(read.len() > MAX_HEAD);
        assert!(matches!(head_of(&[b"GET /events HTTP/1.1\r\nHo"], true).await, Head::Gone));
    }

    #[tokio::test]
    async fn pipelined_bytes_after_an_events_head_do_not_spoil_it() {
        let head = head_of(&[b"GET /events HTTP/1.1\r\n\r\nGET /users/me HTTP/1.1\r\n\r\n"], false);
        let Head::Events(_, _, query) = head.await else {
            panic!("a complete events head followed by more is still an event stream");
        };
        assert_eq!(query, None);
    }
}
