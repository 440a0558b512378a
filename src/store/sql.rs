//! The SQL that both backends run word for word, written once.
//!
//! Statements are written with PostgreSQL's `$n` parameters and offered in
//! two spellings: [`postgres`] as written, [`sqlite`] with `?n` for `$n`,
//! respelled at compile time (SQLite numbers `$n` by first appearance, not
//! by `n`, so `SET a = $2 WHERE id = $1` would bind the wrong values).
//! What the dialects spell differently (arrays, booleans in partial
//! indexes, row values, locks) stays in each backend's own `sql` module.

/// The columns of an event row, in the order the backends read them.
macro_rules! event_columns {
    () => {
        "id, user_id, collection_id, event, timestamp, published, cancelled, data"
    };
}

/// The columns of a user row, in the order the backends read them.
macro_rules! user_columns {
    () => {
        "id, username, password_hash, collection_id, admin, disabled, generation"
    };
}

/// The columns of a webhook row, in the order the backends read them.
macro_rules! webhook_columns {
    () => {
        "id, collection_id, url, events, description, secret, paused, failing, delivered, attempts, created"
    };
}

/// `sql` with every `$` replaced by `?`, as bytes (`N` is `sql.len()`).
const fn respell<const N: usize>(sql: &str) -> [u8; N] {
    let bytes = sql.as_bytes();
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = if bytes[i] == b'$' { b'?' } else { bytes[i] };
        i += 1;
    }
    out
}

