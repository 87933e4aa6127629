//! The health monitor's timing logic with a fake probe and paused time; `tests/monitor.rs`
//! runs the real probe against real redis-server processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywarden::ops::events::{AffectedKeyspaces, Events};
use keywarden::upstream::health::{Cause, Outcome, State};
use keywarden::upstream::monitor::{Monitor, MonitorSettings, Probe, ProbeTimeouts};
use tokio::time::Instant;

/// A pretend upstream the fake probe looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fake {
    Up,
    Down,
    /// Accepts, never answers: the probe times out.
    Hung,
}

#[derive(Clone)]
struct FakeProbe {
    upstream: Arc<Mutex<Fake>>,
    timeout: Duration,
    probes: Arc<Mutex<Vec<Instant>>>,
}

impl Probe for FakeProbe {
    async fn probe(&self, _: ProbeTimeouts) -> Outcome {
        self.probes.lock().unwrap().push(Instant::now());
        let now = *self.upstream.lock().unwrap();
        match now {
            Fake::Up => Outcome::Success,
            Fake::Down => Outcome::Failure(Cause::Refused),
            Fake::Hung => {
                tokio::time::sleep(self.timeout).await;
                Outcome::Failure(Cause::Timeout)
            }
        }
    }
}

struct Rig {
    monitor: Monitor,
    upstream: Arc<Mutex<Fake>>,
    probes: Arc<Mutex<Vec<Instant>>>,
    events_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn settings() -> MonitorSettings {
    MonitorSettings {
        address: "fake:6379".into(),
        ..MonitorSettings::default()
    }
}

impl Rig {
    async fn start(initial: Fake, settings: MonitorSettings) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let events_path = dir.path().join("events.jsonl");
        let events = Arc::new(Events::new("kw-test".into(), Some(&events_path)).unwrap());
        let upstream = Arc::new(Mutex::new(initial));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let probe = FakeProbe {
            upstream: upstream.clone(),
            timeout: settings.probe_timeout,
            probes: probes.clone(),
        };
        let keyspaces = AffectedKeyspaces {
            fail_closed: vec!["rl".into()],
            degraded: vec!["cache".into()],
            local_only: vec![],
        };
        let monitor = Monitor::start_with(settings, probe, events, keyspaces).await;
        Rig {
            monitor,
            upstream,
            probes,
            events_path,
            _dir: dir,
        }
    }

    fn set(&self, f: Fake) {
        *self.upstream.lock().unwrap() = f;
    }

    fn state(&self) -> State {
        self.monitor.handle().snapshot().state
    }

