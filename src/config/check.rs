//! Step 3 of the pipeline: each field checked and converted to its typed value in one pass,
//! every problem collected and named by its field path, so that one run of
//! `keywarden check-config` shows them all.

use std::net::{Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::command::Categories;
use crate::config::file::{
    RawAdmin, RawHealth, RawKeyspace, RawLimits, RawLocalStore, RawLog, RawSentinel, RawSettings,
    RawTls, RawUpstream, RawUser, Secret,
};
use crate::config::overrides::Overrides;
use crate::config::problem::Problem;
use crate::config::settings::{
    AdminSettings, ClientTls, EventSettings, HealthSettings, Limits, LocalStoreSettings, LogFormat,
    LogSettings, SentinelSettings, Settings, UpstreamSettings, UpstreamTls, MAX_MULTIBULK_LEN,
};
use crate::config::units::{
    duration, keepalive, show_duration, show_size, size, timeout, zero_is_off, Quantity, KIB,
    MAX_SIZE, MIB,
};
use crate::policy::auth::{self, CommandAccess, KeyAccess, PasswordHash, User, Users};
use crate::policy::keyspace::{
    Eviction, Keyspace, Keyspaces, Membership, Mode, Pattern, StoreShare, DEFAULT_NAME,
};

/// Redis's own floor for `client-query-buffer-limit`.
const MIN_QUERY_BUFFER: usize = MIB;
/// Shared upstream connections; each is a multiplexed pipe, so a few carry a lot.
const CONNECTIONS: RangeInclusive<usize> = 1..=64;
const THREADS: RangeInclusive<usize> = 0..=1024;
/// The reply scanner's stack is a `Vec`, so this only bounds memory per connection.
const REPLY_DEPTH: RangeInclusive<usize> = 1..=10_000;

/// Collects problems while fields are converted.
pub(super) struct Checker<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) overrides: &'a Overrides,
    /// The table being checked, as a prefix of field paths: `""` or e.g. `"upstream."`.
    pub(super) table: &'static str,
}

impl Checker<'_> {
    /// Converts one field, recording a problem at its path (and giving `None`) if it fails.
    fn check<R, T>(
        &mut self,
        key: &str,
        value: R,
        convert: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        convert(value)
            .map_err(|message| self.report(key, message))
            .ok()
    }

    fn report(&mut self, key: &str, message: String) {
        let place = format!("{}{key}", self.table);
        // A value that came from a flag is named as such: the file does not contain it.
        let flag = match place.as_str() {
            "listen" if self.overrides.listen.is_some() => " (from --listen)",
            "upstream.address" if self.overrides.upstream.is_some() => " (from --upstream)",
            "admin.listen" if self.overrides.admin_listen.is_some() => " (from --admin-listen)",
            "requirepass_sha256" if self.overrides.requirepass_sha256.is_some() => {
                " (from --requirepass-sha256 or KEYWARDEN_REQUIREPASS_SHA256)"
            }
            _ => "",
        };
        self.problems.push(Problem {
            place,
            message: format!("{message}{flag}"),
        });
    }
}

