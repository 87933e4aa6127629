//! Durations and byte sizes: kept as written until checked, then read with their units,
//! bounded, and shown in problems as a user would write them.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// A duration or a size as written: text to parse with its unit, or a bare TOML number, kept
/// so that validation can say a unit is required.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Quantity {
    Text(String),
    Bare(String),
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quantity, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted number with a unit, such as \"500ms\" or \"64KiB\"")
            }
            fn visit_str<E>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity::Bare(v.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl From<&str> for Quantity {
    fn from(text: &str) -> Quantity {
        Quantity::Text(text.to_owned())
    }
}

pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;
pub(super) const GIB: usize = 1024 * MIB;

/// The ceiling for every size. A whole request sits in the query buffer and `Request` stores
/// argument offsets as `u32`, so requests must stay well below 4 GiB; 2 GiB also fits a
/// 32-bit `usize`.
pub(super) const MAX_SIZE: usize = 2 * GIB;
/// The ceiling for every duration, so that `Instant + duration` or doubling a backoff can
/// never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Linux accepts a keepalive idle time of 1..=32767 whole seconds (`MAX_TCP_KEEPIDLE`).
const KEEPALIVE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(32_767);

/// A humantime duration that carries a unit, at most [`MAX_DURATION`].
pub(super) fn duration(quantity: Quantity) -> Result<Duration, String> {
    let text = match quantity {
        Quantity::Bare(n) => return Err(unit_required(&n, &format!("\"{n}s\" or \"{n}ms\""))),
        Quantity::Text(text) => text,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty; write a duration with a unit, e.g. \"5s\"".to_owned());
    }
    // humantime reads a lone "0" as zero; a unit is required here all the same.
    if !trimmed.chars().any(char::is_alphabetic) {
        return Err(unit_required(
            &format!("{text:?}"),
            &format!("\"{trimmed}s\" or \"{trimmed}ms\""),
        ));
    }
    let value = humantime::parse_duration(trimmed).map_err(|e| {
        format!("{text:?} is not a duration: {e} (write e.g. \"500ms\", \"5s\" or \"1m\")")
    })?;
    if value > MAX_DURATION {
        return Err(format!("{text:?} is longer than the maximum, 365 days"));
    }
    Ok(value)
}

fn unit_required(written: &str, example: &str) -> String {
    format!("{written} has no unit; a unit is required, e.g. {example}")
}

/// A duration where 0 makes no sense.
pub(super) fn timeout(quantity: Quantity) -> Result<Duration, String> {
    nonzero(duration(quantity)?)
}

fn nonzero(value: Duration) -> Result<Duration, String> {
    if value.is_zero() {
        return Err("must be more than 0s".to_owned());
    }
    Ok(value)
}

/// For options where 0 means "never" or "off".
pub(super) fn zero_is_off(value: Duration) -> Option<Duration> {
    (!value.is_zero()).then_some(value)
}

/// The kernel counts keepalive idle time in whole seconds, within [`KEEPALIVE`].
pub(super) fn keepalive(value: Duration) -> Result<Duration, String> {
    if !KEEPALIVE.contains(&value) || value.subsec_nanos() != 0 {
        return Err(format!(
            "must be \"0s\" (off) or whole seconds from 1s to 32767s (the kernel's range), not {}",
            show_duration(value)
        ));
    }
    Ok(value)
}

/// A byte size with a unit, within `range`.
pub(super) fn size(quantity: Quantity, range: RangeInclusive<usize>) -> Result<usize, String> {
    let text = match quantity {
        Quantity::Bare(n) => {
            return Err(unit_required(
                &n,
                &format!("\"{n}B\" (units: B, KB/KiB, MB/MiB, GB/GiB)"),
            ))
        }
        Quantity::Text(text) => text,
    };
    let bytes = parse_size(&text)?;
    match usize::try_from(bytes) {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => Err(format!(
            "must be between {} and {}, not {text:?}",
            show_size(*range.start()),
            show_size(*range.end())
        )),
    }
}

/// Parses `"<whole number><unit>"` (a space between is allowed; the unit is case-insensitive):
/// B = 1, KB = KiB = 1024, MB = MiB = 1024², GB = GiB = 1024³. Redis reads "1kb" as 1024 too;
/// its "1k" (= 1000) is refused here rather than silently meaning something else.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let units = "B, KB/KiB, MB/MiB or GB/GiB (KB = KiB = 1024 bytes)";
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a whole number and a unit, e.g. \"64KiB\""
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?} is not a size: the number must be whole; use a smaller unit"
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => {
            return Err(unit_required(
                &format!("{text:?}"),
                &format!("\"{digits}B\" ({units})"),
            ))
        }
        "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "k" | "m" | "g" => {
            return Err(format!(
                "{text:?}: a bare {unit:?} is ambiguous (Redis reads 1k as 1000); write {digits}{}B or {digits}{}iB (both 1024-based)",
                unit.to_ascii_uppercase(),
                unit.to_ascii_uppercase()
            ));
        }
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use {units}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size in the largest unit that divides it exactly: "64KiB", "1GiB", "1000B".
pub(super) fn show_size(bytes: usize) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes != 0 && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

pub(super) fn show_duration(value: Duration) -> String {
    if value.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(value).to_string()
}
