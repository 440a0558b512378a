//! Durable storage of users and events.
//!
//! [`Store`] is what the rest of Broker needs from a database; each backend
//! lives in its own file with its own migrations. Every write is answered
//! only once it is durably committed. The store, not the process, assigns
//! publication sequence numbers, so several nodes can share one database.

#[macro_use]
mod sql;
mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use serde::{Deserialize, Serialize};

use crate::domain::{Event, Filter, NodeRoom, Published, User};
use crate::metrics::Metrics;
use crate::policy::{AccessState, Retention, Role, Rule};

pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, loose_permissions};

/// The longest message [`Store::signal`] carries (PostgreSQL's `NOTIFY`
/// takes less than 8,000 bytes).
pub const SIGNAL_BYTES: usize = 7_900;

/// How long a node that stopped saying it is alive keeps its presence
/// (it says so every [`PRESENCE_DEAD_MS`] / 3).
pub const PRESENCE_DEAD_MS: i64 = 6_000;

/// What a shared store tells a listening node of the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A message sent with [`Store::signal`].
    Signal(String),
    /// `<node> <collection ids, comma-separated>`: that node's presence
    /// changed in those collections (the nil node: some dead node's).
    Presence(String),
    /// The listening connection was (re)established: anything may have
    /// been missed.
    Listening,
}

/// A storage failure the client did not cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The username is already registered.
    #[error("username is taken")]
    UsernameTaken,
    /// The database cannot be reached for now (down, restarting, connection
    /// lost, too slow); clients are told to retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database failed; the detail is for the log only.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Where the data is kept.
#[derive(Debug, Clone, Copy)]
pub enum Location<'a> {
    /// A PostgreSQL database, shared by every node, through a pool of at
    /// most `pool` connections.
    Postgres {
        /// Its URL.
        url: &'a str,
        /// The pool size.
        pool: usize,
    },
    /// An embedded SQLite database in this folder.
    Sqlite(&'a std::path::Path),
}

/// Opens the store at `location`.
pub fn open(location: Location<'_>, metrics: Arc<Metrics>) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        Location::Postgres { url, pool } => Arc::new(PostgresStore::open(url, pool, metrics)?),
        Location::Sqlite(path) => Arc::new(SqliteStore::open_with_metrics(path, metrics)?),
    })
}

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// A user.
    User(User),
    /// A claimed collection with its owner, privacy and members.
    Collection {
        /// The collection's id.
        id: Uuid,
        /// Who may read and write it.
        #[serde(flatten)]
        rule: Rule,
    },
    /// An event with its sequence number, if published.
    Event {
        /// The event as the API shows it.
        event: Event,
        /// Its publication sequence number.
        seq: Option<i64>,
    },
    /// A webhook with its secret and where its delivery stands.
    Webhook(Webhook),
}

/// A change to the access rules or to an account. Each is one transaction
/// that also bumps the access version (see [`crate::access`]).
#[derive(Debug, Clone)]
pub enum Change {
    /// `owner` claims `collection`, private or not; refused if it is claimed
    /// already or holds events of other users.
    Claim {
        /// The collection.
        collection: Uuid,
        /// Its owner from now on.
        owner: Uuid,
        /// Whether only its owner and members may read it.
        private: bool,
    },
    /// Makes a claimed collection private or public.
    Privacy {
        /// The collection.
        collection: Uuid,
        /// Private from now on, or public.
        private: bool,
    },
    /// Sets how long a claimed collection keeps its events.
    Retention {
        /// The collection.
        collection: Uuid,
        /// Its retention from now on.
        retention: Retention,
    },
    /// Sets (or with `None` removes) the JSON Schema of an event name or
    /// pattern in a claimed collection.
    Schema {
        /// The collection.
        collection: Uuid,
        /// The event name or pattern.
        event: String,
        /// The schema, as JSON text.
        schema: Option<String>,
    },
    /// Gives `user` a role in a claimed collection, or takes it away.
    Member {
        /// The collection.
        collection: Uuid,
        /// The member.
        user: Uuid,
        /// The role, or `None` to remove the member.
        role: Option<Role>,
    },
    /// Revokes one token until it expires.
    Revoke {
        /// The token's id.
        jti: Uuid,
        /// Its expiry (UNIX seconds); it is forgotten after that.
        exp: i64,
    },
    /// Changes an account; only what is given changes.
    Account {
        /// The account.
        user: Uuid,
        /// A new password hash.
        password_hash: Option<String>,
        /// Disables or enables it.
        disabled: Option<bool>,
        /// Makes it an administrator or not.
        admin: Option<bool>,
        /// Revokes every token issued so far (a new token generation).
        revoke: bool,
    },
}

