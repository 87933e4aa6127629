//! How a command is carried upstream: on a shared, multiplexed connection, or on a connection
//! of the client's own because it depends on or creates connection state (transactions, a
//! selected database, blocking, Pub/Sub, client settings).
//!
//! SELECT, AUTH, HELLO, RESET and MULTI are not here: the session answers them and keeps the
//! state itself (see `proxy::session`: `connection_commands`, `transaction` and `client_state`).
//!
//! These short lists are kept apart from the command table's flags because the flags are not
//! exact for this question: WAIT is not flagged `blocking`; PUBLISH is `pubsub` but shares;
//! EXEC, DISCARD and UNWATCH only matter after MULTI or WATCH, which already moved the client;
//! CLIENT ID or INFO report on a connection without changing it. The lists also cover commands
//! newer than the table (WAITAOF, CLIENT SETINFO, CLIENT NO-TOUCH). A unit test checks them
//! against the table's flags.
//!
//! Unknown commands are forwarded on a shared connection: Redis answers them (usually with
//! `-ERR unknown command`), and no connection state can come from a command Redis does not know.

use std::sync::OnceLock;
use std::time::Duration;

use super::name_index::NameIndex;
use super::search;
use crate::protocol::request::Request;

/// How a command is carried upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Stateless: any shared connection serves it.
    Shared,
    /// Needs (or creates) connection state: the client moves to a dedicated connection.
    Dedicated(Stateful),
    /// `QUIT`: answered `+OK` by the proxy once earlier replies are out, then the connection
    /// closes (forwarded as is on a dedicated connection, where Redis does the same).
    Quit,
}

/// Properties of a stateful command that matter on a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stateful {
    /// May wait indefinitely for its reply (BLPOP, WAIT, XREAD BLOCK...): no command timeout.
    pub blocking: bool,
    /// After it, replies no longer pair one-to-one with requests (Pub/Sub, MONITOR,
    /// CLIENT REPLY): the connection is piped as raw bytes from then on.
    pub unpaired: bool,
}

const STATEFUL: Disposition = Disposition::Dedicated(Stateful {
    blocking: false,
    unpaired: false,
});
const BLOCKING: Disposition = Disposition::Dedicated(Stateful {
    blocking: true,
    unpaired: false,
});
const UNPAIRED: Disposition = Disposition::Dedicated(Stateful {
    blocking: false,
    unpaired: true,
});

/// Commands whose disposition does not depend on their arguments, lowercase and sorted for
/// binary search. Everything absent is `Shared`. The UNSUBSCRIBE family is here because, even
/// on a connection with no subscriptions, Redis answers it with one reply per channel named,
/// which would break the one-request-one-reply pairing of a shared connection.
static DISPOSITIONS: &[(&str, Disposition)] = &[
    ("asking", STATEFUL),
    ("blmove", BLOCKING),
    ("blmpop", BLOCKING),
    ("blpop", BLOCKING),
    ("brpop", BLOCKING),
    ("brpoplpush", BLOCKING),
    ("bzmpop", BLOCKING),
    ("bzpopmax", BLOCKING),
    ("bzpopmin", BLOCKING),
    ("monitor", UNPAIRED),
    ("psubscribe", UNPAIRED),
    ("psync", UNPAIRED),
    ("punsubscribe", UNPAIRED),
    ("quit", Disposition::Quit),
    ("readonly", STATEFUL),
    ("readwrite", STATEFUL),
    ("replconf", UNPAIRED),
    ("ssubscribe", UNPAIRED),
    ("subscribe", UNPAIRED),
    ("sunsubscribe", UNPAIRED),
    ("sync", UNPAIRED),
    ("unsubscribe", UNPAIRED),
    ("wait", BLOCKING),
    ("waitaof", BLOCKING),
    ("watch", STATEFUL),
];

/// CLIENT subcommands that change the connection's state (NO-TOUCH and SETINFO are Redis 7.2).
static CLIENT_DISPOSITIONS: &[(&str, Disposition)] = &[
    ("caching", STATEFUL),
    ("no-evict", STATEFUL),
    ("no-touch", STATEFUL),
    ("reply", UNPAIRED),
    ("setinfo", STATEFUL),
    ("setname", STATEFUL),
    ("tracking", STATEFUL),
];

/// SCRIPT KILL, FUNCTION KILL, SHUTDOWN NOSAVE: what ends a script or function that keeps
/// Redis busy. A busy Redis answers them from any connection but the one running the script,
/// and answers BUSY to nearly everything else, so they go on a connection of the client's own
/// and reach the upstream whatever its health (the session does not route them by keys).
#[inline]
pub(crate) fn stops_a_busy_server(req: &Request) -> bool {
    let name = req.name();
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let kill = || req.argc() == 2 && req.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"kill"));
    // By length first: this is asked of every request.
    match name.len() {
        6 => is(b"script") && kill(),
        8 if is(b"function") => kill(),
        8 => {
            is(b"shutdown")
                && req
                    .args()
                    .skip(1)
                    .any(|a| a.eq_ignore_ascii_case(b"nosave"))
        }
        _ => false,
    }
}

