//! `KEYWARDEN STATUS | KEYSPACES | RELOAD | HELP`: the proxy's own admin command.

use std::fmt::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProxyError;
use crate::local::engine;
use crate::ops::admin::Status;
use crate::ops::reload::Trigger;
use crate::policy::keyspace::Pattern;
use crate::protocol::request::Request;
use crate::proxy::server::Ctx;

/// `KEYWARDEN <subcommand>` (the caller checked the admin permission).
pub(crate) fn run(req: &Request, ctx: Ctx<'_>, resp3: bool) -> Bytes {
    let Some(sub) = req.arg(1) else {
        return ProxyError::Arity {
            command: "keywarden".into(),
        }
        .to_reply();
    };
    let is = |w: &str| sub.eq_ignore_ascii_case(w.as_bytes());
    let mut out = BytesMut::new();
    if is("status") && req.argc() == 2 {
        let json = serde_json::to_string(&Status::of(ctx.overview(), ctx.policy, ctx.ready()))
            .unwrap_or_default();
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
                        Pattern::Prefix(b) | Pattern::Glob(b) => &b[..],
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
        match ctx.server.reload(Trigger::Command) {
            Ok(_) => out.put_slice(b"+OK\r\n"),
            Err(rejected) => {
                let first = rejected.errors.first().cloned().unwrap_or_default();
                let more = rejected.errors.len().saturating_sub(1);
                out.put_slice(&ProxyError::ReloadFailed { first, more }.to_reply());
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
        let command = format!("keywarden|{name}");
        out.put_slice(&ProxyError::Arity { command }.to_reply());
    } else {
        let shown = String::from_utf8_lossy(engine::c_str(sub)).into_owned();
        out.put_slice(&ProxyError::UnknownSubcommand { shown }.to_reply());
    }
    out.freeze()
}
