//! `POST /v1/responses`: the §8.2 Response object (one assistant message, or one function call
//! when tools are offered) and the §8.3 typed event stream.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::fields::{self, Object};
use crate::error::ApiError;
use crate::gate::Call;
use crate::sse::{Phase, SseEvent, sse_response};
use crate::text::{self, mix};

const TOOL_ARGUMENTS: &str = "{}";

struct ResponsesRequest<'a> {
    obj: &'a Object,
    model: &'a str,
    input_chars: usize,
    last_user: String,
    max_output_tokens: Option<u64>,
    tool: Option<String>,
    stream: bool,
}

impl<'a> ResponsesRequest<'a> {
    fn parse(obj: &'a Object) -> Result<Self, ApiError> {
        let model = fields::require_str(obj, "model")?;
        let input = fields::require(obj, "input")?;
        let mut input_chars =
            fields::opt_str(obj, "instructions")?.map_or(0, |s| s.chars().count());
        let mut last_user = String::new();
        match input {
            Value::String(s) => {
                input_chars += s.chars().count();
                last_user = s.clone();
            }
            Value::Array(items) => {
                for item in items {
                    let text = item_text(item);
                    input_chars += text.chars().count();
                    let is_message = item.get("content").is_some();
                    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                    if is_message && role == "user" {
                        last_user = text;
                    }
                }
            }
            other => {
                return Err(ApiError::wrong_type(
                    "input",
                    "a string or an array of input items",
                    other,
                ));
            }
        }
        Ok(Self {
            obj,
            model,
            input_chars,
            last_user,
            max_output_tokens: fields::opt_u64(obj, "max_output_tokens")?,
            tool: chosen_tool(obj),
            stream: fields::opt_bool(obj, "stream")?.unwrap_or(false),
        })
    }

    fn echo(&self, name: &str, default: Value) -> Value {
        self.obj.get(name).cloned().unwrap_or(default)
    }
}

/// Text an input item contributes: message content, or a function call's output.
fn item_text(item: &Value) -> String {
    if let Some(content) = item.get("content") {
        return fields::content_text(content);
    }
    item.get("output")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The function the sandbox "calls": the one `tool_choice` names, else the first function (or
/// custom) tool; none with `tool_choice: "none"` or no such tool.
fn chosen_tool(obj: &Object) -> Option<String> {
    let tools = obj.get("tools")?.as_array()?;
    let choice = obj.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    if let Some(name) = choice.and_then(|c| c.get("name")).and_then(Value::as_str) {
        return Some(name.to_owned());
    }
    tools
        .iter()
        .find(|t| {
            matches!(
                t.get("type").and_then(Value::as_str),
                Some("function" | "custom")
            )
        })
        .and_then(|t| t.get("name").and_then(Value::as_str))
        .map(str::to_owned)
}

enum Output {
    Message {
        id: String,
        text: String,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
    },
}

impl Output {
    fn item(&self, status: &str, partial: bool) -> Value {
        match self {
            Output::Message { id, text } => {
                let content = if partial {
                    json!([])
                } else {
                    json!([output_text_part(text)])
                };
                json!({
                    "id": id, "type": "message", "status": status, "role": "assistant",
                    "content": content
                })
            }
            Output::FunctionCall { id, call_id, name } => json!({
                "id": id, "type": "function_call", "status": status, "call_id": call_id,
                "name": name, "arguments": if partial { "" } else { TOOL_ARGUMENTS }
            }),
        }
    }
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub async fn create(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let req = ResponsesRequest::parse(call.body.json_object()?)?;
    let (output, truncated) = match &req.tool {
        Some(name) => (
            Output::FunctionCall {
                id: format!("fc_{:016x}", mix(call.seed)),
                call_id: format!("call_{:016x}", mix(call.seed ^ 1)),
                name: name.clone(),
            },
            false,
        ),
        None => {
            let full = text::reply_text("Sandbox reply to:", &req.last_user);
            let (text, truncated) = text::cut_words(&full, req.max_output_tokens);
            let id = format!("msg_{:016x}", mix(call.seed));
            (Output::Message { id, text }, truncated)
        }
    };
    let input_tokens = text::prompt_tokens_for_chars(req.input_chars);
    let output_tokens = match &output {
        Output::Message { text, .. } => text::word_count(text),
        Output::FunctionCall { name, .. } => {
            text::word_count(name) + text::word_count(TOOL_ARGUMENTS)
        }
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let status = if truncated { "incomplete" } else { "completed" };
    let item_status = if truncated { "incomplete" } else { "completed" };
    let id = fields::make_id("resp", call.seed).replace('-', "_");
    let final_response = response_object(
        &req,
        &id,
        call.created,
        status,
        json!([output.item(item_status, false)]),
        usage,
    );
    if !req.stream {
        return Ok(Json(final_response).into_response());
    }
    let initial = response_object(
        &req,
        &id,
        call.created,
        "in_progress",
        json!([]),
        Value::Null,
    );
    Ok(stream(
        &call,
        &initial,
        final_response,
        &output,
        item_status,
    ))
}

fn response_object(
    req: &ResponsesRequest<'_>,
    id: &str,
    created: u64,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    let finished = status != "in_progress";
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": false,
        "completed_at": if status == "completed" { json!(created) } else { Value::Null },
        "error": null,
        "incomplete_details": if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        },
        "instructions": req.echo("instructions", Value::Null),
        "max_output_tokens": req.echo("max_output_tokens", Value::Null),
        "metadata": req.echo("metadata", json!({})),
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.echo("parallel_tool_calls", json!(true)),
        "previous_response_id": req.echo("previous_response_id", Value::Null),
        "reasoning": req.echo("reasoning", json!({"effort": null, "summary": null})),
        "service_tier": "default",
        "store": req.echo("store", json!(true)),
        "temperature": req.echo("temperature", json!(1.0)),
        "text": req.echo("text", json!({"format": {"type": "text"}, "verbosity": "medium"})),
        "tool_choice": req.echo("tool_choice", json!("auto")),
        "tools": req.echo("tools", json!([])),
        "top_p": req.echo("top_p", json!(1.0)),
        "truncation": req.echo("truncation", json!("disabled")),
        "usage": if finished { usage } else { Value::Null },
        "user": req.echo("user", Value::Null),
    })
}

/// Numbers events as they are added.
struct EventLog {
    events: Vec<SseEvent>,
}

impl EventLog {
    fn push(&mut self, phase: Phase, kind: &str, mut payload: Value) {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.events.len());
        self.events.push(SseEvent::typed(phase, kind, &payload));
    }
}