/// What became of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Done.
    Done,
    /// No such collection claimed, or no such user.
    NotFound,
    /// The collection is claimed already, by this user.
    Claimed(Uuid),
    /// The collection holds events of other users, so it cannot be claimed.
    WrittenByOthers,
}

/// A claimed collection with its members, as its owner and administrators see it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Collection {
    /// The collection's id.
    pub id: Uuid,
    /// The user who claimed it.
    pub owner: Member,
    /// Whether only the owner and members may read it.
    pub private: bool,
    /// The members, by username.
    pub members: Vec<Member>,
    /// Which events it keeps (`{}`: all of them).
    pub retention: Retention,
}

/// An insert's idempotency key: the same key from the same user stores
/// one event, however often it is sent.
#[derive(Debug, Clone)]
pub struct Key {
    /// The client's key.
    pub key: String,
    /// Now (UNIX seconds): when the key is stored.
    pub now: i64,
    /// Keys stored before this (UNIX seconds) are forgotten.
    pub since: i64,
}

/// What [`Store::insert_event`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// The event is stored; the scheduler publishes it when it is due.
    New,
    /// The event was due and is published with the insert, in the same
    /// transaction: its publication goes out through
    /// [`Store::publications`] once this [`Answering`] is dropped (with
    /// the answer).
    Published(Answering),
    /// Nothing: the key stored this event already.
    Again(Event),
}

/// Held by the answers to the inserts of one commit: that commit's
/// publications reach the streams once every answer is written (or has
/// waited [`Answered::wait`]'s bound), so that fanning an event out to
/// thousands of streams never holds up the answer to its own insert.
#[derive(Debug, Clone)]
pub struct Answering {
    _held: Arc<oneshot::Sender<()>>,
}

/// Resolves once every [`Answering`] of a commit is dropped.
#[derive(Debug)]
pub struct Answered(oneshot::Receiver<()>);

impl Answered {
    /// The longest a commit's publications wait for its answers.
    pub const BOUND: Duration = Duration::from_millis(20);

    /// A commit's two ends.
    pub fn pair() -> (Answering, Answered) {
        let (sender, receiver) = oneshot::channel();
        (Answering { _held: Arc::new(sender) }, Answered(receiver))
    }

    /// Waits until every answer is written (true), at most
    /// [`Answered::BOUND`] (false).
    pub async fn wait(self) -> bool {
        tokio::time::timeout(Self::BOUND, self.0).await.is_ok()
    }
}

/// What one commit published inside inserts.
#[derive(Debug)]
pub struct Batch {
    /// The publications, in sequence order.
    pub published: Vec<Published>,
    /// When the commit's inserts are answered.
    pub answered: Answered,
}

/// The publications a store makes inside inserts (see
/// [`Store::publications`]).
#[derive(Debug)]
pub struct Publications {
    /// One batch per commit, in sequence order.
    pub batches: mpsc::Receiver<Batch>,
    /// Set when a batch could not be queued (the reader was far behind):
    /// the reader must read the log from the store to catch up.
    pub missed: Arc<std::sync::atomic::AtomicBool>,
}

/// A deletion the retention sweep asks for; each deletes at most `limit`
/// rows, so that no write holds the database for long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trim {
    /// Published events of a collection and name but the latest `keep`.
    Latest {
        /// The collection.
        collection: Uuid,
        /// The event name.
        event: String,
        /// How many of the latest stay (at least 1).
        keep: i64,
    },
    /// Published and cancelled events of a collection with a timestamp
    /// before `before`, but the latest of each name.
    Older {
        /// The collection.
        collection: Uuid,
        /// UNIX seconds.
        before: i64,
    },
    /// Idempotency keys stored before `before` (UNIX seconds).
    Keys {
        /// UNIX seconds.
        before: i64,
    },
}

