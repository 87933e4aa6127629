//! The connection commands the proxy answers itself: HELLO, AUTH, SELECT, RESET and the CLIENT
//! subcommands that only concern this connection. They set [`ClientState`], so the answer is
//! the same whatever the upstream's health, and a client's upstream connections are brought in
//! line with it (see [`Follow`]). Texts and checks are Redis 7.0's (CLIENT SETINFO is 7.2's).

use std::fmt::Write;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::command;
use crate::error::{self, ProxyError};
use crate::local::engine;
use crate::policy::auth::{AuthError, Users};
use crate::protocol::request::Request;
use crate::protocol::resp;
use crate::proxy::clients::{Clients, KillFilter, Listed};
use crate::proxy::session::client_state::{ClientState, SessionState};

/// What the client's own upstream connection must be told after a command the proxy answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    Nothing,
    /// SELECT this database.
    Select(u32),
    /// Switch to this protocol version.
    Hello(u8),
    /// RESET.
    Reset,
}

/// The proxy's answer to a connection command.
pub(crate) struct Answer {
    pub reply: Bytes,
    pub follow: Follow,
}

/// What the proxy knows of the socket, for CLIENT INFO.
pub(crate) struct Peer {
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// What answering needs beyond the client's own state.
pub(crate) struct Env<'a> {
    pub users: &'a Users,
    /// The version HELLO reports.
    pub version: &'a str,
    /// This client's CLIENT ID.
    pub id: u64,
    /// Every client, for CLIENT LIST and CLIENT KILL.
    pub clients: &'a Clients,
}

/// What a session must do with a request before routing it, decided once from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Routed by its keys.
    Routed,
    /// A connection command the proxy answers (see [`answer`]), RESET included.
    Connection,
    Reset,
    Quit,
    Info,
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH.
    Transaction,
    /// The proxy's admin command.
    Keywarden,
    /// SCRIPT KILL, FUNCTION KILL, SHUTDOWN NOSAVE: sent upstream in every health state (see
    /// [`command::stops_a_busy_server`]).
    Rescue,
}

impl Handling {
    /// Classifies `req`, at the cost of a length check for almost every request.
    pub(crate) fn of(req: &Request) -> Handling {
        let name = req.name();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"auth") => Handling::Connection,
            4 if is(b"quit") => Handling::Quit,
            4 if is(b"info") => Handling::Info,
            4 if is(b"exec") => Handling::Transaction,
            5 if is(b"hello") => Handling::Connection,
            5 if is(b"reset") => Handling::Reset,
            5 if is(b"multi") || is(b"watch") => Handling::Transaction,
            6 if is(b"select") => Handling::Connection,
            6 if is(b"client") && req.arg(1).is_some_and(is_our_client_subcommand) => {
                Handling::Connection
            }
            // Client ids given to Redis would name Redis's connections, not the proxy's.
            6 if is(b"client") && names_client_ids(req) => Handling::Connection,
            7 if is(b"discard") || is(b"unwatch") => Handling::Transaction,
            9 if is(b"keywarden") => Handling::Keywarden,
            6 | 8 if command::stops_a_busy_server(req) => Handling::Rescue,
            _ => Handling::Routed,
        }
    }
}

/// Whether answering `req` may change what CLIENT LIST shows of the client.
pub(crate) fn may_change_listing(req: &Request) -> bool {
    !req.name().eq_ignore_ascii_case(b"client")
        || req.arg(1).is_some_and(|sub| {
            sub.eq_ignore_ascii_case(b"setname") || sub.eq_ignore_ascii_case(b"setinfo")
        })
}

/// CLIENT UNBLOCK, and CLIENT TRACKING ... REDIRECT: both name a client by id.
fn names_client_ids(req: &Request) -> bool {
    let Some(sub) = req.arg(1) else {
        return false;
    };
    sub.eq_ignore_ascii_case(b"unblock")
        || (sub.eq_ignore_ascii_case(b"tracking")
            && req.args().any(|a| a.eq_ignore_ascii_case(b"redirect")))
}

