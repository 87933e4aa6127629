//! The proxy: the listener, the state every session shares, the clients, and the sessions.

pub mod clients;
pub mod listener;
pub mod server;
pub mod session;
