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

use crate::billing::bill::Bill;
use crate::billing::meter::StreamMeter;
use crate::billing::{Charge, USD_MAX, usd_digits};
use crate::reqlog::LogSink;
use crate::store::logs::{JsonText, RequestLog};
use crate::upstream::{BodyError, UpstreamBody};

use super::{Answer, Outbound};

/// Non-stream answers are read whole to price them before the head is sent (the cost goes in a header);
/// past this size the rest is streamed and the reserved estimate is captured instead.
const MAX_BUFFERED: usize = 64 * 1024 * 1024;

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

/// Moves a capture into the request log (its detail is serialized when the log is written).
pub fn log_charge(log: &mut RequestLog, charge: Charge) {
    log.input_tokens = charge.units.input_tokens;
    log.cached_tokens = charge.units.cached_input_tokens;
    log.output_tokens = charge.units.output_tokens;
    log.reasoning_tokens = charge.units.reasoning_tokens;
    log.cost_nano = charge.cost_nano;
    log.cost_detail = Some(JsonText::charge(charge));
}

/// Captures the bill and records the request log once, when the response body ends or is dropped.
struct Finish {
    sink: LogSink,
    started: Instant,
    log: Option<RequestLog>,
    bill: Option<Bill>,
    meter: Option<StreamMeter>,
}

