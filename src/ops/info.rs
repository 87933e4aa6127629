//! INFO through keywarden: the upstream's sections plus a `# Keywarden` section with the
//! proxy's own state (health, keyspaces, counters, local store). `INFO keywarden`, and INFO
//! while the upstream is unavailable, are answered by the proxy alone.

use std::fmt::Write;

use bytes::Bytes;

use crate::config::live::Policy;
use crate::ops::events;
use crate::ops::metrics::Overview;
use crate::protocol::request::Request;
use crate::protocol::resp;

/// What an INFO request asks of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wants {
    /// Only the Keywarden section: answered by the proxy.
    KeywardenOnly,
    /// Upstream sections, with the Keywarden section appended.
    Both,
    /// Upstream sections only.
    UpstreamOnly,
}

/// Which sections an INFO request names (none: Redis's default set, which here includes
/// Keywarden, as do `all` and `everything`).
pub(crate) fn wants(req: &Request) -> Wants {
    let sections: Vec<&[u8]> = req.args().skip(1).collect();
    let is = |s: &[u8], name: &str| s.eq_ignore_ascii_case(name.as_bytes());
    let ours = sections.is_empty()
        || sections
            .iter()
            .any(|s| is(s, "keywarden") || is(s, "all") || is(s, "everything") || is(s, "default"));
    if !ours {
        Wants::UpstreamOnly
    } else if !sections.is_empty() && sections.iter().all(|s| is(s, "keywarden")) {
        Wants::KeywardenOnly
    } else {
        Wants::Both
    }
}

/// The `# Keywarden` section, CRLF-terminated lines as Redis writes INFO.
pub(crate) fn section(sample: &Overview, policy: &Policy) -> String {
    let settings = &policy.settings;
    let (snapshot, counts, store) = (sample.health, sample.counts, &sample.store);
    let mut out = String::with_capacity(512);
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{key}:{value}\r\n");
    };
    line("keywarden_version", &env!("CARGO_PKG_VERSION"));
    line(
        "instance_id",
        &events::instance_id(settings.instance_id.as_deref()),
    );
    line("upstream", &settings.upstream.name());
    line("upstream_state", &snapshot.state.as_str());
    line(
        "upstream_state_since_ms",
        &snapshot.since.elapsed().as_millis(),
    );
    line("connected_clients", &sample.clients);
    line("parked_clients", &sample.parked_clients);
    line("default_mode", &settings.keyspaces.default_mode().as_str());
    for (i, ks) in settings.keyspaces.iter().enumerate() {
        line(
            &format!("keyspace{i}"),
            &format!("name={},mode={}", ks.name, ks.mode.as_str()),
        );
    }
    line("fail_closed_refusals", &counts.refused);
    line("degraded_replies", &counts.degraded_replies);
    line("discarded_writes", &counts.discarded_writes);
    line(
        "upstream_commands",
        &match crate::command::learned::learned() {
            None => "not_read".to_owned(),
            Some(l) => format!(
                "read,learned={},unknown_keys={},missing={}",
                l.added().count(),
                l.undecidable().len(),
                l.missing().len()
            ),
        },
    );
    line("local_store_keys", &store.keys);
    line("local_store_used_bytes", &store.used_bytes);
    line("local_store_max_bytes", &store.max_bytes);
    line("local_store_evictions", &store.evictions);
    line("local_store_expirations", &store.expirations);
    line("local_store_oom_refusals", &store.oom_refusals);
    for (i, part) in sample.store_parts.iter().enumerate() {
        line(
            &format!("local_store_part{i}"),
            &format!(
                "keyspace={},keys={},used_bytes={},max_bytes={},eviction={},evictions={},oom_refusals={}",
                part.keyspace,
                part.keys,
                part.used_bytes,
                part.max_bytes,
                part.eviction.as_str(),
                part.evictions,
                part.refusals
            ),
        );
    }
    if !settings.upstream.cluster_nodes.is_empty() {
        line("cluster_shards", &sample.shards.len());
        line("cluster_redirects", &sample.redirects);
        for (i, shard) in sample.shards.iter().enumerate() {
            line(
                &format!("cluster_shard{i}"),
                &format!(
                    "name={},primary={},state={}",
                    shard.name,
                    shard.primary,
                    shard.state.as_str()
                ),
            );
        }
    }
    let (applied, failed, last_failed) = sample.reloads;
    line("config_generation", &policy.generation);
    line("config_reloads", &applied);
    line("config_reload_failures", &failed);
    line("config_last_reload_ok", &u8::from(!last_failed));
    format!("# Keywarden\r\n{out}")
}

/// The upstream's INFO reply with `section` appended; anything that is not a bulk or
/// verbatim string (an error) is passed on as it is.
pub(crate) fn append(reply: &[u8], section: &str) -> Bytes {
    let resp3 = match reply.first() {
        Some(b'$') => false,
        Some(b'=') => true,
        _ => return Bytes::copy_from_slice(reply),
    };
    let Some(header_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return Bytes::copy_from_slice(reply);
    };
    let len = std::str::from_utf8(&reply[1..header_end])
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    let start = header_end + 2 + if resp3 { 4 } else { 0 };
    let Some(end) = len
        .map(|n| header_end + 2 + n)
        .filter(|&e| e >= start && e <= reply.len())
    else {
        return Bytes::copy_from_slice(reply);
    };
    let mut text = String::from_utf8_lossy(&reply[start..end]).into_owned();
    if !text.is_empty() {
        text.push_str("\r\n");
    }
    text.push_str(section);
    resp::text(&text, resp3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_sections() {
        let cases: &[(&[&str], Wants)] = &[
            (&["INFO"], Wants::Both),
            (&["info", "keywarden"], Wants::KeywardenOnly),
            (&["INFO", "KEYWARDEN", "keywarden"], Wants::KeywardenOnly),
            (&["INFO", "server"], Wants::UpstreamOnly),
            (&["INFO", "server", "keywarden"], Wants::Both),
            (&["INFO", "all"], Wants::Both),
            (&["INFO", "everything"], Wants::Both),
        ];
        for (args, want) in cases {
            assert_eq!(wants(&Request::from_args(args)), *want, "{args:?}");
        }
    }

    #[test]
    fn appends_to_bulk_and_verbatim_replies() {
        let section = "# Keywarden\r\na:1\r\n";
        let bulk = b"$20\r\n# Server\r\nx:1\r\ny:2\r\n\r\n";
        assert_eq!(
            &append(bulk, section)[..],
            b"$40\r\n# Server\r\nx:1\r\ny:2\r\n\r\n# Keywarden\r\na:1\r\n\r\n"
        );
        let verbatim = b"=24\r\ntxt:# Server\r\nx:1\r\ny:2\r\n\r\n";
        assert_eq!(
            &append(verbatim, section)[..],
            b"=44\r\ntxt:# Server\r\nx:1\r\ny:2\r\n\r\n# Keywarden\r\na:1\r\n\r\n"
        );
        assert_eq!(
            &append(b"$0\r\n\r\n", section)[..],
            &resp::text(section, false)[..]
        );
        let err = b"-ERR nope\r\n";
        assert_eq!(&append(err, section)[..], err);
    }
}
