//! The Ideogram family (`docs/upstream-apis/ideogram.md`), synchronous, under `/ideogram/<op>` (a
//! channel's base URL is `<sandbox>/ideogram`): `generate` (JSON `{"image_request":{...}}`), `remix`
//! and `upscale` (multipart `image_request` + `image_file`), `describe` (multipart `image_file`).
//! The key comes in `Api-Key`; a prompt with the word `reject` fails the safety check (422
//! `{"error": ...}`). Answers are `GenerateImageResponse` / `DescribeResponse`.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::body::{FormPart, find_part, text_field};
use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{has_word, iso8601};
use crate::text::mix;

type Shared = Arc<SandboxState>;

const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const MEDIA_BASE: &str = "https://sandbox.invalid/ideogram";

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/ideogram/generate", post(generate))
        .route("/ideogram/remix", post(remix))
        .route("/ideogram/upscale", post(upscale))
        .route("/ideogram/describe", post(describe))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// Ideogram's error body: `{"error": "<message>"}`.
fn envelope(status: StatusCode, _code: &str, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

static GATE: Family = Family {
    name: "ideogram",
    key: api_key,
    error: envelope,
    max_body: MAX_BODY_BYTES,
};

fn api_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn bad(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// `WxH` of an aspect ratio or resolution enum value (`ASPECT_16_9`, `RESOLUTION_1280_720`).
fn resolution(request: &Map<String, Value>) -> String {
    if let Some(res) = request.get("resolution").and_then(Value::as_str)
        && let Some((w, h)) = res
            .strip_prefix("RESOLUTION_")
            .and_then(|r| r.split_once('_'))
    {
        return format!("{w}x{h}");
    }
    match request.get("aspect_ratio").and_then(Value::as_str) {
        Some("ASPECT_16_9") => "1312x736",
        Some("ASPECT_9_16") => "736x1312",
        Some("ASPECT_16_10") => "1280x800",
        Some("ASPECT_10_16") => "800x1280",
        Some("ASPECT_4_3") => "1152x864",
        Some("ASPECT_3_4") => "864x1152",
        Some("ASPECT_3_2") => "1248x832",
        Some("ASPECT_2_3") => "832x1248",
        Some("ASPECT_3_1") => "1728x576",
        Some("ASPECT_1_3") => "576x1728",
        _ => "1024x1024",
    }
    .to_owned()
}

/// A `GenerateImageResponse` for `request`, or the safety refusal / bad-input answer.
fn images(call: &Call, request: &Map<String, Value>, upscale: bool) -> Response {
    let prompt = request
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !upscale && prompt.trim().is_empty() {
        return bad("image_request.prompt is required");
    }
    if has_word(&prompt, "reject") {
        return envelope(
            StatusCode::UNPROCESSABLE_ENTITY,
            "safety",
            "Prompt failed safety check",
        );
    }
    let count = match request.get("num_images") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_u64().filter(|n| (1..=8).contains(n)) {
            Some(n) => n,
            None => return bad("num_images must be between 1 and 8"),
        },
    };
    let size = resolution(request);
    let style = request
        .get("style_type")
        .and_then(Value::as_str)
        .unwrap_or("GENERAL");
    let data: Vec<Value> = (0..count)
        .map(|i| {
            let draw = mix(call.seed ^ (i + 1));
            let seed = request
                .get("seed")
                .and_then(Value::as_u64)
                .map_or(draw % 2_147_483_648, |s| s + i);
            let mut item = json!({
                "url": format!("{MEDIA_BASE}/{draw:016x}.png"),
                "prompt": if prompt.is_empty() { "An upscaled image".to_owned() } else { prompt.clone() },
                "resolution": size,
                "is_image_safe": true,
                "seed": seed,
                "style_type": style,
            });
            if upscale {
                item["upscaled_resolution"] = json!("2048x2048");
            }
            item
        })
        .collect();
    Json(json!({
        "created": iso8601(crate::state::unix_now_ms()),
        "data": data,
    }))
    .into_response()
}

async fn generate(Extension(call): Extension<Arc<Call>>) -> Response {
    match call.body.json.as_ref().and_then(|b| b.get("image_request")) {
        Some(Value::Object(request)) => images(&call, request, false),
        _ => bad("image_request is required"),
    }
}

/// The form of a multipart call with its `image_file`, or what is wrong with it.
fn form_with_image(call: &Call) -> Result<&[FormPart], &'static str> {
    let Some(Ok(parts)) = &call.body.form else {
        return Err("expected a multipart/form-data body");
    };
    match find_part(parts, &["image_file"]) {
        Some(file) if file.is_file() && !file.data.is_empty() => Ok(parts),
        _ => Err("image_file is required"),
    }
}

fn multipart_images(call: &Call, upscale: bool) -> Response {
    let parts = match form_with_image(call) {
        Ok(parts) => parts,
        Err(message) => return bad(message),
    };
    let Some(text) = text_field(parts, "image_request") else {
        return bad("image_request is required");
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(request)) => images(call, &request, upscale),
        _ => bad("image_request must be a JSON object"),
    }
}

async fn remix(Extension(call): Extension<Arc<Call>>) -> Response {
    multipart_images(&call, false)
}

async fn upscale(Extension(call): Extension<Arc<Call>>) -> Response {
    multipart_images(&call, true)
}

async fn describe(Extension(call): Extension<Arc<Call>>) -> Response {
    let parts = match form_with_image(&call) {
        Ok(parts) => parts,
        Err(message) => return bad(message),
    };
    let bytes = find_part(parts, &["image_file"]).map_or(0, |p| p.data.len());
    Json(json!({"descriptions": [{
        "text": format!("A sandbox picture ({bytes} bytes) described deterministically"),
    }]}))
    .into_response()
}
