//! The wall clock, read in one place: milliseconds since the epoch, as the records, the lane and the metrics store
//! them. Durations within one process use `tokio::time::Instant` instead (monotonic, and paused in tests).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long until `deadline` on the wall clock (an invocation's Lambda deadline), zero once it has passed.
pub fn left_until(deadline: SystemTime) -> std::time::Duration {
    deadline.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    now_ms() / 1000
}
