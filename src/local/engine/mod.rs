//! The local engine: runs the commands it supports against the [`Store`] and answers exactly
//! what Redis 7.0 would, byte for byte (errors, their order and their texts included).
//!
//! # Layout
//! - this file: the command table (name, arity, handler), dispatch, and argument helpers;
//! - [`strings`]: GET, SET and its variants, counters, ranges, MGET/MSET;
//! - [`keys`]: DEL, EXISTS, TYPE, TOUCH, RENAME, COPY, KEYS, DBSIZE, FLUSHDB, RANDOMKEY, PING,
//!   ECHO;
//! - [`expiry`]: EXPIRE and friends, TTL and friends, PERSIST;
//! - [`hashes`]: the H* commands but HSCAN;
//! - [`scan`]: SCAN and HSCAN;
//! - [`reply`]: the RESP2 encoder and the error texts;
//! - [`number`], [`float`], [`glob`]: Redis's integer, `long double` and pattern rules.
//!
//! Every command runs with the store locked from start to end, so each is atomic. A command
//! that is not in the table is never approximated: [`supports`] says no and the caller refuses
//! it. Where Redis's choice is unspecified the engine makes its own: SCAN cursors are not
//! Redis's, RANDOMKEY picks its own key, and HSCAN returns a whole hash in one reply (Redis does
//! that for small hashes; for large ones it pages, which the contract allows either way).

mod expiry;
mod float;
mod hashes;
mod keys;
mod number;
mod reply;
mod scan;
mod strings;

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

pub(crate) use number::string2ll;

use crate::command::name_index::{Memo, NameIndex};
use crate::local::store::{Entry, Hash, OutOfMemory, Store, Txn, Value, Watch};
use crate::protocol::request::Request;
pub(crate) use reply::c_str;
use reply::{Error, Reply};

/// Redis's default `databases`: COPY ... DB n must name one of them.
pub const DATABASES: u32 = 16;

/// Redis's default `proto-max-bulk-len`: the longest string APPEND and SETRANGE may build.
pub(crate) const PROTO_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;

type Handler = fn(&mut Call<'_, '_>) -> Result<(), Error>;

/// One supported command.
struct Command {
    /// Lower case, as arity errors quote it.
    name: &'static str,
    /// Redis's arity: exactly `n` arguments (name included) when positive, at least `-n` when
    /// negative.
    arity: i32,
    run: Handler,
}

/// Sorted by name for binary search.
static COMMANDS: &[Command] = &[
    cmd("append", 3, strings::append),
    cmd("copy", -3, keys::copy),
    cmd("dbsize", 1, keys::dbsize),
    cmd("decr", 2, strings::decr),
    cmd("decrby", 3, strings::decrby),
    cmd("del", -2, keys::del),
    cmd("echo", 2, keys::echo),
    cmd("exists", -2, keys::exists),
    cmd("expire", -3, expiry::expire),
    cmd("expireat", -3, expiry::expireat),
    cmd("expiretime", 2, expiry::expiretime),
    cmd("flushdb", -1, keys::flushdb),
    cmd("get", 2, strings::get),
    cmd("getdel", 2, strings::getdel),
    cmd("getex", -2, strings::getex),
    cmd("getrange", 4, strings::getrange),
    cmd("getset", 3, strings::getset),
    cmd("hdel", -3, hashes::hdel),
    cmd("hexists", 3, hashes::hexists),
    cmd("hget", 3, hashes::hget),
    cmd("hgetall", 2, hashes::hgetall),
    cmd("hincrby", 4, hashes::hincrby),
    cmd("hincrbyfloat", 4, hashes::hincrbyfloat),
    cmd("hkeys", 2, hashes::hkeys),
    cmd("hlen", 2, hashes::hlen),
    cmd("hmget", -3, hashes::hmget),
    cmd("hmset", -4, hashes::hmset),
    cmd("hscan", -3, scan::hscan),
    cmd("hset", -4, hashes::hset),
    cmd("hsetnx", 4, hashes::hsetnx),
    cmd("hstrlen", 3, hashes::hstrlen),
    cmd("hvals", 2, hashes::hvals),
    cmd("incr", 2, strings::incr),
    cmd("incrby", 3, strings::incrby),
    cmd("incrbyfloat", 3, strings::incrbyfloat),
    cmd("keys", 2, keys::keys),
    cmd("mget", -2, strings::mget),
    cmd("mset", -3, strings::mset),
    cmd("msetnx", -3, strings::msetnx),
    cmd("persist", 2, expiry::persist),
    cmd("pexpire", -3, expiry::pexpire),
    cmd("pexpireat", -3, expiry::pexpireat),
    cmd("pexpiretime", 2, expiry::pexpiretime),
    cmd("ping", -1, keys::ping),
    cmd("psetex", 4, strings::psetex),
    cmd("pttl", 2, expiry::pttl),
    cmd("randomkey", 1, keys::randomkey),
    cmd("rename", 3, keys::rename),
    cmd("renamenx", 3, keys::renamenx),
    cmd("scan", -2, scan::scan),
    cmd("set", -3, strings::set),
    cmd("setex", 4, strings::setex),
    cmd("setnx", 3, strings::setnx),
    cmd("setrange", 4, strings::setrange),
    cmd("strlen", 2, strings::strlen),
    cmd("touch", -2, keys::touch),
    cmd("ttl", 2, expiry::ttl),
    cmd("type", 2, keys::type_),
    cmd("unlink", -2, keys::unlink),
];

