//! Real failures of the upstream: killed mid-pipeline, hung with SIGSTOP, down at startup,
//! restarted. Every request gets a reply, none hangs, and the proxy serves again once the
//! upstream is back, without a restart.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Polls through the proxy until PING succeeds; returns how long it took.
async fn wait_until_served(proxy: &Proxy) -> Duration {
    let start = Instant::now();
    let mut c = proxy.client().await;
    loop {
        match c.try_reply_to(&["PING"]).await {
            Some(f) if f == simple("PONG") => return start.elapsed(),
            Some(_) => {}
            None => c = proxy.client().await,
        }
        assert!(start.elapsed() < WAIT, "proxy never served again");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

trait TryReply {
    async fn try_reply_to(&mut self, args: &[&str]) -> Option<Frame>;
}

impl TryReply for Client {
    async fn try_reply_to(&mut self, args: &[&str]) -> Option<Frame> {
        self.send(args).await;
        self.try_reply(WAIT).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_pipeline_every_request_answered_then_recovers() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    const CLIENTS: usize = 10;
    const COMMANDS: usize = 20_000;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr).await;
            let (mut rd, mut wr) = c.stream.into_split();
            let writer = tokio::spawn(async move {
                for chunk in 0..COMMANDS / 100 {
                    let mut batch = Vec::new();
                    for j in 0..100 {
                        let n = (chunk * 100 + j).to_string();
                        batch.extend(encode(&[b"ECHO", format!("{id}:{n}").as_bytes()]));
                    }
                    wr.write_all(&batch).await.expect("the proxy keeps reading");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // Keep the write half open: a client that half-closes is gone, as in Redis.
                wr
            });
            let (mut echoed, mut errors) = (0usize, 0usize);
            let mut buf = bytes::BytesMut::new();
            while echoed + errors < COMMANDS {
                while let Some((frame, used)) =
                    redis_protocol::resp2::decode::decode(&buf).expect("valid RESP")
                {
                    let _ = buf.split_to(used);
                    let n = echoed + errors;
                    match frame {
                        Frame::BulkString(b) => {
                            assert_eq!(b, format!("{id}:{n}").into_bytes(), "order kept");
                            echoed += 1;
                        }
                        Frame::Error(e) => {
                            // In flight when it died: UPSTREAM; sent while it was known to be
                            // down: refused at once, FAILCLOSED.
                            assert!(
                                e.starts_with("UPSTREAM ") || e.starts_with("FAILCLOSED "),
                                "{e}"
                            );
                            errors += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                if echoed + errors == COMMANDS {
                    break;
                }
                let n = tokio::time::timeout(WAIT, rd.read_buf(&mut buf))
                    .await
                    .expect("no request hangs")
                    .expect("read");
                assert!(
                    n > 0,
                    "client {id} closed after {} replies",
                    echoed + errors
                );
            }
            writer.await.unwrap();
            (echoed, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.restart();
    let mut totals = (0, 0);
    for t in tasks {
        let (e, r) = t.await.unwrap();
        totals.0 += e;
        totals.1 += r;
    }
    assert!(totals.1 > 0, "the outage was seen as errors: {totals:?}");
    assert!(
        totals.0 > 0,
        "requests were served around the outage: {totals:?}"
    );
    let took = wait_until_served(&proxy).await;
    assert!(took < Duration::from_secs(1), "served again after {took:?}");
    proxy.shutdown().await;
}

/// Every request sent to a hung upstream is answered with an error: the oldest on each
/// connection when it has waited the command timeout, the ones behind it once the probe
/// confirms the upstream is not answering (a timeout alone is a suspicion: it may be one
/// client's slow command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstream_fails_pending_requests_once_the_probe_confirms_the_timeout() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await; // command timeout 500 ms
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = proxy.client().await;
        assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
        clients.push(c);
    }
    redis.hang();
    let start = Instant::now();
    for c in clients.iter_mut() {
        c.send_raw(b"PING\r\nGET x\r\nSET y 1\r\n").await;
    }
    for c in clients.iter_mut() {
        for _ in 0..3 {
            let reply = c.reply().await;
            assert!(is_error(&reply, "UPSTREAM"), "{reply:?}");
        }
    }
    let took = start.elapsed();
    // Command timeout 500 ms, then at most two probes of 500 ms each (failure_threshold 3:
    // the suspicions of the timed-out connections and the failed probes count together).
    assert!(
        took < Duration::from_millis(500 + 2 * 500 + 400),
        "errors after {took:?}, timeout is 500ms, probe timeout 500ms"
    );
    assert!(
        took >= Duration::from_millis(450),
        "not before the timeout: {took:?}"
    );
    redis.resume();
    wait_until_served(&proxy).await;
    // The old connection was not reused: replies are not shifted.
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["ECHO", "fresh"]).await, bulk("fresh"));
    assert_eq!(c.cmd(&["ECHO", "again"]).await, bulk("again"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_startup_fails_fast_then_serves_once_up() {
    let port = free_port();
    let proxy = Proxy::start(settings(&format!("127.0.0.1:{port}"))).await;
    let mut c = proxy.client().await;
    // The proxy probed the upstream before listening, and knows it is down.
    let start = Instant::now();
    for _ in 0..10 {
        let reply = c.cmd(&["GET", "k"]).await;
        assert_eq!(
            reply,
            Frame::Error(
                "FAILCLOSED keyspace 'default' fails closed and the upstream is unavailable".into()
            )
        );
    }
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "fail closed at once, not per-request connect waits: {:?}",
        start.elapsed()
    );
    let redis = RedisServer::start_on(port);
    let took = wait_until_served(&proxy).await;
    assert!(
        took < Duration::from_millis(500),
        "recovered after {took:?}"
    );
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, simple("OK"));
    drop(redis);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstream_on_a_dedicated_connection_errors_and_closes() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    // WATCH on an upstream key gives the client its own upstream connection.
    assert_eq!(c.cmd(&["WATCH", "x"]).await, simple("OK"));
    redis.hang();
    let start = Instant::now();
    c.send(&["INCR", "x"]).await;
    let reply = c.reply().await;
    assert!(is_error(&reply, "UPSTREAM no reply"), "{reply:?}");
    assert!(start.elapsed() < Duration::from_millis(800));
    assert!(
        c.closed().await,
        "the watch is gone with the connection: the client must reconnect"
    );
    redis.resume();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_wakes_a_blocked_client_with_an_error() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    c.send(&["BLPOP", "never", "0"]).await;
    wait_until_blocked(&redis).await;
    redis.kill();
    let reply = c.reply().await;
    // Its own connection's end, or the monitor declaring the upstream unavailable (a refused
    // reconnect of a shared connection), whichever the session hears of first: both are
    // the error of a Redis that died, and both close the client.
    assert!(
        is_error(&reply, "UPSTREAM connection to upstream lost")
            || is_error(&reply, "UPSTREAM upstream unavailable"),
        "{reply:?}"
    );
    assert!(c.closed().await);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_closes_subscribers_so_they_resubscribe() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut sub = proxy.client().await;
    sub.cmd(&["SUBSCRIBE", "ch"]).await;
    redis.kill();
    assert!(sub.closed().await);
    redis.restart();
    wait_until_served(&proxy).await;
    let mut sub = proxy.client().await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "ch"]).await,
        Frame::Array(vec![bulk("subscribe"), bulk("ch"), int(1)])
    );
    proxy.shutdown().await;
}

/// A Redis that answers BUSY to other clients 50 ms into a script that runs on.
async fn redis_busy_after_50ms() -> RedisServer {
    let redis = RedisServer::start();
    let mut admin = Client::connect(redis.addr()).await;
    assert_eq!(
        admin.cmd(&["CONFIG", "SET", "lua-time-limit", "50"]).await,
        simple("OK")
    );
    redis
}

/// A script that never ends makes Redis answer BUSY, so the probe fails and the upstream is
/// unavailable; SCRIPT KILL, which is what ends that, still reaches Redis through keywarden
/// (on a connection other than the one running the script), and the upstream recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_kill_reaches_a_busy_upstream_in_every_health_state() {
    let redis = redis_busy_after_50ms().await;
    let mut s = settings(&redis.addr());
    s.health.probe_interval = Duration::from_millis(50);
    s.health.probe_timeout = Duration::from_millis(200);
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let mut looping = RawClient::connect(proxy.addr).await;
    looping.send(&[&["EVAL", "while true do end", "0"]]).await;
    wait_for_upstream_state(&proxy, "unavailable").await;
    let mut rescuer = RawClient::connect(proxy.addr).await;
    assert_eq!(
        show_bytes(&rescuer.cmd(&["SCRIPT", "KILL"]).await),
        show_bytes(b"+OK\r\n")
    );
    wait_for_upstream_state(&proxy, "healthy").await;
    assert_eq!(rescuer.cmd(&["PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// A proxy in front of `redis` whose health stays healthy for the length of a test (one
/// probe in 30 s): requests are forwarded, not refused, while Redis is busy.
async fn proxy_that_stays_healthy(redis: &RedisServer) -> Proxy {
    let mut s = settings(&redis.addr());
    s.health.probe_interval = Duration::from_secs(30);
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    proxy
}

/// Starts a script that never ends on `redis` (one started by [`redis_busy_after_50ms`]) and
/// waits until Redis answers BUSY: the script's connection, a direct connection to end it
/// with SCRIPT KILL, and Redis's BUSY reply.
async fn run_looping_script(redis: &RedisServer) -> (RawClient, RawClient, Vec<u8>) {
    let mut looping = RawClient::connect(redis.addr()).await;
    looping.send(&[&["EVAL", "while true do end", "0"]]).await;
    let mut direct = RawClient::connect(redis.addr()).await;
    let start = Instant::now();
    loop {
        let reply = direct.cmd(&["GET", "k"]).await;
        if reply.starts_with(b"-BUSY") {
            return (looping, direct, reply);
        }
        assert!(start.elapsed() < WAIT, "Redis never answered BUSY");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that needs a connection of its own while Redis is busy with a script is told
/// Redis's own BUSY error, as a client connected to Redis would be, not that the proxy's
/// connection setup failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_upstream_answers_a_new_dedicated_connection_in_its_own_words() {
    let redis = redis_busy_after_50ms().await;
    let proxy = proxy_that_stays_healthy(&redis).await;
    let (mut looping, mut direct, busy) = run_looping_script(&redis).await;
    let mut c = RawClient::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    // GET in database 1 needs a connection of the client's own, set up with SELECT 1.
    assert_eq!(show_bytes(&c.cmd(&["GET", "k"]).await), show_bytes(&busy));
    assert_eq!(direct.cmd(&["SCRIPT", "KILL"]).await, b"+OK\r\n");
    looping.frame().await;
    // Nothing was built upstream: the client stays, as on Redis, and is served once it is over.
    assert_eq!(c.cmd(&["GET", "k"]).await, b"$-1\r\n");
    proxy.shutdown().await;
}

/// EXEC of a transaction that needs a connection of the client's own (database 1), while
/// Redis is busy with a script, is answered as Redis answers EXEC then, EXECABORT because of
/// BUSY, with nothing applied; nothing was built upstream, so the client stays connected and
/// runs its next transaction once the script is over, as on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_while_busy_is_aborted_in_redis_words_and_the_client_stays() {
    let redis = redis_busy_after_50ms().await;
    let proxy = proxy_that_stays_healthy(&redis).await;
    let mut c = RawClient::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "xx"]).await, b"+QUEUED\r\n");
    let (mut looping, mut direct, busy) = run_looping_script(&redis).await;
    let mut abort = b"-EXECABORT Transaction discarded because of: ".to_vec();
    abort.extend_from_slice(&busy[1..]);
    assert_eq!(show_bytes(&c.cmd(&["EXEC"]).await), show_bytes(&abort));
    assert_eq!(direct.cmd(&["SCRIPT", "KILL"]).await, b"+OK\r\n");
    looping.frame().await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(
        c.cmd(&["GET", "xx"]).await,
        b"$-1\r\n",
        "nothing was applied"
    );
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "xx"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n:1\r\n");
    proxy.shutdown().await;
}

/// SUBSCRIBE that opens a client's own connection (database 1) while Redis is busy: the
/// setup is refused, and since a subscribed connection tracks no reply owed, the client is
/// closed as on any lost connection (its library reconnects), never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_while_busy_closes_the_client_instead_of_hanging() {
    let redis = redis_busy_after_50ms().await;
    let proxy = proxy_that_stays_healthy(&redis).await;
    let mut c = RawClient::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    let (_looping, mut direct, _) = run_looping_script(&redis).await;
    c.send(&[&["SUBSCRIBE", "news"]]).await;
    let _ = c.bytes_until_closed().await;
    assert_eq!(direct.cmd(&["SCRIPT", "KILL"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

/// A script that busy-waits `ms` milliseconds on the upstream's clock: Redis answers no one
/// meanwhile (under `lua-time-limit`, 5 s).
fn script_running_ms(ms: u64) -> String {
    format!(
        "local s = redis.call('TIME') \
         while true do \
           local n = redis.call('TIME') \
           if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) >= {ms} * 1000 then return 1 end \
         end"
    )
}

/// INFO's upstream state, with how long it has held.
async fn upstream_state(proxy: &Proxy) -> (String, Duration) {
    let mut c = RawClient::connect(proxy.addr).await;
    let info = String::from_utf8_lossy(&c.cmd(&["INFO", "keywarden"]).await).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .trim()
            .to_owned()
    };
    let since = Duration::from_millis(field("upstream_state_since_ms").parse().unwrap());
    (field("upstream_state"), since)
}

/// When the upstream became healthy, as INFO says; it must be healthy now.
async fn healthy_since(proxy: &Proxy) -> Instant {
    let (state, held) = upstream_state(proxy).await;
    assert_eq!(state, "healthy");
    Instant::now() - held
}

/// Asserts the upstream is still in the healthy state that began at `since`: no outage was
/// declared in between (INFO's milliseconds are truncated, so instants within 50 ms agree).
async fn assert_still_healthy(proxy: &Proxy, since: Instant) {
    let now = healthy_since(proxy).await;
    let moved = now.max(since) - now.min(since);
    assert!(
        moved < Duration::from_millis(50),
        "the upstream changed state meanwhile (healthy again {moved:?} after it first was)"
    );
}

/// A script that runs longer than the command timeout keeps Redis from answering anyone, by
/// the client's choice: the other clients wait for it as they would on Redis, none is told the
/// upstream timed out, and the upstream is not declared unavailable (the probe is the judge,
/// and the script ends before `failure_threshold` probes fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_script_fails_no_other_client_and_fakes_no_outage() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await; // command timeout 500 ms
    wait_until_served(&proxy).await;
    let healthy = healthy_since(&proxy).await;
    let mut slow = RawClient::connect(proxy.addr).await;
    let script = script_running_ms(1200);
    slow.send(&[&["EVAL", &script, "0"]]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut others = Vec::new();
    for i in 0..4 {
        let mut c = RawClient::connect(proxy.addr).await;
        let key = format!("k{i}");
        c.send(&[&["SET", &key, "v"], &["GET", &key], &["PING"]])
            .await;
        others.push(c);
    }
    for c in others.iter_mut() {
        assert_eq!(show_bytes(&c.frame().await), show_bytes(b"+OK\r\n"));
        assert_eq!(show_bytes(&c.frame().await), show_bytes(b"$1\r\nv\r\n"));
        assert_eq!(show_bytes(&c.frame().await), show_bytes(b"+PONG\r\n"));
    }
    assert_eq!(show_bytes(&slow.frame().await), show_bytes(b":1\r\n"));
    assert_still_healthy(&proxy, healthy).await;
    proxy.shutdown().await;
}

/// CLIENT PAUSE holds other clients' writes for its timeout: a write sent meanwhile waits for
/// the pause to end, as it would on Redis, instead of timing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pause_longer_than_the_command_timeout_fails_no_write() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await; // command timeout 500 ms
    wait_until_served(&proxy).await;
    let start = Instant::now();
    let mut pauser = RawClient::connect(proxy.addr).await;
    assert_eq!(
        pauser.cmd(&["CLIENT", "PAUSE", "1200", "WRITE"]).await,
        b"+OK\r\n"
    );
    let mut writer = RawClient::connect(proxy.addr).await;
    assert_eq!(
        show_bytes(&writer.cmd(&["SET", "paused", "1"]).await),
        show_bytes(b"+OK\r\n")
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1100),
        "the write was held"
    );
    let (state, _) = upstream_state(&proxy).await;
    assert_eq!(state, "healthy");
    proxy.shutdown().await;
}

/// A hold keeps the command timeout from running, not the probe: a script that outlasts
/// `failure_threshold` probes makes the upstream unavailable, and the requests waiting behind
/// it are failed then rather than left waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_by_a_script_fail_once_the_probe_declares_the_upstream_unavailable() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.health.probe_interval = Duration::from_millis(100);
    s.health.probe_timeout = Duration::from_millis(100);
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let mut slow = RawClient::connect(proxy.addr).await;
    let script = script_running_ms(4000);
    slow.send(&[&["EVAL", &script, "0"]]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let mut waiting = RawClient::connect(proxy.addr).await;
    waiting.send(&[&["GET", "k"]]).await;
    let reply = waiting.frame().await;
    let took = start.elapsed();
    // `upstream unavailable` when the declaration finds the hold in flight, or the timeout
    // error when it finds the GET waited that long already; either way long before the
    // script ends.
    assert!(
        reply == b"-UPSTREAM upstream unavailable\r\n"
            || reply == b"-UPSTREAM no reply from upstream within 500ms\r\n",
        "{}",
        show_bytes(&reply)
    );
    assert!(took < Duration::from_millis(2500), "failed after {took:?}");
    // The script's own client is told too (its reply would come from a connection the proxy
    // dropped), and the upstream serves again once the script is over.
    assert!(slow.frame().await.starts_with(b"-UPSTREAM"));
    wait_until_served(&proxy).await;
    proxy.shutdown().await;
}

/// A write that takes the upstream longer than the command timeout to read is progress, not
/// a hang: the bytes Redis takes count, as reply bytes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_slower_than_the_command_timeout_is_not_timed_out() {
    const LEN: usize = 256 * 1024 * 1024;
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    // Far less than the write takes (about 0.7 s here), far more than a stall between two
    // reads of a busy machine.
    s.upstream.command_timeout = Duration::from_millis(150);
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let mut c = Client::connect(proxy.addr).await;
    let mut request = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${LEN}\r\n").into_bytes();
    request.resize(request.len() + LEN, b'v');
    request.extend_from_slice(b"\r\n");
    c.send_raw(&request).await;
    drop(request);
    assert_eq!(c.reply().await, simple("OK"));
    assert_eq!(c.cmd(&["STRLEN", "big"]).await, int(LEN as i64));
    proxy.shutdown().await;
}

