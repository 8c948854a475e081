//! The in-memory view of keys, users, channels and prices that the request path reads without SQL.
//! It is rebuilt from the store after every change and swapped in atomically; channel health lives
//! outside it so that a rebuild keeps cool-downs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{PriceConfig, RoutingConfig};
use crate::store::{ChannelRow, KeyRow, Store, StoreResult, UserRow};

/// Provider families a channel can speak. Only kinds whose adapter exists are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Openai,
    Suno,
    Midjourney,
    Fal,
    Jimeng,
    Udio,
    Luma,
    Kling,
    Ideogram,
}

const LATER_KINDS: &[&str] = &["azure", "anthropic", "gemini"];

impl ChannelKind {
    /// Every kind this version speaks.
    pub const ALL: &'static [ChannelKind] = &[
        ChannelKind::Openai,
        ChannelKind::Suno,
        ChannelKind::Midjourney,
        ChannelKind::Fal,
        ChannelKind::Jimeng,
        ChannelKind::Udio,
        ChannelKind::Luma,
        ChannelKind::Kling,
        ChannelKind::Ideogram,
    ];

    pub fn parse(kind: &str) -> Result<ChannelKind, String> {
        if let Some(known) = Self::ALL.iter().find(|k| k.as_str() == kind) {
            return Ok(*known);
        }
        let supported = Self::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if LATER_KINDS.contains(&kind) {
            Err(format!(
                "channel kind `{kind}` is not supported by this version yet (supported: {supported})"
            ))
        } else {
            Err(format!(
                "unknown channel kind `{kind}` (supported: {supported})"
            ))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Openai => "openai",
            ChannelKind::Suno => "suno",
            ChannelKind::Midjourney => "midjourney",
            ChannelKind::Fal => "fal",
            ChannelKind::Jimeng => "jimeng",
            ChannelKind::Udio => "udio",
            ChannelKind::Luma => "luma",
            ChannelKind::Kling => "kling",
            ChannelKind::Ideogram => "ideogram",
        }
    }
}

/// Checks the fields of a channel declaration; the error names the bad field.
pub fn validate_channel_fields(
    name: &str,
    kind: &str,
    base_url: &str,
    key_count: usize,
    weight: i64,
) -> Result<(), (&'static str, String)> {
    if name.trim().is_empty() {
        return Err(("name", "must not be empty".into()));
    }
    ChannelKind::parse(kind).map_err(|m| ("kind", m))?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) || base_url.len() < 10
    {
        return Err(("base_url", format!("`{base_url}` is not an http(s) URL")));
    }
    if key_count == 0 {
        return Err(("keys", "a channel needs at least one upstream key".into()));
    }
    if weight < 1 {
        return Err(("weight", "must be at least 1".into()));
    }
    Ok(())
}

/// `https://api.openai.com/v1/` -> `https://api.openai.com`: the provider's origin without `/v1`.
pub fn normalize_base_url(url: &str) -> String {
    let trimmed = url.trim().trim_end_matches('/');
    trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_string()
}

const NANO_PER_USD: f64 = 1e9;

/// A model's price in integer nano-USD (per million tokens, per call, per image, ...).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Price {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_per_mtok: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_per_mtok: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_call: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_image: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_mchar: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_audio_minute: Option<i64>,
    #[serde(default)]
    pub free: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_output_tokens: Option<u64>,
}

/// USD -> nano-USD, exact for any amount written with up to nine decimals.
pub fn usd_to_nano(usd: f64) -> Option<i64> {
    let nano = (usd * NANO_PER_USD).round();
    (usd.is_finite() && nano.abs() < 9.0e18).then_some(nano as i64)
}

pub fn nano_to_usd(nano: i64) -> f64 {
    nano as f64 / NANO_PER_USD
}

