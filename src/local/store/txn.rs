//! The store locked for one command: lookups that expire lazily, writes that keep the byte
//! count, the LRU order and the indexes in step, and the keyspace walks (SCAN, KEYS,
//! RANDOMKEY, DBSIZE). The engine sees the store only through this.
//!
//! Every write here that changes something tells the key's watchers (Redis's
//! `signalModifiedKey`); one that changes nothing (no key, or clearing an absent deadline)
//! does not, so callers need not care.

use std::collections::BTreeSet;
use std::sync::MutexGuard;

use bytes::Bytes;
use smallvec::SmallVec;

use super::{
    entry_bytes, full_key, Entry, Eviction, Expiry, FullKey, Inner, Key, OutOfMemory, Removal,
    Value, Watch, DB_PREFIX,
};

/// For each of `keys`, whether no later one is the same key (MSET's last value wins): linear
/// for a few keys, hashed beyond, so that a command with many keys stays linear.
pub(crate) fn last_of_each<'k>(keys: impl ExactSizeIterator<Item = &'k [u8]> + Clone) -> Vec<bool> {
    let n = keys.len();
    if n <= 16 {
        let all: SmallVec<[&[u8]; 16]> = keys.collect();
        return (0..n).map(|i| !all[i + 1..].contains(&all[i])).collect();
    }
    let mut last: std::collections::HashMap<&[u8], usize> =
        std::collections::HashMap::with_capacity(n);
    for (i, key) in keys.clone().enumerate() {
        last.insert(key, i);
    }
    keys.enumerate().map(|(i, key)| last[key] == i).collect()
}

/// The store, locked for one command at one instant.
pub(crate) struct Txn<'a> {
    inner: MutexGuard<'a, Inner>,
    now: u64,
    /// Keys that lookups found expired, removed when the lock is released (see [`Txn::get`]).
    expired: Vec<FullKey>,
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        let now = self.now;
        for full in std::mem::take(&mut self.expired) {
            // Only if still expired: a later write in this hold may have replaced the key.
            self.inner.expire_if_needed(&full, now);
        }
    }
}

