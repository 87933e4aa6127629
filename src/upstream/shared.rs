//! The upstream multiplexer: a few shared connections to the upstream Redis, each carrying the
//! requests of many clients.
//!
//! A session appends the raw bytes of a run of requests to a connection's write buffer and, in
//! the same lock hold, a [`Waiter`] saying how many replies it expects and where to deliver them.
//! Bytes and waiters therefore leave in the same order, and since Redis answers a connection in
//! order, replies come back as contiguous runs: the connection task frames them with the
//! [`ReplyScanner`] and hands each run, as raw bytes, to the waiting session's [`Inbox`].
//!
//! Each connection is one task that owns its socket:
//!
//! ```text
//!   connecting ──ok──▶ up ──read/write error, EOF, timeout, bad reply──▶ down
//!       ▲                                                                  │
//!       └──────────── backoff (or sooner when a request arrives) ◀────────┘
//! ```
//!
//! While a connection is down, `send` fails at once, so no request waits on a connect timeout.
//! When a connection fails, every request queued or in flight on it gets an error reply; none is
//! retried, because the proxy cannot know whether a write was applied.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use std::io::IoSlice;
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::command::holds_the_server;
use crate::config::{Limits, UpstreamSettings};
use crate::error::{ProxyError, UpstreamFailure};
use crate::protocol::request::Request;
use crate::protocol::scanner::ReplyScanner;
use crate::upstream::cluster::relay::Relay;
use crate::upstream::handshake::setup_commands;
use crate::upstream::health::{Cause, Outcome, State};
use crate::upstream::histogram::Histogram;
use crate::upstream::holds::{HoldMark, Holds};
use crate::upstream::inbox::{Chunk, Inbox};
use crate::upstream::monitor::{HealthSnapshot, MonitorHandle};
use crate::upstream::socket::{self, Conn};
use crate::upstream::target::Target;
use crate::upstream::workers;

/// Read buffer growth step for upstream replies.
const READ_CHUNK: usize = 16 * 1024;

/// Most slices handed to one `writev` of large segments.
const MAX_SLICES: usize = 64;

/// Requests this large are written to the upstream from the client's own buffer rather than
/// copied into the connection's (a 1 MB SET is then never copied on its way).
const LARGE: usize = 16 * 1024;

/// The pools of shared connections to one upstream: one for RESP2 clients and one for RESP3
/// clients (the two never share a connection, since replies are forwarded as they come), each
/// with `connections` per worker (see [`crate::upstream::workers`]): a session uses its own
/// worker's.
pub(crate) struct Upstream {
    /// The timeouts every shared connection reads (see [`Upstream::retune`]).
    timing: Arc<Timing>,
    /// What the upstream is busy with by clients' choice, for every connection's timeouts.
    holds: Arc<Holds>,
    /// Worker 0's connections, then worker 1's...
    conns: Box<[Arc<SharedConn>]>,
    conns3: Box<[Arc<SharedConn>]>,
    /// Connections per worker in each pool.
    per_worker: usize,
    /// The upstream's `redis_version`, as its HELLO reply gave it on a RESP3 connection.
    version: Arc<Mutex<Option<Arc<str>>>>,
    /// Shared connections made (first connects and reconnects), for the metrics.
    connects: Arc<AtomicUsize>,
    /// How long runs of requests waited for their replies on shared connections.
    latency: Arc<Histogram>,
    next: AtomicUsize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the upstream is now.
    target: Arc<Target>,
}

impl Upstream {
    /// Where the upstream is now: where new connections go.
    pub(crate) fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Starts the connection tasks, each pool's share on its worker's runtime.
    pub(crate) fn start(
        settings: &UpstreamSettings,
        limits: &Limits,
        keepalive: Option<Duration>,
        monitor: MonitorHandle,
        target: Arc<Target>,
    ) -> Arc<Upstream> {
        let workers = workers::count();
        let mut tasks = Vec::with_capacity(2 * workers * settings.connections);
        let reached = Arc::new(Notify::new());
        let version = Arc::new(Mutex::new(None));
        let connects = Arc::new(AtomicUsize::new(0));
        let latency = Arc::new(Histogram::default());
        let timing = Arc::new(Timing::default());
        timing.set(settings, limits, keepalive);
        let holds = Holds::new();
        let mut pool = |resp3: bool, first_id: usize| -> Box<[Arc<SharedConn>]> {
            (0..workers * settings.connections)
                .map(|i| {
                    let conn = Arc::new(SharedConn::new(resp3, holds.clone()));
                    let task = ConnTask {
                        id: first_id + i,
                        conn: conn.clone(),
                        setup: setup_commands(settings, resp3),
                        settings: settings.clone(),
                        target: target.clone(),
                        timing: timing.clone(),
                        reached: reached.clone(),
                        monitor: monitor.clone(),
                        version: version.clone(),
                        connects: connects.clone(),
                        latency: latency.clone(),
                    };
                    let worker = i / settings.connections;
                    tasks.push(workers::spawn_on(worker, task.run()));
                    conn
                })
                .collect()
        };
        let conns = pool(false, 0);
        let conns3 = pool(true, workers * settings.connections);
        Arc::new(Upstream {
            timing,
            holds,
            conns,
            conns3,
            per_worker: settings.connections,
            version,
            connects,
            latency,
            next: AtomicUsize::new(0),
            tasks,
            target,
        })
    }

    /// Applies a reload's timeouts and limits to every shared connection: the next connect,
    /// backoff and timeout check use the timeouts; the reply depth limit and keepalive apply
    /// from the next connect. The address, credentials and pool size are fixed for the life
    /// of the process.
    pub(crate) fn retune(
        &self,
        settings: &UpstreamSettings,
        limits: &Limits,
        keepalive: Option<Duration>,
    ) {
        self.timing.set(settings, limits, keepalive);
    }

