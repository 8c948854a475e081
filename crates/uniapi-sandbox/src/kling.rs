//! The Kling family (`docs/upstream-apis/kling.md`), in two forms on one task store:
//! - the official API under `/klingai/v1/...` (a channel's base URL is `<sandbox>/klingai`), which
//!   takes only an HS256 JWT signed with the sandbox's Kling secret (`iss` = its access key, `exp`
//!   in the future, `nbf` not ahead);
//! - a relay speaking uniapi's own `/kling/v1/...` protocol with a plain Bearer key.
//!
//! Creates answer `submitted`; queries follow the task timeline (`submitted` → `processing` →
//! `succeed`/`failed`). A prompt with the word `fail` ends `failed`; `reject` refuses the create
//! (400, code 1301). Errors use Kling's envelope `{"code":<int>,"message","request_id","data":null}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};

use crate::gate::{Call, Family};
use crate::state::SandboxState;
use crate::tasks::{Phase, Timeline, has_word};
use crate::text::mix;

type Shared = Arc<SandboxState>;

const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const MEDIA_BASE: &str = "https://sandbox.invalid/kling";
const FAIL_REASON: &str = "content violation (sandbox failure on request)";

/// The operations: path under `/v1/`, and whether the result is videos.
const OPERATIONS: &[(&str, bool)] = &[
    ("images/generations", false),
    ("images/kolors-virtual-try-on", false),
    ("videos/text2video", true),
    ("videos/image2video", true),
];

pub fn routes(state: Shared) -> Router<Shared> {
    let mut official = Router::new();
    let mut relay = Router::new();
    for (path, _) in OPERATIONS {
        let op: &'static str = path;
        official = official
            .route(
                &format!("/klingai/v1/{op}"),
                post(move |s, c| create(s, c, op)),
            )
            .route(
                &format!("/klingai/v1/{op}/{{id}}"),
                get(move |s, id| query(s, id, op)),
            );
        relay = relay
            .route(
                &format!("/kling/v1/{op}"),
                post(move |s, c| create(s, c, op)),
            )
            .route(
                &format!("/kling/v1/{op}/{{id}}"),
                get(move |s, id| query(s, id, op)),
            );
    }
    official
        .route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), &GATE),
            crate::gate::family_gate,
        ))
        .merge(relay.route_layer(axum::middleware::from_fn_with_state(
            (state, &RELAY_GATE),
            crate::gate::family_gate,
        )))
}

/// Kling's envelope; the gate's machine codes become Kling's numeric ones.
fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let number = match code {
        "unauthorized" => 1002,
        "invalid_request" => 1201,
        "not_found" => 1203,
        "policy" => 1301,
        _ if status.is_server_error() => 5000,
        _ if status == StatusCode::TOO_MANY_REQUESTS => 1302,
        _ => 1200,
    };
    (
        status,
        Json(json!({
            "code": number,
            "message": message,
            "request_id": crate::tasks::uuid(mix(u64::from(status.as_u16()))),
            "data": null,
        })),
    )
        .into_response()
}

/// The official API: only a JWT (`a.b.c`) is a key here; [`jwt_accepted`] checks it.
static GATE: Family = Family {
    name: "kling",
    key: jwt_bearer,
    error: envelope,
    max_body: MAX_BODY_BYTES,
};

/// The relay form: plain Bearer keys.
static RELAY_GATE: Family = Family {
    name: "kling-relay",
    key: crate::gate::bearer_key,
    error: envelope,
    max_body: MAX_BODY_BYTES,
};

fn jwt_bearer(headers: &HeaderMap) -> Option<&str> {
    crate::gate::bearer_key(headers).filter(|token| token.split('.').count() == 3)
}

/// Whether `token` is a JWT the official Kling gate takes: HS256 over `header.payload` with the
/// sandbox's secret, `iss` its access key, not expired, not before its `nbf`.
pub(crate) fn jwt_accepted(state: &SandboxState, family: &str, token: &str) -> bool {
    family == GATE.name && verify_jwt(&state.kling_access_key, &state.kling_secret_key, token)
}

fn verify_jwt(access_key: &str, secret_key: &str, token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let json_of = |segment: &str| -> Option<Value> {
        serde_json::from_slice(&decode_base64url(segment)?).ok()
    };
    let (Some(head), Some(claims), Some(signature)) = (
        json_of(header),
        json_of(payload),
        decode_base64url(signature),
    ) else {
        return false;
    };
    if head["alg"] != "HS256" {
        return false;
    }
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret_key.as_bytes()) else {
        return false;
    };
    mac.update(format!("{header}.{payload}").as_bytes());
    if mac.verify_slice(&signature).is_err() {
        return false;
    }
    let now = crate::state::unix_now();
    claims["iss"] == access_key
        && claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && claims["nbf"].as_u64().is_none_or(|nbf| nbf <= now + 5)
}

/// Base64url without padding (as JWTs carry it).
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

pub struct Task {
    pub id: String,
    pub op: &'static str,
    pub timeline: Timeline,
    pub fails: bool,
    pub seed: u64,
    /// Images produced (image operations).
    pub images: u64,
    pub duration: String,
    pub external_task_id: Option<String>,
}

impl Task {
    fn videos(&self) -> bool {
        OPERATIONS
            .iter()
            .any(|(path, videos)| *path == self.op && *videos)
    }

