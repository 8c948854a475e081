//! Request logs: written in batches by the log writer, read by the admin API with filters and paging.

use serde::{Deserialize, Serialize};

use sqlx::Row;

use super::{Store, StoreResult, batch_chunks, multi_row_insert, safe, with_pool};

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
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    #[serde(default)]
    pub cost_nano: i64,
    /// The price breakdown: units, how they were known, the price applied.
    #[serde(default)]
    pub cost_detail: Option<JsonText>,
}

/// A JSON value kept as its text: serialized once, then stored and served as is (a `serde_json::Value`
/// cost a map build at capture and a slow re-serialization at the write). A request's charge is kept as
/// it is and serialized only when the log is written or served: off the request path, in the
/// write-behind batch, by [`super::json::charge`] (4.5k instructions a request through serde_json, less
/// written by hand; callgrind).
#[derive(Clone, Debug)]
pub struct JsonText(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Text(Box<serde_json::value::RawValue>),
    Charge(Box<crate::billing::Charge>),
}

impl JsonText {
    /// None only when `value` cannot be serialized (a map with non-string keys).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Option<JsonText> {
        serde_json::value::to_raw_value(value)
            .ok()
            .map(|raw| JsonText(Repr::Text(raw)))
    }

    /// A charge, serialized when the text is first asked for.
    pub fn charge(charge: crate::billing::Charge) -> JsonText {
        JsonText(Repr::Charge(Box::new(charge)))
    }

    /// None when `text` is not JSON.
    pub fn parse(text: String) -> Option<JsonText> {
        serde_json::value::RawValue::from_string(text)
            .ok()
            .map(|raw| JsonText(Repr::Text(raw)))
    }

    pub fn get(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            Repr::Text(raw) => std::borrow::Cow::Borrowed(raw.get()),
            // written by hand, the same text serde_json gives (`Serialize` below, for the admin API)
            Repr::Charge(charge) => std::borrow::Cow::Owned(super::json::charge(charge)),
        }
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Text(raw) => raw.serialize(serializer),
            Repr::Charge(charge) => charge.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<JsonText, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(deserializer)
            .map(|raw| JsonText(Repr::Text(raw)))
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.get() == other.get()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogFilter {
    pub id: Option<String>,
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

const LOG_COLUMNS: &str = "id, created_at, user_id, key_id, method, path, model, upstream_model, channel_id, status, \
                           stream, outcome, attempts, latency_ms, ttfb_ms, error, input_tokens, cached_tokens, output_tokens, \
                           reasoning_tokens, cost_nano, cost_detail";

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decodes a log row of either dialect (the macro expands it once per row type).
macro_rules! log_from_row {
    ($row:expr) => {{
        let row = $row;
        let attempts: String = row.try_get("attempts")?;
        let detail: Option<String> = row.try_get("cost_detail")?;
        let ttfb: Option<i64> = row.try_get("ttfb_ms")?;
        RequestLog {
            id: row.try_get("id")?,
            created_at: row.try_get("created_at")?,
            user_id: row.try_get("user_id")?,
            key_id: row.try_get("key_id")?,
            method: row.try_get("method")?,
            path: row.try_get("path")?,
            model: row.try_get("model")?,
            upstream_model: row.try_get("upstream_model")?,
            channel_id: row.try_get("channel_id")?,
            status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
            stream: row.try_get("stream")?,
            outcome: row.try_get("outcome")?,
            attempts: serde_json::from_str(&attempts).unwrap_or_default(),
            latency_ms: unsigned(row.try_get("latency_ms")?),
            ttfb_ms: ttfb.map(unsigned),
            error: row.try_get("error")?,
            input_tokens: unsigned(row.try_get("input_tokens")?),
            cached_tokens: unsigned(row.try_get("cached_tokens")?),
            output_tokens: unsigned(row.try_get("output_tokens")?),
            reasoning_tokens: unsigned(row.try_get("reasoning_tokens")?),
            cost_nano: row.try_get("cost_nano")?,
            cost_detail: detail.and_then(JsonText::parse),
        }
    }};
}

static LOG_INSERTS: super::StatementCache =
    [const { std::sync::OnceLock::new() }; 2 * super::BATCH_SIZES.len()];

impl Store {
    /// Writes a batch in one transaction; a log id seen twice is written once.
    pub async fn insert_logs(&self, logs: &[RequestLog]) -> StoreResult<()> {
        if logs.is_empty() {
            return Ok(());
        }
        let sqlite = matches!(self, Store::Sqlite(_));
        let _turn = self.write_turn().await;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (start, rows) in batch_chunks(logs.len()) {
                let chunk = &logs[start..start + rows];
                let sql = multi_row_insert(&LOG_INSERTS, sqlite, rows, "request_logs", LOG_COLUMNS, "ON CONFLICT (id) DO NOTHING");
                let mut query = sqlx::query(safe(sql));
                for log in chunk {
                    let attempts = super::json::attempts(&log.attempts);
                    query = query
                        .bind(&log.id).bind(log.created_at).bind(log.user_id).bind(log.key_id).bind(&log.method)
                        .bind(&log.path).bind(&log.model).bind(&log.upstream_model).bind(log.channel_id)
                        .bind(i64::from(log.status)).bind(log.stream).bind(&log.outcome).bind(attempts)
                        .bind(i64::try_from(log.latency_ms).unwrap_or(i64::MAX))
                        .bind(log.ttfb_ms.and_then(|v| i64::try_from(v).ok())).bind(&log.error)
                        .bind(signed(log.input_tokens)).bind(signed(log.cached_tokens)).bind(signed(log.output_tokens))
                        .bind(signed(log.reasoning_tokens)).bind(log.cost_nano)
                        .bind(log.cost_detail.as_ref().map(|d| d.get().into_owned()));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn delete_logs_before(&self, before_ms: i64) -> StoreResult<u64> {
        let n = with_pool!(self, pool =>
            sqlx::query("DELETE FROM request_logs WHERE created_at < $1").bind(before_ms).execute(pool).await?.rows_affected());
        Ok(n)
    }

    /// Newest first.
    pub async fn logs(&self, filter: &LogFilter) -> StoreResult<Vec<RequestLog>> {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        let mut add = |column: &str, op: &str, value: Param| {
            params.push(value);
            clauses.push(format!("{column} {op} ${}", params.len()));
        };
        if let Some(v) = &filter.id {
            add("id", "=", Param::Text(v.clone()));
        }
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
        let logs: Vec<RequestLog> = with_pool!(self, pool => {
            let mut query = sqlx::query(safe(&sql));
            for param in &params {
                query = match param {
                    Param::Int(v) => query.bind(*v),
                    Param::Text(v) => query.bind(v.as_str()),
                };
            }
            let rows = query.fetch_all(pool).await?;
            let mut logs = Vec::with_capacity(rows.len());
            for row in &rows {
                logs.push(log_from_row!(row));
            }
            logs
        });
        Ok(logs)
    }
}
