//! Integers as Redis reads them: `string2ll` for values and arguments, `strtoul` for SCAN
//! cursors. Both are stricter or looser than Rust's `parse` in ways clients can see.

/// Redis's `string2ll`: an optional `-`, then digits without leading zeros (`0` alone is
/// fine), no `+`, no spaces, at most 20 bytes, within `i64`.
pub(crate) fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if v > i64::MIN.unsigned_abs() {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Redis's SCAN cursor parsing (`strtoul` base 10 on a C string): stops at a NUL byte,
/// rejects a leading space, accepts `+` and `-` (which wraps, as C does), and an empty string
/// is cursor 0.
pub(super) fn parse_cursor(arg: &[u8]) -> Option<u64> {
    let s = super::c_str(arg);
    match s.first() {
        None => return Some(0),
        Some(b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') => return None,
        Some(_) => {}
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        // No digits: strtoul stops at the start, which is not the end of the string. Digits
        // followed by anything else: stops before it.
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if negative { v.wrapping_neg() } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string2ll_like_redis() {
        let ok: &[(&[u8], i64)] = &[
            (b"0", 0),
            (b"1", 1),
            (b"-1", -1),
            (b"9223372036854775807", i64::MAX),
            (b"-9223372036854775808", i64::MIN),
        ];
        for (s, v) in ok {
            assert_eq!(string2ll(s), Some(*v), "{}", String::from_utf8_lossy(s));
        }
        let bad: &[&[u8]] = &[
            b"",
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"00",
            b"1.0",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"18446744073709551616",
            b"1\x00",
            b"000000000000000000001",
        ];
        for s in bad {
            assert_eq!(string2ll(s), None, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn cursors_like_strtoul() {
        let ok: &[(&[u8], u64)] = &[
            (b"0", 0),
            (b"", 0),
            (b"\x00junk", 0),
            (b"12\x00junk", 12),
            (b"+5", 5),
            (b"-1", u64::MAX),
            (b"007", 7),
            (b"18446744073709551615", u64::MAX),
        ];
        for (s, v) in ok {
            assert_eq!(parse_cursor(s), Some(*v), "{}", String::from_utf8_lossy(s));
        }
        let bad: &[&[u8]] = &[
            b" 1",
            b"1 ",
            b"-",
            b"+",
            b"x",
            b"1x",
            b"18446744073709551616",
        ];
        for s in bad {
            assert_eq!(parse_cursor(s), None, "{}", String::from_utf8_lossy(s));
        }
    }
}
