//! keywarden: a Redis-protocol proxy that decides, per keyspace, what happens when its upstream
//! is unavailable.
//!
//! # Layout
//! The data path, in order:
//! - [`server`]: the listener; accepts clients, enforces `max_clients`, runs graceful shutdown.
//! - [`session`]: one task per client; reads requests, dispatches them, writes replies in order;
//!   [`client_state`]: what the proxy keeps of a client's connection state (database, protocol,
//!   name, user); [`connection`]: the connection commands the proxy answers (HELLO, AUTH,
//!   SELECT, RESET, CLIENT SETNAME...); [`transaction`]: MULTI/EXEC/WATCH, queued by the proxy.
//! - [`parser`]: the resumable, zero-copy request parser (RESP multibulk and inline).
//! - [`request`]: a parsed request: raw bytes plus argument spans.
//! - [`command`]: the command table (flags, ACL categories, key specs), key extraction, and
//!   whether a command needs its own upstream connection.
//! - [`router`]: the routing decision: keyspace + health + command -> upstream, local, refuse.
//! - [`keyspace`]: keyspaces and their modes; [`glob`]: Redis glob patterns on bytes.
//! - [`upstream`]: the multiplexer: shared upstream connections carrying many clients' requests.
//! - [`dedicated`]: a client's own upstream connection once it uses connection state.
//! - [`reply`]: the iterative, depth-capped reply scanner that frames upstream replies.
//! - [`engine`]: the local engine: Redis's semantics for the commands served locally;
//!   [`store`]: the byte-bounded, exactly-LRU local store with per-key deadlines.
//! - [`inbox`]: where upstream connections drop a session's replies, and how it is woken.
//!
//! Around it:
//! - [`auth`]: users, AUTH, and per-user command and key permissions (pure).
//! - [`config`]: the TOML file, command-line overrides, validation, typed settings.
//! - [`cli`]: the command line; [`reload`]: the configuration in force, and hot reload.
//! - [`clients`]: the connected clients, the proxy's phase (run, drain, stop), waking them all.
//! - [`info`]: INFO's `# Keywarden` section, appended to the upstream's.
//! - [`error`]: every error the proxy answers with, and its wire form.
//! - [`socket`]: socket options (TCP_NODELAY, keepalive) and connecting with a timeout.
//! - [`health`]: the upstream health state machine (pure); [`monitor`]: its driver, with the
//!   active probe and the published snapshot; [`events`]: the event catalogue and `emit`.
//! - [`metrics`]: the metrics catalogue, recorded per server and rendered for Prometheus;
//!   [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/status`).

pub mod command;
pub mod config;
pub mod error;
pub mod local;
pub mod ops;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod upstream;
