//! What clients see of the connection commands the proxy answers itself (HELLO, AUTH, SELECT,
//! RESET, CLIENT SETNAME/GETNAME/INFO): a real client library (the `redis` crate, RESP2 and
//! RESP3), byte-for-byte comparisons with a real redis-server, the local store in RESP3, users
//! and permissions in every keyspace mode and health state, and no state leaking from one
//! client to the next.
//!
//! Differential tests send the same bytes to keywarden and to a reference redis-server and
//! compare the replies exactly. The one field that cannot match is HELLO's `id`; it is masked.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keywarden::command::Categories;
use keywarden::config::Settings;
use keywarden::policy::auth::{CommandAccess, KeyAccess, PasswordHash, User, Users};
use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{ErrorKind, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The password of every test user.
const PASSWORD: &str = "pw";

/// A client that keeps each reply as the exact bytes received (see `support::RawClient`).
type Raw = RawClient;

/// The version the installed redis-server reports (`redis-server --version`: `v=7.0.15`).
fn installed_redis_version() -> String {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("redis-server --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or_else(|| panic!("no version in {text:?}"))
        .to_owned()
}

/// keywarden's HELLO reports the version its behaviour follows; compare it with the reference
/// server's only when that is the same version, and otherwise mask it (after checking it).
fn mask_version(reply: &[u8], version: &str) -> Vec<u8> {
    let field = format!("$7\r\nversion\r\n${}\r\n{version}\r\n", version.len());
    let masked = b"$7\r\nversion\r\n<version>\r\n";
    match reply
        .windows(field.len())
        .position(|w| w == field.as_bytes())
    {
        Some(at) => [&reply[..at], masked, &reply[at + field.len()..]].concat(),
        None => reply.to_vec(),
    }
}

/// Runs the same pipeline on a fresh connection to keywarden and to the reference server, and
/// asserts the replies are the same bytes (HELLO ids masked).
async fn assert_same(proxy: SocketAddr, reference: &str, cmds: &[&[&str]]) {
    let mut through_proxy = Raw::connect(proxy).await;
    let mut direct = Raw::connect(reference).await;
    let got = through_proxy.run(cmds).await;
    let want = direct.run(cmds).await;
    let redis_version = installed_redis_version();
    let mut differences = Vec::new();
    for ((cmd, got), want) in cmds.iter().zip(&got).zip(&want) {
        let (mut got, mut want) = (mask_id(got), mask_id(want));
        if redis_version != keywarden::proxy::SERVER_VERSION {
            got = mask_version(&got, keywarden::proxy::SERVER_VERSION);
            want = mask_version(&want, &redis_version);
        }
        if got != want {
            differences.push(format!(
                "{cmd:?}\n  keywarden:    {}\n  redis-server: {}",
                show_bytes(&got),
                show_bytes(&want)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "replies differ in {cmds:?}:\n{}",
        differences.join("\n")
    );
}

/// A redis-server with ACL users, started with arguments the support module's server does not
/// take: the reference for what clients see of authentication and permissions.
struct AclRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AclRedis {
    /// `default` disabled, `admin` with every permission, `reader` with `+@read ~cache:*`
    /// (keywarden's `reader` below), both with [`PASSWORD`].
    fn start() -> AclRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let pass = format!(">{PASSWORD}");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--user", "default", "off"])
            .args(["--user", "admin", "on", &pass, "~*", "&*", "+@all"])
            .args(["--user", "reader", "on", &pass, "~cache:*", "+@read"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = AclRedis {
            port,
            child,
            _dir: dir,
        };
        // Redis listens once it has loaded its ACL; PING then answers NOAUTH.
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ACL redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for AclRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keyspace(name: &str, prefix: &str, mode: Mode) -> Keyspace {
    Keyspace {
        name: name.into(),
        patterns: vec![Pattern::parse(prefix.as_bytes())],
        mode,
    }
}

/// Users as [`AclRedis`] has them: `admin` may do everything, `reader` may run read commands
/// on `cache:` keys.
fn users() -> Users {
    let read = Categories::from_name("read").expect("the read category");
    Users::new(vec![
        User::new(
            "admin".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::All,
            KeyAccess::All,
        ),
        User::new(
            "reader".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::of(read),
            KeyAccess::Only {
                patterns: vec![Pattern::parse(b"cache:")],
                keyspaces: Vec::new(),
            },
        ),
        // Every key, but only reads and scripting (keywarden only: not in AclRedis).
        User::new(
            "scripter".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::of(read | Categories::from_name("scripting").unwrap()),
            KeyAccess::All,
        ),
        // Reads and connection commands, as the example config's sample user (keywarden only).
        User::new(
            "app".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::of(read | Categories::from_name("connection").unwrap()),
            KeyAccess::All,
        ),
        // Every command, but only `t1:` keys (keywarden only: not in AclRedis).
        User::new(
            "tenant".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::All,
            KeyAccess::Only {
                patterns: vec![Pattern::parse(b"t1:")],
                keyspaces: Vec::new(),
            },
        ),
    ])
}

/// A proxy with users and a keyspace in each mode: cache (degraded), tmp (local_only), rl
/// (fail_closed); other keys fail closed.
fn secured_settings(upstream: &RedisServer) -> Settings {
    let mut s = settings(&upstream.addr());
    s.keyspaces = Keyspaces::new(
        vec![
            keyspace("cache", "cache:", Mode::Degraded),
            keyspace("tmp", "tmp:", Mode::LocalOnly),
            keyspace("rl", "rl:", Mode::FailClosed),
        ],
        Mode::FailClosed,
    );
    s.users = users();
    s
}

/// A multiplexed connection of the `redis` crate; the connection handshake (HELLO, AUTH,
/// SELECT, CLIENT SETINFO) is the crate's own.
async fn library(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("the library connected or failed in time")
}

async fn query(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    tokio::time::timeout(WAIT, cmd.query_async::<Value>(con))
        .await
        .expect("a reply in time")
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn data(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// CLIENT INFO's text, whichever way the protocol encodes it.
fn text_of(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Polls until the proxy serves the degraded `cache` keyspace from its local store, after the
/// upstream was killed: until then a read of a cache key gets an upstream error.
async fn wait_until_served_locally(proxy: &Proxy) {
    let mut admin = Raw::connect(proxy.addr).await;
    let pass = ["AUTH", "admin", PASSWORD];
    assert_eq!(admin.cmd(&pass).await, b"+OK\r\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = admin.cmd(&["GET", "cache:probe"]).await;
        if reply == b"$-1\r\n" {
            return;
        }
        assert!(reply.starts_with(b"-"), "{}", show_bytes(&reply));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache keyspace was never served locally: {}",
            show_bytes(&reply)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The redis crate, RESP2 and RESP3
// ---------------------------------------------------------------------------------------------

async fn library_round_trip(protocol: &str) {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let resp3 = protocol == "resp3";
    let url = format!("redis://{}/?protocol={protocol}", proxy.addr);
    let mut con = library(&url).await.expect("connect through the proxy");

    assert_eq!(query(&mut con, &["SET", "lib:k", "v"]).await, Value::Okay);
    assert_eq!(query(&mut con, &["GET", "lib:k"]).await, data("v"));
    assert_eq!(query(&mut con, &["GET", "lib:missing"]).await, Value::Nil);
    assert_eq!(
        query(&mut con, &["HSET", "lib:h", "f1", "v1", "f2", "v2"]).await,
        Value::Int(2)
    );
    let pairs = vec![(data("f1"), data("v1")), (data("f2"), data("v2"))];
    let want = if resp3 {
        Value::Map(pairs)
    } else {
        Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
    };
    assert_eq!(query(&mut con, &["HGETALL", "lib:h"]).await, want);
    assert_eq!(query(&mut con, &["INCR", "lib:n"]).await, Value::Int(1));
    assert_eq!(query(&mut con, &["INCR", "lib:n"]).await, Value::Int(2));

    // A pipeline of 100 commands, replies in order.
    let mut pipe = redis::pipe();
    let mut want = Vec::new();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("lib:p{i}")).arg(i);
        pipe.cmd("GET").arg(format!("lib:p{i}"));
        want.push(Value::Okay);
        want.push(data(&i.to_string()));
    }
    let got: Vec<Value> = tokio::time::timeout(WAIT, pipe.query_async(&mut con))
        .await
        .expect("pipeline in time")
        .expect("pipeline");
    assert_eq!(got, want);

    // The name, and what the library told the proxy while connecting.
    assert_eq!(
        query(&mut con, &["CLIENT", "GETNAME"]).await,
        Value::Nil,
        "no name before SETNAME"
    );
    assert_eq!(
        query(&mut con, &["CLIENT", "SETNAME", "lib-client"]).await,
        Value::Okay
    );
    assert_eq!(
        query(&mut con, &["CLIENT", "GETNAME"]).await,
        data("lib-client")
    );
    let info = text_of(&query(&mut con, &["CLIENT", "INFO"]).await);
    let want_resp = if resp3 { "resp=3" } else { "resp=2" };
    for field in ["name=lib-client", "db=0", "lib-name=redis-rs", want_resp] {
        assert!(
            info.split_whitespace().any(|f| f == field),
            "{field} in {info:?}"
        );
    }

    // A database chosen in the connection info: the key lands in that database upstream.
    let url5 = format!("redis://{}/5?protocol={protocol}", proxy.addr);
    let mut con5 = library(&url5).await.expect("connect with db 5");
    assert_eq!(
        query(&mut con5, &["SET", "lib:db", "five"]).await,
        Value::Okay
    );
    assert_eq!(query(&mut con5, &["GET", "lib:db"]).await, data("five"));
    let info = text_of(&query(&mut con5, &["CLIENT", "INFO"]).await);
    assert!(info.split_whitespace().any(|f| f == "db=5"), "{info:?}");
    assert_eq!(query(&mut con, &["GET", "lib:db"]).await, Value::Nil);
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["GET", "lib:db"]).await, Frame::Null);
    assert_eq!(direct.cmd(&["SELECT", "5"]).await, simple("OK"));
    assert_eq!(direct.cmd(&["GET", "lib:db"]).await, bulk("five"));
    assert_eq!(direct.cmd(&["GET", "lib:k"]).await, Frame::Null);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_resp2_round_trip() {
    library_round_trip("resp2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_resp3_round_trip() {
    library_round_trip("resp3").await;
}

/// Username and password in the connection info (AUTH in RESP2, HELLO 3 AUTH in RESP3): the
/// right password connects as that user, a wrong one fails as it does against Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_authenticates_with_username_and_password() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    for protocol in ["resp2", "resp3"] {
        let url = format!(
            "redis://admin:{PASSWORD}@{}/?protocol={protocol}",
            proxy.addr
        );
        let mut con = library(&url).await.expect("admin connects");
        assert_eq!(query(&mut con, &["SET", "auth:k", "v"]).await, Value::Okay);
        assert_eq!(query(&mut con, &["GET", "auth:k"]).await, data("v"));
        let info = text_of(&query(&mut con, &["CLIENT", "INFO"]).await);
        assert!(
            info.split_whitespace().any(|f| f == "user=admin"),
            "{info:?}"
        );

        let url = format!(
            "redis://reader:{PASSWORD}@{}/?protocol={protocol}",
            proxy.addr
        );
        let mut reader = library(&url).await.expect("reader connects");
        assert_eq!(query(&mut reader, &["GET", "cache:x"]).await, Value::Nil);

        for (user, password) in [("admin", "wrong"), ("nobody", PASSWORD)] {
            let through_proxy = format!(
                "redis://{user}:{password}@{}/?protocol={protocol}",
                proxy.addr
            );
            let direct = format!(
                "redis://{user}:{password}@{}/?protocol={protocol}",
                acl.addr()
            );
            let got = library(&through_proxy).await.expect_err("refused");
            let want = library(&direct).await.expect_err("refused by Redis");
            assert_eq!(
                (got.kind(), got.to_string()),
                (want.kind(), want.to_string()),
                "{protocol} {user}"
            );
            if protocol == "resp2" {
                assert_eq!(got.kind(), ErrorKind::AuthenticationFailed);
            } else {
                assert!(got.to_string().contains("WRONGPASS"), "{got}");
            }
        }
    }
    proxy.shutdown().await;
}

/// A database in the connection info of a user without SELECT's category (`+@read`): Redis
/// refuses the handshake's SELECT, and the library fails to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_db_without_select_permission_fails_as_in_redis() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    for protocol in ["resp2", "resp3"] {
        let url = format!(
            "redis://reader:{PASSWORD}@{}/3?protocol={protocol}",
            proxy.addr
        );
        let direct = format!(
            "redis://reader:{PASSWORD}@{}/3?protocol={protocol}",
            acl.addr()
        );
        let want = library(&direct)
            .await
            .expect_err("Redis refuses the SELECT");
        let got = library(&url).await.err().unwrap_or_else(|| {
            panic!("{protocol}: keywarden accepted SELECT 3 from reader; Redis: {want}")
        });
        assert_eq!(
            (got.kind(), got.to_string()),
            (want.kind(), want.to_string()),
            "{protocol}"
        );
    }
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Connection commands, byte for byte against redis-server
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_replies_match_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let r = reference.addr();
    let sequences: &[&[&[&str]]] = &[
        &[&["HELLO"], &["GET", "missing"]],
        &[&["HELLO", "2"], &["GET", "missing"]],
        &[&["HELLO", "3"], &["GET", "missing"], &["CLIENT", "GETNAME"]],
        &[
            &["hello", "3"],
            &["HELLO"],
            &["HELLO", "2"],
            &["GET", "missing"],
        ],
        &[&["HELLO", "4"], &["GET", "missing"]],
        &[&["HELLO", "1"], &["HELLO", "-3"], &["HELLO", "0"]],
        &[&["HELLO", "abc"], &["HELLO", "3.0"], &["HELLO", ""]],
        &[&["HELLO", "3", "SETNAME", "x"], &["CLIENT", "GETNAME"]],
        &[
            &["HELLO", "3", "SETNAME", "bad name"],
            &["CLIENT", "GETNAME"],
            &["GET", "missing"],
        ],
        &[&["HELLO", "3", "FOO"], &["GET", "missing"]],
        &[&["HELLO", "3", "AUTH", "a"], &["HELLO", "3", "SETNAME"]],
        &[
            &["HELLO", "2", "setname", "n1", "SETNAME", "n2"],
            &["CLIENT", "GETNAME"],
        ],
        // No password configured: `default` takes any password, as in Redis.
        &[&["HELLO", "3", "AUTH", "default", "x"], &["GET", "missing"]],
        &[&["HELLO", "3", "AUTH", "nobody", "x"], &["GET", "missing"]],
    ];
    for cmds in sequences {
        assert_same(proxy.addr, &r, cmds).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_name_replies_match_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let r = reference.addr();
    let sequences: &[&[&[&str]]] = &[
        &[
            &["CLIENT", "GETNAME"],
            &["CLIENT", "SETNAME", "abc"],
            &["CLIENT", "GETNAME"],
            &["client", "setname", "x~!"],
            &["CLIENT", "GETNAME"],
            &["CLIENT", "SETNAME", ""],
            &["CLIENT", "GETNAME"],
        ],
        &[
            &["CLIENT", "SETNAME", "keep"],
            &["CLIENT", "SETNAME", "a b"],
            &["CLIENT", "SETNAME", "a\nb"],
            &["CLIENT", "SETNAME", "caf\u{e9}"],
            &["CLIENT", "GETNAME"],
        ],
        &[
            &["CLIENT", "SETNAME"],
            &["CLIENT", "SETNAME", "a", "b"],
            &["CLIENT", "GETNAME", "x"],
        ],
        &[
            &["HELLO", "3"],
            &["CLIENT", "GETNAME"],
            &["CLIENT", "SETNAME", "r3"],
            &["CLIENT", "GETNAME"],
        ],
    ];
    for cmds in sequences {
        assert_same(proxy.addr, &r, cmds).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_replies_match_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let r = reference.addr();
    let sequences: &[&[&[&str]]] = &[
        &[
            &["SELECT", "1"],
            &["SET", "sel:k", "one"],
            &["SELECT", "0"],
            &["GET", "sel:k"],
            &["SELECT", "1"],
            &["GET", "sel:k"],
            &["SELECT", "1"],
        ],
        &[
            &["SELECT", "15"],
            &["SELECT", "16"],
            &["SELECT", "-1"],
            &["SELECT", "abc"],
            &["SELECT", "01"],
            &["SELECT", " 1"],
            &["SELECT", "1.0"],
            &["SELECT", ""],
            &["SELECT"],
            &["SELECT", "1", "2"],
            &["GET", "sel:k"],
        ],
        &[&["select", "2"], &["HELLO", "3"], &["GET", "sel:k"]],
    ];
    for cmds in sequences {
        assert_same(proxy.addr, &r, cmds).await;
    }
    proxy.shutdown().await;
}

/// Redis parses SELECT's index as a long long, then checks the int range with its own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_outside_int_range_matches_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let cmds: &[&[&str]] = &[
        &["SELECT", "2147483648"],
        &["SELECT", "-2147483649"],
        &["SELECT", "9223372036854775807"],
        &["SELECT", "9223372036854775808"],
    ];
    assert_same(proxy.addr, &reference.addr(), cmds).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_replies_match_redis_and_restore_a_fresh_connection() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let r = reference.addr();
    let sequences: &[&[&[&str]]] = &[
        &[
            &["HELLO", "3"],
            &["SELECT", "3"],
            &["CLIENT", "SETNAME", "n"],
            &["SET", "reset:k", "in-db-3"],
            &["RESET"],
            &["CLIENT", "GETNAME"],
            &["GET", "reset:k"],
            &["GET", "missing"],
            &["HGETALL", "missing"],
            &["SELECT", "3"],
            &["GET", "reset:k"],
        ],
        &[&["RESET"], &["reset"], &["GET", "missing"]],
        &[
            &["MULTI"],
            &["SET", "reset:m", "queued"],
            &["RESET"],
            &["GET", "reset:m"],
            &["EXEC"],
        ],
    ];
    for cmds in sequences {
        assert_same(proxy.addr, &r, cmds).await;
    }
    proxy.shutdown().await;
}

/// RESET takes no arguments (arity 1): Redis refuses `RESET extra` and keeps the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_with_arguments_matches_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let cmds: &[&[&str]] = &[
        &["CLIENT", "SETNAME", "kept"],
        &["RESET", "extra"],
        &["CLIENT", "GETNAME"],
    ];
    assert_same(proxy.addr, &reference.addr(), cmds).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_users_matches_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = Proxy::for_upstream(&upstream).await;
    let cmds: &[&[&str]] = &[
        &["AUTH", "x"],
        &["AUTH", "a", "b"],
        &["AUTH", "default", "anything"],
        &["AUTH"],
        &["AUTH", "a", "b", "c"],
        &["GET", "missing"],
    ];
    assert_same(proxy.addr, &reference.addr(), cmds).await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. The local store in RESP3
// ---------------------------------------------------------------------------------------------

/// Replies of the local store (a `local_only` keyspace), in RESP3 and back in RESP2, are the
/// bytes Redis sends for the same commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_resp3_replies_match_redis() {
    let upstream = RedisServer::start();
    let reference = RedisServer::start();
    let mut s = settings(&upstream.addr());
    s.keyspaces = Keyspaces::new(
        vec![keyspace("tmp", "tmp:", Mode::LocalOnly)],
        Mode::FailClosed,
    );
    let proxy = Proxy::start(s).await;
    let cmds: &[&[&str]] = &[
        &["HELLO", "3"],
        &["GET", "tmp:missing"],
        &["SET", "tmp:a", "1"],
        &["SET", "tmp:b", "2"],
        &["MGET", "tmp:a", "tmp:missing", "tmp:b", "tmp:none"],
        &["SET", "tmp:a", "new", "GET"],
        &["SET", "tmp:fresh", "v", "GET"],
        &["SET", "tmp:a", "x", "NX", "GET"],
        &["HSET", "tmp:h", "f1", "v1", "f2", "v2"],
        &["HGETALL", "tmp:h"],
        &["HGETALL", "tmp:missing"],
        &["HGET", "tmp:h", "nope"],
        &["HMGET", "tmp:h", "f1", "nope", "f2"],
        &["HKEYS", "tmp:missing"],
        &["HINCRBYFLOAT", "tmp:h", "fl", "1.5"],
        &["INCRBYFLOAT", "tmp:f", "2.5"],
        &["INCR", "tmp:n"],
        &["TTL", "tmp:missing"],
        &["EXISTS", "tmp:a", "tmp:missing"],
        &["GETDEL", "tmp:missing"],
        &["GETEX", "tmp:missing"],
        &["GET", "tmp:h"],
        &["HGETALL", "tmp:a"],
        &["HELLO", "2"],
        &["GET", "tmp:missing"],
        &["HGETALL", "tmp:h"],
        &["MGET", "tmp:a", "tmp:missing"],
    ];
    assert_same(proxy.addr, &reference.addr(), cmds).await;
    // Nothing of it reached the upstream.
    let mut direct = Client::connect(upstream.addr()).await;
    assert_eq!(direct.cmd(&["DBSIZE"]).await, int(0));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Users and permissions, in every mode and health state
// ---------------------------------------------------------------------------------------------

/// Denials and successes that are the same bytes as Redis with the same users.
const READER_SESSION: &[&[&str]] = &[
    &["GET", "cache:x"],
    &["SET", "cache:x", "1"],
    &["GET", "tmp:x"],
    &["SET", "tmp:x", "1"],
    &["MGET", "cache:a", "tmp:x"],
    &["MGET", "cache:a", "cache:b"],
    &["HGETALL", "cache:h"],
    &["INCR", "cache:x"],
    &["GET", "rl:x"],
    &["GET", "other"],
];

const UNAUTHENTICATED_SESSION: &[&[&str]] = &[
    &["GET", "cache:x"],
    &["SET", "cache:x", "1"],
    &["GET", "tmp:x"],
    &["SET", "tmp:x", "1"],
    &["INCR", "rl:x"],
    &["PING"],
    &["HELLO"],
    &["HELLO", "3"],
    &["AUTH", "wrong"],
    &["AUTH", "reader", "wrong"],
    &["AUTH", "nobody", PASSWORD],
    &["HELLO", "3", "AUTH", "reader", "wrong"],
    &["GET", "cache:x"],
];

/// SORT's `BY <pattern>` and `GET` read keys that no argument names: refused to a user without
/// every key exactly as Redis refuses them (here `reader`, limited to `cache:*`, who could
/// otherwise read `secret:*` through `SORT_RO cache:ids BY nosort GET secret:*`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_patterns_are_refused_as_redis_refuses_them() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let session: &[&[&str]] = &[
        &["AUTH", "reader", PASSWORD],
        &["SORT_RO", "cache:ids"],
        &["SORT_RO", "cache:ids", "BY", "nosort"],
        &["SORT_RO", "cache:ids", "BY", "nosort", "GET", "secret:*"],
        &["SORT_RO", "cache:ids", "GET", "#"],
        &["SORT_RO", "cache:ids", "BY", "w_*"],
        &[
            "SORT_RO",
            "cache:ids",
            "ALPHA",
            "DESC",
            "LIMIT",
            "0",
            "1",
            "BY",
            "w_*",
        ],
        &["SORT_RO", "cache:ids", "LIMIT", "x", "1", "GET", "y"],
        &["SORT_RO", "cache:ids", "STORE", "cache:d", "GET", "y"],
        &["SORT_RO", "cache:ids", "GET"],
        &["SORT_RO", "secret:ids", "GET", "y"],
        &["SORT", "cache:ids", "GET", "y"],
        &["AUTH", "admin", PASSWORD],
        &["SORT_RO", "cache:ids", "BY", "nosort", "GET", "secret:*"],
        &[
            "SORT",
            "cache:ids",
            "BY",
            "w_*",
            "GET",
            "#",
            "STORE",
            "cache:out",
        ],
    ];
    assert_same(proxy.addr, &acl.addr(), session).await;
    proxy.shutdown().await;
}

/// What the proxy cannot check is refused unless the user could do anything anyway: scripts
/// and functions run upstream as the proxy's own user (any command, any key), so they need
/// every command and every key; a command the proxy does not know (newer than Redis 7.0, or a
/// module's) has keys it cannot find, so a user with key limits may not run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_and_unknown_commands_need_a_user_the_proxy_can_check_completely() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let noperm = |name: &str| {
        format!("-NOPERM this user has no permissions to run the '{name}' command\r\n").into_bytes()
    };
    let mut scripter = RawClient::connect(proxy.addr).await;
    assert_eq!(
        scripter.cmd(&["AUTH", "scripter", PASSWORD]).await,
        b"+OK\r\n"
    );
    let del = "return redis.call('DEL', 'rl:x')";
    let lib = "#!lua name=lib\nredis.register_function('f', function() return 1 end)";
    assert_eq!(scripter.cmd(&["EVAL", del, "0"]).await, noperm("eval"));
    assert_eq!(
        scripter.cmd(&["EVAL_RO", "return 1", "0"]).await,
        noperm("eval_ro")
    );
    assert_eq!(
        scripter.cmd(&["SCRIPT", "LOAD", del]).await,
        noperm("script|load")
    );
    assert_eq!(
        scripter.cmd(&["FUNCTION", "LOAD", lib]).await,
        noperm("function|load")
    );
    assert_eq!(
        scripter.cmd(&["FUNCTION", "FLUSH"]).await,
        noperm("function|flush")
    );
    assert_eq!(scripter.cmd(&["FCALL", "f", "0"]).await, noperm("fcall"));
    assert_eq!(
        scripter.cmd(&["SCRIPT", "EXISTS", "abc"]).await,
        b"*1\r\n:0\r\n"
    );
    let mut tenant = RawClient::connect(proxy.addr).await;
    assert_eq!(tenant.cmd(&["AUTH", "tenant", PASSWORD]).await, b"+OK\r\n");
    assert_eq!(
        tenant.cmd(&["HGETDEL", "t1:h", "FIELDS", "1", "f"]).await,
        noperm("hgetdel")
    );
    assert_eq!(tenant.cmd(&["EVAL", "return 1", "0"]).await, noperm("eval"));
    assert_eq!(tenant.cmd(&["GET", "t1:x"]).await, b"$-1\r\n");
    // A user with every permission runs them; an unknown command goes to Redis, which answers.
    let mut admin = RawClient::connect(proxy.addr).await;
    assert_eq!(admin.cmd(&["AUTH", "admin", PASSWORD]).await, b"+OK\r\n");
    assert_eq!(admin.cmd(&["EVAL", "return 1", "0"]).await, b":1\r\n");
    let unknown = admin.cmd(&["HGETDEL", "t1:h", "FIELDS", "1", "f"]).await;
    assert!(
        unknown.starts_with(b"-ERR unknown command 'HGETDEL'"),
        "{}",
        show_bytes(&unknown)
    );
    proxy.shutdown().await;
}

/// What acts on the upstream server as a whole or on other clients (what Redis flags `admin`:
/// CLIENT KILL, CLIENT LIST, CLIENT PAUSE, CONFIG, ...) needs every command or the admin
/// category, though Redis would let `+@connection` run CLIENT KILL; FLUSHALL and FLUSHDB need
/// every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_commands_need_an_administrator() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let noperm = |name: &str| {
        format!("-NOPERM this user has no permissions to run the '{name}' command\r\n").into_bytes()
    };
    let mut app = RawClient::connect(proxy.addr).await;
    assert_eq!(app.cmd(&["AUTH", "app", PASSWORD]).await, b"+OK\r\n");
    assert_eq!(app.cmd(&["CLIENT", "LIST"]).await, noperm("client|list"));
    assert_eq!(
        app.cmd(&["CLIENT", "KILL", "ID", "1"]).await,
        noperm("client|kill")
    );
    assert_eq!(
        app.cmd(&["CLIENT", "PAUSE", "10000", "ALL"]).await,
        noperm("client|pause")
    );
    assert_eq!(app.cmd(&["CLIENT", "SETNAME", "web"]).await, b"+OK\r\n");
    assert_eq!(
        app.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await,
        noperm("config|set")
    );
    let mut tenant = RawClient::connect(proxy.addr).await;
    assert_eq!(tenant.cmd(&["AUTH", "tenant", PASSWORD]).await, b"+OK\r\n");
    assert_eq!(tenant.cmd(&["FLUSHALL"]).await, noperm("flushall"));
    assert_eq!(tenant.cmd(&["FLUSHDB"]).await, noperm("flushdb"));
    let mut admin = RawClient::connect(proxy.addr).await;
    assert_eq!(admin.cmd(&["AUTH", "admin", PASSWORD]).await, b"+OK\r\n");
    assert!(admin.cmd(&["CLIENT", "LIST"]).await.starts_with(b"$"));
    assert_eq!(
        admin.cmd(&["CONFIG", "GET", "maxmemory"]).await,
        b"*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_hold_in_every_mode_and_while_the_upstream_is_down() {
    let mut redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let a = acl.addr();

    // Upstream available.
    assert_same(proxy.addr, &a, UNAUTHENTICATED_SESSION).await;
    let reader: Vec<&[&str]> = [&["AUTH", "reader", PASSWORD][..]]
        .into_iter()
        .chain(READER_SESSION.iter().copied())
        .collect();
    assert_same(proxy.addr, &a, &reader).await;
    let hello_reader: Vec<&[&str]> = [&["HELLO", "3", "AUTH", "reader", PASSWORD][..]]
        .into_iter()
        .chain(READER_SESSION.iter().copied())
        .chain([&["RESET"][..], &["GET", "cache:x"], &["GET", "tmp:x"]])
        .collect();
    assert_same(proxy.addr, &a, &hello_reader).await;

    // The upstream dies; the cache keyspace is served from the local store.
    redis.kill();
    wait_until_served_locally(&proxy).await;
    assert_same(proxy.addr, &a, UNAUTHENTICATED_SESSION).await;
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(
        c.run(&[&["AUTH", "reader", PASSWORD], &["GET", "cache:x"]])
            .await,
        [&b"+OK\r\n"[..], b"$-1\r\n"]
    );
    assert_eq!(
        c.run(&[
            &["SET", "cache:x", "1"],
            &["GET", "tmp:x"],
            &["SET", "tmp:x", "1"],
            &["INCR", "cache:x"],
        ])
        .await,
        [
            &b"-NOPERM this user has no permissions to run the 'set' command\r\n"[..],
            b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
            // The command is checked before the keys, as in Redis.
            b"-NOPERM this user has no permissions to run the 'set' command\r\n",
            b"-NOPERM this user has no permissions to run the 'incr' command\r\n",
        ]
    );
    // HELLO 3 AUTH while down, then RESET: unauthenticated again.
    let mut c = Raw::connect(proxy.addr).await;
    let hello = c.cmd(&["HELLO", "3", "AUTH", "reader", PASSWORD]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show_bytes(&hello));
    assert_eq!(
        c.run(&[
            &["GET", "cache:x"],
            &["GET", "tmp:x"],
            &["RESET"],
            &["GET", "cache:x"],
            &["GET", "tmp:x"],
        ])
        .await,
        [
            &b"_\r\n"[..],
            b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
            b"+RESET\r\n",
            b"-NOAUTH Authentication required.\r\n",
            b"-NOAUTH Authentication required.\r\n",
        ]
    );

    // admin reads and writes the local store; fail-closed keys are refused while down.
    let mut admin = Raw::connect(proxy.addr).await;
    let got = admin
        .run(&[
            &["AUTH", "admin", PASSWORD],
            &["SET", "cache:x", "local"],
            &["GET", "cache:x"],
            &["SET", "tmp:x", "scratch"],
            &["GET", "tmp:x"],
            &["INCR", "rl:x"],
        ])
        .await;
    assert_eq!(
        got[..5],
        [
            &b"+OK\r\n"[..],
            b"+OK\r\n",
            b"$5\r\nlocal\r\n",
            b"+OK\r\n",
            b"$7\r\nscratch\r\n",
        ]
    );
    assert!(
        got[5].starts_with(b"-FAILCLOSED keyspace 'rl'"),
        "{}",
        show_bytes(&got[5])
    );
    // Connection state still works while down: databases and RESP3 in the local store.
    let got = admin
        .run(&[
            &["SELECT", "2"],
            &["GET", "tmp:x"],
            &["SET", "tmp:x", "two"],
            &["HELLO", "3"],
            &["GET", "tmp:missing"],
            &["SELECT", "0"],
            &["GET", "tmp:x"],
            &["RESET"],
            &["GET", "tmp:x"],
        ])
        .await;
    assert!(got[3].starts_with(b"%7\r\n"), "{}", show_bytes(&got[3]));
    assert_eq!(
        [&got[..3], &got[4..]].concat(),
        [
            &b"+OK\r\n"[..],
            b"$-1\r\n",
            b"+OK\r\n",
            b"_\r\n",
            b"+OK\r\n",
            b"$7\r\nscratch\r\n",
            b"+RESET\r\n",
            b"-NOAUTH Authentication required.\r\n",
        ]
    );
    // The reader may read what admin wrote locally, and still nothing else.
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(
        c.run(&[
            &["AUTH", "reader", PASSWORD],
            &["GET", "cache:x"],
            &["GET", "tmp:x"],
        ])
        .await,
        [
            &b"+OK\r\n"[..],
            b"$5\r\nlocal\r\n",
            b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
        ]
    );
    proxy.shutdown().await;
}

/// HELLO applies its options in order, as Redis 7.0 does: an AUTH takes effect even when a
/// later option fails, a SETNAME before a failing option stays, and the protocol switches
/// only when every option succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_options_apply_in_order_as_in_redis() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let reference = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let open = Proxy::for_upstream(&redis).await;
    let with_users: &[&[&[&str]]] = &[
        &[
            &["HELLO", "3", "AUTH", "reader", PASSWORD, "FOO"],
            &["GET", "cache:x"],
        ],
        &[
            &["HELLO", "3", "SETNAME", "early", "AUTH", "admin", "wrong"],
            &["AUTH", "admin", PASSWORD],
            &["CLIENT", "GETNAME"],
        ],
        &[
            &["HELLO", "3", "SETNAME", "early"],
            &["AUTH", "admin", PASSWORD],
            &["CLIENT", "GETNAME"],
            &["GET", "missing"],
        ],
        &[
            &[
                "HELLO", "3", "AUTH", "admin", PASSWORD, "SETNAME", "bad name",
            ],
            &["CLIENT", "GETNAME"],
            &["GET", "missing"],
        ],
        &[
            &[
                "HELLO", "3", "AUTH", "admin", PASSWORD, "AUTH", "reader", "wrong",
            ],
            &["GET", "missing"],
        ],
        &[
            &["AUTH", "admin", PASSWORD],
            &["HELLO", "3", "AUTH", "reader", "wrong"],
            &["AUTH", "reader", "wrong"],
            &["SET", "cache:x", "1"],
            &["CLIENT", "GETNAME"],
        ],
    ];
    for cmds in with_users {
        assert_same(proxy.addr, &acl.addr(), cmds).await;
    }
    let without_users: &[&[&[&str]]] = &[
        &[
            &["HELLO", "3", "SETNAME", "early", "FOO"],
            &["CLIENT", "GETNAME"],
        ],
        &[&["HELLO", "4", "SETNAME", "x"], &["CLIENT", "GETNAME"]],
    ];
    for cmds in without_users {
        assert_same(open.addr, &reference.addr(), cmds).await;
    }
    open.shutdown().await;
    proxy.shutdown().await;
}

