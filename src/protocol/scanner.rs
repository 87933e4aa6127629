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
/// number. Redis's own lines are short, but a script's status or error reply is as long as the
/// string it returns (`redis.status_reply(string.rep('x', 70000))`): up to the largest string
/// Redis keeps, proto-max-bulk-len's 512 MiB by default, as for a bulk. A longer run without
/// CR means the stream is not RESP. The search for the line end resumes where it stopped, so
/// a long line costs linear time.
const MAX_LINE: usize = 512 * 1024 * 1024;

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
    /// [`MAX_LINE`], or less in tests.
    max_line: usize,
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
            max_line: MAX_LINE,
            pos: 0,
            step: Step::Header { searched: 0 },
            open: Vec::new(),
            push: false,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// A scanner whose lines stop at `max_line` bytes, so that tests can reach the limit.
    #[cfg(test)]
    pub(crate) fn with_max_line(max_depth: usize, max_line: usize) -> ReplyScanner {
        ReplyScanner {
            max_line,
            ..ReplyScanner::new(max_depth)
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

    /// How many bytes from the frame's start the scanner needs before it can go on: the end
    /// of the bulk payload it is in (CRLF included), or 0. A reader sizes its buffer by it, so
    /// that a large reply is read into one allocation rather than grown and copied.
    pub fn wants(&self) -> usize {
        match self.step {
            Step::Payload { end } => end,
            Step::Header { .. } => 0,
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
        let limit = line_limit(kind, self.max_line)?;
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

/// Longest line content allowed after type byte `kind` (`max_line` for text lines), or
/// Malformed for an unknown type.
fn line_limit(kind: u8, max_line: usize) -> Result<usize, ReplyError> {
    match kind {
        b'+' | b'-' | b',' | b'(' => Ok(max_line),
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
        b'+' | b'-' | b',' | b'(' => "line longer than the line limit",
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
mod tests;
