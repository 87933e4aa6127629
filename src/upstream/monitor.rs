//! The health monitor of one upstream: the task that owns its [`Health`], feeds it, publishes
//! its state, and emits the outage events.
//!
//! ```text
//!   data path ──report(failure)──┐
//!                                ├──▶ unbounded queue ──▶ monitor task: Health::observe
//!   probe task ──report(outcome)─┘                          │ on a transition, in order:
//!       ▲                                                   ├─▶ Events::emit
//!       │                                                   └─▶ watch ──▶ data path
//!       └──── its pace follows the published state ◀──────────────┘  (snapshot(), never waits)
//! ```
//!
//! - **Reports.** The data path reports failures only, once per failed connection or connect
//!   attempt (not per request), so the success path costs nothing. [`MonitorHandle::report`]
//!   never blocks: it pushes onto an unbounded queue, which allocates only once per 32 reports.
//! - **Probe.** A second task connects (connect timeout), sends `PING`, expects `+PONG` within
//!   the probe timeout, and reports the outcome, successes included. It probes every
//!   `probe_interval` while healthy and every `recovery_probe_interval` otherwise, so a returning
//!   upstream is noticed fast. A probe runs beside the reports, never in front of them.
//! - **Startup.** [`Monitor::start`] runs the first probe before it returns: its result is the
//!   initial state (one failed probe is enough, since nothing says the upstream was ever there),
//!   and a failure emits `BACKEND_UNAVAILABLE_AT_STARTUP`.
//! - **Events.** An outage opens with `healthy → unavailable` (BACKEND_DEGRADED) or with the
//!   failed startup probe (BACKEND_UNAVAILABLE_AT_STARTUP) and closes when `healthy` is reached
//!   again (BACKEND_RECOVERED, with its length and what the data path counted meanwhile). The
//!   moves between `unavailable` and `recovering` inside an outage are logged, not emitted, so
//!   each outage gives exactly one opening and one closing event. The event goes out before
//!   the state is published, so whoever sees the new state can rely on its event being out.
//!
//! # What the data path does in each state
//! - `Healthy`: forward.
//! - `Unavailable`: fail-closed keyspaces are refused at once, degraded ones served locally.
//! - `Recovering`: **forward, as when healthy.** The upstream has just answered a probe; the
//!   product goal is that the first request after it returns succeeds within 50 ms, which
//!   waiting for `success_threshold` probes would put off. Being early costs at most a failed
//!   request, which is reported and puts the state back to `unavailable`. The local writes of
//!   the outage are kept until `healthy` (so a relapse serves degraded keyspaces from them
//!   again), and discarded then.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Settings;
use crate::ops::events::{AffectedKeyspaces, Counters, Counts, Event, EventKind, Events, Outage};
use crate::upstream::health::{Cause, Health, Outcome, State, Thresholds, Transition};
use bytes::Bytes;

use crate::upstream::handshake;
use crate::upstream::socket;

/// What the monitor of one upstream needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSettings {
    /// The upstream's address, as the data path connects to it.
    pub address: String,
    /// The proxy's own login (`AUTH ...`), sent before PING when the upstream needs one.
    pub login: Option<Bytes>,
    /// The data path's connect timeout, used by the probe too.
    pub connect_timeout: Duration,
    /// Between probes while healthy. Default 1 s: a killed upstream with no traffic is noticed
    /// within one interval; the cost is one connection a second.
    pub probe_interval: Duration,
    /// Between probes while unavailable or recovering (at most `probe_interval`). Default 25 ms:
    /// the state leaves `unavailable` within ~25 ms of the upstream's return, so the data path
    /// forwards again within the 50 ms goal, and the default `success_threshold` of 1 closes
    /// the outage ~25 ms later. Probing a dead address is a refused connect (cheap); probing a
    /// hung one is paced by the probe timeout, since one probe runs at a time.
    pub recovery_probe_interval: Duration,
    /// How long the probe waits for `+PONG` once connected. Default 500 ms: hundreds of times a
    /// healthy round trip, yet under `probe_interval` so probes never overlap, and under the
    /// default command timeout (1 s) so the probe is no more lenient than clients are. A Redis
    /// busy with one slow command longer than that costs one counted failure, which the
    /// failure threshold absorbs.
    pub probe_timeout: Duration,
    /// Counted failures in a row (timeouts, bad replies, failed probes) that make a healthy
    /// upstream unavailable. Default 3: one slow reply or one lost probe never flips it; a hung
    /// upstream is declared unavailable after about `3 × probe_interval + probe_timeout` from
    /// the probe alone, sooner when the data path reports its own timeouts.
    pub failure_threshold: u32,
    /// Successes in a row while recovering (after the one that opened it) that make it healthy
    /// again. Default 1, so two successes in a row in all: one answer can come from an upstream
    /// in a restart loop; a second, `recovery_probe_interval` later, confirms it. Clients do
    /// not wait for it (the data path forwards while recovering): it delays only
    /// BACKEND_RECOVERED and the discarding of local writes, by ~25 ms per success.
    pub success_threshold: u32,
}

