//! Kling (the official Kling API under `/kling`): image generation, virtual try-on, text2video and
//! image2video, each a create (`POST /kling/v1/<group>/<op>`) and a query (`GET .../{task_id}`).
//! Successes answer in Kling's own `{"code":0,"message":"SUCCEED","request_id","data"}` shape with
//! uniapi's task id; errors in the `{"code":"<string>","message","data":null}` envelope.
//!
//! Upstream: a `kling` channel whose key is `ACCESS_KEY|SECRET_KEY` is the official API
//! (`{base}/v1/...`, a fresh HS256 JWT per request); a key starting `sk-` is a relay speaking this
//! same `/kling/v1/...` protocol with the key as Bearer. Submits are charged `kling_<action>` (or
//! `kling_<action>:<model_name>`); the poller queries each task upstream, a few at a time per channel.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};

use super::imagecheck::{base64url, url_or_base64_image};
use super::submit::{Answer, Refusal, Submission, Upstream, idempotency_key, owned_task};
use super::{FAILURE, IN_PROGRESS, Observed, PollOutcome, QUEUED, SUBMITTED, SUCCESS};
use crate::auth;
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::read_limited;
use crate::state::AppState;
use crate::store::tasks::TaskRow;

const FAMILY: &str = "kling";
/// How long a signed token is valid (Kling's own recommendation: 30 minutes).
const JWT_LIFETIME_SECS: u64 = 1800;
/// Task queries in flight at once per channel.
const POLL_CONCURRENCY: usize = 8;

/// The four operations: (stored action, path under `/v1/`).
const OPERATIONS: &[(&str, &str)] = &[
    ("image", "images/generations"),
    ("virtual_try_on", "images/kolors-virtual-try-on"),
    ("text2video", "videos/text2video"),
    ("image2video", "videos/image2video"),
];

fn path_of(action: &str) -> Option<&'static str> {
    OPERATIONS
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, p)| *p)
}

pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (action, path) in OPERATIONS {
        let action: &'static str = action;
        router = router
            .route(
                &format!("/kling/v1/{path}"),
                post(move |state, request| submit(state, request, action)),
            )
            .route(
                &format!("/kling/v1/{path}/{{task_id}}"),
                get(move |state, headers, id| fetch(state, headers, id, action)),
            );
    }
    router
}

/// The Kling family's error envelope (uniapi's task error object).
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into(), "data": null})),
    )
        .into_response()
}

fn refused(refusal: Refusal) -> Response {
    refusal.render(error)
}

fn success(data: Value) -> Response {
    axum::Json(json!({
        "code": 0,
        "message": "SUCCEED",
        "request_id": uuid::Uuid::now_v7().simple().to_string(),
        "data": data,
    }))
    .into_response()
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<ApiKey>, Box<Response>> {
    auth::authenticate(&state.catalog.load(), auth::bearer(headers))
        .map_err(|e| Box::new(error(e.status, e.code.unwrap_or("unauthorized"), e.message)))
}

fn text<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The HS256 JWT the official Kling API takes: `iss` = access key, valid from 5 s ago for 30 min.
pub fn sign_jwt(access_key: &str, secret_key: &str, now_secs: u64) -> String {
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": access_key,
        "exp": now_secs + JWT_LIFETIME_SECS,
        "nbf": now_secs.saturating_sub(5),
    });
    let payload = base64url(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let signature = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret_key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            base64url(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm is never taken
        Err(_) => String::new(),
    };
    format!("{signing_input}.{signature}")
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The URL of `path` (under `/v1/`) on `channel` and the `Authorization` value for `key`: a relay key
/// (`sk-...`) speaks uniapi's `/kling/v1/...` with Bearer; `ACCESS|SECRET` signs a JWT for the
/// official `/v1/...`; any other key is sent as a ready bearer token to the official API.
fn upstream_target(base: &str, secret: &str, path: &str) -> (String, String) {
    let secret = secret.trim();
    if secret.starts_with("sk-") {
        return (
            format!("{base}/kling/v1/{path}"),
            format!("Bearer {secret}"),
        );
    }
    let token = match secret.split_once('|') {
        Some((access, secret)) => sign_jwt(access.trim(), secret.trim(), unix_secs()),
        None => secret.to_string(),
    };
    (format!("{base}/v1/{path}"), format!("Bearer {token}"))
}

/// How a Kling upstream takes a create.
struct KlingSubmit {
    path: &'static str,
    payload: String,
}

impl Upstream for KlingSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        let (url, authorization) = upstream_target(&channel.base_url, &key.secret, self.path);
        state
            .upstream
            .client
            .post(url)
            .header(header::AUTHORIZATION, authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let code_ok = answer["code"].as_i64() == Some(0) || answer["code"].as_str() == Some("0");
        match answer["data"]["task_id"].as_str() {
            Some(id) if status.is_success() && code_ok && !id.is_empty() => Answer::Accepted {
                upstream_id: id.to_string(),
                raw: answer.clone(),
            },
            _ => {
                let code = match &answer["code"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => "upstream_error".into(),
                };
                let status = if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Answer::Refused(Refusal::new(
                    status,
                    &code,
                    answer["message"]
                        .as_str()
                        .unwrap_or("the upstream refused the task"),
                ))
            }
        }
    }
}

