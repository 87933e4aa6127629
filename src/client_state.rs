//! What the proxy remembers of one client connection's state: the selected database, the
//! protocol version, the client's name. The proxy answers the commands that set these itself
//! (SELECT, HELLO, CLIENT SETNAME...), so they work whatever the upstream's health, and it
//! brings an upstream connection in line with them when the client needs one of its own.

use bytes::Bytes;

/// Connection state that differs from a fresh connection's. A session holds it boxed, and
/// only once something differs, so a plain client pays one pointer.
#[derive(Debug, Default, Clone)]
pub struct ClientState {
    /// The selected database (SELECT).
    pub db: u32,
    /// Replies in RESP3, after HELLO 3.
    pub resp3: bool,
    /// CLIENT SETNAME or HELLO ... SETNAME.
    pub name: Option<Bytes>,
}

impl ClientState {
    /// The selected database of a session's state, 0 when it has none.
    pub fn db_of(state: &Option<Box<ClientState>>) -> u32 {
        state.as_ref().map_or(0, |s| s.db)
    }

    /// Whether a session's state asks for RESP3.
    pub fn resp3_of(state: &Option<Box<ClientState>>) -> bool {
        state.as_ref().is_some_and(|s| s.resp3)
    }
}
