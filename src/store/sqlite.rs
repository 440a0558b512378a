//! The embedded SQLite backend.
//!
//! One writer thread owns the only write connection: concurrent writes queue
//! on a channel and each batch is committed as one transaction (group
//! commit), with WAL and `synchronous = FULL`, so a write is acknowledged
//! only once it is fsynced. Every write runs in its own savepoint, so one
//! refused write does not undo its batch. Reads run on a small pool of
//! read-only connections on the blocking thread pool.
//!
//! An insert that is due when it arrives is published in its own
//! transaction: when nothing else is due it is stored published, with the
//! next sequence number, so an event is one row written once instead of a
//! row written by the insert and rewritten by the scheduler's publication
//! (which also had its own index entry to add and remove). What a commit
//! published goes to [`Store::publications`] before its writes are
//! answered, so that the scheduler hands publications to the feed in
//! commit order, once those answers are written (see [`Answering`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    Answered, Answering, Batch, Cancel, Change, Changed, Collection, Inserted, Key, ListOf, Listed,
    Member, Position, Publications, Record, Snapshot, Store, StoreError, Trim, Webhook,
};
use crate::domain::{Event, Filter, Published, User};
use crate::metrics::Metrics;
use crate::policy::{AccessState, Retention, Role, Rule, Standing};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those done.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_access.sql"),
    include_str!("migrations/sqlite/0003_retention.sql"),
    include_str!("migrations/sqlite/0004_schemas.sql"),
    include_str!("migrations/sqlite/0005_webhooks.sql"),
];
/// Free pages (4 KiB each) kept for reuse when retention deleted rows.
const FREE_PAGES: i64 = 1024;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Writes that may wait for the writer before callers are slowed down.
const QUEUE: usize = 8192;
/// Read connections (and blocking threads) in use at once; more reads wait.
const READERS: usize = 8;
/// Commits whose publications may wait for the scheduler; beyond, the
/// scheduler reads them back from the log.
const PUBLISHED_QUEUE: usize = 256;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

/// SQLite storage in one file of the data directory.
pub struct SqliteStore {
    writes: mpsc::Sender<Box<dyn Job>>,
    readers: Arc<Readers>,
    dir: PathBuf,
    /// What inserts publish, until the scheduler takes it.
    publications: Mutex<Option<Publications>>,
}

impl SqliteStore {
    /// Opens (creating if need be) `broker.sqlite3` in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_metrics(dir, Arc::default())
    }

    /// Like [`SqliteStore::open`], recording commit latency in `metrics`.
    pub fn open_with_metrics(dir: &Path, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let path = dir.join("broker.sqlite3");
        private_dir(dir)
            .and_then(|()| create_private(&path))
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        // SQLite gives the WAL and shared-memory files the database's mode.
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Set before the first table exists, so that retention can give the
        // space of deleted events back (`PRAGMA incremental_vacuum`); a
        // database made by an older Broker reuses the freed pages instead.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        // Checkpoint every 4,000 pages (16 MiB of WAL) rather than SQLite's
        // 1,000: inserts spread over many collections dirty random index
        // pages, and a longer interval writes each of them back once for
        // several commits (12 % more inserts a second over 18,000
        // collections, BENCHMARKS.md).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 4000;",
        )?;
        migrate(&mut conn)?;
        let (writes, jobs) = mpsc::channel(QUEUE);
        let (published, batches) = mpsc::channel(PUBLISHED_QUEUE);
        let missed = Arc::new(AtomicBool::new(false));
        let out = Outbox { published, missed: missed.clone() };
        std::thread::Builder::new()
            .name("broker-sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs, &out, &metrics))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        let readers = Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
        });
        let publications = Mutex::new(Some(Publications { batches, missed }));
        Ok(Self { writes, readers, dir: dir.to_owned(), publications })
    }

    /// Runs `work` in the next group commit; answers once it is durable.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_publishing(move |conn, _| work(conn)).await
    }

    /// Like [`SqliteStore::write`]; what `work` adds to its second argument
    /// is published with the commit (see [`Store::publications`]).
    async fn write_publishing<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Publishing) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(Write { work, reply }))
            .await
            .map_err(|_| StoreError::Backend("the writer thread has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Backend("the writer thread dropped a write".into()))?
    }

    /// Runs `work` on a read connection on the blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let slot = readers.slots.clone().acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            readers.run(work)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if done > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {done}, newer than this broker knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// A write waiting for the writer thread.
trait Job: Send {
    /// Runs inside the batch's transaction; the result is held until
    /// commit, and what it publishes is added to `published`.
    fn run(self: Box<Self>, conn: &Connection, published: &mut Publishing) -> Box<dyn Done>;
    /// Fails the write without running it.
    fn abort(self: Box<Self>, error: &str);
}

/// A write that ran and waits for its batch's commit.
trait Done: Send {
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

struct Write<F, T> {
    work: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

struct Ran<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for Write<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Publishing) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, published: &mut Publishing) -> Box<dyn Done> {
        let Write { work, reply } = *self;
        let before = published.events.len();
        let result = in_savepoint(conn, |conn| work(conn, published));
        if result.is_err() {
            published.events.truncate(before); // rolled back
        }
        Box::new(Ran { result, reply })
    }

    fn abort(self: Box<Self>, error: &str) {
        let _ = self.reply.send(Err(StoreError::Backend(error.to_owned())));
    }
}

