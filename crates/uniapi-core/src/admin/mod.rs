//! The operator's admin API under `/api/admin/`: users, keys, channels, prices and request logs.
//! Every change is written to the store and the in-memory catalog is rebuilt before the answer, so the
//! next relayed request sees it. Upstream keys are never returned; API keys are shown once, at creation.

mod openapi;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth;
use crate::catalog::{
    ChannelKind, Price, mask_secret, nano_to_usd, usd_to_nano, validate_channel_fields,
};
use crate::config::PriceConfig;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::logs::LogFilter;
use crate::store::{ChannelRow, ChannelSpec, KeyLimits, KeyRow, UserRow};

type AdminResult = Result<Response, ApiError>;

pub fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            get(get_key).patch(patch_key).delete(delete_key),
        )
        .route("/channels", get(list_channels).post(create_channel))
        .route(
            "/channels/{id}",
            get(get_channel).patch(patch_channel).delete(delete_channel),
        )
        .route("/channels/{id}/test", post(test_channel))
        .route("/users/{id}/credit", post(credit_user))
        .route("/ledger/reconcile", get(reconcile))
        .route("/stats", get(stats))
        .route("/prices", get(list_prices))
        .route("/prices/{*model}", put(put_price).delete(delete_price))
        .route("/logs", get(list_logs))
        .route("/logs/{id}", get(get_log))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .nest("/admin", admin)
        .route("/openapi.json", get(openapi::document))
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match auth::bearer(request.headers()) {
        Some(token) if auth::digest(token) == state.admin_key_digest => next.run(request).await,
        Some(_) => ApiError::unauthorized("Incorrect admin key.").into_response(),
        None => ApiError::unauthorized("The admin API needs `Authorization: Bearer <admin key>`.")
            .into_response(),
    }
}

/// Parses a JSON body into `T`, naming the offending field on failure.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let error = ApiError::invalid_request(format!("Invalid request body: {}", e.inner()));
        if path == "." {
            error
        } else {
            error.with_param(path)
        }
    })
}

async fn reload(state: &AppState) -> Result<(), ApiError> {
    state.reload().await.map_err(ApiError::from)
}

