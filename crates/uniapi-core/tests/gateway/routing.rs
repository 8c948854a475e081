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
