//! Embedded migrations: one folder per dialect, applied in order, each recorded once in `schema_migrations`.
//! Both folders hold the same versions; a test migrates both.

use super::{Store, StoreResult, now_ms, with_pool};

struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../../migrations/sqlite/0002_billing.sql"),
        postgres: include_str!("../../migrations/postgres/0002_billing.sql"),
    },
    Migration {
        version: 3,
        sqlite: include_str!("../../migrations/sqlite/0003_tasks.sql"),
        postgres: include_str!("../../migrations/postgres/0003_tasks.sql"),
    },
    Migration {
        version: 4,
        sqlite: include_str!("../../migrations/sqlite/0004_callbacks.sql"),
        postgres: include_str!("../../migrations/postgres/0004_callbacks.sql"),
    },
];

/// Splits a migration file into statements (the files hold no `;` inside strings or bodies).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// Serializes migrations across processes: several nodes may start against one PostgreSQL at once.
const PG_MIGRATION_LOCK: i64 = 0x756e_6961_7069; // "uniapi"

pub(super) async fn run(store: &Store) -> StoreResult<()> {
    for migration in MIGRATIONS {
        with_pool!(store, pool => {
            let mut tx = pool.begin().await?;
            if matches!(store, Store::Postgres(_)) {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_MIGRATION_LOCK).execute(&mut *tx).await?;
            }
            sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                .execute(&mut *tx).await?;
            let done: Option<(i64,)> = sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(migration.version).fetch_optional(&mut *tx).await?;
            if done.is_none() {
                let sql = match store { Store::Sqlite(_) => migration.sqlite, Store::Postgres(_) => migration.postgres };
                for statement in statements(sql) {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(migration.version).bind(now_ms()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
    }
    Ok(())
}
