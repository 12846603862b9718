-- One row per run (a message on a trigger). The run itself is `doc` (JSON); the columns
-- beside it are what listings filter and sort on. Portable between SQLite and PostgreSQL.
CREATE TABLE topiq_runs (
    message_id TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    state TEXT NOT NULL,
    enqueued_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    cancel_requested_ms BIGINT,
    error_text TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (message_id, trigger_name)
);

CREATE INDEX topiq_runs_newest ON topiq_runs (enqueued_ms, message_id, trigger_name);
CREATE INDEX topiq_runs_by_trigger ON topiq_runs (trigger_name, enqueued_ms);
CREATE INDEX topiq_runs_by_topic ON topiq_runs (topic, enqueued_ms);
CREATE INDEX topiq_runs_by_state ON topiq_runs (state, enqueued_ms);
CREATE INDEX topiq_runs_finished ON topiq_runs (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE INDEX topiq_runs_cancels ON topiq_runs (cancel_requested_ms)
    WHERE cancel_requested_ms IS NOT NULL;
