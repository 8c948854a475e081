//! The Suno family: submit, time-driven task progress, fetch, refusals, journal and faults.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, json_of};

const TASK_MS: u64 = 200;

/// A sandbox whose Suno tasks take `TASK_MS`.
async fn sandbox() -> Sandbox {
    let sb = Sandbox::start().await;
    let answer = sb
        .control(
            Method::PUT,
            "/__sandbox/config",
            Some(json!({"task_ms": TASK_MS})),
        )
        .await;
    assert_eq!(answer["config"]["task_ms"], TASK_MS);
    sb
}

/// Submits and returns the task id, asserting the success envelope.
async fn submit(sb: &Sandbox, action: &str, body: Value) -> String {
    let (status, answer) = json_of(
        sb.post(&format!("/suno/submit/{action}"), &body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], "success", "{answer}");
    assert_eq!(answer["message"], "");
    let id = answer["data"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "uuid-like id: {id}");
    id
}

async fn fetch(sb: &Sandbox, id: &str) -> Value {
    let answer = sb.get_json(&format!("/suno/fetch/{id}")).await;
    assert_eq!(answer["code"], "success", "{answer}");
    answer["data"].clone()
}

async fn wait_done() {
    tokio::time::sleep(Duration::from_millis(TASK_MS + 50)).await;
}

