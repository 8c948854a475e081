//! Embeddings, moderations, images and audio.

use serde_json::{Value, json};

use crate::support::{Sandbox, base64_decode, field, file, json_of};

#[tokio::test]
async fn embeddings_base64_decodes_to_the_float_vector() {
    let sb = Sandbox::start().await;
    let float_body =
        json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"], "dimensions": 12});
    let (status, floats) =
        json_of(sb.post("/v1/embeddings", &float_body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{floats}");
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "text-embedding-3-small");
    let data = floats["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let vector: Vec<f32> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(vector.len(), 12);
    assert!(vector.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // ceil(5 / 4) + ceil(4 / 4) = 3
    assert_eq!(
        floats["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );

    let mut b64_body = float_body.clone();
    b64_body["encoding_format"] = json!("base64");
    let (_, encoded) = json_of(sb.post("/v1/embeddings", &b64_body).send().await.unwrap()).await;
    let bytes = base64_decode(encoded["data"][0]["embedding"].as_str().unwrap());
    assert_eq!(bytes.len(), 12 * 4);
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (a, b) in decoded.iter().zip(&vector) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    let (_, default_dims) = json_of(
        sb.post(
            "/v1/embeddings",
            &json!({"model": "m", "input": [[1, 2, 3]]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        default_dims["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    assert_eq!(default_dims["usage"]["prompt_tokens"], 3);

    let (status, err) = json_of(
        sb.post("/v1/embeddings", &json!({"model": "m"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "input");
}

#[tokio::test]
async fn moderation_flags_only_kill() {
    let sb = Sandbox::start().await;
    let body = json!({"input": ["I will kill it", "a nice day"]});
    let (status, answer) = json_of(sb.post("/v1/moderations", &body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "omni-moderation-latest");
    assert!(answer["id"].as_str().unwrap().starts_with("modr-"));
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["flagged"], true);
    assert_eq!(results[0]["categories"]["violence"], true);
    assert_eq!(results[1]["flagged"], false);
    for key in [
        "categories",
        "category_scores",
        "category_applied_input_types",
    ] {
        assert_eq!(results[1][key].as_object().unwrap().len(), 13, "{key}");
    }
    assert_eq!(
        results[1]["category_applied_input_types"]["hate"],
        json!(["text"])
    );
}

#[tokio::test]
async fn image_generation_returns_urls_or_a_png() {
    let sb = Sandbox::start().await;
    let (status, answer) = json_of(
        sb.post(
            "/v1/images/generations",
            &json!({"prompt": "a cat", "model": "dall-e-3", "n": 2}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let url = data[1]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://sandbox.invalid/images/") && url.ends_with("-1.png"),
        "{url}"
    );
    assert_eq!(data[0]["revised_prompt"], "Sandbox rendering of: a cat");
    assert!(answer["created"].is_u64());

    let (_, answer) = json_of(
        sb.post(
            "/v1/images/generations",
            &json!({"prompt": "a cat", "response_format": "b64_json"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let png = base64_decode(answer["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(answer["data"][0].get("url").is_none());

    let (status, err) = json_of(
        sb.post("/v1/images/generations", &json!({"n": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "prompt");
}

#[tokio::test]
async fn image_edits_and_variations_need_an_image_file() {
    let sb = Sandbox::start().await;
    let png = [0x89, b'P', b'N', b'G'];
    let resp = sb
        .post_form(
            "/v1/images/edits",
            &[
                file("image[]", "a.png", &png),
                file("image[]", "b.png", &png),
                field("prompt", "add a hat"),
                field("n", "3"),
            ],
        )
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        answer["data"][0]["revised_prompt"],
        "Sandbox rendering of: add a hat"
    );

    let resp = sb
        .post_form("/v1/images/edits", &[file("image", "a.png", &png)])
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "prompt");

    let resp = sb
        .post_form("/v1/images/edits", &[field("prompt", "x")])
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "image");

    let resp = sb
        .post_form(
            "/v1/images/variations",
            &[
                file("image", "a.png", &png),
                field("n", "2"),
                field("response_format", "b64_json"),
            ],
        )
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert!(answer["data"][1]["b64_json"].is_string());

    let resp = sb
        .post_form("/v1/images/variations", &[field("n", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn speech_content_type_follows_the_format() {
    let sb = Sandbox::start().await;
    let cases = [
        (None, "audio/mpeg", &b"ID3"[..]),
        (Some("wav"), "audio/wav", &b"RIFF"[..]),
        (Some("opus"), "audio/opus", &b"OggS"[..]),
        (Some("flac"), "audio/flac", &b"fLaC"[..]),
        (Some("aac"), "audio/aac", &[0xFF, 0xF1][..]),
        (Some("pcm"), "audio/pcm", &[][..]),
    ];
    for (format, content_type, magic) in cases {
        let mut body = json!({"model": "tts-1", "input": "Hello world", "voice": "alloy"});
        if let Some(format) = format {
            body["response_format"] = json!(format);
        }
        let resp = sb.post("/v1/audio/speech", &body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], content_type);
        let bytes = resp.bytes().await.unwrap();
        assert!(bytes.starts_with(magic), "{format:?}");
        assert!(bytes.len() >= 11 * 32, "{format:?}: {} bytes", bytes.len());
    }
    let long = sb
        .post("/v1/audio/speech", &json!({"model": "tts-1", "input": "Hello world, and much more text", "voice": "alloy"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(long.len() > 11 * 32 + 10);

    let (status, err) = json_of(
        sb.post("/v1/audio/speech", &json!({"model": "tts-1", "input": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "voice");
}

async fn transcribe(sb: &Sandbox, path: &str, format: Option<&str>) -> reqwest::Response {
    let audio = vec![7u8; 40_000];
    let mut parts = vec![
        file("file", "talk.wav", &audio),
        field("model", "whisper-1"),
    ];
    if let Some(format) = format {
        parts.push(field("response_format", format));
    }
    sb.post_form(path, &parts).send().await.unwrap()
}

#[tokio::test]
async fn transcriptions_answer_every_response_format() {
    let sb = Sandbox::start().await;
    let expected = "Sandbox transcript of talk.wav (40000 bytes)";
    let (status, json_answer) =
        json_of(transcribe(&sb, "/v1/audio/transcriptions", None).await).await;
    assert_eq!(status, 200, "{json_answer}");
    assert_eq!(json_answer["text"], expected);
    assert_eq!(
        json_answer["usage"],
        json!({"type": "duration", "seconds": 2})
    );

    let (_, verbose) =
        json_of(transcribe(&sb, "/v1/audio/transcriptions", Some("verbose_json")).await).await;
    assert_eq!(verbose["text"], expected);
    assert_eq!(verbose["language"], "english");
    assert_eq!(verbose["duration"], 2.0);
    assert_eq!(verbose["segments"][0]["end"], 2.0);

    let resp = transcribe(&sb, "/v1/audio/transcriptions", Some("text")).await;
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap().trim_end(), expected);

    let srt = transcribe(&sb, "/v1/audio/transcriptions", Some("srt"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        srt,
        format!("1\n00:00:00,000 --> 00:00:02,000\n{expected}\n\n")
    );

    let resp = transcribe(&sb, "/v1/audio/translations", Some("vtt")).await;
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let vtt = resp.text().await.unwrap();
    assert!(
        vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n"),
        "{vtt}"
    );
    assert!(vtt.contains(expected));

    let (_, translated) = json_of(transcribe(&sb, "/v1/audio/translations", None).await).await;
    assert_eq!(translated, json!({"text": expected}));

    let resp = sb
        .post_form("/v1/audio/transcriptions", &[field("model", "whisper-1")])
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "file");

    let resp = sb
        .post_form("/v1/audio/transcriptions", &[file("file", "a.mp3", b"abc")])
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "model");

    let resp = sb
        .post("/v1/audio/transcriptions", &Value::Null)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
