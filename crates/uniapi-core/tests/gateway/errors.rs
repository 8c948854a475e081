//! Bad input answers in the OpenAI error shape with the right status, and never reaches an upstream.

use serde_json::json;

use crate::support::*;

async fn gateway() -> (Sandbox, TestGateway) {
    let sandbox = Sandbox::start().await;
    let mut cfg = config(vec![channel(
        "c",
        &sandbox,
        &["gpt-4o-mini", "gpt-4o", "dall-e-2", "whisper-1"],
    )]);
    cfg.server.max_body_mb = 1;
    (sandbox, TestGateway::start(cfg).await)
}

fn chat_body() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn key_problems_answer_401_or_403() {
    let (sandbox, gw) = gateway().await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let missing = http()
        .post(&url)
        .json_body(&chat_body())
        .send()
        .await
        .unwrap();
    expect_error(missing, 401, "missing_api_key").await;
    let unknown = "sk-unknown-000000000000000000000000000000000000000000";
    let body = expect_error(
        gw.post("/v1/chat/completions", unknown, chat_body()).await,
        401,
        "invalid_api_key",
    )
    .await;
    assert!(
        !body.to_string().contains(unknown),
        "the full key was echoed: {body}"
    );

    // a disabled key, an expired key, a disabled user
    let (_, users) = gw.admin(reqwest::Method::GET, "/users", None).await;
    let user_id = users["data"][0]["id"].as_i64().unwrap();
    let (status, created) = gw
        .admin(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"user_id": user_id, "name": "temp"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_i64().unwrap();
    assert_eq!(
        gw.post("/v1/chat/completions", &key, chat_body())
            .await
            .status(),
        200
    );
    gw.admin(
        reqwest::Method::PATCH,
        &format!("/keys/{key_id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    expect_error(
        gw.post("/v1/chat/completions", &key, chat_body()).await,
        401,
        "api_key_disabled",
    )
    .await;
    gw.admin(
        reqwest::Method::PATCH,
        &format!("/keys/{key_id}"),
        Some(json!({"enabled": true, "expires_at": 1000})),
    )
    .await;
    expect_error(
        gw.post("/v1/chat/completions", &key, chat_body()).await,
        401,
        "api_key_expired",
    )
    .await;
    gw.admin(
        reqwest::Method::PATCH,
        &format!("/keys/{key_id}"),
        Some(json!({"expires_at": null})),
    )
    .await;
    assert_eq!(
        gw.post("/v1/chat/completions", &key, chat_body())
            .await
            .status(),
        200
    );
    gw.admin(
        reqwest::Method::PATCH,
        &format!("/users/{user_id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    expect_error(
        gw.post("/v1/chat/completions", &key, chat_body()).await,
        403,
        "account_disabled",
    )
    .await;
    assert_eq!(sandbox.calls().await, 2);
}

#[tokio::test]
async fn model_problems_answer_404_or_403() {
    let (sandbox, gw) = gateway().await;
    let body = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]});
    let error = expect_error(
        gw.post("/v1/chat/completions", USER_KEY, body).await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(error["error"]["param"], "model");
    let (_, users) = gw.admin(reqwest::Method::GET, "/users", None).await;
    let user_id = users["data"][0]["id"].as_i64().unwrap();
    let (_, created) = gw
        .admin(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"user_id": user_id, "name": "narrow", "models": ["gpt-4o"]})),
        )
        .await;
    let narrow = created["key"].as_str().unwrap();
    expect_error(
        gw.post("/v1/chat/completions", narrow, chat_body()).await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(sandbox.calls().await, 0);
    // the model list shows only what the key may use
    let (_, list) = json_of(
        http()
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(narrow)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["gpt-4o"]);
    let one = http()
        .get(format!("{}/v1/models/gpt-4o-mini", gw.url))
        .bearer_auth(narrow)
        .send()
        .await
        .unwrap();
    expect_error(one, 404, "model_not_found").await;
    let (status, model) = json_of(
        http()
            .get(format!("{}/v1/models/gpt-4o", gw.url))
            .bearer_auth(narrow)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, model["object"].as_str()), (200, Some("model")));
}