impl<T: Send> Done for Ran<T> {
    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let result = match commit {
            Ok(()) => self.result,
            Err(e) => Err(StoreError::Backend(format!("commit failed: {e}"))),
        };
        let _ = self.reply.send(result);
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job")?;
    let result = work(conn);
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end)?;
    result
}

/// Where the writer thread sends what its commits published.
struct Outbox {
    published: mpsc::Sender<Batch>,
    missed: Arc<AtomicBool>,
}

/// What the writes of one commit publish.
#[derive(Default)]
struct Publishing {
    events: Vec<Published>,
    answers: Option<(Answering, Answered)>,
}

impl Publishing {
    /// Adds `published`; what answers this write holds the result.
    fn publish(&mut self, published: Published) -> Answering {
        self.events.push(published);
        self.answers.get_or_insert_with(Answered::pair).0.clone()
    }

    /// The commit's batch, if it published anything; the next commit
    /// starts afresh.
    fn take(&mut self) -> Option<Batch> {
        let Self { events, answers } = std::mem::take(self);
        let (_, answered) = answers.filter(|_| !events.is_empty())?;
        Some(Batch { published: events, answered })
    }
}

/// The writer thread: takes every queued write, runs them in one
/// transaction, commits (one fsync), sends on what it published, then
/// answers each.
fn write_loop(
    conn: Connection,
    mut jobs: mpsc::Receiver<Box<dyn Job>>,
    out: &Outbox,
    metrics: &Metrics,
) {
    let mut batch = Vec::new();
    let mut published = Publishing::default();
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot start a write transaction");
            let error = e.to_string();
            batch.drain(..).for_each(|job| job.abort(&error));
            continue;
        }
        let ran: Vec<_> = batch.drain(..).map(|job| job.run(&conn, &mut published)).collect();
        let started = std::time::Instant::now();
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        metrics.commit(started.elapsed());
        if let Err(e) = &commit {
            tracing::error!(error = %e, "commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            published = Publishing::default();
        } else if let Some(batch) = published.take()
            && out.published.try_send(batch).is_err()
        {
            out.missed.store(true, Ordering::SeqCst);
        }
        for done in ran {
            done.finish(commit.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

/// A pool of at most [`READERS`] read connections, reused.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.execute_batch("PRAGMA query_only = 1")?;
                conn
            }
        };
        let result = work(&conn);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        Ok(result?)
    }
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let data: String = row.get(7)?;
    Ok(Event {
        id: row.get(0)?,
        user_id: row.get(1)?,
        collection_id: row.get(2)?,
        event: row.get(3)?,
        timestamp: row.get(4)?,
        published: row.get(5)?,
        cancelled: row.get(6)?,
        data: RawValue::from_string(data).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
        })?,
    })
}

fn published_from_row(row: &Row<'_>) -> rusqlite::Result<Published> {
    Ok(Published { event: event_from_row(row)?, seq: row.get(8)? })
}

/// An event as an idempotency key stored it.
fn stored_event(json: &str) -> Result<Event, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Backend(format!("a stored key: {e}")))
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        collection_id: row.get(3)?,
        admin: row.get(4)?,
        disabled: row.get(5)?,
        generation: row.get(6)?,
    })
}

fn webhook_from_row(row: &Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: row.get(0)?,
        collection: row.get(1)?,
        url: row.get(2)?,
        events: super::split_names(&row.get::<_, String>(3)?),
        description: row.get(4)?,
        secret: row.get(5)?,
        paused: row.get(6)?,
        failing: row.get(7)?,
        delivered: row.get(8)?,
        attempts: row.get(9)?,
        created: row.get(10)?,
    })
}

/// Stores one webhook as it is.
fn insert_webhook(conn: &Connection, h: &Webhook) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql::INSERT_WEBHOOK)?.execute(params![
        h.id,
        h.collection,
        h.url,
        h.events.join("\n"),
        h.description,
        h.secret,
        h.paused,
        h.failing,
        h.delivered,
        h.attempts,
        h.created
    ])
}

/// Stores one user as it is.
fn insert_user(conn: &Connection, u: &User) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql::INSERT_USER)?.execute(params![
        u.id,
        u.username,
        u.password_hash,
        u.collection_id,
        u.admin,
        u.disabled,
        u.generation
    ])
}

fn role_from(text: &str) -> rusqlite::Result<Role> {
    Role::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown role {text:?}").into(),
        )
    })
}

