//! The client's own upstream connection: opened once every reply owed on the shared one has
//! arrived, brought to the client's database and protocol, read, written, and lost.

use std::time::Duration;

use crate::command::Stateful;
use crate::error::{ProxyError, UpstreamFailure};
use crate::ops::info;
use crate::protocol::request::Request;
use crate::proxy::server::Ctx;
use crate::proxy::session::client_state::SessionState;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::handshake;

use super::busy::{Busy, Slot, Stall};

impl Busy {
    /// The dedicated connection for the stalled request is open (or could not be): bring it
    /// to the client's database, then send the request.
    pub(super) fn opened(
        &mut self,
        opened: Result<Dedicated, UpstreamFailure>,
        ctx: &Ctx<'_>,
        state: &SessionState,
    ) {
        let (req, props, rest) = match self.stalled.take() {
            Some((req, Stall::Dedicated(props))) => (req, props, Vec::new()),
            Some((req, Stall::Transaction(rest))) => (req, Stateful::default(), rest),
            _ => return,
        };
        match opened {
            Ok(mut ded) => {
                let resp3 = state.resp3();
                for setup in handshake::setup_commands(&ctx.settings.upstream, resp3) {
                    ded.queue_silent(&setup);
                }
                let db = state.db();
                if db != 0 {
                    ded.queue_silent(&Request::from_args(&["SELECT", &db.to_string()]));
                }
                let info = req.name().eq_ignore_ascii_case(b"info")
                    && info::wants(&req) == info::Wants::Both;
                if rest.is_empty() {
                    ded.queue(&req, props);
                } else {
                    ded.mark_opened_for_exec();
                    ded.queue_discarded(&req);
                    let (exec, queued) = rest.split_last().expect("a transaction ends in EXEC");
                    for r in queued {
                        ded.queue_discarded(r);
                    }
                    ded.queue(exec, props);
                }
                if info {
                    self.pending
                        .push_back(Slot::Info(info::section(&ctx.overview(), ctx.policy)));
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

    pub(super) fn read_dedicated(&mut self) {
        let Some(ded) = self.dedicated.as_mut() else {
            return;
        };
        match ded.fill() {
            Ok(true) => {}
            Ok(false) => return,
            Err(why) => return self.lose_dedicated(why),
        }
        if !ded.is_paired() {
            // The replies owed from before the connection unpaired go out slot by slot, as
            // while paired, so the proxy's own replies queued between them keep their place
            // (a large bulk still arriving holds back the CLIENT GETNAME answered after it).
            loop {
                let limit = match self.pending.front() {
                    Some(Slot::Upstream(owed)) => *owed,
                    Some(Slot::Info(_)) => 1,
                    _ => break,
                };
                let Some(ded) = self.dedicated.as_mut().filter(|d| d.owes_replies()) else {
                    break;
                };
                match ded.next_replies(limit) {
                    Ok(Some((data, frames))) => self.arrived(data, frames),
                    Ok(None) => return,
                    Err(why) => return self.lose_dedicated(why),
                }
            }
            let Some(ded) = self.dedicated.as_mut() else {
                return;
            };
            // Then (Pub/Sub, MONITOR) bytes go out as they come, and whatever the proxy
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
            for slot in self.pending.take() {
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

    pub(super) fn write_dedicated(&mut self) {
        if let Some(Err(why)) = self.dedicated.as_mut().map(|d| d.write()) {
            self.lose_dedicated(why);
        }
    }

    pub(super) fn check_dedicated_timeout(&mut self, timeout: Duration) {
        if let Some(Err(why)) = self.dedicated.as_ref().map(|d| d.check_timeout(timeout)) {
            self.lose_dedicated(why);
        }
    }

    /// The dedicated connection failed: every unanswered request gets an error reply, in order
    /// with the proxy's own replies, then the client is closed, since the state it built
    /// upstream (transaction, subscriptions, blocking) is gone and its library must start over.
    /// Unless Redis refused the connection's setup with BUSY or LOADING before answering any
    /// of the client's requests: then the client is answered in Redis's words (EXEC with
    /// Redis's EXECABORT) and stays, with nothing lost, as it would on Redis; its next request
    /// that needs a connection of its own opens another.
    pub(super) fn lose_dedicated(&mut self, why: UpstreamFailure) {
        let (refused, at_setup, exec) = match self.dedicated.take() {
            Some(mut d) => {
                let (at_setup, exec) = (d.refused_at_setup(), d.opened_for_exec());
                (d.refused_with(), at_setup, exec)
            }
            None => (None, false, false),
        };
        // EXEC, the request that opened the connection, is owed the first reply: Redis's
        // EXECABORT; anything after it gets the refusal itself.
        let exec_abort = refused.as_ref().filter(|_| exec && at_setup).map(|line| {
            let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
            ProxyError::ExecAbortBecause(text).to_reply()
        });
        let err = refused.unwrap_or_else(|| ProxyError::from(why).to_reply());
        let mut first = exec_abort;
        if matches!(self.stalled, Some((_, Stall::Reset))) {
            // The RESET sent to that connection is owed a reply too.
            self.stalled = None;
            self.pending.push_back(Slot::Upstream(1));
        }
        for slot in self.pending.take() {
            match slot {
                Slot::Upstream(n) => {
                    for _ in 0..n {
                        self.push_out(first.take().unwrap_or_else(|| err.clone()));
                    }
                }
                Slot::Info(_) => self.push_out(err.clone()),
                Slot::Local(reply) => self.push_out(reply),
            }
        }
        if !at_setup {
            self.closing = true;
            self.inbuf.clear();
        }
    }
}
