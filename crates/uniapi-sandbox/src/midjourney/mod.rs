//! The Midjourney family: the midjourney-proxy(-plus) protocol a gateway's Midjourney channel speaks
//! upstream (`docs/upstream-apis/midjourney.md`): `/mj/submit/*`, `/mj/insight-face/swap`, the
//! synchronous upload, `/mj/task/{id}/fetch`, `/mj/task/list-by-condition`, `/mj/task/{id}/image-seed`.
//!
//! Every call passes the family gate with the key in `mj-api-secret` (a wrong key: 401, empty body,
//! as the open-source proxy does). Answers are the proxy's `{"code","description","properties","result"}`
//! at HTTP 200, errors included (code 4 bad request, 3 unknown task, 24 banned prompt). A prompt with
//! the word `reject` is banned (code 24); with `fail` the task ends in `FAILURE`.

mod task;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{Timeline, has_word};

use task::Run;
pub use task::Task;

type Shared = Arc<SandboxState>;

/// Largest accepted body: requests carry base64 images.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/mj/submit/upload-discord-images", post(upload))
        .route("/mj/submit/{action}", post(submit))
        .route("/mj/insight-face/swap", post(swap_face))
        .route("/mj/task/list-by-condition", post(list))
        .route("/mj/task/{id}/fetch", get(fetch))
        .route("/mj/task/{id}/image-seed", get(image_seed))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// The proxy's error answer: 401 has an empty body; anything else the envelope (`injected` → 9).
fn gate_error(status: StatusCode, code: &str, message: &str) -> Response {
    if status == StatusCode::UNAUTHORIZED {
        return status.into_response();
    }
    let code = if code == "injected" { 9 } else { 4 };
    (
        status,
        Json(json!({"code": code, "description": message, "properties": {}, "result": null})),
    )
        .into_response()
}

fn secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("mj-api-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

static GATE: Family = Family {
    name: "midjourney",
    key: secret,
    error: gate_error,
    max_body: MAX_BODY_BYTES,
};

fn answer(code: i64, description: &str, properties: Value, result: Value) -> Response {
    Json(json!({"code": code, "description": description, "properties": properties, "result": result}))
        .into_response()
}

fn refuse(code: i64, description: &str) -> Response {
    answer(code, description, json!({}), Value::Null)
}

fn submitted(id: &str) -> Response {
    answer(
        1,
        "Submit success",
        json!({"discordChannelId": "1300842676874379336", "discordInstanceId": "1572398367386955776"}),
        Value::String(id.to_owned()),
    )
}

/// A non-empty string field.
fn text(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A `data:image/...;base64,...` URL.
fn is_image(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.split_once(',').is_some_and(|(head, data)| {
            head.starts_with("data:image/") && head.ends_with(";base64") && !data.is_empty()
        })
    })
}

fn images(obj: &Map<String, Value>, name: &str) -> Option<usize> {
    match obj.get(name) {
        None | Some(Value::Null) => Some(0),
        Some(Value::Array(items)) if items.iter().all(is_image) => Some(items.len()),
        _ => None,
    }
}

/// The first of `accountFilter.modes`, `FAST` when none.
fn mode(obj: &Map<String, Value>) -> String {
    obj.get("accountFilter")
        .and_then(|f| f.get("modes"))
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .and_then(Value::as_str)
        .map_or_else(|| "FAST".to_owned(), str::to_ascii_uppercase)
}

/// A 16-digit id: the submit time in ms and three digits, unused so far.
fn new_id(state: &SandboxState, seed: u64) -> String {
    let base = crate::state::unix_now_ms() * 1000;
    (0..1000)
        .map(|i| (base + (seed + i) % 1000).to_string())
        .find(|id| state.midjourney.get(id).is_none())
        .unwrap_or_else(|| base.to_string())
}

struct NewTask {
    action: &'static str,
    custom_id: String,
    prompt: String,
    description: String,
    modal: bool,
}

fn start(state: &SandboxState, call: &Call, obj: &Map<String, Value>, new: NewTask) -> Arc<Task> {
    let id = new_id(state, call.seed);
    let run = if new.modal {
        Run::Modal
    } else {
        Run::Running {
            timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
            fails: has_word(&new.prompt, "fail"),
        }
    };
    let task = Task {
        id: id.clone(),
        action: new.action,
        custom_id: new.custom_id,
        bot_type: text(obj, "botType").unwrap_or_else(|| "MID_JOURNEY".to_owned()),
        prompt: new.prompt,
        description: new.description,
        state: text(obj, "state").unwrap_or_default(),
        mode: mode(obj),
        submit_ms: crate::state::unix_now_ms(),
        seed: call.seed,
        run: Mutex::new(run),
    };
    state.midjourney.insert(id, task)
}

