//! Redis's glob patterns (`stringmatchlen` in Redis's util.c), on bytes: keyspace patterns,
//! and later SCAN/KEYS `MATCH`.
//!
//! - `*` matches any run of bytes, `?` exactly one byte;
//! - `[abc]`, `[a-z]` (a reversed range `[z-a]` works too), `[^...]` negates, `\` escapes a byte
//!   inside a class;
//! - `\x` matches `x` literally; a trailing `\` matches a `\`;
//! - an unterminated class `[abc` ends at the end of the pattern, as in Redis.
//!
//! Redis matches `*` recursively; this is the iterative form (one backtrack point), which
//! accepts exactly the same strings without recursion, so a client's pattern of a million
//! stars cannot exhaust the stack.

/// True when `key` matches the Redis glob `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    // Where to resume after the last `*`: the pattern after it, and the next key position.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, k));
            continue;
        }
        if p < pattern.len() {
            if let Some(next) = match_one(pattern, p, key[k]) {
                p = next;
                k += 1;
                continue;
            }
        }
        match star.as_mut() {
            // Let the last `*` swallow one more byte and retry from just after it.
            Some((after_star, resume)) => {
                *resume += 1;
                p = *after_star;
                k = *resume;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Matches the single-byte token at `pattern[p]` (not `*`) against `c`; returns the position
/// after the token when it matches.
fn match_one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => class(pattern, p + 1, c),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        literal => (literal == c).then_some(p + 1),
    }
}

/// A `[...]` class starting after its `[`; returns the position after its `]`.
fn class(pattern: &[u8], mut p: usize, c: u8) -> Option<usize> {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut hit = false;
    loop {
        match pattern.get(p) {
            // Unterminated: Redis treats the end of the pattern as the end of the class.
            None => break,
            Some(b']') => {
                p += 1;
                break;
            }
            Some(b'\\') if p + 1 < pattern.len() => {
                hit |= pattern[p + 1] == c;
                p += 2;
            }
            Some(&start) if p + 2 < pattern.len() && pattern[p + 1] == b'-' => {
                let end = pattern[p + 2];
                let (lo, hi) = if start <= end {
                    (start, end)
                } else {
                    (end, start)
                };
                hit |= (lo..=hi).contains(&c);
                p += 3;
            }
            Some(&b) => {
                hit |= b == c;
                p += 1;
            }
        }
    }
    (hit != negate).then_some(p)
}

/// True when `pattern` has no glob metacharacter, so it can only match itself.
pub fn is_literal(pattern: &[u8]) -> bool {
    !pattern
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("rl:*", "rl:user:1", true),
            ("rl:*", "r", false),
            ("*:1", "rl:user:1", true),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxcxxb", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("a\\", "a\\", true),
            ("[\\]]", "]", true),
            ("[abc", "a", true),
            ("[abc", "ab", false),
            ("[a-", "a", true),
            ("**", "x", true),
            ("a**", "a", true),
            ("?", "", false),
            ("*?", "", false),
            ("*?", "a", true),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), key.as_bytes()),
                *want,
                "{pattern:?} vs {key:?}"
            );
        }
    }

    #[test]
    fn binary_bytes_match() {
        assert!(matches(b"k\x00*", b"k\x00\xff"));
        assert!(matches(b"[\x00-\x10]", b"\x05"));
    }

    #[test]
    fn a_million_stars_do_not_recurse() {
        let pattern: Vec<u8> = b"a*".repeat(500_000);
        assert!(!matches(&pattern, &b"a".repeat(10)));
        assert!(matches(&pattern, &b"a".repeat(500_000)));
    }

    #[test]
    fn literals() {
        assert!(is_literal(b"rl:"));
        assert!(!is_literal(b"rl:*"));
        assert!(!is_literal(b"a[b]"));
    }
}
