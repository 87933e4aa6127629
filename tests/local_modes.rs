//! `local_only` and `degraded` keyspaces through the proxy, against a real upstream that the
//! tests kill and restart, with the patterns applications build on Redis.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keywarden::config::Settings;
use keywarden::policy::keyspace::{Eviction, Keyspace, Keyspaces, Mode, Pattern, StoreShare};
use support::*;

fn keyspaces(redis: &RedisServer, events: &Path) -> Settings {
    let ks = |name: &str, pattern: &str, mode| Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(pattern.as_bytes())],
        mode,
    };
    let mut s = settings(&redis.addr());
    s.keyspaces = Keyspaces::new(
        vec![
            ks("limits", "rl:", Mode::FailClosed),
            ks("cache", "cache:*", Mode::Degraded),
            ks("scratch", "tmp:", Mode::LocalOnly),
        ],
        Mode::FailClosed,
    );
    s.events.file = Some(events.to_path_buf());
    s
}

fn event_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    (dir, path)
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    events_in(path)
}

async fn wait_for_events(path: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while events(path).len() < n {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", events(path));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_keys_never_reach_the_upstream() {
    let mut redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let proxy = Proxy::start(keyspaces(&redis, &ev)).await;
    let mut c = proxy.client().await;
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(
        c.cmd(&["SET", "tmp:a", "1", "EX", "100"]).await,
        simple("OK")
    );
    assert_eq!(c.cmd(&["INCR", "tmp:a"]).await, int(2));
    assert_eq!(c.cmd(&["TTL", "tmp:a"]).await, int(100));
    assert_eq!(direct.cmd(&["EXISTS", "tmp:a"]).await, int(0));
    // A command mixing local_only keys with upstream keys is refused in every state.
    let mixed = c.cmd(&["MGET", "tmp:a", "cache:b"]).await;
    assert!(
        is_error(&mixed, "KEYSPACE 'mget' mixes local_only keys"),
        "{mixed:?}"
    );
    // Not implemented locally: refused, never approximated.
    let zadd = c.cmd(&["ZADD", "tmp:z", "1", "m"]).await;
    assert!(is_error(&zadd, "UNSUPPORTED 'zadd'"), "{zadd:?}");
    // With the upstream gone, local_only is untouched.
    redis.kill();
    wait_for_events(&ev, 1).await;
    assert_eq!(c.cmd(&["GET", "tmp:a"]).await, bulk("2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_keyspace_is_served_locally_during_an_outage_then_discarded() {
    let mut redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let proxy = Proxy::start(keyspaces(&redis, &ev)).await;
    let mut c = proxy.client().await;
    assert_eq!(
        c.cmd(&["SET", "cache:page", "upstream"]).await,
        simple("OK")
    );

    redis.kill();
    wait_for_events(&ev, 1).await;
    assert_eq!(events(&ev)[0]["event"], "BACKEND_DEGRADED");
    // Served from the (cold) local store: an explicit, counted degradation.
    assert_eq!(c.cmd(&["GET", "cache:page"]).await, Frame::Null);
    assert_eq!(c.cmd(&["SET", "cache:page", "local"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "cache:page"]).await, bulk("local"));
    // Fail-closed keys in the same outage are refused, never served locally.
    let refused = c.cmd(&["INCR", "rl:1"]).await;
    assert!(
        is_error(&refused, "FAILCLOSED keyspace 'limits'"),
        "{refused:?}"
    );

    redis.restart();
    wait_for_events(&ev, 2).await;
    let recovered = &events(&ev)[1];
    assert_eq!(recovered["event"], "BACKEND_RECOVERED");
    assert_eq!(recovered["degraded_replies"], 3);
    assert_eq!(recovered["discarded_writes"], 1);
    assert_eq!(recovered["refused"], 1);
    // Healthy again: forwarded to the (restarted, empty) upstream; the local write is gone.
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["GET", "cache:page"]).await, Frame::Null);
    assert_eq!(c.cmd(&["SET", "cache:page", "again"]).await, simple("OK"));
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["GET", "cache:page"]).await, bulk("again"));
    proxy.shutdown().await;
}

