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
//! Buffers are held only while bytes are in them: an idle client keeps no read buffer and no
//! queue allocations.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

use crate::command::{self, Disposition, Stateful};
use crate::config::Settings;
use crate::dedicated::Dedicated;
use crate::error::{ProxyError, UpstreamFailure};
use crate::inbox::{Chunk, Inbox};
use crate::parser::{ParserLimits, RequestParser};
use crate::request::Request;
use crate::server::Phase;
use crate::upstream::{SharedConn, Upstream};

/// The first read of a burst takes a buffer this large; it doubles while a request needs more.
const READ_CHUNK: usize = 4 * 1024;
/// Slices gathered into one vectored write to the client.
const MAX_IOVECS: usize = 32;

/// What one reply slot waits on, in request order.
enum Slot {
    /// This many replies from the shared connection, still to come through the inbox.
    Upstream(u32),
    /// A reply the proxy made, to be written once everything before it is out.
    Local(Bytes),
}

pub struct Session {
    stream: TcpStream,
    settings: Arc<Settings>,
    inbuf: BytesMut,
    parser: RequestParser,
    /// Reply bytes ready for the client, in order.
    out: VecDeque<Bytes>,
    out_len: usize,
    /// Reply slots not yet ready; the front, if any, is always `Slot::Upstream`.
    pending: VecDeque<Slot>,
    inbox: Arc<Inbox>,
    upstream: Arc<Upstream>,
    shared: Arc<SharedConn>,
    dedicated: Option<Box<Dedicated>>,
    /// A stateful request waiting for the shared replies before it to arrive.
    stalled: Option<(Request, Stateful)>,
    /// Stop reading; close once every owed reply is written.
    closing: bool,
    /// A reply to write last, before closing (a protocol error on a dedicated connection).
    last_words: Option<Bytes>,
}

enum Event {
    ClientReadable,
    ClientWritable,
    Inbox,
    DedicatedReadable,
    DedicatedWritable,
    Tick,
    Idle,
    Phase,
}

impl Session {
    pub fn new(stream: TcpStream, settings: Arc<Settings>, upstream: Arc<Upstream>) -> Session {
        let limits = ParserLimits {
            max_bulk_len: settings.limits.max_bulk_len,
            max_multibulk_len: settings.limits.max_multibulk_len,
            max_inline_len: settings.limits.max_inline_len,
        };
        Session {
            stream,
            settings,
            inbuf: BytesMut::new(),
            parser: RequestParser::new(limits),
            out: VecDeque::new(),
            out_len: 0,
            pending: VecDeque::new(),
            inbox: Arc::new(Inbox::default()),
            shared: upstream.pick(),
            upstream,
            dedicated: None,
            stalled: None,
            closing: false,
            last_words: None,
        }
    }

