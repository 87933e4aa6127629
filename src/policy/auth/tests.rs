use super::*;
use crate::command::lookup;
use crate::policy::keyspace::{Keyspace, Mode};

/// `rl:` is keyspace 0 ("limits"), `cache:*` keyspace 1 ("page-cache"); the rest default.
fn keyspaces() -> Keyspaces {
    let ks = |name: &str, pattern: &str| Keyspace {
        name: name.to_owned(),
        patterns: vec![Pattern::parse(pattern.as_bytes())],
        mode: Mode::Degraded,
    };
    Keyspaces::new(
        vec![ks("limits", "rl:"), ks("page-cache", "cache:*")],
        Mode::FailClosed,
    )
}

fn categories(names: &[&str]) -> CommandAccess {
    CommandAccess::of(Categories::of(
        &names
            .iter()
            .map(|n| Categories::from_name(n).unwrap())
            .collect::<Vec<_>>(),
    ))
}

/// admin: everything; reader: @read on page-cache and `report:*`; limiter: @string and
/// @fast on limits; default: the `default` user with @connection on the default keyspace.
fn users() -> Users {
    Users::new(vec![
        User::new(
            "admin".into(),
            PasswordHash::of(b"admin-pw"),
            CommandAccess::All,
            KeyAccess::All,
        ),
        User::new(
            "reader".into(),
            PasswordHash::of(b"reader-pw"),
            categories(&["read"]),
            KeyAccess::Only {
                patterns: vec![Pattern::parse(b"report:*")],
                keyspaces: vec![Membership::Named(1)],
            },
        ),
        User::new(
            "limiter".into(),
            PasswordHash::of(b"limiter-pw"),
            categories(&["string", "fast", "scripting"]),
            KeyAccess::Only {
                patterns: vec![],
                keyspaces: vec![Membership::Named(0)],
            },
        ),
        // Every key, some categories: a script could still run any command.
        User::new(
            "scripter".into(),
            PasswordHash::of(b"scripter-pw"),
            categories(&["read", "scripting"]),
            KeyAccess::All,
        ),
        // Only what acts on the server: the admin category.
        User::new(
            "operator".into(),
            PasswordHash::of(b"operator-pw"),
            categories(&["admin"]),
            KeyAccess::All,
        ),
        // Every command, some keys: a command the table does not know names keys unseen.
        User::new(
            "tenant".into(),
            PasswordHash::of(b"tenant-pw"),
            CommandAccess::All,
            KeyAccess::Only {
                patterns: vec![Pattern::parse(b"t1:*")],
                keyspaces: vec![],
            },
        ),
        User::new(
            DEFAULT_USER.into(),
            PasswordHash::of(b"default-pw"),
            categories(&["connection", "read"]),
            KeyAccess::Only {
                patterns: vec![],
                keyspaces: vec![Membership::Default],
            },
        ),
    ])
}

fn id_of(users: &Users, name: &str) -> UserId {
    users.iter().find(|(_, u)| u.name() == name).unwrap().0
}

#[test]
fn passwords_are_checked() {
    let users = users();
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("admin", "admin-pw", Some("admin")),
        ("reader", "reader-pw", Some("reader")),
        ("default", "default-pw", Some("default")),
        ("admin", "reader-pw", None),
        ("admin", "", None),
        ("admin", "admin-pw ", None),
        ("ADMIN", "admin-pw", None),
        ("nobody", "admin-pw", None),
        ("", "", None),
    ];
    for (name, password, expected) in cases {
        let got = users
            .authenticate(name.as_bytes(), password.as_bytes())
            .map(|id| users.user(id).name());
        assert_eq!(got, *expected, "{name}/{password}");
    }
}

