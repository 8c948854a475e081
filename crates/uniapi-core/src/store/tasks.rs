//! The durable task table. A task's state only changes by compare-and-swap on its `version`, so two
//! pollers (or two nodes) can never both settle, fail or refund the same task.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreResult, conflict_or, now_ms, safe, with_pool};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub user_id: i64,
    pub key_id: i64,
    pub family: String,
    pub action: String,
    pub price_name: String,
    pub channel_id: i64,
    pub upstream_id: String,
    /// Canonical: SUBMITTED, QUEUED, IN_PROGRESS, SUCCESS, FAILURE.
    pub state: String,
    pub progress: String,
    pub result: Option<serde_json::Value>,
    #[serde(skip)]
    pub raw: Option<serde_json::Value>,
    pub fail_reason: Option<String>,
    pub charged_nano: i64,
    pub refunded: bool,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    #[serde(skip)]
    pub request: Option<serde_json::Value>,
    pub version: i64,
    pub polls: i64,
    pub next_poll_at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

impl TaskRow {
    /// The row as it is after `change` was applied.
    pub fn with_change(&self, change: &TaskChange) -> TaskRow {
        let mut next = self.clone();
        next.state = change.state.clone();
        next.progress = change.progress.clone();
        if change.result.is_some() {
            next.result = change.result.clone();
        }
        if change.raw.is_some() {
            next.raw = change.raw.clone();
        }
        if change.fail_reason.is_some() {
            next.fail_reason = change.fail_reason.clone();
        }
        next.refunded = change.refunded;
        next.next_poll_at = change.next_poll_at;
        next.started_at = next.started_at.or(change.started_at);
        next.finished_at = next.finished_at.or(change.finished_at);
        next.polls += 1;
        next.version += 1;
        next.updated_at = now_ms();
        next
    }

    pub fn is_final(&self) -> bool {
        self.state == "SUCCESS" || self.state == "FAILURE"
    }
}

const TASK_COLUMNS: &str = "id, user_id, key_id, family, action, price_name, channel_id, upstream_id, state, progress, \
                            result, raw, fail_reason, charged_nano, refunded, idempotency_key, request, version, polls, \
                            next_poll_at, created_at, started_at, finished_at, updated_at";

