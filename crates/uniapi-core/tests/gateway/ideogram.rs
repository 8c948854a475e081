//! Ideogram (synchronous): charged exactly per image asked for, upstream refusals uncharged with the
//! upstream's message, bad input never sent, both client auth headers, `Api-Key` upstream, multipart
//! forwarded as sent.

use serde_json::{Value, json};
use uniapi_core::config::{Config, PriceConfig};

use crate::support::*;

const PNG_1X1: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0,
    1, 0, 0, 0, 1, 8, 6, 0, 0, 0,
];

fn ideogram_config(sandbox: &Sandbox) -> Config {
    let mut ideogram = channel("ideogram", sandbox, &[]);
    ideogram.kind = "ideogram".into();
    ideogram.base_url = format!("{}/ideogram", sandbox.url);
    let mut cfg = config(vec![ideogram]);
    let prices = [
        ("ideogram_generate", Some(0.04), None),
        ("ideogram_generate:V_2_TURBO", Some(0.02), Some(0.01)),
        ("ideogram_remix", Some(0.05), None),
        ("ideogram_upscale", Some(0.06), None),
        ("ideogram_describe", None, Some(0.01)),
    ];
    for (name, per_image, per_call) in prices {
        cfg.prices.insert(
            name.into(),
            PriceConfig {
                per_image,
                per_call,
                ..Default::default()
            },
        );
    }
    cfg
}

