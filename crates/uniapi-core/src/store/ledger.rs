//! Ledger entries in SQL: applied in batches, each exactly once (the entry id is the primary key), and
//! the stored balances moved in the same transaction. The reconciliation check reads both sides.

use serde::Serialize;

use super::{Store, StoreResult, with_pool};
use crate::billing::ledger::{LedgerEntry, Opening, Standing};

/// One user's stored balance next to the sum of their ledger entries.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BalanceCheck {
    pub user_id: i64,
    pub balance_nano: i64,
    pub entries_nano: i64,
}

impl Store {
    pub async fn apply_ledger_entries(&self, entries: &[LedgerEntry]) -> StoreResult<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for e in entries {
                let inserted = sqlx::query(
                    "INSERT INTO ledger_entries (id, user_id, key_id, kind, amount_nano, cache_nano, note, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING")
                    .bind(&e.id).bind(e.user_id).bind(e.key_id).bind(e.kind).bind(e.amount_nano).bind(e.cache_nano)
                    .bind(&e.note).bind(e.created_at)
                    .execute(&mut *tx).await?.rows_affected();
                if inserted == 0 {
                    continue;
                }
                // a capture adds to what was used; a refund takes it back
                let (used, cache) = match e.kind { "capture" => (-e.amount_nano, e.cache_nano), "refund" => (-e.amount_nano, 0), _ => (0, 0) };
                sqlx::query("UPDATE users SET balance_nano = balance_nano + $1, used_nano = used_nano + $2, \
                             cache_used_nano = cache_used_nano + $3 WHERE id = $4")
                    .bind(e.amount_nano).bind(used).bind(cache).bind(e.user_id).execute(&mut *tx).await?;
                if let Some(key_id) = e.key_id.filter(|_| used != 0 || cache != 0) {
                    sqlx::query("UPDATE api_keys SET used_nano = used_nano + $1, cache_used_nano = cache_used_nano + $2 WHERE id = $3")
                        .bind(used).bind(cache).bind(key_id).execute(&mut *tx).await?;
                }
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
