//! Configuration: one TOML file, parsed, merged with command-line flags, validated, typed.
//!
//! The pipeline, in order (STYLE habit 9):
//! 1. **parse**: serde reads the file into `RawSettings`: unknown fields rejected, a field
//!    left out keeps its default, durations and sizes kept as written. A TOML syntax error or a serde
//!    error (unknown field, wrong type) stops here and is reported at `file:line:column`,
//!    with the field path when it can be found.
//! 2. **merge**: `--listen` and `--upstream` replace the file's values.
//! 3. **validate and convert**: each field is checked and converted to its typed value in one
//!    pass; every problem is collected, so one run of `keywarden check-config` shows them
//!    all, each named by its field path.
//! 4. **typed**: [`Settings`] is assembled only when there was no problem at all.
//!
//! Units, never bare numbers (a bare number is an error saying a unit is required):
//! - durations are humantime text: `"500ms"`, `"5s"`, `"1m"` (a minute), `"1h 30m"`;
//! - sizes are a whole number and a unit, case-insensitive: `B`, `KB`/`KiB`, `MB`/`MiB`,
//!   `GB`/`GiB`, where `KB` = `KiB` = 1024 bytes, as Redis reads `1kb`. A bare `k`, `m` or `g`
//!   is refused: Redis reads `1k` as 1000, so it would mean different things in the two files.
//!
//! Secrets (`upstream.password`, `requirepass_sha256`, `[[user]].password_sha256`) never appear
//! in `Debug` output or in a problem's message: a digest is as good as a weak password, and a
//! password is sometimes written where its digest belongs.
//!
//! The defaults are declared once, as the text a user would write, in `RawSettings::default`;
//! they go through the same checks as a file. `config/keywarden.toml` spells out the same
//! values and a test keeps the two equal.

pub mod cli;
pub mod live;

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::command::Categories;
use crate::policy::auth::{self, CommandAccess, KeyAccess, PasswordHash, User, Users};
use crate::policy::keyspace::{Keyspace, Keyspaces, Membership, Mode, Pattern};
use tracing_subscriber::EnvFilter;

/// The typed, validated configuration the proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Connections beyond this are answered `-ERR max number of clients reached` and closed.
    pub max_clients: usize,
    /// Close a client idle this long; `None` = never (Redis's `timeout 0`).
    pub client_idle_timeout: Option<Duration>,
    /// TCP keepalive interval on client and upstream sockets; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; 0 = one per core.
    pub threads: usize,
    pub upstream: UpstreamSettings,
    pub limits: Limits,
    pub log: LogSettings,
    /// This proxy's name in events; generated once per process when not configured.
    pub instance_id: Option<String>,
    /// The configured keyspaces, in config order, and the default mode.
    pub keyspaces: Keyspaces,
    /// Who may connect and what each user may do; open (no password) unless configured.
    pub users: auth::Users,
    pub local_store: LocalStoreSettings,
    pub health: HealthSettings,
    pub events: EventSettings,
    pub admin: AdminSettings,
    /// Where these settings were read from, to read them again on a reload; `None` for
    /// settings that came from text (the built-in defaults, tests).
    pub source: Option<ConfigSource>,
}

/// A config file and the command-line flags applied over it: what a reload reads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: std::path::PathBuf,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads, merges, validates and types the file again, with the same flags.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        Settings::load(&self.path, &self.overrides)
    }
}

/// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where it listens; `None` (the default) = no admin listener.
    pub listen: Option<SocketAddr>,
}

/// The local store serving `degraded` and `local_only` keyspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStoreSettings {
    /// Byte budget; beyond it the least recently used keys are evicted.
    pub max_bytes: usize,
}

/// How upstream health is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// How often the active probe PINGs the upstream.
    pub probe_interval: Duration,
    /// A probe without `+PONG` within this long failed.
    pub probe_timeout: Duration,
    /// Consecutive failed results (timeouts, probes) that make a healthy upstream unavailable.
    /// A refused connection or a closed socket flips it at once.
    pub failure_threshold: u32,
    /// Consecutive successes that make a recovering upstream healthy again.
    pub success_threshold: u32,
}

/// Where events go besides the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// Append every event, one JSON object per line, to this file.
    pub file: Option<std::path::PathBuf>,
}