    /// Stops the connection tasks (at shutdown, once clients are gone).
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// The connection a client session uses for all its shared requests (in the pool of its
    /// protocol). A client stays on one connection so that its own requests are applied in the
    /// order it sent them.
    pub(crate) fn pick(&self, resp3: bool) -> Arc<SharedConn> {
        let pool = self.pool(resp3);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        pool[i].clone()
    }

    /// The connection of `lane` (a session's own number): a cluster's sessions use one
    /// connection per shard, so that their requests to a shard stay in order.
    pub(crate) fn lane(&self, resp3: bool, lane: usize) -> Arc<SharedConn> {
        let pool = self.pool(resp3);
        pool[lane % pool.len()].clone()
    }

    /// A connection that is up, for a session whose own connection is down and that has no
    /// reply outstanding (so moving cannot reorder anything). None if every one is down.
    pub(crate) fn pick_up(&self, resp3: bool) -> Option<Arc<SharedConn>> {
        let pool = self.pool(resp3);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..pool.len())
            .map(|k| &pool[(start + k) % pool.len()])
            .find(|c| c.is_up())
            .cloned()
    }

    /// Reply latency of requests on shared connections: from being written to the upstream
    /// to the last reply of their run.
    pub(crate) fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Shared connections made since the start (first connects and reconnects).
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed) as u64
    }

    /// The upstream's version, once a connection has learned it.
    pub(crate) fn version(&self) -> Option<Arc<str>> {
        self.version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The upstream's holds, which dedicated connections share with the shared ones.
    pub(crate) fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }

    /// Whether requests are queued on one of the calling worker's connections (of the
    /// protocol's pool) that its connection task will take and write when it next runs. A
    /// session about to write replies to its client lets those tasks run first (see
    /// `Session::drive`), so that Redis starts on the requests while the replies are written,
    /// as an event loop writes to its servers before its clients.
    pub(crate) fn queued_here(&self, resp3: bool) -> bool {
        self.pool(resp3).iter().any(|c| c.wants_turn())
    }

    /// The calling worker's share of a pool.
    fn pool(&self, resp3: bool) -> &[Arc<SharedConn>] {
        let all = if resp3 { &self.conns3 } else { &self.conns };
        let workers = all.len() / self.per_worker;
        let first = (workers::current() % workers) * self.per_worker;
        &all[first..first + self.per_worker]
    }
}

/// One shared upstream connection, as sessions see it.
pub(crate) struct SharedConn {
    queue: Mutex<Queue>,
    /// Wakes the connection task: work queued, or a request arrived while down.
    wake: Notify,
    /// Work is queued that the connection task has not taken yet (written under the queue's
    /// lock; read without it by sessions about to write replies: see [`Upstream::queued_here`]).
    queued: AtomicBool,
    /// The connection task takes queued work as soon as it runs: it is up and has nothing
    /// left to write (while it waits for the socket, or to connect, queued work waits too).
    taking: AtomicBool,
    /// Speaks RESP3 (set up with HELLO 3).
    resp3: bool,
    holds: Arc<Holds>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Never connected yet: requests queue and go out once connected.
    Connecting,
    Up,
    Down(UpstreamFailure),
}

/// Work handed from sessions to the connection task.
struct Queue {
    link: Link,
    /// Requests' bytes, copied in; when `large` is not empty, they follow all of it.
    wbuf: BytesMut,
    /// Requests of [`LARGE`] bytes or more, not copied (each is a slice of its client's input
    /// buffer), with the copied bytes that came before each, in order.
    large: VecDeque<Bytes>,
    waiters: Vec<Waiter>,
}

/// A run of requests from one session, waiting for its replies.
struct Waiter {
    owner: Owner,
    /// Replies to drop before the ones delivered (a transaction's +OK and +QUEUED, which the
    /// proxy already answered).
    skip: u32,
    remaining: u32,
    /// Held while its run holds the upstream (a script, KEYS, ...): see [`Holds`].
    _hold: Option<HoldMark>,
}

/// Where a waiter's replies go.
enum Owner {
    /// A session's inbox.
    Client(Arc<Inbox>),
    /// The proxy's own setup commands: their replies are checked and dropped.
    Setup,
    /// Parts of a cluster relay: the replies are for parts `ids[at..]`, in order.
    Relay {
        relay: Arc<Relay>,
        ids: Box<[u32]>,
        at: usize,
    },
    /// A session that was answered with the command timeout: its replies, if they come, are
    /// dropped, and the requests behind it keep their place.
    TimedOut,
}

impl Waiter {
    /// Answers the waiting client with `why` now, for each reply still owed, and drops those
    /// replies when they arrive.
    fn time_out(&mut self, why: UpstreamFailure) {
        match std::mem::replace(&mut self.owner, Owner::TimedOut) {
            Owner::Client(inbox) => inbox.deliver(Chunk {
                data: repeat(&ProxyError::from(why).to_reply(), self.remaining as usize),
                frames: self.remaining,
            }),
            Owner::Relay { relay, ids, at } => relay.fail(&ids[at..], why),
            Owner::Setup | Owner::TimedOut => {}
        }
    }
}

impl SharedConn {
    /// A connection not yet connected: requests queue until it is.
    fn new(resp3: bool, holds: Arc<Holds>) -> SharedConn {
        SharedConn {
            queue: Mutex::new(Queue {
                link: Link::Connecting,
                wbuf: BytesMut::new(),
                large: VecDeque::new(),
                waiters: Vec::new(),
            }),
            wake: Notify::new(),
            queued: AtomicBool::new(false),
            taking: AtomicBool::new(false),
            resp3,
            holds,
        }
    }

