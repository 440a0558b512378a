//! The PostgreSQL backend: one database shared by every node of a cluster.
//!
//! Client crates: `tokio-postgres`, the async client without an ORM, which
//! hands LISTEN notifications straight out of its connection future, and
//! `deadpool-postgres`, a small pool that replaces broken connections. No
//! TLS stack is linked: connect over a local socket or a trusted network.
//!
//! Inserts are grouped: concurrent `POST /insert`s queue on a channel and
//! one writer task commits whatever has queued as one multi-row INSERT (one
//! commit, one fsync), answering each insert after it, while the next group
//! gathers. (One writer per node beat three by ~20 % in bench/cluster.sh:
//! larger groups, fewer commits for the database to make.)
//!
//! **Sequence numbers become visible in order.** Publication locks the one
//! row of `head` (`SELECT … FOR UPDATE`), gives the due events the numbers
//! after it, moves it and commits. The next publication, on any node,
//! cannot read `head` before that commit is visible, so a transaction that
//! holds number `n` always commits before any transaction can take `n + 1`.
//! A reader that sees number `n` therefore already sees every number below
//! it, and tailing the log with `seq > last` never passes over an event
//! that becomes visible later (the pitfall of plain sequences, whose values
//! are taken before their transactions commit).
//!
//! NOTIFY is only a wake-up: `broker_published` after each publication. A
//! node that misses notifications catches up from the last sequence number
//! it delivered, and also looks every [`LOG_POLL`] anyway. Inserts notify
//! nobody: the inserting node's scheduler publishes what is due at once, and
//! the other nodes' schedulers see future events when they next look (every
//! [`LOG_POLL`]), which is all a takeover needs; a NOTIFY per insert would
//! serialise the commits (PostgreSQL takes one lock to queue notifications).
//!
//! Each event records the node it was inserted on. Whoever publishes takes
//! every due event, in timestamp then insertion order (so an event inserted
//! after another was acknowledged, through any node, never goes out before
//! it), but a node's scheduler only wakes for its own events, and for other
//! nodes' once they are [`TAKEOVER`] seconds overdue: nodes do not all
//! contend for the head lock on every publication, and a dead node's
//! events still go out within two seconds.
//!
//! Every operation gives up after [`OP_TIMEOUT`] with
//! [`StoreError::Unavailable`], which clients see as 503 + `Retry-After`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde_json::value::RawValue;
use tokio::sync::{Notify, OnceCell, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls, Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Cancel, Change, Changed, Collection, Inserted, Key, ListOf, Listed, Member, Notice,
    PRESENCE_DEAD_MS, Position, Record, Snapshot, Store, StoreError, Trim, Webhook,
};
use crate::domain::{Event, Filter, NodeRoom, Present, Published, User};
use crate::metrics::Metrics;
use crate::policy::{AccessState, Retention, Role, Rule, Standing};

/// Schema migrations, applied in order; `broker_migrations` records those done.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_node.sql"),
    include_str!("migrations/postgres/0003_access.sql"),
    include_str!("migrations/postgres/0004_presence.sql"),
    include_str!("migrations/postgres/0005_retention.sql"),
    include_str!("migrations/postgres/0006_schemas.sql"),
    include_str!("migrations/postgres/0007_webhooks.sql"),
    include_str!("migrations/postgres/0008_login_failures.sql"),
    include_str!("migrations/postgres/0009_rates.sql"),
];
/// The advisory lock that serialises migrations of nodes starting at once.
const MIGRATION_LOCK: i64 = 0x6272_6f6b_6572; // "broker"
/// How long any database operation may take before it is given up.
pub const OP_TIMEOUT: Duration = Duration::from_secs(4);
/// How often a node looks for other nodes' work even without notifications.
pub const LOG_POLL: Duration = Duration::from_secs(1);
/// Seconds an event inserted on another node may be overdue before this
/// node wakes to publish it: the other node is then taken to be gone.
const TAKEOVER: i64 = 1;
/// Most inserts committed in one statement.
const MAX_BATCH: usize = 1024;
/// Inserts that may wait for a writer before callers are slowed down.
const QUEUE: usize = 8192;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let lost = e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
            || e.code().is_some_and(|c| {
                c.code().starts_with("08")
                    || c.code().starts_with("57P")
                    || *c == SqlState::TOO_MANY_CONNECTIONS
            });
        // tokio-postgres' own text is only "db error" or "error connecting".
        let text = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
            (None, Some(source)) => format!("{e}: {source}"),
            (None, None) => e.to_string(),
        };
        if lost { Self::Unavailable(text) } else { Self::Backend(text) }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// An insert waiting for its group commit.
struct Queued {
    event: Event,
    key: Option<Key>,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// PostgreSQL storage, shared by any number of nodes.
pub struct PostgresStore {
    pool: Pool,
    config: tokio_postgres::Config,
    schema: Arc<OnceCell<()>>,
    inserts: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
    /// This node's id, recorded on the events it inserts.
    node: Uuid,
}

impl PostgresStore {
    /// A store on the database at `url` with at most `pool_size`
    /// connections (plus one for notifications). Connects lazily: the
    /// schema is migrated by the first operation that reaches the database,
    /// so a node starts while the database is still down.
    pub fn open(url: &str, pool_size: usize, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Backend(format!("invalid database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(OP_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("broker");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the pool: {e}")))?;
        let (inserts, queue) = mpsc::channel(QUEUE);
        // Half the pool commits inserts; the rest serves reads and publication.
        let node = Uuid::new_v4();
        tokio::spawn(insert_loop(pool.clone(), queue, node, metrics.clone()));
        Ok(Self { pool, config, schema: Arc::default(), inserts, metrics, node })
    }

    /// A pooled connection to a migrated database.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.schema.get_or_try_init(|| migrate(&self.pool)).await?;
        Ok(self.pool.get().await?)
    }

    /// Runs `work` on a pooled connection, giving up after [`OP_TIMEOUT`].
    async fn run<T>(
        &self,
        work: impl AsyncFnOnce(deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        within(async { work(self.client().await?).await }).await
    }

    /// Like [`PostgresStore::run`] for a write, recording how long it took.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.run(work).await;
        self.metrics.commit(started.elapsed());
        result
    }
}

/// `work`, or [`StoreError::Unavailable`] if it takes over [`OP_TIMEOUT`].
async fn within<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!("the database did not answer within {OP_TIMEOUT:?}")))
    })
}

