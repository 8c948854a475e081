//! The admin API: changes apply to the next request, secrets never come back, the spec covers it all.

use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn users_keys_and_channels_created_at_run_time_work_on_the_next_request() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![])).await;
    let (status, user) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"name": "bob", "balance_usd": 2.5})),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["balance_usd"], 2.5);
    assert_eq!(user["balance_nano"], 2_500_000_000i64);
    let (status, key) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"user_id": user["id"], "name": "k", "rpm": 60})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let full = key["key"].as_str().unwrap().to_string();
    assert!(full.starts_with("sk-") && full.len() >= 43);
    // no channel serves the model yet
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    expect_error(
        gw.post("/v1/chat/completions", &full, body.clone()).await,
        404,
        "model_not_found",
    )
    .await;
    let (status, created) = gw
        .admin(
            Method::POST,
            "/channels",
            Some(
                json!({"name": "rt", "kind": "openai", "base_url": format!("{}/v1/", sandbox.url),
            "keys": [UPSTREAM_KEY], "models": ["gpt-4o-mini"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        gw.post("/v1/chat/completions", &full, body.clone())
            .await
            .status(),
        200
    );
    // disabling the channel takes it out at once
    let id = created["id"].as_i64().unwrap();
    gw.admin(
        Method::PATCH,
        &format!("/channels/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    expect_error(
        gw.post("/v1/chat/completions", &full, body.clone()).await,
        404,
        "model_not_found",
    )
    .await;
    gw.admin(
        Method::PATCH,
        &format!("/channels/{id}"),
        Some(json!({"enabled": true, "model_map": {"alias": "gpt-4o-mini"}})),
    )
    .await;
    let aliased = json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        gw.post("/v1/chat/completions", &full, aliased)
            .await
            .status(),
        200
    );
    assert_eq!(
        sandbox.journal().await.last().unwrap()["body_json"]["model"],
        "gpt-4o-mini"
    );
    // deleting the key revokes it
    let (status, _) = gw
        .admin(Method::DELETE, &format!("/keys/{}", key["id"]), None)
        .await;
    assert_eq!(status, 204);
    expect_error(
        gw.post("/v1/chat/completions", &full, body).await,
        401,
        "invalid_api_key",
    )
    .await;
}

#[tokio::test]
async fn secrets_are_shown_once_and_never_listed() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["gpt-4o-mini"])])).await;
    let (_, keys) = gw.admin(Method::GET, "/keys", None).await;
    let listed = keys.to_string();
    assert!(
        !listed.contains(USER_KEY),
        "a full API key was listed: {listed}"
    );
    assert!(keys["data"][0]["key"].as_str().unwrap().contains('…'));
    let (_, channels) = gw.admin(Method::GET, "/channels", None).await;
    assert!(
        !channels.to_string().contains(UPSTREAM_KEY),
        "an upstream key was listed: {channels}"
    );
    assert_eq!(channels["data"][0]["keys"][0]["key"], "…test");
}