/// The parent a follow-up names: it must exist (3) and have succeeded (4).
fn parent(state: &SandboxState, id: &str) -> Result<Arc<Task>, (i64, &'static str)> {
    let Some(task) = state.midjourney.get(id) else {
        return Err((3, "关联任务不存在或已失效"));
    };
    if task.status(Instant::now()).0 != "SUCCESS" {
        return Err((4, "关联任务状态错误"));
    }
    Ok(task)
}

/// The action a button's customId runs, and whether it opens a modal.
fn button_action(custom_id: &str) -> Option<(&'static str, bool)> {
    let words: Vec<String> = custom_id.split("::").map(str::to_ascii_lowercase).collect();
    let has = |w: &str| words.iter().any(|x| x.starts_with(w));
    Some(if has("upsample") {
        ("UPSCALE", false)
    } else if has("low_variation") {
        ("LOW_VARIATION", false)
    } else if has("high_variation") {
        ("HIGH_VARIATION", false)
    } else if has("variation") {
        ("VARIATION", false)
    } else if has("reroll") {
        ("REROLL", false)
    } else if has("customzoom") {
        ("CUSTOM_ZOOM", true)
    } else if has("outpaint") {
        ("ZOOM", false)
    } else if has("pan_") {
        ("PAN", false)
    } else if has("inpaint") {
        ("INPAINT", true)
    } else if has("promptanalyzer") || has("picreader") {
        ("IMAGINE", false)
    } else {
        return None;
    })
}

async fn submit(
    State(state): State<Shared>,
    Path(action): Path<String>,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return refuse(4, "请求参数错误");
    };
    let prompt = text(obj, "prompt").unwrap_or_default();
    if has_word(&prompt, "reject") {
        return answer(
            24,
            "可能包含敏感词",
            json!({"promptEn": prompt, "bannedWord": "reject"}),
            Value::Null,
        );
    }
    let new = match action.as_str() {
        "imagine" => {
            if prompt.is_empty() {
                return refuse(4, "prompt不能为空");
            }
            if images(obj, "base64Array").is_none_or(|n| n > 5) {
                return refuse(4, "base64格式错误");
            }
            NewTask {
                action: "IMAGINE",
                custom_id: String::new(),
                description: format!("/imagine {prompt}"),
                prompt,
                modal: false,
            }
        }
        "blend" => {
            if !images(obj, "base64Array").is_some_and(|n| (2..=5).contains(&n)) {
                return refuse(4, "base64List参数错误");
            }
            NewTask {
                action: "BLEND",
                custom_id: String::new(),
                description: "/blend".into(),
                prompt: String::new(),
                modal: false,
            }
        }
        "describe" => {
            if !obj.get("base64").is_some_and(is_image) {
                return refuse(4, "base64格式错误");
            }
            NewTask {
                action: "DESCRIBE",
                custom_id: String::new(),
                description: "/describe".into(),
                prompt: String::new(),
                modal: false,
            }
        }
        "shorten" => {
            if prompt.is_empty() {
                return refuse(4, "prompt不能为空");
            }
            NewTask {
                action: "SHORTEN",
                custom_id: String::new(),
                description: format!("/shorten {prompt}"),
                prompt,
                modal: false,
            }
        }
        "action" => {
            let (Some(task_id), Some(custom_id)) = (text(obj, "taskId"), text(obj, "customId"))
            else {
                return refuse(4, "taskId和customId不能为空");
            };
            let parent = match parent(&state, &task_id) {
                Ok(p) => p,
                Err((code, description)) => return refuse(code, description),
            };
            let known = parent
                .buttons()
                .iter()
                .any(|b| b["customId"] == custom_id.as_str());
            let Some((action, modal)) = button_action(&custom_id).filter(|_| known) else {
                return refuse(4, "customId不存在");
            };
            let new = NewTask {
                action,
                description: format!("/action {task_id} {custom_id}"),
                custom_id,
                prompt: parent.prompt.clone(),
                modal,
            };
            if modal {
                let task = start(&state, &call, obj, new);
                return answer(
                    21,
                    "Waiting for window confirm",
                    json!({"status": "MODAL", "finalPrompt": task.prompt}),
                    Value::String(task.id.clone()),
                );
            }
            new
        }
        "modal" => {
            let Some(task_id) = text(obj, "taskId") else {
                return refuse(4, "taskId不能为空");
            };
            let Some(task) = state.midjourney.get(&task_id) else {
                return refuse(3, "关联任务不存在或已失效");
            };
            if task.action == "INPAINT" && !obj.get("maskBase64").is_some_and(is_image) {
                return refuse(4, "maskBase64不能为空");
            }
            let fails = has_word(&prompt, "fail") || has_word(&task.prompt, "fail");
            if !task.confirm(state.live.task_ms.load(Ordering::Relaxed), fails) {
                return refuse(4, "任务状态错误");
            }
            return submitted(&task.id);
        }
        "change" | "simple-change" => {
            let (task_id, op, index) = if action == "change" {
                let Some(task_id) = text(obj, "taskId") else {
                    return refuse(4, "taskId不能为空");
                };
                let op = text(obj, "action").unwrap_or_default();
                (
                    task_id,
                    op,
                    obj.get("index").and_then(Value::as_u64).unwrap_or(0),
                )
            } else {
                let content = text(obj, "content").unwrap_or_default();
                let mut words = content.split_whitespace();
                let (Some(id), Some(op)) = (words.next(), words.next()) else {
                    return refuse(4, "content参数错误");
                };
                let op = op.to_ascii_uppercase();
                let (kind, index) = match op.as_str() {
                    "R" => ("REROLL", 0),
                    o if o.len() == 2 => (
                        if o.starts_with('U') {
                            "UPSCALE"
                        } else {
                            "VARIATION"
                        },
                        o[1..].parse().unwrap_or(0),
                    ),
                    _ => return refuse(4, "content参数错误"),
                };
                if !matches!(op.chars().next(), Some('U' | 'V' | 'R')) {
                    return refuse(4, "content参数错误");
                }
                (id.to_owned(), kind.to_owned(), index)
            };
            let action = match op.as_str() {
                "UPSCALE" => "UPSCALE",
                "VARIATION" => "VARIATION",
                "REROLL" => "REROLL",
                _ => return refuse(4, "action参数错误"),
            };
            if action != "REROLL" && !(1..=4).contains(&index) {
                return refuse(4, "index参数错误");
            }
            let parent = match parent(&state, &task_id) {
                Ok(p) => p,
                Err((code, description)) => return refuse(code, description),
            };
            if !matches!(parent.action, "IMAGINE" | "VARIATION" | "REROLL" | "BLEND") {
                return refuse(4, "关联任务不允许执行变化");
            }
            NewTask {
                action,
                custom_id: String::new(),
                description: format!("/up {task_id} {op} {index}"),
                prompt: parent.prompt.clone(),
                modal: false,
            }
        }
        _ => return refuse(4, "不支持的操作"),
    };
    let task = start(&state, &call, obj, new);
    submitted(&task.id)
}

