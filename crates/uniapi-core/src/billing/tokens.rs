//! Token counting with a model's tokenizer, and prompt-size estimates of OpenAI request bodies.
//!
//! Counting uses the embedded tiktoken encodings through the compact counter of [`super::bpe`] (no download). Long texts are tokenized in segments of at most
//! [`SEGMENT_BYTES`]: the tokenizer's regex pre-split can overflow its backtracking stack on very long runs (a megabyte
//! of spaces makes `encode_ordinary` panic), and segments keep the work linear. Segments are cut, whenever the window
//! allows it, just before an ASCII space that follows a non-whitespace character: no pre-split piece of either encoding
//! spans such a point, so the count is exactly the one of the whole text. Only a window without any such point (a
//! pathological run without spaces) is cut at a character boundary, which may shift the count by a token per cut.
//!
//! [`estimate_prompt_tokens`] walks the request body with serde visitors over the borrowed bytes (no `Value` DOM);
//! every JSON shape is accepted leniently and anything unexpected counts 0.

use std::fmt;

use super::bpe::{self, Bpe};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Largest piece of text handed to the tokenizer at once.
const SEGMENT_BYTES: usize = 16 * 1024;
/// Flat estimate of one image content part.
pub const IMAGE_PART_TOKENS: u64 = 1_000;
/// Per-message overhead of the chat format (role, separators).
const TOKENS_PER_MESSAGE: u64 = 4;
/// Overhead of the primed assistant reply.
const TOKENS_PER_REPLY: u64 = 3;

/// Counts tokens of `text` with the tokenizer of `model`: o200k_base for gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*,
/// o3*, o4*, chatgpt-*, omni-*; cl100k_base for gpt-4 (non-o), gpt-3.5*, text-embedding-*; o200k_base for anything
/// else. A provider prefix (`openai/gpt-4`) is ignored and names compare case-insensitively.
pub fn count_tokens(model: &str, text: &str) -> u64 {
    count_with(tokenizer_for(model), text)
}

/// The tokenizer (a process-wide singleton) used for `model`; see [`count_tokens`].
pub(crate) fn tokenizer_for(model: &str) -> &'static Bpe {
    tokenizer_getter(model)()
}

/// How to get the tokenizer of `model` without loading it yet: the encodings take tens of megabytes
/// and about 100 ms to build, and the request path needs them only when an upstream reports no usage
/// or a prompt is long.
pub(crate) fn tokenizer_getter(model: &str) -> fn() -> &'static Bpe {
    let name = model.rsplit('/').next().unwrap_or(model);
    const O200K: [&str; 9] = [
        "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-", "omni-",
    ];
    const CL100K: [&str; 4] = ["gpt-4", "gpt-3.5", "gpt-35-", "text-embedding-"];
    if O200K.iter().any(|p| starts_with_ignore_case(name, p)) {
        bpe::o200k_base
    } else if CL100K.iter().any(|p| starts_with_ignore_case(name, p)) {
        bpe::cl100k_base
    } else {
        bpe::o200k_base
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Counts `text` with `bpe`, segment by segment (see the module documentation).
pub(crate) fn count_with(bpe: &Bpe, text: &str) -> u64 {
    count_segmented(bpe, text, SEGMENT_BYTES)
}

fn count_segmented(bpe: &Bpe, text: &str, max_segment: usize) -> u64 {
    let mut rest = text;
    let mut total = 0u64;
    while !rest.is_empty() {
        let (cut, _exact) = segment_end(rest, max_segment);
        let (segment, tail) = rest.split_at(cut);
        total = total.saturating_add(bpe.count(segment) as u64);
        rest = tail;
    }
    total
}

/// Where the first segment of `text` ends, and whether that point is one no tokenizer piece spans.
fn segment_end(text: &str, max_segment: usize) -> (usize, bool) {
    if text.len() <= max_segment {
        return (text.len(), true);
    }
    let limit = text.floor_char_boundary(max_segment.max(4));
    let bytes = text.as_bytes();
    let mut i = limit;
    while i > 1 {
        i -= 1;
        // A space byte is always a char boundary; the char before it must not be whitespace.
        if bytes[i] == b' '
            && text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace())
        {
            return (i, true);
        }
    }
    (limit, false)
}

