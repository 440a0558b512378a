-- Webhook endpoints of claimed collections and where delivery stands:
-- `delivered` is the highest sequence number delivered (or passed over as
-- not matching); `events` the names or patterns it receives, one a line;
-- `attempts` the latest attempts, as JSON.
CREATE TABLE webhooks (
    id            uuid PRIMARY KEY,
    collection_id uuid NOT NULL,
    url           text NOT NULL,
    events        text NOT NULL,
    description   text NOT NULL,
    secret        text NOT NULL,
    paused        boolean NOT NULL,
    failing       text,
    delivered     bigint NOT NULL,
    attempts      text NOT NULL,
    created       bigint NOT NULL
);
CREATE INDEX webhooks_by_collection ON webhooks (collection_id);
