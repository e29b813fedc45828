-- The order saga orchestrates inventory and payment: it keeps its data and a durable deadline
-- with its state, and orders carry the card token and why they were cancelled.
ALTER TABLE orders.orders
    ADD COLUMN card_token text NOT NULL DEFAULT 'tok_visa',
    ADD COLUMN cancel_reason text;

ALTER TABLE orders.saga_state
    ADD COLUMN data jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN deadline timestamptz,
    ADD COLUMN timeout_sent boolean NOT NULL DEFAULT false;

-- The timer sweeper's work list: deadlines not yet announced.
CREATE INDEX saga_state_due ON orders.saga_state (deadline)
    WHERE deadline IS NOT NULL AND NOT timeout_sent;

-- Sagas recorded by the first release (status PLACED) never sent their commands; they are
-- closed as cancelled so that every order ends in a terminal state.
UPDATE orders.orders o SET status = 'CANCELLED', cancel_reason = 'superseded saga version',
       updated_at = now()
  FROM orders.saga_state s
 WHERE s.order_id = o.id AND s.status = 'PLACED' AND o.status = 'PENDING';
UPDATE orders.saga_state SET status = 'CANCELLED' WHERE status = 'PLACED';