/// Stores a claimed collection with its members, as it is.
fn insert_collection(conn: &Connection, id: Uuid, rule: &Rule) -> rusqlite::Result<()> {
    let Retention { max_age, keep_latest } = rule.retention;
    conn.prepare_cached(sql::INSERT_COLLECTION)?.execute(params![
        id,
        rule.owner,
        rule.private,
        max_age,
        keep_latest
    ])?;
    let mut member = conn.prepare_cached(sql::SET_MEMBER)?;
    for (user, role) in &rule.members {
        member.execute(params![id, user, role.as_str()])?;
    }
    let mut schema = conn.prepare_cached(sql::SET_SCHEMA)?;
    for (event, value) in &rule.schemas {
        schema.execute(params![id, event, value.to_string()])?;
    }
    Ok(())
}

/// Applies `change` (in the writer's transaction) and bumps the version.
fn apply(conn: &Connection, change: Change) -> Result<Changed, StoreError> {
    let claimed = |collection: Uuid| -> rusqlite::Result<Option<Uuid>> {
        conn.prepare_cached(sql::CLAIMED_BY)?.query_row([collection], |r| r.get(0)).optional()
    };
    let outcome = match change {
        Change::Claim { collection, owner, private } => {
            match conn.prepare_cached(sql::CLAIM)?.execute(params![collection, owner, private])? {
                0 => claimed(collection)?.map_or(Changed::WrittenByOthers, Changed::Claimed),
                _ => Changed::Done,
            }
        }
        Change::Privacy { collection, private } => {
            let n = conn.prepare_cached(sql::SET_PRIVATE)?.execute(params![collection, private])?;
            if n == 0 { Changed::NotFound } else { Changed::Done }
        }
        Change::Retention { collection, retention } => {
            let Retention { max_age, keep_latest } = retention;
            let n = conn.prepare_cached(sql::SET_RETENTION)?.execute(params![
                collection,
                max_age,
                keep_latest
            ])?;
            if n == 0 { Changed::NotFound } else { Changed::Done }
        }
        Change::Schema { collection, event, schema } => match claimed(collection)? {
            None => Changed::NotFound,
            Some(_) => {
                match schema {
                    Some(schema) => conn
                        .prepare_cached(sql::SET_SCHEMA)?
                        .execute(params![collection, event, schema])?,
                    None => conn
                        .prepare_cached(sql::REMOVE_SCHEMA)?
                        .execute(params![collection, event])?,
                };
                Changed::Done
            }
        },
        Change::Member { collection, user, role } => {
            if claimed(collection)?.is_none() {
                Changed::NotFound
            } else {
                match role {
                    Some(role) => conn.prepare_cached(sql::SET_MEMBER)?.execute(params![
                        collection,
                        user,
                        role.as_str()
                    ])?,
                    None => conn
                        .prepare_cached(sql::REMOVE_MEMBER)?
                        .execute(params![collection, user])?,
                };
                Changed::Done
            }
        }
        Change::Revoke { jti, exp } => {
            conn.prepare_cached(sql::PRUNE_REVOKED)?.execute([super::unix_now()])?;
            conn.prepare_cached(sql::REVOKE)?.execute(params![jti, exp])?;
            Changed::Done
        }
        Change::Account { user, password_hash, disabled, admin, revoke } => {
            let n = conn.prepare_cached(sql::UPDATE_ACCOUNT)?.execute(params![
                user,
                password_hash,
                disabled,
                admin,
                i64::from(revoke)
            ])?;
            if n == 0 { Changed::NotFound } else { Changed::Done }
        }
    };
    if outcome == Changed::Done {
        conn.prepare_cached(sql::BUMP_ACCESS)?.execute([])?;
    }
    Ok(outcome)
}

