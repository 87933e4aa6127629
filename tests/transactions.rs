//! MULTI/EXEC/DISCARD/WATCH through keywarden: queued by the proxy, run upstream in one piece
//! or against the local store atomically, with Redis's replies and errors.

mod support;

use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
use support::*;

fn keyspaces(redis: &RedisServer) -> keywarden::config::Settings {
    let ks = |name: &str, pattern: &str, mode| Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(pattern.as_bytes())],
        mode,
    };
    let mut s = settings(&redis.addr());
    s.keyspaces = Keyspaces::new(
        vec![
            ks("cache", "cache:", Mode::Degraded),
            ks("scratch", "tmp:", Mode::LocalOnly),
        ],
        Mode::FailClosed,
    );
    s
}

/// Each sequence, sent to keywarden and to Redis, gets the same replies; `prefix` names the
/// keys, so one run goes upstream and the other to the local store.
async fn same_as_redis(c: &mut Client, direct: &mut Client, prefix: &str) {
    let k = |name: &str| format!("{prefix}{name}");
    let sequences: Vec<Vec<Vec<String>>> = vec![
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k("a"), "1".into()],
            vec!["INCR".into(), k("a")],
            vec!["GET".into(), k("a")],
            vec!["HSET".into(), k("a"), "f".into(), "v".into()],
            vec!["EXEC".into()],
        ],
        vec![vec!["MULTI".into()], vec!["EXEC".into()]],
        vec![vec!["EXEC".into()]],
        vec![vec!["DISCARD".into()]],
        vec![
            vec!["MULTI".into()],
            vec!["MULTI".into()],
            vec!["WATCH".into(), k("a")],
            vec!["SET".into(), k("b"), "2".into()],
            vec!["EXEC".into()],
        ],
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k("c"), "1".into()],
            vec!["NOSUCHCOMMAND".into(), k("c")],
            vec!["EXEC".into()],
            vec!["GET".into(), k("c")],
        ],
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k("d")],
            vec!["EXEC".into()],
            vec!["EXISTS".into(), k("d")],
        ],
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k("e"), "1".into()],
            vec!["DISCARD".into()],
            vec!["EXISTS".into(), k("e")],
        ],
        // Commands Redis flags no_multi are refused when queued, and EXEC aborts.
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k("f"), "1".into()],
            vec!["SAVE".into()],
            vec!["SHUTDOWN".into()],
            vec!["EXEC".into()],
            vec!["EXISTS".into(), k("f")],
        ],
        vec![
            vec!["WATCH".into(), k("w")],
            vec!["MULTI".into()],
            vec!["SET".into(), k("w"), "mine".into()],
            vec!["EXEC".into()],
            vec!["GET".into(), k("w")],
        ],
    ];
    for seq in sequences {
        for args in &seq {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ours = c.cmd(&args).await;
            let theirs = direct.cmd(&args).await;
            assert_eq!(ours, theirs, "{args:?} in {seq:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_upstream_and_local_answer_as_redis() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let proxy = Proxy::start(keyspaces(&redis)).await;
    let mut c = proxy.client().await;
    // Upstream keys are compared with another Redis, local ones with the same one.
    let mut direct = Client::connect(other.addr()).await;
    same_as_redis(&mut c, &mut direct, "up:").await;
    same_as_redis(&mut c, &mut direct, "tmp:").await;
    // The upstream transaction really ran upstream; the local one never did.
    let mut up = Client::connect(redis.addr()).await;
    assert_eq!(up.cmd(&["EXISTS", "up:a"]).await, int(1));
    assert_eq!(up.cmd(&["EXISTS", "tmp:a"]).await, int(0));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflicts_abort_exec_upstream_and_locally() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(keyspaces(&redis)).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    for key in ["up:w", "tmp:w"] {
        assert_eq!(a.cmd(&["SET", key, "0"]).await, simple("OK"));
        assert_eq!(a.cmd(&["WATCH", key]).await, simple("OK"));
        assert_eq!(b.cmd(&["SET", key, "theirs"]).await, simple("OK"));
        assert_eq!(a.cmd(&["MULTI"]).await, simple("OK"));
        assert_eq!(a.cmd(&["SET", key, "mine"]).await, simple("QUEUED"));
        assert_eq!(a.cmd(&["EXEC"]).await, Frame::Null, "{key}");
        assert_eq!(a.cmd(&["GET", key]).await, bulk("theirs"), "{key}");
        // Not touched: the transaction runs.
        assert_eq!(a.cmd(&["WATCH", key]).await, simple("OK"));
        assert_eq!(a.cmd(&["MULTI"]).await, simple("OK"));
        assert_eq!(a.cmd(&["INCR", "up:n"]).await, simple("QUEUED"));
        let exec = a.cmd(&["EXEC"]).await;
        // INCR up:n with a local watch cannot run in one place: refused, never half run.
        if key == "tmp:w" {
            assert!(is_error(&exec, "KEYSPACE"), "{exec:?}");
            continue;
        }
        assert_eq!(exec, Frame::Array(vec![int(1)]), "{key}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_in_one_place() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(keyspaces(&redis)).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["SET", "tmp:a", "1"]).await, simple("QUEUED"));
    let mixed = c.cmd(&["SET", "up:a", "1"]).await;
    assert!(is_error(&mixed, "KEYSPACE"), "{mixed:?}");
    let exec = c.cmd(&["EXEC"]).await;
    assert!(is_error(&exec, "EXECABORT"), "{exec:?}");
    assert_eq!(c.cmd(&["EXISTS", "tmp:a"]).await, int(0));
    // SELECT inside a local transaction switches the database for what follows.
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["SELECT", "4"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["SET", "tmp:s", "in4"]).await, simple("QUEUED"));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Frame::Array(vec![simple("OK"), simple("OK")])
    );
    assert_eq!(c.cmd(&["GET", "tmp:s"]).await, bulk("in4"));
    assert_eq!(c.cmd(&["SELECT", "0"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "tmp:s"]).await, Frame::Null);
    // Upstream in another database: the transaction lands there.
    assert_eq!(c.cmd(&["SELECT", "3"]).await, simple("OK"));
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["SET", "up:db", "3"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["EXEC"]).await, Frame::Array(vec![simple("OK")]));
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["EXISTS", "up:db"]).await, int(0));
    direct.cmd(&["SELECT", "3"]).await;
    assert_eq!(direct.cmd(&["GET", "up:db"]).await, bulk("3"));
    proxy.shutdown().await;
}

