//! The collect gate: may this node start a collection right now?
//!
//! In cluster mode a collector may act only while its lease is surely alive.
//! Membership moves the gate's deadline to `last successful keepalive send +
//! TTL − margin` on every renewal, and every monitor actor checks it before
//! each collection. A process that was frozen (SIGSTOP, a long pause) past
//! that deadline wakes with the gate already shut, before its fencing task
//! has even run. In standalone mode the gate is always open.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct CollectGate {
    base: Instant,
    /// Nanoseconds after `base` until which collections may start; u64::MAX = always.
    until_ns: Arc<AtomicU64>,
}

impl CollectGate {
    /// Always open (standalone mode).
    pub fn open() -> Self {
        CollectGate { base: Instant::now(), until_ns: Arc::new(AtomicU64::new(u64::MAX)) }
    }

    /// Shut until the first `open_until` (cluster mode, before registering).
    pub fn shut() -> Self {
        CollectGate { base: Instant::now(), until_ns: Arc::new(AtomicU64::new(0)) }
    }

    /// Opens the gate until `deadline`.
    pub fn open_until(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos().min(u64::MAX as u128 - 1) as u64;
        self.until_ns.store(ns, Ordering::SeqCst);
    }

    /// Shuts the gate now.
    pub fn close(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Until when collections may talk to Kafka: `None` if always open.
    pub fn deadline(&self) -> Option<Instant> {
        match self.until_ns.load(Ordering::SeqCst) {
            u64::MAX => None,
            ns => Some(self.base + std::time::Duration::from_nanos(ns)),
        }
    }

    /// The gate as a collection fence (see `kollector_kafka::Deadline`),
    /// also passed at once when `abandon` is set (the monitor is stopping).
    pub fn fence(&self, abandon: Arc<AtomicBool>) -> kollector_kafka::Fence {
        let gate = self.clone();
        Arc::new(move || if abandon.load(Ordering::SeqCst) { Some(Instant::now()) } else { gate.deadline() })
    }

    /// Standalone mode: no lease guards this node.
    pub fn is_always_open(&self) -> bool {
        self.until_ns.load(Ordering::SeqCst) == u64::MAX
    }

    pub fn is_open(&self) -> bool {
        let until = self.until_ns.load(Ordering::SeqCst);
        until == u64::MAX || (self.base.elapsed().as_nanos() as u64) < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_semantics() {
        assert!(CollectGate::open().is_open());
        let g = CollectGate::shut();
        assert!(!g.is_open());
        g.open_until(Instant::now() + Duration::from_secs(60));
        assert!(g.is_open());
        g.open_until(Instant::now() - Duration::from_millis(1));
        assert!(!g.is_open());
        g.open_until(Instant::now() + Duration::from_secs(60));
        g.close();
        assert!(!g.is_open());
        assert!(g.deadline().is_some_and(|d| d <= Instant::now()));
        let abandon = Arc::new(AtomicBool::new(false));
        let fence = g.fence(abandon.clone());
        g.open_until(Instant::now() + Duration::from_secs(5));
        assert!(fence().is_some_and(|d| d > Instant::now()), "the fence follows the gate");
        abandon.store(true, Ordering::SeqCst);
        assert!(fence().is_some_and(|d| d <= Instant::now()), "abandoning passes the fence at once");
        assert!(CollectGate::open().fence(Arc::default())().is_none());
        assert!(CollectGate::open().deadline().is_none());
    }
}
