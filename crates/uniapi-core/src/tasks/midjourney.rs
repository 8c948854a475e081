//! Midjourney (the midjourney-proxy(-plus) protocol): `/mj/submit/*`, `/mj/insight-face/swap`, the
//! synchronous `/mj/submit/upload-discord-images`, `/mj/task/{id}/fetch`, `/mj/task/list-by-condition`
//! and `/mj/task/{id}/image-seed`, each also under `/mj-fast`, `/mj-relax` and `/mj-turbo` (plain `/mj`
//! is fast). Answers use the proxy's `{"code":<int>,"description","properties","result"}` envelope.
//!
//! The mode picks the price (`mj_<action>`, `mj_relax_<action>`, `mj_turbo_<action>`; swap face
//! `swap_face[_relax|_turbo]`) and the channels (a channel's `modes`, default all); upstream it travels
//! as `accountFilter.modes` (the client's own `accountFilter` and `notifyHook` are never sent). Follow-ups
//! (action, modal, change, simple-change) run on the parent task's channel with the parent's upstream id.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{Map, Value, json};

use super::submit::{
    Answer, Refusal, Submission, Upstream, find_price, idempotency_key, owned_task,
};
use super::{FAILURE, IN_PROGRESS, Observed, PollOutcome, SUBMITTED, SUCCESS};
use crate::auth;
use crate::billing::{Units, cost, usd_string};
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::read_limited;
use crate::relay::{CallContext, order_candidates};
use crate::state::AppState;
use crate::store::logs::JsonText;
use crate::store::now_ms;
use crate::store::tasks::TaskRow;

const FAMILY: &str = "midjourney";
/// The proxy's return codes used here.
const CODE_OK: i64 = 1;
const CODE_NOT_FOUND: i64 = 3;
const CODE_INVALID: i64 = 4;
const CODE_FAILURE: i64 = 9;
const CODE_MODAL: i64 = 21;
const CODE_QUEUED: i64 = 22;
/// Reference images an imagine takes, and the images a blend takes.
const MAX_IMAGINE_IMAGES: usize = 5;
const BLEND_IMAGES: std::ops::RangeInclusive<usize> = 2..=5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// The speed a request asks for, from its path prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fast,
    Relax,
    Turbo,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Relax => "relax",
            Mode::Turbo => "turbo",
        }
    }

    /// The price of `action` in this mode (`mj_imagine`, `mj_relax_imagine`, ...).
    fn price(self, action: &str) -> String {
        match self {
            Mode::Fast => format!("mj_{action}"),
            _ => format!("mj_{}_{action}", self.as_str()),
        }
    }

    fn swap_face_price(self) -> String {
        match self {
            Mode::Fast => "swap_face".into(),
            _ => format!("swap_face_{}", self.as_str()),
        }
    }
}

pub fn routes() -> Router<AppState> {
    [
        ("/mj", Mode::Fast),
        ("/mj-fast/mj", Mode::Fast),
        ("/mj-relax/mj", Mode::Relax),
        ("/mj-turbo/mj", Mode::Turbo),
    ]
    .into_iter()
    .fold(Router::new(), |router, (prefix, mode)| {
        router.merge(
            Router::new()
                .route(
                    &format!("{prefix}/submit/upload-discord-images"),
                    post(upload),
                )
                .route(&format!("{prefix}/submit/{{action}}"), post(submit))
                .route(&format!("{prefix}/insight-face/swap"), post(swap_face))
                .route(&format!("{prefix}/task/list-by-condition"), post(list))
                .route(&format!("{prefix}/task/{{id}}/fetch"), get(fetch))
                .route(&format!("{prefix}/task/{{id}}/image-seed"), get(image_seed))
                .layer(Extension(mode)),
        )
    })
}

/// The proxy's envelope.
fn envelope(status: StatusCode, code: i64, description: &str, result: Value) -> Response {
    (
        status,
        axum::Json(
            json!({"code": code, "description": description, "properties": {}, "result": result}),
        ),
    )
        .into_response()
}

fn error(status: StatusCode, code: i64, description: impl AsRef<str>) -> Response {
    envelope(status, code, description.as_ref(), Value::Null)
}

fn invalid(description: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, CODE_INVALID, description)
}

