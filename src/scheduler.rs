//! The scheduler: publishes each event when its second comes.
//!
//! It keeps nothing in memory: the store's index of pending events is the
//! schedule. The task asks the store for everything due, publishes it (the
//! store assigns sequence numbers, in timestamp then insertion order) and
//! hands it to the feed, then sleeps until the earliest pending timestamp or
//! until an insert wakes it. On embedded SQLite there is no polling: an idle
//! broker uses no CPU. On a shared database every node runs a scheduler;
//! the store lets one publication run at a time, so each event is published
//! once, by whichever node gets there first. Each node also looks every
//! poll interval, which is how it learns of future events inserted on other
//! nodes: a dead node's schedule is taken over within that interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::feed::Feed;
use crate::store::Store;

/// Most events published in one store transaction (one fsync).
const BATCH: usize = 4096;
/// Pause after a store failure before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Wakes the scheduler when the schedule may have changed.
#[derive(Debug, Default)]
pub struct Wake(Notify);

impl Wake {
    /// Tells the scheduler to look again (after an insert).
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// Starts the scheduler; it stops when `shutdown` is cancelled, after
/// finishing the publication under way. Everything due is published in
/// transactions of up to 4,096 events and handed to the feed. With
/// `poll`, it also looks at least that often.
pub fn spawn(
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
    clock: Clock,
    wake: Arc<Wake>,
    poll: Option<Duration>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let next = match publish_due(&*store, &feed, &clock).await {
                Ok(next) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("publishing due events again");
                    }
                    next
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::error!(error = %e, "publishing due events failed; retrying");
                    }
                    Some(clock.now_millis() + RETRY.as_millis() as i64)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.0.notified() => {}
                () = clock.sleep_until(next.unwrap_or(i64::MAX)), if next.is_some() => {}
                () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => {}
            }
        }
    })
}

/// Publishes everything due; returns when to look next (UNIX milliseconds).
async fn publish_due(
    store: &dyn Store,
    feed: &Feed,
    clock: &Clock,
) -> Result<Option<i64>, crate::store::StoreError> {
    loop {
        let published = store.publish_due(clock.now_secs(), BATCH).await?;
        feed.published(&published).await?;
        if published.len() < BATCH {
            break;
        }
    }
    Ok(store.next_due().await?.map(|secs| secs.saturating_mul(1000)))
}