    /// Queues `reqs` (all from one session, in order) for the upstream; their replies will be
    /// delivered to `inbox`, in order, as chunks summing to `reqs.len()` frames.
    ///
    /// While this connection is down: if the health monitor says the upstream is unavailable,
    /// fails at once, queueing nothing (no request waits on a connect); if the monitor says it
    /// is back (a probe got through before this connection reconnected), the requests wait
    /// for the reconnect, which they trigger at once.
    pub(crate) fn send(
        &self,
        reqs: &[Request],
        inbox: &Arc<Inbox>,
        upstream_available: bool,
    ) -> Result<(), UpstreamFailure> {
        debug_assert!(!reqs.is_empty());
        self.enqueue(reqs, inbox, upstream_available, 0)
    }

    /// Queues a transaction the proxy queued for the client: MULTI, the commands, EXEC, sent
    /// in one piece so that no other client's request comes between them. Only EXEC's reply is
    /// delivered (one frame); the others were answered by the proxy when the client queued.
    pub(crate) fn send_transaction(
        &self,
        reqs: &[Request],
        inbox: &Arc<Inbox>,
        upstream_available: bool,
    ) -> Result<(), UpstreamFailure> {
        debug_assert!(reqs.len() >= 2);
        self.enqueue(reqs, inbox, upstream_available, reqs.len() as u32 - 1)
    }

    /// Queues `reqs` for a cluster relay: the replies after the first `skip` are for its parts
    /// `ids`, one each.
    pub(crate) fn send_relay(
        &self,
        reqs: &[Request],
        relay: Arc<Relay>,
        ids: Box<[u32]>,
        skip: u32,
        upstream_available: bool,
    ) -> Result<(), UpstreamFailure> {
        debug_assert_eq!(reqs.len() as u32 - skip, ids.len() as u32);
        let owner = Owner::Relay { relay, ids, at: 0 };
        self.enqueue_for(reqs, owner, upstream_available, skip)
    }

    /// Queues `reqs`, whose replies after the first `skip` go to `inbox` (see [`Self::send`]).
    fn enqueue(
        &self,
        reqs: &[Request],
        inbox: &Arc<Inbox>,
        upstream_available: bool,
        skip: u32,
    ) -> Result<(), UpstreamFailure> {
        self.enqueue_for(reqs, Owner::Client(inbox.clone()), upstream_available, skip)
    }

    fn enqueue_for(
        &self,
        reqs: &[Request],
        owner: Owner,
        upstream_available: bool,
        skip: u32,
    ) -> Result<(), UpstreamFailure> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Link::Down(why) = q.link {
            if !upstream_available {
                drop(q);
                // Ask for a reconnect attempt now rather than at the end of the backoff.
                self.wake.notify_one();
                return Err(why);
            }
        }
        let mut hold = None;
        for r in reqs {
            if r.raw().len() >= LARGE {
                if !q.wbuf.is_empty() {
                    let copied = q.wbuf.split().freeze();
                    q.large.push_back(copied);
                }
                q.large.push_back(r.raw().clone());
            } else {
                q.wbuf.put_slice(r.raw());
            }
            if let Some(h) = holds_the_server(r) {
                // One mark covers the run: its replies come in order, the hold's at worst last.
                let mark = self.holds.begin(h);
                hold = hold.or(mark);
            }
        }
        q.waiters.push(Waiter {
            owner,
            skip,
            remaining: reqs.len() as u32 - skip,
            _hold: hold,
        });
        self.queued.store(true, Ordering::Relaxed);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Queued work that the connection task will take and write at its next turn.
    fn wants_turn(&self) -> bool {
        self.queued.load(Ordering::Relaxed) && self.taking.load(Ordering::Relaxed)
    }

    /// Says whether the connection task takes work as soon as it runs (a store only when it
    /// changes).
    fn set_taking(&self, taking: bool) {
        if self.taking.load(Ordering::Relaxed) != taking {
            self.taking.store(taking, Ordering::Relaxed);
        }
    }

    /// Whether this connection speaks RESP3.
    pub(crate) fn is_resp3(&self) -> bool {
        self.resp3
    }

    fn is_up(&self) -> bool {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).link == Link::Up
    }

    /// Sets the link state; going down drops the queued bytes and returns the queued waiters,
    /// which the caller fails.
    fn set_link(&self, link: Link) -> Vec<Waiter> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.link = link;
        if matches!(link, Link::Down(_)) {
            self.queued.store(false, Ordering::Relaxed);
            q.wbuf.clear();
            q.large.clear();
            std::mem::take(&mut q.waiters)
        } else {
            Vec::new()
        }
    }

    /// Moves queued work into the task's own buffers (swapping write buffers keeps both
    /// allocations alive, so a busy connection does not reallocate).
    fn take(
        &self,
        wbuf: &mut BytesMut,
        large: &mut VecDeque<Bytes>,
        into: &mut VecDeque<InFlight>,
        now: Instant,
    ) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.queued.store(false, Ordering::Relaxed);
        // Called only once the task has written everything it held (or, at connect, with
        // only the setup commands, nothing written): `written` never counts into bytes that
        // are about to move behind others.
        debug_assert!(
            large.is_empty(),
            "large segments taken before the last were written"
        );
        if !q.large.is_empty() {
            // What the task holds goes first, then the queue's large requests (with what was
            // copied before each), then what was copied after the last.
            if !wbuf.is_empty() {
                large.push_back(wbuf.split().freeze());
            }
            large.extend(q.large.drain(..));
        }
        if wbuf.is_empty() {
            std::mem::swap(wbuf, &mut q.wbuf);
        } else {
            wbuf.put_slice(&q.wbuf);
            q.wbuf.clear();
        }
        into.extend(
            q.waiters
                .drain(..)
                .map(|waiter| InFlight { waiter, since: now }),
        );
    }
}

