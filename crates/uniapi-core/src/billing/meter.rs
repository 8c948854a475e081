//! Usage metering of upstream answers: the `usage` of a complete JSON answer, and a byte-exact SSE relay filter that
//! reads the upstream's usage from a stream, strips the usage chunk the client did not ask for, and counts the output
//! tokens delivered from the deltas (for when the upstream reports nothing).
//!
//! The stream filter holds at most one partial event between chunks (and gives up parsing an event whose held part
//! exceeds [`MAX_HELD_EVENT`], forwarding it unparsed). Events end with a blank line; lines end with `\n`, `\r\n` or a
//! lone `\r` (a `\r` at the end of a chunk waits for the next byte). Each event is parsed with small borrowing serde
//! structs; only the small `usage` object becomes a `serde_json::Value`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::tokens::{count_with, tokenizer_getter};

/// Largest partial event held between chunks; past it the event is forwarded as is without being parsed.
pub const MAX_HELD_EVENT: usize = 1 << 20;

/// Token usage of one request as the upstream reported it (or as counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// `prompt_tokens` / `input_tokens` (cached included).
    pub input_tokens: u64,
    /// `prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens` (at most `input_tokens`).
    pub cached_input_tokens: u64,
    /// `completion_tokens` / `output_tokens` (reasoning included).
    pub output_tokens: u64,
    /// `completion_tokens_details.reasoning_tokens` / `output_tokens_details.reasoning_tokens` (at most
    /// `output_tokens`).
    pub reasoning_tokens: u64,
}

/// The wire protocol of a stream, which decides where deltas, usage and the end are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    ChatCompletions,
    Completions,
    Responses,
}

/// Reads the `usage` object of a complete (non-stream) JSON answer of any OpenAI endpoint: chat, completions,
/// embeddings (`prompt_tokens`/`total_tokens`, output 0), responses (`input_tokens`/`output_tokens`), images
/// (`usage.input_tokens`/`output_tokens` when present). None when there is no usage object, when it holds no token
/// count (e.g. a transcription's `{"type":"duration","seconds":..}`), or when the body is not a JSON object.
///
/// Only the `usage` value is read: [`member`] finds it from the end of the answer, stepping over what
/// follows it (strings found with `memrchr`, nested values by depth) and never reading what precedes it.
/// (Callgrind, the sandbox's chat answer: serde decoding the whole answer 11k instructions; a forward
/// scan to `usage` and serde's visitor on it 9.7k; the forward scan and the hand reader 8.5k.)
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    read_usage(member(body, b"usage")?)
}

fn usage_from_raw(raw: &RawValue) -> Option<Usage> {
    read_usage(raw.get().as_bytes())
}

/// The raw text of the last top-level member `name` of a JSON object, found without decoding anything
/// else. None when `json` is not an object, has no such member, or is malformed after it. A name is
/// compared as written: one spelled with escapes (`"us\u0061ge"`) is not recognised.
///
/// The members are walked from the end of the object, because the answers of the OpenAI family put
/// `usage` last: the members before it (`choices`, with the answer's text) are never read. The last of
/// repeated names is the one found, as a decoder keeps the last.
fn member<'a>(json: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let open = skip_blank(json, 0);
    if json.get(open) != Some(&b'{') {
        return None;
    }
    // `end`: just past the last byte of the member to read next, going backwards
    let mut end = blank_before(json, json.len());
    if end <= open + 1 || json[end - 1] != b'}' {
        return None;
    }
    end -= 1;
    loop {
        let value_end = blank_before(json, end);
        let value_start = value_start(json, value_end)?;
        let colon = blank_before(json, value_start);
        if colon <= open + 1 || json[colon - 1] != b':' {
            return None; // `{}`, or not an object
        }
        let key_end = blank_before(json, colon - 1);
        if key_end <= open + 1 || json[key_end - 1] != b'"' {
            return None;
        }
        let key_start = string_start(json, key_end - 1)?;
        if &json[key_start + 1..key_end - 1] == name {
            return Some(&json[value_start..value_end]);
        }
        let before = blank_before(json, key_start);
        if before <= open + 1 || json[before - 1] != b',' {
            return None; // the first member: `name` is not there
        }
        end = before - 1;
    }
}

/// Just past the last non-blank byte before `end`.
fn blank_before(json: &[u8], mut end: usize) -> usize {
    while end > 0 && matches!(json[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// The opening quote of the string whose closing quote is at `close`: the nearest quote before it
/// that an odd run of backslashes does not escape.
fn string_start(json: &[u8], close: usize) -> Option<usize> {
    let mut end = close;
    loop {
        let quote = memchr::memrchr(b'"', &json[..end])?;
        let backslashes = json[..quote]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        end = quote;
    }
}

/// Where the value that ends just before `end` starts: a string, an object or array (by depth, strings
/// skipped whole), or a scalar back to the previous delimiter. None when there is no value there.
fn value_start(json: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    match json[last] {
        b'"' => string_start(json, last),
        b'}' | b']' => {
            let mut depth = 0usize;
            let mut i = last;
            loop {
                match json[i] {
                    b'"' => i = string_start(json, i)?,
                    b'}' | b']' => depth += 1,
                    b'{' | b'[' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
                i = i.checked_sub(1)?;
            }
        }
        _ => {
            let n = json[..end]
                .iter()
                .rev()
                .position(|b| matches!(b, b',' | b':' | b'{' | b'[' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(end);
            (n > 0).then_some(end - n)
        }
    }
}

fn skip_blank(json: &[u8], mut i: usize) -> usize {
    while json
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Just past the closing quote of the string opening at `start`.
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[i] == b'"' {
            return Some(i + 1);
        }
        i += 2; // an escape: the next byte is never the end
    }
}

/// Just past the value starting at `start`: a string, an object or array (by depth, strings skipped
/// whole), or a scalar up to the next delimiter.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    match json.get(start)? {
        b'"' => string_end(json, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let rest = &json[start..];
            let n = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (n > 0).then_some(start + n)
        }
    }
}

/// True when the first non-blank byte opens an object (serde's derived structs would also accept an array).
fn is_json_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

/// The top-level members of a JSON object, front to back, as raw `(name, value)` texts (strings found
/// with `memchr`, nested values by depth): names are compared as written (escapes are not decoded) and
/// values are delimited, not decoded. Stops at the end of the object or at the first malformed byte,
/// which it remembers.
struct Members<'a> {
    json: &'a [u8],
    at: usize,
    /// Closed: the object ended (or was malformed) before `at`.
    done: bool,
    malformed: bool,
}

impl<'a> Members<'a> {
    /// None when `json` does not hold an object.
    fn of(json: &'a [u8]) -> Option<Members<'a>> {
        let at = skip_blank(json, 0);
        if json.get(at) != Some(&b'{') {
            return None;
        }
        let at = skip_blank(json, at + 1);
        let empty = json.get(at) == Some(&b'}');
        Some(Members {
            json,
            at,
            done: empty,
            malformed: false,
        })
    }

    fn next_member(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let json = self.json;
        let mut i = self.at;
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i)?;
        let key = &json[i + 1..key_end - 1];
        i = skip_blank(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_blank(json, i + 1);
        let value_end = value_end(json, i)?;
        let value = &json[i..value_end];
        i = skip_blank(json, value_end);
        match json.get(i) {
            Some(b',') => self.at = skip_blank(json, i + 1),
            Some(b'}') => self.done = true,
            _ => return None,
        }
        Some((key, value))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let member = self.next_member();
        if member.is_none() {
            self.done = true;
            self.malformed = true;
        }
        member
    }
}

/// A `usage` object read by hand into [`Usage`], leniently: chat/completions/embeddings (`prompt_tokens`,
/// `completion_tokens`, `*_tokens_details`) and Responses/images (`input_tokens`, `output_tokens`,
/// `*_tokens_details`) names; counts may be integers, floats or numeric strings ([`count`]); anything else
/// (a non-object, odd values, unknown keys) never fails the answer, and a repeated key counts as its last
/// value. None when no token count is present or the object is malformed. (On the sandbox's chat usage,
/// callgrind: serde's lenient visitor ~5.2k instructions, this reader ~3.9k.)
fn read_usage(json: &[u8]) -> Option<Usage> {
    let (mut prompt, mut input, mut completion, mut output, mut total) =
        (None, None, None, None, None);
    let (mut prompt_details, mut input_details) = (Details::default(), Details::default());
    let (mut completion_details, mut output_details) = (Details::default(), Details::default());
    let mut members = Members::of(json)?;
    for (key, value) in &mut members {
        match key {
            b"prompt_tokens" => prompt = count(value),
            b"input_tokens" => input = count(value),
            b"completion_tokens" => completion = count(value),
            b"output_tokens" => output = count(value),
            b"total_tokens" => total = count(value),
            b"prompt_tokens_details" => prompt_details = Details::read(value)?,
            b"input_tokens_details" => input_details = Details::read(value)?,
            b"completion_tokens_details" => completion_details = Details::read(value)?,
            b"output_tokens_details" => output_details = Details::read(value)?,
            _ => {}
        }
    }
    if members.malformed {
        return None;
    }
    let input = prompt.or(input);
    let output = completion.or(output);
    if input.is_none() && output.is_none() && total.is_none() {
        return None;
    }
    let output_tokens = output.unwrap_or(0);
    let input_tokens = input.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(output_tokens));
    let cached = prompt_details.cached.or(input_details.cached).unwrap_or(0);
    let reasoning = completion_details
        .reasoning
        .or(output_details.reasoning)
        .unwrap_or(0);
    Some(Usage {
        input_tokens,
        cached_input_tokens: cached.min(input_tokens),
        output_tokens,
        reasoning_tokens: reasoning.min(output_tokens),
    })
}

/// `cached_tokens` and `reasoning_tokens` of a `*_tokens_details` object (absent when it is not an object).
#[derive(Default)]
struct Details {
    cached: Option<u64>,
    reasoning: Option<u64>,
}

impl Details {
    /// None when the value is a malformed object.
    fn read(value: &[u8]) -> Option<Details> {
        let mut details = Details::default();
        let Some(mut members) = Members::of(value) else {
            return Some(details);
        };
        for (key, value) in &mut members {
            match key {
                b"cached_tokens" => details.cached = count(value),
                b"reasoning_tokens" => details.reasoning = count(value),
                _ => {}
            }
        }
        (!members.malformed).then_some(details)
    }
}

/// A token count: a non-negative integer, a finite non-negative number (truncated; an integer past
/// `u64` reads as `u64::MAX`) or a string holding an integer (blanks around it allowed); anything else
/// reads as absent.
fn count(value: &[u8]) -> Option<u64> {
    match value.first()? {
        b'0'..=b'9' | b'-' => {
            let mut n: u64 = 0;
            for &digit in value {
                if !digit.is_ascii_digit() {
                    return float_count(value);
                }
                n = match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit - b'0')))
                {
                    Some(n) => n,
                    None => return float_count(value),
                };
            }
            Some(n)
        }
        b'"' if !value.contains(&b'\\') => std::str::from_utf8(&value[1..value.len() - 1])
            .ok()?
            .trim()
            .parse()
            .ok(),
        b'"' => serde_json::from_slice::<String>(value)
            .ok()?
            .trim()
            .parse()
            .ok(),
        _ => None,
    }
}

