//! `POST /v1/embeddings`: one unit-length vector per input, drawn from a hash of the input text,
//! as floats or as base64 of little-endian f32 (the official SDKs ask for base64 by default).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::fields::{self, Object};
use crate::error::ApiError;
use crate::gate::Call;
use crate::text::{self, fnv64, mix};

const DEFAULT_DIMENSIONS: u64 = 8;
/// The largest `dimensions` the real models accept (text-embedding-3-large).
const MAX_DIMENSIONS: u64 = 3072;

/// One input: its text (token ids are rendered as text) and its token count.
struct Input {
    text: String,
    tokens: u64,
}

fn parse_inputs(obj: &Object) -> Result<Vec<Input>, ApiError> {
    let value = fields::require(obj, "input")?;
    let bad = || {
        ApiError::wrong_type(
            "input",
            "a string, an array of strings, an array of integers or an array of integer arrays",
            value,
        )
    };
    let empty = || ApiError::invalid_value("input", "'$.input' is invalid: it must not be empty.");
    let text_input = |s: &str| -> Result<Input, ApiError> {
        if s.is_empty() {
            return Err(empty());
        }
        Ok(Input {
            text: s.to_owned(),
            tokens: text::prompt_tokens_for_chars(s.chars().count()),
        })
    };
    let id_input = |items: &[Value]| -> Option<Input> {
        let ids: Option<Vec<String>> = items
            .iter()
            .map(|v| v.as_u64().map(|n| n.to_string()))
            .collect();
        let ids = ids.filter(|ids| !ids.is_empty())?;
        Some(Input {
            tokens: ids.len() as u64,
            text: ids.join(","),
        })
    };
    match value {
        Value::String(s) => Ok(vec![text_input(s)?]),
        Value::Array(items) if items.is_empty() => Err(empty()),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|v| text_input(v.as_str().unwrap_or_default()))
            .collect(),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            id_input(items).map(|i| vec![i]).ok_or_else(bad)
        }
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_array().and_then(|inner| id_input(inner)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A deterministic unit vector for `text`.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let seed = fnv64(text.as_bytes());
    let raw: Vec<f64> = (0..dimensions as u64)
        .map(|i| {
            let bits = mix(seed ^ mix(i)) >> 11;
            (bits as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    raw.iter().map(|v| (v * scale) as f32).collect()
}

pub async fn create(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let obj = call.body.json_object()?;
    let model = fields::require_str(obj, "model")?.to_owned();
    let inputs = parse_inputs(obj)?;
    let dimensions = fields::opt_u64(obj, "dimensions")?.unwrap_or(DEFAULT_DIMENSIONS);
    if dimensions == 0 || dimensions > MAX_DIMENSIONS {
        return Err(ApiError::invalid_value(
            "dimensions",
            format!("Invalid 'dimensions': expected a value between 1 and {MAX_DIMENSIONS}."),
        ));
    }
    let base64 = match fields::opt_str(obj, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_value(
                "encoding_format",
                format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'."),
            ));
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embed(&input.text, dimensions as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(text::base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|i| i.tokens).sum();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::embed;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello", 16);
        assert_eq!(a, embed("hello", 16));
        assert_ne!(a, embed("world", 16));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
