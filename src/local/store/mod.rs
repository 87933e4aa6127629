//! The local store: keys of every database, held per keyspace in byte-bounded, exactly-LRU
//! parts, with per-key deadlines. It holds data only; what commands mean is in
//! [`crate::local::engine`].
//!
//! Layout: this file owns the map, its byte count, eviction and expiry; `txn` is the view one
//! command gets while it holds the lock; `value` is what a key holds (strings, hashes);
//! `watch` is WATCH: who watches which key, and which writes make a later EXEC abort.
//!
//! # One lock
//! Everything sits behind one `Mutex`, and a command holds it from start to end ([`Store::lock`]
//! hands out a [`Txn`]). That one choice gives, with no further machinery:
//! - exact LRU within each keyspace across all databases (one `lru::LruCache` per keyspace),
//!   which per-shard locks could only approximate;
//! - atomic commands: SET NX (first writer wins), MSET, MSETNX, RENAME and COPY are each seen
//!   whole or not at all by every other client;
//! - WATCH with no race: a write marks its watchers dirty inside the critical section that
//!   makes it, and EXEC checks and runs under one lock;
//! - no lock ordering to get wrong.
//!
//! The proxy's runtime is single-threaded by default, so the lock is uncontended there; a
//! command's critical section is short (no IO, never across `.await`), except KEYS and FLUSHDB,
//! which take time proportional to the database, as they do in Redis. If a multi-threaded
//! runtime ever makes the lock hot, sharding by key would trade exact global LRU and
//! multi-key atomicity for it; that is why it is not done now.
//!
//! # Byte budgets, one per keyspace
//! Every keyspace has its own part of the store ([`Layout`]): its own map, recency list and
//! byte budget, so that one tenant's writes never evict another keyspace's keys. What a part
//! does when full is its keyspace's [`Eviction`]: `lru` evicts that keyspace's least recently
//! used keys, `noeviction` refuses the write with Redis's `-OOM` error. A key's part is found
//! from its bytes on every lookup (one pattern walk; none when no keyspace is configured).
//!
//! Each key counts `key.len() + value bytes + ENTRY_OVERHEAD` ([`entry_bytes`]), where a
//! string's value bytes are its length and a hash's are, per field, `field.len() +
//! value.len() + FIELD_OVERHEAD`. The overheads approximate this map's own structures (the LRU
//! node and its table slot, a long key's shared buffer, the SCAN index and deadline index
//! entries), so the budget tracks real memory within a small factor for tiny keys and closely
//! for large ones; spare capacity of a string grown by APPEND is not counted.
//!
//! - Every write is held to its keyspace's budget, new keys and growing ones alike (SET,
//!   APPEND, SETRANGE, HSET, INCR...). Room is made first from expired keys (counted as
//!   expirations); then an `lru` keyspace evicts its least recently used *other* keys (counted
//!   as evictions), never the key being written and never another keyspace's, while a
//!   `noeviction` keyspace refuses the whole command ([`OutOfMemory`], counted as a refusal)
//!   before anything is written, so a multi-key write (MSET, RENAME) is all or nothing.
//! - An entry that alone exceeds its keyspace's budget is refused rather than emptying the
//!   keyspace for nothing.
//! - Reads count as use, as in Redis's LRU: GET, HGET, TOUCH... move a key to the front;
//!   EXISTS, TYPE, TTL and SCAN do not (Redis's `LOOKUP_NOTOUCH`).
//!
//! # Expiry
//! A key is expired once `now > deadline` (Redis's `keyIsExpired`). Every lookup checks it and
//! removes an expired key on the spot (lazy expiry); [`Store::expire_some`] removes expired keys
//! in deadline order from a periodic task (active expiry). Either way an expired key is never
//! seen by any command, and its removal counts as an expiration, never an eviction.
//!
//! # SCAN order
//! Each database keeps its keys ordered by a per-store random 64-bit hash of the key. A SCAN
//! cursor is the hash to resume from, so a full iteration returns every key present for the
//! whole scan exactly once, whatever is written or deleted meanwhile (a page never splits a run
//! of equal hashes, so it always advances).

mod key;
mod txn;
mod value;
mod watch;

// aHash with per-process random keys: keys come from clients, so the map needs a keyed hash
// (as Redis's SipHash), and SipHash-1-3 was a fifth of the cost of a local GET.
use ahash::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use key::Key;
use lru::LruCache;

use crate::policy::keyspace::{Budget, Eviction, Keyspaces, Membership, Mode, StoreShare};
use smallvec::SmallVec;

