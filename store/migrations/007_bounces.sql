-- Incoming messages to FromID addresses (bounces, spec 03 §4), kept until processed so none is lost
-- between the SMTP listener or API accepting one and the worker matching it.
CREATE TABLE bounces (
    id BIGSERIAL PRIMARY KEY,
    received TIMESTAMPTZ NOT NULL DEFAULT now(),
    mail_from TEXT NOT NULL DEFAULT '',
    rcpt_to TEXT NOT NULL,
    data BYTEA NOT NULL,
    -- Filled by the worker: what the message was taken for (spec 03 §4.3).
    processed TIMESTAMPTZ,
    event TEXT NOT NULL DEFAULT '',
    queue_msg_id BIGINT NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX bounces_unprocessed ON bounces (received) WHERE processed IS NULL;
