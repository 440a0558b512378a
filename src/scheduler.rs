//! The scheduler: publishes each event when its second comes.
//!
//! On embedded SQLite an insert that is due at once is published by the
//! store in the insert's own transaction; the scheduler hands those
//! publications to the feed, in commit order, once the commit's inserts
//! are answered (an answer is a few microseconds of work, the fan-out to
//! a thousand streams a few milliseconds: on a busy machine the answer
//! would otherwise wait its turn for a core behind it), and publishes the
//! rest.
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
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::feed::Feed;
use crate::store::{Batch, Publications, Store};

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
/// transactions of up to 4,096 events and handed to the feed, and so is
/// what the store publishes inside inserts ([`Store::publications`]). With
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
        let mut inserts = store.publications();
        let mut failing = false;
        let mut next = None;
        let mut look = true;
        loop {
            if std::mem::replace(&mut look, true) {
                next = match publish_due(&*store, &feed, &clock, inserts.as_mut()).await {
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
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(batch) = next_batch(inserts.as_mut()) => {
                    hand_over(&feed, inserts.as_ref(), batch).await;
                    look = false; // the schedule is as it was
                }
                () = wake.0.notified() => {}
                () = clock.sleep_until(next.unwrap_or(i64::MAX)), if next.is_some() => {}
                () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => {}
            }
        }
    })
}

/// The next batch the store published inside inserts; never, without them.
async fn next_batch(inserts: Option<&mut Publications>) -> Option<Batch> {
    match inserts {
        Some(inserts) => inserts.batches.recv().await,
        None => std::future::pending().await,
    }
}

/// Hands a batch published inside inserts to the feed once its inserts
/// are answered; if batches were dropped (or this one failed), the feed
/// reads what it missed from the log.
async fn hand_over(feed: &Feed, inserts: Option<&Publications>, batch: Batch) {
    batch.answered.wait().await;
    let missed = inserts.is_some_and(|i| i.missed.swap(false, Ordering::SeqCst));
    let handed = match feed.published(&batch.published).await {
        Ok(()) if missed => feed.catch_up().await,
        handed => handed,
    };
    if let Err(e) = handed {
        tracing::error!(error = %e, "handing published inserts to the feed failed");
    }
}

/// Publishes everything due; returns when to look next (UNIX milliseconds).
/// The publications of inserts committed before go to the feed first.
async fn publish_due(
    store: &dyn Store,
    feed: &Feed,
    clock: &Clock,
    mut inserts: Option<&mut Publications>,
) -> Result<Option<i64>, crate::store::StoreError> {
    loop {
        let published = store.publish_due(clock.now_secs(), BATCH).await?;
        if !published.is_empty() {
            while let Some(batch) = inserts.as_mut().and_then(|i| i.batches.try_recv().ok()) {
                hand_over(feed, inserts.as_deref(), batch).await;
            }
        }
        feed.published(&published).await?;
        if published.len() < BATCH {
            break;
        }
    }
    Ok(store.next_due().await?.map(|secs| secs.saturating_mul(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, Filter};
    use crate::hub::{Extras, Frame, Hub};
    use crate::store::SqliteStore;

    /// Inserts published while the scheduler was not reading, more than the
    /// store queues for it, are read back from the log: none lost, in order.
    #[tokio::test]
    async fn publications_the_store_could_not_queue_are_read_back_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(1024, 16, Arc::default()));
        let feed = Arc::new(Feed::new(store.clone(), hub, 1024, false));
        let (mut listener, start) =
            feed.subscribe(&Filter::default(), None, Extras::default()).await.unwrap();
        assert_eq!(start, 0);
        let n: i64 = 300; // one commit each: more than the store's queue of 256
        for i in 0..n {
            store.insert_event(Event::numbered(i), None, Some(0)).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let wake = Arc::default();
        let task = spawn(store, feed, Clock::System, wake, None, shutdown.clone());
        let mut seqs = Vec::new();
        while (seqs.len() as i64) < n {
            let frame = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("every publication reaches the hub")
                .unwrap();
            if let Frame::Event { seq, .. } = *frame {
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A commit's publications reach the hub once its answers are written
    /// (the `Answering` dropped), or after the bound if one never is. On
    /// tokio's paused clock, which moves only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn publications_wait_for_the_answers_of_their_commit() {
        use crate::store::{Answered, Inserted};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(1024, 16, Arc::default()));
        let feed = Arc::new(Feed::new(store.clone(), hub, 1024, false));
        let (mut listener, _) =
            feed.subscribe(&Filter::default(), None, Extras::default()).await.unwrap();
        let shutdown = CancellationToken::new();
        let task =
            spawn(store.clone(), feed, Clock::System, Arc::default(), None, shutdown.clone());
        for (i, held) in [(1, true), (2, false)] {
            let inserted = store.insert_event(Event::numbered(i), None, Some(0)).await;
            let Ok(Inserted::Published(answering)) = inserted else { panic!("{inserted:?}") };
            let started = tokio::time::Instant::now();
            let kept = held.then_some(answering); // else dropped: answered
            let frame = listener.recv().await.unwrap();
            assert!(matches!(*frame, Frame::Event { seq, .. } if seq == i));
            assert_eq!(started.elapsed() >= Answered::BOUND, held, "event {i}");
            drop(kept);
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
