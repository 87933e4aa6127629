//! The listener: accepts clients, enforces `max_clients`, and runs graceful shutdown.
//!
//! `run` takes its listener and its shutdown signal as arguments, so the binary and the tests
//! start the proxy the same way.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use smallvec::SmallVec;

use crate::clients::{Clients, Phase};
use crate::command;
use crate::config::Settings;
use crate::error::ProxyError;
use crate::events::{self, AffectedKeyspaces, Events};
use crate::keyspace::Mode;
use crate::monitor::{Monitor, MonitorHandle, MonitorSettings};
use crate::request::Request;
use crate::router::{self, Refusal, Route};
use crate::session::Session;
use crate::socket;
use crate::upstream::Upstream;

/// What every session of one server shares.
pub struct Server {
    pub settings: Arc<Settings>,
    pub upstream: Arc<Upstream>,
    pub clients: Clients,
    pub monitor: MonitorHandle,
}

impl Server {
    /// Where `req` goes, given whether the upstream is available (read once per batch from
    /// the health snapshot).
    pub fn route(&self, req: &Request, upstream_available: bool) -> Route {
        let keyspaces = &self.settings.keyspaces;
        if keyspaces.is_empty() {
            // Every key is in the default keyspace: the keys do not matter, skip finding them.
            return match keyspaces.default_mode() {
                Mode::LocalOnly => {
                    router::route(keyspaces, upstream_available, self.view(req, &[]))
                }
                _ if upstream_available => Route::Upstream,
                _ => router::route(keyspaces, false, self.view(req, &[])),
            };
        }
        // A command whose keys cannot be found (wrong arity, bad numkeys) goes by the default
        // keyspace: upstream, Redis answers it with its own error.
        let positions = command::keys(req).unwrap_or_default();
        let keys: SmallVec<[&[u8]; 4]> = positions
            .iter()
            .filter_map(|&i| req.arg(i as usize))
            .collect();
        router::route(keyspaces, upstream_available, self.view(req, &keys))
    }

    fn view<'a>(&self, req: &Request, keys: &'a [&'a [u8]]) -> router::Request<'a> {
        router::Request {
            keys,
            known: command::lookup_request(req).is_some(),
            local: false,
        }
    }

    /// The error reply for a refused request, counted where it is an outage refusal.
    pub fn refusal(&self, refusal: Refusal, req: &Request) -> ProxyError {
        let keyspaces = &self.settings.keyspaces;
        let command =
            || String::from_utf8_lossy(&req.name()[..req.name().len().min(64)]).to_lowercase();
        match refusal {
            Refusal::FailClosed(m) => {
                self.monitor.counters().record_refused();
                ProxyError::FailClosed {
                    keyspace: keyspaces.name(m).to_owned(),
                }
            }
            Refusal::MixedLocalOnly => ProxyError::MixedLocalOnly { command: command() },
            Refusal::Unsupported(m) => ProxyError::Unsupported {
                command: command(),
                keyspace: keyspaces.name(m).to_owned(),
            },
        }
    }
}

/// Serves clients from `listener` until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight requests finish within `shutdown_timeout`, and closes every connection.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let settings = Arc::new(settings);
    let events = Arc::new(Events::new(
        events::instance_id(settings.instance_id.as_deref()),
        settings.events.file.as_deref(),
    )?);
    let monitor = Monitor::start(
        MonitorSettings::from_settings(&settings),
        events,
        AffectedKeyspaces::of(&settings.keyspaces),
    )
    .await;
    let upstream = Upstream::start(
        &settings.upstream,
        &settings.limits,
        settings.tcp_keepalive,
        monitor.handle(),
    );
    let server = Arc::new(Server {
        settings: settings.clone(),
        upstream: upstream.clone(),
        clients: Clients::default(),
        monitor: monitor.handle(),
    });
    tracing::info!(listen = %listener.local_addr()?, upstream = %settings.upstream.address, "keywarden listening");

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if server.clients.count() >= settings.max_clients {
            tokio::spawn(refuse(stream));
            continue;
        }
        if let Err(e) = socket::tune(&stream, settings.tcp_keepalive) {
            tracing::debug!(error = %e, "client socket setup failed");
            continue;
        }
        tokio::spawn(Session::new(stream, server.clone()));
    }

    drop(listener);
    let clients = &server.clients;
    tracing::info!(clients = clients.count(), "shutting down: draining clients");
    clients.set_phase(Phase::Drain);
    if tokio::time::timeout(settings.shutdown_timeout, clients.all_gone())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = clients.count(),
            "shutdown deadline passed: closing remaining clients"
        );
        clients.set_phase(Phase::Stop);
        let _ = tokio::time::timeout(Duration::from_secs(1), clients.all_gone()).await;
    }
    upstream.stop();
    monitor.stop();
    tracing::info!("keywarden stopped");
    Ok(())
}

/// Tells a client over the limit why, as Redis does, and closes it.
async fn refuse(mut stream: TcpStream) {
    let reply = ProxyError::MaxClients.to_reply();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
}
