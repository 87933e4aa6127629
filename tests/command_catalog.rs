//! The command table learned from the upstream's `COMMAND`: against a real (module-less)
//! redis-server it learns nothing and misses nothing, and a synthetic reply with commands the
//! built-in 7.0 table lacks (a Redis 8 command, a module command, a new subcommand of a known
//! container, and a module command whose keys need its own code) teaches permissions and routing
//! about the first three and leaves the last unknown.
//!
//! Its own test binary: what is learned is process-wide.

mod support;

use std::time::Duration;

use keywarden::command::{self, learned, Flags};
use keywarden::policy::auth::{CommandAccess, KeyAccess, PasswordHash, User, Users};
use keywarden::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
use keywarden::protocol::request::Request;
use support::*;

const PASSWORD: &str = "catalog-test";

/// Redis 8's HGETDEL, a module's JSON.GET, CLIENT NO-TOUCH (7.2) under the known CLIENT
/// container, and MOD.OWNKEYS, whose keys only its module's code can find, as `COMMAND`
/// (RESP2) describes them.
const SYNTHETIC: &[&[u8]] = &[
    b"*10\r\n$7\r\nhgetdel\r\n:-5\r\n*2\r\n+write\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*3\r\n+@write\r\n+@hash\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*3\r\n+RW\r\n+access\r\n+delete\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n",
    b"*10\r\n$8\r\njson.get\r\n:-2\r\n*2\r\n+readonly\r\n+module\r\n:1\r\n:1\r\n:1\r\n*2\r\n+@read\r\n+@module\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n",
    b"*10\r\n$6\r\nclient\r\n:-2\r\n*0\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@slow\r\n*0\r\n*0\r\n*1\r\n*10\r\n$15\r\nclient|no-touch\r\n:3\r\n*3\r\n+noscript\r\n+loading\r\n+stale\r\n:0\r\n:0\r\n:0\r\n*2\r\n+@slow\r\n+@connection\r\n*0\r\n*0\r\n*0\r\n",
    b"*10\r\n$8\r\nmod.bpop\r\n:3\r\n*2\r\n+write\r\n+blocking\r\n:1\r\n:1\r\n:1\r\n*2\r\n+@write\r\n+@blocking\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*1\r\n+RW\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n",
    b"*10\r\n$11\r\nmod.ownkeys\r\n:-2\r\n*2\r\n+write\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@write\r\n*0\r\n*0\r\n*0\r\n",
    // A module's search: no keys declared, yet it reads keys.
    b"*10\r\n$9\r\nft.search\r\n:-2\r\n*1\r\n+readonly\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@read\r\n*0\r\n*0\r\n*0\r\n",
    // A command that says it needs no login.
    b"*10\r\n$8\r\nmod.open\r\n:-2\r\n*2\r\n+readonly\r\n+no_auth\r\n:1\r\n:1\r\n:1\r\n*2\r\n+@read\r\n+@module\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n",
    // A container whose only subcommand finds its keys in its own code.
    b"*10\r\n$7\r\nmod.cfg\r\n:-2\r\n*0\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@slow\r\n*0\r\n*0\r\n*1\r\n*10\r\n$11\r\nmod.cfg|set\r\n:-3\r\n*1\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@write\r\n*0\r\n*0\r\n*0\r\n",
];

/// The real reply with the synthetic entries appended.
fn with_synthetic(real: &[u8]) -> Vec<u8> {
    let header_end = real.iter().position(|&b| b == b'\n').unwrap() + 1;
    let count: usize = std::str::from_utf8(&real[1..header_end - 2])
        .unwrap()
        .parse()
        .unwrap();
    let mut out = format!("*{}\r\n", count + SYNTHETIC.len()).into_bytes();
    out.extend_from_slice(&real[header_end..]);
    for entry in SYNTHETIC {
        out.extend_from_slice(entry);
    }
    out
}

fn keys_of(args: &[&str]) -> Vec<u32> {
    command::keys(&Request::from_args(args))
        .map(|k| k.to_vec())
        .unwrap_or_default()
}