/// Marks up to `limit` pending events due at `now` published, in timestamp
/// then insertion order, with the next sequence numbers.
fn publish(conn: &Connection, now: i64, limit: i64) -> Result<Vec<Published>, StoreError> {
    let due: Vec<(i64, Event)> = conn
        .prepare_cached(sql::DUE)?
        .query_map(params![now, limit], |row| Ok((row.get(8)?, event_from_row(row)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut seq = head(conn)?;
    let mut mark = conn.prepare_cached(sql::MARK_PUBLISHED)?;
    let mut published = Vec::with_capacity(due.len());
    for (pos, event) in due {
        seq += 1;
        mark.execute(params![seq, pos])?;
        published.push(Published { seq, event: Event { published: true, ..event } });
    }
    // Only the last event of each collection and name sets `latest`.
    let latest: std::collections::HashMap<_, _> = published
        .iter()
        .map(|p| ((p.event.collection_id, p.event.event.as_str()), p.seq))
        .collect();
    set_latest(conn, latest)?;
    Ok(published)
}

/// The highest sequence number given.
fn head(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(sql::HEAD)?.query_row([], |r| r.get(0))
}

/// Records each (collection, name)'s latest sequence number.
fn set_latest<'a>(
    conn: &Connection,
    latest: impl IntoIterator<Item = ((Uuid, &'a str), i64)>,
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(sql::SET_LATEST)?;
    for ((collection_id, event), seq) in latest {
        statement.execute(params![collection_id, event, seq])?;
    }
    Ok(())
}

/// Stores one event as it is, with its sequence number if it has one.
fn insert_event(conn: &Connection, e: &Event, seq: Option<i64>) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql::INSERT_EVENT)?.execute(params![
        e.id,
        e.user_id,
        e.collection_id,
        e.event,
        e.timestamp,
        e.published,
        e.cancelled,
        e.data.get(),
        seq
    ])
}

/// The filter's values as SQL parameters, collections first.
fn filter_params(filter: &Filter) -> Vec<rusqlite::types::Value> {
    let collections = filter.collections().iter().map(|c| c.as_bytes().to_vec().into());
    let events = filter.events().iter().map(|e| e.clone().into());
    collections.chain(events).collect()
}

/// Every statement Broker runs, in one place so a test can check that each
/// is served by an index.
mod sql {
    use crate::domain::Filter;
    pub use crate::store::sql::sqlite::*;

    /// A page of users whose name contains ?1, ignoring case (for
    /// administrators: walks the names' index, filtering).
    pub const FIND_USERS: &str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username > ?2 AND instr(lower(username), lower(?1)) > 0",
        " ORDER BY username LIMIT ?3"
    );
    pub const RESTRICTED_USERS: &str =
        "SELECT id, generation, disabled FROM users WHERE generation > 0 OR disabled = 1";
    pub const COLLECTION: &str = "SELECT c.owner, COALESCE(u.username, ''), c.private,
         c.max_age, c.keep_latest
         FROM collections c LEFT JOIN users u ON u.id = c.owner WHERE c.id = ?1";
    /// An event as it is: new ones have no `seq`; imported ones may.
    pub const INSERT_EVENT: &str = concat!(
        "INSERT INTO events (",
        event_columns!(),
        ", seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    );
    pub const CANCEL: &str = "UPDATE events SET cancelled = 1 WHERE id = ?1";
    /// Stores a key, replacing a forgotten one.
    pub const PUT_KEY: &str =
        "INSERT OR REPLACE INTO idempotency (user_id, key, created, event) VALUES (?1, ?2, ?3, ?4)";
    /// A page of a listing after a (timestamp, pos) position: the rest of
    /// that timestamp, then later ones, each an index seek (SQLite does not
    /// seek on the row value `(timestamp, pos) > (?, ?)`, and a page would
    /// then cost every earlier event of the same second).
    macro_rules! page_by {
        ($key:literal) => {
            concat!(
                "SELECT * FROM (SELECT ",
                event_columns!(),
                ", pos FROM events WHERE ",
                $key,
                " = ?1 AND timestamp = ?2 AND pos > ?3 ORDER BY pos LIMIT ?4)",
                " UNION ALL SELECT * FROM (SELECT ",
                event_columns!(),
                ", pos FROM events WHERE ",
                $key,
                " = ?1 AND timestamp > ?2 ORDER BY timestamp, pos LIMIT ?4)",
                " ORDER BY timestamp, pos LIMIT ?4"
            )
        };
    }
    pub const BY_COLLECTION: &str = page_by!("collection_id");
    pub const BY_USER: &str = page_by!("user_id");
    pub const DUE: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", pos FROM events WHERE published = 0 AND cancelled = 0 AND timestamp <= ?1",
        " ORDER BY timestamp, pos LIMIT ?2"
    );
    pub const HEAD: &str = "SELECT COALESCE(MAX(seq), 0) FROM events";
    pub const IMPORT_LATEST: &str =
        "INSERT INTO latest (collection_id, event, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (collection_id, event) DO UPDATE SET seq = MAX(seq, excluded.seq)";
    pub const MARK_PUBLISHED: &str = "UPDATE events SET published = 1, seq = ?1 WHERE pos = ?2";
    pub const SET_LATEST: &str =
        "INSERT INTO latest (collection_id, event, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (collection_id, event) DO UPDATE SET seq = excluded.seq";
    pub const NEXT_DUE: &str =
        "SELECT MIN(timestamp) FROM events WHERE published = 0 AND cancelled = 0";
    /// Reads the pending index only (O(pending)); for metrics scrapes.
    pub const PENDING: &str = "SELECT COUNT(*) FROM events WHERE published = 0 AND cancelled = 0";

    /// The latest event of each selected name (of each selected collection
    /// and name when the filter names collections): reads the `latest`
    /// table (one row per collection and name), never the log; with
    /// `public_only`, not from private collections.
    pub fn latest(filter: &Filter, public_only: bool) -> String {
        let public = match public_only {
            true => " AND collection_id NOT IN (SELECT id FROM collections WHERE private = 1)",
            false => "",
        };
        let by = if filter.collections().is_empty() { "event" } else { "collection_id, event" };
        format!(
            "SELECT {}, e.seq FROM (SELECT MAX(seq) AS seq FROM latest WHERE {}{public} GROUP BY {by}) l \
             JOIN events e ON e.seq = l.seq ORDER BY e.seq",
            event_columns!(),
            selection(filter, 1)
        )
    }

    /// Published events in `(?1, ?2]` that the filter selects, by sequence.
    pub fn replay(filter: &Filter) -> String {
        format!(
            "SELECT {}, seq FROM events WHERE seq > ?1 AND seq <= ?2 AND {} ORDER BY seq LIMIT ?3",
            event_columns!(),
            selection(filter, 4)
        )
    }

    /// `collection_id IN (…) AND event IN (…)` with numbered parameters from
    /// `first`, in the order of [`super::filter_params`].
    fn selection(filter: &Filter, first: usize) -> String {
        let list = |column: &str, n: usize, from: usize| {
            let marks: Vec<String> = (from..from + n).map(|i| format!("?{i}")).collect();
            format!("{column} IN ({})", marks.join(", "))
        };
        let (c, e) = (filter.collections().len(), filter.events().len());
        match (c, e) {
            (0, 0) => "1".to_owned(),
            (_, 0) => list("collection_id", c, first),
            (0, _) => list("event", e, first),
            _ => format!("{} AND {}", list("collection_id", c, first), list("event", e, first + c)),
        }
    }

    #[cfg(test)]
    pub const ALL: [&str; 52] = [
        ALL_WEBHOOKS,
        WEBHOOKS_OF,
        INSERT_WEBHOOK,
        EDIT_WEBHOOK,
        WEBHOOK_PROGRESS,
        DELETE_WEBHOOK,
        FIND_USERS,
        SCHEMAS,
        SET_SCHEMA,
        REMOVE_SCHEMA,
        SET_RETENTION,
        KEY_EVENT,
        PUT_KEY,
        PUBLISHED_AFTER,
        COLLECTION_AFTER,
        TRIM_LATEST,
        TRIM_OLDER,
        TRIM_KEYS,
        CLAIMED_BY,
        CLAIM,
        INSERT_COLLECTION,
        SET_PRIVATE,
        SET_MEMBER,
        REMOVE_MEMBER,
        REVOKE,
        PRUNE_REVOKED,
        UPDATE_ACCOUNT,
        BUMP_ACCESS,
        ACCESS_VERSION,
        COLLECTIONS,
        MEMBERS,
        RESTRICTED_USERS,
        REVOKED,
        COLLECTION,
        COLLECTION_MEMBERS,
        USERS_AFTER,
        EVENTS_AFTER,
        IMPORT_LATEST,
        INSERT_USER,
        USER_BY_NAME,
        USER_BY_ID,
        INSERT_EVENT,
        EVENT_BY_ID,
        CANCEL,
        BY_COLLECTION,
        BY_USER,
        DUE,
        HEAD,
        MARK_PUBLISHED,
        SET_LATEST,
        NEXT_DUE,
        PENDING,
    ];
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: User) -> Result<(), StoreError> {
        self.write(move |conn| {
            insert_user(conn, &user).map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::ConstraintViolation) => StoreError::UsernameTaken,
                _ => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(sql::USER_BY_NAME)?.query_row([username], user_from_row).optional()
        })
        .await
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(sql::USER_BY_ID)?.query_row([id], user_from_row).optional()
        })
        .await
    }

    async fn insert_event(
        &self,
        e: Event,
        key: Option<Key>,
        now: Option<i64>,
    ) -> Result<Inserted, StoreError> {
        self.write_publishing(move |conn, published| {
            if let Some(Key { key, now, since }) = key {
                let stored: Option<String> = conn
                    .prepare_cached(sql::KEY_EVENT)?
                    .query_row(params![e.user_id, key, since], |r| r.get(0))
                    .optional()?;
                if let Some(json) = stored {
                    return Ok(Inserted::Again(stored_event(&json)?));
                }
                conn.prepare_cached(sql::PUT_KEY)?.execute(params![
                    e.user_id,
                    key,
                    now,
                    serde_json::to_string(&e).map_err(|e| StoreError::Backend(e.to_string()))?
                ])?;
            }
            // Published now only if nothing else is due: else the
            // scheduler publishes it after those, in timestamp order.
            let due = |now: &i64| e.timestamp <= *now;
            let Some(now) = now.filter(due) else {
                insert_event(conn, &e, None)?;
                return Ok(Inserted::New);
            };
            // (Not `DUE` with a limit of 1: its bound range makes SQLite
            // plan it again each time.)
            let earliest: Option<i64> =
                conn.prepare_cached(sql::NEXT_DUE)?.query_row([], |r| r.get(0))?;
            if earliest.is_some_and(|earliest| earliest <= now) {
                insert_event(conn, &e, None)?;
                return Ok(Inserted::New);
            }
            let seq = head(conn)? + 1;
            let event = Event { published: true, ..e };
            insert_event(conn, &event, Some(seq))?;
            set_latest(conn, [((event.collection_id, event.event.as_str()), seq)])?;
            Ok(Inserted::Published(published.publish(Published { seq, event })))
        })
        .await
    }

    fn publications(&self) -> Option<Publications> {
        self.publications.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    async fn published_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Uuid, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(sql::PUBLISHED_AFTER)?
                .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .await
    }

    async fn collections_after(&self, after: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.read(move |conn| {
            let mut next = conn.prepare_cached(sql::COLLECTION_AFTER)?;
            let mut found: Vec<Uuid> = Vec::new();
            while found.len() < limit {
                let from = found.last().copied().unwrap_or(after);
                match next.query_row([from], |r| r.get(0)).optional()? {
                    Some(id) => found.push(id),
                    None => break,
                }
            }
            Ok(found)
        })
        .await
    }

    async fn trim(&self, trims: Vec<Trim>, limit: usize) -> Result<Vec<u64>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let one = |trim| -> Result<u64, StoreError> {
                Ok(match trim {
                    Trim::Latest { collection, event, keep } => conn
                        .prepare_cached(sql::TRIM_LATEST)?
                        .execute(params![collection, event, keep - 1, limit])?,
                    Trim::Older { collection, before } => conn
                        .prepare_cached(sql::TRIM_OLDER)?
                        .execute(params![collection, before, limit])?,
                    Trim::Keys { before } => {
                        conn.prepare_cached(sql::TRIM_KEYS)?.execute(params![before, limit])?
                    }
                } as u64)
            };
            trims.into_iter().map(one).collect()
        })
        .await
    }

    async fn reclaim(&self) -> Result<(), StoreError> {
        // Freed pages are reused by the next inserts: only a surplus beyond
        // FREE_PAGES goes back, a few thousand pages at a time, so that the
        // writer is never held for long.
        self.write(|conn| {
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            if free > FREE_PAGES {
                let pages = (free - FREE_PAGES).min(4 * FREE_PAGES);
                conn.execute_batch(&format!("PRAGMA incremental_vacuum({pages})"))?;
            }
            Ok(())
        })
        .await
    }

    async fn cancel_event(&self, id: Uuid, user_id: Uuid) -> Result<Cancel, StoreError> {
        self.write(move |conn| {
            let found = conn.prepare_cached(sql::EVENT_BY_ID)?.query_row([id], event_from_row);
            let Some(event) = found.optional()? else {
                return Ok(Cancel::NotFound);
            };
            if event.user_id != user_id {
                return Ok(Cancel::NotOwner);
            }
            if event.cancelled {
                return Ok(Cancel::AlreadyCancelled);
            }
            if event.published {
                return Ok(Cancel::AlreadyPublished);
            }
            conn.prepare_cached(sql::CANCEL)?.execute([id])?;
            Ok(Cancel::Cancelled(Event { cancelled: true, ..event }))
        })
        .await
    }

    async fn list(
        &self,
        of: ListOf,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let (statement, key) = match of {
            ListOf::Collection(id) => (sql::BY_COLLECTION, id),
            ListOf::User(id) => (sql::BY_USER, id),
            ListOf::Nothing => return Ok(Vec::new()),
        };
        let after = after.unwrap_or(Position::START);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(statement)?
                .query_map(params![key, after.timestamp, after.pos, limit], |row| {
                    let event = event_from_row(row)?;
                    let position = Position { timestamp: event.timestamp, pos: row.get(8)? };
                    Ok(Listed { event, position })
                })?
                .collect()
        })
        .await
    }

    async fn publish_due(&self, now: i64, limit: usize) -> Result<Vec<Published>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| publish(conn, now, limit)).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| conn.prepare_cached(sql::NEXT_DUE)?.query_row([], |r| r.get(0))).await
    }

    async fn snapshot(&self, filter: &Filter, public_only: bool) -> Result<Snapshot, StoreError> {
        let (statement, params) = (sql::latest(filter, public_only), filter_params(filter));
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let head = head(&tx)?;
            let latest = tx
                .prepare_cached(&statement)?
                .query_map(rusqlite::params_from_iter(params), published_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Snapshot { latest, head })
        })
        .await
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        self.read(|conn| conn.prepare_cached(sql::PENDING)?.query_row([], |r| r.get(0))).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.read(head).await
    }

    async fn replay(
        &self,
        after: i64,
        until: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Published>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let statement = sql::replay(filter);
        let params: Vec<rusqlite::types::Value> = [after.into(), until.into(), limit.into()]
            .into_iter()
            .chain(filter_params(filter))
            .collect();
        self.read(move |conn| {
            conn.prepare_cached(&statement)?
                .query_map(rusqlite::params_from_iter(params), published_from_row)?
                .collect()
        })
        .await
    }

    async fn users_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let (after, limit) =
            (after.unwrap_or(Uuid::nil()), i64::try_from(limit).unwrap_or(i64::MAX));
        self.read(move |conn| {
            conn.prepare_cached(sql::USERS_AFTER)?
                .query_map(params![after, limit], user_from_row)?
                .collect()
        })
        .await
    }

    async fn events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event, Option<i64>)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(sql::EVENTS_AFTER)?
                .query_map(params![after, limit], |row| {
                    Ok((row.get(9)?, event_from_row(row)?, row.get(8)?))
                })?
                .collect()
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.read(|conn| conn.prepare_cached(sql::IS_EMPTY)?.query_row([], |r| r.get(0))).await
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut latest = conn.prepare_cached(sql::IMPORT_LATEST)?;
            for record in records {
                match record {
                    Record::User(u) => {
                        insert_user(conn, &u)?;
                    }
                    Record::Collection { id, rule } => insert_collection(conn, id, &rule)?,
                    Record::Event { event: e, seq } => {
                        insert_event(conn, &e, seq)?;
                        if let Some(seq) = seq {
                            latest.execute(params![e.collection_id, e.event, seq])?;
                        }
                    }
                    Record::Webhook(h) => {
                        insert_webhook(conn, &h)?;
                    }
                }
            }
            conn.prepare_cached(sql::BUMP_ACCESS)?.execute([])?;
            Ok(())
        })
        .await
    }

    async fn change(&self, change: Change) -> Result<Changed, StoreError> {
        self.write(move |conn| apply(conn, change)).await
    }

    async fn access_version(&self) -> Result<i64, StoreError> {
        self.read(|conn| conn.prepare_cached(sql::ACCESS_VERSION)?.query_row([], |r| r.get(0)))
            .await
    }

    async fn access(&self) -> Result<AccessState, StoreError> {
        self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut state = AccessState {
                version: tx.prepare_cached(sql::ACCESS_VERSION)?.query_row([], |r| r.get(0))?,
                ..AccessState::default()
            };
            let mut rules: std::collections::HashMap<Uuid, Rule> = tx
                .prepare_cached(sql::COLLECTIONS)?
                .query_map([], |r| {
                    let retention = Retention { max_age: r.get(3)?, keep_latest: r.get(4)? };
                    let rule =
                        Rule { owner: r.get(1)?, private: r.get(2)?, retention, ..Rule::default() };
                    Ok((r.get(0)?, rule))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut members = tx.prepare_cached(sql::MEMBERS)?;
            let mut rows = members.query([])?;
            while let Some(r) = rows.next()? {
                let collection: Uuid = r.get(0)?;
                let role = role_from(&r.get::<_, String>(2)?)?;
                if let Some(rule) = rules.get_mut(&collection) {
                    rule.members.insert(r.get(1)?, role);
                }
            }
            let mut schemas = tx.prepare_cached(sql::SCHEMAS)?;
            let mut rows = schemas.query([])?;
            while let Some(r) = rows.next()? {
                let text: String = r.get(2)?;
                let schema = serde_json::from_str(&text).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(2, Type::Text, Box::new(e))
                })?;
                if let Some(rule) = rules.get_mut(&r.get::<_, Uuid>(0)?) {
                    rule.schemas.insert(r.get(1)?, schema);
                }
            }
            state.collections = rules.into_iter().map(|(id, rule)| (id, Arc::new(rule))).collect();
            state.users = tx
                .prepare_cached(sql::RESTRICTED_USERS)?
                .query_map([], |r| {
                    Ok((r.get(0)?, Standing { generation: r.get(1)?, disabled: r.get(2)? }))
                })?
                .collect::<rusqlite::Result<_>>()?;
            state.revoked = tx
                .prepare_cached(sql::REVOKED)?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(state)
        })
        .await
    }

    async fn collection(&self, id: Uuid) -> Result<Option<Collection>, StoreError> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let Some((owner, private, retention)) = tx
                .prepare_cached(sql::COLLECTION)?
                .query_row([id], |r| {
                    let owner = Member { user_id: r.get(0)?, username: r.get(1)?, role: None };
                    let retention = Retention { max_age: r.get(3)?, keep_latest: r.get(4)? };
                    Ok((owner, r.get(2)?, retention))
                })
                .optional()?
            else {
                return Ok(None);
            };
            let members = tx
                .prepare_cached(sql::COLLECTION_MEMBERS)?
                .query_map([id], |r| {
                    let role = role_from(&r.get::<_, String>(2)?)?;
                    Ok(Member { user_id: r.get(0)?, username: r.get(1)?, role: Some(role) })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(Collection { id, owner, private, members, retention }))
        })
        .await
    }

    async fn find_users(
        &self,
        search: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let (search, after) = (search.to_owned(), after.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(sql::FIND_USERS)?
                .query_map(params![search, after, limit], user_from_row)?
                .collect()
        })
        .await
    }

    async fn keep_secret(&self, candidate: String) -> Result<String, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || stored_secret(&dir, candidate))
            .await
            .map_err(|e| StoreError::Backend(format!("secret task failed: {e}")))?
            .map_err(|e| StoreError::Backend(format!("cannot keep the secret: {e}")))
    }

    async fn acme_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let path = acme_path(&self.dir, name);
        blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn acme_put(&self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let path = acme_path(&self.dir, name);
        let value = value.map(str::to_owned);
        blocking(move || match value {
            Some(value) => write_private(&path, &value),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        })
        .await
    }

    async fn lease(&self, _: &str, _: &str, _: i64, _: i64) -> Result<bool, StoreError> {
        Ok(true) // One node per SQLite database.
    }

    async fn webhooks(&self, collection: Option<Uuid>) -> Result<Vec<Webhook>, StoreError> {
        self.read(move |conn| match collection {
            Some(id) => {
                conn.prepare_cached(sql::WEBHOOKS_OF)?.query_map([id], webhook_from_row)?.collect()
            }
            None => {
                conn.prepare_cached(sql::ALL_WEBHOOKS)?.query_map([], webhook_from_row)?.collect()
            }
        })
        .await
    }

    async fn add_webhook(&self, h: Webhook, limit: usize) -> Result<bool, StoreError> {
        // The one writer runs this closure alone: nothing comes between the
        // count and the insert.
        self.write(move |conn| {
            let count: i64 = conn
                .prepare_cached(sql::COUNT_WEBHOOKS)?
                .query_row([h.collection], |r| r.get(0))?;
            Ok(usize::try_from(count).unwrap_or(usize::MAX) < limit
                && insert_webhook(conn, &h)? == 1)
        })
        .await
    }

    async fn edit_webhook(&self, h: Webhook) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let changed = conn.prepare_cached(sql::EDIT_WEBHOOK)?.execute(params![
                h.id,
                h.url,
                h.events.join("\n"),
                h.description,
                h.secret,
                h.paused,
                h.failing
            ])?;
            Ok(changed == 1)
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
        self.write(move |conn| {
            conn.prepare_cached(sql::WEBHOOK_PROGRESS)?
                .execute(params![id, delivered, attempts, failing])?;
            Ok(())
        })
        .await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write(move |conn| Ok(conn.prepare_cached(sql::DELETE_WEBHOOK)?.execute([id])? == 1))
            .await
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Backend(format!("file task failed: {e}")))?
        .map_err(|e| StoreError::Backend(format!("data directory: {e}")))
}