/// Checks every field, in the order of the example file. `None` when any
/// field failed (each failure has recorded a problem).
pub(super) fn check_settings(c: &mut Checker, raw: RawSettings) -> Option<Settings> {
    let listen = c.check("listen", raw.listen, |s| socket_addr(&s));
    let max_clients = c.check("max_clients", raw.max_clients, |n| count(n, 1..=usize::MAX));
    let client_idle_timeout = c.check("client_idle_timeout", raw.client_idle_timeout, |q| {
        Ok(zero_is_off(duration(q)?))
    });
    let tcp_keepalive = c.check("tcp_keepalive", raw.tcp_keepalive, |q| {
        zero_is_off(duration(q)?).map(keepalive).transpose()
    });
    let shutdown_timeout = c.check("shutdown_timeout", raw.shutdown_timeout, timeout);
    let threads = c.check("threads", raw.threads, |n| count(n, THREADS));
    let default_mode = c.check("default_mode", raw.default_mode, |m| mode(&m));
    let upstream = check_upstream(c, raw.upstream);
    let limits = check_limits(c, raw.limits);
    let log = check_log(c, raw.log);
    // Users name keyspaces by their position in the file, which is also their index.
    let keyspace_names: Vec<String> = raw.keyspace.iter().map(|ks| ks.name.clone()).collect();
    let (keyspaces, shares) = check_keyspaces(c, raw.keyspace, default_mode);
    let users = check_users(c, raw.requirepass_sha256, raw.user, &keyspace_names);
    let local_store = check_local_store(c, raw.local_store, keyspaces.as_ref(), shares);
    let health = check_health(c, raw.health);
    c.table = "";
    let instance_id = c.check("instance_id", raw.instance_id, |id| {
        if id.chars().any(|ch| ch.is_control()) {
            Err("must not contain control characters".to_owned())
        } else {
            Ok((!id.is_empty()).then_some(id))
        }
    });
    let events = EventSettings {
        file: (!raw.events.file.is_empty()).then(|| raw.events.file.into()),
    };
    let admin = check_admin(c, raw.admin, listen);
    let tls = check_tls(c, raw.tls, listen);
    // Protected mode, as Redis's: a listener others can reach needs a password.
    c.table = "";
    let tls_listen = tls
        .as_ref()
        .and_then(|t| t.as_ref().map(|t| ("tls.listen", t.listen)));
    let listeners = listen.map(|a| ("listen", a)).into_iter().chain(tls_listen);
    for (place, addr) in listeners {
        let Some(users) = (raw.protected_mode).then_some(users.as_ref()).flatten() else {
            break;
        };
        if !addr.ip().is_loopback() && !users.required() {
            c.report(
                place,
                format!(
                    "{addr} accepts clients from beyond this machine, and no password is \
                     configured: set requirepass_sha256 (or --requirepass-sha256, or \
                     KEYWARDEN_REQUIREPASS_SHA256) or a [[user]], or protected_mode = false \
                     to serve without one"
                ),
            );
        }
    }
    Some(Settings {
        listen: listen?,
        max_clients: max_clients?,
        client_idle_timeout: client_idle_timeout?,
        tcp_keepalive: tcp_keepalive?,
        shutdown_timeout: shutdown_timeout?,
        threads: threads?,
        upstream: upstream?,
        limits: limits?,
        log: log?,
        instance_id: instance_id?,
        keyspaces: keyspaces?,
        users: users?,
        local_store: local_store?,
        health: health?,
        events,
        admin: admin?,
        tls: tls?,
        source: None,
    })
}

/// The admin listener: an IP and a port like `listen`, and not the same one (port 0, "any free
/// port", may be given to both).
fn check_admin(
    c: &mut Checker,
    raw: RawAdmin,
    listen: Option<SocketAddr>,
) -> Option<AdminSettings> {
    c.table = "admin.";
    let address = c.check("listen", raw.listen, |s| {
        if s.is_empty() {
            return Ok(None);
        }
        let addr = socket_addr(&s)?;
        if Some(addr) == listen && addr.port() != 0 {
            return Err(format!(
                "{s:?} is the client `listen` address; choose another port"
            ));
        }
        Ok(Some(addr))
    });
    let token = c.check("token_sha256", raw.token_sha256, |s| {
        (!s.0.is_empty()).then(|| digest(&s.0)).transpose()
    });
    // The admin listener shows the proxy's state: beyond loopback, only to whoever has a token.
    if let (Some(Some(addr)), Some(None)) = (address, token) {
        if !addr.ip().is_loopback() {
            c.report(
                "listen",
                format!(
                    "{addr} is reachable beyond this machine: set admin.token_sha256 (the \
                     SHA-256 of a token that requests send as `Authorization: Bearer <token>`)"
                ),
            );
        }
    }
    c.table = "";
    Some(AdminSettings {
        listen: address?,
        token: token?,
    })
}

