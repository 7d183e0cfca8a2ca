-- Submissions hold each message body once; queue rows (one per recipient) point at them.
CREATE TABLE submissions (
    id BIGINT PRIMARY KEY,                -- the BaseID: the first queue row's id
    account TEXT NOT NULL,
    data BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- False until the Delivery workflow is known to exist; the worker's sweeper starts workflows for
    -- submissions whose API process died between commit and start.
    workflow_started BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX submissions_unstarted ON submissions (created) WHERE NOT workflow_started;

CREATE SEQUENCE msg_id_seq;

CREATE TABLE queue_msgs (
    id BIGINT PRIMARY KEY,
    base_id BIGINT NOT NULL REFERENCES submissions (id),
    queued TIMESTAMPTZ NOT NULL,
    hold BOOLEAN NOT NULL DEFAULT false,
    sender_account TEXT NOT NULL,
    sender_localpart TEXT NOT NULL,
    sender_domain TEXT NOT NULL,
    sender_domain_str TEXT NOT NULL,
    from_id TEXT NOT NULL DEFAULT '',
    recipient_localpart TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    recipient_domain_str TEXT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    max_attempts INT NOT NULL DEFAULT 0,
    dialed_ips JSONB NOT NULL DEFAULT '{}',
    next_attempt TIMESTAMPTZ NOT NULL,
    last_attempt TIMESTAMPTZ,
    results JSONB NOT NULL DEFAULT '[]',
    has8bit BOOLEAN NOT NULL DEFAULT false,
    smtputf8 BOOLEAN NOT NULL DEFAULT false,
    is_dmarc_report BOOLEAN NOT NULL DEFAULT false,
    is_tls_report BOOLEAN NOT NULL DEFAULT false,
    size BIGINT NOT NULL,
    message_id TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL DEFAULT '',
    require_tls BOOLEAN,
    future_release_request TEXT NOT NULL DEFAULT '',
    extra JSONB NOT NULL DEFAULT '{}',
    -- Delivery journal: set in the same moment the next hop accepted DATA for this recipient, so a
    -- retried activity never sends it again (DESIGN §5).
    accepted_at TIMESTAMPTZ,
    accepted_reply TEXT
);
CREATE INDEX queue_msgs_base ON queue_msgs (base_id);
CREATE INDEX queue_msgs_next ON queue_msgs (next_attempt, id);
CREATE INDEX queue_msgs_queued ON queue_msgs (queued, id);
CREATE INDEX queue_msgs_account ON queue_msgs (sender_account);
CREATE UNIQUE INDEX queue_msgs_fromid ON queue_msgs (from_id) WHERE from_id <> '';

CREATE TABLE retired_msgs (
    id BIGINT PRIMARY KEY,
    base_id BIGINT NOT NULL,
    queued TIMESTAMPTZ NOT NULL,
    sender_account TEXT NOT NULL,
    sender_localpart TEXT NOT NULL,
    sender_domain_str TEXT NOT NULL,
    from_id TEXT NOT NULL DEFAULT '',
    recipient_localpart TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    recipient_domain_str TEXT NOT NULL,
    recipient_address TEXT NOT NULL,
    attempts INT NOT NULL,
    max_attempts INT NOT NULL,
    dialed_ips JSONB NOT NULL,
    last_attempt TIMESTAMPTZ,
    results JSONB NOT NULL,
    has8bit BOOLEAN NOT NULL,
    smtputf8 BOOLEAN NOT NULL,
    is_dmarc_report BOOLEAN NOT NULL,
    is_tls_report BOOLEAN NOT NULL,
    size BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    transport TEXT NOT NULL,
    require_tls BOOLEAN,
    future_release_request TEXT NOT NULL,
    extra JSONB NOT NULL,
    event TEXT NOT NULL,
    success BOOLEAN NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL,
    keep_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX retired_msgs_fromid ON retired_msgs (from_id) WHERE from_id <> '';
CREATE INDEX retired_msgs_last_activity ON retired_msgs (last_activity, id);
CREATE INDEX retired_msgs_keep_until ON retired_msgs (keep_until);
CREATE INDEX retired_msgs_rcpt ON retired_msgs (recipient_address, last_activity);
