//! The relay of one run of a client's requests across a cluster's shards: each request is
//! planned (see [`plan`](super::plan)), its parts go to their shards' shared connections, and
//! the replies come back here, where redirections are followed, split requests' replies are
//! merged, and every reply is handed to the session's inbox in request order.
//!
//! Redirections never reach the client: `MOVED` updates the slot map (and asks for a new one)
//! and sends the part again to the new owner; `ASK` sends `ASKING` and the part to the node
//! named, once; `TRYAGAIN` (keys of a multi-key command split by a migration) is retried with
//! a backoff from 10 ms to 100 ms. After [`MAX_TRIES`] of them the last reply is the client's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::{smallvec, SmallVec};

use super::plan::{plan, Merge, Plan, SCAN_SHARD_BITS};
use super::{Cluster, Shard};
use crate::error::{ProxyError, UpstreamFailure};
use crate::protocol::request::Request;
use crate::protocol::scanner::ReplyScanner;
use crate::upstream::inbox::{Chunk, Inbox};

/// Redirections followed for one part before its reply is taken as it is.
const MAX_TRIES: u8 = 16;

/// A reply when no shard serves a slot, as Redis Cluster says it.
const NOT_SERVED: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";

/// Nesting the relay's own framing accepts: any, as replies were already framed, within the
/// configured depth, by the connection that read them.
const DEPTH: usize = usize::MAX;

/// Where a part goes.
#[derive(Clone)]
enum Dest {
    /// The shard serving this slot.
    Slot(u16),
    /// This shard (a keyless request, a fan-out's part, SCAN).
    Node(Arc<Shard>),
}

/// One request (or a transaction) sent to one shard.
struct Part {
    /// The request; a transaction's MULTI, commands and EXEC, whose replies but the last are
    /// dropped.
    reqs: SmallVec<[Request; 1]>,
    dest: Dest,
    reply: Option<Bytes>,
    tries: u8,
}

/// Redirections followed for a script or function (EVAL, EVALSHA, FCALL and their `_RO`
/// forms): a script can return an error that reads like one, and each redirection followed
/// runs it again; Redis redirects before a script runs, so a real one is followed within this.
const MAX_SCRIPT_TRIES: u8 = 2;

fn runs_a_script(req: &Request) -> bool {
    let name = req.name();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    is("eval")
        || is("evalsha")
        || is("eval_ro")
        || is("evalsha_ro")
        || is("fcall")
        || is("fcall_ro")
}

impl Part {
    /// Whether `r` is a redirection of this part: it was routed by its slot, a MOVED or ASK
    /// names that slot, and it has not been redirected too often already.
    fn follows(&self, r: &Redirect) -> bool {
        let limit = match self.reqs.first() {
            Some(req) if runs_a_script(req) => MAX_SCRIPT_TRIES,
            _ => MAX_TRIES,
        };
        if self.tries >= limit {
            return false;
        }
        match (&self.dest, r) {
            (Dest::Slot(mine), Redirect::Moved(slot, _) | Redirect::Ask(slot, _)) => mine == slot,
            (Dest::Slot(_), Redirect::TryAgain) => true,
            (Dest::Node(_), _) => false,
        }
    }
}

/// One client request: its parts, and how their replies become its reply.
struct Item {
    first: u32,
    count: u32,
    merge: Option<Merge>,
    /// SCAN: the shard scanned and how many there are, for the cursor of the reply.
    scan: Option<(usize, usize)>,
    /// Answered without the upstream (CROSSSLOT, a CLUSTER reply).
    ready: Option<Bytes>,
}

struct State {
    parts: Vec<Part>,
    items: Vec<Item>,
    /// Items complete so far (their replies handed to the inbox, or held in `held`).
    delivered: usize,
    /// Replies complete but held until `turn`, and how many.
    held: BytesMut,
    held_frames: u32,
    /// Whether every earlier relay of the session has handed over all its replies: only then
    /// may this one hand over its own (runs go to different shards and finish in any order).
    turn: bool,
    /// The session's next relay, to be given the turn once this one is done.
    next: Option<Arc<Relay>>,
}

impl State {
    fn done(&self) -> bool {
        self.turn && self.delivered == self.items.len()
    }

