//! The health monitor of one upstream: the task that owns its [`Health`], feeds it, publishes
//! its state, and emits the outage events.
//!
//! ```text
//!   data path ──report / suspect──┐
//!                                 ├──▶ unbounded queue ──▶ monitor task: Health::observe
//!   probe task ──outcome──────────┘                          │ on a transition, in order:
//!       ▲                                                   ├─▶ Events::emit
//!       │                                                   └─▶ watch ──▶ data path
//!       └──── its pace follows the published state ◀──────────────┘  (snapshot(), never waits)
//! ```
//!
//! - **Reports.** The data path reports failures only, once per failed connection or connect
//!   attempt (not per request), so the success path costs nothing. A failed connect is
//!   counted as it comes ([`MonitorHandle::report`]). A failure of an established connection
//!   (a timeout, an unframeable reply, a close under requests) may be one client's doing, so
//!   it is a suspicion ([`MonitorHandle::suspect`]): it starts a probe at once and counts only
//!   if that probe fails too. Neither blocks: they push onto an unbounded queue, which
//!   allocates only once per 32 reports.
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
//!   the outage are discarded as soon as requests are forwarded again: from then on writes
//!   may reach the upstream, so a relapse must not serve the earlier outage's values.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Settings, UpstreamTls};
use crate::upstream::health::{Cause, Health, Outcome, State, Thresholds, Transition};
use crate::upstream::outage::{
    AffectedKeyspaces, Counters, Counts, Event, EventKind, Outage, OutageEvents,
};
use bytes::Bytes;

use crate::upstream::handshake;
use crate::upstream::socket;
use crate::upstream::target::Target;

