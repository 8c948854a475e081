//! Which channel answers: priority, weight, several keys, model maps.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn higher_priority_channel_takes_all_traffic() {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut high = channel("high", &a, &["gpt-4o-mini"]);
    high.priority = 10;
    let gw = TestGateway::start(config(vec![high, channel("low", &b, &["gpt-4o-mini"])])).await;
    for _ in 0..10 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    assert_eq!(a.calls().await, 10);
    assert_eq!(b.calls().await, 0);
}

#[tokio::test]
async fn equal_priority_shares_by_weight() {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut heavy = channel("heavy", &a, &["gpt-4o-mini"]);
    heavy.weight = 3;
    let gw = TestGateway::start(config(vec![heavy, channel("light", &b, &["gpt-4o-mini"])])).await;
    for _ in 0..200 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    let (to_a, to_b) = (a.calls().await, b.calls().await);
    assert_eq!(to_a + to_b, 200);
    // expected 150/50; a binomial(200, 0.75) stays within 115..=185 with overwhelming probability
    assert!(
        (115..=185).contains(&to_a),
        "heavy got {to_a}, light got {to_b}"
    );
    assert!(to_b >= 15, "light got {to_b}");
}

#[tokio::test]
async fn several_keys_of_one_channel_share_its_load() {
    let sandbox = Sandbox::with_keys(&["sk-key-one", "sk-key-two"]).await;
    let mut shared = channel("shared", &sandbox, &["gpt-4o-mini"]);
    shared.keys = vec!["sk-key-one".into(), "sk-key-two".into()];
    let gw = TestGateway::start(config(vec![shared])).await;
    for _ in 0..6 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    let journal = sandbox.journal().await;
    let one = journal
        .iter()
        .filter(|r| r["authorization"] == "Bearer sk-key-one")
        .count();
    let two = journal
        .iter()
        .filter(|r| r["authorization"] == "Bearer sk-key-two")
        .count();
    assert_eq!((one, two), (3, 3));
}

