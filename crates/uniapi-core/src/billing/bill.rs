//! One request's money, from admission to capture: the estimate that is reserved, the limits it passes,
//! and how its true cost is measured from the answer (reported usage, counted deltas, or request units).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::ledger::{Refusal, Reservation};
use super::limits::{Exceeded, Permit, Remaining};
use super::meter::{Protocol, StreamMeter, Usage, usage_from_json};
use super::tokens::count_tokens;
use super::{Basis, Charge, Units, charge, cost, usd_string};
use crate::catalog::{ApiKey, Price};
use crate::error::ApiError;
use crate::state::AppState;

/// How an endpoint's answer is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Tokens(Protocol),
    /// Embeddings and moderations: input tokens only.
    Input,
    Images,
    Speech,
    Transcription,
}

/// A conservative audio bitrate (32 kbit/s) to estimate a file's duration from its size when the upstream
/// does not report it: compressed speech is rarely smaller, so this rarely undercharges.
const AUDIO_BYTES_PER_SECOND: u64 = 4_000;

pub fn audio_ms_from_bytes(bytes: usize) -> u64 {
    (bytes as u64 * 1000 / AUDIO_BYTES_PER_SECOND).max(1000)
}

/// What a request asks for, before its price is known.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// Input tokens, images, characters, audio: what the request itself says.
    pub units: Units,
    /// Whether the answer is priced by output tokens (then the reservation covers the worst case).
    pub token_output: bool,
    /// The client's own output limit, if any.
    pub max_output_tokens: Option<u64>,
    /// Answers generated per request (`n`).
    pub choices: u64,
    /// Image size and quality, for prices named `model:size[:quality]`.
    pub size: Option<&'static str>,
    pub quality: Option<&'static str>,
    /// The JSON body whose prompt `units.input_tokens` bounds: counted exactly only when the upstream
    /// reports no usage.
    pub prompt: Option<bytes::Bytes>,
}

/// Image sizes and qualities a price name may carry (anything else is priced as the plain model).
const IMAGE_SIZES: &[&str] = &[
    "256x256",
    "512x512",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "1792x1024",
    "1024x1792",
    "auto",
];
const IMAGE_QUALITIES: &[&str] = &["standard", "hd", "low", "medium", "high", "auto"];

/// The canonical spelling of a requested image size and quality, when they are known values.
pub fn image_variant(
    size: Option<&str>,
    quality: Option<&str>,
) -> (Option<&'static str>, Option<&'static str>) {
    let pick = |value: Option<&str>, known: &'static [&'static str]| {
        value.and_then(|v| known.iter().copied().find(|k| *k == v.trim()))
    };
    (pick(size, IMAGE_SIZES), pick(quality, IMAGE_QUALITIES))
}

/// An admitted, funded request.
pub struct Bill {
    pub measure: Measure,
    pub model: String,
    pub price: Price,
    /// What was reserved for (input tokens as an upper bound).
    pub estimate: Units,
    /// The request body, to count its prompt exactly when the upstream reports no usage.
    prompt: Option<bytes::Bytes>,
    reservation: Option<Reservation>,
    permit: Permit,
}

