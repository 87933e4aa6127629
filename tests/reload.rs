//! Hot reload through `KEYWARDEN RELOAD` (SIGHUP is tested on the binary, in binary.rs): the
//! file is read again, a valid one applies to open connections without dropping them, an
//! invalid one changes nothing, and each reload is an event.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keywarden::config::{Overrides, Settings};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

/// A config file in a temporary directory, with an events file beside it.
struct ConfigFile {
    dir: tempfile::TempDir,
    upstream: String,
}

impl ConfigFile {
    fn new(redis: &RedisServer) -> ConfigFile {
        ConfigFile {
            dir: tempfile::tempdir().unwrap(),
            upstream: redis.addr(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("keywarden.toml")
    }

    fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Writes the file: `body` (top-level keys first, then tables), then the test upstream
    /// and events file.
    fn write(&self, body: &str) {
        self.write_with(body, "500ms");
    }

    fn write_with(&self, body: &str, command_timeout: &str) {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
shutdown_timeout = "2s"
{body}
[upstream]
address = "{upstream}"
connect_timeout = "300ms"
command_timeout = "{command_timeout}"
[events]
file = "{events}"
"#,
            upstream = self.upstream,
            events = self.events_path().display(),
        );
        std::fs::write(self.path(), text).unwrap();
    }

    fn settings(&self) -> Settings {
        Settings::load(&self.path(), &Overrides::default()).expect("valid test config")
    }

    /// The events of `kind` in the events file, in order.
    fn events(&self, kind: &str) -> Vec<Value> {
        events_in(&self.events_path())
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }
}

/// A Redis, a config file, and keywarden started on that file.
struct Rig {
    redis: RedisServer,
    config: ConfigFile,
    proxy: Proxy,
}

impl Rig {
    /// Writes the config file with `body` (see [`ConfigFile::write`]) and starts keywarden.
    async fn start(body: &str) -> Rig {
        Rig::start_with(body, "500ms").await
    }

    async fn start_with(body: &str, command_timeout: &str) -> Rig {
        let redis = RedisServer::start();
        let config = ConfigFile::new(&redis);
        config.write_with(body, command_timeout);
        let proxy = Proxy::start(config.settings()).await;
        Rig {
            redis,
            config,
            proxy,
        }
    }

    /// Users `ops` and `alice` with every permission, each logged in on a connection.
    async fn with_alice(command_timeout: &str) -> (Rig, RawClient, RawClient) {
        let rig = Rig::start_with(&users("\"all\""), command_timeout).await;
        let ops = login(rig.proxy.addr, "ops", "ops-pw").await;
        let alice = login(rig.proxy.addr, "alice", "alice-pw").await;
        (rig, ops, alice)
    }
}

fn sha256_hex(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn user(name: &str, password: &str, categories: &str) -> String {
    format!(
        "[[user]]\nname = \"{name}\"\npassword_sha256 = \"{}\"\ncategories = [{categories}]\n",
        sha256_hex(password)
    )
}

const SCRATCH: &str = r#"
[[keyspace]]
name = "scratch"
patterns = ["tmp:"]
mode = "local_only"
"#;

const SESSIONS: &str = r#"
[[keyspace]]
name = "sessions"
patterns = ["sess:"]
mode = "local_only"
"#;

async fn reload(client: &mut RawClient) -> Vec<u8> {
    client.cmd(&["KEYWARDEN", "RELOAD"]).await
}

/// The value of `field` in INFO keywarden.
async fn info_field(client: &mut RawClient, field: &str) -> String {
    let reply = client.cmd(&["INFO", "keywarden"]).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} missing in {text}"))
        .trim()
        .to_owned()
}

/// Whether `key` is held by the upstream itself (asked directly, not through the proxy).
async fn upstream_has(redis: &RedisServer, key: &str) -> bool {
    let mut direct = RawClient::connect(redis.addr()).await;
    direct.cmd(&["EXISTS", key]).await == b":1\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_clients_pipeline_drops_nothing_and_applies_at_once() {
    let rig = Rig::start(SCRATCH).await;

    // Clients pipelining against keys whose routing no reload below changes: upstream keys
    // (default keyspace, fail_closed) and local scratch keys. Every reply is checked.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for c in 0..6 {
        let (stop, rounds, addr) = (stop.clone(), rounds.clone(), rig.proxy.addr);
        workers.push(tokio::spawn(async move {
            let mut client = RawClient::connect(addr).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (up, local, v) = (format!("up:{c}"), format!("tmp:{c}"), n.to_string());
                let replies = client
                    .run(&[
                        &["SET", &up, &v],
                        &["SET", &local, &v],
                        &["GET", &up],
                        &["GET", &local],
                        &["INCR", &format!("tmp:n:{c}")],
                        &["PING"],
                    ])
                    .await;
                let bulk = format!("${}\r\n{v}\r\n", v.len()).into_bytes();
                let count = format!(":{}\r\n", n + 1).into_bytes();
                let want: [&[u8]; 6] = [b"+OK\r\n", b"+OK\r\n", &bulk, &bulk, &count, b"+PONG\r\n"];
                for (got, want) in replies.iter().zip(want) {
                    assert_eq!(show_bytes(got), show_bytes(want), "client {c}, round {n}");
                }
                n += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            // Still the same connection, still answering.
            assert_eq!(client.cmd(&["PING"]).await, b"+PONG\r\n");
            n
        }));
    }

