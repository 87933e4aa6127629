//! Connection state kept right across the proxy's own commands: RESP3 transactions, RESET with
//! an upstream login, queue-time errors from Redis, idle clients on their own connection, SELECT
//! inside a local transaction, RESET after SUBSCRIBE, upstream WATCH then DISCARD.

mod support;

use std::time::Duration;

use keywarden::policy::keyspace::Mode;
use support::*;
use tokio::time::Instant;

/// `support::RawClient`, with each frame as text and `None` for a closed connection.
struct Raw(RawClient);

impl Raw {
    async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Raw {
        Raw(RawClient::connect(addr).await)
    }

    async fn send(&mut self, cmds: &[&[&str]]) {
        self.0.send(cmds).await
    }

    /// The next frame; None if the connection closed.
    async fn frame(&mut self) -> Option<String> {
        let frame = self.0.try_frame(Duration::from_secs(3)).await?;
        Some(String::from_utf8_lossy(&frame).into_owned())
    }

    async fn cmd(&mut self, cmd: &[&str]) -> Option<String> {
        self.send(&[cmd]).await;
        self.frame().await
    }
}

async fn served(proxy: &Proxy) {
    let mut c = Raw::connect(proxy.addr).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.cmd(&["GET", "probe"]).await.as_deref() != Some("$-1\r\n") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A RESP3 client's transaction runs on a RESP3 connection: RESP3 replies inside EXEC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_transaction_gets_resp3_replies() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert!(c.cmd(&["HELLO", "3"]).await.unwrap().starts_with('%'));
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "missing"]).await.unwrap(), "+QUEUED\r\n");
    // Redis with HELLO 3: *1\r\n_\r\n
    assert_eq!(c.cmd(&["EXEC"]).await.unwrap(), "*1\r\n_\r\n");
    proxy.shutdown().await;
}

/// RESET on the client's own connection keeps the proxy's upstream login (Redis's RESET
/// logs the connection out; the proxy logs it back in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_the_upstream_login() {
    let redis = RedisServer::start();
    let mut admin = Client::connect(redis.addr()).await;
    admin
        .cmd(&["CONFIG", "SET", "requirepass", "upstream-secret"])
        .await;
    let mut s = settings(&redis.addr());
    s.upstream.password = Some("upstream-secret".into());
    let proxy = Proxy::start(s).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    // SELECT 1 + GET: the client now has its own upstream connection.
    assert_eq!(c.cmd(&["SELECT", "1"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await.unwrap(), "$-1\r\n");
    assert_eq!(c.cmd(&["RESET"]).await.unwrap(), "+RESET\r\n");
    // As against Redis: the client may go on using the connection.
    assert_eq!(c.cmd(&["GET", "k"]).await.unwrap(), "$-1\r\n");
    proxy.shutdown().await;
}

/// A queue-time error from Redis (OOM) in a transaction on the client's own connection is
/// Redis's answer: EXEC answers EXECABORT and the client stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_queue_time_error_gives_execabort() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["WATCH", "w"]).await.unwrap(), "+OK\r\n");
    let mut admin = Client::connect(redis.addr()).await;
    admin.cmd(&["SET", "filler", "x"]).await;
    admin
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    admin.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "w", "v"]).await.unwrap(), "+QUEUED\r\n");
    let exec = c.cmd(&["EXEC"]).await;
    admin.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;
    assert!(
        exec.as_deref().is_some_and(|e| e.starts_with("-EXECABORT")),
        "got {exec:?}"
    );
    assert_eq!(c.cmd(&["PING"]).await.as_deref(), Some("+PONG\r\n"));
    proxy.shutdown().await;
}

/// SELECT inside a transaction served locally moves the client's own upstream connection to
/// that database too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_exec_select_follows_on_the_dedicated_connection() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(s).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    // A blocking pop with a timeout: the client has its own connection from now on (db 0).
    assert_eq!(c.cmd(&["BLPOP", "q", "0.01"]).await.unwrap(), "*-1\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["SELECT", "2"]).await.unwrap(), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["SET", "tmp:a", "1"]).await.unwrap(), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await.unwrap(), "*2\r\n+OK\r\n+OK\r\n");
    // The client is in db 2 now: an upstream write must land in db 2.
    assert_eq!(c.cmd(&["SET", "up", "x"]).await.unwrap(), "+OK\r\n");
    let mut direct = Client::connect(redis.addr()).await;
    direct.cmd(&["SELECT", "2"]).await;
    assert_eq!(direct.cmd(&["GET", "up"]).await, bulk("x"));
    proxy.shutdown().await;
}

