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
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval};

use crate::command::Stateful;
use crate::error::UpstreamFailure;
use crate::reply::ReplyScanner;
use crate::request::Request;
use crate::socket;
use crate::upstream::timeout_tick;

const READ_CHUNK: usize = 16 * 1024;

pub struct Dedicated {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    written: usize,
    scanner: ReplyScanner,
    /// Bytes of `rbuf` framed but not yet handed on.
    framed: usize,
    /// False once a command broke the one-request-one-reply pairing.
    paired: bool,
    /// Requests without a reply yet (only tracked while paired).
    outstanding: VecDeque<Outstanding>,
    last_read: Instant,
    /// Paces command-timeout checks (a timer per request would cost more than it saves).
    tick: Interval,
}

struct Outstanding {
    blocking: bool,
    since: Instant,
}

impl Dedicated {
    pub async fn open(
        addr: String,
        connect_timeout: Duration,
        command_timeout: Duration,
        keepalive: Option<Duration>,
        max_reply_depth: usize,
    ) -> Result<Dedicated, UpstreamFailure> {
        let stream = socket::connect(&addr, connect_timeout, keepalive)
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
            outstanding: VecDeque::new(),
            last_read: Instant::now(),
            tick: timeout_tick(command_timeout),
        })
    }

    /// Queues a request; call [`Dedicated::write`] to send it.
    pub fn queue(&mut self, req: &Request, props: Stateful) {
        self.wbuf.put_slice(req.raw());
        if self.paired {
            if props.unpaired {
                self.paired = false;
                self.outstanding.clear();
            } else {
                self.outstanding.push_back(Outstanding {
                    blocking: props.blocking,
                    since: Instant::now(),
                });
            }
        }
    }

    pub fn wants_write(&self) -> bool {
        self.written < self.wbuf.len()
    }

    /// Requests written whose replies have not come back (0 once unpaired, when nobody knows).
    pub fn unanswered(&self) -> usize {
        self.outstanding.len()
    }

    pub fn is_paired(&self) -> bool {
        self.paired
    }

    /// True while the client waits on a blocking command or listens to pushes: Redis exempts
    /// such clients from its idle timeout, and so does the proxy.
    pub fn is_waiting(&self) -> bool {
        !self.paired || self.outstanding.iter().any(|o| o.blocking)
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    /// Ready when a command-timeout check is due (never while no timed request is waiting).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.timing() {
            return Poll::Pending;
        }
        self.tick.poll_tick(cx).map(|_| ())
    }

    pub fn write(&mut self) -> Result<(), UpstreamFailure> {
        while self.wants_write() {
            match self.stream.try_write(&self.wbuf[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(UpstreamFailure::ConnectionLost),
            }
        }
        self.wbuf.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads what the upstream sent and returns the bytes to forward to the client (complete
    /// frames while paired, everything once unpaired). `Err` when the upstream closed or sent
    /// something that is not RESP.
    pub fn read(&mut self) -> Result<Option<Bytes>, UpstreamFailure> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK.max(self.rbuf.len()));
        }
        match socket::read_available(&self.stream, &mut self.rbuf) {
            Ok(0) => return Err(UpstreamFailure::ConnectionLost),
            Ok(_) => self.last_read = Instant::now(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(UpstreamFailure::ConnectionLost),
        }
        if !self.paired {
            self.framed = 0;
            return Ok(Some(self.rbuf.split().freeze()));
        }
        loop {
            match self.scanner.scan(&self.rbuf[self.framed..]) {
                Ok(Some(frame)) => {
                    self.framed += frame.len;
                    // A RESP3 push (client tracking) answers no request.
                    if !frame.push {
                        self.outstanding.pop_front();
                    }
                }
                Ok(None) => break,
                Err(_) => return Err(UpstreamFailure::BadReply),
            }
        }
        if self.framed == 0 {
            return Ok(None);
        }
        let data = self.rbuf.split_to(self.framed).freeze();
        self.framed = 0;
        Ok(Some(data))
    }

    /// Fails when the oldest unanswered request is not blocking and nothing has arrived for
    /// `timeout` since it was sent.
    pub fn check_timeout(&self, timeout: Duration) -> Result<(), UpstreamFailure> {
        match self.outstanding.front() {
            Some(o) if !o.blocking && o.since.max(self.last_read).elapsed() >= timeout => {
                Err(UpstreamFailure::Timeout(timeout))
            }
            _ => Ok(()),
        }
    }

    /// Whether a timeout check is worth scheduling.
    fn timing(&self) -> bool {
        self.outstanding.front().is_some_and(|o| !o.blocking)
    }
}
