//! One client connection: read requests, send them upstream, write replies back in order.
//!
//! A session starts on a shared upstream connection. Requests parsed from one read are sent as
//! one run (one lock, one wake-up of the connection task), and the session remembers, in
//! `pending`, what each reply slot is waiting on: a run of upstream replies, or a reply the
//! proxy made itself. Replies are written strictly in that order.
//!
//! The first command that depends on connection state moves the client to a [`Dedicated`]
//! connection for the rest of its life, once every reply it is owed from the shared connection
//! has arrived (so its commands are still applied upstream in the order it sent them).
//!
//! Memory: everything a session needs only while bytes are in flight (buffers, parser, reply
//! queues) lives in a boxed [`Busy`] that the session gives up whenever the client goes quiet
//! (to a short per-thread list of spares, for the next client with bytes in flight), and the
//! session waits with one `poll_fn` rather than a `select!` (whose branch futures would sit in
//! every idle client's task). An idle client costs its socket registration, a small task and
//! an inbox, until an idle sweep asks it to park (see [`crate::proxy::parking`]): then only
//! its inbox and what [`crate::proxy::parking::Parked`] keeps.

pub(crate) mod client_state;
pub(crate) mod connection_commands;
pub(crate) mod keywarden;
pub(crate) mod transaction;

mod batch;
mod busy;
mod own_conn;

use batch::Batch;
use busy::{Busy, Stall, MAX_YIELDS};

use std::future::Future;
use std::io::{self};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::live::Policy;
use crate::error::UpstreamFailure;
use crate::protocol::parser::ParserLimits;
use crate::proxy::clients::{Limit, Phase};
use crate::proxy::parking::Parked;
use crate::proxy::server::{Ctx, Server};
use crate::proxy::session::client_state::SessionState;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::inbox::Inbox;
use crate::upstream::shared::SharedConn;
use crate::upstream::socket::Conn;

/// The first read of a burst takes a buffer this large; it doubles while a request needs more.
const READ_CHUNK: usize = 4 * 1024;
/// Slices gathered into one vectored write to the client.
const MAX_IOVECS: usize = 32;

pub(crate) struct Session {
    stream: Conn,
    server: Arc<Server>,
    /// The configuration this client's requests are judged by: the server's, taken again
    /// between batches after a reload (see [`crate::ops::reload`]).
    policy: Arc<Policy>,
    /// This client's key in [`Clients`].
    key: usize,
    /// CLIENT ID.
    id: u64,
    inbox: Arc<Inbox>,
    shared: Arc<SharedConn>,
    busy: Option<Box<Busy>>,
    /// A dedicated connection being opened.
    opening: Option<Opening>,
    /// Present only when `client_idle_timeout` is set.
    idle: Option<Box<IdleTimer>>,
    /// Connection state set by the client (database, protocol, name), once any differs from
    /// a fresh connection's.
    state: SessionState,
}

/// Opening a dedicated connection: boxed, since the connect future is large and rare and must
/// not size every session.
type Opening = Pin<Box<dyn Future<Output = Result<Dedicated, UpstreamFailure>> + Send>>;

/// A client's task: its session, until the client leaves or the session parks (see
/// [`crate::proxy::parking`]). No `async fn` state machine around it, so an idle client's task
/// holds the session's few fields and nothing else.
pub(crate) struct Task(Option<Session>);

/// Why [`Session::drive`] ended.
enum Exit {
    /// The connection is done with.
    Close,
    /// The client is idle: its socket and state go to the parker, and the task ends.
    Park,
}

impl Future for Task {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = self.get_mut();
        let Some(session) = task.0.as_mut() else {
            return Poll::Ready(());
        };
        match ready!(session.drive(cx)) {
            Ok(Exit::Close) => tracing::debug!("client connection closed"),
            Ok(Exit::Park) => {
                if let Some(session) = task.0.take() {
                    session.park();
                }
            }
            Err(e) => tracing::debug!(error = %e, "client connection ended"),
        }
        Poll::Ready(())
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(session) = &self.0 {
            if let Some(b) = &session.busy {
                session.server.clients.output_moved(b.published, 0);
            }
            session.server.clients.leave(session.key);
        }
    }
}

