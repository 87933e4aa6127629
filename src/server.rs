//! The listener: accepts clients, enforces `max_clients`, and runs graceful shutdown.
//!
//! `run` takes its listener and its shutdown signal as arguments, so the binary and the tests
//! start the proxy the same way.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::Settings;
use crate::error::ProxyError;
use crate::session::Session;
use crate::socket;
use crate::upstream::Upstream;

/// Where the proxy is in its life, as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Shutdown began: answer what was asked, read nothing new.
    Drain,
    /// The drain deadline passed: close now.
    Stop,
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
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    // Every session holds a clone of `done_tx`; when all are gone, `done_rx` yields None.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let clients = Arc::new(AtomicUsize::new(0));
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
        if clients.load(Ordering::Relaxed) >= settings.max_clients {
            tokio::spawn(refuse(stream));
            continue;
        }
        if let Err(e) = socket::tune(&stream, settings.tcp_keepalive) {
            tracing::debug!(error = %e, "client socket setup failed");
            continue;
        }
        let guard = ClientGuard::new(&clients);
        let session = Session::new(stream, settings.clone(), upstream.clone());
        let phase = phase_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            session.run(phase).await;
            drop(guard);
            drop(done);
        });
    }

    drop(listener);
    tracing::info!(
        clients = clients.load(Ordering::Relaxed),
        "shutting down: draining clients"
    );
    let _ = phase_tx.send(Phase::Drain);
    drop(done_tx);
    if tokio::time::timeout(settings.shutdown_timeout, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = clients.load(Ordering::Relaxed),
            "shutdown deadline passed: closing remaining clients"
        );
        let _ = phase_tx.send(Phase::Stop);
        let _ = tokio::time::timeout(Duration::from_secs(1), done_rx.recv()).await;
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

/// Counts a connected client for as long as it lives.
struct ClientGuard(Arc<AtomicUsize>);

impl ClientGuard {
    fn new(count: &Arc<AtomicUsize>) -> ClientGuard {
        count.fetch_add(1, Ordering::Relaxed);
        ClientGuard(count.clone())
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