impl Price {
    pub fn from_usd(p: &PriceConfig) -> Result<Price, (&'static str, String)> {
        let field =
            |name: &'static str, v: Option<f64>| -> Result<Option<i64>, (&'static str, String)> {
                match v {
                    None => Ok(None),
                    Some(usd) if usd.is_finite() && usd >= 0.0 => usd_to_nano(usd)
                        .map(Some)
                        .ok_or((name, "is too large".into())),
                    Some(_) => Err((name, "must be a non-negative number of USD".into())),
                }
            };
        let price = Price {
            input_per_mtok: field("input_per_mtok", p.input_per_mtok)?,
            output_per_mtok: field("output_per_mtok", p.output_per_mtok)?,
            cached_input_per_mtok: field("cached_input_per_mtok", p.cached_input_per_mtok)?,
            per_call: field("per_call", p.per_call)?,
            per_image: field("per_image", p.per_image)?,
            per_mchar: field("per_mchar", p.per_mchar)?,
            per_audio_minute: field("per_audio_minute", p.per_audio_minute)?,
            free: p.free,
            max_output_tokens: p.max_output_tokens,
        };
        if (Price {
            max_output_tokens: None,
            ..price.clone()
        }) == Price::default()
        {
            return Err((
                "free",
                "a price needs at least one amount, or `free = true`".into(),
            ));
        }
        Ok(price)
    }

    pub fn to_usd(&self) -> PriceConfig {
        let usd = |v: Option<i64>| v.map(nano_to_usd);
        PriceConfig {
            input_per_mtok: usd(self.input_per_mtok),
            output_per_mtok: usd(self.output_per_mtok),
            cached_input_per_mtok: usd(self.cached_input_per_mtok),
            per_call: usd(self.per_call),
            per_image: usd(self.per_image),
            per_mchar: usd(self.per_mchar),
            per_audio_minute: usd(self.per_audio_minute),
            free: self.free,
            max_output_tokens: self.max_output_tokens,
        }
    }
}

/// Failure streak and cool-down of one channel; read and updated with atomics on the request path.
#[derive(Debug, Default)]
pub struct ChannelHealth {
    consecutive_failures: AtomicU32,
    trips: AtomicU32,
    cooldown_until_ms: AtomicI64,
}

