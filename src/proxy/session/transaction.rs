//! MULTI/EXEC/DISCARD/WATCH, answered by the proxy. The proxy queues a transaction itself
//! (`+QUEUED`, or an error that aborts it at EXEC, as Redis's queue-time errors do), so that one
//! transaction can run against the local store atomically, or be sent upstream in one piece —
//! MULTI, the commands, EXEC — where a lost upstream makes EXEC fail and never leaves a part
//! applied. A transaction runs in one place: every command in it must go to the same one.

use crate::protocol::request::Request;

/// Where a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Local,
    Upstream,
}

/// A transaction being queued (between MULTI and EXEC or DISCARD).
#[derive(Debug, Default)]
pub struct Multi {
    pub queued: Vec<Request>,
    /// Where its commands go, once one has said.
    pub target: Option<Target>,
    /// A queue-time error happened: EXEC answers EXECABORT.
    pub aborted: bool,
}

pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
pub const NESTED: &[u8] = b"-ERR MULTI calls can not be nested\r\n";
pub const WATCH_INSIDE: &[u8] = b"-ERR WATCH inside MULTI is not allowed\r\n";
pub const EXEC_WITHOUT: &[u8] = b"-ERR EXEC without MULTI\r\n";
pub const DISCARD_WITHOUT: &[u8] = b"-ERR DISCARD without MULTI\r\n";
/// Redis 7.2's text for commands flagged `no-multi`.
pub const NOT_ALLOWED: &[u8] = b"-ERR Command not allowed inside a transaction\r\n";
pub const MIXED: &[u8] =
    b"-KEYSPACE a transaction runs in one place: its keys are served locally and upstream\r\n";
pub const SELECT_UPSTREAM: &[u8] =
    b"-UNSUPPORTED SELECT inside a transaction is only supported for local keyspaces\r\n";

/// Commands that never enter a transaction: they change what the connection is (Pub/Sub,
/// MONITOR, the client's identity) rather than data.
pub fn refused_inside(name: &[u8]) -> bool {
    const REFUSED: &[&[u8]] = &[
        b"auth",
        b"hello",
        b"client",
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
        b"monitor",
        b"sync",
        b"psync",
        b"replconf",
    ];
    REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r))
}
