//! The soak: keywarden (the release binary) in front of a real redis-server that is killed and
//! hung (SIGSTOP) over and over while clients of every kind run through it. Run by
//! `scripts/soak`, not by `cargo test`. It checks that:
//! - no reply reaches the wrong client or comes out of order (every request carries a token
//!   unique to its client and sequence, and every reply that is not an error must carry it);
//! - no request hangs (each reply is awaited at most `--hang-after` seconds);
//! - every client recovers once the faults stop (a clean round for each);
//! - the proxy's RSS comes back to within 10% of its level before the faults.
//!
//! Clients: pipeliners (SET, GET, ECHO with tokens, 15 per round), subscribers (each on its
//! channel, fed by a publisher), blocked clients (BLPOP on their list, fed by a pusher), and
//! transactions (MULTI, INCR, ECHO, EXEC). A client whose connection closes (subscribers and
//! blocked clients are closed on purpose when the upstream is lost) reconnects.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use keywarden::protocol::scanner::ReplyScanner;
use support::{encode, free_port, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What went wrong, or how a connection ended.
#[derive(Debug)]
enum Fail {
    /// The connection closed or could not be made: reconnect.
    Closed,
    /// No reply within the hang limit.
    Hung,
}

/// A RESP client that reports failures instead of panicking.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    scanner: ReplyScanner,
    hang_after: Duration,
}

