//! Every error the proxy itself answers a client with, and the one place that turns it into
//! wire bytes. (The local engine answers Redis's own data errors, such as WRONGTYPE, from its
//! error enum; users and permissions answer NOAUTH, NOPERM and WRONGPASS from theirs; both go
//! out through [`reply`] as well.)
//!
//! Codes are stable and documented in the README: `ERR` for what Redis itself would say
//! (protocol errors, client limits), `UPSTREAM` for a request in flight that the upstream
//! could not answer, `FAILCLOSED` for a request refused because its keyspace fails closed
//! while the upstream is unavailable, `KEYSPACE` for a command mixing `local_only` keys with
//! keys that live upstream, `UNSUPPORTED` for a command the local store does not implement.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Redis's texts that both the proxy and the local engine answer with.
pub(crate) const SYNTAX: &str = "ERR syntax error";
pub(crate) const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const INDEX_OUT_OF_RANGE: &str =
    "ERR value is out of range, value must between -2147483648 and 2147483647";
pub(crate) const DB_INDEX_OUT_OF_RANGE: &str = "ERR DB index is out of range";

/// Why the upstream could not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// No connection to the upstream could be made (refused, unreachable, connect timeout).
    Unavailable,
    /// The connection closed or failed with the request in flight.
    ConnectionLost,
    /// No reply within the command timeout: for the oldest request on a connection, or for
    /// those behind it once the upstream was found silent.
    Timeout(Duration),
    /// The upstream sent bytes that are not RESP; the connection was dropped.
    BadReply,
    /// The upstream answered an error to a command the proxy sent to set up the connection
    /// (SELECT, HELLO, AUTH): the client's requests must not run on it.
    SetupRefused,
}