/// What the monitor of one upstream needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSettings {
    /// The upstream's address, as the data path connects to it.
    pub address: String,
    /// The proxy's own login (`AUTH ...`), sent before PING when the upstream needs one.
    pub login: Option<Bytes>,
    /// The data path's connect timeout, used by the probe too (its TLS handshake included).
    pub connect_timeout: Duration,
    /// TLS toward the upstream, as the data path's connections have it.
    pub tls: Option<UpstreamTls>,
    /// Under Sentinel: only a primary (by `ROLE`) passes the probe.
    pub primary_only: bool,
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
    /// busy with one slow command longer than that costs one counted failure, plus the
    /// data path's suspicions it confirms (one per shared connection that timed out).
    pub probe_timeout: Duration,
    /// Counted failures in a row (timeouts, bad replies, failed probes) that make a healthy
    /// upstream unavailable. Default 3: one slow reply or one lost probe never flips it; a hung
    /// upstream is declared unavailable after about `3 × probe_interval + probe_timeout` from
    /// the probe alone, after about `command_timeout + probe_timeout` when requests time out
    /// on three shared connections (their suspicions and the probe they start count
    /// together).
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
            tls: None,
            primary_only: false,
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
    pub(crate) fn from_settings(s: &Settings) -> MonitorSettings {
        MonitorSettings {
            address: s.upstream.name(),
            login: handshake::setup_commands(&s.upstream, false)
                .first()
                .map(|login| login.raw().clone()),
            connect_timeout: s.upstream.connect_timeout,
            tls: s.upstream.tls.clone(),
            primary_only: s.upstream.sentinel.is_some(),
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
    pub(crate) fn upstream_available(&self) -> bool {
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
    pub tls: Option<UpstreamTls>,
    /// Where to probe when set (rather than `address`): the current primary under Sentinel.
    pub target: Option<Arc<Target>>,
    /// Under Sentinel: the probe also asks `ROLE`, and a server that is no longer a primary
    /// (demoted, and the sentinels have not said so yet) fails it.
    pub primary_only: bool,
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
    /// Suspicions raised by the data path so far (see [`MonitorHandle::suspect`]).
    suspected: AtomicU64,
    /// The number of suspicions answered: a probe that started after the last of them got
    /// `+PONG`.
    cleared: AtomicU64,
    /// Wakes the probe task for a suspicion, so the probe runs now.
    probe_now: tokio::sync::Notify,
}

/// The monitor task: the only owner of the `Health`.
struct Driver {
    health: Health,
    publish: watch::Sender<HealthSnapshot>,
    handle: MonitorHandle,
    events: Arc<dyn OutageEvents>,
    keyspaces: AffectedKeyspaces,
    /// The outage under way, if any: when and why it began, and the counts then.
    outage: Option<OutageStart>,
    /// The data path's suspicions that no probe has judged yet, oldest first, each with its
    /// number (see [`MonitorHandle::suspect`]).
    suspicions: Vec<(u64, Cause)>,
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
        events: Arc<dyn OutageEvents>,
        keyspaces: AffectedKeyspaces,
    ) -> Monitor {
        let target = Target::new(&settings.address);
        Monitor::start_at(settings, target, events, keyspaces).await
    }

    /// [`Monitor::start`] probing wherever `target` says the upstream is (Sentinel moves it);
    /// `settings.address` then only names the upstream in events and metrics.
    pub async fn start_at(
        settings: MonitorSettings,
        target: Arc<Target>,
        events: Arc<dyn OutageEvents>,
        keyspaces: AffectedKeyspaces,
    ) -> Monitor {
        let probe = PingProbe {
            address: settings.address.clone(),
            login: settings.login.clone(),
            tls: settings.tls.clone(),
            target: Some(target),
            primary_only: settings.primary_only,
        };
        Monitor::start_with(settings, probe, events, keyspaces).await
    }

    /// [`Monitor::start`] with another probe.
    pub async fn start_with<P: Probe>(
        settings: MonitorSettings,
        probe: P,
        events: Arc<dyn OutageEvents>,
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
                suspected: AtomicU64::new(0),
                cleared: AtomicU64::new(0),
                probe_now: tokio::sync::Notify::new(),
            }),
        };
        let mut driver = Driver {
            health,
            publish,
            handle: handle.clone(),
            events,
            keyspaces,
            outage: None,
            suspicions: Vec::new(),
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

    /// The data path saw a failure that one client's command could have caused (a request
    /// with no reply within the command timeout, a reply it cannot frame, an established
    /// connection lost): a suspicion, not a verdict. It counts toward an outage only if the
    /// upstream also fails the probe, which runs now and then at the recovery pace until one
    /// succeeds or the upstream is declared unavailable. Returns the suspicion's number, for
    /// [`Self::cleared`]. Never blocks.
    pub fn suspect(&self, cause: Cause) -> u64 {
        let number = self.shared.suspected.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = self.shared.reports.send(Report::Suspect(number, cause));
        self.shared.probe_now.notify_one();
        number
    }

    /// Suspicions raised so far.
    pub fn suspicions(&self) -> u64 {
        self.shared.suspected.load(Ordering::Relaxed)
    }

    /// Whether a probe that started after suspicion `number` was raised got `+PONG`: the
    /// upstream answers, so whatever raised it is not about the upstream.
    pub fn cleared(&self, number: u64) -> bool {
        self.shared.cleared.load(Ordering::Acquire) >= number
    }

    /// A reload: the probe pace, timeouts and thresholds of `settings` apply from the next
    /// probe and report on (the address and login stay), and later events name `keyspaces`.
    pub(crate) fn reconfigure(&self, settings: &MonitorSettings, keyspaces: AffectedKeyspaces) {
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
                Report::Outcome(outcome) => self.observe(outcome),
                Report::Suspect(number, cause) => {
                    // Only a healthy upstream needs convincing; otherwise the probe is already
                    // the judge, and recovering relapses on its next failed probe.
                    if self.health.state() == State::Healthy {
                        self.suspicions.push((number, cause));
                    }
                }
                Report::Probe(Outcome::Success, seen) => {
                    // The upstream answers: what was suspected before the probe started is not
                    // about it.
                    self.suspicions.retain(|&(number, _)| number > seen);
                    self.observe(Outcome::Success);
                }
                Report::Probe(failure, _) => {
                    // Confirmed: the suspicions count, in the order they were raised, then
                    // the probe's own failure. Those raised while it ran count too: it failed
                    // across that time (a probe that started earlier and times out saw the
                    // same silence), and waiting for the next one would delay a hang's
                    // detection by a probe timeout.
                    for (_, cause) in std::mem::take(&mut self.suspicions) {
                        self.observe(Outcome::Failure(cause));
                    }
                    self.observe(failure);
                }
                Report::Retune(retune) => {
                    self.health.set_thresholds(retune.thresholds);
                    self.keyspaces = retune.keyspaces;
                }
            }
        }
    }

    fn observe(&mut self, outcome: Outcome) {
        if let Some(t) = self.health.observe(outcome, Instant::now()) {
            self.on_transition(t);
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
    /// Counted as it comes: a failed connect, a test's report.
    Outcome(Outcome),
    /// A suspicion from the data path, with its number.
    Suspect(u64, Cause),
    /// A probe's outcome, with the number of the last suspicion raised before it started.
    Probe(Outcome, u64),
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
/// `unavailable` found by the data path brings the next probe forward. While a suspicion is
/// unanswered the pace is the recovery one, and a new suspicion starts a probe at once.
async fn probe_loop<P: Probe>(probe: P, handle: MonitorHandle, mut last: Instant) {
    let mut state = handle.subscribe();
    let shared = &*handle.shared;
    loop {
        loop {
            let pace = handle.tuning().pace;
            let suspected = shared.suspected.load(Ordering::Acquire);
            let due = if suspected > shared.cleared.load(Ordering::Acquire) {
                last + pace.otherwise
            } else {
                last + pace.interval(state.borrow_and_update().state)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                changed = state.changed() => {
                    if changed.is_err() {
                        return; // the monitor task is gone
                    }
                }
                // A reload: the interval is read again.
                _ = shared.retuned.notified() => {}
                _ = shared.probe_now.notified() => break,
            }
        }
        last = Instant::now();
        let seen = shared.suspected.load(Ordering::Acquire);
        let outcome = probe.probe(handle.tuning().timeouts).await;
        if outcome == Outcome::Success {
            shared.cleared.fetch_max(seen, Ordering::AcqRel);
        }
        let _ = shared.reports.send(Report::Probe(outcome, seen));
    }
}

impl Probe for PingProbe {
    async fn probe(&self, timeouts: ProbeTimeouts) -> Outcome {
        let tls = self.tls.as_ref();
        let address = match &self.target {
            Some(target) => target.current().to_string(),
            None => self.address.clone(),
        };
        let stream = match socket::connect_upstream(&address, timeouts.connect, None, tls).await {
            Ok(stream) => stream,
            Err(e) => return Outcome::Failure(Cause::of_connect_error(&e)),
        };
        let exchange = async {
            let mut wire = Vec::new();
            if let Some(login) = &self.login {
                wire.extend_from_slice(login);
            }
            wire.extend_from_slice(b"PING\r\n");
            if self.primary_only {
                wire.extend_from_slice(b"ROLE\r\n");
            }
            let n = 1 + usize::from(self.login.is_some()) + 3 * usize::from(self.primary_only);
            stream.write_all(&wire).await?;
            read_lines(&stream, n).await
        };
        let mut expected: Vec<&[u8]> = Vec::with_capacity(5);
        if self.login.is_some() {
            expected.push(b"+OK");
        }
        expected.push(b"+PONG");
        if self.primary_only {
            // The head of ROLE's reply from a primary: `*3`, `$6`, `master`.
            expected.extend([&b"*3"[..], b"$6", b"master"]);
        }
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
async fn read_lines(stream: &socket::Conn, n: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut data = bytes::BytesMut::with_capacity(128);
    loop {
        let lines: Vec<Vec<u8>> = data[..]
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
        if stream.read_some(&mut data, 128).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