/// What is wrong with a create body, if anything (checked before anything is charged or sent).
fn validate(action: &str, body: &Map<String, Value>) -> Result<(), String> {
    let image = |name: &str, required: bool| -> Result<(), String> {
        match body.get(name) {
            None | Some(Value::Null) if !required => Ok(()),
            None | Some(Value::Null) => Err(format!("`{name}` is required")),
            Some(Value::String(s)) => {
                url_or_base64_image(s).map_err(|why| format!("`{name}` {why}"))
            }
            Some(_) => Err(format!(
                "`{name}` must be a string (an image URL or base64)"
            )),
        }
    };
    match action {
        "image" => {
            if text(body, "prompt").is_none() {
                return Err("`prompt` is required".into());
            }
            if let Some(n) = body.get("n")
                && !n.as_u64().is_some_and(|n| (1..=9).contains(&n))
            {
                return Err("`n` must be an integer from 1 to 9".into());
            }
            image("image", false)
        }
        "virtual_try_on" => {
            image("human_image", true)?;
            image("cloth_image", true)
        }
        "text2video" => {
            let shots = body
                .get("multi_prompt")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if text(body, "prompt").is_none() && !shots {
                return Err("`prompt` is required".into());
            }
            Ok(())
        }
        "image2video" => {
            let has = |name: &str| body.get(name).is_some_and(|v| !v.is_null());
            if !has("image") && !has("image_tail") {
                return Err("`image` or `image_tail` is required".into());
            }
            image("image", false)?;
            image("image_tail", false)?;
            image("static_mask", false)?;
            if let Some(masks) = body.get("dynamic_masks").and_then(Value::as_array) {
                for mask in masks {
                    match mask.get("mask").and_then(Value::as_str) {
                        Some(m) => url_or_base64_image(m)
                            .map_err(|why| format!("`dynamic_masks[].mask` {why}"))?,
                        None => return Err("`dynamic_masks[].mask` is required".into()),
                    }
                }
            }
            Ok(())
        }
        _ => Err("unknown operation".into()),
    }
}

async fn submit(State(state): State<AppState>, request: Request, action: &'static str) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let Some(path) = path_of(action) else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "unknown operation",
        );
    };
    let idempotency = idempotency_key(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, "invalid_request", e.message),
    };
    let mut body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(body)) => body,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a JSON object",
            );
        }
    };
    if let Err(message) = validate(action, &body) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", message);
    }
    // the client's callback is uniapi's to call, never the upstream's
    let hook = body
        .remove("callback_url")
        .and_then(|h| h.as_str().map(str::to_string))
        .filter(|h| !h.trim().is_empty());
    let model = text(&body, "model_name")
        .or_else(|| text(&body, "model"))
        .map(str::to_string);
    let price_name = format!("kling_{action}");
    let mut price_names = Vec::new();
    if let Some(model) = &model {
        price_names.push(format!("{price_name}:{model}"));
    }
    price_names.push(price_name);
    let body = Value::Object(body);
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Kling,
        action: action.into(),
        price_names,
        parent: None,
        channel_filter: None,
        idempotency,
        hook,
        request: body.clone(),
    };
    let upstream = KlingSubmit {
        path,
        payload: body.to_string(),
    };
    match super::submit::submit(&state, &key, submission, &upstream).await {
        Ok(task) => success(dto(&task)),
        Err(refusal) => refused(refusal),
    }
}

/// Kling's `task_status` for a canonical state.
fn kling_status(state: &str) -> &'static str {
    match state {
        SUCCESS => "succeed",
        FAILURE => "failed",
        IN_PROGRESS => "processing",
        _ => "submitted",
    }
}

/// The task as Kling's query `data`, from uniapi's store (uniapi's id, never the upstream's).
pub fn dto(task: &TaskRow) -> Value {
    let body = task.request.as_ref().map(|r| &r["body"]);
    let mut info = Map::new();
    if let Some(external) = body
        .and_then(|b| b.get("external_task_id"))
        .filter(|v| !v.is_null())
    {
        info.insert("external_task_id".into(), external.clone());
    }
    let mut data = json!({
        "task_id": task.id,
        "task_status": kling_status(&task.state),
        "task_status_msg": task.fail_reason.clone().unwrap_or_default(),
        "task_info": info,
        "progress": task.progress,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    });
    if let Some(result) = task.result.as_ref().filter(|r| !r.is_null()) {
        data["task_result"] = result.clone();
    }
    data
}