/// What a degraded keyspace wrote locally in one outage is never served in a later one: once
/// requests are forwarded again (the upstream recovering), writes may reach the upstream, so
/// a relapse before the upstream is declared healthy must not bring the old local value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relapse_never_serves_the_writes_of_an_earlier_outage() {
    let mut redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let mut s = keyspaces(&redis, &ev);
    // Stay recovering: the relapse comes before the outage would close.
    s.health.success_threshold = 1_000_000;
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    redis.kill();
    wait_for_events(&ev, 1).await;
    assert_eq!(
        c.cmd(&["SET", "cache:page", "outage-1"]).await,
        simple("OK")
    );
    assert_eq!(c.cmd(&["GET", "cache:page"]).await, bulk("outage-1"));
    redis.restart();
    // Recovering: forwarded again (seen on another key), then this write reaches the upstream.
    let start = Instant::now();
    let mut direct = Client::connect(redis.addr()).await;
    loop {
        c.cmd(&["SET", "cache:probe", "x"]).await;
        if direct.cmd(&["GET", "cache:probe"]).await == bulk("x") {
            break;
        }
        assert!(start.elapsed() < WAIT, "never forwarded again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        c.cmd(&["SET", "cache:page", "upstream"]).await,
        simple("OK")
    );
    assert_eq!(direct.cmd(&["GET", "cache:page"]).await, bulk("upstream"));
    redis.kill();
    let start = Instant::now();
    loop {
        // Served locally again once the relapse is seen; never the first outage's value.
        let got = c.cmd(&["GET", "cache:page"]).await;
        assert_ne!(got, bulk("outage-1"), "the first outage's write came back");
        if got == Frame::Null {
            break;
        }
        assert!(start.elapsed() < WAIT, "never served locally: {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.shutdown().await;
}

/// Idempotency keys: SET key value NX PX ttl, first writer wins across 50 concurrent clients,
/// in the local store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_first_writer_wins_across_fifty_clients() {
    let redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let proxy = Proxy::start(keyspaces(&redis, &ev)).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            c.cmd(&[
                "SET",
                "tmp:idem:42",
                &format!("writer-{i}"),
                "NX",
                "PX",
                "10000",
            ])
            .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            f if f == simple("OK") => winners += 1,
            Frame::Null => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    proxy.shutdown().await;
}

/// Fixed-window rate limit: INCR, EXPIRE on the first hit, TTL for retry-after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_rate_limit_in_the_local_store() {
    let redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let proxy = Proxy::start(keyspaces(&redis, &ev)).await;
    let mut c = proxy.client().await;
    for hit in 1..=5 {
        assert_eq!(c.cmd(&["INCR", "tmp:rl:user"]).await, int(hit));
        if hit == 1 {
            assert_eq!(c.cmd(&["EXPIRE", "tmp:rl:user", "60"]).await, int(1));
        }
    }
    assert_eq!(c.cmd(&["TTL", "tmp:rl:user"]).await, int(60));
    assert_eq!(c.cmd(&["EXPIRE", "tmp:rl:user", "60", "NX"]).await, int(0));
    // Stampede lock: SET lock NX PX, compute, SET value, DEL lock.
    assert_eq!(
        c.cmd(&["SET", "tmp:lock", "me", "NX", "PX", "5000"]).await,
        simple("OK")
    );
    assert_eq!(
        c.cmd(&["SET", "tmp:lock", "other", "NX", "PX", "5000"])
            .await,
        Frame::Null
    );
    assert_eq!(
        c.cmd(&["SET", "tmp:value", "v", "PX", "5000"]).await,
        simple("OK")
    );
    assert_eq!(c.cmd(&["DEL", "tmp:lock"]).await, int(1));
    proxy.shutdown().await;
}

