-- The order service's schema: orders, their lines, the transactional outbox, the inbox of
-- handled message ids, and the order saga's persisted state and journal.
CREATE SCHEMA IF NOT EXISTS orders;

CREATE TABLE orders.orders (
    id           uuid PRIMARY KEY,             -- UUIDv7: sorts by creation time
    customer_id  text        NOT NULL,
    currency     char(3)     NOT NULL,
    status       text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    trace_id     text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX orders_by_customer ON orders.orders (customer_id, id DESC);
CREATE INDEX orders_by_status ON orders.orders (status, id DESC);

CREATE TABLE orders.order_lines (
    order_id  uuid    NOT NULL REFERENCES orders.orders (id),
    line_no   integer NOT NULL,
    sku       text    NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line_no)
);

-- Messages committed with the state change that caused them; the relay publishes them.
CREATE TABLE orders.outbox (
    id            bigserial PRIMARY KEY,
    message_id    uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,      -- logical name; the relay adds the deployment prefix
    message_key   text        NOT NULL,
    message_type  text        NOT NULL,
    payload       bytea       NOT NULL,      -- the encoded envelope, published byte for byte
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON orders.outbox (id) WHERE published_at IS NULL;

-- One row per (consumer, message id) handled: written in the same transaction as the effect.
CREATE TABLE orders.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE orders.saga_state (
    order_id    uuid PRIMARY KEY,
    status      text        NOT NULL,
    version     integer     NOT NULL,        -- bumped on every transition
    updated_at  timestamptz NOT NULL
);

-- Every event a saga applied, with the message and trace that carried it.
CREATE TABLE orders.saga_journal (
    id            bigserial PRIMARY KEY,
    order_id      uuid        NOT NULL,
    message_id    uuid        NOT NULL,
    message_type  text        NOT NULL,
    from_status   text        NOT NULL,
    to_status     text        NOT NULL,
    trace_id      text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_journal_by_order ON orders.saga_journal (order_id);
