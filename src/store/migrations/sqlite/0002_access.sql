-- Accounts: administrators, disabled accounts, and the token generation
-- (tokens issued in an earlier generation are revoked).
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
-- The accounts every node keeps in memory: few, read without a scan.
CREATE INDEX users_restricted ON users (id, generation, disabled) WHERE generation > 0 OR disabled = 1;

-- Claimed collections and their members (role 'reader' or 'writer').
CREATE TABLE collections (
    id      BLOB PRIMARY KEY NOT NULL,
    owner   BLOB NOT NULL,
    private INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (
    collection_id BLOB NOT NULL,
    user_id       BLOB NOT NULL,
    role          TEXT NOT NULL,
    PRIMARY KEY (collection_id, user_id)
) WITHOUT ROWID;

-- Logged-out tokens, until they expire.
CREATE TABLE revoked (
    jti BLOB PRIMARY KEY NOT NULL,
    exp INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX revoked_by_exp ON revoked (exp);

-- Bumped by every change above: nodes reload the rules when it moves.
CREATE TABLE access_version (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    version  INTEGER NOT NULL
);
INSERT INTO access_version VALUES (1, 0);
