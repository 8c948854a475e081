//! Callbacks: when a client gave a hook URL (`notifyHook`, `notify_hook`, `callback_url`, `webhook`),
//! uniapi POSTs the task in its family's format on every state change, from its own poller, with a
//! bounded number of attempts and a growing pause between them. The upstream never sees the hook.
//!
//! SSRF: a hook whose host is (or resolves to) a loopback, private, link-local or otherwise internal
//! address is refused, at submit and again before every delivery, unless the operator set
//! `tasks.allow_private_callbacks`. Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::state::AppState;
use crate::store::tasks::TaskRow;

/// Whether an address is internal: never a callback target unless the operator allows it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::LOCALHOST
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Why a hook URL cannot be called.
#[derive(Debug, PartialEq, Eq)]
pub enum Unfit {
    /// Never acceptable: a bad URL or an internal address.
    Refused(String),
    /// Its host does not resolve now (it may later).
    Unresolved,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Refused(reason) => f.write_str(reason),
            Unfit::Unresolved => f.write_str("the host does not resolve"),
        }
    }
}

/// Checks a hook URL: http(s), a host, and (unless `allow_private`) no internal address behind it.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), Unfit> {
    check(url, allow_private).await.map_err(|e| match e {
        Some(reason) => Unfit::Refused(reason),
        None => Unfit::Unresolved,
    })
}

/// `Err(None)`: the host did not resolve.
async fn check(url: &str, allow_private: bool) -> Result<(), Option<String>> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Some("not a valid URL".to_string()))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(Some("only http and https callbacks are allowed".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Some(
            "credentials in the callback URL are not allowed".into(),
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Some("the URL has no host".to_string()))?;
    if allow_private {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
        return Err(Some(
            "loopback and private addresses are not allowed".into(),
        ));
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| None)?
        .map_err(|_| None)?
        .map(|a| a.ip())
        .collect(),
    };
    if addrs.is_empty() {
        return Err(None);
    }
    if addrs.into_iter().any(is_internal) {
        return Err(Some(
            "loopback and private addresses are not allowed".into(),
        ));
    }
    Ok(())
}

/// The hook of a stored task, if the client gave one.
pub fn hook_of(task: &TaskRow) -> Option<String> {
    task.request
        .as_ref()?
        .get("notify_hook")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The client that delivers callbacks. Unless private targets are allowed, it resolves names itself
/// and refuses internal addresses when it connects ([`PublicOnly`]): the check before each delivery
/// alone would leave a window between its lookup and the connection's own.
fn client(allow_private: bool) -> &'static reqwest::Client {
    static GUARDED: OnceLock<reqwest::Client> = OnceLock::new();
    static OPEN: OnceLock<reqwest::Client> = OnceLock::new();
    let build = |guarded: bool| {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        let builder = if guarded {
            builder.dns_resolver(PublicOnly)
        } else {
            builder
        };
        builder.build().unwrap_or_default()
    };
    if allow_private {
        OPEN.get_or_init(|| build(false))
    } else {
        GUARDED.get_or_init(|| build(true))
    }
}

/// A resolver that answers only with public addresses: a host that resolved to a public address when
/// its hook was checked cannot point the connection at an internal one afterwards (DNS rebinding).
/// Hosts written as IP addresses are never resolved; [`check_target`] refuses the internal ones.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.iter().any(|a| is_internal(a.ip())) {
                return Err("the callback host resolves to an internal address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Delivers `task` (as it is now) to its hook in the background, for the change that made version
/// `due` (which owes it in the store); when the delivery ends, however it ends, the store says so.
pub fn notify(state: &AppState, task: &TaskRow, due: i64) {
    let body = super::render(task);
    let hook = hook_of(task);
    let attempts = state.config.tasks.callback_attempts.max(1);
    let allow_private = state.config.tasks.allow_private_callbacks;
    let first_pause = Duration::from_millis(state.config.tasks.callback_backoff_ms.max(10));
    let id = task.id.clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        if let Some(hook) = hook {
            deliver(&id, &hook, &body, attempts, allow_private, first_pause).await;
        }
        if let Err(e) = store.callback_done(&id, due).await {
            tracing::warn!(task = %id, error = %e, "could not record a finished callback");
        }
    });
}

/// Resumes the callbacks still owed when the gateway stopped (a delivery in flight or waiting for
/// its next attempt): each task's hook gets the task as it is now.
pub async fn resume(state: &AppState) {
    const PAGE: i64 = 500;
    let mut after = String::new();
    loop {
        let due = match state.store.callbacks_due(&after, PAGE).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the callbacks owed");
                return;
            }
        };
        for (id, version) in &due {
            match state.store.task(id).await {
                Ok(Some(task)) => notify(state, &task, *version),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "could not read a task owing a callback")
                }
            }
        }
        match due.last() {
            Some((last, _)) if due.len() as i64 == PAGE => after = last.clone(),
            _ => return,
        }
    }
}

async fn deliver(
    task: &str,
    hook: &str,
    body: &Value,
    attempts: u32,
    allow_private: bool,
    first_pause: Duration,
) {
    let mut pause = first_pause;
    for attempt in 1..=attempts {
        match check_target(hook, allow_private).await {
            Ok(()) => {}
            Err(Unfit::Refused(reason)) => {
                tracing::warn!(task, %reason, "callback target refused");
                return;
            }
            Err(Unfit::Unresolved) => {
                tracing::info!(task, attempt, "callback host does not resolve");
                if attempt < attempts {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(300));
                }
                continue;
            }
        }
        let sent = client(allow_private)
            .post(hook)
            .header("content-type", "application/json")
            .header("user-agent", "uniapi-callback")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(task, attempt, "callback delivered");
                return;
            }
            Ok(response) => {
                tracing::info!(task, attempt, status = %response.status(), "callback refused by the receiver")
            }
            Err(_) => tracing::info!(task, attempt, "callback receiver did not answer"),
        }
        if attempt < attempts {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(300));
        }
    }
    tracing::warn!(task, attempts, "callback given up after every attempt");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    /// The guarded client does not connect to a name that resolves to an internal address, whatever
    /// was checked before; the open one (private targets allowed) does.
    #[tokio::test]
    async fn the_guarded_client_never_connects_to_an_internal_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let url = format!("http://localhost:{port}/hook");
        let refused = client(false).post(&url).body("{}").send().await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(!accepted.is_finished());
        let delivered = client(true).post(&url).body("{}").send().await.unwrap();
        assert_eq!(delivered.status(), 204);
        accepted.await.unwrap();
    }

    #[tokio::test]
    async fn targets_are_checked() {
        assert!(check_target("http://127.0.0.1:9/x", false).await.is_err());
        assert!(check_target("http://localhost/x", false).await.is_err());
        assert!(check_target("http://[::1]/x", false).await.is_err());
        assert!(
            check_target("http://169.254.169.254/latest", false)
                .await
                .is_err()
        );
        assert!(check_target("ftp://8.8.8.8/x", false).await.is_err());
        assert!(check_target("not a url", false).await.is_err());
        assert!(
            check_target("http://user:pw@8.8.8.8/", false)
                .await
                .is_err()
        );
        assert!(check_target("https://8.8.8.8/hook", false).await.is_ok());
        assert!(check_target("http://127.0.0.1:9/x", true).await.is_ok());
        assert_eq!(
            check_target("http://no-such-host.invalid/x", false).await,
            Err(Unfit::Unresolved)
        );
    }
}