pub(crate) use txn::{last_of_each, Txn};
pub use value::{
    Hash, Str, Value, FIELD_OVERHEAD, HASH_MAX_LISTPACK_ENTRIES, HASH_MAX_LISTPACK_VALUE,
};
pub use watch::Watch;
use watch::WatchTable;

/// Bytes counted for each key on top of its key and value bytes. Measured shape on x86-64: the
/// LRU node (key 40 + [`Entry`] 72 + list links 16 = 128), its hash table slot (~25) and the
/// SCAN index entry (48 in a B-tree, ~70 with node slack): about 230, counted as 256. Keys of up
/// to 34 bytes and string values of up to 48 are held inside these; a longer key adds one
/// shared buffer (~32 + its length) and a longer value its own (its length, as counted), and a
/// key with a deadline ~70 more, uncounted.
pub(crate) const ENTRY_OVERHEAD: usize = 256;

/// Bytes a key of `key_len` bytes holding `value_bytes` (see [`Value::bytes`]) counts for.
pub fn entry_bytes(key_len: usize, value_bytes: usize) -> usize {
    key_len + value_bytes + ENTRY_OVERHEAD
}

/// A write refused: the entry alone would exceed its keyspace's budget, or the keyspace is
/// full and does not evict (`noeviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfMemory;

/// What a write does to the key's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Keep the existing deadline (none for a new key): SET KEEPTTL, INCR, APPEND...
    Keep,
    /// No deadline: a plain SET.
    Persist,
    /// Expire after this unix time in milliseconds.
    At(u64),
}

/// How the store is divided: which keyspace each key is in, each keyspace's budget, and which
/// keyspaces keyless commands act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    keyspaces: Keyspaces,
    /// In [`Keyspaces::names`] order, the default keyspace last.
    budgets: Vec<Budget>,
    /// Per part, whether keyless commands served locally (FLUSHDB, KEYS, SCAN, RANDOMKEY,
    /// DBSIZE) see it: the keyspaces in the default keyspace's mode, by which they are routed.
    keyless: Vec<bool>,
}

impl Layout {
    /// `keyspaces`, each with its part of `total` bytes (see [`Keyspaces::budgets`]).
    pub fn new(keyspaces: &Keyspaces, total: usize, shares: &[StoreShare]) -> Layout {
        let default = keyspaces.default_mode();
        Layout {
            keyspaces: keyspaces.clone(),
            budgets: keyspaces.budgets(total, shares),
            keyless: keyspaces.modes().map(|m| m == default).collect(),
        }
    }

    /// One part holding every key in `max_bytes`, evicting (tests, the fuzzer).
    pub fn single(max_bytes: usize) -> Layout {
        Layout::new(&Keyspaces::new(Vec::new(), Mode::LocalOnly), max_bytes, &[])
    }

    /// The part `key` (without its database prefix) belongs to.
    fn part_of(&self, key: &[u8]) -> usize {
        if self.budgets.len() == 1 {
            return 0;
        }
        match self.keyspaces.classify(key) {
            Membership::Named(i) => i,
            Membership::Default => self.budgets.len() - 1,
        }
    }

    fn total(&self) -> usize {
        self.budgets.iter().map(|b| b.max_bytes).sum()
    }
}

/// One keyspace's part of the store.
struct Part {
    /// Its keys in every database, most recently used first.
    lru: LruCache<Key, Entry, RandomState>,
    used: usize,
    budget: Budget,
    evictions: u64,
    /// Writes refused with `-OOM`.
    refusals: u64,
}

impl Part {
    fn new(budget: Budget) -> Part {
        Part {
            lru: LruCache::unbounded_with_hasher(RandomState::new()),
            used: 0,
            budget,
            evictions: 0,
            refusals: 0,
        }
    }
}

/// One keyspace's part of the store, for INFO and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStats {
    pub keyspace: String,
    pub keys: usize,
    pub used_bytes: usize,
    pub max_bytes: usize,
    pub eviction: Eviction,
    pub evictions: u64,
    pub refusals: u64,
}

/// The local store, shared by every session as `Arc<Store>`.
pub struct Store {
    inner: Mutex<Inner>,
    /// Recoveries so far (see [`Store::discard_on_recovery`]); changed only under the lock.
    recoveries: AtomicU64,
}