/// A slow command keywarden does not know as slow (here a SORT of a long list) outlasts the
/// command timeout on a shared connection: its own client is answered with the timeout, the
/// other client's write queued behind it on the same connection is applied and answered when
/// Redis gets to it, and the upstream, which answers the probe, is not declared unavailable
/// (the timeout is a suspicion the probe judges, not a counted failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_unknown_command_fails_only_its_own_client_and_fakes_no_outage() {
    let redis = RedisServer::start();
    let mut direct = Client::connect(redis.addr()).await;
    // A list long enough that sorting it takes several command timeouts.
    let mut len = 250_000;
    let took = loop {
        let fill = "for i = 1, tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], i) end";
        direct.cmd(&["DEL", "big"]).await;
        direct
            .cmd(&["EVAL", fill, "1", "big", &len.to_string()])
            .await;
        let start = Instant::now();
        assert_eq!(direct.cmd(&["SORT", "big", "STORE", "dst"]).await, int(len));
        let took = start.elapsed();
        if took >= Duration::from_millis(400) || len >= 8_000_000 {
            break took;
        }
        len *= 2;
    };
    assert!(
        took >= Duration::from_millis(400),
        "SORT took only {took:?}"
    );
    let mut s = settings(&redis.addr());
    s.upstream.connections = 1; // the slow command and the write share a connection
    s.upstream.command_timeout = Duration::from_millis(100);
    // Long enough for a probe to wait out the SORT: the upstream answers, only late.
    s.health.probe_timeout = took * 4;
    s.health.failure_threshold = 1;
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let healthy = healthy_since(&proxy).await;
    let start = Instant::now();
    let mut slow = RawClient::connect(proxy.addr).await;
    slow.send(&[&["SORT", "big", "STORE", "dst"]]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut other = RawClient::connect(proxy.addr).await;
    other.send(&[&["SET", "other", "1"], &["INCR", "n"]]).await;
    assert_eq!(
        show_bytes(&slow.frame().await),
        show_bytes(b"-UPSTREAM no reply from upstream within 100ms\r\n")
    );
    assert_eq!(show_bytes(&other.frame().await), show_bytes(b"+OK\r\n"));
    assert_eq!(show_bytes(&other.frame().await), show_bytes(b":1\r\n"));
    assert!(
        start.elapsed() >= took / 2,
        "answered before the SORT ended"
    );
    // The SORT's late reply was dropped, not handed to anyone: the connection pairs as before.
    assert_eq!(other.cmd(&["GET", "other"]).await, b"$1\r\n1\r\n");
    assert_eq!(slow.cmd(&["ECHO", "next"]).await, b"$4\r\nnext\r\n");
    assert_still_healthy(&proxy, healthy).await;
    proxy.shutdown().await;
}

