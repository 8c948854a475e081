//! What every family's submit shares: idempotency, the hook check, the price, the reservation, the
//! attempt loop over the family's channels (or the parent task's channel), capturing when the upstream
//! accepts, releasing when it refuses, the durable task row and a request log. A family supplies only
//! how to call its upstream ([`Upstream`]) and renders the result (or the [`Refusal`]) in its own shape.
//!
//! [`charged_call`] is the same for synchronous families (Ideogram, Jimeng, Fal through the OpenAI
//! images route): reserve, call, capture on success, release on anything else.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::SUBMITTED;
use crate::billing::bill::admit_call;
use crate::billing::limits::Permit;
use crate::billing::{Units, cost, usd_string};
use crate::catalog::{ApiKey, Channel, ChannelKind, Price, UpstreamKey};
use crate::error::ApiError;
use crate::relay::{CallContext, order_candidates};
use crate::state::AppState;
use crate::store::logs::JsonText;
use crate::store::now_ms;
use crate::store::tasks::TaskRow;

/// Why a submit or a charged call did not go through; the family renders it in its envelope.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// A machine-readable code (`invalid_request`, `insufficient_quota`, `task_not_exist`, ...).
    pub code: String,
    pub message: String,
    /// Seconds after which a retry can pass (a key's rate limit): the answer's `Retry-After`.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found() -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, "task_not_exist", "task not found")
    }

    /// The refusal as a family's `error` renders a status, a code and a message, with the
    /// `Retry-After` it asks for.
    pub fn render(self, error: impl FnOnce(StatusCode, &str, String) -> Response) -> Response {
        with_retry_after(
            self.retry_after,
            error(self.status, &self.code, self.message),
        )
    }

    pub fn store() -> Refusal {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "the task store failed",
        )
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal {
            status: error.status,
            code: error.code.unwrap_or(error.kind).to_string(),
            message: error.message,
            retry_after: error.retry_after,
        }
    }
}

/// A family's answer to a refusal, with the `Retry-After` the refusal asks for.
pub fn with_retry_after(retry_after: Option<u64>, mut response: Response) -> Response {
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    response
}

/// The key's request limits for one call ([`admit_call`]), checked before anything is reserved or
/// sent; a refusal is logged as rejected.
pub fn admit_logged(
    state: &AppState,
    ctx: &CallContext,
    price_name: &str,
) -> Result<Permit, ApiError> {
    admit_call(state, &ctx.key).inspect_err(|error| {
        state.logs.record(ctx.log(
            Some(price_name),
            error.status,
            "rejected",
            Some(error.message.clone()),
        ));
    })
}

/// What the upstream said to a submit.
pub enum Answer {
    /// It took the task under this id.
    Accepted { upstream_id: String, raw: Value },
    /// It refused the request itself: nothing is charged and no other channel is tried.
    Refused(Refusal),
}

/// How a family talks to its upstream for one submit (or one synchronous call).
pub trait Upstream: Sync {
    /// The request to `channel` with `key`: URL, the family's upstream auth, the body.
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder;

    /// Reads a task upstream's answer (status below 500, not 429/401/403: those fail over).
    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let _ = (status, body);
        Answer::Refused(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream's answer was not understood",
        ))
    }
}

/// One task submit, already validated by the family.
pub struct Submission {
    pub family: &'static str,
    pub kind: ChannelKind,
    /// Stored action, in the family's vocabulary (`MUSIC`, `IMAGINE`, `text2video`, ...).
    pub action: String,
    /// Price names to look up, most specific first; the first one priced is charged.
    pub price_names: Vec<String>,
    /// A follow-up runs on the channel that made its parent.
    pub parent: Option<TaskRow>,
    /// Only channels passing this serve the submit (Midjourney modes).
    pub channel_filter: Option<fn(&Channel, &Value) -> bool>,
    pub idempotency: Option<String>,
    /// The client's callback URL: uniapi's to call, never sent upstream.
    pub hook: Option<String>,
    /// What the family wants kept with the task (the request, the mode, ...).
    pub request: Value,
}

