//! Configuration: one TOML file, parsed, merged with command-line flags, validated, typed.
//!
//! (Owned by the config work: loading and validation are filled in there. The typed
//! `Settings` below is the contract the rest of the proxy reads.)

use std::net::SocketAddr;
use std::time::Duration;

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
}

#[derive(Debug, Clone, PartialEq)]
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
}

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
