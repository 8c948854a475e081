//! The Kling family: JWT checks on the official routes, Bearer on the relay routes, task progress
//! over `task_ms`, failure and refusal on demand, Kling's envelopes.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use uniapi_sandbox::{KLING_ACCESS_KEY, KLING_SECRET_KEY};

use crate::support::{KEY, Sandbox, json_of};

const TASK_MS: u64 = 200;

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for shift in [18u32, 12, 6, 0].into_iter().take(chunk.len() + 1) {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(access: &str, secret: &str, exp: u64) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"iss": access, "exp": exp, "nbf": now() - 5});
    let payload = b64url(claims.to_string().as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!(
        "{header}.{payload}.{}",
        b64url(&mac.finalize().into_bytes())
    )
}

fn good_jwt() -> String {
    jwt(KLING_ACCESS_KEY, KLING_SECRET_KEY, now() + 1800)
}

async fn sandbox() -> Sandbox {
    let sb = Sandbox::start().await;
    sb.control(
        Method::PUT,
        "/__sandbox/config",
        Some(json!({"task_ms": TASK_MS})),
    )
    .await;
    sb
}

async fn create(sb: &Sandbox, token: &str, path: &str, body: Value) -> (u16, Value) {
    json_of(
        sb.client
            .post(sb.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn query(sb: &Sandbox, token: &str, path: &str) -> (u16, Value) {
    json_of(
        sb.client
            .get(sb.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn the_official_routes_take_only_a_valid_jwt() {
    let sb = sandbox().await;
    let body = json!({"prompt": "a cat"});
    let path = "/klingai/v1/videos/text2video";
    for token in [
        KEY.to_string(),
        jwt(KLING_ACCESS_KEY, "wrong-secret", now() + 1800),
        jwt("someone-else", KLING_SECRET_KEY, now() + 1800),
        jwt(KLING_ACCESS_KEY, KLING_SECRET_KEY, now() - 10),
    ] {
        let (status, answer) = create(&sb, &token, path, body.clone()).await;
        assert_eq!(status, 401, "{answer}");
        assert_eq!(answer["code"], 1002);
        assert!(answer["data"].is_null());
    }
    let (status, answer) = create(&sb, &good_jwt(), path, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], 0);
    assert_eq!(answer["message"], "SUCCEED");
    assert_eq!(answer["data"]["task_status"], "submitted");
}

#[tokio::test]
async fn a_task_progresses_over_task_ms_on_the_relay_routes_too() {
    let sb = sandbox().await;
    let (status, answer) = create(
        &sb,
        KEY,
        "/kling/v1/images/generations",
        json!({"prompt": "two apples", "n": 2, "external_task_id": "e-1"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    assert!(id.chars().all(|c| c.is_ascii_digit()), "{id}");
    assert_eq!(answer["data"]["task_info"]["external_task_id"], "e-1");
    tokio::time::sleep(Duration::from_millis(TASK_MS / 2)).await;
    let (_, mid) = query(&sb, KEY, &format!("/kling/v1/images/generations/{id}")).await;
    assert_eq!(mid["data"]["task_status"], "processing", "{mid}");
    tokio::time::sleep(Duration::from_millis(TASK_MS)).await;
    let (_, done) = query(&sb, KEY, &format!("/kling/v1/images/generations/{id}")).await;
    assert_eq!(done["data"]["task_status"], "succeed", "{done}");
    assert_eq!(
        done["data"]["task_result"]["images"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // the same task on the official routes, with a JWT
    let (status, same) = query(
        &sb,
        &good_jwt(),
        &format!("/klingai/v1/images/generations/{id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(same["data"]["task_id"], id.as_str());
    // unknown id, or the id under another operation
    let (status, missing) = query(&sb, KEY, &format!("/kling/v1/videos/text2video/{id}")).await;
    assert_eq!((status, missing["code"].as_i64()), (404, Some(1203)));
}

#[tokio::test]
async fn fail_and_reject_words_and_bad_input() {
    let sb = sandbox().await;
    let (status, answer) = create(
        &sb,
        KEY,
        "/kling/v1/videos/image2video",
        json!({"image": "https://x/y.png", "prompt": "this will fail"}),
    )
    .await;
    assert_eq!(status, 200);
    let id = answer["data"]["task_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let (_, done) = query(&sb, KEY, &format!("/kling/v1/videos/image2video/{id}")).await;
    assert_eq!(done["data"]["task_status"], "failed");
    assert!(
        done["data"]["task_status_msg"]
            .as_str()
            .unwrap()
            .contains("content violation")
    );
    assert!(done["data"].get("task_result").is_none());
    let (status, refused) = create(
        &sb,
        KEY,
        "/kling/v1/videos/text2video",
        json!({"prompt": "reject me"}),
    )
    .await;
    assert_eq!((status, refused["code"].as_i64()), (400, Some(1301)));
    for (path, body) in [
        ("/kling/v1/videos/text2video", json!({})),
        ("/kling/v1/videos/image2video", json!({"prompt": "x"})),
        (
            "/kling/v1/images/kolors-virtual-try-on",
            json!({"human_image": "https://x/h.png"}),
        ),
    ] {
        let (status, answer) = create(&sb, KEY, path, body).await;
        assert_eq!(
            (status, answer["code"].as_i64()),
            (400, Some(1201)),
            "{path}"
        );
    }
}
