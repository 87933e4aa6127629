//! Random frames from a seeded generator, so failures reproduce.

use super::*;

/// splitmix64: a small deterministic generator, so failures reproduce.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

/// Bytes that look like RESP, to put inside payloads.
const NASTY: &[u8] = b"\r\n$*:+-_>|%~#,(!=?.x0\x00\xff";
/// Bytes allowed in a simple line (no CR).
const LINE: &[u8] = b"abc OK-ERR\n$*:0123456789.";

/// Appends one random element that opens at most `levels` aggregates (attributes included)
/// and returns its type byte (after any attributes).
fn random_element(rng: &mut Rng, out: &mut Vec<u8>, levels: usize) -> u8 {
    if levels > 0 && rng.below(10) == 0 {
        let pairs = rng.below(3);
        out.extend_from_slice(format!("|{pairs}\r\n").as_bytes());
        for _ in 0..2 * pairs {
            random_element(rng, out, levels - 1);
        }
    }
    // Null and empty aggregates (12, 13) count as a level too.
    let kinds = if levels > 0 { 20 } else { 12 };
    let start = out.len();
    match rng.below(kinds) {
        0 => {
            out.extend_from_slice(&[b"+".to_vec(), rng.bytes(LINE, 12), b"\r\n".to_vec()].concat())
        }
        1 => {
            out.extend_from_slice(&[b"-".to_vec(), rng.bytes(LINE, 12), b"\r\n".to_vec()].concat())
        }
        2 => out.extend_from_slice(format!(":{}\r\n", rng.next() as i64).as_bytes()),
        3 => out.extend_from_slice(&bulk(b'$', &rng.bytes(NASTY, 20))),
        4 => out.extend_from_slice(b"$-1\r\n"),
        5 => out.extend_from_slice(b"_\r\n"),
        6 => out.extend_from_slice([&b",1.5\r\n"[..], b",inf\r\n", b",-nan\r\n"][rng.below(3)]),
        7 => out.extend_from_slice([&b"#t\r\n"[..], b"#f\r\n"][rng.below(2)]),
        8 => out.extend_from_slice(format!("({}{}\r\n", rng.next(), rng.next()).as_bytes()),
        9 => out.extend_from_slice(&bulk(b'!', &rng.bytes(NASTY, 20))),
        10 => out.extend_from_slice(&bulk(
            b'=',
            &[b"txt:".to_vec(), rng.bytes(NASTY, 20)].concat(),
        )),
        11 => out.extend_from_slice(b"+OK\r\n"),
        12 => out.extend_from_slice([&b"*-1\r\n"[..], b"~0\r\n", b"%-1\r\n"][rng.below(3)]),
        13 => out.extend_from_slice(b"*0\r\n"),
        kind => {
            let (prefix, per) =
                [("*", 1), ("*", 1), ("~", 1), ("%", 2), (">", 1), ("%", 2)][kind - 14];
            let len = rng.below(5);
            out.extend_from_slice(format!("{prefix}{len}\r\n").as_bytes());
            for _ in 0..len * per {
                random_element(rng, out, levels - 1);
            }
        }
    }
    out[start]
}

/// Appends one random frame, sometimes a push, and returns it as expected.
pub(super) fn random_frame(rng: &mut Rng, out: &mut Vec<u8>, levels: usize) -> Frame {
    let start = out.len();
    while rng.below(8) == 0 {
        let pairs = rng.below(3);
        out.extend_from_slice(format!("|{pairs}\r\n").as_bytes());
        for _ in 0..2 * pairs {
            random_element(rng, out, levels - 1);
        }
    }
    let push = if rng.below(6) == 0 {
        let len = rng.below(4);
        out.extend_from_slice(format!(">{len}\r\n").as_bytes());
        for _ in 0..len {
            random_element(rng, out, levels - 1);
        }
        true
    } else {
        random_element(rng, out, levels) == b'>'
    };
    Frame {
        len: out.len() - start,
        push,
    }
}