/// Redis refuses every command but AUTH, HELLO, QUIT and RESET before authentication, the
/// connection commands included.
/// (CLIENT SETINFO is left out: keywarden answers it as Redis 7.2 does, on purpose; Redis
/// 7.0.15 does not know it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_need_authentication_as_in_redis() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let cmds: &[&[&str]] = &[
        &["SELECT", "1"],
        &["CLIENT", "SETNAME", "x"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "ID"],
        &["CLIENT", "INFO"],
        &["AUTH", "admin", PASSWORD],
        &["CLIENT", "GETNAME"],
    ];
    assert_same(proxy.addr, &acl.addr(), cmds).await;
    proxy.shutdown().await;
}

/// Before AUTH, Redis 7.0 takes at most 10 arguments and bulks of at most 16 KiB: more is a
/// protocol error that closes the connection, so a client that never logs in cannot make the
/// server hold a large request. keywarden with users does the same, byte for byte; after AUTH,
/// pipelined in the same write as a large command, the ordinary limits apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_limits_match_redis() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let big = "x".repeat(16 * 1024 + 1);
    let eleven = ["EXISTS", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let ten = &eleven[..10];
    let set_big = ["SET", "cache:big", big.as_str()];
    for cmd in [&eleven[..], &set_big[..]] {
        let mut reference = RawClient::connect(acl.addr()).await;
        reference.send(&[cmd]).await;
        let want = reference.bytes_until_closed().await;
        let mut through = RawClient::connect(proxy.addr).await;
        through.send(&[cmd]).await;
        assert_eq!(
            show_bytes(&through.bytes_until_closed().await),
            show_bytes(&want),
            "{}",
            cmd[0]
        );
    }
    // At the limits, unauthenticated: NOAUTH, and the connection stays open.
    let mut c = RawClient::connect(proxy.addr).await;
    let small = "x".repeat(16 * 1024);
    let set_small = ["SET", "cache:small", small.as_str()];
    let noauth = c.run(&[ten, &set_small]).await;
    assert!(
        noauth.iter().all(|r| r.starts_with(b"-NOAUTH")),
        "{noauth:?}"
    );
    // AUTH lifts them, for the very next command of the same write.
    let replies = c
        .run(&[&["AUTH", "admin", PASSWORD], &set_big, &eleven])
        .await;
    assert_eq!(replies[0], b"+OK\r\n");
    assert_eq!(replies[1], b"+OK\r\n");
    assert_eq!(replies[2], b":0\r\n");
    proxy.shutdown().await;
}

