//! Ledger entries in SQL: applied in batches, each exactly once (the entry id is the primary key), and
//! the stored balances moved in the same transaction. The reconciliation check reads both sides.

use serde::Serialize;

use std::collections::{BTreeMap, HashSet};

use super::{Store, StoreResult, batch_chunks, multi_row_insert, safe, with_pool};
use crate::billing::ledger::{LedgerEntry, Opening, Standing};

/// One user's stored balance next to the sum of their ledger entries.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BalanceCheck {
    pub user_id: i64,
    pub balance_nano: i64,
    pub entries_nano: i64,
}

static ENTRY_INSERTS: super::StatementCache =
    [const { std::sync::OnceLock::new() }; 2 * super::BATCH_SIZES.len()];
static ENTRY_INSERTS_RETURNING: super::StatementCache =
    [const { std::sync::OnceLock::new() }; 2 * super::BATCH_SIZES.len()];
const ENTRY_COLUMNS: &str = "id, user_id, key_id, kind, amount_nano, cache_nano, note, created_at";

/// Binds the `ENTRY_COLUMNS` of every entry of `chunk`, in order (a statement or a scalar query).
macro_rules! bind_entries {
    ($query:expr, $chunk:expr) => {{
        let mut query = $query;
        for e in $chunk {
            query = query
                .bind(&e.id)
                .bind(e.user_id)
                .bind(e.key_id)
                .bind(e.kind)
                .bind(e.amount_nano)
                .bind(e.cache_nano)
                .bind(&e.note)
                .bind(e.created_at);
        }
        query
    }};
}

impl Store {
    pub async fn apply_ledger_entries(&self, entries: &[LedgerEntry]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let sqlite = matches!(self, Store::Sqlite(_));
        // one multi-row INSERT per chunk tells which entries are new; the balances then move once per
        // user and key for the whole batch (a handful of statements instead of three per entry)
        let mut users: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
        let mut keys: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        let _turn = self.write_turn().await;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (start, rows) in batch_chunks(entries.len()) {
                let chunk = &entries[start..start + rows];
                // the usual case: every entry is new, and the insert need not name them. Asking it to
                // (`RETURNING id`) sends each row back on its own, and SQLite's worker thread waited on
                // its bounded row channel every 50: 6-7 % of the process's CPU at c32 (perf). So the
                // chunk goes in under a savepoint, and only when some entry was there already is it
                // taken back and inserted again with `RETURNING`, to learn which ones are new.
                let mut attempt = sqlx::Acquire::begin(&mut *tx).await?;
                let sql = multi_row_insert(&ENTRY_INSERTS, sqlite, rows, "ledger_entries", ENTRY_COLUMNS,
                    "ON CONFLICT (id) DO NOTHING");
                let query = bind_entries!(sqlx::query(safe(sql)), chunk);
                let mut new: HashSet<&str> = if query.execute(&mut *attempt).await?.rows_affected() == rows as u64 {
                    attempt.commit().await?;
                    chunk.iter().map(|e| e.id.as_str()).collect()
                } else {
                    attempt.rollback().await?;
                    let sql = multi_row_insert(&ENTRY_INSERTS_RETURNING, sqlite, rows, "ledger_entries", ENTRY_COLUMNS,
                        "ON CONFLICT (id) DO NOTHING RETURNING id");
                    let query = bind_entries!(sqlx::query_scalar::<_, String>(safe(sql)), chunk);
                    let inserted: HashSet<String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
                    chunk.iter().map(|e| e.id.as_str()).filter(|id| inserted.contains(*id)).collect()
                };
                for e in chunk {
                    // an id twice in one batch is inserted (and applied) once
                    if !new.remove(e.id.as_str()) {
                        continue;
                    }
                    // a capture adds to what was used; a refund takes it back
                    let (used, cache) = match e.kind {
                        "capture" => (-e.amount_nano, e.cache_nano),
                        "refund" => (-e.amount_nano, 0),
                        _ => (0, 0),
                    };
                    let user = users.entry(e.user_id).or_default();
                    user.0 += e.amount_nano;
                    user.1 += used;
                    user.2 += cache;
                    if let Some(key_id) = e.key_id.filter(|_| used != 0 || cache != 0) {
                        let key = keys.entry(key_id).or_default();
                        key.0 += used;
                        key.1 += cache;
                    }
                }
            }
            for (user_id, (amount, used, cache)) in &users {
                sqlx::query("UPDATE users SET balance_nano = balance_nano + $1, used_nano = used_nano + $2, \
                             cache_used_nano = cache_used_nano + $3 WHERE id = $4")
                    .bind(amount).bind(used).bind(cache).bind(user_id).execute(&mut *tx).await?;
            }
            for (key_id, (used, cache)) in &keys {
                sqlx::query("UPDATE api_keys SET used_nano = used_nano + $1, cache_used_nano = cache_used_nano + $2 WHERE id = $3")
                    .bind(used).bind(cache).bind(key_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stored balances and key spending, to open the in-memory accounts.
    pub async fn openings(&self) -> StoreResult<Vec<Opening>> {
        let users: Vec<(i64, i64, i64, i64)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT id, balance_nano, used_nano, cache_used_nano FROM users ORDER BY id").fetch_all(pool).await?);
        let keys: Vec<(i64, i64, Option<i64>, i64, i64)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT id, user_id, quota_nano, used_nano, cache_used_nano FROM api_keys ORDER BY id").fetch_all(pool).await?);
        Ok(users
            .into_iter()
            .map(
                |(user_id, balance_nano, used_nano, cache_used_nano)| Opening {
                    user_id,
                    standing: Standing {
                        balance_nano,
                        held_nano: 0,
                        used_nano,
                        cache_used_nano,
                    },
                    keys: keys
                        .iter()
                        .filter(|k| k.1 == user_id)
                        .map(|k| (k.0, k.2, k.3, k.4))
                        .collect(),
                },
            )
            .collect())
    }

    pub async fn balance_checks(&self) -> StoreResult<Vec<BalanceCheck>> {
        let rows: Vec<(i64, i64, i64)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT u.id, u.balance_nano, CAST(COALESCE(SUM(e.amount_nano), 0) AS BIGINT) FROM users u \
             LEFT JOIN ledger_entries e ON e.user_id = u.id GROUP BY u.id, u.balance_nano ORDER BY u.id")
            .fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(user_id, balance_nano, entries_nano)| BalanceCheck {
                user_id,
                balance_nano,
                entries_nano,
            })
            .collect())
    }

    pub async fn ledger_entries(&self, user_id: i64) -> StoreResult<Vec<(String, String, i64)>> {
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT id, kind, amount_nano FROM ledger_entries WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user_id).fetch_all(pool).await?);
        Ok(rows)
    }
}
