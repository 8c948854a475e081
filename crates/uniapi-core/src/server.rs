//! Wiring: the router, the start-up sequence (store, declared config, admin key, catalog, log writer)
//! and a graceful stop that drains in-flight requests and flushes the request log.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use serde_json::json;

use crate::auth;
use crate::catalog::Price;
use crate::config::Config;
use crate::error::ApiError;
use crate::reqlog::{LogSink, LogWriter};
use crate::state::AppState;
use crate::store::{ChannelSpec, KeyLimits, Store, StoreError};

pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::relay::openai::routes())
        .merge(crate::relay::platform::routes())
        .merge(crate::tasks::suno::routes())
        .merge(crate::tasks::midjourney::routes())
        .merge(crate::tasks::fal::routes())
        .merge(crate::tasks::udio::routes())
        .merge(crate::tasks::luma::routes())
        .merge(crate::tasks::kling::routes())
        .merge(crate::tasks::ideogram::routes())
        .nest("/api", crate::admin::routes(state.clone()))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .fallback(crate::relay::openai::not_found)
        .method_not_allowed_fallback(crate::relay::openai::method_not_allowed)
        .layer(middleware::map_response(rescue_plain_errors))
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => axum::Json(json!({"status": "ready"})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "store unreachable"})),
        )
            .into_response(),
    }
}

/// axum's own rejections (a bad path parameter, say) answer in plain text; clients of this gateway get
/// the OpenAI error shape everywhere. Relayed upstream answers carry our request id and are left alone.
async fn rescue_plain_errors(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if status.as_u16() < 400 || !plain || response.headers().contains_key("x-uniapi-request-id") {
        return response;
    }
    let text = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    ApiError::new(status, kind, None, message).into_response()
}

/// A started gateway: its state, its log writer, and secrets to print once.
pub struct Gateway {
    pub state: AppState,
    writer: LogWriter,
    ledger_writer: crate::billing::ledger::LedgerWriter,
    poller: tokio::task::JoinHandle<()>,
    /// Lines to show the operator once (a generated admin key, generated user keys).
    pub announcements: Vec<String>,
}

