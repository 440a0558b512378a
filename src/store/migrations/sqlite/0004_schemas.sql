-- The JSON Schemas of claimed collections, by event name or pattern (`card:*`).
CREATE TABLE schemas (
    collection_id BLOB NOT NULL,
    event         TEXT NOT NULL,
    schema        TEXT NOT NULL,
    PRIMARY KEY (collection_id, event)
) WITHOUT ROWID;
