//! Ideogram (the legacy v1 API under `/ideogram`): `generate` (JSON `{"image_request":{...}}`),
//! `remix` and `upscale` (multipart `image_request` + `image_file`) and `describe` (multipart
//! `image_file`). Synchronous: no task rows; each call is charged through
//! [`charged_call`](super::submit::charged_call) — reserved from the request (`per_image` × the
//! `num_images` asked for, plus `per_call`), captured when the upstream answers 2xx, released otherwise.
//! Client auth: `Api-Key: <key>` or Bearer; errors in the OpenAI envelope. Upstream: `{base}/<op>`
//! with `Api-Key: <channel key>`, the body forwarded byte for byte (multipart parts as sent).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::imagecheck::is_image;
use super::submit::{ChargedCall, Upstream, charged_call};
use crate::auth;
use crate::billing::Units;
use crate::catalog::{ApiKey, Channel, ChannelKind, UpstreamKey};
use crate::relay::body::{FormBody, read_limited, require_multipart};
use crate::state::AppState;

/// Images one call may ask for (Ideogram's own limit).
const MAX_IMAGES: u64 = 8;

pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for op in ["generate", "remix", "upscale", "describe"] {
        router = router.route(
            &format!("/ideogram/{op}"),
            post(move |state, request| call(state, request, op)),
        );
    }
    router
}

/// The OpenAI error envelope.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 if code == "insufficient_quota" => "insufficient_quota",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    (
        status,
        axum::Json(json!({"error": {
            "message": message.into(),
            "type": kind,
            "param": null,
            "code": code,
        }})),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// `Api-Key: <key>` (Ideogram's header) or `Authorization: Bearer <key>`.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<ApiKey>, Box<Response>> {
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    auth::authenticate(
        &state.catalog.load(),
        api_key.or_else(|| auth::bearer(headers)),
    )
    .map_err(|e| {
        Box::new(error(
            e.status,
            e.code.unwrap_or("invalid_api_key"),
            e.message,
        ))
    })
}

/// The `image_request` object of a body, validated for `op`.
fn image_request(op: &str, request: &Map<String, Value>) -> Result<(Option<String>, u64), String> {
    let prompt = request
        .get("prompt")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if op != "upscale" && prompt.is_none() {
        return Err("`image_request.prompt` is required".into());
    }
    if request.get("prompt").is_some_and(|p| !p.is_string()) {
        return Err("`image_request.prompt` must be a string".into());
    }
    let images = match request.get("num_images") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_u64() {
            Some(n) if (1..=MAX_IMAGES).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`image_request.num_images` must be an integer from 1 to {MAX_IMAGES}"
                ));
            }
        },
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    Ok((model, images))
}

/// The upstream call: the body exactly as the client sent it, with the channel's `Api-Key`.
struct IdeogramCall {
    op: &'static str,
    content_type: String,
    body: Bytes,
}

impl Upstream for IdeogramCall {
    fn request(
        &self,
        state: &AppState,
        channel: &Channel,
        key: &UpstreamKey,
    ) -> reqwest::RequestBuilder {
        state
            .upstream
            .client
            .post(format!("{}/{}", channel.base_url, self.op))
            .header("Api-Key", &key.secret)
            .header(header::CONTENT_TYPE, &self.content_type)
            .body(self.body.clone())
    }
}

