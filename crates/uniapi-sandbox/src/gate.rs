//! The gate every `/v1` call passes: read the body once, journal it, check the bearer key,
//! resolve fault rules and `x-sandbox-*` knobs, wait the latency, then hand a `Call` to the
//! handler (or answer the injected error).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::body::ParsedBody;
use crate::error::ApiError;
use crate::fault::{CallPlan, FaultRule, HeaderKnobs};
use crate::journal::JournalEntry;
use crate::state::{SandboxState, unix_now};

/// Largest accepted body: image edits may carry 16 images of up to 50 MB in the real API; the
/// sandbox only needs enough for tests and demos.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// What a handler gets for one admitted call.
pub struct Call {
    pub body: ParsedBody,
    pub plan: CallPlan,
    /// Seed for this call's ids.
    pub seed: u64,
    pub created: u64,
}

pub async fn gate(
    State(state): State<Arc<SandboxState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return ApiError::not_found(parts.method.as_str(), path).into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "Request body too large for the sandbox.",
        )
        .into_response();
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = ParsedBody::parse(content_type, bytes).await;
    tracing::debug!(method = %parts.method, path, bytes = body.bytes.len(), "sandbox call");
    state.journal.record(JournalEntry::new(&parts, &body));

    let auth = authorize(&state.keys, &parts.headers);
    let knobs = HeaderKnobs::parse(&parts.headers);
    // Fault rules are only consumed by calls that would otherwise have been served.
    let rule = match (&auth, &knobs) {
        (Ok(()), Ok(_)) => state.faults.take(path),
        _ => None,
    };
    let plan = CallPlan::resolve(
        &state.live,
        knobs.as_ref().unwrap_or(&HeaderKnobs::default()),
        rule.as_ref(),
    );
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    if let Err(err) = auth {
        return err.into_response();
    }
    if let Err(err) = knobs {
        return err.into_response();
    }
    if let Some(err) = plan.fail.clone() {
        return err.into_response();
    }
    let call = Call {
        seed: state.call_seed(&body.bytes),
        created: unix_now(),
        body,
        plan,
    };
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(Arc::new(call));
    next.run(request).await
}

/// How one task family authenticates callers and shapes its errors: all that differs between the
/// families' gates.
pub struct Family {
    pub name: &'static str,
    /// The upstream key a call carries, in this family's header.
    pub key: fn(&HeaderMap) -> Option<&str>,
    /// The family's error answer (`status`, a machine code, a message).
    pub error: fn(StatusCode, &str, &str) -> Response,
    /// Largest accepted body.
    pub max_body: usize,
}

pub type FamilyState = (Arc<SandboxState>, &'static Family);

/// The gate of a task family's routes: read the body once, journal it, check the family's key,
/// resolve fault rules and `x-sandbox-*` knobs, wait the latency, answer any injected error in the
/// family's envelope (or the rule's own `body`), then hand a `Call` to the handler.
pub async fn family_gate(
    State((state, family)): State<FamilyState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, family.max_body).await else {
        return (family.error)(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "request body too large",
        );
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = ParsedBody::parse(content_type, bytes).await;
    let path = parts.uri.path();
    tracing::debug!(family = family.name, method = %parts.method, path, bytes = body.bytes.len(), "sandbox call");
    state.journal.record(JournalEntry::new(&parts, &body));

    let authorized = (family.key)(&parts.headers).is_some_and(|key| {
        state.keys.iter().any(|k| k == key) || crate::kling::jwt_accepted(&state, family.name, key)
    });
    let knobs = HeaderKnobs::parse(&parts.headers);
    // Fault rules are only consumed by calls that would otherwise have been served.
    let rule = if authorized && knobs.is_ok() {
        state.faults.take(path)
    } else {
        None
    };
    let plan = CallPlan::resolve(
        &state.live,
        knobs.as_ref().unwrap_or(&HeaderKnobs::default()),
        rule.as_ref(),
    );
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    if !authorized {
        return (family.error)(StatusCode::UNAUTHORIZED, "unauthorized", "invalid key");
    }
    let Ok(knobs) = knobs else {
        return (family.error)(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid x-sandbox header",
        );
    };
    if let Some(response) = injected(family, rule.as_ref(), &knobs) {
        return response;
    }
    let call = Call {
        seed: state.call_seed(&body.bytes),
        created: unix_now(),
        body,
        plan,
    };
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(Arc::new(call));
    next.run(request).await
}

/// The error a fault rule (first) or the `x-sandbox-fail-status` header asks for, in the family's
/// envelope unless the rule carries its own `body`.
fn injected(family: &Family, rule: Option<&FaultRule>, knobs: &HeaderKnobs) -> Option<Response> {
    let from_rule = rule.and_then(|r| {
        let status = r.status.and_then(|s| StatusCode::from_u16(s).ok())?;
        Some((status, r.retry_after, r.body.clone()))
    });
    let (status, retry_after, body) =
        from_rule.or_else(|| knobs.fail_status.map(|s| (s, knobs.retry_after, None)))?;
    let mut response = match body {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => (family.error)(status, "injected", "injected"),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Some(response)
}

/// The token of `Authorization: Bearer <token>`, for every family's gate.
pub(crate) fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|key| !key.is_empty())
}

fn authorize(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = bearer_key(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
        .code("invalid_api_key"));
    };
    if keys.iter().any(|k| k == key) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        format!("Incorrect API key provided: {}.", mask_key(key)),
    )
    .code("invalid_api_key"))
}

/// Shows at most five leading characters, and never more than half the key.
fn mask_key(key: &str) -> String {
    let shown = (key.chars().count() / 2).min(5);
    let prefix: String = key.chars().take(shown).collect();
    format!("{prefix}***")
}

/// Fallback for unknown paths (under `/v1` it runs behind the gate, so after auth).
pub async fn unknown_route(method: Method, uri: Uri) -> Response {
    ApiError::not_found(method.as_str(), uri.path()).into_response()
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Method not allowed ({method} {}).", uri.path()),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_key_never_reveals_the_whole_key() {
        assert_eq!(mask_key("sk-abcdefghijkl"), "sk-ab***");
        assert_eq!(mask_key("abcd"), "ab***");
        assert_eq!(mask_key("x"), "***");
    }
}
