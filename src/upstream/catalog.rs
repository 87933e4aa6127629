//! Learning the upstream's commands (control plane): once the upstream is healthy, one
//! connection logs in as the proxy, asks `COMMAND`, and the reply teaches the command table
//! what the built-in Redis 7.0 table lacks (see [`crate::command::learned`]). The differences
//! are logged once, by command name only.

use std::time::Duration;

use crate::command::learned::{self, Learned};
use crate::command::REDIS_VERSION;
use crate::config::UpstreamSettings;
use crate::protocol::scanner::ReplyScanner;
use crate::upstream::handshake::setup_commands;
use crate::upstream::health::State;
use crate::upstream::monitor::MonitorHandle;
use crate::upstream::socket;
use crate::upstream::target::Target;
use std::sync::Arc;

/// Deepest nesting of a `COMMAND` reply accepted (Redis 7's is 7: entries, subcommands, key
/// specs and their parts).
const MAX_DEPTH: usize = 16;

/// Largest `COMMAND` reply read (Redis 7.4's is about 250 KiB; modules add to it).
const MAX_REPLY: usize = 16 << 20;

/// Why learning stopped without a table.
#[derive(Debug)]
enum Failure {
    /// Worth another try once the upstream is healthy again (connection, timeout).
    Transient(String),
    /// The upstream answered, but not with a usable table (the proxy's user may not run
    /// COMMAND): the built-in table stays the only one.
    Refused(String),
}

/// Waits for the upstream to be healthy, learns its commands and installs them; retries after
/// a connection failure, gives up (with one warning) when the upstream refuses.
pub(crate) async fn learn(settings: UpstreamSettings, target: Arc<Target>, monitor: MonitorHandle) {
    let mut state = monitor.subscribe();
    loop {
        while state.borrow_and_update().state != State::Healthy {
            if state.changed().await.is_err() {
                return;
            }
        }
        match fetch(&settings, &target.current())
            .await
            .and_then(|reply| learned::from_reply(&reply).map_err(Failure::Refused))
        {
            Ok(table) => {
                report(learned::install(table));
                return;
            }
            Err(Failure::Refused(why)) => {
                tracing::warn!(
                    reason = %why,
                    builtin = REDIS_VERSION,
                    "could not read the upstream's COMMAND table; commands the built-in table lacks stay unknown"
                );
                return;
            }
            Err(Failure::Transient(why)) => {
                tracing::debug!(reason = %why, "reading the upstream's COMMAND table failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Logs, once, how the upstream's commands differ from the built-in table's.
fn report(learned: &Learned) {
    let added: Vec<&str> = learned.added().collect();
    let (undecidable, missing) = (learned.undecidable(), learned.missing());
    if added.is_empty() && undecidable.is_empty() && missing.is_empty() {
        tracing::info!(
            builtin = REDIS_VERSION,
            "the upstream's commands are the built-in table's"
        );
        return;
    }
    tracing::info!(
        builtin = REDIS_VERSION,
        learned = %added.join(" "),
        unknown_keys = %undecidable.join(" "),
        missing_upstream = %missing.join(" "),
        "the upstream's commands differ from the built-in table: learned ones are checked and routed by their key specs; those whose keys need a module's own code stay unknown (refused to users with key limits)"
    );
}

/// One connection: the proxy's login, then `COMMAND`; the raw reply.
async fn fetch(settings: &UpstreamSettings, address: &str) -> Result<Vec<u8>, Failure> {
    let transient = |e: std::io::Error| Failure::Transient(e.to_string());
    let tls = settings.tls.as_ref();
    let stream = socket::connect_upstream(address, settings.connect_timeout, None, tls)
        .await
        .map_err(transient)?;
    let setup = setup_commands(settings, false);
    let mut wire = Vec::new();
    for req in &setup {
        wire.extend_from_slice(req.raw());
    }
    wire.extend_from_slice(b"*1\r\n$7\r\nCOMMAND\r\n");
    let exchange = async {
        stream.write_all(&wire).await?;
        let mut buf = bytes::BytesMut::with_capacity(64 << 10);
        // Framed by the data path's scanner, resumably and with nesting capped (COMMAND's
        // reply nests 7 deep), so that the decode of the whole reply afterwards is bounded.
        let mut scanner = ReplyScanner::new(MAX_DEPTH);
        let (mut at, mut frames) = (0, 0);
        loop {
            // The login's replies come first; the COMMAND reply is the frame after them.
            loop {
                let used = match scanner.scan(&buf[at..]) {
                    Ok(Some(frame)) => frame.len,
                    Ok(None) => break,
                    Err(e) => {
                        return Ok(Err(Failure::Refused(format!(
                            "an unframeable reply: {e:?}"
                        ))))
                    }
                };
                if frames < setup.len() && !buf[at..].starts_with(b"+OK") {
                    let line = buf[at..at + used].escape_ascii().to_string();
                    return Ok(Err(Failure::Refused(format!("the proxy's login: {line}"))));
                }
                frames += 1;
                if frames == setup.len() + 1 {
                    return Ok(Ok(buf[at..at + used].to_vec()));
                }
                at += used;
            }
            if buf.len() > MAX_REPLY {
                return Ok(Err(Failure::Refused("a COMMAND reply over 16 MiB".into())));
            }
            if stream.read_some(&mut buf, 64 << 10).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
    };
    let reply = tokio::time::timeout(settings.command_timeout * 5, exchange)
        .await
        .map_err(|_| Failure::Transient("timed out".into()))?
        .map_err(transient)??;
    Ok(reply)
}