/// A refusal in the envelope: an upstream's own numeric code is kept; not found is 3, our own
/// failures 9, everything else (bad input, money, auth) 4.
fn refused(refusal: Refusal) -> Response {
    let code = refusal
        .code
        .parse::<i64>()
        .unwrap_or(match refusal.code.as_str() {
            "task_not_exist" => CODE_NOT_FOUND,
            "upstream_error" | "store_error" | "no_available_channel" => CODE_FAILURE,
            _ => CODE_INVALID,
        });
    super::submit::with_retry_after(
        refusal.retry_after,
        error(refusal.status, code, refusal.message),
    )
}

/// `Authorization: Bearer <key>` or `mj-api-secret: <key>` (a `Bearer ` prefix there is tolerated).
fn client_token(headers: &HeaderMap) -> Option<&str> {
    auth::bearer(headers).or_else(|| {
        let value = headers.get("mj-api-secret")?.to_str().ok()?.trim();
        let value = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value)
            .trim();
        (!value.is_empty()).then_some(value)
    })
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Arc<ApiKey>, Box<Response>> {
    auth::authenticate(&state.catalog.load(), client_token(headers))
        .map_err(|e| Box::new(error(e.status, CODE_INVALID, e.message)))
}

fn text_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Reads the body as a JSON object (over the limit: 413).
async fn json_body(state: &AppState, request: Request) -> Result<Value, Response> {
    let (parts, body) = request.into_parts();
    let bytes = read_limited(body, &parts.headers, state.config.max_body_bytes())
        .await
        .map_err(|e| error(e.status, CODE_INVALID, e.message))?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(invalid("the body must be a JSON object")),
    }
}

/// Standard or URL-safe base64 (padding optional); `None` on any other character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b'\r' | b'\n' | b' ' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A `data:image/...;base64,...` URL whose bytes are a real image.
fn check_image(field: &str, value: &Value) -> Result<(), String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("`{field}` must be a data URL string"))?;
    let (head, data) = text
        .trim()
        .split_once(',')
        .ok_or_else(|| format!("`{field}` must be a data URL (data:image/png;base64,...)"))?;
    let is_image = head
        .strip_prefix("data:")
        .and_then(|h| h.strip_suffix(";base64"))
        .is_some_and(|mime| mime.starts_with("image/"));
    if !is_image {
        return Err(format!(
            "`{field}` must be a data URL (data:image/png;base64,...)"
        ));
    }
    let bytes = decode_base64(data)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("`{field}` is not valid base64"))?;
    imagesize::blob_size(&bytes)
        .map(|_| ())
        .map_err(|_| format!("`{field}` is not an image"))
}

/// Checks `base64Array` (at most/at least as given) and returns its length.
fn check_images(
    body: &Value,
    field: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, String> {
    let images = match body.get(field) {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => return Err(format!("`{field}` must be an array of data URLs")),
    };
    if !range.contains(&images.len()) {
        return Err(format!(
            "`{field}` takes {} to {} images, got {}",
            range.start(),
            range.end(),
            images.len()
        ));
    }
    for (i, image) in images.iter().enumerate() {
        check_image(&format!("{field}[{i}]"), image)?;
    }
    Ok(images.len())
}

/// What a button's customId does: (stored action, price action). `None`: not a button we know.
pub fn button_action(custom_id: &str) -> Option<(&'static str, &'static str)> {
    let id = custom_id.trim();
    if !id.starts_with("MJ::") {
        return None;
    }
    let lower = id.to_ascii_lowercase();
    let words: Vec<&str> = lower.split("::").collect();
    let has = |w: &str| words.iter().any(|x| x.starts_with(w));
    Some(if has("upsample") {
        ("UPSCALE", "upscale")
    } else if has("low_variation") {
        ("LOW_VARIATION", "variation")
    } else if has("high_variation") {
        ("HIGH_VARIATION", "variation")
    } else if has("variation") {
        ("VARIATION", "variation")
    } else if has("reroll") {
        ("REROLL", "reroll")
    } else if has("customzoom") {
        ("CUSTOM_ZOOM", "custom_zoom")
    } else if has("outpaint") || has("zoom") {
        ("ZOOM", "zoom")
    } else if has("pan_") || has("pan") {
        ("PAN", "pan")
    } else if has("inpaint") {
        ("INPAINT", "inpaint")
    } else if has("promptanalyzer") || has("picreader") {
        ("IMAGINE", "imagine")
    } else {
        return None;
    })
}

/// Whether a channel serves the mode the request (as kept with the task) asks for.
fn serves_mode(channel: &Channel, request: &Value) -> bool {
    let mode = request["mode"].as_str().unwrap_or("fast");
    channel_serves(channel, mode)
}

fn channel_serves(channel: &Channel, mode: &str) -> bool {
    channel.modes.as_ref().is_none_or(|modes| {
        modes.is_empty() || modes.iter().any(|m| m.trim().eq_ignore_ascii_case(mode))
    })
}

/// The body the upstream gets: without the client's hook and account filter, with the mode.
fn upstream_body(body: &Value, mode: Mode) -> Value {
    let mut out = body.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("notifyHook");
        o.remove("accountFilter");
        o.insert(
            "accountFilter".into(),
            json!({"modes": [mode.as_str().to_ascii_uppercase()]}),
        );
    }
    out
}

