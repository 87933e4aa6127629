//! WATCH: which sessions watch which keys, and which of them have seen one change, with Redis
//! 7.0's rules (`multi.c`: `watchForKey`, `touchWatchedKey`, `isWatchedKeyExpired`,
//! `unwatchAllKeys`; `db.c`: `signalModifiedKey`, `touchAllWatchedKeysInDb`).
//!
//! A session keeps one [`Watch`]. The store keeps a [`WatchTable`] inside its lock, so that a
//! write marks watchers dirty in the same critical section that makes it, and EXEC checks
//! [`Txn::watch_dirty`](super::Txn::watch_dirty) under the lock it then runs the transaction
//! with: check and execute are one atomic step.
//!
//! # What marks a watcher dirty
//! - Any write to the key that happened, even one that stores the same value (SET, INCR,
//!   APPEND, HSET..., a deadline set, a deadline removed, a key created, replaced or deleted),
//!   in the key's own database only. A write that changes nothing (SET NX on an existing key,
//!   DEL of a missing key, PERSIST of a key with no deadline) does not, as in Redis, where
//!   those commands never call `signalModifiedKey`.
//! - Removal by FLUSHDB, eviction or expiry (lazy or active).
//! - At EXEC, a key that was live when watched and is logically expired now, even if nothing
//!   has removed it yet (`isWatchedKeyExpired`).
//!
//! A key already expired when watched is treated as missing: its removal is no change
//! (Redis 7.0, #10256). In that one case Redis 7.0's `touchWatchedKey` also skips a write that
//! leaves the key in place (its loop `break`s); that cannot happen here, because every write
//! removes an expired key first, and if it could, marking dirty is the safe answer.
//!
//! # Cost
//! With no watcher the table is empty and each write pays one `is_empty` branch. With
//! watchers, a write pays one hash lookup. The table holds one entry per (session, key)
//! watched, not counted in the byte budget, and a session marked dirty gives its keys back at
//! once (as Redis's `unwatchAllKeys` in `touchWatchedKey`): only its dirty flag stays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use super::{full_key, Inner, Store};

/// Identifies one [`Watch`] in the table; unique in the process, never reused.
type WatcherId = u64;

static NEXT_WATCHER: AtomicU64 = AtomicU64::new(1);

/// The keys one session watches (Redis's per-client `watched_keys` and `CLIENT_DIRTY_CAS`).
///
/// WATCH is [`Watch::add`]; UNWATCH, DISCARD and RESET are [`Watch::unwatch`]; EXEC is
/// [`Txn::watch_dirty`](super::Txn::watch_dirty) then
/// [`Txn::unwatch`](super::Txn::unwatch) under the lock it runs with. Dropping a `Watch` (the
/// client went away) releases it too, so a forgotten release costs nothing after the session.
///
/// [`Watch::add`], [`Watch::unwatch`] and drop take the store's lock: never call them on a
/// thread that holds a [`Txn`](super::Txn) of the same store (it would deadlock); use
/// [`Txn::unwatch`](super::Txn::unwatch) there.
pub struct Watch {
    store: Arc<Store>,
    id: WatcherId,
    /// True while the table may hold something for this watch; lets drop skip the lock for a
    /// session that never watched anything or has released.
    armed: bool,
}

impl Watch {
    /// A watch with no keys; costs nothing in the store until the first [`Watch::add`].
    pub fn new(store: Arc<Store>) -> Watch {
        Watch {
            store,
            id: NEXT_WATCHER.fetch_add(1, Ordering::Relaxed),
            armed: false,
        }
    }

    /// WATCH `key` of `db` at unix time `now_ms`. Watching a key twice is one watch.
    pub(crate) fn add(&mut self, db: u32, key: &[u8], now_ms: u64) {
        self.armed = true;
        self.store.inner().watch_key(self.id, db, key, now_ms);
    }

    /// UNWATCH: forgets every key and the dirty flag; the watch can be used again.
    pub(crate) fn unwatch(&mut self) {
        if std::mem::take(&mut self.armed) {
            self.store.inner().watched.release(self.id);
        }
    }

