//! The relay's own upstream pool (`uniapi_core::upstream::RelayClient`) against fake upstreams that
//! count their connections and record what arrived: reuse, the hand-back at the body's end, bodies
//! left unread, upstreams that close idle connections (found by the next request or by the sweep),
//! `Host` and the origin-form request line on the wire, and HTTP/2 chosen by ALPN over TLS (a
//! self-signed `localhost` certificate in `tls/`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uniapi_core::upstream::{PooledBody, RelayClient, RelayError, relay_client};

const CERT: &[u8] = include_bytes!("tls/localhost.crt");
const KEY: &[u8] = include_bytes!("tls/localhost.key");

const BY_LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n5\r\nhello\r\n0\r\n\r\n";

/// A raw HTTP/1.1 upstream: answers every request on a connection with `response`, closing the
/// connection after each answer when `close_after` is set (without saying so in a header).
struct FakeH1 {
    port: u16,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn fake_h1(response: &'static [u8], close_after: bool) -> FakeH1 {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let record = heads.clone();
    let (port, accepted) =
        counting_listener(move |stream| serve_h1(stream, response, close_after, record.clone()))
            .await;
    FakeH1 {
        port,
        accepted,
        heads,
    }
}

/// A loopback listener that counts the connections it accepts and serves each on its own task.
async fn counting_listener<F, Fut>(serve: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (port, accepted)
}

async fn serve_h1(
    mut stream: TcpStream,
    response: &'static [u8],
    close_after: bool,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        // one request: its head, then the body its content-length declares
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        heads.lock().unwrap().push(head);
        if stream.write_all(response).await.is_err() || close_after {
            return;
        }
    }
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap()
}

fn plain_client() -> RelayClient {
    relay_client(Duration::from_secs(2), test_tls())
}

/// A client configuration that trusts only the test certificate.
fn test_tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CERT).unwrap())
        .unwrap();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn read_all(response: Response<PooledBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn sequential_requests_share_one_connection_handed_back_when_the_body_ends() {
    for (response, body) in [
        (BY_LENGTH, &b"{\"ok\":true}"[..]),
        (CHUNKED, &b"data: hello"[..]),
    ] {
        let upstream = fake_h1(response, false).await;
        let client = plain_client();
        let authority = format!("127.0.0.1:{}", upstream.port);
        for _ in 0..3 {
            let url = format!("http://{authority}/v1/chat/completions?x=1");
            let answer = client.request(post(&url)).await.unwrap();
            assert_eq!(answer.version(), Version::HTTP_11);
            assert_eq!(client.idle_connections(false, &authority), 0, "on loan");
            assert_eq!(&read_all(answer).await[..], body);
            assert_eq!(client.idle_connections(false, &authority), 1, "handed back");
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        let heads = upstream.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3);
        for head in heads {
            assert!(
                head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
                "origin-form request line: {head}"
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("\r\nhost: {authority}\r\n")),
                "the Host the URI implies: {head}"
            );
        }
    }
}