/// What one key holds: its value and deadline (the key itself is the map's).
///
/// 72 bytes: with the 40-byte [`Key`] and the list's two links, an LRU node is 128 bytes, two
/// cache lines (a GET reads the key, the deadline and the value, and relinks the node).
#[derive(Debug)]
pub(crate) struct Entry {
    value: Value,
    /// Never 0, so that `Option` takes no room of its own (see [`Entry::set_expire_at`]).
    deadline: Option<NonZeroU64>,
}

impl Entry {
    fn new(value: Value, expire_at: Option<u64>) -> Entry {
        let mut entry = Entry {
            value,
            deadline: None,
        };
        entry.set_expire_at(expire_at);
        entry
    }

    pub(crate) fn value(&self) -> &Value {
        &self.value
    }

    /// Unix time in milliseconds after which the key is gone, if it has one.
    pub(crate) fn expire_at(&self) -> Option<u64> {
        self.deadline.map(NonZeroU64::get)
    }

    /// Sets the deadline and returns the previous one. A deadline of 0 is kept as 1: both are
    /// long past at any time the store runs (commands refuse or delete at once such
    /// deadlines, so neither is ever seen).
    fn set_expire_at(&mut self, at: Option<u64>) -> Option<u64> {
        let old = self.expire_at();
        self.deadline = at.map(|at| NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN));
        old
    }

    /// The value, taking the entry apart (RENAME moves it).
    pub(crate) fn into_value(self) -> Value {
        self.value
    }

    /// Bytes counted for this entry under the db-prefixed key `full`.
    fn bytes(&self, full: &[u8]) -> usize {
        entry_bytes(full.len() - DB_PREFIX, self.value.bytes())
    }

    /// Past its deadline at `now` (Redis's `keyIsExpired`), whether or not removed yet.
    fn is_expired(&self, now: u64) -> bool {
        self.expire_at().is_some_and(|at| now > at)
    }
}

/// Keys in the map are the database number (4 bytes, big endian) followed by the key.
const DB_PREFIX: usize = 4;

/// A db-prefixed key built for one lookup; on the stack up to [`FULL_KEY_INLINE`] bytes.
type FullKey = SmallVec<[u8; FULL_KEY_INLINE]>;
const FULL_KEY_INLINE: usize = 64;

fn full_key(db: u32, key: &[u8]) -> FullKey {
    let len = DB_PREFIX + key.len();
    if len <= FULL_KEY_INLINE {
        // Two copies into a stack buffer: a third of the instructions of growing a SmallVec
        // by two extends, and every local command builds one or more of these.
        let mut buf = [0; FULL_KEY_INLINE];
        buf[..DB_PREFIX].copy_from_slice(&db.to_be_bytes());
        buf[DB_PREFIX..len].copy_from_slice(key);
        return FullKey::from_buf_and_len(buf, len);
    }
    let mut full = FullKey::with_capacity(len);
    full.extend_from_slice(&db.to_be_bytes());
    full.extend_from_slice(key);
    full
}

