//! The feed: hands the published log to the hub in sequence order, once.
//!
//! Subscribers join their sync or replay (read from the store up to its
//! head) to the live stream by sequence number, so the hub must carry every
//! event published after that head, in order, exactly once, whichever node
//! published it. The feed remembers the last sequence number it handed to
//! the hub. What this node's scheduler publishes goes to the hub at once
//! when it follows that number; anything else (another node's publications,
//! or events before them not yet seen here) is read from the store first.
//! On a shared database the cluster's follower ([`crate::cluster`]) makes
//! it catch up when notified and every poll interval, so no event depends
//! on a notification arriving.
//!
//! On a shared database the feed also makes sure, before it hands events
//! over, that the hub's access rules are at least as new as the events:
//! a collection made private on another node, then written to, never
//! reaches this node's streams as a public one.
//!
//! The feed also reads the latest state for new subscribers, once for all
//! those that arrive together: a thousand browsers reconnecting at once
//! cost one query, not a thousand. Subscribers with the same filter share
//! one read; subscribers that name collections (each its own, say) join
//! one batch while the previous batch is being read, and the next read
//! selects all their collections at once, each taking its own part.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError};

use tokio::sync::{Mutex, OnceCell};

use crate::domain::Signal;
use crate::domain::{Filter, Published};
use crate::hub::{Extras, Hub, Listener};
use crate::store::{Snapshot, Store, StoreError};

/// Events read from the store at a time while catching up.
const PAGE: usize = 1024;

/// A snapshot being read, shared by the subscribers that wait for it.
type Flight = Arc<OnceCell<Result<Arc<Snapshot>, StoreError>>>;

/// Collections read together for the subscribers that arrive together.
const BATCH: usize = 512;

/// The collections of the subscribers waiting for one read, and the read.
#[derive(Default)]
struct Batch {
    collections: std::sync::Mutex<HashSet<uuid::Uuid>>,
    read: OnceCell<Result<Arc<Snapshot>, StoreError>>,
}

/// The hub's supplier; shared behind an `Arc`.
pub struct Feed {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// The last sequence number handed to the hub, once read from the store;
    /// held while handing over, so that events go out one batch at a time.
    delivered: Mutex<Option<i64>>,
    /// The same number, readable at once: set before each event goes to the
    /// hub; −1 until the feed has started.
    seen: AtomicI64,
    /// Snapshots being read, by filter, with `seen` when each began.
    flights: std::sync::Mutex<HashMap<Filter, (i64, Flight)>>,
    /// The batch that subscribers naming collections join, until its read
    /// begins or it is full.
    batch: std::sync::Mutex<Option<Arc<Batch>>>,
    /// Held while a batch is read: the next batch gathers meanwhile.
    reading: Mutex<()>,
    /// Events handed over between waits for subscribers to drain.
    slice: usize,
    /// Whether other nodes share the store (and may change its rules): see
    /// [`crate::cluster`].
    shared: bool,
    /// This node's name in the signals it sends to the others.
    node: uuid::Uuid,
}

