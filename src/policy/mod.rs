//! Decisions, pure: keyspaces and their globs, users and permissions, and the router.

pub mod auth;
pub(crate) mod glob;
pub mod keyspace;
pub(crate) mod router;