/// Puts the task at the back of its thread's run queue once: every task already queued runs
/// first. (tokio's `yield_now` instead waits for the next poll of the sockets, behind the tasks
/// it wakes.)
#[derive(Default)]
struct ToBack(bool);

impl std::future::Future for ToBack {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Replies every waiter with `why`, in order.
fn fail_all(waiters: impl IntoIterator<Item = Waiter>, why: UpstreamFailure) {
    let err = ProxyError::from(why).to_reply();
    for w in waiters {
        match w.owner {
            Owner::Client(inbox) => inbox.deliver(Chunk {
                data: repeat(&err, w.remaining as usize),
                frames: w.remaining,
            }),
            Owner::Relay { relay, ids, at } => relay.fail(&ids[at..], why),
            Owner::Setup | Owner::TimedOut => {}
        }
    }
}

fn repeat(reply: &Bytes, n: usize) -> Bytes {
    if n == 1 {
        return reply.clone();
    }
    let mut out = BytesMut::with_capacity(reply.len() * n);
    for _ in 0..n {
        out.put_slice(reply);
    }
    out.freeze()
}

/// A waiter whose requests have been taken by the connection task.
struct InFlight {
    waiter: Waiter,
    /// When its requests were taken for writing, for the command timeout.
    since: Instant,
}

/// The shared connections' timeouts (as nanoseconds) and limits, read at each use so that a
/// reload applies without reconnecting.
#[derive(Debug, Default)]
struct Timing {
    connect_timeout: AtomicU64,
    command_timeout: AtomicU64,
    backoff_min: AtomicU64,
    backoff_max: AtomicU64,
    /// 0 = off.
    keepalive: AtomicU64,
    max_reply_depth: AtomicUsize,
}

impl Timing {
    fn set(&self, s: &UpstreamSettings, limits: &Limits, keepalive: Option<Duration>) {
        let put = |to: &AtomicU64, d: Duration| to.store(d.as_nanos() as u64, Ordering::Relaxed);
        put(&self.connect_timeout, s.connect_timeout);
        put(&self.command_timeout, s.command_timeout);
        put(&self.backoff_min, s.reconnect_backoff_min);
        put(&self.backoff_max, s.reconnect_backoff_max);
        put(&self.keepalive, keepalive.unwrap_or(Duration::ZERO));
        (self.max_reply_depth).store(limits.max_reply_depth, Ordering::Relaxed);
    }

    fn keepalive(&self) -> Option<Duration> {
        Some(Timing::get(&self.keepalive)).filter(|d| !d.is_zero())
    }

    fn max_reply_depth(&self) -> usize {
        self.max_reply_depth.load(Ordering::Relaxed)
    }

    fn get(from: &AtomicU64) -> Duration {
        Duration::from_nanos(from.load(Ordering::Relaxed))
    }

    fn connect_timeout(&self) -> Duration {
        Timing::get(&self.connect_timeout)
    }

    fn command_timeout(&self) -> Duration {
        Timing::get(&self.command_timeout)
    }

    fn backoff_min(&self) -> Duration {
        Timing::get(&self.backoff_min)
    }

    fn backoff_max(&self) -> Duration {
        Timing::get(&self.backoff_max)
    }
}

struct ConnTask {
    id: usize,
    conn: Arc<SharedConn>,
    /// Sent first on every new connection (see [`setup_commands`](crate::upstream::handshake::setup_commands)).
    setup: Vec<Request>,
    settings: UpstreamSettings,
    /// Where the upstream is now (Sentinel may move it).
    target: Arc<Target>,
    /// The timeouts and limits in force (a reload changes them).
    timing: Arc<Timing>,
    /// Signalled by any connection of the pool that reaches the upstream, so that the others
    /// retry at once instead of waiting out their backoff.
    reached: Arc<Notify>,
    /// Told of every connection failure (never of a request's error reply: that is an answer).
    monitor: MonitorHandle,
    /// Where a setup HELLO's `version` goes (see [`Upstream::version`]).
    version: Arc<Mutex<Option<Arc<str>>>>,
    connects: Arc<AtomicUsize>,
    latency: Arc<Histogram>,
}

impl ConnTask {
    async fn run(self) {
        let timing = &*self.timing;
        let mut backoff = timing.backoff_min();
        let mut was_up = true;
        let mut switched = self.target.subscribe();
        loop {
            let attempt = Instant::now();
            switched.borrow_and_update();
            let addr = &*self.target.current();
            let tls = self.settings.tls.as_ref();
            match socket::connect_upstream(addr, timing.connect_timeout(), timing.keepalive(), tls)
                .await
            {
                Ok(stream) => {
                    backoff = timing.backoff_min();
                    self.connects.fetch_add(1, Ordering::Relaxed);
                    self.conn.set_link(Link::Up);
                    self.reached.notify_waiters();
                    tracing::info!(conn = self.id, upstream = addr, "upstream connected");
                    was_up = true;
                    let mut link = Connection::new(
                        stream,
                        timing.max_reply_depth(),
                        self.version.clone(),
                        self.latency.clone(),
                    );
                    link.set_up(&self.setup);
                    let mut health = self.monitor.subscribe();
                    let why = link
                        .serve(
                            &self.conn,
                            timing,
                            &self.monitor,
                            &mut health,
                            &mut switched,
                        )
                        .await;
                    self.conn.set_taking(false);
                    tracing::warn!(conn = self.id, upstream = addr, cause = %why, "upstream connection failed");
                    // A connection that closes with nothing in flight (Redis's idle timeout,
                    // CLIENT KILL) says little; the reconnect right after reports a refusal if
                    // the upstream is really gone.
                    // A refused setup is a configuration problem, not an outage; and an upstream
                    // the monitor declared unavailable is news from the monitor itself.
                    // Anything else may be one client's doing (a reply it made Redis send, a
                    // command that keeps the connection busy): a suspicion the probe judges.
                    let quiet = why == UpstreamFailure::ConnectionLost && link.in_flight.is_empty();
                    let news = !matches!(
                        why,
                        UpstreamFailure::SetupRefused | UpstreamFailure::Unavailable
                    );
                    if !quiet && news {
                        self.monitor.suspect(why.into());
                    }
                    // In-flight work first: it was queued before anything still in the queue.
                    fail_all(link.in_flight.into_iter().map(|f| f.waiter), why);
                    let queued = self.conn.set_link(Link::Down(why));
                    fail_all(queued, why);
                }
                Err(e) => {
                    self.monitor
                        .report(Outcome::Failure(Cause::of_connect_error(&e)));
                    let queued = self.conn.set_link(Link::Down(UpstreamFailure::Unavailable));
                    fail_all(queued, UpstreamFailure::Unavailable);
                    if was_up {
                        tracing::warn!(conn = self.id, upstream = addr, error = %e, "upstream connect failed");
                        was_up = false;
                    }
                    // Wait out the backoff, or less if a client is waiting: then only the
                    // minimum spacing between attempts applies.
                    let min = attempt + timing.backoff_min();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = async {
                            tokio::select! {
                                _ = self.conn.wake.notified() => {}
                                _ = self.reached.notified() => {}
                            }
                            tokio::time::sleep_until(min).await;
                        } => {}
                    }
                    backoff = (backoff * 2).min(timing.backoff_max());
                }
            }
        }
    }
}