/// The `Idempotency-Key` header.
pub fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The first price of `names` that is set, with its name.
pub fn find_price(state: &AppState, names: &[String]) -> Option<(String, Price)> {
    let catalog = state.catalog.load();
    names
        .iter()
        .find_map(|name| catalog.prices.get(name).map(|p| (name.clone(), p.clone())))
}

/// A task of the caller's user in `family`, or a not-found refusal (another user's task is not found).
pub async fn owned_task(
    state: &AppState,
    key: &ApiKey,
    family: &str,
    id: &str,
) -> Result<TaskRow, Refusal> {
    match state.store.task(id).await {
        Ok(Some(task)) if task.user_id == key.user_id && task.family == family => Ok(task),
        Ok(_) => Err(Refusal::not_found()),
        Err(_) => Err(Refusal::store()),
    }
}

/// Submits a task: returns the stored task (the first one again for a repeated idempotency key).
pub async fn submit(
    state: &AppState,
    key: &Arc<ApiKey>,
    sub: Submission,
    upstream: &dyn Upstream,
) -> Result<TaskRow, Refusal> {
    state.backlog_room().await;
    if let Some(idempotency) = &sub.idempotency {
        match state
            .store
            .task_by_idempotency(key.user_id, idempotency)
            .await
        {
            Ok(Some(first)) => return Ok(first),
            Ok(None) => {}
            Err(_) => return Err(Refusal::store()),
        }
    }
    if let Some(hook) = &sub.hook {
        // an internal target is refused; a host that does not resolve yet is tried at delivery
        if let Err(super::callback::Unfit::Refused(reason)) =
            super::callback::check_target(hook, state.config.tasks.allow_private_callbacks).await
        {
            return Err(Refusal::bad_request(format!(
                "the callback URL is refused: {reason}"
            )));
        }
    }
    let Some((price_name, price)) = find_price(state, &sub.price_names) else {
        let name = sub.price_names.last().cloned().unwrap_or_default();
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "price_missing",
            format!("`{name}` has no price set; ask the operator"),
        ));
    };
    let candidates: Vec<Arc<Channel>> = {
        let catalog = state.catalog.load();
        match &sub.parent {
            Some(p) => catalog.channel(p.channel_id).cloned().into_iter().collect(),
            None => order_candidates(catalog.channels_of_kind(sub.kind), now_ms())
                .into_iter()
                .filter(|c| sub.channel_filter.is_none_or(|f| f(c, &sub.request)))
                .collect(),
        }
    };
    if candidates.is_empty() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_available_channel",
            format!("no {} channel is available for this request", sub.family),
        ));
    }
    let ctx = CallContext::new(
        key.clone(),
        &axum::http::Method::POST,
        &format!("{}:{}", sub.family, sub.action),
    );
    let _permit = admit_logged(state, &ctx, &price_name)?;
    let task_id = format!("task_{}", uuid::Uuid::now_v7().simple());
    let (amount, _) = cost(
        &price,
        &Units {
            calls: 1,
            ..Default::default()
        },
    );
    let Ok(reservation) = state.ledger.reserve(&task_id, key.user_id, key.id, amount) else {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            format!(
                "your balance or this key's cap cannot cover this task (${})",
                usd_string(amount)
            ),
        ));
    };
    let mut last_failure = String::from("no channel answered");
    for channel in candidates.iter().take(state.config.routing.max_attempts) {
        let Some(upstream_key) = channel.pick_key() else {
            continue;
        };
        let (status, body) = match send(state, upstream.request(state, channel, upstream_key)).await
        {
            Ok(answer) => answer,
            Err(reason) => {
                channel
                    .health
                    .record_failure(&state.config.routing, now_ms());
                last_failure = reason;
                continue;
            }
        };
        if fails_over(status) {
            channel
                .health
                .record_failure(&state.config.routing, now_ms());
            last_failure = format!("the upstream answered {status}");
            continue;
        }
        channel.health.record_success();
        let (upstream_id, raw) = match upstream.answer(status, &body) {
            Answer::Accepted { upstream_id, raw } => (upstream_id, raw),
            Answer::Refused(refusal) => {
                // the upstream refused the task: it costs nothing
                reservation.release();
                let mut log = ctx.log(
                    Some(&price_name),
                    refusal.status,
                    "failed",
                    Some(refusal.message.clone()),
                );
                log.channel_id = Some(channel.id);
                state.logs.record(log);
                return Err(refusal);
            }
        };
        let now = now_ms();
        let task = TaskRow {
            id: task_id.clone(),
            user_id: key.user_id,
            key_id: key.id,
            family: sub.family.into(),
            action: sub.action.clone(),
            price_name: price_name.clone(),
            channel_id: channel.id,
            upstream_id,
            state: SUBMITTED.into(),
            progress: "0%".into(),
            result: None,
            raw: Some(raw),
            fail_reason: None,
            charged_nano: amount,
            refunded: false,
            idempotency_key: sub.idempotency.clone(),
            request: Some(json!({"body": sub.request, "notify_hook": sub.hook})),
            version: 0,
            polls: 0,
            next_poll_at: now + 1_000,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
        };
        return match state.store.insert_task(&task).await {
            Ok(()) => {
                reservation.capture(amount, 0);
                // the task row is durable now; its charge must be too before the client hears of it
                // (a refund of a charge the write-behind lost in a crash would pay the user)
                state.ledger.flush().await;
                let mut log = ctx.log(Some(&price_name), StatusCode::OK, "complete", None);
                log.channel_id = Some(channel.id);
                log.cost_nano = amount;
                log.cost_detail = JsonText::of(&json!({"task": task.id, "price": price_name}));
                state.logs.record(log);
                Ok(task)
            }
            Err(crate::store::StoreError::Conflict(_)) => {
                // a concurrent submit with the same idempotency key won: answer with its task, charge once
                reservation.release();
                match state
                    .store
                    .task_by_idempotency(
                        key.user_id,
                        sub.idempotency.as_deref().unwrap_or_default(),
                    )
                    .await
                {
                    Ok(Some(first)) => Ok(first),
                    _ => Err(Refusal::new(
                        StatusCode::CONFLICT,
                        "duplicate",
                        "a task with this idempotency key exists",
                    )),
                }
            }
            Err(e) => {
                reservation.release();
                tracing::error!(error = %e, task = %task_id, "storing an accepted task failed");
                Err(Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the task could not be stored",
                ))
            }
        };
    }
    reservation.release();
    let mut log = ctx.log(
        Some(&price_name),
        StatusCode::BAD_GATEWAY,
        "failed",
        Some(last_failure.clone()),
    );
    log.latency_ms = log.latency_ms.max(1);
    state.logs.record(log);
    Err(Refusal::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!(
            "no {} channel accepted the task: {last_failure}",
            sub.family
        ),
    ))
}

