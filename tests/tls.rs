//! TLS on both sides, with real parts: certificates made by the test (rcgen: a CA, a server
//! certificate for 127.0.0.1, a client certificate), a redis-server serving TLS on its
//! `--tls-port` and requiring client certificates, and Redis's own `redis-cli` and
//! `redis-benchmark` as TLS clients of keywarden's TLS listener.

mod support;

use tokio::io::AsyncReadExt;

use std::process::{Command, Output, Stdio};

use keywarden::config::{ClientTls, UpstreamTls};
use support::*;

/// A redis-server with a plain port (for the test's own checks) and a TLS port that requires
/// client certificates signed by the test CA.
fn tls_redis(certs: &Certs) -> (RedisServer, u16) {
    let tls_port = free_port();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &certs.arg("server.pem"),
        "--tls-key-file",
        &certs.arg("server.key"),
        "--tls-ca-cert-file",
        &certs.arg("ca.pem"),
        "--tls-auth-clients",
        "yes",
    ]);
    (redis, tls_port)
}

/// keywarden talking TLS to `tls_port` with the client certificate, and serving TLS clients
/// (with certificates signed by the test CA) on a port of its own, besides its plain one.
async fn tls_proxy(certs: &Certs, tls_port: u16) -> (Proxy, u16) {
    let mut s = settings(&format!("127.0.0.1:{tls_port}"));
    s.upstream.tls = Some(UpstreamTls {
        ca_file: certs.path("ca.pem"),
        client_cert: Some((certs.path("client.pem"), certs.path("client.key"))),
        server_name: None,
    });
    let listen_port = free_port();
    s.tls = Some(ClientTls {
        listen: format!("127.0.0.1:{listen_port}").parse().unwrap(),
        cert_file: certs.path("server.pem"),
        key_file: certs.path("server.key"),
        ca_file: Some(certs.path("ca.pem")),
    });
    (Proxy::start(s).await, listen_port)
}

