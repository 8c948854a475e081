//! Jimeng (即梦) upstream: the Volcengine visual API, `{base}/?Action=CVSync2AsyncSubmitTask|
//! CVSync2AsyncGetResult&Version=2022-08-31`, each call signed HMAC-SHA256 (Volcengine V4, region
//! `cn-north-1`, service `cv`) from a channel key written `ACCESS_KEY|SECRET_KEY`.

use sha2::{Digest, Sha256};

pub const VERSION: &str = "2022-08-31";
pub const SUBMIT: &str = "CVSync2AsyncSubmitTask";
pub const GET_RESULT: &str = "CVSync2AsyncGetResult";
const REGION: &str = "cn-north-1";
const SERVICE: &str = "cv";

/// HMAC-SHA256 (RFC 2104) over sha2's SHA-256.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `ACCESS_KEY|SECRET_KEY`.
pub fn split_key(secret: &str) -> Option<(&str, &str)> {
    let (ak, sk) = secret.split_once('|')?;
    let (ak, sk) = (ak.trim(), sk.trim());
    (!ak.is_empty() && !sk.is_empty()).then_some((ak, sk))
}

/// `YYYYMMDDTHHMMSSZ` for unix seconds (UTC).
pub fn x_date(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The headers of a signed call: `X-Date`, `X-Content-Sha256` and `Authorization`.
pub struct Signed {
    pub x_date: String,
    pub content_sha256: String,
    pub authorization: String,
}

/// Signs `POST {path}?{query}` with `body` for `host` (as the `Host` header will carry it).
pub fn sign(
    access_key: &str,
    secret_key: &str,
    host: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    unix_secs: u64,
) -> Signed {
    let date = x_date(unix_secs);
    let short = &date[..8];
    let content_sha256 = hex::encode(Sha256::digest(body));
    let mut query: Vec<(&str, &str)> = query.to_vec();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let signed_headers = "content-type;host;x-content-sha256;x-date";
    let canonical = format!(
        "POST\n{path}\n{canonical_query}\ncontent-type:application/json\nhost:{host}\nx-content-sha256:{content_sha256}\nx-date:{date}\n\n{signed_headers}\n{content_sha256}"
    );
    let scope = format!("{short}/{REGION}/{SERVICE}/request");
    let to_sign = format!(
        "HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac_sha256(secret_key.as_bytes(), &date.as_bytes()[..8]);
    let k_region = hmac_sha256(&k_date, REGION.as_bytes());
    let k_service = hmac_sha256(&k_region, SERVICE.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"request");
    let signature = hex::encode(hmac_sha256(&k_signing, to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
        x_date: date,
        content_sha256,
    }
}

/// RFC 3986 unreserved characters pass; everything else is percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A signed `POST {base}/?Action={action}&Version=2022-08-31` with `body`; `None` when the key is not
/// `ACCESS_KEY|SECRET_KEY` or the base is not a URL.
pub fn request(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    action: &str,
    body: &serde_json::Value,
) -> Option<reqwest::RequestBuilder> {
    let (ak, sk) = split_key(key)?;
    let url = reqwest::Url::parse(&format!("{base}/?Action={action}&Version={VERSION}")).ok()?;
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str()?),
        None => url.host_str()?.to_string(),
    };
    let payload = body.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signed = sign(
        ak,
        sk,
        &host,
        url.path(),
        &[("Action", action), ("Version", VERSION)],
        payload.as_bytes(),
        now,
    );
    Some(
        client
            .post(url)
            .header("content-type", "application/json")
            .header("x-date", signed.x_date)
            .header("x-content-sha256", signed.content_sha256)
            .header("authorization", signed.authorization)
            .body(payload),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn x_date_formats_utc() {
        assert_eq!(x_date(0), "19700101T000000Z");
        assert_eq!(x_date(1_726_911_801), "20240921T094321Z");
    }

    #[test]
    fn keys_split_into_access_and_secret() {
        assert_eq!(split_key("AK|SK"), Some(("AK", "SK")));
        assert_eq!(split_key("sk-only"), None);
        assert_eq!(split_key("AK|"), None);
    }

    #[test]
    fn a_signature_depends_on_the_secret_and_the_body() {
        let a = sign("AK", "SK", "h", "/", &[("Action", "X")], b"{}", 0);
        let b = sign("AK", "SK2", "h", "/", &[("Action", "X")], b"{}", 0);
        let c = sign("AK", "SK", "h", "/", &[("Action", "X")], b"{1}", 0);
        assert_ne!(a.authorization, b.authorization);
        assert_ne!(a.authorization, c.authorization);
        assert!(
            a.authorization
                .starts_with("HMAC-SHA256 Credential=AK/19700101/cn-north-1/cv/request, ")
        );
    }
}