impl Feed {
    /// A feed for `hub`, handing events over at most `max_lag / 2` at a
    /// time, each slice once subscribers have drained the previous one (see
    /// [`Hub::drained`]), so that a large publication does not overrun
    /// subscribers that keep up.
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, max_lag: usize, shared: bool) -> Self {
        Self {
            store,
            hub,
            delivered: Mutex::new(None),
            seen: AtomicI64::new(-1),
            flights: std::sync::Mutex::default(),
            batch: std::sync::Mutex::default(),
            reading: Mutex::new(()),
            slice: (max_lag / 2).max(1),
            shared,
            node: uuid::Uuid::new_v4(),
        }
    }

    /// A hub listener for `filter` and `extras`, read by `user`, and the last sequence
    /// number handed to the hub when it was made: the listener sees every
    /// event after that number. Fails only while the store cannot say where
    /// the log stands (before the first subscriber is admitted).
    pub async fn subscribe(
        &self,
        filter: &Filter,
        user: Option<uuid::Uuid>,
        extras: Extras,
    ) -> Result<(Listener, i64), StoreError> {
        if self.seen.load(Ordering::SeqCst) < 0 {
            self.start(&mut *self.delivered.lock().await).await?;
        }
        let ring = self.hub.listen(filter, user, extras);
        // Read after subscribing: `hand_over` sets it before sending, so an
        // event above it cannot have been sent before the cursor existed.
        Ok((ring, self.seen.load(Ordering::SeqCst)))
    }

    /// The latest public state for `filter`, read after the feed had handed over
    /// `after` (a subscriber's [`Feed::subscribe`] number), so that its head
    /// covers everything the subscriber's cursor may have missed. Shared by
    /// every subscriber with the same filter that can use the same read.
    pub async fn snapshot(&self, filter: &Filter, after: i64) -> Result<Arc<Snapshot>, StoreError> {
        if !filter.collections().is_empty() {
            return self.batched(filter).await;
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(filter) {
                Some((began, flight)) if *began >= after => flight.clone(),
                _ => {
                    let flight = Flight::default();
                    let began = self.seen.load(Ordering::SeqCst);
                    flights.insert(filter.clone(), (began, flight.clone()));
                    flight
                }
            }
        };
        let read =
            flight.get_or_init(|| async { self.store.snapshot(filter, true).await.map(Arc::new) });
        let snapshot = read.await.clone();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(filter).is_some_and(|(_, f)| Arc::ptr_eq(f, &flight)) {
            flights.remove(filter); // done: later subscribers read anew
        }
        snapshot
    }

    /// The latest public state of the collections `filter` names, read
    /// with those of the subscribers that asked meanwhile (up to about
    /// [`BATCH`] collections). The read begins after they all asked, so its
    /// head covers each one's cursor.
    async fn batched(&self, filter: &Filter) -> Result<Arc<Snapshot>, StoreError> {
        let batch = {
            let mut open = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = open.get_or_insert_with(Default::default).clone();
            let mut collections = batch.collections.lock().unwrap_or_else(PoisonError::into_inner);
            collections.extend(filter.collections());
            if collections.len() >= BATCH {
                *open = None; // full: the next subscriber starts another
            }
            drop(collections);
            batch
        };
        let read = batch.read.get_or_init(|| async {
            let _one_at_a_time = self.reading.lock().await;
            let collections = {
                let mut open = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
                if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                    *open = None; // closed: nobody joins a read that began
                }
                let collections = batch.collections.lock().unwrap_or_else(PoisonError::into_inner);
                collections.iter().copied().collect()
            };
            let union = Filter::default().within(collections);
            self.store.snapshot(&union, true).await.map(Arc::new)
        });
        let all = read.await.clone()?;
        let latest = all
            .latest
            .iter()
            .filter(|p| filter.matches(&p.event.collection_id, &p.event.event))
            .cloned()
            .collect();
        Ok(Arc::new(Snapshot { latest, head: all.head }))
    }

    /// This node's name among the nodes of a shared store.
    pub fn node(&self) -> uuid::Uuid {
        self.node
    }

    /// Hands a signal to this node's streams and, on a shared store, to
    /// the other nodes' (as `<node> <signal JSON>`).
    pub async fn signal(&self, signal: &Signal) -> Result<(), StoreError> {
        self.hub.signal(signal);
        if !self.shared {
            return Ok(());
        }
        // A Signal always serialises: its fields are ids, a string and JSON.
        let json = serde_json::to_string(signal).unwrap_or_default();
        self.store.signal(format!("{} {json}", self.node)).await
    }

    /// Hands a signal another node sent (see [`Feed::signal`]) to this
    /// node's streams; this node's own, and anything unreadable, are
    /// ignored.
    pub fn signal_from(&self, message: &str) {
        let Some((node, json)) = message.split_once(' ') else { return };
        if node.parse() == Ok(self.node) {
            return;
        }
        match serde_json::from_str::<Signal>(json) {
            Ok(signal) => self.hub.signal(&signal),
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable signal from another node"),
        }
    }

    /// The store the feed reads.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The access rules the hub applies now.
    pub fn rules(&self) -> Arc<crate::policy::AccessState> {
        self.hub.access.current()
    }

    /// The last delivered number, read from the store's head the first time.
    async fn start(&self, delivered: &mut Option<i64>) -> Result<i64, StoreError> {
        if let Some(last) = *delivered {
            return Ok(last);
        }
        let head = self.store.head().await?;
        *delivered = Some(head);
        self.seen.store(head, Ordering::SeqCst);
        Ok(head)
    }

    /// Hands events this node has just published (in sequence order) to
    /// the hub, after any earlier ones it has not delivered yet.
    pub async fn published(&self, events: &[Published]) -> Result<(), StoreError> {
        let Some(first) = events.first() else { return Ok(()) };
        let mut delivered = self.delivered.lock().await;
        if self.start(&mut delivered).await? < first.seq - 1 {
            self.catch_up_locked(&mut delivered, first.seq - 1).await?;
        }
        self.rules_as_new_as_events().await?;
        self.hand_over(&mut delivered, events).await;
        Ok(())
    }

    /// Hands over everything published that the hub has not carried yet.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let mut delivered = self.delivered.lock().await;
        if delivered.is_none() {
            return Ok(()); // nobody subscribed yet: nothing to catch up for
        }
        self.catch_up_locked(&mut delivered, i64::MAX).await
    }

    async fn catch_up_locked(
        &self,
        delivered: &mut Option<i64>,
        until: i64,
    ) -> Result<(), StoreError> {
        while let Some(after) = *delivered {
            let page = self.store.replay(after, until, &Filter::default(), PAGE).await?;
            if !page.is_empty() {
                self.rules_as_new_as_events().await?;
            }
            self.hand_over(delivered, &page).await;
            if page.len() < PAGE {
                break;
            }
        }
        Ok(())
    }

    /// On a shared store, reads the access rules again if they changed:
    /// called after events were read, so that the rules are at least as
    /// new as they.
    async fn rules_as_new_as_events(&self) -> Result<(), StoreError> {
        if self.shared {
            self.hub.refresh_access(self.store.as_ref()).await?;
        }
        Ok(())
    }

    /// Gives the hub the events after `delivered`, pacing large batches.
    async fn hand_over(&self, delivered: &mut Option<i64>, events: &[Published]) {
        let last = delivered.unwrap_or(i64::MAX);
        for (i, p) in events.iter().filter(|p| p.seq > last).enumerate() {
            if i > 0 && i % self.slice == 0 {
                self.hub.drained(self.slice).await;
            }
            tracing::debug!(seq = p.seq, id = %p.event.id, "delivered");
            self.seen.store(p.seq, Ordering::SeqCst);
            self.hub.publish(p);
            *delivered = Some(p.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;
    use crate::store::SqliteStore;

    async fn publish(store: &SqliteStore, feed: &Feed, n: i64) {
        store.insert_event(Event::numbered(n), None, None).await.unwrap();
        feed.published(&store.publish_due(0, 10).await.unwrap()).await.unwrap();
    }

    /// A subscriber never shares a snapshot read that began before its
    /// cursor: that read's head could miss what was sent before the cursor.
    #[tokio::test]
    async fn a_subscriber_shares_only_a_snapshot_begun_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(16, 16, Arc::default()));
        let feed = Feed::new(store.clone(), hub, 16, false);
        let (_ring, start) =
            feed.subscribe(&Filter::default(), None, Extras::default()).await.unwrap();
        assert_eq!(start, 0);
        publish(&store, &feed, 1).await;
        // A read that began when the feed had handed over event 1.
        let filter = Filter::default();
        let began_at_1 = || {
            let flight = Flight::default();
            flight.set(Ok(Arc::new(Snapshot { latest: Vec::new(), head: 1 }))).unwrap();
            (1, flight)
        };
        feed.flights.lock().unwrap().insert(filter.clone(), began_at_1());
        assert_eq!(
            feed.snapshot(&filter, 1).await.unwrap().head,
            1,
            "shared: it began late enough"
        );

        feed.flights.lock().unwrap().insert(filter.clone(), began_at_1());
        publish(&store, &feed, 2).await;
        let (_ring, after) =
            feed.subscribe(&Filter::default(), None, Extras::default()).await.unwrap();
        assert_eq!(after, 2);
        let snapshot = feed.snapshot(&filter, after).await.unwrap();
        assert_eq!(snapshot.head, 2, "read anew: the shared read began before the cursor");
        assert_eq!(snapshot.latest.len(), 1);
    }
}
