//! A dedicated upstream connection: one client's own, for the rest of its life, once it issues
//! a command that depends on connection state (MULTI, WATCH, SELECT n, blocking pops, Pub/Sub,
//! CLIENT SETNAME...). Everything then behaves exactly as against Redis, because it *is* a
//! connection to Redis.
//!
//! Replies are forwarded as raw bytes. While requests and replies still pair one to one, the
//! connection counts them, so that a hung upstream can be detected (the command timeout, except
//! for blocking commands) and every unanswered request gets an error reply when the connection
//! fails. After a command that ends the pairing (SUBSCRIBE, MONITOR, CLIENT REPLY) the bytes are
//! piped unframed, and a lost upstream closes the client so its library reconnects and
//! resubscribes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, Interval};

use crate::command::{block_timeout, holds_the_server, Stateful};
use crate::error::UpstreamFailure;
use crate::protocol::request::Request;
use crate::protocol::scanner::ReplyScanner;
use crate::upstream::holds::{HoldMark, Holds};
use crate::upstream::shared::timeout_tick;
use crate::upstream::socket::{self, Conn};

const READ_CHUNK: usize = 16 * 1024;

pub(crate) struct Dedicated {
    stream: Conn,
    rbuf: BytesMut,
    wbuf: BytesMut,
    written: usize,
    scanner: ReplyScanner,
    /// Bytes of `rbuf` framed but not yet handed on.
    framed: usize,
    /// False once a command broke the one-request-one-reply pairing.
    paired: bool,
    /// CLIENT TRACKING was sent here: invalidations (key names) may arrive as RESP3 pushes.
    tracking: bool,
    /// MONITOR unpaired it (rather than SUBSCRIBE): Redis runs any command sent there.
    monitoring: bool,
    /// Requests without a reply yet (only tracked while paired).
    outstanding: VecDeque<Outstanding>,
    /// The last time the upstream took request bytes or sent reply bytes.
    last_progress: Instant,
    /// The upstream's holds, shared with every connection to it.
    holds: Arc<Holds>,
    /// Paces command-timeout checks (a timer per request would cost more than it saves).
    tick: Interval,
    /// Unpaired, a RESET was sent, followed by an ECHO of a nonce: the raw stream is framed
    /// until that echo (this exact frame) arrives; since when.
    awaiting_reset: Option<(Bytes, Instant)>,
    /// The connection's id in Redis, once its CLIENT ID was answered (see
    /// [`Dedicated::queue_client_id`]).
    upstream_id: Option<u64>,
    /// CLIENT ID was sent (see [`Dedicated::queue_client_id`]).
    asked_id: bool,
    /// Redis's BUSY or LOADING error to a setup command: the server cannot serve anyone yet,
    /// and the client is told so in Redis's words, as it would be if connected directly.
    refused_with: Option<Bytes>,
    /// A reply to one of the client's requests has come (so the client may have built state
    /// on this connection).
    answered: bool,
    /// The request that opened the connection is a transaction's EXEC.
    opened_for_exec: bool,
}

struct Outstanding {
    blocking: bool,
    /// For a blocking command, how long it asked Redis to wait (`None`: for ever): past that
    /// and the command timeout, with nothing from the upstream, it has hung.
    block_for: Option<Duration>,
    /// Sent by the proxy to set the connection up (SELECT, HELLO): its reply is checked and
    /// kept from the client.
    silent: bool,
    /// Its reply is kept from the client whatever it is (a queued command of a transaction,
    /// already answered `+QUEUED` by the proxy).
    discard: bool,
    /// The proxy's CLIENT ID: its reply is the connection's id in Redis.
    learns_id: bool,
    since: Instant,
    /// Held while it holds the upstream (a script, KEYS, ...): see [`Holds`].
    _hold: Option<HoldMark>,
}

impl Dedicated {
    pub(crate) async fn open(
        addr: String,
        connect_timeout: Duration,
        command_timeout: Duration,
        keepalive: Option<Duration>,
        max_reply_depth: usize,
        holds: Arc<Holds>,
        tls: Option<crate::config::UpstreamTls>,
    ) -> Result<Dedicated, UpstreamFailure> {
        let stream = socket::connect_upstream(&addr, connect_timeout, keepalive, tls.as_ref())
            .await
            .map_err(|_| UpstreamFailure::Unavailable)?;
        Ok(Dedicated {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            written: 0,
            scanner: ReplyScanner::new(max_reply_depth),
            framed: 0,
            paired: true,
            tracking: false,
            monitoring: false,
            outstanding: VecDeque::new(),
            last_progress: Instant::now(),
            holds,
            tick: timeout_tick(command_timeout),
            awaiting_reset: None,
            upstream_id: None,
            asked_id: false,
            refused_with: None,
            answered: false,
            opened_for_exec: false,
        })
    }

