//! Fal's queue protocol: submit, status and result from uniapi's store with uniapi's URLs, refunds,
//! idempotency, ownership, callbacks, and what the fal upstream receives.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};

use crate::support::*;

const MODEL: &str = "fal-ai/flux-1/dev";
const PRICE: i64 = 25_000_000;

pub fn fal_config(sandbox: &Sandbox, models: &[&str]) -> Config {
    let mut fal = channel("fal", sandbox, models);
    fal.kind = "fal".into();
    let mut cfg = config(vec![fal]);
    for (name, usd) in [
        (MODEL, 0.025),
        ("fal-ai/kling-video/v1/standard/text-to-video", 0.25),
    ] {
        cfg.prices.insert(
            name.into(),
            PriceConfig {
                per_call: Some(usd),
                ..Default::default()
            },
        );
    }
    cfg.tasks.poll_interval_ms = 50;
    cfg
}

async fn started(task_ms: u64, models: &[&str]) -> (Sandbox, TestGateway) {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": task_ms})).await;
    let gw = TestGateway::start(fal_config(&sandbox, models)).await;
    (sandbox, gw)
}

async fn call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{}{path}", gw.url))
        .header("authorization", format!("Key {key}"));
    if let Some(body) = body {
        request = request.json_body(&body);
    }
    json_of(request.send().await.unwrap()).await
}

async fn until_completed(gw: &TestGateway, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = call(
            gw,
            Method::GET,
            &format!("/fal-ai/flux-1/requests/{id}/status?logs=1"),
            USER_KEY,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == "COMPLETED" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} did not complete");
}

#[tokio::test]
async fn a_request_runs_to_success_with_urls_at_the_gateway_and_is_charged_once() {
    let (sandbox, gw) = started(400, &[]).await;
    let before = balance(&gw).await;
    let (status, answer) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({"prompt": "a tiger"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["request_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"));
    assert_eq!(answer["status"], "IN_QUEUE");
    let host = gw.url.clone();
    assert_eq!(
        answer["status_url"],
        format!("{host}/fal-ai/flux-1/requests/{id}/status")
    );
    assert_eq!(
        answer["response_url"],
        format!("{host}/fal-ai/flux-1/requests/{id}")
    );
    assert_eq!(before - balance(&gw).await, PRICE);
    let status = until_completed(&gw, &id).await;
    assert!(status.get("error").is_none(), "{status}");
    assert!(status["logs"].is_array());
    let (code, result) = call(
        &gw,
        Method::GET,
        &format!("/{MODEL}/requests/{id}"),
        USER_KEY,
        None,
    )
    .await;
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["images"].as_array().map(Vec::len), Some(1));
    // the upstream saw the model path and the Key scheme; nothing of uniapi's leaked
    let journal = sandbox.journal().await;
    let submitted = journal
        .iter()
        .find(|r| r["path"] == format!("/{MODEL}"))
        .unwrap();
    assert_eq!(submitted["authorization"], format!("Key {UPSTREAM_KEY}"));
    assert_eq!(submitted["body_json"], json!({"prompt": "a tiger"}));
    assert!(
        journal
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/status"))
    );
    assert!(!journal.iter().any(|r| r.to_string().contains(&id)));
    assert_eq!(before - balance(&gw).await, PRICE);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_failed_request_is_refunded_once_and_its_result_is_fals_error() {
    let (_sandbox, gw) = started(200, &[]).await;
    let before = balance(&gw).await;
    let (_, answer) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({"prompt": "please fail"})),
    )
    .await;
    let id = answer["request_id"].as_str().unwrap().to_string();
    let status = until_completed(&gw, &id).await;
    assert!(
        status["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&gw).await, before);
    let (code, result) = call(
        &gw,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}"),
        USER_KEY,
        None,
    )
    .await;
    assert_eq!(code, 500, "{result}");
    assert!(result["detail"].is_string());
    reconciled(&gw).await;
}

