//! What an outage of the upstream is, as its health monitor reports it: the kind of event that
//! opens or closes one, the keyspaces it affects, and what the data path counted meanwhile. The
//! monitor hands each [`Event`] to an [`OutageEvents`] sink; the event catalogue
//! ([`crate::ops::events`]) is the real one, which writes it to the log and the events file.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::policy::keyspace::{Keyspaces, Mode};
use crate::upstream::health::Cause;

/// Where the monitor sends the events that open and close an outage.
pub trait OutageEvents: Send + Sync + 'static {
    fn emit(&self, event: &Event<'_>);
}

/// The outage events of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    UnavailableAtStartup,
    Degraded,
    Recovered,
}

/// Keyspace names by mode: every keyspace an upstream's state affects. The caller fills it
/// from the configuration ([`AffectedKeyspaces::of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AffectedKeyspaces {
    pub fail_closed: Vec<String>,
    pub degraded: Vec<String>,
    pub local_only: Vec<String>,
}

/// What a RECOVERED reports about the outage it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outage {
    pub outage_ms: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What the data path did for clients during an outage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests refused because a fail-closed keyspace's upstream was unavailable.
    pub refused: u64,
    /// Replies served from the local store in a degraded keyspace.
    pub degraded_replies: u64,
    /// Writes made locally in degraded keyspaces, discarded when the upstream returns.
    pub discarded_writes: u64,
}

/// Running totals of [`Counts`] for one upstream, bumped by the data path (one relaxed atomic
/// add each); the monitor subtracts the totals at the start of an outage from those at its end.
#[derive(Debug, Default)]
pub struct Counters {
    refused: AtomicU64,
    degraded_replies: AtomicU64,
    discarded_writes: AtomicU64,
}

/// One event to emit.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub upstream: &'a str,
    pub cause: Cause,
    pub keyspaces: &'a AffectedKeyspaces,
    /// Present for `Recovered` only.
    pub outage: Option<Outage>,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UnavailableAtStartup => "BACKEND_UNAVAILABLE_AT_STARTUP",
            EventKind::Degraded => "BACKEND_DEGRADED",
            EventKind::Recovered => "BACKEND_RECOVERED",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AffectedKeyspaces {
    /// Every configured keyspace, the default one included, by mode.
    pub fn of(keyspaces: &Keyspaces) -> AffectedKeyspaces {
        AffectedKeyspaces {
            fail_closed: keyspaces.names_in(Mode::FailClosed),
            degraded: keyspaces.names_in(Mode::Degraded),
            local_only: keyspaces.names_in(Mode::LocalOnly),
        }
    }
}

impl Counts {
    /// What happened between `earlier` and `self` (totals only grow; saturating all the same).
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            refused: self.refused.saturating_sub(earlier.refused),
            degraded_replies: self
                .degraded_replies
                .saturating_sub(earlier.degraded_replies),
            discarded_writes: self
                .discarded_writes
                .saturating_sub(earlier.discarded_writes),
        }
    }
}

impl Counters {
    /// A request answered with a fail-closed error because the upstream is unavailable.
    pub fn record_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A reply served from the local store for a degraded keyspace.
    pub fn record_degraded_reply(&self) {
        self.degraded_replies.fetch_add(1, Ordering::Relaxed);
    }

    /// Local writes in degraded keyspaces that recovery will discard.
    pub fn record_discarded_writes(&self, n: u64) {
        self.discarded_writes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Counts {
        Counts {
            refused: self.refused.load(Ordering::Relaxed),
            degraded_replies: self.degraded_replies.load(Ordering::Relaxed),
            discarded_writes: self.discarded_writes.load(Ordering::Relaxed),
        }
    }
}
