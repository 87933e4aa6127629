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

use super::{
    entry_bytes, full_key, Entry, Expiry, FullKey, Inner, Key, OutOfMemory, Removal, Value, Watch,
    DB_PREFIX,
};

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

    /// Refuses an entry that alone would exceed the budget.
    pub(crate) fn check_fits(&self, key_len: usize, value_bytes: usize) -> Result<(), OutOfMemory> {
        if entry_bytes(key_len, value_bytes) > self.inner.max_bytes {
            Err(OutOfMemory)
        } else {
            Ok(())
        }
    }

    /// The live entry under `key`, counted as a use (moves to the front of the LRU).
    ///
    /// One map lookup: an expired entry found here is invisible at once and removed when the
    /// lock is released (every other path checks deadlines itself, so nothing in between can
    /// see it), which keeps the common read to a single hash probe.
    pub(crate) fn get(&mut self, db: u32, key: &[u8]) -> Option<&Entry> {
        let full = full_key(db, key);
        let now = self.now;
        let entry = self.inner.lru.get(&full[..])?;
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
        let entry = self.inner.lru.peek(&full[..])?;
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
    /// key. Never evicts; the caller has checked with [`Txn::check_fits`] that the result fits.
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
        let entry = inner.lru.get_mut(&full[..])?;
        let before = entry.value.bytes();
        let result = f(&mut entry.value);
        let after = entry.value.bytes();
        inner.used = inner.used - before + after;
        // Whatever `f` did counts as a change, as every Redis command that gets this far
        // signals (APPEND of "", HSET of the same value...).
        inner.signal_modified(&full, false);
        Some(result)
    }

    /// Writes `value` under `key`. A new key makes room first (expired, then least recently
    /// used keys); an existing one is replaced without evicting anything.
    pub(crate) fn insert(
        &mut self,
        db: u32,
        key: &[u8],
        value: Value,
        expiry: Expiry,
    ) -> Result<(), OutOfMemory> {
        self.check_fits(key.len(), value.bytes())?;
        let full = full_key(db, key);
        let now = self.now;
        let inner = &mut *self.inner;
        // A live key is replaced in place, found with one lookup.
        if let Some((stored, entry)) = inner.lru.get_key_value_mut(&full[..]) {
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
                inner.used = inner.used - before + after;
                if old != new {
                    let stored = stored.clone();
                    inner.set_deadline(&stored, old, new);
                }
                inner.signal_modified(&full, false);
                return Ok(());
            }
        }
        inner.expire_if_needed(&full, now);
        let entry = Entry::new(
            value,
            match expiry {
                Expiry::At(at) => Some(at),
                Expiry::Keep | Expiry::Persist => None,
            },
        );
        let bytes = entry.bytes(&full);
        inner.make_room(bytes, now);
        let stored = Key::new(&full);
        let hash = inner.scan_hash(key);
        inner
            .dbs
            .entry(db)
            .or_default()
            .insert((hash, stored.clone()));
        if let Some(at) = entry.expire_at() {
            inner.deadlines.insert((at, stored.clone()));
        }
        inner.used += bytes;
        inner.lru.push(stored, entry);
        inner.signal_modified(&full, false);
        Ok(())
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
        let entry = inner.lru.peek_mut(&full[..])?;
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

    /// Live keys in `db` (expired ones are removed first).
    pub(crate) fn dbsize(&mut self, db: u32) -> usize {
        let now = self.now;
        self.inner.expire_some(now, usize::MAX);
        self.inner.dbs.get(&db).map_or(0, BTreeSet::len)
    }

    /// Deletes every key of `db`. Each key removed is a change to its watchers, as in Redis's
    /// `touchAllWatchedKeysInDb`; a watched key that did not exist is not.
    pub(crate) fn flush_db(&mut self, db: u32) {
        let Some(index) = self.inner.dbs.remove(&db) else {
            return;
        };
        for (_, full) in index {
            if let Some(entry) = self.inner.lru.pop(&full[..]) {
                self.inner.used -= entry.bytes(&full);
                self.inner.signal_modified(&full, true);
                if let Some(at) = entry.expire_at() {
                    self.inner.deadlines.remove(&(at, full));
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

    /// One SCAN step over `db` from `cursor`: about `count` keys (more when hashes tie) and
    /// the next cursor, 0 at the end. Keys may have expired: callers check each with
    /// [`Txn::peek`].
    pub(crate) fn scan(&mut self, db: u32, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
        let Some(index) = self.inner.dbs.get(&db) else {
            return (0, Vec::new());
        };
        let mut keys = Vec::new();
        let mut last_hash = None;
        for (hash, full) in index.range((cursor, Key::empty())..) {
            if keys.len() >= count.max(1) && last_hash != Some(*hash) {
                return (*hash, keys);
            }
            keys.push(full.slice_from(DB_PREFIX));
            last_hash = Some(*hash);
        }
        (0, keys)
    }

    /// Every live key of `db` for which `pred` holds (KEYS).
    pub(crate) fn keys_where(&self, db: u32, pred: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
        let Some(index) = self.inner.dbs.get(&db) else {
            return Vec::new();
        };
        index
            .iter()
            .filter(|(_, full)| pred(&full[DB_PREFIX..]))
            .filter(|(_, full)| {
                self.inner
                    .lru
                    .peek(&full[..])
                    .is_some_and(|e| e.expire_at().is_none_or(|at| self.now <= at))
            })
            .map(|(_, full)| full.slice_from(DB_PREFIX))
            .collect()
    }

    /// A random live key of `db` (expired keys met on the way are removed).
    pub(crate) fn random_key(&mut self, db: u32) -> Option<Bytes> {
        loop {
            let r = self.inner.next_random();
            let index = self.inner.dbs.get(&db)?;
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
