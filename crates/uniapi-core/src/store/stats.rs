//! Usage and spend aggregated from the request logs by time bucket and one dimension.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, StoreResult, safe, with_pool};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StatsQuery {
    /// `minute`, `hour` (default) or `day`.
    pub bucket: Option<String>,
    /// `model`, `user`, `key`, `channel`, or absent for totals per bucket.
    pub group_by: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatsRow {
    /// Start of the bucket, unix milliseconds.
    pub bucket: i64,
    pub group: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano: i64,
    pub cost_usd: f64,
}

impl Store {
    pub async fn stats(&self, query: &StatsQuery) -> StoreResult<Vec<StatsRow>> {
        let bucket_ms: i64 = match query.bucket.as_deref().unwrap_or("hour") {
            "minute" => 60_000,
            "hour" => 3_600_000,
            "day" => 86_400_000,
            other => {
                return Err(StoreError::Conflict(format!(
                    "`bucket` must be minute, hour or day, not `{other}`"
                )));
            }
        };
        let group = match query.group_by.as_deref() {
            None | Some("") => "''",
            Some("model") => "COALESCE(model, '')",
            Some("user") => "COALESCE(CAST(user_id AS TEXT), '')",
            Some("key") => "COALESCE(CAST(key_id AS TEXT), '')",
            Some("channel") => "COALESCE(CAST(channel_id AS TEXT), '')",
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "`group_by` must be model, user, key or channel, not `{other}`"
                )));
            }
        };
        let sql = format!(
            "SELECT (created_at / {bucket_ms}) * {bucket_ms} AS bucket, {group} AS grp, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_nano), 0) AS BIGINT) \
             FROM request_logs WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2 ORDER BY 1, 2"
        );
        let since = query.since.unwrap_or(0);
        let until = query.until.unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, i64, i64, i64, i64, i64)> = with_pool!(self, pool => sqlx::query_as(safe(&sql)).bind(since).bind(until).fetch_all(pool).await?);
        let grouped = query.group_by.as_deref().is_some_and(|g| !g.is_empty());
        Ok(rows
            .into_iter()
            .map(
                |(bucket, grp, requests, input_tokens, cached_tokens, output_tokens, cost_nano)| {
                    StatsRow {
                        bucket,
                        group: grouped.then_some(grp),
                        requests,
                        input_tokens,
                        cached_tokens,
                        output_tokens,
                        cost_nano,
                        cost_usd: cost_nano as f64 / 1e9,
                    }
                },
            )
            .collect())
    }
}
