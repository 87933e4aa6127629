//! Redis's glob matching (`stringmatchlen` in util.c, case-sensitive), for KEYS, SCAN MATCH and
//! HSCAN MATCH, reproduced quirk for quirk:
//!
//! - `*` any run of bytes, `?` one byte, `\x` the byte `x` (a trailing `\` is itself);
//! - `[...]` a class: `[^...]` negates, `\` escapes inside, `a-z` ranges (reversed `z-a` too)
//!   compare bytes as C's signed `char`, so `[a-\xff]` is empty-ish and `[\x80-a]` wide; `[a-]`
//!   is the range `]`..`a`, and an unterminated class ends with the pattern;
//! - an empty string matches only the empty pattern (`*` does not match it: stars are skipped
//!   only after at least one byte was consumed), while `a*` matches `a`.
//!
//! Redis recurses at each `*`, and abandons earlier stars once a later one has failed from
//! every position (`skipLongerMatches`); that is exactly "backtrack to the last star only", so
//! this runs as a loop with one backtrack point, and a client's pattern of a million stars
//! cannot exhaust the stack.

/// True when `string` matches `pattern`.
pub(crate) fn matches(pattern: &[u8], string: &[u8]) -> bool {
    // The last star seen: where the pattern resumes after it, and the next string position it
    // will try to swallow up to.
    let mut star: Option<(usize, usize)> = None;
    let (mut p, mut s) = (0, 0);
    loop {
        match attempt(pattern, string, p, s) {
            Outcome::Match => return true,
            Outcome::Star { after, at } => {
                star = Some((after, at));
                (p, s) = (after, at);
            }
            Outcome::NoMatch => match star {
                // The star's loop runs while string bytes remain.
                Some((after, at)) if at + 1 < string.len() => {
                    star = Some((after, at + 1));
                    (p, s) = (after, at + 1);
                }
                _ => return false,
            },
        }
    }
}

enum Outcome {
    Match,
    NoMatch,
    /// Reached a `*` (not the pattern's last byte) with string bytes left: try the rest of the
    /// pattern from `after` against the string from `at`, then from each later position.
    Star {
        after: usize,
        at: usize,
    },
}

