//! The `/__sandbox` control endpoint (no auth): queue faults, read or clear the request journal,
//! change latency, stream shape and Suno task duration while running, health check.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::fault::FaultRule;
use crate::state::SandboxState;

type Shared = Arc<SandboxState>;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/__sandbox/health", get(health))
        .route(
            "/__sandbox/faults",
            get(list_faults).post(push_fault).delete(clear_faults),
        )
        .route(
            "/__sandbox/requests",
            get(list_requests).delete(clear_requests),
        )
        .route("/__sandbox/config", get(show_config).put(update_config))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"ok": true}))
}

async fn list_faults(State(state): State<Shared>) -> Response {
    Json(state.faults.pending()).into_response()
}

async fn push_fault(State(state): State<Shared>, body: Bytes) -> Response {
    let rule: FaultRule = match parse(&body) {
        Ok(rule) => rule,
        Err(reason) => return bad_request(&reason),
    };
    if let Err(reason) = rule.validate() {
        return bad_request(&reason);
    }
    state.faults.push(rule);
    Json(json!({"ok": true})).into_response()
}

async fn clear_faults(State(state): State<Shared>) -> Response {
    state.faults.clear();
    Json(json!({"ok": true})).into_response()
}

async fn list_requests(State(state): State<Shared>) -> Response {
    Json(state.journal.snapshot()).into_response()
}

async fn clear_requests(State(state): State<Shared>) -> Response {
    state.journal.clear();
    Json(json!({"ok": true})).into_response()
}

async fn show_config(State(state): State<Shared>) -> Response {
    Json(state.live.view()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigPatch {
    latency_ms: Option<u64>,
    stream_chunks: Option<usize>,
    chunk_delay_ms: Option<u64>,
    task_ms: Option<u64>,
}

async fn update_config(State(state): State<Shared>, body: Bytes) -> Response {
    let patch: ConfigPatch = match parse(&body) {
        Ok(patch) => patch,
        Err(reason) => return bad_request(&reason),
    };
    if let Some(v) = patch.latency_ms {
        state.live.latency_ms.store(v, Ordering::Relaxed);
    }
    if let Some(v) = patch.stream_chunks {
        state.live.stream_chunks.store(v, Ordering::Relaxed);
    }
    if let Some(v) = patch.chunk_delay_ms {
        state.live.chunk_delay_ms.store(v, Ordering::Relaxed);
    }
    if let Some(v) = patch.task_ms {
        state.live.task_ms.store(v, Ordering::Relaxed);
    }
    Json(json!({"ok": true, "config": state.live.view()})).into_response()
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"ok": false, "error": reason})),
    )
        .into_response()
}
