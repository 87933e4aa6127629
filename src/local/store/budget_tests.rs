//! Keyspaces as tenants of the store: each part is held to its own budget on every write path,
//! evicts only its own keys or refuses with -OOM, and keyless commands see only the keyspaces
//! of the mode that routed them. Run through the engine, as clients reach the store.

use super::*;
use crate::local::engine::execute;
use crate::policy::keyspace::{Keyspace, Pattern};
use crate::protocol::request::Request;

const NOW: u64 = 1_000_000;

fn keyspace(name: &str, pattern: &str, mode: Mode) -> Keyspace {
    Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(pattern.as_bytes())],
        mode,
    }
}

fn share(name: &str, max_bytes: Option<usize>, eviction: Eviction) -> StoreShare {
    StoreShare {
        name: name.into(),
        max_bytes,
        eviction,
    }
}

fn run(store: &Store, args: &[&str]) -> String {
    let reply = execute(store, 0, &Request::from_args(args), NOW);
    String::from_utf8_lossy(&reply).into_owned()
}

const OOM: &str = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";

/// `nonce:` refuses when full, `tmp:` evicts, both local_only; the default keyspace is
/// `default_mode`.
fn tenants(nonce_room: usize, default_mode: Mode) -> Store {
    let keyspaces = Keyspaces::new(
        vec![
            keyspace("nonces", "nonce:", Mode::LocalOnly),
            keyspace("scratch", "tmp:", Mode::LocalOnly),
        ],
        default_mode,
    );
    let shares = [
        share("nonces", Some(nonce_room), Eviction::NoEviction),
        share("scratch", Some(64 * 1024), Eviction::Lru),
    ];
    let store = Store::with_layout(Layout::new(&keyspaces, 1 << 20, &shares));
    store.check_invariants();
    store
}

fn part<'a>(stats: &'a [PartStats], name: &str) -> &'a PartStats {
    stats.iter().find(|p| p.keyspace == name).unwrap()
}

#[test]
fn budgets_are_per_keyspace_and_the_rest_is_shared() {
    let keyspaces = Keyspaces::new(
        vec![
            keyspace("limits", "rl:", Mode::FailClosed),
            keyspace("nonces", "nonce:", Mode::Degraded),
            keyspace("cache", "cache:", Mode::Degraded),
            keyspace("scratch", "tmp:", Mode::LocalOnly),
        ],
        Mode::Degraded,
    );
    let shares = [share("nonces", Some(1000), Eviction::NoEviction)];
    let budgets = keyspaces.budgets(10_000, &shares);
    let got: Vec<(usize, Eviction)> = budgets.iter().map(|b| (b.max_bytes, b.eviction)).collect();
    // fail_closed gets nothing; cache, scratch and default share 9000.
    assert_eq!(
        got,
        [
            (0, Eviction::Lru),
            (1000, Eviction::NoEviction),
            (3000, Eviction::Lru),
            (3000, Eviction::Lru),
            (3000, Eviction::Lru),
        ]
    );
}

#[test]
fn a_flood_in_one_keyspace_never_evicts_another_keyspaces_nonce() {
    let store = tenants(entry_bytes(7, 1) * 2, Mode::FailClosed);
    assert_eq!(
        run(&store, &["SET", "nonce:a", "1", "NX", "EX", "300"]),
        "+OK\r\n"
    );
    for i in 0..2000 {
        run(&store, &["SET", &format!("tmp:{i}"), "some scratch value"]);
    }
    let stats = store.part_stats();
    assert!(part(&stats, "scratch").evictions > 1000, "{stats:?}");
    assert!(part(&stats, "scratch").used_bytes <= 64 * 1024, "{stats:?}");
    // The nonce is still known: a replay is refused.
    assert_eq!(
        run(&store, &["SET", "nonce:a", "1", "NX", "EX", "300"]),
        "$-1\r\n"
    );
    assert_eq!(part(&stats, "nonces").evictions, 0);
    // The second nonce fits; a third would need an eviction, so it is refused with -OOM.
    assert_eq!(
        run(&store, &["SET", "nonce:b", "1", "NX", "EX", "300"]),
        "+OK\r\n"
    );
    assert_eq!(
        run(&store, &["SET", "nonce:c", "1", "NX", "EX", "300"]),
        OOM
    );
    let stats = store.part_stats();
    assert_eq!(part(&stats, "nonces").refusals, 1);
    assert_eq!(part(&stats, "nonces").keys, 2);
    // Deleting one makes room again; an expired one does too.
    assert_eq!(run(&store, &["DEL", "nonce:b"]), ":1\r\n");
    assert_eq!(run(&store, &["SET", "nonce:c", "1", "PX", "1"]), "+OK\r\n");
    let later = execute(
        &store,
        0,
        &Request::from_args(&["SET", "nonce:d", "1"]),
        NOW + 10,
    );
    assert_eq!(&later[..], b"+OK\r\n");
    store.check_invariants();
}

