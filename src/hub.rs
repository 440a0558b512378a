//! The fan-out hub: one publication, serialised once, read by every stream.
//!
//! Published events become SSE frames exactly once and go into a single
//! bounded broadcast ring that every subscriber reads at its own pace. A
//! subscriber costs one ring cursor, not a queue of its own; one that falls
//! more than the ring's capacity behind is told so and disconnected (it can
//! resume from the store), so a stalled client costs the others nothing and
//! the ring's memory is bounded by `max_lag` frames. An event of a private
//! collection carries its collection's rule, looked up once per
//! publication: a stream checks it against its own user (a map lookup, no
//! query), while a public event costs a stream no check at all. New access
//! rules travel through the ring too, in order with the events, so that
//! streams whose session was revoked end. The hub also admits
//! streams up to the connection limit, sends the heartbeat comment and, on
//! shutdown, the close signal that ends every stream.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::access::Access;
use crate::domain::Published;
use crate::metrics::Metrics;
use crate::policy::{AccessState, Rule};
use crate::store::{Store, StoreError};

/// What travels through the hub.
#[derive(Debug)]
pub enum Frame {
    /// A published event, ready to write.
    Event {
        /// Its publication sequence number (the SSE `id`).
        seq: i64,
        /// Its collection, for filtering.
        collection_id: Uuid,
        /// Its name, for filtering.
        name: String,
        /// What an envelope says of it besides its name and collection.
        about: About,
        /// The complete SSE frame.
        bytes: Bytes,
        /// Where the event's data starts in `bytes` (it ends before the
        /// final blank line).
        data_at: usize,
        /// The same as an [`envelope_frame`], made by the first subscriber
        /// that wants it and shared by the others.
        envelope: OnceLock<Bytes>,
        /// Its collection's rule if that is private: only the users it
        /// lets read may see the frame.
        private: Option<Arc<Rule>>,
    },
    /// The access rules changed: streams re-check their session.
    Access(Arc<AccessState>),
    /// Keep-alive comment.
    Heartbeat,
    /// The server is shutting down: end the stream.
    Close,
}

/// The SSE comment sent as a heartbeat.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Serialises a published event as one SSE frame: `id:` (its sequence
/// number), `event:` (its name), `data:` (its data). No space follows the
/// colons: the seed's npm client, `broker-client`, keeps it in the values.
pub fn sse_frame(p: &Published) -> String {
    let mut text = String::with_capacity(p.event.event.len() + p.event.data.get().len() + 32);
    // Writing to a String cannot fail.
    let _ = write!(text, "id:{}\nevent:{}\ndata:{}\n\n", p.seq, p.event.event, p.event.data.get());
    text
}

/// What an envelope frame tells of an event besides its name, collection
/// and data: the record's own id (the one `cancel` takes), its author and
/// its timestamp, so that a stream's events have the shape of the API's.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The event's UUID.
    pub id: Uuid,
    /// The user who inserted it.
    pub user_id: Uuid,
    /// When it was due, in UNIX seconds.
    pub timestamp: i64,
}

impl About {
    /// What `event`'s envelope tells of it.
    pub fn of(event: &crate::domain::Event) -> Self {
        Self { id: event.id, user_id: event.user_id, timestamp: event.timestamp }
    }
}

/// The same event as an unnamed frame, for subscribers that asked for
/// `envelope=true`: its data is `{"event", "collection_id", "id",
/// "user_id", "timestamp", "data"}`, so a browser's
/// `EventSource.onmessage` sees every event, whatever its name, with the
/// fields of the API's event record.
pub fn envelope_frame(
    seq: i64,
    collection_id: &Uuid,
    name: &str,
    about: &About,
    data: &[u8],
) -> Bytes {
    let name = serde_json::Value::from(name);
    let About { id, user_id, timestamp } = about;
    let mut frame = format!(
        "id:{seq}\ndata:{{\"event\":{name},\"collection_id\":\"{collection_id}\",\"id\":\"{id}\",\"user_id\":\"{user_id}\",\"timestamp\":{timestamp},\"data\":"
    )
    .into_bytes();
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"}\n\n");
    Bytes::from(frame)
}

