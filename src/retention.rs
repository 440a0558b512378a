//! Retention: deleting, in the background, the events that collections no
//! longer keep, and the idempotency keys past their window.
//!
//! One task per node sweeps every [`ROUND`]. It follows the log by
//! sequence number: each newly published event whose collection keeps only
//! the latest N of each name trims that collection and name (so a busy name
//! is trimmed as it goes, an idle one costs nothing). Every [`AGE_EVERY`]
//! seconds, old idempotency keys are forgotten and ages checked, collection
//! by collection: claimed ones with a `max_age`, and, under a server-wide
//! `--retention` age, every other collection holding events (listed once
//! at start, then learnt from the log). Deletions run in small
//! transactions ([`LIMIT`] rows per trim, [`CHUNK`] trims each), so inserts
//! and streams never wait long behind them; the store never deletes a pending event or the latest published
//! event of a name, so the state a new stream syncs never changes, and a
//! resumed stream misses nothing it needs (see the README). A change of
//! retention rules sweeps the whole log again from the start.
//!
//! On a shared database one node sweeps at a time: the one holding the
//! store's `retention` lease, renewed every round and taken over by
//! another node within [`LEASE`] seconds of its holder's end (which then
//! follows the log again from its start).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::access::Access;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy::Retention;
use crate::store::{Store, StoreError, Trim};

/// How often a node sweeps (at once again while there is a backlog).
pub const ROUND: Duration = Duration::from_secs(1);
/// Seconds between two age checks (by the app's clock).
pub const AGE_EVERY: i64 = 30;
/// Most rows one trim deletes in one transaction.
pub const LIMIT: usize = 500;
/// Most trims in one transaction (about a millisecond of the writer's).
const CHUNK: usize = 16;
/// Published events read per round.
const SCAN: usize = 20_000;
/// Collections listed per round while the first listing runs.
const LISTING: usize = 2_000;
/// How long the sweeping node's lease lasts, in seconds, unless renewed.
pub const LEASE: i64 = 10;
/// Least time between two space reclaims.
const RECLAIM: Duration = Duration::from_secs(30);

/// The sweeper's state between rounds.
pub struct Sweeper {
    store: Arc<dyn Store>,
    /// This node, as the lease's holder.
    holder: String,
    /// The node's copy of the rules, whose retention the sweep follows.
    access: Arc<Access>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// For collections nobody claimed.
    default: Retention,
    /// How long idempotency keys live, in seconds.
    key_window: i64,
    /// The highest sequence number examined.
    cursor: i64,
    /// The rules the cursor went by, and their access version.
    rules: HashMap<Uuid, Retention>,
    version: i64,
    /// Collections seen holding events (kept under a default age only).
    known: BTreeSet<Uuid>,
    /// Where the first listing of `known` stands (`None`: done).
    listing: Option<Uuid>,
    /// Trims that hit [`LIMIT`]: more to delete next round.
    unfinished: Vec<Trim>,
    /// Keep-latest trims of names whose events up to this sequence number
    /// an active webhook has yet to deliver: done again once it has.
    held: HashMap<(Uuid, String), (i64, i64)>,
    /// When ages were last checked (UNIX seconds by the app's clock).
    aged: Option<i64>,
    reclaimed: Instant,
    since_reclaim: u64,
}

impl Sweeper {
    /// A sweeper of `store` by the rules `access` holds, counting what it
    /// deletes in `metrics`.
    pub fn new(
        store: Arc<dyn Store>,
        holder: String,
        access: Arc<Access>,
        metrics: Arc<Metrics>,
        clock: Clock,
        default: Retention,
        key_window: i64,
    ) -> Self {
        Self {
            store,
            holder,
            access,
            metrics,
            clock,
            default,
            key_window,
            cursor: 0,
            rules: HashMap::new(),
            version: i64::MIN,
            known: BTreeSet::new(),
            listing: default.max_age.map(|_| Uuid::nil()),
            unfinished: Vec::new(),
            held: HashMap::new(),
            aged: None,
            reclaimed: Instant::now(),
            since_reclaim: 0,
        }
    }

