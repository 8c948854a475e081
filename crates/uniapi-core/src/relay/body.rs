//! Reading a client's body once, within the size limit, and taking from it only what routing needs:
//! the model (and whether it streams) from JSON without building a DOM, the fields of a multipart form.
//! The body is forwarded as it came; only the model name is spliced in when a channel maps it.

use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Reads the whole body, answering 413 past `limit` bytes.
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        // read (and drop) a moderately oversized body before answering, so the client, still
        // sending, gets the 413 instead of a reset connection; a huge one is refused at once
        if n <= (limit as u64).saturating_add(DRAIN_MAX) {
            drain(body).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::invalid_request(format!(
            "The request body could not be read: {e}"
        ))),
    }
}

/// Bytes past the limit a refused body is still read for (see [`read_limited`]).
const DRAIN_MAX: u64 = 32 * 1024 * 1024;

/// Reads a refused body to its end (bounded by the declared length the caller checked, and by time).
async fn drain(mut body: Body) {
    let read = async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// JSON routes take `application/json` (or no declared type, as some clients send).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match content_type(headers) {
        None => Ok(()),
        // any `json` in the type, in any case, without a lowered copy of it
        Some(ct)
            if ct
                .as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json")) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::unsupported_media_type("application/json")),
    }
}

/// Multipart routes take `multipart/form-data` with a boundary; returns the boundary.
pub fn require_multipart(headers: &HeaderMap) -> Result<String, ApiError> {
    let ct = content_type(headers)
        .ok_or_else(|| ApiError::unsupported_media_type("multipart/form-data"))?;
    if !ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(ApiError::unsupported_media_type("multipart/form-data"));
    }
    multer::parse_boundary(ct)
        .map_err(|_| ApiError::invalid_request("The multipart Content-Type has no boundary."))
}

/// The few top-level fields routing and validation read; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Sniff<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    voice: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    size: Option<&'a RawValue>,
    #[serde(borrow, default)]
    quality: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A JSON request body, kept as bytes, with where its `model` value sits.
