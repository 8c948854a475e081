//! Luma through the task engine: generate → poll → completed, extend on the parent's channel with the
//! parent's upstream id, the download URL (stored or asked of the task's channel), failure refunded
//! once, idempotency, ownership, callbacks, bad input in the OpenAI envelope before any charge.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{ChannelConfig, Config, PriceConfig};

use crate::support::*;

const GENERATE: i64 = 400_000_000;
const GENERATE_RAY2: i64 = 600_000_000;
const EXTEND: i64 = 300_000_000;

fn luma_channel(name: &str, sandbox: &Sandbox) -> ChannelConfig {
    let mut c = channel(name, sandbox, &[]);
    c.kind = "luma".into();
    c
}

fn luma_config(channels: Vec<ChannelConfig>) -> Config {
    let mut cfg = config(channels);
    for (name, usd) in [
        ("luma_generate", 0.4),
        ("luma_generate:ray-v2", 0.6),
        ("luma_extend", 0.3),
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

async fn start(task_ms: u64) -> (Sandbox, TestGateway) {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": task_ms})).await;
    let gw = TestGateway::start(luma_config(vec![luma_channel("luma", &sandbox)])).await;
    (sandbox, gw)
}

async fn post(
    gw: &TestGateway,
    key: &str,
    path: &str,
    body: Value,
    idem: Option<&str>,
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .json_body(&body);
    if let Some(k) = idem {
        request = request.header("idempotency-key", k);
    }
    json_of(request.send().await.unwrap()).await
}

async fn get(gw: &TestGateway, key: &str, path: &str) -> (u16, Value) {
    json_of(
        http()
            .get(format!("{}{path}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn generate(gw: &TestGateway, prompt: &str) -> String {
    let (status, answer) = post(
        gw,
        USER_KEY,
        "/luma/generations",
        json!({"user_prompt": prompt, "aspect_ratio": "16:9"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

async fn until_done(gw: &TestGateway, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = get(gw, USER_KEY, &format!("/luma/generations/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["state"] == "completed" || body["state"] == "failed" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("generation {id} did not finish");
}

async fn upstream_id(gw: &TestGateway, id: &str) -> String {
    let (_, task) = gw.admin(Method::GET, &format!("/tasks/{id}"), None).await;
    task["upstream_id"].as_str().unwrap().to_string()
}

fn assert_openai_error(answer: &Value) {
    let error = &answer["error"];
    assert!(error["message"].is_string(), "{answer}");
    assert!(error["type"].is_string(), "{answer}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{answer}"
    );
}

#[tokio::test]
async fn a_generation_runs_to_completion_and_downloads_from_its_channel() {
    let (sandbox, gw) = start(2_500).await;
    let before = balance(&gw).await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/luma/generations",
        json!({"user_prompt": "cat dance", "aspect_ratio": "9:16", "model_name": "ray-v2", "expand_prompt": true}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"), "{answer}");
    assert_eq!(answer["state"], "pending");
    assert_eq!(answer["prompt"], "cat dance");
    assert!(answer["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(before - balance(&gw).await, GENERATE_RAY2);
    let mut states = Vec::new();
    let done = loop {
        let (_, body) = get(&gw, USER_KEY, &format!("/luma/generations/{id}")).await;
        assert_eq!(body["id"], id.as_str());
        states.push(body["state"].as_str().unwrap().to_string());
        if body["state"] == "completed" || body["state"] == "failed" {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(done["state"], "completed", "{done}");
    assert!(states.iter().any(|s| s == "processing"), "{states:?}");
    assert_eq!(done["video"]["width"], 752);
    assert!(done["video"]["url"].as_str().unwrap().ends_with(".mp4"));
    assert_eq!(done["request"]["aspect_ratio"], "9:16");
    let up = upstream_id(&gw, &id).await;
    assert!(
        !done.to_string().contains(&up),
        "the upstream id leaked: {done}"
    );
    // the stored result has no clean link: uniapi asks the task's channel, with the upstream id
    let (status, link) = get(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{id}/download_video_url"),
    )
    .await;
    assert_eq!(status, 200, "{link}");
    assert!(
        link["url"].as_str().unwrap().contains("X-Amz-Expires=3600"),
        "{link}"
    );
    assert!(!link.to_string().contains(&up));
    let journal = sandbox.journal().await;
    let created = journal
        .iter()
        .find(|r| r["path"] == "/luma/generations")
        .unwrap();
    assert_eq!(created["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(created["body_json"]["user_prompt"], "cat dance");
    assert_eq!(created["body_json"]["model_name"], "ray-v2");
    assert!(
        journal
            .iter()
            .any(|r| r["method"] == "GET" && r["path"] == format!("/luma/generations/{up}"))
    );
    assert!(
        journal
            .iter()
            .any(|r| r["path"] == format!("/luma/generations/{up}/download_video_url"))
    );
    assert!(
        !journal
            .iter()
            .any(|r| r["path"].as_str().unwrap().contains(&id))
    );
    // the download is free
    assert_eq!(before - balance(&gw).await, GENERATE_RAY2);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_stored_download_url_is_answered_without_asking_upstream() {
    let (sandbox, gw) = start(200).await;
    let id = generate(&gw, "clean file").await;
    let up = upstream_id(&gw, &id).await;
    // the upstream reports the finished generation with its clean link on the next poll
    sandbox
        .fault(json!({"status": 200, "path": format!("/luma/generations/{up}"), "count": 50, "body": {
            "id": up, "state": "completed", "prompt": "clean file",
            "video": {"url": "https://cdn.example/w.mp4", "width": 1360, "height": 752, "download_url": "https://cdn.example/clean.mp4"}
        }}))
        .await;
    let done = until_done(&gw, &id).await;
    assert_eq!(
        done["video"]["download_url"],
        "https://cdn.example/clean.mp4"
    );
    let (status, link) = get(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{id}/download_video_url"),
    )
    .await;
    assert_eq!(
        (status, link["url"].as_str()),
        (200, Some("https://cdn.example/clean.mp4"))
    );
    assert!(
        !sandbox
            .journal()
            .await
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/download_video_url"))
    );
}

#[tokio::test]
async fn an_extend_runs_on_the_parents_channel_with_the_parents_upstream_id() {
    let first = Sandbox::start().await;
    let second = Sandbox::start().await;
    for sb in [&first, &second] {
        sb.set(json!({"task_ms": 200})).await;
    }
    let mut a = luma_channel("luma-a", &first);
    a.priority = 10;
    let b = luma_channel("luma-b", &second);
    let gw = TestGateway::start(luma_config(vec![a, b])).await;
    let before = balance(&gw).await;
    let parent = generate(&gw, "a first shot").await;
    until_done(&gw, &parent).await;
    let parent_up = upstream_id(&gw, &parent).await;
    // now the other channel is preferred for new work
    let (_, channels) = gw.admin(Method::GET, "/channels", None).await;
    let channel_id = |name: &str| {
        channels["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (status, patched) = gw
        .admin(
            Method::PATCH,
            &format!("/channels/{}", channel_id("luma-b")),
            Some(json!({"priority": 20})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (status, ext) = post(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{parent}/extend"),
        json!({"user_prompt": "and then it flies"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ext}");
    let ext_id = ext["id"].as_str().unwrap().to_string();
    assert_ne!(ext_id, parent);
    assert_eq!(ext["state"], "pending");
    let fresh = generate(&gw, "new work").await;
    let done = until_done(&gw, &ext_id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let first_journal = first.journal().await;
    let second_journal = second.journal().await;
    let extends = |journal: &[Value]| -> Vec<Value> {
        journal
            .iter()
            .filter(|r| r["path"].as_str().unwrap().ends_with("/extend"))
            .cloned()
            .collect()
    };
    let on_first = extends(&first_journal);
    assert_eq!(on_first.len(), 1, "{first_journal:?}");
    assert_eq!(
        on_first[0]["path"],
        format!("/luma/generations/{parent_up}/extend")
    );
    assert_eq!(
        on_first[0]["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(on_first[0]["body_json"]["user_prompt"], "and then it flies");
    assert!(extends(&second_journal).is_empty(), "{second_journal:?}");
    // the new generation did go to the preferred channel
    assert!(
        second_journal
            .iter()
            .any(|r| r["path"] == "/luma/generations")
    );
    let (_, fresh_task) = gw
        .admin(Method::GET, &format!("/tasks/{fresh}"), None)
        .await;
    assert_eq!(fresh_task["channel_id"], channel_id("luma-b"));
    let (_, ext_task) = gw
        .admin(Method::GET, &format!("/tasks/{ext_id}"), None)
        .await;
    assert_eq!(ext_task["channel_id"], channel_id("luma-a"));
    assert_eq!(ext_task["price_name"], "luma_extend");
    assert_eq!(before - balance(&gw).await, 2 * GENERATE + EXTEND);
    reconciled(&gw).await;
}

#[tokio::test]
async fn an_extend_of_a_missing_unfinished_or_foreign_parent_is_refused_uncharged() {
    let (sandbox, gw) = start(5_000).await;
    let running = generate(&gw, "slow").await;
    let before = balance(&gw).await;
    let calls = sandbox.calls().await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/luma/generations/task_nope/extend",
        json!({"user_prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_openai_error(&answer);
    let (status, answer) = post(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{running}/extend"),
        json!({"user_prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_openai_error(&answer);
    let (_, bob) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"name": "bob", "balance_usd": 5.0})),
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
        format!("/luma/generations/{running}"),
        format!("/luma/generations/{running}/download_video_url"),
    ] {
        let (status, answer) = get(&gw, &bob_key, &path).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert_openai_error(&answer);
    }
    let (status, answer) = post(
        &gw,
        &bob_key,
        &format!("/luma/generations/{running}/extend"),
        json!({"user_prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    // a download before completion
    let (status, answer) = get(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{running}/download_video_url"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        sandbox.calls().await,
        calls,
        "refused requests reached the upstream"
    );
    assert_eq!(balance(&gw).await, before);
}

#[tokio::test]
async fn bad_input_is_answered_in_the_openai_envelope_before_any_charge() {
    let (sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/luma/generations",
        json!({"user_prompt": "please reject"}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_openai_error(&answer);
    assert_eq!(answer["error"]["message"], "the generation was refused");
    let calls = sandbox.calls().await;
    let not_png = "data:image/png;base64,aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGFuIGltYWdl";
    for (body, param) in [
        (json!({}), "user_prompt"),
        (json!({"user_prompt": " "}), "user_prompt"),
        (
            json!({"user_prompt": "x", "aspect_ratio": "2:1"}),
            "aspect_ratio",
        ),
        (json!({"user_prompt": "x", "loop": "yes"}), "loop"),
        (
            json!({"user_prompt": "x", "image_url": not_png}),
            "image_url",
        ),
        (
            json!({"user_prompt": "x", "image_end_url": "just words"}),
            "image_end_url",
        ),
        (
            json!({"user_prompt": "x", "resolution": "8k"}),
            "resolution",
        ),
    ] {
        let (status, answer) = post(&gw, USER_KEY, "/luma/generations", body.clone(), None).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_openai_error(&answer);
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    let (status, answer) = json_of(
        http()
            .post(format!("{}/luma/generations", gw.url))
            .bearer_auth(USER_KEY)
            .body("[1, 2]")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_openai_error(&answer);
    let (status, answer) = json_of(
        http()
            .get(format!("{}/luma/generations/task_x", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_openai_error(&answer);
    assert_eq!(
        sandbox.calls().await,
        calls,
        "bad input reached the upstream"
    );
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_uncharged() {
    let sandbox = Sandbox::start().await;
    let mut cfg = luma_config(vec![luma_channel("luma", &sandbox)]);
    cfg.server.max_body_mb = 1;
    let gw = TestGateway::start(cfg).await;
    let before = balance(&gw).await;
    let image = format!("data:image/png;base64,{}", "A".repeat(1_200_000));
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/luma/generations",
        json!({"user_prompt": "x", "image_url": image}),
        None,
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_openai_error(&answer);
    assert_eq!(sandbox.calls().await, 0);
    assert_eq!(balance(&gw).await, before);
}

#[tokio::test]
async fn a_failed_generation_is_refunded_once() {
    let (_sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let id = generate(&gw, "this will fail").await;
    assert_eq!(before - balance(&gw).await, GENERATE);
    let done = until_done(&gw, &id).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["failure_reason"].as_str().unwrap().contains("failure"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&gw).await, before);
    gw.state.ledger.flush().await;
    let entries = gw
        .state
        .store
        .ledger_entries(user_id(&gw).await)
        .await
        .unwrap();
    assert_eq!(entries.iter().filter(|e| e.1 == "refund").count(), 1);
    let (status, answer) = get(
        &gw,
        USER_KEY,
        &format!("/luma/generations/{id}/download_video_url"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    reconciled(&gw).await;
}

#[tokio::test]
async fn idempotency_and_callbacks() {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": 300})).await;
    let receiver = Receiver::start(1).await;
    let mut cfg = luma_config(vec![luma_channel("luma", &sandbox)]);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    let before = balance(&gw).await;
    let body = json!({"user_prompt": "ring me", "notify_hook": receiver.url, "callback_url": receiver.url});
    let (_, first) = post(
        &gw,
        USER_KEY,
        "/luma/generations",
        body.clone(),
        Some("luma-1"),
    )
    .await;
    let (_, second) = post(&gw, USER_KEY, "/luma/generations", body, Some("luma-1")).await;
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(second["id"], id.as_str());
    assert_eq!(before - balance(&gw).await, GENERATE);
    let bodies = receiver.until(|b| b["state"] == "completed").await;
    assert!(bodies.iter().all(|b| b["id"] == id.as_str()), "{bodies:?}");
    let last = bodies.iter().find(|b| b["state"] == "completed").unwrap();
    assert!(last["video"]["url"].is_string(), "{last}");
    let journal = sandbox.journal().await;
    let creates: Vec<&Value> = journal
        .iter()
        .filter(|r| r["path"] == "/luma/generations")
        .collect();
    assert_eq!(creates.len(), 1);
    assert!(creates[0]["body_json"].get("notify_hook").is_none());
    assert!(creates[0]["body_json"].get("callback_url").is_none());
    assert!(
        !journal
            .iter()
            .any(|r| r["body_json"].to_string().contains(&receiver.url))
    );
}

#[tokio::test]
async fn the_admin_channel_test_checks_udio_and_luma_keys() {
    let sandbox = Sandbox::with_keys(&["sk-good-key"]).await;
    let mut channels = Vec::new();
    for kind in ["udio", "luma"] {
        let mut c = channel(kind, &sandbox, &[]);
        c.kind = kind.into();
        c.keys = vec!["sk-good-key".into(), "sk-bad-key-1".into()];
        channels.push(c);
    }
    let gw = TestGateway::start(luma_config(channels)).await;
    let (_, listed) = gw.admin(Method::GET, "/channels", None).await;
    for c in listed["data"].as_array().unwrap() {
        let id = c["id"].as_i64().unwrap();
        let (status, result) = gw
            .admin(Method::POST, &format!("/channels/{id}/test"), None)
            .await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["keys"][0]["ok"], true, "{} {result}", c["kind"]);
        assert_eq!(result["keys"][1]["ok"], false, "{result}");
        assert_eq!(result["keys"][1]["status"], 401, "{result}");
        assert!(!result.to_string().contains("sk-bad-key-1"));
    }
    let paths: Vec<String> = sandbox
        .journal()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("/udio/fetch/")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("/luma/generations/")),
        "{paths:?}"
    );
}
