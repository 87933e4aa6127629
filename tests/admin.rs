//! The admin listener through real sockets: `/metrics` scraped after scripted scenarios driven
//! through the proxy against a real upstream that the tests kill and restart, with exact
//! values; `/status`, `/healthz`, `/readyz` (also while draining), 404 and 405.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use keywarden::config::{Overrides, Settings};
use keywarden::local::store::entry_bytes;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An HTTP response as the tests look at it.
#[derive(Debug)]
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection (`Connection: close`, so the response ends at EOF);
/// `None` if nothing listens there.
async fn try_http(addr: SocketAddr, method: &str, path: &str) -> Option<Http> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: keywarden\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("admin response within the wait")
        .ok()?;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    Some(Http {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> Http {
    try_http(addr, method, path)
        .await
        .unwrap_or_else(|| panic!("admin listener at {addr} answers {method} {path}"))
}

async fn get(addr: SocketAddr, path: &str) -> Http {
    http(addr, "GET", path).await
}

/// The value of one series (`name` or `name{labels}`, as rendered) in a `/metrics` body.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
        .parse()
        .unwrap()
}

async fn metrics(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    r.body
}

async fn status(admin: SocketAddr) -> Value {
    let r = get(admin, "/status").await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/json"))
    );
    serde_json::from_str(&r.body).unwrap()
}

/// Scrapes until `done` holds for the body; returns that body.
async fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = metrics(admin).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until the admin listener answers `/readyz` with 200.
async fn until_ready(admin: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = try_http(admin, "GET", "/readyz").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "admin listener never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A proxy in front of `redis` with one keyspace of each mode and the admin listener on a free
/// port; returns it with the admin address, once that answers.
async fn proxy_with_admin(redis: &RedisServer, shutdown_timeout: &str) -> (Proxy, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
        instance_id = "edge-test"
        shutdown_timeout = "{shutdown_timeout}"
        [upstream]
        address = "{upstream}"
        connect_timeout = "300ms"
        command_timeout = "500ms"
        [local_store]
        max_bytes = "1MiB"
        [admin]
        listen = "{admin}"
        [[keyspace]]
        name = "rate-limits"
        patterns = ["rl:"]
        mode = "fail_closed"
        [[keyspace]]
        name = "page-cache"
        patterns = ["cache:*"]
        mode = "degraded"
        [[keyspace]]
        name = "scratch"
        patterns = ["tmp:"]
        mode = "local_only"
        "#,
        upstream = redis.addr(),
    );
    let settings = Settings::from_toml_str(&text, "admin test", &Overrides::default()).unwrap();
    let proxy = Proxy::start(settings).await;
    until_ready(admin).await;
    (proxy, admin)
}

