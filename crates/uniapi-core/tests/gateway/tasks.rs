//! The task engine through the Suno family: submit, poll to the end, refund failures once, idempotency,
//! ownership, restarts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};

use crate::support::*;

fn suno_config(sandbox: &Sandbox) -> Config {
    let mut suno = channel("suno", sandbox, &[]);
    suno.kind = "suno".into();
    let mut cfg = config(vec![suno]);
    cfg.prices.insert(
        "suno_music".into(),
        PriceConfig {
            per_call: Some(0.1),
            ..Default::default()
        },
    );
    cfg.prices.insert(
        "suno_lyrics".into(),
        PriceConfig {
            per_call: Some(0.02),
            ..Default::default()
        },
    );
    cfg.tasks.poll_interval_ms = 50;
    cfg
}

async fn suno_sandbox(task_ms: u64) -> Sandbox {
    let sandbox = Sandbox::start().await;
    sandbox.set(json!({"task_ms": task_ms})).await;
    sandbox
}

async fn submit(
    gw: &TestGateway,
    key: &str,
    action: &str,
    body: Value,
    idempotency: Option<&str>,
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}/suno/submit/{action}", gw.url))
        .bearer_auth(key)
        .json_body(&body);
    if let Some(k) = idempotency {
        request = request.header("idempotency-key", k);
    }
    json_of(request.send().await.unwrap()).await
}