    /// Releases this watch in `inner`, which the caller has locked.
    pub(super) fn release(&mut self, inner: &mut Inner) {
        if std::mem::take(&mut self.armed) {
            inner.watched.release(self.id);
        }
    }

    pub(super) fn id(&self) -> WatcherId {
        self.id
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.unwatch();
    }
}

impl Inner {
    /// Redis's `watchForKey`: records whether the key is already expired, without removing it.
    fn watch_key(&mut self, id: WatcherId, db: u32, key: &[u8], now: u64) {
        let full = full_key(db, key);
        let expired = self.peek_full(&full[..]).is_some_and(|e| e.is_expired(now));
        self.watched.add(id, &full, expired);
    }

    /// Redis's `signalModifiedKey`, called after `full` was written (`gone`: it no longer
    /// exists). One branch when nobody watches anything.
    #[inline]
    pub(super) fn signal_modified(&mut self, full: &[u8], gone: bool) {
        if !self.watched.is_empty() {
            self.watched.touch(full, gone);
        }
    }

    /// EXEC's check: true when the transaction must abort.
    pub(super) fn watch_dirty(&self, watch: &Watch, now: u64) -> bool {
        self.watched.is_dirty(watch.id(), |full| {
            self.peek_full(full).is_some_and(|e| e.is_expired(now))
        })
    }
}

/// One session watching one key.
#[derive(Debug, Clone, Copy)]
struct Watching {
    watcher: WatcherId,
    /// The key was already logically expired when watched (Redis's `watchedKey.expired`).
    expired: bool,
}

/// What one session watches.
#[derive(Debug, Default)]
struct Watcher {
    /// Sticky until released: EXEC will abort.
    dirty: bool,
    /// Full keys, each once; emptied when the watcher becomes dirty.
    keys: Vec<Bytes>,
}

/// Every watch of every session, kept in step both ways so either side finds the other.
#[derive(Debug, Default)]
pub(super) struct WatchTable {
    /// Full key -> who watches it (Redis's `db->watched_keys`). Never holds an empty list.
    by_key: HashMap<Bytes, SmallVec<[Watching; 1]>>,
    /// Watcher -> its keys and dirty flag. A watcher with no keys and not dirty is absent.
    watchers: HashMap<WatcherId, Watcher>,
}

impl WatchTable {
    /// True when no key is watched, so no write needs to look further.
    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn add(&mut self, id: WatcherId, full: &[u8], expired: bool) {
        let watcher = self.watchers.entry(id).or_default();
        if watcher.dirty {
            // EXEC aborts whatever else is watched: nothing more to keep until release.
            return;
        }
        let full = Bytes::copy_from_slice(full);
        let watching = self.by_key.entry(full.clone()).or_default();
        if watching.iter().any(|w| w.watcher == id) {
            return;
        }
        watching.push(Watching {
            watcher: id,
            expired,
        });
        watcher.keys.push(full);
    }

    /// Redis's `touchWatchedKey`: `full` was written; `gone` when it no longer exists.
    fn touch(&mut self, full: &[u8], gone: bool) {
        let Some(watching) = self.by_key.get_mut(full) else {
            return;
        };
        let mut dirty: SmallVec<[WatcherId; 4]> = SmallVec::new();
        for w in watching.iter_mut() {
            if w.expired && gone {
                // It was already expired when watched: deleting it is no logical change, and
                // from now on it is watched as a missing key.
                w.expired = false;
            } else {
                dirty.push(w.watcher);
            }
        }
        for id in dirty {
            self.mark_dirty(id);
        }
    }

