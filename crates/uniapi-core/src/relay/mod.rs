//! The relay: pick candidate channels for a model, try them in order until one answers, and pass the
//! answer through as it arrives. Phases of one request:
//!   1. the family handler authenticates and reads what routing needs (model, stream) -> `Outbound`
//!   2. `order_candidates`: priority, then weighted shuffle, channels in cool-down last
//!   3. `attempt` per channel: send, wait for the head and the first body byte; fail over on
//!      connect errors, timeouts, 429, 5xx, 401/403 — never after a byte reached the client
//!   4. `PassThrough` streams the rest to the client and writes the request log when it ends,
//!      whether it completed, the upstream cut it, or the client went away.
//!
//! Billing (reserve before step 3, capture/release in step 4) plugs in around `relay`.

pub mod body;
pub mod openai;
mod passthrough;
pub mod platform;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::Rng;

use crate::billing::bill::Bill;
use crate::catalog::{ApiKey, Channel, UpstreamKey, mask_secret};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::logs::{Attempt, RequestLog};
use crate::store::now_ms;
use crate::upstream::UpstreamBody;

pub use passthrough::SseStyle;

/// What one client request asks of an upstream, independent of the channel.
pub struct Outbound {
    pub method: Method,
    /// Path and query as sent to the upstream, e.g. `/v1/chat/completions`.
    pub path_and_query: String,
    pub model: String,
    pub stream: bool,
    pub content_type: Option<HeaderValue>,
    pub accept: Option<HeaderValue>,
    pub sse: SseStyle,
    /// Remove the usage chunk uniapi asked the upstream for: the client did not ask for it.
    pub strip_usage: bool,
    pub body: OutboundBody,
}

pub enum OutboundBody {
    Json(body::JsonBody),
    Form(body::FormBody),
}

impl OutboundBody {
    fn for_upstream(&self, upstream_model: &str) -> Bytes {
        match self {
            OutboundBody::Json(b) => b.for_upstream(upstream_model),
            OutboundBody::Form(f) => f.for_upstream(upstream_model),
        }
    }
}

/// Who is calling and since when: everything the request log needs besides the attempts.
#[derive(Clone)]
pub struct CallContext {
    pub id: String,
    pub started: Instant,
    pub created_at: i64,
    pub key: Arc<ApiKey>,
    pub method: String,
    pub path: String,
}

impl CallContext {
    pub fn new(key: Arc<ApiKey>, method: &Method, path: &str) -> CallContext {
        // written into a buffer, not through `format!` (~0.6k instructions)
        let mut uuid = [0u8; uuid::fmt::Simple::LENGTH];
        let uuid = uuid::Uuid::now_v7().simple().encode_lower(&mut uuid);
        let mut id = String::with_capacity(4 + uuid.len());
        id.push_str("req_");
        id.push_str(uuid);
        CallContext {
            id,
            started: Instant::now(),
            created_at: now_ms(),
            key,
            method: method.as_str().to_owned(),
            path: path.to_string(),
        }
    }

    /// A log record for this call; the relay fills in the outcome.
    pub fn log(
        &self,
        model: Option<&str>,
        status: StatusCode,
        outcome: &str,
        error: Option<String>,
    ) -> RequestLog {
        RequestLog {
            id: self.id.clone(),
            created_at: self.created_at,
            user_id: Some(self.key.user_id),
            key_id: Some(self.key.id),
            method: self.method.clone(),
            path: self.path.clone(),
            model: model.map(str::to_string),
            upstream_model: None,
            channel_id: None,
            status: status.as_u16(),
            stream: false,
            outcome: outcome.to_string(),
            attempts: Vec::new(),
            latency_ms: elapsed_ms(self.started),
            ttfb_ms: None,
            error,
            input_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            cost_nano: 0,
            cost_detail: None,
        }
    }

    /// Answers a request refused before any upstream call, and logs it.
    pub fn reject(&self, state: &AppState, model: Option<&str>, error: ApiError) -> Response {
        state
            .logs
            .record(self.log(model, error.status, "rejected", Some(error.message.clone())));
        let limited = error.code == Some("rate_limit_exceeded");
        let mut response = error.into_response();
        if limited {
            crate::billing::bill::rate_limit_headers(
                crate::billing::limits::Limiter::exhausted(self.key.limits),
                response.headers_mut(),
            );
        }
        with_request_id(response, &self.id)
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-uniapi-request-id"), value);
    }
    response
}

/// Records a log when dropped armed: the request future was cancelled because the client left while
/// the upstream was still being asked. The record is built only then (most requests never need it).
struct LeftEarly<'a> {
    sink: &'a crate::reqlog::LogSink,
    ctx: &'a CallContext,
    model: &'a str,
    armed: bool,
}

impl Drop for LeftEarly<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut log = self.ctx.log(
                Some(self.model),
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_gone",
                Some("the client closed the connection before the upstream answered".into()),
            );
            log.latency_ms = log.latency_ms.max(1);
            self.sink.record(log);
        }
    }
}

