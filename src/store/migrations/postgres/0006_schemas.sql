-- The JSON Schemas of claimed collections, by event name or pattern (`card:*`).
CREATE TABLE schemas (
    collection_id uuid NOT NULL,
    event         text NOT NULL,
    schema        text NOT NULL,
    PRIMARY KEY (collection_id, event)
);
