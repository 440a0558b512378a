-- Webhook endpoints of claimed collections and where delivery stands:
-- `delivered` is the highest sequence number delivered (or passed over as
-- not matching); `events` the names or patterns it receives, one a line;
-- `attempts` the latest attempts, as JSON.
CREATE TABLE webhooks (
    id            BLOB PRIMARY KEY,
    collection_id BLOB NOT NULL,
    url           TEXT NOT NULL,
    events        TEXT NOT NULL,
    description   TEXT NOT NULL,
    secret        TEXT NOT NULL,
    paused        INTEGER NOT NULL,
    failing       TEXT,
    delivered     INTEGER NOT NULL,
    attempts      TEXT NOT NULL,
    created       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhooks_by_collection ON webhooks (collection_id);
