//! When a collection must stop talking to Kafka.
//!
//! Two limits apply to every collection: the monitor's own timeout (fixed
//! when the collection starts) and, in cluster mode, the *fence*: the instant
//! until which this collector's etcd lease is surely alive (the collect
//! gate's deadline). The fence moves forward with every lease renewal, so it
//! is asked again at each wait instead of being read once. Once it passes,
//! the collection gives up within one polling slice (100 ms) and returns the
//! client to its owner, which closes it: a cut-off collector has closed its
//! Kafka connections before its lease can expire at etcd and another
//! collector takes the monitor over.
//!
//! librdkafka's blocking calls (metadata, cluster id) cannot be interrupted,
//! so they are bounded by the earlier of the two limits, in slices that are
//! retried while only the fence (not the timeout) cut them short.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Returns the current fence: `None` means no limit beyond the timeout.
pub type Fence = Arc<dyn Fn() -> Option<Instant> + Send + Sync>;

/// Why waiting stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The monitor's timeout passed.
    TimedOut,
    /// The fence passed: the lease may be lost, stop talking to Kafka now.
    Fenced,
}

/// The limits of one collection (or one admin call).
#[derive(Clone)]
pub struct Deadline {
    at: Instant,
    fence: Option<Fence>,
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline").field("at", &self.at).field("fenced", &self.fence.is_some()).finish()
    }
}

impl From<Duration> for Deadline {
    fn from(timeout: Duration) -> Deadline {
        Deadline::after(timeout)
    }
}

impl Deadline {
    /// `timeout` from now, no fence.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline { at: Instant::now() + timeout, fence: None }
    }

    /// The same deadline, also bounded by `fence`.
    pub fn with_fence(mut self, fence: Option<Fence>) -> Deadline {
        self.fence = fence;
        self
    }

    /// The timeout's instant (not the fence's).
    pub fn at(&self) -> Instant {
        self.at
    }

    /// A deadline at most `cap` from now, with the same fence.
    pub fn capped(&self, cap: Duration) -> Deadline {
        Deadline { at: self.at.min(Instant::now() + cap), fence: self.fence.clone() }
    }

    /// `timeout` from now with the same fence: for one bounded step after
    /// the collection's own time ran out (naming why it failed).
    pub fn renewed(&self, timeout: Duration) -> Deadline {
        Deadline { at: Instant::now() + timeout, fence: self.fence.clone() }
    }

    /// Whether the timeout has passed (not the fence).
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Whether the fence has passed.
    pub fn fenced(&self) -> bool {
        self.fence.as_ref().and_then(|f| f()).is_some_and(|fence| Instant::now() >= fence)
    }

    /// Waits `pause` (a retry's backoff), less if a limit comes first;
    /// which limit stopped it, if one did. Sleeps in slices of at most
    /// 50 ms so a fence that moves closer meanwhile is seen.
    pub fn pause(&self, pause: Duration) -> Result<(), Stop> {
        let until = Instant::now() + pause;
        loop {
            let (left, by) = self.slice()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let step = (until - now).min(Duration::from_millis(50));
            if left <= step {
                std::thread::sleep(left);
                return Err(by);
            }
            std::thread::sleep(step);
        }
    }

    /// Time left before the earlier of the two limits, and which one it is;
    /// an error once either has passed.
    pub fn slice(&self) -> Result<(Duration, Stop), Stop> {
        let fence = self.fence.as_ref().and_then(|f| f());
        let now = Instant::now();
        if fence.is_some_and(|f| now >= f) {
            return Err(Stop::Fenced);
        }
        let to_timeout = self.at.saturating_duration_since(now);
        if to_timeout < Duration::from_millis(10) {
            return Err(Stop::TimedOut);
        }
        match fence {
            Some(f) if f - now < to_timeout => Ok((f - now, Stop::Fenced)),
            _ => Ok((to_timeout, Stop::TimedOut)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_earlier_limit_wins_and_the_fence_is_read_again_each_time() {
        let base = Instant::now();
        let fence_ms = Arc::new(AtomicU64::new(60_000));
        let f = fence_ms.clone();
        let fence: Fence = Arc::new(move || Some(base + Duration::from_millis(f.load(Ordering::SeqCst))));
        let d = Deadline::after(Duration::from_secs(10)).with_fence(Some(fence));
        let (left, by) = d.slice().unwrap();
        assert_eq!(by, Stop::TimedOut);
        assert!(left <= Duration::from_secs(10));
        fence_ms.store(1_000, Ordering::SeqCst);
        let (left, by) = d.slice().unwrap();
        assert_eq!(by, Stop::Fenced);
        assert!(left <= Duration::from_secs(1));
        fence_ms.store(0, Ordering::SeqCst);
        assert_eq!(d.slice(), Err(Stop::Fenced));
        assert!(d.fenced());
        assert!(!Deadline::after(Duration::from_secs(1)).fenced());
        assert_eq!(Deadline::after(Duration::ZERO).slice(), Err(Stop::TimedOut));
    }

    #[test]
    fn a_pause_ends_at_the_first_limit() {
        let started = Instant::now();
        assert_eq!(Deadline::after(Duration::from_secs(5)).pause(Duration::from_millis(120)), Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(120));
        let started = Instant::now();
        assert_eq!(Deadline::after(Duration::from_millis(150)).pause(Duration::from_secs(5)), Err(Stop::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(1));
        let fence: Fence = Arc::new(move || Some(started + Duration::from_millis(100)));
        let d = Deadline::after(Duration::from_secs(5)).with_fence(Some(fence));
        assert_eq!(d.pause(Duration::from_secs(5)), Err(Stop::Fenced));
    }
}