/// Every command the engine serves, lower case, sorted (the fuzzer in `fuzz/` draws from it).
pub(crate) fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS.iter().map(|c| c.name)
}

const fn cmd(name: &'static str, arity: i32, run: Handler) -> Command {
    Command { name, arity, run }
}

fn index() -> &'static NameIndex {
    static INDEX: OnceLock<NameIndex> = OnceLock::new();
    INDEX.get_or_init(|| NameIndex::new(COMMANDS.iter().map(|c| c.name).collect()))
}

/// Redis's reply to a command it does not know, quoting the request as Redis does.
pub(crate) fn unknown_command(req: &Request) -> Bytes {
    let mut out = Reply::continuing(BytesMut::new(), false);
    out.error(&Error::UnknownCommand {
        name: req.name().to_vec(),
        args: req.args().skip(1).map(<[u8]>::to_vec).collect(),
    });
    out.into_buf().freeze()
}

/// Whether the engine implements this command (case-insensitive name; subcommand-less).
pub fn supports(name: &[u8]) -> bool {
    index().find(name).is_some()
}

/// Whether the engine implements a command, remembering the last name it was asked about
/// (one is kept per batch of requests).
#[derive(Debug, Default)]
pub(crate) struct Supports(Memo);

impl Supports {
    /// Whether the engine implements `name` (any case; subcommand-less).
    pub(crate) fn check(&mut self, name: &[u8]) -> bool {
        self.position(name).is_some()
    }

    /// Where `name` is in [`COMMANDS`].
    fn position(&mut self, name: &[u8]) -> Option<usize> {
        self.0.find(index(), name)
    }
}

/// Executes one command for database `db` at unix time `now_ms` and returns the exact RESP2
/// reply Redis 7.0 would send (errors included).
pub fn execute(store: &Store, db: u32, req: &Request, now_ms: u64) -> Bytes {
    let mut out = BytesMut::new();
    execute_all(
        store,
        db,
        false,
        std::slice::from_ref(req),
        now_ms,
        &mut out,
    );
    out.freeze()
}

/// Executes `reqs` in order with the store locked once, appending each reply to `out` (RESP3
/// encoding when `resp3`). Nothing else runs between them: a batch is as atomic as one command,
/// which is what EXEC needs, and one lock and one buffer for a pipelined read is what keeps
/// local serving as fast as Redis.
pub(crate) fn execute_all(
    store: &Store,
    db: u32,
    resp3: bool,
    reqs: &[Request],
    now_ms: u64,
    out: &mut BytesMut,
) {
    if reqs.is_empty() {
        return;
    }
    execute_all_in(&mut store.lock(now_ms), db, resp3, reqs, out);
}

