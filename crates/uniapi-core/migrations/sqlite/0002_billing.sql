ALTER TABLE users ADD COLUMN used_nano INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN used_nano INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN cache_used_nano INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN cache_used_nano INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cost_nano INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cost_detail TEXT;
CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    key_id INTEGER,
    kind TEXT NOT NULL,
    amount_nano INTEGER NOT NULL,
    cache_nano INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, created_at);
CREATE INDEX request_logs_model ON request_logs (model, created_at);
INSERT INTO ledger_entries (id, user_id, key_id, kind, amount_nano, cache_nano, note, created_at) SELECT 'open:' || id, id, NULL, 'credit', balance_nano, 0, 'opening balance', created_at FROM users WHERE balance_nano <> 0
