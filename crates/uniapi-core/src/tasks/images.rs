//! `POST /v1/images/generations` for models a `jimeng` or `fal` channel serves (and no `openai` channel
//! does): the OpenAI request is translated to the family's task API, the upstream task is awaited, and the
//! images come back in the OpenAI shape. Synchronous for the client, charged once on success (the price
//! of the model name the client used: `per_image` × images delivered, plus any `per_call`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fal;
use super::jimeng;
use super::submit::find_price;
use crate::auth;
use crate::billing::{Units, cost, usd_string};
use crate::catalog::{ApiKey, Channel, ChannelKind};
use crate::relay::body::read_limited;
use crate::relay::{CallContext, order_candidates};
use crate::state::AppState;
use crate::store::logs::JsonText;
use crate::store::now_ms;

const PATH: &str = "/v1/images/generations";
/// Longest a client waits for the upstream task (image models finish in seconds to a minute).
const MAX_WAIT: Duration = Duration::from_secs(300);
const MAX_IMAGES: u64 = 10;

/// Answers the request when a jimeng or fal channel serves its model (and no openai channel does);
/// otherwise hands the request back, body intact, for the OpenAI relay.
pub async fn take(state: &AppState, request: Request) -> Result<Response, Request> {
    let key = {
        let catalog = state.catalog.load();
        match auth::authenticate(&catalog, auth::bearer(request.headers())) {
            Ok(key) => key,
            Err(_) => return Err(request),
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(e.into_response()),
    };
    let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let model = parsed["model"].as_str().unwrap_or("").to_string();
    let family = {
        let catalog = state.catalog.load();
        if model.is_empty() || !catalog.channels_for(&model).is_empty() {
            None
        } else if catalog
            .channels_of_kind(ChannelKind::Jimeng)
            .iter()
            .any(|c| lists(c, &model))
        {
            Some(ChannelKind::Jimeng)
        } else if catalog
            .channels_of_kind(ChannelKind::Fal)
            .iter()
            .any(|c| lists(c, &model))
        {
            Some(ChannelKind::Fal)
        } else {
            None
        }
    };
    let Some(kind) = family else {
        return Err(Request::from_parts(parts, Body::from(bytes)));
    };
    Ok(generate(state, key, kind, &model, &parsed).await)
}

/// A channel lists a model by name in `models` or `model_map` (an empty fal channel does not claim
/// every OpenAI model name).
fn lists(channel: &Channel, model: &str) -> bool {
    channel.public_models().any(|m| m == model)
}

/// The OpenAI error envelope.
fn error(
    status: StatusCode,
    code: &str,
    param: Option<&str>,
    message: impl Into<String>,
) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        axum::Json(json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

/// What the client asked for, checked.
struct Ask {
    prompt: String,
    n: u64,
    size: Option<(u64, u64)>,
    b64: bool,
    images: Vec<String>,
}

/// The checked request, or the bad parameter and why.
fn ask(body: &Value) -> Result<Ask, (&'static str, &'static str)> {
    let bad = |param: &'static str, message: &'static str| (param, message);
    let prompt = body["prompt"]
        .as_str()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("prompt", "`prompt` is required"))?;
    let n = match &body["n"] {
        Value::Null => 1,
        v => v
            .as_u64()
            .filter(|n| (1..=MAX_IMAGES).contains(n))
            .ok_or_else(|| bad("n", "`n` must be an integer from 1 to 10"))?,
    };
    let size = match &body["size"] {
        Value::Null => None,
        Value::String(s) if s == "auto" => None,
        Value::String(s) => {
            let parsed = s
                .split_once(['x', '*', 'X'])
                .and_then(|(w, h)| {
                    Some((w.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?))
                })
                .filter(|(w, h)| (64..=8192).contains(w) && (64..=8192).contains(h));
            Some(parsed.ok_or_else(|| bad("size", "`size` must look like 1024x1024"))?)
        }
        _ => return Err(bad("size", "`size` must look like 1024x1024")),
    };
    let b64 = match body["response_format"].as_str() {
        None | Some("url") => false,
        Some("b64_json") => true,
        Some(_) => {
            return Err(bad(
                "response_format",
                "`response_format` must be url or b64_json",
            ));
        }
    };
    let images = match &body["image"] {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("image", "`image` must be a list of image URLs"))?,
        _ => return Err(bad("image", "`image` must be a list of image URLs")),
    };
    if images
        .iter()
        .any(|u| !(u.starts_with("https://") || u.starts_with("http://")))
    {
        return Err(bad("image", "`image` must be a list of http(s) image URLs"));
    }
    Ok(Ask {
        prompt: prompt.to_string(),
        n,
        size,
        b64,
        images,
    })
}