/// [`execute_all`] on a store the caller has locked.
pub(crate) fn execute_all_in(
    txn: &mut Txn<'_>,
    db: u32,
    resp3: bool,
    reqs: &[Request],
    out: &mut BytesMut,
) {
    let mut reply = Reply::continuing(std::mem::take(out), resp3);
    let mut names = Supports::default();
    for (i, req) in reqs.iter().enumerate() {
        if i > 0 {
            reply.begin();
        }
        run_one(txn, db, req, &mut reply, &mut names);
    }
    *out = reply.into_buf();
}

/// EXEC of a transaction served locally: under one lock, checks the client's WATCH, then runs
/// `reqs` (SELECT among them switches the database, as in Redis) and appends the EXEC reply:
/// an array of their replies, or the null reply when a watched key changed. Releases the
/// watch, as EXEC does. Returns the database selected at the end. The caller locks the store.
pub(crate) fn exec_transaction(
    mut txn: Txn<'_>,
    db: u32,
    resp3: bool,
    reqs: &[Request],
    watch: Option<&mut Watch>,
    out: &mut BytesMut,
) -> u32 {
    if let Some(watch) = watch {
        let dirty = txn.watch_dirty(watch);
        txn.unwatch(watch);
        if dirty {
            out.extend_from_slice(if resp3 { b"_\r\n" } else { b"*-1\r\n" });
            return db;
        }
    }
    let mut reply = Reply::continuing(std::mem::take(out), resp3);
    reply.array(reqs.len());
    let mut db = db;
    let mut names = Supports::default();
    for req in reqs {
        reply.begin();
        if req.name().eq_ignore_ascii_case(b"select") {
            // Checked when it was queued: a valid database number.
            if let Some(n) = req.arg(1).and_then(string2ll) {
                db = n as u32;
            }
            reply.ok();
            continue;
        }
        if req.name().eq_ignore_ascii_case(b"unwatch") {
            // The watch was released above, as EXEC does.
            reply.ok();
            continue;
        }
        run_one(&mut txn, db, req, &mut reply, &mut names);
    }
    *out = reply.into_buf();
    db
}

/// Runs one command on the locked store, its reply appended to `out`.
///
/// `names` is shared by the requests of a batch, which mostly repeat one command: comparing
/// its name with the last one costs less than looking it up again (115 instructions under
/// callgrind, about a twentieth of a local GET).
fn run_one(txn: &mut Txn<'_>, db: u32, req: &Request, out: &mut Reply, names: &mut Supports) {
    let Some(index) = names.position(req.name()) else {
        out.error(&Error::UnknownCommand {
            name: req.name().to_vec(),
            args: req.args().skip(1).map(<[u8]>::to_vec).collect(),
        });
        return;
    };
    let command = &COMMANDS[index];
    let argc = req.argc() as i32;
    if (command.arity > 0 && argc != command.arity) || argc < -command.arity {
        out.error(&Error::Arity(command.name));
        return;
    }
    let mut ctx = Call {
        txn,
        db,
        req,
        out: std::mem::take(out),
        name: command.name,
    };
    if let Err(error) = (command.run)(&mut ctx) {
        ctx.out.clear();
        ctx.out.error(&error);
    }
    *out = ctx.out;
}

/// What a handler works with: the locked store, the request, the reply.
struct Call<'a, 's> {
    txn: &'a mut Txn<'s>,
    db: u32,
    req: &'a Request,
    out: Reply,
    /// The command's lower-case name (for `invalid expire time in '...'` and arity errors).
    name: &'static str,
}

impl<'a> Call<'a, '_> {
    fn argc(&self) -> usize {
        self.req.argc()
    }

    /// Argument `i` (0 is the command name); arity was checked before the handler runs.
    fn arg(&self, i: usize) -> &'a [u8] {
        self.req.arg(i).unwrap_or_default()
    }

    fn now(&self) -> i64 {
        self.txn.now() as i64
    }

    /// Argument `i` as Redis's `getLongLongFromObjectOrReply` reads it.
    fn int_arg(&self, i: usize) -> Result<i64, Error> {
        number::string2ll(self.arg(i)).ok_or(Error::NotInteger)
    }
}

/// True when a C-string view of `arg` equals `word`, ignoring ASCII case (Redis compares
/// options with `strcasecmp`, which stops at a NUL byte).
fn is_option(arg: &[u8], word: &str) -> bool {
    c_str(arg).eq_ignore_ascii_case(word.as_bytes())
}

