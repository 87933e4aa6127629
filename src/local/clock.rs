//! The local engine's clock: Unix time in milliseconds, the unit of every key's deadline.

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
