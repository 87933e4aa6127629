//! What the proxy needs to know about each command, kept as data.
//!
//! For now the table answers one question per command: can it share a multiplexed upstream
//! connection, or does it depend on connection state (transactions, a selected database,
//! blocking, Pub/Sub, client settings), so that the client must get an upstream connection of
//! its own? Key positions join this table with keyspaces.
//!
//! Unknown commands are forwarded on a shared connection: Redis answers them (usually with
//! `-ERR unknown command`), and no connection state can come from a command Redis does not know.

use crate::request::Request;

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

/// Commands whose disposition does not depend on their arguments, sorted by name for binary
/// search. Everything absent is `Shared`. The UNSUBSCRIBE family is here because, even on a
/// connection with no subscriptions, Redis answers it with one reply per channel named, which
/// would break the one-request-one-reply pairing of a shared connection.
static TABLE: &[(&[u8], Disposition)] = &[
    (b"ASKING", STATEFUL),
    (b"AUTH", STATEFUL),
    (b"BLMOVE", BLOCKING),
    (b"BLMPOP", BLOCKING),
    (b"BLPOP", BLOCKING),
    (b"BRPOP", BLOCKING),
    (b"BRPOPLPUSH", BLOCKING),
    (b"BZMPOP", BLOCKING),
    (b"BZPOPMAX", BLOCKING),
    (b"BZPOPMIN", BLOCKING),
    (b"HELLO", STATEFUL),
    (b"MONITOR", UNPAIRED),
    (b"MULTI", STATEFUL),
    (b"PSUBSCRIBE", UNPAIRED),
    (b"PSYNC", UNPAIRED),
    (b"PUNSUBSCRIBE", UNPAIRED),
    (b"QUIT", Disposition::Quit),
    (b"READONLY", STATEFUL),
    (b"READWRITE", STATEFUL),
    (b"REPLCONF", UNPAIRED),
    (b"RESET", STATEFUL),
    (b"SSUBSCRIBE", UNPAIRED),
    (b"SUBSCRIBE", UNPAIRED),
    (b"SUNSUBSCRIBE", UNPAIRED),
    (b"SYNC", UNPAIRED),
    (b"UNSUBSCRIBE", UNPAIRED),
    (b"WAIT", BLOCKING),
    (b"WAITAOF", BLOCKING),
    (b"WATCH", STATEFUL),
];

/// CLIENT subcommands that change the connection's state.
static CLIENT_STATEFUL: &[(&[u8], Disposition)] = &[
    (b"CACHING", STATEFUL),
    (b"NO-EVICT", STATEFUL),
    (b"NO-TOUCH", STATEFUL),
    (b"REPLY", UNPAIRED),
    (b"SETINFO", STATEFUL),
    (b"SETNAME", STATEFUL),
    (b"TRACKING", STATEFUL),
];

/// The longest name in the tables; longer names are never stateful.
const MAX_NAME: usize = 16;

/// Decides how `req` is carried upstream.
pub fn disposition(req: &Request) -> Disposition {
    let Some(name) = upper(req.name()) else {
        return Disposition::Shared;
    };
    let name = name.as_slice();
    if let Some(d) = lookup(TABLE, name) {
        return d;
    }
    match name {
        // SELECT 0 is the state every shared connection is already in.
        b"SELECT" => match req.arg(1) {
            Some(b"0") => Disposition::Shared,
            _ => STATEFUL,
        },
        b"CLIENT" => req
            .arg(1)
            .and_then(upper)
            .and_then(|sub| lookup(CLIENT_STATEFUL, sub.as_slice()))
            .unwrap_or(Disposition::Shared),
        // XREAD and XREADGROUP block only with a BLOCK option, which precedes STREAMS.
        b"XREAD" | b"XREADGROUP" => {
            let blocks = req
                .args()
                .skip(1)
                .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
            if blocks {
                BLOCKING
            } else {
                Disposition::Shared
            }
        }
        _ => Disposition::Shared,
    }
}

fn lookup(table: &[(&[u8], Disposition)], name: &[u8]) -> Option<Disposition> {
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}

/// An upper-cased copy of a short name on the stack; `None` if it is too long to be in a table.
fn upper(name: &[u8]) -> Option<Upper> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut buf = [0u8; MAX_NAME];
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    Some(Upper {
        buf,
        len: name.len(),
    })
}

struct Upper {
    buf: [u8; MAX_NAME],
    len: usize,
}

impl Upper {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_fit() {
        for table in [TABLE, CLIENT_STATEFUL] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(table.iter().all(|(n, _)| n.len() <= MAX_NAME));
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
            (&["MULTI"], STATEFUL),
            (&["watch", "k"], STATEFUL),
            (&["SELECT", "0"], Disposition::Shared),
            (&["SELECT", "1"], STATEFUL),
            (&["SELECT"], STATEFUL),
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
            (&["subscribe", "ch"], UNPAIRED),
            (&["MONITOR"], UNPAIRED),
            (&["CLIENT", "SETNAME", "x"], STATEFUL),
            (&["client", "reply", "off"], UNPAIRED),
            (&["CLIENT", "ID"], Disposition::Shared),
            (&["CLIENT"], Disposition::Shared),
            (&["HELLO", "3"], STATEFUL),
            (&["averyveryverylongcommandname"], Disposition::Shared),
        ];
        for (args, want) in cases {
            assert_eq!(disposition(&Request::from_args(args)), *want, "{args:?}");
        }
    }
}
