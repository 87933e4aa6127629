//! How one client request is carried to a Redis Cluster (pure: no sockets, no state): to the
//! node of its keys' slot, split per slot with the replies merged, to every primary, to any
//! node, or answered here.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::command;
use crate::command::slot::{key_slot, SLOTS};
use crate::protocol::request::Request;

/// Redis Cluster's reply to keys in more than one slot.
pub(crate) const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";

/// Where a request goes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// The node serving this slot.
    Slot(u16),
    /// A command without keys: any node.
    Any,
    /// Every primary, the replies merged.
    FanOut(Merge),
    /// One request per slot (in the order the slots first appear), the replies merged.
    Split(Vec<(u16, Request)>, Merge),
    /// SCAN over every primary in turn: the primary's index in the client's cursor.
    Scan { shard: usize, cursor: u64 },
    /// Answered by the proxy.
    Reply(Bytes),
}

/// How the replies of the parts become the client's one reply. An error reply from any part
/// is the reply (the first, in part order).
#[derive(Debug, Clone)]
pub(crate) enum Merge {
    /// Integers added (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    Sum,
    /// The first part's reply (MSET's +OK, FLUSHALL, SCRIPT LOAD's digest).
    First,
    /// Arrays concatenated (KEYS).
    Concat,
    /// MGET: array elements put back at their key's place: `places[i]` is where the i-th
    /// element of the parts, in part order, goes.
    Scatter { places: Vec<u32> },
}

/// Multi-key commands split across slots, as Envoy and predixy do; every other cross-slot
/// command gets CROSSSLOT.
fn split_kind(name: &[u8]) -> Option<(usize, Merge)> {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("mget") {
        Some((1, Merge::Scatter { places: Vec::new() }))
    } else if is("mset") {
        Some((2, Merge::First))
    } else if ["del", "unlink", "exists", "touch"].into_iter().any(is) {
        Some((1, Merge::Sum))
    } else {
        None
    }
}

/// Keyless commands run on every primary.
fn fan_out(req: &Request) -> Option<Merge> {
    let name = req.name();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let sub = |n: &str| {
        req.arg(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(n.as_bytes()))
    };
    if is("keys") {
        Some(Merge::Concat)
    } else if is("dbsize") {
        Some(Merge::Sum)
    } else if is("flushall")
        || is("flushdb")
        || (is("script") && (sub("load") || sub("flush")))
        || (is("function") && (sub("load") || sub("flush") || sub("delete")))
    {
        Some(Merge::First)
    } else {
        None
    }
}

/// The slot a keyless request is about: a shard channel's (SPUBLISH, SSUBSCRIBE,
/// SUNSUBSCRIBE: their channels are not keys, but Redis Cluster routes them by slot), or the
/// slot CLUSTER COUNTKEYSINSLOT and GETKEYSINSLOT name.
fn slot_without_keys(req: &Request) -> Option<u16> {
    let name = req.name();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("spublish") || is("ssubscribe") || is("sunsubscribe") {
        return req.arg(1).map(key_slot);
    }
    let sub = req.arg(1)?;
    if is("cluster")
        && (sub.eq_ignore_ascii_case(b"countkeysinslot")
            || sub.eq_ignore_ascii_case(b"getkeysinslot"))
    {
        let slot: u16 = std::str::from_utf8(req.arg(2)?).ok()?.parse().ok()?;
        return (usize::from(slot) < SLOTS).then_some(slot);
    }
    None
}

/// The slot of the node a client's own connection goes to for `req`: its first key's, or the
/// one [`slot_without_keys`] finds.
pub(crate) fn home_slot(req: &Request) -> Option<u16> {
    match command::keys(req) {
        Ok(keys) if !keys.is_empty() => req.arg(keys[0] as usize).map(key_slot),
        _ => slot_without_keys(req),
    }
}

/// Bits of a client's SCAN cursor that name the primary (up to 1024 of them).
pub(crate) const SCAN_SHARD_BITS: u32 = 10;