#[test]
fn growing_a_key_is_held_to_its_keyspaces_budget() {
    let store = tenants(entry_bytes(7, 100) + 50, Mode::FailClosed);
    // noeviction: a growth past the budget is refused and changes nothing.
    assert_eq!(run(&store, &["SET", "nonce:a", "x"]), "+OK\r\n");
    assert_eq!(run(&store, &["SETRANGE", "nonce:a", "99", "y"]), ":100\r\n");
    for grow in [
        vec!["SETRANGE", "nonce:a", "200", "y"],
        vec!["APPEND", "nonce:a", &"z".repeat(100)],
        vec!["SET", "nonce:a", &"z".repeat(200)],
    ] {
        assert_eq!(run(&store, &grow), OOM, "{grow:?}");
    }
    assert_eq!(run(&store, &["STRLEN", "nonce:a"]), ":100\r\n");
    assert_eq!(run(&store, &["HSET", "nonce:h", "f", "v"]), OOM);
    // lru: a growth evicts the keyspace's least recently used other keys, never the key
    // written, and the keyspace stays within its budget.
    for i in 0..40 {
        run(&store, &["SET", &format!("tmp:{i}"), &"v".repeat(1000)]);
    }
    let budget = 64 * 1024;
    for (i, grow) in [
        vec!["SETRANGE", "tmp:39", "30000", "y"],
        vec!["APPEND", "tmp:38", &"z".repeat(30_000)],
        vec!["HSET", "tmp:h", "f", &"v".repeat(20_000)],
        vec!["HSET", "tmp:h", "g", &"v".repeat(20_000)],
    ]
    .iter()
    .enumerate()
    {
        run(&store, grow);
        let stats = store.part_stats();
        let used = part(&stats, "scratch").used_bytes;
        assert!(used <= budget, "step {i}: {used} > {budget}");
        assert_eq!(run(&store, &["EXISTS", grow[1]]), ":1\r\n", "step {i}");
    }
    assert_eq!(run(&store, &["EXISTS", "tmp:0"]), ":0\r\n");
    assert_eq!(run(&store, &["STRLEN", "nonce:a"]), ":100\r\n");
    store.check_invariants();
}

#[test]
fn a_multi_key_write_to_a_full_noeviction_keyspace_is_all_or_nothing() {
    let store = tenants(entry_bytes(7, 1) * 3, Mode::FailClosed);
    assert_eq!(run(&store, &["SET", "nonce:a", "1"]), "+OK\r\n");
    assert_eq!(
        run(
            &store,
            &["MSET", "nonce:b", "1", "nonce:c", "1", "nonce:d", "1"]
        ),
        OOM
    );
    assert_eq!(run(&store, &["EXISTS", "nonce:b", "nonce:c"]), ":0\r\n");
    // The same key twice counts once.
    assert_eq!(
        run(
            &store,
            &["MSET", "nonce:b", "1", "nonce:b", "2", "nonce:c", "1"]
        ),
        "+OK\r\n"
    );
    // RENAME within the keyspace frees what it moves.
    assert_eq!(run(&store, &["RENAME", "nonce:c", "nonce:e"]), "+OK\r\n");
    // COPY into the full keyspace is refused and leaves the source.
    assert_eq!(run(&store, &["SET", "tmp:x", "1"]), "+OK\r\n");
    assert_eq!(run(&store, &["COPY", "tmp:x", "nonce:f"]), OOM);
    assert_eq!(run(&store, &["RENAME", "tmp:x", "nonce:f"]), OOM);
    assert_eq!(run(&store, &["EXISTS", "tmp:x"]), ":1\r\n");
    // Shrinking writes and deletes always pass.
    assert_eq!(run(&store, &["SET", "nonce:a", ""]), "+OK\r\n");
    store.check_invariants();
}

