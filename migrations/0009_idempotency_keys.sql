-- Idempotency keys of the HTTP API (POST /v1/orders, POST /v1/files): the first response for
-- a key is kept (24 hours by default) and answered again for the same key and request.
-- Keys belong to a token subject and a route, so clients cannot collide with each other.
CREATE SCHEMA IF NOT EXISTS api;

CREATE TABLE api.idempotency_keys (
    subject         text        NOT NULL,
    route           text        NOT NULL,
    key             text        NOT NULL,
    -- SHA-256 of what makes the request (the body; for uploads name, type and bytes).
    request_sha256  bytea       NOT NULL,
    -- NULL while the first request runs; then its response.
    status          smallint,
    location        text,
    body            bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (subject, route, key)
);
CREATE INDEX idempotency_keys_expiry ON api.idempotency_keys (expires_at);