#[tokio::test]
async fn admin_api_refuses_relay_keys_and_bad_input() {
    let gw = TestGateway::start(config(vec![])).await;
    let as_user = http()
        .get(format!("{}/api/admin/users", gw.url))
        .bearer_auth(USER_KEY)
        .send()
        .await
        .unwrap();
    expect_error(as_user, 401, "invalid_api_key").await;
    let none = http()
        .get(format!("{}/api/admin/users", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    // and the admin key is no relay key
    let relay = gw
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            json!({"model": "m", "messages": []}),
        )
        .await;
    assert_eq!(relay.status(), 401);

    let cases = [
        ("/users", json!({"name": ""}), "name"),
        (
            "/users",
            json!({"name": "x", "balance_usd": -1}),
            "balance_usd",
        ),
        ("/users", json!({"name": "x", "extra": 1}), "."),
        ("/keys", json!({"user_id": 999, "name": "k"}), ""),
        (
            "/keys",
            json!({"user_id": 1, "name": "k", "key": "sk-short"}),
            "key",
        ),
        (
            "/channels",
            json!({"name": "c", "kind": "openai", "base_url": "ftp://x", "keys": ["k"]}),
            "base_url",
        ),
        (
            "/channels",
            json!({"name": "c", "kind": "nope", "base_url": "http://x.invalid", "keys": ["k"]}),
            "kind",
        ),
        (
            "/channels",
            json!({"name": "c", "kind": "openai", "base_url": "http://x.invalid", "keys": []}),
            "keys",
        ),
        (
            "/channels",
            json!({"name": "c", "kind": "openai", "base_url": "http://x.invalid", "keys": ["k"], "weight": "heavy"}),
            "weight",
        ),
    ];
    for (path, body, param) in cases {
        let (status, answer) = gw.admin(Method::POST, path, Some(body.clone())).await;
        assert!(
            status == 400 || status == 404,
            "{path} {body}: {status} {answer}"
        );
        assert!(answer["error"]["message"].is_string(), "{answer}");
        if !param.is_empty() && param != "." {
            assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
        }
    }
    let (status, _) = gw
        .admin(Method::POST, "/users", Some(json!({"name": "alice"})))
        .await;
    assert_eq!(status, 409, "a duplicate name must conflict");
    let (status, _) = gw.admin(Method::GET, "/users/424242", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn prices_are_stored_in_nano_usd_and_apply_without_restart() {
    let gw = TestGateway::start(config(vec![])).await;
    let (status, body) = gw.admin(Method::PUT, "/prices/gpt-4o", Some(json!({"input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .admin(
            Method::PUT,
            "/prices/mj_imagine",
            Some(json!({"per_call": 0.1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .admin(
            Method::PUT,
            "/prices/fal-ai/flux-1/dev",
            Some(json!({"free": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .admin(Method::PUT, "/prices/bad", Some(json!({"per_call": -3})))
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("per_call"))
    );
    let (_, all) = gw.admin(Method::GET, "/prices", None).await;
    assert_eq!(all["data"]["gpt-4o"]["input_per_mtok"], 2.5);
    assert_eq!(all["data"]["mj_imagine"]["per_call"], 0.1);
    assert_eq!(all["data"]["fal-ai/flux-1/dev"]["free"], true);
    assert_eq!(
        gw.state.catalog.load().prices["gpt-4o"].input_per_mtok,
        Some(2_500_000_000)
    );
    let (status, _) = gw.admin(Method::DELETE, "/prices/gpt-4o", None).await;
    assert_eq!(status, 204);
    assert!(!gw.state.catalog.load().prices.contains_key("gpt-4o"));
}

#[tokio::test]
async fn channel_test_checks_every_key() {
    let sandbox = Sandbox::with_keys(&["sk-good-key"]).await;
    let mut c = channel("c", &sandbox, &["gpt-4o-mini"]);
    c.keys = vec!["sk-good-key".into(), "sk-bad-key-1".into()];
    let gw = TestGateway::start(config(vec![c])).await;
    let (_, channels) = gw.admin(Method::GET, "/channels", None).await;
    let id = channels["data"][0]["id"].as_i64().unwrap();
    let (status, result) = gw
        .admin(Method::POST, &format!("/channels/{id}/test"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(result["ok"], false);
    assert_eq!(result["keys"][0]["ok"], true);
    assert_eq!(result["keys"][1]["status"], 401);
    assert!(!result.to_string().contains("sk-bad-key-1"));
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let gw = TestGateway::start(config(vec![])).await;
    let (status, spec) = json_of(
        http()
            .get(format!("{}/api/openapi.json", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/responses",
        "/v1/models",
        "/v1/models/{id}",
        "/api/admin/users",
        "/api/admin/users/{id}",
        "/api/admin/keys",
        "/api/admin/keys/{id}",
        "/api/admin/channels",
        "/api/admin/channels/{id}",
        "/api/admin/channels/{id}/test",
        "/api/admin/prices",
        "/api/admin/prices/{model}",
        "/api/admin/logs",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    // every documented admin path answers (not the 404 fallback)
    for path in paths
        .keys()
        .filter(|p| p.starts_with("/api/admin/") && !p.contains('{'))
    {
        let response = http()
            .get(format!("{}{path}", gw.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn request_logs_filter_and_page() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel(
        "c",
        &sandbox,
        &["gpt-4o-mini", "gpt-4o"],
    )]))
    .await;
    for model in ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"] {
        assert_eq!(gw.chat(model).await.status(), 200);
    }
    gw.chat("unknown-model").await;
    let all = gw.logs(4).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[0]["status"], 404);
    assert_eq!(all[0]["outcome"], "rejected");
    let (_, mini) = gw.admin(Method::GET, "/logs?model=gpt-4o-mini", None).await;
    assert_eq!(mini["data"].as_array().unwrap().len(), 2);
    let (_, ok) = gw
        .admin(Method::GET, "/logs?status=200&limit=1&offset=1", None)
        .await;
    assert_eq!(ok["data"].as_array().unwrap().len(), 1);
    let (_, none) = gw
        .admin(Method::GET, "/logs?since=99999999999999", None)
        .await;
    assert!(none["data"].as_array().unwrap().is_empty());
    let (status, _) = gw.admin(Method::GET, "/logs?limit=abc", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn health_and_readiness_need_no_key() {
    let gw = TestGateway::start(config(vec![])).await;
    assert_eq!(
        http()
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
