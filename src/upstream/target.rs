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

use crate::config::SentinelSettings;
use crate::protocol::request::Request;
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

    fn switch(&self, to: Arc<str>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = to.clone();
        self.changed.send_replace(to);
    }
}

/// How long one question to a sentinel or a candidate primary may take.
const ASK: Duration = Duration::from_millis(500);

/// One request-reply exchange with a server, logging in first when `login` is given.
async fn ask(address: &str, login: Option<&Request>, req: &Request) -> Option<OwnedFrame> {
    let exchange = async {
        let conn = socket::connect_upstream(address, ASK, None, None)
            .await
            .ok()?;
        let mut wire = Vec::new();
        if let Some(login) = login {
            wire.extend_from_slice(login.raw());
        }
        wire.extend_from_slice(req.raw());
        conn.write_all(&wire).await.ok()?;
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let want = 1 + usize::from(login.is_some());
        loop {
            while let Ok(Some((frame, used))) = decode(&buf) {
                let _ = buf.split_to(used);
                frames.push(frame);
            }
            if frames.len() >= want {
                return frames.pop();
            }
            if conn.read_some(&mut buf, 4096).await.ok()? == 0 {
                return None;
            }
        }
    };
    tokio::time::timeout(ASK, exchange).await.ok().flatten()
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

/// `host:port` of the primary the first answering sentinel names.
pub(crate) async fn primary(s: &SentinelSettings) -> Option<String> {
    let req = Request::from_args(&["SENTINEL", "get-master-addr-by-name", &s.master]);
    let login = login(s);
    for sentinel in &s.addresses {
        if let Some(OwnedFrame::Array(parts)) = ask(sentinel, login.as_ref(), &req).await {
            if let [host, port] = &parts[..] {
                if let (Some(host), Some(port)) = (text(host), text(port)) {
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    return Some(format!("{host}:{port}"));
                }
            }
        }
    }
    None
}

/// Whether `address` answers `ROLE` as a primary. The upstream's own credentials are the
/// data path's login (`setup`), as on any upstream connection.
async fn is_primary(address: &str, setup: Option<&Request>) -> bool {
    let role = ask(address, setup, &Request::from_args(&["ROLE"])).await;
    matches!(role, Some(OwnedFrame::Array(parts))
        if parts.first().and_then(text).is_some_and(|r| r == "master"))
}

/// Follows the primary for as long as the proxy runs: `+switch-master` from any sentinel, or
/// the once-a-second question, finds a new address; it is taken once it answers `ROLE` as a
/// primary, and `switched(from, to)` is told.
pub(crate) async fn follow(
    s: SentinelSettings,
    target: Arc<Target>,
    setup: Option<Request>,
    switched: impl Fn(&str, &str) + Send + 'static,
) {
    let wake = Arc::new(Notify::new());
    let listeners: Vec<_> = (s.addresses.iter())
        .map(|a| tokio::spawn(listen(a.clone(), s.clone(), wake.clone())))
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
        let Some(found) = primary(&s).await else {
            continue;
        };
        let current = target.current();
        if *found == *current || !is_primary(&found, setup.as_ref()).await {
            continue;
        }
        tracing::warn!(master = %s.master, from = %current, to = %found, "the sentinels name a new primary: switching");
        target.switch(found.as_str().into());
        switched(&current, &found);
    }
}

/// Subscribes to one sentinel's `+switch-master` and wakes the follower on each message for
/// this master; reconnects after a second when the sentinel goes away.
async fn listen(address: String, s: SentinelSettings, wake: Arc<Notify>) {
    loop {
        let _ = subscribed(&address, &s, &wake).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribed(address: &str, s: &SentinelSettings, wake: &Notify) -> Option<()> {
    let conn: Conn = socket::connect_upstream(address, ASK, None, None)
        .await
        .ok()?;
    let mut wire = Vec::new();
    if let Some(login) = login(s) {
        wire.extend_from_slice(login.raw());
    }
    wire.extend_from_slice(Request::from_args(&["SUBSCRIBE", "+switch-master"]).raw());
    conn.write_all(&wire).await.ok()?;
    let mut buf = BytesMut::new();
    loop {
        while let Ok(Some((frame, used))) = decode(&buf) {
            let _ = buf.split_to(used);
            // ["message", "+switch-master", "<master> <old ip> <old port> <new ip> <new port>"]
            if let OwnedFrame::Array(parts) = frame {
                let payload = parts.get(2).and_then(text).unwrap_or_default();
                if payload.split(' ').next() == Some(s.master.as_str()) {
                    wake.notify_one();
                }
            }
        }
        if buf.len() > 1 << 20 || conn.read_some(&mut buf, 4096).await.ok()? == 0 {
            return None;
        }
    }
}