impl Frame {
    /// This event frame as [`envelope_frame`] writes it, made once.
    pub fn envelope(&self) -> Option<Bytes> {
        let Frame::Event { seq, collection_id, name, about, bytes, data_at, envelope, .. } = self
        else {
            return None;
        };
        let data = &bytes[*data_at..bytes.len() - 2];
        let frame = envelope.get_or_init(|| envelope_frame(*seq, collection_id, name, about, data));
        Some(frame.clone())
    }
}

/// The hub; shared behind an `Arc`.
#[derive(Debug)]
pub struct Hub {
    ring: broadcast::Sender<Arc<Frame>>,
    /// This node's copy of the access rules.
    pub access: Arc<Access>,
    /// Where publications, deliveries and drops are counted.
    pub metrics: Arc<Metrics>,
    open: AtomicUsize,
    max_open: usize,
    full: AtomicBool,
}

/// One admitted stream; dropping it frees its place.
#[derive(Debug)]
pub struct Permit(Arc<Hub>);

impl Permit {
    /// The hub this stream belongs to.
    pub fn hub(&self) -> &Hub {
        &self.0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    /// A hub for at most `max_open` streams, each allowed to fall `max_lag`
    /// frames behind.
    pub fn new(max_lag: usize, max_open: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            ring: broadcast::Sender::new(max_lag.max(1)),
            access: Arc::default(),
            metrics,
            open: AtomicUsize::new(0),
            max_open,
            full: AtomicBool::new(false),
        }
    }

    /// Sends heartbeats every `interval` until `shutdown`, then tells every
    /// stream to close.
    pub fn spawn_heartbeat(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.reset(); // the first tick would otherwise fire at once
            loop {
                tokio::select! {
                    _ = ticks.tick() => hub.send(Frame::Heartbeat),
                    () = shutdown.cancelled() => break,
                }
            }
            hub.send(Frame::Close);
        });
    }

    /// Fans a published event out to every subscriber.
    pub fn publish(&self, p: &Published) {
        Metrics::add(&self.metrics.published, 1);
        let bytes = Bytes::from(sse_frame(p));
        self.send(Frame::Event {
            seq: p.seq,
            collection_id: p.event.collection_id,
            name: p.event.event.clone(),
            about: About::of(&p.event),
            data_at: bytes.len() - 2 - p.event.data.get().len(),
            bytes,
            envelope: OnceLock::new(),
            private: self.access.current().private_rule(&p.event.collection_id),
        });
    }

    /// Tells every stream that the access rules are now `state`.
    pub fn access_changed(&self, state: Arc<AccessState>) {
        self.send(Frame::Access(state));
    }

    /// Reads the access rules again if they changed in `store`, and tells
    /// the streams.
    pub async fn refresh_access(&self, store: &dyn Store) -> Result<(), StoreError> {
        if let Some(state) = self.access.refresh(store).await? {
            self.access_changed(state);
        }
        Ok(())
    }

    fn send(&self, frame: Frame) {
        // An error only means that nobody is subscribed.
        let _ = self.ring.send(Arc::new(frame));
    }

    /// A place for one more stream, or `None` at the connection limit (logged
    /// once each time the limit is reached).
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before < self.max_open {
            self.full.store(false, Ordering::Relaxed);
            return Some(Permit(self.clone()));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = self.max_open,
                "connection limit reached: new subscribers get 503 until streams close \
                 (raise --max-connections or the open-file limit)"
            );
        }
        None
    }

    /// Waits (at most `PACE` in all) until no subscriber has more than
    /// `limit` frames left to read, so that a large publication does not
    /// overrun subscribers that keep up. A stalled subscriber only costs the
    /// bound.
    pub async fn drained(&self, limit: usize) {
        const PACE: Duration = Duration::from_millis(10);
        let deadline = tokio::time::Instant::now() + PACE;
        while self.ring.len() > limit && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A new cursor on the ring, seeing every frame sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.ring.subscribe()
    }

    /// How many streams are open.
    pub fn subscribers(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}