fn float_count(number: &[u8]) -> Option<u64> {
    let value: f64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    // `as` saturates: a count past u64::MAX reads as u64::MAX
    (value.is_finite() && value >= 0.0).then_some(value as u64)
}

/// Meters one SSE stream as it is forwarded.
pub struct StreamMeter {
    protocol: Protocol,
    tokenizer: fn() -> &'static super::bpe::Bpe,
    strip_usage: bool,
    /// The partial event held since its first byte (empty at an event boundary and while `skipping`).
    held: Vec<u8>,
    /// Blank-line scanner state over the bytes of the current event.
    scan: Scan,
    /// The current event outgrew [`MAX_HELD_EVENT`]: forward its bytes unparsed until it ends.
    skipping: bool,
    reported: Option<Usage>,
    /// Tokens of deltas already counted.
    delivered: u64,
    /// Deltas delivered but not counted yet (their text, and each one's length): counted only if the
    /// upstream never reports usage, or when they pile up past [`UNCOUNTED_LIMIT`].
    uncounted: String,
    uncounted_lengths: Vec<u32>,
    /// Chat/completions content chunks kept as they came (their JSON back to back, and each one's length):
    /// parsed for their deltas only if the upstream never reports usage, or when they pile up past
    /// [`RAW_LIMIT`]. Most chunks of a metered stream are never parsed at all.
    raw: Vec<u8>,
    raw_lengths: Vec<u32>,
    saw_end: bool,
}

/// Delivered text kept uncounted per stream before it is counted on the spot.
const UNCOUNTED_LIMIT: usize = 256 * 1024;
/// Content chunks kept unparsed per stream before their deltas are taken out.
const RAW_LIMIT: usize = 64 * 1024;

impl fmt::Debug for StreamMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMeter")
            .field("protocol", &self.protocol)
            .field("strip_usage", &self.strip_usage)
            .field("held", &self.held.len())
            .field("skipping", &self.skipping)
            .field("reported", &self.reported)
            .field("delivered", &self.delivered)
            .field("saw_end", &self.saw_end)
            .finish()
    }
}

impl StreamMeter {
    /// `model` picks the tokenizer; `strip_usage` removes the usage-only chunk (chat/completions: an event whose JSON
    /// has `"choices": []` (or no `choices`) and a non-null `usage`) from what is forwarded, because the client did
    /// not ask for it. Ignored for [`Protocol::Responses`], whose usage is part of the terminal event.
    pub fn new(protocol: Protocol, model: &str, strip_usage: bool) -> StreamMeter {
        StreamMeter {
            protocol,
            tokenizer: tokenizer_getter(model),
            strip_usage,
            held: Vec::new(),
            scan: Scan::LineStart,
            skipping: false,
            reported: None,
            delivered: 0,
            uncounted: String::new(),
            uncounted_lengths: Vec::new(),
            raw: Vec::new(),
            raw_lengths: Vec::new(),
            saw_end: false,
        }
    }

