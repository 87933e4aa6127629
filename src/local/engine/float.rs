//! INCRBYFLOAT and HINCRBYFLOAT arithmetic, exactly as Redis does it on x86-64: C `long
//! double` (the x87 80-bit format, 64-bit significand), parsed with `strtold`, added with
//! round-to-nearest-even, and printed with `%.17Lf` minus trailing zeros. Doing it in `f64`
//! would give different digits (Redis answers `0.1 + 0.2` with `0.3`, not
//! `0.30000000000000004`), so the 80-bit arithmetic comes from `rustc_apfloat` (rustc's own
//! soft-float, correctly rounded) and the printing is exact decimal expansion here.

use rustc_apfloat::ieee::X87DoubleExtended;
use rustc_apfloat::{Float, Round, Status};

/// A C `long double`.
pub(super) type LongDouble = X87DoubleExtended;

/// Redis's `MAX_LONG_DOUBLE_CHARS`: longer strings are not numbers.
const MAX_LONG_DOUBLE_CHARS: usize = 5 * 1024;

/// Redis's `string2ld`: the whole string must be one `strtold` number (decimal, hex `0x...`,
/// `inf`/`infinity`), with no leading space; NaN, overflow to infinity and underflow to zero
/// are refused.
pub(super) fn parse(s: &[u8]) -> Option<LongDouble> {
    if s.is_empty() || s.len() >= MAX_LONG_DOUBLE_CHARS {
        return None;
    }
    let (negative, body) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        let inf = LongDouble::INFINITY;
        return Some(if negative { -inf } else { inf });
    }
    let text = if let Some(hex) = body
        .strip_prefix(b"0x")
        .or_else(|| body.strip_prefix(b"0X"))
    {
        hex_literal(hex)?
    } else {
        decimal_literal(body)?
    };
    let parsed = LongDouble::from_str_r(&text, Round::NearestTiesToEven).ok()?;
    let value = parsed.value;
    // strtold reports ERANGE for both; Redis refuses the infinity and the zero it yields.
    if value.is_infinite() || (value.is_zero() && parsed.status.contains(Status::UNDERFLOW)) {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// `digits[.digits][e[+-]digits]` with at least one digit; returned as text for apfloat.
fn decimal_literal(body: &[u8]) -> Option<String> {
    let (mantissa, exponent) = match body.iter().position(|&b| b == b'e' || b == b'E') {
        Some(e) => (&body[..e], Some(&body[e + 1..])),
        None => (body, None),
    };
    if !valid_mantissa(mantissa, u8::is_ascii_digit) {
        return None;
    }
    if let Some(exp) = exponent {
        valid_exponent(exp)?;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// `hexdigits[.hexdigits][p[+-]digits]` after `0x`; apfloat wants the `p` exponent always.
fn hex_literal(hex: &[u8]) -> Option<String> {
    let (mantissa, exponent) = match hex.iter().position(|&b| b == b'p' || b == b'P') {
        Some(p) => (&hex[..p], Some(&hex[p + 1..])),
        None => (hex, None),
    };
    if !valid_mantissa(mantissa, u8::is_ascii_hexdigit) {
        return None;
    }
    let exponent = match exponent {
        Some(exp) => {
            valid_exponent(exp)?;
            std::str::from_utf8(exp).ok()?
        }
        None => "0",
    };
    Some(format!(
        "0x{}p{exponent}",
        std::str::from_utf8(mantissa).ok()?
    ))
}

/// Digits with at most one `.` and at least one digit.
fn valid_mantissa(mantissa: &[u8], is_digit: fn(&u8) -> bool) -> bool {
    let mut dots = 0;
    let mut digits = 0;
    for b in mantissa {
        if *b == b'.' {
            dots += 1;
        } else if is_digit(b) {
            digits += 1;
        } else {
            return false;
        }
    }
    dots <= 1 && digits > 0
}

/// `[+-]digits`: strtold only takes an exponent that has digits.
fn valid_exponent(exp: &[u8]) -> Option<()> {
    let digits = match exp.first() {
        Some(b'+' | b'-') => &exp[1..],
        _ => exp,
    };
    (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit)).then_some(())
}

/// 0 as a `long double` (the value of a missing key).
pub(super) fn zero() -> LongDouble {
    LongDouble::ZERO
}

/// Neither NaN nor an infinity.
pub(super) fn is_finite(value: LongDouble) -> bool {
    value.is_finite()
}

/// `a + b` in `long double`.
pub(super) fn add(a: LongDouble, b: LongDouble) -> LongDouble {
    a.add_r(b, Round::NearestTiesToEven).value
}

/// Redis's `ld2string(.., LD_STR_HUMAN)`: `%.17Lf`, trailing zeros (and a bare `.`) removed,
/// `-0` printed as `0`. Callers have ruled out NaN and infinities.
pub(super) fn format_human(value: LongDouble) -> Vec<u8> {
    let bits = value.to_bits();
    let negative = bits >> 79 & 1 == 1;
    let biased = (bits >> 64 & 0x7fff) as i32;
    let significand = bits as u64;
    // value = significand * 2^exp2 (the x87 significand has an explicit integer bit).
    let exp2 = biased.max(1) - 16383 - 63;

    let mut text = Vec::new();
    if negative {
        text.push(b'-');
    }
    if exp2 >= 0 {
        // An integer: no fraction digits survive the trimming.
        text.extend_from_slice(&shifted_decimal(significand, exp2 as u32));
    } else {
        let shift = exp2.unsigned_abs();
        let (mut int_part, fraction) = if shift < 64 {
            (
                significand >> shift,
                u128::from(significand & ((1u64 << shift) - 1)),
            )
        } else {
            (0, u128::from(significand))
        };
        const SCALE: u128 = 100_000_000_000_000_000; // 10^17: 17 fraction digits
                                                     // fraction < 2^64, so fraction * 10^17 < 2^121 fits.
        let scaled = fraction * SCALE;
        let mut digits = if shift >= 128 {
            0 // below half a unit of the 17th digit: rounds to zero
        } else {
            let q = scaled >> shift;
            let rem = scaled & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            // Round half to even, as glibc's printf does.
            if rem > half || (rem == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        };
        if digits == SCALE {
            int_part += 1;
            digits = 0;
        }
        text.extend_from_slice(int_part.to_string().as_bytes());
        let fraction = format!("{digits:017}");
        let kept = fraction.trim_end_matches('0');
        if !kept.is_empty() {
            text.push(b'.');
            text.extend_from_slice(kept.as_bytes());
        }
    }
    if text == b"-0" {
        text = b"0".to_vec();
    }
    text
}

/// Decimal digits of `significand * 2^shift` (up to 2^16384, so a small big integer).
fn shifted_decimal(significand: u64, shift: u32) -> Vec<u8> {
    // Little-endian base-2^32 limbs.
    let mut limbs = vec![0u32; (shift / 32) as usize];
    let (lo, hi) = (significand as u32, (significand >> 32) as u32);
    let bit = shift % 32;
    let wide = (u128::from(hi) << 32 | u128::from(lo)) << bit;
    for i in 0..3 {
        limbs.push((wide >> (32 * i)) as u32);
    }
    while limbs.last() == Some(&0) && limbs.len() > 1 {
        limbs.pop();
    }
    // Repeated division by 10^9, collecting 9-digit chunks from the least significant.
    let mut chunks = Vec::new();
    while !(limbs.len() == 1 && limbs[0] == 0) {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut().rev() {
            let cur = rem << 32 | u64::from(*limb);
            *limb = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) && limbs.len() > 1 {
            limbs.pop();
        }
    }
    let mut out = String::new();
    for (i, chunk) in chunks.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&chunk.to_string());
        } else {
            out.push_str(&format!("{chunk:09}"));
        }
    }
    if out.is_empty() {
        out.push('0');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(s: &str) -> String {
        String::from_utf8(format_human(parse(s.as_bytes()).expect(s))).unwrap()
    }

    fn sum(a: &str, b: &str) -> String {
        let v = add(parse(a.as_bytes()).unwrap(), parse(b.as_bytes()).unwrap());
        String::from_utf8(format_human(v)).unwrap()
    }

    // Expected values below were printed by glibc (`printf("%.17Lf")` on `strtold` results) and
    // by redis-server 7.0.15's INCRBYFLOAT.
    #[test]
    fn formats_like_glibc() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("1", "1"),
            ("-1.5", "-1.5"),
            ("0.1", "0.1"),
            ("3.0e-5", "0.00003"),
            ("0x10", "16"),
            ("0x1.8p1", "3"),
            ("1e-4940", "0"),
            ("-1e-20", "0"),
            ("0.000003814697265625", "0.00000381469726562"), // tie, rounds to even
            ("0.000011444091796875", "0.00001144409179688"), // tie, rounds to even (up)
            (
                "123456789012345678901234567890",
                "123456789012345678899921813504",
            ),
            ("1e30", "1000000000000000000024696061952"),
            ("9223372036854775807", "9223372036854775807"),
            ("18446744073709551616", "18446744073709551616"),
            ("5e-324", "0"),
            ("0.99999999999999999999", "1"),
        ];
        for (input, want) in cases {
            assert_eq!(human(input), want, "{input}");
        }
        assert_eq!(sum("0.1", "0.2"), "0.3");
        assert_eq!(sum("10.5", "0.1"), "10.6");
        assert_eq!(sum("5.0e3", "2.0e2"), "5200");
        assert_eq!(sum("1", "-1"), "0");
        let big = human("1e4000");
        assert_eq!(big.len(), 4000);
        assert!(big.starts_with("99999999999999999999654638730996237849324925835069"));
    }

    #[test]
    fn parses_like_string2ld() {
        for ok in [
            "1",
            "+1",
            "-1",
            ".5",
            "5.",
            "1e5",
            "1E+5",
            "1e-5",
            "0x1p3",
            "0X.8",
            "inf",
            "-Infinity",
            "0e-99999",
            "1e-4940",
        ] {
            assert!(parse(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "", " 1", "1 ", "nan", "-nan", "1e", "1e+", "0x", "0xp1", "0x1p", ".", "1..2", "abc",
            "1e99999", "-1e5000", "1e-5000", "infinit", "1\0", "++1", "--1", "0x1.8p+",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        // At most 5119 bytes; 5000 digits overflow.
        let mut long = b"0.".to_vec();
        long.resize(5119, b'1');
        assert!(parse(&long).is_some());
        long.push(b'1');
        assert!(parse(&long).is_none());
        assert!(parse(&[b'1'; 5000]).is_none());
    }
}