    /// Serves the client until it leaves, the proxy shuts down, or the connection must close.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        if let Err(e) = self.serve(&mut phase).await {
            tracing::debug!(error = %e, "client connection ended");
        } else {
            tracing::debug!("client connection closed");
        }
    }

    async fn serve(&mut self, phase: &mut watch::Receiver<Phase>) -> io::Result<()> {
        let idle_timeout = self.settings.client_idle_timeout;
        let mut idle: Option<Pin<Box<Sleep>>> =
            idle_timeout.map(|d| Box::pin(tokio::time::sleep(d)));
        let mut last_activity = Instant::now();
        let mut tick: Option<Interval> = None;
        loop {
            self.process_input();
            if self.stalled.is_some() && self.pending.is_empty() {
                self.open_dedicated().await;
                continue;
            }
            self.flush()?;
            if self.closing && self.owes_nothing() {
                if let Some(last) = self.last_words.take() {
                    self.push_out(last);
                    continue;
                }
                if self.out.is_empty() {
                    return Ok(());
                }
            }
            if *phase.borrow() == Phase::Stop {
                return Ok(());
            }
            let can_read = !self.closing
                && self.stalled.is_none()
                && self.out_len < self.settings.limits.max_pending_output;
            let ded = self.dedicated.as_deref();
            let ded_read = ded.is_some() && self.out_len < self.settings.limits.max_pending_output;
            let ded_write = ded.is_some_and(|d| d.wants_write());
            let timing = ded.is_some_and(|d| d.timing());
            if timing && tick.is_none() {
                tick = Some(timeout_tick(self.settings.upstream.command_timeout));
            }
            let event = tokio::select! {
                r = self.stream.readable(), if can_read => { r?; Event::ClientReadable }
                r = self.stream.writable(), if !self.out.is_empty() => { r?; Event::ClientWritable }
                _ = self.inbox.wait(), if !self.pending.is_empty() => Event::Inbox,
                r = readable(ded), if ded_read => { r?; Event::DedicatedReadable }
                r = writable(ded), if ded_write => { r?; Event::DedicatedWritable }
                _ = tick_of(&mut tick), if timing => Event::Tick,
                _ = sleep_of(&mut idle), if idle.is_some() => Event::Idle,
                _ = phase.changed() => Event::Phase,
            };
            match event {
                Event::ClientReadable => {
                    if !self.read_client()? {
                        return Ok(());
                    }
                    last_activity = Instant::now();
                }
                Event::ClientWritable => {}
                Event::Inbox => self.take_inbox(),
                Event::DedicatedReadable => self.read_dedicated(),
                Event::DedicatedWritable => self.write_dedicated(),
                Event::Tick => self.check_dedicated_timeout(),
                Event::Idle => {
                    let limit = idle_timeout.unwrap_or_default();
                    let busy = !self.owes_nothing()
                        || self.dedicated.as_deref().is_some_and(|d| d.is_waiting());
                    if !busy && last_activity.elapsed() >= limit {
                        tracing::debug!("closing idle client");
                        return Ok(());
                    }
                    if let Some(sleep) = idle.as_mut() {
                        let since = if busy { Instant::now() } else { last_activity };
                        sleep.as_mut().reset(since + limit);
                    }
                }
                Event::Phase => {
                    if *phase.borrow_and_update() != Phase::Run {
                        // Draining: answer what was asked, take nothing new. Unpaired
                        // connections (subscribers, MONITOR) owe nothing and close now.
                        self.closing = true;
                    }
                }
            }
        }
    }

    /// True when no reply is owed to the client beyond what is already in `out`.
    fn owes_nothing(&self) -> bool {
        self.pending.is_empty()
            && self.stalled.is_none()
            && self
                .dedicated
                .as_deref()
                .is_none_or(|d| d.unanswered() == 0 && !d.wants_write())
    }

    /// Reads from the client; false when it closed the connection.
    fn read_client(&mut self) -> io::Result<bool> {
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
            self.inbuf.reserve(READ_CHUNK.max(self.inbuf.len()));
        }
        match self.stream.try_read_buf(&mut self.inbuf) {
            Ok(0) => Ok(false),
            Ok(_) => {
                if self.inbuf.len() > self.settings.limits.max_query_buffer {
                    // Redis closes such a client without a reply.
                    tracing::warn!(
                        bytes = self.inbuf.len(),
                        "closing client that reached the max query buffer length"
                    );
                    return Ok(false);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Parses every complete request in the input and dispatches it, as far as allowed.
    fn process_input(&mut self) {
        let mut run: Vec<Request> = Vec::new();
        while !self.closing && self.stalled.is_none() && !self.inbuf.is_empty() {
            let req = match self.parser.next(&mut self.inbuf) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    self.send_shared(&mut run);
                    let reply = ProxyError::Protocol(e.to_string()).to_reply();
                    if self.dedicated.is_some() {
                        self.last_words = Some(reply);
                    } else {
                        self.push_local(reply);
                    }
                    self.closing = true;
                    self.inbuf.clear();
                    break;
                }
            };
            let disposition = command::disposition(&req);
            if let Some(ded) = self.dedicated.as_deref_mut() {
                let props = match disposition {
                    Disposition::Dedicated(props) => props,
                    Disposition::Shared | Disposition::Quit => Stateful::default(),
                };
                ded.queue(&req, props);
                continue;
            }
            match disposition {
                Disposition::Shared => run.push(req),
                Disposition::Quit => {
                    self.send_shared(&mut run);
                    self.push_local(Bytes::from_static(b"+OK\r\n"));
                    self.closing = true;
                }
                Disposition::Dedicated(props) => {
                    self.send_shared(&mut run);
                    self.stalled = Some((req, props));
                }
            }
        }
        self.send_shared(&mut run);
        if self.dedicated.is_some() {
            self.write_dedicated();
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            // Give the buffer back while the client is quiet.
            self.inbuf = BytesMut::new();
        }
    }

    /// Sends a run of requests on the shared connection.
    fn send_shared(&mut self, run: &mut Vec<Request>) {
        if run.is_empty() {
            return;
        }
        let n = run.len() as u32;
        let mut sent = self.shared.send(run, &self.inbox);
        if sent.is_err() && self.pending.is_empty() {
            // Nothing is owed on the old connection, so moving to one that is up cannot
            // reorder replies: after an outage, the first connection back serves everyone.
            if let Some(conn) = self.upstream.pick_up() {
                self.shared = conn;
                sent = self.shared.send(run, &self.inbox);
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

    /// Opens the dedicated connection for the stalled request and sends it.
    async fn open_dedicated(&mut self) {
        let Some((req, props)) = self.stalled.take() else {
            return;
        };
        let up = &self.settings.upstream;
        match Dedicated::open(
            &up.address,
            up.connect_timeout,
            self.settings.tcp_keepalive,
            self.settings.limits.max_reply_depth,
        )
        .await
        {
            Ok(mut ded) => {
                ded.queue(&req, props);
                self.dedicated = Some(Box::new(ded));
                self.write_dedicated();
            }
            // The client stays on the shared connection; its next stateful command tries again.
            Err(why) => self.push_local(ProxyError::from(why).to_reply()),
        }
    }

    fn take_inbox(&mut self) {
        let mut chunks = VecDeque::new();
        self.inbox.drain_into(&mut chunks);
        for Chunk { data, frames } in chunks {
            self.push_out(data);
            let Some(Slot::Upstream(remaining)) = self.pending.front_mut() else {
                debug_assert!(false, "a chunk arrived with no upstream slot waiting");
                continue;
            };
            *remaining -= frames.min(*remaining);
            if *remaining == 0 {
                self.pending.pop_front();
                while let Some(Slot::Local(_)) = self.pending.front() {
                    if let Some(Slot::Local(reply)) = self.pending.pop_front() {
                        self.push_out(reply);
                    }
                }
            }
        }
    }

    fn read_dedicated(&mut self) {
        let Some(ded) = self.dedicated.as_deref_mut() else {
            return;
        };
        match ded.read() {
            Ok(Some(data)) => self.push_out(data),
            Ok(None) => {}
            Err(why) => self.lose_dedicated(why),
        }
    }

    fn write_dedicated(&mut self) {
        if let Some(Err(why)) = self.dedicated.as_deref_mut().map(|d| d.write()) {
            self.lose_dedicated(why);
        }
    }

    fn check_dedicated_timeout(&mut self) {
        let timeout = self.settings.upstream.command_timeout;
        if let Some(Err(why)) = self.dedicated.as_deref().map(|d| d.check_timeout(timeout)) {
            self.lose_dedicated(why);
        }
    }

    /// The dedicated connection failed: every unanswered request gets an error reply, then the
    /// client is closed, since the state it built upstream (transaction, database, subscriptions)
    /// is gone and its library must start over.
    fn lose_dedicated(&mut self, why: UpstreamFailure) {
        if let Some(ded) = self.dedicated.take() {
            let err = ProxyError::from(why).to_reply();
            for _ in 0..ded.unanswered() {
                self.push_out(err.clone());
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
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.out.len().min(MAX_IOVECS);
            for (slot, data) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(data);
            }
            let mut written = match self.stream.try_write_vectored(&slices[..n]) {
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
        if self.out.capacity() > 8 {
            self.out = VecDeque::new();
        }
        if self.pending.is_empty() && self.pending.capacity() > 8 {
            self.pending = VecDeque::new();
        }
        Ok(())
    }
}

fn timeout_tick(timeout: std::time::Duration) -> Interval {
    let mut tick = tokio::time::interval((timeout / 10).clamp(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(100),
    ));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

async fn readable(ded: Option<&Dedicated>) -> io::Result<()> {
    match ded {
        Some(d) => d.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(ded: Option<&Dedicated>) -> io::Result<()> {
    match ded {
        Some(d) => d.writable().await,
        None => std::future::pending().await,
    }
}

async fn tick_of(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_of(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}