/// The string held by a key: `None` for no key, WRONGTYPE for another type.
fn as_str(entry: Option<&Entry>) -> Result<Option<&[u8]>, Error> {
    match entry.map(Entry::value) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Error::WrongType),
    }
}

/// The hash held by a key: `None` for no key, WRONGTYPE for another type.
fn as_hash(entry: Option<&Entry>) -> Result<Option<&Hash>, Error> {
    match entry.map(Entry::value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(Error::WrongType),
    }
}

impl From<OutOfMemory> for Error {
    fn from(_: OutOfMemory) -> Error {
        Error::OutOfMemory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_lower_case() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(COMMANDS
            .iter()
            .all(|c| c.name == c.name.to_ascii_lowercase()));
    }

    #[test]
    fn supports_is_case_insensitive_and_strict() {
        for yes in ["get", "GET", "gEt", "hincrbyfloat", "PING", "pexpiretime"] {
            assert!(supports(yes.as_bytes()), "{yes}");
            assert!(Supports::default().check(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "GETX",
            "LPUSH",
            "SELECT",
            "MULTI",
            "EVAL",
            "OBJECT",
            "get\0",
            "FLUSHALL",
            "SSCAN",
            "HRANDFIELD",
            "LCS",
            "MOVE",
            "SWAPDB",
        ] {
            assert!(!supports(no.as_bytes()), "{no}");
            assert!(!Supports::default().check(no.as_bytes()), "{no}");
        }
    }

    fn run(store: &Store, now: u64, args: &[&str]) -> String {
        let reply = execute(store, 0, &Request::from_args(args), now);
        String::from_utf8_lossy(&reply).into_owned()
    }

    const OOM: &str = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";

    #[test]
    fn entries_larger_than_the_budget_are_refused_and_evict_nothing() {
        let store = Store::new(crate::local::store::entry_bytes(1, 100) * 3);
        assert_eq!(run(&store, 0, &["SET", "a", "1"]), "+OK\r\n");
        assert_eq!(run(&store, 0, &["HSET", "h", "f", "v"]), ":1\r\n");
        let huge = "x".repeat(1000);
        for args in [
            vec!["SET", "b", &huge],
            vec!["SET", "a", &huge],
            vec!["GETSET", "a", &huge],
            vec!["APPEND", "a", &huge],
            vec!["SETRANGE", "a", "900", "x"],
            vec!["MSET", "c", "1", "d", &huge],
            vec!["HSET", "h", "g", &huge],
            vec!["HSET", "new", "g", &huge],
        ] {
            assert_eq!(run(&store, 0, &args), OOM, "{args:?}");
        }
        assert_eq!(store.evictions(), 0);
        assert_eq!(
            run(&store, 0, &["MGET", "a", "c"]),
            "*2\r\n$1\r\n1\r\n$-1\r\n"
        );
        assert_eq!(
            run(&store, 0, &["HGETALL", "h"]),
            "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(run(&store, 0, &["DBSIZE"]), ":2\r\n");
    }

    #[test]
    fn new_keys_evict_the_least_recently_used() {
        let store = Store::new(crate::local::store::entry_bytes(2, 1) * 3);
        for key in ["k1", "k2", "k3"] {
            run(&store, 0, &["SET", key, "v"]);
        }
        // Reads and writes count as use; EXISTS, TYPE and TTL do not.
        run(&store, 0, &["GET", "k1"]);
        run(&store, 0, &["EXISTS", "k2"]);
        run(&store, 0, &["TYPE", "k2"]);
        run(&store, 0, &["TTL", "k2"]);
        run(&store, 0, &["INCR", "k3"]);
        run(&store, 0, &["SET", "k4", "v"]);
        assert_eq!(
            run(&store, 0, &["EXISTS", "k1", "k2", "k3", "k4"]),
            ":3\r\n"
        );
        assert_eq!(run(&store, 0, &["EXISTS", "k2"]), ":0\r\n");
        assert_eq!(store.evictions(), 1);
        // Growing a key past the budget evicts the least recently used other key, never the
        // key written.
        run(&store, 0, &["APPEND", "k1", "more bytes"]);
        assert_eq!(store.evictions(), 2);
        assert_eq!(run(&store, 0, &["EXISTS", "k1", "k3", "k4"]), ":2\r\n");
        assert_eq!(run(&store, 0, &["GET", "k1"]), "$11\r\nvmore bytes\r\n");
        assert!(store.used_bytes() <= store.max_bytes());
    }

    #[test]
    fn expired_keys_are_invisible_to_every_command() {
        let store = Store::new(1 << 20);
        run(&store, 1_000, &["SET", "k", "v", "PX", "100"]);
        run(&store, 1_000, &["HSET", "h", "f", "v"]);
        run(&store, 1_000, &["PEXPIRE", "h", "100"]);
        assert_eq!(run(&store, 1_100, &["PTTL", "k"]), ":0\r\n");
        let later = 1_101;
        assert_eq!(run(&store, later, &["GET", "k"]), "$-1\r\n");
        assert_eq!(run(&store, later, &["EXISTS", "h"]), ":0\r\n");
        assert_eq!(run(&store, later, &["TTL", "h"]), ":-2\r\n");
        assert_eq!(run(&store, later, &["DBSIZE"]), ":0\r\n");
        assert_eq!(run(&store, later, &["KEYS", "*"]), "*0\r\n");
        assert_eq!(
            run(&store, later, &["SCAN", "0"]),
            "*2\r\n$1\r\n0\r\n*0\r\n"
        );
        assert_eq!(run(&store, later, &["RANDOMKEY"]), "$-1\r\n");
        assert_eq!(run(&store, later, &["INCR", "k"]), ":1\r\n");
        assert_eq!(run(&store, later, &["TTL", "k"]), ":-1\r\n");
        assert_eq!(store.expirations(), 2);
        assert_eq!(store.evictions(), 0);
    }

    #[test]
    fn set_nx_has_one_winner_under_concurrency() {
        let store = std::sync::Arc::new(Store::new(1 << 20));
        for round in 0..20 {
            let key = format!("lock{round}");
            let winners = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8)
                    .map(|id| {
                        let (store, key) = (&store, &key);
                        s.spawn(move || {
                            let id = id.to_string();
                            let args = ["SET", key.as_str(), id.as_str(), "NX", "PX", "10000"];
                            run(store, 0, &args) == "+OK\r\n"
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|r| r.join().unwrap())
                    .filter(|won| *won)
                    .count()
            });
            assert_eq!(winners, 1, "{key}");
        }
    }

    #[test]
    fn databases_are_separate() {
        let store = Store::new(1 << 20);
        let run_in = |db: u32, args: &[&str]| {
            String::from_utf8_lossy(&execute(&store, db, &Request::from_args(args), 0)).into_owned()
        };
        run_in(0, &["SET", "k", "zero"]);
        run_in(3, &["SET", "k", "three"]);
        assert_eq!(run_in(0, &["GET", "k"]), "$4\r\nzero\r\n");
        assert_eq!(run_in(3, &["GET", "k"]), "$5\r\nthree\r\n");
        assert_eq!(run_in(3, &["COPY", "k", "k", "DB", "5"]), ":1\r\n");
        assert_eq!(run_in(5, &["GET", "k"]), "$5\r\nthree\r\n");
        assert_eq!(run_in(0, &["FLUSHDB"]), "+OK\r\n");
        assert_eq!(run_in(0, &["DBSIZE"]), ":0\r\n");
        assert_eq!(run_in(3, &["DBSIZE"]), ":1\r\n");
    }

    #[test]
    fn arity_errors_quote_the_lower_case_name() {
        let store = Store::new(1 << 20);
        let run = |args: &[&str]| execute(&store, 0, &Request::from_args(args), 0);
        assert_eq!(
            &run(&["GeT"])[..],
            b"-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            &run(&["SET", "k"])[..],
            b"-ERR wrong number of arguments for 'set' command\r\n"
        );
        assert_eq!(
            &run(&["dbsize", "x"])[..],
            b"-ERR wrong number of arguments for 'dbsize' command\r\n"
        );
        assert_eq!(&run(&["PING"])[..], b"+PONG\r\n");
    }
}