/// Upper-bound-ish prompt token estimate of an OpenAI request body for reservation: for chat `messages` (every text in
/// `content` strings and text parts, plus `name`s, plus 4 tokens per message + 3), `prompt` (string or array of
/// strings; token arrays count their length), `input` (string, array of strings, token arrays, or Responses input
/// items with text content parts), `instructions`, and the JSON text of `tools`/`functions` if present. Images in
/// content parts count a flat 1,000 tokens each. Returns 0 for a body that is not JSON. Must not panic on any input.
///
/// Beyond the list above, message/item `tool_calls`/`function_call` (as JSON text), `arguments`, `output`, `refusal`
/// and reasoning `summary` texts are counted too, and every object of an `input` array adds the 4-token overhead.
pub fn estimate_prompt_tokens(model: &str, body: &[u8]) -> u64 {
    walk_body(model, body, false)
}

/// Texts up to this size count as their UTF-8 length in [`bound_prompt_tokens`].
pub const BOUND_EXACT_ABOVE: usize = 8 * 1024;

/// A cheap upper bound of [`estimate_prompt_tokens`] for the reservation: a text of at most
/// [`BOUND_EXACT_ABOVE`] bytes counts its byte length (a token covers at least one byte, so this never
/// falls below the exact count), a longer one is counted exactly (where the difference would matter
/// for money). Short prompts, the common case, never load or run the tokenizer.
pub fn bound_prompt_tokens(model: &str, body: &[u8]) -> u64 {
    walk_body(model, body, true)
}

fn walk_body(model: &str, body: &[u8], bound: bool) -> u64 {
    let walk = Walk {
        tokenizer: tokenizer_getter(model),
        bound,
        node: Node::Body,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    match walk.deserialize(&mut de) {
        Ok(total) if de.end().is_ok() => total,
        _ => 0,
    }
}

/// What the value being visited is, which decides what of it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    /// The request body.
    Body,
    /// Chat `messages`.
    Messages,
    /// One chat message.
    Message,
    /// A `content`-like value: string or array of parts.
    Content,
    /// One content part (`{"type":"text","text":..}`, an image, ..).
    Part,
    /// `prompt` / `input`: string, array of strings, token arrays or items.
    Prompt,
    /// One element of a `prompt` / `input` array.
    PromptItem,
    /// A token array (numbers count one each).
    Tokens,
    /// A plain text field.
    Text,
    /// A `type` field: counts 1 when it names an image part.
    ImageTag,
}

/// A lenient visitor over any JSON value; returns the tokens counted in it.
#[derive(Clone, Copy)]
struct Walk {
    tokenizer: fn() -> &'static Bpe,
    /// Count short texts by their length (an upper bound) instead of tokenizing them.
    bound: bool,
    node: Node,
}

impl Walk {
    fn at(self, node: Node) -> Walk {
        Walk { node, ..self }
    }

