//! Clients that depend on connection state move to a dedicated upstream connection and behave
//! exactly as against Redis: transactions, WATCH, SELECT, blocking pops, Pub/Sub.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_runs_as_a_transaction() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["SET", "before", "1"]).await, simple("OK"));
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["INCR", "before"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["SET", "t", "x"]).await, simple("QUEUED"));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Frame::Array(vec![int(2), simple("OK")])
    );
    // A queue-time error aborts EXEC, as in Redis.
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert!(is_error(
        &c.cmd(&["NOSUCHCOMMAND"]).await,
        "ERR unknown command"
    ));
    assert!(is_error(&c.cmd(&["EXEC"]).await, "EXECABORT"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_aborts_exec() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    assert_eq!(a.cmd(&["SET", "w", "1"]).await, simple("OK"));
    assert_eq!(a.cmd(&["WATCH", "w"]).await, simple("OK"));
    assert_eq!(b.cmd(&["SET", "w", "2"]).await, simple("OK"));
    assert_eq!(a.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(a.cmd(&["SET", "w", "3"]).await, simple("QUEUED"));
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Null);
    assert_eq!(a.cmd(&["GET", "w"]).await, bulk("2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_is_isolated_per_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    assert_eq!(a.cmd(&["SELECT", "3"]).await, simple("OK"));
    assert_eq!(a.cmd(&["SET", "k", "db3"]).await, simple("OK"));
    // b shares nothing with a's database.
    assert_eq!(b.cmd(&["GET", "k"]).await, Frame::Null);
    assert_eq!(b.cmd(&["SET", "k", "db0"]).await, simple("OK"));
    assert_eq!(a.cmd(&["GET", "k"]).await, bulk("db3"));
    // Many new clients afterwards all see db 0: no SELECT leaked into a shared connection.
    for _ in 0..20 {
        let mut c = proxy.client().await;
        assert_eq!(c.cmd(&["GET", "k"]).await, bulk("db0"));
    }
    let mut direct = Client::connect(redis.addr()).await;
    direct.cmd(&["SELECT", "3"]).await;
    assert_eq!(direct.cmd(&["GET", "k"]).await, bulk("db3"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_is_woken_by_another_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut waiter = proxy.client().await;
    let mut pusher = proxy.client().await;
    waiter.send(&["BLPOP", "jobs", "0"]).await;
    // The blocked pop must not be answered by a timeout: wait well past the command timeout.
    wait_until_blocked(&redis).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pusher.cmd(&["RPUSH", "jobs", "j1"]).await, int(1));
    assert_eq!(
        waiter.reply().await,
        Frame::Array(vec![bulk("jobs"), bulk("j1")])
    );
    // A blocking pop with a timeout times out as in Redis.
    assert_eq!(waiter.cmd(&["BLPOP", "jobs", "0.05"]).await, Frame::Null);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_receives_published_messages() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut sub = proxy.client().await;
    let mut publisher = proxy.client().await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "news", "sport"]).await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );
    assert_eq!(
        sub.reply().await,
        Frame::Array(vec![bulk("subscribe"), bulk("sport"), int(2)])
    );
    // Subscribers get messages long after the command timeout: no timeout applies.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hello"]).await, int(1));
    assert_eq!(
        sub.reply().await,
        Frame::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
    assert_eq!(
        sub.cmd(&["PING"]).await,
        Frame::Array(vec![bulk("pong"), bulk("")])
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_command_waits_for_earlier_shared_replies() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    // One burst: shared writes, then WATCH/MULTI on the dedicated connection. The writes must
    // be applied before the transaction starts.
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend(encode(&[b"INCR", b"n"]));
        let _ = i;
    }
    burst.extend(encode(&[b"MULTI"]));
    burst.extend(encode(&[b"GET", b"n"]));
    burst.extend(encode(&[b"EXEC"]));
    c.send_raw(&burst).await;
    for i in 1..=100 {
        assert_eq!(c.reply().await, int(i));
    }
    assert_eq!(c.reply().await, simple("OK"));
    assert_eq!(c.reply().await, simple("QUEUED"));
    assert_eq!(c.reply().await, Frame::Array(vec![bulk("100")]));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setname_is_not_shared() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut a = proxy.client().await;
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alice"]).await, simple("OK"));
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, bulk("alice"));
    let mut b = proxy.client().await;
    assert_eq!(b.cmd(&["CLIENT", "GETNAME"]).await, Frame::Null);
    proxy.shutdown().await;
}