/// Applies the migrations not yet applied, in one transaction holding an
/// advisory lock, so that nodes starting together migrate once.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS broker_migrations (
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: i32 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM broker_migrations", &[]).await?.get(0);
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {done}, newer than this broker knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(version + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO broker_migrations (version) VALUES ($1)", &[&version]).await?;
        tracing::info!(version, "applied a database migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Takes queued inserts and commits them in groups: everything that queued
/// while the previous group was committing.
async fn insert_loop(
    pool: Pool,
    mut queue: mpsc::Receiver<Queued>,
    node: Uuid,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = within(insert_batch(&pool, &batch, node)).await;
        metrics.commit(started.elapsed());
        for (i, queued) in batch.into_iter().enumerate() {
            let answer = result.as_ref().map_err(Clone::clone);
            let _ = queued.reply.send(answer.map(|a| a.get(i).cloned().unwrap_or(Inserted::New)));
        }
    }
}

/// Commits a group of inserts in one transaction, answering each. Keyed
/// inserts first claim their keys, in key order (so that two nodes' groups
/// never wait on each other's keys in a cycle); a key stored already,
/// committed or not, answers its event and stores nothing.
async fn insert_batch(
    pool: &Pool,
    batch: &[Queued],
    node: Uuid,
) -> Result<Vec<Inserted>, StoreError> {
    let mut client = pool.get().await?;
    let mut answers = vec![Inserted::New; batch.len()];
    if !batch.iter().any(|q| q.key.is_some()) {
        insert_events(&client, batch.iter().map(|q| &q.event), node).await?;
        return Ok(answers);
    }
    let tx = client.transaction().await?;
    let mut keyed: Vec<(usize, &Key)> =
        batch.iter().enumerate().filter_map(|(i, q)| Some((i, q.key.as_ref()?))).collect();
    keyed.sort_by_key(|(i, key)| (batch[*i].event.user_id, &key.key));
    let claim = tx.prepare_cached(sql::CLAIM_KEY).await?;
    let stored = tx.prepare_cached(sql::KEY_EVENT).await?;
    for (i, Key { key, now, since }) in keyed {
        let event = &batch[i].event;
        let json = serde_json::to_string(event).map_err(|e| StoreError::Backend(e.to_string()))?;
        let params: [&(dyn ToSql + Sync); 5] = [&event.user_id, key, now, &json, since];
        if tx.query_opt(&claim, &params).await?.is_none() {
            let row = tx.query_one(&stored, &[&event.user_id, key, since]).await?;
            answers[i] = Inserted::Again(stored_event(row.try_get(0)?)?);
        }
    }
    let new = batch.iter().zip(&answers).filter(|(_, a)| matches!(a, Inserted::New));
    insert_events(&tx, new.map(|(q, _)| &q.event), node).await?;
    tx.commit().await?;
    Ok(answers)
}

/// An event as an idempotency key stored it.
fn stored_event(json: &str) -> Result<Event, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Backend(format!("a stored key: {e}")))
}

/// Inserts events in one statement, in the order given.
async fn insert_events(
    client: &impl deadpool_postgres::GenericClient,
    events: impl Iterator<Item = &Event> + Clone,
    node: Uuid,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = events.clone().map(|e| e.id).collect();
    let users: Vec<Uuid> = events.clone().map(|e| e.user_id).collect();
    let collections: Vec<Uuid> = events.clone().map(|e| e.collection_id).collect();
    let names: Vec<&str> = events.clone().map(|e| e.event.as_str()).collect();
    let timestamps: Vec<i64> = events.clone().map(|e| e.timestamp).collect();
    let data: Vec<&str> = events.map(|e| e.data.get()).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&ids, &users, &collections, &names, &timestamps, &data, &node];
    client.execute(&client.prepare_cached(sql::INSERT_EVENTS).await?, &params).await?;
    Ok(())
}

fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let data: String = row.try_get(7)?;
    Ok(Event {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        collection_id: row.try_get(2)?,
        event: row.try_get(3)?,
        timestamp: row.try_get(4)?,
        published: row.try_get(5)?,
        cancelled: row.try_get(6)?,
        data: RawValue::from_string(data)
            .map_err(|e| StoreError::Backend(format!("stored data is not JSON: {e}")))?,
    })
}

fn published_from_row(row: &Row) -> Result<Published, StoreError> {
    Ok(Published { event: event_from_row(row)?, seq: row.try_get(8)? })
}

fn webhook_from_row(row: &Row) -> Result<Webhook, StoreError> {
    Ok(Webhook {
        id: row.try_get(0)?,
        collection: row.try_get(1)?,
        url: row.try_get(2)?,
        events: super::split_names(row.try_get(3)?),
        description: row.try_get(4)?,
        secret: row.try_get(5)?,
        paused: row.try_get(6)?,
        failing: row.try_get(7)?,
        delivered: row.try_get(8)?,
        attempts: row.try_get(9)?,
        created: row.try_get(10)?,
    })
}

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        collection_id: row.try_get(3)?,
        admin: row.try_get(4)?,
        disabled: row.try_get(5)?,
        generation: row.try_get(6)?,
    })
}

fn role_from(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Backend(format!("unknown role {text:?}")))
}

fn member_from_row(row: &Row) -> Result<Member, StoreError> {
    let role: Option<String> = row.try_get(2)?;
    let role = role.as_deref().map(role_from).transpose()?;
    Ok(Member { user_id: row.try_get(0)?, username: row.try_get(1)?, role })
}

/// Stores one webhook as it is.
async fn insert_webhook(
    tx: &impl tokio_postgres::GenericClient,
    h: &Webhook,
) -> Result<u64, tokio_postgres::Error> {
    let events = h.events.join("\n");
    let params: [&(dyn ToSql + Sync); 11] = [
        &h.id,
        &h.collection,
        &h.url,
        &events,
        &h.description,
        &h.secret,
        &h.paused,
        &h.failing,
        &h.delivered,
        &h.attempts,
        &h.created,
    ];
    tx.execute(sql::INSERT_WEBHOOK, &params).await
}

/// Stores one user as it is.
async fn insert_user(
    tx: &impl tokio_postgres::GenericClient,
    u: &User,
) -> Result<u64, tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 7] = [
        &u.id,
        &u.username,
        &u.password_hash,
        &u.collection_id,
        &u.admin,
        &u.disabled,
        &u.generation,
    ];
    tx.execute(sql::INSERT_USER, &params).await
}

/// Stores a claimed collection with its members, as it is.
async fn insert_collection(tx: &Transaction<'_>, id: Uuid, rule: &Rule) -> Result<(), StoreError> {
    let Retention { max_age, keep_latest } = rule.retention;
    let params: [&(dyn ToSql + Sync); 5] =
        [&id, &rule.owner, &rule.private, &max_age, &keep_latest];
    tx.execute(sql::INSERT_COLLECTION, &params).await?;
    for (user, role) in &rule.members {
        tx.execute(sql::SET_MEMBER, &[&id, user, &role.as_str()]).await?;
    }
    for (event, schema) in &rule.schemas {
        tx.execute(sql::SET_SCHEMA, &[&id, event, &schema.to_string()]).await?;
    }
    Ok(())
}

