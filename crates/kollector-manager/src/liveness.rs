//! Liveness beyond the lease: is a collector one the leader can work with?
//!
//! A lease says a collector reaches etcd, not that the leader reaches it: a
//! collector whose gRPC port is cut off from the managers, whose record no
//! longer decodes, or whose server is wedged keeps renewing its lease and
//! would hold its monitors (and get new ones) forever. So the leader judges
//! each collector by what it can do with it, one ListRunning per pass:
//!
//! - **answering**: normal;
//! - **silent** for less than `unreachable_after`: nothing changes yet (a
//!   slow pass, a GC pause);
//! - **unreachable** (silent for `unreachable_after`, over at least two
//!   passes in a row): the leader revokes
//!   its lease. Revoking alone would be unsafe, because the collector keeps
//!   collecting until its own fence closes, up to one TTL after its last
//!   renewal. So first the leader writes a *revocation mark* under a lease
//!   of its own whose TTL is the collector's TTL plus a second; while the
//!   mark exists (etcd's clock, not ours, so a leader change changes
//!   nothing) the revoked collector still counts as a holder its monitors'
//!   moves wait for, and it gets no new monitor. When the mark expires the
//!   collector has fenced itself (its keepalive fails at once on a revoked
//!   lease) and its monitors start elsewhere;
//! - **on probation**: it registered again after a revocation. It gets no
//!   new monitor until it has answered for `probation` (no flapping), and
//!   while it is silent it is known to run nothing (the incarnation that
//!   held monitors fenced; this one was sent no Assign, which the leader
//!   checks: it never sends one to a closed collector and remembers every
//!   lease it sent one to), so it holds nothing.
//!
//! A leader that cannot reach most collectors is more likely cut off
//! itself (a firewall on its host, a certificate they refuse) than facing
//! a majority of broken collectors: then it revokes nobody, since revoking
//! them all would stop every monitor for nothing.
//!
//! Everything here is pure: the reconciler feeds in what each pass saw and
//! carries out the plan (write marks, revoke, keep closed collectors out of
//! the planner). Probation lives in the leader's memory only: a new leader
//! forgets it, which costs flap damping, never safety (a silent collector
//! with records stays a holder until it is revoked again).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kollector_core::CollectorId;

/// How long a collector may be silent before it is revoked, and how long
/// one that came back must answer before it gets work again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessRules {
    pub unreachable_after: Duration,
    pub probation: Duration,
}

impl Default for LivenessRules {
    fn default() -> Self {
        LivenessRules { unreachable_after: Duration::from_secs(10), probation: Duration::from_secs(10) }
    }
}

/// What one pass saw of a collector registered in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The lease its key is bound to now.
    pub lease: i64,
    /// Whether it answered ListRunning as that incarnation.
    pub answered: bool,
}

/// A collector's health as the leader sees it (status, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Answering,
    /// Silent, not long enough to act.
    Silent {
        since: Instant,
    },
    /// Its lease is being revoked this pass.
    Unreachable,
    /// A revocation mark exists: its monitors move once the mark expires.
    Revoked,
    /// Registered again after a revocation; no new work yet.
    Probation,
}

impl Health {
    /// For status and logs.
    pub fn describe(self, now: Instant) -> String {
        match self {
            Health::Answering => "ok".into(),
            Health::Silent { since } => format!("silent {:.1}s", now.saturating_duration_since(since).as_secs_f64()),
            Health::Unreachable => "unreachable".into(),
            Health::Revoked => "revoked".into(),
            Health::Probation => "probation".into(),
        }
    }
}

/// What the reconciler does about liveness this pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LivenessPlan {
    /// Leases to revoke (after writing each one's mark).
    pub revoke: Vec<(CollectorId, i64)>,
    /// Collectors the planner must not give monitors to.
    pub closed: BTreeSet<CollectorId>,
    /// Registered collectors known to run nothing: not holders.
    pub not_holding: BTreeSet<CollectorId>,
    pub health: BTreeMap<CollectorId, Health>,
    /// Most collectors were silent: the leader is likely the one cut off,
    /// so nobody was judged unreachable this pass.
    pub leader_isolated: bool,
}

#[derive(Clone, Copy, Debug)]
struct Track {
    lease: i64,
    silent_since: Option<Instant>,
    /// Passes in a row without an answer.
    misses: u32,
    answering_since: Option<Instant>,
    last: Option<Health>,
}

