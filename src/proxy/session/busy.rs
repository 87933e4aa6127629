//! A session's state while anything is in flight ([`Busy`]): the input, the reply slots in
//! request order, the output queue, and the per-thread spares that quiet clients give it back
//! to.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;

use crate::upstream::socket::Conn;
use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Sleep;

use super::client_state::Multi;
use crate::command::Stateful;
use crate::config::Limits;
use crate::ops::info;
use crate::policy::router::Route;
use crate::protocol::parser::RequestParser;
use crate::protocol::request::Request;
use crate::proxy::clients::{Clients, Limit, OUTPUT_STEP};
use crate::proxy::server::Ctx;
use crate::proxy::session::client_state::SessionState;
use crate::upstream::cluster::relay::Relay;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::inbox::{Chunk, Inbox};

use super::{parser_limits, MAX_IOVECS, READ_CHUNK};

/// Why a request waits for every earlier reply.
pub(super) enum Stall {
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
pub(super) enum Slot {
    /// This many replies from the shared connection, still to come through the inbox.
    Upstream(u32),
    /// A reply the proxy made, to be written once everything before it is out.
    Local(Bytes),
    /// One INFO reply from the upstream, to which this `# Keywarden` section is appended.
    Info(String),
}

impl Slot {
    /// Bytes of reply it holds while it waits: the proxy's own reply, or INFO's section.
    fn held(&self) -> usize {
        match self {
            Slot::Upstream(_) => 0,
            Slot::Local(reply) => reply.len(),
            Slot::Info(section) => section.len(),
        }
    }
}

/// The reply slots not yet ready, in request order, and the bytes the proxy's own replies
/// among them hold: counted with the output queue against `max_pending_output`, so that
/// replies made behind a blocked command (a flood of CLIENT LIST behind BLPOP) stop the reading
/// of more requests as upstream replies do.
#[derive(Default)]
pub(super) struct Slots {
    queue: VecDeque<Slot>,
    held: usize,
}

impl Slots {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    pub(super) fn front(&self) -> Option<&Slot> {
        self.queue.front()
    }

    /// The replies still owed to the front slot, if it waits on the upstream.
    pub(super) fn owed_front(&mut self) -> Option<&mut u32> {
        match self.queue.front_mut() {
            Some(Slot::Upstream(owed)) => Some(owed),
            _ => None,
        }
    }

    /// The replies owed to the last slot, if it waits on the upstream.
    pub(super) fn owed_back(&mut self) -> Option<&mut u32> {
        match self.queue.back_mut() {
            Some(Slot::Upstream(owed)) => Some(owed),
            _ => None,
        }
    }

    pub(super) fn push_back(&mut self, slot: Slot) {
        self.held += slot.held();
        self.queue.push_back(slot);
    }

    pub(super) fn pop_front(&mut self) -> Option<Slot> {
        let slot = self.queue.pop_front()?;
        self.held -= slot.held();
        Some(slot)
    }

    /// Every slot, leaving none.
    pub(super) fn take(&mut self) -> VecDeque<Slot> {
        self.held = 0;
        std::mem::take(&mut self.queue)
    }

