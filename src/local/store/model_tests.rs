//! Random operations against a model: the byte count, both indexes and the inline/shared form
//! of every key stay exact on every path, with keys and values either side of the inline
//! limits.

use super::*;
use std::collections::{BTreeSet, HashMap};

/// (db, key) -> (value, deadline).
type Model = HashMap<(u32, Vec<u8>), (Vec<u8>, Option<u64>)>;

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
                let r = store
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
        store.check_invariants();
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
    store.reconfigure(
        Layout::single(2000),
        2,
        || (),
        Some(|_, k: &[u8]| k.len() == 34),
    );
    store.check_invariants();
}
