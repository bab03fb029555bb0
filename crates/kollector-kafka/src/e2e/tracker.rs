//! The probe's bookkeeping, apart from any I/O: which message was produced
//! when, acknowledged, consumed back, and what that makes it (on time,
//! failed, lost, late, a duplicate, out of order). The probe thread feeds
//! it events and the clock; the tests feed it the same, with a fake clock.
//!
//! Messages are numbered per partition from 0. A message is:
//! - *failed* when its produce is refused or not acknowledged within the
//!   ack SLA (librdkafka's message timeout is the ack SLA, so its delivery
//!   report says so; a report that never comes is treated the same, a
//!   little later);
//! - *lost* when it was acknowledged and not consumed back within the
//!   round-trip SLA of its creation;
//! - *late* when it comes back after being counted lost (it stays lost:
//!   the SLA was missed; its round trip is still observed);
//! - a *duplicate* when it comes back a second time;
//! - *out of order* when it comes back after a later message of its
//!   partition did.
//!
//! Memory is bounded by the SLAs: a message is forgotten a few round-trip
//! SLAs after it was settled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_core::e2e::{E2ePartition, LatencyHistogram};

/// How long past the ack SLA a delivery report may still come before the
/// message is counted failed without one.
const REPORT_GRACE: Duration = Duration::from_secs(2);
/// Settled messages are remembered this many round-trip SLAs (to tell a
/// duplicate or a late arrival from a stranger).
const MEMORY_SLAS: u32 = 3;
/// And at most this many per partition.
const MEMORY_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Pending {
    created: Instant,
    acked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// Consumed back (acknowledged or not yet).
    Received {
        acked: bool,
    },
    /// Counted lost, or failed.
    Lost,
    Failed,
}

#[derive(Debug, Default)]
struct PartitionBook {
    stats: E2ePartition,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    settled: BTreeMap<u64, (Settled, Instant, Instant)>,
    highest_received: Option<u64>,
}

/// Every partition's book.
#[derive(Debug)]
pub struct Tracker {
    ack_sla: Duration,
    roundtrip_sla: Duration,
    books: BTreeMap<i32, PartitionBook>,
}

impl Tracker {
    pub fn new(ack_sla: Duration, roundtrip_sla: Duration) -> Tracker {
        Tracker { ack_sla, roundtrip_sla, books: BTreeMap::new() }
    }

    fn book(&mut self, partition: i32) -> &mut PartitionBook {
        self.books.entry(partition).or_insert_with(|| PartitionBook {
            stats: E2ePartition { partition, ..Default::default() },
            ..Default::default()
        })
    }

    /// Records the partition's leader as last seen.
    pub fn set_leader(&mut self, partition: i32, leader: Option<i32>) {
        self.book(partition).stats.leader = leader;
    }

    /// A message about to be produced to `partition` at `now`: its number.
    pub fn produce(&mut self, partition: i32, now: Instant) -> u64 {
        let b = self.book(partition);
        let seq = b.next_seq;
        b.next_seq += 1;
        b.stats.produced += 1;
        b.pending.insert(seq, Pending { created: now, acked: false });
        seq
    }

    /// The broker acknowledged `seq`.
    pub fn acked(&mut self, partition: i32, seq: u64, now: Instant) {
        let b = self.book(partition);
        if let Some(p) = b.pending.get_mut(&seq) {
            if !p.acked {
                p.acked = true;
                b.stats.produce_latency.observe(now.saturating_duration_since(p.created));
            }
        } else if let Some((Settled::Received { acked }, created, _)) = b.settled.get_mut(&seq) {
            // Consumed back before its acknowledgement was read.
            if !*acked {
                *acked = true;
                b.stats.produce_latency.observe(now.saturating_duration_since(*created));
            }
        }
    }

    /// The produce of `seq` failed (refused, or no acknowledgement in time).
    pub fn failed(&mut self, partition: i32, seq: u64, now: Instant) {
        let b = self.book(partition);
        if let Some(p) = b.pending.remove(&seq) {
            b.stats.produce_failed += 1;
            b.settled.insert(seq, (Settled::Failed, p.created, now));
        }
    }

    /// `seq` was withdrawn by the probe itself before it was settled (its
    /// queue purged at the fence): counted neither produced nor failed.
    pub fn cancel(&mut self, partition: i32, seq: u64) {
        let b = self.book(partition);
        if b.pending.remove(&seq).is_some() {
            b.stats.produced = b.stats.produced.saturating_sub(1);
        }
    }

    /// `seq` of `partition` was consumed back at `now`.
    pub fn received(&mut self, partition: i32, seq: u64, now: Instant) {
        let b = self.book(partition);
        let out_of_order = b.highest_received.is_some_and(|h| seq < h);
        b.highest_received = Some(b.highest_received.map_or(seq, |h| h.max(seq)));
        if let Some(p) = b.pending.remove(&seq) {
            b.stats.received += 1;
            b.stats.roundtrip_latency.observe(now.saturating_duration_since(p.created));
            if out_of_order {
                b.stats.out_of_order += 1;
            }
            b.settled.insert(seq, (Settled::Received { acked: p.acked }, p.created, now));
            return;
        }
        match b.settled.get_mut(&seq) {
            Some((Settled::Received { .. }, _, _)) => b.stats.duplicates += 1,
            Some((state @ (Settled::Lost | Settled::Failed), created, _)) => {
                // Lost (or reported failed, yet written): back after all,
                // late. Its round trip is observed too, so the histogram
                // shows how far past the SLA messages come back.
                b.stats.late += 1;
                b.stats.received += 1;
                b.stats.roundtrip_latency.observe(now.saturating_duration_since(*created));
                if out_of_order {
                    b.stats.out_of_order += 1;
                }
                *state = Settled::Received { acked: true };
            }
            // Older than memory, or a number this probe never gave: not ours to count.
            None => {}
        }
    }

