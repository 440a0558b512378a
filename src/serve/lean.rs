//! The lean event-stream path: after its request head, a stream's response
//! head and first chunk are written by hand, then the stream straight to
//! the connection (plain or TLS), with no HTTP framework buffers kept per
//! stream. A connection ends when the stream does, when the peer closes,
//! or when the peer has taken nothing for `--write-stall`.

use std::convert::Infallible;
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use axum::response::IntoResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{Layer, ServiceExt};

use crate::http::stream::{self, Subscriber};
use crate::http::{App, ops};

/// Answers an event-stream request: on success writes the response head
/// and the first chunk and hands back the stream to write; on failure
/// writes the error response and closes.
pub(super) async fn events<S: AsyncWrite + Unpin>(
    mut socket: S,
    app: Arc<App>,
    headers: HeaderMap,
    query: Option<String>,
    tls: bool,
) -> Option<(Subscriber, S)> {
    let started = std::time::Instant::now();
    let (metrics, stall) = (app.hub.metrics.clone(), app.write_stall);
    match Box::pin(open_events(app, headers, query, tls)).await {
        Ok((mut subscriber, mut head)) => {
            metrics.request("/events", 200, started.elapsed());
            head.extend_from_slice(&subscriber.take_first().unwrap_or_default());
            // The sync may be large: a peer that takes none of it is dropped
            // like any stalled stream.
            write_all(&mut socket, &head, stall).await.ok()?;
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
) -> Result<(Subscriber, Vec<u8>), (u16, Vec<u8>)> {
    let id = ops::request_id(headers.get(ops::REQUEST_ID));
    let cors = cors_headers(&app.origins, &headers).await;
    let mut cors = format!("{cors}{}: {id}\r\n", ops::REQUEST_ID);
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

/// The CORS response headers of a `GET` with `headers`, each line ending
/// in CRLF: what the router's CORS layer ([`crate::http::cors`]) adds,
/// got by running it.
async fn cors_headers(origins: &[HeaderValue], headers: &HeaderMap) -> String {
    let mut request = Request::new(Body::empty());
    *request.headers_mut() = headers.clone();
    let answer = tower::service_fn(|_| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let Ok(response) = crate::http::cors(origins).layer(answer).oneshot(request).await;
    let mut lines = String::new();
    for (name, value) in response.headers() {
        lines.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
    }
    lines
}

/// Writes a stream straight to its socket, then closes it: the lean path of
/// [`crate::Broker::serve`], which keeps no HTTP buffers per stream. Ends
/// when the stream does, when the peer closes, or when the peer has not
/// taken any data for `stall` (`--write-stall`).
///
/// Not an `async fn`, which would keep its arguments twice (see
/// [`write_to_tls`]).
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub(super) fn write_to(
    mut subscriber: Subscriber,
    mut socket: TcpStream,
    stall: Duration,
) -> impl Future<Output = ()> {
    async move {
        loop {
            // Readiness is polled directly: the waker lives in the socket's
            // registration, not in this (per-stream) future.
            let readable = std::future::poll_fn(|cx| socket.poll_read_ready(cx));
            tokio::select! {
                chunk = subscriber.next_chunk() => match chunk {
                    Some(chunk) => if write(&mut socket, &chunk, stall).await.is_err() { break },
                    None => break,
                },
                ready = readable => if ready.is_err() || peer_closed(&socket) { break },
            }
        }
        let _ = socket.shutdown().await;
    }
}

/// Writes a stream to a TLS connection (after its HTTP/1.1 request head),
/// then closes it: the lean path over HTTPS, with no HTTP buffers either.
/// Ends like [`write_to`].
///
/// Not an `async fn`: that would keep its arguments (the TLS connection is
/// 1.2 KB) twice, as arguments and as the locals they are moved into.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub(super) fn write_to_tls<S>(
    mut subscriber: Subscriber,
    mut tls: S,
    stall: Duration,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut scratch = [0u8; 64];
        loop {
            tokio::select! {
                chunk = subscriber.next_chunk() => match chunk {
                    Some(chunk) => if write_all(&mut tls, &chunk, stall).await.is_err() { break },
                    None => break,
                },
                // Whatever the peer sends is discarded; the end of it ends the stream.
                read = tls.read(&mut scratch) => if !matches!(read, Ok(n) if n > 0) { break },
            }
        }
        // The place is freed now; the TLS close (a record to send) waits for
        // the peer, so a stalled one gets no longer than `stall` for it.
        drop(subscriber);
        let _ = Box::pin(tokio::time::timeout(stall, tls.shutdown())).await;
    }
}

/// Writes and flushes all of `bytes` to any connection, failing if the
/// peer takes none for `stall`.
async fn write_all<S: AsyncWrite + Unpin>(
    socket: &mut S,
    bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    let write = async {
        socket.write_all(bytes).await?;
        socket.flush().await
    };
    // Biased: the timer is only polled (registered) if the write waits.
    tokio::select! {
        biased;
        written = write => written,
        () = tokio::time::sleep(stall) => Err(ErrorKind::TimedOut.into()),
    }
}

/// Writes all of `bytes`, failing if the peer takes none for `stall`.
async fn write(socket: &mut TcpStream, mut bytes: &[u8], stall: Duration) -> std::io::Result<()> {
    // Almost always the socket takes everything at once; the timer only
    // exists (boxed, off the per-stream state) when it does not.
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let stalled = Box::pin(tokio::time::timeout(stall, socket.write_all(bytes)));
                return stalled.await.map_err(|_| ErrorKind::TimedOut.into()).and_then(|r| r);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the peer has closed its side; discards anything it sent.
fn peer_closed(socket: &TcpStream) -> bool {
    let mut scratch = [0u8; 64];
    loop {
        match socket.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
