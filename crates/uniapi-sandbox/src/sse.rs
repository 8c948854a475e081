//! Server-sent-event bodies: each event is its own body frame (so clients see chunks as they
//! arrive), content events are paced by the chunk delay, and a `cut_after` plan aborts the body
//! mid-way the way a dropped upstream connection would.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::fault::CallPlan;

/// Pause before a cut, long enough for the already-produced frames to reach the socket.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Where an event sits in the stream; a cut happens before content or tail events.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Head,
    Content,
    Tail,
}

pub struct SseEvent {
    pub phase: Phase,
    pub frame: Bytes,
}

impl SseEvent {
    /// A data-only event (`data: <json>`), as chat and completions streams use.
    pub fn data(phase: Phase, payload: &Value) -> Self {
        Self {
            phase,
            frame: Bytes::from(format!("data: {payload}\n\n")),
        }
    }

    /// The literal `data: [DONE]` terminator.
    pub fn done() -> Self {
        Self {
            phase: Phase::Tail,
            frame: Bytes::from_static(b"data: [DONE]\n\n"),
        }
    }

    /// A typed event (`event: <type>` then `data: <json>`), as the Responses API uses.
    pub fn typed(phase: Phase, kind: &str, payload: &Value) -> Self {
        Self {
            phase,
            frame: Bytes::from(format!("event: {kind}\ndata: {payload}\n\n")),
        }
    }
}

struct Pacer {
    events: VecDeque<SseEvent>,
    chunk_delay: Duration,
    cut_after: Option<usize>,
    content_sent: usize,
    finished: bool,
}

/// The `text/event-stream` response for `events`, paced and possibly cut per `plan`.
pub fn sse_response(events: Vec<SseEvent>, plan: &CallPlan) -> Response {
    let pacer = Pacer {
        events: events.into(),
        chunk_delay: plan.chunk_delay,
        cut_after: plan.cut_after,
        content_sent: 0,
        finished: false,
    };
    let stream = futures_util::stream::unfold(pacer, |mut pacer| async move {
        if pacer.finished {
            return None;
        }
        let event = pacer.events.pop_front()?;
        if let Some(limit) = pacer.cut_after {
            let cut = match event.phase {
                Phase::Head => false,
                Phase::Content => pacer.content_sent >= limit,
                Phase::Tail => true,
            };
            if cut {
                pacer.finished = true;
                // Pause first: hyper flushes buffered frames when the body is pending, and an
                // error right away would drop the head and the chunks along with the connection.
                tokio::time::sleep(FLUSH_PAUSE).await;
                let err = std::io::Error::other("sandbox fault: stream cut");
                return Some((Err(err), pacer));
            }
        }
        if event.phase == Phase::Content {
            if !pacer.chunk_delay.is_zero() {
                tokio::time::sleep(pacer.chunk_delay).await;
            }
            pacer.content_sent += 1;
        }
        Some((Ok::<Bytes, std::io::Error>(event.frame), pacer))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
