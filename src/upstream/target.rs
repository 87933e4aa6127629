//! Where the upstream is: a fixed `host:port`, or the primary that Redis Sentinel names,
//! followed across failovers (control plane).
//!
//! With `[upstream.sentinel]`, keywarden asks the sentinels `SENTINEL get-master-addr-by-name`
//! at startup, and from then on it listens to every sentinel's `+switch-master` channel and
//! asks again every second (a message can be missed while a sentinel restarts). A new address
//! is taken only once that server answers `ROLE` as `master`, so a stale sentinel cannot send
//! traffic to a replica. Taking it closes the shared connections to the old primary (they
//! reconnect to the new one) and the clients' own connections (subscribers and blocked
//! clients get the error they would get from a Redis that died, so their libraries reconnect),
//! and emits `BACKEND_SWITCHED`. While no primary answers, the health monitor sees the
//! upstream unavailable and every keyspace follows its mode, as in any outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::{watch, Notify};

use crate::config::{SentinelSettings, UpstreamTls};
use crate::protocol::request::Request;
use crate::protocol::scanner::ReplyScanner;
use crate::upstream::socket::{self, Conn};

/// The upstream's current address; every new upstream connection reads it.
pub struct Target {
    current: Mutex<Arc<str>>,
    changed: watch::Sender<Arc<str>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Target").field(&self.current()).finish()
    }
}

impl Target {
    pub fn new(address: &str) -> Arc<Target> {
        let address: Arc<str> = address.into();
        Arc::new(Target {
            current: Mutex::new(address.clone()),
            changed: watch::Sender::new(address),
        })
    }

    pub fn current(&self) -> Arc<str> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tells of every switch (the shared connections reconnect on it).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.changed.subscribe()
    }

    pub(crate) fn switch(&self, to: Arc<str>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = to.clone();
        self.changed.send_replace(to);
    }
}

/// How long one question to a sentinel or a candidate primary may take.
const ASK: Duration = Duration::from_millis(500);

