//! The local engine against a real redis-server: random command sequences (seeded) run on both,
//! and every reply must be the same bytes.
//!
//! Each sequence is pipelined to Redis in one write (after `SELECT 0` and `FLUSHALL`) and run
//! through `engine::execute` on a fresh `Store`. Where Redis leaves a choice open the test
//! compares what is defined instead of bytes:
//! - TTL, PTTL, EXPIRETIME, PEXPIRETIME of relative deadlines: within a small tolerance (the
//!   two clocks are read a few milliseconds apart); -1 and -2 exactly;
//! - KEYS, and SCAN 0 with a COUNT large enough to finish in one call: as sets, cursor 0;
//! - SCAN from an arbitrary cursor: same error, or a well-formed reply;
//! - RANDOMKEY: nil on both, or a key on both (and the engine's key exists);
//! - HGETALL, HKEYS, HVALS, HSCAN: bytes while Redis keeps the hash as a listpack (asked with
//!   `OBJECT ENCODING`, sent to Redis only); as multisets once Redis made it a hash table.
//!
//! After each sequence, every database it used is compared through a full SCAN iteration
//! (small COUNTs, random MATCH/TYPE) and full HSCAN iterations of its hashes.
//!
//! Relative deadlines are unique within a sequence and far apart from absolute ones, so no
//! reply depends on which millisecond each side ran in. SET with EXAT/PXAT in the past leaves
//! a logically expired key in Redis that DBSIZE still counts until it is touched (the engine
//! never counts one); sequences draw either such SETs or DBSIZE, never both.
//!
//! A fixed corpus of tricky cases runs first. `differential/generate.rs` makes the sequences
//! and the corpus; this file sends, runs and compares them.
//!
//! `DIFF_SEED=n` replays one sequence; `DIFF_SEQUENCES=n` changes how many run; `DIFF_VERBOSE=1`
//! prints every command with both replies.

#[path = "differential/generate.rs"]
mod generate;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::BytesMut;
use generate::{corpus, generate, now_ms, Check, Cmd, HashRead, PATTERNS, TYPES, TYPES_NOT_NONE};
use keywarden::local::engine;
use keywarden::local::store::Store;
use keywarden::protocol::request::Request;
use keywarden::protocol::scanner::ReplyScanner;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis_protocol::resp2::types::OwnedFrame;
use support::{encode, Client, Proxy, RedisServer, WAIT};
use tokio::io::AsyncReadExt;

const DEFAULT_SEQUENCES: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Talking to Redis
// ---------------------------------------------------------------------------------------------

struct Redis {
    client: Client,
    buf: BytesMut,
}

impl Redis {
    /// Reads `n` complete replies, each as its raw bytes.
    async fn replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        // The proxy's own scanner frames replies: error texts may be any bytes, which the
        // `redis-protocol` decoder refuses (it wants UTF-8).
        let mut scanner = ReplyScanner::new(8);
        while out.len() < n {
            if let Some(frame) = scanner.scan(&self.buf).expect("valid RESP from redis") {
                out.push(self.buf.split_to(frame.len).to_vec());
                continue;
            }
            self.buf.reserve(64 * 1024);
            let read = tokio::time::timeout(WAIT, self.client.stream.read_buf(&mut self.buf))
                .await
                .expect("redis replied in time")
                .expect("read from redis");
            assert!(read > 0, "redis closed the connection");
        }
        out
    }

    async fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.client.send_raw(&encode(args)).await;
        self.replies(1).await.pop().unwrap()
    }
}

fn frame(raw: &[u8]) -> OwnedFrame {
    redis_protocol::resp2::decode::decode(raw)
        .expect("valid RESP")
        .expect("complete frame")
        .0
}

