//! Finding a request's keys: the key-spec interpreter and Redis's fallbacks, transcribed from
//! Redis 7.0's db.c (`getKeysFromCommandWithSpecs` and the `*GetKeys` functions). The rules are
//! in the module doc of `command`; comments here point at the C they mirror.

use smallvec::SmallVec;

use super::{lookup_request, BeginSearch, CommandInfo, FindKeys, Flags, GetKeys, KeyFlags};
use crate::protocol::request::Request;

/// Argument indices of keys (0 is the command name), in the order Redis lists them.
pub type Keys = SmallVec<[u32; 4]>;

/// Why keys could not be found; the texts are those of `COMMAND GETKEYS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Redis does not know the command (or the container's subcommand).
    #[error("Invalid command specified")]
    UnknownCommand,
    /// The argument count does not satisfy the arity.
    #[error("Invalid number of arguments specified for command")]
    WrongArity,
    /// The arguments name no key where keys are mandatory (a bad numkeys, a missing STREAMS):
    /// Redis rejects the command.
    #[error("Invalid arguments specified for command")]
    InvalidArguments,
}

/// The keys of `req`, as `COMMAND GETKEYS` returns them. Keyless commands have none.
pub fn keys(req: &Request) -> Result<Keys, KeyError> {
    lookup_request(req)
        .ok_or(KeyError::UnknownCommand)?
        .keys(req)
}

/// The key-spec interpretation failed: Redis's `invalid_spec` label.
struct Invalid;

impl CommandInfo {
    /// The keys of `req`, which must be a request for this command (see [`keys()`]).
    pub fn keys(&self, req: &Request) -> Result<Keys, KeyError> {
        let mut out = Keys::new();
        if !self.has_keys() {
            return Ok(out);
        }
        if !self.arity_ok(req.argc()) {
            return Err(KeyError::WrongArity);
        }
        // Specs first when they describe keys and their flags are reliable; a `variable_flags`
        // spec sends Redis straight to the fallback (which exists only to compute the flags).
        let variable = self
            .key_specs
            .iter()
            .any(|s| s.flags.contains(KeyFlags::VARIABLE_FLAGS));
        let mut found = false;
        if self.has_key_spec() && !variable {
            found = self.keys_from_specs(req, &mut out).is_ok();
            if !found {
                out.clear();
            }
        }
        if !found {
            fallback(self.getkeys, &Args(req), &mut out);
        }
        if out.is_empty() && !self.flags.contains(Flags::NO_MANDATORY_KEYS) {
            return Err(KeyError::InvalidArguments);
        }
        Ok(out)
    }

    /// `getKeysUsingKeySpecs`. Indices are `i64` where C uses `int`: every C overflow case
    /// (a count near `i32::MAX`) ends in the same "out of bounds" result either way.
    fn keys_from_specs(&self, req: &Request, out: &mut Keys) -> Result<(), Invalid> {
        let args = Args(req);
        let argc = args.argc();
        for spec in self.key_specs {
            if spec.flags.contains(KeyFlags::NOT_KEY) {
                continue;
            }
            let mut first = match spec.begin {
                BeginSearch::Index(pos) => i64::from(pos),
                BeginSearch::Keyword { keyword, startfrom } => {
                    match find_keyword(&args, keyword, startfrom) {
                        Some(i) => i + 1,
                        None => continue,
                    }
                }
                BeginSearch::Unknown => return Err(Invalid),
            };
            let (last, step) = match spec.find {
                FindKeys::Range {
                    lastkey,
                    step,
                    limit,
                } => {
                    let lastkey = i64::from(lastkey);
                    let last = if lastkey >= 0 {
                        first + lastkey
                    } else if limit == 0 {
                        argc + lastkey
                    } else {
                        // Only with lastkey -1 (checked by a unit test of the table).
                        first + ((argc - first) / i64::from(limit) + lastkey)
                    };
                    (last, step)
                }
                FindKeys::Keynum {
                    keynumidx,
                    firstkey,
                    step,
                } => {
                    let keynumidx = i64::from(keynumidx);
                    if keynumidx >= argc {
                        return Err(Invalid);
                    }
                    let count = args.get(first + keynumidx).ok_or(Invalid)?;
                    let numkeys = string2ll(count).filter(|n| *n >= 0).ok_or(Invalid)?;
                    first += i64::from(firstkey);
                    // `(int)numkeys`: C truncates the count to 32 bits.
                    (first + i64::from(numkeys as i32) - 1, step)
                }
                FindKeys::Unknown => return Err(Invalid),
            };
            if last >= argc || last < first || first >= argc {
                return Err(Invalid);
            }
            // Every index is now in bounds, so C's per-key bounds check never fires.
            let mut i = first;
            while i <= last {
                out.push(i as u32);
                i += i64::from(step.max(1));
            }
            if spec.flags.contains(KeyFlags::INCOMPLETE) {
                return Err(Invalid);
            }
        }
        Ok(())
    }
}