    /// Takes bytes as they came from the upstream and returns the bytes to forward NOW: every complete event
    /// (terminated by a blank line) received so far, minus a stripped usage chunk; a trailing partial event is held
    /// until its end arrives (if the held part exceeds [`MAX_HELD_EVENT`], it is forwarded as is and the rest of that
    /// event passes unparsed). Comments and `data: [DONE]` pass through untouched. Output bytes equal input bytes
    /// exactly except for removed events.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.held.len() + chunk.len());
        let mut rest = chunk;
        if self.skipping {
            match self.scan.advance(rest) {
                Some(end) => {
                    out.extend_from_slice(&rest[..end]);
                    rest = &rest[end..];
                    self.skipping = false;
                }
                None => {
                    out.extend_from_slice(rest);
                    return Bytes::from(out);
                }
            }
        } else if !self.held.is_empty() {
            match self.scan.advance(rest) {
                Some(end) => {
                    self.held.extend_from_slice(&rest[..end]);
                    rest = &rest[end..];
                    let event = std::mem::take(&mut self.held);
                    self.relay_event(&event, &mut out);
                    self.reuse(event);
                }
                None => {
                    self.held.extend_from_slice(rest);
                    self.check_held(&mut out);
                    return Bytes::from(out);
                }
            }
        }
        // At an event boundary: whole events straight from the chunk, the tail held.
        while !rest.is_empty() {
            match self.scan.advance(rest) {
                Some(end) => {
                    let (event, tail) = rest.split_at(end);
                    self.relay_event(event, &mut out);
                    rest = tail;
                }
                None => {
                    self.held.extend_from_slice(rest);
                    self.check_held(&mut out);
                    break;
                }
            }
        }
        Bytes::from(out)
    }

    /// Whatever partial event is still held (call at the end of the stream or when it is cut); forwarded as is. Its
    /// data is still read for usage, the end marker and deltas (an upstream may close without the final blank line),
    /// but it is never stripped.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            self.meter_event(&held);
        }
        self.scan = Scan::LineStart;
        self.skipping = false;
        Bytes::from(held)
    }

    /// The usage the upstream reported, if it did (the last one seen): chat/completions usage chunk or any chunk with
    /// a non-null usage; Responses: `response.completed` / `response.incomplete` / `response.failed` event's
    /// `response.usage`.
    pub fn reported(&self) -> Option<Usage> {
        self.reported
    }

    /// Output tokens counted from the deltas forwarded so far, each delta's text counted on its own with the model's
    /// tokenizer (sum over deltas). Chat: `choices[].delta.content`, `.refusal`, `.reasoning_content`, tool-call (and
    /// legacy `function_call`) `function.name` / `function.arguments`; completions: `choices[].text`; Responses: the
    /// `delta` of `response.output_text.delta`, `response.refusal.delta`, `response.function_call_arguments.delta`,
    /// `response.reasoning_summary_text.delta`, `response.reasoning_text.delta`,
    /// `response.custom_tool_call_input.delta`, `response.code_interpreter_call_code.delta` and
    /// `response.mcp_call_arguments.delta`.
    /// Tokens of the deltas delivered so far, each delta counted on its own.
    pub fn delivered_output_tokens(&self) -> u64 {
        self.delivered.saturating_add(self.count_uncounted())
    }

    fn count_uncounted(&self) -> u64 {
        if self.uncounted_lengths.is_empty() && self.raw_lengths.is_empty() {
            return 0;
        }
        let bpe = (self.tokenizer)();
        let mut rest = self.uncounted.as_str();
        let mut total = 0u64;
        for &len in &self.uncounted_lengths {
            let (piece, tail) = rest.split_at(len as usize);
            total = total.saturating_add(count_with(bpe, piece));
            rest = tail;
        }
        for data in raw_pieces(&self.raw, &self.raw_lengths) {
            content_texts(data, &mut |text| {
                total = total.saturating_add(count_with(bpe, text));
            });
        }
        total
    }

    /// Keeps a content chunk (no usage object in it) unparsed; past [`RAW_LIMIT`] the kept chunks' deltas are
    /// taken out as text (still uncounted).
    fn keep_raw(&mut self, data: &[u8]) {
        let Ok(len) = u32::try_from(data.len()) else {
            content_texts(data, &mut |text| {
                push_text(&mut self.uncounted, &mut self.uncounted_lengths, text)
            });
            return;
        };
        self.raw.extend_from_slice(data);
        self.raw_lengths.push(len);
        if self.raw.len() > RAW_LIMIT {
            let mut raw = std::mem::take(&mut self.raw);
            let mut lengths = std::mem::take(&mut self.raw_lengths);
            for data in raw_pieces(&raw, &lengths) {
                content_texts(data, &mut |text| self.count(text));
            }
            raw.clear();
            lengths.clear();
            self.raw = raw;
            self.raw_lengths = lengths;
        }
    }

    /// True once the stream's natural end was seen: chat/completions `data: [DONE]`; Responses a terminal event
    /// (`response.completed`, `response.incomplete`, `response.failed`, `error`).
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    /// Keeps the allocation of a consumed event for the next partial one, unless it grew large.
    fn reuse(&mut self, mut event: Vec<u8>) {
        if event.capacity() <= 64 * 1024 {
            event.clear();
            self.held = event;
        }
    }

    /// Forwards an overgrown held part unparsed and passes the rest of its event through.
    fn check_held(&mut self, out: &mut Vec<u8>) {
        if self.held.len() > MAX_HELD_EVENT {
            tracing::warn!(
                held = self.held.len(),
                "SSE event larger than {MAX_HELD_EVENT} bytes; relayed without metering"
            );
            out.append(&mut self.held);
            self.held = Vec::new();
            self.skipping = true;
        }
    }

    /// Meters one complete event and appends it to `out` unless it is the usage chunk to strip.
    fn relay_event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if !self.meter_event(event) {
            out.extend_from_slice(event);
        }
    }

    /// Reads one event; returns true when it is a usage-only chunk that must be stripped.
    fn meter_event(&mut self, event: &[u8]) -> bool {
        let Some(fields) = EventFields::parse(event) else {
            return false;
        };
        let data = fields.data.as_ref();
        if data.trim_ascii() == b"[DONE]" {
            if self.protocol != Protocol::Responses {
                self.saw_end = true;
            }
            return false;
        }
        if !is_json_object(data) {
            return false;
        }
        match self.protocol {
            Protocol::ChatCompletions | Protocol::Completions => self.meter_chunk(data),
            Protocol::Responses => {
                self.meter_responses_event(data, fields.event);
                false
            }
        }
    }

    /// Only a chunk that names a usage object is parsed on the spot (it may be the usage chunk to strip); any
    /// other is kept raw, its deltas counted only if they are ever needed.
    fn meter_chunk(&mut self, data: &[u8]) -> bool {
        if !names_usage_object(data) {
            self.keep_raw(data);
            return false;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
            return false;
        };
        if let Some(usage) = chunk.usage.and_then(usage_from_raw) {
            self.reported = Some(usage);
        }
        let mut no_choices = true;
        if let Some(raw) = chunk.choices {
            match serde_json::from_str::<Vec<Choice<'_>>>(raw.get()) {
                Ok(choices) => {
                    no_choices = choices.is_empty();
                    for choice in &choices {
                        choice_texts(choice, &mut |text| self.count(text));
                    }
                }
                Err(_) => no_choices = false,
            }
        }
        self.strip_usage && chunk.usage.is_some() && no_choices
    }

    fn meter_responses_event(&mut self, data: &[u8], event_name: Option<&[u8]>) {
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(default, borrow, rename = "type")]
            kind: Text<'a>,
            #[serde(default, borrow)]
            delta: Text<'a>,
            #[serde(default, borrow)]
            response: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct ResponseObject<'a> {
            #[serde(default, borrow)]
            usage: Option<&'a RawValue>,
        }
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else {
            return;
        };
        let kind = match (&event.kind.0, event_name) {
            (Some(kind), _) => kind.as_ref(),
            (None, Some(name)) => std::str::from_utf8(name).unwrap_or(""),
            (None, None) => "",
        };
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta"
            | "response.custom_tool_call_input.delta"
            | "response.code_interpreter_call_code.delta"
            | "response.mcp_call_arguments.delta" => {
                if let Some(delta) = &event.delta.0 {
                    self.count(delta);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.saw_end = true;
                let usage = event
                    .response
                    .filter(|raw| is_json_object(raw.get().as_bytes()))
                    .and_then(|raw| serde_json::from_str::<ResponseObject<'_>>(raw.get()).ok())
                    .and_then(|response| response.usage)
                    .and_then(usage_from_raw);
                if let Some(usage) = usage {
                    self.reported = Some(usage);
                }
            }
            "error" => self.saw_end = true,
            _ => {}
        }
    }

    fn count(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if u32::try_from(text.len()).is_err() {
            self.delivered = self
                .delivered
                .saturating_add(count_with((self.tokenizer)(), text));
            return;
        }
        push_text(&mut self.uncounted, &mut self.uncounted_lengths, text);
        if self.uncounted.len() > UNCOUNTED_LIMIT {
            self.delivered = self.delivered.saturating_add(self.count_uncounted());
            self.uncounted.clear();
            self.uncounted_lengths.clear();
        }
    }
}

/// Appends one delta's text (at most `u32::MAX` bytes) to the uncounted ones.
fn push_text(uncounted: &mut String, lengths: &mut Vec<u32>, text: &str) {
    if let Ok(len) = u32::try_from(text.len())
        && len > 0
    {
        uncounted.push_str(text);
        lengths.push(len);
    }
}

/// The chunks kept back to back in `raw`, split by their lengths.
fn raw_pieces<'r>(raw: &'r [u8], lengths: &'r [u32]) -> impl Iterator<Item = &'r [u8]> + 'r {
    let mut rest = raw;
    lengths.iter().map(move |&len| {
        let (piece, tail) = rest.split_at(len as usize);
        rest = tail;
        piece
    })
}

/// True when the JSON text has a key `"usage"` whose value is an object (not `null`, as OpenAI sends on every
/// content chunk once usage is asked for). A `"usage"` inside a string value is escaped (`\"usage\"`), so it
/// cannot match; a nested `usage` object only costs a full parse.
fn names_usage_object(data: &[u8]) -> bool {
    // built once: a searcher made per call cost ~200 instructions a chunk (callgrind)
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE.find_iter(data).any(|at| {
        data[at + 7..]
            .trim_ascii_start()
            .strip_prefix(b":")
            .is_some_and(|value| value.trim_ascii_start().first() == Some(&b'{'))
    })
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// Calls `each` with the text of every delta of a chat/completions chunk (nothing when it does not parse).
fn content_texts(data: &[u8], each: &mut dyn FnMut(&str)) {
    let Ok(Chunk {
        choices: Some(raw), ..
    }) = serde_json::from_slice::<Chunk<'_>>(data)
    else {
        return;
    };
    if let Ok(choices) = serde_json::from_str::<Vec<Choice<'_>>>(raw.get()) {
        for choice in &choices {
            choice_texts(choice, each);
        }
    }
}