async fn fetch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    action: &'static str,
) -> Response {
    let key = match caller(&state, &headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    match owned_task(&state, &key, FAMILY, &id).await {
        // a task is found only under the operation that created it
        Ok(task) if task.action == action => success(dto(&task)),
        Ok(_) => refused(Refusal::not_found()),
        Err(refusal) => refused(refusal),
    }
}

fn canonical(status: &str) -> &'static str {
    match status {
        "succeed" => SUCCESS,
        "failed" => FAILURE,
        "processing" => IN_PROGRESS,
        "queued" => QUEUED,
        _ => SUBMITTED,
    }
}

/// One task's query upstream (its action and upstream id, with the channel's base URL and a key):
/// what it shows, or why it could not be seen.
async fn query(
    state: AppState,
    base_url: String,
    secret: String,
    action: String,
    upstream_id: String,
) -> Result<Observed, PollOutcome> {
    let Some(path) = path_of(&action) else {
        return Err(PollOutcome::Failed(format!(
            "unknown Kling action `{action}`"
        )));
    };
    let (url, authorization) =
        upstream_target(&base_url, &secret, &format!("{path}/{upstream_id}"));
    let request = state
        .upstream
        .client
        .get(url)
        .header(header::AUTHORIZATION, authorization);
    let answer = super::poll_json(request, super::POLL_TIMEOUT).await?;
    let data = &answer["data"];
    let Some(status) = data["task_status"].as_str() else {
        return Err(PollOutcome::Failed(
            "the upstream's query answer has no task_status".into(),
        ));
    };
    let state = canonical(status);
    let progress = match state {
        SUCCESS | FAILURE => "100%".to_string(),
        IN_PROGRESS => data["task_progress"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "50%".into()),
        _ => "0%".into(),
    };
    Ok(Observed {
        upstream_id,
        state,
        progress,
        result: data
            .get("task_result")
            .filter(|r| !r.is_null() && state == SUCCESS)
            .cloned(),
        raw: data.clone(),
        fail_reason: (state == FAILURE).then(|| {
            data["task_status_msg"]
                .as_str()
                .filter(|m| !m.is_empty())
                .unwrap_or("the upstream reported a failure")
                .to_string()
        }),
    })
}

/// Queries every due task of a channel upstream, a few at a time (Kling has no batch query).
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let Some(key) = channel.pick_key() else {
        return PollOutcome::Failed("no enabled upstream key".into());
    };
    super::poll_each(tasks, POLL_CONCURRENCY, |task| {
        query(
            state.clone(),
            channel.base_url.clone(),
            key.secret.clone(),
            task.action.clone(),
            task.upstream_id.clone(),
        )
    })
    .await
}

/// The request the admin channel test sends: a query of a task id that cannot exist, signed like
/// every Kling call (a 404 or a 200 means the key was accepted).
pub fn probe(client: &reqwest::Client, base: &str, secret: &str) -> reqwest::RequestBuilder {
    let (url, authorization) = upstream_target(base, secret, "videos/text2video/0");
    client.get(url).header(header::AUTHORIZATION, authorization)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_has_the_documented_header_claims_and_signature() {
        let token = sign_jwt("ak", "secret", 1_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], base64url(br#"{"alg":"HS256","typ":"JWT"}"#));
        let claims: Value = serde_json::from_slice(
            &super::super::imagecheck::decode_base64(parts[1]).unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        assert_eq!(claims["iss"], "ak");
        assert_eq!(claims["exp"], 1_001_800);
        assert_eq!(claims["nbf"], 999_995);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret")
            .unwrap_or_else(|_| unreachable!());
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(parts[2], base64url(&mac.finalize().into_bytes()));
    }

    #[test]
    fn statuses_map_both_ways() {
        for s in ["submitted", "processing", "succeed", "failed"] {
            assert_eq!(kling_status(canonical(s)), s);
        }
    }

    #[test]
    fn bad_input_is_named() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(validate("image", &body(json!({"prompt": "x"}))).is_ok());
        assert!(validate("image", &body(json!({}))).is_err());
        assert!(validate("image", &body(json!({"prompt": "x", "n": 10}))).is_err());
        assert!(
            validate(
                "virtual_try_on",
                &body(json!({"human_image": "https://a/b.png"}))
            )
            .is_err()
        );
        assert!(validate("image2video", &body(json!({"prompt": "x"}))).is_err());
        assert!(validate("image2video", &body(json!({"image": "aGVsbG8gd29ybGQ="}))).is_err());
        assert!(validate("image2video", &body(json!({"image": "https://a/b.png"}))).is_ok());
        assert!(validate("text2video", &body(json!({"prompt": " "}))).is_err());
    }
}
