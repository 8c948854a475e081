//! Balance endpoints answered by the gateway itself: UniAPI's `/v1/billing/usage` and the OpenAI legacy
//! `/dashboard/billing/*` routes (with and without `/v1`), straight from the in-memory ledger.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::auth;
use crate::billing::ledger::Standing;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/billing/usage", get(usage))
        .route("/v1/dashboard/billing/subscription", get(subscription))
        .route("/dashboard/billing/subscription", get(subscription))
        .route("/v1/dashboard/billing/usage", get(legacy_usage))
        .route("/dashboard/billing/usage", get(legacy_usage))
}

#[derive(Deserialize, Default)]
struct UsageQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    unit: Option<String>,
}

/// Looks up the calling key and its user's standing.
fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(std::sync::Arc<crate::catalog::ApiKey>, Standing), ApiError> {
    let key = auth::authenticate(&state.catalog.load(), auth::bearer(headers))?;
    let standing = state.ledger.standing(key.user_id).unwrap_or_default();
    Ok((key, standing))
}

fn nano_usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = query.unwrap_or_default();
    let (key, user) = match caller(&state, &headers) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let (balance, used, cache_used) = if query.kind.as_deref() == Some("token") {
        let k = state
            .ledger
            .key_standing(key.user_id, key.id)
            .unwrap_or_default();
        // a key without a cap has no balance of its own: -1, as UniAPI answers
        (
            k.quota_nano.map(|q| q - k.used_nano - k.held_nano),
            k.used_nano,
            k.cache_used_nano,
        )
    } else {
        (
            Some(user.balance_nano - user.held_nano),
            user.used_nano,
            user.cache_used_nano,
        )
    };
    let credits = state.config.billing.credits_per_usd as f64;
    let convert = |nano: i64| {
        if query.unit.as_deref() == Some("usd") {
            nano_usd(nano)
        } else {
            nano_usd(nano) * credits
        }
    };
    let balance = balance.map_or(-1.0, convert);
    axum::Json(json!({"success": true, "data": {"balance": balance, "used": convert(used), "cache_used": convert(cache_used)}})).into_response()
}

async fn subscription(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (key, user) = match caller(&state, &headers) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    // the total the account has had: what is left plus what was spent
    let limit = nano_usd(user.balance_nano - user.held_nano + user.used_nano);
    axum::Json(json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": key.expires_at.map_or(0, |t| t / 1000),
    }))
    .into_response()
}

async fn legacy_usage(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (_, user) = match caller(&state, &headers) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    // cents of USD: clients compute hard_limit_usd - total_usage / 100 = balance
    axum::Json(json!({"object": "list", "total_usage": nano_usd(user.used_nano) * 100.0}))
        .into_response()
}
