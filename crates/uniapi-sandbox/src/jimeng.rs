//! The Jimeng family: the Volcengine visual API (`docs/upstream-apis/jimeng.md`),
//! `POST /?Action=CVSync2AsyncSubmitTask|CVSync2AsyncGetResult&Version=2022-08-31`. Every call's
//! HMAC-SHA256 signature (region `cn-north-1`, service `cv`) is recomputed with
//! [`JIMENG_SECRET_KEY`] for the access key named in it (one of the sandbox's keys) and refused when
//! it differs. Answers `{"code": 10000, ...}`; anything else is an error. A task goes `in_queue` →
//! `generating` → `done` over `task_ms` with two images (one with `force_single`); the word `fail`
//! in the prompt ends it in an error, `reject` refuses the submit, `req_key` `bad` is invalid.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{Phase, Timeline, has_word};
use crate::text::mix;

type Shared = Arc<SandboxState>;

/// The secret key paired with every sandbox access key: a channel key is `<sandbox key>|<this>`.
pub const JIMENG_SECRET_KEY: &str = "sandbox-jimeng-secret";
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const MEDIA_BASE: &str = "https://sandbox.invalid/jimeng";
const PIXEL_PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
const OK: i64 = 10000;

pub struct Task {
    pub id: String,
    req_key: String,
    timeline: Timeline,
    fails: bool,
    images: u64,
}

pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/", post(action))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, &GATE),
            crate::gate::family_gate,
        ))
}

/// Volcengine's answer shape with a non-success code.
fn failure(status: StatusCode, code: &str, message: &str) -> Response {
    let number = match code {
        "unauthorized" => 100_010,
        "invalid_request" => 50_400,
        "invalid" => 50_411,
        _ => 50_500,
    };
    (
        status,
        Json(json!({
            "code": number,
            "message": message,
            "request_id": "sandbox",
            "status": number,
            "time_elapsed": "1ms",
            "data": null,
        })),
    )
        .into_response()
}

fn success(data: Value) -> Response {
    Json(json!({"code": OK, "message": "Success", "request_id": "sandbox", "status": OK, "time_elapsed": "1ms", "data": data}))
        .into_response()
}

/// The access key in `Authorization: HMAC-SHA256 Credential=<AK>/<scope>, ...`.
fn access_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("HMAC-SHA256 Credential=")?;
    rest.split('/').next().filter(|k| !k.is_empty())
}

static GATE: Family = Family {
    name: "jimeng",
    key: access_key,
    error: failure,
    max_body: MAX_BODY_BYTES,
};

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Recomputes the call's signature with the sandbox secret; `Err` says what did not match.
fn verify(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Result<(), &'static str> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let authorization = text("authorization");
    let date = text("x-date");
    if date.len() != 16 {
        return Err("missing or malformed X-Date");
    }
    let body_hash = hex::encode(Sha256::digest(body));
    if text("x-content-sha256") != body_hash {
        return Err("X-Content-Sha256 does not match the body");
    }
    let mut pairs: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed_headers = "content-type;host;x-content-sha256;x-date";
    let canonical = format!(
        "POST\n{}\n{query}\ncontent-type:{}\nhost:{}\nx-content-sha256:{body_hash}\nx-date:{date}\n\n{signed_headers}\n{body_hash}",
        uri.path(),
        text("content-type"),
        text("host"),
    );
    let scope = format!("{}/cn-north-1/cv/request", &date[..8]);
    let to_sign = format!(
        "HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(JIMENG_SECRET_KEY.as_bytes(), &date.as_bytes()[..8]);
    for part in ["cn-north-1", "cv", "request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let expected = format!(
        "HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        access_key(headers).unwrap_or(""),
        hex::encode(hmac_sha256(&key, to_sign.as_bytes()))
    );
    if authorization == expected {
        Ok(())
    } else {
        Err("the request signature we calculated does not match the signature you provided")
    }
}

async fn action(
    State(state): State<Shared>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: Uri,
    Extension(call): Extension<Arc<Call>>,
) -> Response {
    if let Err(reason) = verify(&headers, &uri, &call.body.bytes) {
        return failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &format!("SignatureDoesNotMatch: {reason}"),
        );
    }
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("Version") != Some("2022-08-31") {
        return failure(StatusCode::BAD_REQUEST, "invalid_request", "InvalidVersion");
    }
    let Some(Value::Object(body)) = &call.body.json else {
        return failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        );
    };
    let req_key = body.get("req_key").and_then(Value::as_str).unwrap_or("");
    if req_key.is_empty() || req_key == "bad" {
        return failure(StatusCode::BAD_REQUEST, "invalid", "Invalid req_key");
    }
    match param("Action") {
        Some("CVSync2AsyncSubmitTask") => {
            let Some(prompt) = body
                .get("prompt")
                .and_then(Value::as_str)
                .filter(|p| !p.trim().is_empty())
            else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "prompt is required",
                );
            };
            if has_word(prompt, "reject") {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Text Risk Not Pass",
                );
            }
            let single = body.get("force_single").and_then(Value::as_bool) == Some(true);
            let id = (mix(call.seed) % 10_000_000_000_000_000_000).to_string();
            state.jimeng.insert(
                id.clone(),
                Task {
                    id: id.clone(),
                    req_key: req_key.to_string(),
                    timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
                    fails: has_word(prompt, "fail"),
                    images: if single { 1 } else { 2 },
                },
            );
            success(json!({"task_id": id}))
        }
        Some("CVSync2AsyncGetResult") => {
            let id = body.get("task_id").and_then(Value::as_str).unwrap_or("");
            let Some(task) = state.jimeng.get(id).filter(|t| t.req_key == req_key) else {
                return success(
                    json!({"status": "not_found", "binary_data_base64": [], "image_urls": null}),
                );
            };
            let return_url = body
                .get("req_json")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|v| v.get("return_url").and_then(Value::as_bool))
                == Some(true);
            match task.timeline.phase(Instant::now()) {
                Phase::Submitted => success(
                    json!({"status": "in_queue", "binary_data_base64": [], "image_urls": null}),
                ),
                Phase::InProgress(_) => success(
                    json!({"status": "generating", "binary_data_base64": [], "image_urls": null}),
                ),
                Phase::Done if task.fails => {
                    failure(StatusCode::OK, "failed", "Output Image Risk Not Pass")
                }
                Phase::Done => {
                    let urls: Vec<String> = (0..task.images)
                        .map(|i| format!("{MEDIA_BASE}/{}/{i}.png", task.id))
                        .collect();
                    success(json!({
                        "status": "done",
                        "binary_data_base64": vec![PIXEL_PNG_B64; urls.len()],
                        "image_urls": if return_url { json!(urls) } else { Value::Null },
                        "resp_data": "",
                        "video_url": "",
                    }))
                }
            }
        }
        _ => failure(StatusCode::BAD_REQUEST, "invalid_request", "InvalidAction"),
    }
}
