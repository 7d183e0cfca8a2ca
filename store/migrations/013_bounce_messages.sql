-- One stored copy of each incoming message to FromID addresses, however many of its recipients were
-- FromIDs (spec 03 §4): each recipient keeps its own row in bounces, pointing here. Rows stored before
-- this migration keep their body in bounces.data.
CREATE TABLE bounce_messages (
    id BIGSERIAL PRIMARY KEY,
    received TIMESTAMPTZ NOT NULL DEFAULT now(),
    data BYTEA NOT NULL
);
ALTER TABLE bounces ADD COLUMN message_id BIGINT REFERENCES bounce_messages (id);
CREATE INDEX bounces_message ON bounces (message_id) WHERE message_id IS NOT NULL;
