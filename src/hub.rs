//! The fan-out hub: one publication, serialised once, handed to the
//! streams that want it.
//!
//! Published events become SSE frames exactly once. A stream that named
//! nothing reads every frame from a single bounded broadcast ring, at its
//! own pace: it costs one ring cursor, not a queue of its own. A stream
//! that named collections or event names has an inbox instead, indexed by
//! what it named (by its collections if it named any, else by its event
//! names): an event is pushed, as the same shared frame, into the inboxes
//! of the streams whose filter it matches and that may read it, and only
//! those are woken; the others are not touched, so an event costs the
//! streams that receive it plus one map lookup. A stream on several
//! collections is indexed under each, and an event has one collection, so
//! it gets each event once, in publication order (the feed publishes one
//! event at a time). Access changes and the close signal go to every
//! stream: through the ring, in order with the events, and into every
//! inbox, where they queue behind the events pushed before them, so a
//! stream reads events and control frames in the order they were sent
//! and, between them, touches nothing shared but its own inbox. An access
//! change therefore wakes every stream once (each re-checks its session
//! and what it may read), as before the index; an event never does.
//! Signals (`POST /signal`: no sequence number, never stored) take the
//! same index: a signal is pushed into the inboxes of its collection
//! whose streams asked for signals and may read it, so it costs the
//! streams of that collection only; one that is already half `max_lag`
//! behind misses it instead of being ended for it. Heartbeats go through
//! the ring once per interval and into the inboxes in groups spread over
//! the interval: a hundred thousand idle streams do not all wake and
//! write in the same instant.
//!
//! A stream may fall `max_lag` frames behind: in the ring, counted over
//! every event; in an inbox, over what it receives only (its events and
//! the rare control frames). One that
//! falls further is told so and disconnected (it can resume from the
//! store), so a stalled client costs the others nothing and memory stays
//! bounded: the ring holds at most `max_lag` frames, an inbox at most
//! `max_lag` pointers to shared frames. An event of a private collection
//! carries its collection's rule, looked up once per publication: the hub
//! pushes it only into the inboxes of users the rule lets read it (a
//! private event costs non-members nothing), and a ring stream checks it
//! against its own user (a map lookup, no query), while a public event
//! costs no check at all. New access rules reach every stream, so that
//! streams whose session was revoked end. The hub also admits streams up
//! to the connection limit, sends the heartbeat comment and, on shutdown,
//! the close signal that ends every stream.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::access::Access;
use crate::domain::{Filter, Published};
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
    /// A complete SSE frame without `id:` that is never stored (a signal,
    /// a presence change), for the streams of its collection that asked.
    Fleeting(Bytes),
    /// Keep-alive comment.
    Heartbeat,
    /// The server is shutting down: end the stream.
    Close,
}

/// The groups whose heartbeats are spread over the heartbeat interval.
const GROUPS: usize = 64;

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

/// Which signals a stream asked for (`?signals=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signals {
    /// None (as 1.x streams).
    #[default]
    None,
    /// Every signal of its collections.
    All,
    /// Those of other users only: not its own user's echo.
    Others,
}

/// What a stream asked for besides events (`?signals=`, `?presence=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extras {
    /// Which signals of its collections.
    pub signals: Signals,
    /// Whether the joins and leaves of its collections.
    pub presence: bool,
}