impl Track {
    fn new(lease: i64) -> Track {
        Track { lease, silent_since: None, misses: 0, answering_since: None, last: None }
    }
}

/// The leader's memory of collectors' liveness across passes.
#[derive(Debug, Default)]
pub struct Liveness {
    tracks: BTreeMap<CollectorId, Track>,
    /// Collectors whose lease this leader revoked, with that lease: they
    /// are on probation when they come back under another lease.
    revoked: BTreeMap<CollectorId, i64>,
    /// Leases this leader sent an Assign to: such an incarnation may run
    /// something, so it is never taken for one that holds nothing.
    sent_work: BTreeSet<(CollectorId, i64)>,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (a new term).
    pub fn clear(&mut self) {
        self.tracks.clear();
        self.revoked.clear();
        self.sent_work.clear();
    }

    /// Notes that an Assign is about to be sent to `collector` under `lease`.
    pub fn sending_work(&mut self, collector: &CollectorId, lease: i64) {
        self.sent_work.insert((collector.clone(), lease));
    }

    /// Whether `collector` was silent at the latest pass (the reconciler
    /// then waits less for it).
    pub fn was_silent(&self, collector: &CollectorId) -> bool {
        self.tracks.get(collector).is_some_and(|t| {
            t.silent_since.is_some()
                && matches!(t.last, Some(Health::Unreachable | Health::Revoked | Health::Probation))
        })
    }

    /// Notes that `lease` of `collector` was revoked (its mark written).
    pub fn revoked(&mut self, collector: &CollectorId, lease: i64) {
        self.revoked.insert(collector.clone(), lease);
    }

