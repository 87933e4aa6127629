//! The client request parser: RESP multibulk and inline commands, read exactly as Redis 7.0
//! reads them (`processMultibulkBuffer` / `processInlineBuffer` in networking.c), with the same
//! limits and the same error texts.
//!
//! ```text
//!           first byte '*'               count > 0                  last argument
//!  Start ──────────────────▶ Count ─────────────────▶ Bulks ────────────────────────▶ emit, Start
//!    │                         │  count <= 0           (header ⇄ body, per argument)
//!    │                         └──────────────▶ consume, Start
//!    │    any other byte                line with arguments
//!    └──────────────────▶ Inline ─────────────────────────────────▶ emit (re-encoded), Start
//!                                │      empty line
//!                                └────────────────────────────────▶ consume, Start
//! ```
//!
//! The parser is resumable: everything it has validated of the current frame (count, spans,
//! offset reached, how far the current line was searched) stays in its state, so a frame that
//! arrives in pieces is examined once, never from its start again. It does no IO and allocates
//! nothing on the multibulk path beyond the request's own `SmallVec` of spans; the bytes of a
//! multibulk are split off the caller's buffer and become the request as they are.
//!
//! Where Redis's C code has quirks, they are kept on purpose: the proxy forwards the client's
//! bytes to a Redis upstream, and the two must agree on where each command ends.
//! - Header lines end at the first `\r`; the byte after it is skipped whatever it is, and so are
//!   the two bytes after a bulk payload (Redis never checks them for `\n` / `\r\n`).
//! - Redis finds line ends with `strchr` on a NUL-terminated buffer, so a NUL byte before the
//!   end of a header or inline line hides the end: the line never completes and only the size
//!   limit ends the wait.
//! - One departure: Redis applies the line limits (`PROTO_INLINE_MAX_SIZE`) only to what is
//!   buffered without a line end, so a line a little over the limit passes or fails by how the
//!   network chunked it. Here a line longer than the limit fails with Redis's text however it
//!   arrived, so the answer never depends on TCP segmentation (the fuzzer in `fuzz/` holds the
//!   parser to that). Lines within the limit are read exactly as Redis reads them.

use std::fmt;

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;

use crate::protocol::request::{ArgSpan, Request};

/// Redis's limits; `Default` gives Redis 7's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParserLimits {
    /// The largest bulk argument (`proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// The largest multibulk count (Redis 7 accepts up to `INT_MAX`; spans are never
    /// pre-allocated from it, so memory follows the bytes actually received).
    pub max_multibulk_len: usize,
    /// How many bytes may be buffered without a line end (`PROTO_INLINE_MAX_SIZE`, 64 KiB).
    pub max_inline_len: usize,
}

