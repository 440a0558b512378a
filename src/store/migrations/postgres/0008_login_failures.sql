-- Failed logins shared by the nodes: `key` is a 64-bit digest of a
-- username or client address, `count` the failures within the window of
-- each other, `last` the latest (UNIX milliseconds).
CREATE TABLE login_failures (
    key   bigint PRIMARY KEY,
    count integer NOT NULL,
    last  bigint NOT NULL
);
CREATE INDEX login_failures_by_last ON login_failures (last);
