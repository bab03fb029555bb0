//! The latest result of one monitor: the one shape every reader uses.
//!
//! A monitor actor writes it after each collection; the collector's
//! `/metrics`, its result stream, the manager's intake, GetLatest and the
//! manager's cluster-wide `/metrics` all read this same type. It is
//! converted to the wire only at the gRPC edge (`kollector-proto`).
//!
//! `generation` and `epoch` are those in force when the collection
//! *started*: a result can only be accepted under the spec and the
//! assignment it was collected for.
//!
//! Every reader that serves a result (the manager's intake, a collector's
//! or standalone node's store) first judges it with [`StaleRule`]: a result
//! whose owner's next one is overdue (a collector cut off, an actor system
//! that died, a collection stuck) is presented as `Stale`, without its
//! snapshot, never as current. The owner states when its next result is
//! due ([`MonitorResult::next_result_due_ms`]) because only it knows its
//! schedule (the interval, or a rebuild backoff of up to 5 minutes).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{CollectorId, Epoch, Generation, MonitorId};
use crate::snapshot::Snapshot;
use crate::status::{CollectError, ErrorKind, MonitorState, MonitorStatus};

#[derive(Clone, Debug, PartialEq)]
pub struct MonitorResult {
    pub monitor: MonitorId,
    pub generation: Generation,
    /// The assignment epoch the latest attempt ran under (0 in standalone mode).
    pub epoch: Epoch,
    /// The collector that produced it (cluster mode, set by the receiver
    /// from the stream it came on).
    pub collector: Option<CollectorId>,
    pub status: MonitorStatus,
    /// The last successful snapshot of this generation.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The error of the latest attempt, if it failed.
    pub error: Option<CollectError>,
    /// Unix ms of the latest attempt (success or failure); 0 before the first.
    pub attempted_at_ms: u64,
    /// Unix ms of the latest success.
    pub last_success_ms: Option<u64>,
    /// Counters kept across generations of the same monitor on one node.
    pub collections_total: u64,
    pub errors_total: BTreeMap<ErrorKind, u64>,
    pub restarts_total: u64,
    /// Unix ms (the reader's clock: converted on receipt) by which the
    /// owner's next result is due: its next attempt plus the monitor's
    /// timeout. 0 when unknown (a result from an older collector), which
    /// is never judged stale.
    pub next_result_due_ms: u64,
    /// The monitor's collection interval, in ms: the stale bound allows a
    /// few of them past the due time.
    pub interval_ms: u64,
}

/// Milliseconds since the Unix epoch by this machine's clock (0 if it reads
/// before 1970): the one clock results, due times and snapshots are
/// stamped and judged with.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When a result stops being current: once its owner's next result is
/// overdue by more than `intervals − 1` intervals, i.e. `intervals` missed
/// collections counted from the last one (the timeout aside). Pure, so the
/// manager, collectors and the standalone node judge alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleRule {
    intervals: u32,
}

impl Default for StaleRule {
    fn default() -> Self {
        StaleRule { intervals: StaleRule::DEFAULT_INTERVALS }
    }
}

/// A stale-after count outside [`StaleRule::RANGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale-after must be {min} to {max} intervals, got {0}", min = StaleRule::RANGE.start(), max = StaleRule::RANGE.end())]
pub struct StaleRuleError(pub u32);

impl StaleRule {
    pub const DEFAULT_INTERVALS: u32 = 3;
    /// At least 2: with 1, one collection that overran its timeout and
    /// skipped a tick would already read stale.
    pub const RANGE: std::ops::RangeInclusive<u32> = 2..=1000;

    pub fn new(intervals: u32) -> Result<Self, StaleRuleError> {
        if Self::RANGE.contains(&intervals) {
            Ok(StaleRule { intervals })
        } else {
            Err(StaleRuleError(intervals))
        }
    }

    pub fn intervals(self) -> u32 {
        self.intervals
    }

    /// Unix ms after which `r` is stale, or None if it cannot be (its due
    /// time is unknown).
    pub fn stale_after_ms(self, r: &MonitorResult) -> Option<u64> {
        if r.next_result_due_ms == 0 {
            return None;
        }
        let grace = r.interval_ms.saturating_mul(u64::from(self.intervals.saturating_sub(1)));
        Some(r.next_result_due_ms.saturating_add(grace))
    }

    /// How long past the stale bound `r` is at `now_ms`, if it is stale.
    pub fn overdue_ms(self, r: &MonitorResult, now_ms: u64) -> Option<u64> {
        self.stale_after_ms(r).filter(|bound| now_ms > *bound).map(|bound| now_ms - bound)
    }

