//! Operations: events, metrics, the admin listener, INFO and hot reload.

pub(crate) mod admin;
pub mod events;
pub(crate) mod info;
pub(crate) mod metrics;
pub(crate) mod reload;
