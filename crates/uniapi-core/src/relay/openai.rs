//! The OpenAI family of relay routes: JSON endpoints, multipart uploads and the model list.
//! Each route states what it requires of the body; everything else is passed through untouched.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::body::{FormBody, JsonBody, read_limited, require_json, require_multipart};
use super::{CallContext, Outbound, OutboundBody, SseStyle, relay};
use crate::auth;
use crate::billing::Units;
use crate::billing::bill::{Ask, Bill, Measure, audio_ms_from_bytes, image_variant};
use crate::billing::meter::Protocol;
use crate::billing::tokens::bound_prompt_tokens;
use crate::error::ApiError;
use crate::state::AppState;

struct JsonRoute {
    path: &'static str,
    required: &'static [&'static str],
    default_model: Option<&'static str>,
    sse: SseStyle,
    measure: Measure,
}

const CHAT: JsonRoute = JsonRoute {
    path: "/v1/chat/completions",
    required: &["messages"],
    default_model: None,
    sse: SseStyle::DataOnly,
    measure: Measure::Tokens(Protocol::ChatCompletions),
};
const COMPLETIONS: JsonRoute = JsonRoute {
    path: "/v1/completions",
    required: &["prompt"],
    default_model: None,
    sse: SseStyle::DataOnly,
    measure: Measure::Tokens(Protocol::Completions),
};
const EMBEDDINGS: JsonRoute = JsonRoute {
    path: "/v1/embeddings",
    required: &["input"],
    default_model: None,
    sse: SseStyle::None,
    measure: Measure::Input,
};
const MODERATIONS: JsonRoute = JsonRoute {
    path: "/v1/moderations",
    required: &["input"],
    default_model: Some("omni-moderation-latest"),
    sse: SseStyle::None,
    measure: Measure::Input,
};
const IMAGE_GENERATIONS: JsonRoute = JsonRoute {
    path: "/v1/images/generations",
    required: &["prompt"],
    default_model: Some("dall-e-2"),
    sse: SseStyle::DataOnly,
    measure: Measure::Images,
};
const SPEECH: JsonRoute = JsonRoute {
    path: "/v1/audio/speech",
    required: &["input", "voice"],
    default_model: None,
    sse: SseStyle::None,
    measure: Measure::Speech,
};
const RESPONSES: JsonRoute = JsonRoute {
    path: "/v1/responses",
    required: &[],
    default_model: None,
    sse: SseStyle::Typed,
    measure: Measure::Tokens(Protocol::Responses),
};

/// Largest audio file OpenAI accepts for transcription and translation.
const AUDIO_FILE_LIMIT: usize = 25 * 1024 * 1024;
/// dall-e-2 variation input: a square PNG under 4 MB.
const VARIATION_IMAGE_LIMIT: usize = 4 * 1024 * 1024;
const VARIATION_SIZES: &[&str] = &["256x256", "512x512", "1024x1024"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|s: State<AppState>, r: Request| json_route(s, r, &CHAT)),
        )
        .route(
            "/v1/completions",
            post(|s: State<AppState>, r: Request| json_route(s, r, &COMPLETIONS)),
        )
        .route(
            "/v1/embeddings",
            post(|s: State<AppState>, r: Request| json_route(s, r, &EMBEDDINGS)),
        )
        .route(
            "/v1/moderations",
            post(|s: State<AppState>, r: Request| json_route(s, r, &MODERATIONS)),
        )
        .route(
            "/v1/images/generations",
            post(|s: State<AppState>, r: Request| async move {
                // models only a jimeng or fal channel serves are translated there (tasks::images)
                match crate::tasks::images::take(&s.0, r).await {
                    Ok(answered) => answered,
                    Err(r) => json_route(s, r, &IMAGE_GENERATIONS).await,
                }
            }),
        )
        .route(
            "/v1/audio/speech",
            post(|s: State<AppState>, r: Request| json_route(s, r, &SPEECH)),
        )
        .route(
            "/v1/responses",
            post(|s: State<AppState>, r: Request| json_route(s, r, &RESPONSES)),
        )
        .route(
            "/v1/images/edits",
            post(|s: State<AppState>, r: Request| form_route(s, r, FormKind::ImageEdit)),
        )
        .route(
            "/v1/images/variations",
            post(|s: State<AppState>, r: Request| form_route(s, r, FormKind::ImageVariation)),
        )
        .route(
            "/v1/audio/transcriptions",
            post(|s: State<AppState>, r: Request| form_route(s, r, FormKind::Transcription)),
        )
        .route(
            "/v1/audio/translations",
            post(|s: State<AppState>, r: Request| form_route(s, r, FormKind::Translation)),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
}