/// How long a blocking command asks Redis to wait: `Some` for a finite timeout, `None` for
/// one that waits for ever (timeout 0) or that is not a blocking command with a timeout Redis
/// would accept (Redis answers those with an error at once). The list and zset pops take
/// seconds as a float (the last argument, or the first for BLMPOP and BZMPOP); XREAD and
/// XREADGROUP take `BLOCK <ms>`; WAIT and WAITAOF take milliseconds last.
pub fn block_timeout(req: &Request) -> Option<Duration> {
    let name = req.name();
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let last = req.argc().checked_sub(1)?;
    let seconds = |i: usize| {
        let s: f64 = std::str::from_utf8(req.arg(i)?).ok()?.trim().parse().ok()?;
        (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s.min(1e9)))
    };
    let millis = |i: usize| {
        let ms: u64 = std::str::from_utf8(req.arg(i)?).ok()?.parse().ok()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    };
    let pops = [
        &b"blpop"[..],
        b"brpop",
        b"bzpopmin",
        b"bzpopmax",
        b"brpoplpush",
        b"blmove",
    ];
    if pops.iter().any(|n| is(n)) {
        seconds(last)
    } else if is(b"blmpop") || is(b"bzmpop") {
        seconds(1)
    } else if is(b"xread") || is(b"xreadgroup") {
        let block = req.args().position(|a| a.eq_ignore_ascii_case(b"block"))?;
        millis(block + 1)
    } else if is(b"wait") || is(b"waitaof") {
        millis(last)
    } else {
        None
    }
}

/// How a command holds the upstream by design, keeping it from answering other connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Until its reply: Redis runs one command at a time, so nothing else is answered while
    /// it runs (a script, KEYS, a synchronous FLUSHALL, SAVE, DEBUG SLEEP, ...).
    UntilReply,
    /// For this many milliseconds after it is answered: `CLIENT PAUSE <ms>` (other clients'
    /// commands wait, or with `WRITE` their writes do).
    Pause(u64),
}

/// Whether `req` may keep the upstream from answering anyone for longer than a command
/// timeout, because the client asked for it: scripts and functions (EVAL, EVALSHA, FCALL and
/// their `_RO` forms), KEYS, FLUSHALL and FLUSHDB (synchronous unless ASYNC, and ASYNC is
/// cheap to count too), SAVE, DEBUG, MIGRATE, FUNCTION and SCRIPT (FLUSH, LOAD, RESTORE), and
/// CLIENT PAUSE. While one is in flight, another request's silent wait is Redis doing what it
/// was told, not a hang (see `upstream::holds`). O(N) commands on big values (SUNIONSTORE,
/// SORT, DEL of a huge key) are not listed: they are the tail the command timeout is for.
#[inline(always)]
pub fn holds_the_server(req: &Request) -> Option<Hold> {
    // By length first, inline: this is asked of every request sent upstream, and most (GET,
    // SET, ...) are ruled out here.
    match req.name().len() {
        4..=8 | 10 => holds_by_name(req),
        _ => None,
    }
}

fn holds_by_name(req: &Request) -> Option<Hold> {
    let name = req.name();
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let holds = match name.len() {
        4 => is(b"eval") || is(b"keys") || is(b"save"),
        5 => is(b"fcall") || is(b"debug"),
        6 if is(b"client") => return client_pause(req),
        6 => is(b"script"),
        7 => is(b"evalsha") || is(b"eval_ro") || is(b"flushdb") || is(b"migrate"),
        8 => is(b"fcall_ro") || is(b"flushall") || is(b"function"),
        10 => is(b"evalsha_ro"),
        _ => false,
    };
    holds.then_some(Hold::UntilReply)
}

/// `CLIENT PAUSE <ms> [WRITE|ALL]`: the pause, when the timeout is a valid count.
fn client_pause(req: &Request) -> Option<Hold> {
    if !req.arg(1)?.eq_ignore_ascii_case(b"pause") {
        return None;
    }
    let ms = std::str::from_utf8(req.arg(2)?).ok()?.parse::<u64>().ok()?;
    Some(Hold::Pause(ms))
}