/// Upstream lost while a transaction is queued: EXEC fails, nothing runs anywhere; a degraded
/// keyspace's transaction runs locally, atomically, during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fails_when_the_upstream_is_lost_and_degraded_transactions_run_locally() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.jsonl");
    let mut settings = keyspaces(&redis);
    settings.events.file = Some(ev.clone());
    let proxy = Proxy::start(settings).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["INCR", "up:n"]).await, simple("QUEUED"));
    redis.kill();
    let exec = c.cmd(&["EXEC"]).await;
    assert!(
        is_error(&exec, "UPSTREAM") || is_error(&exec, "FAILCLOSED"),
        "{exec:?}"
    );
    // Degraded: once the proxy knows the upstream is gone, served from the local store.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
        c.cmd(&["INCR", "cache:n"]).await;
        c.cmd(&["INCR", "cache:n"]).await;
        match c.cmd(&["EXEC"]).await {
            Frame::Array(replies) => {
                assert_eq!(replies.len(), 2);
                assert!(
                    matches!(replies[1], Frame::Integer(n) if n >= 2),
                    "{replies:?}"
                );
                break;
            }
            other => assert!(is_error(&other, "UPSTREAM"), "{other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served locally"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // A fail-closed key in a transaction is refused at once while the upstream is away.
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    let refused = c.cmd(&["SET", "up:x", "1"]).await;
    assert!(is_error(&refused, "FAILCLOSED"), "{refused:?}");
    let exec = c.cmd(&["EXEC"]).await;
    assert!(is_error(&exec, "EXECABORT"), "{exec:?}");
    // The local transaction counts as two degraded replies and two discarded writes.
    redis.restart();
    let recovered = loop {
        let events = events_in(&ev);
        if let Some(r) = events.iter().find(|e| e["event"] == "BACKEND_RECOVERED") {
            break r.clone();
        }
        assert!(tokio::time::Instant::now() < deadline + WAIT, "{events:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(recovered["degraded_replies"], 2, "{recovered}");
    assert_eq!(recovered["discarded_writes"], 2, "{recovered}");
    proxy.shutdown().await;
}
