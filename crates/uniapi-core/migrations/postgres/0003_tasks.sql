CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    family TEXT NOT NULL,
    action TEXT NOT NULL,
    price_name TEXT NOT NULL,
    channel_id BIGINT NOT NULL,
    upstream_id TEXT NOT NULL,
    state TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '0%',
    result TEXT,
    raw TEXT,
    fail_reason TEXT,
    charged_nano BIGINT NOT NULL DEFAULT 0,
    refunded BIGINT NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    request TEXT,
    version BIGINT NOT NULL DEFAULT 0,
    polls BIGINT NOT NULL DEFAULT 0,
    next_poll_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_due ON tasks (state, next_poll_at);
CREATE INDEX tasks_owner ON tasks (user_id, created_at);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key)