/// How one attempt on one channel ended.
enum Attempt {
    /// The images (URLs or base64), in the order the upstream gave them.
    Done(Vec<Image>),
    /// The request's fault or the task failed: no other channel is tried.
    Refused(StatusCode, String, String),
    /// Try the next channel.
    Next(String),
}

enum Image {
    Url(String),
    B64(String),
}

async fn generate(
    state: &AppState,
    key: Arc<ApiKey>,
    kind: ChannelKind,
    model: &str,
    body: &Value,
) -> Response {
    let ctx = CallContext::new(key.clone(), &Method::POST, PATH);
    if !key.may_use(model) {
        return error(
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            Some("model"),
            format!("This API key is not allowed to use the model `{model}`."),
        );
    }
    let ask = match ask(body) {
        Ok(ask) => ask,
        Err((param, message)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some(param),
                message,
            );
        }
    };
    let Some((price_name, price)) = find_price(state, &[model.to_string()]) else {
        return error(
            StatusCode::FORBIDDEN,
            "model_price_missing",
            Some("model"),
            format!(
                "The model `{model}` has no price set, so this gateway does not serve it. Ask the operator to set one."
            ),
        );
    };
    let candidates: Vec<Arc<Channel>> = {
        let catalog = state.catalog.load();
        order_candidates(catalog.channels_of_kind(kind), now_ms())
            .into_iter()
            .filter(|c| lists(c, model))
            .collect()
    };
    let units = |images: u64| Units {
        images,
        calls: 1,
        ..Default::default()
    };
    let _permit = match super::submit::admit_logged(state, &ctx, &price_name) {
        Ok(permit) => permit,
        Err(limited) => return axum::response::IntoResponse::into_response(limited),
    };
    let (amount, _) = cost(&price, &units(ask.n));
    state.backlog_room().await;
    let Ok(reservation) = state.ledger.reserve(&ctx.id, key.user_id, key.id, amount) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            None,
            format!(
                "your balance or this key's cap cannot cover this request (${})",
                usd_string(amount)
            ),
        );
    };
    let mut last_failure = String::from("no channel answered");
    for channel in candidates.iter().take(state.config.routing.max_attempts) {
        let Some(upstream_key) = channel.pick_key() else {
            continue;
        };
        let attempt = match kind {
            ChannelKind::Jimeng => {
                via_jimeng(state, channel, &upstream_key.secret, model, &ask).await
            }
            _ => via_fal(state, channel, &upstream_key.secret, model, &ask).await,
        };
        match attempt {
            Attempt::Next(reason) => {
                channel
                    .health
                    .record_failure(&state.config.routing, now_ms());
                last_failure = reason;
            }
            Attempt::Refused(status, code, message) => {
                channel.health.record_success();
                reservation.release();
                let mut log = ctx.log(Some(model), status, "failed", Some(message.clone()));
                log.channel_id = Some(channel.id);
                state.logs.record(log);
                return error(status, &code, None, message);
            }
            Attempt::Done(mut images) => {
                channel.health.record_success();
                images.truncate(usize::try_from(ask.n).unwrap_or(1));
                let delivered = u64::try_from(images.len()).unwrap_or(0);
                let (charged, _) = cost(&price, &units(delivered));
                reservation.capture(charged, 0);
                let mut log = ctx.log(Some(model), StatusCode::OK, "complete", None);
                log.channel_id = Some(channel.id);
                log.cost_nano = charged;
                log.cost_detail =
                    JsonText::of(&json!({"units": units(delivered), "price": price_name}));
                state.logs.record(log);
                let data: Vec<Value> = images
                    .into_iter()
                    .map(|image| match image {
                        Image::Url(url) => json!({"url": url, "revised_prompt": ask.prompt}),
                        Image::B64(b64) => json!({"b64_json": b64, "revised_prompt": ask.prompt}),
                    })
                    .collect();
                let created = now_ms() / 1000;
                let mut response =
                    axum::Json(json!({"created": created, "data": data})).into_response();
                if let Ok(id) = ctx.id.parse() {
                    response.headers_mut().insert("x-uniapi-request-id", id);
                }
                return response;
            }
        }
    }
    reservation.release();
    let mut log = ctx.log(
        Some(model),
        StatusCode::BAD_GATEWAY,
        "failed",
        Some(last_failure.clone()),
    );
    log.latency_ms = log.latency_ms.max(1);
    state.logs.record(log);
    error(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        None,
        format!(
            "no {} channel produced the images: {last_failure}",
            kind.as_str()
        ),
    )
}

