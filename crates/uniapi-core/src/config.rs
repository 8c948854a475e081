//! The operator's configuration: one typed struct read from TOML, overridden by `UNIAPI_<SECTION>__<KEY>`
//! environment variables, with `env:NAME` secrets. Every error names the key it is about.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    /// Accepted for forward compatibility: only needed with several nodes.
    pub redis: Option<RedisConfig>,
    pub admin: AdminConfig,
    pub routing: RoutingConfig,
    pub billing: BillingConfig,
    pub logs: LogsConfig,
    pub tasks: TasksConfig,
    pub channels: Vec<ChannelConfig>,
    pub prices: BTreeMap<String, PriceConfig>,
    pub users: Vec<UserConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_mb: u64,
    /// Seconds to let in-flight requests finish after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3000".into(),
            max_body_mb: 64,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    /// The pool's size; unset means [`DatabaseConfig::SQLITE_CONNECTIONS`] on SQLite and
    /// [`DatabaseConfig::POSTGRES_CONNECTIONS`] on PostgreSQL.
    pub max_connections: Option<u32>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://uniapi-data/uniapi.db".into(),
            max_connections: None,
        }
    }
}

impl DatabaseConfig {
    /// SQLite takes one writer at a time (the write-behind batches take turns anyway) and WAL readers
    /// beside it, so a few connections serve it; each one holds its own worker thread, page cache and
    /// prepared batch statements (about 1 MB), and a larger pool only fills up and stays resident.
    pub const SQLITE_CONNECTIONS: u32 = 3;
    pub const POSTGRES_CONNECTIONS: u32 = 8;

    pub fn pool_size(&self) -> u32 {
        self.max_connections
            .unwrap_or(if self.url.starts_with("sqlite:") {
                Self::SQLITE_CONNECTIONS
            } else {
                Self::POSTGRES_CONNECTIONS
            })
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(skip_serializing)]
    pub key: Option<String>,
}

/// Failover, cool-down and upstream timeouts (product.md §8).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Channel attempts per request, the first included.
    pub max_attempts: usize,
    /// Consecutive failures that take a channel out of rotation.
    pub failure_threshold: u32,
    /// First cool-down; doubles on each failed probe up to `max_cooldown_secs`.
    pub cooldown_secs: u64,
    pub max_cooldown_secs: u64,
    pub connect_timeout_ms: u64,
    /// Until the response head and the first body byte arrive.
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of a response.
    pub idle_timeout_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            failure_threshold: 3,
            cooldown_secs: 30,
            max_cooldown_secs: 600,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 120_000,
            idle_timeout_ms: 120_000,
        }
    }
}

/// How much a request may hold and how balances are shown.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Credits per USD on `/v1/billing/usage` without `unit=usd`.
    pub credits_per_usd: u64,
    /// Output tokens reserved when a request sets no `max_tokens` and its price sets no `max_output_tokens`.
    pub default_max_output_tokens: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            credits_per_usd: 500_000,
            default_max_output_tokens: 4096,
        }
    }
}

/// The task engine's poller.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// How often the poller looks for due tasks.
    pub poll_interval_ms: u64,
    /// A task still unfinished after this long fails and is refunded.
    pub timeout_secs: u64,
    /// Let clients' callback URLs point at loopback or private addresses (refused by default: SSRF).
    pub allow_private_callbacks: bool,
    /// Attempts per callback delivery before it is given up.
    pub callback_attempts: u32,
    /// Pause before the second attempt; it doubles after each failure.
    pub callback_backoff_ms: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            timeout_secs: 3600,
            allow_private_callbacks: false,
            callback_attempts: 5,
            callback_backoff_ms: 2000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Request logs older than this are deleted (0 keeps them forever).
    pub retention_days: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    #[serde(skip_serializing)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default)]
    pub modes: Option<Vec<String>>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_weight() -> i64 {
    1
}

fn default_true() -> bool {
    true
}

/// Prices in USD as the operator writes them; converted to integer nano-USD when stored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    pub cached_input_per_mtok: Option<f64>,
    pub per_call: Option<f64>,
    pub per_image: Option<f64>,
    pub per_mchar: Option<f64>,
    pub per_audio_minute: Option<f64>,
    #[serde(default)]
    pub free: bool,
    /// Output tokens to reserve when a request sets no limit (overrides `billing.default_max_output_tokens`).
    pub max_output_tokens: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default)]
    pub balance_usd: f64,
    #[serde(default)]
    pub keys: Vec<UserKeyConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserKeyConfig {
    pub name: String,
    #[serde(skip_serializing)]
    pub key: Option<String>,
    pub models: Option<Vec<String>>,
}

/// Where environment variables come from; tests pass a map instead of the process environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

