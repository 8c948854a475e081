//! Midjourney through the task engine: modes (price and channel), follow-ups on the parent's channel,
//! the modal step, the synchronous upload, refunds, idempotency, ownership, callbacks, bad input.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{ChannelConfig, Config, PriceConfig};

use crate::support::*;

/// A 1x1 PNG as a data URL.
const PNG: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
/// A data URL that claims to be a PNG but is text.
const NOT_AN_IMAGE: &str = "data:image/png;base64,aGVsbG8gd29ybGQ=";

const PRICES: &[(&str, f64)] = &[
    ("mj_imagine", 0.05),
    ("mj_relax_imagine", 0.02),
    ("mj_turbo_imagine", 0.10),
    ("mj_upscale", 0.01),
    ("mj_relax_upscale", 0.004),
    ("mj_variation", 0.03),
    ("mj_reroll", 0.03),
    ("mj_inpaint", 0.0),
    ("mj_modal", 0.04),
    ("mj_blend", 0.05),
    ("mj_describe", 0.02),
    ("mj_upload", 0.001),
    ("mj_relax_upload", 0.0005),
    ("swap_face_turbo", 0.06),
];

fn mj_channel(name: &str, sandbox: &Sandbox, modes: Option<&[&str]>) -> ChannelConfig {
    let mut c = channel(name, sandbox, &[]);
    c.kind = "midjourney".into();
    c.modes = modes.map(|m| m.iter().map(|s| s.to_string()).collect());
    c
}

fn mj_config(channels: Vec<ChannelConfig>) -> Config {
    let mut cfg = config(channels);
    for (name, usd) in PRICES {
        cfg.prices.insert(
            (*name).into(),
            PriceConfig {
                per_call: Some(*usd),
                ..Default::default()
            },
        );
    }
    cfg.tasks.poll_interval_ms = 50;
    cfg
}

async fn mj_sandbox(task_ms: u64) -> Sandbox {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": task_ms})).await;
    sandbox
}

/// POSTs `body` to `path` with the `mj-api-secret` header.
async fn post(
    gw: &TestGateway,
    key: &str,
    path: &str,
    body: &Value,
    idempotency: Option<&str>,
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}{path}", gw.url))
        .header("mj-api-secret", key)
        .json_body(body);
    if let Some(k) = idempotency {
        request = request.header("idempotency-key", k);
    }
    json_of(request.send().await.unwrap()).await
}

/// Submits and returns uniapi's task id, asserting the accepted envelope.
async fn submitted(gw: &TestGateway, path: &str, body: Value) -> String {
    let (status, answer) = post(gw, USER_KEY, path, &body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], 1, "{answer}");
    assert_eq!(answer["description"], "Submit success");
    assert_eq!(answer["properties"], json!({}));
    let id = answer["result"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"), "{id}");
    id
}

