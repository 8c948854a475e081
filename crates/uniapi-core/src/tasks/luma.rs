//! Luma Dream Machine (the "Luma proxy" protocol of `docs/upstream-apis/luma.md`): generate, extend,
//! the download URL and the task itself under `/luma/generations`, errors in the OpenAI envelope.
//! Generates are charged `luma_generate`, extends `luma_extend` (each `:<model_name>` first); an extend
//! runs on the channel that made its parent, with the parent's upstream id. Fetches answer from
//! uniapi's store in Luma's generation shape under uniapi's id; the poller fetches each due task.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::submit::{Answer, Refusal, Submission, Upstream, idempotency_key, owned_task};
use super::{FAILURE, IN_PROGRESS, Observed, PollOutcome, SUBMITTED, SUCCESS};
use crate::auth;
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::read_limited;
use crate::state::AppState;
use crate::store::tasks::TaskRow;

const FAMILY: &str = "luma";
/// Tasks of one channel fetched upstream at the same time.
const POLL_CONCURRENCY: usize = 4;
const ASPECT_RATIOS: &[&str] = &["1:1", "4:3", "3:4", "16:9", "9:16", "21:9", "9:21"];
const RESOLUTIONS: &[&str] = &["540p", "720p", "1080p"];
/// The media a generation carries, kept as the task's result.
const MEDIA: &[&str] = &["video", "video_raw", "thumbnail", "last_frame"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/luma/generations", post(generate))
        .route("/luma/generations/{id}", get(fetch_one))
        .route("/luma/generations/{id}/extend", post(extend))
        .route(
            "/luma/generations/{id}/download_video_url",
            get(download_video_url),
        )
}

/// The OpenAI error envelope Luma routes answer in.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_on(status, code, message, None)
}

fn error_on(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Response {
    let kind = match status.as_u16() {
        429 if code == "insufficient_quota" => "insufficient_quota",
        429 => "rate_limit_error",
        502..=504 => "upstream_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    (
        status,
        axum::Json(json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

/// A 400 about the field `param`.
fn invalid((param, message): (&str, String)) -> Response {
    let param = (!param.is_empty()).then_some(param);
    error_on(StatusCode::BAD_REQUEST, "invalid_request", message, param)
}

fn refused(refusal: Refusal) -> Response {
    refusal.render(error)
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Arc<ApiKey>, Box<Response>> {
    auth::authenticate(&state.catalog.load(), auth::bearer(headers))
        .map_err(|e| Box::new(e.into_response()))
}

fn text_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Checks a generate or extend body: what the upstream would refuse is answered here, uncharged.
fn check_body(body: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    let present = |name: &str| body.get(name).filter(|v| !v.is_null());
    if body
        .get("user_prompt")
        .and_then(Value::as_str)
        .is_none_or(|p| p.trim().is_empty())
    {
        return Err(("user_prompt", "user_prompt is required".into()));
    }
    if let Some(v) = present("aspect_ratio")
        && v.as_str().is_none_or(|r| !ASPECT_RATIOS.contains(&r))
    {
        let message = format!("aspect_ratio must be one of {}", ASPECT_RATIOS.join(", "));
        return Err(("aspect_ratio", message));
    }
    if let Some(v) = present("resolution")
        && v.as_str().is_none_or(|r| !RESOLUTIONS.contains(&r))
    {
        let message = format!("resolution must be one of {}", RESOLUTIONS.join(", "));
        return Err(("resolution", message));
    }
    for name in ["expand_prompt", "loop"] {
        if present(name).is_some_and(|v| !v.is_boolean()) {
            return Err((name, format!("{name} must be a boolean")));
        }
    }
    for name in ["model_name", "duration"] {
        if present(name).is_some_and(|v| v.as_str().is_none_or(|s| s.trim().is_empty())) {
            return Err((name, format!("{name} must be a non-empty string")));
        }
    }
    for name in ["image_url", "image_end_url"] {
        if let Some(v) = present(name) {
            let Some(image) = v.as_str() else {
                return Err((name, format!("{name} must be a string")));
            };
            check_image(image).map_err(|why| (name, format!("{name} {why}")))?;
        }
    }
    Ok(())
}

/// An image is given as an http(s) URL or as base64 (bare or a `data:image/...;base64,` URL); base64
/// must decode to a known image format.
fn check_image(image: &str) -> Result<(), &'static str> {
    let image = image.trim();
    if image.is_empty() {
        return Err("must not be empty");
    }
    if image.starts_with("https://") || image.starts_with("http://") {
        return Ok(());
    }
    let data = match image.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or("is not a valid data URL")?;
            if !meta.starts_with("image/") || !meta.ends_with(";base64") {
                return Err("must be an image URL or base64 image data");
            }
            data
        }
        None => image,
    };
    let head = decode_base64_head(data).ok_or("must be an image URL or base64 image data")?;
    match imagesize::image_type(&head) {
        Ok(_) => Ok(()),
        Err(_) => Err("is not an image"),
    }
}

/// The first bytes (up to 48) of base64 `text`, enough to recognise an image format.
fn decode_base64_head(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let chars: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
        .take_while(|c| *c != b'=')
        .take(64)
        .collect();
    if chars.len() < 8 {
        return None;
    }
    let mut out = Vec::with_capacity(48);
    for quad in chars.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in quad.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..quad.len()]);
    }
    Some(out)
}