/// The keyword search of a `keyword` begin_search: forwards from `startfrom` up to (not
/// including) the last argument, or backwards from `argc + startfrom` down to (not including)
/// argument 1. Returns the keyword's index.
fn find_keyword(args: &Args, keyword: &str, startfrom: i32) -> Option<i64> {
    let argc = args.argc();
    let startfrom = i64::from(startfrom);
    let (start, end) = if startfrom > 0 {
        (startfrom, argc - 1)
    } else {
        (argc + startfrom, 1)
    };
    let mut i = start;
    while i != end {
        if i >= argc || i < 1 {
            break;
        }
        if args.is(i, keyword) {
            return Some(i);
        }
        i += if start <= end { 1 } else { -1 };
    }
    None
}

/// The fallback key finders (`getkeys_proc`), with their C quirks.
fn fallback(getkeys: GetKeys, args: &Args, out: &mut Keys) {
    let argc = args.argc();
    match getkeys {
        GetKeys::None => {}
        // setGetKeys, bitfieldGetKeys, sortROGetKeys: the key is always argument 1.
        GetKeys::FirstArg | GetKeys::SortRo => out.push(1),
        GetKeys::Sort => {
            // sortGetKeys: LIMIT skips 2, GET and BY skip 1; the last STORE with an argument
            // after it wins. The STORE key is then itself read as an option name.
            out.push(1);
            let mut store = None;
            let mut i = 2;
            while i < argc {
                if args.is(i, "limit") {
                    i += 2;
                } else if args.is(i, "store") && i + 1 < argc {
                    store = Some(i + 1);
                } else if args.is(i, "get") || args.is(i, "by") {
                    i += 1;
                }
                i += 1;
            }
            out.extend(store.map(|s| s as u32));
        }
        GetKeys::Migrate => {
            // migrateGetKeys: argument 3, or with KEYS (found after skipping the options that
            // take arguments) the rest, but none if argument 3 is not the empty string.
            let (mut first, mut num) = (3, 1);
            if argc > 6 {
                let mut i = 6;
                while i < argc {
                    if args.is(i, "keys") {
                        if args.get(3).is_some_and(|a| !a.is_empty()) {
                            num = 0;
                        } else {
                            first = i + 1;
                            num = argc - first;
                        }
                        break;
                    }
                    if args.is(i, "auth") {
                        i += 1;
                    } else if args.is(i, "auth2") {
                        i += 2;
                    }
                    i += 1;
                }
            }
            out.extend((first..first + num).map(|i| i as u32));
        }
        GetKeys::Xread => {
            // xreadGetKeys: half of what follows STREAMS are keys, if that is a positive even
            // count.
            if let Some(pos) = xread_options(args.0).streams {
                let (pos, argc) = (pos as i64, argc);
                let num = argc - pos - 1;
                if num > 0 && num % 2 == 0 {
                    out.extend((pos + 1..argc - num / 2).map(|i| i as u32));
                }
            }
        }
        GetKeys::NumKeys {
            store,
            count,
            first,
        } => {
            // genericGetKeys: the count is read with atoi; the destination goes last.
            let (count, first) = (i64::from(count), i64::from(first));
            let num = i64::from(atoi(args.get(count).unwrap_or_default()));
            if num < 1 || num > argc - first {
                return;
            }
            out.extend((first..first + num).map(|i| i as u32));
            if store != 0 {
                out.push(u32::from(store));
            }
        }
    }
}

