//! The upstream reply scanner: finds where each complete reply frame ends, without decoding it.
//!
//! The multiplexer forwards replies to clients as the raw bytes Redis sent (`*-1\r\n` stays
//! `*-1\r\n`), so all it needs from a reply is its length, and whether it is a RESP3 push
//! that answers no request. This module owns that and nothing else: no IO, no buffers.
//!
//! Scanning is iterative (an explicit stack of open aggregates, capped at `max_depth`) and
//! resumable: when the bytes end mid-frame, the scanner keeps its offset, the open aggregates
//! and how far it searched the current line, and the next call picks up there. Every byte is
//! examined at most once per frame and bulk payloads are skipped by length, never searched,
//! so a 50 MB bulk or a million-element array arriving in 16 KB reads costs linear time.
//!
//! ```text
//!              `$n` `=n` `!n` (n >= 0)
//!        ┌─────────────────────────────────► Payload { end }
//!        │                                        │ n bytes, then CRLF
//!        │   `+x` `:1` `_` `$-1` `*0` `*-1` ...   ▼
//!   ──► Header ─────────────────────────────► element done ──► no open aggregate: Frame, reset
//!       ▲  │ `*n` `~n` `>n` `%n` `|n` (n > 0)     │
//!       │  └─ push Open { n, or 2n for pairs }    │ count it in the innermost Open, pop
//!       └─────────────────────────────────────────┘ every Open it completes
//! ```
//!
//! Attributes (`|n`, RESP3): an attribute map annotates the element after it, so it is not
//! itself an element of its parent; the attribute and the element it annotates form one frame
//! at the top level. Depth counts every aggregate header, empty, null and attribute included.
//!
//! Not supported: RESP3 streamed strings and aggregates (`$?`, `*?`), which Redis never sends;
//! they are `Malformed`.

use std::fmt;

/// Longest line content (type byte and CRLF excluded) of a simple string, error, double or big
/// number. Redis sends short lines; a longer run without CR means the stream is not RESP.
const MAX_LINE: usize = 64 * 1024;

/// Longest integer or length line: `-9223372036854775808` has 20 characters.
const MAX_NUMBER_LINE: usize = 20;

/// A complete frame found at the front of the scanned slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Bytes from the frame start up to and including its final CRLF.
    pub len: usize,
    /// true for a top-level RESP3 push (`>`), which answers no request
    ///
    /// Also true after top-level attributes (`|1 ... >2 ...`). Note that under RESP3 Redis
    /// answers (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE with pushes too, so on a Pub/Sub
    /// connection a push may be the reply to a request.
    pub push: bool,
}

/// Why the bytes from upstream cannot be framed. Either way the stream has lost sync (or was
/// never RESP): the caller drops the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// not a RESP2/RESP3 frame (bad type byte, bad length line...)
    Malformed(&'static str),
    /// nesting deeper than the cap
    TooDeep,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(what) => write!(f, "malformed reply: {what}"),
            ReplyError::TooDeep => f.write_str("reply nested deeper than the limit"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// An aggregate whose elements have not all arrived.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Elements still to come (a map or an attribute of n pairs starts at 2n).
    remaining: u64,
    /// An attribute annotates the next element and does not count in its parent.
    attribute: bool,
}

/// What the scanner expects at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An element starts at `pos`; the first `searched` bytes of its line after the type byte
    /// are known to hold no CR, so the search for the line end resumes after them.
    Header { searched: usize },
    /// A bulk payload starts at `pos` and ends, its CRLF included, at `end`.
    Payload { end: usize },
}

/// Resumable scanner for the frames of one upstream connection, in order.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: usize,
    /// Offset from the frame start of the first byte not yet accounted for.
    pos: usize,
    step: Step,
    /// Open aggregates, innermost last. Empty for flat frames, which therefore never allocate;
    /// its capacity is kept across frames, so nesting allocates once per connection.
    open: Vec<Open>,
    /// The top-level element (after any attributes) is a push.
    push: bool,
    /// Bytes looked at since creation, so tests can prove the work is linear.
    #[cfg(test)]
    examined: usize,
}