fn stream(
    call: &Call,
    initial: &Value,
    final_response: Value,
    output: &Output,
    item_status: &str,
) -> Response {
    let mut log = EventLog { events: Vec::new() };
    log.push(
        Phase::Head,
        "response.created",
        json!({"response": initial}),
    );
    log.push(
        Phase::Head,
        "response.in_progress",
        json!({"response": initial}),
    );
    log.push(
        Phase::Head,
        "response.output_item.added",
        json!({"output_index": 0, "item": output.item("in_progress", true)}),
    );
    match output {
        Output::Message { id, text } => {
            let at = json!({"item_id": id, "output_index": 0, "content_index": 0});
            let with = |extra: Value| {
                let mut payload = at.clone();
                if let (Some(target), Value::Object(fields)) = (payload.as_object_mut(), extra) {
                    target.extend(fields);
                }
                payload
            };
            log.push(
                Phase::Head,
                "response.content_part.added",
                with(json!({"part": output_text_part("")})),
            );
            for piece in text::split_pieces(text, call.plan.stream_chunks) {
                log.push(
                    Phase::Content,
                    "response.output_text.delta",
                    with(json!({"delta": piece, "logprobs": []})),
                );
            }
            log.push(
                Phase::Tail,
                "response.output_text.done",
                with(json!({"text": text, "logprobs": []})),
            );
            log.push(
                Phase::Tail,
                "response.content_part.done",
                with(json!({"part": output_text_part(text)})),
            );
        }
        Output::FunctionCall { id, name, .. } => {
            log.push(
                Phase::Content,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": 0, "delta": TOOL_ARGUMENTS}),
            );
            log.push(
                Phase::Tail,
                "response.function_call_arguments.done",
                json!({"item_id": id, "name": name, "output_index": 0, "arguments": TOOL_ARGUMENTS}),
            );
        }
    }
    log.push(
        Phase::Tail,
        "response.output_item.done",
        json!({"output_index": 0, "item": output.item(item_status, false)}),
    );
    let terminal = if final_response["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    log.push(Phase::Tail, terminal, json!({"response": final_response}));
    sse_response(log.events, &call.plan)
}