/// Applies `change` in `tx` and bumps the access version.
async fn apply(tx: &Transaction<'_>, change: Change) -> Result<Changed, StoreError> {
    let claimed = async |collection: Uuid| -> Result<Option<Uuid>, StoreError> {
        Ok(tx.query_opt(sql::CLAIMED_BY, &[&collection]).await?.map(|r| r.get(0)))
    };
    let outcome = match change {
        Change::Claim { collection, owner, private } => {
            match tx.execute(sql::CLAIM, &[&collection, &owner, &private]).await? {
                0 => claimed(collection).await?.map_or(Changed::WrittenByOthers, Changed::Claimed),
                _ => Changed::Done,
            }
        }
        Change::Privacy { collection, private } => {
            match tx.execute(sql::SET_PRIVATE, &[&collection, &private]).await? {
                0 => Changed::NotFound,
                _ => Changed::Done,
            }
        }
        Change::Retention { collection, retention: Retention { max_age, keep_latest } } => {
            match tx.execute(sql::SET_RETENTION, &[&collection, &max_age, &keep_latest]).await? {
                0 => Changed::NotFound,
                _ => Changed::Done,
            }
        }
        Change::Schema { collection, event, schema } => {
            if claimed(collection).await?.is_none() {
                Changed::NotFound
            } else {
                match schema {
                    Some(schema) => {
                        tx.execute(sql::SET_SCHEMA, &[&collection, &event, &schema]).await?
                    }
                    None => tx.execute(sql::REMOVE_SCHEMA, &[&collection, &event]).await?,
                };
                Changed::Done
            }
        }
        Change::Member { collection, user, role } => {
            if claimed(collection).await?.is_none() {
                Changed::NotFound
            } else {
                match role {
                    Some(role) => {
                        tx.execute(sql::SET_MEMBER, &[&collection, &user, &role.as_str()]).await?
                    }
                    None => tx.execute(sql::REMOVE_MEMBER, &[&collection, &user]).await?,
                };
                Changed::Done
            }
        }
        Change::Revoke { jti, exp } => {
            tx.execute(sql::PRUNE_REVOKED, &[&super::unix_now()]).await?;
            tx.execute(sql::REVOKE, &[&jti, &exp]).await?;
            Changed::Done
        }
        Change::Account { user, password_hash, disabled, admin, revoke } => {
            let params: [&(dyn ToSql + Sync); 5] =
                [&user, &password_hash, &disabled, &admin, &i64::from(revoke)];
            match tx.execute(sql::UPDATE_ACCOUNT, &params).await? {
                0 => Changed::NotFound,
                _ => Changed::Done,
            }
        }
    };
    if outcome == Changed::Done {
        tx.execute(sql::BUMP_ACCESS, &[]).await?;
    }
    Ok(outcome)
}

/// A read-only transaction that sees one snapshot of the database.
async fn consistent_read(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let builder = client.build_transaction();
    Ok(builder.isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?)
}

fn rows<T>(rows: &[Row], from: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(from).collect()
}

/// Every statement, in one place.
mod sql {
    pub use crate::store::sql::postgres::*;