/// Keyspaces: names unique and non-empty, at least one pattern each, no empty pattern, no
/// pattern listed twice (overlapping patterns are allowed: the first keyspace in file order
/// wins, as documented).
fn check_keyspaces(
    c: &mut Checker,
    raw: Vec<RawKeyspace>,
    default_mode: Option<Mode>,
) -> (Option<Keyspaces>, Vec<StoreShare>) {
    let mut list = Vec::with_capacity(raw.len());
    let mut shares = Vec::new();
    let mut ok = true;
    let mut seen_patterns: Vec<(String, String)> = Vec::new();
    for (i, ks) in raw.into_iter().enumerate() {
        c.table = "";
        let at = |field: &str| format!("keyspace[{i}].{field}");
        if ks.name.is_empty() || ks.name == crate::policy::keyspace::DEFAULT_NAME {
            c.report(
                &at("name"),
                format!("{:?} is not a usable keyspace name", ks.name),
            );
            ok = false;
        } else if !ks
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            // Names appear in errors, events, INFO and metric labels: keep them plain.
            c.report(
                &at("name"),
                format!(
                    "{:?}: a keyspace name is letters, digits and _ . : - only",
                    ks.name
                ),
            );
            ok = false;
        } else if list.iter().any(|k: &Keyspace| k.name == ks.name) {
            c.report(
                &at("name"),
                format!("keyspace {:?} is defined twice", ks.name),
            );
            ok = false;
        }
        let mode = c.check(&at("mode"), ks.mode, |m| mode(&m));
        if ks.patterns.is_empty() {
            c.report(&at("patterns"), "needs at least one pattern".to_owned());
            ok = false;
        }
        for p in &ks.patterns {
            if p.is_empty() {
                c.report(
                    &at("patterns"),
                    "an empty pattern would match every key".to_owned(),
                );
                ok = false;
            } else if let Some((_, owner)) = seen_patterns.iter().find(|(q, _)| q == p) {
                c.report(
                    &at("patterns"),
                    format!("pattern {p:?} is already in keyspace {owner:?}"),
                );
                ok = false;
            } else {
                seen_patterns.push((p.clone(), ks.name.clone()));
            }
        }
        let share = check_share(
            c,
            &at("max_bytes"),
            &at("eviction"),
            ks.max_bytes,
            ks.eviction.as_deref().unwrap_or("lru"),
        );
        let Some(mode) = mode else {
            ok = false;
            continue;
        };
        match share {
            Some((max_bytes, eviction)) => {
                if mode == Mode::FailClosed && (max_bytes.is_some() || ks.eviction.is_some()) {
                    c.report(
                        &at("max_bytes"),
                        "a fail_closed keyspace never holds local keys: max_bytes and \
                         eviction are for degraded and local_only keyspaces"
                            .to_owned(),
                    );
                    ok = false;
                }
                // Only what differs from the defaults, so that a reload that adds a keyspace
                // changes the keyspaces, not the store's settings.
                if max_bytes.is_some() || eviction != Eviction::Lru {
                    shares.push(StoreShare {
                        name: ks.name.clone(),
                        max_bytes,
                        eviction,
                    });
                }
            }
            None => ok = false,
        }
        list.push(Keyspace {
            name: ks.name,
            patterns: ks
                .patterns
                .iter()
                .map(|p| Pattern::parse(p.as_bytes()))
                .collect(),
            mode,
        });
    }
    let keyspaces = default_mode.filter(|_| ok).map(|m| Keyspaces::new(list, m));
    (keyspaces, shares)
}

/// A keyspace's own budget (`None`: a share) and its eviction.
fn check_share(
    c: &mut Checker,
    bytes_at: &str,
    eviction_at: &str,
    max_bytes: Option<Quantity>,
    eviction: &str,
) -> Option<(Option<usize>, Eviction)> {
    let max_bytes = match max_bytes {
        None => Some(None),
        Some(q) => c.check(bytes_at, q, |q| size(q, KIB..=MAX_SIZE)).map(Some),
    };
    let eviction = c.check(eviction_at, eviction, |e: &str| {
        Eviction::parse(e).ok_or_else(|| format!("{e:?} is not an eviction: lru or noeviction"))
    });
    Some((max_bytes?, eviction?))
}

/// Users: `requirepass_sha256` (the `default` user, every permission) and `[[user]]` entries,
/// names unique, `default` not configured both ways.
fn check_users(
    c: &mut Checker,
    requirepass: Secret,
    raw: Vec<RawUser>,
    keyspace_names: &[String],
) -> Option<Users> {
    c.table = "";
    let requirepass = c.check("requirepass_sha256", requirepass, |s| {
        (!s.0.is_empty()).then(|| digest(&s.0)).transpose()
    });
    let mut ok = requirepass.is_some();
    let requirepass = requirepass.flatten();
    let has_requirepass = requirepass.is_some();
    let mut list: Vec<User> = requirepass.map(User::requirepass).into_iter().collect();
    let mut seen: Vec<String> = Vec::new();
    for (i, user) in raw.into_iter().enumerate() {
        c.table = "";
        let at = |field: &str| format!("user[{i}].{field}");
        if seen.contains(&user.name) {
            c.report(
                &at("name"),
                format!("user {:?} is defined twice", user.name),
            );
            ok = false;
        } else if user.name == auth::DEFAULT_USER && has_requirepass {
            c.report(
                &at("name"),
                "user \"default\" and requirepass_sha256 both set the default user's password; keep one".to_owned(),
            );
            ok = false;
        }
        seen.push(user.name.clone());
        match check_user(c, &at, user, keyspace_names) {
            Some(user) => list.push(user),
            None => ok = false,
        }
    }
    ok.then(|| Users::new(list))
}

