//! Parked clients: an idle client's socket held without a task or a runtime registration.
//!
//! An idle client would otherwise cost a task (its session's future) and the runtime's
//! registration of its socket, about 0.5 KB between them. Once a second an idle sweep (see
//! [`Inbox::ask_to_park_if_idle`]) asks the sessions of clients that sent nothing since the
//! previous sweep to park; a session that owes nothing, holds nothing in flight and has no
//! connection of its own hands its socket and state here as a [`Parked`] and its task ends.
//! The parker (`proxy::parker`) watches the parked sockets in an epoll set of its own and gives
//! a client its task back as soon as it sends anything, closes its connection, or is poked
//! (CLIENT KILL, shutdown, a reload).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use tokio::sync::Notify;

use crate::config::live::Policy;
use crate::proxy::session::client_state::SessionState;
use crate::upstream::inbox::Inbox;
use crate::upstream::shared::SharedConn;

/// What a parked client keeps: its socket and what its session needs to go on as before.
pub(crate) struct Parked {
    pub socket: std::net::TcpStream,
    /// The worker whose runtime runs its session (see [`crate::upstream::workers`]).
    pub worker: u32,
    /// Its key in the client registry.
    pub key: usize,
    pub id: u64,
    pub policy: Arc<Policy>,
    pub inbox: Arc<Inbox>,
    /// Its shared upstream connection (so its requests stay on one, as before it parked).
    pub shared: Arc<SharedConn>,
    pub state: SessionState,
}

/// Where sessions leave their clients for the parker.
#[derive(Default)]
pub(crate) struct Lot {
    intake: Mutex<Intake>,
    signal: Arc<Signal>,
    /// Clients parked now.
    parked: AtomicUsize,
}

#[derive(Default)]
struct Intake {
    arrived: Vec<Parked>,
    /// The parker stopped: nothing is parked any more.
    closed: bool,
}

impl std::fmt::Debug for Lot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lot")
            .field("parked", &self.parked())
            .finish()
    }
}

/// Wakes the parker: for new arrivals, and (as the waker of every parked client's inbox) when
/// a parked client is poked.
#[derive(Default)]
struct Signal {
    /// A parked client's inbox was poked.
    poked: AtomicBool,
    notify: Notify,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poked.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

impl Lot {
    /// Leaves a client here: pokes from now on wake the parker. Handed back when the parker
    /// has stopped.
    pub(crate) fn park(&self, parked: Parked) -> Result<(), Parked> {
        let mut intake = self.intake.lock().unwrap_or_else(|e| e.into_inner());
        if intake.closed {
            return Err(parked);
        }
        parked.inbox.parking(&Waker::from(self.signal.clone()));
        intake.arrived.push(parked);
        drop(intake);
        self.signal.notify.notify_one();
        Ok(())
    }

    /// The clients left since the last call.
    pub(crate) fn arrivals(&self) -> Vec<Parked> {
        let mut intake = self.intake.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut intake.arrived)
    }

    /// The parker stops: no client is left here from now on; the ones on their way are
    /// returned.
    pub(crate) fn close(&self) -> Vec<Parked> {
        let mut intake = self.intake.lock().unwrap_or_else(|e| e.into_inner());
        intake.closed = true;
        std::mem::take(&mut intake.arrived)
    }

    /// Waits until a client arrives or a parked one is poked.
    pub(crate) async fn wait(&self) {
        self.signal.notify.notified().await
    }

    /// Whether a parked client was poked since the last call.
    pub(crate) fn take_poked(&self) -> bool {
        self.signal.poked.swap(false, Ordering::AcqRel)
    }

    /// Clients parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    pub(crate) fn set_parked(&self, n: usize) {
        self.parked.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked client is this record, its inbox and its registry entry: keep the record to a
    /// few words (the design budget for an idle client is 0.3 KB in all).
    #[test]
    fn a_parked_client_is_small() {
        assert!(std::mem::size_of::<Parked>() <= 56);
        assert!(std::mem::size_of::<Inbox>() <= 80);
    }
}