/// The task's side of one live upstream socket.
struct Connection {
    stream: Conn,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Large requests (and the copied bytes before each), written before `wbuf`; `written`
    /// counts into the first of them while there is one.
    large: VecDeque<Bytes>,
    written: usize,
    in_flight: VecDeque<InFlight>,
    scanner: ReplyScanner,
    /// Bytes of `rbuf` already framed for the head waiter but not yet delivered.
    framed: usize,
    /// The last time the upstream took request bytes or sent reply bytes.
    last_progress: Instant,
    /// Raised when the oldest request timed out, until the upstream moves again or the probe
    /// judges it.
    suspicion: Option<Suspicion>,
    version: Arc<Mutex<Option<Arc<str>>>>,
    latency: Arc<Histogram>,
}

/// A command timeout the monitor was told of (see [`Connection::check_timeout`]).
struct Suspicion {
    /// Its number with the monitor.
    number: u64,
    since: Instant,
    /// When this connection saw that a probe answered since.
    cleared: Option<Instant>,
}

enum Event {
    Readable,
    Writable,
    Work,
    Tick,
    Health,
}

impl Connection {
    fn new(
        stream: Conn,
        max_reply_depth: usize,
        version: Arc<Mutex<Option<Arc<str>>>>,
        latency: Arc<Histogram>,
    ) -> Connection {
        Connection {
            version,
            latency,
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            large: VecDeque::new(),
            written: 0,
            in_flight: VecDeque::new(),
            scanner: ReplyScanner::new(max_reply_depth),
            framed: 0,
            last_progress: Instant::now(),
            suspicion: None,
        }
    }

    /// Queues the proxy's setup commands ahead of any client request.
    fn set_up(&mut self, setup: &[Request]) {
        if setup.is_empty() {
            return;
        }
        for req in setup {
            self.wbuf.put_slice(req.raw());
        }
        self.in_flight.push_back(InFlight {
            waiter: Waiter {
                owner: Owner::Setup,
                skip: 0,
                remaining: setup.len() as u32,
                _hold: None,
            },
            since: Instant::now(),
        });
    }

    /// Carries requests and replies until the connection fails, and says why.
    async fn serve(
        &mut self,
        conn: &SharedConn,
        timing: &Timing,
        monitor: &MonitorHandle,
        health: &mut watch::Receiver<HealthSnapshot>,
        switched: &mut watch::Receiver<Arc<str>>,
    ) -> UpstreamFailure {
        // Timeouts are checked on a tick rather than with a timer per request: arming a timer
        // for every batch would cost more than the requests themselves. The tick's period is
        // set by the timeout when the connection opens; each check reads the one in force.
        let mut tick = timeout_tick(timing.command_timeout());
        // Work queued while connecting: its wake-up may have been spent ending the backoff.
        conn.take(
            &mut self.wbuf,
            &mut self.large,
            &mut self.in_flight,
            Instant::now(),
        );
        if let Err(why) = self.write() {
            return why;
        }
        loop {
            let pending_write = self.written < self.wbuf.len()
                || !self.large.is_empty()
                || self.stream.wants_write();
            conn.set_taking(!pending_write);
            let event = tokio::select! {
                biased;
                // Sentinel named another primary: this one is no longer the upstream. First,
                // so that no batch goes to the old one once it is known; what was sent may
                // have run there, so it fails as a lost connection, not as never sent.
                Ok(()) = switched.changed() => return UpstreamFailure::ConnectionLost,
                r = self.stream.readable() => match r {
                    Ok(()) => Event::Readable,
                    Err(_) => return UpstreamFailure::ConnectionLost,
                },
                r = self.stream.writable(), if pending_write => match r {
                    Ok(()) => Event::Writable,
                    Err(_) => return UpstreamFailure::ConnectionLost,
                },
                _ = conn.wake.notified(), if !pending_write => Event::Work,
                _ = tick.tick(), if !self.in_flight.is_empty() => Event::Tick,
                r = health.changed() => match r {
                    Ok(()) => Event::Health,
                    // The monitor stopped (shutdown): nothing more to hear from it.
                    Err(_) => std::future::pending().await,
                },
            };
            let result = match event {
                Event::Readable => self.read(),
                Event::Writable => self.write(),
                Event::Work => {
                    if conn.queued.load(Ordering::Relaxed) {
                        // The sessions that read requests in this turn of the thread are ahead
                        // in its run queue: behind them, one write carries all their requests.
                        ToBack::default().await;
                    }
                    conn.take(
                        &mut self.wbuf,
                        &mut self.large,
                        &mut self.in_flight,
                        Instant::now(),
                    );
                    self.write()
                }
                Event::Tick => self.check_timeout(timing.command_timeout(), &conn.holds, monitor),
                Event::Health if health.borrow_and_update().state == State::Unavailable => {
                    self.declared_unavailable(timing.command_timeout(), &conn.holds)
                }
                Event::Health => Ok(()),
            };
            if let Err(why) = result {
                return why;
            }
        }
    }