/// Decides how `req` is carried upstream.
pub fn disposition(req: &Request) -> Disposition {
    static INDEX: OnceLock<NameIndex> = OnceLock::new();
    let name = req.name();
    let index = INDEX.get_or_init(|| NameIndex::new(DISPOSITIONS.iter().map(|e| e.0).collect()));
    if let Some(i) = index.find(name) {
        return DISPOSITIONS[i].1;
    }
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    // By length first: most requests are none of these (GET, SET, ...).
    match name.len() {
        6 | 8 if stops_a_busy_server(req) => STATEFUL,
        6 if is(b"client") => req
            .arg(1)
            .and_then(|sub| search(CLIENT_DISPOSITIONS, sub, |e| e.0))
            .map_or(Disposition::Shared, |(_, d)| *d),
        5 | 10 if (is(b"xread") || is(b"xreadgroup")) && super::keys::xread_options(req).blocks => {
            BLOCKING
        }
        // A module's blocking command, learned from the upstream: its own connection, as
        // BLPOP's, waiting as long as it blocks (its timeout argument is not known).
        _ if super::learned::any_blocking()
            && super::lookup_request(req)
                .is_some_and(|c| c.is_blocking() && c.flags().contains(super::Flags::LEARNED)) =>
        {
            BLOCKING
        }
        _ => Disposition::Shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::commands;

    #[test]
    fn blocking_timeouts() {
        let wait = |args: &[&str]| block_timeout(&Request::from_args(args));
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(wait(&["BLPOP", "a", "b", "1.5"]), ms(1500));
        assert_eq!(wait(&["brpop", "a", "0.25"]), ms(250));
        assert_eq!(wait(&["BZPOPMIN", "z", "2"]), ms(2000));
        assert_eq!(wait(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "0.5"]), ms(500));
        assert_eq!(wait(&["BRPOPLPUSH", "a", "b", "3"]), ms(3000));
        assert_eq!(wait(&["BLMPOP", "0.3", "1", "a", "LEFT"]), ms(300));
        assert_eq!(wait(&["BZMPOP", "1", "1", "z", "MIN"]), ms(1000));
        assert_eq!(
            wait(&["XREAD", "COUNT", "1", "BLOCK", "300", "STREAMS", "s", "$"]),
            ms(300)
        );
        assert_eq!(
            wait(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "block",
                "20",
                "STREAMS",
                "s",
                ">"
            ]),
            ms(20)
        );
        assert_eq!(wait(&["WAIT", "1", "100"]), ms(100));
        assert_eq!(wait(&["WAITAOF", "1", "0", "100"]), ms(100));
        // For ever, or not a timeout Redis accepts (it answers an error at once).
        for args in [
            &["BLPOP", "a", "0"][..],
            &["BLPOP", "a", "-1"],
            &["BLPOP", "a", "soon"],
            &["BLPOP", "a", "inf"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
            &["XREAD", "STREAMS", "s", "$"],
            &["WAIT", "1", "0"],
            &["GET", "1"],
            &["BLPOP"],
        ] {
            assert_eq!(wait(args), None, "{args:?}");
        }
    }

    #[test]
    fn commands_that_hold_the_server() {
        let holds = |args: &[&str]| holds_the_server(&Request::from_args(args));
        for name in [
            "EVAL",
            "evalsha",
            "Eval_Ro",
            "EVALSHA_RO",
            "FCALL",
            "FCALL_RO",
            "KEYS",
            "FLUSHALL",
            "FLUSHDB",
            "SAVE",
            "DEBUG",
            "MIGRATE",
            "SCRIPT",
            "FUNCTION",
        ] {
            assert_eq!(holds(&[name, "x"]), Some(Hold::UntilReply), "{name}");
        }
        for args in [
            &["GET", "k"][..],
            &["EVALX"],
            &["CLIENT", "LIST"],
            &["CLIENT", "PAUSE"],
            &["CLIENT", "PAUSE", "-1"],
            &["CLIENT", "PAUSE", "soon"],
            &["SCAN", "0"],
            &["BGSAVE"],
        ] {
            assert_eq!(holds(args), None, "{args:?}");
        }
        assert_eq!(
            holds(&["client", "pause", "1500", "WRITE"]),
            Some(Hold::Pause(1500))
        );
    }

    #[test]
    fn lists_are_sorted_and_lowercase() {
        for list in [DISPOSITIONS, CLIENT_DISPOSITIONS] {
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(list.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
        }
    }

    #[test]
    fn dispositions() {
        let cases: &[(&[&str], Disposition)] = &[
            (&["GET", "k"], Disposition::Shared),
            (&["get", "k"], Disposition::Shared),
            (&["SET", "k", "v"], Disposition::Shared),
            (&["NOSUCHCOMMAND"], Disposition::Shared),
            (&["quit"], Disposition::Quit),
            (&["watch", "k"], STATEFUL),
            (&["blpop", "q", "0"], BLOCKING),
            (&["WAIT", "1", "0"], BLOCKING),
            (
                &["XREAD", "COUNT", "1", "STREAMS", "s", "0"],
                Disposition::Shared,
            ),
            (&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"], BLOCKING),
            (&["XREAD", "STREAMS", "block", "0"], Disposition::Shared),
            (
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "block",
                    "10",
                    "STREAMS",
                    "s",
                    ">",
                ],
                BLOCKING,
            ),
            // Names that are keywords: read as Redis reads them.
            (
                &[
                    "XREADGROUP",
                    "GROUP",
                    "streams",
                    "c1",
                    "BLOCK",
                    "0",
                    "STREAMS",
                    "s",
                    ">",
                ],
                BLOCKING,
            ),
            (
                &["XREADGROUP", "GROUP", "block", "c", "STREAMS", "s", ">"],
                Disposition::Shared,
            ),
            (
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "block",
                    "NOACK",
                    "STREAMS",
                    "s",
                    ">",
                ],
                Disposition::Shared,
            ),
            (
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "NOACK",
                    "BLOCK",
                    "5",
                    "STREAMS",
                    "s",
                    ">",
                ],
                BLOCKING,
            ),
            (
                &["XREAD", "COUNT", "block", "STREAMS", "s", "0"],
                Disposition::Shared,
            ),
            (
                &["XREAD", "COUNT", "2", "BLOCK", "0", "STREAMS", "s", "$"],
                BLOCKING,
            ),
            (&["XREAD", "STREAMS", "s", "BLOCK"], Disposition::Shared),
            (&["XREAD", "BLOCK"], Disposition::Shared),
            (
                &["XREAD", "NOSUCHOPTION", "BLOCK", "0"],
                Disposition::Shared,
            ),
            (&["SCRIPT", "KILL"], STATEFUL),
            (&["function", "kill"], STATEFUL),
            (&["SHUTDOWN", "NOSAVE"], STATEFUL),
            (&["SHUTDOWN", "NOW", "nosave", "FORCE"], STATEFUL),
            (&["SCRIPT", "LOAD", "return 1"], Disposition::Shared),
            (&["SCRIPT", "KILL", "extra"], Disposition::Shared),
            (&["FUNCTION", "LIST"], Disposition::Shared),
            (&["subscribe", "ch"], UNPAIRED),
            (&["MONITOR"], UNPAIRED),
            (&["CLIENT", "SETNAME", "x"], STATEFUL),
            (&["client", "reply", "off"], UNPAIRED),
            (&["CLIENT", "ID"], Disposition::Shared),
            (&["CLIENT"], Disposition::Shared),
            (&["averyveryverylongcommandname"], Disposition::Shared),
        ];
        for (args, want) in cases {
            assert_eq!(disposition(&Request::from_args(args)), *want, "{args:?}");
        }
    }

    /// The disposition lists and the table's flags agree wherever the flags decide.
    #[test]
    fn dispositions_agree_with_flags() {
        let all = commands()
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands));
        for cmd in all {
            let mut args: Vec<&str> = cmd.name().split('|').collect();
            // A first argument for commands whose disposition reads it (SELECT 1, XREAD BLOCK).
            if args.len() == 1 {
                args.extend(["BLOCK", "0", "STREAMS", "s", "0"]);
            }
            let req = Request::from_args(&args);
            let d = disposition(&req);
            if cmd.is_blocking() {
                assert_eq!(d, BLOCKING, "{}", cmd.name());
            }
            let subscribing = cmd.is_pubsub() && cmd.uses_connection_state();
            if subscribing || cmd.name() == "monitor" {
                assert_eq!(d, UNPAIRED, "{}", cmd.name());
            }
            if d != Disposition::Shared {
                assert!(
                    cmd.uses_connection_state()
                        || cmd.is_blocking()
                        || cmd.name() == "wait"
                        || stops_a_busy_server(&req),
                    "{} is dedicated but not connection_state",
                    cmd.name()
                );
            }
            // Connection state that stays shared: EXEC/DISCARD/UNWATCH only follow MULTI/WATCH
            // (already dedicated); SELECT, AUTH, HELLO, RESET and MULTI are answered by the
            // session, which moves the client to a dedicated connection when a request must
            // run upstream in another database;
            // the rest report on the connection without changing it.
            let shared_ok = [
                "select",
                "auth",
                "hello",
                "multi",
                "reset",
                "exec",
                "discard",
                "unwatch",
                "client|getname",
                "client|id",
                "client|info",
                "client|trackinginfo",
                "client|getredir",
            ];
            if cmd.uses_connection_state() && d == Disposition::Shared {
                assert!(shared_ok.contains(&cmd.name()), "{} is shared", cmd.name());
            }
        }
    }
}
