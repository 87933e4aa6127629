//! One batch: every complete request in the input, classified, admitted, answered or routed,
//! and queued (to the shared connection as one run, to the local store as one locked batch, or
//! to the client's own connection).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::connection::{self, Special, Sync};
use super::keywarden;
use crate::command::{self, Disposition, Stateful};
use crate::error::ProxyError;
use crate::local::engine;
use crate::ops::info;
use crate::policy::router::Route;
use crate::protocol::request::Request;
use crate::protocol::resp;
use crate::proxy::clients::{LastCommand, Outcome};
use crate::proxy::server::Ctx;
use crate::proxy::session::client_state::ClientState;
use crate::upstream::handshake;
use crate::upstream::inbox::Inbox;
use crate::upstream::shared::SharedConn;

use super::busy::{Busy, Runs, Slot, Stall};

impl Busy {
    /// Parses every complete request in the input and dispatches it, as far as allowed.
    /// Consecutive requests served locally run as one batch (one store lock, one reply
    /// buffer); consecutive shared requests go upstream as one run.
    pub(super) fn process_input(
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

    /// INFO: the upstream's sections with the proxy's own appended; the proxy's alone when
    /// only those are asked for or the upstream is unavailable.
    pub(super) fn info(
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
    pub(super) fn follow_reset(
        &self,
        req: &Request,
        ctx: &Ctx<'_>,
        state: &mut Option<Box<ClientState>>,
    ) {
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

    /// A connection command, answered by the proxy; the client's own upstream connection, if
    /// it has one, follows the change.
    pub(super) fn answer_connection_command(
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
    pub(super) fn send_runs(
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
    pub(super) fn send_local(
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

    /// Sends a run of requests on the shared connection.
    pub(super) fn send_shared(
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
}