/// Replies from a sentinel or a candidate primary, one at a time. Each is framed by the data
/// path's reply scanner first, with its nesting capped, so that decoding it cannot recurse
/// without bound (a hostile server could otherwise overflow the stack); at most 64 KiB is held.
struct Replies {
    buf: BytesMut,
    scanner: ReplyScanner,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            buf: BytesMut::new(),
            scanner: ReplyScanner::new(8),
        }
    }

    async fn next(&mut self, conn: &Conn) -> Option<OwnedFrame> {
        loop {
            match self.scanner.scan(&self.buf) {
                Ok(Some(frame)) => {
                    let bytes = self.buf.split_to(frame.len);
                    return decode(&bytes).ok().flatten().map(|(f, _)| f);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            if self.buf.len() > 64 << 10 || conn.read_some(&mut self.buf, 4096).await.ok()? == 0 {
                return None;
            }
        }
    }
}

/// One request-reply exchange with a server (TLS as `tls` says), logging in first when
/// `login` is given.
pub(crate) async fn ask(
    address: &str,
    tls: Option<&UpstreamTls>,
    login: Option<&Request>,
    req: &Request,
) -> Option<OwnedFrame> {
    let exchange = async {
        let conn = socket::connect_upstream(address, ASK, None, tls)
            .await
            .ok()?;
        let mut wire = Vec::new();
        if let Some(login) = login {
            wire.extend_from_slice(login.raw());
        }
        wire.extend_from_slice(req.raw());
        conn.write_all(&wire).await.ok()?;
        let mut replies = Replies::new();
        if login.is_some() {
            replies.next(&conn).await?;
        }
        replies.next(&conn).await
    };
    tokio::time::timeout(ASK, exchange).await.ok().flatten()
}

/// TLS toward the sentinels when they ask for it: the upstream's CA and client certificate,
/// each sentinel's own host as the name to check.
fn sentinel_tls(s: &SentinelSettings, upstream: Option<&UpstreamTls>) -> Option<UpstreamTls> {
    let mut tls = upstream.filter(|_| s.tls)?.clone();
    tls.server_name = None;
    Some(tls)
}

fn login(s: &SentinelSettings) -> Option<Request> {
    let password = s.password.as_deref()?;
    Some(match s.username.as_deref() {
        Some(user) => Request::from_args(&["AUTH", user, password]),
        None => Request::from_args(&["AUTH", password]),
    })
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// `host:port` of the primary the sentinels name: each is asked, and the address most of
/// those that answer agree on wins, so that one stale or isolated sentinel cannot move the
/// traffic (a tie goes to the first sentinel's answer).
pub(crate) async fn primary(s: &SentinelSettings, tls: Option<&UpstreamTls>) -> Option<String> {
    let req = Request::from_args(&["SENTINEL", "get-master-addr-by-name", &s.master]);
    let login = login(s);
    let tls = sentinel_tls(s, tls);
    let mut named: Vec<(String, usize)> = Vec::new();
    for sentinel in &s.addresses {
        let Some(OwnedFrame::Array(parts)) =
            ask(sentinel, tls.as_ref(), login.as_ref(), &req).await
        else {
            continue;
        };
        if let [host, port] = &parts[..] {
            if let (Some(host), Some(port)) = (text(host), text(port)) {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                let address = format!("{host}:{port}");
                match named.iter_mut().find(|(a, _)| *a == address) {
                    Some((_, n)) => *n += 1,
                    None => named.push((address, 1)),
                }
            }
        }
    }
    let best = named.iter().map(|(_, n)| *n).max()?;
    named.into_iter().find(|(_, n)| *n == best).map(|(a, _)| a)
}

/// Whether `address` answers `ROLE` as a primary. It is asked as any upstream connection
/// is: with `[upstream.tls]` (so a certificate check comes before the login) and the data
/// path's login (`setup`).
async fn is_primary(address: &str, tls: Option<&UpstreamTls>, setup: Option<&Request>) -> bool {
    let role = ask(address, tls, setup, &Request::from_args(&["ROLE"])).await;
    matches!(role, Some(OwnedFrame::Array(parts))
        if parts.first().and_then(text).is_some_and(|r| r == "master"))
}

/// Follows the primary for as long as the proxy runs: `+switch-master` from any sentinel, or
/// the once-a-second question, finds a new address; it is taken once it answers `ROLE` as a
/// primary, and `switched(from, to)` is told.
pub(crate) async fn follow(
    s: SentinelSettings,
    target: Arc<Target>,
    tls: Option<UpstreamTls>,
    setup: Option<Request>,
    switched: impl Fn(&str, &str) + Send + 'static,
) {
    let wake = Arc::new(Notify::new());
    let to_sentinels = sentinel_tls(&s, tls.as_ref());
    let listeners: Vec<_> = (s.addresses.iter())
        .map(|a| {
            let (s, wake, tls) = (s.clone(), wake.clone(), to_sentinels.clone());
            tokio::spawn(listen(a.clone(), s, tls, wake))
        })
        .collect();
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    let _listeners = AbortOnDrop(listeners);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = wake.notified() => {}
        }
        let Some(found) = primary(&s, tls.as_ref()).await else {
            continue;
        };
        let current = target.current();
        if *found == *current || !is_primary(&found, tls.as_ref(), setup.as_ref()).await {
            continue;
        }
        tracing::warn!(master = %s.master, from = %current, to = %found, "the sentinels name a new primary: switching");
        target.switch(found.as_str().into());
        switched(&current, &found);
    }
}

/// Subscribes to one sentinel's `+switch-master` and wakes the follower on each message for
/// this master; reconnects after a second when the sentinel goes away.
async fn listen(address: String, s: SentinelSettings, tls: Option<UpstreamTls>, wake: Arc<Notify>) {
    loop {
        let _ = subscribed(&address, &s, tls.as_ref(), &wake).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribed(
    address: &str,
    s: &SentinelSettings,
    tls: Option<&UpstreamTls>,
    wake: &Notify,
) -> Option<()> {
    // Keepalive: a sentinel whose host vanished is noticed, and the listener reconnects.
    let keepalive = Some(Duration::from_secs(30));
    let conn: Conn = socket::connect_upstream(address, ASK, keepalive, tls)
        .await
        .ok()?;
    let mut wire = Vec::new();
    if let Some(login) = login(s) {
        wire.extend_from_slice(login.raw());
    }
    wire.extend_from_slice(Request::from_args(&["SUBSCRIBE", "+switch-master"]).raw());
    conn.write_all(&wire).await.ok()?;
    let mut replies = Replies::new();
    loop {
        match replies.next(&conn).await? {
            // ["message", "+switch-master", "<master> <old ip> <old port> <new ip> <new port>"]
            OwnedFrame::Array(parts) => {
                let payload = parts.get(2).and_then(text).unwrap_or_default();
                if payload.split(' ').next() == Some(s.master.as_str()) {
                    wake.notify_one();
                }
            }
            // A refused login or SUBSCRIBE: said once per attempt, then tried again.
            OwnedFrame::Error(e) => {
                tracing::warn!(sentinel = address, error = %e, "a sentinel refused the subscription to +switch-master");
                return None;
            }
            _ => {}
        }
    }
}
