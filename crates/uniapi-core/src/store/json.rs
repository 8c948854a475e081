//! The JSON text of the two structured columns every request log carries (`cost_detail` and
//! `attempts`), written by hand. serde_json's derived serializers spent ~5.8k instructions a request on
//! them in the write-behind batch (callgrind, `bench/README.md`), on the core that serves requests; the
//! text is the same byte for byte (property tests below compare the two), so stored logs read back as
//! before.

use crate::billing::{Basis, Charge, Units};
use crate::catalog::Price;

use super::logs::Attempt;

/// `serde_json::to_string(charge)`, written directly.
pub(crate) fn charge(charge: &Charge) -> String {
    let mut out = String::with_capacity(320);
    out.push_str("{\"units\":");
    units(&mut out, &charge.units);
    out.push_str(",\"basis\":");
    out.push_str(match charge.basis {
        Basis::Reported => "\"reported\"",
        Basis::Counted => "\"counted\"",
        Basis::Request => "\"request\"",
        Basis::Nothing => "\"nothing\"",
    });
    field(&mut out, ",\"cost_nano\":", charge.cost_nano);
    field(&mut out, ",\"cache_nano\":", charge.cache_nano);
    out.push_str(",\"price\":");
    price(&mut out, &charge.price);
    out.push('}');
    out
}

/// `serde_json::to_string(attempts)`, written directly.
pub(crate) fn attempts(attempts: &[Attempt]) -> String {
    let mut out = String::with_capacity(2 + attempts.len() * 112);
    out.push('[');
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(&mut out, "{\"channel_id\":", a.channel_id);
        out.push_str(",\"channel\":");
        string(&mut out, &a.channel);
        out.push_str(",\"key_hint\":");
        string(&mut out, &a.key_hint);
        out.push_str(",\"status\":");
        match a.status {
            Some(status) => out.push_str(itoa::Buffer::new().format(status)),
            None => out.push_str("null"),
        }
        out.push_str(",\"error\":");
        match &a.error {
            Some(error) => string(&mut out, error),
            None => out.push_str("null"),
        }
        field(&mut out, ",\"elapsed_ms\":", a.elapsed_ms);
        out.push('}');
    }
    out.push(']');
    out
}

fn units(out: &mut String, u: &Units) {
    field(out, "{\"input_tokens\":", u.input_tokens);
    field(out, ",\"cached_input_tokens\":", u.cached_input_tokens);
    field(out, ",\"output_tokens\":", u.output_tokens);
    field(out, ",\"reasoning_tokens\":", u.reasoning_tokens);
    field(out, ",\"images\":", u.images);
    field(out, ",\"chars\":", u.chars);
    field(out, ",\"audio_ms\":", u.audio_ms);
    field(out, ",\"calls\":", u.calls);
    out.push('}');
}

/// The fields `Price` serializes: each `None` left out, `free` always there.
fn price(out: &mut String, p: &Price) {
    out.push('{');
    let mut first = true;
    let mut optional = |out: &mut String, name: &str, value: Option<i64>| {
        if let Some(value) = value {
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(itoa::Buffer::new().format(value));
        }
    };
    optional(out, "input_per_mtok", p.input_per_mtok);
    optional(out, "output_per_mtok", p.output_per_mtok);
    optional(out, "cached_input_per_mtok", p.cached_input_per_mtok);
    optional(out, "per_call", p.per_call);
    optional(out, "per_image", p.per_image);
    optional(out, "per_mchar", p.per_mchar);
    optional(out, "per_audio_minute", p.per_audio_minute);
    if !first {
        out.push(',');
    }
    out.push_str(if p.free {
        "\"free\":true"
    } else {
        "\"free\":false"
    });
    if let Some(max) = p.max_output_tokens {
        field(out, ",\"max_output_tokens\":", max);
    }
    out.push('}');
}

/// `key` (with its punctuation) and an integer.
fn field(out: &mut String, key: &str, value: impl itoa::Integer) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(value));
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, control characters as `\b`, `\t`,
/// `\n`, `\f`, `\r` or `\u00XX` (lower-case hex), everything else (DEL and non-ASCII too) as is.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\x08' => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\x0c' => "\\f",
            b'\r' => "\\r",
            0..=0x1f => "",
            _ => continue,
        };
        // every byte escaped is ASCII, so `start..i` ends on a character boundary
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_units() -> impl Strategy<Value = Units> {
        prop::array::uniform8(prop_oneof![Just(0u64), any::<u64>(), 0u64..1000]).prop_map(|v| {
            Units {
                input_tokens: v[0],
                cached_input_tokens: v[1],
                output_tokens: v[2],
                reasoning_tokens: v[3],
                images: v[4],
                chars: v[5],
                audio_ms: v[6],
                calls: v[7],
            }
        })
    }

    fn any_price() -> impl Strategy<Value = Price> {
        (
            prop::array::uniform7(prop::option::of(any::<i64>())),
            any::<bool>(),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(v, free, max_output_tokens)| Price {
                input_per_mtok: v[0],
                output_per_mtok: v[1],
                cached_input_per_mtok: v[2],
                per_call: v[3],
                per_image: v[4],
                per_mchar: v[5],
                per_audio_minute: v[6],
                free,
                max_output_tokens,
            })
    }

    fn any_charge() -> impl Strategy<Value = Charge> {
        let basis = prop_oneof![
            Just(Basis::Reported),
            Just(Basis::Counted),
            Just(Basis::Request),
            Just(Basis::Nothing)
        ];
        (any_units(), basis, any::<i64>(), any::<i64>(), any_price()).prop_map(
            |(units, basis, cost_nano, cache_nano, price)| Charge {
                units,
                basis,
                cost_nano,
                cache_nano,
                price,
            },
        )
    }

    /// Strings as logs hold them (names, key hints, upstream error texts): mostly plain, with
    /// quotes, backslashes, every control character, DEL and multi-byte characters mixed in.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 -]{0,12}",
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    (0u8..0x20).prop_map(char::from),
                    Just('"'),
                    Just('\\'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('\u{2028}'),
                    Just('😀'),
                    Just('a'),
                ],
                0..16
            )
            .prop_map(|chars| chars.into_iter().collect()),
        ]
    }

    fn any_attempt() -> impl Strategy<Value = Attempt> {
        (
            any::<i64>(),
            any_text(),
            any_text(),
            prop::option::of(any::<u16>()),
            prop::option::of(any_text()),
            any::<u64>(),
        )
            .prop_map(
                |(channel_id, channel, key_hint, status, error, elapsed_ms)| Attempt {
                    channel_id,
                    channel,
                    key_hint,
                    status,
                    error,
                    elapsed_ms,
                },
            )
    }

    proptest! {
        #[test]
        fn a_charge_is_written_as_serde_json_writes_it(c in any_charge()) {
            prop_assert_eq!(charge(&c), serde_json::to_string(&c).unwrap());
        }

        #[test]
        fn attempts_are_written_as_serde_json_writes_them(a in prop::collection::vec(any_attempt(), 0..4)) {
            prop_assert_eq!(attempts(&a), serde_json::to_string(&a).unwrap());
        }
    }

    #[test]
    fn every_control_character_is_escaped_as_serde_json_escapes_it() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = String::new();
        string(&mut out, &all);
        assert_eq!(out, serde_json::to_string(&all).unwrap());
    }
}
