//! `GET /v1/models` and `GET /v1/models/{id}`: a fixed catalogue covering every endpoint.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;

/// (id, created, owned_by)
const CATALOGUE: &[(&str, u64, &str)] = &[
    ("gpt-4o", 1_715_367_049, "system"),
    ("gpt-4o-mini", 1_721_172_741, "system"),
    ("gpt-4.1", 1_744_316_542, "system"),
    ("gpt-3.5-turbo-instruct", 1_692_901_427, "system"),
    ("text-embedding-3-small", 1_705_948_997, "system"),
    ("text-embedding-3-large", 1_705_953_180, "system"),
    ("omni-moderation-latest", 1_731_689_265, "system"),
    ("dall-e-2", 1_698_798_177, "system"),
    ("dall-e-3", 1_698_785_189, "system"),
    ("gpt-image-1", 1_745_517_030, "system"),
    ("tts-1", 1_681_940_951, "openai-internal"),
    ("whisper-1", 1_677_532_384, "openai-internal"),
];

fn model_object(&(id, created, owned_by): &(&str, u64, &str)) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

pub async fn list() -> Json<Value> {
    let data: Vec<Value> = CATALOGUE.iter().map(model_object).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(Path(id): Path<String>) -> Response {
    match CATALOGUE.iter().find(|(known, _, _)| *known == id) {
        Some(entry) => Json(model_object(entry)).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{id}' does not exist or you do not have access to it."),
        )
        .code("model_not_found")
        .into_response(),
    }
}