/// A request's arguments with C's view of them: signed indices, and strings that end at the
/// first NUL byte when compared with `strcasecmp`.
/// XREAD's and XREADGROUP's options before STREAMS, walked as Redis walks them (xreadCommand,
/// xreadGetKeys): BLOCK and COUNT take a value, GROUP a group and a consumer name, NOACK none,
/// and anything else ends the walk. So a group or consumer named `streams` or `block` is a
/// name, not a keyword.
pub(super) struct XreadOptions {
    /// BLOCK came before STREAMS: the command may wait.
    pub(super) blocks: bool,
    /// Where STREAMS stands, if the walk reached it.
    pub(super) streams: Option<usize>,
}

pub(super) fn xread_options(req: &Request) -> XreadOptions {
    let args = Args(req);
    let argc = args.argc();
    let mut options = XreadOptions {
        blocks: false,
        streams: None,
    };
    let mut i = 1;
    while i < argc {
        let more = argc - i - 1;
        if args.is(i, "block") && more >= 1 {
            options.blocks = true;
            i += 2;
        } else if args.is(i, "count") && more >= 1 {
            i += 2;
        } else if args.is(i, "group") && more >= 2 {
            i += 3;
        } else if args.is(i, "noack") {
            i += 1;
        } else {
            if args.is(i, "streams") {
                options.streams = Some(i as usize);
            }
            break;
        }
    }
    options
}

/// An option of SORT or SORT_RO that reads keys its arguments do not name: `BY` with a
/// pattern (one containing `*`) and `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortPattern {
    By,
    Get,
}

impl SortPattern {
    /// The option as Redis names it in its error.
    pub fn as_str(self) -> &'static str {
        match self {
            SortPattern::By => "BY",
            SortPattern::Get => "GET",
        }
    }
}

/// The first pattern option of a SORT or SORT_RO request that Redis refuses to a user without
/// access to every key, walking the options as `sortCommandGeneric` does: `None` when there is
/// none, and when Redis stops first at something else (a LIMIT that is not a number, a syntax
/// error), which Redis answers itself. Not a sort: `None`.
pub fn sort_pattern(req: &Request) -> Option<SortPattern> {
    let name = req.name();
    let readonly = name.eq_ignore_ascii_case(b"sort_ro");
    if !readonly && !name.eq_ignore_ascii_case(b"sort") {
        return None;
    }
    let args = Args(req);
    let argc = args.argc();
    let mut j = 2;
    while j < argc {
        let left = argc - j - 1;
        if args.is(j, "asc") || args.is(j, "desc") || args.is(j, "alpha") {
        } else if args.is(j, "limit") && left >= 2 {
            let long = |i| args.get(i).and_then(string2ll).is_some();
            if !long(j + 1) || !long(j + 2) {
                return None;
            }
            j += 2;
        } else if !readonly && args.is(j, "store") && left >= 1 {
            j += 1;
        } else if args.is(j, "by") && left >= 1 {
            // `strchr(pattern, '*')`: up to the first NUL, as C sees the string.
            let pattern = args.get(j + 1).unwrap_or_default();
            if pattern.iter().take_while(|&&b| b != 0).any(|&b| b == b'*') {
                return Some(SortPattern::By);
            }
            j += 1;
        } else if args.is(j, "get") && left >= 1 {
            return Some(SortPattern::Get);
        } else {
            return None;
        }
        j += 1;
    }
    None
}

struct Args<'a>(&'a Request);

impl Args<'_> {
    fn argc(&self) -> i64 {
        self.0.argc() as i64
    }

    fn get(&self, i: i64) -> Option<&[u8]> {
        usize::try_from(i).ok().and_then(|i| self.0.arg(i))
    }

    /// `!strcasecmp(argv[i], word)`.
    fn is(&self, i: i64, word: &str) -> bool {
        self.get(i).is_some_and(|a| {
            let c_str = a.split(|&b| b == 0).next().unwrap_or_default();
            c_str.eq_ignore_ascii_case(word.as_bytes())
        })
    }
}

/// Redis's `string2ll`: an optional `-`, then digits without a leading zero (or just `0`), at
/// most 20 bytes, within `i64`.
fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

