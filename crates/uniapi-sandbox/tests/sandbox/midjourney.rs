//! The Midjourney family: mj-api-secret auth, submit codes, time-driven progress, buttons and
//! follow-ups, the modal step, list/fetch/seed, refusals, faults and the journal.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, json_of};

const TASK_MS: u64 = 200;
const PNG: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

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

async fn call(sb: &Sandbox, path: &str, body: &Value) -> (u16, Value) {
    json_of(
        sb.client
            .post(sb.url(path))
            .header("mj-api-secret", KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Submits and returns the 16-digit task id, asserting `code`.
async fn submit(sb: &Sandbox, path: &str, body: Value, code: i64) -> String {
    let (status, answer) = call(sb, path, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    let id = answer["result"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_digit()));
    id
}

async fn fetch(sb: &Sandbox, id: &str) -> Value {
    let resp = sb
        .client
        .get(sb.url(&format!("/mj/task/{id}/fetch")))
        .header("mj-api-secret", KEY)
        .send()
        .await
        .unwrap();
    json_of(resp).await.1
}

async fn wait_done() {
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401_with_an_empty_body() {
    let sb = sandbox().await;
    for key in [None, Some("sk-wrong")] {
        let mut request = sb
            .client
            .post(sb.url("/mj/submit/imagine"))
            .body(json!({"prompt": "x"}).to_string());
        if let Some(key) = key {
            request = request.header("mj-api-secret", key);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.text().await.unwrap().is_empty());
    }
    // Bearer is not this family's header
    let resp = sb
        .client
        .get(sb.url("/mj/task/1/fetch"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn an_imagine_progresses_to_success_with_buttons() {
    let sb = sandbox().await;
    let id = submit(
        &sb,
        "/mj/submit/imagine",
        json!({"prompt": "a cat", "state": "s"}),
        1,
    )
    .await;
    let first = fetch(&sb, &id).await;
    assert_eq!(first["status"], "SUBMITTED");
    assert_eq!(first["progress"], "0%");
    assert!(first["startTime"].is_null());
    tokio::time::sleep(Duration::from_millis(TASK_MS / 2)).await;
    let mid = fetch(&sb, &id).await;
    assert_eq!(mid["status"], "IN_PROGRESS", "{mid}");
    assert!(mid["imageUrl"].as_str().unwrap().contains("preview"));
    wait_done().await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "SUCCESS");
    assert_eq!(done["progress"], "100%");
    assert_eq!(done["action"], "IMAGINE");
    assert_eq!(done["state"], "s");
    assert!(done["finishTime"].as_u64().unwrap() >= done["submitTime"].as_u64().unwrap());
    let buttons: Vec<&str> = done["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["customId"].as_str().unwrap())
        .collect();
    assert_eq!(buttons.len(), 9);
    assert!(buttons[0].starts_with("MJ::JOB::upsample::1::"));
    assert!(
        buttons
            .iter()
            .any(|b| b.starts_with("MJ::JOB::reroll::0::"))
    );
    // list-by-condition: known ids only
    let (_, list) = call(
        &sb,
        "/mj/task/list-by-condition",
        &json!({"ids": [id, "0000000000000000"]}),
    )
    .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, empty) = call(&sb, "/mj/task/list-by-condition", &json!({})).await;
    assert_eq!(empty, json!([]));
    assert_eq!(fetch(&sb, "0000000000000000").await, Value::Null);
    // the seed of a finished task
    let seed = sb
        .client
        .get(sb.url(&format!("/mj/task/{id}/image-seed")))
        .header("mj-api-secret", KEY)
        .send()
        .await
        .unwrap();
    let (_, seed) = json_of(seed).await;
    assert_eq!(seed["code"], 1);
    assert!(seed["result"].as_str().unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
async fn fail_and_reject_words_and_bad_requests() {
    let sb = sandbox().await;
    let (_, banned) = call(&sb, "/mj/submit/imagine", &json!({"prompt": "reject this"})).await;
    assert_eq!(banned["code"], 24);
    assert_eq!(banned["properties"]["bannedWord"], "reject");
    let id = submit(
        &sb,
        "/mj/submit/imagine",
        json!({"prompt": "please fail"}),
        1,
    )
    .await;
    wait_done().await;
    let failed = fetch(&sb, &id).await;
    assert_eq!(failed["status"], "FAILURE");
    assert!(!failed["failReason"].as_str().unwrap().is_empty());
    for (path, body, code) in [
        ("/mj/submit/imagine", json!({}), 4),
        ("/mj/submit/blend", json!({"base64Array": [PNG]}), 4),
        ("/mj/submit/describe", json!({"base64": "hello"}), 4),
        (
            "/mj/submit/action",
            json!({"taskId": "1", "customId": "MJ::JOB::upsample::1::x"}),
            3,
        ),
        (
            "/mj/submit/change",
            json!({"taskId": "1", "action": "REROLL"}),
            3,
        ),
        ("/mj/insight-face/swap", json!({"sourceBase64": PNG}), 4),
        (
            "/mj/submit/upload-discord-images",
            json!({"base64Array": []}),
            4,
        ),
        ("/mj/submit/video", json!({"prompt": "x"}), 4),
    ] {
        let (status, answer) = call(&sb, path, &body).await;
        assert_eq!(
            (status, answer["code"].as_i64()),
            (200, Some(code)),
            "{path} {answer}"
        );
        assert!(answer["result"].is_null());
    }
}

#[tokio::test]
async fn follow_ups_buttons_change_and_the_modal() {
    let sb = sandbox().await;
    let parent = submit(&sb, "/mj/submit/imagine", json!({"prompt": "a dog"}), 1).await;
    // a follow-up of an unfinished task is refused
    let (_, early) = call(
        &sb,
        "/mj/submit/change",
        &json!({"taskId": parent, "action": "UPSCALE", "index": 1}),
    )
    .await;
    assert_eq!(early["code"], 4);
    wait_done().await;
    let buttons = fetch(&sb, &parent).await["buttons"].clone();
    let u1 = buttons[0]["customId"].as_str().unwrap().to_owned();
    let (_, unknown) = call(
        &sb,
        "/mj/submit/action",
        &json!({"taskId": parent, "customId": "MJ::JOB::upsample::1::other"}),
    )
    .await;
    assert_eq!(unknown["code"], 4, "a customId the parent does not carry");
    let up = submit(
        &sb,
        "/mj/submit/action",
        json!({"taskId": parent, "customId": u1}),
        1,
    )
    .await;
    let vary = submit(
        &sb,
        "/mj/submit/simple-change",
        json!({"content": format!("{parent} v2")}),
        1,
    )
    .await;
    let reroll = submit(
        &sb,
        "/mj/submit/change",
        json!({"taskId": parent, "action": "REROLL"}),
        1,
    )
    .await;
    wait_done().await;
    assert_eq!(fetch(&sb, &vary).await["action"], "VARIATION");
    assert_eq!(fetch(&sb, &reroll).await["action"], "REROLL");
    let upscaled = fetch(&sb, &up).await;
    assert_eq!(
        (upscaled["action"].as_str(), upscaled["status"].as_str()),
        (Some("UPSCALE"), Some("SUCCESS"))
    );
    assert_eq!(upscaled["prompt"], "a dog");
    // an upscale cannot be changed again
    let (_, again) = call(
        &sb,
        "/mj/submit/change",
        &json!({"taskId": up, "action": "UPSCALE", "index": 1}),
    )
    .await;
    assert_eq!(again["code"], 4);
    // vary (region): code 21 and MODAL until the modal (with its mask) confirms it
    let inpaint = upscaled["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["customId"].as_str().unwrap().to_owned())
        .find(|c| c.starts_with("MJ::Inpaint"))
        .unwrap();
    let waiting = submit(
        &sb,
        "/mj/submit/action",
        json!({"taskId": up, "customId": inpaint}),
        21,
    )
    .await;
    assert_eq!(fetch(&sb, &waiting).await["status"], "MODAL");
    let (_, no_mask) = call(&sb, "/mj/submit/modal", &json!({"taskId": waiting})).await;
    assert_eq!(no_mask["code"], 4);
    let confirmed = submit(
        &sb,
        "/mj/submit/modal",
        json!({"taskId": waiting, "maskBase64": PNG, "prompt": "a hat"}),
        1,
    )
    .await;
    assert_eq!(confirmed, waiting);
    let (_, twice) = call(
        &sb,
        "/mj/submit/modal",
        &json!({"taskId": waiting, "maskBase64": PNG}),
    )
    .await;
    assert_eq!(twice["code"], 4);
    wait_done().await;
    let done = fetch(&sb, &waiting).await;
    assert_eq!(
        (done["action"].as_str(), done["status"].as_str()),
        (Some("INPAINT"), Some("SUCCESS"))
    );
}

#[tokio::test]
async fn upload_swap_and_describe() {
    let sb = sandbox().await;
    let (status, upload) = call(
        &sb,
        "/mj/submit/upload-discord-images",
        &json!({"base64Array": [PNG, PNG]}),
    )
    .await;
    assert_eq!((status, upload["code"].as_i64()), (200, Some(1)));
    assert_eq!(upload["result"].as_array().map(Vec::len), Some(2));
    let swap = submit(
        &sb,
        "/mj/insight-face/swap",
        json!({"sourceBase64": PNG, "targetBase64": PNG, "accountFilter": {"modes": ["TURBO"]}}),
        1,
    )
    .await;
    let describe = submit(&sb, "/mj/submit/describe", json!({"base64": PNG}), 1).await;
    wait_done().await;
    let swapped = fetch(&sb, &swap).await;
    assert_eq!(swapped["action"], "SWAP_FACE");
    assert_eq!(swapped["properties"]["mode"], "TURBO");
    let described = fetch(&sb, &describe).await;
    assert!(
        described["properties"]["finalPrompt"]
            .as_str()
            .unwrap()
            .contains("1\u{fe0f}\u{20e3}")
    );
    assert_eq!(described["buttons"].as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn faults_and_the_journal_work_on_midjourney_routes() {
    let sb = sandbox().await;
    sb.push_fault(json!({"path": "/mj/submit/imagine", "status": 503}))
        .await;
    let (status, answer) = call(&sb, "/mj/submit/imagine", &json!({"prompt": "x"})).await;
    assert_eq!((status, answer["code"].as_i64()), (503, Some(9)));
    submit(&sb, "/mj/submit/imagine", json!({"prompt": "x"}), 1).await;
    let journal = sb.journal().await;
    let last = journal
        .iter()
        .rev()
        .find(|r| r["path"] == "/mj/submit/imagine")
        .unwrap();
    assert_eq!(last["headers"]["mj-api-secret"], KEY);
    assert_eq!(last["body_json"]["prompt"], "x");
}