/// The request as kept with the task: images replaced by their count (they can be large).
fn kept_request(body: &Value, mode: Mode) -> Value {
    let mut kept = Map::new();
    if let Some(o) = body.as_object() {
        for (k, v) in o {
            if k == "notifyHook" || k == "accountFilter" {
                continue;
            }
            let value = match (k.to_ascii_lowercase().contains("base64"), v) {
                (true, Value::Array(items)) => json!(format!("<{} images>", items.len())),
                (true, Value::String(_)) => json!("<image>"),
                _ => v.clone(),
            };
            kept.insert(k.clone(), value);
        }
    }
    json!({"mode": mode.as_str(), "body": kept})
}

/// A submit to the proxy: `{base}/mj/<path>`, `mj-api-secret`.
struct MjSubmit {
    path: &'static str,
    payload: String,
}

impl Upstream for MjSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!("{}/mj/{}", channel.base_url, self.path))
            .header("mj-api-secret", &key.secret)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let code = answer["code"].as_i64();
        let id = match &answer["result"] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match (code, id) {
            (Some(CODE_OK | CODE_QUEUED | CODE_MODAL), Some(upstream_id)) => Answer::Accepted {
                upstream_id,
                raw: answer,
            },
            _ => Answer::Refused(Refusal::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                &code.map_or_else(|| "upstream_error".to_string(), |c| c.to_string()),
                answer["description"]
                    .as_str()
                    .unwrap_or("the upstream refused the task"),
            )),
        }
    }
}

/// The submit answer for a stored task: 21 when the upstream waits for a modal confirmation.
fn accepted(task: &TaskRow) -> Response {
    let raw = task.raw.as_ref().unwrap_or(&Value::Null);
    let waits =
        raw["code"].as_i64() == Some(CODE_MODAL) && raw["properties"]["status"] != "SUCCESS";
    if waits {
        envelope(
            StatusCode::OK,
            CODE_MODAL,
            "Waiting for window confirm",
            Value::String(task.id.clone()),
        )
    } else {
        envelope(
            StatusCode::OK,
            CODE_OK,
            "Submit success",
            Value::String(task.id.clone()),
        )
    }
}

/// What one submit route needs, once validated.
struct Plan {
    path: &'static str,
    action: String,
    price: String,
    parent: Option<TaskRow>,
    body: Value,
}

/// A follow-up's parent: the caller's own Midjourney task, on a channel serving the mode.
async fn parent_task(
    state: &AppState,
    key: &ApiKey,
    id: &str,
    mode: Mode,
) -> Result<TaskRow, Response> {
    let parent = owned_task(state, key, FAMILY, id).await.map_err(refused)?;
    let serves = state
        .catalog
        .load()
        .channel(parent.channel_id)
        .is_some_and(|c| channel_serves(c, mode.as_str()));
    if !serves {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            CODE_FAILURE,
            format!(
                "the channel that ran task {id} is gone or does not serve {} mode",
                mode.as_str()
            ),
        ));
    }
    Ok(parent)
}