/// One `[[user]]`; `at` names its fields (`user[2].categories`).
fn check_user(
    c: &mut Checker,
    at: &dyn Fn(&str) -> String,
    raw: RawUser,
    keyspace_names: &[String],
) -> Option<User> {
    let name = c.check(&at("name"), raw.name, |n| user_name(&n).map(|()| n));
    let password = c.check(&at("password_sha256"), raw.password_sha256, |s| {
        if s.0.is_empty() {
            Err("is required: the SHA-256 of the user's password, as 64 hex digits".to_owned())
        } else {
            digest(&s.0)
        }
    });
    let commands = c.check(&at("categories"), raw.categories, |list| {
        list.map_or(Ok(CommandAccess::All), |names| command_access(&names))
    });
    let keyspaces = c.check(&at("keyspaces"), raw.keyspaces, |list| {
        list.map(|names| memberships(&names, keyspace_names))
            .transpose()
    });
    let patterns = c.check(&at("key_patterns"), raw.key_patterns, |list| {
        list.map(|p| key_patterns(&p)).transpose()
    });
    let keys = match (keyspaces?, patterns?) {
        (None, None) => KeyAccess::All,
        // "*" among the keyspaces: every key, whatever the patterns say.
        (Some(None), _) => KeyAccess::All,
        (keyspaces, patterns) => KeyAccess::Only {
            patterns: patterns.unwrap_or_default(),
            keyspaces: keyspaces.flatten().unwrap_or_default(),
        },
    };
    Some(User::new(name?, password?, commands?, keys))
}

/// A user name as Redis accepts one in `AUTH`: not empty, no spaces or control characters.
fn user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(format!("{name:?} contains a space or a control character"));
    }
    Ok(())
}

/// A SHA-256 digest as 64 hex digits. The message never quotes the value: it may be a
/// password written in the wrong field.
fn digest(text: &str) -> Result<PasswordHash, String> {
    PasswordHash::from_hex(text).ok_or_else(|| {
        "is not a SHA-256 digest: write 64 hex digits, the output of `printf '%s' 'PASSWORD' | sha256sum` (never the password itself)".to_owned()
    })
}

/// ACL category names without `@`; "all" is every category, as Redis's `+@all`.
fn command_access(names: &[String]) -> Result<CommandAccess, String> {
    let mut categories = Categories::empty();
    for name in names {
        if name == "all" {
            return Ok(CommandAccess::All);
        }
        categories = categories | category(name)?;
    }
    Ok(CommandAccess::of(categories))
}

fn category(name: &str) -> Result<Categories, String> {
    if let Some(bare) = name.strip_prefix('@') {
        return Err(format!("write {bare:?}, without the @"));
    }
    Categories::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Categories::ALL.iter().map(|(_, n)| *n).collect();
        format!(
            "{name:?} is not an ACL category; use \"all\" or some of: {}",
            known.join(", ")
        )
    })
}

/// Keyspace names: `None` for "*" (every key), else the memberships; "default" is the keys
/// of no configured keyspace.
fn memberships(names: &[String], defined: &[String]) -> Result<Option<Vec<Membership>>, String> {
    let mut list = Vec::with_capacity(names.len());
    for name in names {
        if name == "*" {
            return Ok(None);
        }
        let membership = if name == crate::policy::keyspace::DEFAULT_NAME {
            Membership::Default
        } else {
            let index = defined.iter().position(|d| d == name).ok_or_else(|| {
                format!(
                    "keyspace {name:?} is not defined; use a [[keyspace]] name, \"default\" (keys in none) or \"*\" (every key)"
                )
            })?;
            Membership::Named(index)
        };
        list.push(membership);
    }
    Ok(Some(list))
}

/// Key patterns, read as keyspace patterns are (a prefix unless a glob).
fn key_patterns(patterns: &[String]) -> Result<Vec<Pattern>, String> {
    patterns
        .iter()
        .map(|p| {
            if p.is_empty() {
                Err("an empty pattern would match every key; write \"*\" for every key".to_owned())
            } else {
                Ok(Pattern::parse(p.as_bytes()))
            }
        })
        .collect()
}