    /// Sets the sticky flag and gives the watcher's keys back: nothing can undo the abort.
    fn mark_dirty(&mut self, id: WatcherId) {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return;
        };
        watcher.dirty = true;
        let keys = std::mem::take(&mut watcher.keys);
        self.forget_keys(id, &keys);
    }

    /// Redis's `unwatchAllKeys` with the dirty flag cleared.
    fn release(&mut self, id: WatcherId) {
        if let Some(watcher) = self.watchers.remove(&id) {
            self.forget_keys(id, &watcher.keys);
        }
    }

    fn forget_keys(&mut self, id: WatcherId, keys: &[Bytes]) {
        for full in keys {
            if let Some(watching) = self.by_key.get_mut(full) {
                watching.retain(|w| w.watcher != id);
                if watching.is_empty() {
                    self.by_key.remove(full);
                }
            }
        }
    }

    /// EXEC's check: dirty, or a key live when watched is now expired (`is_expired`), which
    /// is Redis 7.0's `isWatchedKeyExpired`.
    fn is_dirty(&self, id: WatcherId, is_expired: impl Fn(&[u8]) -> bool) -> bool {
        let Some(watcher) = self.watchers.get(&id) else {
            return false;
        };
        watcher.dirty
            || watcher
                .keys
                .iter()
                .any(|full| !self.expired_when_watched(id, full) && is_expired(full))
    }

    fn expired_when_watched(&self, id: WatcherId, full: &[u8]) -> bool {
        self.by_key
            .get(full)
            .and_then(|watching| watching.iter().find(|w| w.watcher == id))
            .is_some_and(|w| w.expired)
    }

    /// (watched keys, watchers) held, for tests of the bookkeeping.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.by_key.len(), self.watchers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Expiry, Hash, Str, Value};
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(Str::from_slice(v.as_bytes()))
    }

    fn new_store() -> Arc<Store> {
        Arc::new(Store::new(1 << 20))
    }

    fn put(store: &Store, db: u32, key: &str, expiry: Expiry) {
        store
            .lock(0)
            .insert(db, key.as_bytes(), s("v"), expiry)
            .unwrap();
    }

    fn watching(store: &Arc<Store>, db: u32, key: &str, now: u64) -> Watch {
        let mut watch = Watch::new(Arc::clone(store));
        watch.add(db, key.as_bytes(), now);
        watch
    }

    fn dirty(store: &Store, watch: &Watch, now: u64) -> bool {
        store.lock(now).watch_dirty(watch)
    }

    fn sizes(store: &Store) -> (usize, usize) {
        store.inner().watched.sizes()
    }

    type Write = fn(&Store);

    /// Each write to `k` in db 0, which starts as a string "v" with a deadline at 1000.
    const WRITES: &[(&str, Write)] = &[
        ("SET same value", |st| {
            st.lock(0).insert(0, b"k", s("v"), Expiry::Keep).unwrap()
        }),
        ("SET other value", |st| {
            st.lock(0).insert(0, b"k", s("w"), Expiry::Persist).unwrap()
        }),
        ("APPEND/INCR in place", |st| {
            st.lock(0).update(0, b"k", |_| ()).unwrap()
        }),
        ("DEL", |st| {
            st.lock(0).remove(0, b"k").unwrap();
        }),
        ("EXPIRE", |st| {
            st.lock(0).set_expire(0, b"k", Some(5000));
        }),
        ("EXPIRE same deadline", |st| {
            st.lock(0).set_expire(0, b"k", Some(1000));
        }),
        ("PERSIST", |st| {
            st.lock(0).set_expire(0, b"k", None);
        }),
        ("RENAME destination", |st| {
            let mut txn = st.lock(0);
            txn.insert(0, b"src", s("x"), Expiry::Persist).unwrap();
            let entry = txn.remove(0, b"src").unwrap();
            txn.remove(0, b"k");
            txn.insert(0, b"k", entry.into_value(), Expiry::Persist)
                .unwrap();
        }),
        ("RENAME source", |st| {
            let mut txn = st.lock(0);
            let entry = txn.remove(0, b"k").unwrap();
            txn.insert(0, b"dst", entry.into_value(), Expiry::Persist)
                .unwrap();
        }),
        ("COPY destination from another db", |st| {
            let mut txn = st.lock(0);
            txn.insert(3, b"k", s("x"), Expiry::Persist).unwrap();
            let value = txn.get(3, b"k").unwrap().value().clone();
            txn.remove(0, b"k");
            txn.insert(0, b"k", value, Expiry::Persist).unwrap();
        }),
        ("HSET over the string", |st| {
            let mut h = Hash::new();
            h.set(b"f", b"v");
            st.lock(0)
                .insert(0, b"k", Value::Hash(h), Expiry::Keep)
                .unwrap()
        }),
        ("FLUSHDB", |st| st.lock(0).flush_db(0)),
        ("lazy expiry", |st| {
            assert!(st.lock(1001).get(0, b"k").is_none())
        }),
        ("active expiry", |st| {
            assert_eq!(st.expire_some(1001, 10), 1)
        }),
        ("discarded local writes", |st| {
            assert_eq!(st.remove_where(|_, key| key == b"k"), 1)
        }),
    ];

    #[test]
    fn every_kind_of_write_marks_dirty() {
        for (name, write) in WRITES {
            let store = new_store();
            put(&store, 0, "k", Expiry::At(1000));
            let watch = watching(&store, 0, "k", 0);
            assert!(!dirty(&store, &watch, 0), "{name}: clean before");
            write(&store);
            assert!(dirty(&store, &watch, 0), "{name}");
        }
    }

    #[test]
    fn creating_a_watched_missing_key_marks_dirty() {
        let store = new_store();
        let watch = watching(&store, 0, "k", 0);
        put(&store, 0, "k", Expiry::Persist);
        assert!(dirty(&store, &watch, 0));
    }

    #[test]
    fn eviction_marks_dirty() {
        let store = Arc::new(Store::new(2 * super::super::entry_bytes(1, 1)));
        put(&store, 0, "k", Expiry::Persist);
        put(&store, 0, "b", Expiry::Persist);
        let watch = watching(&store, 0, "k", 0);
        put(&store, 0, "c", Expiry::Persist);
        assert_eq!(store.evictions(), 1);
        assert!(dirty(&store, &watch, 0));
    }

    #[test]
    fn reads_refused_writes_and_other_keys_do_not_mark_dirty() {
        let store = new_store();
        put(&store, 0, "k", Expiry::Persist);
        put(&store, 0, "other", Expiry::Persist);
        let watch = watching(&store, 0, "k", 0);
        let missing = watching(&store, 0, "missing", 0);
        {
            let mut txn = store.lock(0);
            // Reads, used or not.
            assert!(txn.get(0, b"k").is_some());
            assert!(txn.peek(0, b"k").is_some());
            assert!(txn.exists(0, b"k"));
            txn.scan(0, 0, 10);
            txn.keys_where(0, |_| true);
            txn.dbsize(0);
            txn.random_key(0);
            // Writes that change nothing: DEL, EXPIRE and APPEND of a missing key; PERSIST
            // of a key with no deadline; an entry too big to store.
            assert!(txn.remove(0, b"missing").is_none());
            assert_eq!(txn.set_expire(0, b"missing", Some(10)), None);
            assert!(txn.update(0, b"missing", |_| ()).is_none());
            assert_eq!(txn.set_expire(0, b"k", None), None);
            let huge = Value::Str(Str::from_elem(b'x', 1 << 20));
            assert!(txn.insert(0, b"k", huge, Expiry::Persist).is_err());
            // Other keys, and the same name in another database.
            txn.insert(0, b"other", s("w"), Expiry::Persist).unwrap();
            txn.remove(0, b"other");
            txn.insert(1, b"k", s("w"), Expiry::Persist).unwrap();
            txn.insert(1, b"missing", s("w"), Expiry::Persist).unwrap();
            txn.flush_db(1);
        }
        assert!(!dirty(&store, &watch, 0));
        assert!(!dirty(&store, &missing, 0));
    }

    #[test]
    fn flushdb_leaves_watchers_of_missing_keys_clean() {
        // touchAllWatchedKeysInDb only touches keys that exist in the emptied database.
        let store = new_store();
        put(&store, 0, "present", Expiry::Persist);
        let watch = watching(&store, 0, "missing", 0);
        store.lock(0).flush_db(0);
        assert!(!dirty(&store, &watch, 0));
    }

    #[test]
    fn a_key_live_when_watched_and_expired_at_exec_is_dirty_even_unremoved() {
        let store = new_store();
        put(&store, 0, "k", Expiry::At(100));
        let watch = watching(&store, 0, "k", 50);
        assert!(!dirty(&store, &watch, 100), "alive up to its deadline");
        assert!(dirty(&store, &watch, 101), "isWatchedKeyExpired");
        assert_eq!(store.keys(), 1, "the check removes nothing");
    }

    #[test]
    fn a_key_already_expired_when_watched_is_watched_as_missing() {
        let store = new_store();
        put(&store, 0, "k", Expiry::At(100));
        let watch = watching(&store, 0, "k", 200);
        assert!(!dirty(&store, &watch, 200));
        // Its removal, however it happens, is no logical change (Redis 7.0, #10256)...
        assert!(store.lock(300).get(0, b"k").is_none());
        assert_eq!(store.expirations(), 1);
        assert!(!dirty(&store, &watch, 300));
        // ...but creating it again is.
        put(&store, 0, "k", Expiry::Persist);
        assert!(dirty(&store, &watch, 300));

        // FLUSHDB of an already expired key: no change either.
        put(&store, 0, "e", Expiry::At(100));
        let watch = watching(&store, 0, "e", 200);
        store.lock(200).flush_db(0);
        assert!(!dirty(&store, &watch, 200));
    }

    #[test]
    fn two_watchers_of_one_key_both_see_the_write() {
        let store = new_store();
        put(&store, 0, "k", Expiry::Persist);
        let a = watching(&store, 0, "k", 0);
        let mut b = watching(&store, 0, "k", 0);
        b.add(0, b"k2", 0);
        assert_eq!(sizes(&store), (2, 2));
        put(&store, 0, "k", Expiry::Persist);
        assert!(dirty(&store, &a, 0));
        assert!(dirty(&store, &b, 0));
        // Dirty watchers give their keys back at once; only their flags stay.
        assert_eq!(sizes(&store), (0, 2));
    }

    #[test]
    fn watching_a_key_twice_is_one_watch() {
        let store = new_store();
        let mut watch = watching(&store, 0, "k", 0);
        watch.add(0, b"k", 0);
        watch.add(1, b"k", 0);
        assert_eq!(sizes(&store), (2, 1));
    }

    #[test]
    fn unwatch_releases_every_entry_and_clears_the_flag() {
        let store = new_store();
        let mut a = watching(&store, 0, "k", 0);
        a.add(2, b"j", 0);
        let mut b = watching(&store, 0, "k", 0);
        let c = watching(&store, 0, "k", 0);
        assert_eq!(sizes(&store), (2, 3));

        a.unwatch();
        assert_eq!(sizes(&store), (1, 2), "b and c still watch k");
        store.lock(0).unwatch(&mut b);
        drop(c);
        assert_eq!(sizes(&store), (0, 0));

        // Released: later writes are not seen, and the watch starts clean when reused.
        put(&store, 0, "k", Expiry::Persist);
        assert!(!dirty(&store, &a, 0));
        a.add(0, b"k", 0);
        assert!(!dirty(&store, &a, 0));
        put(&store, 0, "k", Expiry::Persist);
        assert!(dirty(&store, &a, 0));
        a.unwatch();
        assert!(!dirty(&store, &a, 0));
        assert_eq!(sizes(&store), (0, 0));
    }

    #[test]
    fn watch_can_move_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Watch>();
    }

    #[test]
    fn a_watch_never_used_costs_nothing_in_the_store() {
        let store = new_store();
        let watch = Watch::new(Arc::clone(&store));
        put(&store, 0, "k", Expiry::Persist);
        assert!(!dirty(&store, &watch, 0));
        assert_eq!(sizes(&store), (0, 0));
    }
}
