//! Shared fixtures for the end-to-end tests: real `redis-server` processes on free ports (that
//! a test can kill, hang with SIGSTOP, resume and restart), an in-process keywarden, and a
//! small RESP client over a raw socket.
#![allow(dead_code)]

mod certs;
#[allow(unused_imports)] // only the TLS and Sentinel tests make certificates
pub use certs::Certs;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keywarden::protocol::scanner::ReplyScanner;

use bytes::BytesMut;
use keywarden::config::Settings;
use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use redis_protocol::resp2::types::OwnedFrame as Frame;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago on 127.0.0.1, and never handed out before in this test
/// process. The kernel may give a released port to the next `bind(0)`: without the check, two
/// tests running side by side could get the same port, and one test's redis-server, failing
/// to bind, would leave it talking to the other test's server (or proxy) until that one stops.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

fn redis_server_binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "redis-server is not on PATH: install it with `apt-get install -y redis-server redis-tools` \
         (the tests run real Redis processes and never skip)"
    );
    "redis-server"
}

/// A real redis-server, owned by one test and killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Options beyond the usual ones, kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts a server with extra options (`--enable-debug-command yes`, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on_with(free_port(), extra)
    }

    /// Starts a server on a given port (one a proxy was already pointed at).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_on_with(port, &[])
    }

    fn start_on_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the server answers PING, then checks that the server answering is this
    /// one (not another process that holds the port, where this one failed to bind).
    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if ping_sync(self.port) {
                let pid = server_pid_sync(self.port);
                assert_eq!(
                    pid,
                    Some(self.pid() as u32),
                    "port {} is answered by another process than the redis-server started on it",
                    self.port
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("server running").id() as i32
    }

    /// SIGKILL: the upstream vanishes, connections are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the upstream hangs; the kernel still accepts connections and buffers bytes.
    pub fn hang(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    /// SIGCONT: resumes a hung server.
    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// The `process_id` that `INFO server` reports on `port`.
fn server_pid_sync(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let len: usize = head.strip_prefix('$')?.parse().ok()?;
        if body.len() >= len {
            return body
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
}

fn ping_sync(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Settings for a proxy in front of `upstream`, with short timeouts for tests.
pub fn settings(upstream: &str) -> Settings {
    let mut s = Settings::default();
    s.upstream.address = upstream.to_string();
    s.upstream.command_timeout = Duration::from_millis(500);
    s.upstream.connect_timeout = Duration::from_millis(300);
    s.shutdown_timeout = Duration::from_secs(2);
    s
}

/// keywarden running in this test's runtime, on a free port.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    pub async fn start(settings: Settings) -> Proxy {
        // Logs from the proxy under test, when RUST_LOG asks for them.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keywarden::proxy::listener::run(
            settings,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Proxy {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a proxy in front of `upstream` with test settings.
    pub async fn for_upstream(upstream: &RedisServer) -> Proxy {
        Proxy::start(settings(&upstream.addr())).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Begins graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("proxy shut down in time")
                .expect("proxy task")
                .expect("proxy run");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A RESP2 client over a raw socket: sends exactly the bytes a test gives it and decodes
/// replies with an independent decoder (the `redis-protocol` crate).
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Client {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_raw(&encode(&args)).await;
    }

    /// The next reply; panics after `WAIT` or if the connection closes first.
    pub async fn reply(&mut self) -> Frame {
        self.try_reply(WAIT)
            .await
            .expect("a reply before the connection closed")
    }

    /// The next reply, or None if the connection closed; panics on timeout.
    pub async fn try_reply(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((frame, used)) =
                redis_protocol::resp2::decode::decode(&self.buf).expect("valid RESP from proxy")
            {
                let _ = self.buf.split_to(used);
                return Some(frame);
            }
            self.buf.reserve(64 * 1024);
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("reply within the wait")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Sends a command and returns its reply.
    pub async fn cmd(&mut self, args: &[&str]) -> Frame {
        self.send(args).await;
        self.reply().await
    }

    /// True once the server closed the connection (reads EOF within `WAIT`).
    pub async fn closed(&mut self) -> bool {
        let mut scratch = [0u8; 1024];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// `redis-cli -h 127.0.0.1 -p <port> <args>`'s output, trimmed (for checks on real servers
/// from blocking code: sentinels, cluster nodes).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install -y redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `ok` every 50 ms from blocking code until it holds; fails naming `what` after
/// `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A numeric line of `INFO keywarden` (`parked_clients`, `connected_clients`...), asked on a
/// new connection to `addr` that is closed afterwards.
pub async fn keywarden_info(addr: impl tokio::net::ToSocketAddrs, field: &str) -> i64 {
    let mut c = Client::connect(addr).await;
    let info = match c.cmd(&["INFO", "keywarden"]).await {
        OwnedFrame::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("INFO: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("INFO has no {field}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `INFO keywarden` through the proxy (answered by the proxy itself) until the upstream
/// is in `state`.
pub async fn wait_for_upstream_state(proxy: &Proxy, state: &str) {
    let start = Instant::now();
    let mut c = RawClient::connect(proxy.addr).await;
    loop {
        let info = c.cmd(&["INFO", "keywarden"]).await;
        if String::from_utf8_lossy(&info).contains(&format!("upstream_state:{state}\r\n")) {
            return;
        }
        assert!(start.elapsed() < WAIT, "upstream never {state}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the upstream until it reports at least one blocked client (a BLPOP sent through the
/// proxy has reached it).
pub async fn wait_until_blocked(redis: &RedisServer) {
    let mut direct = Client::connect(redis.addr()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Frame::BulkString(info) = direct.cmd(&["INFO", "clients"]).await {
            let blocked = String::from_utf8_lossy(&info)
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0);
            if blocked > 0 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client ever blocked upstream"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn bulk(s: &str) -> Frame {
    OwnedFrame::BulkString(s.as_bytes().to_vec())
}

pub fn simple(s: &str) -> Frame {
    OwnedFrame::SimpleString(s.as_bytes().to_vec())
}

pub fn int(i: i64) -> Frame {
    OwnedFrame::Integer(i)
}

pub fn is_error(f: &Frame, prefix: &str) -> bool {
    matches!(f, OwnedFrame::Error(e) if e.starts_with(prefix))
}

/// A client that keeps every frame as the exact bytes received (RESP2 or RESP3, pushes
/// included), split with keywarden's own scanner.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> RawClient {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends every command in one write (a pipeline).
    pub async fn send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for cmd in cmds {
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
            out.extend_from_slice(&encode(&args));
        }
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next frame, or None if the connection closed first; panics after `wait`.
    pub async fn try_frame(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut scanner = ReplyScanner::new(10_000);
        loop {
            if let Some(frame) = scanner.scan(&self.buf).expect("valid RESP") {
                return Some(self.buf.split_to(frame.len).to_vec());
            }
            self.buf.reserve(16 * 1024);
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("no frame within {wait:?}; have {}", show_bytes(&self.buf))
                })
                .unwrap_or(0);
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "closed in the middle of a frame: {}",
                    show_bytes(&self.buf)
                );
                return None;
            }
        }
    }

    /// The next frame; panics after `WAIT` or if the connection closes first.
    pub async fn frame(&mut self) -> Vec<u8> {
        self.try_frame(WAIT)
            .await
            .expect("a frame before the connection closed")
    }

    /// Sends one command and returns the next frame, or None if the connection closed.
    pub async fn try_frame_of(&mut self, cmd: &[&str]) -> Option<Vec<u8>> {
        self.send(&[cmd]).await;
        self.try_frame(WAIT).await
    }

    /// Sends one command and returns the next frame.
    pub async fn cmd(&mut self, cmd: &[&str]) -> Vec<u8> {
        self.send(&[cmd]).await;
        self.frame().await
    }

    /// Asserts that nothing arrives for `quiet` (and that the connection stays open).
    pub async fn assert_silent_for(&mut self, quiet: Duration, what: &str) {
        assert!(self.buf.is_empty(), "{what}: got {}", show_bytes(&self.buf));
        let mut scratch = [0u8; 1024];
        if let Ok(read) = tokio::time::timeout(quiet, self.stream.read(&mut scratch)).await {
            let n = read.unwrap_or(0);
            panic!(
                "{what}: expected nothing for {quiet:?}, got {} ({})",
                show_bytes(&scratch[..n]),
                if n == 0 { "connection closed" } else { "bytes" }
            );
        }
    }

    /// Reads until the peer closes (within `WAIT`); returns every byte that came before.
    pub async fn bytes_until_closed(&mut self) -> Vec<u8> {
        let mut seen = self.buf.split().to_vec();
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return seen,
                Ok(Ok(n)) => seen.extend_from_slice(&scratch[..n]),
                Err(_) => panic!(
                    "connection still open after {WAIT:?}: {}",
                    show_bytes(&seen)
                ),
            }
        }
    }

    /// Sends `cmds` as one pipeline and returns their replies.
    pub async fn run(&mut self, cmds: &[&[&str]]) -> Vec<Vec<u8>> {
        self.send(cmds).await;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(self.frame().await);
        }
        replies
    }
}

/// One `local_only` keyspace, `scratch`, for keys starting `tmp:`; other keys in `default_mode`.
pub fn scratch_keyspace(default_mode: Mode) -> Keyspaces {
    Keyspaces::new(
        vec![Keyspace {
            name: "scratch".into(),
            patterns: vec![Pattern::parse(b"tmp:")],
            mode: Mode::LocalOnly,
        }],
        default_mode,
    )
}

/// Bytes as printable text, for failure messages.
pub fn show_bytes(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// The events in a JSONL events file, in order. Only complete lines count: the proxy appends
/// each event with one write, but a reader racing a write that crosses a page boundary can see
/// its first part alone.
pub fn events_in(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("each event is one JSON object per line"))
        .collect()
}

/// HELLO's reply with the `id` value replaced by `<id>` (after checking it is a positive
/// integer): the one field whose value differs between two servers.
pub fn mask_id(reply: &[u8]) -> Vec<u8> {
    const FIELD: &[u8] = b"$2\r\nid\r\n:";
    let Some(at) = reply.windows(FIELD.len()).position(|w| w == FIELD) else {
        return reply.to_vec();
    };
    let start = at + FIELD.len();
    let len = reply[start..]
        .iter()
        .position(|&b| b == b'\r')
        .expect("id line ends");
    let id = std::str::from_utf8(&reply[start..start + len]).expect("id is ASCII");
    assert!(
        id.parse::<u64>().is_ok_and(|id| id > 0),
        "HELLO id {id:?} in {}",
        show_bytes(reply)
    );
    [&reply[..start], b"<id>", &reply[start + len..]].concat()
}
