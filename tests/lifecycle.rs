//! Limits and lifecycle: max clients, idle timeout, graceful shutdown.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_like_redis() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.max_clients = 2;
    let proxy = Proxy::start(s).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    assert_eq!(a.cmd(&["PING"]).await, simple("PONG"));
    assert_eq!(b.cmd(&["PING"]).await, simple("PONG"));
    let mut c = proxy.client().await;
    let reply = c.reply().await;
    assert_eq!(
        reply,
        Frame::Error("ERR max number of clients reached".into())
    );
    assert!(c.closed().await);
    // A slot frees when a client leaves.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut d = proxy.client().await;
        d.send(&["PING"]).await;
        if d.reply().await == simple("PONG") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.cmd(&["PING"]).await, simple("PONG"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_but_blocked_ones_are_not() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.client_idle_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(s).await;
    let mut idle = proxy.client().await;
    let mut busy = proxy.client().await;
    let mut blocked = proxy.client().await;
    assert_eq!(idle.cmd(&["PING"]).await, simple("PONG"));
    blocked.send(&["BLPOP", "q", "1"]).await;
    for _ in 0..10 {
        assert_eq!(busy.cmd(&["PING"]).await, simple("PONG"));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(idle.closed().await, "idle client closed");
    // The blocked client waited 1 s, past the idle timeout, and still got its reply.
    assert_eq!(blocked.reply().await, Frame::Null);
    // Once quiet for the timeout, the formerly busy client goes too.
    assert!(busy.closed().await);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let mut slow = proxy.client().await;
    assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    // In flight when shutdown begins: a blocking pop that answers after 300 ms.
    slow.send(&["BLPOP", "q", "0.3"]).await;
    wait_until_blocked(&redis).await;
    let addr = proxy.addr;
    let stopping = tokio::spawn(proxy.shutdown());
    assert_eq!(
        slow.reply().await,
        Frame::Null,
        "in-flight request answered"
    );
    assert!(slow.closed().await);
    assert!(c.closed().await, "idle clients are closed");
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
