//! Passing an upstream answer to the client chunk by chunk, as it arrives, and learning how it ended:
//! completed, cut by the upstream, or abandoned by the client (the body is dropped unfinished).
//! The request log is written exactly once, when the stream ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::reqlog::LogSink;
use crate::store::logs::RequestLog;

/// How a server-sent-event stream of this route reports an error after it has started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseStyle {
    /// Not an event stream (or nothing to add).
    None,
    /// Chat and completions: `data: {"error":{...}}`.
    DataOnly,
    /// Responses: `event: error` with `{"type":"error","code","message","param"}`.
    Typed,
}

const CUT_MESSAGE: &str = "The upstream provider ended the stream before it was complete.";

fn cut_event(style: SseStyle, at_boundary: bool) -> Option<Bytes> {
    let separator = if at_boundary { "" } else { "\n\n" };
    let event = match style {
        SseStyle::None => return None,
        SseStyle::DataOnly => format!(
            "{separator}data: {}\n\n",
            serde_json::json!({"error": {"message": CUT_MESSAGE, "type": "upstream_error", "param": null, "code": "upstream_stream_cut"}})
        ),
        SseStyle::Typed => format!(
            "{separator}event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "code": "upstream_stream_cut", "message": CUT_MESSAGE, "param": null})
        ),
    };
    Some(Bytes::from(event))
}

/// Records the request log when the response body ends or is dropped.
struct Finish {
    sink: LogSink,
    started: Instant,
    log: Option<RequestLog>,
}

impl Finish {
    fn done(&mut self, outcome: &str, error: Option<String>) {
        if let Some(mut log) = self.log.take() {
            log.outcome = outcome.to_string();
            log.error = error;
            log.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.sink.record(log);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.done(
            "client_gone",
            Some("the client closed the connection before the response ended".into()),
        );
    }
}

struct PassThrough {
    first: Option<Bytes>,
    rest: BoxStream<'static, reqwest::Result<Bytes>>,
    finish: Finish,
    sse: SseStyle,
    /// Whether the bytes sent so far end on an event boundary (a blank line).
    at_boundary: bool,
    /// Bytes still due when the upstream declared a length: hyper stops polling the body once they are
    /// sent, so the end has to be recognised here rather than from the stream's end.
    remaining: Option<u64>,
    ended: bool,
}

impl PassThrough {
    fn note(&mut self, chunk: &Bytes) {
        if !chunk.is_empty() {
            self.at_boundary = chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n");
        }
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.saturating_sub(chunk.len() as u64);
            if *remaining == 0 {
                self.finish.done("complete", None);
            }
        }
    }
}

impl Stream for PassThrough {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            self.note(&first);
            return Poll::Ready(Some(Ok(first)));
        }
        match self.rest.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.note(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                self.finish.done("complete", None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                let reason = if e.is_timeout() {
                    "the upstream went silent mid-stream"
                } else {
                    "the upstream broke the stream"
                };
                self.finish.done("upstream_cut", Some(reason.into()));
                match cut_event(self.sse, self.at_boundary) {
                    // end the event stream cleanly with an error event the client can read
                    Some(event) => Poll::Ready(Some(Ok(event))),
                    // a plain body cannot say so: abort it, so the client sees a truncated transfer
                    None => Poll::Ready(Some(Err(std::io::Error::other(reason)))),
                }
            }
        }
    }
}

pub fn respond(
    sink: LogSink,
    started: Instant,
    log: RequestLog,
    upstream: reqwest::Response,
    first: Option<Bytes>,
    sse: SseStyle,
) -> Response {
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let is_event_stream = upstream
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut headers = axum::http::HeaderMap::new();
    super::copy_headers(upstream.headers(), &mut headers);
    let remaining = upstream.content_length();
    let mut stream = PassThrough {
        first,
        rest: upstream.bytes_stream().boxed(),
        finish: Finish {
            sink,
            started,
            log: Some(log),
        },
        sse: if is_event_stream { sse } else { SseStyle::None },
        at_boundary: true,
        remaining,
        ended: false,
    };
    if stream.remaining == Some(0) {
        stream.finish.done("complete", None);
    }
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