impl Conn {
    async fn open(addr: &str, hang_after: Duration) -> Result<Conn, Fail> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| Fail::Closed)?
            .map_err(|_| Fail::Closed)?;
        stream.set_nodelay(true).map_err(|_| Fail::Closed)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: ReplyScanner::new(64),
            hang_after,
        })
    }

    async fn send(&mut self, cmds: &[Vec<String>]) -> Result<(), Fail> {
        let mut out = Vec::new();
        for cmd in cmds {
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
            out.extend_from_slice(&encode(&args));
        }
        self.stream.write_all(&out).await.map_err(|_| Fail::Closed)
    }

    async fn frame(&mut self) -> Result<Vec<u8>, Fail> {
        let deadline = tokio::time::Instant::now() + self.hang_after;
        loop {
            match self.scanner.scan(&self.buf) {
                Ok(Some(frame)) => return Ok(self.buf.split_to(frame.len).to_vec()),
                Ok(None) => {}
                Err(e) => panic!("keywarden sent bytes that are not RESP: {e}"),
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(Fail::Hung),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Fail::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Counters shared by every task.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    /// A reply carrying another request's token, or none where one was due.
    misrouted: AtomicU64,
    hung: AtomicU64,
    messages: AtomicU64,
    pops: AtomicU64,
    /// Clients that completed a clean round after the faults stopped.
    recovered: AtomicUsize,
    /// Set once the faults stop: each client then reports its first clean round.
    verify: AtomicBool,
    stop: AtomicBool,
}

impl Tally {
    fn wrong(&self, what: &str, got: &[u8]) {
        self.misrouted.fetch_add(1, Ordering::Relaxed);
        let shown = String::from_utf8_lossy(&got[..got.len().min(120)]).into_owned();
        eprintln!("WRONG REPLY: {what}: {shown:?}");
    }
}

fn is_error(frame: &[u8]) -> bool {
    frame.first() == Some(&b'-')
}

fn contains(frame: &[u8], token: &str) -> bool {
    frame.windows(token.len()).any(|w| w == token.as_bytes())
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Reconnects until it works or the soak stops.
async fn connect(addr: &str, hang_after: Duration, tally: &Tally) -> Option<Conn> {
    loop {
        if tally.stop.load(Ordering::Relaxed) {
            return None;
        }
        match Conn::open(addr, hang_after).await {
            Ok(c) => return Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Counts how a connection ended.
fn ended(fail: Fail, tally: &Tally, what: &str) {
    match fail {
        Fail::Closed => {
            tally.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        Fail::Hung => {
            tally.hung.fetch_add(1, Ordering::Relaxed);
            eprintln!("HUNG: {what}");
        }
    }
}

/// SET, GET and ECHO with tokens, 5 of each, pipelined, round after round.
async fn pipeliner(id: usize, addr: String, hang_after: Duration, tally: Arc<Tally>) {
    let key = format!("soak:{id}");
    let mut seq = 0u64;
    let mut reported = false;
    'conn: while let Some(mut c) = connect(&addr, hang_after, &tally).await {
        while !tally.stop.load(Ordering::Relaxed) {
            let mut round = Vec::new();
            let mut tokens = Vec::new();
            for _ in 0..5 {
                seq += 1;
                let token = format!("/c{id}/{seq}/");
                round.push(cmd(&["SET", &key, &token]));
                round.push(cmd(&["GET", &key]));
                round.push(cmd(&["ECHO", &token]));
                tokens.push(token);
            }
            if let Err(f) = c.send(&round).await {
                ended(f, &tally, "pipeliner send");
                continue 'conn;
            }
            let mut clean = true;
            for token in &tokens {
                for kind in ["SET", "GET", "ECHO"] {
                    let frame = match c.frame().await {
                        Ok(f) => f,
                        Err(f) => {
                            ended(f, &tally, &format!("pipeliner {id} {kind}"));
                            continue 'conn;
                        }
                    };
                    if is_error(&frame) {
                        clean = false;
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let right = match kind {
                        "SET" => frame == b"+OK\r\n",
                        // This client's latest token, an earlier one of its own (a SET that
                        // failed), or nil after a restart emptied Redis.
                        "GET" => frame == b"$-1\r\n" || contains(&frame, &format!("/c{id}/")),
                        _ => contains(&frame, token),
                    };
                    if right {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.wrong(&format!("pipeliner {id} {kind} {token}"), &frame);
                    }
                }
            }
            if clean && !reported && tally.verify.load(Ordering::Relaxed) {
                reported = true;
                tally.recovered.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
}

/// MULTI, INCR, ECHO, EXEC.
async fn transactor(id: usize, addr: String, hang_after: Duration, tally: Arc<Tally>) {
    let key = format!("soak:tx:{id}");
    let mut seq = 0u64;
    let mut reported = false;
    'conn: while let Some(mut c) = connect(&addr, hang_after, &tally).await {
        while !tally.stop.load(Ordering::Relaxed) {
            seq += 1;
            let token = format!("/t{id}/{seq}/");
            let round = [
                cmd(&["MULTI"]),
                cmd(&["INCR", &key]),
                cmd(&["ECHO", &token]),
                cmd(&["EXEC"]),
            ];
            if let Err(f) = c.send(&round).await {
                ended(f, &tally, "transaction send");
                continue 'conn;
            }
            let mut frames = Vec::new();
            for _ in 0..4 {
                match c.frame().await {
                    Ok(f) => frames.push(f),
                    Err(f) => {
                        ended(f, &tally, &format!("transaction {id}"));
                        continue 'conn;
                    }
                }
            }
            let exec = &frames[3];
            if frames.iter().any(|f| is_error(f)) || exec == b"*-1\r\n" {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if exec.starts_with(b"*2\r\n:") && contains(exec, &token) {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if !reported && tally.verify.load(Ordering::Relaxed) {
                    reported = true;
                    tally.recovered.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                tally.wrong(&format!("transaction {id} {token}"), exec);
            }
        }
        return;
    }
}

/// Subscribed to its own channel; every message must be one published to it.
async fn subscriber(id: usize, addr: String, tally: Arc<Tally>) {
    let channel = format!("soak:ch:{id}");
    let mine = format!("/p{id}/");
    let mut reported = false;
    // Messages may pause for as long as an outage: no hang limit on a subscriber's reads.
    let patience = Duration::from_secs(3600);
    'conn: while let Some(mut c) = connect(&addr, patience, &tally).await {
        if c.send(&[cmd(&["SUBSCRIBE", &channel])]).await.is_err() {
            continue;
        }
        // Refused while the upstream is unavailable: try again on a new connection.
        match c.frame().await {
            Ok(f) if contains(&f, "subscribe") && contains(&f, &channel) => {}
            Ok(f) if is_error(&f) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(f) => {
                tally.wrong(&format!("subscriber {id} subscribing"), &f);
                continue;
            }
            Err(f) => {
                ended(f, &tally, "subscriber");
                continue;
            }
        }
        loop {
            if tally.stop.load(Ordering::Relaxed) {
                return;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(500), c.frame()).await {
                Err(_) => continue,
                Ok(Ok(f)) => f,
                Ok(Err(f)) => {
                    ended(f, &tally, "subscriber");
                    continue 'conn;
                }
            };
            if is_error(&frame) {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            } else if contains(&frame, "message") && contains(&frame, &mine) {
                tally.messages.fetch_add(1, Ordering::Relaxed);
                if !reported && tally.verify.load(Ordering::Relaxed) {
                    reported = true;
                    tally.recovered.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                tally.wrong(&format!("subscriber {id}"), &frame);
            }
        }
    }
}

/// BLPOP on its own list, one second at a time; what it pops must be from that list.
async fn blocked(id: usize, addr: String, hang_after: Duration, tally: Arc<Tally>) {
    let list = format!("soak:q:{id}");
    let mine = format!("/v{id}/");
    let mut reported = false;
    'conn: while let Some(mut c) = connect(&addr, hang_after, &tally).await {
        while !tally.stop.load(Ordering::Relaxed) {
            if let Err(f) = c.send(&[cmd(&["BLPOP", &list, "1"])]).await {
                ended(f, &tally, "blocked send");
                continue 'conn;
            }
            let frame = match c.frame().await {
                Ok(f) => f,
                Err(f) => {
                    ended(f, &tally, &format!("blocked {id}"));
                    continue 'conn;
                }
            };
            if is_error(&frame) {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            } else if frame == b"*-1\r\n" {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            } else if contains(&frame, &list) && contains(&frame, &mine) {
                tally.pops.fetch_add(1, Ordering::Relaxed);
                if !reported && tally.verify.load(Ordering::Relaxed) {
                    reported = true;
                    tally.recovered.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                tally.wrong(&format!("blocked {id}"), &frame);
            }
        }
        return;
    }
}

/// Publishes to each subscriber's channel and pushes to each blocked client's list.
async fn feeder(n: usize, addr: String, hang_after: Duration, tally: Arc<Tally>) {
    let mut seq = 0u64;
    'conn: while let Some(mut c) = connect(&addr, hang_after, &tally).await {
        while !tally.stop.load(Ordering::Relaxed) {
            seq += 1;
            let mut round = Vec::new();
            for i in 0..n {
                round.push(cmd(&[
                    "PUBLISH",
                    &format!("soak:ch:{i}"),
                    &format!("/p{i}/{seq}/"),
                ]));
                round.push(cmd(&[
                    "RPUSH",
                    &format!("soak:q:{i}"),
                    &format!("/v{i}/{seq}/"),
                ]));
                // Bounded lists while nobody pops (an outage).
                round.push(cmd(&["LTRIM", &format!("soak:q:{i}"), "-10", "-1"]));
            }
            if c.send(&round).await.is_err() {
                continue 'conn;
            }
            for _ in 0..round.len() {
                if c.frame().await.is_err() {
                    continue 'conn;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return;
    }
}

/// The proxy's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

struct Options {
    bin: String,
    clients: usize,
    others: usize,
    kills: usize,
    hangs: usize,
    hang_after: Duration,
}

fn options() -> Options {
    let mut o = Options {
        bin: "target/release/keywarden".into(),
        clients: 200,
        others: 10,
        kills: 100,
        hangs: 100,
        hang_after: Duration::from_secs(20),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let n = || value.parse::<usize>().expect("a number");
        match pair[0].as_str() {
            "--bin" => o.bin = value.clone(),
            "--clients" => o.clients = n(),
            "--others" => o.others = n(),
            "--kills" => o.kills = n(),
            "--hangs" => o.hangs = n(),
            "--hang-after" => o.hang_after = Duration::from_secs(n() as u64),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    let mut redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let proxy = Proxy(
        Command::new(&o.bin)
            .args(["--config", "config/keywarden.toml"])
            .args(["--listen", &addr])
            .args(["--upstream", &redis.addr()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (run `cargo build --release`)", o.bin)),
    );
    let pid = proxy.0.id();
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keywarden did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for id in 0..o.clients {
        tasks.push(tokio::spawn(pipeliner(
            id,
            addr.clone(),
            o.hang_after,
            tally.clone(),
        )));
    }
    for id in 0..o.others {
        tasks.push(tokio::spawn(transactor(
            id,
            addr.clone(),
            o.hang_after,
            tally.clone(),
        )));
        tasks.push(tokio::spawn(subscriber(id, addr.clone(), tally.clone())));
        tasks.push(tokio::spawn(blocked(
            id,
            addr.clone(),
            o.hang_after,
            tally.clone(),
        )));
    }
    tasks.push(tokio::spawn(feeder(
        o.others,
        addr.clone(),
        o.hang_after,
        tally.clone(),
    )));
    let expected = o.clients + 3 * o.others;

    // Warm up, then take the RSS every client's buffers and the pools have settled at.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_before = rss_kib(pid);
    let ok_before = tally.ok.load(Ordering::Relaxed);
    println!("warm: {expected} clients, {ok_before} good replies, proxy RSS {rss_before} KiB");

    let faults = Instant::now();
    let (mut kills, mut hangs) = (0, 0);
    while kills < o.kills || hangs < o.hangs {
        let r = rand::random::<u64>();
        if kills < o.kills && (hangs >= o.hangs || r.is_multiple_of(2)) {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(100 + r % 300)).await;
            redis.restart();
            kills += 1;
        } else {
            redis.hang();
            tokio::time::sleep(Duration::from_millis(200 + r % 1300)).await;
            redis.resume();
            hangs += 1;
        }
        tokio::time::sleep(Duration::from_millis(300 + (r >> 8) % 700)).await;
        if (kills + hangs).is_multiple_of(20) {
            println!(
                "{kills} kills, {hangs} hangs, {:.0?}: {} good, {} errors, {} reconnects, {} wrong, {} hung",
                faults.elapsed(),
                tally.ok.load(Ordering::Relaxed),
                tally.errors.load(Ordering::Relaxed),
                tally.reconnects.load(Ordering::Relaxed),
                tally.misrouted.load(Ordering::Relaxed),
                tally.hung.load(Ordering::Relaxed),
            );
        }
    }
    let fault_time = faults.elapsed();

    // Every client must come back: a clean round each.
    tally.verify.store(true, Ordering::Relaxed);
    let recovery = Instant::now();
    while tally.recovered.load(Ordering::Relaxed) < expected
        && recovery.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = tally.recovered.load(Ordering::Relaxed);
    let recovery_time = recovery.elapsed();
    // Let the traffic run as before the faults, then compare the RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib(pid);
    tally.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }

    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let growth = rss_after as f64 / rss_before as f64;
    println!(
        "faults: {kills} kills and {hangs} hangs in {fault_time:.0?}\n\
         replies: {} good, {} errors, {} messages, {} pops, {} reconnects\n\
         wrong replies: {}, hung requests: {}\n\
         recovered: {recovered}/{expected} clients in {recovery_time:.1?}\n\
         proxy RSS: {rss_before} KiB before, {rss_after} KiB after ({:+.1}%)",
        t(&tally.ok),
        t(&tally.errors),
        t(&tally.messages),
        t(&tally.pops),
        t(&tally.reconnects),
        t(&tally.misrouted),
        t(&tally.hung),
        (growth - 1.0) * 100.0,
    );
    let mut failed = Vec::new();
    if t(&tally.misrouted) > 0 {
        failed.push("a reply reached the wrong request");
    }
    if t(&tally.hung) > 0 {
        failed.push("a request hung");
    }
    if recovered < expected {
        failed.push("a client did not recover");
    }
    if growth > 1.10 {
        failed.push("the proxy's RSS did not return to within 10%");
    }
    drop(proxy);
    if failed.is_empty() {
        println!("PASS");
    } else {
        println!("FAIL: {}", failed.join("; "));
        std::process::exit(1);
    }
}
