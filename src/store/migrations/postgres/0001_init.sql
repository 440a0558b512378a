-- Users and the immutable event log, shared by every node of a cluster.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    collection_id uuid NOT NULL
);

-- `pos` is insertion order (it breaks timestamp ties); `seq` is the
-- publication sequence, NULL until the event is published. `data` is the
-- client's JSON as text, byte for byte (jsonb would reorder its keys).
CREATE TABLE events (
    pos           bigserial PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    user_id       uuid NOT NULL,
    collection_id uuid NOT NULL,
    event         text NOT NULL,
    timestamp     bigint NOT NULL,
    published     boolean NOT NULL DEFAULT false,
    cancelled     boolean NOT NULL DEFAULT false,
    data          text NOT NULL,
    seq           bigint UNIQUE
);

CREATE INDEX events_by_collection ON events (collection_id, timestamp, pos);
CREATE INDEX events_by_user ON events (user_id, timestamp, pos);
CREATE INDEX events_pending ON events (timestamp, pos) WHERE NOT published AND NOT cancelled;

-- The sequence number of the latest published event per collection and name.
CREATE TABLE latest (
    collection_id uuid NOT NULL,
    event         text NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (collection_id, event)
);
CREATE INDEX latest_by_event ON latest (event, seq);

-- The highest sequence number published. Its one row is locked by every
-- publication until it commits: that lock is what makes sequence numbers
-- become visible in order (see postgres.rs).
CREATE TABLE head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL
);
INSERT INTO head (seq) VALUES (0);

-- Values every node shares, such as the generated JWT secret.
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
