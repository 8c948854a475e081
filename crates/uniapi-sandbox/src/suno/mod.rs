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

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::gate::Call;
use crate::state::SandboxState;

pub use task::Task;
use task::{Action, MusicAsk, TaskAsk};

use crate::gate::Family;
use crate::tasks::{Timeline, has_word};

type Shared = Arc<SandboxState>;

/// Largest accepted body: Suno requests are small JSON documents.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/suno/submit/fetch", post(fetch_batch))
        .route("/suno/submit/{action}", post(submit))
        .route("/suno/fetch", post(fetch_batch))
        .route("/suno/fetch/{id}", get(fetch_one))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// `{"code": code, "message": message, "data": null}` with `status`.
fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let code = if code == "injected" { "error" } else { code };
    (
        status,
        Json(json!({"code": code, "message": message, "data": null})),
    )
        .into_response()
}

/// Suno's gate: Bearer keys, Suno envelopes.
static GATE: Family = Family {
    name: "suno",
    key: crate::gate::bearer_key,
    error: envelope,
    max_body: MAX_BODY_BYTES,
};

fn invalid(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn success(data: Value) -> Response {
    Json(json!({"code": "success", "message": "", "data": data})).into_response()
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
        id: crate::tasks::uuid(call.seed),
        action,
        notify_hook: text(obj, "notify_hook").unwrap_or_default(),
        timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
        fails,
        seed: call.seed,
        ask,
    };
    let id = task.id.clone();
    state.suno.insert(id.clone(), task);
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
