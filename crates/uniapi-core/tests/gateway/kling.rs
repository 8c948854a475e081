//! Kling through the task engine: both upstream forms (official API with a signed JWT, relay with
//! Bearer), Kling's own answer shape with uniapi's ids, price by model, refunds, ownership, callbacks,
//! idempotency and bad input that never reaches the upstream.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};
use uniapi_sandbox::{KLING_ACCESS_KEY, KLING_SECRET_KEY};

use crate::support::*;

const PNG_1X1: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0,
    1, 0, 0, 0, 1, 8, 6, 0, 0, 0,
];

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[((n >> shift) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {text}"),
        };
        buffer = (buffer << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    out
}

/// A gateway with one Kling channel (`key` picks the form) and the four prices plus a model variant.
fn kling_config(sandbox: &Sandbox, key: &str) -> Config {
    let mut kling = channel("kling", sandbox, &[]);
    kling.kind = "kling".into();
    kling.keys = vec![key.into()];
    if !key.starts_with("sk-") {
        kling.base_url = format!("{}/klingai", sandbox.url);
    }
    let mut cfg = config(vec![kling]);
    for (name, usd) in [
        ("kling_image", 0.02),
        ("kling_virtual_try_on", 0.05),
        ("kling_text2video", 0.2),
        ("kling_text2video:kling-v2-master", 0.5),
        ("kling_image2video", 0.25),
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
    allow_local_callbacks(&mut cfg);
    cfg
}

fn official_key() -> String {
    format!("{KLING_ACCESS_KEY}|{KLING_SECRET_KEY}")
}

async fn kling_sandbox(task_ms: u64) -> Sandbox {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": task_ms})).await;
    sandbox
}

async fn create(
    gw: &TestGateway,
    key: &str,
    path: &str,
    body: Value,
    idempotency: Option<&str>,
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}/kling/v1/{path}", gw.url))
        .bearer_auth(key)
        .json_body(&body);
    if let Some(k) = idempotency {
        request = request.header("idempotency-key", k);
    }
    json_of(request.send().await.unwrap()).await
}

async fn query(gw: &TestGateway, key: &str, path: &str, id: &str) -> (u16, Value) {
    json_of(
        http()
            .get(format!("{}/kling/v1/{path}/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn until_done(gw: &TestGateway, path: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = query(gw, USER_KEY, path, id).await;
        assert_eq!(status, 200, "{body}");
        let data = &body["data"];
        if data["task_status"] == "succeed" || data["task_status"] == "failed" {
            return data.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not finish");
}

#[tokio::test]
async fn text2video_runs_to_success_signed_with_a_jwt_the_upstream_verifies() {
    let sandbox = kling_sandbox(300).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let before = balance(&gw).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "videos/text2video",
        json!({"prompt": "a fox in the snow", "duration": "5", "external_task_id": "mine-1"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], 0);
    assert_eq!(answer["message"], "SUCCEED");
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"), "{answer}");
    assert_eq!(answer["data"]["task_status"], "submitted");
    assert_eq!(answer["data"]["task_info"]["external_task_id"], "mine-1");
    assert_eq!(before - balance(&gw).await, 200_000_000);
    let done = until_done(&gw, "videos/text2video", &id).await;
    assert_eq!(done["task_status"], "succeed", "{done}");
    assert_eq!(done["progress"], "100%");
    assert_eq!(done["task_id"], id.as_str());
    let video = &done["task_result"]["videos"][0];
    assert!(video["url"].as_str().unwrap().ends_with(".mp4"), "{done}");
    assert_eq!(video["duration"], "5");
    // the upstream got the official path and a JWT signed with the secret, iss = the access key
    let journal = sandbox.journal().await;
    let created = journal
        .iter()
        .find(|r| r["method"] == "POST" && r["path"] == "/klingai/v1/videos/text2video")
        .expect("the create reached the official path");
    let token = created["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
    let claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    assert_eq!(claims["iss"], KLING_ACCESS_KEY);
    let exp = claims["exp"].as_i64().unwrap();
    let nbf = claims["nbf"].as_i64().unwrap();
    assert_eq!(exp - nbf, 1805, "{claims}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KLING_SECRET_KEY.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&b64url_decode(parts[2]))
        .expect("the signature verifies with the channel's secret key");
    assert!(!token.contains(KLING_SECRET_KEY));
    // polls went to the task's status path upstream, with the upstream's id (never ours)
    assert!(
        journal.iter().any(|r| r["method"] == "GET"
            && r["path"]
                .as_str()
                .unwrap()
                .starts_with("/klingai/v1/videos/text2video/")),
        "no status query upstream"
    );
    assert!(!journal.iter().any(|r| r.to_string().contains(&id)));
    assert_eq!(before - balance(&gw).await, 200_000_000);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_relay_key_speaks_the_kling_prefix_with_plain_bearer() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, UPSTREAM_KEY)).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "images/generations",
        json!({"prompt": "a red cube", "n": 2}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    let done = until_done(&gw, "images/generations", &id).await;
    assert_eq!(
        done["task_result"]["images"].as_array().map(Vec::len),
        Some(2)
    );
    let journal = sandbox.journal().await;
    let created = journal
        .iter()
        .find(|r| r["method"] == "POST")
        .expect("a create upstream");
    assert_eq!(created["path"], "/kling/v1/images/generations");
    assert_eq!(created["authorization"], format!("Bearer {UPSTREAM_KEY}"));
}

#[tokio::test]
async fn a_model_variant_price_wins_and_failure_is_refunded_once() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let before = balance(&gw).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "videos/text2video",
        json!({"prompt": "please fail now", "model_name": "kling-v2-master"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(before - balance(&gw).await, 500_000_000);
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    let done = until_done(&gw, "videos/text2video", &id).await;
    assert_eq!(done["task_status"], "failed");
    assert!(
        done["task_status_msg"]
            .as_str()
            .unwrap()
            .contains("content violation")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn an_upstream_refusal_costs_nothing() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let before = balance(&gw).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "images/generations",
        json!({"prompt": "reject this one"}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "1301");
    assert!(answer["data"].is_null());
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_charged_or_sent() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let before = balance(&gw).await;
    let not_an_image = b64(b"this is plain text, not a picture");
    let cases = [
        ("images/generations", json!({"negative_prompt": "x"})),
        ("videos/text2video", json!({"prompt": "  "})),
        ("videos/image2video", json!({"prompt": "move"})),
        ("videos/image2video", json!({"image": not_an_image})),
        (
            "images/kolors-virtual-try-on",
            json!({"human_image": b64(PNG_1X1)}),
        ),
        (
            "images/kolors-virtual-try-on",
            json!({"human_image": b64(PNG_1X1), "cloth_image": "%%%"}),
        ),
    ];
    for (path, body) in cases {
        let (status, answer) = create(&gw, USER_KEY, path, body.clone(), None).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
        assert!(answer["message"].is_string());
        assert!(answer["data"].is_null());
    }
    // not JSON, and over the body limit
    let raw = http()
        .post(format!("{}/kling/v1/videos/text2video", gw.url))
        .bearer_auth(USER_KEY)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let huge = "x".repeat(gw.state.config.max_body_bytes() + 10);
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "videos/text2video",
        json!({"prompt": huge}),
        None,
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], "invalid_request");
    // an unknown operation is not a route
    let (status, _) = create(
        &gw,
        USER_KEY,
        "videos/lip-sync",
        json!({"prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(sandbox.calls().await, 0, "bad input reached the upstream");
    assert_eq!(balance(&gw).await, before);
    // a valid base64 image and a URL pass
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "images/kolors-virtual-try-on",
        json!({"human_image": b64(PNG_1X1), "cloth_image": "https://example.com/shirt.png"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn idempotent_resubmit_ownership_and_wrong_operation() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let before = balance(&gw).await;
    let body = json!({"image": "https://example.com/a.png", "prompt": "wave"});
    let (_, first) = create(
        &gw,
        USER_KEY,
        "videos/image2video",
        body.clone(),
        Some("k-1"),
    )
    .await;
    let (_, again) = create(&gw, USER_KEY, "videos/image2video", body, Some("k-1")).await;
    assert_eq!(first["data"]["task_id"], again["data"]["task_id"]);
    assert_eq!(before - balance(&gw).await, 250_000_000);
    let creates = sandbox
        .journal()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(creates, 1);
    let id = first["data"]["task_id"].as_str().unwrap().to_string();
    // the same id under another operation is not found
    let (status, answer) = query(&gw, USER_KEY, "videos/text2video", &id).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("task_not_exist"))
    );
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
    let bob_key = key["key"].as_str().unwrap();
    let (status, answer) = query(&gw, bob_key, "videos/image2video", &id).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("task_not_exist"))
    );
    assert!(answer["data"].is_null());
    // no key at all
    let (status, answer) = json_of(
        http()
            .get(format!("{}/kling/v1/videos/image2video/{id}", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["code"].is_string());
}

#[tokio::test]
async fn callbacks_reach_the_client_and_never_the_upstream() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(&sandbox, &official_key())).await;
    let receiver = Receiver::start(0).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "videos/text2video",
        json!({"prompt": "a calm lake", "callback_url": receiver.url}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    let bodies = receiver.until(|b| b["task_status"] == "succeed").await;
    assert!(
        bodies.iter().all(|b| b["task_id"] == id.as_str()),
        "{bodies:?}"
    );
    let journal = sandbox.journal().await;
    assert!(
        !journal
            .iter()
            .any(|r| r.to_string().contains("callback_url")),
        "the hook was sent upstream"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_upstream_and_fails_over_to_nothing() {
    let sandbox = kling_sandbox(200).await;
    let gw = TestGateway::start(kling_config(
        &sandbox,
        &format!("{KLING_ACCESS_KEY}|not-the-secret"),
    ))
    .await;
    let before = balance(&gw).await;
    let (status, answer) = create(
        &gw,
        USER_KEY,
        "videos/text2video",
        json!({"prompt": "anything"}),
        None,
    )
    .await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer["code"].is_string());
    assert_eq!(balance(&gw).await, before);
    let journal = sandbox.journal().await;
    assert_eq!(journal.len(), 1);
}