/// Authenticates and opens the call's context; refusals here are not logged (no user is known).
fn open_call(state: &AppState, request: &Request) -> Result<CallContext, ApiError> {
    let catalog = state.catalog.load();
    let key = auth::authenticate(&catalog, auth::bearer(request.headers()))?;
    Ok(CallContext::new(
        key,
        request.method(),
        request.uri().path(),
    ))
}

/// A model must be allowed for the key (403) before anything is sent.
fn check_model(ctx: &CallContext, model: &str) -> Result<(), ApiError> {
    if ctx.key.may_use(model) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "model_not_allowed",
            format!("This API key is not allowed to use the model `{model}`."),
        )
        .with_param("model"))
    }
}

/// A refusal before any upstream call, with the model when the body got far enough to name one.
struct Rejected {
    model: Option<String>,
    error: ApiError,
}

impl From<ApiError> for Rejected {
    fn from(error: ApiError) -> Self {
        Rejected { model: None, error }
    }
}

/// A model no enabled channel serves is 404 before any price or balance is looked at.
fn check_served(state: &AppState, model: &str) -> Result<(), ApiError> {
    if state.catalog.load().channels_for(model).is_empty() {
        Err(ApiError::model_not_found(model))
    } else {
        Ok(())
    }
}

/// What a JSON request asks for: its input tokens (counted with the model's tokenizer), its output limit,
/// its images or characters.
fn json_ask(route: &JsonRoute, json: &JsonBody) -> Ask {
    // an upper bound that rarely needs the tokenizer; the exact count is made only if the upstream
    // reports no usage (from the body kept in `prompt`)
    let input_tokens = || bound_prompt_tokens(&json.model, &json.bytes);
    match route.measure {
        Measure::Tokens(protocol) => Ask {
            units: Units {
                input_tokens: input_tokens(),
                ..Default::default()
            },
            token_output: true,
            prompt: Some(json.bytes.clone()),
            // the legacy completions endpoint generates 16 tokens when not told otherwise
            max_output_tokens: json
                .max_output_tokens
                .or((protocol == Protocol::Completions).then_some(16)),
            choices: json.choices,
            ..Default::default()
        },
        Measure::Input => Ask {
            units: Units {
                input_tokens: input_tokens(),
                ..Default::default()
            },
            prompt: Some(json.bytes.clone()),
            ..Default::default()
        },
        Measure::Images => {
            let (size, quality) = image_variant(json.size.as_deref(), json.quality.as_deref());
            Ask {
                units: Units {
                    images: json.choices,
                    ..Default::default()
                },
                size,
                quality,
                ..Default::default()
            }
        }
        Measure::Speech => Ask {
            units: Units {
                chars: json.speech_chars,
                ..Default::default()
            },
            ..Default::default()
        },
        Measure::Transcription => Ask::default(),
    }
}

fn path_and_query(route_path: &str, request: &Request) -> String {
    match request.uri().query() {
        Some(q) => format!("{route_path}?{q}"),
        None => route_path.to_string(),
    }
}