    /// Starts sweeping every [`ROUND`] until `shutdown`.
    pub fn spawn(mut self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let more = match self.round().await {
                    Ok(more) => {
                        failing = false;
                        more
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "retention sweep failed; retrying");
                        }
                        false
                    }
                };
                let pause = if more { Duration::ZERO } else { ROUND };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        })
    }

    /// One sweep; answers whether work is left for another at once.
    pub async fn round(&mut self) -> Result<bool, StoreError> {
        let now = self.clock.now_secs();
        if !self.store.lease("retention-lease", &self.holder, now, now + LEASE).await? {
            // Another node sweeps; should this one take over, it starts afresh.
            (self.cursor, self.aged) = (0, None);
            return Ok(false);
        }
        let access = self.access.current();
        if access.version != self.version {
            self.version = access.version;
            let rules: HashMap<Uuid, Retention> =
                access.collections.iter().map(|(id, rule)| (*id, rule.retention)).collect();
            if rules != self.rules {
                // New limits apply to everything stored: start again, and
                // drop the trims made by the old ones (a collection set back
                // to keep everything must lose nothing more).
                (self.cursor, self.aged, self.rules) = (0, None, rules);
                self.unfinished.clear();
                self.held.clear();
            }
        }
        let of = |c: &Uuid| self.rules.get(c).copied().unwrap_or(self.default);
        let mut trims: Vec<Trim> = std::mem::take(&mut self.unfinished);

        let by_count = self.default.keep_latest.is_some()
            || self.rules.values().any(|r| r.keep_latest.is_some());
        let by_age = self.default.max_age.is_some();
        let mut more = false;
        if by_count || by_age {
            let published = self.store.published_after(self.cursor, SCAN).await?;
            more |= published.len() == SCAN;
            let mut names = HashMap::new();
            for (seq, collection, event) in published {
                self.cursor = seq;
                if by_age && !self.rules.contains_key(&collection) {
                    self.known.insert(collection);
                }
                if let Some(keep) = of(&collection).keep_latest {
                    names.insert((collection, event), (keep, seq));
                }
            }
            // Webhooks behind: what they have yet to receive stays (the
            // store sees to it), and the trim is done again once they have.
            let behind = self.webhooks_behind().await?;
            let mut held = HashMap::new();
            let old = std::mem::take(&mut self.held).into_iter().map(|(k, v)| (k, v, false));
            for ((collection, event), (keep, seq), new) in
                old.chain(names.into_iter().map(|(k, v)| (k, v, true)))
            {
                let waits = behind.get(&collection).is_some_and(|delivered| *delivered < seq);
                if waits {
                    held.insert((collection, event.clone()), (keep, seq));
                }
                if new || !waits {
                    trims.push(Trim::Latest { collection, event, keep });
                }
            }
            self.held = held;
        }
        if let Some(after) = self.listing {
            let listed = self.store.collections_after(after, LISTING).await?;
            self.listing = listed.last().copied().filter(|_| listed.len() == LISTING);
            self.known.extend(listed.into_iter().filter(|c| !self.rules.contains_key(c)));
        }
        if self.aged.is_none_or(|aged| now - aged >= AGE_EVERY) {
            self.aged = Some(now);
            trims.push(Trim::Keys { before: now - self.key_window });
            let claimed = self.rules.iter().filter_map(|(c, r)| Some((*c, r.max_age?)));
            let unclaimed =
                self.default.max_age.map(|age| self.known.iter().map(move |c| (*c, age)));
            for (collection, age) in claimed.chain(unclaimed.into_iter().flatten()) {
                trims.push(Trim::Older { collection, before: now.saturating_sub(age) });
            }
        }

        let mut deleted = 0;
        while !trims.is_empty() {
            let chunk: Vec<Trim> = trims.drain(..trims.len().min(CHUNK)).collect();
            let counts = self.store.trim(chunk.clone(), LIMIT).await?;
            for (trim, n) in chunk.into_iter().zip(counts) {
                if matches!(trim, Trim::Latest { .. } | Trim::Older { .. }) {
                    deleted += n;
                }
                if n as usize >= LIMIT {
                    self.unfinished.push(trim);
                }
            }
        }
        more |= !self.unfinished.is_empty();
        Metrics::add(&self.metrics.expired, deleted);
        self.since_reclaim += deleted;
        if self.since_reclaim > 0 && self.reclaimed.elapsed() >= RECLAIM {
            self.store.reclaim().await?;
            (self.reclaimed, self.since_reclaim) = (Instant::now(), 0);
        }
        Ok(more)
    }

    /// The lowest sequence number delivered by an active webhook of each
    /// collection that has one.
    async fn webhooks_behind(&self) -> Result<HashMap<Uuid, i64>, StoreError> {
        let mut behind: HashMap<Uuid, i64> = HashMap::new();
        for hook in self.store.webhooks(None).await?.into_iter().filter(|h| !h.paused) {
            let delivered = behind.entry(hook.collection).or_insert(i64::MAX);
            *delivered = (*delivered).min(hook.delivered);
        }
        Ok(behind)
    }
}