    /// Feeds in one pass: every registered collector as seen now, and the
    /// revocation marks in etcd (collector → revoked lease). Returns what
    /// to do.
    pub fn observe(
        &mut self,
        now: Instant,
        observed: &BTreeMap<CollectorId, Observed>,
        marks: &BTreeMap<CollectorId, i64>,
        rules: LivenessRules,
    ) -> LivenessPlan {
        self.tracks.retain(|c, _| observed.contains_key(c));
        // A revoked collector that neither came back nor has a mark left is
        // gone for good: nothing to remember.
        self.revoked.retain(|c, _| observed.contains_key(c) || marks.contains_key(c));
        self.sent_work.retain(|(c, lease)| observed.get(c).is_some_and(|o| o.lease == *lease));
        let answering = observed.values().filter(|o| o.answered).count();
        let isolated = answering == 0 || observed.len() - answering > answering;
        let mut plan = LivenessPlan { leader_isolated: isolated, ..LivenessPlan::default() };
        for (c, o) in observed {
            let t = self.tracks.entry(c.clone()).or_insert(Track::new(o.lease));
            if t.lease != o.lease {
                *t = Track::new(o.lease);
            }
            if o.answered {
                t.silent_since = None;
                t.misses = 0;
                t.answering_since.get_or_insert(now);
            } else {
                t.answering_since = None;
                t.misses = t.misses.saturating_add(1);
                t.silent_since.get_or_insert(now);
            }
            let silent_for = t.silent_since.map(|s| now.saturating_duration_since(s));
            let answered_for = t.answering_since.map(|s| now.saturating_duration_since(s));
            let health = if marks.contains_key(c) {
                // Its current or an earlier incarnation may still collect
                // under the revoked lease until the mark expires.
                plan.closed.insert(c.clone());
                Health::Revoked
            } else if self.revoked.get(c).is_some_and(|l| *l != o.lease) {
                if answered_for.is_some_and(|a| a >= rules.probation) {
                    self.revoked.remove(c);
                    Health::Answering
                } else {
                    plan.closed.insert(c.clone());
                    if silent_for.is_some() && !self.sent_work.contains(&(c.clone(), o.lease)) {
                        plan.not_holding.insert(c.clone());
                    }
                    Health::Probation
                }
            } else if !isolated && t.misses >= 2 && silent_for.is_some_and(|s| s >= rules.unreachable_after) {
                plan.closed.insert(c.clone());
                plan.revoke.push((c.clone(), o.lease));
                Health::Unreachable
            } else if let Some(since) = t.silent_since {
                Health::Silent { since }
            } else {
                Health::Answering
            };
            t.last = Some(health);
            plan.health.insert(c.clone(), health);
        }
        // Marked collectors whose key is gone (the revoked lease took it).
        for c in marks.keys().filter(|c| !observed.contains_key(*c)) {
            plan.health.insert(c.clone(), Health::Revoked);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> CollectorId {
        CollectorId::new(s).unwrap()
    }

    fn seen(list: &[(&str, i64, bool)]) -> BTreeMap<CollectorId, Observed> {
        list.iter().map(|(c, lease, answered)| (id(c), Observed { lease: *lease, answered: *answered })).collect()
    }

    const RULES: LivenessRules =
        LivenessRules { unreachable_after: Duration::from_secs(5), probation: Duration::from_secs(5) };

    #[test]
    fn silence_is_tolerated_then_revoked_then_probation_until_it_answers_long_enough() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Liveness::new();
        let none = BTreeMap::new();
        let p = l.observe(at(0), &seen(&[("c1", 7, true), ("c2", 8, true)]), &none, RULES);
        assert!(p.revoke.is_empty() && p.closed.is_empty());
        // Silent 4 s: nothing yet.
        l.observe(at(1), &seen(&[("c1", 7, false), ("c2", 8, true)]), &none, RULES);
        let p = l.observe(at(5), &seen(&[("c1", 7, false), ("c2", 8, true)]), &none, RULES);
        assert!(p.revoke.is_empty(), "{p:?}");
        assert!(matches!(p.health[&id("c1")], Health::Silent { .. }));
        // Silent 5 s: revoke lease 7, closed.
        let p = l.observe(at(6), &seen(&[("c1", 7, false), ("c2", 8, true)]), &none, RULES);
        assert_eq!(p.revoke, vec![(id("c1"), 7)]);
        assert!(p.closed.contains(&id("c1")) && !p.closed.contains(&id("c2")));
        l.revoked(&id("c1"), 7);
        // The mark exists; the key went with the lease: still closed, a holder.
        let marks = BTreeMap::from([(id("c1"), 7)]);
        let p = l.observe(at(7), &seen(&[("c2", 8, true)]), &marks, RULES);
        assert_eq!(p.health[&id("c1")], Health::Revoked);
        assert!(p.revoke.is_empty() && p.not_holding.is_empty());
        // It registered again (lease 9) while the mark lasts: closed, holder.
        let p = l.observe(at(8), &seen(&[("c1", 9, false), ("c2", 8, true)]), &marks, RULES);
        assert_eq!(p.health[&id("c1")], Health::Revoked);
        assert!(p.closed.contains(&id("c1")) && p.not_holding.is_empty());
        // Mark expired, still silent: probation, holds nothing, never revoked again meanwhile.
        let p = l.observe(at(20), &seen(&[("c1", 9, false), ("c2", 8, true)]), &none, RULES);
        assert_eq!(p.health[&id("c1")], Health::Probation);
        assert!(p.closed.contains(&id("c1")) && p.not_holding.contains(&id("c1")) && p.revoke.is_empty());
        // Answers: still on probation until it has answered for 5 s.
        let p = l.observe(at(21), &seen(&[("c1", 9, true), ("c2", 8, true)]), &none, RULES);
        assert_eq!(p.health[&id("c1")], Health::Probation);
        assert!(p.closed.contains(&id("c1")) && p.not_holding.is_empty());
        let p = l.observe(at(25), &seen(&[("c1", 9, true), ("c2", 8, true)]), &none, RULES);
        assert!(p.closed.contains(&id("c1")));
        let p = l.observe(at(26), &seen(&[("c1", 9, true), ("c2", 8, true)]), &none, RULES);
        assert_eq!(p.health[&id("c1")], Health::Answering);
        assert!(p.closed.is_empty());
    }

    #[test]
    fn a_new_lease_starts_a_new_count_and_a_revoke_that_did_not_happen_is_retried() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let none = BTreeMap::new();
        let mut l = Liveness::new();
        l.observe(at(0), &seen(&[("c1", 7, false), ("c2", 1, true)]), &none, RULES);
        // Restarted with a new lease (a crash-restart): silence counts anew.
        let p = l.observe(at(6), &seen(&[("c1", 8, false), ("c2", 1, true)]), &none, RULES);
        assert!(p.revoke.is_empty());
        // One long miss is not enough: two passes in a row are.
        let p = l.observe(at(11), &seen(&[("c1", 8, false), ("c2", 1, true)]), &none, RULES);
        assert_eq!(p.revoke, vec![(id("c1"), 8)]);
        // Its revocation failed (no mark, same lease): asked again next pass.
        let p = l.observe(at(12), &seen(&[("c1", 8, false), ("c2", 1, true)]), &none, RULES);
        assert_eq!(p.revoke, vec![(id("c1"), 8)]);
    }