impl Default for MonitorSettings {
    /// The defaults above, for the upstream at the config's default address and connect
    /// timeout.
    fn default() -> MonitorSettings {
        MonitorSettings {
            address: "127.0.0.1:6379".to_owned(),
            login: None,
            connect_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_secs(1),
            recovery_probe_interval: Duration::from_millis(25),
            probe_timeout: Duration::from_millis(500),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

impl Thresholds {
    fn of(settings: &MonitorSettings) -> Thresholds {
        Thresholds {
            failures: settings.failure_threshold,
            successes: settings.success_threshold,
        }
    }
}

impl MonitorSettings {
    /// The monitor of the configured upstream. The recovery pace is not configurable: it
    /// serves the 50 ms goal, not a trade-off an operator needs to make.
    pub fn from_settings(s: &Settings) -> MonitorSettings {
        MonitorSettings {
            address: s.upstream.address.clone(),
            login: handshake::setup_commands(&s.upstream, false)
                .first()
                .map(|login| login.raw().clone()),
            connect_timeout: s.upstream.connect_timeout,
            probe_interval: s.health.probe_interval,
            probe_timeout: s.health.probe_timeout,
            failure_threshold: s.health.failure_threshold,
            success_threshold: s.health.success_threshold,
            ..MonitorSettings::default()
        }
    }
}

/// The published state of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub state: State,
    /// When `state` was entered.
    pub since: Instant,
}

impl HealthSnapshot {
    /// Whether the data path sends requests upstream: when healthy and when recovering.
    pub fn upstream_available(&self) -> bool {
        self.state != State::Unavailable
    }
}

/// One check of the upstream. [`PingProbe`] is the real one; tests give a fake.
pub trait Probe: Send + Sync + 'static {
    fn probe(&self, timeouts: ProbeTimeouts) -> impl Future<Output = Outcome> + Send;
}

/// The timeouts of one probe, as configured when it starts (a reload may change them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTimeouts {
    pub connect: Duration,
    /// For the reply once connected.
    pub reply: Duration,
}

/// Connect, log in if the proxy has upstream credentials (expect `+OK`), `PING`, expect
/// `+PONG`: an upstream that refuses the proxy's login cannot serve it.
#[derive(Debug, Clone)]
pub struct PingProbe {
    pub address: String,
    pub login: Option<Bytes>,
}

/// A running monitor. Dropping it (or [`Monitor::stop`]) stops its tasks.
pub struct Monitor {
    handle: MonitorHandle,
    tasks: [JoinHandle<()>; 2],
}

/// What the data path holds: report failures, read the state. Cloning is one reference count.
#[derive(Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
}

struct Shared {
    address: String,
    reports: mpsc::UnboundedSender<Report>,
    /// The probe's pace and timeouts, read before each probe.
    tuning: Mutex<Tuning>,
    /// Wakes the probe task when a reload changed them, so a shorter interval applies now.
    retuned: tokio::sync::Notify,
    state: watch::Receiver<HealthSnapshot>,
    counters: Counters,
}

/// The monitor task: the only owner of the `Health`.
struct Driver {
    health: Health,
    publish: watch::Sender<HealthSnapshot>,
    handle: MonitorHandle,
    events: Arc<Events>,
    keyspaces: AffectedKeyspaces,
    /// The outage under way, if any: when and why it began, and the counts then.
    outage: Option<OutageStart>,
}

#[derive(Debug, Clone, Copy)]
struct OutageStart {
    at: Instant,
    cause: Cause,
    counts: Counts,
}

impl Monitor {
    /// Probes the upstream once, then starts the monitor and probe tasks on the current
    /// runtime. Takes at most `connect_timeout + probe_timeout`.
    pub async fn start(
        settings: MonitorSettings,
        events: Arc<Events>,
        keyspaces: AffectedKeyspaces,
    ) -> Monitor {
        let probe = PingProbe {
            address: settings.address.clone(),
            login: settings.login.clone(),
        };
        Monitor::start_with(settings, probe, events, keyspaces).await
    }

