-- The inventory service's schema: the catalogue with stock, reservations per order, and the
-- service's own inbox and outbox.
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE inventory.products (
    sku               text PRIMARY KEY,
    name              text        NOT NULL,
    unit_price_minor  bigint      NOT NULL CHECK (unit_price_minor >= 0),
    currency          char(3)     NOT NULL,
    on_hand           integer     NOT NULL CHECK (on_hand >= 0),
    reserved          integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- The invariant that makes overselling impossible, whatever the code does.
    CHECK (reserved <= on_hand)
);

CREATE TABLE inventory.reservations (
    order_id    uuid PRIMARY KEY,
    status      text        NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'COMMITTED')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_due ON inventory.reservations (expires_at) WHERE status = 'RESERVED';

CREATE TABLE inventory.reservation_lines (
    order_id          uuid    NOT NULL REFERENCES inventory.reservations (order_id),
    sku               text    NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint  NOT NULL,
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE inventory.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE inventory.outbox (
    id            bigserial PRIMARY KEY,
    message_id    uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    message_key   text        NOT NULL,
    message_type  text        NOT NULL,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX inventory_outbox_unpublished ON inventory.outbox (id) WHERE published_at IS NULL;
