//! The lean event-stream path: after its request head, a stream's response
//! head and first chunk are written by hand, then the stream straight to
//! the connection (plain or TLS), with no HTTP framework buffers kept per
//! stream. A connection ends when the stream does, when the peer closes,
//! or when the peer has taken nothing for `--write-stall`.

use std::convert::Infallible;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use axum::response::IntoResponse;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Writes a stream straight to its connection (plain TCP or TLS, after its
/// HTTP/1.1 request head), then closes it: the lean path of
/// [`crate::Broker::serve`], which keeps no HTTP buffers per stream. Ends
/// when the stream does, when the peer closes, or when the peer has not
/// taken any data for `stall` (`--write-stall`).
///
/// Not an `async fn`: that would keep its arguments (a TLS connection is
/// 1.2 KB) twice, as arguments and as the locals they are moved into.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub(super) fn write<S>(
    mut subscriber: Subscriber,
    mut socket: S,
    stall: Duration,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        loop {
            tokio::select! {
                chunk = subscriber.next_chunk() => match chunk {
                    Some(chunk) => if write_all(&mut socket, &chunk, stall).await.is_err() { break },
                    None => break,
                },
                () = std::future::poll_fn(|cx| poll_closed(&mut socket, cx)) => break,
            }
        }
        // The place is freed now; a TLS close (a record to send) waits for
        // the peer, so a stalled one gets no longer than `stall` for it.
        drop(subscriber);
        let _ = Box::pin(tokio::time::timeout(stall, socket.shutdown())).await;
    }
}

/// Writes and flushes all of `bytes` to any connection, failing if the
/// peer takes none for `stall`.
async fn write_all<S: AsyncWrite + Unpin>(
    socket: &mut S,
    mut bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    // Almost always the connection takes everything at once; the timer
    // only exists (boxed, off the per-stream state) when it does not.
    while !bytes.is_empty() {
        match socket.write(bytes).now_or_never() {
            Some(Ok(0)) => return Err(ErrorKind::WriteZero.into()),
            Some(Ok(n)) => bytes = &bytes[n..],
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    if bytes.is_empty()
        && let Some(flushed) = socket.flush().now_or_never()
    {
        return flushed;
    }
    let rest = async {
        socket.write_all(bytes).await?;
        socket.flush().await
    };
    let stalled = Box::pin(tokio::time::timeout(stall, rest));
    stalled.await.map_err(|_| ErrorKind::TimedOut.into()).and_then(|r| r)
}

/// Ready once the peer has closed its side (or the connection failed);
/// discards anything it sent. Reads into the stack, so a waiting stream
/// keeps no read buffer: its waker lives in the socket's registration.
fn poll_closed<S: AsyncRead + Unpin>(socket: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        match std::task::ready!(Pin::new(&mut *socket).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => {}
            _ => return Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    const STALL: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_peer_that_takes_everything_gets_everything() {
        let (mut server, mut client) = duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        // More than the pipe holds: the write waits for the reader.
        let bytes: Vec<u8> = (0..=255).cycle().take(10_000).collect();
        write_all(&mut server, &bytes, STALL).await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap().unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_peer_that_takes_nothing_fails_the_write_after_the_stall() {
        let (mut server, _client) = duplex(16);
        let error = write_all(&mut server, &[b'x'; 100], STALL).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn a_write_that_fits_sets_no_timer() {
        // A runtime without timers, where making one panics.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (mut server, _client) = duplex(64);
            write_all(&mut server, b"data:1\n\n", STALL).await.unwrap();
        });
    }

    #[tokio::test]
    async fn what_the_peer_sends_is_discarded_and_its_close_is_seen() {
        let (mut server, mut client) = duplex(16);
        // More than the pipe holds: the writer finishes only if it is read away.
        let writer =
            tokio::spawn(async move { client.write_all(&[b'x'; 1000]).await.map(|()| client) });
        let mut closed = std::pin::pin!(std::future::poll_fn(|cx| poll_closed(&mut server, cx)));
        let client = tokio::select! {
            client = writer => client.unwrap().unwrap(),
            () = &mut closed => panic!("seen as closed while the peer is open"),
        };
        drop(client);
        closed.await;
    }
}