impl Finish {
    fn done(&mut self, outcome: &str, error: Option<String>) {
        if let Some(mut log) = self.log.take() {
            if let Some(bill) = self.bill.take() {
                let (units, basis) = bill.measure_stream(self.meter.as_ref());
                log_charge(&mut log, bill.capture(units, basis));
            }
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

/// Chunks that arrive together are sent together up to this size; a larger chunk goes out as it is.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Empty polls after which the upstream connection has had a turn (see [`PassThrough`]).
const TURN_POLLS: u8 = 3;

/// Streams the upstream body to the client, sending what one upstream read delivered in one write.
///
/// hyper's client hands a body over one chunk at a time, and hyper's server
/// flushes whenever the body has nothing ready, so passing chunks on one by one costs a `writev` (and a
/// wake-up of the client) per server-sent event: 19 for a stream of 16 content chunks that arrived in one
/// read. Instead the stream collects chunks while more are ready and sends once a poll brings nothing.
/// An HTTP/1 upstream connection has no task of its own: polling its body drives it
/// (`upstream::pool`), so the first empty poll already means it read all there was. An HTTP/2
/// connection runs as its own task: after a chunk the stream wakes itself and yields, so that task gets
/// a turn to hand over what it has already read; hyper's server polls a pending body twice in one run
/// of its own task, so "had its turn" is the third empty poll since the last chunk (fewer would send
/// before the connection ran: measured when HTTP/1 connections still had tasks, see the test
/// `events_that_arrive_together_are_sent_together`). A chunk that arrives alone goes out after that one
/// extra turn, with no timer involved: chunks are still forwarded as they arrive.
struct PassThrough {
    first: Option<Bytes>,
    rest: UpstreamBody,
    finish: Finish,
    sse: SseStyle,
    /// Whether the bytes sent so far end on an event boundary (a blank line).
    at_boundary: bool,
    /// Bytes still due when the upstream declared a length: hyper stops polling the body once they are
    /// sent, so the end has to be recognised here rather than from the stream's end.
    remaining: Option<u64>,
    /// Collected chunks not sent yet.
    held: bytes::BytesMut,
    /// Empty polls since the last chunk was collected, while something is held.
    empty_polls: u8,
    /// The upstream body ended; what is held goes out, then `last`, then the end.
    ended: bool,
    last: Option<Result<Bytes, std::io::Error>>,
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
        let this = &mut *self;
        // the first bytes are in hand when the head is sent: they go out with it, at once
        if let Some(first) = this.first.take() {
            let out = this.meter_feed(&first);
            this.note(&out);
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
        loop {
            if this.ended {
                if !this.held.is_empty() {
                    return Poll::Ready(Some(Ok(this.held.split().freeze())));
                }
                return Poll::Ready(this.last.take());
            }
            match this.rest.poll_next_unpin(cx) {
                Poll::Pending => {
                    if this.held.is_empty() {
                        return Poll::Pending;
                    }
                    this.empty_polls += 1;
                    // an HTTP/1 body drives its connection when polled: it has had its turn already
                    if this.empty_polls >= TURN_POLLS || this.rest.drives_its_connection() {
                        // the connection had its turn and brought nothing more: send what came
                        this.empty_polls = 0;
                        return Poll::Ready(Some(Ok(this.held.split().freeze())));
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.meter_feed(&chunk);
                    this.note(&out);
                    if out.is_empty() {
                        continue;
                    }
                    this.empty_polls = 0;
                    // a declared length fully read: nothing more is coming
                    let complete = this.remaining == Some(0);
                    if this.held.is_empty() && (complete || out.len() >= COALESCE_LIMIT) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                    this.held.extend_from_slice(&out);
                    if complete || this.held.len() >= COALESCE_LIMIT {
                        return Poll::Ready(Some(Ok(this.held.split().freeze())));
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let tail = this
                        .finish
                        .meter
                        .as_mut()
                        .map(StreamMeter::finish)
                        .unwrap_or_default();
                    this.finish.done("complete", None);
                    if !tail.is_empty() {
                        this.last = Some(Ok(tail));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    let reason = if e == BodyError::Silent {
                        "the upstream went silent mid-stream"
                    } else {
                        "the upstream broke the stream"
                    };
                    this.finish.done("upstream_cut", Some(reason.into()));
                    this.last = Some(match cut_event(this.sse, this.at_boundary) {
                        // end the event stream cleanly with an error event the client can read
                        Some(event) => Ok(event),
                        // a plain body cannot say so: abort it, so the client sees a truncated transfer
                        None => Err(std::io::Error::other(reason)),
                    });
                }
            }
        }
    }
}

impl PassThrough {
    fn meter_feed(&mut self, chunk: &Bytes) -> Bytes {
        match self.finish.meter.as_mut() {
            Some(meter) => meter.feed(chunk),
            None => chunk.clone(),
        }
    }
}

fn stream_response(
    status: StatusCode,
    headers: axum::http::HeaderMap,
    first: Option<Bytes>,
    rest: UpstreamBody,
    remaining: Option<u64>,
    finish: Finish,
    sse: SseStyle,
) -> Response {
    let mut stream = PassThrough {
        first,
        rest,
        finish,
        sse,
        at_boundary: true,
        remaining,
        held: bytes::BytesMut::new(),
        empty_polls: 0,
        ended: false,
        last: None,
    };
    if stream.remaining == Some(0) {
        stream.finish.done("complete", None);
    }
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Answers the client from an upstream answer: event streams pass through as they arrive, metered;
/// other successful answers are read whole, priced, and sent with their cost; failures pass through free.
pub async fn respond(
    sink: LogSink,
    started: Instant,
    log: RequestLog,
    answer: Answer,
    out: &Outbound,
    bill: Bill,
) -> Response {
    let Answer {
        head,
        body: upstream,
        first,
    } = answer;
    let status = head.status;
    let is_event_stream = head
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut headers = axum::http::HeaderMap::new();
    super::copy_headers(&head.headers, &mut headers);
    // what the upstream declared still due: the body reports what it has not yet handed over, and the
    // first chunk was already taken from it
    let remaining = upstream
        .exact_len()
        .map(|rest| rest + first.as_ref().map_or(0, |f| f.len() as u64));
    if !status.is_success() {
        bill.release();
        let finish = Finish {
            sink,
            started,
            log: Some(log),
            bill: None,
            meter: None,
        };
        return stream_response(
            status,
            headers,
            first,
            upstream,
            remaining,
            finish,
            SseStyle::None,
        );
    }
    if is_event_stream {
        let meter = bill.stream_meter(out.strip_usage);
        let finish = Finish {
            sink,
            started,
            log: Some(log),
            bill: Some(bill),
            meter,
        };
        return stream_response(status, headers, first, upstream, None, finish, out.sse);
    }
    let mut upstream = upstream;
    let mut body = bytes::BytesMut::new();
    if let Some(first) = first {
        body.extend_from_slice(&first);
    }
    // until the answer is read, a client that leaves is logged (and, holding nothing, pays nothing)
    let mut pending = Finish {
        sink: sink.clone(),
        started,
        log: Some(log),
        bill: None,
        meter: None,
    };
    loop {
        if body.len() > MAX_BUFFERED {
            tracing::warn!(
                bytes = body.len(),
                "an upstream answer is too large to price from its body; capturing the estimate"
            );
            headers.remove(axum::http::header::CONTENT_LENGTH);
            let finish = Finish {
                sink,
                started,
                log: pending.log.take(),
                bill: Some(bill),
                meter: None,
            };
            return stream_response(
                status,
                headers,
                Some(body.freeze()),
                upstream,
                None,
                finish,
                SseStyle::None,
            );
        }
        match upstream.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(_) => {
                // nothing reached the client: it pays nothing
                bill.release();
                let error = crate::error::ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    Some("upstream_broken_answer"),
                    "The upstream provider broke its answer before it was complete. Nothing was charged.",
                );
                if let Some(mut log) = pending.log.take() {
                    log.status = error.status.as_u16();
                    log.outcome = "upstream_cut".into();
                    log.error = Some(error.message.clone());
                    log.latency_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    sink.record(log);
                }
                return axum::response::IntoResponse::into_response(error);
            }
        }
    }
    let body = body.freeze();
    let (units, basis) = bill.measure_body(&body);
    let charge = bill.capture(units, basis);
    let cost_nano = charge.cost_nano;
    if let Some(mut log) = pending.log.take() {
        log_charge(&mut log, charge);
        log.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        sink.record(log);
    }
    let mut digits = [0u8; USD_MAX];
    if let Ok(value) = axum::http::HeaderValue::from_bytes(usd_digits(cost_nano, &mut digits)) {
        headers.insert(
            axum::http::HeaderName::from_static("x-uniapi-cost-usd"),
            value,
        );
    }
    headers.insert(
        axum::http::header::CONTENT_LENGTH,
        axum::http::HeaderValue::from(body.len()),
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