/// An error reply the proxy generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// Malformed client input; the connection is closed after this reply, as Redis does.
    Protocol(String),
    /// `max_clients` reached at accept time.
    MaxClients,
    /// The upstream could not answer.
    Upstream(UpstreamFailure),
    /// Refused without touching any state: the keyspace fails closed and the upstream is
    /// unavailable.
    FailClosed {
        keyspace: String,
    },
    /// A command with `local_only` keys and keys that live upstream.
    MixedLocalOnly {
        command: String,
    },
    /// The command would be served locally, and the local store does not implement it.
    Unsupported {
        command: String,
        keyspace: String,
    },
    /// Redis's arity error; `command` as Redis names it (`client|setinfo` for a subcommand).
    Arity {
        command: String,
    },
    Syntax,
    NotAnInteger,
    /// SELECT's index beyond a 32-bit integer.
    IndexOutOfRange,
    DbIndexOutOfRange,
    /// HELLO with a protocol version other than 2 or 3.
    NoProto,
    ProtocolVersion,
    /// HELLO with an option it does not know, as the client wrote it (made printable).
    HelloOption {
        option: String,
    },
    /// CLIENT SETNAME with a name Redis refuses.
    ClientName,
    /// CLIENT SETINFO with an attribute it does not know.
    UnrecognizedOption {
        option: String,
    },
    /// CLIENT SETINFO with a value Redis refuses; `which` is LIB-NAME or LIB-VER.
    LibField {
        which: &'static str,
    },
    UnknownClientType {
        kind: String,
    },
    InvalidClientId,
    NoSuchClient,
    ClientIdNotPositive,
    /// CLIENT TRACKING ... REDIRECT: the id would name a Redis connection, not a client.
    TrackingRedirect,
    /// CLIENT UNBLOCK with a reason other than TIMEOUT or ERROR.
    UnblockReason,
    /// A subcommand given more arguments than it takes (Redis's `addReplySubcommandSyntaxError`).
    SubcommandSyntax {
        /// As the client typed it.
        subcommand: String,
        /// Upper case.
        command: &'static str,
    },
    /// EXEC after a queue-time error.
    ExecAbort,
    /// EXEC that could not run because the upstream refused it (a Redis busy with a script
    /// answers EXEC so): the refusal's text, without its `-` and line end.
    ExecAbortBecause(String),
    MultiNested,
    WatchInsideMulti,
    ExecWithoutMulti,
    DiscardWithoutMulti,
    /// A command flagged `no-multi` (Redis 7.2's text).
    NotAllowedInMulti,
    /// A transaction whose keys are served locally and upstream.
    TransactionMixed,
    /// SELECT queued in a transaction that runs upstream.
    SelectInUpstreamTransaction,
    /// `KEYWARDEN RELOAD` with a file that does not pass the checks.
    ReloadFailed {
        first: String,
        more: usize,
    },
    /// `KEYWARDEN` with a subcommand it does not know (made printable).
    UnknownSubcommand {
        shown: String,
    },
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
            ProxyError::Arity { command } => {
                write!(f, "ERR wrong number of arguments for '{command}' command")
            }
            ProxyError::Syntax => f.write_str(SYNTAX),
            ProxyError::NotAnInteger => f.write_str(NOT_AN_INTEGER),
            ProxyError::IndexOutOfRange => f.write_str(INDEX_OUT_OF_RANGE),
            ProxyError::DbIndexOutOfRange => f.write_str(DB_INDEX_OUT_OF_RANGE),
            ProxyError::NoProto => f.write_str("NOPROTO unsupported protocol version"),
            ProxyError::ProtocolVersion => {
                f.write_str("ERR Protocol version is not an integer or out of range")
            }
            ProxyError::HelloOption { option } => {
                write!(f, "ERR Syntax error in HELLO option '{option}'")
            }
            ProxyError::ClientName => f.write_str(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ),
            ProxyError::UnrecognizedOption { option } => {
                write!(f, "ERR Unrecognized option '{option}'")
            }
            ProxyError::LibField { which } => write!(
                f,
                "ERR {which} cannot contain spaces, newlines or special characters."
            ),
            ProxyError::UnknownClientType { kind } => {
                write!(f, "ERR Unknown client type '{kind}'")
            }
            ProxyError::InvalidClientId => f.write_str("ERR Invalid client ID"),
            ProxyError::NoSuchClient => f.write_str("ERR No such client"),
            ProxyError::ClientIdNotPositive => {
                f.write_str("ERR client-id should be greater than 0")
            }
            ProxyError::TrackingRedirect => f.write_str(
                "UNSUPPORTED 'client|tracking' with REDIRECT names a Redis connection; \
                 keywarden's client ids are its own",
            ),
            ProxyError::UnblockReason => {
                f.write_str("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
            }
            ProxyError::SubcommandSyntax {
                subcommand,
                command,
            } => write!(
                f,
                "ERR unknown subcommand or wrong number of arguments for '{subcommand}'. \
                 Try {command} HELP."
            ),
            ProxyError::ExecAbort => {
                f.write_str("EXECABORT Transaction discarded because of previous errors.")
            }
            ProxyError::ExecAbortBecause(error) => {
                write!(f, "EXECABORT Transaction discarded because of: {error}")
            }
            ProxyError::MultiNested => f.write_str("ERR MULTI calls can not be nested"),
            ProxyError::WatchInsideMulti => f.write_str("ERR WATCH inside MULTI is not allowed"),
            ProxyError::ExecWithoutMulti => f.write_str("ERR EXEC without MULTI"),
            ProxyError::DiscardWithoutMulti => f.write_str("ERR DISCARD without MULTI"),
            ProxyError::NotAllowedInMulti => {
                f.write_str("ERR Command not allowed inside a transaction")
            }
            ProxyError::TransactionMixed => f.write_str(
                "KEYSPACE a transaction runs in one place: its keys are served locally and upstream",
            ),
            ProxyError::SelectInUpstreamTransaction => f.write_str(
                "UNSUPPORTED SELECT inside a transaction is only supported for local keyspaces",
            ),
            ProxyError::ReloadFailed { first, more } => {
                write!(
                    f,
                    "ERR reload failed, the configuration in force is unchanged: {first}"
                )?;
                match more {
                    0 => Ok(()),
                    n => write!(f, " (and {n} more, see the log)"),
                }
            }
            ProxyError::UnknownSubcommand { shown } => {
                write!(f, "ERR unknown subcommand '{shown}'. Try KEYWARDEN HELP.")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    /// The RESP error reply for this error: `-<CODE> <message>\r\n`.
    pub(crate) fn to_reply(&self) -> Bytes {
        reply(self)
    }
}

/// The one place an error text becomes a RESP error reply: `-<CODE> <message>\r\n`. Messages
/// are built from our own texts, numbers and names from the configuration; a few quote a
/// client's bytes (made printable where they are built), so line breaks are replaced here
/// whatever the text, and a reply is always one line.
pub fn reply(text: &dyn fmt::Display) -> Bytes {
    use std::fmt::Write;
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(b'-');
    let _ = write!(out, "{text}");
    for b in &mut out[1..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
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

    #[test]
    fn every_text_is_one_line_with_its_code() {
        let cases: &[(ProxyError, &[u8])] = &[
            (
                ProxyError::Arity {
                    command: "client|setinfo".into(),
                },
                b"-ERR wrong number of arguments for 'client|setinfo' command\r\n",
            ),
            (
                ProxyError::ExecAbort,
                b"-EXECABORT Transaction discarded because of previous errors.\r\n",
            ),
            (
                ProxyError::UnblockReason,
                b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n",
            ),
            (
                ProxyError::SubcommandSyntax {
                    subcommand: "UNBLOCK".into(),
                    command: "CLIENT",
                },
                b"-ERR unknown subcommand or wrong number of arguments for 'UNBLOCK'. \
                  Try CLIENT HELP.\r\n",
            ),
            (
                ProxyError::TrackingRedirect,
                b"-UNSUPPORTED 'client|tracking' with REDIRECT names a Redis connection; \
                  keywarden's client ids are its own\r\n",
            ),
            (
                ProxyError::ReloadFailed {
                    first: "keyspaces[0].pattern: empty".into(),
                    more: 2,
                },
                b"-ERR reload failed, the configuration in force is unchanged: \
                  keyspaces[0].pattern: empty (and 2 more, see the log)\r\n",
            ),
            (
                ProxyError::UnknownSubcommand {
                    shown: "a\r\nb".into(),
                },
                b"-ERR unknown subcommand 'a  b'. Try KEYWARDEN HELP.\r\n",
            ),
        ];
        for (err, wire) in cases {
            assert_eq!(&err.to_reply()[..], *wire, "{err:?}");
        }
    }
}
