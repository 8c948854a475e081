//! The Jimeng family: Volcengine-signed calls verified against the sandbox secret, submit and
//! get-result through `in_queue` → `generating` → `done`, and Volcengine's `code != 10000` errors.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{KEY, Sandbox, json_of};

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// One signed `POST /?Action=...&Version=2022-08-31`, signed with `secret`.
async fn signed(sb: &Sandbox, action: &str, body: &Value, secret: &str) -> (u16, Value) {
    let payload = body.to_string();
    let host = sb.base.trim_start_matches("http://").to_string();
    let date = "20260101T000000Z";
    let hash = hex::encode(Sha256::digest(payload.as_bytes()));
    let query = format!("Action={action}&Version=2022-08-31");
    let headers = "content-type;host;x-content-sha256;x-date";
    let canonical = format!(
        "POST\n/\n{query}\ncontent-type:application/json\nhost:{host}\nx-content-sha256:{hash}\nx-date:{date}\n\n{headers}\n{hash}"
    );
    let scope = "20260101/cn-north-1/cv/request";
    let to_sign = format!(
        "HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(secret.as_bytes(), b"20260101");
    for part in ["cn-north-1", "cv", "request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    let response = sb
        .client
        .post(sb.url(&format!("/?{query}")))
        .header("content-type", "application/json")
        .header("x-date", date)
        .header("x-content-sha256", hash)
        .header(
            "authorization",
            format!("HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={headers}, Signature={signature}"),
        )
        .body(payload)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

const SECRET: &str = uniapi_sandbox::JIMENG_SECRET_KEY;

#[tokio::test]
async fn a_signed_task_runs_to_done_with_urls_and_base64() {
    let sb = Sandbox::start().await;
    sb.control(
        Method::PUT,
        "/__sandbox/config",
        Some(json!({"task_ms": 300})),
    )
    .await;
    let (status, answer) = signed(
        &sb,
        "CVSync2AsyncSubmitTask",
        &json!({"req_key": "jimeng_t2i_v40", "prompt": "a cat"}),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (200, Some(10000)),
        "{answer}"
    );
    let task_id = answer["data"]["task_id"].as_str().unwrap().to_string();
    let query = json!({"req_key": "jimeng_t2i_v40", "task_id": task_id, "req_json": "{\"return_url\":true}"});
    let (_, first) = signed(&sb, "CVSync2AsyncGetResult", &query, SECRET).await;
    assert_eq!(first["data"]["status"], "in_queue");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, mid) = signed(&sb, "CVSync2AsyncGetResult", &query, SECRET).await;
    assert_eq!(mid["data"]["status"], "generating");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (_, done) = signed(&sb, "CVSync2AsyncGetResult", &query, SECRET).await;
    assert_eq!(done["data"]["status"], "done", "{done}");
    assert_eq!(done["data"]["image_urls"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        done["data"]["binary_data_base64"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn a_wrong_secret_an_unknown_key_and_bad_requests_are_refused() {
    let sb = Sandbox::start().await;
    let body = json!({"req_key": "jimeng_t2i_v40", "prompt": "a cat"});
    let (status, answer) = signed(&sb, "CVSync2AsyncSubmitTask", &body, "wrong-secret").await;
    assert_eq!(status, 401);
    assert_ne!(answer["code"].as_i64(), Some(10000));
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("SignatureDoesNotMatch")
    );
    let unsigned = sb
        .client
        .post(sb.url("/?Action=CVSync2AsyncSubmitTask&Version=2022-08-31"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let (_, bad) = signed(
        &sb,
        "CVSync2AsyncSubmitTask",
        &json!({"req_key": "bad", "prompt": "x"}),
        SECRET,
    )
    .await;
    assert_eq!(bad["code"], 50411);
    let (_, rejected) = signed(
        &sb,
        "CVSync2AsyncSubmitTask",
        &json!({"req_key": "jimeng_t2i_v40", "prompt": "reject"}),
        SECRET,
    )
    .await;
    assert_ne!(rejected["code"].as_i64(), Some(10000));
    let (_, unknown) = signed(&sb, "Nope", &body, SECRET).await;
    assert_ne!(unknown["code"].as_i64(), Some(10000));
}

#[tokio::test]
async fn fail_in_the_prompt_ends_the_task_in_an_error() {
    let sb = Sandbox::start().await;
    sb.control(
        Method::PUT,
        "/__sandbox/config",
        Some(json!({"task_ms": 30})),
    )
    .await;
    let (_, answer) = signed(
        &sb,
        "CVSync2AsyncSubmitTask",
        &json!({"req_key": "jimeng_t2i_v40", "prompt": "fail", "force_single": true}),
        SECRET,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let query = json!({"req_key": "jimeng_t2i_v40", "task_id": answer["data"]["task_id"]});
    let (_, result) = signed(&sb, "CVSync2AsyncGetResult", &query, SECRET).await;
    assert_ne!(result["code"].as_i64(), Some(10000), "{result}");
}
