//! The relay's upstream client: hyper's connection API under a pool of our own.
//!
//! hyper_util's pooled client did more per request than the relay needs (callgrind, chat request):
//! a SipHash of the scheme and authority for the pool key, a checkout future that races a connect
//! against the idle list, and for every HTTP/1 response a spawned task that waits for the connection
//! to be ready again before returning it to the pool. Here:
//! - hosts are looked up by the authority's text (one map per scheme) with foldhash, under a short
//!   lock: the `Authority` type's own hash lowercases and hashes byte by byte, and channel URLs are
//!   already lowercased when they are parsed;
//! - an HTTP/1 connection is taken from its host's idle list (the most recently used first) and
//!   handed back by the response body itself, the moment the body has been read to its end, so no task
//!   is spawned per request; a body dropped before its end drops the connection (hyper closes it);
//! - an HTTP/1 connection has no task of its own either: the request that has it on loan drives it
//!   (its future polls the connection, then the response or body it waits for), so the upstream's
//!   answer is read and handed on in one turn of the request's task instead of waking a connection task
//!   that then wakes the request. An idle connection is driven by no one: the next request that takes
//!   it out, and the sweep, find out whether the upstream closed it;
//! - when ALPN on TLS chose HTTP/2, the host keeps that connection and every request shares it;
//! - a request that a reused connection refused before sending it (the upstream closed it while idle)
//!   is sent again, on another connection; one that fails on a fresh connection is not;
//! - idle connections are closed after [`POOL_IDLE`], and at most [`POOL_MAX_IDLE_PER_HOST`] are kept.
//!
//! What it does not do that hyper_util's does: merge concurrent first connections to an HTTP/2 host.
//! Requests that start together before the host's first connection is up each open one; the first to
//! finish its handshake becomes the host's shared connection and the others close after their request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use futures_util::task::AtomicWaker;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

/// Idle pooled connections are closed after this: shorter than the usual 120 s server-side keep-alive,
/// so we rarely write to a socket the upstream has just closed.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Enough idle connections per host for a burst of concurrent streams to reuse them.
pub const POOL_MAX_IDLE_PER_HOST: usize = 512;
/// How often a host's idle list is swept for connections past [`POOL_IDLE`] when no request comes.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

type ReqBody = Full<Bytes>;
pub type Connector = HttpsConnector<HttpConnector>;
/// The connector's stream: TCP, or TLS over TCP.
type Io = <Connector as Service<Uri>>::Response;

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream URL has no http(s) scheme or no host")]
    BadUri,
    #[error("connecting to the upstream failed: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("the upstream request failed: {0}")]
    Request(#[from] hyper::Error),
    #[error("the upstream closed the connection before the request was sent")]
    Closed,
}

impl RelayError {
    /// Whether no connection could be made (rather than a request failing on one).
    pub fn is_connect(&self) -> bool {
        matches!(self, RelayError::Connect(_))
    }
}

/// The pooled client the relay sends through: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct RelayClient {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Plain http hosts, then https hosts, by authority (`host:port`).
    hosts: Mutex<[HashMap<Box<str>, Arc<Host>>; 2]>,
}

/// One upstream origin (scheme, host, port) and its connections.
struct Host {
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection every request to this host shares, once ALPN chose HTTP/2.
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
}

struct Idle {
    h1: H1,
    since: Instant,
}

/// An HTTP/1 connection: the handle requests are sent on and the connection's own future, which
/// whoever holds it polls ([`H1::drive`]); boxed once per connection, so a loan moves a pointer.
struct H1 {
    tx: http1::SendRequest<ReqBody>,
    /// `None` once the connection's future has finished (the connection is closed).
    conn: Option<Pin<Box<http1::Connection<Io, ReqBody>>>>,
    signal: Arc<Signal>,
    /// The waker the connection is polled with: it wakes [`Signal`].
    waker: Waker,
}

