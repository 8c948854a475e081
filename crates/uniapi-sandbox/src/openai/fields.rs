//! Reading request fields the way the OpenAI API validates them: a missing required field or a
//! wrong type is a 400 naming the field.

use serde_json::{Map, Value};

use crate::error::ApiError;

pub type Object = Map<String, Value>;

pub fn require<'a>(obj: &'a Object, name: &str) -> Result<&'a Value, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(ApiError::missing(name)),
        Some(value) => Ok(value),
    }
}

pub fn require_str<'a>(obj: &'a Object, name: &str) -> Result<&'a str, ApiError> {
    let value = require(obj, name)?;
    value
        .as_str()
        .ok_or_else(|| ApiError::wrong_type(name, "a string", value))
}

pub fn opt_str<'a>(obj: &'a Object, name: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::wrong_type(name, "a string", other)),
    }
}

pub fn opt_u64(obj: &Object, name: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::wrong_type(name, "a non-negative integer", value)),
    }
}

pub fn opt_bool(obj: &Object, name: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::wrong_type(name, "a boolean", other)),
    }
}

/// `n` within `1..=max`, default 1.
pub fn count_n(obj: &Object, name: &str, max: u64) -> Result<usize, ApiError> {
    let n = opt_u64(obj, name)?.unwrap_or(1);
    if n == 0 || n > max {
        return Err(ApiError::invalid_value(
            name,
            format!("Invalid '{name}': expected a value between 1 and {max}, but got {n} instead."),
        ));
    }
    usize::try_from(n).map_err(|_| ApiError::invalid_value(name, "Invalid 'n'."))
}

/// Parses a `n` form field (multipart endpoints), default 1, within `1..=10`.
pub fn form_n(value: Option<String>) -> Result<usize, ApiError> {
    let Some(raw) = value else {
        return Ok(1);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=10).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_value(
            "n",
            format!("Invalid 'n': expected an integer between 1 and 10, but got '{raw}' instead."),
        )),
    }
}

/// `stream` plus `stream_options.include_usage`.
pub fn stream_flags(obj: &Object) -> Result<(bool, bool), ApiError> {
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((stream, include_usage))
}

/// The text of a message `content`: a string, or the `text` of every part that has one.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// `<prefix>-<16 hex digits>` from a call seed.
pub fn make_id(prefix: &str, seed: u64) -> String {
    format!("{prefix}-{seed:016x}")
}