    /// Whether parts `ids` are, in order, the next items to complete, each a whole request
    /// (one part, nothing to merge).
    fn next_whole(&self, ids: &[u32]) -> bool {
        let Some(items) = self.items.get(self.delivered..self.delivered + ids.len()) else {
            return false;
        };
        items.iter().zip(ids).all(|(item, &id)| {
            item.first == id
                && item.count == 1
                && item.merge.is_none()
                && item.scan.is_none()
                && item.ready.is_none()
        })
    }
}

/// Parts going to one shard in one waiter: the shard, the parts' ids, their requests, and
/// how many replies to skip (a transaction's).
type Group = (Arc<Shard>, Vec<u32>, Vec<Request>, u32);

/// See the module doc.
pub(crate) struct Relay {
    inbox: Arc<Inbox>,
    cluster: Arc<Cluster>,
    /// The session's choice among each shard's connections (one per session, so that its
    /// requests to a shard keep their order).
    lane: usize,
    resp3: bool,
    state: Mutex<State>,
}

/// What a redirection asks for.
enum Redirect {
    Moved(u16, String),
    Ask(u16, String),
    TryAgain,
}

fn redirect(reply: &[u8]) -> Option<Redirect> {
    if reply.first() != Some(&b'-') {
        return None;
    }
    let line = std::str::from_utf8(reply.get(1..reply.len().checked_sub(2)?)?).ok()?;
    let mut words = line.split(' ');
    match words.next()? {
        "MOVED" => {
            let slot = words.next()?.parse().ok()?;
            Some(Redirect::Moved(slot, words.next()?.to_owned()))
        }
        "ASK" => {
            let slot = words.next()?.parse().ok()?;
            Some(Redirect::Ask(slot, words.next()?.to_owned()))
        }
        "TRYAGAIN" => Some(Redirect::TryAgain),
        _ => None,
    }
}

impl Relay {
    /// Plans `reqs`, sends their parts, and delivers their replies to `inbox` in order (as
    /// many frames as requests). `here` is keywarden's address as the client reached it.
    pub(crate) fn send(
        cluster: &Arc<Cluster>,
        reqs: &[Request],
        inbox: &Arc<Inbox>,
        resp3: bool,
        lane: usize,
        here: &dyn Fn() -> String,
        prev: Option<Arc<Relay>>,
    ) -> Arc<Relay> {
        let serving = cluster.serving();
        let mut parts = Vec::with_capacity(reqs.len());
        let mut items = Vec::with_capacity(reqs.len());
        for req in reqs {
            let first = parts.len() as u32;
            let mut item = Item {
                first,
                count: 0,
                merge: None,
                scan: None,
                ready: None,
            };
            let mut part = |req: Request, dest| {
                parts.push(Part {
                    reqs: smallvec![req],
                    dest,
                    reply: None,
                    tries: 0,
                })
            };
            match plan(req, here) {
                Plan::Slot(slot) => part(req.clone(), Dest::Slot(slot)),
                Plan::Any => match cluster.pick_any(&serving, lane) {
                    Some(shard) => part(req.clone(), Dest::Node(shard)),
                    None => item.ready = Some(Bytes::from_static(NOT_SERVED)),
                },
                Plan::FanOut(_) if serving.is_empty() => {
                    item.ready = Some(Bytes::from_static(NOT_SERVED))
                }
                Plan::FanOut(merge) => {
                    for shard in &serving {
                        part(req.clone(), Dest::Node(shard.clone()));
                    }
                    item.merge = Some(merge);
                }
                Plan::Split(split, merge) => {
                    for (slot, req) in split {
                        part(req, Dest::Slot(slot));
                    }
                    item.merge = Some(merge);
                }
                Plan::Scan { shard, cursor } if shard < serving.len() => {
                    let cursor = cursor.to_string();
                    let args: Vec<&[u8]> = req
                        .args()
                        .enumerate()
                        .map(|(i, a)| if i == 1 { cursor.as_bytes() } else { a })
                        .collect();
                    part(
                        Request::from_args(&args),
                        Dest::Node(serving[shard].clone()),
                    );
                    item.scan = Some((shard, serving.len()));
                }
                Plan::Scan { .. } => {
                    item.ready = Some(Bytes::from_static(b"-ERR invalid cursor\r\n"))
                }
                Plan::Reply(reply) => item.ready = Some(reply),
            }
            item.count = parts.len() as u32 - first;
            items.push(item);
        }
        Relay::start(cluster, parts, items, inbox, resp3, lane, prev)
    }