impl Default for ParserLimits {
    fn default() -> ParserLimits {
        ParserLimits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A protocol error. The message is Redis's exact text; the session replies `-ERR <message>`
/// and closes the connection, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl ProtocolError {
    #[cold]
    #[inline(never)]
    fn new(message: &str) -> ProtocolError {
        ProtocolError(message.to_owned())
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Redis accepts no more than this many arguments, and no bulk longer than this, before the
/// client has authenticated (networking.c, `authRequired`).
const UNAUTH_MAX_MULTIBULK_LEN: i64 = 10;
const UNAUTH_MAX_BULK_LEN: i64 = 16 * 1024;

/// `LONG_STR_SIZE`: `string2ll` refuses a number of this many characters or more.
const MAX_NUMBER_LEN: usize = 21;

/// `scan` value once a NUL byte has hidden the end of the current line.
const NEVER: usize = usize::MAX;

/// Where the parser is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Between commands: the next byte decides the kind.
    Start,
    /// Reading the `*<count>` line.
    Count,
    /// Reading `$<len>` lines and payloads; `remaining` arguments still to come.
    Bulks,
    /// Looking for the end of an inline line.
    Inline,
}

/// What reading an inline line produced.
enum Inline {
    Command(Request),
    /// A blank line, consumed.
    Empty,
    Incomplete,
}

/// Reads commands off the front of a client's buffer, resuming where it stopped.
#[derive(Debug)]
pub(crate) struct RequestParser {
    limits: ParserLimits,
    auth_required: bool,
    frame: Frame,
    /// Offset in the buffer (which starts with the current frame) validated so far: the start
    /// of the line or payload being read.
    pos: usize,
    /// Where the search for the current line's end resumes (`>= pos`), or `NEVER`.
    scan: usize,
    /// Arguments of the current multibulk still to read.
    remaining: usize,
    /// Length of the bulk payload at `pos`, once its `$<len>` line has been read.
    bulk_len: Option<usize>,
    /// Spans of the arguments read so far.
    args: SmallVec<[ArgSpan; 4]>,
    /// The error already returned; the connection is closing, so it is returned again.
    failed: Option<ProtocolError>,
    /// Bytes examined by line searches, so tests can tell a resumable parser from a rescanning one.
    #[cfg(test)]
    examined: usize,
}

impl RequestParser {
    pub(crate) fn new(limits: ParserLimits) -> RequestParser {
        RequestParser {
            limits,
            auth_required: false,
            frame: Frame::Start,
            pos: 0,
            scan: 0,
            remaining: 0,
            bulk_len: None,
            args: SmallVec::new(),
            failed: None,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Applies Redis's stricter limits for clients that still have to authenticate: more than
    /// 10 arguments or a bulk over 16 KiB is a protocol error ("unauthenticated multibulk
    /// length" / "unauthenticated bulk length"), which closes the connection. Off by default;
    /// a session sets it before each request, since AUTH lifts it for the next one.
    pub(crate) fn set_auth_required(&mut self, required: bool) {
        self.auth_required = required;
    }

    /// New limits (a reload), for every byte not yet read.
    pub(crate) fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
    }

    /// Forgets the command in progress, so that the buffer is read again from its start (the
    /// caller put commands back in front of it).
    pub(crate) fn restart(&mut self) {
        let (limits, auth_required) = (self.limits, self.auth_required);
        *self = RequestParser::new(limits);
        self.auth_required = auth_required;
    }

    /// How long the buffer must be to hold the bulk payload being read (its CRLF included),
    /// once its `$<len>` line is in; 0 otherwise. A reader sizes its buffer by it, so that a
    /// large argument is read into one allocation rather than grown and copied as it comes.
    pub(crate) fn wants(&self) -> usize {
        match (self.frame, self.bulk_len) {
            (Frame::Bulks, Some(len)) => self.pos + len + 2,
            _ => 0,
        }
    }

    /// Takes the next complete command off the front of `buf`.
    ///
    /// - `Ok(Some(req))`: the command's bytes were split off `buf` (zero-copy).
    /// - `Ok(None)`: `buf` holds no complete command yet; append more bytes and call again.
    ///   Empty commands (`*0`, `*-1`, blank inline lines) are consumed silently on the way.
    /// - `Err`: protocol error; reply with it and close the connection. Later calls return
    ///   the same error.
    ///
    /// Between calls the caller only ever appends to `buf`.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            match self.frame {
                Frame::Start => match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => self.frame = Frame::Count,
                    Some(_) => self.frame = Frame::Inline,
                },
                Frame::Count => {
                    if !self.read_count(buf).map_err(|e| self.fail(e))? {
                        return Ok(None);
                    }
                }
                Frame::Bulks => return self.read_bulks(buf).map_err(|e| self.fail(e)),
                Frame::Inline => match self.read_inline(buf).map_err(|e| self.fail(e))? {
                    Inline::Command(request) => return Ok(Some(request)),
                    Inline::Empty => {}
                    Inline::Incomplete => return Ok(None),
                },
            }
        }
    }

    #[cold]
    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        self.failed = Some(err.clone());
        err
    }

    /// `*<count>\r\n`. False while the line is incomplete. A count <= 0 is consumed and
    /// yields nothing, as in Redis.
    #[inline]
    fn read_count(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let (number, cr) = match self.quick_line(buf, 0) {
            Some((value, cr)) => (Some(value), cr),
            None => {
                let found = self.find_line_end(buf, b'\r');
                if found.unwrap_or(buf.len()) > self.limits.max_inline_len {
                    return Err(ProtocolError::new(
                        "Protocol error: too big mbulk count string",
                    ));
                }
                let Some(cr) = found else {
                    return Ok(false);
                };
                if cr + 1 >= buf.len() {
                    return Ok(false);
                }
                (parse_number(&buf[1..cr]), cr)
            }
        };
        let count = match number {
            Some(n) if n <= 0 => {
                buf.advance(cr + 2);
                self.reset();
                return Ok(true);
            }
            Some(n) if n as u64 <= self.limits.max_multibulk_len as u64 => n,
            _ => {
                return Err(ProtocolError::new(
                    "Protocol error: invalid multibulk length",
                ))
            }
        };
        if count > UNAUTH_MAX_MULTIBULK_LEN && self.auth_required {
            return Err(ProtocolError::new(
                "Protocol error: unauthenticated multibulk length",
            ));
        }
        self.frame = Frame::Bulks;
        self.remaining = count as usize;
        self.pos = cr + 2;
        self.scan = self.pos;
        Ok(true)
    }

    /// `$<len>\r\n<payload>\r\n`, `remaining` times; `None` while incomplete. The loop works on
    /// a local offset: this is the hot path, and a buffer usually holds whole commands.
    #[inline]
    fn read_bulks(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let mut pos = self.pos;
        loop {
            let len = match self.bulk_len {
                Some(len) => len,
                None => match self.read_bulk_header(buf, pos)? {
                    Some((len, payload)) => {
                        pos = payload;
                        len
                    }
                    None => {
                        self.pos = pos;
                        return Ok(None);
                    }
                },
            };
            // The two bytes after the payload are skipped unchecked, as Redis does.
            if buf.len() - pos < len + 2 {
                self.pos = pos;
                self.bulk_len = Some(len);
                return Ok(None);
            }
            // read_bulk_header made sure the frame stays within u32 offsets.
            self.args.push(ArgSpan {
                start: pos as u32,
                len: len as u32,
            });
            pos += len + 2;
            self.bulk_len = None;
            self.scan = pos;
            self.remaining -= 1;
            if self.remaining == 0 {
                let raw = buf.split_to(pos).freeze();
                let args = std::mem::take(&mut self.args);
                self.reset();
                return Ok(Some(Request::new(raw, args)));
            }
        }
    }

    /// Reads the `$<len>` line at `pos`: `Some((len, payload offset))`, or `None` when the line
    /// is not complete yet.
    #[inline]
    fn read_bulk_header(
        &mut self,
        buf: &BytesMut,
        pos: usize,
    ) -> Result<Option<(usize, usize)>, ProtocolError> {
        let (number, cr) = match self.quick_line(buf, pos) {
            Some((value, cr)) if buf[pos] == b'$' => (Some(value), cr),
            _ => {
                let found = self.find_line_end(buf, b'\r');
                if found.unwrap_or(buf.len()) - pos > self.limits.max_inline_len {
                    return Err(ProtocolError::new(
                        "Protocol error: too big bulk count string",
                    ));
                }
                let Some(cr) = found else {
                    return Ok(None);
                };
                if cr + 1 >= buf.len() {
                    return Ok(None);
                }
                if buf[pos] != b'$' {
                    return Err(expected_dollar(buf[pos]));
                }
                (parse_number(&buf[pos + 1..cr]), cr)
            }
        };
        let len = match number {
            Some(n) if n >= 0 && n as u64 <= self.limits.max_bulk_len as u64 => n,
            _ => return Err(ProtocolError::new("Protocol error: invalid bulk length")),
        };
        if len > UNAUTH_MAX_BULK_LEN && self.auth_required {
            return Err(ProtocolError::new(
                "Protocol error: unauthenticated bulk length",
            ));
        }
        let len = len as usize;
        let payload = cr + 2;
        // Spans are u32 offsets into the frame. Redis has no such limit, but its 1 GiB
        // client-query-buffer-limit closes the connection long before a frame reaches 4 GiB.
        if payload as u64 + len as u64 + 2 > u32::MAX as u64 {
            return Err(ProtocolError::new("Protocol error: invalid bulk length"));
        }
        Ok(Some((len, payload)))
    }

    /// One inline line, ended by `\n` (a `\r` before it is dropped), split with Redis's
    /// `sdssplitargs` rules and re-encoded as a multibulk.
    fn read_inline(&mut self, buf: &mut BytesMut) -> Result<Inline, ProtocolError> {
        let found = self.find_line_end(buf, b'\n');
        if found.unwrap_or(buf.len()) > self.limits.max_inline_len {
            return Err(ProtocolError::new("Protocol error: too big inline request"));
        }
        let Some(newline) = found else {
            return Ok(Inline::Incomplete);
        };
        let end = if newline > 0 && buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        let args = split_args(&buf[..end])
            .ok_or_else(|| ProtocolError::new("Protocol error: unbalanced quotes in request"))?;
        buf.advance(newline + 1);
        self.reset();
        if args.is_empty() {
            return Ok(Inline::Empty);
        }
        Ok(Inline::Command(Request::from_args(&args)))
    }

    /// The line every client sends, `*<digits>\r` or `$<digits>\r` (no sign, no leading
    /// zero, at most 17 digits, so no overflow) with the byte after the `\r` buffered, scanned
    /// and parsed in one pass: `Some((value, cr))`. The caller checks the first byte. Anything
    /// else, including a line already partly searched, gives `None` and takes the exact path
    /// (`find_line_end`, `parse_number`), which alone decides incomplete lines and errors.
    #[inline(always)]
    fn quick_line(&mut self, buf: &[u8], start: usize) -> Option<(i64, usize)> {
        if self.scan != start {
            return None;
        }
        // Digits run from start + 1: at most 17 of them, then the CR, then one more byte.
        let first = *buf.get(start + 1)?;
        if !(b'1'..=b'9').contains(&first) {
            return None;
        }
        let mut value = i64::from(first - b'0');
        // A line longer than the limit is left to the exact path, which refuses it.
        let end = buf
            .len()
            .min(start + 19)
            .min(start + 1 + self.limits.max_inline_len);
        let mut i = start + 2;
        while i < end {
            let b = buf[i];
            if b.is_ascii_digit() {
                value = value * 10 + i64::from(b - b'0');
            } else if b == b'\r' && i + 1 < buf.len() {
                self.count_examined(i + 1 - start);
                return Some((value, i));
            } else {
                return None;
            }
            i += 1;
        }
        None
    }

    /// Finds `term` at or after `self.scan`, the way Redis's `strchr` does on its
    /// NUL-terminated query buffer: a NUL byte first means the line never ends. Remembers how
    /// far it looked, so a line arriving in pieces is searched once.
    #[inline]
    fn find_line_end(&mut self, buf: &[u8], term: u8) -> Option<usize> {
        if self.scan == NEVER {
            return None;
        }
        let from = self.scan;
        let rest = &buf[from..];
        match rest.iter().position(|&b| b == term || b == 0) {
            Some(i) => {
                self.count_examined(i + 1);
                if rest[i] == 0 {
                    self.scan = NEVER;
                    None
                } else {
                    // Stay on the terminator: the byte after it may still be missing.
                    self.scan = from + i;
                    Some(from + i)
                }
            }
            None => {
                self.count_examined(rest.len());
                self.scan = buf.len();
                None
            }
        }
    }

    #[cfg(test)]
    fn count_examined(&mut self, n: usize) {
        self.examined += n;
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn count_examined(&mut self, _n: usize) {}

    /// Back to `Start` for the next command (the buffer now starts with it).
    #[inline]
    fn reset(&mut self) {
        self.frame = Frame::Start;
        self.pos = 0;
        self.scan = 0;
        self.remaining = 0;
        self.bulk_len = None;
        self.args.clear();
    }
}

