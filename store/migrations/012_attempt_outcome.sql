-- What each recipient's delivery attempt came to, written in the transaction that records the attempt's
-- outcome. A retried deliver activity (its worker died, PostgreSQL failed before the activity could report)
-- returns these instead of sending again. Only the latest attempt of a message matters; retention deletes
-- rows once no retry of their activity can still run.
CREATE TABLE attempt_outcomes (
    msg_id BIGINT NOT NULL,
    attempt INT NOT NULL,
    outcome JSONB NOT NULL,
    recorded TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (msg_id, attempt)
);
CREATE INDEX attempt_outcomes_recorded ON attempt_outcomes (recorded);
