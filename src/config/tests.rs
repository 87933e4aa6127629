//! The configuration pipeline's tests, through `Settings::from_toml_str` as a file is read:
//! the example file, the defaults, parse errors and their places, checks, flags, loading.
//! Sizes and durations are in `tests/units.rs`, users and secrets in `tests/users.rs`.

mod units;
mod users;

use std::time::Duration;

use crate::config::file::line_column;
use crate::config::units::{GIB, KIB, MIB};
use crate::config::{
    AdminSettings, ConfigError, EventSettings, HealthSettings, Limits, LocalStoreSettings,
    LogFormat, LogSettings, Overrides, Problem, Settings, UpstreamSettings,
};
use crate::policy::auth::Users;
use crate::policy::keyspace::{Eviction, Keyspace, Keyspaces, Mode, Pattern, StoreShare};

const EXAMPLE: &str = include_str!("../../config/keywarden.toml");
const LOCAL_ONLY: &str = include_str!("../../config/local-only.toml");

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml_str(text, "test.toml", &Overrides::default())
}

/// The problems of a text that must fail, as `place: message` lines.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(settings) => panic!("expected problems, got {settings:?}"),
        Err(error) => error.problems.iter().map(Problem::to_string).collect(),
    }
}

/// Asserts exactly one problem, at `place`, whose message contains `needle`.
fn assert_problem(text: &str, place: &str, needle: &str) {
    let error = parse(text).expect_err(text);
    assert_eq!(error.problems.len(), 1, "{text}: {error}");
    let problem = &error.problems[0];
    assert_eq!(problem.place, place, "{text}: {error}");
    assert!(
        problem.message.contains(needle),
        "{text}: {error:?} lacks {needle:?}"
    );
}

#[test]
fn example_file_is_the_defaults() {
    let settings =
        Settings::from_toml_str(EXAMPLE, "config/keywarden.toml", &Overrides::default()).unwrap();
    // The example shows one keyspace of each mode; everything else is the defaults.
    let modes: Vec<_> = settings.keyspaces.iter().map(|k| k.mode).collect();
    assert_eq!(modes, [Mode::FailClosed, Mode::Degraded, Mode::LocalOnly]);
    let defaults = Settings::default();
    assert!(defaults.keyspaces.iter().next().is_none());
    // ...and gives the local_only one a part of the store of its own.
    let own: Vec<_> = settings
        .local_store
        .shares
        .iter()
        .filter_map(|s| s.max_bytes.map(|b| (s.name.as_str(), b, s.eviction)))
        .collect();
    assert_eq!(own, [("scratch", 16 * MIB, Eviction::Lru)]);
    assert_eq!(
        Settings {
            keyspaces: defaults.keyspaces.clone(),
            local_store: defaults.local_store.clone(),
            ..settings.clone()
        },
        defaults
    );
    assert_eq!(
        settings.local_store.max_bytes,
        defaults.local_store.max_bytes
    );
    assert_eq!(settings.listen, "127.0.0.1:6380".parse().unwrap());
    assert_eq!(settings.upstream.address, "127.0.0.1:6379");
}

#[test]
fn example_file_mentions_every_option() {
    // The example documents every option, so each must be set in it, exactly once: a
    // bare key before the first table, a `table.key` in that table.
    for key in [
        "listen",
        "max_clients",
        "client_idle_timeout",
        "tcp_keepalive",
        "shutdown_timeout",
        "threads",
        "instance_id",
        "requirepass_sha256",
        "default_mode",
        "upstream.address",
        "upstream.connections",
        "upstream.connect_timeout",
        "upstream.command_timeout",
        "upstream.reconnect_backoff_min",
        "upstream.reconnect_backoff_max",
        "upstream.username",
        "upstream.password",
        "tls.listen",
        "tls.cert_file",
        "tls.key_file",
        "tls.ca_file",
        "limits.max_bulk_len",
        "limits.max_multibulk_len",
        "limits.max_inline_len",
        "limits.max_query_buffer",
        "limits.max_pending_output",
        "limits.max_client_output",
        "limits.max_total_output",
        "limits.max_reply_depth",
        "log.format",
        "log.level",
        "local_store.max_bytes",
        "local_store.default_eviction",
        "health.probe_interval",
        "health.probe_timeout",
        "health.failure_threshold",
        "health.success_threshold",
        "events.file",
        "admin.listen",
    ] {
        let (table, field) = match key.split_once('.') {
            Some((table, field)) => (format!("[{table}]"), field),
            None => (String::new(), key),
        };
        let mut current = String::new();
        let mut present = 0;
        for line in EXAMPLE.lines() {
            if line.starts_with('[') {
                current = line.to_owned();
            } else if current == table && line.starts_with(&format!("{field} = ")) {
                present += 1;
            }
        }
        assert_eq!(present, 1, "{key} must be set exactly once in the example");
    }
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Settings::default());
    assert_eq!(
        parse("# only a comment\n\n[upstream]\n[limits]\n[log]\n").unwrap(),
        Settings::default()
    );
    assert_eq!(parse("\u{feff}threads = 1\n").unwrap(), Settings::default());
}

