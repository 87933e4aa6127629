//! Pub/Sub and blocking commands through keywarden, compared byte for byte with a real
//! redis-server: subscribers in RESP2 and RESP3 (messages, PING, refused commands, the
//! UNSUBSCRIBE family, RESET), PUBSUB introspection, blocking pops and XREAD BLOCK (timeouts
//! honoured, wake-ups, a waiter that leaves), and what a subscriber or a blocked client sees
//! when the upstream is killed or hung. Blocking commands on a `local_only` keyspace are
//! refused, never left hanging.
//!
//! A "mirror" is one connection through the proxy and one straight to a redis-server, sent the
//! same bytes; every reply frame is compared exactly. RESP2 Pub/Sub mirrors talk to the proxy's
//! own upstream (both subscribers see the same messages and PUBSUB counts); the RESP3 and
//! blocking ones use a second, reference redis-server, so that the two sides' writes cannot
//! interfere.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use keywarden::config::Settings;
use keywarden::policy::keyspace::Mode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A client that keeps every frame as the exact bytes received (see `support::RawClient`).
type Raw = RawClient;

/// Bytes as they would be written in a Rust byte string, for failure messages.
/// One connection through keywarden and one straight to a redis-server, sent the same bytes.
struct Mirror {
    proxy: Raw,
    direct: Raw,
}

impl Mirror {
    async fn connect(proxy: SocketAddr, direct: &RedisServer) -> Mirror {
        Mirror {
            proxy: Raw::connect(proxy).await,
            direct: Raw::connect(direct.addr()).await,
        }
    }

    async fn send(&mut self, cmds: &[&[&str]]) {
        self.proxy.send(cmds).await;
        self.direct.send(cmds).await;
    }

    /// Reads `n` frames from each side and asserts they are the same bytes; returns them.
    async fn same(&mut self, n: usize, what: &str) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            let want = self.direct.frame().await;
            let got = self.proxy.frame().await;
            assert_eq!(
                show_bytes(&got),
                show_bytes(&want),
                "{what}: frame {i} differs (left: keywarden, right: redis-server)"
            );
            frames.push(got);
        }
        frames
    }

    /// Sends one command to both and compares its one reply; returns it.
    async fn one(&mut self, cmd: &[&str]) -> Vec<u8> {
        self.send(&[cmd]).await;
        self.same(1, &format!("{cmd:?}")).await.remove(0)
    }
}

