-- MTA-STS policies per recipient domain (RFC 8461 §5.1 caching; spec 02 §2.3). A failed fetch is kept
-- as a short-lived "backoff" row so a broken policy host is not asked again on every attempt.
CREATE TABLE mtasts_policies (
    domain TEXT PRIMARY KEY,                  -- Unicode domain name
    valid_until TIMESTAMPTZ NOT NULL,
    last_update TIMESTAMPTZ NOT NULL,
    last_use TIMESTAMPTZ NOT NULL,
    backoff BOOLEAN NOT NULL DEFAULT false,
    record_id TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL,
    mx TEXT[] NOT NULL DEFAULT '{}',
    max_age INTEGER NOT NULL,
    policy_text TEXT NOT NULL DEFAULT ''
);
