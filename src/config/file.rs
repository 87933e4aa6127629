//! Step 1 of the pipeline: the file as written. serde reads it into [`RawSettings`], unknown
//! fields rejected; a TOML syntax error or a serde error (unknown field, wrong type) becomes a
//! [`Problem`] at `file:line:column`, naming the field when it can be found.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::config::problem::Problem;
use crate::config::settings::{MAX_MULTIBULK_LEN, REDACTED};
use crate::config::units::Quantity;

/// The file as serde reads it; a field the file leaves out keeps its default. Durations and
/// sizes stay [`Quantity`] and counts stay `i64` so that a bad value is a validation problem,
/// reported together with all the others, rather than a parse error that hides the rest.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) listen: String,
    pub(super) max_clients: i64,
    pub(super) client_idle_timeout: Quantity,
    pub(super) tcp_keepalive: Quantity,
    pub(super) shutdown_timeout: Quantity,
    pub(super) threads: i64,
    pub(super) upstream: RawUpstream,
    pub(super) limits: RawLimits,
    pub(super) log: RawLog,
    pub(super) instance_id: String,
    pub(super) requirepass_sha256: Secret,
    pub(super) protected_mode: bool,
    pub(super) default_mode: String,
    pub(super) keyspace: Vec<RawKeyspace>,
    pub(super) user: Vec<RawUser>,
    pub(super) local_store: RawLocalStore,
    pub(super) health: RawHealth,
    pub(super) events: RawEvents,
    pub(super) admin: RawAdmin,
    pub(super) tls: RawTls,
}

/// `[tls]`: a TLS listener for clients; `listen` empty (the default) = none.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: String,
    pub(super) cert_file: String,
    pub(super) key_file: String,
    pub(super) ca_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyspace {
    pub(super) name: String,
    pub(super) patterns: Vec<String>,
    pub(super) mode: String,
    /// Absent = an equal share of what the keyspaces with a budget leave.
    #[serde(default)]
    pub(super) max_bytes: Option<Quantity>,
    #[serde(default)]
    pub(super) eviction: Option<String>,
}

/// A `[[user]]`. `keyspaces` and `key_patterns` both absent = every key; `categories` absent
/// = every command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password_sha256: Secret,
    pub(super) keyspaces: Option<Vec<String>>,
    pub(super) key_patterns: Option<Vec<String>>,
    pub(super) categories: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLocalStore {
    pub(super) max_bytes: Quantity,
    /// The default keyspace's budget; absent = a share, as a keyspace without one.
    pub(super) default_max_bytes: Option<Quantity>,
    pub(super) default_eviction: String,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) probe_interval: Quantity,
    pub(super) probe_timeout: Quantity,
    pub(super) failure_threshold: i64,
    pub(super) success_threshold: i64,
}

/// `listen` empty (the default) = no admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    pub(super) token_sha256: Secret,
}

/// `file` empty (the default) = events go to the log only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) file: String,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// Absent = the default, unless `[upstream.sentinel]` names the upstream instead.
    pub(super) address: Option<String>,
    pub(super) connections: i64,
    pub(super) connect_timeout: Quantity,
    pub(super) command_timeout: Quantity,
    pub(super) reconnect_backoff_min: Quantity,
    pub(super) reconnect_backoff_max: Quantity,
    /// "" = none.
    pub(super) username: String,
    /// "" = none.
    pub(super) password: Secret,
    /// `[upstream.tls]`: present = TLS on every upstream connection.
    pub(super) tls: Option<RawUpstreamTls>,
    /// `[upstream.sentinel]`: present = the upstream is the primary Sentinel names.
    pub(super) sentinel: Option<RawSentinel>,
    /// Seed nodes of a Redis Cluster: present = the upstream is that cluster.
    pub(super) cluster_nodes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) addresses: Vec<String>,
    pub(super) master: String,
    /// "" = none.
    pub(super) username: String,
    /// "" = none.
    pub(super) password: Secret,
    /// Reach the sentinels over TLS, with `[upstream.tls]`'s CA and client certificate.
    pub(super) tls: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub(super) ca_file: String,
    pub(super) cert_file: String,
    pub(super) key_file: String,
    pub(super) server_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_bulk_len: Quantity,
    pub(super) max_multibulk_len: i64,
    pub(super) max_inline_len: Quantity,
    pub(super) max_query_buffer: Quantity,
    pub(super) max_pending_output: Quantity,
    pub(super) max_client_output: Quantity,
    pub(super) max_total_output: Quantity,
    pub(super) max_reply_depth: i64,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) level: String,
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
            protected_mode: true,                  // as Redis's `protected-mode yes`
            default_mode: "fail_closed".to_owned(),
            keyspace: Vec::new(),
            user: Vec::new(),
            local_store: RawLocalStore::default(),
            health: RawHealth::default(),
            events: RawEvents::default(),
            admin: RawAdmin::default(), // off: it would expose state on a port nobody chose
            tls: RawTls::default(),     // off
        }
    }
}

impl Default for RawLocalStore {
    fn default() -> RawLocalStore {
        RawLocalStore {
            max_bytes: "64MiB".into(),
            default_max_bytes: None,
            default_eviction: "lru".to_owned(),
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
            address: None, // 127.0.0.1:6379, see DEFAULT_UPSTREAM
            connections: 2,
            connect_timeout: "500ms".into(),
            command_timeout: "1s".into(),
            reconnect_backoff_min: "10ms".into(),
            reconnect_backoff_max: "50ms".into(),
            username: String::new(),
            password: Secret::default(),
            tls: None,
            sentinel: None,
            cluster_nodes: None,
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
            max_client_output: "512MiB".into(), // `client-output-buffer-limit` (hard)
            max_total_output: "2GiB".into(),    // `maxmemory-clients`
            max_reply_depth: 8192, // above what a script can return (Lua's C stack: < 8000)
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

/// A password or a password digest as written; "" = none. Neither `Debug` nor a parse error
/// shows it (serde's type errors quote the value, so the visitor writes its own).
#[derive(Clone, Default, PartialEq)]
pub(super) struct Secret(pub(super) String);

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
pub(super) fn toml_problem(text: &str, origin: &str, error: &toml::de::Error) -> Problem {
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
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
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
