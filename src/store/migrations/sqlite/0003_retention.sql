-- Retention: how long a claimed collection keeps its events (NULL: no limit).
ALTER TABLE collections ADD COLUMN max_age INTEGER;
ALTER TABLE collections ADD COLUMN keep_latest INTEGER;
-- The events of one collection and name by sequence: keep-latest-N trims.
CREATE INDEX events_by_name ON events (collection_id, event, seq);

-- Idempotency keys: the event each user's key stored, answered again to a
-- retry until the key is forgotten (`--idempotency-window`).
CREATE TABLE idempotency (
    user_id BLOB NOT NULL,
    key     TEXT NOT NULL,
    created INTEGER NOT NULL,
    event   TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_by_created ON idempotency (created);