async fn plan(
    state: &AppState,
    key: &ApiKey,
    mode: Mode,
    action: &str,
    mut body: Value,
) -> Result<Plan, Response> {
    let bad = |m: String| invalid(m);
    let simple = |path: &'static str, action: &str, price: &str, body: Value| Plan {
        path,
        action: action.into(),
        price: mode.price(price),
        parent: None,
        body,
    };
    match action {
        "imagine" => {
            if text_field(&body, "prompt").is_none() {
                return Err(invalid("prompt is required"));
            }
            check_images(&body, "base64Array", 0..=MAX_IMAGINE_IMAGES).map_err(bad)?;
            if let Some(image) = body.get("base64").filter(|v| !v.is_null()) {
                check_image("base64", image).map_err(bad)?;
            }
            Ok(simple("submit/imagine", "IMAGINE", "imagine", body))
        }
        "blend" => {
            check_images(&body, "base64Array", BLEND_IMAGES).map_err(bad)?;
            if let Some(d) = body.get("dimensions").filter(|v| !v.is_null()) {
                let known = d
                    .as_str()
                    .is_some_and(|d| matches!(d, "PORTRAIT" | "SQUARE" | "LANDSCAPE"));
                if !known {
                    return Err(invalid(
                        "`dimensions` must be PORTRAIT, SQUARE or LANDSCAPE",
                    ));
                }
            }
            Ok(simple("submit/blend", "BLEND", "blend", body))
        }
        "describe" => {
            match body.get("base64").filter(|v| !v.is_null()) {
                Some(image) => check_image("base64", image).map_err(bad)?,
                None => return Err(invalid("base64 is required")),
            }
            Ok(simple("submit/describe", "DESCRIBE", "describe", body))
        }
        "shorten" => {
            if text_field(&body, "prompt").is_none() {
                return Err(invalid("prompt is required"));
            }
            Ok(simple("submit/shorten", "SHORTEN", "shorten", body))
        }
        "action" => {
            let (Some(task_id), Some(custom_id)) =
                (text_field(&body, "taskId"), text_field(&body, "customId"))
            else {
                return Err(invalid("taskId and customId are required"));
            };
            let Some((stored, price)) = button_action(custom_id) else {
                return Err(invalid(format!("unknown customId `{custom_id}`")));
            };
            let parent = parent_task(state, key, task_id, mode).await?;
            body["taskId"] = Value::String(parent.upstream_id.clone());
            Ok(Plan {
                parent: Some(parent),
                ..simple("submit/action", stored, price, body)
            })
        }
        "modal" => {
            let Some(task_id) = text_field(&body, "taskId") else {
                return Err(invalid("taskId is required"));
            };
            if let Some(mask) = body.get("maskBase64").filter(|v| !v.is_null()) {
                check_image("maskBase64", mask).map_err(bad)?;
            }
            let parent = parent_task(state, key, task_id, mode).await?;
            body["taskId"] = Value::String(parent.upstream_id.clone());
            let stored = match parent.action.as_str() {
                a @ ("INPAINT" | "CUSTOM_ZOOM") => a.to_string(),
                _ => "MODAL".to_string(),
            };
            Ok(Plan {
                action: stored,
                parent: Some(parent),
                ..simple("submit/modal", "", "modal", body)
            })
        }
        "change" => {
            let Some(task_id) = text_field(&body, "taskId") else {
                return Err(invalid("taskId is required"));
            };
            let (stored, price, indexed) = match text_field(&body, "action") {
                Some("UPSCALE") => ("UPSCALE", "upscale", true),
                Some("VARIATION") => ("VARIATION", "variation", true),
                Some("REROLL") => ("REROLL", "reroll", false),
                _ => return Err(invalid("action must be UPSCALE, VARIATION or REROLL")),
            };
            if indexed && !body["index"].as_i64().is_some_and(|i| (1..=4).contains(&i)) {
                return Err(invalid("index must be 1 to 4"));
            }
            let parent = parent_task(state, key, task_id, mode).await?;
            body["taskId"] = Value::String(parent.upstream_id.clone());
            Ok(Plan {
                parent: Some(parent),
                ..simple("submit/change", stored, price, body)
            })
        }
        "simple-change" => {
            let content = text_field(&body, "content").unwrap_or("");
            let mut words = content.split_whitespace();
            let (Some(task_id), Some(op), None) = (words.next(), words.next(), words.next()) else {
                return Err(invalid("content must be `<taskId> <U1..U4|V1..V4|R>`"));
            };
            let op = op.to_ascii_uppercase();
            let (stored, price) = match op.as_str() {
                "U1" | "U2" | "U3" | "U4" => ("UPSCALE", "upscale"),
                "V1" | "V2" | "V3" | "V4" => ("VARIATION", "variation"),
                "R" => ("REROLL", "reroll"),
                _ => return Err(invalid("content must be `<taskId> <U1..U4|V1..V4|R>`")),
            };
            let parent = parent_task(state, key, task_id, mode).await?;
            body["content"] = Value::String(format!("{} {op}", parent.upstream_id));
            Ok(Plan {
                parent: Some(parent),
                ..simple("submit/simple-change", stored, price, body)
            })
        }
        other => Err(invalid(format!("unknown submit action `{other}`"))),
    }
}