/// `Debug` is written by hand so that the password never appears in it.
#[derive(Clone, PartialEq)]
pub struct UpstreamSettings {
    /// `host:port` of the upstream Redis.
    pub address: String,
    /// Shared (multiplexed) connections to the upstream.
    pub connections: usize,
    pub connect_timeout: Duration,
    /// A request without a reply after this long fails, and its connection is dropped.
    pub command_timeout: Duration,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// The ACL user the proxy logs in as on its own upstream connections (`AUTH username
    /// password`); `None` = `default` (`AUTH password`), when a password is set.
    pub username: Option<String>,
    /// The password for those connections, in plain text because the proxy must send it;
    /// `None` = no AUTH. Never shown by `Debug`.
    pub password: Option<String>,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out of the output unnoticed.
        let UpstreamSettings {
            address,
            connections,
            connect_timeout,
            command_timeout,
            reconnect_backoff_min,
            reconnect_backoff_max,
            username,
            password,
        } = self;
        f.debug_struct("UpstreamSettings")
            .field("address", address)
            .field("connections", connections)
            .field("connect_timeout", connect_timeout)
            .field("command_timeout", command_timeout)
            .field("reconnect_backoff_min", reconnect_backoff_min)
            .field("reconnect_backoff_max", reconnect_backoff_max)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// What `Debug` shows in place of a password or a password digest.
const REDACTED: &str = "<redacted>";

/// Sizes bounded as Redis bounds them, with Redis's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `proto-max-bulk-len`: 512 MiB.
    pub max_bulk_len: usize,
    /// Largest multibulk count accepted.
    pub max_multibulk_len: usize,
    /// `PROTO_INLINE_MAX_SIZE`: 64 KiB for an inline command or a length line.
    pub max_inline_len: usize,
    /// `client-query-buffer-limit`: 1 GiB of unparsed input per client.
    pub max_query_buffer: usize,
    /// Reply bytes waiting to be written to one client before the proxy stops reading its
    /// requests (backpressure; the client is never disconnected for it).
    pub max_pending_output: usize,
    /// Deepest nesting of aggregate replies the reply scanner follows.
    pub max_reply_depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `keywarden=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Settings {
    /// The built-in defaults: what runs when no config file exists. They are declared once,
    /// as text, in `RawSettings::default`, and typed by the same pipeline as a file.
    fn default() -> Settings {
        Settings::from_toml_str("", "built-in defaults", &Overrides::default())
            .expect("the built-in defaults are valid (tested)")
    }
}

impl Default for UpstreamSettings {
    fn default() -> UpstreamSettings {
        Settings::default().upstream
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Settings::default().limits
    }
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        Settings::default().log
    }
}

// ---------------------------------------------------------------------------------------------
// Public API: errors, overrides, loading.

/// Everything wrong with a configuration (never empty), in the order of the example file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One thing wrong, and where: a field path such as `upstream.command_timeout`, or
/// `file:line:column` for a syntax or type error found while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub message: String,
}

/// Values from command-line flags; each one given replaces the file's value before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`: replaces `listen`.
    pub listen: Option<String>,
    /// `--upstream`: replaces `upstream.address`.
    pub upstream: Option<String>,
    /// `--admin-listen`: replaces `admin.listen`.
    pub admin_listen: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(place: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                place: place.into(),
                message: message.into(),
            }],
        }
    }
}

