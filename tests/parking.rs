//! Parked idle clients: a client that sends nothing for a second or two gives up its task and
//! its runtime registration (its socket waits in the parker's epoll set), and comes back as it
//! was: its database, name, transaction and shared connection kept, its next request served
//! at once. CLIENT KILL, a close by the client and shutdown reach parked clients too; clients
//! that owe or wait on anything are never parked.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame as Frame;
use support::*;

/// Clients parked now (asked on a connection that is then closed, so never among them).
async fn parked(proxy: &Proxy) -> i64 {
    keywarden_info(proxy.addr, "parked_clients").await
}

/// Waits until exactly `n` clients are parked (one parked that must not be keeps it above).
async fn wait_parked(proxy: &Proxy, n: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = parked(proxy).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} clients parked, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients connected, less the connection asking.
async fn connected(proxy: &Proxy) -> i64 {
    keywarden_info(proxy.addr, "connected_clients").await - 1
}

/// `n` new clients, each answered one PING (so each is set up and then idle).
async fn pinged_clients(proxy: &Proxy, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = proxy.client().await;
        assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
        clients.push(c);
    }
    clients
}

/// Waits until `n` clients are connected, besides the one asking (the askers before it may
/// take a moment to leave).
async fn wait_connected(proxy: &Proxy, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = connected(proxy).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} clients connected, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_park_and_come_back_as_they_were() {
    let redis = RedisServer::start();
    // Shutdown must close parked clients itself: with a long shutdown timeout, a parked
    // client it missed would hold the proxy past the test's wait.
    let mut settings = settings(&redis.addr());
    settings.shutdown_timeout = Duration::from_secs(60);
    let proxy = Proxy::start(settings).await;

    let mut plain = pinged_clients(&proxy, 40).await;
    // State the session keeps: a name, a transaction under way; and a database other than 0,
    // which takes a connection of the client's own upstream (such a client is not parked).
    let mut db = proxy.client().await;
    assert_eq!(db.cmd(&["SELECT", "2"]).await, simple("OK"));
    assert_eq!(db.cmd(&["SET", "parked:db", "two"]).await, simple("OK"));
    let mut named = proxy.client().await;
    assert_eq!(
        named.cmd(&["CLIENT", "SETNAME", "sleeper"]).await,
        simple("OK")
    );
    let mut multi = proxy.client().await;
    assert_eq!(multi.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(
        multi.cmd(&["SET", "parked:multi", "1"]).await,
        simple("QUEUED")
    );

    wait_parked(&proxy, 42).await;
    wait_connected(&proxy, 43).await;

    for c in &mut plain {
        assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    }
    assert_eq!(db.cmd(&["GET", "parked:db"]).await, bulk("two"));
    assert_eq!(named.cmd(&["CLIENT", "GETNAME"]).await, bulk("sleeper"));
    assert_eq!(multi.cmd(&["EXEC"]).await, Frame::Array(vec![simple("OK")]));
    assert_eq!(multi.cmd(&["GET", "parked:multi"]).await, bulk("1"));

    // Parked again; CLIENT KILL reaches a parked client, and CLIENT LIST still lists them.
    wait_parked(&proxy, 42).await;
    let id = match named.cmd(&["CLIENT", "ID"]).await {
        Frame::Integer(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    };
    wait_parked(&proxy, 42).await;
    // The connections that asked INFO have left.
    wait_connected(&proxy, 43).await;
    let mut admin = proxy.client().await;
    // The last INFO asker may still be leaving when the admin asks: asked again until it has.
    let deadline = Instant::now() + Duration::from_secs(5);
    let list = loop {
        let list = match admin.cmd(&["CLIENT", "LIST"]).await {
            Frame::BulkString(b) => String::from_utf8(b).unwrap(),
            other => panic!("CLIENT LIST: {other:?}"),
        };
        if list.lines().count() == 44 || Instant::now() >= deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(list.contains("name=sleeper"), "{list}");
    assert_eq!(list.lines().count(), 44, "{list}");
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "ID", &id.to_string()]).await,
        int(1)
    );
    assert!(named.closed().await, "a killed parked client is closed");
    drop(admin);

    // A parked client that closes its connection leaves.
    wait_parked(&proxy, 41).await;
    plain.truncate(30);
    wait_connected(&proxy, 32).await;

    // Shutdown closes parked clients at once (they owe nothing), well before its timeout.
    wait_parked(&proxy, 31).await;
    proxy.shutdown().await;
    for c in &mut plain {
        assert!(c.closed().await);
    }
}

/// What must never park: a client halfway through a request, one owed a reply (its upstream
/// is slow), a subscriber. Each is served as before once it goes on, and a burst of parked
/// clients all sending at once is served in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_clients_are_not_parked_and_parked_ones_wake_together() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;

    let mut half = proxy.client().await;
    half.send_raw(b"*3\r\n$3\r\nSET\r\n$11\r\nparked:half\r\n$2")
        .await;
    let mut subscriber = proxy.client().await;
    subscriber.send(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        subscriber.reply().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );
    let mut slow = proxy.client().await;
    slow.send(&["BLPOP", "parked:list", "0"]).await;

    let mut idle = pinged_clients(&proxy, 200).await;
    wait_parked(&proxy, 200).await;
    // Three seconds more: the three busy ones are still not parked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(parked(&proxy).await, 200);

    half.send_raw(b"\r\nok\r\n").await;
    assert_eq!(half.reply().await, simple("OK"));
    let mut publisher = proxy.client().await;
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hello"]).await, int(1));
    assert_eq!(
        subscriber.reply().await,
        Frame::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
    assert_eq!(publisher.cmd(&["RPUSH", "parked:list", "x"]).await, int(1));
    assert_eq!(
        slow.reply().await,
        Frame::Array(vec![bulk("parked:list"), bulk("x")])
    );

    // Every parked client sends at once; each gets its own reply.
    for (i, c) in idle.iter_mut().enumerate() {
        c.send(&["SET", &format!("parked:{i}"), &i.to_string()])
            .await;
    }
    for c in &mut idle {
        assert_eq!(c.reply().await, simple("OK"));
    }
    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(
            c.cmd(&["GET", &format!("parked:{i}")]).await,
            bulk(&i.to_string())
        );
    }
    proxy.shutdown().await;
}

/// An outage tells every client (those with connections of their own must give them up), but
/// parked clients have none: they stay parked rather than all waking at once, and are served
/// once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_does_not_wake_parked_clients() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut idle = pinged_clients(&proxy, 20).await;
    wait_parked(&proxy, 20).await;
    redis.kill();
    // Once the outage is declared (every client told), the parked ones stay parked.
    wait_for_upstream_state(&proxy, "unavailable").await;
    // A woken client would resume at once and park again 1-2 s later: none may leave the
    // parker over the next 1.5 s.
    let watch = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch {
        assert_eq!(parked(&proxy).await, 20, "an outage woke parked clients");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    for c in &mut idle {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if c.cmd(&["SET", "parked:back", "1"]).await == simple("OK") {
                break;
            }
            assert!(Instant::now() < deadline, "not served after the restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    proxy.shutdown().await;
}
