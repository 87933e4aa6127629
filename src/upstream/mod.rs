//! The upstream Redis: shared and dedicated connections, their sockets, and its health.

pub mod dedicated;
pub mod handshake;
pub mod health;
pub mod histogram;
pub mod inbox;
pub mod monitor;
pub mod outage;
pub mod shared;
pub mod socket;
