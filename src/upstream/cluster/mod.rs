//! A Redis Cluster upstream: its shards, the slot map, and how requests reach them.
//!
//! Each shard (a primary and its replicas) is what a standalone upstream is: a [`Target`] (its
//! primary's address now), a health [`Monitor`] of its own, and pools of shared connections.
//! The slot map says which shard serves each of the 16384 slots; it is read lock-free by the
//! data path and rewritten by the control plane:
//!
//! ```text
//!   refresh task ── CLUSTER SLOTS (any node that answers) ──▶ shards + slot map
//!        ▲  every second (200 ms while a shard is down), and at once on a MOVED
//!        │
//!   data path: request ─▶ plan (slot, split, fan-out) ─▶ relay ─▶ shard's shared connection
//!                                                         ◀── replies, MOVED/ASK/TRYAGAIN
//! ```
//!
//! A shard is known by its nodes' ids, so a failover (a replica promoted: the slot map names
//! another primary for the same shard) moves the shard's target, as Sentinel does for a
//! standalone upstream: its connections reconnect to the new primary, its monitor probes it
//! (with `ROLE`: only a primary passes), and the shard's outage, if one was open, ends with
//! its BACKEND_RECOVERED; the move itself is a BACKEND_SWITCHED event naming the shard.

pub(crate) mod plan;
pub(crate) mod relay;

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::{watch, Notify};

use crate::command::slot::SLOTS;
use crate::config::{Limits, UpstreamSettings};
use crate::protocol::request::Request;
use crate::upstream::handshake::setup_commands;
use crate::upstream::monitor::{Monitor, MonitorSettings};
use crate::upstream::outage::{AffectedKeyspaces, OutageEvents};
use crate::upstream::shared::{SharedConn, Upstream};
use crate::upstream::target::{self, Target};

/// A slot no shard serves (yet).
const UNASSIGNED: u16 = u16::MAX;

/// How often the slot map is read again while every shard is healthy, and while one is not
/// (a failover is then expected: it is noticed within this much of the promotion).
const REFRESH: Duration = Duration::from_secs(1);
const REFRESH_OUTAGE: Duration = Duration::from_millis(200);

/// Told of a failover: the shard's name, the old primary, the new one.
pub(crate) type OnSwitch = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// One shard: where its primary is, its health, its shared connections.
pub(crate) struct Shard {
    /// How events, metrics and INFO name it: its primary when first seen, and its slots then.
    pub(crate) name: String,
    pub(crate) target: Arc<Target>,
    pub(crate) monitor: Monitor,
    pub(crate) upstream: Arc<Upstream>,
    /// Node ids of its primary and replicas, as the slot map last said.
    members: Mutex<Vec<String>>,
    /// Whether the slot map last gave it any slot: one that has none (its slots all moved,
    /// or it left the cluster) gets no keyless request, no fan-out, no part of a SCAN.
    serving: std::sync::atomic::AtomicBool,
}

impl Shard {
    pub(crate) fn available(&self) -> bool {
        self.monitor.handle().snapshot().upstream_available()
    }

    /// The shared connection a client session (`lane`) uses on this shard.
    pub(crate) fn conn(&self, resp3: bool, lane: usize) -> Arc<SharedConn> {
        self.upstream.lane(resp3, lane)
    }
}

/// What starting a shard takes, kept for the shards found later.
struct Setup {
    settings: UpstreamSettings,
    limits: Limits,
    keepalive: Option<Duration>,
    monitor: MonitorSettings,
    events: Arc<dyn OutageEvents>,
    keyspaces: Mutex<AffectedKeyspaces>,
    on_switch: OnSwitch,
}

/// The cluster as the proxy sees it.
pub(crate) struct Cluster {
    setup: Setup,
    /// Append-only: a shard whose slots all moved away stays, idle.
    shards: RwLock<Arc<[Arc<Shard>]>>,
    /// The index in `shards` of each slot's shard, or [`UNASSIGNED`].
    slots: Box<[AtomicU16]>,
    /// Asks the refresh task for a new slot map now.
    refresh: Notify,
    /// Counts the refreshes done, for requests waiting for one.
    refreshed: watch::Sender<u64>,
    /// MOVED, ASK and TRYAGAIN replies followed, for the metrics.
    pub(crate) redirects: AtomicU64,
    /// Whether the last slot map gave every slot to a shard.
    covered: std::sync::atomic::AtomicBool,
    /// The refresh task.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held while shards are created: by a refresh applying a map, by an ASK's adoption.
    adopting: tokio::sync::Mutex<()>,
}

