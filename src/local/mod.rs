//! The local store and the engine that gives it Redis's semantics.

pub(crate) mod clock;
pub mod engine;
pub mod store;
