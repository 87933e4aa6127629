//! The parker: holds parked clients' sockets in an epoll set of its own and gives a client its
//! task back when its socket has something (a request, a close) or its inbox is poked (see
//! [`crate::proxy::parking`]). It also runs the idle sweep that asks quiet clients to park.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::proxy::clients::Phase;
use crate::proxy::parking::Parked;
use crate::proxy::server::Server;
use crate::proxy::session::Session;
use crate::upstream::workers;

/// How often idle clients are asked to park: a client that sends nothing parks within one to
/// two of these.
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Runs until the proxy stops. Without an epoll set of its own (which cannot fail short of
/// running out of descriptors) nothing is parked and clients keep their tasks.
pub(crate) async fn run(server: Arc<Server>) {
    // SAFETY: the `Poll` owns its epoll descriptor, which stays open and the same until the
    // `Poll` is dropped, and the `AsyncFd` owns the `Poll` (it deregisters before dropping it).
    let registered = Poll::new().and_then(|p| {
        unsafe { AsyncFd::register_with_interest(p, Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let poll = match registered {
        Ok(poll) => poll,
        Err(e) => {
            tracing::warn!(error = %e, "idle clients are not parked: no epoll set");
            return;
        }
    };
    let mut poll = poll;
    let mut lot = Held {
        server: server.clone(),
        parked: Slab::new(),
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let parking = &server.clients.parking;
    let mut ready = Vec::new();
    'watch: loop {
        tokio::select! {
            _ = sweep.tick() => server.clients.ask_idle_to_park(),
            _ = parking.wait() => {}
            guard = poll.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!(error = %e, "parked clients cannot be watched");
                        break 'watch;
                    }
                };
                loop {
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "parked clients cannot be watched");
                            break 'watch;
                        }
                    }
                    if events.is_empty() {
                        guard.clear_ready();
                        break;
                    }
                    ready.extend(events.iter().map(|e| e.token().0));
                    let registry = guard.get_inner().registry();
                    for token in ready.drain(..) {
                        lot.unpark(token, registry);
                    }
                }
            }
        }
        let registry = poll.get_ref().registry();
        for parked in parking.arrivals() {
            lot.admit(parked, registry);
        }
        if parking.take_poked() {
            lot.unpark_poked(registry);
        }
        parking.set_parked(lot.parked.len());
    }
    // Parking ends: every client parked or on its way gets its task back, and no session
    // parks from now on.
    let registry = poll.get_ref().registry();
    for token in lot.parked.iter().map(|(t, _)| t).collect::<Vec<_>>() {
        lot.unpark(token, registry);
    }
    for parked in parking.close() {
        lot.resume(parked);
    }
    parking.set_parked(0);
}

/// The parked clients, by their token in the epoll set.
struct Held {
    server: Arc<Server>,
    parked: Slab<Parked>,
}

impl Held {
    /// Watches an arrival's socket; one poked on its way here gets its task back at once.
    fn admit(&mut self, parked: Parked, registry: &Registry) {
        let entry = self.parked.vacant_entry();
        let token = entry.key();
        let fd = parked.socket.as_raw_fd();
        match registry.register(&mut SourceFd(&fd), Token(token), mio::Interest::READABLE) {
            Ok(()) => {
                let woken = parked.inbox.is_woken();
                entry.insert(parked);
                if woken {
                    self.unpark(token, registry);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot park a client");
                self.resume(parked);
            }
        }
    }

    /// Gives the client of `token` its task back.
    fn unpark(&mut self, token: usize, registry: &Registry) {
        let Some(parked) = self.parked.try_remove(token) else {
            return;
        };
        let _ = registry.deregister(&mut SourceFd(&parked.socket.as_raw_fd()));
        self.resume(parked);
    }

    /// Gives their tasks back to the clients whose inboxes were poked for something their
    /// sessions must act on (CLIENT KILL, shutdown, a reload); news of the upstream (lost,
    /// moved) concerns connections of their own, which parked clients do not have, and is
    /// dropped, so that an outage does not wake every parked client. One pass over the parked
    /// clients per wake-up of the parker.
    fn unpark_poked(&mut self, registry: &Registry) {
        let phase = self.server.clients.phase();
        let generation = self.server.live.generation();
        let mut wake = Vec::new();
        for (token, parked) in self.parked.iter() {
            // Taken first: a poke after the look below is seen at the next wake-up.
            if !parked.inbox.take_woken() {
                continue;
            }
            if parked.inbox.is_killed()
                || phase != Phase::Run
                || parked.policy.generation != generation
            {
                parked.inbox.mark_woken();
                wake.push(token);
            } else {
                parked.inbox.forget_upstream_news();
            }
        }
        for token in wake {
            self.unpark(token, registry);
        }
    }

    /// Back on its worker's runtime, where its shared connection is.
    fn resume(&self, parked: Parked) {
        let server = self.server.clone();
        let worker = parked.worker as usize;
        let resume = move || {
            if let Some(task) = Session::resume(parked, server) {
                tokio::spawn(task);
            }
        };
        if worker == workers::current() {
            resume();
        } else {
            workers::spawn_on(worker, async move { resume() });
        }
    }
}

impl Drop for Held {
    /// The proxy is stopping (the task is dropped): the clients still parked or on their way
    /// leave the registry (their sockets close with them).
    fn drop(&mut self) {
        let on_the_way = self.server.clients.parking.close();
        for parked in self.parked.drain().chain(on_the_way) {
            self.server.clients.leave(parked.key);
        }
    }
}