#[test]
fn auth_forms_answer_as_redis() {
    let configured = users();
    let open = Users::open();
    let requirepass = Users::new(vec![User::requirepass(PasswordHash::of(b"s3cret"))]);
    let only_named = Users::new(vec![User::new(
        "app".into(),
        PasswordHash::of(b"pw"),
        CommandAccess::All,
        KeyAccess::All,
    )]);
    type Case<'a> = (
        &'a Users,
        Option<&'a str>,
        &'a str,
        Result<&'a str, AuthError>,
    );
    let cases: &[Case] = &[
        (&open, None, "x", Err(AuthError::NoPasswordConfigured)),
        // `nopass`: the open default user takes any password, as Redis does.
        (&open, Some("default"), "anything", Ok("default")),
        (&open, Some("other"), "x", Err(AuthError::WrongPass)),
        (&requirepass, None, "s3cret", Ok("default")),
        (&requirepass, Some("default"), "s3cret", Ok("default")),
        (&requirepass, None, "wrong", Err(AuthError::WrongPass)),
        (&configured, None, "default-pw", Ok("default")),
        (&configured, Some("reader"), "reader-pw", Ok("reader")),
        (
            &configured,
            Some("reader"),
            "admin-pw",
            Err(AuthError::WrongPass),
        ),
        // Users but no `default`: the password-only form has no one to log in as.
        (&only_named, None, "pw", Err(AuthError::WrongPass)),
        (&only_named, Some("app"), "pw", Ok("app")),
    ];
    for (users, name, password, expected) in cases {
        let got = users
            .auth(name.map(str::as_bytes), password.as_bytes())
            .map(|id| users.user(id).name());
        assert_eq!(got, *expected, "{name:?}/{password}");
    }
}

#[test]
fn who_must_authenticate() {
    let open = Users::open();
    assert!(!open.required());
    let default = open.default_user().unwrap();
    assert_eq!(open.user(default).name(), "default");
    assert_eq!(Users::new(Vec::new()), open);
    assert_eq!(Users::default(), open);
    let configured = users();
    assert!(configured.required());
    assert_eq!(configured.default_user(), None);
}

/// (user, command, subcommand, keys, expected)
type CheckCase<'a> = (
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    &'a [&'a str],
    Result<(), Denial>,
);

fn run_checks(users: &Users, cases: &[CheckCase]) {
    let keyspaces = keyspaces();
    for (who, name, sub, keys, expected) in cases {
        let id = who.map(|w| id_of(users, w));
        let cmd = lookup(name.as_bytes(), sub.map(str::as_bytes));
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        assert_eq!(
            users.check(id, cmd, &keys, &keyspaces),
            *expected,
            "{who:?} {name} {sub:?} {keys:?}"
        );
    }
}

