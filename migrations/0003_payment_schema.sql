-- The payment service's schema: one payment per order, and the service's inbox and outbox.
CREATE SCHEMA IF NOT EXISTS payment;

CREATE TABLE payment.payments (
    order_id        uuid PRIMARY KEY,                 -- one payment per order
    status          text        NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED', 'REFUNDED')),
    amount_minor    bigint      NOT NULL CHECK (amount_minor >= 0),
    currency        char(3)     NOT NULL,
    card_token      text        NOT NULL,
    provider_ref    text,
    decline_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE payment.outbox (
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
CREATE INDEX payment_outbox_unpublished ON payment.outbox (id) WHERE published_at IS NULL;

-- The local card network's own ledger (the stand-in for an external PSP, see
-- src/infra/payment_provider.rs). It is not the payment service's data: it is what the
-- "network" remembers, so that an idempotency key charges at most once even across restarts.
CREATE SCHEMA IF NOT EXISTS card_network;

CREATE TABLE card_network.charges (
    idempotency_key  text PRIMARY KEY,
    reference        text        NOT NULL UNIQUE,
    amount_minor     bigint      NOT NULL,
    currency         char(3)     NOT NULL,
    card_token       text        NOT NULL,
    approved         boolean     NOT NULL,
    decline_code     text,
    refunded         boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);