    /// A page of users whose name contains $1, ignoring case.
    pub const FIND_USERS: &str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username > $2 AND strpos(lower(username), lower($1)) > 0",
        " ORDER BY username LIMIT $3"
    );
    pub const RESTRICTED_USERS: &str =
        "SELECT id, generation, disabled FROM users WHERE generation > 0 OR disabled";
    pub const COLLECTION: &str = "SELECT c.owner, COALESCE(u.username, ''), NULL::text, c.private,
         c.max_age, c.keep_latest
         FROM collections c LEFT JOIN users u ON u.id = c.owner WHERE c.id = $1";
    /// Locks a claimed collection's row until the transaction ends.
    pub const LOCK_COLLECTION: &str = "SELECT 1 FROM collections WHERE id = $1 FOR UPDATE";
    /// A group of inserts in one statement, in the order given (which sets
    /// `pos`).
    pub const INSERT_EVENTS: &str = "INSERT INTO events
            (id, user_id, collection_id, event, timestamp, data, node, due)
        SELECT id, user_id, collection_id, event, timestamp, data, $7,
               GREATEST(timestamp, EXTRACT(EPOCH FROM now())::bigint)
        FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], $6::text[])
             WITH ORDINALITY AS t(id, user_id, collection_id, event, timestamp, data, n)
        ORDER BY n";
    /// Claims a user's key, or takes over a forgotten one; answers a row
    /// only if it did. A key another transaction holds waits for it.
    pub const CLAIM_KEY: &str = "INSERT INTO idempotency (user_id, key, created, event)
        VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, key) DO UPDATE
        SET created = EXCLUDED.created, event = EXCLUDED.event WHERE idempotency.created < $5
        RETURNING true";
    /// Cancels only a pending event of the user's: the row lock makes
    /// cancel and publication of one event exclude each other.
    pub const CANCEL: &str = concat!(
        "UPDATE events SET cancelled = true WHERE id = $1 AND user_id = $2",
        " AND NOT published AND NOT cancelled RETURNING ",
        event_columns!()
    );
    /// A page of a collection's events after a (timestamp, pos) position.
    pub const BY_COLLECTION: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", pos FROM events WHERE collection_id = $1 AND (timestamp, pos) > ($2, $3)",
        " ORDER BY timestamp, pos LIMIT $4"
    );
    /// A page of a user's events after a (timestamp, pos) position.
    pub const BY_USER: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", pos FROM events WHERE user_id = $1 AND (timestamp, pos) > ($2, $3)",
        " ORDER BY timestamp, pos LIMIT $4"
    );
    /// Taken first by every publication: see the module documentation.
    pub const LOCK_HEAD: &str = "SELECT seq FROM head FOR UPDATE";
    /// Every due event, whichever node inserted it: publishing in one
    /// order keeps cause before effect (an event inserted after another
    /// was acknowledged, through any node, has a later `pos`).
    pub const DUE: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", pos FROM events WHERE NOT published AND NOT cancelled AND timestamp <= $1",
        " ORDER BY timestamp, pos LIMIT $2 FOR UPDATE"
    );
    pub const MARK_PUBLISHED: &str = "UPDATE events e SET published = true, seq = v.seq
        FROM UNNEST($1::int8[], $2::int8[]) AS v(pos, seq) WHERE e.pos = v.pos";
    pub const SET_LATEST: &str = "INSERT INTO latest (collection_id, event, seq)
        SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[])
        ON CONFLICT (collection_id, event) DO UPDATE SET seq = excluded.seq";
    pub const SET_HEAD: &str =
        "UPDATE head SET seq = $1 RETURNING pg_notify('broker_published', seq::text)";
    pub const HEAD: &str = "SELECT seq FROM head";
    /// The database's clock in milliseconds: the one every node agrees on.
    macro_rules! now_ms {
        () => {
            "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        };
    }
    /// Says a node is alive; answers whether it was not known (any more).
    pub const ALIVE: &str = concat!(
        "INSERT INTO presence_nodes (node, seen) VALUES ($1, ",
        now_ms!(),
        ") ON CONFLICT (node) DO UPDATE SET seen = EXCLUDED.seen RETURNING xmax = 0"
    );
    pub const PRESENCE_FORGET: &str =
        "DELETE FROM presence WHERE node = $1 AND collection_id = ANY($2)";
    pub const PRESENCE_PUT: &str = "INSERT INTO presence
        (collection_id, node, user_id, username, connections, since)
        SELECT c, $2, u, n, k, s FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::int[], $6::bigint[])
        AS t(c, u, n, k, s)";
    pub const PRESENCE_NOTIFY: &str =
        "SELECT pg_notify('broker_presence', m) FROM unnest($1::text[]) AS m";
    pub const PRESENCE_OF_OTHERS: &str = concat!(
        "SELECT p.collection_id, p.user_id, p.username, p.connections, p.since
        FROM presence p JOIN presence_nodes n ON n.node = p.node
        WHERE p.node <> $1 AND n.seen >= ",
        now_ms!(),
        " - $2 AND p.collection_id = ANY($3)"
    );
    pub const DEAD_NODES: &str =
        concat!("DELETE FROM presence_nodes WHERE seen < ", now_ms!(), " - $1 RETURNING node");
    pub const PRESENCE_OF_DEAD: &str =
        "WITH gone AS (DELETE FROM presence WHERE node = ANY($1) RETURNING collection_id)
        SELECT DISTINCT collection_id FROM gone";
    /// When node `$1` should next publish: when its own (or no node's) next
    /// event is due, or `$2` seconds after anyone's.
    pub const NEXT_DUE: &str = "SELECT LEAST(
        (SELECT MIN(due) FROM events WHERE NOT published AND NOT cancelled AND node = $1),
        (SELECT MIN(due) FROM events WHERE NOT published AND NOT cancelled AND node IS NULL),
        (SELECT MIN(due) FROM events WHERE NOT published AND NOT cancelled) + $2)";
    pub const PENDING: &str = "SELECT COUNT(*) FROM events WHERE NOT published AND NOT cancelled";
    /// The latest event of each selected name (of each collection and name
    /// when `$1` names collections); empty arrays select all; with `$3`,
    /// not from private collections.
    pub const LATEST: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", e.seq FROM (SELECT MAX(seq) AS seq FROM latest",
        " WHERE (cardinality($1::uuid[]) = 0 OR collection_id = ANY($1))",
        " AND (cardinality($2::text[]) = 0 OR event = ANY($2))",
        " AND NOT ($3 AND collection_id IN (SELECT id FROM collections WHERE private))",
        " GROUP BY event, CASE WHEN cardinality($1::uuid[]) = 0 THEN NULL ELSE collection_id END) l",
        " JOIN events e ON e.seq = l.seq ORDER BY e.seq"
    );
    /// Published events in `($1, $2]` that the filter selects, by sequence.
    pub const REPLAY: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", seq FROM events WHERE seq > $1 AND seq <= $2",
        " AND (cardinality($3::uuid[]) = 0 OR collection_id = ANY($3))",
        " AND (cardinality($4::text[]) = 0 OR event = ANY($4)) ORDER BY seq LIMIT $5"
    );
    /// Exported events as they were, in the order given.
    pub const IMPORT_EVENTS: &str = "INSERT INTO events
            (id, user_id, collection_id, event, timestamp, published, cancelled, data, seq, due)
        SELECT id, user_id, collection_id, event, timestamp, published, cancelled, data, seq,
               timestamp
        FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], $6::bool[],
                    $7::bool[], $8::text[], $9::int8[])
             WITH ORDINALITY AS t(id, user_id, collection_id, event, timestamp, published,
                                  cancelled, data, seq, n)
        ORDER BY n";
    pub const IMPORT_LATEST: &str = "INSERT INTO latest (collection_id, event, seq)
        SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[])
        ON CONFLICT (collection_id, event) DO UPDATE SET seq = GREATEST(latest.seq, excluded.seq)";
    pub const IMPORT_HEAD: &str = "UPDATE head SET seq = GREATEST(seq, $1)";
    pub const SECRET_PUT: &str = "INSERT INTO settings (name, value) VALUES ('jwt_secret', $1) ON CONFLICT (name) DO NOTHING";
    pub const SECRET_GET: &str = "SELECT value FROM settings WHERE name = 'jwt_secret'";
    pub const ACME_GET: &str = "SELECT value FROM settings WHERE name = 'acme:' || $1";
    pub const ACME_PUT: &str = "INSERT INTO settings (name, value) VALUES ('acme:' || $1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value";
    pub const ACME_DELETE: &str = "DELETE FROM settings WHERE name = 'acme:' || $1";
    /// Adds $2 failures at $3 to key $1's count ($2 alone when its last
    /// failure is more than $4 ms old).
    pub const ADD_LOGIN_FAILURES: &str = "INSERT INTO login_failures (key, count, last)
        SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::int8[])
        ON CONFLICT (key) DO UPDATE SET last = EXCLUDED.last, count = CASE
            WHEN login_failures.last < EXCLUDED.last - $4 THEN EXCLUDED.count
            ELSE login_failures.count + EXCLUDED.count END";
    /// A success on some node: the count starts over (kept at 0 so that
    /// the other nodes learn it).
    pub const CLEAR_LOGIN_FAILURES: &str =
        "UPDATE login_failures SET count = 0, last = $2 WHERE key = ANY($1)";
    pub const FORGET_LOGIN_FAILURES: &str = "DELETE FROM login_failures WHERE last < $1";
    pub const LOGIN_FAILURES_SINCE: &str =
        "SELECT key, count, last FROM login_failures WHERE last >= $1";
    /// Takes a token from key $1's bucket at $2 (bursts of $3, refilled at
    /// $4 a millisecond) if one is there: answers whether it did, and the
    /// tokens left.
    pub const TAKE_TOKEN: &str = "INSERT INTO rates AS r (key, tokens, at, taken)
        VALUES ($1, $3::float8 - 1, $2, true)
        ON CONFLICT (key) DO UPDATE SET at = GREATEST(r.at, EXCLUDED.at),
            taken = LEAST($3::float8, r.tokens + GREATEST($2 - r.at, 0) * $4::float8) >= 1,
            tokens = LEAST($3::float8, r.tokens + GREATEST($2 - r.at, 0) * $4::float8)
                - CASE WHEN LEAST($3::float8, r.tokens + GREATEST($2 - r.at, 0) * $4::float8) >= 1
                  THEN 1 ELSE 0 END
        RETURNING taken, tokens";
    pub const FORGET_RATES: &str = "DELETE FROM rates WHERE at < $1";
    /// Takes or extends the leases named in the array $4 for holder $1
    /// until $3 (each value is "<holder> <until>"), where free, expired at
    /// $2 or $1's already; answers the names held.
    pub const LEASES: &str = "INSERT INTO settings (name, value) SELECT name, $1::text || ' ' || $3::bigint::text FROM unnest($4::text[]) AS name ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value WHERE split_part(settings.value, ' ', 1) = $1 OR split_part(settings.value, ' ', 2)::bigint < $2::bigint RETURNING name";
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, user: User) -> Result<(), StoreError> {
        self.write(async |client| match insert_user(&**client, &user).await {
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::UsernameTaken)
            }
            other => other.map(|_| ()).map_err(Into::into),
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::USER_BY_NAME).await?;
            client
                .query_opt(&statement, &[&username])
                .await?
                .as_ref()
                .map(user_from_row)
                .transpose()
        })
        .await
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::USER_BY_ID).await?;
            client.query_opt(&statement, &[&id]).await?.as_ref().map(user_from_row).transpose()
        })
        .await
    }

    async fn insert_event(
        &self,
        event: Event,
        key: Option<Key>,
        _: Option<i64>,
    ) -> Result<Inserted, StoreError> {
        within(self.schema.get_or_try_init(|| migrate(&self.pool))).await?;
        let (reply, answer) = oneshot::channel();
        self.inserts
            .send(Queued { event, key, reply })
            .await
            .map_err(|_| StoreError::Backend("the insert writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the insert writer dropped an insert".into()))?
    }

    async fn published_after(
        &self,
        after: i64,
        max: usize,
    ) -> Result<Vec<(i64, Uuid, String)>, StoreError> {
        self.run(async |client| {
            let rows = client.query(sql::PUBLISHED_AFTER, &[&after, &limit(max)]).await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
        })
        .await
    }

    async fn collections_after(&self, after: Uuid, max: usize) -> Result<Vec<Uuid>, StoreError> {
        self.run(async |client| {
            let next = client.prepare_cached(sql::COLLECTION_AFTER).await?;
            let mut found: Vec<Uuid> = Vec::new();
            while found.len() < max {
                let from = found.last().copied().unwrap_or(after);
                match client.query_opt(&next, &[&from]).await? {
                    Some(row) => found.push(row.try_get(0)?),
                    None => break,
                }
            }
            Ok(found)
        })
        .await
    }

    async fn trim(&self, trims: Vec<Trim>, max: usize) -> Result<Vec<u64>, StoreError> {
        let max = limit(max);
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            let mut deleted = Vec::with_capacity(trims.len());
            for trim in trims {
                deleted.push(match trim {
                    Trim::Latest { collection, event, keep } => {
                        let params: [&(dyn ToSql + Sync); 4] =
                            [&collection, &event, &(keep - 1), &max];
                        tx.execute(&tx.prepare_cached(sql::TRIM_LATEST).await?, &params).await?
                    }
                    Trim::Older { collection, before } => {
                        tx.execute(
                            &tx.prepare_cached(sql::TRIM_OLDER).await?,
                            &[&collection, &before, &max],
                        )
                        .await?
                    }
                    Trim::Keys { before } => {
                        tx.execute(&tx.prepare_cached(sql::TRIM_KEYS).await?, &[&before, &max])
                            .await?
                    }
                });
            }
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }

    async fn reclaim(&self) -> Result<(), StoreError> {
        // Plain VACUUM marks the space for reuse without locking writers out.
        self.run(async |client| Ok(client.batch_execute("VACUUM events, idempotency").await?)).await
    }

    async fn cancel_event(&self, id: Uuid, user_id: Uuid) -> Result<Cancel, StoreError> {
        self.write(async |client| {
            let cancel = client.prepare_cached(sql::CANCEL).await?;
            if let Some(row) = client.query_opt(&cancel, &[&id, &user_id]).await? {
                return Ok(Cancel::Cancelled(event_from_row(&row)?));
            }
            // Refused: the event's final state says why.
            let find = client.prepare_cached(sql::EVENT_BY_ID).await?;
            let Some(row) = client.query_opt(&find, &[&id]).await? else {
                return Ok(Cancel::NotFound);
            };
            let event = event_from_row(&row)?;
            Ok(if event.user_id != user_id {
                Cancel::NotOwner
            } else if event.cancelled {
                Cancel::AlreadyCancelled
            } else {
                Cancel::AlreadyPublished
            })
        })
        .await
    }

    async fn list(
        &self,
        of: ListOf,
        after: Option<Position>,
        max: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let (statement, key) = match of {
            ListOf::Collection(id) => (sql::BY_COLLECTION, id),
            ListOf::User(id) => (sql::BY_USER, id),
            ListOf::Nothing => return Ok(Vec::new()),
        };
        let after = after.unwrap_or(Position::START);
        self.run(async |client| {
            let statement = client.prepare_cached(statement).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&key, &after.timestamp, &after.pos, &limit(max)];
            let rows = client.query(&statement, &params).await?;
            rows.iter()
                .map(|row| {
                    let event = event_from_row(row)?;
                    let position = Position { timestamp: event.timestamp, pos: row.try_get(8)? };
                    Ok(Listed { event, position })
                })
                .collect()
        })
        .await
    }

    async fn publish_due(&self, now: i64, max: usize) -> Result<Vec<Published>, StoreError> {
        // Timed only when it publishes: every node looks every second.
        let started = std::time::Instant::now();
        let published = self
            .run(async |mut client| {
                let tx = client.transaction().await?;
                let mut seq: i64 = tx.query_one(sql::LOCK_HEAD, &[]).await?.get(0);
                let due = tx.prepare_cached(sql::DUE).await?;
                let due = tx.query(&due, &[&now, &limit(max)]).await?;
                if due.is_empty() {
                    return Ok(Vec::new()); // dropping `tx` rolls back
                }
                let mut published = Vec::with_capacity(due.len());
                let (mut positions, mut seqs) = (Vec::new(), Vec::new());
                for row in &due {
                    seq += 1;
                    positions.push(row.try_get::<_, i64>(8)?);
                    seqs.push(seq);
                    published.push(Published {
                        seq,
                        event: Event { published: true, ..event_from_row(row)? },
                    });
                }
                let mark = tx.prepare_cached(sql::MARK_PUBLISHED).await?;
                tx.execute(&mark, &[&positions, &seqs]).await?;
                // Only the last event of each collection and name sets `latest`.
                let latest: HashMap<_, _> = published
                    .iter()
                    .map(|p| ((p.event.collection_id, p.event.event.as_str()), p.seq))
                    .collect();
                let (mut collections, mut names, mut latest_seqs) =
                    (Vec::new(), Vec::new(), Vec::new());
                for ((collection, name), seq) in latest {
                    collections.push(collection);
                    names.push(name);
                    latest_seqs.push(seq);
                }
                let set_latest = tx.prepare_cached(sql::SET_LATEST).await?;
                tx.execute(&set_latest, &[&collections, &names, &latest_seqs]).await?;
                let set_head = tx.prepare_cached(sql::SET_HEAD).await?;
                tx.query(&set_head, &[&seq]).await?;
                tx.commit().await?;
                Ok(published)
            })
            .await?;
        if !published.is_empty() {
            self.metrics.commit(started.elapsed());
        }
        Ok(published)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::NEXT_DUE).await?;
            Ok(client.query_one(&statement, &[&self.node, &TAKEOVER]).await?.try_get(0)?)
        })
        .await
    }

    async fn snapshot(&self, filter: &Filter, public_only: bool) -> Result<Snapshot, StoreError> {
        self.run(async |mut client| {
            let tx = consistent_read(&mut client).await?;
            let head = tx.query_one(sql::HEAD, &[]).await?.try_get(0)?;
            let latest = tx.prepare_cached(sql::LATEST).await?;
            let params: [&(dyn ToSql + Sync); 3] =
                [&filter.collections(), &filter.events(), &public_only];
            let latest = tx.query(&latest, &params).await?;
            let latest = rows(&latest, published_from_row)?;
            tx.commit().await?;
            Ok(Snapshot { latest, head })
        })
        .await
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        self.run(async |client| {
            let count: i64 = client.query_one(sql::PENDING, &[]).await?.try_get(0)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |client| Ok(client.simple_query("SELECT 1").await.map(|_| ())?)).await
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::HEAD).await?;
            Ok(client.query_one(&statement, &[]).await?.try_get(0)?)
        })
        .await
    }

    async fn replay(
        &self,
        after: i64,
        until: i64,
        filter: &Filter,
        max: usize,
    ) -> Result<Vec<Published>, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::REPLAY).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&after, &until, &filter.collections(), &filter.events(), &limit(max)];
            rows(&client.query(&statement, &params).await?, published_from_row)
        })
        .await
    }

    async fn users_after(&self, after: Option<Uuid>, max: usize) -> Result<Vec<User>, StoreError> {
        let after = after.unwrap_or(Uuid::nil());
        self.run(async |client| {
            rows(&client.query(sql::USERS_AFTER, &[&after, &limit(max)]).await?, user_from_row)
        })
        .await
    }

    async fn events_after(
        &self,
        after: i64,
        max: usize,
    ) -> Result<Vec<(i64, Event, Option<i64>)>, StoreError> {
        self.run(async |client| {
            let rows = client.query(sql::EVENTS_AFTER, &[&after, &limit(max)]).await?;
            rows.iter()
                .map(|row| Ok((row.try_get(9)?, event_from_row(row)?, row.try_get(8)?)))
                .collect()
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.run(async |client| Ok(client.query_one(sql::IS_EMPTY, &[]).await?.try_get(0)?)).await
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let (mut users, mut claimed, mut hooks) = (Vec::new(), Vec::new(), Vec::new());
        let mut events: Vec<(Event, Option<i64>)> = Vec::new();
        for record in records {
            match record {
                Record::User(user) => users.push(user),
                Record::Collection { id, rule } => claimed.push((id, rule)),
                Record::Event { event, seq } => events.push((event, seq)),
                Record::Webhook(hook) => hooks.push(hook),
            }
        }
        let column =
            |f: fn(&(Event, Option<i64>)) -> Uuid| events.iter().map(f).collect::<Vec<_>>();
        let (ids, user_ids, collections) =
            (column(|e| e.0.id), column(|e| e.0.user_id), column(|e| e.0.collection_id));
        let names: Vec<&str> = events.iter().map(|e| e.0.event.as_str()).collect();
        let timestamps: Vec<i64> = events.iter().map(|e| e.0.timestamp).collect();
        let published: Vec<bool> = events.iter().map(|e| e.0.published).collect();
        let cancelled: Vec<bool> = events.iter().map(|e| e.0.cancelled).collect();
        let data: Vec<&str> = events.iter().map(|e| e.0.data.get()).collect();
        let seqs: Vec<Option<i64>> = events.iter().map(|e| e.1).collect();
        // The latest published event of each collection and name.
        let mut latest: HashMap<(Uuid, &str), i64> = HashMap::new();
        for (event, seq) in &events {
            if let Some(seq) = *seq {
                let at = latest.entry((event.collection_id, event.event.as_str())).or_insert(seq);
                *at = (*at).max(seq);
            }
        }
        let latest: Vec<((Uuid, &str), i64)> = latest.into_iter().collect();
        let latest_collections: Vec<Uuid> = latest.iter().map(|((c, _), _)| *c).collect();
        let latest_names: Vec<&str> = latest.iter().map(|((_, n), _)| *n).collect();
        let latest_seqs: Vec<i64> = latest.iter().map(|(_, s)| *s).collect();
        let head = latest_seqs.iter().copied().max().unwrap_or(0);
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            for u in &users {
                insert_user(&*tx, u).await?;
            }
            for (id, rule) in &claimed {
                insert_collection(&tx, *id, rule).await?;
            }
            for hook in &hooks {
                insert_webhook(&*tx, hook).await?;
            }
            tx.execute(sql::BUMP_ACCESS, &[]).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                &ids,
                &user_ids,
                &collections,
                &names,
                &timestamps,
                &published,
                &cancelled,
                &data,
                &seqs,
            ];
            tx.execute(sql::IMPORT_EVENTS, &params).await?;
            tx.execute(sql::IMPORT_LATEST, &[&latest_collections, &latest_names, &latest_seqs])
                .await?;
            tx.execute(sql::IMPORT_HEAD, &[&head]).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn keep_secret(&self, candidate: String) -> Result<String, StoreError> {
        self.run(async |client| {
            client.execute(sql::SECRET_PUT, &[&candidate]).await?;
            Ok(client.query_one(sql::SECRET_GET, &[]).await?.try_get(0)?)
        })
        .await
    }

    async fn acme_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.run(async |client| {
            let row = client.query_opt(sql::ACME_GET, &[&name]).await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await
    }

    async fn acme_put(&self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.run(async |client| {
            match value {
                Some(value) => client.execute(sql::ACME_PUT, &[&name, &value]).await?,
                None => client.execute(sql::ACME_DELETE, &[&name]).await?,
            };
            Ok(())
        })
        .await
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        Ok(!self.leases(vec![name.to_owned()], holder, now, until).await?.is_empty())
    }

    async fn leases(
        &self,
        mut names: Vec<String>,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<Vec<String>, StoreError> {
        if names.is_empty() {
            return Ok(names); // no query for a cluster without webhooks
        }
        // In one order on every node, so that two nodes' statements never
        // wait for each other's rows crosswise.
        names.sort_unstable();
        self.run(async |client| {
            let rows = client.query(sql::LEASES, &[&holder, &now, &until, &names]).await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    async fn login_failures(
        &self,
        added: Vec<(i64, i32)>,
        cleared: Vec<i64>,
        now: i64,
        since: i64,
        window: i64,
    ) -> Result<Vec<(i64, i32, i64)>, StoreError> {
        let (keys, counts): (Vec<i64>, Vec<i32>) = added.into_iter().unzip();
        let lasts = vec![now; keys.len()];
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            if !keys.is_empty() {
                tx.execute(sql::ADD_LOGIN_FAILURES, &[&keys, &counts, &lasts, &window]).await?;
            }
            if !cleared.is_empty() {
                tx.execute(sql::CLEAR_LOGIN_FAILURES, &[&cleared, &now]).await?;
            }
            tx.execute(sql::FORGET_LOGIN_FAILURES, &[&(now - window)]).await?;
            let rows = tx.query(sql::LOGIN_FAILURES_SINCE, &[&since]).await?;
            tx.commit().await?;
            let row = |r: &Row| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            rows.iter().map(row).collect()
        })
        .await
    }

    async fn take_token(
        &self,
        key: i64,
        now: i64,
        burst: f64,
        per_ms: f64,
        idle_ms: i64,
    ) -> Result<Option<(bool, f64)>, StoreError> {
        self.run(async |client| {
            client.execute(sql::FORGET_RATES, &[&(now - idle_ms)]).await?;
            let row = client.query_one(sql::TAKE_TOKEN, &[&key, &now, &burst, &per_ms]).await?;
            Ok(Some((row.try_get(0)?, row.try_get(1)?)))
        })
        .await
    }

    async fn webhooks(&self, collection: Option<Uuid>) -> Result<Vec<Webhook>, StoreError> {
        self.run(async |client| match collection {
            Some(id) => rows(&client.query(sql::WEBHOOKS_OF, &[&id]).await?, webhook_from_row),
            None => rows(&client.query(sql::ALL_WEBHOOKS, &[]).await?, webhook_from_row),
        })
        .await
    }

    async fn add_webhook(&self, h: Webhook, limit: usize) -> Result<bool, StoreError> {
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            // The collection's row, locked until commit, lines up concurrent
            // registrations for it on every node: each counts what the
            // previous ones stored.
            tx.execute(sql::LOCK_COLLECTION, &[&h.collection]).await?;
            let count: i64 = tx.query_one(sql::COUNT_WEBHOOKS, &[&h.collection]).await?.get(0);
            let added = usize::try_from(count).unwrap_or(usize::MAX) < limit
                && insert_webhook(&*tx, &h).await? == 1;
            tx.commit().await?;
            Ok(added)
        })
        .await
    }

    async fn edit_webhook(&self, h: Webhook) -> Result<bool, StoreError> {
        let events = h.events.join("\n");
        self.write(async |client| {
            let params: [&(dyn ToSql + Sync); 7] =
                [&h.id, &h.url, &events, &h.description, &h.secret, &h.paused, &h.failing];
            Ok(client.execute(sql::EDIT_WEBHOOK, &params).await? == 1)
        })
        .await
    }

    async fn webhook_progress(
        &self,
        id: Uuid,
        delivered: i64,
        attempts: String,
        failing: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(async |client| {
            client.execute(sql::WEBHOOK_PROGRESS, &[&id, &delivered, &attempts, &failing]).await?;
            Ok(())
        })
        .await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write(async |client| Ok(client.execute(sql::DELETE_WEBHOOK, &[&id]).await? == 1)).await
    }

    async fn change(&self, change: Change) -> Result<Changed, StoreError> {
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            let outcome = apply(&tx, change).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn access_version(&self) -> Result<i64, StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql::ACCESS_VERSION).await?;
            Ok(client.query_one(&statement, &[]).await?.try_get(0)?)
        })
        .await
    }

    async fn access(&self) -> Result<AccessState, StoreError> {
        self.run(async |mut client| {
            let tx = consistent_read(&mut client).await?;
            let version = tx.query_one(sql::ACCESS_VERSION, &[]).await?.try_get(0)?;
            let mut rules: HashMap<Uuid, Rule> = HashMap::new();
            for row in tx.query(sql::COLLECTIONS, &[]).await? {
                let rule = Rule {
                    owner: row.try_get(1)?,
                    private: row.try_get(2)?,
                    retention: Retention { max_age: row.try_get(3)?, keep_latest: row.try_get(4)? },
                    ..Rule::default()
                };
                rules.insert(row.try_get(0)?, rule);
            }
            for row in tx.query(sql::MEMBERS, &[]).await? {
                let role = role_from(row.try_get(2)?)?;
                if let Some(rule) = rules.get_mut(&row.try_get::<_, Uuid>(0)?) {
                    rule.members.insert(row.try_get(1)?, role);
                }
            }
            for row in tx.query(sql::SCHEMAS, &[]).await? {
                let schema = serde_json::from_str(row.try_get(2)?)
                    .map_err(|e| StoreError::Backend(format!("a stored schema: {e}")))?;
                if let Some(rule) = rules.get_mut(&row.try_get::<_, Uuid>(0)?) {
                    rule.schemas.insert(row.try_get(1)?, schema);
                }
            }
            let mut users = HashMap::new();
            for row in tx.query(sql::RESTRICTED_USERS, &[]).await? {
                let standing = Standing { generation: row.try_get(1)?, disabled: row.try_get(2)? };
                users.insert(row.try_get(0)?, standing);
            }
            let revoked = tx
                .query(sql::REVOKED, &[])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            let collections = rules.into_iter().map(|(id, r)| (id, Arc::new(r))).collect();
            Ok(AccessState { version, collections, users, revoked, ..AccessState::default() })
        })
        .await
    }

    async fn collection(&self, id: Uuid) -> Result<Option<Collection>, StoreError> {
        self.run(async |mut client| {
            let tx = consistent_read(&mut client).await?;
            let Some(row) = tx.query_opt(sql::COLLECTION, &[&id]).await? else {
                return Ok(None);
            };
            let (owner, private) = (member_from_row(&row)?, row.try_get(3)?);
            let retention = Retention { max_age: row.try_get(4)?, keep_latest: row.try_get(5)? };
            let members = rows(&tx.query(sql::COLLECTION_MEMBERS, &[&id]).await?, member_from_row)?;
            tx.commit().await?;
            Ok(Some(Collection { id, owner, private, members, retention }))
        })
        .await
    }

    async fn find_users(
        &self,
        search: &str,
        after: &str,
        max: usize,
    ) -> Result<Vec<User>, StoreError> {
        self.run(async |client| {
            let found = client.query(sql::FIND_USERS, &[&search, &after, &limit(max)]).await?;
            rows(&found, user_from_row)
        })
        .await
    }

    fn listen(
        &self,
        published: Arc<Notify>,
        notices: mpsc::Sender<Notice>,
        shutdown: CancellationToken,
    ) -> Option<Duration> {
        tokio::spawn(listen(self.config.clone(), published, notices, shutdown));
        Some(LOG_POLL)
    }

    async fn put_presence(
        &self,
        node: Uuid,
        rooms: Vec<(Uuid, NodeRoom)>,
    ) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = rooms.iter().map(|(c, _)| *c).collect();
        let (mut collections, mut users, mut names, mut connections, mut since) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (c, room) in &rooms {
            let anonymous = (room.anonymous > 0).then(|| (Uuid::nil(), "", room.anonymous, 0));
            let present = room
                .users
                .values()
                .map(|p| (p.user_id, p.username.as_str(), p.connections, p.since));
            for (user, name, count, at) in present.chain(anonymous) {
                collections.push(*c);
                users.push(user);
                names.push(name);
                connections.push(i32::try_from(count).unwrap_or(i32::MAX));
                since.push(at);
            }
        }
        let messages = presence_notices(node, &ids);
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            tx.query_one(sql::ALIVE, &[&node]).await?;
            tx.execute(sql::PRESENCE_FORGET, &[&node, &ids]).await?;
            tx.execute(
                sql::PRESENCE_PUT,
                &[&collections, &node, &users, &names, &connections, &since],
            )
            .await?;
            tx.execute(sql::PRESENCE_NOTIFY, &[&messages]).await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    async fn others_presence(
        &self,
        node: Uuid,
        collections: Vec<Uuid>,
    ) -> Result<HashMap<Uuid, NodeRoom>, StoreError> {
        let found = self
            .run(async |client| {
                Ok(client
                    .query(sql::PRESENCE_OF_OTHERS, &[&node, &PRESENCE_DEAD_MS, &collections])
                    .await?)
            })
            .await?;
        let mut rooms: HashMap<Uuid, NodeRoom> = HashMap::new();
        for row in found {
            let room = rooms.entry(row.try_get(0)?).or_default();
            let (user, connections): (Uuid, i32) = (row.try_get(1)?, row.try_get(3)?);
            let connections = u32::try_from(connections).unwrap_or(0);
            if user.is_nil() {
                room.anonymous += connections;
                continue;
            }
            let present = Present {
                user_id: user,
                username: row.try_get(2)?,
                connections,
                since: row.try_get(4)?,
            };
            room.add(present);
        }
        Ok(rooms)
    }

    async fn alive(&self, node: Uuid) -> Result<bool, StoreError> {
        self.write(async |mut client| {
            let tx = client.transaction().await?;
            let fresh: bool = tx.query_one(sql::ALIVE, &[&node]).await?.try_get(0)?;
            let dead: Vec<Uuid> =
                rows(&tx.query(sql::DEAD_NODES, &[&PRESENCE_DEAD_MS]).await?, |r| {
                    Ok(r.try_get(0)?)
                })?;
            if !dead.is_empty() {
                let gone =
                    rows(&tx.query(sql::PRESENCE_OF_DEAD, &[&dead]).await?, |r| Ok(r.try_get(0)?))?;
                // From nobody: every node (this one too) reads them again.
                tx.execute(sql::PRESENCE_NOTIFY, &[&presence_notices(Uuid::nil(), &gone)]).await?;
            }
            tx.commit().await?;
            Ok(fresh)
        })
        .await
    }

    async fn signal(&self, message: String) -> Result<(), StoreError> {
        self.run(async |client| {
            let statement = client.prepare_cached("SELECT pg_notify('broker_signals', $1)").await?;
            Ok(client.execute(&statement, &[&message]).await.map(|_| ())?)
        })
        .await
    }
}