#[tokio::test]
async fn refusals_and_bad_input_cost_nothing_and_bad_input_calls_no_upstream() {
    let (sandbox, gw) = started(200, &[MODEL]).await;
    let before = balance(&gw).await;
    let not_json = http()
        .post(format!("{}/{MODEL}", gw.url))
        .header("authorization", format!("Key {USER_KEY}"))
        .body("nope")
        .send()
        .await
        .unwrap();
    expect_error(not_json, 400, "invalid_request").await;
    let (code, _) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 400);
    // no price for the path: refused before anything is sent
    let (code, body) = call(
        &gw,
        Method::POST,
        "/fal-ai/unpriced/model",
        USER_KEY,
        Some(json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("price_missing"))
    );
    // priced, but the only channel does not list it
    let (code, _) = call(
        &gw,
        Method::POST,
        "/fal-ai/kling-video/v1/standard/text-to-video",
        USER_KEY,
        Some(json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(code, 503);
    assert_eq!(sandbox.calls().await, 0);
    // the upstream's 422 is relayed in the OpenAI envelope, uncharged
    let (code, body) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({"num_images": 1})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt")
    );
    let (code, _) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({"prompt": "reject me"})),
    )
    .await;
    assert_eq!(code, 422);
    let (code, body) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        "sk-nobody-000000000000000000000000000000000000000",
        Some(json!({"prompt": "x"})),
    )
    .await;
    assert_eq!((code, body["error"].is_object()), (401, true));
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn an_idempotent_resubmit_returns_the_first_request_and_charges_once() {
    let (sandbox, gw) = started(200, &[]).await;
    let before = balance(&gw).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = http()
            .post(format!("{}/{MODEL}", gw.url))
            .bearer_auth(USER_KEY)
            .header("idempotency-key", "order-7")
            .json_body(&json!({"prompt": "once"}))
            .send()
            .await
            .unwrap();
        let (_, answer) = json_of(response).await;
        ids.push(answer["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(before - balance(&gw).await, PRICE);
    let submits = sandbox
        .journal()
        .await
        .iter()
        .filter(|r| r["path"] == format!("/{MODEL}"))
        .count();
    assert_eq!(submits, 1);
}

#[tokio::test]
async fn another_users_request_is_not_found() {
    let (_sandbox, gw) = started(200, &[]).await;
    let (_, answer) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}"),
        USER_KEY,
        Some(json!({"prompt": "mine"})),
    )
    .await;
    let id = answer["request_id"].as_str().unwrap().to_string();
    let (_, bob) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"name": "bob", "balance_usd": 1.0})),
        )
        .await;
    let (_, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": bob["id"], "name": "b"})),
        )
        .await;
    let bob_key = key["key"].as_str().unwrap().to_string();
    for path in [
        format!("/fal-ai/flux-1/requests/{id}/status"),
        format!("/fal-ai/flux-1/requests/{id}"),
    ] {
        let (code, body) = call(&gw, Method::GET, &path, &bob_key, None).await;
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (404, Some("task_not_exist"))
        );
    }
    // under another app's path the id is not found either
    let (code, _) = call(
        &gw,
        Method::GET,
        &format!("/fal-ai/other/requests/{id}/status"),
        USER_KEY,
        None,
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn the_fal_webhook_gets_each_state_change_and_never_reaches_the_upstream() {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": 300})).await;
    let mut cfg = fal_config(&sandbox, &[]);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    let receiver = Receiver::start(1).await;
    let (code, answer) = call(
        &gw,
        Method::POST,
        &format!("/{MODEL}?fal_webhook={}", receiver.url),
        USER_KEY,
        Some(json!({"prompt": "hook"})),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let bodies = receiver.until(|b| b["status"] == "COMPLETED").await;
    let last = bodies.last().unwrap();
    assert_eq!(last["request_id"], answer["request_id"]);
    assert!(last["payload"]["images"].is_array(), "{last}");
    for record in sandbox.journal().await {
        assert!(!record.to_string().contains(&receiver.url), "{record}");
    }
}

#[tokio::test]
async fn a_video_model_polls_by_its_app_and_answers_the_video() {
    let (sandbox, gw) = started(200, &[]).await;
    let path = "/fal-ai/kling-video/v1/standard/text-to-video";
    let (_, answer) = call(
        &gw,
        Method::POST,
        path,
        USER_KEY,
        Some(json!({"prompt": "waves"})),
    )
    .await;
    let id = answer["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        answer["status_url"],
        format!("{}/fal-ai/kling-video/requests/{id}/status", gw.url)
    );
    let task = loop {
        let (_, status) = call(
            &gw,
            Method::GET,
            &format!("{path}/requests/{id}/status"),
            USER_KEY,
            None,
        )
        .await;
        if status["status"] == "COMPLETED" {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(task.get("error").is_none());
    let (_, result) = call(
        &gw,
        Method::GET,
        &format!("/fal-ai/kling-video/requests/{id}"),
        USER_KEY,
        None,
    )
    .await;
    assert!(result["video"]["url"].as_str().unwrap().ends_with(".mp4"));
    assert!(sandbox.journal().await.iter().any(|r| {
        r["path"]
            .as_str()
            .unwrap()
            .starts_with("/fal-ai/kling-video/requests/")
    }));
}
