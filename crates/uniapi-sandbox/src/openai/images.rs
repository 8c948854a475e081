//! Image generation (JSON), edits and variations (multipart): `n` images as sandbox URLs or as a
//! tiny valid PNG in base64.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::fields;
use crate::body::{find_part, text_field};
use crate::error::ApiError;
use crate::gate::Call;
use crate::text::{self, base64};

/// A 1x1 RGBA PNG with valid CRCs and zlib stream.
const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0xDA, 0x63, 0x64, 0x60, 0xF8, 0x5F,
    0x0F, 0x00, 0x02, 0x87, 0x01, 0x80, 0xEB, 0x47, 0xBA, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

const DEFAULT_MODEL: &str = "dall-e-2";

/// What one image call asks for, whatever its transport.
struct ImageAsk<'a> {
    prompt: Option<&'a str>,
    model: &'a str,
    n: usize,
    response_format: Option<&'a str>,
    size: Option<&'a str>,
}

pub async fn generate(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let obj = call.body.json_object()?;
    let prompt = fields::require_str(obj, "prompt")?;
    let ask = ImageAsk {
        prompt: Some(prompt),
        model: fields::opt_str(obj, "model")?.unwrap_or(DEFAULT_MODEL),
        n: fields::count_n(obj, "n", 10)?,
        response_format: fields::opt_str(obj, "response_format")?,
        size: fields::opt_str(obj, "size")?,
    };
    respond(&call, &ask)
}

pub async fn edit(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let parts = call.body.form()?;
    require_image(parts)?;
    let prompt = text_field(parts, "prompt").ok_or_else(|| ApiError::missing("prompt"))?;
    let model = text_field(parts, "model");
    let response_format = text_field(parts, "response_format");
    let size = text_field(parts, "size");
    let ask = ImageAsk {
        prompt: Some(&prompt),
        model: model.as_deref().unwrap_or(DEFAULT_MODEL),
        n: fields::form_n(text_field(parts, "n"))?,
        response_format: response_format.as_deref(),
        size: size.as_deref(),
    };
    respond(&call, &ask)
}

pub async fn vary(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let parts = call.body.form()?;
    require_image(parts)?;
    let model = text_field(parts, "model");
    let response_format = text_field(parts, "response_format");
    let size = text_field(parts, "size");
    let ask = ImageAsk {
        prompt: None,
        model: model.as_deref().unwrap_or(DEFAULT_MODEL),
        n: fields::form_n(text_field(parts, "n"))?,
        response_format: response_format.as_deref(),
        size: size.as_deref(),
    };
    respond(&call, &ask)
}

fn require_image(parts: &[crate::body::FormPart]) -> Result<(), ApiError> {
    match find_part(parts, &["image", "image[]"]) {
        Some(part) if part.is_file() => Ok(()),
        Some(_) => Err(ApiError::invalid_value(
            "image",
            "Invalid 'image': expected a file upload, got a text field.",
        )),
        None => Err(ApiError::missing("image")),
    }
}

fn respond(call: &Call, ask: &ImageAsk<'_>) -> Result<Response, ApiError> {
    // GPT-image models always answer base64; dall-e answers URLs unless asked otherwise.
    let gpt_image = ask.model.starts_with("gpt-image");
    let b64 = match ask.response_format {
        None | Some("url") => gpt_image,
        Some("b64_json") => true,
        Some(other) => {
            return Err(ApiError::invalid_value(
                "response_format",
                format!("Invalid value: '{other}'. Supported values are: 'url' and 'b64_json'."),
            ));
        }
    };
    let id = format!("{:016x}", call.seed);
    let data: Vec<Value> = (0..ask.n)
        .map(|i| {
            let mut image = if b64 {
                json!({"b64_json": base64(TINY_PNG)})
            } else {
                json!({"url": format!("https://sandbox.invalid/images/{id}-{i}.png")})
            };
            if let Some(prompt) = ask.prompt {
                image["revised_prompt"] = json!(format!("Sandbox rendering of: {prompt}"));
            }
            image
        })
        .collect();
    let mut body = json!({"created": call.created, "data": data});
    if gpt_image {
        let text_tokens = ask
            .prompt
            .map_or(0, |p| text::prompt_tokens_for_chars(p.chars().count()));
        let output_tokens = 272 * ask.n as u64;
        body["background"] = json!("opaque");
        body["output_format"] = json!("png");
        body["quality"] = json!("medium");
        body["size"] = json!(ask.size.unwrap_or("1024x1024"));
        body["usage"] = json!({
            "input_tokens": text_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
            "output_tokens": output_tokens,
            "total_tokens": text_tokens + output_tokens,
        });
    }
    Ok(Json(body).into_response())
}