async fn fetch(gw: &TestGateway, key: &str, id: &str) -> (u16, Value) {
    json_of(
        http()
            .get(format!("{}/suno/fetch/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Polls uniapi's fetch route until the task ends.
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

#[tokio::test]
async fn a_music_task_runs_to_success_and_is_charged_once() {
    let sandbox = suno_sandbox(300).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    let body = json!({"gpt_description_prompt": "a song about gateways", "mv": "chirp-v4", "notify_hook": "https://client.example/hook"});
    let (status, answer) = submit(&gw, USER_KEY, "music", body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], "success");
    let id = answer["data"].as_str().unwrap().to_string();
    assert_eq!(before - balance(&gw).await, 100_000_000);
    let (_, first) = fetch(&gw, USER_KEY, &id).await;
    assert_eq!(first["data"]["task_id"], id.as_str());
    let task = until_done(&gw, &id).await;
    assert_eq!(task["status"], "SUCCESS", "{task}");
    assert_eq!(task["progress"], "100%");
    assert_eq!(task["data"].as_array().map(Vec::len), Some(2), "{task}");
    // the upstream saw the channel's key, the upper-cased action, and never the client's hook
    let journal = sandbox.journal().await;
    let submitted = journal
        .iter()
        .find(|r| r["path"] == "/suno/submit/music")
        .unwrap();
    assert_eq!(submitted["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert!(
        submitted["body_json"].get("notify_hook").is_none(),
        "{submitted}"
    );
    assert!(
        !journal
            .iter()
            .any(|r| r["body_json"].to_string().contains(&id)),
        "our task id leaked upstream"
    );
    assert_eq!(before - balance(&gw).await, 100_000_000);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_failed_task_is_refunded_exactly_once() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    let (status, answer) = submit(
        &gw,
        USER_KEY,
        "music",
        json!({"prompt": "this one will fail"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"].as_str().unwrap().to_string();
    assert_eq!(before - balance(&gw).await, 100_000_000);
    let task = until_done(&gw, &id).await;
    assert_eq!(task["status"], "FAILURE");
    assert!(!task["fail_reason"].as_str().unwrap().is_empty());
    // more poll rounds change nothing
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance(&gw).await, before);
    gw.state.ledger.flush().await;
    let (_, users) = gw.admin(Method::GET, "/users", None).await;
    let entries = gw
        .state
        .store
        .ledger_entries(users["data"][0]["id"].as_i64().unwrap())
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
async fn an_upstream_refusal_and_bad_input_cost_nothing() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    let (status, answer) = submit(
        &gw,
        USER_KEY,
        "music",
        json!({"prompt": "please reject this"}),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("error")),
        "{answer}"
    );
    let calls = sandbox.calls().await;
    for (action, body, code) in [
        ("dance", json!({"prompt": "x"}), "invalid_request"),
        ("lyrics", json!({}), "invalid_request"),
        ("music", json!({"title": "no prompt"}), "invalid_request"),
        (
            "music",
            json!({"prompt": "x", "task_id": "task_nope", "continue_clip_id": "c"}),
            "task_not_exist",
        ),
    ] {
        let (status, answer) = submit(&gw, USER_KEY, action, body, None).await;
        assert!(status == 400 || status == 404, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
        assert!(answer["data"].is_null());
    }
    let (status, answer) = json_of(
        http()
            .get(format!("{}/suno/fetch/x", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["message"].is_string());
    assert_eq!(
        sandbox.calls().await,
        calls,
        "bad input reached the upstream"
    );
    assert_eq!(balance(&gw).await, before);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_resubmit_with_the_same_idempotency_key_returns_the_first_task() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    let body = json!({"prompt": "[Verse] once"});
    let (_, first) = submit(&gw, USER_KEY, "lyrics", body.clone(), Some("order-42")).await;
    let (_, second) = submit(&gw, USER_KEY, "lyrics", body, Some("order-42")).await;
    assert_eq!(first["data"], second["data"]);
    assert_eq!(before - balance(&gw).await, 20_000_000);
    assert_eq!(
        sandbox
            .journal()
            .await
            .iter()
            .filter(|r| r["path"] == "/suno/submit/lyrics")
            .count(),
        1
    );
}

#[tokio::test]
async fn another_users_task_is_not_found() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let (_, answer) = submit(&gw, USER_KEY, "music", json!({"prompt": "mine"}), None).await;
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
    let bob_key = key["key"].as_str().unwrap().to_string();
    let (status, answer) = fetch(&gw, &bob_key, &id).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("task_not_exist"))
    );
    let batch = http()
        .post(format!("{}/suno/fetch", gw.url))
        .bearer_auth(&bob_key)
        .json_body(&json!({"ids": [id.clone()]}))
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(batch).await;
    assert_eq!(
        (status, answer["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let mine = http()
        .post(format!("{}/suno/submit/fetch", gw.url))
        .bearer_auth(USER_KEY)
        .json_body(&json!({"ids": [id, "task_unknown"]}))
        .send()
        .await
        .unwrap();
    let (_, answer) = json_of(mine).await;
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn polling_resumes_after_a_restart_and_the_money_is_right() {
    let sandbox = suno_sandbox(800).await;
    let cfg = suno_config(&sandbox);
    let gw = TestGateway::start(cfg.clone()).await;
    let before = balance(&gw).await;
    let (_, ok) = submit(
        &gw,
        USER_KEY,
        "music",
        json!({"prompt": "survive a restart"}),
        None,
    )
    .await;
    let (_, bad) = submit(
        &gw,
        USER_KEY,
        "music",
        json!({"prompt": "fail after a restart"}),
        None,
    )
    .await;
    gw.stop().await;
    let gw = TestGateway::start(cfg).await;
    let ok_task = until_done(&gw, ok["data"].as_str().unwrap()).await;
    let bad_task = until_done(&gw, bad["data"].as_str().unwrap()).await;
    assert_eq!(
        (ok_task["status"].as_str(), bad_task["status"].as_str()),
        (Some("SUCCESS"), Some("FAILURE"))
    );
    assert_eq!(before - balance(&gw).await, 100_000_000);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_stuck_task_times_out_and_is_refunded() {
    let sandbox = suno_sandbox(60_000).await;
    let mut cfg = suno_config(&sandbox);
    cfg.tasks.timeout_secs = 1;
    let gw = TestGateway::start(cfg).await;
    let before = balance(&gw).await;
    let (_, answer) = submit(&gw, USER_KEY, "music", json!({"prompt": "forever"}), None).await;
    let task = until_done(&gw, answer["data"].as_str().unwrap()).await;
    assert_eq!(task["status"], "FAILURE");
    assert!(task["fail_reason"].as_str().unwrap().contains("timed out"));
    assert_eq!(balance(&gw).await, before);
    let (_, tasks) = gw.admin(Method::GET, "/tasks?family=suno", None).await;
    assert_eq!(tasks["data"][0]["refunded"], true);
}

#[tokio::test]
async fn callbacks_carry_each_state_change_and_are_retried() {
    let sandbox = suno_sandbox(400).await;
    let receiver = Receiver::start(1).await;
    let mut cfg = suno_config(&sandbox);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    let body = json!({"prompt": "la la la", "notify_hook": receiver.url});
    let (status, answer) = submit(&gw, USER_KEY, "lyrics", body, None).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"].as_str().unwrap().to_string();
    let bodies = receiver.until(|b| b["status"] == "SUCCESS").await;
    // every delivery is the task in Suno's own fetch format, under uniapi's id
    for b in &bodies {
        assert_eq!(b["task_id"], id.as_str(), "{b}");
        assert_eq!(b["action"], "LYRICS");
    }
    let last = bodies.iter().find(|b| b["status"] == "SUCCESS").unwrap();
    assert_eq!(last["progress"], "100%");
    assert!(last["data"]["text"].is_string(), "{last}");
    // the first delivery was refused with a 500 and retried; the upstream never saw the hook
    let journal = sandbox.journal().await;
    assert!(
        !journal
            .iter()
            .any(|r| r["body_json"].to_string().contains(&receiver.url)),
        "the hook leaked upstream"
    );
}

#[tokio::test]
async fn a_callback_to_a_private_address_is_refused_unless_allowed() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    for hook in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "ftp://example.com/hook",
    ] {
        let body = json!({"prompt": "la la la", "notify_hook": hook});
        let (status, answer) = submit(&gw, USER_KEY, "lyrics", body, None).await;
        assert_eq!(status, 400, "{hook}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("callback"),
            "{answer}"
        );
    }
    assert_eq!(balance(&gw).await, before);
    assert_eq!(sandbox.calls().await, 0);
}

async fn submits(sandbox: &Sandbox) -> usize {
    sandbox
        .journal()
        .await
        .iter()
        .filter(|r| r["path"] == "/suno/submit/lyrics")
        .count()
}

#[tokio::test]
async fn a_keys_request_limits_bind_task_submits_and_a_refused_one_costs_nothing() {
    let sandbox = suno_sandbox(200).await;
    let gw = TestGateway::start(suno_config(&sandbox)).await;
    let before = balance(&gw).await;
    let body = json!({"prompt": "[Verse] once"});

    // one request a minute: the second submit is refused in Suno's envelope, with when to retry
    let one_a_minute = limited_key(&gw, json!({"rpm": 1})).await;
    let (status, first) = submit(&gw, &one_a_minute, "lyrics", body.clone(), None).await;
    assert_eq!(status, 200, "{first}");
    let response = http()
        .post(format!("{}/suno/submit/lyrics", gw.url))
        .bearer_auth(&one_a_minute)
        .json_body(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "60");
    let (status, refused) = json_of(response).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{refused}"
    );
    assert!(refused["data"].is_null());
    assert_eq!(submits(&sandbox).await, 1);
    assert_eq!(before - balance(&gw).await, 20_000_000);

    // one at a time: a submit while another is still being answered upstream is refused
    let one_at_a_time = limited_key(&gw, json!({"max_concurrency": 1})).await;
    sandbox.set(json!({"latency_ms": 400})).await;
    let slow = {
        let (gw_url, key, body) = (gw.url.clone(), one_at_a_time.clone(), body.clone());
        tokio::spawn(async move {
            http()
                .post(format!("{gw_url}/suno/submit/lyrics"))
                .bearer_auth(&key)
                .json_body(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, refused) = submit(&gw, &one_at_a_time, "lyrics", body.clone(), None).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (429, Some("concurrency_limit_exceeded")),
        "{refused}"
    );
    assert_eq!(slow.await.unwrap(), 200);
    sandbox.set(json!({"latency_ms": 0})).await;
    // the slot is free again once the first submit is answered
    let (status, again) = submit(&gw, &one_at_a_time, "lyrics", body, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(submits(&sandbox).await, 3);
    assert_eq!(before - balance(&gw).await, 3 * 20_000_000);
    let logs = gw.logs(5).await;
    assert_eq!(
        logs.iter().filter(|l| l["status"] == 429).count(),
        2,
        "{logs:?}"
    );
    reconciled(&gw).await;
}

/// A callback receiver that holds every delivery unanswered until it is opened, then records them.
struct HeldReceiver {
    url: String,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl HeldReceiver {
    async fn start() -> HeldReceiver {
        use std::sync::atomic::Ordering;
        let (arrived, open, bodies) = (
            std::sync::Arc::<std::sync::atomic::AtomicUsize>::default(),
            std::sync::Arc::<std::sync::atomic::AtomicBool>::default(),
            std::sync::Arc::<std::sync::Mutex<Vec<Value>>>::default(),
        );
        let (a, o, b) = (arrived.clone(), open.clone(), bodies.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (a, o, b) = (a.clone(), o.clone(), b.clone());
                async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    if !o.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        HeldReceiver {
            url,
            arrived,
            open,
            bodies,
        }
    }
}

#[tokio::test]
async fn a_callback_owed_when_the_gateway_stops_is_delivered_after_it_starts_again() {
    use std::sync::atomic::Ordering;
    let sandbox = suno_sandbox(200).await;
    let receiver = HeldReceiver::start().await;
    let mut cfg = suno_config(&sandbox);
    allow_local_callbacks(&mut cfg);
    let gw = TestGateway::start(cfg.clone()).await;
    let body = json!({"prompt": "la la la", "notify_hook": receiver.url});
    let (status, answer) = submit(&gw, USER_KEY, "lyrics", body, None).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"].as_str().unwrap().to_string();
    until_done(&gw, &id).await;
    // a delivery reached the receiver and hangs there, unanswered, as the gateway stops
    for _ in 0..100 {
        if receiver.arrived.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.arrived.load(Ordering::SeqCst) > 0);
    gw.stop().await;
    receiver.open.store(true, Ordering::SeqCst);
    let gw = TestGateway::start(cfg).await;
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = receiver.bodies.lock().unwrap().clone();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["task_id"], id.as_str());
    assert_eq!(delivered[0]["status"], "SUCCESS", "{:?}", delivered[0]);
    // delivered: nothing is owed any more, so a third start sends nothing
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        gw.state
            .store
            .callbacks_due("", 10)
            .await
            .unwrap()
            .is_empty()
    );
}
