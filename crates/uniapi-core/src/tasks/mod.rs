//! The task engine under every asynchronous family: a durable task table whose rows change only by
//! compare-and-swap, a background poller that batches per channel and backs off by task age, a timeout
//! that fails stuck tasks, and a refund of a failed task's charge exactly once. A family adds only its
//! wire mapping (`suno`): submit, poll, status mapping.

pub mod callback;
pub mod fal;
pub mod ideogram;
mod imagecheck;
pub mod images;
pub mod jimeng;
pub mod kling;
pub mod luma;
pub mod midjourney;
pub mod submit;
pub mod suno;
pub mod udio;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Channel;
use crate::state::AppState;
use crate::store::now_ms;
use crate::store::tasks::{TaskChange, TaskRow};

/// The canonical states (new-api's set): what every family's status maps to.
pub const SUBMITTED: &str = "SUBMITTED";
pub const QUEUED: &str = "QUEUED";
pub const IN_PROGRESS: &str = "IN_PROGRESS";
pub const SUCCESS: &str = "SUCCESS";
pub const FAILURE: &str = "FAILURE";

/// What a poll learned about one task.
#[derive(Clone, Debug)]
pub struct Observed {
    pub upstream_id: String,
    pub state: &'static str,
    pub progress: String,
    pub result: Option<serde_json::Value>,
    pub raw: serde_json::Value,
    pub fail_reason: Option<String>,
}

/// How a batch poll of one channel went.
pub enum PollOutcome {
    /// Tasks the upstream reported; the others are polled again later.
    Observed(Vec<Observed>),
    /// The upstream asked us to slow down for this many seconds.
    RateLimited(u64),
    Failed(String),
}

/// Sends one poll request and reads its JSON answer; anything else is the outcome for the tasks it
/// covered: no answer in time, a 429 (wait `Retry-After`, 5 s without one), or an error status.
pub async fn poll_json(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<serde_json::Value, PollOutcome> {
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(response)) => response,
        _ => return Err(PollOutcome::Failed("the upstream did not answer".into())),
    };
    if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let seconds = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        return Err(PollOutcome::RateLimited(seconds.unwrap_or(5)));
    }
    if !response.status().is_success() {
        return Err(PollOutcome::Failed(format!(
            "the upstream answered {}",
            response.status()
        )));
    }
    Ok(response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null))
}

/// Polls each due task on its own (providers without a batch query), at most `concurrency` at once.
pub async fn poll_each<F, Fut>(tasks: &[TaskRow], concurrency: usize, fetch: F) -> PollOutcome
where
    F: FnMut(&TaskRow) -> Fut,
    Fut: std::future::Future<Output = Result<Observed, PollOutcome>>,
{
    use futures_util::StreamExt;
    let results = futures_util::stream::iter(tasks.iter().map(fetch))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    fold_polls(results)
}

/// Folds the answers of per-task polls into one outcome: what was seen; when nothing was, the
/// longest 429 wait, else the last failure.
fn fold_polls(results: Vec<Result<Observed, PollOutcome>>) -> PollOutcome {
    let mut seen = Vec::new();
    let mut limited: Option<u64> = None;
    let mut failure = None;
    for result in results {
        match result {
            Ok(observed) => seen.push(observed),
            Err(PollOutcome::RateLimited(s)) => limited = Some(limited.map_or(s, |l| l.max(s))),
            Err(PollOutcome::Failed(reason)) => failure = Some(reason),
            Err(PollOutcome::Observed(more)) => seen.extend(more),
        }
    }
    match (seen.is_empty(), limited, failure) {
        (true, Some(seconds), _) => PollOutcome::RateLimited(seconds),
        (true, None, Some(reason)) => PollOutcome::Failed(reason),
        _ => PollOutcome::Observed(seen),
    }
}

/// How long one poll request may take.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// When to poll a task next: soon while it is young, less often as it ages.
pub fn next_poll_delay(age_ms: i64) -> i64 {
    (age_ms / 10).clamp(1_000, 30_000)
}

/// Moves one task to what was observed, if it changed; a task that ends in failure is refunded by
/// whichever poller wins the compare-and-swap, so the refund happens exactly once.
pub async fn apply(state: &AppState, task: &TaskRow, seen: &Observed) {
    let now = now_ms();
    let finished = seen.state == SUCCESS || seen.state == FAILURE;
    let change = TaskChange {
        state: seen.state.to_string(),
        progress: seen.progress.clone(),
        result: seen.result.clone(),
        raw: Some(seen.raw.clone()),
        fail_reason: seen.fail_reason.clone(),
        refunded: seen.state == FAILURE && task.charged_nano > 0,
        next_poll_at: now + next_poll_delay(now - task.created_at),
        started_at: (seen.state != SUBMITTED && seen.state != QUEUED).then_some(now),
        finished_at: finished.then_some(now),
        owes_callback: false,
    };
    settle(state, task, change).await;
}

/// Fails a task (timeout, lost upstream) and refunds it.
pub async fn fail(state: &AppState, task: &TaskRow, reason: &str) {
    let now = now_ms();
    let change = TaskChange {
        state: FAILURE.into(),
        progress: task.progress.clone(),
        fail_reason: Some(reason.into()),
        refunded: task.charged_nano > 0,
        next_poll_at: now,
        finished_at: Some(now),
        ..Default::default()
    };
    settle(state, task, change).await;
}

