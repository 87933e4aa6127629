//! Operations: events, metrics, the admin listener, INFO and hot reload.

pub mod admin;
pub mod events;
pub mod info;
pub mod metrics;
pub mod reload;
