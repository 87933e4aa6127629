//! Clients that depend on connection state move to a dedicated upstream connection and behave
//! exactly as against Redis: transactions, WATCH, SELECT, blocking pops, Pub/Sub.

mod support;

use std::time::{Duration, Instant};

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

/// SELECT is answered by the proxy with Redis's checks and texts, whatever the upstream says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_errors_match_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let mut direct = Client::connect(redis.addr()).await;
    let cases: &[&[&str]] = &[
        &["SELECT"],
        &["SELECT", "1", "2"],
        &["SELECT", "16"],
        &["SELECT", "-1"],
        &["SELECT", "abc"],
        &["SELECT", "99999999999999999999"],
        &["SELECT", " 1"],
        &["select", "15"],
        &["SELECT", "0"],
    ];
    for args in cases {
        assert_eq!(c.cmd(args).await, direct.cmd(args).await, "{args:?}");
    }
    proxy.shutdown().await;
}

/// After SELECT, a client on its own upstream connection keeps getting the proxy's replies
/// (local keyspace, refusals) in order with the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_stay_in_order_on_a_dedicated_connection() {
    use keywarden::policy::keyspace::Mode;
    let redis = RedisServer::start();
    let mut settings = settings(&redis.addr());
    settings.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(settings).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["SELECT", "2"]).await, simple("OK"));
    let mut wire = Vec::new();
    for i in 0..200 {
        let n = i.to_string();
        wire.extend(encode(&[b"SET", b"up", n.as_bytes()]));
        wire.extend(encode(&[b"SET", b"tmp:x", n.as_bytes()]));
        wire.extend(encode(&[b"GET", b"up"]));
        wire.extend(encode(&[b"ZADD", b"tmp:z", b"1", b"m"]));
        wire.extend(encode(&[b"GET", b"tmp:x"]));
    }
    c.send_raw(&wire).await;
    for i in 0..200 {
        let n = i.to_string();
        assert_eq!(c.reply().await, simple("OK"), "{i}");
        assert_eq!(c.reply().await, simple("OK"), "{i}");
        assert_eq!(c.reply().await, bulk(&n), "{i}");
        let refused = c.reply().await;
        assert!(is_error(&refused, "UNSUPPORTED 'zadd'"), "{refused:?}");
        assert_eq!(c.reply().await, bulk(&n), "{i}");
    }
    // Upstream keys went to database 2; local ones too, in the local store.
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["GET", "up"]).await, Frame::Null);
    direct.cmd(&["SELECT", "2"]).await;
    assert_eq!(direct.cmd(&["GET", "up"]).await, bulk("199"));
    assert_eq!(direct.cmd(&["EXISTS", "tmp:x"]).await, int(0));
    assert_eq!(c.cmd(&["SELECT", "0"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "tmp:x"]).await, Frame::Null);
    assert_eq!(c.cmd(&["GET", "up"]).await, Frame::Null);
    proxy.shutdown().await;
}