fn created(value: Value) -> AdminResult {
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

fn ok(value: Value) -> AdminResult {
    Ok(axum::Json(value).into_response())
}

/// `Some(None)` when the field is present as `null` (clear it), `None` when absent (keep it).
fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---- users

/// A user with the live balance from the ledger (the stored one may lag by one flush).
fn user_json(state: &AppState, user: &UserRow) -> Value {
    let live = state.ledger.standing(user.id);
    let balance = live.map_or(user.balance_nano, |s| s.balance_nano);
    json!({
        "id": user.id,
        "name": user.name,
        "balance_usd": nano_to_usd(balance),
        "balance_nano": balance,
        "held_nano": live.map_or(0, |s| s.held_nano),
        "used_usd": nano_to_usd(live.map_or(0, |s| s.used_nano)),
        "used_nano": live.map_or(0, |s| s.used_nano),
        "enabled": user.enabled,
        "created_at": user.created_at / 1000,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    balance_usd: f64,
}

async fn create_user(State(state): State<AppState>, body: Bytes) -> AdminResult {
    let new: NewUser = parse(&body)?;
    if new.name.trim().is_empty() {
        return Err(ApiError::invalid_request("`name` must not be empty.").with_param("name"));
    }
    let balance = usd_to_nano(new.balance_usd)
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::invalid_request("`balance_usd` must be a non-negative number.")
                .with_param("balance_usd")
        })?;
    let user = state.store.create_user(new.name.trim(), balance).await?;
    reload(&state).await?;
    created(user_json(&state, &user))
}

async fn list_users(State(state): State<AppState>) -> AdminResult {
    let users = state.store.users().await?;
    ok(json!({"data": users.iter().map(|u| user_json(&state, u)).collect::<Vec<_>>()}))
}

async fn get_user(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    ok(user_json(&state, &state.store.user(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    name: Option<String>,
    enabled: Option<bool>,
}

async fn patch_user(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Bytes,
) -> AdminResult {
    let patch: UserPatch = parse(&body)?;
    if patch.name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::invalid_request("`name` must not be empty.").with_param("name"));
    }
    let user = state
        .store
        .update_user(id, patch.name.as_deref().map(str::trim), patch.enabled)
        .await?;
    reload(&state).await?;
    ok(user_json(&state, &user))
}

async fn delete_user(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    state.store.delete_user(id).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credit {
    amount_usd: f64,
    note: Option<String>,
    /// Idempotency: a credit id seen before is not applied again.
    id: Option<String>,
}

/// Credits serialize so that an idempotent retry can never apply twice.
static CREDITS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn credit_user(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Bytes,
) -> AdminResult {
    let credit: Credit = parse(&body)?;
    let amount = usd_to_nano(credit.amount_usd)
        .filter(|n| *n != 0)
        .ok_or_else(|| {
            ApiError::invalid_request("`amount_usd` must be a non-zero number.")
                .with_param("amount_usd")
        })?;
    let user = state.store.user(id).await?;
    let _one_at_a_time = CREDITS.lock().await;
    let credit_id = match credit.id {
        Some(given) if given.trim().is_empty() => {
            return Err(ApiError::invalid_request("`id` must not be empty.").with_param("id"));
        }
        Some(given) => format!("credit:{given}"),
        None => format!("credit:{}", uuid::Uuid::now_v7()),
    };
    state.ledger.flush().await;
    let seen = state
        .store
        .ledger_entries(user.id)
        .await?
        .into_iter()
        .any(|(entry, _, _)| entry == credit_id);
    if !seen {
        state
            .ledger
            .credit(&credit_id, user.id, amount, credit.note)
            .map_err(|_| {
                ApiError::invalid_request("This debit would make the balance negative.")
                    .with_param("amount_usd")
            })?;
        state.ledger.flush().await;
    }
    let mut body = user_json(&state, &user);
    body["credit_id"] = Value::String(credit_id);
    body["applied"] = Value::Bool(!seen);
    ok(body)
}

/// Proves balances equal the sum of their ledger entries, in memory and in the store.
async fn reconcile(State(state): State<AppState>) -> AdminResult {
    state.ledger.flush().await;
    let checks = state.store.balance_checks().await?;
    let mut all_ok = true;
    let users: Vec<Value> = checks
        .iter()
        .map(|c| {
            let memory = state.ledger.standing(c.user_id).map(|s| s.balance_nano);
            let ok = c.balance_nano == c.entries_nano && memory.is_none_or(|m| m == c.balance_nano);
            all_ok &= ok;
            json!({"user_id": c.user_id, "stored_nano": c.balance_nano, "entries_nano": c.entries_nano, "memory_nano": memory, "ok": ok})
        })
        .collect();
    ok(json!({"ok": all_ok, "users": users}))
}

async fn stats(
    State(state): State<AppState>,
    query: Result<Query<crate::store::stats::StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> AdminResult {
    let Query(query) = query
        .map_err(|e| ApiError::invalid_request(format!("Invalid query: {}", e.body_text())))?;
    let rows = state.store.stats(&query).await.map_err(|e| match e {
        crate::store::StoreError::Conflict(message) => ApiError::invalid_request(message),
        other => ApiError::from(other),
    })?;
    ok(json!({"data": rows}))
}

// ---- API keys

fn key_json(key: &KeyRow) -> Value {
    json!({
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "key": key.key_hint,
        "models": key.models,
        "quota_usd": key.quota_nano.map(nano_to_usd),
        "expires_at": key.expires_at.map(|t| t / 1000),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_concurrency": key.max_concurrency,
        "enabled": key.enabled,
        "created_at": key.created_at / 1000,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    user_id: i64,
    name: String,
    models: Option<Vec<String>>,
    quota_usd: Option<f64>,
    /// Unix seconds.
    expires_at: Option<i64>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    /// A fixed key value for reproducible deployments; generated when absent.
    key: Option<String>,
}

fn quota_nano(quota_usd: Option<f64>) -> Result<Option<i64>, ApiError> {
    quota_usd
        .map(|q| usd_to_nano(q).filter(|n| *n >= 0))
        .map(|q| {
            q.ok_or_else(|| {
                ApiError::invalid_request("`quota_usd` must be a non-negative number.")
                    .with_param("quota_usd")
            })
        })
        .transpose()
}

fn check_limits(limits: &KeyLimits) -> Result<(), ApiError> {
    for (name, value) in [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_concurrency", limits.max_concurrency),
    ] {
        if value.is_some_and(|v| v < 1) {
            return Err(
                ApiError::invalid_request(format!("`{name}` must be at least 1.")).with_param(name),
            );
        }
    }
    Ok(())
}

async fn create_key(State(state): State<AppState>, body: Bytes) -> AdminResult {
    let new: NewKey = parse(&body)?;
    if new.name.trim().is_empty() {
        return Err(ApiError::invalid_request("`name` must not be empty.").with_param("name"));
    }
    let limits = KeyLimits {
        models: new.models,
        quota_nano: quota_nano(new.quota_usd)?,
        expires_at: new.expires_at.map(|s| s.saturating_mul(1000)),
        rpm: new.rpm,
        tpm: new.tpm,
        max_concurrency: new.max_concurrency,
    };
    check_limits(&limits)?;
    let key = match new.key {
        Some(key) if auth::is_well_formed_key(&key) => key,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "`key` must be `sk-` followed by at least 40 letters, digits, `-` or `_`.",
            )
            .with_param("key"));
        }
        None => auth::generate_key("sk-"),
    };
    let row = state
        .store
        .create_key(
            new.user_id,
            new.name.trim(),
            &auth::digest(&key),
            &auth::key_hint(&key),
            &limits,
        )
        .await?;
    reload(&state).await?;
    let mut body = key_json(&row);
    body["key"] = Value::String(key);
    created(body)
}

async fn list_keys(State(state): State<AppState>) -> AdminResult {
    let keys = state.store.keys().await?;
    ok(json!({"data": keys.iter().map(key_json).collect::<Vec<_>>()}))
}

async fn get_key(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    ok(key_json(&state.store.key(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    name: Option<String>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    quota_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "double_option")]
    expires_at: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    max_concurrency: Option<Option<i64>>,
}

async fn patch_key(State(state): State<AppState>, Path(id): Path<i64>, body: Bytes) -> AdminResult {
    let patch: KeyPatch = parse(&body)?;
    let current = state.store.key(id).await?;
    let limits = KeyLimits {
        models: patch.models.unwrap_or(current.models),
        quota_nano: match patch.quota_usd {
            Some(q) => quota_nano(q)?,
            None => current.quota_nano,
        },
        expires_at: patch
            .expires_at
            .map(|e| e.map(|s| s.saturating_mul(1000)))
            .unwrap_or(current.expires_at),
        rpm: patch.rpm.unwrap_or(current.rpm),
        tpm: patch.tpm.unwrap_or(current.tpm),
        max_concurrency: patch.max_concurrency.unwrap_or(current.max_concurrency),
    };
    check_limits(&limits)?;
    let name = patch.name.unwrap_or(current.name);
    let row = state
        .store
        .update_key(
            id,
            name.trim(),
            patch.enabled.unwrap_or(current.enabled),
            &limits,
        )
        .await?;
    reload(&state).await?;
    ok(key_json(&row))
}

async fn delete_key(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    state.store.delete_key(id).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- channels

fn channel_json(state: &AppState, channel: &ChannelRow) -> Value {
    let catalog = state.catalog.load();
    let live = catalog.channel(channel.id);
    let cooldown_until = live
        .map(|c| c.health.cooldown_until_ms())
        .filter(|t| *t > crate::store::now_ms());
    json!({
        "id": channel.id,
        "name": channel.name,
        "kind": channel.kind,
        "base_url": channel.base_url,
        "keys": channel.keys.iter().map(|k| json!({
            "id": k.id,
            "key": mask_secret(&k.secret),
            "enabled": live
                .and_then(|c| c.keys.iter().find(|l| l.id == k.id))
                .map_or(k.enabled, |l| l.enabled.load(std::sync::atomic::Ordering::Relaxed)),
            "disabled_reason": k.disabled_reason,
        })).collect::<Vec<_>>(),
        "models": channel.models,
        "model_map": channel.model_map,
        "priority": channel.priority,
        "weight": channel.weight,
        "modes": channel.modes,
        "enabled": channel.enabled,
        "cooldown_until": cooldown_until.map(|t| t / 1000),
        "created_at": channel.created_at / 1000,
        "updated_at": channel.updated_at / 1000,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    name: String,
    kind: String,
    base_url: String,
    keys: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    model_map: BTreeMap<String, String>,
    #[serde(default)]
    priority: i64,
    #[serde(default = "one")]
    weight: i64,
    modes: Option<Vec<String>>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn one() -> i64 {
    1
}

fn yes() -> bool {
    true
}

fn check_channel(spec: &ChannelSpec) -> Result<(), ApiError> {
    validate_channel_fields(
        &spec.name,
        &spec.kind,
        &spec.base_url,
        spec.keys.len(),
        spec.weight,
    )
    .map_err(|(field, message)| {
        ApiError::invalid_request(format!("`{field}` {message}")).with_param(field)
    })?;
    if spec.keys.iter().any(|k| k.trim().is_empty()) {
        return Err(
            ApiError::invalid_request("`keys` must not contain empty keys.").with_param("keys"),
        );
    }
    Ok(())
}

async fn create_channel(State(state): State<AppState>, body: Bytes) -> AdminResult {
    let new: NewChannel = parse(&body)?;
    let spec = ChannelSpec {
        name: new.name.trim().to_string(),
        kind: new.kind,
        base_url: new.base_url.trim().to_string(),
        keys: new.keys,
        models: new.models,
        model_map: new.model_map,
        priority: new.priority,
        weight: new.weight,
        modes: new.modes,
        enabled: new.enabled,
    };
    check_channel(&spec)?;
    let row = state.store.save_channel(None, &spec).await?;
    reload(&state).await?;
    created(channel_json(&state, &row))
}

async fn list_channels(State(state): State<AppState>) -> AdminResult {
    let channels = state.store.channels().await?;
    ok(json!({"data": channels.iter().map(|c| channel_json(&state, c)).collect::<Vec<_>>()}))
}

async fn get_channel(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    ok(channel_json(&state, &state.store.channel(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelPatch {
    name: Option<String>,
    kind: Option<String>,
    base_url: Option<String>,
    keys: Option<Vec<String>>,
    models: Option<Vec<String>>,
    model_map: Option<BTreeMap<String, String>>,
    priority: Option<i64>,
    weight: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    modes: Option<Option<Vec<String>>>,
    enabled: Option<bool>,
}

async fn patch_channel(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Bytes,
) -> AdminResult {
    let patch: ChannelPatch = parse(&body)?;
    let current = state.store.channel(id).await?;
    let spec = ChannelSpec {
        name: patch
            .name
            .map(|n| n.trim().to_string())
            .unwrap_or(current.name),
        kind: patch.kind.unwrap_or(current.kind),
        base_url: patch
            .base_url
            .map(|u| u.trim().to_string())
            .unwrap_or(current.base_url),
        keys: patch
            .keys
            .unwrap_or_else(|| current.keys.into_iter().map(|k| k.secret).collect()),
        models: patch.models.unwrap_or(current.models),
        model_map: patch.model_map.unwrap_or(current.model_map),
        priority: patch.priority.unwrap_or(current.priority),
        weight: patch.weight.unwrap_or(current.weight),
        modes: patch.modes.unwrap_or(current.modes),
        enabled: patch.enabled.unwrap_or(current.enabled),
    };
    check_channel(&spec)?;
    let row = state.store.save_channel(Some(id), &spec).await?;
    reload(&state).await?;
    ok(channel_json(&state, &row))
}

async fn delete_channel(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    state.store.delete_channel(id).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Probes that cannot succeed without spending money end in a client error that still proves the
/// key was accepted: Kling's query of a task that does not exist, Ideogram's describe without an image.
fn probe_accepted(kind: ChannelKind, status: axum::http::StatusCode) -> bool {
    match kind {
        ChannelKind::Kling | ChannelKind::Ideogram => matches!(status.as_u16(), 400 | 404 | 422),
        ChannelKind::Udio | ChannelKind::Luma => status.as_u16() == 404,
        _ => false,
    }
}

/// Checks each key of a channel against the upstream with a free call (`GET /v1/models`; Suno: an empty fetch).
async fn test_channel(State(state): State<AppState>, Path(id): Path<i64>) -> AdminResult {
    let row = state.store.channel(id).await?;
    let kind = ChannelKind::parse(&row.kind).map_err(ApiError::invalid_request)?;
    let base = crate::catalog::normalize_base_url(&row.base_url);
    let mut results = Vec::new();
    for key in &row.keys {
        let started = std::time::Instant::now();
        let client = &state.upstream.client;
        let request = match kind {
            ChannelKind::Openai => client
                .get(format!("{base}/v1/models"))
                .bearer_auth(&key.secret),
            ChannelKind::Suno => client
                .post(format!("{base}/suno/fetch"))
                .header("content-type", "application/json")
                .body(r#"{"ids":[]}"#)
                .bearer_auth(&key.secret),
            ChannelKind::Midjourney => client
                .post(format!("{base}/mj/task/list-by-condition"))
                .header("content-type", "application/json")
                .header("mj-api-secret", &key.secret)
                .body(r#"{"ids":[]}"#),
            // fal and jimeng: a free query under the family's own auth
            ChannelKind::Fal | ChannelKind::Jimeng => {
                crate::tasks::images::probe_request(&state, kind, &base, &key.secret)
            }
            // no free listing call: a fetch of an unknown task answers 404 with a good key, 401 without
            ChannelKind::Udio => client
                .get(format!("{base}/udio/fetch/uniapi-channel-test"))
                .bearer_auth(&key.secret),
            ChannelKind::Luma => client
                .get(format!("{base}/luma/generations/uniapi-channel-test"))
                .bearer_auth(&key.secret),
            ChannelKind::Kling => crate::tasks::kling::probe(client, &base, &key.secret),
            ChannelKind::Ideogram => crate::tasks::ideogram::probe(client, &base, &key.secret),
        };
        let outcome =
            tokio::time::timeout(std::time::Duration::from_secs(15), request.send()).await;
        let (ok, status, error) = match outcome {
            Err(_) => (false, None, Some("timed out".to_string())),
            Ok(Err(e)) => (
                false,
                None,
                Some(if e.is_connect() {
                    "connection failed".into()
                } else {
                    "request failed".to_string()
                }),
            ),
            Ok(Ok(response)) => (
                response.status().is_success() || probe_accepted(kind, response.status()),
                Some(response.status().as_u16()),
                None,
            ),
        };
        results.push(json!({
            "key": mask_secret(&key.secret),
            "ok": ok,
            "status": status,
            "error": error,
            "latency_ms": started.elapsed().as_millis() as u64,
        }));
    }
    let all_ok = results.iter().all(|r| r["ok"] == true);
    ok(json!({"channel_id": id, "ok": all_ok, "keys": results}))
}

// ---- prices

async fn list_prices(State(state): State<AppState>) -> AdminResult {
    let catalog = state.catalog.load();
    let mut prices: BTreeMap<&str, PriceConfig> = BTreeMap::new();
    for (model, price) in &catalog.prices {
        prices.insert(model, price.to_usd());
    }
    ok(json!({"data": prices}))
}

async fn put_price(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> AdminResult {
    let usd: PriceConfig = parse(&body)?;
    let price = Price::from_usd(&usd).map_err(|(field, message)| {
        ApiError::invalid_request(format!("`{field}` {message}")).with_param(field)
    })?;
    let spec = serde_json::to_string(&price).map_err(|e| ApiError::internal(e.to_string()))?;
    state.store.put_price(&model, &spec).await?;
    reload(&state).await?;
    ok(json!({"model": model, "price": price.to_usd()}))
}

async fn delete_price(State(state): State<AppState>, Path(model): Path<String>) -> AdminResult {
    state.store.delete_price(&model).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- logs

#[derive(Deserialize, Default)]
struct TaskFilter {
    user_id: Option<i64>,
    family: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_tasks(
    State(state): State<AppState>,
    filter: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> AdminResult {
    let Query(f) = filter
        .map_err(|e| ApiError::invalid_request(format!("Invalid query: {}", e.body_text())))?;
    let tasks = state
        .store
        .tasks(
            f.user_id,
            f.family.as_deref(),
            f.state.as_deref(),
            f.limit.unwrap_or(100),
            f.offset.unwrap_or(0),
        )
        .await?;
    ok(json!({"data": tasks}))
}

async fn get_task(State(state): State<AppState>, Path(id): Path<String>) -> AdminResult {
    match state.store.task(&id).await? {
        Some(task) => ok(json!(task)),
        None => Err(ApiError::not_found(
            "task_not_found",
            format!("no task `{id}`"),
        )),
    }
}

async fn get_log(State(state): State<AppState>, Path(id): Path<String>) -> AdminResult {
    let filter = LogFilter {
        id: Some(id.clone()),
        ..Default::default()
    };
    let log = state
        .store
        .logs(&filter)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("not_found", format!("request {id} not found")))?;
    ok(serde_json::to_value(log).unwrap_or_default())
}

async fn list_logs(
    State(state): State<AppState>,
    filter: Result<Query<LogFilter>, axum::extract::rejection::QueryRejection>,
) -> AdminResult {
    let Query(filter) = filter
        .map_err(|e| ApiError::invalid_request(format!("Invalid query: {}", e.body_text())))?;
    let logs = state.store.logs(&filter).await?;
    ok(
        json!({"data": logs, "limit": filter.limit.unwrap_or(100).clamp(1, 1000), "offset": filter.offset.unwrap_or(0)}),
    )
}