/// Reads the JSON object body; the idempotency key comes with it.
async fn read_body(
    state: &AppState,
    request: Request,
) -> Result<(Option<String>, Map<String, Value>), Box<Response>> {
    let idempotency = idempotency_key(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = read_limited(body, &parts.headers, state.config.max_body_bytes())
        .await
        .map_err(|e| Box::new(error(e.status, "invalid_request", e.message)))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(body)) => Ok((idempotency, body)),
        _ => Err(Box::new(invalid((
            "",
            "the body must be a JSON object".into(),
        )))),
    }
}

/// Takes the client's callback out of the body: uniapi calls it, the upstream never sees it.
fn take_hook(body: &mut Map<String, Value>) -> Option<String> {
    // both names leave the body, whichever carries the URL
    let taken: Vec<Value> = ["notify_hook", "callback_url"]
        .into_iter()
        .filter_map(|name| body.remove(name))
        .collect();
    taken
        .into_iter()
        .find_map(|h| h.as_str().filter(|h| !h.is_empty()).map(str::to_string))
}

/// How a Luma upstream takes a generate or an extend: the same protocol, Bearer.
struct LumaSubmit {
    /// `/luma/generations` or `/luma/generations/{parent upstream id}/extend`.
    path: String,
    payload: String,
}

impl Upstream for LumaSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!("{}{}", channel.base_url, self.path))
            .bearer_auth(&key.secret)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match answer["id"].as_str() {
            Some(id) if status.is_success() && !id.is_empty() => Answer::Accepted {
                upstream_id: id.to_string(),
                raw: answer.clone(),
            },
            _ => {
                let message = answer["detail"]
                    .as_str()
                    .or(answer["error"]["message"].as_str())
                    .filter(|m| !m.is_empty())
                    .unwrap_or("the upstream refused the generation");
                let status = if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Answer::Refused(Refusal::new(status, "upstream_refused", message))
            }
        }
    }
}