/// The parser's share of the configured limits.
fn parser_limits(limits: &crate::config::Limits) -> ParserLimits {
    ParserLimits {
        max_bulk_len: limits.max_bulk_len,
        max_multibulk_len: limits.max_multibulk_len,
        max_inline_len: limits.max_inline_len,
    }
}

struct IdleTimer {
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
}

impl IdleTimer {
    /// A timer counting from now.
    fn new(limit: Duration) -> Box<IdleTimer> {
        Box::new(IdleTimer {
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            last_activity: Instant::now(),
        })
    }

    /// A reload's new limit, counted from the last activity.
    fn set_limit(&mut self, limit: Duration) {
        self.limit = limit;
        self.sleep.as_mut().reset(self.last_activity + limit);
    }
}

enum Event {
    /// A delivery or a phase change.
    Inbox,
    ClientReadable,
    ClientWritable,
    DedicatedReadable,
    DedicatedWritable,
    Tick,
    Idle,
    /// The wait after a failed AUTH is over (see [`Busy::penalty`]).
    PenaltyOver,
}

impl Session {
    /// A new client's task.
    pub(crate) fn start(stream: Conn, server: Arc<Server>, policy: Arc<Policy>) -> Task {
        let inbox = Arc::new(Inbox::default());
        let (key, id) = server.clients.join(inbox.clone(), stream.peer_addr().ok());
        if server.clients.phase() != Phase::Run {
            // Registered after shutdown began (its worker set it up late): the phase change
            // woke everyone registered before it, so this one wakes itself.
            inbox.poke();
        }
        let idle = policy.settings.client_idle_timeout.map(IdleTimer::new);
        Task(Some(Session {
            stream,
            shared: server.upstream.pick(false),
            server,
            policy,
            key,
            id,
            inbox,
            busy: None,
            opening: None,
            idle,
            state: SessionState::default(),
        }))
    }