    /// The query `data` at `now`.
    pub fn data(&self, now: Instant) -> Value {
        let phase = self.timeline.phase(now);
        let (status, msg) = match (phase, self.fails) {
            (Phase::Submitted, _) => ("submitted", ""),
            (Phase::InProgress(_), _) => ("processing", ""),
            (Phase::Done, false) => ("succeed", ""),
            (Phase::Done, true) => ("failed", FAIL_REASON),
        };
        let updated = match phase {
            Phase::Submitted => self.timeline.submit_ms,
            Phase::InProgress(_) => self.timeline.start_ms(),
            Phase::Done => self.timeline.finish_ms(),
        };
        let mut info = Map::new();
        if let Some(external) = &self.external_task_id {
            info.insert("external_task_id".into(), json!(external));
        }
        let mut data = json!({
            "task_id": self.id,
            "task_status": status,
            "task_status_msg": msg,
            "task_info": info,
            "created_at": self.timeline.submit_ms,
            "updated_at": updated,
        });
        if status == "succeed" {
            data["task_result"] = self.result();
        }
        data
    }

    fn result(&self) -> Value {
        let id = |i: u64| format!("{:016x}", mix(self.seed ^ (i + 1)));
        if self.videos() {
            json!({"videos": [{
                "id": id(0),
                "url": format!("{MEDIA_BASE}/{}.mp4", id(0)),
                "duration": self.duration,
            }]})
        } else {
            let images: Vec<Value> = (0..self.images)
                .map(|i| json!({"index": i, "url": format!("{MEDIA_BASE}/{}.png", id(i))}))
                .collect();
            json!({ "images": images })
        }
    }
}

fn text(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn invalid(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn succeed(data: Value, seed: u64) -> Response {
    Json(json!({
        "code": 0,
        "message": "SUCCEED",
        "request_id": crate::tasks::uuid(mix(seed)),
        "data": data,
    }))
    .into_response()
}

async fn create(
    State(state): State<Shared>,
    Extension(call): Extension<Arc<Call>>,
    op: &'static str,
) -> Response {
    let Some(Value::Object(obj)) = &call.body.json else {
        return invalid("the body must be a JSON object");
    };
    let prompt = text(obj, "prompt").unwrap_or_default();
    let missing = match op {
        "images/generations" => prompt.is_empty().then_some("prompt is required"),
        "videos/text2video" => {
            (prompt.is_empty() && !obj.contains_key("multi_prompt")).then_some("prompt is required")
        }
        "videos/image2video" => (text(obj, "image").is_none() && text(obj, "image_tail").is_none())
            .then_some("image or image_tail is required"),
        _ => (text(obj, "human_image").is_none() || text(obj, "cloth_image").is_none())
            .then_some("human_image and cloth_image are required"),
    };
    if let Some(message) = missing {
        return invalid(message);
    }
    if has_word(&prompt, "reject") {
        return envelope(
            StatusCode::BAD_REQUEST,
            "policy",
            "content-safety policy triggered",
        );
    }
    let id = (mix(call.seed) >> 4).to_string();
    let task = Task {
        id: id.clone(),
        op,
        timeline: Timeline::start(state.live.task_ms.load(Ordering::Relaxed)),
        fails: has_word(&prompt, "fail"),
        seed: call.seed,
        images: obj
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 9),
        duration: obj
            .get("duration")
            .and_then(|d| {
                d.as_str()
                    .map(str::to_owned)
                    .or_else(|| d.as_u64().map(|n| n.to_string()))
            })
            .unwrap_or_else(|| "5".into()),
        external_task_id: text(obj, "external_task_id"),
    };
    let task = state.kling.insert(id, task);
    succeed(task.data(task.timeline.started), call.seed)
}

async fn query(State(state): State<Shared>, Path(id): Path<String>, op: &'static str) -> Response {
    match state.kling.get(&id).filter(|t| t.op == op) {
        Some(task) => succeed(task.data(Instant::now()), task.seed),
        None => envelope(StatusCode::NOT_FOUND, "not_found", "task not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64url(bytes: &[u8]) -> String {
        crate::text::base64(bytes)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }

    fn token(access: &str, secret: &str, exp: u64, alg: &str) -> String {
        let header = b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let payload = b64url(
            json!({"iss": access, "exp": exp, "nbf": 0})
                .to_string()
                .as_bytes(),
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        format!(
            "{header}.{payload}.{}",
            b64url(&mac.finalize().into_bytes())
        )
    }

    #[test]
    fn only_a_fresh_token_signed_with_the_secret_is_accepted() {
        let later = crate::state::unix_now() + 600;
        assert!(verify_jwt("ak", "sk", &token("ak", "sk", later, "HS256")));
        assert!(!verify_jwt(
            "ak",
            "sk",
            &token("ak", "other", later, "HS256")
        ));
        assert!(!verify_jwt(
            "ak",
            "sk",
            &token("someone", "sk", later, "HS256")
        ));
        assert!(!verify_jwt("ak", "sk", &token("ak", "sk", 1000, "HS256")));
        assert!(!verify_jwt("ak", "sk", &token("ak", "sk", later, "none")));
        assert!(!verify_jwt("ak", "sk", "a.b.c"));
    }

    #[test]
    fn base64url_decodes() {
        assert_eq!(
            decode_base64url("Zm9vYmFy").as_deref(),
            Some(&b"foobar"[..])
        );
        assert_eq!(decode_base64url("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert_eq!(decode_base64url("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
    }
}