    /// [`Monitor::start`] with another probe.
    pub async fn start_with<P: Probe>(
        settings: MonitorSettings,
        probe: P,
        events: Arc<Events>,
        keyspaces: AffectedKeyspaces,
    ) -> Monitor {
        let first_at = Instant::now();
        let tuning = Tuning::of(&settings);
        let first = probe.probe(tuning.timeouts).await;
        let now = Instant::now();
        let thresholds = Thresholds::of(&settings);
        let initial = match first {
            Outcome::Success => State::Healthy,
            Outcome::Failure(_) => State::Unavailable,
        };
        let health = Health::new(initial, thresholds, now);
        let (publish, state) = watch::channel(HealthSnapshot {
            state: initial,
            since: now,
        });
        let (reports, inbox) = mpsc::unbounded_channel();
        let handle = MonitorHandle {
            shared: Arc::new(Shared {
                address: settings.address.clone(),
                reports,
                tuning: Mutex::new(tuning),
                retuned: tokio::sync::Notify::new(),
                state,
                counters: Counters::default(),
            }),
        };
        let mut driver = Driver {
            health,
            publish,
            handle: handle.clone(),
            events,
            keyspaces,
            outage: None,
        };
        if let Outcome::Failure(cause) = first {
            tracing::warn!(upstream = %settings.address, %cause, "upstream unavailable at startup");
            driver.open_outage(EventKind::UnavailableAtStartup, cause, now);
        }
        let tasks = [
            tokio::spawn(driver.run(inbox)),
            tokio::spawn(probe_loop(probe, handle.clone(), first_at)),
        ];
        Monitor { handle, tasks }
    }

    pub fn handle(&self) -> MonitorHandle {
        self.handle.clone()
    }

    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MonitorHandle {
    /// Reports the outcome of an exchange with the upstream. Never blocks. The data path
    /// reports failures only, once per failed connection or connect attempt; upstream error
    /// replies (WRONGTYPE, OOM, ...) are answers and are never reported.
    pub fn report(&self, outcome: Outcome) {
        // Fails only once the monitor has stopped (shutdown): nothing is listening then.
        let _ = self.shared.reports.send(Report::Outcome(outcome));
    }

    /// A reload: the probe pace, timeouts and thresholds of `settings` apply from the next
    /// probe and report on (the address and login stay), and later events name `keyspaces`.
    pub fn reconfigure(&self, settings: &MonitorSettings, keyspaces: AffectedKeyspaces) {
        *self.shared.tuning.lock().unwrap_or_else(|e| e.into_inner()) = Tuning::of(settings);
        self.shared.retuned.notify_one();
        let retune = Retune {
            thresholds: Thresholds::of(settings),
            keyspaces,
        };
        let _ = self.shared.reports.send(Report::Retune(Box::new(retune)));
    }

    fn tuning(&self) -> Tuning {
        *self.shared.tuning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state, without waiting: a copy taken under a read lock held for the copy.
    pub fn snapshot(&self) -> HealthSnapshot {
        *self.shared.state.borrow()
    }

    /// A receiver that is told of every change of state (for tasks that react to one, such
    /// as discarding the local writes of an outage once healthy).
    pub fn subscribe(&self) -> watch::Receiver<HealthSnapshot> {
        let mut rx = self.shared.state.clone();
        // Only changes from now on count as news.
        rx.mark_unchanged();
        rx
    }

    /// The counts the RECOVERED event reports; the data path records into them.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn upstream(&self) -> &str {
        &self.shared.address
    }
}

impl Driver {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Report>) {
        while let Some(report) = inbox.recv().await {
            match report {
                Report::Outcome(outcome) => {
                    if let Some(t) = self.health.observe(outcome, Instant::now()) {
                        self.on_transition(t);
                    }
                }
                Report::Retune(retune) => {
                    self.health.set_thresholds(retune.thresholds);
                    self.keyspaces = retune.keyspaces;
                }
            }
        }
    }

    fn on_transition(&mut self, t: Transition) {
        let (upstream, from, to) = (self.handle.upstream(), t.from.as_str(), t.to.as_str());
        match t.cause {
            Some(cause) => {
                let cause = cause.as_str();
                tracing::warn!(upstream, from, to, cause, "upstream health changed")
            }
            None => tracing::info!(upstream, from, to, "upstream health changed"),
        }
        // The event first (see the module doc).
        match (t.from, t.to, t.cause) {
            (State::Healthy, _, Some(cause)) => self.open_outage(EventKind::Degraded, cause, t.at),
            (_, State::Healthy, _) => self.close_outage(t.at),
            _ => {}
        }
        self.publish.send_replace(HealthSnapshot {
            state: t.to,
            since: t.at,
        });
    }

    fn open_outage(&mut self, kind: EventKind, cause: Cause, at: Instant) {
        debug_assert!(self.outage.is_none(), "an outage is already open");
        self.outage = Some(OutageStart {
            at,
            cause,
            counts: self.handle.counters().totals(),
        });
        self.events.emit(&Event {
            kind,
            upstream: self.handle.upstream(),
            cause,
            keyspaces: &self.keyspaces,
            outage: None,
        });
    }

