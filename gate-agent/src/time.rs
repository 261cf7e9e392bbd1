//! Time as the agent counts it: whole milliseconds.
//!
//! The decision crate (`canary-rollout`) takes "now" as milliseconds since an arbitrary epoch and
//! converts spec durations with [`millis`]; only this I/O crate reads a clock ([`unix_ms`] for
//! records and views, `tokio::time` for the loop).

use std::time::{SystemTime, UNIX_EPOCH};

pub use canary_rollout::time::millis;

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}
