//! Step 4 of the pipeline: the typed settings the proxy runs with, and their parts. Only the
//! checks build them, from a file that had no problem.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigSource;
use crate::policy::auth;
use crate::policy::keyspace::{Keyspaces, StoreShare};

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
    /// The TLS listener for clients, if any.
    pub tls: Option<ClientTls>,
    /// Where these settings were read from, to read them again on a reload; `None` for
    /// settings that came from text (the built-in defaults, tests).
    pub source: Option<ConfigSource>,
}

/// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where it listens; `None` (the default) = no admin listener.
    pub listen: Option<SocketAddr>,
    /// The digest of the bearer token every request must carry (`Authorization: Bearer
    /// <token>`); `None` = no token asked. Required for a listener beyond loopback.
    pub token: Option<auth::PasswordHash>,
}

/// A TLS listener for clients, as Redis's `tls-port`, beside the plain `listen` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub listen: SocketAddr,
    /// PEM: the certificate chain keywarden presents, and its private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one
    /// (Redis's `tls-auth-clients yes`).
    pub ca_file: Option<PathBuf>,
}

/// A primary found and followed through Redis Sentinel.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// `host:port` of each sentinel, asked in order.
    pub addresses: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub master: String,
    /// Credentials for the sentinels themselves (`AUTH`), if they require them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Reach the sentinels over TLS, with the upstream's CA and client certificate (the
    /// name checked is each sentinel's host).
    pub tls: bool,
}

impl fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SentinelSettings {
            addresses,
            master,
            username,
            password,
            tls,
        } = self;
        f.debug_struct("SentinelSettings")
            .field("addresses", addresses)
            .field("master", master)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| REDACTED))
            .field("tls", tls)
            .finish()
    }
}

/// TLS toward the upstream (Redis's `--tls` in its clients).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM CA certificates the upstream's certificate must be signed by.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for an upstream that asks for one
    /// (`tls-auth-clients yes`, Redis's default).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the upstream's certificate must carry; the address's host when not set.
    pub server_name: Option<String>,
}

/// The local store serving `degraded` and `local_only` keyspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStoreSettings {
    /// The byte budget of the whole store, divided among the keyspaces (see
    /// [`crate::policy::keyspace::Keyspaces::budgets`]).
    pub max_bytes: usize,
    /// Keyspaces' own budgets and what each does when full, by name (`default` for keys in no
    /// keyspace), for those that set either; a keyspace not listed shares what is left and
    /// evicts.
    pub shares: Vec<StoreShare>,
}

/// How upstream health is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// How often the active probe PINGs the upstream.
    pub probe_interval: Duration,
    /// A probe without `+PONG` within this long failed.
    pub probe_timeout: Duration,
    /// Consecutive failed results (failed probes, with the data path's timeouts they confirm)
    /// that make a healthy upstream unavailable. A refused connect flips it at once.
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
    /// The oldest request on a connection without a reply after this long fails; the
    /// connection stays while the probe judges the upstream (see `upstream::shared`).
    pub command_timeout: Duration,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// The ACL user the proxy logs in as on its own upstream connections (`AUTH username
    /// password`); `None` = `default` (`AUTH password`), when a password is set.
    pub username: Option<String>,
    /// The password for those connections, in plain text because the proxy must send it;
    /// `None` = no AUTH. Never shown by `Debug`.
    pub password: Option<String>,
    /// TLS on every upstream connection, if set.
    pub tls: Option<UpstreamTls>,
    /// When set, the upstream is the primary these sentinels name, followed across
    /// failovers; `address` is then only where it was first found.
    pub sentinel: Option<SentinelSettings>,
    /// When not empty, the upstream is the Redis Cluster these seed nodes belong to (the
    /// other nodes are discovered); `address` is then the first seed.
    pub cluster_nodes: Vec<String>,
}

impl UpstreamSettings {
    /// How events, metrics and INFO name the upstream: its address, or `sentinel:<master>`
    /// when Sentinel says where it is (the address changes with failovers; the name does not).
    pub fn name(&self) -> String {
        match &self.sentinel {
            Some(s) => format!("sentinel:{}", s.master),
            None if !self.cluster_nodes.is_empty() => format!("cluster:{}", self.address),
            None => self.address.clone(),
        }
    }
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
            tls,
            sentinel,
            cluster_nodes,
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
            .field("tls", tls)
            .field("sentinel", sentinel)
            .field("cluster_nodes", cluster_nodes)
            .finish()
    }
}

/// What `Debug` shows in place of a password or a password digest.
pub(super) const REDACTED: &str = "<redacted>";

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
    /// Reply bytes held for one client at which it is closed (Redis's hard
    /// `client-output-buffer-limit`).
    pub max_client_output: usize,
    /// Reply bytes held for all clients together above which those holding more than
    /// `max_pending_output` are closed (Redis's `maxmemory-clients`).
    pub max_total_output: usize,
    /// Deepest nesting of aggregate replies the reply scanner follows.
    pub max_reply_depth: usize,
}

/// Redis refuses a multibulk count above `INT_MAX` ("invalid multibulk length").
pub(super) const MAX_MULTIBULK_LEN: usize = i32::MAX as usize;

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
