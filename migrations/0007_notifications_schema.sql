-- The notification service's schema: the recipient of each order (projected from OrderPlaced),
-- one log row per (event, template) — the record that a customer-visible event was mailed (or
-- skipped, or is still failing) — and the service's inbox.
CREATE SCHEMA IF NOT EXISTS notifications;

CREATE TABLE notifications.recipients (
    order_id     uuid PRIMARY KEY,
    customer_id  text        NOT NULL,
    email        text,                       -- NULL: the order gave no address
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications.log (
    event_id     uuid        NOT NULL,       -- the message that caused it
    template     text        NOT NULL,
    order_id     uuid        NOT NULL,
    recipient    text,
    subject      text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('SENT', 'SKIPPED', 'FAILING')),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    PRIMARY KEY (event_id, template)        -- one notification per event
);
CREATE INDEX notification_log_order ON notifications.log (order_id, created_at);

CREATE TABLE notifications.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