async fn submit(
    State(state): State<AppState>,
    Extension(mode): Extension<Mode>,
    Path(action): Path<String>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let idempotency = idempotency_key(request.headers());
    let body = match json_body(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let plan = match plan(&state, &key, mode, &action, body).await {
        Ok(plan) => plan,
        Err(response) => return response,
    };
    run(&state, &key, mode, plan, idempotency).await
}

async fn swap_face(
    State(state): State<AppState>,
    Extension(mode): Extension<Mode>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let idempotency = idempotency_key(request.headers());
    let body = match json_body(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    for field in ["sourceBase64", "targetBase64"] {
        match body.get(field).filter(|v| !v.is_null()) {
            Some(image) => {
                if let Err(m) = check_image(field, image) {
                    return invalid(m);
                }
            }
            None => return invalid("sourceBase64 and targetBase64 are required"),
        }
    }
    let plan = Plan {
        path: "insight-face/swap",
        action: "SWAP_FACE".into(),
        price: mode.swap_face_price(),
        parent: None,
        body,
    };
    run(&state, &key, mode, plan, idempotency).await
}

async fn run(
    state: &AppState,
    key: &Arc<ApiKey>,
    mode: Mode,
    plan: Plan,
    idempotency: Option<String>,
) -> Response {
    // the client's hook is uniapi's to call, never the upstream's
    let hook = text_field(&plan.body, "notifyHook").map(str::to_string);
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Midjourney,
        action: plan.action,
        price_names: vec![plan.price],
        parent: plan.parent,
        channel_filter: Some(serves_mode),
        idempotency,
        hook,
        request: kept_request(&plan.body, mode),
    };
    let upstream = MjSubmit {
        path: plan.path,
        payload: upstream_body(&plan.body, mode).to_string(),
    };
    match super::submit::submit(state, key, submission, &upstream).await {
        Ok(task) => accepted(&task),
        Err(refusal) => refused(refusal),
    }
}

fn fails_over(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
}

/// `POST /mj/submit/upload-discord-images`: synchronous, charged `mj_upload` (per mode) when the
/// upstream answers code 1 with the URLs; anything else costs nothing.
async fn upload(
    State(state): State<AppState>,
    Extension(mode): Extension<Mode>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let body = match json_body(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(m) = check_images(&body, "base64Array", 1..=MAX_IMAGINE_IMAGES) {
        return invalid(m);
    }
    let names = vec![mode.price("upload")];
    let Some((price_name, price)) = find_price(&state, &names) else {
        return error(
            StatusCode::FORBIDDEN,
            CODE_INVALID,
            format!("`{}` has no price set; ask the operator", names[0]),
        );
    };
    let candidates: Vec<Arc<Channel>> = {
        let catalog = state.catalog.load();
        order_candidates(catalog.channels_of_kind(ChannelKind::Midjourney), now_ms())
            .into_iter()
            .filter(|c| channel_serves(c, mode.as_str()))
            .collect()
    };
    if candidates.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            CODE_FAILURE,
            format!("no midjourney channel serves {} mode", mode.as_str()),
        );
    }
    let ctx = CallContext::new(
        key.clone(),
        &axum::http::Method::POST,
        "/mj/submit/upload-discord-images",
    );
    let _permit = match super::submit::admit_logged(&state, &ctx, &price_name) {
        Ok(permit) => permit,
        Err(limited) => return refused(limited.into()),
    };
    let (amount, _) = cost(
        &price,
        &Units {
            calls: 1,
            ..Default::default()
        },
    );
    let Ok(reservation) = state.ledger.reserve(&ctx.id, key.user_id, key.id, amount) else {
        let message = format!(
            "your balance or this key's cap cannot cover this request (${})",
            usd_string(amount)
        );
        state.logs.record(ctx.log(
            Some(&price_name),
            StatusCode::TOO_MANY_REQUESTS,
            "rejected",
            Some(message.clone()),
        ));
        return error(StatusCode::TOO_MANY_REQUESTS, CODE_INVALID, message);
    };
    let payload = upstream_body(&body, mode).to_string();
    let mut last_failure = String::from("no channel answered");
    for channel in candidates.iter().take(state.config.routing.max_attempts) {
        let Some(upstream_key) = channel.pick_key() else {
            continue;
        };
        let request = state
            .upstream
            .client
            .post(format!(
                "{}/mj/submit/upload-discord-images",
                channel.base_url
            ))
            .header("mj-api-secret", &upstream_key.secret)
            .header(header::CONTENT_TYPE, "application/json")
            .body(payload.clone());
        let sent = tokio::time::timeout(state.upstream.first_byte_timeout, request.send()).await;
        let answer = match sent {
            Ok(Ok(response)) if !fails_over(response.status()) => {
                let status = response.status();
                response.bytes().await.ok().map(|b| (status, b))
            }
            Ok(Ok(response)) => {
                last_failure = format!("the upstream answered {}", response.status());
                None
            }
            _ => {
                last_failure = "the upstream did not answer".into();
                None
            }
        };
        let Some((status, bytes)) = answer else {
            channel
                .health
                .record_failure(&state.config.routing, now_ms());
            continue;
        };
        channel.health.record_success();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut log = ctx.log(Some(&price_name), status, "complete", None);
        log.channel_id = Some(channel.id);
        if answer["code"].as_i64() == Some(CODE_OK) && answer["result"].is_array() {
            reservation.capture(amount, 0);
            log.cost_nano = amount;
            log.cost_detail = JsonText::of(&json!({"price": price_name}));
            state.logs.record(log);
            return envelope(
                StatusCode::OK,
                CODE_OK,
                "Submit success",
                answer["result"].clone(),
            );
        }
        reservation.release();
        let description = answer["description"]
            .as_str()
            .unwrap_or("the upstream refused the upload")
            .to_string();
        log.outcome = "failed".into();
        log.error = Some(description.clone());
        state.logs.record(log);
        return error(
            StatusCode::BAD_REQUEST,
            answer["code"].as_i64().unwrap_or(CODE_INVALID),
            description,
        );
    }
    reservation.release();
    let mut log = ctx.log(
        Some(&price_name),
        StatusCode::BAD_GATEWAY,
        "failed",
        Some(last_failure.clone()),
    );
    log.latency_ms = log.latency_ms.max(1);
    state.logs.record(log);
    error(
        StatusCode::BAD_GATEWAY,
        CODE_FAILURE,
        format!("no midjourney channel answered: {last_failure}"),
    )
}

