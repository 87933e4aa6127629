//! The health monitor against real redis-server processes that the tests kill, hang (SIGSTOP)
//! and restart, and its probe against fake upstreams that misbehave in ways Redis does not on
//! demand. Timing bounds are the documented ones: a killed upstream is unavailable within one
//! probe interval (plus 100 ms), a hung one after about `failure_threshold` probe intervals.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keywarden::ops::events::{AffectedKeyspaces, Events};
use keywarden::upstream::health::{Cause, Outcome, State};
use keywarden::upstream::monitor::{
    HealthSnapshot, Monitor, MonitorHandle, MonitorSettings, PingProbe, Probe, ProbeTimeouts,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the tests allow beyond a documented bound, for a loaded machine.
const SLACK: Duration = Duration::from_millis(100);

struct Watched {
    monitor: Monitor,
    events_path: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(address: String) -> Watched {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.jsonl");
    let events = Arc::new(Events::new("kw-e2e".into(), Some(&events_path)).unwrap());
    let settings = MonitorSettings {
        address,
        connect_timeout: Duration::from_millis(300),
        ..MonitorSettings::default()
    };
    let keyspaces = AffectedKeyspaces {
        fail_closed: vec!["default".into()],
        ..AffectedKeyspaces::default()
    };
    Watched {
        monitor: Monitor::start(settings, events, keyspaces).await,
        events_path,
        _dir: dir,
    }
}

impl Watched {
    fn handle(&self) -> MonitorHandle {
        self.monitor.handle()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        events_in(&self.events_path)
    }

    fn event_names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits for `want`; returns the time it took from `from`.
    async fn until(&self, want: State, from: Instant) -> Duration {
        let mut rx = self.handle().subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.state == want))
            .await
            .unwrap_or_else(|_| panic!("never {want}"))
            .expect("monitor running");
        from.elapsed()
    }
}

/// Every state published from now on, in order, as a stream.
fn record(mut rx: watch::Receiver<HealthSnapshot>) -> mpsc::UnboundedReceiver<State> {
    let (tx, states) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            if tx.send(rx.borrow_and_update().state).is_err() {
                return;
            }
        }
    });
    states
}