/// A user's categories govern the connection commands too: `+@read` alone may not SELECT
/// (@keyspace) or use CLIENT SETNAME/GETNAME (@connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_need_their_category_as_in_redis() {
    let redis = RedisServer::start();
    let acl = AclRedis::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let cmds: &[&[&str]] = &[
        &["AUTH", "reader", PASSWORD],
        &["SELECT", "1"],
        &["CLIENT", "SETNAME", "x"],
        &["CLIENT", "GETNAME"],
        &["GET", "cache:x"],
    ];
    assert_same(proxy.addr, &acl.addr(), cmds).await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. No state leaks from one client to the next
// ---------------------------------------------------------------------------------------------

/// 1,000 clients each change their connection state (database, name, protocol), write a key
/// and disconnect, some before reading their replies; after each, a fresh client sees a fresh
/// connection (database 0, RESP2, no name), and every key is in its writer's database only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_state_leaks_across_a_thousand_clients() {
    const CYCLES: usize = 1000;
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut rng = StdRng::seed_from_u64(0x6b77);
    // The database each key was written in, and whether its writer waited for the reply.
    let mut written: Vec<(u32, bool)> = Vec::with_capacity(CYCLES);
    let mut fresh = Raw::connect(proxy.addr).await;
    for i in 0..CYCLES {
        let db: u32 = if rng.gen_bool(0.25) {
            0
        } else {
            rng.gen_range(1..16)
        };
        let resp3 = rng.gen_bool(0.5);
        let wait = i % 7 != 0;
        let db_text = db.to_string();
        let name = format!("leaky-{i}");
        let key = format!("leak:{i}");
        let mut cmds: Vec<&[&str]> = Vec::new();
        let select = ["SELECT", db_text.as_str()];
        let setname = ["CLIENT", "SETNAME", name.as_str()];
        let set = ["SET", key.as_str(), db_text.as_str()];
        cmds.push(&select);
        if resp3 {
            cmds.push(&["HELLO", "3"]);
        }
        cmds.push(&setname);
        cmds.push(&set);
        let mut dirty = Raw::connect(proxy.addr).await;
        if wait {
            let replies = dirty.run(&cmds).await;
            assert_eq!(replies[0], b"+OK\r\n", "cycle {i}");
            assert_eq!(replies.last().unwrap(), b"+OK\r\n", "cycle {i}");
        } else {
            dirty.send(&cmds).await;
        }
        written.push((db, wait));
        drop(dirty);

        // A new client every cycle, and one long-lived client, both see a fresh state.
        let mut new = Raw::connect(proxy.addr).await;
        for c in [&mut new, &mut fresh] {
            let replies = c
                .run(&[
                    &["CLIENT", "GETNAME"],
                    &["GET", "missing"],
                    &["CLIENT", "INFO"],
                ])
                .await;
            assert_eq!(replies[0], b"$-1\r\n", "cycle {i}: name");
            assert_eq!(replies[1], b"$-1\r\n", "cycle {i}: RESP2");
            let info = String::from_utf8_lossy(&replies[2]).into_owned();
            for field in ["name=", "db=0", "resp=2"] {
                assert!(
                    info.split_whitespace().any(|f| f == field),
                    "cycle {i}: {field} in {info:?}"
                );
            }
        }
        if db == 0 && wait {
            assert_eq!(new.cmd(&["GET", &key]).await, b"$1\r\n0\r\n", "cycle {i}");
        } else if db != 0 {
            let got = new.cmd(&["GET", &key]).await;
            assert_eq!(got, b"$-1\r\n", "cycle {i}: db {db} key seen in db 0");
        }
    }

    // Upstream: each key is in its writer's database or (writer gone first) nowhere.
    let mut direct = Client::connect(redis.addr()).await;
    let mut found = vec![None; CYCLES];
    for db in 0..16u32 {
        assert_eq!(direct.cmd(&["SELECT", &db.to_string()]).await, simple("OK"));
        let Frame::Array(keys) = direct.cmd(&["KEYS", "leak:*"]).await else {
            panic!("KEYS reply");
        };
        for k in keys {
            let Frame::BulkString(k) = k else { panic!() };
            let i: usize = std::str::from_utf8(&k[5..]).unwrap().parse().unwrap();
            assert_eq!(found[i], None, "leak:{i} in two databases");
            found[i] = Some(db);
        }
    }
    for (i, (db, waited)) in written.iter().enumerate() {
        match found[i] {
            Some(f) => assert_eq!(f, *db, "leak:{i} written in db {db}, found in {f}"),
            None => assert!(!waited, "leak:{i} (db {db}) is missing"),
        }
    }
    proxy.shutdown().await;
}

