-- DSNs composed about outgoing messages (spec 03 §1): stored for the API and queued to the sender.
-- One per (queue message, kind), so a retried activity never makes two.
CREATE TABLE dsns (
    id BIGSERIAL PRIMARY KEY,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    account TEXT NOT NULL,
    msg_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,            -- who the DSN is for (the original MAIL FROM)
    recipient TEXT NOT NULL,         -- the original recipient it is about
    data BYTEA NOT NULL,
    queue_base_id BIGINT,            -- the submission delivering it; NULL when not sent (null sender)
    UNIQUE (msg_id, kind)
);
CREATE INDEX dsns_account ON dsns (account, id);