/// CLIENT LIST shows `flags=b` for a client blocked in a blocking command (on its own upstream
/// connection) and `flags=N` otherwise, as Redis does; tools and Redis's own test suite wait
/// for blocked clients this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_flags_a_blocked_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut blocked = RawClient::connect(proxy.addr).await;
    let id = String::from_utf8(blocked.cmd(&["CLIENT", "ID"]).await).unwrap();
    let id = id.trim_start_matches(':').trim_end().to_owned();
    let mut other = RawClient::connect(proxy.addr).await;
    let flags = |list: Vec<u8>| {
        let list = String::from_utf8(list).unwrap();
        list.split_whitespace()
            .find_map(|f| f.strip_prefix("flags=").map(str::to_owned))
            .unwrap_or_else(|| panic!("no flags in {list}"))
    };
    assert_eq!(flags(other.cmd(&["CLIENT", "LIST", "ID", &id]).await), "N");
    blocked.send(&[&["BLPOP", "q", "0"]]).await;
    wait_until_blocked(&redis).await;
    let start = Instant::now();
    loop {
        let now = flags(other.cmd(&["CLIENT", "LIST", "ID", &id]).await);
        if now == "b" {
            break;
        }
        assert!(start.elapsed() < WAIT, "flags={now} while blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(other.cmd(&["RPUSH", "q", "x"]).await, b":1\r\n");
    assert_eq!(blocked.frame().await, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert_eq!(flags(other.cmd(&["CLIENT", "LIST", "ID", &id]).await), "N");
    proxy.shutdown().await;
}

/// CLIENT LIST and CLIENT KILL act on keywarden's own clients, never on its upstream
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_and_kill_act_on_the_proxys_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    let mut c = proxy.client().await;
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]).await, simple("OK"));
    assert_eq!(b.cmd(&["SELECT", "4"]).await, simple("OK"));
    let id = |f: Frame| match f {
        Frame::Integer(n) => n,
        other => panic!("{other:?}"),
    };
    let (ida, idb, idc) = (
        id(a.cmd(&["CLIENT", "ID"]).await),
        id(b.cmd(&["CLIENT", "ID"]).await),
        id(c.cmd(&["CLIENT", "ID"]).await),
    );
    let list = match c.cmd(&["CLIENT", "LIST"]).await {
        Frame::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with(&format!("id={ida} addr=127.0.0.1:")),
        "{list}"
    );
    assert!(lines[0].contains(" name=alpha "), "{list}");
    assert!(
        lines[1].contains(&format!("id={idb} ")) && lines[1].contains(" db=4 "),
        "{list}"
    );
    let only_b = c.cmd(&["CLIENT", "LIST", "ID", &idb.to_string()]).await;
    match only_b {
        Frame::BulkString(b) => {
            let text = String::from_utf8(b).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.starts_with(&format!("id={idb} ")), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // New form: how many were killed; the killed client is closed.
    assert_eq!(
        c.cmd(&["CLIENT", "KILL", "ID", &ida.to_string()]).await,
        int(1)
    );
    assert!(a.closed().await, "killed client is closed");
    assert_eq!(c.cmd(&["CLIENT", "KILL", "ID", "999999"]).await, int(0));
    // SKIPME yes (the default) spares the caller.
    assert_eq!(
        c.cmd(&["CLIENT", "KILL", "ID", &idc.to_string()]).await,
        int(0)
    );
    // Old form by address: +OK, or an error when nobody has it.
    let addr = lines[1]
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .unwrap()
        .to_owned();
    assert_eq!(c.cmd(&["CLIENT", "KILL", &addr]).await, simple("OK"));
    assert!(b.closed().await, "client killed by address is closed");
    let none = c.cmd(&["CLIENT", "KILL", "127.0.0.1:1"]).await;
    assert!(is_error(&none, "ERR No such client"), "{none:?}");
    // The upstream connections were never touched: the survivor still works.
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v"));
    proxy.shutdown().await;
}

/// COMMAND, MONITOR and the CLIENT switches that stay with Redis work through the proxy as
/// against Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_monitor_and_client_switches_go_to_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let mut direct = Client::connect(redis.addr()).await;
    for args in [
        &["COMMAND", "COUNT"][..],
        &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"],
        &["COMMAND", "INFO", "get"],
        &["COMMAND", "GETKEYS", "GET"],
    ] {
        assert_eq!(c.cmd(args).await, direct.cmd(args).await, "{args:?}");
    }
    // Connection switches Redis keeps: on the client's own connection, answered by Redis.
    let mut d = proxy.client().await;
    assert_eq!(d.cmd(&["CLIENT", "NO-EVICT", "on"]).await, simple("OK"));
    assert_eq!(d.cmd(&["SET", "after", "1"]).await, simple("OK"));
    assert_eq!(d.cmd(&["GET", "after"]).await, bulk("1"));
    // MONITOR: the monitoring client sees another client's commands.
    let mut m = proxy.client().await;
    assert_eq!(m.cmd(&["MONITOR"]).await, simple("OK"));
    assert_eq!(
        c.cmd(&["SET", "watched-by-monitor", "x"]).await,
        simple("OK")
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match m.reply().await {
            Frame::SimpleString(line)
                if String::from_utf8_lossy(&line).contains("watched-by-monitor") =>
            {
                break
            }
            Frame::SimpleString(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "MONITOR saw nothing"
        );
    }
    proxy.shutdown().await;
}

/// Scripts are routed by the keys they declare: upstream keys run upstream, local ones are
/// refused (the local store runs no scripts), and script management goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_routed_by_their_keys() {
    use keywarden::policy::keyspace::Mode;
    let redis = RedisServer::start();
    let mut settings = settings(&redis.addr());
    settings.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(settings).await;
    let mut c = proxy.client().await;
    let body = "return redis.call('INCR', KEYS[1])";
    let sha = match c.cmd(&["SCRIPT", "LOAD", body]).await {
        Frame::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(c.cmd(&["EVALSHA", &sha, "1", "up:n"]).await, int(1));
    assert_eq!(c.cmd(&["EVAL", body, "1", "up:n"]).await, int(2));
    assert_eq!(c.cmd(&["FCALL_RO", "nosuch", "0"]).await, {
        let mut direct = Client::connect(redis.addr()).await;
        direct.cmd(&["FCALL_RO", "nosuch", "0"]).await
    });
    let local = c.cmd(&["EVAL", body, "1", "tmp:n"]).await;
    assert!(is_error(&local, "UNSUPPORTED 'eval'"), "{local:?}");
    let mixed = c.cmd(&["EVAL", body, "2", "tmp:n", "up:n"]).await;
    assert!(is_error(&mixed, "KEYSPACE 'eval'"), "{mixed:?}");
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["GET", "up:n"]).await, bulk("2"));
    assert_eq!(direct.cmd(&["EXISTS", "tmp:n"]).await, int(0));
    proxy.shutdown().await;
}

/// Client ids are the proxy's own: commands that would hand one to Redis, where it names an
/// unrelated connection, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_never_reach_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    // A keywarden id that names no blocked client unblocks nothing (see pubsub_blocking.rs
    // for one that does); it never reaches Redis as is.
    assert_eq!(c.cmd(&["CLIENT", "UNBLOCK", "3"]).await, int(0));
    for args in [&["CLIENT", "TRACKING", "on", "REDIRECT", "3"][..]] {
        let reply = c.cmd(args).await;
        assert!(
            is_error(&reply, "UNSUPPORTED 'client|"),
            "{args:?}: {reply:?}"
        );
    }
    // Tracking without REDIRECT is Redis's, on the client's own connection.
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]).await, simple("OK"));
    proxy.shutdown().await;
}