impl Gateway {
    /// Opens the store, applies the declared configuration and loads the catalog.
    pub async fn start(config: Config) -> Result<Gateway, StoreError> {
        let store = Store::connect(&config.database.url, config.database.pool_size()).await?;
        let mut announcements = Vec::new();
        apply_declarations(&store, &config, &mut announcements).await?;
        let admin_key_digest = admin_key(&store, &config, &mut announcements).await?;
        let (logs, writer) = LogSink::spawn(store.clone());
        let (ledger, ledger_writer) =
            crate::billing::ledger::Ledger::start(store.clone(), store.openings().await?);
        let retention = config.logs.retention_days;
        let state = AppState::new(config, store, logs, ledger, admin_key_digest).await?;
        if retention > 0 {
            tokio::spawn(prune_logs(state.store.clone(), retention));
        }
        // polling resumes from the store after any restart
        let poller = tokio::spawn(crate::tasks::poll_forever(state.clone()));
        Ok(Gateway {
            state,
            writer,
            ledger_writer,
            poller,
            announcements,
        })
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (up to the configured grace)
    /// and flushes the request log.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = Duration::from_secs(self.state.config.server.shutdown_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // `into_make_service` turns the routes into services once; serving the `Router` itself would
        // rebuild its route table for every accepted connection (about 40 KB each, 5 MB at 128 connections).
        let server = axum::serve(
            nodelay(listener),
            app(self.state.clone()).into_make_service(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        // The accept loop runs on a runtime worker, like the connections it spawns: awaited in place it
        // would run on the thread that blocks on `main`, and every accepted connection would cross threads.
        let mut server = tokio::spawn(server.into_future());
        let mut stopped = stop_rx.clone();
        let result = tokio::select! {
            joined = &mut server => joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            _ = async move {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("in-flight requests did not finish within the shutdown grace period");
                server.abort();
                Ok(())
            }
        };
        self.state.logs.flush().await;
        let Gateway {
            state,
            writer,
            ledger_writer,
            poller,
            ..
        } = self;
        poller.abort();
        let store = state.store.clone();
        drop(state);
        ledger_writer.finish().await;
        writer.finish().await;
        store.close().await;
        result
    }
}

const ADMIN_KEY_SETTING: &str = "admin_key_digest";

/// Deletes request logs past the retention, once at start and then hourly.
async fn prune_logs(store: Store, retention_days: u64) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let keep_ms = i64::try_from(retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
        match store
            .delete_logs_before(crate::store::now_ms().saturating_sub(keep_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned request logs past the retention"),
            Err(e) => tracing::warn!(error = %e, "pruning request logs failed"),
        }
    }
}

/// The configured admin key, or the one generated (and shown once) on a fresh database.
async fn admin_key(
    store: &Store,
    config: &Config,
    announcements: &mut Vec<String>,
) -> Result<String, StoreError> {
    if let Some(key) = &config.admin.key {
        return Ok(auth::digest(key));
    }
    if let Some(digest) = store.setting(ADMIN_KEY_SETTING).await? {
        return Ok(digest);
    }
    let key = auth::generate_key("ua-admin-");
    let digest = auth::digest(&key);
    if store
        .insert_setting_if_absent(ADMIN_KEY_SETTING, &digest)
        .await?
    {
        announcements.push(format!("admin key (shown once, keep it): {key}"));
        Ok(digest)
    } else {
        store
            .setting(ADMIN_KEY_SETTING)
            .await?
            .ok_or_else(|| StoreError::NotFound("admin key".into()))
    }
}

/// Upserts the channels, prices, users and keys the config declares. Stored balances are never reset.
async fn apply_declarations(
    store: &Store,
    config: &Config,
    announcements: &mut Vec<String>,
) -> Result<(), StoreError> {
    for channel in &config.channels {
        let spec = ChannelSpec {
            name: channel.name.clone(),
            kind: channel.kind.clone(),
            base_url: channel.base_url.clone(),
            keys: channel.keys.clone(),
            models: channel.models.clone(),
            model_map: channel.model_map.clone(),
            priority: channel.priority,
            weight: channel.weight,
            modes: channel.modes.clone(),
            enabled: channel.enabled,
        };
        let existing = store.channel_id_by_name(&channel.name).await?;
        store.save_channel(existing, &spec).await?;
    }
    for (model, usd) in &config.prices {
        // validated at load time
        if let Ok(price) = Price::from_usd(usd) {
            store
                .put_price(model, &serde_json::to_string(&price).unwrap_or_default())
                .await?;
        }
    }
    for user in &config.users {
        let balance = crate::catalog::usd_to_nano(user.balance_usd).unwrap_or(0);
        let row = store.ensure_user(&user.name, balance).await?;
        for key in &user.keys {
            let limits = KeyLimits {
                models: key.models.clone(),
                ..Default::default()
            };
            match store.key_by_user_and_name(row.id, &key.name).await? {
                Some(existing) => {
                    if let Some(value) = &key.key
                        && existing.key_hash != auth::digest(value)
                    {
                        store
                            .set_key_secret(
                                existing.id,
                                &auth::digest(value),
                                &auth::key_hint(value),
                            )
                            .await?;
                    }
                    if existing.models != key.models {
                        store
                            .update_key(
                                existing.id,
                                &existing.name,
                                existing.enabled,
                                &KeyLimits {
                                    models: key.models.clone(),
                                    ..limits_of(&existing)
                                },
                            )
                            .await?;
                    }
                }
                None => {
                    let value = key.key.clone().unwrap_or_else(|| auth::generate_key("sk-"));
                    store
                        .create_key(
                            row.id,
                            &key.name,
                            &auth::digest(&value),
                            &auth::key_hint(&value),
                            &limits,
                        )
                        .await?;
                    if key.key.is_none() {
                        announcements.push(format!(
                            "API key `{}` of user `{}` (shown once): {value}",
                            key.name, user.name
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn limits_of(key: &crate::store::KeyRow) -> KeyLimits {
    KeyLimits {
        models: key.models.clone(),
        quota_nano: key.quota_nano,
        expires_at: key.expires_at,
        rpm: key.rpm,
        tpm: key.tpm,
        max_concurrency: key.max_concurrency,
    }
}

/// Accepted sockets send each write at once: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
/// hold small SSE events back for ~40 ms on keep-alive connections.
fn nodelay(listener: tokio::net::TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}

pub fn local_addr(listener: &tokio::net::TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
