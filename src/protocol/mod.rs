//! Bytes on the wire: the request parser, a parsed request, and the upstream reply scanner.

pub mod parser;
pub mod request;
pub(crate) mod resp;
pub mod scanner;

use bytes::BytesMut;

/// The largest frame a read buffer is sized for before its bytes arrive (Redis likewise sizes
/// its query buffer for a large argument from its `$<len>` line). Above it the buffer grows as
/// bytes come, doubling, so that a length alone cannot make a connection hold much.
pub(crate) const PRESIZE_MAX: usize = 4 << 20;

/// Makes room in `buf` before a read: for the whole frame in progress when `wants` (the
/// length the buffer must reach, from [`parser::RequestParser::wants`] or
/// [`scanner::ReplyScanner::wants`]) is known and at most `limit` (and [`PRESIZE_MAX`]), once:
/// a buffer already that large takes nothing more until the frame is in; otherwise at least a
/// quarter `chunk`, doubling a buffer that fills up.
pub(crate) fn make_room(buf: &mut BytesMut, wants: usize, chunk: usize, limit: usize) {
    if wants > buf.len() && wants <= PRESIZE_MAX.min(limit) {
        if wants > buf.capacity() {
            buf.reserve(wants - buf.len());
        }
        return;
    }
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk.max(buf.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_frame_is_read_into_one_allocation() {
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"$1048576\r\n");
        make_room(&mut buf, 11 + 1_048_576 + 2, 4096, usize::MAX);
        let cap = buf.capacity();
        assert!(cap >= 11 + 1_048_576 + 2);
        // Nearly in: nothing more is reserved (no doubling of what is already there).
        buf.resize(11 + 1_048_576, b'x');
        make_room(&mut buf, 11 + 1_048_576 + 2, 4096, usize::MAX);
        assert_eq!(buf.capacity(), cap);
        // Over the caller's limit (a client's max_query_buffer): not sized up front.
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"$1048576\r\n");
        make_room(&mut buf, 11 + 1_048_576 + 2, 4096, 1 << 19);
        assert!(buf.capacity() < 1 << 19);
        // Past the limit, doubling.
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"$99999999\r\n");
        make_room(&mut buf, 100_000_000, 4096, usize::MAX);
        assert!(buf.capacity() < 1 << 20);
        // Nothing wanted: a chunk when the room is short.
        let mut buf = BytesMut::new();
        make_room(&mut buf, 0, 4096, usize::MAX);
        assert!(buf.capacity() >= 4096);
    }
}