    /// Queues a request; call [`Dedicated::write`] to send it.
    pub(crate) fn queue(&mut self, req: &Request, props: Stateful) {
        if props.blocking && self.paired && !self.asked_id {
            // The first time the client may block here: learn the connection's id in Redis,
            // for CLIENT UNBLOCK. (Not at connect: a setup command is refused while Redis is
            // BUSY, and SCRIPT KILL must still get through then.)
            self.queue_client_id();
        }
        self.wbuf.put_slice(req.raw());
        if req.name().eq_ignore_ascii_case(b"client")
            && req
                .arg(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"tracking"))
        {
            self.tracking = true;
        }
        if self.paired {
            if props.unpaired {
                // Replies still owed before this one are framed as before (see `take_raw`).
                self.paired = false;
                self.monitoring = req.name().eq_ignore_ascii_case(b"monitor");
            } else {
                let hold = holds_the_server(req).and_then(|h| self.holds.begin(h));
                self.outstanding.push_back(Outstanding {
                    blocking: props.blocking,
                    block_for: props.blocking.then(|| block_timeout(req)).flatten(),
                    silent: false,
                    discard: false,
                    learns_id: false,
                    since: Instant::now(),
                    _hold: hold,
                });
            }
        }
    }

    /// Queues a command of the proxy's own that brings the connection's state in line with the
    /// client's (SELECT after the client selected a database, HELLO after a protocol switch).
    /// Its reply never reaches the client; an error reply fails the connection. Nothing is sent
    /// once unpaired: a subscribed connection has no database or protocol left to follow.
    pub(crate) fn queue_silent(&mut self, req: &Request) {
        if !self.paired {
            return;
        }
        self.wbuf.put_slice(req.raw());
        self.outstanding.push_back(Outstanding {
            blocking: false,
            block_for: None,
            silent: true,
            discard: false,
            learns_id: false,
            since: Instant::now(),
            _hold: None,
        });
    }

    /// Asks Redis for the connection's id, silently, so that CLIENT UNBLOCK of this client
    /// can name it (see [`Dedicated::upstream_id`]).
    fn queue_client_id(&mut self) {
        self.asked_id = true;
        self.queue_silent(&Request::from_args(&["CLIENT", "ID"]));
        if let Some(last) = self.outstanding.back_mut() {
            last.learns_id = true;
        }
    }

    /// The connection's id in Redis, once known.
    pub(crate) fn upstream_id(&self) -> Option<u64> {
        self.upstream_id
    }

    /// Queues a request whose reply the client must not see, whatever it is: MULTI and the
    /// queued commands of a transaction the proxy sends at EXEC.
    pub(crate) fn queue_discarded(&mut self, req: &Request) {
        if !self.paired {
            return;
        }
        self.queue_silent(req);
        if let Some(last) = self.outstanding.back_mut() {
            last.discard = true;
        }
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.written < self.wbuf.len() || self.stream.wants_write()
    }

    /// Requests written whose replies have not come back (once unpaired, only those sent
    /// before).
    pub(crate) fn unanswered(&self) -> usize {
        self.outstanding.len()
    }

    /// The BUSY or LOADING error Redis answered a setup command with, if that is why the
    /// connection failed (see [`Dedicated::next_replies`]).
    pub(crate) fn refused_with(&mut self) -> Option<Bytes> {
        self.refused_with.take()
    }

    /// Whether the connection was refused before any of the client's requests was answered
    /// on it: nothing the client built upstream is lost with it, as none was built.
    pub(crate) fn refused_at_setup(&self) -> bool {
        // Unpaired (SUBSCRIBE, MONITOR opened it), nothing tracks what the client is owed,
        // so it is closed as on any other loss.
        self.refused_with.is_some() && !self.answered && self.paired
    }

    /// The request that opens this connection is a transaction's EXEC (after its MULTI and
    /// queued commands, discarded): a refusal answers it as Redis answers EXEC then.
    pub(crate) fn mark_opened_for_exec(&mut self) {
        self.opened_for_exec = true;
    }

    pub(crate) fn opened_for_exec(&self) -> bool {
        self.opened_for_exec
    }

    pub(crate) fn is_paired(&self) -> bool {
        self.paired
    }

    /// MONITOR unpaired this connection: Redis runs any command the client sends there, in
    /// RESP2 too (a RESP2 subscriber's are limited to the SUBSCRIBE family, PING, QUIT, RESET).
    pub(crate) fn is_monitoring(&self) -> bool {
        self.monitoring
    }

    /// CLIENT TRACKING was sent on this connection (on or off: which one won is not looked
    /// at), so it may carry invalidations naming keys.
    pub(crate) fn tracks_keys(&self) -> bool {
        self.tracking
    }

    /// Replies are owed to requests sent while paired (tracked one by one).
    pub(crate) fn owes_replies(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// True while a blocking command sent here is unanswered (Redis's `b` client flag).
    pub(crate) fn is_blocked(&self) -> bool {
        self.paired && self.outstanding.iter().any(|o| o.blocking)
    }

    /// True while the client waits on a blocking command or listens to pushes: Redis exempts
    /// such clients from its idle timeout, and so does the proxy.
    pub(crate) fn is_waiting(&self) -> bool {
        !self.paired || self.outstanding.iter().any(|o| o.blocking)
    }

    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    /// Ready when a command-timeout check is due (never while no timed request is waiting).
    pub(crate) fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.timing() {
            return Poll::Pending;
        }
        self.tick.poll_tick(cx).map(|_| ())
    }

    pub(crate) fn write(&mut self) -> Result<(), UpstreamFailure> {
        while self.written < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[self.written..]) {
                Ok(n) => {
                    // The upstream takes what it is sent: progress (see `shared`).
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

    /// Reads what the upstream has sent; false when nothing was there. `Err` when the
    /// upstream closed.
    pub(crate) fn fill(&mut self) -> Result<bool, UpstreamFailure> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK.max(self.rbuf.len()));
        }
        match self.stream.read_available(&mut self.rbuf) {
            Ok(0) => Err(UpstreamFailure::ConnectionLost),
            Ok(_) => {
                self.last_progress = Instant::now();
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(_) => Err(UpstreamFailure::ConnectionLost),
        }
    }

    /// Once unpaired: sends `reset` and, behind it, an ECHO of a nonce, then frames the raw
    /// stream until that echo comes back. Everything before it (RESET's own reply included,
    /// or none after CLIENT REPLY SKIP) goes to the client; the echo does not. A `+RESET`
    /// cannot mark the end: a script may return one, and CLIENT REPLY may suppress it.
    pub(crate) fn queue_reset(&mut self, reset: &Request) {
        use std::hash::BuildHasher;
        let nonce = format!(
            "keywarden-reset-{:016x}",
            std::collections::hash_map::RandomState::new().hash_one(Instant::now())
        );
        self.wbuf.put_slice(reset.raw());
        self.wbuf
            .put_slice(Request::from_args(&["ECHO", nonce.as_str()]).raw());
        let echo = Bytes::from(format!("${}\r\n{nonce}\r\n", nonce.len()));
        self.awaiting_reset = Some((echo, Instant::now()));
    }

    /// Once unpaired: every byte read, as it came, once the replies owed from before are out
    /// (those are framed, so that replies to the proxy's own setup commands stay hidden).
    /// True with the bytes that end in the `+RESET` awaited (see [`Dedicated::expect_reset`]).
    pub(crate) fn take_raw(&mut self) -> Result<(Option<Bytes>, bool), UpstreamFailure> {
        debug_assert!(!self.paired);
        let mut owed = BytesMut::new();
        while !self.outstanding.is_empty() {
            // No further than the replies owed: what follows is the unpaired stream's.
            let limit = self.outstanding.iter().filter(|o| !o.silent).count() as u32;
            match self.next_replies(limit)? {
                Some((data, _)) => owed.extend_from_slice(&data),
                None => break,
            }
        }
        let mut reset = false;
        if self.outstanding.is_empty() {
            if let Some((echo, _)) = &self.awaiting_reset {
                self.framed = 0;
                loop {
                    match self.scanner.scan(&self.rbuf[self.framed..]) {
                        Ok(Some(frame)) => {
                            let end = self.framed + frame.len;
                            if self.rbuf[self.framed..end] == echo[..] {
                                owed.extend_from_slice(&self.rbuf.split_to(self.framed));
                                let _ = self.rbuf.split_to(frame.len);
                                self.framed = 0;
                                reset = true;
                                break;
                            }
                            self.framed = end;
                        }
                        Ok(None) => break,
                        Err(_) => return Err(UpstreamFailure::BadReply),
                    }
                }
                if reset {
                    self.awaiting_reset = None;
                } else {
                    owed.extend_from_slice(&self.rbuf.split_to(self.framed));
                    self.framed = 0;
                }
            } else {
                self.framed = 0;
                owed.extend_from_slice(&self.rbuf.split());
            }
        }
        Ok(((!owed.is_empty()).then(|| owed.freeze()), reset))
    }

    /// While paired: the complete replies read so far that answer at most `limit` of the
    /// client's requests, with how many they answer. Replies to the proxy's own silent
    /// commands are taken out, and RESP3 pushes (client tracking) ride along, answering
    /// nothing. `Err` when the upstream sent something that is not RESP or refused a silent
    /// command.
    pub(crate) fn next_replies(
        &mut self,
        limit: u32,
    ) -> Result<Option<(Bytes, u32)>, UpstreamFailure> {
        let mut answered = 0;
        // Client bytes framed before a silent reply, when one sits between two of them.
        let mut kept: Option<BytesMut> = None;
        while self.framed < self.rbuf.len() {
            let is_push = self.rbuf[self.framed] == b'>';
            // The proxy's own replies are taken whatever the limit: left unread, one would
            // look like a request the upstream never answered.
            let next_silent = self.outstanding.front().is_some_and(|o| o.silent);
            if answered == limit && !is_push && !next_silent {
                break;
            }
            let frame = match self.scanner.scan(&self.rbuf[self.framed..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return Err(UpstreamFailure::BadReply),
            };
            let (silent, discard, learns_id) = match frame.push {
                true => (false, false, false),
                false => self
                    .outstanding
                    .pop_front()
                    .map_or((false, false, false), |o| {
                        (o.silent, o.discard, o.learns_id)
                    }),
            };
            if !silent {
                self.framed += frame.len;
                answered += u32::from(!frame.push);
                self.answered = true;
                continue;
            }
            // A queued command's error is Redis's answer (EXEC will say EXECABORT); a setup
            // command's error means the connection is not what the client needs.
            if !discard && self.rbuf[self.framed] == b'-' {
                let line = &self.rbuf[self.framed..self.framed + frame.len];
                if line.starts_with(b"-BUSY") || line.starts_with(b"-LOADING") {
                    self.refused_with = Some(Bytes::copy_from_slice(line));
                }
                return Err(UpstreamFailure::SetupRefused);
            }
            if learns_id {
                let line = &self.rbuf[self.framed..self.framed + frame.len];
                self.upstream_id = std::str::from_utf8(&line[1..line.len() - 2])
                    .ok()
                    .and_then(|id| id.parse().ok());
            }
            if self.framed > 0 {
                let before = self.rbuf.split_to(self.framed);
                kept.get_or_insert_with(BytesMut::new)
                    .extend_from_slice(&before);
                self.framed = 0;
            }
            let _ = self.rbuf.split_to(frame.len);
        }
        let data = self.rbuf.split_to(self.framed);
        self.framed = 0;
        let data = match kept {
            Some(mut kept) => {
                kept.extend_from_slice(&data);
                kept
            }
            None => data,
        };
        Ok((!data.is_empty()).then(|| (data.freeze(), answered)))
    }

    /// Fails when the upstream has made no progress for `timeout` since the oldest unanswered
    /// request was sent or, for a blocking command with a timeout, since that timeout ran
    /// out (a command that blocks for ever is never timed); no timeout runs while a client's
    /// command holds the upstream (see [`Holds`]).
    pub(crate) fn check_timeout(&self, timeout: Duration) -> Result<(), UpstreamFailure> {
        let timed_out = |since: Instant| {
            self.holds
                .timeout_from(since.max(self.last_progress))
                .is_some_and(|from| from.elapsed() >= timeout)
        };
        if let Some((_, since)) = &self.awaiting_reset {
            if timed_out(*since) {
                return Err(UpstreamFailure::Timeout(timeout));
            }
        }
        match self.outstanding.front() {
            Some(o) if !o.blocking && timed_out(o.since) => Err(UpstreamFailure::Timeout(timeout)),
            // A blocking command is timed from the end of its own wait.
            Some(o) if o.blocking => match o.block_for {
                Some(wait) if timed_out(o.since + wait) => Err(UpstreamFailure::Timeout(timeout)),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The proxy is not reading this connection (its client is not reading the replies it
    /// holds): time without reading is not the upstream's silence, so the command timeout
    /// counts from now on again.
    pub(crate) fn not_read(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Whether a timeout check is worth scheduling.
    fn timing(&self) -> bool {
        self.awaiting_reset.is_some()
            || (self.outstanding.front()).is_some_and(|o| !o.blocking || o.block_for.is_some())
    }
}
