//! Durable state on SQLite or PostgreSQL from one codebase: the same statements run on both pools
//! (`$N` placeholders work on both), and each dialect has its own migration files.

mod json;
pub mod ledger;
pub mod logs;
mod migrate;
pub mod stats;
pub mod tasks;

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub enum Store {
    Sqlite(Pool<Sqlite>),
    Postgres(Pool<Postgres>),
}

/// SQLite has one writer at a time, and a connection that finds the database locked sleeps in its busy
/// handler (1 ms, 2 ms, ... up to 100 ms) and retries: two write-behind writers flushing back to back
/// starve each other that way (under load the request logs fell minutes behind the ledger, and their
/// queue grew by hundreds of megabytes). The write-behind batches take turns here instead, in order.
static SQLITE_WRITE_LANE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Store {
    /// Held for a write-behind transaction: on SQLite, the writers' turn (see [`SQLITE_WRITE_LANE`]);
    /// PostgreSQL takes concurrent writers itself.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'static, ()>> {
        match self {
            Store::Sqlite(_) => Some(SQLITE_WRITE_LANE.lock().await),
            Store::Postgres(_) => None,
        }
    }
}

/// Runs the same statement code against whichever pool the store holds.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Statements assembled with `format!` from constant column lists (never from input) are safe to run.
pub(crate) fn safe(sql: &str) -> sqlx::AssertSqlSafe<String> {
    // (the statement text is only the cache key after the first use)
    sqlx::AssertSqlSafe(sql.to_string())
}

/// Row counts of the multi-row statements a write-behind batch is cut into, largest first: few
/// distinct statements, so each is prepared once per connection and then comes from the statement
/// cache (preparing a statement of hundreds of rows costs more than running it).
pub(crate) const BATCH_SIZES: [usize; 4] = [64, 16, 4, 1];

/// One cached statement text per batch size and dialect.
pub(crate) type StatementCache = [std::sync::OnceLock<String>; 2 * BATCH_SIZES.len()];

/// Batches of at least this many rows are written in statements of up to 64 rows, smaller ones in
/// statements of up to 16. It is also the request-log writer's full batch (`reqlog`), which the ledger's
/// (1,024) exceeds. A batch that small came on the write-behind's tick, at a rate where the core
/// also serves requests that wait on an idle worker: SQLite runs each statement on its own thread, and a
/// waking worker does not preempt that run, so a 64-row statement of request logs (up to ~3 ms there)
/// made the requests that arrived meanwhile wait (measured with `perf sched` at 1,000 req/s: runs over
/// 300 µs ~54 → ~15 per 8 s, p99 ~1.05 → ~0.75 ms; see `bench/README.md`). Full batches come under load,
/// where fewer statements (fewer round trips to that thread) buy throughput.
pub(crate) const LARGE_BATCH: usize = 512;

/// `(start, rows)` of the chunks `len` rows are written in, sizes from [`BATCH_SIZES`] (without its
/// largest below [`LARGE_BATCH`] rows).
pub(crate) fn batch_chunks(len: usize) -> Vec<(usize, usize)> {
    let sizes = if len >= LARGE_BATCH {
        &BATCH_SIZES[..]
    } else {
        &BATCH_SIZES[1..]
    };
    let mut chunks = Vec::new();
    let mut start = 0;
    for &size in sizes {
        while len - start >= size {
            chunks.push((start, size));
            start += size;
        }
    }
    chunks
}