    /// A parked client's task again, as its session was when it parked. `None` (the client
    /// gone from the registry) if its socket cannot be registered with the runtime.
    pub(crate) fn resume(parked: Parked, server: Arc<Server>) -> Option<Task> {
        let Parked {
            socket,
            worker: _,
            key,
            id,
            policy,
            inbox,
            shared,
            state,
        } = parked;
        let stream = match tokio::net::TcpStream::from_std(socket) {
            Ok(tcp) => Conn::plain(tcp),
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume a parked client");
                server.clients.leave(key);
                return None;
            }
        };
        inbox.unparked();
        let idle = policy.settings.client_idle_timeout.map(IdleTimer::new);
        Some(Task(Some(Session {
            stream,
            server,
            policy,
            key,
            id,
            inbox,
            shared,
            busy: None,
            opening: None,
            idle,
            state,
        })))
    }

    /// Whether the client can be parked now: nothing owed or in flight, no connection of its
    /// own, no idle timer, and a plain socket (a TLS session's state stays with its task).
    fn parkable(&self) -> bool {
        self.busy.is_none()
            && self.opening.is_none()
            && self.idle.is_none()
            && matches!(self.stream, Conn::Plain(_))
    }

    /// Hands the socket and state to the parker; the task then ends.
    fn park(self) {
        let Session {
            stream,
            server,
            policy,
            key,
            id,
            inbox,
            shared,
            state,
            ..
        } = self;
        let socket = match stream {
            Conn::Plain(tcp) => tcp.into_std(),
            Conn::Tls(_) => Err(io::Error::other("a TLS client is not parked")),
        };
        let parked = match socket {
            Ok(socket) => Parked {
                socket,
                worker: crate::upstream::workers::current() as u32,
                key,
                id,
                policy,
                inbox,
                shared,
                state,
            },
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended while parking");
                server.clients.leave(key);
                return;
            }
        };
        if let Err(parked) = server.clients.parking.park(parked) {
            // The parker has stopped: the client goes on with a task.
            if let Some(task) = Session::resume(parked, server) {
                tokio::spawn(task);
            }
        }
    }

    /// Serves the client until it leaves, the proxy shuts down, or the connection must close.
    /// Runs one step after another until the next one has to wait; the session is its task's
    /// future (see the module notes on memory).
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Exit>> {
        loop {
            if self.policy.generation != self.server.live.generation() && !self.adopt_policy() {
                return Poll::Ready(Ok(Exit::Close));
            }
            let ctx = Ctx::new(&self.server, &self.policy);
            if let Some(opening) = self.opening.as_mut() {
                let opened = ready!(opening.as_mut().poll(cx));
                self.opening = None;
                let state = &self.state;
                let b = self
                    .busy
                    .get_or_insert_with(|| Busy::new(&ctx, self.key, self.id));
                b.opened(opened, &ctx, state);
            }
            if let Some(b) = self.busy.as_deref_mut() {
                b.process_input(
                    ctx,
                    &mut self.shared,
                    &self.inbox,
                    &mut self.state,
                    &self.stream,
                );
                if std::mem::take(&mut b.rejudge) {
                    continue;
                }
                if matches!(b.stalled, Some((_, Stall::Repick))) && b.pending.is_empty() {
                    if let Some((req, _)) = b.stalled.take() {
                        let resp3 = self.state.resp3();
                        self.shared = ctx.upstream.pick(resp3);
                        let available = ctx.upstream_available();
                        let mut batch = Batch::new(
                            ctx,
                            &mut self.shared,
                            &self.inbox,
                            &mut self.state,
                            &self.stream,
                            available,
                        );
                        if req.name().eq_ignore_ascii_case(b"info") {
                            b.info(req, &mut batch);
                        } else {
                            b.send_shared(&mut vec![req], &mut batch);
                        }
                    }
                    continue;
                }
                let opens = matches!(
                    b.stalled,
                    Some((_, Stall::Dedicated(_) | Stall::Transaction(_)))
                );
                if opens && b.pending.is_empty() {
                    let up = &ctx.settings.upstream;
                    let address = match (&ctx.cluster, &b.stalled) {
                        (Some(cluster), Some((req, stall))) => {
                            // The node of the first key (a transaction's, its first command
                            // with one); any node without keys.
                            let queued = match stall {
                                Stall::Transaction(reqs) => &reqs[..],
                                _ => &[],
                            };
                            let slot = std::iter::once(req)
                                .chain(queued)
                                .find_map(crate::upstream::cluster::plan::home_slot);
                            // Its holds are the shard's, which its shared connections
                            // read for their timeouts.
                            match cluster.home(slot, self.key) {
                                Some(shard) => (
                                    shard.target.current().to_string(),
                                    shard.upstream.holds().clone(),
                                ),
                                None => (String::new(), ctx.upstream.holds().clone()),
                            }
                        }
                        _ => (
                            ctx.upstream.target().current().to_string(),
                            ctx.upstream.holds().clone(),
                        ),
                    };
                    let (address, holds) = address;
                    self.opening = Some(Box::pin(Dedicated::open(
                        address,
                        up.connect_timeout,
                        up.command_timeout,
                        ctx.settings.tcp_keepalive,
                        ctx.settings.limits.max_reply_depth,
                        holds,
                        up.tls.clone(),
                    )));
                    continue;
                }
                if b.penalty.is_none() {
                    // Requests queued for the upstream (this client's or others' read in the
                    // same turn) go out before replies are written: writing a reply costs
                    // several microseconds, and a wake-up can have dozens to write while Redis
                    // waits. The connection tasks were woken when the requests were queued, so
                    // going to the back of the run queue puts this write after theirs.
                    if !b.out.is_empty()
                        && b.yielded < MAX_YIELDS
                        && match &ctx.cluster {
                            Some(cluster) => cluster.queued_here(self.state.resp3()),
                            None => ctx.upstream.queued_here(self.state.resp3()),
                        }
                    {
                        b.yielded += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    b.yielded = 0;
                    b.flush(&self.stream)?;
                }
                b.list_upstream_id(&self.server.clients);
                b.list_blocked(&self.inbox);
                if let Some(limit) = b.output_limit(&ctx.settings.limits, &self.server.clients) {
                    // Redis closes such a client without a reply; so does keywarden.
                    tracing::warn!(
                        limit = limit.as_str(),
                        held = b.pending_out(),
                        "closing a client that reached an output limit"
                    );
                    self.server.clients.record_closed(limit);
                    return Poll::Ready(Ok(Exit::Close));
                }
                if b.closing && b.owes_nothing() && b.out.is_empty() && !self.stream.wants_write() {
                    return Poll::Ready(Ok(Exit::Close));
                }
                if b.is_quiet() {
                    // Give everything back while the client is quiet (to this thread's
                    // spares, for the next client with bytes in flight).
                    if let Some(b) = self.busy.take() {
                        b.retire();
                        self.inbox.allow_park();
                    }
                }
            }
            let event = ready!(self.poll_event(cx))?;
            match event {
                Event::Inbox if self.inbox.is_killed() => {
                    // CLIENT KILL closes the client at once, as Redis does, blocked or not
                    // reading: what is ready goes out if the socket takes it now (a client
                    // that killed itself gets its reply), and the rest is dropped with the
                    // connection. Its own upstream connection closes too, so Redis stops
                    // blocking for it and it consumes nothing afterwards.
                    if let Some(b) = self.busy.as_deref_mut() {
                        b.take_inbox(&self.inbox);
                        let _ = b.flush(&self.stream);
                    }
                    return Poll::Ready(Ok(Exit::Close));
                }
                Event::Inbox
                    if self.inbox.take_upstream_moved()
                        && (self.opening.is_some()
                            || self.busy.as_deref().is_some_and(|b| b.dedicated.is_some())) =>
                {
                    // Its own connection is to the old primary (or about to be): closed, as
                    // Sentinel has the old primary close its clients, so that the library
                    // reconnects and starts afresh on the new one. What is ready goes out.
                    tracing::info!(
                        "closing a client whose own upstream connection is to the old primary"
                    );
                    if let Some(b) = self.busy.as_deref_mut() {
                        b.take_inbox(&self.inbox);
                        let _ = b.flush(&self.stream);
                    }
                    return Poll::Ready(Ok(Exit::Close));
                }
                Event::Inbox => match self.server.clients.phase() {
                    Phase::Run => {
                        if self.inbox.park_asked() {
                            if self.parkable() {
                                return Poll::Ready(Ok(Exit::Park));
                            }
                            self.inbox.refuse_park();
                        }
                        let lost = self.inbox.take_upstream_lost();
                        if let Some(b) = self.busy.as_deref_mut() {
                            b.take_inbox(&self.inbox);
                            if lost && b.dedicated.as_ref().is_some_and(|d| d.is_waiting()) {
                                b.lose_dedicated(UpstreamFailure::Unavailable);
                            }
                        }
                    }
                    // Draining: answer what was asked, take nothing new. Idle clients and
                    // unpaired connections (subscribers, MONITOR) owe nothing and close now.
                    Phase::Drain => match self.busy.as_deref_mut() {
                        Some(b) => {
                            b.take_inbox(&self.inbox);
                            b.closing = true;
                        }
                        None => return Poll::Ready(Ok(Exit::Close)),
                    },
                    Phase::Stop => return Poll::Ready(Ok(Exit::Close)),
                },
                Event::ClientReadable => {
                    if !self.read_client()? {
                        return Poll::Ready(Ok(Exit::Close));
                    }
                    if let Some(idle) = self.idle.as_deref_mut() {
                        idle.last_activity = Instant::now();
                    }
                }
                Event::ClientWritable => {
                    if self.busy.is_none() {
                        match self.stream.flush_records() {
                            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                                return Poll::Ready(Ok(Exit::Close))
                            }
                            _ => {}
                        }
                    }
                }
                Event::PenaltyOver => self.busy_mut().penalty = None,
                Event::DedicatedReadable => self.busy_mut().read_dedicated(),
                Event::DedicatedWritable => self.busy_mut().write_dedicated(),
                Event::Tick => {
                    let limits = &self.policy.settings;
                    let (timeout, max_out) = (
                        limits.upstream.command_timeout,
                        limits.limits.max_pending_output,
                    );
                    let b = self.busy_mut();
                    let held_back = b.pending_out() >= max_out;
                    match b.dedicated.as_mut() {
                        // Held back by the client's own slowness: not a silent upstream.
                        Some(d) if held_back => d.not_read(),
                        _ => b.check_dedicated_timeout(timeout),
                    }
                }
                Event::Idle => {
                    // Redis exempts clients that are owed replies, blocked, or subscribed.
                    let busy = self.busy.as_deref().is_some_and(|b| b.exempt_from_idle());
                    let Some(idle) = self.idle.as_deref_mut() else {
                        continue;
                    };
                    if !busy && idle.last_activity.elapsed() >= idle.limit {
                        tracing::debug!("closing idle client");
                        return Poll::Ready(Ok(Exit::Close));
                    }
                    let since = if busy {
                        Instant::now()
                    } else {
                        idle.last_activity
                    };
                    idle.sleep.as_mut().reset(since + idle.limit);
                }
            }
        }
    }

    /// Subscribed or monitoring (its own upstream connection is no longer paired), or tracking
    /// keys: it receives what it did not ask for one request at a time.
    fn listens(&self) -> bool {
        self.busy
            .as_deref()
            .and_then(|b| b.dedicated.as_ref())
            .is_some_and(|d| !d.is_paired() || d.tracks_keys())
    }

    fn busy_mut(&mut self) -> &mut Busy {
        let ctx = Ctx::new(&self.server, &self.policy);
        self.busy
            .get_or_insert_with(|| Busy::new(&ctx, self.key, self.id))
    }

    /// Takes the configuration a reload installed. The client keeps its connection, and its
    /// user if one of the same name and password is still configured; otherwise it is closed
    /// at once, as Redis closes the clients of a deleted user. A subscribed, monitoring or
    /// tracking client is closed too when its user's permissions changed. Returns false when
    /// the session should end now.
    fn adopt_policy(&mut self) -> bool {
        let new = self.server.policy();
        let old_users = &self.policy.settings.users;
        let new_users = &new.settings.users;
        let kept = match self.state.user(old_users) {
            None => {
                // Not logged in: still not, unless no password is required any more.
                if let Some(state) = self.state.get_mut() {
                    state.user = new_users.default_user();
                }
                true
            }
            Some(id) => match new_users.same_user(old_users.user(id)) {
                // Subscribed or monitoring: what it receives was allowed by the permissions it
                // had; changed ones judge a new connection (its library reconnects).
                Some(same)
                    if !new_users.user(same).same_permissions(old_users.user(id))
                        && self.listens() =>
                {
                    false
                }
                Some(same) => {
                    if let Some(state) = self.state.get_mut() {
                        state.user = Some(same);
                    } else if new_users.default_user() != Some(same) {
                        // The implicit user differs: remember the one it logged in as.
                        self.state.edit(old_users).user = Some(same);
                    }
                    true
                }
                None => false,
            },
        };
        match (new.settings.client_idle_timeout, self.idle.as_deref_mut()) {
            (None, _) => self.idle = None,
            (Some(limit), Some(idle)) => idle.set_limit(limit),
            (Some(limit), None) => self.idle = Some(IdleTimer::new(limit)),
        }
        self.policy = new;
        if !kept {
            // At once, as Redis frees such a client: what it still waits for (a blocked
            // command, a request stalled behind earlier replies) must not run on its behalf.
            // Replies already made go out if the socket takes them now (a reloading admin's
            // own +OK).
            tracing::info!("closing a client whose user a reload withdrew or changed");
            if let Some(b) = self.busy.as_deref_mut() {
                let _ = b.flush(&self.stream);
            }
            return false;
        }
        let ctx = Ctx::new(&self.server, &self.policy);
        if let Some(b) = self.busy.as_deref_mut() {
            b.parser.set_limits(parser_limits(&ctx.settings.limits));
            b.rejudge_stalled(&ctx, &mut self.state);
        }
        true
    }

    /// Waits for the next thing to do. One poll function instead of `select!`: its state is a
    /// few references, so an idle session's task stays small.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Event>> {
        if self.inbox.poll_woken(cx).is_ready() {
            return Poll::Ready(Ok(Event::Inbox));
        }
        let max_out = self.policy.settings.limits.max_pending_output;
        let b = self.busy.as_deref_mut();
        let can_read = b.as_ref().is_none_or(|b| {
            !b.closing && b.stalled.is_none() && b.penalty.is_none() && b.pending_out() < max_out
        });
        if can_read {
            if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(r.map(|()| Event::ClientReadable));
            }
        }
        if let Some(b) = b {
            if let Some(penalty) = b.penalty.as_mut() {
                if penalty.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::PenaltyOver));
                }
            }
            if (!b.out.is_empty() || self.stream.wants_write()) && b.penalty.is_none() {
                if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::ClientWritable));
                }
            }
            let room = b.pending_out() < max_out;
            if let Some(d) = b.dedicated.as_mut() {
                if room {
                    if let Poll::Ready(r) = d.poll_read_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::DedicatedReadable));
                    }
                }
                if d.wants_write() {
                    if let Poll::Ready(r) = d.poll_write_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::DedicatedWritable));
                    }
                }
                if d.poll_tick(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Tick));
                }
            }
        }
        if self.busy.is_none() && self.stream.wants_write() {
            // TLS records (a session ticket, a key update) for a client with nothing else owed.
            if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                return Poll::Ready(r.map(|()| Event::ClientWritable));
            }
        }
        if let Some(idle) = self.idle.as_deref_mut() {
            if idle.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Idle));
            }
        }
        Poll::Pending
    }

    /// Reads from the client; false when it closed the connection.
    fn read_client(&mut self) -> io::Result<bool> {
        let max_query = self.policy.settings.limits.max_query_buffer;
        self.busy_mut();
        let b = self.busy.as_deref_mut().expect("busy state was just made");
        // A frame is sized for up front only within the client's query buffer limit.
        crate::protocol::make_room(&mut b.inbuf, b.parser.wants(), READ_CHUNK, max_query);
        self.inbox.mark_active();
        match self.stream.read_available(&mut b.inbuf) {
            Ok(0) => Ok(false),
            Ok(_) if b.inbuf.len() > max_query => {
                // Redis closes such a client without a reply.
                tracing::warn!("closing client that reached the max query buffer length");
                self.server.clients.record_closed(Limit::QueryBuffer);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client holds a session task; keep its state small (the design budget for an
    /// idle client is well under 1 KB, socket registration and inbox included).
    #[test]
    fn an_idle_session_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let settings = crate::config::Settings::default();
            let events = Arc::new(crate::ops::events::Events::new("test".into(), None).unwrap());
            let monitor = crate::upstream::monitor::Monitor::start(
                crate::upstream::monitor::MonitorSettings::from_settings(&settings),
                events.clone(),
                crate::ops::events::AffectedKeyspaces::of(&settings.keyspaces),
            )
            .await;
            let upstream = crate::upstream::shared::Upstream::start(
                &settings.upstream,
                &settings.limits,
                None,
                monitor.handle(),
                crate::upstream::target::Target::new(&settings.upstream.address),
            );
            let server = Arc::new(Server {
                live: crate::config::live::Live::new(settings),
                cluster: None,
                upstream,
                clients: Default::default(),
                monitor: monitor.handle(),
                store: Arc::new(crate::local::store::Store::new(1 << 20)),
                events,
                reloads: Default::default(),
                tls: None,
            });
            let policy = server.policy();
            let task = Session::start(Conn::plain(stream), server, policy);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 128, "session task state is {size} bytes");
        });
    }
}
