//! A client session's inbox: where upstream connections drop the reply bytes meant for it, and
//! how anything outside the session (an upstream connection, shutdown) wakes it.
//!
//! Upstream connections never wait on a client: they append chunks here and wake the session,
//! which writes them out in order. A chunk is a run of complete reply frames, contiguous in
//! the upstream stream, for requests that this session sent on that connection.
//!
//! Deliberately small and allocation-free while empty (an `AtomicWaker` instead of a waiter
//! list, an empty `VecDeque`), since every idle client holds one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use bytes::Bytes;

/// Complete reply frames for one session, in request order.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub data: Bytes,
    /// How many replies `data` holds.
    pub frames: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    chunks: Mutex<VecDeque<Chunk>>,
    /// Set by every delivery or poke, cleared when the session notices.
    woken: AtomicBool,
    /// CLIENT KILL: the session closes when it notices.
    killed: AtomicBool,
    /// The health monitor declared the upstream unavailable: a session waiting on its own
    /// upstream connection (blocked, subscribed) gives it up when it notices.
    upstream_lost: AtomicBool,
    /// Sentinel named another primary: a session with its own upstream connection (or one
    /// being opened) closes, since that connection is to the old primary.
    upstream_moved: AtomicBool,
    /// The client waits in a blocking command, as its session last said (CLIENT LIST's `b`).
    blocked: AtomicBool,
    /// No read from the client since the last idle sweep (see [`Inbox::ask_to_park_if_idle`]).
    quiet: AtomicBool,
    /// Where the client is in parking: one of the `PARK_*` states.
    park: AtomicU8,
    waker: AtomicWaker,
}

/// Parking (an idle client's socket held without a task; see `proxy::parking`): the session may
/// be asked.
const PARK_ASKABLE: u8 = 0;
/// An idle sweep asked the session to park; it parks or refuses when it next runs.
const PARK_ASKED: u8 = 1;
/// The session could not park (owed replies, an own upstream connection, TLS, an idle timer):
/// not asked again until the client sends something.
const PARK_REFUSED: u8 = 2;
/// Parked: the socket waits without a task.
const PARK_PARKED: u8 = 3;

impl Inbox {
    /// Adds a chunk and wakes the session.
    pub(crate) fn deliver(&self, chunk: Chunk) {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(chunk);
        self.poke();
    }

    /// Wakes the session without a chunk (it then looks at whatever changed, e.g. the phase).
    pub(crate) fn poke(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the session to close (CLIENT KILL), and wakes it.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.poke();
    }

    /// Tells the session the upstream was declared unavailable, and wakes it.
    pub(crate) fn upstream_lost(&self) {
        self.upstream_lost.store(true, Ordering::Release);
        self.poke();
    }

    /// Tells the session the upstream moved to another primary, and wakes it.
    pub(crate) fn upstream_moved(&self) {
        self.upstream_moved.store(true, Ordering::Release);
        self.poke();
    }

    /// Whether the upstream moved since the last time this was asked.
    pub(crate) fn take_upstream_moved(&self) -> bool {
        self.upstream_moved.swap(false, Ordering::AcqRel)
    }

    /// Whether the upstream was declared unavailable since the last time this was asked.
    pub(crate) fn take_upstream_lost(&self) -> bool {
        self.upstream_lost.swap(false, Ordering::AcqRel)
    }

    /// Records whether the client waits in a blocking command (a store only when it changes).
    pub(crate) fn set_blocked(&self, blocked: bool) {
        if self.blocked.load(Ordering::Relaxed) != blocked {
            self.blocked.store(blocked, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Moves every waiting chunk into `into`, in order.
    pub(crate) fn drain_into(&self, into: &mut VecDeque<Chunk>) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if into.is_empty() {
            std::mem::swap(&mut *chunks, into);
        } else {
            into.extend(chunks.drain(..));
        }
    }

    /// The client sent something: it is not idle, and may be asked to park again once it is.
    /// One relaxed load while it stays busy between two idle sweeps.
    pub(crate) fn mark_active(&self) {
        if self.quiet.load(Ordering::Relaxed) {
            self.quiet.store(false, Ordering::Relaxed);
            self.askable_again();
        }
    }

    /// An idle sweep: a client that sent nothing since the previous sweep is asked to park (the
    /// session decides when it next runs, since only it knows whether it owes anything).
    pub(crate) fn ask_to_park_if_idle(&self) {
        if !self.quiet.swap(true, Ordering::Relaxed) {
            return;
        }
        if self
            .park
            .compare_exchange(
                PARK_ASKABLE,
                PARK_ASKED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.poke();
        }
    }

    /// Whether an idle sweep asked the session to park; the session then calls
    /// [`Inbox::parking`] or [`Inbox::refuse_park`].
    pub(crate) fn park_asked(&self) -> bool {
        self.park.load(Ordering::Acquire) == PARK_ASKED
    }

    /// The session cannot park now: not asked again until the client sends something.
    pub(crate) fn refuse_park(&self) {
        self.park.store(PARK_REFUSED, Ordering::Release);
    }

    /// The session is parking: from now on a poke wakes `waker` (the parker's) instead of the
    /// session's task.
    pub(crate) fn parking(&self, waker: &Waker) {
        self.park.store(PARK_PARKED, Ordering::Release);
        self.waker.register(waker);
    }

    /// The session went quiet (it gave up its busy state): one refused while it owed
    /// something may be asked again.
    pub(crate) fn allow_park(&self) {
        if self.park.load(Ordering::Relaxed) == PARK_REFUSED {
            self.askable_again();
        }
    }

    /// A session that refused to park may be asked again (any other state stays).
    fn askable_again(&self) {
        let _ = self.park.compare_exchange(
            PARK_REFUSED,
            PARK_ASKABLE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The parked client has a task again: busy as of now. News of the upstream that came
    /// while it was parked is about connections it did not have: dropped.
    pub(crate) fn unparked(&self) {
        self.forget_upstream_news();
        self.quiet.store(false, Ordering::Relaxed);
        self.park.store(PARK_ASKABLE, Ordering::Release);
    }

    /// For the parker: takes the poke of a parked client (see [`Inbox::is_woken`]); true if
    /// there was one. Taken before the parker looks at why, so that a poke after the look is
    /// seen at the next one.
    pub(crate) fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// Marks a poke as not yet seen, without waking anyone (the parker hands a poked client
    /// back to a new task, whose first look sees it).
    pub(crate) fn mark_woken(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Drops news of the upstream (lost, moved): it concerns a client's own upstream
    /// connection, which a parked client does not have.
    pub(crate) fn forget_upstream_news(&self) {
        self.upstream_lost.store(false, Ordering::Release);
        self.upstream_moved.store(false, Ordering::Release);
    }

    /// Whether something poked the client since its session last looked (for a parked client:
    /// whether it needs its task back).
    pub(crate) fn is_woken(&self) -> bool {
        self.woken.load(Ordering::Acquire)
    }

    /// Ready once a delivery or poke happened since the last time this returned ready.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register first, then check: a wake between the two is seen by the check.
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// News of the upstream that came while a client was parked (it had no connection of its
    /// own then) is not acted on once it has a task again: a blocking command it runs hours
    /// later must not be failed by an outage long over.
    #[test]
    fn upstream_news_from_while_parked_is_dropped() {
        let inbox = Inbox::default();
        inbox.upstream_lost();
        inbox.upstream_moved();
        inbox.parking(std::task::Waker::noop());
        inbox.unparked();
        assert!(!inbox.take_upstream_lost());
        assert!(!inbox.take_upstream_moved());
    }
}