    fn write(&mut self) -> Result<(), UpstreamFailure> {
        while !self.large.is_empty() {
            // The large segments, then the copied bytes after them, in one writev.
            let sent = {
                let mut slices: SmallVec<[IoSlice<'_>; 8]> = SmallVec::new();
                let mut skip = self.written;
                for seg in self.large.iter().take(MAX_SLICES - 1) {
                    slices.push(IoSlice::new(&seg[skip..]));
                    skip = 0;
                }
                if self.large.len() < MAX_SLICES && !self.wbuf.is_empty() {
                    slices.push(IoSlice::new(&self.wbuf));
                }
                self.stream.try_write_vectored(&slices)
            };
            match sent {
                Ok(mut n) => {
                    self.last_progress = Instant::now();
                    // Drop what went out: whole segments, then part of the next.
                    while let Some(front) = self.large.front() {
                        let left = front.len() - self.written;
                        if n < left {
                            self.written += n;
                            n = 0;
                            break;
                        }
                        n -= left;
                        self.large.pop_front();
                        self.written = 0;
                    }
                    // What is left went into the copied bytes after the segments.
                    self.written += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(UpstreamFailure::ConnectionLost),
            }
        }
        while self.written < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[self.written..]) {
                Ok(n) => {
                    // The upstream is reading what it was sent (a hung one fills the socket
                    // buffers and stops taking bytes): progress, as a reply would be.
                    self.written += n;
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(UpstreamFailure::ConnectionLost),
            }
        }
        self.wbuf.clear();
        self.written = 0;
        // TLS records the socket did not take yet (none on a plain connection).
        match self.stream.flush_records() {
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                Err(UpstreamFailure::ConnectionLost)
            }
            _ => Ok(()),
        }
    }

