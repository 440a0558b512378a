//! The cluster: what a node does because other nodes share its store.
//!
//! Nodes on one PostgreSQL database each publish what is due, serve their
//! own streams and change access rules; nothing tells a node directly what
//! another one did. A [`Follower`] exists when the store is shared (an
//! embedded SQLite store has none, and an idle node then uses no CPU) and
//! owns everything a node does about the others, started in one place:
//!
//! - **the rules**: read again every [`RULES_POLL`] when their version
//!   moved, so that a collection made private or a session revoked on
//!   another node reaches this node's streams within it;
//! - **the log**: caught up with whenever the store rings (PostgreSQL's
//!   `LISTEN`) and every [`Follower::log_poll`] anyway, since
//!   notifications are lost while a listener is disconnected;
//! - **the schedule**: the scheduler looks every log poll too, for future
//!   events inserted on other nodes and a dead node's overdue ones;
//! - **the signals**: every node's, as PostgreSQL delivers them to its
//!   listening connection (`NOTIFY broker_signals`: one statement per
//!   signal, nothing stored, lost while the connection is down, as a
//!   signal may be), handed to this node's streams within milliseconds.
//!
//! The feed, told that the store is shared, also reads the rules before it
//! hands over events it read from the store, so that they are never older
//! than the events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
use crate::hub::Hub;
use crate::presence::Presence;
use crate::store::{Notice, PRESENCE_DEAD_MS, Store, StoreError};

/// Notices from other nodes waiting for this node; more are dropped.
const NOTICES_QUEUED: usize = 4096;

/// How often at most a node writes its presence changes to the store.
const PRESENCE_FLUSH: Duration = Duration::from_millis(200);

/// Hands signals to the feed and reads again the presence other nodes
/// changed where this node's streams watch it (all it watches after the
/// listening connection was re-established).
async fn follow_notices(
    mut notices: mpsc::Receiver<Notice>,
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
    presence: Arc<Presence>,
) {
    let node = feed.node();
    while let Some(notice) = notices.recv().await {
        let asked = match notice {
            Notice::Signal(message) => {
                feed.signal_from(&message);
                continue;
            }
            Notice::Presence(message) => {
                let Some((from, list)) = message.split_once(' ') else { continue };
                if from.parse() == Ok(node) {
                    continue;
                }
                Some(list.split(',').filter_map(|c| c.parse().ok()).collect())
            }
            Notice::Listening => None,
        };
        // Only what this node's streams watch; everything after a reconnection.
        let watched = presence.watched(asked);
        if watched.is_empty() {
            continue;
        }
        let mut rooms = match store.others_presence(node, watched.clone()).await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the other nodes' presence");
                continue;
            }
        };
        for collection in watched {
            presence.remote(collection, rooms.remove(&collection).unwrap_or_default());
        }
    }
}

/// Writes this node's presence changes to the store, a few times a second
/// at most; after a failure, all of it again.
async fn tell_presence(
    store: Arc<dyn Store>,
    node: uuid::Uuid,
    presence: Arc<Presence>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let changed = tokio::select! {
            changed = presence.take_changed() => changed,
            () = shutdown.cancelled() => return,
        };
        match store.put_presence(node, changed).await {
            Ok(()) if std::mem::take(&mut failing) => tracing::info!("telling presence again"),
            Ok(()) => {}
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "cannot tell this node's presence; retrying");
                }
                presence.all_changed();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tokio::time::sleep(PRESENCE_FLUSH).await;
    }
}

/// How often a node looks for access rules changed by other nodes.
pub const RULES_POLL: Duration = Duration::from_millis(250);

/// What a node follows of the others; exists only for a shared store.
#[derive(Debug)]
pub struct Follower {
    /// Rung by the store when another node publishes.
    published: Arc<Notify>,
    /// What every node (this one too) says to the others.
    notices: mpsc::Receiver<Notice>,
    /// How often the log and the schedule are looked at anyway.
    log_poll: Duration,
}

impl Follower {
    /// The follower of `store` if other nodes may share it (the store then
    /// starts listening for their publications, until `shutdown`).
    pub fn of(store: &dyn Store, shutdown: &CancellationToken) -> Option<Self> {
        let published = Arc::new(Notify::new());
        let (sender, notices) = mpsc::channel(NOTICES_QUEUED);
        let log_poll = store.listen(published.clone(), sender, shutdown.clone())?;
        Some(Self { published, notices, log_poll })
    }

    /// How often the log is read, and the scheduler looks, without a
    /// notification.
    pub fn log_poll(&self) -> Duration {
        self.log_poll
    }

    /// Follows the rules, the log, the signals and presence until
    /// `shutdown`, and tells the others this node's presence.
    pub fn spawn(
        self,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        feed: Arc<Feed>,
        presence: Arc<Presence>,
        shutdown: CancellationToken,
    ) {
        let node = feed.node();
        tokio::spawn(follow_notices(self.notices, store.clone(), feed.clone(), presence.clone()));
        tokio::spawn(tell_presence(store.clone(), node, presence.clone(), shutdown.clone()));
        let alive = Duration::from_millis(PRESENCE_DEAD_MS as u64 / 3);
        repeat("say that this node is alive", alive, None, shutdown.clone(), {
            let (store, presence) = (store.clone(), presence);
            move || {
                let (store, presence) = (store.clone(), presence.clone());
                async move {
                    if store.alive(node).await? {
                        presence.all_changed(); // forgotten meanwhile: say it all again
                    }
                    Ok(())
                }
            }
        });
        repeat("read the access rules", RULES_POLL, None, shutdown.clone(), move || {
            let (hub, store) = (hub.clone(), store.clone());
            async move { hub.refresh_access(store.as_ref()).await }
        });
        repeat("read the log", self.log_poll, Some(self.published), shutdown, move || {
            let feed = feed.clone();
            async move { feed.catch_up().await }
        });
    }
}

/// Runs `step` every `every`, and whenever `ring` rings, until `shutdown`;
/// a failure is logged once, and so is the recovery.
fn repeat<F, Fut>(
    what: &'static str,
    every: Duration,
    ring: Option<Arc<Notify>>,
    shutdown: CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let rung = async {
                match &ring {
                    Some(ring) => ring.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = rung => {}
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            match step().await {
                Ok(()) if std::mem::take(&mut failing) => tracing::info!("{what}: working again"),
                Ok(()) => {}
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    tracing::warn!(error = %e, "cannot {what}; retrying");
                }
                Err(_) => {}
            }
        }
    });
}
