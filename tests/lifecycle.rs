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

/// Sets `key` to `len` bytes directly on Redis.
async fn set_big(redis: &RedisServer, key: &str, len: usize) {
    let mut direct = RawClient::connect(redis.addr()).await;
    let value = "v".repeat(len);
    assert_eq!(direct.cmd(&["SET", key, &value]).await, b"+OK\r\n");
}

/// Pipelines `n` GETs of `key` and never reads: returns the socket.
async fn flood_without_reading(proxy: &Proxy, key: &str, n: usize) -> RawClient {
    let mut c = RawClient::connect(proxy.addr).await;
    let get = ["GET", key];
    let gets: Vec<&[&str]> = (0..n).map(|_| &get[..]).collect();
    c.send(&gets).await;
    c
}

/// A client that pipelines requests and never reads their replies is closed once keywarden
/// holds `max_client_output` of them (Redis's `client-output-buffer-limit`), so its memory is
/// bounded; other clients are served meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_at_the_output_limit() {
    let redis = RedisServer::start();
    set_big(&redis, "big", 1024 * 1024).await;
    let mut s = settings(&redis.addr());
    s.limits.max_pending_output = 1024 * 1024;
    s.limits.max_client_output = 8 * 1024 * 1024;
    let proxy = Proxy::start(s).await;
    // 128 MB of replies asked for: far beyond the limit plus what the kernel's socket buffers
    // can absorb.
    let mut hog = flood_without_reading(&proxy, "big", 128).await;
    let mut other = RawClient::connect(proxy.addr).await;
    assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hog.bytes_until_closed().await;
    assert!(
        got.len() < 64 * 1024 * 1024,
        "closed after {} bytes of replies",
        got.len()
    );
    assert_eq!(other.cmd(&["GET", "big"]).await.len(), 1024 * 1024 + 12);
    proxy.shutdown().await;
}

/// Clients that hold more than `max_pending_output` each are closed once all clients
/// together hold more than `max_total_output` (Redis's `maxmemory-clients`), although none
/// reached its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_total_output_budget_are_closed() {
    let redis = RedisServer::start();
    set_big(&redis, "big", 1024 * 1024).await;
    let mut s = settings(&redis.addr());
    s.limits.max_pending_output = 1024 * 1024;
    s.limits.max_client_output = 1024 * 1024 * 1024;
    s.limits.max_total_output = 16 * 1024 * 1024;
    let proxy = Proxy::start(s).await;
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(flood_without_reading(&proxy, "big", 64).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = 0;
    for hog in hogs.iter_mut() {
        total += hog.bytes_until_closed().await.len();
    }
    assert!(total < 4 * 64 * 1024 * 1024, "{total} bytes of replies");
    let mut other = RawClient::connect(proxy.addr).await;
    assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}