#[test]
fn keyless_commands_act_only_on_the_keyspaces_of_their_mode() {
    // Default degraded (an outage routes FLUSHDB & co. here); "nonce:" and "tmp:" are
    // local_only, which a FLUSHDB while healthy would never reach.
    let store = tenants(64 * 1024, Mode::Degraded);
    for key in ["nonce:a", "tmp:b", "plain:c", "plain:d"] {
        assert_eq!(run(&store, &["SET", key, "1"]), "+OK\r\n");
    }
    assert_eq!(run(&store, &["DBSIZE"]), ":2\r\n");
    let keys = run(&store, &["KEYS", "*"]);
    assert!(!keys.contains("nonce:") && !keys.contains("tmp:"), "{keys}");
    assert!(keys.starts_with("*2\r\n"), "{keys}");
    let scan = run(&store, &["SCAN", "0", "COUNT", "1000"]);
    assert!(
        !scan.contains("nonce:") && scan.contains("plain:c"),
        "{scan}"
    );
    for _ in 0..50 {
        let key = run(&store, &["RANDOMKEY"]);
        assert!(key.contains("plain:"), "{key}");
    }
    assert_eq!(run(&store, &["FLUSHDB"]), "+OK\r\n");
    assert_eq!(run(&store, &["EXISTS", "nonce:a", "tmp:b"]), ":2\r\n");
    assert_eq!(run(&store, &["EXISTS", "plain:c"]), ":0\r\n");
    assert_eq!(run(&store, &["RANDOMKEY"]), "$-1\r\n");
    store.check_invariants();

    // Default local_only: keyless commands see the local_only keyspaces, not degraded ones.
    let keyspaces = Keyspaces::new(
        vec![keyspace("cache", "cache:", Mode::Degraded)],
        Mode::LocalOnly,
    );
    let store = Store::with_layout(Layout::new(&keyspaces, 1 << 20, &[]));
    run(&store, &["SET", "cache:a", "1"]);
    run(&store, &["SET", "b", "1"]);
    assert_eq!(run(&store, &["DBSIZE"]), ":1\r\n");
    assert_eq!(run(&store, &["FLUSHDB"]), "+OK\r\n");
    assert_eq!(run(&store, &["EXISTS", "cache:a"]), ":1\r\n");
}

#[test]
fn scan_over_several_keyspaces_returns_every_key_once() {
    let keyspaces = Keyspaces::new(
        vec![
            keyspace("a", "a:", Mode::Degraded),
            keyspace("b", "b:", Mode::Degraded),
        ],
        Mode::Degraded,
    );
    let store = Store::with_layout(Layout::new(&keyspaces, 1 << 22, &[]));
    let mut want = std::collections::BTreeSet::new();
    for i in 0..300 {
        let key = format!("{}:{i}", ["a", "b", "c"][i % 3]);
        run(&store, &["SET", &key, "1"]);
        want.insert(key);
    }
    let mut got = std::collections::BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys) = store.lock(NOW).scan(0, cursor, 7);
        assert!(keys.len() >= 7 || next == 0);
        for key in keys {
            assert!(got.insert(String::from_utf8(key.to_vec()).unwrap()));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(got, want);
}

#[test]
fn a_reload_moves_keys_to_their_new_keyspace() {
    let store = tenants(64 * 1024, Mode::LocalOnly);
    for i in 0..100 {
        run(&store, &["SET", &format!("tmp:{i}"), "1"]);
        run(&store, &["SET", &format!("x:{i}"), "1"]);
    }
    let keyspaces = Keyspaces::new(vec![keyspace("x", "x:", Mode::LocalOnly)], Mode::LocalOnly);
    // "x" gets a budget for about 50 keys and evicts the rest at once.
    let shares = [share("x", Some(entry_bytes(4, 1) * 50), Eviction::Lru)];
    store.reconfigure(
        Layout::new(&keyspaces, 1 << 20, &shares),
        2,
        || (),
        None::<fn(u32, &[u8]) -> bool>,
    );
    store.check_invariants();
    let stats = store.part_stats();
    assert_eq!(part(&stats, "x").keys, 50, "{stats:?}");
    assert_eq!(part(&stats, "default").keys, 100, "{stats:?}");
    // The most recently written x: keys are the ones kept.
    assert_eq!(run(&store, &["EXISTS", "x:99", "x:50", "x:49"]), ":2\r\n");
}

/// Random commands of every write path over three keyspaces with small budgets: after each
/// one, every part is within its budget and the bookkeeping is exact.
#[test]
fn every_write_path_stays_within_each_keyspaces_budget() {
    let keyspaces = Keyspaces::new(
        vec![
            keyspace("n", "n:", Mode::LocalOnly),
            keyspace("t", "t:", Mode::LocalOnly),
        ],
        Mode::LocalOnly,
    );
    let shares = [
        share("n", Some(4000), Eviction::NoEviction),
        share("t", Some(3000), Eviction::Lru),
    ];
    let store = Store::with_layout(Layout::new(&keyspaces, 10_000, &shares));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let keys = ["n:a", "n:b", "n:c", "t:a", "t:b", "t:c", "d:a", "d:b"];
    let mut now = NOW;
    for step in 0..20_000 {
        now += next(3) as u64;
        let k = keys[next(keys.len())];
        let k2 = keys[next(keys.len())];
        let v = "v".repeat([0, 1, 10, 100, 500, 1500][next(6)]);
        let n = next(400).to_string();
        let args: Vec<&str> = match next(14) {
            0 => vec!["SET", k, &v],
            1 => vec!["APPEND", k, &v],
            2 => vec!["SETRANGE", k, &n, &v],
            3 => vec!["HSET", k, &n, &v],
            4 => vec!["INCR", k],
            5 => vec!["MSET", k, &v, k2, &v],
            6 => vec!["RENAME", k, k2],
            7 => vec!["COPY", k, k2, "REPLACE"],
            8 => vec!["DEL", k],
            9 => vec!["SET", k, &v, "PX", "2"],
            10 => vec!["GETSET", k, &v],
            11 => vec!["HINCRBYFLOAT", k, &n, "1.5"],
            12 => vec!["INCRBYFLOAT", k, "1e10"],
            _ => vec!["HDEL", k, &n],
        };
        execute(&store, 0, &Request::from_args(&args), now);
        for part in store.part_stats() {
            assert!(
                part.used_bytes <= part.max_bytes,
                "step {step} {args:?}: {part:?}"
            );
        }
        if step % 500 == 0 {
            store.check_invariants();
        }
    }
    store.check_invariants();
    let stats = store.part_stats();
    assert!(part(&stats, "n").refusals > 0, "{stats:?}");
    assert!(part(&stats, "t").evictions > 0, "{stats:?}");
}

