//! The scheduler: publishes each event when its second comes.
//!
//! It keeps nothing in memory: the store's index of pending events is the
//! schedule. The task asks the store for everything due, publishes it (the
//! store assigns sequence numbers, in timestamp then insertion order) and
//! hands it to the hub, then sleeps until the earliest pending timestamp or
//! until an insert wakes it. No polling: an idle broker uses no CPU.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::hub::Hub;
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
/// transactions of up to [`BATCH`] events, then handed to the hub at most
/// `max_lag / 2` at a time, each slice once subscribers have drained the
/// previous one (see [`Hub::drained`]), so that a large publication does not
/// overrun a subscriber that keeps up.
pub fn spawn(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    clock: Clock,
    wake: Arc<Wake>,
    max_lag: usize,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let slice = (max_lag / 2).max(1);
    tokio::spawn(async move {
        loop {
            let next = match publish_due(&*store, &hub, &clock, slice).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "publishing due events failed; retrying");
                    Some(clock.now_millis() + RETRY.as_millis() as i64)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.0.notified() => {}
                () = clock.sleep_until(next.unwrap_or(i64::MAX)), if next.is_some() => {}
            }
        }
    })
}

/// Publishes everything due; returns when to look next (UNIX milliseconds).
async fn publish_due(
    store: &dyn Store,
    hub: &Hub,
    clock: &Clock,
    slice: usize,
) -> Result<Option<i64>, crate::store::StoreError> {
    loop {
        let published = store.publish_due(clock.now_secs(), BATCH).await?;
        for (i, p) in published.iter().enumerate() {
            if i > 0 && i % slice == 0 {
                hub.drained(slice).await;
            }
            tracing::debug!(seq = p.seq, id = %p.event.id, "published");
            hub.publish(p);
        }
        if published.len() < BATCH {
            break;
        }
    }
    Ok(store.next_due().await?.map(|secs| secs.saturating_mul(1000)))
}