    /// A transaction the proxy queued (MULTI, the commands, EXEC), sent whole to the shard of
    /// its keys; only EXEC's reply is delivered. Keys in more than one slot: CROSSSLOT, as
    /// Redis Cluster refuses such a command when it is queued.
    pub(crate) fn send_transaction(
        cluster: &Arc<Cluster>,
        reqs: &[Request],
        inbox: &Arc<Inbox>,
        resp3: bool,
        lane: usize,
        prev: Option<Arc<Relay>>,
    ) -> Arc<Relay> {
        let keys = reqs.iter().flat_map(|r| {
            let positions = crate::command::keys(r).unwrap_or_default();
            positions
                .into_iter()
                .filter_map(|i| r.arg(i as usize))
                .collect::<Vec<_>>()
        });
        let serving = cluster.serving();
        let mut item = Item {
            first: 0,
            count: 1,
            merge: None,
            scan: None,
            ready: None,
        };
        let dest = match crate::command::slot::common_slot(keys) {
            Ok(Some(slot)) => Some(Dest::Slot(slot)),
            Ok(None) => match cluster.pick_any(&serving, lane) {
                Some(shard) => Some(Dest::Node(shard)),
                None => {
                    item.ready = Some(Bytes::from_static(NOT_SERVED));
                    None
                }
            },
            Err(crate::command::slot::CrossSlot) => {
                item.ready = Some(Bytes::from_static(super::plan::CROSSSLOT));
                None
            }
        };
        let parts = match dest {
            Some(dest) => vec![Part {
                reqs: reqs.iter().cloned().collect(),
                dest,
                reply: None,
                tries: 0,
            }],
            None => {
                item.count = 0;
                Vec::new()
            }
        };
        Relay::start(cluster, parts, vec![item], inbox, resp3, lane, prev)
    }

    /// Starts a relay after `prev`, the session's last one, whose replies go first.
    fn start(
        cluster: &Arc<Cluster>,
        parts: Vec<Part>,
        items: Vec<Item>,
        inbox: &Arc<Inbox>,
        resp3: bool,
        lane: usize,
        prev: Option<Arc<Relay>>,
    ) -> Arc<Relay> {
        let n = parts.len() as u32;
        let relay = Arc::new(Relay {
            inbox: inbox.clone(),
            cluster: cluster.clone(),
            lane,
            resp3,
            state: Mutex::new(State {
                parts,
                items,
                delivered: 0,
                held: BytesMut::new(),
                held_frames: 0,
                turn: false,
                next: None,
            }),
        });
        // The turn is set here only while no one else can reach this relay: once linked to
        // `prev`, only `prev` gives it (see [`Relay::take_turn`]).
        let linked = prev.is_some_and(|prev| {
            let mut p = prev.state.lock().unwrap_or_else(|e| e.into_inner());
            let wait = !p.done();
            if wait {
                p.next = Some(relay.clone());
            }
            wait
        });
        if !linked {
            relay.state.lock().unwrap_or_else(|e| e.into_inner()).turn = true;
        }
        relay.fill(&[]);
        let ids: Vec<u32> = (0..n).collect();
        relay.dispatch(&ids);
        relay
    }

    /// Every earlier relay is done: hands over what this one holds, and passes the turn on
    /// if it is done too.
    fn take_turn(self: Arc<Self>) {
        let mut relay = self;
        loop {
            let next = {
                let mut state = relay.state.lock().unwrap_or_else(|e| e.into_inner());
                state.turn = true;
                relay.hand_over(&mut state)
            };
            match next {
                Some(next) => relay = next,
                None => return,
            }
        }
    }

