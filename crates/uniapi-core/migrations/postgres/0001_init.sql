CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    balance_nano BIGINT NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    models TEXT,
    quota_nano BIGINT,
    expires_at BIGINT,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrency BIGINT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE TABLE channels (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    models TEXT NOT NULL,
    model_map TEXT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    modes TEXT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE channel_keys (
    id BIGSERIAL PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    UNIQUE (channel_id, position)
);
CREATE TABLE prices (
    model TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE request_logs (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    user_id BIGINT,
    key_id BIGINT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    model TEXT,
    upstream_model TEXT,
    channel_id BIGINT,
    status BIGINT NOT NULL,
    stream BOOLEAN NOT NULL,
    outcome TEXT NOT NULL,
    attempts TEXT NOT NULL,
    latency_ms BIGINT NOT NULL,
    ttfb_ms BIGINT,
    error TEXT
);
CREATE INDEX request_logs_created ON request_logs (created_at);
CREATE INDEX request_logs_user ON request_logs (user_id, created_at);
