-- Outgoing webhooks (spec 03 §3.4, §3.8). A pending hook is delivered by its own workflow (hook-<id>);
-- the row holds the payload and attempt history, the workflow holds the timers.
CREATE SEQUENCE hook_id_seq;

CREATE TABLE hooks (
    id BIGINT PRIMARY KEY,
    queue_msg_id BIGINT NOT NULL DEFAULT 0,  -- 0 for hooks not about a queued message
    from_id TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    extra JSONB NOT NULL DEFAULT '{}',
    account TEXT NOT NULL,
    url TEXT NOT NULL,
    auth_header TEXT NOT NULL DEFAULT '',    -- copied at queue time, as mox does; never listed
    is_incoming BOOLEAN NOT NULL DEFAULT false,
    outgoing_event TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL,
    submitted TIMESTAMPTZ NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt TIMESTAMPTZ NOT NULL,
    results JSONB NOT NULL DEFAULT '[]',
    workflow_started BOOLEAN NOT NULL DEFAULT false
);
-- Only the latest event per message is pending (superseding).
CREATE UNIQUE INDEX hooks_pending_msg ON hooks (queue_msg_id) WHERE queue_msg_id > 0;
CREATE INDEX hooks_next ON hooks (next_attempt, id);
CREATE INDEX hooks_unstarted ON hooks (submitted) WHERE NOT workflow_started;

CREATE TABLE retired_hooks (
    id BIGINT PRIMARY KEY,
    queue_msg_id BIGINT NOT NULL,
    from_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    extra JSONB NOT NULL,
    account TEXT NOT NULL,
    url TEXT NOT NULL,
    has_auth BOOLEAN NOT NULL,               -- whether a header was configured; the secret is not kept
    is_incoming BOOLEAN NOT NULL,
    outgoing_event TEXT NOT NULL,
    payload TEXT NOT NULL,
    submitted TIMESTAMPTZ NOT NULL,
    superseded_by_id BIGINT NOT NULL DEFAULT 0,
    attempts INT NOT NULL,
    results JSONB NOT NULL,
    success BOOLEAN NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL,
    keep_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX retired_hooks_last_activity ON retired_hooks (last_activity, id);
CREATE INDEX retired_hooks_keep_until ON retired_hooks (keep_until);

-- Calls in flight, across every worker process: one row per URL, at most webhooks.max_concurrent rows.
-- A lease expires on its own if its worker dies mid-call.
CREATE TABLE hook_leases (
    url TEXT PRIMARY KEY,
    hook_id BIGINT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
