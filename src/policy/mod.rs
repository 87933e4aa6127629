//! Decisions, pure: keyspaces and their globs, users and permissions, and the router.

pub mod auth;
pub mod glob;
pub mod keyspace;
pub mod router;
