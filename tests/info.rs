//! INFO through keywarden: the upstream's sections with a `# Keywarden` section appended, and
//! the proxy's own section alone when asked for or while the upstream is unavailable.

mod support;

use keywarden::policy::keyspace::Mode;
use support::*;
use tokio::io::AsyncReadExt;

fn text(frame: Frame) -> String {
    match frame {
        Frame::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("INFO replied {other:?}"),
    }
}

/// The value of `field` in an INFO text.
fn field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_has_the_upstream_sections_and_keywardens() {
    let mut redis = RedisServer::start();
    let mut settings = settings(&redis.addr());
    settings.keyspaces = scratch_keyspace(Mode::FailClosed);
    let proxy = Proxy::start(settings).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["SET", "tmp:a", "1"]).await, simple("OK"));

    let all = text(c.cmd(&["INFO"]).await);
    assert!(field(&all, "redis_version").is_some(), "{all}");
    assert!(all.contains("\r\n# Keywarden\r\n"), "{all}");
    assert_eq!(field(&all, "upstream_state"), Some("healthy"));
    assert_eq!(
        field(&all, "keyspace0"),
        Some("name=scratch,mode=local_only")
    );
    assert_eq!(field(&all, "default_mode"), Some("fail_closed"));
    assert_eq!(field(&all, "local_store_keys"), Some("1"));

    let server = text(c.cmd(&["INFO", "server"]).await);
    assert!(field(&server, "redis_version").is_some(), "{server}");
    assert!(!server.contains("# Keywarden"), "{server}");

    let ours = text(c.cmd(&["INFO", "keywarden"]).await);
    assert!(ours.starts_with("# Keywarden\r\n"), "{ours}");
    assert!(field(&ours, "redis_version").is_none(), "{ours}");

    // Pipelined among other replies, each reply stays in its place.
    c.send(&["GET", "tmp:a"]).await;
    c.send(&["INFO", "clients"]).await;
    c.send(&["GET", "tmp:a"]).await;
    assert_eq!(c.reply().await, bulk("1"));
    let clients = text(c.reply().await);
    assert!(field(&clients, "connected_clients").is_some(), "{clients}");
    assert!(!clients.contains("# Keywarden"), "{clients}");
    assert_eq!(c.reply().await, bulk("1"));

    // Upstream gone: INFO still answers, with the proxy's view of the outage.
    redis.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "outage never seen");
        // Until the proxy has seen the outage, INFO still goes upstream and may fail.
        let info = match c.cmd(&["INFO"]).await {
            Frame::BulkString(b) => String::from_utf8(b).unwrap(),
            other => {
                assert!(is_error(&other, "UPSTREAM"), "{other:?}");
                continue;
            }
        };
        if field(&info, "upstream_state") == Some("unavailable") {
            assert!(field(&info, "redis_version").is_none(), "{info}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let refused = c.cmd(&["GET", "k"]).await;
    assert!(is_error(&refused, "FAILCLOSED"), "{refused:?}");
    let info = text(c.cmd(&["INFO", "keywarden"]).await);
    assert_eq!(field(&info, "fail_closed_refusals"), Some("1"), "{info}");
    proxy.shutdown().await;
}

/// RESP3 clients get INFO as a verbatim string, as from Redis, with the section appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_in_resp3_is_a_verbatim_string() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    c.send_raw(b"HELLO 3\r\nINFO server\r\nINFO\r\n").await;
    // Read until three whole replies are in, split with the proxy's own reply scanner.
    let mut raw = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut scanner = keywarden::protocol::scanner::ReplyScanner::new(16);
    let mut at = 0;
    while frames.len() < 3 {
        match scanner.scan(&raw[at..]).unwrap() {
            Some(frame) => {
                frames.push(raw[at..at + frame.len].to_vec());
                at += frame.len;
            }
            None => {
                let mut buf = [0u8; 16384];
                let n = tokio::time::timeout(WAIT, c.stream.read(&mut buf))
                    .await
                    .expect("INFO replies in time")
                    .unwrap();
                assert!(n > 0, "connection closed");
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
    assert!(frames[0].starts_with(b"%7\r\n"));
    for (i, frame) in frames[1..].iter().enumerate() {
        let s = String::from_utf8_lossy(frame);
        let (len, rest) = s.strip_prefix('=').unwrap().split_once("\r\n").unwrap();
        let len: usize = len.parse().unwrap();
        assert!(rest.starts_with("txt:# Server\r\n"), "{rest}");
        assert_eq!(rest.len(), len + 2, "length of {rest:?}");
        assert_eq!(rest.contains("# Keywarden\r\n"), i == 1, "{rest}");
    }
    proxy.shutdown().await;
}

/// `KEYWARDEN STATUS | KEYSPACES | HELP`: the proxy's admin command, for users allowed the
/// `admin` category (or every command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywarden_admin_command() {
    use keywarden::command::Categories;
    use keywarden::policy::auth::{CommandAccess, KeyAccess, PasswordHash, User, Users};
    let redis = RedisServer::start();
    let mut settings = settings(&redis.addr());
    settings.keyspaces = scratch_keyspace(Mode::Degraded);
    let user = |name: &str, categories: &str| {
        User::new(
            name.into(),
            PasswordHash::of(b"pw"),
            CommandAccess::of(Categories::from_name(categories).unwrap()),
            KeyAccess::All,
        )
    };
    settings.users = Users::new(vec![user("ops", "admin"), user("app", "read")]);
    let proxy = Proxy::start(settings).await;
    let mut c = proxy.client().await;
    let noauth = c.cmd(&["KEYWARDEN", "STATUS"]).await;
    assert!(is_error(&noauth, "NOAUTH"), "{noauth:?}");
    assert_eq!(c.cmd(&["AUTH", "app", "pw"]).await, simple("OK"));
    let noperm = c.cmd(&["KEYWARDEN", "STATUS"]).await;
    assert!(
        is_error(
            &noperm,
            "NOPERM this user has no permissions to run the 'keywarden' command"
        ),
        "{noperm:?}"
    );
    assert_eq!(c.cmd(&["AUTH", "ops", "pw"]).await, simple("OK"));
    let status: serde_json::Value =
        serde_json::from_str(&text(c.cmd(&["keywarden", "status"]).await)).unwrap();
    assert_eq!(status["upstreams"][0]["state"], "healthy", "{status}");
    assert_eq!(status["default_mode"], "degraded", "{status}");
    assert_eq!(status["keyspaces"][0]["name"], "scratch", "{status}");
    assert_eq!(
        c.cmd(&["KEYWARDEN", "KEYSPACES"]).await,
        Frame::Array(vec![
            Frame::Array(vec![
                bulk("name"),
                bulk("scratch"),
                bulk("mode"),
                bulk("local_only"),
                bulk("patterns"),
                Frame::Array(vec![bulk("tmp:")]),
            ]),
            Frame::Array(vec![
                bulk("name"),
                bulk("default"),
                bulk("mode"),
                bulk("degraded"),
                bulk("patterns"),
                Frame::Array(vec![]),
            ]),
        ])
    );
    match c.cmd(&["KEYWARDEN", "HELP"]).await {
        Frame::Array(lines) => assert!(lines.len() > 3),
        other => panic!("{other:?}"),
    }
    let unknown = c.cmd(&["KEYWARDEN", "RELOADX"]).await;
    assert!(
        is_error(
            &unknown,
            "ERR unknown subcommand 'RELOADX'. Try KEYWARDEN HELP."
        ),
        "{unknown:?}"
    );
    let arity = c.cmd(&["KEYWARDEN"]).await;
    assert!(
        is_error(&arity, "ERR wrong number of arguments"),
        "{arity:?}"
    );
    proxy.shutdown().await;
}