/// Candidates in the order they will be tried: highest priority first; within a priority, a weighted
/// random order; channels cooling down go last, so they are tried only when nothing else answers.
pub fn order_candidates(channels: &[Arc<Channel>], now_ms: i64) -> Vec<Arc<Channel>> {
    if let [only] = channels {
        return vec![only.clone()];
    }
    let mut rng = rand::rng();
    let (healthy, cooling): (Vec<_>, Vec<_>) = channels
        .iter()
        .cloned()
        .partition(|c| !c.health.is_cooling(now_ms));
    let mut ordered = Vec::with_capacity(channels.len());
    for mut group in [healthy, cooling] {
        group.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut start = 0;
        while start < group.len() {
            let priority = group[start].priority;
            let end = group[start..]
                .iter()
                .position(|c| c.priority != priority)
                .map_or(group.len(), |n| start + n);
            let mut tier: Vec<Arc<Channel>> = group[start..end].to_vec();
            while !tier.is_empty() {
                let total: i64 = tier.iter().map(|c| c.weight).sum();
                let mut pick = rng.random_range(0..total.max(1));
                let index = tier
                    .iter()
                    .position(|c| {
                        pick -= c.weight;
                        pick < 0
                    })
                    .unwrap_or(0);
                ordered.push(tier.swap_remove(index));
            }
            start = end;
        }
    }
    ordered
}

/// Why an attempt did not produce an answer for the client.
struct Failure {
    status: Option<StatusCode>,
    reason: String,
    retry_after: Option<u64>,
}

/// An upstream answer the client will get: head received and first body bytes in hand.
pub(crate) struct Answer {
    head: axum::http::response::Parts,
    body: UpstreamBody,
    first: Option<Bytes>,
}

/// Statuses after which another channel is tried: the request may succeed elsewhere.
fn fails_over(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status.is_server_error()
}

const ERROR_EXCERPT: usize = 300;

async fn attempt(
    state: &AppState,
    out: &Outbound,
    channel: &Channel,
    key: &UpstreamKey,
    upstream_model: &str,
) -> Result<Answer, Failure> {
    let Some(uri) = channel.uri(&out.path_and_query) else {
        return Err(Failure {
            status: None,
            reason: "the channel's base URL is not a valid URL".into(),
            retry_after: None,
        });
    };
    let Some(authorization) = key.authorization.clone() else {
        return Err(Failure {
            status: None,
            reason: "the channel key holds characters an HTTP header cannot carry".into(),
            retry_after: None,
        });
    };
    let mut request = axum::http::Request::new(http_body_util::Full::new(
        out.body.for_upstream(upstream_model),
    ));
    *request.method_mut() = out.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Some(host) = &channel.host {
        headers.insert(header::HOST, host.clone());
    }
    headers.insert(header::AUTHORIZATION, authorization);
    if let Some(ct) = &out.content_type {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    headers.insert(
        header::ACCEPT,
        out.accept
            .clone()
            .unwrap_or(HeaderValue::from_static("*/*")),
    );
    let deadline = tokio::time::Instant::now() + state.upstream.first_byte_timeout;
    let timed_out = || Failure {
        status: None,
        reason: "timed out waiting for the first byte".into(),
        retry_after: None,
    };
    let response = tokio::time::timeout_at(deadline, state.upstream.relay.request(request))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| Failure {
            status: None,
            reason: describe_transport(&e),
            retry_after: None,
        })?;
    let (head, body) = response.into_parts();
    let mut body = UpstreamBody::new(body, state.upstream.idle_timeout);
    let status = head.status;
    if fails_over(status) {
        let retry_after = head
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let excerpt = tokio::time::timeout(std::time::Duration::from_secs(2), body.chunk())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|b| scrub(&String::from_utf8_lossy(&b), &key.secret))
            .unwrap_or_default();
        return Err(Failure {
            status: Some(status),
            reason: format!("upstream answered {status}: {excerpt}"),
            retry_after,
        });
    }
    let first = tokio::time::timeout_at(deadline, body.chunk())
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| Failure {
            status: None,
            reason: "the upstream broke the response before its first byte".into(),
            retry_after: None,
        })?;
    Ok(Answer { head, body, first })
}

/// An upstream's error text for the operator's log: our key masked (some upstreams echo it), and short.
fn scrub(text: &str, secret: &str) -> String {
    let masked = if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, &mask_secret(secret))
    };
    masked.chars().take(ERROR_EXCERPT).collect()
}

fn describe_transport(e: &crate::upstream::RelayError) -> String {
    if e.is_connect() {
        "connection to the upstream failed".into()
    } else {
        "the upstream request failed".into()
    }
}