/// A RESP3 client may send any command while subscribed. AUTH, HELLO with AUTH and SELECT are
/// still answered by keywarden, as at any other time: they never reach the upstream (which
/// would see a keywarden password) and they change the client's keywarden user and database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_resp3_client_authenticates_with_keywarden() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let mut c = RawClient::connect(proxy.addr).await;
    let hello = c.cmd(&["HELLO", "3", "AUTH", "admin", PASSWORD]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show_bytes(&hello));
    assert_eq!(
        show_bytes(&c.cmd(&["SUBSCRIBE", "news"]).await),
        show_bytes(b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
    );
    assert_eq!(
        show_bytes(&c.cmd(&["AUTH", "reader", PASSWORD]).await),
        show_bytes(b"+OK\r\n")
    );
    let hello = c.cmd(&["HELLO", "3", "AUTH", "admin", PASSWORD]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show_bytes(&hello));
    assert_eq!(
        show_bytes(&c.cmd(&["AUTH", "admin", "wrong"]).await),
        show_bytes(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    );
    // Redis saw none of it: its log of failed authentications is empty.
    let mut direct = RawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["ACL", "LOG"]).await, b"*0\r\n");
    proxy.shutdown().await;
}

/// A RESP2 subscriber's AUTH gets Redis's context error, as from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_resp2_client_gets_redis_context_error_for_auth() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let mut c = RawClient::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["AUTH", "admin", PASSWORD]).await, b"+OK\r\n");
    c.cmd(&["SUBSCRIBE", "news"]).await;
    let reply = c.cmd(&["AUTH", "reader", PASSWORD]).await;
    assert!(
        reply.starts_with(b"-ERR Can't execute 'auth'"),
        "{}",
        show_bytes(&reply)
    );
    proxy.shutdown().await;
}

