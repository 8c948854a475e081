//! Fal (the fal.ai queue protocol): `POST /fal-ai/{model path}` submits, `GET .../requests/{id}/status`
//! and `GET .../requests/{id}` answer from uniapi's store with URLs pointing at uniapi. Errors use the
//! OpenAI envelope; a failed task's result uses fal's `{"detail"}`. Priced by model path.

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::submit::{Answer, Refusal, Submission, Upstream, idempotency_key, owned_task};
use super::{FAILURE, IN_PROGRESS, Observed, PollOutcome, QUEUED, SUBMITTED, SUCCESS};
use crate::auth;
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::read_limited;
use crate::state::AppState;
use crate::store::tasks::TaskRow;

const FAMILY: &str = "fal";
/// Tasks of one channel polled at the same time (fal has no batch status call).
const POLL_CONCURRENCY: usize = 8;

pub fn routes() -> Router<AppState> {
    Router::new().route("/fal-ai/{*path}", any(dispatch))
}

/// The OpenAI error envelope (product.md §6: Fal routes).
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        axum::Json(json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

fn refused(refusal: Refusal) -> Response {
    refusal.render(error)
}

/// `Authorization: Key <key>` (fal's scheme) or Bearer.
fn client_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("key") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<ApiKey>, Box<Response>> {
    auth::authenticate(&state.catalog.load(), client_key(headers))
        .map_err(|e| Box::new(error(e.status, e.code.unwrap_or("unauthorized"), e.message)))
}

/// `fal-ai/flux-1/dev` -> `fal-ai/flux-1`: the app a model path belongs to (fal polls by app).
pub fn app_of(model: &str) -> String {
    model.split('/').take(2).collect::<Vec<_>>().join("/")
}

/// The model path without the `fal-ai/` prefix, for comparing with a channel's `models`.
fn bare(model: &str) -> &str {
    model.strip_prefix("fal-ai/").unwrap_or(model)
}

/// Whether a fal channel serves `model` (a channel without `models` serves every path).
pub fn serves(channel: &Channel, model: &str) -> bool {
    channel.models.is_empty() && channel.model_map.is_empty()
        || channel.public_models().any(|m| bare(m) == bare(model))
}

/// The origin clients reach uniapi at: `X-Forwarded-Proto` (else http) and `Host`.
fn origin(headers: &HeaderMap) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let proto = header("x-forwarded-proto").unwrap_or_else(|| "http".into());
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or_else(|| "localhost".into());
    format!("{proto}://{host}")
}

async fn dispatch(
    State(state): State<AppState>,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let method = request.method().clone();
    let path = path.trim_matches('/').to_string();
    if let Some((model, rest)) = path.split_once("/requests/") {
        let (id, what) = match rest.split_once('/') {
            Some((id, what)) => (id, what),
            None => (rest, ""),
        };
        let model = format!("fal-ai/{model}");
        return match (method.as_str(), what) {
            ("GET", "status") => {
                let logs = query.iter().any(|(k, v)| k == "logs" && v != "0");
                fetch(
                    &state,
                    &key,
                    &model,
                    id,
                    request.headers(),
                    Fetch::Status { logs },
                )
                .await
            }
            ("GET", "") => fetch(&state, &key, &model, id, request.headers(), Fetch::Result).await,
            ("GET" | "POST" | "PUT", _) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown fal route `/fal-ai/{path}`"),
            ),
            _ => method_not_allowed(&path),
        };
    }
    if method != axum::http::Method::POST {
        return method_not_allowed(&path);
    }
    let hook = query
        .iter()
        .find(|(k, _)| k == "fal_webhook")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    submit(&state, &key, format!("fal-ai/{path}"), hook, request).await
}

fn method_not_allowed(path: &str) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this method is not allowed on `/fal-ai/{path}`"),
    )
}

/// How the fal queue takes a submit: `{base}/<model path>`, `Authorization: Key`.
pub struct FalSubmit {
    pub model: String,
    pub payload: String,
}

impl Upstream for FalSubmit {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!("{}/{}", channel.base_url, self.model))
            .header(header::AUTHORIZATION, format!("Key {}", key.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
    }

    fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match answer["request_id"].as_str() {
            Some(id) if status.is_success() && !id.is_empty() => Answer::Accepted {
                upstream_id: id.to_string(),
                raw: answer.clone(),
            },
            _ => Answer::Refused(Refusal::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "upstream_refused",
                detail(&answer).unwrap_or_else(|| "the upstream refused the request".into()),
            )),
        }
    }
}

