//! The Responses API: object shape, truncation, tool calls and the typed event stream.

use serde_json::{Value, json};

use crate::support::{Sandbox, json_of, parse_sse};

#[tokio::test]
async fn response_object_has_output_text_and_usage() {
    let sb = Sandbox::start().await;
    let body = json!({"model": "gpt-4.1", "input": "Tell me a story", "instructions": "Be brief."});
    let (status, answer) = json_of(sb.post("/v1/responses", &body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "response");
    assert!(answer["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["model"], "gpt-4.1");
    assert_eq!(answer["instructions"], "Be brief.");
    assert_eq!(answer["incomplete_details"], Value::Null);
    let item = &answer["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    let text = item["content"][0]["text"].as_str().unwrap();
    assert_eq!(item["content"][0]["type"], "output_text");
    assert!(
        text.starts_with("Sandbox reply to: Tell me a story"),
        "{text}"
    );
    let usage = &answer["usage"];
    // "Be brief." + "Tell me a story" = 24 chars -> 6 tokens.
    assert_eq!(usage["input_tokens"], 6);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens"], text.split_whitespace().count());
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(6 + text.split_whitespace().count() as u64)
    );
}

#[tokio::test]
async fn response_is_incomplete_when_max_output_tokens_cuts_it() {
    let sb = Sandbox::start().await;
    let body = json!({
        "model": "gpt-4.1",
        "input": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "second question"}]}
        ],
        "max_output_tokens": 4
    });
    let (_, answer) = json_of(sb.post("/v1/responses", &body).send().await.unwrap()).await;
    assert_eq!(answer["status"], "incomplete");
    assert_eq!(
        answer["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "Sandbox reply to: second"
    );
    assert_eq!(answer["usage"]["output_tokens"], 4);

    let (status, err) = json_of(
        sb.post("/v1/responses", &json!({"model": "m"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "input");
}

#[tokio::test]
async fn response_calls_the_first_function_tool() {
    let sb = Sandbox::start().await;
    let body = json!({
        "model": "gpt-4.1", "input": "weather?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    });
    let (_, answer) = json_of(sb.post("/v1/responses", &body).send().await.unwrap()).await;
    let item = &answer["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "get_weather");
    assert_eq!(item["arguments"], "{}");
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
}

#[tokio::test]
async fn response_stream_emits_the_typed_event_sequence() {
    let sb = Sandbox::start().await;
    let body = json!({"model": "gpt-4.1", "input": "Hi there", "stream": true});
    let resp = sb
        .post("/v1/responses", &body)
        .header("x-sandbox-chunks", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&resp.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let payloads: Vec<Value> = events.iter().map(|e| e.json()).collect();
    for (i, (event, payload)) in events.iter().zip(&payloads).enumerate() {
        assert_eq!(payload["type"], event.name.as_deref().unwrap());
        assert_eq!(payload["sequence_number"], i);
    }
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert_eq!(payloads[0]["response"]["status"], "in_progress");
    assert_eq!(payloads[0]["response"]["usage"], Value::Null);
    let deltas: String = payloads[4..7]
        .iter()
        .map(|p| p["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(payloads[7]["text"], deltas.as_str());
    assert!(deltas.starts_with("Sandbox reply to: Hi there"));
    let item_id = payloads[2]["item"]["id"].as_str().unwrap();
    assert!(
        payloads[3..10]
            .iter()
            .filter(|p| p.get("item_id").is_some())
            .all(|p| p["item_id"] == item_id)
    );
    let done = &payloads[10]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
    assert_eq!(
        done["usage"]["output_tokens"],
        deltas.split_whitespace().count()
    );
    assert_eq!(done["usage"]["input_tokens"], 2);
}
