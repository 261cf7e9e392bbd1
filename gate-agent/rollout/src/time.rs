//! Time as the decisions count it: whole milliseconds since an arbitrary epoch, passed in by the
//! caller. Nothing here reads a clock.

use std::time::Duration;

/// `d` in whole milliseconds, saturating (spec durations are hours at most; never wrap).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
