//! The Udio family: submit, time-driven task progress with two songs, fetch, refusals, auth, journal.

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

async fn submit(sb: &Sandbox, prompt: &str) -> String {
    let body = json!({"gen_params": {"prompt": prompt, "lyrics_type": "instrumental", "model_type": "udio32-v1.5"}});
    let (status, answer) =
        json_of(sb.post("/udio/submit/music", &body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], "success", "{answer}");
    let id = answer["data"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    id
}

async fn fetch(sb: &Sandbox, id: &str) -> Value {
    let answer = sb.get_json(&format!("/udio/fetch/{id}")).await;
    assert_eq!(answer["code"], "success", "{answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn a_task_goes_from_unfinished_songs_to_finished_ones() {
    let sb = sandbox().await;
    let id = submit(&sb, "lofi jazz rainy night").await;
    let early = fetch(&sb, &id).await;
    assert_eq!(early["task_id"], id.as_str());
    assert_eq!(early["action"], "udio-generate");
    assert!(["SUBMITTED", "IN_PROGRESS"].contains(&early["status"].as_str().unwrap()));
    let mid = loop {
        let task = fetch(&sb, &id).await;
        if task["status"] != "SUBMITTED" {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if mid["status"] == "IN_PROGRESS" {
        let songs = mid["songs"].as_array().unwrap();
        assert_eq!(songs.len(), 2);
        assert!(
            songs
                .iter()
                .all(|s| s["finished"] == false && s["song_path"] == "")
        );
    }
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["progress"], "100%");
    let songs = done["songs"].as_array().unwrap();
    assert_eq!(songs.len(), 2);
    assert_ne!(songs[0]["id"], songs[1]["id"]);
    for song in songs {
        assert_eq!(song["finished"], true);
        assert_eq!(song["generation_id"], id.as_str());
        assert!(song["song_path"].as_str().unwrap().ends_with(".mp3"));
        assert!(song["duration"].as_f64().unwrap() > 30.0);
        assert_eq!(song["lyrics"], "");
        assert_eq!(song["error_type"], Value::Null);
    }
}

#[tokio::test]
async fn fail_fails_and_reject_refuses() {
    let sb = sandbox().await;
    let id = submit(&sb, "this should fail").await;
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "FAILURE");
    assert!(!done["fail_reason"].as_str().unwrap().is_empty());
    assert!(
        done["songs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["error_type"].is_string())
    );
    let body = json!({"gen_params": {"prompt": "reject me"}});
    let (status, answer) =
        json_of(sb.post("/udio/submit/music", &body).send().await.unwrap()).await;
    assert_eq!((status, answer["code"].as_str()), (200, Some("error")));
    assert!(answer["data"].is_null());
}

#[tokio::test]
async fn bad_requests_unknown_tasks_and_bad_keys_are_refused_in_the_envelope() {
    let sb = sandbox().await;
    for body in [
        json!({}),
        json!({"gen_params": {"prompt": ""}}),
        json!({"gen_params": {"prompt": "x", "model_type": "udio9"}}),
    ] {
        let (status, answer) =
            json_of(sb.post("/udio/submit/music", &body).send().await.unwrap()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["code"], "invalid_request");
    }
    let (status, _) = json_of(
        sb.post(
            "/udio/submit/lyrics",
            &json!({"gen_params": {"prompt": "x"}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, answer) = json_of(
        sb.client
            .get(sb.url("/udio/fetch/nope"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("task_not_exist"))
    );
    let (status, answer) = json_of(
        sb.client
            .get(sb.url("/udio/fetch/nope"))
            .bearer_auth("sk-wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        answer,
        json!({"code": "unauthorized", "message": "invalid key", "data": null})
    );
    let journal = sb.journal().await;
    assert!(journal.iter().any(
        |r| r["path"] == "/udio/submit/music" && r["authorization"] == format!("Bearer {KEY}")
    ));
}

#[tokio::test]
async fn faults_answer_in_the_envelope() {
    let sb = sandbox().await;
    sb.push_fault(json!({"status": 503, "path": "/udio/submit/music"}))
        .await;
    let body = json!({"gen_params": {"prompt": "x"}});
    let (status, answer) =
        json_of(sb.post("/udio/submit/music", &body).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(answer["code"], "error");
    submit(&sb, "x").await;
}