/// One pass of Redis's matching loop from pattern position `p` and string position `s`, up to
/// the end or the next `*`.
fn attempt(pattern: &[u8], string: &[u8], mut p: usize, mut s: usize) -> Outcome {
    let plen = pattern.len();
    let slen = string.len();
    // Redis reads the pattern's NUL terminator at `plen`.
    let at = |i: usize| pattern.get(i).copied().unwrap_or(0);
    while p < plen && s < slen {
        match at(p) {
            b'*' => {
                while p < plen && at(p + 1) == b'*' {
                    p += 1;
                }
                if plen - p == 1 {
                    return Outcome::Match;
                }
                return Outcome::Star {
                    after: p + 1,
                    at: s,
                };
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negate = at(p) == b'^';
                if negate {
                    p += 1;
                }
                let c = string[s];
                let mut matched = false;
                loop {
                    if at(p) == b'\\' && plen - p >= 2 {
                        p += 1;
                        if at(p) == c {
                            matched = true;
                        }
                    } else if at(p) == b']' {
                        break;
                    } else if p >= plen {
                        // Unterminated: step back so the outer advance lands on the end.
                        p -= 1;
                        break;
                    } else if plen - p >= 3 && at(p + 1) == b'-' {
                        // C compares `char`, signed on x86-64.
                        let (mut lo, mut hi) = (at(p) as i8, at(p + 2) as i8);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        p += 2;
                        if (lo..=hi).contains(&(c as i8)) {
                            matched = true;
                        }
                    } else if at(p) == c {
                        matched = true;
                    }
                    p += 1;
                }
                if negate {
                    matched = !matched;
                }
                if !matched {
                    return Outcome::NoMatch;
                }
                s += 1;
            }
            b'\\' => {
                if plen - p >= 2 {
                    p += 1;
                }
                if at(p) != string[s] {
                    return Outcome::NoMatch;
                }
                s += 1;
            }
            literal => {
                if literal != string[s] {
                    return Outcome::NoMatch;
                }
                s += 1;
            }
        }
        p += 1;
        if s == slen {
            while at(p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    if p == plen && s == slen {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

/// True when `pattern` has no glob metacharacter, so it can only match itself.
pub(crate) fn is_literal(pattern: &[u8]) -> bool {
    !pattern
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of Redis 7.0's recursive `stringmatchlen_impl`, to check the loop
    /// against on many random inputs.
    fn reference(pattern: &[u8], string: &[u8]) -> bool {
        fn imp(pat: &[u8], mut p: usize, st: &[u8], mut s: usize, skip: &mut bool) -> bool {
            let at = |i: usize| pat.get(i).copied().unwrap_or(0);
            let mut plen = pat.len() as isize - p as isize;
            let mut slen = st.len() as isize - s as isize;
            while plen > 0 && slen > 0 {
                match at(p) {
                    b'*' => {
                        while plen > 0 && at(p + 1) == b'*' {
                            p += 1;
                            plen -= 1;
                        }
                        if plen == 1 {
                            return true;
                        }
                        while slen > 0 {
                            if imp(pat, p + 1, st, s, skip) {
                                return true;
                            }
                            if *skip {
                                return false;
                            }
                            s += 1;
                            slen -= 1;
                        }
                        *skip = true;
                        return false;
                    }
                    b'?' => {
                        s += 1;
                        slen -= 1;
                    }
                    b'[' => {
                        p += 1;
                        plen -= 1;
                        let not = at(p) == b'^';
                        if not {
                            p += 1;
                            plen -= 1;
                        }
                        let mut m = false;
                        loop {
                            if at(p) == b'\\' && plen >= 2 {
                                p += 1;
                                plen -= 1;
                                if at(p) == st[s] {
                                    m = true;
                                }
                            } else if at(p) == b']' {
                                break;
                            } else if plen == 0 {
                                p -= 1;
                                plen += 1;
                                break;
                            } else if plen >= 3 && at(p + 1) == b'-' {
                                let (mut a, mut b) = (at(p) as i8, at(p + 2) as i8);
                                if a > b {
                                    std::mem::swap(&mut a, &mut b);
                                }
                                let c = st[s] as i8;
                                p += 2;
                                plen -= 2;
                                if c >= a && c <= b {
                                    m = true;
                                }
                            } else if at(p) == st[s] {
                                m = true;
                            }
                            p += 1;
                            plen -= 1;
                        }
                        if not {
                            m = !m;
                        }
                        if !m {
                            return false;
                        }
                        s += 1;
                        slen -= 1;
                    }
                    b'\\' => {
                        if plen >= 2 {
                            p += 1;
                            plen -= 1;
                        }
                        if at(p) != st[s] {
                            return false;
                        }
                        s += 1;
                        slen -= 1;
                    }
                    c => {
                        if c != st[s] {
                            return false;
                        }
                        s += 1;
                        slen -= 1;
                    }
                }
                p += 1;
                plen -= 1;
                if slen == 0 {
                    while at(p) == b'*' {
                        p += 1;
                        plen -= 1;
                    }
                    break;
                }
            }
            plen == 0 && slen == 0
        }
        imp(pattern, 0, string, 0, &mut false)
    }

    #[test]
    fn documented_cases() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"*", b"anything", true),
            (b"*", b"", false),
            (b"", b"", true),
            (b"a*", b"a", true),
            (b"a**", b"a", true),
            (b"h?llo", b"hello", true),
            (b"h?llo", b"hllo", false),
            (b"h*llo", b"heeeello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[^e]llo", b"hello", false),
            (b"h[a-b]llo", b"hbllo", true),
            (b"h[b-a]llo", b"hbllo", true),
            (b"h\\*llo", b"h*llo", true),
            (b"h\\*llo", b"hello", false),
            (b"a\\", b"a\\", true),
            (b"[a-]", b"]", true),
            (b"[a-]", b"_", true),
            (b"[a-]", b"b", false),
            (b"[abc", b"c", true),
            (b"[\\]]", b"]", true),
            (b"[a-\xff]", b"b", false),
            (b"[\x80-a]", b"\xff", true),
            (b"*a*b", b"xaxxb", true),
            (b"*a*b", b"xaxxbx", false),
            (b"a*b*c", b"abbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbd", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(
                matches(p, s),
                *want,
                "{} ~ {}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
            assert_eq!(reference(p, s), *want, "reference disagrees");
        }
    }

    #[test]
    fn agrees_with_redis_recursion_on_random_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"ab*?[]^-\\\x80\xff";
        for _ in 0..200_000 {
            let plen = rng.gen_range(0..9);
            let slen = rng.gen_range(0..7);
            let p: Vec<u8> = (0..plen)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let s: Vec<u8> = (0..slen)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            assert_eq!(
                matches(&p, &s),
                reference(&p, &s),
                "{:?} ~ {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&s)
            );
        }
    }

    #[test]
    fn many_stars_do_not_recurse() {
        let pattern = b"a*".repeat(100_000);
        let string = b"a".repeat(100_000);
        assert!(matches(&pattern, &string));
        assert!(!matches(&pattern, &string[..99_999]));
    }
}
