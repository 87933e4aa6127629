//! INFO through keywarden: the upstream's sections plus a `# Keywarden` section with the
//! proxy's own state (health, keyspaces, counters, local store). `INFO keywarden`, and INFO
//! while the upstream is unavailable, are answered by the proxy alone. Also the proxy's own
//! admin command, `KEYWARDEN STATUS | KEYSPACES | HELP`.

use std::fmt::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::ops::events;
use crate::protocol::request::Request;
use crate::protocol::resp;
use crate::proxy::server::Ctx;

/// What an INFO request asks of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// Only the Keywarden section: answered by the proxy.
    KeywardenOnly,
    /// Upstream sections, with the Keywarden section appended.
    Both,
    /// Upstream sections only.
    UpstreamOnly,
}

/// Which sections an INFO request names (none: Redis's default set, which here includes
/// Keywarden, as do `all` and `everything`).
pub fn wants(req: &Request) -> Wants {
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
pub fn section(ctx: Ctx<'_>) -> String {
    let (server, settings) = (ctx.server, ctx.settings);
    let snapshot = server.monitor.snapshot();
    let counts = server.monitor.counters().totals();
    let store = &server.store;
    let mut out = String::with_capacity(512);
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{key}:{value}\r\n");
    };
    line("keywarden_version", &env!("CARGO_PKG_VERSION"));
    line(
        "instance_id",
        &events::instance_id(settings.instance_id.as_deref()),
    );
    line("upstream", &settings.upstream.address);
    line("upstream_state", &snapshot.state.as_str());
    line(
        "upstream_state_since_ms",
        &snapshot.since.elapsed().as_millis(),
    );
    line("connected_clients", &server.clients.count());
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
    line("local_store_keys", &store.keys());
    line("local_store_used_bytes", &store.used_bytes());
    line("local_store_max_bytes", &store.max_bytes());
    line("local_store_evictions", &store.evictions());
    line("local_store_expirations", &store.expirations());
    let (applied, failed, last_failed) = server.reloads.totals();
    line("config_generation", &ctx.policy.generation);
    line("config_reloads", &applied);
    line("config_reload_failures", &failed);
    line("config_last_reload_ok", &u8::from(!last_failed));
    format!("# Keywarden\r\n{out}")
}

/// The upstream's INFO reply with `section` appended; anything that is not a bulk or
/// verbatim string (an error) is passed on as it is.
pub fn append(reply: &[u8], section: &str) -> Bytes {
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

/// `KEYWARDEN <subcommand>` (the caller checked the admin permission).
pub fn keywarden_command(req: &Request, ctx: Ctx<'_>, resp3: bool) -> Bytes {
    let Some(sub) = req.arg(1) else {
        return Bytes::from_static(b"-ERR wrong number of arguments for 'keywarden' command\r\n");
    };
    let is = |w: &str| sub.eq_ignore_ascii_case(w.as_bytes());
    let mut out = BytesMut::new();
    if is("status") && req.argc() == 2 {
        let json = serde_json::to_string(&crate::ops::admin::Status::of(ctx)).unwrap_or_default();
        let _ = write!(out, "${}\r\n{json}\r\n", json.len());
    } else if is("keyspaces") && req.argc() == 2 {
        let keyspaces = &ctx.settings.keyspaces;
        let bulk = |out: &mut BytesMut, text: &[u8]| {
            let _ = write!(out, "${}\r\n", text.len());
            out.put_slice(text);
            out.put_slice(b"\r\n");
        };
        let mut rows: Vec<(&str, &str, Vec<&[u8]>)> = keyspaces
            .iter()
            .map(|ks| {
                let patterns = ks
                    .patterns
                    .iter()
                    .map(|p| match p {
                        crate::policy::keyspace::Pattern::Prefix(b)
                        | crate::policy::keyspace::Pattern::Glob(b) => &b[..],
                    })
                    .collect();
                (ks.name.as_str(), ks.mode.as_str(), patterns)
            })
            .collect();
        rows.push(("default", keyspaces.default_mode().as_str(), Vec::new()));
        let _ = write!(out, "*{}\r\n", rows.len());
        for (name, mode, patterns) in rows {
            let _ = if resp3 {
                write!(out, "%3\r\n")
            } else {
                write!(out, "*6\r\n")
            };
            bulk(&mut out, b"name");
            bulk(&mut out, name.as_bytes());
            bulk(&mut out, b"mode");
            bulk(&mut out, mode.as_bytes());
            bulk(&mut out, b"patterns");
            let _ = write!(out, "*{}\r\n", patterns.len());
            for p in patterns {
                bulk(&mut out, p);
            }
        }
    } else if is("reload") && req.argc() == 2 {
        match crate::ops::reload::reload(ctx.server, crate::ops::reload::Trigger::Command) {
            Ok(_) => out.put_slice(b"+OK\r\n"),
            Err(rejected) => {
                let first = rejected.errors.first().map_or("", String::as_str);
                let more = match rejected.errors.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more, see the log)", n - 1),
                };
                let text = format!(
                    "-ERR reload failed, the configuration in force is unchanged: {first}{more}"
                );
                out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
                out.put_slice(b"\r\n");
            }
        }
    } else if is("help") && req.argc() == 2 {
        const HELP: &[&str] = &[
            "KEYWARDEN <subcommand>. Subcommands are:",
            "STATUS",
            "    The proxy's state as JSON: upstream health, keyspaces, local store, counts.",
            "KEYSPACES",
            "    Each keyspace with its mode and patterns; 'default' is every other key.",
            "RELOAD",
            "    Read the config file again and apply it; an invalid file changes nothing.",
            "HELP",
            "    Print this help.",
        ];
        let _ = write!(out, "*{}\r\n", HELP.len());
        for line in HELP {
            let _ = write!(out, "+{line}\r\n");
        }
    } else if is("status") || is("keyspaces") || is("reload") || is("help") {
        let name = String::from_utf8_lossy(sub).to_lowercase();
        let _ = write!(
            out,
            "-ERR wrong number of arguments for 'keywarden|{name}' command\r\n"
        );
    } else {
        let shown =
            String::from_utf8_lossy(crate::local::engine::c_str(sub)).replace(['\r', '\n'], " ");
        let _ = write!(
            out,
            "-ERR unknown subcommand '{shown}'. Try KEYWARDEN HELP.\r\n"
        );
    }
    out.freeze()
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
