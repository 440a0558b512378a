-- Accounts: administrators, disabled accounts, and the token generation
-- (tokens issued in an earlier generation are revoked).
ALTER TABLE users ADD COLUMN admin boolean NOT NULL DEFAULT false,
    ADD COLUMN disabled boolean NOT NULL DEFAULT false,
    ADD COLUMN generation bigint NOT NULL DEFAULT 0;
-- The accounts every node keeps in memory: few, read without a scan.
CREATE INDEX users_restricted ON users (id, generation, disabled) WHERE generation > 0 OR disabled;

-- Claimed collections and their members (role 'reader' or 'writer').
CREATE TABLE collections (
    id      uuid PRIMARY KEY,
    owner   uuid NOT NULL,
    private boolean NOT NULL
);
CREATE TABLE members (
    collection_id uuid NOT NULL,
    user_id       uuid NOT NULL,
    role          text NOT NULL,
    PRIMARY KEY (collection_id, user_id)
);

-- Logged-out tokens, until they expire.
CREATE TABLE revoked (
    jti uuid PRIMARY KEY,
    exp bigint NOT NULL
);
CREATE INDEX revoked_by_exp ON revoked (exp);

-- Bumped by every change above: nodes reload the rules when it moves.
CREATE TABLE access_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO access_version (version) VALUES (0);