impl<'a> Txn<'a> {
    pub(super) fn new(inner: MutexGuard<'a, Inner>, now: u64) -> Txn<'a> {
        Txn {
            inner,
            now,
            expired: Vec::new(),
        }
    }

    /// The command's time: unix milliseconds.
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Whether `key` in `db` may come to hold `value_bytes` (see [`Txn::check_writes`]).
    pub(crate) fn check_fits(
        &mut self,
        db: u32,
        key: &[u8],
        value_bytes: usize,
    ) -> Result<(), OutOfMemory> {
        self.check_writes(db, &[(key, value_bytes)], &[])
    }

    /// [`Txn::check_fits`] for the db-prefixed key `full` of part `p`, both already found:
    /// one classification per write on the common path (an evicting part).
    fn check_one(&mut self, p: usize, full: &[u8], value_bytes: usize) -> Result<(), OutOfMemory> {
        let budget = self.inner.parts[p].budget;
        if entry_bytes(full.len() - DB_PREFIX, value_bytes) > budget.max_bytes {
            self.inner.parts[p].refusals += 1;
            return Err(OutOfMemory);
        }
        if budget.eviction == Eviction::NoEviction {
            let db = super::db_of(full);
            return self.check_writes(db, &[(&full[DB_PREFIX..], value_bytes)], &[]);
        }
        Ok(())
    }

    /// Checks, before a command writes anything, that its writes fit: each key of `writes`
    /// in `db` coming to hold that many value bytes (a key listed twice: the last counts) and
    /// each key of `removes` deleted. Refused when an entry alone exceeds its keyspace's
    /// budget, or when a `noeviction` keyspace would end above its budget once expired keys
    /// are gone; an `lru` keyspace makes room as the writes are made. A refusal is counted
    /// once, in the first keyspace that refuses.
    pub(crate) fn check_writes(
        &mut self,
        db: u32,
        writes: &[(&[u8], usize)],
        removes: &[&[u8]],
    ) -> Result<(), OutOfMemory> {
        let now = self.now;
        let inner = &mut *self.inner;
        // Growth per part, signed; parts are few.
        let mut growth: SmallVec<[(usize, isize); 4]> = SmallVec::new();
        let mut add = |p: usize, bytes: isize| match growth.iter_mut().find(|(q, _)| *q == p) {
            Some((_, g)) => *g += bytes,
            None => growth.push((p, bytes)),
        };
        let live_bytes = |inner: &mut Inner, full: &[u8]| {
            if inner.expire_if_needed(full, now) {
                0
            } else {
                inner.peek_full(full).map_or(0, |e| e.bytes(full))
            }
        };
        let last = last_of_each(writes.iter().map(|(k, _)| *k));
        for (i, &(key, value_bytes)) in writes.iter().enumerate() {
            if !last[i] {
                continue;
            }
            let full = full_key(db, key);
            let p = inner.part(&full);
            let new = entry_bytes(key.len(), value_bytes);
            let budget = inner.parts[p].budget;
            if new > budget.max_bytes {
                inner.parts[p].refusals += 1;
                return Err(OutOfMemory);
            }
            if budget.eviction != Eviction::NoEviction {
                // An evicting part makes room as it is written.
                continue;
            }
            let old = live_bytes(inner, &full);
            add(p, new as isize - old as isize);
        }
        for key in removes {
            if writes.iter().any(|(k, _)| k == key) {
                continue;
            }
            let full = full_key(db, key);
            let p = inner.part(&full);
            if inner.parts[p].budget.eviction == Eviction::NoEviction {
                let old = live_bytes(inner, &full);
                add(p, -(old as isize));
            }
        }
        for &(p, g) in &growth {
            if g <= 0 {
                continue;
            }
            let fits = |inner: &Inner| {
                let part = &inner.parts[p];
                part.used.saturating_add_signed(g) <= part.budget.max_bytes
            };
            if fits(inner) {
                continue;
            }
            // Expired keys go first, as Redis's eviction takes them before refusing.
            inner.expire_some(now, usize::MAX);
            if !fits(inner) {
                inner.parts[p].refusals += 1;
                return Err(OutOfMemory);
            }
        }
        Ok(())
    }

    /// The live entry under `key`, counted as a use (moves to the front of the LRU).
    ///
    /// One map lookup: an expired entry found here is invisible at once and removed when the
    /// lock is released (every other path checks deadlines itself, so nothing in between can
    /// see it), which keeps the common read to a single hash probe.
    pub(crate) fn get(&mut self, db: u32, key: &[u8]) -> Option<&Entry> {
        let full = full_key(db, key);
        let now = self.now;
        let p = self.inner.part(&full);
        let entry = self.inner.parts[p].lru.get(&full[..])?;
        if entry.expire_at().is_some_and(|at| now > at) {
            self.expired.push(full);
            return None;
        }
        Some(entry)
    }

    /// The live entry under `key`, without counting a use (Redis's `LOOKUP_NOTOUCH`); one map
    /// lookup, as [`Txn::get`].
    pub(crate) fn peek(&mut self, db: u32, key: &[u8]) -> Option<&Entry> {
        let full = full_key(db, key);
        let now = self.now;
        let entry = self.inner.peek_full(&full[..])?;
        if entry.expire_at().is_some_and(|at| now > at) {
            self.expired.push(full);
            return None;
        }
        Some(entry)
    }

    /// True when a live key exists (no use counted).
    pub(crate) fn exists(&mut self, db: u32, key: &[u8]) -> bool {
        self.peek(db, key).is_some()
    }

    /// Changes the value of a live key in place, counting a use; `None` when there is no such
    /// key. A change that grows the key must have been checked with [`Txn::check_fits`]; an
    /// `lru` keyspace then evicts its least recently used other keys until it fits.
    pub(crate) fn update<R>(
        &mut self,
        db: u32,
        key: &[u8],
        f: impl FnOnce(&mut Value) -> R,
    ) -> Option<R> {
        let full = full_key(db, key);
        let now = self.now;
        if self.inner.expire_if_needed(&full, now) {
            return None;
        }
        let inner = &mut *self.inner;
        let p = inner.part(&full);
        let entry = inner.parts[p].lru.get_mut(&full[..])?;
        let before = entry.value.bytes();
        let result = f(&mut entry.value);
        let after = entry.value.bytes();
        inner.used = inner.used - before + after;
        inner.parts[p].used = inner.parts[p].used - before + after;
        // Whatever `f` did counts as a change, as every Redis command that gets this far
        // signals (APPEND of "", HSET of the same value...).
        inner.signal_modified(&full, false);
        if after > before {
            inner.make_room(p, 0, now, Some(&full));
        }
        Some(result)
    }

    /// Writes `value` under `key`, held to its keyspace's budget (see [`Txn::check_writes`]):
    /// room is made first for a new key, after the write for a replaced one that grew.
    pub(crate) fn insert(
        &mut self,
        db: u32,
        key: &[u8],
        value: Value,
        expiry: Expiry,
    ) -> Result<(), OutOfMemory> {
        let full = full_key(db, key);
        let p = self.inner.part(&full);
        self.check_one(p, &full, value.bytes())?;
        self.put(&full, p, key, value, expiry);
        Ok(())
    }

    /// [`Txn::insert`] of a write [`Txn::check_writes`] has passed with the others of its
    /// command: checking it again alone, after some of them are written, could refuse it
    /// and leave the command half done.
    pub(crate) fn insert_checked(&mut self, db: u32, key: &[u8], value: Value, expiry: Expiry) {
        let full = full_key(db, key);
        let p = self.inner.part(&full);
        self.put(&full, p, key, value, expiry);
    }

    /// Writes `value` under the db-prefixed `full` (key `key`, part `p`), making room as the
    /// part's eviction says; the caller has checked that it may.
    fn put(&mut self, full: &[u8], p: usize, key: &[u8], value: Value, expiry: Expiry) {
        let db = super::db_of(full);
        let now = self.now;
        let inner = &mut *self.inner;
        // A live key is replaced in place, found with one lookup.
        if let Some((stored, entry)) = inner.parts[p].lru.get_key_value_mut(full) {
            if entry.expire_at().is_none_or(|at| now <= at) {
                let before = entry.value.bytes();
                let after = value.bytes();
                entry.value = value;
                let old = entry.expire_at();
                let new = match expiry {
                    Expiry::Keep => old,
                    Expiry::Persist => None,
                    Expiry::At(at) => Some(at),
                };
                entry.set_expire_at(new);
                let new = entry.expire_at();
                let stored = (old != new).then(|| stored.clone());
                inner.used = inner.used - before + after;
                inner.parts[p].used = inner.parts[p].used - before + after;
                if let Some(stored) = stored {
                    inner.set_deadline(&stored, old, new);
                }
                inner.signal_modified(full, false);
                if after > before {
                    inner.make_room(p, 0, now, Some(full));
                }
                return;
            }
        }
        inner.expire_if_needed(full, now);
        let entry = Entry::new(
            value,
            match expiry {
                Expiry::At(at) => Some(at),
                Expiry::Keep | Expiry::Persist => None,
            },
        );
        let bytes = entry.bytes(full);
        inner.make_room(p, bytes, now, None);
        let stored = Key::new(full);
        let hash = inner.scan_hash(key);
        inner
            .dbs
            .entry((db, p))
            .or_default()
            .insert((hash, stored.clone()));
        if let Some(at) = entry.expire_at() {
            inner.deadlines.insert((at, stored.clone()));
        }
        inner.used += bytes;
        inner.parts[p].used += bytes;
        inner.parts[p].lru.push(stored, entry);
        inner.signal_modified(full, false);
    }

    /// Deletes a live key and returns it.
    pub(crate) fn remove(&mut self, db: u32, key: &[u8]) -> Option<Entry> {
        let full = full_key(db, key);
        let now = self.now;
        if self.inner.expire_if_needed(&full, now) {
            return None;
        }
        self.inner.remove_full(&full, Removal::Deleted)
    }

    /// Sets or clears the deadline of a live key; returns the previous one. No-op without a
    /// live key. Setting a deadline is a change even when it is the same one (EXPIRE always
    /// signals in Redis); clearing an absent one is not (PERSIST, GETEX PERSIST signal only
    /// when `removeExpire` removed something).
    pub(crate) fn set_expire(&mut self, db: u32, key: &[u8], at: Option<u64>) -> Option<u64> {
        let full = full_key(db, key);
        let now = self.now;
        if self.inner.expire_if_needed(&full, now) {
            return None;
        }
        let inner = &mut *self.inner;
        let p = inner.part(&full);
        let entry = inner.parts[p].lru.peek_mut(&full[..])?;
        let old = entry.set_expire_at(at);
        let at = entry.expire_at();
        if old != at {
            inner.set_deadline(&Key::new(&full), old, at);
        }
        if at.is_some() || old.is_some() {
            inner.signal_modified(&full, false);
        }
        old
    }

    /// Live keys in `db` of the keyspaces keyless commands see (expired ones are removed
    /// first).
    pub(crate) fn dbsize(&mut self, db: u32) -> usize {
        let now = self.now;
        self.inner.expire_some(now, usize::MAX);
        let inner = &*self.inner;
        inner
            .keyless_parts()
            .filter_map(|p| inner.dbs.get(&(db, p)))
            .map(BTreeSet::len)
            .sum()
    }

    /// Deletes every key of `db` in the keyspaces keyless commands see. Each key removed is a
    /// change to its watchers, as in Redis's `touchAllWatchedKeysInDb`; a watched key that did
    /// not exist is not.
    pub(crate) fn flush_db(&mut self, db: u32) {
        let parts: Vec<usize> = self.inner.keyless_parts().collect();
        for p in parts {
            let Some(index) = self.inner.dbs.remove(&(db, p)) else {
                continue;
            };
            let inner = &mut *self.inner;
            for (_, full) in index {
                if let Some(entry) = inner.parts[p].lru.pop(&full[..]) {
                    let bytes = entry.bytes(&full);
                    inner.used -= bytes;
                    inner.parts[p].used -= bytes;
                    inner.signal_modified(&full, true);
                    if let Some(at) = entry.expire_at() {
                        inner.deadlines.remove(&(at, full));
                    }
                }
            }
        }
    }

    /// EXEC's check, made under the lock the transaction then runs with: true when a key of
    /// `watch` was changed since it was watched, or was live then and is expired now.
    pub(crate) fn watch_dirty(&self, watch: &Watch) -> bool {
        self.inner.watch_dirty(watch, self.now)
    }

    /// Releases `watch` under this lock (EXEC does so whether it runs or aborts); the same as
    /// [`Watch::unwatch`], which would deadlock here.
    pub(crate) fn unwatch(&mut self, watch: &mut Watch) {
        watch.release(&mut self.inner);
    }

    /// One SCAN step over `db` from `cursor`, in the keyspaces keyless commands see: about
    /// `count` keys (more when hashes tie) and the next cursor, 0 at the end. Keys may have
    /// expired: callers check each with [`Txn::peek`].
    ///
    /// Each part keeps its keys in hash order, so a step merges the parts' runs from
    /// `cursor`: up to `count` keys and their ties from each, and the key after them (where
    /// the next step would start), then the lowest `count` (with ties) of all of them.
    pub(crate) fn scan(&mut self, db: u32, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
        let count = count.max(1);
        let inner = &*self.inner;
        let mut found: Vec<(u64, &Key)> = Vec::new();
        for p in inner.keyless_parts() {
            let Some(index) = inner.dbs.get(&(db, p)) else {
                continue;
            };
            let mut last_hash = None;
            for (taken, (hash, full)) in index.range((cursor, Key::empty())..).enumerate() {
                let beyond = taken >= count && last_hash != Some(*hash);
                found.push((*hash, full));
                if beyond {
                    break;
                }
                last_hash = Some(*hash);
            }
        }
        found.sort_unstable_by_key(|&(hash, _)| hash);
        let mut keys = Vec::new();
        let mut last_hash = None;
        for (hash, full) in found {
            if keys.len() >= count && last_hash != Some(hash) {
                return (hash, keys);
            }
            keys.push(full.slice_from(DB_PREFIX));
            last_hash = Some(hash);
        }
        (0, keys)
    }

    /// Every live key of `db` for which `pred` holds, in the keyspaces keyless commands see
    /// (KEYS).
    pub(crate) fn keys_where(&self, db: u32, pred: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
        let inner = &*self.inner;
        inner
            .keyless_parts()
            .filter_map(|p| inner.dbs.get(&(db, p)))
            .flatten()
            .filter(|(_, full)| pred(&full[DB_PREFIX..]))
            .filter(|(_, full)| {
                inner
                    .peek_full(&full[..])
                    .is_some_and(|e| e.expire_at().is_none_or(|at| self.now <= at))
            })
            .map(|(_, full)| full.slice_from(DB_PREFIX))
            .collect()
    }

    /// A random live key of `db` in the keyspaces keyless commands see, each part chosen in
    /// proportion to its keys (expired keys met on the way are removed).
    pub(crate) fn random_key(&mut self, db: u32) -> Option<Bytes> {
        loop {
            let inner = &*self.inner;
            let sizes: SmallVec<[(usize, usize); 4]> = inner
                .keyless_parts()
                .filter_map(|p| inner.dbs.get(&(db, p)).map(|index| (p, index.len())))
                .collect();
            let total: usize = sizes.iter().map(|&(_, n)| n).sum();
            if total == 0 {
                return None;
            }
            let r = self.inner.next_random();
            let mut pick = (r % total as u64) as usize;
            let p = sizes
                .iter()
                .find(|&&(_, n)| {
                    let here = pick < n;
                    if !here {
                        pick -= n;
                    }
                    here
                })
                .map_or(sizes[0].0, |&(p, _)| p);
            let r = self.inner.next_random();
            let index = self.inner.dbs.get(&(db, p))?;
            let (_, full) = index
                .range((r, Key::empty())..)
                .next()
                .or_else(|| index.iter().next())?;
            let full = full.clone();
            let now = self.now;
            if !self.inner.expire_if_needed(&full, now) {
                return Some(full.slice_from(DB_PREFIX));
            }
        }
    }
}