#[test]
fn a_full_file_is_typed() {
    let settings = parse(
        r#"
            listen = "[::1]:7000"
            max_clients = 5
            client_idle_timeout = "1m"
            tcp_keepalive = "0s"
            shutdown_timeout = "1h 30m"
            threads = 0
            instance_id = "edge-1"
            default_mode = "degraded"
            [upstream]
            address = "redis.internal:6390"
            connections = 64
            connect_timeout = "250ms"
            command_timeout = "2s"
            reconnect_backoff_min = "1s"
            reconnect_backoff_max = "1s"
            username = "keywarden"
            password = "upstream secret"
            [limits]
            max_bulk_len = "1MB"
            max_multibulk_len = 1_000
            max_inline_len = "1KiB"
            max_query_buffer = "2gb"
            max_pending_output = "100 KiB"
            max_client_output = "1MiB"
            max_total_output = "3MiB"
            max_reply_depth = 7
            [log]
            format = "text"
            level = "keywarden=debug,warn"
            [[keyspace]]
            name = "limits"
            patterns = ["rl:", "quota:*"]
            mode = "fail_closed"
            [[keyspace]]
            name = "nonces"
            patterns = ["nonce:"]
            mode = "degraded"
            max_bytes = "1MiB"
            eviction = "noeviction"
            [local_store]
            max_bytes = "8MiB"
            default_eviction = "noeviction"
            [health]
            probe_interval = "250ms"
            probe_timeout = "100ms"
            failure_threshold = 2
            success_threshold = 3
            [events]
            file = "/var/log/keywarden/events.jsonl"
            [admin]
            listen = "127.0.0.1:9121"
            "#,
    )
    .unwrap();
    assert_eq!(
        settings,
        Settings {
            listen: "[::1]:7000".parse().unwrap(),
            max_clients: 5,
            client_idle_timeout: Some(Duration::from_secs(60)),
            tcp_keepalive: None,
            shutdown_timeout: Duration::from_secs(5400),
            threads: 0,
            upstream: UpstreamSettings {
                address: "redis.internal:6390".to_owned(),
                connections: 64,
                connect_timeout: Duration::from_millis(250),
                command_timeout: Duration::from_secs(2),
                reconnect_backoff_min: Duration::from_secs(1),
                reconnect_backoff_max: Duration::from_secs(1),
                username: Some("keywarden".to_owned()),
                password: Some("upstream secret".to_owned()),
                tls: None,
                sentinel: None,
                cluster_nodes: Vec::new(),
            },
            limits: Limits {
                max_bulk_len: MIB,
                max_multibulk_len: 1000,
                max_inline_len: KIB,
                max_query_buffer: 2 * GIB,
                max_pending_output: 100 * KIB,
                max_client_output: MIB,
                max_total_output: 3 * MIB,
                max_reply_depth: 7,
            },
            log: LogSettings {
                format: LogFormat::Text,
                level: "keywarden=debug,warn".to_owned()
            },
            instance_id: Some("edge-1".to_owned()),
            keyspaces: Keyspaces::new(
                vec![
                    Keyspace {
                        name: "limits".to_owned(),
                        patterns: vec![Pattern::parse(b"rl:"), Pattern::parse(b"quota:*")],
                        mode: Mode::FailClosed,
                    },
                    Keyspace {
                        name: "nonces".to_owned(),
                        patterns: vec![Pattern::parse(b"nonce:")],
                        mode: Mode::Degraded,
                    }
                ],
                Mode::Degraded
            ),
            users: Users::open(),
            local_store: LocalStoreSettings {
                max_bytes: 8 * MIB,
                shares: vec![
                    StoreShare {
                        name: "nonces".to_owned(),
                        max_bytes: Some(MIB),
                        eviction: Eviction::NoEviction,
                    },
                    StoreShare {
                        name: "default".to_owned(),
                        max_bytes: None,
                        eviction: Eviction::NoEviction,
                    },
                ],
            },
            health: HealthSettings {
                probe_interval: Duration::from_millis(250),
                probe_timeout: Duration::from_millis(100),
                failure_threshold: 2,
                success_threshold: 3,
            },
            events: EventSettings {
                file: Some("/var/log/keywarden/events.jsonl".into()),
            },
            admin: AdminSettings {
                listen: Some("127.0.0.1:9121".parse().unwrap()),
                token: None,
            },
            tls: None,
            source: None,
        }
    );
}