fn db_of(full: &[u8]) -> u32 {
    u32::from_be_bytes([full[0], full[1], full[2], full[3]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Deleted,
    Expired,
    Evicted,
}

struct Inner {
    layout: Layout,
    /// The generation of the policy in force (see [`Store::lock_judged`]).
    generation: u64,
    /// Bytes of every part together.
    used: usize,
    /// One per keyspace, indexed like [`Layout::budgets`].
    parts: Vec<Part>,
    /// Per database and part, its keys ordered by (scan hash, full key): SCAN, KEYS,
    /// RANDOMKEY, DBSIZE.
    dbs: BTreeMap<(u32, usize), BTreeSet<(u64, Key)>>,
    /// Keys with a deadline, soonest first.
    deadlines: BTreeSet<(u64, Key)>,
    scan_hasher: RandomState,
    rng: u64,
    evictions: u64,
    expirations: u64,
    /// Refusals counted by keyspaces a reload removed (the total never goes back).
    retired_refusals: u64,
    /// WATCHed keys; outside the byte budget, bounded by what sessions watch.
    watched: WatchTable,
}

impl Inner {
    fn scan_hash(&self, key: &[u8]) -> u64 {
        self.scan_hasher.hash_one(key)
    }

    /// The part of the db-prefixed key `full`.
    fn part(&self, full: &[u8]) -> usize {
        self.layout.part_of(&full[DB_PREFIX..])
    }

    /// The entry under `full`, expired or not, without counting a use.
    fn peek_full(&self, full: &[u8]) -> Option<&Entry> {
        self.parts[self.part(full)].lru.peek(full)
    }

    /// The parts keyless commands act on (see [`Layout`]).
    fn keyless_parts(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.parts.len()).filter(|&p| self.layout.keyless[p])
    }

    /// Takes the entry detached from under `full` out of the indexes and the byte count, and
    /// tells its watchers: every removal but FLUSHDB's passes here (delete, expiry, eviction).
    fn forget(&mut self, full: Key, entry: &Entry, why: Removal) {
        let hash = self.scan_hash(&full[DB_PREFIX..]);
        let db = db_of(&full);
        let p = self.part(&full);
        let bytes = entry.bytes(&full);
        self.used -= bytes;
        self.parts[p].used -= bytes;
        match why {
            Removal::Deleted => {}
            Removal::Expired => self.expirations += 1,
            Removal::Evicted => {
                self.evictions += 1;
                self.parts[p].evictions += 1;
            }
        }
        self.signal_modified(&full, true);
        if let Some(at) = entry.expire_at() {
            self.deadlines.remove(&(at, full.clone()));
        }
        if let Some(index) = self.dbs.get_mut(&(db, p)) {
            index.remove(&(hash, full));
            if index.is_empty() {
                self.dbs.remove(&(db, p));
            }
        }
    }

    fn remove_full(&mut self, full: &[u8], why: Removal) -> Option<Entry> {
        let p = self.part(full);
        let (full, entry) = self.parts[p].lru.pop_entry(full)?;
        self.forget(full, &entry, why);
        Some(entry)
    }

    /// Removes the key if it has expired at `now`; true when no live key is left under `full`.
    fn expire_if_needed(&mut self, full: &[u8], now: u64) -> bool {
        match self.peek_full(full) {
            None => true,
            Some(e) if e.expire_at().is_some_and(|at| now > at) => {
                self.remove_full(full, Removal::Expired);
                true
            }
            Some(_) => false,
        }
    }

    /// Removes up to `budget` expired keys, soonest deadline first.
    fn expire_some(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            let Some((at, full)) = self.deadlines.first().cloned() else {
                break;
            };
            if now <= at {
                break;
            }
            self.remove_full(&full, Removal::Expired);
            removed += 1;
        }
        removed
    }

    fn remove_where(&mut self, f: impl Fn(u32, &[u8]) -> bool) -> usize {
        let doomed: Vec<Key> = self
            .parts
            .iter()
            .flat_map(|part| part.lru.iter())
            .filter(|(full, _)| f(db_of(full), &full[DB_PREFIX..]))
            .map(|(full, _)| full.clone())
            .collect();
        for full in &doomed {
            self.remove_full(full, Removal::Deleted);
        }
        doomed.len()
    }

    /// Frees room in part `p` for `bytes` more: expired keys first (of any part: they go in
    /// deadline order), then, if the part evicts, its least recently used keys but `keep`
    /// (the key just written). A `noeviction` part is left as it is: its writes were checked
    /// before they were made (see [`Txn::check_writes`]).
    fn make_room(&mut self, p: usize, bytes: usize, now: u64, keep: Option<&[u8]>) {
        while self.parts[p].used + bytes > self.parts[p].budget.max_bytes {
            if self.expire_some(now, 1) == 1 {
                continue;
            }
            let part = &mut self.parts[p];
            if part.budget.eviction == Eviction::NoEviction {
                break;
            }
            match part.lru.peek_lru() {
                Some((oldest, _)) if keep != Some(&oldest[..]) => {}
                _ => break,
            }
            let Some((full, victim)) = part.lru.pop_lru() else {
                break;
            };
            self.forget(full, &victim, Removal::Evicted);
        }
    }

    /// Installs `layout`: the budgets, and when the keyspaces changed, every key moved to the
    /// part it now belongs to (in each old part's recency order, so recency across keyspaces
    /// that merge is approximate). Evicting parts are brought within their budget; a
    /// `noeviction` part over a shrunk budget keeps its keys and refuses writes until it is
    /// back under.
    fn install(&mut self, layout: Layout, now: u64) {
        let same = layout.keyspaces == self.layout.keyspaces;
        if same {
            for (part, budget) in self.parts.iter_mut().zip(&layout.budgets) {
                part.budget = *budget;
            }
            self.layout = layout;
        } else {
            let mut old = std::mem::take(&mut self.parts);
            self.parts = layout.budgets.iter().map(|b| Part::new(*b)).collect();
            // A keyspace's counters belong to its name: they carry over, never go back.
            let old_names: Vec<&str> = self.layout.keyspaces.names().collect();
            for (name, part) in layout.keyspaces.names().zip(&mut self.parts) {
                if let Some(i) = old_names.iter().position(|n| *n == name) {
                    part.evictions = old[i].evictions;
                    part.refusals = old[i].refusals;
                }
            }
            self.retired_refusals += (old_names.iter().zip(&old))
                .filter(|(n, _)| !layout.keyspaces.names().any(|m| m == **n))
                .map(|(_, p)| p.refusals)
                .sum::<u64>();
            self.layout = layout;
            self.dbs.clear();
            self.used = 0;
            for part in &mut old {
                while let Some((full, entry)) = part.lru.pop_lru() {
                    let p = self.part(&full);
                    let bytes = entry.bytes(&full);
                    let hash = self.scan_hash(&full[DB_PREFIX..]);
                    self.dbs
                        .entry((db_of(&full), p))
                        .or_default()
                        .insert((hash, full.clone()));
                    self.used += bytes;
                    self.parts[p].used += bytes;
                    self.parts[p].lru.push(full, entry);
                }
            }
        }
        for p in 0..self.parts.len() {
            self.make_room(p, 0, now, None);
        }
    }

    fn set_deadline(&mut self, full: &Key, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.deadlines.remove(&(at, full.clone()));
        }
        if let Some(at) = new {
            self.deadlines.insert((at, full.clone()));
        }
    }

    /// xorshift64*: RANDOMKEY needs spread, not cryptographic quality.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Store {
    /// An empty store of one part that holds at most `max_bytes` and evicts (see the module
    /// docs for what counts).
    pub fn new(max_bytes: usize) -> Store {
        Store::with_layout(Layout::single(max_bytes))
    }

    /// An empty store divided as `layout` says.
    pub fn with_layout(layout: Layout) -> Store {
        let scan_hasher = RandomState::new();
        let rng = scan_hasher.hash_one("keywarden rng seed") | 1;
        Store {
            inner: Mutex::new(Inner {
                parts: layout.budgets.iter().map(|b| Part::new(*b)).collect(),
                layout,
                generation: 1,
                used: 0,
                dbs: BTreeMap::new(),
                deadlines: BTreeSet::new(),
                scan_hasher,
                rng,
                evictions: 0,
                expirations: 0,
                retired_refusals: 0,
                watched: WatchTable::default(),
            }),
            recoveries: AtomicU64::new(0),
        }
    }

    /// Locks the store for one command running at unix time `now_ms` (the engine's entry).
    pub(crate) fn lock(&self, now_ms: u64) -> Txn<'_> {
        Txn::new(self.inner(), now_ms)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves every structure usable (each mutation keeps
        // the map and its indexes in step before anything can panic), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes counted for every key held (expired ones not yet removed included).
    pub fn used_bytes(&self) -> usize {
        self.inner().used
    }

    /// Keys held in all databases (expired ones not yet removed included).
    pub fn keys(&self) -> usize {
        self.inner().parts.iter().map(|p| p.lru.len()).sum()
    }

    /// Each keyspace's part, in config order, the default keyspace's last.
    pub fn part_stats(&self) -> Vec<PartStats> {
        let inner = self.inner();
        inner
            .layout
            .keyspaces
            .names()
            .zip(&inner.parts)
            .map(|(name, part)| PartStats {
                keyspace: name.to_owned(),
                keys: part.lru.len(),
                used_bytes: part.used,
                max_bytes: part.budget.max_bytes,
                eviction: part.budget.eviction,
                evictions: part.evictions,
                refusals: part.refusals,
            })
            .collect()
    }

    /// Writes refused with `-OOM`, in every part.
    pub fn refusals(&self) -> u64 {
        let inner = self.inner();
        inner.retired_refusals + inner.parts.iter().map(|p| p.refusals).sum::<u64>()
    }

    /// Keys removed to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.inner().evictions
    }

    /// Keys removed because their deadline passed.
    pub fn expirations(&self) -> u64 {
        self.inner().expirations
    }

    /// Active expiry: removes up to `budget` expired keys (called periodically by a task).
    pub(crate) fn expire_some(&self, now_ms: u64, budget: usize) -> usize {
        self.inner().expire_some(now_ms, budget)
    }

    /// A reload: installs `layout` (moving keys between parts when the keyspaces changed, and
    /// evicting least recently used keys at once where a budget shrank), runs `install` and
    /// removes every key for which `discard(db, key)` is true, all under one lock, so that no
    /// command runs between the new policy taking effect and the discard. Returns how many
    /// keys were discarded.
    ///
    /// `generation` is the new policy's: from now on [`Store::lock_judged`] refuses commands
    /// judged by an older one.
    pub(crate) fn reconfigure(
        &self,
        layout: Layout,
        generation: u64,
        install: impl FnOnce(),
        discard: Option<impl Fn(u32, &[u8]) -> bool>,
    ) -> usize {
        let mut inner = self.inner();
        inner.generation = generation;
        inner.install(layout, crate::local::clock::unix_ms());
        install();
        discard.map_or(0, |discard| inner.remove_where(discard))
    }

    /// Locks the store for commands that were routed here by the policy of `generation` when
    /// [`Store::recoveries`] was `recoveries`, or `None` when a reload has installed a newer
    /// policy since, or a recovery discarded the degraded keyspaces' data: their keys may no
    /// longer be local, and what they would write may already have been discarded, so they
    /// must be judged again.
    pub(crate) fn lock_judged(
        &self,
        now_ms: u64,
        generation: u64,
        recoveries: u64,
    ) -> Option<Txn<'_>> {
        let inner = self.inner();
        // Both change only under the lock.
        let current =
            inner.generation == generation && self.recoveries.load(Ordering::Acquire) == recoveries;
        current.then(|| Txn::new(inner, now_ms))
    }

    /// How many times [`Store::discard_on_recovery`] has run. Read it before the health
    /// snapshot that routes a batch, and give it to [`Store::lock_judged`].
    pub(crate) fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Acquire)
    }

    /// Panics unless the store's own bookkeeping matches its map: the byte count, the
    /// per-database scan indexes, the deadline index, and each key's inline or shared form.
    /// For tests and the fuzzer (`fuzz/`); it walks every key.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let inner = self.inner();
        let mut used = 0;
        type Index = BTreeMap<(u32, usize), BTreeSet<(u64, Vec<u8>)>>;
        let mut want_dbs: Index = BTreeMap::new();
        let mut want_dl: BTreeSet<(u64, Vec<u8>)> = BTreeSet::new();
        for (p, part) in inner.parts.iter().enumerate() {
            let mut part_used = 0;
            for (k, e) in part.lru.iter() {
                assert_eq!(matches!(k, Key::Inline { .. }), k.len() <= key::INLINE);
                assert_eq!(inner.part(k), p, "a key in another keyspace's part");
                part_used += e.bytes(k);
                want_dbs
                    .entry((db_of(k), p))
                    .or_default()
                    .insert((inner.scan_hash(&k[DB_PREFIX..]), k.to_vec()));
                if let Some(at) = e.expire_at() {
                    want_dl.insert((at, k.to_vec()));
                }
                // A lookup by bytes finds it, whichever its form.
                assert!(inner.peek_full(&k[..]).is_some());
            }
            assert_eq!(part.used, part_used, "used of part {p}");
            used += part_used;
        }
        assert_eq!(inner.used, used, "used");
        let got_dbs: Index = inner
            .dbs
            .iter()
            .map(|(d, s)| (*d, s.iter().map(|(h, k)| (*h, k.to_vec())).collect()))
            .collect();
        assert_eq!(got_dbs, want_dbs, "dbs");
        let got_dl: BTreeSet<(u64, Vec<u8>)> = inner
            .deadlines
            .iter()
            .map(|(a, k)| (*a, k.to_vec()))
            .collect();
        assert_eq!(got_dl, want_dl, "deadlines");
    }

    /// The byte budget in force: every part's together.
    pub fn max_bytes(&self) -> usize {
        self.inner().layout.total()
    }

    /// Removes every key for which `f(db, key)` is true; returns how many (discarding a
    /// keyspace's local writes when the upstream recovers).
    pub fn remove_where(&self, f: impl Fn(u32, &[u8]) -> bool) -> usize {
        self.inner().remove_where(f)
    }

    /// The upstream is healthy again: removes what `f` says was written for it during the
    /// outage, judged by the policy `judge` reads while the store is locked (a reload cannot
    /// replace it until the removal is done), and counts a recovery, so that a batch routed
    /// locally by a health snapshot from the outage cannot write after this.
    pub(crate) fn discard_on_recovery<P>(
        &self,
        judge: impl FnOnce() -> P,
        f: impl Fn(&P, u32, &[u8]) -> bool,
    ) -> usize {
        let mut inner = self.inner();
        self.recoveries.fetch_add(1, Ordering::Release);
        let policy = judge();
        inner.remove_where(|db, key| f(&policy, db, key))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod budget_tests;
