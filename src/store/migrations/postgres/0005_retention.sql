-- Retention: how long a claimed collection keeps its events (NULL: no limit).
ALTER TABLE collections ADD COLUMN max_age bigint;
ALTER TABLE collections ADD COLUMN keep_latest bigint;
-- The events of one collection and name by sequence: keep-latest-N trims.
CREATE INDEX events_by_name ON events (collection_id, event, seq);

-- Idempotency keys: the event each user's key stored, answered again to a
-- retry until the key is forgotten (`--idempotency-window`).
CREATE TABLE idempotency (
    user_id uuid NOT NULL,
    key     text NOT NULL,
    created bigint NOT NULL,
    event   text NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_by_created ON idempotency (created);