/// What the connection's waker does: it notes that the connection has something to do (its socket is
/// ready, a request was handed to it, its body was read) and wakes the task that has it on loan. A
/// task is also polled for its own reasons (the client's request body, a stream's turn); the
/// connection is polled only when it was woken, not every time the task is.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl H1 {
    fn new(tx: http1::SendRequest<ReqBody>, conn: http1::Connection<Io, ReqBody>) -> H1 {
        let signal = Arc::new(Signal {
            // never polled yet
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        H1 {
            tx,
            conn: Some(Box::pin(conn)),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }

    /// Lets the connection read and write what it can, if it was woken since it last ran; `false` once
    /// it has closed. The task of `cx` is woken when the connection has more to do.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        self.signal.task.register(cx.waker());
        // cleared before the poll: a wake during it counts for the next one
        if self.signal.woken.swap(false, Ordering::AcqRel)
            && let Poll::Ready(result) = conn.as_mut().poll(&mut Context::from_waker(&self.waker))
        {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream HTTP/1 connection closed");
            }
            // dropping the finished connection fails whatever still waits on it
            self.conn = None;
        }
        self.conn.is_some()
    }

    /// Sends `req` and drives the connection until the response head is in (or the connection ends).
    /// On a connection that closed or refused the request before sending it, the request comes back.
    async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, Refused> {
        // an idle connection that was not yet polled since its last answer ended tells its handle here
        // that it wants a request (the handle refuses one before that); one the upstream closed while
        // idle finds out here or in the drive after the request is handed over. No task waker yet: the
        // request handed over next wakes the connection, and the connection would wake this very task
        // for nothing.
        if !self.tx.is_ready() {
            self.signal.woken.store(true, Ordering::Release);
        }
        if !self.drive(&mut Context::from_waker(Waker::noop())) {
            return Err(Refused {
                request: Some(req),
                error: None,
            });
        }
        let mut response = std::pin::pin!(self.tx.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            // only driving the connection (here, by this task) can complete the response, so its
            // future needs no waker of its own: one would only wake this task again for nothing
            match response
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(response)),
                Poll::Ready(Err(mut e)) => Poll::Ready(Err(Refused {
                    request: e.take_message(),
                    error: Some(e.into_error()),
                })),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// A request an HTTP/1 connection did not answer; `request` is back when it was never sent, and
/// `error` is `None` when the connection had closed before it was asked.
struct Refused {
    request: Option<Request<ReqBody>>,
    error: Option<hyper::Error>,
}

impl Refused {
    fn into_error(self) -> RelayError {
        match self.error {
            Some(error) => RelayError::Request(error),
            None => RelayError::Closed,
        }
    }
}

impl Host {
    /// The most recently used idle HTTP/1 connection not past [`POOL_IDLE`]; whether the upstream
    /// closed it is found out by driving it ([`H1::drive`]).
    fn checkout(&self) -> Option<H1> {
        let mut idle = lock(&self.idle);
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < POOL_IDLE {
                return Some(entry.h1);
            }
        }
        None
    }

    fn checkin(&self, h1: H1) {
        if h1.conn.is_none() || h1.tx.is_closed() {
            return;
        }
        // the task it was lent to is done with it
        drop(h1.signal.task.take());
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_MAX_IDLE_PER_HOST {
            idle.push(Idle {
                h1,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections past [`POOL_IDLE`] or already closed by the upstream (driven here
    /// if their socket woke them, with no task to wake: a closed one reads its end and finishes).
    fn sweep(&self) {
        // (the no-op waker stays registered as the connection's task until the next loan registers its own)
        let mut quiet = Context::from_waker(Waker::noop());
        lock(&self.idle)
            .retain_mut(|entry| entry.since.elapsed() < POOL_IDLE && entry.h1.drive(&mut quiet));
        let mut h2 = lock(&self.h2);
        if h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *h2 = None;
        }
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<ReqBody>> {
        let mut slot = lock(&self.h2);
        match slot.as_ref() {
            Some(tx) if tx.is_closed() => {
                *slot = None;
                None
            }
            Some(tx) => Some(tx.clone()),
            None => None,
        }
    }
}

/// A poisoned pool lock only means a request panicked while holding it: the list itself is sound.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection made for one request.
enum Fresh {
    H1(H1),
    H2(http2::SendRequest<ReqBody>),
}

impl RelayClient {
    pub fn new(connector: Connector) -> RelayClient {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        RelayClient {
            shared: Arc::new(Shared {
                connector,
                h1: http1::Builder::new(),
                h2,
                hosts: Mutex::new([HashMap::default(), HashMap::default()]),
            }),
        }
    }

    /// Sends `req` (an absolute `http` or `https` URI) and answers with the upstream's response head;
    /// the body hands its connection back to the pool once read to its end.
    pub async fn request(
        &self,
        mut req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, RelayError> {
        let https = match req.uri().scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(RelayError::BadUri),
        };
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(RelayError::BadUri);
        };
        if !req.headers().contains_key(hyper::header::HOST) {
            let host = host_header(&authority, https)?;
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        let host = self.host(https, authority)?;
        let absolute = req.uri().clone();
        let origin_form = origin_form(&absolute);
        let mut use_h2 = true;
        loop {
            if use_h2 && let Some(mut tx) = host.shared_h2() {
                if tx.ready().await.is_ok() {
                    *req.uri_mut() = absolute.clone();
                    match tx.try_send_request(req).await {
                        Ok(response) => return Ok(response.map(|b| PooledBody::new(b, None))),
                        Err(mut e) => match e.take_message() {
                            // refused before it was sent: the connection is going away
                            Some(back) => req = back,
                            None => return Err(RelayError::Request(e.into_error())),
                        },
                    }
                }
                // not used again for this request: the next attempt takes an HTTP/1 or a new connection
                use_h2 = false;
                continue;
            }
            let Some(mut h1) = host.checkout() else {
                break;
            };
            *req.uri_mut() = origin_form.clone();
            match h1.send(req).await {
                Ok(response) => {
                    let back = Checkin { h1, host };
                    return Ok(response.map(|b| PooledBody::new(b, Some(back))));
                }
                Err(refused) => match refused.request {
                    // the upstream closed this idle connection before the request went out: another one
                    Some(back) => req = back,
                    None => return Err(refused.into_error()),
                },
            }
        }
        // boxed: the connect and handshake futures are kilobytes, and the request's future is moved
        // (into the relay's timeout) on every request, connecting or not
        match Box::pin(self.connect(&host)).await? {
            Fresh::H1(mut h1) => {
                *req.uri_mut() = origin_form;
                let response = h1.send(req).await.map_err(Refused::into_error)?;
                let back = Checkin { h1, host };
                Ok(response.map(|b| PooledBody::new(b, Some(back))))
            }
            Fresh::H2(mut tx) => {
                *req.uri_mut() = absolute;
                let response = tx.send_request(req).await?;
                Ok(response.map(|b| PooledBody::new(b, None)))
            }
        }
    }

    fn host(&self, https: bool, authority: Authority) -> Result<Arc<Host>, RelayError> {
        let mut hosts = lock(&self.shared.hosts);
        let hosts = &mut hosts[usize::from(https)];
        if let Some(host) = hosts.get(authority.as_str()) {
            return Ok(host.clone());
        }
        let origin = Uri::builder()
            .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| RelayError::BadUri)?;
        let host = Arc::new(Host {
            origin,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        });
        hosts.insert(authority.as_str().into(), host.clone());
        tokio::spawn(sweep(Arc::downgrade(&host)));
        Ok(host)
    }

    async fn connect(&self, host: &Host) -> Result<Fresh, RelayError> {
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(RelayError::Connect)?;
        let io = connector
            .call(host.origin.clone())
            .await
            .map_err(RelayError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (mut tx, conn) = self.shared.h2.handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection closed");
                }
            });
            tx.ready().await?;
            let mut slot = lock(&host.h2);
            if slot.as_ref().is_none_or(http2::SendRequest::is_closed) {
                *slot = Some(tx.clone());
            }
            Ok(Fresh::H2(tx))
        } else {
            let (tx, conn) = self.shared.h1.handshake(io).await?;
            Ok(Fresh::H1(H1::new(tx, conn)))
        }
    }

    /// The idle HTTP/1 connections held for `authority` (`host:port`) over https or plain http.
    pub fn idle_connections(&self, https: bool, authority: &str) -> usize {
        lock(&self.shared.hosts)[usize::from(https)]
            .get(authority)
            .map_or(0, |host| lock(&host.idle).len())
    }
}

/// Sweeps a host's idle list every [`SWEEP_EVERY`] until the pool lets the host go.
async fn sweep(host: Weak<Host>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(host) = host.upgrade() else {
            return;
        };
        host.sweep();
    }
}

/// The `Host` header hyper_util's client would write: the host, and the port unless it is the
/// scheme's default.
fn host_header(
    authority: &Authority,
    https: bool,
) -> Result<hyper::header::HeaderValue, RelayError> {
    let default = if https { 443 } else { 80 };
    let value = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    hyper::header::HeaderValue::try_from(value).map_err(|_| RelayError::BadUri)
}

/// `/path?query` of an absolute URI: what an HTTP/1 request line carries.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = hyper::http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    }
}

