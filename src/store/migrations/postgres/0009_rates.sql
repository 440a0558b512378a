-- Rate limits shared by the nodes (sign-ups per client address): a token
-- bucket per `key` (a 64-bit digest), `tokens` left at `at` (UNIX
-- milliseconds), and whether the latest attempt got one. A row idle long
-- enough to be full again is deleted.
CREATE TABLE rates (
    key    bigint PRIMARY KEY,
    tokens double precision NOT NULL,
    at     bigint NOT NULL,
    taken  boolean NOT NULL
);
CREATE INDEX rates_by_at ON rates (at);