    fn walk_map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut total = 0u64;
        let mut image = false;
        while let Some(field) = map.next_key::<Field>()? {
            let add = match (self.node, field) {
                (Node::Body, Field::Messages) => map.next_value_seed(self.at(Node::Messages))?,
                (Node::Body, Field::Prompt | Field::Input) => {
                    map.next_value_seed(self.at(Node::Prompt))?
                }
                (Node::Body, Field::Instructions) => map.next_value_seed(self.at(Node::Content))?,
                (Node::Body, Field::Tools | Field::Functions) => {
                    self.raw(map.next_value::<&RawValue>()?)
                }
                (Node::Body, _) => map.next_value::<IgnoredAny>().map(|_| 0)?,
                (_, Field::Content | Field::Output | Field::Summary) => {
                    map.next_value_seed(self.at(Node::Content))?
                }
                (_, Field::Text | Field::Name | Field::Arguments | Field::Refusal) => {
                    map.next_value_seed(self.at(Node::Text))?
                }
                (_, Field::ToolCalls | Field::FunctionCall) => {
                    self.raw(map.next_value::<&RawValue>()?)
                }
                (_, Field::Type) => {
                    image |= map.next_value_seed(self.at(Node::ImageTag))? > 0;
                    0
                }
                (_, Field::ImageUrl) => {
                    image = true;
                    map.next_value::<IgnoredAny>().map(|_| 0)?
                }
                _ => map.next_value::<IgnoredAny>().map(|_| 0)?,
            };
            total = total.saturating_add(add);
        }
        let overhead = match self.node {
            Node::Message | Node::PromptItem => TOKENS_PER_MESSAGE,
            _ => 0,
        };
        let image = if image && self.node != Node::Body {
            IMAGE_PART_TOKENS
        } else {
            0
        };
        Ok(total.saturating_add(overhead).saturating_add(image))
    }

    fn raw(self, raw: &RawValue) -> u64 {
        self.count(raw.get())
    }

    fn count(self, text: &str) -> u64 {
        if self.bound && text.len() <= BOUND_EXACT_ABOVE {
            text.len() as u64
        } else {
            count_with((self.tokenizer)(), text)
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u64, E> {
        self.visit_u64(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u64, E> {
        self.visit_u64(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u64, E> {
        Ok(match self.node {
            Node::PromptItem | Node::Tokens => 1,
            _ => 0,
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        Ok(match self.node {
            Node::Content
            | Node::Part
            | Node::Prompt
            | Node::PromptItem
            | Node::Tokens
            | Node::Text => self.count(v),
            Node::ImageTag => u64::from(matches!(v, "image_url" | "input_image" | "image")),
            Node::Body | Node::Messages | Node::Message => 0,
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let element = match self.node {
            Node::Messages => Some(Node::Message),
            Node::Content => Some(Node::Part),
            Node::Prompt => Some(Node::PromptItem),
            Node::PromptItem | Node::Tokens => Some(Node::Tokens),
            Node::Body | Node::Message | Node::Part | Node::Text | Node::ImageTag => None,
        };
        let Some(element) = element else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(0);
        };
        let mut total = if self.node == Node::Messages {
            TOKENS_PER_REPLY
        } else {
            0
        };
        while let Some(n) = seq.next_element_seed(self.at(element))? {
            total = total.saturating_add(n);
        }
        Ok(total)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let as_node = match self.node {
            Node::Body | Node::Message | Node::Part | Node::PromptItem => Some(self.node),
            // A lone object where an array of parts/items is expected.
            Node::Content => Some(Node::Part),
            Node::Prompt => Some(Node::PromptItem),
            Node::Messages | Node::Tokens | Node::Text | Node::ImageTag => None,
        };
        match as_node {
            Some(node) => self.at(node).walk_map(map),
            None => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(0)
            }
        }
    }
}

/// Object keys the walk cares about (deserialized without allocating).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Messages,
    Prompt,
    Input,
    Instructions,
    Tools,
    Functions,
    Content,
    Output,
    Summary,
    Text,
    Name,
    Arguments,
    Refusal,
    ToolCalls,
    FunctionCall,
    Type,
    ImageUrl,
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(match v {
            "messages" => Field::Messages,
            "prompt" => Field::Prompt,
            "input" => Field::Input,
            "instructions" => Field::Instructions,
            "tools" => Field::Tools,
            "functions" => Field::Functions,
            "content" => Field::Content,
            "output" => Field::Output,
            "summary" => Field::Summary,
            "text" => Field::Text,
            "name" => Field::Name,
            "arguments" => Field::Arguments,
            "refusal" => Field::Refusal,
            "tool_calls" => Field::ToolCalls,
            "function_call" => Field::FunctionCall,
            "type" => Field::Type,
            "image_url" => Field::ImageUrl,
            _ => Field::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn o200k() -> &'static Bpe {
        bpe::o200k_base()
    }

    fn cl100k() -> &'static Bpe {
        bpe::cl100k_base()
    }

    /// tiktoken's count of the whole text (no segments) with the encoding `bpe` implements: the oracle.
    fn whole(bpe: &Bpe, text: &str) -> u64 {
        let tiktoken = if std::ptr::eq(bpe, o200k()) {
            tiktoken_rs::o200k_base_singleton()
        } else {
            tiktoken_rs::cl100k_base_singleton()
        };
        tiktoken.encode_ordinary(text).len() as u64
    }

    #[test]
    fn tokenizer_selection() {
        // A text the two encodings count differently.
        let text = "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ 東京タワー 12345";
        let o = o200k().count(text) as u64;
        let c = cl100k().count(text) as u64;
        assert_ne!(o, c, "test text must separate the encodings");
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1-2025-04-14",
            "gpt-4.5-preview",
            "gpt-5",
            "gpt-5-mini",
            "o1",
            "o1-mini",
            "o3-pro",
            "o4-mini",
            "chatgpt-4o-latest",
            "omni-moderation-latest",
            "claude-3-5-sonnet",
            "deepseek-chat",
            "",
            "GPT-4O",
            "openai/gpt-4o",
        ] {
            assert_eq!(count_tokens(m, text), o, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-4-turbo",
            "gpt-4-32k",
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-instruct",
            "gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
            "openai/gpt-4-turbo",
            "GPT-4",
        ] {
            assert_eq!(count_tokens(m, text), c, "{m}");
        }
    }

    #[test]
    fn counts_match_tiktoken() {
        assert_eq!(count_tokens("gpt-4o", ""), 0);
        assert_eq!(count_tokens("gpt-4o", "Hello there!"), 3);
        assert_eq!(count_tokens("gpt-4", "hello world"), 2);
    }

    #[test]
    fn long_text_is_exact_across_segments() {
        let sentence = "The quick brown fox, naïvely — jumps over 1234567 lazy dogs; 東京 is big.\n\tNext  line!  ";
        let text = sentence.repeat(2_000); // ~180 KB, many segments
        assert!(text.len() > 5 * SEGMENT_BYTES);
        for bpe in [o200k(), cl100k()] {
            assert_eq!(count_with(bpe, &text), whole(bpe, &text));
        }
    }

    #[test]
    fn pathological_runs_do_not_panic() {
        for unit in [
            " ", "a", "^", "0", "\n", " \n", "\t", "\u{3000}", "中", "'s", "\r\n", " a",
        ] {
            // 512 KB: dozens of segments, each one a run the pre-split regex must not choke on
            let text = unit.repeat((1 << 19) / unit.len());
            for bpe in [o200k(), cl100k()] {
                let n = count_with(bpe, &text);
                assert!(n > 0, "{unit:?}");
            }
        }
    }

    #[test]
    fn segment_cuts_are_char_boundaries() {
        let text = "é".repeat(100) + &"中".repeat(100);
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let (cut, _) = segment_end(rest, 7);
            assert!(cut > 0 && rest.is_char_boundary(cut));
            rest = &rest[cut..];
        }
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z]{1,12}",
            "[0-9]{1,8}",
            "[.,;:!?'\"/(){}-]{1,3}",
            "\\PC{1,6}",
            Just("'s".to_string()),
            Just("東京".to_string()),
        ]
    }

    fn separator() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => Just(" ".to_string()),
            1 => Just("  ".to_string()),
            1 => Just("\n".to_string()),
            1 => Just(" \n ".to_string()),
            1 => Just("\t".to_string()),
            1 => Just("\u{3000}".to_string()),
            1 => Just(String::new()),
        ]
    }

    #[test]
    fn short_texts_bound_by_their_length_and_long_ones_count_exactly() {
        let short = json!({"messages": [{"role": "user", "content": "Hello there"}]});
        let body = serde_json::to_vec(&short).unwrap();
        // 11 bytes of text, 4 per message, 3 for the reply
        assert_eq!(bound_prompt_tokens("gpt-4o", &body), 11 + 4 + 3);
        let text = "hello world ".repeat(2_000); // 24,000 bytes: past the bound's limit
        let long =
            serde_json::to_vec(&json!({"messages": [{"role": "user", "content": text}]})).unwrap();
        assert_eq!(
            bound_prompt_tokens("gpt-4o", &long),
            estimate_prompt_tokens("gpt-4o", &long)
        );
    }

    proptest! {
        #[test]
        fn segmented_count_is_exact_at_exact_cuts(
            parts in prop::collection::vec((word(), separator()), 0..120),
            seg in 8usize..64,
        ) {
            let text: String = parts.into_iter().map(|(w, s)| w + &s).collect();
            let mut rest = text.as_str();
            let mut all_exact = true;
            while !rest.is_empty() {
                let (cut, exact) = segment_end(rest, seg);
                all_exact &= exact;
                rest = &rest[cut..];
            }
            if all_exact {
                for bpe in [o200k(), cl100k()] {
                    prop_assert_eq!(
                        count_segmented(bpe, &text, seg),
                        whole(bpe, &text)
                    );
                }
            }
        }

        /// The reservation's bound never falls below the exact count, whatever the texts.
        #[test]
        fn the_bound_is_never_below_the_exact_count(
            parts in prop::collection::vec((word(), separator()), 0..200),
            copies in 1usize..60,
        ) {
            let text: String = parts.into_iter().map(|(w, s)| w + &s).collect();
            let long = text.repeat(copies);
            for content in [text.as_str(), long.as_str()] {
                let body = serde_json::to_vec(&json!({
                    "messages": [{"role": "user", "content": content}, {"role": "user", "content": [{"type": "text", "text": content}]}],
                    "tools": [{"type": "function", "function": {"name": "f", "description": content}}],
                })).unwrap();
                for model in ["gpt-4o", "gpt-4"] {
                    prop_assert!(bound_prompt_tokens(model, &body) >= estimate_prompt_tokens(model, &body));
                }
            }
        }

        #[test]
        fn estimate_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = estimate_prompt_tokens("gpt-4o", &body);
        }

        #[test]
        fn estimate_never_panics_on_json(value in arb_json()) {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            let _ = estimate_prompt_tokens("gpt-4o", &body);
            for key in ["messages", "prompt", "input", "instructions", "tools"] {
                let body = serde_json::to_vec(&json!({ key: value.clone() })).unwrap_or_default();
                let _ = estimate_prompt_tokens("gpt-4", &body);
                let body = serde_json::to_vec(&json!({ "messages": [{ "role": "user", "content": value.clone() }] }))
                    .unwrap_or_default();
                let _ = estimate_prompt_tokens("gpt-4", &body);
                let body = serde_json::to_vec(&json!({ "input": [{ "role": "user", "content": [value.clone()] }] }))
                    .unwrap_or_default();
                let _ = estimate_prompt_tokens("gpt-4", &body);
            }
        }

        #[test]
        fn estimate_bounds_chat_texts(
            messages in prop::collection::vec(
                (
                    prop_oneof![Just("system"), Just("user"), Just("assistant")],
                    prop::collection::vec("\\PC{0,40}", 1..4),
                    any::<bool>(),
                    prop::option::of("[a-z_]{1,10}"),
                ),
                1..6,
            ),
            model in prop_oneof![Just("gpt-4o"), Just("gpt-4"), Just("gpt-3.5-turbo")],
        ) {
            let mut all = String::new();
            let mut msgs = Vec::new();
            for (role, texts, as_parts, name) in &messages {
                let mut msg = if *as_parts {
                    let parts: Vec<_> = texts.iter().map(|t| json!({"type": "text", "text": t})).collect();
                    json!({"role": role, "content": parts})
                } else {
                    json!({"role": role, "content": texts.concat()})
                };
                if let Some(name) = name {
                    msg["name"] = json!(name);
                }
                all.push_str(&texts.concat());
                msgs.push(msg);
            }
            let body = serde_json::to_vec(&json!({"model": model, "messages": msgs})).unwrap_or_default();
            let estimate = estimate_prompt_tokens(model, &body);
            prop_assert!(estimate >= count_tokens(model, &all), "{} < {}", estimate, count_tokens(model, &all));
            prop_assert!(estimate >= TOKENS_PER_MESSAGE * messages.len() as u64 + TOKENS_PER_REPLY);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("text"),
                Just("image_url"),
                Just("input_image"),
                Just("message")
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("role".to_string()),
                            Just("content".to_string()),
                            Just("text".to_string()),
                            Just("type".to_string()),
                            Just("image_url".to_string()),
                            Just("name".to_string()),
                            Just("tool_calls".to_string()),
                            Just("output".to_string()),
                            "[a-z]{1,6}",
                        ],
                        inner
                    ),
                    0..8
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn est(model: &str, body: serde_json::Value) -> u64 {
        estimate_prompt_tokens(model, &serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn estimate_shapes() {
        let m = "gpt-4o";
        let c = |s: &str| count_tokens(m, s);
        assert_eq!(estimate_prompt_tokens(m, b"not json"), 0);
        assert_eq!(estimate_prompt_tokens(m, b""), 0);
        assert_eq!(estimate_prompt_tokens(m, b"[1,2,3]"), 0);
        assert_eq!(estimate_prompt_tokens(m, b"\"text\""), 0);
        assert_eq!(estimate_prompt_tokens(m, br#"{"prompt":"hi"} trailing"#), 0);
        assert_eq!(est(m, json!({})), 0);

        // Chat: strings, text parts, names, images, overheads.
        let body = json!({"model": m, "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
                {"image_url": {"url": "https://x/y.png"}, "type": "image_url"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        ]});
        // `json!` objects serialize with sorted keys; the raw text is counted as it appears in the body.
        let tool_calls = serde_json::to_string(
            &json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
        )
        .unwrap();
        let expected = c("You are helpful.")
            + c("alice")
            + c("What is in this image?")
            + 2 * IMAGE_PART_TOKENS
            + c(&tool_calls)
            + 3 * TOKENS_PER_MESSAGE
            + TOKENS_PER_REPLY;
        assert_eq!(est(m, body), expected);

        // Tools and functions count their JSON text as sent.
        let raw = br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather"}}],"functions":[{"name":"x"}]}"#;
        let expected = c("hi")
            + TOKENS_PER_MESSAGE
            + TOKENS_PER_REPLY
            + c(r#"[{"type":"function","function":{"name":"get_weather"}}]"#)
            + c(r#"[{"name":"x"}]"#);
        assert_eq!(estimate_prompt_tokens(m, raw), expected);

        // Completions prompt: string, array of strings, token arrays.
        assert_eq!(
            est(m, json!({"prompt": "Say this is a test"})),
            c("Say this is a test")
        );
        assert_eq!(
            est(m, json!({"prompt": ["one two", "three"]})),
            c("one two") + c("three")
        );
        assert_eq!(est(m, json!({"prompt": [1, 2, 3, 4]})), 4);
        assert_eq!(est(m, json!({"prompt": [[1, 2], [3, 4, 5]]})), 5);

        // Embeddings input.
        assert_eq!(
            est(
                "text-embedding-3-small",
                json!({"input": "The food was delicious"})
            ),
            count_tokens("text-embedding-3-small", "The food was delicious")
        );
        assert_eq!(est(m, json!({"input": ["a b", "c"]})), c("a b") + c("c"));
        assert_eq!(est(m, json!({"input": [[10, 20, 30]]})), 3);

        // Responses: instructions + string input; item input with parts.
        assert_eq!(
            est(
                m,
                json!({"instructions": "Be brief.", "input": "Tell me a story"})
            ),
            c("Be brief.") + c("Tell me a story")
        );
        let body = json!({"input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Describe"},
                {"type": "input_image", "image_url": "https://x/y.png"},
                {"type": "input_image", "file_id": "file_1"}
            ]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "42 degrees"}
        ]});
        let expected = c("Describe")
            + 2 * IMAGE_PART_TOKENS
            + c("Sure")
            + c("42 degrees")
            + 3 * TOKENS_PER_MESSAGE;
        assert_eq!(est(m, body), expected);

        // Unexpected shapes count 0 instead of failing (a lone object as `prompt` is taken as one item).
        assert_eq!(
            est(
                m,
                json!({"messages": "hi", "input": true, "instructions": 5})
            ),
            0
        );
        assert_eq!(est(m, json!({"prompt": {"x": 1}})), TOKENS_PER_MESSAGE);
        assert_eq!(
            est(
                m,
                json!({"messages": [1, "x", null, {"content": {"text": 7}}]})
            ),
            TOKENS_PER_REPLY + TOKENS_PER_MESSAGE
        );
    }
}
