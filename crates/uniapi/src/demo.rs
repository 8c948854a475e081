//! `uniapi serve --demo`: an in-process sandbox upstream registered as a channel, prices for its models,
//! and a demo user with a fixed, documented key, so the README's examples work offline as written.

use std::net::SocketAddr;

use uniapi_core::config::{ChannelConfig, Config, PriceConfig, UserConfig, UserKeyConfig};

/// The demo key is public on purpose: the demo serves only the local sandbox.
pub const DEMO_KEY: &str = "sk-uniapi-demo-0000000000000000000000000000000000000000";
const SANDBOX_KEY: &str = "sk-sandbox-demo-upstream";
const DEMO_DATABASE: &str = "sqlite://uniapi-data/demo.db";

/// (model, input USD per Mtok, output USD per Mtok) for token-priced sandbox models.
const TOKEN_MODELS: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-3.5-turbo-instruct", 1.50, 2.00),
    ("text-embedding-3-small", 0.02, 0.0),
    ("omni-moderation-latest", 0.0, 0.0),
];

/// (kind, channel name) of the task families the demo serves from the sandbox.
const TASK_CHANNELS: &[(&str, &str)] = &[
    ("suno", "sandbox-suno"),
    ("midjourney", "sandbox-midjourney"),
    ("fal", "sandbox-fal"),
    ("jimeng", "sandbox-jimeng"),
    ("udio", "sandbox-udio"),
    ("luma", "sandbox-luma"),
    ("kling", "sandbox-kling"),
    ("ideogram", "sandbox-ideogram"),
];

/// Per-call prices (USD) of the demo's task actions.
const TASK_PRICES: &[(&str, f64)] = &[
    ("suno_music", 0.10),
    ("suno_lyrics", 0.02),
    // Midjourney: fast (default), relax and turbo priced on their own; the button that opens a
    // modal (inpaint, custom zoom) is free, its modal confirmation is charged
    ("mj_imagine", 0.05),
    ("mj_blend", 0.05),
    ("mj_describe", 0.02),
    ("mj_shorten", 0.02),
    ("mj_upscale", 0.02),
    ("mj_variation", 0.05),
    ("mj_reroll", 0.05),
    ("mj_zoom", 0.05),
    ("mj_pan", 0.05),
    ("mj_modal", 0.05),
    ("mj_inpaint", 0.0),
    ("mj_custom_zoom", 0.0),
    ("mj_upload", 0.01),
    ("swap_face", 0.03),
    ("mj_relax_imagine", 0.02),
    ("mj_relax_blend", 0.02),
    ("mj_relax_describe", 0.01),
    ("mj_relax_shorten", 0.01),
    ("mj_relax_upscale", 0.01),
    ("mj_relax_variation", 0.02),
    ("mj_relax_reroll", 0.02),
    ("mj_relax_zoom", 0.02),
    ("mj_relax_pan", 0.02),
    ("mj_relax_modal", 0.02),
    ("mj_relax_inpaint", 0.0),
    ("mj_relax_custom_zoom", 0.0),
    ("mj_relax_upload", 0.01),
    ("swap_face_relax", 0.02),
    ("mj_turbo_imagine", 0.10),
    ("mj_turbo_blend", 0.10),
    ("mj_turbo_describe", 0.04),
    ("mj_turbo_shorten", 0.04),
    ("mj_turbo_upscale", 0.04),
    ("mj_turbo_variation", 0.10),
    ("mj_turbo_reroll", 0.10),
    ("mj_turbo_zoom", 0.10),
    ("mj_turbo_pan", 0.10),
    ("mj_turbo_modal", 0.10),
    ("mj_turbo_inpaint", 0.0),
    ("mj_turbo_custom_zoom", 0.0),
    ("mj_turbo_upload", 0.01),
    ("swap_face_turbo", 0.06),
    ("fal-ai/flux-1/dev", 0.025),
    ("fal-ai/kling-video/v1/standard/text-to-video", 0.25),
    ("udio_music", 0.05),
    ("luma_generate", 0.40),
    ("luma_extend", 0.30),
    ("kling_image", 0.02),
    ("kling_virtual_try_on", 0.05),
    ("kling_text2video", 0.20),
    ("kling_text2video:kling-v2-master", 0.50),
    ("kling_image2video", 0.25),
    ("ideogram_describe", 0.01),
];

/// The fal model paths the demo's fal channel serves (priced in TASK_PRICES).
const FAL_MODELS: &[&str] = &[
    "fal-ai/flux-1/dev",
    "fal-ai/kling-video/v1/standard/text-to-video",
];

/// Jimeng model names, the Volcengine `req_key` each maps to, and the USD price per image.
const JIMENG_MODELS: &[(&str, &str, f64)] = &[
    ("jimeng-4.0", "jimeng_t2i_v40", 0.03),
    ("jimeng-3.0", "jimeng_t2i_v30", 0.02),
];

/// Per-image prices (USD) of the demo's synchronous image families.
const IMAGE_PRICES: &[(&str, f64)] = &[
    ("ideogram_generate", 0.04),
    ("ideogram_generate:V_2_TURBO", 0.025),
    ("ideogram_remix", 0.04),
    ("ideogram_upscale", 0.05),
];

pub struct DemoSetup {
    pub sandbox: SocketAddr,
}