/// The reply to a command the proxy sent on its own (UNWATCH after DISCARD) is read even after
/// the client's last reply: an idle client is never timed out by it. The sleep outlasts the
/// command timeout on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_survives_discard_after_upstream_watch() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await; // command_timeout = 500 ms
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["CLIENT", "SETNAME", "x"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["WATCH", "k"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["DISCARD"]).await.unwrap(), "+OK\r\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.cmd(&["PING"]).await.as_deref(), Some("+PONG\r\n"));
    proxy.shutdown().await;
}

/// The same with a silent SELECT on a client that already has its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_survives_select_on_dedicated() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["BLPOP", "q", "0.01"]).await.unwrap(), "*-1\r\n");
    assert_eq!(c.cmd(&["SELECT", "1"]).await.unwrap(), "+OK\r\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.cmd(&["PING"]).await.as_deref(), Some("+PONG\r\n"));
    proxy.shutdown().await;
}

/// After RESET on a subscribed connection the client is an ordinary one again: MULTI is the
/// proxy's, and a local key inside it is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_subscribe_restores_transactions() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(s).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert!(c.cmd(&["SUBSCRIBE", "ch"]).await.unwrap().starts_with("*3"));
    assert_eq!(c.cmd(&["RESET"]).await.unwrap(), "+RESET\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "tmp:a", "1"]).await.unwrap(), "+QUEUED\r\n");
    proxy.shutdown().await;
}

/// WATCH on a fresh client, then DISCARD, unwatches upstream: a later transaction does not
/// abort on a stale watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_unwatches_upstream() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    let mut other = Raw::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["WATCH", "k"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["DISCARD"]).await.unwrap(), "+OK\r\n");
    assert_eq!(
        other.cmd(&["SET", "k", "changed"]).await.unwrap(),
        "+OK\r\n"
    );
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "x", "1"]).await.unwrap(), "+QUEUED\r\n");
    // Redis: DISCARD unwatched k, so this EXEC runs.
    assert_eq!(c.cmd(&["EXEC"]).await.unwrap(), "*1\r\n+OK\r\n");
    proxy.shutdown().await;
}

/// RESET after CLIENT REPLY SKIP gets no reply from Redis (the SKIP applies to it): the proxy
/// must not wait for one, and what follows is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_client_reply_skip_does_not_stall() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    c.send(&[&["CLIENT", "REPLY", "SKIP"], &["RESET"], &["PING"]])
        .await;
    assert_eq!(c.frame().await.as_deref(), Some("+PONG\r\n"));
    proxy.shutdown().await;
}

/// A `+RESET` returned by a script before RESET is the script's reply, not the end of the
/// RESET: both reach the client, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_reset_status_is_not_taken_for_resets_reply() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert!(c.cmd(&["HELLO", "3"]).await.unwrap().starts_with('%'));
    assert!(c.cmd(&["SUBSCRIBE", "ch"]).await.unwrap().starts_with(">3"));
    c.send(&[&["EVAL", "return {ok='RESET'}", "0"], &["RESET"]])
        .await;
    assert_eq!(c.frame().await.as_deref(), Some("+RESET\r\n"), "EVAL's");
    assert_eq!(c.frame().await.as_deref(), Some("+RESET\r\n"), "RESET's");
    assert_eq!(c.cmd(&["PING"]).await.as_deref(), Some("+PONG\r\n"));
    proxy.shutdown().await;
}

/// A RESET waiting on a subscribed connection ends with an error when the upstream hangs
/// (command timeout) or is lost: never a session that waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_reset_ends_when_the_upstream_hangs_or_dies() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    served(&proxy).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert!(c.cmd(&["SUBSCRIBE", "ch"]).await.unwrap().starts_with("*3"));
    redis.hang();
    c.send(&[&["RESET"]]).await;
    let got = c.frame().await;
    redis.resume();
    assert!(
        got.as_deref().is_some_and(|f| f.starts_with("-UPSTREAM")),
        "{got:?}"
    );

    let mut d = Raw::connect(proxy.addr).await;
    assert!(d.cmd(&["SUBSCRIBE", "ch"]).await.unwrap().starts_with("*3"));
    redis.hang();
    d.send(&[&["RESET"]]).await;
    redis.kill();
    match d.frame().await {
        None => {}
        Some(f) => assert!(f.starts_with('-'), "{f:?}"),
    }
}
