//! The Ideogram family: `Api-Key` auth, generate / remix / upscale / describe shapes, the safety
//! refusal, multipart checks.

use serde_json::{Value, json};

use crate::support::{KEY, Sandbox, field, file, json_of, multipart};

async fn post_json(sb: &Sandbox, key: Option<&str>, op: &str, body: Value) -> (u16, Value) {
    let mut request = sb
        .client
        .post(sb.url(&format!("/ideogram/{op}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("Api-Key", key);
    }
    json_of(request.send().await.unwrap()).await
}

async fn post_form(sb: &Sandbox, op: &str, parts: &[crate::support::Part<'_>]) -> (u16, Value) {
    let (content_type, body) = multipart(parts);
    json_of(
        sb.client
            .post(sb.url(&format!("/ideogram/{op}")))
            .header("Api-Key", KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn generate_answers_num_images_and_checks_the_key() {
    let sb = Sandbox::start().await;
    let body = json!({"image_request": {"prompt": "a boat", "num_images": 2, "resolution": "RESOLUTION_1280_720", "seed": 7}});
    for key in [None, Some("wrong")] {
        let (status, answer) = post_json(&sb, key, "generate", body.clone()).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer["error"].is_string());
    }
    // a Bearer key is not Ideogram's header
    let (status, _) = json_of(
        sb.client
            .post(sb.url("/ideogram/generate"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = post_json(&sb, Some(KEY), "generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["resolution"], "1280x720");
    assert_eq!(data[0]["seed"], 7);
    assert_eq!(data[0]["is_image_safe"], true);
    assert_eq!(data[0]["prompt"], "a boat");
    assert!(answer["created"].as_str().unwrap().ends_with('Z'));
    let (status, answer) = post_json(
        &sb,
        Some(KEY),
        "generate",
        json!({"image_request": {"prompt": "reject"}}),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (422, Some("Prompt failed safety check"))
    );
    let (status, _) = post_json(&sb, Some(KEY), "generate", json!({"prompt": "x"})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn multipart_operations_need_their_parts() {
    let sb = Sandbox::start().await;
    let image: &[u8] = b"\x89PNG\r\n\x1a\nrest";
    let (status, answer) = post_form(
        &sb,
        "remix",
        &[
            field("image_request", r#"{"prompt":"blue","num_images":3}"#),
            file("image_file", "a.png", image),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(3));
    let (status, answer) = post_form(
        &sb,
        "upscale",
        &[
            field("image_request", "{}"),
            file("image_file", "a.png", image),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"][0]["upscaled_resolution"], "2048x2048");
    let (status, answer) = post_form(&sb, "describe", &[file("image_file", "a.png", image)]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["descriptions"][0]["text"].is_string());
    for (op, parts) in [
        ("remix", vec![file("image_file", "a.png", image)]),
        ("upscale", vec![field("image_request", "{}")]),
        ("describe", vec![field("describe_model_version", "V_3")]),
    ] {
        let (status, answer) = post_form(&sb, op, &parts).await;
        assert_eq!(status, 400, "{op}: {answer}");
    }
    let journal = crate::support::Sandbox::journal(&sb).await;
    assert_eq!(journal[0]["headers"]["api-key"], KEY);
}