    /// Emits RECOVERED for the open outage; without one there is nothing to close, and no
    /// RECOVERED (never one without a DEGRADED or UNAVAILABLE_AT_STARTUP before it).
    fn close_outage(&mut self, at: Instant) {
        let Some(start) = self.outage.take() else {
            return;
        };
        let outage = Outage {
            outage_ms: at.duration_since(start.at).as_millis() as u64,
            counts: self.handle.counters().totals().since(start.counts),
        };
        self.events.emit(&Event {
            kind: EventKind::Recovered,
            upstream: self.handle.upstream(),
            cause: start.cause,
            keyspaces: &self.keyspaces,
            outage: Some(outage),
        });
    }
}

/// Probe intervals by state.
#[derive(Debug, Clone, Copy)]
struct Pace {
    healthy: Duration,
    otherwise: Duration,
}

/// What the probe task reads before each probe.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    pace: Pace,
    timeouts: ProbeTimeouts,
}

impl Tuning {
    fn of(settings: &MonitorSettings) -> Tuning {
        Tuning {
            pace: Pace {
                healthy: settings.probe_interval,
                otherwise: settings
                    .recovery_probe_interval
                    .min(settings.probe_interval),
            },
            timeouts: ProbeTimeouts {
                connect: settings.connect_timeout,
                reply: settings.probe_timeout,
            },
        }
    }
}

/// What the monitor task is told: an outcome, or a reload's new thresholds and keyspaces.
enum Report {
    Outcome(Outcome),
    Retune(Box<Retune>),
}

struct Retune {
    thresholds: Thresholds,
    keyspaces: AffectedKeyspaces,
}

impl Pace {
    fn interval(self, state: State) -> Duration {
        match state {
            State::Healthy => self.healthy,
            State::Unavailable | State::Recovering => self.otherwise,
        }
    }
}

/// Probes forever, one probe at a time, each `interval(state)` after the start of the one
/// before (at once if that has passed). A change of state re-reads the interval, so a flip to
/// `unavailable` found by the data path brings the next probe forward.
async fn probe_loop<P: Probe>(probe: P, handle: MonitorHandle, mut last: Instant) {
    let mut state = handle.subscribe();
    loop {
        loop {
            let pace = handle.tuning().pace;
            let due = last + pace.interval(state.borrow_and_update().state);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                changed = state.changed() => {
                    if changed.is_err() {
                        return; // the monitor task is gone
                    }
                }
                // A reload: the interval is read again.
                _ = handle.shared.retuned.notified() => {}
            }
        }
        last = Instant::now();
        let outcome = probe.probe(handle.tuning().timeouts).await;
        handle.report(outcome);
    }
}

impl Probe for PingProbe {
    async fn probe(&self, timeouts: ProbeTimeouts) -> Outcome {
        let mut stream = match socket::connect(&self.address, timeouts.connect, None).await {
            Ok(stream) => stream,
            Err(e) => return Outcome::Failure(Cause::of_connect_error(&e)),
        };
        let exchange = async {
            let mut wire = Vec::new();
            if let Some(login) = &self.login {
                wire.extend_from_slice(login);
            }
            wire.extend_from_slice(b"PING\r\n");
            stream.write_all(&wire).await?;
            read_lines(&mut stream, 1 + usize::from(self.login.is_some())).await
        };
        let expected: &[&[u8]] = match self.login {
            Some(_) => &[b"+OK", b"+PONG"],
            None => &[b"+PONG"],
        };
        match tokio::time::timeout(timeouts.reply, exchange).await {
            Err(_) => Outcome::Failure(Cause::Timeout),
            Ok(Err(_)) => Outcome::Failure(Cause::Closed),
            Ok(Ok(lines)) if lines == expected => Outcome::Success,
            // An error reply (LOADING, MASTERDOWN, NOAUTH, WRONGPASS) or something not Redis:
            // the upstream answers but cannot serve.
            Ok(Ok(_)) => Outcome::Failure(Cause::ProbeFailed),
        }
    }
}

/// The first `n` reply lines, without their CRLF; a closed connection before them is an
/// error. Only short lines are expected, so reading stops once 1 KiB has come.
async fn read_lines(stream: &mut tokio::net::TcpStream, n: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut data = Vec::with_capacity(32);
    let mut buf = [0u8; 128];
    loop {
        let lines: Vec<Vec<u8>> = data
            .split(|&b| b == b'\n')
            .take(n)
            .filter_map(|l: &[u8]| l.strip_suffix(b"\r").map(<[u8]>::to_vec))
            .collect();
        if lines.len() == n && data.iter().filter(|&&b| b == b'\n').count() >= n {
            return Ok(lines);
        }
        if data.len() >= 1024 {
            return Ok(lines);
        }
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..read]);
    }
}

#[cfg(test)]
mod tests {
    //! The timing logic with a fake probe and paused time; `tests/monitor.rs` runs the real
    //! probe against real redis-server processes.
    use super::*;
    use std::sync::Mutex;

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
}
