//! The Luma family: create, time-driven state, extend of a completed generation, download URL,
//! `{"detail"}` errors, auth.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, json_of};

const TASK_MS: u64 = 200;

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

async fn create(sb: &Sandbox, body: Value) -> Value {
    let (status, answer) = json_of(sb.post("/luma/generations", &body).send().await.unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["state"], "pending");
    answer
}

async fn get(sb: &Sandbox, path: &str) -> (u16, Value) {
    json_of(
        sb.client
            .get(sb.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_generation_completes_with_video_and_a_download_link() {
    let sb = sandbox().await;
    let created = create(
        &sb,
        json!({"user_prompt": "cat dance", "aspect_ratio": "1:1"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["prompt"], "cat dance");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["video"], Value::Null);
    let (status, early) = get(&sb, &format!("/luma/generations/{id}/download_video_url")).await;
    assert_eq!(status, 400, "{early}");
    assert!(early["detail"].is_string());
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let (_, done) = get(&sb, &format!("/luma/generations/{id}")).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["video"]["width"], 1024);
    assert!(done["video"]["url"].as_str().unwrap().ends_with(".mp4"));
    assert!(!done["video"]["url"].as_str().unwrap().contains(&id));
    assert_eq!(done["request"]["aspect_ratio"], "1:1");
    let (status, link) = get(&sb, &format!("/luma/generations/{id}/download_video_url")).await;
    assert_eq!(status, 200);
    assert!(link["url"].as_str().unwrap().contains("X-Amz-Expires=3600"));
}

#[tokio::test]
async fn extend_needs_a_completed_generation() {
    let sb = sandbox().await;
    let (status, answer) = json_of(
        sb.post(
            "/luma/generations/nope/extend",
            &json!({"user_prompt": "x"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (404, json!({"detail": "generation not found"}))
    );
    let parent = create(&sb, json!({"user_prompt": "first"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = json_of(
        sb.post(
            &format!("/luma/generations/{parent}/extend"),
            &json!({"user_prompt": "x"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let (status, ext) = json_of(
        sb.post(
            &format!("/luma/generations/{parent}/extend"),
            &json!({"user_prompt": "more"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{ext}");
    assert_eq!(ext["extended_from"], parent.as_str());
    assert_ne!(ext["id"], parent.as_str());
}

#[tokio::test]
async fn fail_fails_reject_refuses_and_bad_keys_are_unauthorized() {
    let sb = sandbox().await;
    let id = create(&sb, json!({"user_prompt": "please fail"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let (_, done) = get(&sb, &format!("/luma/generations/{id}")).await;
    assert_eq!(done["state"], "failed");
    assert!(done["failure_reason"].is_string());
    let (status, answer) = json_of(
        sb.post("/luma/generations", &json!({"user_prompt": "reject"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(answer["detail"].is_string());
    let (status, _) = json_of(
        sb.post("/luma/generations", &json!({"aspect_ratio": "1:1"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, answer) = json_of(
        sb.client
            .get(sb.url(&format!("/luma/generations/{id}")))
            .bearer_auth("sk-wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, answer), (401, json!({"detail": "invalid key"})));
    let journal = sb.journal().await;
    assert!(
        journal
            .iter()
            .any(|r| r["path"] == "/luma/generations"
                && r["authorization"] == format!("Bearer {KEY}"))
    );
}