/// The task in the proxy's Task shape, from uniapi's store (uniapi's id, never the upstream's).
pub fn dto(task: &TaskRow) -> Value {
    let null = Value::Null;
    let raw = task.raw.as_ref().unwrap_or(&null);
    let body = task.request.as_ref().map_or(&null, |r| &r["body"]["body"]);
    let seen = raw["status"].as_str().unwrap_or("");
    let status = match task.state.as_str() {
        SUCCESS => "SUCCESS",
        FAILURE if seen == "CANCEL" => "CANCEL",
        FAILURE => "FAILURE",
        IN_PROGRESS if seen == "MODAL" => "MODAL",
        IN_PROGRESS => "IN_PROGRESS",
        _ if seen == "NOT_START" => "NOT_START",
        _ => "SUBMITTED",
    };
    let pick = |name: &str| {
        raw[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| body[name].as_str())
            .unwrap_or("")
            .to_string()
    };
    let prompt = pick("prompt");
    let prompt_en = raw["promptEn"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map_or_else(|| prompt.clone(), str::to_string);
    let description = match raw["description"].as_str() {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => "Submit success".to_string(),
    };
    let bot_type = match pick("botType") {
        b if b.is_empty() => "MID_JOURNEY".to_string(),
        b => b,
    };
    json!({
        "id": task.id,
        "action": task.action,
        "customId": pick("customId"),
        "botType": bot_type,
        "prompt": prompt,
        "promptEn": prompt_en,
        "description": description,
        "state": body["state"].as_str().unwrap_or(""),
        "mode": task.request.as_ref().and_then(|r| r["body"]["mode"].as_str()).unwrap_or("fast").to_ascii_uppercase(),
        "submitTime": task.created_at,
        "startTime": task.started_at,
        "finishTime": task.finished_at,
        "imageUrl": raw["imageUrl"].as_str().unwrap_or(""),
        "status": status,
        "progress": task.progress,
        "failReason": task.fail_reason.clone().unwrap_or_default(),
        "buttons": raw["buttons"].as_array().cloned().unwrap_or_default(),
        "maskBase64": "",
        "properties": {
            "finalPrompt": raw["properties"]["finalPrompt"].as_str().unwrap_or(""),
            "finalZhPrompt": raw["properties"]["finalZhPrompt"].as_str().unwrap_or(""),
        },
    })
}

async fn fetch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = match caller(&state, &headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    match owned_task(&state, &key, FAMILY, &id).await {
        Ok(task) => axum::Json(dto(&task)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// `POST /mj/task/list-by-condition {"ids": [...]}`: the caller's own tasks among `ids`.
async fn list(State(state): State<AppState>, request: Request) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let body = match json_body(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let ids = match body.get("ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).take(1000).collect(),
        Some(_) => return invalid("`ids` must be an array of task ids"),
    };
    let mut out = Vec::new();
    for id in ids {
        if let Ok(Some(task)) = state.store.task(id).await
            && task.user_id == key.user_id
            && task.family == FAMILY
        {
            out.push(dto(&task));
        }
    }
    axum::Json(Value::Array(out)).into_response()
}

/// `GET /mj/task/{id}/image-seed`: asked of the channel that ran the task, with its upstream id.
async fn image_seed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = match caller(&state, &headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let task = match owned_task(&state, &key, FAMILY, &id).await {
        Ok(task) => task,
        Err(refusal) => return refused(refusal),
    };
    let channel = state.catalog.load().channel(task.channel_id).cloned();
    let Some((channel, upstream_key)) = channel
        .as_ref()
        .and_then(|c| c.pick_key().map(|k| (c, k.secret.clone())))
    else {
        return error(
            StatusCode::BAD_GATEWAY,
            CODE_FAILURE,
            "the channel that ran this task is gone",
        );
    };
    let request = state
        .upstream
        .client
        .get(format!(
            "{}/mj/task/{}/image-seed",
            channel.base_url, task.upstream_id
        ))
        .header("mj-api-secret", upstream_key);
    let response = match tokio::time::timeout(UPSTREAM_TIMEOUT, request.send()).await {
        Ok(Ok(response)) if !fails_over(response.status()) => response,
        Ok(Ok(response)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                CODE_FAILURE,
                format!("the upstream answered {}", response.status()),
            );
        }
        _ => {
            return error(
                StatusCode::BAD_GATEWAY,
                CODE_FAILURE,
                "the upstream did not answer",
            );
        }
    };
    let answer: Value = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let code = answer["code"].as_i64().unwrap_or(CODE_FAILURE);
    let description = answer["description"].as_str().unwrap_or("");
    if code == CODE_OK {
        let seed = match &answer["result"] {
            Value::Number(n) => Value::String(n.to_string()),
            other => other.clone(),
        };
        envelope(StatusCode::OK, CODE_OK, description, seed)
    } else {
        error(StatusCode::BAD_REQUEST, code, description)
    }
}

fn canonical(status: &str) -> &'static str {
    match status {
        "SUCCESS" => SUCCESS,
        "FAILURE" | "CANCEL" => FAILURE,
        "NOT_START" | "SUBMITTED" => SUBMITTED,
        _ => IN_PROGRESS,
    }
}

/// One `list-by-condition` for every due task of a channel.
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let Some(key) = channel.pick_key() else {
        return PollOutcome::Failed("no enabled upstream key".into());
    };
    let ids: Vec<&str> = tasks.iter().map(|t| t.upstream_id.as_str()).collect();
    let request = state
        .upstream
        .client
        .post(format!("{}/mj/task/list-by-condition", channel.base_url))
        .header("mj-api-secret", &key.secret)
        .header(header::CONTENT_TYPE, "application/json")
        .body(json!({"ids": ids}).to_string());
    let answer = match super::poll_json(request, UPSTREAM_TIMEOUT).await {
        Ok(answer) => answer,
        Err(outcome) => return outcome,
    };
    let Some(items) = answer.as_array() else {
        return PollOutcome::Failed("the upstream's list answer is not an array".into());
    };
    PollOutcome::Observed(
        items
            .iter()
            .filter_map(|item| {
                let upstream_id = match &item["id"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                let state = canonical(item["status"].as_str().unwrap_or(""));
                let progress = match item["progress"].as_str().filter(|p| !p.is_empty()) {
                    Some(p) => p.to_string(),
                    None if state == SUCCESS => "100%".into(),
                    None => "0%".into(),
                };
                Some(Observed {
                    upstream_id,
                    state,
                    progress,
                    result: Some(json!({
                        "imageUrl": item["imageUrl"],
                        "buttons": item["buttons"],
                        "properties": {"finalPrompt": item["properties"]["finalPrompt"]},
                    })),
                    raw: item.clone(),
                    fail_reason: item["failReason"]
                        .as_str()
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .or_else(|| {
                            (state == FAILURE).then(|| {
                                format!(
                                    "the upstream ended the task as {}",
                                    item["status"].as_str().unwrap_or("FAILURE")
                                )
                            })
                        }),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_map_to_actions() {
        let cases = [
            ("MJ::JOB::upsample::1::3dbb", Some("upscale")),
            (
                "MJ::JOB::upsample_v6_2x_subtle::1::3dbb::SOLO",
                Some("upscale"),
            ),
            ("MJ::JOB::variation::2::3dbb", Some("variation")),
            ("MJ::JOB::low_variation::1::3dbb::SOLO", Some("variation")),
            ("MJ::JOB::reroll::0::3dbb::SOLO", Some("reroll")),
            ("MJ::Outpaint::50::1::3dbb::SOLO", Some("zoom")),
            ("MJ::CustomZoom::3dbb", Some("custom_zoom")),
            ("MJ::JOB::pan_left::1::3dbb::SOLO", Some("pan")),
            ("MJ::Inpaint::1::3dbb::SOLO", Some("inpaint")),
            ("MJ::JOB::PromptAnalyzer::1", Some("imagine")),
            ("MJ::JOB::dance::1::3dbb", None),
            ("upsample::1", None),
        ];
        for (id, want) in cases {
            assert_eq!(button_action(id).map(|a| a.1), want, "{id}");
        }
    }

    #[test]
    fn base64_decodes_and_images_are_sniffed() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert!(decode_base64("a*b").is_none());
        assert!(check_image("x", &json!("data:image/png;base64,aGVsbG8=")).is_err());
        assert!(check_image("x", &json!("data:text/plain;base64,aGVsbG8=")).is_err());
        assert!(check_image("x", &json!("aGVsbG8=")).is_err());
        // a 1x1 GIF
        assert!(
            check_image(
                "x",
                &json!(
                    "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
                )
            )
            .is_ok()
        );
    }

    #[test]
    fn modes_price_on_their_own() {
        assert_eq!(Mode::Fast.price("imagine"), "mj_imagine");
        assert_eq!(Mode::Relax.price("imagine"), "mj_relax_imagine");
        assert_eq!(Mode::Turbo.price("upload"), "mj_turbo_upload");
        assert_eq!(Mode::Relax.swap_face_price(), "swap_face_relax");
        assert_eq!(Mode::Fast.swap_face_price(), "swap_face");
    }
}
