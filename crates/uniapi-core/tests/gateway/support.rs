//! Test harness: a real gateway on a random port (in-process), real sandbox upstreams, a temp store.

use std::time::Duration;

use serde_json::{Value, json};
use uniapi_core::config::{ChannelConfig, Config, PriceConfig, UserConfig, UserKeyConfig};
use uniapi_core::{AppState, Gateway};
use uniapi_sandbox::SandboxConfig;

pub const USER_KEY: &str = "sk-test-user-key-000000000000000000000000000000000000";
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const UPSTREAM_KEY: &str = "sk-upstream-test";

pub struct Sandbox {
    pub url: String,
}

impl Sandbox {
    pub async fn start() -> Sandbox {
        Sandbox::with_keys(&[UPSTREAM_KEY]).await
    }

    /// A sandbox with its stream shape or latency set (see [`Sandbox::set`]).
    pub async fn shaped(config: Value) -> Sandbox {
        let sandbox = Sandbox::start().await;
        sandbox.set(config).await;
        sandbox
    }

    pub async fn with_keys(keys: &[&str]) -> Sandbox {
        let addr = uniapi_sandbox::spawn(SandboxConfig {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        Sandbox {
            url: format!("http://{addr}"),
        }
    }

    /// Queues a fault rule (see the sandbox's `/__sandbox/faults`).
    pub async fn fault(&self, rule: Value) {
        let r = http()
            .post(format!("{}/__sandbox/faults", self.url))
            .json_body(&rule)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn journal(&self) -> Vec<Value> {
        let r = http()
            .get(format!("{}/__sandbox/requests", self.url))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    pub async fn calls(&self) -> usize {
        self.journal().await.len()
    }

    pub async fn set(&self, config: Value) {
        let r = http()
            .put(format!("{}/__sandbox/config", self.url))
            .json_body(&config)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub trait JsonBody {
    fn json_body(self, value: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }
}

pub fn channel(name: &str, sandbox: &Sandbox, models: &[&str]) -> ChannelConfig {
    ChannelConfig {
        name: name.into(),
        kind: "openai".into(),
        base_url: sandbox.url.clone(),
        keys: vec![UPSTREAM_KEY.into()],
        models: models.iter().map(|m| m.to_string()).collect(),
        model_map: Default::default(),
        priority: 0,
        weight: 1,
        modes: None,
        enabled: true,
    }
}

/// A config with a temp SQLite store (or PostgreSQL schema), one user with `USER_KEY`, fast routing knobs.
pub fn config(channels: Vec<ChannelConfig>) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.database.url = temp_sqlite_url();
    config.admin.key = Some(ADMIN_KEY.into());
    config.routing.cooldown_secs = 30;
    config.routing.first_byte_timeout_ms = 2_000;
    config.channels = channels;
    config.prices.insert(
        "gpt-4o-mini".into(),
        PriceConfig {
            input_per_mtok: Some(0.15),
            output_per_mtok: Some(0.6),
            ..Default::default()
        },
    );
    // the other models the tests route, priced so that they are served
    for model in ["gpt-4o", "my-alias", "alias", "dall-e-2", "whisper-1"] {
        config.prices.insert(
            model.into(),
            PriceConfig {
                per_call: Some(0.001),
                ..Default::default()
            },
        );
    }
    config.users = vec![UserConfig {
        name: "alice".into(),
        balance_usd: 10.0,
        keys: vec![UserKeyConfig {
            name: "main".into(),
            key: Some(USER_KEY.into()),
            models: None,
        }],
    }];
    config
}

pub fn temp_sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("uniapi-test-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}/uniapi.db", dir.display())
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestGateway {
    pub url: String,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(config: Config) -> TestGateway {
        let gateway = Gateway::start(config).await.unwrap();
        let state = gateway.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            gateway
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestGateway {
            url: format!("http://{addr}"),
            state,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Stops like SIGTERM does: drain, flush logs, close the store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        http()
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json_body(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post(
            "/v1/chat/completions",
            USER_KEY,
            json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = http()
            .request(method, format!("{}/api/admin{path}", self.url))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json_body(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Request logs, newest first, once at least `n` are written.
    pub async fn logs(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            self.state.logs.flush().await;
            let (_, body) = self
                .admin(reqwest::Method::GET, "/logs?limit=1000", None)
                .await;
            let logs = body["data"].as_array().cloned().unwrap_or_default();
            if logs.len() >= n {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} request logs were written");
    }
}

pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    )
}

/// Asserts the OpenAI error envelope with the given status and code.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "body: {body}");
    let error = &body["error"];
    assert!(
        error["message"].is_string() && error["type"].is_string(),
        "not an OpenAI error: {body}"
    );
    assert!(error.get("param").is_some(), "no param: {body}");
    assert_eq!(error["code"], code, "body: {body}");
    body
}

/// The first user's id, live balance, and the ledger reconciliation check.
pub async fn user_id(gw: &TestGateway) -> i64 {
    let (_, users) = gw.admin(reqwest::Method::GET, "/users", None).await;
    users["data"][0]["id"].as_i64().unwrap()
}

/// A new key of the first user with the given limits (`{"rpm": 1}`, `{"max_concurrency": 1}`, ...).
pub async fn limited_key(gw: &TestGateway, limits: Value) -> String {
    let mut body = json!({"user_id": user_id(gw).await, "name": format!("limited {limits}")});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let (status, key) = gw.admin(reqwest::Method::POST, "/keys", Some(body)).await;
    assert!((200..300).contains(&status), "{key}");
    key["key"].as_str().unwrap().to_string()
}

pub async fn balance(gw: &TestGateway) -> i64 {
    let (_, user) = gw
        .admin(
            reqwest::Method::GET,
            &format!("/users/{}", user_id(gw).await),
            None,
        )
        .await;
    user["balance_nano"].as_i64().unwrap()
}

pub async fn reconciled(gw: &TestGateway) {
    let (status, body) = gw
        .admin(reqwest::Method::GET, "/ledger/reconcile", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true, "balances do not match the ledger: {body}");
}

/// A local receiver for task callbacks: records every JSON body POSTed to it and answers 500 to the
/// first `fail_first` deliveries (to prove retries).
pub struct Receiver {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let store = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                let seen = seen.clone();
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    store.lock().unwrap().push(value);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            bodies,
        }
    }

    /// Bodies delivered so far (after any refused attempts).
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until a delivered body satisfies `done`, and returns every body delivered.
    pub async fn until(&self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        for _ in 0..300 {
            let bodies = self.bodies();
            if bodies.iter().any(&done) {
                return bodies;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no callback matched; got {:?}", self.bodies());
    }
}

/// Lets callbacks reach the test's loopback receiver quickly.
pub fn allow_local_callbacks(config: &mut Config) {
    config.tasks.allow_private_callbacks = true;
    config.tasks.callback_backoff_ms = 50;
}

/// An upstream written by hand: it takes one request (head and `Content-Length` body), then writes
/// `parts` of its answer, each after its pause, and closes. For answers the sandbox cannot shape, such
/// as bytes split at a chosen place.
pub async fn raw_upstream(parts: Vec<(Duration, Vec<u8>)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        for (pause, bytes) in parts {
            tokio::time::sleep(pause).await;
            if socket.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = socket.shutdown().await;
    });
    url
}
