//! A request body read once by the gate and shared by the journal and the handlers: raw bytes,
//! the parsed JSON (if any) and the parsed multipart form (if the content type says multipart).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;

pub struct ParsedBody {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub json: Option<Value>,
    /// `None` when the request is not multipart; `Some(Err)` when the form could not be parsed.
    pub form: Option<Result<Vec<FormPart>, String>>,
}

pub struct FormPart {
    pub name: String,
    pub file_name: Option<String>,
    pub data: Bytes,
}

impl FormPart {
    pub fn is_file(&self) -> bool {
        self.file_name.is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

impl ParsedBody {
    pub async fn parse(content_type: Option<String>, bytes: Bytes) -> Self {
        let json = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let form = match &content_type {
            Some(ct) if ct.to_ascii_lowercase().starts_with("multipart/form-data") => {
                Some(parse_form(ct, bytes.clone()).await)
            }
            _ => None,
        };
        Self {
            bytes,
            content_type,
            json,
            form,
        }
    }

    /// The JSON body as an object, or the 400 OpenAI answers for a body it cannot use.
    pub fn json_object(&self) -> Result<&Map<String, Value>, ApiError> {
        match &self.json {
            Some(Value::Object(map)) => Ok(map),
            Some(other) => Err(ApiError::invalid(format!(
                "Invalid request body: expected a JSON object, got {other}."
            ))),
            None => Err(ApiError::unparsable_json()),
        }
    }

    /// The multipart form, or the 400 OpenAI answers for a non-multipart or broken body.
    pub fn form(&self) -> Result<&[FormPart], ApiError> {
        match &self.form {
            Some(Ok(parts)) => Ok(parts),
            Some(Err(reason)) => Err(ApiError::invalid(format!(
                "Could not parse multipart form: {reason}"
            ))),
            None => Err(ApiError::invalid(format!(
                "Invalid Content-Type header ({}), expected multipart/form-data.",
                self.content_type.as_deref().unwrap_or("none")
            ))),
        }
    }
}

async fn parse_form(content_type: &str, bytes: Bytes) -> Result<Vec<FormPart>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let data = field.bytes().await.map_err(|e| e.to_string())?;
        parts.push(FormPart {
            name,
            file_name,
            data,
        });
    }
    Ok(parts)
}

/// Finds the first part named any of `names`.
pub fn find_part<'a>(parts: &'a [FormPart], names: &[&str]) -> Option<&'a FormPart> {
    parts.iter().find(|p| names.contains(&p.name.as_str()))
}

/// A text field's value.
pub fn text_field(parts: &[FormPart], name: &str) -> Option<String> {
    find_part(parts, &[name])
        .filter(|p| !p.is_file())
        .map(FormPart::text)
}
