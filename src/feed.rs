//! The feed: hands the published log to the hub in sequence order, once.
//!
//! Subscribers join their sync or replay (read from the store up to its
//! head) to the live stream by sequence number, so the hub must carry every
//! event published after that head, in order, exactly once, whichever node
//! published it. The feed remembers the last sequence number it handed to
//! the hub. What this node's scheduler publishes goes to the hub at once
//! when it follows that number; anything else (another node's publications,
//! or events before them not yet seen here) is read from the store first.
//! On a shared database the feed also catches up when notified and every
//! poll interval, so no event depends on a notification arriving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::domain::{Filter, Published};
use crate::hub::{Frame, Hub};
use crate::store::{Store, StoreError};

/// Events read from the store at a time while catching up.
const PAGE: usize = 1024;

/// The hub's supplier; shared behind an `Arc`.
pub struct Feed {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// The last sequence number handed to the hub, once read from the store.
    delivered: Mutex<Option<i64>>,
    started: AtomicBool,
    /// Events handed over between waits for subscribers to drain.
    slice: usize,
}

impl Feed {
    /// A feed for `hub`, handing events over at most `max_lag / 2` at a
    /// time, each slice once subscribers have drained the previous one (see
    /// [`Hub::drained`]), so that a large publication does not overrun
    /// subscribers that keep up.
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, max_lag: usize) -> Self {
        Self {
            store,
            hub,
            delivered: Mutex::new(None),
            started: AtomicBool::new(false),
            slice: (max_lag / 2).max(1),
        }
    }

    /// A hub cursor that will see every event published after the store's
    /// head as read from now on. Fails only while the store cannot say
    /// where the log stands (before the first subscriber is admitted).
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Frame>>, StoreError> {
        if !self.started.load(Ordering::Acquire) {
            self.start(&mut *self.delivered.lock().await).await?;
        }
        Ok(self.hub.subscribe())
    }

    /// The last delivered number, read from the store's head the first time.
    async fn start(&self, delivered: &mut Option<i64>) -> Result<i64, StoreError> {
        if let Some(last) = *delivered {
            return Ok(last);
        }
        let head = self.store.head().await?;
        *delivered = Some(head);
        self.started.store(true, Ordering::Release);
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
            self.hand_over(delivered, &page).await;
            if page.len() < PAGE {
                break;
            }
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
            self.hub.publish(p);
            *delivered = Some(p.seq);
        }
    }

    /// Catches up whenever `published` rings and every `poll`, until
    /// `shutdown`: how a node hears of other nodes' publications.
    pub fn spawn_follower(
        self: Arc<Self>,
        published: Arc<Notify>,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    () = published.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                    () = shutdown.cancelled() => return,
                }
                match self.catch_up().await {
                    Ok(()) if std::mem::take(&mut failing) => {
                        tracing::info!("caught up with the log again");
                    }
                    Ok(()) => {}
                    Err(e) if !std::mem::replace(&mut failing, true) => {
                        tracing::warn!(error = %e, "cannot read the log; retrying");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
