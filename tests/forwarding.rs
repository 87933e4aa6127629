//! The transparent proxy path: pipelining, large values, inline commands, protocol errors,
//! error replies mid-pipeline, all against a real redis-server.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_commands_pass_through() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, simple("OK"));
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v"));
    assert_eq!(c.cmd(&["GET", "missing"]).await, Frame::Null);
    assert_eq!(c.cmd(&["RPUSH", "l", "a", "b"]).await, int(2));
    assert_eq!(
        c.cmd(&["LRANGE", "l", "0", "-1"]).await,
        Frame::Array(vec![bulk("a"), bulk("b")])
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_forwarded_byte_for_byte() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut direct = Client::connect(redis.addr()).await;
    let mut via = proxy.client().await;
    for setup in [
        &["RPUSH", "q", "x"][..],
        &["XADD", "s", "1-1", "f", "v"],
        &["SET", "str", "5"],
    ] {
        direct.cmd(setup).await;
    }
    // Read-only commands (so both runs see the same data): null bulk, empty array, nested
    // arrays, integers, errors; BLPOP's null array last (it moves to a dedicated connection).
    let script: &[&[&str]] = &[
        &["GET", "nothing"],
        &["LRANGE", "nothing", "0", "-1"],
        &["XRANGE", "s", "-", "+"],
        &["LRANGE", "q", "0", "-1"],
        &["STRLEN", "str"],
        &["OBJECT", "ENCODING", "nothing"],
        &["LPUSH", "str", "x"],
        &["HGETALL", "nothing"],
        &["BLPOP", "nothing", "0.01"],
    ];
    for args in script {
        let wire: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let want = raw_roundtrip(&mut direct, &encode(&wire)).await;
        let got = raw_roundtrip(&mut via, &encode(&wire)).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{args:?}"
        );
    }
    proxy.shutdown().await;
}

/// Sends bytes and returns the raw reply bytes (read until a short quiet period).
async fn raw_roundtrip(c: &mut Client, bytes: &[u8]) -> Vec<u8> {
    c.send_raw(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, c.stream.read(&mut buf))
        .await
        .expect("reply in time")
        .expect("read");
    out.extend_from_slice(&buf[..n]);
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(50), c.stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// 100 clients, each pipelining 10,000 commands on its own keys, with every reply checked
/// against its request: no reply reaches the wrong client, and order is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelining_clients_get_their_own_replies_in_order() {
    const CLIENTS: usize = 100;
    const PAIRS: usize = 5_000; // SET + GET = 10,000 commands per client
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr).await;
            let (mut rd, mut wr) = c.stream.into_split();
            let writer = tokio::spawn(async move {
                let mut batch = Vec::new();
                for j in 0..PAIRS {
                    let key = format!("c{id}:k{j}");
                    let val = format!("c{id}:v{j}");
                    batch.extend(encode(&[b"SET", key.as_bytes(), val.as_bytes()]));
                    batch.extend(encode(&[b"GET", key.as_bytes()]));
                    if batch.len() > 32 * 1024 {
                        wr.write_all(&batch).await.unwrap();
                        batch.clear();
                    }
                }
                wr.write_all(&batch).await.unwrap();
                wr
            });
            let mut buf = bytes::BytesMut::new();
            let mut next = 0usize;
            while next < PAIRS * 2 {
                while let Some((frame, used)) =
                    redis_protocol::resp2::decode::decode(&buf).expect("valid RESP")
                {
                    let _ = buf.split_to(used);
                    let j = next / 2;
                    let want = if next.is_multiple_of(2) {
                        simple("OK")
                    } else {
                        bulk(&format!("c{id}:v{j}"))
                    };
                    assert_eq!(frame, want, "client {id}, command {next}");
                    next += 1;
                }
                if next == PAIRS * 2 {
                    break;
                }
                let n = tokio::time::timeout(WAIT, rd.read_buf(&mut buf))
                    .await
                    .expect("replies keep coming")
                    .expect("read");
                assert!(n > 0, "client {id}: connection closed after {next} replies");
            }
            writer.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.shutdown().await;
}