fn bulks(frame: &OwnedFrame) -> Vec<Vec<u8>> {
    match frame {
        OwnedFrame::Array(items) => items
            .iter()
            .map(|item| match item {
                OwnedFrame::BulkString(b) => b.clone(),
                other => panic!("expected a bulk string, got {other:?}"),
            })
            .collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// (cursor, elements) of a SCAN-like reply.
fn scan_reply(raw: &[u8]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    match frame(raw) {
        OwnedFrame::Array(parts) if parts.len() == 2 => {
            let OwnedFrame::BulkString(cursor) = &parts[0] else {
                return None;
            };
            Some((cursor.clone(), bulks(&parts[1])))
        }
        _ => None,
    }
}

fn pairs(flat: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = flat
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    out.sort();
    out
}

fn sorted(mut items: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    items.sort();
    items
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn show_args(args: &[Vec<u8>]) -> String {
    args.iter().map(|a| show(a)).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------------

/// Why a reply differs, or Ok.
fn compare(
    check: Check,
    redis: &[u8],
    ours: &[u8],
    encoding: Option<&[u8]>,
    store: &Store,
    db: u32,
) -> Result<(), String> {
    if redis == ours {
        return Ok(());
    }
    let differ = || Err("replies differ".to_string());
    let is_error = |raw: &[u8]| raw.first() == Some(&b'-');
    if is_error(redis) || is_error(ours) {
        return differ();
    }
    match check {
        Check::Exact | Check::Select(_) => differ(),
        Check::Time(tolerance) => match (frame(redis), frame(ours)) {
            (OwnedFrame::Integer(a), OwnedFrame::Integer(b))
                if a >= 0 && b >= 0 && (a - b).abs() <= tolerance =>
            {
                Ok(())
            }
            _ => differ(),
        },
        Check::Set => {
            if sorted(bulks(&frame(redis))) == sorted(bulks(&frame(ours))) {
                Ok(())
            } else {
                differ()
            }
        }
        Check::ScanFull => {
            let (rc, rk) = scan_reply(redis).ok_or("bad redis SCAN reply")?;
            let (oc, ok) = scan_reply(ours).ok_or("bad engine SCAN reply")?;
            let rk: BTreeSet<_> = rk.into_iter().collect();
            let ok: BTreeSet<_> = ok.into_iter().collect();
            if rc != b"0" || oc != b"0" {
                return Err("a one-call SCAN did not finish".into());
            }
            if rk == ok {
                Ok(())
            } else {
                differ()
            }
        }
        Check::ScanLoose => {
            scan_reply(redis).ok_or("bad redis SCAN reply")?;
            scan_reply(ours).ok_or("bad engine SCAN reply")?;
            Ok(())
        }
        Check::RandomKey => match (frame(redis), frame(ours)) {
            (OwnedFrame::BulkString(_), OwnedFrame::BulkString(key)) => {
                let exists = engine::execute(
                    store,
                    db,
                    &Request::from_args(&[&b"EXISTS"[..], &key]),
                    now_ms(),
                );
                if &exists[..] == b":1\r\n" {
                    Ok(())
                } else {
                    Err("RANDOMKEY returned a key that does not exist".into())
                }
            }
            _ => differ(),
        },
        Check::HashRead(read) => {
            if encoding != Some(&b"$9\r\nhashtable\r\n"[..]) {
                return differ();
            }
            let same = match read {
                HashRead::All => pairs(bulks(&frame(redis))) == pairs(bulks(&frame(ours))),
                HashRead::Keys | HashRead::Vals => {
                    sorted(bulks(&frame(redis))) == sorted(bulks(&frame(ours)))
                }
                HashRead::Scan => {
                    // Redis pages a table; the engine answers it whole.
                    let (_, r) = scan_reply(redis).ok_or("bad redis HSCAN reply")?;
                    let (oc, o) = scan_reply(ours).ok_or("bad engine HSCAN reply")?;
                    let o: BTreeSet<_> = pairs(o).into_iter().collect();
                    oc == b"0" && pairs(r).iter().all(|p| o.contains(p))
                }
            };
            if same {
                Ok(())
            } else {
                differ()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// What the run covered, printed at the end.
#[derive(Default)]
struct Stats {
    /// Commands run, by upper-case name.
    commands: BTreeMap<String, u64>,
    /// Error replies, by text.
    errors: BTreeMap<String, u64>,
    /// Replies equal byte for byte, and those compared by a looser rule.
    identical: u64,
    relaxed: u64,
}

impl Stats {
    fn record(&mut self, args: &[Vec<u8>], reply: &[u8], identical: bool) {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        *self.commands.entry(name).or_default() += 1;
        if reply.first() == Some(&b'-') {
            // The error code and its fixed words, not the bytes a client sent.
            let text = String::from_utf8_lossy(&reply[1..reply.len() - 2]);
            let text = if text.starts_with("ERR Unsupported option") {
                "ERR Unsupported option ...".to_string()
            } else {
                text.into_owned()
            };
            *self.errors.entry(text).or_default() += 1;
        }
        if identical {
            self.identical += 1;
        } else {
            self.relaxed += 1;
        }
    }

    fn print(&self, sequences: u64) {
        let total: u64 = self.commands.values().sum();
        eprintln!(
            "differential: {sequences} sequences, {total} commands ({} identical bytes, {} compared \
             by a looser rule), {} commands, {} error replies of {} kinds",
            self.identical,
            self.relaxed,
            self.commands.len(),
            self.errors.values().sum::<u64>(),
            self.errors.len()
        );
        for (name, n) in &self.commands {
            eprintln!("  {n:>7} {name}");
        }
        for (text, n) in &self.errors {
            eprintln!("  {n:>7} -{text}");
        }
    }
}

async fn run_sequence(redis: &mut Redis, seed: u64, stats: &mut Stats) {
    let (cmds, past_set) = generate(seed);
    let label = format!("sequence DIFF_SEED={seed}");
    run_commands(redis, &label, seed, &cmds, past_set, stats).await;
}

/// Runs `cmds` on both sides and compares; `label` names the sequence in failures, `seed`
/// drives the options of the final whole-database checks.
async fn run_commands(
    redis: &mut Redis,
    label: &str,
    seed: u64,
    cmds: &[Cmd],
    past_set: bool,
    stats: &mut Stats,
) {
    // Redis: one write with the whole sequence.
    let mut wire = encode(&[b"SELECT", b"0"]);
    wire.extend(encode(&[b"FLUSHALL"]));
    let mut expected = 2;
    for cmd in cmds {
        let args: Vec<&[u8]> = cmd.args.iter().map(Vec::as_slice).collect();
        wire.extend(encode(&args));
        expected += 1;
        if let Check::HashRead(_) = cmd.check {
            let key = cmd.args.get(1).map_or(&b""[..], Vec::as_slice);
            wire.extend(encode(&[b"OBJECT", b"ENCODING", key]));
            expected += 1;
        }
    }
    redis.client.send_raw(&wire).await;
    let mut replies = redis.replies(expected).await.into_iter();
    assert_eq!(replies.next().unwrap(), b"+OK\r\n");
    assert_eq!(replies.next().unwrap(), b"+OK\r\n");

    // The engine, one command at a time.
    let store = Store::new(256 << 20);
    let mut db = 0;
    let mut dbs_used = BTreeSet::from([0u32]);
    let fail = |i: usize, cmd: &Cmd, why: &str, redis: &[u8], ours: &[u8]| -> ! {
        let history: Vec<String> = cmds[..=i]
            .iter()
            .map(|c| format!("  {}", show_args(&c.args)))
            .collect();
        panic!(
            "{label} (SET in the past allowed: {past_set}), command {i}: {why}\n\
             command: {}\nredis:  {}\nengine: {}\nsequence so far:\n{}",
            show_args(&cmd.args),
            show(redis),
            show(ours),
            history.join("\n")
        )
    };
    for (i, cmd) in cmds.iter().enumerate() {
        let redis_reply = replies.next().unwrap();
        let encoding = match cmd.check {
            Check::HashRead(_) => Some(replies.next().unwrap()),
            _ => None,
        };
        let ours = match cmd.check {
            Check::Select(n) => {
                db = n;
                dbs_used.insert(n);
                b"+OK\r\n".to_vec()
            }
            _ => {
                let name = &cmd.args[0];
                assert!(engine::supports(name), "{} is supported", show(name));
                let req = Request::from_args(&cmd.args);
                let reply = catch_unwind(AssertUnwindSafe(|| {
                    engine::execute(&store, db, &req, now_ms())
                }));
                match reply {
                    Ok(reply) => reply.to_vec(),
                    Err(panic) => {
                        eprintln!(
                            "engine panicked: {label}, command {i}: {}",
                            show_args(&cmd.args)
                        );
                        std::panic::resume_unwind(panic)
                    }
                }
            }
        };
        if let Err(why) = compare(
            cmd.check,
            &redis_reply,
            &ours,
            encoding.as_deref(),
            &store,
            db,
        ) {
            fail(i, cmd, &why, &redis_reply, &ours);
        }
        stats.record(&cmd.args, &redis_reply, redis_reply == ours);
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            eprintln!(
                "{}\n  redis:  {}\n  engine: {}",
                show_args(&cmd.args),
                show(&redis_reply),
                show(&ours)
            );
        }
    }

    // Whole databases: full SCAN and HSCAN iterations, and DBSIZE.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca9);
    for &db in &dbs_used {
        let db_arg = db.to_string();
        assert_eq!(
            redis.call(&[b"SELECT", db_arg.as_bytes()]).await,
            b"+OK\r\n"
        );
        let mut options: Vec<Vec<u8>> = Vec::new();
        if rng.gen_bool(0.3) {
            options.push(b"MATCH".to_vec());
            options.push(PATTERNS.choose(&mut rng).unwrap().to_vec());
        }
        if rng.gen_bool(0.3) {
            options.push(b"TYPE".to_vec());
            let types = if past_set { TYPES_NOT_NONE } else { TYPES };
            options.push(types.choose(&mut rng).unwrap().as_bytes().to_vec());
        }
        let count = rng.gen_range(1..=8).to_string();
        let redis_keys = full_scan(
            |cursor| {
                let mut args: Vec<Vec<u8>> = vec![b"SCAN".to_vec(), cursor, b"COUNT".to_vec()];
                args.push(count.clone().into_bytes());
                args.extend(options.iter().cloned());
                args
            },
            Side::Redis(&mut *redis),
        )
        .await;
        let our_keys = full_scan(
            |cursor| {
                let mut args: Vec<Vec<u8>> = vec![b"SCAN".to_vec(), cursor, b"COUNT".to_vec()];
                args.push(count.clone().into_bytes());
                args.extend(options.iter().cloned());
                args
            },
            Side::Engine(&store, db),
        )
        .await;
        if redis_keys != our_keys {
            panic!(
                "{label}: full SCAN of db {db} with {} differs\nredis:  {:?}\nengine: {:?}",
                show_args(&options),
                redis_keys.iter().map(|k| show(k)).collect::<Vec<_>>(),
                our_keys.iter().map(|k| show(k)).collect::<Vec<_>>(),
            );
        }
        if !past_set {
            let r = redis.call(&[b"DBSIZE"]).await;
            let o = engine::execute(&store, db, &Request::from_args(&["DBSIZE"]), now_ms());
            assert_eq!(show(&r), show(&o), "{label}: DBSIZE of db {db}");
        }
        // Every hash of the database, through HSCAN to the end.
        let all = full_scan(
            |cursor| vec![b"SCAN".to_vec(), cursor, b"TYPE".to_vec(), b"hash".to_vec()],
            Side::Engine(&store, db),
        )
        .await;
        for key in all.iter().take(3) {
            // Small pages for small hashes; the 500-field ones would take hundreds of calls.
            let hlen = engine::execute(
                &store,
                db,
                &Request::from_args(&[&b"HLEN"[..], key]),
                now_ms(),
            );
            let big = matches!(frame(&hlen), OwnedFrame::Integer(n) if n > 64);
            let count = if big { "100" } else { "2" };
            let r = full_hscan(key, count, Side::Redis(&mut *redis)).await;
            let o = full_hscan(key, count, Side::Engine(&store, db)).await;
            assert_eq!(r, o, "{label}: HSCAN of {} in db {db}", show(key));
        }
    }
}

enum Side<'a> {
    Redis(&'a mut Redis),
    Engine(&'a Store, u32),
}

impl Side<'_> {
    async fn call(&mut self, args: &[Vec<u8>]) -> Vec<u8> {
        match self {
            Side::Redis(redis) => {
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                redis.call(&args).await
            }
            Side::Engine(store, db) => {
                engine::execute(store, *db, &Request::from_args(args), now_ms()).to_vec()
            }
        }
    }
}

/// Iterates a SCAN to cursor 0; the set of keys seen.
async fn full_scan(
    command: impl Fn(Vec<u8>) -> Vec<Vec<u8>>,
    mut side: Side<'_>,
) -> BTreeSet<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    for _ in 0..10_000 {
        let raw = side.call(&command(cursor)).await;
        let (next, keys) =
            scan_reply(&raw).unwrap_or_else(|| panic!("not a SCAN reply: {}", show(&raw)));
        seen.extend(keys);
        if next == b"0" {
            return seen;
        }
        cursor = next;
    }
    panic!("SCAN did not finish");
}

/// Iterates an HSCAN to cursor 0; the set of (field, value) seen.
async fn full_hscan(key: &[u8], count: &str, mut side: Side<'_>) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    let mut seen = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    for _ in 0..10_000 {
        let args = vec![
            b"HSCAN".to_vec(),
            key.to_vec(),
            cursor,
            b"COUNT".to_vec(),
            count.as_bytes().to_vec(),
        ];
        let raw = side.call(&args).await;
        let (next, flat) =
            scan_reply(&raw).unwrap_or_else(|| panic!("not an HSCAN reply: {}", show(&raw)));
        seen.extend(pairs(flat));
        if next == b"0" {
            return seen;
        }
        cursor = next;
    }
    panic!("HSCAN did not finish");
}

#[tokio::test]
async fn engine_replies_like_redis() {
    let server = RedisServer::start();
    let mut redis = Redis {
        client: Client::connect(server.addr()).await,
        buf: BytesMut::new(),
    };
    if let Ok(seed) = std::env::var("DIFF_SEED") {
        let seed = seed.parse().expect("DIFF_SEED is a number");
        run_sequence(&mut redis, seed, &mut Stats::default()).await;
        return;
    }
    let sequences = std::env::var("DIFF_SEQUENCES")
        .map(|n| n.parse().expect("DIFF_SEQUENCES is a number"))
        .unwrap_or(DEFAULT_SEQUENCES);
    let base: u64 = rand::random::<u32>() as u64 * 1_000_000;
    eprintln!(
        "differential: {sequences} sequences, seeds {base}..{}",
        base + sequences
    );
    let mut stats = Stats::default();
    let started = std::time::Instant::now();
    run_commands(&mut redis, "the corpus", 0, &corpus(), true, &mut stats).await;
    for seed in base..base + sequences {
        run_sequence(&mut redis, seed, &mut stats).await;
    }
    stats.print(sequences);
    eprintln!("differential: {:?}", started.elapsed());
}

/// The same sequences through keywarden, against a `local_only` default keyspace: what a client
/// of the proxy sees must be what Redis sends, byte for byte, SELECT and COPY ... DB included.
/// RANDOMKEY is left out: its check needs the engine's store at hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_keyspace_through_keywarden_replies_like_redis() {
    let server = RedisServer::start();
    let mut settings = support::settings(&server.addr());
    settings.keyspaces = keywarden::policy::keyspace::Keyspaces::new(
        Vec::new(),
        keywarden::policy::keyspace::Mode::LocalOnly,
    );
    let proxy = Proxy::start(settings).await;
    let mut redis = Redis {
        client: Client::connect(server.addr()).await,
        buf: BytesMut::new(),
    };
    let mut via = Redis {
        client: proxy.client().await,
        buf: BytesMut::new(),
    };
    let sequences: u64 = std::env::var("DIFF_PROXY_SEQUENCES")
        .map(|n| n.parse().expect("DIFF_PROXY_SEQUENCES is a number"))
        .unwrap_or(DEFAULT_SEQUENCES);
    let base: u64 = rand::random::<u32>() as u64 * 1_000_000;
    eprintln!(
        "differential through keywarden: seeds {base}..{}",
        base + sequences
    );
    let unused = Store::new(1 << 20);
    let mut compared = 0usize;
    for seed in base..base + sequences {
        let (cmds, _) = generate(seed);
        let cmds: Vec<&Cmd> = cmds
            .iter()
            .filter(|c| !matches!(c.check, Check::RandomKey))
            .collect();
        let mut to_redis = encode(&[b"FLUSHALL"]);
        to_redis.extend(encode(&[b"SELECT", b"0"]));
        // The local store has no FLUSHALL: empty each database the generator may use.
        let mut to_proxy = Vec::new();
        for db in 0..engine::DATABASES {
            to_proxy.extend(encode(&[b"SELECT", db.to_string().as_bytes()]));
            to_proxy.extend(encode(&[b"FLUSHDB"]));
        }
        to_proxy.extend(encode(&[b"SELECT", b"0"]));
        let proxy_setup = 2 * engine::DATABASES as usize + 1;
        let mut redis_expected = 2;
        for cmd in &cmds {
            let args: Vec<&[u8]> = cmd.args.iter().map(Vec::as_slice).collect();
            to_redis.extend(encode(&args));
            to_proxy.extend(encode(&args));
            redis_expected += 1;
            if let Check::HashRead(_) = cmd.check {
                let key = cmd.args.get(1).map_or(&b""[..], Vec::as_slice);
                to_redis.extend(encode(&[b"OBJECT", b"ENCODING", key]));
                redis_expected += 1;
            }
        }
        redis.client.send_raw(&to_redis).await;
        via.client.send_raw(&to_proxy).await;
        let mut theirs = redis.replies(redis_expected).await.into_iter();
        let mut ours = via.replies(cmds.len() + proxy_setup).await.into_iter();
        for _ in 0..2 {
            assert_eq!(theirs.next().unwrap(), b"+OK\r\n");
        }
        for _ in 0..proxy_setup {
            assert_eq!(ours.next().unwrap(), b"+OK\r\n");
        }
        for (i, cmd) in cmds.iter().enumerate() {
            let want = theirs.next().unwrap();
            let encoding = match cmd.check {
                Check::HashRead(_) => Some(theirs.next().unwrap()),
                _ => None,
            };
            let got = ours.next().unwrap();
            if let Err(why) = compare(cmd.check, &want, &got, encoding.as_deref(), &unused, 0) {
                panic!(
                    "DIFF_SEED={seed} (through keywarden), command {i}: {why}\n\
                     command: {}\nredis:     {}\nkeywarden: {}",
                    show_args(&cmd.args),
                    show(&want),
                    show(&got)
                );
            }
            compared += 1;
        }
    }
    eprintln!("differential through keywarden: {compared} replies compared");
    proxy.shutdown().await;
}
