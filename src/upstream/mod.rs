//! The upstream Redis: shared and dedicated connections, their sockets, and its health.

pub(crate) mod catalog;
pub(crate) mod cluster;
pub(crate) mod dedicated;
pub(crate) mod handshake;
pub mod health;
pub(crate) mod histogram;
pub(crate) mod holds;
pub(crate) mod inbox;
pub mod monitor;
pub(crate) mod outage;
pub(crate) mod shared;
pub(crate) mod socket;
pub mod target;
pub(crate) mod tls;
pub mod workers;