async fn call(State(state): State<AppState>, request: Request, op: &'static str) -> Response {
    let key = match caller(&state, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let (parts, body) = request.into_parts();
    let bytes = match read_limited(body, &parts.headers, state.config.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(e) => return error(e.status, e.code.unwrap_or("invalid_request"), e.message),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // what the request asks for: the model (for the price) and the images it makes
    let (model, images) = if op == "generate" {
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            _ => return bad("the body must be a JSON object"),
        };
        let Some(request) = body.get("image_request").and_then(Value::as_object) else {
            return bad("`image_request` (an object) is required");
        };
        match image_request(op, request) {
            Ok(asked) => asked,
            Err(message) => return bad(message),
        }
    } else {
        let boundary = match require_multipart(&parts.headers) {
            Ok(boundary) => boundary,
            Err(e) => return error(e.status, e.code.unwrap_or("invalid_request"), e.message),
        };
        let form = match FormBody::parse(bytes.clone(), boundary, Some("")).await {
            Ok(form) => form,
            Err(e) => return error(e.status, e.code.unwrap_or("invalid_request"), e.message),
        };
        match form.field("image_file") {
            Some(file) if is_image(&file.data) => {}
            Some(_) => return bad("`image_file` is not an image (JPEG, PNG or WebP)"),
            None => return bad("`image_file` is required"),
        }
        if op == "describe" {
            (None, 0)
        } else {
            let Some(text) = form.text("image_request") else {
                return bad("`image_request` (a JSON text part) is required");
            };
            let request = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(request)) => request,
                _ => return bad("`image_request` must be a JSON object"),
            };
            match image_request(op, &request) {
                Ok(asked) => asked,
                Err(message) => return bad(message),
            }
        }
    };
    let price_name = format!("ideogram_{op}");
    let mut price_names = Vec::new();
    if let Some(model) = &model {
        price_names.push(format!("{price_name}:{model}"));
    }
    price_names.push(price_name);
    let path = format!("/ideogram/{op}");
    let charged = charged_call(
        &state,
        &key,
        ChargedCall {
            kind: ChannelKind::Ideogram,
            channel_filter: &|_| true,
            price_names,
            units: Units {
                images,
                calls: 1,
                ..Default::default()
            },
            path: &path,
        },
        &IdeogramCall {
            op,
            content_type,
            body: bytes,
        },
    )
    .await;
    match charged {
        Ok(answer) if answer.status.is_success() => {
            let mut response = (answer.status, answer.body).into_response();
            let content_type = answer
                .content_type
                .and_then(|ct| HeaderValue::from_str(&ct).ok())
                .unwrap_or(HeaderValue::from_static("application/json"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            response
        }
        // the upstream refused the request itself (safety check, bad input): uncharged, its message
        Ok(answer) => {
            let message = upstream_message(&answer.body)
                .unwrap_or_else(|| format!("the upstream refused the request ({})", answer.status));
            let code = if answer.status == StatusCode::UNPROCESSABLE_ENTITY {
                "content_policy_violation"
            } else {
                "upstream_refused"
            };
            error(answer.status, code, message)
        }
        Err(refusal) => refusal.render(error),
    }
}

/// The message of an upstream error body: `{"error": "..."}`, `{"error": {"message": ...}}`,
/// `{"detail": ...}` or `{"message": ...}`.
fn upstream_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    [
        &value["error"],
        &value["error"]["message"],
        &value["detail"],
        &value["message"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
}

/// The admin channel test: a describe without an image (free; a 400 means the key was accepted).
pub fn probe(client: &reqwest::Client, base: &str, secret: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/describe"))
        .header("Api-Key", secret)
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=probe")
        .body("--probe--\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_request_says_how_many_images_and_which_model() {
        assert_eq!(
            image_request("generate", &obj(json!({"prompt": "x"}))),
            Ok((None, 1))
        );
        assert_eq!(
            image_request(
                "generate",
                &obj(json!({"prompt": "x", "num_images": 3, "model": "V_2"}))
            ),
            Ok((Some("V_2".into()), 3))
        );
        assert!(image_request("generate", &obj(json!({}))).is_err());
        assert!(image_request("generate", &obj(json!({"prompt": "x", "num_images": 9}))).is_err());
        assert_eq!(image_request("upscale", &obj(json!({}))), Ok((None, 1)));
    }

    #[test]
    fn upstream_messages_are_found_in_every_shape() {
        assert_eq!(
            upstream_message(br#"{"error":"Prompt failed safety check"}"#).as_deref(),
            Some("Prompt failed safety check")
        );
        assert_eq!(
            upstream_message(br#"{"error":{"message":"m"}}"#).as_deref(),
            Some("m")
        );
        assert_eq!(upstream_message(b"not json"), None);
    }
}