impl Bill {
    /// Checks the key's limits and reserves the worst case of `estimate`, or refuses (429, nothing charged).
    pub fn admit(
        state: &AppState,
        key: &ApiKey,
        request_id: &str,
        model: &str,
        measure: Measure,
        ask: Ask,
    ) -> Result<Bill, ApiError> {
        let catalog = state.catalog.load();
        // the most specific price wins: `model:size:quality`, then `model:size`, then `model`
        let variants = [
            ask.size
                .zip(ask.quality)
                .map(|(size, quality)| format!("{model}:{size}:{quality}")),
            ask.size.map(|size| format!("{model}:{size}")),
        ];
        let specific = variants
            .iter()
            .flatten()
            .find_map(|name| catalog.prices.get(name.as_str()));
        let price = specific.or_else(|| catalog.prices.get(model)).cloned().ok_or_else(|| {
            ApiError::forbidden(
                "model_price_missing",
                format!("The model `{model}` has no price set, so this gateway does not serve it. Ask the operator to set one."),
            )
            .with_param("model")
        })?;
        drop(catalog);
        let mut estimate = ask.units;
        if ask.token_output {
            let per_choice = ask
                .max_output_tokens
                .or(price.max_output_tokens)
                .unwrap_or(state.config.billing.default_max_output_tokens);
            estimate.output_tokens = per_choice.saturating_mul(ask.choices.max(1));
        }
        estimate.calls = 1;
        let tokens = estimate.input_tokens + estimate.output_tokens;
        let permit = state
            .limiter
            .admit(key.id, key.limits, tokens)
            .map_err(|e| rate_limited(e, key))?;
        let (amount, _) = cost(&price, &estimate);
        let reservation = state.ledger.reserve(request_id, key.user_id, key.id, amount).map_err(|refusal| {
            let what = match refusal {
                Refusal::Balance => "your balance",
                Refusal::KeyCap => "this API key's spending cap",
            };
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
                format!("You exceeded your current quota: {what} cannot cover this request (up to ${}).", usd_string(amount)),
            )
        })?;
        Ok(Bill {
            measure,
            model: model.to_string(),
            price,
            estimate,
            prompt: ask.prompt,
            reservation: Some(reservation),
            permit,
        })
    }

    /// Input tokens when the upstream reported none: the prompt counted with the model's tokenizer.
    fn counted_input_tokens(&self) -> u64 {
        match &self.prompt {
            Some(body) => super::tokens::estimate_prompt_tokens(&self.model, body),
            None => self.estimate.input_tokens,
        }
    }

    pub fn remaining(&self) -> Remaining {
        self.permit.remaining
    }

    /// The meter for an event stream of this request, or None when the endpoint is not token-metered.
    pub fn stream_meter(&self, strip_usage: bool) -> Option<StreamMeter> {
        match self.measure {
            Measure::Tokens(protocol) => Some(StreamMeter::new(protocol, &self.model, strip_usage)),
            _ => None,
        }
    }

    /// Captures the cost of `units` and frees the rest of the hold.
    pub fn capture(mut self, units: Units, basis: Basis) -> Charge {
        let mut charged = charge(&self.price, Units { calls: 1, ..units }, basis);
        self.permit
            .settle_tokens(units.input_tokens + units.output_tokens);
        if let Some(reservation) = self.reservation.take() {
            charged.cost_nano = reservation.capture(charged.cost_nano, charged.cache_nano);
            charged.cache_nano = charged.cache_nano.min(charged.cost_nano);
        }
        charged
    }

    /// Nothing billable happened (an upstream refusal, a failure before any byte).
    pub fn release(mut self) {
        self.permit.settle_tokens(0);
        if let Some(reservation) = self.reservation.take() {
            reservation.release();
        }
    }

    /// Measures a complete, non-stream answer.
    pub fn measure_body(&self, body: &[u8]) -> (Units, Basis) {
        match self.measure {
            Measure::Tokens(protocol) => match usage_from_json(body) {
                Some(usage) => (from_usage(usage), Basis::Reported),
                None => {
                    let output = count_tokens(&self.model, &answer_text(protocol, body));
                    (
                        Units {
                            input_tokens: self.counted_input_tokens(),
                            output_tokens: output,
                            ..Default::default()
                        },
                        Basis::Counted,
                    )
                }
            },
            Measure::Input => match usage_from_json(body) {
                Some(usage) => (
                    Units {
                        input_tokens: usage.input_tokens,
                        ..Default::default()
                    },
                    Basis::Reported,
                ),
                None => (
                    Units {
                        input_tokens: self.counted_input_tokens(),
                        ..Default::default()
                    },
                    Basis::Counted,
                ),
            },
            Measure::Images => {
                #[derive(Deserialize)]
                struct Images {
                    #[serde(default)]
                    data: Vec<serde::de::IgnoredAny>,
                }
                match serde_json::from_slice::<Images>(body) {
                    Ok(images) => (
                        Units {
                            images: images.data.len() as u64,
                            ..Default::default()
                        },
                        Basis::Reported,
                    ),
                    Err(_) => (
                        Units {
                            images: self.estimate.images,
                            ..Default::default()
                        },
                        Basis::Request,
                    ),
                }
            }
            Measure::Speech => (
                Units {
                    chars: self.estimate.chars,
                    ..Default::default()
                },
                Basis::Request,
            ),
            Measure::Transcription => match audio_seconds(body) {
                Some(ms) => (
                    Units {
                        audio_ms: ms,
                        ..Default::default()
                    },
                    Basis::Reported,
                ),
                None => (
                    Units {
                        audio_ms: self.estimate.audio_ms,
                        ..Default::default()
                    },
                    Basis::Request,
                ),
            },
        }
    }

    /// Measures a stream from what its meter saw: the upstream's usage, or the deltas delivered.
    pub fn measure_stream(&self, meter: Option<&StreamMeter>) -> (Units, Basis) {
        match meter {
            Some(meter) => match meter.reported() {
                Some(usage) => (from_usage(usage), Basis::Reported),
                None => (
                    Units {
                        input_tokens: self.counted_input_tokens(),
                        output_tokens: meter.delivered_output_tokens(),
                        ..Default::default()
                    },
                    Basis::Counted,
                ),
            },
            // not metered by tokens (or too large to read): the request's own units, as reserved
            None => (
                Units {
                    calls: 0,
                    ..self.estimate
                },
                Basis::Request,
            ),
        }
    }
}

