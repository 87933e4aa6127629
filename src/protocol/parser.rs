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
//! - The size limits apply to what is buffered without a line end, so whether a line longer
//!   than the limit is accepted depends on how it was chunked, in Redis as here.

use std::fmt;

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;

use crate::protocol::request::{ArgSpan, Request};

/// Redis's limits; `Default` gives Redis 7's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
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
pub struct ProtocolError(pub String);

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
pub struct RequestParser {
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
    pub fn new(limits: ParserLimits) -> RequestParser {
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
    /// length" / "unauthenticated bulk length"). Off by default. The session turns it on for a
    /// connection that must AUTH and off once it has; Redis decides per command, so the
    /// session should update it before asking for the command that follows AUTH.
    pub fn set_auth_required(&mut self, required: bool) {
        self.auth_required = required;
    }

    /// New limits (a reload), for every byte not yet read.
    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
    }

    /// Forgets the command in progress, so that the buffer is read again from its start (the
    /// caller put commands back in front of it).
    pub fn restart(&mut self) {
        let (limits, auth_required) = (self.limits, self.auth_required);
        *self = RequestParser::new(limits);
        self.auth_required = auth_required;
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
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
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
                let Some(cr) = self.find_line_end(buf, b'\r') else {
                    if buf.len() > self.limits.max_inline_len {
                        return Err(ProtocolError::new(
                            "Protocol error: too big mbulk count string",
                        ));
                    }
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
                let Some(cr) = self.find_line_end(buf, b'\r') else {
                    if buf.len() - pos > self.limits.max_inline_len {
                        return Err(ProtocolError::new(
                            "Protocol error: too big bulk count string",
                        ));
                    }
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
        let Some(newline) = self.find_line_end(buf, b'\n') else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::new("Protocol error: too big inline request"));
            }
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
        let end = buf.len().min(start + 19);
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
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// What the parser produced, in a form that compares across feeding modes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Cmd { raw: Vec<u8>, args: Vec<Vec<u8>> },
        Err(String),
    }

