//! The connected clients, as the server sees them: how many there are (for `max_clients`), the
//! proxy's phase (running, draining, stopping), and a way to wake every one of them when the
//! phase changes.
//!
//! Each client costs one slab slot holding its inbox; nothing else is kept per client here.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use slab::Slab;
use tokio::sync::Notify;

use crate::inbox::Inbox;

/// Where the proxy is in its life, as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Run = 0,
    /// Shutdown began: answer what was asked, read nothing new.
    Drain = 1,
    /// The drain deadline passed: close now.
    Stop = 2,
}

#[derive(Debug, Default)]
pub struct Clients {
    phase: AtomicU8,
    inboxes: Mutex<Slab<Arc<Inbox>>>,
    /// Signalled when the last client leaves.
    empty: Notify,
}

impl Clients {
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Registers a client; the key is for [`Clients::leave`].
    pub fn join(&self, inbox: Arc<Inbox>) -> usize {
        self.lock().insert(inbox)
    }

    pub fn leave(&self, key: usize) {
        let mut inboxes = self.lock();
        inboxes.try_remove(key);
        if inboxes.is_empty() {
            self.empty.notify_waiters();
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Run,
            1 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    /// Moves every client to `phase` and wakes each one so it notices.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        for (_, inbox) in self.lock().iter() {
            inbox.poke();
        }
    }

    /// Resolves once no client is connected.
    pub async fn all_gone(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Arc<Inbox>>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}