    #[test]
    fn a_single_long_miss_is_not_a_pattern() {
        let t0 = Instant::now();
        let none = BTreeMap::new();
        let mut l = Liveness::new();
        let p = l.observe(t0 + Duration::from_secs(60), &seen(&[("c1", 7, false), ("c2", 1, true)]), &none, RULES);
        assert!(p.revoke.is_empty(), "first miss");
        let p = l.observe(t0 + Duration::from_secs(61), &seen(&[("c1", 7, true), ("c2", 1, true)]), &none, RULES);
        assert!(p.revoke.is_empty());
        assert_eq!(p.health[&id("c1")], Health::Answering);
    }

    #[test]
    fn a_leader_that_hears_from_few_collectors_revokes_nobody() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let none = BTreeMap::new();
        let mut l = Liveness::new();
        let three = seen(&[("c1", 1, false), ("c2", 2, false), ("c3", 3, true)]);
        for s in 0..30 {
            let p = l.observe(at(s), &three, &none, RULES);
            assert!(p.revoke.is_empty() && p.leader_isolated, "second {s}: {p:?}");
        }
        let alone = seen(&[("c1", 1, false)]);
        let mut l = Liveness::new();
        for s in 0..30 {
            assert!(l.observe(at(s), &alone, &none, RULES).revoke.is_empty(), "a lone collector is not revoked");
        }
    }

    #[test]
    fn an_incarnation_that_was_sent_work_is_never_taken_for_empty() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let none = BTreeMap::new();
        let mut l = Liveness::new();
        l.observe(at(0), &seen(&[("c1", 7, false), ("c2", 1, true)]), &none, RULES);
        l.observe(at(6), &seen(&[("c1", 7, false), ("c2", 1, true)]), &none, RULES);
        l.revoked(&id("c1"), 7);
        // Back as lease 9; some Assign reached it anyway (say, a record a
        // failed write left naming it), then it went silent.
        l.observe(at(20), &seen(&[("c1", 9, true), ("c2", 1, true)]), &none, RULES);
        l.sending_work(&id("c1"), 9);
        let p = l.observe(at(21), &seen(&[("c1", 9, false), ("c2", 1, true)]), &none, RULES);
        assert_eq!(p.health[&id("c1")], Health::Probation);
        assert!(!p.not_holding.contains(&id("c1")), "it may run what it was sent");
    }

    proptest! {
        /// Whatever the sequence: a collector is revoked only after being
        /// silent under the same lease for `unreachable_after`; one with a
        /// mark is always closed and never "not holding"; nothing that is
        /// "not holding" can be given work.
        #[test]
        fn revocation_needs_sustained_silence_and_marks_keep_holders(
            steps in proptest::collection::vec((0u64..4, 1i64..3, any::<bool>(), any::<bool>()), 1..60)
        ) {
            let t0 = Instant::now();
            let mut l = Liveness::new();
            let mut clock = 0u64;
            let mut silent_since: Option<(i64, u64)> = None;
            for (dt, lease, answered, marked) in steps {
                clock += dt;
                let marks = if marked { BTreeMap::from([(id("c1"), 1)]) } else { BTreeMap::new() };
                let p = l.observe(
                    t0 + Duration::from_secs(clock),
                    &seen(&[("c1", lease, answered), ("c2", 5, true)]),
                    &marks,
                    RULES,
                );
                silent_since = match (answered, silent_since) {
                    (true, _) => None,
                    (false, Some((l0, s))) if l0 == lease => Some((l0, s)),
                    (false, _) => Some((lease, clock)),
                };
                if !p.revoke.is_empty() {
                    let (l0, s) = silent_since.expect("revoked while answering");
                    prop_assert_eq!(l0, lease);
                    prop_assert!(clock - s >= 5);
                    l.revoked(&id("c1"), lease);
                }
                if marked {
                    prop_assert!(p.closed.contains(&id("c1")));
                    prop_assert!(!p.not_holding.contains(&id("c1")));
                }
                for c in &p.not_holding {
                    prop_assert!(p.closed.contains(c));
                }
            }
        }
    }
}
