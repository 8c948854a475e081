//! Auth, chat completions (JSON and stream), legacy completions, models and routing errors.

use serde_json::{Value, json};

use crate::support::{Sandbox, json_of, parse_sse};

fn chat_body() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello sandbox"}
        ]
    })
}

#[tokio::test]
async fn missing_or_wrong_key_is_rejected_without_echoing_the_key() {
    let sb = Sandbox::start().await;
    let resp = sb
        .client
        .post(sb.url("/v1/chat/completions"))
        .body(chat_body().to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], Value::Null);

    let wrong = "sk-abcdefghijklmnopqrstuvwxyz";
    let resp = sb
        .client
        .post(sb.url("/v1/chat/completions"))
        .bearer_auth(wrong)
        .body(chat_body().to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 401);
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(message, "Incorrect API key provided: sk-ab***.");
    assert!(!message.contains(wrong));
}

#[tokio::test]
async fn chat_answers_the_last_user_message_with_usage() {
    let sb = Sandbox::start().await;
    let (status, body) = json_of(
        sb.post("/v1/chat/completions", &chat_body())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("Sandbox reply to: Hello sandbox"),
        "{content}"
    );
    let words = content.split_whitespace().count() as u64;
    let usage = &body["usage"];
    // "You are helpful." + "Hello sandbox" = 29 chars -> ceil(29 / 4) = 8.
    assert_eq!(usage["prompt_tokens"], 8);
    assert_eq!(usage["completion_tokens"], words);
    assert_eq!(usage["total_tokens"], 8 + words);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);

    // Deterministic: the same request gets the same text.
    let (_, again) = json_of(
        sb.post("/v1/chat/completions", &chat_body())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again["choices"][0]["message"]["content"], content);
}

#[tokio::test]
async fn chat_honours_max_tokens_n_and_tools() {
    let sb = Sandbox::start().await;
    let mut body = chat_body();
    body["max_completion_tokens"] = json!(3);
    body["n"] = json!(2);
    let (_, answer) = json_of(sb.post("/v1/chat/completions", &body).send().await.unwrap()).await;
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(choice["message"]["content"], "Sandbox reply to:");
    }
    assert_eq!(answer["usage"]["completion_tokens"], 6);

    let mut body = chat_body();
    body["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other"}}
    ]);
    let (_, answer) = json_of(sb.post("/v1/chat/completions", &body).send().await.unwrap()).await;
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));

    body["tool_choice"] = json!("none");
    let (_, answer) = json_of(sb.post("/v1/chat/completions", &body).send().await.unwrap()).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_rejects_bad_bodies_naming_the_field() {
    let sb = Sandbox::start().await;
    let (status, body) = json_of(
        sb.post("/v1/chat/completions", &json!({"model": "m"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "messages");

    let (status, body) = json_of(
        sb.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "model");

    let resp = sb
        .client
        .post(sb.url("/v1/chat/completions"))
        .bearer_auth(crate::support::KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body")
    );
}

#[tokio::test]
async fn chat_stream_has_role_content_finish_and_done() {
    let sb = Sandbox::start().await;
    let (_, plain) = json_of(
        sb.post("/v1/chat/completions", &chat_body())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let full_text = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut body = chat_body();
    body["stream"] = json!(true);
    let resp = sb.post("/v1/chat/completions", &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&resp.text().await.unwrap());
    assert!(
        events.iter().all(|e| e.name.is_none()),
        "chat streams are data-only"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    // role, 8 content chunks (default stream_chunks), finish; no usage chunk.
    assert_eq!(chunks.len(), 10);
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..9]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, full_text);
    assert_eq!(chunks[9]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[9]["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn chat_stream_sends_usage_chunk_only_when_asked() {
    let sb = Sandbox::start().await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = sb
        .post("/v1/chat/completions", &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let usage_chunk = events[events.len() - 2].json();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 8);
    let completion = usage_chunk["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 0);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 8 + completion);
    // Every earlier chunk carries "usage": null.
    for event in &events[..events.len() - 2] {
        assert_eq!(event.json()["usage"], Value::Null);
        assert!(event.json().as_object().unwrap().contains_key("usage"));
    }
}

#[tokio::test]
async fn chat_stream_events_arrive_as_they_are_produced() {
    let sb = Sandbox::start().await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    let started = std::time::Instant::now();
    let mut resp = sb
        .post("/v1/chat/completions", &body)
        .header("x-sandbox-chunks", "4")
        .header("x-sandbox-chunk-delay-ms", "250")
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let mut rest = Vec::new();
    while let Some(bytes) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&bytes);
    }
    let total = started.elapsed();
    assert!(
        total.as_millis() >= 1000,
        "4 chunks x 250 ms, took {total:?}"
    );
    assert!(
        first_at.as_millis() < 500,
        "role chunk must not wait for the content: {first_at:?}"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&rest)
    );
    let content_events = parse_sse(&all)
        .iter()
        .filter(|e| e.data != "[DONE]" && e.json()["choices"][0]["delta"].get("content").is_some())
        .count();
    // 4 content chunks plus the role chunk's empty content.
    assert_eq!(content_events, 5);
}

#[tokio::test]
async fn completions_answer_and_stream_text_completion_objects() {
    let sb = Sandbox::start().await;
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["Say", "this is a test"], "max_tokens": 5});
    let (status, answer) = json_of(sb.post("/v1/completions", &body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["text"], "Sandbox completion of: this is");
    assert_eq!(choices[1]["finish_reason"], "length");
    // 3 + 14 chars -> ceil(17 / 4) = 5; 2 x 5 completion words.
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    assert_eq!(answer["usage"]["completion_tokens"], 10);

    let body = json!({"model": "m", "prompt": "hi", "max_tokens": 50, "stream": true,
                      "stream_options": {"include_usage": true}});
    let text = sb
        .post("/v1/completions", &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let streamed: String = chunks[..chunks.len() - 2]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(streamed.starts_with("Sandbox completion of: hi"));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        streamed.split_whitespace().count()
    );

    let (status, err) = json_of(
        sb.post("/v1/completions", &json!({"model": "m"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "prompt");
}

#[tokio::test]
async fn models_list_retrieve_and_unknown_paths() {
    let sb = Sandbox::start().await;
    let list = sb.get_json("/v1/models").await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert!(data.len() >= 3);
    assert!(
        data.iter()
            .all(|m| m["object"] == "model" && m["owned_by"].is_string())
    );

    let model = sb.get_json("/v1/models/gpt-4o-mini").await;
    assert_eq!(model["id"], "gpt-4o-mini");
    assert_eq!(model["object"], "model");

    let resp = sb
        .client
        .get(sb.url("/v1/models/nope"))
        .bearer_auth(crate::support::KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");

    let resp = sb
        .post("/v1/nothing/here", &json!({}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["message"],
        "Invalid URL (POST /v1/nothing/here)"
    );

    let resp = sb
        .client
        .get(sb.url("/v1/chat/completions"))
        .bearer_auth(crate::support::KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 405);
    assert!(body["error"]["message"].is_string());
}
