//! Udio (the relay protocol of `docs/upstream-apis/udio.md`): `POST /udio/submit/music` and
//! `GET /udio/fetch/{id}`, answered in the Suno-style `{"code","message","data"}` envelope. Submits are
//! charged `udio_music` (or `udio_music:<model_type>`), fetches answer from uniapi's own store, and the
//! poller fetches each due task upstream (the protocol has no batch fetch), a few at a time.

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

const FAMILY: &str = "udio";
/// The action Udio's fetch reports for a music task.
const ACTION: &str = "udio-generate";
/// Tasks of one channel fetched upstream at the same time.
const POLL_CONCURRENCY: usize = 4;
const LYRICS_TYPES: &[&str] = &["generate", "user", "instrumental"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/udio/submit/{action}", post(submit))
        .route("/udio/fetch/{id}", get(fetch_one))
}

/// Udio's error envelope (the Suno one).
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into(), "data": null})),
    )
        .into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn success(data: Value) -> Response {
    axum::Json(json!({"code": "success", "message": "", "data": data})).into_response()
}

fn refused(refusal: Refusal) -> Response {
    refusal.render(error)
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

/// Checks `gen_params`: what the upstream would refuse is answered here, before any charge.
fn check_params(params: &Value) -> Result<(), String> {
    if !params.is_object() {
        return Err("gen_params must be an object".into());
    }
    if text_field(params, "prompt").is_none() {
        return Err("gen_params.prompt is required".into());
    }
    if let Some(kind) = params.get("lyrics_type").filter(|v| !v.is_null()) {
        match kind.as_str() {
            Some(k) if LYRICS_TYPES.contains(&k) => {}
            _ => {
                return Err(format!(
                    "gen_params.lyrics_type must be one of {}",
                    LYRICS_TYPES.join(", ")
                ));
            }
        }
    }
    if params.get("lyrics_type").and_then(Value::as_str) == Some("user")
        && text_field(params, "lyrics").is_none()
    {
        return Err("gen_params.lyrics is required when lyrics_type is `user`".into());
    }
    if let Some(model) = params.get("model_type").filter(|v| !v.is_null())
        && model.as_str().is_none_or(|m| m.trim().is_empty())
    {
        return Err("gen_params.model_type must be a non-empty string".into());
    }
    for name in [
        "song_section_start",
        "song_section_end",
        "lyrics_placement_start",
        "lyrics_placement_end",
        "prompt_strength",
        "clarity_strength",
        "lyrics_strength",
        "generation_quality",
    ] {
        if let Some(v) = params.get(name).filter(|v| !v.is_null()) {
            match v.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => {}
                _ => return Err(format!("gen_params.{name} must be a number from 0 to 1")),
            }
        }
    }
    Ok(())
}

/// How the Udio upstream takes a submit: the same protocol, Bearer.
struct UdioSubmit {
    payload: String,
}

impl Upstream for UdioSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!("{}/udio/submit/music", channel.base_url))
            .bearer_auth(&key.secret)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match (answer["code"].as_str(), answer["data"].as_str()) {
            (Some("success"), Some(id)) if status.is_success() && !id.is_empty() => {
                Answer::Accepted {
                    upstream_id: id.to_string(),
                    raw: answer.clone(),
                }
            }
            _ => Answer::Refused(Refusal::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                answer["code"].as_str().unwrap_or("upstream_error"),
                answer["message"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("the upstream refused the task"),
            )),
        }
    }
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
    if !action.eq_ignore_ascii_case("music") {
        return invalid("invalid_action");
    }
    let idempotency = idempotency_key(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, "invalid_request", e.message),
    };
    let mut body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid("the body must be a JSON object"),
    };
    let Some(params) = body.get("gen_params") else {
        return invalid("gen_params is required");
    };
    if let Err(message) = check_params(params) {
        return invalid(message);
    }
    // the client's hook is uniapi's to call, never the upstream's (top level or in gen_params)
    let nested = body["gen_params"]
        .as_object_mut()
        .and_then(|o| o.remove("notify_hook"));
    let top = body.as_object_mut().and_then(|o| o.remove("notify_hook"));
    let hook = [top, nested]
        .into_iter()
        .flatten()
        .find_map(|h| h.as_str().filter(|h| !h.is_empty()).map(str::to_string));
    let model = text_field(&body["gen_params"], "model_type")
        .unwrap_or("")
        .to_string();
    let price_name = "udio_music".to_string();
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Udio,
        action: ACTION.into(),
        price_names: vec![format!("{price_name}:{model}"), price_name],
        parent: None,
        channel_filter: None,
        idempotency,
        hook,
        request: body.clone(),
    };
    let upstream = UdioSubmit {
        payload: body.to_string(),
    };
    match super::submit::submit(&state, &key, submission, &upstream).await {
        Ok(task) => success(Value::String(task.id)),
        Err(refusal) => refused(refusal),
    }
}