/// Serialises a signal as an SSE frame: `event:signal`, its JSON as the
/// data, and no `id:`, so that it never moves a client's resume position.
pub fn signal_frame(signal: &crate::domain::Signal) -> Bytes {
    // A Signal always serialises: its fields are ids, a string and JSON.
    let json = serde_json::to_string(signal).unwrap_or_default();
    Bytes::from(format!("event:signal\ndata:{json}\n\n"))
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
    /// Every frame, for the streams that named nothing.
    ring: broadcast::Sender<Arc<Frame>>,
    /// The last sequence number published, for whoever follows the log
    /// (webhooks).
    published: watch::Sender<i64>,
    /// The inboxes, by what their streams named.
    index: Mutex<Index>,
    /// Inboxes more than half full, watched by [`Hub::drained`].
    crowded: Mutex<Vec<Arc<Inbox>>>,
    /// The inboxes by heartbeat group, so that a tick visits its group
    /// only and never holds the index.
    beats: Box<[Mutex<Vec<Arc<Inbox>>>]>,
    /// Inboxes made so far, for their heartbeat groups.
    streams: AtomicUsize,
    max_lag: usize,
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
            published: watch::Sender::new(0),
            index: Mutex::default(),
            crowded: Mutex::default(),
            beats: (0..GROUPS).map(|_| Mutex::default()).collect(),
            streams: AtomicUsize::new(0),
            max_lag: max_lag.max(1),
            access: Arc::default(),
            metrics,
            open: AtomicUsize::new(0),
            max_open,
            full: AtomicBool::new(false),
        }
    }

    /// Sends heartbeats until `shutdown`, then tells every stream to close.
    /// Every stream gets one each `interval`: the ring's all at once, the
    /// inboxes' in 64 groups spread over the interval, so that idle
    /// streams do not all wake and write in the same instant.
    pub fn spawn_heartbeat(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval / GROUPS as u32);
            ticks.reset(); // the first tick would otherwise fire at once
            for tick in 0.. {
                tokio::select! {
                    _ = ticks.tick() => hub.heartbeat(tick % GROUPS),
                    () = shutdown.cancelled() => break,
                }
            }
            hub.send(Frame::Close);
        });
    }

    /// Sends the heartbeat to the inboxes of `group`, and to the ring's
    /// streams with group 0.
    fn heartbeat(&self, group: usize) {
        let frame = Arc::new(Frame::Heartbeat);
        if group == 0 {
            let _ = self.ring.send(frame.clone());
        }
        for inbox in lock(&self.beats[group]).iter() {
            inbox.push(&frame, self.max_lag);
        }
    }

    /// Changes whenever an event is published (to its sequence number).
    pub fn published(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// Fans a published event out to the streams that want it.
    pub fn publish(&self, p: &Published) {
        Metrics::add(&self.metrics.published, 1);
        let bytes = Bytes::from(sse_frame(p));
        let private = self.access.current().private_rule(&p.event.collection_id);
        let frame = Arc::new(Frame::Event {
            seq: p.seq,
            collection_id: p.event.collection_id,
            name: p.event.event.clone(),
            about: About::of(&p.event),
            data_at: bytes.len() - 2 - p.event.data.get().len(),
            bytes,
            envelope: OnceLock::new(),
            private: private.clone(),
        });
        let crowded: Vec<Arc<Inbox>> = {
            let index = lock(&self.index);
            let (collection, name) = (&p.event.collection_id, p.event.event.as_str());
            let named = index.by_collection.get(collection).into_iter().flatten();
            let wanting =
                named.chain(index.by_name.get(name).into_iter().flatten()).filter(|inbox| {
                    private.as_ref().is_none_or(|rule| rule.may_read(inbox.user))
                        && inbox.filter.matches(collection, name)
                });
            wanting.filter(|inbox| inbox.push(&frame, self.max_lag)).cloned().collect()
        };
        if self.published.receiver_count() > 0 {
            self.published.send_replace(p.seq);
        }
        self.watch(crowded);
        // An error only means that no stream reads the ring.
        let _ = self.ring.send(frame);
    }

    /// Hands a signal to the streams of its collection that asked for
    /// signals and may read it, as it does an event; a stream already half
    /// `max_lag` behind misses it instead (a signal matters for a moment
    /// and never ends a stream).
    pub fn signal(&self, signal: &crate::domain::Signal) {
        Metrics::add(&self.metrics.signals, 1);
        let queued = self.fleeting(signal.collection_id, signal_frame(signal), |inbox| match inbox
            .extras
            .signals
        {
            Signals::None => false,
            Signals::All => true,
            Signals::Others => inbox.user != Some(signal.user_id),
        });
        Metrics::add(&self.metrics.signal_deliveries, queued);
    }

    /// Hands a presence frame of `collection` to the streams of that
    /// collection that asked for presence and may read it; as signals, it
    /// never ends a stream.
    pub fn presence(&self, collection: Uuid, bytes: Bytes) {
        self.fleeting(collection, bytes, |inbox| inbox.extras.presence);
    }

    /// Queues `bytes` for the streams of `collection` that `want` it and may
    /// read it, unless they are half `max_lag` behind; returns how many.
    fn fleeting(&self, collection: Uuid, bytes: Bytes, want: impl Fn(&Inbox) -> bool) -> u64 {
        let private = self.access.current().private_rule(&collection);
        let frame = Arc::new(Frame::Fleeting(bytes));
        let index = lock(&self.index);
        let mut queued = 0;
        for inbox in index.by_collection.get(&collection).into_iter().flatten() {
            let readable = private.as_ref().is_none_or(|rule| rule.may_read(inbox.user));
            if want(inbox) && readable && inbox.push_fleeting(&frame, self.max_lag / 2) {
                queued += 1;
            }
        }
        queued
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

    /// Sends a frame to every stream: into every inbox (each is in one
    /// heartbeat group) and the ring.
    fn send(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut crowded = Vec::new();
        for group in &self.beats {
            let group = lock(group);
            crowded.extend(group.iter().filter(|inbox| inbox.push(&frame, self.max_lag)).cloned());
        }
        self.watch(crowded);
        // An error only means that no stream reads the ring.
        let _ = self.ring.send(frame);
    }

    /// Has [`Hub::drained`] watch these inboxes, which a push has just
    /// made more than half full.
    fn watch(&self, mut crowded: Vec<Arc<Inbox>>) {
        if !crowded.is_empty() {
            lock(&self.crowded).append(&mut crowded);
        }
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

    /// Waits (at most `PACE` in all) until no stream has more than `limit`
    /// frames left to read, so that a large publication does not overrun
    /// streams that keep up. A stalled stream only costs the bound.
    pub async fn drained(&self, limit: usize) {
        const PACE: Duration = Duration::from_millis(10);
        let deadline = tokio::time::Instant::now() + PACE;
        let busy = || {
            let mut crowded = lock(&self.crowded);
            crowded.retain(|inbox| inbox.still_crowded(limit));
            self.ring.len() > limit || !crowded.is_empty()
        };
        while busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A stream's source of frames from now on: the ring if `filter` names
    /// nothing, else an inbox for what it names, read by `user`.
    pub fn listen(
        self: &Arc<Self>,
        filter: &Filter,
        user: Option<Uuid>,
        extras: Extras,
    ) -> Listener {
        if filter.collections().is_empty() && filter.events().is_empty() {
            return Listener::Ring(self.ring.subscribe());
        }
        let inbox = Arc::new(Inbox {
            filter: filter.clone(),
            user,
            extras,
            queue: Mutex::default(),
            group: (self.streams.fetch_add(1, Ordering::Relaxed) % GROUPS) as u8,
        });
        // In its group first: from here on it gets every control frame, as
        // the ring's streams do from their subscription.
        lock(&self.beats[usize::from(inbox.group)]).push(inbox.clone());
        let mut index = lock(&self.index);
        for key in inbox.keys() {
            index.entry(key).push(inbox.clone());
        }
        drop(index);
        Listener::Inbox(Box::new(Named { hub: self.clone(), inbox, taken: VecDeque::new() }))
    }

    /// How many streams are open.
    pub fn subscribers(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a stream with an inbox is indexed by.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    Collection(Uuid),
    Name(String),
}

/// The inboxes, by what their streams named.
#[derive(Debug, Default)]
struct Index {
    by_collection: HashMap<Uuid, Vec<Arc<Inbox>>>,
    by_name: HashMap<String, Vec<Arc<Inbox>>>,
}

impl Index {
    fn entry(&mut self, key: Key) -> &mut Vec<Arc<Inbox>> {
        match key {
            Key::Collection(id) => self.by_collection.entry(id).or_default(),
            Key::Name(name) => self.by_name.entry(name).or_default(),
        }
    }

    fn remove(&mut self, inbox: &Arc<Inbox>) {
        fn out<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, Vec<Arc<Inbox>>>,
            key: K,
            inbox: &Arc<Inbox>,
        ) {
            if let Some(list) = map.get_mut(&key) {
                remove(list, inbox);
                if list.is_empty() {
                    map.remove(&key);
                }
            }
        }
        for key in inbox.keys() {
            match key {
                Key::Collection(id) => out(&mut self.by_collection, id, inbox),
                Key::Name(name) => out(&mut self.by_name, name, inbox),
            }
        }
    }
}

/// Takes `inbox` out of `list` (whose order does not matter).
fn remove(list: &mut Vec<Arc<Inbox>>, inbox: &Arc<Inbox>) {
    if let Some(at) = list.iter().position(|other| Arc::ptr_eq(other, inbox)) {
        list.swap_remove(at);
    }
}

/// The frames waiting for one stream that named what it wants.
#[derive(Debug)]
struct Inbox {
    filter: Filter,
    user: Option<Uuid>,
    /// What it gets besides events.
    extras: Extras,
    queue: Mutex<Queue>,
    /// When in the heartbeat interval it gets its heartbeat.
    group: u8,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Arc<Frame>>,
    /// The stream's task, while it waits for a frame.
    waker: Option<Waker>,
    /// Frames the stream lost by falling `max_lag` behind (then it ends).
    missed: u64,
    /// Whether [`Hub::drained`] watches this inbox.
    crowded: bool,
}

impl Inbox {
    /// Its keys in the index: its collections if it named any, else its
    /// event names.
    fn keys(&self) -> Vec<Key> {
        match self.filter.collections() {
            [] => self.filter.events().iter().cloned().map(Key::Name).collect(),
            ids => ids.iter().copied().map(Key::Collection).collect(),
        }
    }

    /// Queues `frame` and wakes the stream; returns whether the inbox is
    /// now crowded (more than half of `max_lag`) and not yet watched.
    fn push(&self, frame: &Arc<Frame>, max_lag: usize) -> bool {
        let mut queue = lock(&self.queue);
        if queue.missed > 0 {
            return false; // ending: nothing more to queue
        }
        if queue.frames.len() >= max_lag {
            queue.missed = queue.frames.len() as u64 + 1;
            queue.frames = VecDeque::new();
        } else {
            queue.frames.push_back(frame.clone());
        }
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
        let crowded = queue.frames.len() > max_lag / 2 && !queue.crowded;
        queue.crowded |= crowded;
        crowded
    }

    /// Queues a fleeting frame and wakes the stream, unless `limit` frames
    /// already wait; returns whether it was queued.
    fn push_fleeting(&self, frame: &Arc<Frame>, limit: usize) -> bool {
        let mut queue = lock(&self.queue);
        if queue.missed > 0 || queue.frames.len() >= limit {
            return false;
        }
        queue.frames.push_back(frame.clone());
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
        true
    }

    /// Whether more than `limit` frames still wait (else no longer watched).
    fn still_crowded(&self, limit: usize) -> bool {
        let mut queue = lock(&self.queue);
        queue.crowded = queue.frames.len() > limit;
        queue.crowded
    }

    /// Moves every queued frame into `into` (empty), or, if none is
    /// queued, has `waker` woken by the next one.
    fn take(
        &self,
        into: &mut VecDeque<Arc<Frame>>,
        waker: Option<&Waker>,
    ) -> Poll<Result<(), u64>> {
        let mut queue = lock(&self.queue);
        if queue.missed > 0 {
            return Poll::Ready(Err(queue.missed));
        }
        if queue.frames.is_empty() {
            let new = waker.filter(|w| !queue.waker.as_ref().is_some_and(|q| q.will_wake(w)));
            if let Some(waker) = new {
                queue.waker = Some(waker.clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(into, &mut queue.frames);
        Poll::Ready(Ok(()))
    }
}

/// Where a stream reads its frames: [`Hub::listen`].
#[derive(Debug)]
pub enum Listener {
    /// Every frame, from the shared ring.
    Ring(broadcast::Receiver<Arc<Frame>>),
    /// The events of what the stream named, and the control frames.
    Inbox(Box<Named>),
}

/// A stream's inbox; dropping it takes the inbox out of the index.
#[derive(Debug)]
pub struct Named {
    hub: Arc<Hub>,
    inbox: Arc<Inbox>,
    /// Frames taken from the inbox, not yet read.
    taken: VecDeque<Arc<Frame>>,
}

impl Drop for Named {
    fn drop(&mut self) {
        lock(&self.hub.index).remove(&self.inbox);
        remove(&mut lock(&self.hub.beats[usize::from(self.inbox.group)]), &self.inbox);
    }
}

impl Named {
    /// The next frame in the order it was sent if one is ready, without
    /// waiting.
    fn ready(&mut self) -> Option<Result<Arc<Frame>, RecvError>> {
        if self.taken.is_empty()
            && let Poll::Ready(Err(missed)) = self.inbox.take(&mut self.taken, None)
        {
            return Some(Err(RecvError::Lagged(missed)));
        }
        self.taken.pop_front().map(Ok)
    }
}

impl Listener {
    /// The next frame, waiting for it. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Arc<Frame>, RecvError> {
        let named = match self {
            Listener::Ring(ring) => return ring.recv().await,
            Listener::Inbox(named) => named,
        };
        loop {
            if let Some(next) = named.ready() {
                return next;
            }
            let Named { inbox, taken, .. } = &mut **named;
            poll_fn(|cx| inbox.take(taken, Some(cx.waker()))).await.map_err(RecvError::Lagged)?;
        }
    }

    /// The next frame if one is there.
    pub fn try_recv(&mut self) -> Result<Arc<Frame>, TryRecvError> {
        match self {
            Listener::Ring(ring) => ring.try_recv(),
            Listener::Inbox(named) => match named.ready() {
                Some(Ok(frame)) => Ok(frame),
                Some(Err(RecvError::Lagged(n))) => Err(TryRecvError::Lagged(n)),
                Some(Err(RecvError::Closed)) => Err(TryRecvError::Closed),
                None => Err(TryRecvError::Empty),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;

    fn hub(max_lag: usize) -> Arc<Hub> {
        Arc::new(Hub::new(max_lag, 100, Arc::default()))
    }

    fn publish(hub: &Hub, seq: i64, collection: Uuid, name: &str) {
        let event = Event {
            id: Uuid::new_v4(),
            user_id: Uuid::nil(),
            collection_id: collection,
            event: name.into(),
            timestamp: 0,
            published: true,
            cancelled: false,
            data: serde_json::value::to_raw_value(&seq).unwrap(),
        };
        hub.publish(&Published { seq, event });
    }

    /// The sequence numbers of the event frames ready for `listener`.
    fn ready(listener: &mut Listener) -> Vec<i64> {
        let mut seqs = Vec::new();
        while let Ok(frame) = listener.try_recv() {
            if let Frame::Event { seq, .. } = *frame {
                seqs.push(seq);
            }
        }
        seqs
    }

    fn filter(collections: &[Uuid], names: &[&str]) -> Filter {
        Filter::new(collections.to_vec(), names.iter().map(|n| n.to_string()).collect()).unwrap()
    }

    #[test]
    fn an_event_reaches_the_streams_it_matches_and_no_other() {
        let hub = hub(16);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut on_a = hub.listen(&filter(&[a], &[]), None, Extras::default());
        let mut on_a_and_b = hub.listen(&filter(&[a, b], &[]), None, Extras::default());
        let mut named = hub.listen(&filter(&[], &["x"]), None, Extras::default());
        let mut a_named = hub.listen(&filter(&[a], &["y"]), None, Extras::default());
        let mut all = hub.listen(&Filter::default(), None, Extras::default());
        for (seq, collection, name) in [(1, a, "x"), (2, b, "y"), (3, c, "x"), (4, a, "y")] {
            publish(&hub, seq, collection, name);
        }
        assert_eq!(ready(&mut on_a), [1, 4]);
        assert_eq!(ready(&mut on_a_and_b), [1, 2, 4], "each once, in order");
        assert_eq!(ready(&mut named), [1, 3]);
        assert_eq!(ready(&mut a_named), [4]);
        assert_eq!(ready(&mut all), [1, 2, 3, 4]);
    }

    #[test]
    fn an_inbox_falls_behind_on_its_own_events_only() {
        let hub = hub(4);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut on_a = hub.listen(&filter(&[a], &[]), None, Extras::default());
        let mut on_b = hub.listen(&filter(&[b], &[]), None, Extras::default());
        for seq in 1..=10 {
            publish(&hub, seq, a, "e");
        }
        publish(&hub, 11, b, "e");
        assert!(matches!(on_a.try_recv(), Err(TryRecvError::Lagged(5))), "4 queued, then full");
        assert_eq!(ready(&mut on_b), [11], "ten events of A cost B nothing");
    }

    #[tokio::test]
    async fn an_inbox_reads_control_frames_and_events_in_the_order_they_were_sent() {
        let hub = hub(16);
        let a = Uuid::new_v4();
        let mut on_a = hub.listen(&filter(&[a], &[]), None, Extras::default());
        hub.send(Frame::Heartbeat);
        publish(&hub, 1, a, "e");
        hub.send(Frame::Close);
        assert!(matches!(*on_a.recv().await.unwrap(), Frame::Heartbeat));
        assert!(matches!(*on_a.recv().await.unwrap(), Frame::Event { seq: 1, .. }));
        assert!(matches!(*on_a.recv().await.unwrap(), Frame::Close));
    }

    #[tokio::test]
    async fn a_waiting_stream_is_woken_by_its_event() {
        let hub = hub(16);
        let a = Uuid::new_v4();
        let mut on_a = hub.listen(&filter(&[a], &[]), None, Extras::default());
        let waiting =
            tokio::spawn(async move { on_a.recv().await.map(|f| f.envelope().is_some()) });
        tokio::task::yield_now().await;
        publish(&hub, 1, a, "e");
        assert!(waiting.await.unwrap().unwrap(), "an event frame");
    }

    #[test]
    fn over_one_interval_every_inbox_gets_one_heartbeat() {
        let hub = hub(16);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut listeners: Vec<Listener> = (0..40)
            .map(|i| match i % 3 {
                0 => hub.listen(&filter(&[a, b], &[]), None, Extras::default()),
                1 => hub.listen(&filter(&[b], &["x"]), None, Extras::default()),
                _ => hub.listen(&filter(&[], &["x", "y"]), None, Extras::default()),
            })
            .collect();
        let mut beats = vec![0; listeners.len()];
        for group in 0..GROUPS {
            hub.heartbeat(group);
            let mut woken = 0;
            for (listener, count) in listeners.iter_mut().zip(&mut beats) {
                while let Ok(frame) = listener.try_recv() {
                    assert!(matches!(*frame, Frame::Heartbeat));
                    (*count, woken) = (*count + 1, woken + 1);
                }
            }
            assert!(woken < 40, "one group at a time, not all: {woken}");
        }
        assert!(beats.iter().all(|&n| n == 1), "once each over the interval: {beats:?}");
    }

    #[test]
    fn a_signal_reaches_the_streams_of_its_collection_that_asked_for_signals() {
        let hub = hub(16);
        let (a, b, alice, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut all = hub.listen(
            &filter(&[a], &[]),
            Some(alice),
            Extras { signals: Signals::All, presence: false },
        );
        let mut others = hub.listen(
            &filter(&[a, b], &[]),
            Some(alice),
            Extras { signals: Signals::Others, presence: false },
        );
        let mut bobs = hub.listen(
            &filter(&[a], &["x"]),
            Some(bob),
            Extras { signals: Signals::Others, presence: false },
        );
        let mut none = hub.listen(&filter(&[a], &[]), Some(bob), Extras::default());
        let mut on_b = hub.listen(
            &filter(&[b], &[]),
            Some(bob),
            Extras { signals: Signals::All, presence: false },
        );
        let mut ring = hub.listen(
            &Filter::default(),
            Some(bob),
            Extras { signals: Signals::All, presence: false },
        );
        let data = serde_json::value::to_raw_value(&1).unwrap();
        let signal = crate::domain::Signal {
            collection_id: a,
            event: "typing".into(),
            user_id: alice,
            data,
        };
        hub.signal(&signal);
        let mut signals = |listener: &mut Listener| {
            std::iter::from_fn(|| listener.try_recv().ok())
                .filter(|frame| matches!(**frame, Frame::Fleeting(_)))
                .count()
        };
        let counts: Vec<usize> =
            [&mut all, &mut others, &mut bobs, &mut none, &mut on_b, &mut ring]
                .map(&mut signals)
                .into();
        assert_eq!(counts, [1, 0, 1, 0, 0, 0], "all, others (alice's own), bob's, none, B, ring");
    }

    #[test]
    fn a_closed_stream_leaves_the_index() {
        let hub = hub(16);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = hub.listen(&filter(&[a, b], &[]), None, Extras::default());
        let second = hub.listen(&filter(&[a], &[]), None, Extras::default());
        let named = hub.listen(&filter(&[], &["x"]), None, Extras::default());
        drop(first);
        assert_eq!(lock(&hub.index).by_collection.len(), 1, "only A is left");
        drop((second, named));
        let index = lock(&hub.index);
        assert!(index.by_collection.is_empty() && index.by_name.is_empty());
        assert!(hub.beats.iter().all(|group| lock(group).is_empty()), "nor any heartbeat group");
    }
}
