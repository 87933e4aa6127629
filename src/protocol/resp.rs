//! Replies the proxy writes itself, encoded as Redis encodes them.

use std::fmt::Write;

use bytes::{BufMut, Bytes, BytesMut};

/// A text reply (INFO, CLIENT LIST/INFO) holding `text`: a bulk string, or a verbatim string
/// (`txt`) for RESP3, as Redis sends them.
pub(crate) fn text(text: &str, resp3: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 16);
    if resp3 {
        let _ = write!(out, "={}\r\ntxt:", text.len() + 4);
    } else {
        let _ = write!(out, "${}\r\n", text.len());
    }
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}