#[tokio::test]
async fn bad_or_missing_key_is_unauthorized() {
    let sb = sandbox().await;
    let body = json!({"prompt": "hello"});
    let missing = sb
        .client
        .post(sb.url("/suno/submit/LYRICS"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let wrong = sb
        .client
        .post(sb.url("/suno/submit/LYRICS"))
        .bearer_auth("sk-wrong")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let fetch = sb
        .client
        .get(sb.url("/suno/fetch/whatever"))
        .send()
        .await
        .unwrap();
    for resp in [missing, wrong, fetch] {
        let (status, answer) = json_of(resp).await;
        assert_eq!(status, 401);
        assert_eq!(
            answer,
            json!({"code": "unauthorized", "message": "invalid key", "data": null})
        );
    }
}

#[tokio::test]
async fn music_task_progresses_to_two_complete_clips() {
    let sb = sandbox().await;
    let id = submit(
        &sb,
        "MUSIC",
        json!({"gpt_description_prompt": "a calm song about rust", "mv": "chirp-v3-5",
               "notify_hook": "https://hook.example/cb"}),
    )
    .await;

    let early = fetch(&sb, &id).await;
    assert_eq!(early["task_id"], id.as_str());
    assert_eq!(early["action"], "MUSIC");
    assert_eq!(early["notify_hook"], "https://hook.example/cb");
    assert_eq!(early["finish_time"], 0);
    assert!(early["submit_time"].as_u64().unwrap() > 0);
    assert!(
        ["SUBMITTED", "IN_PROGRESS"].contains(&early["status"].as_str().unwrap()),
        "{early}"
    );

    // Poll until the task leaves SUBMITTED: it must show streaming clips with an audio URL and
    // no video yet (unless this machine is so loaded that the whole duration went by).
    let mid = loop {
        let task = fetch(&sb, &id).await;
        if task["status"] != "SUBMITTED" {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if mid["status"] != "SUCCESS" {
        assert_eq!(mid["status"], "IN_PROGRESS", "{mid}");
        assert!(mid["start_time"].as_u64().unwrap() > 0);
        let pct: u64 = mid["progress"]
            .as_str()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!((10..100).contains(&pct), "{mid}");
        let clips = mid["data"].as_array().unwrap();
        assert_eq!(clips.len(), 2);
        for clip in clips {
            assert_eq!(clip["status"], "streaming");
            assert!(!clip["audio_url"].as_str().unwrap().is_empty());
            assert_eq!(clip["video_url"], "");
            assert_eq!(clip["metadata"]["duration"], Value::Null);
        }
    }

    wait_done().await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["progress"], "100%");
    assert_eq!(done["fail_reason"], "");
    assert!(done["finish_time"].as_u64().unwrap() >= done["submit_time"].as_u64().unwrap());
    let clips = done["data"].as_array().unwrap();
    assert_eq!(clips.len(), 2);
    assert_ne!(clips[0]["id"], clips[1]["id"]);
    for clip in clips {
        assert_eq!(clip["status"], "complete");
        assert!(clip["audio_url"].as_str().unwrap().ends_with(".mp3"));
        assert!(clip["video_url"].as_str().unwrap().ends_with(".mp4"));
        assert_eq!(clip["model_name"], "chirp-v3");
        assert_eq!(clip["major_model_version"], "v3");
        assert!(clip["created_at"].as_str().unwrap().ends_with('Z'));
        let meta = &clip["metadata"];
        assert_eq!(meta["type"], "gen");
        assert_eq!(meta["gpt_description_prompt"], "a calm song about rust");
        assert!(meta["duration"].as_f64().unwrap() > 0.0);
        assert!(meta["prompt"].as_str().unwrap().contains("[Verse]"));
    }

    // Deterministic apart from ids and times: the same request renders the same clips.
    let again = submit(
        &sb,
        "music",
        json!({"gpt_description_prompt": "a calm song about rust", "mv": "chirp-v3-5",
               "notify_hook": "https://hook.example/cb"}),
    )
    .await;
    assert_ne!(again, id);
    wait_done().await;
    let other = fetch(&sb, &again).await;
    for (a, b) in clips.iter().zip(other["data"].as_array().unwrap()) {
        assert_eq!(a["title"], b["title"]);
        assert_eq!(a["metadata"], b["metadata"]);
    }
}

#[tokio::test]
async fn custom_music_keeps_lyrics_title_and_tags() {
    let sb = sandbox().await;
    let id = submit(
        &sb,
        "MUSIC",
        json!({"prompt": "[Verse]\nla la", "title": "My Song", "tags": "emotional punk"}),
    )
    .await;
    wait_done().await;
    let done = fetch(&sb, &id).await;
    let clip = &done["data"][0];
    assert_eq!(clip["title"], "My Song");
    assert_eq!(clip["metadata"]["tags"], "emotional punk");
    assert_eq!(clip["metadata"]["prompt"], "[Verse]\nla la");
    assert_eq!(clip["model_name"], "chirp-v3");
}

#[tokio::test]
async fn lyrics_task_finishes_with_a_lyrics_object() {
    let sb = sandbox().await;
    let id = submit(&sb, "LYRICS", json!({"prompt": "summer at the sea"})).await;
    assert_eq!(fetch(&sb, &id).await["action"], "LYRICS");
    wait_done().await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let lyrics = &done["data"];
    assert_eq!(lyrics["status"], "complete");
    assert_eq!(lyrics["title"], "summer at the sea");
    assert!(
        lyrics["text"]
            .as_str()
            .unwrap()
            .contains("summer at the sea")
    );
    assert!(lyrics["id"].as_str().is_some());
}

#[tokio::test]
async fn invalid_submissions_are_rejected_with_400() {
    let sb = sandbox().await;
    let cases = [
        ("LYRICS", json!({"prompt": ""}), "prompt_empty"),
        ("lyrics", json!({}), "prompt_empty"),
        ("MUSIC", json!({"title": "t"}), "prompt_empty"),
        ("VIDEO", json!({"prompt": "x"}), "invalid_action"),
        (
            "MUSIC",
            json!({"prompt": "x", "continue_clip_id": "c"}),
            "task id is empty",
        ),
    ];
    for (action, body, message) in cases {
        let (status, answer) = json_of(
            sb.post(&format!("/suno/submit/{action}"), &body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{action} {body}");
        assert_eq!(
            answer,
            json!({"code": "invalid_request", "message": message, "data": null})
        );
    }
}

#[tokio::test]
async fn fail_word_ends_in_failure() {
    let sb = sandbox().await;
    let id = submit(&sb, "MUSIC", json!({"prompt": "this song should fail"})).await;
    wait_done().await;
    let done = fetch(&sb, &id).await;
    assert_eq!(done["status"], "FAILURE", "{done}");
    assert_eq!(done["fail_reason"], "sandbox failure on request");
    assert_eq!(done["data"], json!([]));
    assert!(done["finish_time"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn reject_word_is_an_upstream_refusal() {
    let sb = sandbox().await;
    for (action, body) in [
        (
            "MUSIC",
            json!({"gpt_description_prompt": "please reject me"}),
        ),
        ("LYRICS", json!({"prompt": "Reject."})),
    ] {
        let (status, answer) = json_of(
            sb.post(&format!("/suno/submit/{action}"), &body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({"code": "error", "message": "upstream busy", "data": null})
        );
    }
}

#[tokio::test]
async fn batch_fetch_returns_known_ids_only() {
    let sb = sandbox().await;
    let music = submit(&sb, "MUSIC", json!({"prompt": "one"})).await;
    let lyrics = submit(&sb, "LYRICS", json!({"prompt": "two"})).await;
    for path in ["/suno/fetch", "/suno/submit/fetch", "/suno/submit/FETCH"] {
        let body = json!({"ids": [music, "no-such-task", lyrics]});
        let (status, answer) = json_of(sb.post(path, &body).send().await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(answer["code"], "success");
        let ids: Vec<&str> = answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [music.as_str(), lyrics.as_str()], "{path}");
    }
    // `action` filters.
    let body = json!({"ids": [music, lyrics], "action": "LYRICS"});
    let (_, answer) = json_of(sb.post("/suno/fetch", &body).send().await.unwrap()).await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["task_id"], lyrics.as_str());
}

#[tokio::test]
async fn unknown_single_fetch_is_404() {
    let sb = sandbox().await;
    let resp = sb
        .client
        .get(sb.url("/suno/fetch/no-such-task"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, 404);
    assert_eq!(
        answer,
        json!({"code": "task_not_exist", "message": "task not found", "data": null})
    );
}

#[tokio::test]
async fn journal_records_suno_calls_with_authorization() {
    let sb = sandbox().await;
    submit(&sb, "MUSIC", json!({"prompt": "journal me"})).await;
    let journal = sb.journal().await;
    let entry = journal
        .iter()
        .find(|e| e["path"] == "/suno/submit/MUSIC")
        .expect("journaled");
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["authorization"], format!("Bearer {KEY}"));
    assert_eq!(entry["body_json"], json!({"prompt": "journal me"}));
}

#[tokio::test]
async fn status_fault_on_submit_is_consumed_once() {
    let sb = sandbox().await;
    sb.push_fault(json!({"count": 1, "status": 500, "path": "/suno/submit/MUSIC"}))
        .await;
    let body = json!({"prompt": "hello"});
    // A call on another path leaves the rule alone.
    submit(&sb, "LYRICS", body.clone()).await;
    let (status, answer) =
        json_of(sb.post("/suno/submit/MUSIC", &body).send().await.unwrap()).await;
    assert_eq!(status, 500);
    assert_eq!(
        answer,
        json!({"code": "error", "message": "injected", "data": null})
    );
    let pending = sb.control(Method::GET, "/__sandbox/faults", None).await;
    assert_eq!(pending, json!([]));
    submit(&sb, "MUSIC", body).await;
}
