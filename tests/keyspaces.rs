//! Keyspace policies against a real upstream that the tests kill, hang and restart: fail-closed
//! keyspaces refuse at once and never answer from local state, each outage emits exactly one
//! BACKEND_DEGRADED and one BACKEND_RECOVERED, and error replies never count as outages.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keywarden::config::Settings;
use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
use support::*;
use tokio::time::Instant;

fn with_keyspaces(redis: &RedisServer, events: &Path) -> Settings {
    let mut s = settings(&redis.addr());
    s.keyspaces = Keyspaces::new(
        vec![Keyspace {
            name: "rate-limits".into(),
            patterns: vec![Pattern::parse(b"rl:")],
            mode: Mode::FailClosed,
        }],
        Mode::FailClosed,
    );
    s.events.file = Some(events.to_path_buf());
    s
}

fn kinds(path: &Path) -> Vec<String> {
    events_in(path)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the event file until it holds `n` events.
async fn wait_for_events(path: &Path, n: usize) -> Duration {
    let start = Instant::now();
    while kinds(path).len() < n {
        assert!(
            start.elapsed() < WAIT,
            "expected {n} events, have {:?}",
            kinds(path)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

fn event_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    (dir, path)
}

const REFUSED: &str =
    "FAILCLOSED keyspace 'rate-limits' fails closed and the upstream is unavailable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_keyspace_refuses_at_once_and_recovers() {
    let mut redis = RedisServer::start();
    let (_dir, events) = event_file();
    let proxy = Proxy::start(with_keyspaces(&redis, &events)).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["INCR", "rl:user:1"]).await, int(1));

    redis.kill();
    let detected = wait_for_events(&events, 1).await;
    assert!(
        detected < Duration::from_millis(500),
        "DEGRADED after {detected:?}"
    );
    let start = Instant::now();
    for _ in 0..5 {
        // Never answered from local state: an empty counter would say 1.
        assert_eq!(
            c.cmd(&["INCR", "rl:user:1"]).await,
            Frame::Error(REFUSED.into())
        );
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "refused at once"
    );

    redis.restart();
    wait_for_events(&events, 2).await;
    let mut c = proxy.client().await;
    // The counter kept upstream is gone with the killed server (no persistence), and the
    // proxy invented nothing meanwhile.
    assert_eq!(c.cmd(&["INCR", "rl:user:1"]).await, int(1));

    let all = events_in(&events);
    assert_eq!(all[0]["event"], "BACKEND_DEGRADED");
    assert_eq!(all[0]["upstream"], redis.addr());
    assert_eq!(all[0]["keyspaces"]["fail_closed"][0], "rate-limits");
    assert_eq!(all[1]["event"], "BACKEND_RECOVERED");
    assert_eq!(all[1]["refused"], 5);
    assert!(all[1]["outage_ms"].as_u64().unwrap() > 0);
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("user:1"), "no key ever appears in an event");
    proxy.shutdown().await;
}

/// Clients pipelining while the upstream is killed and restarted 20 times: exactly one
/// DEGRADED and one RECOVERED per outage, every request answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_outages_under_load_emit_one_event_pair_each() {
    let mut redis = RedisServer::start();
    let (_dir, events) = event_file();
    let proxy = Proxy::start(with_keyspaces(&redis, &events)).await;
    // Serving means the first health probe is done: outages start after it.
    assert_eq!(proxy.client().await.cmd(&["PING"]).await, simple("PONG"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for id in 0..4 {
        let addr = proxy.addr;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut batch = Vec::new();
                for j in 0..20 {
                    batch.extend(encode(&[b"ECHO", format!("{id}:{}", n + j).as_bytes()]));
                }
                c.send_raw(&batch).await;
                for j in 0..20 {
                    match c.reply().await {
                        Frame::BulkString(b) => {
                            assert_eq!(b, format!("{id}:{}", n + j).into_bytes())
                        }
                        Frame::Error(e) => assert!(
                            e.starts_with("UPSTREAM ") || e.starts_with("FAILCLOSED "),
                            "{e}"
                        ),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                n += 20;
            }
        }));
    }
    for outage in 0..20 {
        redis.kill();
        wait_for_events(&events, 2 * outage + 1).await;
        redis.restart();
        wait_for_events(&events, 2 * outage + 2).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let kinds = kinds(&events);
    assert_eq!(kinds.len(), 40, "{kinds:?}");
    for pair in kinds.chunks(2) {
        assert_eq!(pair, ["BACKEND_DEGRADED", "BACKEND_RECOVERED"], "{kinds:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_are_answers_not_outages() {
    let redis = RedisServer::start();
    let (_dir, events) = event_file();
    let proxy = Proxy::start(with_keyspaces(&redis, &events)).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["SET", "s", "x"]).await, simple("OK"));
    for _ in 0..200 {
        assert!(is_error(&c.cmd(&["LPUSH", "s", "y"]).await, "WRONGTYPE"));
        assert!(is_error(
            &c.cmd(&["EVALSHA", "0000", "0"]).await,
            "NOSCRIPT"
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(kinds(&events).is_empty(), "{:?}", kinds(&events));
    assert_eq!(c.cmd(&["GET", "s"]).await, bulk("x"));
    proxy.shutdown().await;
}

/// A timed-out request is a suspicion; the probe that it starts at once confirms it, and
/// then it counts: the outage opens after the command timeout plus the probe timeout, with
/// the data path's cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstream_is_detected_after_the_command_and_probe_timeouts() {
    let redis = RedisServer::start();
    let (_dir, events) = event_file();
    let mut s = with_keyspaces(&redis, &events);
    // One timed-out request is enough here (the default waits for 3 results).
    s.health.failure_threshold = 1;
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    redis.hang();
    let start = Instant::now();
    let reply = c.cmd(&["GET", "rl:x"]).await;
    assert!(is_error(&reply, "UPSTREAM no reply"), "{reply:?}");
    wait_for_events(&events, 1).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1300),
        "detected after {took:?} (command timeout 500ms, probe timeout 500ms)"
    );
    assert_eq!(kinds(&events), ["BACKEND_DEGRADED"]);
    assert_eq!(events_in(&events)[0]["cause"], "timeout");
    assert_eq!(c.cmd(&["GET", "rl:x"]).await, Frame::Error(REFUSED.into()));
    redis.resume();
    wait_for_events(&events, 2).await;
    assert_eq!(c.cmd(&["GET", "rl:x"]).await, Frame::Null);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_startup_is_an_event() {
    let port = free_port();
    let (_dir, events) = event_file();
    let mut s = settings(&format!("127.0.0.1:{port}"));
    s.events.file = Some(events.clone());
    let proxy = Proxy::start(s).await;
    wait_for_events(&events, 1).await;
    assert_eq!(kinds(&events), ["BACKEND_UNAVAILABLE_AT_STARTUP"]);
    let redis = RedisServer::start_on(port);
    wait_for_events(&events, 2).await;
    assert_eq!(kinds(&events)[1], "BACKEND_RECOVERED");
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    drop(redis);
    proxy.shutdown().await;
}
