//! The `keywarden` binary itself: `check-config`, flags, and graceful shutdown on SIGTERM.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

#[test]
fn check_config_accepts_the_example() {
    let out = Command::new(BIN)
        .args(["check-config", "config/keywarden.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "config/keywarden.toml: ok"
    );
}

#[test]
fn check_config_lists_every_problem_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"nowhere\"\n[upstream]\naddress = \"localhost\"\ncommand_timeout = \"5\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    for place in ["listen", "upstream.address", "upstream.command_timeout"] {
        assert!(
            text.lines().any(|l| l.starts_with(place)),
            "{place} missing in:\n{text}"
        );
    }

    std::fs::write(&path, "[upstream]\nadress = \"127.0.0.1:6379\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(":2:1") && text.contains("adress"), "{text}");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(redis: &RedisServer) -> (Running, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["--config", "config/keywarden.toml"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &redis.addr()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "keywarden did not start listening"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (Running(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let redis = RedisServer::start();
    let (mut proxy, port) = start_binary(&redis);
    let mut idle = Client::connect(("127.0.0.1", port)).await;
    assert_eq!(idle.cmd(&["PING"]).await, simple("PONG"));
    let mut slow = Client::connect(("127.0.0.1", port)).await;
    slow.send(&["BLPOP", "q", "0.5"]).await;
    wait_until_blocked(&redis).await;

    unsafe { libc::kill(proxy.0.id() as i32, libc::SIGTERM) };
    assert!(idle.closed().await, "idle clients are closed at once");
    assert_eq!(
        slow.reply().await,
        Frame::Null,
        "in-flight request answered"
    );
    assert!(slow.closed().await);

    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "keywarden did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status:?}");
}
