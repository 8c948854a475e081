CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    family TEXT NOT NULL,
    action TEXT NOT NULL,
    price_name TEXT NOT NULL,
    channel_id INTEGER NOT NULL,
    upstream_id TEXT NOT NULL,
    state TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '0%',
    result TEXT,
    raw TEXT,
    fail_reason TEXT,
    charged_nano INTEGER NOT NULL DEFAULT 0,
    refunded INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    request TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    next_poll_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE INDEX tasks_due ON tasks (state, next_poll_at);
CREATE INDEX tasks_owner ON tasks (user_id, created_at);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key)