/// Statuses after which the next channel is tried (the request itself was not at fault).
fn fails_over(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
}

async fn send(
    state: &AppState,
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, Bytes), String> {
    let sent = tokio::time::timeout(state.upstream.first_byte_timeout, request.send()).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(_)) | Err(_) => return Err("the upstream did not answer".into()),
    };
    let status = response.status();
    match response.bytes().await {
        Ok(body) => Ok((status, body)),
        Err(_) => Err("the upstream's answer was cut".into()),
    }
}

/// A synchronous upstream call charged `units` of the first priced name: the upstream's answer
/// (status, content type, body) on success; a client error (4xx but 429/401/403) is passed back
/// uncharged as `Ok` too, so the family can relay the provider's own message.
pub struct Charged {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub cost_nano: i64,
    pub channel_id: i64,
}

pub struct ChargedCall<'a> {
    pub kind: ChannelKind,
    /// Only channels passing this are tried (for example: the channel serves the model).
    pub channel_filter: &'a (dyn Fn(&Channel) -> bool + Sync),
    pub price_names: Vec<String>,
    pub units: Units,
    /// For the request log: the method and the client's path.
    pub path: &'a str,
}

pub async fn charged_call(
    state: &AppState,
    key: &Arc<ApiKey>,
    call: ChargedCall<'_>,
    upstream: &dyn Upstream,
) -> Result<Charged, Refusal> {
    state.backlog_room().await;
    let Some((price_name, price)) = find_price(state, &call.price_names) else {
        let name = call.price_names.last().cloned().unwrap_or_default();
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "price_missing",
            format!("`{name}` has no price set; ask the operator"),
        ));
    };
    let candidates: Vec<Arc<Channel>> = {
        let catalog = state.catalog.load();
        order_candidates(catalog.channels_of_kind(call.kind), now_ms())
            .into_iter()
            .filter(|c| (call.channel_filter)(c))
            .collect()
    };
    if candidates.is_empty() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_available_channel",
            format!(
                "no {} channel is available for this request",
                call.kind.as_str()
            ),
        ));
    }
    let ctx = CallContext::new(key.clone(), &axum::http::Method::POST, call.path);
    let _permit = admit_logged(state, &ctx, &price_name)?;
    let (amount, _) = cost(&price, &call.units);
    let Ok(reservation) = state.ledger.reserve(&ctx.id, key.user_id, key.id, amount) else {
        let error = Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            format!(
                "your balance or this key's cap cannot cover this request (${})",
                usd_string(amount)
            ),
        );
        state.logs.record(ctx.log(
            Some(&price_name),
            error.status,
            "rejected",
            Some(error.message.clone()),
        ));
        return Err(error);
    };
    let mut last_failure = String::from("no channel answered");
    for channel in candidates.iter().take(state.config.routing.max_attempts) {
        let Some(upstream_key) = channel.pick_key() else {
            continue;
        };
        let sent = tokio::time::timeout(
            state.upstream.first_byte_timeout,
            upstream.request(state, channel, upstream_key).send(),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(_)) | Err(_) => {
                channel
                    .health
                    .record_failure(&state.config.routing, now_ms());
                last_failure = "the upstream did not answer".into();
                continue;
            }
        };
        let status = response.status();
        if fails_over(status) {
            channel
                .health
                .record_failure(&state.config.routing, now_ms());
            last_failure = format!("the upstream answered {status}");
            continue;
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Ok(body) = response.bytes().await else {
            channel
                .health
                .record_failure(&state.config.routing, now_ms());
            last_failure = "the upstream's answer was cut".into();
            continue;
        };
        channel.health.record_success();
        let mut log = ctx.log(Some(&price_name), status, "complete", None);
        log.channel_id = Some(channel.id);
        let cost_nano = if status.is_success() {
            reservation.capture(amount, 0);
            log.cost_nano = amount;
            log.cost_detail = JsonText::of(&json!({"units": call.units, "price": price_name}));
            amount
        } else {
            reservation.release();
            log.outcome = "failed".into();
            0
        };
        state.logs.record(log);
        return Ok(Charged {
            status,
            content_type,
            body,
            cost_nano,
            channel_id: channel.id,
        });
    }
    reservation.release();
    let mut log = ctx.log(
        Some(&price_name),
        StatusCode::BAD_GATEWAY,
        "failed",
        Some(last_failure.clone()),
    );
    log.latency_ms = log.latency_ms.max(1);
    state.logs.record(log);
    Err(Refusal::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("no {} channel answered: {last_failure}", call.kind.as_str()),
    ))
}