async fn generate(gw: &TestGateway, request: Value) -> (u16, Value) {
    json_of(
        http()
            .post(format!("{}/ideogram/generate", gw.url))
            .header("Api-Key", USER_KEY)
            .json_body(&json!({"image_request": request}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A multipart body with the given parts: (name, file name, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "uniapi-test-boundary";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn send_form(
    gw: &TestGateway,
    op: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> (u16, Value) {
    let (content_type, body) = multipart(parts);
    json_of(
        http()
            .post(format!("{}/ideogram/{op}", gw.url))
            .bearer_auth(USER_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn generate_is_charged_per_image_and_sends_api_key_upstream() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    let (status, answer) = generate(
        &gw,
        json!({"prompt": "a lighthouse", "num_images": 3, "aspect_ratio": "ASPECT_16_9"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(answer["data"][0]["resolution"], "1312x736");
    assert_eq!(answer["data"][0]["is_image_safe"], true);
    assert!(answer["created"].is_string());
    assert_eq!(before - balance(&gw).await, 3 * 40_000_000);
    // a model variant's price wins: 2 images × $0.02 + $0.01 per call
    let (status, _) = generate(
        &gw,
        json!({"prompt": "a lighthouse", "num_images": 2, "model": "V_2_TURBO"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(before - balance(&gw).await, 120_000_000 + 50_000_000);
    let journal = sandbox.journal().await;
    let sent = &journal[0];
    assert_eq!(sent["path"], "/ideogram/generate");
    assert_eq!(sent["headers"]["api-key"], UPSTREAM_KEY);
    assert!(sent["authorization"].is_null(), "{sent}");
    assert_eq!(sent["body_json"]["image_request"]["num_images"], 3);
    reconciled(&gw).await;
}

#[tokio::test]
async fn a_safety_refusal_passes_its_message_through_uncharged() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    let (status, answer) = generate(&gw, json!({"prompt": "please reject this"})).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["message"], "Prompt failed safety check");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert_eq!(balance(&gw).await, before);
    assert_eq!(sandbox.calls().await, 1);
    reconciled(&gw).await;
}

#[tokio::test]
async fn bad_input_is_refused_without_a_charge_or_an_upstream_call() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    for request in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": "x", "num_images": 9}),
    ] {
        let (status, answer) = generate(&gw, request).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"]["message"].is_string());
    }
    let (status, _) = json_of(
        http()
            .post(format!("{}/ideogram/generate", gw.url))
            .bearer_auth(USER_KEY)
            .json_body(&json!({"prompt": "no image_request"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let text: &[u8] = b"definitely not an image";
    let request: &[u8] = br#"{"prompt":"remix it"}"#;
    for (op, parts) in [
        (
            "remix",
            vec![
                ("image_request", None, request),
                ("image_file", Some("a.png"), text),
            ],
        ),
        ("remix", vec![("image_file", Some("a.png"), PNG_1X1)]),
        ("upscale", vec![("image_request", None, &b"{}"[..])]),
        ("describe", vec![("image_file", Some("a.txt"), text)]),
    ] {
        let (status, answer) = send_form(&gw, op, &parts).await;
        assert_eq!(status, 400, "{op}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    // JSON where multipart is expected
    let (status, _) = json_of(gw.post("/ideogram/describe", USER_KEY, json!({})).await).await;
    assert_eq!(status, 415);
    assert_eq!(sandbox.calls().await, 0);
    assert_eq!(balance(&gw).await, before);
}

#[tokio::test]
async fn multipart_operations_forward_the_parts_as_sent() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    let request: &[u8] = br#"{"prompt":"make it blue","num_images":2,"image_weight":40}"#;
    let (status, answer) = send_form(
        &gw,
        "remix",
        &[
            ("image_request", None, request),
            ("image_file", Some("in.png"), PNG_1X1),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(before - balance(&gw).await, 100_000_000);
    let (status, answer) = send_form(
        &gw,
        "upscale",
        &[
            ("image_request", None, b"{}"),
            ("image_file", Some("in.png"), PNG_1X1),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"][0]["upscaled_resolution"], "2048x2048");
    let (status, answer) =
        send_form(&gw, "describe", &[("image_file", Some("in.png"), PNG_1X1)]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["descriptions"][0]["text"].is_string());
    assert_eq!(
        before - balance(&gw).await,
        100_000_000 + 60_000_000 + 10_000_000
    );
    let journal = sandbox.journal().await;
    let remix = &journal[0];
    assert_eq!(remix["path"], "/ideogram/remix");
    assert_eq!(
        remix["multipart_fields"]["image_request"],
        String::from_utf8_lossy(request).as_ref()
    );
    assert_eq!(
        remix["multipart_fields"]["image_file"],
        format!("<file in.png, {} bytes>", PNG_1X1.len())
    );
    assert_eq!(remix["headers"]["api-key"], UPSTREAM_KEY);
    reconciled(&gw).await;
}

#[tokio::test]
async fn clients_authenticate_with_api_key_or_bearer() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let body = json!({"image_request": {"prompt": "x"}});
    let bearer = http()
        .post(format!("{}/ideogram/generate", gw.url))
        .bearer_auth(USER_KEY)
        .json_body(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    for request in [
        http().post(format!("{}/ideogram/generate", gw.url)),
        http().post(format!("{}/ideogram/generate", gw.url)).header(
            "Api-Key",
            "sk-wrong-key-000000000000000000000000000000000000",
        ),
    ] {
        let (status, answer) = json_of(request.json_body(&body).send().await.unwrap()).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer["error"]["message"].is_string());
    }
    assert_eq!(sandbox.calls().await, 1);
}

#[tokio::test]
async fn a_refused_upstream_key_fails_over_and_costs_nothing() {
    let sandbox = Sandbox::with_keys(&["sk-some-other-key"]).await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    let (status, answer) = generate(&gw, json!({"prompt": "x"})).await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer["error"]["message"].is_string());
    assert_eq!(balance(&gw).await, before);
}

#[tokio::test]
async fn a_keys_requests_per_minute_bind_synchronous_calls() {
    let sandbox = Sandbox::start().await;
    let gw = TestGateway::start(ideogram_config(&sandbox)).await;
    let before = balance(&gw).await;
    let key = limited_key(&gw, json!({"rpm": 1})).await;
    let call = || {
        http()
            .post(format!("{}/ideogram/generate", gw.url))
            .header("Api-Key", &key)
            .json_body(&json!({"image_request": {"prompt": "a lighthouse"}}))
            .send()
    };
    let (status, first) = json_of(call().await.unwrap()).await;
    assert_eq!(status, 200, "{first}");
    let calls = sandbox.calls().await;
    let response = call().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "60");
    let (status, refused) = json_of(response).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded", "{refused}");
    assert_eq!(refused["error"]["type"], "rate_limit_error", "{refused}");
    assert_eq!(
        sandbox.calls().await,
        calls,
        "a refused call reached the upstream"
    );
    assert_eq!(before - balance(&gw).await, 40_000_000);
    reconciled(&gw).await;
}