/// The store's budget, divided among the keyspaces: the budgets keyspaces name must fit in it,
/// and leave at least a KiB to each keyspace that shares the rest.
fn check_local_store(
    c: &mut Checker,
    raw: RawLocalStore,
    keyspaces: Option<&Keyspaces>,
    mut shares: Vec<StoreShare>,
) -> Option<LocalStoreSettings> {
    c.table = "local_store.";
    let max_bytes = c.check("max_bytes", raw.max_bytes, |q| size(q, KIB..=MAX_SIZE));
    let default = check_share(
        c,
        "default_max_bytes",
        "default_eviction",
        raw.default_max_bytes,
        &raw.default_eviction,
    );
    let (default_bytes, default_eviction) = default?;
    if default_bytes.is_some() || default_eviction != Eviction::Lru {
        shares.push(StoreShare {
            name: DEFAULT_NAME.to_owned(),
            max_bytes: default_bytes,
            eviction: default_eviction,
        });
    }
    let (max_bytes, keyspaces) = (max_bytes?, keyspaces?);
    let local = |name: &str| {
        keyspaces
            .names()
            .zip(keyspaces.modes())
            .any(|(n, m)| n == name && m != Mode::FailClosed)
    };
    let named: usize = shares
        .iter()
        .filter(|s| local(&s.name))
        .filter_map(|s| s.max_bytes)
        .sum();
    let sharing = keyspaces
        .names()
        .zip(keyspaces.modes())
        .filter(|&(n, m)| {
            m != Mode::FailClosed && shares.iter().all(|s| s.name != n || s.max_bytes.is_none())
        })
        .count();
    if named > max_bytes {
        c.report(
            "max_bytes",
            format!(
                "the keyspaces' own max_bytes add up to {}, more than the store's {}",
                show_size(named),
                show_size(max_bytes)
            ),
        );
        return None;
    }
    if sharing > 0 && (max_bytes - named) / sharing < KIB {
        c.report(
            "max_bytes",
            format!(
                "{} left after the keyspaces' own max_bytes, shared by {sharing} keyspaces \
                 without one: each needs at least 1KiB",
                show_size(max_bytes - named)
            ),
        );
        return None;
    }
    Some(LocalStoreSettings { max_bytes, shares })
}

fn check_health(c: &mut Checker, raw: RawHealth) -> Option<HealthSettings> {
    c.table = "health.";
    let probe_interval = c.check("probe_interval", raw.probe_interval, timeout);
    let probe_timeout = c.check("probe_timeout", raw.probe_timeout, timeout);
    let failure_threshold = c.check("failure_threshold", raw.failure_threshold, |n| {
        count(n, 1..=1000).map(|n| n as u32)
    });
    let success_threshold = c.check("success_threshold", raw.success_threshold, |n| {
        count(n, 1..=1000).map(|n| n as u32)
    });
    Some(HealthSettings {
        probe_interval: probe_interval?,
        probe_timeout: probe_timeout?,
        failure_threshold: failure_threshold?,
        success_threshold: success_threshold?,
    })
}

fn mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text)
        .ok_or_else(|| format!("{text:?} is not a mode: fail_closed, degraded or local_only"))
}