impl Drop for Bill {
    fn drop(&mut self) {
        // a bill dropped unsettled (the client left before anything was delivered) releases its hold
        if let Some(reservation) = self.reservation.take() {
            reservation.release();
        }
    }
}

fn from_usage(u: Usage) -> Units {
    Units {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
        ..Default::default()
    }
}

/// The generated text of a non-stream answer without usage (chat, completions, responses).
fn answer_text(protocol: Protocol, body: &[u8]) -> String {
    #[derive(Deserialize, Default)]
    struct Message {
        #[serde(default)]
        content: Option<String>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        output_text: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return String::new();
    };
    match protocol {
        Protocol::Responses => answer.output_text.unwrap_or_default(),
        _ => answer
            .choices
            .into_iter()
            .map(|c| {
                c.text
                    .or_else(|| c.message.and_then(|m| m.content))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// `usage.seconds` (json) or `duration` (verbose_json) of a transcription, in milliseconds.
fn audio_seconds(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct AudioUsage {
        seconds: Option<f64>,
    }
    #[derive(Deserialize)]
    struct Transcript {
        usage: Option<AudioUsage>,
        duration: Option<f64>,
    }
    let t: Transcript = serde_json::from_slice(body).ok()?;
    let seconds = t.usage.and_then(|u| u.seconds).or(t.duration)?;
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1000.0).ceil() as u64)
}

/// The key's limits for one call priced per call or per image (task submits and the synchronous
/// families): one request against its requests per minute and its concurrency, no tokens. The permit
/// holds the concurrency slot until it is dropped; a refusal is a 429 that says which limit and when to
/// retry.
pub fn admit_call(state: &AppState, key: &ApiKey) -> Result<Permit, ApiError> {
    state
        .limiter
        .admit(key.id, key.limits, 0)
        .map_err(|e| rate_limited(e, key))
}

fn rate_limited(exceeded: Exceeded, key: &ApiKey) -> ApiError {
    match exceeded {
        Exceeded::Requests { retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            Some("rate_limit_exceeded"),
            format!("Rate limit reached for this API key: {} requests per minute. Retry in {retry_after}s.", key.limits.rpm.unwrap_or(0)),
        )
        .with_retry_after(Some(retry_after)),
        Exceeded::Tokens { retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tokens",
            Some("rate_limit_exceeded"),
            format!("Rate limit reached for this API key: {} tokens per minute. Retry in {retry_after}s.", key.limits.tpm.unwrap_or(0)),
        )
        .with_retry_after(Some(retry_after)),
        Exceeded::Concurrency => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            Some("concurrency_limit_exceeded"),
            format!("This API key allows {} concurrent requests.", key.limits.max_concurrency.unwrap_or(0)),
        )
        .with_retry_after(Some(1)),
    }
}

/// Writes OpenAI's rate-limit headers for the limits a key has.
pub fn rate_limit_headers(remaining: Remaining, headers: &mut HeaderMap) {
    let pairs = [
        ("x-ratelimit-limit-requests", remaining.limit_requests),
        (
            "x-ratelimit-remaining-requests",
            remaining.remaining_requests,
        ),
        ("x-ratelimit-limit-tokens", remaining.limit_tokens),
        ("x-ratelimit-remaining-tokens", remaining.remaining_tokens),
    ];
    for (name, value) in pairs {
        if let Some(v) = value {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(v.max(0)));
        }
    }
}