/// `POST /luma/generations`.
async fn generate(State(state): State<AppState>, request: Request) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let (idempotency, mut body) = match read_body(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    if let Err(message) = check_body(&body) {
        return invalid(message);
    }
    let hook = take_hook(&mut body);
    let body = Value::Object(body);
    let model = text_field(&body, "model_name").unwrap_or("").to_string();
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Luma,
        action: "generate".into(),
        price_names: vec![format!("luma_generate:{model}"), "luma_generate".into()],
        parent: None,
        channel_filter: None,
        idempotency,
        hook,
        request: body.clone(),
    };
    let upstream = LumaSubmit {
        path: "/luma/generations".into(),
        payload: body.to_string(),
    };
    match super::submit::submit(&state, &key, submission, &upstream).await {
        Ok(task) => axum::Json(dto(&task)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// `POST /luma/generations/{id}/extend`: continues the caller's completed generation `id`.
async fn extend(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let (idempotency, mut body) = match read_body(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    if let Err(message) = check_body(&body) {
        return invalid(message);
    }
    let parent = match owned_task(&state, &key, FAMILY, &id).await {
        Ok(parent) => parent,
        Err(refusal) => return refused(refusal),
    };
    if parent.state != SUCCESS {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "only a completed generation can be extended",
        );
    }
    let hook = take_hook(&mut body);
    let body = Value::Object(body);
    // the model of the extend, or else the parent's
    let model = text_field(&body, "model_name")
        .or_else(|| {
            parent
                .request
                .as_ref()
                .and_then(|r| text_field(&r["body"], "model_name"))
        })
        .unwrap_or("")
        .to_string();
    let upstream = LumaSubmit {
        path: format!("/luma/generations/{}/extend", parent.upstream_id),
        payload: body.to_string(),
    };
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Luma,
        action: "extend".into(),
        price_names: vec![format!("luma_extend:{model}"), "luma_extend".into()],
        parent: Some(parent),
        channel_filter: None,
        idempotency,
        hook,
        request: body,
    };
    match super::submit::submit(&state, &key, submission, &upstream).await {
        Ok(task) => axum::Json(dto(&task)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// `GET /luma/generations/{id}`, from uniapi's store.
async fn fetch_one(
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

/// `GET /luma/generations/{id}/download_video_url`: the unwatermarked file of a completed generation,
/// from the stored result when it carries one, otherwise asked of the channel that made it.
async fn download_video_url(
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
    if task.state != SUCCESS {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the generation has not completed",
        );
    }
    if let Some(url) = task
        .result
        .as_ref()
        .and_then(|r| r["video"]["download_url"].as_str())
        .filter(|u| !u.is_empty())
    {
        return axum::Json(json!({"url": url})).into_response();
    }
    let channel = state.catalog.load().channel(task.channel_id).cloned();
    let Some(channel) = channel else {
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the channel that made this generation no longer exists",
        );
    };
    let Some(upstream_key) = channel.pick_key() else {
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the channel that made this generation has no enabled key",
        );
    };
    let request = state
        .upstream
        .client
        .get(format!(
            "{}/luma/generations/{}/download_video_url",
            channel.base_url, task.upstream_id
        ))
        .bearer_auth(&upstream_key.secret);
    let response =
        match tokio::time::timeout(state.upstream.first_byte_timeout, request.send()).await {
            Ok(Ok(response)) => response,
            _ => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the upstream did not answer",
                );
            }
        };
    let status = response.status();
    let answer: Value = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    match answer["url"].as_str().filter(|u| !u.is_empty()) {
        Some(url) if status.is_success() => axum::Json(json!({"url": url})).into_response(),
        _ => error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("the upstream gave no download URL (it answered {status})"),
        ),
    }
}