    fn read(&mut self) -> Result<(), UpstreamFailure> {
        // The frame being read starts `framed` bytes in (or at 0, skipping a transaction's
        // replies: it is then the scanner's frame too).
        let wants = match self.scanner.wants() {
            0 => 0,
            n => n + self.framed,
        };
        crate::protocol::make_room(&mut self.rbuf, wants, READ_CHUNK, usize::MAX);
        match self.stream.read_available(&mut self.rbuf) {
            Ok(0) => Err(UpstreamFailure::ConnectionLost),
            Ok(_) => {
                self.last_progress = Instant::now();
                self.deliver()
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(UpstreamFailure::ConnectionLost),
        }
    }

    /// Frames the replies read so far and hands each waiter the ones that are its own. A RESP3
    /// push answers no request, and no client owns a shared connection: it is dropped where it
    /// stands, so it never takes a reply's place.
    fn deliver(&mut self) -> Result<(), UpstreamFailure> {
        while let Some(head) = self.in_flight.front_mut() {
            while head.waiter.skip > 0 {
                match self.scanner.scan(&self.rbuf) {
                    Ok(Some(frame)) => {
                        let _ = self.rbuf.split_to(frame.len);
                        head.waiter.skip -= u32::from(!frame.push);
                    }
                    Ok(None) => return Ok(()),
                    Err(_) => return Err(UpstreamFailure::BadReply),
                }
            }
            let mut frames = 0;
            // Whether a reply is an error (a cluster relay looks for redirections only then).
            let mut errors = false;
            while frames < head.waiter.remaining {
                match self.scanner.scan(&self.rbuf[self.framed..]) {
                    Ok(Some(frame)) if frame.push => {
                        // Cut it out: the replies framed before it stay, in order.
                        let mut rest = self.rbuf.split_off(self.framed);
                        let _ = rest.split_to(frame.len);
                        self.rbuf.unsplit(rest);
                    }
                    Ok(Some(frame)) => {
                        if matches!(head.waiter.owner, Owner::Setup) {
                            let reply = &self.rbuf[self.framed..self.framed + frame.len];
                            if reply[0] == b'-' {
                                tracing::warn!(
                                    "upstream refused the proxy's connection setup (AUTH or HELLO 3)"
                                );
                                return Err(UpstreamFailure::SetupRefused);
                            }
                            if let Some(v) = hello_version(reply) {
                                *self.version.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(v.into());
                            }
                        }
                        errors |= self.rbuf[self.framed] == b'-';
                        self.framed += frame.len;
                        frames += 1;
                    }
                    Ok(None) => break,
                    Err(_) => return Err(UpstreamFailure::BadReply),
                }
            }
            if frames > 0 {
                let data = self.rbuf.split_to(self.framed).freeze();
                self.framed = 0;
                match &mut head.waiter.owner {
                    Owner::Client(inbox) => {
                        inbox.deliver(Chunk { data, frames });
                        // Each reply delivered here waited this long since its run was taken.
                        self.latency.record(head.since.elapsed(), u64::from(frames));
                    }
                    Owner::Relay { relay, ids, at } => {
                        let end = *at + frames as usize;
                        relay.receive(&ids[*at..end], data, errors);
                        *at = end;
                        self.latency.record(head.since.elapsed(), u64::from(frames));
                    }
                    Owner::Setup | Owner::TimedOut => {}
                }
                head.waiter.remaining -= frames;
            }
            if head.waiter.remaining > 0 {
                return Ok(());
            }
            self.in_flight.pop_front();
        }
        // Nothing is in flight: pushes are dropped; any other bytes were asked for by nobody,
        // so the pairing of requests and replies can no longer be trusted and the connection
        // must go.
        while !self.rbuf.is_empty() {
            match self.scanner.scan(&self.rbuf) {
                Ok(Some(frame)) if frame.push => {
                    let _ = self.rbuf.split_to(frame.len);
                }
                Ok(None) if self.rbuf[0] == b'>' => return Ok(()),
                _ => return Err(UpstreamFailure::BadReply),
            }
        }
        Ok(())
    }

    /// The probe found the upstream unresponsive while requests wait here. Those a hold kept
    /// from timing out fail now (a hold may be why the upstream is silent, and it may never
    /// end); one that waited `timeout` fails as timed out; otherwise their own timeout will
    /// answer them.
    fn declared_unavailable(
        &self,
        timeout: Duration,
        holds: &Holds,
    ) -> Result<(), UpstreamFailure> {
        match self.in_flight.front() {
            Some(head) if head.since.elapsed() >= timeout => Err(UpstreamFailure::Timeout(timeout)),
            Some(_) if holds.held() => Err(UpstreamFailure::Unavailable),
            _ => Ok(()),
        }
    }

    /// The command timeout: when the oldest request has waited `timeout` with no progress
    /// meanwhile (no reply bytes read and no request bytes taken by the upstream: a long reply
    /// that keeps streaming, or a large write Redis keeps reading, is not a hang), its own
    /// client is answered with the timeout and the monitor is told of a suspicion. The
    /// connection stays, and the requests behind keep their place: the timeout may be that one
    /// client's slow command, which must not fail the others. What follows is the upstream's:
    /// - it moves again (the slow command ended): the late reply is dropped, the rest go on;
    /// - it fails the probe too: the monitor counts the suspicion, and once it declares the
    ///   upstream unavailable, what waits here fails (see [`Self::declared_unavailable`]);
    /// - it answers the probe while this connection stays silent another `timeout`: the
    ///   connection alone is stuck (a blocking command keywarden does not know), so it goes.
    ///
    /// No timeout runs while a client's command holds the upstream (see [`Holds`]).
    fn check_timeout(
        &mut self,
        timeout: Duration,
        holds: &Holds,
        monitor: &MonitorHandle,
    ) -> Result<(), UpstreamFailure> {
        let Some(head) = self.in_flight.front_mut() else {
            self.suspicion = None;
            return Ok(());
        };
        // Once the upstream is declared unavailable no probe will clear anything until it
        // returns: a timeout fails the connection as it did before any suspicion.
        let judged = !monitor.snapshot().upstream_available();
        if let Some(suspicion) = &mut self.suspicion {
            if self.last_progress <= suspicion.since {
                if judged {
                    return Err(UpstreamFailure::Timeout(timeout));
                }
                if suspicion.cleared.is_none() && monitor.cleared(suspicion.number) {
                    suspicion.cleared = Some(Instant::now());
                }
                return match suspicion.cleared {
                    // The upstream answers; this connection has had `timeout` since to move.
                    Some(at) if at.elapsed() >= timeout => Err(UpstreamFailure::Timeout(timeout)),
                    _ => Ok(()),
                };
            }
            self.suspicion = None;
        }
        let Some(waiting_since) = holds.timeout_from(head.since.max(self.last_progress)) else {
            return Ok(());
        };
        if waiting_since.elapsed() >= timeout {
            // The proxy's own setup (AUTH, HELLO 3) must be checked: without its reply the
            // connection is not what clients need, so it fails as a whole.
            if judged || matches!(head.waiter.owner, Owner::Setup) {
                return Err(UpstreamFailure::Timeout(timeout));
            }
            head.waiter.time_out(UpstreamFailure::Timeout(timeout));
            self.suspicion = Some(Suspicion {
                number: monitor.suspect(Cause::Timeout),
                since: Instant::now(),
                cleared: None,
            });
        }
        Ok(())
    }
}

/// The `version` field of a HELLO reply (a RESP3 map or RESP2 array of bulk strings).
fn hello_version(reply: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"$7\r\nversion\r\n$";
    let at = reply.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &reply[at..];
    let eol = rest.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&rest[..eol]).ok()?.parse().ok()?;
    let value = rest.get(eol + 2..eol + 2 + len)?;
    std::str::from_utf8(value).ok()
}

