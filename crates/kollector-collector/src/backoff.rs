//! Exponential backoff with jitter for client rebuilds.
//!
//! Jitter spreads rebuilds of many monitors that failed together (a network
//! blip) so they do not reconnect in lockstep.

use std::time::Duration;

/// Delay before the first rebuild.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest delay while still within the restart limit.
pub const MAX: Duration = Duration::from_secs(60);
/// Delay once the restart limit is reached: the monitor is `Failed` and
/// retries rarely rather than never, since clusters do come back.
pub const PARKED: Duration = Duration::from_secs(300);
/// Consecutive failed collections before the client is rebuilt.
pub const REBUILD_AFTER_FAILURES: u32 = 3;
/// Client rebuilds without a success before the monitor is marked `Failed`.
pub const MAX_RESTARTS: u32 = 10;

/// The delay before rebuild number `level` (1-based), with ±20% jitter from
/// `jitter` in [0, 1).
pub fn delay(level: u32, jitter: f64) -> Duration {
    if level > MAX_RESTARTS {
        return PARKED;
    }
    let exp = BASE.saturating_mul(1u32 << level.saturating_sub(1).min(16));
    let capped = exp.min(MAX);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    capped.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_parks() {
        assert_eq!(delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(delay(4, 0.5), Duration::from_secs(8));
        assert_eq!(delay(10, 0.5), MAX);
        assert_eq!(delay(MAX_RESTARTS + 1, 0.5), PARKED);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(delay(3, 0.0), Duration::from_millis(3200));
        assert_eq!(delay(3, 0.999_999).as_millis(), 4799);
    }
}
