//! The one place that encodes the engine's replies as RESP2, and every error it answers with.
//!
//! Error texts are Redis 7.0's, byte for byte: the engine's replies must be indistinguishable
//! from the upstream's, so a client that matches on `WRONGTYPE` or `ERR value is not an
//! integer` behaves the same in degraded mode.

use bytes::{BufMut, BytesMut};

use crate::error::{self, ProxyError};

/// An error reply, as Redis words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Error {
    WrongType,
    NotInteger,
    NotFloat,
    IntOutOfRange,
    Overflow,
    DecrementOverflow,
    IncrementNanOrInfinity,
    ValueNanOrInfinity,
    HashNotInteger,
    HashNotFloat,
    Syntax,
    NoSuchKey,
    SameObject,
    InvalidCursor,
    OffsetOutOfRange,
    StringTooLong,
    DbOutOfRange,
    ExpireNxIncompatible,
    ExpireGtLtIncompatible,
    OutOfMemory,
    /// `wrong number of arguments for '<command>' command`
    Arity(&'static str),
    /// `invalid expire time in '<command>' command`
    InvalidExpire(&'static str),
    /// An EXPIRE option Redis does not know, quoted as sent (up to a NUL byte, as C prints it).
    UnsupportedOption(Vec<u8>),
    /// A command the engine does not implement (callers check [`super::supports`] first).
    UnknownCommand {
        name: Vec<u8>,
        args: Vec<Vec<u8>>,
    },
}

impl Error {
    /// The error line without its leading `-` and trailing CRLF.
    fn line(&self) -> Vec<u8> {
        let fixed: &str = match self {
            Error::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value",
            Error::NotInteger => error::NOT_AN_INTEGER,
            Error::NotFloat => "ERR value is not a valid float",
            Error::IntOutOfRange => error::INDEX_OUT_OF_RANGE,
            Error::Overflow => "ERR increment or decrement would overflow",
            Error::DecrementOverflow => "ERR decrement would overflow",
            Error::IncrementNanOrInfinity => "ERR increment would produce NaN or Infinity",
            Error::ValueNanOrInfinity => "ERR value is NaN or Infinity",
            Error::HashNotInteger => "ERR hash value is not an integer",
            Error::HashNotFloat => "ERR hash value is not a float",
            Error::Syntax => error::SYNTAX,
            Error::NoSuchKey => "ERR no such key",
            Error::SameObject => "ERR source and destination objects are the same",
            Error::InvalidCursor => "ERR invalid cursor",
            Error::OffsetOutOfRange => "ERR offset is out of range",
            Error::StringTooLong => "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
            Error::DbOutOfRange => error::DB_INDEX_OUT_OF_RANGE,
            Error::ExpireNxIncompatible => {
                "ERR NX and XX, GT or LT options at the same time are not compatible"
            }
            Error::ExpireGtLtIncompatible => {
                "ERR GT and LT options at the same time are not compatible"
            }
            Error::OutOfMemory => "OOM command not allowed when used memory > 'maxmemory'.",
            Error::Arity(name) => {
                let command = (*name).to_owned();
                return ProxyError::Arity { command }.to_string().into_bytes();
            }
            Error::InvalidExpire(name) => {
                return format!("ERR invalid expire time in '{name}' command").into_bytes()
            }
            Error::UnsupportedOption(opt) => {
                let mut msg = b"Unsupported option ".to_vec();
                msg.extend_from_slice(c_str(opt));
                return formatted(msg);
            }
            Error::UnknownCommand { name, args } => return unknown_command(name, args),
        };
        fixed.as_bytes().to_vec()
    }
}

/// What C's `%s` prints of a byte string: up to the first NUL.
pub(crate) fn c_str(bytes: &[u8]) -> &[u8] {
    bytes
        .iter()
        .position(|&b| b == 0)
        .map_or(bytes, |nul| &bytes[..nul])
}

/// Redis's `addReplyErrorFormat`: trims CR/LF at both ends, turns the others into spaces, and
/// prefixes `ERR ` (the message never starts with `-` here).
fn formatted(msg: Vec<u8>) -> Vec<u8> {
    let is_crlf = |b: &u8| *b == b'\r' || *b == b'\n';
    let start = msg.iter().position(|b| !is_crlf(b)).unwrap_or(msg.len());
    let end = msg
        .iter()
        .rposition(|b| !is_crlf(b))
        .map_or(start, |e| e + 1);
    let mut line = b"ERR ".to_vec();
    line.extend(
        msg[start..end]
            .iter()
            .map(|&b| if is_crlf(&b) { b' ' } else { b }),
    );
    line
}

/// Redis's unknown-command text: the name (128 bytes at most) and the first arguments, quoted.
fn unknown_command(name: &[u8], args: &[Vec<u8>]) -> Vec<u8> {
    let mut quoted = Vec::new();
    for arg in args {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        let arg = c_str(arg);
        quoted.push(b'\'');
        quoted.extend_from_slice(&arg[..arg.len().min(room)]);
        quoted.extend_from_slice(b"' ");
    }
    let name = c_str(name);
    let mut msg = b"unknown command '".to_vec();
    msg.extend_from_slice(&name[..name.len().min(128)]);
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&quoted);
    // Redis maps CR/LF to spaces here without trimming.
    let mut line = b"ERR ".to_vec();
    line.extend(
        msg.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    line
}

/// A reply being built, at the end of a buffer that may already hold earlier replies of the
/// same batch.
#[derive(Debug, Default)]
pub(super) struct Reply {
    buf: BytesMut,
    /// Where this command's reply starts in `buf`.
    start: usize,
    /// Encode for a RESP3 client: `_` for nulls, `%` maps (Redis's `addReplyNull`,
    /// `addReplyMapLen`); everything else is the same in both protocols.
    resp3: bool,
}

impl Reply {
    #[cfg(test)]
    pub(super) fn new() -> Reply {
        Reply::default()
    }

    /// Continues `buf`, where replies of earlier commands may already be.
    pub(super) fn continuing(buf: BytesMut, resp3: bool) -> Reply {
        Reply {
            start: buf.len(),
            buf,
            resp3,
        }
    }

    /// The next command's reply starts here.
    pub(super) fn begin(&mut self) {
        self.start = self.buf.len();
    }

    pub(super) fn into_buf(self) -> BytesMut {
        self.buf
    }

    pub(super) fn ok(&mut self) {
        self.buf.put_slice(b"+OK\r\n");
    }

    pub(super) fn simple(&mut self, status: &str) {
        self.buf.put_u8(b'+');
        self.buf.put_slice(status.as_bytes());
        self.buf.put_slice(b"\r\n");
    }

    pub(super) fn int(&mut self, n: i64) {
        self.buf.put_u8(b':');
        self.decimal(n);
        self.buf.put_slice(b"\r\n");
    }

    pub(super) fn bulk(&mut self, bytes: &[u8]) {
        self.header(b'$', bytes.len());
        self.buf.put_slice(bytes);
        self.buf.put_slice(b"\r\n");
    }

    /// A bulk string of a number's decimal digits.
    pub(super) fn bulk_u64(&mut self, n: u64) {
        let mut digits = itoa_buf();
        let text = format_u64(n, &mut digits);
        self.bulk(text);
    }

    /// The null bulk string, `$-1` (RESP3 `_`).
    pub(super) fn null(&mut self) {
        if self.resp3 {
            self.buf.put_slice(b"_\r\n");
        } else {
            self.buf.put_slice(b"$-1\r\n");
        }
    }

    /// A map of `pairs` field-value pairs: a flat array of twice as many in RESP2.
    pub(super) fn map(&mut self, pairs: usize) {
        if self.resp3 {
            self.header(b'%', pairs);
        } else {
            self.header(b'*', pairs * 2);
        }
    }

    pub(super) fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    pub(super) fn error(&mut self, error: &Error) {
        self.buf.put_u8(b'-');
        self.buf.put_slice(&error.line());
        self.buf.put_slice(b"\r\n");
    }

    /// Drops what this command wrote (a command that fails after starting its reply).
    pub(super) fn clear(&mut self) {
        self.buf.truncate(self.start);
    }

    #[cfg(test)]
    pub(super) fn into_bytes(self) -> bytes::Bytes {
        self.buf.freeze()
    }

    fn header(&mut self, kind: u8, len: usize) {
        self.buf.put_u8(kind);
        let mut digits = itoa_buf();
        self.buf.put_slice(format_u64(len as u64, &mut digits));
        self.buf.put_slice(b"\r\n");
    }

    fn decimal(&mut self, n: i64) {
        if n < 0 {
            self.buf.put_u8(b'-');
        }
        let mut digits = itoa_buf();
        self.buf
            .put_slice(format_u64(n.unsigned_abs(), &mut digits));
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// The decimal digits of `n`, written at the end of `buf`.
pub(super) fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The decimal text of `n` (what Redis stores after INCR).
pub(super) fn format_i64(n: i64) -> Vec<u8> {
    let mut digits = itoa_buf();
    let mut out = Vec::with_capacity(21);
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(format_u64(n.unsigned_abs(), &mut digits));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(f: impl FnOnce(&mut Reply)) -> Vec<u8> {
        let mut r = Reply::new();
        f(&mut r);
        r.into_bytes().to_vec()
    }

    #[test]
    fn encodings() {
        assert_eq!(wire(|r| r.ok()), b"+OK\r\n");
        assert_eq!(wire(|r| r.int(-42)), b":-42\r\n");
        assert_eq!(wire(|r| r.int(i64::MIN)), b":-9223372036854775808\r\n");
        assert_eq!(wire(|r| r.bulk(b"")), b"$0\r\n\r\n");
        assert_eq!(wire(|r| r.bulk(b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(
            wire(|r| r.bulk_u64(u64::MAX)),
            b"$20\r\n18446744073709551615\r\n"
        );
        assert_eq!(wire(|r| r.null()), b"$-1\r\n");
        assert_eq!(wire(|r| r.array(0)), b"*0\r\n");
        assert_eq!(format_i64(0), b"0");
        assert_eq!(format_i64(-7), b"-7");
    }

    #[test]
    fn error_texts() {
        let cases: &[(Error, &[u8])] = &[
            (
                Error::Arity("get"),
                b"-ERR wrong number of arguments for 'get' command\r\n",
            ),
            (
                Error::InvalidExpire("set"),
                b"-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                Error::OutOfMemory,
                b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            ),
            (
                Error::UnsupportedOption(b"\r\nfo\ro\0bar\r\n".to_vec()),
                b"-ERR Unsupported option   fo o\r\n",
            ),
            (
                Error::UnknownCommand {
                    name: b"foo".to_vec(),
                    args: vec![b"a".to_vec(), b"b\nc".to_vec()],
                },
                b"-ERR unknown command 'foo', with args beginning with: 'a' 'b c' \r\n",
            ),
        ];
        for (error, line) in cases {
            assert_eq!(wire(|r| r.error(error)), *line, "{error:?}");
        }
    }
}