#[tokio::test]
async fn a_body_left_unread_takes_its_connection_with_it() {
    let upstream = fake_h1(BY_LENGTH, false).await;
    let client = plain_client();
    let authority = format!("127.0.0.1:{}", upstream.port);
    let url = format!("http://{authority}/v1/embeddings");
    let answer = client.request(post(&url)).await.unwrap();
    drop(answer);
    assert_eq!(client.idle_connections(false, &authority), 0);
    let answer = client.request(post(&url)).await.unwrap();
    assert_eq!(&read_all(answer).await[..], b"{\"ok\":true}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(client.idle_connections(false, &authority), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_come_back() {
    let upstream = fake_h1(CHUNKED, false).await;
    let client = plain_client();
    let authority = format!("127.0.0.1:{}", upstream.port);
    let url = format!("http://{authority}/v1/chat/completions");
    // every answer is held until all have arrived, so none can reuse another's connection
    let answers = futures_util::future::join_all((0..8).map(|_| client.request(post(&url)))).await;
    for answer in answers {
        assert_eq!(&read_all(answer.unwrap()).await[..], b"data: hello");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 8);
    assert_eq!(client.idle_connections(false, &authority), 8);
    // and the next eight reuse them
    for _ in 0..8 {
        read_all(client.request(post(&url)).await.unwrap()).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_gets_new_ones() {
    let upstream = fake_h1(BY_LENGTH, true).await;
    let client = plain_client();
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", upstream.port);
    for _ in 0..3 {
        let answer = client.request(post(&url)).await.unwrap();
        assert_eq!(&read_all(answer).await[..], b"{\"ok\":true}");
        // the close reaches the pooled connection, as it would during an idle minute
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(upstream.heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn the_sweep_drops_idle_connections_the_upstream_closed() {
    // an upstream that answers and keeps the connection open until told to close it
    let heads = Arc::new(Mutex::new(Vec::new()));
    let close = Arc::new(tokio::sync::Notify::new());
    let closed = Arc::new(tokio::sync::Notify::new());
    let (told, done) = (close.clone(), closed.clone());
    let (port, accepted) = counting_listener(move |stream| {
        let serve = serve_h1(stream, BY_LENGTH, false, heads.clone());
        let (told, done) = (told.clone(), done.clone());
        async move {
            tokio::select! {
                _ = serve => {}
                _ = told.notified() => {}
            }
            // the stream went with `serve`: closed
            done.notify_one();
        }
    })
    .await;
    let client = plain_client();
    let authority = format!("127.0.0.1:{port}");
    let url = format!("http://{authority}/v1/chat/completions");
    let answer = client.request(post(&url)).await.unwrap();
    assert_eq!(&read_all(answer).await[..], b"{\"ok\":true}");
    assert_eq!(client.idle_connections(false, &authority), 1, "handed back");
    // the upstream's close arrives while the connection sits idle, driven by no request
    close.notify_one();
    closed.notified().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        client.idle_connections(false, &authority),
        1,
        "not noticed yet"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // the host's sweep (every 30 s) drives it, reads the close and lets it go
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(
        client.idle_connections(false, &authority),
        1,
        "before the sweep"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(client.idle_connections(false, &authority), 0, "swept");
}

#[tokio::test]
async fn no_listener_is_a_connect_error_and_a_bad_uri_is_refused() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let client = plain_client();
    let err = client
        .request(post(&format!("http://127.0.0.1:{port}/v1/models")))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    for url in ["/v1/models", "ftp://127.0.0.1/v1/models"] {
        let err = client.request(post(url)).await.unwrap_err();
        assert!(matches!(err, RelayError::BadUri), "{url}: {err}");
    }
}

/// A TLS upstream offering `alpn`, answering with the protocol version and the URI it saw; with
/// `drop_after` set, each connection is cut that long after it was accepted.
async fn tls_upstream(alpn: &[&[u8]], drop_after: Option<Duration>) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(CERT).unwrap()],
            PrivateKeyDer::from_pem_slice(KEY).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    counting_listener(move |stream| serve_tls(acceptor.clone(), stream, drop_after)).await
}

/// One TLS connection: HTTP/2 if ALPN chose it, else HTTP/1.1; cut after `drop_after` when set.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    drop_after: Option<Duration>,
) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let text = format!(
            "{:?} {} {}",
            req.version(),
            req.uri(),
            req.headers()["host"].to_str().unwrap()
        );
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let serve = async {
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
    };
    match drop_after {
        Some(after) => {
            let _ = tokio::time::timeout(after, serve).await;
        }
        None => serve.await,
    }
}

#[tokio::test]
async fn alpn_h2_gives_one_shared_connection() {
    let (port, accepted) = tls_upstream(&[b"h2", b"http/1.1"], None).await;
    let client = plain_client();
    let url = format!("https://localhost:{port}/v1/chat/completions?x=1");
    let first = client.request(post(&url)).await.unwrap();
    assert_eq!(first.version(), Version::HTTP_2);
    assert_eq!(
        &read_all(first).await[..],
        format!("HTTP/2.0 {url} localhost:{port}").as_bytes()
    );
    let answers = futures_util::future::join_all((0..10).map(|_| client.request(post(&url)))).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.version(), Version::HTTP_2);
        read_all(answer).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // HTTP/2 is shared, never lent: the idle list stays empty
    assert_eq!(
        client.idle_connections(true, &format!("localhost:{port}")),
        0
    );
}

#[tokio::test]
async fn a_closed_h2_connection_is_replaced() {
    let (port, accepted) = tls_upstream(&[b"h2"], Some(Duration::from_millis(300))).await;
    let client = plain_client();
    let url = format!("https://localhost:{port}/v1/models");
    read_all(client.request(post(&url)).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = client.request(post(&url)).await.unwrap();
    assert_eq!(answer.version(), Version::HTTP_2);
    read_all(answer).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tls_without_h2_pools_http1_connections() {
    let (port, accepted) = tls_upstream(&[b"http/1.1"], None).await;
    let client = plain_client();
    let authority = format!("localhost:{port}");
    let url = format!("https://{authority}/v1/embeddings");
    for _ in 0..3 {
        let answer = client.request(post(&url)).await.unwrap();
        assert_eq!(answer.version(), Version::HTTP_11);
        assert_eq!(
            &read_all(answer).await[..],
            format!("HTTP/1.1 /v1/embeddings {authority}").as_bytes()
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(true, &authority), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let (port, _) = tls_upstream(&[b"h2"], None).await;
    // the platform's roots do not include the test certificate
    let client = relay_client(
        Duration::from_secs(2),
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    );
    let err = client
        .request(post(&format!("https://localhost:{port}/v1/models")))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// The request's future is moved into the relay's timeout on every request: connecting, with its TLS
/// and handshake futures (7.3 KB), is boxed out of it, so the common case copies ~1 KB, not ~8.
#[tokio::test]
async fn the_request_future_stays_small() {
    let client = plain_client();
    let future = client.request(post("http://127.0.0.1:1/v1/models"));
    let size = std::mem::size_of_val(&future);
    assert!(size <= 2048, "{size} bytes");
}

/// An upstream served by a runtime of its own, on its own thread, so that the test's runtime holds only
/// the client's tasks.
fn fake_h1_elsewhere(response: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let upstream = fake_h1(response, false).await;
            tx.send((upstream.port, upstream.accepted.clone())).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// An HTTP/1 connection is driven by the request that has it on loan, not by a task of its own:
/// eight open connections leave the client's runtime with one task, the host's idle sweep.
#[tokio::test]
async fn http1_connections_have_no_task_of_their_own() {
    let (port, accepted) = fake_h1_elsewhere(CHUNKED);
    let client = plain_client();
    let authority = format!("127.0.0.1:{port}");
    let url = format!("http://{authority}/v1/chat/completions");
    let answers = futures_util::future::join_all((0..8).map(|_| client.request(post(&url)))).await;
    for answer in answers {
        assert_eq!(&read_all(answer.unwrap()).await[..], b"data: hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 8);
    assert_eq!(client.idle_connections(false, &authority), 8);
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(tasks, 1, "the sweep only");
    // and an idle connection, driven by no one meanwhile, still takes the next request
    read_all(client.request(post(&url)).await.unwrap()).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 8);
}

/// A request body larger than the socket buffers is written while the request waits for its answer
/// (the request's task drives the connection's writes as well as its reads).
#[tokio::test]
async fn a_request_body_larger_than_the_socket_buffers_goes_out_whole() {
    let upstream = fake_h1(BY_LENGTH, false).await;
    let client = plain_client();
    let url = format!("http://127.0.0.1:{}/v1/audio/transcriptions", upstream.port);
    let body = Bytes::from(vec![b'x'; 8 * 1024 * 1024]);
    for _ in 0..2 {
        let request = Request::post(&url)
            .header("content-type", "application/octet-stream")
            .body(Full::new(body.clone()))
            .unwrap();
        let answer = client.request(request).await.unwrap();
        assert_eq!(&read_all(answer).await[..], b"{\"ok\":true}");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(heads[0].contains("content-length: 8388608"), "{}", heads[0]);
}