/// fal's `detail`: a string, or FastAPI's list of `{loc, msg}`.
pub fn detail(answer: &Value) -> Option<String> {
    match &answer["detail"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| {
                    let loc: Vec<String> = i["loc"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .map(|p| p.as_str().map_or(p.to_string(), str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{}: {}", loc.join("."), i["msg"].as_str().unwrap_or(""))
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    }
}

async fn submit(
    state: &AppState,
    key: &std::sync::Arc<ApiKey>,
    model: String,
    hook: Option<String>,
    request: Request,
) -> Response {
    if model.split('/').count() < 2 || model.split('/').any(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the path must name a fal model, like /fal-ai/flux-1/dev",
        );
    }
    if !key.may_use(&model) {
        return error(
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            format!("This API key is not allowed to use the model `{model}`."),
        );
    }
    let idempotency = idempotency_key(request.headers());
    let origin = origin(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, e.code.unwrap_or("invalid_request"), e.message),
    };
    let input: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a JSON object: the model's input",
            );
        }
    };
    if input.as_object().is_some_and(serde_json::Map::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the model's input is empty",
        );
    }
    let served = |c: &Channel, request: &Value| serves(c, request["model"].as_str().unwrap_or(""));
    let submission = Submission {
        family: FAMILY,
        kind: ChannelKind::Fal,
        action: model.clone(),
        price_names: vec![model.clone()],
        parent: None,
        channel_filter: Some(served),
        idempotency,
        hook,
        request: json!({"model": model, "origin": origin, "input": input}),
    };
    let upstream = FalSubmit {
        model: model.clone(),
        payload: input.to_string(),
    };
    match super::submit::submit(state, key, submission, &upstream).await {
        Ok(task) => {
            let mut answer = urls(&task);
            answer["status"] = json!("IN_QUEUE");
            answer["queue_position"] = json!(0);
            answer["logs"] = Value::Null;
            answer["metrics"] = json!({});
            axum::Json(answer).into_response()
        }
        Err(refusal) => refused(refusal),
    }
}

/// The request id and uniapi's URLs for a task.
fn urls(task: &TaskRow) -> Value {
    let request = task.request.as_ref().map(|r| &r["body"]);
    let origin = request
        .and_then(|r| r["origin"].as_str())
        .unwrap_or("http://localhost");
    let base = format!("{origin}/{}/requests/{}", app_of(&task.action), task.id);
    json!({
        "request_id": task.id,
        "response_url": base,
        "status_url": format!("{base}/status"),
        "cancel_url": format!("{base}/cancel"),
    })
}

/// fal's status word for a canonical state (a failed task has COMPLETED, with an `error`).
fn status_word(state: &str) -> &'static str {
    match state {
        SUCCESS | FAILURE => "COMPLETED",
        SUBMITTED | QUEUED => "IN_QUEUE",
        _ => IN_PROGRESS,
    }
}

/// The task in fal's status shape, from uniapi's store (also what callbacks carry, with the payload).
pub fn dto(task: &TaskRow) -> Value {
    let mut out = status_dto(task, true);
    match task.state.as_str() {
        SUCCESS => out["payload"] = task.result.clone().unwrap_or(Value::Null),
        FAILURE => out["error"] = json!(task.fail_reason.clone().unwrap_or_default()),
        _ => {}
    }
    out
}

fn status_dto(task: &TaskRow, logs: bool) -> Value {
    let mut out = urls(task);
    let word = status_word(&task.state);
    out["status"] = json!(word);
    if word == "IN_QUEUE" {
        out["queue_position"] = task
            .raw
            .as_ref()
            .and_then(|r| r.get("queue_position").cloned())
            .unwrap_or(json!(0));
    }
    out["logs"] = if logs {
        task.raw
            .as_ref()
            .and_then(|r| r.get("logs").filter(|l| l.is_array()).cloned())
            .unwrap_or(json!([]))
    } else {
        Value::Null
    };
    out["metrics"] = task
        .raw
        .as_ref()
        .and_then(|r| r.get("metrics").filter(|m| m.is_object()).cloned())
        .unwrap_or(json!({}));
    if task.state == FAILURE {
        out["error"] = json!(task.fail_reason.clone().unwrap_or_default());
    }
    out
}

enum Fetch {
    Status { logs: bool },
    Result,
}

async fn fetch(
    state: &AppState,
    key: &std::sync::Arc<ApiKey>,
    model: &str,
    id: &str,
    _headers: &HeaderMap,
    what: Fetch,
) -> Response {
    let task = match owned_task(state, key, FAMILY, id).await {
        // polled under the full model path or its app (fal's sub-path rule)
        Ok(task) if app_of(&task.action) == app_of(model) => task,
        Ok(_) => return refused(Refusal::not_found()),
        Err(refusal) => return refused(refusal),
    };
    match what {
        Fetch::Status { logs } => axum::Json(status_dto(&task, logs)).into_response(),
        Fetch::Result => match task.state.as_str() {
            SUCCESS => axum::Json(task.result.clone().unwrap_or(json!({}))).into_response(),
            FAILURE => {
                let status = task
                    .result
                    .as_ref()
                    .and_then(|r| r["status_code"].as_u64())
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (
                    status,
                    axum::Json(json!({
                        "detail": task.fail_reason.clone().unwrap_or_else(|| "the request failed".into()),
                        "status": "FAILURE",
                    })),
                )
                    .into_response()
            }
            _ => error(
                StatusCode::BAD_REQUEST,
                "request_in_progress",
                "Request is still in progress",
            ),
        },
    }
}