/// `redis-cli` over TLS to `port`, with the test CA and, when `cert`, the client certificate.
fn cli(certs: &Certs, port: u16, cert: bool, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert", &certs.arg("ca.pem")]);
    if cert {
        cmd.args([
            "--cert",
            &certs.arg("client.pem"),
            "--key",
            &certs.arg("client.key"),
        ]);
    }
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("redis-cli (apt-get install -y redis-tools)");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

async fn in_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_through_keywarden_to_a_tls_upstream() {
    let certs = std::sync::Arc::new(Certs::make());
    let (redis, tls_port) = tls_redis(&certs);
    let (proxy, port) = tls_proxy(&certs, tls_port).await;
    wait_until_forwarding(&proxy).await;

    let c = certs.clone();
    let set = in_blocking(move || cli(&c, port, true, &["SET", "k", "over tls"], None)).await;
    assert_eq!(text(&set), "OK");
    let c = certs.clone();
    let get = in_blocking(move || cli(&c, port, true, &["GET", "k"], None)).await;
    assert_eq!(text(&get), "over tls");
    // It went through the upstream's TLS port: the value is in Redis.
    let mut direct = Client::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&["GET", "k"]).await, bulk("over tls"));

    // A blocking command: the client's own upstream connection, through TLS too.
    let c = certs.clone();
    let push = in_blocking(move || cli(&c, port, true, &["RPUSH", "l", "a"], None)).await;
    assert_eq!(text(&push), "1");
    let c = certs.clone();
    let pop = in_blocking(move || cli(&c, port, true, &["BLPOP", "l", "1"], None)).await;
    assert_eq!(text(&pop), "l\na");
    let c = certs.clone();
    let waited = in_blocking(move || cli(&c, port, true, &["BLPOP", "l", "0.2"], None)).await;
    assert_eq!(text(&waited), "");

    // A value of 1 MB each way: many TLS records in one reply and one request.
    let big = vec![b'x'; 1 << 20];
    let c = certs.clone();
    let set = in_blocking(move || cli(&c, port, true, &["-x", "SET", "big"], Some(&big))).await;
    assert_eq!(text(&set), "OK");
    let c = certs.clone();
    let len = in_blocking(move || cli(&c, port, true, &["STRLEN", "big"], None)).await;
    assert_eq!(text(&len), "1048576");
    let c = certs.clone();
    let got = in_blocking(move || cli(&c, port, true, &["GET", "big"], None)).await;
    assert_eq!(
        got.stdout.len(),
        (1 << 20) + 1,
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );

    // Pipelined load from 20 TLS clients at once.
    let c = certs.clone();
    let bench = in_blocking(move || {
        Command::new("redis-benchmark")
            .args(["--tls", "--cacert", &c.arg("ca.pem")])
            .args([
                "--cert",
                &c.arg("client.pem"),
                "--key",
                &c.arg("client.key"),
            ])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", "20", "-n", "20000", "-P", "16", "-t", "set,get", "-q"])
            .output()
            .expect("redis-benchmark (apt-get install -y redis-tools)")
    })
    .await;
    let out = text(&bench);
    assert!(bench.status.success(), "{out}");
    assert_eq!(out.matches("requests per second").count(), 2, "{out}");
    let mut plain = proxy.client().await;
    assert_eq!(
        plain.cmd(&["GET", "k"]).await,
        bulk("over tls"),
        "the plain listener serves too"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_a_certificate_or_a_plain_one_is_refused() {
    let certs = std::sync::Arc::new(Certs::make());
    let (_redis, tls_port) = tls_redis(&certs);
    let (proxy, port) = tls_proxy(&certs, tls_port).await;
    wait_until_forwarding(&proxy).await;
    let c = certs.clone();
    let anonymous = in_blocking(move || cli(&c, port, false, &["PING"], None)).await;
    assert_ne!(text(&anonymous), "PONG");
    // Plain text on the TLS port: at most a TLS alert record (type 21), never a Redis reply,
    // and the connection is closed.
    let mut raw = RawClient::connect(format!("127.0.0.1:{port}")).await;
    raw.send(&[&["PING"]]).await;
    let answer = raw.bytes_until_closed().await;
    assert!(
        answer.is_empty() || answer[0] == 21,
        "{}",
        show_bytes(&answer)
    );
    // And the proxy still serves TLS clients with certificates.
    let c = certs.clone();
    let ok = in_blocking(move || cli(&c, port, true, &["PING"], None)).await;
    assert_eq!(text(&ok), "PONG");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_certificate_is_not_trusted_is_unavailable() {
    let certs = Certs::make();
    let (_redis, tls_port) = tls_redis(&certs);
    let mut s = settings(&format!("127.0.0.1:{tls_port}"));
    s.upstream.tls = Some(UpstreamTls {
        ca_file: certs.path("other-ca.pem"),
        client_cert: Some((certs.path("client.pem"), certs.path("client.key"))),
        server_name: None,
    });
    let proxy = Proxy::start(s).await;
    let mut c = proxy.client().await;
    let refused = c.cmd(&["GET", "k"]).await;
    assert!(is_error(&refused, "FAILCLOSED"), "{refused:?}");
    proxy.shutdown().await;
}

async fn wait_until_forwarding(proxy: &Proxy) {
    let mut c = proxy.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if c.cmd(&["GET", "wait:probe"]).await == Frame::Null {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream never became available"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A reload reads the certificate files again: a certificate rotated in place (same paths)
/// is served from the next handshake on, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_rotated_certificate() {
    let redis = RedisServer::start();
    let old = std::sync::Arc::new(Certs::make());
    let new = std::sync::Arc::new(Certs::make());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("kw.pem"), dir.path().join("kw.key"));
    std::fs::copy(old.path("server.pem"), &cert).unwrap();
    std::fs::copy(old.path("server.key"), &key).unwrap();
    let port = free_port();
    let config = dir.path().join("keywarden.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = {:?}\nkey_file = {:?}\n",
            redis.addr(),
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let settings = keywarden::config::Settings::load(&config, &Default::default()).unwrap();
    let proxy = Proxy::start(settings).await;
    let ping = |certs: std::sync::Arc<Certs>| async move {
        in_blocking(move || text(&cli(&certs, port, false, &["PING"], None))).await
    };
    assert_eq!(ping(old.clone()).await, "PONG");
    assert_ne!(
        ping(new.clone()).await,
        "PONG",
        "the new CA cannot vouch yet"
    );

    std::fs::copy(new.path("server.pem"), &cert).unwrap();
    std::fs::copy(new.path("server.key"), &key).unwrap();
    let mut admin = RawClient::connect(proxy.addr).await;
    assert_eq!(admin.cmd(&["KEYWARDEN", "RELOAD"]).await, b"+OK\r\n");
    assert_eq!(ping(new.clone()).await, "PONG");
    assert_ne!(ping(old.clone()).await, "PONG");

    // A key that is not the certificate's: the reload is refused, the old one stays.
    std::fs::copy(old.path("server.key"), &key).unwrap();
    let refused = admin.cmd(&["KEYWARDEN", "RELOAD"]).await;
    assert!(refused.starts_with(b"-"), "{}", show_bytes(&refused));
    assert_eq!(ping(new.clone()).await, "PONG");
    proxy.shutdown().await;
}

/// Found in review: TLS handshakes under way were not clients, so connections that never
/// finish one could pile up without bound. They count toward max_clients now, and a TLS
/// connection over the limit is closed before any handshake (no signature spent on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_under_way_count_toward_max_clients() {
    let certs = Certs::make();
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    let port = free_port();
    s.max_clients = 2;
    s.tls = Some(ClientTls {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        cert_file: certs.path("server.pem"),
        key_file: certs.path("server.key"),
        ca_file: None,
    });
    let proxy = Proxy::start(s).await;
    wait_until_forwarding(&proxy).await;
    // Five connections to the TLS port that never say a word: at most two are let in to
    // wait for their handshake (fewer if a client of the checks above still counted when
    // they came); every other one is closed without a handshake, at once.
    let mut silent: Vec<tokio::net::TcpStream> = futures_join(port, 5).await;
    let mut closed = 0;
    for conn in &mut silent {
        let mut byte = [0u8; 1];
        let wait = std::time::Duration::from_millis(500);
        let read = tokio::time::timeout(wait, conn.read(&mut byte)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("keywarden spoke first on a TLS connection"),
            Err(_) => {} // waiting for its handshake
        }
    }
    assert!(
        closed >= 3,
        "only {closed} of 5 closed with max_clients = 2"
    );
    // While two handshakes wait, a plain client is over the limit too.
    let refused = b"-ERR max number of clients reached\r\n";
    if closed == 3 {
        poll_ping(proxy.addr, refused).await;
    }
    drop(silent);
    // Once keywarden has seen them go, there is room again.
    poll_ping(proxy.addr, b"+PONG\r\n").await;
    proxy.shutdown().await;
}

/// Connects and sends PING until the first reply is `want`.
async fn poll_ping(addr: std::net::SocketAddr, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = RawClient::connect(addr).await;
        c.send(&[&["PING"]]).await;
        let got = c.try_frame(std::time::Duration::from_secs(1)).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never got {}: {:?}",
            show_bytes(want),
            got.as_deref().map(show_bytes)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn futures_join(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    out
}
