//! The Suno family: the "Suno-API relay" task protocol a gateway's Suno channel speaks upstream
//! (`docs/upstream-apis/suno.md`). Submit returns a task id; fetch renders each task from the
//! time elapsed since its submission (`SUBMITTED` → `IN_PROGRESS` → `SUCCESS`/`FAILURE`).
//!
//! Every call passes `gate` (journal, bearer key, fault rules, latency), which answers in the Suno
//! envelope `{"code","message","data"}` instead of OpenAI error objects.

mod task;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::body::ParsedBody;
use crate::fault::{CallPlan, FaultRule, HeaderKnobs};
use crate::gate::Call;
use crate::journal::JournalEntry;
use crate::state::{SandboxState, unix_now, unix_now_ms};

pub use task::TaskStore;
use task::{Action, MusicAsk, Task, TaskAsk};

type Shared = Arc<SandboxState>;

/// Largest accepted body: Suno requests are small JSON documents.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/suno/submit/fetch", post(fetch_batch))
        .route("/suno/submit/{action}", post(submit))
        .route("/suno/fetch", post(fetch_batch))
        .route("/suno/fetch/{id}", get(fetch_one))
        .route_layer(axum::middleware::from_fn_with_state(state, gate))
}

/// `{"code": code, "message": message, "data": null}` with `status`.
fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "data": null})),
    )
        .into_response()
}

fn invalid(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn success(data: Value) -> Response {
    Json(json!({"code": "success", "message": "", "data": data})).into_response()
}

async fn gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return envelope(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "request body too large",
        );
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = ParsedBody::parse(content_type, bytes).await;
    let path = parts.uri.path();
    tracing::debug!(method = %parts.method, path, bytes = body.bytes.len(), "sandbox suno call");
    state.journal.record(JournalEntry::new(&parts, &body));

    let authorized = crate::gate::bearer_key(&parts.headers)
        .is_some_and(|key| state.keys.iter().any(|k| k == key));
    let knobs = HeaderKnobs::parse(&parts.headers);
    // Fault rules are only consumed by calls that would otherwise have been served.
    let rule = if authorized && knobs.is_ok() {
        state.faults.take(path)
    } else {
        None
    };
    let plan = CallPlan::resolve(
        &state.live,
        knobs.as_ref().unwrap_or(&HeaderKnobs::default()),
        rule.as_ref(),
    );
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    if !authorized {
        return envelope(StatusCode::UNAUTHORIZED, "unauthorized", "invalid key");
    }
    let Ok(knobs) = knobs else {
        return invalid("invalid x-sandbox header");
    };
    if let Some(response) = injected(rule.as_ref(), &knobs) {
        return response;
    }
    let call = Call {
        seed: state.call_seed(&body.bytes),
        created: unix_now(),
        body,
        plan,
    };
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(Arc::new(call));
    next.run(request).await
}

/// The error a fault rule (first) or the `x-sandbox-fail-status` header asks for, in the Suno
/// envelope unless the rule carries its own `body`.
fn injected(rule: Option<&FaultRule>, knobs: &HeaderKnobs) -> Option<Response> {
    let from_rule = rule.and_then(|r| {
        let status = r.status.and_then(|s| StatusCode::from_u16(s).ok())?;
        Some((status, r.retry_after, r.body.clone()))
    });
    let (status, retry_after, body) =
        from_rule.or_else(|| knobs.fail_status.map(|s| (s, knobs.retry_after, None)))?;
    let body =
        body.unwrap_or_else(|| json!({"code": "error", "message": "injected", "data": null}));
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Some(response)
}

/// `POST /suno/submit/{action}`: `music` or `lyrics` in any case (`fetch` is the batch fetch).
async fn submit(
    State(state): State<Shared>,
    Path(action): Path<String>,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    let action = match action.to_ascii_lowercase().as_str() {
        "music" => Action::Music,
        "lyrics" => Action::Lyrics,
        "fetch" => return batch(&state, &call),
        _ => return invalid("invalid_action"),
    };
    let Some(Value::Object(obj)) = &call.body.json else {
        return invalid("invalid_request_body");
    };
    let ask = match action {
        Action::Lyrics => match text(obj, "prompt") {
            Some(prompt) => TaskAsk::Lyrics { prompt },
            None => return invalid("prompt_empty"),
        },
        Action::Music => {
            let music = MusicAsk {
                prompt: text(obj, "prompt"),
                gpt_description_prompt: text(obj, "gpt_description_prompt"),
                title: text(obj, "title"),
                tags: text(obj, "tags"),
                make_instrumental: obj
                    .get("make_instrumental")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                mv: text(obj, "mv").unwrap_or_else(|| "chirp-v3-0".to_owned()),
            };
            if music.prompt.is_none() && music.gpt_description_prompt.is_none() {
                return invalid("prompt_empty");
            }
            if text(obj, "continue_clip_id").is_some() && text(obj, "task_id").is_none() {
                return invalid("task id is empty");
            }
            TaskAsk::Music(music)
        }
    };
    let prompts = ask.prompts();
    if prompts.iter().any(|p| has_word(p, "reject")) {
        return envelope(StatusCode::OK, "error", "upstream busy");
    }
    let fails = prompts.iter().any(|p| has_word(p, "fail"));
    let task = Task {
        id: task::uuid(call.seed),
        action,
        notify_hook: text(obj, "notify_hook").unwrap_or_default(),
        submit_ms: unix_now_ms(),
        started: Instant::now(),
        duration_ms: state.live.task_ms.load(Ordering::Relaxed),
        fails,
        seed: call.seed,
        ask,
    };
    let id = task.id.clone();
    state.suno.insert(task);
    success(Value::String(id))
}

/// `POST /suno/fetch` and `POST /suno/submit/fetch`.
async fn fetch_batch(
    State(state): State<Shared>,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    batch(&state, &call)
}

fn batch(state: &SandboxState, call: &Call) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return invalid("invalid_request_body");
    };
    let Some(ids) = obj.get("ids").and_then(Value::as_array) else {
        return invalid("ids_empty");
    };
    let action = text(obj, "action");
    let now = Instant::now();
    let tasks: Vec<Value> = ids
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|id| state.suno.get(id))
        .filter(|t| {
            action
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(t.action.as_str()))
        })
        .map(|t| t.dto(now))
        .collect();
    success(Value::Array(tasks))
}

/// `GET /suno/fetch/{id}`.
async fn fetch_one(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.suno.get(&id) {
        Some(task) => success(task.dto(Instant::now())),
        None => envelope(StatusCode::NOT_FOUND, "task_not_exist", "task not found"),
    }
}

/// A non-empty string field.
fn text(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// Whether `text` contains `word` as a whole word (ASCII case-insensitive).
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_whole_words_only() {
        assert!(has_word("please FAIL, now", "fail"));
        assert!(has_word("fail", "fail"));
        assert!(!has_word("failure is fine", "fail"));
        assert!(!has_word("rejected", "reject"));
    }
}