/// The upstream URL of one task's status (or result): fal polls by app, not by full model path.
fn upstream_url(channel: &Channel, task: &TaskRow, status: bool) -> String {
    let base = format!(
        "{}/{}/requests/{}",
        channel.base_url,
        app_of(&task.action),
        task.upstream_id
    );
    if status {
        format!("{base}/status?logs=1")
    } else {
        base
    }
}

/// `step k/n` in the last log line, as a percentage.
fn progress_of(logs: &Value) -> Option<String> {
    let last = logs
        .as_array()?
        .iter()
        .rev()
        .find_map(|l| l["message"].as_str())?;
    let (k, n) = last.rsplit(' ').next()?.split_once('/')?;
    let (k, n): (u64, u64) = (k.parse().ok()?, n.parse().ok()?);
    (n > 0).then(|| format!("{}%", (k * 100 / n).min(99)))
}

enum Probe {
    Seen(Observed),
    Limited(u64),
    Unknown,
}

async fn get(
    state: &AppState,
    url: String,
    key: &UpstreamKey,
) -> Option<(StatusCode, Option<u64>, Value)> {
    let request = state
        .upstream
        .client
        .get(url)
        .header(header::AUTHORIZATION, format!("Key {}", key.secret));
    let response = tokio::time::timeout(std::time::Duration::from_secs(15), request.send())
        .await
        .ok()?
        .ok()?;
    let status = response.status();
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.bytes().await.ok()?;
    Some((
        status,
        retry,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

/// Status, then the result once COMPLETED.
async fn probe(state: &AppState, channel: &Channel, task: &TaskRow) -> Probe {
    let Some(key) = channel.pick_key() else {
        return Probe::Unknown;
    };
    let Some((status, retry, answer)) = get(state, upstream_url(channel, task, true), key).await
    else {
        return Probe::Unknown;
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Probe::Limited(retry.unwrap_or(5));
    }
    if status == StatusCode::NOT_FOUND {
        let mut seen = observed(task, FAILURE, &answer);
        seen.fail_reason = Some("the upstream no longer knows this request".into());
        return Probe::Seen(seen);
    }
    if !status.is_success() {
        return Probe::Unknown;
    }
    let word = answer["status"].as_str().unwrap_or("");
    let mut seen = match word {
        "IN_QUEUE" => observed(task, QUEUED, &answer),
        "IN_PROGRESS" => {
            let mut seen = observed(task, IN_PROGRESS, &answer);
            if let Some(p) = progress_of(&answer["logs"]) {
                seen.progress = p;
            }
            seen
        }
        "COMPLETED" | "FAILED" | "CANCELED" | "CANCELLED" => {
            let Some((status, retry, result)) =
                get(state, upstream_url(channel, task, false), key).await
            else {
                return Probe::Unknown;
            };
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Probe::Limited(retry.unwrap_or(5));
            }
            if matches!(status.as_u16(), 502..=504) {
                return Probe::Unknown;
            }
            if status.is_success() && word == "COMPLETED" {
                let mut seen = observed(task, SUCCESS, &answer);
                seen.progress = "100%".into();
                seen.result = Some(result);
                seen
            } else {
                let mut seen = observed(task, FAILURE, &answer);
                seen.fail_reason = Some(
                    detail(&result)
                        .or_else(|| answer["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("the request ended {word}")),
                );
                seen.result =
                    Some(json!({"status_code": status.as_u16(), "detail": result["detail"]}));
                seen
            }
        }
        _ => return Probe::Unknown,
    };
    seen.raw = answer;
    Probe::Seen(seen)
}

fn observed(task: &TaskRow, state: &'static str, raw: &Value) -> Observed {
    Observed {
        upstream_id: task.upstream_id.clone(),
        state,
        progress: if state == SUCCESS {
            "100%".into()
        } else {
            task.progress.clone()
        },
        result: None,
        raw: raw.clone(),
        fail_reason: None,
    }
}

/// Polls each due task of a channel (status, then result), a few at a time.
pub async fn poll(state: &AppState, channel: &Channel, tasks: &[TaskRow]) -> PollOutcome {
    let mut probes = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(POLL_CONCURRENCY) {
        probes.extend(
            futures_util::future::join_all(chunk.iter().map(|task| probe(state, channel, task)))
                .await,
        );
    }
    let mut seen = Vec::new();
    for probe in probes {
        match probe {
            Probe::Seen(o) => seen.push(o),
            Probe::Limited(secs) if seen.is_empty() => return PollOutcome::RateLimited(secs),
            _ => {}
        }
    }
    PollOutcome::Observed(seen)
}