    /// Waits (in paused time) for the state to become `want`; returns when it did. The
    /// state must stay `want` until this task runs: a watch shows the latest value only.
    async fn until(&self, want: State) -> Instant {
        let mut rx = self.monitor.handle().subscribe();
        let snap = *rx
            .wait_for(|s| s.state == want)
            .await
            .expect("monitor running");
        snap.since
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn event_names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    fn probe_count(&self) -> usize {
        self.probes.lock().unwrap().len()
    }
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn healthy_start_probes_every_interval_and_emits_nothing() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let t0 = Instant::now();
    assert_eq!(rig.state(), State::Healthy);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let probes = rig.probes.lock().unwrap().clone();
    let offsets: Vec<u128> = probes.iter().map(|p| (*p - t0).as_millis()).collect();
    assert_eq!(offsets, [0, 1000, 2000, 3000]);
    assert_eq!(rig.state(), State::Healthy);
    assert!(rig.events().is_empty());
}

#[tokio::test(start_paused = true)]
async fn killed_upstream_is_unavailable_within_one_interval() {
    let rig = Rig::start(Fake::Up, settings()).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let killed = Instant::now();
    rig.set(Fake::Down);
    let at = rig.until(State::Unavailable).await;
    // The next probe (at 2000 ms) sees the refusal.
    assert_eq!(at - killed, Duration::from_millis(700));
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED"]);
    let e = &rig.events()[0];
    assert_eq!(e["cause"], "refused");
    assert_eq!(e["upstream"], "fake:6379");
    assert_eq!(e["instance"], "kw-test");
    assert_eq!(e["keyspaces"]["fail_closed"][0], "rl");
}

#[tokio::test(start_paused = true)]
async fn a_closed_socket_reported_by_the_data_path_flips_at_once() {
    let rig = Rig::start(Fake::Up, settings()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    rig.set(Fake::Down);
    rig.monitor.handle().report(Outcome::Failure(Cause::Closed));
    assert_eq!(rig.until(State::Unavailable).await, t);
    // The flip brings the next probe forward: due 25 ms after the last one started (long
    // past), so it runs at once, and more follow at the fast pace.
    tokio::time::sleep(Duration::from_millis(100) - MS).await;
    let fast: Vec<u128> = rig.probes.lock().unwrap()[1..]
        .iter()
        .map(|p| (*p - t).as_millis())
        .collect();
    assert_eq!(fast, [0, 25, 50, 75]);
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED"]);
}

#[tokio::test(start_paused = true)]
async fn hung_upstream_is_unavailable_after_failures_times_interval() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let t0 = Instant::now();
    rig.set(Fake::Hung);
    // Probes at 1000, 2000, 3000 each time out 500 ms later; the third flips it.
    let at = rig.until(State::Unavailable).await;
    assert_eq!(at - t0, Duration::from_millis(3500));
    let e = &rig.events()[0];
    assert_eq!(
        (e["event"].as_str(), e["cause"].as_str()),
        (Some("BACKEND_DEGRADED"), Some("timeout"))
    );
}

#[tokio::test(start_paused = true)]
async fn data_path_timeouts_add_to_the_run_and_a_success_resets_it() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let h = rig.monitor.handle();
    let t = Outcome::Failure(Cause::Timeout);
    h.report(t);
    h.report(t);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the probe at 1000 succeeds
    h.report(t);
    h.report(t);
    tokio::time::sleep(MS).await;
    assert_eq!(rig.state(), State::Healthy);
    assert!(rig.events().is_empty());
    h.report(t);
    tokio::time::sleep(MS).await;
    // The third in a row flips it; the probe, brought forward by the flip, finds the
    // upstream answering and opens recovering at once.
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED"]);
    assert_eq!(rig.events()[0]["cause"], "timeout");
    assert_eq!(rig.state(), State::Recovering);
    rig.until(State::Healthy).await;
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
}

#[tokio::test(start_paused = true)]
async fn recovery_goes_through_recovering_and_emits_one_recovered() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let h = rig.monitor.handle();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.set(Fake::Down);
    h.report(Outcome::Failure(Cause::Closed));
    let down = rig.until(State::Unavailable).await;
    // During the outage the data path refuses and serves locally.
    for _ in 0..7 {
        h.counters().record_refused();
    }
    h.counters().record_degraded_reply();
    h.counters().record_discarded_writes(4);
    tokio::time::sleep(Duration::from_millis(1010)).await;
    let back = Instant::now();
    rig.set(Fake::Up);
    let recovering = rig.until(State::Recovering).await;
    let healthy = rig.until(State::Healthy).await;
    // Probes run every 25 ms from the flip at `down`: the first after `back` opens
    // recovering, the next closes it.
    assert!(
        recovering - back <= Duration::from_millis(25),
        "{:?}",
        recovering - back
    );
    assert_eq!(healthy - recovering, Duration::from_millis(25));
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
    let r = &rig.events()[1];
    assert_eq!(r["cause"], "closed", "RECOVERED carries the outage's cause");
    assert_eq!(r["outage_ms"], (healthy - down).as_millis() as u64);
    assert_eq!(
        (
            &r["refused"],
            &r["degraded_replies"],
            &r["discarded_writes"]
        ),
        (&7.into(), &1.into(), &4.into())
    );
    // Healthy again: back to the slow pace.
    let n = rig.probe_count();
    tokio::time::sleep(Duration::from_millis(990)).await;
    assert_eq!(rig.probe_count(), n);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(rig.probe_count(), n + 1);
}

