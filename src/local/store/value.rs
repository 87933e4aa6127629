//! What a key holds: a string or a hash, and how many bytes each counts for.
//!
//! Hashes copy Redis's two encodings because they are visible on the wire: a small hash (at
//! most [`HASH_MAX_LISTPACK_ENTRIES`] fields, every field and value at most
//! [`HASH_MAX_LISTPACK_VALUE`] bytes) is a "listpack", kept in insertion order, and HGETALL,
//! HKEYS, HVALS and HSCAN answer in that order, exactly as Redis does. Once a hash outgrows
//! that (by the same rules and at the same moments as Redis's `hashTypeTryConversion` and
//! `hashTypeSet`) it becomes a table whose order is unspecified, in Redis as here, and stays
//! one until the key is deleted.

use std::collections::HashMap;

/// Redis's `hash-max-listpack-entries` default.
pub const HASH_MAX_LISTPACK_ENTRIES: usize = 512;
/// Redis's `hash-max-listpack-value` default.
pub const HASH_MAX_LISTPACK_VALUE: usize = 64;
/// Bytes counted for each hash field on top of its field and value bytes (the pair's two
/// vectors and the table slot).
pub const FIELD_OVERHEAD: usize = 64;

/// A string value: up to [`STR_INLINE`] bytes live inside the entry itself, so reading a short
/// value touches no memory beyond the entry (see the module docs of `store` on why that counts).
pub type Str = smallvec::SmallVec<[u8; STR_INLINE]>;

/// The longest string value kept inline: what fits in the room a hash takes anyway, so
/// [`Value`] is no larger for it.
pub(super) const STR_INLINE: usize = 48;

/// The value of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(Str),
    Hash(Hash),
}

impl Value {
    /// Bytes this value counts for: a string's length, or each hash field's field and value
    /// lengths plus [`FIELD_OVERHEAD`].
    pub fn bytes(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::Hash(h) => h.bytes(),
        }
    }

    /// The name TYPE answers with.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
        }
    }
}

/// A hash: field -> value, in one of Redis's two encodings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hash {
    repr: Repr,
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// Insertion order, linear search (Redis scans its listpack the same way).
    Listpack(Vec<(Vec<u8>, Vec<u8>)>),
    /// Unordered.
    Table(HashMap<Vec<u8>, Vec<u8>>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Listpack(Vec::new())
    }
}

