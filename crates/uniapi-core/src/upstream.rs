//! The pooled HTTP client that talks to upstream providers.
//!
//! One long-lived reqwest client (rustls, connection pool). Redirects are off (an upstream redirect is
//! relayed, never followed with our key) and so is decompression (bodies pass through as sent, with their
//! `Content-Encoding`). HTTP/2 is negotiated by ALPN on TLS; a single HTTP/2 connection carries at most the
//! server's `max_concurrent_streams` (about 100 at OpenAI), after which requests queue inside the client —
//! if a deployment pushes more than that to one host, shard over several clients.

use std::time::Duration;

use crate::config::RoutingConfig;

#[derive(Clone)]
pub struct Upstream {
    pub client: reqwest::Client,
    pub first_byte_timeout: Duration,
}

/// Idle pooled connections are closed after this: shorter than the usual 120 s server-side keep-alive,
/// so we rarely write to a socket the upstream has just closed.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Enough idle connections per host for a burst of concurrent streams to reuse them.
const POOL_MAX_IDLE_PER_HOST: usize = 512;

impl Upstream {
    pub fn new(routing: &RoutingConfig) -> Upstream {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(routing.connect_timeout_ms))
            .read_timeout(Duration::from_millis(routing.idle_timeout_ms))
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "building the tuned upstream client failed; using defaults");
                reqwest::Client::new()
            });
        Upstream {
            client,
            first_byte_timeout: Duration::from_millis(routing.first_byte_timeout_ms),
        }
    }
}
