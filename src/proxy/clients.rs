//! The connected clients, as the server sees them: how many there are (for `max_clients`), the
//! proxy's phase (running, draining, stopping), a way to wake every one of them when the
//! phase changes, and what CLIENT LIST shows and CLIENT KILL matches.
//!
//! Each client costs one slab slot: its inbox, id, address and connect time, plus a boxed
//! [`Listed`] only once it set a name, database, protocol or user.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use slab::Slab;
use tokio::sync::Notify;

use crate::proxy::parking::Lot;
use crate::upstream::inbox::Inbox;

/// Where the proxy is in its life, as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Run = 0,
    /// Shutdown began: answer what was asked, read nothing new.
    Drain = 1,
    /// The drain deadline passed: close now.
    Stop = 2,
}

/// A session publishes its output to [`Clients::output`] when it has moved by this much since
/// it last did, so a client whose replies go straight out never touches the shared counter.
pub(crate) const OUTPUT_STEP: usize = 64 * 1024;

/// A limit a client is closed for reaching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `max_query_buffer`: unparsed input.
    QueryBuffer = 0,
    /// `max_client_output`: replies held for the client.
    Output = 1,
    /// `max_total_output`: replies held for all clients.
    TotalOutput = 2,
}

impl Limit {
    const ALL: [Limit; 3] = [Limit::QueryBuffer, Limit::Output, Limit::TotalOutput];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::QueryBuffer => "max_query_buffer",
            Limit::Output => "max_client_output",
            Limit::TotalOutput => "max_total_output",
        }
    }
}

/// Failed authentications an address makes at full speed (see [`Clients::auth_wait`]).
pub(crate) const FREE_AUTH_FAILURES: u32 = 5;
/// Addresses whose failures are remembered at once.
const MAX_FAILING_ADDRS: usize = 4096;
/// An address's failures are forgotten this long after its last one.
const AUTH_FAILURES_LAPSE: Duration = Duration::from_secs(60);

/// One address's failed authentications.
#[derive(Debug)]
struct Failures {
    failures: u32,
    last: Instant,
    /// When the last reply it was made to wait for goes out.
    next: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Clients {
    phase: AtomicU8,
    /// Connections accepted, refused at `max_clients`, and closed for protocol errors, since
    /// the start (read by the metrics at scrape time).
    accepted: AtomicU64,
    rejected: AtomicU64,
    protocol_errors: AtomicU64,
    /// AUTH (and HELLO ... AUTH) refused with WRONGPASS.
    auth_failures: AtomicU64,
    /// Failed authentications by client address (see [`Clients::auth_wait`]).
    failures_by_addr: Mutex<HashMap<IpAddr, Failures>>,
    /// Clients closed by each [`Limit`], in [`Limit::ALL`] order.
    closed_by: [AtomicU64; 3],
    /// Reply bytes held for all clients, as their sessions last published it (see
    /// [`OUTPUT_STEP`]).
    output: AtomicUsize,
    /// Requests by command and outcome.
    pub commands: CommandCounts,
    entries: Mutex<Slab<Entry>>,
    /// Signalled when the last client leaves.
    empty: Notify,
    /// Idle clients held without a task (see [`crate::proxy::parking`]).
    pub parking: Lot,
}

/// One connected client.
#[derive(Debug)]
struct Entry {
    inbox: Arc<Inbox>,
    id: u64,
    addr: Option<SocketAddr>,
    /// Unix seconds at connect.
    since: u32,
    listed: Option<Box<Listed>>,
    /// The id in Redis of the client's own upstream connection, while it has one.
    upstream_id: Option<u64>,
}

/// What a client set on its connection, as CLIENT LIST shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listed {
    pub name: Option<Bytes>,
    pub db: u32,
    pub user: Option<String>,
    pub resp3: bool,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
}

/// CLIENT KILL's filters; every one given must match.
#[derive(Debug, Default)]
pub(crate) struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub user: Option<String>,
    /// Spare this client (SKIPME yes, the default).
    pub skip: Option<u64>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What became of a request, for the per-command counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum CommandOutcome {
    /// Sent to the upstream.
    Upstream = 0,
    /// Served by the local store.
    Local = 1,
    /// Answered by the proxy itself (connection, transaction and admin commands).
    Proxy = 2,
    /// Refused by the proxy: fail-closed, keyspace, unsupported, permission.
    Refused = 3,
}

impl CommandOutcome {
    pub(crate) const ALL: [CommandOutcome; 4] = [
        CommandOutcome::Upstream,
        CommandOutcome::Local,
        CommandOutcome::Proxy,
        CommandOutcome::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Upstream => "upstream",
            CommandOutcome::Local => "local",
            CommandOutcome::Proxy => "proxy",
            CommandOutcome::Refused => "refused",
        }
    }
}

/// Requests by command (Redis's command table, plus one slot for commands it does not know)
/// and outcome: one relaxed atomic add per request.
#[derive(Debug)]
pub(crate) struct CommandCounts {
    counts: Box<[AtomicU64]>,
}