fn check_upstream(c: &mut Checker, raw: RawUpstream) -> Option<UpstreamSettings> {
    c.table = "upstream.";
    let sentinel = raw.sentinel.map(|s| check_sentinel(c, s));
    c.table = "upstream.";
    let cluster_nodes = match raw.cluster_nodes {
        None => Some(Vec::new()),
        Some(nodes) => c.check("cluster_nodes", nodes, |list| {
            if list.is_empty() {
                return Err("needs at least one node of the cluster, as host:port".to_owned());
            }
            for a in &list {
                host_port(a)?;
            }
            Ok(list)
        }),
    };
    let clustered = cluster_nodes.as_ref().is_some_and(|n| !n.is_empty());
    if clustered && (raw.address.is_some() || sentinel.is_some()) {
        let other = if sentinel.is_some() {
            "[upstream.sentinel]"
        } else {
            "upstream.address"
        };
        c.report(
            "cluster_nodes",
            format!(
                "and {other} both name the upstream: keep one (a cluster's nodes are \
                 discovered from its seeds)"
            ),
        );
    }
    let address = match (raw.address, &sentinel) {
        _ if clustered => cluster_nodes.as_ref().map(|n| n[0].clone()),
        (Some(_), Some(_)) => {
            c.report(
                "address",
                "and [upstream.sentinel] both name the upstream: keep one (with Sentinel, \
                 the primary's address comes from the sentinels)"
                    .to_owned(),
            );
            None
        }
        // Found by asking the sentinels when keywarden starts.
        (None, Some(_)) => Some(String::new()),
        (Some(a), None) => c.check("address", a, |s| host_port(&s).map(|()| s)),
        (None, None) => Some(DEFAULT_UPSTREAM.to_owned()),
    };
    let sentinel = match sentinel {
        None => Some(None),
        Some(s) => s.map(Some),
    };
    if let (Some(Some(s)), None) = (&sentinel, &raw.tls) {
        if s.tls {
            c.report(
                "sentinel.tls",
                "needs [upstream.tls]: the sentinels are reached with its CA and client \
                 certificate"
                    .to_owned(),
            );
        }
    }
    let connections = c.check("connections", raw.connections, |n| count(n, CONNECTIONS));
    let connect_timeout = c.check("connect_timeout", raw.connect_timeout, timeout);
    let command_timeout = c.check("command_timeout", raw.command_timeout, timeout);
    // Both > 0 too: a zero backoff would retry a dead upstream in a tight loop.
    let backoff_min = c.check("reconnect_backoff_min", raw.reconnect_backoff_min, timeout);
    let backoff_max = c.check("reconnect_backoff_max", raw.reconnect_backoff_max, timeout);
    if let (Some(min), Some(max)) = (backoff_min, backoff_max) {
        if min > max {
            let (min, max) = (show_duration(min), show_duration(max));
            c.report(
                "reconnect_backoff_min",
                format!("{min} is more than upstream.reconnect_backoff_max ({max})"),
            );
        }
    }
    let username = c.check("username", raw.username, |name| {
        if name.is_empty() {
            Ok(None)
        } else {
            user_name(&name).map(|()| Some(name))
        }
    });
    let password = (!raw.password.0.is_empty()).then_some(raw.password.0);
    if matches!(username, Some(Some(_))) && password.is_none() {
        c.report(
            "username",
            "needs upstream.password: Redis takes a username only with its password".to_owned(),
        );
    }
    c.table = "upstream.tls.";
    let tls = match raw.tls {
        None => Some(None),
        Some(raw) => {
            let ca = c.check("ca_file", raw.ca_file, |f| pem_file(&f, Pem::Certs));
            let pair = client_cert_pair(c, raw.cert_file, raw.key_file);
            let name = (!raw.server_name.is_empty()).then_some(raw.server_name);
            match (ca, pair) {
                (Some(ca_file), Some(client_cert)) => Some(Some(UpstreamTls {
                    ca_file,
                    client_cert,
                    server_name: name,
                })),
                _ => None,
            }
        }
    };
    Some(UpstreamSettings {
        cluster_nodes: cluster_nodes?,
        sentinel: sentinel?,
        tls: tls?,
        address: address?,
        connections: connections?,
        connect_timeout: connect_timeout?,
        command_timeout: command_timeout?,
        reconnect_backoff_min: backoff_min?,
        reconnect_backoff_max: backoff_max?,
        username: username?,
        password,
    })
}

/// The upstream when neither `address` nor `[upstream.sentinel]` is set.
pub(super) const DEFAULT_UPSTREAM: &str = "127.0.0.1:6379";

/// `[upstream.sentinel]`: at least one sentinel address, and the master's name.
fn check_sentinel(c: &mut Checker, raw: RawSentinel) -> Option<SentinelSettings> {
    c.table = "upstream.sentinel.";
    let addresses = c.check("addresses", raw.addresses, |list| {
        if list.is_empty() {
            return Err("needs at least one sentinel, as host:port".to_owned());
        }
        for a in &list {
            host_port(a)?;
        }
        Ok(list)
    });
    let master = c.check("master", raw.master, |m| {
        if m.is_empty()
            || m.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            Err(format!(
                "{m:?}: the name the sentinels monitor the primary under \
                 (`sentinel monitor <name> ...`)"
            ))
        } else {
            Ok(m)
        }
    });
    let username = (!raw.username.is_empty()).then_some(raw.username);
    let password = (!raw.password.0.is_empty()).then_some(raw.password.0);
    if username.is_some() && password.is_none() {
        c.report("username", "needs password".to_owned());
        return None;
    }
    Some(SentinelSettings {
        addresses: addresses?,
        master: master?,
        username,
        password,
        tls: raw.tls,
    })
}

/// `cert_file` and `key_file`: both or neither.
fn client_cert_pair(
    c: &mut Checker,
    cert: String,
    key: String,
) -> Option<Option<(PathBuf, PathBuf)>> {
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Some(None),
        (false, true) | (true, false) => {
            c.report(
                "cert_file",
                "cert_file and key_file go together (a client certificate and its key)".to_owned(),
            );
            None
        }
        (false, false) => {
            let cert = c.check("cert_file", cert, |f| pem_file(&f, Pem::Certs));
            let key = c.check("key_file", key, |f| pem_file(&f, Pem::Key));
            Some(Some((cert?, key?)))
        }
    }
}

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pem {
    /// At least one certificate.
    Certs,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    Key,
}