impl Hash {
    pub fn new() -> Hash {
        Hash::default()
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Listpack(pairs) => pairs.len(),
            Repr::Table(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes counted for this hash (see [`Value::bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True while the hash keeps insertion order (Redis's listpack encoding).
    pub(crate) fn is_listpack(&self) -> bool {
        matches!(self.repr, Repr::Listpack(_))
    }

    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        match &self.repr {
            Repr::Listpack(pairs) => pairs
                .iter()
                .find(|(f, _)| f.as_slice() == field)
                .map(|(_, v)| v.as_slice()),
            Repr::Table(map) => map.get(field).map(Vec::as_slice),
        }
    }

    pub fn contains(&self, field: &[u8]) -> bool {
        self.get(field).is_some()
    }

    /// Redis's `hashTypeTryConversion`: before a write whose arguments include a string longer
    /// than the listpack limit, the hash becomes a table.
    pub(crate) fn convert_for_args<'a>(&mut self, args: impl IntoIterator<Item = &'a [u8]>) {
        if self.is_listpack() && args.into_iter().any(|a| a.len() > HASH_MAX_LISTPACK_VALUE) {
            self.convert_to_table();
        }
    }

    /// Sets `field` to `value`; true when the field is new. Converts to a table as Redis's
    /// `hashTypeSet` does: on a long field or value, and past the entry limit.
    pub fn set(&mut self, field: &[u8], value: &[u8]) -> bool {
        if self.is_listpack()
            && (field.len() > HASH_MAX_LISTPACK_VALUE || value.len() > HASH_MAX_LISTPACK_VALUE)
        {
            self.convert_to_table();
        }
        let created = match &mut self.repr {
            Repr::Listpack(pairs) => match pairs.iter_mut().find(|(f, _)| f.as_slice() == field) {
                Some((_, old)) => {
                    self.bytes = self.bytes - old.len() + value.len();
                    *old = value.to_vec();
                    false
                }
                None => {
                    pairs.push((field.to_vec(), value.to_vec()));
                    self.bytes += field.len() + value.len() + FIELD_OVERHEAD;
                    true
                }
            },
            Repr::Table(map) => match map.get_mut(field) {
                Some(old) => {
                    self.bytes = self.bytes - old.len() + value.len();
                    *old = value.to_vec();
                    false
                }
                None => {
                    map.insert(field.to_vec(), value.to_vec());
                    self.bytes += field.len() + value.len() + FIELD_OVERHEAD;
                    true
                }
            },
        };
        if self.len() > HASH_MAX_LISTPACK_ENTRIES {
            self.convert_to_table();
        }
        created
    }

    /// Removes `field`; true when it was there. A listpack keeps the order of the others.
    pub fn remove(&mut self, field: &[u8]) -> bool {
        let removed = match &mut self.repr {
            Repr::Listpack(pairs) => pairs
                .iter()
                .position(|(f, _)| f.as_slice() == field)
                .map(|i| pairs.remove(i)),
            Repr::Table(map) => map.remove_entry(field),
        };
        match removed {
            Some((f, v)) => {
                self.bytes -= f.len() + v.len() + FIELD_OVERHEAD;
                true
            }
            None => false,
        }
    }

    /// Every (field, value), in insertion order for a listpack.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
        match &self.repr {
            Repr::Listpack(pairs) => Box::new(pairs.iter().map(|(f, v)| (&f[..], &v[..]))),
            Repr::Table(map) => Box::new(map.iter().map(|(f, v)| (&f[..], &v[..]))),
        }
    }

    /// The bytes this hash would count for after setting each (field, value) in order, without
    /// changing it: lets a write be refused before it is half done.
    pub(crate) fn bytes_after_set<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> usize {
        let mut bytes = self.bytes;
        // Fields this write already set, with the length of the value it gave them.
        let mut written: HashMap<&[u8], usize> = HashMap::new();
        for (field, value) in pairs {
            let before = written
                .get(field)
                .copied()
                .or_else(|| self.get(field).map(<[u8]>::len));
            bytes = match before {
                Some(old) => bytes - old + value.len(),
                None => bytes + field.len() + value.len() + FIELD_OVERHEAD,
            };
            written.insert(field, value.len());
        }
        bytes
    }

    fn convert_to_table(&mut self) {
        if let Repr::Listpack(pairs) = &mut self.repr {
            let map = std::mem::take(pairs).into_iter().collect();
            self.repr = Repr::Table(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_string_makes_no_value_larger_than_a_hash_does() {
        assert_eq!(std::mem::size_of::<Value>(), 64);
        assert!(Str::from_slice(&[b'x'; STR_INLINE]).len() == STR_INLINE);
        assert!(!Str::from_slice(&[b'x'; STR_INLINE]).spilled());
        assert!(Str::from_slice(&[b'x'; STR_INLINE + 1]).spilled());
    }

    #[test]
    fn listpack_keeps_insertion_order_through_updates_and_deletes() {
        let mut h = Hash::new();
        assert!(h.set(b"b", b"1"));
        assert!(h.set(b"a", b"2"));
        assert!(h.set(b"c", b"3"));
        assert!(!h.set(b"b", b"9"));
        assert!(h.remove(b"a"));
        assert!(!h.remove(b"a"));
        let order: Vec<_> = h.iter().collect();
        assert_eq!(order, vec![(&b"b"[..], &b"9"[..]), (&b"c"[..], &b"3"[..])]);
        assert!(h.is_listpack());
    }

    #[test]
    fn converts_like_redis() {
        let mut long = Hash::new();
        long.set(b"f", &[b'x'; 65]);
        assert!(!long.is_listpack());
        let mut edge = Hash::new();
        edge.set(b"f", &[b'x'; 64]);
        assert!(edge.is_listpack());
        edge.convert_for_args([&b"ok"[..], &[b'y'; 65][..]]);
        assert!(!edge.is_listpack());
        let mut many = Hash::new();
        for i in 0..HASH_MAX_LISTPACK_ENTRIES {
            many.set(i.to_string().as_bytes(), b"v");
        }
        assert!(many.is_listpack());
        many.set(b"one more", b"v");
        assert!(!many.is_listpack());
        // Shrinking does not convert back.
        many.remove(b"one more");
        assert!(!many.is_listpack());
    }

    #[test]
    fn byte_accounting() {
        let mut h = Hash::new();
        h.set(b"ab", b"cde");
        assert_eq!(h.bytes(), 5 + FIELD_OVERHEAD);
        h.set(b"ab", b"c");
        assert_eq!(h.bytes(), 3 + FIELD_OVERHEAD);
        let pairs = [
            (&b"ab"[..], &b"1234"[..]),
            (&b"x"[..], &b"y"[..]),
            (&b"x"[..], &b"yy"[..]),
        ];
        let predicted = h.bytes_after_set(pairs);
        for (f, v) in pairs {
            h.set(f, v);
        }
        assert_eq!(predicted, h.bytes());
        assert_eq!(h.bytes(), 6 + 3 + 2 * FIELD_OVERHEAD);
        h.remove(b"ab");
        h.remove(b"x");
        assert_eq!(h.bytes(), 0);
    }
}