async fn json_route(
    State(state): State<AppState>,
    request: Request,
    route: &'static JsonRoute,
) -> Response {
    let ctx = match open_call(&state, &request) {
        Ok(ctx) => ctx,
        Err(error) => return error.into_response(),
    };
    state.backlog_room().await;
    let prepared = async {
        require_json(request.headers())?;
        let target = path_and_query(route.path, &request);
        let accept = request.headers().get(header::ACCEPT).cloned();
        let (parts, body) = request.into_parts();
        let bytes = read_limited(body, &parts.headers, state.config.max_body_bytes()).await?;
        let mut json = JsonBody::parse(bytes, route.required, route.default_model)?;
        let about = |error: ApiError| Rejected {
            model: Some(json.model.clone()),
            error,
        };
        check_model(&ctx, &json.model).map_err(about)?;
        check_served(&state, &json.model).map_err(about)?;
        let ask = json_ask(route, &json);
        let bill = Bill::admit(&state, &ctx.key, &ctx.id, &json.model, route.measure, ask)
            .map_err(about)?;
        // bill from the upstream's own count: ask for the usage chunk, and hide it if the client did not
        let metered_stream = json.stream
            && matches!(
                route.measure,
                Measure::Tokens(Protocol::ChatCompletions | Protocol::Completions)
            );
        let strip_usage = metered_stream && !json.include_usage;
        if strip_usage {
            json = json.with_stream_usage(route.required, route.default_model)?;
        }
        Ok::<(Outbound, Bill), Rejected>((
            Outbound {
                method: Method::POST,
                path_and_query: target,
                model: json.model.clone(),
                stream: json.stream,
                content_type: Some(header::HeaderValue::from_static("application/json")),
                accept,
                sse: route.sse,
                strip_usage,
                body: OutboundBody::Json(json),
            },
            bill,
        ))
    }
    .await;
    match prepared {
        Ok((out, bill)) => relay(&state, ctx, out, bill).await,
        Err(Rejected { model, error }) => ctx.reject(&state, model.as_deref(), error),
    }
}

#[derive(Clone, Copy)]
enum FormKind {
    ImageEdit,
    ImageVariation,
    Transcription,
    Translation,
}

impl FormKind {
    fn path(self) -> &'static str {
        match self {
            FormKind::ImageEdit => "/v1/images/edits",
            FormKind::ImageVariation => "/v1/images/variations",
            FormKind::Transcription => "/v1/audio/transcriptions",
            FormKind::Translation => "/v1/audio/translations",
        }
    }

    fn default_model(self) -> Option<&'static str> {
        match self {
            FormKind::ImageEdit | FormKind::ImageVariation => Some("dall-e-2"),
            FormKind::Transcription | FormKind::Translation => None,
        }
    }

    /// How the upload is priced: images by count, audio by its duration (estimated from the file size).
    fn ask(self, form: &FormBody) -> (Measure, Ask) {
        match self {
            FormKind::ImageEdit | FormKind::ImageVariation => {
                let n = form
                    .text("n")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                let (size, quality) = image_variant(form.text("size"), form.text("quality"));
                (
                    Measure::Images,
                    Ask {
                        units: Units {
                            images: n,
                            ..Default::default()
                        },
                        size,
                        quality,
                        ..Default::default()
                    },
                )
            }
            FormKind::Transcription | FormKind::Translation => {
                let bytes = form.field("file").map_or(0, |f| f.data.len());
                (
                    Measure::Transcription,
                    Ask {
                        units: Units {
                            audio_ms: audio_ms_from_bytes(bytes),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )
            }
        }
    }

    /// The rules OpenAI applies, checked here so that a bad upload never costs an upstream call.
    fn validate(self, form: &FormBody) -> Result<(), ApiError> {
        match self {
            FormKind::ImageEdit => {
                if form
                    .field("image")
                    .or_else(|| form.field("image[]"))
                    .is_none_or(|p| p.file_name.is_none())
                {
                    return Err(ApiError::missing_field("image"));
                }
                if form.text("prompt").is_none_or(|p| p.trim().is_empty()) {
                    return Err(ApiError::missing_field("prompt"));
                }
                check_n(form)
            }
            FormKind::ImageVariation => {
                let image = form
                    .field("image")
                    .filter(|p| p.file_name.is_some())
                    .ok_or_else(|| ApiError::missing_field("image"))?;
                if image.data.len() >= VARIATION_IMAGE_LIMIT {
                    return Err(
                        ApiError::invalid_request("The image must be smaller than 4 MB.")
                            .with_param("image"),
                    );
                }
                check_square_png(&image.data)?;
                check_n(form)?;
                if let Some(size) = form.text("size")
                    && !VARIATION_SIZES.contains(&size)
                {
                    return Err(ApiError::invalid_request(format!(
                        "'{size}' is not one of {VARIATION_SIZES:?} - 'size'"
                    ))
                    .with_param("size"));
                }
                Ok(())
            }
            FormKind::Transcription | FormKind::Translation => {
                let file = form
                    .field("file")
                    .filter(|p| p.file_name.is_some())
                    .ok_or_else(|| ApiError::missing_field("file"))?;
                if file.data.len() > AUDIO_FILE_LIMIT {
                    return Err(ApiError::payload_too_large(AUDIO_FILE_LIMIT).with_param("file"));
                }
                if form.text("model").is_none() {
                    return Err(ApiError::missing_field("model"));
                }
                Ok(())
            }
        }
    }
}

fn check_n(form: &FormBody) -> Result<(), ApiError> {
    match form.text("n") {
        None => Ok(()),
        Some(n) => match n.trim().parse::<u32>() {
            Ok(1..=10) => Ok(()),
            _ => Err(ApiError::invalid_request(format!(
                "'{n}' is not a valid value for 'n': it must be an integer from 1 to 10."
            ))
            .with_param("n")),
        },
    }
}

/// A valid PNG (it decodes, within memory limits) whose width equals its height.
fn check_square_png(data: &[u8]) -> Result<(), ApiError> {
    let bad =
        |why: &str| ApiError::invalid_request(format!("Invalid image: {why}")).with_param("image");
    let limits = png::Limits {
        bytes: 64 * 1024 * 1024,
    };
    let decoder = png::Decoder::new_with_limits(std::io::Cursor::new(data), limits);
    let mut reader = decoder
        .read_info()
        .map_err(|_| bad("uploaded image must be a PNG."))?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    if width != height {
        return Err(bad(&format!(
            "uploaded image must be square, but it is {width}x{height}."
        )));
    }
    let mut buffer = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad("the PNG is too large."))?
    ];
    reader
        .next_frame(&mut buffer)
        .map_err(|_| bad("the PNG data is corrupt."))?;
    Ok(())
}