    /// `r` as a reader may present it at `now_ms`: unchanged while current;
    /// once stale, in state `Stale` with the reason and without its
    /// snapshot (the counters and the latest error stay: they are facts
    /// about the past, not a claim about now).
    pub fn judge(self, mut r: MonitorResult, now_ms: u64) -> MonitorResult {
        let Some(bound) = self.stale_after_ms(&r).filter(|b| now_ms > *b) else { return r };
        let late = now_ms.saturating_sub(r.next_result_due_ms);
        r.status.state = MonitorState::Stale;
        r.status.reason = Some(format!(
            "no result from its owner: the next one was due {:.1}s ago (stale after {} missed intervals of {:.1}s, {:.1}s past due); the last result is not served",
            late as f64 / 1000.0,
            self.intervals,
            r.interval_ms as f64 / 1000.0,
            bound.saturating_sub(r.next_result_due_ms) as f64 / 1000.0,
        ));
        r.snapshot = None;
        r
    }
}

impl MonitorResult {
    /// A fresh result for a monitor that has not collected yet.
    pub fn starting(monitor: MonitorId, generation: Generation, pinned_cluster_id: Option<String>) -> Self {
        MonitorResult {
            monitor,
            generation,
            epoch: 0,
            collector: None,
            status: MonitorStatus {
                state: MonitorState::Starting,
                reason: None,
                consecutive_failures: 0,
                restarts: 0,
                pinned_cluster_id,
            },
            snapshot: None,
            error: None,
            attempted_at_ms: 0,
            last_success_ms: None,
            collections_total: 0,
            errors_total: BTreeMap::new(),
            restarts_total: 0,
            next_result_due_ms: 0,
            interval_ms: 0,
        }
    }

    /// The snapshot to publish as current: only when the latest attempt
    /// succeeded and the result is not stale.
    pub fn current_snapshot(&self) -> Option<&Arc<Snapshot>> {
        if self.error.is_none() && self.status.state != MonitorState::Stale {
            self.snapshot.as_ref()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn result(due: u64, interval: u64) -> MonitorResult {
        let mut r = MonitorResult::starting(MonitorId::new("m").unwrap(), 1, None);
        r.status.state = MonitorState::Running;
        r.snapshot = Some(Arc::new(crate::testing::one_group_snapshot("t", "g", 1, (0, 10), 5)));
        r.next_result_due_ms = due;
        r.interval_ms = interval;
        r
    }

    #[test]
    fn current_until_the_bound_then_stale_without_its_snapshot() {
        let rule = StaleRule::new(3).unwrap();
        let r = result(10_000, 1_000);
        // Due at 10 s, two more intervals allowed: stale after 12 s.
        assert_eq!(rule.stale_after_ms(&r), Some(12_000));
        let at_bound = rule.judge(r.clone(), 12_000);
        assert_eq!(at_bound.status.state, MonitorState::Running);
        assert!(at_bound.current_snapshot().is_some());
        let late = rule.judge(r, 12_001);
        assert_eq!(late.status.state, MonitorState::Stale);
        assert!(late.snapshot.is_none() && late.current_snapshot().is_none());
        assert!(late.status.reason.as_deref().unwrap_or("").contains("due 2.0s ago"), "{:?}", late.status.reason);
    }

    #[test]
    fn an_unknown_due_time_is_never_stale() {
        let r = result(0, 1_000);
        assert_eq!(StaleRule::default().judge(r.clone(), u64::MAX), r);
    }

    #[test]
    fn the_rule_takes_only_a_sane_count() {
        assert!(StaleRule::new(0).is_err());
        assert!(StaleRule::new(1).is_err());
        assert!(StaleRule::new(1001).is_err());
        assert_eq!(StaleRule::new(2).unwrap().stale_after_ms(&result(5, 1_000)), Some(1_005));
        assert_eq!(StaleRule::default().intervals(), 3);
    }

    proptest! {
        /// Hostile times never panic, and a result is stale exactly when
        /// now is past due plus (intervals − 1) intervals.
        #[test]
        fn stale_exactly_past_the_bound(due in 1u64.., interval in any::<u64>(), n in 2u32..=1000, now in any::<u64>()) {
            let rule = StaleRule::new(n).unwrap();
            let judged = rule.judge(result(due, interval), now);
            let bound = (due as u128) + (interval as u128) * (n as u128 - 1);
            let stale = (now as u128) > bound.min(u64::MAX as u128);
            prop_assert_eq!(judged.status.state == MonitorState::Stale, stale);
            prop_assert_eq!(judged.current_snapshot().is_some(), !stale);
        }
    }
}