/// Redis closes a shared connection under other clients' requests when one client's reply
/// outgrows the operator's `client-output-buffer-limit`. The requests on that connection fail
/// (Redis closed it), but a closed connection is a suspicion for the probe to judge, and
/// Redis answers the probe: no outage is declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_redis_closes_for_one_client_fakes_no_outage() {
    let redis = RedisServer::start_with(&["--client-output-buffer-limit", "normal 256kb 0 0"]);
    let mut direct = Client::connect(redis.addr()).await;
    let big = "x".repeat(1024 * 1024);
    assert_eq!(direct.cmd(&["SET", "big", &big]).await, simple("OK"));
    let mut s = settings(&redis.addr());
    s.health.failure_threshold = 1;
    let proxy = Proxy::start(s).await;
    wait_until_served(&proxy).await;
    let healthy = healthy_since(&proxy).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let (addr, stop) = (proxy.addr, stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            let key = format!("load{i}");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.send(&[&["INCR", &key], &["INCR", &key], &["INCR", &key]])
                    .await;
                for _ in 0..3 {
                    let reply = c.frame().await;
                    assert!(
                        reply.starts_with(b":") || reply.starts_with(b"-UPSTREAM"),
                        "{}",
                        show_bytes(&reply)
                    );
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut greedy = RawClient::connect(proxy.addr).await;
    for _ in 0..3 {
        let reply = greedy.cmd(&["GET", "big"]).await;
        assert_eq!(
            show_bytes(&reply),
            show_bytes(b"-UPSTREAM connection to upstream lost before the reply\r\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_still_healthy(&proxy, healthy).await;
    proxy.shutdown().await;
}