#[test]
fn permissions_are_enforced() {
    use Denial::*;
    let noperm = |name: &str| Err(Command(name.to_owned()));
    let cases: &[CheckCase] = &[
        // Unauthenticated: only the no_auth commands.
        (None, "get", None, &["k"], Err(NoAuth)),
        (None, "ping", None, &[], Err(NoAuth)),
        (None, "auth", None, &[], Ok(())),
        (None, "hello", None, &[], Ok(())),
        (None, "quit", None, &[], Ok(())),
        (None, "reset", None, &[], Ok(())),
        (None, "nosuch", None, &[], Err(UnknownCommand)),
        // "all": anything, any key, unknown commands go on to the upstream.
        (Some("admin"), "set", None, &["anything"], Ok(())),
        (Some("admin"), "config", Some("set"), &[], Ok(())),
        (Some("admin"), "eval", None, &["rl:1", "x"], Ok(())),
        (Some("admin"), "nosuch", None, &[], Ok(())),
        // @read: a command in any allowed category passes; others are named as Redis does.
        (Some("reader"), "get", None, &["cache:home"], Ok(())),
        (
            Some("reader"),
            "mget",
            None,
            &["cache:a", "report:1"],
            Ok(()),
        ),
        (Some("reader"), "set", None, &["cache:a"], noperm("set")),
        (
            Some("reader"),
            "client",
            Some("list"),
            &[],
            noperm("client|list"),
        ),
        (Some("reader"), "ping", None, &[], noperm("ping")),
        (Some("reader"), "nosuch", None, &[], Err(UnknownCommand)),
        // ...but AUTH, HELLO, QUIT and RESET need no category.
        (Some("reader"), "auth", None, &[], Ok(())),
        (Some("reader"), "hello", None, &[], Ok(())),
        (Some("reader"), "reset", None, &[], Ok(())),
        // Keys: by pattern or by keyspace, every key of the command.
        (Some("reader"), "get", None, &["report:2024"], Ok(())),
        (Some("reader"), "get", None, &["rl:user:1"], Err(Key)),
        (Some("reader"), "get", None, &["other"], Err(Key)),
        (Some("reader"), "mget", None, &["cache:a", "rl:x"], Err(Key)),
        (
            Some("reader"),
            "mget",
            None,
            &["report:1", "nope"],
            Err(Key),
        ),
        // A command with no keys needs only the category.
        (Some("reader"), "dbsize", None, &[], Ok(())),
        // The command is judged before the keys.
        (Some("reader"), "set", None, &["other"], noperm("set")),
        (Some("limiter"), "incr", None, &["rl:user:1"], Ok(())),
        (Some("limiter"), "incr", None, &["cache:x"], Err(Key)),
        (Some("limiter"), "get", None, &["rl:x"], Ok(())), // @string, not @read
        // Code the proxy cannot see into runs upstream with every permission: scripts and
        // functions, and what loads them, only for a user with every command and every key.
        (Some("limiter"), "eval", None, &["rl:1"], noperm("eval")),
        (Some("limiter"), "eval", None, &[], noperm("eval")),
        (Some("limiter"), "fcall", None, &["rl:1"], noperm("fcall")),
        (
            Some("limiter"),
            "script",
            Some("load"),
            &[],
            noperm("script|load"),
        ),
        (Some("scripter"), "eval", None, &[], noperm("eval")),
        (Some("scripter"), "evalsha", None, &["x"], noperm("evalsha")),
        (Some("scripter"), "eval_ro", None, &[], noperm("eval_ro")),
        (
            Some("scripter"),
            "evalsha_ro",
            None,
            &[],
            noperm("evalsha_ro"),
        ),
        (Some("scripter"), "fcall_ro", None, &[], noperm("fcall_ro")),
        (
            Some("scripter"),
            "function",
            Some("load"),
            &[],
            noperm("function|load"),
        ),
        (
            Some("scripter"),
            "function",
            Some("delete"),
            &[],
            noperm("function|delete"),
        ),
        (
            Some("scripter"),
            "function",
            Some("restore"),
            &[],
            noperm("function|restore"),
        ),
        (
            Some("scripter"),
            "function",
            Some("flush"),
            &[],
            noperm("function|flush"),
        ),
        (
            Some("scripter"),
            "script",
            Some("load"),
            &[],
            noperm("script|load"),
        ),
        // What only reads or stops code is the category's to allow.
        (Some("scripter"), "script", Some("exists"), &[], Ok(())),
        (Some("scripter"), "function", Some("list"), &[], Ok(())),
        (Some("scripter"), "script", Some("kill"), &[], Ok(())),
        (Some("scripter"), "get", None, &["anything"], Ok(())),
        (Some("tenant"), "eval", None, &[], noperm("eval")),
        (Some("admin"), "function", Some("load"), &[], Ok(())),
        // A command the table does not know: a user with key limits is refused (its keys
        // cannot be checked), named as Redis names a command it refuses.
        (Some("tenant"), "nosuch", None, &[], Err(Unclassified)),
        (Some("tenant"), "get", None, &["t1:x"], Ok(())),
        (Some("scripter"), "nosuch", None, &[], Err(UnknownCommand)),
        // What Redis flags `admin` acts on the server as a whole or on other clients: only for
        // a user with every command or the admin category, whatever else the user has.
        (
            Some("default"),
            "client",
            Some("list"),
            &[],
            noperm("client|list"),
        ),
        (
            Some("default"),
            "client",
            Some("kill"),
            &[],
            noperm("client|kill"),
        ),
        (
            Some("default"),
            "client",
            Some("pause"),
            &[],
            noperm("client|pause"),
        ),
        (Some("default"), "client", Some("setname"), &[], Ok(())),
        (Some("default"), "client", Some("id"), &[], Ok(())),
        (Some("operator"), "client", Some("kill"), &[], Ok(())),
        (Some("operator"), "config", Some("set"), &[], Ok(())),
        (Some("operator"), "shutdown", None, &[], Ok(())),
        (Some("operator"), "get", None, &["x"], noperm("get")),
        (Some("admin"), "client", Some("pause"), &[], Ok(())),
        (Some("tenant"), "config", Some("set"), &[], Ok(())),
        // Keyless commands that act on every key need every key.
        (Some("tenant"), "flushall", None, &[], noperm("flushall")),
        (Some("tenant"), "flushdb", None, &[], noperm("flushdb")),
        (Some("tenant"), "swapdb", None, &[], noperm("swapdb")),
        (Some("admin"), "flushall", None, &[], Ok(())),
        // `default` limited to the default keyspace: keys of no named keyspace.
        (Some("default"), "get", None, &["plain"], Ok(())),
        (Some("default"), "get", None, &["rl:1"], Err(Key)),
        (Some("default"), "ping", None, &[], Ok(())),
    ];
    run_checks(&users(), cases);
}

