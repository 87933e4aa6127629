//! Socket setup shared by the listener and the upstream connections: TCP_NODELAY (the proxy
//! batches by itself; Nagle would only add latency) and keepalive.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Applies the proxy's options to a connected socket.
pub(crate) fn tune(stream: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
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
pub(crate) async fn connect(
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

/// Reads what the socket holds into the spare capacity of `buf` (which must have some),
/// returning the bytes read; 0 means the peer closed.
///
/// Unlike `TcpStream::try_read`, a read that leaves the buffer partly empty (the socket was
/// drained) also clears the stream's readiness, as tokio's own `poll_read` does, so the next
/// wait goes straight to the reactor instead of costing a `read` that returns EAGAIN. On this
/// kind of machine a syscall costs microseconds, so that is one syscall in three per request.
pub(crate) fn read_available(stream: &TcpStream, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    use bytes::BufMut;
    let spare = buf.capacity() - buf.len();
    debug_assert!(spare > 0);
    let mut got = 0;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: `recv` only writes initialised bytes into the spare capacity and returns how
        // many; `got` of them are committed below with `advance_mut`.
        let dst = unsafe { buf.chunk_mut().as_uninit_slice_mut() };
        let n = SockRef::from(stream).recv(dst)?;
        got = n;
        if n > 0 && n < spare {
            // Drained: report WouldBlock so tokio clears readiness; `got` carries the bytes.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    // SAFETY: `recv` initialised `got` bytes of the spare capacity.
    unsafe { buf.advance_mut(got) };
    match result {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
    }
}
