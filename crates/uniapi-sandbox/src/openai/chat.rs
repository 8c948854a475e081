//! `POST /v1/chat/completions`: a deterministic reply to the last user message (or one call to
//! the first tool), as a `chat.completion` or as a §1.4 chunk stream.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::fields::{self, Object};
use crate::error::ApiError;
use crate::gate::Call;
use crate::sse::{Phase, SseEvent, sse_response};
use crate::text::{self, mix};

pub const SYSTEM_FINGERPRINT: &str = "fp_sandbox";

struct ChatRequest {
    model: String,
    prompt_chars: usize,
    last_user: String,
    n: usize,
    max_tokens: Option<u64>,
    tool: Option<String>,
    stream: bool,
    include_usage: bool,
}

impl ChatRequest {
    fn parse(obj: &Object) -> Result<Self, ApiError> {
        let model = fields::require_str(obj, "model")?.to_owned();
        let messages_value = fields::require(obj, "messages")?;
        let messages = messages_value
            .as_array()
            .ok_or_else(|| ApiError::wrong_type("messages", "an array", messages_value))?;
        if messages.is_empty() {
            return Err(ApiError::invalid_value(
                "messages",
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
            )
            .code("empty_array"));
        }
        let mut prompt_chars = 0;
        let mut last_user = String::new();
        for (i, message) in messages.iter().enumerate() {
            let role = message
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing(&format!("messages[{i}].role")))?;
            let content = message
                .get("content")
                .map(fields::content_text)
                .unwrap_or_default();
            prompt_chars += content.chars().count();
            if role == "user" {
                last_user = content;
            }
        }
        let max_tokens = match fields::opt_u64(obj, "max_completion_tokens")? {
            Some(v) => Some(v),
            None => fields::opt_u64(obj, "max_tokens")?,
        };
        let (stream, include_usage) = fields::stream_flags(obj)?;
        Ok(Self {
            model,
            prompt_chars,
            last_user,
            n: fields::count_n(obj, "n", 128)?,
            max_tokens,
            tool: chosen_tool(obj),
            stream,
            include_usage,
        })
    }
}

/// The tool the sandbox "calls": the one `tool_choice` names, else the first tool; none when
/// there are no tools or `tool_choice` is `"none"`.
fn chosen_tool(obj: &Object) -> Option<String> {
    let tools = obj.get("tools")?.as_array().filter(|t| !t.is_empty())?;
    let choice = obj.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let named = choice
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    if let Some(name) = named {
        return Some(name.to_owned());
    }
    let first = &tools[0];
    let name = first
        .get("function")
        .or_else(|| first.get("custom"))
        .and_then(|f| f.get("name"))
        .or_else(|| first.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("tool");
    Some(name.to_owned())
}

enum Answer {
    Text { text: String, truncated: bool },
    ToolCall { id: String, name: String },
}

impl Answer {
    const TOOL_ARGUMENTS: &'static str = "{}";

    fn tokens(&self) -> u64 {
        match self {
            Answer::Text { text, .. } => text::word_count(text),
            Answer::ToolCall { name, .. } => {
                text::word_count(name) + text::word_count(Self::TOOL_ARGUMENTS)
            }
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text {
                truncated: true, ..
            } => "length",
            Answer::Text { .. } => "stop",
            Answer::ToolCall { .. } => "tool_calls",
        }
    }
}

pub async fn create(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let req = ChatRequest::parse(call.body.json_object()?)?;
    let answers: Vec<Answer> = (0..req.n)
        .map(|i| match &req.tool {
            Some(name) => Answer::ToolCall {
                id: format!("call_{:016x}", mix(call.seed ^ i as u64)),
                name: name.clone(),
            },
            None => {
                let full = text::reply_text("Sandbox reply to:", &req.last_user);
                let (text, truncated) = text::cut_words(&full, req.max_tokens);
                Answer::Text { text, truncated }
            }
        })
        .collect();
    let prompt_tokens = text::prompt_tokens_for_chars(req.prompt_chars);
    let completion_tokens = answers.iter().map(Answer::tokens).sum();
    let usage = usage_json(prompt_tokens, completion_tokens);
    let frame = Frame {
        id: fields::make_id("chatcmpl", call.seed),
        created: call.created,
        model: req.model.clone(),
        include_usage: req.include_usage && !call.plan.no_usage,
    };
    if req.stream {
        return Ok(stream(&call, &frame, &answers, usage));
    }
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(index, answer)| {
            let message = match answer {
                Answer::Text { text, .. } => json!({
                    "role": "assistant", "content": text, "refusal": null, "annotations": []
                }),
                Answer::ToolCall { id, name } => json!({
                    "role": "assistant", "content": null, "refusal": null, "annotations": [],
                    "tool_calls": [{
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": Answer::TOOL_ARGUMENTS}
                    }]
                }),
            };
            json!({
                "index": index, "message": message, "logprobs": null,
                "finish_reason": answer.finish_reason()
            })
        })
        .collect();
    let mut answer = json!({
        "id": frame.id,
        "object": "chat.completion",
        "created": frame.created,
        "model": frame.model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if call.plan.no_usage
        && let Some(object) = answer.as_object_mut()
    {
        object.remove("usage");
    }
    Ok(Json(answer).into_response())
}

/// `CompletionUsage` with the detail objects clients read for caching and reasoning.
pub fn usage_json(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    })
}

/// The fields every chunk of one stream shares.
struct Frame {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Frame {
    fn chunk(&self, choices: Value, usage: Option<&Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        chunk
    }

    fn delta(&self, index: usize, delta: Value, finish_reason: Option<&str>) -> Value {
        self.chunk(
            json!([{
                "index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason
            }]),
            None,
        )
    }
}

fn stream(call: &Call, frame: &Frame, answers: &[Answer], usage: Value) -> Response {
    let mut events = Vec::new();
    let pieces: Vec<Vec<String>> = answers
        .iter()
        .map(|answer| match answer {
            Answer::Text { text, .. } => text::split_pieces(text, call.plan.stream_chunks),
            Answer::ToolCall { .. } => vec![Answer::TOOL_ARGUMENTS.to_owned()],
        })
        .collect();
    for (index, answer) in answers.iter().enumerate() {
        let delta = match answer {
            Answer::Text { .. } => json!({"role": "assistant", "content": "", "refusal": null}),
            Answer::ToolCall { id, name } => json!({
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{
                    "index": 0, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}
                }]
            }),
        };
        events.push(SseEvent::data(
            Phase::Head,
            &frame.delta(index, delta, None),
        ));
    }
    let steps = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for step in 0..steps {
        for (index, answer) in answers.iter().enumerate() {
            let Some(piece) = pieces[index].get(step) else {
                continue;
            };
            let delta = match answer {
                Answer::Text { .. } => json!({"content": piece}),
                Answer::ToolCall { .. } => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                }
            };
            events.push(SseEvent::data(
                Phase::Content,
                &frame.delta(index, delta, None),
            ));
        }
    }
    for (index, answer) in answers.iter().enumerate() {
        let finish = frame.delta(index, json!({}), Some(answer.finish_reason()));
        events.push(SseEvent::data(Phase::Tail, &finish));
    }
    if frame.include_usage {
        events.push(SseEvent::data(
            Phase::Tail,
            &frame.chunk(json!([]), Some(&usage)),
        ));
    }
    events.push(SseEvent::done());
    sse_response(events, &call.plan)
}
