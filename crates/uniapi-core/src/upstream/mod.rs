//! The pooled HTTP clients that talk to upstream providers.
//!
//! Two long-lived clients share the settings (rustls with the platform's certificate verifier,
//! connection pool, no redirects followed, bodies passed through as sent with their `Content-Encoding`):
//! - `relay`: hyper's connection API under a pool of our own ([`pool`]), used on the request path of
//!   the OpenAI family. It skips what reqwest adds per request (its redirect layer, and the response's
//!   URL parsed back from the request's, ~13k instructions a request, measured with callgrind) and what
//!   hyper_util's pooled client adds (see [`pool`]), and lets the relay send a prebuilt `Authorization`
//!   header per key.
//! - `client`: reqwest, for the task relays, callbacks and admin probes, where its conveniences (JSON,
//!   multipart, query strings) matter more than a few microseconds.
//!
//! HTTP/2 is negotiated by ALPN on TLS; a single HTTP/2 connection carries at most the server's
//! `max_concurrent_streams` (about 100 at OpenAI), after which requests queue inside the client — if a
//! deployment pushes more than that to one host, shard over several clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::RoutingConfig;

mod pool;

use pool::{POOL_IDLE, POOL_MAX_IDLE_PER_HOST};
pub use pool::{PooledBody, RelayClient, RelayError};

#[derive(Clone)]
pub struct Upstream {
    pub client: reqwest::Client,
    pub relay: RelayClient,
    pub first_byte_timeout: Duration,
    /// The longest an upstream body may stay silent once it has started.
    pub idle_timeout: Duration,
}

const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(routing: &RoutingConfig) -> Upstream {
        let connect_timeout = Duration::from_millis(routing.connect_timeout_ms);
        let idle_timeout = Duration::from_millis(routing.idle_timeout_ms);
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(idle_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "building the tuned upstream client failed; using defaults");
                reqwest::Client::new()
            });
        Upstream {
            client,
            relay: relay_client(connect_timeout, tls_config()),
            first_byte_timeout: Duration::from_millis(routing.first_byte_timeout_ms),
            idle_timeout,
        }
    }
}

#[expect(
    clippy::expect_used,
    reason = "aws-lc-rs implements TLS 1.2 and 1.3, the safe defaults: a fact of the build, not of the run"
)]
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions");
    match rustls_platform_verifier::Verifier::new(provider) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
        Err(e) => {
            // no usable system trust store: every TLS upstream would fail, so say why once
            tracing::error!(error = %e, "the system's certificate store could not be loaded; TLS upstreams will be refused");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// The relay's pooled client over `tls` (HTTP/2 or HTTP/1.1 offered by ALPN) or plain TCP.
pub fn relay_client(connect_timeout: Duration, tls: rustls::ClientConfig) -> RelayClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    RelayClient::new(https)
}

/// How an upstream body stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Nothing arrived for the idle timeout.
    Silent,
    /// The connection broke or the framing was invalid.
    Broken,
}

/// An upstream response body as a stream of data chunks (trailers are dropped), failing with
/// [`BodyError::Silent`] when no byte arrives for the idle timeout. The timer is armed only while
/// the body is waiting, and restarts after every chunk.
pub struct UpstreamBody {
    body: PooledBody,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer must restart the next time the body waits: a chunk came since it was set.
    rearm: bool,
    done: bool,
}

impl UpstreamBody {
    pub fn new(body: PooledBody, idle: Duration) -> UpstreamBody {
        UpstreamBody {
            body,
            idle,
            timer: None,
            rearm: true,
            done: false,
        }
    }

    /// The bytes the upstream declared that this body has not handed over yet, if it declared a length.
    pub fn exact_len(&self) -> Option<u64> {
        self.body.size_hint().exact()
    }

    /// Whether a poll that finds nothing ready has already let the connection read all it could (see
    /// [`PooledBody::drives_its_connection`]).
    pub fn drives_its_connection(&self) -> bool {
        self.body.drives_its_connection()
    }

    /// The next chunk: `Ok(None)` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.rearm = true;
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    // a trailers frame: nothing to pass on
                }
                Poll::Ready(Some(Err(_))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(BodyError::Broken)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.rearm {
                        this.rearm = false;
                        let deadline = tokio::time::Instant::now() + this.idle;
                        match this.timer.as_mut() {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                    }
                    let Some(timer) = this.timer.as_mut() else {
                        return Poll::Pending;
                    };
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            this.done = true;
                            Poll::Ready(Some(Err(BodyError::Silent)))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
