//! Request logs: written in batches by the log writer, read by the admin API with filters and paging.

use serde::{Deserialize, Serialize};

use super::{Store, StoreResult, safe, with_pool};

/// One channel attempt of a request, and why it failed if it did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub channel_id: i64,
    pub channel: String,
    /// The last four characters of the upstream key: enough to tell keys apart, never the key.
    pub key_hint: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestLog {
    pub id: String,
    pub created_at: i64,
    pub user_id: Option<i64>,
    pub key_id: Option<i64>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub channel_id: Option<i64>,
    pub status: u16,
    pub stream: bool,
    /// `complete`, `client_gone`, `upstream_cut`, `failed` or `rejected`.
    pub outcome: String,
    pub attempts: Vec<Attempt>,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogFilter {
    pub user_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub channel_id: Option<i64>,
    pub status: Option<i64>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

enum Param {
    Int(i64),
    Text(String),
}

type LogTuple = (
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    bool,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
);

const LOG_COLUMNS: &str = "id, created_at, user_id, key_id, method, path, model, upstream_model, channel_id, status, \
                           stream, outcome, attempts, latency_ms, ttfb_ms, error";

fn log_from(t: LogTuple) -> RequestLog {
    RequestLog {
        id: t.0,
        created_at: t.1,
        user_id: t.2,
        key_id: t.3,
        method: t.4,
        path: t.5,
        model: t.6,
        upstream_model: t.7,
        channel_id: t.8,
        status: u16::try_from(t.9).unwrap_or(0),
        stream: t.10,
        outcome: t.11,
        attempts: serde_json::from_str(&t.12).unwrap_or_default(),
        latency_ms: u64::try_from(t.13).unwrap_or(0),
        ttfb_ms: t.14.and_then(|v| u64::try_from(v).ok()),
        error: t.15,
    }
}

impl Store {
    /// Writes a batch in one transaction; a log id seen twice is written once.
    pub async fn insert_logs(&self, logs: &[RequestLog]) -> StoreResult<()> {
        if logs.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for log in logs {
                let attempts = serde_json::to_string(&log.attempts).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "INSERT INTO request_logs (id, created_at, user_id, key_id, method, path, model, upstream_model, channel_id, \
                     status, stream, outcome, attempts, latency_ms, ttfb_ms, error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (id) DO NOTHING")
                    .bind(&log.id).bind(log.created_at).bind(log.user_id).bind(log.key_id).bind(&log.method)
                    .bind(&log.path).bind(&log.model).bind(&log.upstream_model).bind(log.channel_id)
                    .bind(i64::from(log.status)).bind(log.stream).bind(&log.outcome).bind(attempts)
                    .bind(i64::try_from(log.latency_ms).unwrap_or(i64::MAX))
                    .bind(log.ttfb_ms.and_then(|v| i64::try_from(v).ok())).bind(&log.error)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Newest first.
    pub async fn logs(&self, filter: &LogFilter) -> StoreResult<Vec<RequestLog>> {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        let mut add = |column: &str, op: &str, value: Param| {
            params.push(value);
            clauses.push(format!("{column} {op} ${}", params.len()));
        };
        if let Some(v) = filter.user_id {
            add("user_id", "=", Param::Int(v));
        }
        if let Some(v) = filter.key_id {
            add("key_id", "=", Param::Int(v));
        }
        if let Some(v) = &filter.model {
            add("model", "=", Param::Text(v.clone()));
        }
        if let Some(v) = filter.channel_id {
            add("channel_id", "=", Param::Int(v));
        }
        if let Some(v) = filter.status {
            add("status", "=", Param::Int(v));
        }
        if let Some(v) = filter.since {
            add("created_at", ">=", Param::Int(v));
        }
        if let Some(v) = filter.until {
            add("created_at", "<", Param::Int(v));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let offset = filter.offset.unwrap_or(0).max(0);
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM request_logs {where_clause} ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {offset}"
        );
        let rows: Vec<LogTuple> = with_pool!(self, pool => {
            let mut query = sqlx::query_as(safe(&sql));
            for param in &params {
                query = match param {
                    Param::Int(v) => query.bind(*v),
                    Param::Text(v) => query.bind(v.as_str()),
                };
            }
            query.fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(log_from).collect())
    }
}
