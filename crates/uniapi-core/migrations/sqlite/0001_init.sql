CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    balance_nano INTEGER NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    models TEXT,
    quota_nano INTEGER,
    expires_at INTEGER,
    rpm INTEGER,
    tpm INTEGER,
    max_concurrency INTEGER,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, name)
);
CREATE TABLE channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    models TEXT NOT NULL,
    model_map TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    weight INTEGER NOT NULL DEFAULT 1,
    modes TEXT,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE channel_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    UNIQUE (channel_id, position)
);
CREATE TABLE prices (
    model TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE request_logs (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    user_id INTEGER,
    key_id INTEGER,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    model TEXT,
    upstream_model TEXT,
    channel_id INTEGER,
    status INTEGER NOT NULL,
    stream BOOLEAN NOT NULL,
    outcome TEXT NOT NULL,
    attempts TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttfb_ms INTEGER,
    error TEXT
);
CREATE INDEX request_logs_created ON request_logs (created_at);
CREATE INDEX request_logs_user ON request_logs (user_id, created_at);