/// The texts of one choice: completions `text`; chat `content`, `refusal`, `reasoning_content`, and the name and
/// arguments of tool calls and of the legacy `function_call`.
fn choice_texts(choice: &Choice<'_>, each: &mut dyn FnMut(&str)) {
    let mut text = |t: &Text<'_>| {
        if let Some(t) = &t.0 {
            each(t);
        }
    };
    text(&choice.text);
    let Some(delta) = &choice.delta else {
        return;
    };
    text(&delta.content);
    text(&delta.refusal);
    text(&delta.reasoning_content);
    let calls = delta
        .tool_calls
        .iter()
        .flatten()
        .filter_map(|c| c.function.as_ref());
    for function in calls.chain(delta.function_call.as_ref()) {
        text(&function.name);
        text(&function.arguments);
    }
}

/// Where the scanner is within the lines of the current event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// At the start of a line (an empty line here ends the event).
    LineStart,
    /// Inside a non-empty line.
    InLine,
    /// Just after a `\r` that ended an empty line: the event ends after a following `\n`, or before any other byte.
    CrAfterEmpty,
    /// Just after a `\r` that ended a non-empty line: a following `\n` belongs to it.
    CrAfterLine,
}

impl Scan {
    /// Scans `bytes` (the continuation of the current event) and returns the offset just past the end of the event
    /// when it ends in `bytes` (0 when a pending `\r` already ended it), resetting to the next event's start; None
    /// when all of `bytes` belongs to the event.
    fn advance(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match *self {
                Scan::CrAfterEmpty => {
                    *self = Scan::LineStart;
                    return Some(if bytes[i] == b'\n' { i + 1 } else { i });
                }
                Scan::CrAfterLine => {
                    *self = Scan::LineStart;
                    if bytes[i] == b'\n' {
                        i += 1;
                    }
                }
                Scan::LineStart => match bytes[i] {
                    b'\n' => return Some(i + 1),
                    b'\r' => {
                        *self = Scan::CrAfterEmpty;
                        i += 1;
                    }
                    _ => {
                        *self = Scan::InLine;
                        i += 1;
                    }
                },
                Scan::InLine => match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                    None => return None,
                    Some(p) => {
                        let at = i + p;
                        *self = if bytes[at] == b'\n' {
                            Scan::LineStart
                        } else {
                            Scan::CrAfterLine
                        };
                        i = at + 1;
                    }
                },
            }
        }
        None
    }
}

/// The `data` (joined lines) and `event` fields of one event.
struct EventFields<'a> {
    data: Cow<'a, [u8]>,
    event: Option<&'a [u8]>,
}

impl<'a> EventFields<'a> {
    /// None when the event has no `data` line (comments, keep-alives, blank lines).
    fn parse(event: &'a [u8]) -> Option<EventFields<'a>> {
        let mut data: Option<Cow<'a, [u8]>> = None;
        let mut name = None;
        for line in Lines(event) {
            if line.is_empty() || line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &line[line.len()..]),
            };
            match field {
                b"data" => {
                    data = Some(match data {
                        None => Cow::Borrowed(value),
                        Some(joined) => {
                            let mut joined = joined.into_owned();
                            joined.push(b'\n');
                            joined.extend_from_slice(value);
                            Cow::Owned(joined)
                        }
                    });
                }
                b"event" => name = Some(value),
                _ => {}
            }
        }
        Some(EventFields {
            data: data?,
            event: name,
        })
    }
}

/// The lines of an event without their terminators (`\n`, `\r\n` or `\r`).
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let rest = self.0;
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                self.0 = &[];
                Some(rest)
            }
            Some(at) => {
                let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                self.0 = &rest[at + skip..];
                Some(&rest[..at])
            }
        }
    }
}

/// One element of `choices` of a chat or completions chunk.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    /// Completions.
    #[serde(borrow)]
    text: Text<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Text<'a>,
    #[serde(borrow)]
    refusal: Text<'a>,
    #[serde(borrow)]
    reasoning_content: Text<'a>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow)]
    function_call: Option<FunctionDelta<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct FunctionDelta<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    arguments: Text<'a>,
}

/// A string field read leniently: borrowed when it has no escapes, and any non-string value reads as absent
/// instead of failing the whole event.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'a>, D::Error> {
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

