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
use crate::store::{Store, StoreError};

/// Signals from other nodes waiting for this node's hub; more are dropped.
const SIGNALS_QUEUED: usize = 4096;

/// How often a node looks for access rules changed by other nodes.
pub const RULES_POLL: Duration = Duration::from_millis(250);

/// What a node follows of the others; exists only for a shared store.
#[derive(Debug)]
pub struct Follower {
    /// Rung by the store when another node publishes.
    published: Arc<Notify>,
    /// The signals sent on every node, this one's too.
    signals: mpsc::Receiver<String>,
    /// How often the log and the schedule are looked at anyway.
    log_poll: Duration,
}

impl Follower {
    /// The follower of `store` if other nodes may share it (the store then
    /// starts listening for their publications, until `shutdown`).
    pub fn of(store: &dyn Store, shutdown: &CancellationToken) -> Option<Self> {
        let published = Arc::new(Notify::new());
        let (sender, signals) = mpsc::channel(SIGNALS_QUEUED);
        let log_poll = store.listen(published.clone(), sender, shutdown.clone())?;
        Some(Self { published, signals, log_poll })
    }

    /// How often the log is read, and the scheduler looks, without a
    /// notification.
    pub fn log_poll(&self) -> Duration {
        self.log_poll
    }

    /// Follows the rules, the log and the signals until `shutdown`.
    pub fn spawn(
        self,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        feed: Arc<Feed>,
        shutdown: CancellationToken,
    ) {
        let (mut signals, relay) = (self.signals, feed.clone());
        tokio::spawn(async move {
            while let Some(message) = signals.recv().await {
                relay.signal_from(&message);
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
