//! Finding a command by name in one hash probe: every request looks its name up (in the
//! command table and in the local engine's), and a binary search over a few hundred names,
//! lowercasing as it goes, cost more than serving a local GET.

/// An open-addressing index from lowercase names to their positions in a table, built once.
pub struct NameIndex {
    /// Position + 1 in the table, 0 for an empty slot; a power-of-two length.
    slots: Box<[u16]>,
    names: Vec<&'static str>,
    /// Per first letter (folded to 5 bits), a bit for each name length present: most names a
    /// table does not hold (GET in the table of stateful commands) are refused by one load.
    lengths: [u32; 32],
}

/// Longest name looked up; longer input is unknown without hashing it.
pub const MAX_NAME: usize = 32;

impl NameIndex {
    /// Indexes `names` (lowercase, distinct, fewer than 65535).
    pub fn new(names: Vec<&'static str>) -> NameIndex {
        let size = (names.len() * 4).next_power_of_two().max(8);
        let mut slots = vec![0u16; size].into_boxed_slice();
        let mut lengths = [0u32; 32];
        for (i, name) in names.iter().enumerate() {
            if let Some(&first) = name.as_bytes().first() {
                lengths[letter(first)] |= 1 << name.len().min(31);
            }
            debug_assert_eq!(*name, name.to_ascii_lowercase());
            let mut slot = hash(name.as_bytes()) as usize & (size - 1);
            while slots[slot] != 0 {
                slot = (slot + 1) & (size - 1);
            }
            slots[slot] = u16::try_from(i + 1).expect("fewer than 65535 names");
        }
        NameIndex {
            slots,
            names,
            lengths,
        }
    }

    /// The position of `name` (any case) in the table.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        if name.len() > MAX_NAME {
            return None;
        }
        if let Some(&first) = name.first() {
            if self.lengths[letter(first)] & (1 << name.len().min(31)) == 0 {
                return None;
            }
        }
        // Hash the lowercased bytes in one pass and compare ignoring case: no copy, no call.
        let mask = self.slots.len() - 1;
        let mut slot =
            name.iter()
                .fold(FNV_OFFSET, |h, &b| fnv_step(h, b.to_ascii_lowercase())) as usize
                & mask;
        loop {
            let i = self.slots[slot] as usize;
            if i == 0 {
                return None;
            }
            if self.names[i - 1].as_bytes().eq_ignore_ascii_case(name) {
                return Some(i - 1);
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// A byte's slot in `lengths`: ASCII letters of either case share one.
fn letter(b: u8) -> usize {
    usize::from(b.to_ascii_lowercase() & 31)
}

/// FNV-1a: names are short and come from a fixed table, so collisions only cost a probe.
const FNV_OFFSET: u32 = 0x811c_9dc5;

fn fnv_step(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
}

fn hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| fnv_step(h, b))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
