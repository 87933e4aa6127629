//! What the proxy remembers of one client connection's state: the selected database, the
//! protocol version, the client's name and library, the user it authenticated as. The proxy
//! answers the commands that set these itself (SELECT, HELLO, AUTH, CLIENT SETNAME...), so they
//! work whatever the upstream's health, and it brings an upstream connection in line with them
//! when the client needs one of its own.

use bytes::Bytes;

use crate::local::store::Watch;
use crate::policy::auth::{UserId, Users};
use crate::protocol::request::Request;

/// Connection state that differs from a fresh connection's. A session holds it boxed, and
/// only once something differs, so a plain client pays one pointer.
pub(crate) struct ClientState {
    /// The selected database (SELECT).
    pub db: u32,
    /// Replies in RESP3, after HELLO 3.
    pub resp3: bool,
    /// The user the client acts as; `None` before it authenticates when a password is required.
    pub user: Option<UserId>,
    /// CLIENT SETNAME or HELLO ... SETNAME.
    pub name: Option<Bytes>,
    /// CLIENT SETINFO LIB-NAME / LIB-VER.
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    /// Between MULTI and EXEC/DISCARD.
    pub multi: Option<Box<Multi>>,
    /// Keys watched in the local store.
    pub watch: Option<Watch>,
    /// WATCH went upstream (on the client's own connection).
    pub watched_upstream: bool,
}

impl ClientState {
    /// A fresh connection's state: database 0, RESP2, the default user if there is one.
    pub(crate) fn new(users: &Users) -> ClientState {
        ClientState {
            db: 0,
            resp3: false,
            user: users.default_user(),
            name: None,
            lib_name: None,
            lib_ver: None,
            multi: None,
            watch: None,
            watched_upstream: false,
        }
    }
}

/// A client's connection state as its session holds it: a null pointer while every setting is
/// a fresh connection's, a boxed [`ClientState`] once one differs.
#[derive(Default)]
pub(crate) struct SessionState(Option<Box<ClientState>>);

impl SessionState {
    /// The state to change, made if the session had none.
    pub(crate) fn edit(&mut self, users: &Users) -> &mut ClientState {
        self.0
            .get_or_insert_with(|| Box::new(ClientState::new(users)))
    }

    /// The state, if anything differs from a fresh connection's.
    pub(crate) fn get(&self) -> Option<&ClientState> {
        self.0.as_deref()
    }

    pub(crate) fn get_mut(&mut self) -> Option<&mut ClientState> {
        self.0.as_deref_mut()
    }

    /// Back to a fresh connection's state (RESET).
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// The selected database, 0 for a fresh connection.
    pub(crate) fn db(&self) -> u32 {
        self.0.as_ref().map_or(0, |s| s.db)
    }

    /// Whether replies are RESP3.
    pub(crate) fn resp3(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.resp3)
    }

    /// The user the client acts as.
    pub(crate) fn user(&self, users: &Users) -> Option<UserId> {
        match &self.0 {
            Some(s) => s.user,
            None => users.default_user(),
        }
    }
}

/// Where a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Local,
    Upstream,
}

/// A transaction being queued (between MULTI and EXEC or DISCARD).
#[derive(Debug, Default)]
pub(crate) struct Multi {
    pub queued: Vec<Request>,
    /// Where its commands go, once one has said.
    pub target: Option<Target>,
    /// A queue-time error happened: EXEC answers EXECABORT.
    pub aborted: bool,
}