#[test]
fn the_open_default_user_may_do_everything() {
    let cases: &[CheckCase] = &[
        (Some("default"), "flushall", None, &[], Ok(())),
        (Some("default"), "get", None, &["rl:1"], Ok(())),
        (Some("default"), "eval", None, &["x"], Ok(())),
        (Some("default"), "nosuch", None, &[], Ok(())),
    ];
    run_checks(&Users::open(), cases);
    let open = Users::open();
    assert_eq!(
        open.user(open.default_user().unwrap()).keys(),
        &KeyAccess::All
    );
}

#[test]
fn every_category_is_all() {
    assert_eq!(CommandAccess::of(every_category()), CommandAccess::All);
    assert!(matches!(
        CommandAccess::of(Categories::READ),
        CommandAccess::Categories(_)
    ));
    // A user listing no category can still authenticate and leave, nothing else.
    let none = CommandAccess::of(Categories::empty());
    for (name, allowed) in [
        ("auth", true),
        ("quit", true),
        ("ping", false),
        ("get", false),
    ] {
        assert_eq!(
            none.allows(lookup(name.as_bytes(), None).unwrap()),
            allowed,
            "{name}"
        );
    }
}

#[test]
fn digests_are_read_from_hex() {
    // printf %s password | sha256sum
    let hex = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    let hash = PasswordHash::from_hex(hex).unwrap();
    assert!(hash.matches(b"password"));
    assert!(!hash.matches(b"Password"));
    assert_eq!(PasswordHash::from_hex(&hex.to_uppercase()), Some(hash));
    for bad in [
        "",
        &hex[1..],
        &format!("{hex}0"),
        &hex.replace('e', "g"),
        &hex.replace('5', " "),
    ] {
        assert_eq!(PasswordHash::from_hex(bad), None, "{bad}");
    }
    // Multi-byte characters are not hex digits and do not panic the reader.
    assert_eq!(PasswordHash::from_hex(&"é".repeat(32)), None);
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let debug = format!("{:?}", users());
    assert!(debug.contains("PasswordHash(<redacted>)"), "{debug}");
    let hex = |pw: &[u8]| -> String {
        Sha256::digest(pw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for pw in [&b"admin-pw"[..], b"reader-pw"] {
        assert!(!debug.contains(&hex(pw)), "{debug}");
        assert!(!debug.contains(std::str::from_utf8(pw).unwrap()));
    }
    assert!(!debug.contains(&format!("{:?}", Sha256::digest(b"admin-pw").as_slice())));
}

#[test]
fn error_texts_are_redis_7_0s() {
    // Byte for byte what redis-server 7.0.15 replies (checked against a live server).
    let cases: &[(String, &str)] = &[
        (
            Denial::NoAuth.to_string(),
            "-NOAUTH Authentication required.\r\n",
        ),
        (
            Denial::Command("get".into()).to_string(),
            "-NOPERM this user has no permissions to run the 'get' command\r\n",
        ),
        (
            Denial::Command("client|list".into()).to_string(),
            "-NOPERM this user has no permissions to run the 'client|list' command\r\n",
        ),
        (
            Denial::Key.to_string(),
            "-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
        ),
        (
            AuthError::WrongPass.to_string(),
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        ),
        (
            AuthError::NoPasswordConfigured.to_string(),
            "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
        ),
        (
            AuthError::HelloNoAuth.to_string(),
            "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
        ),
    ];
    for (text, wire) in cases {
        assert_eq!(format!("-{text}\r\n"), *wire);
    }
}
