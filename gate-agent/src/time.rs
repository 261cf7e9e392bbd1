//! Time as the agent counts it: whole milliseconds.
//!
//! The decision modules take "now" as milliseconds since an arbitrary epoch and convert spec
//! durations with [`millis`]; only the I/O layer reads a clock ([`unix_ms`] for records and
//! views, `tokio::time` for the loop).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `d` in whole milliseconds, saturating (spec durations are hours at most; never wrap).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}