/// The file of an ACME state value, `<data>/acme/<name>` (names are made
/// of domain names, URLs and base64url tokens; anything else becomes `_`).
fn acme_path(dir: &Path, name: &str) -> PathBuf {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let file: String = name.chars().map(|c| if safe(c) { c } else { '_' }).collect();
    dir.join("acme").join(file)
}

/// Creates `dir` and its missing parents, readable by their owner only
/// (whatever the umask, which can only take bits away).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the empty file `path`, readable by its owner only, unless it
/// exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

/// What in the data directory others than its owner may read or enter:
/// the directory itself, the database with its WAL and shared memory, the
/// secret, the ACME state (each with its mode).
#[cfg(unix)]
pub fn loose_permissions(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let names =
        ["", "broker.sqlite3", "broker.sqlite3-wal", "broker.sqlite3-shm", "secret", "acme"];
    let mut found: Vec<PathBuf> =
        names.iter().map(|n| if n.is_empty() { dir.to_owned() } else { dir.join(n) }).collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("acme")) {
        found.extend(entries.flatten().map(|e| e.path()));
    }
    found
        .into_iter()
        .filter_map(|path| {
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some((path, mode))
        })
        .collect()
}

/// Where modes do not exist, nothing is looser than the system's rules.
#[cfg(not(unix))]
pub fn loose_permissions(_: &Path) -> Vec<(PathBuf, u32)> {
    Vec::new()
}

