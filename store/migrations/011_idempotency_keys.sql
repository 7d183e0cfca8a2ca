-- Webapi Idempotency-Key values (spec 04 §1): the first call's response per (account, key), written in the
-- transaction that queues the messages, so a key never exists without its messages or the reverse.
CREATE TABLE idempotency_keys (
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response JSONB NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);