/// Redis formats the offending byte with `%c`, then replaces `\r` and `\n` with spaces so the
/// reply stays one line. A byte above 0x7f goes out raw in Redis; a `String` cannot hold it, so
/// it becomes the Latin-1 character of the same value.
#[cold]
#[inline(never)]
fn expected_dollar(got: u8) -> ProtocolError {
    let got = match got {
        b'\r' | b'\n' => ' ',
        other => char::from(other),
    };
    ProtocolError(format!("Protocol error: expected '$', got '{got}'"))
}

/// Redis's `string2ll`: an optional `-`, then `0` alone or digits without a leading zero, no
/// sign `+`, no spaces, at most 20 characters, within `i64`.
fn parse_number(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= MAX_NUMBER_LEN {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX.
        (value <= i64::MAX as u64 + 1).then(|| (value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

/// C's `isspace` in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: arguments separated by whitespace; in double quotes the escapes
/// `\n \r \t \b \a \xHH` and `\<any>` for the character itself; in single quotes only `\'`;
/// a closing quote must be followed by whitespace or the end of the line. `None` for
/// unbalanced quotes. Quotes may open in the middle of an argument (`a"b c"` is `ab c`).
///
/// Two details kept from the C code: between arguments any `isspace` byte separates (so
/// vertical tab and form feed too), but inside an unquoted argument only space, tab, `\r` and
/// `\n` end it (a vertical tab there is part of the argument). The line never holds a NUL
/// (the line search stops at one), but a NUL would end it here as it does in C.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // Reads past the end as NUL, like the C string it mirrors.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && is_space(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(args);
        }
        let mut arg = Vec::new();
        let mut quote = None;
        loop {
            let c = at(i);
            match quote {
                None => match c {
                    b' ' | b'\t' | b'\r' | b'\n' | 0 => break,
                    b'"' | b'\'' => quote = Some(c),
                    _ => arg.push(c),
                },
                Some(b'"') => {
                    if c == b'\\' && at(i + 1) == b'x' {
                        if let (Some(hi), Some(lo)) = (hex_value(at(i + 2)), hex_value(at(i + 3))) {
                            arg.push(hi * 16 + lo);
                            i += 4;
                            continue;
                        }
                    }
                    if c == b'\\' && at(i + 1) != 0 {
                        i += 1;
                        arg.push(match at(i) {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    } else if c == b'"' {
                        after_closing_quote(at(i + 1))?;
                        i += 1;
                        break;
                    } else if c == 0 {
                        return None;
                    } else {
                        arg.push(c);
                    }
                }
                Some(_) => {
                    if c == b'\\' && at(i + 1) == b'\'' {
                        i += 1;
                        arg.push(b'\'');
                    } else if c == b'\'' {
                        after_closing_quote(at(i + 1))?;
                        i += 1;
                        break;
                    } else if c == 0 {
                        return None;
                    } else {
                        arg.push(c);
                    }
                }
            }
            i += 1;
        }
        args.push(arg);
    }
}

/// A closing quote must be followed by whitespace or the end of the line (`"foo"bar` is an
/// error): `None` when it is not, for `?`.
fn after_closing_quote(next: u8) -> Option<()> {
    (next == 0 || is_space(next)).then_some(())
}

#[cfg(test)]
mod tests;
