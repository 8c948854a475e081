//! API keys: generation, digests and the per-request check against the in-memory catalog.
//! Keys are high-entropy, so a plain SHA-256 digest is a safe lookup key; the full key is shown once.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::StatusCode;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::catalog::{ApiKey, Catalog};
use crate::error::ApiError;
use crate::store::now_ms;

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `sk-` followed by 48 random alphanumerics.
pub fn generate_key(prefix: &str) -> String {
    let mut rng = rand::rng();
    let body: String = (0..48)
        .map(|_| KEY_ALPHABET[rng.random_range(0..KEY_ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{body}")
}

pub fn is_well_formed_key(key: &str) -> bool {
    key.strip_prefix("sk-").is_some_and(|rest| {
        rest.len() >= 40
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// What a user may see of a key: its start and its end.
pub fn key_hint(key: &str) -> String {
    let start: String = key.chars().take(6).collect();
    let end: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{start}…{end}")
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolves the calling key from the catalog: 401 when missing or unknown, disabled or expired;
/// 403 when its user is disabled.
pub fn authenticate(catalog: &Catalog, token: Option<&str>) -> Result<Arc<ApiKey>, ApiError> {
    let token = token.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("missing_api_key"),
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        )
    })?;
    let key = catalog
        .key_by_hash(&Sha256::digest(token.as_bytes()).into())
        .ok_or_else(|| {
            ApiError::unauthorized(format!("Incorrect API key provided: {}.", key_hint(token)))
        })?;
    if !key.enabled {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("api_key_disabled"),
            "This API key has been disabled.",
        ));
    }
    if key.expires_at.is_some_and(|t| t <= now_ms()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("api_key_expired"),
            "This API key has expired.",
        ));
    }
    if !key.user_enabled {
        return Err(ApiError::forbidden(
            "account_disabled",
            "The account that owns this API key is disabled.",
        ));
    }
    Ok(key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate_key("sk-");
        let b = generate_key("sk-");
        assert!(is_well_formed_key(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_well_formed_key("sk-short"));
        assert!(!is_well_formed_key(
            "pk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
    }

    #[test]
    fn hint_never_shows_the_middle() {
        let key = "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
        let hint = key_hint(key);
        assert_eq!(hint, "sk-abc…EFGH");
        assert!(!hint.contains("mnop"));
    }

    #[test]
    fn bearer_is_parsed_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer  sk-x ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("sk-x"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
