//! The Udio family: the relay task protocol a gateway's Udio channel speaks upstream
//! (`docs/upstream-apis/udio.md`): `POST /udio/submit/music` answers a task id, `GET /udio/fetch/{id}`
//! renders the task from the time elapsed since its submission (`SUBMITTED` → `IN_PROGRESS` with two
//! unfinished songs → `SUCCESS` with both finished, or `FAILURE` with the songs' `error_type` set).
//!
//! Every call passes `family_gate` (journal, bearer key, fault rules, latency), which answers in the
//! Suno-style envelope `{"code","message","data"}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{Phase, Timeline, has_word, iso8601, uuid};
use crate::text::{fnv64, mix};

type Shared = Arc<SandboxState>;

const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const SONGS_PER_TASK: u64 = 2;
const MEDIA_BASE: &str = "https://sandbox.invalid/udio";
const FAIL_REASON: &str = "sandbox failure on request";
const MODELS: &[&str] = &["udio32-v1.5", "udio130-v1.5"];

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/udio/submit/{action}", post(submit))
        .route("/udio/fetch/{id}", get(fetch_one))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let code = if code == "injected" { "error" } else { code };
    (
        status,
        Json(json!({"code": code, "message": message, "data": null})),
    )
        .into_response()
}

/// Udio's gate: Bearer keys, Suno-style envelopes.
static GATE: Family = Family {
    name: "udio",
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

/// One submitted Udio generation.
pub struct Task {
    id: String,
    prompt: String,
    lyrics: String,
    instrumental: bool,
    model: String,
    notify_hook: String,
    timeline: Timeline,
    fails: bool,
    seed: u64,
}

/// `POST /udio/submit/{action}`: only `music` exists.
async fn submit(
    State(state): State<Shared>,
    Path(action): Path<String>,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    if action != "music" {
        return invalid("invalid_action");
    }
    let Some(Value::Object(obj)) = &call.body.json else {
        return invalid("invalid_request_body");
    };
    let Some(Value::Object(params)) = obj.get("gen_params") else {
        return invalid("gen_params is required");
    };
    let Some(prompt) = text(params, "prompt") else {
        return invalid("prompt_empty");
    };
    let lyrics_type = text(params, "lyrics_type").unwrap_or_else(|| "generate".into());
    if !["generate", "user", "instrumental"].contains(&lyrics_type.as_str()) {
        return invalid("invalid lyrics_type");
    }
    let model = text(params, "model_type").unwrap_or_else(|| MODELS[0].into());
    if !MODELS.contains(&model.as_str()) {
        return invalid("invalid model_type");
    }
    if has_word(&prompt, "reject") {
        return envelope(StatusCode::OK, "error", "upstream busy");
    }
    let task = Task {
        id: uuid(call.seed),
        fails: has_word(&prompt, "fail"),
        lyrics: text(params, "lyrics").unwrap_or_default(),
        instrumental: lyrics_type == "instrumental",
        model,
        notify_hook: text(obj, "notify_hook").unwrap_or_default(),
        timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
        seed: call.seed,
        prompt,
    };
    let id = task.id.clone();
    state.udio.insert(id.clone(), task);
    success(Value::String(id))
}

/// `GET /udio/fetch/{id}`.
async fn fetch_one(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.udio.get(&id) {
        Some(task) => success(task.dto(Instant::now())),
        None => envelope(StatusCode::NOT_FOUND, "task_not_exist", "task not found"),
    }
}

impl Task {
    /// The task as `GET /udio/fetch/{id}` shows it at `now` (UniAPI's shape: `songs` under `data`).
    pub fn dto(&self, now: Instant) -> Value {
        let phase = self.timeline.phase(now);
        let (status, progress, fail_reason, songs) = match (phase, self.fails) {
            (Phase::Submitted, _) => ("SUBMITTED", "0%".to_owned(), "", Vec::new()),
            (Phase::InProgress(pct), _) => (
                "IN_PROGRESS",
                format!("{pct}%"),
                "",
                self.songs(false, false),
            ),
            (Phase::Done, false) => ("SUCCESS", "100%".to_owned(), "", self.songs(true, false)),
            (Phase::Done, true) => (
                "FAILURE",
                "100%".to_owned(),
                FAIL_REASON,
                self.songs(false, true),
            ),
        };
        json!({
            "task_id": self.id,
            "action": "udio-generate",
            "status": status,
            "fail_reason": fail_reason,
            "submit_time": self.timeline.submit_ms / 1000,
            "start_time": if phase == Phase::Submitted { 0 } else { self.timeline.start_ms() / 1000 },
            "finish_time": if phase == Phase::Done { self.timeline.finish_ms() / 1000 } else { 0 },
            "progress": progress,
            "notify_hook": self.notify_hook,
            "songs": songs,
        })
    }

    fn songs(&self, finished: bool, failed: bool) -> Vec<Value> {
        (0..SONGS_PER_TASK)
            .map(|i| self.song(i, finished, failed))
            .collect()
    }

    /// One song (udio.md §3): unfinished while the task runs, with an error when it failed.
    fn song(&self, index: u64, finished: bool, failed: bool) -> Value {
        let id = uuid(mix(self.seed ^ (index + 1).wrapping_mul(0x0D10)));
        let duration = if self.model.starts_with("udio130") {
            130.0
        } else {
            32.0
        } + (fnv64(self.prompt.as_bytes()).wrapping_add(index * 17) % 100) as f64
            / 100.0;
        let title: String = self
            .prompt
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        json!({
            "id": id,
            "generation_id": self.id,
            "title": title,
            "artist": "uniapi-sandbox",
            "artist_image": "",
            "prompt": self.prompt,
            "lyrics": if self.instrumental { String::new() } else { self.lyrics.clone() },
            "tags": ["sandbox", if self.instrumental { "instrumental" } else { "vocal" }],
            "user_tags": [],
            "replaced_tags": {},
            "duration": if finished { json!(duration) } else { Value::Null },
            "finished": finished,
            "song_path": if finished { format!("{MEDIA_BASE}/{id}.mp3") } else { String::new() },
            "image_path": format!("{MEDIA_BASE}/{id}.png"),
            "video_path": null,
            "original_song_path": null,
            "created_at": iso8601(self.timeline.submit_ms),
            "published_at": null,
            "publishable": finished,
            "liked": false,
            "disliked": false,
            "likes": 0,
            "plays": 0,
            "attribution": "",
            "description": "",
            "audio_conditioning_type": null,
            "error_id": if failed { json!(uuid(mix(self.seed ^ 0xE770))) } else { Value::Null },
            "error_code": if failed { json!("generation_failed") } else { Value::Null },
            "error_type": if failed { json!("sandbox") } else { Value::Null },
            "error_detail": if failed { json!(FAIL_REASON) } else { Value::Null },
            "user_id": "sandbox-user",
        })
    }
}

/// A non-empty string field.
fn text(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}