async fn form_route(State(state): State<AppState>, request: Request, kind: FormKind) -> Response {
    let ctx = match open_call(&state, &request) {
        Ok(ctx) => ctx,
        Err(error) => return error.into_response(),
    };
    state.backlog_room().await;
    let prepared = async {
        let boundary = require_multipart(request.headers())?;
        let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
        let accept = request.headers().get(header::ACCEPT).cloned();
        let target = path_and_query(kind.path(), &request);
        let (parts, body) = request.into_parts();
        let bytes = read_limited(body, &parts.headers, state.config.max_body_bytes()).await?;
        let form = FormBody::parse(bytes, boundary, kind.default_model()).await?;
        let about = |error: ApiError| Rejected {
            model: Some(form.model.clone()),
            error,
        };
        kind.validate(&form).map_err(about)?;
        check_model(&ctx, &form.model).map_err(about)?;
        check_served(&state, &form.model).map_err(about)?;
        let stream = form.text("stream").is_some_and(|s| s.trim() == "true");
        let (measure, ask) = kind.ask(&form);
        let bill =
            Bill::admit(&state, &ctx.key, &ctx.id, &form.model, measure, ask).map_err(about)?;
        Ok::<(Outbound, Bill), Rejected>((
            Outbound {
                method: Method::POST,
                path_and_query: target,
                model: form.model.clone(),
                stream,
                content_type,
                accept,
                sse: SseStyle::None,
                strip_usage: false,
                body: OutboundBody::Form(form),
            },
            bill,
        ))
    }
    .await;
    match prepared {
        Ok((out, bill)) => relay(&state, ctx, out, bill).await,
        Err(Rejected { model, error }) => ctx.reject(&state, model.as_deref(), error),
    }
}

fn model_object(id: &str, created: i64, owned_by: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// Only the models the calling key may use.
async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let catalog = state.catalog.load();
    let key = match auth::authenticate(&catalog, auth::bearer(&headers)) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let data: Vec<_> = catalog
        .models()
        .into_iter()
        .filter(|(id, _)| key.may_use(id))
        .map(|(id, (created, owner))| model_object(id, created, owner))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let catalog = state.catalog.load();
    let key = match auth::authenticate(&catalog, auth::bearer(&headers)) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    match catalog.models().get(id.as_str()) {
        Some((created, owner)) if key.may_use(&id) => {
            axum::Json(model_object(&id, *created, owner)).into_response()
        }
        _ => ApiError::model_not_found(&id).into_response(),
    }
}

/// Answers an unknown path (and unknown methods on known paths) in the OpenAI shape.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::not_found(
        "unknown_url",
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
    .into_response()
}

pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("Method {method} is not allowed for {}.", uri.path()),
    )
    .into_response()
}
