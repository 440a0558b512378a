//! A webhook receiver for `rate --webhook`: an HTTP/1.1 server on loopback
//! that notes when each event (by its `"n"`) first arrives and answers 204,
//! or (`dead`) takes connections and requests and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::payload_number;
use crate::now_ns;

/// What the receiver saw.
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// When event `n` first arrived (UNIX ns; 0: not yet).
    pub arrivals: Arc<Mutex<Vec<u64>>>,
    /// Requests received, retries included.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts receiving events `0..total`.
    pub async fn start(total: usize, dead: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Self {
            addr: listener.local_addr()?,
            arrivals: Arc::new(Mutex::new(vec![0; total])),
            requests: Arc::default(),
            connections: Arc::default(),
        };
        let state = receiver.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(state.clone().serve(tcp, dead));
            }
        });
        Ok(receiver)
    }

    /// How many events arrived.
    pub fn arrived(&self) -> usize {
        self.arrivals.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|t| **t > 0).count()
    }

    async fn serve(self, mut tcp: TcpStream, dead: bool) {
        let mut buffer = Vec::with_capacity(4096);
        let mut chunk = [0; 8192];
        loop {
            // Whole requests in the buffer first.
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut request = httparse::Request::new(&mut headers);
                let Ok(httparse::Status::Complete(head)) = request.parse(&buffer) else { break };
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if buffer.len() < head + length {
                    break;
                }
                let at = now_ns();
                self.requests.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = payload_number(&buffer[head..head + length]) {
                    let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(slot) = arrivals.get_mut(n).filter(|t| **t == 0) {
                        *slot = at;
                    }
                }
                buffer.drain(..head + length);
                if !dead && tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.is_err() {
                    return;
                }
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }
}