pub async fn prepare(config: &mut Config) -> anyhow::Result<DemoSetup> {
    let sandbox = uniapi_sandbox::spawn(uniapi_sandbox::SandboxConfig {
        keys: vec![SANDBOX_KEY.into()],
        ..Default::default()
    })
    .await?;
    if config.database.url == uniapi_core::config::DatabaseConfig::default().url {
        // keep the demo's channel and user out of the operator's own database
        config.database.url = DEMO_DATABASE.into();
    }
    let mut models: Vec<String> = TOKEN_MODELS.iter().map(|(m, _, _)| m.to_string()).collect();
    models.extend(["dall-e-2", "dall-e-3", "whisper-1", "tts-1"].map(String::from));
    config.channels.retain(|c| c.name != "sandbox-openai");
    config.channels.push(ChannelConfig {
        name: "sandbox-openai".into(),
        kind: "openai".into(),
        base_url: format!("http://{sandbox}"),
        keys: vec![SANDBOX_KEY.into()],
        models,
        model_map: [("gpt-4o-mini-latest".to_string(), "gpt-4o-mini".to_string())]
            .into_iter()
            .collect(),
        priority: 0,
        weight: 1,
        modes: None,
        enabled: true,
    });
    // every task family of the sandbox, as a channel of its kind
    for (kind, name) in TASK_CHANNELS {
        // Kling's official API sits under `/klingai` (signed with the sandbox's key pair), Ideogram's
        // under `/ideogram`
        let (base_url, key) = match *kind {
            "kling" => (
                format!("http://{sandbox}/klingai"),
                format!(
                    "{}|{}",
                    uniapi_sandbox::KLING_ACCESS_KEY,
                    uniapi_sandbox::KLING_SECRET_KEY
                ),
            ),
            "ideogram" => (format!("http://{sandbox}/ideogram"), SANDBOX_KEY.into()),
            _ => (format!("http://{sandbox}"), SANDBOX_KEY.into()),
        };
        config.channels.retain(|c| c.name != *name);
        config.channels.push(ChannelConfig {
            name: (*name).into(),
            kind: (*kind).into(),
            base_url,
            keys: vec![key],
            models: Vec::new(),
            model_map: Default::default(),
            priority: 0,
            weight: 1,
            modes: None,
            enabled: true,
        });
    }
    media_channels(config);
    for (name, usd) in TASK_PRICES {
        config
            .prices
            .entry((*name).to_string())
            .or_insert(PriceConfig {
                per_call: Some(*usd),
                ..Default::default()
            });
    }
    for (name, usd) in IMAGE_PRICES {
        config
            .prices
            .entry((*name).to_string())
            .or_insert(PriceConfig {
                per_image: Some(*usd),
                ..Default::default()
            });
    }
    for (model, input, output) in TOKEN_MODELS {
        let price = if *input == 0.0 && *output == 0.0 {
            PriceConfig {
                free: true,
                ..Default::default()
            }
        } else {
            PriceConfig {
                input_per_mtok: Some(*input),
                output_per_mtok: Some(*output),
                ..Default::default()
            }
        };
        config.prices.entry(model.to_string()).or_insert(price);
    }
    for (model, price) in [
        (
            "gpt-4o-mini-latest",
            PriceConfig {
                input_per_mtok: Some(0.15),
                output_per_mtok: Some(0.60),
                ..Default::default()
            },
        ),
        (
            "dall-e-2",
            PriceConfig {
                per_image: Some(0.02),
                ..Default::default()
            },
        ),
        (
            "dall-e-3",
            PriceConfig {
                per_image: Some(0.04),
                ..Default::default()
            },
        ),
        (
            "whisper-1",
            PriceConfig {
                per_audio_minute: Some(0.006),
                ..Default::default()
            },
        ),
        (
            "tts-1",
            PriceConfig {
                per_mchar: Some(15.0),
                ..Default::default()
            },
        ),
    ] {
        config.prices.entry(model.to_string()).or_insert(price);
    }
    if !config.users.iter().any(|u| u.name == "demo") {
        config.users.push(UserConfig {
            name: "demo".into(),
            balance_usd: 100.0,
            keys: vec![UserKeyConfig {
                name: "demo".into(),
                key: Some(DEMO_KEY.into()),
                models: None,
            }],
        });
    }
    Ok(DemoSetup { sandbox })
}

/// The fal channel serves a few model paths; the jimeng channel maps model names to `req_key`s and
/// signs with the sandbox's access/secret pair.
fn media_channels(config: &mut Config) {
    for channel in &mut config.channels {
        match channel.name.as_str() {
            "sandbox-fal" => channel.models = FAL_MODELS.iter().map(|m| m.to_string()).collect(),
            "sandbox-jimeng" => {
                channel.keys = vec![format!(
                    "{SANDBOX_KEY}|{}",
                    uniapi_sandbox::JIMENG_SECRET_KEY
                )];
                channel.model_map = JIMENG_MODELS
                    .iter()
                    .map(|(name, req_key, _)| (name.to_string(), req_key.to_string()))
                    .collect();
            }
            _ => {}
        }
    }
    for (name, _, usd) in JIMENG_MODELS {
        config
            .prices
            .entry((*name).to_string())
            .or_insert(PriceConfig {
                per_image: Some(*usd),
                ..Default::default()
            });
    }
}

pub fn announce(setup: &DemoSetup, gateway: SocketAddr) {
    let base = format!("http://{gateway}");
    println!(
        "\nDemo mode: sandbox upstream at http://{sandbox}, registered as channel `sandbox-openai`.\n\
         Demo user `demo`, API key: {DEMO_KEY}\n\n\
         Try it:\n\
         curl {base}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\\n  \
         -H 'Content-Type: application/json' \\\n  \
         -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n\n\
         python3 -c \"from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{DEMO_KEY}'); \
         print(c.chat.completions.create(model='gpt-4o-mini', messages=[{{'role':'user','content':'Hello!'}}]).choices[0].message.content)\"\n",
        sandbox = setup.sandbox,
    );
}
