-- Which node inserted each event, and when it became due (its timestamp,
-- or the insert time for an event dated in the past). The node that
-- inserted an event wakes to publish it when it is due; the others only
-- once it is overdue (that node is gone), so that nodes do not all contend
-- for every publication. NULL node (imported events): any node.
ALTER TABLE events ADD COLUMN node uuid, ADD COLUMN due bigint;
UPDATE events SET due = timestamp;
ALTER TABLE events ALTER COLUMN due SET NOT NULL;
CREATE INDEX events_pending_due ON events (due) WHERE NOT published AND NOT cancelled;
CREATE INDEX events_pending_by_node ON events (node, due) WHERE NOT published AND NOT cancelled;