    pub(super) fn shrink_to(&mut self, capacity: usize) {
        self.queue.shrink_to(capacity);
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

/// The most turns a session gives the upstream connections' tasks before writing its replies.
/// Two: a task that goes to the back of the run queue to gather its turn's requests (see
/// `upstream::shared`) can land behind a session that already gave it one.
pub(super) const MAX_YIELDS: u8 = 2;

/// A session's state while anything is in flight.
pub(super) struct Busy {
    /// The session's key in [`Clients`] and CLIENT ID.
    pub(super) key: usize,
    pub(super) id: u64,
    pub(super) inbuf: BytesMut,
    pub(super) parser: RequestParser,
    /// Reply bytes ready for the client, in order.
    pub(super) out: VecDeque<Bytes>,
    pub(super) out_len: usize,
    /// The client's socket took less than was queued at the last write: it is not keeping
    /// up, and what is queued from now on may wait a long time (see [`Busy::push_out`]).
    pub(super) behind: bool,
    /// The output this session last added to [`Clients::output`].
    pub(super) published: usize,
    /// The id in Redis of the client's own connection, as last recorded in [`Clients`].
    pub(super) listed_upstream_id: Option<u64>,
    /// Reply slots not yet ready; the front, if any, is always `Slot::Upstream`.
    pub(super) pending: Slots,
    pub(super) dedicated: Option<Dedicated>,
    /// A request waiting for every reply owed before it, to move connections without
    /// reordering anything.
    pub(super) stalled: Option<(Request, Stall)>,
    /// Stop reading; close once every owed reply is written.
    pub(super) closing: bool,
    /// The vectors `process_input` gathers runs in, empty between calls.
    pub(super) runs: Runs,
    /// Requests were put back in the input after a reload (see [`Busy::replay`]): take the
    /// new policy and read them again.
    pub(super) rejudge: bool,
    /// [`Store::recoveries`](crate::local::store::Store::recoveries) when the current batch read the
    /// health snapshot that routes it.
    pub(super) recoveries: u64,
    /// A failed AUTH from an address with many: nothing more is read or written until then
    /// (its WRONGPASS reply included; see [`Clients::auth_failed`]).
    pub(super) penalty: Option<Pin<Box<Sleep>>>,
    /// Under a cluster: the last relay of this session's requests, whose replies go before
    /// the next one's.
    pub(super) relay: Option<Arc<Relay>>,
    /// How many times the session let the upstream connections' tasks go first before writing
    /// its replies (see `Session::drive`), at most [`MAX_YIELDS`] per write.
    pub(super) yielded: u8,
}

/// Requests parsed from one read, gathered until the next one goes elsewhere.
#[derive(Default)]
pub(super) struct Runs {
    /// For the shared upstream connection.
    pub(super) shared: Vec<Request>,
    /// For the local store.
    pub(super) local: Vec<Request>,
}

impl Busy {
    /// A fresh busy state: a spare one of this thread's if there is one (see [`SPARE_BUSY`]).
    pub(super) fn new(ctx: &Ctx<'_>, key: usize, id: u64) -> Box<Busy> {
        let limits = parser_limits(&ctx.settings.limits);
        if let Some(mut b) = SPARE_BUSY.with_borrow_mut(Vec::pop) {
            debug_assert!(b.is_quiet() && b.runs.shared.is_empty() && b.runs.local.is_empty());
            b.key = key;
            b.id = id;
            b.parser = RequestParser::new(limits);
            b.rejudge = false;
            b.recoveries = 0;
            b.penalty = None;
            b.yielded = 0;
            return b;
        }
        Box::new(Busy {
            key,
            id,
            inbuf: BytesMut::new(),
            parser: RequestParser::new(limits),
            out: VecDeque::new(),
            out_len: 0,
            behind: false,
            published: 0,
            listed_upstream_id: None,
            pending: Slots::default(),
            dedicated: None,
            stalled: None,
            closing: false,
            runs: Runs::default(),
            rejudge: false,
            recoveries: 0,
            penalty: None,
            relay: None,
            yielded: 0,
        })
    }

    /// After a reload: the request waiting for earlier replies (to go to the client's own
    /// connection, or to one of the other protocol) was let through by the old policy. It is
    /// judged again, as a request not yet sent anywhere: its permissions and where its keys now
    /// go. A waiting transaction is queued again and its EXEC read again, so that EXEC checks
    /// and routes every command. RESET, always allowed, keeps waiting.
    pub(super) fn rejudge_stalled(&mut self, ctx: &Ctx<'_>, state: &mut SessionState) {
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
                state.edit(&ctx.settings.users).multi = Some(Box::new(Multi {
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
                if let Some(s) = state.get_mut() {
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
        let available = ctx.upstream_available();
        match ctx.route(&req, available) {
            Route::Upstream => self.stalled = Some((req, stall)),
            Route::Local => {
                let (db, resp3) = (state.db(), state.resp3());
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
    pub(super) fn is_quiet(&self) -> bool {
        self.inbuf.is_empty()
            && self.out.is_empty()
            && self.pending.is_empty()
            && self.dedicated.is_none()
            && self.stalled.is_none()
            && !self.closing
            && self.penalty.is_none()
    }

    /// True when no reply is owed to the client beyond what is already in `out`.
    pub(super) fn owes_nothing(&self) -> bool {
        self.pending.is_empty()
            && self.stalled.is_none()
            && self
                .dedicated
                .as_ref()
                .is_none_or(|d| d.unanswered() == 0 && !d.wants_write())
    }

    pub(super) fn exempt_from_idle(&self) -> bool {
        !self.owes_nothing() || self.dedicated.as_ref().is_some_and(|d| d.is_waiting())
    }

    /// Puts a quiet busy state (see [`Busy::is_quiet`]) with this thread's spares, with what
    /// it keeps bounded, or drops it when there are enough.
    pub(super) fn retire(mut self: Box<Busy>) {
        debug_assert!(self.is_quiet() && self.out_len == 0);
        if !self.runs.shared.is_empty() || !self.runs.local.is_empty() {
            return;
        }
        // The input buffer only if nothing else holds a part of it (a request still queued
        // upstream) and a burst did not grow it past a few reads.
        if self.inbuf.capacity() > SPARE_INBUF || !self.inbuf.try_reclaim(READ_CHUNK) {
            self.inbuf = BytesMut::new();
        }
        self.relay = None;
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

    /// Puts `reqs` back in front of the unread input, to be parsed and judged again by the
    /// policy a reload installed (the session takes it before its next batch). Their
    /// per-command counts were already taken: a request replayed is counted twice, in the
    /// rare race this covers.
    pub(super) fn replay(&mut self, reqs: impl IntoIterator<Item = Request>) {
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
    pub(super) fn expect_upstream(&mut self, n: u32) {
        match self.pending.owed_back() {
            Some(owed) => *owed += n,
            None => self.pending.push_back(Slot::Upstream(n)),
        }
    }

    pub(super) fn take_inbox(&mut self, inbox: &Inbox) {
        let mut chunks = VecDeque::new();
        inbox.drain_into(&mut chunks);
        for Chunk { data, frames } in chunks {
            self.arrived(data, frames);
        }
    }

    /// Replies from the upstream connection the client is on, answering `frames` requests:
    /// out they go, followed by the proxy's own replies that were waiting on them.
    pub(super) fn arrived(&mut self, data: Bytes, frames: u32) {
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
            let Some(owed) = self.pending.owed_front() else {
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
    pub(super) fn flush_local_slots(&mut self) {
        while let Some(Slot::Local(_)) = self.pending.front() {
            if let Some(Slot::Local(reply)) = self.pending.pop_front() {
                self.push_out(reply);
            }
        }
    }

    /// Queues a reply the proxy made, behind every reply owed before it.
    pub(super) fn push_local(&mut self, reply: Bytes) {
        if self.pending.is_empty() {
            self.push_out(reply);
        } else {
            self.pending.push_back(Slot::Local(reply));
        }
    }

    /// Reply bytes held for the client: queued for it, and made by the proxy behind replies
    /// still owed.
    pub(super) fn pending_out(&self) -> usize {
        self.out_len + self.pending.held()
    }

    /// Queues bytes for the client. A reply from the upstream is a slice of a connection's
    /// read buffer and keeps that whole allocation alive while it waits; for a client that is
    /// behind, the wait may be long, so its replies are copied out and what it holds is what
    /// is counted. A client that keeps up never pays for the copy.
    pub(super) fn push_out(&mut self, data: Bytes) {
        let data = if self.behind {
            Bytes::copy_from_slice(&data)
        } else {
            data
        };
        self.out_len += data.len();
        self.out.push_back(data);
    }

    /// Records in [`Clients`] the id in Redis of the client's own connection, or that it has
    /// none, when that changed (CLIENT UNBLOCK of this client names it).
    /// Tells CLIENT LIST whether the client waits in a blocking command.
    pub(super) fn list_blocked(&self, inbox: &Inbox) {
        inbox.set_blocked(self.dedicated.as_ref().is_some_and(|d| d.is_blocked()));
    }

    pub(super) fn list_upstream_id(&mut self, clients: &Clients) {
        let id = self.dedicated.as_ref().and_then(|d| d.upstream_id());
        if id != self.listed_upstream_id {
            clients.set_upstream_id(self.key, id);
            self.listed_upstream_id = id;
        }
    }

    /// Publishes the output held to [`Clients::output`] once it has moved by [`OUTPUT_STEP`],
    /// and says which output limit the client has reached, if any: `max_client_output`, or
    /// `max_total_output` for a client holding more than `max_pending_output` (the clients
    /// that are not reading) while all clients together hold more than the budget.
    pub(super) fn output_limit(&mut self, limits: &Limits, clients: &Clients) -> Option<Limit> {
        let held = self.pending_out();
        if held.abs_diff(self.published) >= OUTPUT_STEP || (held == 0 && self.published != 0) {
            clients.output_moved(self.published, held);
            self.published = held;
        }
        if held >= limits.max_client_output {
            Some(Limit::Output)
        } else if held > limits.max_pending_output && clients.output() > limits.max_total_output {
            Some(Limit::TotalOutput)
        } else {
            None
        }
    }

    /// Writes as much queued output as the socket takes without waiting.
    pub(super) fn flush(&mut self, stream: &Conn) -> io::Result<()> {
        while !self.out.is_empty() || stream.wants_write() {
            if self.out.is_empty() {
                // Only TLS records of earlier replies are left.
                match stream.flush_records() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.behind = true;
                        return Ok(());
                    }
                    other => other?,
                }
                break;
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.out.len().min(MAX_IOVECS);
            for (slot, data) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(data);
            }
            let mut written = match stream.try_write_vectored(&slices[..n]) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.behind = true;
                    return Ok(());
                }
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
        self.behind = false;
        Ok(())
    }
}
