//! A Redis Cluster upstream with real processes: three primaries with a replica each
//! (`redis-server --cluster-enabled yes`, joined with `redis-cli --cluster create`), all on
//! free ports. Clients that do not speak cluster see one Redis through keywarden; cluster
//! clients are told keywarden owns every slot; a resharding under load shows no client an
//! error; a killed primary makes only its own slots follow their keyspace's mode.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use keywarden::policy::keyspace::{Keyspaces, Mode};
use support::*;

fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(60), ok)
}

/// The options of a cluster node: cluster mode on, a 1 s node timeout, its bus on a free port.
fn cluster_args() -> Vec<String> {
    let bus = free_port().to_string();
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-port",
        &bus,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One redis-server with cluster mode on.
fn cluster_node() -> RedisServer {
    let args = cluster_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    RedisServer::start_with(&args)
}

/// Six nodes in one cluster: three primaries, one replica each.
struct Rig {
    nodes: Vec<RedisServer>,
}

/// What a secured rig's nodes require: a password, and TLS (the cluster bus and replication
/// included) on a port of their own, with client certificates.
struct Secure {
    password: &'static str,
    certs: Certs,
    /// Each node's TLS port, in node order.
    tls_ports: Vec<u16>,
}

impl Secure {
    fn new() -> Secure {
        Secure {
            password: "cluster-secret",
            certs: Certs::make(),
            tls_ports: (0..6).map(|_| free_port()).collect(),
        }
    }

    /// redis-cli's options to reach a node over TLS with the password.
    fn cli_args(&self) -> Vec<String> {
        let c = &self.certs;
        [
            "--tls",
            "--cacert",
            &c.arg("ca.pem"),
            "--cert",
            &c.arg("client.pem"),
            "--key",
            &c.arg("client.key"),
            "-a",
            self.password,
            "--no-auth-warning",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Rig {
    fn start() -> Rig {
        Rig::start_secure(None)
    }

    fn start_secure(secure: Option<&Secure>) -> Rig {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|i| {
                let mut args = cluster_args();
                if let Some(sec) = secure {
                    let c = &sec.certs;
                    args.extend(
                        [
                            "--tls-port",
                            &sec.tls_ports[i].to_string(),
                            "--tls-cert-file",
                            &c.arg("server.pem"),
                            "--tls-key-file",
                            &c.arg("server.key"),
                            "--tls-ca-cert-file",
                            &c.arg("ca.pem"),
                            "--tls-cluster",
                            "yes",
                            "--tls-replication",
                            "yes",
                        ]
                        .map(str::to_owned),
                    );
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let node = RedisServer::start_with(&args);
                if let Some(sec) = secure {
                    // Set once the server answers PING (which the fixture checks unlogged).
                    for (key, value) in
                        [("masterauth", sec.password), ("requirepass", sec.password)]
                    {
                        assert_eq!(redis_cli(node.port, &["CONFIG", "SET", key, value]), "OK");
                    }
                }
                node
            })
            .collect();
        let addrs: Vec<String> = match secure {
            None => nodes.iter().map(RedisServer::addr).collect(),
            Some(sec) => sec
                .tls_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
        };
        let out = Command::new("redis-cli")
            .args(secure.map(Secure::cli_args).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let rig = Rig { nodes };
        let auth: Vec<&str> = match secure {
            None => Vec::new(),
            Some(sec) => vec!["-a", sec.password, "--no-auth-warning"],
        };
        wait_for(
            "the cluster to be ok on every node, each primary with its replica",
            || {
                rig.nodes.iter().all(|n| {
                    let ask = |args: &[&str]| redis_cli(n.port, &[&auth[..], args].concat());
                    ask(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                        && ask(&["CLUSTER", "SHARDS"]).matches("online").count() == 6
                })
            },
        );
        rig
    }

    /// The node serving `key`'s slot now.
    fn owner(&self, key: &str) -> &RedisServer {
        let slot: u16 = redis_cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap();
        self.nodes
            .iter()
            .find(|n| redis_cli(n.port, &["ROLE"]).starts_with("master") && owns(n.port, slot))
            .expect("a primary owns every slot")
    }

    fn settings(&self, events: &std::path::Path) -> keywarden::config::Settings {
        let mut s = settings("");
        s.upstream.address = self.nodes[0].addr();
        s.upstream.cluster_nodes = vec![self.nodes[0].addr(), self.nodes[1].addr()];
        s.events.file = Some(events.to_path_buf());
        s
    }
}

/// Whether the node on `port` serves `slot` (by its own CLUSTER SLOTS and its own id).
fn owns(port: u16, slot: u16) -> bool {
    let me = redis_cli(port, &["CLUSTER", "MYID"]);
    let nodes = redis_cli(port, &["CLUSTER", "NODES"]);
    nodes.lines().any(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        f[0] == me
            && f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            })
    })
}

/// A started rig and keywarden in front of it, with its events file in the directory
/// returned (kept while it lives).
async fn rig_and_proxy() -> (Rig, tempfile::TempDir, Proxy) {
    let rig = tokio::task::spawn_blocking(Rig::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(rig.settings(&dir.path().join("events.jsonl"))).await;
    (rig, dir, proxy)
}

/// Keys that fall in different slots (checked by the cluster itself).
const KEYS: [&str; 6] = ["foo", "bar", "baz", "qux", "user:1", "user:2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_one_redis_in_front_of_a_cluster() {
    let (rig, _dir, proxy) = rig_and_proxy().await;
    let mut c = proxy.client().await;

    for k in KEYS {
        assert_eq!(c.cmd(&["SET", k, &format!("v-{k}")]).await, simple("OK"));
    }
    let rig = tokio::task::spawn_blocking(move || {
        for k in KEYS {
            // Stored on the node that owns the key's slot.
            assert_eq!(redis_cli(rig.owner(k).port, &["GET", k]), format!("v-{k}"));
        }
        rig
    })
    .await
    .unwrap();
    for k in KEYS {
        assert_eq!(c.cmd(&["GET", k]).await, bulk(&format!("v-{k}")));
    }
    // Multi-key commands across slots: split per slot, merged in key order.
    assert_eq!(
        c.cmd(&["MGET", "foo", "missing", "bar", "user:1"]).await,
        Frame::Array(vec![
            bulk("v-foo"),
            Frame::Null,
            bulk("v-bar"),
            bulk("v-user:1")
        ])
    );
    assert_eq!(
        c.cmd(&["MSET", "a1", "1", "a2", "2", "a3", "3"]).await,
        simple("OK")
    );
    assert_eq!(
        c.cmd(&["MGET", "a1", "a2", "a3"]).await,
        Frame::Array(vec![bulk("1"), bulk("2"), bulk("3")])
    );
    assert_eq!(c.cmd(&["EXISTS", "a1", "a2", "nope", "a3"]).await, int(3));
    assert_eq!(c.cmd(&["TOUCH", "a1", "a2"]).await, int(2));
    assert_eq!(c.cmd(&["DEL", "a1", "a2", "a3", "nope"]).await, int(3));
    // Other cross-slot commands: Redis Cluster's error. One slot (hash tag): whole.
    assert!(is_error(
        &c.cmd(&["SUNION", "foo", "bar"]).await,
        "CROSSSLOT"
    ));
    assert_eq!(c.cmd(&["SADD", "{s}1", "x"]).await, int(1));
    assert_eq!(c.cmd(&["SADD", "{s}2", "y"]).await, int(1));
    assert_eq!(
        c.cmd(&["SUNIONSTORE", "{s}3", "{s}1", "{s}2"]).await,
        int(2)
    );
    // Keyless commands over every primary.
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(9));
    let Frame::Array(keys) = c.cmd(&["KEYS", "*"]).await else {
        panic!("KEYS is an array")
    };
    assert_eq!(keys.len(), 9);
    // SCAN walks every primary, each key once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_owned();
    loop {
        let Frame::Array(reply) = c.cmd(&["SCAN", &cursor, "COUNT", "2"]).await else {
            panic!("SCAN is an array")
        };
        let Frame::BulkString(next) = &reply[0] else {
            panic!()
        };
        let Frame::Array(batch) = &reply[1] else {
            panic!()
        };
        for k in batch {
            let Frame::BulkString(k) = k else { panic!() };
            seen.insert(String::from_utf8(k.clone()).unwrap());
        }
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 9, "{seen:?}");
    // A script's error that looks like a redirection, about no slot a request was routed
    // by (or no slot at all), is the client's reply as it is, and moves nothing.
    let fake = "return redis.error_reply('MOVED 20000 127.0.0.1:1')";
    assert_eq!(
        c.cmd(&["EVAL", fake, "0"]).await,
        Frame::Error("MOVED 20000 127.0.0.1:1".into())
    );
    let fake = "return redis.error_reply('ASK 5 127.0.0.1:1')";
    assert_eq!(
        c.cmd(&["EVAL", fake, "1", "foo"]).await,
        Frame::Error("ASK 5 127.0.0.1:1".into())
    );
    assert_eq!(c.cmd(&["GET", "foo"]).await, bulk("v-foo"));
    // One that names the script's own slot and another primary: followed at most twice (each
    // runs the script again), and the map is only read again, not rewritten from it.
    let slot = keywarden::command::slot::key_slot(b"runs").to_string();
    let (rig, elsewhere) = tokio::task::spawn_blocking(move || {
        let owner = rig.owner("runs").port;
        let other = rig.owner("foo").port;
        let other = if other == owner {
            rig.owner("bar").port
        } else {
            other
        };
        (rig, format!("127.0.0.1:{other}"))
    })
    .await
    .unwrap();
    let script =
        format!("redis.call('INCR', KEYS[1]) return redis.error_reply('MOVED {slot} {elsewhere}')");
    let reply = c.cmd(&["EVAL", &script, "1", "runs"]).await;
    assert_eq!(reply, Frame::Error(format!("MOVED {slot} {elsewhere}")));
    assert_eq!(
        c.cmd(&["GET", "runs"]).await,
        bulk("3"),
        "run once, then twice again"
    );
    // Redis Cluster has database 0 only.
    assert!(is_error(
        &c.cmd(&["SELECT", "1"]).await,
        "ERR SELECT is not allowed in cluster mode"
    ));
    assert_eq!(c.cmd(&["SELECT", "0"]).await, simple("OK"));
    // A pipeline over every shard comes back in order.
    let mut pipe = Vec::new();
    for i in 0..500 {
        pipe.extend(encode(&[
            b"SET",
            format!("p{i}").as_bytes(),
            i.to_string().as_bytes(),
        ]));
        pipe.extend(encode(&[b"GET", format!("p{i}").as_bytes()]));
    }
    c.send_raw(&pipe).await;
    for i in 0..500 {
        assert_eq!(c.reply().await, simple("OK"));
        assert_eq!(c.reply().await, bulk(&i.to_string()));
    }
    // A transaction on one slot; across slots, CROSSSLOT as Redis Cluster says.
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["INCR", "{t}n"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["INCR", "{t}m"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["EXEC"]).await, Frame::Array(vec![int(1), int(1)]));
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["INCR", "foo2"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["INCR", "bar2"]).await, simple("QUEUED"));
    assert!(is_error(&c.cmd(&["EXEC"]).await, "CROSSSLOT"));
    // Cluster clients are told keywarden is the one node.
    let Frame::Array(slots) = c.cmd(&["CLUSTER", "SLOTS"]).await else {
        panic!()
    };
    assert_eq!(slots.len(), 1);
    let Frame::Array(range) = &slots[0] else {
        panic!()
    };
    assert_eq!(range[..2], [int(0), int(16383)]);
    let Frame::Array(node) = &range[2] else {
        panic!()
    };
    assert_eq!(node[1], int(proxy.addr.port() as i64));
    // redis-cli -c follows MOVED: it never gets one through keywarden.
    let port = proxy.addr.port();
    let got = tokio::task::spawn_blocking(move || {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string(), "GET", "user:2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
    .await
    .unwrap();
    assert_eq!(got, "v-user:2");
    drop(rig);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_pubsub_reach_the_right_node() {
    let (rig, _dir, proxy) = rig_and_proxy().await;
    let mut blocked = proxy.client().await;
    blocked.send(&["BLPOP", "queue", "5"]).await;
    let mut c = proxy.client().await;
    // Blocked once keywarden's CLIENT LIST says so (it has the client's own connection).
    let deadline = Instant::now() + WAIT;
    loop {
        let Frame::BulkString(list) = c.cmd(&["CLIENT", "LIST"]).await else {
            panic!("CLIENT LIST is a bulk string")
        };
        if String::from_utf8_lossy(&list).contains("flags=b") {
            break;
        }
        assert!(Instant::now() < deadline, "the BLPOP never blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.cmd(&["RPUSH", "queue", "job"]).await, int(1));
    assert_eq!(
        blocked.reply().await,
        Frame::Array(vec![bulk("queue"), bulk("job")])
    );
    // The blocked client's later requests reach every node again, never a MOVED.
    for k in KEYS {
        assert_eq!(blocked.cmd(&["SET", k, k]).await, simple("OK"));
        assert_eq!(blocked.cmd(&["GET", k]).await, bulk(k));
    }
    // WATCH and its transaction on the watched key's node; then every node again.
    assert_eq!(c.cmd(&["WATCH", "{w}x"]).await, simple("OK"));
    assert_eq!(c.cmd(&["MULTI"]).await, simple("OK"));
    assert_eq!(c.cmd(&["SET", "{w}x", "1"]).await, simple("QUEUED"));
    assert_eq!(c.cmd(&["EXEC"]).await, Frame::Array(vec![simple("OK")]));
    for k in KEYS {
        assert_eq!(c.cmd(&["GET", k]).await, bulk(k));
    }
    let mut sub = proxy.client().await;
    sub.send(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        sub.reply().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );
    // Redis Cluster carries a PUBLISH to every node.
    let mut delivered = 0;
    for _ in 0..50 {
        if let Frame::Integer(n) = c.cmd(&["PUBLISH", "news", "hi"]).await {
            delivered = n;
        }
        if delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sub.reply().await,
        Frame::Array(vec![bulk("message"), bulk("news"), bulk("hi")])
    );
    // A shard channel on its slot's node, for SSUBSCRIBE and SPUBLISH alike.
    let mut ssub = proxy.client().await;
    ssub.send(&["SSUBSCRIBE", "orders"]).await;
    assert_eq!(
        ssub.reply().await,
        Frame::Array(vec![bulk("ssubscribe"), bulk("orders"), int(1)])
    );
    assert_eq!(c.cmd(&["SPUBLISH", "orders", "o1"]).await, int(1));
    assert_eq!(
        ssub.reply().await,
        Frame::Array(vec![bulk("smessage"), bulk("orders"), bulk("o1")])
    );
    drop(rig);
    proxy.shutdown().await;
}

/// The replica of the primary on `port` (by CLUSTER NODES).
fn replica_of(rig: &Rig, port: u16) -> usize {
    let id = redis_cli(port, &["CLUSTER", "MYID"]);
    rig.nodes
        .iter()
        .position(|n| {
            redis_cli(n.port, &["CLUSTER", "NODES"]).lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f[2].contains("myself") && f[2].contains("slave") && f[3] == id
            })
        })
        .expect("every primary has a replica")
}

/// Events of `kind` in the events file.
fn events_of(path: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    events_in(path)
        .into_iter()
        .filter(|e| e["event"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_only_its_own_slots_until_its_replica_takes_over() {
    let mut rig = tokio::task::spawn_blocking(Rig::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut s = rig.settings(&events);
    // Every key fails closed: during an outage, refused, never served locally.
    s.keyspaces = Keyspaces::new(Vec::new(), Mode::FailClosed);
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    for k in KEYS {
        assert_eq!(c.cmd(&["SET", k, "1"]).await, simple("OK"));
    }
    // Kill the primary of "foo"; find a key that lives on another shard.
    let (back, dead, live_key, replica) = tokio::task::spawn_blocking(move || {
        let dead = rig.owner("foo").port;
        let live = KEYS
            .into_iter()
            .find(|k| rig.owner(k).port != dead)
            .expect("keys on two shards");
        let dead_index = rig.nodes.iter().position(|n| n.port == dead).unwrap();
        let replica = replica_of(&rig, dead);
        rig.nodes[dead_index].kill();
        (rig, dead, live, replica)
    })
    .await
    .unwrap();
    rig = back;
    let killed = Instant::now();
    // When the replica is promoted, as its own ROLE says.
    let replica_port = rig.nodes[replica].port;
    let promoted = std::thread::spawn(move || loop {
        if redis_cli(replica_port, &["ROLE"]).starts_with("master") {
            return killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "never promoted");
        std::thread::sleep(Duration::from_millis(10));
    });
    // The dead shard's key is refused (fail_closed) once its shard is declared down; the
    // live shard's key is served all along.
    let degraded_at = loop {
        let reply = c.cmd(&["GET", "foo"]).await;
        if is_error(&reply, "FAILCLOSED") {
            break killed.elapsed();
        }
        assert_eq!(c.cmd(&["GET", live_key]).await, bulk("1"));
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "foo never refused: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(c.cmd(&["GET", live_key]).await, bulk("1"));
    assert_eq!(c.cmd(&["SET", live_key, "2"]).await, simple("OK"));
    // A request spanning both shards follows the strictest key.
    assert!(is_error(
        &c.cmd(&["MGET", live_key, "foo"]).await,
        "FAILCLOSED"
    ));
    let degraded_event_at = loop {
        if !events_of(&events, "BACKEND_DEGRADED").is_empty() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no BACKEND_DEGRADED"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let degraded = events_of(&events, "BACKEND_DEGRADED");
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    let shard = degraded[0]["upstream"].as_str().unwrap().to_owned();
    assert!(
        shard.starts_with(&format!("127.0.0.1:{dead} slots ")),
        "{shard}"
    );
    // The replica is promoted (cluster-node-timeout 1 s): the shard serves again, there.
    let recovered_at = loop {
        if c.cmd(&["GET", "foo"]).await == bulk("1") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the shard never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(c.cmd(&["SET", "foo", "2"]).await, simple("OK"));
    let port = rig.nodes[replica].port;
    let on_replica = tokio::task::spawn_blocking(move || redis_cli(port, &["GET", "foo"]))
        .await
        .unwrap();
    assert_eq!(on_replica, "2");
    // One RECOVERED for the shard, and the failover as an event of its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while events_of(&events, "BACKEND_RECOVERED").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered_event_at = killed.elapsed();
    let promoted = promoted.join().unwrap();
    let recovered = events_of(&events, "BACKEND_RECOVERED");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0]["upstream"], shard.as_str());
    let switched = events_of(&events, "BACKEND_SWITCHED");
    assert_eq!(switched.len(), 1, "{switched:?}");
    assert_eq!(switched[0]["upstream"], shard.as_str());
    assert_eq!(switched[0]["to"], format!("127.0.0.1:{port}"));
    assert_eq!(events_of(&events, "BACKEND_DEGRADED").len(), 1);
    eprintln!(
        "kill -9 at 0: fail_closed key refused after {degraded_at:?}, BACKEND_DEGRADED seen \
         after {degraded_event_at:?}; replica promoted after {promoted:?}, key served again \
         after {recovered_at:?}, BACKEND_RECOVERED seen by {recovered_event_at:?}"
    );
    drop(rig);
    proxy.shutdown().await;
}

/// Moves 2000 slots away from the primary of `k0`, to the primary `to` names (by node id),
/// while four clients pipeline GET, INCR and a cross-slot MGET through keywarden, every reply
/// checked; then reads every key back. Returns the rig and the redirections keywarden followed.
async fn reshard_under_load(
    rig: Rig,
    proxy: &Proxy,
    keys: Vec<String>,
    to: impl FnOnce(&mut Rig, &str) -> String + Send + 'static,
) -> (Rig, u64) {
    // The keys, written first; the first one's primary gives the slots.
    let mut c = proxy.client().await;
    for chunk in keys.chunks(100) {
        let mut pipe = Vec::new();
        for k in chunk {
            pipe.extend(encode(&[b"SET", k.as_bytes(), k.as_bytes()]));
        }
        c.send_raw(&pipe).await;
        for _ in chunk {
            assert_eq!(c.reply().await, simple("OK"));
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for w in 0..4 {
        let (stop, keys, addr) = (stop.clone(), keys.clone(), proxy.addr);
        loaders.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pipe = Vec::new();
                let batch: Vec<&String> = keys.iter().skip(w * 7).step_by(13).take(32).collect();
                for k in &batch {
                    pipe.extend(encode(&[b"GET", k.as_bytes()]));
                    pipe.extend(encode(&[b"INCR", format!("n:{k}").as_bytes()]));
                }
                pipe.extend(encode(&[b"MGET", batch[0].as_bytes(), batch[1].as_bytes()]));
                c.send_raw(&pipe).await;
                for k in &batch {
                    assert_eq!(c.reply().await, bulk(k), "GET {k} during the resharding");
                    assert_eq!(c.reply().await, int(rounds as i64 + 1), "INCR n:{k}");
                }
                assert_eq!(
                    c.reply().await,
                    Frame::Array(vec![bulk(batch[0]), bulk(batch[1])])
                );
                rounds += 1;
            }
            rounds
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = keys[0].clone();
    let rig = tokio::task::spawn_blocking(move || {
        let mut rig = rig;
        let from = redis_cli(rig.owner(&first).port, &["CLUSTER", "MYID"]);
        let to = to(&mut rig, &from);
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &rig.nodes[0].addr()])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args([
                "--cluster-slots",
                "2000",
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = said.lines().rev().take(5).collect();
        assert!(out.status.success(), "reshard: {tail:?}");
        rig
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        let rounds = l.await.expect("no client saw an error or a wrong reply");
        assert!(rounds > 0);
    }
    // Every key still reads back through keywarden.
    for k in keys.iter().step_by(7) {
        assert_eq!(c.cmd(&["GET", k]).await, bulk(k));
    }
    let Frame::BulkString(info) = c.cmd(&["INFO", "keywarden"]).await else {
        panic!("INFO is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    let redirects: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cluster_redirects:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO keywarden has cluster_redirects");
    (rig, redirects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharding_under_pipelined_load_shows_no_client_an_error() {
    let (rig, _dir, proxy) = rig_and_proxy().await;
    let keys = (0..2000).map(|i| format!("k{i}")).collect();
    let (rig, redirects) = reshard_under_load(rig, &proxy, keys, |rig, from| {
        let to = rig
            .nodes
            .iter()
            .find(|n| {
                redis_cli(n.port, &["ROLE"]).starts_with("master")
                    && redis_cli(n.port, &["CLUSTER", "MYID"]) != from
            })
            .unwrap();
        redis_cli(to.port, &["CLUSTER", "MYID"])
    })
    .await;
    // The clients were redirected (MOVED or ASK), and never saw it.
    assert!(redirects > 0);
    eprintln!("redirects followed during the resharding: {redirects}");
    drop(rig);
    proxy.shutdown().await;
}

/// Scale-out: a primary added to the cluster (`redis-cli --cluster add-node`) gets slots while
/// clients pipeline. The new node is in no slot map until its first slot has moved, so while
/// that slot migrates (slowly here: 20,000 keys in it) the ASKs naming it must be followed
/// before the map lists it: keywarden takes the node once a listed node confirms, in
/// `CLUSTER NODES`, that a primary of the cluster is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_to_a_newly_added_primary_show_no_client_an_error() {
    let (rig, _dir, proxy) = rig_and_proxy().await;
    // The first slot the resharding moves: the lowest of the primary of "k0".
    let (rig, first_slot) = tokio::task::spawn_blocking(move || {
        let port = rig.owner("k0").port;
        let me = redis_cli(port, &["CLUSTER", "MYID"]);
        let lowest = redis_cli(port, &["CLUSTER", "NODES"])
            .lines()
            .find(|l| l.starts_with(&me))
            .and_then(|l| l.split(' ').nth(8).map(str::to_owned))
            .and_then(|r| r.split('-').next()?.parse::<u16>().ok())
            .expect("the primary's first range");
        (rig, lowest)
    })
    .await
    .unwrap();
    let tag = (0..)
        .map(|i| format!("t{i}"))
        .find(|t| keywarden::command::slot::key_slot(t.as_bytes()) == first_slot)
        .unwrap();
    let mut c = proxy.client().await;
    for chunk in 0..20 {
        let mut pipe = Vec::new();
        for i in 0..1000 {
            let key = format!("{{{tag}}}fill{}", chunk * 1000 + i);
            pipe.extend(encode(&[b"SET", key.as_bytes(), b"x"]));
        }
        c.send_raw(&pipe).await;
        for _ in 0..1000 {
            assert_eq!(c.reply().await, simple("OK"));
        }
    }
    // Keys in that slot first, so the clients keep asking for them while it moves.
    let keys: Vec<String> = (0..500)
        .map(|i| format!("{{{tag}}}hot{i}"))
        .chain((0..2000).map(|i| format!("k{i}")))
        .collect();
    let (rig, redirects) = reshard_under_load(rig, &proxy, keys, |rig, _| {
        let added = cluster_node();
        let out = Command::new("redis-cli")
            .args(["--cluster", "add-node", &added.addr(), &rig.nodes[0].addr()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "add-node: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let id = redis_cli(added.port, &["CLUSTER", "MYID"]);
        wait_for(
            "every node to know the new primary, and it the cluster",
            || {
                rig.nodes
                    .iter()
                    .all(|n| redis_cli(n.port, &["CLUSTER", "NODES"]).contains(&id))
                    && redis_cli(added.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            },
        );
        rig.nodes.push(added);
        id
    })
    .await;
    assert!(redirects > 0);
    let Frame::BulkString(info) = proxy.client().await.cmd(&["INFO", "keywarden"]).await else {
        panic!("INFO is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    assert!(info.contains("cluster_shards:4"), "{info}");
    eprintln!("redirects followed while slots moved to the new primary: {redirects}");
    drop(rig);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_a_password_and_tls_is_reached_on_every_node() {
    let secure = std::sync::Arc::new(Secure::new());
    let rig = tokio::task::spawn_blocking({
        let secure = secure.clone();
        move || Rig::start_secure(Some(&secure))
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = rig.settings(&dir.path().join("events.jsonl"));
    let seed = format!("127.0.0.1:{}", secure.tls_ports[0]);
    s.upstream.address = seed.clone();
    s.upstream.cluster_nodes = vec![seed];
    s.upstream.password = Some(secure.password.to_owned());
    s.upstream.tls = Some(keywarden::config::UpstreamTls {
        ca_file: secure.certs.path("ca.pem"),
        client_cert: Some((
            secure.certs.path("client.pem"),
            secure.certs.path("client.key"),
        )),
        server_name: None,
    });
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    // Every shard reached over TLS, logged in: keys on all three primaries.
    for k in KEYS {
        assert_eq!(c.cmd(&["SET", k, k]).await, simple("OK"));
    }
    assert_eq!(
        c.cmd(&["MGET", "foo", "bar", "baz"]).await,
        Frame::Array(vec![bulk("foo"), bulk("bar"), bulk("baz")])
    );
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(KEYS.len() as i64));
    let Frame::BulkString(info) = c.cmd(&["INFO", "keywarden"]).await else {
        panic!("INFO is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    assert!(info.contains("cluster_shards:3"), "{info}");
    assert_eq!(info.matches("state=healthy").count(), 3, "{info}");
    drop(rig);
    proxy.shutdown().await;
}