#[test]
fn keyspaces_are_checked() {
    let err = parse(
        r#"
            default_mode = "lenient"
            [[keyspace]]
            name = "a"
            patterns = ["rl:", ""]
            mode = "fail_closed"
            [[keyspace]]
            name = "a"
            patterns = ["rl:"]
            mode = "strict"
            [[keyspace]]
            name = "b"
            patterns = []
            mode = "degraded"
            "#,
    )
    .unwrap_err();
    let places: Vec<&str> = err.problems.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(
        places,
        [
            "default_mode",
            "keyspace[0].patterns",
            "keyspace[1].name",
            "keyspace[1].mode",
            "keyspace[1].patterns",
            "keyspace[2].patterns",
        ],
        "{err}"
    );
    assert!(
        err.to_string().contains("already in keyspace \"a\""),
        "{err}"
    );
}

#[test]
fn keyspace_names_are_plain() {
    for name in ["page-cache", "rl_v2", "tenant.a:cache"] {
        let text =
            format!("[[keyspace]]\nname = {name:?}\npatterns = [\"x:\"]\nmode = \"degraded\"\n");
        assert!(parse(&text).is_ok(), "{name}");
    }
    for name in ["a\"b", "a\\b", "with space", "é"] {
        let text =
            format!("[[keyspace]]\nname = {name:?}\npatterns = [\"x:\"]\nmode = \"degraded\"\n");
        let err = parse(&text).unwrap_err();
        assert!(
            err.to_string()
                .contains("a keyspace name is letters, digits and _ . : - only"),
            "{name}: {err}"
        );
    }
}

#[test]
fn unknown_fields_are_rejected_with_their_place() {
    assert_problem(
        "threads = 1\nbogus = 1\n",
        "test.toml:2:1",
        "bogus: unknown field `bogus`",
    );
    assert_problem(
        "[upstream]\nconnections = 2\n  adress = \"x\"\n",
        "test.toml:3:3",
        "upstream.adress: unknown field `adress`, expected one of",
    );
    assert_problem(
        "[limits]\nmax_bulk = \"1MiB\"\n",
        "test.toml:2:1",
        "limits.max_bulk: unknown field",
    );
    assert_problem(
        "[log]\ncolor = true\n",
        "test.toml:2:1",
        "log.color: unknown field",
    );
    assert_problem(
        "\n[upstreams]\n",
        "test.toml:2:2",
        "upstreams: unknown field `upstreams`",
    );
    assert_problem(
        "upstream = { address = \"h:1\", pool = 3 }\n",
        "test.toml:1:31",
        "upstream.pool: unknown field `pool`",
    );
    assert_problem(
        "upstream.adress = \"h:1\"\n",
        "test.toml:1:10",
        "upstream.adress: unknown field",
    );
}

#[test]
fn wrong_types_are_rejected_with_their_place() {
    assert_problem(
        "max_clients = \"10\"\n",
        "test.toml:1:15",
        "max_clients: invalid type: string \"10\", expected i64",
    );
    assert_problem(
        "[upstream]\naddress = 6379\n",
        "test.toml:2:11",
        "upstream.address: invalid type: integer",
    );
    assert_problem(
        "[limits]\nmax_bulk_len = true\n",
        "test.toml:2:16",
        "limits.max_bulk_len: invalid type: boolean `true`, expected a quoted number with a unit",
    );
    assert_problem(
        "upstream = 1\n",
        "test.toml:1:12",
        "upstream: invalid type: integer",
    );
    assert_problem(
        "# é\nmax_clients = 99999999999999999999\n",
        "test.toml:2:15",
        "number too large",
    );
}

