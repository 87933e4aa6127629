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

use crate::clients::{Clients, Phase};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::session::Session;
use crate::socket;
use crate::upstream::Upstream;

/// What every session of one server shares.
pub struct Server {
    pub settings: Arc<Settings>,
    pub upstream: Arc<Upstream>,
    pub clients: Clients,
}

/// Serves clients from `listener` until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight requests finish within `shutdown_timeout`, and closes every connection.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let settings = Arc::new(settings);
    let upstream = Upstream::start(&settings.upstream, &settings.limits, settings.tcp_keepalive);
    let server = Arc::new(Server {
        settings: settings.clone(),
        upstream: upstream.clone(),
        clients: Clients::default(),
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
    tracing::info!("keywarden stopped");
    Ok(())
}

/// Tells a client over the limit why, as Redis does, and closes it.
async fn refuse(mut stream: TcpStream) {
    let reply = ProxyError::MaxClients.to_reply();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
}
