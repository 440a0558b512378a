-- Users and the immutable event log. UUIDs are 16-byte blobs.
CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    collection_id BLOB NOT NULL
);

-- `pos` is insertion order (it breaks timestamp ties); `seq` is the
-- publication sequence, NULL until the event is published.
CREATE TABLE events (
    pos           INTEGER PRIMARY KEY,
    id            BLOB NOT NULL UNIQUE,
    user_id       BLOB NOT NULL,
    collection_id BLOB NOT NULL,
    event         TEXT NOT NULL,
    timestamp     INTEGER NOT NULL,
    published     INTEGER NOT NULL DEFAULT 0,
    cancelled     INTEGER NOT NULL DEFAULT 0,
    data          TEXT NOT NULL,
    seq           INTEGER UNIQUE
);

-- Each index ends with the rowid (pos), so "ORDER BY timestamp, pos" is free.
CREATE INDEX events_by_collection ON events (collection_id, timestamp);
CREATE INDEX events_by_user ON events (user_id, timestamp);
CREATE INDEX events_pending ON events (timestamp) WHERE published = 0 AND cancelled = 0;

-- The sequence number of the latest published event per collection and name:
-- the current state, kept so that a new subscriber's sync reads no history.
CREATE TABLE latest (
    collection_id BLOB NOT NULL,
    event         TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (collection_id, event)
) WITHOUT ROWID;
CREATE INDEX latest_by_event ON latest (event, seq);
