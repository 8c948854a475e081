//! `POST /v1/completions` (legacy): one deterministic completion per prompt and `n`, as a
//! `text_completion` object or a stream of them.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::chat::{SYSTEM_FINGERPRINT, usage_json};
use super::fields::{self, Object};
use crate::error::ApiError;
use crate::gate::Call;
use crate::sse::{Phase, SseEvent, sse_response};
use crate::text;

/// The API's default `max_tokens` for this endpoint.
const DEFAULT_MAX_TOKENS: u64 = 16;

/// One prompt of the request and what it costs.
struct Prompt {
    text: String,
    /// Tokens when the prompt was sent as token ids; `None` for text prompts.
    token_ids: Option<u64>,
}

fn parse_prompts(obj: &Object) -> Result<Vec<Prompt>, ApiError> {
    let value = fields::require(obj, "prompt")?;
    let bad = || {
        ApiError::wrong_type(
            "prompt",
            "a string, an array of strings, an array of integers or an array of integer arrays",
            value,
        )
    };
    let ids = |items: &[Value]| -> Option<Prompt> {
        let ids: Option<Vec<String>> = items
            .iter()
            .map(|v| v.as_u64().map(|n| n.to_string()))
            .collect();
        ids.map(|ids| Prompt {
            token_ids: Some(ids.len() as u64),
            text: ids.join(" "),
        })
    };
    match value {
        Value::String(s) => Ok(vec![Prompt {
            text: s.clone(),
            token_ids: None,
        }]),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid_value(
            "prompt",
            "Invalid 'prompt': empty array.",
        )),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .map(|v| Prompt {
                text: v.as_str().unwrap_or_default().to_owned(),
                token_ids: None,
            })
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            ids(items).map(|p| vec![p]).ok_or_else(bad)
        }
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_array().and_then(|inner| ids(inner)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

struct Choice {
    text: String,
    finish_reason: &'static str,
    tokens: u64,
}

pub async fn create(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let obj = call.body.json_object()?;
    let model = fields::require_str(obj, "model")?.to_owned();
    let prompts = parse_prompts(obj)?;
    let n = fields::count_n(obj, "n", 128)?;
    let max_tokens = fields::opt_u64(obj, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS);
    let echo = fields::opt_bool(obj, "echo")?.unwrap_or(false);
    let (stream, include_usage) = fields::stream_flags(obj)?;

    let text_chars: usize = prompts
        .iter()
        .filter(|p| p.token_ids.is_none())
        .map(|p| p.text.chars().count())
        .sum();
    let id_tokens: u64 = prompts.iter().filter_map(|p| p.token_ids).sum();
    let prompt_tokens = if prompts.iter().any(|p| p.token_ids.is_none()) {
        text::prompt_tokens_for_chars(text_chars) + id_tokens
    } else {
        id_tokens.max(1)
    };

    let mut choices = Vec::new();
    for prompt in &prompts {
        let full = text::reply_text("Sandbox completion of:", &prompt.text);
        let (reply, truncated) = text::cut_words(&full, Some(max_tokens));
        let tokens = text::word_count(&reply);
        let text = if echo {
            format!("{} {reply}", prompt.text)
        } else {
            reply
        };
        for _ in 0..n {
            choices.push(Choice {
                text: text.clone(),
                finish_reason: if truncated { "length" } else { "stop" },
                tokens,
            });
        }
    }
    let completion_tokens = choices.iter().map(|c| c.tokens).sum();
    let usage = usage_json(prompt_tokens, completion_tokens);
    let base = json!({
        "id": fields::make_id("cmpl", call.seed),
        "object": "text_completion",
        "created": call.created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if stream {
        return Ok(stream_choices(&call, base, &choices, include_usage, usage));
    }
    let mut body = base;
    body["choices"] = choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({"text": c.text, "index": index, "logprobs": null, "finish_reason": c.finish_reason})
        })
        .collect();
    body["usage"] = usage;
    Ok(Json(body).into_response())
}

fn stream_choices(
    call: &Call,
    base: Value,
    choices: &[Choice],
    include_usage: bool,
    usage: Value,
) -> Response {
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = base.clone();
        chunk["choices"] = choices;
        if include_usage {
            chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        chunk
    };
    let choice = |index: usize, text: &str, finish: Option<&str>| json!([{"text": text, "index": index, "logprobs": null, "finish_reason": finish}]);
    let pieces: Vec<Vec<String>> = choices
        .iter()
        .map(|c| text::split_pieces(&c.text, call.plan.stream_chunks))
        .collect();
    let steps = pieces.iter().map(Vec::len).max().unwrap_or(0);
    let mut events = Vec::new();
    for step in 0..steps {
        for (index, choice_pieces) in pieces.iter().enumerate() {
            if let Some(piece) = choice_pieces.get(step) {
                let payload = chunk(choice(index, piece, None), None);
                events.push(SseEvent::data(Phase::Content, &payload));
            }
        }
    }
    for (index, c) in choices.iter().enumerate() {
        let payload = chunk(choice(index, "", Some(c.finish_reason)), None);
        events.push(SseEvent::data(Phase::Tail, &payload));
    }
    if include_usage {
        events.push(SseEvent::data(Phase::Tail, &chunk(json!([]), Some(&usage))));
    }
    events.push(SseEvent::done());
    sse_response(events, &call.plan)
}