/// Plans `req`. `here` is keywarden's `host:port` as the client reached it, for the CLUSTER
/// replies that make a cluster client see one node owning every slot.
pub(crate) fn plan(req: &Request, here: &dyn Fn() -> String) -> Plan {
    let name = req.name();
    if name.eq_ignore_ascii_case(b"cluster") {
        if let Some(reply) = cluster_reply(req, here) {
            return Plan::Reply(reply);
        }
    }
    if name.eq_ignore_ascii_case(b"scan") {
        return match req
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
        {
            Some(c) => Plan::Scan {
                shard: (c & ((1 << SCAN_SHARD_BITS) - 1)) as usize,
                cursor: c >> SCAN_SHARD_BITS,
            },
            None => Plan::Reply(Bytes::from_static(b"-ERR invalid cursor\r\n")),
        };
    }
    let positions = match command::keys(req) {
        Ok(p) if !p.is_empty() => p,
        // No keys, or keys Redis will refuse to find: any node answers it, unless it names a
        // slot otherwise (a shard channel, CLUSTER COUNTKEYSINSLOT).
        _ => {
            return match slot_without_keys(req) {
                Some(slot) => Plan::Slot(slot),
                None => fan_out(req).map_or(Plan::Any, Plan::FanOut),
            }
        }
    };
    let first = key_slot(req.arg(positions[0] as usize).unwrap_or_default());
    let same = positions[1..]
        .iter()
        .all(|&i| key_slot(req.arg(i as usize).unwrap_or_default()) == first);
    if same {
        return Plan::Slot(first);
    }
    match split_kind(name) {
        Some((step, merge)) => split(req, step, merge),
        None => Plan::Reply(Bytes::from_static(CROSSSLOT)),
    }
}