/// Large requests go upstream from their client's buffer, not copied into the shared
/// connection's: interleaved with small ones from other clients on the same connections, every
/// value still lands whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_requests_from_many_clients_interleave_whole() {
    const CLIENTS: usize = 16;
    const PAIRS: usize = 40;
    let sizes = [5usize, 17_000, 16_384, 16_383, 300_000, 3, 1 << 20];
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let value = |j: usize| -> Vec<u8> {
                let n = sizes[(id + j) % sizes.len()];
                (0..n).map(|i| ((i + id * 7 + j) % 251) as u8).collect()
            };
            let mut pipe = Vec::new();
            for j in 0..PAIRS {
                let key = format!("c{id}:k{j}");
                pipe.extend(encode(&[b"SET", key.as_bytes(), &value(j)]));
                pipe.extend(encode(&[b"GET", key.as_bytes()]));
            }
            c.send_raw(&pipe).await;
            for j in 0..PAIRS {
                assert_eq!(c.reply().await, simple("OK"), "client {id}, SET {j}");
                match c.reply().await {
                    Frame::BulkString(got) => assert!(got == value(j), "client {id}, GET {j}"),
                    other => panic!("client {id}, GET {j}: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_value_round_trips() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let value: Vec<u8> = (0..50 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.send_raw(&encode(&[b"SET", b"big", &value])).await;
    assert_eq!(c.reply().await, simple("OK"));
    c.send(&["GET", "big"]).await;
    match c.reply().await {
        Frame::BulkString(got) => assert!(got == value, "value differs"),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(c.cmd(&["STRLEN", "big"]).await, int(value.len() as i64));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fed_byte_by_byte() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let mut bytes = encode(&[b"SET", b"slow", b"a\r\nb"]);
    bytes.extend(b"GET slow\r\n");
    bytes.extend(encode(&[b"GET", b"slow"]));
    for b in &bytes {
        c.send_raw(&[*b]).await;
        c.stream.flush().await.unwrap();
    }
    assert_eq!(c.reply().await, simple("OK"));
    assert_eq!(c.reply().await, bulk("a\r\nb"));
    assert_eq!(c.reply().await, bulk("a\r\nb"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_with_quoting() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    c.send_raw(b"SET \"a key\" 'it''s'\r\n").await;
    // Redis rejects a closing quote followed by a non-space: same through the proxy.
    let reply = c.reply().await;
    assert!(
        is_error(&reply, "ERR Protocol error: unbalanced quotes"),
        "{reply:?}"
    );
    assert!(c.closed().await);

    let mut c = proxy.client().await;
    c.send_raw(b"SET \"a key\" \"tab\\there\\x41\"\n\r\nGET \"a key\"\r\nPING\n")
        .await;
    assert_eq!(c.reply().await, simple("OK"));
    assert_eq!(c.reply().await, bulk("tab\there\x41"));
    assert_eq!(c.reply().await, simple("PONG"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_answer_like_redis_then_close() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let cases: &[&[u8]] = &[
        b"*abc\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n+PING\r\n",
        b"*2\r\n$-5\r\n",
        b"*1\r\n$600000000\r\n",
    ];
    for input in cases {
        let mut direct = Client::connect(redis.addr()).await;
        direct.send_raw(input).await;
        let want = direct.reply().await;
        assert!(direct.closed().await);
        let mut c = proxy.client().await;
        // A good command first: it must still be answered before the error.
        c.send_raw(b"PING\r\n").await;
        c.send_raw(input).await;
        assert_eq!(c.reply().await, simple("PONG"));
        assert_eq!(c.reply().await, want, "{}", String::from_utf8_lossy(input));
        assert!(c.closed().await, "connection closed after a protocol error");
    }
    // Other clients are untouched.
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["PING"]).await, simple("PONG"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_and_wrongtype_keep_the_connection_and_order() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    let mut pipeline = Vec::new();
    pipeline.extend(encode(&[b"SET", b"s", b"1"]));
    pipeline.extend(encode(&[b"NOSUCHCOMMAND", b"x"]));
    pipeline.extend(encode(&[b"LPUSH", b"s", b"x"]));
    pipeline.extend(encode(&[b"INCR", b"s"]));
    c.send_raw(&pipeline).await;
    assert_eq!(c.reply().await, simple("OK"));
    let unknown = c.reply().await;
    assert!(is_error(&unknown, "ERR unknown command"), "{unknown:?}");
    let wrong = c.reply().await;
    assert!(is_error(&wrong, "WRONGTYPE"), "{wrong:?}");
    assert_eq!(c.reply().await, int(2));
    assert_eq!(c.cmd(&["GET", "s"]).await, bulk("2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_answers_ok_after_earlier_replies_then_closes() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let mut c = proxy.client().await;
    c.send_raw(b"PING\r\nQUIT\r\nPING\r\n").await;
    assert_eq!(c.reply().await, simple("PONG"));
    assert_eq!(c.reply().await, simple("OK"));
    assert_eq!(c.try_reply(WAIT).await, None);
    proxy.shutdown().await;
}

/// QUIT on a client's own connection (here, in database 1) behaves as against Redis: the
/// replies before it, +OK, then the connection closes, and nothing pipelined after it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_on_a_clients_own_connection_ends_it_as_redis_does() {
    let redis = RedisServer::start();
    let proxy = Proxy::for_upstream(&redis).await;
    let cmds: &[&[&str]] = &[
        &["SELECT", "1"],
        &["SET", "before", "1"],
        &["QUIT"],
        &["SET", "after", "1"],
    ];
    let mut direct = RawClient::connect(redis.addr()).await;
    direct.send(cmds).await;
    let want = direct.bytes_until_closed().await;
    let mut via = RawClient::connect(proxy.addr).await;
    via.send(cmds).await;
    assert_eq!(
        show_bytes(&via.bytes_until_closed().await),
        show_bytes(&want)
    );
    let mut check = RawClient::connect(redis.addr()).await;
    assert_eq!(
        check
            .run(&[&["SELECT", "1"], &["EXISTS", "before", "after"]])
            .await[1],
        b":1\r\n"
    );
    proxy.shutdown().await;
}

/// A client that reads slowly on its own connection is not told the upstream timed out:
/// while keywarden holds `max_pending_output` of its replies it stops reading that connection,
/// and that pause is the client's, not the upstream's silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_on_its_own_connection_gets_every_reply() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.limits.max_pending_output = 64 * 1024;
    s.upstream.command_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(s).await;
    let big = "x".repeat(1024 * 1024);
    let mut c = RawClient::connect(proxy.addr).await;
    assert_eq!(c.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "big", &big]).await, b"+OK\r\n");
    let gets: Vec<&[&str]> = vec![&["GET", "big"]; 8];
    c.send(&gets).await;
    // Read nothing for several command timeouts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let want = format!("${}\r\n{big}\r\n", big.len());
    for i in 0..gets.len() {
        let got = c.frame().await;
        assert!(
            got == want.as_bytes(),
            "reply {i}: {}",
            show_bytes(&got[..got.len().min(80)])
        );
    }
    proxy.shutdown().await;
}

/// Replies Redis sends are carried however long a status or error line or however deep the
/// nesting (a script returns either at will), byte for byte: they are answers, not a broken
/// upstream, so the connection is kept and the upstream stays healthy however often they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_and_deep_nesting_are_replies_not_outages() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.upstream.connections = 1;
    let proxy = Proxy::start(s).await;
    let mut direct = RawClient::connect(redis.addr()).await;
    let mut via = RawClient::connect(proxy.addr).await;
    let mut other = RawClient::connect(proxy.addr).await;
    let scripts = [
        "return redis.status_reply(string.rep('x', 70000))",
        "return redis.error_reply('ERR ' .. string.rep('x', 70000))",
        "local t = {} local cur = t \
         for i = 1, 5000 do local n = {} cur[1] = n cur = n end return t",
    ];
    for _ in 0..3 {
        for script in scripts {
            let cmd = ["EVAL", script, "0"];
            let want = direct.cmd(&cmd).await;
            let got = via.cmd(&cmd).await;
            assert!(
                got == want,
                "{} bytes through keywarden, {} from Redis: {}",
                got.len(),
                want.len(),
                show_bytes(&got[..got.len().min(80)])
            );
            assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n");
        }
    }
    let info = String::from_utf8_lossy(&via.cmd(&["INFO", "keywarden"]).await).into_owned();
    assert!(info.contains("upstream_state:healthy"), "{info}");
    proxy.shutdown().await;
}

/// A RESP3 push answers no request. On a shared connection no client owns it, so it is
/// dropped and never moves the pairing: each client still gets exactly its own replies, in
/// order (here the push Redis sends for DEBUG PROTOCOL push, pipelined with more requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pushes_never_pair_with_requests_on_a_shared_connection() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::for_upstream(&redis).await;
    let cmds: &[&[&str]] = &[&["DEBUG", "PROTOCOL", "push"], &["PING"], &["ECHO", "hi"]];
    let mut direct = RawClient::connect(redis.addr()).await;
    direct.cmd(&["HELLO", "3"]).await;
    direct.send(cmds).await;
    let mut want = Vec::new();
    while want.len() < cmds.len() {
        let frame = direct.frame().await;
        if !frame.starts_with(b">") {
            want.push(frame);
        }
    }
    let mut via = RawClient::connect(proxy.addr).await;
    via.cmd(&["HELLO", "3"]).await;
    for _ in 0..3 {
        let got = via.run(cmds).await;
        let shown = |f: &[Vec<u8>]| f.iter().map(|r| show_bytes(r)).collect::<Vec<_>>();
        assert_eq!(shown(&got), shown(&want));
    }
    assert_eq!(via.cmd(&["ECHO", "after"]).await, b"$5\r\nafter\r\n");
    proxy.shutdown().await;
}
