//! The Luma family: the "Luma proxy" protocol a gateway's Luma channel speaks upstream
//! (`docs/upstream-apis/luma.md`): create and extend answer a `pending` generation object, the get
//! renders it from the time elapsed since submission (`pending` → `processing` → `completed` with
//! its video, or `failed`), and the download URL is a presigned-looking link to the clean file.
//!
//! Every call passes `family_gate` (journal, bearer key, fault rules, latency); errors are Luma's
//! `{"detail": "..."}`.

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
use crate::text::mix;

type Shared = Arc<SandboxState>;

/// Bodies may carry base64 start and end frames.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
const MEDIA_BASE: &str = "https://sandbox.invalid/luma";
const FAIL_REASON: &str = "sandbox failure on request";
const ASPECT_RATIOS: &[(&str, u32, u32)] = &[
    ("16:9", 1360, 752),
    ("9:16", 752, 1360),
    ("1:1", 1024, 1024),
    ("4:3", 1168, 880),
    ("3:4", 880, 1168),
    ("21:9", 1568, 672),
    ("9:21", 672, 1568),
];

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/luma/generations", post(create))
        .route("/luma/generations/{id}", get(fetch_one))
        .route("/luma/generations/{id}/extend", post(extend))
        .route(
            "/luma/generations/{id}/download_video_url",
            get(download_video_url),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// Luma's error body: `{"detail": message}`.
fn detail(status: StatusCode, _code: &str, message: &str) -> Response {
    (status, Json(json!({"detail": message}))).into_response()
}

/// Luma's gate: Bearer keys, `{"detail"}` errors.
static GATE: Family = Family {
    name: "luma",
    key: crate::gate::bearer_key,
    error: detail,
    max_body: MAX_BODY_BYTES,
};

fn bad_request(message: &str) -> Response {
    detail(StatusCode::BAD_REQUEST, "", message)
}

fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "", "generation not found")
}

/// One generation.
pub struct Generation {
    id: String,
    prompt: String,
    aspect_ratio: &'static str,
    width: u32,
    height: u32,
    /// Generation this one continues.
    extended_from: Option<String>,
    timeline: Timeline,
    fails: bool,
    /// Seed of the media file names (never the generation id).
    media: String,
}

/// `POST /luma/generations`.
async fn create(State(state): State<Shared>, Extension(call): Extension<Arc<Call>>) -> Response {
    start(&state, &call, None)
}

/// `POST /luma/generations/{id}/extend`: continues a completed generation.
async fn extend(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    let Some(parent) = state.luma.get(&id) else {
        return not_found();
    };
    if parent.timeline.phase(Instant::now()) != Phase::Done || parent.fails {
        return bad_request("only a completed generation can be extended");
    }
    start(&state, &call, Some(parent.as_ref()))
}

fn start(state: &SandboxState, call: &Call, parent: Option<&Generation>) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return bad_request("the body must be a JSON object");
    };
    let Some(prompt) = text(obj, "user_prompt") else {
        return bad_request("user_prompt is required");
    };
    let ratio = match parent {
        Some(p) => p.aspect_ratio.to_owned(),
        None => text(obj, "aspect_ratio").unwrap_or_else(|| "16:9".into()),
    };
    let Some(&(aspect_ratio, width, height)) = ASPECT_RATIOS.iter().find(|(r, _, _)| *r == ratio)
    else {
        return bad_request("unsupported aspect_ratio");
    };
    if has_word(&prompt, "reject") {
        return bad_request("the generation was refused");
    }
    let generation = Generation {
        id: uuid(call.seed),
        fails: has_word(&prompt, "fail"),
        prompt,
        aspect_ratio,
        width,
        height,
        extended_from: parent.map(|p| p.id.clone()),
        timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
        media: uuid(mix(call.seed ^ 0x004D_4544_4941)),
    };
    let answer = generation.object(Instant::now());
    state.luma.insert(generation.id.clone(), generation);
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `GET /luma/generations/{id}`.
async fn fetch_one(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.luma.get(&id) {
        Some(generation) => Json(generation.object(Instant::now())).into_response(),
        None => not_found(),
    }
}

/// `GET /luma/generations/{id}/download_video_url`.
async fn download_video_url(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(generation) = state.luma.get(&id) else {
        return not_found();
    };
    if generation.timeline.phase(Instant::now()) != Phase::Done || generation.fails {
        return bad_request("the generation is not completed");
    }
    Json(json!({"url": format!(
        "{MEDIA_BASE}/r2/{}/video.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600",
        generation.media
    )}))
    .into_response()
}

impl Generation {
    /// The generation object (luma.md §4) at `now`.
    pub fn object(&self, now: Instant) -> Value {
        let phase = self.timeline.phase(now);
        let done = phase == Phase::Done && !self.fails;
        let state = match phase {
            Phase::Submitted => "pending",
            Phase::InProgress(_) => "processing",
            Phase::Done if self.fails => "failed",
            Phase::Done => "completed",
        };
        let remaining_ms = self.timeline.duration_ms.saturating_sub(
            u64::try_from(
                now.saturating_duration_since(self.timeline.started)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
        );
        let frame = |name: &str, ext: &str| json!({"url": format!("{MEDIA_BASE}/{}/{name}.{ext}", self.media), "width": self.width, "height": self.height});
        let (video, video_raw, thumbnail, last_frame) = if done {
            let mut video = frame("watermarked", "mp4");
            video["thumbnail"] = Value::Null;
            // the clean file is only handed out through download_video_url
            video["download_url"] = json!("");
            (
                video,
                frame("video", "mp4"),
                frame("thumb", "jpg"),
                frame("last", "jpg"),
            )
        } else {
            (Value::Null, Value::Null, Value::Null, Value::Null)
        };
        json!({
            "id": self.id,
            "prompt": self.prompt,
            "state": state,
            "queue_state": null,
            "created_at": iso8601(self.timeline.submit_ms),
            "batch_id": "",
            "video": video,
            "video_raw": video_raw,
            "thumbnail": thumbnail,
            "last_frame": last_frame,
            "request": {"prompt": self.prompt, "aspect_ratio": self.aspect_ratio},
            "extended_from": self.extended_from,
            "liked": null,
            "estimate_wait_seconds": match phase {
                Phase::Done => Value::Null,
                _ => json!(remaining_ms.div_ceil(1000)),
            },
            "failure_reason": if phase == Phase::Done && self.fails { json!(FAIL_REASON) } else { Value::Null },
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