/// The task as a Luma generation object, under uniapi's id (never the upstream's).
pub fn dto(task: &TaskRow) -> Value {
    let request = task
        .request
        .as_ref()
        .map(|r| r["body"].clone())
        .unwrap_or(Value::Null);
    let state = match task.state.as_str() {
        SUCCESS => "completed",
        FAILURE => "failed",
        IN_PROGRESS => "processing",
        _ => "pending",
    };
    let media = |name: &str| {
        task.result
            .as_ref()
            .and_then(|r| r.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let prompt = request["user_prompt"].clone();
    json!({
        "id": task.id,
        "prompt": prompt,
        "state": state,
        "queue_state": null,
        "created_at": iso8601(task.created_at),
        "batch_id": "",
        "video": media("video"),
        "video_raw": media("video_raw"),
        "thumbnail": media("thumbnail"),
        "last_frame": media("last_frame"),
        "request": {
            "prompt": prompt,
            "aspect_ratio": request["aspect_ratio"].as_str().unwrap_or("16:9"),
        },
        "liked": null,
        "estimate_wait_seconds": task
            .raw
            .as_ref()
            .map(|r| r["estimate_wait_seconds"].clone())
            .unwrap_or(Value::Null),
        "failure_reason": task.fail_reason,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix milliseconds.
fn iso8601(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms.rem_euclid(1000)
    )
}

/// The canonical state of a Luma state (the proxy's names and the official API's).
fn canonical(state: &str) -> &'static str {
    match state {
        "completed" => SUCCESS,
        "failed" => FAILURE,
        "pending" | "queued" => SUBMITTED,
        _ => IN_PROGRESS,
    }
}

/// Reads one generation object: its state and its media (top level, or under `artifact`).
fn observed(upstream_id: &str, generation: &Value) -> Observed {
    let state = canonical(generation["state"].as_str().unwrap_or(""));
    let mut media = Map::new();
    for name in MEDIA {
        let value = generation
            .get(*name)
            .filter(|v| !v.is_null())
            .or_else(|| generation["artifact"].get(*name).filter(|v| !v.is_null()));
        if let Some(v) = value {
            media.insert((*name).to_string(), v.clone());
        }
    }
    let progress = match state {
        SUCCESS | FAILURE => "100%".to_string(),
        _ => match &generation["progress"] {
            Value::Number(n) => format!("{}%", n.as_u64().unwrap_or(0).min(99)),
            Value::String(s) if s.ends_with('%') => s.clone(),
            _ => "0%".to_string(),
        },
    };
    let fail_reason = ["failure_reason", "state_reason", "fail_reason", "detail"]
        .iter()
        .find_map(|name| generation[*name].as_str().filter(|s| !s.is_empty()))
        .map(str::to_string)
        .or_else(|| (state == FAILURE).then(|| "the generation failed upstream".to_string()));
    Observed {
        upstream_id: upstream_id.to_string(),
        state,
        progress,
        result: (!media.is_empty()).then_some(Value::Object(media)),
        raw: generation.clone(),
        fail_reason: if state == FAILURE { fail_reason } else { None },
    }
}

/// Owns what it uses: the poller runs these futures concurrently inside a spawned task.
async fn fetch_upstream(
    state: AppState,
    base_url: String,
    secret: String,
    id: String,
) -> Result<Observed, PollOutcome> {
    let request = state
        .upstream
        .client
        .get(format!("{base_url}/luma/generations/{id}"))
        .bearer_auth(&secret);
    let answer = match super::poll_json(request, super::POLL_TIMEOUT).await {
        Ok(answer) => answer,
        Err(outcome) => return Err(outcome),
    };
    if !answer["state"].is_string() {
        return Err(PollOutcome::Failed(
            "the upstream's generation has no state".into(),
        ));
    }
    Ok(observed(&id, &answer))
}

/// One fetch per due task of a channel (no batch query), at most `POLL_CONCURRENCY` at once.
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let Some(key) = channel.pick_key() else {
        return PollOutcome::Failed("no enabled upstream key".into());
    };
    super::poll_each(tasks, POLL_CONCURRENCY, |task| {
        fetch_upstream(
            state.clone(),
            channel.base_url.clone(),
            key.secret.clone(),
            task.upstream_id.clone(),
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_urls_or_base64_images() {
        // the first bytes of a PNG
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk";
        assert!(check_image("https://example.com/a.png").is_ok());
        assert!(check_image(png).is_ok());
        assert!(check_image(&format!("data:image/png;base64,{png}")).is_ok());
        assert_eq!(
            check_image("aGVsbG8gd29ybGQsIG5vdCBhbiBpbWFnZQ=="),
            Err("is not an image")
        );
        assert!(check_image("data:text/plain;base64,aGVsbG8=").is_err());
        assert!(check_image("not base64 at all!").is_err());
    }

    #[test]
    fn times_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_726_911_801_123), "2024-09-21T09:43:21.123Z");
    }

    #[test]
    fn generations_are_read_in_both_shapes() {
        let flat = json!({"state": "completed", "video": {"url": "u"}});
        let nested = json!({"state": "processing", "artifact": {"video": {"url": "v"}}});
        let failed = json!({"state": "failed", "failure_reason": "nsfw"});
        assert_eq!(observed("x", &flat).state, SUCCESS);
        assert_eq!(
            observed("x", &flat).result,
            Some(json!({"video": {"url": "u"}}))
        );
        assert_eq!(observed("x", &nested).state, IN_PROGRESS);
        assert_eq!(
            observed("x", &nested).result,
            Some(json!({"video": {"url": "v"}}))
        );
        assert_eq!(observed("x", &failed).fail_reason.as_deref(), Some("nsfw"));
    }
}