/// MGET/DEL/... (`step` 1) or MSET (`step` 2) as one request per slot.
fn split(req: &Request, step: usize, merge: Merge) -> Plan {
    let name = req.arg(0).unwrap_or_default();
    // Slots in order of first appearance, each with its argument groups' indices; found by
    // a map, so that a request with a million keys costs a million lookups, not a scan of
    // every group for each.
    let mut groups: Vec<(u16, SmallVec<[usize; 4]>)> = Vec::new();
    let mut group_of: ahash::AHashMap<u16, usize> = ahash::AHashMap::new();
    let mut i = 1;
    while i + step <= req.argc() {
        let slot = key_slot(req.arg(i).unwrap_or_default());
        let g = *group_of.entry(slot).or_insert_with(|| {
            groups.push((slot, SmallVec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
        i += step;
    }
    let mut places = Vec::new();
    let parts = groups
        .into_iter()
        .map(|(slot, members)| {
            let mut args: Vec<&[u8]> = Vec::with_capacity(1 + members.len() * step);
            args.push(name);
            for &m in &members {
                places.push(((m - 1) / step) as u32);
                args.extend((m..m + step).filter_map(|a| req.arg(a)));
            }
            (slot, Request::from_args(&args))
        })
        .collect();
    let merge = match merge {
        Merge::Scatter { .. } => Merge::Scatter { places },
        other => other,
    };
    Plan::Split(parts, merge)
}

/// A stable node id for keywarden as cluster clients see it (40 hex digits).
fn node_id(here: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("keywarden {here}").as_bytes());
    digest[..20].iter().map(|b| format!("{b:02x}")).collect()
}

/// CLUSTER subcommands answered as a one-node cluster owning every slot, so that cluster
/// clients send everything to keywarden; `None` for the ones the upstream answers.
fn cluster_reply(req: &Request, here: &dyn Fn() -> String) -> Option<Bytes> {
    let sub = req.arg(1)?.to_ascii_lowercase();
    let bulk = |out: &mut BytesMut, s: &[u8]| {
        out.put_slice(format!("${}\r\n", s.len()).as_bytes());
        out.put_slice(s);
        out.put_slice(b"\r\n");
    };
    let mut out = BytesMut::new();
    let at = here();
    let (host, port) = at.rsplit_once(':').unwrap_or((&at, "0"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let id = node_id(&at);
    match &sub[..] {
        b"slots" => {
            out.put_slice(format!("*1\r\n*3\r\n:0\r\n:{}\r\n*3\r\n", SLOTS - 1).as_bytes());
            bulk(&mut out, host.as_bytes());
            out.put_slice(format!(":{port}\r\n").as_bytes());
            bulk(&mut out, id.as_bytes());
        }
        b"shards" => {
            out.put_slice(
                format!(
                    "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:{}\r\n$5\r\nnodes\r\n*1\r\n*14\r\n",
                    SLOTS - 1
                )
                .as_bytes(),
            );
            for (k, v) in [
                ("id", id.as_str()),
                ("port", port),
                ("ip", host),
                ("endpoint", host),
                ("role", "master"),
                ("replication-offset", "0"),
                ("health", "online"),
            ] {
                bulk(&mut out, k.as_bytes());
                if k == "port" || k == "replication-offset" {
                    out.put_slice(format!(":{v}\r\n").as_bytes());
                } else {
                    bulk(&mut out, v.as_bytes());
                }
            }
        }
        b"nodes" => {
            let line = format!(
                "{id} {host}:{port}@0 myself,master - 0 0 1 connected 0-{}\n",
                SLOTS - 1
            );
            bulk(&mut out, line.as_bytes());
        }
        b"myid" => bulk(&mut out, id.as_bytes()),
        b"info" => {
            let text =
                "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n\
                        cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\n\
                        cluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n";
            bulk(&mut out, text.as_bytes());
        }
        b"keyslot" if req.argc() == 3 => {
            out.put_slice(format!(":{}\r\n", key_slot(req.arg(2)?)).as_bytes());
        }
        _ => return None,
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    fn here() -> String {
        "127.0.0.1:6380".to_owned()
    }

    #[test]
    fn one_slot_goes_whole_and_keyless_anywhere() {
        assert!(matches!(
            plan(&req(&["GET", "foo"]), &here),
            Plan::Slot(12182)
        ));
        let same = plan(&req(&["MGET", "{u}a", "{u}b"]), &here);
        assert!(matches!(same, Plan::Slot(s) if s == key_slot(b"u")));
        assert!(matches!(plan(&req(&["PING"]), &here), Plan::Any));
        // Wrong arity: any node says so.
        assert!(matches!(plan(&req(&["GET"]), &here), Plan::Any));
        assert!(matches!(
            plan(&req(&["DBSIZE"]), &here),
            Plan::FanOut(Merge::Sum)
        ));
        assert!(matches!(
            plan(&req(&["KEYS", "*"]), &here),
            Plan::FanOut(Merge::Concat)
        ));
    }

    #[test]
    fn cross_slot_splits_or_is_refused() {
        let Plan::Split(parts, Merge::Scatter { places }) =
            plan(&req(&["MGET", "foo", "bar", "{foo}x"]), &here)
        else {
            panic!("MGET splits");
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, 12182);
        assert_eq!(parts[0].1.raw(), req(&["MGET", "foo", "{foo}x"]).raw());
        assert_eq!(parts[1].1.raw(), req(&["MGET", "bar"]).raw());
        assert_eq!(places, [0, 2, 1]);
        let Plan::Split(parts, Merge::First) = plan(&req(&["MSET", "foo", "1", "bar", "2"]), &here)
        else {
            panic!("MSET splits");
        };
        assert_eq!(parts[1].1.raw(), req(&["MSET", "bar", "2"]).raw());
        assert!(matches!(
            plan(&req(&["DEL", "foo", "bar"]), &here),
            Plan::Split(_, Merge::Sum)
        ));
        let Plan::Reply(r) = plan(&req(&["SUNION", "foo", "bar"]), &here) else {
            panic!("SUNION across slots is refused");
        };
        assert_eq!(&r[..], CROSSSLOT);
    }

    #[test]
    fn scan_cursors_name_the_primary() {
        assert!(matches!(
            plan(&req(&["SCAN", "0"]), &here),
            Plan::Scan {
                shard: 0,
                cursor: 0
            }
        ));
        assert!(matches!(
            plan(&req(&["SCAN", &((17u64 << 10) | 2).to_string()]), &here),
            Plan::Scan {
                shard: 2,
                cursor: 17
            }
        ));
        assert!(matches!(plan(&req(&["SCAN", "x"]), &here), Plan::Reply(_)));
    }

    #[test]
    fn cluster_clients_see_one_node_with_every_slot() {
        let Plan::Reply(r) = plan(&req(&["CLUSTER", "SLOTS"]), &here) else {
            panic!()
        };
        assert!(
            r.starts_with(b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:6380\r\n$40\r\n")
        );
        let Plan::Reply(r) = plan(&req(&["CLUSTER", "NODES"]), &here) else {
            panic!()
        };
        assert!(String::from_utf8_lossy(&r)
            .contains(" 127.0.0.1:6380@0 myself,master - 0 0 1 connected 0-16383\n"));
        let Plan::Reply(r) = plan(&req(&["cluster", "keyslot", "foo"]), &here) else {
            panic!()
        };
        assert_eq!(&r[..], b":12182\r\n");
        assert!(matches!(
            plan(&req(&["CLUSTER", "COUNTKEYSINSLOT", "1"]), &here),
            Plan::Slot(1)
        ));
        assert!(matches!(
            plan(&req(&["SPUBLISH", "foo", "m"]), &here),
            Plan::Slot(12182)
        ));
        assert_eq!(home_slot(&req(&["SSUBSCRIBE", "foo"])), Some(12182));
        assert_eq!(home_slot(&req(&["BLPOP", "bar", "0"])), Some(5061));
        assert_eq!(home_slot(&req(&["SUBSCRIBE", "bar"])), None);
    }
}