async fn send(request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), String> {
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .map_err(|_| "the upstream did not answer".to_string())?
        .map_err(|_| "the upstream did not answer".to_string())?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|_| "the upstream's answer was cut".to_string())?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn fails_over(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
}

/// A pause between polls that grows from 250 ms to 2 s.
fn pause(round: u32) -> Duration {
    Duration::from_millis((250u64 << round.min(3)).min(2_000))
}

async fn via_jimeng(
    state: &AppState,
    channel: &Channel,
    secret: &str,
    model: &str,
    ask: &Ask,
) -> Attempt {
    let req_key = channel.upstream_model(model).to_string();
    let mut submit = json!({"req_key": req_key, "prompt": ask.prompt});
    if let Some((w, h)) = ask.size {
        submit["width"] = json!(w);
        submit["height"] = json!(h);
    }
    if ask.n == 1 {
        submit["force_single"] = json!(true);
    }
    if !ask.images.is_empty() {
        submit["image_urls"] = json!(ask.images);
    }
    let client = &state.upstream.client;
    let Some(request) = jimeng::request(client, &channel.base_url, secret, jimeng::SUBMIT, &submit)
    else {
        return Attempt::Next("the channel's key is not ACCESS_KEY|SECRET_KEY".into());
    };
    let (status, answer) = match send(request).await {
        Ok(answer) => answer,
        Err(reason) => return Attempt::Next(reason),
    };
    if fails_over(status) {
        return Attempt::Next(format!("the upstream answered {status}"));
    }
    let task_id = match (answer["code"].as_i64(), answer["data"]["task_id"].as_str()) {
        (Some(10000), Some(id)) if status.is_success() => id.to_string(),
        _ => {
            return Attempt::Refused(
                StatusCode::BAD_REQUEST,
                "upstream_refused".into(),
                format!(
                    "the upstream refused the request: {}",
                    answer["message"].as_str().unwrap_or("no reason given")
                ),
            );
        }
    };
    let query = json!({
        "req_key": req_key,
        "task_id": task_id,
        "req_json": json!({"return_url": !ask.b64}).to_string(),
    });
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < MAX_WAIT {
        tokio::time::sleep(pause(round)).await;
        round += 1;
        let Some(request) = jimeng::request(
            client,
            &channel.base_url,
            secret,
            jimeng::GET_RESULT,
            &query,
        ) else {
            return Attempt::Next("the channel's key is not ACCESS_KEY|SECRET_KEY".into());
        };
        let Ok((status, answer)) = send(request).await else {
            continue;
        };
        if fails_over(status) && status != StatusCode::UNAUTHORIZED {
            continue;
        }
        if answer["code"].as_i64() != Some(10000) {
            return Attempt::Refused(
                StatusCode::BAD_GATEWAY,
                "upstream_task_failed".into(),
                format!(
                    "the image task failed upstream: {}",
                    answer["message"].as_str().unwrap_or("no reason given")
                ),
            );
        }
        match answer["data"]["status"].as_str() {
            Some("done") => {
                let data = &answer["data"];
                let strings = |field: &str| -> Vec<String> {
                    data[field]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let images: Vec<Image> = if ask.b64 {
                    strings("binary_data_base64")
                        .into_iter()
                        .map(Image::B64)
                        .collect()
                } else {
                    strings("image_urls").into_iter().map(Image::Url).collect()
                };
                if images.is_empty() {
                    return Attempt::Refused(
                        StatusCode::BAD_GATEWAY,
                        "upstream_task_failed".into(),
                        "the image task ended without images".into(),
                    );
                }
                return Attempt::Done(images);
            }
            Some("not_found" | "expired") => {
                return Attempt::Refused(
                    StatusCode::BAD_GATEWAY,
                    "upstream_task_failed".into(),
                    "the upstream lost the image task".into(),
                );
            }
            _ => {}
        }
    }
    Attempt::Refused(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout".into(),
        "the image task did not finish in time".into(),
    )
}

async fn via_fal(
    state: &AppState,
    channel: &Channel,
    secret: &str,
    model: &str,
    ask: &Ask,
) -> Attempt {
    let path = channel.upstream_model(model).to_string();
    let path = if path.starts_with("fal-ai/") {
        path
    } else {
        format!("fal-ai/{path}")
    };
    let mut input = json!({"prompt": ask.prompt, "num_images": ask.n});
    if let Some((w, h)) = ask.size {
        input["image_size"] = json!({"width": w, "height": h});
    }
    if ask.b64 {
        // fal answers data URIs in sync mode
        input["sync_mode"] = json!(true);
    }
    if let Some(first) = ask.images.first() {
        input["image_url"] = json!(first);
    }
    let client = &state.upstream.client;
    let auth = format!("Key {secret}");
    let request = client
        .post(format!("{}/{path}", channel.base_url))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(input.to_string());
    let (status, answer) = match send(request).await {
        Ok(answer) => answer,
        Err(reason) => return Attempt::Next(reason),
    };
    if fails_over(status) {
        return Attempt::Next(format!("the upstream answered {status}"));
    }
    let Some(id) = answer["request_id"]
        .as_str()
        .filter(|id| status.is_success() && !id.is_empty())
    else {
        return Attempt::Refused(
            StatusCode::BAD_REQUEST,
            "upstream_refused".into(),
            format!(
                "the upstream refused the request: {}",
                fal::detail(&answer).unwrap_or_else(|| "no reason given".into())
            ),
        );
    };
    let base = format!("{}/{}/requests/{id}", channel.base_url, fal::app_of(&path));
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < MAX_WAIT {
        tokio::time::sleep(pause(round)).await;
        round += 1;
        let status_call = client
            .get(format!("{base}/status"))
            .header("authorization", &auth);
        let Ok((status, answer)) = send(status_call).await else {
            continue;
        };
        if !status.is_success() || answer["status"] != "COMPLETED" {
            continue;
        }
        let Ok((status, result)) = send(client.get(&base).header("authorization", &auth)).await
        else {
            continue;
        };
        if matches!(status.as_u16(), 429 | 502..=504) {
            continue;
        }
        if !status.is_success() {
            return Attempt::Refused(
                StatusCode::BAD_GATEWAY,
                "upstream_task_failed".into(),
                format!(
                    "the image task failed upstream: {}",
                    fal::detail(&result).unwrap_or_else(|| format!("status {status}"))
                ),
            );
        }
        let images: Vec<Image> = result["images"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["url"].as_str())
                    .map(|url| match url.strip_prefix("data:") {
                        Some(rest) if ask.b64 => {
                            Image::B64(rest.split_once(',').map_or(rest, |(_, b)| b).to_string())
                        }
                        _ => Image::Url(url.to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if images.is_empty() {
            return Attempt::Refused(
                StatusCode::BAD_GATEWAY,
                "upstream_task_failed".into(),
                "the image task ended without images".into(),
            );
        }
        return Attempt::Done(images);
    }
    Attempt::Refused(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout".into(),
        "the image task did not finish in time".into(),
    )
}

/// The admin channel test's free query for a fal or jimeng key.
pub fn probe_request(
    state: &AppState,
    kind: ChannelKind,
    base: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    let client = &state.upstream.client;
    let fal_probe = || {
        client
            .get(format!(
                "{base}/fal-ai/flux-1/requests/00000000-0000-4000-8000-000000000000/status"
            ))
            .header("authorization", format!("Key {secret}"))
    };
    match kind {
        ChannelKind::Jimeng => jimeng::request(
            client,
            base,
            secret,
            jimeng::GET_RESULT,
            &json!({"req_key": "jimeng_t2i_v40", "task_id": "0"}),
        )
        .unwrap_or_else(fal_probe),
        _ => fal_probe(),
    }
}
