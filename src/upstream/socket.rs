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

/// A connection the data path reads and writes by readiness, with or without TLS: a client's
/// (see `proxy::session`) or an upstream one. Plain, it is the socket itself, one branch
/// away; with TLS, rustls runs on the same non-blocking socket, records going through
/// `try_read`/`try_write` so that readiness is cleared exactly as for a plain socket, and
/// plaintext in and out of rustls's buffers. The TLS state sits behind one pointer, in a
/// mutex that only its own task ever takes (uncontended: a few nanoseconds): the data path
/// holds the connection by shared reference, as it does a `TcpStream`, across awaits, and a
/// plain connection pays eight bytes for it.
pub(crate) enum Conn {
    Plain(TcpStream),
    /// Boxed, so that a plain connection is no larger than its socket.
    Tls(Box<TlsConn>),
}

pub(crate) struct TlsConn {
    tcp: TcpStream,
    tls: std::sync::Mutex<rustls::Connection>,
}

/// The TLS state, whoever held it last (a panic there leaves it as usable as rustls does).
fn lock(
    tls: &std::sync::Mutex<rustls::Connection>,
) -> std::sync::MutexGuard<'_, rustls::Connection> {
    tls.lock().unwrap_or_else(|p| p.into_inner())
}

/// The socket as rustls's `Read`/`Write`: one non-blocking call each.
struct TcpIo<'a>(&'a TcpStream);

impl io::Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for TcpIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS error as an I/O one: the connection cannot go on.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Most plaintext taken from rustls per read (one TLS record's worth).
const TLS_READ: usize = 16 * 1024;

impl Conn {
    pub(crate) fn plain(tcp: TcpStream) -> Conn {
        Conn::Plain(tcp)
    }

    /// `tcp` with TLS, once [`Conn::handshake`] has run.
    pub(crate) fn tls(tcp: TcpStream, tls: impl Into<rustls::Connection>) -> Conn {
        Conn::Tls(Box::new(TlsConn {
            tcp,
            tls: std::sync::Mutex::new(tls.into()),
        }))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(t) => &t.tcp,
        }
    }

    fn tls_state(&self) -> Option<&std::sync::Mutex<rustls::Connection>> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(&t.tls),
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }

    pub(crate) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().local_addr()
    }

    /// Completes the TLS handshake (nothing for a plain connection); an error or `timeout`
    /// ends the connection.
    pub(crate) async fn handshake(&self, timeout: Duration) -> io::Result<()> {
        let Some(tls) = self.tls_state() else {
            return Ok(());
        };
        let run = async {
            loop {
                let (handshaking, writing) = {
                    let tls = lock(tls);
                    (tls.is_handshaking(), tls.wants_write())
                };
                if writing {
                    match self.flush_records() {
                        Ok(()) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.tcp().writable().await?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !handshaking {
                    return Ok(());
                }
                let read = lock(tls).read_tls(&mut TcpIo(self.tcp()));
                match read {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {
                        let processed = lock(tls).process_new_packets();
                        if let Err(e) = processed {
                            // Tell the peer why (the alert rustls queued), if it listens.
                            let _ = self.flush_records();
                            return Err(tls_error(e));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tcp().readable().await?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Ready to read: the socket is, or rustls holds plaintext (or news of a close) already.
    pub(crate) fn poll_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if let Some(tls) = self.tls_state() {
            match lock(tls).process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                // Readable now; a read reports what it is.
                _ => return std::task::Poll::Ready(Ok(())),
            }
        }
        self.tcp().poll_read_ready(cx)
    }

    pub(crate) fn poll_write_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// TLS records wait for the socket (a handshake message, encrypted bytes it did not take):
    /// wait for it to be writable and call [`Conn::flush_records`].
    pub(crate) fn wants_write(&self) -> bool {
        self.tls_state().is_some_and(|t| lock(t).wants_write())
    }

    /// Writes the TLS records rustls holds; `WouldBlock` when the socket does not take them
    /// all. Nothing to do for a plain connection.
    pub(crate) fn flush_records(&self) -> io::Result<()> {
        let Some(tls) = self.tls_state() else {
            return Ok(());
        };
        let mut tls = lock(tls);
        while tls.wants_write() {
            tls.write_tls(&mut TcpIo(self.tcp()))?;
        }
        Ok(())
    }

    /// [`read_available`] through TLS when there is TLS: the plaintext available now, into
    /// the spare capacity of `buf`; 0 when the peer closed.
    pub(crate) fn read_available(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        let Some(tls) = self.tls_state() else {
            return read_available(self.tcp(), buf);
        };
        let mut tls = lock(tls);
        let start = buf.len();
        let want = (buf.capacity() - start).clamp(1, TLS_READ);
        loop {
            let state = tls.process_new_packets().map_err(tls_error)?;
            let ready = state.plaintext_bytes_to_read().min(want);
            if ready > 0 {
                // Only the bytes about to be filled are zeroed first.
                buf.resize(start + ready, 0);
                let got = io::Read::read(&mut tls.reader(), &mut buf[start..]);
                let n = *got.as_ref().unwrap_or(&0);
                buf.truncate(start + n);
                return got;
            }
            if state.peer_has_closed() {
                return Ok(0);
            }
            // No plaintext yet: records from the socket (what the peer is owed first).
            while tls.wants_write() {
                match tls.write_tls(&mut TcpIo(self.tcp())) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
            match tls.read_tls(&mut TcpIo(self.tcp()))? {
                0 => return Ok(0),
                _ => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = tls.write_tls(&mut TcpIo(self.tcp()));
                        return Err(tls_error(e));
                    }
                }
            }
        }
    }

    /// `TcpStream::try_write_vectored`, through TLS when there is TLS: the plaintext bytes
    /// taken. Records of earlier writes go first; `WouldBlock` while they do not all go.
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = self.tls_state() else {
            return self.tcp().try_write_vectored(bufs);
        };
        self.flush_records()?;
        let taken = io::Write::write_vectored(&mut lock(tls).writer(), bufs)?;
        match self.flush_records() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[io::IoSlice::new(buf)])
    }

    /// Waits until [`Conn::poll_read_ready`] is ready.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Waits until the socket is writable.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Writes all of `buf` (and the TLS records for it), waiting as needed: for the control
    /// plane (the probe, the command-table reader), not the data path.
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() || self.wants_write() {
            let step = if buf.is_empty() {
                self.flush_records().map(|()| 0)
            } else {
                self.try_write(buf)
            };
            match step {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what arrives next into `buf` (growing it by up to `chunk`), waiting for it; 0
    /// when the peer closed. For the control plane.
    pub(crate) async fn read_some(
        &self,
        buf: &mut bytes::BytesMut,
        chunk: usize,
    ) -> io::Result<usize> {
        loop {
            if buf.capacity() - buf.len() < chunk {
                buf.reserve(chunk);
            }
            match self.read_available(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                other => return other,
            }
        }
    }
}

/// [`connect`], then TLS when the upstream's settings ask for it (its handshake within the
/// same `timeout`).
pub(crate) async fn connect_upstream(
    addr: &str,
    timeout: Duration,
    keepalive: Option<Duration>,
    tls: Option<&crate::config::UpstreamTls>,
) -> io::Result<Conn> {
    let tcp = connect(addr, timeout, keepalive).await?;
    let Some(tls) = tls else {
        return Ok(Conn::plain(tcp));
    };
    let session = crate::upstream::tls::connector(tls, addr)?.session()?;
    let conn = Conn::tls(tcp, session);
    conn.handshake(timeout).await?;
    Ok(conn)
}
