//! The local store: keys of every database in one byte-bounded, exactly-LRU map, with per-key
//! deadlines. It holds data only; what commands mean is in [`crate::local::engine`].
//!
//! Layout: this file owns the map, its byte count, eviction and expiry; `txn` is the view one
//! command gets while it holds the lock; `value` is what a key holds (strings, hashes);
//! `watch` is WATCH: who watches which key, and which writes make a later EXEC abort.
//!
//! # One lock
//! Everything sits behind one `Mutex`, and a command holds it from start to end ([`Store::lock`]
//! hands out a [`Txn`]). That one choice gives, with no further machinery:
//! - exact LRU across all databases (one `lru::LruCache`, one recency list), which per-shard
//!   locks could only approximate;
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
//! # Byte budget
//! Each key counts `key.len() + value bytes + ENTRY_OVERHEAD` ([`entry_bytes`]), where a
//! string's value bytes are its length and a hash's are, per field, `field.len() +
//! value.len() + FIELD_OVERHEAD`. The overheads approximate this map's own structures (the LRU
//! node and its table slot, a long key's shared buffer, the SCAN index and deadline index
//! entries), so the budget tracks real memory within a small factor for tiny keys and closely
//! for large ones; spare capacity of a string grown by APPEND is not counted.
//!
//! - Writing a **new** key makes room first: expired keys go (counted as expirations), then
//!   the least recently used keys (counted as evictions) until the new entry fits.
//! - **Updating** an existing key never evicts another one: the update is applied and the
//!   store may sit above its budget until the next new key makes room again.
//! - An entry that alone exceeds the budget is refused ([`OutOfMemory`]) rather than emptying
//!   the store for nothing.
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
use smallvec::SmallVec;

pub(crate) use txn::Txn;
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
pub const ENTRY_OVERHEAD: usize = 256;

/// Bytes a key of `key_len` bytes holding `value_bytes` (see [`Value::bytes`]) counts for.
pub fn entry_bytes(key_len: usize, value_bytes: usize) -> usize {
    key_len + value_bytes + ENTRY_OVERHEAD
}

/// A write refused because the entry alone would exceed the store's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

