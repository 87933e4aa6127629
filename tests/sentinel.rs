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
    /// Its TLS port, when the rig runs TLS.
    tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16, certs: Option<&Certs>) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = certs.map(|_| free_port());
        let conf = dir.path().join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 5000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir.path().display()
        );
        if let (Some(certs), Some(tls_port)) = (certs, tls_port) {
            text.push_str(&format!(
                "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\n",
                certs.arg("server.pem"),
                certs.arg("server.key"),
                certs.arg("ca.pem")
            ));
        }
        std::fs::write(&conf, text).unwrap();
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
            tls_port,
            child,
            _dir: dir,
        }
    }

    /// Where keywarden reaches it: its TLS port when there is one.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port.unwrap_or(self.port))
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    redis_cli(port, &["PING"]) == "PONG"
}

fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(30), ok)
}

/// A primary, a replica in sync with it, and three sentinels that know of each other.
struct Rig {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<Sentinel>,
    /// With TLS: the certificates, and the primary's and the replica's TLS ports.
    tls: Option<(std::sync::Arc<Certs>, u16, u16)>,
}

/// Options that make a redis-server serve TLS on `port` (and replicate over TLS).
fn tls_args(certs: &Certs, port: u16) -> Vec<String> {
    [
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        certs.arg("server.pem"),
        "--tls-key-file".to_owned(),
        certs.arg("server.key"),
        "--tls-ca-cert-file".to_owned(),
        certs.arg("ca.pem"),
        "--tls-auth-clients".to_owned(),
        "yes".to_owned(),
        "--tls-replication".to_owned(),
        "yes".to_owned(),
    ]
    .to_vec()
}

impl Rig {
    fn start() -> Rig {
        Rig::start_tls(None)
    }

    /// With certificates, everything talks TLS: replication, the sentinels to the servers,
    /// and keywarden to the sentinels and the primary (plain ports stay for the test's checks).
    fn start_tls(certs: Option<std::sync::Arc<Certs>>) -> Rig {
        let (ptls, rtls) = (free_port(), free_port());
        let primary_args = certs
            .as_ref()
            .map(|c| tls_args(c, ptls))
            .unwrap_or_default();
        let primary_args: Vec<&str> = primary_args.iter().map(String::as_str).collect();
        let primary = RedisServer::start_with(&primary_args);
        let upstream_port = if certs.is_some() { ptls } else { primary.port };
        let mut replica_args = certs
            .as_ref()
            .map(|c| tls_args(c, rtls))
            .unwrap_or_default();
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            upstream_port.to_string(),
        ]);
        let replica_args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
        let replica = RedisServer::start_with(&replica_args);
        wait_for("the replica's sync", || {
            redis_cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(upstream_port, certs.as_deref()))
            .collect();
        for s in &sentinels {
            wait_for("the sentinels to know each other and the replica", || {
                let peers = redis_cli(s.port, &["SENTINEL", "SENTINELS", MASTER]);
                let replicas = redis_cli(s.port, &["SENTINEL", "REPLICAS", MASTER]);
                peers.matches("runid").count() == 2 && replicas.contains("ip")
            });
        }
        Rig {
            primary,
            replica,
            sentinels,
            tls: certs.map(|c| (c, ptls, rtls)),
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
            tls: self.tls.is_some(),
        });
        if let Some((certs, _, _)) = &self.tls {
            s.upstream.tls = Some(keywarden::config::UpstreamTls {
                ca_file: certs.path("ca.pem"),
                client_cert: Some((certs.path("client.pem"), certs.path("client.key"))),
                server_name: None,
            });
        }
        s.events.file = Some(events.to_path_buf());
        s
    }
}

/// keywarden in front of `rig` writes to the primary; the primary is killed (`kill -9`); how
/// long until a write through keywarden succeeds, on the replica (checked), with keywarden and
/// its events file (in the directory returned, kept while it lives).
async fn kill_primary_and_write(
    rig: &mut Rig,
) -> (Proxy, tempfile::TempDir, std::path::PathBuf, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let proxy = Proxy::start(rig.settings(&events)).await;
    write_until_ok(&proxy, "before").await;
    assert_eq!(redis_cli(rig.primary.port, &["GET", "before"]), "v");
    rig.primary.kill();
    let took = write_until_ok(&proxy, "after").await;
    // down-after-milliseconds (1 s) plus the sentinels' election and promotion.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(redis_cli(rig.replica.port, &["GET", "after"]), "v");
    (proxy, dir, events, took)
}

/// The `BACKEND_SWITCHED` events in the events file.
fn switched_events(events: &Path) -> Vec<serde_json::Value> {
    events_in(events)
        .into_iter()
        .filter(|e| e["event"] == "BACKEND_SWITCHED")
        .collect()
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
    let (proxy, _dir, events, took) = kill_primary_and_write(&mut rig).await;
    assert_eq!(
        redis_cli(rig.replica.port, &["ROLE"]).lines().next(),
        Some("master")
    );
    let switched = switched_events(&events);
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
    assert_eq!(redis_cli(rig.primary.port, &["GET", "before"]), "v");

    // A client with its own upstream connection (database 1).
    let mut stateful = RawClient::connect(proxy.addr).await;
    assert_eq!(stateful.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(stateful.cmd(&["WATCH", "w"]).await, b"+OK\r\n");
    let start = Instant::now();
    assert_eq!(
        redis_cli(rig.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]),
        "OK"
    );
    // keywarden switches once the sentinels promote the replica (their +switch-master, or
    // its once-a-second question), and a write lands there, not on the old primary.
    let mut promoted = None;
    let switched_at = loop {
        if promoted.is_none()
            && redis_cli(rig.replica.port, &["ROLE"]).lines().next() == Some("master")
        {
            promoted = Some(start.elapsed());
        }
        if switched_events(&events).len() == 1 {
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
    assert_eq!(redis_cli(rig.replica.port, &["GET", "after"]), "v");
    assert_eq!(redis_cli(rig.primary.port, &["GET", "after"]), "");
    eprintln!("SENTINEL FAILOVER: replica promoted after {promoted:?}, keywarden switched after {switched_at:?}");
    assert!(
        switched_at < promoted + Duration::from_millis(1500),
        "promoted {promoted:?}, switched {switched_at:?}"
    );
    proxy.shutdown().await;
}

/// Everything over TLS: keywarden reaches the sentinels and the primary with the upstream's
/// CA and client certificate, and follows the primary to the replica's TLS port after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_primary_over_tls() {
    let certs = std::sync::Arc::new(Certs::make());
    let mut rig = tokio::task::spawn_blocking(move || Rig::start_tls(Some(certs)))
        .await
        .unwrap();
    let (proxy, _dir, events, took) = kill_primary_and_write(&mut rig).await;
    let (_, _, replica_tls) = rig.tls.as_ref().unwrap();
    let switched = switched_events(&events);
    assert_eq!(switched.len(), 1, "{switched:?}");
    assert_eq!(switched[0]["to"], format!("127.0.0.1:{replica_tls}"));
    eprintln!("over TLS, kill -9 to the first write on the new primary: {took:?}");
    proxy.shutdown().await;
}
