//! What the fuzzers in `fuzz/` run, one function per target; `tests/fuzz_corpora.rs` replays
//! their corpora through the same functions on every `cargo test`. Each takes arbitrary bytes
//! and panics when an invariant breaks. Not an API: hidden, and free to change.

use bytes::BytesMut;

use crate::config::{Overrides, Settings};
use crate::local::engine;
use crate::local::store::{Layout, Store};
use crate::policy::keyspace::{Eviction, Keyspace, Keyspaces, Mode, Pattern, StoreShare};
use crate::protocol::parser::{ParserLimits, RequestParser};
use crate::protocol::request::Request;
use crate::protocol::scanner::{Frame, ReplyError, ReplyScanner};

/// Inputs up to this long are also fed split at every position; longer ones at a sample of
/// positions, so one input costs the fuzzer linear time, not quadratic.
const SPLIT_EVERYWHERE_UPTO: usize = 256;
/// Split points tried in a longer input.
const SPLIT_SAMPLES: usize = 32;

/// Where an input of `len` bytes is cut in two.
fn split_points(len: usize) -> Vec<usize> {
    if len <= SPLIT_EVERYWHERE_UPTO {
        (0..=len).collect()
    } else {
        (0..=SPLIT_SAMPLES)
            .map(|i| i * len / SPLIT_SAMPLES)
            .collect()
    }
}

/// What a parser run produced, comparable across the ways the bytes were fed.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    requests: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    error: Option<String>,
    /// Bytes left in the buffer at the end.
    left: usize,
}

fn parse_pieces<'a>(
    limits: ParserLimits,
    auth_required: bool,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Parsed {
    let mut parser = RequestParser::new(limits);
    parser.set_auth_required(auth_required);
    let mut buf = BytesMut::new();
    let mut out = Parsed {
        requests: Vec::new(),
        error: None,
        left: 0,
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        while out.error.is_none() {
            match parser.next(&mut buf) {
                Ok(Some(req)) => {
                    assert!(req.argc() >= 1, "a request without a name");
                    out.requests
                        .push((req.raw().to_vec(), req.args().map(<[u8]>::to_vec).collect()));
                }
                Ok(None) => break,
                Err(e) => out.error = Some(e.0),
            }
        }
    }
    out.left = buf.len();
    out
}

/// The request parser on client bytes. The first byte picks tight limits and whether the
/// client has yet to authenticate. The same bytes fed whole, byte by byte and cut in two must
/// give the same requests, error and leftover; each request's raw bytes (what is forwarded)
/// parse back to the same arguments.
pub fn parse_requests(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let mut limits = ParserLimits::default();
    if mode & 1 != 0 {
        limits.max_inline_len = 16;
    }
    if mode & 2 != 0 {
        limits.max_bulk_len = 8;
    }
    if mode & 4 != 0 {
        limits.max_multibulk_len = 4;
    }
    let auth = mode & 8 != 0;
    let whole = parse_pieces(limits, auth, [input]);
    assert_eq!(
        parse_pieces(limits, auth, input.chunks(1)),
        whole,
        "byte by byte"
    );
    for at in split_points(input.len()) {
        let (a, b) = input.split_at(at);
        assert_eq!(parse_pieces(limits, auth, [a, b]), whole, "split at {at}");
    }
    if whole.error.is_none() {
        // Nothing is lost: what is not left over was parsed.
        assert!(whole.left <= input.len());
    }
    for (raw, args) in &whole.requests {
        let again = parse_pieces(ParserLimits::default(), false, [&raw[..]]);
        assert_eq!(again.error, None, "raw bytes of a request do not parse");
        assert_eq!(again.left, 0);
        assert_eq!(again.requests, vec![(raw.clone(), args.clone())]);
    }
}

/// Frames found, the bytes left over, and the error that stopped the scan.
type Scanned = (Vec<Frame>, usize, Option<ReplyError>);

fn scan_pieces<'a>(max_depth: usize, pieces: impl IntoIterator<Item = &'a [u8]>) -> Scanned {
    let mut scanner = ReplyScanner::new(max_depth);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut error = None;
    // After an error the rest still arrives, but nothing more is scanned.
    for piece in pieces {
        buf.extend_from_slice(piece);
        let mut start = 0;
        while error.is_none() {
            match scanner.scan(&buf[start..]) {
                Ok(Some(frame)) => {
                    assert!(frame.len > 0 && frame.len <= buf.len() - start);
                    assert_eq!(&buf[start + frame.len - 2..start + frame.len], b"\r\n");
                    frames.push(frame);
                    start += frame.len;
                }
                Ok(None) => break,
                Err(e) => error = Some(e),
            }
        }
        buf.drain(..start);
    }
    (frames, buf.len(), error)
}

