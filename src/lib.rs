//! keywarden: a Redis-protocol proxy.
pub mod request;
pub mod config;