#[test]
fn syntax_errors_have_a_line_and_column() {
    assert_problem(
        "threads = 1\nlisten = \n",
        "test.toml:2:10",
        "invalid string",
    );
    assert_problem(
        "listen = 127.0.0.1:6380\n",
        "test.toml:1:15",
        "expected newline",
    );
    assert_problem("[upstream\n", "test.toml:1:10", "invalid table header");
    assert_problem(
        "threads = 1\nthreads = 2\n",
        "test.toml:2:1",
        "duplicate key",
    );
}

#[test]
fn line_column_counts_characters() {
    let text = "a\né = 1\nxyz";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 2), (2, 1));
    assert_eq!(line_column(text, 4), (2, 2)); // after the two-byte é
    assert_eq!(line_column(text, 3), (2, 1)); // inside é: its start
    assert_eq!(line_column(text, 100), (3, 4));
}

#[test]
fn counts_are_bounded() {
    assert_problem(
        "max_clients = 0",
        "max_clients",
        "must be at least 1, not 0",
    );
    assert_problem(
        "max_clients = -5",
        "max_clients",
        "must be at least 1, not -5",
    );
    assert_problem("threads = 1025", "threads", "must be between 0 and 1024");
    assert_problem(
        "[upstream]\nconnections = 0",
        "upstream.connections",
        "must be between 1 and 64, not 0",
    );
    assert_problem(
        "[upstream]\nconnections = 65",
        "upstream.connections",
        "must be between 1 and 64, not 65",
    );
}

#[test]
fn listen_must_be_a_socket_address() {
    for good in ["0.0.0.0:6380", "[::]:6380", "127.0.0.1:0"] {
        assert_eq!(
            parse(&format!("listen = {good:?}\nprotected_mode = false"))
                .unwrap()
                .listen,
            good.parse().unwrap()
        );
    }
    for bad in [
        "localhost:6380",
        "127.0.0.1",
        ":6380",
        "127.0.0.1:65536",
        "::1:6380",
        "",
    ] {
        assert_problem(
            &format!("listen = {bad:?}"),
            "listen",
            "is not a socket address",
        );
    }
}

