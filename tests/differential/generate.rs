//! The differential test's inputs: random command sequences (and a fixed corpus of tricky
//! cases), each command tagged with how its reply is to be compared.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// How a reply is compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    Exact,
    /// An integer: equal when either is negative, else within this tolerance.
    Time(i64),
    /// An array compared as a set (KEYS).
    Set,
    /// SCAN 0 with a large COUNT: cursor 0 on both, same keys.
    ScanFull,
    /// SCAN from some cursor: the same error, or two well-formed replies.
    ScanLoose,
    /// Exact while Redis's hash is a listpack; Redis gets an extra OBJECT ENCODING after it.
    HashRead(HashRead),
    RandomKey,
    /// Handled by the harness: Redis gets SELECT, the engine switches database.
    Select(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HashRead {
    All,
    Keys,
    Vals,
    Scan,
}

pub struct Cmd {
    pub args: Vec<Vec<u8>>,
    pub check: Check,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const KEYS: &[&[u8]] = &[
    b"k1",
    b"k2",
    b"k3",
    b"h1",
    b"h2",
    b"n",
    b"",
    b"bin\x00\r\n\xff",
    b"k*",
    b"\xc3\xa9t\xc3\xa9",
    b"a:b:c",
    b"[k]",
    // Either side of the longest key the store holds inline (34 bytes), and a long one.
    b"ratelimit:user:4242:window:0000034",
    b"ratelimit:user:4242:window:00000035",
    b"session:7f3a9c2e-5b1d-4e8a-9f60-2c4d8b1a7e35:profile:settings:v2",
];

const STRING_KEYS: &[&[u8]] = &[
    b"k1",
    b"k2",
    b"n",
    b"",
    b"bin\x00\r\n\xff",
    b"ratelimit:user:4242:window:0000034",
    b"ratelimit:user:4242:window:00000035",
];
const HASH_KEYS: &[&[u8]] = &[
    b"h1",
    b"h2",
    b"bin\x00\r\n\xff",
    b"session:7f3a9c2e-5b1d-4e8a-9f60-2c4d8b1a7e35:profile:settings:v2",
];

const FIELDS: &[&[u8]] = &[
    b"f1",
    b"f2",
    b"f3",
    b"n",
    b"",
    b"x\x00y",
    b"fi*eld",
    b"0123456789012345678901234567890123456789012345678901234567890123456789",
];

const INTEGERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "5",
    "100",
    "-42",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775806",
    "-9223372036854775807",
    "9223372036854775808",
    "abc",
    "1.5",
    "",
    "01",
    " 1",
    "+1",
    "-0",
    "1\x00",
];

const FLOATS: &[&str] = &[
    "0.1",
    "0.2",
    "1.5",
    "-2.25",
    "1e3",
    "3.0e-5",
    "0x10",
    "0X1.8p1",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "abc",
    "1e5000",
    "1e-5000",
    "5e-324",
    "1.7976931348623157e308",
    "1e300",
    "-1e300",
    "0.000003814697265625",
    " 1",
    "1 ",
    "",
    "+1",
    ".5",
    "5.",
    "1e",
    "10",
    "-10",
    "123456789.123456789",
    "1e-20",
];

const WORDS: &[&[u8]] = &[
    b"v",
    b"hello",
    b"",
    b"a\r\nb",
    b"\x00\x01\xff",
    b"12",
    b"-7",
    b"3.5",
    b"0123456789012345678901234567890123456789012345678901234567890123456789xyz",
];

pub const PATTERNS: &[&[u8]] = &[
    b"*", b"k*", b"h?", b"[kh]*", b"[^k]*", b"*\\*", b"[a-]", b"\\", b"[", b"*1", b"?", b"", b"**",
    b"k[1-2]", b"*\x00*", b"bin*", b"\\[k]", b"[\\]]*", b"*:*", b"f*", b"*e*",
];

pub const TYPES: &[&str] = &[
    "string", "hash", "STRING", "Hash", "none", "list", "bogus", "",
];

/// TYPES without "none": Redis's SCAN TYPE none returns a key that had logically expired
/// (its type lookup deletes it, so the expiry filter after it no longer sees a deadline),
/// once. The engine never returns an expired key.
pub const TYPES_NOT_NONE: &[&str] = &["string", "hash", "STRING", "Hash", "list", "bogus", ""];

struct Gen {
    rng: StdRng,
    now_s: i64,
    /// Next unique relative deadline.
    uniq: i64,
    /// Edge values already drawn as relative deadlines: each at most once per sequence, since
    /// some are valid deadlines in milliseconds, and one drawn twice would make a reply (GT,
    /// LT, TTL) depend on which millisecond each side ran in.
    edges_used: Vec<&'static str>,
    /// SET may use EXAT/PXAT in the past (then no DBSIZE).
    past_set: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum When {
    /// EX, EXPIRE: seconds from now.
    RelSec,
    /// PX, PEXPIRE: milliseconds from now.
    RelMs,
    /// EXAT, EXPIREAT: unix seconds.
    AbsSec,
    /// PXAT, PEXPIREAT: unix milliseconds.
    AbsMs,
}

impl Gen {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *items.choose(&mut self.rng).unwrap()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn key(&mut self) -> Vec<u8> {
        self.pick(KEYS).to_vec()
    }

    /// A key that usually holds a string (or nothing); any key now and then (WRONGTYPE).
    fn string_key(&mut self) -> Vec<u8> {
        if self.chance(0.8) {
            self.pick(STRING_KEYS).to_vec()
        } else {
            self.key()
        }
    }

    /// A key that usually holds a hash (or nothing); any key now and then.
    fn hash_key(&mut self) -> Vec<u8> {
        if self.chance(0.8) {
            self.pick(HASH_KEYS).to_vec()
        } else {
            self.key()
        }
    }

    fn keys(&mut self, max: usize) -> Vec<Vec<u8>> {
        let n = self.rng.gen_range(1..=max);
        (0..n).map(|_| self.key()).collect()
    }

    fn field(&mut self) -> Vec<u8> {
        self.pick(FIELDS).to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..10) {
            0..=3 => self.pick(INTEGERS).as_bytes().to_vec(),
            4..=5 => self.pick(FLOATS).as_bytes().to_vec(),
            6 => {
                let len = self.rng.gen_range(0..100);
                (0..len).map(|_| self.rng.gen()).collect()
            }
            _ => self.pick(WORDS).to_vec(),
        }
    }

    fn int(&mut self) -> Vec<u8> {
        if self.chance(0.6) {
            self.rng.gen_range(-20i64..20).to_string().into_bytes()
        } else {
            self.pick(INTEGERS).as_bytes().to_vec()
        }
    }

    fn float(&mut self) -> Vec<u8> {
        if self.chance(0.3) {
            let v: f64 = self.rng.gen_range(-1000.0..1000.0);
            format!("{v:.3}").into_bytes()
        } else {
            self.pick(FLOATS).as_bytes().to_vec()
        }
    }

    fn pattern(&mut self) -> Vec<u8> {
        self.pick(PATTERNS).to_vec()
    }

    /// A time argument. Relative ones are either unique and far in the future, not in the
    /// future at all, or invalid; absolute ones are far in the past or future (or invalid), so
    /// neither side's clock matters.
    fn when(&mut self, kind: When, set: bool) -> Vec<u8> {
        let roll = self.rng.gen_range(0..100);
        const EDGES: &[&str] = &[
            "9223372036854775807",
            "9223372036854775",
            "9223372036854776",
            "-9223372036854775808",
            "-9223372036854775",
            "9223370000000000000",
            "9223372036854775806",
        ];
        let fresh: Vec<&'static str> = (EDGES.iter().copied())
            .filter(|e| !self.edges_used.contains(e))
            .collect();
        let roll = match roll {
            90.. if fresh.is_empty() => 0,
            r => r,
        };
        let text = match kind {
            When::RelSec | When::RelMs => match roll {
                0..=69 => {
                    let secs = 100_000 + 1000 * self.uniq;
                    self.uniq += 1;
                    if kind == When::RelSec {
                        secs.to_string()
                    } else {
                        (secs * 1000 + 500_000).to_string()
                    }
                }
                70..=77 => self.pick(&["0", "-1", "-100000"]).to_string(),
                78..=89 => self.pick(&["abc", "", "1.5", " 5"]).to_string(),
                _ => {
                    let edge = self.pick(&fresh);
                    self.edges_used.push(edge);
                    edge.to_string()
                }
            },
            When::AbsSec | When::AbsMs => {
                let scale = if kind == When::AbsSec { 1 } else { 1000 };
                match roll {
                    0..=39 if !set || self.past_set => {
                        let past = self.pick(&[1i64, 1000, 1_500_000_000, self.now_s - 100_000]);
                        (past * scale + self.rng.gen_range(0..scale)).to_string()
                    }
                    0..=79 => {
                        let future = self.now_s + 10_000_000 + self.rng.gen_range(0..1_000_000);
                        (future * scale + self.rng.gen_range(0..scale)).to_string()
                    }
                    80..=87 => self.pick(&["0", "-1", "abc", ""]).to_string(),
                    _ => self
                        .pick(&[
                            "9223372036854775807",
                            "9223372036854775",
                            "9223372036854776",
                            "-9223372036854775808",
                        ])
                        .to_string(),
                }
            }
        };
        text.into_bytes()
    }

    fn name(&mut self, name: &str) -> Vec<u8> {
        match self.rng.gen_range(0..3) {
            0 => name.to_ascii_lowercase().into_bytes(),
            1 => name.to_ascii_uppercase().into_bytes(),
            _ => name
                .bytes()
                .map(|b| {
                    if self.rng.gen() {
                        b.to_ascii_lowercase()
                    } else {
                        b.to_ascii_uppercase()
                    }
                })
                .collect(),
        }
    }

    /// SET/GETEX options, mostly valid combinations, sometimes clashing or junk.
    fn string_options(&mut self, set: bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let n = self.rng.gen_range(0..=3);
        for _ in 0..n {
            let opt = if set {
                self.pick(&[
                    "NX", "XX", "GET", "KEEPTTL", "EX", "PX", "EXAT", "PXAT", "nx", "get", "ex",
                    "px", "bogus", "PERSIST",
                ])
            } else {
                self.pick(&[
                    "EX", "PX", "EXAT", "PXAT", "PERSIST", "persist", "ex", "bogus", "GET",
                    "KEEPTTL",
                ])
            };
            out.push(opt.as_bytes().to_vec());
            let kind = match opt.to_ascii_uppercase().as_str() {
                "EX" => Some(When::RelSec),
                "PX" => Some(When::RelMs),
                "EXAT" => Some(When::AbsSec),
                "PXAT" => Some(When::AbsMs),
                _ => None,
            };
            if let Some(kind) = kind {
                // Sometimes the value is missing: a syntax error.
                if !self.chance(0.05) {
                    out.push(self.when(kind, set));
                }
            }
        }
        out
    }

    fn command(&mut self) -> Cmd {
        let exact = Check::Exact;
        let (name, mut args, check): (&str, Vec<Vec<u8>>, Check) = match self.rng.gen_range(0..62) {
            0 => (
                "PING",
                if self.chance(0.5) {
                    vec![]
                } else {
                    vec![self.value()]
                },
                exact,
            ),
            1 => ("ECHO", vec![self.value()], exact),
            2..=4 => ("GET", vec![self.string_key()], exact),
            5..=8 => {
                let mut args = vec![self.string_key(), self.value()];
                args.extend(self.string_options(true));
                ("SET", args, exact)
            }
            9 => ("SETNX", vec![self.string_key(), self.value()], exact),
            10 => (
                "SETEX",
                vec![
                    self.string_key(),
                    self.when(When::RelSec, true),
                    self.value(),
                ],
                exact,
            ),
            11 => (
                "PSETEX",
                vec![
                    self.string_key(),
                    self.when(When::RelMs, true),
                    self.value(),
                ],
                exact,
            ),
            12 => ("GETSET", vec![self.string_key(), self.value()], exact),
            13 => ("GETDEL", vec![self.string_key()], exact),
            14 => {
                let mut args = vec![self.string_key()];
                args.extend(self.string_options(false));
                ("GETEX", args, exact)
            }
            15 => ("MGET", self.keys(4), exact),
            16 | 17 => {
                let mut args = Vec::new();
                for _ in 0..self.rng.gen_range(1..=3) {
                    args.push(self.string_key());
                    args.push(self.value());
                }
                let name = if self.chance(0.5) { "MSET" } else { "MSETNX" };
                (name, args, exact)
            }
            18 | 19 => ("INCR", vec![self.string_key()], exact),
            20 => ("DECR", vec![self.string_key()], exact),
            21 => ("INCRBY", vec![self.string_key(), self.int()], exact),
            22 => ("DECRBY", vec![self.string_key(), self.int()], exact),
            23 | 24 => ("INCRBYFLOAT", vec![self.string_key(), self.float()], exact),
            25 => ("APPEND", vec![self.string_key(), self.value()], exact),
            26 => ("STRLEN", vec![self.string_key()], exact),
            27 => (
                "GETRANGE",
                vec![self.string_key(), self.int(), self.int()],
                exact,
            ),
            28 => {
                let offset = if self.chance(0.8) {
                    self.rng.gen_range(0..20).to_string().into_bytes()
                } else {
                    self.pick(&["-1", "abc", "536870912", "536870911"])
                        .as_bytes()
                        .to_vec()
                };
                let value = if offset == b"536870911" {
                    b"xy".to_vec()
                } else {
                    self.value()
                };
                ("SETRANGE", vec![self.string_key(), offset, value], exact)
            }
            29 | 30 => {
                let name = self.pick(&["DEL", "UNLINK", "EXISTS", "TOUCH"]);
                (name, self.keys(3), exact)
            }
            31 => ("TYPE", vec![self.string_key()], exact),
            32..=35 => {
                let (name, kind) = self.pick(&[
                    ("EXPIRE", When::RelSec),
                    ("PEXPIRE", When::RelMs),
                    ("EXPIREAT", When::AbsSec),
                    ("PEXPIREAT", When::AbsMs),
                ]);
                let mut args = vec![self.string_key(), self.when(kind, false)];
                for _ in 0..self.rng.gen_range(0..=2) {
                    let opt = self.pick(&["NX", "XX", "GT", "LT", "gt", "bogus", "nx\r\n"]);
                    args.push(opt.as_bytes().to_vec());
                }
                (name, args, exact)
            }
            36 | 37 => {
                let (name, tolerance) = self.pick(&[
                    ("TTL", 2),
                    ("PTTL", 2000),
                    ("EXPIRETIME", 2),
                    ("PEXPIRETIME", 2000),
                ]);
                (name, vec![self.string_key()], Check::Time(tolerance))
            }
            38 => ("PERSIST", vec![self.string_key()], exact),
            39 => {
                let name = self.pick(&["RENAME", "RENAMENX"]);
                (name, vec![self.string_key(), self.string_key()], exact)
            }
            40 => {
                let mut args = vec![self.string_key(), self.string_key()];
                for _ in 0..self.rng.gen_range(0..=2) {
                    match self.rng.gen_range(0..4) {
                        0 => args.push(b"REPLACE".to_vec()),
                        1 | 2 => {
                            args.push(b"DB".to_vec());
                            let db = self.pick(&["0", "1", "2", "16", "-1", "abc", "4294967296"]);
                            args.push(db.as_bytes().to_vec());
                        }
                        _ => args.push(b"bogus".to_vec()),
                    }
                }
                ("COPY", args, exact)
            }
            41 | 42 => self.scan(),
            43 => ("KEYS", vec![self.pattern()], Check::Set),
            44 if !self.past_set => ("DBSIZE", vec![], exact),
            44 => ("EXISTS", vec![self.string_key()], exact),
            45 => {
                let args = match self.rng.gen_range(0..10) {
                    0 => vec![b"ASYNC".to_vec()],
                    1 => vec![b"sync".to_vec()],
                    2 => vec![b"bogus".to_vec()],
                    _ => return self.command(),
                };
                ("FLUSHDB", args, exact)
            }
            46 => ("RANDOMKEY", vec![], Check::RandomKey),
            47..=49 => {
                let mut args = vec![self.hash_key()];
                for _ in 0..self.rng.gen_range(1..=3) {
                    args.push(self.field());
                    args.push(self.value());
                }
                let name = if self.chance(0.8) { "HSET" } else { "HMSET" };
                (name, args, exact)
            }
            50 => (
                "HSETNX",
                vec![self.hash_key(), self.field(), self.value()],
                exact,
            ),
            51 => ("HGET", vec![self.hash_key(), self.field()], exact),
            52 => {
                let mut args = vec![self.hash_key()];
                for _ in 0..self.rng.gen_range(1..=3) {
                    args.push(self.field());
                }
                let name = if self.chance(0.5) { "HMGET" } else { "HDEL" };
                (name, args, exact)
            }
            53 => {
                let name = self.pick(&["HEXISTS", "HSTRLEN"]);
                (name, vec![self.hash_key(), self.field()], exact)
            }
            54 => ("HLEN", vec![self.hash_key()], exact),
            55 => {
                let (name, read) = self.pick(&[
                    ("HGETALL", HashRead::All),
                    ("HKEYS", HashRead::Keys),
                    ("HVALS", HashRead::Vals),
                ]);
                (name, vec![self.hash_key()], Check::HashRead(read))
            }
            56 => (
                "HINCRBY",
                vec![self.hash_key(), self.field(), self.int()],
                exact,
            ),
            57 => (
                "HINCRBYFLOAT",
                vec![self.hash_key(), self.field(), self.float()],
                exact,
            ),
            58 => {
                let cursor = self.pick(&["0", "0", "0", "7", "abc", "-1", ""]);
                let mut args = vec![self.hash_key(), cursor.as_bytes().to_vec()];
                args.extend(self.scan_options(false));
                ("HSCAN", args, Check::HashRead(HashRead::Scan))
            }
            59 if self.chance(0.15) => {
                // A hash past the listpack entry limit: Redis turns it into a table (rare:
                // the engine's debug build spends a while on 500 linear listpack inserts).
                let mut args = vec![self.hash_key()];
                for i in 0..self.rng.gen_range(500..530) {
                    args.push(format!("bulk{i}").into_bytes());
                    args.push(i.to_string().into_bytes());
                }
                ("HSET", args, exact)
            }
            60 => {
                let db = self.rng.gen_range(0..3);
                return Cmd {
                    args: vec![b"SELECT".to_vec(), db.to_string().into_bytes()],
                    check: Check::Select(db),
                };
            }
            _ => ("GET", vec![self.key()], exact),
        };
        // Now and then, a wrong number of arguments.
        if self.chance(0.03) {
            if !args.is_empty() && self.chance(0.5) {
                args.pop();
            } else {
                args.push(self.value());
            }
        }
        let mut full = vec![self.name(name)];
        full.extend(args);
        Cmd { args: full, check }
    }

    fn types(&self) -> &'static [&'static str] {
        if self.past_set {
            TYPES_NOT_NONE
        } else {
            TYPES
        }
    }

    fn scan_options(&mut self, with_type: bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..self.rng.gen_range(0..=2) {
            match self.rng.gen_range(0..10) {
                0..=3 => {
                    out.push(b"MATCH".to_vec());
                    out.push(self.pattern());
                }
                4..=5 if with_type => {
                    out.push(b"TYPE".to_vec());
                    let types = self.types();
                    out.push(self.pick(types).as_bytes().to_vec());
                }
                4..=7 => {
                    out.push(b"COUNT".to_vec());
                    let count = self.pick(&["1000", "5", "0", "-1", "abc"]);
                    out.push(count.as_bytes().to_vec());
                }
                8 => out.push(b"bogus".to_vec()),
                _ => out.push(b"COUNT".to_vec()),
            }
        }
        out
    }

    fn scan(&mut self) -> (&'static str, Vec<Vec<u8>>, Check) {
        if self.chance(0.7) {
            // Complete in one call on both sides.
            let mut args = vec![b"0".to_vec(), b"COUNT".to_vec(), b"1000".to_vec()];
            if self.chance(0.6) {
                args.push(b"MATCH".to_vec());
                args.push(self.pattern());
            }
            if self.chance(0.4) {
                args.push(b"TYPE".to_vec());
                let types = self.types();
                args.push(self.pick(types).as_bytes().to_vec());
            }
            return ("SCAN", args, Check::ScanFull);
        }
        let cursor = self.pick(&["0", "12345", "abc", " 1", "-1", "", "18446744073709551616"]);
        let mut args = vec![cursor.as_bytes().to_vec()];
        args.extend(self.scan_options(true));
        ("SCAN", args, Check::ScanLoose)
    }
}

