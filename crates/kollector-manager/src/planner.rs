//! The planner: which collector runs which monitor. A pure function, no I/O.
//!
//! Sticky quotas with rendezvous placement:
//! 1. Every live collector gets a quota, its weighted share of the monitors
//!    (largest-remainder rounding, so quotas sum to the number of monitors).
//! 2. A monitor stays on its previous collector while that collector is
//!    alive, eligible and under quota.
//! 3. Every other monitor (new, orphaned, or displaced from a collector now
//!    over quota) goes to its best-ranked collector with room, ranked by
//!    weighted rendezvous hashing (`-weight / ln(h)`, `h` a stable hash of the
//!    pair), so cold starts spread evenly and ties never depend on list order.
//!
//! What that buys, measured by the tests below and `benches/planner.rs`: a
//! joining collector takes exactly its quota (~1/(N+1) of the monitors) and
//! nothing else moves; a leaving collector's monitors alone move; no
//! collector exceeds its quota by more than pinned or constrained monitors
//! force; the same inputs always give the same plan, so re-planning (or a new
//! leader planning from the persisted assignment) moves nothing.
//!
//! Pinned monitors go to their collector regardless of quotas (and wait,
//! unassigned, while it is absent). Label constraints restrict the eligible
//! collectors to those carrying every required label; when all eligible
//! collectors are full the least loaded (relative to weight) takes it.

use std::collections::{BTreeMap, HashMap};

use kollector_core::{CollectorId, MonitorId};

/// The balance bound the tests hold the planner to (the 1.25x);
/// quotas keep real plans within one monitor of the fair share.
pub const LOAD_FACTOR: f64 = 1.25;

/// A live collector as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorSlot {
    pub id: CollectorId,
    /// Relative capacity (1.0 = typical). Non-positive weights are treated as 1.0.
    pub weight: f64,
    pub labels: BTreeMap<String, String>,
}

/// A monitor's placement requirements.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    /// Run only on this collector.
    pub pinned: Option<CollectorId>,
    /// Run only on collectors carrying all of these labels.
    pub required_labels: BTreeMap<String, String>,
}

/// Why a monitor has no collector in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    NoCollectors,
    PinnedCollectorAbsent(CollectorId),
    NoCollectorWithLabels,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub assignments: BTreeMap<MonitorId, CollectorId>,
    pub unplaced: BTreeMap<MonitorId, Unplaced>,
}

impl Plan {
    /// Monitors per collector (collectors with none included).
    pub fn loads(&self, collectors: &[CollectorSlot]) -> BTreeMap<CollectorId, usize> {
        let mut loads: BTreeMap<CollectorId, usize> = collectors.iter().map(|c| (c.id.clone(), 0)).collect();
        for c in self.assignments.values() {
            *loads.entry(c.clone()).or_default() += 1;
        }
        loads
    }

    /// Monitors whose collector differs from (or is new relative to) `previous`.
    pub fn moves_from(&self, previous: &BTreeMap<MonitorId, CollectorId>) -> usize {
        self.assignments.iter().filter(|(m, c)| previous.get(*m).is_some_and(|p| p != *c)).count()
    }
}