/// An interval for checking a command timeout: a tenth of it, between 1 ms and 100 ms.
pub(crate) fn timeout_tick(timeout: Duration) -> Interval {
    let period = (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(link: Link) -> SharedConn {
        let c = SharedConn::new(false, Holds::new());
        c.set_link(link);
        c
    }

    /// What sessions read before writing replies: requests wait for the connection task and
    /// it will take them when it runs. Cleared once it takes them or the connection goes down
    /// (which drops them), never set by a request refused while down, and not claimed while
    /// the task cannot take work (it is writing, or connecting).
    #[test]
    fn wants_turn_says_whether_requests_wait_for_a_task_that_takes_them() {
        let inbox = Arc::new(Inbox::default());
        let get = [Request::from_args(&["GET", "k"])];
        let c = conn(Link::Up);
        c.set_taking(true);
        assert!(!c.wants_turn());
        c.send(&get, &inbox, true).unwrap();
        c.send(&get, &inbox, true).unwrap();
        assert!(c.wants_turn());
        c.set_taking(false);
        assert!(
            !c.wants_turn(),
            "a task still writing takes nothing at its next turn"
        );
        c.set_taking(true);
        let (mut wbuf, mut large, mut in_flight) =
            (BytesMut::new(), VecDeque::new(), VecDeque::new());
        c.take(&mut wbuf, &mut large, &mut in_flight, Instant::now());
        assert!(!c.wants_turn());
        assert_eq!((wbuf.len(), in_flight.len()), (2 * get[0].raw().len(), 2));

        c.send(&get, &inbox, true).unwrap();
        let failed = c.set_link(Link::Down(UpstreamFailure::ConnectionLost));
        assert_eq!(failed.len(), 1);
        assert!(!c.wants_turn());
        assert!(c.send(&get, &inbox, false).is_err());
        assert!(!c.wants_turn());
    }

    /// Through the connection task itself: idle, it says it takes work (`taking`); woken by a
    /// request while the tasks that will queue the turn's other requests are still ahead of it,
    /// it takes none of them until they have queued theirs, so the turn leaves in one write.
    #[tokio::test(flavor = "current_thread")]
    async fn the_task_gathers_a_turns_requests_before_taking_them() {
        struct Unheard;
        impl crate::upstream::outage::OutageEvents for Unheard {
            fn emit(&self, _: &crate::upstream::outage::Event<'_>) {}
        }
        let settings = crate::config::Settings::default();
        let monitor = crate::upstream::monitor::Monitor::start(
            crate::upstream::monitor::MonitorSettings::from_settings(&settings),
            Arc::new(Unheard),
            crate::upstream::outage::AffectedKeyspaces::of(&settings.keyspaces),
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_redis, _) = listener.accept().await.unwrap();
        let conn = Arc::new(conn(Link::Up));
        let timing = Arc::new(Timing::default());
        timing.set(&settings.upstream, &settings.limits, None);
        let mut link = Connection::new(
            Conn::plain(stream),
            64,
            Arc::new(Mutex::new(None)),
            Arc::new(Histogram::default()),
        );
        let handle = monitor.handle();
        let mut health = handle.subscribe();
        let (_moved, mut switched) = watch::channel(Arc::<str>::from("here"));
        let task_conn = conn.clone();
        let task = tokio::spawn(async move {
            link.serve(&task_conn, &timing, &handle, &mut health, &mut switched)
                .await
        });
        // Let the task reach its wait for work (a few turns of the runtime; bounded).
        for _ in 0..100 {
            if conn.taking.load(Ordering::Relaxed) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            conn.taking.load(Ordering::Relaxed),
            "an idle task takes work"
        );

        let seen = Arc::new(Mutex::new(None));
        let (c, at_last) = (conn.clone(), seen.clone());
        tokio::spawn(async move {
            let inbox = Arc::new(Inbox::default());
            let get = [Request::from_args(&["GET", "k"])];
            // Wakes the task: it is queued ahead of the two sessions spawned next.
            c.send(&get, &inbox, true).unwrap();
            let c2 = c.clone();
            let inbox2 = inbox.clone();
            let get2 = get.clone();
            tokio::spawn(async move { c2.send(&get2, &inbox2, true).unwrap() });
            tokio::spawn(async move {
                c.send(&get, &inbox, true).unwrap();
                let q = c.queue.lock().unwrap();
                *at_last.lock().unwrap() = Some(q.waiters.len());
            });
        })
        .await
        .unwrap();
        // The two senders run in the turns after it (bounded).
        for _ in 0..100 {
            if seen.lock().unwrap().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *seen.lock().unwrap(),
            Some(3),
            "the task took the first request before the turn's others were queued"
        );
        task.abort();
    }

    /// The connection task's trip to the back of the run queue: the tasks already queued run
    /// first, and it goes on before the sockets are polled again (tokio's `yield_now` would
    /// wait for that poll, behind a task it wakes). A trip that never ends fails the timeout.
    #[tokio::test(flavor = "current_thread")]
    async fn to_back_runs_after_the_queued_tasks_and_before_the_next_poll() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let order = Arc::new(Mutex::new(Vec::new()));
        let (mut tx, mut rx) = tokio::net::UnixStream::pair().unwrap();
        let log = order.clone();
        // Waits on its socket: woken by the next poll of the sockets once bytes are there.
        let reader = tokio::spawn(async move {
            let mut byte = [0u8];
            rx.read_exact(&mut byte).await.unwrap();
            log.lock().unwrap().push("socket");
        });
        tokio::task::yield_now().await; // the reader registers with the sockets' driver
        let log = order.clone();
        // A task, as the connection task is (the test's own future is polled apart from them).
        let task = tokio::spawn(async move {
            let queued: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|name| {
                    let log = log.clone();
                    tokio::spawn(async move { log.lock().unwrap().push(name) })
                })
                .collect();
            tx.write_all(b"x").await.unwrap();
            ToBack::default().await;
            log.lock().unwrap().push("after");
            for t in queued {
                t.await.unwrap();
            }
            tx
        });
        let run = async {
            let _tx = task.await.unwrap();
            reader.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the task came back from the back of the queue");
        assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "after", "socket"]);
    }

    #[test]
    fn version_from_hello_replies() {
        let resp3 = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.2.11\r\n$5\r\nproto\r\n:3\r\n";
        assert_eq!(hello_version(resp3), Some("7.2.11"));
        let resp2 = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n";
        assert_eq!(hello_version(resp2), Some("7.0.0"));
        assert_eq!(hello_version(b"+OK\r\n"), None);
        assert_eq!(hello_version(b"%1\r\n$7\r\nversion\r\n$9\r\n7.0\r\n"), None);
    }
}