async fn info(c: &mut Client) -> String {
    match c.cmd(&["INFO", "keywarden"]).await {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_the_builtin_table_lacks_are_learned_from_the_upstream() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.addr());
    s.keyspaces = Keyspaces::new(
        vec![Keyspace {
            name: "scratch".into(),
            patterns: vec![Pattern::parse(b"tmp:")],
            mode: Mode::LocalOnly,
        }],
        Mode::FailClosed,
    );
    s.users = Users::new(vec![
        User::new(
            "admin".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::All,
            KeyAccess::All,
        ),
        User::new(
            "tenant".into(),
            PasswordHash::of(PASSWORD.as_bytes()),
            CommandAccess::All,
            KeyAccess::Only {
                patterns: vec![Pattern::parse(b"report:")],
                keyspaces: Vec::new(),
            },
        ),
    ]);
    let proxy = Proxy::start(s).await;
    let mut admin = proxy.client().await;
    assert_eq!(admin.cmd(&["AUTH", "admin", PASSWORD]).await, simple("OK"));

    // The proxy reads the real upstream's table at startup: the same commands as the built-in
    // one (Debian's redis-server is 7.0.15, the table's version).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = info(&mut admin).await;
        if info.contains("upstream_commands:read,learned=0,unknown_keys=0,missing=0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut direct = RawClient::connect(redis.addr()).await;
    let real = direct.cmd(&["COMMAND"]).await;
    let table = learned::from_reply(&real).unwrap();
    assert_eq!(table.added().count(), 0);
    assert!(table.missing().is_empty(), "{:?}", table.missing());
    assert!(table.undecidable().is_empty(), "{:?}", table.undecidable());

    // Before learning, HGETDEL is unknown: refused to the key-limited tenant whatever its key.
    let mut tenant = proxy.client().await;
    assert_eq!(
        tenant.cmd(&["AUTH", "tenant", PASSWORD]).await,
        simple("OK")
    );
    let unknown = tenant
        .cmd(&["HGETDEL", "report:1", "FIELDS", "1", "f"])
        .await;
    assert!(is_error(&unknown, "NOPERM"), "{unknown:?}");

    // A newer upstream's table: the synthetic commands.
    let table = learned::from_reply(&with_synthetic(&real)).unwrap();
    let added: Vec<&str> = table.added().collect();
    assert_eq!(
        added,
        [
            "ft.search",
            "hgetdel",
            "json.get",
            "mod.bpop",
            "mod.open",
            "client|no-touch"
        ]
    );
    assert_eq!(
        table.undecidable(),
        ["mod.ownkeys", "mod.cfg|set", "mod.cfg"]
    );
    assert!(table.missing().is_empty());
    learned::install(table);

    let hgetdel = command::lookup(b"HGETDEL", None).expect("learned");
    assert!(hgetdel.flags().contains(Flags::LEARNED | Flags::WRITE));
    assert_eq!(keys_of(&["HGETDEL", "h", "FIELDS", "1", "f"]), [1]);
    assert_eq!(keys_of(&["json.get", "doc", "$.a"]), [1]);
    assert!(command::lookup(b"client", Some(b"NO-TOUCH")).is_some());
    assert!(command::lookup(b"client", Some(b"setname")).is_some());
    assert!(command::lookup(b"mod.ownkeys", None).is_none());
    assert!(command::lookup(b"mod.cfg", Some(b"set")).is_none());
    // An upstream's no_auth is not taken.
    let open = command::lookup(b"mod.open", None).unwrap();
    assert!(!open.flags().contains(Flags::NO_AUTH));
    // A module's blocking command gets a connection of its own, as BLPOP does.
    assert!(matches!(
        command::disposition(&Request::from_args(&["MOD.BPOP", "k", "0"])),
        command::Disposition::Dedicated(s) if s.blocking
    ));
    assert_eq!(
        command::disposition(&Request::from_args(&["HGETDEL", "h", "FIELDS", "1", "f"])),
        command::Disposition::Shared
    );

    // Permissions follow the learned key specs: the tenant's own key passes (Redis 7.0 then
    // answers that it does not know the command: it was forwarded), another key is refused
    // with Redis's key error, as for any known command.
    let forwarded = tenant
        .cmd(&["HGETDEL", "report:1", "FIELDS", "1", "f"])
        .await;
    assert!(
        is_error(&forwarded, "ERR unknown command 'HGETDEL'"),
        "{forwarded:?}"
    );
    let other = tenant
        .cmd(&["HGETDEL", "secret:1", "FIELDS", "1", "f"])
        .await;
    assert!(
        is_error(
            &other,
            "NOPERM this user has no permissions to access one of the keys"
        ),
        "{other:?}"
    );
    let json = tenant.cmd(&["JSON.GET", "secret:doc"]).await;
    assert!(
        is_error(
            &json,
            "NOPERM this user has no permissions to access one of the keys"
        ),
        "{json:?}"
    );
    // A learned command without keys may read any: refused to users with key limits.
    let search = tenant.cmd(&["FT.SEARCH", "idx", "*"]).await;
    assert!(
        is_error(
            &search,
            "NOPERM this user has no permissions to run the 'ft.search'"
        ),
        "{search:?}"
    );
    // A client that has not logged in runs no learned command, whatever the upstream says.
    let mut anonymous = proxy.client().await;
    let open = anonymous.cmd(&["MOD.OPEN", "report:1"]).await;
    assert!(is_error(&open, "NOAUTH"), "{open:?}");
    // Keys only a module's code can find stay unknown: refused to users with key limits.
    let own = tenant.cmd(&["MOD.OWNKEYS", "report:1"]).await;
    assert!(is_error(&own, "NOPERM"), "{own:?}");
    assert!(
        !is_error(
            &own,
            "NOPERM this user has no permissions to access one of the keys"
        ),
        "{own:?}"
    );

    // Routing follows the learned keys too: a local_only key is never sent upstream, and the
    // local store does not run HGETDEL, so it is refused rather than forwarded.
    let local = admin.cmd(&["HGETDEL", "tmp:h", "FIELDS", "1", "f"]).await;
    assert!(is_error(&local, "UNSUPPORTED 'hgetdel'"), "{local:?}");
    proxy.shutdown().await;
}
