//! The fal family: Key auth, queue submit, status walking IN_QUEUE → IN_PROGRESS → COMPLETED by app
//! path, result images or video, 422 on a missing prompt, failure and refusal on demand.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, json_of};

async fn sandbox(task_ms: u64) -> Sandbox {
    let sb = Sandbox::start().await;
    sb.control(
        Method::PUT,
        "/__sandbox/config",
        Some(json!({"task_ms": task_ms})),
    )
    .await;
    sb
}

async fn call(
    sb: &Sandbox,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = sb
        .client
        .request(method, sb.url(path))
        .header("authorization", format!("Key {key}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    json_of(request.send().await.unwrap()).await
}

#[tokio::test]
async fn a_request_queues_progresses_and_completes_with_images() {
    let sb = sandbox(400).await;
    let (status, answer) = call(
        &sb,
        Method::POST,
        "/fal-ai/flux-1/dev",
        KEY,
        Some(json!({"prompt": "a tiger", "num_images": 2})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "IN_QUEUE");
    assert_eq!(answer["queue_position"], 2);
    let id = answer["request_id"].as_str().unwrap().to_string();
    assert!(
        answer["status_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/fal-ai/flux-1/requests/{id}/status"))
    );
    let (_, first) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}/status"),
        KEY,
        None,
    )
    .await;
    assert_eq!(first["status"], "IN_QUEUE");
    let (code, early) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(
        (code, early["detail"].as_str()),
        (400, Some("Request is still in progress"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, mid) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}/status?logs=1"),
        KEY,
        None,
    )
    .await;
    assert_eq!(mid["status"], "IN_PROGRESS");
    assert!(
        mid["logs"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("step ")
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (_, done) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/dev/requests/{id}/status"),
        KEY,
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED");
    let (code, result) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(result["images"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_video_path_answers_a_video_and_fail_ends_in_an_error() {
    let sb = sandbox(50).await;
    let (_, video) = call(
        &sb,
        Method::POST,
        "/fal-ai/kling-video/v1/standard/text-to-video",
        KEY,
        Some(json!({"prompt": "waves"})),
    )
    .await;
    let (_, failing) = call(
        &sb,
        Method::POST,
        "/fal-ai/flux-1/dev",
        KEY,
        Some(json!({"prompt": "please fail"})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (_, result) = call(
        &sb,
        Method::GET,
        &format!(
            "/fal-ai/kling-video/requests/{}",
            video["request_id"].as_str().unwrap()
        ),
        KEY,
        None,
    )
    .await;
    assert!(result["video"]["url"].as_str().unwrap().ends_with(".mp4"));
    let id = failing["request_id"].as_str().unwrap();
    let (_, status) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}/status"),
        KEY,
        None,
    )
    .await;
    assert_eq!(status["status"], "COMPLETED");
    assert!(status["error"].is_string());
    let (code, result) = call(
        &sb,
        Method::GET,
        &format!("/fal-ai/flux-1/requests/{id}"),
        KEY,
        None,
    )
    .await;
    assert_eq!((code, result["detail"].is_string()), (500, true));
}

#[tokio::test]
async fn bad_keys_missing_prompts_and_rejects_are_refused() {
    let sb = sandbox(50).await;
    let (code, body) = call(
        &sb,
        Method::POST,
        "/fal-ai/flux-1/dev",
        "wrong",
        Some(json!({"prompt": "x"})),
    )
    .await;
    assert_eq!((code, body["detail"].is_string()), (401, true));
    let bearer = sb
        .client
        .post(sb.url("/fal-ai/flux-1/dev"))
        .bearer_auth(KEY)
        .body(json!({"prompt": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    let (code, body) = call(
        &sb,
        Method::POST,
        "/fal-ai/flux-1/dev",
        KEY,
        Some(json!({"num_images": 1})),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "prompt"]));
    let (code, _) = call(
        &sb,
        Method::POST,
        "/fal-ai/flux-1/dev",
        KEY,
        Some(json!({"prompt": "reject"})),
    )
    .await;
    assert_eq!(code, 422);
    let (code, _) = call(
        &sb,
        Method::GET,
        "/fal-ai/flux-1/requests/nope/status",
        KEY,
        None,
    )
    .await;
    assert_eq!(code, 404);
}