/// The presence notifications from `node` about `ids`: `<node> <ids,
/// comma-separated>`, at most 150 ids (5,600 bytes) each.
fn presence_notices(node: Uuid, ids: &[Uuid]) -> Vec<String> {
    let list = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
    ids.chunks(150).map(|chunk| format!("{node} {}", list(chunk))).collect()
}

/// Holds a connection that LISTENs for publications, ringing `published`
/// on each, and for what nodes say to each other, handing it to `notices`
/// (dropped when it is full: a signal matters for a moment, and presence
/// is read again on [`Notice::Listening`]). After every (re)connection it
/// rings once and says [`Notice::Listening`], since notifications sent
/// while disconnected are lost.
async fn listen(
    config: tokio_postgres::Config,
    published: Arc<Notify>,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    while !shutdown.is_cancelled() {
        let connected = within(async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let notices = notices.clone();
            // tokio-postgres hands out notifications only while its
            // connection future is polled: this task does nothing else.
            tokio::spawn(async move {
                while let Some(message) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    match message {
                        Ok(AsyncMessage::Notification(n)) if n.channel() == "broker_signals" => {
                            let _ = notices.try_send(Notice::Signal(n.payload().to_owned()));
                        }
                        Ok(AsyncMessage::Notification(n)) if n.channel() == "broker_presence" => {
                            let _ = notices.try_send(Notice::Presence(n.payload().to_owned()));
                        }
                        Ok(AsyncMessage::Notification(_)) => {
                            if tx.send(()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the notification connection failed");
                            break;
                        }
                    }
                }
            });
            client
                .batch_execute(
                    "LISTEN broker_published; LISTEN broker_signals; LISTEN broker_presence",
                )
                .await?;
            Ok((client, rx))
        })
        .await;
        let (_client, mut notifications) = match connected {
            Ok(connected) => connected,
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, "cannot listen for other nodes' events; retrying every second");
                }
                tokio::select! {
                    () = tokio::time::sleep(LOG_POLL) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        if std::mem::take(&mut warned) {
            tracing::info!("listening for other nodes' events again");
        }
        published.notify_one();
        let _ = notices.send(Notice::Listening).await;
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(()) => published.notify_one(),
                    None => break,
                },
                () = shutdown.cancelled() => return,
            }
        }
        tracing::warn!("lost the notification connection; reconnecting");
    }
}