/// FNV-1a over a string, for ids. Written here rather than taken from a
/// hashing crate because plans must be identical across builds, versions and
/// machines (std's hasher makes no such promise), and it is a few lines.
fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in s.bytes() {
        h ^= byte as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finalizer: spreads every input bit over the output.
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The collector's half of [`pair_hash`], from its id hash: computed once
/// per plan, not once per pair.
fn spread(collector: u64) -> u64 {
    collector.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The rendezvous hash of a (monitor, collector) pair from the monitor's id
/// hash and the collector's [`spread`], so each id is hashed once per plan.
fn pair_hash(monitor: u64, spread_collector: u64) -> u64 {
    mix(monitor ^ spread_collector)
}

/// Weighted rendezvous score; higher wins: `-weight / ln(h)`, `h` the pair
/// hash mapped to (0, 1), never NaN. With equal weights the raw hash orders
/// collectors the same way and is used instead (see [`best_with_room`]).
fn weighted_score(pair: u64, weight: f64) -> f64 {
    // Map to (0, 1): never 0 (ln would be -inf) nor 1 (division by zero).
    let h = ((pair >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / h.ln()
}

/// The best-scored collector among those that are eligible and under
/// quota (ties to the smaller id), and whether any collector was eligible.
/// Generic over the score so the equal-weights case compiles to a tight
/// loop over integer hashes: at 100,000 monitors and 100 collectors this
/// loop is most of a plan from scratch.
fn best_with_room<S: PartialOrd + Copy>(
    collectors: &[CollectorSlot],
    eligible: impl Fn(usize) -> bool,
    has_room: impl Fn(usize) -> bool,
    score: impl Fn(usize) -> S,
) -> (bool, Option<usize>) {
    let mut any_eligible = false;
    let mut best: Option<(usize, S)> = None;
    for c in 0..collectors.len() {
        if !eligible(c) {
            continue;
        }
        any_eligible = true;
        if !has_room(c) {
            continue;
        }
        let s = score(c);
        let better = match best {
            None => true,
            Some((b, bs)) => s > bs || (s == bs && collectors[c].id < collectors[b].id),
        };
        if better {
            best = Some((c, s));
        }
    }
    (any_eligible, best.map(|(c, _)| c))
}

fn weight(c: &CollectorSlot) -> f64 {
    if c.weight > 0.0 && c.weight.is_finite() {
        c.weight
    } else {
        1.0
    }
}

/// Quotas by largest remainder: `floor(n × w / W)` each, then one more for
/// the largest fractional parts (ties by collector id), summing to `n`.
fn quotas(collectors: &[CollectorSlot], n: usize) -> HashMap<&CollectorId, usize> {
    let total: f64 = collectors.iter().map(weight).sum();
    let mut parts: Vec<(&CollectorId, usize, f64)> = collectors
        .iter()
        .map(|c| {
            let exact = n as f64 * weight(c) / total;
            (&c.id, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let assigned: usize = parts.iter().map(|p| p.1).sum();
    parts.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    for p in parts.iter_mut().take(n.saturating_sub(assigned)) {
        p.1 += 1;
    }
    parts.into_iter().map(|(id, q, _)| (id, q)).collect()
}

/// Plans `monitors` over `collectors`, keeping `previous` owners where quotas allow.
///
/// Collectors are handled by index (loads, quotas and hashes in vectors) and
/// each monitor's previous owner is found by walking both sorted maps
/// together, so a plan costs a few passes over the monitors and no per-
/// monitor map lookups: ~tens of milliseconds at 100,000 monitors.
pub fn plan(
    monitors: &BTreeMap<MonitorId, Placement>,
    collectors: &[CollectorSlot],
    previous: &BTreeMap<MonitorId, CollectorId>,
) -> Plan {
    plan_from(monitors, collectors, previous.iter())
}

/// [`plan`], with the previous owners as an iterator **sorted by monitor
/// id** (e.g. straight from the assignment records, without building a map).
pub fn plan_from<'a>(
    monitors: &BTreeMap<MonitorId, Placement>,
    collectors: &[CollectorSlot],
    previous: impl Iterator<Item = (&'a MonitorId, &'a CollectorId)>,
) -> Plan {
    let (placed, unplaced) = plan_borrowed(monitors, collectors, previous);
    Plan { assignments: placed.into_iter().map(|(m, c)| (m.clone(), c.clone())).collect(), unplaced }
}

/// [`plan_from`] without copying ids: every placed monitor with its
/// collector, **sorted by monitor id** (what the reconciler walks once), and
/// the unplaced ones.
pub fn plan_borrowed<'m, 'c, 'p>(
    monitors: &'m BTreeMap<MonitorId, Placement>,
    collectors: &'c [CollectorSlot],
    previous: impl Iterator<Item = (&'p MonitorId, &'p CollectorId)>,
) -> (Vec<(&'m MonitorId, &'c CollectorId)>, BTreeMap<MonitorId, Unplaced>) {
    let mut out = Plan::default();
    if collectors.is_empty() {
        for m in monitors.keys() {
            out.unplaced.insert(m.clone(), Unplaced::NoCollectors);
        }
        return (Vec::new(), out.unplaced);
    }
    let index: HashMap<&CollectorId, usize> = collectors.iter().enumerate().map(|(i, c)| (&c.id, i)).collect();
    let quota_by_id = quotas(collectors, monitors.len());
    let quota: Vec<usize> = collectors.iter().map(|c| quota_by_id.get(&c.id).copied().unwrap_or(0)).collect();
    let mut load: Vec<usize> = vec![0; collectors.len()];
    let chash: Vec<u64> = collectors.iter().map(|c| spread(stable_hash(c.id.as_str()))).collect();
    let weights: Vec<f64> = collectors.iter().map(weight).collect();
    let uniform = weights.iter().all(|w| *w == weights[0]);
    let eligible =
        |p: &Placement, c: usize| p.required_labels.iter().all(|(k, v)| collectors[c].labels.get(k) == Some(v));
    // Each placed monitor's collector by the monitor's position in
    // `monitors` (sorted by id), so the result comes out in id order
    // without sorting 100,000 strings.
    let mut placed: Vec<usize> = vec![usize::MAX; monitors.len()];

    // Pinned first: they do not move and they count toward load. Each
    // monitor's previous owner comes from walking `previous` alongside.
    let mut prev = previous.peekable();
    let mut free = Vec::new();
    for (pos, (m, p)) in monitors.iter().enumerate() {
        while prev.next_if(|(pm, _)| *pm < m).is_some() {}
        let was = prev.next_if(|(pm, _)| *pm == m).and_then(|(_, c)| index.get(c).copied());
        match &p.pinned {
            Some(pin) => match index.get(pin) {
                Some(&c) => {
                    load[c] += 1;
                    placed[pos] = c;
                }
                None => {
                    out.unplaced.insert(m.clone(), Unplaced::PinnedCollectorAbsent(pin.clone()));
                }
            },
            None => free.push((stable_hash(m.as_str()), pos, m, p, was)),
        }
    }
    // A fixed order independent of the collector set, so who stays and who
    // is displaced is deterministic.
    free.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(b.2)));

    // Keep: previous owner alive, eligible and under quota.
    let mut to_place = Vec::new();
    for (h, pos, m, p, was) in free {
        match was.filter(|&c| eligible(p, c) && load[c] < quota[c]) {
            Some(c) => {
                load[c] += 1;
                placed[pos] = c;
            }
            None => to_place.push((h, pos, m, p)),
        }
    }

    // Place the rest by rendezvous rank among collectors with room: the
    // highest score wins, ties to the smaller collector id. One pass over
    // the collectors per monitor, with no allocation: at 100,000 monitors
    // and 100 collectors this loop is most of a plan from scratch.
    for (monitor_hash, pos, m, p) in to_place {
        let constrained = !p.required_labels.is_empty();
        let is_eligible = |c: usize| !constrained || eligible(p, c);
        let has_room = |c: usize| load[c] < quota[c];
        let (any_eligible, best) = if uniform {
            best_with_room(collectors, is_eligible, has_room, |c| pair_hash(monitor_hash, chash[c]))
        } else {
            best_with_room(collectors, is_eligible, has_room, |c| {
                weighted_score(pair_hash(monitor_hash, chash[c]), weights[c])
            })
        };
        if !any_eligible {
            out.unplaced.insert(m.clone(), Unplaced::NoCollectorWithLabels);
            continue;
        }
        let chosen = match best {
            Some(c) => c,
            // Every eligible collector is at its quota (pins or label
            // constraints): the least loaded relative to weight takes it.
            None => (0..collectors.len())
                .filter(|&c| is_eligible(c))
                .min_by(|&a, &b| {
                    (load[a] as f64 / weights[a])
                        .total_cmp(&(load[b] as f64 / weights[b]))
                        .then_with(|| collectors[a].id.cmp(&collectors[b].id))
                })
                .unwrap_or(0),
        };
        load[chosen] += 1;
        placed[pos] = chosen;
    }
    let placed =
        monitors.keys().zip(placed).filter(|(_, c)| *c != usize::MAX).map(|(m, c)| (m, &collectors[c].id)).collect();
    (placed, out.unplaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collectors(n: usize) -> Vec<CollectorSlot> {
        (0..n)
            .map(|i| CollectorSlot {
                id: CollectorId::new(format!("c{i}")).unwrap(),
                weight: 1.0,
                labels: BTreeMap::new(),
            })
            .collect()
    }

    fn monitors(n: usize) -> BTreeMap<MonitorId, Placement> {
        (0..n).map(|i| (MonitorId::new(format!("m{i}")).unwrap(), Placement::default())).collect()
    }

    fn max_over_mean(plan: &Plan, cs: &[CollectorSlot]) -> f64 {
        let loads = plan.loads(cs);
        let max = *loads.values().max().unwrap() as f64;
        let mean = plan.assignments.len() as f64 / cs.len() as f64;
        max / mean
    }

    #[test]
    fn balance_is_bounded_for_many_sizes() {
        for (m, c) in [(30, 3), (100, 4), (1000, 10), (10_000, 7), (7, 3), (5000, 100)] {
            let cs = collectors(c);
            let p = plan(&monitors(m), &cs, &BTreeMap::new());
            assert_eq!(p.assignments.len(), m);
            let mean = m as f64 / c as f64;
            let max = *p.loads(&cs).values().max().unwrap() as f64;
            assert!(max <= mean.ceil(), "{m} over {c}: max {max}, mean {mean}");
            assert!(max <= (LOAD_FACTOR * mean).ceil());
        }
    }

    #[test]
    fn replanning_with_the_same_inputs_moves_nothing() {
        let cs = collectors(5);
        let ms = monitors(500);
        let p1 = plan(&ms, &cs, &BTreeMap::new());
        let p2 = plan(&ms, &cs, &p1.assignments);
        assert_eq!(p1, p2);
        // Order of the collector list does not matter.
        let mut reversed = cs.clone();
        reversed.reverse();
        assert_eq!(plan(&ms, &reversed, &p1.assignments), p1);
    }

    #[test]
    fn a_joining_collector_takes_about_its_share_and_nothing_else_moves() {
        for (m, n) in [(30, 3), (400, 3), (1000, 9), (2000, 19)] {
            let ms = monitors(m);
            let before = plan(&ms, &collectors(n), &BTreeMap::new());
            let cs = collectors(n + 1);
            let after = plan(&ms, &cs, &before.assignments);
            let joined = &cs[n].id;
            let moved = after.moves_from(&before.assignments);
            let to_new = after.assignments.values().filter(|c| *c == joined).count();
            let share = m as f64 / (n + 1) as f64;
            assert!(moved as f64 <= 1.1 * share + 1.0, "{m}/{n}: {moved} moved, share {share}");
            // Moves go to the new collector, except for a few cap spills.
            assert!(
                moved - to_new <= (0.02 * m as f64).ceil() as usize,
                "{m}/{n}: {} moved between old collectors",
                moved - to_new
            );
            assert!(to_new as f64 >= share.floor(), "{m}/{n}: new collector got {to_new}, share {share}");
        }
    }

    #[test]
    fn a_leaving_collector_moves_only_its_own_monitors() {
        for (m, n) in [(30, 3), (1000, 10)] {
            let ms = monitors(m);
            let cs = collectors(n);
            let before = plan(&ms, &cs, &BTreeMap::new());
            let gone = cs[1].id.clone();
            let remaining: Vec<CollectorSlot> = cs.iter().filter(|c| c.id != gone).cloned().collect();
            let after = plan(&ms, &remaining, &before.assignments);
            let owned = before.assignments.values().filter(|c| **c == gone).count();
            let moved = after.moves_from(&before.assignments);
            assert!(
                moved <= owned + (0.02 * m as f64).ceil() as usize,
                "{m}/{n}: {moved} moved, {owned} were on the leaver"
            );
            assert!(after.assignments.values().all(|c| *c != gone));
            let mean = m as f64 / (n - 1) as f64;
            assert!(max_over_mean(&after, &remaining) <= mean.ceil() / mean);
        }
    }

    #[test]
    fn weights_shift_load() {
        let mut cs = collectors(2);
        cs[0].weight = 3.0;
        let p = plan(&monitors(1000), &cs, &BTreeMap::new());
        let loads = p.loads(&cs);
        let heavy = loads[&cs[0].id] as f64;
        assert!((650.0..=850.0).contains(&heavy), "weighted collector got {heavy} of 1000");
    }

    #[test]
    fn pinning_and_labels() {
        let mut cs = collectors(3);
        cs[2].labels.insert("zone".into(), "dmz".into());
        let mut ms = monitors(20);
        let pinned = MonitorId::new("m0").unwrap();
        ms.get_mut(&pinned).unwrap().pinned = Some(cs[1].id.clone());
        let dmz = MonitorId::new("m1").unwrap();
        ms.get_mut(&dmz).unwrap().required_labels.insert("zone".into(), "dmz".into());
        let lonely = MonitorId::new("m2").unwrap();
        ms.get_mut(&lonely).unwrap().required_labels.insert("zone".into(), "moon".into());
        let absent = MonitorId::new("m3").unwrap();
        ms.get_mut(&absent).unwrap().pinned = Some(CollectorId::new("c9").unwrap());
        let p = plan(&ms, &cs, &BTreeMap::new());
        assert_eq!(p.assignments[&pinned], cs[1].id);
        assert_eq!(p.assignments[&dmz], cs[2].id);
        assert_eq!(p.unplaced[&lonely], Unplaced::NoCollectorWithLabels);
        assert_eq!(p.unplaced[&absent], Unplaced::PinnedCollectorAbsent(CollectorId::new("c9").unwrap()));
        assert_eq!(p.assignments.len(), 18);
    }

    #[test]
    fn no_collectors_means_everything_waits() {
        let p = plan(&monitors(3), &[], &BTreeMap::new());
        assert!(p.assignments.is_empty());
        assert_eq!(p.unplaced.len(), 3);
    }
}
