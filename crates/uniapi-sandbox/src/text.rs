//! Deterministic text helpers: the sandbox's notion of a token (one whitespace-separated word),
//! reply construction, stream splitting, hashing and base64.

/// Characters of the user's text quoted back in a reply.
const SNIPPET_CHARS: usize = 60;
/// Words appended to every reply so even a one-word prompt yields a multi-chunk stream.
const REPLY_TAIL: &str = "— a deterministic answer from the uniapi sandbox.";

/// `"<prefix> <first 60 chars of source>" + tail`, whitespace normalised to single spaces so the
/// word count is the token count.
pub fn reply_text(prefix: &str, source: &str) -> String {
    let snippet: String = source.chars().take(SNIPPET_CHARS).collect();
    let words: Vec<&str> = prefix
        .split_whitespace()
        .chain(snippet.split_whitespace())
        .chain(REPLY_TAIL.split_whitespace())
        .collect();
    words.join(" ")
}

/// Number of sandbox tokens (words) in `text`.
pub fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Keeps at most `max` words; the flag tells whether anything was cut.
pub fn cut_words(text: &str, max: Option<u64>) -> (String, bool) {
    let Some(max) = max else {
        return (text.to_owned(), false);
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let keep = usize::try_from(max).unwrap_or(usize::MAX);
    if words.len() <= keep {
        return (text.to_owned(), false);
    }
    (words[..keep].join(" "), true)
}

/// Splits `text` into at most `chunks` contiguous pieces of whole words whose concatenation is
/// exactly `text` (pieces after the first carry their leading space).
pub fn split_pieces(text: &str, chunks: usize) -> Vec<String> {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Vec::new();
    }
    let k = chunks.clamp(1, words.len());
    let mut pieces = Vec::with_capacity(k);
    for i in 0..k {
        let start = i * words.len() / k;
        let end = (i + 1) * words.len() / k;
        let mut piece = words[start..end].join(" ");
        if i > 0 {
            piece.insert(0, ' ');
        }
        pieces.push(piece);
    }
    pieces
}

/// Prompt tokens for `chars` characters of text: ceil(chars / 4), at least 1.
pub fn prompt_tokens_for_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// FNV-1a, 64 bits: stable across runs and platforms, unlike `DefaultHasher`.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// splitmix64: a cheap way to draw a deterministic sequence from one seed.
pub fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        let text = reply_text("Sandbox reply to:", "hello   there\nworld");
        for k in [1, 2, 3, 8, 100] {
            let pieces = split_pieces(&text, k);
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len(), k.min(word_count(&text) as usize));
        }
        assert!(split_pieces("", 8).is_empty());
    }

    #[test]
    fn cut_words_keeps_the_first_words() {
        assert_eq!(cut_words("a b c d", Some(2)), ("a b".to_owned(), true));
        assert_eq!(cut_words("a b", Some(2)), ("a b".to_owned(), false));
        assert_eq!(cut_words("a b", None), ("a b".to_owned(), false));
    }

    #[test]
    fn prompt_tokens_round_up_with_minimum_one() {
        assert_eq!(prompt_tokens_for_chars(0), 1);
        assert_eq!(prompt_tokens_for_chars(4), 1);
        assert_eq!(prompt_tokens_for_chars(5), 2);
    }
}