/// A webhook endpoint of a claimed collection, and where its delivery
/// stands (see [`crate::webhooks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// The collection whose events it receives.
    pub collection: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// The event names or `prefix*` patterns it receives (none: every event).
    pub events: Vec<String>,
    /// Its owner's words for it.
    pub description: String,
    /// The signing secret, `whsec_` and base64.
    pub secret: String,
    /// Whether delivery is stopped.
    pub paused: bool,
    /// Why delivery gave up, if it did.
    pub failing: Option<String>,
    /// The highest sequence number delivered (or passed over).
    pub delivered: i64,
    /// The latest attempts, as JSON.
    pub attempts: String,
    /// When it was registered (UNIX seconds).
    pub created: i64,
}

/// A user with a role in a collection.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The user's id.
    pub user_id: Uuid,
    /// The user's login name.
    pub username: String,
    /// The role; `null` for the owner.
    pub role: Option<Role>,
}

/// Event names kept one a line (names hold no control characters).
fn split_names(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// Now, in UNIX seconds by the system clock (to forget revoked tokens
/// once they have expired).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What became of a cancellation request.
#[derive(Debug)]
pub enum Cancel {
    /// The event is now cancelled and will never be published.
    Cancelled(Event),
    /// No event has that id.
    NotFound,
    /// The event belongs to another user; nothing changed.
    NotOwner,
    /// Too late: the event was already published.
    AlreadyPublished,
    /// The event was already cancelled.
    AlreadyCancelled,
}

/// Which events a listing holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOf {
    /// The events of a collection.
    Collection(Uuid),
    /// The events a user inserted.
    User(Uuid),
    /// No events (a list the caller may not read).
    Nothing,
}

/// A place in a listing: an event's timestamp and insertion position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The event's timestamp.
    pub timestamp: i64,
    /// Its insertion position (unique, increasing).
    pub pos: i64,
}

impl Position {
    /// Before every event.
    pub const START: Self = Self { timestamp: i64::MIN, pos: i64::MIN };
}

/// An event of a listing, with its place.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The event.
    pub event: Event,
    /// Where it stands; the next page starts after it.
    pub position: Position,
}

/// The latest published state, as sent to a subscriber on connect.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The latest published event of each selected event name (of each
    /// selected collection and name when the filter names collections), in
    /// sequence order.
    pub latest: Vec<Published>,
    /// The highest sequence number published when the snapshot was taken.
    pub head: i64,
}