#[tokio::test]
async fn malformed_bodies_answer_400_naming_the_field() {
    let (sandbox, gw) = gateway().await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let raw = |body: &'static str| {
        http()
            .post(&url)
            .bearer_auth(USER_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(raw("{not json").await.unwrap(), 400, "invalid_json").await;
    expect_error(raw("[1,2,3]").await.unwrap(), 400, "invalid_json").await;
    let (status, body) = json_of(raw(r#"{"model":"gpt-4o-mini"}"#).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    let (status, body) = json_of(raw(r#"{"messages":[]}"#).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("model"))
    );
    let (status, _) = json_of(
        raw(r#"{"model":"gpt-4o-mini","messages":[],"stream":"yes"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = json_of(
        gw.post("/v1/embeddings", USER_KEY, json!({"model": "gpt-4o-mini"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("input"))
    );
    assert_eq!(sandbox.calls().await, 0);
}

#[tokio::test]
async fn wrong_content_type_413_unknown_paths_and_methods() {
    let (sandbox, gw) = gateway().await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let form = http()
        .post(&url)
        .bearer_auth(USER_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    expect_error(form, 415, "unsupported_media_type").await;
    let json_to_form = http()
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .bearer_auth(USER_KEY)
        .json_body(&chat_body())
        .send()
        .await
        .unwrap();
    expect_error(json_to_form, 415, "unsupported_media_type").await;

    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1_100_000)
    );
    let too_big = http()
        .post(&url)
        .bearer_auth(USER_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(too_big, 413, "request_too_large").await;
    // without a declared length (chunked), the limit still holds
    let chunks =
        futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])));
    let chunked = http()
        .post(&url)
        .bearer_auth(USER_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(chunked, 413, "request_too_large").await;

    let unknown = http()
        .get(format!("{}/v1/nothing-here", gw.url))
        .send()
        .await
        .unwrap();
    expect_error(unknown, 404, "unknown_url").await;
    let wrong_method = http().get(&url).bearer_auth(USER_KEY).send().await.unwrap();
    expect_error(wrong_method, 405, "method_not_allowed").await;
    // axum's own rejections come out in the same shape
    let (status, body) = gw
        .admin(reqwest::Method::GET, "/users/not-a-number", None)
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(sandbox.calls().await, 0);
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&vec![200u8; (width * height * 4) as usize])
            .unwrap();
    }
    out
}

fn multipart(boundary: &str, fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, data) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
        );
        if let Some(file) = file {
            body.extend_from_slice(
                format!("; filename=\"{file}\"\r\nContent-Type: application/octet-stream")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn image_variations_check_the_seed_rules_before_any_upstream_call() {
    let (sandbox, gw) = gateway().await;
    let send = |fields: Vec<(&'static str, Option<&'static str>, Vec<u8>)>| {
        let refs: Vec<(&str, Option<&str>, &[u8])> = fields
            .iter()
            .map(|(n, f, d)| (*n, *f, d.as_slice()))
            .collect();
        let body = multipart("BOUNDARY", &refs);
        http()
            .post(format!("{}/v1/images/variations", gw.url))
            .bearer_auth(USER_KEY)
            .header("content-type", "multipart/form-data; boundary=BOUNDARY")
            .body(body)
            .send()
    };
    let square = png(16, 16);
    type Field = (&'static str, Option<&'static str>, Vec<u8>);
    let cases: Vec<(Vec<Field>, &str)> = vec![
        (vec![("model", None, b"dall-e-2".to_vec())], "image"),
        (vec![("image", Some("a.png"), png(16, 8))], "image"),
        (
            vec![("image", Some("a.png"), b"GIF89a not a png".to_vec())],
            "image",
        ),
        (
            vec![
                ("image", Some("a.png"), square.clone()),
                ("n", None, b"11".to_vec()),
            ],
            "n",
        ),
        (
            vec![
                ("image", Some("a.png"), square.clone()),
                ("size", None, b"300x300".to_vec()),
            ],
            "size",
        ),
    ];
    for (fields, param) in cases {
        let (status, body) = json_of(send(fields).await.unwrap()).await;
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    assert_eq!(sandbox.calls().await, 0);
    let ok = send(vec![
        ("image", Some("a.png"), square),
        ("n", None, b"2".to_vec()),
        ("size", None, b"256x256".to_vec()),
    ])
    .await
    .unwrap();
    let (status, body) = json_of(ok).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let journal = sandbox.journal().await;
    assert_eq!(
        journal[0]["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn audio_files_over_25_mb_answer_413() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(config(vec![channel("c", &sandbox, &["whisper-1"])])).await;
    let big = vec![0u8; 25 * 1024 * 1024 + 1];
    let body = multipart(
        "B",
        &[("model", None, b"whisper-1"), ("file", Some("a.mp3"), &big)],
    );
    let response = http()
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .bearer_auth(USER_KEY)
        .header("content-type", "multipart/form-data; boundary=B")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(response, 413, "request_too_large").await;
    assert_eq!(sandbox.calls().await, 0);
}
