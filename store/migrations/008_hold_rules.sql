-- Hold rules (spec 01 §4): checked when messages are queued; a new rule also holds matching queued ones.
CREATE TABLE hold_rules (
    id BIGSERIAL PRIMARY KEY,
    account TEXT NOT NULL DEFAULT '',
    sender_domain TEXT NOT NULL DEFAULT '',       -- ASCII
    recipient_domain TEXT NOT NULL DEFAULT '',
    sender_domain_str TEXT NOT NULL DEFAULT '',   -- Unicode
    recipient_domain_str TEXT NOT NULL DEFAULT ''
);