    /// Sends parts `ids` to the shards their destination names now, grouped per connection
    /// (in order, so each connection gets a session's parts in request order).
    fn dispatch(self: &Arc<Self>, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let shards = self.cluster.shards();
        let mut groups: Vec<Group> = Vec::new();
        let mut failed: Vec<(u32, Bytes)> = Vec::new();
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for &id in ids {
                let part = &state.parts[id as usize];
                let shard = match &part.dest {
                    Dest::Slot(slot) => self.cluster.shard_in(*slot, &shards),
                    Dest::Node(shard) => Some(shard.clone()),
                };
                let Some(shard) = shard else {
                    failed.push((id, Bytes::from_static(NOT_SERVED)));
                    continue;
                };
                let skip = part.reqs.len() as u32 - 1;
                // A transaction goes alone: its skipped replies are at its waiter's start.
                match groups
                    .iter_mut()
                    .find(|g| Arc::ptr_eq(&g.0, &shard) && skip == 0 && g.3 == 0)
                {
                    Some(g) => {
                        g.1.push(id);
                        g.2.extend(part.reqs.iter().cloned());
                    }
                    None => groups.push((shard, vec![id], part.reqs.to_vec(), skip)),
                }
            }
        }
        for (shard, ids, reqs, skip) in groups {
            let conn = shard.conn(self.resp3, self.lane);
            let sent = conn.send_relay(
                &reqs,
                self.clone(),
                ids.clone().into(),
                skip,
                shard.available(),
            );
            if let Err(why) = sent {
                let err = ProxyError::from(why).to_reply();
                failed.extend(ids.into_iter().map(|id| (id, err.clone())));
            }
        }
        if !failed.is_empty() {
            self.fill(&failed);
        }
    }

    /// `ASKING` and part `id` to the shard whose primary is at `address`, once.
    fn ask(self: &Arc<Self>, id: u32, address: &str) {
        let Some(shard) = self.cluster.shard_at(address) else {
            // A node the map does not list yet (a primary just added): taken once the cluster
            // confirms it; otherwise the map is read again and the part goes by its slot.
            let (relay, address) = (self.clone(), address.to_owned());
            tokio::spawn(async move {
                match relay.cluster.adopt(&address).await {
                    Some(shard) => relay.ask_on(id, &shard),
                    None => {
                        relay.cluster.next_refresh(Duration::from_secs(1)).await;
                        relay.dispatch(&[id]);
                    }
                }
            });
            return;
        };
        self.ask_on(id, &shard);
    }

    /// `ASKING` and part `id` to `shard`.
    fn ask_on(self: &Arc<Self>, id: u32, shard: &Shard) {
        let reqs = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut reqs = vec![Request::from_args(&["ASKING"])];
            reqs.extend(state.parts[id as usize].reqs.iter().cloned());
            reqs
        };
        let skip = reqs.len() as u32 - 1;
        let conn = shard.conn(self.resp3, self.lane);
        if let Err(why) =
            conn.send_relay(&reqs, self.clone(), Box::new([id]), skip, shard.available())
        {
            self.fill(&[(id, ProxyError::from(why).to_reply())]);
        }
    }

    /// Replies for parts `ids`, one frame each in order, from a shard's connection; `errors`
    /// says whether any of them is an error reply (only those can be redirections).
    pub(crate) fn receive(self: &Arc<Self>, ids: &[u32], data: Bytes, errors: bool) {
        if !errors {
            // The common case: whole requests, next in line, no redirection: their replies go
            // to the inbox as they came, neither framed again nor copied.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.turn && state.held_frames == 0 && state.next_whole(ids) {
                state.delivered += ids.len();
                self.inbox.deliver(Chunk {
                    data,
                    frames: ids.len() as u32,
                });
                let next = self.complete(&mut state, Vec::new());
                drop(state);
                if let Some(next) = next {
                    next.take_turn();
                }
                return;
            }
        }
        let mut scanner = ReplyScanner::new(DEPTH);
        let mut at = 0;
        let mut filled = Vec::with_capacity(ids.len());
        let mut again = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for &id in ids {
                let len = match scanner.scan(&data[at..]) {
                    Ok(Some(frame)) => frame.len,
                    // Framed once already: cannot happen; the rest is the client's as it is.
                    _ => data.len() - at,
                };
                let reply = data.slice(at..at + len);
                at += len;
                let part = &mut state.parts[id as usize];
                match redirect(&reply) {
                    // Only for a request routed by its slot, and only about that slot: a
                    // script's error reply that looks like one is a reply, and no reply
                    // moves another slot's traffic.
                    Some(r) if part.follows(&r) => {
                        part.tries += 1;
                        again.push((id, r, part.tries));
                    }
                    _ => filled.push((id, reply)),
                }
            }
            let next = self.complete(&mut state, filled);
            drop(state);
            if let Some(next) = next {
                next.take_turn();
            }
        }
        for (id, r, tries) in again {
            self.follow(id, r, tries);
        }
    }

    /// Follows one redirection of part `id`.
    fn follow(self: &Arc<Self>, id: u32, r: Redirect, tries: u8) {
        let cluster = &self.cluster;
        cluster
            .redirects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match r {
            Redirect::Moved(slot, address) => {
                let script = {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    let part = &mut state.parts[id as usize];
                    part.dest = Dest::Slot(slot);
                    part.reqs.first().is_some_and(runs_a_script)
                };
                // A script's MOVED may be its own error: it moves no one else's traffic, only
                // asks for the map to be read again.
                if !script && cluster.moved(slot, &address) {
                    self.dispatch(&[id]);
                } else {
                    let relay = self.clone();
                    tokio::spawn(async move {
                        relay.cluster.next_refresh(Duration::from_secs(1)).await;
                        relay.dispatch(&[id]);
                    });
                }
            }
            Redirect::Ask(_, address) => self.ask(id, &address),
            Redirect::TryAgain => {
                let wait = Duration::from_millis((10u64 << (tries - 1).min(4)).min(100));
                let relay = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    relay.dispatch(&[id]);
                });
            }
        }
    }

    /// Answers parts `ids` with `why` (their connection failed or timed out).
    pub(crate) fn fail(self: &Arc<Self>, ids: &[u32], why: UpstreamFailure) {
        let err = ProxyError::from(why).to_reply();
        let failed: Vec<(u32, Bytes)> = ids.iter().map(|&id| (id, err.clone())).collect();
        self.fill(&failed);
    }

    fn fill(&self, replies: &[(u32, Bytes)]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.complete(&mut state, replies.to_vec());
        drop(state);
        if let Some(next) = next {
            next.take_turn();
        }
    }

    /// Records `replies`, completes every item now complete at the front, and hands them to
    /// the inbox if it is this relay's turn (see [`State::turn`]). Done under the state's lock,
    /// so that two connections completing items of this relay deliver them in order. Returns
    /// the next relay when this one is done, for the caller to give it the turn once this
    /// lock is released.
    fn complete(&self, state: &mut State, replies: Vec<(u32, Bytes)>) -> Option<Arc<Relay>> {
        for (id, reply) in replies {
            state.parts[id as usize].reply = Some(reply);
        }
        while state.delivered < state.items.len() {
            let item = &mut state.items[state.delivered];
            let reply = match item.ready.take() {
                Some(r) => r,
                None => {
                    let range = item.first as usize..(item.first + item.count) as usize;
                    if state.parts[range.clone()].iter().any(|p| p.reply.is_none()) {
                        break;
                    }
                    let replies: SmallVec<[Bytes; 4]> = state.parts[range]
                        .iter_mut()
                        .map(|p| p.reply.take().unwrap_or_default())
                        .collect();
                    let item = &state.items[state.delivered];
                    match (&item.merge, item.scan) {
                        (_, Some((shard, shards))) => scan_reply(&replies[0], shard, shards),
                        (Some(merge), _) => merged(merge, &replies),
                        (None, None) => replies[0].clone(),
                    }
                }
            };
            state.held.put_slice(&reply);
            state.held_frames += 1;
            state.delivered += 1;
        }
        self.hand_over(state)
    }

    /// Hands the held replies to the inbox when it is this relay's turn; the next relay once
    /// this one is done.
    fn hand_over(&self, state: &mut State) -> Option<Arc<Relay>> {
        if !state.turn {
            return None;
        }
        if state.held_frames > 0 {
            let data = std::mem::take(&mut state.held).freeze();
            let frames = std::mem::take(&mut state.held_frames);
            self.inbox.deliver(Chunk { data, frames });
        }
        if state.done() {
            state.next.take()
        } else {
            None
        }
    }
}