fn is_our_client_subcommand(sub: &[u8]) -> bool {
    CLIENT_SUBCOMMANDS
        .iter()
        .any(|s| sub.eq_ignore_ascii_case(s.as_bytes()))
}

/// CLIENT subcommands about this connection, or the proxy's clients (LIST, KILL); the others
/// (TRACKING, REPLY, PAUSE...) go upstream as before.
const CLIENT_SUBCOMMANDS: &[&str] = &[
    "setname", "getname", "id", "setinfo", "info", "list", "kill",
];

/// Answers a connection command (one [`Handling::of`] calls `Connection` or `Reset`).
pub(crate) fn answer(
    req: &Request,
    state: &mut SessionState,
    env: &Env<'_>,
    peer: impl FnOnce() -> Peer,
) -> Answer {
    let users = env.users;
    let name = req.name().to_ascii_lowercase();
    let plain = |reply: Bytes| Answer {
        reply,
        follow: Follow::Nothing,
    };
    match name.as_slice() {
        b"auth" => plain(auth(req, state, users)),
        b"hello" => hello(req, state, users, env.version, env.id),
        b"select" => select(req, state, users),
        b"reset" if req.argc() != 1 => plain(arity("reset")),
        b"reset" => {
            let lib = state.get().map(|s| (s.lib_name.clone(), s.lib_ver.clone()));
            state.clear();
            if let Some(lib) = lib.filter(|l| l.0.is_some() || l.1.is_some()) {
                // The connection keeps its library, as in Redis.
                let s = state.edit(users);
                (s.lib_name, s.lib_ver) = lib;
            }
            Answer {
                reply: Bytes::from_static(b"+RESET\r\n"),
                follow: Follow::Reset,
            }
        }
        _ => plain(client(req, state, env, peer)),
    }
}

fn error(e: ProxyError) -> Bytes {
    e.to_reply()
}

fn arity(command: &str) -> Bytes {
    error(ProxyError::Arity {
        command: command.to_owned(),
    })
}

fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