/// The upstream reply scanner on upstream bytes (RESP2 and RESP3). The first byte picks the
/// nesting cap. Fed whole, byte by byte or cut in two, it must find the same frames and stop
/// at the same error; a frame found under a cap is found the same under a higher one.
pub fn scan_replies(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let depth = usize::from(mode % 8);
    let whole = scan_pieces(depth, [input]);
    assert_eq!(scan_pieces(depth, input.chunks(1)), whole, "byte by byte");
    for at in split_points(input.len()) {
        let (a, b) = input.split_at(at);
        assert_eq!(scan_pieces(depth, [a, b]), whole, "split at {at}");
    }
    let (frames, _, _) = scan_pieces(depth + 1, [input]);
    assert!(frames.len() >= whole.0.len());
    assert_eq!(
        frames[..whole.0.len()],
        whole.0[..],
        "a higher cap frames differently"
    );
}

/// The configuration loader on arbitrary text: it may refuse, never panic.
pub fn load_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Settings::from_toml_str(&text, "fuzz.toml", &Overrides::default()) {
        assert!(!e.to_string().is_empty());
    }
}

/// Arguments the engine fuzzer builds commands from: keys that collide, numbers at the edges,
/// every option word the local commands take, and values of several sizes.
const TOKENS: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"h",
    b"key:with:a:longer:name:than:inline",
    b"0",
    b"1",
    b"-1",
    b"2",
    b"10",
    b"100",
    b"1.5",
    b"-0.5",
    b"inf",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"99999999999999999999",
    b"EX",
    b"PX",
    b"EXAT",
    b"PXAT",
    b"NX",
    b"XX",
    b"GT",
    b"LT",
    b"KEEPTTL",
    b"GET",
    b"PERSIST",
    b"MATCH",
    b"COUNT",
    b"TYPE",
    b"string",
    b"hash",
    b"REPLACE",
    b"DB",
    b"*",
    b"a*",
    b"[a-c]",
    b"",
    b"value",
    &[b'x'; 300],
    &[b'y'; 2000],
];

/// Bytes to act on: one command per step, with the clock, database and protocol moved by
/// control steps.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
}

/// The local engine on a command sequence: a small store (4 KiB in three keyspaces: `h`
/// evicting in 1 KiB, `key:` refusing with -OOM in 1.5 KiB, the rest evicting, so eviction and
/// refusals are constant), a clock that moves forward, databases 0 and 1, RESP2 and RESP3,
/// background expiry in between. After every step the store's bookkeeping must match its
/// contents, every keyspace must be within its budget, and the reply bytes must be exactly one
/// well-formed frame per command.
pub fn run_engine(data: &[u8]) {
    let names: Vec<&str> = engine::command_names().collect();
    let store = Store::with_layout(fuzz_layout());
    let mut script = Script { data };
    let mut now_ms: u64 = 1_700_000_000_000;
    let mut db = 0;
    let mut resp3 = false;
    let mut batch: Vec<Request> = Vec::new();
    while let Some(op) = script.byte() {
        match op {
            0xf0..=0xf7 => now_ms += u64::from(op - 0xef) * u64::from(script.byte().unwrap_or(1)),
            0xf8 => db ^= 1,
            0xf9 => resp3 = !resp3,
            0xfa => {
                store.expire_some(now_ms, usize::from(script.byte().unwrap_or(4)));
                store.check_invariants();
            }
            0xfb..=0xff => run_batch(&store, db, resp3, &mut batch, now_ms),
            _ => {
                let mut args: Vec<&[u8]> = vec![names[usize::from(op) % names.len()].as_bytes()];
                let argc = script.byte().unwrap_or(0) % 6;
                for _ in 0..argc {
                    let Some(t) = script.byte() else { break };
                    args.push(TOKENS[usize::from(t) % TOKENS.len()]);
                }
                batch.push(Request::from_args(&args));
                // Most commands run alone; a batch marker runs several under one lock.
                if op & 1 == 0 {
                    run_batch(&store, db, resp3, &mut batch, now_ms);
                }
            }
        }
    }
    run_batch(&store, db, resp3, &mut batch, now_ms);
}

fn fuzz_layout() -> Layout {
    let keyspace = |name: &str, pattern: &[u8]| Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(pattern)],
        mode: Mode::LocalOnly,
    };
    let keyspaces = Keyspaces::new(
        vec![keyspace("h", b"h"), keyspace("long", b"key:")],
        Mode::LocalOnly,
    );
    let share = |name: &str, max_bytes, eviction| StoreShare {
        name: name.into(),
        max_bytes: Some(max_bytes),
        eviction,
    };
    let shares = [
        share("h", 1024, Eviction::Lru),
        share("long", 1536, Eviction::NoEviction),
    ];
    Layout::new(&keyspaces, 4096, &shares)
}

fn run_batch(store: &Store, db: u32, resp3: bool, batch: &mut Vec<Request>, now_ms: u64) {
    if batch.is_empty() {
        return;
    }
    let mut out = BytesMut::new();
    engine::execute_all(store, db, resp3, batch, now_ms, &mut out);
    let (frames, left, error) = scan_pieces(16, [&out[..]]);
    assert_eq!(error, None, "a malformed reply");
    assert_eq!(left, 0, "an incomplete reply");
    assert_eq!(frames.len(), batch.len(), "not one reply per command");
    assert!(frames.iter().all(|f| !f.push));
    batch.clear();
    store.check_invariants();
    for part in store.part_stats() {
        assert!(part.used_bytes <= part.max_bytes, "over budget: {part:?}");
    }
}
