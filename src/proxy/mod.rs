//! The proxy: the listener, the state every session shares, the clients, and the sessions.

pub(crate) mod clients;
pub mod listener;
mod parker;
pub(crate) mod parking;
pub(crate) mod server;
pub(crate) mod session;

/// The Redis version HELLO reports when the upstream has not told its own.
pub use session::connection_commands::SERVER_VERSION;
