//! Udio through the task engine: submit → poll (one fetch per task) → success, failure refunded once,
//! idempotency, ownership, callbacks never sent upstream, bad input answered before any charge.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};

use crate::support::*;

const PRICE: i64 = 50_000_000;
const PRICE_130: i64 = 80_000_000;

fn udio_config(sandbox: &Sandbox) -> Config {
    let mut udio = channel("udio", sandbox, &[]);
    udio.kind = "udio".into();
    let mut cfg = config(vec![udio]);
    for (name, usd) in [("udio_music", 0.05), ("udio_music:udio130-v1.5", 0.08)] {
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
    let gw = TestGateway::start(udio_config(&sandbox)).await;
    (sandbox, gw)
}

async fn submit(gw: &TestGateway, key: &str, body: Value, idem: Option<&str>) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}/udio/submit/music", gw.url))
        .bearer_auth(key)
        .json_body(&body);
    if let Some(k) = idem {
        request = request.header("idempotency-key", k);
    }
    json_of(request.send().await.unwrap()).await
}

async fn fetch(gw: &TestGateway, key: &str, id: &str) -> (u16, Value) {
    json_of(
        http()
            .get(format!("{}/udio/fetch/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn until_done(gw: &TestGateway, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = fetch(gw, USER_KEY, id).await;
        assert_eq!(status, 200, "{body}");
        let task = &body["data"];
        if task["status"] == "SUCCESS" || task["status"] == "FAILURE" {
            return task.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not finish");
}

fn params(prompt: &str) -> Value {
    json!({"gen_params": {"prompt": prompt, "lyrics_type": "instrumental", "model_type": "udio32-v1.5"}})
}

#[tokio::test]
async fn music_runs_to_success_with_progress_from_the_store() {
    let (sandbox, gw) = start(2_500).await;
    let before = balance(&gw).await;
    let (status, answer) = submit(&gw, USER_KEY, params("lofi jazz, rainy night"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], "success");
    let id = answer["data"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"), "{id}");
    assert_eq!(before - balance(&gw).await, PRICE);
    // on the way: the task's own id, a percentage, the Udio action
    let mut seen_progress = Vec::new();
    let task = loop {
        let (_, body) = fetch(&gw, USER_KEY, &id).await;
        let task = body["data"].clone();
        assert_eq!(task["task_id"], id.as_str());
        assert_eq!(task["action"], "udio-generate");
        seen_progress.push(task["progress"].as_str().unwrap().to_string());
        if task["status"] == "SUCCESS" || task["status"] == "FAILURE" {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(task["status"], "SUCCESS", "{task}");
    assert_eq!(task["progress"], "100%");
    assert!(task["finish_time"].as_i64().unwrap() >= task["submit_time"].as_i64().unwrap());
    let songs = task["songs"].as_array().unwrap();
    assert_eq!(songs.len(), 2, "{task}");
    assert!(
        songs
            .iter()
            .all(|s| s["finished"] == true && s["song_path"].as_str().unwrap().ends_with(".mp3"))
    );
    assert!(
        seen_progress
            .iter()
            .any(|p| p != "0%" && p != "100%" && p.ends_with('%')),
        "no intermediate progress seen: {seen_progress:?}"
    );
    // the upstream: the channel's key, the body as sent, and one GET per poll of the task
    let journal = sandbox.journal().await;
    let submitted = journal
        .iter()
        .find(|r| r["path"] == "/udio/submit/music")
        .unwrap();
    assert_eq!(submitted["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(
        submitted["body_json"]["gen_params"]["prompt"],
        "lofi jazz, rainy night"
    );
    let polls: Vec<&Value> = journal
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/udio/fetch/"))
        .collect();
    assert!(!polls.is_empty());
    assert!(polls.iter().all(|r| r["method"] == "GET"
        && r["authorization"] == format!("Bearer {UPSTREAM_KEY}")
        && !r["path"].as_str().unwrap().contains(&id)));
    assert_eq!(before - balance(&gw).await, PRICE);
    reconciled(&gw).await;
}

#[tokio::test]
async fn the_model_specific_price_wins() {
    let (_sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let body = json!({"gen_params": {"prompt": "epic", "model_type": "udio130-v1.5"}});
    let (status, answer) = submit(&gw, USER_KEY, body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(before - balance(&gw).await, PRICE_130);
}

#[tokio::test]
async fn a_failure_is_refunded_exactly_once() {
    let (_sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let (_, answer) = submit(&gw, USER_KEY, params("this will fail"), None).await;
    let id = answer["data"].as_str().unwrap().to_string();
    assert_eq!(before - balance(&gw).await, PRICE);
    let task = until_done(&gw, &id).await;
    assert_eq!(task["status"], "FAILURE", "{task}");
    assert!(!task["fail_reason"].as_str().unwrap().is_empty());
    assert!(task["songs"][0]["error_type"].is_string(), "{task}");
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
    reconciled(&gw).await;
}

#[tokio::test]
async fn bad_input_and_refusals_cost_nothing_and_bad_input_never_goes_upstream() {
    let (sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let (status, answer) = submit(&gw, USER_KEY, params("please reject"), None).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("error")),
        "{answer}"
    );
    assert!(answer["data"].is_null());
    let calls = sandbox.calls().await;
    for body in [
        json!({}),
        json!({"gen_params": {}}),
        json!({"gen_params": {"prompt": "  "}}),
        json!({"gen_params": "jazz"}),
        json!({"gen_params": {"prompt": "x", "lyrics_type": "hummed"}}),
        json!({"gen_params": {"prompt": "x", "lyrics_type": "user"}}),
        json!({"gen_params": {"prompt": "x", "prompt_strength": 3}}),
        json!({"prompt": "not under gen_params"}),
    ] {
        let (status, answer) = submit(&gw, USER_KEY, body.clone(), None).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
        assert!(answer["data"].is_null() && answer["message"].is_string());
    }
    // an unknown action, a body that is not JSON, no key
    let (status, answer) = json_of(
        http()
            .post(format!("{}/udio/submit/lyrics", gw.url))
            .bearer_auth(USER_KEY)
            .json_body(&params("x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = json_of(
        http()
            .post(format!("{}/udio/submit/music", gw.url))
            .bearer_auth(USER_KEY)
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, answer) = json_of(
        http()
            .get(format!("{}/udio/fetch/task_x", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["code"].is_string() && answer["data"].is_null());
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
    let mut cfg = udio_config(&sandbox);
    cfg.server.max_body_mb = 1;
    let gw = TestGateway::start(cfg).await;
    let before = balance(&gw).await;
    let big = "x".repeat(1_200_000);
    let (status, answer) = submit(&gw, USER_KEY, params(&big), None).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["code"].is_string() && answer["data"].is_null(),
        "{answer}"
    );
    assert_eq!(sandbox.calls().await, 0);
    assert_eq!(balance(&gw).await, before);
}

#[tokio::test]
async fn an_idempotent_resubmit_returns_the_first_task_and_charges_once() {
    let (sandbox, gw) = start(200).await;
    let before = balance(&gw).await;
    let (_, first) = submit(&gw, USER_KEY, params("once"), Some("udio-1")).await;
    let (_, second) = submit(&gw, USER_KEY, params("once"), Some("udio-1")).await;
    assert_eq!(first["data"], second["data"]);
    assert_eq!(before - balance(&gw).await, PRICE);
    let submits = sandbox
        .journal()
        .await
        .iter()
        .filter(|r| r["path"] == "/udio/submit/music")
        .count();
    assert_eq!(submits, 1);
}

#[tokio::test]
async fn another_users_task_is_not_found() {
    let (_sandbox, gw) = start(200).await;
    let (_, answer) = submit(&gw, USER_KEY, params("mine"), None).await;
    let id = answer["data"].as_str().unwrap().to_string();
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
    let (status, answer) = fetch(&gw, key["key"].as_str().unwrap(), &id).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("task_not_exist"))
    );
    assert!(answer["data"].is_null());
    let (status, _) = fetch(&gw, USER_KEY, &id).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn callbacks_are_delivered_and_the_hook_never_goes_upstream() {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": 300})).await;
    let receiver = Receiver::start(1).await;
    let mut cfg = udio_config(&sandbox);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    let body = json!({"gen_params": {"prompt": "call me back", "notify_hook": receiver.url}, "notify_hook": receiver.url});
    let (status, answer) = submit(&gw, USER_KEY, body, None).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"].as_str().unwrap().to_string();
    let bodies = receiver.until(|b| b["status"] == "SUCCESS").await;
    assert!(bodies.iter().all(|b| b["task_id"] == id.as_str()));
    let last = bodies.iter().find(|b| b["status"] == "SUCCESS").unwrap();
    assert_eq!(last["songs"].as_array().map(Vec::len), Some(2), "{last}");
    let journal = sandbox.journal().await;
    let submitted = journal
        .iter()
        .find(|r| r["path"] == "/udio/submit/music")
        .unwrap();
    assert!(submitted["body_json"].get("notify_hook").is_none());
    assert!(
        submitted["body_json"]["gen_params"]
            .get("notify_hook")
            .is_none()
    );
    assert!(
        !journal
            .iter()
            .any(|r| r["body_json"].to_string().contains(&receiver.url))
    );
}

#[tokio::test]
async fn an_upstream_rate_limit_on_polling_is_waited_out() {
    let (sandbox, gw) = start(200).await;
    let (_, answer) = submit(&gw, USER_KEY, params("patience"), None).await;
    let id = answer["data"].as_str().unwrap().to_string();
    let (_, task) = gw.admin(Method::GET, &format!("/tasks/{id}"), None).await;
    let path = format!("/udio/fetch/{}", task["upstream_id"].as_str().unwrap());
    sandbox
        .fault(json!({"status": 429, "path": path, "retry_after": 1, "count": 1}))
        .await;
    let done = until_done(&gw, &id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let hits: Vec<Value> = sandbox
        .journal()
        .await
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect();
    assert!(hits.len() >= 2, "{hits:?}");
}
