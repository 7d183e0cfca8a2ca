-- Deliveries in flight across every worker process (spec 01 §3): one row per recipient domain, a lease
-- while an attempt runs (expires on its own if its worker dies), and the last start for rate limits.
CREATE TABLE delivery_leases (
    domain TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL,
    last_start TIMESTAMPTZ NOT NULL
);
CREATE INDEX delivery_leases_expires ON delivery_leases (expires);

-- Workflows waiting for a domain (or for a free slot under the global cap), oldest first: a finishing
-- delivery wakes them by signal instead of letting them poll.
CREATE TABLE delivery_waiters (
    workflow_id TEXT NOT NULL,
    domain TEXT NOT NULL,            -- '' waits for any free slot under the global cap
    since TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, domain)
);
CREATE INDEX delivery_waiters_domain ON delivery_waiters (domain, since);