/// One range of the slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) primary: String,
    /// The primary's node id first, then its replicas'.
    pub(crate) ids: Vec<String>,
}

impl Cluster {
    /// Reads the slot map from the seeds, starts a shard per primary, and keeps the map
    /// fresh. Without any seed answering, no slot is served: every key follows its keyspace's
    /// mode until a seed answers.
    pub(crate) async fn start(
        settings: &UpstreamSettings,
        limits: &Limits,
        keepalive: Option<Duration>,
        monitor: MonitorSettings,
        events: Arc<dyn OutageEvents>,
        keyspaces: AffectedKeyspaces,
        on_switch: OnSwitch,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            setup: Setup {
                settings: settings.clone(),
                limits: *limits,
                keepalive,
                monitor,
                events,
                keyspaces: Mutex::new(keyspaces),
                on_switch,
            },
            shards: RwLock::new(Arc::from(Vec::new())),
            slots: (0..SLOTS).map(|_| AtomicU16::new(UNASSIGNED)).collect(),
            refresh: Notify::new(),
            refreshed: watch::Sender::new(0),
            redirects: AtomicU64::new(0),
            covered: std::sync::atomic::AtomicBool::new(false),
            task: Mutex::new(None),
            adopting: tokio::sync::Mutex::new(()),
        });
        if !cluster.refresh_once().await {
            tracing::warn!("no cluster node answered CLUSTER SLOTS yet");
        }
        let task = tokio::spawn(refresh_loop(Arc::downgrade(&cluster)));
        *cluster.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        cluster
    }

    /// Every shard known, in discovery order.
    pub(crate) fn shards(&self) -> Arc<[Arc<Shard>]> {
        self.shards
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether requests wait for a connection task of the calling worker on any shard (see
    /// [`Upstream::queued_here`]).
    pub(crate) fn queued_here(&self, resp3: bool) -> bool {
        self.shards().iter().any(|s| s.upstream.queued_here(resp3))
    }

    /// The shard serving `slot`, if any. (The slot is read first: a shard is added to the
    /// list before any slot names it.)
    pub(crate) fn shard_of(&self, slot: u16) -> Option<Arc<Shard>> {
        self.shard_in(slot, &self.shards())
    }

    /// [`Cluster::shard_of`] with the shard list already read (once for many slots); read
    /// again if the slot names a shard added since.
    pub(crate) fn shard_in(&self, slot: u16, shards: &[Arc<Shard>]) -> Option<Arc<Shard>> {
        let i = self.slots.get(slot as usize)?.load(Ordering::Relaxed) as usize;
        match shards.get(i) {
            Some(shard) => Some(shard.clone()),
            None => self.shards().get(i).cloned(),
        }
    }

    /// The shards the slot map gives slots to.
    pub(crate) fn serving(&self) -> Vec<Arc<Shard>> {
        (self.shards().iter())
            .filter(|s| s.serving.load(Ordering::Relaxed))
            .cloned()
            .collect()
    }

    /// The shard a client's keyless requests go to: one of those `serving` that forward,
    /// chosen by `lane`; if none forwards, one of them anyway (it answers the outage).
    pub(crate) fn pick_any(&self, serving: &[Arc<Shard>], lane: usize) -> Option<Arc<Shard>> {
        let up: Vec<&Arc<Shard>> = serving.iter().filter(|s| s.available()).collect();
        match up.len() {
            0 if serving.is_empty() => None,
            0 => Some(serving[lane % serving.len()].clone()),
            n => Some(up[lane % n].clone()),
        }
    }

    /// Whether every slot is served by a shard that forwards (healthy or recovering): then
    /// nothing in the cluster needs judging key by key.
    pub(crate) fn all_available(&self) -> bool {
        let serving = self.serving();
        self.covered.load(Ordering::Relaxed)
            && !serving.is_empty()
            && serving.iter().all(|s| s.available())
    }

    /// Whether the shards of every key in `keys` forward; for keyless requests, whether any
    /// shard that serves slots does.
    pub(crate) fn available_for(&self, keys: &[&[u8]]) -> bool {
        if keys.is_empty() {
            return self.serving().iter().any(|s| s.available());
        }
        keys.iter().all(|k| {
            let slot = crate::command::slot::key_slot(k);
            self.shard_of(slot).is_some_and(|s| s.available())
        })
    }

    /// The shard serving `slot` now, or for `None` the one a keyless request of `lane`
    /// goes to (for a client's own connection).
    pub(crate) fn home(&self, slot: Option<u16>, lane: usize) -> Option<Arc<Shard>> {
        match slot {
            Some(slot) => self.shard_of(slot),
            None => self.pick_any(&self.serving(), lane),
        }
    }

    /// Asks for a new slot map now (a MOVED, a lost connection).
    pub(crate) fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// A MOVED reply: `slot` is served at `address`. Taken at once when a known shard's
    /// primary is there (the map is read again anyway); true if so.
    pub(crate) fn moved(&self, slot: u16, address: &str) -> bool {
        self.refresh_soon();
        if usize::from(slot) >= SLOTS {
            return false;
        }
        let shards = self.shards();
        match shards.iter().position(|s| &*s.target.current() == address) {
            Some(i) => {
                self.slots[slot as usize].store(i as u16, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The shard whose primary is at `address` (an ASK's target).
    pub(crate) fn shard_at(&self, address: &str) -> Option<Arc<Shard>> {
        (self.shards().iter())
            .find(|s| &*s.target.current() == address)
            .cloned()
    }

    /// Waits for the next refresh of the slot map, at most `limit`.
    pub(crate) async fn next_refresh(&self, limit: Duration) {
        let mut seen = self.refreshed.subscribe();
        seen.mark_unchanged();
        self.refresh_soon();
        let _ = tokio::time::timeout(limit, seen.changed()).await;
    }

    /// A reload: the probe pace and thresholds of `monitor` apply to every shard, and later
    /// events name `keyspaces`.
    pub(crate) fn reconfigure(
        &self,
        settings: &UpstreamSettings,
        limits: &Limits,
        keepalive: Option<Duration>,
        monitor: &MonitorSettings,
        keyspaces: &AffectedKeyspaces,
    ) {
        *self
            .setup
            .keyspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = keyspaces.clone();
        for shard in self.shards().iter() {
            shard.upstream.retune(settings, limits, keepalive);
            let mut own = monitor.clone();
            own.address = shard.name.clone();
            own.primary_only = true;
            shard.monitor.handle().reconfigure(&own, keyspaces.clone());
        }
    }

    /// Stops every shard's tasks (at shutdown).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        for shard in self.shards().iter() {
            shard.upstream.stop();
            shard.monitor.stop();
        }
    }

    /// Asks the shards' primaries (the available ones first), then the seeds, for the slot
    /// map, and applies the first answer. False if none answered.
    async fn refresh_once(&self) -> bool {
        let mut candidates: Vec<String> = Vec::new();
        let shards = self.shards();
        let (up, down): (Vec<_>, Vec<_>) = shards.iter().partition(|s| s.available());
        for s in up.into_iter().chain(down) {
            candidates.push(s.target.current().to_string());
        }
        for seed in &self.setup.settings.cluster_nodes {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let login = setup_commands(&self.setup.settings, false)
            .into_iter()
            .next();
        let ask = Request::from_args(&["CLUSTER", "SLOTS"]);
        let tls = self.setup.settings.tls.as_ref();
        for address in candidates {
            let Some(reply) = target::ask(&address, tls, login.as_ref(), &ask).await else {
                continue;
            };
            match parse_slots(&reply, &address) {
                Some(ranges) if !ranges.is_empty() => {
                    self.apply(&ranges).await;
                    return true;
                }
                _ => tracing::debug!(node = %address, "no usable CLUSTER SLOTS reply"),
            }
        }
        false
    }

    /// Installs a slot map: shards matched by their nodes' ids (or their primary's address),
    /// new ones started, failed-over ones moved to their new primary.
    async fn apply(&self, ranges: &[Range]) {
        // One creator of shards at a time: an ASK's adoption (see [`Cluster::adopt`]) and a
        // refresh finding the same new primary must not start it twice.
        let _one = self.adopting.lock().await;
        let mut owner = vec![UNASSIGNED; SLOTS];
        for range in ranges {
            let shards = self.shards();
            // The shard whose primary this range's primary is; else the one it was a replica
            // of (a failover); else, for a map without ids, the one at its address.
            let primary_id = range.ids.first();
            let members = |s: &Shard| s.members.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let found = (shards.iter())
                .position(|s| primary_id.is_some() && members(s).first() == primary_id)
                .or_else(|| {
                    let id = primary_id?;
                    shards.iter().position(|s| members(s).contains(id))
                })
                .or_else(|| {
                    (shards.iter()).position(|s| {
                        members(s).is_empty() && *s.target.current() == *range.primary
                    })
                });
            let i = match found {
                Some(i) => i,
                None => {
                    let shard = self.start_shard(range, ranges).await;
                    let mut all = self.shards.write().unwrap_or_else(|e| e.into_inner());
                    let mut list = all.to_vec();
                    list.push(shard);
                    *all = Arc::from(list);
                    all.len() - 1
                }
            };
            let shard = self.shards()[i].clone();
            *shard.members.lock().unwrap_or_else(|e| e.into_inner()) = range.ids.clone();
            let now = shard.target.current();
            if *now != *range.primary {
                tracing::warn!(shard = %shard.name, from = %now, to = %range.primary, "cluster failover: the shard has a new primary");
                shard.target.switch(range.primary.as_str().into());
                (self.setup.on_switch)(&shard.name, &now, &range.primary);
            }
            for slot in range.start..=range.end.min(SLOTS as u16 - 1) {
                owner[slot as usize] = i as u16;
            }
        }
        let shards = self.shards();
        for (i, shard) in shards.iter().enumerate() {
            let serves = owner.contains(&(i as u16));
            shard.serving.store(serves, Ordering::Relaxed);
        }
        self.covered
            .store(!owner.contains(&UNASSIGNED), Ordering::Relaxed);
        for (slot, i) in owner.into_iter().enumerate() {
            self.slots[slot].store(i, Ordering::Relaxed);
        }
        self.refreshed.send_modify(|n| *n += 1);
    }

    async fn start_shard(&self, range: &Range, all: &[Range]) -> Arc<Shard> {
        let slots: Vec<String> = all
            .iter()
            .filter(|r| r.primary == range.primary)
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        let name = format!("{} slots {}", range.primary, slots.join(","));
        self.start_named(name, range, true).await
    }

    /// Starts a shard named `name` for `range`'s primary and ids.
    async fn start_named(&self, name: String, range: &Range, serving: bool) -> Arc<Shard> {
        tracing::info!(shard = %name, "cluster shard found");
        let target = Target::new(&range.primary);
        let mut monitor = self.setup.monitor.clone();
        monitor.address = name.clone();
        monitor.primary_only = true;
        let keyspaces = (self
            .setup
            .keyspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
        .clone();
        let monitor = Monitor::start_at(
            monitor,
            target.clone(),
            self.setup.events.clone(),
            keyspaces,
        )
        .await;
        let upstream = Upstream::start(
            &self.setup.settings,
            &self.setup.limits,
            self.setup.keepalive,
            monitor.handle(),
            target.clone(),
        );
        Arc::new(Shard {
            name,
            target,
            monitor,
            upstream,
            members: Mutex::new(range.ids.clone()),
            serving: std::sync::atomic::AtomicBool::new(serving),
        })
    }

    /// The shard at `address` for an `ASK` that names a node the slot map does not list yet (a
    /// primary just added, being given its first slots): taken only once a node the map does
    /// list says, in `CLUSTER NODES`, that a primary of this cluster is there, so that a reply
    /// naming any address cannot make keywarden connect (and log in) there. It serves no slot
    /// until the map gives it some.
    pub(crate) async fn adopt(&self, address: &str) -> Option<Arc<Shard>> {
        let _one = self.adopting.lock().await;
        if let Some(shard) = self.shard_at(address) {
            return Some(shard);
        }
        let login = setup_commands(&self.setup.settings, false)
            .into_iter()
            .next();
        let ask = Request::from_args(&["CLUSTER", "NODES"]);
        let tls = self.setup.settings.tls.as_ref();
        for known in self.serving() {
            let at = known.target.current();
            let Some(reply) = target::ask(&at, tls, login.as_ref(), &ask).await else {
                continue;
            };
            // The first listed node that answers decides.
            let id = text(&reply).and_then(|nodes| primary_at(&nodes, address))?;
            let range = Range {
                start: 0,
                end: 0,
                primary: address.to_owned(),
                ids: vec![id],
            };
            let shard = self
                .start_named(format!("{address} slots none"), &range, false)
                .await;
            let mut all = self.shards.write().unwrap_or_else(|e| e.into_inner());
            let mut list = all.to_vec();
            list.push(shard.clone());
            *all = Arc::from(list);
            return Some(shard);
        }
        None
    }
}

/// Reads the slot map every [`REFRESH`] ([`REFRESH_OUTAGE`] while a shard is down), and at
/// once when asked; ends with the cluster.
async fn refresh_loop(cluster: std::sync::Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let pause = if c.serving().iter().all(|s| s.available()) {
            REFRESH
        } else {
            REFRESH_OUTAGE
        };
        let asked = async { c.refresh.notified().await };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = asked => {}
        }
        c.refresh_once().await;
    }
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// The id of the primary at `address` in a `CLUSTER NODES` reply (`<id> <ip:port@bus> <flags>
/// ...` per line), unless it is failing or not yet a member.
fn primary_at(nodes: &str, address: &str) -> Option<String> {
    nodes.lines().find_map(|line| {
        let mut f = line.split(' ');
        let (id, addr, flags) = (f.next()?, f.next()?, f.next()?);
        let addr = addr.split(['@', ',']).next()?;
        let ok = flags.split(',').any(|f| f == "master")
            && !flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr"));
        (addr == address && ok).then(|| id.to_owned())
    })
}

/// The ranges of a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ...], replicas...]`
/// each. A node without a host (`""` or `?`) is the one that answered (`asked`).
pub(crate) fn parse_slots(reply: &OwnedFrame, asked: &str) -> Option<Vec<Range>> {
    let OwnedFrame::Array(ranges) = reply else {
        return None;
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let OwnedFrame::Array(r) = r else { return None };
        let (OwnedFrame::Integer(start), OwnedFrame::Integer(end)) = (r.first()?, r.get(1)?) else {
            return None;
        };
        if *start < 0 || *end < *start || *end >= SLOTS as i64 {
            return None;
        }
        let mut primary = None;
        let mut ids = Vec::new();
        for node in &r[2..] {
            let OwnedFrame::Array(node) = node else {
                return None;
            };
            let host = text(node.first()?)?;
            let OwnedFrame::Integer(port) = node.get(1)? else {
                return None;
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_owned()
            } else {
                host
            };
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            primary.get_or_insert(address);
            if let Some(id) = node.get(2).and_then(text) {
                ids.push(id);
            }
        }
        out.push(Range {
            start: *start as u16,
            end: *end as u16,
            primary: primary?,
            ids,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_nodes_names_primaries_by_address() {
        let nodes = "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7002@17002 master - 0 0 2 connected\n\
                     c3 127.0.0.1:7003@17003 slave b2 0 0 2 connected\n\
                     d4 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected\n";
        assert_eq!(primary_at(nodes, "127.0.0.1:7002").as_deref(), Some("b2"));
        assert_eq!(primary_at(nodes, "127.0.0.1:7001").as_deref(), Some("a1"));
        assert_eq!(primary_at(nodes, "127.0.0.1:7003"), None);
        assert_eq!(primary_at(nodes, "127.0.0.1:7004"), None);
        assert_eq!(primary_at(nodes, "10.0.0.1:1"), None);
    }

    #[test]
    fn slot_ranges_name_primary_then_replicas() {
        let node = |h: &str, p: i64, id: &str| {
            OwnedFrame::Array(vec![bulk(h), OwnedFrame::Integer(p), bulk(id)])
        };
        let reply = OwnedFrame::Array(vec![
            OwnedFrame::Array(vec![
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(5460),
                node("127.0.0.1", 7001, "a"),
                node("127.0.0.1", 7004, "d"),
            ]),
            OwnedFrame::Array(vec![
                OwnedFrame::Integer(5461),
                OwnedFrame::Integer(16383),
                node("", 7002, "b"),
            ]),
        ]);
        let ranges = parse_slots(&reply, "10.0.0.9:7002").unwrap();
        assert_eq!(ranges[0].primary, "127.0.0.1:7001");
        assert_eq!(ranges[0].ids, ["a", "d"]);
        assert_eq!(ranges[1].primary, "10.0.0.9:7002");
        assert_eq!((ranges[1].start, ranges[1].end), (5461, 16383));
        let bad = OwnedFrame::Array(vec![OwnedFrame::Array(vec![
            OwnedFrame::Integer(5),
            OwnedFrame::Integer(16384),
            node("h", 1, "x"),
        ])]);
        assert_eq!(parse_slots(&bad, "h:1"), None);
    }
}
