//! One batch: every complete request in the input, each taken through the same steps
//! (classify → admit → answer or route → queue), and queued: to the shared connection as one
//! run, to the local store as one locked batch, or to the client's own connection.

use std::sync::Arc;

use crate::upstream::socket::Conn;
use bytes::{Bytes, BytesMut};

use super::busy::{Busy, Runs, Slot, Stall};
use super::connection_commands::{self, Follow, Handling, Unblock};
use super::keywarden;
use crate::command::{self, Disposition, Stateful};
use crate::error::ProxyError;
use crate::local::engine;
use crate::ops::info;
use crate::policy::router::Route;
use crate::protocol::parser::ProtocolError;
use crate::protocol::request::Request;
use crate::protocol::resp;
use crate::proxy::clients::{CommandOutcome, LastCommand};
use crate::proxy::server::Ctx;
use crate::proxy::session::client_state::SessionState;
use crate::upstream::cluster::relay::Relay;
use crate::upstream::handshake;
use crate::upstream::inbox::Inbox;
use crate::upstream::shared::SharedConn;

/// What every step of one batch works with: the server as the batch sees it, the session's
/// connection to the shared pool and its inbox, the client's connection state, and the
/// upstream's health, read once for the whole batch.
pub(super) struct Batch<'a> {
    pub(super) ctx: Ctx<'a>,
    pub(super) shared: &'a mut Arc<SharedConn>,
    pub(super) inbox: &'a Arc<Inbox>,
    pub(super) state: &'a mut SessionState,
    pub(super) stream: &'a Conn,
    /// Whether requests go upstream (healthy or recovering).
    pub(super) available: bool,
    /// The last command counted, so a repeated name is counted without a lookup.
    last: LastCommand,
    /// Whether the local engine runs a command, remembered while the name repeats.
    supports: engine::Supports,
}

impl<'a> Batch<'a> {
    pub(super) fn new(
        ctx: Ctx<'a>,
        shared: &'a mut Arc<SharedConn>,
        inbox: &'a Arc<Inbox>,
        state: &'a mut SessionState,
        stream: &'a Conn,
        available: bool,
    ) -> Batch<'a> {
        Batch {
            ctx,
            shared,
            inbox,
            state,
            stream,
            available,
            last: LastCommand::default(),
            supports: engine::Supports::default(),
        }
    }

    /// Counts one request of command `name` for the per-command metrics.
    fn count(&mut self, name: &[u8], outcome: CommandOutcome) {
        self.ctx
            .clients
            .commands
            .record(&mut self.last, name, outcome);
    }
}

/// A step's verdict when it cannot go on: the local run gathered so far was made stale by a
/// reload (see [`Busy::send_local`]); the request, which did nothing yet, goes back with it to
/// be judged again.
type Stale = Request;