/// An HTTP/1 connection on loan to one response.
struct Checkin {
    h1: H1,
    host: Arc<Host>,
}

/// An upstream response body that returns its HTTP/1 connection to the pool once read to its end.
pub struct PooledBody {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl PooledBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> PooledBody {
        let mut pooled = PooledBody { body, checkin };
        // an empty body (204, 304, a zero length) is read already
        pooled.release_if_read();
        pooled
    }

    /// Whether reading this body is what drives its connection (HTTP/1, until its end): then a poll
    /// that finds nothing ready has already let the connection read all it could.
    pub fn drives_its_connection(&self) -> bool {
        self.checkin.is_some()
    }

    fn release(&mut self) {
        if let Some(Checkin { h1, host }) = self.checkin.take() {
            host.checkin(h1);
        }
    }

    /// Hands the connection back when the declared length has all been read.
    fn release_if_read(&mut self) {
        if self.checkin.is_some() && self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match this.checkin.as_mut() {
            Some(checkin) => {
                // the connection is this body's to drive: what it reads reaches the body's channel
                // only then, so the channel needs no waker (one would wake this task again for
                // nothing). What it read already is taken first.
                let mut quiet = Context::from_waker(Waker::noop());
                match Pin::new(&mut this.body).poll_frame(&mut quiet) {
                    Poll::Pending => {
                        checkin.h1.drive(cx);
                        Pin::new(&mut this.body).poll_frame(&mut quiet)
                    }
                    ready => ready,
                }
            }
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        match &polled {
            // the end of a chunked or close-delimited body
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) => this.release_if_read(),
            // a broken body: its connection is not reused
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // read to its declared end but not polled past it (hyper's server stops at the length)
        self.release_if_read();
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}