    /// Everything a run produced, and the bytes left unconsumed at the end.
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        outs: Vec<Out>,
        left: Vec<u8>,
    }

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        limits: ParserLimits,
        auth_required: bool,
        expect: Vec<Out>,
        /// How many bytes of the input are left unconsumed (an incomplete tail).
        left: usize,
    }

    /// A multibulk command: its raw bytes are the client's own.
    fn mb(raw: &[u8], args: &[&[u8]]) -> Out {
        Out::Cmd {
            raw: raw.to_vec(),
            args: args.iter().map(|a| a.to_vec()).collect(),
        }
    }

    /// An inline command: its raw bytes are the multibulk re-encoding.
    fn inl(args: &[&[u8]]) -> Out {
        Out::Cmd {
            raw: Request::from_args(args).raw().to_vec(),
            args: args.iter().map(|a| a.to_vec()).collect(),
        }
    }

    fn err(message: &str) -> Out {
        Out::Err(message.to_owned())
    }

    fn limits(max_inline_len: usize) -> ParserLimits {
        ParserLimits {
            max_inline_len,
            ..ParserLimits::default()
        }
    }

    fn case(name: &'static str, input: &[u8], expect: Vec<Out>) -> Case {
        Case {
            name,
            input: input.to_vec(),
            limits: ParserLimits::default(),
            auth_required: false,
            expect,
            left: 0,
        }
    }

    impl Case {
        fn left(mut self, left: usize) -> Case {
            self.left = left;
            self
        }
        /// Nothing is consumed: the input only waits, or fails before its first command.
        fn all_left(mut self) -> Case {
            self.left = self.input.len();
            self
        }
        fn limits(mut self, limits: ParserLimits) -> Case {
            self.limits = limits;
            self
        }
        fn unauthenticated(mut self) -> Case {
            self.auth_required = true;
            self
        }
        fn expected_run(&self) -> Run {
            assert!(self.left <= self.input.len(), "{}: left", self.name);
            Run {
                outs: self.expect.clone(),
                left: self.input[self.input.len() - self.left..].to_vec(),
            }
        }
    }

    fn to_out(request: &Request) -> Out {
        Out::Cmd {
            raw: request.raw().to_vec(),
            args: request.args().map(|a| a.to_vec()).collect(),
        }
    }

    /// Calls `next` until it needs more bytes; false once it has failed.
    fn drain(parser: &mut RequestParser, buf: &mut BytesMut, outs: &mut Vec<Out>) -> bool {
        loop {
            match parser.next(buf) {
                Ok(Some(request)) => outs.push(to_out(&request)),
                Ok(None) => return true,
                Err(e) => {
                    outs.push(Out::Err(e.0));
                    return false;
                }
            }
        }
    }

    fn parser_for(case: &Case) -> RequestParser {
        let mut parser = RequestParser::new(case.limits);
        parser.set_auth_required(case.auth_required);
        parser
    }

    /// Feeds the pieces one after another, draining after each. After an error the rest still
    /// arrives, but nothing more is parsed.
    fn feed<'a>(parser: &mut RequestParser, pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
        let mut buf = BytesMut::new();
        let mut outs = Vec::new();
        let mut failed = false;
        for piece in pieces {
            buf.extend_from_slice(piece);
            if !failed {
                failed = !drain(parser, &mut buf, &mut outs);
            }
        }
        Run {
            outs,
            left: buf.to_vec(),
        }
    }

    fn run_pieces<'a>(
        mut parser: RequestParser,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Run {
        feed(&mut parser, pieces)
    }

    fn run_whole(case: &Case) -> Run {
        run_pieces(parser_for(case), [&case.input[..]])
    }

    fn run_bytewise(case: &Case) -> Run {
        run_pieces(parser_for(case), case.input.chunks(1))
    }

    fn run_split(case: &Case, at: usize) -> Run {
        let (a, b) = case.input.split_at(at);
        run_pieces(parser_for(case), [a, b])
    }

    fn cases() -> Vec<Case> {
        const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000001\r\n$3\r\nxxx\r\n";
        const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
        let set = || mb(SET, &[b"SET", b"key:000000000001", b"xxx"]);
        let ping = || mb(PING, &[b"PING"]);
        let many = [SET, SET, PING, SET].concat();
        let mset: &[u8] = b"*7\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$2\r\n22\r\n$1\r\nc\r\n$3\r\n333\r\n";
        vec![
            // Multibulk.
            case("one command", SET, vec![set()]),
            case(
                "many commands in one buffer",
                &many,
                vec![set(), set(), ping(), set()],
            ),
            case(
                "more than four arguments",
                mset,
                vec![mb(mset, &[b"MSET", b"a", b"1", b"b", b"22", b"c", b"333"])],
            ),
            case(
                "empty bulk",
                b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
                vec![mb(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", &[b"ECHO", b""])],
            ),
            case(
                "binary bulk with CRLF, NUL and high bytes inside",
                b"*2\r\n$4\r\nECHO\r\n$9\r\na\r\n\0\xff*$\nb\r\n",
                vec![mb(
                    b"*2\r\n$4\r\nECHO\r\n$9\r\na\r\n\0\xff*$\nb\r\n",
                    &[b"ECHO", b"a\r\n\0\xff*$\nb"],
                )],
            ),
            case(
                "*0 and *-1 are skipped",
                &[b"*0\r\n*-1\r\n", PING, b"*0\r\n"].concat(),
                vec![ping()],
            ),
            case("*0 then a partial command", b"*0\r\n*1\r\n$4\r\nPI", vec![]).left(10),
            case(
                "most negative count is a valid number, skipped",
                &[b"*-9223372036854775808\r\n", PING].concat(),
                vec![ping()],
            ),
            case(
                "partial command waits",
                b"*2\r\n$3\r\nGET\r\n$3\r\nke",
                vec![],
            )
            .all_left(),
            case("partial count line waits", b"*12", vec![]).all_left(),
            case("count line waits for the byte after CR", b"*1\r", vec![]).all_left(),
            case(
                "bulk line waits for the byte after CR",
                b"*1\r\n$4\r",
                vec![],
            )
            .all_left(),
            case(
                "payload waits for its two trailing bytes",
                b"*1\r\n$4\r\nPING\r",
                vec![],
            )
            .all_left(),
            case(
                "bytes after a payload are skipped unchecked",
                &[b"*1\r\n$4\r\nPINGXY", PING].concat(),
                vec![mb(b"*1\r\n$4\r\nPINGXY", &[b"PING"]), ping()],
            ),
            case(
                "the byte after a header CR is skipped unchecked",
                b"*2\rX$4\rYECHO\r\n$1\r\r\n\r\n",
                vec![mb(b"*2\rX$4\rYECHO\r\n$1\r\r\n\r\n", &[b"ECHO", b"\n"])],
            ),
            case(
                "largest count is accepted and waits",
                b"*2147483647\r\n$1\r\na\r\n",
                vec![],
            )
            .all_left(),
            case(
                "largest bulk is accepted and waits",
                b"*1\r\n$536870912\r\nabc",
                vec![],
            )
            .all_left(),
            case(
                "NUL hides the end of a count line",
                b"*1\0\r\n$4\r\nPING\r\n",
                vec![],
            )
            .all_left(),
            case(
                "NUL hides the end of a bulk line",
                b"*1\r\n$4\0\r\nPING\r\n",
                vec![],
            )
            .all_left(),
            // Multibulk errors.
            case(
                "count not a number",
                b"*x\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count empty",
                b"*\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count -0",
                b"*-0\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count with leading zero",
                b"*01\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count with plus sign",
                b"*+1\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count with a space",
                b"*1 \r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count over INT_MAX",
                b"*2147483648\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count overflows i64",
                b"*99999999999999999999\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count below i64::MIN",
                b"*-9223372036854775809\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .all_left(),
            case(
                "count over a configured limit",
                &[PING, b"*3\r\n"].concat(),
                vec![ping(), err("Protocol error: invalid multibulk length")],
            )
            .limits(ParserLimits {
                max_multibulk_len: 2,
                ..ParserLimits::default()
            })
            .left(4),
            case(
                "bulk length not a number",
                b"*1\r\n$x\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .all_left(),
            case(
                "bulk length empty",
                b"*1\r\n$\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .all_left(),
            case(
                "bulk length negative",
                b"*1\r\n$-1\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .all_left(),
            case(
                "bulk length with leading zero",
                b"*1\r\n$04\r\nPING\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .all_left(),
            case(
                "bulk length over 512 MiB",
                b"*1\r\n$536870913\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .all_left(),
            case(
                "bulk length over a configured limit",
                b"*2\r\n$3\r\nGET\r\n$4\r\nabcd\r\n",
                vec![err("Protocol error: invalid bulk length")],
            )
            .limits(ParserLimits {
                max_bulk_len: 3,
                ..ParserLimits::default()
            })
            .all_left(),
            case(
                "expected '$', got '#'",
                b"*1\r\n#4\r\nPING\r\n",
                vec![err("Protocol error: expected '$', got '#'")],
            )
            .all_left(),
            case(
                "expected '$', got CR",
                b"*1\r\n\r\n",
                vec![err("Protocol error: expected '$', got ' '")],
            )
            .all_left(),
            case(
                "expected '$', got LF",
                b"*1\r\n\n\r\n",
                vec![err("Protocol error: expected '$', got ' '")],
            )
            .all_left(),
            case(
                "expected '$', got a high byte",
                b"*1\r\n\xff\r\n",
                vec![err("Protocol error: expected '$', got '\u{ff}'")],
            )
            .all_left(),
            case(
                "expected '$' on a later argument, after a good command",
                &[PING, b"*2\r\n$4\r\nECHO\r\n:1\r\n"].concat(),
                vec![ping(), err("Protocol error: expected '$', got ':'")],
            )
            .left(18),
            case(
                "too big mbulk count string",
                b"*111111111",
                vec![err("Protocol error: too big mbulk count string")],
            )
            .limits(limits(8))
            .all_left(),
            case(
                "too big mbulk count string behind a NUL",
                b"*1\0\r\n$4\r\nPING\r\n",
                vec![err("Protocol error: too big mbulk count string")],
            )
            .limits(limits(8))
            .all_left(),
            case(
                "too big bulk count string",
                b"*1\r\n$123456789",
                vec![err("Protocol error: too big bulk count string")],
            )
            .limits(limits(8))
            .all_left(),
            case(
                "too big bulk count string behind a NUL",
                b"*1\r\n$4\0\r\nPING\r\n",
                vec![err("Protocol error: too big bulk count string")],
            )
            .limits(limits(8))
            .all_left(),
            // Authentication limits (off unless the session turns them on).
            case(
                "eleven arguments before AUTH",
                b"*11\r\n",
                vec![err("Protocol error: unauthenticated multibulk length")],
            )
            .unauthenticated()
            .all_left(),
            case("ten arguments before AUTH wait", b"*10\r\n", vec![])
                .unauthenticated()
                .all_left(),
            case(
                "bulk over 16 KiB before AUTH",
                b"*1\r\n$16385\r\n",
                vec![err("Protocol error: unauthenticated bulk length")],
            )
            .unauthenticated()
            .all_left(),
            case(
                "bulk of 16 KiB before AUTH waits",
                b"*1\r\n$16384\r\n",
                vec![],
            )
            .unauthenticated()
            .all_left(),
            case(
                "invalid count before AUTH is invalid first",
                b"*2147483648\r\n",
                vec![err("Protocol error: invalid multibulk length")],
            )
            .unauthenticated()
            .all_left(),
            case(
                "negative count before AUTH is skipped",
                &[b"*-100\r\n", PING].concat(),
                vec![ping()],
            )
            .unauthenticated(),
            case("eleven arguments after AUTH wait", b"*11\r\n", vec![]).all_left(),
            case(
                "inline has no argument limit before AUTH",
                b"a b c d e f g h i j k l\r\n",
                vec![inl(&[
                    b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"k", b"l",
                ])],
            )
            .unauthenticated(),
            // Inline.
            case("inline PING", b"PING\r\n", vec![inl(&[b"PING"])]),
            case(
                "inline LF only",
                b"SET k v\nGET k\n",
                vec![inl(&[b"SET", b"k", b"v"]), inl(&[b"GET", b"k"])],
            ),
            case(
                "inline extra blanks",
                b"  ECHO \t  a\t\x0b\x0cb  \r\n",
                vec![inl(&[b"ECHO", b"a", b"b"])],
            ),
            case(
                "inline only one CR is dropped",
                b"ECHO a\r\r\n",
                vec![inl(&[b"ECHO", b"a"])],
            ),
            case(
                "inline CR in the middle separates",
                b"ECHO a\rb\n",
                vec![inl(&[b"ECHO", b"a", b"b"])],
            ),
            case(
                "inline double quotes keep spaces",
                b"ECHO \"a b\"\r\n",
                vec![inl(&[b"ECHO", b"a b"])],
            ),
            case(
                "inline double-quote escapes",
                b"ECHO \"a\\x41\\x4\\n\\z\\\"\\\\\\t\\r\\b\\a\\xfF\\x00\\'\"\r\n",
                vec![inl(&[b"ECHO", b"aAx4\nz\"\\\t\r\x08\x07\xff\0'"])],
            ),
            case(
                "inline single quotes",
                b"ECHO 'b\\'c\\n\"'\r\n",
                vec![inl(&[b"ECHO", b"b'c\\n\""])],
            ),
            case(
                "inline empty quotes",
                b"ECHO \"\" ''\r\n",
                vec![inl(&[b"ECHO", b"", b""])],
            ),
            case(
                "inline only an empty argument",
                b"\"\"\r\n",
                vec![inl(&[b""])],
            ),
            case(
                "inline quotes opened mid-argument",
                b"ECHO a\"b c\" d'e f'\r\n",
                vec![inl(&[b"ECHO", b"ab c", b"de f"])],
            ),
            case(
                "inline vertical tab inside an argument",
                b"ECHO a\x0bb\r\n",
                vec![inl(&[b"ECHO", b"a\x0bb"])],
            ),
            case(
                "inline vertical tab after a closing quote",
                b"ECHO \"a\"\x0bb\r\n",
                vec![inl(&[b"ECHO", b"a", b"b"])],
            ),
            case(
                "inline closing quote before CR",
                b"ECHO \"a\"\r\r\n",
                vec![inl(&[b"ECHO", b"a"])],
            ),
            case(
                "inline high bytes",
                b"ECHO \xff\xfe\r\n",
                vec![inl(&[b"ECHO", b"\xff\xfe"])],
            ),
            case(
                "inline line starting with a space and a star",
                b" *1\r\n",
                vec![inl(&[b"*1"])],
            ),
            case(
                "empty inline lines are skipped",
                &[b"\r\n\n   \r\n\t\x0b\n\r\r\n", PING, b"\n"].concat(),
                vec![ping()],
            ),
            case(
                "inline, multibulk, inline",
                &[b"PING\r\n", PING, b"GET k\n"].concat(),
                vec![inl(&[b"PING"]), ping(), inl(&[b"GET", b"k"])],
            ),
            case("partial inline waits", b"PIN", vec![]).all_left(),
            case("inline waits for LF after CR", b"PING\r", vec![]).all_left(),
            case("NUL hides the end of an inline line", b"PING\0\r\n", vec![]).all_left(),
            case("inline line starting with NUL", b"\0PING\r\n", vec![]).all_left(),
            // Inline errors.
            case(
                "unbalanced double quote",
                b"ECHO \"foo\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "unbalanced single quote",
                b"ECHO 'foo\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "double quote glued to text",
                b"ECHO \"foo\"bar\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "single quote glued to text",
                b"ECHO 'foo'bar\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "quote glued on both sides",
                b"ECHO x\"a b\"y\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "trailing backslash in quotes",
                b"ECHO \"a\\\r\n",
                vec![err("Protocol error: unbalanced quotes in request")],
            )
            .all_left(),
            case(
                "unbalanced after a good command",
                b"PING\r\nECHO \"x\r\nPING\r\n",
                vec![
                    inl(&[b"PING"]),
                    err("Protocol error: unbalanced quotes in request"),
                ],
            )
            .left(15),
            case(
                "too big inline request",
                b"PING PING",
                vec![err("Protocol error: too big inline request")],
            )
            .limits(limits(8))
            .all_left(),
            case(
                "too big inline request behind a NUL",
                b"PING\0\r\nxx",
                vec![err("Protocol error: too big inline request")],
            )
            .limits(limits(8))
            .all_left(),
            case(
                "inline line at the limit is fine",
                b"PING PIN\nPING\n",
                vec![inl(&[b"PING", b"PIN"]), inl(&[b"PING"])],
            )
            .limits(limits(8)),
        ]
    }

    #[test]
    fn every_case_whole_bytewise_and_split_everywhere() {
        for case in cases() {
            let expected = case.expected_run();
            assert_eq!(run_whole(&case), expected, "{}: whole", case.name);
            assert_eq!(run_bytewise(&case), expected, "{}: byte by byte", case.name);
            for at in 0..=case.input.len() {
                assert_eq!(
                    run_split(&case, at),
                    expected,
                    "{}: split at {at}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn request_bytes_are_split_off_the_buffer_without_copying() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        let start = buf.as_ptr();
        let mut parser = RequestParser::new(ParserLimits::default());
        let first = parser.next(&mut buf).unwrap().unwrap();
        let second = parser.next(&mut buf).unwrap().unwrap();
        assert_eq!(first.raw().as_ptr(), start);
        assert_eq!(second.raw().as_ptr(), start.wrapping_add(14));
        assert_eq!(second.arg(1), Some(&b"k"[..]));
        assert_eq!(
            second.arg_bytes(1).unwrap().as_ptr(),
            start.wrapping_add(14 + 17)
        );
        assert!(buf.is_empty());
        assert!(parser.next(&mut buf).unwrap().is_none());
    }

    #[test]
    fn large_bulk_in_small_pieces_is_not_rescanned() {
        const LEN: usize = 8 * 1024 * 1024;
        const PIECE: usize = 4096;
        let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${LEN}\r\n");
        let mut input = header.clone().into_bytes();
        input.resize(input.len() + LEN, b'v');
        input.extend_from_slice(b"\r\n");

        let mut parser = RequestParser::new(ParserLimits::default());
        let mut buf = BytesMut::new();
        let mut request = None;
        let mut calls = 0;
        for piece in input.chunks(PIECE) {
            assert!(request.is_none(), "request before the last piece");
            buf.extend_from_slice(piece);
            calls += 1;
            request = parser.next(&mut buf).unwrap();
            if request.is_none() && buf.len() > header.len() {
                // Parked at the start of the payload, its length known: nothing to rescan.
                assert_eq!(parser.pos, header.len());
                assert_eq!(parser.bulk_len, Some(LEN));
            }
        }
        let request = request.expect("complete after the last piece");
        assert!(calls > 2000);
        assert_eq!(request.argc(), 3);
        assert_eq!(request.arg(2).map(<[u8]>::len), Some(LEN));
        assert_eq!(request.raw().len(), input.len());
        // Only the header lines were searched, once; a rescanning parser would examine
        // gigabytes here.
        assert!(
            parser.examined <= header.len(),
            "examined {}",
            parser.examined
        );
    }

    #[test]
    fn long_lines_in_pieces_are_searched_once() {
        // An inline line just under the limit, one byte at a time.
        let mut line = vec![b'x'; 60_000];
        line.extend_from_slice(b"\r\n");
        let mut parser = RequestParser::new(ParserLimits::default());
        let run = feed(&mut parser, line.chunks(1));
        assert_eq!(run.outs.len(), 1);
        assert!(
            parser.examined <= line.len(),
            "examined {}",
            parser.examined
        );

        // A header line hidden by a NUL is not searched again at all.
        let mut input = b"*1\0".to_vec();
        input.resize(60_000, b'\r');
        let mut parser = RequestParser::new(ParserLimits::default());
        let run = feed(&mut parser, input.chunks(7));
        assert!(run.outs.is_empty());
        assert!(parser.examined <= 3, "examined {}", parser.examined);

        // Many small arguments, one byte at a time: linear in the frame.
        let args: Vec<Vec<u8>> = (0..5000).map(|i| format!("arg{i}").into_bytes()).collect();
        let frame = Request::from_args(&args).raw().to_vec();
        let mut parser = RequestParser::new(ParserLimits::default());
        let run = feed(&mut parser, frame.chunks(1));
        assert_eq!(run.outs.len(), 1);
        assert!(
            parser.examined <= frame.len(),
            "examined {}",
            parser.examined
        );
    }

    #[test]
    fn a_declared_length_is_not_allocated() {
        let mut buf = BytesMut::from(&b"*2147483647\r\n$536870912\r\nab"[..]);
        let capacity = buf.capacity();
        let mut parser = RequestParser::new(ParserLimits::default());
        assert!(parser.next(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), capacity);
        assert!(!parser.args.spilled());
    }

    #[test]
    fn line_limits_depend_on_chunking_as_in_redis() {
        // Redis checks the limit only while no line end is buffered, so a line longer than the
        // limit passes when its end arrives in the same read, and fails when it does not.
        let limits = limits(8);
        for (input, error) in [
            (
                &b"ECHO 123456789\r\n"[..],
                "Protocol error: too big inline request",
            ),
            (
                &b"*123456789\r\n"[..],
                "Protocol error: too big mbulk count string",
            ),
            (
                &b"*1\r\n$123456789\r\n"[..],
                "Protocol error: too big bulk count string",
            ),
        ] {
            let whole = run_pieces(RequestParser::new(limits), [input]);
            assert!(
                !whole.outs.iter().any(|o| matches!(o, Out::Err(_))),
                "{whole:?}"
            );
            let bytewise = run_pieces(RequestParser::new(limits), input.chunks(1));
            assert_eq!(bytewise.outs, vec![err(error)]);
        }
    }

    #[test]
    fn after_an_error_the_same_error_is_returned() {
        let mut parser = RequestParser::new(ParserLimits::default());
        let mut buf = BytesMut::from(&b"*x\r\n*1\r\n$4\r\nPING\r\n"[..]);
        let first = parser.next(&mut buf).unwrap_err();
        assert_eq!(parser.next(&mut buf).unwrap_err(), first);
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(parser.next(&mut buf).unwrap_err(), first);
    }

    #[test]
    fn authentication_limit_follows_the_session() {
        let mut parser = RequestParser::new(ParserLimits::default());
        parser.set_auth_required(true);
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*11\r\n"[..]);
        let auth = parser.next(&mut buf).unwrap().unwrap();
        assert_eq!(auth.name(), b"AUTH");
        parser.set_auth_required(false);
        assert!(parser.next(&mut buf).unwrap().is_none());
    }

    #[test]
    fn error_type_displays_the_message() {
        let e = ProtocolError::new("Protocol error: invalid bulk length");
        assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(boxed.to_string(), "Protocol error: invalid bulk length");
    }

    #[test]
    fn default_limits_are_redis_7s() {
        let limits = ParserLimits::default();
        assert_eq!(limits.max_bulk_len, 536_870_912);
        assert_eq!(limits.max_multibulk_len, 2_147_483_647);
        assert_eq!(limits.max_inline_len, 65_536);
    }

    #[test]
    fn numbers_follow_string2ll() {
        for (text, value) in [
            (&b"0"[..], Some(0)),
            (b"1", Some(1)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"18446744073709551616", None),
            (b"00", None),
            (b"-0", None),
            (b"-", None),
            (b"", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"1a", None),
            (b"000000000000000000001", None),
        ] {
            assert_eq!(
                parse_number(text),
                value,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    /// Random streams of commands, good and corrupted, fed whole and in random pieces: the
    /// pieces never change what comes out (the limits are far above the inputs' sizes).
    #[test]
    fn random_streams_parse_the_same_in_any_pieces() {
        let mut rng = StdRng::seed_from_u64(0x6b65_7977);
        for round in 0..3000 {
            let input = random_stream(&mut rng);
            let case = case("random", &input, vec![]);
            let whole = run_whole(&case);
            let bytewise = run_bytewise(&case);
            assert_eq!(bytewise, whole, "round {round}: {input:?}");
            for _ in 0..4 {
                let mut pieces = Vec::new();
                let mut rest = &input[..];
                while !rest.is_empty() {
                    let n = rng.gen_range(1..=rest.len().min(24));
                    pieces.push(&rest[..n]);
                    rest = &rest[n..];
                }
                let run = run_pieces(parser_for(&case), pieces);
                assert_eq!(run, whole, "round {round}: {input:?}");
            }
            // Every multibulk command's raw bytes re-parse to the same arguments.
            for out in &whole.outs {
                if let Out::Cmd { raw, args } = out {
                    let again = run_pieces(RequestParser::new(ParserLimits::default()), [&raw[..]]);
                    assert_eq!(again.outs.len(), 1);
                    assert!(matches!(&again.outs[0], Out::Cmd { args: a, .. } if a == args));
                }
            }
        }
    }

    fn random_stream(rng: &mut StdRng) -> Vec<u8> {
        const BYTES: &[u8] = b"ab$*\"'\\ \t\r\n\0x0129-";
        let mut out = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            let argc = rng.gen_range(0..6);
            let args: Vec<Vec<u8>> = (0..argc)
                .map(|_| {
                    (0..rng.gen_range(0..6))
                        .map(|_| BYTES[rng.gen_range(0..BYTES.len())])
                        .collect()
                })
                .collect();
            let mut piece = match rng.gen_range(0..4) {
                0 => {
                    let mut line = args.join(&b' ');
                    line.extend_from_slice(if rng.gen() { b"\r\n" } else { b"\n" });
                    line
                }
                1 => format!("*{}\r\n", rng.gen_range(-2..1)).into_bytes(),
                _ if args.is_empty() => b"*1\r\n$0\r\n\r\n".to_vec(),
                _ => Request::from_args(&args).raw().to_vec(),
            };
            // Now and then, damage a byte or cut the piece short.
            if !piece.is_empty() && rng.gen_ratio(1, 4) {
                let i = rng.gen_range(0..piece.len());
                piece[i] = BYTES[rng.gen_range(0..BYTES.len())];
            }
            if !piece.is_empty() && rng.gen_ratio(1, 10) {
                piece.truncate(rng.gen_range(0..piece.len()));
            }
            out.extend_from_slice(&piece);
        }
        out
    }
}
