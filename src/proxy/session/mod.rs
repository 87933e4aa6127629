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
//! an inbox.

pub mod client_state;
pub mod connection;
pub mod keywarden;
pub mod transaction;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::command::{self, Disposition, Stateful};
use crate::config::live::Policy;
use crate::error::{ProxyError, UpstreamFailure};
use crate::local::clock::unix_ms;
use crate::local::engine;
use crate::local::store::Watch;
use crate::ops::info;
use crate::policy::router::Route;
use crate::protocol::parser::{ParserLimits, RequestParser};
use crate::protocol::request::Request;
use crate::protocol::resp;
use crate::proxy::clients::{LastCommand, Outcome, Phase};
use crate::proxy::server::{Ctx, Server};
use crate::proxy::session::client_state::ClientState;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::handshake;
use crate::upstream::inbox::{Chunk, Inbox};
use crate::upstream::shared::SharedConn;
use crate::upstream::socket;
use connection::{Special, Sync};
use transaction::{Multi, Target};

/// The first read of a burst takes a buffer this large; it doubles while a request needs more.
const READ_CHUNK: usize = 4 * 1024;
/// Slices gathered into one vectored write to the client.
const MAX_IOVECS: usize = 32;

/// Why a request waits for every earlier reply.
enum Stall {
    /// It needs the client's own upstream connection, which is opened once nothing is owed.
    Dedicated(Stateful),
    /// The client switched protocol: it moves to a shared connection of the other pool.
    Repick,
    /// RESET sent to a subscribed connection: nothing more is read until Redis answers it.
    Reset,
    /// A transaction for the client's own connection (the stalled request is its MULTI):
    /// these follow, and only the last one's reply, EXEC's, reaches the client.
    Transaction(Vec<Request>),
}

/// What one reply slot waits on, in request order.
enum Slot {
    /// This many replies from the shared connection, still to come through the inbox.
    Upstream(u32),
    /// A reply the proxy made, to be written once everything before it is out.
    Local(Bytes),
    /// One INFO reply from the upstream, to which this `# Keywarden` section is appended.
    Info(String),
}

pub struct Session {
    stream: TcpStream,
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
    state: Option<Box<ClientState>>,
}

/// Opening a dedicated connection: boxed, since the connect future is large and rare and must
/// not size every session.
type Opening = Pin<Box<dyn Future<Output = Result<Dedicated, UpstreamFailure>> + Send>>;

/// The session is its task's future: no `async fn` state machine around it, so an idle
/// client's task holds the session's few fields and nothing else.
impl Future for Session {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match ready!(self.get_mut().drive(cx)) {
            Ok(()) => tracing::debug!("client connection closed"),
            Err(e) => tracing::debug!(error = %e, "client connection ended"),
        }
        Poll::Ready(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.clients.leave(self.key);
    }
}

thread_local! {
    /// Busy states of clients that went quiet, for the next client on this thread with bytes
    /// in flight. A pipelining client goes quiet after every batch it is answered; taking a
    /// spare keeps the capacity its input buffer and queues had, instead of allocating all of
    /// them again for every batch. At most [`SPARE_BUSY_MAX`] per thread, each holding at most
    /// [`SPARE_INBUF`] of input buffer, so idle clients still hold none of it (Redis 7.4
    /// likewise lends idle clients one query buffer per thread).
    // Boxed as sessions hold them: taking or giving back one moves a pointer.
    #[allow(clippy::vec_box)]
    static SPARE_BUSY: RefCell<Vec<Box<Busy>>> = const { RefCell::new(Vec::new()) };
}

/// How many quiet busy states a thread keeps.
const SPARE_BUSY_MAX: usize = 16;

/// Largest input buffer a spare keeps (a few reads' worth).
const SPARE_INBUF: usize = 4 * READ_CHUNK;

/// Largest capacity, in entries, a spare keeps in each of its queues.
const SPARE_QUEUE: usize = 64;

/// A session's state while anything is in flight.
struct Busy {
    /// The session's key in [`Clients`] and CLIENT ID.
    key: usize,
    id: u64,
    inbuf: BytesMut,
    parser: RequestParser,
    /// Reply bytes ready for the client, in order.
    out: VecDeque<Bytes>,
    out_len: usize,
    /// Reply slots not yet ready; the front, if any, is always `Slot::Upstream`.
    pending: VecDeque<Slot>,
    dedicated: Option<Dedicated>,
    /// A request waiting for every reply owed before it, to move connections without
    /// reordering anything.
    stalled: Option<(Request, Stall)>,
    /// Stop reading; close once every owed reply is written.
    closing: bool,
    /// The vectors `process_input` gathers runs in, empty between calls.
    runs: Runs,
    /// Requests were put back in the input after a reload (see [`Busy::replay`]): take the
    /// new policy and read them again.
    rejudge: bool,
    /// [`Store::recoveries`](crate::local::store::Store::recoveries) when the current batch read the
    /// health snapshot that routes it.
    recoveries: u64,
}

/// Requests parsed from one read, gathered until the next one goes elsewhere.
#[derive(Default)]
struct Runs {
    /// For the shared upstream connection.
    shared: Vec<Request>,
    /// For the local store.
    local: Vec<Request>,
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
}

impl Session {
    pub fn new(stream: TcpStream, server: Arc<Server>, policy: Arc<Policy>) -> Session {
        let inbox = Arc::new(Inbox::default());
        let (key, id) = server.clients.join(inbox.clone(), stream.peer_addr().ok());
        let idle = policy.settings.client_idle_timeout.map(IdleTimer::new);
        Session {
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
            state: None,
        }
    }

