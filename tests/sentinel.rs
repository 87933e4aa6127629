//! A Sentinel-managed upstream with real processes: a primary, a replica and three sentinels
//! (`redis-server <conf> --sentinel`), all on free ports. keywarden finds the primary through
//! the sentinels, and follows it when the primary is killed (`kill -9`) and when an operator
//! runs `SENTINEL FAILOVER`: writes land on the new primary, without a restart.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keywarden::config::SentinelSettings;
use support::*;

const MASTER: &str = "kwmaster";

/// One sentinel process, killed when dropped.
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel (apt-get install -y redis-server redis-sentinel)");
        wait_for(&format!("sentinel on {port}"), || ping(port));
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install -y redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ping(port: u16) -> bool {
    cli(port, &["PING"]) == "PONG"
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary, a replica in sync with it, and three sentinels that know of each other.
struct Rig {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

impl Rig {
    fn start() -> Rig {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_for("the replica's sync", || {
            cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
        for s in &sentinels {
            wait_for("the sentinels to know each other and the replica", || {
                let peers = cli(s.port, &["SENTINEL", "SENTINELS", MASTER]);
                let replicas = cli(s.port, &["SENTINEL", "REPLICAS", MASTER]);
                peers.matches("runid").count() == 2 && replicas.contains("ip")
            });
        }
        Rig {
            primary,
            replica,
            sentinels,
        }
    }

    fn settings(&self, events: &Path) -> keywarden::config::Settings {
        let mut s = settings("");
        s.upstream.address = String::new();
        s.upstream.sentinel = Some(SentinelSettings {
            addresses: self.sentinels.iter().map(Sentinel::addr).collect(),
            master: MASTER.to_owned(),
            username: None,
            password: None,
        });
        s.events.file = Some(events.to_path_buf());
        s
    }
}

/// Writes `SET key value` through keywarden until one succeeds; how long that took.
async fn write_until_ok(proxy: &Proxy, key: &str) -> Duration {
    let start = Instant::now();
    let mut c = proxy.client().await;
    loop {
        if c.cmd(&["SET", key, "v"]).await == simple("OK") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no write succeeded through keywarden"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_is_found_through_sentinel_and_followed_after_kill_9() {
    let mut rig = tokio::task::spawn_blocking(Rig::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let proxy = Proxy::start(rig.settings(&events)).await;
    write_until_ok(&proxy, "before").await;
    assert_eq!(cli(rig.primary.port, &["GET", "before"]), "v");

    rig.primary.kill();
    let took = write_until_ok(&proxy, "after").await;
    // down-after-milliseconds (1 s) plus the sentinels' election and promotion.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(cli(rig.replica.port, &["GET", "after"]), "v");
    assert_eq!(
        cli(rig.replica.port, &["ROLE"]).lines().next(),
        Some("master")
    );
    let switched: Vec<_> = events_in(&events)
        .into_iter()
        .filter(|e| e["event"] == "BACKEND_SWITCHED")
        .collect();
    assert_eq!(switched.len(), 1, "{switched:?}");
    assert_eq!(switched[0]["to"], rig.replica.addr());
    assert_eq!(switched[0]["upstream"], format!("sentinel:{MASTER}"));
    eprintln!("kill -9 to the first write on the new primary: {took:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_traffic_to_the_new_primary() {
    let rig = tokio::task::spawn_blocking(Rig::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let proxy = Proxy::start(rig.settings(&events)).await;
    write_until_ok(&proxy, "before").await;
    assert_eq!(cli(rig.primary.port, &["GET", "before"]), "v");

    // A client with its own upstream connection (database 1).
    let mut stateful = RawClient::connect(proxy.addr).await;
    assert_eq!(stateful.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(stateful.cmd(&["WATCH", "w"]).await, b"+OK\r\n");
    let start = Instant::now();
    assert_eq!(
        cli(rig.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]),
        "OK"
    );
    // keywarden switches once the sentinels promote the replica (their +switch-master, or
    // its once-a-second question), and a write lands there, not on the old primary.
    let mut promoted = None;
    let switched_at = loop {
        if promoted.is_none() && cli(rig.replica.port, &["ROLE"]).lines().next() == Some("master") {
            promoted = Some(start.elapsed());
        }
        let switched = events_in(&events)
            .into_iter()
            .filter(|e| e["event"] == "BACKEND_SWITCHED")
            .count();
        if switched == 1 {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "keywarden never switched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let promoted = promoted.unwrap_or(switched_at);
    // Its connection was to the old primary: closed, so its library reconnects to the new one.
    let rest = stateful.bytes_until_closed().await;
    assert!(rest.is_empty(), "{}", show_bytes(&rest));
    write_until_ok(&proxy, "after").await;
    assert_eq!(cli(rig.replica.port, &["GET", "after"]), "v");
    assert_eq!(cli(rig.primary.port, &["GET", "after"]), "");
    eprintln!("SENTINEL FAILOVER: replica promoted after {promoted:?}, keywarden switched after {switched_at:?}");
    assert!(
        switched_at < promoted + Duration::from_millis(1500),
        "promoted {promoted:?}, switched {switched_at:?}"
    );
    proxy.shutdown().await;
}
