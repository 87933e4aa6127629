//! `local_only` and `degraded` keyspaces through the proxy, against a real upstream that the
//! tests kill and restart, with the patterns applications build on Redis.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keywarden::config::Settings;
use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
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
