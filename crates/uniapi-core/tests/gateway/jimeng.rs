//! Jimeng (and fal) models through `POST /v1/images/generations`: signed Volcengine calls the sandbox
//! verifies, `req_key` from the channel's `model_map`, the OpenAI images shape, one charge per image
//! delivered, nothing charged on refusal, failure or bad input.

use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};

use crate::support::*;

const PER_IMAGE: i64 = 30_000_000;

fn jimeng_config(sandbox: &Sandbox, secret: &str) -> Config {
    let mut jimeng = channel("jimeng", sandbox, &[]);
    jimeng.kind = "jimeng".into();
    jimeng.keys = vec![format!("{UPSTREAM_KEY}|{secret}")];
    jimeng.model_map = [("jimeng-4.0".to_string(), "jimeng_t2i_v40".to_string())]
        .into_iter()
        .collect();
    let mut fal = channel("fal", sandbox, &["fal-ai/flux-1/dev"]);
    fal.kind = "fal".into();
    let mut cfg = config(vec![jimeng, fal]);
    cfg.prices.insert(
        "jimeng-4.0".into(),
        PriceConfig {
            per_image: Some(0.03),
            ..Default::default()
        },
    );
    cfg.prices.insert(
        "fal-ai/flux-1/dev".into(),
        PriceConfig {
            per_call: Some(0.025),
            ..Default::default()
        },
    );
    cfg
}

async fn started(secret: &str) -> (Sandbox, TestGateway) {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": 200})).await;
    let gw = TestGateway::start(jimeng_config(&sandbox, secret)).await;
    (sandbox, gw)
}

async fn generate(gw: &TestGateway, body: Value) -> (u16, Value) {
    json_of(gw.post("/v1/images/generations", USER_KEY, body).await).await
}

