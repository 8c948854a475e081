//! The request journal: what reached the sandbox under `/v1`, so tests can assert on exactly what
//! the gateway forwarded (headers, rewritten body, multipart fields).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use axum::http::header;
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::body::ParsedBody;

/// Entries kept; older ones are dropped first.
const JOURNAL_CAPACITY: usize = 200;

#[derive(Clone, Serialize)]
pub struct JournalEntry {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// Every request header by lower-case name (families authenticate with their own headers:
    /// `Api-Key`, `mj-api-secret`, ...).
    pub headers: Map<String, Value>,
    pub body_json: Option<Value>,
    pub body_len: usize,
    /// Text fields by value, files as `"<file NAME, N bytes>"`; a name sent several times maps to
    /// an array of those values.
    pub multipart_fields: Option<Map<String, Value>>,
}

impl JournalEntry {
    pub fn new(parts: &Parts, body: &ParsedBody) -> Self {
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let multipart_fields = match &body.form {
            Some(Ok(form)) => {
                let mut fields = Map::new();
                for part in form {
                    let value = match &part.file_name {
                        Some(file) => {
                            Value::String(format!("<file {file}, {} bytes>", part.data.len()))
                        }
                        None => Value::String(part.text()),
                    };
                    match fields.get_mut(&part.name) {
                        None => {
                            fields.insert(part.name.clone(), value);
                        }
                        Some(Value::Array(values)) => values.push(value),
                        Some(existing) => {
                            let first = existing.take();
                            *existing = Value::Array(vec![first, value]);
                        }
                    }
                }
                Some(fields)
            }
            _ => None,
        };
        Self {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            authorization: header_text(header::AUTHORIZATION),
            content_type: header_text(header::CONTENT_TYPE),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), Value::String(value))
                })
                .collect(),
            body_json: body.json.clone(),
            body_len: body.bytes.len(),
            multipart_fields,
        }
    }
}

#[derive(Default)]
pub struct Journal {
    entries: Mutex<VecDeque<JournalEntry>>,
}

impl Journal {
    pub fn record(&self, entry: JournalEntry) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= JOURNAL_CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    pub fn snapshot(&self) -> Vec<JournalEntry> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