/// Tries the candidates for `out.model` and answers with the first usable upstream response.
pub async fn relay(state: &AppState, ctx: CallContext, out: Outbound, bill: Bill) -> Response {
    let catalog = state.catalog.load();
    let candidates = order_candidates(catalog.channels_for(&out.model), now_ms());
    drop(catalog);
    if candidates.is_empty() {
        bill.release();
        return ctx.reject(
            state,
            Some(&out.model),
            ApiError::model_not_found(&out.model),
        );
    }
    let routing = &state.config.routing;
    let limits = bill.remaining();
    // a client that leaves while the upstream is still being asked is logged (its hold is released)
    let mut left_early = LeftEarly {
        sink: &state.logs,
        ctx: &ctx,
        model: &out.model,
        armed: true,
    };
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut all_rate_limited = true;
    let mut retry_after: Option<u64> = None;
    for channel in candidates.iter().take(routing.max_attempts) {
        let Some(key) = channel.pick_key() else {
            all_rate_limited = false;
            attempts.push(Attempt {
                channel_id: channel.id,
                channel: channel.name.clone(),
                key_hint: String::new(),
                status: None,
                error: Some("no enabled upstream key".into()),
                elapsed_ms: 0,
            });
            continue;
        };
        let upstream_model = channel.upstream_model(&out.model).to_string();
        let started = Instant::now();
        let result = attempt(state, &out, channel, key, &upstream_model).await;
        let elapsed = elapsed_ms(started);
        match result {
            Ok(answer) => {
                channel.health.record_success();
                attempts.push(Attempt {
                    channel_id: channel.id,
                    channel: channel.name.clone(),
                    key_hint: key.hint().to_string(),
                    status: Some(answer.head.status.as_u16()),
                    error: None,
                    elapsed_ms: elapsed,
                });
                let mut log = ctx.log(Some(&out.model), answer.head.status, "complete", None);
                log.upstream_model = Some(upstream_model);
                log.channel_id = Some(channel.id);
                log.stream = out.stream;
                log.attempts = attempts;
                log.ttfb_ms = Some(elapsed_ms(ctx.started));
                // from here the pass-through logs the request, however it ends
                left_early.armed = false;
                let mut response =
                    passthrough::respond(state.logs.clone(), ctx.started, log, answer, &out, bill)
                        .await;
                crate::billing::bill::rate_limit_headers(limits, response.headers_mut());
                return with_request_id(response, &ctx.id);
            }
            Err(failure) => {
                if failure.status != Some(StatusCode::TOO_MANY_REQUESTS) {
                    all_rate_limited = false;
                } else if let Some(seconds) = failure.retry_after {
                    retry_after = Some(retry_after.map_or(seconds, |r| r.min(seconds)));
                }
                if failure.status == Some(StatusCode::UNAUTHORIZED) {
                    disable_key(state, channel, key);
                }
                if let Some(cooldown) = channel.health.record_failure(routing, now_ms()) {
                    tracing::warn!(channel = %channel.name, cooldown_ms = cooldown, reason = %failure.reason,
                        "channel keeps failing; taken out of rotation for a cool-down");
                }
                tracing::info!(request = %ctx.id, channel = %channel.name, reason = %failure.reason, "upstream attempt failed");
                attempts.push(Attempt {
                    channel_id: channel.id,
                    channel: channel.name.clone(),
                    key_hint: key.hint().to_string(),
                    status: failure.status.map(|s| s.as_u16()),
                    error: Some(failure.reason),
                    elapsed_ms: elapsed,
                });
            }
        }
    }
    let error = if all_rate_limited {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            "Every upstream provider for this model is rate-limited right now. Please retry later.",
        )
        .with_retry_after(retry_after.or(Some(1)))
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Some("upstream_unavailable"),
            format!(
                "No upstream provider could answer this request ({} attempts). Nothing was charged.",
                attempts.len()
            ),
        )
    };
    bill.release();
    left_early.armed = false;
    let mut log = ctx.log(
        Some(&out.model),
        error.status,
        "failed",
        Some(error.message.clone()),
    );
    log.stream = out.stream;
    log.attempts = attempts;
    state.logs.record(log);
    with_request_id(error.into_response(), &ctx.id)
}

/// An upstream 401 means the key is bad: stop using it now, persist that, and tell the operator.
fn disable_key(state: &AppState, channel: &Channel, key: &UpstreamKey) {
    if !key
        .enabled
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    tracing::error!(channel = %channel.name, key = %mask_secret(&key.secret),
        "upstream rejected the channel key (401); the key is disabled until an operator fixes it");
    let state = state.clone();
    let key_id = key.id;
    tokio::spawn(async move {
        let reason = format!("upstream answered 401 at {}", now_ms());
        if let Err(e) = state.store.disable_channel_key(key_id, &reason).await {
            tracing::error!(error = %e, "could not persist a disabled upstream key");
        }
        if let Err(e) = state.reload().await {
            tracing::error!(error = %e, "reloading the catalog failed");
        }
    });
}

/// Copies the response headers a client may need; hop-by-hop headers and the channel's own rate-limit
/// headers (they describe the operator's account, not the caller's) stay behind.
pub(crate) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    // names, not strings: a lookup by `&str` parses the name again on every call (8 a request)
    const PASS: [HeaderName; 8] = [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_DISPOSITION,
        header::CACHE_CONTROL,
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("openai-processing-ms"),
        HeaderName::from_static("openai-version"),
    ];
    for name in PASS {
        if let Some(value) = from.get(&name) {
            to.insert(name, value.clone());
        }
    }
}
