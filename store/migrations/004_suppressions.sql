-- Suppression lists per account (spec 03 §2.1): one entry per (account, base address).
CREATE TABLE suppressions (
    id BIGSERIAL PRIMARY KEY,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    account TEXT NOT NULL,
    base_address TEXT NOT NULL,
    original_address TEXT NOT NULL,
    manual BOOLEAN NOT NULL,
    reason TEXT NOT NULL,
    UNIQUE (account, base_address)
);
