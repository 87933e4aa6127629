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
    store.reconfigure(
        Layout::single(1 << 20),
        2,
        || (),
        None::<fn(u32, &[u8]) -> bool>,
    );
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
fn growth_evicts_others_never_itself_and_oversized_entries_are_refused() {
    let store = Store::new(room_for(2));
    put(&store, 0, "a", "1", 0);
    put(&store, 0, "b", "2", 0);
    // Replacing b with a longer value evicts a, the least recently used.
    put(&store, 0, "b", "22222", 0);
    assert_eq!(store.evictions(), 1);
    assert!(store.used_bytes() <= room_for(2));
    assert!(get(&store, 0, "a", 0).is_none());
    // Alone in the store, a key may grow up to the whole budget.
    store
        .lock(0)
        .update(0, b"b", |v| {
            if let Value::Str(s) = v {
                s.extend_from_slice(b"more")
            }
        })
        .unwrap();
    assert_eq!(store.evictions(), 1);
    assert_eq!(get(&store, 0, "b", 0), Some(s("22222more")));
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
