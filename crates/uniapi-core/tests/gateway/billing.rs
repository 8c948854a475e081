//! Money: reserve before the upstream, capture the truth after, never overdraw, never charge twice.

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::billing::tokens::count_tokens;
use uniapi_core::config::PriceConfig;

use crate::support::*;

/// gpt-4o-mini in the test config: 0.15 / 0.60 USD per Mtok = 150 / 600 nano-USD per thousand tokens.
fn token_cost(prompt: u64, completion: u64) -> i64 {
    let numerator = prompt as i128 * 150_000_000 + completion as i128 * 600_000_000;
    ((numerator + 999_999) / 1_000_000) as i64
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn a_json_answer_is_charged_its_reported_usage_with_the_cost_in_a_header() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    let response = gw
        .post("/v1/chat/completions", USER_KEY, chat("what does it cost"))
        .await;
    let header = response.headers()["x-uniapi-cost-usd"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    let usage = &body["usage"];
    let expected = token_cost(
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(expected > 0);
    assert_eq!(header, format!("0.{expected:09}"));
    assert_eq!(before - balance(&gw).await, expected);
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["cost_nano"], expected);
    assert_eq!(logs[0]["cost_detail"]["basis"], "reported");
    assert_eq!(logs[0]["input_tokens"], usage["prompt_tokens"]);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_stream_asks_the_upstream_for_usage_and_hides_it_from_a_client_that_did_not() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    let mut body = chat("stream me");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", USER_KEY, body.clone())
        .await
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(
        !text.contains("\"prompt_tokens\""),
        "the client got a usage chunk it did not ask for: {text}"
    );
    let sent = &sandbox.journal().await[0]["body_json"];
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // the upstream's count is what was billed
    let mut asked = body.clone();
    asked["stream"] = json!(false);
    let (_, plain) = json_of(gw.post("/v1/chat/completions", USER_KEY, asked).await).await;
    let expected = token_cost(
        plain["usage"]["prompt_tokens"].as_u64().unwrap(),
        plain["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    let logs = gw.logs(2).await;
    let streamed = logs.iter().find(|l| l["stream"] == true).unwrap();
    assert_eq!(streamed["cost_detail"]["basis"], "reported");
    assert_eq!(streamed["cost_nano"], expected);
    assert_eq!(before - balance(&gw).await, 2 * expected);
    // a client that asked for usage gets it
    body["stream_options"] = json!({"include_usage": true});
    let text = gw
        .post("/v1/chat/completions", USER_KEY, body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"prompt_tokens\""), "{text}");
}

/// The content deltas of a chat stream, in order.
fn deltas(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn a_stream_the_upstream_cuts_pays_exactly_for_what_was_delivered() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    sandbox.fault(json!({"count": 1, "cut_after": 3})).await;
    let mut body = chat("one two three four five six seven eight");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", USER_KEY, body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("upstream_stream_cut"));
    let delivered: u64 = deltas(&text)
        .iter()
        .map(|d| count_tokens("gpt-4o-mini", d))
        .sum();
    assert!(delivered > 0);
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "upstream_cut");
    assert_eq!(logs[0]["cost_detail"]["basis"], "counted");
    assert_eq!(logs[0]["output_tokens"], delivered);
    let prompt = logs[0]["input_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(logs[0]["cost_nano"], token_cost(prompt, delivered));
    assert_eq!(before - balance(&gw).await, token_cost(prompt, delivered));
    reconciled(&gw).await;
}

#[tokio::test]
async fn an_upstream_that_reports_no_usage_is_billed_by_counting() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    sandbox.fault(json!({"count": 2, "no_usage": true})).await;
    let mut body = chat("count me please");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", USER_KEY, body.clone())
        .await
        .text()
        .await
        .unwrap();
    let streamed: u64 = deltas(&text)
        .iter()
        .map(|d| count_tokens("gpt-4o-mini", d))
        .sum();
    body["stream"] = json!(false);
    let (_, plain) = json_of(gw.post("/v1/chat/completions", USER_KEY, body).await).await;
    assert!(plain.get("usage").is_none());
    let whole = count_tokens(
        "gpt-4o-mini",
        plain["choices"][0]["message"]["content"].as_str().unwrap(),
    );
    let logs = gw.logs(2).await;
    for log in &logs {
        assert_eq!(log["cost_detail"]["basis"], "counted", "{log}");
        let expected_output = if log["stream"] == true {
            streamed
        } else {
            whole
        };
        assert_eq!(log["output_tokens"], expected_output);
        assert_eq!(
            log["cost_nano"],
            token_cost(log["input_tokens"].as_u64().unwrap(), expected_output)
        );
    }
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_client_that_leaves_pays_for_the_deltas_it_was_sent() {
    let sandbox = Sandbox::start().await;
    sandbox
        .set(json!({"stream_chunks": 8, "chunk_delay_ms": 300}))
        .await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    let mut body = chat("a b c d e f g h i j k l");
    body["stream"] = json!(true);
    let mut response = gw.post("/v1/chat/completions", USER_KEY, body).await;
    let mut received = String::new();
    while deltas(&received).iter().filter(|d| !d.is_empty()).count() < 2 {
        received.push_str(std::str::from_utf8(&response.chunk().await.unwrap().unwrap()).unwrap());
    }
    drop(response);
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "client_gone");
    // what the gateway had handed over when the client left: the deltas seen, or one more in flight
    let full_reply = {
        let mut plain = chat("a b c d e f g h i j k l");
        plain["stream"] = json!(true);
        gw.post("/v1/chat/completions", USER_KEY, plain)
            .await
            .text()
            .await
            .unwrap()
    };
    let all = deltas(&full_reply);
    let prefix_tokens: Vec<u64> = (0..=all.len())
        .map(|n| {
            all[..n]
                .iter()
                .map(|d| count_tokens("gpt-4o-mini", d))
                .sum()
        })
        .collect();
    let seen = deltas(&received).len();
    let output = logs[0]["output_tokens"].as_u64().unwrap();
    assert!(
        output == prefix_tokens[seen] || output == prefix_tokens[seen + 1],
        "billed {output}, prefixes {prefix_tokens:?}, seen {seen}"
    );
    assert!(output < prefix_tokens[all.len()], "billed the whole answer");
    let cost = logs[0]["cost_nano"].as_i64().unwrap();
    assert_eq!(
        cost,
        token_cost(logs[0]["input_tokens"].as_u64().unwrap(), output)
    );
    gw.logs(2).await;
    let all_cost: i64 = gw
        .logs(2)
        .await
        .iter()
        .map(|l| l["cost_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(before - balance(&gw).await, all_cost);
    reconciled(&gw).await;
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_never_overdraw_a_balance() {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"latency_ms": 150})).await;
    let mut cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini"])]);
    cfg.prices.insert(
        "gpt-4o-mini".into(),
        PriceConfig {
            per_call: Some(0.01),
            ..Default::default()
        },
    );
    cfg.users[0].balance_usd = 0.05;
    let gw = TestGateway::start(cfg).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let client = http();
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(USER_KEY)
                    .json_body(&chat("hi"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok, 5, "{statuses:?}");
    assert_eq!(refused, 295);
    assert_eq!(
        sandbox.calls().await,
        5,
        "a refused request reached the upstream"
    );
    assert_eq!(balance(&gw).await, 0);
    reconciled(&gw).await;
    let response = gw.chat("gpt-4o-mini").await;
    let body = expect_error(response, 429, "insufficient_quota").await;
    assert_eq!(body["error"]["type"], "insufficient_quota");
}

#[tokio::test]
async fn failover_charges_once_and_a_failed_request_costs_nothing() {
    let (a, b) = (Sandbox::start().await, Sandbox::start().await);
    let mut first = channel("first", &a, &["gpt-4o-mini"]);
    first.priority = 10;
    let gw = TestGateway::start(config(vec![first, channel("second", &b, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    a.fault(json!({"count": 1, "status": 500})).await;
    let (status, body) = json_of(
        gw.post("/v1/chat/completions", USER_KEY, chat("once"))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let expected = token_cost(
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        body["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(before - balance(&gw).await, expected);
    a.fault(json!({"count": 1, "status": 500})).await;
    b.fault(json!({"count": 1, "status": 503})).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 502);
    a.fault(json!({"count": 1, "status": 400})).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 400);
    assert_eq!(
        before - balance(&gw).await,
        expected,
        "a failed request was charged"
    );
    gw.state.ledger.flush().await;
    let entries = gw
        .state
        .store
        .ledger_entries(user_id(&gw).await)
        .await
        .unwrap();
    let captures: Vec<_> = entries.iter().filter(|e| e.1 == "capture").collect();
    assert_eq!(captures.len(), 1, "{entries:?}");
    assert_eq!(entries.iter().filter(|e| e.1 == "release").count(), 2);
    reconciled(&gw).await;
}

#[tokio::test]
async fn key_limits_answer_429_with_openai_rate_limit_headers() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let uid = user_id(&gw).await;
    let (_, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": uid, "name": "limited", "rpm": 2, "tpm": 100000})),
        )
        .await;
    let limited = key["key"].as_str().unwrap().to_string();
    let first = gw.post("/v1/chat/completions", &limited, chat("hi")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "100000");
    assert!(first.headers().contains_key("x-ratelimit-remaining-tokens"));
    assert_eq!(
        gw.post("/v1/chat/completions", &limited, chat("hi"))
            .await
            .status(),
        200
    );
    let third = gw.post("/v1/chat/completions", &limited, chat("hi")).await;
    assert_eq!(third.headers()["retry-after"], "30");
    assert_eq!(third.headers()["x-ratelimit-remaining-requests"], "0");
    expect_error(third, 429, "rate_limit_exceeded").await;
    assert_eq!(sandbox.calls().await, 2);

    // tokens per minute: the estimate (prompt + max_tokens) is taken; what is left cannot cover the next one
    let (_, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": uid, "name": "tpm", "tpm": 300})),
        )
        .await;
    let small = key["key"].as_str().unwrap().to_string();
    let mut body = chat("hi");
    body["max_tokens"] = json!(200);
    body["stream"] = json!(true);
    sandbox.set(json!({"chunk_delay_ms": 100})).await;
    // while the first request streams, its estimate is held against the key's tokens
    let holding = gw.post("/v1/chat/completions", &small, body.clone()).await;
    assert_eq!(holding.status(), 200);
    let response = gw.post("/v1/chat/completions", &small, body).await;
    assert!(response.headers().contains_key("retry-after"));
    let error = expect_error(response, 429, "rate_limit_exceeded").await;
    assert_eq!(error["error"]["type"], "tokens");
    holding.text().await.unwrap();
    sandbox.set(json!({"chunk_delay_ms": 0})).await;

    // a spending cap binds the key, not the user
    let (_, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": uid, "name": "capped", "quota_usd": 0.000001})),
        )
        .await;
    let capped = key["key"].as_str().unwrap().to_string();
    expect_error(
        gw.post("/v1/chat/completions", &capped, chat("hi")).await,
        429,
        "insufficient_quota",
    )
    .await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
}

#[tokio::test]
async fn concurrency_limit_holds_a_slot_until_the_stream_ends() {
    let sandbox = Sandbox::start().await;
    sandbox
        .set(json!({"stream_chunks": 4, "chunk_delay_ms": 200}))
        .await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let uid = user_id(&gw).await;
    let (_, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": uid, "name": "one", "max_concurrency": 1})),
        )
        .await;
    let one = key["key"].as_str().unwrap().to_string();
    let mut body = chat("a b c d");
    body["stream"] = json!(true);
    let streaming = gw.post("/v1/chat/completions", &one, body.clone()).await;
    assert_eq!(streaming.status(), 200);
    expect_error(
        gw.post("/v1/chat/completions", &one, chat("x")).await,
        429,
        "concurrency_limit_exceeded",
    )
    .await;
    streaming.text().await.unwrap();
    assert_eq!(
        gw.post("/v1/chat/completions", &one, chat("x"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_served_model_without_a_price_is_refused_before_the_upstream() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel(
        "c",
        &sandbox,
        &["gpt-4o-mini", "unpriced-model"],
    )]))
    .await;
    let body = json!({"model": "unpriced-model", "messages": [{"role": "user", "content": "hi"}]});
    expect_error(
        gw.post("/v1/chat/completions", USER_KEY, body.clone())
            .await,
        403,
        "model_price_missing",
    )
    .await;
    assert_eq!(sandbox.calls().await, 0);
    gw.admin(
        Method::PUT,
        "/prices/unpriced-model",
        Some(json!({"free": true})),
    )
    .await;
    let response = gw.post("/v1/chat/completions", USER_KEY, body).await;
    assert_eq!(response.headers()["x-uniapi-cost-usd"], "0.000000000");
}

#[tokio::test]
async fn balance_endpoints_agree_with_the_ledger() {
    let sandbox = Sandbox::start().await;
    let mut cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini"])]);
    cfg.prices.insert(
        "gpt-4o-mini".into(),
        PriceConfig {
            per_call: Some(0.25),
            ..Default::default()
        },
    );
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    let get = |path: &str| {
        http()
            .get(format!("{}{path}", gw.url))
            .bearer_auth(USER_KEY)
            .send()
    };
    let (status, usd) = json_of(get("/v1/billing/usage?unit=usd").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        usd,
        json!({"success": true, "data": {"balance": 9.75, "used": 0.25, "cache_used": 0.0}})
    );
    let (_, credits) = json_of(get("/v1/billing/usage").await.unwrap()).await;
    assert_eq!(credits["data"]["balance"], 9.75 * 500_000.0);
    let (_, token) = json_of(get("/v1/billing/usage?type=token&unit=usd").await.unwrap()).await;
    assert_eq!(token["data"]["balance"], -1.0);
    assert_eq!(token["data"]["used"], 0.25);
    for prefix in ["/v1", ""] {
        let (status, sub) = json_of(
            get(&format!("{prefix}/dashboard/billing/subscription"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        let (_, used) = json_of(
            get(&format!("{prefix}/dashboard/billing/usage"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(sub["hard_limit_usd"], 10.0);
        assert_eq!(used["total_usage"], 25.0);
    }
    let bad = http()
        .get(format!("{}/v1/billing/usage", gw.url))
        .bearer_auth("sk-nope")
        .send()
        .await
        .unwrap();
    expect_error(bad, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn credits_are_ledger_entries_applied_once() {
    let gw = TestGateway::start(config(vec![])).await;
    let uid = user_id(&gw).await;
    let before = balance(&gw).await;
    let (status, body) = gw
        .admin(
            Method::POST,
            &format!("/users/{uid}/credit"),
            Some(json!({"amount_usd": 1.5, "note": "top-up", "id": "inv-1"})),
        )
        .await;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (_, again) = gw
        .admin(
            Method::POST,
            &format!("/users/{uid}/credit"),
            Some(json!({"amount_usd": 1.5, "id": "inv-1"})),
        )
        .await;
    assert_eq!(again["applied"], false);
    assert_eq!(balance(&gw).await - before, 1_500_000_000);
    let (status, _) = gw
        .admin(
            Method::POST,
            &format!("/users/{uid}/credit"),
            Some(json!({"amount_usd": -100.0})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = gw
        .admin(
            Method::POST,
            &format!("/users/{uid}/credit"),
            Some(json!({"amount_usd": -0.5})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(balance(&gw).await - before, 1_000_000_000);
    reconciled(&gw).await;
}

#[tokio::test]
async fn stats_aggregate_spend_by_model_and_bucket() {
    let sandbox = Sandbox::start().await;
    let mut cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini", "gpt-4o"])]);
    cfg.prices.insert(
        "gpt-4o".into(),
        PriceConfig {
            per_call: Some(0.5),
            ..Default::default()
        },
    );
    let gw = TestGateway::start(cfg).await;
    for model in ["gpt-4o", "gpt-4o", "gpt-4o-mini"] {
        assert_eq!(gw.chat(model).await.status(), 200);
    }
    gw.logs(3).await;
    let (status, stats) = gw
        .admin(Method::GET, "/stats?group_by=model&bucket=day", None)
        .await;
    assert_eq!(status, 200, "{stats}");
    let rows = stats["data"].as_array().unwrap();
    let four_o = rows.iter().find(|r| r["group"] == "gpt-4o").unwrap();
    assert_eq!(four_o["requests"], 2);
    assert_eq!(four_o["cost_nano"], 1_000_000_000i64);
    let (_, totals) = gw.admin(Method::GET, "/stats", None).await;
    assert_eq!(totals["data"][0]["requests"], 3);
    let (status, _) = gw.admin(Method::GET, "/stats?group_by=colour", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_clean_shutdown_persists_every_charge_on_every_backend() {
    for url in crate::store::store_urls().await {
        let sandbox = Sandbox::start().await;
        let mut cfg = config(vec![channel("c", &sandbox, &["gpt-4o-mini"])]);
        cfg.database.url = url;
        let gw = TestGateway::start(cfg.clone()).await;
        for _ in 0..20 {
            assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
        }
        let live = balance(&gw).await;
        assert!(live < 10_000_000_000);
        gw.stop().await;
        let gw = TestGateway::start(cfg).await;
        assert_eq!(balance(&gw).await, live, "a charge was lost on shutdown");
        assert_eq!(gw.logs(20).await.len(), 20);
        reconciled(&gw).await;
        gw.stop().await;
    }
}

#[tokio::test]
async fn images_are_priced_per_image_by_size_and_quality() {
    let sandbox = Sandbox::start().await;
    let mut cfg = config(vec![channel("c", &sandbox, &["dall-e-3"])]);
    let per_image = |usd: f64| PriceConfig {
        per_image: Some(usd),
        ..Default::default()
    };
    cfg.prices.insert("dall-e-3".into(), per_image(0.04));
    cfg.prices
        .insert("dall-e-3:1792x1024".into(), per_image(0.08));
    cfg.prices
        .insert("dall-e-3:1792x1024:hd".into(), per_image(0.12));
    let gw = TestGateway::start(cfg).await;
    for (size, quality, n, expected) in [
        ("1024x1024", "standard", 2, "0.080000000"),
        ("1792x1024", "standard", 1, "0.080000000"),
        ("1792x1024", "hd", 3, "0.360000000"),
    ] {
        let body = json!({"model": "dall-e-3", "prompt": "a lighthouse", "size": size, "quality": quality, "n": n});
        let response = gw.post("/v1/images/generations", USER_KEY, body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-uniapi-cost-usd"],
            expected,
            "{size} {quality} x{n}"
        );
    }
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_client_that_leaves_before_a_json_answer_is_logged_and_pays_nothing() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let before = balance(&gw).await;
    sandbox.fault(json!({"count": 1, "latency_ms": 1500})).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let request = http()
        .post(url)
        .bearer_auth(USER_KEY)
        .json_body(&chat("slow"))
        .timeout(std::time::Duration::from_millis(300))
        .send();
    assert!(request.await.is_err(), "the client should have given up");
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["outcome"], "client_gone");
    assert_eq!(
        logs[0]["error"],
        "the client closed the connection before the upstream answered"
    );
    assert_eq!(logs[0]["model"], "gpt-4o-mini");
    assert_eq!(logs[0]["status"], 499);
    assert_eq!(logs[0]["cost_nano"], 0);
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}