impl ReplyScanner {
    /// A scanner that accepts up to `max_depth` nested aggregates: `*1\r\n:1\r\n` has depth
    /// 1, and 0 allows flat frames only. Attributes, empty and null aggregates count.
    pub fn new(max_depth: usize) -> ReplyScanner {
        ReplyScanner {
            max_depth,
            pos: 0,
            step: Step::Header { searched: 0 },
            open: Vec::new(),
            push: false,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Scans the frame that starts at `buf[0]`. Ok(Some(frame)) when complete (state resets for the
    /// next frame, which the caller passes as `&buf[frame.len..]` or a later slice starting at it);
    /// Ok(None) when incomplete: the caller appends bytes and calls again with a slice that starts
    /// at the same frame start, and the scanner resumes from where it stopped.
    ///
    /// After an error the scanner stays at the offending element, so it returns the same error
    /// for the same bytes; call [`reset`](Self::reset) before scanning another stream.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
        debug_assert!(
            buf.len() >= self.pos,
            "scan called with fewer bytes than before"
        );
        loop {
            match self.step {
                Step::Payload { end } => {
                    if buf.len() < end {
                        return Ok(None);
                    }
                    self.note_examined(2);
                    if buf[end - 2..end] != *b"\r\n" {
                        return Err(ReplyError::Malformed("bulk payload not followed by CRLF"));
                    }
                    self.pos = end;
                    self.step = Step::Header { searched: 0 };
                    if let Some(frame) = self.element_done() {
                        return Ok(Some(frame));
                    }
                }
                Step::Header { searched } => {
                    let Some(cr) = self.line_end(buf, searched)? else {
                        return Ok(None);
                    };
                    // The line is whole; whatever comes next starts a fresh search.
                    self.step = Step::Header { searched: 0 };
                    if let Some(frame) =
                        self.header(buf[self.pos], &buf[self.pos + 1..cr], cr + 2)?
                    {
                        return Ok(Some(frame));
                    }
                }
            }
        }
    }

    /// Forgets any partial progress (used when a connection is replaced).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.step = Step::Header { searched: 0 };
        self.open.clear();
        self.push = false;
    }

    /// Finds the CR of the CRLF ending the line that starts at `pos`, searching from where the
    /// last call stopped. Ok(None) when the line end has not arrived yet.
    fn line_end(&mut self, buf: &[u8], searched: usize) -> Result<Option<usize>, ReplyError> {
        let start = self.pos;
        let Some(&kind) = buf.get(start) else {
            return Ok(None);
        };
        let limit = line_limit(kind)?;
        let from = start + 1 + searched;
        // The CR sits at content offset `limit` at the latest.
        let bound = start + 1 + limit + 1;
        let to = buf.len().min(bound);
        if from >= to {
            return Ok(None);
        }
        match buf[from..to].iter().position(|&b| b == b'\r') {
            Some(i) => {
                let cr = from + i;
                self.note_examined(i + 1);
                match buf.get(cr + 1) {
                    None => {
                        // Look at the CR again when its LF arrives.
                        self.step = Step::Header {
                            searched: cr - start - 1,
                        };
                        Ok(None)
                    }
                    Some(b'\n') => {
                        self.note_examined(1);
                        Ok(Some(cr))
                    }
                    Some(_) => Err(ReplyError::Malformed("CR not followed by LF")),
                }
            }
            None => {
                self.note_examined(to - from);
                if to == bound {
                    return Err(ReplyError::Malformed(line_too_long(kind)));
                }
                self.step = Step::Header {
                    searched: to - start - 1,
                };
                Ok(None)
            }
        }
    }

    /// Acts on a complete header line: `kind` is its type byte, `line` its content and `next`
    /// the offset just past its CRLF. Returns the frame if this completed it.
    fn header(&mut self, kind: u8, line: &[u8], next: usize) -> Result<Option<Frame>, ReplyError> {
        match kind {
            b'+' | b'-' | b',' | b'(' | b'_' => {}
            b'#' => {
                if line != b"t" && line != b"f" {
                    return Err(ReplyError::Malformed("boolean other than t or f"));
                }
            }
            b':' => {
                parse_integer(line)
                    .ok_or(ReplyError::Malformed("integer reply is not a number"))?;
            }
            b'$' | b'=' | b'!' => {
                let len = parse_length(line)?;
                if len >= 0 {
                    let end = usize::try_from(len)
                        .ok()
                        .and_then(|len| next.checked_add(len)?.checked_add(2))
                        .ok_or(ReplyError::Malformed("bulk length too large"))?;
                    self.pos = next;
                    self.step = Step::Payload { end };
                    return Ok(None);
                }
                // `$-1` is a null bulk: a leaf.
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let len = parse_length(line)?;
                if self.open.len() >= self.max_depth {
                    return Err(ReplyError::TooDeep);
                }
                let attribute = kind == b'|';
                if attribute && len < 0 {
                    return Err(ReplyError::Malformed("null attribute"));
                }
                // A top-level push, possibly after attributes, answers no request.
                if kind == b'>' && self.open.is_empty() {
                    self.push = true;
                }
                self.pos = next;
                if len > 0 {
                    // len <= i64::MAX, so doubling it fits in u64.
                    let pairs = matches!(kind, b'%' | b'|');
                    let remaining = len as u64 * if pairs { 2 } else { 1 };
                    self.open.push(Open {
                        remaining,
                        attribute,
                    });
                    return Ok(None);
                }
                if attribute {
                    // An empty attribute: the element it annotates comes next, in the same slot.
                    return Ok(None);
                }
                // Empty or null (`*0`, `*-1`): a leaf.
                return Ok(self.element_done());
            }
            // line_limit has already refused any other byte.
            _ => return Err(ReplyError::Malformed("unknown type byte")),
        }
        self.pos = next;
        Ok(self.element_done())
    }

    /// Counts the element that ends at `pos` in its parent, closing every aggregate it
    /// completes. Returns the frame when the top-level element is done.
    fn element_done(&mut self) -> Option<Frame> {
        loop {
            let Some(top) = self.open.last_mut() else {
                let frame = Frame {
                    len: self.pos,
                    push: self.push,
                };
                self.reset();
                return Some(frame);
            };
            top.remaining -= 1;
            if top.remaining > 0 {
                return None;
            }
            let attribute = top.attribute;
            self.open.pop();
            if attribute {
                // The annotated element follows and takes the slot in the parent.
                return None;
            }
        }
    }

    #[inline]
    fn note_examined(&mut self, bytes: usize) {
        #[cfg(test)]
        {
            self.examined += bytes;
        }
        let _ = bytes;
    }
}

/// Longest line content allowed after type byte `kind`, or Malformed for an unknown type.
fn line_limit(kind: u8) -> Result<usize, ReplyError> {
    match kind {
        b'+' | b'-' | b',' | b'(' => Ok(MAX_LINE),
        b':' | b'$' | b'=' | b'!' | b'*' | b'~' | b'>' | b'%' | b'|' => Ok(MAX_NUMBER_LINE),
        b'#' => Ok(1),
        b'_' => Ok(0),
        _ => Err(ReplyError::Malformed("unknown type byte")),
    }
}

/// The error for a line of type `kind` that passed its length limit without a CR.
fn line_too_long(kind: u8) -> &'static str {
    match kind {
        b'_' => "null with content",
        b'#' => "boolean other than t or f",
        b':' => "integer reply too long",
        b'+' | b'-' | b',' | b'(' => "line longer than 64 KiB",
        _ => "length line too long",
    }
}

