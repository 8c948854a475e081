//! The sandbox upstream: a deterministic simulation of the provider APIs uniapi relays.
//! Used as the tests' fake upstream, by `uniapi serve --demo`, by `uniapi sandbox` and by the benchmark.
//!
//! Layout: a small shared core (live config, request journal, fault queue, the `/v1` gate that
//! records, authenticates and injects faults, the `/__sandbox` control endpoint, SSE bodies) and
//! one module per provider family (`openai`, `suno`).

mod body;
mod control;
mod error;
mod fal;
mod fault;
mod gate;
mod ideogram;
mod jimeng;
mod journal;
mod kling;
mod luma;
mod midjourney;
mod openai;
mod sse;
mod state;
mod suno;
mod tasks;
mod text;
mod udio;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use crate::state::SandboxState;

pub use jimeng::JIMENG_SECRET_KEY;

/// Knobs the sandbox starts with; latency and stream shape can be changed later through
/// `PUT /__sandbox/config`.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Accepted upstream keys (`Authorization: Bearer <key>`).
    pub keys: Vec<String>,
    /// Delay before the response head of every `/v1` call.
    pub latency_ms: u64,
    /// Content chunks in a streamed answer (fewer when the answer has fewer words).
    pub stream_chunks: usize,
    /// Delay before each streamed content chunk.
    pub chunk_delay_ms: u64,
    /// The Kling access key / secret key pair the official Kling routes verify JWTs with.
    pub kling_access_key: String,
    pub kling_secret_key: String,
}

/// The sandbox's default Kling key pair (a `kling` channel's key is `ACCESS|SECRET`).
pub const KLING_ACCESS_KEY: &str = "sandbox-kling-access-key";
pub const KLING_SECRET_KEY: &str = "sandbox-kling-secret-key-0123456789";

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            keys: vec!["sk-sandbox".into()],
            latency_ms: 0,
            stream_chunks: 8,
            chunk_delay_ms: 0,
            kling_access_key: KLING_ACCESS_KEY.into(),
            kling_secret_key: KLING_SECRET_KEY.into(),
        }
    }
}

/// The whole sandbox as a Router, state included.
pub fn router(config: SandboxConfig) -> Router {
    let state = Arc::new(SandboxState::new(config));
    openai::routes()
        .fallback(gate::unknown_route)
        .method_not_allowed_fallback(gate::method_not_allowed)
        // The gate wraps every route above (and the fallbacks), not the control routes below.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            gate::gate,
        ))
        // Suno routes carry their own gate (Suno envelopes), on matched routes only.
        .merge(suno::routes(state.clone()))
        .merge(midjourney::routes(state.clone()))
        .merge(fal::routes(state.clone()))
        .merge(jimeng::routes(state.clone()))
        .merge(udio::routes(state.clone()))
        .merge(luma::routes(state.clone()))
        .merge(kling::routes(state.clone()))
        .merge(ideogram::routes(state.clone()))
        .merge(control::routes())
        .with_state(state)
}

/// Serves the sandbox on `listener` until the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SandboxConfig,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // every SSE event leaves at once (no Nagle delay on keep-alive connections)
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // the route table is built once, not per accepted connection
    axum::serve(listener, router(config).into_make_service()).await
}

/// Binds `127.0.0.1:0`, serves the sandbox in a background task and returns its address.
pub async fn spawn(config: SandboxConfig) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = serve(listener, config).await {
            tracing::error!(%err, "sandbox server stopped");
        }
    });
    Ok(addr)
}