/// glibc's `atoi`: `(int) strtol(s, NULL, 10)`. Leading C-locale white space, an optional
/// sign, then digits up to the first non-digit (a NUL included); saturates at the `long`
/// range, then keeps the low 32 bits.
fn atoi(s: &[u8]) -> i32 {
    let mut rest = s;
    while let Some((b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r', tail)) = rest.split_first() {
        rest = tail;
    }
    let negative = match rest.first() {
        Some(b'-') => {
            rest = &rest[1..];
            true
        }
        Some(b'+') => {
            rest = &rest[1..];
            false
        }
        _ => false,
    };
    // Accumulate as a negative number so i64::MIN fits, as strtol does.
    let mut v: i64 = 0;
    let mut saturated = false;
    for d in rest.iter().take_while(|d| d.is_ascii_digit()) {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
        {
            Some(n) => v = n,
            None => saturated = true,
        }
    }
    let long = match (negative, saturated) {
        (true, true) => i64::MIN,
        (false, true) => i64::MAX,
        (true, false) => v,
        (false, false) => v.checked_neg().unwrap_or(i64::MAX),
    };
    long as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(args: &[&str]) -> Result<Vec<u32>, KeyError> {
        keys(&Request::from_args(args)).map(|k| k.to_vec())
    }

    /// A request and the keys (argument indices) or error expected.
    type Case = (&'static [&'static str], Result<&'static [u32], KeyError>);

    #[test]
    fn key_extraction() {
        use KeyError::*;
        let cases: &[Case] = &[
            // Single key, any case; arity.
            (&["GET", "k"], Ok(&[1])),
            (&["get", "k"], Ok(&[1])),
            (&["GET"], Err(WrongArity)),
            (&["GET", "a", "b"], Err(WrongArity)),
            (&["SET", "k", "v", "GET"], Ok(&[1])),
            (&["BITFIELD", "k", "GET", "u8", "0"], Ok(&[1])),
            (&["NOSUCH", "k"], Err(UnknownCommand)),
            // Ranges: step 2, to the end, to the one before the end, two specs.
            (&["MSET", "a", "1", "b", "2"], Ok(&[1, 3])),
            (&["MSET", "a", "1", "b"], Ok(&[1, 3])),
            (&["DEL", "a", "b", "c"], Ok(&[1, 2, 3])),
            (&["BLPOP", "a", "b", "0"], Ok(&[1, 2])),
            (&["SMOVE", "src", "dst", "m"], Ok(&[1, 2])),
            (&["LCS", "a", "b", "LEN"], Ok(&[1, 2])),
            (&["BITOP", "AND", "dst", "a", "b"], Ok(&[2, 3, 4])),
            // numkeys, with and without a destination.
            (&["ZUNIONSTORE", "d", "2", "a", "b"], Ok(&[1, 3, 4])),
            (
                &["ZINTERSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
                Ok(&[1, 3, 4]),
            ),
            (&["ZUNIONSTORE", "d", "3", "a", "b"], Err(InvalidArguments)),
            (&["ZUNIONSTORE", "d", "0", "a"], Err(InvalidArguments)),
            (&["ZUNIONSTORE", "d", "2x", "a", "b"], Ok(&[3, 4, 1])),
            (&["ZUNION", "2", "a", "b"], Ok(&[2, 3])),
            (&["ZINTER", "x", "a"], Err(InvalidArguments)),
            (&["SINTERCARD", "2", "a", "b", "LIMIT", "1"], Ok(&[2, 3])),
            (&["SINTERCARD", " 1", "a"], Ok(&[2])),
            (&["ZINTERCARD", "4294967297", "a"], Ok(&[2])),
            (&["EVAL", "return 1", "0"], Ok(&[])),
            (&["EVAL", "return 1", "2", "k1", "k2", "arg"], Ok(&[3, 4])),
            (&["EVAL", "return 1", "3", "k1"], Ok(&[])),
            (&["EVALSHA_RO", "abc", "1", "k"], Ok(&[3])),
            (&["FCALL", "f", "1", "k", "a"], Ok(&[3])),
            (&["FCALL_RO", "f", "-1", "k"], Ok(&[])),
            (&["LMPOP", "2", "a", "b", "LEFT"], Ok(&[2, 3])),
            (&["ZMPOP", "1", "a", "MIN"], Ok(&[2])),
            (&["BLMPOP", "0", "2", "a", "b", "LEFT"], Ok(&[3, 4])),
            (&["BZMPOP", "0", "1", "a", "MAX"], Ok(&[3])),
            (&["LMPOP", "0", "a", "LEFT"], Err(InvalidArguments)),
            // STREAMS keyword with a limit: half keys, half ids.
            (&["XREAD", "STREAMS", "a", "b", "0", "0"], Ok(&[2, 3])),
            (
                &["XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "a", "0"],
                Ok(&[6]),
            ),
            (
                &["xread", "count", "1", "streams", "a"],
                Err(InvalidArguments),
            ),
            (&["XREAD", "COUNT", "1", "a", "0"], Err(InvalidArguments)),
            (
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
                Ok(&[5, 6]),
            ),
            (
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
                Ok(&[2, 3, 4]),
            ),
            (&["XREAD", "STREAMS\0x", "a", "0"], Ok(&[2])),
            // SORT: the fallback, STORE anywhere after the options.
            (&["SORT", "k"], Ok(&[1])),
            (&["SORT", "k", "STORE", "dst"], Ok(&[1, 3])),
            (
                &[
                    "SORT", "k", "BY", "w_*", "LIMIT", "0", "1", "GET", "o_*", "store", "d",
                ],
                Ok(&[1, 10]),
            ),
            (&["SORT", "k", "GET", "store", "x"], Ok(&[1])),
            (&["SORT", "k", "STORE"], Ok(&[1])),
            (&["SORT_RO", "k", "BY", "x"], Ok(&[1])),
            // MIGRATE: one key, or KEYS with an empty key argument.
            (&["MIGRATE", "h", "1", "k", "0", "5000"], Ok(&[3])),
            (
                &["MIGRATE", "h", "1", "", "0", "5000", "KEYS", "k1", "k2"],
                Ok(&[7, 8]),
            ),
            (
                &[
                    "MIGRATE", "h", "1", "", "0", "5000", "AUTH2", "u", "p", "KEYS", "k1",
                ],
                Ok(&[10]),
            ),
            (
                &["MIGRATE", "h", "1", "k", "0", "5000", "KEYS", "k1"],
                Err(InvalidArguments),
            ),
            // Subcommands: keys counted from the container's name.
            (&["OBJECT", "ENCODING", "k"], Ok(&[2])),
            (&["object", "freq", "k"], Ok(&[2])),
            (&["OBJECT", "NOSUCH", "k"], Err(UnknownCommand)),
            (&["OBJECT"], Ok(&[])),
            (&["MEMORY", "USAGE", "k", "SAMPLES", "5"], Ok(&[2])),
            (&["XINFO", "STREAM", "s", "FULL"], Ok(&[2])),
            (&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"], Ok(&[2])),
            (&["XGROUP", "CREATE", "s"], Err(WrongArity)),
            // GEORADIUS: STORE and STOREDIST are separate keyword specs.
            (&["GEORADIUS", "k", "0", "0", "1", "km"], Ok(&[1])),
            (
                &["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"],
                Ok(&[1, 7]),
            ),
            (
                &["GEORADIUS", "k", "0", "0", "1", "km", "STOREDIST", "d"],
                Ok(&[1, 7]),
            ),
            (
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
                Ok(&[1, 6, 8]),
            ),
            // Keyless commands: no keys, whatever the arguments.
            (&["PING"], Ok(&[])),
            (&["DBSIZE"], Ok(&[])),
            (&["PUBLISH", "ch", "m"], Ok(&[])),
            (&["SPUBLISH", "ch", "m"], Ok(&[])),
            (&["CLIENT", "SETNAME", "x"], Ok(&[])),
            (&["SCAN", "0", "MATCH", "*"], Ok(&[])),
            (&["FLUSHDB", "too", "many", "args"], Ok(&[])),
        ];
        for (args, want) in cases {
            assert_eq!(keys_of(args), want.map(<[u32]>::to_vec), "{args:?}");
        }
    }

    #[test]
    fn c_numbers() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"12"), Some(12));
        assert_eq!(string2ll(b"-12"), Some(-12));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "",
            "-",
            "01",
            "-0",
            "+1",
            " 1",
            "1 ",
            "1x",
            "9223372036854775808",
        ] {
            assert_eq!(string2ll(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(atoi(b"12"), 12);
        assert_eq!(atoi(b" \t+7x"), 7);
        assert_eq!(atoi(b"-3"), -3);
        assert_eq!(atoi(b"2\x001"), 2);
        assert_eq!(atoi(b""), 0);
        assert_eq!(atoi(b"x1"), 0);
        assert_eq!(atoi(b"4294967297"), 1);
        assert_eq!(atoi(b"99999999999999999999"), -1);
        assert_eq!(atoi(b"-99999999999999999999"), 0);
    }
}
