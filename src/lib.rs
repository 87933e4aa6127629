//! keywarden: a Redis-protocol proxy that decides, per keyspace, what happens when its upstream
//! is unavailable.
//!
//! # Layout
//! Folders by role, each depending only on the ones listed before it (`scripts/check-layout`
//! holds CI to it):
//! - [`error`]: every error the proxy answers with, and the one function that puts it on the
//!   wire.
//! - `protocol/`: bytes on the wire. [`parser`](protocol::parser) (the resumable, zero-copy
//!   request parser: RESP multibulk and inline), [`request`](protocol::request) (a parsed
//!   request: raw bytes and argument spans), [`scanner`](protocol::scanner) (the iterative,
//!   depth-capped scanner that frames upstream replies), `resp` (replies the proxy writes).
//! - [`command`]: the command table (flags, ACL categories, key specs), key extraction, and
//!   whether a command needs its own upstream connection.
//! - `policy/`: decisions, pure. [`keyspace`](policy::keyspace) (keyspaces and their modes),
//!   `glob` (Redis's glob on bytes), [`auth`](policy::auth) (users, AUTH, command and key
//!   permissions), `router` (keyspace + health + command → upstream, local or refused).
//! - [`config`]: the TOML file, command-line overrides, checks and typed settings, the command
//!   line ([`cli`](config::cli)), and `live`: the configuration in force, swapped whole by a
//!   reload.
//! - `local/`: the local store. `engine` (Redis's semantics for the commands served locally),
//!   [`store`](local::store) (byte-bounded, exactly-LRU, per-key deadlines), `clock`.
//! - `upstream/`: the upstream Redis. `shared` (the multiplexer: shared connections carrying
//!   many clients' requests), `dedicated` (a client's own connection), `handshake` (the
//!   proxy's login on every connection), `socket`, `inbox` (where replies are dropped for a
//!   session), [`health`](upstream::health) (the state machine, pure),
//!   [`monitor`](upstream::monitor) (its driver and probe), `outage` (what an outage counts),
//!   `histogram` (request latency).
//! - `ops/`: operations, given data. [`events`](ops::events) (the catalogue and `emit`),
//!   `metrics` (Prometheus), `admin` (the admin HTTP listener), `info` (INFO's `# Keywarden`
//!   section), `reload` (hot reload).
//! - `proxy/`: the proxy. [`listener`](proxy::listener) (accepts clients, runs shutdown),
//!   `server` (what every session shares, and the server as one batch sees it), `clients`
//!   (the connected clients and the proxy's phase), `session` (one task per client).
//! - `fuzzing` (hidden): what each fuzz target in `fuzz/` runs, and the invariants it checks.
//!
//! # The data path
//! `proxy::listener` → `proxy::session` (one task per client; its event loop) →
//! `protocol::parser` → `proxy::session::batch` (classify → admit → answer or route → queue)
//! → `command` (name, flags, key positions) → `policy::router` (keyspace + health → upstream,
//! local or refused) → `upstream::shared` (or `upstream::dedicated`) or `local::engine` →
//! replies back through `upstream::inbox` → `proxy::session::busy` (written in request order).

// `pub` says what the binary and the tests use; everything else is `pub(crate)`.
#![warn(unreachable_pub)]

pub mod command;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod local;
pub mod ops;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod upstream;