/// Found in review: MSET was checked as a whole, then each key again alone as it was written,
/// so a command whose end state fits could be refused half way, with its first keys written.
#[test]
fn a_multi_key_write_that_fits_as_a_whole_is_never_refused_half_way() {
    let store = tenants(
        entry_bytes(8, 300) + entry_bytes(7, 1) + entry_bytes(8, 200) + 50,
        Mode::FailClosed,
    );
    let big = "x".repeat(300);
    let mid = "y".repeat(200);
    assert_eq!(run(&store, &["SET", "nonce:k1", &big]), "+OK\r\n");
    // k1 shrinks at the end of the command, making room for the other two.
    assert_eq!(
        run(
            &store,
            &["MSET", "nonce:a", "1", "nonce:k2", &mid, "nonce:k1", ""]
        ),
        "+OK\r\n"
    );
    assert_eq!(run(&store, &["STRLEN", "nonce:k1"]), ":0\r\n");
    // A key given twice counts once, with its last value.
    let store = tenants(entry_bytes(7, 600) + 100, Mode::FailClosed);
    let six = "z".repeat(600);
    assert_eq!(
        run(
            &store,
            &["MSET", "nonce:a", "1", "nonce:k", &six, "nonce:k", "1"]
        ),
        "+OK\r\n"
    );
    assert_eq!(run(&store, &["GET", "nonce:k"]), "$1\r\n1\r\n");
    // And a whole that does not fit writes nothing.
    assert_eq!(
        run(&store, &["MSET", "nonce:b", &six, "nonce:c", &six]),
        OOM
    );
    assert_eq!(run(&store, &["EXISTS", "nonce:b", "nonce:c"]), ":0\r\n");
    store.check_invariants();
}

/// Counters belong to a keyspace's name: a reload that moves keys between parts keeps them,
/// and the store's total never goes back when a keyspace goes away.
#[test]
fn counters_survive_a_repartition() {
    let store = tenants(entry_bytes(7, 1), Mode::FailClosed);
    assert_eq!(run(&store, &["SET", "nonce:a", "1"]), "+OK\r\n");
    assert_eq!(run(&store, &["SET", "nonce:b", "1"]), OOM);
    let renamed = Keyspaces::new(
        vec![
            keyspace("nonces", "nonce:", Mode::LocalOnly),
            keyspace("new", "new:", Mode::LocalOnly),
        ],
        Mode::LocalOnly,
    );
    let layout = |k: &Keyspaces| Layout::new(k, 1 << 20, &[]);
    store.reconfigure(layout(&renamed), 2, || (), None::<fn(u32, &[u8]) -> bool>);
    assert_eq!(part(&store.part_stats(), "nonces").refusals, 1);
    let gone = Keyspaces::new(
        vec![keyspace("new", "new:", Mode::LocalOnly)],
        Mode::LocalOnly,
    );
    store.reconfigure(layout(&gone), 3, || (), None::<fn(u32, &[u8]) -> bool>);
    assert_eq!(store.refusals(), 1);
    store.check_invariants();
}

/// Found in review: finding MSET's repeated keys compared every pair, under the store's lock;
/// a command with many keys must stay linear.
#[test]
fn a_large_mset_stays_linear() {
    let store = Store::new(1 << 30);
    let keys: Vec<String> = (0..60_000).map(|i| format!("k{}", i % 50_000)).collect();
    let mut args: Vec<&str> = vec!["MSET"];
    for k in &keys {
        args.push(k);
        args.push("v");
    }
    let started = std::time::Instant::now();
    assert_eq!(run(&store, &args), "+OK\r\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(store.keys(), 50_000);
    store.check_invariants();
}
