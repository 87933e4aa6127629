//! Redis Cluster's hash slots: which of the 16384 slots a key belongs to, and whether the keys
//! of one request share a slot.

use crc16::{State, XMODEM};

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot of `key`, as Redis Cluster computes it (`keyHashSlot` in cluster.c): CRC16-XMODEM
/// of the key modulo 16384, or of its hash tag: the bytes between the first `{` and the
/// first `}` after it, when there is at least one byte between them.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    State::<XMODEM>::calculate(hashed) & (SLOTS as u16 - 1)
}

/// Keys in more than one slot: Redis Cluster's CROSSSLOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossSlot;

/// The one slot every key in `keys` maps to: `Ok(None)` without keys.
pub fn common_slot<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Result<Option<u16>, CrossSlot> {
    let mut slot = None;
    for key in keys {
        let s = key_slot(key);
        match slot {
            None => slot = Some(s),
            Some(first) if first != s => return Err(CrossSlot),
            Some(_) => {}
        }
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // From Redis's own documentation and `CLUSTER KEYSLOT` on redis-server 7.0.15.
        assert_eq!(key_slot(b"123456789"), 0x31C3 & 16383);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // An empty tag hashes the whole key; only the first tag counts.
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{"), key_slot(b"{"));
    }

    #[test]
    fn keys_share_a_slot_or_not() {
        assert_eq!(common_slot([]), Ok(None));
        assert_eq!(
            common_slot([&b"{a}1"[..], b"{a}2"]),
            Ok(Some(key_slot(b"a")))
        );
        assert_eq!(common_slot([&b"foo"[..], b"bar"]), Err(CrossSlot));
    }
}
