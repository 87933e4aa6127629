//! The command table against a real redis-server: the table describes every command the server
//! knows exactly as `COMMAND` does, and `command::keys` finds exactly the keys that
//! `COMMAND GETKEYS` finds, errors included, on a corpus that covers every key-spec form and
//! every command with movable keys, on every command with keys, and on seeded random arguments.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use keywarden::command::{self, BeginSearch, CommandInfo, FindKeys, Flags, KeyError, KeySpec};
use keywarden::protocol::request::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

/// What the server answered to `COMMAND GETKEYS <args>`, in `keys()`'s terms: the key names,
/// or the error.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Keys(Vec<String>),
    NoKeyArguments,
    Error(KeyError),
}

fn text(f: &Frame) -> String {
    match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => String::from_utf8_lossy(b).into_owned(),
        Frame::Integer(i) => i.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn array(f: &Frame) -> &[Frame] {
    match f {
        Frame::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

fn int_of(f: &Frame) -> i64 {
    match f {
        Frame::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// A RESP2 map (a flat array of key, value, ...).
fn map(f: &Frame) -> BTreeMap<String, &Frame> {
    array(f)
        .chunks(2)
        .map(|kv| (text(&kv[0]), &kv[1]))
        .collect()
}

fn server_answer(reply: &Frame) -> Answer {
    match reply {
        Frame::Array(items) => Answer::Keys(items.iter().map(text).collect()),
        Frame::Error(e) => match e.as_str() {
            "ERR The command has no key arguments" => Answer::NoKeyArguments,
            "ERR Invalid command specified" => Answer::Error(KeyError::UnknownCommand),
            "ERR Invalid number of arguments specified for command" => {
                Answer::Error(KeyError::WrongArity)
            }
            "ERR Invalid arguments specified for command" => {
                Answer::Error(KeyError::InvalidArguments)
            }
            other => panic!("unexpected GETKEYS error {other:?}"),
        },
        other => panic!("unexpected GETKEYS reply {other:?}"),
    }
}

/// `keys()` in the server's terms. A keyless command is Ok(empty) for us and "no key
/// arguments" for GETKEYS.
fn our_answer(args: &[String]) -> Answer {
    let req = Request::from_args(args);
    match command::keys(&req) {
        Ok(keys) => {
            let keyless = command::lookup_request(&req).is_some_and(|c| !c.has_keys());
            if keyless {
                assert!(keys.is_empty());
                Answer::NoKeyArguments
            } else {
                Answer::Keys(keys.iter().map(|&i| args[i as usize].clone()).collect())
            }
        }
        Err(e) => Answer::Error(e),
    }
}

/// Sends every case as `COMMAND GETKEYS`, pipelined, and compares each answer with ours.
/// Returns our answers, for coverage checks. GETKEYS needs at least two arguments after it, so
/// one-argument requests (`GET`, `PING`) are left to the unit tests.
async fn compare(client: &mut Client, cases: &[Vec<String>], context: &str) -> Vec<Answer> {
    assert!(
        cases.iter().all(|c| c.len() >= 2),
        "{context}: a case too short for GETKEYS"
    );
    let mut ours = Vec::with_capacity(cases.len());
    let mut mismatches = Vec::new();
    for batch in cases.chunks(256) {
        let mut wire = Vec::new();
        for args in batch {
            let mut full: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
            full.extend(args.iter().map(|a| a.as_bytes()));
            wire.extend(encode(&full));
        }
        client.send_raw(&wire).await;
        for args in batch {
            let theirs = server_answer(&client.reply().await);
            let mine = our_answer(args);
            if mine != theirs {
                mismatches.push(format!("{args:?}: ours {mine:?}, redis {theirs:?}"));
            }
            ours.push(mine);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{context}: {} of {} cases differ from COMMAND GETKEYS:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    ours
}

fn case(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn all_commands() -> impl Iterator<Item = &'static CommandInfo> {
    command::commands()
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands()))
}

/// The shape of a key spec, without its flags: what the corpus must exercise.
fn form(spec: &KeySpec) -> (BeginSearch, FindKeys) {
    (spec.begin, spec.find)
}

// --- The table is the server's COMMAND -------------------------------------------------------

fn flag_names(list: &Frame) -> BTreeSet<String> {
    array(list).iter().map(text).collect()
}

fn spec_from_server(raw: &Frame) -> KeySpec {
    let spec = map(raw);
    let begin = map(spec["begin_search"]);
    let begin_spec = if array(begin["spec"]).is_empty() {
        BTreeMap::new()
    } else {
        map(begin["spec"])
    };
    let begin = match text(begin["type"]).as_str() {
        "index" => BeginSearch::Index(int_of(begin_spec["index"]) as i32),
        "keyword" => {
            let keyword = text(begin_spec["keyword"]);
            BeginSearch::Keyword {
                // Leaked once per spec in a test: the type holds a &'static str.
                keyword: Box::leak(keyword.into_boxed_str()),
                startfrom: int_of(begin_spec["startfrom"]) as i32,
            }
        }
        "unknown" => BeginSearch::Unknown,
        other => panic!("begin_search type {other}"),
    };
    let find = map(spec["find_keys"]);
    let find_spec = if array(find["spec"]).is_empty() {
        BTreeMap::new()
    } else {
        map(find["spec"])
    };
    let find = match text(find["type"]).as_str() {
        "range" => FindKeys::Range {
            lastkey: int_of(find_spec["lastkey"]) as i32,
            step: int_of(find_spec["keystep"]) as i32,
            limit: int_of(find_spec["limit"]) as i32,
        },
        "keynum" => FindKeys::Keynum {
            keynumidx: int_of(find_spec["keynumidx"]) as i32,
            firstkey: int_of(find_spec["firstkey"]) as i32,
            step: int_of(find_spec["keystep"]) as i32,
        },
        "unknown" => FindKeys::Unknown,
        other => panic!("find_keys type {other}"),
    };
    let mut flags = command::KeyFlags::empty();
    for name in flag_names(spec["flags"]) {
        flags = flags
            | command::KeyFlags::from_name(&name)
                .unwrap_or_else(|| panic!("key spec flag {name} missing from KeyFlags"));
    }
    KeySpec { begin, find, flags }
}

/// Compares one `COMMAND` entry with the table, recursing into subcommands; collects
/// differences.
fn check_entry(raw: &Frame, diffs: &mut Vec<String>) -> usize {
    let fields = array(raw);
    let name = text(&fields[0]);
    let (container, sub) = match name.split_once('|') {
        Some((c, s)) => (c, Some(s)),
        None => (name.as_str(), None),
    };
    let Some(ours) = command::lookup(container.as_bytes(), sub.map(str::as_bytes)) else {
        diffs.push(format!("{name}: missing from the table"));
        return 0;
    };
    if ours.name() != name {
        diffs.push(format!("{name}: looked up as {}", ours.name()));
    }
    if i64::from(ours.arity()) != int_of(&fields[1]) {
        diffs.push(format!(
            "{name}: arity {} vs {}",
            ours.arity(),
            int_of(&fields[1])
        ));
    }
    let theirs: BTreeSet<String> = flag_names(&fields[2]);
    let mine: BTreeSet<String> = ours
        .flags()
        .names()
        .filter(|n| *n != "connection_state")
        .map(String::from)
        .collect();
    if mine != theirs {
        diffs.push(format!("{name}: flags {mine:?} vs {theirs:?}"));
    }
    let theirs: BTreeSet<String> = array(&fields[6])
        .iter()
        .map(|c| text(c).trim_start_matches('@').to_string())
        .collect();
    let mine: BTreeSet<String> = ours.categories().names().map(String::from).collect();
    if mine != theirs {
        diffs.push(format!("{name}: categories {mine:?} vs {theirs:?}"));
    }
    let theirs: Vec<KeySpec> = array(&fields[8]).iter().map(spec_from_server).collect();
    if ours.key_specs() != theirs.as_slice() {
        diffs.push(format!(
            "{name}: key specs\n  ours  {:?}\n  redis {theirs:?}",
            ours.key_specs()
        ));
    }
    let subs = array(&fields[9]);
    if ours.subcommands().len() != subs.len() {
        diffs.push(format!(
            "{name}: {} subcommands vs {}",
            ours.subcommands().len(),
            subs.len()
        ));
    }
    1 + subs.iter().map(|s| check_entry(s, diffs)).sum::<usize>()
}

/// The table is up to date: every command and subcommand the server knows is in it, with the
/// same arity, flags, ACL categories and key specs, and the table has nothing else.
#[tokio::test]
async fn table_matches_the_server() {
    let redis = RedisServer::start();
    let mut c = Client::connect(redis.addr()).await;
    let info = text(&c.cmd(&["INFO", "server"]).await);
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_string();
    let regenerate = format!(
        "the table was generated from Redis {}, this server is {version}; regenerate it with \
         `python3 scripts/gen_command_table.py`",
        command::REDIS_VERSION
    );

    let listed = c.cmd(&["COMMAND", "LIST"]).await;
    let mut missing = Vec::new();
    for name in array(&listed).iter().map(text) {
        let (container, sub) = match name.split_once('|') {
            Some((c, s)) => (c.to_string(), Some(s.to_string())),
            None => (name.clone(), None),
        };
        match command::lookup(container.as_bytes(), sub.as_deref().map(str::as_bytes)) {
            Some(info) if info.name() == name => {}
            _ => missing.push(name),
        }
    }
    assert!(
        missing.is_empty(),
        "commands the server lists but the table lacks ({regenerate}): {missing:?}"
    );

    let all = c.cmd(&["COMMAND"]).await;
    let mut diffs = Vec::new();
    let described: usize = array(&all).iter().map(|e| check_entry(e, &mut diffs)).sum();
    assert!(
        diffs.is_empty(),
        "the table differs from the server's COMMAND ({regenerate}):\n{}",
        diffs.join("\n")
    );
    assert_eq!(
        described,
        all_commands().count(),
        "the table has extra commands"
    );
    assert_eq!(described, array(&listed).len());
}

// --- keys() is COMMAND GETKEYS -----------------------------------------------------------------

/// Hand-written cases: every key-spec form, every command with movable keys, and the quirks of
/// Redis's fallbacks.
fn corpus() -> Vec<Vec<String>> {
    let cases: &[&[&str]] = &[
        // index + range 0, arity errors, case, unknown commands and subcommands.
        &["GET", "k"],
        &["get", "k"],
        &["GET", "a", "b"],
        &["NOSUCH", "k"],
        &["OBJECT", "NOSUCH", "k"],
        &["OBJECT", "ENCODING", "k"],
        &["object", "freq", "k"],
        &["OBJECT", "k"],
        &["MEMORY", "USAGE", "k", "SAMPLES", "5"],
        &["XINFO", "STREAM", "s", "FULL"],
        &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
        &["XGROUP", "CREATE", "s"],
        &["CONFIG", "GET", "maxmemory"],
        &["CLIENT", "SETNAME", "x"],
        &["PING", "x"],
        &["FLUSHDB", "too", "many", "args"],
        &["PUBLISH", "ch", "m"],
        &["SPUBLISH", "ch", "m"],
        &["SSUBSCRIBE", "a", "b"],
        // index + range 1 (LCS), -1 (DEL), -2 (BLPOP), step 2 (MSET), two specs.
        &["LCS", "a", "b", "LEN"],
        &["DEL", "a", "b", "c"],
        &["BLPOP", "a", "b", "0"],
        &["MSET", "a", "1", "b", "2"],
        &["MSET", "a", "1", "b"],
        &["SMOVE", "src", "dst", "m"],
        &["BITOP", "AND", "dst", "a", "b"],
        &["RENAME", "a", "b"],
        &["SUNIONSTORE", "dst", "a", "b"],
        &["PFMERGE", "dst"],
        // variable_flags: SET and BITFIELD.
        &["SET", "k", "v"],
        &["SET", "k", "v", "GET"],
        &["BITFIELD", "k", "GET", "u8", "0"],
        &["BITFIELD", "k"],
        // index + keynum, and genericGetKeys when the spec fails.
        &["ZUNIONSTORE", "d", "2", "a", "b"],
        &["ZINTERSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
        &["ZDIFFSTORE", "d", "1", "a"],
        &["ZUNIONSTORE", "d", "3", "a", "b"],
        &["ZUNIONSTORE", "d", "0", "a"],
        &["ZUNIONSTORE", "d", "2x", "a", "b"],
        &["ZINTERSTORE", "d", " 2", "a", "b"],
        &["ZUNIONSTORE", "d", "4294967297", "a"],
        &["ZDIFFSTORE", "d", "+1", "a"],
        &["ZUNION", "2", "a", "b", "WITHSCORES"],
        &["ZINTER", "x", "a"],
        &["ZINTER", "2", "a", "b", "AGGREGATE", "MAX"],
        &["ZDIFF", "01", "a"],
        &["ZINTERCARD", "2", "a", "b"],
        &["ZINTERCARD", "4294967297", "a"],
        &["ZINTERCARD", "4294967298", "a", "b"],
        &["ZINTERCARD", "2147483647", "a"],
        &["ZINTERCARD", "2147483648", "a"],
        &["ZINTERCARD", "9223372036854775807", "a"],
        &["ZINTERCARD", "9223372036854775808", "a"],
        &["ZINTERCARD", "-1", "a"],
        &["ZINTERCARD", "-4294967295", "a"],
        &["SINTERCARD", "2", "a", "b", "LIMIT", "1"],
        &["SINTERCARD", "1\u{0}9", "a"],
        &["EVAL", "return 1", "0"],
        &["EVAL", "return 1", "2", "k1", "k2", "arg"],
        &["EVAL", "return 1", "3", "k1"],
        &["EVAL", "return 1", "x"],
        &["EVALSHA", "abc", "1", "k"],
        &["EVAL_RO", "return 1", "1", "k"],
        &["EVALSHA_RO", "abc", "1", "k"],
        &["FCALL", "f", "1", "k", "a"],
        &["FCALL_RO", "f", "-1", "k"],
        &["FCALL_RO", "f", "2", "k1", "k2"],
        &["LMPOP", "2", "a", "b", "LEFT"],
        &["LMPOP", "0", "a", "LEFT"],
        &["ZMPOP", "1", "a", "MIN"],
        &["BLMPOP", "0", "2", "a", "b", "LEFT"],
        &["BLMPOP", "0", "3", "a", "b", "LEFT"],
        &["BZMPOP", "0", "1", "a", "MAX"],
        // keyword + range with a limit: XREAD, XREADGROUP (and xreadGetKeys).
        &["XREAD", "STREAMS", "a", "b", "0", "0"],
        &["XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "a", "0"],
        &["XREAD", "STREAMS", "a", "b", "0"],
        &["xread", "count", "1", "streams", "a"],
        &["XREAD", "COUNT", "1", "a", "0"],
        &["XREAD", "COUNT", "STREAMS", "STREAMS", "a", "0"],
        &["XREAD", "STREAMS\u{0}x", "a", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "STREAMS",
            "a",
            "b",
            ">",
            ">",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "NOACK",
            "STREAMS",
            "a",
            ">",
        ],
        &[
            "XREADGROUP",
            "STREAMS",
            "k1",
            "k2",
            "x",
            "y",
            "STREAMS",
            "id",
        ],
        &["XREADGROUP", "GROUP", "g", "c", "COUNT", "STREAMS", "a"],
        // keyword + range 0: GEORADIUS STORE / STOREDIST (two specs).
        &["GEORADIUS", "k", "0", "0", "1", "km"],
        &["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"],
        &["GEORADIUS", "k", "0", "0", "1", "km", "STOREDIST", "d"],
        &[
            "GEORADIUS",
            "k",
            "0",
            "0",
            "1",
            "km",
            "STORE",
            "a",
            "STOREDIST",
            "b",
        ],
        &["GEORADIUS", "k", "0", "0", "1", "km", "COUNT", "1", "STORE"],
        &[
            "GEORADIUSBYMEMBER",
            "k",
            "m",
            "1",
            "km",
            "STORE",
            "a",
            "STOREDIST",
            "b",
        ],
        &["GEORADIUSBYMEMBER", "k", "m", "1", "km", "storedist", "d"],
        // unknown + unknown: SORT / SORT_RO (sortGetKeys).
        &["SORT", "k"],
        &["SORT", "k", "STORE", "dst"],
        &[
            "SORT", "k", "BY", "w_*", "LIMIT", "0", "1", "GET", "o_*", "store", "d",
        ],
        &["SORT", "k", "GET", "store", "x"],
        &["SORT", "k", "STORE"],
        &["SORT", "k", "STORE", "a", "STORE", "b"],
        &["SORT", "k", "STORE", "limit", "x", "y", "z"],
        &["SORT", "k", "LIMIT", "0", "STORE", "d"],
        &["SORT_RO", "k", "BY", "x"],
        // keyword (backwards) + range -1, incomplete: MIGRATE (migrateGetKeys).
        &["MIGRATE", "h", "1", "k", "0", "5000"],
        &["MIGRATE", "h", "1", "", "0", "5000", "KEYS", "k1", "k2"],
        &[
            "MIGRATE", "h", "1", "", "0", "5000", "COPY", "REPLACE", "KEYS", "k1",
        ],
        &[
            "MIGRATE", "h", "1", "", "0", "5000", "AUTH", "keys", "KEYS", "k1",
        ],
        &[
            "MIGRATE", "h", "1", "", "0", "5000", "AUTH2", "u", "p", "KEYS", "k1",
        ],
        &[
            "MIGRATE", "h", "1", "", "0", "5000", "AUTH2", "u", "KEYS", "KEYS", "k1",
        ],
        &["MIGRATE", "h", "1", "k", "0", "5000", "KEYS", "k1"],
        &["MIGRATE", "h", "1", "", "0", "5000", "KEYS"],
        &["MIGRATE", "h", "keys", "k", "0", "5000"],
        &["MIGRATE", "h", "1", "k", "0", "KEYS", "x"],
    ];
    cases.iter().map(|c| case(c)).collect()
}

#[tokio::test]
async fn keys_match_getkeys_on_the_corpus() {
    let redis = RedisServer::start();
    let mut c = Client::connect(redis.addr()).await;
    let cases = corpus();
    let answers = compare(&mut c, &cases, "corpus").await;

    // Coverage: every key-spec form of the table, and every command with movable keys, is
    // exercised by a case that finds keys.
    let mut covered_forms = BTreeSet::new();
    let mut covered_commands = BTreeSet::new();
    for (args, answer) in cases.iter().zip(&answers) {
        let req = Request::from_args(args);
        if let (Some(cmd), Answer::Keys(keys)) = (command::lookup_request(&req), answer) {
            if !keys.is_empty() {
                covered_commands.insert(cmd.name());
                covered_forms.extend(cmd.key_specs().iter().map(|s| format!("{:?}", form(s))));
            }
        }
    }
    let all_forms: BTreeSet<String> = all_commands()
        .flat_map(|c| c.key_specs())
        .map(|s| format!("{:?}", form(s)))
        .collect();
    let uncovered: Vec<_> = all_forms.difference(&covered_forms).collect();
    assert!(
        uncovered.is_empty(),
        "key-spec forms no case exercises: {uncovered:?}"
    );
    let movable: Vec<_> = all_commands()
        .filter(|c| c.flags().contains(Flags::MOVABLE_KEYS))
        .map(|c| c.name())
        .filter(|n| !covered_commands.contains(n))
        .collect();
    assert!(
        movable.is_empty(),
        "movable-keys commands no case exercises: {movable:?}"
    );
}

/// Every command and subcommand, with each argument count its arity allows (up to 4 more than
/// the minimum), once with distinct names and once with counts ("1") everywhere.
#[tokio::test]
async fn keys_match_getkeys_for_every_command() {
    let redis = RedisServer::start();
    let mut c = Client::connect(redis.addr()).await;
    let mut cases = Vec::new();
    for cmd in all_commands() {
        let name: Vec<&str> = cmd.name().split('|').collect();
        let min = cmd.arity().unsigned_abs() as usize;
        let max = if cmd.arity() < 0 { min + 4 } else { min };
        for argc in min.saturating_sub(1).max(name.len()).max(2)..=max + 1 {
            for filler in ["k", "1"] {
                let mut args: Vec<String> = name.iter().map(|s| s.to_string()).collect();
                while args.len() < argc {
                    args.push(format!("{filler}{}", args.len()));
                }
                if filler == "1" {
                    // "1" then "11", "12"...: the first is a valid numkeys of 1.
                    let first = name.len();
                    if argc > first {
                        args[first] = "1".into();
                    }
                }
                cases.push(args);
            }
        }
    }
    compare(&mut c, &cases, "every command").await;
}

/// Seeded random arguments, from a vocabulary of the keywords and numbers that steer key
/// finding, for every command whose keys depend on its arguments. `KEYS_SEED=<n>` replays a run.
#[tokio::test]
async fn keys_match_getkeys_on_random_arguments() {
    let seed: u64 = std::env::var("KEYS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("KEYS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let vocabulary = [
        "k",
        "v",
        "",
        "0",
        "1",
        "2",
        "3",
        "-1",
        "2x",
        " 2",
        "+1",
        "01",
        "4294967297",
        "STREAMS",
        "streams",
        "STORE",
        "store",
        "STOREDIST",
        "KEYS",
        "keys",
        "LIMIT",
        "GET",
        "BY",
        "BLOCK",
        "COUNT",
        "GROUP",
        "NOACK",
        "AUTH",
        "AUTH2",
        "COPY",
        "REPLACE",
        "WEIGHTS",
        "LEFT",
        "MIN",
        ">",
        "$",
        "km",
    ];
    let targets: Vec<&CommandInfo> = all_commands()
        .filter(|c| {
            c.flags().contains(Flags::MOVABLE_KEYS)
                || c.key_specs().iter().any(|s| {
                    !matches!(s.begin, BeginSearch::Index(_))
                        || !matches!(s.find, FindKeys::Range { lastkey: 0, .. })
                })
        })
        .collect();
    let mut cases = Vec::new();
    for cmd in &targets {
        let name: Vec<&str> = cmd.name().split('|').collect();
        let min = cmd.arity().unsigned_abs() as usize;
        for _ in 0..200 {
            let argc = rng.gen_range(name.len().max(2)..=min + 8);
            let mut args: Vec<String> = name.iter().map(|s| s.to_string()).collect();
            while args.len() < argc {
                let word = vocabulary[rng.gen_range(0..vocabulary.len())];
                // Most arguments get a unique suffix so that keys are told apart by name.
                if rng.gen_bool(0.3) {
                    args.push(word.to_string());
                } else {
                    args.push(format!("{word}{}", args.len()));
                }
            }
            cases.push(args);
        }
    }
    let redis = RedisServer::start();
    let mut c = Client::connect(redis.addr()).await;
    let context = format!("random (KEYS_SEED={seed}, {} commands)", targets.len());
    compare(&mut c, &cases, &context).await;
}
