-- The saga's journal records the message id of every step it applied, so it can tell a
-- redelivered message by itself: one row per step instead of a journal row and an inbox row.
-- The intake's first step is journalled too, so every message the inbox held is in the journal.
CREATE UNIQUE INDEX saga_journal_by_message ON orders.saga_journal (order_id, message_id);
DROP INDEX orders.saga_journal_by_order;
DROP TABLE orders.inbox;
