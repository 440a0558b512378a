//! A client process: holds many SSE connections from one source address
//! and counts, per bench event, how many connections received it and when
//! the last one did. It talks to the coordinator over stdin/stdout:
//! it prints `ready <ok> <refused> <failed> <setup_ms>` once its connections
//! are set up, `done <n>` when every open connection has event `n`, and on
//! `report` a JSON line with the counts; `quit` or EOF ends it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};

use crate::http::{SseDecoder, payload_number, read_head};
use crate::now_ns;

/// Connections being set up at once.
const CONNECTING: usize = 256;

struct Tally {
    counts: Vec<AtomicU32>,
    last: Vec<AtomicU64>,
    /// Open connections; an event is done when this many have it.
    open: AtomicU32,
    errors: AtomicUsize,
    done: mpsc::UnboundedSender<usize>,
}

impl Tally {
    fn record(&self, n: usize) {
        let (Some(count), Some(last)) = (self.counts.get(n), self.last.get(n)) else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        last.fetch_max(now_ns(), Ordering::Relaxed);
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.open.load(Ordering::Acquire) {
            let _ = self.done.send(n);
        }
    }
}

/// An open event stream's body.
enum Body {
    Http1(Box<dyn crate::http::Io>),
    H2(h2::RecvStream),
}

/// Reads an event stream to its end, recording each bench event.
async fn read(stream: Body, chunked: bool, rest: Vec<u8>, tally: Arc<Tally>) {
    let mut decoder = SseDecoder::new(chunked);
    let mut on_data = |data: &[u8]| {
        if let Some(n) = payload_number(data) {
            tally.record(n);
        }
    };
    decoder.feed(&rest, &mut on_data);
    match stream {
        Body::Http1(mut stream) => {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                decoder.feed(&buf[..n], &mut on_data);
            }
        }
        Body::H2(mut body) => {
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                decoder.feed(&data, &mut on_data);
            }
        }
    }
    tally.errors.fetch_add(1, Ordering::Relaxed); // the stream ended
}

/// Runs a client process: `count` streams from `source` to `addr`.
/// `path` with `{c}` replaced by the channel of stream `i` (`offset` plus
/// its index in this process), as 12 hex digits: `i` modulo `channels`
/// (0: `i`).
fn path_of(path: &str, i: usize, channels: usize) -> String {
    let c = if channels > 0 { i % channels } else { i };
    path.replace("{c}", &format!("{c:012x}"))
}

pub async fn run(
    addr: SocketAddr,
    path: String,
    count: usize,
    source: IpAddr,
    events: usize,
    (offset, channels): (usize, usize),
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tally = Arc::new(Tally {
        counts: (0..events).map(|_| AtomicU32::new(0)).collect(),
        last: (0..events).map(|_| AtomicU64::new(0)).collect(),
        open: AtomicU32::new(u32::MAX),
        errors: AtomicUsize::new(0),
        done: done_tx,
    });
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (status_tx, mut status_rx) = mpsc::unbounded_channel::<Result<u16, String>>();
    // One stream per connection, or several per HTTP/2 connection.
    let per = crate::http::http2().unwrap_or(1);
    let mut left = count;
    while left > 0 {
        let streams = per.min(left);
        let first = offset + count - left;
        left -= streams;
        let (gate, tally, status_tx, path) =
            (gate.clone(), tally.clone(), status_tx.clone(), path.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut opened = Vec::with_capacity(streams);
            let connected = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = socket.connect(addr).await?;
                if crate::http::http2().is_some() {
                    let send = crate::http::connect_h2(tcp).await?;
                    for i in first..first + streams {
                        let path = path_of(&path, i, channels);
                        let (status, body) = crate::http::open_h2(send.clone(), &path).await?;
                        opened.push((Body::H2(body), status, false, Vec::new()));
                    }
                    return Ok(());
                }
                let mut stream = crate::http::secure(tcp).await?;
                let path = path_of(&path, first, channels);
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await?;
                let (status, chunked, rest) = read_head(&mut stream).await?;
                opened.push((Body::Http1(stream), status, chunked, rest));
                Ok::<_, std::io::Error>(())
            };
            let failed = connected.await.err().map(|e| e.to_string());
            for _ in opened.len()..streams {
                let _ = status_tx.send(Err(failed.clone().unwrap_or_default()));
            }
            for (stream, status, chunked, rest) in opened {
                let _ = status_tx.send(Ok(status));
                if status == 200 {
                    tokio::spawn(read(stream, chunked, rest, tally.clone()));
                }
            }
            drop(permit);
        });
    }
    drop(status_tx);
    let (mut ok, mut refused, mut failed, mut first_error) = (0u32, 0, 0, None);
    for _ in 0..count {
        let Some(status) = status_rx.recv().await else { break };
        match status {
            Ok(200) => ok += 1,
            Ok(503) => refused += 1,
            Ok(_) => failed += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    tally.open.store(ok, Ordering::Release);
    if let Some(e) = first_error {
        eprintln!("client {source}: {failed} connections failed, first: {e}");
    }
    let mut out = tokio::io::stdout();
    let ready = format!("ready {ok} {refused} {failed} {}\n", start.elapsed().as_millis());
    let _ = out.write_all(ready.as_bytes()).await;
    let _ = out.flush().await;

    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            Some(n) = done_rx.recv() => {
                let _ = out.write_all(format!("done {n}\n").as_bytes()).await;
                let _ = out.flush().await;
            }
            line = commands.next_line() => match line.ok().flatten().as_deref() {
                Some("report") => {
                    let events: Vec<(u32, u64)> = tally
                        .counts
                        .iter()
                        .zip(&tally.last)
                        .map(|(c, l)| (c.load(Ordering::Acquire), l.load(Ordering::Acquire)))
                        .collect();
                    let report = serde_json::json!({
                        "events": events,
                        "ended": tally.errors.load(Ordering::Relaxed),
                    });
                    let _ = out.write_all(format!("report {report}\n").as_bytes()).await;
                    let _ = out.flush().await;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
}