/// The task in Udio's fetch shape, from uniapi's store (`songs` directly under `data`).
pub fn dto(task: &TaskRow) -> Value {
    let secs = |ms: Option<i64>| ms.map_or(0, |m| m / 1000);
    json!({
        "task_id": task.id,
        "action": task.action,
        "status": task.state,
        "fail_reason": task.fail_reason.clone().unwrap_or_default(),
        "submit_time": task.created_at / 1000,
        "start_time": secs(task.started_at),
        "finish_time": secs(task.finished_at),
        "progress": task.progress,
        "songs": task.result.clone().unwrap_or_else(|| json!([])),
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

fn canonical(status: &str) -> &'static str {
    match status {
        "SUCCESS" => SUCCESS,
        "FAILURE" => FAILURE,
        "QUEUED" => QUEUED,
        "NOT_START" | "SUBMITTED" => SUBMITTED,
        _ => IN_PROGRESS,
    }
}

/// Reads the fetch answer's task: `songs` under `data` (UniAPI's shape) or `data.data` (a relay's).
fn observed(upstream_id: &str, task: &Value) -> Observed {
    let songs = task
        .get("songs")
        .or_else(|| task.get("data").and_then(|d| d.get("songs")))
        .filter(|s| s.is_array())
        .cloned();
    let status = task["status"].as_str().unwrap_or("");
    Observed {
        upstream_id: upstream_id.to_string(),
        state: canonical(status),
        progress: task["progress"].as_str().unwrap_or("0%").to_string(),
        result: songs,
        raw: task.clone(),
        fail_reason: task["fail_reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_string),
    }
}

/// Owns what it uses: the poller runs these futures concurrently inside a spawned task.
async fn fetch_upstream(
    state: AppState,
    base_url: String,
    secret: String,
    id: String,
) -> Result<Observed, PollOutcome> {
    let request = state
        .upstream
        .client
        .get(format!("{base_url}/udio/fetch/{id}"))
        .bearer_auth(&secret);
    let answer = match super::poll_json(request, super::POLL_TIMEOUT).await {
        Ok(answer) => answer,
        Err(outcome) => return Err(outcome),
    };
    if !answer["data"].is_object() {
        return Err(PollOutcome::Failed(
            "the upstream's fetch answer has no data".into(),
        ));
    }
    Ok(observed(&id, &answer["data"]))
}

/// One fetch per due task of a channel (Udio has no batch fetch), at most `POLL_CONCURRENCY` at once.
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let Some(key) = channel.pick_key() else {
        return PollOutcome::Failed("no enabled upstream key".into());
    };
    super::poll_each(tasks, POLL_CONCURRENCY, |task| {
        fetch_upstream(
            state.clone(),
            channel.base_url.clone(),
            key.secret.clone(),
            task.upstream_id.clone(),
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        assert!(check_params(&json!({"prompt": "jazz"})).is_ok());
        assert!(check_params(&json!({"prompt": " "})).is_err());
        assert!(check_params(&json!("jazz")).is_err());
        assert!(check_params(&json!({"prompt": "jazz", "lyrics_type": "sung"})).is_err());
        assert!(check_params(&json!({"prompt": "jazz", "lyrics_type": "user"})).is_err());
        assert!(check_params(&json!({"prompt": "jazz", "prompt_strength": 2})).is_err());
        assert!(check_params(&json!({"prompt": "jazz", "model_type": ""})).is_err());
    }

    #[test]
    fn both_fetch_shapes_are_read() {
        let flat = json!({"status": "SUCCESS", "progress": "100%", "songs": [{"id": "a"}]});
        let nested = json!({"status": "IN_PROGRESS", "data": {"songs": [{"id": "b"}]}});
        assert_eq!(observed("u", &flat).result, Some(json!([{"id": "a"}])));
        assert_eq!(observed("u", &flat).state, SUCCESS);
        assert_eq!(observed("u", &nested).result, Some(json!([{"id": "b"}])));
        assert_eq!(observed("u", &nested).state, IN_PROGRESS);
    }
}