/// Defines each statement once, in both spellings.
macro_rules! shared {
    ($($(#[$doc:meta])* $name:ident = $sql:expr;)*) => {
        /// The shared statements as PostgreSQL takes them.
        pub mod postgres {
            $($(#[$doc])* pub const $name: &str = $sql;)*
        }

        /// The shared statements as SQLite takes them: `?n` for `$n`.
        pub mod sqlite {
            $($(#[$doc])* pub const $name: &str = {
                const BYTES: [u8; $sql.len()] = super::respell($sql);
                match std::str::from_utf8(&BYTES) {
                    Ok(sql) => sql,
                    Err(_) => panic!("a statement is not UTF-8"),
                }
            };)*
        }
    };
}

shared! {
    INSERT_USER =
        concat!("INSERT INTO users (", user_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)");
    USER_BY_NAME = concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1");
    USER_BY_ID = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    USERS_AFTER =
        concat!("SELECT ", user_columns!(), " FROM users WHERE id > $1 ORDER BY id LIMIT $2");
    UPDATE_ACCOUNT = "UPDATE users SET password_hash = COALESCE($2, password_hash),
         disabled = COALESCE($3, disabled), admin = COALESCE($4, admin),
         generation = generation + $5 WHERE id = $1";
    CLAIMED_BY = "SELECT owner FROM collections WHERE id = $1";
    /// The claim rules: `$2` claims collection `$1` unless it is claimed
    /// already or somebody else has written to it (then nothing is added,
    /// and [`CLAIMED_BY`] tells which).
    CLAIM = "INSERT INTO collections (id, owner, private) SELECT $1, $2, $3
         WHERE NOT EXISTS (SELECT 1 FROM events WHERE collection_id = $1 AND user_id <> $2)
         ON CONFLICT DO NOTHING";
    /// A claimed collection as it is (imports).
    INSERT_COLLECTION = "INSERT INTO collections (id, owner, private, max_age, keep_latest)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    SET_PRIVATE = "UPDATE collections SET private = $2 WHERE id = $1";
    SET_RETENTION = "UPDATE collections SET max_age = $2, keep_latest = $3 WHERE id = $1";
    SET_MEMBER = "INSERT INTO members (collection_id, user_id, role) VALUES ($1, $2, $3)
         ON CONFLICT (collection_id, user_id) DO UPDATE SET role = excluded.role";
    REMOVE_MEMBER = "DELETE FROM members WHERE collection_id = $1 AND user_id = $2";
    COLLECTIONS = "SELECT id, owner, private, max_age, keep_latest FROM collections";
    MEMBERS = "SELECT collection_id, user_id, role FROM members";
    SCHEMAS = "SELECT collection_id, event, schema FROM schemas";
    SET_SCHEMA = "INSERT INTO schemas (collection_id, event, schema) VALUES ($1, $2, $3)
         ON CONFLICT (collection_id, event) DO UPDATE SET schema = excluded.schema";
    REMOVE_SCHEMA = "DELETE FROM schemas WHERE collection_id = $1 AND event = $2";
    COLLECTION_MEMBERS = "SELECT m.user_id, COALESCE(u.username, ''), m.role
         FROM members m LEFT JOIN users u ON u.id = m.user_id
         WHERE m.collection_id = $1 ORDER BY u.username";
    REVOKE = "INSERT INTO revoked (jti, exp) VALUES ($1, $2) ON CONFLICT DO NOTHING";
    PRUNE_REVOKED = "DELETE FROM revoked WHERE exp < $1";
    REVOKED = "SELECT jti FROM revoked";
    BUMP_ACCESS = "UPDATE access_version SET version = version + 1";
    ACCESS_VERSION = "SELECT version FROM access_version";
    EVENT_BY_ID = concat!("SELECT ", event_columns!(), " FROM events WHERE id = $1");
    EVENTS_AFTER = concat!(
        "SELECT ",
        event_columns!(),
        ", seq, pos FROM events WHERE pos > $1 ORDER BY pos LIMIT $2"
    );
    /// The stored event of a user's idempotency key, unless forgotten.
    KEY_EVENT = "SELECT event FROM idempotency WHERE user_id = $1 AND key = $2 AND created >= $3";
    PUBLISHED_AFTER =
        "SELECT seq, collection_id, event FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";
    /// The next collection id after $1 (one index seek each).
    COLLECTION_AFTER = "SELECT collection_id FROM events WHERE collection_id > $1
         ORDER BY collection_id LIMIT 1";
    /// All but the latest $3 + 1 published events of a collection and name
    /// ($3 is keep − 1), $4 at most, none that an active webhook has yet to
    /// deliver. No statement deletes the row with the
    /// highest `pos`, so SQLite never hands its rowid out again.
    TRIM_LATEST = "DELETE FROM events WHERE pos IN (SELECT pos FROM events
         WHERE collection_id = $1 AND event = $2 AND seq < (SELECT seq FROM events
             WHERE collection_id = $1 AND event = $2 AND seq IS NOT NULL
             ORDER BY seq DESC LIMIT 1 OFFSET $3)
         AND seq <= COALESCE((SELECT MIN(delivered) FROM webhooks
             WHERE collection_id = $1 AND NOT paused), seq)
         LIMIT $4) AND pos < (SELECT MAX(pos) FROM events)";
    /// Published or cancelled events of a collection older than $2, but the
    /// latest of each name and those an active webhook has yet to deliver,
    /// $3 at most.
    TRIM_OLDER = "DELETE FROM events WHERE pos IN (SELECT pos FROM events e
         WHERE collection_id = $1 AND timestamp < $2 AND (published OR cancelled)
         AND (seq IS NULL OR seq < (SELECT l.seq FROM latest l
             WHERE l.collection_id = e.collection_id AND l.event = e.event)
             AND seq <= COALESCE((SELECT MIN(w.delivered) FROM webhooks w
                 WHERE w.collection_id = $1 AND NOT w.paused), seq))
         LIMIT $3) AND pos < (SELECT MAX(pos) FROM events)";
    TRIM_KEYS = "DELETE FROM idempotency WHERE (user_id, key) IN
         (SELECT user_id, key FROM idempotency WHERE created < $1 LIMIT $2)";
    ALL_WEBHOOKS = concat!("SELECT ", webhook_columns!(), " FROM webhooks ORDER BY created, id");
    WEBHOOKS_OF = concat!(
        "SELECT ",
        webhook_columns!(),
        " FROM webhooks WHERE collection_id = $1 ORDER BY created, id"
    );
    INSERT_WEBHOOK = concat!(
        "INSERT INTO webhooks (",
        webhook_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    );
    COUNT_WEBHOOKS = "SELECT count(*) FROM webhooks WHERE collection_id = $1";
    /// What the owner changes of a webhook.
    EDIT_WEBHOOK = "UPDATE webhooks SET url = $2, events = $3, description = $4, secret = $5,
         paused = $6, failing = $7 WHERE id = $1";
    /// Where delivery stands; a failure ($4) also pauses the webhook.
    WEBHOOK_PROGRESS = "UPDATE webhooks SET delivered = $2, attempts = $3,
         failing = COALESCE($4, failing), paused = (paused OR $4 IS NOT NULL) WHERE id = $1";
    DELETE_WEBHOOK = "DELETE FROM webhooks WHERE id = $1";
    /// Reads at most one row of each table.
    IS_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM users) AND NOT EXISTS (SELECT 1 FROM events)";
}
