//! The lean path's first step: the request head read from a small buffer,
//! to tell `GET /events` (written straight to the connection) from
//! everything else (handed to hyper with the bytes already read).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::HEAD_TIMEOUT;

/// Longest request head accepted on the SSE path (hyper answers longer ones).
const MAX_HEAD: usize = 16 * 1024;
/// What a request line must start with to take the SSE path.
const EVENTS: &[u8] = b"GET /events";

/// What a connection's first request is.
pub(super) enum Head<S> {
    /// `GET /events…` with its headers and query string.
    Events(S, HeaderMap, Option<String>),
    /// Anything else, with the bytes already read.
    Other(S, Vec<u8>),
    /// The client left or took too long.
    Gone,
}

/// Reads the first request head of a connection, at most [`MAX_HEAD`]
/// bytes and [`HEAD_TIMEOUT`] long.
pub(super) async fn read_head<S: AsyncRead + Unpin>(mut socket: S) -> Head<S> {
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

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