const ENV_PREFIX: &str = "UNIAPI_";

impl Config {
    /// Reads the file (if any), applies environment overrides, resolves `env:` secrets and validates.
    pub fn load(path: Option<&str>, env: &dyn Environment) -> Result<Config, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut tree, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| {
                let key = e.path().to_string();
                key_error(
                    if key == "." {
                        "(root)".to_string()
                    } else {
                        key
                    },
                    e.inner().to_string(),
                )
            })?;
        config.resolve_secrets(env)?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self, env: &dyn Environment) -> Result<(), ConfigError> {
        if let Some(key) = self.admin.key.as_mut() {
            *key = resolve_secret("admin.key", key, env)?;
        }
        for (i, channel) in self.channels.iter_mut().enumerate() {
            for (j, key) in channel.keys.iter_mut().enumerate() {
                *key = resolve_secret(&format!("channels[{i}].keys[{j}]"), key, env)?;
            }
        }
        for (i, user) in self.users.iter_mut().enumerate() {
            for (j, key) in user.keys.iter_mut().enumerate() {
                if let Some(value) = key.key.as_mut() {
                    *value = resolve_secret(&format!("users[{i}].keys[{j}].key"), value, env)?;
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.listen.parse::<SocketAddr>().map_err(|e| {
            key_error(
                "server.listen",
                format!("`{}` is not an address: {e}", self.server.listen),
            )
        })?;
        if self.server.max_body_mb == 0 {
            return Err(key_error("server.max_body_mb", "must be at least 1"));
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(key_error(
                "database.url",
                format!("`{url}` is neither sqlite:... nor postgres://..."),
            ));
        }
        if self.database.max_connections == Some(0) {
            return Err(key_error("database.max_connections", "must be at least 1"));
        }
        if self.billing.credits_per_usd == 0 {
            return Err(key_error("billing.credits_per_usd", "must be at least 1"));
        }
        if self.routing.max_attempts == 0 {
            return Err(key_error("routing.max_attempts", "must be at least 1"));
        }
        if let Some(key) = &self.admin.key
            && key.len() < 16
        {
            return Err(key_error("admin.key", "must be at least 16 characters"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, channel) in self.channels.iter().enumerate() {
            let at = |field: &str| format!("channels[{i}].{field}");
            crate::catalog::validate_channel_fields(
                &channel.name,
                &channel.kind,
                &channel.base_url,
                channel.keys.len(),
                channel.weight,
            )
            .map_err(|(field, message)| key_error(at(field), message))?;
            if !names.insert(channel.name.as_str()) {
                return Err(key_error(
                    at("name"),
                    format!("channel name `{}` is declared twice", channel.name),
                ));
            }
        }
        for (model, price) in &self.prices {
            crate::catalog::Price::from_usd(price).map_err(|(field, message)| {
                key_error(format!("prices.{model}.{field}"), message)
            })?;
        }
        for (i, user) in self.users.iter().enumerate() {
            if user.name.trim().is_empty() {
                return Err(key_error(format!("users[{i}].name"), "must not be empty"));
            }
            if !user.balance_usd.is_finite() || user.balance_usd < 0.0 {
                return Err(key_error(
                    format!("users[{i}].balance_usd"),
                    "must be a non-negative number",
                ));
            }
            for (j, key) in user.keys.iter().enumerate() {
                if let Some(value) = &key.key
                    && !crate::auth::is_well_formed_key(value)
                {
                    return Err(key_error(
                        format!("users[{i}].keys[{j}].key"),
                        "an API key is `sk-` followed by at least 40 letters, digits, `-` or `_`",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 3000)))
    }

    pub fn max_body_bytes(&self) -> usize {
        usize::try_from(self.server.max_body_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

fn resolve_secret(key: &str, value: &str, env: &dyn Environment) -> Result<String, ConfigError> {
    match value.strip_prefix("env:") {
        Some(name) => env
            .var(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| key_error(key, format!("environment variable {name} is not set"))),
        None => Ok(value.to_string()),
    }
}

/// `UNIAPI_DATABASE__URL=...` sets `database.url`; `UNIAPI_CHANNELS__0__BASE_URL` indexes arrays.
/// A value is read as TOML when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_env_overrides(tree: &mut toml::Table, env: &dyn Environment) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
        .collect();
    overrides.sort();
    for (name, raw) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(key_error(name, "empty segment in the variable name"));
        }
        let value = parse_env_value(&raw);
        set_path(tree, &path, value)
            .map_err(|message| key_error(format!("{name} ({})", path.join(".")), message))?;
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_value_path(entry, rest, value)
}

fn set_value_path(
    node: &mut toml::Value,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    match node {
        toml::Value::Table(table) => set_path(table, path, value),
        toml::Value::Array(items) => {
            let (first, rest) = path.split_first().ok_or("empty key")?;
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not an array index"))?;
            let item = items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the end of the array"))?;
            if rest.is_empty() {
                *item = value;
                Ok(())
            } else {
                set_value_path(item, rest, value)
            }
        }
        _ => Err("cannot set a key inside a plain value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::write(text)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(text: &str) -> TempPath {
            let path =
                std::env::temp_dir().join(format!("uniapi-config-{}.toml", uuid::Uuid::now_v7()));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const SAMPLE: &str = r#"
[server]
listen = "127.0.0.1:4000"
[database]
url = "sqlite://x.db"
[admin]
key = "env:ADMIN"
[[channels]]
name = "main"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = ["env:K1", "plain-key"]
models = ["gpt-4o-mini"]
model_map = { "gpt-latest" = "gpt-4o-mini" }
priority = 10
[prices."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.60
[[users]]
name = "alice"
balance_usd = 10.0
[[users.keys]]
name = "ci"
key = "sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
"#;

    #[test]
    fn full_example_loads_with_env_secrets() {
        let file = write(SAMPLE);
        let config = Config::load(
            file.0.to_str(),
            &env(&[("ADMIN", "admin-secret-123456"), ("K1", "upstream-1")]),
        )
        .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:4000");
        assert_eq!(config.admin.key.as_deref(), Some("admin-secret-123456"));
        assert_eq!(config.channels[0].keys, vec!["upstream-1", "plain-key"]);
        assert_eq!(config.channels[0].weight, 1);
        assert_eq!(config.users[0].keys[0].name, "ci");
    }

    #[test]
    fn env_overrides_sections_and_array_items() {
        let file = write(SAMPLE);
        let config = Config::load(
            file.0.to_str(),
            &env(&[
                ("ADMIN", "admin-secret-123456"),
                ("K1", "k"),
                ("UNIAPI_DATABASE__URL", "postgres://u@h/db"),
                ("UNIAPI_SERVER__MAX_BODY_MB", "7"),
                ("UNIAPI_CHANNELS__0__PRIORITY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.database.url, "postgres://u@h/db");
        assert_eq!(config.server.max_body_mb, 7);
        assert_eq!(config.channels[0].priority, 3);
    }

    #[test]
    fn pool_size_defaults_by_backend_and_rejects_zero() {
        let load = |extra: &str| {
            let file = write(&format!("[database]\n{extra}"));
            Config::load(file.0.to_str(), &env(&[]))
        };
        assert_eq!(
            load("").unwrap().database.pool_size(),
            DatabaseConfig::SQLITE_CONNECTIONS
        );
        assert_eq!(
            load("url = \"postgres://u@h/db\"\n")
                .unwrap()
                .database
                .pool_size(),
            DatabaseConfig::POSTGRES_CONNECTIONS
        );
        assert_eq!(
            load("max_connections = 12\n").unwrap().database.pool_size(),
            12
        );
        let err = load("max_connections = 0\n").unwrap_err().to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let file = write("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
        let err = Config::load(file.0.to_str(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_nested_key() {
        let file = write(
            "[[channels]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\npriority = \"high\"\n",
        );
        let err = Config::load(file.0.to_str(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("channels[0].priority"), "{err}");
    }

    #[test]
    fn missing_secret_env_is_named() {
        let file = write(SAMPLE);
        let err = Config::load(file.0.to_str(), &env(&[("ADMIN", "admin-secret-123456")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channels[0].keys[0]") && err.contains("K1"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_their_key() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            (
                "[[channels]]\nname = \"a\"\nkind = \"carrier-pigeon\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\n",
                "channels[0].kind",
            ),
            (
                "[[channels]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\nkeys = [\"k\"]\n",
                "channels[0].base_url",
            ),
            (
                "[[channels]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x.invalid\"\nkeys = []\n",
                "channels[0].keys",
            ),
            (
                "[prices.m]\ninput_per_mtok = -1.0\n",
                "prices.m.input_per_mtok",
            ),
            (
                "[[users]]\nname = \"u\"\n[[users.keys]]\nname = \"k\"\nkey = \"short\"\n",
                "users[0].keys[0].key",
            ),
        ];
        for (text, key) in cases {
            let file = write(text);
            let err = Config::load(file.0.to_str(), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "expected `{key}` in: {err}");
        }
    }

    #[test]
    fn no_file_gives_defaults() {
        let config = Config::load(None, &env(&[])).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:3000");
        assert_eq!(config.database.url, "sqlite://uniapi-data/uniapi.db");
        assert_eq!(config.server.max_body_mb, 64);
    }
}