#[tokio::test(start_paused = true)]
async fn a_relapse_while_recovering_emits_nothing_more() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let h = rig.monitor.handle();
    rig.set(Fake::Down);
    h.report(Outcome::Failure(Cause::Refused));
    rig.until(State::Unavailable).await;
    // The upstream answers one probe, then a data-path connection fails again.
    rig.set(Fake::Up);
    rig.until(State::Recovering).await;
    rig.set(Fake::Down);
    h.report(Outcome::Failure(Cause::Closed));
    rig.until(State::Unavailable).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.state(), State::Unavailable);
    rig.set(Fake::Up);
    rig.until(State::Healthy).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.event_names(), ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
    assert_eq!(rig.events()[1]["cause"], "refused");
}

#[tokio::test(start_paused = true)]
async fn down_at_startup_emits_unavailable_at_startup_then_recovered() {
    let rig = Rig::start(Fake::Down, settings()).await;
    let t0 = Instant::now();
    assert_eq!(rig.state(), State::Unavailable);
    assert_eq!(rig.event_names(), ["BACKEND_UNAVAILABLE_AT_STARTUP"]);
    assert_eq!(rig.events()[0]["cause"], "refused");
    tokio::time::sleep(Duration::from_millis(110)).await;
    // Probing at the fast pace from the start.
    assert_eq!(rig.probe_count(), 5);
    rig.set(Fake::Up);
    let healthy = rig.until(State::Healthy).await;
    assert_eq!(healthy - t0, Duration::from_millis(150));
    assert_eq!(
        rig.event_names(),
        ["BACKEND_UNAVAILABLE_AT_STARTUP", "BACKEND_RECOVERED"]
    );
    assert_eq!(rig.events()[1]["outage_ms"], 150);
}

#[tokio::test(start_paused = true)]
async fn hung_at_startup_counts_as_down_after_one_probe() {
    let rig = Rig::start(Fake::Hung, settings()).await;
    assert_eq!(rig.state(), State::Unavailable);
    assert_eq!(rig.events()[0]["cause"], "timeout");
}

#[tokio::test(start_paused = true)]
async fn many_outages_one_event_pair_each() {
    let rig = Rig::start(Fake::Up, settings()).await;
    let h = rig.monitor.handle();
    let mut seen = Vec::new();
    let mut rx = h.subscribe();
    let watcher = tokio::spawn(async move {
        let mut states = Vec::new();
        while rx.changed().await.is_ok() {
            states.push(rx.borrow_and_update().state);
        }
        states
    });
    for round in 0..20 {
        rig.set(Fake::Down);
        // Several reports of the same outage: the data path's connections and the probe.
        for c in [Cause::Closed, Cause::Closed, Cause::Refused, Cause::Timeout] {
            h.report(Outcome::Failure(c));
        }
        rig.until(State::Unavailable).await;
        tokio::time::sleep(Duration::from_millis(40 + round)).await;
        rig.set(Fake::Up);
        rig.until(State::Healthy).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.push(rig.state());
    }
    assert!(seen.iter().all(|s| *s == State::Healthy));
    let names = rig.event_names();
    assert_eq!(names.len(), 40);
    for pair in names.chunks(2) {
        assert_eq!(pair, ["BACKEND_DEGRADED", "BACKEND_RECOVERED"]);
    }
    rig.monitor.stop();
    drop(rig);
    let states = watcher.await.unwrap();
    let want: Vec<State> = (0..20)
        .flat_map(|_| [State::Unavailable, State::Recovering, State::Healthy])
        .collect();
    assert_eq!(states, want, "exactly one published change per flip");
}