/// A readable PEM file holding what `what` says. Read at check time, so that `check-config`
/// and a reload refuse a missing or wrong file with its name.
fn pem_file(path: &str, what: Pem) -> Result<PathBuf, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if path.is_empty() {
        return Err("needs a file".to_owned());
    }
    let found = match what {
        Pem::Certs => CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{path:?}: {e}"))?
            .map(|c| c.map(|_| ()))
            .collect::<Result<Vec<()>, _>>()
            .map_err(|e| format!("{path:?}: {e}"))?
            .len(),
        Pem::Key => PrivateKeyDer::from_pem_file(path)
            .map(|_| 1)
            .map_err(|e| format!("{path:?}: {e}"))?,
    };
    match found {
        0 => Err(format!("{path:?} holds no PEM certificate")),
        _ => Ok(PathBuf::from(path)),
    }
}

/// `[tls]`: off unless `listen` is set; then a certificate and key, and optionally the CA
/// that client certificates must be signed by.
fn check_tls(
    c: &mut Checker,
    raw: RawTls,
    listen: Option<SocketAddr>,
) -> Option<Option<ClientTls>> {
    c.table = "tls.";
    if raw.listen.is_empty() {
        if !(raw.cert_file.is_empty() && raw.key_file.is_empty() && raw.ca_file.is_empty()) {
            c.report(
                "listen",
                "is empty, but TLS files are set: set listen to serve TLS".to_owned(),
            );
            return None;
        }
        return Some(None);
    }
    let address = c.check("listen", raw.listen, |s| {
        let addr = socket_addr(&s)?;
        if Some(addr) == listen && addr.port() != 0 {
            return Err(format!(
                "{s:?} is the client `listen` address; choose another port"
            ));
        }
        Ok(addr)
    });
    let cert = c.check("cert_file", raw.cert_file, |f| pem_file(&f, Pem::Certs));
    let key = c.check("key_file", raw.key_file, |f| pem_file(&f, Pem::Key));
    let ca = c.check("ca_file", raw.ca_file, |f| {
        (!f.is_empty())
            .then(|| pem_file(&f, Pem::Certs))
            .transpose()
    });
    Some(Some(ClientTls {
        listen: address?,
        cert_file: cert?,
        key_file: key?,
        ca_file: ca?,
    }))
}

fn check_limits(c: &mut Checker, raw: RawLimits) -> Option<Limits> {
    c.table = "limits.";
    let max_bulk_len = c.check("max_bulk_len", raw.max_bulk_len, |q| size(q, 1..=MAX_SIZE));
    let max_multibulk_len = c.check("max_multibulk_len", raw.max_multibulk_len, |n| {
        count(n, 1..=MAX_MULTIBULK_LEN)
    });
    let max_inline_len = c.check("max_inline_len", raw.max_inline_len, |q| {
        size(q, KIB..=MAX_SIZE)
    });
    let max_query_buffer = c.check("max_query_buffer", raw.max_query_buffer, |q| {
        size(q, MIN_QUERY_BUFFER..=MAX_SIZE)
    });
    let max_pending_output = c.check("max_pending_output", raw.max_pending_output, |q| {
        size(q, KIB..=MAX_SIZE)
    });
    let max_client_output = c.check("max_client_output", raw.max_client_output, |q| {
        size(q, KIB..=MAX_SIZE)
    });
    let max_total_output = c.check("max_total_output", raw.max_total_output, |q| {
        size(q, KIB..=MAX_SIZE)
    });
    // Output is held up to the soft limit by design: a hard limit below it would close
    // clients that do nothing wrong.
    if let Some(pending) = max_pending_output {
        for (key, limit) in [
            ("max_client_output", max_client_output),
            ("max_total_output", max_total_output),
        ] {
            if let Some(limit) = limit.filter(|&limit| limit < pending) {
                let (limit, pending) = (show_size(limit), show_size(pending));
                c.report(
                    key,
                    format!("{limit} is less than limits.max_pending_output ({pending})"),
                );
            }
        }
    }
    let max_reply_depth = c.check("max_reply_depth", raw.max_reply_depth, |n| {
        count(n, REPLY_DEPTH)
    });
    // A request is held whole in the query buffer, so nothing larger can ever be received.
    if let Some(buffer) = max_query_buffer {
        for (key, len) in [
            ("max_bulk_len", max_bulk_len),
            ("max_inline_len", max_inline_len),
        ] {
            if let Some(len) = len.filter(|&len| len > buffer) {
                let (len, buffer) = (show_size(len), show_size(buffer));
                c.report(
                    key,
                    format!("{len} is more than limits.max_query_buffer ({buffer})"),
                );
            }
        }
    }
    Some(Limits {
        max_bulk_len: max_bulk_len?,
        max_multibulk_len: max_multibulk_len?,
        max_inline_len: max_inline_len?,
        max_query_buffer: max_query_buffer?,
        max_pending_output: max_pending_output?,
        max_client_output: max_client_output?,
        max_total_output: max_total_output?,
        max_reply_depth: max_reply_depth?,
    })
}

