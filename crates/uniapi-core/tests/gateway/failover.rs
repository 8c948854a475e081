//! Failover before the first byte, cool-downs, key disabling, and faults mid-stream.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

async fn two_channels() -> (Sandbox, Sandbox, TestGateway) {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut first = channel("first", &a, &["gpt-4o-mini"]);
    first.priority = 10;
    let gw = TestGateway::start(config(vec![first, channel("second", &b, &["gpt-4o-mini"])])).await;
    (a, b, gw)
}

#[tokio::test]
async fn fails_over_on_500_429_and_401_and_logs_each_attempt() {
    for status in [500, 503, 429, 401, 403] {
        let (a, b, gw) = two_channels().await;
        a.fault(json!({"count": 1, "status": status})).await;
        let (got, body) = json_of(gw.chat("gpt-4o-mini").await).await;
        assert_eq!(got, 200, "status {status}: {body}");
        assert_eq!(
            (a.calls().await, b.calls().await),
            (1, 1),
            "status {status}"
        );
        let logs = gw.logs(1).await;
        let attempts = logs[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{logs:?}");
        assert_eq!(attempts[0]["channel"], "first");
        assert_eq!(attempts[0]["status"], status);
        assert!(
            attempts[0]["error"]
                .as_str()
                .unwrap()
                .contains(&status.to_string())
        );
        assert_eq!(attempts[1]["channel"], "second");
        assert_eq!(logs[0]["status"], 200);
    }
}

#[tokio::test]
async fn fails_over_when_the_upstream_is_down() {
    let b = Sandbox::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut dead = channel("dead", &b, &["gpt-4o-mini"]);
    dead.base_url = dead_url;
    dead.priority = 10;
    let gw = TestGateway::start(config(vec![dead, channel("alive", &b, &["gpt-4o-mini"])])).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    let logs = gw.logs(1).await;
    assert_eq!(
        logs[0]["attempts"][0]["error"],
        "connection to the upstream failed"
    );
}

#[tokio::test]
async fn fails_over_when_the_first_byte_is_too_slow() {
    let (a, b, gw) = two_channels().await;
    a.fault(json!({"count": 1, "latency_ms": 4000})).await;
    let started = std::time::Instant::now();
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    assert!(
        started.elapsed().as_millis() < 3_500,
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(b.calls().await, 1);
    let logs = gw.logs(1).await;
    assert_eq!(
        logs[0]["attempts"][0]["error"],
        "timed out waiting for the first byte"
    );
}

#[tokio::test]
async fn a_client_error_is_relayed_and_never_failed_over() {
    let (a, b, gw) = two_channels().await;
    a.fault(json!({"count": 1, "status": 400})).await;
    let (status, body) = json_of(gw.chat("gpt-4o-mini").await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(b.calls().await, 0);
}

#[tokio::test]
async fn every_channel_failing_gives_502_and_all_rate_limited_gives_429() {
    let (a, b, gw) = two_channels().await;
    a.fault(json!({"count": 1, "status": 500})).await;
    b.fault(json!({"count": 1, "status": 502})).await;
    expect_error(gw.chat("gpt-4o-mini").await, 502, "upstream_unavailable").await;

    a.fault(json!({"count": 1, "status": 429, "retry_after": 7}))
        .await;
    b.fault(json!({"count": 1, "status": 429, "retry_after": 3}))
        .await;
    let response = gw.chat("gpt-4o-mini").await;
    assert_eq!(response.headers()["retry-after"], "3");
    expect_error(response, 429, "rate_limit_exceeded").await;
    // the gateway stays healthy
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
}

#[tokio::test]
async fn max_attempts_bounds_the_failover() {
    let sandboxes = [
        Sandbox::start().await,
        Sandbox::start().await,
        Sandbox::start().await,
    ];
    let channels = sandboxes
        .iter()
        .enumerate()
        .map(|(i, s)| channel(&format!("c{i}"), s, &["gpt-4o-mini"]))
        .collect();
    let mut cfg = config(channels);
    cfg.routing.max_attempts = 2;
    let gw = TestGateway::start(cfg).await;
    for s in &sandboxes {
        s.fault(json!({"count": 1, "status": 500})).await;
    }
    expect_error(gw.chat("gpt-4o-mini").await, 502, "upstream_unavailable").await;
    let mut total = 0;
    for s in &sandboxes {
        total += s.calls().await;
    }
    assert_eq!(total, 2);
}

#[tokio::test]
async fn a_failing_channel_cools_down_and_is_probed_back() {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut first = channel("first", &a, &["gpt-4o-mini"]);
    first.priority = 10;
    let mut cfg = config(vec![first, channel("second", &b, &["gpt-4o-mini"])]);
    cfg.routing.failure_threshold = 2;
    cfg.routing.cooldown_secs = 1;
    let gw = TestGateway::start(cfg).await;
    a.fault(json!({"count": 2, "status": 500})).await;
    for _ in 0..2 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    assert_eq!(a.calls().await, 2);
    // cooling: the preferred channel is skipped
    for _ in 0..3 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    assert_eq!(a.calls().await, 2, "a cooling channel was tried");
    let (_, channels) = gw.admin(reqwest::Method::GET, "/channels", None).await;
    assert!(
        channels["data"][0]["cooldown_until"].is_number(),
        "{channels}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // probed back: it answers again and takes the traffic
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    assert_eq!(a.calls().await, 3);
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    assert_eq!(a.calls().await, 4);
}

#[tokio::test]
async fn an_upstream_401_disables_that_key_only() {
    let sandbox = Sandbox::with_keys(&["sk-good-key"]).await;
    let mut c = channel("c", &sandbox, &["gpt-4o-mini"]);
    c.keys = vec!["sk-revoked-key".into(), "sk-good-key".into()];
    let gw = TestGateway::start(config(vec![c])).await;
    // the first request may use either key; the revoked one is disabled on its first 401
    for _ in 0..4 {
        gw.chat("gpt-4o-mini").await;
    }
    for _ in 0..4 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    let revoked = sandbox
        .journal()
        .await
        .iter()
        .filter(|r| r["authorization"] == "Bearer sk-revoked-key")
        .count();
    assert_eq!(revoked, 1, "the revoked key was used after its 401");
    // persisted and visible to the operator, masked
    let mut disabled = false;
    for _ in 0..50 {
        let (_, body) = gw.admin(reqwest::Method::GET, "/channels", None).await;
        let keys = body["data"][0]["keys"].as_array().unwrap().clone();
        assert!(
            !body.to_string().contains("sk-revoked-key"),
            "an upstream key leaked: {body}"
        );
        let stored = gw.state.store.channels().await.unwrap();
        if keys.iter().any(|k| k["enabled"] == false) && stored[0].keys.iter().any(|k| !k.enabled) {
            disabled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(disabled);
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_is_logged() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    sandbox.fault(json!({"count": 1, "cut_after": 2})).await;
    let response = gw
        .post("/v1/chat/completions", USER_KEY, json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("\"code\":\"upstream_stream_cut\""), "{text}");
    assert!(!text.contains("[DONE]"));
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "upstream_cut");
    // the gateway stays healthy
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
}

#[tokio::test]
async fn a_stream_that_goes_silent_past_the_idle_timeout_is_cut_with_an_error_event() {
    // the first chunk comes at once, every later one after 400 ms: past the 150 ms idle timeout
    let sandbox = Sandbox::shaped(json!({"stream_chunks": 6, "chunk_delay_ms": 400})).await;
    let mut cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini"])]);
    cfg.routing.idle_timeout_ms = 150;
    let gw = TestGateway::start(cfg).await;
    let started = std::time::Instant::now();
    let response = gw
        .post("/v1/chat/completions", USER_KEY, json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("\"code\":\"upstream_stream_cut\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // cut by the idle timer, not by the sandbox finishing its 6 x 400 ms
    assert!(started.elapsed() < std::time::Duration::from_millis(1_500));
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "upstream_cut", "{logs:?}");
    assert_eq!(logs[0]["error"], "the upstream went silent mid-stream");
    // the gateway keeps serving (the silent connection is not reused)
    sandbox.set(json!({"chunk_delay_ms": 0})).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_logged_as_gone() {
    let sandbox = Sandbox::start().await;
    sandbox
        .set(json!({"stream_chunks": 8, "chunk_delay_ms": 200}))
        .await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let mut response = gw
        .post("/v1/chat/completions", USER_KEY, json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]}))
        .await;
    let _ = response.chunk().await.unwrap();
    drop(response);
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "client_gone", "{logs:?}");
}

/// An upstream error of declared length whose body comes in two parts, 400 ms apart.
async fn error_in_two_parts() -> (String, usize) {
    let body = format!(
        "{{\"error\":{{\"message\":\"{}\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}}}",
        "x".repeat(300)
    );
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(200);
    let url = raw_upstream(vec![
        (Duration::ZERO, format!("{head}{first}").into_bytes()),
        (Duration::from_millis(400), rest.as_bytes().to_vec()),
    ])
    .await;
    (url, body.len())
}

#[tokio::test]
async fn a_client_that_leaves_an_upstream_error_half_way_is_logged_as_gone() {
    let sandbox = Sandbox::start().await;
    let mut split = channel("c", &sandbox, &["gpt-4o-mini"]);
    (split.base_url, _) = error_in_two_parts().await;
    let gw = TestGateway::start(config(vec![split])).await;
    let mut response = gw.chat("gpt-4o-mini").await;
    assert_eq!(response.status(), 400);
    let part = response.chunk().await.unwrap().unwrap();
    assert_eq!(part.len(), 200);
    drop(response);
    let logs = gw.logs(1).await;
    // the first 200 bytes counted once: 300 were still due when the client left
    assert_eq!(logs[0]["outcome"], "client_gone", "{logs:?}");
    assert_eq!(logs[0]["status"], 400);
    assert_eq!(logs[0]["cost_nano"], 0);
}

#[tokio::test]
async fn an_upstream_error_of_declared_length_is_relayed_whole() {
    let sandbox = Sandbox::start().await;
    let mut split = channel("c", &sandbox, &["gpt-4o-mini"]);
    let length;
    (split.base_url, length) = error_in_two_parts().await;
    let gw = TestGateway::start(config(vec![split])).await;
    let response = gw.chat("gpt-4o-mini").await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert_eq!(text.len(), length);
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "complete", "{logs:?}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_streams_and_flushes_logs() {
    let sandbox = Sandbox::start().await;
    sandbox
        .set(json!({"stream_chunks": 4, "chunk_delay_ms": 150}))
        .await;
    let cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini"])]);
    let url = cfg.database.url.clone();
    let gw = TestGateway::start(cfg).await;
    for _ in 0..5 {
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    }
    let streaming = {
        let url = format!("{}/v1/chat/completions", gw.url);
        let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d"}]});
        tokio::spawn(async move {
            http()
                .post(url)
                .bearer_auth(USER_KEY)
                .json_body(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    gw.stop().await;
    let text = streaming.await.unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the in-flight stream was cut: {text}"
    );
    let store = uniapi_core::store::Store::connect(&url, 1).await.unwrap();
    let logs = store.logs(&Default::default()).await.unwrap();
    assert_eq!(logs.len(), 6);
    assert!(logs.iter().all(|l| l.outcome == "complete"));
}

#[tokio::test]
async fn an_upstream_that_echoes_our_key_never_gets_it_into_the_logs() {
    let (a, _b, gw) = two_channels().await;
    let echo = json!({"error": {"message": format!("bad key {UPSTREAM_KEY} for this org"), "type": "server_error", "param": null, "code": null}});
    a.fault(json!({"count": 1, "status": 500, "body": echo}))
        .await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    let logs = gw.logs(1).await;
    let text = logs[0].to_string();
    assert!(text.contains("bad key"), "{text}");
    assert!(
        !text.contains(UPSTREAM_KEY),
        "the upstream key reached the request log: {text}"
    );
}

#[tokio::test]
async fn a_channel_key_no_header_can_carry_is_skipped_for_the_next_channel() {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut broken = channel("broken", &a, &["gpt-4o-mini"]);
    broken.priority = 10;
    broken.keys = vec!["sk-pasted\nwith-a-newline".into()];
    let gw = TestGateway::start(config(vec![broken, channel("fine", &b, &["gpt-4o-mini"])])).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    // nothing was sent with the broken key; the next channel answered
    assert_eq!(a.calls().await, 0);
    assert_eq!(b.calls().await, 1);
    let logs = gw.logs(1).await;
    let attempts = logs[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{logs:?}");
    assert_eq!(
        attempts[0]["error"],
        "the channel key holds characters an HTTP header cannot carry"
    );
    assert_eq!(attempts[1]["status"], 200);
}