impl Busy {
    /// Parses every complete request in the input and dispatches it, as far as allowed.
    /// Consecutive requests served locally run as one batch (one store lock, one reply
    /// buffer); consecutive shared requests go upstream as one run.
    pub(super) fn process_input(
        &mut self,
        ctx: Ctx<'_>,
        shared: &mut Arc<SharedConn>,
        inbox: &Arc<Inbox>,
        state: &mut SessionState,
        stream: &Conn,
    ) {
        if self.closing || self.stalled.is_some() || self.inbuf.is_empty() {
            return;
        }
        // One read of the health snapshot per batch of requests, after the store's recovery
        // count: a recovery after this read makes the batch's local work stale.
        self.recoveries = ctx.store.recoveries();
        let available = ctx.upstream_available();
        let mut b = Batch::new(ctx, shared, inbox, state, stream, available);
        // Kept between reads: a pipelining client reuses the same two vectors.
        let mut runs = std::mem::take(&mut self.runs);
        let users = &ctx.settings.users;
        while !self.closing
            && self.stalled.is_none()
            && self.penalty.is_none()
            && !self.inbuf.is_empty()
            && !self.rejudge
        {
            // Redis's tighter input limits until the client has authenticated; checked for
            // every request, as AUTH pipelined before a large command lifts them for it.
            (self.parser).set_auth_required(users.required() && b.state.user(users).is_none());
            let req = match self.parser.next(&mut self.inbuf) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_error(e, &mut runs, &mut b);
                    break;
                }
            };
            if let Err(req) = self.dispatch(req, &mut runs, &mut b) {
                self.replay(runs.local.drain(..).chain([req]));
                break;
            }
        }
        if self.send_runs(&mut runs, &mut b) {
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

    /// Bytes that are not RESP: what came before is sent, the error is the last reply, and
    /// the connection closes once it is written, as Redis does.
    fn protocol_error(&mut self, e: ProtocolError, runs: &mut Runs, b: &mut Batch<'_>) {
        if self.send_runs(runs, b) {
            // Judged again first; the bad bytes are read again after them.
            self.replay(runs.local.drain(..));
            return;
        }
        b.ctx.clients.record_protocol_error();
        self.push_local(ProxyError::Protocol(e.to_string()).to_reply());
        self.closing = true;
        self.inbuf.clear();
    }

    /// One request through the steps: classify it; a transaction's, to the transaction;
    /// admit it (authentication, permissions); answer it if the proxy does (connection
    /// commands, KEYWARDEN, INFO); otherwise route it by its keys and queue it.
    #[inline(always)]
    fn dispatch(&mut self, req: Request, runs: &mut Runs, b: &mut Batch<'_>) -> Result<(), Stale> {
        let special = Handling::of(&req);
        // Subscribed or monitoring: everything goes to that connection, whose Redis answers
        // (or refuses) connection and transaction commands in that context. The proxy still
        // checks permissions and routes keys, and follows a RESET.
        let unpaired = self.dedicated.as_ref().is_some_and(|d| !d.is_paired());
        let in_multi = !unpaired && b.state.get().is_some_and(|s| s.multi.is_some());
        if (in_multi && !matches!(special, Handling::Reset | Handling::Quit))
            || (!unpaired && special == Handling::Transaction)
        {
            let req = self.flush_runs(runs, b, req)?;
            b.count(req.name(), CommandOutcome::Proxy);
            self.transaction_command(req, b);
            return Ok(());
        }
        // Authentication and permissions first, connection commands included (AUTH, HELLO
        // and RESET are allowed before authenticating; QUIT always is). KEYWARDEN, not in
        // Redis's command table, is checked when it is answered.
        if b.ctx.settings.users.required()
            && !matches!(special, Handling::Quit | Handling::Keywarden)
        {
            if let Err(denied) = b.ctx.permit(&req, b.state) {
                let req = self.flush_runs(runs, b, req)?;
                b.count(req.name(), CommandOutcome::Refused);
                self.push_local(denied);
                return Ok(());
            }
        }
        if special == Handling::Rescue {
            // What ends a busy script goes upstream whatever the health (a busy Redis fails
            // the probe, and this is what makes it answer again).
            b.count(req.name(), CommandOutcome::Upstream);
            return self.send_upstream(req, runs, b);
        }
        if let Handling::Reset | Handling::Connection | Handling::Keywarden | Handling::Info =
            special
        {
            return match self.answer(req, special, unpaired, runs, b)? {
                Some(req) => self.route(req, runs, b),
                None => Ok(()),
            };
        }
        self.route(req, runs, b)
    }

    /// Sends the runs gathered so far, before a request that does not join them.
    fn flush_runs(
        &mut self,
        runs: &mut Runs,
        b: &mut Batch<'_>,
        req: Request,
    ) -> Result<Request, Stale> {
        match self.send_runs(runs, b) {
            true => Err(req),
            false => Ok(req),
        }
    }

    /// A transaction command, or any command while one is queued; a WATCH or UNWATCH for the
    /// client's upstream connection goes there.
    fn transaction_command(&mut self, req: Request, b: &mut Batch<'_>) {
        if let Some(req) = self.transaction(req, b) {
            let watch = req.name().eq_ignore_ascii_case(b"watch");
            b.state.edit(&b.ctx.settings.users).watched_upstream = watch;
            self.forward_stateful(req);
        }
    }

    /// The commands the proxy answers itself, unless the client's connection is unpaired
    /// (subscribed, MONITOR), where Redis answers them. `Some(req)`: not answered here, to be
    /// routed as any other.
    fn answer(
        &mut self,
        req: Request,
        special: Handling,
        unpaired: bool,
        runs: &mut Runs,
        b: &mut Batch<'_>,
    ) -> Result<Option<Request>, Stale> {
        // AUTH, and HELLO with AUTH, name keywarden's users: never sent to the upstream. Where
        // Redis runs any command on a listening connection (a RESP3 subscriber, MONITOR) they
        // are answered here; a RESP2 subscriber gets Redis's refusal of them, from here.
        // SELECT there is answered here too, for the proxy's own database, and then goes on to
        // switch the connection's (Redis's +OK is the reply).
        let any_command = unpaired
            && (b.state.resp3() || self.dedicated.as_ref().is_some_and(|d| d.is_monitoring()));
        if unpaired && carries_credentials(&req) && !any_command {
            let req = self.flush_runs(runs, b, req)?;
            b.count(req.name(), CommandOutcome::Proxy);
            self.push_local(subscribed_refusal(&req));
            return Ok(None);
        }
        if any_command && req.name().eq_ignore_ascii_case(b"select") {
            let req = self.flush_runs(runs, b, req)?;
            let reply = self.answer_connection_command(&req, b);
            if reply.starts_with(b"+") {
                return Ok(Some(req));
            }
            b.count(req.name(), CommandOutcome::Proxy);
            self.push_local(reply);
            return Ok(None);
        }
        if unpaired && !(any_command && carries_credentials(&req)) {
            if special != Handling::Reset {
                return Ok(Some(req));
            }
            // Redis answers it in order with what the subscription still sends; then the
            // connection is dropped and the client starts afresh on shared ones.
            let req = self.flush_runs(runs, b, req)?;
            b.count(req.name(), CommandOutcome::Upstream);
            self.follow_reset(&req, b);
            if let Some(ded) = self.dedicated.as_mut() {
                ded.queue_reset(&req);
            }
            self.stalled = Some((req, Stall::Reset));
            return Ok(None);
        }
        b.count(req.name(), CommandOutcome::Proxy);
        let req = self.flush_runs(runs, b, req)?;
        match special {
            Handling::Keywarden => {
                let reply = match b.ctx.permit_admin(b.state) {
                    Ok(()) => keywarden::run(&req, b.ctx, b.state.resp3()),
                    Err(denied) => denied,
                };
                self.push_local(reply);
                // KEYWARDEN RELOAD: what follows in the input is read under the new policy.
                self.rejudge = b.ctx.live.generation() != b.ctx.policy.generation;
            }
            Handling::Info => self.info(req, b),
            _ if connection_commands::is_client_unblock(&req) => {
                match connection_commands::unblock(&req, &b.ctx.clients) {
                    Unblock::Answer(reply) => self.push_local(reply),
                    // Redis unblocks it: the client's own connection, by its id there.
                    Unblock::Forward(req) => return Ok(Some(req)),
                }
            }
            _ if b.ctx.cluster.is_some() && selects_another_db(&req) => {
                // Redis Cluster has database 0 only.
                self.push_local(Bytes::from_static(
                    b"-ERR SELECT is not allowed in cluster mode\r\n",
                ));
            }
            _ => {
                let reply = self.answer_connection_command(&req, b);
                if carries_credentials(&req) {
                    let addr = b.stream.peer_addr().ok().map(|a| a.ip());
                    let clients = &b.ctx.clients;
                    let wait = clients.auth_wait(addr);
                    if reply.starts_with(b"-WRONGPASS") {
                        clients.auth_failed(addr);
                    }
                    if let Some(wait) = wait {
                        self.penalty = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
                self.push_local(reply);
            }
        }
        Ok(None)
    }

    /// Routes `req` by its keys and the upstream's health: to a run (local or shared), to the
    /// client's own connection, or refused.
    #[inline(always)]
    fn route(&mut self, req: Request, runs: &mut Runs, b: &mut Batch<'_>) -> Result<(), Stale> {
        let route = (b.ctx).route_in(&req, b.available, &mut b.supports);
        let outcome = match route {
            Route::Upstream => CommandOutcome::Upstream,
            Route::Local => CommandOutcome::Local,
            Route::Reject(_) => CommandOutcome::Refused,
        };
        b.count(req.name(), outcome);
        match route {
            Route::Upstream => return self.send_upstream(req, runs, b),
            Route::Local => {
                self.send_shared(&mut runs.shared, b);
                runs.local.push(req);
            }
            Route::Reject(refusal) => {
                let req = self.flush_runs(runs, b, req)?;
                self.push_local(b.ctx.refusal(refusal, &req).to_reply());
            }
        }
        Ok(())
    }

    /// Sends the local run gathered so far, then queues `req` for the upstream.
    #[inline(always)]
    fn send_upstream(
        &mut self,
        req: Request,
        runs: &mut Runs,
        b: &mut Batch<'_>,
    ) -> Result<(), Stale> {
        if !runs.local.is_empty() && self.send_local(runs, b) {
            return Err(req);
        }
        self.queue_upstream(req, runs, b);
        Ok(())
    }

    /// Queues a request for the upstream: on the client's own connection if it has one or the
    /// request needs one, else in the run for the shared connection.
    #[inline(always)]
    fn queue_upstream(&mut self, req: Request, runs: &mut Runs, b: &mut Batch<'_>) {
        let mut disposition = command::disposition(&req);
        if disposition == Disposition::Shared && b.state.db() != 0 {
            // Shared connections stay in database 0.
            disposition = Disposition::Dedicated(Stateful::default());
        }
        if b.ctx.cluster.is_some() && disposition == Disposition::Shared && self.own_conn_idle(b) {
            // Under a cluster, a client's own connection is to one node: once its blocking
            // command, transaction or WATCH is over, the client goes back to the relay, which
            // reaches every node.
            self.dedicated = None;
        }
        if let Some(ded) = self.dedicated.as_mut() {
            let props = match disposition {
                Disposition::Dedicated(props) => props,
                Disposition::Shared | Disposition::Quit => Stateful::default(),
            };
            ded.queue(&req, props);
            if ded.is_paired() {
                self.expect_upstream(1);
                if disposition == Disposition::Quit {
                    // Redis answers +OK and closes: nothing after QUIT is read, as in Redis.
                    // (Unpaired, the raw stream runs until Redis closes it.)
                    self.closing = true;
                    self.inbuf.clear();
                }
            }
            return;
        }
        match disposition {
            Disposition::Shared if b.shared.is_resp3() != b.state.resp3() => {
                self.send_shared(&mut runs.shared, b);
                if self.pending.is_empty() {
                    *b.shared = b.ctx.upstream.pick(b.state.resp3());
                    runs.shared.push(req);
                } else {
                    self.stalled = Some((req, Stall::Repick));
                }
            }
            Disposition::Shared => runs.shared.push(req),
            Disposition::Quit => {
                self.send_shared(&mut runs.shared, b);
                self.push_local(Bytes::from_static(b"+OK\r\n"));
                self.closing = true;
            }
            Disposition::Dedicated(props) => {
                self.send_shared(&mut runs.shared, b);
                self.stalled = Some((req, Stall::Dedicated(props)));
            }
        }
    }

    /// Whether the client's own upstream connection holds nothing: paired, no reply owed, no
    /// transaction or WATCH on it.
    fn own_conn_idle(&self, b: &Batch<'_>) -> bool {
        let quiet = self
            .dedicated
            .as_ref()
            .is_some_and(|d| d.is_paired() && !d.owes_replies());
        let state = b.state.get();
        quiet
            && self.pending.is_empty()
            && !state.is_some_and(|s| s.multi.is_some() || s.watched_upstream)
    }

    /// INFO: the upstream's sections with the proxy's own appended; the proxy's alone when
    /// only those are asked for or the upstream is unavailable.
    pub(super) fn info(&mut self, req: Request, b: &mut Batch<'_>) {
        let (ctx, available, state) = (b.ctx, b.available, &*b.state);
        let wants = info::wants(&req);
        let resp3 = state.resp3();
        if wants == info::Wants::KeywardenOnly || (!available && wants == info::Wants::Both) {
            self.push_local(resp::text(
                &info::section(&ctx.overview(), ctx.policy),
                resp3,
            ));
            return;
        }
        let slot = match wants {
            info::Wants::Both => Slot::Info(info::section(&ctx.overview(), ctx.policy)),
            _ => Slot::Upstream(1),
        };
        if let Some(ded) = self.dedicated.as_mut() {
            ded.queue(&req, Stateful::default());
            if ded.is_paired() {
                self.pending.push_back(slot);
            }
            return;
        }
        if state.db() != 0 {
            // Upstream requests in another database go over the client's own connection.
            self.stalled = Some((req, Stall::Dedicated(Stateful::default())));
            return;
        }
        if b.shared.is_resp3() != resp3 {
            if !self.pending.is_empty() {
                self.stalled = Some((req, Stall::Repick));
                return;
            }
            *b.shared = ctx.upstream.pick(resp3);
        }
        if let Some(cluster) = &ctx.cluster {
            let stream = b.stream;
            let here = || here(stream);
            let one = std::slice::from_ref(&req);
            let (resp3, prev) = (b.shared.is_resp3(), self.relay.take());
            self.relay = Some(Relay::send(
                cluster, one, b.inbox, resp3, self.key, &here, prev,
            ));
            self.pending.push_back(slot);
            return;
        }
        // Alone in its run, so its reply arrives as one chunk of one frame.
        match b
            .shared
            .send(std::slice::from_ref(&req), b.inbox, available)
        {
            Ok(()) => self.pending.push_back(slot),
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
    }

    /// A RESET going to a subscribed client's connection: Redis answers it there; the proxy
    /// resets its own view of the client too.
    fn follow_reset(&self, req: &Request, b: &mut Batch<'_>) {
        let (ctx, state) = (b.ctx, &mut *b.state);
        let peer = || connection_commands::Peer {
            addr: None,
            local: None,
        };
        let env = connection_commands::Env {
            users: &ctx.settings.users,
            version: "",
            id: self.id,
            clients: &ctx.clients,
        };
        let _ = connection_commands::answer(req, state, &env, peer);
        ctx.clients.publish(
            self.key,
            connection_commands::listed(state, &ctx.settings.users),
        );
    }

    /// A connection command, answered by the proxy; the client's own upstream connection, if
    /// it has one, follows the change.
    fn answer_connection_command(&mut self, req: &Request, b: &mut Batch<'_>) -> Bytes {
        let (ctx, state, stream) = (b.ctx, &mut *b.state, b.stream);
        let peer = || connection_commands::Peer {
            addr: stream.peer_addr().ok(),
            local: stream.local_addr().ok(),
        };
        let hello = req.name().eq_ignore_ascii_case(b"hello");
        let version = hello.then(|| ctx.upstream.version()).flatten();
        let env = connection_commands::Env {
            users: &ctx.settings.users,
            version: version
                .as_deref()
                .unwrap_or(connection_commands::SERVER_VERSION),
            id: self.id,
            clients: &ctx.clients,
        };
        let answer = connection_commands::answer(req, state, &env, peer);
        if connection_commands::may_change_listing(req) {
            ctx.clients.publish(
                self.key,
                connection_commands::listed(state, &ctx.settings.users),
            );
        }
        let Some(ded) = self.dedicated.as_mut() else {
            return answer.reply;
        };
        match answer.follow {
            Follow::Nothing => {}
            Follow::Select(db) => {
                ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()]))
            }
            Follow::Hello(v) => ded.queue_silent(&Request::from_args(&["HELLO", &v.to_string()])),
            Follow::Reset => {
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
    pub(super) fn send_runs(&mut self, runs: &mut Runs, b: &mut Batch<'_>) -> bool {
        // At most one of the two runs is non-empty: each is sent before the other grows.
        if self.send_local(runs, b) {
            return true;
        }
        self.send_shared(&mut runs.shared, b);
        false
    }

    /// Runs the batch of locally served requests and queues their replies as one. True when a
    /// reload made the batch stale: nothing ran, and `runs.local` is left for [`Busy::replay`].
    fn send_local(&mut self, runs: &mut Runs, b: &Batch<'_>) -> bool {
        if runs.local.is_empty() {
            return false;
        }
        let db = b.state.db();
        let resp3 = b.state.resp3();
        let served = (b.ctx).serve_locally(&runs.local, db, resp3, b.available, self.recoveries);
        let Some(reply) = served else {
            return true;
        };
        runs.local.clear();
        self.push_local(reply);
        false
    }

    /// Sends a run of requests on the shared connection, if there is one. (Asked before every
    /// local request, so the empty case stays inline.)
    #[inline]
    pub(super) fn send_shared(&mut self, run: &mut Vec<Request>, b: &mut Batch<'_>) {
        if !run.is_empty() {
            self.send_run(run, b);
        }
    }

    fn send_run(&mut self, run: &mut Vec<Request>, b: &mut Batch<'_>) {
        let (ctx, shared, inbox, available) = (b.ctx, &mut *b.shared, b.inbox, b.available);
        let n = run.len() as u32;
        if let Some(cluster) = &ctx.cluster {
            // Every reply comes back through the relay, in order, errors included.
            let stream = b.stream;
            let here = || here(stream);
            let (resp3, prev) = (shared.is_resp3(), self.relay.take());
            self.relay = Some(Relay::send(
                cluster, run, inbox, resp3, self.key, &here, prev,
            ));
            self.pending.push_back(Slot::Upstream(n));
            run.clear();
            return;
        }
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

/// SELECT of a database other than 0 (what Redis Cluster refuses).
fn selects_another_db(req: &Request) -> bool {
    req.name().eq_ignore_ascii_case(b"select") && req.argc() == 2 && req.arg(1) != Some(b"0")
}

/// Keywarden's `host:port` as a client reached it (what CLUSTER SLOTS names).
fn here(stream: &Conn) -> String {
    match stream.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(_) => "127.0.0.1:6379".to_owned(),
    }
}

/// Redis's reply to a command a RESP2 subscriber may not send.
fn subscribed_refusal(req: &Request) -> Bytes {
    let name = String::from_utf8_lossy(req.name()).to_ascii_lowercase();
    Bytes::from(format!(
        "-ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    ))
}

/// AUTH, or HELLO with an AUTH option: a keywarden user's credentials.
fn carries_credentials(req: &Request) -> bool {
    let name = req.name();
    name.eq_ignore_ascii_case(b"auth")
        || (name.eq_ignore_ascii_case(b"hello")
            && req.args().skip(1).any(|a| a.eq_ignore_ascii_case(b"auth")))
}