    /// Settles what ran out of time at `now`, and forgets what is old.
    pub fn expire(&mut self, now: Instant) {
        let (ack_sla, roundtrip_sla) = (self.ack_sla, self.roundtrip_sla);
        let memory = roundtrip_sla.max(ack_sla) * MEMORY_SLAS;
        for b in self.books.values_mut() {
            let mut settle = Vec::new();
            for (seq, p) in &b.pending {
                let age = now.saturating_duration_since(p.created);
                if p.acked && age > roundtrip_sla {
                    settle.push((*seq, Settled::Lost, p.created));
                } else if !p.acked && age > ack_sla + REPORT_GRACE {
                    settle.push((*seq, Settled::Failed, p.created));
                }
            }
            for (seq, how, created) in settle {
                b.pending.remove(&seq);
                match how {
                    Settled::Lost => b.stats.lost += 1,
                    _ => b.stats.produce_failed += 1,
                }
                b.settled.insert(seq, (how, created, now));
            }
            b.settled.retain(|_, (_, _, at)| now.saturating_duration_since(*at) <= memory);
            while b.settled.len() > MEMORY_MAX {
                b.settled.pop_first();
            }
        }
    }

    /// Messages produced and not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.books.values().map(|b| b.pending.len() as u64).sum()
    }

    /// Every partition's numbers.
    pub fn partitions(&self) -> Vec<E2ePartition> {
        self.books.values().map(|b| b.stats.clone()).collect()
    }
}

/// A commit's latency, kept with the others.
#[derive(Debug, Default)]
pub struct Commits {
    pub ok: u64,
    pub failed: u64,
    pub latency: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn on_time_failed_lost_late_duplicate_and_out_of_order() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ms(1000), ms(3000));
        // 0: acked at 10 ms, back at 30 ms.
        let a = t.produce(0, t0);
        t.acked(0, a, t0 + ms(10));
        t.received(0, a, t0 + ms(30));
        // 1: refused by the broker.
        let b = t.produce(0, t0);
        t.failed(0, b, t0 + ms(5));
        // 2: acked, never back: lost after 3 s; then back late.
        let c = t.produce(0, t0);
        t.acked(0, c, t0 + ms(10));
        // 3 and 4: 4 comes back before 3 (3 out of order), 3 twice.
        let d = t.produce(0, t0 + ms(100));
        let e = t.produce(0, t0 + ms(100));
        t.acked(0, d, t0 + ms(110));
        t.acked(0, e, t0 + ms(110));
        t.received(0, e, t0 + ms(120));
        t.received(0, d, t0 + ms(130));
        t.received(0, d, t0 + ms(140));
        // 5: no report ever: failed once the ack SLA and the grace passed.
        let f = t.produce(0, t0 + ms(100));
        t.expire(t0 + ms(2000));
        assert_eq!(t.in_flight(), 2, "2 (acked) and 5 (not yet failed) are still out");
        t.expire(t0 + ms(3200));
        assert_eq!(t.in_flight(), 0);
        t.received(0, c, t0 + ms(3500));
        let p = &t.partitions()[0];
        assert_eq!(
            (p.produced, p.produce_failed, p.received, p.lost, p.late, p.duplicates, p.out_of_order),
            (6, 2, 4, 1, 1, 1, 2),
            "{p:?}"
        );
        // Out of order: 3 (after 4) and the late 2 (after 4).
        assert_eq!(p.produce_latency.count(), 4);
        // a, e, d on time, and the late c.
        assert_eq!(p.roundtrip_latency.count(), 4);
        let _ = f;
    }

    #[test]
    fn back_before_its_acknowledgement_is_read_counts_once_and_on_time() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ms(1000), ms(3000));
        let a = t.produce(1, t0);
        t.received(1, a, t0 + ms(20));
        t.acked(1, a, t0 + ms(25));
        t.acked(1, a, t0 + ms(26));
        t.expire(t0 + ms(10_000));
        let p = &t.partitions()[0];
        assert_eq!((p.received, p.lost, p.produce_failed, p.duplicates), (1, 0, 0, 0));
        assert_eq!(p.produce_latency.count(), 1);
    }

    #[test]
    fn strangers_are_not_counted_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ms(100), ms(100));
        t.received(0, 42, t0);
        assert_eq!(t.partitions()[0].received, 0);
        for i in 0..20_000u64 {
            let s = t.produce(0, t0);
            t.received(0, s, t0 + ms(1));
            if i % 1000 == 0 {
                t.expire(t0 + ms(2));
            }
        }
        t.expire(t0 + ms(2));
        assert!(t.books[&0].settled.len() <= MEMORY_MAX);
        t.expire(t0 + ms(10_000));
        assert!(t.books[&0].settled.is_empty() && t.books[&0].pending.is_empty());
    }
}