fn health(upstream: &str, state: &str) -> String {
    format!(r#"keywarden_upstream_health{{upstream="{upstream}",state="{state}"}}"#)
}

fn transitions(upstream: &str, event: &str) -> String {
    format!(
        r#"keywarden_upstream_health_transitions_total{{upstream="{upstream}",event="{event}"}}"#
    )
}

#[tokio::test]
async fn metrics_and_status_follow_an_outage_exactly() {
    let mut redis = RedisServer::start();
    let up = redis.addr();
    let (proxy, admin) = proxy_with_admin(&redis, "2s").await;
    let mut c = proxy.client().await;

    // Healthy: three local_only keys.
    for (k, v) in [("tmp:a", "1"), ("tmp:b", "22"), ("tmp:c", "333")] {
        assert_eq!(c.cmd(&["SET", k, v]).await, simple("OK"));
    }
    let three = (entry_bytes(5, 1) + entry_bytes(5, 2) + entry_bytes(5, 3)) as f64;
    let m = metrics(admin).await;
    assert_eq!(value(&m, "keywarden_local_store_keys"), 3.0);
    assert_eq!(value(&m, "keywarden_local_store_used_bytes"), three);
    assert_eq!(value(&m, "keywarden_local_store_max_bytes"), 1048576.0);
    assert_eq!(value(&m, "keywarden_local_store_evictions_total"), 0.0);
    assert_eq!(value(&m, "keywarden_local_store_expirations_total"), 0.0);
    assert_eq!(value(&m, "keywarden_client_connections"), 1.0);
    assert_eq!(value(&m, &health(&up, "healthy")), 1.0);
    assert_eq!(value(&m, &health(&up, "unavailable")), 0.0);
    assert_eq!(value(&m, "keywarden_fail_closed_refusals_total"), 0.0);
    for event in [
        "BACKEND_UNAVAILABLE_AT_STARTUP",
        "BACKEND_DEGRADED",
        "BACKEND_RECOVERED",
    ] {
        assert_eq!(value(&m, &transitions(&up, event)), 0.0, "{event}");
    }

    let s = status(admin).await;
    assert_eq!(s["instance"], "edge-test");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["ready"], true);
    assert_eq!(s["upstreams"][0]["address"], up.as_str());
    assert_eq!(s["upstreams"][0]["state"], "healthy");
    assert!(s["upstreams"][0]["since_ms"].is_u64(), "{s}");
    assert_eq!(s["default_mode"], "fail_closed");
    assert_eq!(
        s["keyspaces"],
        json!([
            {"name": "rate-limits", "mode": "fail_closed", "patterns": ["rl:"]},
            {"name": "page-cache", "mode": "degraded", "patterns": ["cache:*"]},
            {"name": "scratch", "mode": "local_only", "patterns": ["tmp:"]},
        ])
    );
    assert_eq!(
        s["local_store"],
        json!({"keys": 3, "used_bytes": three as u64, "max_bytes": 1048576, "evictions": 0, "expirations": 0, "oom_refusals": 0})
    );
    assert_eq!(s["clients"], 1);
    assert_eq!(
        s["counts"],
        json!({"refused": 0, "degraded_replies": 0, "discarded_writes": 0})
    );

    // The upstream dies: once the gauge shows it, every refusal and degraded reply is counted.
    redis.kill();
    let m = scrape_until(admin, "the upstream unavailable", |m| {
        value(m, &health(&up, "unavailable")) == 1.0
    })
    .await;
    assert_eq!(value(&m, &health(&up, "healthy")), 0.0);
    assert_eq!(value(&m, &transitions(&up, "BACKEND_DEGRADED")), 1.0);
    assert_eq!(value(&m, "keywarden_fail_closed_refusals_total"), 0.0);
    for args in [
        &["INCR", "rl:x"][..],
        &["INCR", "rl:x"],
        &["GET", "no-keyspace"],
    ] {
        let reply = c.cmd(args).await;
        assert!(is_error(&reply, "FAILCLOSED"), "{args:?}: {reply:?}");
    }
    assert_eq!(c.cmd(&["SET", "cache:a", "v"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "cache:a"]).await, bulk("v"));
    // local_only keys are served as always: not degraded replies.
    assert_eq!(c.cmd(&["GET", "tmp:a"]).await, bulk("1"));

    let m = metrics(admin).await;
    assert_eq!(value(&m, "keywarden_fail_closed_refusals_total"), 3.0);
    assert_eq!(value(&m, "keywarden_degraded_replies_total"), 2.0);
    assert_eq!(value(&m, "keywarden_discarded_writes_total"), 1.0);
    let by_keyspace = |metric: &str, ks: &str| format!(r#"{metric}{{keyspace="{ks}"}}"#);
    let refused = "keywarden_keyspace_fail_closed_refusals_total";
    let degraded = "keywarden_keyspace_degraded_replies_total";
    assert_eq!(value(&m, &by_keyspace(refused, "rate-limits")), 2.0);
    assert_eq!(value(&m, &by_keyspace(refused, "default")), 1.0);
    assert_eq!(value(&m, &by_keyspace(refused, "page-cache")), 0.0);
    assert_eq!(value(&m, &by_keyspace(degraded, "page-cache")), 2.0);
    assert_eq!(value(&m, &by_keyspace(degraded, "scratch")), 0.0);
    let command =
        |c: &str, o: &str| format!(r#"keywarden_commands_total{{command="{c}",outcome="{o}"}}"#);
    assert_eq!(value(&m, &command("incr", "refused")), 2.0);
    assert_eq!(value(&m, &command("get", "refused")), 1.0);
    // Before the outage: three SETs to tmp: keys; during it: SET cache:a, served locally.
    assert_eq!(value(&m, &command("set", "local")), 4.0);
    assert_eq!(value(&m, &command("get", "local")), 2.0);
    assert_eq!(value(&m, "keywarden_local_store_keys"), 4.0);
    assert_eq!(value(&m, &transitions(&up, "BACKEND_DEGRADED")), 1.0);
    assert_eq!(value(&m, &transitions(&up, "BACKEND_RECOVERED")), 0.0);
    let s = status(admin).await;
    assert_eq!(s["upstreams"][0]["state"], "unavailable");
    assert_eq!(
        s["counts"],
        json!({"refused": 3, "degraded_replies": 2, "discarded_writes": 1})
    );

    // It returns: healthy again, one RECOVERED, the degraded keyspace's local write discarded.
    redis.restart();
    let m = scrape_until(admin, "the upstream healthy, local writes discarded", |m| {
        value(m, &health(&up, "healthy")) == 1.0 && value(m, "keywarden_local_store_keys") == 3.0
    })
    .await;
    assert_eq!(value(&m, &transitions(&up, "BACKEND_DEGRADED")), 1.0);
    assert_eq!(value(&m, &transitions(&up, "BACKEND_RECOVERED")), 1.0);
    assert_eq!(
        value(&m, &transitions(&up, "BACKEND_UNAVAILABLE_AT_STARTUP")),
        0.0
    );
    assert_eq!(value(&m, "keywarden_fail_closed_refusals_total"), 3.0);
    assert_eq!(value(&m, "keywarden_local_store_used_bytes"), three);

    // A key that expires is counted once, by active expiry (nobody reads it).
    let ttl = c.cmd(&["SET", "tmp:ttl", "v", "PX", "50"]).await;
    assert_eq!(ttl, simple("OK"));
    let m = scrape_until(admin, "the key expired", |m| {
        value(m, "keywarden_local_store_expirations_total") == 1.0
    })
    .await;
    assert_eq!(value(&m, "keywarden_local_store_keys"), 3.0);

    // Past the budget: every key written either stays or was evicted.
    let big = "v".repeat(1000);
    let written = 1500;
    for i in 0..written {
        let key = format!("tmp:fill:{i:04}");
        assert_eq!(c.cmd(&["SET", &key, &big]).await, simple("OK"));
    }
    let m = metrics(admin).await;
    let (keys, evicted) = (
        value(&m, "keywarden_local_store_keys"),
        value(&m, "keywarden_local_store_evictions_total"),
    );
    assert!(evicted > 0.0, "{m}");
    assert_eq!(keys + evicted, 3.0 + written as f64);
    assert!(value(&m, "keywarden_local_store_used_bytes") <= 1048576.0);
    // The three oldest keys went first (exact LRU).
    assert_eq!(c.cmd(&["EXISTS", "tmp:a", "tmp:b", "tmp:c"]).await, int(0));

    // A reload of settings that came from no file is rejected, and shows.
    let reply = c.cmd(&["KEYWARDEN", "RELOAD"]).await;
    assert!(is_error(&reply, "ERR reload failed"), "{reply:?}");
    let m = metrics(admin).await;
    let reloads = |r: &str| format!(r#"keywarden_config_reloads_total{{result="{r}"}}"#);
    assert_eq!(value(&m, &reloads("failed")), 1.0);
    assert_eq!(value(&m, &reloads("applied")), 0.0);
    assert_eq!(value(&m, "keywarden_config_last_reload_successful"), 0.0);
    assert_eq!(status(admin).await["config"]["reloads_failed"], 1);
    drop(c);
    proxy.shutdown().await;
}

#[tokio::test]
async fn endpoints_answer_as_documented() {
    let redis = RedisServer::start();
    let (proxy, admin) = proxy_with_admin(&redis, "2s").await;

    let r = get(admin, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = get(admin, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        r.body
            .contains("# TYPE keywarden_fail_closed_refusals_total counter\n"),
        "{}",
        r.body
    );
    // A query string does not change the path.
    assert_eq!(get(admin, "/metrics?x=1").await.status, 200);

    for path in ["/", "/metric", "/metrics/", "/status.json", "/HEALTHZ"] {
        let r = get(admin, path).await;
        assert_eq!((r.status, r.body.as_str()), (404, "not found\n"), "{path}");
    }
    for (method, path) in [
        ("POST", "/metrics"),
        ("PUT", "/status"),
        ("DELETE", "/readyz"),
        ("HEAD", "/healthz"),
    ] {
        let r = http(admin, method, path).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some("GET"), "{method} {path}");
    }

    // Several requests on one kept-alive connection, as a Prometheus server scrapes.
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let twice = "GET /healthz HTTP/1.1\r\nHost: k\r\n\r\nGET /healthz HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
    stream.write_all(twice.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{raw}");

    proxy.shutdown().await;
    // Stopped with the proxy.
    assert!(try_http(admin, "GET", "/healthz").await.is_none());
}

#[tokio::test]
async fn readyz_is_503_while_draining() {
    let redis = RedisServer::start();
    let (proxy, admin) = proxy_with_admin(&redis, "30s").await;
    // A blocked pop is a request in flight: the drain waits for its reply.
    let mut blocked = proxy.client().await;
    blocked.send(&["BLPOP", "jobs", "0"]).await;
    wait_until_blocked(&redis).await;

    let stopping = tokio::spawn(proxy.shutdown());
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(admin, "/readyz").await;
        if r.status == 503 {
            assert_eq!(r.body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "never reported draining");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Alive all the same, and saying so in /status.
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(status(admin).await["ready"], false);

    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["RPUSH", "jobs", "j1"]).await, int(1));
    assert_eq!(
        blocked.reply().await,
        Frame::Array(vec![bulk("jobs"), bulk("j1")])
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("drain ends once the reply is out")
        .unwrap();
    assert!(try_http(admin, "GET", "/readyz").await.is_none());
}

#[tokio::test]
async fn two_proxies_in_one_process_report_their_own_metrics() {
    let redis_a = RedisServer::start();
    let redis_b = RedisServer::start();
    let (a, admin_a) = proxy_with_admin(&redis_a, "2s").await;
    let (b, admin_b) = proxy_with_admin(&redis_b, "2s").await;
    let mut ca = a.client().await;
    let _cb1 = b.client().await;
    let cb2 = b.client().await;
    assert_eq!(ca.cmd(&["SET", "tmp:1", "x"]).await, simple("OK"));
    assert_eq!(ca.cmd(&["SET", "tmp:2", "y"]).await, simple("OK"));

    // Each client shows once it has been accepted: poll for b's second.
    let mb = scrape_until(admin_b, "two clients on b", |m| {
        value(m, "keywarden_client_connections") == 2.0
    })
    .await;
    let ma = metrics(admin_a).await;
    assert_eq!(value(&ma, "keywarden_local_store_keys"), 2.0);
    assert_eq!(value(&mb, "keywarden_local_store_keys"), 0.0);
    assert_eq!(value(&ma, "keywarden_client_connections"), 1.0);
    assert_eq!(value(&ma, &health(&redis_a.addr(), "healthy")), 1.0);
    assert_eq!(value(&mb, &health(&redis_b.addr(), "healthy")), 1.0);
    assert!(!ma.contains(&redis_b.addr()), "{ma}");
    assert!(!mb.contains(&redis_a.addr()), "{mb}");
    drop((ca, cb2));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_unavailable_start_is_counted() {
    // Nothing listens at the upstream's port.
    let up = format!("127.0.0.1:{}", free_port());
    let (proxy, admin) = proxy_with_admin_at(&up).await;
    let m = metrics(admin).await;
    assert_eq!(value(&m, &health(&up, "unavailable")), 1.0);
    assert_eq!(
        value(&m, &transitions(&up, "BACKEND_UNAVAILABLE_AT_STARTUP")),
        1.0
    );
    assert_eq!(value(&m, &transitions(&up, "BACKEND_DEGRADED")), 0.0);
    assert_eq!(status(admin).await["upstreams"][0]["state"], "unavailable");
    proxy.shutdown().await;
}

/// A proxy with the admin listener in front of an address where nothing may listen.
async fn proxy_with_admin_at(upstream: &str) -> (Proxy, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut settings = settings(upstream);
    settings.admin.listen = Some(admin);
    let proxy = Proxy::start(settings).await;
    until_ready(admin).await;
    (proxy, admin)
}

#[tokio::test]
async fn a_busy_admin_port_stops_startup() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = settings("127.0.0.1:1");
    settings.admin.listen = Some(taken.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = keywarden::proxy::listener::run(settings, listener, std::future::pending());
    let error = tokio::time::timeout(WAIT, run)
        .await
        .expect("fails at once")
        .expect_err("the admin port is taken");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        error
            .to_string()
            .starts_with("admin listener on 127.0.0.1:"),
        "{error}"
    );
}

/// Connections accepted, refused at max_clients and closed for protocol errors, and upstream
/// connects, counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_counters_are_exact() {
    let mut redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "max_clients = 2\n[upstream]\naddress = \"{}\"\nconnections = 1\n[admin]\nlisten = \"{admin}\"\n",
        redis.addr()
    );
    let settings = Settings::from_toml_str(&text, "admin test", &Overrides::default()).unwrap();
    let proxy = Proxy::start(settings).await;
    until_ready(admin).await;
    // One RESP2 and one RESP3 shared connection.
    let connects = format!(
        r#"keywarden_upstream_connects_total{{upstream="{}"}}"#,
        redis.addr()
    );
    scrape_until(admin, "both shared connections", |b| {
        value(b, &connects) == 2.0
    })
    .await;

    let mut a = proxy.client().await;
    assert_eq!(a.cmd(&["PING"]).await, simple("PONG"));
    let mut b = proxy.client().await;
    assert_eq!(b.cmd(&["PING"]).await, simple("PONG"));
    let mut over = proxy.client().await;
    let refused = over.reply().await;
    assert!(
        is_error(&refused, "ERR max number of clients reached"),
        "{refused:?}"
    );
    b.send_raw(b"*1\r\n$x\r\n").await;
    let bad = b.reply().await;
    assert!(is_error(&bad, "ERR Protocol error"), "{bad:?}");
    assert!(b.closed().await);
    let body = metrics(admin).await;
    assert_eq!(
        value(&body, "keywarden_client_connections_total"),
        2.0,
        "{body}"
    );
    assert_eq!(
        value(&body, "keywarden_client_connections_rejected_total"),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(&body, "keywarden_protocol_errors_total"),
        1.0,
        "{body}"
    );
    // Both PINGs went upstream: two observations in the latency histogram.
    let up = redis.addr();
    let latency = "keywarden_upstream_request_duration_seconds";
    let count = format!(r#"{latency}_count{{upstream="{up}"}}"#);
    let inf = format!(r#"{latency}_bucket{{upstream="{up}",le="+Inf"}}"#);
    assert_eq!(value(&body, &count), 2.0, "{body}");
    assert_eq!(value(&body, &inf), 2.0, "{body}");
    assert!(
        body.contains(&format!("# TYPE {latency} histogram\n")),
        "{body}"
    );

    // A restart of the upstream: both shared connections reconnect.
    redis.kill();
    redis.restart();
    let deadline = Instant::now() + WAIT;
    while a.cmd(&["PING"]).await != simple("PONG") {
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    scrape_until(admin, "the reconnects", |b| value(b, &connects) >= 3.0).await;
    drop((a, over));
    proxy.shutdown().await;
}

/// sha256("s3cret"): the password or token of the tests below.
const S3CRET_SHA256: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

/// Settings read from a config file's text, which must be valid.
fn from_text(text: &str) -> Settings {
    Settings::from_toml_str(text, "test.toml", &Overrides::default()).unwrap()
}

/// One GET with an `Authorization` header (or none); the status code.
async fn status_with(admin: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: keywarden\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("admin response within the wait")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    (code, text)
}

/// With `admin.token_sha256`, every admin path needs `Authorization: Bearer <token>` (401 and
/// `WWW-Authenticate: Bearer` otherwise); a listener beyond loopback must have one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_admin_path() {
    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let digest = S3CRET_SHA256;
    let text = format!(
        "[upstream]\naddress = \"{}\"\n[admin]\nlisten = \"{admin}\"\ntoken_sha256 = \"{digest}\"\n",
        redis.addr()
    );
    let proxy = Proxy::start(from_text(&text)).await;
    let start = Instant::now();
    while TcpStream::connect(admin).await.is_err() {
        assert!(start.elapsed() < WAIT, "admin listener never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        let (code, text) = status_with(admin, path, None).await;
        assert_eq!(code, 401, "{path}: {text}");
        assert!(
            text.contains("www-authenticate: Bearer") || text.contains("WWW-Authenticate: Bearer"),
            "{text}"
        );
        let (code, _) = status_with(admin, path, Some("Bearer wrong")).await;
        assert_eq!(code, 401, "{path}");
        let (code, _) = status_with(admin, path, Some("Basic czNjcmV0")).await;
        assert_eq!(code, 401, "{path}");
        let (code, text) = status_with(admin, path, Some("Bearer s3cret")).await;
        assert_eq!(code, 200, "{path}: {text}");
    }
    proxy.shutdown().await;
    // Beyond loopback, a token is required.
    let open = "[admin]\nlisten = \"0.0.0.0:9121\"\n";
    let error = Settings::from_toml_str(open, "test.toml", &Overrides::default()).unwrap_err();
    assert!(
        error.to_string().contains("admin.listen") && error.to_string().contains("token_sha256"),
        "{error}"
    );
    let guarded = format!("{open}token_sha256 = \"{digest}\"\n");
    from_text(&guarded);
}

/// Refused AUTH and HELLO ... AUTH attempts are counted (`keywarden_auth_failures_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted() {
    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let digest = S3CRET_SHA256;
    let text = format!(
        "requirepass_sha256 = \"{digest}\"\n[upstream]\naddress = \"{}\"\n[admin]\nlisten = \"{admin}\"\n",
        redis.addr()
    );
    let proxy = Proxy::start(from_text(&text)).await;
    until_ready(admin).await;
    assert_eq!(
        value(&metrics(admin).await, "keywarden_auth_failures_total"),
        0.0
    );
    let mut c = RawClient::connect(proxy.addr).await;
    let replies = c
        .run(&[
            &["AUTH", "wrong"],
            &["AUTH", "nobody", "s3cret"],
            &["HELLO", "3", "AUTH", "default", "nope"],
            &["AUTH", "s3cret"],
        ])
        .await;
    assert!(replies[..3].iter().all(|r| r.starts_with(b"-WRONGPASS")));
    assert_eq!(replies[3], b"+OK\r\n");
    assert_eq!(
        value(&metrics(admin).await, "keywarden_auth_failures_total"),
        3.0
    );
    proxy.shutdown().await;
}
