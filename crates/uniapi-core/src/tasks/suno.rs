//! Suno (the Suno-API relay protocol): `/suno/submit/{music|lyrics}`, `/suno/fetch/{id}` and the batch
//! fetch, answered in Suno's `{"code","message","data"}` envelope. Submits are charged `suno_<action>`
//! (or `suno_<action>:<mv>`), fetches answer from uniapi's own store, the poller batch-fetches upstream.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::submit::{Answer, Refusal, Submission, Upstream, idempotency_key, owned_task};
use super::{FAILURE, IN_PROGRESS, Observed, PollOutcome, QUEUED, SUBMITTED, SUCCESS};
use crate::auth;
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::read_limited;
use crate::state::AppState;
use crate::store::tasks::TaskRow;

const FAMILY: &str = "suno";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/suno/submit/{action}", post(submit))
        .route("/suno/fetch", post(fetch_many))
        .route("/suno/fetch/{id}", get(fetch_one))
}

/// Suno's error envelope.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into(), "data": null})),
    )
        .into_response()
}

fn success(data: Value) -> Response {
    axum::Json(json!({"code": "success", "message": "", "data": data})).into_response()
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<ApiKey>, Box<Response>> {
    auth::authenticate(&state.catalog.load(), auth::bearer(headers))
        .map_err(|e| Box::new(error(e.status, e.code.unwrap_or("unauthorized"), e.message)))
}

fn text_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// How the Suno upstream takes a submit: the relay protocol, Bearer.
struct SunoSubmit {
    action: &'static str,
    payload: String,
}

impl Upstream for SunoSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!(
                "{}/suno/submit/{}",
                channel.base_url,
                self.action.to_ascii_lowercase()
            ))
            .bearer_auth(&key.secret)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, _status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match (answer["code"].as_str(), answer["data"].as_str()) {
            (Some("success"), Some(id)) if !id.is_empty() => Answer::Accepted {
                upstream_id: id.to_string(),
                raw: answer.clone(),
            },
            _ => Answer::Refused(Refusal::new(
                StatusCode::BAD_REQUEST,
                answer["code"].as_str().unwrap_or("upstream_error"),
                answer["message"]
                    .as_str()
                    .unwrap_or("the upstream refused the task"),
            )),
        }
    }
}

fn refused(refusal: Refusal) -> Response {
    refusal.render(error)
}

async fn submit(
    State(state): State<AppState>,
    Path(action): Path<String>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let action = match action.to_ascii_lowercase().as_str() {
        "music" => "MUSIC",
        "lyrics" => "LYRICS",
        "fetch" => return fetch_many(State(state), request).await,
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request", "invalid_action"),
    };
    let idempotency = idempotency_key(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, "invalid_request", e.message),
    };
    let mut body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a JSON object",
            );
        }
    };
    if action == "LYRICS" && text_field(&body, "prompt").is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "prompt_empty");
    }
    if action == "MUSIC"
        && text_field(&body, "prompt").is_none()
        && text_field(&body, "gpt_description_prompt").is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "prompt or gpt_description_prompt is required",
        );
    }
    // a continuation runs on the channel that made its parent, with the parent's upstream id
    let mut parent: Option<TaskRow> = None;
    if body.get("continue_clip_id").is_some_and(|v| !v.is_null())
        || text_field(&body, "task_id").is_some()
    {
        let Some(parent_id) = text_field(&body, "task_id").map(str::to_string) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "task id is empty",
            );
        };
        match owned_task(&state, &key, FAMILY, &parent_id).await {
            Ok(task) => {
                body["task_id"] = Value::String(task.upstream_id.clone());
                parent = Some(task);
            }
            Err(refusal) => return refused(refusal),
        }
    }
    // the client's hook is uniapi's to call, never the upstream's
    let hook = body
        .as_object_mut()
        .and_then(|o| o.remove("notify_hook"))
        .and_then(|h| h.as_str().map(str::to_string))
        .filter(|h| !h.is_empty());
    let model = text_field(&body, "mv").unwrap_or("").to_string();
    let price_name = format!("suno_{}", action.to_ascii_lowercase());
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Suno,
        action: action.into(),
        price_names: vec![format!("{price_name}:{model}"), price_name],
        parent,
        channel_filter: None,
        idempotency,
        hook,
        request: body.clone(),
    };
    let upstream = SunoSubmit {
        action,
        payload: body.to_string(),
    };
    match super::submit::submit(&state, &key, submission, &upstream).await {
        Ok(task) => success(Value::String(task.id)),
        Err(refusal) => refused(refusal),
    }
}

