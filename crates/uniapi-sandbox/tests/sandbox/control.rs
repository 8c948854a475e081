//! The control endpoint: fault rules, per-request knobs, the journal and the live config.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, field, file, json_of, parse_sse, read_until_error};

fn stream_body() -> Value {
    json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "Count to ten please"}]})
}

#[tokio::test]
async fn cut_after_fault_ends_the_stream_without_finish_or_done() {
    let sb = Sandbox::start().await;
    sb.push_fault(json!({"count": 1, "cut_after": 2, "path": "/v1/chat/completions"}))
        .await;
    let resp = sb
        .post("/v1/chat/completions", &stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (received, failed) = read_until_error(resp).await;
    assert!(failed, "the body must end with an error, got {received:?}");
    let events = parse_sse(&received);
    assert_eq!(events.len(), 3, "role + 2 content chunks: {received}");
    assert!(!received.contains("[DONE]"));
    assert!(!received.contains("\"finish_reason\":\"stop\""));
    assert!(events.iter().all(|e| e.json()["choices"] != json!([])));

    // The rule is used up: the next stream is whole.
    let resp = sb
        .post("/v1/chat/completions", &stream_body())
        .send()
        .await
        .unwrap();
    let (received, failed) = read_until_error(resp).await;
    assert!(!failed);
    assert!(received.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn cut_after_applies_to_response_streams_too() {
    let sb = Sandbox::start().await;
    let body = json!({"model": "m", "input": "hello", "stream": true});
    let resp = sb
        .post("/v1/responses", &body)
        .header("x-sandbox-cut-after", "1")
        .send()
        .await
        .unwrap();
    let (received, failed) = read_until_error(resp).await;
    assert!(failed);
    let kinds: Vec<String> = parse_sse(&received)
        .into_iter()
        .map(|e| e.name.unwrap())
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("response.output_text.delta")
    );
    assert_eq!(kinds.iter().filter(|k| k.ends_with(".delta")).count(), 1);
}

#[tokio::test]
async fn status_faults_are_consumed_in_order_and_then_stop() {
    let sb = Sandbox::start().await;
    sb.push_fault(
        json!({"count": 2, "status": 429, "retry_after": 7, "path": "/v1/chat/completions"}),
    )
    .await;
    sb.push_fault(json!({"count": 1, "status": 500})).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    // An embeddings call skips the chat-only rule and takes the any-path one.
    let resp = sb
        .post("/v1/embeddings", &json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "server_error");

    for _ in 0..2 {
        let resp = sb.post("/v1/chat/completions", &chat).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let (_, body) = json_of(resp).await;
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }
    let resp = sb.post("/v1/chat/completions", &chat).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let pending = sb.control(Method::GET, "/__sandbox/faults", None).await;
    assert_eq!(pending, json!([]));
}

#[tokio::test]
async fn faults_wait_for_auth_and_can_carry_a_body_or_be_cleared() {
    let sb = Sandbox::start().await;
    sb.push_fault(json!({"status": 503, "body": {"error": {"message": "custom", "type": "x", "param": null, "code": "y"}}})).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    // A rejected call does not consume the rule.
    let resp = sb
        .client
        .post(sb.url("/v1/chat/completions"))
        .bearer_auth("wrong-key")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, body) =
        json_of(sb.post("/v1/chat/completions", &chat).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["message"], "custom");

    sb.push_fault(json!({"count": 5, "status": 500})).await;
    sb.control(Method::DELETE, "/__sandbox/faults", None).await;
    let resp = sb.post("/v1/chat/completions", &chat).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let resp = sb
        .client
        .post(sb.url("/__sandbox/faults"))
        .body("{\"count\": 1, \"stauts\": 500}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "typos in fault rules are refused");
}

#[tokio::test]
async fn header_knobs_fail_delay_and_reshape_calls() {
    let sb = Sandbox::start().await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let resp = sb
        .post("/v1/chat/completions", &chat)
        .header("x-sandbox-fail-status", "502")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["type"], "server_error");

    let started = Instant::now();
    let resp = sb
        .post("/v1/chat/completions", &chat)
        .header("x-sandbox-latency-ms", "300")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed().as_millis() >= 300);

    let text = sb
        .post("/v1/chat/completions", &stream_body())
        .header("x-sandbox-chunks", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // role, 2 content, finish, usage, [DONE]
    assert_eq!(parse_sse(&text).len(), 6);

    let resp = sb
        .post("/v1/chat/completions", &chat)
        .header("x-sandbox-chunks", "many")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "x-sandbox-chunks");
}

#[tokio::test]
async fn config_updates_apply_to_later_calls() {
    let sb = Sandbox::start().await;
    let answer = sb
        .control(
            Method::PUT,
            "/__sandbox/config",
            Some(json!({"stream_chunks": 3, "latency_ms": 200})),
        )
        .await;
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["config"]["stream_chunks"], 3);
    let started = Instant::now();
    let text = sb
        .post("/v1/chat/completions", &stream_body())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(started.elapsed().as_millis() >= 200);
    assert_eq!(parse_sse(&text).len(), 7);
    let health = sb.control(Method::GET, "/__sandbox/health", None).await;
    assert_eq!(health, json!({"ok": true}));
}

#[tokio::test]
async fn journal_records_every_v1_call_including_rejected_ones() {
    let sb = Sandbox::start().await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    sb.post("/v1/chat/completions", &chat).send().await.unwrap();
    sb.client
        .post(sb.url("/v1/embeddings?trace=1"))
        .bearer_auth("nope")
        .body("not json")
        .send()
        .await
        .unwrap();
    sb.post_form(
        "/v1/audio/transcriptions",
        &[
            file("file", "a.wav", &[1, 2, 3]),
            field("model", "whisper-1"),
        ],
    )
    .send()
    .await
    .unwrap();
    sb.control(Method::GET, "/__sandbox/health", None).await;

    let journal = sb.journal().await;
    assert_eq!(journal.len(), 3, "{journal:?}");
    let first = &journal[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["authorization"], format!("Bearer {KEY}"));
    assert_eq!(first["content_type"], "application/json");
    assert_eq!(first["body_json"], chat);
    assert_eq!(first["body_len"], chat.to_string().len());
    assert_eq!(first["multipart_fields"], Value::Null);
    assert_eq!(first["query"], Value::Null);

    let second = &journal[1];
    assert_eq!(second["authorization"], "Bearer nope");
    assert_eq!(second["query"], "trace=1");
    assert_eq!(second["body_json"], Value::Null);
    assert_eq!(second["body_len"], 8);

    let third = &journal[2];
    assert_eq!(
        third["multipart_fields"],
        json!({"file": "<file a.wav, 3 bytes>", "model": "whisper-1"})
    );

    sb.control(Method::DELETE, "/__sandbox/requests", None)
        .await;
    assert!(sb.journal().await.is_empty());
}
