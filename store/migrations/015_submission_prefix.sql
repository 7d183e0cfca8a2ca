-- Header fields sent before a submission's stored message: the Received trace field and Tempost's
-- DKIM-Signature fields (spec 01 §1.1 MsgPrefix). Stored once per submission; the message is never
-- rewritten or copied per recipient. Everything that sends or shows the message reads prefix || data.
ALTER TABLE submissions ADD COLUMN prefix BYTEA NOT NULL DEFAULT '';
