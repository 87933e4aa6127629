//! MULTI/EXEC/DISCARD/WATCH, answered by the proxy. The proxy queues a transaction itself
//! (`+QUEUED`, or an error that aborts it at EXEC, as Redis's queue-time errors do), so that one
//! transaction can run against the local store atomically, or be sent upstream in one piece —
//! MULTI, the commands, EXEC — where a lost upstream makes EXEC fail and never leaves a part
//! applied. A transaction runs in one place: every command in it must go to the same one.

use bytes::Bytes;

use super::client_state::Target;
use super::connection_commands;
use crate::command::{self, Stateful};
use crate::error::ProxyError;
use crate::local::clock::unix_ms;
use crate::local::engine;
use crate::local::store::Watch;
use crate::policy::router::Route;
use crate::protocol::request::Request;
use crate::upstream::cluster::relay::Relay;

use super::batch::Batch;
use super::busy::{Busy, Stall};

/// Commands that never enter a transaction: they change what the connection is (Pub/Sub,
/// MONITOR, the client's identity) rather than data.
pub(crate) fn refused_inside(name: &[u8]) -> bool {
    const REFUSED: &[&[u8]] = &[
        b"auth",
        b"hello",
        b"client",
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
        b"monitor",
        b"sync",
        b"psync",
        b"replconf",
    ];
    REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r))
}

impl Busy {
    /// Sends a request that needs the client's own upstream connection (WATCH, UNWATCH there).
    pub(super) fn forward_stateful(&mut self, req: Request) {
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
    pub(super) fn transaction(&mut self, req: Request, b: &mut Batch<'_>) -> Option<Request> {
        let (ctx, available, state) = (b.ctx, b.available, &mut *b.state);
        let users = &ctx.settings.users;
        let name = req.name().to_ascii_lowercase();
        let in_multi = state.get().is_some_and(|s| s.multi.is_some());
        let fixed = |b: &'static [u8]| Bytes::from_static(b);
        if let Err(denied) = ctx.permit(&req, state) {
            if in_multi && name != b"exec" && name != b"discard" {
                if let Some(m) = state.get_mut().and_then(|s| s.multi.as_mut()) {
                    m.aborted = true;
                }
            }
            self.push_local(denied);
            return None;
        }
        let reply = match (name.as_slice(), in_multi) {
            (b"multi", false) => {
                state.edit(users).multi = Some(Box::default());
                fixed(b"+OK\r\n")
            }
            (b"multi", true) => ProxyError::MultiNested.to_reply(),
            (b"watch", true) => ProxyError::WatchInsideMulti.to_reply(),
            (b"exec", false) => ProxyError::ExecWithoutMulti.to_reply(),
            (b"discard", false) => ProxyError::DiscardWithoutMulti.to_reply(),
            (b"discard", true) => {
                let s = state.edit(users);
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
                    let db = state.db();
                    let s = state.edit(users);
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
                if let Some(s) = state.get_mut() {
                    s.watch = None;
                }
                if self.dedicated.is_some() {
                    return Some(req);
                }
                fixed(b"+OK\r\n")
            }
            (b"exec", true) => return self.exec(req, b),
            _ => self.queue_in_transaction(req, b),
        };
        self.push_local(reply);
        None
    }

    /// One command between MULTI and EXEC: checked as Redis checks it when queueing (and for
    /// where it runs), then `+QUEUED`, or an error that makes EXEC abort.
    fn queue_in_transaction(&mut self, req: Request, b: &mut Batch<'_>) -> Bytes {
        let (ctx, available, state) = (b.ctx, b.available, &mut *b.state);
        let checked = (|| {
            if refused_inside(req.name()) {
                return Err(ProxyError::NotAllowedInMulti.to_reply());
            }
            let Some(cmd) = command::lookup_request(&req) else {
                return Err(engine::unknown_command(&req));
            };
            if !cmd.arity_ok(req.argc()) {
                let command = cmd.name().to_owned();
                return Err(ProxyError::Arity { command }.to_reply());
            }
            // SAVE, SHUTDOWN, ...: Redis flags them `no_multi`.
            if cmd.flags().contains(command::Flags::NO_MULTI) {
                return Err(ProxyError::NotAllowedInMulti.to_reply());
            }
            if req.name().eq_ignore_ascii_case(b"select") {
                let valid = req
                    .arg(1)
                    .and_then(engine::string2ll)
                    .is_some_and(|n| (0..i64::from(engine::DATABASES)).contains(&n));
                return if valid {
                    Ok(None)
                } else {
                    Err(ProxyError::DbIndexOutOfRange.to_reply())
                };
            }
            match ctx.route(&req, available) {
                Route::Local => Ok(Some(Target::Local)),
                Route::Upstream => Ok(Some(Target::Upstream)),
                Route::Reject(refusal) => Err(ctx.refusal(refusal, &req).to_reply()),
            }
        })();
        let Some(multi) = state.get_mut().and_then(|s| s.multi.as_mut()) else {
            return ProxyError::ExecWithoutMulti.to_reply();
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
                return ProxyError::TransactionMixed.to_reply();
            }
            multi.target = Some(t);
        }
        multi.queued.push(req);
        Bytes::from_static(b"+QUEUED\r\n")
    }

    /// EXEC: runs the queued transaction where its commands go, as one piece.
    fn exec(&mut self, exec: Request, b: &mut Batch<'_>) -> Option<Request> {
        let (ctx, available, inbox) = (b.ctx, b.available, b.inbox);
        let (state, shared) = (&mut *b.state, &mut *b.shared);
        let s = state.edit(&ctx.settings.users);
        let multi = s.multi.take().expect("EXEC runs inside MULTI");
        let mut watch = s.watch.take();
        let watched_upstream = std::mem::take(&mut s.watched_upstream);
        if multi.aborted {
            self.push_local(ProxyError::ExecAbort.to_reply());
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
                self.push_local(ProxyError::TransactionMixed.to_reply());
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
            self.push_local(ProxyError::TransactionMixed.to_reply());
            return None;
        }
        if !upstream {
            let ran = ctx.exec_locally(
                &multi.queued,
                s.db,
                s.resp3,
                watch.as_mut(),
                available,
                self.recoveries,
            );
            let Some((reply, db)) = ran else {
                // A reload or a recovery came between routing and running: EXEC is judged
                // again.
                s.multi = Some(multi);
                s.watch = watch;
                self.replay([exec]);
                return None;
            };
            if db != s.db {
                s.db = db;
                if let Some(ded) = self.dedicated.as_mut() {
                    ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()]));
                }
                ctx.clients.publish(
                    self.key,
                    connection_commands::listed(state, &ctx.settings.users),
                );
            }
            self.push_local(reply);
            return None;
        }
        if multi
            .queued
            .iter()
            .any(|r| r.name().eq_ignore_ascii_case(b"select"))
        {
            self.push_local(ProxyError::SelectInUpstreamTransaction.to_reply());
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
        if let Some(cluster) = &ctx.cluster {
            let prev = self.relay.take();
            self.relay = Some(Relay::send_transaction(
                cluster, &reqs, inbox, resp3, self.key, prev,
            ));
            self.expect_upstream(1);
            return None;
        }
        match shared.send_transaction(&reqs, inbox, available) {
            Ok(()) => self.expect_upstream(1),
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
        None
    }
}