/// Takes states from `states` into `seen` up to and including `want`.
async fn seen_until(
    states: &mut mpsc::UnboundedReceiver<State>,
    want: State,
    seen: &mut Vec<State>,
) {
    loop {
        let s = tokio::time::timeout(WAIT, states.recv())
            .await
            .unwrap_or_else(|_| panic!("never {want}; saw {seen:?}"))
            .expect("monitor running");
        seen.push(s);
        if s == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_is_unavailable_within_one_interval_and_restarted_is_healthy() {
    let mut redis = RedisServer::start();
    let w = start(redis.addr()).await;
    assert_eq!(w.handle().snapshot().state, State::Healthy);
    assert!(w.events().is_empty());

    let killed = Instant::now();
    redis.kill();
    let detected = w.until(State::Unavailable, killed).await;
    assert!(
        detected <= MonitorSettings::default().probe_interval + SLACK,
        "{detected:?}"
    );

    let restarted = Instant::now();
    redis.restart();
    let recovered = w.until(State::Healthy, restarted).await;
    assert!(
        recovered <= MonitorSettings::default().probe_interval + SLACK,
        "{recovered:?}"
    );
    eprintln!("kill → unavailable {detected:?}, restart → healthy {recovered:?}");

    let events = w.events();
    assert_eq!(w.event_names(), ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
    assert_eq!(events[0]["cause"], "refused");
    assert_eq!(events[0]["upstream"], redis.addr());
    assert_eq!(events[1]["cause"], "refused");
    let outage_ms = events[1]["outage_ms"].as_u64().unwrap();
    assert!(outage_ms > 0 && outage_ms < 10_000, "{outage_ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_is_unavailable_after_failures_times_interval() {
    let redis = RedisServer::start();
    let w = start(redis.addr()).await;
    let d = MonitorSettings::default();
    let hung = Instant::now();
    redis.hang();
    let detected = w.until(State::Unavailable, hung).await;
    // Three probes in a row time out; the first starts within one interval of the hang.
    let earliest = d.probe_interval * (d.failure_threshold - 1) + d.probe_timeout;
    let latest = d.probe_interval * d.failure_threshold + d.probe_timeout + SLACK;
    assert!(
        detected >= earliest - SLACK && detected <= latest,
        "{detected:?} not in {earliest:?}..{latest:?}"
    );
    assert_eq!(w.event_names(), ["BACKEND_DEGRADED"]);
    assert_eq!(w.events()[0]["cause"], "timeout");

    let resumed = Instant::now();
    redis.resume();
    let recovered = w.until(State::Healthy, resumed).await;
    assert!(recovered <= d.probe_interval + SLACK, "{recovered:?}");
    assert_eq!(w.event_names(), ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
}

/// The data path's suspicions start a probe at once and count only when it fails: any number
/// of them against an upstream that answers change nothing; against a hung one, the first
/// failed probe confirms them, long before `failure_threshold` probe intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspicions_count_only_when_the_probe_confirms_them() {
    let redis = RedisServer::start();
    let w = start(redis.addr()).await;
    let d = MonitorSettings::default();
    let h = w.handle();
    let mut changes = record(h.subscribe());
    let raised = Instant::now();
    let mut last = 0;
    for _ in 0..10 {
        last = h.suspect(Cause::Timeout);
    }
    while !h.cleared(last) {
        assert!(raised.elapsed() < WAIT, "no probe answered the suspicions");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // At once, not at the next interval.
    assert!(
        raised.elapsed() < d.probe_interval / 2,
        "{:?}",
        raised.elapsed()
    );
    tokio::time::sleep(d.probe_interval).await;
    assert_eq!(h.snapshot().state, State::Healthy);

    redis.hang();
    let hung = Instant::now();
    h.suspect(Cause::Timeout);
    h.suspect(Cause::BadReply);
    let detected = w.until(State::Unavailable, hung).await;
    assert!(
        detected <= d.probe_timeout + SLACK,
        "{detected:?}, probe timeout {:?}",
        d.probe_timeout
    );
    assert!(!h.cleared(last + 1));
    // Counted in the order raised, so the outage names the first.
    assert_eq!(w.events()[0]["cause"], "timeout");
    let mut seen = Vec::new();
    seen_until(&mut changes, State::Unavailable, &mut seen).await;
    assert_eq!(seen, [State::Unavailable], "no change before the outage");
    redis.resume();
    w.until(State::Healthy, Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_and_one_change_per_flip_over_repeated_outages() {
    let mut redis = RedisServer::start();
    let w = start(redis.addr()).await;
    let mut states = record(w.handle().subscribe());
    let mut seen = Vec::new();
    const OUTAGES: usize = 4;
    for _ in 0..OUTAGES {
        redis.kill();
        // The data path's connections see the close too, several times over.
        for _ in 0..3 {
            w.handle().report(Outcome::Failure(Cause::Closed));
        }
        seen_until(&mut states, State::Unavailable, &mut seen).await;
        redis.restart();
        seen_until(&mut states, State::Healthy, &mut seen).await;
    }
    let names = w.event_names();
    assert_eq!(names.len(), 2 * OUTAGES, "{names:?}");
    for pair in names.chunks(2) {
        assert_eq!(pair, ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
    }
    let instances: Vec<_> = w.events().iter().map(|e| e["instance"].clone()).collect();
    assert!(instances.iter().all(|i| i == "kw-e2e"));

    // Each state is published once per flip. (A watch shows the latest value, so the short
    // `recovering` could be missed by a slow reader; the others last until the test moves on.)
    let want: Vec<State> = (0..OUTAGES)
        .flat_map(|_| [State::Unavailable, State::Recovering, State::Healthy])
        .collect();
    let without_recovering = |v: &[State]| -> Vec<State> {
        v.iter()
            .copied()
            .filter(|s| *s != State::Recovering)
            .collect()
    };
    assert_eq!(
        without_recovering(&seen),
        without_recovering(&want),
        "{seen:?}"
    );
    assert!(seen.windows(2).all(|p| p[0] != p[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_startup_then_started() {
    let port = free_port();
    let w = start(format!("127.0.0.1:{port}")).await;
    assert_eq!(w.handle().snapshot().state, State::Unavailable);
    assert_eq!(w.event_names(), ["BACKEND_UNAVAILABLE_AT_STARTUP"]);
    let e = &w.events()[0];
    assert_eq!(e["cause"], "refused");
    assert_eq!(e["keyspaces"]["fail_closed"][0], "default");

    let started = Instant::now();
    let _redis = RedisServer::start_on(port);
    let recovered = w.until(State::Healthy, started).await;
    assert!(
        recovered <= MonitorSettings::default().probe_interval + SLACK,
        "{recovered:?}"
    );
    assert_eq!(
        w.event_names(),
        ["BACKEND_UNAVAILABLE_AT_STARTUP", "BACKEND_RECOVERED"]
    );
}

/// A one-connection fake upstream: runs `serve` on each accepted connection.
async fn fake_upstream<F, Fut>(serve: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

fn probe(address: String) -> PingProbe {
    PingProbe {
        address,
        login: None,
        tls: None,
        target: None,
        primary_only: false,
    }
}

/// Under Sentinel a demoted primary still answers PING; the probe asks ROLE too, and only a
/// primary passes it, so keyspaces follow their modes instead of writes meeting -READONLY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sentinel_only_a_primary_passes_the_probe() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinel_probe = |address: String| PingProbe {
        primary_only: true,
        ..probe(address)
    };
    assert_eq!(
        sentinel_probe(primary.addr()).probe(TIMEOUTS).await,
        Outcome::Success
    );
    assert_eq!(
        sentinel_probe(replica.addr()).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::ProbeFailed)
    );
    // Without Sentinel the replica answers PING: the probe does not ask.
    assert_eq!(
        probe(replica.addr()).probe(TIMEOUTS).await,
        Outcome::Success
    );
}

const TIMEOUTS: ProbeTimeouts = ProbeTimeouts {
    connect: Duration::from_millis(300),
    reply: Duration::from_millis(200),
};

/// Reads the probe's PING, then answers `reply`.
async fn answer(mut stream: tokio::net::TcpStream, reply: &'static [u8]) {
    let mut buf = [0u8; 6];
    if stream.read_exact(&mut buf).await.is_ok() && &buf == b"PING\r\n" {
        let _ = stream.write_all(reply).await;
    }
    // Keep the connection open a while: the probe must judge by the reply, not by EOF.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_outcomes() {
    let redis = RedisServer::start();
    assert_eq!(probe(redis.addr()).probe(TIMEOUTS).await, Outcome::Success);

    let nobody = format!("127.0.0.1:{}", free_port());
    assert_eq!(
        probe(nobody).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::Refused)
    );

    let pong_in_pieces = fake_upstream(|mut s| async move {
        let mut buf = [0u8; 6];
        let _ = s.read_exact(&mut buf).await;
        for piece in [&b"+PO"[..], b"NG\r", b"\n"] {
            let _ = s.write_all(piece).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        probe(pong_in_pieces).probe(TIMEOUTS).await,
        Outcome::Success
    );

    let loading =
        fake_upstream(|s| answer(s, b"-LOADING Redis is loading the dataset in memory\r\n")).await;
    assert_eq!(
        probe(loading).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::ProbeFailed)
    );

    let not_redis = fake_upstream(|s| answer(s, b"HTTP/1.1 400 Bad Request\r\n\r\n")).await;
    assert_eq!(
        probe(not_redis).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::ProbeFailed)
    );

    let closes = fake_upstream(|s| async move { drop(s) }).await;
    assert_eq!(
        probe(closes).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::Closed)
    );

    let silent = fake_upstream(|s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let t = Instant::now();
    assert_eq!(
        probe(silent).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::Timeout)
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(200) + SLACK,
        "{took:?}"
    );

    redis.hang();
    assert_eq!(
        probe(redis.addr()).probe(TIMEOUTS).await,
        Outcome::Failure(Cause::Timeout)
    );
    redis.resume();
    assert_eq!(probe(redis.addr()).probe(TIMEOUTS).await, Outcome::Success);
}