#[derive(Clone, Debug)]
pub struct JsonBody {
    pub bytes: Bytes,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens` or `max_output_tokens`, whichever the client set.
    pub max_output_tokens: Option<u64>,
    /// Completions generated per request (`n`, or `best_of` when larger).
    pub choices: u64,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// The `input` of a speech request, for pricing by characters.
    pub speech_chars: u64,
    /// An image request's `size` and `quality`, when they are strings.
    pub size: Option<String>,
    pub quality: Option<String>,
    has_stream_options: bool,
    /// Byte range of the `model` value (quotes included); `None` when the client left it to the default.
    model_span: Option<Range<usize>>,
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

impl JsonBody {
    /// Parses the body enough to route it: `model` (a string, or `default_model` when absent), `stream`,
    /// and the presence of each of `required`.
    pub fn parse(
        bytes: Bytes,
        required: &[&str],
        default_model: Option<&str>,
    ) -> Result<JsonBody, ApiError> {
        let sniff: Sniff = serde_json::from_slice(&bytes).map_err(ApiError::invalid_json)?;
        for field in required {
            let value = match *field {
                "messages" => sniff.messages,
                "prompt" => sniff.prompt,
                "input" => sniff.input,
                "voice" => sniff.voice,
                _ => None,
            };
            if is_null(value) {
                return Err(ApiError::missing_field(field));
            }
        }
        let (model, model_span) = match sniff.model.filter(|m| m.get() != "null") {
            Some(raw) => {
                let model: String = serde_json::from_str(raw.get()).map_err(|_| {
                    ApiError::invalid_request("`model` must be a string.").with_param("model")
                })?;
                let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
                (model, Some(start..start + raw.get().len()))
            }
            None => match default_model {
                Some(default) => (default.to_string(), None),
                None => return Err(ApiError::missing_field("model")),
            },
        };
        if model.trim().is_empty() {
            return Err(ApiError::invalid_request("`model` must not be empty.").with_param("model"));
        }
        let stream = sniff.stream.unwrap_or(false);
        let include_usage = sniff
            .stream_options
            .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let speech_chars = sniff
            .input
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .map_or(0, |text| text.chars().count() as u64);
        Ok(JsonBody {
            max_output_tokens: sniff
                .max_completion_tokens
                .or(sniff.max_tokens)
                .or(sniff.max_output_tokens),
            choices: sniff.n.unwrap_or(1).max(sniff.best_of.unwrap_or(1)).max(1),
            include_usage,
            speech_chars,
            size: sniff
                .size
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
            quality: sniff
                .quality
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
            has_stream_options: sniff.stream_options.is_some_and(|r| r.get() != "null"),
            bytes,
            model,
            stream,
            model_span,
        })
    }

    /// The same request asking the upstream for a usage chunk at the end of its stream, so that uniapi
    /// bills from the upstream's own count. Only the `stream_options` member changes.
    pub fn with_stream_usage(
        self,
        required: &[&str],
        default_model: Option<&str>,
    ) -> Result<JsonBody, ApiError> {
        if self.include_usage {
            return Ok(self);
        }
        if !self.has_stream_options {
            // the usual case: the member goes in right after the opening brace, before every other
            // member, so nothing else moves but the model's place; no second parse is needed
            const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let open = self.bytes.iter().position(|b| *b == b'{').unwrap_or(0);
            let mut out = BytesMut::with_capacity(self.bytes.len() + MEMBER.len());
            out.extend_from_slice(&self.bytes[..=open]);
            out.extend_from_slice(MEMBER);
            out.extend_from_slice(&self.bytes[open + 1..]);
            return Ok(JsonBody {
                bytes: out.freeze(),
                has_stream_options: true,
                model_span: self
                    .model_span
                    .map(|span| span.start + MEMBER.len()..span.end + MEMBER.len()),
                ..self
            });
        }
        // rare: the client sent stream_options without include_usage; rewrite that member only
        let mut value: serde_json::Value =
            serde_json::from_slice(&self.bytes).map_err(ApiError::invalid_json)?;
        value["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
        let bytes = Bytes::from(serde_json::to_vec(&value).map_err(ApiError::invalid_json)?);
        let mut parsed = JsonBody::parse(bytes, required, default_model)?;
        parsed.include_usage = false;
        Ok(parsed)
    }

    /// The body to send upstream: unchanged when the upstream name is the requested one (and was given),
    /// otherwise with only the model value replaced or inserted.
    pub fn for_upstream(&self, upstream_model: &str) -> Bytes {
        if self.model_span.is_some() && upstream_model == self.model {
            return self.bytes.clone();
        }
        let quoted = serde_json::Value::String(upstream_model.to_string()).to_string();
        match &self.model_span {
            Some(span) => {
                let mut out = BytesMut::with_capacity(self.bytes.len() + quoted.len());
                out.extend_from_slice(&self.bytes[..span.start]);
                out.extend_from_slice(quoted.as_bytes());
                out.extend_from_slice(&self.bytes[span.end..]);
                out.freeze()
            }
            None => {
                // insert `"model": ...` right after the opening brace
                let open = self.bytes.iter().position(|b| *b == b'{').unwrap_or(0);
                let rest = &self.bytes[open + 1..];
                let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
                let mut out = BytesMut::with_capacity(self.bytes.len() + quoted.len() + 12);
                out.extend_from_slice(&self.bytes[..=open]);
                out.extend_from_slice(b"\"model\":");
                out.extend_from_slice(quoted.as_bytes());
                if !empty {
                    out.extend_from_slice(b",");
                }
                out.extend_from_slice(rest);
                out.freeze()
            }
        }
    }
}

/// One field of a multipart form.
#[derive(Clone, Debug)]
pub struct FormPart {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

impl FormPart {
    pub fn text(&self) -> Option<&str> {
        if self.file_name.is_some() {
            None
        } else {
            std::str::from_utf8(&self.data).ok()
        }
    }
}

/// A multipart body kept as sent, with its parsed fields for validation and routing.
#[derive(Clone, Debug)]
pub struct FormBody {
    pub bytes: Bytes,
    pub boundary: String,
    pub parts: Vec<FormPart>,
    pub model: String,
    model_given: bool,
}

impl FormBody {
    pub async fn parse(
        bytes: Bytes,
        boundary: String,
        default_model: Option<&str>,
    ) -> Result<FormBody, ApiError> {
        let stream = futures_util::stream::once({
            let bytes = bytes.clone();
            async move { Ok::<Bytes, std::convert::Infallible>(bytes) }
        });
        let mut multipart = multer::Multipart::new(stream, boundary.clone());
        let mut parts = Vec::new();
        loop {
            let field = multipart.next_field().await.map_err(|e| {
                ApiError::invalid_request(format!("The multipart body is malformed: {e}"))
            })?;
            let Some(field) = field else { break };
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(|m| m.to_string());
            let data = field.bytes().await.map_err(|e| {
                ApiError::invalid_request(format!("The multipart body is malformed: {e}"))
            })?;
            parts.push(FormPart {
                name,
                file_name,
                content_type,
                data,
            });
        }
        let given = parts
            .iter()
            .find(|p| p.name == "model")
            .and_then(|p| p.text())
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let (model, model_given) = match (given, default_model) {
            (Some(m), _) => (m.to_string(), true),
            (None, Some(d)) => (d.to_string(), false),
            (None, None) => return Err(ApiError::missing_field("model")),
        };
        Ok(FormBody {
            bytes,
            boundary,
            parts,
            model,
            model_given,
        })
    }

    pub fn field(&self, name: &str) -> Option<&FormPart> {
        self.parts.iter().find(|p| p.name == name)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(FormPart::text)
    }

    /// The body to send upstream: the original bytes, or the form rebuilt with the upstream model name.
    pub fn for_upstream(&self, upstream_model: &str) -> Bytes {
        if self.model_given && upstream_model == self.model {
            return self.bytes.clone();
        }
        let mut out = BytesMut::with_capacity(self.bytes.len() + 256);
        let mut write_part =
            |name: &str, file_name: Option<&str>, content_type: Option<&str>, data: &[u8]| {
                out.extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
                let mut disposition = format!(
                    "Content-Disposition: form-data; name=\"{}\"",
                    escape_quoted(name)
                );
                if let Some(file) = file_name {
                    disposition.push_str(&format!("; filename=\"{}\"", escape_quoted(file)));
                }
                out.extend_from_slice(disposition.as_bytes());
                out.extend_from_slice(b"\r\n");
                if let Some(ct) = content_type {
                    out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            };
        write_part("model", None, None, upstream_model.as_bytes());
        for part in self.parts.iter().filter(|p| p.name != "model") {
            write_part(
                &part.name,
                part.file_name.as_deref(),
                part.content_type.as_deref(),
                &part.data,
            );
        }
        out.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        out.freeze()
    }
}

fn escape_quoted(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_routes_take_any_json_type_in_any_case() {
        let with = |ct: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(ct) = ct {
                headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            }
            require_json(&headers).map_err(|e| e.status)
        };
        // as some clients send it: no type at all
        assert_eq!(with(None), Ok(()));
        for taken in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+Json",
        ] {
            assert_eq!(with(Some(taken)), Ok(()), "{taken}");
        }
        for refused in ["text/plain", "application/jso", "application/js-on", ""] {
            assert_eq!(
                with(Some(refused)),
                Err(axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{refused}"
            );
        }
    }

    #[test]
    fn model_is_spliced_without_touching_other_bytes() {
        let raw = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model" : "alias","n":2,"x":{"model":"inner"}}"#;
        let body = JsonBody::parse(Bytes::from_static(raw), &["messages"], None).unwrap();
        assert_eq!(body.model, "alias");
        assert_eq!(body.for_upstream("alias"), Bytes::from_static(raw));
        let out = body.for_upstream("gpt-4o-mini");
        let expected = raw.as_slice().to_vec();
        let expected = String::from_utf8(expected)
            .unwrap()
            .replace(r#""alias""#, r#""gpt-4o-mini""#);
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    fn the_usage_option_goes_in_without_a_second_parse() {
        let raw = br#" {"model" : "alias","messages":[{"role":"user","content":"{\"model\":1}"}],"stream":true}"#;
        let body = JsonBody::parse(Bytes::from_static(raw), &["messages"], None).unwrap();
        let with = body.with_stream_usage(&["messages"], None).unwrap();
        // what the client asked is kept; the body now asks for the usage chunk
        assert!(!with.include_usage);
        let v: serde_json::Value = serde_json::from_slice(&with.bytes).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], r#"{"model":1}"#);
        // exactly what parsing the new body finds
        let fresh = JsonBody::parse(with.bytes.clone(), &["messages"], None).unwrap();
        assert_eq!(with.model_span, fresh.model_span);
        assert_eq!(with.has_stream_options, fresh.has_stream_options);
        assert_eq!((&with.model, with.stream), (&fresh.model, fresh.stream));
        // and the model is still spliced in its place
        let out: serde_json::Value =
            serde_json::from_slice(&with.for_upstream("gpt-4o-mini")).unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["messages"], v["messages"]);
        // a body that left the model to the default gets it inserted after the option
        let body = JsonBody::parse(
            Bytes::from_static(br#"{"input":"x","stream":true}"#),
            &["input"],
            Some("omni"),
        )
        .unwrap();
        let with = body.with_stream_usage(&["input"], Some("omni")).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&with.for_upstream("omni")).unwrap();
        assert_eq!(out["model"], "omni");
        assert_eq!(out["stream_options"]["include_usage"], true);
    }

    #[test]
    fn default_model_is_inserted_when_absent() {
        let body = JsonBody::parse(
            Bytes::from_static(br#" {"input":"x"}"#),
            &["input"],
            Some("omni"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body.for_upstream("omni-2")).unwrap();
        assert_eq!(v["model"], "omni-2");
        assert_eq!(v["input"], "x");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let err = JsonBody::parse(Bytes::from_static(br#"{"model":"m"}"#), &["messages"], None)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = JsonBody::parse(
            Bytes::from_static(br#"{"messages":[]}"#),
            &["messages"],
            None,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err = JsonBody::parse(
            Bytes::from_static(br#"{"model":3,"messages":[]}"#),
            &["messages"],
            None,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err = JsonBody::parse(
            Bytes::from_static(br#"{"model":"m","messages":[],"stream":"yes"}"#),
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(JsonBody::parse(Bytes::from_static(b"[1,2]"), &[], None).is_err());
        assert!(JsonBody::parse(Bytes::from_static(b"{\"model\":"), &[], None).is_err());
    }

    #[tokio::test]
    async fn form_is_rebuilt_with_the_upstream_model() {
        let boundary = "XyZ";
        let raw = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFdata\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nalias\r\n--XyZ--\r\n";
        let form = FormBody::parse(Bytes::from(raw), boundary.into(), None)
            .await
            .unwrap();
        assert_eq!(form.model, "alias");
        assert_eq!(form.for_upstream("alias"), Bytes::from(raw));
        let rebuilt = form.for_upstream("whisper-1");
        let again = FormBody::parse(rebuilt, boundary.into(), None)
            .await
            .unwrap();
        assert_eq!(again.model, "whisper-1");
        let file = again.field("file").unwrap();
        assert_eq!(file.file_name.as_deref(), Some("a.wav"));
        assert_eq!(&file.data[..], b"RIFFdata");
    }
}
