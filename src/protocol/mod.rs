//! Bytes on the wire: the request parser, a parsed request, and the upstream reply scanner.

pub mod parser;
pub mod request;
pub(crate) mod resp;
pub mod scanner;