/// An element of a Pub/Sub frame.
enum Item {
    Bulk(&'static str),
    Int(i64),
    Nil,
}
use Item::{Bulk, Int, Nil};

/// An array (`*`) or push (`>`) of bulk strings and integers, as Redis writes Pub/Sub frames.
fn array(kind: u8, items: &[Item]) -> Vec<u8> {
    let mut out = format!("{}{}\r\n", kind as char, items.len()).into_bytes();
    for item in items {
        match item {
            Item::Bulk(s) => out.extend(format!("${}\r\n{s}\r\n", s.len()).bytes()),
            Item::Int(i) => out.extend(format!(":{i}\r\n").bytes()),
            Item::Nil => out.extend(b"$-1\r\n"),
        }
    }
    out
}

/// A field of the upstream's `INFO clients`, read straight from the server.
async fn info_clients_field(redis: &RedisServer, field: &str) -> i64 {
    let mut direct = Client::connect(redis.addr()).await;
    let Frame::BulkString(info) = direct.cmd(&["INFO", "clients"]).await else {
        panic!("INFO is a bulk string");
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO clients"))
}

/// Polls the upstream until exactly `n` clients are blocked.
async fn wait_for_blocked(redis: &RedisServer, n: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let blocked = info_clients_field(redis, "blocked_clients").await;
        if blocked == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "blocked_clients stayed {blocked}, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls the upstream until `PUBSUB <sub> <channel>` (NUMSUB or SHARDNUMSUB) reports `n`.
async fn wait_for_subscribers(redis: &RedisServer, sub: &str, channel: &str, n: i64) {
    let mut direct = Client::connect(redis.addr()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = direct.cmd(&["PUBSUB", sub, channel]).await;
        if reply == Frame::Array(vec![bulk(channel), int(n)]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PUBSUB {sub} {channel} stayed {reply:?}, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls through the proxy until a plain command is forwarded again after an outage.
async fn wait_until_served(proxy: &Proxy) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Raw::connect(proxy.addr).await;
        if c.try_frame_of(&["PING"]).await.as_deref() == Some(b"+PONG\r\n") {
            return;
        }
        assert!(Instant::now() < deadline, "the proxy never served again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A local_only keyspace `scratch` for keys starting `tmp:`; everything else fails closed.
fn with_scratch_keyspace(mut settings: Settings) -> Settings {
    settings.keyspaces = scratch_keyspace(Mode::FailClosed);
    settings
}

const PONG_RESP2: &[u8] = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
const NOT_ALLOWED_GET: &[u8] = b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / \
(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n";

// ---------------------------------------------------------------------------------------------
// Pub/Sub, RESP2
// ---------------------------------------------------------------------------------------------

/// A RESP2 subscriber through keywarden sees exactly what a subscriber connected to Redis sees:
/// subscription replies, messages of every kind from publishers on either side, PING, the
/// refusal of other commands, the UNSUBSCRIBE family with and without channels, and RESET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriber_matches_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut subs = Mirror::connect(proxy.addr, &redis).await;
    let mut observer = Mirror::connect(proxy.addr, &redis).await;
    let mut publisher = Raw::connect(proxy.addr).await;
    let mut direct_publisher = Raw::connect(redis.addr()).await;

    // One pipeline: the proxy must open the dedicated connection without reordering anything.
    subs.send(&[
        &["SUBSCRIBE", "a", "b"],
        &["PSUBSCRIBE", "p*"],
        &["SSUBSCRIBE", "s"],
    ])
    .await;
    let frames = subs.same(4, "subscribe pipeline").await;
    assert_eq!(
        frames[0],
        array(b'*', &[Bulk("subscribe"), Bulk("a"), Int(1)])
    );
    assert_eq!(
        frames[2],
        array(b'*', &[Bulk("psubscribe"), Bulk("p*"), Int(3)])
    );
    assert_eq!(
        frames[3],
        array(b'*', &[Bulk("ssubscribe"), Bulk("s"), Int(1)])
    );

    // Introspection from ordinary clients, through the proxy and directly.
    for cmd in [
        &["PUBSUB", "CHANNELS"][..],
        &["PUBSUB", "CHANNELS", "a*"],
        &["PUBSUB", "NUMSUB", "a", "b", "nope"],
        &["PUBSUB", "NUMSUB"],
        &["PUBSUB", "NUMPAT"],
        &["PUBSUB", "SHARDCHANNELS"],
        &["PUBSUB", "SHARDCHANNELS", "x*"],
        &["PUBSUB", "SHARDNUMSUB", "s", "t"],
    ] {
        observer.one(cmd).await;
    }
    assert_eq!(
        observer.one(&["PUBSUB", "NUMSUB", "a", "b", "nope"]).await,
        array(
            b'*',
            &[Bulk("a"), Int(2), Bulk("b"), Int(2), Bulk("nope"), Int(0)]
        )
    );
    assert_eq!(observer.one(&["PUBSUB", "NUMPAT"]).await, b":1\r\n");

    // Messages from a publisher through the proxy and one connected directly.
    for (through_proxy, cmd, message) in [
        (
            true,
            ["PUBLISH", "a", "m1"],
            array(b'*', &[Bulk("message"), Bulk("a"), Bulk("m1")]),
        ),
        (
            false,
            ["PUBLISH", "b", "m2"],
            array(b'*', &[Bulk("message"), Bulk("b"), Bulk("m2")]),
        ),
        (
            true,
            ["PUBLISH", "pq", "m3"],
            array(
                b'*',
                &[Bulk("pmessage"), Bulk("p*"), Bulk("pq"), Bulk("m3")],
            ),
        ),
        (
            false,
            ["SPUBLISH", "s", "m4"],
            array(b'*', &[Bulk("smessage"), Bulk("s"), Bulk("m4")]),
        ),
        (
            true,
            ["SPUBLISH", "s", "m5"],
            array(b'*', &[Bulk("smessage"), Bulk("s"), Bulk("m5")]),
        ),
    ] {
        let p = if through_proxy {
            &mut publisher
        } else {
            &mut direct_publisher
        };
        assert_eq!(
            p.cmd(&cmd).await,
            b":2\r\n",
            "{cmd:?} reaches both subscribers"
        );
        let got = subs.same(1, &format!("message of {cmd:?}")).await;
        assert_eq!(got[0], message, "{cmd:?}");
    }

    // PING while subscribed: RESP2 answers with an array.
    assert_eq!(subs.one(&["PING"]).await, PONG_RESP2);
    assert_eq!(
        subs.one(&["PING", "hi"]).await,
        array(b'*', &[Bulk("pong"), Bulk("hi")])
    );
    // Other commands are refused by Redis, and the subscription stays.
    assert_eq!(subs.one(&["GET", "k"]).await, NOT_ALLOWED_GET);
    subs.one(&["ECHO", "x"]).await;

    // The UNSUBSCRIBE family, with and without arguments.
    assert_eq!(
        subs.one(&["UNSUBSCRIBE", "a"]).await,
        array(b'*', &[Bulk("unsubscribe"), Bulk("a"), Int(2)])
    );
    subs.one(&["PUNSUBSCRIBE", "nomatch*"]).await;
    subs.one(&["UNSUBSCRIBE"]).await;
    subs.one(&["PUNSUBSCRIBE"]).await;
    assert_eq!(
        subs.one(&["UNSUBSCRIBE"]).await,
        array(b'*', &[Bulk("unsubscribe"), Nil, Int(0)])
    );
    subs.one(&["PUNSUBSCRIBE"]).await;
    // Still subscribed to the shard channel: still in Pub/Sub mode, messages still come.
    assert_eq!(subs.one(&["GET", "k"]).await, NOT_ALLOWED_GET);
    assert_eq!(publisher.cmd(&["PUBLISH", "a", "gone"]).await, b":0\r\n");
    assert_eq!(publisher.cmd(&["SPUBLISH", "s", "m6"]).await, b":2\r\n");
    assert_eq!(
        subs.same(1, "message after unsubscribing").await[0],
        array(b'*', &[Bulk("smessage"), Bulk("s"), Bulk("m6")])
    );

    // RESET leaves Pub/Sub mode; ordinary commands work again.
    assert_eq!(subs.one(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(subs.one(&["GET", "k"]).await, b"$-1\r\n");
    assert_eq!(subs.one(&["SET", "k", "v"]).await, b"+OK\r\n");
    assert_eq!(subs.one(&["GET", "k"]).await, b"$1\r\nv\r\n");
    assert_eq!(subs.one(&["PING"]).await, b"+PONG\r\n");
    // The subscription is gone upstream too: nobody receives the next message.
    wait_for_subscribers(&redis, "SHARDNUMSUB", "s", 0).await;
    assert_eq!(publisher.cmd(&["SPUBLISH", "s", "late"]).await, b":0\r\n");
    proxy.shutdown().await;
}

/// Commands keywarden answers itself (SELECT, CLIENT, HELLO, AUTH, transactions) must not
/// escape Redis's Pub/Sub rules: a RESP2 subscriber gets Redis's refusal for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriber_connection_commands_match_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut subs = Mirror::connect(proxy.addr, &redis).await;
    subs.send(&[&["SUBSCRIBE", "a"]]).await;
    subs.same(1, "subscribe").await;
    let mut differences = Vec::new();
    for cmd in [
        &["SELECT", "1"][..],
        &["CLIENT", "ID"],
        &["CLIENT", "SETNAME", "x"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "INFO"],
        &["AUTH", "pw"],
        &["MULTI"],
        &["EXEC"],
        &["WATCH", "k"],
        &["UNWATCH"],
        &["HELLO", "2"],
        &["PING"],
    ] {
        subs.send(&[cmd]).await;
        let (got, want) = (subs.proxy.frame().await, subs.direct.frame().await);
        if got != want {
            differences.push(format!(
                "{cmd:?}\n  keywarden:    {}\n  redis-server: {}",
                show_bytes(&got),
                show_bytes(&want)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    proxy.shutdown().await;
}

/// Replies keywarden makes itself while a client is subscribed keep their place among the
/// frames Redis sends for earlier commands: pipelined `PING`, `PING x`, `RESET`, `GET k` get
/// two pongs, `+RESET`, then the null bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriber_pipelined_reset_keeps_order() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut subs = Mirror::connect(proxy.addr, &redis).await;
    subs.send(&[&["SUBSCRIBE", "a"]]).await;
    subs.same(1, "subscribe").await;
    subs.send(&[&["PING"], &["PING", "x"], &["RESET"], &["GET", "k"]])
        .await;
    let mut want = Vec::new();
    for _ in 0..4 {
        want.extend(subs.direct.frame().await);
    }
    assert_eq!(
        show_bytes(&want),
        show_bytes(
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$1\r\nx\r\n+RESET\r\n$-1\r\n"
        )
    );
    // Whatever keywarden sends within a moment (it may send fewer frames than Redis).
    let mut got = Vec::new();
    while got.len() < want.len() {
        match tokio::time::timeout(Duration::from_millis(300), subs.proxy.frame()).await {
            Ok(frame) => got.extend(frame),
            Err(_) => break,
        }
    }
    assert_eq!(
        show_bytes(&got),
        show_bytes(&want),
        "left: keywarden, right: redis-server"
    );
    proxy.shutdown().await;
}

/// QUIT while subscribed: `+OK`, then the connection closes, as in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriber_quit_matches_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut subs = Mirror::connect(proxy.addr, &redis).await;
    subs.send(&[&["SUBSCRIBE", "a"], &["QUIT"]]).await;
    let got = subs.proxy.bytes_until_closed().await;
    let want = subs.direct.bytes_until_closed().await;
    assert_eq!(show_bytes(&got), show_bytes(&want));
    assert_eq!(
        show_bytes(&want),
        show_bytes(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n+OK\r\n")
    );
    wait_for_subscribers(&redis, "NUMSUB", "a", 0).await;
    proxy.shutdown().await;
}

/// An upstream where the proxy logs in as its own ACL user (`default` stays open, so the
/// health probe's unauthenticated PING succeeds).
async fn upstream_with_proxy_user() -> (RedisServer, Settings) {
    let redis = RedisServer::start();
    let mut admin = Client::connect(redis.addr()).await;
    let created = admin
        .cmd(&[
            "ACL",
            "SETUSER",
            "kw",
            "on",
            ">kw-secret",
            "~*",
            "&*",
            "+@all",
        ])
        .await;
    assert_eq!(created, simple("OK"));
    let mut s = settings(&redis.addr());
    s.upstream.username = Some("kw".into());
    s.upstream.password = Some("kw-secret".into());
    (redis, s)
}

/// The proxy logs its own upstream connections in; when SUBSCRIBE is the first command on the
/// client's own connection, the reply to that AUTH must not reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_sees_nothing_of_the_upstream_login() {
    let (redis, s) = upstream_with_proxy_user().await;
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let mut sub = Raw::connect(proxy.addr).await;
    sub.send(&[&["SUBSCRIBE", "a"]]).await;
    assert_eq!(
        show_bytes(&sub.frame().await),
        show_bytes(&array(b'*', &[Bulk("subscribe"), Bulk("a"), Int(1)]))
    );
    wait_for_subscribers(&redis, "NUMSUB", "a", 1).await;
    proxy.shutdown().await;
}

/// The same login, before a blocking command (which keeps requests and replies paired): the
/// AUTH reply is kept from the client, and the pop runs as the proxy's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_client_sees_nothing_of_the_upstream_login() {
    let (redis, s) = upstream_with_proxy_user().await;
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    waiter.send(&[&["BLPOP", "q", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    let mut pusher = Raw::connect(proxy.addr).await;
    assert_eq!(pusher.cmd(&["RPUSH", "q", "x"]).await, b":1\r\n");
    assert_eq!(
        show_bytes(&waiter.frame().await),
        show_bytes(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n")
    );
    assert_eq!(waiter.cmd(&["ACL", "WHOAMI"]).await, b"$2\r\nkw\r\n");
    proxy.shutdown().await;
}

/// An upstream with `requirepass` and the matching `upstream.password`: the proxy serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_upstream_is_served() {
    let redis = RedisServer::start();
    let mut admin = Client::connect(redis.addr()).await;
    let set = admin
        .cmd(&["CONFIG", "SET", "requirepass", "upstream-secret"])
        .await;
    assert_eq!(set, simple("OK"));
    let mut s = settings(&redis.addr());
    s.upstream.password = Some("upstream-secret".into());
    let proxy = Proxy::start(s).await;
    let mut c = Raw::connect(proxy.addr).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reply = c.cmd(&["GET", "k"]).await;
        if reply == b"$-1\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after 2 s: {}",
            show_bytes(&reply)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Pub/Sub, RESP3
// ---------------------------------------------------------------------------------------------

/// A RESP3 subscriber through keywarden and one connected to a reference redis-server, and a
/// publisher on each side: the two sides never share data, so every reply can match.
struct Resp3Rig {
    upstream: RedisServer,
    reference: RedisServer,
    proxy: Proxy,
    subs: Mirror,
    publishers: Mirror,
}

impl Resp3Rig {
    /// Everything started, and both subscribers switched to RESP3 with HELLO 3.
    async fn start() -> Resp3Rig {
        let upstream = RedisServer::start();
        let reference = RedisServer::start();
        let proxy = Proxy::for_upstream(&upstream).await;
        let mut subs = Mirror::connect(proxy.addr, &reference).await;
        let publishers = Mirror::connect(proxy.addr, &reference).await;
        subs.send(&[&["HELLO", "3"]]).await;
        let (got, want) = (subs.proxy.frame().await, subs.direct.frame().await);
        assert_eq!(
            show_bytes(&mask_id(&got)),
            show_bytes(&mask_id(&want)),
            "HELLO 3"
        );
        Resp3Rig {
            upstream,
            reference,
            proxy,
            subs,
            publishers,
        }
    }

    /// Runs a RESP3 subscriber session and compares every frame: pushes for subscriptions
    /// and messages, and ordinary commands, which RESP3 allows while subscribed, interleaved
    /// with them.
    async fn subscriber_session(&mut self) {
        let (subs, publishers) = (&mut self.subs, &mut self.publishers);
        subs.send(&[&["SUBSCRIBE", "a", "b"], &["PSUBSCRIBE", "p*"]])
            .await;
        let frames = subs.same(3, "RESP3 subscribe").await;
        assert_eq!(
            frames[0],
            array(b'>', &[Bulk("subscribe"), Bulk("a"), Int(1)])
        );
        assert_eq!(
            frames[2],
            array(b'>', &[Bulk("psubscribe"), Bulk("p*"), Int(3)])
        );

        assert_eq!(publishers.one(&["PUBLISH", "a", "m1"]).await, b":1\r\n");
        assert_eq!(
            subs.same(1, "RESP3 message").await[0],
            array(b'>', &[Bulk("message"), Bulk("a"), Bulk("m1")])
        );
        // Ordinary commands while subscribed, in RESP3.
        assert_eq!(subs.one(&["SET", "k", "v"]).await, b"+OK\r\n");
        assert_eq!(subs.one(&["GET", "k"]).await, b"$1\r\nv\r\n");
        assert_eq!(subs.one(&["GET", "missing"]).await, b"_\r\n");
        assert_eq!(subs.one(&["HSET", "h", "f", "1"]).await, b":1\r\n");
        assert_eq!(
            subs.one(&["HGETALL", "h"]).await,
            b"%1\r\n$1\r\nf\r\n$1\r\n1\r\n"
        );
        assert_eq!(subs.one(&["PING"]).await, b"+PONG\r\n");
        // A message published before a command is sent arrives before that command's reply.
        assert_eq!(publishers.one(&["PUBLISH", "pz", "m2"]).await, b":1\r\n");
        subs.send(&[&["INCR", "n"]]).await;
        let frames = subs.same(2, "message, then INCR's reply").await;
        assert_eq!(
            frames[0],
            array(
                b'>',
                &[Bulk("pmessage"), Bulk("p*"), Bulk("pz"), Bulk("m2")]
            )
        );
        assert_eq!(frames[1], b":1\r\n");
        // The subscriber publishes to itself in a pipeline: Redis sends the message push
        // before PUBLISH's own reply, and keywarden keeps that order.
        subs.send(&[&["INCR", "n"], &["PUBLISH", "b", "m3"], &["GET", "n"]])
            .await;
        let frames = subs.same(4, "pipeline publishing to itself").await;
        assert_eq!(
            frames[1],
            array(b'>', &[Bulk("message"), Bulk("b"), Bulk("m3")])
        );
        assert_eq!(frames[2], b":1\r\n");
        // Unsubscribing answers with pushes too.
        // (Channels named: without names, the order is the server's hash table order.)
        subs.send(&[&["UNSUBSCRIBE", "a", "b"], &["PUNSUBSCRIBE"]])
            .await;
        subs.same(3, "RESP3 unsubscribe").await;
        assert_eq!(publishers.one(&["PUBLISH", "a", "m4"]).await, b":0\r\n");
        assert_eq!(subs.one(&["GET", "k"]).await, b"$1\r\nv\r\n");
        // Nothing was written anywhere but through the subscriber: same data on both servers.
        let mut up = Client::connect(self.upstream.addr()).await;
        let mut reference = Client::connect(self.reference.addr()).await;
        for cmd in [&["GET", "n"][..], &["HGET", "h", "f"]] {
            assert_eq!(up.cmd(cmd).await, reference.cmd(cmd).await, "{cmd:?}");
        }
    }
}

/// HELLO 3, then SUBSCRIBE: the subscriber gets exactly Redis's RESP3 frames, and nothing of
/// the proxy's own setup of its upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriber_matches_redis() {
    let mut rig = Resp3Rig::start().await;
    rig.subscriber_session().await;
    rig.proxy.shutdown().await;
}

/// The same RESP3 session, on a client whose upstream connection was opened (and set up with
/// HELLO 3) by an earlier stateful command (WATCH), before it subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriber_on_an_open_dedicated_connection_matches_redis() {
    let mut rig = Resp3Rig::start().await;
    assert_eq!(rig.subs.one(&["WATCH", "k"]).await, b"+OK\r\n");
    assert_eq!(rig.subs.one(&["UNWATCH"]).await, b"+OK\r\n");
    rig.subscriber_session().await;
    rig.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Pub/Sub when the upstream fails
// ---------------------------------------------------------------------------------------------

/// Killing the upstream closes every subscriber's connection (its subscriptions are gone, and
/// closing makes client libraries resubscribe); subscribing while it is down is refused at
/// once; after a restart on the same port, new subscriptions work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_is_closed_when_the_upstream_is_lost_and_can_resubscribe() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut sub = Raw::connect(proxy.addr).await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "news"]).await,
        array(b'*', &[Bulk("subscribe"), Bulk("news"), Int(1)])
    );
    redis.kill();
    let seen = sub.bytes_until_closed().await;
    assert_eq!(show_bytes(&seen), "", "nothing but the close");

    // While the upstream is down, a new subscription is refused promptly. Right after the
    // kill, before the health monitor has seen the outage, the connect fails (UPSTREAM); once
    // it has, the default keyspace fails closed (FAILCLOSED). Both are documented.
    const UNAVAILABLE: &[u8] = b"-UPSTREAM upstream unavailable\r\n";
    const FAILCLOSED: &[u8] =
        b"-FAILCLOSED keyspace 'default' fails closed and the upstream is unavailable\r\n";
    let mut early = Raw::connect(proxy.addr).await;
    let started = Instant::now();
    let reply = early.cmd(&["SUBSCRIBE", "news"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    assert!(
        reply == UNAVAILABLE || reply == FAILCLOSED,
        "SUBSCRIBE while down: {}",
        show_bytes(&reply)
    );
    // Once the outage is known: FAILCLOSED, at once.
    let deadline = Instant::now() + WAIT;
    let mut c = Raw::connect(proxy.addr).await;
    while c.cmd(&["GET", "k"]).await != FAILCLOSED {
        assert!(Instant::now() < deadline, "the outage was never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    assert_eq!(
        show_bytes(&c.cmd(&["SUBSCRIBE", "news"]).await),
        show_bytes(FAILCLOSED)
    );
    assert_eq!(
        show_bytes(&c.cmd(&["PSUBSCRIBE", "n*"]).await),
        show_bytes(FAILCLOSED)
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    redis.restart();
    wait_until_served(&proxy).await;
    let mut sub = Raw::connect(proxy.addr).await;
    let mut publisher = Raw::connect(proxy.addr).await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "news"]).await,
        array(b'*', &[Bulk("subscribe"), Bulk("news"), Int(1)])
    );
    wait_for_subscribers(&redis, "NUMSUB", "news", 1).await;
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "back"]).await, b":1\r\n");
    assert_eq!(
        sub.frame().await,
        array(b'*', &[Bulk("message"), Bulk("news"), Bulk("back")])
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Blocking commands
// ---------------------------------------------------------------------------------------------

/// The proxy's upstream, a reference redis-server for the same commands sent directly, and the
/// proxy with a command timeout far below the blocking timeouts used.
struct Blocking {
    upstream: RedisServer,
    reference: RedisServer,
    proxy: Proxy,
}

/// Below every blocking timeout the tests use: blocking commands must ignore it.
const SHORT_COMMAND_TIMEOUT: Duration = Duration::from_millis(100);

impl Blocking {
    async fn start() -> Blocking {
        let upstream = RedisServer::start();
        let reference = RedisServer::start();
        let mut s = settings(&upstream.addr());
        s.upstream.command_timeout = SHORT_COMMAND_TIMEOUT;
        let proxy = Proxy::start(s).await;
        Blocking {
            upstream,
            reference,
            proxy,
        }
    }

    /// Sends `block` on a fresh connection (through the proxy, then directly to the reference),
    /// waits until it blocks upstream, runs `wake` from another connection on the same side,
    /// and compares the blocked command's replies (and the wakers') byte for byte.
    async fn woken(&self, block: &[&str], wake: &[&str]) -> Vec<u8> {
        let mut replies = Vec::new();
        for (addr, server) in [
            (self.proxy.addr.to_string(), &self.upstream),
            (self.reference.addr(), &self.reference),
        ] {
            let mut waiter = Raw::connect(&addr).await;
            let mut waker = Raw::connect(&addr).await;
            waiter.send(&[block]).await;
            wait_for_blocked(server, 1).await;
            let woke = waker.cmd(wake).await;
            let got = waiter.frame().await;
            wait_for_blocked(server, 0).await;
            replies.push((woke, got));
        }
        let (through_proxy, direct) = (&replies[0], &replies[1]);
        assert_eq!(
            show_bytes(&through_proxy.0),
            show_bytes(&direct.0),
            "{wake:?}"
        );
        assert_eq!(
            show_bytes(&through_proxy.1),
            show_bytes(&direct.1),
            "{block:?}"
        );
        replies.swap_remove(0).1
    }
}

/// A blocking command with a timeout times out as in Redis: after its own timeout, not the
/// proxy's (shorter) command timeout, with Redis's null reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_timeouts_are_honoured_as_in_redis() {
    let rig = Blocking::start().await;
    let mut through_proxy = Raw::connect(rig.proxy.addr).await;
    let mut direct = Raw::connect(rig.reference.addr()).await;
    for (cmd, want) in [
        (&["BLPOP", "q", "0.2"][..], &b"*-1\r\n"[..]),
        (&["BRPOP", "q", "r", "0.2"], b"*-1\r\n"),
        (&["BLMOVE", "q", "d", "LEFT", "RIGHT", "0.2"], b"*-1\r\n"),
        (&["BZPOPMIN", "z", "0.2"], b"*-1\r\n"),
        (&["BLMPOP", "0.2", "1", "q", "LEFT"], b"*-1\r\n"),
        (&["XREAD", "BLOCK", "200", "STREAMS", "s", "$"], b"*-1\r\n"),
    ] {
        let mut elapsed = Vec::new();
        let mut replies = Vec::new();
        for c in [&mut through_proxy, &mut direct] {
            let started = Instant::now();
            replies.push(c.cmd(cmd).await);
            elapsed.push(started.elapsed());
        }
        assert_eq!(show_bytes(&replies[0]), show_bytes(&replies[1]), "{cmd:?}");
        assert_eq!(show_bytes(&replies[0]), show_bytes(want), "{cmd:?}");
        assert!(
            elapsed[0] >= Duration::from_millis(190) && elapsed[0] < Duration::from_millis(1500),
            "{cmd:?} through the proxy took {:?} (Redis: {:?})",
            elapsed[0],
            elapsed[1]
        );
    }
    // The connection is still usable, on its dedicated upstream connection.
    assert_eq!(through_proxy.cmd(&["RPUSH", "q", "x"]).await, b":1\r\n");
    assert_eq!(
        through_proxy.cmd(&["BLPOP", "q", "0.2"]).await,
        b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n"
    );
    rig.proxy.shutdown().await;
}

/// Blocked commands are woken by another client's write, with Redis's reply bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_commands_are_woken_as_in_redis() {
    let rig = Blocking::start().await;
    assert_eq!(
        rig.woken(&["BLPOP", "q1", "q2", "0"], &["RPUSH", "q2", "x"])
            .await,
        b"*2\r\n$2\r\nq2\r\n$1\r\nx\r\n"
    );
    rig.woken(&["BRPOP", "q3", "0"], &["LPUSH", "q3", "a", "b"])
        .await;
    assert_eq!(
        rig.woken(
            &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"],
            &["RPUSH", "src", "m"]
        )
        .await,
        b"$1\r\nm\r\n"
    );
    rig.woken(&["BRPOPLPUSH", "src2", "dst", "0"], &["RPUSH", "src2", "n"])
        .await;
    rig.woken(
        &["BZPOPMIN", "z", "0"],
        &["ZADD", "z", "2", "two", "1", "one"],
    )
    .await;
    rig.woken(
        &["BZPOPMAX", "z2", "0"],
        &["ZADD", "z2", "2", "two", "1", "one"],
    )
    .await;
    rig.woken(
        &["BLMPOP", "0", "1", "q4", "RIGHT"],
        &["RPUSH", "q4", "a", "b"],
    )
    .await;
    assert_eq!(
        rig.woken(
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
            &["XADD", "s", "1-1", "f", "v"]
        )
        .await,
        b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    // What the wake-ups left behind is the same on both servers.
    let mut through_proxy = Raw::connect(rig.proxy.addr).await;
    let mut direct = Raw::connect(rig.reference.addr()).await;
    for cmd in [
        &["LRANGE", "dst", "0", "-1"][..],
        &["LRANGE", "q3", "0", "-1"],
        &["LRANGE", "q4", "0", "-1"],
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        &["ZRANGE", "z2", "0", "-1", "WITHSCORES"],
    ] {
        assert_eq!(
            show_bytes(&through_proxy.cmd(cmd).await),
            show_bytes(&direct.cmd(cmd).await),
            "{cmd:?}"
        );
    }
    rig.proxy.shutdown().await;
}

/// A client that disconnects while blocked never consumes an element: its upstream connection
/// is closed with it, so Redis stops blocking for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_while_blocked_consumes_nothing() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    drop(waiter);
    wait_for_blocked(&redis, 0).await;
    let mut pusher = Raw::connect(proxy.addr).await;
    assert_eq!(pusher.cmd(&["LPUSH", "jobs", "j1"]).await, b":1\r\n");
    assert_eq!(pusher.cmd(&["LLEN", "jobs"]).await, b":1\r\n");
    proxy.shutdown().await;
}

/// CLIENT KILL closes a blocked client at once, as Redis does: its upstream connection goes
/// with it, so it never consumes an element pushed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_blocked_client_is_closed_and_consumes_nothing() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    let id = String::from_utf8(waiter.cmd(&["CLIENT", "ID"]).await).unwrap();
    let id = id.trim_start_matches(':').trim_end().to_owned();
    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    let mut killer = Raw::connect(proxy.addr).await;
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "ID", &id]).await, b":1\r\n");
    assert_eq!(waiter.bytes_until_closed().await, b"");
    wait_for_blocked(&redis, 0).await;
    assert_eq!(killer.cmd(&["LPUSH", "jobs", "j1"]).await, b":1\r\n");
    assert_eq!(killer.cmd(&["LLEN", "jobs"]).await, b":1\r\n");
    proxy.shutdown().await;
}

/// Killing the upstream wakes a blocked client with an error, then closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_client_gets_an_error_when_the_upstream_is_killed() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    redis.kill();
    let seen = waiter.bytes_until_closed().await;
    // Whichever comes first: its own connection's end, or the health monitor declaring the
    // upstream unavailable (a refused reconnect does it at once), which also ends it.
    assert!(
        seen == b"-UPSTREAM connection to upstream lost before the reply\r\n"
            || seen == b"-UPSTREAM upstream unavailable\r\n",
        "{}",
        show_bytes(&seen)
    );
    proxy.shutdown().await;
}

/// A hung upstream does not make the proxy time out a command that blocks for ever: it is
/// exempt from the command timeout (until the probe declares the upstream unavailable, see
/// below). Once the upstream resumes, Redis's own reply arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_client_is_not_timed_out_while_the_upstream_hangs() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.upstream.command_timeout = SHORT_COMMAND_TIMEOUT;
    let proxy = Proxy::start(s).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    redis.hang();
    // Many command timeouts long, yet less than the probe needs to declare the upstream
    // unavailable (three failed probes a second apart): no error, and the connection stays.
    waiter
        .assert_silent_for(
            SHORT_COMMAND_TIMEOUT * 5,
            "blocked while the upstream hangs",
        )
        .await;
    redis.resume();
    let mut pusher = Raw::connect(proxy.addr).await;
    assert_eq!(pusher.cmd(&["LPUSH", "jobs", "j"]).await, b":1\r\n");
    assert_eq!(
        show_bytes(&waiter.frame().await),
        show_bytes(b"*2\r\n$4\r\njobs\r\n$1\r\nj\r\n")
    );
    assert_eq!(waiter.cmd(&["PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// A blocking command with a timeout, on an upstream that hangs, is answered once its own
/// timeout and the command timeout have both passed: Redis cannot answer it, and the client
/// is not left waiting for ever (it gets the timeout error, then its connection closes, as
/// for any request lost on a client's own connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_timeout_is_kept_while_the_upstream_hangs() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.upstream.command_timeout = SHORT_COMMAND_TIMEOUT;
    let proxy = Proxy::start(s).await;
    for blocking in [
        &["BLPOP", "jobs", "0.3"][..],
        &["BLMPOP", "0.3", "1", "jobs", "LEFT"],
        &["XREAD", "BLOCK", "300", "STREAMS", "s", "$"],
    ] {
        let mut waiter = Raw::connect(proxy.addr).await;
        waiter.send(&[blocking]).await;
        wait_for_blocked(&redis, 1).await;
        redis.hang();
        let start = Instant::now();
        let seen = waiter.bytes_until_closed().await;
        let took = start.elapsed();
        redis.resume();
        assert_eq!(
            show_bytes(&seen),
            show_bytes(b"-UPSTREAM no reply from upstream within 100ms\r\n"),
            "{blocking:?}"
        );
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{blocking:?}: answered after {took:?}"
        );
        wait_for_blocked(&redis, 0).await;
    }
    proxy.shutdown().await;
}

/// When the probe declares a hung upstream unavailable, blocked clients and subscribers are
/// told as they would be if Redis died: a blocked command gets an error, and both connections
/// close, so client libraries reconnect (and resubscribe) instead of waiting on a connection
/// that may never speak again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_subscribed_clients_are_closed_when_the_upstream_is_declared_unavailable() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.health.probe_interval = Duration::from_millis(100);
    s.health.probe_timeout = Duration::from_millis(100);
    let proxy = Proxy::start(s).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    let mut listener = Raw::connect(proxy.addr).await;
    listener.send(&[&["SUBSCRIBE", "news"]]).await;
    listener.frame().await;
    wait_for_blocked(&redis, 1).await;
    redis.hang();
    let start = Instant::now();
    assert_eq!(
        show_bytes(&waiter.bytes_until_closed().await),
        show_bytes(b"-UPSTREAM upstream unavailable\r\n")
    );
    assert_eq!(show_bytes(&listener.bytes_until_closed().await), "");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    redis.resume();
    wait_until_served(&proxy).await;
    proxy.shutdown().await;
}

/// Blocking commands on a local_only keyspace are refused at once (the local store does not
/// implement them), never left to hang; mixing local and upstream keys is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_on_a_local_only_keyspace_are_refused() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(with_scratch_keyspace(settings(&redis.addr()))).await;
    let mut c = Raw::connect(proxy.addr).await;
    let unsupported = |name: &str| {
        format!(
            "-UNSUPPORTED '{name}' is not supported by the local store (keyspace 'scratch')\r\n"
        )
    };
    for (cmd, name) in [
        (&["BLPOP", "tmp:q", "0"][..], "blpop"),
        (&["BRPOP", "tmp:q", "tmp:r", "0"], "brpop"),
        (
            &["BLMOVE", "tmp:a", "tmp:b", "LEFT", "RIGHT", "0"],
            "blmove",
        ),
        (&["BRPOPLPUSH", "tmp:a", "tmp:b", "0"], "brpoplpush"),
        (&["BLMPOP", "0", "1", "tmp:q", "LEFT"], "blmpop"),
        (&["BZPOPMIN", "tmp:z", "0"], "bzpopmin"),
        (&["BZPOPMAX", "tmp:z", "0"], "bzpopmax"),
        (&["BZMPOP", "0", "1", "tmp:z", "MIN"], "bzmpop"),
        (&["XREAD", "BLOCK", "0", "STREAMS", "tmp:s", "$"], "xread"),
    ] {
        let started = Instant::now();
        let reply = c.try_frame_of(cmd).await.expect("a reply, not a close");
        assert_eq!(
            show_bytes(&reply),
            show_bytes(unsupported(name).as_bytes()),
            "{cmd:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{cmd:?} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        show_bytes(
            &c.cmd(&["BLMOVE", "tmp:a", "up", "LEFT", "RIGHT", "0"])
                .await
        ),
        show_bytes(b"-KEYSPACE 'blmove' mixes local_only keys with keys that live upstream\r\n")
    );
    // Nothing blocked upstream, and the connection goes on.
    assert_eq!(info_clients_field(&redis, "blocked_clients").await, 0);
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(c.cmd(&["SET", "tmp:k", "v"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

/// XREADGROUP parsed as Redis parses it: a group named `streams` and a consumer named `block`
/// are names, and the BLOCK after them makes the command blocking. It goes on the client's own
/// connection, so another client sharing the one shared connection is answered while it
/// waits, well past the command timeout; XADD then wakes it as Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xreadgroup_with_keyword_names_blocks_on_its_own_connection() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.upstream.connections = 1;
    s.upstream.command_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(s).await;
    let mut other = Raw::connect(proxy.addr).await;
    let created = other
        .cmd(&["XGROUP", "CREATE", "s", "streams", "$", "MKSTREAM"])
        .await;
    assert_eq!(created, b"+OK\r\n");
    let mut reader = Raw::connect(proxy.addr).await;
    let read = [
        "XREADGROUP",
        "GROUP",
        "streams",
        "block",
        "BLOCK",
        "0",
        "STREAMS",
        "s",
        ">",
    ];
    reader.send(&[&read]).await;
    wait_for_blocked(&redis, 1).await;
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = other.cmd(&["XADD", "s", "1-1", "f", "v"]).await;
    assert_eq!(id, b"$3\r\n1-1\r\n");
    let got = reader.frame().await;
    let entry = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
    assert_eq!(show_bytes(&got), show_bytes(entry));
    proxy.shutdown().await;
}

/// Replies keywarden makes itself count against `max_pending_output` while they wait behind
/// a blocked command: a client that floods CLIENT LIST behind BLPOP and reads nothing is no
/// longer read once they pass the limit, so its writes back up instead of keywarden's memory
/// growing with every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_held_behind_a_blocked_command_stop_reading_at_the_output_limit() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.limits.max_pending_output = 64 * 1024;
    let proxy = Proxy::start(s).await;
    let mut c = RawClient::connect(proxy.addr).await;
    c.send(&[&["BLPOP", "q", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    let one = encode(&[b"CLIENT".as_slice(), b"LIST"]);
    let chunk = one.repeat(64 * 1024 / one.len());
    let until = Instant::now() + Duration::from_secs(3);
    let mut written = 0;
    while let Ok(Ok(())) = tokio::time::timeout_at(until, c.stream.write_all(&chunk)).await {
        written += chunk.len();
    }
    // What the socket buffers take, and no more: keywarden stopped reading.
    assert!(
        written < 16 * 1024 * 1024,
        "keywarden read {written} bytes of requests whose replies it had to hold"
    );
    proxy.shutdown().await;
}

/// A client on its own connection (database 1) pipelines a large GET, a command keywarden
/// answers itself (CLIENT GETNAME) and SUBSCRIBE, which unpairs the connection: the replies
/// come in request order, as from Redis, the large bulk before the proxy's own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_their_order_when_the_connection_unpairs_mid_pipeline() {
    let redis = RedisServer::start();
    let mut direct = Raw::connect(redis.addr()).await;
    let big = "b".repeat(4 * 1024 * 1024);
    assert_eq!(
        direct.run(&[&["SELECT", "1"], &["SET", "big", &big]]).await[1],
        b"+OK\r\n"
    );
    let proxy = Proxy::for_upstream(&redis).await;
    let mut both = Mirror::connect(proxy.addr, &redis).await;
    both.one(&["SELECT", "1"]).await;
    both.send(&[
        &["GET", "big"],
        &["CLIENT", "GETNAME"],
        &["SUBSCRIBE", "ch"],
    ])
    .await;
    // Frames by their length and first bytes: the bulk is too large to show.
    let head = |f: &[u8]| (f.len(), show_bytes(&f[..f.len().min(24)]));
    for i in 0..3 {
        let want = both.direct.frame().await;
        let got = both.proxy.frame().await;
        assert_eq!(head(&got), head(&want), "frame {i} (left: keywarden)");
        assert!(got == want, "frame {i} differs");
    }
    proxy.shutdown().await;
}

/// CLIENT UNBLOCK with a keywarden client id unblocks that client, as Redis would: its
/// blocking command returns as on timeout (nil) or, with ERROR, with Redis's -UNBLOCKED
/// error; a client that is not blocked is not unblocked (`:0`); arguments are checked with
/// Redis's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_unblock_of_a_keywarden_id_unblocks_that_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut waiter = Raw::connect(proxy.addr).await;
    let id = String::from_utf8(waiter.cmd(&["CLIENT", "ID"]).await).unwrap();
    let id = id.trim_start_matches(':').trim_end().to_owned();
    let mut other = Raw::connect(proxy.addr).await;
    // Not blocked (no connection of its own yet).
    assert_eq!(other.cmd(&["CLIENT", "UNBLOCK", &id]).await, b":0\r\n");

    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    // Redis may report the block a moment before keywarden has read the connection's id
    // there (the CLIENT ID it sends ahead of the first blocking command): until then the
    // client is not known to be blocked, and UNBLOCK answers 0, as for a client that is not.
    let deadline = tokio::time::Instant::now() + WAIT;
    while other.cmd(&["CLIENT", "UNBLOCK", &id]).await != b":1\r\n" {
        assert!(tokio::time::Instant::now() < deadline, "never unblocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(show_bytes(&waiter.frame().await), show_bytes(b"*-1\r\n"));

    waiter.send(&[&["BLPOP", "jobs", "0"]]).await;
    wait_for_blocked(&redis, 1).await;
    assert_eq!(
        other.cmd(&["CLIENT", "UNBLOCK", &id, "error"]).await,
        b":1\r\n"
    );
    let mut direct = Raw::connect(redis.addr()).await;
    let mut blocked_direct = Raw::connect(redis.addr()).await;
    let direct_id = String::from_utf8(blocked_direct.cmd(&["CLIENT", "ID"]).await).unwrap();
    let direct_id = direct_id.trim_start_matches(':').trim_end().to_owned();
    blocked_direct.send(&[&["BLPOP", "other", "0"]]).await;
    // The waiter was unblocked already: only the direct client blocks now.
    wait_for_blocked(&redis, 1).await;
    direct
        .cmd(&["CLIENT", "UNBLOCK", &direct_id, "ERROR"])
        .await;
    assert_eq!(
        show_bytes(&waiter.frame().await),
        show_bytes(&blocked_direct.frame().await)
    );
    // Now idle on its own connection: nothing to unblock.
    assert_eq!(other.cmd(&["CLIENT", "UNBLOCK", &id]).await, b":0\r\n");

    for args in [
        &["CLIENT", "UNBLOCK", "x"][..],
        &["CLIENT", "UNBLOCK", &id, "MAYBE"],
        &["CLIENT", "UNBLOCK", &id, "TIMEOUT", "extra"],
        &["CLIENT", "UNBLOCK"],
    ] {
        assert_eq!(
            show_bytes(&other.cmd(args).await),
            show_bytes(&direct.cmd(args).await),
            "{args:?}"
        );
    }
    proxy.shutdown().await;
}

/// What the upstream has counted of a command (`INFO commandstats`): 0 when never called.
async fn upstream_calls(redis: &RedisServer, command: &str) -> String {
    let mut direct = Client::connect(redis.addr()).await;
    let Frame::BulkString(stats) = direct.cmd(&["INFO", "commandstats"]).await else {
        panic!("INFO commandstats")
    };
    let stats = String::from_utf8_lossy(&stats).into_owned();
    let prefix = format!("cmdstat_{command}:");
    stats
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or("")
        .to_owned()
}

/// The next frame that is not a MONITOR line (`+<time> [...] "cmd" ...`).
async fn reply_among_monitor_lines(c: &mut Raw) -> Vec<u8> {
    loop {
        let frame = c.frame().await;
        if !frame.starts_with(b"+1") {
            return frame;
        }
    }
}

/// AUTH and HELLO ... AUTH name keywarden's users, so they never go to the upstream: not from a
/// MONITOR client (Redis runs any command there), nor from a RESP2 subscriber (which gets
/// Redis's refusal from keywarden, byte for byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_listening_clients_never_reach_the_upstream() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    wait_until_served(&proxy).await;
    // keywarden's own connections ask HELLO (to learn the server's version): counted before.
    let hellos_before = upstream_calls(&redis, "hello").await;
    let mut monitor = Raw::connect(proxy.addr).await;
    assert_eq!(monitor.cmd(&["MONITOR"]).await, b"+OK\r\n");
    monitor.send(&[&["AUTH", "guess"]]).await;
    let auth = reply_among_monitor_lines(&mut monitor).await;
    assert!(
        auth.starts_with(b"-ERR AUTH <password> called"),
        "{}",
        show_bytes(&auth)
    );
    monitor
        .send(&[&["HELLO", "2", "AUTH", "default", "guess"]])
        .await;
    // No password is configured: `default` takes any, as in Redis.
    let hello = reply_among_monitor_lines(&mut monitor).await;
    assert!(
        hello.starts_with(b"*14\r\n$6\r\nserver"),
        "{}",
        show_bytes(&hello)
    );

    let mut subs = Mirror::connect(proxy.addr, &redis).await;
    subs.send(&[&["SUBSCRIBE", "a"]]).await;
    subs.same(1, "subscribe").await;
    subs.send(&[&["AUTH", "guess"]]).await;
    subs.same(1, "AUTH while subscribed, refused as Redis refuses it")
        .await;
    subs.send(&[&["HELLO", "3", "AUTH", "default", "guess"]])
        .await;
    subs.same(1, "HELLO AUTH while subscribed").await;

    // Only the direct subscriber's AUTH and HELLO reached the server (refused there).
    assert_eq!(
        upstream_calls(&redis, "auth").await,
        "cmdstat_auth:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1,failed_calls=0"
    );
    let calls = |line: &str| line.split(',').next().unwrap_or("").to_owned();
    let hellos_after = upstream_calls(&redis, "hello").await;
    assert_eq!(
        calls(&hellos_after),
        calls(&hellos_before),
        "{hellos_after}"
    );
    assert!(hellos_after.contains("rejected_calls=1,"), "{hellos_after}");
    proxy.shutdown().await;
}

/// SELECT from a client Redis lets run any command while listening (RESP3 subscriber, MONITOR)
/// switches the database for keywarden too: a local_only key written afterwards lands in the
/// selected database, and an invalid index is refused without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_while_listening_switches_the_database_everywhere() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(s).await;
    let mut subs = Raw::connect(proxy.addr).await;
    let hello = subs.cmd(&["HELLO", "3"]).await;
    assert!(hello.starts_with(b"%"), "{}", show_bytes(&hello));
    subs.send(&[&["SUBSCRIBE", "a"]]).await;
    subs.frame().await;
    assert_eq!(subs.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(
        subs.cmd(&["SELECT", "99"]).await,
        b"-ERR DB index is out of range\r\n"
    );
    assert_eq!(subs.cmd(&["SET", "tmp:k", "1"]).await, b"+OK\r\n");
    assert_eq!(subs.cmd(&["SET", "up", "1"]).await, b"+OK\r\n");
    let mut other = Raw::connect(proxy.addr).await;
    assert_eq!(other.cmd(&["GET", "tmp:k"]).await, b"$-1\r\n");
    assert_eq!(other.cmd(&["GET", "up"]).await, b"$-1\r\n");
    assert_eq!(other.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(other.cmd(&["GET", "tmp:k"]).await, b"$1\r\n1\r\n");
    assert_eq!(other.cmd(&["GET", "up"]).await, b"$1\r\n1\r\n");
    proxy.shutdown().await;
}
