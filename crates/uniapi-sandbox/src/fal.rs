//! The fal family: fal.ai's queue API (`docs/upstream-apis/fal.md`). `POST /fal-ai/{model path}`
//! queues a request; `GET /fal-ai/{app}/requests/{id}/status` walks `IN_QUEUE` → `IN_PROGRESS` →
//! `COMPLETED` over `task_ms`; `GET /fal-ai/{app}/requests/{id}` answers the model's output (images,
//! or a video for a model path naming video). Auth `Authorization: Key <key>`; errors `{"detail"}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{Phase, Timeline, has_word, uuid};

type Shared = Arc<SandboxState>;

const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const MEDIA_BASE: &str = "https://sandbox.invalid/fal";
/// Where a new request stands in the queue.
const QUEUE_POSITION: u64 = 2;
const STEPS: u64 = 28;
/// A 1×1 PNG, for `sync_mode` answers.
const PIXEL_PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

pub struct Task {
    pub id: String,
    pub model: String,
    timeline: Timeline,
    fails: bool,
    num_images: u64,
    sync_mode: bool,
    prompt: String,
    seed: u64,
}

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/fal-ai/{*path}", any(dispatch))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// fal's error body: `{"detail": message}`.
fn detail(status: StatusCode, _code: &str, message: &str) -> Response {
    (status, Json(json!({"detail": message}))).into_response()
}

/// `Authorization: Key <key>`.
fn key_scheme(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("key").then(|| key.trim())
        })
        .filter(|key| !key.is_empty())
}

static GATE: Family = Family {
    name: "fal",
    key: key_scheme,
    error: detail,
    max_body: MAX_BODY_BYTES,
};

fn app_of(model: &str) -> String {
    model.split('/').take(2).collect::<Vec<_>>().join("/")
}

async fn dispatch(
    State(state): State<Shared>,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    method: Method,
    headers: HeaderMap,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    let path = format!("fal-ai/{}", path.trim_matches('/'));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    if let Some((model, rest)) = path.split_once("/requests/") {
        let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(task) = state
            .fal
            .get(id)
            .filter(|t| app_of(&t.model) == app_of(model))
        else {
            return detail(StatusCode::NOT_FOUND, "", "Request not found");
        };
        let logs = query.iter().any(|(k, v)| k == "logs" && v != "0");
        return match (method.as_str(), what) {
            ("GET", "status") => Json(status(&task, &host, logs, Instant::now())).into_response(),
            ("GET", "") => result(&task, Instant::now()),
            ("PUT", "cancel") => (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "ALREADY_COMPLETED"})),
            )
                .into_response(),
            _ => detail(StatusCode::NOT_FOUND, "", "Not Found"),
        };
    }
    if method != Method::POST {
        return detail(StatusCode::METHOD_NOT_ALLOWED, "", "Method Not Allowed");
    }
    let Some(Value::Object(input)) = &call.body.json else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            "the body must be a JSON object",
        );
    };
    let Some(prompt) = input
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
    else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]})),
        )
            .into_response();
    };
    if has_word(prompt, "reject") {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            "rejected by the sandbox",
        );
    }
    let task = Task {
        id: uuid(call.seed),
        model: path.clone(),
        timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
        fails: has_word(prompt, "fail"),
        num_images: input
            .get("num_images")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 4),
        sync_mode: input.get("sync_mode").and_then(Value::as_bool) == Some(true),
        prompt: prompt.to_string(),
        seed: call.seed,
    };
    let task = state.fal.insert(task.id.clone(), task);
    let mut answer = urls(&task, &host);
    answer["status"] = json!("IN_QUEUE");
    answer["queue_position"] = json!(QUEUE_POSITION);
    answer["logs"] = Value::Null;
    answer["metrics"] = json!({});
    Json(answer).into_response()
}

fn urls(task: &Task, host: &str) -> Value {
    let base = format!("http://{host}/{}/requests/{}", app_of(&task.model), task.id);
    json!({
        "request_id": task.id,
        "response_url": base,
        "status_url": format!("{base}/status"),
        "cancel_url": format!("{base}/cancel"),
    })
}

fn status(task: &Task, host: &str, logs: bool, now: Instant) -> Value {
    let mut out = urls(task, host);
    let line = |message: String| json!({"timestamp": crate::tasks::iso8601(crate::state::unix_now_ms()), "level": "INFO", "source": "user", "message": message});
    let (word, lines) = match task.timeline.phase(now) {
        Phase::Submitted => {
            out["queue_position"] = json!(QUEUE_POSITION);
            ("IN_QUEUE", vec![])
        }
        Phase::InProgress(pct) => (
            "IN_PROGRESS",
            vec![line(format!("step {}/{STEPS}", pct * STEPS / 100))],
        ),
        Phase::Done => {
            out["metrics"] = json!({"inference_time": task.timeline.duration_ms as f64 / 1000.0});
            if task.fails {
                out["error"] = json!("sandbox failure on request");
                out["error_type"] = json!("runner_error");
            }
            ("COMPLETED", vec![line(format!("step {STEPS}/{STEPS}"))])
        }
    };
    out["status"] = json!(word);
    out["logs"] = if logs {
        Value::Array(lines)
    } else {
        Value::Null
    };
    if out.get("metrics").is_none() {
        out["metrics"] = json!({});
    }
    out
}

fn result(task: &Task, now: Instant) -> Response {
    if task.timeline.phase(now) != Phase::Done {
        return detail(StatusCode::BAD_REQUEST, "", "Request is still in progress");
    }
    if task.fails {
        return detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            "sandbox failure on request",
        );
    }
    let body = if task.model.contains("video") {
        json!({"video": {
            "url": format!("{MEDIA_BASE}/{}/out.mp4", task.id),
            "content_type": "video/mp4",
            "file_name": "out.mp4",
            "file_size": 1_234_567,
        }})
    } else {
        let images: Vec<Value> = (0..task.num_images)
            .map(|i| {
                let url = if task.sync_mode {
                    format!("data:image/png;base64,{PIXEL_PNG_B64}")
                } else {
                    format!("{MEDIA_BASE}/{}/{i}.png", task.id)
                };
                json!({"url": url, "width": 1024, "height": 1024, "content_type": "image/png"})
            })
            .collect();
        json!({
            "images": images,
            "seed": task.seed % 4_294_967_296,
            "prompt": task.prompt,
            "timings": {"inference": task.timeline.duration_ms as f64 / 1000.0},
            "has_nsfw_concepts": vec![false; images.len()],
        })
    };
    Json(body).into_response()
}