#[test]
fn admin_listen_is_off_or_a_socket_address_of_its_own() {
    assert_eq!(Settings::default().admin.listen, None);
    assert_eq!(parse("[admin]\nlisten = \"\"").unwrap().admin.listen, None);
    // (Beyond loopback with a token: see tests/admin.rs.)
    let token =
        "token_sha256 = \"1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0\"";
    for good in ["127.0.0.1:9121", "[::1]:9121", "0.0.0.0:0"] {
        assert_eq!(
            parse(&format!("[admin]\nlisten = {good:?}\n{token}"))
                .unwrap()
                .admin
                .listen,
            Some(good.parse().unwrap())
        );
    }
    for bad in [
        "localhost:9121",
        "127.0.0.1",
        ":9121",
        "http://127.0.0.1:9121",
    ] {
        assert_problem(
            &format!("[admin]\nlisten = {bad:?}"),
            "admin.listen",
            "is not a socket address",
        );
    }
    assert_problem(
        "listen = \"127.0.0.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"",
        "admin.listen",
        "\"127.0.0.1:7000\" is the client `listen` address; choose another port",
    );
    // Both on "any free port" is fine: they get different ones.
    let both = parse("listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"");
    assert!(both.is_ok(), "{both:?}");
    assert_problem(
        "[admin]\nport = 1",
        "test.toml:2:1",
        "admin.port: unknown field `port`, expected `listen`",
    );
}

#[test]
fn upstream_address_must_be_host_port() {
    for good in [
        "127.0.0.1:6379",
        "localhost:6379",
        "redis-0.redis.svc.cluster.local:6379",
        "[::1]:6379",
        "my_host:1",
    ] {
        assert_eq!(
            parse(&format!("[upstream]\naddress = {good:?}"))
                .unwrap()
                .upstream
                .address,
            good
        );
    }
    for (bad, needle) in [
        ("localhost", "\"localhost\" is not host:port (e.g."),
        ("", "\"\" is not host:port"),
        (":6379", "\"\" is not a host name or IP address"),
        ("::1:6379", "an IPv6 address needs brackets"),
        ("[::1:6379", "an IPv6 address needs brackets"),
        ("[nope]:6379", "\"[nope]\" is not a host name"),
        ("redis host:6379", "is not a host name"),
        ("localhost:0", "the port must be 1 to 65535, not \"0\""),
        ("localhost:65536", "the port must be 1 to 65535"),
        ("localhost:", "the port must be 1 to 65535, not \"\""),
        ("redis://localhost:6379", "is a URL, not host:port"),
    ] {
        assert_problem(
            &format!("[upstream]\naddress = {bad:?}"),
            "upstream.address",
            needle,
        );
    }
}

#[test]
fn log_settings_are_checked() {
    for good in [
        "info",
        "INFO",
        "warn",
        "off",
        "keywarden=debug",
        "keywarden=debug,info",
        "keywarden::proxy::session=trace,warn",
    ] {
        assert_eq!(
            parse(&format!("[log]\nlevel = {good:?}"))
                .unwrap()
                .log
                .level,
            good
        );
    }
    assert_problem(
        "[log]\nlevel = \"inof\"",
        "log.level",
        "\"inof\" is not a level",
    );
    assert_problem(
        "[log]\nlevel = \"warning\"",
        "log.level",
        "e.g. \"warning=debug\"",
    );
    assert_problem(
        "[log]\nlevel = \"keywarden=loud\"",
        "log.level",
        "is not a tracing filter",
    );
    assert_problem("[log]\nlevel = \"\"", "log.level", "is empty");
    // Found by the config fuzzer: tracing-subscriber's filter parser slices the text by bytes
    // and panics inside a multi-byte character, so such text never reaches it.
    assert_problem(
        "[log]\nlevel = \"i\u{fffd}tion, to try the\u{fffd}[{x=\u{fffd}}]\"",
        "log.level",
        "is not ASCII",
    );
    // Found by the config fuzzer: a span or field filter's value is a regular expression, and
    // compiling a crafted one took the loader (and so a hot reload) many seconds. keywarden's
    // filter is levels and targets only.
    for slow in [
        "keywarden[span{field=x}]=debug",
        "[{D.vvv=vvvv1vvvvvvttttttttttttttttttttt|ttt..........................vvvvvvv}]",
        "keywarden[span]=debug",
        "key warden=debug",
        "keywarden=debug=info",
    ] {
        let started = std::time::Instant::now();
        assert_problem(
            &format!("[log]\nlevel = {slow:?}"),
            "log.level",
            "a level, or target=level",
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    assert_problem(
        "[log]\nformat = \"xml\"",
        "log.format",
        "\"xml\" is not a log format (json or text)",
    );
    assert_problem(
        "[log]\nformat = \"JSON\"",
        "log.format",
        "is not a log format",
    );
}

#[test]
fn backoff_min_must_not_exceed_max() {
    assert_problem(
        "[upstream]\nreconnect_backoff_min = \"1s\"\nreconnect_backoff_max = \"50ms\"\n",
        "upstream.reconnect_backoff_min",
        "1s is more than upstream.reconnect_backoff_max (50ms)",
    );
    // The default maximum counts too.
    assert_problem(
        "[upstream]\nreconnect_backoff_min = \"100ms\"\n",
        "upstream.reconnect_backoff_min",
        "(50ms)",
    );
    // No second complaint about a value that is already wrong.
    assert_problem(
        "[upstream]\nreconnect_backoff_min = \"100\"\nreconnect_backoff_max = \"5ms\"\n",
        "upstream.reconnect_backoff_min",
        "no unit",
    );
}

#[test]
fn several_problems_are_reported_together() {
    let found = problems(
        r#"
            listen = "localhost"
            max_clients = 0
            shutdown_timeout = 5
            [upstream]
            address = "localhost"
            connections = 100
            command_timeout = "0s"
            [limits]
            max_inline_len = "64"
            [log]
            format = "yaml"
            level = "verbose"
            "#,
    );
    let places: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        places,
        [
            "listen",
            "max_clients",
            "shutdown_timeout",
            "upstream.address",
            "upstream.connections",
            "upstream.command_timeout",
            "limits.max_inline_len",
            "log.format",
            "log.level",
        ],
        "{found:#?}"
    );
    assert_eq!(found[3], "upstream.address: \"localhost\" is not host:port (e.g. \"127.0.0.1:6379\", \"redis.internal:6379\" or \"[::1]:6379\")");
}

#[test]
fn config_error_lists_one_problem_per_line() {
    let error = parse("max_clients = 0\nthreads = -1\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "max_clients: must be at least 1, not 0\nthreads: must be between 0 and 1024, not -1"
    );
}

#[test]
fn overrides_win_over_the_file() {
    let text =
        "listen = \"127.0.0.1:1111\"\n[upstream]\naddress = \"file-host:2222\"\nconnections = 3\n";
    let overrides = Overrides {
        listen: Some("0.0.0.0:7000".to_owned()),
        upstream: Some("flag-host:7001".to_owned()),
        admin_listen: Some("127.0.0.1:9121".to_owned()),
        // Beyond loopback, so it needs a password (protected mode).
        requirepass_sha256: Some(
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8".to_owned(),
        ),
    };
    let settings = Settings::from_toml_str(text, "test.toml", &overrides).unwrap();
    assert_eq!(settings.listen, "0.0.0.0:7000".parse().unwrap());
    assert_eq!(settings.upstream.address, "flag-host:7001");
    assert_eq!(
        settings.admin.listen,
        Some("127.0.0.1:9121".parse().unwrap())
    );
    assert_eq!(
        settings.upstream.connections, 3,
        "the rest of the file still applies"
    );

    let only_listen = Overrides {
        listen: Some("127.0.0.2:7000".to_owned()),
        ..Overrides::default()
    };
    let settings = Settings::from_toml_str(text, "test.toml", &only_listen).unwrap();
    assert_eq!(settings.upstream.address, "file-host:2222");

    // Defaults plus flags, as when no file exists.
    let settings = Settings::from_toml_str("", "defaults", &overrides).unwrap();
    assert_eq!(settings.upstream.address, "flag-host:7001");
    assert_eq!(settings.limits, Limits::default());
}

#[test]
fn bad_overrides_are_validated_and_named() {
    let text = "listen = \"127.0.0.1:1111\"\n[upstream]\naddress = \"file-host:2222\"\n";
    let overrides = Overrides {
        listen: Some("nowhere".to_owned()),
        upstream: Some("nohost".to_owned()),
        admin_listen: None,
        requirepass_sha256: None,
    };
    let error = Settings::from_toml_str(text, "test.toml", &overrides).unwrap_err();
    let lines: Vec<String> = error.problems.iter().map(Problem::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("listen: \"nowhere\" is not a socket address")
            && lines[0].ends_with("(from --listen)"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("upstream.address: \"nohost\" is not host:port")
            && lines[1].ends_with("(from --upstream)"),
        "{lines:?}"
    );
}

#[test]
fn load_reads_files_and_names_missing_ones() {
    let path =
        std::env::temp_dir().join(format!("keywarden-config-test-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[upstream]\naddress = \"h:1\"\nconect_timeout = \"1s\"\n",
    )
    .unwrap();
    let error = Settings::load(&path, &Overrides::default()).unwrap_err();
    assert_eq!(error.problems[0].place, format!("{}:3:1", path.display()));
    assert!(error.problems[0]
        .message
        .starts_with("upstream.conect_timeout: unknown field"));
    std::fs::write(&path, "[upstream]\naddress = \"h:1\"\n").unwrap();
    assert_eq!(
        Settings::load(&path, &Overrides::default())
            .unwrap()
            .upstream
            .address,
        "h:1"
    );
    std::fs::remove_file(&path).unwrap();

    let error = Settings::load(&path, &Overrides::default()).unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert_eq!(error.problems[0].place, path.display().to_string());
    assert!(
        error.problems[0].message.starts_with("cannot read: "),
        "{error}"
    );
}

#[test]
fn the_quick_start_config_serves_every_key_locally() {
    let settings =
        Settings::from_toml_str(LOCAL_ONLY, "config/local-only.toml", &Overrides::default())
            .unwrap();
    assert_eq!(settings.keyspaces.default_mode(), Mode::LocalOnly);
    assert!(settings.keyspaces.iter().next().is_none());
    assert!(settings.listen.ip().is_loopback());
    assert!(settings.admin.listen.is_none_or(|a| a.ip().is_loopback()));
}

/// Protected by default, as Redis's protected mode: a listener reachable beyond this machine
/// with no password or user refuses to start, naming what allows it.
#[test]
fn a_listener_beyond_loopback_needs_a_password() {
    let digest = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    for open in ["0.0.0.0:6380", "10.1.2.3:6380", "[::]:6380"] {
        assert_problem(
            &format!("listen = {open:?}"),
            "listen",
            "requirepass_sha256",
        );
        assert_problem(
            &format!("listen = {open:?}"),
            "listen",
            "protected_mode = false",
        );
        // A password, a user, or saying so explicitly allows it.
        parse(&format!(
            "listen = {open:?}\nrequirepass_sha256 = {digest:?}"
        ))
        .unwrap();
        parse(&format!(
            "listen = {open:?}\n[[user]]\nname = \"app\"\npassword_sha256 = {digest:?}"
        ))
        .unwrap();
        parse(&format!("listen = {open:?}\nprotected_mode = false")).unwrap();
    }
    for loopback in ["127.0.0.1:6380", "127.5.5.5:6380", "[::1]:6380"] {
        parse(&format!("listen = {loopback:?}")).unwrap();
    }
    // The flag and the environment variable give the password as the file would.
    let overrides = Overrides {
        listen: Some("0.0.0.0:6380".into()),
        requirepass_sha256: Some(digest.into()),
        ..Overrides::default()
    };
    let s = Settings::from_toml_str("", "test.toml", &overrides).unwrap();
    assert!(s.users.required());
    let overrides = Overrides {
        listen: Some("0.0.0.0:6380".into()),
        ..Overrides::default()
    };
    let error = Settings::from_toml_str("", "test.toml", &overrides).unwrap_err();
    assert!(error.to_string().contains("(from --listen)"), "{error}");
}

#[test]
fn keyspace_budgets_must_fit_the_store() {
    let ks = |name: &str, mode: &str, extra: &str| {
        format!("[[keyspace]]\nname = \"{name}\"\npatterns = [\"{name}:\"]\nmode = \"{mode}\"\n{extra}\n")
    };
    assert_problem(
        &format!(
            "{}{}[local_store]\nmax_bytes = \"1MiB\"\n",
            ks("a", "degraded", "max_bytes = \"600KiB\""),
            ks("b", "local_only", "max_bytes = \"600KiB\"")
        ),
        "local_store.max_bytes",
        "add up to 1200KiB, more than the store's 1MiB",
    );
    assert_problem(
        &format!(
            "{}default_mode = \"degraded\"\n[local_store]\nmax_bytes = \"1MiB\"\n",
            ks("a", "degraded", "max_bytes = \"1MiB\"")
        )
        .replace("default_mode = \"degraded\"\n", "")
        .replacen(
            "[[keyspace]]",
            "default_mode = \"degraded\"\n[[keyspace]]",
            1,
        ),
        "local_store.max_bytes",
        "each needs at least 1KiB",
    );
    assert_problem(
        &ks("limits", "fail_closed", "max_bytes = \"1MiB\""),
        "keyspace[0].max_bytes",
        "a fail_closed keyspace never holds local keys",
    );
    assert_problem(
        &ks("a", "degraded", "eviction = \"allkeys-lru\""),
        "keyspace[0].eviction",
        "\"allkeys-lru\" is not an eviction: lru or noeviction",
    );
    assert_problem(
        "[local_store]\ndefault_eviction = \"volatile-lru\"\n",
        "local_store.default_eviction",
        "is not an eviction",
    );
    assert_problem(
        &ks("a", "degraded", "max_bytes = 100"),
        "keyspace[0].max_bytes",
        "",
    );
    // Own parts that fit, and a share for the rest.
    let settings = parse(&format!(
        "{}{}[local_store]\nmax_bytes = \"1MiB\"\ndefault_max_bytes = \"1KiB\"\n",
        ks(
            "a",
            "degraded",
            "max_bytes = \"512KiB\"\neviction = \"noeviction\""
        ),
        ks("b", "local_only", "")
    ))
    .unwrap();
    let budgets = settings
        .keyspaces
        .budgets(settings.local_store.max_bytes, &settings.local_store.shares);
    let got: Vec<(usize, Eviction)> = budgets.iter().map(|b| (b.max_bytes, b.eviction)).collect();
    // The default keyspace fails closed (the default mode): it gets nothing.
    assert_eq!(
        got,
        [
            (512 * KIB, Eviction::NoEviction),
            (512 * KIB, Eviction::Lru),
            (0, Eviction::Lru)
        ]
    );
}

#[test]
fn tls_files_are_checked_when_the_config_is() {
    let found = problems(
        "[tls]\nlisten = \"127.0.0.1:6390\"\ncert_file = \"/nonexistent/kw.pem\"\nkey_file = \"/nonexistent/kw.key\"\n",
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("tls.cert_file: \"/nonexistent/kw.pem\""),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("tls.key_file: \"/nonexistent/kw.key\""),
        "{found:?}"
    );
    assert_problem(
        "[tls]\ncert_file = \"a.pem\"\n",
        "tls.listen",
        "TLS files are set: set listen",
    );
    assert_problem("[upstream.tls]\n", "upstream.tls.ca_file", "needs a file");
    // Not PEM at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    assert_problem(
        &format!(
            "[upstream.tls]\nca_file = {:?}\n",
            junk.display().to_string()
        ),
        "upstream.tls.ca_file",
        "holds no PEM certificate",
    );
    let found = problems(&format!(
        "[upstream.tls]\nca_file = {:?}\ncert_file = {:?}\n",
        junk.display().to_string(),
        junk.display().to_string()
    ));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("upstream.tls.cert_file: cert_file and key_file go together")),
        "{found:?}"
    );
}

#[test]
fn the_upstream_is_an_address_or_sentinel_not_both() {
    assert_problem(
        "[upstream]\naddress = \"127.0.0.1:6379\"\n[upstream.sentinel]\naddresses = [\"127.0.0.1:26379\"]\nmaster = \"m\"\n",
        "upstream.address",
        "both name the upstream",
    );
    assert_problem(
        "[upstream.sentinel]\naddresses = []\nmaster = \"m\"\n",
        "upstream.sentinel.addresses",
        "needs at least one sentinel",
    );
    assert_problem(
        "[upstream.sentinel]\naddresses = [\"127.0.0.1:26379\"]\nmaster = \"my master\"\n",
        "upstream.sentinel.master",
        "the name the sentinels monitor",
    );
    let s = parse(
        "[upstream.sentinel]\naddresses = [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]\nmaster = \"m\"\npassword = \"pw\"\n",
    )
    .unwrap();
    let sentinel = s.upstream.sentinel.as_ref().unwrap();
    assert_eq!(sentinel.addresses, ["10.0.0.1:26379", "10.0.0.2:26379"]);
    assert_eq!(sentinel.password.as_deref(), Some("pw"));
    assert_eq!(s.upstream.name(), "sentinel:m");
    assert!(
        !format!("{s:?}").contains("\"pw\""),
        "Debug hides the sentinel password"
    );
    assert_problem(
        "[upstream.sentinel]\naddresses = [\"127.0.0.1:26379\"]\nmaster = \"m\"\ntls = true\n",
        "upstream.sentinel.tls",
        "needs [upstream.tls]",
    );
    // Neither: the default address.
    assert_eq!(parse("").unwrap().upstream.address, "127.0.0.1:6379");
}

#[test]
fn a_cluster_is_named_by_its_seeds_and_by_nothing_else() {
    let s = parse("[upstream]\ncluster_nodes = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]\n").unwrap();
    assert_eq!(s.upstream.cluster_nodes, ["10.0.0.1:7000", "10.0.0.2:7000"]);
    assert_eq!(s.upstream.address, "10.0.0.1:7000");
    assert_eq!(s.upstream.name(), "cluster:10.0.0.1:7000");
    assert_problem(
        "[upstream]\ncluster_nodes = []\n",
        "upstream.cluster_nodes",
        "needs at least one node",
    );
    assert_problem(
        "[upstream]\ncluster_nodes = [\"nowhere\"]\n",
        "upstream.cluster_nodes",
        "host:port",
    );
    assert_problem(
        "[upstream]\naddress = \"127.0.0.1:6379\"\ncluster_nodes = [\"127.0.0.1:7000\"]\n",
        "upstream.cluster_nodes",
        "both name the upstream",
    );
    assert_problem(
        "[upstream]\ncluster_nodes = [\"127.0.0.1:7000\"]\n[upstream.sentinel]\naddresses = [\"127.0.0.1:26379\"]\nmaster = \"m\"\n",
        "upstream.cluster_nodes",
        "[upstream.sentinel] both name the upstream",
    );
    // Without it: no cluster.
    assert!(parse("").unwrap().upstream.cluster_nodes.is_empty());
}