pub fn generate(seed: u64) -> (Vec<Cmd>, bool) {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        now_s: (now_ms() / 1000) as i64,
        uniq: 0,
        edges_used: Vec::new(),
        past_set: false,
    };
    g.past_set = g.chance(0.5);
    let n = g.rng.gen_range(5..40);
    let cmds = (0..n).map(|_| g.command()).collect();
    (cmds, g.past_set)
}

/// Hand-picked cases where Redis's behaviour is easy to get wrong: C-string options cut at a
/// NUL byte, CR/LF in quoted options, integer wrap-around in EXPIRETIME, `long double` edge
/// values, glob quirks, listpack order and its conversion. Run before the random sequences.
pub fn corpus() -> Vec<Cmd> {
    let far = (now_ms() / 1000 + 20_000_000).to_string();
    let cases: Vec<(Vec<&[u8]>, Check)> = vec![
        (
            vec![b"SET", b"k", b"v", b"EX", b"100000", b"EX", b"200000"],
            Check::Exact,
        ),
        (vec![b"TTL", b"k"], Check::Time(2)),
        (vec![b"SET", b"k", b"w", b"nx\x00junk"], Check::Exact),
        (vec![b"SET", b"k", b"w", b"XX", b"NX"], Check::Exact),
        (
            vec![b"SET", b"k", b"w", b"KEEPTTL", b"PX", b"100"],
            Check::Exact,
        ),
        (
            vec![b"SET", b"k", b"w", b"GET", b"GET", b"KEEPTTL"],
            Check::Exact,
        ),
        (vec![b"SET", b"k", b"w", b"EX"], Check::Exact),
        (vec![b"SET", b"k", b"w", b"EX", b"0"], Check::Exact),
        (
            vec![b"SET", b"k", b"w", b"PX", b"9223372036854775807"],
            Check::Exact,
        ),
        (
            vec![b"SET", b"gone", b"v", b"EXAT", b"1", b"GET"],
            Check::Exact,
        ),
        (vec![b"GET", b"gone"], Check::Exact),
        (vec![b"SET", b"k2", b"v"], Check::Exact),
        (
            vec![b"PEXPIREAT", b"k2", b"9223372036854775807"],
            Check::Exact,
        ),
        (vec![b"EXPIRETIME", b"k2"], Check::Exact),
        (vec![b"PEXPIRETIME", b"k2"], Check::Exact),
        (
            vec![b"EXPIREAT", b"k2", far.as_bytes(), b"gt\x00x"],
            Check::Exact,
        ),
        (
            vec![b"EXPIREAT", b"k2", far.as_bytes(), b"lt\x00x"],
            Check::Exact,
        ),
        (vec![b"EXPIRETIME", b"k2"], Check::Exact),
        (vec![b"EXPIRE", b"k2", b"10", b"g\r\nt"], Check::Exact),
        (vec![b"EXPIRE", b"k2", b"10", b"\r\nx\r\n"], Check::Exact),
        (vec![b"EXPIRE", b"k2", b"10", b"a\x00b"], Check::Exact),
        (vec![b"EXPIRE", b"k2", b"10", b"NX", b"XX"], Check::Exact),
        (vec![b"EXPIRE", b"k2", b"10", b"GT", b"LT"], Check::Exact),
        (
            vec![b"EXPIRE", b"k2", b"-9223372036854775808"],
            Check::Exact,
        ),
        (vec![b"PERSIST", b"k2"], Check::Exact),
        (
            vec![b"GETEX", b"k2", b"PERSIST", b"EX", b"10"],
            Check::Exact,
        ),
        (vec![b"GETEX", b"missing", b"EX", b"abc"], Check::Exact),
        (vec![b"GETEX", b"k2", b"EX", b"abc"], Check::Exact),
        (vec![b"GETEX", b"k2", b"PXAT", b"1"], Check::Exact),
        (vec![b"EXISTS", b"k2", b"k2", b"k"], Check::Exact),
        (vec![b"SCAN", b"5\x00junk"], Check::ScanLoose),
        (vec![b"SCAN", b"", b"COUNT", b"1000"], Check::ScanFull),
        (
            vec![b"SCAN", b"0", b"COUNT", b"1000", b"TYPE", b"string\x00x"],
            Check::ScanFull,
        ),
        (vec![b"SCAN", b"0", b"COUNT"], Check::Exact),
        (vec![b"SCAN", b"0", b"COUNT", b"0"], Check::Exact),
        (vec![b"HSCAN", b"nothing", b"abc"], Check::Exact),
        (vec![b"HSCAN", b"nothing", b"0", b"bogus"], Check::Exact),
        (
            vec![
                b"MSET", b"]", b"1", b"_", b"2", b"b", b"3", b"\\", b"4", b"a*", b"5",
            ],
            Check::Exact,
        ),
        (vec![b"KEYS", b"[a-]"], Check::Set),
        (vec![b"KEYS", b"\\"], Check::Set),
        (vec![b"KEYS", b"a\\*"], Check::Set),
        (vec![b"KEYS", b"[\\]]"], Check::Set),
        (vec![b"KEYS", b"[^a-z]"], Check::Set),
        (vec![b"KEYS", b"["], Check::Set),
        (vec![b"INCRBYFLOAT", b"f", b"0x1p-16400"], Check::Exact),
        (vec![b"INCRBYFLOAT", b"f", b"1e4931"], Check::Exact),
        (vec![b"INCRBYFLOAT", b"f", b"1e4932"], Check::Exact),
        (
            vec![b"INCRBYFLOAT", b"g", b"0.000003814697265625"],
            Check::Exact,
        ),
        (
            vec![b"INCRBYFLOAT", b"g", b"-0.000003814697265625"],
            Check::Exact,
        ),
        (vec![b"INCRBYFLOAT", b"g", b"1e-30"], Check::Exact),
        (vec![b"SET", b"n", b"9223372036854775807"], Check::Exact),
        (vec![b"INCR", b"n"], Check::Exact),
        (vec![b"DECRBY", b"n", b"-9223372036854775808"], Check::Exact),
        (vec![b"INCRBYFLOAT", b"n", b"1"], Check::Exact),
        (vec![b"GETRANGE", b"n", b"-1", b"-100"], Check::Exact),
        (vec![b"GETRANGE", b"n", b"-100", b"-1"], Check::Exact),
        (vec![b"GETRANGE", b"n", b"5", b"3"], Check::Exact),
        (vec![b"GETRANGE", b"missing", b"0", b"-1"], Check::Exact),
        (vec![b"SETRANGE", b"new", b"5", b""], Check::Exact),
        (vec![b"SETRANGE", b"n", b"3", b""], Check::Exact),
        (vec![b"SETRANGE", b"n", b"536870911", b"xy"], Check::Exact),
        (vec![b"SETRANGE", b"n", b"25", b"x"], Check::Exact),
        (vec![b"GET", b"n"], Check::Exact),
        (
            vec![b"HSET", b"h", b"b", b"1", b"a", b"2", b"c", b"3"],
            Check::Exact,
        ),
        (vec![b"HSET", b"h", b"b", b"9"], Check::Exact),
        (vec![b"HDEL", b"h", b"a", b"a"], Check::Exact),
        (vec![b"HGETALL", b"h"], Check::HashRead(HashRead::All)),
        (
            vec![b"HSCAN", b"h", b"99", b"COUNT", b"1", b"MATCH", b"[bc]"],
            Check::HashRead(HashRead::Scan),
        ),
        (vec![b"HINCRBYFLOAT", b"h", b"big", b"1e300"], Check::Exact),
        (vec![b"HGETALL", b"h"], Check::HashRead(HashRead::All)),
        (vec![b"HINCRBYFLOAT", b"h", b"b", b"inf"], Check::Exact),
        (vec![b"HINCRBY", b"h", b"big", b"1"], Check::Exact),
        (vec![b"HSTRLEN", b"h", b"big"], Check::Exact),
        (vec![b"HDEL", b"h", b"b", b"c", b"big", b"x"], Check::Exact),
        (vec![b"EXISTS", b"h"], Check::Exact),
        (vec![b"HMSET", b"h"], Check::Exact),
        (vec![b"HSET", b"h", b"f"], Check::Exact),
        (vec![b"COPY", b"k2", b"k2"], Check::Exact),
        (vec![b"COPY", b"k2", b"k2", b"DB", b"1"], Check::Exact),
        (vec![b"COPY", b"k2", b"k2", b"DB", b"1"], Check::Exact),
        (
            vec![b"COPY", b"k2", b"k2", b"DB", b"1", b"REPLACE"],
            Check::Exact,
        ),
        (
            vec![b"COPY", b"k2", b"x", b"DB", b"2147483648"],
            Check::Exact,
        ),
        (vec![b"COPY", b"k2", b"x", b"DB", b"16"], Check::Exact),
        (
            vec![b"COPY", b"k2", b"x", b"replace\x00x", b"DB"],
            Check::Exact,
        ),
        (vec![b"RENAME", b"nothing", b"x"], Check::Exact),
        (vec![b"RENAMENX", b"k2", b"k2"], Check::Exact),
        (vec![b"RENAME", b"k2", b"k2"], Check::Exact),
        (vec![b"RENAME", b"k2", b"k3"], Check::Exact),
        (vec![b"TYPE", b"k3"], Check::Exact),
        (vec![b"FLUSHDB", b"sync\x00x"], Check::Exact),
        (vec![b"FLUSHDB", b"now"], Check::Exact),
        (vec![b"PING", b"a", b"b"], Check::Exact),
        (vec![b"RANDOMKEY"], Check::RandomKey),
    ];
    cases
        .into_iter()
        .map(|(args, check)| Cmd {
            args: args.into_iter().map(<[u8]>::to_vec).collect(),
            check,
        })
        .collect()
}