/// What a write does to the key's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Keep the existing deadline (none for a new key): SET KEEPTTL, INCR, APPEND...
    Keep,
    /// No deadline: a plain SET.
    Persist,
    /// Expire after this unix time in milliseconds.
    At(u64),
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
pub struct Entry {
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

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Unix time in milliseconds after which the key is gone, if it has one.
    pub fn expire_at(&self) -> Option<u64> {
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
    pub fn into_value(self) -> Value {
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
    max_bytes: usize,
    /// The generation of the policy in force (see [`Store::lock_judged`]).
    generation: u64,
    used: usize,
    /// Every key of every database, most recently used first.
    lru: LruCache<Key, Entry, RandomState>,
    /// Per database, its keys ordered by (scan hash, full key): SCAN, KEYS, RANDOMKEY, DBSIZE.
    dbs: BTreeMap<u32, BTreeSet<(u64, Key)>>,
    /// Keys with a deadline, soonest first.
    deadlines: BTreeSet<(u64, Key)>,
    scan_hasher: RandomState,
    rng: u64,
    evictions: u64,
    expirations: u64,
    /// WATCHed keys; outside the byte budget, bounded by what sessions watch.
    watched: WatchTable,
}

impl Inner {
    fn scan_hash(&self, key: &[u8]) -> u64 {
        self.scan_hasher.hash_one(key)
    }

    /// Takes the entry detached from under `full` out of the indexes and the byte count, and
    /// tells its watchers: every removal but FLUSHDB's passes here (delete, expiry, eviction).
    fn forget(&mut self, full: Key, entry: &Entry, why: Removal) {
        let hash = self.scan_hash(&full[DB_PREFIX..]);
        let db = db_of(&full);
        self.used -= entry.bytes(&full);
        match why {
            Removal::Deleted => {}
            Removal::Expired => self.expirations += 1,
            Removal::Evicted => self.evictions += 1,
        }
        self.signal_modified(&full, true);
        if let Some(at) = entry.expire_at() {
            self.deadlines.remove(&(at, full.clone()));
        }
        if let Some(index) = self.dbs.get_mut(&db) {
            index.remove(&(hash, full));
            if index.is_empty() {
                self.dbs.remove(&db);
            }
        }
    }

    fn remove_full(&mut self, full: &[u8], why: Removal) -> Option<Entry> {
        let (full, entry) = self.lru.pop_entry(full)?;
        self.forget(full, &entry, why);
        Some(entry)
    }

    /// Removes the key if it has expired at `now`; true when no live key is left under `full`.
    fn expire_if_needed(&mut self, full: &[u8], now: u64) -> bool {
        match self.lru.peek(full) {
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
            .lru
            .iter()
            .filter(|(full, _)| f(db_of(full), &full[DB_PREFIX..]))
            .map(|(full, _)| full.clone())
            .collect();
        for full in &doomed {
            self.remove_full(full, Removal::Deleted);
        }
        doomed.len()
    }

    /// Frees room for `bytes` more: expired keys first, then least recently used ones.
    fn make_room(&mut self, bytes: usize, now: u64) {
        while self.used + bytes > self.max_bytes {
            if self.expire_some(now, 1) == 1 {
                continue;
            }
            let Some((full, victim)) = self.lru.pop_lru() else {
                break;
            };
            self.forget(full, &victim, Removal::Evicted);
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
    /// An empty store that holds at most `max_bytes` (see the module docs for what counts).
    pub fn new(max_bytes: usize) -> Store {
        let scan_hasher = RandomState::new();
        let rng = scan_hasher.hash_one("keywarden rng seed") | 1;
        Store {
            inner: Mutex::new(Inner {
                max_bytes,
                generation: 1,
                used: 0,
                lru: LruCache::unbounded_with_hasher(RandomState::new()),
                dbs: BTreeMap::new(),
                deadlines: BTreeSet::new(),
                scan_hasher,
                rng,
                evictions: 0,
                expirations: 0,
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
        self.inner().lru.len()
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
    pub fn expire_some(&self, now_ms: u64, budget: usize) -> usize {
        self.inner().expire_some(now_ms, budget)
    }

    /// A reload: sets the byte budget to `max_bytes` (evicting least recently used keys at once
    /// when it shrinks), runs `install` and removes every key for which `discard(db, key)` is
    /// true, all under one lock, so that no command runs between the new policy taking effect
    /// and the discard. Returns how many keys were discarded.
    ///
    /// `generation` is the new policy's: from now on [`Store::lock_judged`] refuses commands
    /// judged by an older one.
    pub fn reconfigure(
        &self,
        max_bytes: usize,
        generation: u64,
        install: impl FnOnce(),
        discard: Option<impl Fn(u32, &[u8]) -> bool>,
    ) -> usize {
        let mut inner = self.inner();
        inner.max_bytes = max_bytes;
        inner.generation = generation;
        inner.make_room(0, crate::local::clock::unix_ms());
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
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Acquire)
    }

    /// The byte budget in force.
    pub fn max_bytes(&self) -> usize {
        self.inner().max_bytes
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
    pub fn discard_on_recovery<P>(
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
mod tests {
    use super::*;

    #[test]
    fn an_lru_node_is_two_cache_lines() {
        // Key, entry and the list's two links: what ENTRY_OVERHEAD counts the node as.
        let node = std::mem::size_of::<Key>() + std::mem::size_of::<Entry>() + 16;
        assert_eq!(node, 128);
    }

    #[test]
    fn a_deadline_of_zero_is_kept_as_long_past() {
        let mut entry = Entry::new(Value::Str(Default::default()), Some(0));
        assert_eq!(entry.expire_at(), Some(1));
        assert!(entry.is_expired(2));
        assert_eq!(entry.set_expire_at(None), Some(1));
        assert_eq!(entry.expire_at(), None);
    }

    #[test]
    fn work_judged_before_a_reload_or_a_recovery_is_refused() {
        let store = Store::new(1 << 20);
        let seen = store.recoveries();
        assert!(store.lock_judged(0, 1, seen).is_some());
        store.discard_on_recovery(|| (), |_, _, _| true);
        assert!(
            store.lock_judged(0, 1, seen).is_none(),
            "a recovery came between"
        );
        let seen = store.recoveries();
        assert!(store.lock_judged(0, 1, seen).is_some());
        store.reconfigure(1 << 20, 2, || (), None::<fn(u32, &[u8]) -> bool>);
        assert!(
            store.lock_judged(0, 1, seen).is_none(),
            "a reload came between"
        );
        assert!(store.lock_judged(0, 2, seen).is_some());
    }

    fn s(v: &str) -> Value {
        Value::Str(Str::from_slice(v.as_bytes()))
    }

    fn get(store: &Store, db: u32, key: &str, now: u64) -> Option<Value> {
        store
            .lock(now)
            .get(db, key.as_bytes())
            .map(|e| e.value().clone())
    }

    fn put(store: &Store, db: u32, key: &str, value: &str, now: u64) {
        store
            .lock(now)
            .insert(db, key.as_bytes(), s(value), Expiry::Persist)
            .unwrap();
    }

    /// Budget for exactly `n` entries of 1-byte keys and 1-byte values.
    fn room_for(n: usize) -> usize {
        n * entry_bytes(1, 1)
    }

    #[test]
    fn byte_accounting_follows_the_formula() {
        let store = Store::new(1 << 20);
        put(&store, 0, "key", "value", 0);
        assert_eq!(store.used_bytes(), 3 + 5 + ENTRY_OVERHEAD);
        put(&store, 0, "key", "v", 0);
        assert_eq!(store.used_bytes(), 3 + 1 + ENTRY_OVERHEAD);
        let mut h = Hash::new();
        h.set(b"f", b"vv");
        store
            .lock(0)
            .insert(1, b"h", Value::Hash(h), Expiry::Persist)
            .unwrap();
        let hash_entry = 1 + (1 + 2 + FIELD_OVERHEAD) + ENTRY_OVERHEAD;
        assert_eq!(store.used_bytes(), 4 + ENTRY_OVERHEAD + hash_entry);
        store.lock(0).update(1, b"h", |v| match v {
            Value::Hash(h) => h.set(b"g", b"w"),
            Value::Str(_) => unreachable!(),
        });
        assert_eq!(
            store.used_bytes(),
            4 + ENTRY_OVERHEAD + hash_entry + 2 + FIELD_OVERHEAD
        );
        store.lock(0).remove(0, b"key").unwrap();
        store.lock(0).remove(1, b"h").unwrap();
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(store.keys(), 0);
    }

    #[test]
    fn evicts_least_recently_used_and_reads_count_as_use() {
        let store = Store::new(room_for(3));
        put(&store, 0, "a", "1", 0);
        put(&store, 0, "b", "2", 0);
        put(&store, 0, "c", "3", 0);
        // a is read, so b is now the least recently used.
        assert_eq!(get(&store, 0, "a", 0), Some(s("1")));
        put(&store, 0, "d", "4", 0);
        assert_eq!(store.evictions(), 1);
        assert_eq!(get(&store, 0, "b", 0), None);
        // peek (EXISTS, TYPE, TTL) is not a use: c stays least recently used.
        assert!(store.lock(0).exists(0, b"c"));
        put(&store, 0, "e", "5", 0);
        assert_eq!(get(&store, 0, "c", 0), None);
        for k in ["a", "d", "e"] {
            assert!(get(&store, 0, k, 0).is_some(), "{k}");
        }
        assert_eq!(store.evictions(), 2);
        assert_eq!(store.used_bytes(), room_for(3));
    }

    #[test]
    fn lru_is_global_across_databases() {
        let store = Store::new(room_for(2));
        put(&store, 0, "a", "1", 0);
        put(&store, 5, "a", "1", 0);
        put(&store, 9, "a", "1", 0);
        assert_eq!(get(&store, 0, "a", 0), None);
        assert!(get(&store, 5, "a", 0).is_some());
        assert!(get(&store, 9, "a", 0).is_some());
    }

    #[test]
    fn updates_never_evict_and_oversized_entries_are_refused() {
        let store = Store::new(room_for(2));
        put(&store, 0, "a", "1", 0);
        put(&store, 0, "b", "2", 0);
        // Growing b past the budget keeps a.
        put(&store, 0, "b", "22222", 0);
        assert_eq!(store.evictions(), 0);
        assert!(store.used_bytes() > room_for(2));
        assert!(get(&store, 0, "a", 0).is_some());
        store
            .lock(0)
            .update(0, b"a", |v| {
                if let Value::Str(s) = v {
                    s.extend_from_slice(b"more")
                }
            })
            .unwrap();
        assert_eq!(store.evictions(), 0);
        // The next new key brings the store back under its budget.
        put(&store, 0, "c", "3", 0);
        assert!(store.used_bytes() <= room_for(2));
        assert_eq!(get(&store, 0, "c", 0), Some(s("3")));
        // Bigger than the whole budget: refused, nothing evicted.
        let before = store.keys();
        let big = Value::Str(Str::from_elem(b'x', room_for(2)));
        assert_eq!(
            store.lock(0).insert(0, b"z", big.clone(), Expiry::Persist),
            Err(OutOfMemory)
        );
        assert_eq!(
            store.lock(0).insert(0, b"c", big, Expiry::Persist),
            Err(OutOfMemory)
        );
        assert_eq!(store.keys(), before);
        assert_eq!(get(&store, 0, "c", 0), Some(s("3")));
    }

    #[test]
    fn expired_keys_are_invisible_and_counted_as_expirations() {
        let store = Store::new(1 << 20);
        store
            .lock(0)
            .insert(0, b"k", s("v"), Expiry::At(100))
            .unwrap();
        // Alive up to and including the deadline, as in Redis.
        assert!(get(&store, 0, "k", 100).is_some());
        assert_eq!(store.lock(101).dbsize(0), 0);
        assert_eq!(get(&store, 0, "k", 101), None);
        assert_eq!(store.expirations(), 1);
        assert_eq!(store.evictions(), 0);
        assert_eq!(store.used_bytes(), 0);

        // Lazy: a lookup removes it.
        store
            .lock(0)
            .insert(0, b"k", s("v"), Expiry::At(100))
            .unwrap();
        assert!(!store.lock(200).exists(0, b"k"));
        assert_eq!(store.keys(), 0);
        assert_eq!(store.expirations(), 2);
    }

    #[test]
    fn active_expiry_goes_in_deadline_order_within_budget() {
        let store = Store::new(1 << 20);
        for (i, at) in [30u64, 10, 20, 40].into_iter().enumerate() {
            let key = format!("k{i}");
            store
                .lock(0)
                .insert(0, key.as_bytes(), s("v"), Expiry::At(at))
                .unwrap();
        }
        put(&store, 0, "forever", "v", 0);
        assert_eq!(store.expire_some(25, 1), 1);
        assert!(!store.lock(0).exists(0, b"k1"));
        assert!(store.lock(0).exists(0, b"k2"));
        assert_eq!(store.expire_some(35, 10), 2);
        assert_eq!(store.keys(), 2);
        assert_eq!(store.expire_some(1000, 10), 1);
        assert_eq!(store.keys(), 1);
        assert_eq!(store.expirations(), 4);
    }

    #[test]
    fn making_room_removes_expired_keys_before_live_ones() {
        let store = Store::new(room_for(2));
        put(&store, 0, "a", "1", 0);
        store
            .lock(0)
            .insert(0, b"b", s("2"), Expiry::At(5))
            .unwrap();
        // b is most recently used, but expired by t=10: it goes, a stays.
        put(&store, 0, "c", "3", 10);
        assert_eq!(store.evictions(), 0);
        assert_eq!(store.expirations(), 1);
        assert!(get(&store, 0, "a", 10).is_some());
    }

    #[test]
    fn deadlines_follow_writes() {
        let store = Store::new(1 << 20);
        store
            .lock(0)
            .insert(0, b"k", s("v"), Expiry::At(50))
            .unwrap();
        // KEEPTTL-style write keeps it, a plain write drops it.
        store.lock(0).insert(0, b"k", s("w"), Expiry::Keep).unwrap();
        assert_eq!(store.lock(0).peek(0, b"k").unwrap().expire_at(), Some(50));
        store
            .lock(0)
            .insert(0, b"k", s("x"), Expiry::Persist)
            .unwrap();
        assert_eq!(store.lock(0).peek(0, b"k").unwrap().expire_at(), None);
        assert_eq!(store.expire_some(100, 10), 0);
        assert_eq!(store.lock(0).set_expire(0, b"k", Some(70)), None);
        assert_eq!(store.lock(0).set_expire(0, b"k", Some(60)), Some(70));
        assert_eq!(store.expire_some(65, 10), 1);
        assert_eq!(store.keys(), 0);
    }

    #[test]
    fn databases_are_separate_namespaces() {
        let store = Store::new(1 << 20);
        put(&store, 0, "k", "zero", 0);
        put(&store, 1, "k", "one", 0);
        assert_eq!(get(&store, 0, "k", 0), Some(s("zero")));
        assert_eq!(get(&store, 1, "k", 0), Some(s("one")));
        assert_eq!(get(&store, 2, "k", 0), None);
        store.lock(0).flush_db(0);
        assert_eq!(get(&store, 0, "k", 0), None);
        assert_eq!(get(&store, 1, "k", 0), Some(s("one")));
        assert_eq!(store.lock(0).dbsize(1), 1);
        assert_eq!(store.used_bytes(), entry_bytes(1, 3));
    }

    #[test]
    fn remove_where_discards_matching_keys() {
        let store = Store::new(1 << 20);
        for db in 0..3 {
            put(&store, db, "rl:a", "1", 0);
            put(&store, db, "cache:a", "1", 0);
        }
        store
            .lock(0)
            .insert(1, b"rl:b", s("1"), Expiry::At(10))
            .unwrap();
        let removed = store.remove_where(|db, key| db != 2 && key.starts_with(b"rl:"));
        assert_eq!(removed, 3);
        assert_eq!(store.keys(), 4);
        assert!(store.lock(0).exists(2, b"rl:a"));
        assert_eq!(store.expire_some(100, 10), 0, "its deadline went with it");
        assert_eq!(
            store.used_bytes(),
            3 * entry_bytes(7, 1) + entry_bytes(4, 1)
        );
    }

    #[test]
    fn a_full_scan_sees_every_key_that_stays_even_under_writes() {
        let store = Store::new(1 << 30);
        for i in 0..500 {
            put(&store, 0, &format!("stay{i}"), "v", 0);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut step = 0;
        loop {
            let (next, keys) = store.lock(0).scan(0, cursor, 7);
            seen.extend(keys);
            // Churn between steps: new keys and deleted ones must not hide the others.
            put(&store, 0, &format!("churn{step}"), "v", 0);
            if step > 3 {
                store
                    .lock(0)
                    .remove(0, format!("churn{}", step - 3).as_bytes());
            }
            step += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for i in 0..500 {
            assert!(seen.contains(format!("stay{i}").as_bytes()), "stay{i}");
        }
        assert!(step < 200, "pages advance: {step}");
    }

    #[test]
    fn random_key_returns_only_live_keys() {
        let store = Store::new(1 << 20);
        assert_eq!(store.lock(0).random_key(0), None);
        store
            .lock(0)
            .insert(0, b"gone", s("v"), Expiry::At(1))
            .unwrap();
        put(&store, 0, "here", "v", 0);
        for _ in 0..20 {
            assert_eq!(store.lock(5).random_key(0).as_deref(), Some(&b"here"[..]));
        }
        store.lock(5).remove(0, b"here");
        assert_eq!(store.lock(5).random_key(0), None);
    }

    #[test]
    fn keys_where_skips_expired_keys() {
        let store = Store::new(1 << 20);
        store
            .lock(0)
            .insert(0, b"a1", s("v"), Expiry::At(1))
            .unwrap();
        put(&store, 0, "a2", "v", 0);
        put(&store, 0, "b1", "v", 0);
        let keys = store.lock(5).keys_where(0, |k| k.starts_with(b"a"));
        assert_eq!(keys, vec![bytes::Bytes::from_static(b"a2")]);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }
}

/// Random operations against a model: the byte count, both indexes and the inline/shared form
/// of every key stay exact on every path, with keys and values either side of the inline
/// limits.
#[cfg(test)]
mod model_tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    /// (db, key) -> (value, deadline).
    type Model = HashMap<(u32, Vec<u8>), (Vec<u8>, Option<u64>)>;

    /// The store's own bookkeeping, recomputed from its map.
    fn check(store: &Store) {
        let inner = store.inner();
        let mut used = 0;
        let mut want_dbs: BTreeMap<u32, BTreeSet<(u64, Vec<u8>)>> = BTreeMap::new();
        let mut want_dl: BTreeSet<(u64, Vec<u8>)> = BTreeSet::new();
        for (k, e) in inner.lru.iter() {
            assert_eq!(matches!(k, Key::Inline { .. }), k.len() <= key::INLINE);
            used += e.bytes(k);
            want_dbs
                .entry(db_of(k))
                .or_default()
                .insert((inner.scan_hash(&k[DB_PREFIX..]), k.to_vec()));
            if let Some(at) = e.expire_at() {
                want_dl.insert((at, k.to_vec()));
            }
            // A lookup by bytes finds it, whichever its form.
            assert!(inner.lru.peek(&k[..]).is_some());
        }
        assert_eq!(inner.used, used, "used");
        let got_dbs: BTreeMap<u32, BTreeSet<(u64, Vec<u8>)>> = inner
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

    struct Rng(u64);
    impl Rng {
        fn n(&mut self, m: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % m
        }
    }

    fn run(budget: usize, seed: u64, model_check: bool) {
        let store = Store::new(budget);
        let mut rng = Rng(seed);
        let lens = [0usize, 1, 33, 34, 35, 36, 80];
        let keys: Vec<Vec<u8>> = lens
            .iter()
            .flat_map(|&l| (0..3u8).map(move |c| vec![b'a' + c; l]))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut model = Model::new();
        let mut now = 1000u64;
        for _ in 0..20000 {
            now += rng.n(3);
            let db = rng.n(2) as u32;
            let key = keys[rng.n(keys.len() as u64) as usize].clone();
            let vlen = [0usize, 5, 48, 49, 200][rng.n(5) as usize];
            let val = vec![b'v'; vlen];
            let live = |m: &Model| {
                m.get(&(db, key.clone()))
                    .filter(|(_, at)| at.is_none_or(|a| now <= a))
                    .cloned()
            };
            match rng.n(9) {
                0 | 1 => {
                    let expiry = match rng.n(3) {
                        0 => Expiry::Keep,
                        1 => Expiry::Persist,
                        _ => Expiry::At(now + rng.n(20)),
                    };
                    let r =
                        store
                            .lock(now)
                            .insert(db, &key, Value::Str(Str::from_slice(&val)), expiry);
                    if r.is_ok() && model_check {
                        let old = live(&model).and_then(|(_, at)| at);
                        let at = match expiry {
                            Expiry::Keep => old,
                            Expiry::Persist => None,
                            Expiry::At(a) => Some(a),
                        };
                        model.insert((db, key.clone()), (val.clone(), at));
                    }
                }
                2 => {
                    let got = store.lock(now).get(db, &key).map(|e| match e.value() {
                        Value::Str(s) => (s.to_vec(), e.expire_at()),
                        _ => unreachable!(),
                    });
                    if model_check {
                        assert_eq!(got, live(&model));
                    }
                }
                3 => {
                    let got = store.lock(now).remove(db, &key).is_some();
                    if model_check {
                        assert_eq!(got, live(&model).is_some());
                        model.remove(&(db, key.clone()));
                    }
                }
                4 => {
                    let at = if rng.n(2) == 0 {
                        None
                    } else {
                        Some(now + rng.n(20))
                    };
                    let got = store.lock(now).set_expire(db, &key, at);
                    if model_check {
                        let l = live(&model);
                        assert_eq!(got, l.as_ref().and_then(|x| x.1));
                        if let Some((v, _)) = l {
                            model.insert((db, key.clone()), (v, at));
                        }
                    }
                }
                5 => {
                    store.lock(now).update(db, &key, |v| {
                        if let Value::Str(s) = v {
                            s.extend_from_slice(b"xyz");
                        }
                    });
                    if model_check {
                        if let Some((mut v, at)) = live(&model) {
                            v.extend_from_slice(b"xyz");
                            model.insert((db, key.clone()), (v, at));
                        }
                    }
                }
                6 => {
                    store.expire_some(now, rng.n(3) as usize);
                }
                7 => {
                    if rng.n(20) == 0 {
                        store.lock(now).flush_db(db);
                        model.retain(|(d, _), _| *d != db);
                    } else if rng.n(10) == 0 {
                        let c = key.first().copied();
                        store.remove_where(|d, k| d == db && k.first().copied() == c);
                        model.retain(|(d, k), _| !(*d == db && k.first().copied() == c));
                    }
                }
                _ => {
                    // A whole SCAN, KEYS and RANDOMKEY against the model's live keys.
                    let mut t = store.lock(now);
                    let mut cursor = 0;
                    let mut seen = BTreeSet::new();
                    loop {
                        let (next, ks) = t.scan(db, cursor, 3);
                        for k in ks {
                            if t.peek(db, &k).is_some() {
                                seen.insert(k.to_vec());
                            }
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    let kw: BTreeSet<Vec<u8>> = t
                        .keys_where(db, |_| true)
                        .into_iter()
                        .map(|b| b.to_vec())
                        .collect();
                    let rk = t.random_key(db).map(|b| b.to_vec());
                    drop(t);
                    if model_check {
                        let want: BTreeSet<Vec<u8>> = model
                            .iter()
                            .filter(|((d, _), (_, at))| *d == db && at.is_none_or(|a| now <= a))
                            .map(|((_, k), _)| k.clone())
                            .collect();
                        assert_eq!(seen, want);
                        assert_eq!(kw, want);
                        if let Some(rk) = rk {
                            assert!(want.contains(&rk));
                        } else {
                            assert!(want.is_empty());
                        }
                    }
                }
            }
            check(&store);
        }
    }

    #[test]
    fn random_operations_match_a_model() {
        for seed in 1..6 {
            run(1 << 30, seed * 7919 + 1, true);
        }
    }

    #[test]
    fn random_operations_under_eviction_keep_the_bookkeeping_exact() {
        for seed in 1..6 {
            run(3000, seed * 104729 + 3, false);
        }
        // A reload that shrinks the budget and discards keys.
        let store = Store::new(1 << 20);
        for i in 0..50u8 {
            store
                .lock(0)
                .insert(
                    0,
                    &vec![i; (i % 40) as usize + 1],
                    Value::Str(Str::from_slice(b"x")),
                    Expiry::At(5),
                )
                .unwrap();
        }
        store.reconfigure(2000, 2, || (), Some(|_, k: &[u8]| k.len() == 34));
        check(&store);
    }
}