/// Writes `value` to `path` whole (through a temporary file), readable by
/// its owner only.
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp"); // beside it, never another file's (not `with_extension`)
    let temporary = PathBuf::from(temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(value.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// The JWT secret kept in the data directory, `candidate` written there
/// (readable by its owner only) if there is none yet.
fn stored_secret(dir: &Path, candidate: String) -> std::io::Result<String> {
    let path = dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_private(&path, &candidate)?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No statement reads the users or events tables without an index: each
    /// request costs the same on a database of any size.
    #[test]
    fn every_statement_uses_an_index_and_binds_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("plan.sqlite3")).unwrap();
        migrate(&mut conn).unwrap();
        let some = || (vec![Uuid::new_v4(), Uuid::new_v4()], vec!["a".to_owned(), "b".to_owned()]);
        let filters = [
            Filter::default(),
            Filter::new(some().0, vec![]).unwrap(),
            Filter::new(vec![], some().1).unwrap(),
            Filter::new(some().0, some().1).unwrap(),
        ];
        let dynamic = filters
            .iter()
            .flat_map(|f| [sql::latest(f, true), sql::latest(f, false), sql::replay(f)]);
        let statements = sql::ALL.iter().map(|s| s.to_string()).chain(dynamic);
        for statement in statements {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {statement}")).unwrap();
            let mut rows = plan.raw_query(); // parameters stay unbound
            let mut steps = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get::<_, String>(3).unwrap());
            }
            for step in &steps {
                // Counting pending events walks the pending index, nothing
                // else; the restricted accounts are read from their own.
                let pending_only = step == "SCAN events USING COVERING INDEX events_pending"
                    || step.starts_with("SCAN users USING COVERING INDEX users_restricted");
                let full_scan = (step.starts_with("SCAN events") || step.starts_with("SCAN users"))
                    && !pending_only;
                assert!(!full_scan, "{statement}\nscans a table: {steps:?}");
            }
            // Positional binding takes `?n` as the n-th value; `$n` would
            // be numbered by first appearance.
            let prepared = conn.prepare(&statement).unwrap();
            for i in 1..=prepared.parameter_count() {
                assert_eq!(prepared.parameter_name(i), Some(&*format!("?{i}")), "{statement}");
            }
        }
    }
}