impl Default for CommandCounts {
    fn default() -> CommandCounts {
        let slots = (crate::command::commands().len() + 1) * CommandOutcome::ALL.len();
        CommandCounts {
            counts: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The command counted last, so that a pipeline of the same command looks its name up once.
pub(crate) type LastCommand = crate::command::Positions;

impl CommandCounts {
    /// Counts one request of command `name` with `outcome`.
    pub(crate) fn record(&self, last: &mut LastCommand, name: &[u8], outcome: CommandOutcome) {
        let index = last
            .position(name)
            .unwrap_or(crate::command::commands().len());
        if let Some(c) = self
            .counts
            .get(index * CommandOutcome::ALL.len() + outcome as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (command, outcome, count) for every non-zero count; `unknown` for commands Redis does
    /// not know.
    pub(crate) fn totals(&self) -> Vec<(&'static str, CommandOutcome, u64)> {
        let table = crate::command::commands();
        let mut out = Vec::new();
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let command = table
                .get(i / CommandOutcome::ALL.len())
                .map_or("unknown", |c| c.name());
            out.push((
                command,
                CommandOutcome::ALL[i % CommandOutcome::ALL.len()],
                n,
            ));
        }
        out
    }
}

fn unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Clients {
    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }

    /// Registers a client: its key is for [`Clients::leave`], its id is CLIENT ID.
    pub(crate) fn join(&self, inbox: Arc<Inbox>, addr: Option<SocketAddr>) -> (usize, u64) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let key = self.lock().insert(Entry {
            inbox,
            id,
            addr,
            since: unix_secs(),
            listed: None,
            upstream_id: None,
        });
        (key, id)
    }

    /// A connection refused at `max_clients`.
    pub(crate) fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// How long the reply to an AUTH (or HELLO ... AUTH) from `addr` waits, success or not:
    /// an address gets [`FREE_AUTH_FAILURES`] failures at full speed; beyond them each reply
    /// waits twice as long as the one before, from 100 ms up to 3.2 s, and the waits of
    /// attempts made at once queue one after the other, so opening more connections does not
    /// add tries. A success waits too (silence must not tell a failure) and forgets nothing
    /// (one valid account must not reset the count for guessing another's); the count lapses
    /// a minute after the last failure.
    pub(crate) fn auth_wait(&self, addr: Option<IpAddr>) -> Option<Duration> {
        let addr = addr?;
        let now = Instant::now();
        let mut by_addr = self
            .failures_by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = by_addr.get_mut(&addr)?;
        if now.duration_since(entry.last) >= AUTH_FAILURES_LAPSE {
            by_addr.remove(&addr);
            return None;
        }
        let beyond = entry.failures.checked_sub(FREE_AUTH_FAILURES)?;
        let until = entry.next.max(now) + Duration::from_millis(100 << beyond.min(5));
        entry.next = until;
        Some(until - now)
    }

    /// An AUTH (or HELLO ... AUTH) from `addr` refused with WRONGPASS.
    pub(crate) fn auth_failed(&self, addr: Option<IpAddr>) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        let Some(addr) = addr else {
            return;
        };
        let now = Instant::now();
        let mut by_addr = self
            .failures_by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if by_addr.len() >= MAX_FAILING_ADDRS && !by_addr.contains_key(&addr) {
            // Bounded: the addresses whose count has lapsed go first, then the quietest.
            by_addr.retain(|_, f| now.duration_since(f.last) < AUTH_FAILURES_LAPSE);
            if by_addr.len() >= MAX_FAILING_ADDRS {
                let quietest = by_addr.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a);
                by_addr.remove(&quietest.expect("the map is full"));
            }
        }
        let entry = by_addr.entry(addr).or_insert(Failures {
            failures: 0,
            last: now,
            next: now,
        });
        if now.duration_since(entry.last) >= AUTH_FAILURES_LAPSE {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
    }

    pub(crate) fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// A client closed for sending something that is not RESP.
    pub(crate) fn record_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A client closed for reaching `limit`.
    pub(crate) fn record_closed(&self, limit: Limit) {
        self.closed_by[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Clients closed by each limit since the start, by the limit's metric label.
    pub(crate) fn closed_by_limit(&self) -> Vec<(&'static str, u64)> {
        Limit::ALL
            .iter()
            .map(|&l| {
                (
                    l.as_str(),
                    self.closed_by[l as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// A session's output moved from `before` to `now` bytes held.
    pub(crate) fn output_moved(&self, before: usize, now: usize) {
        if now > before {
            self.output.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.output.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Reply bytes held for all clients (to within [`OUTPUT_STEP`] per client).
    pub(crate) fn output(&self) -> usize {
        self.output.load(Ordering::Relaxed)
    }

    /// (accepted, rejected, protocol errors) since the start.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.protocol_errors.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn leave(&self, key: usize) {
        let mut entries = self.lock();
        entries.try_remove(key);
        if entries.is_empty() {
            self.empty.notify_waiters();
        }
    }

    /// Records what a client set on its connection, for CLIENT LIST.
    pub(crate) fn publish(&self, key: usize, listed: Listed) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.listed = (listed != Listed::default()).then(|| Box::new(listed));
        }
    }

    /// CLIENT LIST: one line per client (those in `ids` only, when given), in connect order.
    pub(crate) fn list(&self, ids: Option<&[u64]>) -> String {
        let now = unix_secs();
        // Sorted once, so each client is looked up in log time: the lock is held for
        // (clients + ids) log ids, not clients times ids.
        let ids = ids.map(|ids| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        });
        let entries = self.lock();
        let mut rows: Vec<&Entry> = entries
            .iter()
            .map(|(_, e)| e)
            .filter(|e| {
                ids.as_ref()
                    .is_none_or(|ids| ids.binary_search(&e.id).is_ok())
            })
            .collect();
        rows.sort_by_key(|e| e.id);
        let mut out = String::new();
        for e in rows {
            let none = Listed::default();
            let l = e.listed.as_deref().unwrap_or(&none);
            let text = |b: &Option<Bytes>| {
                b.as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            out.push_str(&format!(
                "id={} addr={} name={} age={} flags={} db={} user={} lib-name={} lib-ver={} \
                 resp={}\n",
                e.id,
                e.addr.map(|a| a.to_string()).unwrap_or_default(),
                text(&l.name),
                now.saturating_sub(e.since),
                if e.inbox.is_blocked() { "b" } else { "N" },
                l.db,
                l.user
                    .as_deref()
                    .unwrap_or(crate::policy::auth::DEFAULT_USER),
                text(&l.lib_name),
                text(&l.lib_ver),
                if l.resp3 { 3 } else { 2 },
            ));
        }
        out
    }

    /// CLIENT KILL: closes every client matching `filter`; how many.
    pub(crate) fn kill(&self, filter: &KillFilter) -> usize {
        let entries = self.lock();
        let mut killed = 0;
        for (_, e) in entries.iter() {
            let user = e
                .listed
                .as_ref()
                .and_then(|l| l.user.as_deref())
                .unwrap_or(crate::policy::auth::DEFAULT_USER);
            let matches = filter.id.is_none_or(|id| id == e.id)
                && filter
                    .addr
                    .as_ref()
                    .is_none_or(|a| e.addr.is_some_and(|ea| ea.to_string() == *a))
                && filter.user.as_ref().is_none_or(|u| u == user)
                && filter.skip != Some(e.id);
            if matches {
                e.inbox.kill();
                killed += 1;
            }
        }
        killed
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Run,
            1 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    /// Moves every client to `phase` and wakes each one so it notices.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        self.wake_all();
    }

    /// Wakes every client's session (a phase change, a reload).
    /// Records the id in Redis of a client's own upstream connection (`None`: it has none).
    pub(crate) fn set_upstream_id(&self, key: usize, upstream_id: Option<u64>) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.upstream_id = upstream_id;
        }
    }

    /// For the client with CLIENT ID `id`: the id in Redis of its own upstream connection, if
    /// it has one. `None` when there is no such client.
    pub(crate) fn upstream_id_of(&self, id: u64) -> Option<Option<u64>> {
        let entries = self.lock();
        let entry = entries.iter().map(|(_, e)| e).find(|e| e.id == id)?;
        Some(entry.upstream_id)
    }

    /// Tells every client the upstream was declared unavailable (see
    /// [`Inbox::upstream_lost`]).
    pub(crate) fn upstream_lost(&self) {
        for (_, entry) in self.lock().iter() {
            entry.inbox.upstream_lost();
        }
    }

    /// Tells every client the upstream moved to another primary (see
    /// [`Inbox::upstream_moved`]).
    pub(crate) fn upstream_moved(&self) {
        for (_, entry) in self.lock().iter() {
            entry.inbox.upstream_moved();
        }
    }

    /// The idle sweep: asks every client that sent nothing since the last sweep to park.
    pub(crate) fn ask_idle_to_park(&self) {
        for (_, entry) in self.lock().iter() {
            entry.inbox.ask_to_park_if_idle();
        }
    }

    pub(crate) fn wake_all(&self) {
        for (_, entry) in self.lock().iter() {
            entry.inbox.poke();
        }
    }

    /// Resolves once no client is connected.
    pub(crate) async fn all_gone(&self) {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLIENT LIST ID: the clients named, each once and by id, however the ids are given.
    #[test]
    fn list_by_ids_names_each_client_once_in_id_order() {
        let clients = Clients::default();
        let ids: Vec<u64> = (0..5)
            .map(|_| clients.join(Arc::new(Inbox::default()), None).1)
            .collect();
        let asked = [ids[3], ids[1], u64::MAX, ids[3], 0];
        let listed = clients.list(Some(&asked));
        let shown: Vec<&str> = listed
            .lines()
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(shown, [format!("id={}", ids[1]), format!("id={}", ids[3])]);
        assert_eq!(clients.list(None).lines().count(), 5);
    }
}