/// The replay found in review: one tenant flooding its own keyspace once evicted another
/// keyspace's nonce, after which the same nonce was accepted again. Each keyspace now has its
/// own part of the store; a `noeviction` one refuses with -OOM instead of forgetting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_in_one_keyspace_never_makes_another_forget_a_nonce() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    let ks = |name: &str, pattern: &str| Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(pattern.as_bytes())],
        mode: Mode::LocalOnly,
    };
    s.keyspaces = Keyspaces::new(
        vec![ks("nonces", "nonce:"), ks("scratch", "tmp:")],
        Mode::FailClosed,
    );
    s.local_store.max_bytes = 1 << 20;
    s.local_store.shares = vec![StoreShare {
        name: "nonces".into(),
        // Room for three nonces of this size (key, value, 256 bytes of overhead each).
        max_bytes: Some(3 * (7 + 1 + 256) + 100),
        eviction: Eviction::NoEviction,
    }];
    let proxy = Proxy::start(s).await;
    let mut tenant = proxy.client().await;
    let mut flood = RawClient::connect(proxy.addr).await;
    let nx = |n: &'static str| ["SET", n, "1", "NX", "EX", "300"];
    assert_eq!(tenant.cmd(&nx("nonce:a")).await, simple("OK"));
    // 5,000 writes of 1 KB in the scratch keyspace: ten times the whole store's budget.
    let value = "x".repeat(1000);
    for batch in 0..50 {
        let keys: Vec<String> = (0..100).map(|i| format!("tmp:{batch}:{i}")).collect();
        let cmds: Vec<Vec<&str>> = keys
            .iter()
            .map(|k| vec!["SET", k.as_str(), value.as_str()])
            .collect();
        let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
        for reply in flood.run(&cmds).await {
            assert_eq!(reply, b"+OK\r\n");
        }
    }
    // The nonce is remembered: its replay is refused.
    assert_eq!(tenant.cmd(&nx("nonce:a")).await, Frame::Null);
    assert_eq!(tenant.cmd(&nx("nonce:b")).await, simple("OK"));
    assert_eq!(tenant.cmd(&nx("nonce:c")).await, simple("OK"));
    // Full: a new nonce is refused with Redis's noeviction error, not accepted by forgetting.
    let full = tenant.cmd(&nx("nonce:d")).await;
    assert!(is_error(&full, "OOM command not allowed"), "{full:?}");
    assert_eq!(tenant.cmd(&nx("nonce:a")).await, Frame::Null);
    // INFO shows each keyspace's part.
    let Frame::BulkString(info) = tenant.cmd(&["INFO", "keywarden"]).await else {
        panic!("INFO")
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    assert!(
        info.contains("keyspace=nonces,keys=3,used_bytes=792,max_bytes=892,eviction=noeviction,evictions=0,oom_refusals=1"),
        "{info}"
    );
    assert!(info.contains("keyspace=scratch,keys="), "{info}");
    proxy.shutdown().await;
}

/// FLUSHDB during an outage is routed by the degraded default keyspace: it empties what the
/// degraded keyspaces hold locally, and never the local_only keys a FLUSHDB while healthy
/// (forwarded upstream) would not touch either. KEYS, SCAN, RANDOMKEY and DBSIZE alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_commands_in_an_outage_leave_local_only_keyspaces_alone() {
    let mut redis = RedisServer::start();
    let (_dir, ev) = event_file();
    let mut s = keyspaces(&redis, &ev);
    s.keyspaces = scratch_keyspace(Mode::Degraded);
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["SET", "tmp:kept", "1"]).await, simple("OK"));
    redis.kill();
    wait_for_events(&ev, 1).await;
    assert_eq!(c.cmd(&["SET", "plain", "1"]).await, simple("OK"));
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(1));
    assert_eq!(
        c.cmd(&["KEYS", "*"]).await,
        Frame::Array(vec![bulk("plain")])
    );
    assert_eq!(c.cmd(&["RANDOMKEY"]).await, bulk("plain"));
    let scan = c.cmd(&["SCAN", "0"]).await;
    assert_eq!(
        scan,
        Frame::Array(vec![bulk("0"), Frame::Array(vec![bulk("plain")])])
    );
    assert_eq!(c.cmd(&["FLUSHDB"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "tmp:kept"]).await, bulk("1"));
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(0));
    proxy.shutdown().await;
}