/// `AUTH [username] password`.
fn auth(req: &Request, state: &mut SessionState, users: &Users) -> Bytes {
    let (username, password) = match req.argc() {
        2 => (None, req.arg(1).unwrap_or_default()),
        3 => (req.arg(1), req.arg(2).unwrap_or_default()),
        1 => return arity("auth"),
        _ => return error(ProxyError::Syntax),
    };
    match users.auth(username, password) {
        Ok(id) => {
            state.edit(users).user = Some(id);
            ok()
        }
        Err(e) => error::reply(&e),
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`, checked in Redis's order:
/// the version, then the options one by one (AUTH takes effect at once), then that the client
/// is authenticated.
fn hello(req: &Request, state: &mut SessionState, users: &Users, version: &str, id: u64) -> Answer {
    let fail = |reply: Bytes| Answer {
        reply,
        follow: Follow::Nothing,
    };
    let mut protocol = None;
    if let Some(arg) = req.arg(1) {
        match engine::string2ll(arg) {
            Some(v @ 2..=3) => protocol = Some(v as u8),
            Some(_) => return fail(error(ProxyError::NoProto)),
            None => return fail(error(ProxyError::ProtocolVersion)),
        }
    }
    let mut j = 2;
    while j < req.argc() {
        let opt = req.arg(j).unwrap_or_default();
        let more = req.argc() - 1 - j;
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            let (user, pass) = (req.arg(j + 1), req.arg(j + 2).unwrap_or_default());
            match users.authenticate(user.unwrap_or_default(), pass) {
                Some(id) => state.edit(users).user = Some(id),
                None => return fail(error::reply(&AuthError::WrongPass)),
            }
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            if let Err(e) = set_name(state, users, req.arg(j + 1).unwrap_or_default()) {
                return fail(e);
            }
            j += 2;
        } else {
            let shown = String::from_utf8_lossy(engine::c_str(opt)).into_owned();
            return fail(error(ProxyError::HelloOption { option: shown }));
        }
    }
    if state.user(users).is_none() {
        return fail(error::reply(&AuthError::HelloNoAuth));
    }
    let s = state.edit(users);
    let switched = protocol.is_some_and(|v| (v == 3) != s.resp3);
    if let Some(v) = protocol {
        s.resp3 = v == 3;
    }
    let mut out = BytesMut::with_capacity(160);
    if s.resp3 {
        out.put_slice(b"%7\r\n");
    } else {
        out.put_slice(b"*14\r\n");
    }
    let bulk = |out: &mut BytesMut, text: &[u8]| {
        let _ = write!(out, "${}\r\n", text.len());
        out.put_slice(text);
        out.put_slice(b"\r\n");
    };
    bulk(&mut out, b"server");
    bulk(&mut out, b"redis");
    bulk(&mut out, b"version");
    bulk(&mut out, version.as_bytes());
    bulk(&mut out, b"proto");
    let _ = write!(out, ":{}\r\n", if s.resp3 { 3 } else { 2 });
    bulk(&mut out, b"id");
    let _ = write!(out, ":{id}\r\n");
    bulk(&mut out, b"mode");
    bulk(&mut out, b"standalone");
    bulk(&mut out, b"role");
    bulk(&mut out, b"master");
    bulk(&mut out, b"modules");
    out.put_slice(b"*0\r\n");
    Answer {
        reply: out.freeze(),
        follow: if switched {
            Follow::Hello(if s.resp3 { 3 } else { 2 })
        } else {
            Follow::Nothing
        },
    }
}

/// The Redis version HELLO reports before the proxy has learned the upstream's: the one whose
/// behaviour its command table and local engine follow.
pub const SERVER_VERSION: &str = "7.0.15";

/// SELECT: the database applies to the local store at once, and upstream through the client's
/// own connection (shared connections stay in database 0).
fn select(req: &Request, state: &mut SessionState, users: &Users) -> Answer {
    let fail = |reply: Bytes| Answer {
        reply,
        follow: Follow::Nothing,
    };
    if req.argc() != 2 {
        return fail(arity("select"));
    }
    let arg = req.arg(1).unwrap_or_default();
    let Some(db) = engine::string2ll(arg) else {
        return fail(error(ProxyError::NotAnInteger));
    };
    let Ok(db) = i32::try_from(db) else {
        return fail(error(ProxyError::IndexOutOfRange));
    };
    let db = match u32::try_from(db) {
        Ok(db) if db < engine::DATABASES => db,
        _ => return fail(error(ProxyError::DbIndexOutOfRange)),
    };
    if db == state.db() {
        return fail(ok());
    }
    state.edit(users).db = db;
    Answer {
        reply: ok(),
        follow: Follow::Select(db),
    }
}

/// Redis's rule for client names and library fields: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn set_name(state: &mut SessionState, users: &Users, name: &[u8]) -> Result<(), Bytes> {
    if !valid_name(name) {
        return Err(error(ProxyError::ClientName));
    }
    let s = state.edit(users);
    s.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
    Ok(())
}

fn client(
    req: &Request,
    state: &mut SessionState,
    env: &Env<'_>,
    peer: impl FnOnce() -> Peer,
) -> Bytes {
    let users = env.users;
    let sub = req.arg(1).unwrap_or_default().to_ascii_lowercase();
    let resp3 = state.resp3();
    match (sub.as_slice(), req.argc()) {
        (b"setname", 3) => match set_name(state, users, req.arg(2).unwrap_or_default()) {
            Ok(()) => ok(),
            Err(e) => e,
        },
        (b"setname", _) => arity("client|setname"),
        (b"getname", 2) => match state.get().and_then(|s| s.name.as_ref()) {
            Some(name) => {
                let mut out = BytesMut::new();
                let _ = write!(out, "${}\r\n", name.len());
                out.put_slice(name);
                out.put_slice(b"\r\n");
                out.freeze()
            }
            None if resp3 => Bytes::from_static(b"_\r\n"),
            None => Bytes::from_static(b"$-1\r\n"),
        },
        (b"getname", _) => arity("client|getname"),
        (b"id", 2) => Bytes::from(format!(":{}\r\n", env.id)),
        (b"id", _) => arity("client|id"),
        (b"setinfo", 4) => {
            let attr = req.arg(2).unwrap_or_default();
            let value = req.arg(3).unwrap_or_default();
            let is_name = attr.eq_ignore_ascii_case(b"lib-name");
            if !is_name && !attr.eq_ignore_ascii_case(b"lib-ver") {
                let shown = String::from_utf8_lossy(engine::c_str(attr)).into_owned();
                return error(ProxyError::UnrecognizedOption { option: shown });
            }
            if !valid_name(value) {
                let which = if is_name { "lib-name" } else { "lib-ver" };
                return error(ProxyError::LibField { which });
            }
            let s = state.edit(users);
            let value = (!value.is_empty()).then(|| Bytes::copy_from_slice(value));
            if is_name {
                s.lib_name = value;
            } else {
                s.lib_ver = value;
            }
            ok()
        }
        (b"setinfo", _) => arity("client|setinfo"),
        (b"info", 2) => {
            let line = info_line(state.edit(users), env, &peer());
            resp::text(&line, resp3)
        }
        (b"info", _) => arity("client|info"),
        (b"list", _) => list(req, env, resp3),
        (b"tracking", _) => error(ProxyError::TrackingRedirect),
        // The batch sends a forwarded one upstream before this is reached.
        (b"unblock", _) => match unblock(req, env.clients) {
            Unblock::Answer(reply) => reply,
            Unblock::Forward(_) => Bytes::from_static(b":0\r\n"),
        },
        (b"kill", _) => kill(req, env),
        _ => arity("client"),
    }
}

pub(crate) fn is_client_unblock(req: &Request) -> bool {
    req.name().eq_ignore_ascii_case(b"client")
        && req
            .arg(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"unblock"))
}

/// What CLIENT UNBLOCK becomes.
pub(crate) enum Unblock {
    Answer(Bytes),
    /// `CLIENT UNBLOCK <id in Redis> [TIMEOUT|ERROR]`, to send upstream.
    Forward(Request),
}

/// `CLIENT UNBLOCK <id> [TIMEOUT|ERROR]`: a client blocks on a connection of its own, so
/// unblocking it is Redis's CLIENT UNBLOCK of that connection, by its id in Redis, and Redis
/// answers (`:1`, or `:0` if it was not blocked); a client with no connection of its own is
/// not blocked (`:0`). Arguments are checked as Redis does, in its order.
pub(crate) fn unblock(req: &Request, clients: &Clients) -> Unblock {
    let answer = |e: ProxyError| Unblock::Answer(error(e));
    match req.argc() {
        0..=2 => return Unblock::Answer(arity("client|unblock")),
        3 | 4 => {}
        _ => {
            return answer(ProxyError::SubcommandSyntax {
                subcommand: String::from_utf8_lossy(req.arg(1).unwrap_or_default()).into(),
                command: "CLIENT",
            })
        }
    }
    let reason = req.arg(3);
    let valid = |r: &[u8]| r.eq_ignore_ascii_case(b"timeout") || r.eq_ignore_ascii_case(b"error");
    if reason.is_some_and(|r| !valid(r)) {
        return answer(ProxyError::UnblockReason);
    }
    let Some(id) = req.arg(2).and_then(engine::string2ll) else {
        return answer(ProxyError::NotAnInteger);
    };
    let upstream = u64::try_from(id)
        .ok()
        .and_then(|id| clients.upstream_id_of(id))
        .flatten();
    match upstream {
        Some(upstream) => {
            let upstream = upstream.to_string();
            let mut args: Vec<&[u8]> = vec![b"CLIENT", b"UNBLOCK", upstream.as_bytes()];
            args.extend(reason);
            Unblock::Forward(Request::from_args(&args))
        }
        None => Unblock::Answer(Bytes::from_static(b":0\r\n")),
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id [id ...]]`: the proxy's own
/// clients. Every client of the proxy counts as `normal`.
fn list(req: &Request, env: &Env<'_>, resp3: bool) -> Bytes {
    let args: Vec<&[u8]> = req.args().skip(2).collect();
    let is = |a: &[u8], w: &str| a.eq_ignore_ascii_case(w.as_bytes());
    match args.as_slice() {
        [] => resp::text(&env.clients.list(None), resp3),
        [t, kind] if is(t, "type") => {
            if is(kind, "normal") {
                resp::text(&env.clients.list(None), resp3)
            } else if ["master", "replica", "slave", "pubsub"]
                .iter()
                .any(|k| is(kind, k))
            {
                resp::text("", resp3)
            } else {
                let shown = String::from_utf8_lossy(engine::c_str(kind)).into_owned();
                error(ProxyError::UnknownClientType { kind: shown })
            }
        }
        [i, ids @ ..] if is(i, "id") && !ids.is_empty() => {
            let mut wanted = Vec::with_capacity(ids.len());
            for id in ids {
                match engine::string2ll(id) {
                    Some(n) if n > 0 => wanted.push(n as u64),
                    _ => return error(ProxyError::InvalidClientId),
                }
            }
            resp::text(&env.clients.list(Some(&wanted)), resp3)
        }
        _ => error(ProxyError::Syntax),
    }
}

/// `CLIENT KILL addr:port` (old form: `+OK`, or an error when no client matches) or
/// `CLIENT KILL <filter> <value> ...` with ID, ADDR, USER, SKIPME (new form: how many).
fn kill(req: &Request, env: &Env<'_>) -> Bytes {
    let args: Vec<&[u8]> = req.args().skip(2).collect();
    if args.is_empty() {
        return arity("client|kill");
    }
    let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
    if let [addr] = args.as_slice() {
        let filter = KillFilter {
            addr: Some(text(addr)),
            ..KillFilter::default()
        };
        return match env.clients.kill(&filter) {
            0 => error(ProxyError::NoSuchClient),
            _ => ok(),
        };
    }
    if !args.len().is_multiple_of(2) {
        return error(ProxyError::Syntax);
    }
    let mut filter = KillFilter {
        skip: Some(env.id),
        ..KillFilter::default()
    };
    for pair in args.chunks(2) {
        let (opt, value) = (pair[0], pair[1]);
        let is = |w: &str| opt.eq_ignore_ascii_case(w.as_bytes());
        if is("id") {
            match engine::string2ll(value) {
                Some(n) if n > 0 => filter.id = Some(n as u64),
                _ => return error(ProxyError::ClientIdNotPositive),
            }
        } else if is("addr") {
            filter.addr = Some(text(value));
        } else if is("user") {
            filter.user = Some(text(value));
        } else if is("skipme") {
            if value.eq_ignore_ascii_case(b"yes") {
                filter.skip = Some(env.id);
            } else if value.eq_ignore_ascii_case(b"no") {
                filter.skip = None;
            } else {
                return error(ProxyError::Syntax);
            }
        } else {
            return error(ProxyError::Syntax);
        }
    }
    Bytes::from(format!(":{}\r\n", env.clients.kill(&filter)))
}

/// What CLIENT LIST shows of a client's state.
pub(crate) fn listed(state: &SessionState, users: &Users) -> Listed {
    let Some(s) = state.get() else {
        return Listed::default();
    };
    Listed {
        name: s.name.clone(),
        db: s.db,
        user: s.user.map(|id| users.user(id).name().to_owned()),
        resp3: s.resp3,
        lib_name: s.lib_name.clone(),
        lib_ver: s.lib_ver.clone(),
    }
}

/// This client's CLIENT INFO line, with the fields the proxy knows.
fn info_line(s: &ClientState, env: &Env<'_>, peer: &Peer) -> String {
    let users = env.users;
    let show = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let user = s
        .user
        .map(|id| users.user(id).name().to_owned())
        .unwrap_or_else(|| crate::policy::auth::DEFAULT_USER.to_owned());
    format!(
        "id={} addr={} laddr={} name={} db={} user={} lib-name={} lib-ver={} resp={}\n",
        env.id,
        addr(peer.addr),
        addr(peer.local),
        show(&s.name),
        s.db,
        user,
        show(&s.lib_name),
        show(&s.lib_ver),
        if s.resp3 { 3 } else { 2 }
    )
}