fn json_of(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

macro_rules! task_from_row {
    ($row:expr) => {{
        let row = $row;
        TaskRow {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            key_id: row.try_get("key_id")?,
            family: row.try_get("family")?,
            action: row.try_get("action")?,
            price_name: row.try_get("price_name")?,
            channel_id: row.try_get("channel_id")?,
            upstream_id: row.try_get("upstream_id")?,
            state: row.try_get("state")?,
            progress: row.try_get("progress")?,
            result: json_of(row.try_get("result")?),
            raw: json_of(row.try_get("raw")?),
            fail_reason: row.try_get("fail_reason")?,
            charged_nano: row.try_get("charged_nano")?,
            refunded: row.try_get::<i64, _>("refunded")? != 0,
            idempotency_key: row.try_get("idempotency_key")?,
            request: json_of(row.try_get("request")?),
            version: row.try_get("version")?,
            polls: row.try_get("polls")?,
            next_poll_at: row.try_get("next_poll_at")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

/// A state change, applied only if the task is still at `version`.
#[derive(Clone, Debug, Default)]
pub struct TaskChange {
    pub state: String,
    pub progress: String,
    pub result: Option<serde_json::Value>,
    pub raw: Option<serde_json::Value>,
    pub fail_reason: Option<String>,
    pub refunded: bool,
    pub next_poll_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The change owes a callback: the task's hook must hear of it, even across a restart.
    pub owes_callback: bool,
}

impl Store {
    /// Stores a new task; a second task with the same idempotency key for the user is a conflict.
    pub async fn insert_task(&self, task: &TaskRow) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16, $17, $18, $19, $20, $21, $22, $23, $24)"
        );
        let text = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        with_pool!(self, pool => {
            sqlx::query(safe(&sql))
                .bind(&task.id).bind(task.user_id).bind(task.key_id).bind(&task.family).bind(&task.action)
                .bind(&task.price_name).bind(task.channel_id).bind(&task.upstream_id).bind(&task.state).bind(&task.progress)
                .bind(text(&task.result)).bind(text(&task.raw)).bind(&task.fail_reason).bind(task.charged_nano)
                .bind(i64::from(task.refunded)).bind(&task.idempotency_key).bind(text(&task.request)).bind(task.version)
                .bind(task.polls).bind(task.next_poll_at).bind(task.created_at).bind(task.started_at).bind(task.finished_at)
                .bind(task.updated_at)
                .execute(pool).await
                .map_err(|e| conflict_or(e, || "a task with this idempotency key exists".to_string()))?;
        });
        Ok(())
    }

    async fn tasks_where(
        &self,
        clause: &str,
        params: &[&str],
        ints: &[i64],
    ) -> StoreResult<Vec<TaskRow>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE {clause}");
        let tasks = with_pool!(self, pool => {
            let mut query = sqlx::query(safe(&sql));
            for p in params {
                query = query.bind(*p);
            }
            for i in ints {
                query = query.bind(*i);
            }
            let rows = query.fetch_all(pool).await?;
            let mut tasks = Vec::with_capacity(rows.len());
            for row in &rows {
                tasks.push(task_from_row!(row));
            }
            tasks
        });
        Ok(tasks)
    }

    pub async fn task(&self, id: &str) -> StoreResult<Option<TaskRow>> {
        Ok(self.tasks_where("id = $1", &[id], &[]).await?.pop())
    }

    pub async fn task_by_idempotency(
        &self,
        user_id: i64,
        key: &str,
    ) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .tasks_where("idempotency_key = $1 AND user_id = $2", &[key], &[user_id])
            .await?
            .pop())
    }

    /// Unfinished tasks whose next poll is due, oldest poll first.
    pub async fn due_tasks(&self, now: i64, limit: i64) -> StoreResult<Vec<TaskRow>> {
        let clause = format!(
            "state NOT IN ('SUCCESS', 'FAILURE') AND next_poll_at <= $1 ORDER BY next_poll_at LIMIT {}",
            limit.max(1)
        );
        self.tasks_where(&clause, &[], &[now]).await
    }

    /// Tasks for the admin API, newest first.
    pub async fn tasks(
        &self,
        user_id: Option<i64>,
        family: Option<&str>,
        state: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<TaskRow>> {
        let mut clauses = vec!["1 = 1".to_string()];
        let mut texts: Vec<&str> = Vec::new();
        if let Some(f) = family {
            texts.push(f);
            clauses.push(format!("family = ${}", texts.len()));
        }
        if let Some(s) = state {
            texts.push(s);
            clauses.push(format!("state = ${}", texts.len()));
        }
        let mut ints = Vec::new();
        if let Some(u) = user_id {
            ints.push(u);
            clauses.push(format!("user_id = ${}", texts.len() + ints.len()));
        }
        let clause = format!(
            "{} ORDER BY created_at DESC LIMIT {} OFFSET {}",
            clauses.join(" AND "),
            limit.clamp(1, 1000),
            offset.max(0)
        );
        self.tasks_where(&clause, &texts, &ints).await
    }

    /// Applies `change` if the task is still at `version`; returns whether this caller won.
    pub async fn update_task(
        &self,
        id: &str,
        version: i64,
        change: &TaskChange,
    ) -> StoreResult<bool> {
        let text = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        let n = with_pool!(self, pool => sqlx::query(
            "UPDATE tasks SET state = $1, progress = $2, result = COALESCE($3, result), raw = COALESCE($4, raw), \
             fail_reason = COALESCE($5, fail_reason), refunded = $6, next_poll_at = $7, \
             started_at = COALESCE(started_at, $8), finished_at = COALESCE(finished_at, $9), polls = polls + 1, \
             version = version + 1, updated_at = $10, \
             callback_due = CASE WHEN $13 = 1 THEN version + 1 ELSE callback_due END \
             WHERE id = $11 AND version = $12")
            .bind(&change.state).bind(&change.progress).bind(text(&change.result)).bind(text(&change.raw))
            .bind(&change.fail_reason).bind(i64::from(change.refunded)).bind(change.next_poll_at)
            .bind(change.started_at).bind(change.finished_at).bind(now_ms()).bind(id).bind(version)
            .bind(i64::from(change.owes_callback))
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Tasks whose last callback was not delivered, given up or refused yet, with the version that
    /// owes it, by id after `after` (a page): the deliveries to resume when a gateway starts.
    pub async fn callbacks_due(&self, after: &str, limit: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT id, callback_due FROM tasks WHERE callback_due > 0 AND id > $1 ORDER BY id LIMIT $2")
            .bind(after).bind(limit.max(1)).fetch_all(pool).await?);
        Ok(rows)
    }

    /// The delivery owed by version `due` of a task ended (delivered, refused or given up); a later
    /// change's delivery, if one is owed, stays owed.
    pub async fn callback_done(&self, id: &str, due: i64) -> StoreResult<()> {
        with_pool!(self, pool => sqlx::query("UPDATE tasks SET callback_due = 0 WHERE id = $1 AND callback_due = $2")
            .bind(id).bind(due).execute(pool).await?.rows_affected());
        Ok(())
    }
}
