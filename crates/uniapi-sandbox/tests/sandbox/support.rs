//! Test harness: a sandbox on a random port, a client that knows its key, and small parsers for
//! SSE, base64 and multipart bodies.

use serde_json::Value;
use uniapi_sandbox::{SandboxConfig, spawn};

pub const KEY: &str = "sk-sandbox";

pub struct Sandbox {
    pub base: String,
    pub client: reqwest::Client,
}

impl Sandbox {
    pub async fn start() -> Self {
        Self::start_with(SandboxConfig::default()).await
    }

    pub async fn start_with(config: SandboxConfig) -> Self {
        let addr = spawn(config).await.expect("sandbox binds");
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An authenticated POST with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// An authenticated multipart POST.
    pub fn post_form(&self, path: &str, parts: &[Part<'_>]) -> reqwest::RequestBuilder {
        let (content_type, body) = multipart(parts);
        self.client
            .post(self.url(path))
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body)
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("request");
        parse_json(resp).await
    }

    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("control request");
        assert!(
            resp.status().is_success(),
            "control call failed: {}",
            resp.status()
        );
        parse_json(resp).await
    }

    pub async fn push_fault(&self, rule: Value) {
        let answer = self
            .control(reqwest::Method::POST, "/__sandbox/faults", Some(rule))
            .await;
        assert_eq!(answer, serde_json::json!({"ok": true}));
    }

    pub async fn journal(&self) -> Vec<Value> {
        let answer = self
            .control(reqwest::Method::GET, "/__sandbox/requests", None)
            .await;
        answer.as_array().expect("journal is an array").clone()
    }
}

/// reqwest is built without its `json` feature here, so parse the text.
pub async fn parse_json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not json ({e}): {text}"))
}

pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = parse_json(resp).await;
    (status, body)
}

/// One SSE event: the optional `event:` name and the `data:` payload.
#[derive(Debug)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is json")
    }
}

/// Splits an SSE body into events, checking each is `[event: x\n]data: y\n\n`.
pub fn parse_sse(body: &str) -> Vec<Event> {
    assert!(
        body.ends_with("\n\n"),
        "stream must end on an event boundary: {body:?}"
    );
    body.trim_end_matches('\n')
        .split("\n\n")
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event: {block:?}");
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Event {
                name,
                data: data.expect("event has data"),
            }
        })
        .collect()
}

/// Reads a body until it ends or fails; returns what arrived and whether it failed.
pub async fn read_until_error(mut resp: reqwest::Response) -> (String, bool) {
    let mut received = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => return (String::from_utf8(received).expect("utf-8"), false),
            Err(_) => return (String::from_utf8(received).expect("utf-8"), true),
        }
    }
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not standard base64: {c}"),
        }
    };
    let bytes = text.as_bytes();
    assert_eq!(bytes.len() % 4, 0, "padded base64");
    let mut out = Vec::new();
    for quad in bytes.chunks(4) {
        let pad = quad.iter().filter(|&&c| c == b'=').count();
        let n = quad
            .iter()
            .map(|&c| if c == b'=' { 0 } else { value(c) })
            .fold(0u32, |acc, v| (acc << 6) | v);
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    out
}

/// A multipart part: name, optional file name, content.
pub struct Part<'a> {
    pub name: &'a str,
    pub file: Option<&'a str>,
    pub data: &'a [u8],
}

pub fn field<'a>(name: &'a str, value: &'a str) -> Part<'a> {
    Part {
        name,
        file: None,
        data: value.as_bytes(),
    }
}

pub fn file<'a>(name: &'a str, file_name: &'a str, data: &'a [u8]) -> Part<'a> {
    Part {
        name,
        file: Some(file_name),
        data,
    }
}

pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "sandbox-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part.file {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{file}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n",
                    part.name
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                    part.name
                )
                .as_bytes(),
            ),
        }
        body.extend_from_slice(part.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
