//! How the store holds a key (database prefix included): a short one inline, a longer one in a
//! shared buffer.
//!
//! A key lives in three places: the LRU node, the SCAN index and, with a deadline, the
//! deadline index. Inline, a short key costs no allocation of its own in any of them, and a
//! lookup compares it where the node already is instead of following a pointer to another
//! cache line, a miss per request with 100,000 keys (see docs/benchmarks.md).
//! A longer key is one allocation, shared by the places that take it from the node (a
//! deadline set later by EXPIRE & co. gets a copy of its own, as `lru` offers no peek that
//! yields the stored key).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// The longest key held inline: what fits next to the length and the variant tag in the 40
/// bytes the shared form takes anyway.
pub(super) const INLINE: usize = 38;

#[derive(Clone)]
pub(super) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Bytes),
}

impl Key {
    pub(super) fn new(full: &[u8]) -> Key {
        if full.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..full.len()].copy_from_slice(full);
            Key::Inline {
                len: full.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(Bytes::copy_from_slice(full))
        }
    }

    /// The empty key, which sorts before every other: the start of an index range.
    pub(super) const fn empty() -> Key {
        Key::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }

    /// The bytes from `start` on, as a buffer of their own (SCAN and KEYS answer with them).
    pub(super) fn slice_from(&self, start: usize) -> Bytes {
        match self {
            Key::Inline { .. } => Bytes::copy_from_slice(&self[start..]),
            Key::Shared(b) => b.slice(start..),
        }
    }
}

impl Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Shared(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

// Equality, order and hash are the bytes', whichever the form, so a `&[u8]` finds a `Key`.

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs; this is for test failures only.
        write!(f, "Key({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_their_bytes() {
        let hasher = ahash::RandomState::new();
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 200] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(
                matches!(key, Key::Inline { .. }),
                len <= INLINE,
                "len {len}"
            );
            assert_eq!(&*key, &bytes[..]);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
            assert_eq!(key.slice_from(0), Bytes::from(bytes.clone()));
            assert_eq!(key.clone(), key);
        }
        // The same bytes in either form are one key, ordered as bytes.
        let long = vec![b'k'; INLINE + 1];
        let shared = Key::Shared(Bytes::copy_from_slice(b"ab"));
        assert_eq!(shared, Key::new(b"ab"));
        assert!(Key::new(b"ab") < Key::new(b"b"));
        assert!(Key::new(&long) > Key::new(&long[..INLINE]));
        assert!(Key::empty() < Key::new(b"\0"));
    }

    #[test]
    fn a_key_is_no_larger_than_a_shared_buffer_and_its_tag() {
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }
}
