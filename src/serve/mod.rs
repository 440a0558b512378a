//! The stream transport: accepting connections, TLS dispatch, and the
//! paths a connection takes.
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
//!
//! Connections are accepted on the streams' runtime, where event streams
//! stay; every HTTP/1.1 connection that is not an event stream (over TLS
//! too, after its handshake) moves to the API runtime. An HTTP/2
//! connection stays: its event streams and API calls share it.
//!
//! The parts: `head` reads the first request head, `lean` writes an event
//! stream straight to its connection, [`stalls`] watches the streams hyper
//! serves, `rewind` hands hyper the bytes already read, `socket` moves a
//! connection (under its TLS layer too) to the other runtime. The subscriber
//! itself (sync, replay, live, filters) is `http::stream`'s, and
//! transport-neutral: it hands out the next chunk to write. The stall
//! sweeper imports nothing of the HTTP layer, which uses it.

mod head;
mod lean;
mod rewind;
mod socket;
pub mod stalls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, header};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::http::App;
use crate::tls::Tls;
use head::{Head, read_head};
use lean::events;
use rewind::Rewind;
use socket::{Movable, Socket};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections may take to finish once shutdown starts.
pub const GRACE: Duration = Duration::from_secs(5);
/// Most bytes queued for one HTTP/2 stream beyond its client's window.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// What every connection is served with.
#[derive(Clone)]
struct Serving {
    app: Arc<App>,
    router: Router,
    shutdown: CancellationToken,
    /// Every connection's tasks, waited for at shutdown.
    tasks: TaskTracker,
    /// The runtime of everything but event streams.
    api: Handle,
}

impl Serving {
    /// Serves an HTTP/1.1 connection that is not an event stream with
    /// hyper, on the API runtime.
    fn http<S>(&self, mut socket: S, peer: SocketAddr, prefix: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static + Movable,
    {
        if let Err(e) = socket.move_to(&self.api) {
            return tracing::debug!(%peer, error = %e, "could not move a connection");
        }
        let (router, shutdown) = (self.router.clone(), self.shutdown.clone());
        self.api.spawn(self.tasks.track_future(http(socket, peer, prefix, router, shutdown)));
    }

    /// Answers an event stream's first request, then writes the stream in
    /// a task of its own, sized for the stream alone.
    async fn events<S>(self, socket: S, headers: HeaderMap, query: Option<String>, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stall = self.app.write_stall;
        if let Some((subscriber, socket)) = events(socket, self.app, headers, query, tls).await {
            self.tasks.spawn(lean::write(subscriber, socket, stall));
        }
    }
}

/// Accepts connections until `shutdown`, then waits (at most [`GRACE`]) for
/// open ones to finish. Runs on the streams' runtime, where event streams
/// stay; every other connection moves to the `api` runtime.
pub async fn run(
    listener: TcpListener,
    api: Handle,
    app: Arc<App>,
    router: Router,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
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
    let serving = Serving { app, router, shutdown, tasks: TaskTracker::new(), api };
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = serving.shutdown.cancelled() => break,
        };
        let (serving, tls) = (serving.clone(), tls.clone());
        serving.tasks.clone().spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Some(tls) = tls {
                return https(socket, peer, &tls, serving).await;
            }
            match read_head(Socket::new(socket)).await {
                Head::Events(socket, headers, query) => {
                    serving.events(socket, headers, query, false).await;
                }
                Head::Other(socket, prefix) => serving.http(socket, peer, prefix),
                Head::Gone => {}
            }
        });
    }
    drop(listener);
    let tasks = serving.tasks;
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

/// Serves a connection to the TLS port: HTTP/2 or HTTP/1.1 as ALPN chose,
/// with the app's `Strict-Transport-Security` on every answer. An HTTP/1.1
/// connection that is not an event stream moves to the `api` runtime, as a
/// plain one does; HTTP/2 stays here, since its event streams and API
/// calls share the connection (and its task).
///
/// What lives on (a stream, an HTTP/2 or HTTP/1.1 connection) gets a task
/// of its own, sized for it alone: this handshake's future is several
/// kilobytes that an idle connection should not keep.
async fn https(socket: TcpStream, peer: SocketAddr, tls: &Tls, serving: Serving) {
    // A TLS client speaks first, and first sends a handshake record (0x16).
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEAD_TIMEOUT, socket.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => return plain_http_refused(socket).await,
        _ => return,
    }
    let accepting = tls.accept(Socket::new(socket), serving.app.store.as_ref());
    let stream = match tokio::time::timeout(HEAD_TIMEOUT, accepting).await {
        Ok(Ok(Some(stream))) => stream,
        Ok(Ok(None)) => return, // an ACME challenge, answered
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return,
    };
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        // HTTP/1.1: as over plain HTTP.
        match read_head(stream).await {
            Head::Events(stream, headers, query) => {
                serving.events(stream, headers, query, true).await;
            }
            Head::Other(stream, prefix) => serving.http(stream, peer, prefix),
            Head::Gone => {}
        }
        return;
    }
    let service = TowerToHyperService::new(serving.router.map_request(with_peer(peer)));
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // What a stream whose client reads nothing can hold (hyper's default: 400 KiB).
        .max_send_buf_size(H2_SEND_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    let connection = Box::pin(connection);
    let shutdown = serving.shutdown;
    serving.tasks.spawn(async move {
        until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await
    });
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