/// A decimal i64: optional `-`, then one or more digits, nothing else.
fn parse_integer(line: &[u8]) -> Option<i64> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// A bulk or aggregate length: -1 (null) or more.
fn parse_length(line: &[u8]) -> Result<i64, ReplyError> {
    match parse_integer(line) {
        Some(len) if len >= -1 => Ok(len),
        Some(_) => Err(ReplyError::Malformed("negative length")),
        None if line == b"?" => Err(ReplyError::Malformed(
            "RESP3 streamed types are not supported",
        )),
        None => Err(ReplyError::Malformed("length is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The depth the multiplexer uses.
    const DEPTH: usize = 128;

    /// One complete frame and its expected push flag.
    struct Case {
        name: String,
        bytes: Vec<u8>,
        push: bool,
    }

    fn case(name: &str, bytes: &[u8], push: bool) -> Case {
        Case {
            name: name.to_owned(),
            bytes: bytes.to_vec(),
            push,
        }
    }

    /// `$`, `=` or `!` with its length computed, so binary payloads need no hand counting.
    fn bulk(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(payload.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Frames written by hand to cover every type, nesting, emptiness, nulls and binary data.
    fn synthetic() -> Vec<Case> {
        let binary: &[u8] = b"\r\n$3\r\n*1\r\n\x00\xff+OK\r\n\r";
        let mut cases = vec![
            // RESP2
            case("simple", b"+OK\r\n", false),
            case("empty simple", b"+\r\n", false),
            case("simple with LF", b"+a\nb\r\n", false),
            case("error", b"-ERR unknown command 'FOO'\r\n", false),
            case("wrongtype", b"-WRONGTYPE Operation against a key\r\n", false),
            case("integer", b":1\r\n", false),
            case("zero", b":0\r\n", false),
            case("i64 min", b":-9223372036854775808\r\n", false),
            case("i64 max", b":9223372036854775807\r\n", false),
            case("bulk", b"$3\r\nabc\r\n", false),
            case("empty bulk", b"$0\r\n\r\n", false),
            case("null bulk", b"$-1\r\n", false),
            case("leading zero length", b"$03\r\nabc\r\n", false),
            Case { name: "binary bulk".into(), bytes: bulk(b'$', binary), push: false },
            Case { name: "bulk of CRLFs".into(), bytes: bulk(b'$', b"\r\n\r\n\r\n"), push: false },
            case("empty array", b"*0\r\n", false),
            case("null array", b"*-1\r\n", false),
            case("array", b"*3\r\n:1\r\n:2\r\n:3\r\n", false),
            case("array of bulks", b"*2\r\n$3\r\nfoo\r\n$-1\r\n", false),
            case("nested arrays", b"*2\r\n*1\r\n$-1\r\n*0\r\n", false),
            case("array ending in empty", b"*2\r\n:1\r\n*0\r\n", false),
            case("array ending in null", b"*2\r\n*-1\r\n*-1\r\n", false),
            case("deep tail", b"*1\r\n*1\r\n*1\r\n*1\r\n+x\r\n", false),
            Case {
                name: "array of binary bulks".into(),
                bytes: cat(&[b"*3\r\n", &bulk(b'$', binary), b"-ERR x\r\n", &bulk(b'$', b"*1\r\n")]),
                push: false,
            },
            // RESP3
            case("null", b"_\r\n", false),
            case("double", b",3.14\r\n", false),
            case("double inf", b",-inf\r\n", false),
            case("double exp", b",1.5e-10\r\n", false),
            case("true", b"#t\r\n", false),
            case("false", b"#f\r\n", false),
            case("big number", b"(3492890328409238509324850943850943825024385\r\n", false),
            case("negative big number", b"(-3492890328409238509324850943850943825024385\r\n", false),
            case("bulk error", b"!21\r\nSYNTAX invalid syntax\r\n", false),
            Case { name: "binary bulk error".into(), bytes: bulk(b'!', binary), push: false },
            case("verbatim", b"=15\r\ntxt:Some string\r\n", false),
            Case { name: "binary verbatim".into(), bytes: bulk(b'=', b"mkd:\r\n*2\r\n"), push: false },
            case("empty map", b"%0\r\n", false),
            case("map", b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", false),
            case("map with aggregate keys", b"%1\r\n*2\r\n:1\r\n:2\r\n~1\r\n#t\r\n", false),
            case("empty set", b"~0\r\n", false),
            case("set", b"~3\r\n+a\r\n:1\r\n,2.5\r\n", false),
            case("push", b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", true),
            case("empty push", b">0\r\n", true),
            case("push in array is not a push", b"*1\r\n>1\r\n+x\r\n", false),
            case("push in map", b"%1\r\n>1\r\n:1\r\n>0\r\n", false),
            case("attribute", b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.54\r\n*2\r\n:2039123\r\n:9543892\r\n", false),
            case("empty attribute", b"|0\r\n:1\r\n", false),
            case("two attributes", b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n$-1\r\n", false),
            case("attribute on a push", b"|1\r\n+k\r\n+v\r\n>1\r\n+x\r\n", true),
            case("push inside an attribute", b"|1\r\n+k\r\n>1\r\n+v\r\n+reply\r\n", false),
            case("attribute inside an array", b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", false),
            case("attribute on the last element", b"*2\r\n:1\r\n|1\r\n+k\r\n+v\r\n:2\r\n", false),
            case("attribute on an attribute key", b"|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n+reply\r\n", false),
            case("attribute value is aggregate", b"|1\r\n+k\r\n*2\r\n:1\r\n|0\r\n:2\r\n*0\r\n", false),
            case("null aggregates RESP3", b"*3\r\n%-1\r\n~-1\r\n=-1\r\n", false),
            case(
                "mixed nesting",
                b"*3\r\n%1\r\n~2\r\n:1\r\n*1\r\n_\r\n>1\r\n|1\r\n+a\r\n*0\r\n#t\r\n$5\r\nhello\r\n(12\r\n",
                false,
            ),
        ];
        let mut deep = Vec::new();
        for i in 0..20 {
            deep.extend_from_slice(if i % 4 == 0 {
                b"%1\r\n+k\r\n"
            } else {
                b"*1\r\n"
            });
        }
        deep.extend_from_slice(&bulk(b'$', binary));
        cases.push(Case {
            name: "20 levels".into(),
            bytes: deep,
            push: false,
        });
        cases
    }

    /// The frames of one read from Redis, in order: their bytes and whether each is a push.
    type Read = &'static [(&'static [u8], bool)];

    /// Replies captured from redis-server 7.0.15 on a socket, one read each. A read that held
    /// several frames is listed as its frames in order; their concatenation is the read.
    const FROM_REDIS: &[(&str, Read)] = &[
        ("RESP2 GET binary", &[(b"$10\r\na\r\nb\r\n$3\r\n\r\n", false)]),
        ("RESP2 GET missing", &[(b"$-1\r\n", false)]),
        ("RESP2 HSET", &[(b":2\r\n", false)]),
        ("RESP2 HGETALL", &[(b"*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n", false)]),
        ("RESP2 LRANGE empty", &[(b"*0\r\n", false)]),
        ("RESP2 BLPOP timeout", &[(b"*-1\r\n", false)]),
        (
            "RESP2 unknown command",
            &[(b"-ERR unknown command 'NOSUCHCMD', with args beginning with: \r\n", false)],
        ),
        ("RESP2 MGET", &[(b"*2\r\n$10\r\na\r\nb\r\n$3\r\n\r\n$-1\r\n", false)]),
        ("RESP2 ZSCORE", &[(b"$3\r\n1.5\r\n", false)]),
        ("RESP2 QUEUED", &[(b"+QUEUED\r\n", false)]),
        ("RESP2 EXEC aborted", &[(b"*-1\r\n", false)]),
        (
            "RESP2 DEBUG PROTOCOL attrib",
            &[(b"$39\r\nSome real reply following the attribute\r\n", false)],
        ),
        (
            "RESP2 XREAD",
            &[(
                b"*1\r\n*2\r\n$2\r\nst\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
                false,
            )],
        ),
        (
            "HELLO 3",
            &[(
                b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
                false,
            )],
        ),
        ("RESP3 HGETALL", &[(b"%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n", false)]),
        ("RESP3 SMEMBERS", &[(b"~2\r\n$2\r\nm2\r\n$2\r\nm1\r\n", false)]),
        ("RESP3 GET missing", &[(b"_\r\n", false)]),
        ("RESP3 ZSCORE", &[(b",1.5\r\n", false)]),
        ("RESP3 ZRANGE WITHSCORES", &[(b"*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n", false)]),
        (
            "RESP3 XREAD",
            &[(
                b"%1\r\n$2\r\nst\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
                false,
            )],
        ),
        (
            "RESP3 HRANDFIELD WITHVALUES",
            &[(b"*2\r\n*2\r\n$2\r\nf2\r\n$2\r\nv2\r\n*2\r\n$2\r\nf1\r\n$2\r\nv1\r\n", false)],
        ),
        ("DEBUG PROTOCOL string", &[(b"$11\r\nHello World\r\n", false)]),
        ("DEBUG PROTOCOL integer", &[(b":12345\r\n", false)]),
        ("DEBUG PROTOCOL double", &[(b",3.141\r\n", false)]),
        ("DEBUG PROTOCOL bignum", &[(b"(1234567999999999999999999999999999999\r\n", false)]),
        ("DEBUG PROTOCOL null", &[(b"_\r\n", false)]),
        ("DEBUG PROTOCOL array", &[(b"*3\r\n:0\r\n:1\r\n:2\r\n", false)]),
        ("DEBUG PROTOCOL set", &[(b"~3\r\n:0\r\n:1\r\n:2\r\n", false)]),
        ("DEBUG PROTOCOL map", &[(b"%3\r\n:0\r\n#f\r\n:1\r\n#t\r\n:2\r\n#f\r\n", false)]),
        (
            "DEBUG PROTOCOL attrib",
            &[(
                b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n$39\r\nSome real reply following the attribute\r\n",
                false,
            )],
        ),
        (
            // The push and the command's own reply arrive in one read.
            "DEBUG PROTOCOL push",
            &[
                (b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n", true),
                (b"$40\r\nSome real reply following the push reply\r\n", false),
            ],
        ),
        ("DEBUG PROTOCOL verbatim", &[(b"=29\r\ntxt:This is a verbatim\nstring\r\n", false)]),
        ("DEBUG PROTOCOL true", &[(b"#t\r\n", false)]),
        ("DEBUG PROTOCOL false", &[(b"#f\r\n", false)]),
        (
            "CLIENT TRACKING invalidation",
            &[(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n", true)],
        ),
        (
            // Under RESP3 the reply to SUBSCRIBE itself is a push.
            "RESP3 SUBSCRIBE",
            &[(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", true)],
        ),
        (
            "RESP3 pubsub message",
            &[(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$12\r\nhello\r\nworld\r\n", true)],
        ),
        ("RESP3 PING while subscribed", &[(b"+PONG\r\n", false)]),
        (
            // FLUSHALL with tracking on: the reply, then a flush invalidation with a null key.
            "RESP3 FLUSHALL with tracking",
            &[(b"+OK\r\n", false), (b">2\r\n$10\r\ninvalidate\r\n_\r\n", true)],
        ),
        (
            "RESP3 INFO keyspace",
            &[(b"=48\r\ntxt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n", false)],
        ),
        (
            "RESP3 COMMAND INFO GET",
            &[(
                b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n~3\r\n+@read\r\n+@string\r\n+@fast\r\n~0\r\n~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n~0\r\n",
                false,
            )],
        ),
        (
            "RESP3 EXEC with error, empty map, null",
            &[(b"*3\r\n-ERR value is not an integer or out of range\r\n%0\r\n_\r\n", false)],
        ),
        ("RESP3 CONFIG GET", &[(b"%1\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n", false)]),
        (
            "RESP3 LATENCY DOCTOR",
            &[(
                b"=292\r\ntxt:I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n\r\n",
                false,
            )],
        ),
        ("RESP3 EVAL nested", &[(b"*2\r\n:1\r\n*2\r\n:2\r\n*2\r\n:3\r\n*1\r\n:4\r\n", false)]),
        ("RESP3 EVAL double", &[(b",1.25\r\n", false)]),
        ("RESP3 EVAL error", &[(b"-BOOM\r\n", false)]),
        ("RESP3 EVAL bignum", &[(b"(123456789012345678901234567890\r\n", false)]),
        ("RESP3 EVAL verbatim", &[(b"=6\r\ntxt:hi\r\n", false)]),
    ];

    /// Every single frame: the synthetic ones and each frame Redis sent.
    fn all_cases() -> Vec<Case> {
        let mut cases = synthetic();
        for (label, frames) in FROM_REDIS {
            for (i, (bytes, push)) in frames.iter().enumerate() {
                cases.push(case(&format!("redis: {label} #{i}"), bytes, *push));
            }
        }
        cases
    }

    fn expected(case: &Case) -> Frame {
        Frame {
            len: case.bytes.len(),
            push: case.push,
        }
    }

    /// Feeds `stream` to `scanner` in pieces of the sizes `piece` returns, as the multiplexer
    /// does: append, scan until incomplete, drop the frames found. Returns the frames and the
    /// number of bytes left over (the start of an incomplete frame).
    fn feed(
        scanner: &mut ReplyScanner,
        stream: &[u8],
        mut piece: impl FnMut() -> usize,
    ) -> Result<(Vec<Frame>, usize), ReplyError> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut fed = 0;
        while fed < stream.len() {
            let n = piece().clamp(1, stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            let mut start = 0;
            while let Some(frame) = scanner.scan(&buf[start..])? {
                frames.push(frame);
                start += frame.len;
            }
            // The frame in progress moves to the front of the buffer, as in a real read buffer.
            buf.drain(..start);
        }
        Ok((frames, buf.len()))
    }

    #[test]
    fn every_frame_whole() {
        for case in all_cases() {
            let mut scanner = ReplyScanner::new(DEPTH);
            assert_eq!(
                scanner.scan(&case.bytes),
                Ok(Some(expected(&case))),
                "{}",
                case.name
            );
            // With trailing bytes of the next frame, the length is the same.
            let mut more = case.bytes.clone();
            more.extend_from_slice(b"$5\r\nnext");
            assert_eq!(
                scanner.scan(&more),
                Ok(Some(expected(&case))),
                "{} + tail",
                case.name
            );
        }
    }

    #[test]
    fn every_frame_byte_by_byte() {
        for case in all_cases() {
            let mut scanner = ReplyScanner::new(DEPTH);
            for end in 0..case.bytes.len() {
                assert_eq!(
                    scanner.scan(&case.bytes[..end]),
                    Ok(None),
                    "{} at {end}",
                    case.name
                );
            }
            assert_eq!(
                scanner.scan(&case.bytes),
                Ok(Some(expected(&case))),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn every_frame_split_in_two_everywhere() {
        for case in all_cases() {
            for split in 0..=case.bytes.len() {
                let mut scanner = ReplyScanner::new(DEPTH);
                let first = scanner.scan(&case.bytes[..split]);
                if split < case.bytes.len() {
                    assert_eq!(first, Ok(None), "{} split at {split}", case.name);
                    let second = scanner.scan(&case.bytes);
                    assert_eq!(
                        second,
                        Ok(Some(expected(&case))),
                        "{} split at {split}",
                        case.name
                    );
                } else {
                    assert_eq!(first, Ok(Some(expected(&case))), "{}", case.name);
                }
            }
        }
    }

    #[test]
    fn concatenated_frames_in_any_pieces() {
        let cases = all_cases();
        let stream: Vec<u8> = cases.iter().flat_map(|c| c.bytes.iter().copied()).collect();
        let want: Vec<Frame> = cases.iter().map(expected).collect();
        for size in [1, 2, 3, 5, 7, 13, 64, 4096, stream.len()] {
            let mut scanner = ReplyScanner::new(DEPTH);
            let (frames, left) = feed(&mut scanner, &stream, || size).unwrap();
            assert_eq!(frames, want, "pieces of {size}");
            assert_eq!(left, 0);
        }
        let mut rng = Rng(7);
        for _ in 0..20 {
            let mut scanner = ReplyScanner::new(DEPTH);
            let (frames, left) = feed(&mut scanner, &stream, || 1 + rng.below(40)).unwrap();
            assert_eq!(frames, want);
            assert_eq!(left, 0);
        }
    }

    #[test]
    fn redis_reads_split_into_their_frames() {
        for (label, frames) in FROM_REDIS {
            let read: Vec<u8> = frames.iter().flat_map(|(b, _)| b.iter().copied()).collect();
            let want: Vec<Frame> = frames
                .iter()
                .map(|(b, push)| Frame {
                    len: b.len(),
                    push: *push,
                })
                .collect();
            let mut scanner = ReplyScanner::new(DEPTH);
            let mut found = Vec::new();
            let mut start = 0;
            while let Some(frame) = scanner.scan(&read[start..]).unwrap() {
                found.push(frame);
                start += frame.len;
            }
            assert_eq!(found, want, "{label}");
            assert_eq!(start, read.len(), "{label}");
        }
    }

    #[test]
    fn many_small_frames_in_one_buffer() {
        let mut stream = Vec::new();
        for i in 0..10_000 {
            match i % 3 {
                0 => stream.extend_from_slice(b"+OK\r\n"),
                1 => stream.extend_from_slice(b"$3\r\nabc\r\n"),
                _ => stream.extend_from_slice(b":1\r\n"),
            }
        }
        let mut scanner = ReplyScanner::new(DEPTH);
        let mut start = 0;
        let mut count = 0;
        while let Some(frame) = scanner.scan(&stream[start..]).unwrap() {
            assert_eq!(frame.len, [5, 9, 4][count % 3]);
            start += frame.len;
            count += 1;
        }
        assert_eq!((count, start), (10_000, stream.len()));
        assert_eq!(scanner.open.capacity(), 0, "flat frames must not allocate");
    }

    #[test]
    fn flat_frames_never_allocate() {
        let mut scanner = ReplyScanner::new(DEPTH);
        for case in all_cases() {
            if matches!(case.bytes[0], b'*' | b'~' | b'%' | b'>' | b'|') {
                continue;
            }
            for end in 0..=case.bytes.len() {
                let _ = scanner.scan(&case.bytes[..end]);
            }
        }
        // Null and empty aggregates are leaves too.
        for flat in [
            &b"*-1\r\n"[..],
            b"*0\r\n",
            b"%0\r\n",
            b"~-1\r\n",
            b">0\r\n",
            b"|0\r\n:1\r\n",
        ] {
            assert!(scanner.scan(flat).unwrap().is_some());
        }
        assert_eq!(scanner.open.capacity(), 0);
    }

    #[test]
    fn the_stack_grows_with_depth_not_with_length() {
        let mut scanner = ReplyScanner::new(DEPTH);
        let mut wide = b"*50000\r\n".to_vec();
        for _ in 0..50_000 {
            wide.extend_from_slice(b"*1\r\n:1\r\n");
        }
        assert_eq!(
            scanner.scan(&wide).unwrap().map(|f| f.len),
            Some(wide.len())
        );
        assert!(
            scanner.open.capacity() <= 4,
            "capacity {}",
            scanner.open.capacity()
        );
    }

    #[test]
    fn push_flag_only_for_a_top_level_push() {
        let cases: &[(&[u8], bool)] = &[
            (b">1\r\n+x\r\n", true),
            (b">-1\r\n", true),
            (b"*1\r\n>1\r\n+x\r\n", false),
            (b"|1\r\n+k\r\n+v\r\n>1\r\n+x\r\n", true),
            (b"|1\r\n+k\r\n>1\r\n+v\r\n+x\r\n", false),
            (b"|1\r\n>0\r\n>0\r\n*0\r\n", false),
            (b"%1\r\n>0\r\n>0\r\n", false),
        ];
        for (bytes, push) in cases {
            let mut scanner = ReplyScanner::new(DEPTH);
            let frame = Frame {
                len: bytes.len(),
                push: *push,
            };
            assert_eq!(
                scanner.scan(bytes),
                Ok(Some(frame)),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            // The flag does not leak into the next frame.
            assert_eq!(
                scanner.scan(b"+OK\r\n"),
                Ok(Some(Frame {
                    len: 5,
                    push: false
                }))
            );
        }
    }

    /// Inputs that are not RESP, with the error each must give.
    fn malformed() -> Vec<(Vec<u8>, ReplyError)> {
        use ReplyError::Malformed as M;
        let mut cases: Vec<(Vec<u8>, ReplyError)> = [
            (&b"x"[..], M("unknown type byte")),
            (b"\r\n", M("unknown type byte")),
            (b"?\r\n", M("unknown type byte")),
            (b" +OK\r\n", M("unknown type byte")),
            (b"PONG\r\n", M("unknown type byte")),
            (b";4\r\nabcd\r\n", M("unknown type byte")),
            (b".\r\n", M("unknown type byte")),
            (b"+OK\rX", M("CR not followed by LF")),
            (b"+OK\r\r\n", M("CR not followed by LF")),
            (b"$3\r\r\nabc\r\n", M("CR not followed by LF")),
            (b":\r\n", M("integer reply is not a number")),
            (b":-\r\n", M("integer reply is not a number")),
            (b":+1\r\n", M("integer reply is not a number")),
            (b":1.5\r\n", M("integer reply is not a number")),
            (b": 1\r\n", M("integer reply is not a number")),
            (
                b":9223372036854775808\r\n",
                M("integer reply is not a number"),
            ),
            (
                b":-9223372036854775809\r\n",
                M("integer reply is not a number"),
            ),
            (b":123456789012345678901\r\n", M("integer reply too long")),
            (b"#\r\n", M("boolean other than t or f")),
            (b"#x\r\n", M("boolean other than t or f")),
            (b"#tt\r\n", M("boolean other than t or f")),
            (b"_x\r\n", M("null with content")),
            (b"$\r\n", M("length is not a number")),
            (b"$abc\r\n", M("length is not a number")),
            (b"$-\r\n", M("length is not a number")),
            (b"*3x\r\n", M("length is not a number")),
            (b"$-2\r\n", M("negative length")),
            (b"*-2\r\n", M("negative length")),
            (b"%-5\r\n", M("negative length")),
            (b"$?\r\n", M("RESP3 streamed types are not supported")),
            (b"*?\r\n", M("RESP3 streamed types are not supported")),
            (b"$123456789012345678901\r\n", M("length line too long")),
            (b"*000000000000000000001\r\n", M("length line too long")),
            (b"|-1\r\n", M("null attribute")),
            (b"$1\r\nab\r\n", M("bulk payload not followed by CRLF")),
            (b"$1\r\na\n\r", M("bulk payload not followed by CRLF")),
            (b"$0\r\nX\r\n", M("bulk payload not followed by CRLF")),
            (b"=3\r\ntxt:\r\n", M("bulk payload not followed by CRLF")),
            (b"*2\r\n:1\r\nX", M("unknown type byte")),
            (b"*2\r\n:1\r\n*1\r\n$-2\r\n", M("negative length")),
            (
                b"%1\r\n+k\r\n$2\r\nvvv\r\n",
                M("bulk payload not followed by CRLF"),
            ),
            (b"|1\r\n+k\r\n+v\r\n|-1\r\n", M("null attribute")),
            (b">1\r\n#maybe\r\n", M("boolean other than t or f")),
        ]
        .iter()
        .map(|(b, e)| (b.to_vec(), e.clone()))
        .collect();
        let mut long = b"+".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 1));
        long.extend_from_slice(b"\r\n");
        cases.push((long.clone(), M("line longer than 64 KiB")));
        let mut nested_long = b"*2\r\n:1\r\n".to_vec();
        nested_long.extend_from_slice(&long);
        cases.push((nested_long, M("line longer than 64 KiB")));
        cases
    }

    #[test]
    fn malformed_input_is_an_error() {
        for (bytes, error) in malformed() {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
            let mut scanner = ReplyScanner::new(DEPTH);
            assert_eq!(scanner.scan(&bytes), Err(error.clone()), "{shown:?}");
            // The scanner stays on the bad element: the same bytes give the same error.
            assert_eq!(scanner.scan(&bytes), Err(error.clone()), "{shown:?} again");
            // Fed byte by byte, the error is found at the latest at the last byte, never
            // mistaken for an incomplete frame.
            let mut scanner = ReplyScanner::new(DEPTH);
            let mut seen = None;
            for end in 1..=bytes.len() {
                match scanner.scan(&bytes[..end]) {
                    Ok(None) => {}
                    Ok(Some(frame)) => panic!("{shown:?} framed as {frame:?}"),
                    Err(e) => {
                        seen = Some(e);
                        break;
                    }
                }
            }
            assert_eq!(seen, Some(error), "{shown:?} byte by byte");
        }
    }

    #[test]
    fn line_length_limit_is_exact() {
        let mut longest = b"-".to_vec();
        longest.extend(std::iter::repeat_n(b'e', MAX_LINE));
        longest.extend_from_slice(b"\r\n");
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(
            scanner.scan(&longest),
            Ok(Some(Frame {
                len: MAX_LINE + 3,
                push: false
            }))
        );
        // One byte short of the CR: still incomplete, not yet an error.
        assert_eq!(scanner.scan(&longest[..MAX_LINE + 1]), Ok(None));
        assert_eq!(
            scanner.scan(&longest),
            Ok(Some(Frame {
                len: MAX_LINE + 3,
                push: false
            }))
        );
        // A bulk may be far longer than a line.
        let big = bulk(b'$', &vec![b'\r'; 4 * MAX_LINE]);
        assert_eq!(
            scanner.scan(&big),
            Ok(Some(Frame {
                len: big.len(),
                push: false
            }))
        );
    }

    #[test]
    fn error_lasts_until_reset() {
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(scanner.scan(b"*2\r\n:1\r\n"), Ok(None));
        let bad = b"*2\r\n:1\r\n@";
        assert_eq!(
            scanner.scan(bad),
            Err(ReplyError::Malformed("unknown type byte"))
        );
        assert_eq!(
            scanner.scan(bad),
            Err(ReplyError::Malformed("unknown type byte"))
        );
        scanner.reset();
        assert_eq!(
            scanner.scan(b":7\r\n"),
            Ok(Some(Frame {
                len: 4,
                push: false
            }))
        );
    }

    #[test]
    fn reset_forgets_a_partial_frame() {
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(scanner.scan(b">2\r\n*3\r\n$100\r\nabc"), Ok(None));
        scanner.reset();
        // Without the reset the scanner would skip 100 payload bytes from offset 14.
        assert_eq!(
            scanner.scan(b"+OK\r\n"),
            Ok(Some(Frame {
                len: 5,
                push: false
            }))
        );
        assert_eq!(
            scanner.scan(b"$-1\r\n"),
            Ok(Some(Frame {
                len: 5,
                push: false
            }))
        );
        // Reset at an idle moment is harmless.
        scanner.reset();
        assert_eq!(
            scanner.scan(b"#t\r\n"),
            Ok(Some(Frame {
                len: 4,
                push: false
            }))
        );
    }

    #[test]
    fn an_empty_slice_is_incomplete() {
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(scanner.scan(b""), Ok(None));
        assert_eq!(
            scanner.scan(b"+OK\r\n"),
            Ok(Some(Frame {
                len: 5,
                push: false
            }))
        );
    }

    #[test]
    fn a_huge_declared_length_waits_instead_of_overflowing() {
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(scanner.scan(b"$9223372036854775807\r\nabc"), Ok(None));
        scanner.reset();
        assert_eq!(scanner.scan(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
        scanner.reset();
        assert_eq!(scanner.scan(b"%9223372036854775807\r\n:1\r\n"), Ok(None));
    }

    /// `levels` aggregates of kind `open` around `:1`, each closing after its one child.
    fn nested(open: &[u8], levels: usize) -> Vec<u8> {
        let mut out = open.repeat(levels);
        out.extend_from_slice(b":1\r\n");
        out
    }

    /// An attribute whose value is an attributed element, `levels` deep.
    fn nested_attributes(levels: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..levels {
            out.extend_from_slice(b"|1\r\n+k\r\n");
        }
        out.extend_from_slice(b":1\r\n");
        for _ in 0..levels {
            out.extend_from_slice(b"+r\r\n");
        }
        out
    }

    #[test]
    fn depth_up_to_the_cap_is_accepted_and_beyond_is_too_deep() {
        for open in [&b"*1\r\n"[..], b"~1\r\n", b"%1\r\n+k\r\n", b"*2\r\n:0\r\n"] {
            let ok = nested(open, DEPTH);
            let mut scanner = ReplyScanner::new(DEPTH);
            assert_eq!(
                scanner.scan(&ok),
                Ok(Some(Frame {
                    len: ok.len(),
                    push: false
                }))
            );
            let deep = nested(open, DEPTH + 1);
            assert_eq!(scanner.scan(&deep), Err(ReplyError::TooDeep));
            // Found as soon as the offending header arrives, byte by byte too.
            let mut scanner = ReplyScanner::new(DEPTH);
            let header_end = open.len() * DEPTH + 4;
            for end in 0..header_end {
                assert_eq!(scanner.scan(&deep[..end]), Ok(None));
            }
            assert_eq!(scanner.scan(&deep[..header_end]), Err(ReplyError::TooDeep));
        }
        let ok = nested_attributes(DEPTH);
        let mut scanner = ReplyScanner::new(DEPTH);
        assert_eq!(
            scanner.scan(&ok),
            Ok(Some(Frame {
                len: ok.len(),
                push: false
            }))
        );
        assert_eq!(
            scanner.scan(&nested_attributes(DEPTH + 1)),
            Err(ReplyError::TooDeep)
        );
        scanner.reset();
        let mut push = b">1\r\n".to_vec();
        push.extend_from_slice(&nested(b"*1\r\n", DEPTH - 1));
        assert_eq!(
            scanner.scan(&push),
            Ok(Some(Frame {
                len: push.len(),
                push: true
            }))
        );
    }

    #[test]
    fn depth_counts_every_aggregate_header() {
        // Empty and null aggregates are nesting levels too.
        for last in [&b"*0\r\n"[..], b"*-1\r\n", b"%0\r\n", b"|0\r\n:1\r\n"] {
            let mut bytes = b"*1\r\n".repeat(3);
            bytes.extend_from_slice(last);
            let mut scanner = ReplyScanner::new(3);
            assert_eq!(scanner.scan(&bytes), Err(ReplyError::TooDeep), "{last:?}");
            let mut scanner = ReplyScanner::new(4);
            assert_eq!(
                scanner.scan(&bytes),
                Ok(Some(Frame {
                    len: bytes.len(),
                    push: false
                }))
            );
        }
        // Depth 0 allows flat frames only.
        let mut scanner = ReplyScanner::new(0);
        assert_eq!(
            scanner.scan(b"$3\r\nabc\r\n"),
            Ok(Some(Frame {
                len: 9,
                push: false
            }))
        );
        assert_eq!(scanner.scan(b"*0\r\n"), Err(ReplyError::TooDeep));
        // A top-level attribute is closed before the reply it annotates starts.
        let mut scanner = ReplyScanner::new(1);
        let attributed = b"|1\r\n+k\r\n+v\r\n*1\r\n:1\r\n";
        assert_eq!(
            scanner.scan(attributed),
            Ok(Some(Frame {
                len: attributed.len(),
                push: false
            }))
        );
        // But an aggregate inside an attribute nests.
        assert_eq!(
            scanner.scan(b"|1\r\n+k\r\n*1\r\n:1\r\n+r\r\n"),
            Err(ReplyError::TooDeep)
        );
    }

    #[test]
    fn very_deep_nesting_needs_no_recursion() {
        let levels = 200_000;
        let bytes = nested(b"*1\r\n", levels);
        let mut scanner = ReplyScanner::new(levels);
        assert_eq!(
            scanner.scan(&bytes),
            Ok(Some(Frame {
                len: bytes.len(),
                push: false
            }))
        );
        let mut scanner = ReplyScanner::new(levels);
        let (frames, left) = feed(&mut scanner, &bytes, || 4096).unwrap();
        assert_eq!((frames.len(), left), (1, 0));
    }

    /// Scans `stream` (one frame) as prefixes growing by `step` bytes, returning the frame and
    /// the number of calls made.
    fn scan_growing(scanner: &mut ReplyScanner, stream: &[u8], step: usize) -> (Frame, usize) {
        let mut calls = 0;
        let mut end = 0;
        loop {
            end = (end + step).min(stream.len());
            calls += 1;
            if let Some(frame) = scanner.scan(&stream[..end]).unwrap() {
                return (frame, calls);
            }
            assert!(end < stream.len(), "complete stream not framed");
        }
    }

    #[test]
    fn a_large_array_in_4k_pieces_costs_linear_work() {
        let mut stream = b"*200000\r\n".to_vec();
        for i in 0..200_000 {
            match i % 4 {
                0 => stream.extend_from_slice(b"$5\r\nhello\r\n"),
                1 => stream.extend_from_slice(format!(":{i}\r\n").as_bytes()),
                2 => stream.extend_from_slice(b"*2\r\n+a\r\n$-1\r\n"),
                _ => stream.extend_from_slice(b"%1\r\n$3\r\nk\r\n\r\n,1.5\r\n"),
            }
        }
        let mut scanner = ReplyScanner::new(DEPTH);
        let (frame, calls) = scan_growing(&mut scanner, &stream, 4096);
        assert_eq!(
            frame,
            Frame {
                len: stream.len(),
                push: false
            }
        );
        assert!(calls > 500);
        // Each byte at most once, plus one CR looked at again per call when a piece ends
        // between CR and LF. Rescanning from the frame start would cost ~calls/2 times more.
        assert!(
            scanner.examined <= stream.len() + calls,
            "examined {} bytes of {} in {calls} calls",
            scanner.examined,
            stream.len()
        );
    }

    #[test]
    fn a_50mb_bulk_in_16k_pieces_is_skipped_not_searched() {
        let payload = vec![b'\r'; 50 << 20];
        let stream = bulk(b'$', &payload);
        let mut scanner = ReplyScanner::new(DEPTH);
        let (frame, calls) = scan_growing(&mut scanner, &stream, 16 << 10);
        assert_eq!(
            frame,
            Frame {
                len: stream.len(),
                push: false
            }
        );
        assert!(calls > 3000);
        // The header line and the final CRLF; the payload is never looked at.
        assert!(scanner.examined <= 16, "examined {}", scanner.examined);
    }

    #[test]
    fn a_long_line_byte_by_byte_is_searched_once() {
        let mut line = b"+".to_vec();
        line.extend(std::iter::repeat_n(b'x', 60_000));
        line.extend_from_slice(b"\r\n");
        let mut scanner = ReplyScanner::new(DEPTH);
        let (frame, calls) = scan_growing(&mut scanner, &line, 1);
        assert_eq!(
            frame,
            Frame {
                len: line.len(),
                push: false
            }
        );
        assert_eq!(calls, line.len());
        assert!(
            scanner.examined <= line.len() + 1,
            "examined {}",
            scanner.examined
        );
    }

    #[test]
    fn errors_display_what_went_wrong() {
        assert_eq!(
            ReplyError::Malformed("unknown type byte").to_string(),
            "malformed reply: unknown type byte"
        );
        assert_eq!(
            ReplyError::TooDeep.to_string(),
            "reply nested deeper than the limit"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(ReplyError::TooDeep);
        assert!(boxed.source().is_none());
    }

    /// splitmix64: a small deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
            let len = self.below(max + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// Bytes that look like RESP, to put inside payloads.
    const NASTY: &[u8] = b"\r\n$*:+-_>|%~#,(!=?.x0\x00\xff";
    /// Bytes allowed in a simple line (no CR).
    const LINE: &[u8] = b"abc OK-ERR\n$*:0123456789.";

    /// Appends one random element that opens at most `levels` aggregates (attributes included)
    /// and returns its type byte (after any attributes).
    fn random_element(rng: &mut Rng, out: &mut Vec<u8>, levels: usize) -> u8 {
        if levels > 0 && rng.below(10) == 0 {
            let pairs = rng.below(3);
            out.extend_from_slice(format!("|{pairs}\r\n").as_bytes());
            for _ in 0..2 * pairs {
                random_element(rng, out, levels - 1);
            }
        }
        // Null and empty aggregates (12, 13) count as a level too.
        let kinds = if levels > 0 { 20 } else { 12 };
        let start = out.len();
        match rng.below(kinds) {
            0 => out.extend_from_slice(
                &[b"+".to_vec(), rng.bytes(LINE, 12), b"\r\n".to_vec()].concat(),
            ),
            1 => out.extend_from_slice(
                &[b"-".to_vec(), rng.bytes(LINE, 12), b"\r\n".to_vec()].concat(),
            ),
            2 => out.extend_from_slice(format!(":{}\r\n", rng.next() as i64).as_bytes()),
            3 => out.extend_from_slice(&bulk(b'$', &rng.bytes(NASTY, 20))),
            4 => out.extend_from_slice(b"$-1\r\n"),
            5 => out.extend_from_slice(b"_\r\n"),
            6 => out.extend_from_slice([&b",1.5\r\n"[..], b",inf\r\n", b",-nan\r\n"][rng.below(3)]),
            7 => out.extend_from_slice([&b"#t\r\n"[..], b"#f\r\n"][rng.below(2)]),
            8 => out.extend_from_slice(format!("({}{}\r\n", rng.next(), rng.next()).as_bytes()),
            9 => out.extend_from_slice(&bulk(b'!', &rng.bytes(NASTY, 20))),
            10 => out.extend_from_slice(&bulk(
                b'=',
                &[b"txt:".to_vec(), rng.bytes(NASTY, 20)].concat(),
            )),
            11 => out.extend_from_slice(b"+OK\r\n"),
            12 => out.extend_from_slice([&b"*-1\r\n"[..], b"~0\r\n", b"%-1\r\n"][rng.below(3)]),
            13 => out.extend_from_slice(b"*0\r\n"),
            kind => {
                let (prefix, per) =
                    [("*", 1), ("*", 1), ("~", 1), ("%", 2), (">", 1), ("%", 2)][kind - 14];
                let len = rng.below(5);
                out.extend_from_slice(format!("{prefix}{len}\r\n").as_bytes());
                for _ in 0..len * per {
                    random_element(rng, out, levels - 1);
                }
            }
        }
        out[start]
    }

    /// Appends one random frame, sometimes a push, and returns it as expected.
    fn random_frame(rng: &mut Rng, out: &mut Vec<u8>, levels: usize) -> Frame {
        let start = out.len();
        while rng.below(8) == 0 {
            let pairs = rng.below(3);
            out.extend_from_slice(format!("|{pairs}\r\n").as_bytes());
            for _ in 0..2 * pairs {
                random_element(rng, out, levels - 1);
            }
        }
        let push = if rng.below(6) == 0 {
            let len = rng.below(4);
            out.extend_from_slice(format!(">{len}\r\n").as_bytes());
            for _ in 0..len {
                random_element(rng, out, levels - 1);
            }
            true
        } else {
            random_element(rng, out, levels) == b'>'
        };
        Frame {
            len: out.len() - start,
            push,
        }
    }

    #[test]
    fn random_frames_in_random_pieces() {
        let levels = 5;
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let mut stream = Vec::new();
            let want: Vec<Frame> = (0..1 + rng.below(30))
                .map(|_| random_frame(&mut rng, &mut stream, levels))
                .collect();
            let max_piece = [1, 3, 17, 200, 5000][rng.below(5)];
            let mut scanner = ReplyScanner::new(levels);
            let (frames, left) = feed(&mut scanner, &stream, || 1 + rng.below(max_piece))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(frames, want, "seed {seed}");
            assert_eq!(left, 0, "seed {seed}");
            assert!(scanner.examined <= 2 * stream.len(), "seed {seed}");
            // Every proper prefix of the first frame is incomplete.
            let mut scanner = ReplyScanner::new(levels);
            for end in 0..want[0].len {
                assert_eq!(
                    scanner.scan(&stream[..end]),
                    Ok(None),
                    "seed {seed} at {end}"
                );
            }
        }
    }
}