    let mut admin = RawClient::connect(rig.proxy.addr).await;
    let wait_rounds = |at_least: u64| {
        let rounds = rounds.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while rounds.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "clients stopped making progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for i in 0..10u64 {
        wait_rounds(rounds.load(Ordering::Relaxed) + 20).await;
        // Alternate: with and without the `sessions` keyspace.
        let body = if i % 2 == 0 {
            format!("{SCRATCH}{SESSIONS}")
        } else {
            SCRATCH.to_owned()
        };
        rig.config.write(&body);
        assert_eq!(reload(&mut admin).await, b"+OK\r\n", "reload {i}");
    }
    wait_rounds(rounds.load(Ordering::Relaxed) + 20).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let n = w
            .await
            .expect("a client saw a wrong reply or lost its connection");
        assert!(n > 0);
    }

    // The last file (i = 9) has no `sessions` keyspace: sess: keys go upstream again.
    let mut client = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(client.cmd(&["SET", "sess:a", "1"]).await, b"+OK\r\n");
    assert!(upstream_has(&rig.redis, "sess:a").await);
    // And with it, they stay in the rig.proxy.
    rig.config.write(&format!("{SCRATCH}{SESSIONS}"));
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    assert_eq!(client.cmd(&["SET", "sess:b", "1"]).await, b"+OK\r\n");
    assert!(!upstream_has(&rig.redis, "sess:b").await);
    assert_eq!(client.cmd(&["GET", "sess:b"]).await, b"$1\r\n1\r\n");

    let reloaded = rig.config.events("CONFIG_RELOADED");
    assert_eq!(reloaded.len(), 11);
    let last = &reloaded[10];
    assert_eq!(last["generation"], 12);
    assert_eq!(last["trigger"], "KEYWARDEN RELOAD");
    assert_eq!(last["applied"], serde_json::json!(["keyspaces"]));
    assert_eq!(last["restart_required"], serde_json::json!([]));
    assert_eq!(
        last["keyspaces"]["local_only"],
        serde_json::json!(["scratch", "sessions"])
    );
    assert_eq!(
        last["source"],
        rig.config.path().display().to_string().as_str()
    );
    assert_eq!(info_field(&mut admin, "config_generation").await, "12");
    assert_eq!(info_field(&mut admin, "config_reloads").await, "11");
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing() {
    let rig = Rig::start(SCRATCH).await;
    let mut client = RawClient::connect(rig.proxy.addr).await;

    // Two problems: a mode that does not exist, and a timeout without a unit.
    rig.config.write(
        r#"
        [[keyspace]]
        name = "scratch"
        patterns = ["tmp:"]
        mode = "sometimes"
        [health]
        probe_timeout = "5"
        "#,
    );
    let reply = String::from_utf8(reload(&mut client).await).unwrap();
    assert!(
        reply.starts_with("-ERR reload failed, the configuration in force is unchanged: ")
            && reply.contains("(and 1 more, see the log)"),
        "{reply}"
    );
    let failed = rig.config.events("CONFIG_RELOAD_FAILED");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["generation"], 1);
    let errors: Vec<String> = failed[0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("health.probe_timeout")
            || errors[1].starts_with("health.probe_timeout")
    );
    assert!(
        errors.iter().any(|e| e.starts_with("keyspace[0].mode")),
        "{errors:?}"
    );

    // The old rules hold: tmp: keys stay local.
    assert_eq!(client.cmd(&["SET", "tmp:a", "1"]).await, b"+OK\r\n");
    assert!(!upstream_has(&rig.redis, "tmp:a").await);
    assert_eq!(info_field(&mut client, "config_generation").await, "1");
    assert_eq!(info_field(&mut client, "config_last_reload_ok").await, "0");

    // Not TOML at all, then a missing file: the same.
    rig.config.write("[[keyspace]\n");
    assert!(reload(&mut client).await.starts_with(b"-ERR reload failed"));
    std::fs::remove_file(rig.config.path()).unwrap();
    let reply = String::from_utf8(reload(&mut client).await).unwrap();
    assert!(reply.contains("cannot read"), "{reply}");
    assert_eq!(rig.config.events("CONFIG_RELOAD_FAILED").len(), 3);
    assert_eq!(client.cmd(&["GET", "tmp:a"]).await, b"$1\r\n1\r\n");

    // Fixed: applies, and the last reload is good again.
    rig.config.write("");
    assert_eq!(reload(&mut client).await, b"+OK\r\n");
    assert_eq!(info_field(&mut client, "config_generation").await, "2");
    assert_eq!(info_field(&mut client, "config_last_reload_ok").await, "1");
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_follow_a_reload() {
    let redis = RedisServer::start();
    let config = ConfigFile::new(&redis);
    let admin_user = user("ops", "ops-pw", "\"all\"");
    config.write(&format!(
        "{admin_user}{}{}",
        user("alice", "alice-pw", "\"all\""),
        user("bob", "bob-pw", "\"all\"")
    ));
    let proxy = Proxy::start(config.settings()).await;
    let login = |name: &'static str, password: &'static str| async move {
        let mut c = RawClient::connect(proxy.addr).await;
        assert_eq!(c.cmd(&["AUTH", name, password]).await, b"+OK\r\n");
        c
    };
    let mut ops = login("ops", "ops-pw").await;
    let mut alice = login("alice", "alice-pw").await;
    let mut bob = login("bob", "bob-pw").await;
    let mut anonymous = RawClient::connect(proxy.addr).await;
    assert!(anonymous.cmd(&["GET", "k"]).await.starts_with(b"-NOAUTH"));

    // alice may now only read; bob is gone; carol is new.
    config.write(&format!(
        "{admin_user}{}{}",
        user("alice", "alice-pw", "\"read\", \"connection\""),
        user("carol", "carol-pw", "\"all\"")
    ));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");

    // bob's connection is closed without his sending anything.
    assert_eq!(bob.bytes_until_closed().await, b"");
    // alice keeps hers, with her new permissions.
    assert_eq!(alice.cmd(&["GET", "k"]).await, b"$-1\r\n");
    let denied = alice.cmd(&["SET", "k", "v"]).await;
    assert!(denied.starts_with(b"-NOPERM"), "{}", show_bytes(&denied));
    // Not logged in before, not logged in now.
    assert!(anonymous.cmd(&["GET", "k"]).await.starts_with(b"-NOAUTH"));
    let mut carol = login("carol", "carol-pw").await;
    assert_eq!(carol.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    assert!(RawClient::connect(proxy.addr)
        .await
        .cmd(&["AUTH", "bob", "bob-pw"])
        .await
        .starts_with(b"-WRONGPASS"));

    // A new password for alice: her connection was opened with the old one, so it closes.
    config.write(&format!(
        "{admin_user}{}{}",
        user("alice", "alice-pw-2", "\"read\", \"connection\""),
        user("carol", "carol-pw", "\"all\"")
    ));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    assert_eq!(alice.bytes_until_closed().await, b"");
    assert_eq!(carol.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");

    // Turning authentication off: everyone is `default`, connected clients included, and
    // clients of users that no longer exist are closed (ops's own after this reply).
    config.write("");
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    assert_eq!(ops.bytes_until_closed().await, b"");
    assert_eq!(carol.bytes_until_closed().await, b"");
    assert_eq!(anonymous.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");
    let mut open = RawClient::connect(proxy.addr).await;
    assert_eq!(open.cmd(&["PING"]).await, b"+PONG\r\n");

    // And on again: clients that never logged in were `default` without a password; now
    // `default` has one, so they are closed.
    config.write(&format!(
        "requirepass_sha256 = \"{}\"\n",
        sha256_hex("secret")
    ));
    assert_eq!(reload(&mut anonymous).await, b"+OK\r\n");
    assert_eq!(anonymous.bytes_until_closed().await, b"");
    assert_eq!(open.bytes_until_closed().await, b"");
    let mut fresh = RawClient::connect(proxy.addr).await;
    assert!(fresh.cmd(&["GET", "k"]).await.starts_with(b"-NOAUTH"));
    assert_eq!(fresh.cmd(&["AUTH", "secret"]).await, b"+OK\r\n");
    assert_eq!(fresh.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_timeouts_apply_to_open_connections() {
    let rig = Rig::start("").await;
    let mut admin = RawClient::connect(rig.proxy.addr).await;
    let mut idle = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(idle.cmd(&["PING"]).await, b"+PONG\r\n");

    // An idle timeout, which the connected idle clients get too; and a max_clients of 3.
    rig.config
        .write("client_idle_timeout = \"1s\"\nmax_clients = 3\n");
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    let t = Instant::now();
    assert_eq!(idle.bytes_until_closed().await, b"");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(admin.bytes_until_closed().await, b"");
    // Three clients fit, a fourth does not.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = RawClient::connect(rig.proxy.addr).await;
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        clients.push(c);
    }
    let mut fourth = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(
        fourth.bytes_until_closed().await,
        b"-ERR max number of clients reached\r\n"
    );

    // A longer command timeout, seen on a hung upstream: the request waits for it.
    rig.config.write_with("", "1500ms");
    assert_eq!(reload(&mut clients[0]).await, b"+OK\r\n");
    let client = &mut clients[1];
    assert_eq!(client.cmd(&["SET", "k", "1"]).await, b"+OK\r\n");
    rig.redis.hang();
    let t = Instant::now();
    let reply = client.cmd(&["GET", "k"]).await;
    let waited = t.elapsed();
    rig.redis.resume();
    assert!(reply.starts_with(b"-"), "{}", show_bytes(&reply));
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_secs(4),
        "timed out after {waited:?}"
    );
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_that_changes_mode_leaves_no_local_keys_behind() {
    let mut rig = Rig::start(&format!("{SCRATCH}{SESSIONS}")).await;
    let mut client = RawClient::connect(rig.proxy.addr).await;
    for key in ["tmp:a", "tmp:b", "sess:a"] {
        assert_eq!(client.cmd(&["SET", key, "local"]).await, b"+OK\r\n");
    }
    // tmp: becomes degraded (served by the upstream while it is up); sess: is unchanged.
    rig.config.write(&format!(
        "{SESSIONS}\n[[keyspace]]\nname = \"scratch\"\npatterns = [\"tmp:\"]\nmode = \"degraded\"\n"
    ));
    assert_eq!(reload(&mut client).await, b"+OK\r\n");
    let event = rig.config.events("CONFIG_RELOADED").pop().unwrap();
    assert_eq!(event["discarded_local_keys"], 2);
    assert_eq!(
        event["keyspaces"]["degraded"],
        serde_json::json!(["scratch"])
    );
    assert_eq!(client.cmd(&["GET", "tmp:a"]).await, b"$-1\r\n");
    assert_eq!(client.cmd(&["GET", "sess:a"]).await, b"$5\r\nlocal\r\n");

    // During an outage the old local scratch values must not come back as degraded replies.
    rig.redis.kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = client.cmd(&["GET", "tmp:a"]).await;
        if reply == b"$-1\r\n" && info_field(&mut client, "upstream_state").await != "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", show_bytes(&reply));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A smaller local store budget evicts at once (least recently used first).
    let big = "x".repeat(2000);
    assert_eq!(client.cmd(&["SET", "sess:big", &big]).await, b"+OK\r\n");
    assert_eq!(info_field(&mut client, "local_store_keys").await, "2");
    rig.config.write(&format!(
        "{SESSIONS}\n[local_store]\nmax_bytes = \"1KiB\"\n"
    ));
    assert_eq!(reload(&mut client).await, b"+OK\r\n");
    assert_eq!(
        info_field(&mut client, "local_store_max_bytes").await,
        "1024"
    );
    assert_eq!(info_field(&mut client, "local_store_keys").await, "0");
    assert_eq!(info_field(&mut client, "local_store_evictions").await, "2");
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_fixed_at_startup_are_kept_and_named() {
    let rig = Rig::start(SCRATCH).await;
    let mut client = RawClient::connect(rig.proxy.addr).await;
    rig.config.write(&format!("max_clients = 77\n{SCRATCH}"));
    let text = std::fs::read_to_string(rig.config.path()).unwrap();
    let moved = text
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        .replace(&rig.redis.addr(), "127.0.0.1:2");
    std::fs::write(rig.config.path(), moved).unwrap();
    assert_eq!(reload(&mut client).await, b"+OK\r\n");
    let event = rig.config.events("CONFIG_RELOADED").pop().unwrap();
    assert_eq!(
        event["restart_required"],
        serde_json::json!(["listen", "upstream.address"])
    );
    assert_eq!(event["applied"], serde_json::json!(["max_clients"]));
    // Still on the same upstream.
    assert_eq!(client.cmd(&["SET", "k", "1"]).await, b"+OK\r\n");
    assert!(upstream_has(&rig.redis, "k").await);
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_there_is_nothing_to_reload() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut client = RawClient::connect(proxy.addr).await;
    let reply = String::from_utf8(reload(&mut client).await).unwrap();
    assert!(reply.contains("started without a config file"), "{reply}");
    assert_eq!(client.cmd(&["PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

fn users(alice_categories: &str) -> String {
    format!(
        "{}{}",
        user("ops", "ops-pw", "\"all\""),
        user("alice", "alice-pw", alice_categories)
    )
}

async fn login(addr: std::net::SocketAddr, name: &str, pw: &str) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.cmd(&["AUTH", name, pw]).await, b"+OK\r\n");
    c
}

/// A client of a user the reload deletes, blocked in BLPOP, is closed at once: nothing pushed
/// after the reload reaches it (found by review: it stayed blocked and popped the element).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_of_a_withdrawn_user_is_closed_at_once() {
    let (rig, mut ops, mut alice) = Rig::with_alice("500ms").await;
    alice.send(&[&["BLPOP", "q", "0"]]).await;
    wait_until_blocked(&rig.redis).await;

    rig.config.write(&user("ops", "ops-pw", "\"all\""));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    // alice was deleted: her connection closes with nothing more, and her BLPOP is gone from
    // the upstream, so what is pushed next stays in the list.
    assert_eq!(alice.bytes_until_closed().await, b"");
    let mut direct = RawClient::connect(rig.redis.addr()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let info = direct.cmd(&["INFO", "clients"]).await;
        if String::from_utf8_lossy(&info).contains("blocked_clients:0\r\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the BLPOP stayed blocked upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(direct.cmd(&["RPUSH", "q", "secret"]).await, b":1\r\n");
    assert_eq!(direct.cmd(&["LLEN", "q"]).await, b":1\r\n");
    rig.proxy.shutdown().await;
}

/// A command queued in MULTI before a reload that revokes its permission does not run at EXEC
/// (Redis checks ACLs again at EXEC too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_checks_permissions_again_after_a_reload() {
    let (rig, mut ops, mut alice) = Rig::with_alice("500ms").await;
    assert_eq!(alice.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(alice.cmd(&["SET", "k", "written"]).await, b"+QUEUED\r\n");

    // alice may only read from now on (same password: she keeps her connection).
    rig.config
        .write(&users("\"read\", \"connection\", \"transaction\""));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    let mut alice2 = login(rig.proxy.addr, "alice", "alice-pw").await;
    let denied = alice2.cmd(&["SET", "k2", "v"]).await;
    assert!(denied.starts_with(b"-NOPERM"), "{}", show_bytes(&denied));
    let exec = alice.cmd(&["EXEC"]).await;
    assert!(
        !upstream_has(&rig.redis, "k").await,
        "EXEC after the reload wrote k for a read-only user: {}",
        show_bytes(&exec)
    );
    rig.proxy.shutdown().await;
}

/// A request stalled (waiting for a dedicated connection) when its user is deleted is never
/// sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_of_a_withdrawn_user_never_runs() {
    let (rig, mut ops, mut alice) = Rig::with_alice("5s").await;
    rig.redis.hang();
    // GET waits on the shared connection; SET (db 1) waits for it, then a dedicated one.
    alice
        .send(&[&["GET", "k"], &["SELECT", "1"], &["SET", "owned", "1"]])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.config
        .write_with(&user("ops", "ops-pw", "\"all\""), "5s");
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    rig.redis.resume();
    let seen = alice.bytes_until_closed().await;
    let mut direct = RawClient::connect(rig.redis.addr()).await;
    assert_eq!(direct.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    let exists = direct.cmd(&["EXISTS", "owned"]).await;
    assert_eq!(
        exists,
        b":0\r\n",
        "deleted user's SET ran after the reload; client saw {}",
        show_bytes(&seen)
    );
    rig.proxy.shutdown().await;
}

/// A client on its own upstream connection never goes idle long enough to drop its parser: a
/// reload that lowers `max_bulk_len` applies to it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_limits_reach_clients_on_their_own_connections() {
    let rig = Rig::start("").await;
    let mut admin = RawClient::connect(rig.proxy.addr).await;
    let mut pinned = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(pinned.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(pinned.cmd(&["GET", "x"]).await, b"$-1\r\n"); // opens its dedicated connection
    rig.config.write("[limits]\nmax_bulk_len = \"1KiB\"\n");
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    let big = "v".repeat(4096);
    let mut fresh = RawClient::connect(rig.proxy.addr).await;
    let r = fresh.try_frame_of(&["SET", "big", &big]).await;
    assert!(
        r.as_deref()
            .is_some_and(|r| r.starts_with(b"-ERR Protocol error")),
        "{:?}",
        r
    );
    let r = pinned.try_frame_of(&["SET", "big", &big]).await;
    assert!(
        r.as_deref()
            .is_some_and(|r| r.starts_with(b"-ERR Protocol error")),
        "old client still accepts 4 KiB bulks: {:?}",
        r.as_deref().map(show_bytes)
    );
    rig.proxy.shutdown().await;
}

/// A batch routed to the local store by the old policy must not write after the reload
/// discarded that keyspace's keys and made it degraded (scratch data would linger as degraded
/// cache entries): it is judged again instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_judged_before_a_reload_never_writes_after_its_discard() {
    let redis = RedisServer::start();
    let config = ConfigFile::new(&redis);
    let degraded = "[[keyspace]]\nname = \"scratch\"\npatterns = [\"tmp:\"]\nmode = \"degraded\"\n";
    config.write(SCRATCH);
    let proxy = Proxy::start(config.settings()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (stop, addr) = (stop.clone(), proxy.addr);
        writers.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            let keys: Vec<String> = (0..400).map(|i| format!("tmp:{w}:{i}")).collect();
            let cmds: Vec<Vec<&str>> = keys
                .iter()
                .map(|k| vec!["SET", k.as_str(), "scratch"])
                .collect();
            let cmds: Vec<&[&str]> = cmds.iter().map(|c| c.as_slice()).collect();
            while !stop.load(Ordering::Relaxed) {
                for reply in c.run(&cmds).await {
                    assert_eq!(reply, b"+OK\r\n");
                }
            }
        }));
    }
    let mut admin = RawClient::connect(proxy.addr).await;
    let mut leaked = 0;
    for _ in 0..60 {
        config.write(SCRATCH);
        assert_eq!(reload(&mut admin).await, b"+OK\r\n");
        tokio::time::sleep(Duration::from_millis(5)).await;
        config.write(degraded);
        assert_eq!(reload(&mut admin).await, b"+OK\r\n");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Under `degraded` with a healthy upstream nothing writes tmp: keys locally.
        let keys: u64 = info_field(&mut admin, "local_store_keys")
            .await
            .parse()
            .unwrap();
        if keys > 0 {
            leaked = keys;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        leaked, 0,
        "scratch keys written by a stale batch outlived the discard"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_withdrawn_user_is_closed() {
    let (rig, mut ops, mut alice) = Rig::with_alice("500ms").await;
    let sub = alice.cmd(&["SUBSCRIBE", "ch"]).await;
    assert!(sub.starts_with(b"*3"), "{}", show_bytes(&sub));
    rig.config.write(&user("ops", "ops-pw", "\"all\""));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    assert_eq!(alice.bytes_until_closed().await, b"");
    // And its subscription ends upstream with the connection that held it.
    let deadline = Instant::now() + WAIT;
    while ops.cmd(&["PUBLISH", "ch", "after"]).await != b":0\r\n" {
        assert!(
            Instant::now() < deadline,
            "the subscription outlived the client"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.proxy.shutdown().await;
}

/// A reload that changes a user's permissions (same name and password) closes that user's
/// subscribers, MONITOR clients and clients tracking keys (their invalidations name keys):
/// what they receive was allowed by the old permissions, and only a new connection is judged
/// by the new ones (client libraries reconnect and resubscribe). Their other clients stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_monitors_and_trackers_of_a_user_whose_permissions_changed_are_closed() {
    let (rig, mut ops, mut alice) = Rig::with_alice("500ms").await;
    let sub = alice.cmd(&["SUBSCRIBE", "ch"]).await;
    assert!(sub.starts_with(b"*3"), "{}", show_bytes(&sub));
    let mut watcher = login(rig.proxy.addr, "alice", "alice-pw").await;
    assert_eq!(watcher.cmd(&["MONITOR"]).await, b"+OK\r\n");
    let mut tracker = login(rig.proxy.addr, "alice", "alice-pw").await;
    let hello = tracker.cmd(&["HELLO", "3"]).await;
    assert!(hello.starts_with(b"%"), "{}", show_bytes(&hello));
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "BCAST"]).await,
        b"+OK\r\n"
    );
    let mut plain = login(rig.proxy.addr, "alice", "alice-pw").await;
    rig.config.write(&format!(
        "{}{}",
        user("ops", "ops-pw", "\"all\""),
        user("alice", "alice-pw", "\"read\", \"pubsub\"")
    ));
    assert_eq!(reload(&mut ops).await, b"+OK\r\n");
    assert_eq!(alice.bytes_until_closed().await, b"");
    // MONITOR may have shown the reload itself before it closed.
    let rest = watcher.bytes_until_closed().await;
    assert!(
        rest.is_empty() || rest.starts_with(b"+"),
        "{}",
        show_bytes(&rest)
    );
    assert_eq!(tracker.bytes_until_closed().await, b"");
    assert_eq!(plain.cmd(&["GET", "k"]).await, b"$-1\r\n");
    assert!(
        plain.cmd(&["SET", "k", "v"]).await.starts_with(b"-NOPERM"),
        "the new permissions apply"
    );
    rig.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_counts_from_the_last_request() {
    let rig = Rig::start("client_idle_timeout = \"30s\"\n").await;
    let mut idle = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(idle.cmd(&["PING"]).await, b"+PONG\r\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut admin = RawClient::connect(rig.proxy.addr).await;
    rig.config.write("client_idle_timeout = \"1s\"\n");
    let t = Instant::now();
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    assert_eq!(idle.bytes_until_closed().await, b"");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    rig.proxy.shutdown().await;
}

/// Answers GET `key` through the proxy until it is forwarded (a nil reply, not an error).
async fn wait_forwarding(client: &mut RawClient, key: &str) {
    let deadline = Instant::now() + WAIT;
    while client.cmd(&["GET", key]).await != b"$-1\r\n" {
        assert!(Instant::now() < deadline, "the proxy never forwarded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts keywarden on `body`, logs two clients in with `login` (if users are configured),
/// hangs Redis, sends `cmds` on one (the first waits on the hung upstream, so the rest wait
/// inside keywarden), reloads `after` from the other, resumes Redis, and returns the
/// `cmds.len()` replies.
async fn judged_while_waiting(
    body: &str,
    after: &str,
    login: Option<(&str, &str)>,
    cmds: &[&[&str]],
) -> (Rig, Vec<Vec<u8>>) {
    let rig = Rig::start_with(body, "5s").await;
    let mut admin = RawClient::connect(rig.proxy.addr).await;
    let mut client = RawClient::connect(rig.proxy.addr).await;
    if let Some((name, password)) = login {
        for c in [&mut admin, &mut client] {
            assert_eq!(c.cmd(&["AUTH", name, password]).await, b"+OK\r\n");
        }
    }
    wait_forwarding(&mut client, "warm").await;
    rig.redis.hang();
    client.send(cmds).await;
    // Time for keywarden to read the pipeline; nothing can be answered while Redis hangs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.config.write_with(after, "5s");
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    rig.redis.resume();
    let mut replies = Vec::new();
    for _ in cmds {
        replies.push(client.frame().await);
    }
    (rig, replies)
}

/// Found by the second review: permissions, not only the user, are checked again for a
/// request that waits for its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_checked_against_new_permissions() {
    let (rig, replies) = judged_while_waiting(
        &users("\"all\""),
        &users("\"read\", \"connection\""),
        Some(("alice", "alice-pw")),
        &[&["GET", "k"], &["SELECT", "1"], &["SET", "owned", "1"]],
    )
    .await;
    assert_eq!(replies[..2], [&b"$-1\r\n"[..], b"+OK\r\n"]);
    assert!(
        replies[2].starts_with(b"-NOPERM"),
        "{}",
        show_bytes(&replies[2])
    );
    let mut direct = RawClient::connect(rig.redis.addr()).await;
    assert_eq!(direct.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&["EXISTS", "owned"]).await, b":0\r\n");
}

/// A request waiting to move to a RESP3 connection goes where its key now belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_to_change_protocol_is_routed_again() {
    let (rig, replies) = judged_while_waiting(
        "",
        SCRATCH,
        None,
        &[&["GET", "k"], &["HELLO", "3"], &["SET", "tmp:r", "1"]],
    )
    .await;
    assert_eq!(replies[2], b"+OK\r\n");
    assert!(!upstream_has(&rig.redis, "tmp:r").await);
}

/// A transaction waiting for its connection is queued again and its EXEC judged again: it runs
/// where its keys now belong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_transaction_is_judged_again() {
    let (rig, replies) = judged_while_waiting(
        "",
        SCRATCH,
        None,
        &[
            &["GET", "k"],
            &["SELECT", "1"],
            &["MULTI"],
            &["SET", "tmp:t", "1"],
            &["EXEC"],
        ],
    )
    .await;
    assert_eq!(replies[4], b"*1\r\n+OK\r\n");
    let mut direct = RawClient::connect(rig.redis.addr()).await;
    assert_eq!(direct.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&["EXISTS", "tmp:t"]).await, b":0\r\n");
    let mut client = RawClient::connect(rig.proxy.addr).await;
    let got = client.run(&[&["SELECT", "1"], &["GET", "tmp:t"]]).await;
    assert_eq!(got[1], b"$1\r\n1\r\n");
}

/// A waiting INFO stays INFO: it is never routed by keys (here the default keyspace is
/// `local_only`, where a keyless data command would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_info_is_not_routed() {
    let body = "default_mode = \"local_only\"\n[[keyspace]]\nname = \"up\"\npatterns = [\"up:\", \"warm\"]\nmode = \"fail_closed\"\n";
    let (_rig, replies) = judged_while_waiting(
        body,
        body,
        None,
        &[&["GET", "up:k"], &["SELECT", "1"], &["INFO", "server"]],
    )
    .await;
    assert!(replies[2].starts_with(b"$"), "{}", show_bytes(&replies[2]));
}

/// EXEC routes every queued command again from scratch: a transaction whose keys all moved
/// upstream runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_where_the_keys_moved() {
    let rig = Rig::start(SCRATCH).await;
    let mut client = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(client.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(client.cmd(&["SET", "tmp:m", "1"]).await, b"+QUEUED\r\n");
    rig.config.write("");
    let mut admin = RawClient::connect(rig.proxy.addr).await;
    assert_eq!(reload(&mut admin).await, b"+OK\r\n");
    assert_eq!(client.cmd(&["EXEC"]).await, b"*1\r\n+OK\r\n");
    assert!(upstream_has(&rig.redis, "tmp:m").await);
}

/// Requests pipelined behind KEYWARDEN RELOAD are read under the configuration it installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_a_reload_in_one_pipeline_follow_it() {
    let rig = Rig::start("").await;
    let mut client = RawClient::connect(rig.proxy.addr).await;
    rig.config.write(SCRATCH);
    let replies = client
        .run(&[&["KEYWARDEN", "RELOAD"], &["SET", "tmp:p", "1"]])
        .await;
    assert_eq!(replies, [&b"+OK\r\n"[..], b"+OK\r\n"]);
    assert!(!upstream_has(&rig.redis, "tmp:p").await);
}
