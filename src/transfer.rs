//! The commands that work on a store directly: `broker export` and `broker
//! import`, a store's users and events as JSON Lines, to move between
//! backends (SQLite ⇄ PostgreSQL) or to back up; `broker admin`.
//!
//! One record per line: `{"user": {...}}` for each user (with its password
//! hash and account state), `{"collection": {...}}` for each claimed
//! collection (owner, privacy, members, schemas, retention), `{"webhook":
//! {...}}` for each webhook (with its signing secret and where its delivery
//! stands), then `{"event": {"event": {...}, "seq": n}}` for each event in
//! insertion order, with its publication sequence number (`null` while it is
//! pending). Ids, states, sequence numbers and hashes survive, so users log
//! in with their passwords and subscribers resume with their last event
//! ids. The JWT secret is not exported: give the new store's nodes the old
//! `--secret` to keep issued tokens valid. The records are the store's
//! ([`Record`]).

use std::io::{BufRead, Write};
use std::sync::Arc;

use crate::store::{Change, Record, Store, StoreError};

/// Records read or written at a time.
const BATCH: usize = 1000;

/// Why an export, an import or `broker admin` failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line is not a record.
    #[error("line {line}: {error}")]
    Invalid {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        error: String,
    },
    /// `broker admin` named a user who does not exist.
    #[error("no user is named {0:?}")]
    NoUser(String),
    /// Import only fills an empty store.
    #[error("the store already holds users or events; import needs an empty one")]
    NotEmpty,
}

/// Writes every user, every claimed collection, every webhook, then every event, of `store` to `out`; returns how
/// many records were written.
pub async fn export(store: &dyn Store, mut out: impl Write) -> Result<usize, TransferError> {
    let mut written = 0;
    let mut after = None;
    loop {
        let users = store.users_after(after, BATCH).await?;
        for user in &users {
            write_line(&mut out, &Record::User(user.clone()))?;
        }
        written += users.len();
        match users.last() {
            Some(last) if users.len() == BATCH => after = Some(last.id),
            _ => break,
        }
    }
    let mut claimed: Vec<_> = store.access().await?.collections.into_iter().collect();
    claimed.sort_by_key(|(id, _)| *id);
    for (id, rule) in claimed {
        write_line(&mut out, &Record::Collection { id, rule: Arc::unwrap_or_clone(rule) })?;
        written += 1;
    }
    for hook in store.webhooks(None).await? {
        write_line(&mut out, &Record::Webhook(hook))?;
        written += 1;
    }
    let mut after = 0;
    loop {
        let events = store.events_after(after, BATCH).await?;
        for (_, event, seq) in &events {
            write_line(&mut out, &Record::Event { event: event.clone(), seq: *seq })?;
        }
        written += events.len();
        match events.last() {
            Some((pos, _, _)) if events.len() == BATCH => after = *pos,
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}

fn write_line(out: &mut impl Write, record: &Record) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, record).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Reads an export into `store`, which must be empty; returns how many
/// records were imported.
pub async fn import(store: &dyn Store, input: impl BufRead) -> Result<usize, TransferError> {
    if !store.is_empty().await? {
        return Err(TransferError::NotEmpty);
    }
    let (mut batch, mut imported) = (Vec::with_capacity(BATCH), 0);
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| TransferError::Invalid { line: n + 1, error: e.to_string() })?;
        batch.push(record);
        if batch.len() == BATCH {
            imported += batch.len();
            store.import(std::mem::take(&mut batch)).await?;
        }
    }
    imported += batch.len();
    store.import(batch).await?;
    Ok(imported)
}

/// Makes `username` an administrator (or not): `broker admin grant|revoke`.
pub async fn set_admin(
    store: &dyn Store,
    username: &str,
    admin: bool,
) -> Result<(), TransferError> {
    let user = store
        .user_by_name(username)
        .await?
        .ok_or_else(|| TransferError::NoUser(username.to_owned()))?;
    let change = Change::Account {
        user: user.id,
        password_hash: None,
        disabled: None,
        admin: Some(admin),
        revoke: false,
    };
    store.change(change).await?;
    tracing::info!(target: "broker::admin", by = "command line", user = %username, admin, "administrator {}", if admin { "granted" } else { "revoked" });
    Ok(())
}