    /// Serves the client until it leaves, the proxy shuts down, or the connection must close.
    /// Runs one step after another until the next one has to wait; the session is its task's
    /// future (see the module notes on memory).
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.policy.generation != self.server.live.generation() && !self.adopt_policy() {
                return Poll::Ready(Ok(()));
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
                    &ctx,
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
                        let resp3 = ClientState::resp3_of(&self.state);
                        self.shared = ctx.upstream.pick(resp3);
                        let available = ctx.monitor.snapshot().upstream_available();
                        let (shared, inbox) = (&mut self.shared, &self.inbox);
                        if req.name().eq_ignore_ascii_case(b"info") {
                            b.info(req, &ctx, shared, inbox, &self.state, available);
                        } else {
                            b.send_shared(&mut vec![req], &ctx, shared, inbox, available);
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
                    self.opening = Some(Box::pin(Dedicated::open(
                        up.address.clone(),
                        up.connect_timeout,
                        up.command_timeout,
                        ctx.settings.tcp_keepalive,
                        ctx.settings.limits.max_reply_depth,
                    )));
                    continue;
                }
                b.flush(&self.stream)?;
                if b.closing && b.owes_nothing() && b.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if b.is_quiet() {
                    // Give everything back while the client is quiet (to this thread's
                    // spares, for the next client with bytes in flight).
                    if let Some(b) = self.busy.take() {
                        b.retire();
                    }
                }
            }
            let event = ready!(self.poll_event(cx))?;
            match event {
                Event::Inbox if self.inbox.is_killed() => {
                    // CLIENT KILL: answer what was asked (a client killing itself gets its
                    // reply, as in Redis), read nothing more.
                    match self.busy.as_deref_mut() {
                        Some(b) => {
                            b.take_inbox(&self.inbox);
                            b.closing = true;
                            b.inbuf.clear();
                        }
                        None => return Poll::Ready(Ok(())),
                    }
                }
                Event::Inbox => match self.server.clients.phase() {
                    Phase::Run => {
                        if let Some(b) = self.busy.as_deref_mut() {
                            b.take_inbox(&self.inbox);
                        }
                    }
                    // Draining: answer what was asked, take nothing new. Idle clients and
                    // unpaired connections (subscribers, MONITOR) owe nothing and close now.
                    Phase::Drain => match self.busy.as_deref_mut() {
                        Some(b) => {
                            b.take_inbox(&self.inbox);
                            b.closing = true;
                        }
                        None => return Poll::Ready(Ok(())),
                    },
                    Phase::Stop => return Poll::Ready(Ok(())),
                },
                Event::ClientReadable => {
                    if !self.read_client()? {
                        return Poll::Ready(Ok(()));
                    }
                    if let Some(idle) = self.idle.as_deref_mut() {
                        idle.last_activity = Instant::now();
                    }
                }
                Event::ClientWritable => {}
                Event::DedicatedReadable => self.busy_mut().read_dedicated(),
                Event::DedicatedWritable => self.busy_mut().write_dedicated(),
                Event::Tick => {
                    let timeout = self.policy.settings.upstream.command_timeout;
                    self.busy_mut().check_dedicated_timeout(timeout);
                }
                Event::Idle => {
                    // Redis exempts clients that are owed replies, blocked, or subscribed.
                    let busy = self.busy.as_deref().is_some_and(|b| b.exempt_from_idle());
                    let Some(idle) = self.idle.as_deref_mut() else {
                        continue;
                    };
                    if !busy && idle.last_activity.elapsed() >= idle.limit {
                        tracing::debug!("closing idle client");
                        return Poll::Ready(Ok(()));
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

    fn busy_mut(&mut self) -> &mut Busy {
        let ctx = Ctx::new(&self.server, &self.policy);
        self.busy
            .get_or_insert_with(|| Busy::new(&ctx, self.key, self.id))
    }

    /// Takes the configuration a reload installed. The client keeps its connection, and its
    /// user if one of the same name and password is still configured; otherwise it is closed
    /// at once, as Redis closes the clients of a deleted user. Returns false when the session
    /// should end now.
    fn adopt_policy(&mut self) -> bool {
        let new = self.server.policy();
        let old_users = &self.policy.settings.users;
        let new_users = &new.settings.users;
        let kept = match ClientState::user_of(&self.state, old_users) {
            None => {
                // Not logged in: still not, unless no password is required any more.
                if let Some(state) = self.state.as_deref_mut() {
                    state.user = new_users.default_user();
                }
                true
            }
            Some(id) => match new_users.same_user(old_users.user(id)) {
                Some(same) => {
                    if let Some(state) = self.state.as_deref_mut() {
                        state.user = Some(same);
                    } else if new_users.default_user() != Some(same) {
                        // The implicit user differs: remember the one it logged in as.
                        ClientState::of(&mut self.state, old_users).user = Some(same);
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
            tracing::info!("closing a client whose user a reload withdrew");
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
        let can_read = b
            .as_ref()
            .is_none_or(|b| !b.closing && b.stalled.is_none() && b.out_len < max_out);
        if can_read {
            if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(r.map(|()| Event::ClientReadable));
            }
        }
        if let Some(b) = b {
            if !b.out.is_empty() {
                if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::ClientWritable));
                }
            }
            if let Some(d) = b.dedicated.as_mut() {
                if b.out_len < max_out {
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
        if b.inbuf.capacity() - b.inbuf.len() < READ_CHUNK / 4 {
            b.inbuf.reserve(READ_CHUNK.max(b.inbuf.len()));
        }
        match socket::read_available(&self.stream, &mut b.inbuf) {
            Ok(0) => Ok(false),
            Ok(_) if b.inbuf.len() > max_query => {
                // Redis closes such a client without a reply.
                tracing::warn!("closing client that reached the max query buffer length");
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }
}

impl Busy {
    /// A fresh busy state: a spare one of this thread's if there is one (see [`SPARE_BUSY`]).
    fn new(ctx: &Ctx<'_>, key: usize, id: u64) -> Box<Busy> {
        let limits = parser_limits(&ctx.settings.limits);
        if let Some(mut b) = SPARE_BUSY.with_borrow_mut(Vec::pop) {
            debug_assert!(b.is_quiet() && b.runs.shared.is_empty() && b.runs.local.is_empty());
            b.key = key;
            b.id = id;
            b.parser = RequestParser::new(limits);
            b.rejudge = false;
            b.recoveries = 0;
            return b;
        }
        Box::new(Busy {
            key,
            id,
            inbuf: BytesMut::new(),
            parser: RequestParser::new(limits),
            out: VecDeque::new(),
            out_len: 0,
            pending: VecDeque::new(),
            dedicated: None,
            stalled: None,
            closing: false,
            runs: Runs::default(),
            rejudge: false,
            recoveries: 0,
        })
    }

    /// After a reload: the request waiting for earlier replies (to go to the client's own
    /// connection, or to one of the other protocol) was let through by the old policy. It is
    /// judged again, as a request not yet sent anywhere: its permissions and where its keys now
    /// go. A waiting transaction is queued again and its EXEC read again, so that EXEC checks
    /// and routes every command. RESET, always allowed, keeps waiting.
    fn rejudge_stalled(&mut self, ctx: &Ctx<'_>, state: &mut Option<Box<ClientState>>) {
        let Some((req, stall)) = self.stalled.take() else {
            return;
        };
        match stall {
            Stall::Reset => {
                self.stalled = Some((req, stall));
                return;
            }
            Stall::Transaction(mut rest) => {
                // `req` is its MULTI, `rest` the queued commands and EXEC. Nothing was sent:
                // no dedicated connection exists yet, so nothing was WATCHed upstream either.
                rest.pop();
                ClientState::of(state, &ctx.settings.users).multi = Some(Box::new(Multi {
                    queued: rest,
                    target: None,
                    aborted: false,
                }));
                self.replay([Request::from_args(&["EXEC"])]);
                return;
            }
            Stall::Dedicated(_) | Stall::Repick => {}
        }
        let is = |name: &[u8]| req.name().eq_ignore_ascii_case(name);
        if let Err(denied) = ctx.permit(&req, state) {
            if is(b"watch") {
                if let Some(s) = state.as_deref_mut() {
                    s.watched_upstream = false;
                }
            }
            self.push_local(denied);
            return;
        }
        // INFO is never routed by keys; WATCH and UNWATCH were routed by the transaction code.
        if is(b"info") || is(b"watch") || is(b"unwatch") {
            self.stalled = Some((req, stall));
            return;
        }
        let recoveries = ctx.store.recoveries();
        let available = ctx.monitor.snapshot().upstream_available();
        match ctx.route(&req, available) {
            Route::Upstream => self.stalled = Some((req, stall)),
            Route::Local => {
                let (db, resp3) = (ClientState::db_of(state), ClientState::resp3_of(state));
                let one = std::slice::from_ref(&req);
                match ctx.serve_locally(one, db, resp3, available, recoveries) {
                    Some(reply) => self.push_local(reply),
                    // Yet another reload since: read it again under that one.
                    None => self.replay([req]),
                }
            }
            Route::Reject(refusal) => self.push_local(ctx.refusal(refusal, &req).to_reply()),
        }
    }

    /// Nothing in flight and nothing buffered: the state can be dropped.
    fn is_quiet(&self) -> bool {
        self.inbuf.is_empty()
            && self.out.is_empty()
            && self.pending.is_empty()
            && self.dedicated.is_none()
            && self.stalled.is_none()
            && !self.closing
    }

    /// True when no reply is owed to the client beyond what is already in `out`.
    fn owes_nothing(&self) -> bool {
        self.pending.is_empty()
            && self.stalled.is_none()
            && self
                .dedicated
                .as_ref()
                .is_none_or(|d| d.unanswered() == 0 && !d.wants_write())
    }

    fn exempt_from_idle(&self) -> bool {
        !self.owes_nothing() || self.dedicated.as_ref().is_some_and(|d| d.is_waiting())
    }

    /// Parses every complete request in the input and dispatches it, as far as allowed.
    /// Consecutive requests served locally run as one batch (one store lock, one reply
    /// buffer); consecutive shared requests go upstream as one run.
    fn process_input(
        &mut self,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &mut Option<Box<ClientState>>,
        stream: &TcpStream,
    ) {
        if self.closing || self.stalled.is_some() || self.inbuf.is_empty() {
            return;
        }
        // One read of the health snapshot per batch of requests, after the store's recovery
        // count: a recovery after this read makes the batch's local work stale.
        self.recoveries = ctx.store.recoveries();
        let available = ctx.monitor.snapshot().upstream_available();
        // Kept between reads: a pipelining client reuses the same two vectors.
        let mut runs = std::mem::take(&mut self.runs);
        let mut last = LastCommand::default();
        let mut supports = engine::Supports::default();
        // Sends the runs gathered so far before `$req` is dispatched; if a reload made the
        // local run stale, puts it and `$req` back to be judged again, and ends the batch.
        macro_rules! flush_runs {
            ($req:ident) => {
                if self.send_runs(&mut runs, ctx, shared, inbox, state, available) {
                    self.replay(runs.local.drain(..).chain([$req]));
                    break;
                }
            };
        }
        while !self.closing && self.stalled.is_none() && !self.inbuf.is_empty() && !self.rejudge {
            let req = match self.parser.next(&mut self.inbuf) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    if self.send_runs(&mut runs, ctx, shared, inbox, state, available) {
                        // Judged again first; the bad bytes are read again after them.
                        self.replay(runs.local.drain(..));
                        break;
                    }
                    ctx.clients.record_protocol_error();
                    self.push_local(ProxyError::Protocol(e.to_string()).to_reply());
                    self.closing = true;
                    self.inbuf.clear();
                    break;
                }
            };
            let special = Special::of(&req);
            let counts = &ctx.clients.commands;
            // Subscribed or monitoring: everything goes to that connection, whose Redis answers
            // (or refuses) connection and transaction commands in that context. The proxy
            // still checks permissions and routes keys, and follows a RESET.
            let unpaired = self.dedicated.as_ref().is_some_and(|d| !d.is_paired());
            let in_multi = !unpaired && state.as_ref().is_some_and(|s| s.multi.is_some());
            if (in_multi && !matches!(special, Special::Reset | Special::Quit))
                || (!unpaired && special == Special::Transaction)
            {
                flush_runs!(req);
                counts.record(&mut last, req.name(), Outcome::Proxy);
                if let Some(req) = self.transaction(req, ctx, shared, inbox, state, available) {
                    // WATCH or UNWATCH for the client's upstream connection.
                    let watch = req.name().eq_ignore_ascii_case(b"watch");
                    ClientState::of(state, &ctx.settings.users).watched_upstream = watch;
                    self.forward_stateful(req);
                }
                continue;
            }
            // Authentication and permissions first, connection commands included (AUTH,
            // HELLO and RESET are allowed before authenticating; QUIT always is).
            // (KEYWARDEN, not in Redis's command table, is checked on its own below.)
            if ctx.settings.users.required()
                && !matches!(special, Special::Quit | Special::Keywarden)
            {
                if let Err(denied) = ctx.permit(&req, state) {
                    flush_runs!(req);
                    counts.record(&mut last, req.name(), Outcome::Refused);
                    self.push_local(denied);
                    continue;
                }
            }
            let answered = match special {
                Special::Reset | Special::Connection | Special::Keywarden | Special::Info => {
                    !unpaired
                }
                _ => false,
            };
            if answered {
                counts.record(&mut last, req.name(), Outcome::Proxy);
            }
            match special {
                Special::Reset if unpaired => {
                    // Redis answers it in order with what the subscription still sends; then
                    // the connection is dropped and the client starts afresh on shared ones.
                    flush_runs!(req);
                    counts.record(&mut last, req.name(), Outcome::Upstream);
                    self.follow_reset(&req, ctx, state);
                    if let Some(ded) = self.dedicated.as_mut() {
                        ded.queue_reset(&req);
                    }
                    self.stalled = Some((req, Stall::Reset));
                    continue;
                }
                Special::Connection | Special::Reset if !unpaired => {
                    flush_runs!(req);
                    let reply = self.answer_connection_command(&req, ctx, state, stream);
                    self.push_local(reply);
                    continue;
                }
                Special::Keywarden if !unpaired => {
                    flush_runs!(req);
                    let reply = match ctx.permit_admin(state) {
                        Ok(()) => keywarden::run(&req, *ctx, ClientState::resp3_of(state)),
                        Err(denied) => denied,
                    };
                    self.push_local(reply);
                    // KEYWARDEN RELOAD: what follows in the input is read under the new policy.
                    self.rejudge = ctx.live.generation() != ctx.policy.generation;
                    continue;
                }
                Special::Info if !unpaired => {
                    flush_runs!(req);
                    self.info(req, ctx, shared, inbox, state, available);
                    continue;
                }
                _ => {}
            }
            let route = ctx.route_in(&req, available, &mut supports);
            let outcome = match route {
                Route::Upstream => Outcome::Upstream,
                Route::Local => Outcome::Local,
                Route::Reject(_) => Outcome::Refused,
            };
            counts.record(&mut last, req.name(), outcome);
            match route {
                Route::Upstream if !runs.local.is_empty() => {
                    if self.send_local(&mut runs, ctx, state, available) {
                        self.replay(runs.local.drain(..).chain([req]));
                        break;
                    }
                }
                Route::Upstream => {}
                Route::Local => {
                    self.send_shared(&mut runs.shared, ctx, shared, inbox, available);
                    runs.local.push(req);
                    continue;
                }
                Route::Reject(refusal) => {
                    flush_runs!(req);
                    self.push_local(ctx.refusal(refusal, &req).to_reply());
                    continue;
                }
            }
            let mut disposition = command::disposition(&req);
            if disposition == Disposition::Shared && ClientState::db_of(state) != 0 {
                // Shared connections stay in database 0.
                disposition = Disposition::Dedicated(Stateful::default());
            }
            if let Some(ded) = self.dedicated.as_mut() {
                let props = match disposition {
                    Disposition::Dedicated(props) => props,
                    Disposition::Shared | Disposition::Quit => Stateful::default(),
                };
                ded.queue(&req, props);
                if ded.is_paired() {
                    self.expect_upstream(1);
                }
                continue;
            }
            match disposition {
                Disposition::Shared if shared.is_resp3() != ClientState::resp3_of(state) => {
                    self.send_shared(&mut runs.shared, ctx, shared, inbox, available);
                    if self.pending.is_empty() {
                        *shared = ctx.upstream.pick(ClientState::resp3_of(state));
                        runs.shared.push(req);
                    } else {
                        self.stalled = Some((req, Stall::Repick));
                    }
                }
                Disposition::Shared => runs.shared.push(req),
                Disposition::Quit => {
                    self.send_shared(&mut runs.shared, ctx, shared, inbox, available);
                    self.push_local(Bytes::from_static(b"+OK\r\n"));
                    self.closing = true;
                }
                Disposition::Dedicated(props) => {
                    self.send_shared(&mut runs.shared, ctx, shared, inbox, available);
                    self.stalled = Some((req, Stall::Dedicated(props)));
                }
            }
        }
        if self.send_runs(&mut runs, ctx, shared, inbox, state, available) {
            self.replay(runs.local.drain(..));
        }
        self.runs = runs;
        if self.dedicated.is_some() {
            self.write_dedicated();
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 && !self.owes_nothing() {
            // Give the buffer back while waiting for replies (which may take long: a blocked
            // command, a subscription). A client answered in full keeps it until it goes
            // quiet, and then it goes with the busy state to the spares.
            self.inbuf = BytesMut::new();
        }
    }

    /// Puts a quiet busy state (see [`Busy::is_quiet`]) with this thread's spares, with what
    /// it keeps bounded, or drops it when there are enough.
    fn retire(mut self: Box<Busy>) {
        debug_assert!(self.is_quiet() && self.out_len == 0);
        if !self.runs.shared.is_empty() || !self.runs.local.is_empty() {
            return;
        }
        // The input buffer only if nothing else holds a part of it (a request still queued
        // upstream) and a burst did not grow it past a few reads.
        if self.inbuf.capacity() > SPARE_INBUF || !self.inbuf.try_reclaim(READ_CHUNK) {
            self.inbuf = BytesMut::new();
        }
        self.out.shrink_to(SPARE_QUEUE);
        self.pending.shrink_to(SPARE_QUEUE);
        self.runs.shared.shrink_to(SPARE_QUEUE);
        self.runs.local.shrink_to(SPARE_QUEUE);
        SPARE_BUSY.with_borrow_mut(|spares| {
            if spares.len() < SPARE_BUSY_MAX {
                spares.push(self);
            }
        });
    }

    /// INFO: the upstream's sections with the proxy's own appended; the proxy's alone when
    /// only those are asked for or the upstream is unavailable.
    fn info(
        &mut self,
        req: Request,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &Option<Box<ClientState>>,
        available: bool,
    ) {
        let wants = info::wants(&req);
        let resp3 = ClientState::resp3_of(state);
        if wants == info::Wants::KeywardenOnly || (!available && wants == info::Wants::Both) {
            self.push_local(resp::text(&info::section(&ctx.sample(), ctx.policy), resp3));
            return;
        }
        let slot = match wants {
            info::Wants::Both => Slot::Info(info::section(&ctx.sample(), ctx.policy)),
            _ => Slot::Upstream(1),
        };
        if let Some(ded) = self.dedicated.as_mut() {
            ded.queue(&req, Stateful::default());
            if ded.is_paired() {
                self.pending.push_back(slot);
            }
            return;
        }
        if ClientState::db_of(state) != 0 {
            // Upstream requests in another database go over the client's own connection.
            self.stalled = Some((req, Stall::Dedicated(Stateful::default())));
            return;
        }
        if shared.is_resp3() != resp3 {
            if !self.pending.is_empty() {
                self.stalled = Some((req, Stall::Repick));
                return;
            }
            *shared = ctx.upstream.pick(resp3);
        }
        // Alone in its run, so its reply arrives as one chunk of one frame.
        match shared.send(std::slice::from_ref(&req), inbox, available) {
            Ok(()) => self.pending.push_back(slot),
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
    }

    /// A RESET going to a subscribed client's connection: Redis answers it there; the proxy
    /// resets its own view of the client too.
    fn follow_reset(&self, req: &Request, ctx: &Ctx<'_>, state: &mut Option<Box<ClientState>>) {
        let peer = || connection::Peer {
            addr: None,
            local: None,
        };
        let env = connection::Env {
            users: &ctx.settings.users,
            version: "",
            id: self.id,
            clients: &ctx.clients,
        };
        let _ = connection::answer(req, state, &env, peer);
        ctx.clients
            .publish(self.key, connection::listed(state, &ctx.settings.users));
    }

    /// Sends a request that needs the client's own upstream connection (WATCH, UNWATCH there).
    fn forward_stateful(&mut self, req: Request) {
        let props = Stateful::default();
        match self.dedicated.as_mut() {
            Some(ded) => {
                ded.queue(&req, props);
                if ded.is_paired() {
                    self.expect_upstream(1);
                }
            }
            None => self.stalled = Some((req, Stall::Dedicated(props))),
        }
    }

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH, and every request while a transaction is being
    /// queued. Returns a WATCH or UNWATCH that must go to the client's upstream connection.
    fn transaction(
        &mut self,
        req: Request,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &mut Option<Box<ClientState>>,
        available: bool,
    ) -> Option<Request> {
        let users = &ctx.settings.users;
        let name = req.name().to_ascii_lowercase();
        let in_multi = state.as_ref().is_some_and(|s| s.multi.is_some());
        let fixed = |b: &'static [u8]| Bytes::from_static(b);
        if let Err(denied) = ctx.permit(&req, state) {
            if in_multi && name != b"exec" && name != b"discard" {
                if let Some(m) = state.as_mut().and_then(|s| s.multi.as_mut()) {
                    m.aborted = true;
                }
            }
            self.push_local(denied);
            return None;
        }
        let reply = match (name.as_slice(), in_multi) {
            (b"multi", false) => {
                ClientState::of(state, users).multi = Some(Box::default());
                fixed(b"+OK\r\n")
            }
            (b"multi", true) => fixed(transaction::NESTED),
            (b"watch", true) => fixed(transaction::WATCH_INSIDE),
            (b"exec", false) => fixed(transaction::EXEC_WITHOUT),
            (b"discard", false) => fixed(transaction::DISCARD_WITHOUT),
            (b"discard", true) => {
                let s = ClientState::of(state, users);
                s.multi = None;
                s.watch = None;
                if std::mem::take(&mut s.watched_upstream) {
                    if let Some(ded) = self.dedicated.as_mut() {
                        ded.queue_discarded(&Request::from_args(&["UNWATCH"]));
                    }
                }
                fixed(b"+OK\r\n")
            }
            (b"watch", false) => match ctx.route(&req, available) {
                Route::Local => {
                    let db = ClientState::db_of(state);
                    let s = ClientState::of(state, users);
                    let watch = s.watch.get_or_insert_with(|| Watch::new(ctx.store.clone()));
                    for key in req.args().skip(1) {
                        watch.add(db, key, unix_ms());
                    }
                    fixed(b"+OK\r\n")
                }
                Route::Upstream => return Some(req),
                Route::Reject(refusal) => ctx.refusal(refusal, &req).to_reply(),
            },
            (b"unwatch", false) => {
                if let Some(s) = state.as_mut() {
                    s.watch = None;
                }
                if self.dedicated.is_some() {
                    return Some(req);
                }
                fixed(b"+OK\r\n")
            }
            (b"exec", true) => return self.exec(req, ctx, shared, inbox, state, available),
            _ => self.queue_in_transaction(req, ctx, state, available),
        };
        self.push_local(reply);
        None
    }

    /// One command between MULTI and EXEC: checked as Redis checks it when queueing (and for
    /// where it runs), then `+QUEUED`, or an error that makes EXEC abort.
    fn queue_in_transaction(
        &mut self,
        req: Request,
        ctx: &Ctx<'_>,
        state: &mut Option<Box<ClientState>>,
        available: bool,
    ) -> Bytes {
        let checked = (|| {
            if transaction::refused_inside(req.name()) {
                return Err(Bytes::from_static(transaction::NOT_ALLOWED));
            }
            let Some(cmd) = command::lookup_request(&req) else {
                return Err(engine::unknown_command(&req));
            };
            if !cmd.arity_ok(req.argc()) {
                let text = format!(
                    "-ERR wrong number of arguments for '{}' command\r\n",
                    cmd.name()
                );
                return Err(Bytes::from(text));
            }
            if req.name().eq_ignore_ascii_case(b"select") {
                let valid = req
                    .arg(1)
                    .and_then(engine::string2ll)
                    .is_some_and(|n| (0..i64::from(engine::DATABASES)).contains(&n));
                return if valid {
                    Ok(None)
                } else {
                    Err(Bytes::from_static(b"-ERR DB index is out of range\r\n"))
                };
            }
            match ctx.route(&req, available) {
                Route::Local => Ok(Some(Target::Local)),
                Route::Upstream => Ok(Some(Target::Upstream)),
                Route::Reject(refusal) => Err(ctx.refusal(refusal, &req).to_reply()),
            }
        })();
        let Some(multi) = state.as_mut().and_then(|s| s.multi.as_mut()) else {
            return Bytes::from_static(transaction::EXEC_WITHOUT);
        };
        let target = match checked {
            Ok(target) => target,
            Err(reply) => {
                multi.aborted = true;
                return reply;
            }
        };
        if let Some(t) = target {
            if multi.target.is_some_and(|have| have != t) {
                multi.aborted = true;
                return Bytes::from_static(transaction::MIXED);
            }
            multi.target = Some(t);
        }
        multi.queued.push(req);
        Bytes::from_static(b"+QUEUED\r\n")
    }

    /// EXEC: runs the queued transaction where its commands go, as one piece.
    fn exec(
        &mut self,
        exec: Request,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &mut Option<Box<ClientState>>,
        available: bool,
    ) -> Option<Request> {
        let s = ClientState::of(state, &ctx.settings.users);
        let multi = s.multi.take().expect("EXEC runs inside MULTI");
        let mut watch = s.watch.take();
        let watched_upstream = std::mem::take(&mut s.watched_upstream);
        if multi.aborted {
            self.push_local(Bytes::from_static(transaction::EXECABORT));
            return None;
        }
        // Health, or the configuration (a reload), may have changed since the commands were
        // queued: check and route them again now. Redis too checks permissions again at EXEC;
        // where it answers that command's element with -NOPERM and runs the others, the proxy
        // discards the whole transaction with that error.
        let mut target = None;
        for req in &multi.queued {
            if let Err(denied) = ctx.permit_as(req, s.user) {
                self.push_local(denied);
                return None;
            }
            let now = match ctx.route(req, available) {
                _ if req.name().eq_ignore_ascii_case(b"select") => continue,
                Route::Local => Target::Local,
                Route::Upstream => Target::Upstream,
                Route::Reject(refusal) => {
                    self.push_local(ctx.refusal(refusal, req).to_reply());
                    return None;
                }
            };
            if target.is_some_and(|t| t != now) {
                self.push_local(Bytes::from_static(transaction::MIXED));
                return None;
            }
            target = Some(now);
        }
        let local_watch = watch.is_some();
        let upstream = match target {
            Some(Target::Upstream) => true,
            Some(Target::Local) => false,
            None => watched_upstream,
        };
        if (upstream && local_watch) || (!upstream && watched_upstream) {
            self.push_local(Bytes::from_static(transaction::MIXED));
            return None;
        }
        if !upstream {
            let Some(txn) =
                ctx.store
                    .lock_judged(unix_ms(), ctx.policy.generation, self.recoveries)
            else {
                // A reload or a recovery came between routing and running: EXEC is judged
                // again.
                s.multi = Some(multi);
                s.watch = watch;
                self.replay([exec]);
                return None;
            };
            let db_before = s.db;
            let mut out = BytesMut::new();
            s.db = engine::exec_transaction(
                txn,
                s.db,
                s.resp3,
                &multi.queued,
                watch.as_mut(),
                &mut out,
            );
            let db = ClientState::db_of(state);
            if db != db_before {
                if let Some(ded) = self.dedicated.as_mut() {
                    ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()]));
                }
                ctx.clients
                    .publish(self.key, connection::listed(state, &ctx.settings.users));
            }
            // Ran (not aborted by WATCH) while the upstream is away: degraded replies, and
            // writes that recovery will discard (a command failing inside EXEC still counts).
            if !available && out.first() == Some(&b'*') && !out.starts_with(b"*-1") {
                for req in &multi.queued {
                    ctx.count_degraded(req, true);
                }
            }
            self.push_local(out.freeze());
            return None;
        }
        if multi
            .queued
            .iter()
            .any(|r| r.name().eq_ignore_ascii_case(b"select"))
        {
            self.push_local(Bytes::from_static(transaction::SELECT_UPSTREAM));
            return None;
        }
        let mut reqs = Vec::with_capacity(multi.queued.len() + 2);
        reqs.push(Request::from_args(&["MULTI"]));
        reqs.extend(multi.queued);
        reqs.push(Request::from_args(&["EXEC"]));
        if let Some(ded) = self.dedicated.as_mut() {
            let exec = reqs.pop().expect("EXEC is last");
            for req in &reqs {
                ded.queue_discarded(req);
            }
            ded.queue(&exec, Stateful::default());
            if ded.is_paired() {
                self.expect_upstream(1);
            }
            return None;
        }
        let resp3 = s.resp3;
        if s.db != 0 || (shared.is_resp3() != resp3 && !self.pending.is_empty()) {
            // Upstream in another database, or in the other protocol while replies are still
            // owed on the shared connection: on the client's own connection.
            self.stalled = Some((reqs.remove(0), Stall::Transaction(reqs)));
            return None;
        }
        if shared.is_resp3() != resp3 {
            *shared = ctx.upstream.pick(resp3);
        }
        match shared.send_transaction(&reqs, inbox, available) {
            Ok(()) => self.expect_upstream(1),
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
        None
    }

    /// A connection command, answered by the proxy; the client's own upstream connection, if
    /// it has one, follows the change.
    fn answer_connection_command(
        &mut self,
        req: &Request,
        ctx: &Ctx<'_>,
        state: &mut Option<Box<ClientState>>,
        stream: &TcpStream,
    ) -> Bytes {
        let peer = || connection::Peer {
            addr: stream.peer_addr().ok(),
            local: stream.local_addr().ok(),
        };
        let hello = req.name().eq_ignore_ascii_case(b"hello");
        let version = hello.then(|| ctx.upstream.version()).flatten();
        let env = connection::Env {
            users: &ctx.settings.users,
            version: version.as_deref().unwrap_or(connection::SERVER_VERSION),
            id: self.id,
            clients: &ctx.clients,
        };
        let answer = connection::answer(req, state, &env, peer);
        if connection::may_change_listing(req) {
            ctx.clients
                .publish(self.key, connection::listed(state, &ctx.settings.users));
        }
        let Some(ded) = self.dedicated.as_mut() else {
            return answer.reply;
        };
        match answer.sync {
            Sync::Nothing => {}
            Sync::Select(db) => ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()])),
            Sync::Hello(v) => ded.queue_silent(&Request::from_args(&["HELLO", &v.to_string()])),
            Sync::Reset => {
                // RESET also logs the connection out: the proxy logs it back in.
                ded.queue_silent(&Request::from_args(&["RESET"]));
                for setup in handshake::setup_commands(&ctx.settings.upstream, false) {
                    ded.queue_silent(&setup);
                }
            }
        }
        answer.reply
    }

    /// Sends both runs: the local one first, since a run is only ever started after the other
    /// one was sent.
    fn send_runs(
        &mut self,
        runs: &mut Runs,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &Option<Box<ClientState>>,
        available: bool,
    ) -> bool {
        // At most one of the two runs is non-empty: each is sent before the other grows.
        if self.send_local(runs, ctx, state, available) {
            return true;
        }
        self.send_shared(&mut runs.shared, ctx, shared, inbox, available);
        false
    }

    /// Runs the batch of locally served requests and queues their replies as one. True when a
    /// reload made the batch stale: nothing ran, and `runs.local` is left for [`Busy::replay`].
    fn send_local(
        &mut self,
        runs: &mut Runs,
        ctx: &Ctx<'_>,
        state: &Option<Box<ClientState>>,
        available: bool,
    ) -> bool {
        if runs.local.is_empty() {
            return false;
        }
        let db = ClientState::db_of(state);
        let resp3 = ClientState::resp3_of(state);
        let served = ctx.serve_locally(&runs.local, db, resp3, available, self.recoveries);
        let Some(reply) = served else {
            return true;
        };
        runs.local.clear();
        self.push_local(reply);
        false
    }

    /// Puts `reqs` back in front of the unread input, to be parsed and judged again by the
    /// policy a reload installed (the session takes it before its next batch). Their
    /// per-command counts were already taken: a request replayed is counted twice, in the
    /// rare race this covers.
    fn replay(&mut self, reqs: impl IntoIterator<Item = Request>) {
        let mut input = BytesMut::new();
        for req in reqs {
            input.extend_from_slice(req.raw());
        }
        input.extend_from_slice(&self.inbuf);
        self.inbuf = input;
        self.parser.restart();
        self.rejudge = true;
    }

    /// One more reply is owed by the upstream connection the client is on.
    fn expect_upstream(&mut self, n: u32) {
        match self.pending.back_mut() {
            Some(Slot::Upstream(owed)) => *owed += n,
            _ => self.pending.push_back(Slot::Upstream(n)),
        }
    }

    /// Sends a run of requests on the shared connection.
    fn send_shared(
        &mut self,
        run: &mut Vec<Request>,
        ctx: &Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        available: bool,
    ) {
        if run.is_empty() {
            return;
        }
        let n = run.len() as u32;
        let mut sent = shared.send(run, inbox, available);
        if sent.is_err() && self.pending.is_empty() {
            // Nothing is owed on the old connection, so moving to one that is up cannot
            // reorder replies: after an outage, the first connection back serves everyone.
            if let Some(conn) = ctx.upstream.pick_up(shared.is_resp3()) {
                *shared = conn;
                sent = shared.send(run, inbox, available);
            }
        }
        match sent {
            Ok(()) => self.pending.push_back(Slot::Upstream(n)),
            Err(why) => {
                let err = ProxyError::from(why).to_reply();
                for _ in 0..n {
                    self.push_local(err.clone());
                }
            }
        }
        run.clear();
    }

    /// The dedicated connection for the stalled request is open (or could not be): bring it
    /// to the client's database, then send the request.
    fn opened(
        &mut self,
        opened: Result<Dedicated, UpstreamFailure>,
        ctx: &Ctx<'_>,
        state: &Option<Box<ClientState>>,
    ) {
        let (req, props, rest) = match self.stalled.take() {
            Some((req, Stall::Dedicated(props))) => (req, props, Vec::new()),
            Some((req, Stall::Transaction(rest))) => (req, Stateful::default(), rest),
            _ => return,
        };
        match opened {
            Ok(mut ded) => {
                let resp3 = ClientState::resp3_of(state);
                for setup in handshake::setup_commands(&ctx.settings.upstream, resp3) {
                    ded.queue_silent(&setup);
                }
                let db = ClientState::db_of(state);
                if db != 0 {
                    ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()]));
                }
                let info = req.name().eq_ignore_ascii_case(b"info")
                    && info::wants(&req) == info::Wants::Both;
                if rest.is_empty() {
                    ded.queue(&req, props);
                } else {
                    ded.queue_discarded(&req);
                    let (exec, queued) = rest.split_last().expect("a transaction ends in EXEC");
                    for r in queued {
                        ded.queue_discarded(r);
                    }
                    ded.queue(exec, props);
                }
                if info {
                    self.pending
                        .push_back(Slot::Info(info::section(&ctx.sample(), ctx.policy)));
                } else if ded.is_paired() {
                    self.expect_upstream(1);
                }
                self.dedicated = Some(ded);
                self.write_dedicated();
            }
            // The client stays on the shared connection; its next stateful command tries again.
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
    }

    fn take_inbox(&mut self, inbox: &Inbox) {
        let mut chunks = VecDeque::new();
        inbox.drain_into(&mut chunks);
        for Chunk { data, frames } in chunks {
            self.arrived(data, frames);
        }
    }

    /// Replies from the upstream connection the client is on, answering `frames` requests:
    /// out they go, followed by the proxy's own replies that were waiting on them.
    fn arrived(&mut self, data: Bytes, frames: u32) {
        if frames == 0 {
            // RESP3 pushes alone: they answer no request and wait on nothing.
            self.push_out(data);
            return;
        }
        if let Some(Slot::Info(section)) = self.pending.front() {
            // An INFO reply always arrives alone (see `info`).
            debug_assert_eq!(frames, 1);
            let data = info::append(&data, section);
            self.pending.pop_front();
            self.push_out(data);
            self.flush_local_slots();
            return;
        }
        self.push_out(data);
        let mut frames = frames;
        while frames > 0 {
            let Some(Slot::Upstream(owed)) = self.pending.front_mut() else {
                debug_assert!(false, "replies arrived with no upstream slot waiting");
                return;
            };
            let taken = frames.min(*owed);
            *owed -= taken;
            frames -= taken;
            if *owed == 0 {
                self.pending.pop_front();
                self.flush_local_slots();
            }
        }
    }

    /// Writes out the proxy's own replies now at the front of the queue.
    fn flush_local_slots(&mut self) {
        while let Some(Slot::Local(_)) = self.pending.front() {
            if let Some(Slot::Local(reply)) = self.pending.pop_front() {
                self.push_out(reply);
            }
        }
    }

    fn read_dedicated(&mut self) {
        let Some(ded) = self.dedicated.as_mut() else {
            return;
        };
        match ded.fill() {
            Ok(true) => {}
            Ok(false) => return,
            Err(why) => return self.lose_dedicated(why),
        }
        if !ded.is_paired() {
            // Unpaired (Pub/Sub, MONITOR): bytes go out as they come, and whatever the proxy
            // answered meanwhile follows them.
            match ded.take_raw() {
                Ok((data, reset)) => {
                    if let Some(data) = data {
                        self.push_out(data);
                    }
                    if reset {
                        // +RESET arrived: the connection served its purpose.
                        self.dedicated = None;
                        if matches!(self.stalled, Some((_, Stall::Reset))) {
                            self.stalled = None;
                        }
                    }
                }
                Err(why) => return self.lose_dedicated(why),
            }
            for slot in std::mem::take(&mut self.pending) {
                if let Slot::Local(reply) = slot {
                    self.push_out(reply);
                }
            }
            return;
        }
        // Reply by reply slot, so the proxy's own replies queued between them go out in place.
        loop {
            let limit = match self.pending.front() {
                Some(Slot::Upstream(owed)) => *owed,
                Some(Slot::Info(_)) => 1,
                _ => 0,
            };
            let Some(ded) = self.dedicated.as_mut() else {
                return;
            };
            match ded.next_replies(limit) {
                Ok(Some((data, frames))) => self.arrived(data, frames),
                Ok(None) => return,
                Err(why) => return self.lose_dedicated(why),
            }
        }
    }

    fn write_dedicated(&mut self) {
        if let Some(Err(why)) = self.dedicated.as_mut().map(|d| d.write()) {
            self.lose_dedicated(why);
        }
    }

    fn check_dedicated_timeout(&mut self, timeout: Duration) {
        if let Some(Err(why)) = self.dedicated.as_ref().map(|d| d.check_timeout(timeout)) {
            self.lose_dedicated(why);
        }
    }

    /// The dedicated connection failed: every unanswered request gets an error reply, in order
    /// with the proxy's own replies, then the client is closed, since the state it built
    /// upstream (transaction, subscriptions, blocking) is gone and its library must start over.
    fn lose_dedicated(&mut self, why: UpstreamFailure) {
        self.dedicated = None;
        let err = ProxyError::from(why).to_reply();
        if matches!(self.stalled, Some((_, Stall::Reset))) {
            // The RESET sent to that connection is owed a reply too.
            self.stalled = None;
            self.pending.push_back(Slot::Upstream(1));
        }
        for slot in std::mem::take(&mut self.pending) {
            match slot {
                Slot::Upstream(n) => {
                    for _ in 0..n {
                        self.push_out(err.clone());
                    }
                }
                Slot::Info(_) => self.push_out(err.clone()),
                Slot::Local(reply) => self.push_out(reply),
            }
        }
        self.closing = true;
        self.inbuf.clear();
    }

    /// Queues a reply the proxy made, behind every reply owed before it.
    fn push_local(&mut self, reply: Bytes) {
        if self.pending.is_empty() {
            self.push_out(reply);
        } else {
            self.pending.push_back(Slot::Local(reply));
        }
    }

    fn push_out(&mut self, data: Bytes) {
        self.out_len += data.len();
        self.out.push_back(data);
    }

    /// Writes as much queued output as the socket takes without waiting.
    fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.out.len().min(MAX_IOVECS);
            for (slot, data) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(data);
            }
            let mut written = match stream.try_write_vectored(&slices[..n]) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            self.out_len -= written;
            while written > 0 {
                let front = self.out.front_mut().expect("written bytes came from out");
                if written >= front.len() {
                    written -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Ok(())
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
            let stream = TcpStream::connect(listener.local_addr().unwrap())
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
            );
            let server = Arc::new(Server {
                live: crate::config::live::Live::new(settings),
                upstream,
                clients: Default::default(),
                monitor: monitor.handle(),
                store: Arc::new(crate::local::store::Store::new(1 << 20)),
                events,
                reloads: Default::default(),
            });
            let policy = server.policy();
            let task = Session::new(stream, server, policy);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 128, "session task state is {size} bytes");
        });
    }
}
