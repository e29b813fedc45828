-- The file service's schema: one row per stored document (an order's invoice or receipt) with
-- where it lives in S3 and its checksum, and the service's own inbox and outbox.
CREATE SCHEMA IF NOT EXISTS files;

CREATE TABLE files.documents (
    order_id      uuid        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('invoice', 'receipt')),
    bucket        text        NOT NULL,
    object_key    text        NOT NULL,
    size_bytes    bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256        text        NOT NULL,      -- hex of the object's bytes
    content_type  text        NOT NULL,
    customer_id   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)             -- one invoice per order, whatever is redelivered
);

CREATE TABLE files.outbox (
    id            bigserial PRIMARY KEY,
    message_id    uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    message_key   text        NOT NULL,
    message_type  text        NOT NULL,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE files.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