/// The task in Suno's TaskDto shape, from uniapi's store.
pub fn dto(task: &TaskRow) -> Value {
    let secs = |ms: Option<i64>| ms.map_or(0, |m| m / 1000);
    let empty = if task.action == "MUSIC" {
        json!([])
    } else {
        Value::Null
    };
    json!({
        "task_id": task.id,
        "notify_hook": "",
        "action": task.action,
        "status": task.state,
        "fail_reason": task.fail_reason.clone().unwrap_or_default(),
        "submit_time": task.created_at / 1000,
        "start_time": secs(task.started_at),
        "finish_time": secs(task.finished_at),
        "progress": task.progress,
        "data": task.result.clone().unwrap_or(empty),
    })
}

async fn fetch_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = match caller(&state, &headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    match owned_task(&state, &key, FAMILY, &id).await {
        Ok(task) => success(dto(&task)),
        Err(refusal) => refused(refusal),
    }
}

async fn fetch_many(State(state): State<AppState>, request: Request) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, "invalid_request", e.message),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(ids) = body["ids"].as_array() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`ids` must be an array of task ids",
        );
    };
    let action = body["action"].as_str().map(str::to_ascii_uppercase);
    let mut out = Vec::new();
    for id in ids.iter().filter_map(Value::as_str).take(1000) {
        if let Ok(Some(task)) = state.store.task(id).await
            && task.user_id == key.user_id
            && task.family == FAMILY
            && action.as_deref().is_none_or(|a| a == task.action)
        {
            out.push(dto(&task));
        }
    }
    success(Value::Array(out))
}

fn canonical(status: &str) -> &'static str {
    match status {
        "SUCCESS" => SUCCESS,
        "FAILURE" => FAILURE,
        "QUEUED" => QUEUED,
        "NOT_START" | "SUBMITTED" => SUBMITTED,
        _ => IN_PROGRESS,
    }
}

/// One batch fetch for every due task of a channel.
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let Some(key) = channel.pick_key() else {
        return PollOutcome::Failed("no enabled upstream key".into());
    };
    let ids: Vec<&str> = tasks.iter().map(|t| t.upstream_id.as_str()).collect();
    let request = state
        .upstream
        .client
        .post(format!("{}/suno/fetch", channel.base_url))
        .bearer_auth(&key.secret)
        .header(header::CONTENT_TYPE, "application/json")
        .body(json!({"ids": ids}).to_string());
    let answer = match super::poll_json(request, super::POLL_TIMEOUT).await {
        Ok(answer) => answer,
        Err(outcome) => return outcome,
    };
    let Some(items) = answer["data"].as_array() else {
        return PollOutcome::Failed("the upstream's fetch answer has no data".into());
    };
    PollOutcome::Observed(
        items
            .iter()
            .filter_map(|item| {
                let upstream_id = item["task_id"].as_str()?.to_string();
                let state = canonical(item["status"].as_str().unwrap_or(""));
                Some(Observed {
                    upstream_id,
                    state,
                    progress: item["progress"].as_str().unwrap_or("0%").to_string(),
                    result: item.get("data").filter(|d| !d.is_null()).cloned(),
                    raw: item.clone(),
                    fail_reason: item["fail_reason"]
                        .as_str()
                        .filter(|r| !r.is_empty())
                        .map(str::to_string),
                })
            })
            .collect(),
    )
}
