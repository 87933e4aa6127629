//! Socket setup shared by the listener and the upstream connections: TCP_NODELAY (the proxy
//! batches by itself; Nagle would only add latency) and keepalive.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Applies the proxy's options to a connected socket.
pub fn tune(stream: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        // Redis sets the probe interval to a third of the idle time; do the same.
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval((idle / 3).max(Duration::from_secs(1)));
        SockRef::from(stream).set_tcp_keepalive(&ka)?;
    }
    Ok(())
}

/// Connects to `addr` within `timeout` and tunes the socket.
pub async fn connect(
    addr: &str,
    timeout: Duration,
    keepalive: Option<Duration>,
) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tune(&stream, keepalive)?;
    Ok(stream)
}