impl ChannelHealth {
    pub fn is_cooling(&self, now_ms: i64) -> bool {
        self.cooldown_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn cooldown_until_ms(&self) -> i64 {
        self.cooldown_until_ms.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0
            || self.trips.load(Ordering::Relaxed) != 0
        {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.trips.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns the cool-down (ms) it started, if this failure tripped one.
    /// After a cool-down the channel is back on probation: one more failure trips it again, longer.
    pub fn record_failure(&self, routing: &RoutingConfig, now_ms: i64) -> Option<i64> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let trips = self.trips.load(Ordering::Relaxed);
        let threshold = if trips > 0 {
            1
        } else {
            routing.failure_threshold.max(1)
        };
        if failures < threshold || self.is_cooling(now_ms) {
            return None;
        }
        let trips = self.trips.fetch_add(1, Ordering::Relaxed);
        let base = i64::try_from(routing.cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let max = i64::try_from(routing.max_cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cooldown = base.saturating_mul(1i64 << trips.min(16)).min(max);
        self.cooldown_until_ms
            .store(now_ms.saturating_add(cooldown), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Some(cooldown)
    }
}

/// Health survives catalog rebuilds: one entry per channel id for the life of the process.
#[derive(Default)]
pub struct HealthBook(std::sync::Mutex<HashMap<i64, Arc<ChannelHealth>>>);

impl HealthBook {
    fn for_channel(&self, id: i64) -> Arc<ChannelHealth> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }
}

pub struct UpstreamKey {
    pub id: i64,
    pub secret: String,
    /// `Bearer <secret>`, built once and marked sensitive (hyper keeps it out of HPACK tables and
    /// `Debug` output); `None` when the secret holds bytes a header cannot carry.
    pub authorization: Option<axum::http::HeaderValue>,
    /// [`mask_secret`] of the secret, made once: every relayed request logs it (~1.7k instructions each time).
    hint: String,
    pub enabled: AtomicBool,
}

impl UpstreamKey {
    pub fn new(id: i64, secret: String, enabled: bool) -> UpstreamKey {
        let authorization = axum::http::HeaderValue::from_str(&format!("Bearer {secret}"))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        UpstreamKey {
            id,
            hint: mask_secret(&secret),
            secret,
            authorization,
            enabled: AtomicBool::new(enabled),
        }
    }
}

impl std::fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("id", &self.id)
            .field("secret", &mask_secret(&self.secret))
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl UpstreamKey {
    /// The last four characters, for logs and the admin API.
    pub fn hint(&self) -> &str {
        &self.hint
    }
}

pub fn mask_secret(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if secret.chars().count() <= 8 {
        "****".into()
    } else {
        format!("…{tail}")
    }
}

/// `base_url` + `path_and_query` as a URL: from the parsed base when there is one (only the path and query are
/// parsed), else parsed whole.
fn upstream_url(
    base: Option<&reqwest::Url>,
    base_url: &str,
    path_and_query: &str,
) -> Option<reqwest::Url> {
    let Some(base) = base else {
        return reqwest::Url::parse(&format!("{base_url}{path_and_query}")).ok();
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    if prefix.is_empty() {
        url.set_path(path);
    } else {
        url.set_path(&format!("{prefix}{path}"));
    }
    url.set_query(query);
    Some(url)
}

/// The `Host` header the relay's pool would write from each request's URI under `base` (the host, and
/// the port unless it is the scheme's default: `upstream::pool`'s rule, hyper_util's before it), made
/// once per channel: the pool formats it for every request that does not carry one (~1k instructions).
fn host_header(base: Option<&reqwest::Url>) -> Option<axum::http::HeaderValue> {
    let base = base?;
    let host = base.host_str()?;
    let value = match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    axum::http::HeaderValue::from_str(&value).ok()
}

#[derive(Debug)]
pub struct Channel {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    pub base_url: String,
    /// `base_url` parsed once: each relayed request only sets its path (a full parse cost ~6k instructions).
    base: Option<reqwest::Url>,
    pub models: Vec<String>,
    pub model_map: BTreeMap<String, String>,
    pub priority: i64,
    pub weight: i64,
    /// Midjourney modes served (`fast`, `relax`, `turbo`); `None` serves all.
    pub modes: Option<Vec<String>>,
    pub created_at: i64,
    pub keys: Vec<UpstreamKey>,
    pub health: Arc<ChannelHealth>,
    next_key: AtomicUsize,
    /// The `Uri`s of the paths relayed so far (no query, at most [`URI_CACHE`]): a relayed request
    /// clones one instead of building the URL and parsing it again (~3k instructions, callgrind).
    uris: std::sync::RwLock<Vec<(Box<str>, axum::http::Uri)>>,
    /// The `Host` header of every request to this channel, made once ([`host_header`]).
    pub host: Option<axum::http::HeaderValue>,
}

/// Paths whose `Uri` a channel keeps: the relay's routes are a dozen.
const URI_CACHE: usize = 32;

impl Channel {
    /// The upstream URL of `path_and_query` (`/v1/...`, with its query) under the channel's base URL.
    pub fn url(&self, path_and_query: &str) -> Option<reqwest::Url> {
        upstream_url(self.base.as_ref(), &self.base_url, path_and_query)
    }

    /// [`Channel::url`] as the `Uri` hyper sends.
    pub fn uri(&self, path_and_query: &str) -> Option<axum::http::Uri> {
        // a query is the client's own: never kept
        let keep = !path_and_query.contains('?');
        if keep {
            let uris = self.uris.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, uri)) = uris.iter().find(|(p, _)| **p == *path_and_query) {
                return Some(uri.clone());
            }
        }
        let uri = axum::http::Uri::try_from(self.url(path_and_query)?.as_str()).ok()?;
        if keep {
            let mut uris = self.uris.write().unwrap_or_else(|e| e.into_inner());
            if uris.len() < URI_CACHE && !uris.iter().any(|(p, _)| **p == *path_and_query) {
                uris.push((path_and_query.into(), uri.clone()));
            }
        }
        Some(uri)
    }

    /// The upstream name of a requested model.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map
            .get(model)
            .map(String::as_str)
            .unwrap_or(model)
    }

    /// Public model names this channel answers to.
    pub fn public_models(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .map(String::as_str)
            .chain(self.model_map.keys().map(String::as_str))
    }

    /// Round-robin over the enabled keys, so several keys share the channel's load.
    pub fn pick_key(&self) -> Option<&UpstreamKey> {
        let n = self.keys.len();
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.keys[(start + i) % n])
            .find(|k| k.enabled.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub models: Option<HashSet<String>>,
    pub expires_at: Option<i64>,
    pub enabled: bool,
    pub user_enabled: bool,
    pub limits: crate::billing::limits::KeyLimits,
}

impl ApiKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

#[derive(Default)]
pub struct Catalog {
    /// Keys by the SHA-256 of their secret (the raw digest: no hex string per request).
    keys_by_hash: HashMap<[u8; 32], Arc<ApiKey>>,
    channels: Vec<Arc<Channel>>,
    by_model: HashMap<String, Vec<Arc<Channel>>>,
    by_kind: HashMap<ChannelKind, Vec<Arc<Channel>>>,
    pub prices: HashMap<String, Price>,
}

impl Catalog {
    pub async fn load(store: &Store, health: &HealthBook) -> StoreResult<Catalog> {
        let users = store.users().await?;
        let keys = store.keys().await?;
        let channels = store.channels().await?;
        let prices = store.prices().await?;
        Ok(Catalog::build(users, keys, channels, prices, health))
    }

    pub fn build(
        users: Vec<UserRow>,
        keys: Vec<KeyRow>,
        channels: Vec<ChannelRow>,
        prices: Vec<(String, String)>,
        health: &HealthBook,
    ) -> Catalog {
        let user_enabled: HashMap<i64, bool> = users.iter().map(|u| (u.id, u.enabled)).collect();
        let keys_by_hash = keys
            .into_iter()
            .filter_map(|k| {
                let Some(digest) = hex::decode(&k.key_hash)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                else {
                    tracing::warn!(
                        key = k.id,
                        "skipping an API key whose stored hash is not a SHA-256 digest"
                    );
                    return None;
                };
                let key = ApiKey {
                    id: k.id,
                    user_id: k.user_id,
                    name: k.name,
                    models: k.models.map(|m| m.into_iter().collect()),
                    expires_at: k.expires_at,
                    enabled: k.enabled,
                    user_enabled: user_enabled.get(&k.user_id).copied().unwrap_or(false),
                    limits: crate::billing::limits::KeyLimits {
                        rpm: k.rpm,
                        tpm: k.tpm,
                        max_concurrency: k.max_concurrency,
                    },
                };
                Some((digest, Arc::new(key)))
            })
            .collect();
        let mut all = Vec::new();
        let mut by_model: HashMap<String, Vec<Arc<Channel>>> = HashMap::default();
        let mut by_kind: HashMap<ChannelKind, Vec<Arc<Channel>>> = HashMap::default();
        for row in channels {
            let Ok(kind) = ChannelKind::parse(&row.kind) else {
                tracing::warn!(channel = %row.name, kind = %row.kind, "skipping a channel of an unsupported kind");
                continue;
            };
            let base = reqwest::Url::parse(&normalize_base_url(&row.base_url)).ok();
            let channel = Arc::new(Channel {
                id: row.id,
                name: row.name,
                kind,
                base: base.clone(),
                host: host_header(base.as_ref()),
                base_url: normalize_base_url(&row.base_url),
                models: row.models,
                model_map: row.model_map,
                priority: row.priority,
                weight: row.weight.max(1),
                modes: row.modes,
                created_at: row.created_at,
                keys: row
                    .keys
                    .into_iter()
                    .map(|k| UpstreamKey::new(k.id, k.secret, k.enabled))
                    .collect(),
                health: health.for_channel(row.id),
                next_key: AtomicUsize::new(0),
                uris: Default::default(),
            });
            if row.enabled && kind != ChannelKind::Openai {
                by_kind.entry(kind).or_default().push(channel.clone());
            }
            // model routing is the OpenAI family's; task families route by kind
            if row.enabled && kind == ChannelKind::Openai {
                let names: HashSet<&str> = channel.public_models().collect();
                for name in names {
                    by_model
                        .entry(name.to_string())
                        .or_default()
                        .push(channel.clone());
                }
            }
            all.push(channel);
        }
        for list in by_model.values_mut().chain(by_kind.values_mut()) {
            list.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        }
        let prices = prices
            .into_iter()
            .filter_map(|(model, spec)| {
                serde_json::from_str::<Price>(&spec)
                    .ok()
                    .map(|p| (model, p))
            })
            .collect();
        Catalog {
            keys_by_hash,
            channels: all,
            by_model,
            by_kind,
            prices,
        }
    }

    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<ApiKey>> {
        self.keys_by_hash.get(hash)
    }

    /// Enabled channels of a task family, highest priority first.
    pub fn channels_of_kind(&self, kind: ChannelKind) -> &[Arc<Channel>] {
        self.by_kind.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Enabled channels serving `model`, highest priority first.
    pub fn channels_for(&self, model: &str) -> &[Arc<Channel>] {
        self.by_model.get(model).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn channel(&self, id: i64) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| c.id == id)
    }

    /// Every public model name with the earliest creation time of a channel serving it.
    pub fn models(&self) -> BTreeMap<&str, (i64, &'static str)> {
        let mut out: BTreeMap<&str, (i64, &'static str)> = BTreeMap::new();
        for (name, channels) in &self.by_model {
            if let Some(first) = channels.iter().min_by_key(|c| c.created_at) {
                out.insert(
                    name.as_str(),
                    (first.created_at / 1000, first.kind.as_str()),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_converts_to_exact_nano() {
        assert_eq!(usd_to_nano(0.15), Some(150_000_000));
        assert_eq!(usd_to_nano(0.075), Some(75_000_000));
        assert_eq!(usd_to_nano(0.000000001), Some(1));
        assert_eq!(usd_to_nano(f64::NAN), None);
    }

    #[test]
    fn price_needs_an_amount_or_free() {
        assert!(Price::from_usd(&PriceConfig::default()).is_err());
        assert!(
            Price::from_usd(&PriceConfig {
                free: true,
                ..Default::default()
            })
            .is_ok()
        );
        let bad = PriceConfig {
            per_call: Some(-0.1),
            ..Default::default()
        };
        assert_eq!(Price::from_usd(&bad).unwrap_err().0, "per_call");
    }

    #[test]
    fn upstream_urls_from_the_parsed_base_equal_a_full_parse() {
        let bases = [
            "http://127.0.0.1:8080",
            "https://api.openai.com",
            "https://gateway.example.com/openai",
            "https://gateway.example.com/a/b/",
            "http://[::1]:9000/x",
            "https://bücher.example",
        ];
        let paths = [
            "/v1/chat/completions",
            "/v1/models/ft:gpt-4o:org:x",
            "/v1/images/edits?api-version=2024-10-01&x=a%20b",
            "/v1/audio/speech?q=ü é",
            "/v1/a/../b",
            "/v1/%2e%2e/c?",
        ];
        for base in bases {
            let base_url = normalize_base_url(base);
            let parsed = reqwest::Url::parse(&base_url).unwrap();
            for path in paths {
                let full = reqwest::Url::parse(&format!("{base_url}{path}")).unwrap();
                assert_eq!(
                    upstream_url(Some(&parsed), &base_url, path),
                    Some(full.clone()),
                    "{base_url} + {path}"
                );
                assert_eq!(upstream_url(None, &base_url, path), Some(full));
            }
        }
    }

    /// What the relay's pool writes when a request has no `Host` (the rule of hyper_util's `set_host`):
    /// the URI's host, and its port unless it is the scheme's default.
    #[test]
    fn the_host_header_is_what_the_client_would_write() {
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:80/v1",
            "https://api.openai.com",
            "https://api.openai.com:443",
            "https://gateway.example.com:8443/openai",
            "http://[::1]:9000/x",
            "https://bücher.example",
        ] {
            let base_url = normalize_base_url(base);
            let parsed = reqwest::Url::parse(&base_url).unwrap();
            let uri: axum::http::Uri = upstream_url(Some(&parsed), &base_url, "/v1/models")
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let default_port = match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            };
            let expected = match uri.port_u16() {
                Some(port) if port != default_port => format!("{}:{port}", uri.host().unwrap()),
                _ => uri.host().unwrap().to_string(),
            };
            assert_eq!(
                host_header(Some(&parsed)).unwrap(),
                expected.as_str(),
                "{base}"
            );
        }
        assert_eq!(host_header(None), None);
    }

    #[test]
    fn kept_uris_equal_a_fresh_parse() {
        let base_url = normalize_base_url("https://gateway.example.com/openai/");
        let channel = Channel {
            id: 1,
            name: "c".into(),
            kind: ChannelKind::Openai,
            base: reqwest::Url::parse(&base_url).ok(),
            host: None,
            base_url: base_url.clone(),
            models: Vec::new(),
            model_map: BTreeMap::new(),
            priority: 0,
            weight: 1,
            modes: None,
            created_at: 0,
            keys: Vec::new(),
            health: Default::default(),
            next_key: AtomicUsize::new(0),
            uris: Default::default(),
        };
        let fresh = |path: &str| axum::http::Uri::try_from(format!("{base_url}{path}")).unwrap();
        let paths: Vec<String> = (0..40).map(|n| format!("/v1/route{n}")).collect();
        for round in 0..2 {
            for path in &paths {
                assert_eq!(
                    channel.uri(path),
                    Some(fresh(path)),
                    "round {round}: {path}"
                );
            }
            let query = format!("/v1/chat/completions?round={round}");
            assert_eq!(channel.uri(&query), Some(fresh(&query)));
        }
        // bounded, and a query is never kept
        let kept = channel.uris.read().unwrap();
        assert_eq!(kept.len(), URI_CACHE);
        assert!(kept.iter().all(|(p, _)| !p.contains('?')));
    }

    #[test]
    fn base_url_drops_v1_and_slashes() {
        assert_eq!(
            normalize_base_url("https://api.openai.com/v1/"),
            "https://api.openai.com"
        );
        assert_eq!(
            normalize_base_url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn health_trips_after_threshold_and_again_after_one_failed_probe() {
        let routing = RoutingConfig {
            failure_threshold: 2,
            cooldown_secs: 10,
            max_cooldown_secs: 25,
            ..Default::default()
        };
        let h = ChannelHealth::default();
        assert_eq!(h.record_failure(&routing, 0), None);
        assert_eq!(h.record_failure(&routing, 0), Some(10_000));
        assert!(h.is_cooling(5_000));
        assert!(!h.is_cooling(10_000));
        // probation: the first failure after the cool-down trips a longer one, capped
        assert_eq!(h.record_failure(&routing, 10_000), Some(20_000));
        assert_eq!(h.record_failure(&routing, 40_000), Some(25_000));
        h.record_success();
        assert_eq!(h.record_failure(&routing, 100_000), None);
    }

    #[test]
    fn secrets_are_masked_to_their_tail() {
        assert_eq!(mask_secret("sk-upstream-secret-abcd"), "…abcd");
        assert_eq!(mask_secret("short"), "****");
    }
}
