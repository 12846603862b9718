-- What operators set that every instance follows: paused triggers and schedules.
-- Portable between SQLite and PostgreSQL (flags are 0 or 1).
CREATE TABLE topiq_paused_triggers (
    trigger_name TEXT PRIMARY KEY,
    paused_ms BIGINT NOT NULL
);

CREATE TABLE topiq_schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    paused BIGINT NOT NULL,
    from_config BIGINT NOT NULL,
    last_tick_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
