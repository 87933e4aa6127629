//! Every error the proxy itself answers a client with, and the one place that turns it into
//! wire bytes.
//!
//! Codes are stable and documented in the README: `ERR` for what Redis itself would say
//! (protocol errors, client limits), `UPSTREAM` for a request in flight that the upstream
//! could not answer, `FAILCLOSED` for a request refused because its keyspace fails closed
//! while the upstream is unavailable, `KEYSPACE` for a command mixing `local_only` keys with
//! keys that live upstream, `UNSUPPORTED` for a command the local store does not implement.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Why the upstream could not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection to the upstream could be made (refused, unreachable, connect timeout).
    Unavailable,
    /// The connection closed or failed with the request in flight.
    ConnectionLost,
    /// No reply within the command timeout; the connection was dropped.
    Timeout(Duration),
    /// The upstream sent bytes that are not RESP; the connection was dropped.
    BadReply,
    /// The upstream answered an error to a command the proxy sent to set up the connection
    /// (SELECT, HELLO, AUTH): the client's requests must not run on it.
    SetupRefused,
}

/// An error reply the proxy generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed client input; the connection is closed after this reply, as Redis does.
    Protocol(String),
    /// `max_clients` reached at accept time.
    MaxClients,
    /// The upstream could not answer.
    Upstream(UpstreamFailure),
    /// Refused without touching any state: the keyspace fails closed and the upstream is
    /// unavailable.
    FailClosed { keyspace: String },
    /// A command with `local_only` keys and keys that live upstream.
    MixedLocalOnly { command: String },
    /// The command would be served locally, and the local store does not implement it.
    Unsupported { command: String, keyspace: String },
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamFailure::Unavailable => f.write_str("upstream unavailable"),
            UpstreamFailure::ConnectionLost => {
                f.write_str("connection to upstream lost before the reply")
            }
            UpstreamFailure::Timeout(after) => {
                write!(f, "no reply from upstream within {}ms", after.as_millis())
            }
            UpstreamFailure::BadReply => f.write_str("upstream sent a malformed reply"),
            UpstreamFailure::SetupRefused => {
                f.write_str("upstream refused to set up the connection (SELECT, HELLO or AUTH)")
            }
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Protocol(msg) => write!(f, "ERR {msg}"),
            ProxyError::MaxClients => f.write_str("ERR max number of clients reached"),
            ProxyError::Upstream(why) => write!(f, "UPSTREAM {why}"),
            ProxyError::FailClosed { keyspace } => write!(
                f,
                "FAILCLOSED keyspace '{keyspace}' fails closed and the upstream is unavailable"
            ),
            ProxyError::MixedLocalOnly { command } => write!(
                f,
                "KEYSPACE '{command}' mixes local_only keys with keys that live upstream"
            ),
            ProxyError::Unsupported { command, keyspace } => write!(
                f,
                "UNSUPPORTED '{command}' is not supported by the local store (keyspace '{keyspace}')"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    /// The RESP error reply for this error: `-<CODE> <message>\r\n`.
    pub fn to_reply(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        self.write_reply(&mut out);
        out.freeze()
    }

    /// Appends the RESP error reply to `out`.
    pub fn write_reply(&self, out: &mut BytesMut) {
        use std::fmt::Write;
        out.put_u8(b'-');
        // Messages are built from our own texts and numbers only; CR/LF cannot appear, but a
        // protocol error quotes one client byte, so strip line breaks defensively.
        let start = out.len();
        let _ = write!(out, "{self}");
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        out.put_slice(b"\r\n");
    }
}

impl From<UpstreamFailure> for ProxyError {
    fn from(why: UpstreamFailure) -> ProxyError {
        ProxyError::Upstream(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let cases: &[(ProxyError, &[u8])] = &[
            (
                ProxyError::Protocol("Protocol error: invalid bulk length".into()),
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                ProxyError::MaxClients,
                b"-ERR max number of clients reached\r\n",
            ),
            (
                UpstreamFailure::Timeout(Duration::from_millis(1500)).into(),
                b"-UPSTREAM no reply from upstream within 1500ms\r\n",
            ),
            (
                UpstreamFailure::Unavailable.into(),
                b"-UPSTREAM upstream unavailable\r\n",
            ),
            (
                ProxyError::FailClosed {
                    keyspace: "rate-limits".into(),
                },
                b"-FAILCLOSED keyspace 'rate-limits' fails closed and the upstream is unavailable\r\n",
            ),
            (
                ProxyError::Unsupported {
                    command: "zadd".into(),
                    keyspace: "scratch".into(),
                },
                b"-UNSUPPORTED 'zadd' is not supported by the local store (keyspace 'scratch')\r\n",
            ),
            (
                ProxyError::Protocol("Protocol error: expected '$', got '\r'".into()),
                b"-ERR Protocol error: expected '$', got ' '\r\n",
            ),
        ];
        for (err, wire) in cases {
            assert_eq!(&err.to_reply()[..], *wire, "{err:?}");
        }
    }
}
