//! The task that watches every event stream served through hyper (over
//! HTTP/2, or by an app that mounts Broker's router) for clients that take
//! nothing, so that such a stream costs no task of its own.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

/// The event streams served through hyper (over HTTP/2, or by an app that
/// mounts Broker's router) and the task that watches them for stalls.
///
/// hyper polls a body only while its client has room (over HTTP/2, while
/// the stream's flow-control window is open): a body that handed out a
/// chunk and was not polled again for `--write-stall` has a client that
/// takes nothing. Then its subscriber is dropped, as the lean path drops a
/// stalled connection: its place and its cursor on the hub are freed at
/// once, and the stream ends whenever hyper polls it again. One task does
/// this for every stream, so a stream costs no task of its own.
pub struct Stalls {
    streams: std::sync::Mutex<Vec<std::sync::Weak<Watched>>>,
    stall: Duration,
    epoch: tokio::time::Instant,
}

/// The chunks of one stream and when the last one went out.
struct Watched {
    /// `None` once the stream ended or stalled.
    chunks: std::sync::Mutex<Option<Chunks>>,
    /// When the body last handed out a chunk and was not polled since, in
    /// milliseconds since [`Stalls::epoch`]; 0 if it was.
    handed: AtomicU64,
}

/// The chunks of an event stream, as the subscriber hands them out.
pub type Chunks = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

impl Stalls {
    /// Watches streams for `stall` until `shutdown`.
    pub fn spawn(stall: Duration, shutdown: CancellationToken) -> Arc<Self> {
        let stalls = Arc::new(Self {
            streams: std::sync::Mutex::default(),
            stall,
            epoch: tokio::time::Instant::now(),
        });
        let sweeper = stalls.clone();
        tokio::spawn(async move {
            let tick = (sweeper.stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            while shutdown.run_until_cancelled(tokio::time::sleep(tick)).await.is_some() {
                sweeper.sweep();
            }
        });
        stalls
    }

    /// Drops the subscribers of stalled streams; forgets ended ones.
    fn sweep(&self) {
        let (now, stall) = (since(self.epoch), self.stall.as_millis() as u64);
        lock(&self.streams).retain(|stream| {
            let Some(stream) = stream.upgrade() else { return false };
            let handed = stream.handed.load(Ordering::Acquire);
            if handed == 0 || now.saturating_sub(handed) < stall {
                return true;
            }
            // The body sets `handed` while it holds the lock: unchanged
            // under it, the body was not polled since.
            let mut chunks = lock(&stream.chunks);
            let stalled = stream.handed.load(Ordering::Acquire) == handed;
            if stalled {
                *chunks = None;
            }
            !stalled
        });
    }

    /// A body for hyper that hands out `chunks`, watched.
    pub fn watch(&self, chunks: Chunks) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
        let watched = Arc::new(Watched {
            chunks: std::sync::Mutex::new(Some(chunks)),
            handed: AtomicU64::new(0),
        });
        lock(&self.streams).push(Arc::downgrade(&watched));
        let epoch = self.epoch;
        futures_util::stream::poll_fn(move |cx| {
            let mut chunks = lock(&watched.chunks);
            watched.handed.store(0, Ordering::Release);
            let next = match chunks.as_mut() {
                Some(chunks) => chunks.as_mut().poll_next(cx),
                None => Poll::Ready(None),
            };
            match &next {
                Poll::Ready(Some(_)) => watched.handed.store(since(epoch), Ordering::Release),
                Poll::Ready(None) => *chunks = None,
                Poll::Pending => {}
            }
            next.map(|chunk| chunk.map(Ok))
        })
    }
}

/// Milliseconds since `epoch`, at least 1.
fn since(epoch: tokio::time::Instant) -> u64 {
    (epoch.elapsed().as_millis() as u64).max(1)
}

/// Locks `mutex`, whatever a panicking holder left in it.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