impl Settings {
    /// Reads, merges, validates and types the config file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(origin.as_str(), format!("cannot read: {e}")))?;
        let mut settings = Settings::from_toml_str(&text, &origin, overrides)?;
        settings.source = Some(ConfigSource {
            path: path.to_owned(),
            overrides: overrides.clone(),
        });
        Ok(settings)
    }

    /// Same as [`Settings::load`] for text already in memory; `origin` names it in problems
    /// (usually the file's path). An empty text gives the defaults, plus the overrides.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        // toml accepts a byte-order mark; strip it here so spans count from what we index.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut raw: RawSettings = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![toml_problem(text, origin, &e)],
        })?;
        raw.merge(overrides);
        let mut checker = Checker {
            problems: Vec::new(),
            overrides,
            table: "",
        };
        match check_settings(&mut checker, raw) {
            Some(settings) if checker.problems.is_empty() => Ok(settings),
            // Every field that failed to convert recorded a problem, so this is never empty.
            _ => Err(ConfigError {
                problems: checker.problems,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Step 1: the file as written.

/// The file as serde reads it; a field the file leaves out keeps its default. Durations and
/// sizes stay [`Quantity`] and counts stay `i64` so that a bad value is a validation problem,
/// reported together with all the others, rather than a parse error that hides the rest.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    listen: String,
    max_clients: i64,
    client_idle_timeout: Quantity,
    tcp_keepalive: Quantity,
    shutdown_timeout: Quantity,
    threads: i64,
    upstream: RawUpstream,
    limits: RawLimits,
    log: RawLog,
    instance_id: String,
    requirepass_sha256: Secret,
    default_mode: String,
    keyspace: Vec<RawKeyspace>,
    user: Vec<RawUser>,
    local_store: RawLocalStore,
    health: RawHealth,
    events: RawEvents,
    admin: RawAdmin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyspace {
    name: String,
    patterns: Vec<String>,
    mode: String,
}

/// A `[[user]]`. `keyspaces` and `key_patterns` both absent = every key; `categories` absent
/// = every command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_sha256: Secret,
    keyspaces: Option<Vec<String>>,
    key_patterns: Option<Vec<String>>,
    categories: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLocalStore {
    max_bytes: Quantity,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHealth {
    probe_interval: Quantity,
    probe_timeout: Quantity,
    failure_threshold: i64,
    success_threshold: i64,
}

/// `listen` empty (the default) = no admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

/// `file` empty (the default) = events go to the log only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEvents {
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpstream {
    address: String,
    connections: i64,
    connect_timeout: Quantity,
    command_timeout: Quantity,
    reconnect_backoff_min: Quantity,
    reconnect_backoff_max: Quantity,
    /// "" = none.
    username: String,
    /// "" = none.
    password: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    max_bulk_len: Quantity,
    max_multibulk_len: i64,
    max_inline_len: Quantity,
    max_query_buffer: Quantity,
    max_pending_output: Quantity,
    max_reply_depth: i64,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    format: String,
    level: String,
}

// The defaults, written as a user would write them. `config/keywarden.toml` spells out the
// same values, and a test keeps the two equal.

impl Default for RawSettings {
    fn default() -> RawSettings {
        RawSettings {
            listen: "127.0.0.1:6380".to_owned(),
            max_clients: 10_000,              // Redis's `maxclients`
            client_idle_timeout: "0s".into(), // never, as Redis's `timeout 0`
            tcp_keepalive: "300s".into(),     // Redis's `tcp-keepalive`
            shutdown_timeout: "5s".into(),
            threads: 1,
            upstream: RawUpstream::default(),
            limits: RawLimits::default(),
            log: RawLog::default(),
            instance_id: String::new(),            // generated per process
            requirepass_sha256: Secret::default(), // no password
            default_mode: "fail_closed".to_owned(),
            keyspace: Vec::new(),
            user: Vec::new(),
            local_store: RawLocalStore::default(),
            health: RawHealth::default(),
            events: RawEvents::default(),
            admin: RawAdmin::default(), // off: it would expose state on a port nobody chose
        }
    }
}

impl Default for RawLocalStore {
    fn default() -> RawLocalStore {
        RawLocalStore {
            max_bytes: "64MiB".into(),
        }
    }
}

impl Default for RawHealth {
    fn default() -> RawHealth {
        RawHealth {
            probe_interval: "1s".into(),
            probe_timeout: "500ms".into(),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

impl Default for RawUpstream {
    fn default() -> RawUpstream {
        RawUpstream {
            address: "127.0.0.1:6379".to_owned(),
            connections: 2,
            connect_timeout: "500ms".into(),
            command_timeout: "1s".into(),
            reconnect_backoff_min: "10ms".into(),
            reconnect_backoff_max: "50ms".into(),
            username: String::new(),
            password: Secret::default(),
        }
    }
}

impl Default for RawLimits {
    /// Redis's own limits (`server.h`, `config.c`).
    fn default() -> RawLimits {
        RawLimits {
            max_bulk_len: "512MiB".into(), // `proto-max-bulk-len`
            max_multibulk_len: MAX_MULTIBULK_LEN as i64,
            max_inline_len: "64KiB".into(),  // `PROTO_INLINE_MAX_SIZE`
            max_query_buffer: "1GiB".into(), // `client-query-buffer-limit`
            max_pending_output: "64MiB".into(),
            max_reply_depth: 128,
        }
    }
}

impl Default for RawLog {
    fn default() -> RawLog {
        RawLog {
            format: "json".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// A duration or a size as written: text to parse with its unit, or a bare TOML number, kept
/// so that validation can say a unit is required.
#[derive(Debug, Clone, PartialEq)]
enum Quantity {
    Text(String),
    Bare(String),
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quantity, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted number with a unit, such as \"500ms\" or \"64KiB\"")
            }
            fn visit_str<E>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl From<&str> for Quantity {
    fn from(text: &str) -> Quantity {
        Quantity::Text(text.to_owned())
    }
}

/// A password or a password digest as written; "" = none. Neither `Debug` nor a parse error
/// shows it (serde's type errors quote the value, so the visitor writes its own).
#[derive(Clone, Default, PartialEq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted string")
            }
            fn visit_str<E>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(
                    "invalid type: a number, expected a quoted string",
                ))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(
                    "invalid type: a number, expected a quoted string",
                ))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(
                    "invalid type: a number, expected a quoted string",
                ))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(
                    "invalid type: a boolean, expected a quoted string",
                ))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Turns a toml error into a problem at `origin:line:column`, naming the field when the
/// error's position falls on a known key or its value.
fn toml_problem(text: &str, origin: &str, error: &toml::de::Error) -> Problem {
    // Syntax errors can span lines ("invalid table header\nexpected `.`, `]`"); keep one line.
    let mut message = error.message().trim().replace('\n', "; ");
    if message.is_empty() {
        message = "invalid TOML".to_owned();
    }
    let Some(span) = error.span() else {
        return Problem {
            place: origin.to_owned(),
            message,
        };
    };
    let (line, column) = line_column(text, span.start);
    if let Some(path) = field_at(text, span.start) {
        message = format!("{path}: {message}");
    }
    Problem {
        place: format!("{origin}:{line}:{column}"),
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The dotted path of the key at or before byte `offset`: the key an unknown-field error
/// points at, or the key whose value a type error points at (a value always follows its key).
/// `None` when the text does not parse or has no key there.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let mut keys = Vec::new();
    KeySeed {
        prefix: "",
        keys: &mut keys,
    }
    .deserialize(toml::Deserializer::new(text))
    .ok()?;
    keys.into_iter()
        .filter(|(start, _)| *start <= offset)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path)
}

/// Walks any TOML document, recording each key's start offset and dotted path.
struct KeySeed<'a> {
    prefix: &'a str,
    keys: &'a mut Vec<(usize, String)>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let prefix = format!("{}[{index}]", self.prefix);
            if seq
                .next_element_seed(KeySeed {
                    prefix: &prefix,
                    keys: self.keys,
                })?
                .is_none()
            {
                return Ok(());
            }
            index += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
            let path = match self.prefix {
                "" => key.get_ref().clone(),
                prefix => format!("{prefix}.{}", key.get_ref()),
            };
            self.keys.push((key.span().start, path.clone()));
            map.next_value_seed(KeySeed {
                prefix: &path,
                keys: self.keys,
            })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Step 2: command-line flags.

impl RawSettings {
    fn merge(&mut self, overrides: &Overrides) {
        if let Some(listen) = &overrides.listen {
            self.listen = listen.clone();
        }
        if let Some(upstream) = &overrides.upstream {
            self.upstream.address = upstream.clone();
        }
        if let Some(admin) = &overrides.admin_listen {
            self.admin.listen = admin.clone();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Step 3: validate and convert, collecting every problem.

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Redis refuses a multibulk count above `INT_MAX` ("invalid multibulk length").
const MAX_MULTIBULK_LEN: usize = i32::MAX as usize;
/// Redis's own floor for `client-query-buffer-limit`.
const MIN_QUERY_BUFFER: usize = MIB;
/// The ceiling for every size. A whole request sits in the query buffer and `Request` stores
/// argument offsets as `u32`, so requests must stay well below 4 GiB; 2 GiB also fits a
/// 32-bit `usize`.
const MAX_SIZE: usize = 2 * GIB;
/// The ceiling for every duration, so that `Instant + duration` or doubling a backoff can
/// never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Linux accepts a keepalive idle time of 1..=32767 whole seconds (`MAX_TCP_KEEPIDLE`).
const KEEPALIVE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(32_767);
/// Shared upstream connections; each is a multiplexed pipe, so a few carry a lot.
const CONNECTIONS: RangeInclusive<usize> = 1..=64;
const THREADS: RangeInclusive<usize> = 0..=1024;
/// The reply scanner's stack is a `Vec`, so this only bounds memory per connection.
const REPLY_DEPTH: RangeInclusive<usize> = 1..=10_000;

/// Collects problems while fields are converted.
struct Checker<'a> {
    problems: Vec<Problem>,
    overrides: &'a Overrides,
    /// The table being checked, as a prefix of field paths: `""` or e.g. `"upstream."`.
    table: &'static str,
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
fn check_settings(c: &mut Checker, raw: RawSettings) -> Option<Settings> {
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
    let keyspaces = check_keyspaces(c, raw.keyspace, default_mode);
    let users = check_users(c, raw.requirepass_sha256, raw.user, &keyspace_names);
    let local_store = check_local_store(c, raw.local_store);
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
    c.table = "";
    Some(AdminSettings { listen: address? })
}

/// Keyspaces: names unique and non-empty, at least one pattern each, no empty pattern, no
/// pattern listed twice (overlapping patterns are allowed: the first keyspace in file order
/// wins, as documented).
fn check_keyspaces(
    c: &mut Checker,
    raw: Vec<RawKeyspace>,
    default_mode: Option<Mode>,
) -> Option<Keyspaces> {
    let mut list = Vec::with_capacity(raw.len());
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
        let Some(mode) = mode else {
            ok = false;
            continue;
        };
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
    let default_mode = default_mode?;
    ok.then(|| Keyspaces::new(list, default_mode))
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

fn check_local_store(c: &mut Checker, raw: RawLocalStore) -> Option<LocalStoreSettings> {
    c.table = "local_store.";
    let max_bytes = c.check("max_bytes", raw.max_bytes, |q| size(q, KIB..=MAX_SIZE));
    Some(LocalStoreSettings {
        max_bytes: max_bytes?,
    })
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
    let address = c.check("address", raw.address, |s| host_port(&s).map(|()| s));
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
    Some(UpstreamSettings {
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

/// A humantime duration that carries a unit, at most [`MAX_DURATION`].
fn duration(quantity: Quantity) -> Result<Duration, String> {
    let text = match quantity {
        Quantity::Bare(n) => return Err(unit_required(&n, &format!("\"{n}s\" or \"{n}ms\""))),
        Quantity::Text(text) => text,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty; write a duration with a unit, e.g. \"5s\"".to_owned());
    }
    // humantime reads a lone "0" as zero; a unit is required here all the same.
    if !trimmed.chars().any(char::is_alphabetic) {
        return Err(unit_required(
            &format!("{text:?}"),
            &format!("\"{trimmed}s\" or \"{trimmed}ms\""),
        ));
    }
    let value = humantime::parse_duration(trimmed).map_err(|e| {
        format!("{text:?} is not a duration: {e} (write e.g. \"500ms\", \"5s\" or \"1m\")")
    })?;
    if value > MAX_DURATION {
        return Err(format!("{text:?} is longer than the maximum, 365 days"));
    }
    Ok(value)
}

fn unit_required(written: &str, example: &str) -> String {
    format!("{written} has no unit; a unit is required, e.g. {example}")
}

/// A duration where 0 makes no sense.
fn timeout(quantity: Quantity) -> Result<Duration, String> {
    nonzero(duration(quantity)?)
}

fn nonzero(value: Duration) -> Result<Duration, String> {
    if value.is_zero() {
        return Err("must be more than 0s".to_owned());
    }
    Ok(value)
}

/// For options where 0 means "never" or "off".
fn zero_is_off(value: Duration) -> Option<Duration> {
    (!value.is_zero()).then_some(value)
}

/// The kernel counts keepalive idle time in whole seconds, within [`KEEPALIVE`].
fn keepalive(value: Duration) -> Result<Duration, String> {
    if !KEEPALIVE.contains(&value) || value.subsec_nanos() != 0 {
        return Err(format!(
            "must be \"0s\" (off) or whole seconds from 1s to 32767s (the kernel's range), not {}",
            show_duration(value)
        ));
    }
    Ok(value)
}

/// A byte size with a unit, within `range`.
fn size(quantity: Quantity, range: RangeInclusive<usize>) -> Result<usize, String> {
    let text = match quantity {
        Quantity::Bare(n) => {
            return Err(unit_required(
                &n,
                &format!("\"{n}B\" (units: B, KB/KiB, MB/MiB, GB/GiB)"),
            ))
        }
        Quantity::Text(text) => text,
    };
    let bytes = parse_size(&text)?;
    match usize::try_from(bytes) {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => Err(format!(
            "must be between {} and {}, not {text:?}",
            show_size(*range.start()),
            show_size(*range.end())
        )),
    }
}

/// Parses `"<whole number><unit>"` (a space between is allowed; the unit is case-insensitive):
/// B = 1, KB = KiB = 1024, MB = MiB = 1024², GB = GiB = 1024³. Redis reads "1kb" as 1024 too;
/// its "1k" (= 1000) is refused here rather than silently meaning something else.
fn parse_size(text: &str) -> Result<u64, String> {
    let units = "B, KB/KiB, MB/MiB or GB/GiB (KB = KiB = 1024 bytes)";
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a whole number and a unit, e.g. \"64KiB\""
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?} is not a size: the number must be whole; use a smaller unit"
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => {
            return Err(unit_required(
                &format!("{text:?}"),
                &format!("\"{digits}B\" ({units})"),
            ))
        }
        "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "k" | "m" | "g" => {
            return Err(format!(
                "{text:?}: a bare {unit:?} is ambiguous (Redis reads 1k as 1000); write {digits}{}B or {digits}{}iB (both 1024-based)",
                unit.to_ascii_uppercase(),
                unit.to_ascii_uppercase()
            ));
        }
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use {units}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size in the largest unit that divides it exactly: "64KiB", "1GiB", "1000B".
fn show_size(bytes: usize) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes != 0 && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

fn show_duration(value: Duration) -> String {
    if value.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(value).to_string()
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
    EnvFilter::try_new(text).map_err(|e| format!("{text:?} is not a tracing filter: {e}"))?;
    for directive in text.split(',').map(str::trim) {
        if !directive.is_empty()
            && !directive.contains(['=', '['])
            && LevelFilter::from_str(directive).is_err()
        {
            return Err(format!(
                "{directive:?} is not a level (trace, debug, info, warn, error or off); a target needs one, e.g. \"{directive}=debug\""
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/keywarden.toml");

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
            Settings::from_toml_str(EXAMPLE, "config/keywarden.toml", &Overrides::default())
                .unwrap();
        // The example shows one keyspace of each mode; everything else is the defaults.
        let modes: Vec<_> = settings.keyspaces.iter().map(|k| k.mode).collect();
        assert_eq!(modes, [Mode::FailClosed, Mode::Degraded, Mode::LocalOnly]);
        let defaults = Settings::default();
        assert!(defaults.keyspaces.iter().next().is_none());
        assert_eq!(
            Settings {
                keyspaces: defaults.keyspaces.clone(),
                ..settings.clone()
            },
            defaults
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
            "limits.max_bulk_len",
            "limits.max_multibulk_len",
            "limits.max_inline_len",
            "limits.max_query_buffer",
            "limits.max_pending_output",
            "limits.max_reply_depth",
            "log.format",
            "log.level",
            "local_store.max_bytes",
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
            max_reply_depth = 7
            [log]
            format = "text"
            level = "keywarden=debug,warn"
            [[keyspace]]
            name = "limits"
            patterns = ["rl:", "quota:*"]
            mode = "fail_closed"
            [local_store]
            max_bytes = "8MiB"
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
                },
                limits: Limits {
                    max_bulk_len: MIB,
                    max_multibulk_len: 1000,
                    max_inline_len: KIB,
                    max_query_buffer: 2 * GIB,
                    max_pending_output: 100 * KIB,
                    max_reply_depth: 7,
                },
                log: LogSettings {
                    format: LogFormat::Text,
                    level: "keywarden=debug,warn".to_owned()
                },
                instance_id: Some("edge-1".to_owned()),
                keyspaces: Keyspaces::new(
                    vec![Keyspace {
                        name: "limits".to_owned(),
                        patterns: vec![Pattern::parse(b"rl:"), Pattern::parse(b"quota:*")],
                        mode: Mode::FailClosed,
                    }],
                    Mode::Degraded
                ),
                users: Users::open(),
                local_store: LocalStoreSettings { max_bytes: 8 * MIB },
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
                },
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
            let text = format!(
                "[[keyspace]]\nname = {name:?}\npatterns = [\"x:\"]\nmode = \"degraded\"\n"
            );
            assert!(parse(&text).is_ok(), "{name}");
        }
        for name in ["a\"b", "a\\b", "with space", "é"] {
            let text = format!(
                "[[keyspace]]\nname = {name:?}\npatterns = [\"x:\"]\nmode = \"degraded\"\n"
            );
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
        assert_problem("[limits]\nmax_bulk_len = true\n", "test.toml:2:16", "limits.max_bulk_len: invalid type: boolean `true`, expected a quoted number with a unit");
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
    fn durations_need_a_unit() {
        for (text, needle) in [
            (
                "shutdown_timeout = 5",
                "5 has no unit; a unit is required, e.g. \"5s\" or \"5ms\"",
            ),
            (
                "shutdown_timeout = \"5\"",
                "\"5\" has no unit; a unit is required",
            ),
            (
                "shutdown_timeout = 1.5",
                "1.5 has no unit; a unit is required",
            ),
            (
                "client_idle_timeout = \"0\"",
                "\"0\" has no unit; a unit is required",
            ),
            (
                "client_idle_timeout = 0",
                "0 has no unit; a unit is required",
            ),
            ("shutdown_timeout = \"\"", "is empty"),
            ("shutdown_timeout = \"5 parsecs\"", "is not a duration"),
            ("shutdown_timeout = \"-1s\"", "is not a duration"),
            (
                "shutdown_timeout = \"400years\"",
                "longer than the maximum, 365 days",
            ),
        ] {
            let place = text.split(' ').next().unwrap();
            assert_problem(text, place, needle);
        }
    }

    #[test]
    fn durations_are_typed() {
        let cases = [
            ("\"500ms\"", Duration::from_millis(500)),
            ("\"5s\"", Duration::from_secs(5)),
            ("\"1m\"", Duration::from_secs(60)),
            ("\" 2min \"", Duration::from_secs(120)),
            ("\"1h 30m\"", Duration::from_secs(5400)),
            ("\"1.5s\"", Duration::from_millis(1500)),
        ];
        for (written, expected) in cases {
            let settings = parse(&format!("[upstream]\ncommand_timeout = {written}\n")).unwrap();
            assert_eq!(settings.upstream.command_timeout, expected, "{written}");
        }
    }

    #[test]
    fn zero_means_off_only_where_it_makes_sense() {
        let settings = parse("client_idle_timeout = \"0s\"\ntcp_keepalive = \"0ms\"\n").unwrap();
        assert_eq!(
            (settings.client_idle_timeout, settings.tcp_keepalive),
            (None, None)
        );
        let settings = parse("client_idle_timeout = \"30s\"\ntcp_keepalive = \"60s\"\n").unwrap();
        assert_eq!(settings.client_idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(settings.tcp_keepalive, Some(Duration::from_secs(60)));
        for place in [
            "shutdown_timeout",
            "upstream.connect_timeout",
            "upstream.command_timeout",
            "upstream.reconnect_backoff_min",
            "upstream.reconnect_backoff_max",
        ] {
            let text = match place.split_once('.') {
                Some((table, key)) => format!("[{table}]\n{key} = \"0s\"\n"),
                None => format!("{place} = \"0s\"\n"),
            };
            assert_problem(&text, place, "must be more than 0s");
        }
    }

    #[test]
    fn keepalive_is_whole_seconds_in_the_kernels_range() {
        assert_problem(
            "tcp_keepalive = \"1500ms\"",
            "tcp_keepalive",
            "whole seconds from 1s to 32767s",
        );
        assert_problem("tcp_keepalive = \"500ms\"", "tcp_keepalive", "not 500ms");
        assert_problem(
            "tcp_keepalive = \"32768s\"",
            "tcp_keepalive",
            "not 9h 6m 8s",
        );
        assert_eq!(
            parse("tcp_keepalive = \"32767s\"").unwrap().tcp_keepalive,
            Some(Duration::from_secs(32767))
        );
    }

    #[test]
    fn byte_sizes_are_parsed() {
        for (text, bytes) in [
            ("100B", 100),
            ("0b", 0),
            ("1KB", 1024),
            ("64kb", 65536),
            ("64KiB", 65536),
            ("64 kib", 65536),
            ("512MB", 512 << 20),
            ("512MiB", 512 << 20),
            ("1GB", 1 << 30),
            ("1gib", 1 << 30),
            ("16GiB", 16 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for (text, needle) in [
            ("64", "has no unit; a unit is required"),
            (
                "64k",
                "ambiguous (Redis reads 1k as 1000); write 64KB or 64KiB",
            ),
            ("1m", "write 1MB or 1MiB"),
            ("1.5GB", "must be whole"),
            ("-1MB", "expected a whole number and a unit"),
            ("MB", "expected a whole number and a unit"),
            ("1TB", "unknown unit \"TB\""),
            ("1 MBs", "unknown unit"),
            ("99999999999999999999GB", "too large"),
            ("17179869184GiB", "too large"),
        ] {
            let error = parse_size(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
        let limits = parse("[limits]\nmax_bulk_len = \"1kb\"\nmax_pending_output = \"2MB\"\n")
            .unwrap()
            .limits;
        assert_eq!(
            (limits.max_bulk_len, limits.max_pending_output),
            (1024, 2 << 20)
        );
    }

    #[test]
    fn byte_sizes_need_a_unit_and_sane_bounds() {
        assert_problem(
            "[limits]\nmax_bulk_len = 512\n",
            "limits.max_bulk_len",
            "512 has no unit; a unit is required, e.g. \"512B\"",
        );
        assert_problem(
            "[limits]\nmax_bulk_len = \"512\"\n",
            "limits.max_bulk_len",
            "\"512\" has no unit",
        );
        assert_problem(
            "[limits]\nmax_bulk_len = \"0B\"\n",
            "limits.max_bulk_len",
            "must be between 1B and 2GiB, not \"0B\"",
        );
        assert_problem(
            "[limits]\nmax_inline_len = \"1000B\"\n",
            "limits.max_inline_len",
            "must be between 1KiB and 2GiB",
        );
        assert_problem(
            "[limits]\nmax_query_buffer = \"4GiB\"\n",
            "limits.max_query_buffer",
            "must be between 1MiB and 2GiB",
        );
        assert_problem(
            "[limits]\nmax_multibulk_len = 2147483648\n",
            "limits.max_multibulk_len",
            "must be between 1 and 2147483647",
        );
        assert_problem(
            "[limits]\nmax_reply_depth = 0\n",
            "limits.max_reply_depth",
            "must be between 1 and 10000, not 0",
        );
        assert_problem(
            "[limits]\nmax_bulk_len = \"2GiB\"\n",
            "limits.max_bulk_len",
            "2GiB is more than limits.max_query_buffer (1GiB)",
        );
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
                parse(&format!("listen = {good:?}")).unwrap().listen,
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
        for good in ["127.0.0.1:9121", "[::1]:9121", "0.0.0.0:0"] {
            assert_eq!(
                parse(&format!("[admin]\nlisten = {good:?}"))
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
        let text = "listen = \"127.0.0.1:1111\"\n[upstream]\naddress = \"file-host:2222\"\nconnections = 3\n";
        let overrides = Overrides {
            listen: Some("0.0.0.0:7000".to_owned()),
            upstream: Some("flag-host:7001".to_owned()),
            admin_listen: Some("127.0.0.1:9121".to_owned()),
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
            listen: Some("0.0.0.0:7000".to_owned()),
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

    /// `printf %s password | sha256sum`
    const PASSWORD_SHA256: &str =
        "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    const TWO_KEYSPACES: &str = r#"
        [[keyspace]]
        name = "limits"
        patterns = ["rl:"]
        mode = "fail_closed"
        [[keyspace]]
        name = "page-cache"
        patterns = ["cache:*"]
        mode = "degraded"
    "#;

    fn users(text: &str) -> Users {
        parse(&format!("{text}\n{TWO_KEYSPACES}")).unwrap().users
    }

    fn user_problems(text: &str) -> Vec<String> {
        problems(&format!("{text}\n{TWO_KEYSPACES}"))
    }

    #[test]
    fn no_password_by_default() {
        let users = parse("").unwrap().users;
        assert!(!users.required());
        assert_eq!(users, Users::open());
        assert_eq!(
            parse("requirepass_sha256 = \"\"").unwrap().users,
            Users::open()
        );
    }

    #[test]
    fn requirepass_is_the_default_users_password() {
        for hex in [PASSWORD_SHA256.to_owned(), PASSWORD_SHA256.to_uppercase()] {
            let users = parse(&format!("requirepass_sha256 = {hex:?}"))
                .unwrap()
                .users;
            assert!(users.required());
            let id = users.auth(None, b"password").unwrap();
            assert_eq!(users.user(id).name(), "default");
            assert_eq!(users.user(id).commands(), &CommandAccess::All);
            assert_eq!(users.user(id).keys(), &KeyAccess::All);
            assert!(users.authenticate(b"default", b"passwordx").is_none());
        }
    }

    #[test]
    fn users_are_typed() {
        let users = users(&format!(
            r#"
            requirepass_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "reports"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = ["page-cache", "default"]
            key_patterns = ["report:", "r?:*"]
            categories = ["read", "CONNECTION"]
            [[user]]
            name = "ops"
            password_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "all-star"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = ["*", "limits"]
            key_patterns = ["x"]
            categories = ["read", "all"]
            [[user]]
            name = "nothing"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = []
            categories = []
            [[user]]
            name = "patterns-only"
            password_sha256 = "{PASSWORD_SHA256}"
            key_patterns = ["tmp:"]
            "#
        ));
        let by_name = |name: &str| {
            users
                .iter()
                .find(|(_, u)| u.name() == name)
                .unwrap_or_else(|| panic!("{name}"))
                .1
        };
        let names: Vec<&str> = users.iter().map(|(_, u)| u.name()).collect();
        assert_eq!(
            names,
            [
                "default",
                "reports",
                "ops",
                "all-star",
                "nothing",
                "patterns-only"
            ]
        );
        let reports = by_name("reports");
        assert_eq!(
            reports.commands(),
            &CommandAccess::Categories(Categories::READ | Categories::CONNECTION)
        );
        assert_eq!(
            reports.keys(),
            &KeyAccess::Only {
                patterns: vec![Pattern::parse(b"report:"), Pattern::parse(b"r?:*")],
                keyspaces: vec![Membership::Named(1), Membership::Default],
            }
        );
        for name in ["ops", "all-star"] {
            assert_eq!(by_name(name).commands(), &CommandAccess::All, "{name}");
            assert_eq!(by_name(name).keys(), &KeyAccess::All, "{name}");
        }
        assert_eq!(
            by_name("nothing").commands(),
            &CommandAccess::Categories(Categories::empty())
        );
        assert_eq!(
            by_name("nothing").keys(),
            &KeyAccess::Only {
                patterns: vec![],
                keyspaces: vec![]
            }
        );
        assert_eq!(
            by_name("patterns-only").keys(),
            &KeyAccess::Only {
                patterns: vec![Pattern::parse(b"tmp:")],
                keyspaces: vec![]
            }
        );
        let id = users.authenticate(b"reports", b"password").unwrap();
        assert_eq!(users.user(id).name(), "reports");
    }

    #[test]
    fn users_are_checked() {
        let found = user_problems(&format!(
            r#"
            requirepass_sha256 = "abc"
            [[user]]
            name = ""
            password_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "two words"
            password_sha256 = "not a digest"
            [[user]]
            name = "app"
            password_sha256 = ""
            keyspaces = ["limits", "sessions"]
            key_patterns = ["ok:", ""]
            categories = ["read", "@write", "bogus"]
            [[user]]
            name = "app"
            password_sha256 = "{PASSWORD_SHA256}"
            "#
        ));
        let places: Vec<&str> = found
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            places,
            [
                "requirepass_sha256",
                "user[0].name",
                "user[1].name",
                "user[1].password_sha256",
                "user[2].password_sha256",
                "user[2].categories",
                "user[2].keyspaces",
                "user[2].key_patterns",
                "user[3].name",
            ],
            "{found:#?}"
        );
        let all = found.join("\n");
        for needle in [
            "requirepass_sha256: is not a SHA-256 digest: write 64 hex digits",
            "user[0].name: is empty",
            "\"two words\" contains a space",
            "user[2].password_sha256: is required",
            "write \"write\", without the @",
            "keyspace \"sessions\" is not defined",
            "an empty pattern would match every key",
            "user[3].name: user \"app\" is defined twice",
        ] {
            assert!(all.contains(needle), "{needle:?} not in {all}");
        }
        let found = user_problems(
            "[[user]]\nname = \"u\"\npassword_sha256 = \"x\"\ncategories = [\"bogus\"]\n",
        );
        assert!(
            found[1].contains(
                "\"bogus\" is not an ACL category; use \"all\" or some of: keyspace, read, write,"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn default_user_is_configured_one_way_only() {
        let text = format!(
            "requirepass_sha256 = \"{PASSWORD_SHA256}\"\n[[user]]\nname = \"default\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\n"
        );
        assert_problem(
            &text,
            "user[0].name",
            "user \"default\" and requirepass_sha256 both set the default user's password",
        );
        // Alone, a [[user]] named default replaces the implicit one, permissions and all.
        let users = users(&format!(
            "[[user]]\nname = \"default\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\ncategories = [\"read\"]\n"
        ));
        let id = users.auth(None, b"password").unwrap();
        assert_eq!(
            users.user(id).commands(),
            &CommandAccess::Categories(Categories::READ)
        );
        // Users without a `default`: no one to log in as with AUTH <password>.
        let users = users_without_default();
        assert!(users.required());
        assert_eq!(users.default_user(), None);
        assert_eq!(
            users.auth(None, b"password"),
            Err(auth::AuthError::WrongPass)
        );
    }

    fn users_without_default() -> Users {
        users(&format!(
            "[[user]]\nname = \"app\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\n"
        ))
    }

    #[test]
    fn a_user_needs_a_name_and_a_digest() {
        assert_problem(
            "[[user]]\nname = \"app\"\n",
            "test.toml:1:1",
            "missing field `password_sha256`",
        );
        assert_problem(
            "[[user]]\nname = \"app\"\npassword_sha256 = \"x\"\nkeys = []\n",
            "test.toml:4:1",
            "user[0].keys: unknown field `keys`",
        );
    }

    #[test]
    fn upstream_credentials() {
        let upstream = parse("").unwrap().upstream;
        assert_eq!((upstream.username, upstream.password), (None, None));
        let upstream = parse("[upstream]\npassword = \"pw\"\n").unwrap().upstream;
        assert_eq!(
            (upstream.username, upstream.password.as_deref()),
            (None, Some("pw"))
        );
        assert_problem(
            "[upstream]\nusername = \"proxy\"\n",
            "upstream.username",
            "needs upstream.password",
        );
        assert_problem(
            "[upstream]\nusername = \"a b\"\npassword = \"pw\"\n",
            "upstream.username",
            "contains a space",
        );
    }

    #[test]
    fn secrets_never_show() {
        const PLAIN: &str = "hunter2-plaintext";
        let text = format!(
            r#"
            requirepass_sha256 = "{PASSWORD_SHA256}"
            [upstream]
            username = "proxy"
            password = "{PLAIN}"
            [[user]]
            name = "app"
            password_sha256 = "{PASSWORD_SHA256}"
            "#
        );
        let settings = parse(&text).unwrap();
        let debug = format!(
            "{settings:?} {:?}",
            toml::from_str::<RawSettings>(&text).unwrap()
        );
        for secret in [PLAIN, PASSWORD_SHA256] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("password: Some(\"<redacted>\")"), "{debug}");
        // A plaintext password in a digest's place, or a value of the wrong type, is never
        // quoted back.
        for bad in [
            format!("requirepass_sha256 = \"{PLAIN}\""),
            format!("[[user]]\nname = \"a\"\npassword_sha256 = \"{PLAIN}\""),
            "requirepass_sha256 = 987654321".to_owned(),
            "[upstream]\npassword = 987654321".to_owned(),
            "[upstream]\npassword = true".to_owned(),
        ] {
            let shown = parse(&bad).unwrap_err().to_string();
            assert!(
                !shown.contains(PLAIN) && !shown.contains("987654321"),
                "{shown}"
            );
        }
        assert_problem(
            "[upstream]\npassword = 987654321",
            "test.toml:2:12",
            "upstream.password: invalid type: a number, expected a quoted string",
        );
    }

    #[test]
    fn example_user_block_is_valid() {
        // The commented-out [[user]] of the example, uncommented, is a working config.
        let block: Vec<&str> = EXAMPLE
            .lines()
            .skip_while(|line| *line != "# [[user]]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| &line[2..])
            .collect();
        assert!(block.len() > 3, "no [[user]] example found");
        let text = format!("{EXAMPLE}\n{}\n", block.join("\n"));
        let users = parse(&text).unwrap().users;
        assert!(users.required());
        assert!(users
            .iter()
            .any(|(_, u)| matches!(u.keys(), KeyAccess::Only { .. })));
    }

    #[test]
    fn sizes_and_durations_display_readably() {
        assert_eq!(show_size(64 * KIB), "64KiB");
        assert_eq!(show_size(GIB), "1GiB");
        assert_eq!(show_size(1000), "1000B");
        assert_eq!(show_size(0), "0B");
        assert_eq!(show_duration(Duration::ZERO), "0s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1s 500ms");
    }
}
