//! A token bucket: how many of an expensive call (a probe makes a node open
//! a Kafka client to an address the caller chose) may start per minute.
//! Pure: the caller passes the time, so tests need no clock.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    /// Up to `burst` at once, refilled at `per_minute`.
    pub fn per_minute(per_minute: u32, burst: u32) -> RateLimit {
        let capacity = f64::from(burst.max(1));
        RateLimit { capacity, per_second: f64::from(per_minute) / 60.0, tokens: capacity, last: None }
    }

    /// Takes one token if there is one; otherwise how long until there is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.per_second <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64(((1.0 - self.tokens) / self.per_second).min(3600.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut r = RateLimit::per_minute(6, 3);
        assert!((0..3).all(|_| r.try_take(t0).is_ok()));
        let wait = r.try_take(t0).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10), "{wait:?}");
        assert!(r.try_take(t0 + Duration::from_secs(10)).is_ok());
        assert!(r.try_take(t0 + Duration::from_secs(11)).is_err());
        // Idle time refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| r.try_take(later).is_ok()));
        assert!(r.try_take(later).is_err());
        assert!(RateLimit::per_minute(0, 1).try_take(t0).is_ok());
    }
}
