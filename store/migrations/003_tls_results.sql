-- TLS results of direct delivery attempts, per policy domain, UTC day and recipient domain, kept for
-- SMTP TLS reports (RFC 8460; spec 02 §6). `result` is the RFC 8460 §4.4 policy/summary/details object.
CREATE TABLE tls_results (
    policy_domain TEXT NOT NULL,
    day TEXT NOT NULL,                -- yyyymmdd, UTC
    recipient_domain TEXT NOT NULL,
    is_host BOOLEAN NOT NULL,
    send_report BOOLEAN NOT NULL DEFAULT false,
    result JSONB NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_domain, day, recipient_domain)
);