/// The elements of an array reply (`*n` or RESP3 `~n`/`>n`), each a whole frame.
fn elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    if !matches!(reply.first(), Some(b'*' | b'~')) {
        return None;
    }
    let eol = reply.windows(2).position(|w| w == b"\r\n")?;
    let n: i64 = std::str::from_utf8(&reply[1..eol]).ok()?.parse().ok()?;
    let mut at = eol + 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    let mut scanner = ReplyScanner::new(DEPTH);
    for _ in 0..n.max(0) {
        let frame = scanner.scan(&reply[at..]).ok()??;
        out.push(reply.slice(at..at + frame.len));
        at += frame.len;
    }
    Some(out)
}

fn integer(reply: &[u8]) -> Option<i64> {
    let text = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The client's one reply from its parts' replies (see [`Merge`]).
fn merged(merge: &Merge, replies: &[Bytes]) -> Bytes {
    if let Some(err) = replies.iter().find(|r| r.first() == Some(&b'-')) {
        return err.clone();
    }
    let array = |elems: Vec<Bytes>| {
        let mut out = BytesMut::new();
        out.put_slice(format!("*{}\r\n", elems.len()).as_bytes());
        for e in elems {
            out.put_slice(&e);
        }
        out.freeze()
    };
    let all = || -> Option<Vec<Vec<Bytes>>> { replies.iter().map(elements).collect() };
    match merge {
        Merge::First => replies[0].clone(),
        Merge::Sum => match replies.iter().map(|r| integer(r)).sum::<Option<i64>>() {
            Some(sum) => Bytes::from(format!(":{sum}\r\n")),
            None => replies[0].clone(),
        },
        Merge::Concat => match all() {
            Some(parts) => array(parts.into_iter().flatten().collect()),
            None => replies[0].clone(),
        },
        Merge::Scatter { places } => {
            let Some(parts) = all() else {
                return replies[0].clone();
            };
            let flat: Vec<Bytes> = parts.into_iter().flatten().collect();
            if flat.len() != places.len() {
                return Bytes::from_static(b"-ERR keywarden could not merge MGET's replies\r\n");
            }
            let mut out = vec![Bytes::new(); flat.len()];
            for (e, &p) in flat.into_iter().zip(places) {
                out[p as usize] = e;
            }
            array(out)
        }
    }
}

/// A shard's SCAN reply with the client's cursor: the shard's own cursor with the shard's
/// index below it, or the next shard's start once this one is done (0 after the last).
fn scan_reply(reply: &Bytes, shard: usize, shards: usize) -> Bytes {
    let Some(elems) = elements(reply) else {
        return reply.clone();
    };
    let cursor = elems.first().and_then(|c| {
        let eol = c.windows(2).position(|w| w == b"\r\n")?;
        let body = c.get(eol + 2..c.len() - 2)?;
        std::str::from_utf8(body).ok()?.parse::<u64>().ok()
    });
    let (Some(cursor), 2) = (cursor, elems.len()) else {
        return reply.clone();
    };
    let next = match cursor {
        0 if shard + 1 < shards => (shard + 1) as u64,
        0 => 0,
        c => (c << SCAN_SHARD_BITS) | shard as u64,
    };
    let next = next.to_string();
    let mut out = BytesMut::new();
    out.put_slice(format!("*2\r\n${}\r\n{next}\r\n", next.len()).as_bytes());
    out.put_slice(&elems[1]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_recognised() {
        assert!(matches!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved(3999, a)) if a == "127.0.0.1:6381"
        ));
        assert!(
            matches!(redirect(b"-ASK 3999 127.0.0.1:6381\r\n"), Some(Redirect::Ask(3999, a)) if a == "127.0.0.1:6381")
        );
        assert!(matches!(
            redirect(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        ));
        assert!(redirect(b"-ERR MOVED\r\n").is_none());
        assert!(redirect(b"+MOVED 1 a:1\r\n").is_none());
    }

    #[test]
    fn replies_merge_in_key_order() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let scatter = Merge::Scatter {
            places: vec![0, 2, 1],
        };
        assert_eq!(
            merged(
                &scatter,
                &[b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$1\r\nb\r\n")]
            ),
            b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        );
        assert_eq!(
            merged(&Merge::Sum, &[b(":2\r\n"), b(":1\r\n")]),
            b(":3\r\n")
        );
        assert_eq!(
            merged(&Merge::Sum, &[b(":2\r\n"), b("-ERR x\r\n")]),
            b("-ERR x\r\n")
        );
        assert_eq!(
            merged(&Merge::Concat, &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n")]),
            b("*1\r\n$1\r\na\r\n")
        );
        assert_eq!(
            merged(&Merge::First, &[b("+OK\r\n"), b("+OK\r\n")]),
            b("+OK\r\n")
        );
    }

    #[test]
    fn scan_cursors_walk_the_shards() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let keys = "*1\r\n$1\r\nk\r\n";
        let r = scan_reply(&b("*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n"), 1, 3);
        assert_eq!(
            r,
            Bytes::from(format!("*2\r\n$5\r\n{}\r\n{keys}", (17 << 10) | 1))
        );
        let r = scan_reply(&b("*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n"), 1, 3);
        assert_eq!(r, Bytes::from(format!("*2\r\n$1\r\n2\r\n{keys}")));
        let r = scan_reply(&b("*2\r\n$1\r\n0\r\n*0\r\n"), 2, 3);
        assert_eq!(r, b("*2\r\n$1\r\n0\r\n*0\r\n"));
    }
}