/// `POST /mj/insight-face/swap`.
async fn swap_face(State(state): State<Shared>, Extension(call): Extension<Arc<Call>>) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return refuse(4, "请求参数错误");
    };
    if !(obj.get("sourceBase64").is_some_and(is_image)
        && obj.get("targetBase64").is_some_and(is_image))
    {
        return refuse(4, "sourceBase64和targetBase64不能为空");
    }
    let task = start(
        &state,
        &call,
        obj,
        NewTask {
            action: "SWAP_FACE",
            custom_id: String::new(),
            prompt: String::new(),
            description: "/swap".into(),
            modal: false,
        },
    );
    submitted(&task.id)
}

/// `POST /mj/submit/upload-discord-images`: synchronous, one URL per image.
async fn upload(Extension(call): Extension<Arc<Call>>) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return refuse(4, "请求参数错误");
    };
    let count = images(obj, "base64Array").unwrap_or(0);
    if count == 0 {
        return refuse(4, "base64Array不能为空");
    }
    let urls: Vec<Value> = (0..count as u64)
        .map(|i| {
            json!(format!(
                "https://sandbox.invalid/mj/attachments/{:016x}.png",
                crate::text::mix(call.seed ^ (i + 1))
            ))
        })
        .collect();
    answer(1, "成功", json!({}), Value::Array(urls))
}

/// `POST /mj/task/list-by-condition`: the known ones among `ids`.
async fn list(State(state): State<Shared>, Extension(call): Extension<Arc<Call>>) -> Response {
    let now = Instant::now();
    let ids = call
        .body
        .json
        .as_ref()
        .and_then(|b| b.get("ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tasks: Vec<Value> = ids
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|id| state.midjourney.get(id))
        .map(|t| t.dto(now))
        .collect();
    Json(Value::Array(tasks)).into_response()
}

/// `GET /mj/task/{id}/fetch`: the task, or `null` when unknown (as the open-source proxy).
async fn fetch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.midjourney.get(&id) {
        Some(task) => Json(task.dto(Instant::now())).into_response(),
        None => Json(Value::Null).into_response(),
    }
}

/// `GET /mj/task/{id}/image-seed`: a finished task's seed.
async fn image_seed(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(task) = state.midjourney.get(&id) else {
        return refuse(3, "任务不存在");
    };
    if task.status(Instant::now()).0 != "SUCCESS" {
        return refuse(4, "任务状态错误");
    }
    let seed = crate::text::mix(task.seed) % 4_294_967_295;
    answer(1, "成功", json!({}), Value::String(seed.to_string()))
}