/// `INSERT INTO {table} ({columns}) VALUES (…), (…) {tail}` for `rows` rows, built once per dialect
/// and size. Placeholders are anonymous `?` on SQLite (looking up numbered ones is linear per bind,
/// so quadratic per statement) and `$n` on PostgreSQL.
pub(crate) fn multi_row_insert(
    cache: &'static StatementCache,
    sqlite: bool,
    rows: usize,
    table: &str,
    columns: &str,
    tail: &str,
) -> &'static str {
    let size_index = BATCH_SIZES.iter().position(|s| *s == rows).unwrap_or(0);
    let slot = &cache[size_index * 2 + usize::from(sqlite)];
    slot.get_or_init(|| {
        let width = columns.split(',').count();
        let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
        let mut n = 0;
        for row in 0..rows {
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for col in 0..width {
                if col > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${n}"));
                }
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        sql
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub balance_nano: i64,
    pub enabled: bool,
    pub created_at: i64,
}

type UserTuple = (i64, String, i64, bool, i64);
const USER_COLUMNS: &str = "id, name, balance_nano, enabled, created_at";

impl From<UserTuple> for UserRow {
    fn from((id, name, balance_nano, enabled, created_at): UserTuple) -> Self {
        Self {
            id,
            name,
            balance_nano,
            enabled,
            created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[serde(skip)]
    pub key_hash: String,
    pub key_hint: String,
    pub models: Option<Vec<String>>,
    pub quota_nano: Option<i64>,
    pub expires_at: Option<i64>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrency: Option<i64>,
    pub enabled: bool,
    pub created_at: i64,
}

type KeyTuple = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    bool,
    i64,
);
const KEY_COLUMNS: &str = "id, user_id, name, key_hash, key_hint, models, quota_nano, expires_at, rpm, tpm, \
                           max_concurrency, enabled, created_at";

impl From<KeyTuple> for KeyRow {
    fn from(t: KeyTuple) -> Self {
        Self {
            id: t.0,
            user_id: t.1,
            name: t.2,
            key_hash: t.3,
            key_hint: t.4,
            models: t.5.and_then(|m| serde_json::from_str(&m).ok()),
            quota_nano: t.6,
            expires_at: t.7,
            rpm: t.8,
            tpm: t.9,
            max_concurrency: t.10,
            enabled: t.11,
            created_at: t.12,
        }
    }
}

/// The limits and allow-list of a key, as created or patched.
#[derive(Clone, Debug, Default)]
pub struct KeyLimits {
    pub models: Option<Vec<String>>,
    pub quota_nano: Option<i64>,
    pub expires_at: Option<i64>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrency: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelKeyRow {
    pub id: i64,
    pub position: i64,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub models: Vec<String>,
    pub model_map: BTreeMap<String, String>,
    pub priority: i64,
    pub weight: i64,
    pub modes: Option<Vec<String>>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub keys: Vec<ChannelKeyRow>,
}

/// What an operator declares about a channel (config file or admin API).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelSpec {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub keys: Vec<String>,
    pub models: Vec<String>,
    pub model_map: BTreeMap<String, String>,
    pub priority: i64,
    pub weight: i64,
    pub modes: Option<Vec<String>>,
    pub enabled: bool,
}

type ChannelTuple = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    bool,
    i64,
    i64,
);
const CHANNEL_COLUMNS: &str = "id, name, kind, base_url, models, model_map, priority, weight, modes, enabled, created_at, updated_at";

fn channel_from(t: ChannelTuple) -> ChannelRow {
    ChannelRow {
        id: t.0,
        name: t.1,
        kind: t.2,
        base_url: t.3,
        models: serde_json::from_str(&t.4).unwrap_or_default(),
        model_map: serde_json::from_str(&t.5).unwrap_or_default(),
        priority: t.6,
        weight: t.7,
        modes: t.8.and_then(|m| serde_json::from_str(&m).ok()),
        enabled: t.9,
        created_at: t.10,
        updated_at: t.11,
        keys: Vec::new(),
    }
}

fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

impl Store {
    /// Opens the database named by `url` (creating an SQLite file and its folder if needed) and migrates it.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .foreign_keys(true)
                // statement journals (every multi-row insert of the write-behind has one) stay in
                // memory: they spilled to files created and unlinked in /var/tmp several times a second
                // (strace), which a container with a read-only root file system refuses
                .pragma("temp_store", "memory")
                .busy_timeout(std::time::Duration::from_secs(10));
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
            }
            Store::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(options)
                    .await?,
            )
        } else {
            Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .connect(url)
                    .await?,
            )
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        with_pool!(self, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    // ---- settings

    pub async fn setting(&self, name: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(pool).await?);
        Ok(row.map(|r| r.0))
    }

    /// Inserts the setting unless it exists; returns whether it was inserted.
    pub async fn insert_setting_if_absent(&self, name: &str, value: &str) -> StoreResult<bool> {
        let done = with_pool!(self, pool =>
            sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name).bind(value).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    pub async fn put_setting(&self, name: &str, value: &str) -> StoreResult<()> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name).bind(value).execute(pool).await?; });
        Ok(())
    }

    // ---- users

    /// Creates a user; an opening balance is written as the user's first ledger entry.
    pub async fn create_user(&self, name: &str, balance_nano: i64) -> StoreResult<UserRow> {
        let sql = format!(
            "INSERT INTO users (name, balance_nano, enabled, created_at) VALUES ($1, $2, TRUE, $3) RETURNING {USER_COLUMNS}"
        );
        let now = now_ms();
        let row: UserTuple = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: UserTuple = sqlx::query_as(safe(&sql)).bind(name).bind(balance_nano).bind(now).fetch_one(&mut *tx).await
                .map_err(|e| conflict_or(e, || format!("a user named `{name}` already exists")))?;
            if balance_nano != 0 {
                sqlx::query("INSERT INTO ledger_entries (id, user_id, key_id, kind, amount_nano, cache_nano, note, created_at) \
                             VALUES ($1, $2, NULL, 'credit', $3, 0, 'opening balance', $4)")
                    .bind(format!("open:{}", row.0)).bind(row.0).bind(balance_nano).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            row
        });
        Ok(row.into())
    }

    /// Creates the user if no user has this name; an existing user's balance is never reset.
    pub async fn ensure_user(&self, name: &str, initial_balance_nano: i64) -> StoreResult<UserRow> {
        match self.user_by_name(name).await? {
            Some(user) => Ok(user),
            None => match self.create_user(name, initial_balance_nano).await {
                Err(StoreError::Conflict(_)) => self
                    .user_by_name(name)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("user {name}"))),
                other => other,
            },
        }
    }

    pub async fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
        let row: Option<UserTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql)).bind(name).fetch_optional(pool).await?);
        Ok(row.map(Into::into))
    }

    pub async fn user(&self, id: i64) -> StoreResult<UserRow> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row: Option<UserTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql)).bind(id).fetch_optional(pool).await?);
        row.map(Into::into)
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    pub async fn users(&self) -> StoreResult<Vec<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
        let rows: Vec<UserTuple> =
            with_pool!(self, pool => sqlx::query_as(safe(&sql)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn update_user(
        &self,
        id: i64,
        name: Option<&str>,
        enabled: Option<bool>,
    ) -> StoreResult<UserRow> {
        let sql = format!(
            "UPDATE users SET name = COALESCE($1, name), enabled = COALESCE($2, enabled) WHERE id = $3 RETURNING {USER_COLUMNS}"
        );
        let row: Option<UserTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql))
            .bind(name).bind(enabled).bind(id).fetch_optional(pool).await)
        .map_err(|e| {
            conflict_or(e, || {
                format!("a user named `{}` already exists", name.unwrap_or_default())
            })
        })?;
        row.map(Into::into)
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    pub async fn delete_user(&self, id: i64) -> StoreResult<()> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM api_keys WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        if n == 0 {
            Err(StoreError::NotFound(format!("user {id}")))
        } else {
            Ok(())
        }
    }

    // ---- API keys

    pub async fn create_key(
        &self,
        user_id: i64,
        name: &str,
        key_hash: &str,
        key_hint: &str,
        limits: &KeyLimits,
    ) -> StoreResult<KeyRow> {
        self.user(user_id).await?;
        let sql = format!(
            "INSERT INTO api_keys (user_id, name, key_hash, key_hint, models, quota_nano, expires_at, rpm, tpm, max_concurrency, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, TRUE, $11) RETURNING {KEY_COLUMNS}"
        );
        let models = limits.models.as_ref().map(json_text);
        let row: KeyTuple = with_pool!(self, pool => sqlx::query_as(safe(&sql))
            .bind(user_id).bind(name).bind(key_hash).bind(key_hint).bind(&models)
            .bind(limits.quota_nano).bind(limits.expires_at).bind(limits.rpm).bind(limits.tpm).bind(limits.max_concurrency)
            .bind(now_ms()).fetch_one(pool).await)
        .map_err(|e| conflict_or(e, || format!("this user already has a key named `{name}`, or the key value is in use")))?;
        Ok(row.into())
    }

    pub async fn key_by_user_and_name(
        &self,
        user_id: i64,
        name: &str,
    ) -> StoreResult<Option<KeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND name = $2");
        let row: Option<KeyTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql)).bind(user_id).bind(name).fetch_optional(pool).await?);
        Ok(row.map(Into::into))
    }

    pub async fn key(&self, id: i64) -> StoreResult<KeyRow> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row: Option<KeyTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql)).bind(id).fetch_optional(pool).await?);
        row.map(Into::into)
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
    }

    pub async fn keys(&self) -> StoreResult<Vec<KeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id");
        let rows: Vec<KeyTuple> =
            with_pool!(self, pool => sqlx::query_as(safe(&sql)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Replaces a key's mutable fields with `limits` (the caller merges a patch first).
    pub async fn update_key(
        &self,
        id: i64,
        name: &str,
        enabled: bool,
        limits: &KeyLimits,
    ) -> StoreResult<KeyRow> {
        let sql = format!(
            "UPDATE api_keys SET name = $1, enabled = $2, models = $3, quota_nano = $4, expires_at = $5, rpm = $6, tpm = $7, \
             max_concurrency = $8 WHERE id = $9 RETURNING {KEY_COLUMNS}"
        );
        let models = limits.models.as_ref().map(json_text);
        let row: Option<KeyTuple> = with_pool!(self, pool => sqlx::query_as(safe(&sql))
            .bind(name).bind(enabled).bind(&models).bind(limits.quota_nano).bind(limits.expires_at)
            .bind(limits.rpm).bind(limits.tpm).bind(limits.max_concurrency).bind(id)
            .fetch_optional(pool).await)
        .map_err(|e| conflict_or(e, || format!("this user already has a key named `{name}`")))?;
        row.map(Into::into)
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
    }

    pub async fn set_key_secret(&self, id: i64, key_hash: &str, key_hint: &str) -> StoreResult<()> {
        with_pool!(self, pool => { sqlx::query("UPDATE api_keys SET key_hash = $1, key_hint = $2 WHERE id = $3")
            .bind(key_hash).bind(key_hint).bind(id).execute(pool).await
            .map_err(|e| conflict_or(e, || "this key value is already in use".to_string()))?; });
        Ok(())
    }

    pub async fn delete_key(&self, id: i64) -> StoreResult<()> {
        let n = with_pool!(self, pool =>
            sqlx::query("DELETE FROM api_keys WHERE id = $1").bind(id).execute(pool).await?.rows_affected());
        if n == 0 {
            Err(StoreError::NotFound(format!("key {id}")))
        } else {
            Ok(())
        }
    }

    // ---- channels

    pub async fn channels(&self) -> StoreResult<Vec<ChannelRow>> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY id");
        let rows: Vec<ChannelTuple> =
            with_pool!(self, pool => sqlx::query_as(safe(&sql)).fetch_all(pool).await?);
        let keys: Vec<(i64, i64, i64, String, bool, Option<String>)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT id, channel_id, position, secret, enabled, disabled_reason FROM channel_keys ORDER BY channel_id, position")
            .fetch_all(pool).await?);
        let mut channels: Vec<ChannelRow> = rows.into_iter().map(channel_from).collect();
        for (id, channel_id, position, secret, enabled, disabled_reason) in keys {
            if let Some(channel) = channels.iter_mut().find(|c| c.id == channel_id) {
                channel.keys.push(ChannelKeyRow {
                    id,
                    position,
                    secret,
                    enabled,
                    disabled_reason,
                });
            }
        }
        Ok(channels)
    }

    pub async fn channel(&self, id: i64) -> StoreResult<ChannelRow> {
        self.channels()
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("channel {id}")))
    }

    /// Inserts a channel, or (with `existing`) replaces its fields and keys. Keys whose secret is unchanged keep
    /// their enabled/disabled state.
    pub async fn save_channel(
        &self,
        existing: Option<i64>,
        spec: &ChannelSpec,
    ) -> StoreResult<ChannelRow> {
        let now = now_ms();
        let models = json_text(&spec.models);
        let model_map = json_text(&spec.model_map);
        let modes = spec.modes.as_ref().map(json_text);
        let id = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = match existing {
                None => sqlx::query_as::<_, (i64,)>(
                    "INSERT INTO channels (name, kind, base_url, models, model_map, priority, weight, modes, enabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING id")
                    .bind(&spec.name).bind(&spec.kind).bind(&spec.base_url).bind(&models).bind(&model_map)
                    .bind(spec.priority).bind(spec.weight).bind(&modes).bind(spec.enabled).bind(now)
                    .fetch_one(&mut *tx).await
                    .map_err(|e| conflict_or(e, || format!("a channel named `{}` already exists", spec.name)))?.0,
                Some(id) => {
                    let n = sqlx::query(
                        "UPDATE channels SET name = $1, kind = $2, base_url = $3, models = $4, model_map = $5, priority = $6, \
                         weight = $7, modes = $8, enabled = $9, updated_at = $10 WHERE id = $11")
                        .bind(&spec.name).bind(&spec.kind).bind(&spec.base_url).bind(&models).bind(&model_map)
                        .bind(spec.priority).bind(spec.weight).bind(&modes).bind(spec.enabled).bind(now).bind(id)
                        .execute(&mut *tx).await
                        .map_err(|e| conflict_or(e, || format!("a channel named `{}` already exists", spec.name)))?
                        .rows_affected();
                    if n == 0 {
                        return Err(StoreError::NotFound(format!("channel {id}")));
                    }
                    id
                }
            };
            let old: Vec<(String, bool, Option<String>)> = sqlx::query_as(
                "SELECT secret, enabled, disabled_reason FROM channel_keys WHERE channel_id = $1")
                .bind(id).fetch_all(&mut *tx).await?;
            sqlx::query("DELETE FROM channel_keys WHERE channel_id = $1").bind(id).execute(&mut *tx).await?;
            for (position, secret) in spec.keys.iter().enumerate() {
                let previous = old.iter().find(|(s, _, _)| s == secret);
                let enabled = previous.map(|p| p.1).unwrap_or(true);
                let reason = previous.and_then(|p| p.2.clone());
                sqlx::query("INSERT INTO channel_keys (channel_id, position, secret, enabled, disabled_reason) VALUES ($1, $2, $3, $4, $5)")
                    .bind(id).bind(position as i64).bind(secret).bind(enabled).bind(reason)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        self.channel(id).await
    }

    pub async fn channel_id_by_name(&self, name: &str) -> StoreResult<Option<i64>> {
        let row: Option<(i64,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT id FROM channels WHERE name = $1").bind(name).fetch_optional(pool).await?);
        Ok(row.map(|r| r.0))
    }

    pub async fn delete_channel(&self, id: i64) -> StoreResult<()> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM channel_keys WHERE channel_id = $1").bind(id).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM channels WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        if n == 0 {
            Err(StoreError::NotFound(format!("channel {id}")))
        } else {
            Ok(())
        }
    }

    pub async fn disable_channel_key(&self, key_id: i64, reason: &str) -> StoreResult<()> {
        with_pool!(self, pool => { sqlx::query("UPDATE channel_keys SET enabled = FALSE, disabled_reason = $1 WHERE id = $2")
            .bind(reason).bind(key_id).execute(pool).await?; });
        Ok(())
    }

    // ---- prices (spec is the JSON of `catalog::Price`, in nano-USD)

    pub async fn prices(&self) -> StoreResult<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT model, spec FROM prices ORDER BY model").fetch_all(pool).await?);
        Ok(rows)
    }

    pub async fn put_price(&self, model: &str, spec: &str) -> StoreResult<()> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO prices (model, spec, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (model) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at")
            .bind(model).bind(spec).bind(now_ms()).execute(pool).await?; });
        Ok(())
    }

    pub async fn delete_price(&self, model: &str) -> StoreResult<()> {
        let n = with_pool!(self, pool =>
            sqlx::query("DELETE FROM prices WHERE model = $1").bind(model).execute(pool).await?.rows_affected());
        if n == 0 {
            Err(StoreError::NotFound(format!("price for `{model}`")))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BATCH_SIZES, LARGE_BATCH, batch_chunks};

    #[test]
    fn batch_chunks_cover_every_row_once_in_statement_sizes_by_batch_size() {
        for len in 0..=2 * LARGE_BATCH + 70 {
            let chunks = batch_chunks(len);
            let mut next = 0;
            for &(start, rows) in &chunks {
                assert_eq!(start, next, "{len}: contiguous");
                assert!(BATCH_SIZES.contains(&rows), "{len}: a cached size");
                next += rows;
            }
            assert_eq!(next, len, "{len}: every row");
            let largest = chunks.iter().map(|c| c.1).max().unwrap_or(0);
            if len < LARGE_BATCH {
                assert!(largest <= 16, "{len}: a tick's batch in short statements");
            } else {
                assert_eq!(largest, 64, "{len}: a full batch in long statements");
            }
        }
        assert_eq!(batch_chunks(37), vec![(0, 16), (16, 16), (32, 4), (36, 1)]);
        assert_eq!(batch_chunks(LARGE_BATCH).len(), LARGE_BATCH / 64);
    }
}
