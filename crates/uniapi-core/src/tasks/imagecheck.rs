//! Checks on images that clients send inline: a URL is taken as it is (the upstream fetches it), inline
//! base64 (raw, or a `data:` URL) must decode to a real image, and uploaded bytes must be an image.
//! Refusing here keeps bad input from costing anything or reaching an upstream.

/// Whether `bytes` start like an image format the providers take (PNG, JPEG, WebP, GIF, ...).
pub fn is_image(bytes: &[u8]) -> bool {
    !bytes.is_empty() && imagesize::image_type(bytes).is_ok()
}

/// Whether `value` is an http(s) URL or base64 of an image; the error says what is wrong.
pub fn url_or_base64_image(value: &str) -> Result<(), &'static str> {
    let value = value.trim();
    if value.is_empty() {
        return Err("is empty");
    }
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(());
    }
    let encoded = match value.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, data)) => data,
            None => return Err("is a data URL without base64 content"),
        },
        None => value,
    };
    match decode_base64(encoded) {
        Some(bytes) if is_image(&bytes) => Ok(()),
        Some(_) => Err("is base64 that does not decode to an image"),
        None => Err("is neither an http(s) URL nor base64"),
    }
}

/// Standard or URL-safe base64, padding optional, whitespace ignored; `None` when it is not base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let clean = clean
        .strip_suffix(b"==")
        .or_else(|| clean.strip_suffix(b"="))
        .unwrap_or(&clean);
    if clean.is_empty() || clean.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Base64url without padding (JWT segments).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for shift in [18u32, 12, 6, 0].into_iter().take(chunk.len() + 1) {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 PNG.
    const PNG: &[u8] = &[
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0,
        0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0,
    ];

    fn standard(bytes: &[u8]) -> String {
        base64url(bytes).replace('-', "+").replace('_', "/")
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn decoding_round_trips_with_and_without_padding() {
        for text in [&b"f"[..], b"fo", b"foo", b"foob", b"fooba", b"foobar", PNG] {
            let encoded = standard(text);
            assert_eq!(decode_base64(&encoded).as_deref(), Some(text));
            let padded = format!("{encoded}{}", "=".repeat((4 - encoded.len() % 4) % 4));
            assert_eq!(decode_base64(&padded).as_deref(), Some(text));
        }
        assert_eq!(decode_base64("not base64!"), None);
        assert_eq!(decode_base64("a"), None);
    }

    #[test]
    fn inline_images_must_be_images() {
        assert!(url_or_base64_image("https://example.com/a.png").is_ok());
        assert!(url_or_base64_image(&standard(PNG)).is_ok());
        assert!(url_or_base64_image(&format!("data:image/png;base64,{}", standard(PNG))).is_ok());
        assert!(url_or_base64_image(&standard(b"plain text, not a picture")).is_err());
        assert!(url_or_base64_image("not base64 at all!").is_err());
        assert!(url_or_base64_image("").is_err());
    }
}