async fn fetch(gw: &TestGateway, key: &str, id: &str) -> (u16, Value) {
    json_of(
        http()
            .get(format!("{}/mj/task/{id}/fetch", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn until_done(gw: &TestGateway, id: &str) -> Value {
    for _ in 0..200 {
        let (status, task) = fetch(gw, USER_KEY, id).await;
        assert_eq!(status, 200, "{task}");
        if matches!(task["status"].as_str(), Some("SUCCESS" | "FAILURE")) {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not finish");
}

async fn upstream_id(gw: &TestGateway, id: &str) -> String {
    gw.state.store.task(id).await.unwrap().unwrap().upstream_id
}

fn submits<'a>(journal: &'a [Value], path: &str) -> Vec<&'a Value> {
    journal.iter().filter(|r| r["path"] == path).collect()
}

#[tokio::test]
async fn an_imagine_runs_to_success_and_fetch_answers_from_the_store() {
    // long enough for a poll (every second at first) to see it running
    let sandbox = mj_sandbox(2_500).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let before = balance(&gw).await;
    let body = json!({"prompt": "a lighthouse --ar 16:9", "state": "s-1", "notifyHook": "https://client.example/hook", "accountFilter": {"instanceId": "theirs"}});
    let id = submitted(&gw, "/mj/submit/imagine", body).await;
    assert_eq!(before - balance(&gw).await, 50_000_000);
    let (_, first) = fetch(&gw, USER_KEY, &id).await;
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["action"], "IMAGINE");
    assert_eq!(first["prompt"], "a lighthouse --ar 16:9");
    assert!(
        first["progress"].as_str().unwrap().ends_with('%'),
        "{first}"
    );
    // progress is seen while the task runs
    let mut saw_progress = false;
    for _ in 0..200 {
        let (_, t) = fetch(&gw, USER_KEY, &id).await;
        if t["status"] == "IN_PROGRESS" && t["progress"] != "0%" {
            saw_progress = true;
        }
        if t["status"] == "SUCCESS" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_progress, "no IN_PROGRESS with a percentage was seen");
    let task = until_done(&gw, &id).await;
    assert_eq!(task["status"], "SUCCESS", "{task}");
    assert_eq!(task["progress"], "100%");
    assert_eq!(task["state"], "s-1");
    assert!(task["imageUrl"].as_str().unwrap().starts_with("https://"));
    assert_eq!(task["buttons"].as_array().map(Vec::len), Some(9), "{task}");
    let submit_ms = task["submitTime"].as_i64().unwrap();
    assert!(submit_ms > 1_600_000_000_000, "milliseconds: {submit_ms}");
    assert!(task["finishTime"].as_i64().unwrap() >= submit_ms);
    // the upstream saw /mj/..., its own key in mj-api-secret, the mode, never the hook nor the client's filter
    let journal = sandbox.journal().await;
    let sent = submits(&journal, "/mj/submit/imagine");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["headers"]["mj-api-secret"], UPSTREAM_KEY);
    assert!(
        sent[0]["body_json"].get("notifyHook").is_none(),
        "{}",
        sent[0]
    );
    assert_eq!(
        sent[0]["body_json"]["accountFilter"],
        json!({"modes": ["FAST"]})
    );
    assert_eq!(sent[0]["body_json"]["prompt"], "a lighthouse --ar 16:9");
    let polls = submits(&journal, "/mj/task/list-by-condition");
    assert!(!polls.is_empty(), "the poller never listed");
    let upstream = upstream_id(&gw, &id).await;
    assert!(
        polls
            .iter()
            .all(|p| p["body_json"]["ids"] == json!([upstream]))
    );
    assert!(
        !journal.iter().any(|r| r.to_string().contains(&id)),
        "our task id leaked upstream"
    );
    // the batch answer holds only known, own tasks, by uniapi's id
    let (status, list) = post(
        &gw,
        USER_KEY,
        "/mj/task/list-by-condition",
        &json!({"ids": [id, "task_unknown", upstream]}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(before - balance(&gw).await, 50_000_000);
    reconciled(&gw).await;
}

#[tokio::test]
async fn each_mode_is_priced_on_its_own_and_sent_upstream_without_its_prefix() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    for (prefix, charged, mode) in [
        ("/mj-relax", 20_000_000, "RELAX"),
        ("/mj-fast", 50_000_000, "FAST"),
        ("/mj-turbo", 100_000_000, "TURBO"),
        ("", 50_000_000, "FAST"),
    ] {
        let before = balance(&gw).await;
        let id = submitted(
            &gw,
            &format!("{prefix}/mj/submit/imagine"),
            json!({"prompt": "the same cat"}),
        )
        .await;
        assert_eq!(before - balance(&gw).await, charged, "{prefix}");
        let task = gw.state.store.task(&id).await.unwrap().unwrap();
        let price = match mode {
            "RELAX" => "mj_relax_imagine",
            "TURBO" => "mj_turbo_imagine",
            _ => "mj_imagine",
        };
        assert_eq!(task.price_name, price);
        let journal = sandbox.journal().await;
        let last = submits(&journal, "/mj/submit/imagine")
            .pop()
            .unwrap()
            .clone();
        assert_eq!(last["body_json"]["accountFilter"]["modes"], json!([mode]));
    }
    let journal = sandbox.journal().await;
    assert!(
        journal
            .iter()
            .all(|r| r["path"].as_str().unwrap().starts_with("/mj/"))
    );
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_channel_receives_only_the_modes_it_serves() {
    let relax = mj_sandbox(200).await;
    let fast = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![
        mj_channel("mj-relax", &relax, Some(&["relax"])),
        mj_channel("mj-fast", &fast, Some(&["fast", "turbo"])),
    ]))
    .await;
    for _ in 0..3 {
        submitted(
            &gw,
            "/mj-relax/mj/submit/imagine",
            json!({"prompt": "slow"}),
        )
        .await;
        submitted(&gw, "/mj/submit/imagine", json!({"prompt": "quick"})).await;
    }
    let to_relax = relax.journal().await;
    let to_fast = fast.journal().await;
    let relax_submits = submits(&to_relax, "/mj/submit/imagine");
    let fast_submits = submits(&to_fast, "/mj/submit/imagine");
    assert_eq!((relax_submits.len(), fast_submits.len()), (3, 3));
    assert!(
        relax_submits
            .iter()
            .all(|r| r["body_json"]["prompt"] == "slow")
    );
    assert!(
        fast_submits
            .iter()
            .all(|r| r["body_json"]["prompt"] == "quick")
    );
}

#[tokio::test]
async fn a_mode_no_channel_serves_is_refused_and_costs_nothing() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel(
        "mj",
        &sandbox,
        Some(&["relax"]),
    )]))
    .await;
    let before = balance(&gw).await;
    for path in ["/mj/submit/imagine", "/mj-turbo/mj/submit/imagine"] {
        let (status, answer) = post(&gw, USER_KEY, path, &json!({"prompt": "x"}), None).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["code"], 9);
        assert!(answer["result"].is_null());
    }
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/mj/submit/upload-discord-images",
        &json!({"base64Array": [PNG]}),
        None,
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(balance(&gw).await, before);
    assert_eq!(sandbox.calls().await, 0);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_follow_up_runs_on_the_parents_channel() {
    // the parent can only run on `b` (fast); the relax follow-up would prefer `a` by priority
    let a = mj_sandbox(200).await;
    let b = mj_sandbox(200).await;
    let mut ca = mj_channel("mj-a", &a, Some(&["relax"]));
    ca.priority = 10;
    let cb = mj_channel("mj-b", &b, None);
    let gw = TestGateway::start(mj_config(vec![ca, cb])).await;
    let parent = submitted(&gw, "/mj/submit/imagine", json!({"prompt": "parent"})).await;
    let done = until_done(&gw, &parent).await;
    let upscale = done["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == "U1")
        .unwrap()["customId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(upscale.contains("upsample"), "{upscale}");
    let before = balance(&gw).await;
    let child = submitted(
        &gw,
        "/mj-relax/mj/submit/action",
        json!({"taskId": parent, "customId": upscale}),
    )
    .await;
    assert_ne!(child, parent);
    assert_eq!(before - balance(&gw).await, 4_000_000, "mj_relax_upscale");
    let on_b = b.journal().await;
    let actions = submits(&on_b, "/mj/submit/action");
    assert_eq!(actions.len(), 1);
    assert_eq!(
        actions[0]["body_json"]["taskId"],
        upstream_id(&gw, &parent).await.as_str()
    );
    assert_eq!(actions[0]["body_json"]["customId"], upscale.as_str());
    assert!(submits(&a.journal().await, "/mj/submit/action").is_empty());
    let task = until_done(&gw, &child).await;
    assert_eq!(
        (task["status"].as_str(), task["action"].as_str()),
        (Some("SUCCESS"), Some("UPSCALE"))
    );
    assert_eq!(
        gw.state
            .store
            .task(&child)
            .await
            .unwrap()
            .unwrap()
            .channel_id,
        gw.state
            .store
            .task(&parent)
            .await
            .unwrap()
            .unwrap()
            .channel_id
    );
    reconciled(&gw).await;
}

#[tokio::test]
async fn change_simple_change_and_the_modal_step() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let parent = submitted(&gw, "/mj/submit/imagine", json!({"prompt": "a fox"})).await;
    until_done(&gw, &parent).await;
    let parent_upstream = upstream_id(&gw, &parent).await;
    let before = balance(&gw).await;
    let up = submitted(
        &gw,
        "/mj/submit/change",
        json!({"taskId": parent, "action": "UPSCALE", "index": 2}),
    )
    .await;
    let vary = submitted(
        &gw,
        "/mj/submit/simple-change",
        json!({"content": format!("{parent} v3")}),
    )
    .await;
    assert_eq!(before - balance(&gw).await, 10_000_000 + 30_000_000);
    let journal = sandbox.journal().await;
    assert_eq!(
        submits(&journal, "/mj/submit/change")[0]["body_json"]["taskId"],
        parent_upstream.as_str()
    );
    assert_eq!(
        submits(&journal, "/mj/submit/simple-change")[0]["body_json"]["content"],
        format!("{parent_upstream} V3")
    );
    let upscaled = until_done(&gw, &up).await;
    assert_eq!(until_done(&gw, &vary).await["action"], "VARIATION");
    // vary (region) opens a modal: code 21, the task waits; the modal confirms it
    let inpaint = upscaled["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["customId"].as_str().unwrap().to_string())
        .find(|c| c.contains("Inpaint"))
        .unwrap();
    let before = balance(&gw).await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/mj/submit/action",
        &json!({"taskId": up, "customId": inpaint}),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (200, Some(21)),
        "{answer}"
    );
    let waiting = answer["result"].as_str().unwrap().to_string();
    assert_eq!(
        balance(&gw).await,
        before,
        "the inpaint button itself is free here"
    );
    for _ in 0..100 {
        if fetch(&gw, USER_KEY, &waiting).await.1["status"] == "MODAL" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(fetch(&gw, USER_KEY, &waiting).await.1["status"], "MODAL");
    let confirmed = submitted(
        &gw,
        "/mj/submit/modal",
        json!({"taskId": waiting, "prompt": "a hat", "maskBase64": PNG}),
    )
    .await;
    assert_eq!(before - balance(&gw).await, 40_000_000, "mj_modal");
    let journal = sandbox.journal().await;
    assert_eq!(
        submits(&journal, "/mj/submit/modal")[0]["body_json"]["taskId"],
        upstream_id(&gw, &waiting).await.as_str()
    );
    let done = until_done(&gw, &confirmed).await;
    assert_eq!(
        (done["status"].as_str(), done["action"].as_str()),
        (Some("SUCCESS"), Some("INPAINT"))
    );
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_failed_task_is_refunded_exactly_once() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let before = balance(&gw).await;
    let id = submitted(
        &gw,
        "/mj/submit/imagine",
        json!({"prompt": "this will fail"}),
    )
    .await;
    assert_eq!(before - balance(&gw).await, 50_000_000);
    let task = until_done(&gw, &id).await;
    assert_eq!(task["status"], "FAILURE");
    assert!(!task["failReason"].as_str().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&gw).await, before);
    gw.state.ledger.flush().await;
    let entries = gw
        .state
        .store
        .ledger_entries(user_id(&gw).await)
        .await
        .unwrap();
    assert_eq!(
        entries.iter().filter(|e| e.1 == "refund").count(),
        1,
        "{entries:?}"
    );
    reconciled(&gw).await;
}

#[tokio::test]
async fn bad_input_and_upstream_refusals_cost_nothing_and_bad_input_never_goes_upstream() {
    let sandbox = mj_sandbox(200).await;
    let mut cfg = mj_config(vec![mj_channel("mj", &sandbox, None)]);
    cfg.server.max_body_mb = 1;
    let gw = TestGateway::start(cfg).await;
    let before = balance(&gw).await;
    // a banned prompt: the upstream's code 24, nothing charged
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/mj/submit/imagine",
        &json!({"prompt": "reject me"}),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (400, Some(24)),
        "{answer}"
    );
    assert!(answer["result"].is_null());
    let calls = sandbox.calls().await;
    // another user's task, as a parent
    let theirs = submitted(&gw, "/mj/submit/imagine", json!({"prompt": "mine"})).await;
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
    let bob_key = key["key"].as_str().unwrap().to_string();
    let calls = calls + 1;
    let spent = 50_000_000;
    let big = "a".repeat(2 * 1024 * 1024);
    let cases: Vec<(&str, Value, u16, i64)> = vec![
        ("/mj/submit/imagine", json!({}), 400, 4),
        ("/mj/submit/imagine", json!({"prompt": " "}), 400, 4),
        (
            "/mj/submit/imagine",
            json!({"prompt": "x", "base64Array": [NOT_AN_IMAGE]}),
            400,
            4,
        ),
        (
            "/mj/submit/imagine",
            json!({"prompt": "x", "base64Array": ["hello"]}),
            400,
            4,
        ),
        ("/mj/submit/imagine", json!({"prompt": big}), 413, 4),
        ("/mj/submit/blend", json!({"base64Array": [PNG]}), 400, 4),
        (
            "/mj/submit/blend",
            json!({"base64Array": [PNG, PNG], "dimensions": "HUGE"}),
            400,
            4,
        ),
        ("/mj/submit/describe", json!({}), 400, 4),
        (
            "/mj/submit/describe",
            json!({"base64": NOT_AN_IMAGE}),
            400,
            4,
        ),
        ("/mj/submit/shorten", json!({}), 400, 4),
        ("/mj/submit/dance", json!({"prompt": "x"}), 400, 4),
        ("/mj/submit/action", json!({"taskId": theirs}), 400, 4),
        (
            "/mj/submit/action",
            json!({"taskId": theirs, "customId": "MJ::JOB::dance::1::x"}),
            400,
            4,
        ),
        (
            "/mj/submit/action",
            json!({"taskId": "task_nope", "customId": "MJ::JOB::upsample::1::x"}),
            404,
            3,
        ),
        (
            "/mj/submit/change",
            json!({"taskId": theirs, "action": "DANCE", "index": 1}),
            400,
            4,
        ),
        (
            "/mj/submit/change",
            json!({"taskId": theirs, "action": "UPSCALE", "index": 9}),
            400,
            4,
        ),
        (
            "/mj/submit/change",
            json!({"taskId": "task_nope", "action": "REROLL"}),
            404,
            3,
        ),
        ("/mj/submit/simple-change", json!({"content": "U1"}), 400, 4),
        (
            "/mj/submit/simple-change",
            json!({"content": format!("{theirs} X9")}),
            400,
            4,
        ),
        ("/mj/submit/modal", json!({}), 400, 4),
        ("/mj/submit/modal", json!({"taskId": "task_nope"}), 404, 3),
        (
            "/mj/insight-face/swap",
            json!({"sourceBase64": PNG}),
            400,
            4,
        ),
        (
            "/mj/insight-face/swap",
            json!({"sourceBase64": PNG, "targetBase64": NOT_AN_IMAGE}),
            400,
            4,
        ),
        (
            "/mj/submit/upload-discord-images",
            json!({"base64Array": []}),
            400,
            4,
        ),
        (
            "/mj/submit/upload-discord-images",
            json!({"base64Array": [NOT_AN_IMAGE]}),
            400,
            4,
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) = post(&gw, USER_KEY, path, &body, None).await;
        assert_eq!(status, want_status, "{path} {answer}");
        assert_eq!(answer["code"], want_code, "{path} {answer}");
        assert!(answer["description"].is_string(), "{answer}");
        assert!(answer["result"].is_null());
    }
    // follow-ups on another user's task: not found, as if it did not exist
    for (path, body) in [
        (
            "/mj/submit/action",
            json!({"taskId": theirs, "customId": "MJ::JOB::upsample::1::x"}),
        ),
        (
            "/mj/submit/change",
            json!({"taskId": theirs, "action": "REROLL"}),
        ),
        (
            "/mj/submit/simple-change",
            json!({"content": format!("{theirs} U1")}),
        ),
        ("/mj/submit/modal", json!({"taskId": theirs})),
    ] {
        let (status, answer) = post(&gw, &bob_key, path, &body, None).await;
        assert_eq!(
            (status, answer["code"].as_i64()),
            (404, Some(3)),
            "{path} {answer}"
        );
    }
    // no key, a wrong key
    let (status, answer) = json_of(
        http()
            .post(format!("{}/mj/submit/imagine", gw.url))
            .json_body(&json!({"prompt": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (401, Some(4)),
        "{answer}"
    );
    let (status, _) = post(
        &gw,
        "sk-wrong",
        "/mj/submit/imagine",
        &json!({"prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        sandbox.calls().await,
        calls,
        "bad input reached the upstream"
    );
    assert_eq!(before - balance(&gw).await, spent);
    reconciled(&gw).await;
}

#[tokio::test]
async fn an_idempotent_resubmit_returns_the_first_task_and_charges_once() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let before = balance(&gw).await;
    let body = json!({"prompt": "once"});
    let (_, first) = post(&gw, USER_KEY, "/mj/submit/imagine", &body, Some("mj-1")).await;
    let (_, second) = post(&gw, USER_KEY, "/mj/submit/imagine", &body, Some("mj-1")).await;
    assert_eq!(first["code"], 1);
    assert_eq!(first["result"], second["result"]);
    assert_eq!(before - balance(&gw).await, 50_000_000);
    assert_eq!(
        submits(&sandbox.journal().await, "/mj/submit/imagine").len(),
        1
    );
}

#[tokio::test]
async fn another_users_task_is_not_found_and_image_seed_asks_the_tasks_channel() {
    let sandbox = mj_sandbox(150).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let id = submitted(&gw, "/mj/submit/imagine", json!({"prompt": "mine"})).await;
    until_done(&gw, &id).await;
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
    let bob_key = key["key"].as_str().unwrap().to_string();
    let (status, answer) = fetch(&gw, &bob_key, &id).await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (404, Some(3)),
        "{answer}"
    );
    assert!(answer["result"].is_null());
    let (status, list) = post(
        &gw,
        &bob_key,
        "/mj/task/list-by-condition",
        &json!({"ids": [id]}),
        None,
    )
    .await;
    assert_eq!((status, list), (200, json!([])));
    let seed = |key: String| {
        let url = format!("{}/mj-relax/mj/task/{id}/image-seed", gw.url);
        async move {
            json_of(
                http()
                    .get(url)
                    .header("mj-api-secret", key)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let (status, answer) = seed(bob_key.clone()).await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (404, Some(3)),
        "{answer}"
    );
    let (status, answer) = seed(USER_KEY.to_string()).await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (200, Some(1)),
        "{answer}"
    );
    assert!(
        answer["result"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_digit())
    );
    let journal = sandbox.journal().await;
    let upstream = upstream_id(&gw, &id).await;
    assert_eq!(
        submits(&journal, &format!("/mj/task/{upstream}/image-seed")).len(),
        1
    );
}

#[tokio::test]
async fn callbacks_carry_the_task_and_the_hook_never_goes_upstream() {
    let sandbox = mj_sandbox(400).await;
    let receiver = Receiver::start(1).await;
    let mut cfg = mj_config(vec![mj_channel("mj", &sandbox, None)]);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    let id = submitted(
        &gw,
        "/mj/submit/imagine",
        json!({"prompt": "call me", "notifyHook": receiver.url}),
    )
    .await;
    let bodies = receiver.until(|b| b["status"] == "SUCCESS").await;
    for b in &bodies {
        assert_eq!(b["id"], id.as_str(), "{b}");
        assert_eq!(b["action"], "IMAGINE");
    }
    let last = bodies.iter().find(|b| b["status"] == "SUCCESS").unwrap();
    assert_eq!(last["progress"], "100%");
    assert!(!last["buttons"].as_array().unwrap().is_empty());
    assert!(
        !sandbox
            .journal()
            .await
            .iter()
            .any(|r| r.to_string().contains(&receiver.url)),
        "the hook leaked upstream"
    );
}

#[tokio::test]
async fn the_upload_is_synchronous_and_charged_per_mode() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let before = balance(&gw).await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/mj/submit/upload-discord-images",
        &json!({"base64Array": [PNG, PNG]}),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (200, Some(1)),
        "{answer}"
    );
    assert_eq!(answer["result"].as_array().map(Vec::len), Some(2));
    assert_eq!(before - balance(&gw).await, 1_000_000);
    let (status, _) = post(
        &gw,
        USER_KEY,
        "/mj-relax/mj/submit/upload-discord-images",
        &json!({"base64Array": [PNG]}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(before - balance(&gw).await, 1_500_000);
    // the upstream refuses (injected code 4 answer): nothing is charged
    sandbox
        .fault(json!({"path": "/mj/submit/upload-discord-images", "status": 200, "body": {"code": 4, "description": "nope", "result": null}}))
        .await;
    let (status, answer) = post(
        &gw,
        USER_KEY,
        "/mj/submit/upload-discord-images",
        &json!({"base64Array": [PNG]}),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (400, Some(4)),
        "{answer}"
    );
    assert_eq!(before - balance(&gw).await, 1_500_000);
    let journal = sandbox.journal().await;
    let uploads = submits(&journal, "/mj/submit/upload-discord-images");
    assert_eq!(uploads.len(), 3);
    assert_eq!(
        uploads[1]["body_json"]["accountFilter"]["modes"],
        json!(["RELAX"])
    );
    reconciled(&gw).await;
}

#[tokio::test]
async fn swap_face_describe_and_blend_run_to_success() {
    let sandbox = mj_sandbox(150).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    let before = balance(&gw).await;
    let swap = submitted(
        &gw,
        "/mj-turbo/mj/insight-face/swap",
        json!({"sourceBase64": PNG, "targetBase64": PNG}),
    )
    .await;
    let describe = submitted(&gw, "/mj/submit/describe", json!({"base64": PNG})).await;
    let blend = submitted(
        &gw,
        "/mj/submit/blend",
        json!({"base64Array": [PNG, PNG], "dimensions": "SQUARE"}),
    )
    .await;
    assert_eq!(
        before - balance(&gw).await,
        60_000_000 + 20_000_000 + 50_000_000
    );
    assert_eq!(until_done(&gw, &swap).await["action"], "SWAP_FACE");
    let described = until_done(&gw, &describe).await;
    assert!(
        !described["properties"]["finalPrompt"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{described}"
    );
    assert_eq!(until_done(&gw, &blend).await["status"], "SUCCESS");
    let journal = sandbox.journal().await;
    assert_eq!(submits(&journal, "/mj/insight-face/swap").len(), 1);
    // the stored request keeps no image data
    let kept = gw
        .state
        .store
        .task(&blend)
        .await
        .unwrap()
        .unwrap()
        .request
        .unwrap();
    assert!(!kept.to_string().contains("base64,"), "{kept}");
}

#[tokio::test]
async fn a_keys_requests_per_minute_bind_submits_and_uploads_in_the_mj_envelope() {
    let sandbox = mj_sandbox(200).await;
    let gw = TestGateway::start(mj_config(vec![mj_channel("mj", &sandbox, None)])).await;
    for (path, body) in [
        ("/mj/submit/imagine", json!({"prompt": "a harbour at dawn"})),
        (
            "/mj/submit/upload-discord-images",
            json!({"base64Array": [PNG]}),
        ),
    ] {
        let key = limited_key(&gw, json!({"rpm": 1, "name": path})).await;
        let (status, first) = post(&gw, &key, path, &body, None).await;
        assert_eq!(
            (status, first["code"].as_i64()),
            (200, Some(1)),
            "{path} {first}"
        );
        let before = balance(&gw).await;
        let calls = sandbox.calls().await;
        let response = http()
            .post(format!("{}{path}", gw.url))
            .header("mj-api-secret", &key)
            .json_body(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["retry-after"], "60", "{path}");
        let (status, refused) = json_of(response).await;
        assert_eq!(status, 429, "{path} {refused}");
        assert_eq!(refused["code"], 4, "{path} {refused}");
        assert!(refused["result"].is_null());
        assert!(
            refused["description"]
                .as_str()
                .unwrap()
                .contains("1 requests per minute"),
            "{refused}"
        );
        assert_eq!(balance(&gw).await, before, "{path}");
        assert_eq!(sandbox.calls().await, calls, "{path}");
    }
    reconciled(&gw).await;
}