/// Everything Broker asks of a database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a user; [`StoreError::UsernameTaken`] if the name is in use.
    async fn create_user(&self, user: User) -> Result<(), StoreError>;

    /// Looks a user up by login name.
    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;

    /// Looks a user up by id.
    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError>;

    /// Stores a new, unpublished event; with a key, only if the user's
    /// key did not store one since `key.since` (else answers that event).
    /// With `now` (UNIX seconds), a store that can (SQLite) publishes an
    /// event due by then in the same transaction when no other event is
    /// due (else the scheduler publishes it after those), and answers
    /// [`Inserted::Published`].
    async fn insert_event(
        &self,
        event: Event,
        key: Option<Key>,
        now: Option<i64>,
    ) -> Result<Inserted, StoreError>;

    /// Where the publications made by inserts go, once committed, one
    /// batch per commit, in sequence order: taken once, by the scheduler,
    /// which hands them to the feed. `None`: inserts never publish.
    fn publications(&self) -> Option<Publications> {
        None
    }

    /// Up to `limit` published events with a sequence number above
    /// `after`, in sequence order: (seq, collection, name).
    async fn published_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Uuid, String)>, StoreError>;

    /// The ids of collections holding events, above `after`, ascending.
    async fn collections_after(&self, after: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError>;

    /// Deletes what each trim selects, at most `limit` rows each, in one
    /// transaction; answers how many each deleted. Never the latest
    /// published event of a name, a pending event, or the last event
    /// inserted.
    async fn trim(&self, trims: Vec<Trim>, limit: usize) -> Result<Vec<u64>, StoreError>;

    /// Gives the space of deleted rows back to the file system (or marks it
    /// for reuse).
    async fn reclaim(&self) -> Result<(), StoreError>;

    /// Cancels `id` on behalf of `user_id` if it is theirs and still pending.
    async fn cancel_event(&self, id: Uuid, user_id: Uuid) -> Result<Cancel, StoreError>;

    /// Up to `limit` events of a listing after `after` (from the start
    /// without), by ascending timestamp then insertion.
    async fn list(
        &self,
        of: ListOf,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError>;

    /// Marks up to `limit` pending events due at `now` (UNIX seconds) as
    /// published, in timestamp then insertion order, giving each the next
    /// sequence number; returns them in that order.
    async fn publish_due(&self, now: i64, limit: usize) -> Result<Vec<Published>, StoreError>;

    /// When this node's scheduler should next publish (UNIX seconds), if
    /// anything is pending: the earliest pending timestamp, or later for a
    /// shared database where another node is expected to publish it (its
    /// own events are due at their timestamp, or at once if that is past).
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// The latest published event of each name the filter selects (of each
    /// collection and name when it names collections), and the sequence
    /// head, read consistently. With `public_only`, private
    /// collections are left out (as if they held nothing).
    async fn snapshot(&self, filter: &Filter, public_only: bool) -> Result<Snapshot, StoreError>;

    /// How many events wait for their time.
    async fn pending(&self) -> Result<u64, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The highest sequence number published so far (0 before the first).
    async fn head(&self) -> Result<i64, StoreError>;

    /// Up to `limit` published events with `after < seq <= until` that the
    /// filter selects, in sequence order.
    async fn replay(
        &self,
        after: i64,
        until: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Published>, StoreError>;

    /// Up to `limit` users with ids above `after`, by id (for export).
    async fn users_after(&self, after: Option<Uuid>, limit: usize)
    -> Result<Vec<User>, StoreError>;

    /// Up to `limit` events inserted after position `after`, in insertion
    /// order, each with its position and sequence number (for export).
    async fn events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event, Option<i64>)>, StoreError>;

    /// Whether the store holds no user and no event.
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Stores exported records as they are (ids, states, sequence numbers),
    /// events after every event already stored, in one transaction.
    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError>;

    /// The JWT secret of every node on this store: the one kept already,
    /// else `candidate`, kept from now on.
    async fn keep_secret(&self, candidate: String) -> Result<String, StoreError>;

    /// A value of the automatic-certificate (ACME) state: the account, the
    /// certificate, pending challenge answers. Kept in the data directory
    /// beside SQLite, in the shared database on PostgreSQL so that nodes
    /// share one certificate.
    async fn acme_get(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Sets (or with `None` removes) a value of the ACME state.
    async fn acme_put(&self, name: &str, value: Option<&str>) -> Result<(), StoreError>;

    /// Takes or extends the lease `name` that lets one node do a job
    /// (order certificates, sweep for retention): true if `holder` now
    /// holds it until `until` (UNIX seconds), because it was free, had
    /// expired at `now`, or was `holder`'s already. A store no other node
    /// shares always grants it.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;

    /// [`Store::lease`] for each of `names` at once: those `holder` now
    /// holds. A shared store takes them all in one statement.
    async fn leases(
        &self,
        names: Vec<String>,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            if self.lease(&name, holder, now, until).await? {
                held.push(name);
            }
        }
        Ok(held)
    }

    /// Failed logins shared by the nodes of a cluster (keys are digests of
    /// names or addresses, times UNIX milliseconds): adds this node's new
    /// failures, each at `now` (a count whose last failure is more than
    /// `window` old starts again), sets the `cleared` keys' counts to 0 at
    /// `now`, forgets keys idle for a whole window, and answers every count
    /// changed at or after `since`. A store no other node shares keeps none.
    async fn login_failures(
        &self,
        _added: Vec<(i64, i32)>,
        _cleared: Vec<i64>,
        _now: i64,
        _since: i64,
        _window: i64,
    ) -> Result<Vec<(i64, i32, i64)>, StoreError> {
        Ok(Vec::new())
    }

    /// Takes a token at `now` from the bucket `key` (a digest) that the
    /// nodes share: `burst` at once, refilled at `per_ms` a millisecond;
    /// buckets idle for `idle_ms` (full again) are forgotten. Answers
    /// whether a token was taken and the tokens left; `None` from a store
    /// no other node shares (the caller counts in memory).
    async fn take_token(
        &self,
        _key: i64,
        _now: i64,
        _burst: f64,
        _per_ms: f64,
        _idle_ms: i64,
    ) -> Result<Option<(bool, f64)>, StoreError> {
        Ok(None)
    }

    /// The webhooks of a collection (of every collection with `None`),
    /// oldest first.
    async fn webhooks(&self, collection: Option<Uuid>) -> Result<Vec<Webhook>, StoreError>;

    /// Stores a new webhook unless its collection has `limit` already
    /// (false then): counted and stored as one step, so that concurrent
    /// registrations, on any node, never pass the limit together.
    async fn add_webhook(&self, hook: Webhook, limit: usize) -> Result<bool, StoreError>;

    /// Stores what its owner changes of a webhook (url, events,
    /// description, secret, paused, failing); false if there is no such
    /// webhook.
    async fn edit_webhook(&self, hook: Webhook) -> Result<bool, StoreError>;

    /// Records how far delivery went and the latest attempts; with
    /// `failing`, delivery gave up and the webhook is paused.
    async fn webhook_progress(
        &self,
        id: Uuid,
        delivered: i64,
        attempts: String,
        failing: Option<String>,
    ) -> Result<(), StoreError>;

    /// Removes a webhook; false if there was none.
    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Applies a change to the access rules or an account.
    async fn change(&self, change: Change) -> Result<Changed, StoreError>;

    /// The access version: it moves with every [`Store::change`].
    async fn access_version(&self) -> Result<i64, StoreError>;

    /// Every access rule, with the version it is consistent with.
    async fn access(&self) -> Result<AccessState, StoreError>;

    /// A claimed collection with its owner and members.
    async fn collection(&self, id: Uuid) -> Result<Option<Collection>, StoreError>;

    /// Up to `limit` users whose name contains `search` (ignoring case),
    /// by name, after the name `after`.
    async fn find_users(
        &self,
        search: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<User>, StoreError>;

    /// Starts ringing `published` when other nodes on the same database
    /// publish, and handing `notices` what the nodes (this one too) say
    /// to each other, until `shutdown`. Returns how often the caller must
    /// look anyway (notifications can be lost, and future events inserted
    /// elsewhere are not notified), or `None` for a store no other node
    /// shares, where nothing happens that this node does not do itself.
    fn listen(
        &self,
        published: Arc<Notify>,
        notices: mpsc::Sender<Notice>,
        shutdown: CancellationToken,
    ) -> Option<Duration> {
        let _ = (published, notices, shutdown);
        None
    }

    /// Replaces what `node` says of the presence in these collections,
    /// says that it is alive, and tells the other nodes
    /// ([`Notice::Presence`]). Only a shared store keeps it.
    async fn put_presence(
        &self,
        node: Uuid,
        rooms: Vec<(Uuid, NodeRoom)>,
    ) -> Result<(), StoreError> {
        let _ = (node, rooms);
        Ok(())
    }

    /// What the live nodes other than `node` say of the presence in
    /// `collections`.
    async fn others_presence(
        &self,
        node: Uuid,
        collections: Vec<Uuid>,
    ) -> Result<HashMap<Uuid, NodeRoom>, StoreError> {
        let _ = (node, collections);
        Ok(HashMap::new())
    }

    /// Says that `node` is alive, and forgets the presence of nodes that
    /// have not said so for [`PRESENCE_DEAD_MS`] (telling the others).
    /// Returns whether the store had forgotten `node` (it must say again
    /// everything it says).
    async fn alive(&self, node: Uuid) -> Result<bool, StoreError> {
        let _ = node;
        Ok(false)
    }

    /// Sends `message` to every node listening on the same database, at
    /// most once, never stored ([`SIGNAL_BYTES`] at most); a store no
    /// other node shares has nobody to tell.
    async fn signal(&self, message: String) -> Result<(), StoreError> {
        let _ = message;
        Ok(())
    }
}