#[tokio::test]
async fn a_signed_jimeng_call_answers_openai_images_charged_per_image() {
    let (sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let before = balance(&gw).await;
    let (status, body) = generate(
        &gw,
        json!({"model": "jimeng-4.0", "prompt": "a cat", "n": 2, "size": "1024*768"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(
        data.iter()
            .all(|d| d["url"].as_str().unwrap().starts_with("https://"))
    );
    assert_eq!(before - balance(&gw).await, 2 * PER_IMAGE);
    let journal = sandbox.journal().await;
    let submit = journal
        .iter()
        .find(|r| r["body_json"].get("prompt").is_some())
        .unwrap();
    assert_eq!(submit["path"], "/");
    assert_eq!(submit["body_json"]["req_key"], "jimeng_t2i_v40");
    assert_eq!(
        (
            submit["body_json"]["width"].as_u64(),
            submit["body_json"]["height"].as_u64()
        ),
        (Some(1024), Some(768))
    );
    let auth = submit["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with(&format!("HMAC-SHA256 Credential={UPSTREAM_KEY}/")),
        "{auth}"
    );
    assert!(
        journal
            .iter()
            .any(|r| r["body_json"]["task_id"].is_string())
    );
    let logs = gw.logs(1).await;
    assert_eq!(logs[0]["cost_nano"].as_i64(), Some(2 * PER_IMAGE));
    reconciled(&gw).await;
}

#[tokio::test]
async fn b64_json_answers_base64_images_and_one_image_is_one_charge() {
    let (_sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let before = balance(&gw).await;
    let (status, body) = generate(
        &gw,
        json!({"model": "jimeng-4.0", "prompt": "a cat", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert!(
        body["data"][0]["b64_json"]
            .as_str()
            .unwrap()
            .starts_with("iVBOR")
    );
    assert_eq!(before - balance(&gw).await, PER_IMAGE);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_upstream_and_costs_nothing() {
    let (sandbox, gw) = started("not-the-secret").await;
    let before = balance(&gw).await;
    let (status, body) = generate(&gw, json!({"model": "jimeng-4.0", "prompt": "a cat"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    assert_eq!(balance(&gw).await, before);
    // the sandbox saw a well-formed but wrongly signed call and answered Volcengine's error
    assert_eq!(sandbox.calls().await, 1);
    reconciled(&gw).await;
}

#[tokio::test]
async fn refusals_failures_and_bad_input_cost_nothing() {
    let (sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let before = balance(&gw).await;
    for (body, param) in [
        (json!({"model": "jimeng-4.0"}), "prompt"),
        (json!({"model": "jimeng-4.0", "prompt": "x", "n": 11}), "n"),
        (
            json!({"model": "jimeng-4.0", "prompt": "x", "size": "big"}),
            "size",
        ),
        (
            json!({"model": "jimeng-4.0", "prompt": "x", "response_format": "gif"}),
            "response_format",
        ),
        (
            json!({"model": "jimeng-4.0", "prompt": "x", "image": ["file:///etc/passwd"]}),
            "image",
        ),
    ] {
        let error = expect_error(
            gw.post("/v1/images/generations", USER_KEY, body).await,
            400,
            "invalid_request",
        )
        .await;
        assert_eq!(error["error"]["param"], param);
    }
    assert_eq!(sandbox.calls().await, 0);
    let (status, body) = generate(
        &gw,
        json!({"model": "jimeng-4.0", "prompt": "please reject"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("upstream_refused")),
        "{body}"
    );
    let (status, body) = generate(
        &gw,
        json!({"model": "jimeng-4.0", "prompt": "this will fail"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_task_failed")),
        "{body}"
    );
    let (status, _) = generate(
        &gw,
        json!({"model": "fal-ai/flux-1/dev", "prompt": "this will fail"}),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_fal_model_is_submitted_awaited_and_charged_per_call() {
    let (sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let before = balance(&gw).await;
    let (status, body) = generate(
        &gw,
        json!({"model": "fal-ai/flux-1/dev", "prompt": "a fox", "n": 3, "size": "512x512"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(before - balance(&gw).await, 25_000_000);
    let journal = sandbox.journal().await;
    let submit = journal
        .iter()
        .find(|r| r["path"] == "/fal-ai/flux-1/dev")
        .unwrap();
    assert_eq!(submit["body_json"]["num_images"], 3);
    assert_eq!(
        submit["body_json"]["image_size"],
        json!({"width": 512, "height": 512})
    );
    assert_eq!(submit["authorization"], format!("Key {UPSTREAM_KEY}"));
    // no task row is left behind for a synchronous call
    let (_, tasks) = gw.admin(reqwest::Method::GET, "/tasks", None).await;
    assert_eq!(tasks["data"].as_array().map(Vec::len), Some(0), "{tasks}");
}

#[tokio::test]
async fn a_model_no_channel_serves_still_gets_the_openai_answer() {
    let (sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let response = gw
        .post(
            "/v1/images/generations",
            USER_KEY,
            json!({"model": "jimeng-9", "prompt": "x"}),
        )
        .await;
    expect_error(response, 404, "model_not_found").await;
    assert_eq!(sandbox.calls().await, 0);
}

#[tokio::test]
async fn a_keys_requests_per_minute_bind_image_models_in_openais_shape() {
    let (sandbox, gw) = started(uniapi_sandbox::JIMENG_SECRET_KEY).await;
    let before = balance(&gw).await;
    let key = limited_key(&gw, json!({"rpm": 1})).await;
    let body = json!({"model": "jimeng-4.0", "prompt": "a cat"});
    let first = gw.post("/v1/images/generations", &key, body.clone()).await;
    assert_eq!(first.status(), 200);
    let calls = sandbox.calls().await;
    let refused = gw.post("/v1/images/generations", &key, body).await;
    assert_eq!(refused.headers()["retry-after"], "60");
    let error = expect_error(refused, 429, "rate_limit_exceeded").await;
    assert_eq!(error["error"]["type"], "requests");
    assert_eq!(
        sandbox.calls().await,
        calls,
        "a refused call reached the upstream"
    );
    assert_eq!(before - balance(&gw).await, PER_IMAGE);
    reconciled(&gw).await;
}