fn check_log(c: &mut Checker, raw: RawLog) -> Option<LogSettings> {
    c.table = "log.";
    let format = c.check("format", raw.format, |s| log_format(&s));
    let level = c.check("level", raw.level, |s| log_level(&s).map(|()| s));
    Some(LogSettings {
        format: format?,
        level: level?,
    })
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each turns one written value into a typed one or says what is wrong.

/// `listen` is bound as given, so it must be an IP and a port; names are not resolved.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a socket address (an IP and a port, e.g. \"127.0.0.1:6380\" or \"[::]:6380\")")
    })
}

/// `host:port`, where host is a name, an IPv4 address or a bracketed IPv6 address, and the
/// port is 1..=65535. The name is resolved when connecting, not here.
fn host_port(text: &str) -> Result<(), String> {
    let example = "e.g. \"127.0.0.1:6379\", \"redis.internal:6379\" or \"[::1]:6379\"";
    if text.contains("://") {
        return Err(format!("{text:?} is a URL, not host:port ({example})"));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not host:port ({example})"));
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => ip.parse::<Ipv6Addr>().is_ok(),
        None if host.contains(':') => {
            return Err(format!(
                "{text:?} is not host:port: an IPv6 address needs brackets ({example})"
            ));
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_'))
        }
    };
    if !host_ok {
        return Err(format!(
            "{text:?} is not host:port: {host:?} is not a host name or IP address"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(()),
        _ => Err(format!(
            "{text:?} is not host:port: the port must be 1 to 65535, not {port:?}"
        )),
    }
}

/// A count: a plain integer, no unit.
fn count(n: i64, range: RangeInclusive<usize>) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(value) if range.contains(&value) => Ok(value),
        _ if *range.end() == usize::MAX => {
            Err(format!("must be at least {}, not {n}", range.start()))
        }
        _ => Err(format!(
            "must be between {} and {}, not {n}",
            range.start(),
            range.end()
        )),
    }
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err(format!("{text:?} is not a log format (json or text)")),
    }
}

/// A `tracing` filter, e.g. `info` or `keywarden=debug,warn`. `EnvFilter` reads a bare word
/// that is not a level as a target enabled at TRACE, so a typo such as "inof" or "warning"
/// would silently turn logging upside down; here a bare word must be a level.
fn log_level(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is empty; write a level such as \"info\"".to_owned());
    }
    // Filters are ASCII (levels, Rust paths, field names), and tracing-subscriber's parser
    // panics on some multi-byte text (found by the config fuzzer), so none reaches it.
    if !text.is_ascii() {
        return Err(format!("{text:?} is not ASCII; a tracing filter is"));
    }
    // Levels and targets only: a span or field filter's value is a regular expression, and
    // compiling a crafted one took seconds (found by the config fuzzer), on every reload too.
    for directive in text.split(',').map(str::trim) {
        let target = match directive.split_once('=') {
            Some((target, _)) => target,
            None => "",
        };
        let is_path = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        if directive.matches('=').count() > 1 || (directive.contains('=') && !is_path(target)) {
            return Err(format!(
                "{directive:?} is not a level, or target=level (span and field filters are not \
                 supported), e.g. \"keywarden=debug\""
            ));
        }
        if !directive.is_empty()
            && !directive.contains('=')
            && LevelFilter::from_str(directive).is_err()
        {
            return Err(format!(
                "{directive:?} is not a level (trace, debug, info, warn, error or off); a target needs one, e.g. \"{directive}=debug\""
            ));
        }
    }
    EnvFilter::try_new(text).map_err(|e| format!("{text:?} is not a tracing filter: {e}"))?;
    Ok(())
}