#[tokio::test]
async fn upstream_sees_channel_key_mapped_model_and_the_body_unchanged() {
    let sandbox = Sandbox::start().await;
    let mut mapped = channel("mapped", &sandbox, &[]);
    mapped.model_map = [("my-alias".to_string(), "gpt-4o-mini".to_string())]
        .into_iter()
        .collect();
    let gw = TestGateway::start(config(vec![mapped])).await;
    let body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "model": "my-alias",
        "temperature": 0.25,
        "logprobs": true,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "vendor_extension": {"anything": [1, 2, 3]},
    });
    let (status, answer) = json_of(
        gw.post("/v1/chat/completions", USER_KEY, body.clone())
            .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let journal = sandbox.journal().await;
    assert_eq!(journal.len(), 1);
    let seen = &journal[0];
    assert_eq!(seen["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(seen["path"], "/v1/chat/completions");
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o-mini");
    assert_eq!(seen["body_json"], expected);
}

/// Sends one streamed chat request over a raw connection and returns the decoded body and how many
/// HTTP chunks (writes of the gateway, as far as chunked framing shows them) carried it.
async fn raw_stream(gw: &TestGateway, body: serde_json::Value) -> (String, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {USER_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, mut rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let (mut text, mut chunks) = (String::new(), 0);
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        chunks += 1;
        text.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    (text, chunks)
}

/// One streamed chat answer with `events` content events, a usage event and `[DONE]`, all of it (head
/// and body) written at once.
async fn upstream_writing_at_once(events: usize) -> String {
    let chunk = |c: &mut String, event: String| {
        c.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
    };
    let mut body = String::new();
    for n in 0..events {
        chunk(
            &mut body,
            format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{n} \"}}}}]}}\n\n"
            ),
        );
    }
    chunk(&mut body, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":30,\"total_tokens\":35}}\n\n".into());
    chunk(&mut body, "data: [DONE]\n\n".into());
    body.push_str("0\r\n\r\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}"
    );
    raw_upstream(vec![(std::time::Duration::ZERO, response.into_bytes())]).await
}

#[tokio::test]
async fn events_that_arrive_together_are_sent_together() {
    let sandbox = Sandbox::start().await;
    let mut all_at_once = channel("c", &sandbox, &["gpt-4o-mini"]);
    all_at_once.base_url = upstream_writing_at_once(30).await;
    let gw = TestGateway::start(config(vec![all_at_once])).await;
    let (text, chunks) = raw_stream(
        &gw,
        json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // every content event arrived whole and in order; the usage event the client did not ask for is hidden
    let content: Vec<String> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: {"))
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e["data: ".len()..]).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|n| format!("w{n} ")).collect();
    assert_eq!(content, expected);
    assert!(!text.contains("\"usage\""), "{text}");
    // passed on one by one they would be 31 chunks (30 events and [DONE])
    assert!(chunks <= 3, "{chunks} chunks for 31 events");
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "complete", "{logs:?}");
    assert_eq!(logs[0]["output_tokens"], 30, "{logs:?}");
}

#[tokio::test]
async fn events_that_arrive_apart_are_sent_apart() {
    let sandbox = Sandbox::shaped(json!({"stream_chunks": 4, "chunk_delay_ms": 100})).await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let (text, chunks) = raw_stream(
        &gw,
        json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d"}]}),
    )
    .await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // each of the 4 content events came 100 ms after the last and went out on its own
    assert!(chunks >= 4, "{chunks} chunks: {text}");
}

#[tokio::test]
async fn a_stream_is_passed_through_chunk_by_chunk() {
    let sandbox = Sandbox::start().await;
    sandbox
        .set(json!({"stream_chunks": 4, "chunk_delay_ms": 150}))
        .await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let mut response = gw
        .post("/v1/chat/completions", USER_KEY, json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // chunks must arrive spread over time, not in one buffered piece
    let started = std::time::Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        arrivals.push(started.elapsed().as_millis());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "usage chunk sent although not asked: {text}"
    );
    assert!(arrivals.len() >= 3, "arrivals: {arrivals:?}");
    assert!(
        arrivals.last().unwrap() - arrivals.first().unwrap() >= 300,
        "arrivals: {arrivals:?}"
    );
}

#[tokio::test]
async fn the_client_gets_the_upstreams_descriptive_headers_and_none_of_its_account_or_cookies() {
    let sandbox = Sandbox::start().await;
    let body = json!({
        "id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         openai-processing-ms: 42\r\nopenai-version: 2020-10-01\r\nx-request-id: req_upstream\r\n\
         cache-control: no-store\r\nx-ratelimit-remaining-requests: 9\r\nset-cookie: session=upstream\r\n\
         openai-organization: the-operators-org\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = channel("c", &sandbox, &["gpt-4o-mini"]);
    raw.base_url = raw_upstream(vec![(std::time::Duration::ZERO, answer.into_bytes())]).await;
    let gw = TestGateway::start(config(vec![raw])).await;
    let response = gw.chat("gpt-4o-mini").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["openai-processing-ms"], "42");
    assert_eq!(headers["openai-version"], "2020-10-01");
    assert_eq!(headers["x-request-id"], "req_upstream");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["x-uniapi-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    // the channel's own account: its rate limits, organization and cookies stay with the gateway
    assert_ne!(
        headers
            .get("x-ratelimit-remaining-requests")
            .map(|v| v.to_str().unwrap()),
        Some("9")
    );
    assert!(!headers.contains_key("set-cookie"));
    assert!(!headers.contains_key("openai-organization"));
    let text = response.text().await.unwrap();
    assert_eq!(headers["content-length"], text.len().to_string().as_str());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"],
        "chatcmpl-h"
    );
}

#[tokio::test]
async fn the_upstream_gets_the_host_of_its_channel_url() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    let authority = sandbox.url.trim_start_matches("http://");
    let journal = sandbox.journal().await;
    let hosts: Vec<&serde_json::Value> = journal.iter().map(|r| &r["headers"]["host"]).collect();
    assert_eq!(hosts, [authority], "{journal:?}");
}