async fn settle(state: &AppState, task: &TaskRow, mut change: TaskChange) {
    let refund = change.refunded && !task.refunded;
    let moved = change.state != task.state || change.progress != task.progress;
    // owed in the same write as the change, so that a restart before the delivery resumes it
    change.owes_callback = moved && callback::hook_of(task).is_some();
    match state
        .store
        .update_task(&task.id, task.version, &change)
        .await
    {
        Ok(true) => {
            if change.owes_callback {
                callback::notify(state, &task.with_change(&change), task.version + 1);
            }
            if refund {
                state
                    .ledger
                    .refund(&task.id, task.user_id, task.key_id, task.charged_nano);
                // the task says "refunded" durably: so must the ledger
                state.ledger.flush().await;
                tracing::info!(task = %task.id, amount = task.charged_nano, "task failed; charge refunded");
            }
        }
        Ok(false) => {
            tracing::debug!(task = %task.id, "task changed under us; another poller applied it")
        }
        Err(e) => tracing::warn!(task = %task.id, error = %e, "updating a task failed"),
    }
}

/// The task in its family's own fetch format: what fetch routes answer and callbacks carry.
pub fn render(task: &TaskRow) -> serde_json::Value {
    match task.family.as_str() {
        "suno" => suno::dto(task),
        "midjourney" => midjourney::dto(task),
        "fal" => fal::dto(task),
        "udio" => udio::dto(task),
        "luma" => luma::dto(task),
        "kling" => kling::dto(task),
        _ => serde_json::json!({"id": task.id, "status": task.state, "progress": task.progress}),
    }
}

/// Only pushes the next poll time (nothing new was learned).
async fn reschedule(state: &AppState, task: &TaskRow, at: i64) {
    let change = TaskChange {
        state: task.state.clone(),
        progress: task.progress.clone(),
        refunded: task.refunded,
        next_poll_at: at,
        ..Default::default()
    };
    let _ = state
        .store
        .update_task(&task.id, task.version, &change)
        .await;
}

/// Runs the poller until the process stops: due tasks, grouped by channel, polled concurrently per
/// channel in the family's batch form.
pub async fn poll_forever(state: AppState) {
    callback::resume(&state).await;
    let interval = Duration::from_millis(state.config.tasks.poll_interval_ms.max(50));
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = poll_once(&state).await {
            tracing::warn!(error = %e, "task poll round failed");
        }
    }
}

pub async fn poll_once(state: &AppState) -> Result<(), crate::store::StoreError> {
    let now = now_ms();
    let due = state.store.due_tasks(now, 500).await?;
    let timeout_ms =
        i64::try_from(state.config.tasks.timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut by_channel: HashMap<i64, Vec<TaskRow>> = HashMap::new();
    for task in due {
        if now - task.created_at > timeout_ms {
            fail(state, &task, "the task timed out upstream").await;
            continue;
        }
        by_channel.entry(task.channel_id).or_default().push(task);
    }
    let catalog = state.catalog.load_full();
    let rounds = by_channel.into_iter().map(|(channel_id, tasks)| {
        let channel = catalog.channel(channel_id).cloned();
        poll_channel(state, channel, tasks)
    });
    futures_util::future::join_all(rounds).await;
    Ok(())
}

async fn poll_channel(state: &AppState, channel: Option<Arc<Channel>>, tasks: Vec<TaskRow>) {
    let Some(channel) = channel else {
        // the channel was deleted: its tasks can never be learned about again
        for task in &tasks {
            fail(
                state,
                task,
                "the channel that ran this task no longer exists",
            )
            .await;
        }
        return;
    };
    let outcome = match channel.kind {
        crate::catalog::ChannelKind::Suno => suno::poll(state, &channel, &tasks).await,
        crate::catalog::ChannelKind::Midjourney => midjourney::poll(state, &channel, &tasks).await,
        crate::catalog::ChannelKind::Fal => fal::poll(state, &channel, &tasks).await,
        crate::catalog::ChannelKind::Openai
        | crate::catalog::ChannelKind::Jimeng
        | crate::catalog::ChannelKind::Ideogram => return,
        crate::catalog::ChannelKind::Udio => udio::poll(state, &channel, &tasks).await,
        crate::catalog::ChannelKind::Luma => luma::poll(state, &channel, &tasks).await,
        crate::catalog::ChannelKind::Kling => kling::poll(state, &channel, &tasks).await,
    };
    let now = now_ms();
    match outcome {
        PollOutcome::Observed(seen) => {
            for task in &tasks {
                match seen.iter().find(|s| s.upstream_id == task.upstream_id) {
                    Some(observed) => apply(state, task, observed).await,
                    None => {
                        reschedule(state, task, now + next_poll_delay(now - task.created_at)).await
                    }
                }
            }
        }
        PollOutcome::RateLimited(seconds) => {
            let at = now + i64::try_from(seconds.max(1) * 1000).unwrap_or(60_000);
            for task in &tasks {
                reschedule(state, task, at).await;
            }
        }
        PollOutcome::Failed(reason) => {
            tracing::info!(channel = %channel.name, %reason, "polling tasks failed; retrying later");
            for task in &tasks {
                reschedule(
                    state,
                    task,
                    now + next_poll_delay(now - task.created_at).max(5_000),
                )
                .await;
            }
        }
    }
}
