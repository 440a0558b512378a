-- Presence (who has which collection open), as each node says it: a row
-- per node, collection and user (the nil UUID: that node's anonymous
-- streams), rewritten by its node when it changes. Unlogged: presence is
-- what is true now, and a crashed database forgets it as every node does.
CREATE UNLOGGED TABLE presence_nodes (
    node uuid PRIMARY KEY,
    -- When the node last said it is alive, in the database's milliseconds.
    seen bigint NOT NULL
);

CREATE UNLOGGED TABLE presence (
    collection_id uuid NOT NULL,
    node uuid NOT NULL,
    user_id uuid NOT NULL,
    username text NOT NULL,
    connections integer NOT NULL,
    since bigint NOT NULL,
    PRIMARY KEY (collection_id, node, user_id)
);
CREATE INDEX presence_by_node ON presence (node);
