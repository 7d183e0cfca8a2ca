-- The delivery workflow's projection of hold and next attempt into queue rows carries a version, and a row
-- takes only a newer one, so projections that run at once cannot leave it on an older state.
ALTER TABLE queue_msgs ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;

-- Bulk admin operations whose workflow signal is not known to have landed. The API writes the rows and
-- these in one transaction, signals, and deletes what landed; the workers' sweeper sends the rest again,
-- so the rows and the workflows agree even when Temporal refused some signals.
CREATE TABLE pending_signals (
    id BIGSERIAL PRIMARY KEY,
    base_id BIGINT NOT NULL,
    op JSONB NOT NULL,
    created TIMESTAMPTZ NOT NULL
);
CREATE INDEX pending_signals_created ON pending_signals (created);
