//! Finding a command by name in one hash probe: every request looks its name up (in the
//! command table and in the local engine's), and a binary search over a few hundred names,
//! lowercasing as it goes, cost more than serving a local GET. The name is lowercased eight
//! bytes at a time into a fixed-size key, so the probe compares four words (under callgrind,
//! 115 instructions a lookup instead of 149 with a per-byte hash and compare).

/// An open-addressing index from lowercase names to their positions in a table, built once.
pub(crate) struct NameIndex {
    /// A power-of-two number of slots; `index` 0 marks an empty one.
    slots: Box<[Slot]>,
    /// Per first letter (folded to 5 bits), a bit for each name length present: most names a
    /// table does not hold (GET in the table of stateful commands) are refused by one load.
    lengths: [u32; 32],
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: Key,
    /// Position + 1 in the table; 0 = empty.
    index: u16,
}

/// A name of at most [`MAX_NAME`] bytes, lowercased, zero-padded, as four words, with its
/// length (so that trailing NUL bytes are not padding). Comparing two is four word compares.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Key {
    words: [u64; 4],
    len: usize,
}

/// Longest name looked up; longer input is unknown without hashing it.
pub(crate) const MAX_NAME: usize = 32;

impl NameIndex {
    /// Indexes `names` (lowercase, distinct, at most [`MAX_NAME`] bytes, fewer than 65535).
    pub(crate) fn new(names: Vec<&'static str>) -> NameIndex {
        let size = (names.len() * 4).next_power_of_two().max(8);
        let mut slots = vec![Slot::default(); size].into_boxed_slice();
        let mut lengths = [0u32; 32];
        for (i, name) in names.iter().enumerate() {
            if let Some(&first) = name.as_bytes().first() {
                lengths[letter(first)] |= 1 << name.len().min(31);
            }
            debug_assert_eq!(*name, name.to_ascii_lowercase());
            let key = Key::of(name.as_bytes()).expect("names fit in MAX_NAME bytes");
            let mut slot = key.hash() as usize & (size - 1);
            while slots[slot].index != 0 {
                slot = (slot + 1) & (size - 1);
            }
            let index = u16::try_from(i + 1).expect("fewer than 65535 names");
            slots[slot] = Slot { key, index };
        }
        NameIndex { slots, lengths }
    }

    /// The position of `name` (any case) in the table.
    pub(crate) fn find(&self, name: &[u8]) -> Option<usize> {
        if let Some(&first) = name.first() {
            if self.lengths[letter(first)] & (1 << name.len().min(31)) == 0 {
                return None;
            }
        }
        let key = Key::of(name)?;
        let mask = self.slots.len() - 1;
        let mut slot = key.hash() as usize & mask;
        loop {
            let s = &self.slots[slot];
            if s.index == 0 {
                return None;
            }
            if s.key == key {
                return Some(usize::from(s.index) - 1);
            }
            slot = (slot + 1) & mask;
        }
    }
}

impl Key {
    /// `name` lowercased (ASCII letters only, as Redis compares command names), or `None` if
    /// it is longer than [`MAX_NAME`].
    fn of(name: &[u8]) -> Option<Key> {
        if name.len() > MAX_NAME {
            return None;
        }
        let mut bytes = [0u8; MAX_NAME];
        bytes[..name.len()].copy_from_slice(name);
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = lowercase(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        Some(Key {
            words,
            len: name.len(),
        })
    }

    fn hash(&self) -> u64 {
        let [a, b, c, d] = self.words;
        let h = a ^ b.rotate_left(17) ^ c.rotate_left(31) ^ d.rotate_left(47) ^ self.len as u64;
        // Fibonacci hashing: the high bits of the product are well mixed.
        h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }
}

/// Every byte of `w` in `A..=Z` lowercased, the others unchanged, without a branch (SWAR: all
/// eight bytes at once).
fn lowercase(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = w & !HIGH;
    // Per byte, the high bit is set when the low seven bits are >= 'A', resp. > 'Z'.
    let ge_a = low7 + ONES * (0x80 - u64::from(b'A'));
    let gt_z = low7 + ONES * (0x80 - u64::from(b'Z') - 1);
    // ... and the byte itself is ASCII (high bit clear).
    let upper = ge_a & !gt_z & !w & HIGH;
    w | (upper >> 2)
}

/// A byte's slot in `lengths`: ASCII letters of either case share one.
fn letter(b: u8) -> usize {
    usize::from(b.to_ascii_lowercase() & 31)
}

/// The last name looked up in one [`NameIndex`] and the answer: a pipelined batch mostly
/// repeats one command, and comparing its bytes costs less than a lookup. Its owner must ask
/// the same index every time (wrap it in a type that does).
#[derive(Debug, Default)]
pub(crate) struct Memo {
    name: [u8; MEMO_NAME],
    len: u8,
    found: Option<usize>,
}

/// Longest name a [`Memo`] remembers.
const MEMO_NAME: usize = 16;

impl Memo {
    /// `index.find(name)`, from the memo when `name` is, byte for byte, the last one asked.
    pub(crate) fn find(&mut self, index: &NameIndex, name: &[u8]) -> Option<usize> {
        let len = usize::from(self.len);
        // Byte by byte rather than `==`, which calls `memcmp`: command names are a few bytes,
        // shorter than the call.
        if len != 0 && len == name.len() && name.iter().zip(&self.name).all(|(a, b)| a == b) {
            return self.found;
        }
        let found = index.find(name);
        if !name.is_empty() && name.len() <= MEMO_NAME {
            self.name[..name.len()].copy_from_slice(name);
            self.len = name.len() as u8;
            self.found = found;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_answers_as_its_index_does() {
        let index = NameIndex::new(vec!["get", "set", "averyveryverylongname"]);
        let mut memo = Memo::default();
        for name in [
            &b"GET"[..],
            b"GET",
            b"get",
            b"set",
            b"nope",
            b"nope",
            b"",
            b"",
            b"averyveryverylongname",
            b"AVERYVERYVERYLONGNAME",
            b"GET",
            b"ge",
            b"gett",
        ] {
            assert_eq!(memo.find(&index, name), index.find(name), "{name:?}");
        }
    }

    #[test]
    fn finds_every_name_in_any_case_and_nothing_else() {
        let names = vec!["get", "set", "getset", "hgetall", "a", ""];
        let index = NameIndex::new(names.clone());
        for (i, name) in names.iter().enumerate() {
            assert_eq!(index.find(name.as_bytes()), Some(i));
            assert_eq!(index.find(name.to_uppercase().as_bytes()), Some(i));
        }
        for absent in ["ge", "gets", "hgetal", "x", "getsetx"] {
            assert_eq!(index.find(absent.as_bytes()), None, "{absent}");
        }
        assert_eq!(index.find(&[b'g'; 40]), None);
        assert_eq!(index.find(b"get\0"), None, "a NUL is not padding");
    }

    #[test]
    fn lowercases_ascii_letters_only() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'A', b'z', 0x80 | b'A', b, 0, b'Z', b'@']);
            let want = u64::from_le_bytes([
                b.to_ascii_lowercase(),
                b'a',
                b'z',
                0x80 | b'A',
                b.to_ascii_lowercase(),
                0,
                b'z',
                b'@',
            ]);
            assert_eq!(lowercase(w), want, "byte {b:#x}");
        }
    }
}