/// Failed AUTHs from one address are answered at full speed five times, then every AUTH reply
/// to that address waits twice as long as the one before (100 ms, 200 ms, ...), on any
/// connection from it, successes too (silence must not tell a failure), and a success does not
/// reset the count. Other addresses are not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_auth_from_one_address_is_slowed() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(secured_settings(&redis)).await;
    let wrong: &[&str] = &["AUTH", "admin", "wrong"];
    let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    let mut c = RawClient::connect(proxy.addr).await;
    let start = Instant::now();
    let replies = c.run(&[wrong, wrong, wrong, wrong, wrong]).await;
    assert!(replies.iter().all(|r| r == wrongpass));
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "the first five at full speed"
    );
    let start = Instant::now();
    let replies = c.run(&[wrong, wrong, wrong]).await;
    assert!(replies.iter().all(|r| r == wrongpass));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "100 + 200 + 400 ms, took {took:?}"
    );
    // Another connection from the same address waits too.
    let mut again = RawClient::connect(proxy.addr).await;
    let start = Instant::now();
    assert_eq!(again.cmd(wrong).await, wrongpass);
    assert!(start.elapsed() >= Duration::from_millis(800));
    // Another address is not slowed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    other.write_all(b"AUTH admin wrong\r\n").await.unwrap();
    let mut got = vec![0u8; wrongpass.len()];
    other.read_exact(&mut got).await.unwrap();
    assert_eq!(got, wrongpass);
    assert!(start.elapsed() < Duration::from_millis(1000));
    // A success waits too, and forgets nothing: one valid account must not reset the count
    // for guessing another's password.
    let start = Instant::now();
    assert_eq!(again.cmd(&["AUTH", "admin", PASSWORD]).await, b"+OK\r\n");
    assert!(start.elapsed() >= Duration::from_millis(1600));
    let start = Instant::now();
    assert_eq!(again.cmd(wrong).await, wrongpass);
    assert!(start.elapsed() >= Duration::from_millis(1600));
    proxy.shutdown().await;
}