struct TextVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Text<'a>, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::tokens::count_tokens;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const MODEL: &str = "gpt-4o-mini";

    /// Feeds `input` cut at `cuts` (byte offsets) and returns everything forwarded.
    fn run(meter: &mut StreamMeter, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(last, input.len());
            out.extend_from_slice(&meter.feed(&input[last..cut]));
            last = cut;
        }
        out.extend_from_slice(&meter.finish());
        out
    }

    fn every_byte(input: &[u8]) -> Vec<usize> {
        (1..input.len()).collect()
    }

    fn chat_chunk(delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null});
        format!("data: {chunk}\n\n")
    }

    const USAGE_EVENT: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n";

    fn chat_stream(with_usage: bool) -> (String, Vec<&'static str>) {
        let deltas = vec!["Hello", " there", ", \"friend\" ✓\n"];
        let mut s = chat_chunk(json!({"role": "assistant", "content": ""}), None);
        for d in &deltas {
            s += &chat_chunk(json!({ "content": d }), None);
        }
        s += &chat_chunk(json!({}), Some("stop"));
        if with_usage {
            s += USAGE_EVENT;
        }
        s += "data: [DONE]\n\n";
        (s, deltas)
    }

    fn sum_tokens(deltas: &[&str]) -> u64 {
        deltas.iter().map(|d| count_tokens(MODEL, d)).sum()
    }

    /// The usage of the whole answer decoded by serde into a `Value`: the reference the scanner must agree
    /// with on every well-formed answer.
    fn usage_by_serde(body: &[u8]) -> Option<Usage> {
        let answer: Value = serde_json::from_slice(body).ok()?;
        usage_from_value(answer.as_object()?.get("usage")?)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[a-z_]{0,8}",
            // quotes, escapes, brackets and braces inside strings, and non-ASCII
            r#"[a-z"\\{}\[\],:é😀 ]{0,12}"#,
            Just("usage".to_string()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_\"]{0,10}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn usage_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..5_000, 0u64..5_000, 0u64..5_000).prop_map(|(p, c, cached)| json!({
                "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": c / 2}})),
            (0u64..5_000, 0u64..5_000)
                .prop_map(|(i, o)| json!({"input_tokens": i, "output_tokens": o,
                "output_tokens_details": {"reasoning_tokens": o / 3}})),
            json_value(),
        ]
    }

    proptest! {
        /// The scanner finds the same usage as decoding the whole answer, wherever the member sits, whatever
        /// the other members hold, compact or pretty-printed.
        #[test]
        fn the_scanner_agrees_with_serde(members in prop::collection::vec(("[a-z_]{1,9}", json_value()), 0..6),
                                         usage in prop::option::of(usage_value()), at in 0usize..7, pretty: bool) {
            // written by hand, so that the usage member sits where the case says
            let mut entries: Vec<(String, Value)> = Vec::new();
            for (name, value) in members {
                if name != "usage" && entries.iter().all(|(n, _)| *n != name) {
                    entries.push((name, value));
                }
            }
            if let Some(usage) = usage {
                entries.insert(at.min(entries.len()), ("usage".into(), usage));
            }
            let (comma, colon, open, close) = if pretty { (",\n  ", " : ", "{\n  ", "\n}\n") } else { (",", ":", "{", "}") };
            let written: Vec<String> = entries.iter().map(|(name, value)| {
                let value = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
                format!("{}{colon}{}", Value::String(name.clone()), value.unwrap())
            }).collect();
            let body = format!("{open}{}{close}", written.join(comma)).into_bytes();
            prop_assert_eq!(usage_from_json(&body), usage_by_serde(&body), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn usage_from_json_shapes() {
        let chat = br#"{"id":"chatcmpl-7f3a9c","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there!","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
              "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},
              "completion_tokens_details":{"reasoning_tokens":192,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},
            "system_fingerprint":"fp_0001"}"#;
        assert_eq!(
            usage_from_json(chat),
            Some(Usage {
                input_tokens: 2006,
                cached_input_tokens: 1920,
                output_tokens: 300,
                reasoning_tokens: 192
            })
        );
        let completions = br#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(
            usage_from_json(completions),
            Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            })
        );
        let embeddings = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0091,0.0151]}],
            "model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(
            usage_from_json(embeddings),
            Some(Usage {
                input_tokens: 5,
                ..Usage::default()
            })
        );
        let responses = br#"{"id":"resp_68af","object":"response","status":"completed","output":[{"id":"msg_01","type":"message",
            "content":[{"type":"output_text","text":"Once upon a time...","annotations":[]}]}],
            "usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":3},"output_tokens":20,
            "output_tokens_details":{"reasoning_tokens":7},"total_tokens":32}}"#;
        assert_eq!(
            usage_from_json(responses),
            Some(Usage {
                input_tokens: 12,
                cached_input_tokens: 3,
                output_tokens: 20,
                reasoning_tokens: 7
            })
        );
        let images = br#"{"created":1735689600,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":50,
            "output_tokens":4160,"total_tokens":4210,"input_tokens_details":{"text_tokens":40,"image_tokens":10}}}"#;
        assert_eq!(
            usage_from_json(images),
            Some(Usage {
                input_tokens: 50,
                output_tokens: 4160,
                ..Usage::default()
            })
        );
        // No usage object, null usage, usage without token counts.
        let dalle =
            br#"{"created":1735689600,"data":[{"url":"https://cdn.example.com/img/abc.png"}]}"#;
        assert_eq!(usage_from_json(dalle), None);
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(
            usage_from_json(br#"{"text":"hi","usage":{"type":"duration","seconds":8}}"#),
            None
        );
        // Garbage.
        for garbage in [
            &b""[..],
            b"not json",
            b"{\"usage\":",
            b"[{\"prompt_tokens\":1}]",
            b"\xff\xfe",
            b"42",
        ] {
            assert_eq!(usage_from_json(garbage), None);
        }
        // Lenient numbers and inconsistent details.
        assert_eq!(
            usage_from_json(br#"{"usage":{"prompt_tokens":3.0,"completion_tokens":"4","prompt_tokens_details":{"cached_tokens":9}}}"#),
            Some(Usage { input_tokens: 3, cached_input_tokens: 3, output_tokens: 4, reasoning_tokens: 0 })
        );
        assert_eq!(
            usage_from_json(br#"{"usage":{"total_tokens":10,"completion_tokens":4}}"#),
            Some(Usage {
                input_tokens: 6,
                output_tokens: 4,
                ..Usage::default()
            })
        );
    }

    /// The backward walk's corners, each against serde reading the whole answer: escapes before quotes,
    /// members after `usage`, a repeated `usage` (the last counts), blanks everywhere.
    #[test]
    fn the_usage_member_is_found_from_the_end_as_serde_finds_it() {
        let usage = r#"{"prompt_tokens":5,"completion_tokens":2}"#;
        let other = r#"{"prompt_tokens":9,"completion_tokens":9}"#;
        for body in [
            format!(r#"{{"usage":{usage}}}"#),
            format!(" \n{{ \"usage\" :\t{usage} \n}}\r\n"),
            format!(
                r#"{{"a":"x\\","usage":{usage},"b":"\\\"usage\\\":{{\"prompt_tokens\":9}}\\"}}"#
            ),
            format!(
                r#"{{"usage":{usage},"c":[1,{{"usage":{other}}},"]}}{{["],"d":-1.5e3,"e":null}}"#
            ),
            format!(r#"{{"usage":{other},"x":1,"usage":{usage}}}"#),
            format!(
                r#"{{"choices":[{{"text":"\"usage\":{{\"prompt_tokens\":9}}"}}],"usage":{usage}, "z" : true }}"#
            ),
            format!(r#"{{"k\"":"v","usage":{usage},"\\":"\\\\"}}"#),
        ] {
            let expected = usage_by_serde(body.as_bytes());
            assert!(expected.is_some(), "{body}");
            assert_eq!(usage_from_json(body.as_bytes()), expected, "{body}");
            assert_eq!(expected.unwrap().input_tokens, 5, "{body}");
        }
        for body in [
            "{}",
            "{ }",
            r#"{"usage"}"#,
            r#"{:{"prompt_tokens":1}}"#,
            r#"{"a":1,"b":{"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#""usage":{"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1}]"#,
            "}",
        ] {
            assert_eq!(usage_from_json(body.as_bytes()), None, "{body}");
        }
    }

    proptest! {
        /// Whatever an upstream sends, reading its usage never panics: bytes from JSON's own alphabet
        /// (brackets, quotes, backslashes, blanks) in any order, and arbitrary bytes.
        #[test]
        fn any_answer_is_read_without_panicking(json_ish in r#"[{}\[\]":,\\ \n0-9a-z.-]{0,48}"#,
                                                bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            for body in [format!("{{{json_ish}"), format!("{json_ish}}}"), format!(r#"{{"usage":{json_ish}}}"#),
                         format!(r#"{{"a":{json_ish},"usage":{{"prompt_tokens":1}}}}"#), json_ish] {
                let _ = usage_from_json(body.as_bytes());
            }
            let _ = usage_from_json(&bytes);
        }
    }

    /// The hand reader's number and string corners, each as serde reads it.
    #[test]
    fn counts_read_as_serde_reads_them() {
        for (written, expected) in [
            ("12", Some(12)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-3", None),
            ("2.9", Some(2)),
            ("1e3", Some(1000)),
            ("1E+2", Some(100)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", Some(u64::MAX)),
            ("123456789012345678901234567890", Some(u64::MAX)),
            ("\" 7 \"", Some(7)),
            (r#""\u0031\u0032""#, Some(12)),
            (r#""1\n""#, Some(1)),
            (r#""-1""#, None),
            ("\"\"", None),
            ("true", None),
            ("null", None),
            ("{}", None),
            ("[1]", None),
        ] {
            let body = format!(r#"{{"usage":{{"prompt_tokens":{written}}}}}"#);
            let got = usage_from_json(body.as_bytes()).map(|u| u.input_tokens);
            assert_eq!(got, expected, "{written}");
            assert_eq!(
                got,
                usage_by_serde(body.as_bytes()).map(|u| u.input_tokens),
                "{written}"
            );
        }
    }

    #[test]
    fn chat_stream_strips_usage_chunk() {
        let (input, deltas) = chat_stream(true);
        let expected = input.replace(USAGE_EVENT, "");
        assert_eq!(expected.len(), input.len() - USAGE_EVENT.len());
        for cuts in [vec![], every_byte(input.as_bytes()), vec![7, 100, 101, 500]] {
            let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
            let out = run(&mut meter, input.as_bytes(), &cuts);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(
                meter.reported(),
                Some(Usage {
                    input_tokens: 9,
                    cached_input_tokens: 4,
                    output_tokens: 12,
                    reasoning_tokens: 2
                })
            );
            assert!(meter.saw_end());
            assert_eq!(meter.delivered_output_tokens(), sum_tokens(&deltas));
        }
    }

    #[test]
    fn chat_stream_keeps_usage_chunk_when_asked() {
        let (input, deltas) = chat_stream(true);
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, false);
        let out = run(&mut meter, input.as_bytes(), &every_byte(input.as_bytes()));
        assert_eq!(out, input.as_bytes());
        assert_eq!(meter.reported().map(|u| u.output_tokens), Some(12));
        assert!(meter.saw_end());
        assert_eq!(meter.delivered_output_tokens(), sum_tokens(&deltas));
    }

    #[test]
    fn events_are_forwarded_as_soon_as_complete() {
        let (input, _) = chat_stream(false);
        let first_end = input.find("\n\n").unwrap() + 2;
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        assert!(meter.feed(&input.as_bytes()[..first_end - 1]).is_empty());
        assert_eq!(
            &meter.feed(&input.as_bytes()[first_end - 1..first_end])[..],
            &input.as_bytes()[..first_end]
        );
        assert!(meter.feed(b"data: {\"choi").is_empty());
        assert_eq!(&meter.finish()[..], b"data: {\"choi");
        assert!(!meter.saw_end());
    }

    #[test]
    fn crlf_comments_and_done_pass_through() {
        let input = ": keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
            :ping\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\r\n\r\n\
            data: [DONE]\r\n\r\n";
        let usage_event = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\r\n\r\n";
        for cuts in [vec![], every_byte(input.as_bytes())] {
            let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
            let out = run(&mut meter, input.as_bytes(), &cuts);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                input.replace(usage_event, "")
            );
            assert!(meter.saw_end());
            assert_eq!(meter.delivered_output_tokens(), count_tokens(MODEL, "Hi"));
            assert_eq!(meter.reported().map(|u| u.input_tokens), Some(1));
        }
    }

    #[test]
    fn lone_cr_line_endings() {
        let usage =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\r";
        let input = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"Hi\"}}}}]}}\r\r{usage}data: [DONE]\r\r"
        );
        for cuts in [vec![], every_byte(input.as_bytes())] {
            let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
            let out = run(&mut meter, input.as_bytes(), &cuts);
            assert_eq!(String::from_utf8(out).unwrap(), input.replace(usage, ""));
            assert!(meter.saw_end());
            assert_eq!(meter.reported().map(|u| u.output_tokens), Some(1));
            assert_eq!(meter.delivered_output_tokens(), count_tokens(MODEL, "Hi"));
        }
    }

    #[test]
    fn multi_line_data_and_other_fields() {
        let input = "id: 1\nretry: 10\ndata:{\"choices\":[{\"delta\":\ndata: {\"content\":\"a b c\"}}]}\n\n";
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        assert_eq!(run(&mut meter, input.as_bytes(), &[]), input.as_bytes());
        assert_eq!(
            meter.delivered_output_tokens(),
            count_tokens(MODEL, "a b c")
        );
    }

    #[test]
    fn non_json_and_odd_chunks_are_forwarded() {
        let input = "data: hello\n\ndata: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\ndata: [1,2]\n\n\
            data: {\"choices\":\"x\",\"usage\":{\"prompt_tokens\":3}}\n\nevent: x\n\n\n\ndata\n\n";
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        assert_eq!(
            run(&mut meter, input.as_bytes(), &every_byte(input.as_bytes())),
            input.as_bytes()
        );
        assert_eq!(meter.delivered_output_tokens(), 0);
        // A usage on a chunk with (odd) choices is read but never stripped.
        assert_eq!(meter.reported().map(|u| u.input_tokens), Some(3));
        assert!(!meter.saw_end());
    }

    #[test]
    fn usage_on_a_content_chunk_is_reported_not_stripped() {
        let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\
            \"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        assert_eq!(run(&mut meter, input.as_bytes(), &[]), input.as_bytes());
        assert_eq!(
            meter.reported(),
            Some(Usage {
                input_tokens: 5,
                output_tokens: 1,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn completions_stream() {
        let texts = ["This", " is", " indeed", " a test"];
        let mut input = String::new();
        for t in texts {
            let chunk = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                "choices": [{"text": t, "index": 0, "logprobs": null, "finish_reason": null}]});
            input += &format!("data: {chunk}\n\n");
        }
        let usage = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"gpt-3.5-turbo-instruct\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n";
        input += usage;
        input += "data: [DONE]\n\n";
        let expected_tokens: u64 = texts
            .iter()
            .map(|t| count_tokens("gpt-3.5-turbo-instruct", t))
            .sum();
        for strip in [true, false] {
            let mut meter =
                StreamMeter::new(Protocol::Completions, "gpt-3.5-turbo-instruct", strip);
            let out = run(&mut meter, input.as_bytes(), &every_byte(input.as_bytes()));
            let expected = if strip {
                input.replace(usage, "")
            } else {
                input.clone()
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(
                meter.reported(),
                Some(Usage {
                    input_tokens: 5,
                    output_tokens: 7,
                    ..Usage::default()
                })
            );
            assert_eq!(meter.delivered_output_tokens(), expected_tokens);
            assert!(meter.saw_end());
        }
    }

    fn responses_event(kind: &str, mut payload: Value, seq: u64) -> String {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(seq);
        format!("event: {kind}\ndata: {payload}\n\n")
    }

    fn responses_stream(terminal: Option<&str>) -> (String, u64) {
        let m = "gpt-4.1";
        let mut s = String::new();
        let mut tokens = 0;
        s += &responses_event(
            "response.created",
            json!({"response": {"id": "resp_1", "status": "in_progress", "output": [], "usage": null}}),
            0,
        );
        s += &responses_event(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"id": "rs_1", "type": "reasoning"}}),
            1,
        );
        for d in ["Thinking", " about it"] {
            s += &responses_event(
                "response.reasoning_summary_text.delta",
                json!({"item_id": "rs_1", "delta": d}),
                2,
            );
            tokens += count_tokens(m, d);
        }
        for d in ["Once", " upon a", " time…"] {
            s += &responses_event(
                "response.output_text.delta",
                json!({"item_id": "msg_1", "delta": d, "logprobs": []}),
                3,
            );
            tokens += count_tokens(m, d);
        }
        s += &responses_event(
            "response.output_text.done",
            json!({"item_id": "msg_1", "text": "Once upon a time…"}),
            4,
        );
        for d in ["{\"city\":", "\"Paris\"}"] {
            s += &responses_event(
                "response.function_call_arguments.delta",
                json!({"item_id": "fc_1", "delta": d}),
                5,
            );
            tokens += count_tokens(m, d);
        }
        s += &responses_event(
            "response.audio.delta",
            json!({"delta": "UklGRiQAAABXQVZF"}),
            6,
        );
        if let Some(kind) = terminal {
            s += &responses_event(
                kind,
                json!({"response": {"id": "resp_1", "status": "completed", "output": [],
                "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 1}, "output_tokens": 30,
                "output_tokens_details": {"reasoning_tokens": 10}, "total_tokens": 35}}}),
                7,
            );
        }
        (s, tokens)
    }

    #[test]
    fn responses_stream_reports_terminal_usage() {
        for terminal in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let (input, tokens) = responses_stream(Some(terminal));
            for strip in [true, false] {
                let mut meter = StreamMeter::new(Protocol::Responses, "gpt-4.1", strip);
                let out = run(&mut meter, input.as_bytes(), &every_byte(input.as_bytes()));
                assert_eq!(out, input.as_bytes());
                assert_eq!(
                    meter.reported(),
                    Some(Usage {
                        input_tokens: 5,
                        cached_input_tokens: 1,
                        output_tokens: 30,
                        reasoning_tokens: 10
                    })
                );
                assert!(meter.saw_end());
                assert_eq!(meter.delivered_output_tokens(), tokens);
            }
        }
    }

    #[test]
    fn responses_stream_cut_and_error() {
        let (input, tokens) = responses_stream(None);
        let mut meter = StreamMeter::new(Protocol::Responses, "gpt-4.1", true);
        assert_eq!(run(&mut meter, input.as_bytes(), &[]), input.as_bytes());
        assert_eq!(meter.reported(), None);
        assert!(!meter.saw_end());
        assert_eq!(meter.delivered_output_tokens(), tokens);

        // `[DONE]` is tolerated but is not the end of a Responses stream; an `error` event is.
        let mut meter = StreamMeter::new(Protocol::Responses, "gpt-4.1", true);
        let done = "data: [DONE]\n\n";
        assert_eq!(&meter.feed(done.as_bytes())[..], done.as_bytes());
        assert!(!meter.saw_end());
        let error = "event: error\ndata: {\"type\":\"error\",\"sequence_number\":9,\"code\":\"server_error\",\"message\":\"boom\",\"param\":null}\n\n";
        assert_eq!(&meter.feed(error.as_bytes())[..], error.as_bytes());
        assert!(meter.saw_end());

        // The `event:` name stands in for a missing JSON `type`.
        let mut meter = StreamMeter::new(Protocol::Responses, "gpt-4.1", true);
        meter.feed(b"event: response.output_text.delta\ndata: {\"delta\":\"Hello world\"}\n\n");
        assert_eq!(
            meter.delivered_output_tokens(),
            count_tokens("gpt-4.1", "Hello world")
        );
    }

    #[test]
    fn cut_stream_counts_delivered_deltas() {
        let deltas = [
            "The",
            " answer",
            " is",
            " forty-two",
            ", obviously",
            "! 🎉",
            "\n\nBye",
        ];
        let mut events = vec![chat_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        )];
        events.extend(
            deltas
                .iter()
                .map(|d| chat_chunk(json!({ "content": d }), None)),
        );
        for k in 0..=deltas.len() {
            // Cut after the role chunk and K content chunks, in the middle of the next event.
            let mut input: String = events[..=k].concat();
            if let Some(next) = events.get(k + 1) {
                input += &next[..next.len() / 2];
            }
            let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
            let forwarded = run(&mut meter, input.as_bytes(), &[3, 50, 51, 200]);
            assert_eq!(forwarded, input.as_bytes());
            assert_eq!(
                meter.delivered_output_tokens(),
                sum_tokens(&deltas[..k]),
                "k = {k}"
            );
            assert_eq!(meter.reported(), None);
            assert!(!meter.saw_end());
        }
    }

    #[test]
    fn tool_call_deltas_are_counted() {
        let input = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\",\"refusal\":\"no\"},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n",
        );
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, "gpt-4o", true);
        assert_eq!(
            run(&mut meter, input.as_bytes(), &every_byte(input.as_bytes())),
            input.as_bytes()
        );
        let c = |s| count_tokens("gpt-4o", s);
        assert_eq!(
            meter.delivered_output_tokens(),
            c("get_weather") + c("{\"city\":") + c("\"Paris\"}") + c("hmm") + c("no")
        );
        // `[DONE]` without its blank line, flushed by `finish`, still marks the end.
        assert!(meter.saw_end());
    }

    #[test]
    fn oversized_event_is_forwarded_unparsed() {
        let big = "x".repeat(MAX_HELD_EVENT + 200_000);
        let huge = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\n");
        let after = "data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\ndata: [DONE]\n\n";
        let input = format!("{huge}{after}");
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        let mut out = Vec::new();
        let mut max_held = 0;
        for chunk in input.as_bytes().chunks(64 * 1024) {
            out.extend_from_slice(&meter.feed(chunk));
            max_held = max_held.max(meter.held.len());
        }
        out.extend_from_slice(&meter.finish());
        assert_eq!(out, input.as_bytes());
        assert!(max_held <= MAX_HELD_EVENT + 64 * 1024);
        // The oversized event was not metered; parsing resumed after it.
        assert_eq!(meter.delivered_output_tokens(), count_tokens(MODEL, "ok"));
        assert!(meter.saw_end());

        // An oversized event that arrives in one chunk is still parsed (nothing is held).
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        assert_eq!(&meter.feed(huge.as_bytes())[..], huge.as_bytes());
        assert_eq!(meter.delivered_output_tokens(), count_tokens(MODEL, &big));
    }

    #[test]
    fn content_chunks_are_kept_raw_and_counted_only_when_needed() {
        // a usage key inside the content is escaped and is not a usage object; `"usage": null` is not either
        let tricky = r#"the "usage": {"total_tokens": 5} field"#;
        let mut deltas: Vec<String> = vec![tricky.to_string()];
        // enough chunks to pass RAW_LIMIT several times
        deltas.extend((0..2_000).map(|i| format!(" word{i}")));
        let mut input = String::new();
        for d in &deltas {
            input += &chat_chunk(json!({ "content": d }), None);
        }
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        let out = run(&mut meter, input.as_bytes(), &[]);
        assert_eq!(out, input.as_bytes());
        assert_eq!(meter.reported(), None);
        assert!(meter.raw.len() <= RAW_LIMIT + 256);
        assert!(
            !meter.uncounted.is_empty(),
            "past RAW_LIMIT the deltas were taken out"
        );
        let expected: u64 = deltas.iter().map(|d| count_tokens(MODEL, d)).sum();
        assert_eq!(meter.delivered_output_tokens(), expected);

        // with a usage chunk at the end, the content chunks are never parsed
        let mut meter = StreamMeter::new(Protocol::ChatCompletions, MODEL, true);
        let (stream, deltas) = chat_stream(true);
        let out = run(&mut meter, stream.as_bytes(), &[]);
        assert!(
            !out.windows(9).any(|w| w == b"\"usage\":{"),
            "the usage chunk is stripped"
        );
        assert!(meter.uncounted.is_empty());
        assert_eq!(meter.raw_lengths.len(), deltas.len() + 2);
        assert_eq!(meter.reported().map(|u| u.output_tokens), Some(12));
    }

    #[test]
    fn names_usage_object_finds_only_an_object_value() {
        assert!(names_usage_object(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(names_usage_object(br#"{"usage" :  {"prompt_tokens":1}}"#));
        assert!(names_usage_object(br#"{"usage":null,"x":{"usage":{}}}"#));
        assert!(!names_usage_object(
            br#"{"choices":[{"delta":{"content":"\"usage\":{"}}],"usage":null}"#
        ));
        assert!(!names_usage_object(br#"{"usage":null}"#));
        assert!(!names_usage_object(br#"{"usage""#));
    }

    /// The reading of a usage object through `serde_json::Value` that the typed reader replaced: the oracle.
    fn usage_from_value(value: &Value) -> Option<Usage> {
        fn lenient_u64(value: &Value) -> Option<u64> {
            match value {
                Value::Number(n) => n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                }),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        }
        let obj = value.as_object()?;
        let num = |key: &str| obj.get(key).and_then(lenient_u64);
        let detail = |outer: &str, key: &str| {
            obj.get(outer)
                .and_then(|d| d.get(key))
                .and_then(lenient_u64)
        };
        let input = num("prompt_tokens").or_else(|| num("input_tokens"));
        let output = num("completion_tokens").or_else(|| num("output_tokens"));
        let total = num("total_tokens");
        if input.is_none() && output.is_none() && total.is_none() {
            return None;
        }
        let output_tokens = output.unwrap_or(0);
        let input_tokens =
            input.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(output_tokens));
        let cached = detail("prompt_tokens_details", "cached_tokens")
            .or_else(|| detail("input_tokens_details", "cached_tokens"))
            .unwrap_or(0);
        let reasoning = detail("completion_tokens_details", "reasoning_tokens")
            .or_else(|| detail("output_tokens_details", "reasoning_tokens"))
            .unwrap_or(0);
        Some(Usage {
            input_tokens,
            cached_input_tokens: cached.min(input_tokens),
            output_tokens,
            reasoning_tokens: reasoning.min(output_tokens),
        })
    }

    fn gen_count() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..100_000).prop_map(|n| json!(n)),
            (-50i64..0).prop_map(|n| json!(n)),
            (0.0f64..5000.0).prop_map(|f| json!(f)),
            (-5.0f64..0.0).prop_map(|f| json!(f)),
            (0u64..1000).prop_map(|n| json!(format!(" {n} "))),
            Just(json!("many")),
            Just(json!(null)),
            Just(json!(true)),
            Just(json!([1, 2])),
            Just(json!({"n": 1})),
        ]
    }

    fn gen_details() -> impl Strategy<Value = Value> {
        prop_oneof![
            (gen_count(), gen_count(), any::<bool>()).prop_map(|(c, r, extra)| {
                let mut d = json!({"cached_tokens": c, "reasoning_tokens": r});
                if extra {
                    d["audio_tokens"] = json!(0);
                    d["prompt_tokens"] = json!(99);
                }
                d
            }),
            Just(json!(null)),
            Just(json!([{"cached_tokens": 3}])),
            Just(json!("cached_tokens")),
        ]
    }

    proptest! {
        #[test]
        fn typed_usage_reading_matches_the_value_reading(
            fields in proptest::collection::vec(
                (prop::sample::select(vec![
                    "prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens",
                    "cached_tokens", "other"]), gen_count()),
                0..6),
            details in proptest::collection::vec(
                (prop::sample::select(vec![
                    "prompt_tokens_details", "input_tokens_details", "completion_tokens_details",
                    "output_tokens_details"]), gen_details()),
                0..4),
        ) {
            let mut usage = serde_json::Map::new();
            for (key, value) in fields {
                usage.insert(key.to_string(), value);
            }
            for (key, value) in details {
                usage.insert(key.to_string(), value);
            }
            let usage = Value::Object(usage);
            let expected = usage_from_value(&usage);
            let body = json!({"id": "x", "choices": [], "usage": usage}).to_string();
            prop_assert_eq!(usage_from_json(body.as_bytes()), expected);
            let raw: Box<RawValue> = serde_json::from_str(&usage.to_string()).unwrap();
            prop_assert_eq!(usage_from_raw(&raw), expected);
        }
    }

    /// One generated chat/completions event.
    #[derive(Clone, Debug)]
    enum GenEvent {
        Content(String),
        ToolArgs(String),
        Comment,
        Empty,
    }

    /// Serializes one event: a `data:` line (optionally split over two lines, optionally without the space), an
    /// optional `id:` line, and the given line ending.
    fn encode_event(json: &str, crlf: bool, split: bool, space: bool, id: bool) -> String {
        let nl = if crlf { "\r\n" } else { "\n" };
        let sp = if space { " " } else { "" };
        let mut s = String::new();
        if id {
            s += &format!("id: 7{nl}");
        }
        if split {
            // JSON allows a newline after the opening brace; joined `data:` lines restore it.
            s += &format!("data:{sp}{{{nl}data:{sp}{}{nl}", &json[1..]);
        } else {
            s += &format!("data:{sp}{json}{nl}");
        }
        s + nl
    }

    type Style = (bool, bool, bool, bool);

    fn style() -> impl Strategy<Value = Style> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
    }

    fn gen_event() -> impl Strategy<Value = GenEvent> {
        prop_oneof![
            6 => "\\PC{0,24}".prop_map(GenEvent::Content),
            1 => any::<String>().prop_map(GenEvent::Content),
            2 => "[{}\":, a-z0-9\\\\]{0,16}".prop_map(GenEvent::ToolArgs),
            1 => Just(GenEvent::Comment),
            1 => Just(GenEvent::Empty),
        ]
    }

    struct Built {
        input: Vec<u8>,
        stripped: Vec<u8>,
        tokens: u64,
        usage: Option<Usage>,
    }

    fn build_chat(
        protocol: Protocol,
        events: &[(GenEvent, Style)],
        usage: Option<(u64, u64, u64, u64, Style)>,
        done: Option<bool>,
    ) -> Built {
        let mut input = String::new();
        let mut stripped = String::new();
        let mut tokens = 0;
        for (event, (crlf, split, space, id)) in events {
            let (delta, text) = match (event, protocol) {
                (GenEvent::Content(t), Protocol::Completions) => {
                    (json!({"text": t, "index": 0}), Some(t))
                }
                (GenEvent::Content(t), _) => {
                    (json!({"index": 0, "delta": {"content": t}}), Some(t))
                }
                (GenEvent::ToolArgs(a), _) => (
                    json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": a}}]}}),
                    Some(a),
                ),
                (GenEvent::Comment, _) => {
                    let nl = if *crlf { "\r\n" } else { "\n" };
                    let s = format!(": keep-alive{nl}{nl}");
                    input += &s;
                    stripped += &s;
                    continue;
                }
                (GenEvent::Empty, _) => (
                    json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
                    None,
                ),
            };
            tokens += text.map_or(0, |t| count_tokens(MODEL, t));
            let chunk = json!({"id": "x", "object": "chat.completion.chunk", "choices": [delta], "usage": null});
            let s = encode_event(&chunk.to_string(), *crlf, *split, *space, *id);
            input += &s;
            stripped += &s;
        }
        let mut reported = None;
        if let Some((p, c, cached, r, (crlf, split, space, id))) = usage {
            let chunk = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                "total_tokens": p + c, "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": r}}});
            input += &encode_event(&chunk.to_string(), crlf, split, space, id);
            reported = Some(Usage {
                input_tokens: p,
                cached_input_tokens: cached.min(p),
                output_tokens: c,
                reasoning_tokens: r.min(c),
            });
        }
        if let Some(crlf) = done {
            let s = if crlf {
                "data: [DONE]\r\n\r\n"
            } else {
                "data: [DONE]\n\n"
            };
            input += s;
            stripped += s;
        }
        Built {
            input: input.into_bytes(),
            stripped: stripped.into_bytes(),
            tokens,
            usage: reported,
        }
    }

    fn cuts(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
        let mut cuts: Vec<usize> = picks.iter().map(|p| p.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #[test]
        fn chat_stream_roundtrips_under_any_chunking(
            events in prop::collection::vec((gen_event(), style()), 0..12),
            usage in prop::option::of((0u64..100_000, 0u64..100_000, 0u64..100_000, 0u64..100_000, style())),
            done in prop::option::of(any::<bool>()),
            completions in any::<bool>(),
            strip in any::<bool>(),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let protocol = if completions { Protocol::Completions } else { Protocol::ChatCompletions };
            let built = build_chat(protocol, &events, usage, done);
            let cuts = cuts(built.input.len(), &picks);

            let mut meter = StreamMeter::new(protocol, MODEL, strip);
            let out = run(&mut meter, &built.input, &cuts);
            let expected = if strip { &built.stripped } else { &built.input };
            prop_assert_eq!(&out, expected);
            prop_assert_eq!(meter.reported(), built.usage);
            prop_assert_eq!(meter.delivered_output_tokens(), built.tokens);
            prop_assert_eq!(meter.saw_end(), done.is_some());
            prop_assert!(meter.held.len() <= built.input.len());

            // The same input in one piece and byte by byte meters the same.
            for cuts in [vec![], every_byte(&built.input)] {
                let mut other = StreamMeter::new(protocol, MODEL, strip);
                prop_assert_eq!(&run(&mut other, &built.input, &cuts), expected);
                prop_assert_eq!(other.reported(), meter.reported());
                prop_assert_eq!(other.delivered_output_tokens(), meter.delivered_output_tokens());
            }
        }

        #[test]
        fn responses_stream_roundtrips_under_any_chunking(
            deltas in prop::collection::vec(
                (
                    prop_oneof![
                        Just("response.output_text.delta"),
                        Just("response.refusal.delta"),
                        Just("response.function_call_arguments.delta"),
                        Just("response.reasoning_summary_text.delta"),
                        Just("response.reasoning_text.delta"),
                        Just("response.audio.delta"),
                        Just("response.output_text.done"),
                    ],
                    "\\PC{0,24}",
                    any::<bool>(),
                ),
                0..12,
            ),
            completed in prop::option::of((0u64..100_000, 0u64..100_000)),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let model = "gpt-5";
            let mut input = String::new();
            let mut tokens = 0;
            for (i, (kind, delta, crlf)) in deltas.iter().enumerate() {
                let payload = json!({"type": kind, "sequence_number": i, "item_id": "it", "delta": delta});
                let nl = if *crlf { "\r\n" } else { "\n" };
                input += &format!("event: {kind}{nl}data: {payload}{nl}{nl}");
                if *kind != "response.audio.delta" && *kind != "response.output_text.done" {
                    tokens += count_tokens(model, delta);
                }
            }
            if let Some((i, o)) = completed {
                let payload = json!({"type": "response.completed", "sequence_number": 99,
                    "response": {"status": "completed", "usage": {"input_tokens": i, "output_tokens": o}}});
                input += &format!("event: response.completed\ndata: {payload}\n\n");
            }
            let input = input.into_bytes();
            let mut meter = StreamMeter::new(Protocol::Responses, model, true);
            prop_assert_eq!(&run(&mut meter, &input, &cuts(input.len(), &picks)), &input);
            prop_assert_eq!(meter.delivered_output_tokens(), tokens);
            prop_assert_eq!(
                meter.reported(),
                completed.map(|(i, o)| Usage { input_tokens: i, output_tokens: o, ..Usage::default() })
            );
            prop_assert_eq!(meter.saw_end(), completed.is_some());
        }

        #[test]
        fn arbitrary_bytes_pass_through(
            input in prop::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>()], 0..400),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            protocol in prop_oneof![Just(Protocol::ChatCompletions), Just(Protocol::Completions), Just(Protocol::Responses)],
        ) {
            // Without a usage chunk nothing is removed, whatever the bytes.
            let mut meter = StreamMeter::new(protocol, MODEL, false);
            prop_assert_eq!(run(&mut meter, &input, &cuts(input.len(), &picks)), input);
        }
    }
}
