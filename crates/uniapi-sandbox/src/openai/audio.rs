//! Audio: text-to-speech answers deterministic bytes whose length follows the input; transcription
//! and translation answer a transcript naming the uploaded file, in every `response_format`.

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::fields;
use crate::body::{FormPart, find_part, text_field};
use crate::error::ApiError;
use crate::gate::Call;
use crate::text::{fnv64, mix};

/// Audio bytes generated per input character.
const BYTES_PER_CHAR: usize = 32;
/// Sample rate of the sandbox's WAV output (mono, 16-bit), as the real TTS models use.
const WAV_SAMPLE_RATE: u32 = 24_000;
/// Upload bytes that count as one second of audio.
const BYTES_PER_SECOND: usize = 16_000;

pub async fn speech(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let obj = call.body.json_object()?;
    fields::require_str(obj, "model")?;
    let input = fields::require_str(obj, "input")?;
    fields::require(obj, "voice")?;
    let format = fields::opt_str(obj, "response_format")?.unwrap_or("mp3");
    let content_type = match format {
        "mp3" => "audio/mpeg",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        other => {
            return Err(ApiError::invalid_value(
                "response_format",
                format!(
                    "Invalid value: '{other}'. Supported values are: 'mp3', 'opus', 'aac', \
                     'flac', 'wav' and 'pcm'."
                ),
            ));
        }
    };
    let bytes = audio_bytes(format, input);
    let mut response = bytes.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// A format-appropriate header (so sniffers recognise the type) followed by bytes drawn from
/// the input's hash, `BYTES_PER_CHAR` per input character.
fn audio_bytes(format: &str, input: &str) -> Vec<u8> {
    let len = input.chars().count().max(1) * BYTES_PER_CHAR;
    let seed = fnv64(input.as_bytes());
    let payload: Vec<u8> = (0..len as u64).map(|i| mix(seed ^ i) as u8).collect();
    let mut out = match format {
        "mp3" => b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec(),
        "opus" => b"OggS\x00\x02".to_vec(),
        "aac" => vec![0xFF, 0xF1, 0x50, 0x80],
        "flac" => b"fLaC".to_vec(),
        "wav" => wav_header(payload.len()),
        _ => Vec::new(),
    };
    out.extend_from_slice(&payload);
    out
}

fn wav_header(data_len: usize) -> Vec<u8> {
    let data_len = u32::try_from(data_len).unwrap_or(u32::MAX);
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&WAV_SAMPLE_RATE.to_le_bytes());
    h.extend_from_slice(&(WAV_SAMPLE_RATE * 2).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Transcribe,
    Translate,
}

pub async fn transcribe(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    transcript(&call, Task::Transcribe)
}

pub async fn translate(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    transcript(&call, Task::Translate)
}

fn transcript(call: &Call, task: Task) -> Result<Response, ApiError> {
    let parts = call.body.form()?;
    let file = match find_part(parts, &["file"]) {
        Some(part) if part.is_file() => part,
        Some(_) => {
            return Err(ApiError::invalid_value(
                "file",
                "Invalid 'file': expected a file upload, got a text field.",
            ));
        }
        None => return Err(ApiError::missing("file")),
    };
    text_field(parts, "model").ok_or_else(|| ApiError::missing("model"))?;
    let file_name = file.file_name.as_deref().unwrap_or("file");
    let text = format!(
        "Sandbox transcript of {file_name} ({} bytes)",
        file.data.len()
    );
    let seconds = (file.data.len() / BYTES_PER_SECOND).max(1) as u64;
    let format = text_field(parts, "response_format").unwrap_or_else(|| "json".into());
    let usage = json!({"type": "duration", "seconds": seconds});
    match format.as_str() {
        "json" => {
            let mut body = json!({"text": text});
            if task == Task::Transcribe {
                body["usage"] = usage;
            }
            Ok(Json(body).into_response())
        }
        "verbose_json" => {
            let mut body = verbose(parts, task, &text, seconds);
            if task == Task::Transcribe {
                body["usage"] = usage;
            }
            Ok(Json(body).into_response())
        }
        "text" => Ok(plain(format!("{text}\n"))),
        "srt" => Ok(plain(format!(
            "1\n{} --> {}\n{text}\n\n",
            timestamp(0, ','),
            timestamp(seconds * 1000, ',')
        ))),
        "vtt" => Ok(plain(format!(
            "WEBVTT\n\n{} --> {}\n{text}\n\n",
            timestamp(0, '.'),
            timestamp(seconds * 1000, '.')
        ))),
        other => Err(ApiError::invalid_value(
            "response_format",
            format!(
                "Invalid value: '{other}'. Supported values are: 'json', 'text', 'srt', \
                 'verbose_json' and 'vtt'."
            ),
        )),
    }
}

fn verbose(parts: &[FormPart], task: Task, text: &str, seconds: u64) -> Value {
    let duration = seconds as f64;
    let words: Vec<&str> = text.split_whitespace().collect();
    let tokens: Vec<u64> = (0..words.len() as u64).map(|i| 50_364 + i).collect();
    let language = match task {
        Task::Translate => "english".to_owned(),
        Task::Transcribe => text_field(parts, "language").unwrap_or_else(|| "english".into()),
    };
    let mut body = json!({
        "task": match task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
        "language": language,
        "duration": duration,
        "text": text,
        "segments": [{
            "id": 0, "seek": 0, "start": 0.0, "end": duration, "text": format!(" {text}"),
            "tokens": tokens, "temperature": 0.0, "avg_logprob": -0.2,
            "compression_ratio": 1.0, "no_speech_prob": 0.01
        }],
    });
    let wants_words = parts.iter().any(|p| {
        p.name.starts_with("timestamp_granularities") && !p.is_file() && p.text() == "word"
    });
    if wants_words {
        let step = duration / words.len().max(1) as f64;
        body["words"] = words
            .iter()
            .enumerate()
            .map(
                |(i, w)| json!({"word": w, "start": i as f64 * step, "end": (i + 1) as f64 * step}),
            )
            .collect();
    }
    body
}

fn plain(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `HH:MM:SS<sep>mmm`; SRT separates milliseconds with a comma, WebVTT with a dot.
fn timestamp(millis: u64, sep: char) -> String {
    let (h, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_timestamps_use_the_format_separator() {
        assert_eq!(timestamp(3_723_004, ','), "01:02:03,004");
        assert_eq!(timestamp(5_000, '.'), "00:00:05.000");
    }

    #[test]
    fn speech_length_follows_input_length() {
        let short = audio_bytes("mp3", "hi");
        let long = audio_bytes("mp3", "hello there, general kenobi");
        assert!(short.starts_with(b"ID3"));
        assert!(long.len() > short.len());
        assert_eq!(audio_bytes("pcm", "abc").len(), 3 * BYTES_PER_CHAR);
        let wav = audio_bytes("wav", "abc");
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 3 * BYTES_PER_CHAR);
    }
}
